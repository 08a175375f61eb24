"""Matrix completion on explicit ratings: MF vs MMF (spec section 3).

Both models predict pred(u, i) = mu + b_u + b_i + core(u, i), mu the training mean, with
core = A_u . B_i (MF, rank R) or the completion-form MMF of rank R with K masks (see
mmf_core.py, section "Completion form"). Each seed: split the data, train MF then MMF with
Adam and early stopping on validation RMSE, report test RMSE / MAE of the best epoch.

    # the published command (ml-100k, per-user 90/10 split)
    python main_completion.py --dataset ml-100k --download --data_dir data_rec \\
        --save_dir outputs/completion_movielens --device cuda --R 256 --K 42 --epochs 50
    # the canonical u1.base / u1.test split, three seeds, with validation curves
    python main_completion.py --dataset ml-100k --split u1 --data_dir data_rec --download \\
        --R 256 --K 42 --seeds 1,2,3 --plot_curves --save_dir outputs/completion_u1
    # Douban / Flixster (Monti et al.'s fixed splits), 100 epochs
    python main_completion.py --dataset douban --data_dir data_rec --download --R 256 --K 42 --epochs 100
    # the published runs' settings: tiny validation set, mu fixed at 3.0, no shifts
    python main_completion.py --dataset ml-100k --data_dir data_rec --R 256 --K 42 \\
        --val_ratio 0.001 --mu 3.0 --shift_mode zero

Files in --save_dir, for <dataset>_R{R}_K{K}: _seed{seed}.json per seed, _agg.json (mean and
sample std over seeds; paired MMF-vs-MF test when there are 2+ seeds), _summary.csv (one row
per seed and model), _manifest.json (arguments, environment), and with --plot_curves
_seed{seed}_curves.png. A missing dataset, a bad flag or a split the dataset lacks is one
line on stderr and exit code 2. A model whose loss turns NaN stops with a message naming it and
the epoch; the other models still run, then the run exits 1 without an aggregate, and
`--resume` trains only what is missing. Under torchrun the (seed, model) settings are shared
out between the ranks and rank 0 writes the same files (README, "Running on several GPUs").
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import data_utils
import mmf_core as mc

MODEL_KEYS = {"mf": "baseline", "mmf": "mmf"}   # the spec's JSON keys for the two models


def get_args(argv=None) -> argparse.Namespace:
    p = mc.CLIParser(description="MF vs MMF on explicit-rating matrix completion.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="ml-1m", help=", ".join(data_utils.DATASETS))
    g.add_argument("--data_dir", default="./data_rec")
    g.add_argument("--download", action="store_true", help="fetch the dataset if it is missing")
    g.add_argument("--split", default=None,
                   help="per_user (MovieLens default), fixed (douban/flixster default), or ml-100k's "
                        "canonical u1..u5, ua, ub")
    # The published default 0.001 leaves ~120 validation ratings on Douban: early stopping
    # then picks epochs by noise. 5% is a few thousand ratings (README: "validation").
    g.add_argument("--val_ratio", type=float, default=0.05,
                   help="validation share (per user for per_user; of train for fixed/canonical); "
                        "0.001 is the published value")
    g.add_argument("--test_ratio", type=float, default=0.1, help="per_user split only")
    g.add_argument("--rating_min", type=float, default=None, help="clamp; default: the data's minimum")
    g.add_argument("--rating_max", type=float, default=None, help="clamp; default: the data's maximum")

    g = p.add_argument_group("seeds")
    g.add_argument("--seeds", default="", help="comma-separated; overrides --seed_start/--num_seeds")
    g.add_argument("--seed_start", type=int, default=123)
    g.add_argument("--num_seeds", type=int, default=1)

    g = p.add_argument_group("models")
    g.add_argument("--models", default="mf,mmf", help="which of mf, mmf to train")
    g.add_argument("--R", type=int, default=1200, help="rank of MF and of MMF's base factors")
    g.add_argument("--K", type=int, default=64, help="number of MMF masks, 1 <= K <= R")
    g.add_argument("--use_bias", dest="use_bias", action="store_true", default=True,
                   help="learn user and item biases")
    g.add_argument("--no_bias", dest="use_bias", action="store_false")
    g.add_argument("--mu", default="train_mean",
                   help="global offset: train_mean, or a number (the published scripts: 3.0)")
    g.add_argument("--mask_mode_A", default="gaussian_pos",
                   help="user masks, a name in mmf_core.MASKS; the published completion "
                        "'gaussian' is gaussian_pos here, its 'sigmoid' sigmoid2")
    g.add_argument("--mask_mode_B", default="gaussian_pos", help="item masks")
    g.add_argument("--mask_scale", type=float, default=-1.0, help="s per side; negative: 1/K")
    g.add_argument("--shift_mode", default="zero", choices=mc.COMPLETION_SHIFT_MODES,
                   help="zero: no shifts; random: fixed N(0, shift_std^2); learned: trainable")
    g.add_argument("--shift_init", default="zero", choices=("zero", "random"),
                   help="start of learned shifts")
    g.add_argument("--shift_std", type=float, default=0.1)
    # chosen on validation RMSE (README, "defaults"): MF does best from a tiny start,
    # MMF's factors are scaled down by the masks (s^2 sum_k g g ~ 0.006) and prefer more
    g.add_argument("--init_std", type=float, default=0.02, help="std of MMF's initial factors")
    g.add_argument("--init_std_baseline", type=float, default=1e-4, help="std of MF's initial factors")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=100)
    g.add_argument("--batch_size", type=int, default=4096)
    g.add_argument("--eval_batch_size", type=int, default=65536)
    g.add_argument("--num_workers", type=int, default=0,
                   help="accepted for the published commands; unused (no DataLoader)")
    g.add_argument("--patience", type=int, default=5, help="epochs without validation improvement")
    g.add_argument("--print_every", type=int, default=1, help="log every N epochs (0: quiet)")
    g.add_argument("--lr_baseline", type=float, default=2e-3, help="MF")
    g.add_argument("--lr_factors", type=float, default=5e-3, help="MMF factors and biases")
    g.add_argument("--lr_shifts", type=float, default=5e-3, help="MMF learned shifts")
    g.add_argument("--weight_decay", type=float, default=0.0)

    g = p.add_argument_group("output and machine")
    g.add_argument("--save_dir", default="./results_mmf")
    g.add_argument("--plot_curves", action="store_true", help="save validation-RMSE curves (PNG)")
    mc.add_sweep_args(g, "--save_dir")
    mc.add_device_args(p)
    return p.parse_args(argv)


def check_args(args) -> None:
    """Every flag problem, before any data is read or model built."""
    split = data_utils.resolve_split(args.dataset, args.split)   # DataError: unknown dataset / split
    args.split = split
    args.model_list = mc.parse_str_list(args.models)
    bad = [m for m in args.model_list if m not in MODEL_KEYS]
    if bad or not args.model_list:
        raise mc.ConfigError(f"--models: unknown {', '.join(bad) or '(none given)'}; choose from mf, mmf")
    if args.R < 1:
        raise mc.ConfigError(f"--R must be >= 1, got {args.R}")
    if "mmf" in args.model_list:
        if not 1 <= args.K <= args.R:
            raise mc.ConfigError(f"--K must satisfy 1 <= K <= R, got K={args.K}, R={args.R}")
        mc.get_mask(args.mask_mode_A)
        mc.get_mask(args.mask_mode_B)
    for flag in ("epochs", "batch_size", "eval_batch_size", "patience"):
        if getattr(args, flag) < 1:
            raise mc.ConfigError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    for flag in ("lr_baseline", "lr_factors", "lr_shifts"):
        if not getattr(args, flag) > 0:
            raise mc.ConfigError(f"--{flag} must be > 0, got {getattr(args, flag)}")
    if args.weight_decay < 0 or args.shift_std < 0 or args.init_std <= 0 or args.init_std_baseline <= 0:
        raise mc.ConfigError("--weight_decay and --shift_std must be >= 0, --init_std and "
                             "--init_std_baseline > 0")
    if not (0 <= args.val_ratio < 1 and 0 < args.test_ratio < 1):
        raise mc.ConfigError(f"need 0 <= --val_ratio < 1 and 0 < --test_ratio < 1, got "
                             f"{args.val_ratio}, {args.test_ratio}")
    if args.rating_min is not None and args.rating_max is not None and args.rating_min >= args.rating_max:
        raise mc.ConfigError(f"--rating_min {args.rating_min} must be below --rating_max {args.rating_max}")
    if args.mu != "train_mean":
        try:
            args.mu_value = float(args.mu)
        except ValueError:
            raise mc.ConfigError(f"--mu must be train_mean or a number, got {args.mu!r}")
    args.seed_list = (mc.parse_int_list(args.seeds, "--seeds") if args.seeds.strip()
                      else list(range(args.seed_start, args.seed_start + args.num_seeds)))
    if not args.seed_list:
        raise mc.ConfigError("no seeds: give --seeds or --num_seeds >= 1")
    if args.mask_mode_A == "gaussian" or args.mask_mode_B == "gaussian":
        print("note: mask 'gaussian' is 4*exp(-d^2/2); the published completion script's "
              "'gaussian' (its default) is 'gaussian_pos' here", file=sys.stderr)


# ----------------------------------------------------------------------------------------
# One seed: split, train MF and MMF, evaluate
# ----------------------------------------------------------------------------------------

def prepare_seed(args, seed: int, device: torch.device):
    """Split the data for one seed: (the seed's record without models, the tensors)."""
    split = data_utils.load_split(args.dataset, args.data_dir, args.split, seed=seed,
                                  val_ratio=args.val_ratio, test_ratio=args.test_ratio,
                                  download=False)
    clamp = (split.rating_min if args.rating_min is None else args.rating_min,
             split.rating_max if args.rating_max is None else args.rating_max)
    train, val, test = (mc.RatingTensors.from_arrays(t.users, t.items, t.ratings, device)
                        for t in (split.train, split.val, split.test))
    # The published scripts fixed mu at 3.0; the training mean is the least-squares offset.
    mu = float(split.train.ratings.astype(np.float64).mean()) if args.mu == "train_mean" else args.mu_value
    print(f"[seed {seed}] {args.dataset} ({split.split} split): {split.n_users} users x "
          f"{split.n_items} items; train {len(train):,} / val {len(val):,} / test {len(test):,}; "
          f"mu {mu:.4f}, clamp [{clamp[0]:g}, {clamp[1]:g}]")
    record = {
        "dataset": args.dataset, "split": split.split, "seed": seed,
        "users": split.n_users, "items": split.n_items,
        "n_train": len(train), "n_val": len(val), "n_test": len(test),
        "clamp": list(clamp), "mu": mu, "device": str(device),
        "config": {k: v for k, v in vars(args).items() if k not in ("model_list", "seed_list", "mu_value")},
    }
    return record, (split, train, val, test, clamp, mu)


def train_model(args, seed: int, kind: str, prepared, device: torch.device) -> dict:
    """Train one model (mf or mmf) on a prepared seed and evaluate it on the test split."""
    split, train, val, test, clamp, mu = prepared
    name = "MF" if kind == "mf" else f"MMF[{args.shift_mode}]"
    mc.seed_everything(seed)
    # One generator per (seed, R) for both models: MF and MMF start from the same random
    # draws (times their init std) and see the batches in the same order.
    gen = mc.setting_generator("completion", args.dataset, split.split, seed, args.R)
    model = mc.make_rating_model(
        kind, split.n_users, split.n_items, args.R, args.K, mu, bias=args.use_bias,
        shift_mode=args.shift_mode, shift_init=args.shift_init, shift_std=args.shift_std,
        mask_A=args.mask_mode_A, mask_B=args.mask_mode_B,
        mask_scale=None if args.mask_scale < 0 else args.mask_scale,
        init_std=args.init_std_baseline if kind == "mf" else args.init_std, gen=gen).to(device)
    lr = args.lr_baseline if kind == "mf" else args.lr_factors
    optimizer = model.make_optimizer(lr, args.lr_shifts, args.weight_decay)
    fit = mc.fit_ratings(model, optimizer, train, val, epochs=args.epochs,
                         batch_size=args.batch_size, patience=args.patience, clamp=clamp,
                         gen=torch.Generator().manual_seed(seed), name=f"{name} seed {seed}",
                         print_every=args.print_every, eval_batch_size=args.eval_batch_size)
    test_rmse, test_mae = mc.rating_metrics(model, test, clamp, args.eval_batch_size)
    print(f"[seed {seed}] {name}: test RMSE {test_rmse:.4f}  MAE {test_mae:.4f}  "
          f"(best epoch {fit.best_epoch}/{fit.epochs_run}, {fit.train_time_sec:.1f} s)")
    return {
        "model": name, "params": mc.count_params(model),
        "best_epoch": fit.best_epoch, "best_val_rmse": fit.best_val_rmse,
        "test_rmse": test_rmse, "test_mae": test_mae, "train_time_sec": fit.train_time_sec,
        "epochs_run": fit.epochs_run, "sec_per_epoch": fit.sec_per_epoch,
        "history": fit.history,
    }


# Relative cost of one model, to balance the ranks of a torchrun sweep (scripts/bench_completion.py:
# zero-shift MMF costs about what MF costs, random and learned shifts 14x and 19x).
MODEL_COST = {"mf": 1.0, "zero": 1.3, "random": 14.0, "learned": 19.0}


def run_settings(args, settings, device, rank_tag=""):
    """Run (seed, kind) settings in order; returns ({(seed, kind): (seed record, model record)},
    failures). A failing setting is reported and skipped; the others still run."""
    results, failures, prepared = {}, [], {}
    for seed, kind in settings:
        try:
            if seed not in prepared:
                prepared = {seed: prepare_seed(args, seed, device)}   # keep one seed's tensors
            record, tensors = prepared[seed]
            results[(seed, kind)] = (record, train_model(args, seed, kind, tensors, device))
        except (mc.TrainingDiverged, RuntimeError, ValueError) as e:
            msg = str(e) if isinstance(e, mc.TrainingDiverged) else f"{type(e).__name__}: {e}"
            failures.append({"seed": seed, "model": kind, "error": msg})
            print(f"error: {rank_tag}{msg}", file=sys.stderr, flush=True)
    return results, failures


# ----------------------------------------------------------------------------------------
# Results: per-seed JSON, aggregate JSON with the paired comparison, CSV, curves, manifest
# ----------------------------------------------------------------------------------------

def mean_std(values) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    return {"mean": float(v.mean()) if len(v) else None,
            "std": float(v.std(ddof=1)) if len(v) > 1 else None,   # sample std; none for 1 seed
            "n": int(len(v))}


def paired_comparison(mmf_rmse, mf_rmse) -> dict:
    """MMF minus MF test RMSE over seeds (negative: MMF better), with a paired t-test."""
    from scipy import stats
    d = np.asarray(mmf_rmse, dtype=np.float64) - np.asarray(mf_rmse, dtype=np.float64)
    t, p = stats.ttest_rel(mmf_rmse, mf_rmse)
    finite = lambda x: float(x) if np.isfinite(x) else None   # noqa: E731 (all-equal diffs: NaN)
    return {"n": int(len(d)), "mean_diff": float(d.mean()), "std_diff": float(d.std(ddof=1)),
            "t_stat": finite(t), "p_value": finite(p), "mmf_better_seeds": int((d < 0).sum())}


def aggregate(records: list[dict], args) -> dict:
    agg = {"dataset": args.dataset, "split": records[0]["split"], "R": args.R, "K": args.K,
           "shift_mode": args.shift_mode, "seeds": [r["seed"] for r in records]}
    for key in [MODEL_KEYS[k] for k in args.model_list]:
        agg[key] = {m: mean_std([r[key][m] for r in records])
                    for m in ("test_rmse", "test_mae", "train_time_sec", "best_val_rmse", "best_epoch")}
    if "baseline" in agg and "mmf" in agg:
        agg["time_ratio_mmf_over_mf"] = mean_std(
            [r["mmf"]["train_time_sec"] / r["baseline"]["train_time_sec"] for r in records])
        if len(records) >= 2:
            agg["paired_test_rmse"] = paired_comparison(
                [r["mmf"]["test_rmse"] for r in records], [r["baseline"]["test_rmse"] for r in records])
    return agg


CSV_FIELDS = ["dataset", "split", "seed", "model", "shift_mode", "R", "K", "params", "best_epoch",
              "epochs_run", "best_val_rmse", "test_rmse", "test_mae", "train_time_sec", "sec_per_epoch"]


def write_csv(path: Path, records: list[dict], args) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in records:
        for kind in args.model_list:
            m = r[MODEL_KEYS[kind]]
            w.writerow({"dataset": r["dataset"], "split": r["split"], "seed": r["seed"],
                        "model": kind, "shift_mode": args.shift_mode if kind == "mmf" else "",
                        "R": args.R, "K": args.K if kind == "mmf" else "",
                        **{f: m[f] for f in CSV_FIELDS[7:]}})
    with mc.atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def plot_curves(path: Path, record: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    metric = "val_rmse" if record["n_val"] else "train_loss"   # --val_ratio 0: no validation
    for key in ("baseline", "mmf"):
        if key in record:
            h = record[key]["history"]
            line, = ax.plot([e["epoch"] for e in h], [e[metric] for e in h], label=record[key]["model"])
            ax.axvline(record[key]["best_epoch"], color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation RMSE (clamped)" if record["n_val"] else "training loss (MSE)")
    ax.set_title(f"{record['dataset']} ({record['split']}), seed {record['seed']}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    mc.savefig_atomic(fig, path, dpi=120)
    plt.close(fig)


RESULT_IGNORED_ARGS = ("device", "tf32", "deterministic", "threads", "save_dir", "plot_curves",
                       "print_every", "resume", "download", "data_dir", "num_workers", "eval_batch_size",
                       "model_list", "seed_list", "mu_value")


def load_completed(save_dir: Path, stem: str, args, fingerprint: str) -> dict:
    """--resume: models finished by an earlier run of the same configuration, from the per-seed
    JSON files and the .partial.json files of seeds that were not complete."""
    done = {}
    for seed in args.seed_list:
        for path in (save_dir / f"{stem}_seed{seed}.json", save_dir / f"{stem}_seed{seed}.partial.json"):
            if not path.exists():
                continue
            rec = json.loads(path.read_text())
            if rec.get("fingerprint") != fingerprint:
                raise mc.ConfigError(f"--resume: {path} was made with other settings; use another "
                                     f"--save_dir or drop --resume")
            for kind in args.model_list:
                if MODEL_KEYS[kind] in rec:
                    base = {k: v for k, v in rec.items() if k not in MODEL_KEYS.values()}
                    done[(seed, kind)] = (base, rec[MODEL_KEYS[kind]])
    return done


def main(argv=None) -> int:
    args = get_args(argv)
    check_args(args)
    # Under torchrun every rank gets its own device (cuda:LOCAL_RANK or a share of the CPU).
    ctx, device = mc.init_distributed(args.device, args.threads)
    say = print if ctx.is_main else (lambda *a, **k: None)
    rank_tag = f"[rank {ctx.rank}] " if ctx.enabled else ""
    # The data first (fetched with --download by one process per node): a missing dataset
    # fails before any file is written.
    if ctx.local_rank == 0:
        data_utils.ensure_dataset(args.dataset, args.data_dir, args.download)
    mc.barrier(ctx)
    data_utils.ensure_dataset(args.dataset, args.data_dir, False)
    mc.setup_torch(device, args.tf32, args.deterministic)
    if device.type == "cpu":
        mc.tune_cpu_allocator()
    mc.warm_up_optimizer(device)   # so MF's time does not include torch's first-step imports
    save_dir = Path(args.save_dir)
    stem = f"{args.dataset}_R{args.R}_K{args.K}"
    fingerprint = mc.config_fingerprint(args, RESULT_IGNORED_ARGS)
    manifest = {"command": sys.argv, "args": {k: v for k, v in vars(args).items() if k != "mu_value"},
                "fingerprint": fingerprint, "world_size": ctx.world_size,
                "environment": mc.environment_info(device), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "status": "running", "files": []}
    settings = [(seed, kind) for seed in args.seed_list for kind in args.model_list]
    done = {}
    if ctx.is_main:
        if args.resume:
            done = load_completed(save_dir, stem, args, fingerprint)
        mc.write_json_atomic(save_dir / f"{stem}_manifest.json", manifest)
    done = mc.broadcast_from_main(ctx, done)
    todo = [s for s in settings if s not in done]
    costs = [MODEL_COST["mf" if kind == "mf" else args.shift_mode] for _, kind in todo]
    mine = [todo[i] for i in mc.assign_balanced(costs, ctx.world_size)[ctx.rank]]
    if done:
        say(f"--resume: {len(done)} of {len(settings)} models already done, running {len(todo)}")

    results, failures = run_settings(args, mine, device, rank_tag)
    gathered = mc.gather_to_main(ctx, (results, failures))
    rc = 0
    if ctx.is_main:
        for res, _ in gathered:
            done.update(res)
        failures = [f for _, fs in gathered for f in fs]
        rc = write_results(args, save_dir, stem, fingerprint, done, failures, manifest)
    rc = mc.broadcast_from_main(ctx, rc)
    mc.shutdown_distributed(ctx)
    return rc


def write_results(args, save_dir: Path, stem: str, fingerprint: str, done: dict, failures: list,
                  manifest: dict) -> int:
    """Per-seed JSON (and curves) for every complete seed; the aggregate, the CSV and a finished
    manifest when every setting completed, else .partial.json files and a list of what is missing."""
    records, missing = [], []
    for seed in args.seed_list:
        have = [kind for kind in args.model_list if (seed, kind) in done]
        if not have:
            missing += [(seed, kind) for kind in args.model_list]
            continue
        record = dict(done[(seed, have[0])][0], fingerprint=fingerprint)
        for kind in have:
            record[MODEL_KEYS[kind]] = done[(seed, kind)][1]
        if len(have) < len(args.model_list):
            missing += [(seed, kind) for kind in args.model_list if kind not in have]
            mc.write_json_atomic(save_dir / f"{stem}_seed{seed}.partial.json", record)
            continue
        records.append(record)
        path = save_dir / f"{stem}_seed{seed}.json"
        mc.write_json_atomic(path, record)
        (save_dir / f"{stem}_seed{seed}.partial.json").unlink(missing_ok=True)
        manifest["files"].append(path.name)
        if args.plot_curves:
            path = save_dir / f"{stem}_seed{seed}_curves.png"
            plot_curves(path, record)
            manifest["files"].append(path.name)

    if missing:
        # No aggregate over an incomplete set of seeds: it would look like the full result.
        manifest.update(status="incomplete", missing=[{"seed": s, "model": k} for s, k in missing],
                        failures=failures)
        mc.write_json_atomic(save_dir / f"{stem}_manifest.json", manifest)
        print(f"error: {len(missing)} of {len(args.seed_list) * len(args.model_list)} models did not "
              f"complete ({', '.join(f'{k} seed {s}' for s, k in missing[:8])}"
              f"{' ...' if len(missing) > 8 else ''}); rerun the same command with --resume to run "
              f"only those", file=sys.stderr)
        return 1

    agg = aggregate(records, args)
    mc.write_json_atomic(save_dir / f"{stem}_agg.json", agg)
    write_csv(save_dir / f"{stem}_summary.csv", records, args)
    manifest["files"] += [f"{stem}_agg.json", f"{stem}_summary.csv"]
    manifest.update(status="finished", finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    mc.write_json_atomic(save_dir / f"{stem}_manifest.json", manifest)

    print(f"\n{args.dataset} ({agg['split']}), R {args.R}, K {args.K}, shift_mode {args.shift_mode}, "
          f"{len(records)} seed(s):")
    for key in ("baseline", "mmf"):
        if key in agg:
            a = agg[key]
            sd = lambda m: f" +- {a[m]['std']:.4f}" if a[m]["std"] is not None else ""  # noqa: E731
            print(f"  {'MF ' if key == 'baseline' else 'MMF'}  test RMSE {a['test_rmse']['mean']:.4f}"
                  f"{sd('test_rmse')}  MAE {a['test_mae']['mean']:.4f}{sd('test_mae')}  "
                  f"time {a['train_time_sec']['mean']:.1f} s")
    if "paired_test_rmse" in agg:
        pc = agg["paired_test_rmse"]
        pv = "n/a" if pc["p_value"] is None else f"{pc['p_value']:.3g}"
        print(f"  MMF - MF test RMSE: {pc['mean_diff']:+.4f} +- {pc['std_diff']:.4f} "
              f"(paired t-test p = {pv}, MMF better on {pc['mmf_better_seeds']}/{pc['n']} seeds)")
    print(f"results in {save_dir}/{stem}_*")
    return 0


if __name__ == "__main__":
    mc.run_cli(main)
