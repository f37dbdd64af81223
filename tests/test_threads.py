"""Steps from several Python threads, and steps in a forked child (GNU OpenMP's fork hang)."""

from __future__ import annotations

import multiprocessing
import sys
import threading

import numpy as np
import pytest
from conftest import assert_bitwise_equal, random_array

import cadagrad
from cadagrad import reference

BIG = 200_000   # above the parallel cut-off, so steps open OpenMP regions


def test_one_optimizer_stepped_from_two_threads_equals_serial_steps(rng):
    """Concurrent steps on one optimizer are serialized: with a grad that is the same array for every
    step, the outcome is that of 2 x 20 serial steps, whatever the interleaving."""
    param = random_array(rng, (BIG,), np.float32)
    grad = random_array(rng, (BIG,), np.float32)
    shared = param.copy()
    opt = cadagrad.Adagrad(shared, lr=0.01)
    barrier = threading.Barrier(2)

    def worker():
        barrier.wait()
        for _ in range(20):
            opt.step(grad)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ref = reference.Adagrad(param.copy(), lr=0.01)
    for _ in range(40):
        ref.step(grad)
    assert opt.step_count == 40
    assert_bitwise_equal(shared, ref.params[0])
    assert_bitwise_equal(opt.sums[0], ref.sums[0])


def test_many_optimizers_in_many_threads_give_the_serial_results(rng):
    count = 6
    params = [random_array(rng, (BIG // 2,), np.float64) for _ in range(count)]
    grads = [[random_array(rng, (BIG // 2,), np.float64) for _ in range(5)] for _ in range(count)]
    concurrent = [p.copy() for p in params]

    def worker(i):
        opt = cadagrad.SGD(concurrent[i], lr=0.01, momentum=0.9)
        for g in grads[i]:
            opt.step(g)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(count):
        ref = reference.SGD(params[i].copy(), lr=0.01, momentum=0.9)
        for g in grads[i]:
            ref.step(g)
        assert_bitwise_equal(concurrent[i], ref.params[0], f"optimizer {i}")


def _child_steps(queue):
    p = np.ones(BIG, dtype=np.float32)
    opt = cadagrad.Adagrad(p, lr=0.1)
    for _ in range(3):
        opt.step(np.full(BIG, 0.5, dtype=np.float32))
    queue.put((float(p[0]), float(p[-1]), cadagrad.get_num_threads()))


@pytest.mark.skipif(sys.platform == "win32" or "fork" not in multiprocessing.get_all_start_methods(),
                    reason="no fork on this platform")
def test_forked_child_steps_after_parent_used_threads():
    p = np.ones(BIG * 4, dtype=np.float32)
    opt = cadagrad.Adagrad(p, lr=0.1, num_threads=2)
    opt.step(np.full(p.size, 0.5, dtype=np.float32))    # the parent enters a parallel region
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_steps, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung in its step")
    assert child.exitcode == 0
    first, last, child_threads = queue.get(timeout=5)
    expected = reference.Adagrad(np.ones(1, np.float32), lr=0.1)
    for _ in range(3):
        expected.step(np.full(1, 0.5, dtype=np.float32))
    assert first == last == float(expected.params[0][0])
    assert child_threads == 1                            # the child runs serially, by design
