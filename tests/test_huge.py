"""Steps over more than 2^31 elements index with 64-bit offsets.

The dense step holds one 8 GiB buffer: it is marked ``bigmem`` (run with ``--bigmem``; skipped, with the
reason, below 9 GiB of available memory). The sparse steps map an 8.7 GB table of zeros lazily and touch a
few rows (under 100 MB resident): they run by default wherever the system lets a process map that much.
"""

from __future__ import annotations

import numpy as np
import pytest

import cadagrad
import cadagrad.reference

GIB = 1 << 30


def available_memory() -> int:
    """MemAvailable from /proc/meminfo, or 0 where there is none (then the test is skipped)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@pytest.mark.bigmem(reason="one 8 GiB buffer")
@pytest.mark.skipif(available_memory() < 9 * GIB, reason="needs 9 GiB of available memory (one 8 GiB buffer)")
def test_a_dense_step_past_2_31_elements_updates_the_last_elements():
    n = (1 << 31) + 64
    p = np.zeros(n, dtype=np.float32)
    rng = np.random.default_rng(0)
    head, tail = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    p[:64], p[-64:] = head, tail
    # The grad is the param itself (a documented, well-defined case), so one 8 GiB buffer suffices:
    # p = p - 0.5 * p, over every element, the ones past index 2^31 included.
    assert cadagrad.sgd_step(p, p, step=1, lr=0.5) is True
    np.testing.assert_array_equal(p[:64], head - np.float32(0.5) * head)
    np.testing.assert_array_equal(p[-64:], tail - np.float32(0.5) * tail)
    assert not p[1 << 30 : (1 << 30) + 1024].any()


@pytest.mark.parametrize("kind", ["adagrad-rowwise", "sgd"])
def test_sparse_rows_past_2_31_elements_update_the_right_rows(kind):
    """A 2^21 x 1,040 float32 table (8.7 GB of lazily mapped zeros, so only touched rows take memory):
    rows past element 2^31 are updated where they are, and their neighbours are not touched. Row-wise
    AdaGrad and plain SGD keep no per-element state, so the test needs little resident memory."""
    nrows, width = 1 << 21, 1040
    try:
        table = np.zeros((nrows, width), dtype=np.float32)
    except MemoryError:
        pytest.skip("the system refuses to map an 8.7 GB table, even lazily (it would use under 100 MB)")
    first_past = ((1 << 31) + width - 1) // width          # the first row that starts past 2^31
    idx = np.array([nrows - 1, first_past, nrows - 1, 5], dtype=np.int64)
    rows = np.random.default_rng(0).standard_normal((4, width)).astype(np.float32)
    small = np.zeros((4, width), dtype=np.float32)        # the same rows, stepped on a small table
    if kind == "sgd":
        opt, ref = cadagrad.SGD(table, lr=0.1), cadagrad.reference.SGD(small, lr=0.1)
    else:
        opt = cadagrad.Adagrad(table, lr=0.1, rowwise=True)
        ref = cadagrad.reference.Adagrad(small, lr=0.1, rowwise=True)
    opt.step_rows(idx, rows)
    ref.step_rows(np.array([3, 1, 3, 0]), rows)
    np.testing.assert_array_equal(table[nrows - 1], small[3])
    np.testing.assert_array_equal(table[first_past], small[1])
    np.testing.assert_array_equal(table[5], small[0])
    if kind != "sgd":
        assert opt.sums[0][nrows - 1] == ref.sums[0][3] and opt.sums[0][first_past] == ref.sums[0][1]
    assert not table[first_past - 1].any() and not table[first_past + 1].any() and not table[nrows - 2].any()
