"""cadagrad.torch.Adagrad against torch.optim.Adagrad on a real model's parameter list.

``pytest bench/test_torch_adapter_bench.py --benchmark-only``. The model is a 20-block MLP (each block
LayerNorm, Linear d->4d, Linear 4d->d, LayerNorm, Linear d->d: 10 tensors, 200 in all) at two widths:
d=64 (0.75 M elements, where per-tensor overhead dominates) and d=256 (11.8 M elements, where memory
bandwidth does). One benchmark is one ``opt.step()`` on fixed gradients, with every implementation's
default thread count, and with one thread (``torch.set_num_threads(1)``, ``num_threads=1``). Compare
within a group: these machines are shared and noisy.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import cadagrad.torch as ct  # noqa: E402

nn = torch.nn

BLOCKS = 20
WIDTHS = [64, 256]
THREADS = ["default", "1"]
IMPLEMENTATIONS = {
    "cadagrad.torch": lambda params, threads: ct.Adagrad(params, lr=0.01, num_threads=threads),
    "torch fused": lambda params, threads: torch.optim.Adagrad(params, lr=0.01, fused=True),
    "torch foreach": lambda params, threads: torch.optim.Adagrad(params, lr=0.01, foreach=True),
}


def make_model(width: int) -> nn.Module:
    def block() -> list[nn.Module]:
        return [nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.Linear(4 * width, width),
                nn.LayerNorm(width), nn.Linear(width, width)]

    torch.manual_seed(0)
    return nn.Sequential(*[layer for _ in range(BLOCKS) for layer in block()])


@pytest.fixture
def torch_threads(request):
    """Sets torch's intra-op threads for one benchmark (None: leave the default); restores them after."""
    saved = torch.get_num_threads()
    yield lambda n: torch.set_num_threads(n)
    torch.set_num_threads(saved)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("width", WIDTHS)
def test_adagrad_step_on_mlp_params(benchmark, torch_threads, width, threads, impl):
    n_threads = None if threads == "default" else int(threads)
    if n_threads is not None:
        torch_threads(n_threads)
    params = list(make_model(width).parameters())
    gen = torch.Generator().manual_seed(1)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    opt = IMPLEMENTATIONS[impl](params, n_threads)
    opt.step()                                   # state created, engine built: time the steady state
    n = sum(p.numel() for p in params)
    benchmark.group = (
        f"AdaGrad step, {len(params)} tensors, {n / 1e6:.2f} M elements (MLP d={width}), threads={threads}"
    )
    benchmark.extra_info["tensors"] = len(params)
    benchmark.extra_info["elements"] = n
    benchmark(opt.step)
