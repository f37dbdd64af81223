"""cadagrad.torch.ProximalAdagrad and AdagradDA: bit for bit the NumPy classes on the same grads, dense and
sparse COO (uncoalesced, duplicates); state dicts, per-param step counts, lazy state and refused input."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
from conftest import assert_bitwise_equal, dtypes, random_array, seeds
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import cadagrad  # noqa: E402
import cadagrad.torch as ct  # noqa: E402
from cadagrad import _state  # noqa: E402

KINDS = {
    "proximal": (ct.ProximalAdagrad, cadagrad.ProximalAdagrad),
    "da": (ct.AdagradDA, cadagrad.AdagradDA),
}
kinds = st.sampled_from(list(KINDS))
options = st.fixed_dictionaries(
    {
        "lr": st.floats(1e-3, 1.0),
        "l1": st.just(0.0) | st.floats(1e-4, 0.5),
        "l2": st.just(0.0) | st.floats(1e-4, 0.5),
        "initial_accumulator_value": st.sampled_from([0.1, 1.0, 1e-3]),
    }
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def lazy_everywhere():
    saved = _state.LAZY_BYTES
    _state.LAZY_BYTES = 0
    try:
        yield
    finally:
        _state.LAZY_BYTES = saved


def sparse_rows(indices: np.ndarray, values: np.ndarray, shape: tuple) -> torch.Tensor:
    """An uncoalesced COO grad with one sparse dim, as nn.Embedding(sparse=True) makes them."""
    return torch.sparse_coo_tensor(
        torch.from_numpy(indices)[None], torch.from_numpy(values), shape, check_invariants=False
    )


def assert_same_state(opt, twin, tensors):
    """The torch optimizer's params and state against the NumPy twin's, bit for bit."""
    for i, p in enumerate(tensors):
        assert_bitwise_equal(p.detach().numpy(), twin.params[i], f"params[{i}]")
        assert_bitwise_equal(opt.state[p]["sum"].numpy(), twin.sums[i], f"sum[{i}]")
        if isinstance(opt, ct.AdagradDA):
            assert_bitwise_equal(opt.state[p]["grad_sum"].numpy(), twin.grad_sums[i], f"grad_sum[{i}]")


@given(kind=kinds, dtype=dtypes, opts=options, seed=seeds, steps=st.integers(1, 6))
def test_dense_and_sparse_grads_give_the_numpy_class_bits(kind, dtype, opts, seed, steps):
    """A dense param and an embedding table in one optimizer; the table's grads uncoalesced, with
    duplicates, sometimes dense: every step equals the NumPy class's step or step_rows."""
    rng = np.random.default_rng(seed)
    cls, numpy_cls = KINDS[kind]
    arrays = [random_array(rng, (7, 3), dtype), random_array(rng, (40, 5), dtype)]
    tensors = [torch.from_numpy(a.copy()) for a in arrays]
    opt = cls(tensors, **opts)
    dense_twin = numpy_cls(arrays[0].copy(), **opts)
    table_twin = numpy_cls(arrays[1].copy(), **opts)
    for _ in range(steps):
        g = random_array(rng, (7, 3), dtype)
        tensors[0].grad = torch.from_numpy(g)
        dense_twin.step(g)
        if rng.random() < 0.3:
            t = random_array(rng, (40, 5), dtype)
            tensors[1].grad = torch.from_numpy(t)
            table_twin.step(t)
        else:
            idx = rng.integers(0, 20, size=int(rng.integers(0, 30)))
            rows = random_array(rng, (len(idx), 5), dtype)
            tensors[1].grad = sparse_rows(idx, rows, (40, 5))
            table_twin.step_rows(idx, rows)
        opt.step()
    assert_same_state(opt, dense_twin, tensors[:1])
    for key in ("sum", "grad_sum") if kind == "da" else ("sum",):
        ours = opt.state[tensors[1]][key].numpy()
        theirs = table_twin.sums[0] if key == "sum" else table_twin.grad_sums[0]
        assert_bitwise_equal(ours, theirs, key)
    assert_bitwise_equal(tensors[1].detach().numpy(), table_twin.params[0], "table")
    assert [float(opt.state[p]["step"]) for p in tensors] == [steps, steps]


