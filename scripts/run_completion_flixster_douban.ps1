# Completion on Flixster and Douban (spec section 3 / 7): MF vs MMF on Monti et al.'s fixed
# train/test splits, R 256, K 42, up to 100 epochs each, seed 123. The .mat files are read
# from (or downloaded into) $env:DATA_DIR (default data_rec); results go to
# $env:OUT_DIR\flixster and \douban (default OUT_DIR: outputs/completion). Extra arguments
# are passed on to both runs. Set $env:DEVICE = "cpu" to force the CPU.
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
$py = if ($env:PYTHON) { $env:PYTHON } else { "python" }
$device = if ($env:DEVICE) { $env:DEVICE } else { "cuda" }
$data = if ($env:DATA_DIR) { $env:DATA_DIR } else { "data_rec" }
$out = if ($env:OUT_DIR) { $env:OUT_DIR } else { "outputs/completion" }
foreach ($ds in @("flixster", "douban")) {
    Write-Host "== $ds =="
    & $py main_completion.py --dataset $ds --download --data_dir $data `
        --R 256 --K 42 --epochs 100 --plot_curves --device $device `
        --save_dir (Join-Path $out $ds) @args
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
}
