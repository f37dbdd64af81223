"""cadagrad.torch on float16 and bfloat16 tensors: float32 state, bit for bit cadagrad.reference (dense and
sparse grads, mixed with float32 params), torch.optim's float32 step rounded once where torch's float32
rule is cadagrad's, the state_dict rules, and the refusals.
"""

from __future__ import annotations

import copy
import io

import ml_dtypes
import numpy as np
import pytest
from conftest import adagrad_options, assert_bitwise_equal, random_array, seeds, sgd_options
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import cadagrad.torch as ct  # noqa: E402
from cadagrad import _state, reference  # noqa: E402

nn = torch.nn

HALF = (torch.bfloat16, torch.float16)
NUMPY = {torch.bfloat16: np.dtype(ml_dtypes.bfloat16), torch.float16: np.dtype(np.float16),
         torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
half_dtypes = st.sampled_from(HALF)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A copy of ``t`` as an ndarray of its dtype (bfloat16 as ml_dtypes.bfloat16)."""
    t = t.detach()
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """A copy of ``a`` as a tensor of its dtype."""
    if a.dtype == NUMPY[torch.bfloat16]:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def random_tensor(rng, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """Normal values over several orders of magnitude (never all zeros), rounded to ``dtype``."""
    return as_tensor(random_array(rng, shape, np.float32).astype(NUMPY[dtype]))


def sparse_rows(indices: np.ndarray, values: torch.Tensor, shape: tuple) -> torch.Tensor:
    """An uncoalesced COO grad with one sparse dim, as nn.Embedding(sparse=True) makes them."""
    return torch.sparse_coo_tensor(
        torch.from_numpy(indices).reshape(1, -1), values, shape, check_invariants=False
    )


def random_rows(rng, nrows: int, shape: tuple, dtype: torch.dtype) -> tuple[np.ndarray, torch.Tensor]:
    """k ids with many duplicates (k may be 0) and their rows."""
    k = int(rng.integers(0, 3 * nrows + 1)) if rng.random() > 0.15 else 0
    indices = rng.integers(0, nrows, size=k).astype(np.int64)
    return indices, random_tensor(rng, (k, *shape[1:]), dtype)


def same_bits(actual: torch.Tensor, expected: np.ndarray, what: str) -> None:
    assert_bitwise_equal(as_numpy(actual), expected, what)


def snapshot(opt, tensors=()) -> list[bytes]:
    """The bytes of every param and state tensor of ``opt`` (and of ``tensors``)."""
    out = []
    for group in opt.param_groups:
        for p in group["params"]:
            out.append(as_numpy(p).tobytes())
            for value in opt.state.get(p, {}).values():
                if isinstance(value, torch.Tensor):
                    out.append(as_numpy(value).tobytes())
    return out + [as_numpy(t).tobytes() for t in tensors]


# -- bit for bit cadagrad.reference ------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=seeds, dtype=half_dtypes, options=adagrad_options(), rowwise=st.booleans(),
       steps=st.integers(1, 4))
def test_dense_adagrad_on_16_bit_tensors_matches_reference_bitwise(seed, dtype, options, rowwise, steps):
    """A 16-bit param and a float32 param in one group: float32 state for both, the reference's bits."""
    rng = np.random.default_rng(seed)
    params = [random_tensor(rng, (5, 3), dtype).requires_grad_(),
              random_tensor(rng, (2, 4), torch.float32).requires_grad_()]
    refs = [reference.Adagrad(as_numpy(p), rowwise=rowwise, **options) for p in params]
    opt = ct.Adagrad(params, rowwise=rowwise, **options)
    for _ in range(steps):
        for p, ref in zip(params, refs):
            p.grad = random_tensor(rng, p.shape, p.dtype)
            ref.step(as_numpy(p.grad))
        opt.step()
    for i, (p, ref) in enumerate(zip(params, refs)):
        same_bits(p, ref.params[0], f"params[{i}]")
        assert opt.state[p]["sum"].dtype is torch.float32
        same_bits(opt.state[p]["sum"], ref.sums[0], f"sum of params[{i}]")
        assert float(opt.state[p]["step"]) == steps


@settings(max_examples=30, deadline=None)
@given(seed=seeds, dtype=half_dtypes, options=sgd_options(), steps=st.integers(1, 4))
def test_dense_sgd_on_16_bit_tensors_matches_reference_bitwise(seed, dtype, options, steps):
    rng = np.random.default_rng(seed)
    params = [random_tensor(rng, (4, 3), dtype).requires_grad_(),
              random_tensor(rng, (7,), torch.float32).requires_grad_()]
    refs = [reference.SGD(as_numpy(p), **options) for p in params]
    opt = ct.SGD(params, **options)
    for _ in range(steps):
        for p, ref in zip(params, refs):
            p.grad = random_tensor(rng, p.shape, p.dtype)
            ref.step(as_numpy(p.grad))
        opt.step()
    for i, (p, ref) in enumerate(zip(params, refs)):
        same_bits(p, ref.params[0], f"params[{i}]")
        if options["momentum"] != 0:
            assert opt.state[p]["momentum_buffer"].dtype is torch.float32
            same_bits(opt.state[p]["momentum_buffer"], ref.momentum_buffers[0], f"buffer of params[{i}]")


@settings(max_examples=30, deadline=None)
@given(seed=seeds, dtype=half_dtypes, options=adagrad_options(), rowwise=st.booleans(),
       nrows=st.integers(1, 20), width=st.integers(1, 5), steps=st.integers(1, 5))
def test_sparse_adagrad_on_16_bit_tables_matches_reference_step_rows_bitwise(
    seed, dtype, options, rowwise, nrows, width, steps
):
    """A 16-bit table, a float32 table (one row-kernel call for both) and a dense 16-bit param in one
    group; a table sometimes has no grad (its own step count then falls behind, for lr_decay)."""
    rng = np.random.default_rng(seed)
    tables = [random_tensor(rng, (nrows, width), dtype).requires_grad_(),
              random_tensor(rng, (nrows + 1, width), torch.float32).requires_grad_()]
    dense = random_tensor(rng, (3, width), dtype).requires_grad_()
    opt = ct.Adagrad([*tables, dense], rowwise=rowwise, **options)
    refs = [reference.Adagrad(as_numpy(t), rowwise=rowwise, **options) for t in (*tables, dense)]
    for _ in range(steps):
        for table, ref in zip(tables, refs):
            if rng.random() < 0.2:
                table.grad = None
            else:
                indices, values = random_rows(rng, table.shape[0], table.shape, table.dtype)
                table.grad = sparse_rows(indices, values, table.shape)
                ref.step_rows(indices.copy(), as_numpy(values))
        dense.grad = random_tensor(rng, dense.shape, dtype)
        refs[2].step(as_numpy(dense.grad))
        opt.step()
    for i, (p, ref) in enumerate(zip((*tables, dense), refs)):
        same_bits(p, ref.params[0], f"params[{i}]")
        same_bits(opt.state[p]["sum"], ref.sums[0], f"sum of params[{i}]")
        assert float(opt.state[p]["step"]) == ref.step_count


@settings(max_examples=30, deadline=None)
@given(seed=seeds, dtype=half_dtypes, options=sgd_options(), nrows=st.integers(1, 20),
       width=st.integers(1, 5), steps=st.integers(1, 5))
def test_sparse_sgd_lazy_or_without_momentum_on_16_bit_tables_matches_reference_step_rows_bitwise(
    seed, dtype, options, nrows, width, steps
):
    rng = np.random.default_rng(seed)
    tables = [random_tensor(rng, (nrows, width), dtype).requires_grad_(),
              random_tensor(rng, (nrows, width + 1), torch.float32).requires_grad_()]
    opt = ct.SGD(tables, lazy_momentum=True, **options)
    refs = [reference.SGD(as_numpy(t), **options) for t in tables]
    for _ in range(steps):
        for table, ref in zip(tables, refs):
            indices, values = random_rows(rng, nrows, table.shape, table.dtype)
            table.grad = sparse_rows(indices, values, table.shape)
            ref.step_rows(indices.copy(), as_numpy(values))
        opt.step()
    for i, (table, ref) in enumerate(zip(tables, refs)):
        same_bits(table, ref.params[0], f"tables[{i}]")
        if options["momentum"] != 0:
            same_bits(opt.state[table]["momentum_buffer"], ref.momentum_buffers[0], f"buffer of tables[{i}]")


def scattered(indices: np.ndarray, values: torch.Tensor, table: np.ndarray, options: dict) -> np.ndarray:
    """The float32 grad that torch's rule applies to every row of a 16-bit table: the named rows' grads
    widened and summed in order (negated with maximize, plus weight decay there), zero elsewhere."""
    grad = np.zeros(table.shape, np.float32)
    np.add.at(grad, indices, as_numpy(values).astype(np.float32))
    named = np.unique(indices)
    g = -grad[named] if options.get("maximize") else grad[named]
    if options.get("weight_decay", 0) != 0:
        g = g + np.float32(options["weight_decay"]) * table[named].astype(np.float32)
    grad[named] = g
    return grad


@settings(max_examples=30, deadline=None)
@given(seed=seeds, dtype=half_dtypes, options=sgd_options().filter(lambda o: o["momentum"] != 0),
       nrows=st.integers(1, 20), width=st.integers(1, 5), steps=st.integers(1, 6))
def test_sparse_sgd_torch_rule_on_16_bit_tables_is_the_dense_rule_on_the_scattered_grad_bitwise(
    seed, dtype, options, nrows, width, steps
):
    """Every row named once keeps moving; a dense grad now and then (every row's buffer moves) too."""
    rng = np.random.default_rng(seed)
    table = random_tensor(rng, (nrows, width), dtype).requires_grad_()
    opt = ct.SGD([table], **options)
    plain = {**options, "weight_decay": 0.0, "maximize": False}
    ref = reference.SGD(as_numpy(table), **plain)
    for _ in range(steps):
        if rng.random() < 0.2:
            g = random_tensor(rng, table.shape, dtype)
            table.grad = g
            wide = as_numpy(g).astype(np.float32)
            effective = -wide if options["maximize"] else wide
            if options["weight_decay"] != 0:
                effective = effective + np.float32(options["weight_decay"]) * ref.params[0].astype(np.float32)
            ref.step(effective)
        else:
            indices, values = random_rows(rng, nrows, table.shape, dtype)
            table.grad = sparse_rows(indices, values, table.shape)
            ref.step(scattered(indices, values, ref.params[0], options))
        opt.step()
    same_bits(table, ref.params[0], "table")
    same_bits(opt.state[table]["momentum_buffer"], ref.momentum_buffers[0], "buffer")


@pytest.mark.parametrize("optimizer", ["Adagrad", "SGD"])
def test_tables_of_every_dtype_step_in_one_row_kernel_call_bitwise(optimizer, rng):
    """bfloat16, float16, float32 and float64 tables in one group (one ``*_rows_many`` call), with
    empty, duplicate-heavy and uncoalesced grads."""
    options = {"lr": 0.05, "weight_decay": 0.01}
    options.update({"lr_decay": 0.1} if optimizer == "Adagrad" else {"momentum": 0.9, "lazy_momentum": True})
    every = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
    tables = [random_tensor(rng, (9, w), dtype).requires_grad_() for w, dtype in zip((3, 5, 4, 2), every)]
    make = getattr(reference, optimizer)
    ref_options = {k: v for k, v in options.items() if k != "lazy_momentum"}
    refs = [make(as_numpy(t), **ref_options) for t in tables]
    opt = getattr(ct, optimizer)(tables, **options)
    for step in range(4):
        for j, (table, ref) in enumerate(zip(tables, refs)):
            k = 0 if (step + j) % 4 == 0 else 12
            indices = rng.integers(0, 9, size=k).astype(np.int64)
            values = random_tensor(rng, (k, table.shape[1]), table.dtype)
            table.grad = sparse_rows(indices, values, table.shape)
            ref.step_rows(indices.copy(), as_numpy(values))
        opt.step()
    for i, (table, ref) in enumerate(zip(tables, refs)):
        same_bits(table, ref.params[0], f"tables[{i}]")


# -- torch.optim: its float32 step, rounded once --------------------------------------------------------

# Where torch.optim.Adagrad's float32 step is cadagrad's float32 rule bit for bit (its first step, eps
# outside the root, which is torch's only placement): weight decay is left out (torch adds it with a fused
# multiply-add, tests/test_torch_agreement.py). fused=True also agrees with a non-zero initial value.
TORCH_ADAGRAD_CASES = [
    {},
    {"lr_decay": 0.05},
    {"initial_accumulator_value": 0.1},
    {"eps": 1e-3},
    {"maximize": True, "lr_decay": 0.5, "eps": 1e-7},
]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("options", TORCH_ADAGRAD_CASES, ids=lambda o: ",".join(o) or "defaults")
def test_one_adagrad_step_is_torch_optims_float32_step_rounded_once_bitwise(dtype, options, rng):
    param = random_tensor(rng, (64, 33), dtype)
    grad = random_tensor(rng, param.shape, dtype)
    wide = param.float().requires_grad_()
    theirs = torch.optim.Adagrad([wide], lr=0.05, fused=True, **options)
    wide.grad = grad.float()
    theirs.step()
    ours_param = param.clone().requires_grad_()
    ours = ct.Adagrad([ours_param], lr=0.05, **options)
    ours_param.grad = grad.clone()
    ours.step()
    assert torch.equal(ours_param.detach().view(torch.int16), wide.detach().to(dtype).view(torch.int16))
    ours_sum, their_sum = ours.state[ours_param]["sum"], theirs.state[wide]["sum"]
    assert torch.equal(ours_sum.view(torch.int32), their_sum.view(torch.int32))


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("options", [{}, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}],
                         ids=["plain", "nesterov"])
