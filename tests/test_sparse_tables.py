"""Sparse-row steps over several tables in one call (StepEngine.adagrad_rows_many, sgd_rows_many) and
their same-rows ceiling (rows_ceiling), against one call per table and against the reference."""

from __future__ import annotations

import sys
import tracemalloc

import numpy as np
import pytest
from conftest import adagrad_options, assert_bitwise_equal, random_array, seeds, sgd_options
from hypothesis import given
from hypothesis import strategies as st

import cadagrad.functional
from cadagrad import _kernels, reference

VARIANTS = list(_kernels.available_variants())

# One table: (rows V, width D, dtype, index dtype, k, spread of the ids, row-wise state).
table_specs = st.tuples(
    st.integers(1, 200),
    st.integers(1, 24),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from([np.int32, np.int64]),
    st.integers(0, 300) | st.just(0),
    st.integers(1, 200),
    st.booleans(),
)


def _ids(rng, nrows, k, spread, dtype, assume_unique):
    """k ids into nrows rows: distinct ones with assume_unique, else from a few rows (many repeats) up."""
    if assume_unique:
        return rng.permutation(nrows)[: min(k, nrows)].astype(dtype)
    return rng.integers(0, max(1, min(nrows, spread)), size=k).astype(dtype)


def _zipf_ids(rng, nrows, k, dtype):
    """DLRM-like ids: a few hot rows named hundreds of times, a long tail named once."""
    return ((rng.zipf(1.1, size=k) - 1) % nrows).astype(dtype)


class Tables:
    """Several 2-D params with AdaGrad state, stepped three ways: all at once, per table, reference."""

    def __init__(self, module, rng, specs, options, *, sgd=False):
        self.specs = specs
        self.params = [random_array(rng, (v, d), dt) for v, d, dt, *_ in specs]
        if sgd:
            self.states = [np.zeros_like(p) for p in self.params] if options["momentum"] != 0 else None
            self.refs = [reference.SGD(p.copy(), **options) for p in self.params]
            widths = None
        else:
            init = options.get("initial_accumulator_value", 0.0)
            rowwise = [spec[6] for spec in specs]
            self.states = [np.full(p.shape[:1] if rw else p.shape, init, dtype=p.dtype)
                           for p, rw in zip(self.params, rowwise)]
            self.refs = [reference.Adagrad(p.copy(), rowwise=rw, **options)
                         for p, rw in zip(self.params, rowwise)]
            widths = [p.shape[1] if rw else 0 for p, rw in zip(self.params, rowwise)]
        self.many = module.StepEngine(self.params, self.states, False, None, 0, widths)
        self.one_params = [p.copy() for p in self.params]
        self.one_states = [s.copy() for s in self.states] if self.states is not None else None
        self.one = module.StepEngine(self.one_params, self.one_states, False, None, 0, widths)

    def ref_states(self, sgd):
        return [r.momentum_buffers[0] if sgd else r.sums[0] for r in self.refs]

    def assert_all_equal(self, sgd=False):
        for i, (p, q, r) in enumerate(zip(self.params, self.one_params, self.refs)):
            assert_bitwise_equal(p, q, f"params[{i}] vs one call per table")
            assert_bitwise_equal(p, r.params[0], f"params[{i}] vs reference")
        if self.states is not None:
            for i, (s, t, r) in enumerate(zip(self.states, self.one_states, self.ref_states(sgd))):
                assert_bitwise_equal(s, t, f"states[{i}] vs one call per table")
                assert_bitwise_equal(s, r, f"states[{i}] vs reference")


def _step_all(tables, order, idx, rows, assume_unique, many_call, one_call, num_threads):
    """One step of every table three ways; the per-table calls and the reference all take step t."""
    steps = tables.many.steps
    bad = many_call(tables.many, [idx[i] for i in order], [rows[i] for i in order], order, num_threads)
    assert bad == -1
    assert tables.many.steps == steps + 1
    for i in order:
        tables.one.steps = steps                   # every table takes the same step t = steps + 1
        assert one_call(tables.one, i, idx[i], rows[i], 1) == -1
        tables.refs[i].step_count = steps
        tables.refs[i].step_rows(idx[i], rows[i], assume_unique=assume_unique)


