"""Training throughput of the completion models: ratings per second for MF and for MMF in
each shift mode, and MMF's epoch time relative to MF's, all measured in one process.

The machine may be shared, so absolute figures are noisy; the models are timed in turns
(round robin, one epoch each, `--rounds` times) and the median epoch is reported, so a
busy spell slows all of them alike and the ratios stay meaningful.

    python scripts/bench_completion.py                       # ml-100k-sized synthetic data
    python scripts/bench_completion.py --dataset ml-100k --data_dir /work/shared/data
    python scripts/bench_completion.py --device cuda --rounds 5

Defaults are the published runs' shape: R 256, K 42, batch 4096.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mmf_core as mc  # noqa: E402


def synthetic_triples(n_users: int, n_items: int, n_ratings: int, seed: int):
    """Distinct random (user, item) pairs with ratings in 1..5, ml-100k-like when defaulted."""
    rng = np.random.default_rng(seed)
    keys = rng.choice(n_users * n_items, size=n_ratings, replace=False)
    return keys // n_items, keys % n_items, rng.integers(1, 6, size=n_ratings).astype(np.float32)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="synthetic", help="synthetic, or a dataset of data_utils")
    p.add_argument("--data_dir", default="data_rec")
    p.add_argument("--split", default=None)
    p.add_argument("--users", type=int, default=943, help="synthetic: number of users")
    p.add_argument("--items", type=int, default=1682, help="synthetic: number of items")
    p.add_argument("--ratings", type=int, default=90_000, help="synthetic: training ratings")
    p.add_argument("--R", type=int, default=256)
    p.add_argument("--K", type=int, default=42)
    p.add_argument("--batch_size", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=3, help="timed epochs per model (after one warm-up)")
    p.add_argument("--modes", default="zero,random,learned", help="MMF shift modes to time")
    p.add_argument("--mask", default="gaussian_pos")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads (0: torch's default; on a busy shared machine 1 is often faster)")
    mc.add_device_args(p)
    args = p.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = mc.resolve_device(args.device)
    mc.setup_torch(device, args.tf32, args.deterministic)
    if device.type == "cpu":
        mc.tune_cpu_allocator()     # as main_completion.py does
    if args.dataset == "synthetic":
        users, items, ratings = synthetic_triples(args.users, args.items, args.ratings, 0)
        n_users, n_items, what = args.users, args.items, f"synthetic {args.users} x {args.items}"
    else:
        import data_utils
        split = data_utils.load_split(args.dataset, args.data_dir, args.split, seed=123)
        users, items, ratings = split.train.users, split.train.items, split.train.ratings
        n_users, n_items, what = split.n_users, split.n_items, f"{args.dataset} ({split.split} split, train part)"
    train = mc.RatingTensors.from_arrays(users, items, ratings, device)
    mu = float(train.ratings.mean())
    print(f"{what}: {len(train):,} ratings; R {args.R}, K {args.K}, batch {args.batch_size}, "
          f"device {device}, {torch.get_num_threads()} threads")

    setups = {"MF": dict(kind="mf", lr=2e-3)}
    for mode in mc.parse_str_list(args.modes):
        setups[f"MMF {mode}"] = dict(kind="mmf", lr=5e-3, shift_mode=mode)
    runs = {}
    for name, s in setups.items():
        model = mc.make_rating_model(s["kind"], n_users, n_items, args.R, args.K, mu,
                                     shift_mode=s.get("shift_mode", "zero"), mask_A=args.mask,
                                     mask_B=args.mask, gen=mc.setting_generator(0, name)).to(device)
        runs[name] = (model, model.make_optimizer(s["lr"], 5e-3), torch.Generator().manual_seed(0), [])

    def one_epoch(name):
        model, opt, gen, times = runs[name]
        fit = mc.fit_ratings(model, opt, train, None, epochs=1, batch_size=args.batch_size,
                             patience=1, clamp=None, gen=gen, name=name, print_every=0)
        return fit.sec_per_epoch

    for name in runs:          # warm-up: allocator, thread pools, kernel selection
        one_epoch(name)
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        for name in runs:
            runs[name][3].append(one_epoch(name))
    med = {name: statistics.median(r[3]) for name, r in runs.items()}
    print(f"{'model':<14}{'s/epoch':>10}{'ratings/s':>14}{'x MF time':>11}")
    for name, sec in med.items():
        print(f"{name:<14}{sec:>10.3f}{len(train) / sec:>14,.0f}{sec / med['MF']:>11.2f}")
    print(f"(median of {args.rounds} epochs per model, timed in turns; {time.perf_counter() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    mc.run_cli(main)
