"""Reconstruction experiment: fit a fully observed synthetic matrix with MMF and with
baselines at the same parameter budget (I+J)*R, and report the relative Frobenius error.

Spec: ../shared/docs/MMF_SPEC.md section 2. Examples:

    # smoke run (seconds on a laptop CPU)
    python main_reconstruction.py --I 128 --J 128 --R_list 16 --K_ratio 0.5 --epochs 2000 \
        --methods mmf,svd --out_dir outputs/smoke_reconstruction --device cpu

    # the budget sweep of the paper (256 x 256 block-diagonal, R 16..80, K = 0.75 R)
    python main_reconstruction.py --I 256 --J 256 --R_list 16,32,48,64,80 --K_ratio 0.75 \
        --data_mode blockdiag --num_blocks 6 --seed 42 --epochs 2000 \
        --out_dir outputs/reconstruction_budget_sweep --device cuda

    # K_ratio sweep at fixed budgets, three seeds
    python main_reconstruction.py --I 256 --J 256 --R_list 32,64 --K_ratio_list 0.25,0.5,0.75 \
        --seeds 1,2,3 --out_dir outputs/kratio_sweep

Writes into --out_dir: results_I{I}_J{J}_{data_mode}_mask{A}-{B}.csv (one row per seed, R, K,
method), the same name with .manifest.json (arguments, versions, device), and PNG plots of
rel_fro vs budget (one per K_ratio) and rel_fro vs K_ratio (one per R).
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import mmf_core as core
from data_utils import make_synthetic

METHODS = ("mmf", "svd", "mf_sgd", "mf_ridge", "mf_bias", "nmf")
CSV_COLUMNS = ["seed", "I", "J", "R", "K", "K_ratio", "budget", "method", "params", "best_epoch",
               "train_time_sec", "mse", "rel_fro", "status"]


def build_parser() -> argparse.ArgumentParser:
    p = core.CLIParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("matrix")
    g.add_argument("--I", type=int, default=1080, help="rows")
    g.add_argument("--J", type=int, default=1080, help="columns")
    g.add_argument("--data_mode", default="blockdiag", choices=["random", "blockdiag"])
    g.add_argument("--dist", default="normal", choices=["normal", "uniform"])
    g.add_argument("--data_nonneg", action="store_true", help="shift to nonnegative values (enables nmf)")
    g.add_argument("--num_blocks", type=int, default=6)
    g.add_argument("--block_scale", type=float, default=1.0)
    g.add_argument("--offblock_noise_scale", type=float, default=0.01)
    g.add_argument("--x_target_fro", type=float, default=-1.0,
                   help="train on X rescaled to this Frobenius norm (negative: K); metrics use the original scale")
    g = p.add_argument_group("budget sweep")
    g.add_argument("--R", type=int, default=80, help="budget rank when --R_list is empty")
    g.add_argument("--R_list", default="80,160,240", help="comma-separated budget ranks")
    g.add_argument("--K", type=int, default=40, help="number of masks when --K_ratio < 0")
    g.add_argument("--K_ratio", type=float, default=0.4,
                   help="K = round(K_ratio*R) clipped to [1, R-1]; negative: use --K")
    g.add_argument("--K_ratio_list", default="", help="comma-separated K_ratio values (overrides --K_ratio)")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--seeds", default="", help="comma-separated seeds (overrides --seed); data uses the first")
    g.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {','.join(METHODS)}")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=2000)
    g.add_argument("--log_every", type=int, default=200, help="loss line every N epochs (0: off)")
    g.add_argument("--lr_factors", type=float, default=2e-2, help="MMF: Adam lr of A, B")
    g.add_argument("--lr_shifts", type=float, default=1e-2, help="MMF: Adam lr of the shifts")
    g.add_argument("--lr_mf_sgd", type=float, default=0.2)
    g.add_argument("--mf_sgd_momentum", type=float, default=0.999)
    g.add_argument("--lr_mf_ridge", type=float, default=2e-2)
    g.add_argument("--ridge_lambda", type=float, default=1e-3)
    g.add_argument("--lr_mf_bias", type=float, default=2e-2)
    g.add_argument("--bias_ridge_lambda", type=float, default=0.0)
    g.add_argument("--bias_rank_bonus", type=int, default=0)
    g.add_argument("--lr_nmf", type=float, default=2e-2)
    g.add_argument("--mask_mode_A", default="gaussian", help=f"mask family: {', '.join(core.MASKS)}")
    g.add_argument("--mask_mode_B", default="gaussian")
    g.add_argument("--mask_scale", type=float, default=-1.0, help="s in s^2 * sum_k ...; negative: 1/K")
    g = p.add_argument_group("system")
    core.add_device_args(p)
    core.add_sweep_args(g, "--out_dir")
    g.add_argument("--out_dir", default="out")
    g.add_argument("--no_plots", action="store_true")
    g.add_argument("--mpl_backend", default="Agg")
    return p


@dataclass(frozen=True)
class Setting:
    """One row of the sweep."""
    seed: int
    R: int
    K: int
    K_ratio: float
    method: str


def plan_sweep(args) -> list[Setting]:
    """Validate the flags and list every (seed, R, K, method) setting in output order."""
    if args.I < 1 or args.J < 1:
        raise core.ConfigError(f"--I and --J must be >= 1, got I={args.I}, J={args.J}")
    if args.epochs < 1:
        raise core.ConfigError(f"--epochs must be >= 1, got {args.epochs}")
    methods = core.parse_str_list(args.methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise core.ConfigError(f"unknown method(s) {','.join(unknown) or '(none given)'}; "
                               f"choose from {','.join(METHODS)}")
    core.get_mask(args.mask_mode_A), core.get_mask(args.mask_mode_B)   # validates the names
    R_values = core.parse_int_list(args.R_list, "--R_list") or [args.R]
    if any(R < 1 for R in R_values):
        raise core.ConfigError(f"every R must be >= 1, got {R_values}")
    seeds = core.parse_int_list(args.seeds, "--seeds") or [args.seed]
    ratios = core.parse_float_list(args.K_ratio_list, "--K_ratio_list")
    if not ratios and args.K_ratio >= 0:
        ratios = [args.K_ratio]
    if any(r < 0 for r in ratios):
        raise core.ConfigError(f"--K_ratio_list values must be >= 0, got {ratios}")
    settings = []
    for seed in seeds:
        for R in R_values:
            if ratios:
                Ks = [(core.k_from_ratio(R, r) if "mmf" in methods else max(1, round(r * R)), r)
                      for r in ratios]
            else:
                if "mmf" in methods:
                    core.base_rank(R, args.K)          # explicit K: Rb = R - K must be >= 1
                Ks = [(args.K, args.K / R)]
            for K, ratio in Ks:
                for m in methods:
                    settings.append(Setting(seed, R, K, ratio, m))
    return settings


def build_model(s: Setting, args, I: int, J: int):
    """The model, its optimizer and (optional) penalty for one setting; None for svd."""
    # Every run draws its initial factors from a generator seeded with the run's seed, as the
    # published scripts re-seeded before each run: results do not depend on which settings
    # ran before (or on another process, see --resume / torchrun).
    gen = torch.Generator().manual_seed(s.seed)
    if s.method == "mmf":
        Rb = core.base_rank(s.R, s.K)
        model = core.MMF(I, J, Rb, s.K, args.mask_mode_A, args.mask_mode_B,
                         scale=args.mask_scale, shift_placement="outer", shifts="learned", gen=gen)
        return model, lambda m: core.make_adam(m, args.lr_factors, args.lr_shifts), None
    if s.method == "mf_sgd":
        model = core.MF(I, J, s.R, gen=gen)
        return model, lambda m: torch.optim.SGD(m.parameters(), lr=args.lr_mf_sgd,
                                                momentum=args.mf_sgd_momentum), None
    if s.method == "mf_ridge":
        model = core.MF(I, J, s.R, gen=gen)
        lam = args.ridge_lambda / (I * J)
        return model, lambda m: core.make_adam(m, args.lr_mf_ridge), \
            lambda m: lam * (m.A.square().sum() + m.B.square().sum())
    if s.method == "mf_bias":
        model = core.MF(I, J, core.bias_mf_rank(I, J, s.R, args.bias_rank_bonus), bias=True, gen=gen)
        lam = args.bias_ridge_lambda / (I * J)
        pen = (lambda m: lam * (m.A.square().sum() + m.B.square().sum())) if lam > 0 else None
        return model, lambda m: core.make_adam(m, args.lr_mf_bias), pen
    if s.method == "nmf":
        model = core.MF(I, J, s.R, nonneg=True, gen=gen)
        return model, lambda m: core.make_adam(m, args.lr_nmf), None
    return None, None, None


def run_setting(s: Setting, X: torch.Tensor, args, device: torch.device, log=print) -> dict:
    """Fit one setting on X (original scale, on `device`) and return its CSV row."""
    I, J = X.shape
    target = args.x_target_fro if args.x_target_fro > 0 else float(s.K)
    scale = target / float(torch.linalg.norm(X))        # train on X * scale, report on X
    Xt = X * scale
    row = dict(seed=s.seed, I=I, J=J, R=s.R, K=s.K, K_ratio=round(s.K_ratio, 6),
               budget=core.mf_budget(I, J, s.R), method=s.method, status="ok")
    name = f"{s.method}(R={s.R},K={s.K},seed={s.seed})"
    if s.method == "svd":
        core.sync(device)
        t0 = time.perf_counter()
        X_hat = core.truncated_svd(Xt, s.R)
        core.sync(device)
        row.update(params=core.mf_budget(I, J, s.R), best_epoch=0,
                   train_time_sec=time.perf_counter() - t0)
    else:
        model, make_opt, penalty = build_model(s, args, I, J)
        model = model.to(device)
        pen = (lambda: penalty(model)) if penalty else None
        fit = core.fit_full(model, Xt, make_opt(model), args.epochs, penalty=pen,
                            log_every=args.log_every, name=name, log=log)
        if fit.diverged:
            log(f"warning: {fit.message}")
            row["status"] = "diverged"
        with torch.no_grad():
            X_hat = model()
        row.update(params=core.count_params(model), best_epoch=fit.best_epoch,
                   train_time_sec=fit.train_time_sec)
    X_hat = X_hat.detach() / scale
    row.update(mse=core.mse(X_hat, X), rel_fro=core.rel_fro(X_hat, X))
    if not math.isfinite(row["rel_fro"]):
        row["status"] = "diverged"
    return row


def write_csv(path: Path, rows: list[dict]) -> None:
    with core.atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) and k == "train_time_sec" else v)
                            for k, v in r.items()})


def make_plots(rows: list[dict], out_dir: Path, tag: str) -> list[Path]:
    """rel_fro vs budget (one figure per K_ratio) and rel_fro vs K_ratio (one per R).
    With several seeds, points are means and error bars standard deviations."""
    import matplotlib.pyplot as plt
    import pandas as pd
    df = pd.DataFrame([r for r in rows if r["status"] == "ok"])
    if df.empty:
        return []
    stats = df.groupby(["method", "R", "K_ratio", "budget"])["rel_fro"].agg(["mean", "std"]).reset_index()

    def finish(fig, ax, xlabel, title, name) -> Path:
        ax.set_xlabel(xlabel)
        ax.set_ylabel("relative Frobenius error")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        path = out_dir / name
        core.savefig_atomic(fig, path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return path

    written = []
    for ratio, sub in stats.groupby("K_ratio"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, m in sub.groupby("method"):
            m = m.sort_values("budget")
            ax.errorbar(m["budget"], m["mean"], yerr=m["std"].fillna(0), marker="o", label=method, capsize=3)
        written.append(finish(fig, ax, "parameter budget (I+J)·R", f"{tag}: K_ratio {ratio:g}",
                              f"rel_fro_vs_budget_{tag}_Kratio{ratio:g}.png"))
    for R, sub in stats.groupby("R"):
        fig, ax = plt.subplots(figsize=(6, 4))
        mmf = sub[sub["method"] == "mmf"].sort_values("K_ratio")
        if not mmf.empty:
            ax.errorbar(mmf["K_ratio"], mmf["mean"], yerr=mmf["std"].fillna(0), marker="o",
                        label="mmf", capsize=3, color="C0")
        # baselines do not depend on K: one horizontal line each (mean over K settings)
        for i, (method, m) in enumerate(sub[sub["method"] != "mmf"].groupby("method")):
            ax.axhline(m["mean"].mean(), ls="--", color=f"C{i + 1}", label=method)
        written.append(finish(fig, ax, "K_ratio = K / R",
                              f"{tag}: R {R} (budget {int(sub['budget'].iloc[0])})",
                              f"rel_fro_vs_Kratio_{tag}_R{R}.png"))
    return written


def setting_key(s: Setting) -> tuple:
    return (s.seed, s.R, s.K, s.method)


def row_key(r: dict) -> tuple:
    return (int(r["seed"]), int(r["R"]), int(r["K"]), r["method"])


def setting_cost(s: Setting, args) -> float:
    """Expected cost of a setting, to balance the ranks of a torchrun sweep: epochs times the
    work of one step (MMF: its I x K*Rb x J matmuls; MF: I x R x J; SVD: one decomposition)."""
    I, J = args.I, args.J
    if s.method == "svd":
        return float(I * J * min(I, J))
    width = s.K * (s.R - s.K) if s.method == "mmf" else s.R
    return float(args.epochs) * I * J * (width + 8)   # + 8: per-step overhead at tiny widths


def read_rows(path: Path) -> list[dict]:
    import pandas as pd
    if not path.exists():
        return []
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    return [{k: _parse_cell(k, v) for k, v in r.items()} for r in df.to_dict("records")]


def _parse_cell(k, v):
    if k in ("seed", "I", "J", "R", "K", "budget", "params", "best_epoch"):
        return int(v)
    if k in ("K_ratio", "train_time_sec", "mse", "rel_fro"):
        return float(v)
    return v


def load_completed(out_dir: Path, tag: str, fingerprint: str) -> dict:
    """Rows finished by earlier runs of the same configuration (final CSV and .partial files)."""
    meta = out_dir / f"results_{tag}.partial.json"
    final = out_dir / f"results_{tag}.csv"
    manifest = out_dir / f"results_{tag}.manifest.json"
    import json
    for m in (meta, manifest):
        if m.exists():
            fp = json.loads(m.read_text()).get("fingerprint")
            if fp is not None and fp != fingerprint:
                raise core.ConfigError(
                    f"--resume: the results in {out_dir} were made with other settings "
                    f"(fingerprint {fp} != {fingerprint}); use another --out_dir or drop --resume")
    done = {}
    for path in [final, *sorted(out_dir.glob(f"results_{tag}.partial*.csv"))]:
        for r in read_rows(path):
            done[row_key(r)] = r
    return done


RESULT_IGNORED_ARGS = ("device", "tf32", "deterministic", "threads", "out_dir", "no_plots",
                       "mpl_backend", "log_every", "resume")


def main() -> int:
    args = build_parser().parse_args()
    settings = plan_sweep(args)
    # Under torchrun every rank gets its own device (cuda:LOCAL_RANK or a share of the CPU).
    ctx, device = core.init_distributed(args.device, args.threads)
    core.setup_torch(device, args.tf32, args.deterministic)
    import matplotlib
    matplotlib.use(args.mpl_backend)
    say = print if ctx.is_main else (lambda *a, **k: None)
    rank_tag = f"[rank {ctx.rank}/{ctx.world_size}] " if ctx.enabled else ""

    seeds = list(dict.fromkeys(s.seed for s in settings))
    X = make_synthetic(args.data_mode, args.I, args.J, seeds[0], dist=args.dist,
                       num_blocks=args.num_blocks, block_scale=args.block_scale,
                       offblock_noise_scale=args.offblock_noise_scale, nonneg=args.data_nonneg)
    if any(s.method == "nmf" for s in settings) and float(X.min()) < 0:
        say("nmf skipped: the data has negative entries (pass --data_nonneg to run it)")
        settings = [s for s in settings if s.method != "nmf"]
    X = X.to(device)

    out_dir = Path(args.out_dir)
    tag = f"I{args.I}_J{args.J}_{args.data_mode}_mask{args.mask_mode_A}-{args.mask_mode_B}"
    csv_path = out_dir / f"results_{tag}.csv"
    fingerprint = core.config_fingerprint(args, RESULT_IGNORED_ARGS)

    # Which settings still need running: all of them, or with --resume those without a row.
    done = {}
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if args.resume:
            done = load_completed(out_dir, tag, fingerprint)
        else:   # a fresh sweep: forget the progress files of an earlier one
            for p in out_dir.glob(f"results_{tag}.partial*"):
                p.unlink()
        core.write_json_atomic(out_dir / f"results_{tag}.partial.json",
                               {"fingerprint": fingerprint, "args": vars(args)})
    done = core.broadcast_from_main(ctx, done)
    todo = [s for s in settings if setting_key(s) not in done]
    share = core.assign_balanced([setting_cost(s, args) for s in todo], ctx.world_size)[ctx.rank]
    mine = [todo[i] for i in share]
    say(f"device {device}; {len(settings)} settings, {len(done)} already done, {len(todo)} to run"
        + (f" on {ctx.world_size} processes" if ctx.enabled else "") + f"; writing {csv_path}")

    # Progress goes to a .partial file (one per rank) after every setting, so a crash keeps
    # what finished without leaving a CSV under the final name that looks complete.
    partial_path = out_dir / f"results_{tag}.partial.rank{ctx.rank}.csv"
    rows, failures, t_start = [], [], time.perf_counter()
    for i, s in enumerate(mine, 1):
        try:
            row = run_setting(s, X, args, device, log=lambda m: print(rank_tag + m, flush=True))
        except Exception as e:   # one broken setting must not take the sweep down with it
            failures.append({"setting": vars(s), "rank": ctx.rank, "error": f"{type(e).__name__}: {e}"})
            print(f"{rank_tag}setting seed {s.seed} R {s.R} K {s.K} {s.method} FAILED: "
                  f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
            continue
        rows.append(row)
        elapsed = time.perf_counter() - t_start
        eta = elapsed / i * (len(mine) - i)
        print(f"{rank_tag}[{i}/{len(mine)}] seed {s.seed} R {s.R} K {s.K} {s.method:8s} "
              f"rel_fro {row['rel_fro']:.4f}  ({row['train_time_sec']:.1f}s; "
              f"elapsed {elapsed:.0f}s, eta {eta:.0f}s){'  DIVERGED' if row['status'] != 'ok' else ''}",
              flush=True)
        write_csv(partial_path, rows)

    gathered = core.gather_to_main(ctx, (rows, failures))
    rc = 0
    if ctx.is_main:
        for r_rows, _ in gathered:
            for r in r_rows:
                done[row_key(r)] = r
        failures = [f for _, fs in gathered for f in fs]
        ordered = [done[setting_key(s)] for s in settings if setting_key(s) in done]
        missing = [s for s in settings if setting_key(s) not in done]
        manifest = {"args": vars(args), "command": sys.argv, "fingerprint": fingerprint,
                    "environment": core.environment_info(device), "world_size": ctx.world_size,
                    "csv": csv_path.name, "settings": len(settings),
                    "wall_time_sec": time.perf_counter() - t_start}
        if missing:
            # Not a complete sweep: keep everything that finished under the .partial name
            # and say what to run, instead of writing a final CSV that looks complete.
            merged = out_dir / f"results_{tag}.partial.csv"
            write_csv(merged, ordered)
            manifest.update(missing=[vars(s) for s in missing], failures=failures)
            core.write_json_atomic(out_dir / f"results_{tag}.partial.json",
                                   {"fingerprint": fingerprint, "args": vars(args),
                                    "missing": manifest["missing"], "failures": failures})
            print(f"error: {len(missing)} of {len(settings)} settings did not complete: "
                  + "; ".join(f"seed {s.seed} R {s.R} K {s.K} {s.method}" for s in missing[:10])
                  + (" ..." if len(missing) > 10 else "")
                  + f". Finished rows are in {merged}; rerun the same command with --resume "
                  f"to run only the missing settings.", file=sys.stderr)
            rc = 1
        else:
            write_csv(csv_path, ordered)
            for p in out_dir.glob(f"results_{tag}.partial*"):
                p.unlink()
            if not args.no_plots:
                manifest["plots"] = [p.name for p in make_plots(ordered, out_dir, tag)]
            core.write_json_atomic(out_dir / f"results_{tag}.manifest.json", manifest)
            say(f"done in {time.perf_counter() - t_start:.1f}s: {csv_path}")
    rc = core.broadcast_from_main(ctx, rc)
    core.shutdown_distributed(ctx)
    return rc


if __name__ == "__main__":
    core.run_cli(main)
