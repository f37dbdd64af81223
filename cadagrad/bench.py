"""``python -m cadagrad bench``: step times, bandwidth and ratios, all measured in one run.

Every case times its implementations interleaved (one sample of each in turn, then again: a round) and
reports medians, so a noisy neighbour slows all of them alike. Columns of the dense table:

- ``median``: median time of one step of cadagrad;
- ``spread``: the interquartile range of cadagrad's samples over their median;
- ``B/elem``: bytes a step must move per element (reads and writes of params, grads and state: a 16-bit
  param keeps float32 state, or in the ``adagrad/param`` rows its own dtype; ``adagrad/sr`` rounds
  stochastically);
- ``GB/s``: those bytes over that time;
- ``ceiling``: the ceiling kernel's time over cadagrad's. The ceiling moves exactly the same bytes of the
  same buffers with an addition or two per element: 1.0 means cadagrad runs at the memory limit, and a
  value above 1.0 can only come from noise;
- ``check``: time of a step with ``skip_if_nonfinite=True`` over the plain step (the NaN/inf scan's
  cost: one more read of the grads); below 1.0 can only come from noise;
- ``t/f32``: for a float16 or bfloat16 param, the step's time over that of the same rule on float32
  buffers of the same size, timed in the same rounds (its bytes allow about 0.7 with state);
- ``x ref``: speed-up over the NumPy reference (``cadagrad.reference``);
- ``x fused``, ``x foreach``: speed-up over torch's fused / foreach optimizers on the same buffers
  (zero-copy ``torch.from_numpy``), when torch is importable and the flavour moves the params (a probe
  checks: torch's fused SGD leaves 16-bit CPU tensors unchanged). For 16-bit params torch keeps the
  state in the param's dtype: bfloat16 is compared in the ``adagrad/param`` rows only.

A ratio is marked ``~`` when its per-round values spread too much to trust it (interquartile range over
median above 20%), and ``!`` when its value is impossible without noise (``ceiling`` above 1.0,
``check`` below 1.0); lines under the table explain the marks and warn.
Progress, one line per case with its time, goes to stderr.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import bench_dlrm, reference
from ._checks import HALF_DTYPES, state_dtype
from ._threads import build_info, get_num_threads, set_num_threads
from .functional import memory_ceiling
from .optim import SGD, Adagrad
from .proximal import AdagradDA, ProximalAdagrad

FULL_SIZES = tuple(1 << k for k in range(10, 27, 2))     # 2^10 .. 2^26
QUICK_SIZES = (1 << 10, 1 << 16, 1 << 22)
MANY_TENSORS = (1000, 1000)                              # 1,000 tensors of 1,000 elements
SPARSE_ROWS = (10**6, 10**7)                             # embedding tables of V rows ...
QUICK_SPARSE_ROWS = (10**6,)                             # (10^7 rows take 2.5 GB per state copy)
SPARSE_WIDTH, SPARSE_BATCH = 64, 4096                    # ... x 64 float32 columns; 4,096 indices a step
ZIPF_EXPONENT = 1.2                                      # many duplicates, as real id streams have
SAMPLE_SECONDS = 2e-3                                    # each sample repeats a step for about this long
UNRELIABLE_SPREAD = 0.20                                 # a ratio's IQR / median above this: marked ~

# float16 and bfloat16 params: these rules, at every size (--quick: the largest only). "adagrad/param"
# keeps the state in the param's dtype (as torch.optim does, so its x fused compares like with like);
# "adagrad/sr" rounds stochastically (float32 state).
HALF_ALGORITHMS = ("adagrad", "sgd", "adagrad/param", "adagrad/sr")
QUICK_HALF_ALGORITHMS = ("adagrad", "adagrad/param")

ALGORITHMS = {
    # name: (optimizer factory, reference factory, torch factory name, torch kwargs, has state)
    "adagrad": (lambda ps: Adagrad(ps, lr=0.01), lambda ps: reference.Adagrad(ps, lr=0.01),
                "Adagrad", {"lr": 0.01}, True),
    "sgd": (lambda ps: SGD(ps, lr=0.01), lambda ps: reference.SGD(ps, lr=0.01), "SGD", {"lr": 0.01}, False),
    "sgd+momentum": (lambda ps: SGD(ps, lr=0.01, momentum=0.9),
                     lambda ps: reference.SGD(ps, lr=0.01, momentum=0.9),
                     "SGD", {"lr": 0.01, "momentum": 0.9}, True),
    # 16-bit params only (see HALF_ALGORITHMS)
    "adagrad/param": (lambda ps: Adagrad(ps, lr=0.01, state_dtype="param"),
                      lambda ps: reference.Adagrad(ps, lr=0.01, state_dtype="param"), "Adagrad", {"lr": 0.01}, True),
    "adagrad/sr": (lambda ps: Adagrad(ps, lr=0.01, stochastic_rounding=True, seed=0),
                   lambda ps: reference.Adagrad(ps, lr=0.01, stochastic_rounding=True, seed=0),
                   "Adagrad", {"lr": 0.01}, True),
}
FLOAT_ALGORITHMS = ("adagrad", "sgd", "sgd+momentum")          # on float32 and float64 params


# ---------------------------------------------------------------------------------------------------
# Samples, spreads and the table


def spread(values: Sequence[float]) -> float:
    """Interquartile range over median (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) / median if median > 0 else float("inf")


