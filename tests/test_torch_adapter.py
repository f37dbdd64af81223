"""cadagrad.torch.Adagrad / SGD against torch.optim on a small MLP, checkpoints both ways, param groups,
schedulers, per-param step counts and the errors for tensors cadagrad cannot step.

PyTorch accumulates AdaGrad's sum with a fused multiply-add, so the two agree within a tolerance, not
bitwise (docs/rules.rst).
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cadagrad.torch as ct  # noqa: E402

nn = torch.nn
F = torch.nn.functional

STEPS = 200
# Loss curves and params after 200 steps: float32 drifts apart by a few ulps per step (FMA).
TOLERANCE = {torch.float32: dict(rtol=2e-4, atol=2e-5), torch.float64: dict(rtol=1e-9, atol=1e-11)}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These models are tiny: torch's intra-op threads only add start-up and contention costs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_mlp(dtype=torch.float32, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
        ).to(dtype)


def make_data(dtype=torch.float32, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=gen, dtype=dtype)
    y = torch.sin(x.sum(dim=1, keepdim=True)) + 0.1 * torch.randn(n, 1, generator=gen, dtype=dtype)
    return x, y


def train(
    model, opt, steps: int, data, *, sign: float = 1.0, scheduler=None, before_step=None
) -> list[float]:
    """Full-batch training; returns the loss of every step. ``sign=-1`` ascends ``-loss`` (maximize)."""
    x, y = data
    losses = []
    for step in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        (sign * loss).backward()
        if before_step is not None:
            before_step(step)
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def pair(optimizer: str, dtype=torch.float32, **options):
    """The same MLP twice, one under torch.optim, one under cadagrad.torch."""
    model, twin = make_mlp(dtype), make_mlp(dtype)
    ours = getattr(ct, optimizer)(model.parameters(), **options)
    theirs = getattr(torch.optim, optimizer)(twin.parameters(), **options)
    return (model, ours), (twin, theirs)


def assert_params_close(a: nn.Module, b: nn.Module, dtype=torch.float32) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), err_msg=name, **TOLERANCE[dtype])


ADAGRAD_CASES = [
    {"lr": 0.05},
    {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 1e-3, "initial_accumulator_value": 0.1},
    {"lr": 0.02, "eps": 1e-6, "maximize": True},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("options", ADAGRAD_CASES, ids=lambda o: ",".join(o))
def test_adagrad_mlp_loss_curve_matches_torch(dtype, options):
    (model, ours), (twin, theirs) = pair("Adagrad", dtype, **options)
    data = make_data(dtype)
    sign = -1.0 if options.get("maximize") else 1.0
    ours_losses = train(model, ours, STEPS, data, sign=sign)
    theirs_losses = train(twin, theirs, STEPS, data, sign=sign)
    assert ours_losses[-1] < 0.5 * ours_losses[0]          # it trains
    np.testing.assert_allclose(ours_losses, theirs_losses, **TOLERANCE[dtype])
    assert_params_close(model, twin, dtype)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert float(ours.state[p]["step"]) == float(theirs.state[q]["step"]) == STEPS
        np.testing.assert_allclose(
            ours.state[p]["sum"].numpy(), theirs.state[q]["sum"].numpy(), **TOLERANCE[dtype]
        )


SGD_CASES = [
    {"lr": 0.1},
    {"lr": 0.02, "momentum": 0.9},
    {"lr": 0.02, "momentum": 0.9, "dampening": 0.3, "weight_decay": 1e-3},
    {"lr": 0.02, "momentum": 0.8, "nesterov": True, "weight_decay": 1e-3},
    {"lr": 0.05, "momentum": 0.5, "maximize": True},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("options", SGD_CASES, ids=lambda o: ",".join(o))
def test_sgd_mlp_loss_curve_matches_torch(dtype, options):
    (model, ours), (twin, theirs) = pair("SGD", dtype, **options)
    data = make_data(dtype)
    sign = -1.0 if options.get("maximize") else 1.0
    ours_losses = train(model, ours, STEPS, data, sign=sign)
    theirs_losses = train(twin, theirs, STEPS, data, sign=sign)
    assert ours_losses[-1] < 0.7 * ours_losses[0]
    np.testing.assert_allclose(ours_losses, theirs_losses, **TOLERANCE[dtype])
    assert_params_close(model, twin, dtype)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert ours.state[p].keys() == theirs.state[q].keys()


def grouped(model: nn.Module, first_lr: float) -> list[dict]:
    """The first layer in a group of its own with its own lr; the others take the default."""
    layers = list(model.parameters())
    return [{"params": layers[:2], "lr": first_lr}, {"params": layers[2:]}]


@pytest.mark.parametrize(
    "optimizer, options",
    [("Adagrad", {"lr": 0.02, "lr_decay": 0.005}), ("SGD", {"lr": 0.01, "momentum": 0.9})],
    ids=["Adagrad", "SGD"],
)
def test_param_groups_with_different_lrs_match_torch(optimizer, options):
    model, twin = make_mlp(), make_mlp()
    ours = getattr(ct, optimizer)(grouped(model, 0.1), **options)
    theirs = getattr(torch.optim, optimizer)(grouped(twin, 0.1), **options)
    data = make_data()
    np.testing.assert_allclose(train(model, ours, STEPS, data), train(twin, theirs, STEPS, data),
                               **TOLERANCE[torch.float32])
    assert_params_close(model, twin)
    assert [g["lr"] for g in ours.param_groups] == [0.1, options["lr"]]


@pytest.mark.parametrize("optimizer", ["Adagrad", "SGD"])
def test_step_lr_scheduler_drives_the_adapter_like_torch(optimizer):
    (model, ours), (twin, theirs) = pair(optimizer, lr=0.05)
    ours_sched = torch.optim.lr_scheduler.StepLR(ours, step_size=50, gamma=0.5)
    theirs_sched = torch.optim.lr_scheduler.StepLR(theirs, step_size=50, gamma=0.5)
    data = make_data()
    ours_losses = train(model, ours, STEPS, data, scheduler=ours_sched)
    theirs_losses = train(twin, theirs, STEPS, data, scheduler=theirs_sched)
    np.testing.assert_allclose(ours_losses, theirs_losses, **TOLERANCE[torch.float32])
    assert_params_close(model, twin)
    assert ours.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**4)
    assert ours_sched.get_last_lr() == theirs_sched.get_last_lr()


def test_a_changed_lr_takes_effect_at_the_next_step():
    p = torch.zeros(3, requires_grad=True)
    opt = ct.SGD([p], lr=1.0)
    p.grad = torch.ones(3)
    opt.step()
    opt.param_groups[0]["lr"] = 0.5
    opt.step()
    opt.param_groups[0]["lr"] = torch.tensor(0.25)         # torch allows a tensor lr
    opt.step()
    assert p.detach().tolist() == [-1.75, -1.75, -1.75]


def roundtrip(state_dict: dict) -> dict:
    """Through torch.save / torch.load, as a checkpoint on disk would go."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


