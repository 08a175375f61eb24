"""Tests of the real-data half of data_utils.py: registry, download, parsing, splits.

Downloads are tested for real against a local HTTP server (127.0.0.1, ephemeral port)
serving archives built here. Tests on the real datasets use ../shared/data (relative to the
repository root) and are skipped when it is absent.
"""
import dataclasses
import hashlib
import http.server
import io
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import data_utils as du  # noqa: E402
from data_utils import DataError  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")

FAST = dict(retries=2, backoff_s=0.0, timeout_s=5.0)  # keep failing downloads quick


# ----- fixtures: a local HTTP server and the archives it serves ---------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    # routes: path -> (status, body, Content-Length to announce or None for len(body))
    def do_GET(self):
        self.server.hits.append(self.path)
        status, body, length = self.server.routes.get(self.path, (404, b"not found", None))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)  # HTTP/1.0: the connection closes after this, short or not

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.routes, srv.hits = {}, []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    monkeypatch.setenv("MMF_MOVIELENS_BASE_URL", url + "/movielens")
    monkeypatch.setenv("MMF_MGCNN_BASE_URL", url + "/mgcnn")
    yield srv
    srv.shutdown()
    srv.server_close()


def _tsv(rows):
    return "".join(f"{u}\t{i}\t{r}\t{881250949 + k}\n" for k, (u, i, r) in enumerate(rows))


# A tiny ml-100k: 4 users with sparse raw ids (10, 20, 30, 40), 5 items (raw 1..9).
TINY_ROWS = [(10, 1, 5), (10, 3, 4), (10, 5, 3), (10, 7, 2), (20, 1, 1), (20, 3, 2),
             (20, 9, 3), (30, 5, 4), (30, 7, 5), (40, 9, 1), (40, 1, 2), (40, 3, 3)]
TINY_TEST = [0, 4, 7, 10]  # rows in u1.test, the rest in u1.base


def make_ml100k_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-100k/u.data", _tsv(TINY_ROWS))
        base = [r for k, r in enumerate(TINY_ROWS) if k not in TINY_TEST]
        zf.writestr("ml-100k/u1.base", _tsv(base))
        zf.writestr("ml-100k/u1.test", _tsv([TINY_ROWS[k] for k in TINY_TEST]))
        zf.writestr("ml-100k/README", "tiny test archive\n")
    return buf.getvalue()


# A tiny mgcnn-style file: 4 users x 6 items. MATLAB v7.3 is HDF5 written column-major, so a
# dense users x items matrix appears transposed (items x users) to h5py; Otest is stored as
# a MATLAB sparse matrix (CSC parts in a group) to cover that variant too.
TINY_M = np.array([[5, 0, 3, 0, 0, 1],
                   [0, 4, 0, 0, 2, 0],
                   [1, 0, 0, 5, 0, 0],
                   [0, 0, 2, 0, 0, 4]], dtype=np.float64)
TINY_OTEST = np.zeros_like(TINY_M)
TINY_OTEST[[0, 1, 3], [5, 4, 2]] = 1
TINY_OTRAIN = ((TINY_M != 0) & (TINY_OTEST == 0)).astype(np.float64)
TINY_OTRAIN[2, 2] = 1  # a mask entry over a zero rating: must be dropped


def make_mat(path: Path) -> bytes:
    with h5py.File(path, "w", userblock_size=512) as f:  # MATLAB puts a 512-byte header first
        f["M"] = TINY_M.T
        f["Otraining"] = TINY_OTRAIN.T
        S = scipy.sparse.csc_matrix(TINY_OTEST)
        g = f.create_group("Otest")
        g.attrs["MATLAB_sparse"] = np.uint64(S.shape[0])
        g["jc"], g["ir"] = S.indptr.astype(np.uint64), S.indices.astype(np.uint64)
        g["data"] = S.data
        f["W_users"] = np.eye(4)
    return path.read_bytes()


def with_md5(monkeypatch, name, body: bytes):
    """Point the registry entry of `name` at the MD5 of `body`."""
    monkeypatch.setitem(du.DATASETS, name,
                        dataclasses.replace(du.DATASETS[name], md5=hashlib.md5(body).hexdigest()))


def all_files(d: Path):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


# ----- the real datasets ------------------------------------------------------------------