def test_one_sgd_step_is_torch_optims_float32_step_rounded_once_within_one_ulp(dtype, options, rng):
    """torch's ``p.add_(g, alpha=-lr)`` is a fused multiply-add, cadagrad's ``p - lr * g`` rounds twice:
    the float32 results may differ in the last bit, so the rounded ones by at most one 16-bit ulp."""
    param = random_tensor(rng, (64, 33), dtype)
    grad = random_tensor(rng, param.shape, dtype)
    wide = param.float().requires_grad_()
    theirs = torch.optim.SGD([wide], lr=0.01, **options)
    wide.grad = grad.float()
    theirs.step()
    ours_param = param.clone().requires_grad_()
    ours = ct.SGD([ours_param], lr=0.01, **options)
    ours_param.grad = grad.clone()
    ours.step()
    expected = wide.detach().to(dtype)
    ulp = float(ml_dtypes.finfo(NUMPY[dtype]).eps)
    torch.testing.assert_close(ours_param.detach().float(), expected.float(), rtol=ulp, atol=0.0)
    assert (ours_param.detach() == expected).float().mean() > 0.99


# -- a small embedding model -----------------------------------------------------------------------------


class Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(40, 8, mode="sum", sparse=True)
        self.head = nn.Linear(8, 1)

    def forward(self, ids, offsets):
        return self.head(self.bag(ids, offsets)).squeeze(-1)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("optimizer,options", [
    ("Adagrad", {"lr": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "lazy_momentum": True}),
])
def test_a_16_bit_embedding_bag_model_trains(dtype, optimizer, options):
    torch.manual_seed(0)
    model = Bag().to(dtype)
    opt = getattr(ct, optimizer)(model.parameters(), **options)
    ids = torch.randint(0, 40, (64,))
    offsets = torch.arange(0, 64, 4)
    target = torch.linspace(-1, 1, 16, dtype=dtype)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = ((model(ids, offsets) - target) ** 2).mean()
        loss.backward()
        assert model.bag.weight.grad.is_sparse and model.bag.weight.grad.dtype is dtype
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]
    assert all(v.dtype in (torch.float32,) for s in opt.state.values() for k, v in s.items() if k != "step")


