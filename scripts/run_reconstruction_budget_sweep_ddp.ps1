# The reconstruction budget sweep over several processes with torchrun (single node).
# On Windows torch.distributed has no NCCL: the ranks use gloo, which is all they need (they
# exchange only result rows). PyTorch's Windows builds lack libuv for the rendezvous store,
# hence USE_LIBUV=0. Multi-node runs: use the bash wrapper on Linux.
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
$py = if ($env:PYTHON) { $env:PYTHON } else { "python" }
$nproc = if ($env:NPROC) { $env:NPROC } else { & $py -c "import torch, os; print(torch.cuda.device_count() or os.cpu_count() or 1)" }
$device = if ($env:DEVICE) { $env:DEVICE } else { "cuda" }
$out = if ($env:OUT_DIR) { $env:OUT_DIR } else { "outputs/reconstruction_budget_sweep_ddp" }
$env:USE_LIBUV = "0"
& $py -m torch.distributed.run --standalone --nproc_per_node=$nproc main_reconstruction.py `
    --I 256 --J 256 --R_list 16,32,48,64,80 --K_ratio 0.75 --data_mode blockdiag --num_blocks 6 `
    --seed 42 --epochs 2000 --log_every 0 --device $device --out_dir $out @args
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
