#!/usr/bin/env bash
# Make a small shapes dataset, train the tiny config on it (CPU, ~1 minute), then sample from it.
# Run from the repository root after `make install` (or with vidiff on PATH).
set -euo pipefail
VIDIFF=${VIDIFF:-.venv/bin/vidiff}
OUT=${OUT:-runs/tiny-example}
[ -f data/shapes-small/metadata.jsonl ] || $VIDIFF data shapes --out data/shapes-small --clips 64 --size 32
$VIDIFF train configs/tiny.yaml data.path=data/shapes-small train.output_dir="$OUT" train.steps=100
$VIDIFF generate "a red circle moving left" --model "$OUT/model" --frames 8 --seed 0 -o "$OUT/sample.mp4"
# Killed half-way? Run the same train command again: it resumes from the last checkpoint.
