"""16-bit params in their two optional modes: state in the param's dtype (``state_dtype="param"``) and
stochastic rounding (``stochastic_rounding=True``, with its counter-based generator).

The kernels' generator and rounding helper are checked bit for bit against cadagrad.reference; every
kernel variant, thread count and option against the reference; the reference against float32
computations written out here; and stochastic rounding for what it is for: updates smaller than half a
unit in the last place stall under rounding to nearest and move the mean under stochastic rounding.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from conftest import adagrad_options, assert_bitwise_equal, random_array, seeds, sgd_options
from hypothesis import given
from hypothesis import strategies as st
from test_half import HALF, KIND, edgy_array, half_dtypes, interesting_float32_bits

import cadagrad
from cadagrad import _kernels, _state, reference

VARIANTS = list(_kernels.available_variants())
modes = st.sampled_from([None, "param"])


@pytest.mark.parametrize("isa", VARIANTS)
def test_generator_bits_match_reference_across_the_32_bit_index_boundary(isa):
    module = _kernels.available_variants()[isa]
    rng = np.random.default_rng(1)
    index = np.concatenate(
        [np.arange(5000), rng.integers(0, 2**45, 5000), [2**32 - 1, 2**32, 2**32 + 1, 2**40 + 7]]
    ).astype(np.int64)
    for seed, step in [(0, 1), (5, 2), (2**64 - 1, 2**33 + 3), (123456789012345, 77)]:
        out = np.empty(index.size, np.uint32)
        module._random_bits(seed, step, index, out)
        assert_bitwise_equal(out, reference.random_bits(seed, step, index), f"seed {seed}, step {step}")


def test_generator_bits_look_uniform_and_change_with_seed_step_and_index():
    bits = reference.random_bits(3, 1, np.arange(200_000))
    assert len(np.unique(bits)) > 199_990
    assert abs(float(np.mean(bits / 2.0**32)) - 0.5) < 0.005
    assert abs(float(np.mean((bits >> np.uint32(31)).astype(float))) - 0.5) < 0.005
    for other in (
        reference.random_bits(4, 1, np.arange(200_000)),
        reference.random_bits(3, 2, np.arange(200_000)),
    ):
        assert np.mean(other == bits) < 0.001


@pytest.mark.parametrize("isa", VARIANTS)
@pytest.mark.parametrize("dtype", HALF)
def test_stochastic_rounding_helper_matches_reference_bitwise(isa, dtype):
    """Every 16-bit value, its neighbours and halfway points, specials and 3M random float32 values."""
    module = _kernels.available_variants()[isa]
    rng = np.random.default_rng(11)
    values = interesting_float32_bits(rng).view(np.float32)
    bits = rng.integers(0, 2**32, size=values.size, dtype=np.uint64).astype(np.uint32)
    bits[:64] = [0, 0xFFFFFFFF] * 32  # the extremes of u
    out = np.empty(values.shape, np.uint16)
    module._round_stochastically(values, bits, out, dtype == HALF[1])
    expected = reference.round_stochastically(values, dtype, bits).view(np.uint16)
    bad = np.flatnonzero(out != expected)
    assert bad.size == 0, (
        f"{bad.size} mismatches, first: float32 bits {values.view(np.uint32)[bad[0]]:#010x}, random bits "
        f"{bits[bad[0]]:#010x} -> {out[bad[0]]:#06x}, expected {expected[bad[0]]:#06x}"
    )


@pytest.mark.parametrize("dtype", HALF)
def test_stochastic_rounding_lands_on_a_neighbour_with_probability_proportional_to_distance(dtype):
    rng = np.random.default_rng(2)
    low = rng.standard_normal(2000).astype(dtype)
    high_bits = low.view(np.uint16) + np.uint16(1)  # the next value away from zero
    high = high_bits.view(dtype)
    share = rng.uniform(0, 1, 2000)
    x = (low.astype(np.float64) + share * (high.astype(np.float64) - low.astype(np.float64))).astype(
        np.float32
    )
    exact_share = (x.astype(np.float64) - low.astype(np.float64)) / (
        high.astype(np.float64) - low.astype(np.float64)
    )
    ups = np.zeros(2000)
    draws = 400
    for k in range(draws):
        rounded = reference.round_stochastically(x, dtype, reference.random_bits(9, k, np.arange(2000)))
        assert np.all((rounded == low) | (rounded == high))
        ups += rounded == high
    # each element: a binomial(400, share) count; 6 standard deviations, and the average over all
    assert np.all(np.abs(ups / draws - exact_share) < 6 * np.sqrt(0.25 / draws))
    assert abs(float(np.mean(ups / draws - exact_share))) < 0.005


@pytest.mark.parametrize("isa", VARIANTS)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("mode", [None, "param"])
@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("rowwise", [False, True])
def test_every_kernel_variant_and_thread_count_matches_reference_in_every_mode(
    isa, dtype, mode, stochastic, rowwise
):
    """Dense steps and row steps over the parallel cutoff, in a list with a float32 param."""
    module = _kernels.available_variants()[isa]
    for threads in (1, 3):
        rng = np.random.default_rng(threads)
        params = [
            edgy_array(rng, (300, 257), dtype),
            random_array(rng, (11_111, 3), np.float32),
            edgy_array(rng, (200, 250), dtype),
        ]
        kinds = [KIND[dtype], 0, KIND[dtype]]
        seed = 2**40 + 3 if stochastic else None
        ref = reference.Adagrad(
            [p.copy() for p in params],
            lr=0.05,
            weight_decay=0.01,
            lr_decay=0.1,
            initial_accumulator_value=0.1,
            rowwise=rowwise,
            state_dtype=mode,
            stochastic_rounding=stochastic,
            seed=seed,
        )
        mine, sums = [p.copy() for p in params], [s.copy() for s in ref.sums]
        widths = [p.shape[1] for p in params] if rowwise else None
        engine = module.StepEngine(mine, sums, False, None, 0, widths, None, kinds)
        for _ in range(3):
            grads = [
                edgy_array(rng, p.shape, p.dtype) if p.itemsize == 2 else random_array(rng, p.shape, p.dtype)
                for p in params
            ]
            indices = rng.integers(0, 300, 60)
            rows = edgy_array(rng, (60, 257), np.float32)
            with np.errstate(all="ignore"):
                engine.adagrad(grads, 0.05, 0.1, 0.01, 1e-10, False, False, threads, False, seed)
                ref.step(grads)
                engine.adagrad_rows(
                    0, indices, rows, False, 0.05, 0.1, 0.01, 1e-10, False, False, threads, seed
                )
                ref.step_rows(indices, rows, param=0)
        for i in range(3):
            assert_bitwise_equal(mine[i], ref.params[i], f"{isa} {threads} threads: params[{i}]")
            assert_bitwise_equal(sums[i], ref.sums[i], f"{isa} {threads} threads: sums[{i}]")
        if rowwise:
            continue
        ref = reference.SGD(
            [p.copy() for p in params],
            lr=0.05,
            momentum=0.9,
            dampening=0.1,
            weight_decay=0.01,
            state_dtype=mode,
            stochastic_rounding=stochastic,
            seed=seed,
        )
        mine, bufs = [p.copy() for p in params], [b.copy() for b in ref.momentum_buffers]
        engine = module.StepEngine(mine, bufs, False, None, 0, None, None, kinds)
        for _ in range(3):
            grads = [
                edgy_array(rng, p.shape, p.dtype) if p.itemsize == 2 else random_array(rng, p.shape, p.dtype)
                for p in params
            ]
            indices = rng.integers(0, 300, 60)
            rows = edgy_array(rng, (60, 257), dtype)
            with np.errstate(all="ignore"):
                engine.sgd(grads, 0.05, 0.01, 0.9, 0.1, False, False, threads, False, seed)
                ref.step(grads)
                engine.sgd_rows(0, indices, rows, False, 0.05, 0.01, 0.9, 0.1, False, False, threads, seed)
                ref.step_rows(indices, rows, param=0)
        for i in range(3):
            assert_bitwise_equal(mine[i], ref.params[i], f"{isa} {threads} threads: sgd params[{i}]")
            assert_bitwise_equal(bufs[i], ref.momentum_buffers[i], f"{isa} {threads} threads: buffers[{i}]")


def _grads(rng, params, float32_grads):
    return [
        edgy_array(rng, p.shape, np.float32 if float32_grads and p.itemsize == 2 else p.dtype)
        if p.itemsize == 2
        else random_array(rng, p.shape, p.dtype)
        for p in params
    ]


@given(
    dtype=half_dtypes,
    mode=modes,
    stochastic=st.booleans(),
    options=adagrad_options(),
    seed=seeds,
    steps=st.integers(1, 5),
    float32_grads=st.booleans(),
    threads=st.sampled_from([1, 2, 3]),
    rowwise=st.booleans(),
)
def test_adagrad_modes_match_reference_bitwise(
    dtype, mode, stochastic, options, seed, steps, float32_grads, threads, rowwise
):
    rng = np.random.default_rng(seed)
    params = [
        edgy_array(rng, (20_000, 3), dtype),
        random_array(rng, (5, 4), np.float32),
        edgy_array(rng, (17, 2), dtype),
    ]
    mine, theirs = [p.copy() for p in params], [p.copy() for p in params]
    precision = {"state_dtype": mode, "stochastic_rounding": stochastic, "seed": seed}
    opt = cadagrad.Adagrad(mine, num_threads=threads, rowwise=rowwise, **precision, **options)
    ref = reference.Adagrad(theirs, rowwise=rowwise, **precision, **options)
    for _ in range(steps):
        grads = _grads(rng, params, float32_grads)
        indices = rng.integers(0, 20_000, 100)
        rows = edgy_array(rng, (100, 3), dtype)
        with np.errstate(all="ignore"):
            assert opt.step(grads)
            ref.step(grads)
            opt.step_rows(indices, rows)
            ref.step_rows(indices, rows)
    for i in range(len(params)):
        assert_bitwise_equal(mine[i], theirs[i], f"params[{i}]")
        assert_bitwise_equal(opt.sums[i], ref.sums[i], f"sums[{i}]")
    assert opt.sums[0].dtype == (dtype if mode == "param" else np.float32)
    assert opt.sums[1].dtype == np.float32


@given(
    dtype=half_dtypes,
    mode=modes,
    stochastic=st.booleans(),
    options=sgd_options(),
    seed=seeds,
    steps=st.integers(1, 5),
    threads=st.sampled_from([1, 2, 3]),
)
def test_sgd_modes_match_reference_bitwise(dtype, mode, stochastic, options, seed, steps, threads):
    rng = np.random.default_rng(seed)
    params = [edgy_array(rng, (70_000,), dtype).reshape(-1, 7), random_array(rng, (5, 4), np.float64)]
    mine, theirs = [p.copy() for p in params], [p.copy() for p in params]
    precision = {"state_dtype": mode, "stochastic_rounding": stochastic, "seed": seed}
    opt = cadagrad.SGD(mine, num_threads=threads, **precision, **options)
    ref = reference.SGD(theirs, **precision, **options)
    for _ in range(steps):
        grads = _grads(rng, params, False)
        indices = rng.integers(0, 10_000, 100)
        rows = edgy_array(rng, (100, 7), np.float32)
        with np.errstate(all="ignore"):
            assert opt.step(grads)
            ref.step(grads)
            opt.step_rows(indices, rows)
            ref.step_rows(indices, rows)
    for i in range(len(params)):
        assert_bitwise_equal(mine[i], theirs[i], f"params[{i}]")
        if options["momentum"] != 0:
            assert_bitwise_equal(opt.momentum_buffers[i], ref.momentum_buffers[i], f"momentum_buffers[{i}]")


@pytest.mark.parametrize("dtype", HALF)
def test_16_bit_state_is_the_float32_rule_with_the_state_rounded_each_step(dtype):
    """A from-scratch expectation: the float32 formula; G rounded to the param's dtype after each step,
    but the step itself divides by the unrounded float32 G."""
    rng = np.random.default_rng(3)
    p = edgy_array(rng, (50_000,), dtype)
    opt = cadagrad.Adagrad(p.copy(), lr=0.1, eps=1e-8, initial_accumulator_value=0.1, state_dtype="param")
    wide, G = p.astype(np.float32), np.full(p.shape, 0.1, dtype).astype(np.float32)
    for _ in range(6):
        grad = edgy_array(rng, p.shape, dtype)
        with np.errstate(all="ignore"):
            opt.step(grad)
            g = grad.astype(np.float32)
            G = G + g * g
            wide = (
                (wide - (np.float32(0.1) * g) / (np.sqrt(G) + np.float32(1e-8)))
                .astype(dtype)
                .astype(np.float32)
            )
            G = G.astype(dtype).astype(np.float32)
    assert_bitwise_equal(opt.params[0], wide.astype(dtype), "params")
    assert_bitwise_equal(opt.sums[0], G.astype(dtype), "sums")


@pytest.mark.parametrize("dtype", HALF)
def test_updates_below_half_an_ulp_stall_to_nearest_and_move_the_mean_stochastically(dtype):
    """SGD on p = 1 with steps of 1/8 of the spacing at 1 (2**-10 bfloat16, 2**-13 float16): 64 steps
    leave p at 1 when rounded to nearest; stochastically, the mean over 20,000 elements moves by the
    whole 64/8 = 8 spacings, as in exact arithmetic."""
    spacing = 2.0**-7 if dtype == HALF[1] else 2.0**-10
    update = spacing / 8
    n, steps = 20_000, 64
    nearest = np.ones(n, dtype)
    stochastic = np.ones(n, dtype)
    plain = cadagrad.SGD(nearest, lr=1.0)
    rounded = cadagrad.SGD(stochastic, lr=1.0, stochastic_rounding=True, seed=2026)
    grad = np.full(n, -update, np.float32)
    for _ in range(steps):
        plain.step(grad)
        rounded.step(grad)
    assert np.all(nearest == 1)
    moved = float(np.mean(stochastic.astype(np.float64))) - 1.0
    # each element is 1 + spacing * Binomial(64, 1/8): mean 8 spacings, sd per element 2.65 spacings
    assert abs(moved / spacing - steps / 8) < 6 * 2.65 / np.sqrt(n)
    assert len(np.unique(stochastic)) > 5  # elements went their own ways


def test_stochastic_rounding_does_not_depend_on_threads_or_on_which_rows_a_step_names():
    dtype = HALF[1]
    rng = np.random.default_rng(8)
    table = edgy_array(rng, (5000, 16), dtype)
    indices = rng.permutation(5000)[:1000]
    rows = edgy_array(rng, (1000, 16), np.float32)
    results = []
    for threads in (1, 2, 3):
        for reverse in (False, True):
            mine = table.copy()
            opt = cadagrad.Adagrad(mine, lr=0.01, stochastic_rounding=True, seed=99, num_threads=threads)
            if reverse:
                opt.step_rows(indices[::-1].copy(), rows[::-1].copy())
            else:
                opt.step_rows(indices, rows)
            results.append(mine)
    for other in results[1:]:
        assert_bitwise_equal(other, results[0], "rows")


def test_state_dtype_param_halves_the_state_and_float32_params_keep_their_own():
    rng = np.random.default_rng(0)
    params = [
        edgy_array(rng, (64, 8), HALF[0]),
        edgy_array(rng, (64, 8), HALF[1]),
        random_array(rng, (3,), np.float64),
    ]
    opt = cadagrad.Adagrad(params, state_dtype="param")
    assert [s.dtype for s in opt.sums] == [HALF[0], HALF[1], np.float64]
    sgd = cadagrad.SGD(params, lr=0.1, momentum=0.9, state_dtype="param")
    assert [b.dtype for b in sgd.momentum_buffers] == [HALF[0], HALF[1], np.float64]


@pytest.mark.parametrize(
    "make",
    [
        lambda p: cadagrad.Adagrad(p, lr=0.1, state_dtype="param", stochastic_rounding=True, seed=4),
        lambda p: cadagrad.SGD(
            p, lr=0.1, momentum=0.9, state_dtype="param", stochastic_rounding=True, seed=4
        ),
    ],
)
def test_16_bit_state_and_seed_survive_a_checkpoint_bitwise(make, tmp_path):
    rng = np.random.default_rng(5)
    params = [edgy_array(rng, (300, 4), HALF[1]), edgy_array(rng, (30,), HALF[0])]
    first, second = [p.copy() for p in params], [p.copy() for p in params]
    a, b = make(first), make(second)
    for _ in range(2):
        grads = [random_array(rng, p.shape, p.dtype) for p in params]
        a.step(grads)
        b.step(grads)
    a.save(tmp_path / "opt.npz")
    resumed = type(a)([p.copy() for p in first], lr=0.1)
    resumed.load(tmp_path / "opt.npz", convert_state=True)  # state_dtype differs: converted
    again = make([p.copy() for p in first])
    again.load(tmp_path / "opt.npz")
    assert again.seed == 4 and again.state_dtype == "param" and again.step_count == 2
    grads = [random_array(rng, p.shape, p.dtype) for p in params]
    a.step(grads)
    again.step(grads)
    for x, y in zip(a.params, again.params):
        assert_bitwise_equal(y, x, "params after resuming")
    state = a.sums if isinstance(a, cadagrad.Adagrad) else a.momentum_buffers
    assert [
        s.dtype for s in (resumed.sums if isinstance(a, cadagrad.Adagrad) else resumed.momentum_buffers)
    ] == [np.float32, np.float32]
    assert resumed.stochastic_rounding and resumed.seed == 4 and state[0].dtype == HALF[1]


def test_converting_a_state_dict_widens_exactly_or_rounds_to_nearest():
    rng = np.random.default_rng(6)
    p = edgy_array(rng, (40, 4), HALF[1])
    wide = cadagrad.Adagrad(p.copy(), initial_accumulator_value=0.3)
    wide.step(random_array(rng, p.shape, np.float32))
    narrow = cadagrad.Adagrad(p.copy(), state_dtype="param")
    narrow.load_state_dict(wide.state_dict(), convert_state=True)
    assert_bitwise_equal(narrow.sums[0], wide.sums[0].astype(HALF[1]), "rounded to nearest")
    back = cadagrad.Adagrad(p.copy())
    back.load_state_dict(narrow.state_dict(), convert_state=True)
    assert_bitwise_equal(back.sums[0], narrow.sums[0].astype(np.float32), "widened")


def test_a_state_dict_saved_before_the_precision_options_existed_loads_with_their_defaults():
    p = np.ones((4, 2), HALF[1])
    opt = cadagrad.Adagrad(p, lr=0.1)
    saved = opt.state_dict()
    for name in ("state_dtype", "stochastic_rounding", "seed"):
        del saved["hyperparameters"][name]
    other = cadagrad.Adagrad(p.copy(), lr=0.5)
    other.load_state_dict(saved)
    assert (other.lr, other.state_dtype, other.stochastic_rounding, other.seed) == (0.1, None, False, None)


# Bad input: each error names the argument, and nothing is written.


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda p: cadagrad.Adagrad(p, state_dtype="bfloat16"),
            r"state_dtype: expected None or 'param', got 'bfloat16'",
        ),
        (lambda p: cadagrad.SGD(p, lr=0.1, state_dtype=np.float32), r"state_dtype: expected None or 'param'"),
        (
            lambda p: cadagrad.Adagrad(p[2:], stochastic_rounding=True),
            r"stochastic_rounding: applies to float16 and "
            r"bfloat16 params only",
        ),
        (lambda p: cadagrad.SGD(p[2:], lr=0.1, stochastic_rounding=True), r"stochastic_rounding: applies to"),
        (
            lambda p: cadagrad.Adagrad(p, stochastic_rounding=1),
            r"stochastic_rounding: expected True or False, got 1",
        ),
        (
            lambda p: cadagrad.Adagrad(p, stochastic_rounding=True, seed=-1),
            r"seed: expected None or an int from 0 to "
            r"2\*\*64 - 1, got -1",
        ),
        (
            lambda p: cadagrad.Adagrad(p, stochastic_rounding=True, seed=2**64),
            r"seed: expected None or an int",
        ),
        (lambda p: cadagrad.Adagrad(p, stochastic_rounding=True, seed=1.5), r"seed: expected None or an int"),
        (
            lambda p: cadagrad.Adagrad(p, stochastic_rounding=True, seed=True),
            r"seed: expected None or an int",
        ),
    ],
)
def test_bad_precision_options_are_named(make, match):
    params = [np.ones(3, HALF[0]), np.ones(3, HALF[1]), np.ones(3, np.float32)]
    with pytest.raises((TypeError, ValueError), match=match):
        make(params)


@pytest.mark.parametrize("mode, other", [(None, "param"), ("param", None)])
def test_a_state_dict_of_the_other_state_dtype_is_refused_and_nothing_changes(mode, other):
    rng = np.random.default_rng(7)
    p = edgy_array(rng, (40, 4), HALF[1])
    opt = cadagrad.Adagrad(p, lr=0.1, state_dtype=mode)
    opt.step(random_array(rng, p.shape, np.float32))
    before = (p.copy(), opt.sums[0].copy(), opt.state_dict())
    donor = cadagrad.Adagrad(p.copy(), lr=0.2, state_dtype=other)
    donor.step(random_array(rng, p.shape, np.float32))
    saved = donor.state_dict()
    with pytest.raises(
        ValueError,
        match=r"state_dict\['hyperparameters'\]\['state_dtype'\]: expected .* \(fixed at "
        r"construction\), got .*convert_state=True",
    ):
        opt.load_state_dict(saved)
    saved["hyperparameters"]["state_dtype"] = mode  # arrays still in the other dtype
    with pytest.raises(TypeError, match=r"state_dict\['sum'\]\[0\]: expected dtype .*convert_state=True"):
        opt.load_state_dict(saved)
    assert_bitwise_equal(p, before[0], "params")
    assert_bitwise_equal(opt.sums[0], before[1], "sums")
    assert opt.lr == 0.1 and opt.step_count == 1


@given(dtype=half_dtypes, mode=modes, stochastic=st.booleans(), seed=seeds, steps=st.integers(1, 4))
def test_functional_steps_take_16_bit_params_in_every_mode(dtype, mode, stochastic, seed, steps):
    rng = np.random.default_rng(seed)
    params = [edgy_array(rng, (3000, 4), dtype), random_array(rng, (7,), np.float32)]
    precision = {"stochastic_rounding": stochastic, "seed": seed if stochastic else None}
    ada = reference.Adagrad(
        [p.copy() for p in params], lr=0.1, weight_decay=0.01, state_dtype=mode, **precision
    )
    sgd = reference.SGD([p.copy() for p in params], lr=0.1, momentum=0.9, state_dtype=mode, **precision)
    mine_ada, mine_sgd = [p.copy() for p in params], [p.copy() for p in params]
    sums, bufs = [s.copy() for s in ada.sums], [b.copy() for b in sgd.momentum_buffers]
    for t in range(1, steps + 1):
        grads = _grads(rng, params, t % 2 == 0)
        with np.errstate(all="ignore"):
            cadagrad.adagrad_step(mine_ada, grads, sums, step=t, lr=0.1, weight_decay=0.01, **precision)
            cadagrad.sgd_step(mine_sgd, grads, bufs, step=t, lr=0.1, momentum=0.9, **precision)
            ada.step(grads)
            sgd.step(grads)
    for i in range(2):
        assert_bitwise_equal(mine_ada[i], ada.params[i], f"adagrad params[{i}]")
        assert_bitwise_equal(sums[i], ada.sums[i], f"sums[{i}]")
        assert_bitwise_equal(mine_sgd[i], sgd.params[i], f"sgd params[{i}]")
        assert_bitwise_equal(bufs[i], sgd.momentum_buffers[i], f"momentum_buffers[{i}]")


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda p, g, s: cadagrad.adagrad_step(p, g, s, step=1, stochastic_rounding=True),
            ValueError,
            r"seed: expected an int from 0 to 2\*\*64 - 1 with stochastic_rounding=True, got None",
        ),
        (
            lambda p, g, s: cadagrad.adagrad_step(p, g, s.astype(np.float64), step=1),
            TypeError,
            r"sums: expected dtype bfloat16 \(as params\) or float32, got float64",
        ),
        (
            lambda p, g, s: cadagrad.sgd_step(
                p.astype(np.float32),
                g.astype(np.float32),
                None,
                step=1,
                lr=0.1,
                stochastic_rounding=True,
                seed=1,
            ),
            ValueError,
            r"stochastic_rounding: applies to float16 and bfloat16 params only",
        ),
        (
            lambda p, g, s: cadagrad.adagrad_step(p, g.astype(np.float16), s, step=1),
            TypeError,
            r"grads: expected dtype bfloat16 \(as params\) or float32, got float16",
        ),
    ],
)
def test_bad_functional_16_bit_input_is_named_and_nothing_is_written(call, error, match):
    rng = np.random.default_rng(1)
    p = edgy_array(rng, (50, 3), HALF[1])
    g = edgy_array(rng, (50, 3), HALF[1])
    s = np.zeros(p.shape, np.float32)
    before = p.copy()
    with pytest.raises(error, match=match):
        call(p, g, s)
    assert_bitwise_equal(p, before, "params")
    assert not s.any()


@pytest.mark.parametrize("isa", VARIANTS)
@pytest.mark.parametrize("dtype", HALF)
def test_non_finite_values_round_as_to_nearest_under_stochastic_rounding(isa, dtype):
    """NaNs (with payloads), infinities and overflowing steps inside blocks of finite values."""
    module = _kernels.available_variants()[isa]
    rng = np.random.default_rng(12)
    p = edgy_array(rng, (5000,), dtype)
    bits = p.view(np.uint16)
    bits[::97] = 0x7FC1 if dtype == HALF[1] else 0x7E01  # quiet NaNs with payloads
    bits[5::89] = 0xFF80 if dtype == HALF[1] else 0xFC00  # -inf
    grad = edgy_array(rng, p.shape, np.float32)
    grad[7::101] = np.nan
    grad[9::103] = np.inf
    ref = reference.SGD([p.copy()], lr=0.5, stochastic_rounding=True, seed=3)
    mine = p.copy()
    engine = module.StepEngine([mine], None, False, None, 0, None, None, [KIND[dtype]])
    with np.errstate(all="ignore"):
        engine.sgd([grad], 0.5, 0.0, 0.0, 0.0, False, False, 2, False, 3)
        ref.step([grad])
    assert_bitwise_equal(mine, ref.params[0], f"{isa} params")


@pytest.mark.parametrize("dtype", [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)])
def test_a_large_16_bit_state_is_loaded_lazily_with_its_bits(dtype):
    """State.from_array compares rows bitwise in the state's item size: 2 bytes for a 16-bit state."""
    param = np.zeros((1 << 17, 16), dtype)  # 4 MiB of 16-bit state: lazy
    saved = np.zeros(param.shape, dtype)
    saved[3] = 0.5
    saved[7] = 1.5
    for value in (0.0, 0.5):
        state = _state.State.from_array(param, param.shape, value, saved, dtype)
        assert state.array.dtype == dtype
        assert_bitwise_equal(state.copy(), saved, f"copy (initial value {value})")
        assert_bitwise_equal(state.materialize(), saved, f"state (initial value {value})")


