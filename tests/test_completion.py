"""Tests of the completion experiment: the completion form in mmf_core.py and
main_completion.py, on tiny synthetic ratings (CPU). The last test uses the shared real
data and is skipped where it is absent."""
import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import main_completion
import mmf_core as mc
from helpers import lowrank_ratings, run_entrypoint, write_fake_ml100k

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# ----- tiny synthetic data ---------------------------------------------------------------

def tensor_splits(n_users=60, n_items=80):
    u, i, r = lowrank_ratings(n_users, n_items)
    n = len(r)
    cuts = [slice(0, int(0.8 * n)), slice(int(0.8 * n), int(0.9 * n)), slice(int(0.9 * n), n)]
    return [mc.RatingTensors.from_arrays(u[s], i[s], r[s], "cpu") for s in cuts]


@pytest.fixture(scope="module")
def ml100k_dir(tmp_path_factory):
    return write_fake_ml100k(tmp_path_factory.mktemp("data_rec"))


@contextlib.contextmanager
def quiet():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def run_main(args):
    """main_completion through run_cli, in this process: (exit code, stdout, stderr)."""
    return run_entrypoint(main_completion.main, args, "main_completion.py")


TINY = ["--dataset", "ml-100k", "--R", "8", "--K", "4", "--epochs", "4", "--batch_size", "256",
        "--print_every", "0", "--device", "cpu"]


# ----- the model -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["zero", "random", "learned"])
def test_batched_masks_equal_direct_per_rating_computation(mode):
    """pair_scores (masks once per distinct id, sparse pair products) equals the spec's
    formula evaluated rating by rating, and its gradients equal MMF.forward_entries'."""
    gen = torch.Generator().manual_seed(3)
    model = mc.make_rating_model("mmf", 9, 11, 12, 5, 3.0, shift_mode=mode, shift_init="random",
                                 shift_std=0.3, init_std=0.5, gen=gen)
    core = model.core
    users = torch.tensor([0, 3, 3, 8, 1, 0, 5, 3])
    items = torch.tensor([2, 2, 7, 10, 0, 9, 2, 7])   # repeated ids and a repeated pair
    fast = mc.pair_scores(core, users, items)
    g = mc.get_mask("gaussian_pos")
    R, K, h = 12, 5, 12 / 2
    omega = torch.linspace(1 / K, 1, K, dtype=torch.float64)
    for n, (u, i) in enumerate(zip(users.tolist(), items.tolist())):
        total = 0.0
        for k in range(K):
            su = 0.0 if core.UA is None else core.UA[u, k].item()
            si = 0.0 if core.UB is None else core.UB[i, k].item()
            for r in range(R):
                mA = g(torch.tensor((r - h * su) * omega[k].item())).item() / K
                mB = g(torch.tensor((r - h * si) * omega[k].item())).item() / K
                total += core.A[u, r].item() * core.B[i, r].item() * mA * mB
        assert math.isclose(float(fast[n]), total, rel_tol=1e-5, abs_tol=1e-6)
    w = torch.randn(len(users))
    params = [p for p in core.parameters()]
    g_fast = torch.autograd.grad((fast * w).sum(), params)
    g_ref = torch.autograd.grad((core.forward_entries(users, items) * w).sum(), params)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_pair_dot_sparse_and_gather_paths_agree():
    X, Y = torch.randn(7, 20, requires_grad=True), torch.randn(5, 20, requires_grad=True)
    rows, cols = torch.tensor([0, 6, 6, 2, 0, 0]), torch.tensor([4, 4, 1, 0, 4, 3])
    out = mc.PairDot.apply(X, Y, rows, cols)
    torch.testing.assert_close(out, (X[rows] * Y[cols]).sum(-1))
    g = torch.randn(6)
    dX, dY = torch.autograd.grad(out, [X, Y], g)
    plan = mc._PairPlan(rows, cols, 7, 5)
    plan.sparse = False   # the non-CPU path
    torch.testing.assert_close(plan.dot(X.detach(), Y.detach()), out.detach())
    torch.testing.assert_close(plan.scatter_rows(g, Y.detach()), dX)
    torch.testing.assert_close(plan.scatter_cols(g, X.detach()), dY)


@pytest.mark.parametrize("mask", ["gaussian_pos", "gaussian", "sigmoid2", "sin", "triangle"])
def test_masked_rows_equals_masked_factor(mask):
    n, K, Rb = 13, 4, 10
    F = torch.randn(n, Rb, dtype=torch.float64, requires_grad=True)
    U = torch.randn(n, K, dtype=torch.float64, requires_grad=True)
    omega = torch.linspace(1 / K, 1, K, dtype=torch.float64)
    wp, c = omega[:, None] * torch.arange(Rb, dtype=torch.float64), (Rb / 2) * omega
    go = torch.randn(n, K, Rb, dtype=torch.float64)
    ref = mc.MaskedFactor.apply(F, U, wp, c, 1 / K, mask)
    g_ref = torch.autograd.grad((ref * go).sum(), [F, U])
    for block in (1, 5, 100):
        out = mc.MaskedRows.apply(F, U, wp, c, 1 / K, mask, block)
        torch.testing.assert_close(out, ref)
        for a, b in zip(torch.autograd.grad((out * go).sum(), [F, U]), g_ref):
            torch.testing.assert_close(a, b)


