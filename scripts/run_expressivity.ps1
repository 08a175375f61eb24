# The expressivity figure of the spec (sections 5 / 7): S_10 (1024 x 1024 dense random) and
# H_6 (1080 x 1080, 6 blocks), truncated SVD at R_budget 80 vs MMF with K = 2, 4, 8 (sin
# masks, 2000 epochs), randomized top-640 spectra, log10 heatmaps. About 12 minutes on a
# 2-core CPU. Extra arguments are passed on. Set $env:DEVICE = "cpu" to force the CPU.
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
$py = if ($env:PYTHON) { $env:PYTHON } else { "python" }
$device = if ($env:DEVICE) { $env:DEVICE } else { "cuda" }
$out = if ($env:OUT_DIR) { $env:OUT_DIR } else { "outputs/expressivity" }
& $py vis_expressivity.py --R_budget 80 --K_list 2,4,8 --mask_mode sin `
    --svdvals_method lowrank --log10 --device $device --out_dir $out @args
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