@pytest.mark.parametrize("isa", VARIANTS)
@pytest.mark.parametrize("dtype", HALF)
def test_the_kernels_stochastic_rounding_of_every_pattern_matches_reference(isa, dtype):
    """The vectorized rounding of a step (intrinsics in the avx2/avx512 variants), on every 16-bit value,
    its neighbours and halfway points, specials and random float32 values, shuffled so that NaNs sit
    among numbers: SGD with lr = 1 from p = 0 writes exactly -grad."""
    module = _kernels.available_variants()[isa]
    rng = np.random.default_rng(13)
    values = rng.permutation(interesting_float32_bits(rng)[:1_000_003]).view(np.float32)
    grad = -values
    mine = np.zeros(values.shape, dtype)
    ref = reference.SGD([mine.copy()], lr=1.0, stochastic_rounding=True, seed=2**63 + 5)
    engine = module.StepEngine([mine], None, False, None, 0, None, None, [KIND[dtype]])
    with np.errstate(all="ignore"):
        engine.sgd([grad], 1.0, 0.0, 0.0, 0.0, False, False, 2, False, 2**63 + 5)
        ref.step([grad])
    bad = np.flatnonzero(mine.view(np.uint16) != ref.params[0].view(np.uint16))
    assert bad.size == 0, f"{bad.size} mismatches, first: float32 bits {values.view(np.uint32)[bad[0]]:#010x}"