def _adagrad_calls(options, assume_unique):
    hyper = (options["lr"], options["lr_decay"], options["weight_decay"], options["eps"],
             options["eps_inside_sqrt"], options["maximize"])

    def many(engine, idx, rows, order, t):
        return engine.adagrad_rows_many(idx, rows, order, assume_unique, *hyper, t)

    def one(engine, i, idx, rows, t):
        return engine.adagrad_rows(i, idx, rows, assume_unique, *hyper, t)

    return many, one


def _sgd_calls(options, assume_unique):
    hyper = (options["lr"], options["weight_decay"], options["momentum"], options["dampening"],
             options.get("nesterov", False), options["maximize"])

    def many(engine, idx, rows, order, t):
        return engine.sgd_rows_many(idx, rows, order, assume_unique, *hyper, t)

    def one(engine, i, idx, rows, t):
        return engine.sgd_rows(i, idx, rows, assume_unique, *hyper, t)

    return many, one


def _step_data(rng, specs, assume_unique):
    idx = [_ids(rng, v, k, spread, it, assume_unique) for v, d, dt, it, k, spread, _ in specs]
    rows = [random_array(rng, (len(i), d), dt) for i, (v, d, dt, *_) in zip(idx, specs)]
    return idx, rows


@pytest.mark.parametrize("isa", VARIANTS)
@given(
    specs=st.lists(table_specs, min_size=0, max_size=4),
    options=adagrad_options(),
    assume_unique=st.booleans(),
    num_threads=st.sampled_from([1, 2, 3]),
    data=st.data(),
    seed=seeds,
)
def test_adagrad_rows_many_matches_one_call_per_table_and_reference_bitwise(
    isa, specs, options, assume_unique, num_threads, data, seed
):
    rng = np.random.default_rng(seed)
    tables = Tables(_kernels.available_variants()[isa], rng, specs, options)
    many, one = _adagrad_calls(options, assume_unique)
    for _ in range(3):
        order = data.draw(st.permutations(range(len(specs))), label="order")
        idx, rows = _step_data(rng, specs, assume_unique)
        _step_all(tables, order, idx, rows, assume_unique, many, one, num_threads)
    tables.assert_all_equal()


@pytest.mark.parametrize("isa", VARIANTS)
@given(
    specs=st.lists(table_specs, min_size=0, max_size=4),
    options=sgd_options(),
    assume_unique=st.booleans(),
    num_threads=st.sampled_from([1, 2, 3]),
    seed=seeds,
)
def test_sgd_rows_many_matches_one_call_per_table_and_reference_bitwise(
    isa, specs, options, assume_unique, num_threads, seed
):
    rng = np.random.default_rng(seed)
    tables = Tables(_kernels.available_variants()[isa], rng, specs, options, sgd=True)
    many, one = _sgd_calls(options, assume_unique)
    order = list(range(len(specs)))
    for _ in range(3):
        idx, rows = _step_data(rng, specs, assume_unique)
        _step_all(tables, order, idx, rows, assume_unique, many, one, num_threads)
    tables.assert_all_equal(sgd=True)


# Large enough that 2 and 3 threads really split the rows, across table boundaries: Zipf ids (hot rows
# repeated hundreds of times), float32 and float64 tables, int32 and int64 ids, an empty table.
LARGE_SPECS = [
    (5000, 16, np.float32, np.int32, 20_000, 0, False),
    (300, 8, np.float64, np.int64, 0, 0, False),
    (2000, 24, np.float64, np.int32, 12_000, 0, True),
    (7, 5, np.float32, np.int64, 3, 0, False),
    (3000, 32, np.float32, np.int64, 9_000, 0, True),
]