def test_same_initial_factors_for_mf_and_every_shift_mode():
    A = [mc.make_rating_model(k, 6, 7, 5, 2, 3.0, shift_mode=m, gen=torch.Generator().manual_seed(0)).core.A
         for k, m in [("mf", "zero"), ("mmf", "zero"), ("mmf", "random"), ("mmf", "learned")]]
    for a in A[1:]:
        torch.testing.assert_close(a, A[0])


@pytest.mark.parametrize("kind,mode", [("mf", "zero"), ("mmf", "zero"), ("mmf", "random"), ("mmf", "learned")])
def test_models_learn_low_rank_ratings(kind, mode):
    """Without biases, beating the global mean needs the factors: both models must."""
    train, val, test = tensor_splits()
    mu = float(train.ratings.mean())
    baseline = float((test.ratings - mu).square().mean().sqrt())
    model = mc.make_rating_model(kind, 60, 80, 8, 4, mu, bias=False, shift_mode=mode, init_std=0.1,
                                 gen=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in model.shift_params()]
    fit = mc.fit_ratings(model, model.make_optimizer(0.02 if kind == "mf" else 0.05), train, val,
                         epochs=40, batch_size=256, patience=5, clamp=(1, 5),
                         gen=torch.Generator().manual_seed(0), print_every=0)
    rmse, mae = mc.rating_metrics(model, test, (1, 5))
    assert rmse < 0.6 * baseline, (rmse, baseline)
    assert fit.best_val_rmse < 0.6 * baseline
    for b, p in zip(before, model.shift_params()):   # learned shifts did move
        assert not torch.equal(b, p)


def test_early_stopping_restores_best_epoch():
    train, val, _ = tensor_splits()
    model = mc.make_rating_model("mf", 60, 80, 16, 1, float(train.ratings.mean()), init_std=0.1,
                                 gen=torch.Generator().manual_seed(0))
    # a large learning rate overfits within a few epochs, so validation RMSE turns up
    fit = mc.fit_ratings(model, model.make_optimizer(0.05), train, val, epochs=60, batch_size=128,
                         patience=3, clamp=(1, 5), gen=torch.Generator().manual_seed(0), print_every=0)
    curve = [h["val_rmse"] for h in fit.history]
    assert fit.epochs_run == fit.best_epoch + 3 < 60           # stopped 3 epochs after the best
    assert fit.best_val_rmse == min(curve) == curve[fit.best_epoch - 1]
    assert mc.rating_metrics(model, val, (1, 5))[0] == pytest.approx(fit.best_val_rmse, abs=1e-6)


