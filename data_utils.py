"""Data for the MMF experiments: synthetic matrices and real rating datasets.

Synthetic generators (reconstruction, expressivity, identifiability) live in the first
section; dataset download / parsing / splitting (completion) in the second.

Fetch a dataset ahead of time (on a machine with network) and print its statistics:

    python data_utils.py --dataset ml-100k --data_dir data_rec --download
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import requests
import scipy.sparse
import torch
from tqdm import tqdm


class DataError(ValueError):
    """Bad or missing data. Entrypoints print it as one line and exit non-zero."""


# ----------------------------------------------------------------------------------------
# Synthetic matrices (spec section 2)
# ----------------------------------------------------------------------------------------
# Generated with torch's CPU generator in float32, in the same order of draws as the
# published scripts (torch.manual_seed(seed); noise matrix first, then each block), so the
# same seed gives the published matrices: e.g. 256 x 256, 6 blocks, seed 42 gives truncated
# SVD errors 0.8854 / 0.7854 / 0.5302 at R 16 / 32 / 80, exactly as measured in the spec.
# A local generator keeps the global RNG untouched.

def _unit_fro(X: torch.Tensor) -> torch.Tensor:
    n = torch.linalg.norm(X)
    if n == 0:
        raise DataError("synthetic matrix is all zeros; cannot normalize to unit Frobenius norm")
    return X / n


def block_sizes(total: int, num_blocks: int) -> list[int]:
    """Sizes as even as possible; the first `total % num_blocks` blocks are one larger."""
    base, extra = divmod(total, num_blocks)
    return [base + (1 if b < extra else 0) for b in range(num_blocks)]


def _draw(shape, dist: str, gen: torch.Generator) -> torch.Tensor:
    if dist == "normal":
        return torch.randn(*shape, generator=gen)
    if dist == "uniform":
        return torch.rand(*shape, generator=gen) * 2.0 - 1.0
    raise DataError(f"unknown --dist {dist!r} (choose normal or uniform)")


def make_random(I: int, J: int, seed: int, dist: str = "normal") -> torch.Tensor:
    """Dense I x J matrix, N(0,1) or uniform[-1,1], unit Frobenius norm."""
    return _unit_fro(_draw((I, J), dist, torch.Generator().manual_seed(seed)))


def make_blockdiag(I: int, J: int, seed: int, num_blocks: int = 6, block_scale: float = 1.0,
                   offblock_noise_scale: float = 0.01, dist: str = "normal") -> torch.Tensor:
    """Block-diagonal I x J matrix of unit Frobenius norm.

    Off-block entries are N(0, offblock_noise_scale^2); each of the `num_blocks` diagonal
    blocks holds block_scale * N(0,1) (or uniform[-1,1] with dist="uniform"). Block sizes
    along each axis follow `block_sizes`.
    """
    if num_blocks < 1 or num_blocks > min(I, J):
        raise DataError(f"--num_blocks must be between 1 and min(I, J) = {min(I, J)}, got {num_blocks}")
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(I, J, generator=gen) * offblock_noise_scale
    r0 = c0 = 0
    for bi, bj in zip(block_sizes(I, num_blocks), block_sizes(J, num_blocks)):
        X[r0:r0 + bi, c0:c0 + bj] = block_scale * _draw((bi, bj), dist, gen)
        r0 += bi
        c0 += bj
    return _unit_fro(X)


def make_nonneg(X: torch.Tensor) -> torch.Tensor:
    """--data_nonneg: subtract the minimum, clamp at 0, renormalize to unit Frobenius norm."""
    return _unit_fro(torch.clamp(X - X.min(), min=0.0))


def make_synthetic(data_mode: str, I: int, J: int, seed: int, *, dist: str = "normal",
                   num_blocks: int = 6, block_scale: float = 1.0,
                   offblock_noise_scale: float = 0.01, nonneg: bool = False) -> torch.Tensor:
    """The reconstruction target as a float32 CPU tensor of unit Frobenius norm.
    Data depends only on these arguments (never on the device or on other draws)."""
    if I < 1 or J < 1:
        raise DataError(f"matrix size must be at least 1 x 1, got I={I}, J={J}")
    if data_mode == "random":
        X = make_random(I, J, seed, dist)
    elif data_mode == "blockdiag":
        X = make_blockdiag(I, J, seed, num_blocks, block_scale, offblock_noise_scale, dist)
    else:
        raise DataError(f"unknown --data_mode {data_mode!r} (choose random or blockdiag)")
    if nonneg:
        X = make_nonneg(X)
    return X.contiguous()


# ----------------------------------------------------------------------------------------
# Real rating datasets (spec sections 3 and 4)
# ----------------------------------------------------------------------------------------
# From "I want dataset X" to "here are train / validation / test triples":
#
#   DATASETS[name]                        what it is, where it comes from, how to parse it
#   ensure_dataset(name, data_dir)        find it on disk, or download + verify + unpack it
#   load_dataset(name, data_dir)          parse it, re-index ids densely -> RatingData
#   load_split(name, data_dir, split)     split it -> Split(train, val, test) of Triples
#
# Run as a script to fetch a dataset ahead of time and print its statistics.

# Where the files come from. The environment variables (read at call time) override these,
# to use a mirror, or in the tests a local server.
MOVIELENS_BASE_URL = "https://files.grouplens.org/datasets/movielens"
MGCNN_BASE_URL = "https://raw.githubusercontent.com/fmonti/mgcnn/master"


def base_url(kind: str) -> str:
    if kind == "movielens":
        return (os.environ.get("MMF_MOVIELENS_BASE_URL") or MOVIELENS_BASE_URL).rstrip("/")
    return (os.environ.get("MMF_MGCNN_BASE_URL") or MGCNN_BASE_URL).rstrip("/")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str            # "movielens": a zip from GroupLens; "mgcnn": one .mat from fmonti/mgcnn
    file: str            # movielens: the ratings file inside the unpacked archive;
                         # mgcnn: the .mat file under the repository's Data/ folder
    md5: str | None      # of the downloaded file (zip or .mat); None: unknown, not verified
    sep: str | None      # field separator of the ratings text file (None for .mat)
    header: bool         # the ratings text file starts with a header line
    scale: tuple[float, float, float] | None  # (min, max, step) ratings must sit on; None: unknown
    splits: tuple[str, ...]  # the splits it supports; the first is the default

    @property
    def url(self) -> str:
        if self.kind == "movielens":
            return f"{base_url('movielens')}/{self.name}.zip"
        return f"{base_url('mgcnn')}/Data/{self.file}"


ML100K_CANONICAL = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")  # u1..u5: 5-fold; ua/ub: 10 per user
_WHOLE, _HALF = (1.0, 5.0, 1.0), (0.5, 5.0, 0.5)


def _movielens(name, file, sep, header, scale, md5, splits=("per_user",)):
    return DatasetInfo(name, "movielens", file, md5, sep, header, scale, splits)


def _mgcnn(name, file, scale, md5):
    return DatasetInfo(name, "mgcnn", file, md5, None, False, scale, ("fixed",))


DATASETS: dict[str, DatasetInfo] = {d.name: d for d in [
    _movielens("ml-100k", "ml-100k/u.data", "\t", False, _WHOLE,
               md5="0e33842e24a9c977be4e0107933c0723", splits=("per_user",) + ML100K_CANONICAL),
    _movielens("ml-1m", "ml-1m/ratings.dat", "::", False, _WHOLE,
               md5="c4d9eecfca2ab87c1945afe126590906"),
    # the ml-10m zip unpacks to a folder named ml-10M100K
    _movielens("ml-10m", "ml-10M100K/ratings.dat", "::", False, _HALF,
               md5="ce571fd55effeba0271552578f2648bd"),
    _movielens("ml-20m", "ml-20m/ratings.csv", ",", True, _HALF,
               md5="cd245b17a1ae2cc31bb14903e1204af3"),
    _movielens("ml-25m", "ml-25m/ratings.csv", ",", True, _HALF,
               md5="6b51fb2759a8657d3bfcbfc42b592ada"),
    # GroupLens refreshes ml-latest-small now and then, so it has no fixed checksum
    _movielens("ml-latest-small", "ml-latest-small/ratings.csv", ",", True, _HALF, md5=None),
    # Monti et al.'s preprocessing (MATLAB v7.3), each with its fixed train/test split
    _mgcnn("douban", "douban/training_test_dataset.mat", _WHOLE,
           md5="649844d52e32104424b6861b1ef6b812"),
    _mgcnn("flixster", "flixster/training_test_dataset_10_NNs.mat", _HALF,
           md5="80b4316b5c633347dffeed0958a9102c"),
    _mgcnn("yahoo_music", "yahoo_music/training_test_dataset_10_NNs.mat", None, md5=None),
    # ml-100k as preprocessed there: 943 x 1682, the canonical u1 split (80,000 / 20,000)
    _mgcnn("ml-100k-mgcnn", "movielens/split_1.mat", _WHOLE,
           md5="5a293088641e08981053f608cefffc11"),
]}


def get_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    return DATASETS[name]


def available_splits(name: str) -> tuple[str, ...]:
    """The splits `name` supports, default first: "per_user" for MovieLens sets (ml-100k also
    the canonical "u1".."u5", "ua", "ub"), "fixed" for the mgcnn sets."""
    return get_info(name).splits


def resolve_split(name: str, split: str | None) -> str:
    """`split`, or the dataset's default when None; DataError if the dataset lacks it."""
    splits = available_splits(name)
    if split is None:
        return splits[0]
    if split not in splits:
        raise DataError(f"dataset {name} has no split {split!r} (it has: {', '.join(splits)})")
    return split