@pytest.mark.parametrize("isa", VARIANTS)
@pytest.mark.parametrize("num_threads", [1, 2, 3])
@pytest.mark.parametrize("assume_unique", [False, True], ids=["grouped", "assume-unique"])
@pytest.mark.parametrize("rule", ["adagrad", "sgd"])
def test_large_steps_split_across_threads_match_one_call_per_table_and_reference(
    isa, num_threads, assume_unique, rule, rng
):
    module = _kernels.available_variants()[isa]
    if rule == "adagrad":
        options = {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.01, "initial_accumulator_value": 0.1,
                   "eps": 1e-10, "eps_inside_sqrt": False, "maximize": False}
        tables = Tables(module, rng, LARGE_SPECS, options)
        many, one = _adagrad_calls(options, assume_unique)
    else:
        options = {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01, "maximize": True}
        tables = Tables(module, rng, LARGE_SPECS, options, sgd=True)
        many, one = _sgd_calls(options, assume_unique)
    order = [2, 0, 4, 1, 3]
    for _ in range(2):
        if assume_unique:
            idx = [_ids(rng, v, k, 0, it, True) for v, d, dt, it, k, *_ in LARGE_SPECS]
        else:
            idx = [_zipf_ids(rng, v, k, it) for v, d, dt, it, k, *_ in LARGE_SPECS]
        rows = [random_array(rng, (len(i), d), dt) for i, (v, d, dt, *_) in zip(idx, LARGE_SPECS)]
        _step_all(tables, order, idx, rows, assume_unique, many, one, num_threads)
    tables.assert_all_equal(sgd=rule == "sgd")


def _adagrad_tables(module, rng, n=3, rowwise=False):
    params = [random_array(rng, (50 + 10 * i, 4 + i), np.float32 if i % 2 else np.float64) for i in range(n)]
    states = [np.full(p.shape[:1] if rowwise else p.shape, 0.1, dtype=p.dtype) for p in params]
    widths = [p.shape[1] for p in params] if rowwise else None
    return params, states, module.StepEngine(params, states, False, None, 4, widths)


@pytest.mark.parametrize("isa", VARIANTS)
@pytest.mark.parametrize("assume_unique", [False, True], ids=["grouped", "assume-unique"])
@pytest.mark.parametrize("call", ["adagrad", "sgd", "ceiling"])
def test_an_index_out_of_range_in_a_later_table_writes_nothing_and_names_table_and_position(
    isa, assume_unique, call, rng
):
    params, states, engine = _adagrad_tables(_kernels.available_variants()[isa], rng)
    before = [a.copy() for a in params + states]
    idx = [np.array([0, 1, 2]), np.array([5, 3], dtype=np.int32), np.array([1, 4, 69, 999, 70])]
    rows = [random_array(rng, (len(i), p.shape[1]), p.dtype) for i, p in zip(idx, params)]
    order = [1, 0, 2]                 # params[2] (70 rows) is the third table; its first bad id is at 3
    lists = ([idx[i] for i in order], [rows[i] for i in order], order, assume_unique)
    if call == "adagrad":
        bad = engine.adagrad_rows_many(*lists, 0.1, 0.0, 0.0, 1e-10, False, False, 1)
    elif call == "sgd":
        bad = engine.sgd_rows_many(*lists, 0.1, 0.0, 0.9, 0.0, False, False, 1)
    else:
        bad = engine.rows_ceiling(*lists, 1)
    assert divmod(bad, len(order)) == (3, 2)
    for a, b in zip(params + states, before):
        assert_bitwise_equal(a, b)
    assert engine.steps == 4


def _assert_refused(engine, arrays, call, exc, match):
    before = [a.copy() for a in arrays]
    with pytest.raises(exc, match=match):
        call()
    for a, b in zip(arrays, before):
        assert_bitwise_equal(a, b)
    assert engine.steps == 4


def _three_tables(rng):
    params = [random_array(rng, (6, 5), np.float32), random_array(rng, (7, 5), np.float32),
              random_array(rng, (8, 6), np.float32)]
    states = [np.full_like(p, 0.1) for p in params]
    engine = _kernels.selected.StepEngine(params, states, False, None, 4)
    idx = [np.array([0, 3, 0]), np.array([6, 1])]
    rows = [random_array(rng, (3, 5), np.float32), random_array(rng, (2, 5), np.float32)]
    return params, states, engine, idx, rows


