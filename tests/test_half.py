"""float16 and bfloat16 params: float32 state, the float32 rule, one round to nearest even per step.

The kernels' rounding helpers are checked bit for bit against NumPy's and ml_dtypes' casts; every kernel
variant, thread count and option against cadagrad.reference; and the reference against a float32
computation written out here.
"""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest
from conftest import adagrad_options, assert_bitwise_equal, random_array, seeds, sgd_options
from hypothesis import given
from hypothesis import strategies as st

import cadagrad
from cadagrad import _kernels, reference

HALF = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
KIND = {HALF[0]: 2, HALF[1]: 3}
half_dtypes = st.sampled_from(HALF)


def edgy_array(rng: np.random.Generator, shape: tuple, dtype) -> np.ndarray:
    """Random values in ``dtype``, a fifth of them near its largest finite value or among its subnormals."""
    dtype = np.dtype(dtype)
    values = random_array(rng, shape, np.float32)
    info = ml_dtypes.finfo(dtype)
    pick = rng.integers(0, 10, size=shape)
    big = float(info.max) * rng.uniform(0.5, 1.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    sign = rng.choice([-1.0, 1.0], size=shape)
    tiny = float(info.smallest_subnormal) * rng.integers(0, 64, size=shape) * sign
    values = np.where(pick == 0, big, np.where(pick == 1, tiny, values))
    with np.errstate(over="ignore"):
        return values.astype(np.float32).astype(dtype)


def interesting_float32_bits(rng: np.random.Generator) -> np.ndarray:
    """Random float32 bit patterns, every 16-bit value widened, and its neighbours and halfway points."""
    every = np.arange(2**16, dtype=np.uint32)
    as_f16 = every.astype(np.uint16).view(np.float16).astype(np.float32).view(np.uint32)
    as_bf16 = every << 16
    near = []
    for base in (as_f16, as_bf16):
        for delta in (-1, 1, 0x0FFF, 0x1000, 0x1001, 0x7FFF, 0x8000, 0x8001, -0x1000, -0x8000):
            near.append(base + np.uint32(delta & 0xFFFFFFFF))
    specials = np.array(
        [
            0,
            0x80000000,
            0x7F800000,
            0xFF800000,
            0x7FC00000,
            0x7F800001,
            0xFFC00001,
            0x7F7FFFFF,
            0x477FEFFF,
            0x477FF000,
            0x477FF001,
            0x38800000,
            0x387FFFFF,
            0x33000000,
            0x33000001,
            0x32FFFFFF,
            0x00000001,
            0x007FFFFF,
        ],
        dtype=np.uint32,
    )
    return np.concatenate(
        [
            rng.integers(0, 2**32, size=3_000_000, dtype=np.uint64).astype(np.uint32),
            as_f16,
            as_bf16,
            specials,
            *near,
        ]
    )


@pytest.mark.parametrize("isa", list(_kernels.available_variants()))
@pytest.mark.parametrize("dtype", HALF)
def test_rounding_helper_matches_numpy_and_ml_dtypes_bitwise(isa, dtype):
    module = _kernels.available_variants()[isa]
    values = interesting_float32_bits(np.random.default_rng(7)).view(np.float32)
    out = np.empty(values.shape, np.uint16)
    module._round_to_16_bit(values, out, dtype == HALF[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NumPy warns on overflow and NaN casts
        expected = values.astype(dtype).view(np.uint16)
    bad = np.flatnonzero(out != expected)
    assert bad.size == 0, (
        f"{bad.size} mismatches, first: float32 bits {values.view(np.uint32)[bad[0]]:#010x} -> "
        f"{out[bad[0]]:#06x}, expected {expected[bad[0]]:#06x}"
    )


@pytest.mark.parametrize("isa", list(_kernels.available_variants()))
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("length", [1, 7, 8, 15, 16, 17, 65536 + 5])
def test_block_helpers_keep_the_bits_of_a_nan_amid_other_values(isa, dtype, length):
    """Every 16-bit value, shuffled so that each group of 8 or 16 that the SIMD helpers convert at once
    mixes NaNs with other values (F16C quiets NaNs, so their groups are redone by the portable code),
    and lengths that leave a tail; both directions, against NumPy and ml_dtypes."""
    module = _kernels.available_variants()[isa]
    rng = np.random.default_rng(length)
    bits = rng.permutation(np.resize(np.arange(2**16, dtype=np.uint32).astype(np.uint16), length))
    wide = np.empty(bits.shape, np.float32)
    module._widen_16_bit(bits, wide, dtype == HALF[1])
    assert_bitwise_equal(wide, bits.view(dtype).astype(np.float32), "widened")
    values = rng.permutation(interesting_float32_bits(rng))[:length].view(np.float32)
    out = np.empty(values.shape, np.uint16)
    module._round_to_16_bit(values, out, dtype == HALF[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = values.astype(dtype).view(np.uint16)
    assert (out == expected).all()


@pytest.mark.parametrize("isa", list(_kernels.available_variants()))
@pytest.mark.parametrize("dtype", HALF)
def test_widening_helper_is_exact_for_every_16_bit_value(isa, dtype):
    module = _kernels.available_variants()[isa]
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    out = np.empty(bits.shape, np.float32)
    module._widen_16_bit(bits, out, dtype == HALF[1])
    assert_bitwise_equal(out, bits.view(dtype).astype(np.float32), "widened")


@pytest.mark.parametrize("isa", list(_kernels.available_variants()))
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_kernel_variant_and_thread_count_matches_reference(isa, dtype, threads):
    """Each ISA variant the CPU runs, over the parallel cutoff, in a list mixed with float32 and float64."""
    rng = np.random.default_rng(threads)
    module = _kernels.available_variants()[isa]
    params = [
        edgy_array(rng, (70_001,), dtype),
        random_array(rng, (33_333,), np.float32),
        edgy_array(rng, (50_000,), dtype),
        random_array(rng, (1_001,), np.float64),
    ]
    kinds = [KIND[dtype], 0, KIND[dtype], 1]
    state = [np.zeros(p.shape, reference.state_dtype(p.dtype)) for p in params]
    mine = [p.copy() for p in params]
    ref = reference.Adagrad([p.copy() for p in params], lr=0.05, weight_decay=0.01, lr_decay=0.1)
    engine = module.StepEngine(mine, state, False, None, 0, None, None, kinds)
    for step in range(4):
        grads = [
            edgy_array(rng, p.shape, p.dtype if step % 2 else np.float32)
            if p.itemsize == 2
            else random_array(rng, p.shape, p.dtype)
            for p in params
        ]
        with np.errstate(all="ignore"):
            engine.adagrad(grads, 0.05, 0.1, 0.01, 1e-10, False, False, threads)
            ref.step(grads)
    for i in range(4):
        assert_bitwise_equal(mine[i], ref.params[i], f"{isa} adagrad params[{i}]")
        assert_bitwise_equal(state[i], ref.sums[i], f"{isa} adagrad sums[{i}]")
    mine = [p.copy() for p in params]
    bufs = [np.zeros(p.shape, reference.state_dtype(p.dtype)) for p in params]
    ref = reference.SGD([p.copy() for p in params], lr=0.01, momentum=0.9, dampening=0.1, weight_decay=0.01)
    engine = module.StepEngine(mine, bufs, False, None, 0, None, None, kinds)
    for _ in range(4):
        grads = [edgy_array(rng, p.shape, p.dtype) for p in params]
        with np.errstate(all="ignore"):
            engine.sgd(grads, 0.01, 0.01, 0.9, 0.1, False, False, threads)
            ref.step(grads)
    for i in range(4):
        assert_bitwise_equal(mine[i], ref.params[i], f"{isa} sgd params[{i}]")
        assert_bitwise_equal(bufs[i], ref.momentum_buffers[i], f"{isa} momentum_buffers[{i}]")


def _grads(rng, params, float32_grads):
    return [
        edgy_array(rng, p.shape, np.float32 if float32_grads and p.itemsize == 2 else p.dtype) for p in params
    ]


@given(
    dtype=half_dtypes,
    options=adagrad_options(),
    seed=seeds,
    steps=st.integers(1, 8),
    float32_grads=st.booleans(),
    threads=st.sampled_from([1, 2, 3]),
    rowwise=st.booleans(),
)
def test_adagrad_on_16_bit_params_matches_reference_bitwise(
    dtype, options, seed, steps, float32_grads, threads, rowwise
):
    rng = np.random.default_rng(seed)
    params = [
        edgy_array(rng, (40_000, 3), dtype),
        random_array(rng, (5, 4), np.float32),
        edgy_array(rng, (17, 2), dtype),
    ]
    mine, theirs = [p.copy() for p in params], [p.copy() for p in params]
    opt = cadagrad.Adagrad(mine, num_threads=threads, rowwise=rowwise, **options)
    ref = reference.Adagrad(theirs, rowwise=rowwise, **options)
    for _ in range(steps):
        grads = _grads(rng, params, float32_grads)
        with np.errstate(all="ignore"):
            assert opt.step(grads)
            ref.step(grads)
    for i in range(len(params)):
        assert_bitwise_equal(mine[i], theirs[i], f"params[{i}]")
        assert_bitwise_equal(opt.sums[i], ref.sums[i], f"sums[{i}]")
    assert opt.sums[0].dtype == np.float32


@given(
    dtype=half_dtypes,
    options=sgd_options(),
    seed=seeds,
    steps=st.integers(1, 8),
    float32_grads=st.booleans(),
    threads=st.sampled_from([1, 2, 3]),
)
def test_sgd_on_16_bit_params_matches_reference_bitwise(dtype, options, seed, steps, float32_grads, threads):
    rng = np.random.default_rng(seed)
    params = [
        edgy_array(rng, (70_000,), dtype),
        random_array(rng, (5, 4), np.float64),
        edgy_array(rng, (17, 2), dtype),
    ]
    mine, theirs = [p.copy() for p in params], [p.copy() for p in params]
    opt = cadagrad.SGD(mine, num_threads=threads, **options)
    ref = reference.SGD(theirs, **options)
    for _ in range(steps):
        grads = _grads(rng, params, float32_grads)
        with np.errstate(all="ignore"):
            assert opt.step(grads)
            ref.step(grads)
    for i in range(len(params)):
        assert_bitwise_equal(mine[i], theirs[i], f"params[{i}]")
        if options["momentum"] != 0:
            assert_bitwise_equal(opt.momentum_buffers[i], ref.momentum_buffers[i], f"momentum_buffers[{i}]")


@pytest.mark.parametrize("dtype", HALF)
def test_adagrad_on_16_bit_params_is_the_float32_rule_rounded_once(dtype):
    """A from-scratch float32 expectation: the PyTorch AdaGrad formula in float32, p rounded each step."""
    rng = np.random.default_rng(3)
    p = edgy_array(rng, (50_000,), dtype)
    opt = cadagrad.Adagrad(p.copy(), lr=0.1, lr_decay=0.01, weight_decay=0.001, eps=1e-8)
    wide, G = p.astype(np.float32), np.zeros(p.shape, np.float32)
    for t in range(1, 7):
        grad = edgy_array(rng, p.shape, dtype)
        with np.errstate(all="ignore"):
            opt.step(grad)
            g = grad.astype(np.float32) + np.float32(0.001) * wide
            G = G + g * g
            clr = np.float32(0.1 / (1 + (t - 1) * 0.01))
            wide = (wide - (clr * g) / (np.sqrt(G) + np.float32(1e-8))).astype(dtype).astype(np.float32)
    assert_bitwise_equal(opt.params[0], wide.astype(dtype), "params")
    assert_bitwise_equal(opt.sums[0], G, "sums")


@pytest.mark.parametrize("dtype", HALF)
def test_sgd_momentum_on_16_bit_params_is_the_float32_rule_rounded_once(dtype):
    rng = np.random.default_rng(4)
    p = edgy_array(rng, (50_000,), dtype)
    opt = cadagrad.SGD(p.copy(), lr=0.01, momentum=0.9, nesterov=True)
    wide, buf = p.astype(np.float32), None
    for _ in range(5):
        grad = edgy_array(rng, p.shape, dtype)
        with np.errstate(all="ignore"):
            opt.step(grad)
            g = grad.astype(np.float32)
            buf = g.copy() if buf is None else np.float32(0.9) * buf + np.float32(1.0) * g
            g = g + np.float32(0.9) * buf
            wide = (wide - np.float32(0.01) * g).astype(dtype).astype(np.float32)
    assert_bitwise_equal(opt.params[0], wide.astype(dtype), "params")
    assert_bitwise_equal(opt.momentum_buffers[0], buf, "momentum buffer")


@pytest.mark.parametrize("dtype", HALF)
def test_a_16_bit_grad_may_be_its_own_param(dtype):
    rng = np.random.default_rng(5)
    p = edgy_array(rng, (40_000,), dtype)
    q = p.copy()
    opt, ref = cadagrad.Adagrad(p, lr=0.1), reference.Adagrad(q, lr=0.1)
    for _ in range(3):
        with np.errstate(all="ignore"):
            opt.step(p)
            ref.step(q)
    assert_bitwise_equal(p, q, "params")


@pytest.mark.parametrize("dtype", HALF)
def test_skip_if_nonfinite_sees_16_bit_infinities_and_nans(dtype):
    p = np.ones(1000, dtype)
    opt = cadagrad.Adagrad(p, lr=0.1)
    for bad in (np.inf, -np.inf, np.nan):
        g = np.ones(1000, dtype)
        g[777] = bad
        assert opt.step(g, skip_if_nonfinite=True) is False
    assert_bitwise_equal(p, np.ones(1000, dtype), "params")
    assert opt.step(np.ones(1000, dtype), skip_if_nonfinite=True) is True


@pytest.mark.parametrize("dtype", HALF)
def test_large_16_bit_params_get_lazy_float32_state(dtype):
    p = np.ones((1 << 20, 2), dtype)
    opt = cadagrad.SGD(p, lr=0.5, momentum=0.9)
    assert opt.momentum_buffers[0].dtype == np.float32
    opt.step(np.ones(p.shape, dtype))
    assert_bitwise_equal(p, np.full(p.shape, 0.5, dtype), "params")


@pytest.mark.parametrize("dtype", HALF)
def test_a_grad_of_another_dtype_is_refused_naming_it_and_nothing_is_written(dtype):
    rng = np.random.default_rng(6)
    params = [random_array(rng, (10,), np.float32), edgy_array(rng, (10,), dtype)]
    before = [p.copy() for p in params]
    opt = cadagrad.Adagrad(params, lr=0.1)
    for wrong in (np.float64, np.float16 if dtype == HALF[1] else ml_dtypes.bfloat16):
        grads = [np.ones(10, np.float32), np.ones(10, wrong)]
        expected = rf"grads\[1\]: expected dtype {dtype} \(as params\[1\]\) or float32"
        with pytest.raises(TypeError, match=expected):
            opt.step(grads)
    with pytest.raises(TypeError, match=r"grads\[0\]: expected dtype float32.*got"):
        opt.step([np.ones(10, dtype), np.ones(10, dtype)])
    for p, b in zip(params, before):
        assert_bitwise_equal(p, b, "untouched")
    assert opt.step_count == 0


def test_16_bit_params_are_refused_by_the_proximal_optimizers():
    p = np.ones((4, 3), ml_dtypes.bfloat16)
    with pytest.raises(TypeError, match=r"params: expected dtype float32 or float64"):
        cadagrad.ProximalAdagrad(p, lr=0.1)
    with pytest.raises(TypeError, match=r"params: expected dtype float32 or float64"):
        cadagrad.AdagradDA(p, lr=0.1)


@given(
    dtype=half_dtypes,
    seed=seeds,
    steps=st.integers(1, 6),
    float32_rows=st.booleans(),
    assume_unique=st.booleans(),
    rowwise=st.booleans(),
    options=adagrad_options(),
    threads=st.sampled_from([1, 2, 3]),
)
def test_adagrad_step_rows_on_16_bit_params_matches_reference_bitwise(
    dtype, seed, steps, float32_rows, assume_unique, rowwise, options, threads
):
    rng = np.random.default_rng(seed)
    table = edgy_array(rng, (300, 5), dtype)
    mine, theirs = table.copy(), table.copy()
    opt = cadagrad.Adagrad(mine, rowwise=rowwise, num_threads=threads, **options)
    ref = reference.Adagrad(theirs, rowwise=rowwise, **options)
    for _ in range(steps):
        k = int(rng.integers(1, 40))
        indices = rng.permutation(300)[:k] if assume_unique else rng.integers(0, 300, size=k)
        indices = indices.astype(np.int64)
        rows = edgy_array(rng, (k, 5), np.float32 if float32_rows else dtype)
        with np.errstate(all="ignore"):
            opt.step_rows(indices, rows, assume_unique=assume_unique)
            ref.step_rows(indices, rows, assume_unique=assume_unique)
    assert_bitwise_equal(mine, theirs, "params")
    assert_bitwise_equal(opt.sums[0], ref.sums[0], "sums")


@given(
    dtype=half_dtypes, seed=seeds, steps=st.integers(1, 6), float32_rows=st.booleans(), options=sgd_options()
)
def test_sgd_step_rows_on_16_bit_params_matches_reference_bitwise(dtype, seed, steps, float32_rows, options):
    rng = np.random.default_rng(seed)
    table = edgy_array(rng, (200, 3), dtype)
    mine, theirs = table.copy(), table.copy()
    opt = cadagrad.SGD(mine, **options)
    ref = reference.SGD(theirs, **options)
    for _ in range(steps):
        indices = rng.integers(0, 200, size=int(rng.integers(1, 30))).astype(np.int32)
        rows = edgy_array(rng, (indices.size, 3), np.float32 if float32_rows else dtype)
        with np.errstate(all="ignore"):
            opt.step_rows(indices, rows)
            ref.step_rows(indices, rows)
    assert_bitwise_equal(mine, theirs, "params")
    if options["momentum"] != 0:
        assert_bitwise_equal(opt.momentum_buffers[0], ref.momentum_buffers[0], "momentum buffers")


def test_16_bit_gradient_rows_of_another_dtype_are_refused_and_nothing_is_written():
    p = np.ones((4, 3), ml_dtypes.bfloat16)
    opt = cadagrad.Adagrad(p, lr=0.1)
    expected = r"rows: expected dtype bfloat16 \(as params\[0\]\) or float32, got float16"
    with pytest.raises(TypeError, match=expected):
        opt.step_rows(np.array([1]), np.ones((1, 3), np.float16))
    assert_bitwise_equal(p, np.ones((4, 3), ml_dtypes.bfloat16), "untouched")
    assert opt.step_count == 0


@pytest.mark.parametrize("dtype", HALF)
def test_state_dict_of_16_bit_params_holds_float32_state_and_round_trips(dtype):
    rng = np.random.default_rng(8)
    p = edgy_array(rng, (100,), dtype)
    opt = cadagrad.Adagrad(p, lr=0.1)
    opt.step(edgy_array(rng, p.shape, dtype))
    saved = opt.state_dict()
    assert saved["sum"][0].dtype == np.float32
    other = cadagrad.Adagrad(p.copy(), lr=0.1)
    other.load_state_dict(saved)
    assert_bitwise_equal(other.sums[0], opt.sums[0], "sums")
    with np.errstate(over="ignore"):
        saved["sum"] = [saved["sum"][0].astype(dtype)]
    with pytest.raises(TypeError, match=r"state_dict\['sum'\]\[0\]: expected dtype float32"):
        other.load_state_dict(saved)
