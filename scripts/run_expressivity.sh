#!/usr/bin/env bash
# The expressivity figure of the spec (sections 5 / 7): S_10 (1024 x 1024 dense random) and
# H_6 (1080 x 1080, 6 blocks), truncated SVD at R_budget 80 vs MMF with K = 2, 4, 8 (sin
# masks, 2000 epochs), randomized top-640 spectra, log10 heatmaps. About 12 minutes on a
# shared 2-core CPU. Extra arguments are passed on (e.g. --K_list 2,3,4).
# DEVICE=cpu forces the CPU; the default asks for CUDA and falls back to the CPU with a
# warning when there is none.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
"$PY" vis_expressivity.py --R_budget 80 --K_list 2,4,8 --mask_mode sin \
    --svdvals_method lowrank --log10 --device "${DEVICE:-cuda}" \
    --out_dir "${OUT_DIR:-outputs/expressivity}" "$@"
