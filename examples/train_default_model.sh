#!/usr/bin/env bash
# The recipe of vidiff's default model (vidiff/weights/shapes-64), end to end through the public tools:
#   1. the shapes dataset, 2. an image model on its frames, 3. that model inflated and trained on clips.
# Every stage resumes if interrupted: run the script again. Times are printed per stage.
# Run from the repository root after `make install`.
set -euo pipefail
VIDIFF=${VIDIFF:-.venv/bin/vidiff}
DATA=${DATA:-data/shapes}
t0=$(date +%s)
stamp() { echo "[recipe] $1 at +$(( $(date +%s) - t0 ))s"; }
[ -f "$DATA/metadata.jsonl" ] || $VIDIFF data shapes --out "$DATA" --clips 2000 --seed 0 --quiet
stamp "dataset ready"
$VIDIFF train configs/shapes-image.yaml data.path="$DATA" --quiet
stamp "image stage done"
$VIDIFF train configs/shapes-video.yaml data.path="$DATA" --quiet
stamp "video stage done"
echo "[recipe] model: runs/shapes-video/model  (ship it: python examples/ship_default_model.py runs/shapes-video/model; its sampling defaults come from the sample: section of configs/shapes-video.yaml)"