@dataclass
class Samples:
    """Seconds per step of each implementation, one value per round (rounds are interleaved)."""

    times: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def ratio(self, numerator: str, denominator: str) -> tuple[float, float] | None:
        """Ratio of the medians, and the spread of the per-round ratios; None if one side is missing."""
        if numerator not in self.times or denominator not in self.times:
            return None
        rounds = [a / b for a, b in zip(self.times[numerator], self.times[denominator])]
        return self.median(numerator) / self.median(denominator), spread(rounds)


def interleave(steps: dict[str, Callable[[], None]], repeats: int) -> Samples:
    """Time every step ``repeats`` times, one sample of each in turn; each sample repeats its step."""
    counts = {}
    for name, step in steps.items():
        step()                                   # warm up: lazy state, first-touch pages, caches
        start = time.perf_counter()
        step()
        once = max(time.perf_counter() - start, 1e-7)
        counts[name] = max(1, int(SAMPLE_SECONDS / once))
    samples = Samples({name: [] for name in steps})
    for _ in range(repeats):
        for name, step in steps.items():
            n = counts[name]
            start = time.perf_counter()
            for _ in range(n):
                step()
            samples.times[name].append((time.perf_counter() - start) / n)
    return samples


class Marks:
    """Formats ratios with their markers and keeps the notes the markers need under the table."""

    NOISY = "~"
    IMPOSSIBLE = "!"

    def __init__(self) -> None:
        self.noisy: list[str] = []          # "label: column" of each marked cell
        self.impossible: list[str] = []

    def cell(self, label: str, column: str, ratio: tuple[float, float] | None, *,
             digits: int = 2, above: float | None = None, below: float | None = None) -> str:
        """``ratio`` as text; ``!`` if its rounded value is above ``above`` or below ``below``, ``~`` if
        its per-round values spread more than UNRELIABLE_SPREAD."""
        if ratio is None:
            return "-"
        value, ratio_spread = ratio
        text = f"{value:.{digits}f}"
        shown = float(text)
        if (above is not None and shown > above) or (below is not None and shown < below):
            self.impossible.append(f"{label}: {column} {text}")
            return text + self.IMPOSSIBLE
        if ratio_spread > UNRELIABLE_SPREAD:
            self.noisy.append(f"{label}: {column}")
            return text + self.NOISY
        return text

    def notes(self) -> list[str]:
        lines = []
        if self.noisy:
            lines.append(
                f"{self.NOISY} unreliable ({len(self.noisy)} cells): from round to round the ratio's "
                f"interquartile range exceeds {UNRELIABLE_SPREAD:.0%} of its median"
            )
        if self.impossible:
            lines.append(
                f"{self.IMPOSSIBLE} impossible without noise ({len(self.impossible)} cells): ceiling above "
                "1.0 (cadagrad faster than a kernel moving the same bytes) or check below 1.0 (a step that "
                "also scans the grads faster than one that does not)"
            )
        if self.noisy or self.impossible:
            lines.append(
                "warning: the samples were noisy; rerun on an idle machine, or with more --repeats, "
                "before trusting the marked ratios"
            )
        return lines


def markdown_table(rows: list[list[str]]) -> str:
    """Rows of cells (the first is the header) as a Markdown table with aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _format_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


# ---------------------------------------------------------------------------------------------------
# The dense section: one step over whole tensors


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

    def bytes_per_element(self) -> int:
        """Read p, g (and the state); write p (and the state). A 16-bit param's state is float32."""
        has_state = ALGORITHMS[self.algorithm][4]
        mode = "param" if self.algorithm.endswith("/param") else None
        state_bytes = 2 * state_dtype(self.dtype, mode).itemsize if has_state else 0
        return 3 * self.dtype.itemsize + state_bytes

    def bytes_per_step(self) -> int:
        return self.bytes_per_element() * self.size * self.tensors