def test_predictions_are_clamped_when_evaluated():
    data = mc.RatingTensors.from_arrays([0, 1], [0, 1], [1.0, 5.0], "cpu")
    model = mc.make_rating_model("mf", 2, 2, 2, 1, 3.0, gen=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.user_bias.copy_(torch.tensor([-9.0, 9.0]))
    assert mc.predict_ratings(model, data, (1.0, 5.0)).tolist() == [1.0, 5.0]
    assert mc.rating_metrics(model, data, (1.0, 5.0)) == (0.0, 0.0)


def test_nan_loss_stops_with_model_and_epoch(ml100k_dir, tmp_path):
    code, out, err = run_main([*TINY, "--data_dir", str(ml100k_dir), "--save_dir", str(tmp_path),
                               "--models", "mf", "--lr_baseline", "1e30"])
    assert code == 1
    assert err.startswith("error: MF seed 123: training loss became") and "at epoch 1" in err
    assert "Traceback" not in err


# ----- the entrypoint --------------------------------------------------------------------

def test_json_csv_and_manifest_have_the_documented_keys(ml100k_dir, tmp_path):
    code, out, err = run_main([*TINY, "--data_dir", str(ml100k_dir), "--save_dir", str(tmp_path),
                               "--seeds", "1,2", "--shift_mode", "learned", "--plot_curves",
                               "--print_every", "1"])
    assert code == 0, err
    assert "epoch   1  train loss" in out and "val RMSE" in out and "s/epoch" in out
    stem = "ml-100k_R8_K4"
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {f"{stem}_seed1.json", f"{stem}_seed2.json", f"{stem}_agg.json",
                     f"{stem}_summary.csv", f"{stem}_manifest.json",
                     f"{stem}_seed1_curves.png", f"{stem}_seed2_curves.png"}
    rec = json.loads((tmp_path / f"{stem}_seed1.json").read_text())
    for key in ("dataset", "split", "seed", "users", "items", "n_train", "n_val", "n_test", "clamp",
                "mu", "config", "baseline", "mmf"):
        assert key in rec
    assert rec["users"] == 50 and rec["items"] == 70 and rec["split"] == "per_user"
    for model in ("baseline", "mmf"):
        for key in ("params", "best_epoch", "best_val_rmse", "test_rmse", "test_mae", "train_time_sec"):
            assert rec[model][key] is not None
    agg = json.loads((tmp_path / f"{stem}_agg.json").read_text())
    assert agg["seeds"] == [1, 2]
    for model in ("baseline", "mmf"):
        for key in ("test_rmse", "test_mae", "train_time_sec"):
            assert set(agg[model][key]) == {"mean", "std", "n"} and agg[model][key]["n"] == 2
    assert set(agg["time_ratio_mmf_over_mf"]) == {"mean", "std", "n"}
    paired = agg["paired_test_rmse"]
    assert set(paired) >= {"n", "mean_diff", "std_diff", "p_value"} and paired["n"] == 2
    rows = (tmp_path / f"{stem}_summary.csv").read_text().splitlines()
    assert rows[0].split(",") == main_completion.CSV_FIELDS and len(rows) == 5   # 2 seeds x 2 models
    manifest = json.loads((tmp_path / f"{stem}_manifest.json").read_text())
    assert manifest["status"] == "finished" and "torch" in manifest["environment"]
    assert manifest["args"]["shift_mode"] == "learned"


def test_canonical_split_and_one_seed(ml100k_dir, tmp_path):
    code, out, err = run_main([*TINY, "--data_dir", str(ml100k_dir), "--save_dir", str(tmp_path),
                               "--split", "u1", "--models", "mmf"])
    assert code == 0, err
    rec = json.loads((tmp_path / "ml-100k_R8_K4_seed123.json").read_text())
    n_test = len((ml100k_dir / "ml-100k" / "u1.test").read_text().splitlines())
    assert rec["split"] == "u1" and "baseline" not in rec and rec["n_test"] == n_test
    agg = json.loads((tmp_path / "ml-100k_R8_K4_agg.json").read_text())
    assert agg["mmf"]["test_rmse"]["std"] is None and "paired_test_rmse" not in agg


def test_two_runs_with_the_same_seed_agree(ml100k_dir, tmp_path):
    results = []
    for run in ("a", "b"):
        code, _, err = run_main([*TINY, "--data_dir", str(ml100k_dir), "--save_dir", str(tmp_path / run),
                                 "--shift_mode", "learned", "--shift_init", "random"])
        assert code == 0, err
        rec = json.loads((tmp_path / run / "ml-100k_R8_K4_seed123.json").read_text())
        results.append([(rec[m]["test_rmse"], rec[m]["best_epoch"], [h["train_loss"] for h in rec[m]["history"]])
                        for m in ("baseline", "mmf")])
    assert results[0] == results[1]


def bad_input_cases(data_dir, tmp_path):
    return {
        "unknown dataset": ["--dataset", "nope"],
        "K < 1": ["--dataset", "ml-100k", "--data_dir", str(data_dir), "--R", "8", "--K", "0"],
        "K > R": ["--dataset", "ml-100k", "--data_dir", str(data_dir), "--R", "8", "--K", "9"],
        "split the dataset lacks": ["--dataset", "douban", "--split", "u1"],
        "missing data, no --download": ["--dataset", "ml-100k", "--data_dir", str(tmp_path / "empty")],
    }


def check_one_line_error(name, code, err):
    assert code != 0, name
    assert "Traceback" not in err, (name, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)


def test_bad_inputs_exit_nonzero_with_one_line(tmp_path, ml100k_dir):
    for name, args in bad_input_cases(ml100k_dir, tmp_path).items():
        code, _, err = run_main([*args, "--save_dir", str(tmp_path / "out"), "--device", "cpu"])
        check_one_line_error(name, code, err)
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").iterdir())
    assert not (tmp_path / "out").exists()   # nothing written before the inputs are checked


def test_bad_input_on_the_real_command_line(tmp_path, ml100k_dir):
    """The same through `python main_completion.py`: exit status, one line, no traceback.
    (One case only: each subprocess pays torch's import; the in-process test above runs
    all of them through the same run_cli.)"""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    args = bad_input_cases(ml100k_dir, tmp_path)["missing data, no --download"]
    p = subprocess.run([sys.executable, str(ROOT / "main_completion.py"), *args, "--save_dir",
                        str(tmp_path / "out"), "--device", "cpu"],
                       capture_output=True, text=True, env=env, timeout=120)
    check_one_line_error("missing data", p.returncode, p.stderr)
    assert p.returncode == 2 and "--download" in p.stderr


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")
@pytest.mark.parametrize("dataset,split", [("douban", "fixed"), ("ml-100k", "u1")])
def test_shared_data_runs(dataset, split, tmp_path):
    code, out, err = run_main(["--dataset", dataset, "--split", split, "--data_dir", str(SHARED),
                               "--R", "4", "--K", "2", "--epochs", "1", "--print_every", "0",
                               "--save_dir", str(tmp_path), "--device", "cpu"])
    assert code == 0, err
    rec = json.loads((tmp_path / f"{dataset}_R4_K2_seed123.json").read_text())
    expected = {"douban": (3000, 3000, 13689), "ml-100k": (943, 1682, 20000)}[dataset]
    assert (rec["users"], rec["items"], rec["n_test"]) == expected
    assert rec["mmf"]["test_rmse"] < 1.2 and rec["baseline"]["test_rmse"] < 1.2