# Options that cadagrad.torch adds to torch.optim's (their defaults keep torch's rule).
CADAGRAD_OPTIONS = {"eps_inside_sqrt": False, "rowwise": False, "lazy_momentum": False, "state_dtype": None,
                    "stochastic_rounding": False, "seed": None}


def torchs_keys(groups: list[dict]) -> list[dict]:
    """Param groups without cadagrad's own options, which must hold their defaults."""
    for group in groups:
        for key, default in CADAGRAD_OPTIONS.items():
            assert group.get(key, default) == default, key
    return [{k: v for k, v in group.items() if k not in CADAGRAD_OPTIONS} for group in groups]


CHECKPOINT_CASES = [
    ("Adagrad", {"lr": 0.05, "lr_decay": 0.02, "initial_accumulator_value": 0.1}),
    ("SGD", {"lr": 0.02, "momentum": 0.9, "nesterov": True}),
]


@pytest.mark.parametrize("direction", ["torch->cadagrad", "cadagrad->torch"])
@pytest.mark.parametrize("optimizer, options", CHECKPOINT_CASES, ids=["Adagrad", "SGD"])
def test_checkpoint_moves_between_torch_and_cadagrad(optimizer, options, direction):
    """Train 100 steps with one, checkpoint, continue 100 steps with the other: same as torch all along."""
    data = make_data()
    first, second = (torch.optim, ct) if direction == "torch->cadagrad" else (ct, torch.optim)
    model, reference = make_mlp(), make_mlp()
    opt = getattr(first, optimizer)(model.parameters(), **options)
    ref_opt = getattr(torch.optim, optimizer)(reference.parameters(), **options)
    train(model, opt, 100, data)
    train(reference, ref_opt, 100, data)

    checkpoint = roundtrip({"model": model.state_dict(), "optimizer": opt.state_dict()})
    resumed = make_mlp(seed=1)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt = getattr(second, optimizer)(resumed.parameters(), **options)
    resumed_opt.load_state_dict(checkpoint["optimizer"])

    np.testing.assert_allclose(train(resumed, resumed_opt, 100, data), train(reference, ref_opt, 100, data),
                               **TOLERANCE[torch.float32])
    assert_params_close(resumed, reference)
    saved = resumed_opt.state_dict()
    expected = ref_opt.state_dict()
    assert torchs_keys(saved["param_groups"]) == torchs_keys(expected["param_groups"])
    for index, state in expected["state"].items():
        assert saved["state"][index].keys() == state.keys()
        for key, value in state.items():
            assert saved["state"][index][key].dtype == value.dtype, key
            assert saved["state"][index][key].shape == value.shape, key
            np.testing.assert_allclose(saved["state"][index][key].numpy(), value.numpy(),
                                       **TOLERANCE[torch.float32])