@dataclass
class Result:
    case: Case
    samples: Samples

    @property
    def medians(self) -> dict[str, float]:
        return {name: self.samples.median(name) for name in self.samples.times}


def implementations(case: Case, with_reference: bool) -> dict[str, Callable[[], None]]:
    """One zero-argument step per implementation, all on the same param and grad buffers."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(case.size).astype(case.dtype) for _ in range(case.tensors)]
    grads = [(rng.standard_normal(case.size) * 1e-3).astype(case.dtype) for _ in range(case.tensors)]
    make, make_reference, torch_name, torch_kwargs, has_state = ALGORITHMS[case.algorithm]
    opt = make(params)
    if case.dtype in HALF_DTYPES:
        # The same rule on float32 buffers of the same size, timed in the same rounds (t/f32).
        params32 = [p.astype(np.float32) for p in params]
        grads32 = [g.astype(np.float32) for g in grads]
        opt32 = ALGORITHMS[case.algorithm.split("/")[0]][0](params32)
    # The ceiling runs on the optimizer's own buffers: the same bytes at the same addresses (placement
    # alone moved a 2^24 step by 20% in tests of separately allocated buffers).
    states = (opt.sums if isinstance(opt, Adagrad) else opt.momentum_buffers) if has_state else None
    ceiling = memory_ceiling(opt.params, states)
    impls = {
        "cadagrad": lambda: opt.step(grads),
        "checked": lambda: opt.step(grads, skip_if_nonfinite=True),
        "ceiling": lambda: ceiling(grads),
    }
    if case.dtype in HALF_DTYPES:
        impls["float32"] = lambda: opt32.step(grads32)
    if with_reference:
        ref = make_reference(params)
        impls["reference"] = lambda: ref.step(grads)
    torch = _torch()
    # torch's state of a 16-bit param has the param's dtype: compared with "adagrad/param" (like with
    # like), and with the float32-state rows of float16 (a zero-copy view needs a NumPy dtype).
    if torch is not None and (case.dtype != HALF_DTYPES[1] or case.algorithm.endswith("/param")) \
            and not case.algorithm.endswith("/sr"):

        def tensor(a):
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if a.dtype == HALF_DTYPES[1] \
                else torch.from_numpy(a)

        tparams = [tensor(p) for p in params]
        for p, g in zip(tparams, grads):
            p.grad = tensor(g)
        for flavour in ("fused", "foreach"):
            if not _torch_flavour_steps(torch, torch_name, torch_kwargs, flavour, tparams[0].dtype):
                continue            # no such flavour here for this optimizer and dtype, or it does nothing
            topt = getattr(torch.optim, torch_name)(tparams, **torch_kwargs, **{flavour: True})
            topt.step()
            impls[f"torch {flavour}"] = topt.step
    return impls


def _torch_flavour_steps(torch, name: str, kwargs: dict, flavour: str, dtype) -> bool:
    """Whether torch's ``flavour`` of optimizer ``name`` runs on CPU tensors of ``dtype`` and moves them:
    a probe of 64 elements with unit grads and lr 0.5. (torch 2.13's fused SGD, for one, runs on float16
    CPU tensors and leaves them unchanged: timing it would compare with a step that does nothing.)"""
    param = torch.ones(64, dtype=dtype)
    param.grad = torch.ones(64, dtype=dtype)
    try:
        getattr(torch.optim, name)([param], **{**kwargs, "lr": 0.5}, **{flavour: True}).step()
    except (RuntimeError, TypeError, ValueError):
        return False
    return bool((param != 1).all())


def measure(case: Case, *, repeats: int, with_reference: bool) -> Result:
    """Time every implementation of ``case``, interleaved."""
    set_num_threads(case.threads)
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(case.threads)
    return Result(case, interleave(implementations(case, with_reference), repeats))


COLUMNS = ("case", "threads", "median", "spread", "B/elem", "GB/s", "ceiling", "check", "t/f32", "x ref",
           "x fused", "x foreach")


def format_row(result: Result, marks: Marks) -> list[str]:
    s, label = result.samples, f"{result.case.label}, {result.case.threads} threads"
    t = s.median("cadagrad")
    return [
        result.case.label,
        str(result.case.threads),
        _format_time(t),
        f"{spread(s.times['cadagrad']):.0%}",
        str(result.case.bytes_per_element()),
        f"{result.case.bytes_per_step() / t / 1e9:.1f}",
        marks.cell(label, "ceiling", s.ratio("ceiling", "cadagrad"), above=1.0),
        marks.cell(label, "check", s.ratio("checked", "cadagrad"), below=1.0),
        marks.cell(label, "t/f32", s.ratio("cadagrad", "float32")),
        marks.cell(label, "x ref", s.ratio("reference", "cadagrad")),
        marks.cell(label, "x fused", s.ratio("torch fused", "cadagrad")),
        marks.cell(label, "x foreach", s.ratio("torch foreach", "cadagrad")),
    ]


def format_table(results: list[Result]) -> str:
    """A Markdown table of the results, with the notes its markers need."""
    marks = Marks()
    table = markdown_table([list(COLUMNS)] + [format_row(r, marks) for r in results])
    return "\n".join([table, *marks.notes()])


def cases(sizes: tuple[int, ...], threads: list[int], many_tensors: bool, quick: bool = False) -> list[Case]:
    out = []
    for n_threads in threads:
        for algorithm in FLOAT_ALGORITHMS:
            for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
                out += [Case(algorithm, dtype, 1, size, n_threads) for size in sizes]
        half_sizes = sizes[-1:] if quick else sizes
        for algorithm in QUICK_HALF_ALGORITHMS if quick else HALF_ALGORITHMS:
            for dtype in HALF_DTYPES:
                out += [Case(algorithm, dtype, 1, size, n_threads) for size in half_sizes]
        if many_tensors:
            tensors, size = MANY_TENSORS
            out += [Case(a, np.dtype(np.float32), tensors, size, n_threads) for a in FLOAT_ALGORITHMS]
    return out


# ---------------------------------------------------------------------------------------------------
# The sparse section: AdaGrad's step_rows on an embedding table


@dataclass
class SparseCase:
    nrows: int

    @property
    def label(self) -> str:
        return f"V={self.nrows:.0e} x {SPARSE_WIDTH} f32, k={SPARSE_BATCH} zipf"


def sparse_implementations(nrows: int, with_reference: bool) -> tuple[dict[str, Callable[[int], None]], int]:
    """AdaGrad ``step_rows`` on a (nrows, 64) float32 table with Zipf indices, per implementation.

    Returns the steps (each takes a batch number) and the number of batches.
    """
    rng = np.random.default_rng(0)
    batches = [
        (rng.zipf(ZIPF_EXPONENT, SPARSE_BATCH) % nrows,
         rng.standard_normal((SPARSE_BATCH, SPARSE_WIDTH)).astype(np.float32))
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


def measure_sparse(nrows: int, *, repeats: int, with_reference: bool) -> Samples:
    """Seconds per sparse step of each implementation (a sample: one pass over the batches), interleaved."""
    impls, nbatches = sparse_implementations(nrows, with_reference)

    def batches(step: Callable[[int], None]) -> Callable[[], None]:
        return lambda: [step(b) for b in range(nbatches)]

    samples = interleave({name: batches(step) for name, step in impls.items()}, repeats)
    for values in samples.times.values():
        values[:] = [v / nbatches for v in values]
    return samples


def format_sparse_table(results: dict[int, Samples]) -> str:
    """A Markdown table of the sparse-rows results, with the notes its markers need."""
    marks = Marks()
    rows = [["sparse adagrad step_rows", "median", "spread", "x ref", "x torch sparse"]]
    for nrows, s in results.items():
        label = SparseCase(nrows).label
        rows.append([
            label,
            _format_time(s.median("cadagrad")),
            f"{spread(s.times['cadagrad']):.0%}",
            marks.cell(label, "x ref", s.ratio("reference", "cadagrad"), digits=1),
            marks.cell(label, "x torch sparse", s.ratio("torch sparse", "cadagrad"), digits=1),
        ])
    return "\n".join([markdown_table(rows), *marks.notes()])


# ---------------------------------------------------------------------------------------------------
# The proximal section: ProximalAdagrad and AdagradDA against an AdaGrad step of the same size

PROXIMAL_SIZE = 1 << 24                                  # float32 elements (--quick: 2^22)
PROXIMAL_ALGORITHMS = {
    # name: (factory, arrays a step moves: reads + writes, element-wise)
    "proximal adagrad": (lambda ps: ProximalAdagrad(ps, lr=0.01, l1=1e-4, l2=1e-4), 5),
    "adagrad da": (lambda ps: AdagradDA(ps, lr=0.01, l1=1e-4, l2=1e-4), 6),  # reads g, S, G; writes S, G, p
}


@dataclass
class ProximalCase:
    algorithm: str
    size: int
    threads: int

    @property
    def label(self) -> str:
        return f"{self.algorithm} float32 2^{self.size.bit_length() - 1}"


def proximal_implementations(case: ProximalCase) -> dict[str, Callable[[], None]]:
    """The optimizer's step, an AdaGrad step of the same size (own buffers) and the ceiling on its buffers."""
    rng = np.random.default_rng(0)
    param = rng.standard_normal(case.size).astype(np.float32)
    grad = (rng.standard_normal(case.size) * 1e-3).astype(np.float32)
    opt = PROXIMAL_ALGORITHMS[case.algorithm][0](param)
    adagrad = Adagrad(param.copy(), lr=0.01)
    second = opt.grad_sums if isinstance(opt, AdagradDA) else None
    ceiling = memory_ceiling(opt.params, opt.sums, states2=second)
    return {
        "cadagrad": lambda: opt.step(grad),
        "adagrad": lambda: adagrad.step(grad),
        "ceiling": lambda: ceiling([grad]),
    }


