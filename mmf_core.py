"""Masked Mixture Factorization (MMF): every model, mask family, budget rule, metric and
the full-matrix training loop of this project, in one file.

MMF approximates an I x J matrix with base factors A (I x Rb), B (J x Rb) whose latent
dimensions are gated, per row and column, by K smooth masks:

    X_hat[i, j] = s^2 * sum_k sum_r A[i,r] MA[i,k,r] B[j,r] MB[j,k,r]
    MA[i,k,r]   = gA(w_k * p_r - h * UA[i,k])      (reconstruction form, "outer" shift)
    MA[i,k,r]   = gA(w_k * (p_r - h * UA[i,k]))    (completion form, "inner" shift)

with w_k = linspace(1/K, 1, K), p_r = r, h = Rb/2, s = 1/K. Stacking the K masked copies
A (.) MA_k side by side gives A_cat (I x K*Rb), so X_hat = s^2 A_cat B_cat^T can reach rank
K*Rb while storing (I+J)(Rb+K) numbers: the same budget as rank-R MF when Rb = R - K.

Used by main_reconstruction.py, main_completion.py, vis_expressivity.py and
vis_identifiability.py; nothing here parses command lines except the shared helpers
(`add_device_args`, `parse_*_list`, `run_cli`).

    >>> X = torch.randn(64, 64)
    >>> model = MMF(64, 64, Rb=4, K=4)
    >>> result = fit_full(model, X, make_adam(model, 2e-2, 1e-2), epochs=200)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn


class ConfigError(ValueError):
    """A bad flag or flag combination. Entrypoints print it as one line and exit 2."""


# ----------------------------------------------------------------------------------------
# Mask families: one registry, one meaning per name
# ----------------------------------------------------------------------------------------
# The published scripts used the name "gaussian" for three different functions. Here each
# function has its own name; "gaussian" keeps the meaning the published commands relied on
# (reconstruction and identifiability), the completion and expressivity variants are
# "gaussian_pos" and "gaussian_unit". README.md has the full mapping.
_SQRT_2PI = 2.507  # the published completion script's rounding of sqrt(2*pi)
_PI = math.pi

# Each entry: (g(d), g'(d) given d and g(d)). The derivative is written out so the MMF
# backward pass is a handful of whole-tensor operations instead of autograd's chain of
# small ones (see MaskedFactor); tests check every g' against autograd.
def _gauss(d: torch.Tensor, amp: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    """offset + amp * exp(-d^2/2).

    The exponent is clamped at -80 (exp(-80) ~ 2e-35, a normal float32): float32 exp is
    several times slower on arguments that underflow, and the masks' far tails produce them
    in bulk; the values change by less than 1e-34. Without autograd recording (inside
    MaskedFactor) the chain runs in place, sparing three allocations of the mask tensor.
    """
    e = d.square()
    if torch.is_grad_enabled() and d.requires_grad:
        return offset + amp * torch.exp(torch.clamp(e * -0.5, min=-80.0))
    e.mul_(-0.5).clamp_(min=-80.0).exp_()
    if amp != 1.0:
        e.mul_(amp)
    return e.add_(offset) if offset else e


MASKS: dict[str, tuple[Callable, Callable]] = {
    "gaussian": (lambda d: _gauss(d, 4.0), lambda d, g: -d * g),
    "gaussian_pos": (lambda d: _gauss(d, 1.0 / _SQRT_2PI, 0.5), lambda d, g: -d * (g - 0.5)),
    "gaussian_unit": (_gauss, lambda d, g: -d * g),
    "sin": (torch.sin, lambda d, g: torch.cos(d)),
    "cos": (torch.cos, lambda d, g: -torch.sin(d)),
    "sigmoid": (torch.sigmoid, lambda d, g: g * (1.0 - g)),
    "sigmoid2": (lambda d: 2.0 * torch.sigmoid(d), lambda d, g: g * (1.0 - 0.5 * g)),
    "tanh": (torch.tanh, lambda d, g: 1.0 - g * g),
    "triangle": (lambda d: 4.0 * torch.clamp(1.0 - d.abs(), min=0.0),
                 lambda d, g: -4.0 * torch.sign(d) * (d.abs() < 1.0)),
    "linear": (lambda d: d, lambda d, g: torch.ones_like(d)),
    # torch.sinc(x) = sin(pi x)/(pi x), so this is 4 sin(d)/d (4 at d = 0)
    "sinc": (lambda d: 4.0 * torch.sinc(d / _PI),
             lambda d, g: torch.where(d == 0, torch.zeros_like(d),
                                      (4.0 * torch.cos(d) - g) / torch.where(d == 0, torch.ones_like(d), d))),
    "square": (lambda d: torch.tanh(torch.sin(d) / 0.1) + 0.5,
               lambda d, g: (1.0 - (g - 0.5) ** 2) * torch.cos(d) / 0.1),
    "cauchy": (lambda d: 1.0 / (1.0 + (4.0 * d) ** 2), lambda d, g: -32.0 * d * g * g),
    "sin01": (lambda d: 0.5 * (torch.sin(d) + 1.0), lambda d, g: 0.5 * torch.cos(d)),
    "cos01": (lambda d: 0.5 * (torch.cos(d) + 1.0), lambda d, g: -0.5 * torch.sin(d)),
    "linear01": (lambda d: torch.clamp(d + 0.5, 0.0, 1.0),
                 lambda d, g: ((d > -0.5) & (d < 0.5)).to(d.dtype)),
    "psin": (lambda d: (torch.sin(_PI * d) + 2.5) / 5.0, lambda d, g: _PI * torch.cos(_PI * d) / 5.0),
    "pcos": (lambda d: (torch.cos(_PI * d) + 2.5) / 5.0, lambda d, g: -_PI * torch.sin(_PI * d) / 5.0),
    "tri": (lambda d: 1.0 - 2.0 * torch.abs(torch.remainder(d + 1.0, 2.0) - 1.0),
            lambda d, g: -2.0 * torch.sign(torch.remainder(d + 1.0, 2.0) - 1.0)),
}

# Masks whose derivative is -d * (g - offset): MaskedFactor's backward reuses grad*g for them.
_GAUSS_OFFSET = {"gaussian": 0.0, "gaussian_pos": 0.5, "gaussian_unit": 0.0}

MASK_FORMULAS = {  # for --help texts and the README table
    "gaussian": "4*exp(-d^2/2)", "gaussian_pos": "0.5 + exp(-d^2/2)/2.507",
    "gaussian_unit": "exp(-d^2/2)", "sin": "sin(d)", "cos": "cos(d)", "sigmoid": "sigmoid(d)",
    "sigmoid2": "2*sigmoid(d)", "tanh": "tanh(d)", "triangle": "4*max(0, 1-|d|)",
    "linear": "d", "sinc": "4*sin(d)/d", "square": "tanh(sin(d)/0.1) + 0.5",
    "cauchy": "1/(1+(4d)^2)", "sin01": "(sin(d)+1)/2", "cos01": "(cos(d)+1)/2",
    "linear01": "clamp(d+0.5, 0, 1)", "psin": "(sin(pi d)+2.5)/5", "pcos": "(cos(pi d)+2.5)/5",
    "tri": "1 - 2|((d+1) mod 2) - 1|",
}


def get_mask(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The mask function g registered under `name`."""
    return get_mask_pair(name)[0]


