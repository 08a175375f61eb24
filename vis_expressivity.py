"""Expressivity (spec section 5): at the same parameter budget, truncated SVD is stuck at rank
R_budget while MMF's reconstruction spreads over many more singular directions.

For each target (S_10: dense random 1024 x 1024; H_6: block-diagonal 1080 x 1080, 6 blocks)
we fit a rank-R_budget truncated SVD and, for every K in --K_list, an MMF with base rank
Rb = R_budget - K (so (I+J)(Rb+K) = (I+J) R_budget numbers, exactly the SVD's budget), then
look at the singular values of each reconstruction:

    spectrum_<target>.pdf/.png   heatmap (rows: methods, columns: singular-value index,
                                 dashed line at R_budget) beside a line plot of the
                                 normalized spectra sigma_i / sigma_1 on a log axis
    metrics_<target>.csv/.json   per method: rel. error, params, numerical rank, entropy
                                 effective rank, share of spectral energy beyond R_budget
    expressivity_metrics.csv     all targets in one table; manifest.json: config + versions
    spectra_<target>.npz         the singular values behind the plots

Examples:

    # the full run (scripts/run_expressivity.sh): ~12 minutes on a shared 2-core CPU
    python vis_expressivity.py --R_budget 80 --K_list 2,4,8 --mask_mode sin \\
        --svdvals_method lowrank --log10 --out_dir outputs/expressivity
    # the spec's smoke setting, at full size (a few minutes on 2 cores)
    python vis_expressivity.py --R_budget 40 --K_list 2,3,4,5 --log10 --out_dir outputs/expr40
    # tiny (seconds)
    python vis_expressivity.py --S10_size 128 --H6_size 120 --R_budget 8 --K_list 2,4 \\
        --mmf_epochs 200 --out_dir outputs/expr_tiny

Mask names are those of mmf_core.MASKS. Note: the published expressivity script's "gaussian"
was exp(-d^2/2), which is `gaussian_unit` here; `gaussian` means 4*exp(-d^2/2) everywhere.
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
# processes 30-80x slower per step (measured: 63 ms vs 1.7 ms for a 256 x 256 MMF step);
# passive waiting costs little when the machine is idle. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from data_utils import make_blockdiag, make_random
from mmf_core import (MASK_FORMULAS, MASKS, MMF, CLIParser, ConfigError, add_device_args, atomic_path,
                      base_rank, count_params, environment_info, fit_full, make_adam, mf_budget,
                      parse_int_list, parse_str_list, rel_fro, resolve_device, run_cli,
                      savefig_atomic, setting_generator, setup_torch, truncated_svd,
                      write_json_atomic)

# ----------------------------------------------------------------------------------------
# Spectrum metrics. Every function takes singular values sorted in decreasing order (a
# numpy float64 vector, possibly only the top k of them).
# ----------------------------------------------------------------------------------------


def top_singular_values(X: torch.Tensor, k: int, method: str = "full", seed: int = 0) -> np.ndarray:
    """The k largest singular values of X, computed in float64 on X's device.

    full:    exact (LAPACK), all of them, then the top k.
    lowrank: randomized range finder with q = k + 10 and 2 power iterations (Halko et al.),
             much cheaper for k << min(I, J). Its random test matrix is drawn from `seed`, so
             the result is repeatable; the global RNG is left untouched.
    """
    X = X.double()
    k = min(k, min(X.shape))
    if method == "full":
        s = torch.linalg.svdvals(X)[:k]
    elif method == "lowrank":
        q = min(k + 10, min(X.shape))
        devices = [X.device] if X.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            _, s, _ = torch.svd_lowrank(X, q=q, niter=2)
        s = s[:k]
    else:
        raise ConfigError(f"unknown --svdvals_method {method!r} (choose full or lowrank)")
    return s.cpu().numpy().astype(np.float64)


def numerical_rank(s: np.ndarray, rtol: float) -> int:
    """How many singular values exceed rtol * sigma_max (0 for an all-zero matrix)."""
    if len(s) == 0 or s[0] <= 0:
        return 0
    return int(np.sum(s > rtol * s[0]))


def effective_rank(s: np.ndarray) -> float:
    """Entropy effective rank (Roy & Vetterli, 2007): exp(H(p)) with p_i = sigma_i / sum sigma.

    Equals r for r equal nonzero singular values (the identity of size n gives n) and lies
    between 1 and the rank otherwise; it weighs how evenly the energy is spread, not just how
    many directions are nonzero."""
    s = np.asarray(s, dtype=np.float64)
    s = s[s > 0]
    if len(s) == 0:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def energy_beyond(s: np.ndarray, R: int, total_energy: float | None = None) -> float:
    """Share of the spectral energy sum sigma_i^2 beyond index R (i > R, 1-based).

    total_energy = ||X||_F^2 makes this exact even when s holds only the top k values."""
    s = np.asarray(s, dtype=np.float64)
    total = float(np.sum(s ** 2)) if total_energy is None else float(total_energy)
    if total <= 0:
        return 0.0
    return float(max(total - np.sum(s[:R] ** 2), 0.0) / total)


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def get_args(argv=None) -> argparse.Namespace:
    p = CLIParser(description=__doc__.split("\n\n")[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_device_args(p)
    p.add_argument("--out_dir", default="out_express", help="where every file goes")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the targets and every model's initialization (via setting_generator)")
    p.add_argument("--R_budget", type=int, default=80, help="SVD rank; MMF uses Rb = R_budget - K")
    p.add_argument("--K_list", default="2,3,4,5,6,7,8,9", help="comma-separated mask counts K")
    p.add_argument("--mask_mode", default="sin", choices=list(MASKS), metavar="MASK",
                   help="mask g(d) for both sides, a name in mmf_core.MASKS: "
                        + ", ".join(f"{k}={v}" for k, v in MASK_FORMULAS.items())
                        + ". The published script's 'gaussian' is gaussian_unit here")
    p.add_argument("--mmf_epochs", type=int, default=2000,
                   help="full-batch Adam steps per MMF; the best epoch by training loss is kept")
    p.add_argument("--mmf_lr", type=float, default=0.02, help="Adam lr for factors and shifts")
    p.add_argument("--svdvals_method", default="full", choices=["full", "lowrank"],
                   help="exact singular values, or randomized (q = top_k + 10, 2 power iterations)")
    p.add_argument("--svdvals_k_mult", type=float, default=8.0,
                   help="compute the top ceil(k_mult * R_budget) singular values")
    p.add_argument("--svd_device", default="cpu", choices=["cpu", "same"],
                   help="where truncated SVD and the spectra run: cpu, or the training device")
    p.add_argument("--S10_size", type=int, default=1024, help="S_10 is S10_size x S10_size, dense N(0,1)")
    p.add_argument("--H6_size", type=int, default=1080, help="H_6 is H6_size x H6_size, block-diagonal")
    p.add_argument("--H6_blocks", type=int, default=6, help="diagonal blocks of H_6")
    p.add_argument("--targets", default="S_10,H_6", help="which targets to run (S_10, H_6)")
    p.add_argument("--log10", action="store_true", help="heatmap of log10 singular values")
    p.add_argument("--rank_rtol", type=float, default=1e-6,
                   help="numerical rank counts singular values above rank_rtol * sigma_max "
                        "(spectra are computed in float64, so exact zeros sit near 1e-16)")
    p.add_argument("--x_target_fro", type=float, default=-1.0,
                   help="train on the target rescaled to this Frobenius norm (negative: K, as "
                        "in main_reconstruction); metrics are on the original unit-norm scale")
    p.add_argument("--log_every", type=int, default=0, help="print the loss every N epochs (0: never)")
    p.add_argument("--no_plots", action="store_true", help="numbers only, no figures")
    args = p.parse_args(argv)
    validate(args)
    return args


def validate(args) -> None:
    args.K_list = parse_int_list(args.K_list, "--K_list")
    if not args.K_list:
        raise ConfigError("--K_list is empty")
    if args.R_budget < 2:
        raise ConfigError(f"--R_budget must be >= 2 (MMF needs Rb = R_budget - K >= 1), got {args.R_budget}")
    for K in args.K_list:
        base_rank(args.R_budget, K)          # ConfigError if K < 1 or R_budget - K < 1
    args.targets = parse_str_list(args.targets)
    bad = [t for t in args.targets if t not in ("S_10", "H_6")]
    if bad or not args.targets:
        raise ConfigError(f"--targets: unknown {bad or 'empty list'}; choose from S_10, H_6")
    for flag in ("S10_size", "H6_size"):
        if getattr(args, flag) < args.R_budget:
            raise ConfigError(f"--{flag} {getattr(args, flag)} is smaller than --R_budget {args.R_budget}")
    if not 1 <= args.H6_blocks <= args.H6_size:
        raise ConfigError(f"--H6_blocks must be between 1 and --H6_size, got {args.H6_blocks}")
    if args.mmf_epochs < 1:
        raise ConfigError(f"--mmf_epochs must be >= 1, got {args.mmf_epochs}")
    if not (args.mmf_lr > 0 and math.isfinite(args.mmf_lr)):
        raise ConfigError(f"--mmf_lr must be a positive number, got {args.mmf_lr}")
    if not (args.svdvals_k_mult > 0 and math.isfinite(args.svdvals_k_mult)):
        raise ConfigError(f"--svdvals_k_mult must be positive, got {args.svdvals_k_mult}")
    if not 0 < args.rank_rtol < 1:
        raise ConfigError(f"--rank_rtol must be in (0, 1), got {args.rank_rtol}")
    if args.x_target_fro == 0 or not math.isfinite(args.x_target_fro):
        raise ConfigError("--x_target_fro must be positive (or negative for K)")


# ----------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------


def make_target(name: str, args) -> torch.Tensor:
    """S_10 or H_6 as a float64 CPU tensor of unit Frobenius norm (data_utils generators)."""
    if name == "S_10":
        X = make_random(args.S10_size, args.S10_size, args.seed)
    else:
        X = make_blockdiag(args.H6_size, args.H6_size, args.seed, num_blocks=args.H6_blocks)
    X = torch.as_tensor(X).double()
    return X / torch.linalg.norm(X)        # exactly unit norm in float64


def fit_mmf(X: torch.Tensor, K: int, target: str, args, device: torch.device):
    """MMF at the SVD's budget: Rb = R_budget - K, learned shifts from 0, one Adam lr.

    Returns (reconstruction in float64 on the spectrum device, params, FitResult)."""
    I, J = X.shape
    Rb = base_rank(args.R_budget, K)
    fro = K if args.x_target_fro < 0 else args.x_target_fro
    # The target is unit-norm; rescaling it puts the factors on a scale where Adam's lr of
    # 0.02 is a sensible step (as main_reconstruction does); we divide back afterwards.
    Xt = (X * fro).to(device=device, dtype=torch.float32)
    gen = setting_generator(args.seed, target, args.R_budget, K, "mmf")
    model = MMF(I, J, Rb, K, mask_A=args.mask_mode, mask_B=args.mask_mode,
                shifts="learned", gen=gen).to(device)
    res = fit_full(model, Xt, make_adam(model, args.mmf_lr, args.mmf_lr), args.mmf_epochs,
                   log_every=args.log_every, name=f"{target} MMF K={K}")
    if res.message:
        print(res.message, file=sys.stderr)
    with torch.no_grad():
        # Form X_hat from the float32 factors in float64: its rank is then exactly at most
        # K*Rb and the singular values past it sit at ~1e-16, not at float32 noise.
        A_cat, B_cat = model.factors_cat()
        X_hat = (A_cat.double() @ B_cat.double().T) / fro
    return X_hat, count_params(model), res


def spectrum_row(X_hat, X, method, K, Rb, params, top_k, args, spec_seed, extra=None) -> tuple[dict, np.ndarray]:
    s = top_singular_values(X_hat, top_k, args.svdvals_method, spec_seed)
    fro2 = float(torch.linalg.norm(X_hat.double()) ** 2)
    row = {
        "method": method, "K": K, "Rb": Rb, "params": params,
        # the most the structure allows: R for SVD, K*Rb for MMF (A_cat has K*Rb columns)
        "rank_cap": (K * Rb if K else Rb) if method != "target" else min(X.shape),
        "rel_fro": rel_fro(X_hat, X),
        "numerical_rank": numerical_rank(s, args.rank_rtol),
        # a numerical rank equal to top_k only says "at least top_k"
        "rank_is_lower_bound": bool(numerical_rank(s, args.rank_rtol) >= len(s) and len(s) < min(X.shape)),
        "effective_rank": effective_rank(s),
        "energy_beyond_R": energy_beyond(s, args.R_budget, fro2),
        "sigma_1": float(s[0]) if len(s) else 0.0,
    }
    row.update(extra or {})
    return row, s


def run_target(name: str, args, device: torch.device, spec_device: torch.device):
    X = make_target(name, args)                          # float64, CPU, unit norm
    I, J = X.shape
    top_k = min(math.ceil(args.svdvals_k_mult * args.R_budget), min(I, J))
    print(f"[{name}] {I} x {J}, R_budget {args.R_budget}, budget {mf_budget(I, J, args.R_budget)} "
          f"numbers, top {top_k} singular values ({args.svdvals_method})")
    Xs = X.to(spec_device)
    rows, spectra = [], {}

    def add(row, s):
        rows.append(row)
        spectra[row["method"]] = s
        if row["method"] != "target":
            print(f"  {row['method']:<16} rel_fro {row['rel_fro']:.4f}  num.rank "
                  f"{row['numerical_rank']:4d}  eff.rank {row['effective_rank']:7.2f}  "
                  f"energy>R {row['energy_beyond_R']:.3e}  ({row['train_time_sec']:.1f}s fit)")

    # the target itself, for reference (not a method; its rank is min(I, J))
    add(*spectrum_row(Xs, Xs, "target", 0, 0, I * J, top_k, args, args.seed))

    t0 = time.perf_counter()
    X_svd = truncated_svd(Xs, args.R_budget)             # float64 in, float64 out
    add(*spectrum_row(X_svd, Xs, f"SVD R={args.R_budget}", 0, args.R_budget,
                      mf_budget(I, J, args.R_budget), top_k, args, args.seed,
                      {"train_time_sec": time.perf_counter() - t0, "best_epoch": 0}))

    for K in args.K_list:
        X_hat, params, res = fit_mmf(X, K, name, args, device)
        add(*spectrum_row(X_hat.to(spec_device), Xs, f"MMF K={K}", K, args.R_budget - K,
                          params, top_k, args, args.seed,
                          {"train_time_sec": res.train_time_sec, "best_epoch": res.best_epoch,
                           "diverged": res.diverged}))
    for r in rows:
        r["target"], r["I"], r["J"], r["R_budget"] = name, I, J, args.R_budget
    return rows, spectra, top_k


def plot_target(name: str, spectra: dict, rows: list[dict], top_k: int, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [r["method"] for r in rows if r["method"] != "target"]
    M = np.zeros((len(methods), top_k))
    for i, m in enumerate(methods):
        M[i, :len(spectra[m])] = spectra[m]
    vmax = M.max() if M.size else 1.0
    if args.log10:
        # values under the rank tolerance (numerical zeros, ~1e-16) all get the bottom colour,
        # so the coloured width of a row is its numerical rank
        floor = args.rank_rtol * vmax
        M = np.log10(np.maximum(M, floor))
        clabel = f"log10 singular value (floor {args.rank_rtol:g} x max)"
    else:
        clabel = "singular value"

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 0.45 * len(methods) + 2.6),
                                  gridspec_kw={"width_ratios": [1.6, 1]})
    im = ax.imshow(M, aspect="auto", interpolation="nearest", cmap="viridis",
                   extent=(0.5, top_k + 0.5, len(methods) - 0.5, -0.5))
    ax.axvline(args.R_budget + 0.5, color="white", ls="--", lw=1.5)
    ax.axvline(args.R_budget + 0.5, color="black", ls=(0, (3, 3)), lw=1.5)
    ax.set_yticks(range(len(methods)), methods)
    ax.set_xlabel(f"singular value index (dashed: R_budget = {args.R_budget})")
    ax.set_title(f"{name}: singular values of each reconstruction")
    fig.colorbar(im, ax=ax, label=clabel, fraction=0.046, pad=0.02)

    # normalized spectra on one log axis: where each curve drops off is its rank
    idx = np.arange(1, top_k + 1)
    st = spectra["target"]
    ax2.semilogy(idx[:len(st)], st / st[0], color="0.6", lw=2.5, label="target", zorder=1)
    for m in methods:
        s = spectra[m]
        norm = np.maximum(s / s[0], 1e-17) if s[0] > 0 else np.full_like(s, 1e-17)
        svd = m.startswith("SVD")
        ax2.semilogy(idx[:len(s)], norm, lw=2.2 if svd else 1.3, color="k" if svd else None,
                     ls="--" if svd else "-", label=m, zorder=3 if svd else 2)
    ax2.axvline(args.R_budget, color="0.4", ls=":", lw=1)
    ax2.axhline(args.rank_rtol, color="r", ls=":", lw=1, label=f"rank tol {args.rank_rtol:g}")
    ax2.set_ylim(max(args.rank_rtol / 100, 1e-17), 2)
    ax2.set_xlabel("index i")
    ax2.set_ylabel("sigma_i / sigma_1")
    ax2.set_title("normalized spectra")
    ax2.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    for ext in ("pdf", "png"):
        savefig_atomic(fig, Path(args.out_dir) / f"spectrum_{name}.{ext}", dpi=130)
    plt.close(fig)


COLUMNS = ["target", "method", "I", "J", "R_budget", "K", "Rb", "params", "rel_fro",
           "rank_cap", "numerical_rank", "rank_is_lower_bound", "effective_rank", "energy_beyond_R",
           "sigma_1", "best_epoch", "train_time_sec", "diverged"]


def write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in COLUMNS})


def main(argv=None) -> int:
    args = get_args(argv)
    device = resolve_device(args.device)
    setup_torch(device, args.tf32, args.deterministic)
    spec_device = torch.device("cpu") if args.svd_device == "cpu" else device
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.mask_mode == "gaussian":
        print("note: mask 'gaussian' is 4*exp(-d^2/2); the published expressivity script's "
              "'gaussian' was exp(-d^2/2), i.e. --mask_mode gaussian_unit", file=sys.stderr)
    print(f"device {device}, spectra on {spec_device}, mask {args.mask_mode} "
          f"({MASK_FORMULAS[args.mask_mode]}), K_list {args.K_list}")
    t_start = time.perf_counter()
    all_rows = []
    for name in args.targets:
        rows, spectra, top_k = run_target(name, args, device, spec_device)
        all_rows += rows
        write_csv(out / f"metrics_{name}.csv", rows)
        write_json_atomic(out / f"metrics_{name}.json",
                          {"target": name, "rank_rtol": args.rank_rtol, "top_k": top_k,
                           "svdvals_method": args.svdvals_method, "rows": rows})
        with atomic_path(out / f"spectra_{name}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{k.replace(" ", "_"): v for k, v in spectra.items()})
        if not args.no_plots:
            plot_target(name, spectra, rows, top_k, args)
    write_csv(out / "expressivity_metrics.csv", all_rows)
    write_json_atomic(out / "manifest.json", {
        "script": "vis_expressivity.py", "argv": sys.argv[1:] if argv is None else list(argv),
        "config": vars(args), "mask_formula": MASK_FORMULAS[args.mask_mode],
        "wall_time_sec": time.perf_counter() - t_start, "environment": environment_info(device)})
    print(f"wrote {out}/ in {time.perf_counter() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    run_cli(main)
