"""cadagrad.torch with sparse COO grads (nn.Embedding / nn.EmbeddingBag with sparse=True): bit for bit the
reference's row rules, torch.optim's results within a tolerance, and the errors for grads it cannot step.
"""

from __future__ import annotations

import copy
import io
import re

import numpy as np
import pytest
from conftest import adagrad_options, assert_bitwise_equal, dtypes, random_array, seeds, sgd_options
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import cadagrad  # noqa: E402
import cadagrad.torch as ct  # noqa: E402
from cadagrad import _state, reference  # noqa: E402
from cadagrad._kernels import StepEngine  # noqa: E402
from cadagrad.torch import _engine as ct_engine  # noqa: E402

nn = torch.nn
F = torch.nn.functional

TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}
PARITY = dict(rtol=1e-9, atol=1e-12)          # float64 against torch.optim after 30 steps


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sparse_rows(indices: np.ndarray, values: np.ndarray, shape: tuple) -> torch.Tensor:
    """An uncoalesced COO grad with one sparse dim, as nn.Embedding(sparse=True) makes them."""
    return torch.sparse_coo_tensor(
        torch.from_numpy(indices).reshape(1, -1), torch.from_numpy(values), shape, check_invariants=False
    )


def random_rows(rng, nrows: int, shape: tuple, dtype) -> tuple[np.ndarray, np.ndarray]:
    """k ids with many duplicates (k may be 0) and their rows."""
    k = int(rng.integers(0, 3 * nrows + 1)) if rng.random() > 0.15 else 0
    indices = rng.integers(0, nrows, size=k).astype(np.int64)
    return indices, random_array(rng, (k, *shape[1:]), dtype)


# -- B: bit for bit the reference's step_rows -------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=seeds, dtype=dtypes, options=adagrad_options(), rowwise=st.booleans(),
       nrows=st.integers(1, 30), width=st.integers(1, 6), steps=st.integers(1, 6))
def test_sparse_adagrad_matches_reference_step_rows_bitwise(
    seed, dtype, options, rowwise, nrows, width, steps
):
    """A table with sparse grads and a dense param in one group; the table sometimes has no grad (its own
    step count then falls behind, for lr_decay)."""
    rng = np.random.default_rng(seed)
    table = torch.from_numpy(random_array(rng, (nrows, width), dtype)).requires_grad_()
    dense = torch.from_numpy(random_array(rng, (3, width), dtype)).requires_grad_()
    opt = ct.Adagrad([table, dense], rowwise=rowwise, **options)
    ref_table = reference.Adagrad(table.detach().numpy().copy(), rowwise=rowwise, **options)
    ref_dense = reference.Adagrad(dense.detach().numpy().copy(), rowwise=rowwise, **options)
    for _ in range(steps):
        g = random_array(rng, dense.shape, dtype)
        dense.grad = torch.from_numpy(g)
        ref_dense.step(g.copy())
        if rng.random() < 0.2:
            table.grad = None
        else:
            indices, values = random_rows(rng, nrows, table.shape, dtype)
            table.grad = sparse_rows(indices, values, table.shape)
            ref_table.step_rows(indices.copy(), values.copy())
        opt.step()
    assert_bitwise_equal(table.detach().numpy(), ref_table.params[0], "table")
    assert_bitwise_equal(opt.state[table]["sum"].numpy(), ref_table.sums[0], "table's sum")
    assert_bitwise_equal(dense.detach().numpy(), ref_dense.params[0], "dense param")
    assert_bitwise_equal(opt.state[dense]["sum"].numpy(), ref_dense.sums[0], "dense param's sum")
    assert float(opt.state[table]["step"]) == ref_table.step_count
    assert float(opt.state[dense]["step"]) == steps


@settings(max_examples=40, deadline=None)
@given(seed=seeds, dtype=dtypes, options=sgd_options(), nrows=st.integers(1, 30), width=st.integers(1, 6),
       steps=st.integers(1, 6))
