"""cadagrad.torch.Adagrad under torch.distributed: 2 processes, gloo on 127.0.0.1, bounded in time.

One spawn runs every scenario (starting a process that imports torch takes seconds): DistributedDataParallel
with the adapter as the optimizer, then ZeroRedundancyOptimizer sharding the adapter's accumulators, then
DDP over a model with sparse embedding grads, trained once with the adapter and once with torch.optim.
Each rank saves what it ends with; the tests compare the ranks with each other, with one process
training on the combined batch, and with torch.optim.
"""

from __future__ import annotations

import gc
import io
import os
import socket
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

WORLD_SIZE = 2
STEPS = 25
TIMEOUT_S = 120
OPTIONS = {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 1e-4}
# The ranks' averaged gradient and the combined batch's gradient round differently (float32).
TOLERANCE = dict(rtol=1e-4, atol=1e-6)

pytestmark = [
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build"),
    pytest.mark.skipif(
        dist.is_available() and not dist.is_gloo_available(), reason="the gloo backend is not available"
    ),
]


def make_model() -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        nn = torch.nn
        return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The combined batch of every step; rank r trains on rows r::WORLD_SIZE."""
    gen = torch.Generator().manual_seed(2)
    out = []
    for _ in range(STEPS):
        x = torch.randn(16, 8, generator=gen)
        out.append((x, torch.sin(x.sum(dim=1, keepdim=True))))
    return out


def train(model, opt, rank: int = 0, world_size: int = 1) -> None:
    for x, y in batches():
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[rank::world_size]), y[rank::world_size]).backward()
        opt.step()


def _ddp_run(rank: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    import cadagrad.torch as ct

    model = DistributedDataParallel(make_model())
    opt = ct.Adagrad(model.parameters(), **OPTIONS)
    train(model, opt, rank, WORLD_SIZE)
    return {"params": [p.detach().clone() for p in model.parameters()]}


def _zero_run(rank: int) -> dict:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    import cadagrad.torch as ct

    model = DistributedDataParallel(make_model())
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=ct.Adagrad, **OPTIONS)
    train(model, opt, rank, WORLD_SIZE)
    index = {p: i for i, p in enumerate(model.parameters())}
    local = sorted(index[p] for p in opt.optim.state)
    params = [p.detach().clone() for p in model.parameters()]
    opt.consolidate_state_dict(to=0)
    box = [opt.state_dict() if rank == 0 else None]
    consolidated = torch.load(_as_file(box[0])) if rank == 0 else None    # a copy, as saved on disk

    # A restart: fresh model and ZeRO (parameters as bucket views this time) from the checkpoint, then
    # the same batches again. ZeRO writes each rank's part of the state into the adapter's ``state``.
    dist.broadcast_object_list(box, src=0)
    restarted = make_model()
    restarted.load_state_dict(model.module.state_dict())
    restarted = DistributedDataParallel(restarted)
    opt = ZeroRedundancyOptimizer(
        restarted.parameters(), optimizer_class=ct.Adagrad, parameters_as_bucket_view=True, **OPTIONS
    )
    opt.load_state_dict(box[0])
    train(restarted, opt, rank, WORLD_SIZE)
    return {
        "params": params,
        "local_state": local,
        "local_type": type(opt.optim).__name__,
        "consolidated": consolidated,
        "resumed_params": [p.detach().clone() for p in restarted.parameters()],
    }


class SparseModel(torch.nn.Module):
    """Two embedding tables with sparse grads (DDP all-reduces them as sparse tensors) and a dense head."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.a = torch.nn.EmbeddingBag(40, 4, mode="sum", sparse=True)
            self.b = torch.nn.EmbeddingBag(30, 4, mode="sum", sparse=True)
            self.head = torch.nn.Linear(8, 1)

    def forward(self, ids_a, offsets_a, ids_b, offsets_b):
        return self.head(torch.cat([self.a(ids_a, offsets_a), self.b(ids_b, offsets_b)], dim=1))


SPARSE_OPTIONS = {"lr": 0.05, "lr_decay": 0.01, "initial_accumulator_value": 0.1}


def sparse_batches(rank: int) -> list[tuple[torch.Tensor, ...]]:
    """Rank ``rank``'s batches: 4 bags per table. Rank 1 never names a row of table b (empty bags), and at
    step 3 neither rank names a row of table a (its all-reduced grad has no entry)."""
    gen = torch.Generator().manual_seed(5 + rank)
    out = []
    for step in range(STEPS):
        ids_a = torch.randint(0, 40, (12,), generator=gen) if step != 3 else torch.zeros(0, dtype=torch.long)
        ids_b = torch.randint(0, 30, (8,), generator=gen) if rank == 0 else torch.zeros(0, dtype=torch.long)
        offsets_a = torch.tensor([0, 3, 6, 9]) if step != 3 else torch.zeros(4, dtype=torch.long)
        offsets_b = torch.tensor([0, 2, 4, 6]) if rank == 0 else torch.zeros(4, dtype=torch.long)
        out.append((ids_a, offsets_a, ids_b, offsets_b, torch.randn(4, 1, generator=gen)))
    return out


def _sparse_train(rank: int, optimizer_class) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(SparseModel())
    opt = optimizer_class(model.parameters(), **SPARSE_OPTIONS)
    for *inputs, y in sparse_batches(rank):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(*inputs), y).backward()
        opt.step()
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "layouts": [str(p.grad.layout) for p in model.parameters()],
    }


def _sparse_run(rank: int) -> dict:
    import cadagrad.torch as ct

    # Each training returns only copies: its DDP model and optimizer are gone before the group is.
    return {"cadagrad": _sparse_train(rank, ct.Adagrad), "torch": _sparse_train(rank, torch.optim.Adagrad)}


