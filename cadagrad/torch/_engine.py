"""What cadagrad.torch's optimizers share: tensors to engine arrays, step plans and cohorts, checks, and
the base class that runs a step."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from typing import Any, Union

import ml_dtypes
import numpy as np
import torch
from torch.optim import Optimizer

from .. import _checks
from .._kernels import StepEngine, data_address
from .._state import State, new_state

ParamsT = Union[Iterable[torch.Tensor], Iterable[dict[str, Any]], Iterable[tuple[str, torch.Tensor]]]

_FLOAT_DTYPES = (torch.float32, torch.float64)
# The 16-bit params that Adagrad and SGD step with float32 state (the rules page, "16-bit params").
HALF_DTYPES = (torch.float16, torch.bfloat16)
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def numpy_view(t: torch.Tensor) -> np.ndarray:
    """``t``'s memory as an ndarray, no copy; a bfloat16 tensor (NumPy has none) through int16, as
    ``ml_dtypes.bfloat16``. Raises RuntimeError or TypeError where ``t.numpy()`` would."""
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().view(_BFLOAT16)
    return t.numpy()


def state_dtype(p: torch.Tensor, mode: str | None = None) -> torch.dtype:
    """The dtype of a param's optimizer state: float32 for a float16/bfloat16 param, or the param's own
    dtype with ``mode="param"`` (a group's ``state_dtype``); the param's for a float32/float64 param.

    The one place the adapters decide it (``cadagrad._checks.state_dtype`` decides it for the buffers
    themselves; a check at every engine build holds the two together)."""
    return torch.float32 if p.dtype in HALF_DTYPES and mode != "param" else p.dtype


def converted_state(found: torch.Tensor, p: torch.Tensor, name: str, mode: str | None = None,
                    convert: bool = False) -> torch.Tensor:
    """A state tensor found in ``state`` (loaded, or put there from outside) in the dtype of ``p``'s
    state in ``mode`` (a group's ``state_dtype``), by the documented rule (the PyTorch guide, "16-bit
    params"). For a float16/bfloat16 param with float32 state (``mode=None``): float32 is taken as it is
    and float16 or bfloat16 (torch.optim's state for such a param) is widened to float32, which is exact.
    With ``mode="param"``: the param's dtype is taken as it is; float32 (or the other 16-bit dtype) is
    rounded to the param's dtype, to nearest even, only with ``convert`` (a lossy step the caller asks
    for), else refused. Any other dtype (float64 say) is refused. For a float32/float64 param: cast to
    the param's dtype, as ``copy_`` (and torch.optim's ``load_state_dict``) would."""
    if p.dtype in HALF_DTYPES:
        if mode == "param":
            if found.dtype is p.dtype:
                return found.detach()
            if found.dtype in (torch.float32, *HALF_DTYPES):
                if convert:
                    return found.detach().to(dtype=torch.float32).to(dtype=p.dtype)
                raise TypeError(
                    f"{name}: expected {p.dtype} (state_dtype='param') for the state of a {p.dtype} param, "
                    f"got {found.dtype}; rounding it to {p.dtype} loses bits, so it is done only when asked: "
                    "load_state_dict(..., convert_state=True) rounds it to nearest even"
                )
            raise TypeError(
                f"{name}: expected {p.dtype} (state_dtype='param') for the state of a {p.dtype} param, "
                f"got {found.dtype}"
            )
        if found.dtype not in (torch.float32, *HALF_DTYPES):
            raise TypeError(
                f"{name}: expected torch.float32 (or the param's {p.dtype}, widened exactly) for the state "
                f"of a {p.dtype} param, got {found.dtype}; converting it would round"
            )
        return found.detach().to(dtype=torch.float32)
    return found.detach().to(dtype=p.dtype)


def tensor_view(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory (no copy); a bfloat16 array (``ml_dtypes.bfloat16``, which torch
    does not know) through int16."""
    if array.dtype == _BFLOAT16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


_ONE_16_BIT = np.zeros(0, np.float16)   # stands for "a 16-bit param" where a check asks for one


def check_options(state_dtype: object, stochastic_rounding: object, seed: object) -> None:
    """The constructor's ``state_dtype``, ``stochastic_rounding`` and ``seed`` (errors name the argument;
    whether a group has a 16-bit param for stochastic rounding is checked per group)."""
    _checks.check_state_dtype(state_dtype)
    _checks.check_rounding(stochastic_rounding, 0 if seed is None else seed, [_ONE_16_BIT])


def check_precision(group: dict) -> None:
    """Raise unless a group's ``state_dtype``, ``stochastic_rounding`` and ``seed`` are valid, and
    ``stochastic_rounding`` only where a param is float16/bfloat16 (errors name the option)."""
    _checks.check_state_dtype(group["state_dtype"])
    params = [_ONE_16_BIT] if any(p.dtype in HALF_DTYPES for p in group["params"]) else []
    seed = group["seed"]
    _checks.check_rounding(group["stochastic_rounding"], 0 if seed is None else seed, params)


def group_seed(index: int, group: dict) -> int | None:
    """A step's check of a group's ``state_dtype``, ``stochastic_rounding`` and ``seed`` (whether it has a
    16-bit param is checked at plan builds), and the engine's ``seed`` argument: the seed with stochastic
    rounding, else None (to nearest). A stochastic group without a seed (one set so by hand) draws one
    here, recorded in the group (and so in ``state_dict()``), as at construction."""
    stochastic, seed, mode = group["stochastic_rounding"], group["seed"], group["state_dtype"]
    if not ((stochastic is False or stochastic is True) and (mode is None or mode == "param")
            and (seed is None or (type(seed) is int and 0 <= seed < 2**64))):
        try:
            check_options(mode, stochastic, seed)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"param_groups[{index}]: {exc}") from None
        seed = None if seed is None else int(seed)
    if not stochastic:
        return None
    if seed is None:
        seed = group["seed"] = secrets.randbits(64)
    return seed


