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


def test_refcounts_and_memory_are_stable_over_100k_steps():
    ps = [np.zeros(10, dtype=np.float32) for _ in range(3)]
    gs = [np.ones(10, dtype=np.float32) for _ in range(3)]
    idx, rows = np.array([1, 3, 1]), np.ones((3, 2), dtype=np.float32)
    table = np.zeros((5, 2), dtype=np.float32)
    opt, sparse = cadagrad.Adagrad(ps), cadagrad.SGD(table, lr=0.1, momentum=0.9)
    watched = gs + ps + [idx, rows, table]

    def run(n):
        for _ in range(n):
            opt.step(gs)
            opt.step(gs, skip_if_nonfinite=True)
            sparse.step_rows(idx, rows)

    run(1000)                                    # warm up (scratch buffers reach their size)
    refs = [sys.getrefcount(a) for a in watched]
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        run(100_000)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [sys.getrefcount(a) for a in watched] == refs
    assert after - before < 4096, f"{after - before} bytes still held after 100,000 steps"
