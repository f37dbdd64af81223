"""Argument validation shared by cadagrad.optim and cadagrad.functional.

Every error message of the package is written here, and every check runs before any buffer is
written. Messages name the argument: ``grads[3]: expected shape (128, 64), got (64, 128)``.
"""

from __future__ import annotations

import bisect
import math
import numbers
import secrets
from collections.abc import Sequence
from typing import Union

import ml_dtypes
import numpy as np

from ._kernels import data_address

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# The 16-bit params that Adagrad and SGD step with float32 state (the rules page, "16-bit params").
HALF_DTYPES = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))

# The step engine's kind code of each param dtype (bfloat16's NumPy type number is assigned at run time).
_KINDS = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, HALF_DTYPES[0]: 2, HALF_DTYPES[1]: 3}


def is_16_bit(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is float16 or bfloat16."""
    return dtype.itemsize == 2 and dtype in HALF_DTYPES


def param_kind(dtype: np.dtype) -> int:
    """The step engine's code for a param dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16."""
    return _KINDS[dtype]


def state_dtype(dtype: np.dtype, mode: str | None = None) -> np.dtype:
    """The dtype of a param's optimizer state: the param's own with ``mode="param"`` or for a
    float32/float64 param, else (a 16-bit param, by default) float32."""
    return np.dtype(np.float32) if is_16_bit(dtype) and mode != "param" else dtype


STATE_DTYPES = (None, "param")


def check_state_dtype(value: object) -> str | None:
    """``state_dtype``: None (float32 state for 16-bit params) or ``"param"`` (the param's own dtype)."""
    if not (value is None or (isinstance(value, str) and value in STATE_DTYPES)):
        raise ValueError(f"state_dtype: expected None or 'param', got {value!r}")
    return value


# The precision options of the optimizers that step 16-bit params, and their defaults (which also stand
# in for them in a state dict saved before they existed).
PRECISION_DEFAULTS = {"state_dtype": None, "stochastic_rounding": False, "seed": None}


def precision_options(
    state_dtype: object, stochastic_rounding: object, seed: object, params: list[np.ndarray]
) -> dict:
    """Validate ``state_dtype``, ``stochastic_rounding`` and ``seed`` (see :func:`check_rounding`)."""
    rounding = check_rounding(stochastic_rounding, seed, params)
    return {"state_dtype": check_state_dtype(state_dtype), **rounding}


def check_step_rounding(stochastic_rounding: object, seed: object, params: list[np.ndarray]) -> int | None:
    """The engine's seed argument for a functional step: None (to nearest), or the seed, which a
    stochastic step requires (a drawn seed could not be told to the caller)."""
    if check_flag(stochastic_rounding, "stochastic_rounding") and seed is None:
        raise ValueError("seed: expected an int from 0 to 2**64 - 1 with stochastic_rounding=True, got None")
    checked = check_rounding(stochastic_rounding, seed, params)
    return checked["seed"] if checked["stochastic_rounding"] else None


def check_rounding(stochastic_rounding: object, seed: object, params: list[np.ndarray]) -> dict:
    """``stochastic_rounding`` (a flag, for float16/bfloat16 params only) and ``seed`` (None or an int from
    0 to 2**64 - 1); a stochastic optimizer without a seed draws one here, so its state dict records it."""
    stochastic = check_flag(stochastic_rounding, "stochastic_rounding")
    if seed is not None and (
        isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64
    ):
        raise ValueError(f"seed: expected None or an int from 0 to 2**64 - 1, got {seed!r}")
    if stochastic and not any(is_16_bit(p.dtype) for p in params):
        raise ValueError(
            "stochastic_rounding: applies to float16 and bfloat16 params only, and none of the params is one"
        )
    if stochastic and seed is None:
        seed = secrets.randbits(64)
    return {"stochastic_rounding": stochastic, "seed": None if seed is None else int(seed)}

# What the optimizers and the functional steps accept as params, grads and state: one array or a sequence.
Params = Union[np.ndarray, Sequence[np.ndarray]]


def count(n: int, noun: str) -> str:
    """``1 array``, ``3 arrays``: a number and its noun, singular or plural, for messages."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _is_torch_tensor(obj: object) -> bool:
    # Recognised by its class's module, so that torch is never imported here (subclasses count too).
    return any(
        cls.__name__ == "Tensor" and cls.__module__.split(".")[0] == "torch" for cls in type(obj).__mro__
    )


def _got(obj: object) -> str:
    """``got list``; for a torch tensor, also where tensors go instead."""
    text = f"got {type(obj).__name__}"
    if _is_torch_tensor(obj):
        text += (
            " (this API takes NumPy arrays; for torch tensors use cadagrad.torch.Adagrad or "
            "cadagrad.torch.SGD, or pass tensor.numpy())"
        )
    return text


def as_array_list(obj: object, name: str) -> tuple[list[np.ndarray], bool]:
    """Split ``obj`` (one ndarray or a list/tuple of them) into a list and whether it was one array."""
    if isinstance(obj, np.ndarray):
        return [obj], True
    if isinstance(obj, (list, tuple)):
        if len(obj) == 0:
            raise ValueError(f"{name}: expected at least one array, got an empty {type(obj).__name__}")
        return list(obj), False
    raise TypeError(f"{name}: expected a numpy.ndarray or a list of them, {_got(obj)}")


def check_float_array(arr: object, name: str, *, writable: bool, half: bool = False) -> np.ndarray:
    """Check that ``arr`` is an aligned, C-contiguous, native float32/float64 ndarray (or, with
    ``half``, also float16/bfloat16)."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, {_got(arr)}")
    if half and is_16_bit(arr.dtype):
        pass
    elif arr.dtype not in FLOAT_DTYPES or not arr.dtype.isnative:
        expected = "float16, bfloat16, float32 or float64" if half else "float32 or float64"
        raise TypeError(f"{name}: expected dtype {expected} (native byte order), got {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array, got strides {arr.strides}")
    if not arr.flags.aligned:
        raise ValueError(f"{name}: expected an aligned array")
    if writable and not arr.flags.writeable:
        raise ValueError(f"{name}: expected a writable array, got a read-only one")
    return arr


