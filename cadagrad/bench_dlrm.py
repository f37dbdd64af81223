"""The ``dlrm`` bench case: AdaGrad on a DLRM-style model, ``torch.optim.Adagrad`` against cadagrad.

The case: 4 ``nn.EmbeddingBag(200_000, 64, mode="sum", sparse=True)`` tables, batch 512, bags of 8 ids
drawn from a Zipf law (exponent 1.2, folded onto the rows and scattered by a fixed permutation, as
hashed ids are), 13 dense features through a small bottom MLP, DLRM's pairwise dot interaction and a
small top MLP; binary cross-entropy on random clicks. torch is needed (:func:`measure_dlrm` returns no
rows without it).

Every implementation trains its own copy of the model (same initial weights) on the same batches, one
training step of each in turn (the order alternates), so a noisy neighbour slows all of them alike and
each optimizer step meets the cache state a real training loop leaves: the forward pass has just read
the batch's param rows; the state rows are cold. Per thread count and implementation, the optimizer
step (``opt.step()``) and the whole step (forward, backward and step) are timed separately; the table
gives medians, the spread (interquartile range over the median) and torch's time over cadagrad's. It
also gives the ratio of the median CPU times (``time.process_time``, all threads of the process): on a
loaded machine a step of a few milliseconds is either not preempted or loses a whole time slice of
another process, so wall-clock medians swing with the load while CPU time stays close to the work done
(at one thread; with more, spinning OpenMP workers count too).

cadagrad's side is ``cadagrad.torch.Adagrad(model.parameters())``: the tables' sparse grads and the
MLP's dense grads in one optimizer.

The same-rows ceiling (a kernel that reads and writes exactly the touched rows of the param and the
state and reads the grad rows, in the order the row step visits them, with an addition or two per
element: :func:`cadagrad.functional.rows_memory_ceiling`) runs on a third copy of the model, the dense
params through the dense ceiling (:func:`cadagrad.functional.memory_ceiling`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._threads import set_num_threads
from .functional import memory_ceiling, rows_memory_ceiling

TABLES, ROWS, WIDTH = 4, 200_000, 64        # embedding tables of ROWS x WIDTH float32
BATCH, BAG, DENSE = 512, 8, 13              # samples a step, ids per bag, dense features
ZIPF_EXPONENT = 1.2
POOL = 32                                   # distinct batches, cycled (4 MiB of ids at the full size)
LR = 0.01

TORCH = "torch.optim.Adagrad"
CADAGRAD = "cadagrad.torch.Adagrad"
CEILING = "ceiling"
OPTIMIZER_STEP, WHOLE_STEP = "optimizer step", "whole step"


@dataclass(frozen=True)
class Row:
    """One implementation at one thread count: the median time of a phase over its samples."""

    case: str              # the sizes, e.g. "4 x 200000 x 64, batch 512"
    implementation: str
    threads: int
    phase: str             # OPTIMIZER_STEP or WHOLE_STEP
    median: float          # seconds
    spread: float          # interquartile range / median
    cpu_median: float      # seconds of CPU time (time.process_time), all threads
    samples: int


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def make_batches(n: int, *, tables: int, rows: int, batch: int, seed: int) -> list[tuple]:
    """``n`` batches ``(dense, ids, clicks)``: float32 (batch, 13), int64 (tables, batch, 8), float32 (batch).

    Ids: Zipf draws folded onto ``[0, rows)``, then scattered by a fixed permutation per table.
    """
    torch = _torch()
    rng = np.random.default_rng(seed)
    scatter = [rng.permutation(rows) for _ in range(tables)]
    out = []
    for _ in range(n):
        ids = np.stack([p[rng.zipf(ZIPF_EXPONENT, (batch, BAG)) % rows] for p in scatter])
        dense = rng.standard_normal((batch, DENSE), dtype=np.float32)
        clicks = (rng.random(batch) < 0.5).astype(np.float32)
        out.append((torch.from_numpy(dense), torch.from_numpy(ids), torch.from_numpy(clicks)))
    return out


def make_model(*, tables: int, rows: int, seed: int) -> Any:
    """The DLRM-style model: a ``ModuleDict`` of ``embeddings``, ``bottom``, ``top``; see :func:`forward`."""
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(seed)
    n = tables + 1
    model = nn.ModuleDict({
        "embeddings": nn.ModuleList(
            nn.EmbeddingBag(rows, WIDTH, mode="sum", sparse=True) for _ in range(tables)
        ),
        "bottom": nn.Sequential(nn.Linear(DENSE, 64), nn.ReLU(), nn.Linear(64, WIDTH), nn.ReLU()),
        "top": nn.Sequential(nn.Linear(WIDTH + n * (n - 1) // 2, 64), nn.ReLU(), nn.Linear(64, 1)),
    })
    with torch.no_grad():
        for bag in model["embeddings"]:
            bag.weight.uniform_(-0.05, 0.05)
    return model


def forward(model: Any, dense: Any, ids: Any) -> Any:
    """Logits: bottom MLP, pooled bags, the dot product of every pair of those vectors, top MLP."""
    torch = _torch()
    x = model["bottom"](dense)
    z = torch.stack([x] + [bag(i) for bag, i in zip(model["embeddings"], ids)], dim=1)
    n = z.shape[1]
    first, second = torch.tril_indices(n, n, -1)
    dots = torch.bmm(z, z.transpose(1, 2))[:, first, second]
    return model["top"](torch.cat([x, dots], dim=1)).squeeze(1)


def make_optimizer(implementation: str, model: Any, lr: float = LR) -> Any:
    """The optimizer of ``implementation`` (TORCH or CADAGRAD) over every param of ``model``."""
    if implementation == TORCH:
        return _torch().optim.Adagrad(model.parameters(), lr=lr)
    import cadagrad.torch as ct

    return ct.Adagrad(model.parameters(), lr=lr)


class RowsCeiling:
    """The same-rows ceiling as an optimizer: ``step()`` moves a row step's bytes, with trivial arithmetic.

    The tables go through :func:`cadagrad.functional.rows_memory_ceiling` (the row walk of a sparse step,
    grouping included, all tables in one call), the dense params through
    :func:`cadagrad.functional.memory_ceiling`, each on zeroed state buffers of its own. It changes the
    params (adds the grads): time it on a copy of the model that nothing else uses.
    """

    def __init__(self, model: Any) -> None:
        self.tables = [bag.weight for bag in model["embeddings"]]
        self.dense = list(model["bottom"].parameters()) + list(model["top"].parameters())
        tables = [p.detach().numpy() for p in self.tables]
        dense = [p.detach().numpy() for p in self.dense]
        self.rows = rows_memory_ceiling(tables, [np.zeros_like(a) for a in tables])
        self.dense_ceiling = memory_ceiling(dense, [np.zeros_like(a) for a in dense])

    def step(self) -> None:
        self.rows([p.grad._indices()[0].numpy() for p in self.tables],
                  [p.grad._values().numpy() for p in self.tables])
        self.dense_ceiling([p.grad.numpy() for p in self.dense])


def _set_threads(n: int) -> None:
    _torch().set_num_threads(n)
    set_num_threads(n)


def _spread(samples: list[float]) -> float:
    if len(samples) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4)
    return (q3 - q1) / statistics.median(samples)


def measure_dlrm(
    threads: Sequence[int] = (1, 2), repeats: int = 5, steps: int = 10, *, tables: int = TABLES,
    rows: int = ROWS, batch: int = BATCH, seed: int = 0, ceiling: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Time the optimizer step and the whole training step of each implementation, interleaved.

    Parameters
    ----------
    threads : sequence of int
        Thread counts (``torch.set_num_threads`` and ``cadagrad.set_num_threads``), visited in turn
        within each repeat.
    repeats, steps : int
        Rounds over the thread counts, and training steps per thread count in a round: each
        implementation gets ``repeats * steps`` samples per thread count (after one untimed step).
    tables, rows, batch : int
        The case's size (defaults: the DLRM-like case).
    seed : int
        Seeds the weights and the batches.
    ceiling : bool
        Also time the same-rows ceiling, where the compiled engine has one.
    progress : callable, optional
        Called with a line of text before each round (the CLI prints it to stderr).

    Returns
    -------
    list of Row
        Two rows (optimizer step, whole step) per implementation and thread count; none without torch.
    """
    torch = _torch()
    if torch is None:
        return []
    impls = [TORCH, CADAGRAD]
    if ceiling:
        impls.append(CEILING)
    batches = make_batches(POOL, tables=tables, rows=rows, batch=batch, seed=seed + 1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    trainers = {}
    for name in impls:
        model = make_model(tables=tables, rows=rows, seed=seed)
        trainers[name] = (model, RowsCeiling(model) if name == CEILING else make_optimizer(name, model))
    samples: dict[tuple[str, int, str], list[tuple[float, float]]] = {
        (name, n, phase): [] for name in impls for n in threads for phase in (OPTIMIZER_STEP, WHOLE_STEP)
    }
    saved = torch.get_num_threads()
    count = 0
    try:
        # Untimed, one pass over the batches: every row the timed steps name has its state written once
        # (lazy state is faulted in at a row's first step, an eager one at construction), so both
        # optimizers are timed in the steady state of a long training run.
        for dense, ids, clicks in batches:
            for model, opt in trainers.values():
                model.zero_grad(set_to_none=True)
                loss_fn(forward(model, dense, ids), clicks).backward()
                opt.step()
        for r in range(repeats):
            for n in threads:
                if progress is not None:
                    progress(f"dlrm: round {r + 1}/{repeats}, {n} threads")
                _set_threads(n)
                for s in range(steps + (1 if r == 0 else 0)):
                    dense, ids, clicks = batches[count % len(batches)]
                    count += 1
                    for name in impls if count % 2 else impls[::-1]:
                        model, opt = trainers[name]
                        start, cpu_start = time.perf_counter(), time.process_time()
                        model.zero_grad(set_to_none=True)
                        loss_fn(forward(model, dense, ids), clicks).backward()
                        middle, cpu_middle = time.perf_counter(), time.process_time()
                        opt.step()
                        end, cpu_end = time.perf_counter(), time.process_time()
                        if r == 0 and s == 0:
                            continue        # the first step of a thread count allocates state
                        samples[name, n, OPTIMIZER_STEP].append((end - middle, cpu_end - cpu_middle))
                        samples[name, n, WHOLE_STEP].append((end - start, cpu_end - cpu_start))
    finally:
        torch.set_num_threads(saved)
        set_num_threads(None)
    case = f"{tables} x {rows} x {WIDTH}, batch {batch}"
    out = []
    for (name, n, phase), pairs in samples.items():
        wall, cpu = [w for w, _ in pairs], [c for _, c in pairs]
        out.append(Row(case, name, n, phase, statistics.median(wall), _spread(wall), statistics.median(cpu),
                       len(pairs)))
    return out


def _format_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-6:.3g} us"