def _as_file(obj: object) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def _worker(rank: int, port: int, out_dir: str) -> None:
    """One rank: both scenarios, results (or the traceback) saved under ``out_dir``."""
    try:
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE,
            timeout=timedelta(seconds=TIMEOUT_S),
        )
        try:
            results = {"ddp": _ddp_run(rank), "zero": _zero_run(rank), "sparse": _sparse_run(rank)}
        finally:
            gc.collect()       # nothing that holds the process group may outlive it (gloo hangs at exit)
            dist.destroy_process_group()
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        (Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Spawn the ranks once for the module; fail (not hang) past TIMEOUT_S."""
    import torch.multiprocessing as mp

    out_dir = tmp_path_factory.mktemp("distributed")
    ctx = mp.get_context("spawn")
    port = _free_port()
    env = {"OMP_NUM_THREADS": "1"}
    loopback = {"linux": "lo", "darwin": "lo0"}.get(sys.platform)
    if loopback is not None:       # gloo otherwise resolves the host name, which containers may not
        env["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME", loopback)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)          # inherited by the spawned interpreters
    try:
        procs = [ctx.Process(target=_worker, args=(rank, port, str(out_dir))) for rank in range(WORLD_SIZE)]
        for proc in procs:
            proc.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    start = time.monotonic()
    for proc in procs:
        proc.join(max(0.0, TIMEOUT_S - (time.monotonic() - start)))
    hung = [rank for rank, proc in enumerate(procs) if proc.is_alive()]
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    errors = "\n".join(p.read_text() for p in sorted(out_dir.glob("rank*.err")))
    if hung:
        pytest.fail(f"ranks {hung} still running after {TIMEOUT_S} s; killed\n{errors}")
    codes = [proc.exitcode for proc in procs]
    if codes != [0] * WORLD_SIZE:
        pytest.fail(f"ranks exited with {codes}\n{errors}")
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def single_process() -> dict:
    """The same model and optimizer in one process on the combined batches: after STEPS, and after the
    same batches once more (the restart)."""
    import cadagrad.torch as ct

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = make_model()
        opt = ct.Adagrad(model.parameters(), **OPTIONS)
        train(model, opt)
        first = {"params": [p.detach().clone() for p in model.parameters()],
                 "state_dict": torch.load(_as_file(opt.state_dict()))}
        train(model, opt)
    finally:
        torch.set_num_threads(threads)
    return {**first, "resumed_params": [p.detach().clone() for p in model.parameters()]}


def assert_same_params(params: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    for i, (p, q) in enumerate(zip(params, expected)):
        np.testing.assert_allclose(p.numpy(), q.numpy(), err_msg=f"param {i}", **TOLERANCE)


def test_ddp_with_the_adapter_matches_one_process_on_the_combined_batch(ranks, single_process):
    first, second = (r["ddp"]["params"] for r in ranks)
    for a, b in zip(first, second):
        assert torch.equal(a, b)                 # identical on both ranks, bit for bit
    assert_same_params(first, single_process["params"])
    assert not torch.equal(first[0], make_model()[0].weight.detach())   # it did train


def test_zero_redundancy_optimizer_shards_the_adapter_state(ranks, single_process):
    results = [r["zero"] for r in ranks]
    assert all(r["local_type"] == "Adagrad" for r in results)
    shards = [set(r["local_state"]) for r in results]
    n_params = len(single_process["params"])
    assert all(shards) and shards[0].isdisjoint(shards[1])             # every rank holds a part ...
    assert shards[0] | shards[1] == set(range(n_params))               # ... and together all of it
    for a, b in zip(results[0]["params"], results[1]["params"]):
        assert torch.equal(a, b)
    assert_same_params(results[0]["params"], single_process["params"])

    consolidated = results[0]["consolidated"]
    expected = single_process["state_dict"]
    assert sorted(consolidated["state"]) == sorted(expected["state"])
    for index, state in expected["state"].items():
        assert float(consolidated["state"][index]["step"]) == float(state["step"]) == STEPS
        np.testing.assert_allclose(
            consolidated["state"][index]["sum"].numpy(), state["sum"].numpy(), **TOLERANCE
        )
    # The consolidated checkpoint is in torch's layout: torch.optim.Adagrad takes it as is.
    twin = make_model()
    torch_opt = torch.optim.Adagrad(twin.parameters(), **OPTIONS)
    torch_opt.load_state_dict(consolidated)
    assert float(torch_opt.state[next(twin.parameters())]["step"]) == STEPS


def test_zero_redundancy_optimizer_resumes_the_adapter_from_a_consolidated_checkpoint(ranks, single_process):
    first, second = (r["zero"]["resumed_params"] for r in ranks)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert_same_params(first, single_process["resumed_params"])


def test_ddp_with_sparse_embedding_grads_matches_torch_optim(ranks):
    """Sparse grads arrive all-reduced (possibly uncoalesced, possibly empty) and step as torch.optim steps
    them, on a rank whose batches never name a row of a table too."""
    first, second = (r["sparse"] for r in ranks)
    assert first["cadagrad"]["layouts"][:2] == ["torch.sparse_coo"] * 2
    for a, b in zip(first["cadagrad"]["params"], second["cadagrad"]["params"]):
        assert torch.equal(a, b)                 # identical on both ranks, bit for bit
    for result in (first, second):
        assert_same_params(result["cadagrad"]["params"], result["torch"]["params"])
    untouched = SparseModel()
    for trained, initial in zip(first["cadagrad"]["params"][:2], (untouched.a.weight, untouched.b.weight)):
        assert not torch.equal(trained, initial.detach())
