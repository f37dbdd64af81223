"""cadagrad.torch's precision options for float16/bfloat16 params: ``state_dtype="param"`` (state in the
param's dtype, torch.optim's layout) and ``stochastic_rounding`` with its ``seed``, as per-group options:
bit for bit cadagrad.reference (dense and sparse grads, mixed groups), checkpoints (torch.optim's layout,
the conversion rules, a stochastic run resumed bit for bit), and the refusals.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import adagrad_options, assert_bitwise_equal, seeds, sgd_options
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from test_torch_half import (  # noqa: E402
    HALF,
    NUMPY,
    as_numpy,
    half_dtypes,
    random_rows,
    random_tensor,
    same_bits,
    scattered,
    snapshot,
    sparse_rows,
)

import cadagrad.torch as ct  # noqa: E402
from cadagrad import reference  # noqa: E402

modes = st.sampled_from([None, "param"])
KEY = {"Adagrad": "sum", "SGD": "momentum_buffer"}
STATEFUL = [("Adagrad", {"lr": 0.1}), ("SGD", {"lr": 0.1, "momentum": 0.9})]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def state_of(ref, optimizer: str):
    return ref.sums[0] if optimizer == "Adagrad" else ref.momentum_buffers[0]


def expected_state_dtype(p: torch.Tensor, mode) -> torch.dtype:
    return p.dtype if mode == "param" or p.dtype not in HALF else torch.float32


def roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


# -- bit for bit cadagrad.reference ------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=seeds, dtype=half_dtypes, mode=modes, stochastic=st.booleans(), options=adagrad_options(),
       rowwise=st.booleans(), steps=st.integers(1, 4), rounding_seed=st.integers(0, 2**64 - 1))
def test_dense_adagrad_with_each_mode_matches_reference_bitwise(
    seed, dtype, mode, stochastic, options, rowwise, steps, rounding_seed
):
    """Group 0: a 16-bit and a float32 param with the options; group 1: a float32 param without them."""
    rng = np.random.default_rng(seed)
    params = [random_tensor(rng, (5, 3), dtype).requires_grad_(),
              random_tensor(rng, (2, 4), torch.float32).requires_grad_(),
              random_tensor(rng, (3, 2), torch.float32).requires_grad_()]
    precision = {"state_dtype": mode, "stochastic_rounding": stochastic, "seed": rounding_seed}
    opt = ct.Adagrad([{"params": params[:2], **precision},
                      {"params": params[2:], "state_dtype": mode}], rowwise=rowwise, **options)
    refs = [reference.Adagrad(as_numpy(p), rowwise=rowwise, **options, **precision) for p in params[:2]]
    refs.append(reference.Adagrad(as_numpy(params[2]), rowwise=rowwise, **options))
    for _ in range(steps):
        for p, ref in zip(params, refs):
            p.grad = random_tensor(rng, p.shape, p.dtype)
            ref.step(as_numpy(p.grad))
        opt.step()
    for i, (p, ref) in enumerate(zip(params, refs)):
        same_bits(p, ref.params[0], f"params[{i}]")
        assert opt.state[p]["sum"].dtype is expected_state_dtype(p, mode)
        same_bits(opt.state[p]["sum"], ref.sums[0], f"sum of params[{i}]")
        assert float(opt.state[p]["step"]) == steps


@settings(max_examples=40, deadline=None)
@given(seed=seeds, dtype=half_dtypes, mode=modes, stochastic=st.booleans(), options=sgd_options(),
       steps=st.integers(1, 4), rounding_seed=st.integers(0, 2**64 - 1))
def test_dense_sgd_with_each_mode_matches_reference_bitwise(
    seed, dtype, mode, stochastic, options, steps, rounding_seed
):
    rng = np.random.default_rng(seed)
    other = HALF[1] if dtype is HALF[0] else HALF[0]
    params = [random_tensor(rng, (4, 3), dtype).requires_grad_(),
              random_tensor(rng, (7,), torch.float32).requires_grad_(),
              random_tensor(rng, (2, 2), other).requires_grad_()]
    precision = {"state_dtype": mode, "stochastic_rounding": stochastic, "seed": rounding_seed}
    opt = ct.SGD([{"params": params[:2], **precision}, {"params": params[2:]}], **options)
    refs = [reference.SGD(as_numpy(p), **options, **precision) for p in params[:2]]
    refs.append(reference.SGD(as_numpy(params[2]), **options))
    for _ in range(steps):
        for p, ref in zip(params, refs):
            p.grad = random_tensor(rng, p.shape, p.dtype)
            ref.step(as_numpy(p.grad))
        opt.step()
    for i, (p, ref) in enumerate(zip(params, refs)):
        same_bits(p, ref.params[0], f"params[{i}]")
        if options["momentum"] != 0:
            expected = expected_state_dtype(p, mode if i < 2 else None)
            assert opt.state[p]["momentum_buffer"].dtype is expected
            same_bits(opt.state[p]["momentum_buffer"], ref.momentum_buffers[0], f"buffer of params[{i}]")
        if stochastic and i < 2:
            assert float(opt.state[p]["step"]) == steps


@settings(max_examples=40, deadline=None)
@given(seed=seeds, dtype=half_dtypes, mode=modes, stochastic=st.booleans(), options=adagrad_options(),
       rowwise=st.booleans(), nrows=st.integers(1, 20), width=st.integers(1, 5), steps=st.integers(1, 5),
       rounding_seed=st.integers(0, 2**64 - 1))
def test_sparse_adagrad_with_each_mode_matches_reference_step_rows_bitwise(
    seed, dtype, mode, stochastic, options, rowwise, nrows, width, steps, rounding_seed
):
    """Two 16-bit tables (one of each dtype), a float32 table and a dense 16-bit param in one group;
    uncoalesced grads with duplicates; a table sometimes has no grad (its own count, and t, fall behind)."""
    rng = np.random.default_rng(seed)
    other = HALF[1] if dtype is HALF[0] else HALF[0]
    tables = [random_tensor(rng, (nrows, width), dtype).requires_grad_(),
              random_tensor(rng, (nrows + 1, width), torch.float32).requires_grad_(),
              random_tensor(rng, (nrows, width + 1), other).requires_grad_()]
    dense = random_tensor(rng, (3, width), dtype).requires_grad_()
    precision = {"state_dtype": mode, "stochastic_rounding": stochastic, "seed": rounding_seed}
    opt = ct.Adagrad([*tables, dense], rowwise=rowwise, **options, **precision)
    refs = [reference.Adagrad(as_numpy(t), rowwise=rowwise, **options, **precision) for t in (*tables, dense)]
    for _ in range(steps):
        for table, ref in zip(tables, refs):
            if rng.random() < 0.2:
                table.grad = None
            else:
                indices, values = random_rows(rng, table.shape[0], table.shape, table.dtype)
                table.grad = sparse_rows(indices, values, table.shape)
                ref.step_rows(indices.copy(), as_numpy(values))
        dense.grad = random_tensor(rng, dense.shape, dtype)
        refs[-1].step(as_numpy(dense.grad))
        opt.step()
    for i, (p, ref) in enumerate(zip((*tables, dense), refs)):
        same_bits(p, ref.params[0], f"params[{i}]")
        assert opt.state[p]["sum"].dtype is expected_state_dtype(p, mode)
        same_bits(opt.state[p]["sum"], ref.sums[0], f"sum of params[{i}]")
        assert float(opt.state[p]["step"]) == ref.step_count


@settings(max_examples=40, deadline=None)
@given(seed=seeds, dtype=half_dtypes, mode=modes, stochastic=st.booleans(), options=sgd_options(),
       nrows=st.integers(1, 20), width=st.integers(1, 5), steps=st.integers(1, 5),
       rounding_seed=st.integers(0, 2**64 - 1))
def test_sparse_sgd_lazy_with_each_mode_matches_reference_step_rows_bitwise(
    seed, dtype, mode, stochastic, options, nrows, width, steps, rounding_seed
):
    """The lazy rule (and no momentum) on a 16-bit, a float32 and a dense 16-bit param; a table sometimes
    has no grad, so that its count (the generator's t) falls behind the others'."""
    rng = np.random.default_rng(seed)
    tables = [random_tensor(rng, (nrows, width), dtype).requires_grad_(),
              random_tensor(rng, (nrows, width + 1), torch.float32).requires_grad_()]
    dense = random_tensor(rng, (2, width), dtype).requires_grad_()
    precision = {"state_dtype": mode, "stochastic_rounding": stochastic, "seed": rounding_seed}
    opt = ct.SGD([*tables, dense], lazy_momentum=True, **options, **precision)
    refs = [reference.SGD(as_numpy(t), **options, **precision) for t in (*tables, dense)]
    for _ in range(steps):
        for table, ref in zip(tables, refs):
            if rng.random() < 0.2:
                table.grad = None
            else:
                indices, values = random_rows(rng, nrows, table.shape, table.dtype)
                table.grad = sparse_rows(indices, values, table.shape)
                ref.step_rows(indices.copy(), as_numpy(values))
        dense.grad = random_tensor(rng, dense.shape, dtype)
        refs[-1].step(as_numpy(dense.grad))
        opt.step()
    for i, (p, ref) in enumerate(zip((*tables, dense), refs)):
        same_bits(p, ref.params[0], f"params[{i}]")
        if options["momentum"] != 0 and ref.step_count:     # (a table may have had no grad yet)
            assert opt.state[p]["momentum_buffer"].dtype is expected_state_dtype(p, mode)
            same_bits(opt.state[p]["momentum_buffer"], ref.momentum_buffers[0], f"buffer of params[{i}]")
        if stochastic and ref.step_count:
            assert float(opt.state[p]["step"]) == ref.step_count


@settings(max_examples=40, deadline=None)
@given(seed=seeds, dtype=half_dtypes, mode=modes, stochastic=st.booleans(),
       options=sgd_options().filter(lambda o: o["momentum"] != 0), nrows=st.integers(1, 20),
       width=st.integers(1, 5), steps=st.integers(1, 6), rounding_seed=st.integers(0, 2**64 - 1))
def test_sparse_sgd_torch_rule_with_each_mode_is_the_dense_rule_on_the_scattered_grad_bitwise(
    seed, dtype, mode, stochastic, options, nrows, width, steps, rounding_seed
):
    """torch's rule moves the rows named before with a zero grad, at the same step: the same random bits
    as the dense step of the reference on the scattered grad."""
    rng = np.random.default_rng(seed)
    table = random_tensor(rng, (nrows, width), dtype).requires_grad_()
    precision = {"state_dtype": mode, "stochastic_rounding": stochastic, "seed": rounding_seed}
    opt = ct.SGD([table], **options, **precision)
    plain = {**options, "weight_decay": 0.0, "maximize": False}
    ref = reference.SGD(as_numpy(table), **plain, **precision)
    for _ in range(steps):
        indices, values = random_rows(rng, nrows, table.shape, dtype)
        table.grad = sparse_rows(indices, values, table.shape)
        ref.step(scattered(indices, values, ref.params[0], options))
        opt.step()
    same_bits(table, ref.params[0], "table")
    assert opt.state[table]["momentum_buffer"].dtype is expected_state_dtype(table, mode)
    same_bits(opt.state[table]["momentum_buffer"], ref.momentum_buffers[0], "buffer")


@pytest.mark.parametrize("optimizer", ["Adagrad", "SGD"])
def test_stochastic_rounding_depends_on_the_seed_and_the_step(optimizer, rng):
    """Two seeds round differently; the same seed twice gives the same bits (a sanity check of the plumbing:
    a seed that did not reach the kernels would round to nearest in both)."""
    def run(seed):
        p = random_tensor(np.random.default_rng(3), (64, 16), torch.bfloat16).requires_grad_()
        opt = getattr(ct, optimizer)([p], lr=1e-3, stochastic_rounding=True, seed=seed)
        for k in range(3):
            p.grad = random_tensor(np.random.default_rng(k), p.shape, torch.bfloat16)
            opt.step()
        return as_numpy(p)
    assert run(1).tobytes() == run(1).tobytes()
    assert run(1).tobytes() != run(2).tobytes()


# -- state_dtype="param": torch.optim's layout -------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("optimizer, options", [("Adagrad", {"lr": 0.1, "initial_accumulator_value": 0.1}),
                                                ("SGD", {"lr": 0.1, "momentum": 0.9})])
def test_param_mode_state_is_the_params_dtype_and_as_much_memory(dtype, optimizer, options, rng):
    p = random_tensor(rng, (8, 5), dtype).requires_grad_()
    q = random_tensor(rng, (3,), torch.float32).requires_grad_()
    opt = getattr(ct, optimizer)([p, q], state_dtype="param", **options)
    for _ in range(2):
        p.grad, q.grad = random_tensor(rng, p.shape, dtype), random_tensor(rng, q.shape, torch.float32)
        opt.step()
    state = opt.state[p][KEY[optimizer]]
    assert state.dtype is dtype and state.nbytes == p.nbytes
    assert opt.state[q][KEY[optimizer]].dtype is torch.float32
    saved = opt.state_dict()
    assert saved["param_groups"][0]["state_dtype"] == "param"
    assert saved["state"][0][KEY[optimizer]].dtype is dtype


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("optimizer, options", STATEFUL)
def test_torch_optims_checkpoint_loads_into_param_mode_as_is_and_ours_into_torch_optim(
    dtype, optimizer, options, rng
):
    key = KEY[optimizer]
    param = random_tensor(rng, (6, 4), dtype).requires_grad_()
    theirs = getattr(torch.optim, optimizer)([param], **options)
    for _ in range(2):
        param.grad = random_tensor(rng, param.shape, dtype)
        theirs.step()
    ours = getattr(ct, optimizer)([param], state_dtype="param", **options)
    ours.load_state_dict(roundtrip(theirs.state_dict()))
    assert ours.param_groups[0]["state_dtype"] == "param"   # a group saved without it keeps the group's
    loaded = ours.state[param][key]
    assert loaded.dtype is dtype
    same_bits(loaded, as_numpy(theirs.state[param][key]), key)
    # One step from there is the reference's in "param" mode from the same state.
    ref = getattr(reference, optimizer)(as_numpy(param), state_dtype="param", **options)
    state_of(ref, optimizer)[...] = as_numpy(loaded)
    ref.step_count = 2
    param.grad = random_tensor(rng, param.shape, dtype)
    ref.step(as_numpy(param.grad))
    ours.step()
    same_bits(param, ref.params[0], "param")
    same_bits(ours.state[param][key], state_of(ref, optimizer), key)
    # And back: torch.optim loads ours as is (its cast to the param's dtype changes nothing).
    back = getattr(torch.optim, optimizer)([param], **options)
    back.load_state_dict(roundtrip(ours.state_dict()))
    assert back.state[param][key].dtype is dtype
    assert torch.equal(back.state[param][key].view(torch.int16), ours.state[param][key].view(torch.int16))


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_one_step_from_the_same_16_bit_state_is_close_to_torch_optims_not_bitwise(dtype):
    """torch.optim.Adagrad computes a 16-bit param's step in its dtype, rounding after each operation (the
    root plus eps is rounded to 16 bits before the division); cadagrad widens to float32 and rounds the
    param once. What holds, measured on moderate values: the sums are bit for bit torch's (one rounding of
    ``G + g * g`` either way), most params too, and every param within two 16-bit roundings of
    ``|p| + |update|``."""
    eps = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype]
    equal = total = 0
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        start = torch.randn(64, 32, generator=gen).to(dtype)
        state = (torch.rand(64, 32, generator=gen) * 4 + 0.01).to(dtype)
        grad = torch.randn(64, 32, generator=gen).to(dtype)
        results = []
        for make in (lambda ps: torch.optim.Adagrad(ps, lr=0.01),
                     lambda ps: ct.Adagrad(ps, lr=0.01, state_dtype="param")):
            p = start.clone().requires_grad_()
            opt = make([p])
            opt.state[p]["sum"] = state.clone()
            p.grad = grad.clone()
            opt.step()
            results.append((p.detach().clone(), opt.state[p]["sum"].clone()))
        (p_torch, s_torch), (p_ours, s_ours) = results
        assert torch.equal(s_torch.view(torch.int16), s_ours.view(torch.int16))
        update = (0.01 * grad.float() / s_ours.float().sqrt()).abs()
        bound = 2 * eps * (p_ours.float().abs() + update)
        assert bool(((p_torch.float() - p_ours.float()).abs() <= bound).all())
        equal += int((p_torch.view(torch.int16) == p_ours.view(torch.int16)).sum())
        total += p_ours.numel()
    assert equal / total > 0.9


# -- checkpoints: the conversion rules and a stochastic run resumed -------------------------------------


def trained(optimizer: str, options: dict, dtype=torch.bfloat16, steps: int = 2, seed: int = 5):
    rng = np.random.default_rng(seed)
    params = [random_tensor(rng, (6, 4), dtype).requires_grad_(),
              random_tensor(rng, (5,), torch.float32).requires_grad_()]
    opt = getattr(ct, optimizer)(params, **options)

    def set_grads():
        for p in params:
            p.grad = random_tensor(rng, p.shape, p.dtype)

    for _ in range(steps):
        set_grads()
        opt.step()
    return params, opt, set_grads


@pytest.mark.parametrize("optimizer, options", STATEFUL)
def test_loaded_state_must_fit_the_loaded_state_dtype_float32_rounds_only_when_asked(optimizer, options):
    key = KEY[optimizer]
    params, opt, _ = trained(optimizer, options)                  # float32 state for the bf16 param
    saved = opt.state_dict()
    float32_state = saved["state"][0][key].clone()
    saved = {"state": {k: dict(v) for k, v in saved["state"].items()},
             "param_groups": [{**g, "state_dtype": "param", "lr": 0.5} for g in saved["param_groups"]]}
    target, target_opt, _ = trained(optimizer, options, seed=6)
    before = snapshot(target_opt)
    with pytest.raises(TypeError, match=rf"^state_dict\['state'\]\[0\]\['{key}'\]: expected torch.bfloat16 "
                                        r"\(state_dtype='param'\) .*got torch.float32; rounding it .*"
                                        r"convert_state=True"):
        target_opt.load_state_dict(saved)
    assert snapshot(target_opt) == before
    assert target_opt.param_groups[0]["lr"] == 0.1 and target_opt.param_groups[0]["state_dtype"] is None
    target_opt.load_state_dict(saved, convert_state=True)
    assert target_opt.param_groups[0]["state_dtype"] == "param"
    rounded = target_opt.state[target[0]][key]
    assert rounded.dtype is torch.bfloat16
    assert_bitwise_equal(as_numpy(rounded), float32_state.numpy().astype(NUMPY[torch.bfloat16]), key)
    assert target_opt.state[target[1]][key].dtype is torch.float32   # a float32 param: unaffected
    # And back to float32 mode: a 16-bit state is widened exactly, with or without convert_state.
    again = target_opt.state_dict()
    again["param_groups"][0]["state_dtype"] = None
    target_opt.load_state_dict(again)
    assert target_opt.state[target[0]][key].dtype is torch.float32
    assert torch.equal(target_opt.state[target[0]][key], rounded.float())


def test_a_group_whose_state_dtype_is_changed_by_hand_widens_exactly_or_refuses_at_the_step():
    params, opt, set_grads = trained("Adagrad", {"lr": 0.1}, steps=1)
    opt.param_groups[0]["state_dtype"] = "param"
    set_grads()
    before = snapshot(opt)
    with pytest.raises(TypeError, match=r"^state of param_groups\[0\]\['params'\]\[0\]\['sum'\]: expected "
                                        r"torch.bfloat16 \(state_dtype='param'\)"):
        opt.step()
    assert snapshot(opt) == before
    opt.param_groups[0]["state_dtype"] = None
    opt.step()
    params2, opt2, set_grads2 = trained("Adagrad", {"lr": 0.1, "state_dtype": "param"}, steps=1)
    bits = opt2.state[params2[0]]["sum"].float()
    opt2.param_groups[0]["state_dtype"] = None
    set_grads2()
    opt2.step()          # the bfloat16 sum is widened exactly into float32, then stepped
    assert opt2.state[params2[0]]["sum"].dtype is torch.float32
    assert not torch.equal(opt2.state[params2[0]]["sum"], bits)


@pytest.mark.parametrize("mode", [None, "param"])
@pytest.mark.parametrize("optimizer, options", [
    ("Adagrad", {"lr": 0.05, "lr_decay": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "lazy_momentum": True}),
    ("SGD", {"lr": 0.05}),
])
def test_a_stochastic_run_resumed_from_its_state_dict_is_bit_identical(optimizer, options, mode):
    """A drawn seed is recorded; 3 steps, save (through torch.save), load into a fresh optimizer over
    copies of the params, 3 more steps: the bits of 6 uninterrupted steps. Dense and sparse grads."""
    def make_params():
        rng = np.random.default_rng(0)
        return [random_tensor(rng, (12, 4), torch.bfloat16).requires_grad_(),
                random_tensor(rng, (6, 3), torch.float16).requires_grad_(),
                random_tensor(rng, (5,), torch.float32).requires_grad_()]

    def set_grads(params, k):
        rng = np.random.default_rng(100 + k)
        table, dense, other = params
        indices, values = random_rows(rng, 12, table.shape, table.dtype)
        table.grad = sparse_rows(indices, values, table.shape)
        dense.grad = random_tensor(rng, dense.shape, dense.dtype)
        other.grad = None if k == 1 else random_tensor(rng, other.shape, other.dtype)

    def make(params):
        return getattr(ct, optimizer)(params, state_dtype=mode, stochastic_rounding=True, **options)

    whole = make_params()
    opt = make(whole)
    assert isinstance(opt.param_groups[0]["seed"], int)
    for k in range(6):
        set_grads(whole, k)
        opt.step()

    first = make_params()
    opt = make(first)
    opt.param_groups[0]["seed"] = None          # re-drawn at the next step, and recorded
    for k in range(3):
        set_grads(first, k)
        opt.step()
    checkpoint = roundtrip({"params": [p.detach().clone() for p in first], "optimizer": opt.state_dict()})
    seed = checkpoint["optimizer"]["param_groups"][0]["seed"]
    assert isinstance(seed, int)
    resumed = [t.clone().requires_grad_() for t in checkpoint["params"]]
    opt2 = make(resumed)
    opt2.load_state_dict(checkpoint["optimizer"])
    assert opt2.param_groups[0]["seed"] == seed
    for k in range(3, 6):
        set_grads(first, k)
        opt.step()
        set_grads(resumed, k)
        opt2.step()
    for i, (a, b) in enumerate(zip(first, resumed)):
        assert as_numpy(a).tobytes() == as_numpy(b).tobytes(), f"params[{i}]"
    assert snapshot(opt) == snapshot(opt2)
    # The same run with the recorded seed from the start: the uninterrupted run's bits.
    again = make_params()
    opt3 = getattr(ct, optimizer)(again, state_dtype=mode, stochastic_rounding=True, seed=seed, **options)
    for k in range(6):
        set_grads(again, k)
        opt3.step()
    assert [as_numpy(p).tobytes() for p in again] == [as_numpy(p).tobytes() for p in first]


def test_an_sgd_checkpoint_with_step_counts_loads_into_torch_optim():
    """Stochastic SGD keeps state[p]['step'] (the generator's t); torch.optim.SGD loads it and ignores it."""
    params, opt, set_grads = trained("SGD", {"lr": 0.1, "momentum": 0.9, "stochastic_rounding": True})
    assert float(opt.state[params[0]]["step"]) == 2
    theirs = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    theirs.load_state_dict(roundtrip(opt.state_dict()))
    set_grads()
    theirs.step()


def test_add_param_group_draws_a_seed_for_a_stochastic_group_and_keeps_a_given_one(rng):
    p = random_tensor(rng, (3, 2), torch.bfloat16).requires_grad_()
    q = random_tensor(rng, (3, 2), torch.float16).requires_grad_()
    r = random_tensor(rng, (3, 2), torch.float16).requires_grad_()
    opt = ct.Adagrad([p], lr=0.1)
    assert opt.param_groups[0]["seed"] is None and opt.param_groups[0]["stochastic_rounding"] is False
    opt.add_param_group({"params": [q], "stochastic_rounding": True})
    opt.add_param_group({"params": [r], "stochastic_rounding": True, "seed": 7})
    assert isinstance(opt.param_groups[1]["seed"], int) and opt.param_groups[2]["seed"] == 7
    assert opt.state_dict()["param_groups"][1]["seed"] == opt.param_groups[1]["seed"]


# -- refusals ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["Adagrad", "SGD"])
@pytest.mark.parametrize("options, message", [
    ({"state_dtype": "float32"}, r"state_dtype: expected None or 'param', got 'float32'"),
    ({"stochastic_rounding": 1}, r"stochastic_rounding: expected True or False"),
    ({"seed": -1}, r"seed: expected None or an int from 0 to 2\*\*64 - 1, got -1"),
    ({"seed": 2**64}, r"seed: expected None or an int from 0 to 2\*\*64 - 1"),
    ({"seed": 1.5}, r"seed: expected None or an int"),
    ({"seed": True}, r"seed: expected None or an int"),
])
def test_bad_precision_options_are_refused_naming_them(optimizer, options, message, rng):
    p = random_tensor(rng, (3, 2), torch.bfloat16).requires_grad_()
    with pytest.raises((ValueError, TypeError), match="^" + message):
        getattr(ct, optimizer)([p], lr=0.1, **options)
    opt = getattr(ct, optimizer)([p], lr=0.1)
    q = random_tensor(rng, (3, 2), torch.bfloat16).requires_grad_()
    with pytest.raises((ValueError, TypeError), match=r"^param_groups\[1\]: " + message):
        opt.add_param_group({"params": [q], **options})
    assert len(opt.param_groups) == 1
    # Set by hand on a group: refused at the step, naming the group, before anything is written.
    opt.add_param_group({"params": [q]})
    for t in (p, q):
        t.grad = random_tensor(rng, t.shape, t.dtype)
    opt.param_groups[1].update(options)
    before = snapshot(opt)
    with pytest.raises((ValueError, TypeError), match=r"^param_groups\[1\]: " + message):
        opt.step()
    assert snapshot(opt) == before
    # And in a loaded state dict, naming the saved group; nothing is loaded.
    saved = opt.state_dict()
    saved["param_groups"][0] = {**saved["param_groups"][0], **options, "lr": 0.5}
    opt.param_groups[1].update({"state_dtype": None, "stochastic_rounding": False, "seed": None})
    with pytest.raises((ValueError, TypeError), match=r"^state_dict\['param_groups'\]\[0\]: " + message):
        opt.load_state_dict(saved)
    assert opt.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("optimizer", ["Adagrad", "SGD"])
def test_stochastic_rounding_in_a_group_without_a_16_bit_param_is_refused_naming_the_group(optimizer, rng):
    half = random_tensor(rng, (3, 2), torch.bfloat16).requires_grad_()
    wide = random_tensor(rng, (3, 2), torch.float32).requires_grad_()
    message = r"stochastic_rounding: applies to float16 and bfloat16 params only"
    with pytest.raises(ValueError, match=r"^param_groups\[0\]: " + message):
        getattr(ct, optimizer)([wide], lr=0.1, stochastic_rounding=True)
    with pytest.raises(ValueError, match=r"^param_groups\[1\]: " + message):
        getattr(ct, optimizer)([{"params": [half]}, {"params": [wide]}], lr=0.1, stochastic_rounding=True)
    groups = [{"params": [half], "stochastic_rounding": True}, {"params": [wide]}]
    opt = getattr(ct, optimizer)(groups, lr=0.1)
    with pytest.raises(ValueError, match=r"^param_groups\[2\]: " + message):
        opt.add_param_group({"params": [torch.zeros(2, dtype=torch.float64)], "stochastic_rounding": True})
    assert len(opt.param_groups) == 2
    # Switched on by hand for the float32 group: refused at the step; nothing is written.
    half.grad = random_tensor(rng, half.shape, half.dtype)
    wide.grad = random_tensor(rng, wide.shape, wide.dtype)
    opt.step()
    opt.param_groups[1]["stochastic_rounding"] = True
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"^param_groups\[1\]: " + message):
        opt.step()
    assert snapshot(opt) == before
    # In a loaded state dict: refused naming the saved group.
    saved = opt.state_dict()
    opt.param_groups[1]["stochastic_rounding"] = False
    with pytest.raises(ValueError, match=r"^state_dict\['param_groups'\]\[1\]: " + message):
        opt.load_state_dict(saved)


def test_convert_state_must_be_a_bool(rng):
    p = random_tensor(rng, (3, 2), torch.bfloat16).requires_grad_()
    opt = ct.Adagrad([p])
    with pytest.raises(TypeError, match=r"^convert_state: expected True or False"):
        opt.load_state_dict(opt.state_dict(), convert_state="yes")
