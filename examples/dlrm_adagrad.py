"""AdaGrad on a DLRM-style click model: ``torch.optim.Adagrad`` against ``cadagrad.torch.Adagrad``.

The model is DLRM's shape on the CPU: ``nn.EmbeddingBag(V, 64, mode="sum", sparse=True)`` tables pooling
bags of 8 ids, a bottom MLP on 13 dense features, the dot product of every pair of those 64-d vectors,
and a top MLP giving the click logit. The embedding tables get sparse gradients (only the rows a batch
names), which is where an optimizer's cost lies: ``torch.optim.Adagrad`` coalesces every sparse grad (a
sort, on one core) before updating; ``cadagrad.torch.Adagrad`` sums duplicate rows in the update kernel.

The clicks come from a planted logistic model: each id of each table has a hidden effect on the logit,
ids follow a Zipf law (exponent 1.2, a few ids are most of the traffic, scattered over the table as
hashed ids are), and the dense features act linearly. The loss of that planted model on the same
batches is printed as the floor that training can approach.

Examples
--------
Small and fast (a few seconds), both optimizers from the same initial weights on the same batches::

    python examples/dlrm_adagrad.py

The DLRM-like case (four 2*10^5 x 64 tables, batch 512, bags of 8), one thread::

    python examples/dlrm_adagrad.py --tables 4 --rows 200000 --batch 512 --steps 200 --threads 1

One optimizer only: ``--optimizer torch`` or ``--optimizer cadagrad``. The output gives the mean loss
every ``--every`` steps, then the median time of forward+backward and of the optimizer step.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
from torch import nn

import cadagrad
import cadagrad.torch

WIDTH, BAG, DENSE, ZIPF_EXPONENT = 64, 8, 13, 1.2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizer", choices=["torch", "cadagrad", "both"], default="both")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--tables", type=int, default=4)
    parser.add_argument("--rows", type=int, default=20_000, help="rows of each embedding table")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="for torch and cadagrad alike")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--every", type=int, default=25, help="print the mean loss every N steps")
    return parser.parse_args()


class ClickData:
    """Synthetic clicks from a planted logistic model, one batch at a time."""

    def __init__(self, tables: int, rows: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.rows = rows
        self.scatter = [self.rng.permutation(rows) for _ in range(tables)]    # where hashing puts each id
        self.effects = [self.rng.normal(0.0, 0.3, rows) for _ in range(tables)]
        self.weights = self.rng.normal(0.0, 1.0 / np.sqrt(DENSE), DENSE)
        self.bias = -1.0

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Dense features, ids (tables, size, 8), clicks, and the planted model's loss on them."""
        dense = self.rng.standard_normal((size, DENSE), dtype=np.float32)
        ids = np.stack([s[self.rng.zipf(ZIPF_EXPONENT, (size, BAG)) % self.rows] for s in self.scatter])
        logit = self.bias + dense @ self.weights
        logit += sum(effect[i].sum(axis=1) for effect, i in zip(self.effects, ids))
        clicks = (self.rng.random(size) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        planted_loss = float(np.mean(np.logaddexp(0.0, logit) - clicks * logit))    # cross-entropy
        return torch.from_numpy(dense), torch.from_numpy(ids), torch.from_numpy(clicks), planted_loss


class DLRM(nn.Module):
    """Embedding bags and a bottom MLP, pairwise dot products, a top MLP: one logit per sample."""

    def __init__(self, tables: int, rows: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.EmbeddingBag(rows, WIDTH, mode="sum", sparse=True) for _ in range(tables)
        )
        for bag in self.embeddings:
            nn.init.uniform_(bag.weight, -0.05, 0.05)
        self.bottom = nn.Sequential(nn.Linear(DENSE, 64), nn.ReLU(), nn.Linear(64, WIDTH), nn.ReLU())
        n = tables + 1
        self.top = nn.Sequential(nn.Linear(WIDTH + n * (n - 1) // 2, 64), nn.ReLU(), nn.Linear(64, 1))
        self.register_buffer("pairs", torch.tril_indices(n, n, -1), persistent=False)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        z = torch.stack([x] + [bag(i) for bag, i in zip(self.embeddings, ids)], dim=1)
        dots = torch.bmm(z, z.transpose(1, 2))[:, self.pairs[0], self.pairs[1]]
        return self.top(torch.cat([x, dots], dim=1)).squeeze(1)


def make_optimizers(which: str, model: DLRM, lr: float) -> dict[str, tuple[DLRM, object]]:
    """Name -> (its own copy of the model, its optimizer over every parameter)."""
    out: dict[str, tuple[DLRM, object]] = {}
    if which in ("torch", "both"):
        copy_ = copy.deepcopy(model)
        out["torch.optim.Adagrad"] = copy_, torch.optim.Adagrad(copy_.parameters(), lr=lr)
    if which in ("cadagrad", "both"):
        copy_ = copy.deepcopy(model)
        out["cadagrad.torch.Adagrad"] = copy_, cadagrad.torch.Adagrad(copy_.parameters(), lr=lr)
    return out


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    cadagrad.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = ClickData(args.tables, args.rows, args.seed)
    runs = make_optimizers(args.optimizer, DLRM(args.tables, args.rows), args.lr)
    names = list(runs)
    loss_fn = nn.BCEWithLogitsLoss()
    print(f"DLRM-style model: {args.tables} tables of {args.rows} x {WIDTH} (EmbeddingBag, sum of {BAG} "
          f"Zipf ids), batch {args.batch}, {DENSE} dense features, {args.threads} thread(s), lr {args.lr}")
    losses: dict[str, list[float]] = {name: [] for name in names}
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in names}
    planted: list[float] = []
    print(f"{'step':>6} {'planted (floor)':>16}" + "".join(f" {name:>24}" for name in names))
    for step in range(1, args.steps + 1):
        dense, ids, clicks, planted_loss = data.batch(args.batch)
        planted.append(planted_loss)
        for name in names if step % 2 else names[::-1]:      # alternate who runs first
            model, opt = runs[name]
            start = time.perf_counter()
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(dense, ids), clicks)
            loss.backward()
            middle = time.perf_counter()
            opt.step()
            end = time.perf_counter()
            losses[name].append(loss.item())
            times[name][0].append(middle - start)
            times[name][1].append(end - middle)
        if step % args.every == 0 or step == args.steps:
            span = slice(step - (step - 1) % args.every - 1, step)
            print(f"{step:>6} {np.mean(planted[span]):>16.4f}"
                  + "".join(f" {np.mean(losses[name][span]):>24.4f}" for name in names))

    skip = min(5, args.steps - 1)           # the first steps allocate state and warm the caches
    print(f"\nmedian time per step over steps {skip + 1}..{args.steps}:")
    print(f"{'optimizer':>24} {'forward+backward':>17} {'optimizer step':>15} {'whole step':>11}")
    medians = {}
    for name in names:
        fb, st = times[name][0][skip:], times[name][1][skip:]
        medians[name] = [statistics.median(t) for t in (fb, st, [a + b for a, b in zip(fb, st)])]
        print(f"{name:>24}" + "".join(f" {t * 1e3:>{w}.3f} ms" for t, w in zip(medians[name], (14, 12, 8))))
    if len(names) == 2:
        ours, theirs = medians[names[1]], medians[names[0]]
        print(f"torch / cadagrad: optimizer step {theirs[1] / ours[1]:.2f}x, "
              f"whole step {theirs[2] / ours[2]:.2f}x")


if __name__ == "__main__":
    main()
