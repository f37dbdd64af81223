"""Two worked examples: AdaGrad's accumulator on one parameter fed gradients 10, 9, 11, 10, 10, and SGD
against AdaGrad on the ill-conditioned quadratic 0.1 * x1**2 + 5 * x2**2, each against plain NumPy;
and a short run of examples/dlrm_adagrad.py.

examples/ddp_adagrad.py needs torchrun and two processes: CI runs it, plain and with --zero, under a time
limit through tools/run_ddp_example.sh (tests/test_distributed.py covers the same DDP and ZeRO paths).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cadagrad


def test_worked_accumulator_table_effective_rates():
    """Gradients 10, 9, 11, 10, 10 with alpha = 0.1, eps = 1e-8 (outside the root).

    The worked table by hand gives effective rates 0.01, 0.0075, 0.0057, ..., 0.0045, rounding sqrt(G)
    before dividing, so those figures are compared to one unit of their last printed digit (1e-4).
    """
    w = np.zeros(1, dtype=np.float64)
    opt = cadagrad.Adagrad(w, lr=0.1, eps=1e-8)
    accumulators, rates = [], []
    for g in (10.0, 9.0, 11.0, 10.0, 10.0):
        opt.step(np.array([g]))
        G = opt.sums[0][0]
        accumulators.append(G)
        rates.append(0.1 / (np.sqrt(G) + 1e-8))
    assert accumulators == [100.0, 181.0, 302.0, 402.0, 502.0]
    by_hand = {0: 0.01, 1: 0.0075, 2: 0.0057, 4: 0.0045}
    for step, printed in by_hand.items():
        assert rates[step] == pytest.approx(printed, abs=1e-4), step
    assert all(a > b for a, b in zip(rates, rates[1:]))        # the rate only ever shrinks


def quadratic_grad(x: np.ndarray) -> np.ndarray:
    """Gradient of f(x) = 0.1 * x1**2 + 5 * x2**2."""
    return np.array([0.2 * x[0], 10.0 * x[1]])


def test_quadratic_sgd_matches_numpy_expression():
    x_numpy = np.array([9.0, -3.0])
    x = x_numpy.copy()
    opt = cadagrad.SGD(x, lr=0.05)
    for _ in range(100):
        opt.step(quadratic_grad(x))
        x_numpy = x_numpy - 0.05 * quadratic_grad(x_numpy)
    assert x.tobytes() == x_numpy.tobytes()
    # SGD crawls along the flat axis: x1 has only shrunk by (1 - 0.05 * 0.2) ** 100.
    assert x[0] == pytest.approx(9.0 * 0.99**100, rel=1e-12)


def test_quadratic_adagrad_eps_inside_matches_numpy_expression():
    """AdaGrad written in NumPy with eps inside the root: G += g*g; x -= eta * g / sqrt(G + 1e-8) (eps inside the root).

    ``eta * g / np.sqrt(...)`` evaluates as ``(eta * g) / sqrt(...)``: the kernel's order, so the
    comparison is exact.
    """
    eta, eps = 0.5, 1e-8
    x_numpy, G = np.array([9.0, -3.0]), np.zeros(2)
    x = x_numpy.copy()
    opt = cadagrad.Adagrad(x, lr=eta, eps=eps, eps_inside_sqrt=True)
    for _ in range(100):
        opt.step(quadratic_grad(x))
        g = quadratic_grad(x_numpy)
        G += g * g
        x_numpy = x_numpy - eta * g / np.sqrt(G + eps)
    assert x.tobytes() == x_numpy.tobytes()
    assert opt.sums[0].tobytes() == G.tobytes()
    f = 0.1 * x[0] ** 2 + 5 * x[1] ** 2
    f_sgd_x1 = 0.1 * (9.0 * 0.99**100) ** 2
    assert f < f_sgd_x1     # AdaGrad got further down the valley than SGD's flat-axis term alone


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def loss_columns(output: str) -> dict[str, list[float]]:
    """The dlrm example's loss curve: column name -> its values, step after step."""
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["step"])
    names = ["planted"] + re.split(r"\s{2,}", lines[header].strip())[2:]
    rows = [line.split() for line in lines[header + 1:] if re.fullmatch(r"\s*\d+(\s+\d+\.\d+)+", line)]
    return {name: [float(row[i + 1]) for row in rows] for i, name in enumerate(names)}


def test_dlrm_example_trains_with_both_optimizers_and_the_loss_decreases():
    pytest.importorskip("torch", reason="the dlrm example trains a torch model")
    script = EXAMPLES / "dlrm_adagrad.py"
    if not script.exists():
        pytest.skip("examples/ is not beside this copy of the tests")
    package_root = Path(cadagrad.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(package_root),
                                                                     os.environ.get("PYTHONPATH")]))}
    args = ["--optimizer", "both", "--tables", "2", "--rows", "500", "--batch", "64", "--steps", "40",
            "--every", "10", "--threads", "1"]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    curves = loss_columns(done.stdout)
    assert list(curves) == ["planted", "torch.optim.Adagrad", "cadagrad.torch.Adagrad"], done.stdout
    planted, theirs, ours = curves.values()
    assert len(theirs) == len(ours) == 4
    assert theirs[-1] < theirs[0] and ours[-1] < ours[0], done.stdout
    assert max(abs(a - b) for a, b in zip(theirs, ours)) < 1e-2, done.stdout   # same model, same data
    assert min(planted) > 0
