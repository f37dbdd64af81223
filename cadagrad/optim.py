"""AdaGrad and SGD optimizers that own their state and step NumPy params in place."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import _checks, checkpoint
from ._checks import Params
from ._kernels import StepEngine
from ._state import State, new_state


class _Hyperparameter:
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


class _Optimizer:
    """What Adagrad and SGD share: the params, the step engine, the step count and state dicts."""

    _state_key: str
    _hyperparameter_names: tuple[str, ...]

    num_threads = _Hyperparameter(lambda value, name: _checks.check_num_threads(value, name) or None)

    def _set_params(self, params: Params, num_threads: int | None) -> None:
        self._params, self._single = _checks.check_params(params)
        self._layout = [(p.size, p.dtype) for p in self._params]
        self._num_threads = _checks.check_num_threads(num_threads) or None
        self._states: list[np.ndarray] | None = None
        self._buffers: list[State] | None = None     # the states' allocations, lazily filled
        self._pending = False                        # some buffer still wants ready_all() before a dense step

    def _set_states(self, buffers: list[State] | None) -> None:
        self._buffers = buffers
        self._states = None if buffers is None else [b.array for b in buffers]
        self._pending = buffers is not None and any(b.pending for b in buffers)

    def _ready_for_dense_step(self, grads: object, skip_if_nonfinite: bool) -> bool:
        # Before the first dense step over lazy state: validate first, so a rejected step writes
        # nothing (not even the initial value), then advise huge pages and fill what is unfilled.
        self._explain(grads)
        if skip_if_nonfinite and self._engine.has_nonfinite(grads, self._num_threads or 0):
            return False
        for buffer in self._buffers:
            buffer.ready_all()
        self._pending = False
        return True

    def _ready_rows(self, param: int, indices: np.ndarray) -> None:
        if self._pending:
            self._buffers[param].ready_rows(indices)

    def _set_hyperparameters(self, values: dict) -> None:
        for name, value in values.items():
            setattr(self, "_" + name, value)

    def _row_widths(self) -> list[int] | None:
        return None

    def _build_engine(self, steps: int) -> None:
        self._engine = StepEngine(
            self._params, self._states, self._single, self._explain, steps, self._row_widths()
        )

    def _explain(self, grads: object) -> None:
        _checks.explain_changed(self._params, self._states, self._layout)
        _checks.check_grads(grads, self._params, self._single, self._states)

    def _check_rows(self, indices: object, rows: object, param: object) -> int:
        _checks.explain_changed(self._params, self._states, self._layout)
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
        return {
            "optimizer": type(self).__name__,
            "version": _checks.STATE_DICT_VERSION,
            "step": self.step_count,
            "hyperparameters": {name: getattr(self, name) for name in self._hyperparameter_names},
            self._state_key: None if self._buffers is None else [b.copy() for b in self._buffers],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state dict made by ``state_dict()`` of an optimizer over params of the same shapes.

        Everything is validated (keys, step, hyperparameters, every array's shape and dtype) before
        anything changes; on error the optimizer is left as it was.

        Memory: new state buffers, written only where a row of the saved array is neither all zero nor
        the initial value (a table trained by row steps costs its touched rows), or in full when more
        than half the rows differ. One read of every saved array.

        Parameters
        ----------
        state_dict : dict
            A dict as returned by :meth:`state_dict`, of an optimizer of the same class.

        Raises
        ------
        ValueError, TypeError
            If anything in ``state_dict`` does not fit these params; nothing is changed.
        """
        _checks.check_state_dict(
            state_dict,
            optimizer=type(self).__name__,
            state_key=self._state_key,
            hyperparameter_names=self._hyperparameter_names,
        )
        hyper = self._validate_hyperparameters(state_dict["hyperparameters"])
        step = int(state_dict["step"])
        saved = state_dict[self._state_key]
        key = f"state_dict[{self._state_key!r}]"
        if self._needs_state(hyper):
            if saved is None and step == 0:
                saved = [np.zeros(p.shape, dtype=p.dtype) for p in self._params]
            elif not isinstance(saved, (list, tuple)) or len(saved) != len(self._params):
                raise ValueError(f"{key}: expected a list of {_checks.count(len(self._params), 'array')}")
            shapes = self._states if self._states is not None else self._params
            for i, (array, like) in enumerate(zip(saved, shapes)):
                _checks.check_like(array, like, f"{key}[{i}]", f"the state of params[{i}]", writable=False)
            value = self._initial_value(hyper)
            buffers = [
                State.from_array(param, like.shape, value, array)
                for param, like, array in zip(self._params, shapes, saved)
            ]
        elif saved is not None:
            raise ValueError(f"{key}: expected None (these hyperparameters keep no state)")
        else:
            buffers = None
        states = None if buffers is None else [b.array for b in buffers]
        engine = StepEngine(self._params, states, self._single, self._explain, step, self._row_widths())
        self._set_hyperparameters(hyper)          # nothing could fail from here on
        self._set_states(buffers)
        self._engine = engine

    def save(self, path: str | os.PathLike) -> None:
        """Write the optimizer's state to ``path`` (``.npz``), atomically; see :mod:`cadagrad.checkpoint`.

        Memory: what :meth:`state_dict` costs (the file is written in chunks from its copies); the file
        holds every row of every state buffer, touched or not.

        Parameters
        ----------
        path : str or os.PathLike
            Where to write; an existing file is replaced only once the new one is complete.
        """
        checkpoint.save_state_dict(self.state_dict(), self._state_key, path)

    def load(self, path: str | os.PathLike) -> None:
        """Restore a checkpoint written by :meth:`save`, validated as :meth:`load_state_dict` does.

        A truncated or corrupted file raises ValueError naming the path; the optimizer is unchanged.

        Parameters
        ----------
        path : str or os.PathLike
            A file written by :meth:`save`.
        """
        self.load_state_dict(checkpoint.load_state_dict(path, self._state_key))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._hyperparameter_names)
        return f"{type(self).__name__}({len(self._params)} params, {self._engine.size} elements, {shown})"


