#!/usr/bin/env bash
# The identifiability figure of the spec (sections 6 / 7): MF (rank 40) and MMF (Rb 40,
# K 4, fixed shared gaussian masks 4*exp(-d^2/2)) trained twice (seeds 101, 202) on a
# 512 x 512 target with 6 equal blocks, 4000 epochs; |cos| heatmaps raw and Hungarian-
# reordered. Pass --n_pairs 3 for mean and spread over three seed pairs (~3x the time), or
# --mode random_mask --learn_shifts for the other mode. A few minutes on a 2-core CPU.
# DEVICE=cpu forces the CPU; the default asks for CUDA and falls back to the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
"$PY" vis_identifiability.py --mode fixed_mask --I 512 --J 512 --R 40 --K 4 --epochs 4000 \
    --mask_mode gaussian --reorder --device "${DEVICE:-cuda}" \
    --out_dir "${OUT_DIR:-outputs/identifiability}" "$@"
