#!/usr/bin/env bash
# The main job end to end on this machine; it grows as issues land.
# Today: plan the model, train the tiny DiT with flow matching on synthetic latents.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.build/release
OUT=${HV_DEMO_OUT:-checkpoints/demo}
mkdir -p "$OUT"
echo "== hv demo: plan =="
"$BIN/hv-coord" plan --config configs/runs/tiny.yaml
echo "== hv demo: train (configs/runs/tiny.yaml) =="
"$BIN/hv-coord" train --config configs/runs/tiny.yaml --loss-csv "$OUT/loss.csv"
echo "== hv demo: done; losses in $OUT/loss.csv =="