@needs_shared
def test_douban_real():
    data = du.load_dataset("douban", SHARED)
    assert (data.n_users, data.n_items) == (3000, 3000)
    assert int((~data.fixed_test).sum()) == 123_202 and int(data.fixed_test.sum()) == 13_689
    assert set(np.unique(data.ratings)) == {1, 2, 3, 4, 5}
    s = du.load_split("douban", SHARED, seed=1, val_ratio=0.05)
    assert len(s.train) + len(s.val) == 123_202 and len(s.test) == 13_689
    assert len(s.val) == round(0.05 * 123_202)
    assert s.train.users.dtype == np.int64 and s.train.ratings.dtype == np.float32
    assert (s.rating_min, s.rating_max) == (1.0, 5.0)


@needs_shared
def test_flixster_real_is_not_douban():
    # the published scripts loaded Douban when asked for Flixster
    data = du.load_dataset("flixster", SHARED)
    assert (data.n_users, data.n_items) == (3000, 3000)
    assert int((~data.fixed_test).sum()) == 23_556 and int(data.fixed_test.sum()) == 2_617
    assert np.array_equal(np.unique(data.ratings), np.arange(1, 11) / 2)
    assert data.path.name == "training_test_dataset_10_NNs.mat" and "flixster" in str(data.path)


@needs_shared
def test_ml100k_real_and_canonical_split():
    data = du.load_dataset("ml-100k", SHARED)
    assert (data.n_users, data.n_items, data.n_ratings) == (943, 1682, 100_000)
    s = du.load_split("ml-100k", SHARED, split="u1", seed=0, val_ratio=0.0)
    assert (len(s.train), len(s.val), len(s.test)) == (80_000, 0, 20_000)
    s = du.load_split("ml-100k", SHARED, split="u1", seed=0, val_ratio=0.05)
    assert (len(s.train), len(s.val), len(s.test)) == (76_000, 4_000, 20_000)
    # the same ratings as the mgcnn preprocessing of the u1 split
    m = du.load_split("ml-100k-mgcnn", SHARED, val_ratio=0.0)
    assert (m.n_users, m.n_items, len(m.train), len(m.test)) == (943, 1682, 80_000, 20_000)
    key = lambda t: np.sort(t.users * 1682 + t.items)  # noqa: E731
    assert np.array_equal(key(m.test), key(s.test))


@needs_shared
def test_per_user_split_real_ml100k():
    data = du.load_dataset("ml-100k", SHARED)
    tr, va, te = du.per_user_split(data.users, 0.1, 0.05, np.random.default_rng(123))
    everything = np.concatenate([tr, va, te])
    assert len(everything) == data.n_ratings and len(np.unique(everything)) == data.n_ratings
    n = np.bincount(data.users)  # every ml-100k user has >= 20 ratings
    for ix, ratio in ((te, 0.1), (va, 0.05)):
        assert np.array_equal(np.bincount(data.users[ix], minlength=943),
                              np.maximum(1, np.rint(ratio * n)))
    a = du.load_split("ml-100k", SHARED, seed=7)
    b = du.load_split("ml-100k", SHARED, seed=7)
    c = du.load_split("ml-100k", SHARED, seed=8)
    assert np.array_equal(a.test.users, b.test.users) and np.array_equal(a.test.items, b.test.items)
    assert not np.array_equal(a.test.items, c.test.items)


@needs_shared
def test_cli_real_douban(capsys):
    assert du.main(["--dataset", "douban", "--data_dir", str(SHARED)]) == 0
    out = capsys.readouterr().out
    assert "users    3,000" in out and "train 123,202, test 13,689" in out


# ----- splits on synthetic data -----------------------------------------------------------

