"""Sparse-row steps (step_rows) and row-wise AdaGrad against the reference, the dense step and torch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import adagrad_options, assert_bitwise_equal, dtypes, random_array, seeds, sgd_options
from hypothesis import given
from hypothesis import strategies as st

import cadagrad
from cadagrad import reference

index_dtypes = st.sampled_from([np.int32, np.int64])


def _indices(rng, nrows, k, spread, dtype):
    """k indices into nrows rows, from a few distinct rows (many duplicates) to many."""
    return rng.integers(0, max(1, min(nrows, spread)), size=k).astype(dtype)


@given(
    shape=st.tuples(st.integers(1, 300), st.integers(1, 40)),
    k=st.integers(0, 400),
    spread=st.integers(1, 300),
    dtype=dtypes,
    index_dtype=index_dtypes,
    options=adagrad_options(),
    rowwise=st.booleans(),
    assume_unique=st.booleans(),
    seed=seeds,
)
def test_adagrad_step_rows_matches_reference_bitwise(
    shape, k, spread, dtype, index_dtype, options, rowwise, assume_unique, seed
):
    rng = np.random.default_rng(seed)
    param = random_array(rng, shape, dtype)
    ours = cadagrad.Adagrad(param.copy(), rowwise=rowwise, **options)
    ref = reference.Adagrad(param.copy(), rowwise=rowwise, **options)
    for _ in range(3):
        if assume_unique:
            idx = rng.permutation(shape[0])[: min(k, shape[0])].astype(index_dtype)
        else:
            idx = _indices(rng, shape[0], k, spread, index_dtype)
        rows = random_array(rng, (len(idx), shape[1]), dtype)
        ours.step_rows(idx, rows, assume_unique=assume_unique)
        ref.step_rows(idx, rows, assume_unique=assume_unique)
        dense = random_array(rng, shape, dtype)          # dense and sparse steps interleave
        ours.step(dense)
        ref.step(dense)
    assert_bitwise_equal(ours.params[0], ref.params[0], "params")
    assert_bitwise_equal(ours.sums[0], ref.sums[0], "sums")
    assert ours.step_count == ref.step_count == 6


@given(
    shape=st.tuples(st.integers(1, 200), st.integers(1, 20)),
    k=st.integers(0, 300),
    dtype=dtypes,
    options=sgd_options(),
    seed=seeds,
)
def test_sgd_step_rows_matches_reference_bitwise(shape, k, dtype, options, seed):
    rng = np.random.default_rng(seed)
    param = random_array(rng, shape, dtype)
    ours, ref = cadagrad.SGD(param.copy(), **options), reference.SGD(param.copy(), **options)
    for _ in range(4):
        idx = _indices(rng, shape[0], k, shape[0] // 2 + 1, np.int64)
        rows = random_array(rng, (k, shape[1]), dtype)
        ours.step_rows(idx, rows)
        ref.step_rows(idx, rows)
    assert_bitwise_equal(ours.params[0], ref.params[0])
    if options["momentum"] != 0:
        assert_bitwise_equal(ours.momentum_buffers[0], ref.momentum_buffers[0])


@given(dtype=dtypes, rowwise=st.booleans(), seed=seeds, eps_inside=st.booleans())
def test_step_rows_equals_a_dense_step_on_the_scattered_gradient(dtype, rowwise, seed, eps_inside):
    """With weight_decay 0, a row step is the dense step on a gradient that is zero elsewhere.

    The untouched rows really are untouched only in the sparse step: the dense step moves them by
    (clr * 0) / d = 0, which leaves them equal, so the two agree on every element.
    """
    rng = np.random.default_rng(seed)
    param = random_array(rng, (120, 9), dtype)
    sparse = cadagrad.Adagrad(param.copy(), lr=0.1, rowwise=rowwise, eps_inside_sqrt=eps_inside,
                              initial_accumulator_value=0.1)
    dense = cadagrad.Adagrad(param.copy(), lr=0.1, rowwise=rowwise, eps_inside_sqrt=eps_inside,
                             initial_accumulator_value=0.1)
    for _ in range(4):
        idx = rng.integers(0, 60, size=80)
        rows = random_array(rng, (80, 9), dtype)
        sparse.step_rows(idx, rows)
        scattered = np.zeros_like(param)
        np.add.at(scattered, idx, rows)
        dense.step(scattered)
    assert_bitwise_equal(sparse.params[0], dense.params[0], "params")
    assert_bitwise_equal(sparse.sums[0], dense.sums[0], "sums")


def test_untouched_rows_and_their_state_do_not_change(rng):
    param = random_array(rng, (1000, 8), np.float32)
    opt = cadagrad.Adagrad(param, lr=0.1, weight_decay=0.1)       # decay applies to named rows only
    before, sums_before = param.copy(), opt.sums[0].copy()
    idx = np.array([3, 999, 3, 500])
    opt.step_rows(idx, random_array(rng, (4, 8), np.float32))
    untouched = np.setdiff1d(np.arange(1000), idx)
    assert_bitwise_equal(param[untouched], before[untouched])
    assert_bitwise_equal(opt.sums[0][untouched], sums_before[untouched])
    assert not np.array_equal(param[[3, 500, 999]], before[[3, 500, 999]])


def test_rowwise_state_is_one_value_per_row_and_round_trips(rng, tmp_path):
    param = random_array(rng, (50, 16), np.float32)
    opt = cadagrad.Adagrad(param, rowwise=True)
    assert opt.sums[0].shape == (50,)
    opt.step_rows(np.array([1, 2, 2]), random_array(rng, (3, 16), np.float32))
    opt.save(tmp_path / "rowwise.npz")
    twin = cadagrad.Adagrad(param.copy(), rowwise=True)
    twin.load(tmp_path / "rowwise.npz")
    assert_bitwise_equal(twin.sums[0], opt.sums[0])
    with pytest.raises(ValueError, match="rowwise"):
        cadagrad.Adagrad(param.copy()).load(tmp_path / "rowwise.npz")


BAD_ROWS = {
    "out-of-range": (lambda: np.array([0, 10]), lambda: np.ones((2, 4)), ValueError, r"indices\[1\]: 10 is out"),
    "negative": (lambda: np.array([-1]), lambda: np.ones((1, 4)), ValueError, r"indices\[0\]: -1 is out"),
    "float-indices": (lambda: np.array([1.0]), lambda: np.ones((1, 4)), TypeError, "indices: expected dtype"),
    "2-d-indices": (lambda: np.array([[1]]), lambda: np.ones((1, 4)), ValueError, "indices: expected a 1-D"),
    "list-indices": (lambda: [1, 2], lambda: np.ones((2, 4)), TypeError, "indices: expected a numpy"),
    "row-width": (lambda: np.array([1]), lambda: np.ones((1, 5)), ValueError, r"rows: expected shape \(1, 4\)"),
    "row-count": (lambda: np.array([1, 2]), lambda: np.ones((3, 4)), ValueError, r"rows: expected shape \(2, 4\)"),
    "row-dtype": (lambda: np.array([1]), lambda: np.ones((1, 4), np.float32), TypeError, "rows: expected dtype"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
@pytest.mark.parametrize("which", ["adagrad", "sgd"])
def test_bad_row_steps_raise_and_change_nothing(case, which, rng):
    make_indices, make_rows, exc, match = BAD_ROWS[case]
    param = random_array(rng, (10, 4), np.float64)
    opt = cadagrad.Adagrad(param) if which == "adagrad" else cadagrad.SGD(param, lr=0.1, momentum=0.9)
    state = opt.sums if which == "adagrad" else opt.momentum_buffers
    before = [param.tobytes(), state[0].tobytes(), opt.step_count]
    with pytest.raises(exc, match=match):
        opt.step_rows(make_indices(), make_rows())
    assert [param.tobytes(), state[0].tobytes(), opt.step_count] == before


def test_step_rows_refuses_a_param_that_is_not_2d(rng):
    opt = cadagrad.Adagrad([random_array(rng, (10, 4), np.float32), random_array(rng, (10,), np.float32)])
    with pytest.raises(ValueError, match=r"params\[1\]: sparse rows need a 2-D param"):
        opt.step_rows(np.array([0]), np.ones((1, 4), np.float32), param=1)
    with pytest.raises(ValueError, match="param: expected 0 <= param < 2"):
        opt.step_rows(np.array([0]), np.ones((1, 4), np.float32), param=2)
    with pytest.raises(ValueError, match=r"params\[1\]: rowwise=True needs 2-D params"):
        cadagrad.Adagrad([random_array(rng, (10, 4), np.float32), random_array(rng, (10,), np.float32)],
                         rowwise=True)


def test_step_rows_agrees_with_torch_sparse_adagrad(rng):
    torch = pytest.importorskip("torch")
    V, D, k = 5000, 32, 512
    param = random_array(rng, (V, D), np.float32)
    ours = cadagrad.Adagrad(param.copy(), lr=0.05)
    exact = cadagrad.reference.Adagrad(param.copy(), lr=0.05)
    weight = torch.nn.Parameter(torch.from_numpy(param.copy()))
    theirs = torch.optim.Adagrad([weight], lr=0.05)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(1)      # torch's own result independent of its thread pool and of other tests
    try:
        for _ in range(10):
            idx = rng.zipf(1.3, size=k) % V
            rows = random_array(rng, (k, D), np.float32)
            ours.step_rows(idx, rows)
            exact.step_rows(idx, rows)
            weight.grad = torch.sparse_coo_tensor(
                torch.from_numpy(idx)[None], torch.from_numpy(rows), (V, D), check_invariants=True
            )
            theirs.step()
    finally:
        torch.set_num_threads(saved_threads)
    # Ours is the reference to the bit; torch sums duplicates in another order and accumulates with FMA.
    assert_bitwise_equal(ours.params[0], exact.params[0], "step_rows vs reference")
    np.testing.assert_allclose(ours.params[0], weight.detach().numpy(), rtol=2e-5, atol=1e-6)