BAD_MANY_CALLS = [
    pytest.param(lambda idx, rows, ps, st: (idx, rows, [0, 0]), ValueError,
                 r"^params\[1\]: params\[0\] is named twice", id="param-named-twice"),
    pytest.param(lambda idx, rows, ps, st: (idx, rows, [0, 5]), ValueError,
                 r"^params\[1\]: expected 0 <= param", id="param-out-of-range"),
    pytest.param(lambda idx, rows, ps, st: (idx, rows[:1], [0, 1]), ValueError,
                 r"^indices_list, rows_list and", id="lengths-differ"),
    pytest.param(lambda idx, rows, ps, st: (idx, [rows[0], rows[1][:1]], [0, 1]), ValueError,
                 r"^rows\[1\]: expected .* shape \(2, 5\)", id="rows-wrong-shape"),
    pytest.param(lambda idx, rows, ps, st: (idx, [rows[0], rows[1].astype(np.float64)], [0, 1]), ValueError,
                 r"^rows\[1\]: expected .* dtype float32", id="rows-wrong-dtype"),
    pytest.param(lambda idx, rows, ps, st: ([idx[0], idx[1].astype(np.int16)], rows, [0, 1]), ValueError,
                 r"^indices\[1\]: expected", id="indices-int16"),
    pytest.param(lambda idx, rows, ps, st: ([idx[0], list(idx[1])], rows, [0, 1]), TypeError,
                 r"^indices\[1\]: expected a numpy.ndarray", id="indices-list"),
    pytest.param(lambda idx, rows, ps, st: (idx, [rows[0], ps[0][:2]], [0, 1]), ValueError,
                 r"^rows\[1\]: shares memory", id="rows-are-rows-of-another-table"),
    pytest.param(lambda idx, rows, ps, st: (idx, [st[1][:3], rows[1]], [0, 1]), ValueError,
                 r"^rows\[0\]: shares memory", id="rows-are-state-of-another-table"),
]


@pytest.mark.parametrize("make, exc, match", BAD_MANY_CALLS)
def test_bad_many_table_calls_are_refused_and_nothing_written(make, exc, match, rng):
    params, states, engine, idx, rows = _three_tables(rng)
    args = make(idx, rows, params, states)
    _assert_refused(engine, params + states,
                    lambda: engine.adagrad_rows_many(*args, False, 0.1, 0.0, 0.0, 1e-10, False, False, 1),
                    exc, match)


def test_rows_may_share_memory_with_a_param_that_the_step_does_not_write(rng):
    # As with one table per call: only the tables of this step are written, so reading gradient rows
    # from another param's memory is well defined.
    params, states, engine, idx, rows = _three_tables(rng)
    other = params[2].reshape(-1)[:10].reshape(2, 5)
    before = params[2].copy()
    assert engine.adagrad_rows_many(idx, [rows[0], other], [0, 1], False, 0.1, 0.0, 0.0, 1e-10,
                                    False, False, 1) == -1
    assert_bitwise_equal(params[2], before)


def _summed(indices, rows, assume_unique):
    """The distinct rows named and their gradients, duplicates summed from zero in order of appearance."""
    if assume_unique:
        return indices, rows
    named, inverse = np.unique(indices, return_inverse=True)
    summed = np.zeros((len(named), rows.shape[1]), dtype=rows.dtype)
    np.add.at(summed, inverse.ravel(), rows)
    return named, summed


