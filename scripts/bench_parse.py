"""Benchmark: data_utils.read_ratings vs a plain Python line loop on a 10-million-line
ratings.dat (ml-10m format: user::item::rating::timestamp), in one process.

    python scripts/bench_parse.py [--lines 10000000]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data_utils  # noqa: E402


def write_ratings_dat(path: Path, n_lines: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for start in range(0, n_lines, 1_000_000):  # in chunks, to keep memory flat
            m = min(1_000_000, n_lines - start)
            u = rng.integers(1, 71_568, m)
            i = rng.integers(1, 65_134, m)
            r = rng.integers(1, 11, m) / 2  # 0.5 .. 5.0
            t = rng.integers(789_652_009, 1_231_131_736, m)
            f.write("".join(f"{a}::{b}::{c:g}::{d}\n" for a, b, c, d in
                            zip(u.tolist(), i.tolist(), r.tolist(), t.tolist())))


def python_loop(path: Path):
    users, items, ratings = [], [], []
    with open(path) as f:
        for line in f:
            u, i, r, _ = line.split("::")
            users.append(int(u))
            items.append(int(i))
            ratings.append(float(r))
    return np.array(users), np.array(items), np.array(ratings)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=10_000_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ratings.dat"
        t0 = time.perf_counter()
        write_ratings_dat(path, args.lines)
        print(f"wrote {args.lines:,} lines ({path.stat().st_size / 2**20:.0f} MiB) "
              f"in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        u, i, r = data_utils.read_ratings(path, "::", header=False, scale=(0.5, 5.0, 0.5))
        t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        u2, i2, r2 = python_loop(path)
        t_loop = time.perf_counter() - t0
        assert np.array_equal(u, u2) and np.array_equal(i, i2) and np.array_equal(r, r2)

        # the rest of the way to a split, for scale
        t0 = time.perf_counter()
        users, _ = data_utils.dense_ids(u)
        data_utils.dense_ids(i)
        t_ids = time.perf_counter() - t0
        t0 = time.perf_counter()
        data_utils.per_user_split(users, 0.1, 0.05, np.random.default_rng(0))
        t_split = time.perf_counter() - t0

    print(f"read_ratings (pandas, validated): {t_fast:6.2f} s")
    print(f"plain Python line loop:           {t_loop:6.2f} s")
    print(f"ratio (loop / read_ratings):      {t_loop / t_fast:6.1f}x")
    print(f"dense re-indexing of users+items: {t_ids:6.2f} s")
    print(f"per-user split (10% / 5%):        {t_split:6.2f} s")


if __name__ == "__main__":
    main()