def scalar(value: object) -> object:
    """A hyperparameter as a Python number (PyTorch allows 1-element tensors for ``lr``)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"expected a 1-element tensor, got shape {tuple(value.shape)}")
        return value.item()
    return value


def _version_bumper() -> Callable[[list[torch.Tensor]], None]:
    """How to tell autograd that a step wrote params in place (as ``param.add_`` would), so that a graph
    saved before the step fails its backward instead of silently using the new values."""
    bump = torch._C._increment_version
    try:
        bump([])                                 # torch >= 2.2: one call for a list of tensors
        return bump
    except TypeError:
        return lambda tensors: [bump(t) for t in tensors]


increment_version = _version_bumper()


def step_dtype() -> torch.dtype:
    # torch.optim's _get_scalar_dtype(): float64 steps only under a float64 default dtype.
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def check_tensor(t: object, name: str, *, half: bool = True) -> torch.Tensor:
    """Raise unless ``t`` is a CPU, dense, C-contiguous float32/float64 tensor (or, with ``half``,
    float16/bfloat16)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(
            f"{name}: expected a CPU tensor, got one on {t.device}; cadagrad steps CPU memory "
            "(keep the optimizer's params and state on the CPU, ZeRO-Offload style)"
        )
    if t.layout != torch.strided:
        raise ValueError(f"{name}: expected a dense (strided) tensor, got layout {t.layout}")
    if t.dtype not in _FLOAT_DTYPES and not (half and t.dtype in HALF_DTYPES):
        if half:
            expected = "torch.float32, torch.float64, torch.float16 or torch.bfloat16"
        else:
            expected = "torch.float32 or torch.float64"
            if t.dtype in HALF_DTYPES:
                expected += " (this optimizer steps no 16-bit params; cadagrad.torch.Adagrad and SGD do)"
        raise TypeError(f"{name}: expected dtype {expected}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(
            f"{name}: expected a contiguous tensor, got shape {tuple(t.shape)} with strides {t.stride()}"
        )
    return t


def as_array(t: torch.Tensor, name: str, *, writable: bool) -> np.ndarray:
    """The NumPy view of a checked tensor (no copy; bfloat16 as ``ml_dtypes.bfloat16``)."""
    check_tensor(t, name)
    try:
        array = numpy_view(t.detach())
    except (RuntimeError, TypeError) as exc:   # e.g. a tensor with its negative bit set
        raise ValueError(f"{name}: cannot be viewed as a NumPy array ({exc})") from None
    return _checks.check_float_array(array, name, writable=writable, half=True)


def state_shape(shape: tuple[int, ...], rowwise: bool) -> tuple[int, ...]:
    """The shape of a param's AdaGrad state: the param's, or one value per row with ``rowwise``."""
    return shape[:1] if rowwise else shape


def rows_view(array: np.ndarray) -> np.ndarray:
    """A param (or its state) as a table of rows: shape (V, D) for (V, ...) (D = 1 for a 1-D param)."""
    width = 1
    for n in array.shape[1:]:
        width *= n
    return array.reshape(array.shape[0], width)


def check_disjoint(tensors: list[torch.Tensor], labels: list[str]) -> None:
    """Params stepped in one parallel region must not share memory."""
    spans = sorted(
        (t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), i) for i, t in enumerate(tensors)
    )
    for (a0, a1, i), (b0, b1, j) in zip(spans, spans[1:]):
        if b0 < a1 and a0 != a1 and b0 != b1:
            first, second = sorted((i, j))
            raise ValueError(
                f"{labels[second]}: shares memory with {labels[first]}; "
                "params stepped together must not overlap"
            )


def check_grad_dtype(grad: torch.Tensor, param: torch.Tensor, label: str) -> None:
    """A grad (dense, or a sparse grad's values) must have its param's dtype (the kernels would take a
    float32 grad for a 16-bit param; the adapters do not, as torch.optim)."""
    if grad.dtype != param.dtype:
        raise TypeError(f"{label}.grad: expected dtype {param.dtype} (as the param), got {grad.dtype}")


def kinds_of(arrays: list[np.ndarray]) -> list[int]:
    """The step engine's kind code of each param array (bfloat16 must be named to it)."""
    return [_checks.param_kind(a.dtype) for a in arrays]


class _Explainer:
    """Says why a step's grad arrays do not fit a cohort (the engine calls it; it owns no engine)."""

    __slots__ = ("tensors", "labels", "arrays", "states", "states2")

    def __init__(self, tensors: list[torch.Tensor], labels: list[str], arrays: list[np.ndarray],
                 states: list[np.ndarray] | None, states2: list[np.ndarray] | None = None) -> None:
        self.tensors, self.labels, self.arrays, self.states = tensors, labels, arrays, states
        self.states2 = states2

    def __call__(self, grads: object) -> None:
        self.check(grads)
        raise RuntimeError("the grads do not fit the params")   # not reached: the checks raise

    def check(self, grads: object) -> None:
        """Raise the error that says why ``grads`` do not fit; return if they do."""
        for i, (tensor, label, array) in enumerate(zip(self.tensors, self.labels, self.arrays)):
            check_tensor(tensor, label)
            if tensor.data_ptr() != array.ctypes.data:
                raise RuntimeError(f"{label}: its storage moved during the step")
            grad = tensor.grad
            if grad is not None:
                check_tensor(grad, f"{label}.grad")
                check_grad_dtype(grad, tensor, label)
            if isinstance(grads, list) and i < len(grads):
                _checks.check_like(grads[i], array, f"{label}.grad", label, writable=False)
        _checks.check_grads(grads, self.arrays, False, self.states)
        if self.states2 is not None:
            _checks.check_grads(grads, self.arrays, False, self.states2)


