"""Shared test helpers: run an entrypoint in-process, and tiny synthetic rating data."""
import contextlib
import io
import sys
from pathlib import Path

import numpy as np

import mmf_core as core

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"     # the real data, present on CI, absent elsewhere


def run_entrypoint(main, argv, prog="prog"):
    """Run an entrypoint's main() in this process exactly as `python prog ARGV` does (through
    core.run_cli, which turns bad input into one line and exit 2): (exit code, stdout, stderr).
    Much faster than a subprocess per test, which pays torch's import every time."""
    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = [prog, *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            core.run_cli(main)
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = old
    return code, out.getvalue(), err.getvalue()


def lowrank_ratings(n_users=60, n_items=80, rank=3, density=0.5, seed=0):
    """Ratings 1..5 from a rank-3 matrix around 3, about `density` of the entries observed;
    (users, items, ratings) shuffled."""
    rng = np.random.default_rng(seed)
    X = 3 + 1.2 * rng.normal(size=(n_users, rank)) @ rng.normal(size=(n_items, rank)).T / np.sqrt(rank)
    users, items = np.nonzero(rng.random((n_users, n_items)) < density)
    ratings = np.clip(np.rint(X), 1, 5)[users, items].astype(np.float32)
    p = rng.permutation(len(ratings))
    return users[p], items[p], ratings[p]


def write_fake_ml100k(root: Path) -> Path:
    """A fake ml-100k folder under root (u.data plus a u1.base / u1.test pair) holding
    synthetic low-rank ratings, so main_completion runs end to end without the real data."""
    d = root / "ml-100k"
    d.mkdir(parents=True)
    u, i, r = lowrank_ratings(50, 70, density=0.6, seed=1)
    lines = [f"{a + 1}\t{b + 1}\t{int(c)}\t{880000000 + k}" for k, (a, b, c) in enumerate(zip(u, i, r))]
    (d / "u.data").write_text("\n".join(lines) + "\n")
    cut = int(0.8 * len(lines))
    (d / "u1.base").write_text("\n".join(lines[:cut]) + "\n")
    (d / "u1.test").write_text("\n".join(lines[cut:]) + "\n")
    return root
