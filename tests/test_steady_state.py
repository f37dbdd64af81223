"""A step at steady state allocates nothing on the heap and leaks no references."""

from __future__ import annotations

import sys
import tracemalloc

import numpy as np

import cadagrad


def test_a_large_step_allocates_under_4_kib():
    p = np.zeros(1 << 24, dtype=np.float32)
    g = np.full_like(p, 1e-3)
    for opt in (cadagrad.Adagrad(p), cadagrad.SGD(p, lr=0.01, momentum=0.9)):
        opt.step(g)                              # first step outside the measurement
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            opt.step(g)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4096, f"{type(opt).__name__}: {peak} bytes"


def test_steps_do_not_leak_references_to_the_grads():
    ps = [np.zeros(10, dtype=np.float32) for _ in range(3)]
    gs = [np.ones(10, dtype=np.float32) for _ in range(3)]
    opt = cadagrad.Adagrad(ps)
    before = [sys.getrefcount(g) for g in gs] + [sys.getrefcount(p) for p in ps]
    for _ in range(10_000):
        opt.step(gs)
    after = [sys.getrefcount(g) for g in gs] + [sys.getrefcount(p) for p in ps]
    assert before == after
