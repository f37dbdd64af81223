"""The compiled optimizers against cadagrad.reference, bit for bit, for every option and both dtypes."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from conftest import (
    DTYPES,
    adagrad_options,
    assert_bitwise_equal,
    dtypes,
    random_array,
    seeds,
    sgd_options,
    shapes,
)
from hypothesis import given
from hypothesis import strategies as st

import cadagrad
from cadagrad import _checks, _kernels, reference


def run_both(make_compiled, make_reference, params_list, grads_seq):
    """Step copies of the params with both implementations; return the two optimizers."""
    compiled_params = [p.copy() for p in params_list]
    reference_params = [p.copy() for p in params_list]
    compiled = make_compiled(compiled_params)
    ref = make_reference(reference_params)
    for grads in grads_seq:
        compiled.step(grads)
        ref.step(grads)
    return compiled, ref


def assert_same_state(compiled, ref):
    for i, (a, b) in enumerate(zip(compiled.params, ref.params)):
        assert_bitwise_equal(a, b, f"params[{i}]")
    assert compiled.step_count == ref.step_count


@given(shape=shapes, dtype=dtypes, options=adagrad_options(), seed=seeds, steps=st.integers(1, 12))
def test_adagrad_matches_reference_bitwise(shape, dtype, options, seed, steps):
    rng = np.random.default_rng(seed)
    param = random_array(rng, shape, dtype)
    grads = [random_array(rng, shape, dtype) for _ in range(steps)]
    compiled, ref = run_both(
        lambda ps: cadagrad.Adagrad(ps[0], **options),
        lambda ps: reference.Adagrad(ps[0], **options),
        [param],
        grads,
    )
    assert_same_state(compiled, ref)
    assert_bitwise_equal(compiled.sums[0], ref.sums[0], "sum")


@given(shape=shapes, dtype=dtypes, options=sgd_options(), seed=seeds, steps=st.integers(1, 12))
def test_sgd_matches_reference_bitwise(shape, dtype, options, seed, steps):
    rng = np.random.default_rng(seed)
    param = random_array(rng, shape, dtype)
    grads = [random_array(rng, shape, dtype) for _ in range(steps)]
    compiled, ref = run_both(
        lambda ps: cadagrad.SGD(ps[0], **options),
        lambda ps: reference.SGD(ps[0], **options),
        [param],
        grads,
    )
    assert_same_state(compiled, ref)
    if options["momentum"] != 0:
        assert_bitwise_equal(compiled.momentum_buffers[0], ref.momentum_buffers[0], "momentum_buffer")
    else:
        assert compiled.momentum_buffers is None


@given(
    sizes=st.lists(st.integers(0, 700), min_size=1, max_size=6),
    mixed=st.booleans(),
    adagrad=st.booleans(),
    seed=seeds,
)
def test_param_lists_with_mixed_dtypes_match_reference_bitwise(sizes, mixed, adagrad, seed):
    rng = np.random.default_rng(seed)
    params = [
        random_array(rng, (n,), DTYPES[i % 2] if mixed else np.float32) for i, n in enumerate(sizes)
    ]
    grads = [[random_array(rng, p.shape, p.dtype) for p in params] for _ in range(4)]
    if adagrad:
        kw = {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 0.01}
        compiled, ref = run_both(
            lambda ps: cadagrad.Adagrad(ps, **kw), lambda ps: reference.Adagrad(ps, **kw), params, grads
        )
    else:
        kw = {"lr": 0.05, "momentum": 0.9, "nesterov": True}
        compiled, ref = run_both(
            lambda ps: cadagrad.SGD(ps, **kw), lambda ps: reference.SGD(ps, **kw), params, grads
        )
    assert_same_state(compiled, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("adagrad", [True, False], ids=["adagrad", "sgd"])
def test_result_is_independent_of_thread_count(dtype, adagrad, rng):
    # 300,000 elements: above the parallel cut-off, split unevenly between 1, 2, 3 and 7 threads.
    size = 300_001
    param = random_array(rng, (size,), dtype)
    grads = [random_array(rng, (size,), dtype) for _ in range(3)]
    results = []
    for threads in (1, 2, 3, 7):
        p = param.copy()
        if adagrad:
            opt = cadagrad.Adagrad(p, lr=0.1, weight_decay=0.01, num_threads=threads)
        else:
            opt = cadagrad.SGD(p, lr=0.1, momentum=0.9, num_threads=threads)
        for g in grads:
            opt.step(g)
        results.append(p)
    ref = reference.Adagrad(param, lr=0.1, weight_decay=0.01) if adagrad else reference.SGD(
        param, lr=0.1, momentum=0.9
    )
    for g in grads:
        ref.step(g)
    for threads, p in zip((1, 2, 3, 7), results):
        assert_bitwise_equal(p, param, f"{threads} threads")


def test_many_tensors_over_the_parallel_cutoff_match_reference(rng):
    # Tensors of odd sizes whose concatenation is split between threads mid-tensor.
    params = [random_array(rng, (n,), np.float32) for n in (40_000, 3, 70_001, 0, 25_000, 90_007)]
    grads = [[random_array(rng, p.shape, p.dtype) for p in params] for _ in range(3)]
    compiled, ref = run_both(
        lambda ps: cadagrad.Adagrad(ps, lr=0.1, num_threads=4),
        lambda ps: reference.Adagrad(ps, lr=0.1),
        params,
        grads,
    )
    assert_same_state(compiled, ref)


@pytest.mark.parametrize("isa", list(_kernels.available_variants()))
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_built_kernel_variant_matches_reference(isa, dtype, rng):
    """Each ISA variant the CPU runs (not only the one picked at import) gives the reference's bits."""
    module = _kernels.available_variants()[isa]
    size = 100_003
    param = random_array(rng, (size,), dtype)
    for options in ({}, {"eps_inside_sqrt": True, "weight_decay": 0.1, "maximize": True, "lr_decay": 0.5}):
        p, s = param.copy(), np.zeros_like(param)
        ref = reference.Adagrad(param.copy(), lr=0.1, **options)
        engine = module.StepEngine([p], [s], True, None, 0)
        hyper = {"lr_decay": 0.0, "weight_decay": 0.0, "eps": 1e-10, "eps_inside_sqrt": False, "maximize": False}
        hyper.update(options)
        for _ in range(3):
            g = random_array(rng, (size,), dtype)
            engine.adagrad(g, 0.1, hyper["lr_decay"], hyper["weight_decay"], hyper["eps"],
                           hyper["eps_inside_sqrt"], hyper["maximize"], 2)
            ref.step(g)
        assert_bitwise_equal(p, ref.params[0], f"{isa} params")
        assert_bitwise_equal(s, ref.sums[0], f"{isa} sums")
    p, b = param.copy(), np.zeros_like(param)
    ref = reference.SGD(param.copy(), lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)
    engine = module.StepEngine([p], [b], True, None, 0)
    for _ in range(3):
        g = random_array(rng, (size,), dtype)
        engine.sgd(g, 0.1, 0.01, 0.9, 0.1, False, False, 2)
        ref.step(g)
    assert_bitwise_equal(p, ref.params[0], f"{isa} sgd params")
    assert_bitwise_equal(b, ref.momentum_buffers[0], f"{isa} momentum buffer")


