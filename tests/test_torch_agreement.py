"""cadagrad against torch.optim.Adagrad / SGD (skipped where torch is missing; CI installs it).

PyTorch accumulates with a fused multiply-add, so from the second step on the two differ in the last
bits (docs/rules.rst): compare with a tolerance, except the first step from G = 0, eps outside the root
and no weight decay, which agrees bit for bit with ``fused=True``.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_array

import cadagrad

torch = pytest.importorskip("torch")

TOLERANCE = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


def step_both(make_ours, make_torch, param, grads):
    ours = param.copy()
    theirs = torch.tensor(param.copy(), requires_grad=True)
    opt, topt = make_ours(ours), make_torch([theirs])
    for g in grads:
        opt.step(g)
        theirs.grad = torch.from_numpy(g.copy())
        topt.step()
    return ours, theirs.detach().numpy()


ADAGRAD_CASES = [
    {},
    {"lr_decay": 0.05},
    {"weight_decay": 0.01},
    {"initial_accumulator_value": 0.1, "eps": 1e-7},
    {"maximize": True, "weight_decay": 0.001},
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", ADAGRAD_CASES, ids=lambda o: ",".join(o) or "defaults")
def test_adagrad_agrees_with_torch_within_tolerance(dtype, options, rng):
    param = random_array(rng, (4096,), dtype)
    grads = [random_array(rng, param.shape, dtype) for _ in range(30)]
    ours, theirs = step_both(
        lambda p: cadagrad.Adagrad(p, lr=0.05, **options),
        lambda ps: torch.optim.Adagrad(ps, lr=0.05, **options),
        param,
        grads,
    )
    np.testing.assert_allclose(ours, theirs, **TOLERANCE[dtype])


SGD_CASES = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.3},
    {"momentum": 0.8, "nesterov": True, "weight_decay": 0.01},
    {"maximize": True, "momentum": 0.5},
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", SGD_CASES, ids=lambda o: ",".join(o) or "plain")
def test_sgd_agrees_with_torch_within_tolerance(dtype, options, rng):
    param = random_array(rng, (4096,), dtype)
    grads = [random_array(rng, param.shape, dtype) for _ in range(30)]
    ours, theirs = step_both(
        lambda p: cadagrad.SGD(p, lr=0.01, **options),
        lambda ps: torch.optim.SGD(ps, lr=0.01, **options),
        param,
        grads,
    )
    np.testing.assert_allclose(ours, theirs, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_adagrad_step_is_bitwise_equal_to_torch_fused(dtype, rng):
    param = random_array(rng, (10_000,), dtype)
    grad = random_array(rng, param.shape, dtype)
    ours, theirs = step_both(
        lambda p: cadagrad.Adagrad(p, lr=0.05),
        lambda ps: torch.optim.Adagrad(ps, lr=0.05, fused=True),
        param,
        [grad],
    )
    assert ours.tobytes() == theirs.tobytes()