def test_sparse_sgd_lazy_or_without_momentum_matches_reference_step_rows_bitwise(
    seed, dtype, options, nrows, width, steps
):
    rng = np.random.default_rng(seed)
    table = torch.from_numpy(random_array(rng, (nrows, width), dtype)).requires_grad_()
    opt = ct.SGD([table], lazy_momentum=True, **options)
    ref = reference.SGD(table.detach().numpy().copy(), **options)
    for _ in range(steps):
        indices, values = random_rows(rng, nrows, table.shape, dtype)
        table.grad = sparse_rows(indices, values, table.shape)
        ref.step_rows(indices.copy(), values.copy())
        opt.step()
    assert_bitwise_equal(table.detach().numpy(), ref.params[0], "table")
    if options["momentum"] != 0:
        assert_bitwise_equal(opt.state[table]["momentum_buffer"].numpy(), ref.momentum_buffers[0], "buffer")


def scattered(indices, values, table: np.ndarray, options: dict) -> np.ndarray:
    """The grad that torch's rule applies to every row: the named rows' summed grads (negated with
    maximize, plus weight decay there), zero elsewhere; in the kernels' order of operations."""
    dtype = table.dtype.type
    grad = np.zeros_like(table)
    np.add.at(grad, indices, values)
    named = np.unique(indices)
    g = -grad[named] if options.get("maximize") else grad[named]
    if options.get("weight_decay", 0) != 0:
        g = g + dtype(options["weight_decay"]) * table[named]
    grad[named] = g
    return grad


@settings(max_examples=40, deadline=None)
@given(seed=seeds, dtype=dtypes, options=sgd_options().filter(lambda o: o["momentum"] != 0),
       nrows=st.integers(1, 30), width=st.integers(1, 6), steps=st.integers(1, 8))
def test_sparse_sgd_torch_rule_is_the_dense_rule_on_the_scattered_grad_bitwise(
    seed, dtype, options, nrows, width, steps
):
    """Every row named once keeps moving; a dense grad now and then (every row's buffer moves) too."""
    rng = np.random.default_rng(seed)
    table = torch.from_numpy(random_array(rng, (nrows, width), dtype)).requires_grad_()
    opt = ct.SGD([table], **options)
    plain = {**options, "weight_decay": 0.0, "maximize": False}
    ref = reference.SGD(table.detach().numpy().copy(), **plain)
    for _ in range(steps):
        if rng.random() < 0.2:
            g = random_array(rng, table.shape, dtype)
            table.grad = torch.from_numpy(g)
            effective = -g if options["maximize"] else g
            if options["weight_decay"] != 0:
                effective = effective + dtype(options["weight_decay"]) * ref.params[0]
        else:
            indices, values = random_rows(rng, nrows, table.shape, dtype)
            table.grad = sparse_rows(indices, values, table.shape)
            effective = scattered(indices, values, ref.params[0], options)
        ref.step(effective)
        opt.step()
    assert_bitwise_equal(table.detach().numpy(), ref.params[0], "table")
    np.testing.assert_array_equal(opt.state[table]["momentum_buffer"].numpy(), ref.momentum_buffers[0])


def test_sgd_torch_rule_steps_rows_not_named_in_blocks(monkeypatch):
    """Rows touched before and not named now are stepped in blocks of zero rows; blocks of 3 here."""
    import cadagrad.torch.sgd as sgd_module

    monkeypatch.setattr(sgd_module, "_ZERO_ROWS", 3)
    rng = np.random.default_rng(8)
    options = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}
    table = torch.from_numpy(random_array(rng, (40, 5), np.float32)).requires_grad_()
    opt = ct.SGD([table], **options)
    ref = reference.SGD(table.detach().numpy().copy(), **{**options, "weight_decay": 0.0})
    for _ in range(8):
        indices = rng.integers(0, 40, size=6)
        values = random_array(rng, (6, 5), np.float32)
        table.grad = sparse_rows(indices, values, table.shape)
        ref.step(scattered(indices, values, ref.params[0], options))
        opt.step()
    assert len(opt._touched[table].rows) > 9                     # several blocks at the last steps
    assert_bitwise_equal(table.detach().numpy(), ref.params[0], "table")