# -- state_dict ------------------------------------------------------------------------------------------


def trained(optimizer: str, options: dict, steps: int = 3, seed: int = 5):
    """A bf16 table with sparse grads and an fp16 and an f32 param with dense ones, stepped ``steps``
    times; returns the params, the optimizer and a function that sets the next grads."""
    rng = np.random.default_rng(seed)
    params = [random_tensor(rng, (8, 3), torch.bfloat16).requires_grad_(),
              random_tensor(rng, (4,), torch.float16).requires_grad_(),
              random_tensor(rng, (2, 2), torch.float32).requires_grad_()]
    grads = np.random.default_rng(seed + 1)

    def set_grads(ps):
        indices = grads.integers(0, 8, size=10).astype(np.int64)
        ps[0].grad = sparse_rows(indices, random_tensor(grads, (10, 3), torch.bfloat16), ps[0].shape)
        ps[1].grad = random_tensor(grads, (4,), torch.float16)
        ps[2].grad = random_tensor(grads, (2, 2), torch.float32)

    opt = getattr(ct, optimizer)(params, **options)
    for _ in range(steps):
        set_grads(params)
        opt.step()
    return params, opt, set_grads


STATEFUL = [("Adagrad", {"lr": 0.1, "initial_accumulator_value": 0.1}), ("SGD", {"lr": 0.1, "momentum": 0.9})]