def measure_proximal(case: ProximalCase, *, repeats: int) -> tuple[ProximalCase, Samples]:
    set_num_threads(case.threads)
    return case, interleave(proximal_implementations(case), repeats)


def format_proximal_table(results: list[tuple[ProximalCase, Samples]]) -> str:
    """A Markdown table: time, bandwidth, time over AdaGrad's (target <= 1.4) and the ceiling ratio."""
    marks = Marks()
    rows = [["case", "threads", "median", "spread", "GB/s", "x adagrad time", "ceiling"]]
    for case, s in results:
        label = f"{case.label}, {case.threads} threads"
        t = s.median("cadagrad")
        moved = PROXIMAL_ALGORITHMS[case.algorithm][1] * 4 * case.size
        rows.append([
            case.label,
            str(case.threads),
            _format_time(t),
            f"{spread(s.times['cadagrad']):.0%}",
            f"{moved / t / 1e9:.1f}",
            marks.cell(label, "x adagrad time", s.ratio("cadagrad", "adagrad")),
            marks.cell(label, "ceiling", s.ratio("ceiling", "cadagrad"), above=1.0),
        ])
    return "\n".join([markdown_table(rows), *marks.notes()])


# ---------------------------------------------------------------------------------------------------
# Sections and the command line


@dataclass
class Settings:
    """What the command line asked for, as every section sees it."""

    quick: bool
    threads: list[int]
    repeats: int
    with_reference: bool
    many_tensors: bool