@pytest.mark.parametrize("kind", list(KINDS))
def test_an_embedding_bag_model_steps_like_the_numpy_class(kind):
    cls, numpy_cls = KINDS[kind]
    torch.manual_seed(0)
    bag = torch.nn.EmbeddingBag(100, 8, mode="sum", sparse=True)
    table = bag.weight.detach().numpy().copy()
    opt = cls(bag.parameters(), lr=0.2, l1=0.05)
    twin = numpy_cls(table, lr=0.2, l1=0.05)
    for _ in range(5):
        bag(torch.randint(0, 100, (16, 4))).square().sum().backward()
        grad = bag.weight.grad
        twin.step_rows(grad._indices()[0].numpy(), grad._values().numpy())
        opt.step()
        opt.zero_grad()
    assert_bitwise_equal(bag.weight.detach().numpy(), table)
    assert (bag.weight == 0).any()                 # l1: exact zeros


@pytest.mark.parametrize("kind", list(KINDS))
def test_t_is_each_params_own_step_count(kind, rng):
    """A param without a grad skips a step (as in torch.optim); its T then lags the other's."""
    cls, numpy_cls = KINDS[kind]
    a, b = random_array(rng, (10,), np.float32), random_array(rng, (6,), np.float32)
    ta, tb = torch.from_numpy(a.copy()), torch.from_numpy(b.copy())
    opt = cls([ta, tb], lr=0.1, l1=0.01, l2=0.2)
    twin_a = numpy_cls(a.copy(), lr=0.1, l1=0.01, l2=0.2)
    twin_b = numpy_cls(b.copy(), lr=0.1, l1=0.01, l2=0.2)
    for step in range(4):
        ga = random_array(rng, (10,), np.float32)
        ta.grad = torch.from_numpy(ga)
        twin_a.step(ga)
        if step != 1:
            gb = random_array(rng, (6,), np.float32)
            tb.grad = torch.from_numpy(gb)
            twin_b.step(gb)
        else:
            tb.grad = None
        opt.step()
    assert float(opt.state[ta]["step"]) == 4 and float(opt.state[tb]["step"]) == 3
    assert_same_state(opt, twin_a, [ta])
    assert_bitwise_equal(tb.detach().numpy(), twin_b.params[0])


@pytest.mark.parametrize("kind", list(KINDS))
def test_state_dict_round_trip_continues_identically(kind, rng):
    cls, _ = KINDS[kind]
    arrays = [random_array(rng, (30, 4), np.float64), random_array(rng, (5,), np.float64)]
    first = [torch.from_numpy(a.copy()) for a in arrays]
    opt = cls(first, lr=0.3, l1=0.01, l2=0.1, initial_accumulator_value=0.5)
    grads = [[random_array(rng, a.shape, a.dtype) for a in arrays] for _ in range(5)]
    for g in grads[:2]:
        for t, gi in zip(first, g):
            t.grad = torch.from_numpy(gi)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())      # (its tensors are the optimizer's own)
    keys = {"step", "sum", "grad_sum"} if kind == "da" else {"step", "sum"}
    assert set(saved["state"][0]) == keys
    second = [t.detach().clone() for t in first]
    other = cls(second, lr=0.9)
    other.load_state_dict(saved)
    assert other.param_groups[0]["lr"] == 0.3
    for g in grads[2:]:
        for params in (first, second):
            for t, gi in zip(params, g):
                t.grad = torch.from_numpy(gi.copy())
        opt.step()
        other.step()
    for x, y in zip(first, second):
        assert_bitwise_equal(x.detach().numpy(), y.detach().numpy())