def check_like(arr: object, ref: np.ndarray, name: str, ref_name: str, *, writable: bool) -> np.ndarray:
    """Check ``arr`` as a float array with the dtype and shape of ``ref``."""
    arr = check_float_array(arr, name, writable=writable, half=is_16_bit(ref.dtype))
    if arr.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (as {ref_name}), got {arr.dtype}")
    if arr.shape != ref.shape:
        raise ValueError(f"{name}: expected shape {ref.shape} (as {ref_name}), got {arr.shape}")
    return arr


def _byte_range(arr: np.ndarray) -> tuple[int, int]:
    # The address comes from C: __array_interface__ and byte_bounds both leak ~10 bytes per call in
    # NumPy 2.4 (found by tests/test_steady_state.py). Every array measured here is contiguous.
    start = data_address(arr)
    return start, start + arr.nbytes


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[0] != a[1] and b[0] != b[1]


def _first_overlap(named: list[tuple[tuple[int, int], object]]) -> tuple[object, object] | None:
    """Two keys whose byte ranges overlap (empty ranges never do), or None: one sweep by start."""
    ranges = sorted((r, name) for r, name in named if r[0] != r[1])
    reach, reach_name = None, None
    for (start, end), name in ranges:
        if reach is not None and start < reach:
            return reach_name, name
        if reach is None or end > reach:
            reach, reach_name = end, name
    return None


MAX_STEP = 2**62          # step counts beyond this are refused (the engine counts in a C integer)
MAX_THREADS = 1 << 16


def check_params(
    params: object, name: str = "params", *, half: bool = False
) -> tuple[list[np.ndarray], bool]:
    """Validate the params of an optimizer: writable float arrays (float16 and bfloat16 too with
    ``half``), no two sharing memory."""
    arrays, single = as_array_list(params, name)
    label = (lambda i: name) if single else (lambda i: f"{name}[{i}]")
    for i, arr in enumerate(arrays):
        check_float_array(arr, label(i), writable=True, half=half)
    clash = _first_overlap([(_byte_range(a), i) for i, a in enumerate(arrays)])
    if clash is not None:
        first, second = sorted(clash)
        raise ValueError(f"{label(second)}: shares memory with {label(first)}; each param must be its own buffer")
    return arrays, single