# ----- finding, downloading and unpacking ------------------------------------------------

def candidate_paths(info: DatasetInfo, data_dir) -> list[Path]:
    """Where `info`'s file may lie under data_dir, in the order searched; a download puts it
    at the first one."""
    d, rel = Path(data_dir), Path(info.file)
    if info.kind == "movielens":
        # as unpacked, or in a folder named after the dataset (ml-10m/ratings.dat)
        paths = [d / rel, d / info.name / rel.name]
    else:
        # the upstream repository's layout; what the published scripts left behind (the
        # repository archive unpacked); a plain folder per dataset
        paths = [d / "mgcnn" / "Data" / rel, d / "mgcnn-master" / "Data" / rel, d / rel,
                 d / info.name / rel.name]
    return list(dict.fromkeys(paths))  # drop duplicates, keep the order


def ensure_dataset(name: str, data_dir, download: bool = False, *, retries: int = 3,
                   backoff_s: float = 1.0, timeout_s: float = 30.0) -> Path:
    """Path of the dataset's ratings file (MovieLens) or .mat file (mgcnn) under data_dir.

    If it is there, nothing touches the network. Otherwise, with download=True, fetch it
    (MovieLens: the zip, kept as <data_dir>/<name>.zip and unpacked beside it; mgcnn: the
    single .mat file, into <data_dir>/mgcnn/Data/...), else raise DataError naming the path
    expected and the flag to pass.
    """
    info = get_info(name)
    paths = candidate_paths(info, data_dir)
    for p in paths:
        if p.is_file():
            return p
    target = paths[0]
    if not download:
        also = f" (or {', '.join(map(str, paths[1:]))})" if len(paths) > 1 else ""
        raise DataError(
            f"{name} not found: expected {target}{also}. Pass --download to fetch it from "
            f"{info.url}, or run `python data_utils.py --dataset {name} --data_dir {data_dir} "
            f"--download` on a machine with network and copy the data over")
    data_dir = Path(data_dir)
    kw = dict(retries=retries, backoff_s=backoff_s, timeout_s=timeout_s)
    if info.kind == "mgcnn":
        return download_file(info.url, target, info.md5, **kw)

    archive = data_dir / f"{name}.zip"
    if archive.is_file():
        # Our downloads only get this name once verified; check anyway, it may have been
        # copied in by hand.
        got = file_md5(archive)
        if info.md5 and got != info.md5:
            raise DataError(f"{archive} has MD5 {got}, expected {info.md5}: it is not the right "
                            f"or a complete archive; delete it and rerun with --download")
    else:
        download_file(info.url, archive, info.md5, **kw)
    folder = Path(info.file).parts[0]
    extract_archive(archive, data_dir, folder)
    if not target.is_file():
        raise DataError(f"{archive} unpacked, but {target} is not in it")
    return target