def get_mask_pair(name: str) -> tuple[Callable, Callable]:
    """(g, g') registered under `name`; g'(d, g(d)) is the derivative."""
    if name not in MASKS:
        raise ConfigError(f"unknown mask {name!r}; choose one of: {', '.join(MASKS)}")
    return MASKS[name]


# ----------------------------------------------------------------------------------------
# Budget matching (spec section 1)
# ----------------------------------------------------------------------------------------

def k_from_ratio(R: int, K_ratio: float) -> int:
    """K = round(K_ratio * R), clipped to 1 <= K <= R - 1 (an error when R < 2)."""
    if R < 2:
        raise ConfigError(f"R={R} leaves no base rank for MMF (need R >= 2 so that Rb = R - K >= 1)")
    return int(min(max(round(K_ratio * R), 1), R - 1))


def base_rank(R: int, K: int) -> int:
    """Rb = R - K, the MMF base rank at the budget of rank-R MF. An explicit K must leave Rb >= 1."""
    if K < 1:
        raise ConfigError(f"K must be >= 1, got K={K}")
    if R - K < 1:
        raise ConfigError(f"K={K} with R={R} leaves base rank Rb = R - K = {R - K} < 1; "
                          f"choose K <= R - 1 or use --K_ratio")
    return R - K


def mf_budget(I: int, J: int, R: int) -> int:
    return (I + J) * R


def bias_mf_rank(I: int, J: int, R: int, bonus: int = 0) -> int:
    """Rank of bias MF (A B^T + a 1^T + 1 b^T + mu) within (I+J)*R numbers, plus an optional bonus."""
    r = ((I + J) * R - (I + J + 1)) // (I + J) + bonus
    if r < 1:
        raise ConfigError(f"R={R} is too small for mf_bias (its rank would be {r}); "
                          f"raise R or --bias_rank_bonus")
    return r


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------

def mse(X_hat: torch.Tensor, X: torch.Tensor) -> float:
    return float(torch.mean((X_hat.double() - X.double()) ** 2))


def rel_fro(X_hat: torch.Tensor, X: torch.Tensor) -> float:
    """||X_hat - X||_F / ||X||_F."""
    X = X.double()
    return float(torch.linalg.norm(X_hat.double() - X) / torch.linalg.norm(X))


# ----------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------
# Every model draws its initial values from a CPU torch.Generator it is given, then moves to
# the target device, so a (seed, setting) pair gives the same start on any device and no
# matter how many other settings ran before it in the same process.

def _normal(shape, std: float, gen: torch.Generator | None) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * std


class MaskedFactor(torch.autograd.Function):
    """F_cat[n, k, r] = s * F[n, r] * g(wp[k, r] - c[k] * U[n, k]), with a hand-written backward.

    This is the elementwise part of the MMF step (masks times base factors). Autograd would
    record about a dozen small operations per side and replay them backwards; here the
    forward is a few in-place whole-tensor operations and the backward two or three
    multiplications and two sums, so the step stays dominated by the three big matmuls
    (forward and the two gradient products). c[k] is h (reconstruction form, shift outside
    w_k) or h * w_k (completion form). `mask` is a name in MASKS.
    """

    @staticmethod
    def forward(ctx, F, U, wp, c, s, mask):
        g, dg = MASKS[mask]
        D = wp[None] - (U * c)[:, :, None]            # (n, K, Rb) mask arguments
        G = g(D)
        ctx.save_for_backward(F, D, G, c)
        ctx.s, ctx.mask = s, mask
        return G * (s * F)[:, None, :]

    @staticmethod
    def backward(ctx, grad_out):
        F, D, G, c = ctx.saved_tensors
        s, mask = ctx.s, ctx.mask
        dF = dU = None
        T = grad_out * G
        if ctx.needs_input_grad[0]:
            dF = T.sum(1).mul_(s)                          # sum over the K masks
        if ctx.needs_input_grad[1]:
            # d out[n,k,r] / d U[n,k] = -c_k * s * F[n,r] * g'(D[n,k,r]); summed over r.
            if mask in _GAUSS_OFFSET:                      # g' = -D (g - offset): reuse T
                off = _GAUSS_OFFSET[mask]
                P = T if off == 0.0 else T - off * grad_out
                # -c s sum_r F g' grad = c s sum_r F D (g - off) grad
                # (T.sum above made a new tensor, so T may be overwritten here)
                dU = P.mul_(D).mul_(F[:, None, :]).sum(-1).mul_(s * c)
            else:
                gd = grad_out * MASKS[mask][1](D, G)
                dU = (gd.mul_(F[:, None, :])).sum(-1).mul_(-s * c)
        return dF, dU, None, None, None, None


class OuterProduct(torch.autograd.Function):
    """P @ Q^T with gradients G @ Q and G^T @ P, each one contiguous matmul.

    Autograd's own backward of P @ Q.T forms the second gradient as P^T @ G and returns its
    transpose, a strided view; every elementwise pass over it downstream (the MMF masks'
    backward) is then slower. Here both gradient products come out row-major.
    """

    @staticmethod
    def forward(ctx, P, Q):
        ctx.save_for_backward(P, Q)
        return P @ Q.T

    @staticmethod
    def backward(ctx, G):
        P, Q = ctx.saved_tensors
        dP = G @ Q if ctx.needs_input_grad[0] else None
        dQ = G.T @ P if ctx.needs_input_grad[1] else None
        return dP, dQ