@pytest.mark.parametrize("isa", VARIANTS)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("width", [7, 512, 513, 600])
def test_rowwise_rows_wider_and_narrower_than_a_block_match_reference_in_both_modes(isa, dtype, width):
    """Row-wise rows up to 512 columns go through block buffers, wider ones through a scalar loop."""
    module = _kernels.available_variants()[isa]
    rng = np.random.default_rng(width)
    param = edgy_array(rng, (40, width), dtype)
    ref = reference.Adagrad(
        [param.copy()],
        lr=0.05,
        rowwise=True,
        state_dtype="param",
        stochastic_rounding=True,
        seed=11,
        initial_accumulator_value=0.1,
    )
    mine, sums = param.copy(), ref.sums[0].copy()
    engine = module.StepEngine([mine], [sums], False, None, 0, [width], None, [KIND[dtype]])
    for _ in range(2):
        grad = edgy_array(rng, param.shape, np.float32)
        indices = rng.integers(0, 40, 30)
        rows = edgy_array(rng, (30, width), dtype)
        with np.errstate(all="ignore"):
            engine.adagrad([grad], 0.05, 0.0, 0.0, 1e-10, False, False, 2, False, 11)
            ref.step([grad])
            engine.adagrad_rows(0, indices, rows, False, 0.05, 0.0, 0.0, 1e-10, False, False, 2, 11)
            ref.step_rows(indices, rows)
    assert_bitwise_equal(mine, ref.params[0], f"{isa} params")
    assert_bitwise_equal(sums, ref.sums[0], f"{isa} sums")
