"""Typical use of cadagrad's public API, type-checked by mypy against the installed wheel.

tools/check_wheel.sh runs ``mypy --strict`` on this file with the wheel installed in a fresh venv (outside
the source tree), so it proves that py.typed and the stubs ship and that the public signatures type-check
in user code; it then runs the file, so the calls are real ones. Not a test of the numbers: the suite is.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

import numpy as np
import numpy.typing as npt

import cadagrad

if sys.version_info >= (3, 11):
    from typing import assert_type
else:  # pragma: no cover - mypy follows the branch of its target version
    from typing_extensions import assert_type


def dense_adagrad() -> float:
    w = np.zeros((100, 8), dtype=np.float32)
    b = np.zeros(8, dtype=np.float32)
    opt = cadagrad.Adagrad([w, b], lr=0.05, eps=1e-10, num_threads=None)
    rng = np.random.default_rng(0)
    for _ in range(3):
        grads: list[npt.NDArray[np.float32]] = [
            rng.standard_normal(w.shape, dtype=np.float32),
            rng.standard_normal(b.shape, dtype=np.float32),
        ]
        taken = opt.step(grads, skip_if_nonfinite=True)
        assert_type(taken, bool)
    assert_type(opt.step_count, int)
    sums: list[np.ndarray] = opt.sums
    state: dict[str, Any] = opt.state_dict()
    opt.load_state_dict(state)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "opt.npz")
        opt.save(path)
        opt.load(path)
    return float(w.sum() + b.sum() + sum(float(s.sum()) for s in sums))


def sparse_rows() -> None:
    table = np.zeros((1000, 4), dtype=np.float32)
    rowwise = cadagrad.Adagrad(table, lr=0.1, rowwise=True)
    ids: npt.NDArray[np.int64] = np.array([3, 7, 3], dtype=np.int64)
    rows = np.ones((3, 4), dtype=np.float32)
    rowwise.step_rows(ids, rows, param=0, assume_unique=False)
    sgd = cadagrad.SGD(np.zeros((10, 4)), lr=0.01, momentum=0.9, nesterov=True)
    sgd.step_rows(np.array([1, 2]), np.ones((2, 4)))
    buffers: list[np.ndarray] | None = sgd.momentum_buffers
    assert buffers is not None


def functional_steps() -> bool:
    flat, (w, b) = cadagrad.flat_arrays([(16, 4), 4], np.float64, fill=0.5)
    assert_type(flat, np.ndarray)
    grads = [np.full_like(w, 0.1), np.full_like(b, 0.1)]
    sums = [np.zeros_like(w), np.zeros_like(b)]
    ok = cadagrad.adagrad_step([w, b], grads, sums, step=1, lr=0.1, weight_decay=0.0)
    ok &= cadagrad.sgd_step(w, grads[0], step=1, lr=0.1, maximize=False)
    return ok


def threads_and_build() -> str:
    cadagrad.set_num_threads(2)
    cadagrad.set_num_threads(None)
    assert_type(cadagrad.get_num_threads(), int)
    info = cadagrad.build_info()
    openmp = bool(info["openmp"])
    version: str = cadagrad.__version__
    return f"cadagrad {version}: openmp={openmp}, isa={info['isa']}"


if __name__ == "__main__":
    print(dense_adagrad())
    sparse_rows()
    print(functional_steps())
    print(threads_and_build())