class MMF(nn.Module):
    """Masked Mixture Factorization.

    Rb: base rank; K: number of masks; mask_A/mask_B: names in MASKS; scale: s (default 1/K).
    shift_placement: "outer" (reconstruction form, d = w_k p_r - h u) or "inner" (completion
    form, d = w_k (p_r - h u)). shifts: "learned" (trainable, start at shift_init or 0),
    "fixed" (the given shift_init, not trained) or "zero" (no shifts at all: the masks then
    reduce to one fixed weight per latent dimension, which is no more expressive than MF).
    """

    def __init__(self, I: int, J: int, Rb: int, K: int, mask_A: str = "gaussian",
                 mask_B: str = "gaussian", scale: float | None = None,
                 shift_placement: str = "outer", shifts: str = "learned",
                 shift_init: tuple[torch.Tensor, torch.Tensor] | None = None,
                 init_std: float = 0.02, gen: torch.Generator | None = None):
        super().__init__()
        if Rb < 1 or K < 1:
            raise ConfigError(f"MMF needs Rb >= 1 and K >= 1, got Rb={Rb}, K={K}")
        if shift_placement not in ("outer", "inner"):
            raise ConfigError(f"unknown shift_placement {shift_placement!r}")
        if shifts not in ("learned", "fixed", "zero"):
            raise ConfigError(f"unknown shift mode {shifts!r}")
        self.I, self.J, self.Rb, self.K = I, J, Rb, K
        self.gA, self.gB = get_mask(mask_A), get_mask(mask_B)
        self.mask_names = (mask_A, mask_B)
        self.scale = 1.0 / K if scale is None or scale < 0 else float(scale)
        self.shift_placement, self.shift_mode = shift_placement, shifts
        self.h = Rb / 2.0
        self.A = nn.Parameter(_normal((I, Rb), init_std, gen))
        self.B = nn.Parameter(_normal((J, Rb), init_std, gen))
        # omega_k and p_r as buffers so they follow .to(device)
        self.register_buffer("omega", torch.linspace(1.0 / K, 1.0, K), persistent=False)
        self.register_buffer("p", torch.arange(Rb, dtype=torch.float32), persistent=False)
        UA0, UB0 = shift_init if shift_init is not None else (torch.zeros(I, K), torch.zeros(J, K))
        if shifts == "learned":
            self.UA, self.UB = nn.Parameter(UA0.clone()), nn.Parameter(UB0.clone())
        elif shifts == "fixed":
            self.register_buffer("UA", UA0.clone())
            self.register_buffer("UB", UB0.clone())
        else:
            self.UA = self.UB = None

    # --- masks -------------------------------------------------------------------------
    def _d(self, U: torch.Tensor | None) -> torch.Tensor:
        """Mask arguments d, shape (n, K, Rb) for n rows of shifts U (n x K); (1, K, Rb) if U is None."""
        wp = self.omega[:, None] * self.p[None, :]                       # K x Rb
        if U is None:
            return wp[None]
        if self.shift_placement == "outer":
            return wp[None] - self.h * U[:, :, None]
        return self.omega[None, :, None] * (self.p[None, None, :] - self.h * U[:, :, None])

    def masks_A(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """s * gA(d) for the given rows of A (all rows if None): (n, K, Rb), or (1, K, Rb) without shifts."""
        U = self.UA if (self.UA is None or rows is None) else self.UA[rows]
        return self.scale * self.gA(self._d(U))

    def masks_B(self, cols: torch.Tensor | None = None) -> torch.Tensor:
        U = self.UB if (self.UB is None or cols is None) else self.UB[cols]
        return self.scale * self.gB(self._d(U))

    # --- forwards ----------------------------------------------------------------------
    def factors_cat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A_cat (I x K*Rb) and B_cat (J x K*Rb), each carrying one factor s of s^2."""
        if self.UA is None:
            # no shifts: one fixed (K, Rb) mask shared by all rows; autograd is cheap here
            A_cat = self.A[:, None, :] * self.masks_A()
            B_cat = self.B[:, None, :] * self.masks_B()
        else:
            wp = self.omega[:, None] * self.p[None, :]
            c = self.h * (self.omega if self.shift_placement == "inner" else torch.ones_like(self.omega))
            A_cat = MaskedFactor.apply(self.A, self.UA, wp, c, self.scale, self.mask_names[0])
            B_cat = MaskedFactor.apply(self.B, self.UB, wp, c, self.scale, self.mask_names[1])
        # (I, K, Rb) -> (I, K*Rb), k-major columns
        return A_cat.reshape(self.I, self.K * self.Rb), B_cat.reshape(self.J, self.K * self.Rb)

    def forward(self) -> torch.Tensor:
        """The full I x J reconstruction: one matmul of the concatenated masked factors."""
        A_cat, B_cat = self.factors_cat()
        return OuterProduct.apply(A_cat, B_cat)

    def forward_entries(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """X_hat[rows[n], cols[n]] for a batch of (row, col) pairs, without forming X_hat.

        sum_k MA[i,k,r] MB[j,k,r] is computed first (n x Rb), so the cost is n*K*Rb.
        Masks are computed once per distinct row / column in the batch and then gathered.
        """
        mix = self.mask_mix(rows, cols)                                   # n x Rb
        return (self.A[rows] * self.B[cols] * mix).sum(-1)

    def mask_mix(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """sum_k MA[rows,k,:] * MB[cols,k,:] -> (n, Rb); masks evaluated once per distinct id."""
        if self.UA is None:
            MA = self.masks_A()
            mA = MA.expand(rows.shape[0], -1, -1)
        else:
            ur, inv_r = torch.unique(rows, return_inverse=True)
            mA = self.masks_A(ur)[inv_r]
        if self.UB is None:
            mB = self.masks_B().expand(cols.shape[0], -1, -1)
        else:
            uc, inv_c = torch.unique(cols, return_inverse=True)
            mB = self.masks_B(uc)[inv_c]
        return (mA * mB).sum(1)

    def param_groups(self, lr_factors: float, lr_shifts: float) -> list[dict]:
        groups = [{"params": [self.A, self.B], "lr": lr_factors}]
        if self.shift_mode == "learned":
            groups.append({"params": [self.UA, self.UB], "lr": lr_shifts})
        return groups


class MF(nn.Module):
    """Plain matrix factorization X_hat = A B^T (rank R); with bias=True adds row/column
    biases and a global offset: A B^T + a 1^T + 1 b^T + mu (all learned).
    nonneg=True keeps raw parameters and uses softplus(A) softplus(B)^T (NMF)."""

    def __init__(self, I: int, J: int, R: int, bias: bool = False, nonneg: bool = False,
                 init_std: float = 0.02, gen: torch.Generator | None = None):
        super().__init__()
        if R < 1:
            raise ConfigError(f"MF needs rank R >= 1, got {R}")
        self.I, self.J, self.R, self.nonneg = I, J, R, nonneg
        self.A = nn.Parameter(_normal((I, R), init_std, gen))
        self.B = nn.Parameter(_normal((J, R), init_std, gen))
        if bias:
            self.a = nn.Parameter(torch.zeros(I))
            self.b = nn.Parameter(torch.zeros(J))
            self.mu = nn.Parameter(torch.zeros(()))
        else:
            self.a = self.b = self.mu = None

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.nonneg:
            return nn.functional.softplus(self.A), nn.functional.softplus(self.B)
        return self.A, self.B

    def forward(self) -> torch.Tensor:
        A, B = self.factors()
        X_hat = A @ B.T
        if self.a is not None:
            X_hat = X_hat + self.a[:, None] + self.b[None, :] + self.mu
        return X_hat

    def forward_entries(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        A, B = self.factors()
        out = (A[rows] * B[cols]).sum(-1)
        if self.a is not None:
            out = out + self.a[rows] + self.b[cols] + self.mu
        return out


def truncated_svd(X: torch.Tensor, R: int) -> torch.Tensor:
    """Best rank-R approximation of X (Eckart-Young), computed in float64 on X's device."""
    U, S, Vh = torch.linalg.svd(X.double(), full_matrices=False)
    R = min(R, S.numel())
    return ((U[:, :R] * S[:R]) @ Vh[:R]).to(X.dtype)


# ----------------------------------------------------------------------------------------
# Devices, seeding, precision
# ----------------------------------------------------------------------------------------

class CLIParser(__import__("argparse").ArgumentParser):
    """argparse for every entrypoint, but a bad flag is one line on stderr and exit 2, like
    every other input error, instead of the usage text followed by the error."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def add_device_args(parser) -> None:
    """--device, --tf32, --deterministic: the same three flags in every entrypoint."""
    parser.add_argument("--device", default="auto",
                        help="auto|cpu|cuda|cuda:N|mps (auto: CUDA if present, else MPS, else CPU; "
                             "a GPU asked for but absent falls back to CPU with a warning)")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 matmuls on Ampere+ GPUs (faster, ~1e-3 relative precision)")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic algorithms (bitwise-repeatable GPU runs; may be slower)")


def add_sweep_args(parser, out_flag: str) -> None:
    """--threads and --resume: the same two flags in both sweep entrypoints (torchrun-aware)."""
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads per process (0: torch's default; under torchrun the "
                             "cores are shared out between the ranks of a node)")
    parser.add_argument("--resume", action="store_true",
                        help=f"keep what an earlier run of the same configuration finished in "
                             f"{out_flag} and run only the missing settings")


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a --device string into a torch.device. A GPU that is not there gives one warning
    line and the CPU, so commands written for a GPU machine still run on a laptop."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        try:
            dev = torch.device(spec)
        except RuntimeError:
            raise ConfigError(f"bad --device {spec!r} (use auto, cpu, cuda, cuda:N or mps)")
        if not torch.cuda.is_available():
            print(f"warning: --device {spec} requested but CUDA is not available; running on CPU",
                  file=sys.stderr)
            return torch.device("cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            print("warning: --device mps requested but MPS is not available; running on CPU",
                  file=sys.stderr)
            return torch.device("cpu")
        return torch.device("mps")
    raise ConfigError(f"bad --device {spec!r} (use auto, cpu, cuda, cuda:N or mps)")


def setup_torch(device: torch.device, tf32: bool = False, deterministic: bool = False) -> None:
    """Precision and determinism switches; call once per process after resolve_device."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; must be set before first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def setting_generator(*key) -> torch.Generator:
    """A CPU generator seeded from a setting (e.g. seed, R, K, method): each setting's random
    draws are the same whatever ran before it, in this process or another one."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings measure the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# ----------------------------------------------------------------------------------------
# The full-matrix training loop
# ----------------------------------------------------------------------------------------

@dataclass
class FitResult:
    best_epoch: int            # 1-based epoch whose parameters gave the lowest training loss
    best_loss: float           # that training loss (NaN if the run diverged before any epoch)
    train_time_sec: float
    diverged: bool = False
    message: str = ""
    history: list[float] = field(default_factory=list)   # loss every log_every epochs


def make_adam(model: nn.Module, lr_factors: float, lr_shifts: float | None = None) -> torch.optim.Optimizer:
    """Adam over a model; MMF gets two groups (factors, shifts) with their own learning rates."""
    if isinstance(model, MMF):
        groups = model.param_groups(lr_factors, lr_factors if lr_shifts is None else lr_shifts)
    else:
        groups = [{"params": list(model.parameters()), "lr": lr_factors}]
    # The fused implementation updates all tensors of a group in one kernel (CPU and CUDA);
    # the default per-tensor path costs more than the model's matmuls at small ranks.
    try:
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError):   # a device without a fused Adam kernel
        return torch.optim.Adam(groups, foreach=True)


def fit_full(model: nn.Module, X: torch.Tensor, optimizer: torch.optim.Optimizer, epochs: int,
             penalty: Callable[[], torch.Tensor] | None = None, log_every: int = 0,
             name: str = "", log: Callable[[str], None] = print,
             device_bookkeeping: bool | None = None) -> FitResult:
    """Fit model() to the fully observed X by full-batch gradient steps on the mean squared error.

    The model left behind holds the parameters of the best epoch by training loss (the loss
    evaluated at epoch t is the one of the parameters *before* step t, so those are snapshot).
    A NaN/inf loss stops this model with diverged=True instead of raising, so a sweep carries
    on with its other settings. `penalty` adds a regularizer to the loss (not to the reported
    loss used for model selection, which is the plain MSE). `device_bookkeeping` forces the
    GPU-style (sync-free) best-epoch bookkeeping on or off; by default it is on off the CPU.
    """
    device = X.device
    params = [p for p in model.parameters()]
    best_state = [p.detach().clone() for p in params]
    # On a GPU, keep the best-loss bookkeeping on the device: a .item() per epoch would make
    # the CPU wait for the GPU every step. On the CPU there is nothing to wait for.
    on_gpu = device.type != "cpu" if device_bookkeeping is None else device_bookkeeping
    best_loss = torch.full((), float("inf"), device=device) if on_gpu else float("inf")
    best_epoch_t = torch.zeros((), dtype=torch.long, device=device) if on_gpu else 0
    history: list[float] = []
    sync(device)
    t0 = time.perf_counter()
    diverged, message = False, ""
    for epoch in range(1, epochs + 1):
        optimizer.zero_grad(set_to_none=True)
        X_hat = model()
        loss = nn.functional.mse_loss(X_hat, X)
        total = loss if penalty is None else loss + penalty()
        if on_gpu:
            with torch.no_grad():
                improved = loss < best_loss
                for b, p in zip(best_state, params):
                    torch.where(improved, p, b, out=b)
                best_epoch_t = torch.where(improved, epoch, best_epoch_t)
                best_loss = torch.where(improved, loss.detach(), best_loss)
        else:
            lv = loss.item()
            if not math.isfinite(lv):
                diverged, message = True, f"{name}: loss became {lv} at epoch {epoch}; stopped (diverged)"
                break
            if lv < best_loss:
                best_loss, best_epoch_t = lv, epoch
                with torch.no_grad():
                    for b, p in zip(best_state, params):
                        b.copy_(p)
        want_log = log_every and (epoch % log_every == 0 or epoch == epochs)
        if on_gpu and (want_log or epoch % 100 == 0):
            lv = loss.item()   # an occasional sync to catch divergence early
            if not math.isfinite(lv):
                diverged, message = True, f"{name}: loss became {lv} at epoch {epoch}; stopped (diverged)"
                break
        if want_log:
            lv = loss.item()
            history.append(lv)
            log(f"  {name} epoch {epoch:5d}/{epochs}  loss {lv:.6e}  "
                f"({time.perf_counter() - t0:.1f}s)")
        total.backward()
        optimizer.step()
    sync(device)
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        for b, p in zip(best_state, params):
            p.copy_(b)
    bl = float(best_loss)
    be = int(best_epoch_t)
    if be == 0:   # not one finite loss
        diverged = True
        message = message or f"{name}: no finite loss; stopped (diverged)"
    return FitResult(best_epoch=be, best_loss=bl, train_time_sec=elapsed, diverged=diverged,
                     message=message, history=history)


# ----------------------------------------------------------------------------------------
# Small shared helpers for the entrypoints
# ----------------------------------------------------------------------------------------

def parse_int_list(text: str, flag: str) -> list[int]:
    try:
        vals = [int(t) for t in str(text).replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise ConfigError(f"{flag}: cannot parse {text!r} as a comma-separated list of integers")
    return vals


def parse_float_list(text: str, flag: str) -> list[float]:
    try:
        vals = [float(t) for t in str(text).replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise ConfigError(f"{flag}: cannot parse {text!r} as a comma-separated list of numbers")
    if any(not math.isfinite(v) for v in vals):
        raise ConfigError(f"{flag}: values must be finite, got {text!r}")
    return vals


def parse_str_list(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.
    An interrupted run never leaves a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates the file private (0600); give the result the usual permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def savefig_atomic(fig, path, **kw) -> None:
    suffix = Path(path).suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix, **kw)


def environment_info(device: torch.device) -> dict:
    """Library versions and hardware, for the manifest written next to every result."""
    import scipy
    info = {
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
        "device": str(device), "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        import subprocess
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5).stdout.strip() or None
    except Exception:
        info["git_commit"] = None
    return info


# ----------------------------------------------------------------------------------------
# Sweeps over several processes, GPUs or machines (torchrun)
# ----------------------------------------------------------------------------------------
# A sweep's settings are independent, so there is no gradient traffic between processes:
# each rank runs its share of the settings on its own device and rank 0 gathers the rows.
# torch.distributed is initialised (NCCL on GPUs, gloo on CPUs) as torchrun users expect;
# the row gathering goes through a gloo group, which carries Python objects on any backend.

@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    object_group: object = None      # gloo process group for gather/broadcast of objects

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str, threads: int = 0) -> tuple[DistContext, torch.device]:
    """Detect a torchrun launch (RANK / WORLD_SIZE / LOCAL_RANK in the environment), join the
    process group and pick this rank's device: cuda:LOCAL_RANK on GPUs, else the CPU with
    the cores shared out between the ranks of this node (unless `threads` says otherwise).
    Without torchrun: a single-process context and resolve_device(device_spec)."""
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env or int(env["WORLD_SIZE"]) <= 1:
        device = resolve_device(device_spec)
        if threads > 0:
            torch.set_num_threads(threads)
        return DistContext(), device
    import datetime
    import torch.distributed as dist
    ctx = DistContext(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                      local_rank=int(env.get("LOCAL_RANK", 0)),
                      local_world_size=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))
    device = resolve_device(device_spec) if ctx.rank == 0 else _quiet_resolve(device_spec)
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu") if device.type != "mps" else device
    torch.set_num_threads(threads if threads > 0 else max(1, (os.cpu_count() or 1) // ctx.local_world_size))
    # A rank may wait at the final gather for hours while the others finish their settings.
    timeout = datetime.timedelta(days=7)
    # NCCL does not exist on Windows; gloo serves there (the ranks exchange only result rows).
    backend = "nccl" if device.type == "cuda" and sys.platform != "win32" else "gloo"
    dist.init_process_group(backend, timeout=timeout)
    ctx.object_group = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
    return ctx, device


def _quiet_resolve(spec: str) -> torch.device:
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        return resolve_device(spec)


def assign_balanced(costs: list[float], world_size: int) -> list[list[int]]:
    """Deterministic split of settings over ranks, balanced by expected cost: largest first,
    each to the least-loaded rank (ties to the lower rank). Returns indices per rank, sorted."""
    loads = [0.0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world_size), key=lambda r: (loads[r], r))
        shares[r].append(i)
        loads[r] += costs[i]
    return [sorted(s) for s in shares]


def gather_to_main(ctx: DistContext, obj):
    """[obj of rank 0, obj of rank 1, ...] on rank 0, None elsewhere; [obj] without torchrun."""
    if not ctx.enabled:
        return [obj]
    import torch.distributed as dist
    out = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0, group=ctx.object_group)
    return out


def broadcast_from_main(ctx: DistContext, obj):
    """Rank 0's obj on every rank."""
    if not ctx.enabled:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=ctx.object_group)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist
        dist.barrier(group=ctx.object_group)


