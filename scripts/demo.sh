#!/usr/bin/env bash
# The main job end to end on this machine (the README's first quick-start command runs it):
# plan the model, launch 2 local workers (ZeRO-2) on the quick-start config, checkpoint, resume,
# consolidate the checkpoint, sample a video from it and measure its prompt following.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.build/release
RUN=${HV_DEMO_RUN:-checkpoints/demo}
rm -rf "$RUN"
echo "== 1. plan: parameters, FLOPs, memory for the run =="
"$BIN/hv-coord" plan --config configs/runs/quickstart.yaml --nodes cluster/hosts.local --zero 2
echo "== 2. launch: 2 workers, ZeRO-2; stop after step 150 (a checkpoint is saved) =="
"$BIN/hv-coord" launch --nodes cluster/hosts.local --config configs/runs/quickstart.yaml --zero 2 --stop-at 150 --run-dir "$RUN"
echo "== 3. resume from the latest checkpoint and finish the run =="
"$BIN/hv-coord" launch --nodes cluster/hosts.local --config configs/runs/quickstart.yaml --zero 2 --run-dir "$RUN" --resume auto
echo "== 4. inspect and consolidate the checkpoint into one HDF5 file of official tensor names =="
"$BIN/hv-ckpt" inspect "$RUN"
"$BIN/hv-ckpt" consolidate "$RUN" --out "$RUN/model.h5"
echo "== 5. sample from the trained model, then measure its prompt following (24 prompts, mp4s read back) =="
"$BIN/hv-sample" generate --checkpoint "$RUN/model.h5" --prompt "a red square moving right" --out "$RUN/sample.mp4"
"$BIN/hv-sample" eval --checkpoint "$RUN/model.h5" --out-dir "$RUN/eval"
echo "== done: logs in $RUN/logs, metrics in $RUN/metrics.jsonl, checkpoints in $RUN/checkpoints =="