@pytest.mark.parametrize("kind", list(KINDS))
def test_lazy_state_over_a_table_gives_eager_bits(kind, rng):
    cls, numpy_cls = KINDS[kind]
    table = random_array(rng, (64, 4), np.float32)
    with lazy_everywhere():
        weight = torch.from_numpy(table.copy())
        opt = cls([weight], lr=0.1, l1=0.01, initial_accumulator_value=0.3)
    twin = numpy_cls(table.copy(), lr=0.1, l1=0.01, initial_accumulator_value=0.3)
    for kind_of_step in ("rows", "rows", "dense", "rows"):
        if kind_of_step == "rows":
            idx = rng.integers(0, 20, size=12)
            rows = random_array(rng, (12, 4), np.float32)
            weight.grad = sparse_rows(idx, rows, (64, 4))
            twin.step_rows(idx, rows)
        else:
            g = random_array(rng, (64, 4), np.float32)
            weight.grad = torch.from_numpy(g)
            twin.step(g)
        opt.step()
    opt.state_dict()                           # fills the untouched rows with the initial value
    assert_same_state(opt, twin, [weight])


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(
    "bad, exc, match",
    [
        ({"lr": 0.0}, ValueError, "^lr: expected a value > 0"),
        ({"l1": -1.0}, ValueError, "^l1:"),
        ({"l2": float("nan")}, ValueError, "^l2:"),
        ({"initial_accumulator_value": 0.0}, ValueError, "^initial_accumulator_value:"),
    ],
)
def test_bad_hyperparameters_are_refused_naming_them(kind, bad, exc, match):
    cls, _ = KINDS[kind]
    options = {"lr": 0.1, **bad}
    with pytest.raises(exc, match=match):
        cls([torch.zeros(3)], **options)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_bad_group_value_or_index_writes_nothing(kind, rng):
    cls, _ = KINDS[kind]
    dense = torch.from_numpy(random_array(rng, (5,), np.float32))
    table = torch.from_numpy(random_array(rng, (10, 3), np.float32))
    opt = cls([dense, table], lr=0.1, l1=0.01)
    dense.grad = torch.ones(5)
    table.grad = sparse_rows(np.array([1, 10]), np.ones((2, 3), np.float32), (10, 3))
    before = [t.detach().clone() for t in (dense, table)]
    states = [opt.state[p][k].clone() for p in (dense, table) for k in opt.state[p]]
    with pytest.raises(ValueError, match="index 10"):
        opt.step()
    table.grad = sparse_rows(np.array([1, 2]), np.ones((2, 3), np.float32), (10, 3))
    opt.param_groups[0]["l2"] = -0.5
    with pytest.raises(ValueError, match=r"^param_groups\[0\]: l2:"):
        opt.step()
    for t, old in zip((dense, table), before):
        assert torch.equal(t, old)
    assert all(torch.equal(a, opt.state[p][k]) for a, (p, k) in
               zip(states, [(p, k) for p in (dense, table) for k in opt.state[p]]))
    opt.param_groups[0]["l2"] = 0.0
    opt.step()
    assert not torch.equal(table, before[1])


def test_a_scheduler_drives_lr():
    w = torch.zeros(4)
    opt = ct.AdagradDA([w], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    w.grad = torch.ones(4)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5
    twin = cadagrad.AdagradDA(np.zeros(4, np.float32), lr=1.0)
    twin.step(np.ones(4, np.float32))
    twin.lr = 0.5
    twin.step(np.ones(4, np.float32))
    opt.step()
    assert_bitwise_equal(w.numpy(), twin.params[0])


@pytest.mark.parametrize("kind", list(KINDS))
def test_deepcopy_of_a_lazy_state_continues_identically(kind, rng):
    cls, _ = KINDS[kind]
    with lazy_everywhere():
        weight = torch.from_numpy(random_array(rng, (30, 4), np.float32))
        opt = cls([weight], lr=0.1, l1=0.01)
        weight.grad = sparse_rows(np.array([3, 3, 7]), random_array(rng, (3, 4), np.float32), (30, 4))
        opt.step()
        twin = copy.deepcopy(opt)
    twin_weight = twin.param_groups[0]["params"][0]
    g = random_array(rng, (30, 4), np.float32)
    weight.grad, twin_weight.grad = torch.from_numpy(g), torch.from_numpy(g.copy())
    opt.step()
    twin.step()
    assert_bitwise_equal(twin_weight.detach().numpy(), weight.detach().numpy())
    for key in opt.state[weight]:
        assert torch.equal(opt.state[weight][key], twin.state[twin_weight][key]), key