def shutdown_distributed(ctx: DistContext) -> None:
    """Leave the process group together: without the final barrier a rank that finishes first
    can tear down its gloo connections while another still reads from them (SIGABRT)."""
    if ctx.enabled:
        import torch.distributed as dist
        dist.barrier(group=ctx.object_group)
        dist.destroy_process_group()


def config_fingerprint(args, ignore: tuple[str, ...]) -> str:
    """A short hash of the arguments that change results (for --resume to refuse stale rows)."""
    keep = {k: v for k, v in sorted(vars(args).items()) if k not in ignore}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_cli(main: Callable[[], int | None]) -> None:
    """Run an entrypoint's main(); a ConfigError / DataError becomes one line on stderr and
    exit code 2 instead of a traceback. Ctrl-C exits 130 quietly."""
    try:
        rc = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except ValueError as e:
        # ConfigError and data_utils.DataError are both ValueErrors raised on purpose with a
        # message for the user; any other exception is a bug and keeps its traceback.
        if type(e).__name__ in ("ConfigError", "DataError"):
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        raise
    sys.exit(rc or 0)


# ========================================================================================
# Completion form (spec section 3): ratings of (user, item) pairs
# ========================================================================================
# main_completion.py predicts explicit ratings. The user-item interaction is MF or MMF from
# above, unchanged; what the completion form adds is explicit and lives only here:
#
#     pred(u, i) = mu + b_u + b_i + core(u, i)
#
#   mu    a constant, the training mean (a buffer, not learned; the published scripts
#         fixed it at 3.0, which --mu 3 reproduces)
#   b_u   learned user and item biases (optional)
#   core  MF(bias=False): A_u . B_i, or MMF(Rb=R, K, shift_placement="inner"):
#         sum_k sum_r A[u,r] B[i,r] MA[u,k,r] MB[i,k,r], i.e. MMF.forward_entries. With h = Rb/2
#         = R/2 and s = 1/K per side, MA[u,k,r] = g(w_k (p_r - h UA[u,k])) / K: the spec's
#         completion masks. Shift modes: "zero" (no shifts), "random" (fixed N(0, std^2)
#         shifts, MMF shifts="fixed"), "learned".
#
# Speed. A training batch holds a few thousand ratings of a few hundred distinct users and
# items. MMF.forward_entries evaluates the masks once per distinct id but then gathers them
# per rating, materialising two (batch, K, R) tensors (2 x 176 MB at R 256, K 42, batch
# 4096). `pair_scores` instead forms the masked factors A_cat = A (.) MA of the distinct ids
# only (MaskedRows: MaskedFactor computed in cache-sized row blocks) and takes one dot
# product of length K*R per rating (PairDot). On the CPU that dot product is a sampled
# dense-dense matmul and its gradients two sparse-dense matmuls over the batch's user x item
# pattern (CSR kernels); elsewhere it is a chunked gather. Fixed ("random") shifts never
# change, so their masks are computed once for all rows and reused. Without shifts the
# masks collapse to one weight per latent dimension, w_r = sum_k MA[k,r] MB[k,r], and MMF
# costs what MF costs. With shifts the arithmetic per rating is K times MF's, three times
# over (forward, two gradients), plus the masks of the batch's ids: on a CPU learned shifts
# stay ~25x slower than MF per epoch (README, "speed").


