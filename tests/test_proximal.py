"""ProximalAdagrad and AdagradDA against cadagrad.reference, bit for bit: dense and row steps, every option,
both dtypes, every kernel variant the CPU runs, several thread counts; exact zeros, state and lazy state."""

from __future__ import annotations

import contextlib
import inspect

import numpy as np
import pytest
from conftest import DTYPES, assert_bitwise_equal, dtypes, random_array, seeds, shapes
from hypothesis import given
from hypothesis import strategies as st

import cadagrad
from cadagrad import _checks, _kernels, _state, reference

KINDS = {
    "proximal": (cadagrad.ProximalAdagrad, reference.ProximalAdagrad),
    "da": (cadagrad.AdagradDA, reference.AdagradDA),
}
kinds = st.sampled_from(list(KINDS))


@contextlib.contextmanager
def lazy_everywhere():
    """Every state buffer built inside is lazy, whatever its size (as in test_lazy_state.py)."""
    saved = _state.LAZY_BYTES
    _state.LAZY_BYTES = 0
    try:
        yield
    finally:
        _state.LAZY_BYTES = saved


def proximal_options() -> st.SearchStrategy[dict]:
    """Every option, l1 and l2 each zero or not (tiny to large), the accumulator's start value too."""
    penalty = st.just(0.0) | st.floats(1e-6, 1e-3) | st.floats(1e-3, 2.0)
    return st.fixed_dictionaries(
        {
            "lr": st.floats(1e-4, 2.0),
            "l1": penalty,
            "l2": penalty,
            "initial_accumulator_value": st.sampled_from([0.1, 1e-6, 1.0]) | st.floats(1e-3, 10.0),
        }
    )


def sparse_array(rng, shape, dtype):
    """Random values with exact zeros of both signs mixed in (zero grads, params at -0.0)."""
    a = random_array(rng, shape, dtype)
    flat = a.reshape(-1)
    flat[rng.random(flat.size) < 0.2] = 0.0
    flat[rng.random(flat.size) < 0.1] = -0.0
    return a


def assert_same(ours, ref, what=""):
    for i, (a, b) in enumerate(zip(ours.params, ref.params)):
        assert_bitwise_equal(a, b, f"{what} params[{i}]")
    for i, (a, b) in enumerate(zip(ours.sums, ref.sums)):
        assert_bitwise_equal(a, b, f"{what} sums[{i}]")
    if isinstance(ours, cadagrad.AdagradDA):
        for i, (a, b) in enumerate(zip(ours.grad_sums, ref.grad_sums)):
            assert_bitwise_equal(a, b, f"{what} grad_sums[{i}]")
    assert ours.step_count == ref.step_count


@given(
    kind=kinds, shape=shapes, dtype=dtypes, options=proximal_options(), seed=seeds, steps=st.integers(1, 12)
)
def test_dense_steps_match_reference_bitwise(kind, shape, dtype, options, seed, steps):
    rng = np.random.default_rng(seed)
    cls, ref_cls = KINDS[kind]
    param = sparse_array(rng, shape, dtype)
    ours, ref = cls(param.copy(), **options), ref_cls(param.copy(), **options)
    for _ in range(steps):
        g = sparse_array(rng, shape, dtype)
        assert ours.step(g) is True
        ref.step(g)
    assert_same(ours, ref)


@given(
    kind=kinds,
    shape=st.tuples(st.integers(1, 200), st.integers(1, 24)),
    k=st.integers(0, 300),
    spread=st.integers(1, 200),
    dtype=dtypes,
    index_dtype=st.sampled_from([np.int32, np.int64]),
    options=proximal_options(),
    assume_unique=st.booleans(),
    seed=seeds,
)
def test_row_steps_with_duplicates_match_reference_bitwise(
    kind, shape, k, spread, dtype, index_dtype, options, assume_unique, seed
):
    rng = np.random.default_rng(seed)
    cls, ref_cls = KINDS[kind]
    param = sparse_array(rng, shape, dtype)
    ours, ref = cls(param.copy(), **options), ref_cls(param.copy(), **options)
    for _ in range(3):
        if assume_unique:
            idx = rng.permutation(shape[0])[: min(k, shape[0])].astype(index_dtype)
        else:
            idx = rng.integers(0, max(1, min(shape[0], spread)), size=k).astype(index_dtype)
        rows = sparse_array(rng, (len(idx), shape[1]), dtype)
        ours.step_rows(idx, rows, assume_unique=assume_unique)
        ref.step_rows(idx, rows, assume_unique=assume_unique)
        dense = sparse_array(rng, shape, dtype)          # dense and row steps interleave; T counts both
        ours.step(dense)
        ref.step(dense)
    assert_same(ours, ref)
    assert ours.step_count == 6


