"""The dlrm case as pytest-benchmark cases: ``pytest bench/test_dlrm_bench.py --benchmark-only``.

Built from ``cadagrad.bench_dlrm`` (the same model, batches and optimizers as the ``dlrm`` rows of
``python -m cadagrad bench``): 4 ``EmbeddingBag(200_000, 64, sparse=True)`` tables, batch 512, bags of 8
Zipf ids, a small MLP, one thread. ``test_dlrm_optimizer_step`` times ``opt.step()`` alone, each after
an untimed forward and backward on the next batch (the cache state of a training loop);
``test_dlrm_training_step`` times the whole step. Compare within a group: the machines are shared.
Under ``--benchmark-disable`` (CI) every case runs once on a small model.
"""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch", reason="the dlrm case trains a torch model")

import cadagrad  # noqa: E402
from cadagrad import bench_dlrm  # noqa: E402

IMPLEMENTATIONS = ["torch", "cadagrad"]


@pytest.fixture
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    cadagrad.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
    cadagrad.set_num_threads(None)


def trainer(benchmark, impl):
    """(model, optimizer, one forward+backward on the next batch), full size unless benchmarks are off."""
    small = benchmark.disabled
    sizes = {"tables": bench_dlrm.TABLES, "rows": 1_000 if small else bench_dlrm.ROWS,
             "batch": 64 if small else bench_dlrm.BATCH}
    impl = bench_dlrm.CADAGRAD if impl == "cadagrad" else bench_dlrm.TORCH
    model = bench_dlrm.make_model(tables=sizes["tables"], rows=sizes["rows"], seed=0)
    opt = bench_dlrm.make_optimizer(impl, model)
    batches = itertools.cycle(bench_dlrm.make_batches(4 if small else bench_dlrm.POOL, seed=1, **sizes))
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def forward_backward():
        dense, ids, clicks = next(batches)
        model.zero_grad(set_to_none=True)
        loss_fn(bench_dlrm.forward(model, dense, ids), clicks).backward()

    forward_backward()
    opt.step()                                   # state allocated: time the steady state
    benchmark.extra_info.update(sizes, implementation=impl)
    return model, opt, forward_backward


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_dlrm_optimizer_step(benchmark, one_thread, impl):
    _, opt, forward_backward = trainer(benchmark, impl)
    benchmark.group = "dlrm optimizer step, 1 thread"
    benchmark.pedantic(opt.step, setup=forward_backward, rounds=5 if benchmark.disabled else 60,
                       warmup_rounds=0 if benchmark.disabled else 2)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_dlrm_training_step(benchmark, one_thread, impl):
    _, opt, forward_backward = trainer(benchmark, impl)

    def step():
        forward_backward()
        opt.step()

    benchmark.group = "dlrm whole training step, 1 thread"
    benchmark(step)