# CSR tensors are a "beta" feature; PairDot only uses the stable kernels below.
import warnings as _warnings
_warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


class PairDot(torch.autograd.Function):
    """out[n] = X[rows[n]] . Y[cols[n]] for X (nx, D), Y (ny, D), with its backward
    dX[a] = sum_{n: rows[n]=a} g[n] Y[cols[n]] (and dY likewise).

    On the CPU both are sparse kernels over the n (row, col) pairs: the forward a sampled
    dense-dense matmul, the backward two CSR x dense products. They read each row of X and
    Y from memory once per pair without writing an (n, D) intermediate, which is what the
    gather formulation costs. On other devices (where gathers are cheap) it is a gather in
    chunks of `_PAIR_CHUNK` pairs, so memory stays bounded for large evaluation batches.
    """

    @staticmethod
    def forward(ctx, X, Y, rows, cols):
        plan = _PairPlan(rows, cols, X.shape[0], Y.shape[0])
        ctx.save_for_backward(X, Y)
        ctx.plan = plan
        return plan.dot(X, Y)

    @staticmethod
    def backward(ctx, g):
        X, Y = ctx.saved_tensors
        plan = ctx.plan
        dX = plan.scatter_rows(g, Y) if ctx.needs_input_grad[0] else None
        dY = plan.scatter_cols(g, X) if ctx.needs_input_grad[1] else None
        return dX, dY, None, None