@pytest.mark.parametrize("isa", VARIANTS)
@pytest.mark.parametrize("num_threads", [1, 3])
@pytest.mark.parametrize("state", ["elementwise", "rowwise", "none"])
@pytest.mark.parametrize("assume_unique", [False, True], ids=["grouped", "assume-unique"])
def test_rows_ceiling_adds_the_summed_rows_to_exactly_the_named_rows(
    isa, num_threads, state, assume_unique, rng
):
    """The ceiling's documented, checkable effect: each named row of a param grows by its summed gradient
    g, its element-wise state by g * g (row-wise: by g[0] * g[0]); every other element keeps its bits."""
    module = _kernels.available_variants()[isa]
    specs = [(4000, 16, np.float32, np.int32, 9000), (50, 3, np.float64, np.int64, 0),
             (3000, 24, np.float64, np.int64, 6000)]
    params = [random_array(rng, (v, d), dt) for v, d, dt, *_ in specs]
    rowwise = state == "rowwise"
    states = None if state == "none" else [
        np.abs(random_array(rng, p.shape[:1] if rowwise else p.shape, p.dtype)) for p in params]
    widths = [p.shape[1] for p in params] if rowwise else None
    engine = module.StepEngine(params, states, False, None, 2, widths)
    if assume_unique:
        idx = [rng.permutation(v)[:k].astype(it) for v, d, dt, it, k in specs]
    else:
        idx = [_zipf_ids(rng, v, k, it) for v, d, dt, it, k in specs]
    rows = [random_array(rng, (len(i), d), dt) for i, (v, d, dt, *_) in zip(idx, specs)]
    expected_p = [p.copy() for p in params]
    expected_s = [s.copy() for s in states] if states is not None else None
    for j, (i, r) in enumerate(zip(idx, rows)):
        named, g = _summed(i, r, assume_unique)
        expected_p[j][named] = expected_p[j][named] + g
        if expected_s is not None:
            expected_s[j][named] = expected_s[j][named] + (g[:, 0] * g[:, 0] if rowwise else g * g)
    assert engine.rows_ceiling(idx, rows, [0, 1, 2], assume_unique, num_threads) == -1
    for j in range(3):
        assert_bitwise_equal(params[j], expected_p[j], f"params[{j}]")
        if states is not None:
            assert_bitwise_equal(states[j], expected_s[j], f"states[{j}]")
    assert engine.steps == 2


def test_many_table_steps_hold_no_memory_or_references_in_steady_state(rng):
    params = [np.zeros((100, 8), dtype=np.float32), np.zeros((50, 4), dtype=np.float64)]
    states = [np.zeros_like(p) for p in params]
    engine = _kernels.selected.StepEngine(params, states, False, None, 0)
    idx = [np.array([1, 3, 1, 99]), np.array([0, 49], dtype=np.int32)]
    rows = [np.full((4, 8), 1e-3, dtype=np.float32), np.full((2, 4), 1e-3)]
    order = [0, 1]
    watched = params + states + idx + rows + [order]

    def run(n):
        for _ in range(n):
            engine.adagrad_rows_many(idx, rows, order, False, 0.1, 0.0, 0.0, 1e-10, False, False, 1)
            engine.sgd_rows_many(idx, rows, order, True, 0.1, 0.0, 0.0, 0.0, False, False, 1)
            engine.rows_ceiling(idx, rows, order, False, 1)

    run(1000)
    refs = [sys.getrefcount(a) for a in watched]
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        run(20_000)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [sys.getrefcount(a) for a in watched] == refs
    assert after - before < 4096, f"{after - before} bytes still held"


def test_rows_memory_ceiling_writes_only_the_named_rows_and_refuses_a_bad_index_first():
    rng = np.random.default_rng(7)
    tables = [rng.standard_normal((50, 4)).astype(np.float32), rng.standard_normal((30, 3))]
    states = [np.zeros_like(t) for t in tables]
    run = cadagrad.functional.rows_memory_ceiling(tables, states)
    ids = [np.array([3, 9, 3], dtype=np.int64), np.array([29], dtype=np.int32)]
    rows = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((1, 3))]
    before = [t.copy() for t in tables]
    run(ids, rows)
    summed = rows[0][0] + rows[0][2]
    np.testing.assert_array_equal(tables[0][3], before[0][3] + summed)
    np.testing.assert_array_equal(states[0][3], summed * summed)
    np.testing.assert_array_equal(tables[1][29], before[1][29] + rows[1][0])
    untouched = np.ones(50, dtype=bool)
    untouched[[3, 9]] = False
    np.testing.assert_array_equal(tables[0][untouched], before[0][untouched])
    snapshot = [t.copy() for t in tables] + [s.copy() for s in states]
    with pytest.raises(ValueError, match="out of range"):
        run([ids[0], np.array([30], dtype=np.int32)], rows)
    for a, b in zip(tables + states, snapshot):
        assert a.tobytes() == b.tobytes()
