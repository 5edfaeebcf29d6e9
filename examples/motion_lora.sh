#!/usr/bin/env bash
# A motion LoRA for the shipped model (issue: editing and adapters): teach it a motion it never saw.
# The shapes clips here also drift downward by 30% of the frame, while their captions still only say
# "moving left/right" or "staying still": like AnimateDiff's camera LoRAs (tilt-down), the LoRA adds a motion
# that no prompt names. A temporal LoRA (rank 8) is trained on the shipped model; then base and LoRA are
# measured from pixels (vertical displacement of the object, and whether the named motion still holds).
# Run from the repository root after `make install`; resumes if interrupted.
set -euo pipefail
VIDIFF=${VIDIFF:-.venv/bin/vidiff}
t0=$(date +%s)
[ -f data/tilt/metadata.jsonl ] || $VIDIFF data shapes --out data/tilt --clips 400 --frames 16 --seed 7 \
    --motions left,right,still --drift 0.3 --quiet
$VIDIFF train configs/motion-lora.yaml data.path=data/tilt train.output_dir=runs/motion-lora --quiet
echo "[motion-lora] data + training: $(( $(date +%s) - t0 ))s"
.venv/bin/python examples/motion_lora_measure.py runs/motion-lora/lora.safetensors --json runs/motion-lora/measure.json
