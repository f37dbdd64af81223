"""examples/ddp_adagrad.py tears the process group down in a safe order: 2 processes, gloo on 127.0.0.1.

Freed after ``destroy_process_group()``, DDP's C++ reducer holds the group's last reference; its destructor
runs with the GIL held and joins gloo's worker threads, and a worker that still has to drop a collective's
Python-backed tensors waits for the GIL: a deadlock, and the exit hangs. The example frees everything that
holds the group first. That race is rare on its own, so the test forces its bad side: just before the
example destroys the group, rank 0 leaves an all_reduce pending (its tensor's last reference in the gloo
worker) that rank 1 completes a few seconds later, while rank 0 is tearing down. In the safe order the
worker finishes and both ranks exit; in the unsafe order rank 0 never exits.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ddp_adagrad.py"
TIMEOUT_S = 180            # both ranks: start, import torch, one epoch (seconds when the machine is idle)
GRACE_S = 30               # how long rank 0 may take to exit once rank 1 has
DELAY_S = 5                # rank 1 completes the pending all_reduce this long after rank 0 reached teardown

pytestmark = [
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build"),
    pytest.mark.skipif(
        dist.is_available() and not dist.is_gloo_available(), reason="the gloo backend is not available"
    ),
    pytest.mark.skipif(not EXAMPLE.exists(), reason="examples/ is not part of this tree"),
]


def _rank(rank: int, port: int) -> None:
    """One rank: the example's main() for one epoch, with a collective pending at teardown."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    spec = importlib.util.spec_from_file_location("ddp_adagrad_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    destroy = dist.destroy_process_group

    def destroy_with_a_collective_in_flight() -> None:
        if rank == 0:
            dist.all_reduce(torch.ones(3), async_op=True)     # handle and tensor dropped at once
        else:
            time.sleep(DELAY_S)
            dist.all_reduce(torch.ones(3))
        destroy()

    dist.destroy_process_group = destroy_with_a_collective_in_flight
    sys.argv = [str(EXAMPLE), "--epochs", "1"]
    example.main()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_ddp_example_exits_with_a_collective_in_flight_at_teardown():
    import torch.multiprocessing as mp

    env = {"OMP_NUM_THREADS": "1"}
    loopback = {"linux": "lo", "darwin": "lo0"}.get(sys.platform)
    if loopback is not None:       # gloo otherwise resolves the host name, which containers may not
        env["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME", loopback)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)          # inherited by the spawned interpreters
    try:
        ctx = mp.get_context("spawn")
        port = _free_port()
        procs = [ctx.Process(target=_rank, args=(rank, port)) for rank in range(2)]
        for proc in procs:
            proc.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        procs[1].join(TIMEOUT_S)
        procs[0].join(GRACE_S if procs[1].exitcode is not None else 0)
        alive = [rank for rank, proc in enumerate(procs) if proc.is_alive()]
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(10)
    if alive == [0]:
        pytest.fail(
            f"rank 0 still running {GRACE_S} s after rank 1 exited; killed. A teardown deadlock: the DDP "
            "model or the optimizer outlived destroy_process_group()"
        )
    assert not alive, f"ranks {alive} still running after {TIMEOUT_S} s; killed"
    assert [proc.exitcode for proc in procs] == [0, 0]