def test_one_dimensional_and_hybrid_params_take_sparse_rows():
    """A (V,) param takes a COO grad with one sparse dim as V rows of width 1; (V, 2, 3) as rows of 6."""
    rng = np.random.default_rng(5)
    for shape in [(7,), (7, 2, 3)]:
        p = torch.from_numpy(random_array(rng, shape, np.float64)).requires_grad_()
        opt = ct.Adagrad([p], lr=0.1, weight_decay=0.1)
        ref = reference.Adagrad(p.detach().numpy().reshape(7, -1).copy(), lr=0.1, weight_decay=0.1)
        for _ in range(3):
            indices, values = random_rows(rng, 7, shape, np.float64)
            p.grad = sparse_rows(indices, values, shape)
            ref.step_rows(indices, values.reshape(len(indices), int(np.prod(shape[1:]))).copy())
            opt.step()
        assert_bitwise_equal(p.detach().numpy().reshape(7, -1), ref.params[0], str(shape))


def test_several_tables_and_empty_grads_in_one_step():
    rng = np.random.default_rng(6)
    tables = [torch.from_numpy(random_array(rng, (20, 4), np.float32)).requires_grad_() for _ in range(3)]
    opt = ct.Adagrad([{"params": tables[:2]}, {"params": tables[2:], "lr": 0.5}], lr=0.1)
    refs = [reference.Adagrad(t.detach().numpy().copy(), lr=lr) for t, lr in zip(tables, [0.1, 0.1, 0.5])]
    for step in range(4):
        for t, ref in zip(tables, refs):
            indices, values = random_rows(rng, 20, (20, 4), np.float32)
            if step == 1:
                indices, values = indices[:0], values[:0]          # nnz 0: still counts as a step
            t.grad = sparse_rows(indices, values, (20, 4))
            ref.step_rows(indices, values.copy())
        opt.step()
    for t, ref in zip(tables, refs):
        assert_bitwise_equal(t.detach().numpy(), ref.params[0])
        assert float(opt.state[t]["step"]) == 4


TABLE_SPECS = [((9, 5), np.float32), ((11,), np.float64), ((7, 2, 3), np.float32)]   # 2-D, 1-D, hybrid


def tables_of_a_group(rng) -> list[torch.Tensor]:
    return [torch.from_numpy(random_array(rng, shape, d)).requires_grad_() for shape, d in TABLE_SPECS]


def ones_at(indices: list[int], t: torch.Tensor) -> torch.Tensor:
    """A sparse grad of ones at ``indices`` for ``t``."""
    values = np.ones((len(indices), *t.shape[1:]), as_rows(t).dtype)
    return sparse_rows(np.array(indices), values, tuple(t.shape))