_PAIR_CHUNK = 8192


class _PairPlan:
    """The pair pattern of one batch, in the form the kernels of PairDot need."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, nx: int, ny: int):
        self.rows, self.cols, self.nx, self.ny = rows, cols, nx, ny
        self.sparse = rows.device.type == "cpu"
        if self.sparse:
            # CSR by rows (for the dot and dX) and by columns (for dY). Pairs need not be
            # distinct: the kernels treat a repeated pair as two entries, as the math does.
            self.by_row = self._csr(rows, cols, nx, ny)
            self.by_col = self._csr(cols, rows, ny, nx)

    @staticmethod
    def _csr(major: torch.Tensor, minor: torch.Tensor, n_major: int, n_minor: int):
        order = torch.argsort(major * n_minor + minor)
        crow = torch.zeros(n_major + 1, dtype=torch.long, device=major.device)
        torch.cumsum(torch.bincount(major, minlength=n_major), 0, out=crow[1:])
        return order, crow, minor[order], (n_major, n_minor)

    @staticmethod
    def _matrix(csr, values: torch.Tensor) -> torch.Tensor:
        order, crow, col, shape = csr
        return torch.sparse_csr_tensor(crow, col, values[order], shape, check_invariants=False)

    def dot(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        n = self.rows.shape[0]
        if self.sparse:
            order = self.by_row[0]
            S = self._matrix(self.by_row, torch.ones(n, dtype=X.dtype))
            vals = torch.sparse.sampled_addmm(S, X, Y.T, beta=0.0).values()
            return torch.empty_like(vals).index_copy_(0, order, vals)
        out = torch.empty(n, dtype=X.dtype, device=X.device)
        for s in range(0, n, _PAIR_CHUNK):
            r, c = self.rows[s:s + _PAIR_CHUNK], self.cols[s:s + _PAIR_CHUNK]
            out[s:s + _PAIR_CHUNK] = (X[r] * Y[c]).sum(-1)
        return out

    def _scatter(self, csr, g, Z, idx_out, idx_in, n_out):
        if self.sparse:
            return self._matrix(csr, g.to(Z.dtype)) @ Z
        out = torch.zeros(n_out, Z.shape[1], dtype=Z.dtype, device=Z.device)
        for s in range(0, g.shape[0], _PAIR_CHUNK):
            sl = slice(s, s + _PAIR_CHUNK)
            out.index_add_(0, idx_out[sl], Z[idx_in[sl]] * g[sl, None])
        return out

    def scatter_rows(self, g, Y):
        return self._scatter(self.by_row if self.sparse else None, g, Y, self.rows, self.cols, self.nx)

    def scatter_cols(self, g, X):
        return self._scatter(self.by_col if self.sparse else None, g, X, self.cols, self.rows, self.ny)


class MaskedRows(torch.autograd.Function):
    """MaskedFactor's values and gradients, F_cat[n,k,r] = s F[n,r] g(wp[k,r] - c[k] U[n,k]),
    computed block by block over the rows.

    At R 256, K 42 one row of masks is 43 KB and a batch's distinct users and items need
    about 100 MB of them; MaskedFactor's whole-tensor steps then run at memory speed, each
    writing and reading that much. Here each block of rows (`block` rows, about 1 MB) goes
    through all the steps while it sits in the CPU cache. Only the masks G are kept for the
    backward, which recomputes the arguments D (one subtraction) block by block: about 30%
    faster than MaskedFactor on 2 CPU cores. On a GPU pass block >= n (one block).
    """

    @staticmethod
    def forward(ctx, F, U, wp, c, s, mask, block):
        g = MASKS[mask][0]
        n, (K, Rb) = F.shape[0], wp.shape
        out, G_all = F.new_empty(n, K, Rb), F.new_empty(n, K, Rb)
        for a in range(0, n, block):
            sl = slice(a, a + block)
            G = G_all[sl]
            G.copy_(g(wp - U[sl, :, None] * c[:, None]))                # (b, K, Rb)
            torch.mul(G, (s * F[sl])[:, None, :], out=out[sl])
        ctx.save_for_backward(F, U, wp, c, G_all)
        ctx.s, ctx.mask, ctx.block = s, mask, block
        return out

    @staticmethod
    def backward(ctx, grad_out):
        F, U, wp, c, G_all = ctx.saved_tensors
        s, mask, block = ctx.s, ctx.mask, ctx.block
        dg = MASKS[mask][1]
        need_F, need_U = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dF = torch.empty_like(F) if need_F else None
        dU = torch.empty_like(U) if need_U else None
        for a in range(0, F.shape[0], block):
            sl = slice(a, a + block)
            G, gr = G_all[sl], grad_out[sl]
            T = gr * G
            if need_F:
                torch.sum(T, 1, out=dF[sl]).mul_(s)
            if need_U:
                D = wp - U[sl, :, None] * c[:, None]
                # d out[n,k,r] / d U[n,k] = -c_k s F[n,r] g'(D[n,k,r]), summed over r
                if mask in _GAUSS_OFFSET:                  # g' = -D (g - offset): reuse T
                    off = _GAUSS_OFFSET[mask]
                    P = T if off == 0.0 else T.sub_(gr, alpha=off)
                    torch.sum(P.mul_(D).mul_(F[sl, None, :]), -1, out=dU[sl]).mul_(c * s)
                else:
                    torch.sum(dg(D, G).mul_(gr).mul_(F[sl, None, :]), -1, out=dU[sl]).mul_(c * -s)
        return dF, dU, None, None, None, None, None


def mask_block_rows(K: int, Rb: int, device: torch.device) -> int:
    """Rows per MaskedRows block: about 2^18 mask entries (1 MB) on the CPU, all rows elsewhere."""
    return max(1, (1 << 18) // (K * Rb)) if device.type == "cpu" else 1 << 62


def _gather_rows(W: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """W[idx] whose backward is an embedding backward (a sorted segment sum), several times
    faster on the CPU than the accumulate-scatter autograd uses for W[idx]."""
    return nn.functional.embedding(idx, W)


FIXED_MASK_CACHE_BYTES = 1 << 30


def _fixed_masks(core: "MMF") -> tuple[torch.Tensor, torch.Tensor] | None:
    """s * gA(d) for every row and s * gB(d) for every column of an MMF with fixed shifts,
    computed once and kept on the module (recomputed if the shifts or the device change);
    None if they would take more than FIXED_MASK_CACHE_BYTES."""
    if (core.I + core.J) * core.K * core.Rb * core.A.element_size() > FIXED_MASK_CACHE_BYTES:
        return None
    key = (core.UA._version, core.UB._version, core.UA.data_ptr(), core.UB.data_ptr(), core.A.device)
    cache = getattr(core, "_fixed_mask_cache", None)
    if cache is None or cache[0] != key:
        with torch.no_grad():
            cache = (key, core.masks_A(torch.arange(core.I, device=core.A.device)),
                     core.masks_B(torch.arange(core.J, device=core.A.device)))
        core._fixed_mask_cache = cache
    return cache[1], cache[2]


def pair_scores(core: nn.Module, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """core(u, i) for a batch of pairs: A_u . B_u for MF; MMF.forward_entries for MMF (same
    values, computed as described above this section)."""
    if isinstance(core, MF):
        A, B = core.factors()
        out = (_gather_rows(A, users) * _gather_rows(B, items)).sum(-1)
        if core.a is not None:
            out = out + core.a[users] + core.b[items] + core.mu
        return out
    if not isinstance(core, MMF):
        raise TypeError(f"pair_scores: unsupported core {type(core).__name__}")
    if core.UA is None:
        # No shifts: every row has the same masks, so sum_k MA MB is one weight per r.
        w = (core.masks_A() * core.masks_B()).sum(1)[0]                  # (Rb,)
        return (_gather_rows(core.A, users) * w * _gather_rows(core.B, items)).sum(-1)
    ur, inv_r = torch.unique(users, return_inverse=True)
    uc, inv_c = torch.unique(items, return_inverse=True)
    fixed = _fixed_masks(core) if core.shift_mode == "fixed" else None
    if fixed is not None:
        # fixed shifts: the masks never change, so they were computed once for all rows
        A_cat = _gather_rows(core.A, ur)[:, None, :] * fixed[0][ur]
        B_cat = _gather_rows(core.B, uc)[:, None, :] * fixed[1][uc]
    else:
        wp = core.omega[:, None] * core.p[None, :]
        c = core.h * (core.omega if core.shift_placement == "inner" else torch.ones_like(core.omega))
        # shifts are a Parameter (learned) or a buffer (fixed): only the former gets gradients
        UA = _gather_rows(core.UA, ur) if core.UA.requires_grad else core.UA[ur]
        UB = _gather_rows(core.UB, uc) if core.UB.requires_grad else core.UB[uc]
        block = mask_block_rows(core.K, core.Rb, users.device)
        A_cat = MaskedRows.apply(_gather_rows(core.A, ur), UA, wp, c, core.scale, core.mask_names[0], block)
        B_cat = MaskedRows.apply(_gather_rows(core.B, uc), UB, wp, c, core.scale, core.mask_names[1], block)
    KR = core.K * core.Rb
    return PairDot.apply(A_cat.reshape(-1, KR), B_cat.reshape(-1, KR), inv_r, inv_c)


class RatingModel(nn.Module):
    """pred(u, i) = mu + b_u + b_i + core(u, i): see the top of this section.

    core: MF (rank R, bias=False) or MMF (shift_placement="inner"); mu: a float kept fixed;
    bias: learn b_u and b_i (zeros at the start)."""

    def __init__(self, core: nn.Module, n_users: int, n_items: int, mu: float, bias: bool = True):
        super().__init__()
        self.core = core
        self.register_buffer("mu", torch.tensor(float(mu)))
        if bias:
            self.user_bias = nn.Parameter(torch.zeros(n_users))
            self.item_bias = nn.Parameter(torch.zeros(n_items))
        else:
            self.user_bias = self.item_bias = None

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        out = pair_scores(self.core, users, items) + self.mu
        if self.user_bias is not None:
            out = out + _gather_rows(self.user_bias[:, None], users)[:, 0] \
                      + _gather_rows(self.item_bias[:, None], items)[:, 0]
        return out

    def shift_params(self) -> list[nn.Parameter]:
        core = self.core
        return [core.UA, core.UB] if isinstance(core, MMF) and core.shift_mode == "learned" else []

    def make_optimizer(self, lr: float, lr_shifts: float | None = None,
                       weight_decay: float = 0.0) -> torch.optim.Optimizer:
        """Adam: factors and biases at lr, learned shifts (if any) at lr_shifts."""
        shifts = self.shift_params()
        ids = {id(p) for p in shifts}
        groups = [{"params": [p for p in self.parameters() if id(p) not in ids], "lr": lr}]
        if shifts:
            groups.append({"params": shifts, "lr": lr if lr_shifts is None else lr_shifts})
        return _rating_adam(groups, weight_decay)


def _rating_adam(groups: list[dict], weight_decay: float) -> torch.optim.Optimizer:
    try:   # fused: one kernel per group, see make_adam
        return torch.optim.Adam(groups, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(groups, weight_decay=weight_decay, foreach=True)


COMPLETION_SHIFT_MODES = ("zero", "random", "learned")


def make_rating_model(kind: str, n_users: int, n_items: int, R: int, K: int, mu: float, *,
                      bias: bool = True, shift_mode: str = "zero", shift_init: str = "zero",
                      shift_std: float = 0.1, mask_A: str = "gaussian_pos",
                      mask_B: str = "gaussian_pos", mask_scale: float | None = None,
                      init_std: float = 0.02, gen: torch.Generator | None = None) -> RatingModel:
    """A RatingModel with an MF ("mf") or completion-form MMF ("mmf") core of rank R.

    shift_mode: "zero" | "random" (fixed N(0, shift_std^2) shifts) | "learned" (trainable,
    starting at zero or, with shift_init="random", N(0, shift_std^2)). Initial values come
    from `gen` (CPU), so a seed gives the same model on every device."""
    if kind == "mf":
        core = MF(n_users, n_items, R, bias=False, init_std=init_std, gen=gen)
        return RatingModel(core, n_users, n_items, mu, bias)
    if kind != "mmf":
        raise ConfigError(f"unknown model {kind!r} (choose mf or mmf)")
    if K < 1 or K > R:
        raise ConfigError(f"MMF needs 1 <= K <= R, got K={K}, R={R}")
    if shift_mode not in COMPLETION_SHIFT_MODES:
        raise ConfigError(f"unknown shift mode {shift_mode!r} (choose {', '.join(COMPLETION_SHIFT_MODES)})")
    if shift_init not in ("zero", "random"):
        raise ConfigError(f"unknown shift init {shift_init!r} (choose zero or random)")
    shifts = {"zero": "zero", "random": "fixed", "learned": "learned"}[shift_mode]
    # A and B are drawn first, exactly as MF draws its factors: with the same generator
    # seed, MF and every MMF shift mode start from the same factors.
    core = MMF(n_users, n_items, Rb=R, K=K, mask_A=mask_A, mask_B=mask_B, scale=mask_scale,
               shift_placement="inner", shifts=shifts, init_std=init_std, gen=gen)
    if shift_mode == "random" or (shift_mode == "learned" and shift_init == "random"):
        with torch.no_grad():
            core.UA.copy_(_normal((n_users, K), shift_std, gen))
            core.UB.copy_(_normal((n_items, K), shift_std, gen))
    return RatingModel(core, n_users, n_items, mu, bias)


# ----- training and evaluation on rating triples -----------------------------------------

def tune_cpu_allocator() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the OS.

    By default glibc serves every allocation over 32 MB with a fresh mmap and unmaps it on
    free, so each such tensor costs a page fault per 4 KB on first touch. The MMF training
    step allocates and frees several 40-100 MB tensors per batch (the masked factors of a
    batch and their gradients), and those page faults cost more than the arithmetic (a
    66 MB multiply: 65 ms fresh, 8 ms reused). With mmap off and a high trim threshold the
    same heap blocks are reused. Linux/glibc only; returns False (and does nothing) elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_MMAP_MAX, 0))
    except (OSError, AttributeError):
        return False


def warm_up_optimizer(device: torch.device) -> None:
    """Pay torch's one-time costs before anything is timed: the first optimizer step of a
    process imports torch._dynamo (seconds), which would otherwise be billed to whichever
    model trains first."""
    p = nn.Parameter(torch.zeros(1, device=device))
    p.grad = torch.zeros_like(p)
    _rating_adam([{"params": [p], "lr": 0.0}], 0.0).step()


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message names the model and epoch."""


