"""Data for the MMF experiments: synthetic matrices and real rating datasets.

Synthetic generators (reconstruction, expressivity, identifiability) live in the first
section; dataset download / parsing / splitting (completion) in the second.

Fetch a dataset ahead of time (on a machine with network) and print its statistics:

    python data_utils.py --dataset ml-100k --data_dir data_rec --download
"""
from __future__ import annotations

import numpy as np
import torch


class DataError(ValueError):
    """Bad or missing data. Entrypoints print it as one line and exit non-zero."""


# ----------------------------------------------------------------------------------------
# Synthetic matrices (spec section 2)
# ----------------------------------------------------------------------------------------
# Generated with numpy's PCG64 in float64 and returned as float32 torch tensors on the CPU,
# so the same seed gives the same matrix on every machine and device.

def _unit_fro(X: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(X)
    if n == 0:
        raise DataError("synthetic matrix is all zeros; cannot normalize to unit Frobenius norm")
    return X / n


def block_sizes(total: int, num_blocks: int) -> list[int]:
    """Sizes as even as possible; the first `total % num_blocks` blocks are one larger."""
    base, extra = divmod(total, num_blocks)
    return [base + (1 if b < extra else 0) for b in range(num_blocks)]


def make_random(I: int, J: int, seed: int, dist: str = "normal") -> np.ndarray:
    """Dense I x J matrix, N(0,1) or uniform[-1,1], unit Frobenius norm (float64)."""
    rng = np.random.default_rng(seed)
    if dist == "normal":
        X = rng.standard_normal((I, J))
    elif dist == "uniform":
        X = rng.uniform(-1.0, 1.0, size=(I, J))
    else:
        raise DataError(f"unknown --dist {dist!r} (choose normal or uniform)")
    return _unit_fro(X)


def make_blockdiag(I: int, J: int, seed: int, num_blocks: int = 6, block_scale: float = 1.0,
                   offblock_noise_scale: float = 0.01, dist: str = "normal") -> np.ndarray:
    """Block-diagonal I x J matrix (float64, unit Frobenius norm).

    Off-block entries are N(0, offblock_noise_scale^2); each of the `num_blocks` diagonal
    blocks holds block_scale * N(0,1) (or uniform[-1,1] with dist="uniform"). Block sizes
    along each axis follow `block_sizes`.
    """
    if num_blocks < 1 or num_blocks > min(I, J):
        raise DataError(f"--num_blocks must be between 1 and min(I, J) = {min(I, J)}, got {num_blocks}")
    rng = np.random.default_rng(seed)
    X = offblock_noise_scale * rng.standard_normal((I, J))
    r0 = c0 = 0
    for bi, bj in zip(block_sizes(I, num_blocks), block_sizes(J, num_blocks)):
        if dist == "normal":
            blk = rng.standard_normal((bi, bj))
        elif dist == "uniform":
            blk = rng.uniform(-1.0, 1.0, size=(bi, bj))
        else:
            raise DataError(f"unknown --dist {dist!r} (choose normal or uniform)")
        X[r0:r0 + bi, c0:c0 + bj] = block_scale * blk
        r0 += bi
        c0 += bj
    return _unit_fro(X)


def make_nonneg(X: np.ndarray) -> np.ndarray:
    """--data_nonneg: subtract the minimum, clamp at 0, renormalize to unit Frobenius norm."""
    return _unit_fro(np.clip(X - X.min(), 0.0, None))


def make_synthetic(data_mode: str, I: int, J: int, seed: int, *, dist: str = "normal",
                   num_blocks: int = 6, block_scale: float = 1.0,
                   offblock_noise_scale: float = 0.01, nonneg: bool = False) -> torch.Tensor:
    """The reconstruction target as a float32 CPU tensor of unit Frobenius norm."""
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
    return torch.from_numpy(X.astype(np.float32))


# ----------------------------------------------------------------------------------------
# Real rating datasets (spec sections 3 and 4)
# ----------------------------------------------------------------------------------------
# (dataset registry, download, parsing, splits: see below)