class Adagrad(_Optimizer):
    r"""AdaGrad, in place on float32/float64 NumPy arrays, bit-identical to ``cadagrad.reference``.

    At step ``t`` (1-based), for every element, in this order and in the array's dtype::

        g   = -grad if maximize else grad
        g   = g + weight_decay * p                   (only if weight_decay != 0)
        clr = lr / (1 + (t - 1) * lr_decay)          (in double, then cast)
        G   = G + g * g
        d   = sqrt(G) + eps    or, with eps_inside_sqrt,    sqrt(G + eps)
        p   = p - (clr * g) / d

    Parameters
    ----------
    params : ndarray or sequence of ndarray
        Writable, C-contiguous float32/float64 arrays, updated in place; no two may share memory.
    lr : float, default 0.01
        Learning rate.
    lr_decay : float, default 0
        Learning-rate decay as in PyTorch.
    weight_decay : float, default 0
        Coupled L2 penalty added to the gradient.
    initial_accumulator_value : float, default 0
        Start value of the accumulator ``G``.
    eps : float, default 1e-10
        Added to the denominator (0 allowed: then 0/0 gives NaN, as in NumPy).
    eps_inside_sqrt : bool, default False
        ``sqrt(G + eps)`` (Keras 3, optax) instead of ``sqrt(G) + eps`` (PyTorch).
    maximize : bool, default False
        Ascend instead of descend.
    rowwise : bool, default False
        Row-wise AdaGrad (FBGEMM's rule) for 2-D params: one accumulator per row,
        ``G_row = G_row + mean(g_row * g_row)`` (summed left to right), ``sqrt(G_row)`` for the whole row;
        state memory falls by the row width.
    num_threads : int or None, default None
        Threads of a large step; None asks ``cadagrad.get_num_threads()`` at every step.

    Notes
    -----
    ``lr``, ``lr_decay``, ``weight_decay``, ``eps`` and ``num_threads`` may be changed between steps
    (validated); the other options are fixed. Steps on one optimizer from several threads are
    serialized. The GIL is released while a step runs.

    Examples
    --------
    >>> import numpy as np, cadagrad
    >>> w = np.zeros(3, dtype=np.float32)
    >>> opt = cadagrad.Adagrad(w, lr=0.1)
    >>> opt.step(np.array([1.0, -2.0, 0.5], dtype=np.float32))
    True
    >>> w
    array([-0.1,  0.1, -0.1], dtype=float32)
    """

    _state_key = "sum"
    _hyperparameter_names = (
        "lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "eps_inside_sqrt", "maximize",
        "rowwise",
    )
    lr = _Hyperparameter(_checks.check_number)
    lr_decay = _Hyperparameter(_checks.check_number)
    weight_decay = _Hyperparameter(_checks.check_number)
    eps = _Hyperparameter(_checks.check_number)
    initial_accumulator_value = _Hyperparameter()
    eps_inside_sqrt = _Hyperparameter()
    maximize = _Hyperparameter()
    rowwise = _Hyperparameter()

    def __init__(
        self,
        params: Params,
        lr: float = _checks.ADAGRAD_LR,
        *,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = _checks.ADAGRAD_EPS,
        eps_inside_sqrt: bool = False,
        maximize: bool = False,
        rowwise: bool = False,
        num_threads: int | None = None,
    ) -> None:
        hyper = _checks.adagrad_hyperparameters(
            lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, eps=eps,
            eps_inside_sqrt=eps_inside_sqrt, maximize=maximize, rowwise=rowwise,
        )
        self._set_params(params, num_threads)
        if hyper["rowwise"]:
            _checks.check_rowwise_params(self._params, self._single)
        self._set_hyperparameters(hyper)
        self._set_states([
            new_state(p, p.shape[:1] if self._rowwise else p.shape, hyper["initial_accumulator_value"])
            for p in self._params
        ])
        self._build_engine(0)

    def _row_widths(self) -> list[int] | None:
        return [p.shape[1] for p in self._params] if self._rowwise else None

    def _validate_hyperparameters(self, values: dict) -> dict:
        checked = _checks.adagrad_hyperparameters(**values)
        if checked["rowwise"] != self._rowwise:
            raise ValueError(
                f"state_dict['hyperparameters']['rowwise']: expected {self._rowwise} (fixed at construction)"
            )
        return checked

    @staticmethod
    def _needs_state(hyper: dict) -> bool:
        return True

    @staticmethod
    def _initial_value(hyper: dict) -> float:
        return hyper["initial_accumulator_value"]

    @property
    def sums(self) -> list[np.ndarray]:
        """The accumulators ``G``, one per param (the optimizer's own arrays, not copies).

        Each has its param's shape, or with ``rowwise=True`` one element per row.

        Notes
        -----
        Large accumulators are lazy: rows no step has touched take no memory. With a non-zero
        ``initial_accumulator_value``, reading this property first writes that value into every row not
        touched yet, so the whole accumulator takes memory from then on (as much as the param). With 0,
        it costs nothing.
        """
        return [b.materialize() for b in self._buffers]

    def step_rows(
        self, indices: np.ndarray, rows: np.ndarray, *, param: int = 0, assume_unique: bool = False
    ) -> None:
        """Take one step on some rows of a 2-D param (an embedding table), leaving the others untouched.

        Costs O(k x D) for k indices, whatever the number of rows V. Counts as one step of the optimizer
        (``step_count`` and ``lr_decay`` advance). Weight decay, if any, applies to the named rows only.
        A large accumulator takes memory only for rows that steps have named: a row named for the first
        time gets ``initial_accumulator_value`` written into its accumulator just before the update.

        Parameters
        ----------
        indices : ndarray of int32 or int64, shape (k,)
            Rows of ``params[param]`` in ``[0, V)``. Duplicates are summed first (in order of
            appearance, from zero), as PyTorch, TensorFlow and Paddle do.
        rows : ndarray, shape (k, D)
            The gradient rows, in the param's dtype.
        param : int, default 0
            Which param (an index into ``params``).
        assume_unique : bool, default False
            Promise that ``indices`` has no duplicates, skipping the grouping pass. With duplicates
            anyway, the result is unspecified (threads race on the repeated rows).

        Raises
        ------
        ValueError, TypeError
            For a bad index, shape or dtype; nothing is written.
        """
        i = self._check_rows(indices, rows, param)
        self._ready_rows(i, indices)
        bad = self._engine.adagrad_rows(
            i, indices, rows, assume_unique, self._lr, self._lr_decay, self._weight_decay, self._eps,
            self._eps_inside_sqrt, self._maximize, self._num_threads or 0,
        )
        self._raise_if_out_of_range(bad, indices, i)

    def step(self, grads: Params, *, skip_if_nonfinite: bool = False) -> bool:
        """Take one step: update the params and accumulators in place.

        Parameters
        ----------
        grads : ndarray or sequence of ndarray
            Same structure, shapes and dtypes as ``params``. A grad may be its own param; it may not
            share memory with the accumulators. Every grad is checked before anything is written.
        skip_if_nonfinite : bool, default False
            First scan every grad for NaN and infinity (one more read of the grads) and, if one is found,
            skip the whole step: params, accumulators and the step count stay as they were. Without it,
            non-finite values propagate as in NumPy.

        Returns
        -------
        bool
            True if the step was taken, False if it was skipped.
        """
        if skip_if_nonfinite.__class__ is not bool:
            skip_if_nonfinite = _checks.check_flag(skip_if_nonfinite, "skip_if_nonfinite")
        if self._pending and not self._ready_for_dense_step(grads, skip_if_nonfinite):
            return False
        return self._engine.adagrad(
            grads, self._lr, self._lr_decay, self._weight_decay, self._eps,
            self._eps_inside_sqrt, self._maximize, self._num_threads or 0, skip_if_nonfinite,
        )


