"""Sweeps under torchrun give the same files as a single process; --resume completes a sweep."""
import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import main_reconstruction
import mmf_core as core

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
RECON = ["--I", "24", "--J", "20", "--R_list", "4,6,8", "--K_ratio", "0.5", "--epochs", "40",
         "--num_blocks", "3", "--log_every", "0", "--device", "cpu", "--threads", "1",
         "--methods", "mmf,svd,mf_ridge,mf_bias", "--seeds", "1,2"]
CSV = "results_I24_J20_blockdiag_maskgaussian-gaussian.csv"


def run_inprocess(script_main, argv):
    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["prog", *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            core.run_cli(script_main)
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = old
    return code, out.getvalue(), err.getvalue()


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