def test_state_dict_layout_is_torchs():
    model, twin = make_mlp(), make_mlp()
    ours, theirs = ct.Adagrad(model.parameters()), torch.optim.Adagrad(twin.parameters())
    for sd in (ours.state_dict(), theirs.state_dict()):    # before any step: every param has a state
        assert sorted(sd["state"]) == [0, 1, 2, 3, 4, 5]
    data = make_data()
    train(model, ours, 3, data)
    train(twin, theirs, 3, data)
    a, b = ours.state_dict(), theirs.state_dict()
    assert torchs_keys(a["param_groups"]) == b["param_groups"]
    for index in b["state"]:
        assert list(a["state"][index]) == list(b["state"][index]) == ["step", "sum"]
        step = a["state"][index]["step"]
        assert step.dtype == b["state"][index]["step"].dtype == torch.float32 and step.dim() == 0
        assert float(step) == 3.0
        assert a["state"][index]["sum"].dtype == torch.float32
        assert a["state"][index]["sum"].shape == b["state"][index]["sum"].shape


def test_step_is_in_place_and_zero_copy():
    model = make_mlp()
    opt = ct.Adagrad(model.parameters(), lr=0.05)
    params = list(model.parameters())
    pointers = [p.data_ptr() for p in params]
    data = make_data()
    train(model, opt, 2, data)
    sums = [opt.state[p]["sum"] for p in params]
    sum_pointers = [s.data_ptr() for s in sums]
    before = [p.detach().clone() for p in params]
    grads_before = []

    def keep_grads(step):
        grads_before.extend((p.grad, p.grad.clone()) for p in params)

    train(model, opt, 1, data, before_step=keep_grads)
    assert [p.data_ptr() for p in params] == pointers                        # params updated in place
    assert all(not torch.equal(p, b) for p, b in zip(params, before))
    assert all(opt.state[p]["sum"] is s for p, s in zip(params, sums))      # state updated in place
    assert [s.data_ptr() for s in sums] == sum_pointers
    assert all(torch.equal(g, copy_) for g, copy_ in grads_before)         # grads only read


def count_builds(opt, monkeypatch) -> list[int]:
    calls = []
    original = opt._build_plan

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(opt, "_build_plan", counting)
    return calls