class SGD(_Optimizer):
    r"""Stochastic gradient descent with momentum, in place, bit-identical to ``cadagrad.reference``.

    At step ``t`` (1-based), for every element, in this order and in the array's dtype::

        g = -grad if maximize else grad
        g = g + weight_decay * p                      (only if weight_decay != 0)
        if momentum != 0:
            buf = g                                    at t = 1
            buf = momentum * buf + (1 - dampening) * g at t > 1
            g   = g + momentum * buf  if nesterov  else  buf
        p = p - lr * g

    Parameters
    ----------
    params : ndarray or sequence of ndarray
        Writable, C-contiguous float32/float64 arrays, updated in place; no two may share memory.
    lr : float
        Learning rate (required).
    momentum : float, default 0
        Momentum factor; 0 keeps no buffers and moves the fewest bytes.
    dampening : float, default 0
        Dampening of the momentum.
    nesterov : bool, default False
        Nesterov momentum (requires momentum > 0 and dampening == 0).
    weight_decay : float, default 0
        Coupled L2 penalty added to the gradient.
    maximize : bool, default False
        Ascend instead of descend.
    num_threads : int or None, default None
        Threads of a large step; None asks ``cadagrad.get_num_threads()`` at every step.

    Notes
    -----
    ``lr``, ``weight_decay`` and ``num_threads`` may be changed between steps; the momentum options are
    fixed at construction.
    """

    _state_key = "momentum_buffer"
    _hyperparameter_names = ("lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize")
    lr = _Hyperparameter(_checks.check_number)
    weight_decay = _Hyperparameter(_checks.check_number)
    momentum = _Hyperparameter()
    dampening = _Hyperparameter()
    nesterov = _Hyperparameter()
    maximize = _Hyperparameter()

    def __init__(
        self,
        params: Params,
        lr: float,
        *,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        maximize: bool = False,
        num_threads: int | None = None,
    ) -> None:
        hyper = _checks.sgd_hyperparameters(
            lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
            weight_decay=weight_decay, maximize=maximize,
        )
        self._set_params(params, num_threads)
        self._set_hyperparameters(hyper)
        if self._needs_state(hyper):
            self._set_states([new_state(p, p.shape, 0.0) for p in self._params])
        self._build_engine(0)

    def _validate_hyperparameters(self, values: dict) -> dict:
        return _checks.sgd_hyperparameters(**values)

    @staticmethod
    def _needs_state(hyper: dict) -> bool:
        return hyper["momentum"] != 0.0

    @staticmethod
    def _initial_value(hyper: dict) -> float:
        return 0.0

    @property
    def momentum_buffers(self) -> list[np.ndarray] | None:
        """The momentum buffers, one per param (the optimizer's own arrays), or None without momentum.

        Their content is meaningful once a step has been taken. Large buffers are lazy (rows no step has
        touched take no memory); reading this property costs nothing.
        """
        return None if self._states is None else list(self._states)

    def step_rows(
        self, indices: np.ndarray, rows: np.ndarray, *, param: int = 0, assume_unique: bool = False
    ) -> None:
        """Take one step on some rows of a 2-D param; the other rows are not touched.

        As :meth:`Adagrad.step_rows`. With momentum this is TensorFlow's lazy rule: only the named rows'
        momentum buffers move; a row named for the first time after step 1 starts from a zero buffer
        (``buf = (1 - dampening) * g``), where a dense step would have decayed it all along.
        """
        i = self._check_rows(indices, rows, param)
        self._ready_rows(i, indices)
        bad = self._engine.sgd_rows(
            i, indices, rows, assume_unique, self._lr, self._weight_decay, self._momentum,
            self._dampening, self._nesterov, self._maximize, self._num_threads or 0,
        )
        self._raise_if_out_of_range(bad, indices, i)

    def step(self, grads: Params, *, skip_if_nonfinite: bool = False) -> bool:
        """Take one step: update the params (and momentum buffers) in place.

        Parameters
        ----------
        grads : ndarray or sequence of ndarray
            Same structure, shapes and dtypes as ``params``. A grad may be its own param; it may not
            share memory with the momentum buffers. Every grad is checked before anything is written.
        skip_if_nonfinite : bool, default False
            As for :meth:`Adagrad.step`: skip the whole step if any grad holds NaN or infinity.

        Returns
        -------
        bool
            True if the step was taken, False if it was skipped.
        """
        if skip_if_nonfinite.__class__ is not bool:
            skip_if_nonfinite = _checks.check_flag(skip_if_nonfinite, "skip_if_nonfinite")
        if self._pending and not self._ready_for_dense_step(grads, skip_if_nonfinite):
            return False
        return self._engine.sgd(
            grads, self._lr, self._weight_decay, self._momentum, self._dampening,
            self._nesterov, self._maximize, self._num_threads or 0, skip_if_nonfinite,
        )