def file_md5(path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Truncated(Exception):
    """The server closed the connection before sending all the bytes it announced."""


def download_file(url: str, dest, md5: str | None = None, *, retries: int = 3,
                  backoff_s: float = 1.0, timeout_s: float = 30.0, progress: bool = True) -> Path:
    """Download url to dest: streamed into dest + ".part", checked against md5, renamed.

    dest only ever appears complete and verified. A failed, truncated or corrupt transfer
    leaves no file behind and raises DataError; a .part left by a killed run is discarded.
    Connection errors, timeouts, truncated bodies, HTTP 5xx and 429 are tried `retries`
    times in all, waiting backoff_s, 2*backoff_s, ... in between.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    hint = "rerun with --download once the network (or the mirror) works"
    problem = None
    for attempt in range(1, retries + 1):
        part.unlink(missing_ok=True)  # left by a killed run or by the previous attempt
        again = f" (attempt {attempt}/{retries})" if attempt > 1 else ""
        print(f"downloading {url} -> {dest}{again}")
        try:
            got = _stream(url, part, timeout_s, progress)
        except requests.HTTPError as e:
            status = e.response.status_code
            if status < 500 and status != 429:  # the request itself is wrong: retrying won't help
                raise DataError(f"download of {url} failed: HTTP {status} {e.response.reason}; "
                                f"check the URL (MMF_MOVIELENS_BASE_URL and MMF_MGCNN_BASE_URL "
                                f"override the servers) and {hint}") from None
            problem = f"HTTP {status} {e.response.reason}"
        except (requests.RequestException, _Truncated) as e:  # (requests' errors are OSErrors:
                                                              # this must come first)
            problem = f"{type(e).__name__}: {e.args[0] if e.args else e}"
        except OSError as e:  # writing failed: disk full, no permission...
            raise DataError(f"cannot write {part}: {e}") from None
        else:
            if md5 is not None and got != md5:
                raise DataError(f"download of {url} has MD5 {got}, expected {md5}: corrupt or not "
                                f"the expected file; it was deleted, {hint}")
            if md5 is None:
                print(f"no checksum known for {dest.name}; its MD5 is {got}")
            move_into_place(part, dest)
            return dest
        finally:  # after any failure, Ctrl-C included, no partial file is kept
            part.unlink(missing_ok=True)
        if attempt < retries:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise DataError(f"download of {url} failed after {retries} attempts ({problem}); nothing "
                    f"was kept; {hint}")


def _stream(url: str, part: Path, timeout_s: float, progress: bool) -> str:
    """GET url into part, returning the MD5 of what arrived."""
    h, n = hashlib.md5(), 0
    # identity encoding: the body is the file itself, and Content-Length its exact size
    with requests.get(url, stream=True, timeout=timeout_s,
                      headers={"Accept-Encoding": "identity"}) as r:
        r.raise_for_status()
        total = int(r.headers["Content-Length"]) if "Content-Length" in r.headers else None
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=part.stem,
                   disable=not progress)
        with open(part, "wb") as f, bar:
            for chunk in r.iter_content(chunk_size=1 << 20):
                f.write(chunk)
                h.update(chunk)
                n += len(chunk)
                bar.update(len(chunk))
    if total is not None and n != total:
        raise _Truncated(f"received {n} of {total} bytes")
    return h.hexdigest()


def extract_archive(archive, data_dir, folder: str) -> Path:
    """Unpack `folder`/ from the zip `archive` to data_dir/folder.

    It is unpacked into a temporary folder beside the target and then renamed into place,
    so data_dir/folder never exists half-written."""
    data_dir, dest = Path(data_dir), Path(data_dir) / folder
    if dest.exists():
        raise DataError(f"{dest} exists but lacks the expected files, so it is an incomplete "
                        f"copy: delete it and rerun with --download")
    print(f"unpacking {archive} -> {dest}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}-", suffix=".tmp", dir=data_dir))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)  # (extractall strips ".." and absolute paths from names)
        except (zipfile.BadZipFile, EOFError) as e:
            raise DataError(f"{archive} is not a valid zip archive ({e}); delete it and rerun "
                            f"with --download") from None
        if not (tmp / folder).is_dir():
            raise DataError(f"{archive} has no folder {folder}/ inside; delete it and rerun "
                            f"with --download")
        move_into_place(tmp / folder, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def move_into_place(src, dst, *, attempts: int = 5, delay_s: float = 0.5) -> None:
    """os.replace(src, dst) (atomic), retried briefly on PermissionError.

    On Windows a file or folder just written is often held open for a moment by a sync
    client or a virus scanner, and the rename fails with [WinError 32]; it usually clears
    within a second or two."""
    for attempt in range(1, attempts + 1):
        try:
            os.replace(src, dst)
            return
        except PermissionError as e:
            err = e
            if attempt < attempts:
                time.sleep(delay_s)
    raise DataError(
        f"could not move {src} to {dst} ({attempts} tries): {err}. On Windows this is "
        f"[WinError 32]: another process holds a handle on the new files, most often a sync "
        f"client (OneDrive, Dropbox, Google Drive) or a virus scanner inspecting them. Pause "
        f"the sync or exclude the folder from scanning, or use a --data_dir outside synced "
        f"folders (e.g. C:\\data_rec), close programs that have it open, and rerun")


# ----- parsing ---------------------------------------------------------------------------

def read_ratings(path, sep: str, header: bool = False, scale=None):
    """Parse a MovieLens ratings file, one `user sep item sep rating sep timestamp` per line.

    Returns raw user ids (int64), raw item ids (int64), ratings (float64). Fast path:
    pandas' C parser over the whole file (ml-25m has 25 million lines). Only when that fails
    or finds a bad value does a slow pass over the lines run, to name the first bad one:
    DataError("<path>, line N: ..."). `scale` = (min, max, step) every rating must sit on.
    """
    path = Path(path)
    try:
        if len(sep) == 1:
            src = path
        else:
            # pandas' C parser takes one-character separators only (longer ones need its
            # Python engine, ~20x slower); swapping "::" for a tab on the raw bytes is cheap
            src = io.BytesIO(path.read_bytes().replace(sep.encode(), b"\t"))
        df = pd.read_csv(src, sep=sep if len(sep) == 1 else "\t", header=None,
                         skiprows=1 if header else 0, engine="c",
                         dtype={0: np.int64, 1: np.int64, 2: np.float64, 3: np.int64})
    except (ValueError, pd.errors.ParserError) as e:  # bad field count, non-numbers, empty
        _raise_bad_line(path, sep, header, scale, reason=str(e).strip())
    if df.shape[1] != 4:  # every line has the same wrong number of fields
        _raise_bad_line(path, sep, header, scale, reason=f"{df.shape[1]} fields per line")
    ratings = df[2].to_numpy()
    off = np.flatnonzero(off_scale(ratings, scale))
    if len(off):
        _raise_bad_line(path, sep, header, scale, reason="rating off the scale", bad_row=off[0])
    if len(ratings) == 0:
        raise DataError(f"{path}: no ratings in it")
    return df[0].to_numpy(), df[1].to_numpy(), ratings


def off_scale(r: np.ndarray, scale) -> np.ndarray:
    """True where a rating is not one of min, min+step, ..., max (or not finite)."""
    if scale is None:
        return ~np.isfinite(r)
    lo, hi, step = scale
    k = (r - lo) / step
    return ~((r >= lo) & (r <= hi) & (np.abs(k - np.rint(k)) < 1e-6))


def _scale_str(scale) -> str:
    return f"{scale[0]:g}..{scale[1]:g} in steps of {scale[2]:g}"


def _raise_bad_line(path: Path, sep: str, header: bool, scale, reason: str, bad_row=None):
    """Slow pass, run only once the fast parse has failed: raise DataError naming the first
    bad line. bad_row: index (among data lines) of a row the fast parse already found bad."""
    row = -1
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if (header and lineno == 1) or not line.strip():  # pandas skips blank lines too
                continue
            row += 1
            fields = line.split(sep)
            if len(fields) != 4:
                problem = f"expected 4 fields (user, item, rating, timestamp) separated by " \
                          f"{sep!r}, found {len(fields)}"
            elif row == bad_row:
                problem = f"rating {fields[2].strip()} is off the scale {_scale_str(scale)}"
            else:
                try:
                    int(fields[0]), int(fields[1]), float(fields[2]), int(fields[3])
                    continue
                except ValueError:
                    problem = "non-numeric field (user, item and timestamp must be integers)"
            raise DataError(f"{path}, line {lineno}: {problem}: {line[:100]!r}")
    if row < 0:
        raise DataError(f"{path}: no ratings in it")
    raise DataError(f"{path}: cannot be read as ratings ({reason})")


def dense_ids(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-index raw ids as 0..n-1 in increasing raw-id order.

    Returns (index of each entry, raw id of each index)."""
    lo, hi = int(raw.min()), int(raw.max())
    if hi - lo < 4 * len(raw) + 1_000_000:
        # Compact ids (MovieLens: under 300k distinct): a lookup table is O(n), 0.2 s on
        # ml-25m where np.unique's sort takes 9 s.
        present = np.zeros(hi - lo + 1, dtype=bool)
        present[raw - lo] = True
        return (np.cumsum(present) - 1)[raw - lo], np.flatnonzero(present) + lo
    uniq, idx = np.unique(raw, return_inverse=True)
    return idx.astype(np.int64), uniq


def _mat_array(f: h5py.File, key: str, path: Path) -> np.ndarray:
    """One matrix of a MATLAB v7.3 file, as MATLAB sees it (rows x columns)."""
    if key not in f:
        raise DataError(f"{path}: no variable {key!r} in it (it has: {', '.join(f.keys())})")
    obj = f[key]
    if isinstance(obj, h5py.Group):  # sparse: MATLAB's own CSC arrays, already MATLAB-oriented
        jc, ir = obj["jc"][()], obj["ir"][()]
        data = obj["data"][()] if "data" in obj else np.ones(len(ir))
        shape = (int(obj.attrs["MATLAB_sparse"]), len(jc) - 1)
        return scipy.sparse.csc_matrix((data, ir, jc), shape=shape).toarray()
    # dense: MATLAB writes column-major, so h5py (row-major) sees the transpose
    return obj[()].T


def read_mgcnn(path, scale=None):
    """Read one of Monti et al.'s .mat files: ratings M (users x items), 0/1 masks Otraining
    and Otest. Keeps the nonzero ratings under each mask.

    Returns (users, items, ratings, is_test, n_users, n_items): int64, int64, float64, bool
    arrays with one entry per rating, train ratings first."""
    path = Path(path)
    if not h5py.is_hdf5(path):
        raise DataError(f"{path} is not a MATLAB v7.3 (HDF5) file; delete it and rerun with "
                        f"--download")
    with h5py.File(path, "r") as f:
        M, O_train, O_test = (_mat_array(f, k, path) for k in ("M", "Otraining", "Otest"))
    if not M.shape == O_train.shape == O_test.shape:
        raise DataError(f"{path}: M {M.shape}, Otraining {O_train.shape} and Otest "
                        f"{O_test.shape} differ in shape")
    train, test = (M != 0) & (O_train != 0), (M != 0) & (O_test != 0)
    if (train & test).any():
        raise DataError(f"{path}: {int((train & test).sum())} ratings are in both Otraining "
                        f"and Otest")
    (u_tr, i_tr), (u_te, i_te) = np.nonzero(train), np.nonzero(test)
    users, items = np.concatenate([u_tr, u_te]), np.concatenate([i_tr, i_te])
    ratings = M[users, items]
    off = np.flatnonzero(off_scale(ratings, scale))
    if len(off):
        k = off[0]
        raise DataError(f"{path}: rating {ratings[k]:g} at M[{users[k]}, {items[k]}] (0-based) "
                        f"is off the scale {_scale_str(scale)}")
    is_test = np.concatenate([np.zeros(len(u_tr), bool), np.ones(len(u_te), bool)])
    return users.astype(np.int64), items.astype(np.int64), ratings, is_test, M.shape[0], M.shape[1]


# ----- the loaded dataset ----------------------------------------------------------------

@dataclass
class Triples:
    """(user, item, rating) triples: int64 user index, int64 item index, float32 rating."""
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray

    def __len__(self) -> int:
        return len(self.ratings)

    def subset(self, idx: np.ndarray) -> "Triples":
        return Triples(self.users[idx], self.items[idx], self.ratings[idx])


@dataclass
class RatingData:
    """A whole dataset, ids re-indexed densely (users 0..n_users-1, items 0..n_items-1)."""
    name: str
    path: Path                # the file it was read from
    users: np.ndarray         # int64, one entry per rating
    items: np.ndarray         # int64
    ratings: np.ndarray       # float32
    n_users: int              # mgcnn sets: the matrix size (3000 x 3000), even for users or
    n_items: int              #   items without a rating; MovieLens: those with one
    rating_min: float         # smallest and largest rating present
    rating_max: float
    raw_user_ids: np.ndarray  # raw id of each user index (the file's ids; mgcnn: row numbers)
    raw_item_ids: np.ndarray
    fixed_test: np.ndarray | None = None  # bool per rating, True = test in the dataset's own
                                          # fixed split (mgcnn sets); None: no fixed split

    @property
    def n_ratings(self) -> int:
        return len(self.ratings)

    @property
    def density(self) -> float:
        return self.n_ratings / (self.n_users * self.n_items)

    def triples(self, idx: np.ndarray) -> Triples:
        return Triples(self.users[idx], self.items[idx], self.ratings[idx])


def load_dataset(name: str, data_dir, download: bool = False) -> RatingData:
    """Load a dataset (see DATASETS) from data_dir, downloading it first if download=True and
    it is missing. Raises DataError if it is missing, corrupt or has bad lines."""
    info = get_info(name)
    path = ensure_dataset(name, data_dir, download)
    fixed_test = None
    if info.kind == "mgcnn":
        users, items, ratings, fixed_test, n_users, n_items = read_mgcnn(path, info.scale)
        raw_users, raw_items = np.arange(n_users), np.arange(n_items)
        if len(ratings) == 0:
            raise DataError(f"{path}: no ratings in it")
    else:
        raw_u, raw_i, ratings = read_ratings(path, info.sep, info.header, info.scale)
        users, raw_users = dense_ids(raw_u)
        items, raw_items = dense_ids(raw_i)
        n_users, n_items = len(raw_users), len(raw_items)
    return RatingData(name, path, users, items, ratings.astype(np.float32), n_users, n_items,
                      float(ratings.min()), float(ratings.max()), raw_users, raw_items, fixed_test)


# ----- splits (spec section 3) -----------------------------------------------------------

@dataclass
class Split:
    """What the completion experiment trains and evaluates on. train / val / test never share
    a rating; val is empty only when val_ratio is 0."""
    dataset: str
    split: str               # "per_user", "fixed", or an ml-100k canonical split "u1".."ub"
    seed: int
    train: Triples
    val: Triples
    test: Triples
    n_users: int
    n_items: int
    rating_min: float        # of the whole dataset: the default clamp range for predictions
    rating_max: float


def per_user_split(users: np.ndarray, test_ratio: float, val_ratio: float,
                   rng: np.random.Generator):
    """Spec section 3: shuffle each user's ratings; a user with n < 3 ratings goes wholly to
    train; otherwise n_test = max(1, round(n*test_ratio)), n_val = max(1, round(n*val_ratio))
    (0 when val_ratio is 0), and both are 1 if n_test + n_val >= n.

    Returns sorted index arrays (train, val, test) into `users`. Vectorised: one sort by
    (user, random key) instead of a loop over users (ml-20m has 138k users)."""
    n = len(users)
    # Sort by user, ties broken by a random permutation: each user's ratings end up
    # contiguous and in random order. The keys are distinct, so the order depends on the
    # seed alone, not on the sort algorithm.
    order = np.argsort(users.astype(np.int64) * n + rng.permutation(n))
    grouped = users[order]
    counts = np.bincount(users)
    rank = np.arange(n) - (np.cumsum(counts) - counts)[grouped]  # 0.. within each user
    cnt = counts.astype(np.float64)
    # np.rint rounds half to even, as Python's round() does in the published scripts
    n_test = np.maximum(1, np.rint(cnt * test_ratio))
    n_val = np.maximum(1, np.rint(cnt * val_ratio)) if val_ratio > 0 else np.zeros_like(cnt)
    crowded = n_test + n_val >= cnt
    n_test[crowded], n_val[crowded] = 1, (1 if val_ratio > 0 else 0)
    n_test[cnt < 3], n_val[cnt < 3] = 0, 0
    t, v = n_test[grouped], n_val[grouped]
    return (np.sort(order[rank >= t + v]), np.sort(order[(rank >= t) & (rank < t + v)]),
            np.sort(order[rank < t]))


def carve_validation(idx: np.ndarray, val_ratio: float, rng: np.random.Generator):
    """Split index array idx into (train, val): a random val_ratio share, at least 1, goes to
    val (none when val_ratio is 0). Both returned sorted."""
    if val_ratio <= 0:
        return np.sort(idx), idx[:0]
    n_val = max(1, round(len(idx) * val_ratio))
    if n_val >= len(idx):
        raise DataError(f"val_ratio {val_ratio} leaves no training ratings out of {len(idx)}")
    perm = rng.permutation(len(idx))
    return np.sort(idx[perm[n_val:]]), np.sort(idx[perm[:n_val]])


def _read_canonical(data: RatingData, file: str) -> Triples:
    """One file of an ml-100k canonical split (u1.base, ...), in the dataset's indexing."""
    path = data.path.parent / file
    if not path.is_file():
        raise DataError(f"{path} not found: the ml-100k canonical splits come with the archive; "
                        f"delete {data.path.parent} and rerun with --download")
    info = get_info(data.name)
    raw_u, raw_i, ratings = read_ratings(path, info.sep, info.header, info.scale)
    idx = []
    for raw, known, what in ((raw_u, data.raw_user_ids, "user"),
                             (raw_i, data.raw_item_ids, "item")):
        pos = np.minimum(np.searchsorted(known, raw), len(known) - 1)
        unknown = np.flatnonzero(known[pos] != raw)
        if len(unknown):
            raise DataError(f"{path}: {what} id {raw[unknown[0]]} is not in {data.path.name}")
        idx.append(pos)
    return Triples(idx[0], idx[1], ratings.astype(np.float32))


def load_split(name: str, data_dir, split: str | None = None, seed: int = 0,
               val_ratio: float = 0.05, test_ratio: float = 0.1,
               download: bool = False) -> Split:
    """Load dataset `name` from data_dir and split it into train / val / test.

    split: None (the dataset's default, see available_splits), or
      "per_user"  MovieLens sets: per-user random split (per_user_split), test_ratio and
                  val_ratio of each user's ratings;
      "fixed"     mgcnn sets (douban, flixster, yahoo_music, ml-100k-mgcnn): their own
                  train/test; val = a random val_ratio share of train (test_ratio unused);
      "u1".."u5", "ua", "ub"  ml-100k: the canonical <split>.base / <split>.test files; val
                  = a random val_ratio share of the base file (test_ratio unused).
    Deterministic for a seed (numpy default_rng(seed)). val_ratio = 0 gives an empty val.
    Triples hold int64 user / item indices (0..n_users-1, 0..n_items-1) and float32 ratings.
    """
    split = resolve_split(name, split)
    if not (0 <= val_ratio < 1 and 0 < test_ratio < 1 and val_ratio + test_ratio < 1):
        raise DataError(f"need 0 <= val_ratio < 1, 0 < test_ratio < 1 and val_ratio + "
                        f"test_ratio < 1, got val_ratio {val_ratio}, test_ratio {test_ratio}")
    data = load_dataset(name, data_dir, download)
    rng = np.random.default_rng(seed)
    if split == "per_user":
        train, val, test = (data.triples(ix) for ix in
                            per_user_split(data.users, test_ratio, val_ratio, rng))
    elif split == "fixed":
        tr, va = carve_validation(np.flatnonzero(~data.fixed_test), val_ratio, rng)
        test = data.triples(np.flatnonzero(data.fixed_test))
        train, val = data.triples(tr), data.triples(va)
    else:
        base, test = _read_canonical(data, f"{split}.base"), _read_canonical(data, f"{split}.test")
        n = data.n_items
        if np.intersect1d(base.users * n + base.items, test.users * n + test.items).size:
            raise DataError(f"{split}.base and {split}.test share ratings: corrupt files")
        tr, va = carve_validation(np.arange(len(base)), val_ratio, rng)
        train, val = base.subset(tr), base.subset(va)
    return Split(name, split, seed, train, val, test, data.n_users, data.n_items,
                 data.rating_min, data.rating_max)


# ----- command line: fetch ahead of time, print statistics -------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Fetch a rating dataset ahead of time (on a machine with network) and "
                    "print its statistics.")
    p.add_argument("--dataset", required=True, help=", ".join(DATASETS))
    p.add_argument("--data_dir", default="./data_rec")
    p.add_argument("--download", action="store_true", help="fetch the dataset if it is missing")
    args = p.parse_args(argv)
    try:
        data = load_dataset(args.dataset, args.data_dir, args.download)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    values, counts = np.unique(data.ratings, return_counts=True)
    print(f"{data.name}: {data.path}")
    print(f"  users    {data.n_users:,}")
    print(f"  items    {data.n_items:,}")
    print(f"  ratings  {data.n_ratings:,}")
    print(f"  density  {100 * data.density:.4f}%")
    print(f"  values   " + "  ".join(f"{v:g}: {c:,}" for v, c in zip(values, counts)))
    if data.fixed_test is not None:
        n_test = int(data.fixed_test.sum())
        print(f"  fixed split: train {data.n_ratings - n_test:,}, test {n_test:,}")
    print(f"  splits   {', '.join(available_splits(data.name))} (first is the default)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