@pytest.mark.parametrize("optimizer,options", STATEFUL)
@pytest.mark.parametrize("how", ["state_dict", "torch.save", "deepcopy"])
def test_state_of_16_bit_params_is_float32_and_round_trips_bitwise(optimizer, options, how):
    params, opt, set_grads = trained(optimizer, options)
    key = opt._state_key
    assert all(opt.state[p][key].dtype is torch.float32 for p in params)
    copies = [p.detach().clone().requires_grad_() for p in params]
    other = getattr(ct, optimizer)(copies, **options)
    saved = opt.state_dict()
    if how == "torch.save":
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
    elif how == "deepcopy":
        saved = copy.deepcopy(saved)
    other.load_state_dict(saved)
    for p, q in zip(params, copies):
        assert other.state[q][key].dtype is torch.float32          # not cast to the param's dtype
        assert as_numpy(other.state[q][key]).tobytes() == as_numpy(opt.state[p][key]).tobytes()
    for _ in range(2):
        set_grads(params)
        for p, q in zip(params, copies):
            q.grad = p.grad.clone()
        # ``other`` first: a state_dict not copied shares its "step" tensors with ``opt`` (as torch.optim's
        # does) until ``other``'s first step has read them.
        other.step()
        opt.step()
    assert snapshot(other) == snapshot(opt)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("optimizer,options", STATEFUL)
