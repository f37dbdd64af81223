"""``python -m cadagrad bench``: step times, bandwidth and ratios, all measured in one run.

Every case times its implementations interleaved (one sample of each in turn, then again) and reports
medians, so a noisy neighbour slows all of them alike. Columns:

- ``median``: median time of one step of cadagrad;
- ``GB/s``: bytes a step must move (reads and writes of params, grads and state) over that time;
- ``ceiling``: cadagrad's time as a fraction of the ceiling kernel, which moves exactly the same bytes
  of the same buffers with an addition or two per element (1.0 means cadagrad runs at the memory limit);
- ``check``: time of a step with ``skip_if_nonfinite=True`` over the plain step (the NaN/inf scan's
  cost: one more read of the grads);
- ``x ref``: speed-up over the NumPy reference (``cadagrad.reference``);
- ``x fused``, ``x foreach``: speed-up over torch's fused / foreach optimizers on the same buffers
  (zero-copy ``torch.from_numpy``), when torch is importable.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import _kernels, reference
from ._threads import build_info, get_num_threads, set_num_threads
from .optim import SGD, Adagrad

FULL_SIZES = tuple(1 << k for k in range(10, 27, 2))     # 2^10 .. 2^26
QUICK_SIZES = (1 << 10, 1 << 16, 1 << 22)
MANY_TENSORS = (1000, 1000)                              # 1,000 tensors of 1,000 elements
SPARSE_ROWS = (10**6, 10**7)                             # embedding tables of V rows ...
SPARSE_WIDTH, SPARSE_BATCH = 64, 4096                    # ... x 64 float32 columns; 4,096 indices a step
ZIPF_EXPONENT = 1.2                                      # many duplicates, as real id streams have

ALGORITHMS = {
    # name: (optimizer factory, reference factory, torch factory name, torch kwargs, has state)
    "adagrad": (lambda ps: Adagrad(ps, lr=0.01), lambda ps: reference.Adagrad(ps, lr=0.01),
                "Adagrad", {"lr": 0.01}, True),
    "sgd": (lambda ps: SGD(ps, lr=0.01), lambda ps: reference.SGD(ps, lr=0.01), "SGD", {"lr": 0.01}, False),
    "sgd+momentum": (lambda ps: SGD(ps, lr=0.01, momentum=0.9),
                     lambda ps: reference.SGD(ps, lr=0.01, momentum=0.9),
                     "SGD", {"lr": 0.01, "momentum": 0.9}, True),
}


@dataclass
class Case:
    algorithm: str
    dtype: np.dtype
    tensors: int
    size: int          # elements per tensor
    threads: int

    @property
    def label(self) -> str:
        shape = f"{self.tensors}x{self.size}" if self.tensors > 1 else f"2^{self.size.bit_length() - 1}"
        return f"{self.algorithm} {self.dtype.name} {shape}"

    def bytes_per_step(self) -> int:
        has_state = ALGORITHMS[self.algorithm][4]
        arrays_moved = 5 if has_state else 3      # read p, g (and state); write p (and state)
        return arrays_moved * self.dtype.itemsize * self.size * self.tensors


@dataclass
class Result:
    case: Case
    medians: dict[str, float] = field(default_factory=dict)    # implementation -> seconds per step


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def implementations(case: Case, with_reference: bool) -> dict[str, Callable[[], None]]:
    """One zero-argument step per implementation, all on the same param and grad buffers."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(case.size).astype(case.dtype) for _ in range(case.tensors)]
    grads = [(rng.standard_normal(case.size) * 1e-3).astype(case.dtype) for _ in range(case.tensors)]
    make, make_reference, torch_name, torch_kwargs, has_state = ALGORITHMS[case.algorithm]
    opt = make(params)
    # The ceiling runs on the optimizer's own buffers: the same bytes at the same addresses (placement
    # alone moved a 2^24 step by 20% in tests of separately allocated buffers).
    states = (opt.sums if isinstance(opt, Adagrad) else opt.momentum_buffers) if has_state else None
    ceiling = _kernels.StepEngine(params, states, False, None, 0)
    impls = {
        "cadagrad": lambda: opt.step(grads),
        "checked": lambda: opt.step(grads, skip_if_nonfinite=True),
        "ceiling": lambda: ceiling.ceiling(grads, 0),
    }
    if with_reference:
        ref = make_reference(params)
        impls["reference"] = lambda: ref.step(grads)
    torch = _torch()
    if torch is not None:
        tparams = [torch.from_numpy(p) for p in params]
        for p, g in zip(tparams, grads):
            p.grad = torch.from_numpy(g)
        for flavour in ("fused", "foreach"):
            try:
                topt = getattr(torch.optim, torch_name)(tparams, **torch_kwargs, **{flavour: True})
                topt.step()
            except (RuntimeError, TypeError, ValueError):
                continue            # this torch has no such flavour for this optimizer on the CPU
            impls[f"torch {flavour}"] = topt.step
    return impls


def _calls_per_sample(step: Callable[[], None], target_seconds: float) -> int:
    start = time.perf_counter()
    step()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, int(target_seconds / once))


def measure(case: Case, *, repeats: int, with_reference: bool) -> Result:
    """Time every implementation of ``case``, interleaved, and keep the median per step of each."""
    set_num_threads(case.threads)
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(case.threads)
    impls = implementations(case, with_reference)
    counts = {name: _calls_per_sample(step, 2e-3) for name, step in impls.items()}
    samples: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(repeats):
        for name, step in impls.items():
            n = counts[name]
            start = time.perf_counter()
            for _ in range(n):
                step()
            samples[name].append((time.perf_counter() - start) / n)
    return Result(case, {name: statistics.median(s) for name, s in samples.items()})


