"""Benchmark: how close is an MMF training epoch to its unavoidable cost?

Each MMF step is dominated by three matmuls of shape I x (K*Rb) x J: the forward
A_cat @ B_cat^T and the two gradient products G @ B_cat and G^T @ A_cat. This script times,
in one process and for each R of the budget sweep, (a) an epoch of the real training loop
(mmf_core.fit_full: masks, loss, backward, Adam, best-epoch snapshot) and (b) those three
plain matmuls alone, and prints the ratio (a)/(b). A ratio of 1.0 would mean the masks, the
loss and the optimizer cost nothing.

    python scripts/bench_reconstruction.py                       # CPU (and CUDA if present)
    python scripts/bench_reconstruction.py --I 1080 --J 1080 --R_list 80,160,240 --K_ratio 0.4
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mmf_core as core  # noqa: E402
from data_utils import make_synthetic  # noqa: E402


def time_epochs(model, X, epochs, device):
    opt = core.make_adam(model, 2e-2, 1e-2)
    core.fit_full(model, X, opt, max(5, epochs // 10))          # warm-up (allocator, kernels)
    best = float("inf")
    for _ in range(3):                                          # best of 3: least disturbed
        r = core.fit_full(model, X, opt, epochs)
        best = min(best, r.train_time_sec / epochs)
    return best


def time_matmuls(I, J, n, reps, device):
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(I, n, generator=gen).to(device)
    B = torch.randn(J, n, generator=gen).to(device)
    G = torch.randn(I, J, generator=gen).to(device)
    for _ in range(max(3, reps // 10)):
        A @ B.T, G @ B, G.T @ A
    best = float("inf")
    for _ in range(3):
        core.sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            A @ B.T
            G @ B
            G.T @ A
        core.sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--I", type=int, default=256)
    p.add_argument("--J", type=int, default=256)
    p.add_argument("--R_list", default="16,32,48,64,80")
    p.add_argument("--K_ratio", type=float, default=0.75)
    p.add_argument("--epochs", type=int, default=200, help="epochs per timing")
    p.add_argument("--devices", default="", help="comma-separated; default: cpu and cuda if present")
    args = p.parse_args()
    devices = core.parse_str_list(args.devices) or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    X = make_synthetic("blockdiag", args.I, args.J, 42)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; I={args.I} J={args.J}")
    print(f"{'device':8s} {'R':>4s} {'K':>4s} {'Rb':>4s} {'K*Rb':>5s} {'epoch ms':>9s} {'3 mm ms':>8s} {'ratio':>6s}")
    for dev_name in devices:
        device = core.resolve_device(dev_name)
        for R in core.parse_int_list(args.R_list, "--R_list"):
            K = core.k_from_ratio(R, args.K_ratio)
            Rb = core.base_rank(R, K)
            Xd = (X * K).to(device)
            model = core.MMF(args.I, args.J, Rb, K, gen=torch.Generator().manual_seed(0)).to(device)
            t_epoch = time_epochs(model, Xd, args.epochs, device)
            t_mm = time_matmuls(args.I, args.J, K * Rb, args.epochs, device)
            print(f"{str(device):8s} {R:4d} {K:4d} {Rb:4d} {K * Rb:5d} {t_epoch * 1e3:9.3f} "
                  f"{t_mm * 1e3:8.3f} {t_epoch / t_mm:6.2f}", flush=True)


if __name__ == "__main__":
    core.run_cli(main)