def test_torch_optims_16_bit_state_is_widened_exactly_on_load(dtype, optimizer, options, rng):
    """torch.optim keeps a 16-bit param's state in its dtype: loaded here it becomes float32, exactly, and
    the next steps are the reference's from those values."""
    key = {"Adagrad": "sum", "SGD": "momentum_buffer"}[optimizer]
    param = random_tensor(rng, (6, 4), dtype).requires_grad_()
    theirs = getattr(torch.optim, optimizer)([param], **options)
    for _ in range(2):
        param.grad = random_tensor(rng, param.shape, dtype)
        theirs.step()
    assert theirs.state[param][key].dtype is dtype
    ours = getattr(ct, optimizer)([param], **options)
    ours.load_state_dict(theirs.state_dict())
    loaded = ours.state[param][key]
    assert loaded.dtype is torch.float32
    assert torch.equal(loaded, theirs.state[param][key].float())
    ref = getattr(reference, optimizer)(as_numpy(param), **options)
    if optimizer == "Adagrad":
        ref.sums[0][...] = loaded.numpy()
        ref.step_count = 2
    else:
        ref.momentum_buffers[0][...] = loaded.numpy()
        ref.step_count = 2
    g = random_tensor(rng, param.shape, dtype)
    param.grad = g
    ours.step()
    ref.step(as_numpy(g))
    same_bits(param, ref.params[0], "param")
    same_bits(ours.state[param][key], ref.sums[0] if optimizer == "Adagrad" else ref.momentum_buffers[0], key)


