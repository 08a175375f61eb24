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

echo "smoke runs finished in $(( $(date +%s) - start )) s; results under $OUT/"
