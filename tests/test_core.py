"""Tests of mmf_core: models, masks, budgets, metrics, the training loop, devices."""
import math

import numpy as np
import pytest
import torch

import mmf_core as core
from data_utils import block_sizes, make_synthetic


# ---- budgets and shapes ------------------------------------------------------------------

@pytest.mark.parametrize("I,J,R,K", [(30, 20, 8, 3), (17, 41, 5, 4), (64, 64, 16, 12)])
def test_mmf_params_equal_mf_budget(I, J, R, K):
    mmf = core.MMF(I, J, core.base_rank(R, K), K)
    mf = core.MF(I, J, R)
    assert core.count_params(mmf) == core.mf_budget(I, J, R) == core.count_params(mf)
    assert mmf().shape == (I, J) and mf().shape == (I, J)
    A_cat, B_cat = mmf.factors_cat()
    assert A_cat.shape == (I, K * (R - K)) and B_cat.shape == (J, K * (R - K))


def test_bias_mf_rank_fits_budget():
    I, J, R = 256, 256, 16
    r = core.bias_mf_rank(I, J, R)
    assert r == 14                                   # floor((512*16 - 513) / 512)
    m = core.MF(I, J, r, bias=True)
    assert core.count_params(m) == (I + J) * r + I + J + 1 <= core.mf_budget(I, J, R)
    assert core.bias_mf_rank(I, J, R, bonus=1) == 15


def test_k_from_ratio_clips_and_base_rank_rejects():
    assert core.k_from_ratio(16, 0.75) == 12
    assert core.k_from_ratio(4, 1.0) == 3            # clipped to R - 1
    assert core.k_from_ratio(10, 0.0) == 1           # clipped to 1
    with pytest.raises(core.ConfigError):
        core.k_from_ratio(1, 0.5)                    # R = 1 leaves no base rank
    with pytest.raises(core.ConfigError):
        core.base_rank(8, 8)
    with pytest.raises(core.ConfigError):
        core.base_rank(8, 0)


# ---- masks --------------------------------------------------------------------------------

D = np.linspace(-3.0, 3.0, 61)
EXPECTED = {   # written from the spec's list, independently of the registry's code
    "gaussian": 4 * np.exp(-D ** 2 / 2),
    "gaussian_pos": 0.5 + np.exp(-D ** 2 / 2) / 2.507,
    "gaussian_unit": np.exp(-D ** 2 / 2),
    "sin": np.sin(D), "cos": np.cos(D),
    "sigmoid": 1 / (1 + np.exp(-D)), "sigmoid2": 2 / (1 + np.exp(-D)),
    "tanh": np.tanh(D),
    "triangle": 4 * np.maximum(0, 1 - np.abs(D)),
    "linear": D,
    "sinc": 4 * np.sinc(D / np.pi),
    "square": np.tanh(np.sin(D) / 0.1) + 0.5,
    "cauchy": 1 / (1 + (4 * D) ** 2),
    "sin01": (np.sin(D) + 1) / 2, "cos01": (np.cos(D) + 1) / 2,
    "linear01": np.clip(D + 0.5, 0, 1),
    "psin": (np.sin(np.pi * D) + 2.5) / 5, "pcos": (np.cos(np.pi * D) + 2.5) / 5,
    "tri": 1 - 2 * np.abs(np.mod(D + 1, 2) - 1),
}