def as_rows(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().reshape(t.shape[0], -1)


class CountingEngine:
    """Stands in for a StepEngine and records how many tables each many-table row call steps."""

    calls: list[int] = []

    def __init__(self, *args) -> None:
        object.__setattr__(self, "engine", StepEngine(*args))

    def __getattr__(self, name):
        found = getattr(self.engine, name)
        if not name.endswith("_rows_many"):
            return found

        def call(indices_list, *args):
            CountingEngine.calls.append(len(indices_list))
            return found(indices_list, *args)
        return call

    def __setattr__(self, name, value):
        setattr(self.engine, name, value)


def set_grads(rng, tables, refs, step: int) -> None:
    """Table 1 has nnz 0 at even steps; table 2 sometimes no grad (its step count falls behind)."""
    for n, (t, ref) in enumerate(zip(tables, refs)):
        if n == 2 and rng.random() < 0.3:
            t.grad = None
            continue
        indices, values = random_rows(rng, t.shape[0], t.shape, as_rows(t).dtype.type)
        if n == 1 and step % 2 == 0:
            indices, values = indices[:0], values[:0]
        t.grad = sparse_rows(indices, values, tuple(t.shape))
        ref.step_rows(indices.copy(), values.reshape(len(indices), ref.params[0].shape[1]).copy())


@settings(max_examples=30, deadline=None)
@given(seed=seeds, options=adagrad_options(), steps=st.integers(1, 6))
def test_tables_of_several_widths_and_dtypes_step_in_one_call_bitwise(seed, options, steps):
    """Three tables of one group (2-D, 1-D, hybrid; float32 and float64; lazy state, filled row by row
    when initial_accumulator_value != 0): one kernel call per step count, bit for bit step_rows."""
    rng = np.random.default_rng(seed)
    tables = tables_of_a_group(rng)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_state, "LAZY_BYTES", 0)
        patch.setattr(ct_engine, "StepEngine", CountingEngine)
        opt = ct.Adagrad(tables, **options)
        refs = [reference.Adagrad(as_rows(t).copy(), **options) for t in tables]
        for step in range(steps):
            set_grads(rng, tables, refs, step)
            counts = [float(opt.state[t]["step"]) for t in tables if t.grad is not None]
            CountingEngine.calls = []
            opt.step()
            assert CountingEngine.calls == sorted((counts.count(c) for c in set(counts)), reverse=True)
    opt.state_dict()                                         # fills the rows no step named
    for t, ref in zip(tables, refs):
        assert_bitwise_equal(as_rows(t), ref.params[0], "table")
        assert_bitwise_equal(opt.state[t]["sum"].numpy().reshape(t.shape[0], -1), ref.sums[0], "sum")
        assert float(opt.state[t]["step"]) == ref.step_count


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rowwise_tables_of_several_widths_and_dtypes_step_in_one_call_bitwise(seed):
    rng = np.random.default_rng(seed)
    tables = [torch.from_numpy(random_array(rng, shape, d)).requires_grad_()
              for shape, d in [((9, 5), np.float32), ((11, 1), np.float64), ((7, 6), np.float32)]]
    options = {"lr": 0.3, "lr_decay": 0.1, "weight_decay": 0.01, "initial_accumulator_value": 0.1}
    opt = ct.Adagrad(tables, rowwise=True, **options)
    refs = [reference.Adagrad(as_rows(t).copy(), rowwise=True, **options) for t in tables]
    for step in range(4):
        set_grads(rng, tables, refs, step)
        opt.step()
    for t, ref in zip(tables, refs):
        assert_bitwise_equal(as_rows(t), ref.params[0], "table")
        assert_bitwise_equal(opt.state[t]["sum"].numpy(), ref.sums[0], "sum")


@settings(max_examples=30, deadline=None)
@given(seed=seeds, options=sgd_options(), steps=st.integers(1, 6))
def test_sgd_tables_of_several_widths_and_dtypes_step_in_one_call_bitwise(seed, options, steps):
    """As above for SGD's lazy rule (and no momentum): a table that joins late starts its buffer
    (buf = g) in a call of its own."""
    rng = np.random.default_rng(seed)
    tables = tables_of_a_group(rng)
    opt = ct.SGD(tables, lazy_momentum=True, **options)
    refs = [reference.SGD(as_rows(t).copy(), **options) for t in tables]
    for step in range(steps):
        set_grads(rng, tables, refs, step)
        opt.step()
    for t, ref in zip(tables, refs):
        assert_bitwise_equal(as_rows(t), ref.params[0], "table")
        if options["momentum"] != 0 and ref.momentum_buffers[0] is not None and t in opt.state:
            buffer = opt.state[t]["momentum_buffer"].numpy().reshape(t.shape[0], -1)
            assert_bitwise_equal(buffer, ref.momentum_buffers[0], "buffer")