@dataclass
class Section:
    """One table of the report: its cases, how one is measured, and how the results print.

    ``cases(settings)`` lists what to measure (each with a ``label``), ``measure(case, settings)`` times
    one, and ``report(results, settings)`` returns the section's text. A section may live in a module of
    its own, imported by these functions when the section runs.
    """

    name: str
    help: str
    cases: Callable[[Settings], list[Any]]
    measure: Callable[[Any, Settings], Any]
    report: Callable[[list[Any], Settings], str]


DENSE = Section(
    "dense", "one step over whole tensors: sizes 2^10..2^26, float32/float64, float16/bfloat16 params "
    "(AdaGrad, SGD; --quick: AdaGrad at 2^22), 1,000 x 1,000 tensors",
    cases=lambda s: cases(QUICK_SIZES if s.quick else FULL_SIZES, s.threads, s.many_tensors, s.quick),
    measure=lambda case, s: measure(case, repeats=s.repeats, with_reference=s.with_reference),
    report=lambda results, s: format_table(results),
)
SPARSE = Section(
    "sparse", "AdaGrad step_rows on embedding tables of 10^6 and 10^7 rows (--quick: 10^6 only)",
    cases=lambda s: [SparseCase(n) for n in (QUICK_SPARSE_ROWS if s.quick else SPARSE_ROWS)],
    measure=lambda case, s: (
        case.nrows, measure_sparse(case.nrows, repeats=s.repeats, with_reference=s.with_reference)
    ),
    report=lambda results, s: format_sparse_table(dict(results)),
)


