#!/usr/bin/env bash
# Smoke runs of vis_expressivity.py and vis_identifiability.py on the CPU (~40 s together on
# an idle 2-core machine). Called by run_all_smoke.sh; results go under
# $OUT_DIR/expressivity and $OUT_DIR/identifiability (OUT_DIR defaults to outputs/smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT="${OUT_DIR:-outputs/smoke}"

echo "-- expressivity (256 x 256 targets, R_budget 16, K 2..5, 1000 epochs)"
"$PY" vis_expressivity.py --S10_size 256 --H6_size 256 --R_budget 16 --K_list 2,3,4,5 \
    --mmf_epochs 1000 --mask_mode sin --log10 --device cpu --out_dir "$OUT/expressivity"

echo "-- identifiability (fixed_mask, 256 x 256, R 40, K 4, 1000 epochs)"
"$PY" vis_identifiability.py --mode fixed_mask --I 256 --J 256 --R 40 --K 4 --epochs 1000 \
    --mask_mode gaussian --reorder --device cpu --out_dir "$OUT/identifiability"