def test_per_user_split_rules():
    counts = [1, 2, 3, 5, 10, 25, 35, 100]
    users = np.repeat(np.arange(len(counts)), counts)
    users = users[np.random.default_rng(0).permutation(len(users))]  # file order: arbitrary
    tr, va, te = du.per_user_split(users, 0.1, 0.1, np.random.default_rng(0))
    got = [np.bincount(users[ix], minlength=len(counts)).tolist() for ix in (tr, va, te)]
    # n < 3: all train; n = 3, 5, 10: 1 and 1 (crowded or max(1, .)); round half to even:
    # 25 * 0.1 = 2.5 -> 2, 35 * 0.1 = 3.5 -> 4
    assert got[2] == [0, 0, 1, 1, 1, 2, 4, 10]
    assert got[1] == [0, 0, 1, 1, 1, 2, 4, 10]
    assert got[0] == [1, 2, 1, 3, 8, 21, 27, 80]
    # no validation asked for: none given, and the n_test + n_val >= n rule keeps n_val 0
    tr, va, te = du.per_user_split(users, 0.5, 0.0, np.random.default_rng(0))
    assert len(va) == 0
    assert np.bincount(users[te], minlength=8).tolist() == [0, 0, 2, 2, 5, 12, 18, 50]


def test_carve_validation_and_ratios(tmp_path):
    idx = np.arange(100, 200)
    tr, va = du.carve_validation(idx, 0.001, np.random.default_rng(0))
    assert len(va) == 1 and len(tr) == 99 and not np.intersect1d(tr, va).size
    tr, va = du.carve_validation(idx, 0.0, np.random.default_rng(0))
    assert len(va) == 0 and np.array_equal(tr, idx)
    with pytest.raises(DataError, match="val_ratio"):
        du.load_split("ml-100k", tmp_path, val_ratio=0.5, test_ratio=0.5)


def test_split_names():
    assert du.available_splits("ml-100k") == ("per_user", "u1", "u2", "u3", "u4", "u5", "ua", "ub")
    assert du.available_splits("ml-1m") == ("per_user",)
    assert du.available_splits("douban") == ("fixed",)
    assert du.resolve_split("flixster", None) == "fixed"
    with pytest.raises(DataError, match="no split 'u1'"):
        du.resolve_split("ml-1m", "u1")
    with pytest.raises(DataError, match="no split 'per_user'"):
        du.resolve_split("douban", "per_user")
    with pytest.raises(DataError, match="unknown dataset"):
        du.get_info("netflix")


# ----- downloading ------------------------------------------------------------------------

def test_download_ml100k_archive(server, monkeypatch, tmp_path):
    body = make_ml100k_zip()
    server.routes["/movielens/ml-100k.zip"] = (200, body, None)
    with_md5(monkeypatch, "ml-100k", body)
    data = du.load_dataset("ml-100k", tmp_path, download=True)
    assert server.hits == ["/movielens/ml-100k.zip"]
    assert data.path == tmp_path / "ml-100k" / "u.data"
    assert (data.n_users, data.n_items, data.n_ratings) == (4, 5, 12)
    assert data.raw_user_ids.tolist() == [10, 20, 30, 40]
    assert data.raw_item_ids.tolist() == [1, 3, 5, 7, 9]
    assert data.users[:4].tolist() == [0, 0, 0, 0] and data.items[:4].tolist() == [0, 1, 2, 3]
    assert all_files(tmp_path) == ["ml-100k.zip", "ml-100k/README", "ml-100k/u.data",
                                   "ml-100k/u1.base", "ml-100k/u1.test"]  # no .part, no temp
    # present now: nothing touches the network, with or without --download
    du.load_dataset("ml-100k", tmp_path, download=True)
    s = du.load_split("ml-100k", tmp_path, split="u1", val_ratio=0.0)
    assert len(server.hits) == 1
    assert (len(s.train), len(s.test)) == (8, 4)
    assert s.test.users.tolist() == [0, 1, 2, 3] and s.test.items.tolist() == [0, 0, 2, 0]


def test_download_mgcnn_mat(server, monkeypatch, tmp_path):
    body = make_mat(tmp_path / "src.mat")
    server.routes["/mgcnn/Data/douban/training_test_dataset.mat"] = (200, body, None)
    with_md5(monkeypatch, "douban", body)
    data = du.load_dataset("douban", tmp_path / "d", download=True)
    assert data.path == tmp_path / "d" / "mgcnn" / "Data" / "douban" / "training_test_dataset.mat"
    assert (data.n_users, data.n_items) == (4, 6)  # transposed back to users x items
    dense = np.zeros((4, 6))
    dense[data.users, data.items] = data.ratings
    assert np.array_equal(dense, TINY_M)  # every nonzero rating under a mask, none other
    test = data.fixed_test
    assert np.array_equal(np.sort(data.users[test] * 6 + data.items[test]), [5, 10, 20])
    assert int((~data.fixed_test).sum()) == 6  # the zero under Otraining is dropped
    s = du.load_split("douban", tmp_path / "d", seed=0, val_ratio=0.2)
    assert (len(s.train), len(s.val), len(s.test)) == (5, 1, 3)