def test_a_checkpoint_whose_16_bit_state_is_float64_is_refused_naming_the_key_and_nothing_changes():
    params, opt, _ = trained("Adagrad", {"lr": 0.1})
    saved = opt.state_dict()
    saved = {"state": {k: dict(v) for k, v in saved["state"].items()}, "param_groups": saved["param_groups"]}
    saved["state"][0]["sum"] = saved["state"][0]["sum"].double()
    saved["param_groups"][0]["lr"] = 0.5
    before = snapshot(opt)
    sums = [opt.state[p]["sum"] for p in params]
    with pytest.raises(TypeError, match=r"^state_dict\['state'\]\[0\]\['sum'\]: expected torch.float32 .*"
                                        r"got torch.float64; converting it would round"):
        opt.load_state_dict(saved)
    assert snapshot(opt) == before
    assert [opt.state[p]["sum"] for p in params] == sums and opt.param_groups[0]["lr"] == 0.1
    # The float32/float64 params keep torch.optim's rule: cast to the param's dtype.
    saved["state"][0]["sum"] = saved["state"][0]["sum"].float()
    saved["state"][2]["sum"] = saved["state"][2]["sum"].double()
    opt.load_state_dict(saved)
    assert opt.state[params[2]]["sum"].dtype is torch.float32


def test_a_state_of_another_dtype_put_in_state_is_refused_at_the_step_and_nothing_is_written():
    params, opt, set_grads = trained("SGD", {"lr": 0.1, "momentum": 0.9})
    opt.state[params[1]]["momentum_buffer"] = opt.state[params[1]]["momentum_buffer"].double()
    set_grads(params)
    before = snapshot(opt)
    with pytest.raises(TypeError, match=r"^state of param_groups\[0\]\['params'\]\[1\]\['momentum_buffer'\]: "
                                        r"expected torch.float32 .*got torch.float64"):
        opt.step()
    assert snapshot(opt) == before
    # In the param's dtype (float16 here), it is widened exactly, as from a checkpoint.
    opt.state[params[1]]["momentum_buffer"] = opt.state[params[1]]["momentum_buffer"].to(torch.float16)
    opt.step()
    assert opt.state[params[1]]["momentum_buffer"].dtype is torch.float32


def test_torch_optim_loads_our_float32_state_by_its_own_rule():
    """torch.optim casts loaded state to the param's dtype: a documented loss when going that way."""
    params, opt, _ = trained("Adagrad", {"lr": 0.1})
    theirs = torch.optim.Adagrad([p.detach().clone().requires_grad_() for p in params], lr=0.1)
    theirs.load_state_dict(opt.state_dict())
    for p, q in zip(params, theirs.param_groups[0]["params"]):
        assert theirs.state[q]["sum"].dtype is p.dtype
        assert torch.equal(theirs.state[q]["sum"], opt.state[p]["sum"].to(p.dtype))


# -- refusals -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("optimizer", ["ProximalAdagrad", "AdagradDA"])
def test_the_proximal_optimizers_refuse_16_bit_params_naming_them(optimizer, dtype, rng):
    ok = random_tensor(rng, (3,), torch.float32).requires_grad_()
    half = random_tensor(rng, (3,), dtype).requires_grad_()
    before = [as_numpy(ok).tobytes(), as_numpy(half).tobytes()]
    expected = (r"^param_groups\[0\]\['params'\]\[1\]: expected dtype torch.float32 or torch.float64 "
                rf"\(this optimizer steps no 16-bit params; .*\), got {dtype}$")
    with pytest.raises(TypeError, match=expected):
        getattr(ct, optimizer)([ok, half], lr=0.1)
    opt = getattr(ct, optimizer)([ok], lr=0.1)
    state = copy.deepcopy(opt.state_dict())
    with pytest.raises(TypeError, match=r"^param_groups\[1\]\['params'\]\[0\]: expected dtype torch.float32"):
        opt.add_param_group({"params": [half]})
    assert len(opt.param_groups) == 1
    assert [as_numpy(ok).tobytes(), as_numpy(half).tobytes()] == before
    assert str(opt.state_dict()) == str(state)


