#!/usr/bin/env bash
# The reconstruction budget sweep spread over several processes with torchrun: one process
# per GPU (NPROC defaults to the number of GPUs), or on a CPU-only machine one per core.
# Multi-node: run this on every node with NNODES, NODE_RANK and MASTER_ADDR set, e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash scripts/run_reconstruction_budget_sweep_ddp.sh
# Extra arguments go to main_reconstruction.py (e.g. --seeds 1,2,3,4 --resume).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ -z "${NPROC:-}" ]; then
    NPROC=$("$PY" -c "import torch, os; print(torch.cuda.device_count() or os.cpu_count() or 1)")
fi
NNODES="${NNODES:-1}"
if [ "$NNODES" = "1" ]; then
    LAUNCH=(--standalone --nproc_per_node="$NPROC")
else
    LAUNCH=(--nnodes="$NNODES" --node_rank="${NODE_RANK:?set NODE_RANK}" --nproc_per_node="$NPROC"
            --master_addr="${MASTER_ADDR:?set MASTER_ADDR}" --master_port="${MASTER_PORT:-29500}")
fi
"$PY" -m torch.distributed.run "${LAUNCH[@]}" main_reconstruction.py \
    --I 256 --J 256 --R_list 16,32,48,64,80 --K_ratio 0.75 --data_mode blockdiag --num_blocks 6 \
    --seed 42 --epochs 2000 --log_every 0 --device "${DEVICE:-cuda}" \
    --out_dir "${OUT_DIR:-outputs/reconstruction_budget_sweep_ddp}" "$@"
