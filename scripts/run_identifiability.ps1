# The identifiability figure of the spec (sections 6 / 7): MF (rank 40) and MMF (Rb 40,
# K 4, fixed shared gaussian masks 4*exp(-d^2/2)) trained twice (seeds 101, 202) on a
# 512 x 512 target with 6 equal blocks, 4000 epochs; |cos| heatmaps raw and Hungarian-
# reordered. Extra arguments are passed on (e.g. --n_pairs 3). Set $env:DEVICE = "cpu" to
# force the CPU.
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
$py = if ($env:PYTHON) { $env:PYTHON } else { "python" }
$device = if ($env:DEVICE) { $env:DEVICE } else { "cuda" }
$out = if ($env:OUT_DIR) { $env:OUT_DIR } else { "outputs/identifiability" }
& $py vis_identifiability.py --mode fixed_mask --I 512 --J 512 --R 40 --K 4 --epochs 4000 `
    --mask_mode gaussian --reorder --device $device --out_dir $out @args
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
