"""Identifiability (spec section 6): train MF and MMF twice from different seeds on the same
target and ask whether the two runs learn the same left factors, column by column.

MF (X ~ A B^T) is only determined up to an invertible R x R transform G (A G, B G^-T fit
equally well), so two runs need not share a single column. MMF gates each latent dimension
r with masks whose position depends on r (d = w_k r - h u), so mixing dimensions changes
the fit: with the masks held fixed ("fixed_mask" mode) column r has the same role in both
runs. Whether the runs then learn the same columns is what this script measures (see
docs/vis_results.md for the numbers: the raw diagonal stands out for MMF, but the matched
|cos| stays low because the two runs settle in different fits).

Target: num_blocks equal diagonal blocks of size I//num_blocks x J//num_blocks holding N(0,1)
entries (data seed 999), zeros elsewhere, normalized and scaled to Frobenius norm K.
MF has rank R; MMF has Rb = R and K masks (4*exp(-d^2/2) by default); Adam lr 0.02.

For each pair of runs (a, b) we form S[r, r'] = |cos(A_a[:, r], A_b[:, r'])| (R x R) and match
columns one-to-one with the Hungarian algorithm (maximizing the matched similarity). Reported
per model: mean matched |cos|, share of matched columns with |cos| > 0.9, the raw diagonal
and off-diagonal means (no matching), how close the two column spaces are (mean cosine of
the principal angles), the matched |cos| a random basis of run a's own column space would
get (the chance level for a model identifiable only up to rotation), and each run's
relative error ||X_hat - X||_F / ||X||_F (a stable but poor fit would not count as success;
the rank-R truncated SVD error is given for scale).

Files in --out_dir:
    mf_corr_raw.pdf/.png, mmf_corr_raw.pdf/.png                  |cos| of the first pair
    mf_corr_reordered.pdf/.png, mmf_corr_reordered.pdf/.png      with --reorder (run b's
                                                                 columns Hungarian-permuted)
    corr_overview.png                                            MF and MMF side by side
                                                                 (raw; matched below it)
    identifiability_metrics.csv / .json                          every pair + mean/std/min/max

Examples:

    # spec settings (scripts/run_identifiability.sh)
    python vis_identifiability.py --mode fixed_mask --I 512 --J 512 --R 40 --K 4 \\
        --epochs 4000 --mask_mode gaussian --reorder --out_dir outputs/identifiability
    # three seed pairs: (101, 202), (102, 203), (103, 204); mean and spread are reported
    python vis_identifiability.py --reorder --n_pairs 3 --out_dir outputs/iden3
    # each run draws its own shifts and learns them
    python vis_identifiability.py --mode random_mask --learn_shifts --reorder
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

# OpenMP threads that spin while waiting for work make a 2-core machine shared with other
# processes 30-80x slower per step; passive waiting costs little when the machine is idle.
# Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from mmf_core import (MASK_FORMULAS, MASKS, MF, MMF, CLIParser, ConfigError, add_device_args, atomic_path,
                      environment_info, fit_full, make_adam, rel_fro, resolve_device, run_cli,
                      savefig_atomic, setting_generator, setup_torch, truncated_svd,
                      write_json_atomic)

# ----------------------------------------------------------------------------------------
# Column matching
# ----------------------------------------------------------------------------------------


def abs_cosine_matrix(A: torch.Tensor, B: torch.Tensor) -> np.ndarray:
    """S[r, r'] = |cos(A[:, r], B[:, r'])| in float64. An all-zero column matches nothing (0)."""
    A, B = A.detach().double().cpu(), B.detach().double().cpu()
    An = A / torch.linalg.norm(A, dim=0).clamp_min(1e-300)
    Bn = B / torch.linalg.norm(B, dim=0).clamp_min(1e-300)
    return (An.T @ Bn).abs().clamp_(max=1.0).numpy()


def hungarian_match(S: np.ndarray) -> np.ndarray:
    """perm such that column perm[r] of run b is matched to column r of run a, maximizing
    sum_r S[r, perm[r]] (scipy's linear_sum_assignment)."""
    rows, cols = linear_sum_assignment(S, maximize=True)
    perm = np.empty(S.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def match_stats(S: np.ndarray, thresh: float = 0.9) -> dict:
    """Matched and raw similarity summaries of an |cos| matrix S (runs a x b).

    mean_diag / mean_offdiag compare column r with column r (no matching) against all other
    pairs: with shared fixed masks, MMF's column r has the same role in both runs, so an
    identifiable model shows a diagonal well above the off-diagonal background."""
    perm = hungarian_match(S)
    n = S.shape[0]
    matched = S[np.arange(n), perm]
    off = ~np.eye(n, dtype=bool)
    return {"mean_matched_abs_cos": float(matched.mean()),
            "share_matched_above_0.9": float(np.mean(matched > thresh)),
            "min_matched_abs_cos": float(matched.min()),
            "mean_diag_abs_cos": float(np.mean(np.diag(S))),
            "mean_offdiag_abs_cos": float(S[off].mean()) if n > 1 else 0.0,
            "perm": perm}


def subspace_stats(A: torch.Tensor, B: torch.Tensor, gen: torch.Generator) -> dict:
    """Is it the same column space, and what would an arbitrary basis of it score?

    subspace_cos: mean cosine of the principal angles between span(A) and span(B) (1: the
    same space). random_basis_matched_abs_cos: the mean matched |cos| between A and A Q for
    a random orthogonal Q: the score of a basis of A's own span chosen at random, i.e. the
    chance level of mean_matched_abs_cos for a model identifiable only up to rotation."""
    A, B = A.detach().double().cpu(), B.detach().double().cpu()
    Qa, Qb = torch.linalg.qr(A)[0], torch.linalg.qr(B)[0]
    R = A.shape[1]
    Q, Rq = torch.linalg.qr(torch.randn(R, R, generator=gen, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(Rq))               # Haar-distributed
    return {"subspace_cos": float(torch.linalg.svdvals(Qa.T @ Qb).clamp(max=1.0).mean()),
            "random_basis_matched_abs_cos":
                match_stats(abs_cosine_matrix(A, A @ Q))["mean_matched_abs_cos"]}


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def get_args(argv=None) -> argparse.Namespace:
    p = CLIParser(description=__doc__.split("\n\n")[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_device_args(p)
    p.add_argument("--out_dir", default="out_iden", help="where every file goes")
    p.add_argument("--mode", default="fixed_mask", choices=["fixed_mask", "random_mask"],
                   help="fixed_mask: both runs share fixed shifts drawn from --fixed_mask_seed; "
                        "random_mask: each run draws its own (learned with --learn_shifts)")
    p.add_argument("--I", type=int, default=512, help="rows of the target")
    p.add_argument("--J", type=int, default=512, help="columns of the target")
    p.add_argument("--R", type=int, default=40, help="MF rank and MMF base rank Rb")
    p.add_argument("--K", type=int, default=4, help="number of MMF masks")
    p.add_argument("--epochs", type=int, default=4000, help="full-batch Adam steps per run")
    p.add_argument("--lr", type=float, default=0.02, help="Adam learning rate (both models)")
    p.add_argument("--num_blocks", type=int, default=6, help="equal diagonal blocks of the target")
    p.add_argument("--data_seed", type=int, default=999, help="seed of the target")
    p.add_argument("--seed_a", type=int, default=101, help="initialization seed of run a")
    p.add_argument("--seed_b", type=int, default=202, help="initialization seed of run b")
    p.add_argument("--n_pairs", type=int, default=1,
                   help="repeat over N seed pairs (seed_a + p, seed_b + p), p = 0..N-1; "
                        "the plots show the first pair")
    p.add_argument("--mask_mode", default="gaussian", choices=list(MASKS), metavar="MASK",
                   help="mask g(d), a name in mmf_core.MASKS (gaussian = 4*exp(-d^2/2), the "
                        "published default; others: sigmoid, cos, ...)")
    p.add_argument("--shift_placement", default="outer", choices=["outer", "inner"],
                   help="outer: d = w_k r - h u (reconstruction form); inner: d = w_k (r - h u)")
    p.add_argument("--learn_shifts", action="store_true", help="random_mask mode: learn the shifts")
    p.add_argument("--fixed_mask_seed", type=int, default=777,
                   help="seed of the shared shifts (uniform in [0, 2)) of fixed_mask mode")
    p.add_argument("--reorder", action="store_true",
                   help="also plot run b's columns permuted by the Hungarian matching")
    p.add_argument("--tick_step", type=int, default=8, help="heatmap tick spacing")
    p.add_argument("--log_every", type=int, default=0, help="print the loss every N epochs (0: never)")
    p.add_argument("--no_plots", action="store_true", help="numbers only, no figures")
    args = p.parse_args(argv)
    validate(args)
    return args


def validate(args) -> None:
    for flag in ("I", "J", "R", "K", "epochs", "num_blocks", "n_pairs", "tick_step"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.num_blocks > min(args.I, args.J):
        raise ConfigError(f"--num_blocks {args.num_blocks} exceeds min(I, J) = {min(args.I, args.J)}")
    if args.R > min(args.I, args.J):
        raise ConfigError(f"--R {args.R} exceeds min(I, J) = {min(args.I, args.J)}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise ConfigError(f"--lr must be a positive number, got {args.lr}")
    if args.mode == "fixed_mask" and args.learn_shifts:
        raise ConfigError("--learn_shifts applies to --mode random_mask only (fixed_mask keeps "
                          "the shared shifts fixed)")


# ----------------------------------------------------------------------------------------
# Target, models, one pair of runs
# ----------------------------------------------------------------------------------------


def make_equal_blocks(I: int, J: int, num_blocks: int, seed: int, scale: float) -> torch.Tensor:
    """num_blocks diagonal blocks of size I//num_blocks x J//num_blocks filled with N(0,1),
    zeros elsewhere (the I % num_blocks last rows / columns stay zero), scaled to Frobenius
    norm `scale`. float32 on the CPU; drawn with torch's generator like data_utils."""
    gen = torch.Generator().manual_seed(seed)
    bi, bj = I // num_blocks, J // num_blocks
    X = torch.zeros(I, J)
    for b in range(num_blocks):
        X[b * bi:(b + 1) * bi, b * bj:(b + 1) * bj] = torch.randn(bi, bj, generator=gen)
    return X * (scale / torch.linalg.norm(X))


def draw_shifts(I: int, J: int, K: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifts uniform in [0, 2), so h*u (h = Rb/2) spans [0, Rb): the mask centres w_k r = h u
    cover every latent index for the last mask (w_K = 1) and the first w_k * Rb for the others."""
    return torch.rand(I, K, generator=gen) * 2.0, torch.rand(J, K, generator=gen) * 2.0


def train_run(kind: str, seed: int, X: torch.Tensor, args, device, shared_shifts) -> dict:
    """One run of MF or MMF from `seed`; returns its left factor A (CPU) and fit numbers."""
    I, J = X.shape
    gen = setting_generator(seed, kind, I, J, args.R, args.K)
    if kind == "mf":
        model = MF(I, J, args.R, gen=gen)
    else:
        if args.mode == "fixed_mask":
            shifts, init = "fixed", shared_shifts
        else:
            shifts = "learned" if args.learn_shifts else "fixed"
            init = draw_shifts(I, J, args.K, setting_generator(seed, "shifts", I, J, args.K))
        model = MMF(I, J, args.R, args.K, mask_A=args.mask_mode, mask_B=args.mask_mode,
                    shifts=shifts, shift_init=init, shift_placement=args.shift_placement, gen=gen)
    model = model.to(device)
    res = fit_full(model, X, make_adam(model, args.lr, args.lr), args.epochs,
                   log_every=args.log_every, name=f"{kind} seed {seed}")
    if res.message:
        print(res.message, file=sys.stderr)
    with torch.no_grad():
        err = rel_fro(model(), X)
    return {"A": model.A.detach().cpu(), "rel_fro": err, "best_epoch": res.best_epoch,
            "train_time_sec": res.train_time_sec, "diverged": res.diverged}


def run_pair(p: int, X, args, device, shared_shifts) -> tuple[list[dict], dict]:
    sa, sb = args.seed_a + p, args.seed_b + p
    rows, sims = [], {}
    for kind in ("mf", "mmf"):
        ra = train_run(kind, sa, X, args, device, shared_shifts)
        rb = train_run(kind, sb, X, args, device, shared_shifts)
        S = abs_cosine_matrix(ra["A"], rb["A"])
        st = match_stats(S)
        sims[kind] = (S, st["perm"])
        sub = subspace_stats(ra["A"], rb["A"], setting_generator(sa, sb, kind, "rotation"))
        rows.append({"pair": p, "seed_a": sa, "seed_b": sb, "model": kind,
                     **{k: v for k, v in st.items() if k != "perm"}, **sub,
                     "rel_fro_a": ra["rel_fro"], "rel_fro_b": rb["rel_fro"],
                     "best_epoch_a": ra["best_epoch"], "best_epoch_b": rb["best_epoch"],
                     "train_time_sec": ra["train_time_sec"] + rb["train_time_sec"],
                     "diverged": ra["diverged"] or rb["diverged"]})
        r = rows[-1]
        print(f"  pair {p} ({sa}, {sb}) {kind.upper():<3}  mean matched |cos| "
              f"{r['mean_matched_abs_cos']:.3f}  >0.9: {100 * r['share_matched_above_0.9']:5.1f}%  "
              f"(random basis {r['random_basis_matched_abs_cos']:.3f})  raw diag/off "
              f"{r['mean_diag_abs_cos']:.3f}/{r['mean_offdiag_abs_cos']:.3f}  same span "
              f"{r['subspace_cos']:.3f}  rel_fro {r['rel_fro_a']:.4f} / "
              f"{r['rel_fro_b']:.4f}  ({r['train_time_sec']:.1f}s)")
    return rows, sims


SUMMARY_KEYS = ["mean_matched_abs_cos", "share_matched_above_0.9", "min_matched_abs_cos",
                "mean_diag_abs_cos", "mean_offdiag_abs_cos", "subspace_cos",
                "random_basis_matched_abs_cos", "rel_fro"]


def summarize(rows: list[dict]) -> dict:
    """Mean, sample std, min and max over pairs of each metric, per model (both runs' errors
    pooled under rel_fro)."""
    out = {}
    for kind in ("mf", "mmf"):
        rs = [r for r in rows if r["model"] == kind]
        out[kind] = {}
        for key in SUMMARY_KEYS:
            v = (np.array([x for r in rs for x in (r["rel_fro_a"], r["rel_fro_b"])])
                 if key == "rel_fro" else np.array([r[key] for r in rs]))
            out[kind][key] = {"mean": float(v.mean()),
                              "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                              "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}
    return out


# ----------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------


def _heatmap(ax, S, title, tick_step, xlabel):
    im = ax.imshow(S, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    ticks = np.arange(0, S.shape[0], tick_step)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("run a: column r")
    ax.set_title(title, fontsize=10)
    return im


def plot_pair(sims: dict, rows: list[dict], args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out_dir)
    variants = ["raw"] + (["reordered"] if args.reorder else [])
    stats = {r["model"]: r for r in rows}
    for kind in ("mf", "mmf"):
        S, perm = sims[kind]
        r = stats[kind]
        for v in variants:
            M = S if v == "raw" else S[:, perm]
            fig, ax = plt.subplots(figsize=(5.2, 4.4))
            im = _heatmap(ax, M, f"{kind.upper()} |cos| of left factors, {v}\n"
                          f"seeds {r['seed_a']} vs {r['seed_b']}: mean matched "
                          f"{r['mean_matched_abs_cos']:.3f}, rel_fro {r['rel_fro_a']:.3f}",
                          args.tick_step, "run b: column" + (" (Hungarian order)" if v != "raw" else ""))
            fig.colorbar(im, ax=ax, label="|cosine|")
            fig.tight_layout()
            for ext in ("pdf", "png"):
                savefig_atomic(fig, out / f"{kind}_corr_{v}.{ext}", dpi=120)
            plt.close(fig)
    # one overview for the README: MF and MMF side by side, raw (and matched with --reorder)
    fig, axes = plt.subplots(len(variants), 2, figsize=(10, 4.3 * len(variants)), squeeze=False,
                             layout="constrained")
    for row, v in zip(axes, variants):
        for ax, kind in zip(row, ("mf", "mmf")):
            S, perm = sims[kind]
            r = stats[kind]
            note = (f"mean matched {r['mean_matched_abs_cos']:.3f}" if v != "raw" else
                    f"diag {r['mean_diag_abs_cos']:.3f}, off-diag {r['mean_offdiag_abs_cos']:.3f}")
            im = _heatmap(ax, S if v == "raw" else S[:, perm],
                          f"{kind.upper()} {v}: {note} (rel_fro {r['rel_fro_a']:.3f})",
                          args.tick_step, "run b: column" + (" (Hungarian order)" if v != "raw" else ""))
    fig.colorbar(im, ax=axes, label="|cosine|", fraction=0.025)
    savefig_atomic(fig, out / "corr_overview.png", dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------

CSV_COLUMNS = ["pair", "seed_a", "seed_b", "model", "mean_matched_abs_cos",
               "share_matched_above_0.9", "min_matched_abs_cos", "mean_diag_abs_cos",
               "mean_offdiag_abs_cos", "subspace_cos", "random_basis_matched_abs_cos",
               "rel_fro_a", "rel_fro_b", "best_epoch_a", "best_epoch_b", "train_time_sec",
               "diverged"]


def main(argv=None) -> int:
    args = get_args(argv)
    device = resolve_device(args.device)
    setup_torch(device, args.tf32, args.deterministic)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    X_cpu = make_equal_blocks(args.I, args.J, args.num_blocks, args.data_seed, float(args.K))
    # the best any rank-R factorization can do, for scale (MMF can go below it)
    svd_err = rel_fro(truncated_svd(X_cpu, args.R), X_cpu)
    X = X_cpu.to(device)
    shared = draw_shifts(args.I, args.J, args.K, torch.Generator().manual_seed(args.fixed_mask_seed))
    print(f"device {device}; {args.mode}; target {args.I} x {args.J}, {args.num_blocks} blocks of "
          f"{args.I // args.num_blocks} x {args.J // args.num_blocks}, ||X||_F = K = {args.K}; "
          f"R {args.R}, K {args.K}, mask {args.mask_mode} ({MASK_FORMULAS[args.mask_mode]}); "
          f"rank-{args.R} SVD rel_fro {svd_err:.4f}")

    rows, first = [], None
    for p in range(args.n_pairs):
        pair_rows, sims = run_pair(p, X, args, device, shared)
        rows += pair_rows
        if first is None:
            first = (sims, pair_rows)
    summary = summarize(rows)
    for kind in ("mf", "mmf"):
        s = summary[kind]
        print(f"{kind.upper():<3} over {args.n_pairs} pair(s): mean matched |cos| "
              f"{s['mean_matched_abs_cos']['mean']:.3f} +- {s['mean_matched_abs_cos']['std']:.3f}, "
              f"(random basis {s['random_basis_matched_abs_cos']['mean']:.3f}), raw diag/off "
              f"{s['mean_diag_abs_cos']['mean']:.3f}/{s['mean_offdiag_abs_cos']['mean']:.3f}, "
              f">0.9 {100 * s['share_matched_above_0.9']['mean']:.1f}%, rel_fro "
              f"{s['rel_fro']['mean']:.4f} +- {s['rel_fro']['std']:.4f}")

    with atomic_path(out / "identifiability_metrics.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    if not args.no_plots:
        plot_pair(*first, args)
    wall = time.perf_counter() - t_start
    write_json_atomic(out / "identifiability_metrics.json", {
        "script": "vis_identifiability.py", "argv": sys.argv[1:] if argv is None else list(argv),
        "config": vars(args), "mask_formula": MASK_FORMULAS[args.mask_mode],
        "svd_rank_R_rel_fro": svd_err, "pairs": rows, "summary": summary,
        "wall_time_sec": wall, "environment": environment_info(device)})
    print(f"wrote {out}/ in {wall:.1f}s")
    return 0


if __name__ == "__main__":
    run_cli(main)