@pytest.mark.parametrize("failure", ["checksum", "truncated", "http500", "http404"])
def test_download_failures_leave_nothing(failure, server, monkeypatch, tmp_path):
    body = make_ml100k_zip()
    with_md5(monkeypatch, "ml-100k", body)
    route, expect, hits = {
        "checksum": ((200, body[:-1] + b"x", None), "MD5", 1),       # no retry: same file again
        "truncated": ((200, body[:100], len(body)), "failed after 2 attempts", 2),
        "http500": ((500, b"oops", None), "HTTP 500", 2),
        "http404": ((404, b"gone", None), "HTTP 404", 1),            # no retry: wrong URL
    }[failure]
    server.routes["/movielens/ml-100k.zip"] = route
    with pytest.raises(DataError, match=expect) as e:
        du.ensure_dataset("ml-100k", tmp_path, download=True, **FAST)
    assert "--download" in str(e.value)
    assert len(server.hits) == hits
    assert all_files(tmp_path) == [] and not (tmp_path / "ml-100k").exists()
    # a later run trusts nothing: without --download the data is still missing
    with pytest.raises(DataError, match="not found"):
        du.ensure_dataset("ml-100k", tmp_path)


def test_leftover_part_then_success(server, monkeypatch, tmp_path):
    body = make_ml100k_zip()
    with_md5(monkeypatch, "ml-100k", body)
    server.routes["/movielens/ml-100k.zip"] = (200, body, None)
    (tmp_path / "ml-100k.zip.part").write_bytes(body[:50])  # a run killed mid-download
    path = du.ensure_dataset("ml-100k", tmp_path, download=True, **FAST)
    assert path.is_file() and not (tmp_path / "ml-100k.zip.part").exists()
    assert (tmp_path / "ml-100k.zip").read_bytes() == body


def test_missing_without_download(server, tmp_path):
    with pytest.raises(DataError) as e:
        du.load_dataset("ml-1m", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "ml-1m" / "ratings.dat") in msg and "--download" in msg
    with pytest.raises(DataError) as e:
        du.load_dataset("flixster", tmp_path)
    expected = tmp_path / "mgcnn" / "Data" / "flixster" / "training_test_dataset_10_NNs.mat"
    assert str(expected) in str(e.value)
    assert server.hits == []


