"""Data-parallel training with torch.distributed and cadagrad's AdaGrad as the optimizer.

Run on one machine with two processes (gloo backend, CPU):

    torchrun --nproc-per-node 2 examples/ddp_adagrad.py
    torchrun --nproc-per-node 2 examples/ddp_adagrad.py --zero      # shard AdaGrad's state (ZeRO-1)

or as one plain process: ``python examples/ddp_adagrad.py``. Every rank holds the model; DDP averages
the gradients; ``cadagrad.torch.Adagrad`` steps the CPU parameters in place (one kernel call for all of
them). With ``--zero``, ``ZeroRedundancyOptimizer`` gives each rank the accumulators of its share of the
parameters only, and the ranks broadcast the updated parameters to each other. At the end rank 0
writes a checkpoint in torch's own layout that ``torch.optim.Adagrad`` loads as well.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import traceback

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import cadagrad.torch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument(
        "--zero", action="store_true", help="shard the optimizer state (ZeroRedundancyOptimizer)"
    )
    parser.add_argument("--checkpoint", default="", help="where rank 0 saves model and optimizer state")
    return parser.parse_args()


def init_distributed() -> tuple[int, int]:
    """torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; without it, run as one process."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def make_data(n: int = 4096) -> TensorDataset:
    gen = torch.Generator().manual_seed(0)       # the same data set on every rank; the sampler splits it
    x = torch.randn(n, 32, generator=gen)
    w = torch.randn(32, 1, generator=gen)
    y = torch.tanh(x @ w) + 0.05 * torch.randn(n, 1, generator=gen)
    return TensorDataset(x, y)


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(32, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 1),
    )


def train(args: argparse.Namespace, rank: int, world_size: int) -> bool:
    """Train, check and checkpoint; True if every rank ends with the same parameters.

    DDP's reducer and ``ZeroRedundancyOptimizer`` hold the process group: they are locals here, so they
    are gone once this returns, before ``main`` destroys the group.
    """
    model = DistributedDataParallel(make_model())
    if args.zero:
        opt = ZeroRedundancyOptimizer(
            model.parameters(), optimizer_class=cadagrad.torch.Adagrad, lr=args.lr, lr_decay=1e-4
        )
    else:
        opt = cadagrad.torch.Adagrad(model.parameters(), lr=args.lr, lr_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    data = make_data()
    sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        total = torch.zeros(2)
        for x, y in loader:
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            total += torch.tensor([loss.item() * len(x), len(x)])
        dist.all_reduce(total)
        scheduler.step()
        if rank == 0:
            lr = scheduler.get_last_lr()[0]
            print(f"epoch {epoch}: loss {total[0] / total[1]:.5f}  lr {lr:.4g}", flush=True)

    # Every rank must hold the same parameters: compare each with rank 0's.
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    same = torch.tensor([int(torch.equal(flat, reference))])
    dist.all_reduce(same)
    if args.zero:
        held = torch.tensor([len(opt.optim.state)])
        dist.all_reduce(held)
        opt.consolidate_state_dict(to=0)
    if rank == 0:
        print(f"parameters identical on {int(same)} of {world_size} ranks")
        if args.zero:
            print(f"optimizer state sharded: {int(held)} param states over {world_size} ranks")
        state = opt.state_dict()
        if args.checkpoint:
            torch.save({"model": model.module.state_dict(), "optimizer": state}, args.checkpoint)
        # torch's own AdaGrad takes the checkpoint: the state is in torch's layout ("sum", "step").
        twin = make_model()
        torch.optim.Adagrad(twin.parameters()).load_state_dict(state)
        print("checkpoint loads into torch.optim.Adagrad")
    return int(same) == world_size


def main() -> None:
    args = parse_args()
    rank, world_size = init_distributed()
    # Teardown order: free everything that holds the process group (DDP model, optimizer) first, then
    # destroy the group. Freed after destroy_process_group(), DDP's reducer drops the group's last
    # reference and gloo's teardown can deadlock (the exit hangs).
    try:
        identical = train(args, rank, world_size)
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)   # the traceback would keep train's locals alive
        raise
    finally:
        gc.collect()        # the first DDP of a process can sit in a garbage cycle, which returning leaves
        dist.destroy_process_group()
    if not identical:
        raise SystemExit("parameters differ between ranks")


if __name__ == "__main__":
    main()
