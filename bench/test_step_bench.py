"""pytest-benchmark cases: ``pytest bench/ --benchmark-only`` (not part of the default test run).

Each case steps the same buffers repeatedly; the figures that matter are the ratios between cases of
one run (these machines are shared and noisy).
"""

from __future__ import annotations

import numpy as np
import pytest

import cadagrad
from cadagrad import reference

SIZES = {"2e16": 1 << 16, "2e20": 1 << 20, "2e24": 1 << 24}  # 2eN: 2 to the N


def _buffers(size, dtype):
    rng = np.random.default_rng(0)
    return rng.standard_normal(size).astype(dtype), (rng.standard_normal(size) * 1e-3).astype(dtype)


@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("impl", ["cadagrad", "reference"])
def test_adagrad_step(benchmark, impl, dtype, size):
    param, grad = _buffers(SIZES[size], dtype)
    module = cadagrad if impl == "cadagrad" else reference
    opt = module.Adagrad(param, lr=0.01)
    benchmark.group = f"adagrad {np.dtype(dtype).name} {size}"
    benchmark(opt.step, grad)


@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["plain", "momentum"])
@pytest.mark.parametrize("impl", ["cadagrad", "reference"])
def test_sgd_step(benchmark, impl, momentum, size):
    param, grad = _buffers(SIZES[size], np.float32)
    module = cadagrad if impl == "cadagrad" else reference
    opt = module.SGD(param, lr=0.01, momentum=momentum)
    benchmark.group = f"sgd momentum={momentum} float32 {size}"
    benchmark(opt.step, grad)


def test_one_element_adagrad_step(benchmark):
    param, grad = _buffers(1, np.float32)
    opt = cadagrad.Adagrad(param)
    benchmark(opt.step, grad)