@dataclass
class RatingTensors:
    """(user, item, rating) triples as tensors on the training device."""
    users: torch.Tensor     # int64
    items: torch.Tensor     # int64
    ratings: torch.Tensor   # float32

    @classmethod
    def from_arrays(cls, users, items, ratings, device) -> "RatingTensors":
        return cls(torch.as_tensor(np.asarray(users), dtype=torch.long).to(device),
                   torch.as_tensor(np.asarray(items), dtype=torch.long).to(device),
                   torch.as_tensor(np.asarray(ratings), dtype=torch.float32).to(device))

    def __len__(self) -> int:
        return int(self.ratings.shape[0])


@torch.no_grad()
def predict_ratings(model: RatingModel, data: RatingTensors, clamp: tuple[float, float] | None = None,
                    batch_size: int = 65536) -> torch.Tensor:
    """Predictions for all triples, in large batches without autograd, clamped to the rating
    scale when `clamp` = (lo, hi) is given."""
    was_training = model.training
    model.eval()
    out = torch.empty(len(data), dtype=torch.float32, device=data.ratings.device)
    for s in range(0, len(data), batch_size):
        out[s:s + batch_size] = model(data.users[s:s + batch_size], data.items[s:s + batch_size])
    model.train(was_training)
    return out.clamp_(*clamp) if clamp is not None else out