def test_rowwise_state_is_one_value_per_row_which_torch_cannot_load():
    bag = nn.EmbeddingBag(10, 4, mode="sum", sparse=True)
    opt = ct.Adagrad(bag.parameters(), lr=0.1, rowwise=True, initial_accumulator_value=0.5)
    bag(torch.tensor([[1, 2, 2]])).sum().backward()
    opt.step()
    saved = opt.state_dict()
    assert saved["state"][0]["sum"].shape == (10,) and saved["param_groups"][0]["rowwise"]
    theirs = torch.optim.Adagrad(nn.EmbeddingBag(10, 4, sparse=True).parameters())
    theirs.load_state_dict(saved)
    theirs.param_groups[0]["params"][0].grad = bag.weight.grad.clone()
    with pytest.raises(RuntimeError):
        theirs.step()
    # torch's checkpoint has no 'rowwise': the group keeps its own, and a full sum does not fit it
    opt.load_state_dict(torch.optim.Adagrad(nn.EmbeddingBag(10, 4, sparse=True).parameters()).state_dict())
    message = "expected shape (10,) (one value per row (rowwise)), got (10, 4)"
    with pytest.raises(ValueError, match=re.escape(message)):
        opt.step()
    with pytest.raises(ValueError, match=r"\['params'\]\[0\]: rowwise=True needs 2-D params"):
        ct.Adagrad([torch.zeros(3, requires_grad=True)], rowwise=True)


# -- C: bad input: a clear error naming the tensor, nothing written ----------------------------------------


class ForcedGrad(nn.Parameter):
    """A param whose ``grad`` is whatever the test puts there (torch refuses some grads on assignment)."""

    forced = None

    @property
    def grad(self):
        return self.forced

    @grad.setter
    def grad(self, value):
        self.forced = value


def snapshot(opt) -> list[bytes]:
    """The bytes of every param and every state tensor of ``opt``."""
    out = []
    for group in opt.param_groups:
        for p in group["params"]:
            out.append(p.detach().numpy().tobytes())
            for value in opt.state.get(p, {}).values():
                out.append(value.detach().numpy().tobytes() if value.layout == torch.strided else repr(value))
    return out


def three_params(optimizer: str, **options):
    """A dense param stepped before, and two tables; their grads are valid, each test breaks one."""
    rng = np.random.default_rng(7)
    dense = torch.from_numpy(random_array(rng, (5,), np.float32)).requires_grad_()
    first = ForcedGrad(torch.from_numpy(random_array(rng, (10, 4), np.float32)))
    second = ForcedGrad(torch.from_numpy(random_array(rng, (12, 4), np.float32)))
    opt = getattr(ct, optimizer)([{"params": [dense, first]}, {"params": [second]}], lr=0.1, **options)
    for p in (dense, first, second):          # one good step first: buffers and step counts exist
        p.grad = (torch.ones_like(p) if p is dense
                  else sparse_rows(np.array([1, 3, 1]), np.ones((3, 4), np.float32), tuple(p.shape)))
    opt.step()
    return opt, dense, first, second


OPTIMIZERS = [("Adagrad", {}), ("SGD", {"momentum": 0.9}), ("SGD", {"momentum": 0.9, "lazy_momentum": True})]


@pytest.mark.parametrize("optimizer, options", OPTIMIZERS, ids=["Adagrad", "SGD", "SGD-lazy"])
@pytest.mark.parametrize("which, bad_index", [("first", 10), ("first", -1), ("second", 12), ("second", -1)])
def test_index_out_of_range_is_named_and_nothing_is_written(optimizer, options, which, bad_index):
    opt, _, first, second = three_params(optimizer, **options)
    table = first if which == "first" else second
    label = "param_groups[0]['params'][1]" if which == "first" else "param_groups[1]['params'][0]"
    table.grad = sparse_rows(np.array([2, 0, bad_index, 4]), np.ones((4, 4), np.float32), tuple(table.shape))
    before = snapshot(opt)
    message = f"{label}.grad: index {bad_index} (position 2 of its indices)"
    with pytest.raises(ValueError, match=re.escape(message)):
        opt.step()
    assert snapshot(opt) == before


def bad_grads(shape):
    dense = torch.ones(shape)
    wider = (shape[0], shape[1] + 1)
    return {
        "CSR": (dense.to_sparse_csr(), ValueError, r"expected a dense \(strided\) or sparse COO tensor, got "
                                                   r"layout torch.sparse_csr"),
        "CSC": (dense.to_sparse_csc(), ValueError, r"got layout torch.sparse_csc"),
        "shape": (sparse_rows(np.array([1]), np.ones((1, shape[1] + 1), np.float32), wider),
                  ValueError, rf"expected shape \({shape[0]}, {shape[1]}\) \(as the param\), got"),
        "sparse dims": (dense.to_sparse(), ValueError, r"one sparse dim .* got 2 sparse dims"),
        "dtype": (sparse_rows(np.array([1]), np.ones((1, shape[1])), shape), TypeError,
                  r"expected values of dtype torch.float32 \(as the param\), got torch.float64"),
        "half": (sparse_rows(np.array([1]), np.ones((1, shape[1]), np.float16), shape), TypeError,
                 r"got torch.float16"),
    }