class Cohort:
    """Params of one group that step together: one engine, one kernel call per step."""

    __slots__ = ("positions", "tensors", "labels", "arrays", "buffers", "states", "pending", "explain",
                 "engine", "steps", "first", "buffers2", "half")

    def __init__(self, positions: list[int], tensors: list[torch.Tensor], labels: list[str],
                 buffers: list[State] | None, steps: int, first: bool = False,
                 rowwise: bool = False, buffers2: list[State] | None = None, mode: str | None = None) -> None:
        self.positions = positions       # indices into the plan's list of params with a dense grad
        self.tensors = tensors
        self.labels = labels
        check_disjoint(tensors, labels)
        self.arrays = [as_array(t, label, writable=True) for t, label in zip(tensors, labels)]
        states = None if buffers is None else [b.array for b in buffers]
        if states is not None:
            _check_states(self.arrays, states, labels, rowwise, mode)
        # A second state per param (AdaGrad dual averaging's gradient sums), or None.
        states2 = None if buffers2 is None else [b.array for b in buffers2]
        if states2 is not None:
            _check_states(self.arrays, states2, labels, False)
        self.buffers = buffers
        self.buffers2 = buffers2
        self.states = states
        self.pending = any(b.pending for b in (buffers or []) + (buffers2 or []))
        self.explain = _Explainer(tensors, labels, self.arrays, states, states2)
        widths = [a.shape[1] for a in self.arrays] if rowwise else None
        self.engine = StepEngine(self.arrays, states, False, self.explain, steps, widths, states2,
                                 kinds_of(self.arrays))
        self.steps: np.ndarray | None = None   # AdaGrad: the buffer behind the params' "step" tensors
        self.first = first                     # SGD: momentum buffers not in ``state`` until stepped
        # Whether a param is float16/bfloat16: the engine takes a seed (stochastic rounding) only then.
        self.half = any(t.dtype in HALF_DTYPES for t in tensors)

    def ready(self, grads: list[np.ndarray]) -> None:
        """Make lazy state ready for a dense step (huge pages, every row filled), once ``grads`` are
        known to fit: a step the kernel would refuse writes nothing. Call while ``pending``."""
        every = self.buffers + (self.buffers2 or [])
        if any(b.pending for b in every):
            self.explain.check(grads)
            for buffer in every:
                buffer.ready_all()
        self.pending = False


def _check_states(arrays: list[np.ndarray], states: list[np.ndarray], labels: list[str],
                  rowwise: bool, mode: str | None = None) -> None:
    # The kernels trust these: a wrong size would be written out of bounds.
    for array, state, label in zip(arrays, states, labels):
        name = f"state of {label}"
        _checks.check_float_array(state, name, writable=True, half=True)
        expected = state_shape(array.shape, rowwise)
        dtype = _checks.state_dtype(array.dtype, mode)
        if state.dtype != dtype or state.shape != expected:
            raise ValueError(
                f"{name}: expected {dtype} of shape {expected}, got {state.dtype} {state.shape}"
            )