def test_corrupt_archive_by_hand(server, monkeypatch, tmp_path):
    with_md5(monkeypatch, "ml-100k", make_ml100k_zip())
    (tmp_path / "ml-100k.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="delete it"):
        du.ensure_dataset("ml-100k", tmp_path, download=True, **FAST)
    assert server.hits == []


@pytest.mark.parametrize("layout", ["mgcnn/Data/flixster", "mgcnn-master/Data/flixster",
                                    "flixster"])
def test_mgcnn_layouts(layout, tmp_path):
    folder = tmp_path / layout
    folder.mkdir(parents=True)
    make_mat(folder / "training_test_dataset_10_NNs.mat")
    data = du.load_dataset("flixster", tmp_path)
    assert data.path.parent == folder and data.n_ratings == 9


def test_base_url_override(monkeypatch):
    monkeypatch.delenv("MMF_MGCNN_BASE_URL", raising=False)
    assert du.DATASETS["douban"].url == ("https://raw.githubusercontent.com/fmonti/mgcnn/"
                                         "master/Data/douban/training_test_dataset.mat")
    monkeypatch.setattr(du, "MGCNN_BASE_URL", "http://mirror/x/")
    assert du.DATASETS["douban"].url == "http://mirror/x/Data/douban/training_test_dataset.mat"
    monkeypatch.setenv("MMF_MOVIELENS_BASE_URL", "http://127.0.0.1:1/ml")
    assert du.DATASETS["ml-10m"].url == "http://127.0.0.1:1/ml/ml-10m.zip"


# ----- the rename into place --------------------------------------------------------------

def test_rename_keeps_failing(monkeypatch, tmp_path):
    def locked(src, dst):
        raise PermissionError(13, "The process cannot access the file because it is being "
                                  "used by another process")
    monkeypatch.setattr(du.os, "replace", locked)
    (tmp_path / "a").write_text("x")
    with pytest.raises(DataError) as e:
        du.move_into_place(tmp_path / "a", tmp_path / "b", attempts=3, delay_s=0)
    msg = str(e.value)
    assert "WinError 32" in msg and "sync" in msg and "virus scanner" in msg and "--data_dir" in msg


def test_rename_fails_twice_then_works(monkeypatch, tmp_path):
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(src)
        if len(calls) <= 2:
            raise PermissionError(32, "in use")
        real(src, dst)
    monkeypatch.setattr(du.os, "replace", flaky)
    (tmp_path / "a").write_text("x")
    du.move_into_place(tmp_path / "a", tmp_path / "b", attempts=3, delay_s=0)
    assert len(calls) == 3 and (tmp_path / "b").read_text() == "x"


# ----- bad ratings files ------------------------------------------------------------------

GOOD = {"ml-100k": ("ml-100k/u.data", "", "1\t1\t5\t881250949\n2\t3\t4\t881250950\n"),
        "ml-1m": ("ml-1m/ratings.dat", "", "1::1::5::978300760\n2::3::4::978302109\n"),
        "ml-latest-small": ("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\n",
                            "1,1,4.5,964982703\n2,3,0.5,964981247\n")}
BAD = {  # (dataset, bad line, what the error says); the bad line is the file's line 3
    "non-numeric": ("ml-1m", "3::x::4::978302109", "non-numeric"),
    "float id": ("ml-100k", "3\t1.5\t4\t881250951", "non-numeric"),
    "too few fields": ("ml-100k", "3\t1\t4", "expected 4 fields"),
    "too many fields": ("ml-1m", "3::1::4::978302109::9", "expected 4 fields"),
    "wrong separator": ("ml-1m", "3:1::4::978302109", "expected 4 fields"),
    "above the scale": ("ml-1m", "3::1::6::978302109", "off the scale"),
    "between steps": ("ml-100k", "3\t1\t3.5\t881250951", "off the scale"),
    "below the scale": ("ml-latest-small", "3,1,0,964981247", "off the scale"),
    "nan": ("ml-latest-small", "3,1,nan,964981247", "off the scale"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_line_names_file_and_line(case, tmp_path):
    name, bad, expect = BAD[case]
    rel, header, good = GOOD[name]
    lines = (good.splitlines() if not header else [header.strip(), good.splitlines()[0]])
    path = tmp_path / rel
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines[:2] + [bad] + good.splitlines()) + "\n")
    with pytest.raises(DataError, match=expect) as e:
        du.load_dataset(name, tmp_path)
    assert f"{path}, line 3" in str(e.value)


def test_good_files_parse(tmp_path):
    for name, (rel, header, good) in GOOD.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True)
        path.write_text(header + "\n" + good)  # a blank line is skipped, not an error
        data = du.load_dataset(name, tmp_path)
        assert (data.n_users, data.n_items, data.n_ratings) == (2, 2, 2)


def test_bad_mat(tmp_path):
    path = tmp_path / "douban" / "training_test_dataset.mat"
    path.parent.mkdir()
    path.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(DataError, match="not a MATLAB v7.3"):
        du.load_dataset("douban", tmp_path)
    with h5py.File(path, "w") as f:
        f["M"] = np.full((3, 3), 7.0)
        f["Otraining"] = np.ones((3, 3))
        f["Otest"] = np.zeros((3, 3))
    with pytest.raises(DataError, match="off the scale"):
        du.load_dataset("douban", tmp_path)


# ----- command line -----------------------------------------------------------------------

def test_cli(tmp_path, capsys):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text(_tsv(TINY_ROWS))
    assert du.main(["--dataset", "ml-100k", "--data_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "users    4" in out and "ratings  12" in out and "density  60.0000%" in out
    assert du.main(["--dataset", "douban", "--data_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: douban not found")


def test_cli_subprocess_error_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "data_utils.py"), "--dataset", "ml-20m",
                          "--data_dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "--download" in out.stderr