def test_every_registered_mask_is_tested():
    assert set(EXPECTED) == set(core.MASKS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_mask_is_what_its_name_says(name):
    got = core.get_mask(name)(torch.tensor(D, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, EXPECTED[name], rtol=1e-6, atol=1e-9)


def test_three_gaussians_are_distinct():
    d0 = torch.zeros(1)
    vals = {n: float(core.get_mask(n)(d0)) for n in ("gaussian", "gaussian_pos", "gaussian_unit")}
    assert vals["gaussian"] == pytest.approx(4.0)
    assert vals["gaussian_unit"] == pytest.approx(1.0)
    assert vals["gaussian_pos"] == pytest.approx(0.5 + 1 / 2.507)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_masked_factor_backward_matches_autograd(name):
    torch.manual_seed(0)
    F = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    U = (0.7 * torch.randn(5, 4, dtype=torch.float64)).requires_grad_()
    wp = torch.rand(4, 3, dtype=torch.float64) * 2 + 0.1
    c = torch.rand(4, dtype=torch.float64) + 0.3
    # nudge arguments off the kinks of the piecewise-linear masks
    assert torch.autograd.gradcheck(lambda F, U: core.MaskedFactor.apply(F, U, wp, c, 0.3, name),
                                    (F, U), eps=1e-7, atol=1e-5)


def test_unknown_mask_is_a_config_error():
    with pytest.raises(core.ConfigError, match="unknown mask"):
        core.MMF(4, 4, 2, 2, mask_A="gauss")


# ---- forwards -----------------------------------------------------------------------------

def _direct_mmf(model):
    """X_hat from the spec's double sum, written with explicit loops over k."""
    I, J, K, Rb = model.I, model.J, model.K, model.Rb
    omega = torch.linspace(1 / K, 1, K, dtype=torch.float64)
    p = torch.arange(Rb, dtype=torch.float64)
    h = Rb / 2
    out = torch.zeros(I, J, dtype=torch.float64)
    A, B = model.A.double(), model.B.double()
    for k in range(K):
        UA = model.UA.double()[:, k:k + 1] if model.UA is not None else 0.0
        UB = model.UB.double()[:, k:k + 1] if model.UB is not None else 0.0
        if model.shift_placement == "outer":
            dA, dB = omega[k] * p - h * UA, omega[k] * p - h * UB
        else:
            dA, dB = omega[k] * (p - h * UA), omega[k] * (p - h * UB)
        MA = model.gA(dA) * torch.ones(I, Rb, dtype=torch.float64)
        MB = model.gB(dB) * torch.ones(J, Rb, dtype=torch.float64)
        out += (A * MA) @ (B * MB).T
    return model.scale ** 2 * out


@pytest.mark.parametrize("placement", ["outer", "inner"])
@pytest.mark.parametrize("shifts", ["learned", "fixed", "zero"])
def test_forward_matches_spec_formula_and_entries(placement, shifts):
    gen = torch.Generator().manual_seed(3)
    I, J, Rb, K = 9, 7, 4, 3
    init = (torch.randn(I, K, generator=gen), torch.randn(J, K, generator=gen))
    m = core.MMF(I, J, Rb, K, "gaussian", "sin", shift_placement=placement, shifts=shifts,
                 shift_init=init, init_std=1.0, gen=gen)
    with torch.no_grad():
        full = m()
        np.testing.assert_allclose(full.double().numpy(), _direct_mmf(m).numpy(), rtol=1e-4, atol=1e-6)
        rows = torch.tensor([0, 3, 3, 8, 5, 0])
        cols = torch.tensor([6, 1, 1, 0, 2, 6])
        np.testing.assert_allclose(m.forward_entries(rows, cols).numpy(), full[rows, cols].numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_mf_entries_match_full_with_bias_and_nonneg():
    gen = torch.Generator().manual_seed(0)
    for kw in ({}, {"bias": True}, {"nonneg": True}):
        m = core.MF(6, 5, 3, gen=gen, **kw)
        if kw.get("bias"):
            with torch.no_grad():
                m.a.normal_(), m.b.normal_(), m.mu.fill_(0.3)
        rows, cols = torch.tensor([0, 5, 2]), torch.tensor([4, 0, 2])
        with torch.no_grad():
            torch.testing.assert_close(m.forward_entries(rows, cols), m()[rows, cols])
    assert (core.MF(6, 5, 3, nonneg=True)() >= 0).all()


def test_gradients_reach_the_shifts():
    X = make_synthetic("blockdiag", 24, 20, 0, num_blocks=3) * 4
    m = core.MMF(24, 20, 4, 4, gen=torch.Generator().manual_seed(1))
    loss = torch.nn.functional.mse_loss(m(), X)
    loss.backward()
    assert m.UA.grad is not None and m.UA.grad.abs().sum() > 0
    assert m.UB.grad is not None and m.UB.grad.abs().sum() > 0
    before = m.UA.detach().clone()
    opt = core.make_adam(m, 2e-2, 1e-2)
    opt.step()
    assert not torch.equal(before, m.UA.detach())
    # fixed shifts are buffers: no gradient, no optimizer group
    f = core.MMF(24, 20, 4, 4, shifts="fixed")
    assert "UA" not in dict(f.named_parameters()) and len(core.make_adam(f, 1e-2, 1e-2).param_groups) == 1


def test_truncated_svd_matches_numpy_optimum():
    X = make_synthetic("random", 40, 30, 5)
    R = 7
    s = np.linalg.svd(X.double().numpy(), compute_uv=False)
    optimum = math.sqrt((s[R:] ** 2).sum()) / math.sqrt((s ** 2).sum())
    assert core.rel_fro(core.truncated_svd(X, R), X) == pytest.approx(optimum, rel=1e-5)
    assert np.linalg.matrix_rank(core.truncated_svd(X, R).double().numpy(), tol=1e-6) == R


def test_metrics():
    X = torch.ones(2, 2)
    assert core.mse(X * 0, X) == pytest.approx(1.0)
    assert core.rel_fro(X * 0, X) == pytest.approx(1.0)
    assert core.rel_fro(X, X) == 0.0


# ---- training loop ------------------------------------------------------------------------

def test_fit_full_improves_and_restores_best_epoch():
    X = make_synthetic("blockdiag", 32, 32, 0, num_blocks=4) * 4
    m = core.MMF(32, 32, 4, 4, gen=torch.Generator().manual_seed(0))
    start = core.mse(m().detach(), X)
    res = core.fit_full(m, X, core.make_adam(m, 2e-2, 1e-2), 300)
    assert not res.diverged and 1 <= res.best_epoch <= 300
    assert core.mse(m().detach(), X) < 0.5 * start
    # the parameters left in the model are those of the best epoch
    assert core.mse(m().detach(), X) == pytest.approx(res.best_loss, rel=1e-4)


def test_fit_full_keeps_best_when_training_gets_worse():
    # SGD with a large step first improves, then oscillates/diverges: the best epoch is early
    X = make_synthetic("random", 16, 16, 1) * 4
    m = core.MF(16, 16, 2, init_std=0.5, gen=torch.Generator().manual_seed(0))
    res = core.fit_full(m, X, torch.optim.SGD(m.parameters(), lr=60.0), 60, name="mf")
    final = core.mse(m().detach(), X)
    assert math.isfinite(final) and final == pytest.approx(res.best_loss, rel=1e-4)


def test_device_side_bookkeeping_matches_host_side():
    """The sync-free best-epoch bookkeeping used on GPUs, run on the CPU, gives the same
    best epoch, loss and parameters as the host-side one."""
    X = make_synthetic("random", 16, 16, 1) * 4
    results = []
    for flag in (False, True):
        m = core.MF(16, 16, 2, init_std=0.5, gen=torch.Generator().manual_seed(0))
        r = core.fit_full(m, X, torch.optim.SGD(m.parameters(), lr=60.0), 60, log_every=20,
                          log=lambda s: None, device_bookkeeping=flag)
        results.append((r.best_epoch, round(r.best_loss, 6), m.A.detach().clone()))
    assert results[0][:2] == results[1][:2] and torch.equal(results[0][2], results[1][2])
    m = core.MF(16, 16, 4, gen=torch.Generator().manual_seed(0))
    r = core.fit_full(m, X, torch.optim.SGD(m.parameters(), lr=1e6, momentum=0.999), 300,
                      name="mf_sgd", log=lambda s: None, device_bookkeeping=True)
    assert r.diverged and "diverged" in r.message


def test_fit_full_reports_divergence_instead_of_raising():
    X = make_synthetic("random", 16, 16, 1) * 4
    m = core.MF(16, 16, 4, gen=torch.Generator().manual_seed(0))
    msgs = []
    res = core.fit_full(m, X, torch.optim.SGD(m.parameters(), lr=1e6, momentum=0.999), 200,
                        name="mf_sgd", log=msgs.append)
    assert res.diverged and "mf_sgd" in res.message and "diverged" in res.message


# ---- devices and small helpers ------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_falls_back_to_cpu_with_one_warning(capsys):
    assert core.resolve_device("cuda") == torch.device("cpu")
    assert core.resolve_device("cuda:1") == torch.device("cpu")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("CUDA is not available" in e for e in err)


def test_device_parsing():
    assert core.resolve_device("cpu") == torch.device("cpu")
    assert core.resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(core.ConfigError):
        core.resolve_device("tpu")


def test_list_parsing():
    assert core.parse_int_list("16, 32,48", "--R_list") == [16, 32, 48]
    assert core.parse_float_list("", "--K_ratio_list") == []
    with pytest.raises(core.ConfigError, match="--R_list"):
        core.parse_int_list("16,x", "--R_list")
    with pytest.raises(core.ConfigError):
        core.parse_float_list("0.5,nan", "--K_ratio_list")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "r.json"
    with pytest.raises(RuntimeError):
        with core.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    core.write_json_atomic(target, {"a": 1})
    assert target.read_text().strip().startswith("{") and len(list(tmp_path.iterdir())) == 1


# ---- synthetic data -----------------------------------------------------------------------

def test_block_sizes_and_blockdiag_structure():
    assert block_sizes(20, 6) == [4, 4, 3, 3, 3, 3]
    X = make_synthetic("blockdiag", 20, 14, 0, num_blocks=6, offblock_noise_scale=0.0)
    assert torch.linalg.norm(X).item() == pytest.approx(1.0, rel=1e-6)
    assert X[0, 3].item() == 0 and X[0, 0].item() != 0 and X[19, 13].item() != 0
    assert torch.equal(make_synthetic("random", 5, 6, 3), make_synthetic("random", 5, 6, 3))
    nn = make_synthetic("random", 10, 10, 3, nonneg=True)
    assert nn.min().item() >= 0 and torch.linalg.norm(nn).item() == pytest.approx(1.0, rel=1e-6)
    u = make_synthetic("random", 50, 50, 3, dist="uniform")
    assert (u.abs() <= 1).all()


def test_blockdiag_reproduces_published_matrix():
    # the spec's measured truncated-SVD figures (256 x 256, 6 blocks, seed 42)
    X = make_synthetic("blockdiag", 256, 256, 42)
    assert core.rel_fro(core.truncated_svd(X, 16), X) == pytest.approx(0.8854, abs=6e-5)
    assert core.rel_fro(core.truncated_svd(X, 80), X) == pytest.approx(0.5302, abs=6e-5)
