"""Optimizer checkpoints as ``.npz`` files, written atomically.

Layout (format version 1), one NumPy array per key, no pickles:

==================  ===========================================================================
``format``          the string ``"cadagrad-checkpoint"``
``version``         the format version, an int (1)
``optimizer``       the class name: ``"Adagrad"``, ``"SGD"``, ``"ProximalAdagrad"`` or ``"AdagradDA"``
``step``            the step count, an int
``hyperparameters`` a JSON object (floats round-trip exactly: JSON keeps Python's shortest repr)
``state_count``     the number of state arrays; -1 when the optimizer keeps none (SGD without momentum)
``state_0000`` ...  the per-param state (AdaGrad's ``sum``, SGD's ``momentum_buffer``), in param order
``<key>_count``     only for an optimizer with a second state per param (``AdagradDA``: ``grad_sum``):
``<key>_0000`` ...  its count and arrays, as ``state_count`` and ``state_0000`` for the first
``bfloat16``        optional: a JSON list of the array keys that hold bfloat16 state (16-bit state
                    of bfloat16 params), stored as their raw 16-bit patterns (uint16), since the
                    ``.npy`` format has no bfloat16
==================  ===========================================================================

The params themselves are not in the checkpoint: they are the caller's arrays (save them beside it).
``save`` writes a temporary file in the target's directory, flushes and fsyncs it, renames it over
the target (atomic on POSIX), then fsyncs the directory, so a crash leaves either the old checkpoint or
the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FORMAT = "cadagrad-checkpoint"
VERSION = 1


def save_state_dict(
    state_dict: dict[str, Any], state_key: str | tuple[str, ...], path: str | os.PathLike
) -> None:
    """Write ``state_dict`` (from an optimizer's ``state_dict()``) to ``path`` atomically.

    Parameters
    ----------
    state_dict : dict
        What :meth:`cadagrad.Adagrad.state_dict` or :meth:`cadagrad.SGD.state_dict` returned.
    state_key : str or tuple of str
        The key of its per-param arrays: ``"sum"`` (AdaGrad) or ``"momentum_buffer"`` (SGD); or the keys,
        first one first, of an optimizer with two states per param (``("sum", "grad_sum")``).
    path : str or os.PathLike
        The file to write (``.npz``); replaced atomically if it exists.
    """
    path = os.fspath(path)
    keys = (state_key,) if isinstance(state_key, str) else tuple(state_key)
    states = state_dict[keys[0]]
    arrays = {
        "format": np.array(FORMAT),
        "version": np.array(VERSION),
        "optimizer": np.array(state_dict["optimizer"]),
        "step": np.array(state_dict["step"], dtype=np.int64),
        "hyperparameters": np.array(json.dumps(state_dict["hyperparameters"])),
        "state_count": np.array(-1 if states is None else len(states), dtype=np.int64),
    }
    for i, array in enumerate(states or []):
        arrays[f"state_{i:04d}"] = array
    for key in keys[1:]:
        more = state_dict[key]
        arrays[f"{key}_count"] = np.array(-1 if more is None else len(more), dtype=np.int64)
        for i, array in enumerate(more or []):
            arrays[f"{key}_{i:04d}"] = array
    raw = sorted(name for name, array in arrays.items() if array.dtype == _BFLOAT16)
    for name in raw:
        arrays[name] = arrays[name].view(np.uint16)
    if raw:
        arrays["bfloat16"] = np.array(json.dumps(raw))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".cadagrad-", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_state_dict(path: str | os.PathLike, state_key: str | tuple[str, ...]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_state_dict` back into a state dict.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.
    state_key : str or tuple of str
        The key (or keys) under which to return the per-param arrays (as in :func:`save_state_dict`).

    Returns
    -------
    dict
        A state dict as the optimizers' ``state_dict()`` makes it, for their ``load_state_dict()``
        (which validates it against the params).

    Raises
    ------
    ValueError
        If the file is not a complete cadagrad checkpoint of a known version (truncated, corrupted,
        another kind of file); the message names the path.
    """
    path = os.fspath(path)
    keys = (state_key,) if isinstance(state_key, str) else tuple(state_key)
    try:
        with np.load(path, allow_pickle=False) as data:
            files = set(data.files)
            if "format" not in files or str(data["format"]) != FORMAT:
                raise ValueError(f"{path}: not a cadagrad checkpoint")
            version = int(data["version"])
            if version != VERSION:
                raise ValueError(f"{path}: checkpoint format version {version}, expected {VERSION}")
            raw = set(json.loads(str(data["bfloat16"]))) if "bfloat16" in files else set()

            def read(name: str) -> np.ndarray:
                return data[name].view(_BFLOAT16) if name in raw else data[name]

            count = int(data["state_count"])
            states = None if count < 0 else [read(f"state_{i:04d}") for i in range(count)]
            more = {}
            for key in keys[1:]:
                n = int(data[f"{key}_count"])
                more[key] = None if n < 0 else [read(f"{key}_{i:04d}") for i in range(n)]
            return {
                "optimizer": str(data["optimizer"]),
                "version": 1,
                "step": int(data["step"]),
                "hyperparameters": json.loads(str(data["hyperparameters"])),
                keys[0]: states,
                **more,
            }
    except (zipfile.BadZipFile, EOFError, KeyError, OSError, json.JSONDecodeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: unreadable cadagrad checkpoint ({type(exc).__name__}: {exc})") from exc
    except ValueError as exc:
        if str(exc).startswith(path):
            raise
        raise ValueError(f"{path}: unreadable cadagrad checkpoint ({exc})") from exc