@pytest.mark.parametrize("optimizer, options", OPTIMIZERS, ids=["Adagrad", "SGD", "SGD-lazy"])
@pytest.mark.parametrize("case", ["CSR", "CSC", "shape", "sparse dims", "dtype", "half"])
def test_unusable_sparse_grad_is_named_and_nothing_is_written(optimizer, options, case):
    opt, _, _, second = three_params(optimizer, **options)
    grad, error, message = bad_grads(tuple(second.shape))[case]
    second.grad = grad
    before = snapshot(opt)
    with pytest.raises(error, match=r"param_groups\[1\]\['params'\]\[0\]\.grad: .*" + message):
        opt.step()
    assert snapshot(opt) == before


@pytest.mark.parametrize("which, bad_index", [("first", 10), ("first", -1), ("second", 12)])
def test_a_refused_step_fills_no_row_of_a_lazy_state(monkeypatch, which, bad_index):
    """With initial_accumulator_value != 0, lazy state gets the value written into a row at its first step:
    a step refused for a bad index writes nothing, not even that (the raw bytes stay as they were)."""
    monkeypatch.setattr(_state, "LAZY_BYTES", 0)            # every buffer lazy, however small
    opt, dense, first, second = three_params("Adagrad", initial_accumulator_value=0.1)
    assert opt.state[first]["sum"][0].eq(0).all()           # row 0 never stepped: not filled yet
    table = first if which == "first" else second
    table.grad = sparse_rows(np.array([2, 0, bad_index, 4]), np.ones((4, 4), np.float32), tuple(table.shape))
    before = snapshot(opt)
    with pytest.raises(ValueError, match="out of range"):
        opt.step()
    assert snapshot(opt) == before
    table.grad = sparse_rows(np.array([2, 0, 2]), np.ones((3, 4), np.float32), tuple(table.shape))
    opt.step()                                              # a good step fills rows 0 and 2 only
    raw = opt.state[table]["sum"].numpy()
    assert np.all(raw[[5, 6, 7]] == 0) and np.all(raw[[0, 2]] != 0)


def test_a_refused_dense_step_leaves_a_lazy_state_unfilled(monkeypatch):
    monkeypatch.setattr(_state, "LAZY_BYTES", 0)
    p = ForcedGrad(torch.ones(6, 3))
    opt = ct.Adagrad([p], lr=0.1, initial_accumulator_value=0.1)
    p.grad = sparse_rows(np.array([1]), np.ones((1, 3), np.float32), (6, 3))
    opt.step()
    for grad in (torch.ones(3, 6).t(), opt.state[p]["sum"]):    # not contiguous; the state itself
        p.grad = grad
        before = snapshot(opt)
        with pytest.raises(ValueError):
            opt.step()
        assert snapshot(opt) == before
    p.grad = torch.ones(6, 3)
    opt.step()
    assert_bitwise_equal(opt.state[p]["sum"].numpy()[[0, 2, 3, 4, 5]], np.full((5, 3), 1.1, np.float32))


