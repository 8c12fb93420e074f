#!/usr/bin/env bash
# The main job end to end on this machine. Grows as issues land; today: the kernel benchmark
# (the tensor core and its OpenBLAS kernel choice).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.build/release
echo "== hv demo: kernel check =="
"$BIN/hv-bench" kernels --repeats 1 --seq 1024
