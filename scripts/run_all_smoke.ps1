# Smoke runs of every experiment on the CPU, small enough for a 2-core laptop (a few
# minutes in all). Results go under outputs/smoke/.
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
$py = if ($env:PYTHON) { $env:PYTHON } else { "python" }
$out = if ($env:OUT_DIR) { $env:OUT_DIR } else { "outputs/smoke" }
$start = Get-Date

Write-Host "== reconstruction (128 x 128, R 16, K_ratio 0.5) =="
& $py main_reconstruction.py --I 128 --J 128 --R_list 16 --K_ratio 0.5 --epochs 2000 `
    --log_every 1000 --methods mmf,svd,mf_sgd,mf_ridge,mf_bias --device cpu `
    --out_dir "$out/reconstruction"
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }

Write-Host "== expressivity and identifiability =="
$env:OUT_DIR = $out
& (Join-Path $PSScriptRoot "smoke_vis.ps1")
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }

Write-Host ("smoke runs finished in {0:N0} s; results under $out/" -f ((Get-Date) - $start).TotalSeconds)
