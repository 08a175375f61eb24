#!/usr/bin/env bash
# Completion on MovieLens-100K (spec section 3 / 7): MF vs MMF, per-user 90/10 split,
# R 256, K 42, up to 50 epochs, seed 123. The data is read from (or downloaded into)
# $DATA_DIR (default data_rec); results go to $OUT_DIR (default
# outputs/completion_movielens). Extra arguments are passed on (e.g. --split u1,
# --seeds 1,2,3, --shift_mode learned). DEVICE=cpu forces the CPU; the default asks for
# CUDA and falls back to the CPU with a warning when there is none.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
"$PY" main_completion.py --dataset ml-100k --download --data_dir "${DATA_DIR:-data_rec}" \
    --R 256 --K 42 --epochs 50 --plot_curves --device "${DEVICE:-cuda}" \
    --save_dir "${OUT_DIR:-outputs/completion_movielens}" "$@"