COLUMNS = ("case", "threads", "median", "GB/s", "ceiling", "check", "x ref", "x fused", "x foreach")


def _format_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _ratio(result: Result, other: str) -> str:
    if other not in result.medians:
        return "-"
    return f"{result.medians[other] / result.medians['cadagrad']:.2f}"


def format_row(result: Result) -> list[str]:
    t = result.medians["cadagrad"]
    return [
        result.case.label,
        str(result.case.threads),
        _format_time(t),
        f"{result.case.bytes_per_step() / t / 1e9:.1f}",
        _ratio(result, "ceiling"),
        f"{result.medians['checked'] / t:.2f}" if "checked" in result.medians else "-",
        _ratio(result, "reference"),
        _ratio(result, "torch fused"),
        _ratio(result, "torch foreach"),
    ]


def format_table(results: list[Result]) -> str:
    """A Markdown table of the results."""
    rows = [list(COLUMNS)] + [format_row(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def cases(sizes: tuple[int, ...], threads: list[int], many_tensors: bool) -> list[Case]:
    out = []
    for n_threads in threads:
        for algorithm in ALGORITHMS:
            for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
                out += [Case(algorithm, dtype, 1, size, n_threads) for size in sizes]
        if many_tensors:
            tensors, size = MANY_TENSORS
            out += [Case(a, np.dtype(np.float32), tensors, size, n_threads) for a in ALGORITHMS]
    return out


def sparse_implementations(nrows: int, with_reference: bool) -> tuple[dict[str, Callable[[int], None]], int]:
    """AdaGrad ``step_rows`` on a (nrows, 64) float32 table with Zipf indices, per implementation.

    Returns the steps (each takes a batch number) and the number of batches.
    """
    rng = np.random.default_rng(0)
    batches = [
        (rng.zipf(ZIPF_EXPONENT, SPARSE_BATCH) % nrows, rng.standard_normal((SPARSE_BATCH, SPARSE_WIDTH)).astype(np.float32))
        for _ in range(8)
    ]
    table = np.zeros((nrows, SPARSE_WIDTH), dtype=np.float32)
    opt = Adagrad(table, lr=0.01)
    impls: dict[str, Callable[[int], None]] = {"cadagrad": lambda b: opt.step_rows(*batches[b])}
    if with_reference:
        ref = reference.Adagrad(table, lr=0.01)
        impls["reference"] = lambda b: ref.step_rows(*batches[b])
    torch = _torch()
    if torch is not None:
        weight = torch.nn.Parameter(torch.from_numpy(table))
        topt = torch.optim.Adagrad([weight], lr=0.01)
        sparse = [torch.sparse_coo_tensor(torch.from_numpy(i)[None], torch.from_numpy(r), table.shape,
                                          check_invariants=False)
                  for i, r in batches]

        def torch_step(b: int) -> None:
            weight.grad = sparse[b]
            topt.step()

        impls["torch sparse"] = torch_step
    return impls, len(batches)


def measure_sparse(nrows: int, *, repeats: int, with_reference: bool) -> dict[str, float]:
    """Median seconds per sparse step of each implementation, interleaved."""
    impls, nbatches = sparse_implementations(nrows, with_reference)
    samples: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(repeats):
        for name, step in impls.items():
            start = time.perf_counter()
            for b in range(nbatches):
                step(b)
            samples[name].append((time.perf_counter() - start) / nbatches)
    return {name: statistics.median(s) for name, s in samples.items()}


def format_sparse_table(results: dict[int, dict[str, float]]) -> str:
    """A Markdown table of the sparse-rows results."""
    rows = [["sparse adagrad step_rows", "median", "x ref", "x torch sparse"]]
    for nrows, medians in results.items():
        t = medians["cadagrad"]
        rows.append([
            f"V={nrows:.0e} x {SPARSE_WIDTH} f32, k={SPARSE_BATCH} zipf",
            _format_time(t),
            f"{medians['reference'] / t:.1f}" if "reference" in medians else "-",
            f"{medians['torch sparse'] / t:.1f}" if "torch sparse" in medians else "-",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cadagrad bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes 2^10, 2^16, 2^22 only")
    parser.add_argument("--threads", default=None,
                        help="comma-separated thread counts to sweep, e.g. 1,2,4 (default: the current count)")
    parser.add_argument("--repeats", type=int, default=None, help="samples per implementation (median kept)")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) NumPy reference")
    parser.add_argument("--no-many-tensors", action="store_true", help="skip the 1,000 x 1,000 case")
    parser.add_argument("--no-sparse", action="store_true", help="skip the sparse embedding-table case")
    args = parser.parse_args(argv)

    threads = [int(t) for t in args.threads.split(",")] if args.threads else [get_num_threads()]
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    repeats = args.repeats or (5 if args.quick else 9)
    todo = cases(sizes, threads, not args.no_many_tensors)
    info = build_info()
    torch = _torch()
    print(f"cadagrad {info['version']}, kernels {info['isa']}, openmp {info['openmp']}, "
          f"numpy {info['numpy']}, torch {torch.__version__ if torch else 'not installed'}; "
          f"medians of {repeats} interleaved samples")
    results = []
    try:
        for i, case in enumerate(todo, start=1):
            print(f"[{i}/{len(todo)}] {case.label}, {case.threads} threads", file=sys.stderr, flush=True)
            results.append(measure(case, repeats=repeats, with_reference=not args.no_reference))
    finally:
        set_num_threads(None)
    print(format_table(results))
    if not args.no_sparse:
        sparse = {}
        for nrows in SPARSE_ROWS:
            print(f"sparse rows, V = {nrows:.0e}", file=sys.stderr, flush=True)
            sparse[nrows] = measure_sparse(nrows, repeats=repeats, with_reference=not args.no_reference)
        print()
        print(format_sparse_table(sparse))
    return 0