def rating_metrics(model: RatingModel, data: RatingTensors, clamp=None,
                   batch_size: int = 65536) -> tuple[float, float]:
    """(RMSE, MAE) over the triples, accumulated in float64."""
    if len(data) == 0:
        return float("nan"), float("nan")
    err = predict_ratings(model, data, clamp, batch_size).double() - data.ratings.double()
    return float(err.square().mean().sqrt()), float(err.abs().mean())


@dataclass
class RatingFit:
    best_epoch: int              # 1-based epoch of the restored parameters
    best_val_rmse: float | None  # their validation RMSE (None without a validation set)
    epochs_run: int
    train_time_sec: float        # the whole fit: training steps and validation
    sec_per_epoch: float         # training steps only, mean over the epochs run
    history: list[dict] = field(default_factory=list)  # epoch, train_loss, val_rmse, sec


def fit_ratings(model: RatingModel, optimizer: torch.optim.Optimizer, train: RatingTensors,
                val: RatingTensors | None, *, epochs: int, batch_size: int, patience: int,
                clamp: tuple[float, float] | None, gen: torch.Generator, name: str = "",
                print_every: int = 1, eval_batch_size: int = 65536,
                log: Callable[[str], None] = print) -> RatingFit:
    """Minibatch Adam on the squared error of the training triples, with early stopping on
    validation RMSE (clamped predictions) after `patience` epochs without improvement; the
    parameters of the best epoch are restored. Without a validation set it runs all epochs
    and keeps the last.

    The triples stay on the device; each epoch shuffles an index permutation drawn from the
    CPU generator `gen` (so the order depends on the seed alone, not on the device) and
    slices it into batches: no per-sample collation. A non-finite epoch loss raises
    TrainingDiverged naming `name` and the epoch.
    """
    device = train.ratings.device
    n = len(train)
    has_val = val is not None and len(val) > 0
    best_state = None
    best_rmse, best_epoch, bad = float("inf"), 0, 0
    history: list[dict] = []
    train_secs = 0.0
    sync(device)
    t_start = time.perf_counter()
    epoch = 0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)
        # the loss is summed on the device; one .item() per epoch (no per-batch GPU sync)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            pred = model(train.users[idx], train.items[idx])
            loss = nn.functional.mse_loss(pred, train.ratings[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * idx.shape[0]
        train_loss = float(loss_sum) / n
        sync(device)
        sec = time.perf_counter() - t0
        train_secs += sec
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"{name}: training loss became {train_loss} at epoch {epoch}; "
                                   f"stopped (lower the learning rate)")
        val_rmse = rating_metrics(model, val, clamp, eval_batch_size)[0] if has_val else None
        history.append({"epoch": epoch, "train_loss": train_loss, "val_rmse": val_rmse, "sec": sec})
        improved = has_val and val_rmse < best_rmse
        if improved or not has_val:
            best_rmse, best_epoch, bad = (val_rmse if has_val else best_rmse), epoch, 0
            if has_val:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        if print_every and (epoch % print_every == 0 or epoch == epochs):
            vtxt = f"val RMSE {val_rmse:.4f}{' *' if improved else '  '}" if has_val else "no val"
            log(f"  {name} epoch {epoch:3d}  train loss {train_loss:.4f}  {vtxt}  {sec:.2f} s/epoch")
        if has_val and bad >= patience:
            if print_every:
                log(f"  {name} early stop at epoch {epoch}: best val RMSE {best_rmse:.4f} at epoch {best_epoch}")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    sync(device)
    return RatingFit(best_epoch=best_epoch, best_val_rmse=best_rmse if has_val else None,
                     epochs_run=epoch, train_time_sec=time.perf_counter() - t_start,
                     sec_per_epoch=train_secs / max(epoch, 1), history=history)
