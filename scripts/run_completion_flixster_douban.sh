#!/usr/bin/env bash
# Completion on Flixster and Douban (spec section 3 / 7): MF vs MMF on Monti et al.'s fixed
# train/test splits, R 256, K 42, up to 100 epochs each, seed 123. The .mat files are read
# from (or downloaded into) $DATA_DIR (default data_rec); results go to
# $OUT_DIR/flixster and $OUT_DIR/douban (default OUT_DIR: outputs/completion). Extra
# arguments are passed on to both runs. DEVICE=cpu forces the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT="${OUT_DIR:-outputs/completion}"
for ds in flixster douban; do
    echo "== $ds =="
    "$PY" main_completion.py --dataset "$ds" --download --data_dir "${DATA_DIR:-data_rec}" \
        --R 256 --K 42 --epochs 100 --plot_curves --device "${DEVICE:-cuda}" \
        --save_dir "$OUT/$ds" "$@"
done
