"""Tests for vis_expressivity.py and vis_identifiability.py (spec sections 5 and 6).

Fast by design (well under a minute on 2 CPU cores): metric checks on matrices with known
spectra, column matching on known permutations, and tiny end-to-end runs of both scripts.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import vis_expressivity as ve  # noqa: E402
import vis_identifiability as vi  # noqa: E402
from mmf_core import run_cli  # noqa: E402


def _low_rank(n, m, r, seed=0, decay=None):
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))
    s = torch.linspace(1.0, 0.05, r, dtype=torch.float64) if decay is None else decay
    return (U * s) @ V.T, s.numpy()


# ---------------------------------------------------------------- spectrum metrics

@pytest.mark.parametrize("method", ["full", "lowrank"])
def test_numerical_rank_of_rank_r_matrix(method):
    X, _ = _low_rank(120, 100, 17)
    s = ve.top_singular_values(X, 60, method)
    assert ve.numerical_rank(s, 1e-6) == 17


def test_numerical_rank_of_float32_svd_reconstruction():
    # the script's own path: truncated_svd in float64 keeps the tail at ~1e-16
    X = torch.randn(90, 80, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = ve.top_singular_values(ve.truncated_svd(X, 12), 40)
    assert ve.numerical_rank(s, 1e-6) == 12


def test_effective_rank_known_values():
    assert ve.effective_rank(torch.linalg.svdvals(torch.eye(37, dtype=torch.float64)).numpy()) == pytest.approx(37)
    assert ve.effective_rank(np.array([3.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert ve.effective_rank(np.array([2.0, 2.0, 2.0, 2.0, 0.0])) == pytest.approx(4.0)
    # an uneven spectrum lies strictly between 1 and its rank
    assert 1.0 < ve.effective_rank(np.array([1.0, 0.5, 0.1])) < 3.0


def test_energy_beyond():
    s = np.array([2.0, 1.0, 1.0])          # energies 4, 1, 1
    assert ve.energy_beyond(s, 1) == pytest.approx(2 / 6)
    assert ve.energy_beyond(s, 3) == pytest.approx(0.0)
    # with the exact total energy, a truncated spectrum still gives the exact share
    assert ve.energy_beyond(s[:2], 1, total_energy=6.0) == pytest.approx(2 / 6)


def test_lowrank_agrees_with_full_within_one_percent():
    # (a) a dense random matrix, like S_10: the hardest case (flat spectrum)
    X = torch.randn(300, 300, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    k = 8 * 10
    full, low = ve.top_singular_values(X, k, "full"), ve.top_singular_values(X, k, "lowrank", seed=5)
    assert np.max(np.abs(low[:10] / full[:10] - 1)) < 0.01
    # (b) a reconstruction of rank below q: agreement on its whole spectrum
    Y, _ = _low_rank(300, 280, 60)
    full, low = ve.top_singular_values(Y, 80, "full"), ve.top_singular_values(Y, 80, "lowrank")
    assert np.max(np.abs(low[:60] / full[:60] - 1)) < 0.01
    # repeatable: the random test matrix comes from the seed, not the global RNG
    torch.manual_seed(123)
    a = ve.top_singular_values(X, 20, "lowrank", seed=7)
    b = ve.top_singular_values(X, 20, "lowrank", seed=7)
    assert np.array_equal(a, b)


# ---------------------------------------------------------------- column matching

def test_hungarian_recovers_known_permutation():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(200, 12, generator=g)
    perm = torch.randperm(12, generator=g)
    B = A[:, perm] * torch.tensor([1.0, -1.0] * 6)            # permuted, some columns flipped
    B = B + 0.05 * torch.randn(200, 12, generator=g)          # and a little noise
    S = vi.abs_cosine_matrix(A, B)
    m = vi.hungarian_match(S)
    assert np.array_equal(perm.numpy()[m], np.arange(12))     # B[:, m] lines up with A
    st = vi.match_stats(S)
    assert st["mean_matched_abs_cos"] > 0.99 and st["share_matched_above_0.9"] == 1.0
    assert st["mean_diag_abs_cos"] < 0.9                      # unmatched, it looks poor


def test_subspace_stats_rotation_vs_identity():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(100, 10, generator=g)
    Q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g))
    same = vi.subspace_stats(A, A, torch.Generator().manual_seed(0))
    rot = vi.subspace_stats(A, A @ Q, torch.Generator().manual_seed(0))
    assert same["subspace_cos"] == pytest.approx(1.0) and rot["subspace_cos"] == pytest.approx(1.0)
    # an arbitrary basis of the same span scores well below 1 on the matched metric
    assert rot["random_basis_matched_abs_cos"] < 0.9
    other = vi.subspace_stats(A, torch.randn(100, 10, generator=g), torch.Generator().manual_seed(0))
    assert other["subspace_cos"] < 0.6
    st = vi.match_stats(np.eye(4) * 0.8 + 0.1)
    assert st["mean_diag_abs_cos"] == pytest.approx(0.9) and st["mean_offdiag_abs_cos"] == pytest.approx(0.1)


def _tiny_args(**kw):
    args = vi.get_args(["--I", "36", "--J", "30", "--R", "6", "--K", "2", "--epochs", "30"])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


@pytest.mark.parametrize("kind", ["mf", "mmf"])
def test_identical_runs_match_perfectly(kind):
    args = _tiny_args()
    X = vi.make_equal_blocks(36, 30, 3, 999, 2.0)
    shared = vi.draw_shifts(36, 30, 2, torch.Generator().manual_seed(777))
    ra = vi.train_run(kind, 5, X, args, torch.device("cpu"), shared)
    rb = vi.train_run(kind, 5, X, args, torch.device("cpu"), shared)
    st = vi.match_stats(vi.abs_cosine_matrix(ra["A"], rb["A"]))
    assert st["mean_matched_abs_cos"] == pytest.approx(1.0, abs=1e-6)
    assert st["mean_diag_abs_cos"] == pytest.approx(1.0, abs=1e-6)


def test_equal_blocks_target():
    X = vi.make_equal_blocks(20, 14, 3, 999, 4.0)
    assert float(torch.linalg.norm(X)) == pytest.approx(4.0, rel=1e-5)
    assert torch.count_nonzero(X[:6, 4:]) == 0 and torch.count_nonzero(X[6:12, 4:8]) == 24
    assert torch.count_nonzero(X[18:]) == 0                   # 20 % 3 leftover rows stay zero
    assert torch.equal(X, vi.make_equal_blocks(20, 14, 3, 999, 4.0))


# ---------------------------------------------------------------- end to end

def _run(script, *argv):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / script), *argv], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)


def test_expressivity_end_to_end(tmp_path):
    out = tmp_path / "ex"
    p = _run("vis_expressivity.py", "--S10_size", "64", "--H6_size", "66", "--R_budget", "6",
             "--K_list", "2,3", "--mmf_epochs", "60", "--svdvals_method", "lowrank", "--log10",
             "--out_dir", str(out), "--device", "cpu")
    assert p.returncode == 0, p.stderr
    for t in ("S_10", "H_6"):
        for f in (f"spectrum_{t}.pdf", f"spectrum_{t}.png", f"metrics_{t}.csv",
                  f"metrics_{t}.json", f"spectra_{t}.npz"):
            assert (out / f).stat().st_size > 0, f
    assert (out / "expressivity_metrics.csv").exists() and (out / "manifest.json").exists()
    rows = list(csv.DictReader(open(out / "expressivity_metrics.csv")))
    assert [r["method"] for r in rows if r["target"] == "H_6"] == ["target", "SVD R=6", "MMF K=2", "MMF K=3"]
    for r in rows:
        if r["method"].startswith("SVD"):
            assert int(r["numerical_rank"]) == 6 and int(r["params"]) == (66 + 66) * 6 or r["target"] == "S_10"
        if r["method"].startswith("MMF"):
            K = int(r["K"])
            assert int(r["numerical_rank"]) > 6 and int(r["params"]) == 2 * int(r["I"]) * 6
            assert int(r["numerical_rank"]) <= K * (6 - K)
    assert not any(f.name.startswith(".") for f in out.iterdir())    # no temp files left


def test_identifiability_end_to_end(tmp_path):
    out = tmp_path / "id"
    p = _run("vis_identifiability.py", "--I", "48", "--J", "48", "--R", "8", "--K", "2",
             "--epochs", "60", "--reorder", "--n_pairs", "2", "--tick_step", "2",
             "--out_dir", str(out), "--device", "cpu")
    assert p.returncode == 0, p.stderr
    for kind in ("mf", "mmf"):
        for v in ("raw", "reordered"):
            for ext in ("pdf", "png"):
                assert (out / f"{kind}_corr_{v}.{ext}").stat().st_size > 0
    assert (out / "corr_overview.png").exists()
    res = json.load(open(out / "identifiability_metrics.json"))
    assert len(res["pairs"]) == 4 and {r["seed_a"] for r in res["pairs"]} == {101, 102}
    for kind in ("mf", "mmf"):
        s = res["summary"][kind]
        assert 0 <= s["mean_matched_abs_cos"]["mean"] <= 1 and s["rel_fro"]["n"] == 4
        for key in vi.SUMMARY_KEYS:
            assert np.isfinite(s[key]["mean"]) and s[key]["std"] >= 0
    assert len(list(csv.DictReader(open(out / "identifiability_metrics.csv")))) == 4


def test_identifiability_random_mask_learned(tmp_path):
    # in-process (no plots): the other mode runs and its shifts differ between the runs
    out = tmp_path / "rm"
    with pytest.raises(SystemExit) as e:
        _main_with_argv(vi.main, ["--mode", "random_mask", "--learn_shifts", "--I", "36", "--J", "36",
                                  "--R", "6", "--K", "2", "--epochs", "20", "--no_plots",
                                  "--out_dir", str(out), "--device", "cpu"])
    assert e.value.code == 0
    assert len(json.load(open(out / "identifiability_metrics.json"))["pairs"]) == 2


# ---------------------------------------------------------------- bad flags

def _main_with_argv(main, argv):
    old = sys.argv
    sys.argv = ["prog", *argv]
    try:
        run_cli(main)
    finally:
        sys.argv = old


@pytest.mark.parametrize("module,argv", [
    (ve, ["--K_list", "2,x"]),
    (ve, ["--R_budget", "5", "--K_list", "5"]),        # Rb = 0
    (ve, ["--mask_mode", "nope"]),
    (ve, ["--svdvals_method", "exact"]),
    (ve, ["--targets", "S_11"]),
    (ve, ["--S10_size", "10", "--R_budget", "20", "--K_list", "2"]),
    (vi, ["--mode", "bogus"]),
    (vi, ["--learn_shifts"]),                         # fixed_mask keeps its shifts fixed
    (vi, ["--I", "0"]),
    (vi, ["--epochs", "ten"]),
    (vi, ["--num_blocks", "1000"]),
])
def test_bad_flags_one_line_error(module, argv, capsys):
    with pytest.raises(SystemExit) as e:
        _main_with_argv(module.main, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err


def test_bad_flag_subprocess_no_traceback():
    for script, argv in (("vis_expressivity.py", ["--R_budget", "3", "--K_list", "3"]),):
        p = _run(script, *argv)
        assert p.returncode == 2
        assert p.stderr.startswith("error:") and p.stderr.count("\n") == 1
        assert "Traceback" not in p.stderr