class Tables:
    """The params of one group whose grads are sparse COO rows (embedding tables): one engine over them
    all, as (V, D) row views. A step is one row-kernel call per batch of tables that share a step count
    (see ``EngineOptimizer._batches``), on their grads' indices and values.
    """

    __slots__ = ("tensors", "labels", "arrays", "buffers", "states", "shapes", "dtypes", "spans", "engine",
                 "everything", "filling", "steps", "first", "zeros", "buffers2", "half")

    def __init__(self, tensors: list[torch.Tensor], labels: list[str], buffers: list[State] | None,
                 rowwise: bool = False, buffers2: list[State] | None = None, mode: str | None = None) -> None:
        check_disjoint(tensors, labels)
        arrays = [as_array(t, label, writable=True) for t, label in zip(tensors, labels)]
        if rowwise:
            for array, label in zip(arrays, labels):
                if array.ndim != 2 or array.shape[1] == 0:
                    raise ValueError(
                        f"{label}: rowwise needs a 2-D param (rows, columns >= 1), got {array.shape}"
                    )
        states = None if buffers is None else [b.array for b in buffers]
        if states is not None:
            _check_states(arrays, states, labels, rowwise, mode)
            states = [s if rowwise else rows_view(s) for s in states]
        states2 = None if buffers2 is None else [b.array for b in buffers2]
        if states2 is not None:                 # a second state per param (dual averaging's sums)
            _check_states(arrays, states2, labels, False)
            states2 = [rows_view(s) for s in states2]
        self.tensors = tensors
        self.buffers = buffers
        self.buffers2 = buffers2
        self.labels = labels
        self.arrays = [rows_view(a) for a in arrays]
        self.states = states
        self.shapes = [t.shape for t in tensors]
        self.dtypes = [t.dtype for t in tensors]
        # What a step writes, per table: the grad's values must not overlap it.
        self.spans = [[(data_address(a), data_address(a) + a.nbytes)] for a in self.arrays]
        for spans, state in zip(self.spans, states or []):
            spans.append((data_address(state), data_address(state) + state.nbytes))
        for spans, state in zip(self.spans, states2 or []):
            spans.append((data_address(state), data_address(state) + state.nbytes))
        widths = [a.shape[1] for a in self.arrays] if rowwise else None
        self.engine = StepEngine(self.arrays, states, False, self._explain, 0, widths, states2,
                                 kinds_of(self.arrays))
        self.everything = list(range(len(tensors)))   # a batch of every table
        # The tables whose lazy state may still fill rows (a table stops, never starts, filling).
        self.filling = {j for j, b in enumerate(buffers or []) if b.fills}
        self.steps: np.ndarray | None = None   # AdaGrad: the buffer behind the tables' "step" tensors
        self.first: list[bool] = []            # SGD: whether a table's momentum buffer is not in state yet
        self.zeros: list[np.ndarray | None] = []  # SGD: zero grad rows for the rows that are not named
        self.half = any(t.dtype in HALF_DTYPES for t in tensors)   # as ``Cohort.half``

    def ready(self, batch: list[int], indices: list[np.ndarray]) -> None:
        """Fill the rows ``indices[n]`` of table ``batch[n]``'s lazy state that hold no value yet; call it
        after the step is validated, just before the row kernel (an index out of range makes a table's
        fill write nothing; with several tables, see ``fills``)."""
        for buffers in (self.buffers, self.buffers2):
            if buffers is not None:
                for j, named in zip(batch, indices):
                    buffer = buffers[j]
                    if buffer.pending:
                        buffer.ready_rows(named)

    def fills(self, batch: list[int]) -> bool:
        """Whether ``ready`` may write a row of one of the tables ``batch`` (lazy state with an initial
        value not 0): then one table's fill must wait until every table's indices are known in range.
        (A second state, AdagradDA's gradient sum, starts at 0 and never fills.)"""
        filling = self.filling
        return bool(filling) and any(j in filling and self.buffers[j].fills for j in batch)

    def _explain(self, grads: object) -> None:
        for tensor, label, array in zip(self.tensors, self.labels, self.arrays):
            check_tensor(tensor, label)
            if tensor.data_ptr() != data_address(array):
                raise RuntimeError(f"{label}: its storage moved during the step")
        raise RuntimeError("a table or its state changed during the step")

    def rows(self, j: int, grad: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The indices (k,) and rows (k, D) of table ``j``'s sparse grad as the row kernels take them:
        views of ``grad._indices()[0]`` and ``grad._values()``, no coalesce (checked, not range-checked)."""
        label = self.labels[j]
        if grad.layout is not torch.sparse_coo:
            raise ValueError(
                f"{label}.grad: expected a dense (strided) or sparse COO tensor, got layout {grad.layout} "
                "(convert it with .to_sparse_coo())"
            )
        if grad.shape != self.shapes[j]:
            raise ValueError(
                f"{label}.grad: expected shape {tuple(self.shapes[j])} (as the param), "
                f"got {tuple(grad.shape)}"
            )
        if grad.sparse_dim() != 1:
            raise ValueError(
                f"{label}.grad: expected a sparse COO tensor with one sparse dim (rows, as "
                f"nn.Embedding(sparse=True) gives), got {grad.sparse_dim()} sparse dims"
            )
        array = self.arrays[j]
        dtype = self.dtypes[j]
        if grad.dtype is not dtype:          # before a bfloat16 view could reinterpret other bits
            raise TypeError(
                f"{label}.grad: expected values of dtype {dtype} (as the param), got {grad.dtype}"
            )
        try:
            indices = grad._indices().numpy()[0]
            values = grad._values().numpy() if dtype is not torch.bfloat16 else numpy_view(grad._values())
        except (RuntimeError, TypeError):
            indices, values = self._slow_rows(j, grad)
        if values.dtype != array.dtype:
            raise TypeError(
                f"{label}.grad: expected values of dtype {dtype} (as the param), got {grad.dtype}"
            )
        if indices.dtype != np.int64:
            raise TypeError(f"{label}.grad: expected int64 indices, got {indices.dtype}")
        if not indices.flags.c_contiguous:
            indices = np.ascontiguousarray(indices)
        if not values.flags.c_contiguous:
            values = np.ascontiguousarray(values)
        k, width = indices.shape[0], array.shape[1]
        if values.ndim != 2 or values.shape[1] != width:
            if values.size != k * width or values.shape[:1] != (k,):
                raise ValueError(
                    f"{label}.grad: expected values of shape {(k, *self.shapes[j][1:])}, got {values.shape}"
                )
            values = values.reshape(k, width)
        if values.nbytes:
            start = data_address(values)
            end = start + values.nbytes
            for lo, hi in self.spans[j]:
                if start < hi and lo < end and lo != hi:
                    raise ValueError(f"{label}.grad: its values share memory with the param or its state")
        return indices, values

    def _slow_rows(self, j: int, grad: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        # Names what stops the fast view: another device, a dtype NumPy lacks; or views a grad that
        # requires grad (create_graph=True).
        label = self.labels[j]
        if grad.device.type != "cpu":
            raise ValueError(f"{label}.grad: expected a CPU tensor, got one on {grad.device}")
        values = grad._values().detach()
        if values.dtype != self.dtypes[j]:
            raise TypeError(
                f"{label}.grad: expected values of dtype {self.dtypes[j]} (as the param), got {values.dtype}"
            )
        return grad._indices().detach().numpy()[0], numpy_view(values.resolve_neg())

    def check_range(self, j: int, indices: np.ndarray) -> None:
        """Raise unless every index of table ``j`` is in ``[0, V)`` (for tables whose kernel call runs
        after something else has written: a row-kernel call checks its own tables' indices before it
        writes, but only its own)."""
        nrows = self.arrays[j].shape[0]
        # One reduction: as unsigned, a negative int64 index is above any row count.
        if indices.size and indices.view(np.uint64).max() >= nrows:
            raise self.out_of_range(j, indices, int(np.flatnonzero((indices < 0) | (indices >= nrows))[0]))

    def out_of_range(self, j: int, indices: np.ndarray, position: int) -> ValueError:
        """The error for the index at ``position`` of table ``j``'s grad."""
        return ValueError(
            f"{self.labels[j]}.grad: index {int(indices[position])} (position {position} of its indices) is "
            f"out of range for a param of {self.arrays[j].shape[0]} rows; nothing was written"
        )

    def refused(self, batch: list[int], indices: list[np.ndarray], result: int) -> ValueError:
        """The error for a refused ``*_rows_many`` call on the tables ``batch``: its ``result`` is
        ``n + len(batch) * position`` for the first index out of range, of table ``batch[n]``."""
        position, n = divmod(result, len(batch))
        return self.out_of_range(batch[n], indices[n], position)


class Plan:
    """The engines of one param group, valid while its params, grads and state stay the same."""

    __slots__ = ("group", "params", "kinds", "ptrs", "dicts", "entries", "steps", "cohorts", "tables", "flag",
                 "entries2", "views", "half")

    def __init__(self, group: dict, params: list[torch.Tensor], kinds: list[bool], flag: object) -> None:
        self.group = group
        self.params = params
        self.kinds = kinds                     # per param: whether its grad is sparse (not strided)
        self.ptrs = [p.data_ptr() for p in params]
        self.dicts: list[dict | None] = []     # state[p] as found at build time
        self.entries: list[object] = []        # state[p][key] as found at build time
        self.entries2: list[object] | None = None  # state[p][second key] as found, if the rule has one
        self.steps: list[object] | None = None  # AdaGrad: state[p]["step"] as set at build time
        self.cohorts: list[Cohort] = []        # the params with a dense grad
        self.tables: Tables | None = None      # the params with a sparse grad
        self.flag = flag                       # what the state layout depends on (rowwise, momentum)
        # The dense grads' 16-bit params: their positions and dtypes (a grad of another dtype, float32
        # say, would be stepped by the kernels: refused first), and whether any is bfloat16, whose grad
        # needs ``numpy_view``; None and False where there is none (the float32/float64 path is as it was).
        dense = [p.dtype for p, sparse in zip(params, kinds) if not sparse]
        self.half = [(d, dtype) for d, dtype in enumerate(dense) if dtype in HALF_DTYPES] or None
        self.views = torch.bfloat16 in dense

    def split(self) -> tuple[list[int], list[int]]:
        """Positions (into ``params``) of the params with a dense grad and of those with a sparse one."""
        dense = [i for i, sparse in enumerate(self.kinds) if not sparse]
        return dense, [i for i, sparse in enumerate(self.kinds) if sparse]


class EngineOptimizer(Optimizer):
    """What the adapters share: param checks, engine plans, grad views, ``__setstate__``."""

    _state_key: str
    # Rules that keep a second state per param (AdaGrad dual averaging's gradient sums) name its key.
    _second_state_key: str | None = None
    # Whether float16/bfloat16 params are stepped (with float32 state; the rules page, "16-bit params").
    _accepts_16_bit = False
    _extra_defaults: dict[str, Any] = {
        "foreach": None, "maximize": False, "differentiable": False, "fused": None,
    }

    def __init__(self, params: ParamsT, defaults: dict[str, Any], num_threads: int | None) -> None:
        if defaults.get("differentiable"):
            raise ValueError(
                f"differentiable: {type(self).__name__} steps outside autograd and cannot be differentiated "
                "through; use torch.optim for differentiable=True"
            )
        if defaults.get("fused") and defaults.get("foreach"):
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        self._num_threads = _checks.check_num_threads(num_threads) or None
        self._reset_engines()
        super().__init__(params, defaults)

    # -- construction and (re)loading -----------------------------------------------------------------

    def _reset_engines(self) -> None:
        self._plans: dict[int, Plan] = {}
        self._owned: dict[torch.Tensor, tuple[torch.Tensor, State]] = {}   # state tensors and their buffers
        self._owned2: dict[torch.Tensor, tuple[torch.Tensor, State]] = {}  # the same, for the second key

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (as :meth:`torch.optim.Optimizer.add_param_group`), checking its tensors.

        A group with ``stochastic_rounding=True`` and no ``seed`` draws one (``secrets.randbits(64)``),
        stored in the group, so that ``state_dict()`` records it.

        Raises
        ------
        ValueError, TypeError
            If a param is not a CPU, dense, contiguous float32/float64 tensor (Adagrad and SGD: or
            float16/bfloat16), or (Adagrad and SGD) ``state_dtype`` is neither None nor ``"param"``,
            ``seed`` is neither None nor an int from 0 to 2**64 - 1, or ``stochastic_rounding=True`` is
            asked of a group without a float16/bfloat16 param; the error names the group and the option,
            and the group is not added.
        """
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        index = len(self.param_groups) - 1
        try:
            if group.get("differentiable"):
                raise ValueError(f"param_groups[{index}]['differentiable']: True is not supported")
            for j, p in enumerate(group["params"]):
                check_tensor(p, f"param_groups[{index}]['params'][{j}]", half=self._accepts_16_bit)
            self._check_group(index, group)
            if self._accepts_16_bit:
                try:
                    check_precision(group)
                except (ValueError, TypeError) as exc:
                    raise type(exc)(f"param_groups[{index}]: {exc}") from None
        except (ValueError, TypeError):
            self.param_groups.pop()
            raise
        if self._accepts_16_bit and group["stochastic_rounding"] and group["seed"] is None:
            group["seed"] = secrets.randbits(64)      # drawn once, recorded: state_dict() keeps it

    def _check_group(self, index: int, group: dict) -> None:
        """Subclasses refuse params that a group's options cannot step (checked when a group is added)."""

    @staticmethod
    def _check_rounding_params(index: int, group: dict) -> None:
        """At a plan build: ``stochastic_rounding`` only in a group with a float16/bfloat16 param (its
        flag and seed are checked at every step)."""
        if group["stochastic_rounding"] and not any(p.dtype in HALF_DTYPES for p in group["params"]):
            raise ValueError(
                f"param_groups[{index}]: stochastic_rounding: applies to float16 and bfloat16 params only, "
                "and none of the params is one"
            )

    def _share_steps(self, steps: np.ndarray, params: list[torch.Tensor]) -> None:
        """Make ``state[p]["step"]`` of ``params`` views of ``steps`` (one write counts them all)."""
        views = torch.from_numpy(steps)
        for k, p in enumerate(params):
            self.state[p]["step"] = views[k]

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            # Groups from torch.optim's checkpoints lack cadagrad's options: the constructor's values.
            for name, value in self._extra_defaults.items():
                group.setdefault(name, self.defaults.get(name, value))
        # load_state_dict and unpickling land here: the state tensors are new, so the engines go.
        if "_num_threads" not in self.__dict__:
            self._num_threads = None
        self._reset_engines()

    def __getstate__(self) -> dict[str, Any]:
        self._materialize()                     # pickle and deepcopy copy the state tensors as they are
        state = super().__getstate__()
        state["_num_threads"] = self._num_threads
        return state

    @property
    def num_threads(self) -> int | None:
        """Threads of a large step; None asks ``cadagrad.get_num_threads()`` at every step."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int | None) -> None:
        self._num_threads = _checks.check_num_threads(value) or None

    # -- state buffers ------------------------------------------------------------------------------

    def _new_state(
        self, p: torch.Tensor, value: float, rowwise: bool = False, second: bool = False,
        mode: str | None = None,
    ) -> torch.Tensor:
        """A cadagrad-owned state buffer for ``p`` (zero-copy tensor view) holding ``value`` (lazily for
        a large one: see ``cadagrad._state``); with ``rowwise``, one value per row; with ``second``, the
        buffer of the second key, placed after the first one in memory; in the state dtype of ``mode``
        (a group's ``state_dtype``)."""
        param = numpy_view(p.detach())
        anchor = self._owned[p][1].array if second else param
        dtype = _checks.state_dtype(param.dtype, mode)
        buffer = new_state(anchor, state_shape(tuple(p.shape), rowwise), value, dtype)
        return self._own(p, buffer, second)

    def _own(self, p: torch.Tensor, buffer: State, second: bool = False) -> torch.Tensor:
        tensor = tensor_view(buffer.array)
        (self._owned2 if second else self._owned)[p] = (tensor, buffer)
        return tensor

    def _state_buffer(self, p: torch.Tensor, found: object, label: str, value: float,
                     rowwise: bool = False, second: bool = False,
                     mode: str | None = None) -> tuple[torch.Tensor, State]:
        """The buffer behind ``state[p][key]``: ours as is, anything else copied into a buffer of ours
        (torch.optim.SGD's sparse momentum buffers too) whose initial value is ``value``: rows of the
        copy that are all zero or equal to ``value`` stay unwritten, so a sparse checkpoint stays sparse.
        ``mode`` is the group's ``state_dtype``: a tensor of another dtype is converted by
        ``converted_state`` (widened exactly, or refused where it would round)."""
        shape = state_shape(tuple(p.shape), rowwise)
        owned = (self._owned2 if second else self._owned).get(p)
        if owned is not None and owned[0] is found:
            if owned[0].shape == shape and owned[0].dtype is state_dtype(p, mode):
                return owned      # (a param whose dtype changed, by ``module.double()``, gets a new one)
        name = f"state of {label}[{self._second_state_key if second else self._state_key!r}]"
        if not isinstance(found, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(found).__name__}")
        if tuple(found.shape) != shape:
            what = "one value per row (rowwise)" if rowwise else "as the param"
            raise ValueError(f"{name}: expected shape {shape} ({what}), got {tuple(found.shape)}")
        if found.layout == torch.sparse_coo and not found.is_complex():
            found = found.to_dense()
        if found.is_complex() or found.layout != torch.strided:
            raise TypeError(f"{name}: expected a dense real tensor, got {found.dtype}, {found.layout}")
        # To the state's dtype by the documented rule (a tensor may hold one NumPy lacks), views resolved.
        source = converted_state(found, p, name, mode).resolve_neg().resolve_conj()
        param = numpy_view(p.detach())
        dtype = _checks.state_dtype(param.dtype, mode)
        self._own(p, State.from_array(param, shape, value, numpy_view(source), dtype), second)
        return (self._owned2 if second else self._owned)[p]

    def _materialize(self) -> None:
        """Fill every row of the lazy state tensors in ``state`` (initial value not 0) before they are
        handed out: ``state_dict()`` and pickling return or copy the tensors themselves."""
        for key, owned in ((self._state_key, self._owned), (self._second_state_key, self._owned2)):
            for p, (tensor, buffer) in owned.items():
                if buffer.pending and self.state.get(p, {}).get(key) is tensor:
                    buffer.materialize()

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state, as :meth:`torch.optim.Optimizer.state_dict` gives it.

        Returns
        -------
        dict
            ``{"state": {index: {key: Tensor}}, "param_groups": [...]}``; the tensors are the optimizer's
            own state tensors, not copies.

        Notes
        -----
        Large AdaGrad accumulators with a non-zero ``initial_accumulator_value`` hold that value only in
        the rows steps have touched; this first writes it into every other row (in place), so that the
        tensors returned read right: from then on such an accumulator takes as much memory as its param.
        With ``initial_accumulator_value=0``, and for SGD's momentum buffers, it costs nothing.
        """
        self._materialize()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any], *, convert_state: bool = False) -> None:
        """Load a state dict, as :meth:`torch.optim.Optimizer.load_state_dict` does, except for the state of
        float16/bfloat16 params.

        The param groups are loaded with their options, ``state_dtype`` included: a group's state dtype
        is then the loaded one (a group saved without one, by torch.optim or an older cadagrad, keeps the
        group's current ``state_dtype``, ``stochastic_rounding`` and ``seed``). torch.optim casts every
        loaded state tensor to its param's dtype; here the state tensors of a 16-bit param must instead
        fit the loaded ``state_dtype``:

        - ``None`` (float32 state): float32 is taken as it is; float16 or bfloat16 (torch.optim's state,
          or ours saved with ``state_dtype="param"``) is widened to float32, which is exact.
        - ``"param"``: the param's dtype is taken as it is (a torch.optim checkpoint loads with no
          conversion); float32 (or the other 16-bit dtype) would have to be rounded, which loses bits:
          refused unless ``convert_state=True``, which rounds it to nearest even.
        - Any other dtype (float64 say) is refused.

        Parameters
        ----------
        state_dict : dict
            As returned by :meth:`state_dict` (of this class or of the torch.optim counterpart).
        convert_state : bool, default False
            Round float32 state of 16-bit params in ``state_dtype="param"`` groups to the param's dtype
            (to nearest even) instead of refusing it.

        Raises
        ------
        TypeError
            If a state tensor of a 16-bit param does not fit its group's ``state_dtype`` by the rules above,
            naming it (``state_dict['state'][3]['sum']``); nothing is loaded.
        ValueError
            If a saved group's ``state_dtype``, ``stochastic_rounding`` or ``seed`` is invalid (as for the
            constructor), naming the group (``state_dict['param_groups'][1]``); nothing is loaded.
        """
        convert = _checks.check_flag(convert_state, "convert_state")
        state_dict, converted = self._converted_state(state_dict, convert)
        super().load_state_dict(state_dict)
        for p, key, tensor in converted:
            self.state[p][key] = tensor

    def _converted_state(
        self, state_dict: object, convert: bool
    ) -> tuple[object, list[tuple[torch.Tensor, str, torch.Tensor]]]:
        """``state_dict`` with its groups' precision options filled in (from the current groups where it
        has none), checked, and the state tensors of its 16-bit params in their groups' state dtypes (see
        ``load_state_dict``); a state dict torch will refuse is returned as it is (torch's error is
        raised)."""
        if not isinstance(state_dict, dict):
            return state_dict, []
        saved_groups, saved_state = state_dict.get("param_groups"), state_dict.get("state")
        if not isinstance(saved_groups, (list, tuple)) or not isinstance(saved_state, dict):
            return state_dict, []
        groups = self.param_groups
        if len(saved_groups) != len(groups) or any(
            not isinstance(saved, dict) or len(saved.get("params", ())) != len(group["params"])
            for saved, group in zip(saved_groups, groups)
        ):
            return state_dict, []
        if self._accepts_16_bit:
            filled = []
            for i, (saved, group) in enumerate(zip(saved_groups, groups)):
                saved = {**{k: group[k] for k in _checks.PRECISION_DEFAULTS if k not in saved}, **saved}
                try:
                    check_precision({**saved, "params": group["params"]})
                except (ValueError, TypeError) as exc:
                    raise type(exc)(f"state_dict['param_groups'][{i}]: {exc}") from None
                filled.append(saved)
            saved_groups = filled
            state_dict = {**state_dict, "param_groups": filled}
        converted = []
        for saved, group in zip(saved_groups, groups):
            mode = saved.get("state_dtype")
            for saved_id, p in zip(saved["params"], group["params"]):
                entry = saved_state.get(saved_id)
                if p.dtype not in HALF_DTYPES or not isinstance(entry, dict):
                    continue
                for key, value in entry.items():
                    if key != "step" and isinstance(value, torch.Tensor):
                        name = f"state_dict['state'][{saved_id!r}][{key!r}]"
                        converted.append((p, key, converted_state(value, p, name, mode, convert)))
        return state_dict, converted

    # -- the step ---------------------------------------------------------------------------------------

    def _plan_fits(self, plan: Plan, with_grad: list[torch.Tensor], kinds: list[bool]) -> bool:
        if len(with_grad) != len(plan.params) or kinds != plan.kinds:
            return False
        key = self._state_key
        get = self.state.get
        if plan.steps is not None:
            for p, q, ptr, d, entry, step in zip(
                with_grad, plan.params, plan.ptrs, plan.dicts, plan.entries, plan.steps
            ):
                if p is not q or p.data_ptr() != ptr:
                    return False
                found = get(p)
                if found is not d or found.get(key) is not entry or found.get("step") is not step:
                    return False
            if plan.entries2 is not None:
                key2 = self._second_state_key
                for d, entry in zip(plan.dicts, plan.entries2):
                    if d.get(key2) is not entry:
                        return False
        elif plan.dicts:        # (the plan keeps each param's state dict: zip must not run short)
            for p, q, ptr, d, entry in zip(with_grad, plan.params, plan.ptrs, plan.dicts, plan.entries):
                if p is not q or p.data_ptr() != ptr:
                    return False
                found = get(p)
                if found is not d or found.get(key) is not entry:
                    return False
        else:
            for p, q, ptr in zip(with_grad, plan.params, plan.ptrs):
                if p is not q or p.data_ptr() != ptr:
                    return False
        return True

    def _labels(self, index: int, group: dict, with_grad: list[torch.Tensor]) -> list[str]:
        where = {id(p): j for j, p in enumerate(group["params"])}
        return [f"param_groups[{index}]['params'][{where[id(p)]}]" for p in with_grad]

    def _grad_arrays(self, plan: Plan, grads: list[torch.Tensor]) -> list[np.ndarray]:
        if not grads:
            return []
        half = plan.half
        if half is not None:
            for d, dtype in half:
                if grads[d].dtype is not dtype:
                    self._refuse_grad_dtype(plan, d, grads[d])
        try:
            if plan.views:
                return [numpy_view(g) for g in grads]
            return [g.numpy() for g in grads]
        except (RuntimeError, TypeError):
            pass
        # The slow path names the bad grad, or views grads that require grad (create_graph=True).
        arrays = []
        for cohort in plan.cohorts:
            for position, label in zip(cohort.positions, cohort.labels):
                arrays.append((position, as_array(grads[position], f"{label}.grad", writable=False)))
        arrays.sort(key=lambda item: item[0])
        return [array for _, array in arrays]

    def _prepare(self, index: int, group: dict) -> tuple[Plan, list[np.ndarray], list[tuple]] | None:
        """The plan of a group and its grads as arrays: dense ones, and (indices, rows) of sparse ones."""
        with_grad, grads, kinds = [], [], []
        strided = torch.strided
        for p in group["params"]:
            g = p.grad
            if g is not None:
                with_grad.append(p)
                grads.append(g)
                kinds.append(g.layout is not strided)
        if not with_grad:
            return None
        flag = self._structure(group)
        plan = self._plans.get(index)
        if (plan is None or plan.group is not group or plan.flag != flag
                or not self._plan_fits(plan, with_grad, kinds)):
            self._plans.pop(index, None)
            plan = self._build_plan(index, group, with_grad, kinds, flag)
            self._plans[index] = plan
        if plan.tables is None:
            return plan, self._grad_arrays(plan, grads), []
        dense = [g for g, sparse in zip(grads, kinds) if not sparse]
        rows = plan.tables.rows
        sparse = [rows(j, g) for j, g in enumerate(g for g, sparse in zip(grads, kinds) if sparse)]
        return plan, self._grad_arrays(plan, dense), sparse

    @staticmethod
    def _refuse_grad_dtype(plan: Plan, position: int, grad: torch.Tensor) -> None:
        for cohort in plan.cohorts:
            for at, label, tensor in zip(cohort.positions, cohort.labels, cohort.tensors):
                if at == position:
                    check_grad_dtype(grad, tensor, label)
        raise RuntimeError("a grad's dtype differs from its param's")    # not reached

    def _cohort_grads(self, plan: Plan, cohort: Cohort, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return arrays if len(plan.cohorts) == 1 else [arrays[i] for i in cohort.positions]

    @staticmethod
    def _precheck(plan: Plan, arrays: list[np.ndarray]) -> None:
        # A step of several engines checks every grad first, so that none writes unless all fit; one
        # engine checks its grads itself (in C) before it writes anything.
        for cohort in plan.cohorts:
            for position, param in zip(cohort.positions, cohort.arrays):
                a = arrays[position]
                if a.dtype != param.dtype or a.shape != param.shape or not a.flags.c_contiguous:
                    cohort.explain([arrays[i] for i in cohort.positions])

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Take one step on every param with a grad; see the class docstring for the rule.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (run with grad enabled).

        Returns
        -------
        loss : object
            What ``closure`` returned, or None without a closure.

        Raises
        ------
        ValueError, TypeError
            For a param that is not a CPU, dense, contiguous float32/float64 tensor (Adagrad and SGD: or
            float16/bfloat16), a grad that is neither such a tensor of the param's dtype nor a sparse COO
            tensor with one sparse dim of the param's shape and dtype, an index out of range, a state
            tensor that cannot be converted (see ``load_state_dict``), or a bad hyperparameter; raised
            before anything is written.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        for index, group in enumerate(self.param_groups):
            hyper = self._hyperparameters(index, group)
            prepared = self._prepare(index, group)
            if prepared is not None:
                work.append((hyper, *prepared))
        calls = [(hyper, plan, rows, batch) for hyper, plan, _, rows in work if rows
                 for batch in self._batches(plan.tables, hyper)]
        if calls or len(work) > 1 or any(len(plan.cohorts) > 1 for _, plan, _, _ in work):
            for _, plan, arrays, _ in work:
                self._precheck(plan, arrays)
        # Sparse tables step first, one row-kernel call per batch, the largest batch first. A call checks
        # its own tables' indices before it writes; those of the later calls are checked here, so that a
        # bad index anywhere leaves everything as it was. So are the first call's if filling lazy state
        # before it could write a row of one table while another table's index is out of range.
        if len(calls) > 1:
            calls.sort(key=lambda call: -len(call[3]))
        for n, (_, plan, rows, batch) in enumerate(calls):
            tables = plan.tables
            if n or (len(batch) > 1 and tables.fills(batch)):
                for j in batch:
                    tables.check_range(j, rows[j][0])
        threads = self._num_threads or 0
        for hyper, plan, rows, batch in calls:
            self._run_tables(plan, rows, batch, hyper, threads)
        for _, plan, _, rows in work:
            if rows:
                increment_version(plan.tables.tensors)
        for hyper, plan, arrays, _ in work:
            if arrays:
                self._run(plan, arrays, hyper, threads)
        return loss