def format_dlrm_table(rows: list[Row]) -> str:
    """A Markdown table: per thread count and phase, torch's and cadagrad's medians, spreads and ratios."""
    if not rows:
        return "dlrm: torch is not installed"
    by_key = {(r.implementation, r.threads, r.phase): r for r in rows}
    header = [f"dlrm {rows[0].case}", "threads", "torch", "(spread)",
              "cadagrad", "(spread)", "x torch", "x torch CPU", "vs ceiling", "vs ceiling CPU"]
    table = [header]
    for n in sorted({r.threads for r in rows}):
        for phase in (OPTIMIZER_STEP, WHOLE_STEP):
            t, c = by_key.get((TORCH, n, phase)), by_key.get((CADAGRAD, n, phase))
            if t is None or c is None:
                continue
            ceiling = by_key.get((CEILING, n, phase)) if phase == OPTIMIZER_STEP else None
            table.append([
                phase, str(n), _format_time(t.median), f"{t.spread:.0%}", _format_time(c.median),
                f"{c.spread:.0%}", f"{t.median / c.median:.2f}", f"{t.cpu_median / c.cpu_median:.2f}",
                f"{ceiling.median / c.median:.2f}" if ceiling is not None else "-",
                f"{ceiling.cpu_median / c.cpu_median:.2f}" if ceiling is not None else "-",
            ])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |" for line in table]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if not any(r.implementation == CEILING for r in rows):
        lines.append("vs ceiling: '-' = measured without the same-rows ceiling")
    return "\n".join(lines)
