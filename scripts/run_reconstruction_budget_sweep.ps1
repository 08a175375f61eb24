# The reconstruction budget sweep of the spec (section 2 / 7): 256 x 256 block-diagonal
# target (6 blocks, seed 42), budgets R = 16..80, K = 0.75 R, 2000 epochs, all methods.
# Extra arguments are passed on. Set $env:DEVICE = "cpu" to force the CPU.
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
$py = if ($env:PYTHON) { $env:PYTHON } else { "python" }
$device = if ($env:DEVICE) { $env:DEVICE } else { "cuda" }
$out = if ($env:OUT_DIR) { $env:OUT_DIR } else { "outputs/reconstruction_budget_sweep" }
& $py main_reconstruction.py --I 256 --J 256 --R_list 16,32,48,64,80 --K_ratio 0.75 `
    --data_mode blockdiag --num_blocks 6 --seed 42 --epochs 2000 --log_every 500 `
    --device $device --out_dir $out @args
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