@given(dtype=dtypes, options=adagrad_options(), seed=seeds, steps=st.integers(1, 6))
def test_functional_adagrad_step_matches_optimizer(dtype, options, seed, steps):
    rng = np.random.default_rng(seed)
    params = [random_array(rng, (n,), dtype) for n in (5, 17)]
    grads = [[random_array(rng, p.shape, dtype) for p in params] for _ in range(steps)]
    own = [p.copy() for p in params]
    sums = [np.full_like(p, options["initial_accumulator_value"]) for p in params]
    kw = {k: v for k, v in options.items() if k != "initial_accumulator_value"}
    for t, g in enumerate(grads, start=1):
        cadagrad.adagrad_step(own, g, sums, step=t, **kw)
    opt = cadagrad.Adagrad([p.copy() for p in params], **options)
    for g in grads:
        opt.step(g)
    for a, b in zip(own + sums, opt.params + opt.sums):
        assert_bitwise_equal(a, b)


@given(dtype=dtypes, options=sgd_options(), seed=seeds, steps=st.integers(1, 6))
def test_functional_sgd_step_matches_optimizer(dtype, options, seed, steps):
    rng = np.random.default_rng(seed)
    param = random_array(rng, (33,), dtype)
    grads = [random_array(rng, param.shape, dtype) for _ in range(steps)]
    own = param.copy()
    buf = np.full_like(param, np.nan)        # the first step must overwrite whatever is there
    for t, g in enumerate(grads, start=1):
        cadagrad.sgd_step(own, g, buf, step=t, **options)
    opt = cadagrad.SGD(param.copy(), **options)
    for g in grads:
        opt.step(g)
    assert_bitwise_equal(own, opt.params[0])


