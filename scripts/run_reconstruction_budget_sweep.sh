#!/usr/bin/env bash
# The reconstruction budget sweep of the spec (section 2 / 7): 256 x 256 block-diagonal
# target (6 blocks, seed 42), budgets R = 16..80, K = 0.75 R, 2000 epochs, all methods.
# Extra arguments are passed on (e.g. --seeds 42,43,44). DEVICE=cpu forces the CPU;
# the default asks for CUDA and falls back to the CPU with a warning when there is none.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
"$PY" main_reconstruction.py --I 256 --J 256 --R_list 16,32,48,64,80 --K_ratio 0.75 \
    --data_mode blockdiag --num_blocks 6 --seed 42 --epochs 2000 --log_every 500 \
    --device "${DEVICE:-cuda}" --out_dir "${OUT_DIR:-outputs/reconstruction_budget_sweep}" "$@"
