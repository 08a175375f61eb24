# Smoke runs of vis_expressivity.py and vis_identifiability.py on the CPU (~40 s together on
# an idle 2-core machine). Called by run_all_smoke.ps1; results go under
# $env:OUT_DIR/expressivity and $env:OUT_DIR/identifiability (default outputs/smoke).
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
$py = if ($env:PYTHON) { $env:PYTHON } else { "python" }
$out = if ($env:OUT_DIR) { $env:OUT_DIR } else { "outputs/smoke" }

Write-Host "-- expressivity (256 x 256 targets, R_budget 16, K 2..5, 1000 epochs)"
& $py vis_expressivity.py --S10_size 256 --H6_size 256 --R_budget 16 --K_list 2,3,4,5 `
    --mmf_epochs 1000 --mask_mode sin --log10 --device cpu --out_dir "$out/expressivity"
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }

Write-Host "-- identifiability (fixed_mask, 256 x 256, R 40, K 4, 1000 epochs)"
& $py vis_identifiability.py --mode fixed_mask --I 256 --J 256 --R 40 --K 4 --epochs 1000 `
    --mask_mode gaussian --reorder --device cpu --out_dir "$out/identifiability"
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