def check_states(states: object, params: list[np.ndarray], single: bool, name: str) -> list[np.ndarray]:
    """Validate caller-owned state buffers (accumulators, momentum buffers) against their params."""
    if single:
        if not isinstance(states, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray (params is one array), {_got(states)}")
        arrays = [states]
        label = lambda i: name  # noqa: E731
    else:
        if not isinstance(states, (list, tuple)):
            raise TypeError(f"{name}: expected a list of {count(len(params), 'array')}, {_got(states)}")
        if len(states) != len(params):
            raise ValueError(f"{name}: expected {count(len(params), 'array')} (one per param), got {len(states)}")
        arrays = list(states)
        label = lambda i: f"{name}[{i}]"  # noqa: E731
    param_label = "params" if single else "params[{}]"
    for i, (state, param) in enumerate(zip(arrays, params)):
        # a 16-bit param's state: its own dtype or float32 (the rules page, "16-bit state")
        check_like_or_float32(state, param, label(i), param_label.format(i), writable=True)
    every = [(_byte_range(a), f"params[{i}]" if not single else "params") for i, a in enumerate(params)]
    every += [(_byte_range(a), label(i)) for i, a in enumerate(arrays)]
    clash = _first_overlap(every)
    if clash is not None:
        raise ValueError(f"{clash[1]}: shares memory with {clash[0]}; params and state must not overlap")
    return arrays


def check_grads(grads: object, params: list[np.ndarray], single: bool, states: list[np.ndarray] | None) -> None:
    """Raise the error that describes why ``grads`` do not fit ``params`` (and their ``states``)."""
    if single:
        if not isinstance(grads, np.ndarray):
            raise TypeError(f"grads: expected a numpy.ndarray (params is one array), {_got(grads)}")
        items, label = [grads], (lambda i: "grads")
    else:
        if not isinstance(grads, (list, tuple)):
            raise TypeError(f"grads: expected a list of {count(len(params), 'array')}, {_got(grads)}")
        if len(grads) != len(params):
            raise ValueError(f"grads: expected {count(len(params), 'array')} (one per param), got {len(grads)}")
        items, label = list(grads), (lambda i: f"grads[{i}]")
    pname = (lambda i: "params") if single else (lambda i: f"params[{i}]")
    for i, (grad, param) in enumerate(zip(items, params)):
        check_float_array(param, pname(i), writable=True, half=True)
        check_grad(grad, param, label(i), pname(i))
    # What a step writes (every param and state), sorted: each grad is looked up by bisection.
    written = sorted(
        [(_byte_range(p), i, False) for i, p in enumerate(params) if p.nbytes]
        + [(_byte_range(s), i, True) for i, s in enumerate(states or []) if s.nbytes]
    )
    starts = [r[0][0] for r in written]
    for i, grad in enumerate(items):
        g = _byte_range(grad)
        j = bisect.bisect_left(starts, g[1]) - 1
        if grad.nbytes == 0 or j < 0 or written[j][0][1] <= g[0]:
            continue
        (_, owner, is_state) = written[j]
        if owner == i and not is_state and written[j][0] == g:
            continue                                  # the grad is its own param: allowed
        what = f"the optimizer state of {pname(owner)}" if is_state else pname(owner)
        raise ValueError(f"{label(i)}: shares memory with {what}, which the step writes")


def check_grad(grad: object, param: np.ndarray, name: str, param_name: str) -> np.ndarray:
    """Check a grad against its param: the param's dtype and shape; float32 also for a 16-bit param."""
    return check_like_or_float32(grad, param, name, param_name, writable=False)


def check_like_or_float32(
    arr: object, param: np.ndarray, name: str, param_name: str, *, writable: bool
) -> np.ndarray:
    """As :func:`check_like` against ``param``, but a 16-bit param's array may also be float32 (its grads,
    and with the default state dtype its state)."""
    if not (is_16_bit(param.dtype) and isinstance(arr, np.ndarray) and arr.dtype != param.dtype):
        return check_like(arr, param, name, param_name, writable=writable)
    if arr.dtype != np.float32:
        raise TypeError(f"{name}: expected dtype {param.dtype} (as {param_name}) or float32, got {arr.dtype}")
    check_float_array(arr, name, writable=writable)
    if arr.shape != param.shape:
        raise ValueError(f"{name}: expected shape {param.shape} (as {param_name}), got {arr.shape}")
    return arr


def explain_changed(
    params: list[np.ndarray], states: list[np.ndarray] | None, layout: Sequence[tuple[int, np.dtype]]
) -> None:
    """Raise the error for params or state that changed (resized, retyped, made read-only) after set-up."""
    for i, (param, (size, dtype)) in enumerate(zip(params, layout)):
        check_float_array(param, f"params[{i}]", writable=True, half=True)
        if param.size != size:
            raise ValueError(f"params[{i}]: was resized from {size} to {param.size} elements after set-up")
        if param.dtype != dtype:
            raise TypeError(f"params[{i}]: its dtype changed from {dtype} to {param.dtype} after set-up")
        if states is not None:
            check_float_array(states[i], f"state[{i}]", writable=True, half=True)


def check_number(value: object, name: str, *, minimum: float | None = 0.0) -> float:
    """A finite real hyperparameter, at least ``minimum`` when given; returned as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name}: expected a finite number, got an integer too large for a float") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected a value >= {minimum}, got {value}")
    return value


def check_flag(value: object, name: str) -> bool:
    """A boolean option."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_num_threads(value: object, name: str = "num_threads") -> int:
    """``None`` (0 for the engine: use the global setting) or a positive int."""
    if value is None:
        return 0
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected None or a positive int, got {type(value).__name__}")
    if not 1 <= value <= MAX_THREADS:
        raise ValueError(f"{name}: expected None or an int from 1 to {MAX_THREADS}, got {value}")
    return int(value)


def check_step(value: object, name: str = "step") -> int:
    """A 1-based step count."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int >= 1, got {type(value).__name__}")
    if not 1 <= value <= MAX_STEP:
        raise ValueError(f"{name}: expected an int from 1 to 2**62, got {value}")
    return int(value)


def check_nesterov(nesterov: bool, momentum: float, dampening: float) -> None:
    """Nesterov momentum needs momentum > 0 and no dampening (as PyTorch)."""
    if nesterov and (momentum <= 0.0 or dampening != 0.0):
        raise ValueError(
            f"nesterov: requires momentum > 0 and dampening == 0, got momentum={momentum}, dampening={dampening}"
        )


# Defaults of the hyperparameters (PyTorch's), used by cadagrad.optim and cadagrad.functional.
# cadagrad.reference repeats them literally (it imports NumPy only); a test holds the two together.
ADAGRAD_LR = 0.01
ADAGRAD_EPS = 1e-10


def adagrad_hyperparameters(
    *, lr, lr_decay, weight_decay, initial_accumulator_value, eps, eps_inside_sqrt, maximize, rowwise=False
) -> dict:
    """Validate AdaGrad's hyperparameters; returns them as plain floats and bools."""
    return {
        "lr": check_number(lr, "lr"),
        "lr_decay": check_number(lr_decay, "lr_decay"),
        "weight_decay": check_number(weight_decay, "weight_decay"),
        "initial_accumulator_value": check_number(initial_accumulator_value, "initial_accumulator_value"),
        "eps": check_number(eps, "eps"),
        "eps_inside_sqrt": check_flag(eps_inside_sqrt, "eps_inside_sqrt"),
        "maximize": check_flag(maximize, "maximize"),
        "rowwise": check_flag(rowwise, "rowwise"),
    }


def sgd_hyperparameters(*, lr, momentum, dampening, nesterov, weight_decay, maximize) -> dict:
    """Validate SGD's hyperparameters; returns them as plain floats and bools."""
    checked = {
        "lr": check_number(lr, "lr"),
        "momentum": check_number(momentum, "momentum"),
        "dampening": check_number(dampening, "dampening", minimum=None),
        "nesterov": check_flag(nesterov, "nesterov"),
        "weight_decay": check_number(weight_decay, "weight_decay"),
        "maximize": check_flag(maximize, "maximize"),
    }
    check_nesterov(checked["nesterov"], checked["momentum"], checked["dampening"])
    return checked


# TensorFlow's default for both proximal optimizers (its initial_accumulator_value and AdagradDA's
# initial_gradient_squared_accumulator_value); cadagrad.reference repeats it literally.
PROXIMAL_INITIAL_ACCUMULATOR = 0.1


def check_positive(value: object, name: str) -> float:
    """A finite real hyperparameter that must be > 0; returned as a float."""
    value = check_number(value, name, minimum=None)
    if not value > 0.0:
        raise ValueError(f"{name}: expected a value > 0, got {value}")
    return value


def proximal_hyperparameters(*, lr, l1, l2, initial_accumulator_value) -> dict:
    """Validate the hyperparameters of ProximalAdagrad and AdagradDA (TensorFlow's limits)."""
    return {
        "lr": check_positive(lr, "lr"),
        "l1": check_number(l1, "l1"),
        "l2": check_number(l2, "l2"),
        "initial_accumulator_value": check_positive(initial_accumulator_value, "initial_accumulator_value"),
    }


def check_second_states(
    states2: object,
    states: list[np.ndarray],
    params: list[np.ndarray],
    single: bool,
    name: str,
    first_name: str,
) -> list[np.ndarray]:
    """Validate a second list of caller-owned state buffers: as :func:`check_states`, and disjoint from
    the first list (named ``first_name``)."""
    arrays = check_states(states2, params, single, name)
    label = (lambda n, i: n) if single else (lambda n, i: f"{n}[{i}]")
    every = [(_byte_range(a), label(first_name, i)) for i, a in enumerate(states)]
    every += [(_byte_range(a), label(name, i)) for i, a in enumerate(arrays)]
    clash = _first_overlap(every)
    if clash is not None:
        raise ValueError(f"{clash[1]}: shares memory with {clash[0]}; the two states must not overlap")
    return arrays


def check_state_dict(
    state_dict: object,
    *,
    optimizer: str,
    state_key: str | Sequence[str],
    hyperparameter_names: Sequence[str],
    optional_names: Sequence[str] = (),
) -> dict:
    """Check the envelope of a state dict (everything but the arrays, which the optimizer checks).

    ``state_key`` names the per-param arrays' key, or keys for an optimizer with two states per param.
    Of ``hyperparameter_names``, those in ``optional_names`` may be missing.
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
    expected = {"optimizer", "version", "step", "hyperparameters"}
    expected |= {state_key} if isinstance(state_key, str) else set(state_key)
    if set(state_dict) != expected:
        raise ValueError(f"state_dict: expected the keys {sorted(expected)}, got {sorted(state_dict)}")
    if state_dict["optimizer"] != optimizer:
        raise ValueError(f"state_dict['optimizer']: expected {optimizer!r}, got {state_dict['optimizer']!r}")
    if state_dict["version"] != STATE_DICT_VERSION:
        raise ValueError(f"state_dict['version']: expected {STATE_DICT_VERSION}, got {state_dict['version']!r}")
    step = state_dict["step"]
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral) or not 0 <= step <= MAX_STEP:
        raise ValueError(f"state_dict['step']: expected an int from 0 to 2**62, got {step!r}")
    hyper = state_dict["hyperparameters"]
    if not isinstance(hyper, dict) or not (
        set(hyperparameter_names) - set(optional_names) <= set(hyper) <= set(hyperparameter_names)
    ):
        got = sorted(hyper) if isinstance(hyper, dict) else type(hyper).__name__
        raise ValueError(f"state_dict['hyperparameters']: expected the keys {sorted(hyperparameter_names)}, got {got}")
    return state_dict


STATE_DICT_VERSION = 1


def converted_state(array: object, dtype: np.dtype) -> object:
    """A saved state array cast to ``dtype`` for ``load_state_dict(..., convert_state=True)``: float32 and
    16-bit arrays only (widened exactly, or rounded to nearest even); anything else is left to the checks."""
    if isinstance(array, np.ndarray) and array.dtype != dtype and (
        array.dtype == np.float32 or is_16_bit(array.dtype)
    ) and (dtype == np.float32 or is_16_bit(dtype)):
        return array.astype(dtype)
    return array


def check_state_array(
    array: object, shape: tuple[int, ...], dtype: np.dtype, name: str, owner: str, mode: str | None
) -> None:
    """A saved state array: a float array of ``shape`` and ``dtype`` (the state dtype of ``owner``)."""
    array = check_float_array(array, name, writable=False, half=True)
    if array.dtype != dtype:
        hint = ""
        if is_16_bit(array.dtype) or (array.dtype == np.float32 and is_16_bit(dtype)):
            hint = (f" (state_dtype={mode!r}); load_state_dict(..., convert_state=True) converts a state "
                    "saved with the other state_dtype")
        raise TypeError(f"{name}: expected dtype {dtype} (as {owner}), got {array.dtype}{hint}")
    if array.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} (as {owner}), got {array.shape}")


def check_rowwise_params(params: list[np.ndarray], single: bool) -> None:
    """Row-wise AdaGrad keeps one accumulator per row: every param must be 2-D with columns."""
    for i, p in enumerate(params):
        if p.ndim != 2 or p.shape[1] == 0:
            name = "params" if single else f"params[{i}]"
            raise ValueError(f"{name}: rowwise=True needs 2-D params (rows, columns >= 1), got shape {p.shape}")


def check_rows(
    indices: object, rows: object, param: object, params: list[np.ndarray], states: list[np.ndarray] | None
) -> int:
    """Validate a sparse-rows step; returns the index of the param it updates."""
    if isinstance(param, (bool, np.bool_)) or not isinstance(param, numbers.Integral):
        raise TypeError(f"param: expected an int (which param), got {type(param).__name__}")
    if not 0 <= param < len(params):
        raise ValueError(f"param: expected 0 <= param < {len(params)}, got {param}")
    i = int(param)
    target = params[i]
    if target.ndim != 2:
        raise ValueError(f"params[{i}]: sparse rows need a 2-D param (rows, columns), got shape {target.shape}")
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"indices: expected a numpy.ndarray of int32 or int64, {_got(indices)}")
    if indices.dtype not in (np.dtype(np.int32), np.dtype(np.int64)) or not indices.dtype.isnative:
        raise TypeError(f"indices: expected dtype int32 or int64, got {indices.dtype}")
    if indices.ndim != 1:
        raise ValueError(f"indices: expected a 1-D array, got shape {indices.shape}")
    if not indices.flags.c_contiguous or not indices.flags.aligned:
        raise ValueError("indices: expected a contiguous, aligned array")
    half = is_16_bit(target.dtype)
    check_float_array(rows, "rows", writable=False, half=half)
    if half and rows.dtype not in (target.dtype, np.dtype(np.float32)):
        raise TypeError(f"rows: expected dtype {target.dtype} (as params[{i}]) or float32, got {rows.dtype}")
    if not half and rows.dtype != target.dtype:
        raise TypeError(f"rows: expected dtype {target.dtype} (as params[{i}]), got {rows.dtype}")
    expected = (indices.shape[0], target.shape[1])
    if rows.shape != expected:
        raise ValueError(f"rows: expected shape {expected} (one row of params[{i}] per index), got {rows.shape}")
    rows_range = _byte_range(rows)
    if _overlaps(rows_range, _byte_range(target)) or (states is not None and _overlaps(rows_range, _byte_range(states[i]))):
        raise ValueError(f"rows: shares memory with params[{i}] or its optimizer state")
    return i


def index_out_of_range(indices: np.ndarray, position: int, param: int, nrows: int) -> ValueError:
    """The error for ``indices[position]`` outside ``[0, nrows)``."""
    return ValueError(
        f"indices[{position}]: {int(indices[position])} is out of range for params[{param}] "
        f"with {count(nrows, 'row')}"
    )