PROXIMAL = Section(
    "proximal", "ProximalAdagrad and AdagradDA, 2^24 float32 (--quick: 2^22): time over an AdaGrad step's",
    cases=lambda s: [
        ProximalCase(name, QUICK_SIZES[-1] if s.quick else PROXIMAL_SIZE, n)
        for n in s.threads for name in PROXIMAL_ALGORITHMS
    ],
    measure=lambda case, s: measure_proximal(case, repeats=s.repeats),
    report=lambda results, s: format_proximal_table(results),
)


@dataclass(frozen=True)
class DlrmCase:
    """The one case of the dlrm section (its sizes live in cadagrad.bench_dlrm)."""

    label: str = "DLRM-style model, 4 sparse tables of 200000 x 64 and an MLP"


def _dlrm_measure(case: DlrmCase, s: Settings) -> list[Any]:
    if s.quick:      # one thread, a few samples: the rows, not a careful figure
        return bench_dlrm.measure_dlrm((1,), repeats=3, steps=4, progress=_stderr)
    return bench_dlrm.measure_dlrm(sorted(set(s.threads) | {1, 2}), repeats=s.repeats, progress=_stderr)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


DLRM = Section(
    "dlrm", "a DLRM-style training step (4 sparse tables of 2*10^5 x 64, an MLP): torch.optim.Adagrad "
    "against cadagrad.torch.Adagrad, optimizer step and whole step, with the same-rows ceiling (needs torch)",
    cases=lambda s: [DlrmCase()],
    measure=_dlrm_measure,
    report=lambda results, s: bench_dlrm.format_dlrm_table(results[0]),
)

# The report's sections, in order; ``--sections`` picks some by name.
SECTIONS: list[Section] = [DENSE, SPARSE, PROXIMAL, DLRM]


def _case_label(case: Any) -> str:
    threads = getattr(case, "threads", None)
    return case.label if threads is None else f"{case.label}, {threads} threads"


def run(sections: list[Section], settings: Settings, *, progress=sys.stderr) -> list[str]:
    """Measure every case of ``sections``; returns each section's text. One progress line per case."""
    plan = [(section, section.cases(settings)) for section in sections]
    total = sum(len(todo) for _, todo in plan)
    done, start = 0, time.perf_counter()
    reports = []
    try:
        for section, todo in plan:
            results = []
            for case in todo:
                case_start = time.perf_counter()
                results.append(section.measure(case, settings))
                done += 1
                now = time.perf_counter()
                print(f"[{done}/{total}] {section.name}: {_case_label(case)}: {now - case_start:.1f} s "
                      f"({now - start:.0f} s so far)", file=progress, flush=True)
            reports.append(section.report(results, settings))
    finally:
        set_num_threads(None)
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cadagrad bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="sizes 2^10, 2^16, 2^22 and a 10^6-row table only (about 30 s, under 2 GiB)")
    parser.add_argument("--threads", default=None,
                        help="comma-separated thread counts to sweep, e.g. 1,2,4 (default: the current count)")
    parser.add_argument("--repeats", type=int, default=None, help="samples per implementation (median kept)")
    parser.add_argument("--sections", default=",".join(s.name for s in SECTIONS),
                        help="comma-separated sections to run, of: "
                             + "; ".join(f"{s.name} ({s.help})" for s in SECTIONS))
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) NumPy reference")
    parser.add_argument("--no-many-tensors", action="store_true", help="skip the 1,000 x 1,000 case")
    parser.add_argument("--no-sparse", action="store_true", help="skip the sparse section")
    args = parser.parse_args(argv)
    # torch's sparse AdaGrad builds a sparse tensor without saying whether to check it, and warns once.
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

    by_name = {s.name: s for s in SECTIONS}
    names = [n.strip() for n in args.sections.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)} (known: {', '.join(by_name)})")
    chosen = [by_name[n] for n in names if not (args.no_sparse and n == "sparse")]
    settings = Settings(
        quick=args.quick,
        threads=[int(t) for t in args.threads.split(",")] if args.threads else [get_num_threads()],
        repeats=args.repeats or (5 if args.quick else 9),
        with_reference=not args.no_reference,
        many_tensors=not args.no_many_tensors,
    )
    info = build_info()
    torch = _torch()
    print(f"cadagrad {info['version']}, kernels {info['isa']}, openmp {info['openmp']}, "
          f"numpy {info['numpy']}, torch {torch.__version__ if torch else 'not installed'}; "
          f"medians of {settings.repeats} interleaved samples", flush=True)
    print("\n\n".join(run(chosen, settings)))
    return 0
