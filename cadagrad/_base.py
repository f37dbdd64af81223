"""What the NumPy optimizers share: validated hyperparameter attributes and the optimizer base class.

:mod:`cadagrad.optim` (Adagrad, SGD) and :mod:`cadagrad.proximal` (ProximalAdagrad, AdagradDA) build on it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import _checks, checkpoint
from ._checks import Params
from ._kernels import StepEngine
from ._state import State


class Hyperparameter:
    """A hyperparameter attribute: reads are plain, writes are validated (or refused if fixed)."""

    def __init__(self, check=None):
        self.check = check

    def __set_name__(self, owner, name):
        self.name = name
        self.slot = "_" + name

    def __get__(self, obj, objtype=None):
        return self if obj is None else getattr(obj, self.slot)

    def __set__(self, obj, value):
        if self.check is None:
            raise AttributeError(f"{self.name} is fixed at construction; build a new optimizer to change it")
        setattr(obj, self.slot, self.check(value, self.name))


class Optimizer:
    """What every NumPy optimizer shares: the params, the step engine, the step count and state dicts."""

    _state_key: str
    # Rules that keep a second state per param (AdaGrad dual averaging's gradient sums) name its key.
    _second_state_key: str | None = None
    _hyperparameter_names: tuple[str, ...]
    # Whether float16/bfloat16 params are stepped (the rules page, "16-bit params"); such an optimizer has
    # the hyperparameters state_dtype, stochastic_rounding and seed, which a state dict may lack (it was
    # saved before they existed): these defaults stand in.
    _accepts_16_bit = False
    _optional_hyperparameters: dict[str, Any] = {}
    _state_dtype: str | None = None

    num_threads = Hyperparameter(lambda value, name: _checks.check_num_threads(value, name) or None)

    def _set_params(self, params: Params, num_threads: int | None) -> None:
        self._params, self._single = _checks.check_params(params, half=self._accepts_16_bit)
        self._layout = [(p.size, p.dtype) for p in self._params]
        self._num_threads = _checks.check_num_threads(num_threads) or None
        self._states: list[np.ndarray] | None = None
        self._buffers: list[State] | None = None     # the states' allocations, lazily filled
        self._states2: list[np.ndarray] | None = None
        self._buffers2: list[State] | None = None    # the second states (see _second_state_key), or None
        self._pending = False                        # some buffer still wants ready_all() before a dense step

    def _set_states(self, buffers: list[State] | None, buffers2: list[State] | None = None) -> None:
        self._buffers = buffers
        self._states = None if buffers is None else [b.array for b in buffers]
        self._buffers2 = buffers2
        self._states2 = None if buffers2 is None else [b.array for b in buffers2]
        self._pending = any(b.pending for b in self._all_buffers())

    def _all_buffers(self) -> list[State]:
        return (self._buffers or []) + (self._buffers2 or [])

    def _ready_for_dense_step(self, grads: object, skip_if_nonfinite: bool) -> bool:
        # Before the first dense step over lazy state: validate first, so a rejected step writes
        # nothing (not even the initial value), then advise huge pages and fill what is unfilled.
        self._explain(grads)
        if skip_if_nonfinite and self._engine.has_nonfinite(grads, self._num_threads or 0):
            return False
        for buffer in self._all_buffers():
            buffer.ready_all()
        self._pending = False
        return True

    def _ready_rows(self, param: int, indices: np.ndarray) -> None:
        if self._pending:
            self._buffers[param].ready_rows(indices)
            if self._buffers2 is not None:
                self._buffers2[param].ready_rows(indices)

    def _set_hyperparameters(self, values: dict) -> None:
        for name, value in values.items():
            setattr(self, "_" + name, value)

    def _row_widths(self) -> list[int] | None:
        return None

    def _state_dtypes(self) -> list[np.dtype]:
        return [_checks.state_dtype(p.dtype, self._state_dtype) for p in self._params]

    def _rounding_seed(self) -> int | None:
        # The engine's seed argument: the seed with stochastic rounding, else None (to nearest).
        return self._seed if self._stochastic_rounding else None

    def _build_engine(self, steps: int) -> None:
        self._engine = StepEngine(
            self._params, self._states, self._single, self._explain, steps, self._row_widths(), self._states2,
            self._kinds(),
        )

    def _kinds(self) -> list[int]:
        return [_checks.param_kind(p.dtype) for p in self._params]

    def _explain(self, grads: object) -> None:
        _checks.explain_changed(self._params, self._states, self._layout)
        _checks.check_grads(grads, self._params, self._single, self._states)
        if self._states2 is not None:
            _checks.explain_changed(self._params, self._states2, self._layout)
            _checks.check_grads(grads, self._params, self._single, self._states2)

    def _check_rows(self, indices: object, rows: object, param: object) -> int:
        _checks.explain_changed(self._params, self._states, self._layout)
        if self._states2 is not None:
            _checks.explain_changed(self._params, self._states2, self._layout)
            _checks.check_rows(indices, rows, param, self._params, self._states2)
        return _checks.check_rows(indices, rows, param, self._params, self._states)

    def _raise_if_out_of_range(self, bad: int, indices: np.ndarray, param: int) -> None:
        if bad >= 0:
            raise _checks.index_out_of_range(indices, bad, param, self._params[param].shape[0])

    @property
    def params(self) -> list[np.ndarray]:
        """The arrays this optimizer updates (the caller's own objects)."""
        return list(self._params)

    @property
    def step_count(self) -> int:
        """Steps taken so far (``t`` of the next step is ``step_count + 1``)."""
        return self._engine.steps

    def state_dict(self) -> dict[str, Any]:
        """A copy of the optimizer's state: step count, hyperparameters and per-param buffers.

        Returns
        -------
        dict
            ``{"optimizer": name, "version": 1, "step": int, "hyperparameters": {...},
            <state key>: list of ndarray or None}``; the arrays are copies.

        Notes
        -----
        Memory: a copy of every state buffer, with one exception. A large buffer whose initial value
        is 0 and that only row steps have touched is copied lazily: one read of the buffer, memory for
        its touched rows only. With a non-zero ``initial_accumulator_value`` the copy is full size
        (every row holds that value) even where the optimizer's own buffer is still mostly unfilled;
        the optimizer's buffers themselves are left as they are.
        """
        saved = {
            "optimizer": type(self).__name__,
            "version": _checks.STATE_DICT_VERSION,
            "step": self.step_count,
            "hyperparameters": {name: getattr(self, name) for name in self._hyperparameter_names},
            self._state_key: None if self._buffers is None else [b.copy() for b in self._buffers],
        }
        if self._second_state_key is not None:
            saved[self._second_state_key] = [b.copy() for b in self._buffers2]
        return saved

    def _state_keys(self) -> tuple[str, ...]:
        second = () if self._second_state_key is None else (self._second_state_key,)
        return (self._state_key, *second)

    def _restored(
        self, saved: object, key: str, step: int, value: float, anchors: list[np.ndarray], convert: bool
    ) -> list[State]:
        # The state buffers holding the arrays ``saved`` (state_dict[key]), validated against the
        # current states (or the params); ``anchors`` place each new buffer in memory (see cadagrad._state).
        # With ``convert``, a float32 or 16-bit array is first cast to its state's dtype (the rules page,
        # "16-bit state": widened exactly, or rounded to nearest even).
        name = f"state_dict[{key!r}]"
        dtypes = self._state_dtypes()
        if saved is None and step == 0:
            saved = [np.zeros(p.shape, dtype=dtype) for p, dtype in zip(self._params, dtypes)]
        elif not isinstance(saved, (list, tuple)) or len(saved) != len(self._params):
            raise ValueError(f"{name}: expected a list of {_checks.count(len(self._params), 'array')}")
        shapes = self._states if self._states is not None else self._params
        if convert:
            saved = [_checks.converted_state(array, dtype) for array, dtype in zip(saved, dtypes)]
        for i, (array, like, dtype) in enumerate(zip(saved, shapes, dtypes)):
            _checks.check_state_array(array, like.shape, dtype, f"{name}[{i}]", f"the state of params[{i}]",
                                      self._state_dtype)
        return [
            State.from_array(anchor, like.shape, value, array, dtype)
            for anchor, like, array, dtype in zip(anchors, shapes, saved, dtypes)
        ]

    def load_state_dict(self, state_dict: dict[str, Any], *, convert_state: bool = False) -> None:
        """Restore a state dict made by ``state_dict()`` of an optimizer over params of the same shapes.

        Everything is validated (keys, step, hyperparameters, every array's shape and dtype) before
        anything changes; on error the optimizer is left as it was.

        The state of a float16/bfloat16 param must be in this optimizer's ``state_dtype`` (float32, or
        the param's dtype with ``state_dtype="param"``). A state dict saved in the other mode is refused
        unless ``convert_state=True``, which converts it: a 16-bit state is widened to float32 exactly, a
        float32 state is rounded to the param's dtype to nearest even (a lossy step, chosen explicitly).

        Memory: new state buffers, written only where a row of the saved array is neither all zero nor
        the initial value (a table trained by row steps costs its touched rows), or in full when more
        than half the rows differ. One read of every saved array.

        Parameters
        ----------
        state_dict : dict
            A dict as returned by :meth:`state_dict`, of an optimizer of the same class.
        convert_state : bool, default False
            Convert 16-bit params' state saved in the other ``state_dtype`` mode, as above.

        Raises
        ------
        ValueError, TypeError
            If anything in ``state_dict`` does not fit these params; nothing is changed.
        """
        convert = _checks.check_flag(convert_state, "convert_state")
        _checks.check_state_dict(
            state_dict,
            optimizer=type(self).__name__,
            state_key=self._state_keys(),
            hyperparameter_names=self._hyperparameter_names,
            optional_names=tuple(self._optional_hyperparameters),
        )
        saved_hyper = {**self._optional_hyperparameters, **state_dict["hyperparameters"]}
        precision = {name: saved_hyper.pop(name) for name in self._optional_hyperparameters}
        hyper = self._validate_hyperparameters(saved_hyper)
        if precision:
            hyper.update(self._validate_precision(precision, convert))
        step = int(state_dict["step"])
        saved = state_dict[self._state_key]
        key = f"state_dict[{self._state_key!r}]"
        if self._needs_state(hyper):
            buffers = self._restored(saved, self._state_key, step, self._initial_value(hyper), self._params,
                                     convert)
        elif saved is not None:
            raise ValueError(f"{key}: expected None (these hyperparameters keep no state)")
        else:
            buffers = None
        buffers2 = None
        if self._second_state_key is not None:       # placed after the first states (cadagrad._state)
            key2 = self._second_state_key
            buffers2 = self._restored(state_dict[key2], key2, step, 0.0, [b.array for b in buffers], convert)
        states = None if buffers is None else [b.array for b in buffers]
        states2 = None if buffers2 is None else [b.array for b in buffers2]
        engine = StepEngine(
            self._params, states, self._single, self._explain, step, self._row_widths(), states2,
            self._kinds(),
        )
        self._set_hyperparameters(hyper)          # nothing could fail from here on
        self._set_states(buffers, buffers2)
        self._engine = engine

    def _validate_precision(self, values: dict, convert: bool) -> dict:
        # A state dict's state_dtype, stochastic_rounding and seed. The state dtype is fixed at
        # construction: another one is refused unless the state is converted.
        name = "state_dict['hyperparameters']"
        try:
            checked = _checks.precision_options(
                values["state_dtype"], values["stochastic_rounding"], values["seed"], self._params
            )
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if checked["state_dtype"] != self._state_dtype and not convert:
            raise ValueError(
                f"{name}['state_dtype']: expected {self._state_dtype!r} (fixed at construction), got "
                f"{checked['state_dtype']!r}; load_state_dict(..., convert_state=True) converts the saved "
                "state"
            )
        return {**checked, "state_dtype": self._state_dtype}

    def save(self, path: str | os.PathLike) -> None:
        """Write the optimizer's state to ``path`` (``.npz``), atomically; see :mod:`cadagrad.checkpoint`.

        Memory: what :meth:`state_dict` costs (the file is written in chunks from its copies); the file
        holds every row of every state buffer, touched or not.

        Parameters
        ----------
        path : str or os.PathLike
            Where to write; an existing file is replaced only once the new one is complete.
        """
        checkpoint.save_state_dict(self.state_dict(), self._state_keys(), path)

    def load(self, path: str | os.PathLike, *, convert_state: bool = False) -> None:
        """Restore a checkpoint written by :meth:`save`, validated as :meth:`load_state_dict` does.

        A truncated or corrupted file raises ValueError naming the path; the optimizer is unchanged.

        Parameters
        ----------
        path : str or os.PathLike
            A file written by :meth:`save`.
        convert_state : bool, default False
            As for :meth:`load_state_dict`.
        """
        saved = checkpoint.load_state_dict(path, self._state_keys())
        self.load_state_dict(saved, convert_state=convert_state)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._hyperparameter_names)
        return f"{type(self).__name__}({len(self._params)} params, {self._engine.size} elements, {shown})"


class AccumulatorOptimizer(Optimizer):
    """An optimizer whose state is the accumulator ``G`` of squared gradients, started at the
    ``initial_accumulator_value`` hyperparameter (Adagrad, ProximalAdagrad, AdagradDA)."""

    @staticmethod
    def _needs_state(hyper: dict) -> bool:
        return True

    @staticmethod
    def _initial_value(hyper: dict) -> float:
        return hyper["initial_accumulator_value"]

    @property
    def sums(self) -> list[np.ndarray]:
        """The accumulators ``G``, one per param (the optimizer's own arrays, not copies).

        Each has its param's shape, or with Adagrad's ``rowwise=True`` one element per row.

        Notes
        -----
        Large accumulators are lazy: rows no step has touched take no memory. With a non-zero
        ``initial_accumulator_value``, reading this property first writes that value into every row not
        touched yet, so the whole accumulator takes memory from then on (as much as the param). With 0,
        it costs nothing.
        """
        return [b.materialize() for b in self._buffers]
