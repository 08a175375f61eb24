"""Sweeps under torchrun give the same files as a single process; --resume completes a sweep."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import main_completion
import main_reconstruction
import mmf_core as core
from helpers import run_entrypoint, write_fake_ml100k

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
RECON = ["--I", "24", "--J", "20", "--R_list", "4,6,8", "--K_ratio", "0.5", "--epochs", "40",
         "--num_blocks", "3", "--log_every", "0", "--device", "cpu", "--threads", "1",
         "--methods", "mmf,svd,mf_ridge,mf_bias", "--seeds", "1,2"]
CSV = "results_I24_J20_blockdiag_maskgaussian-gaussian.csv"


def run_inprocess(script_main, argv):
    return run_entrypoint(script_main, argv)


def torchrun(script, argv, nproc=2):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    p = subprocess.run([TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", str(ROOT / script), *argv],
                       capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p


def numbers(path):
    """The CSV without the timing column (wall time differs run to run)."""
    return pd.read_csv(path, dtype=str).drop(columns=["train_time_sec"])


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_torchrun_reconstruction_equals_single_process(tmp_path):
    code, _, err = run_inprocess(main_reconstruction.main, [*RECON, "--out_dir", str(tmp_path / "one")])
    assert code == 0, err
    torchrun("main_reconstruction.py", [*RECON, "--out_dir", str(tmp_path / "two")])
    one, two = numbers(tmp_path / "one" / CSV), numbers(tmp_path / "two" / CSV)
    assert len(one) == 2 * 3 * 4
    pd.testing.assert_frame_equal(one, two)          # same rows, same order, bit for bit
    assert not list((tmp_path / "two").glob("*.partial*"))


def test_balanced_assignment_is_deterministic_and_complete():
    costs = [5, 1, 1, 1, 9, 2, 2, 7]
    shares = core.assign_balanced(costs, 3)
    assert sorted(i for s in shares for i in s) == list(range(8))
    assert shares == core.assign_balanced(costs, 3)
    loads = [sum(costs[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(costs)
    assert core.assign_balanced(costs, 1) == [list(range(8))]


def test_missing_setting_is_reported_and_resume_completes_it(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    args = [*RECON, "--R_list", "4,6", "--seeds", "1", "--no_plots", "--out_dir", str(out)]
    real = main_reconstruction.run_setting
    calls = []

    def flaky(s, *a, **k):
        calls.append((s.R, s.method))
        if s.R == 6 and s.method == "mmf":
            raise RuntimeError("simulated crash")
        return real(s, *a, **k)

    monkeypatch.setattr(main_reconstruction, "run_setting", flaky)
    code, _, err = run_inprocess(main_reconstruction.main, args)
    assert code == 1
    assert "1 of 8 settings did not complete" in err and "R 6 K 3 mmf" in err and "--resume" in err
    assert "simulated crash" in err
    assert not (out / CSV).exists()                      # no final CSV that looks complete
    assert len(pd.read_csv(out / CSV.replace(".csv", ".partial.csv"))) == 7

    calls.clear()
    monkeypatch.setattr(main_reconstruction, "run_setting", lambda s, *a, **k: (calls.append((s.R, s.method)), real(s, *a, **k))[1])
    code, out_text, err = run_inprocess(main_reconstruction.main, [*args, "--resume"])
    assert code == 0, err
    assert calls == [(6, "mmf")]                         # only the missing setting ran
    rows = pd.read_csv(out / CSV)
    assert list(zip(rows["R"], rows["method"])) == [(R, m) for R in (4, 6) for m in
                                                    ("mmf", "svd", "mf_ridge", "mf_bias")]
    assert not list(out.glob("*.partial*"))

    # the result equals an uninterrupted run
    code, _, err = run_inprocess(main_reconstruction.main, [*args[:-1], str(tmp_path / "clean")])
    pd.testing.assert_frame_equal(numbers(out / CSV), numbers(tmp_path / "clean" / CSV))


def test_resume_refuses_rows_of_another_configuration(tmp_path):
    out = tmp_path / "sweep"
    base = [*RECON, "--R_list", "4", "--seeds", "1", "--methods", "svd", "--no_plots", "--out_dir", str(out)]
    assert run_inprocess(main_reconstruction.main, base)[0] == 0
    code, _, err = run_inprocess(main_reconstruction.main, [*base, "--epochs", "41", "--resume"])
    assert code == 2 and "other settings" in err


COMPLETION = ["--dataset", "ml-100k", "--R", "8", "--K", "4", "--epochs", "4", "--batch_size", "256",
              "--print_every", "0", "--device", "cpu", "--threads", "1", "--seeds", "1,2",
              "--shift_mode", "learned"]
STEM = "ml-100k_R8_K4"


def completion_numbers(save_dir):
    """Everything but timings and the run's own bookkeeping, from each seed's JSON and the CSV."""
    out = {}
    for seed in (1, 2):
        rec = json.loads((save_dir / f"{STEM}_seed{seed}.json").read_text())
        for key in ("baseline", "mmf"):
            m = rec[key]
            out[(seed, key)] = (m["test_rmse"], m["test_mae"], m["best_epoch"], m["best_val_rmse"],
                                [(h["epoch"], h["train_loss"], h["val_rmse"]) for h in m["history"]])
    csv = pd.read_csv(save_dir / f"{STEM}_summary.csv").drop(columns=["train_time_sec", "sec_per_epoch"])
    return out, csv


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_torchrun_completion_equals_single_process(tmp_path):
    data = write_fake_ml100k(tmp_path / "data")
    code, _, err = run_inprocess(main_completion.main,
                                 [*COMPLETION, "--data_dir", str(data), "--save_dir", str(tmp_path / "one")])
    assert code == 0, err
    torchrun("main_completion.py", [*COMPLETION, "--data_dir", str(data), "--save_dir", str(tmp_path / "two")])
    one, one_csv = completion_numbers(tmp_path / "one")
    two, two_csv = completion_numbers(tmp_path / "two")
    assert one == two
    pd.testing.assert_frame_equal(one_csv, two_csv)
    names = {p.name for p in (tmp_path / "two").iterdir()}
    assert {f"{STEM}_agg.json", f"{STEM}_summary.csv", f"{STEM}_seed1.json", f"{STEM}_seed2.json"} <= names
    assert json.loads((tmp_path / "two" / f"{STEM}_manifest.json").read_text())["world_size"] == 2


def test_completion_missing_model_is_reported_and_resume_completes_it(tmp_path, monkeypatch):
    data = write_fake_ml100k(tmp_path / "data")
    args = [*COMPLETION, "--data_dir", str(data), "--save_dir", str(tmp_path / "out")]
    real = main_completion.train_model
    calls = []

    def flaky(a, seed, kind, *rest):
        calls.append((seed, kind))
        if (seed, kind) == (2, "mmf"):
            raise RuntimeError("simulated crash")
        return real(a, seed, kind, *rest)

    monkeypatch.setattr(main_completion, "train_model", flaky)
    code, _, err = run_inprocess(main_completion.main, args)
    assert code == 1 and "simulated crash" in err and "mmf seed 2" in err and "--resume" in err
    out = tmp_path / "out"
    assert (out / f"{STEM}_seed1.json").exists() and (out / f"{STEM}_seed2.partial.json").exists()
    assert not (out / f"{STEM}_agg.json").exists() and not (out / f"{STEM}_seed2.json").exists()
    manifest = json.loads((out / f"{STEM}_manifest.json").read_text())
    assert manifest["status"] == "incomplete" and manifest["missing"] == [{"seed": 2, "model": "mmf"}]

    calls.clear()
    monkeypatch.setattr(main_completion, "train_model",
                        lambda a, seed, kind, *rest: (calls.append((seed, kind)), real(a, seed, kind, *rest))[1])
    code, _, err = run_inprocess(main_completion.main, [*args, "--resume"])
    assert code == 0, err
    assert calls == [(2, "mmf")]                                     # only the missing model ran
    assert (out / f"{STEM}_agg.json").exists() and not (out / f"{STEM}_seed2.partial.json").exists()
    code, _, err = run_inprocess(main_completion.main,
                                 [*COMPLETION, "--data_dir", str(data), "--save_dir", str(tmp_path / "clean")])
    assert code == 0, err
    resumed, resumed_csv = completion_numbers(out)
    clean, clean_csv = completion_numbers(tmp_path / "clean")
    assert resumed == clean                                          # same as an uninterrupted run
    pd.testing.assert_frame_equal(resumed_csv, clean_csv)