def test_grad_that_is_the_param_matches_reference(rng):
    for dtype in DTYPES:
        p = random_array(rng, (1000,), dtype)
        q = p.copy()
        opt, ref = cadagrad.Adagrad(p, lr=0.1), reference.Adagrad(q, lr=0.1)
        for _ in range(3):
            opt.step(p)
            ref.step(q)
        assert_bitwise_equal(p, q)


def test_eps_zero_gives_nan_like_numpy():
    """eps = 0 with G = 0 and g = 0 is 0/0: NaN, exactly as the NumPy reference (documented)."""
    p = np.ones(4, dtype=np.float32)
    q = p.copy()
    g = np.array([0.0, 1.0, 0.0, -2.0], dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        cadagrad.Adagrad(p, lr=0.1, eps=0.0).step(g)
        reference.Adagrad(q, lr=0.1, eps=0.0).step(g)
    assert np.isnan(p[0]) and np.isnan(p[2])
    assert_bitwise_equal(p, q)


def test_state_dict_round_trip_continues_identically(rng):
    params = [random_array(rng, (50,), np.float32), random_array(rng, (4, 3), np.float64)]
    grads = [[random_array(rng, p.shape, p.dtype) for p in params] for _ in range(6)]
    for make in (
        lambda ps: cadagrad.Adagrad(ps, lr=0.1, lr_decay=0.1),
        lambda ps: cadagrad.SGD(ps, lr=0.1, momentum=0.9, dampening=0.2),
    ):
        a_params = [p.copy() for p in params]
        a = make(a_params)
        for g in grads[:3]:
            a.step(g)
        saved = a.state_dict()
        b_params = [p.copy() for p in a_params]
        b = make(b_params)
        b.load_state_dict(saved)
        assert b.step_count == 3
        for g in grads[3:]:
            a.step(g)
            b.step(g)
        for x, y in zip(a_params, b_params):
            assert_bitwise_equal(x, y)


def test_state_dict_arrays_are_copies(rng):
    p = random_array(rng, (10,), np.float32)
    opt = cadagrad.Adagrad(p)
    saved = opt.state_dict()
    saved["sum"][0][:] = 123.0
    assert not np.any(opt.sums[0] == 123.0)


@pytest.mark.parametrize("name", ["Adagrad", "SGD"])
def test_reference_has_the_same_signature_and_defaults(name):
    compiled = inspect.signature(getattr(cadagrad, name))
    ref = inspect.signature(getattr(reference, name))
    assert list(compiled.parameters) == list(ref.parameters)
    for key, param in compiled.parameters.items():
        assert param.default == ref.parameters[key].default, key
        assert param.kind == ref.parameters[key].kind, key
    assert cadagrad.Adagrad.__init__.__defaults__[0] == _checks.ADAGRAD_LR


def test_changing_lr_between_steps_takes_effect(rng):
    p = random_array(rng, (100,), np.float64)
    q = p.copy()
    opt, ref = cadagrad.Adagrad(p, lr=0.1), reference.Adagrad(q, lr=0.1)
    for lr in (0.1, 0.05, 0.01):
        opt.lr = lr
        ref.lr = lr
        g = random_array(rng, p.shape, p.dtype)
        opt.step(g)
        ref.step(g)
    assert_bitwise_equal(p, q)


def test_num_threads_setting_round_trips():
    before = cadagrad.get_num_threads()
    try:
        cadagrad.set_num_threads(1)
        assert cadagrad.get_num_threads() == 1
    finally:
        cadagrad.set_num_threads(None)
    assert cadagrad.get_num_threads() == before


def test_build_info_reports_the_build():
    info = cadagrad.build_info()
    assert info["version"] == cadagrad.__version__
    assert isinstance(info["openmp"], bool)
    assert info["isa"] in info["variants"]
    assert "-ffp-contract=off" in info["compile_flags"] and "-fno-math-errno" in info["compile_flags"]
    assert "-ffast-math" not in info["compile_flags"]
