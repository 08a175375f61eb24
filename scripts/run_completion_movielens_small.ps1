# Completion on MovieLens-100K (spec section 3 / 7): MF vs MMF, per-user 90/10 split,
# R 256, K 42, up to 50 epochs, seed 123. The data is read from (or downloaded into)
# $env:DATA_DIR (default data_rec); results go to $env:OUT_DIR (default
# outputs/completion_movielens). Extra arguments are passed on (e.g. --split u1).
# Set $env:DEVICE = "cpu" to force the CPU.
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
$py = if ($env:PYTHON) { $env:PYTHON } else { "python" }
$device = if ($env:DEVICE) { $env:DEVICE } else { "cuda" }
$data = if ($env:DATA_DIR) { $env:DATA_DIR } else { "data_rec" }
$out = if ($env:OUT_DIR) { $env:OUT_DIR } else { "outputs/completion_movielens" }
& $py main_completion.py --dataset ml-100k --download --data_dir $data `
    --R 256 --K 42 --epochs 50 --plot_curves --device $device --save_dir $out @args
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
