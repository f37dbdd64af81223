"""pytest-benchmark cases: ``pytest bench/ --benchmark-only`` (never part of the default test run).

The same cases as ``python -m cadagrad bench`` (built by cadagrad.bench, so both measure the same
thing): each group holds cadagrad, the ceiling kernel with the same memory traffic, the NumPy reference
and torch's fused/foreach optimizers when torch is installed; a float16/bfloat16 group also the same
rule on float32 buffers of its size. Compare within a group: these machines are
shared and noisy, so ratios of one run are what count.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import cadagrad
from cadagrad import bench

# "float32": for a float16/bfloat16 case, the same rule on float32 buffers of the same size.
IMPLEMENTATIONS = ["cadagrad", "checked", "ceiling", "float32", "reference", "torch fused", "torch foreach"]
DENSE = [
    bench.Case(algorithm, np.dtype(dtype), 1, size, cadagrad.get_num_threads())
    for algorithm, dtype, size in itertools.product(
        bench.FLOAT_ALGORITHMS, (np.float32, np.float64), bench.QUICK_SIZES
    )
] + [
    bench.Case(algorithm, dtype, 1, size, cadagrad.get_num_threads())
    for algorithm, dtype, size in itertools.product(
        bench.HALF_ALGORITHMS, bench.HALF_DTYPES, bench.QUICK_SIZES
    )
] + [
    bench.Case(algorithm, np.dtype(np.float32), *bench.MANY_TENSORS, cadagrad.get_num_threads())
    for algorithm in bench.FLOAT_ALGORITHMS
]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", DENSE, ids=[c.label.replace(" ", "-") for c in DENSE])
def test_dense_step(benchmark, case, impl):
    steps = bench.implementations(case, with_reference=impl == "reference")
    if impl not in steps:
        pytest.skip(f"{impl} is not available here")
    benchmark.group = case.label
    benchmark.extra_info["bytes_per_step"] = case.bytes_per_step()
    benchmark.extra_info["bytes_per_element"] = case.bytes_per_element()
    benchmark(steps[impl])


@pytest.mark.parametrize("impl", ["cadagrad", "reference", "torch sparse"])
@pytest.mark.parametrize("nrows", bench.SPARSE_ROWS)
def test_sparse_rows_step(benchmark, nrows, impl):
    steps, nbatches = bench.sparse_implementations(nrows, with_reference=impl == "reference")
    if impl not in steps:
        pytest.skip(f"{impl} is not available here")
    batch = itertools.cycle(range(nbatches))
    benchmark.group = f"sparse rows V={nrows:.0e}"
    benchmark(lambda: steps[impl](next(batch)))


def test_one_element_step(benchmark):
    param, grad = np.zeros(1, dtype=np.float32), np.ones(1, dtype=np.float32)
    opt = cadagrad.Adagrad(param)
    benchmark.group = "per-call overhead"
    benchmark(opt.step, grad)
