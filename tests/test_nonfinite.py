"""skip_if_nonfinite: a NaN or infinity anywhere in any grad skips the whole step, writing nothing."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_bitwise_equal, dtypes, random_array, seeds
from hypothesis import given
from hypothesis import strategies as st

import cadagrad

MAKERS = {
    "adagrad": lambda ps: cadagrad.Adagrad(ps, lr=0.1, weight_decay=0.01),
    "sgd": lambda ps: cadagrad.SGD(ps, lr=0.1, momentum=0.9),
}


def _state(opt):
    arrays = opt.params + (opt.sums if isinstance(opt, cadagrad.Adagrad) else opt.momentum_buffers)
    return [a.tobytes() for a in arrays], opt.step_count


@given(
    sizes=st.lists(st.integers(1, 90_000), min_size=1, max_size=4),
    dtype=dtypes,
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    where=st.floats(0, 1, exclude_max=True),
    which=st.sampled_from(list(MAKERS)),
    seed=seeds,
)
def test_a_nonfinite_grad_skips_the_whole_step(sizes, dtype, bad, where, which, seed):
    rng = np.random.default_rng(seed)
    params = [random_array(rng, (n,), dtype) for n in sizes]
    opt = MAKERS[which](params)
    opt.step([random_array(rng, p.shape, dtype) for p in params])     # state is not trivially zero
    grads = [random_array(rng, p.shape, dtype) for p in params]
    tensor = int(where * len(grads))
    grads[tensor][int(where * 1e6) % grads[tensor].size] = bad
    before = _state(opt)
    assert opt.step(grads, skip_if_nonfinite=True) is False
    assert _state(opt) == before


@pytest.mark.parametrize("which", list(MAKERS))
def test_finite_grads_step_exactly_as_without_the_check(which, rng):
    params = [random_array(rng, (70_001,), np.float32), random_array(rng, (13,), np.float64)]
    grads = [[random_array(rng, p.shape, p.dtype) for p in params] for _ in range(3)]
    grads[1][0][5] = np.finfo(np.float32).max          # extreme but finite values are not skipped
    grads[2][1][0] = np.finfo(np.float64).tiny / 4     # nor are subnormals
    checked = MAKERS[which]([p.copy() for p in params])
    plain = MAKERS[which]([p.copy() for p in params])
    for g in grads:
        assert checked.step(g, skip_if_nonfinite=True) is True
        plain.step(g)
    for a, b in zip(checked.params, plain.params):
        assert_bitwise_equal(a, b)
    assert checked.step_count == plain.step_count == 3


def test_by_default_nonfinite_values_propagate_like_numpy():
    p = np.ones(3, dtype=np.float32)
    assert cadagrad.Adagrad(p).step(np.array([1.0, np.nan, 1.0], dtype=np.float32)) is True
    assert np.isnan(p[1]) and np.isfinite(p[0])


def test_functional_steps_skip_too():
    p, s = np.ones(4), np.zeros(4)
    g = np.array([1.0, 2.0, np.inf, 0.0])
    assert cadagrad.adagrad_step(p, g, s, step=1, skip_if_nonfinite=True) is False
    assert cadagrad.sgd_step(p, g, step=1, lr=0.1, skip_if_nonfinite=True) is False
    assert (p == 1).all() and (s == 0).all()
