#!/usr/bin/env bash
# Smoke runs of every experiment on the CPU, small enough for a 2-core laptop (a few
# minutes in all). Results go under outputs/smoke/. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT="${OUT_DIR:-outputs/smoke}"
start=$(date +%s)

echo "== reconstruction (128 x 128, R 16, K_ratio 0.5) =="
"$PY" main_reconstruction.py --I 128 --J 128 --R_list 16 --K_ratio 0.5 --epochs 2000 \
    --log_every 1000 --methods mmf,svd,mf_sgd,mf_ridge,mf_bias --device cpu \
    --out_dir "$OUT/reconstruction"

echo "== expressivity and identifiability =="
OUT_DIR="$OUT" PYTHON="$PY" bash scripts/smoke_vis.sh

echo "== completion (ml-100k, R 32, K 8, 5 epochs; downloads ml-100k into \$DATA_DIR) =="
# The only smoke step that needs data: on a machine without network and without the data
# it is skipped with a note instead of failing the other experiments' smoke runs.
if ! "$PY" main_completion.py --dataset ml-100k --data_dir "${DATA_DIR:-data_rec}" --download \
        --R 32 --K 8 --epochs 5 --print_every 0 --device cpu --save_dir "$OUT/completion"; then
    echo "note: completion smoke skipped (ml-100k unavailable: see the error above;" \
         "set DATA_DIR to a folder holding ml-100k/)"
fi

echo "smoke runs finished in $(( $(date +%s) - start )) s; results under $OUT/"