def mixed_step_setup(rng):
    """A bf16 table (sparse grad), an fp16 and an f32 param (dense grads) in two groups."""
    table = random_tensor(rng, (6, 3), torch.bfloat16).requires_grad_()
    half = random_tensor(rng, (5,), torch.float16).requires_grad_()
    other = random_tensor(rng, (4,), torch.float32).requires_grad_()
    opt = ct.Adagrad([{"params": [table, half]}, {"params": [other]}], lr=0.1)
    table.grad = sparse_rows(np.array([1, 1, 4]), random_tensor(rng, (3, 3), torch.bfloat16), table.shape)
    half.grad = random_tensor(rng, half.shape, torch.float16)
    other.grad = random_tensor(rng, other.shape, torch.float32)
    opt.step()                                  # a plan is cached: the next steps take the fast path
    return opt, table, half, other


@pytest.mark.parametrize("case", ["sparse-f32-values", "sparse-f16-values", "dense-f32", "dense-bf16"])
def test_a_grad_of_another_dtype_is_refused_naming_it_and_nothing_is_written(case, rng):
    opt, table, half, other = mixed_step_setup(rng)
    other.grad = random_tensor(rng, other.shape, torch.float32)
    table.grad = sparse_rows(np.array([0, 2]), random_tensor(rng, (2, 3), torch.bfloat16), table.shape)
    half.grad = random_tensor(rng, half.shape, torch.float16)
    if case.startswith("sparse"):
        dtype = torch.float32 if case == "sparse-f32-values" else torch.float16
        table.grad_dtype = None                 # torch 2.13 lets a grad differ from its param then
        table.grad = sparse_rows(np.array([0, 2]), random_tensor(rng, (2, 3), dtype), table.shape)
        label, expected, got = r"param_groups\[0\]\['params'\]\[0\]", "torch.bfloat16", dtype
    else:
        dtype = torch.float32 if case == "dense-f32" else torch.bfloat16
        half.grad_dtype = None                  # torch 2.13 lets a grad differ from its param then
        half.grad = random_tensor(rng, half.shape, dtype)
        label, expected, got = r"param_groups\[0\]\['params'\]\[1\]", "torch.float16", dtype
    before = snapshot(opt)
    with pytest.raises(TypeError, match=rf"^{label}\.grad: expected (values of )?dtype {expected} \(as the "
                                        rf"param\), got {got}$"):
        opt.step()
    assert snapshot(opt) == before


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_a_grad_with_its_negative_bit_set_is_never_read_as_its_bits(dtype, rng):
    """A bfloat16 view through int16 would drop the negative bit: such a grad is refused, as a float32
    one is (it cannot be viewed without a copy); a sparse grad's values are resolved and stepped."""
    param = random_tensor(rng, (4, 3), dtype).requires_grad_()
    opt = ct.Adagrad([param], lr=0.1)
    param.grad = torch._neg_view(random_tensor(rng, param.shape, dtype))
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"^param_groups\[0\]\['params'\]\[0\]\.grad: cannot be viewed"):
        opt.step()
    assert snapshot(opt) == before
    values = random_tensor(rng, (2, 3), dtype)
    expected = param.detach().clone().requires_grad_()
    ref = ct.Adagrad([expected], lr=0.1)
    param.grad = sparse_rows(np.array([3, 0]), torch._neg_view(-values), param.shape)
    expected.grad = sparse_rows(np.array([3, 0]), values, param.shape)
    opt.step()
    ref.step()
    assert snapshot(opt) == snapshot(ref)


def test_a_large_16_bit_table_gets_lazy_float32_state_with_the_references_bits(rng):
    """4 MiB of float32 state (2 MiB of bfloat16 param): lazy, the initial value written into the rows a
    step names, every other row by ``state_dict()``."""
    table = random_tensor(rng, (1 << 16, 16), torch.bfloat16).requires_grad_()
    opt = ct.Adagrad([table], lr=0.1, initial_accumulator_value=0.25)
    assert opt._owned[table][1].pending and opt.state[table]["sum"].nbytes >= _state.LAZY_BYTES
    ref = reference.Adagrad(as_numpy(table), lr=0.1, initial_accumulator_value=0.25)
    for _ in range(2):
        indices, values = random_rows(rng, 40, table.shape, torch.bfloat16)
        table.grad = sparse_rows(indices, values, table.shape)
        ref.step_rows(indices.copy(), as_numpy(values))
        opt.step()
    same_bits(table, ref.params[0], "table")
    same_bits(opt.state_dict()["state"][0]["sum"], ref.sums[0], "sum")