def test_engine_is_reused_and_rebuilt_only_when_params_or_grads_change(monkeypatch):
    model, twin = make_mlp(), make_mlp()
    ours, theirs = ct.Adagrad(model.parameters(), lr=0.05), torch.optim.Adagrad(twin.parameters(), lr=0.05)
    builds = count_builds(ours, monkeypatch)
    data = make_data()
    train(model, ours, 5, data)                     # zero_grad(set_to_none=True): fresh grads every step
    assert len(builds) == 1
    first = list(model.parameters())[0]
    first.data = first.data.clone()                 # new storage: rebuilt, and the new storage is stepped
    train(model, ours, 1, data)
    assert len(builds) == 2
    train(twin, theirs, 6, data)
    assert_params_close(model, twin)


def test_params_without_grad_are_skipped_with_their_own_step_count():
    """torch.optim skips params whose grad is None; their step count (lr_decay) falls behind."""
    options = {"lr": 0.05, "lr_decay": 0.05}
    (model, ours), (twin, theirs) = pair("Adagrad", **options)
    data = make_data()

    def freeze_middle(module):
        def hook(step):
            if step % 3 == 0:
                for p in list(module.parameters())[2:4]:
                    p.grad = None
        return hook

    np.testing.assert_allclose(
        train(model, ours, 60, data, before_step=freeze_middle(model)),
        train(twin, theirs, 60, data, before_step=freeze_middle(twin)),
        **TOLERANCE[torch.float32],
    )
    assert_params_close(model, twin)
    steps = [float(ours.state[p]["step"]) for p in model.parameters()]
    assert steps == [float(theirs.state[q]["step"]) for q in twin.parameters()] == [60, 60, 40, 40, 60, 60]


def test_added_param_group_and_replaced_state_are_used_like_torch():
    """What ZeroRedundancyOptimizer does: add_param_group after construction, write state[p] directly."""
    data = make_data()
    models = make_mlp(), make_mlp()
    opts = []
    for model, module in zip(models, (ct, torch.optim)):
        params = list(model.parameters())
        opt = module.Adagrad(params[:4], lr=0.05, lr_decay=0.01)
        opt.add_param_group({"params": params[4:], "lr": 0.02})
        opts.append(opt)
    for model, opt in zip(models, opts):
        train(model, opt, 10, data)
    replacement = {"step": torch.tensor(7.0), "sum": torch.full((32, 8), 0.5)}
    for model, opt in zip(models, opts):
        params = list(model.parameters())
        opt.state[params[0]] = copy.deepcopy(replacement)         # a new dict, as ZeRO's load writes
        opt.state[params[2]]["step"] = torch.tensor(3.0)          # one entry of a dict
    for model, opt in zip(models, opts):
        train(model, opt, 10, data)
    assert_params_close(*models)
    params = list(models[0].parameters())
    assert [float(opts[0].state[p]["step"]) for p in params] == [17, 20, 13, 20, 20, 20]


def test_mixed_dtypes_in_one_group_match_torch():
    model, twin = make_mlp(), make_mlp()
    for module in (model, twin):
        module[4].double()
    ours, theirs = ct.Adagrad(model.parameters(), lr=0.05), torch.optim.Adagrad(twin.parameters(), lr=0.05)
    data = make_data()

    def forward(module):
        def run(x):
            h = module[3](module[2](module[1](module[0](x))))
            return module[4](h.double()).float()
        return run

    for module, opt in ((model, ours), (twin, theirs)):
        x, y = data
        for _ in range(20):
            opt.zero_grad()
            F.mse_loss(forward(module)(x), y).backward()
            opt.step()
    assert ours.state[model[4].weight]["sum"].dtype == torch.float64
    assert_params_close(model, twin)


def test_closure_and_step_hooks_work():
    model = make_mlp()
    opt = ct.SGD(model.parameters(), lr=0.1)
    calls = []
    opt.register_step_post_hook(lambda optimizer, args, kwargs: calls.append(optimizer))
    x, y = make_data()

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = opt.step(closure)
    second = opt.step(closure)
    assert second.item() < first.item()
    assert calls == [opt, opt]