@pytest.mark.parametrize("optimizer, options", [
    *OPTIMIZERS, ("SGD", {}), ("Adagrad", {"initial_accumulator_value": 0.1, "lr_decay": 0.1}),
], ids=["Adagrad", "SGD", "SGD-lazy", "SGD-plain", "Adagrad-lazy-state"])
@pytest.mark.parametrize("bad_index", [7, -1])
def test_a_bad_index_in_the_last_table_of_one_call_leaves_every_table_as_it_was(
    monkeypatch, optimizer, options, bad_index
):
    """The tables of a group step in one kernel call, which checks every index before it writes; lazy
    state with an initial value is filled only once all of them are known good."""
    monkeypatch.setattr(_state, "LAZY_BYTES", 0)
    rng = np.random.default_rng(8)
    dense = torch.from_numpy(random_array(rng, (5,), np.float32)).requires_grad_()
    tables = [ForcedGrad(torch.from_numpy(random_array(rng, shape, dtype))) for shape, dtype in TABLE_SPECS]
    opt = getattr(ct, optimizer)([dense, *tables], lr=0.1, **options)
    dense.grad = torch.ones(5)
    for t in tables:
        t.grad = ones_at([1, 3, 1], t)
    opt.step()                                    # buffers and step counts exist; rows 0, 2, 4 unfilled
    for t in tables[:-1]:
        t.grad = ones_at([0, 2, 4], t)
    tables[-1].grad = ones_at([2, 0, 4, bad_index], tables[-1])
    before = snapshot(opt)
    message = f"param_groups[0]['params'][3].grad: index {bad_index} (position 3 of its indices)"
    with pytest.raises(ValueError, match=re.escape(message)):
        opt.step()
    assert snapshot(opt) == before
    if optimizer == "Adagrad":
        assert all(opt.state[t]["sum"].numpy()[0].sum() == 0 for t in tables)   # not even filled


def test_sparse_grads_with_differentiable_true_are_refused_before_anything_is_written():
    opt, _, first, _ = three_params("Adagrad")
    first.grad = sparse_rows(np.array([1]), np.ones((1, 4), np.float32), (10, 4))
    opt.param_groups[1]["differentiable"] = True
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['differentiable'\]: True is not supported"):
        opt.step()
    assert snapshot(opt) == before
    with pytest.raises(ValueError, match="differentiable"):
        ct.Adagrad(nn.Embedding(3, 2, sparse=True).parameters(), differentiable=True)


# -- D: parity with torch.optim on a model with an EmbeddingBag(sparse=True) and dense layers --------------


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.bag = nn.EmbeddingBag(200, 8, mode="sum", sparse=True)
            self.mlp = nn.Sequential(nn.Linear(8 + 3, 16), nn.Tanh(), nn.Linear(16, 1))
        self.double()

    def forward(self, ids, offsets, x):
        return self.mlp(torch.cat([self.bag(ids, offsets), x], dim=1))


def batches(steps: int = 30) -> list[tuple]:
    """Zipf-like ids in bags of 0 to 8; one step whose batch names no row at all."""
    gen = np.random.default_rng(11)
    out = []
    for step in range(steps):
        sizes = gen.integers(0, 9, size=16) if step != 4 else np.zeros(16, dtype=np.int64)
        ids = (gen.zipf(1.3, size=int(sizes.sum())) - 1) % 200
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        x = gen.standard_normal((16, 3))
        out.append((torch.from_numpy(ids), torch.from_numpy(offsets), torch.from_numpy(x),
                    torch.from_numpy(gen.standard_normal((16, 1)))))
    return out


def fit(model, opt, data) -> list[float]:
    losses = []
    for ids, offsets, x, y in data:
        opt.zero_grad()
        loss = F.mse_loss(model(ids, offsets, x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


PARITY_CASES = [
    ("Adagrad", {"lr": 0.05, "lr_decay": 0.01, "initial_accumulator_value": 0.1}),
    ("SGD", {"lr": 0.05}),
    ("SGD", {"lr": 0.02, "momentum": 0.9}),
    ("SGD", {"lr": 0.02, "momentum": 0.8, "dampening": 0.25}),
]


PARITY_IDS = ["Adagrad", "SGD", "SGD-momentum", "SGD-damp"]


@pytest.mark.parametrize("optimizer, options", PARITY_CASES, ids=PARITY_IDS)
def test_embedding_bag_model_tracks_torch_optim_for_30_steps(optimizer, options):
    ours, theirs = Model(), Model()
    data = batches()
    losses = fit(ours, getattr(ct, optimizer)(ours.parameters(), **options), data)
    expected = fit(theirs, getattr(torch.optim, optimizer)(theirs.parameters(), **options), data)
    np.testing.assert_allclose(losses, expected, **PARITY)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), err_msg=name, **PARITY)
    assert not torch.equal(ours.bag.weight, Model().bag.weight)       # the table did train


def roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer)


@pytest.mark.parametrize("optimizer, options", [PARITY_CASES[0], PARITY_CASES[2]], ids=["Adagrad", "SGD"])
@pytest.mark.parametrize("direction", ["cadagrad->torch", "torch->cadagrad"])
def test_state_dict_of_sparse_steps_moves_between_torch_and_cadagrad(optimizer, options, direction):
    """15 steps with one, a checkpoint, 15 with the other: as torch.optim all along."""
    data = batches()
    first, second = (ct, torch.optim) if direction == "cadagrad->torch" else (torch.optim, ct)
    model, reference_model = Model(), Model()
    reference_opt = getattr(torch.optim, optimizer)(reference_model.parameters(), **options)
    fit(reference_model, reference_opt, data)
    opt = getattr(first, optimizer)(model.parameters(), **options)
    fit(model, opt, data[:15])
    checkpoint = roundtrip(opt.state_dict())
    resumed = getattr(second, optimizer)(model.parameters(), **options)
    resumed.load_state_dict(checkpoint)
    fit(model, resumed, data[15:])
    for (name, p), q in zip(model.named_parameters(), reference_model.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), err_msg=name, **PARITY)
    if optimizer == "Adagrad":
        state = resumed.state_dict()["state"][0]
        assert float(state["step"]) == 30 and state["sum"].shape == (200, 8)


def test_deepcopy_keeps_sgds_touched_rows_correct():
    """A copy rebuilds its record of touched rows from the buffer and steps as the original does."""
    model = Model()
    opt = ct.SGD(model.parameters(), lr=0.02, momentum=0.9)
    data = batches()
    fit(model, opt, data[:10])
    twin = copy.deepcopy(model)
    twin_opt = ct.SGD(twin.parameters(), lr=0.02, momentum=0.9)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    fit(model, opt, data[10:])
    fit(twin, twin_opt, data[10:])
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_cadagrad_step_rows_and_the_adapter_agree_on_an_embedding_bag():
    """The adapter's sparse path is the NumPy API's step_rows on the grad's own indices and values."""
    bag = nn.EmbeddingBag(50, 4, mode="sum", sparse=True)
    table = bag.weight.detach().numpy().copy()
    opt, twin = ct.Adagrad(bag.parameters(), lr=0.1), cadagrad.Adagrad(table, lr=0.1)
    ids = torch.tensor([3, 3, 9, 49, 0, 3])
    for _ in range(3):
        opt.zero_grad()
        bag(ids, torch.tensor([0, 2, 2])).pow(2).sum().backward()
        twin.step_rows(bag.weight.grad._indices()[0].numpy(), bag.weight.grad._values().numpy())
        opt.step()
    assert_bitwise_equal(bag.weight.detach().numpy(), table)


@pytest.mark.parametrize("make", [
    lambda ps: ct.SGD(ps, lr=0.5),
    lambda ps: ct.SGD(ps, lr=0.5, momentum=0.9, lazy_momentum=True),
    lambda ps: ct.SGD(ps, lr=0.5, stochastic_rounding=False, state_dtype="param"),
    lambda ps: ct.Adagrad(ps, lr=0.5),
])
def test_tables_that_take_turns_having_a_grad_each_get_their_own(make):
    """A step whose params with grads differ from the last step's, in the same number and layout, must
    not reuse the last step's plan (which would step one table with another's grad)."""
    a = torch.zeros((9, 1), requires_grad=True)
    b = torch.zeros((9, 2), requires_grad=True)
    opt = make([a, b])
    for table, other in ((b, a), (a, b), (b, a)):
        other.grad = None
        table.grad = torch.sparse_coo_tensor(torch.tensor([[3]]), torch.ones((1, table.shape[1])), table.shape)
        opt.step()
    assert torch.count_nonzero(a).item() == 1 and torch.count_nonzero(b).item() == 2
    assert a[3, 0] < 0 and torch.all(b[3] < 0)
