"""save()/load(): round trips, atomic replacement under SIGKILL, clear errors on damaged files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import assert_bitwise_equal, random_array

import cadagrad


def _trained(rng, make, steps=3):
    params = [random_array(rng, (40,), np.float32), random_array(rng, (3, 5), np.float64)]
    opt = make([p.copy() for p in params])
    for _ in range(steps):
        opt.step([random_array(rng, p.shape, p.dtype) for p in params])
    return opt


MAKERS = [
    lambda ps: cadagrad.Adagrad(ps, lr=0.1, lr_decay=1 / 3, eps_inside_sqrt=True),
    lambda ps: cadagrad.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1),
    lambda ps: cadagrad.SGD(ps, lr=0.1),
]


@pytest.mark.parametrize("make", MAKERS, ids=["adagrad", "sgd-momentum", "sgd"])
def test_save_then_load_restores_everything(make, rng, tmp_path):
    opt = _trained(rng, make)
    opt.save(tmp_path / "ckpt.npz")
    fresh = make([p.copy() for p in opt.params])
    fresh.load(tmp_path / "ckpt.npz")
    saved, loaded = opt.state_dict(), fresh.state_dict()
    assert loaded["step"] == saved["step"] == 3
    assert loaded["hyperparameters"] == saved["hyperparameters"]     # floats round-trip exactly
    key = "sum" if "sum" in saved else "momentum_buffer"
    if saved[key] is None:
        assert loaded[key] is None
    else:
        for a, b in zip(saved[key], loaded[key]):
            assert_bitwise_equal(a, b)
    assert os.listdir(tmp_path) == ["ckpt.npz"]                       # no temporary file left


def test_damaged_files_raise_a_clear_error_and_change_nothing(rng, tmp_path):
    opt = _trained(rng, MAKERS[0])
    path = tmp_path / "ckpt.npz"
    opt.save(path)
    blob = path.read_bytes()
    target = _trained(rng, MAKERS[0], steps=1)
    before = target.state_dict()
    damaged = {
        "truncated-half": blob[: len(blob) // 2],
        "truncated-tail": blob[:-10],
        "empty": b"",
        "flipped-bytes": blob[:200] + bytes(b ^ 0xFF for b in blob[200:260]) + blob[260:],
        "not-npz": b"hello, I am not a checkpoint",
    }
    for name, data in damaged.items():
        bad = tmp_path / f"{name}.npz"
        bad.write_bytes(data)
        with pytest.raises(ValueError, match=str(bad).replace("\\", "\\\\")):
            target.load(bad)
        after = target.state_dict()
        assert after["step"] == before["step"], name
        for a, b in zip(after["sum"], before["sum"]):
            assert_bitwise_equal(a, b, name)


def test_a_checkpoint_of_another_npz_or_optimizer_is_refused(rng, tmp_path):
    np.savez(tmp_path / "other.npz", x=np.ones(3))
    opt = _trained(rng, MAKERS[0])
    with pytest.raises(ValueError, match="not a cadagrad checkpoint"):
        opt.load(tmp_path / "other.npz")
    _trained(rng, MAKERS[1]).save(tmp_path / "sgd.npz")
    with pytest.raises(ValueError, match="optimizer"):
        opt.load(tmp_path / "sgd.npz")


CHILD = textwrap.dedent(
    """
    import sys, numpy as np, cadagrad
    n, path = int(sys.argv[1]), sys.argv[2]
    opt = cadagrad.Adagrad(np.zeros(n, dtype=np.float32))
    opt.step(np.full(n, 0.25, dtype=np.float32))
    print("ready", flush=True)
    while True:
        opt.save(path)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_save_killed_midway_leaves_the_previous_checkpoint_loadable(tmp_path):
    n = 1 << 23                          # 32 MiB of state: a save takes long enough to be interrupted
    path = tmp_path / "ckpt.npz"
    opt = cadagrad.Adagrad(np.zeros(n, dtype=np.float32))
    opt.save(path)                       # the previous checkpoint: step 0
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(n), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not any(name.endswith(".npz.tmp") for name in os.listdir(tmp_path)):
            assert time.monotonic() < deadline, "the child never started writing"
            time.sleep(0.0005)
        child.send_signal(signal.SIGKILL)  # while a temporary file is being written
    finally:
        child.kill()
        child.wait(timeout=30)
    restored = cadagrad.Adagrad(np.zeros(n, dtype=np.float32))
    restored.load(path)                  # the old checkpoint or a complete new one, never a torn file
    assert restored.step_count in (0, 1)
    expected = 0.0 if restored.step_count == 0 else 0.0625
    assert restored.sums[0][0] == restored.sums[0][-1] == expected