def test_deepcopy_gives_an_independent_optimizer():
    model = make_mlp()
    opt = ct.Adagrad(model.parameters(), lr=0.05)
    data = make_data()
    train(model, opt, 3, data)
    model_copy = copy.deepcopy(model)
    opt_copy = ct.Adagrad(model_copy.parameters(), lr=0.05)
    opt_copy.load_state_dict(copy.deepcopy(opt.state_dict()))
    np.testing.assert_array_equal(train(model, opt, 5, data), train(model_copy, opt_copy, 5, data))
    for p, q in zip(model.parameters(), model_copy.parameters()):
        assert torch.equal(p, q)
        assert opt.state[p]["sum"].data_ptr() != opt_copy.state[q]["sum"].data_ptr()


# -- errors ------------------------------------------------------------------------------------------


def test_non_cpu_param_is_refused():
    with pytest.raises(ValueError, match=r"params'\]\[0\]: expected a CPU tensor, got one on meta"):
        ct.Adagrad([torch.empty(3, device="meta", requires_grad=True)])


def test_non_float_param_is_refused():
    expected = (r"expected dtype torch.float32, torch.float64, torch.float16 or torch.bfloat16, "
                r"got torch.int32$")
    with pytest.raises(TypeError, match=expected):
        ct.SGD([torch.zeros(3, dtype=torch.int32)], lr=0.1)


def test_non_contiguous_param_is_refused():
    p = torch.empty_strided((3, 4), (1, 3)).requires_grad_()
    with pytest.raises(ValueError, match=r"\[1\]: expected a contiguous tensor, got shape \(3, 4\) with str"):
        ct.Adagrad([torch.zeros(2, requires_grad=True), p])


def test_differentiable_is_refused():
    with pytest.raises(ValueError, match="differentiable"):
        ct.Adagrad([torch.zeros(2, requires_grad=True)], differentiable=True)


def test_non_contiguous_grad_in_a_later_group_is_refused_before_anything_is_written():
    a = torch.zeros(4, requires_grad=True)
    b = torch.zeros(3, 4, requires_grad=True)
    opt = ct.Adagrad([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    a.grad = torch.ones(4)
    b.grad = torch.ones(4, 3).t()
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[0\].grad: expected a contiguous"):
        opt.step()
    assert torch.equal(a, torch.zeros(4)) and torch.equal(b, torch.zeros(3, 4))
    assert float(opt.state[a]["step"]) == 0.0 and torch.equal(opt.state[a]["sum"], torch.zeros(4))
    b.grad = b.grad.contiguous()
    opt.step()
    assert float(opt.state[a]["step"]) == float(opt.state[b]["step"]) == 1.0


def test_bad_hyperparameter_in_a_group_is_named():
    p = torch.zeros(2, requires_grad=True)
    opt = ct.SGD([p], lr=0.1)
    p.grad = torch.ones(2)
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match=r"param_groups\[0\]: lr: expected a value >= 0.0, got -1.0"):
        opt.step()
    assert torch.equal(p, torch.zeros(2))


def test_overlapping_params_are_refused():
    base = torch.zeros(10)
    a, b = base[:6].requires_grad_(), base[4:].requires_grad_()
    opt = ct.SGD([a.detach().requires_grad_(), b.detach().requires_grad_()], lr=0.1)
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=r"\[1\]: shares memory with param_groups\[0\]\['params'\]\[0\]"):
        opt.step()


@pytest.mark.parametrize("optimizer", ["Adagrad", "SGD"])
def test_autograd_sees_the_in_place_update(optimizer):
    """As with torch.optim: a graph that saved a param before the step cannot be back-propagated after."""
    p = torch.ones(3, requires_grad=True)
    opt = getattr(ct, optimizer)([p], lr=0.1)
    loss = (p * p).sum()
    p.grad = torch.ones(3)
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