@given(kind=kinds, sizes=st.lists(st.integers(0, 700), min_size=1, max_size=6), seed=seeds)
def test_param_lists_with_mixed_dtypes_match_reference_bitwise(kind, sizes, seed):
    rng = np.random.default_rng(seed)
    cls, ref_cls = KINDS[kind]
    params = [sparse_array(rng, (n,), DTYPES[i % 2]) for i, n in enumerate(sizes)]
    ours = cls([p.copy() for p in params], lr=0.3, l1=0.01, l2=0.1)
    ref = ref_cls([p.copy() for p in params], lr=0.3, l1=0.01, l2=0.1)
    for _ in range(4):
        grads = [sparse_array(rng, p.shape, p.dtype) for p in params]
        ours.step(grads)
        ref.step(grads)
    assert_same(ours, ref)


ISA_CASES = [
    pytest.param(isa, kind, threads, id=f"{isa}-{kind}-{threads}t")
    for isa in _kernels.available_variants()
    for kind in KINDS
    for threads in (1, 2, 3)
]


@pytest.mark.parametrize("isa, kind, threads", ISA_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_kernel_variant_and_thread_count_matches_reference(isa, kind, threads, dtype, rng):
    """Each variant the CPU runs, dense over several tensors split mid-tensor and rows over a big batch."""
    module = _kernels.available_variants()[isa]
    sizes = (40_000, 3, 70_001, 0, 25_000)
    table = (3000, 40)
    for l1, l2 in ((0.0, 0.0), (0.05, 0.0), (0.0, 0.3), (0.02, 0.1)):
        params = [sparse_array(rng, (n,), dtype) for n in sizes] + [sparse_array(rng, table, dtype)]
        mine = [p.copy() for p in params]
        sums = [np.full_like(p, 0.1) for p in params]
        grad_sums = [np.zeros_like(p) for p in params]
        if kind == "proximal":
            engine = module.StepEngine(mine, sums, False, None, 0)
            ref = reference.ProximalAdagrad([p.copy() for p in params], 0.1, l1=l1, l2=l2)
        else:
            engine = module.StepEngine(mine, sums, False, None, 0, None, grad_sums)
            ref = reference.AdagradDA([p.copy() for p in params], 0.1, l1=l1, l2=l2)
        for _ in range(2):
            grads = [sparse_array(rng, p.shape, dtype) for p in params]
            if kind == "proximal":
                engine.proximal_adagrad(grads, 0.1, l1, l2, threads)
            else:
                engine.adagrad_da(grads, 0.1, l1, l2, threads)
            ref.step(grads)
            idx = rng.integers(0, table[0] // 2, size=4000)        # 4,000 x 40: enough work for 3 threads
            rows = sparse_array(rng, (4000, table[1]), dtype)
            last = len(params) - 1
            if kind == "proximal":
                assert engine.proximal_adagrad_rows(last, idx, rows, False, 0.1, l1, l2, threads) == -1
            else:
                assert engine.adagrad_da_rows(last, idx, rows, False, 0.1, l1, l2, threads) == -1
            ref.step_rows(idx, rows, param=last)
        for i, (a, b) in enumerate(zip(mine, ref.params)):
            assert_bitwise_equal(a, b, f"{isa} l1={l1} l2={l2} params[{i}]")
        for i, (a, b) in enumerate(zip(sums, ref.sums)):
            assert_bitwise_equal(a, b, f"{isa} sums[{i}]")
        if kind == "da":
            for i, (a, b) in enumerate(zip(grad_sums, ref.grad_sums)):
                assert_bitwise_equal(a, b, f"{isa} grad_sums[{i}]")


@pytest.mark.parametrize("dtype", DTYPES)
def test_l1_gives_exact_zeros_with_the_documented_signs(dtype, rng):
    n = 200_000
    param = random_array(rng, (n,), dtype) * dtype(0.01)
    prox = cadagrad.ProximalAdagrad(param.copy(), lr=0.1, l1=1.0)
    da = cadagrad.AdagradDA(np.full(n, np.nan, dtype), lr=0.1, l1=1.0)     # p is written, never read
    plain = cadagrad.ProximalAdagrad(param.copy(), lr=0.1)
    for _ in range(3):
        g = random_array(rng, (n,), dtype)
        for opt in (prox, da, plain):
            opt.step(g)
    for opt in (prox, da):
        p = opt.params[0]
        assert 0.05 < np.mean(p == 0) < 1.0, type(opt).__name__
        assert not np.isnan(p).any()
    assert np.mean(plain.params[0] == 0) < 0.01
    # AdagradDA: -0.0 where S >= 0, +0.0 where S < 0 (the rules page)
    p, S = da.params[0], da.grad_sums[0]
    zero = p == 0
    assert np.array_equal(np.signbit(p[zero]), S[zero] >= 0)
    # ProximalAdagrad: -0.0 exactly where v < 0, which a reference step reproduces bit for bit
    ref = reference.ProximalAdagrad(param.copy(), lr=0.1, l1=1.0)
    ours = cadagrad.ProximalAdagrad(param.copy(), lr=0.1, l1=1.0)
    g = random_array(rng, (n,), dtype)
    ref.step(g)
    ours.step(g)
    assert_bitwise_equal(ours.params[0], ref.params[0])
    assert np.signbit(ours.params[0][ours.params[0] == 0]).any()


def test_sign_of_zero_and_max_follow_numpy_at_signed_zeros():
    """A param at -0.0 with a zero gradient: v = -0.0, sign(v) = +0.0 (np.sign), so the result is +0.0."""
    for dtype in DTYPES:
        p = np.array([-0.0, 0.0, -0.0, 1e-3], dtype=dtype)
        g = np.array([0.0, 0.0, -0.0, 0.0], dtype=dtype)
        ours = cadagrad.ProximalAdagrad(p.copy(), lr=0.1, l1=0.5)
        ref = reference.ProximalAdagrad(p.copy(), lr=0.1, l1=0.5)
        ours.step(g)
        ref.step(g)
        assert_bitwise_equal(ours.params[0], ref.params[0])
        assert not np.signbit(ours.params[0][:3]).any()
        s = np.zeros(4, dtype)
        da = cadagrad.AdagradDA(s.copy(), lr=0.1, l1=0.5)
        da_ref = reference.AdagradDA(s.copy(), lr=0.1, l1=0.5)
        da.step(g)
        da_ref.step(g)
        assert_bitwise_equal(da.params[0], da_ref.params[0])
        assert np.signbit(da.params[0]).all()                # S = +0.0: -sign(+0) * ... = -0.0


def test_adagrad_da_uses_t_of_row_steps_too(rng):
    """T is the optimizer's step count: a row step advances it, and the next dense step uses T = 2."""
    param = random_array(rng, (10, 4), np.float32)
    ours = cadagrad.AdagradDA(param.copy(), lr=0.5, l1=0.3, l2=0.2)
    ref = reference.AdagradDA(param.copy(), lr=0.5, l1=0.3, l2=0.2)
    rows = random_array(rng, (2, 4), np.float32)
    ours.step_rows(np.array([1, 1]), rows)
    ref.step_rows(np.array([1, 1]), rows)
    g = random_array(rng, (10, 4), np.float32)
    ours.step(g)
    ref.step(g)
    assert ours.step_count == 2
    assert_same(ours, ref)


@pytest.mark.parametrize("kind", list(KINDS))
def test_untouched_rows_and_their_state_do_not_change(kind, rng):
    cls, _ = KINDS[kind]
    param = random_array(rng, (1000, 8), np.float32)
    opt = cls(param, lr=0.1, l1=0.01, l2=0.01)
    before = param.copy()
    states_before = [s.copy() for s in opt.sums + getattr(opt, "grad_sums", [])]
    idx = np.array([3, 999, 3, 500])
    opt.step_rows(idx, random_array(rng, (4, 8), np.float32))
    untouched = np.setdiff1d(np.arange(1000), idx)
    assert_bitwise_equal(param[untouched], before[untouched])
    for s, old in zip(opt.sums + getattr(opt, "grad_sums", []), states_before):
        assert_bitwise_equal(s[untouched], old[untouched])
    assert not np.array_equal(param[[3, 500, 999]], before[[3, 500, 999]])


@pytest.mark.parametrize("kind", list(KINDS))
def test_state_dict_save_and_load_continue_identically(kind, rng, tmp_path):
    cls, _ = KINDS[kind]
    params = [random_array(rng, (50,), np.float32), random_array(rng, (6, 3), np.float64)]
    grads = [[random_array(rng, p.shape, p.dtype) for p in params] for _ in range(6)]
    a_params = [p.copy() for p in params]
    a = cls(a_params, lr=0.2, l1=0.01, l2=0.05, initial_accumulator_value=0.3)
    for g in grads[:3]:
        a.step(g)
    a.step_rows(np.array([0, 5, 0]), random_array(rng, (3, 3), np.float64), param=1)
    saved = a.state_dict()
    assert saved["optimizer"] == cls.__name__ and saved["step"] == 4
    assert set(saved) >= {"sum"} and (("grad_sum" in saved) == (kind == "da"))
    a.save(tmp_path / "opt.npz")
    b_params, c_params = [p.copy() for p in a_params], [p.copy() for p in a_params]
    b = cls(b_params, lr=0.9)            # hyperparameters come from the state dict
    b.load_state_dict(saved)
    c = cls(c_params, lr=0.9)
    c.load(tmp_path / "opt.npz")
    for opt in (b, c):
        assert (opt.step_count, opt.lr, opt.l1, opt.initial_accumulator_value) == (4, 0.2, 0.01, 0.3)
    for g in grads[3:]:
        for opt in (a, b, c):
            opt.step(g)
    for x, y, z in zip(a_params, b_params, c_params):
        assert_bitwise_equal(x, y)
        assert_bitwise_equal(x, z)
    saved["sum"][0][:] = 123.0                 # the state dict holds copies
    assert not np.any(a.sums[0] == 123.0)


def test_a_checkpoint_of_one_optimizer_does_not_load_into_the_other(rng, tmp_path):
    param = random_array(rng, (5, 4), np.float32)
    cadagrad.AdagradDA(param.copy(), lr=0.1).save(tmp_path / "da.npz")
    cadagrad.ProximalAdagrad(param.copy(), lr=0.1).save(tmp_path / "prox.npz")
    with pytest.raises(ValueError, match="^state_dict"):
        cadagrad.ProximalAdagrad(param.copy(), lr=0.1).load(tmp_path / "da.npz")
    with pytest.raises(ValueError, match="unreadable cadagrad checkpoint"):
        cadagrad.AdagradDA(param.copy(), lr=0.1).load(tmp_path / "prox.npz")


@given(
    kind=kinds,
    shape=st.tuples(st.integers(1, 60), st.integers(1, 9)),
    k=st.integers(0, 40),
    dtype=dtypes,
    options=proximal_options(),
    plan=st.lists(st.sampled_from(["rows", "dense", "state_dict"]), min_size=1, max_size=6),
    seed=seeds,
)
def test_lazy_state_matches_reference_bitwise(kind, shape, k, dtype, options, plan, seed):
    """Lazy accumulators get the exact initial value on first touch; the gradient sums start as zero pages."""
    rng = np.random.default_rng(seed)
    cls, ref_cls = KINDS[kind]
    param = random_array(rng, shape, dtype)
    with lazy_everywhere():
        ours = cls(param.copy(), **options)
    ref = ref_cls(param.copy(), **options)
    assert ours._buffers[0].pending
    for what in ["rows", *plan, "rows"]:
        if what == "rows":
            idx = rng.integers(0, shape[0] // 2 + 1, size=k)
            rows = random_array(rng, (k, shape[1]), dtype)
            ours.step_rows(idx, rows)
            ref.step_rows(idx, rows)
        elif what == "dense":
            g = random_array(rng, shape, dtype)
            ours.step(g)
            ref.step(g)
        else:
            saved = ours.state_dict()                    # reads without filling
            assert_bitwise_equal(saved["sum"][0], ref.sums[0], "state_dict sum")
            if kind == "da":
                assert_bitwise_equal(saved["grad_sum"][0], ref.grad_sums[0], "state_dict grad_sum")
    assert_same(ours, ref)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_big_table_takes_memory_for_touched_rows_only(kind, rng):
    cls, _ = KINDS[kind]
    table = np.zeros((200_000, 16), dtype=np.float32)          # 12.8 MB per state: lazy
    opt = cls(table, lr=0.1, l1=0.01)
    idx = np.array([5, 70_000, 5])
    opt.step_rows(idx, random_array(rng, (3, 16), np.float32))
    buffers = opt._buffers + (opt._buffers2 or [])
    assert all(b.pending for b in buffers)
    assert not np.any(opt._buffers[0].array[1000:2000])          # untouched rows: still zero pages
    assert np.all(opt._buffers[0].array[[5, 70_000]] > 0.1)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_skip_if_nonfinite_writes_nothing(kind, bad, rng):
    cls, _ = KINDS[kind]
    params = [random_array(rng, (300,), np.float32), random_array(rng, (7, 5), np.float64)]
    opt = cls(params, lr=0.1, l1=0.01)
    opt.step([random_array(rng, p.shape, p.dtype) for p in params])
    grads = [random_array(rng, p.shape, p.dtype) for p in params]
    grads[1][3, 2] = bad
    before = [a.tobytes() for a in params + opt.sums + getattr(opt, "grad_sums", [])]
    assert opt.step(grads, skip_if_nonfinite=True) is False
    assert [a.tobytes() for a in params + opt.sums + getattr(opt, "grad_sums", [])] == before
    assert opt.step_count == 1
    grads[1][3, 2] = 0.0
    assert opt.step(grads, skip_if_nonfinite=True) is True


@given(kind=kinds, dtype=dtypes, options=proximal_options(), seed=seeds, steps=st.integers(1, 6))
def test_functional_steps_match_the_optimizers(kind, dtype, options, seed, steps):
    rng = np.random.default_rng(seed)
    params = [random_array(rng, (n,), dtype) for n in (5, 17)]
    grads = [[random_array(rng, p.shape, dtype) for p in params] for _ in range(steps)]
    own = [p.copy() for p in params]
    sums = [np.full_like(p, options["initial_accumulator_value"]) for p in params]
    grad_sums = [np.zeros_like(p) for p in params]
    kw = {k: v for k, v in options.items() if k != "initial_accumulator_value"}
    for t, g in enumerate(grads, start=1):
        if kind == "proximal":
            assert cadagrad.proximal_adagrad_step(own, g, sums, **kw)
        else:
            assert cadagrad.adagrad_da_step(own, g, grad_sums, sums, step=t, **kw)
    opt = KINDS[kind][0]([p.copy() for p in params], **options)
    for g in grads:
        opt.step(g)
    for a, b in zip(own + sums, opt.params + opt.sums):
        assert_bitwise_equal(a, b)
    if kind == "da":
        for a, b in zip(grad_sums, opt.grad_sums):
            assert_bitwise_equal(a, b)


@pytest.mark.parametrize("kind", list(KINDS))
def test_changing_lr_l1_l2_between_steps_takes_effect(kind, rng):
    cls, ref_cls = KINDS[kind]
    p = random_array(rng, (100,), np.float64)
    ours, ref = cls(p.copy(), lr=0.1), ref_cls(p.copy(), lr=0.1)
    for lr, l1, l2 in ((0.1, 0.0, 0.0), (0.05, 0.01, 0.0), (0.2, 0.0, 0.5)):
        for opt in (ours, ref):
            opt.lr, opt.l1, opt.l2 = lr, l1, l2
        g = random_array(rng, p.shape, p.dtype)
        ours.step(g)
        ref.step(g)
    assert_same(ours, ref)


@pytest.mark.parametrize("kind", list(KINDS))
def test_reference_has_the_same_signature_and_defaults(kind):
    cls, ref_cls = KINDS[kind]
    ours, ref = inspect.signature(cls), inspect.signature(ref_cls)
    assert list(ours.parameters) == list(ref.parameters)
    for key, param in ours.parameters.items():
        assert param.default == ref.parameters[key].default, key
        assert param.kind == ref.parameters[key].kind, key
    assert ours.parameters["lr"].default is inspect.Parameter.empty
    assert ours.parameters["initial_accumulator_value"].default == _checks.PROXIMAL_INITIAL_ACCUMULATOR == 0.1


@pytest.mark.parametrize("isa", list(_kernels.available_variants()))
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_large_dual_averaging_step_streams_its_params_with_the_same_bits(isa, dtype, rng):
    """From 16 MiB on, a dense step writes the params with non-temporal stores, block by block; a param
    that starts off a 16-byte boundary and ends mid-block, a grad that is its own param and 1 or 3
    threads give the reference's bits."""
    module = _kernels.available_variants()[isa]
    n = (1 << 24) // np.dtype(dtype).itemsize + 1001
    base = sparse_array(rng, (n + 1,), dtype)
    for threads, own_grad in ((1, False), (3, True)):
        param = base[1:]                                       # 4 or 8 bytes past the allocation's start
        mine = param.copy() if own_grad else base.copy()[1:]
        sums, grad_sums = np.full(n, 0.1, dtype), np.zeros(n, dtype)
        engine = module.StepEngine([mine], [sums], True, None, 0, None, [grad_sums])
        ref = reference.AdagradDA(param.copy(), 0.1, l1=0.01, l2=0.1)
        for _ in range(2):
            g = mine if own_grad else sparse_array(rng, (n,), dtype)
            ref_g = ref.params[0].copy() if own_grad else g
            engine.adagrad_da(g, 0.1, 0.01, 0.1, threads)
            ref.step(ref_g)
        assert_bitwise_equal(mine, ref.params[0], f"{isa} {threads} threads params")
        assert_bitwise_equal(grad_sums, ref.grad_sums[0], f"{isa} grad_sums")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kind, options, steps, expected",
    [
        # Values from TensorFlow's own unit tests of ProximalAdagradOptimizer and AdagradDAOptimizer
        # (lr 3.0, initial accumulator 0.1, params [1, 2] and [4, 3], grads [0.1, 0.2] and [0.01, 0.02]).
        ("proximal", {"l1": 0.001}, 10, ([-6.663634, -9.190331], [2.959304, 1.029232])),
        ("da", {}, 1, ([-0.904534, -1.603567], [-0.094821, -0.189358])),
        ("da", {"l1": 0.001}, 1, ([-0.895489, -1.595550], [-0.085339, -0.179890])),
        ("da", {"l1": 0.001, "l2": 2.0}, 1, ([-0.046907, -0.093659], [-0.004275, -0.009023])),
    ],
)
def test_agrees_with_tensorflows_published_values(dtype, kind, options, steps, expected):
    params = [np.array([1.0, 2.0], dtype), np.array([4.0, 3.0], dtype)]
    opt = KINDS[kind][0](params, lr=3.0, initial_accumulator_value=0.1, **options)
    for _ in range(steps):
        opt.step([np.array([0.1, 0.2], dtype), np.array([0.01, 0.02], dtype)])
    for param, values in zip(params, expected):
        np.testing.assert_allclose(param, values, rtol=1e-5, atol=1e-6)
