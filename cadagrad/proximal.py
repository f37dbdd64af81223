"""Proximal AdaGrad and AdaGrad dual averaging with l1 and l2: optimizers that step NumPy params in place.

TensorFlow's ``ProximalAdagradOptimizer`` and ``AdagradDAOptimizer``, exact (IEEE square root and
division, no eps) and bit-identical to :mod:`cadagrad.reference`. With ``l1 > 0`` both give exact zeros.
"""

from __future__ import annotations

import numpy as np

from . import _checks
from ._base import AccumulatorOptimizer, Hyperparameter
from ._checks import Params
from ._state import new_state


class _Proximal(AccumulatorOptimizer):
    """What ProximalAdagrad and AdagradDA share: their hyperparameters, accumulators and row steps."""

    _state_key = "sum"
    _hyperparameter_names = ("lr", "l1", "l2", "initial_accumulator_value")
    lr = Hyperparameter(_checks.check_positive)
    l1 = Hyperparameter(_checks.check_number)
    l2 = Hyperparameter(_checks.check_number)
    initial_accumulator_value = Hyperparameter()

    def __init__(
        self,
        params: Params,
        lr: float,
        *,
        l1: float = 0.0,
        l2: float = 0.0,
        initial_accumulator_value: float = _checks.PROXIMAL_INITIAL_ACCUMULATOR,
        num_threads: int | None = None,
    ) -> None:
        hyper = _checks.proximal_hyperparameters(
            lr=lr, l1=l1, l2=l2, initial_accumulator_value=initial_accumulator_value
        )
        self._set_params(params, num_threads)
        self._set_hyperparameters(hyper)
        sums = [new_state(p, p.shape, hyper["initial_accumulator_value"]) for p in self._params]
        # AdagradDA's gradient sums start at 0; each is placed after its accumulator (see cadagrad._state).
        grad_sums = None
        if self._second_state_key is not None:
            grad_sums = [new_state(s.array, s.array.shape, 0.0) for s in sums]
        self._set_states(sums, grad_sums)
        self._build_engine(0)

    def _validate_hyperparameters(self, values: dict) -> dict:
        return _checks.proximal_hyperparameters(**values)

    def _engine_rows(self, i: int, indices: np.ndarray, rows: np.ndarray, assume_unique: bool) -> int:
        raise NotImplementedError

    def _engine_step(self, grads: Params, skip_if_nonfinite: bool) -> bool:
        raise NotImplementedError

    def step_rows(
        self, indices: np.ndarray, rows: np.ndarray, *, param: int = 0, assume_unique: bool = False
    ) -> None:
        """Take one step on some rows of a 2-D param (an embedding table), leaving the others untouched.

        Costs O(k x D) for k indices, whatever the number of rows V. Counts as one step of the optimizer
        (``step_count`` advances). A row named for the first time gets ``initial_accumulator_value``
        written into its accumulator just before the update.

        Parameters
        ----------
        indices : ndarray of int32 or int64, shape (k,)
            Rows of ``params[param]`` in ``[0, V)``. Duplicates are summed first (in order of
            appearance, from zero).
        rows : ndarray, shape (k, D)
            The gradient rows, in the param's dtype.
        param : int, default 0
            Which param (an index into ``params``).
        assume_unique : bool, default False
            Promise that ``indices`` has no duplicates, skipping the grouping pass. With duplicates
            anyway, the result is unspecified.

        Raises
        ------
        ValueError, TypeError
            For a bad index, shape or dtype; nothing is written.
        """
        i = self._check_rows(indices, rows, param)
        self._ready_rows(i, indices)
        self._raise_if_out_of_range(self._engine_rows(i, indices, rows, assume_unique), indices, i)

    def step(self, grads: Params, *, skip_if_nonfinite: bool = False) -> bool:
        """Take one step: update the params and their state in place.

        Parameters
        ----------
        grads : ndarray or sequence of ndarray
            Same structure, shapes and dtypes as ``params``. A grad may be its own param; it may not
            share memory with the optimizer's state. Every grad is checked before anything is written.
        skip_if_nonfinite : bool, default False
            First scan every grad for NaN and infinity and, if one is found, skip the whole step: params,
            state and the step count stay as they were. Without it, non-finite values propagate.

        Returns
        -------
        bool
            True if the step was taken, False if it was skipped.
        """
        if skip_if_nonfinite.__class__ is not bool:
            skip_if_nonfinite = _checks.check_flag(skip_if_nonfinite, "skip_if_nonfinite")
        if self._pending and not self._ready_for_dense_step(grads, skip_if_nonfinite):
            return False
        return self._engine_step(grads, skip_if_nonfinite)


class ProximalAdagrad(_Proximal):
    r"""Proximal AdaGrad with l1 and l2 (TensorFlow's ``ProximalAdagradOptimizer``), exact, in place.

    At every step, for every element, in this order and in the array's dtype (``lr``, ``l1`` and ``l2``
    each rounded to it)::

        G   = G + g * g                                         (G starts at initial_accumulator_value)
        lrt = lr / sqrt(G)
        v   = p - lrt * g
        v   = sign(v) * max(|v| - lrt * l1, 0)                      only if l1 > 0
        v   = v / (1 + lrt * l2)                                    only if l2 > 0
        p   = v

    ``sign`` and ``max`` are NumPy's (``sign(-0.0)`` is +0.0; NaN propagates). With ``l1 > 0`` an element
    whose ``|v|`` is at most ``lrt * l1`` becomes an exact zero (-0.0 where ``v < 0``). The rules page of
    the docs (docs/rules.rst, "Proximal AdaGrad") is the full statement.

    Parameters
    ----------
    params : ndarray or sequence of ndarray
        Writable, C-contiguous float32/float64 arrays, updated in place; no two may share memory.
    lr : float
        Learning rate (required, > 0).
    l1 : float, default 0
        l1 penalty (>= 0); > 0 gives exact zeros.
    l2 : float, default 0
        l2 penalty (>= 0).
    initial_accumulator_value : float, default 0.1
        Start value of the accumulator ``G`` (> 0, as TensorFlow's; there is no eps).
    num_threads : int or None, default None
        Threads of a large step; None asks ``cadagrad.get_num_threads()`` at every step.

    Notes
    -----
    ``lr``, ``l1``, ``l2`` and ``num_threads`` may be changed between steps (validated);
    ``initial_accumulator_value`` is fixed. The GIL is released while a step runs.

    Examples
    --------
    >>> import numpy as np, cadagrad
    >>> w = np.array([0.5, -0.01, 0.2], dtype=np.float32)
    >>> opt = cadagrad.ProximalAdagrad(w, lr=0.1, l1=0.5)
    >>> opt.step(np.array([0.1, 0.0, -0.1], dtype=np.float32))
    True
    >>> bool(w[1] == 0)
    True
    """

    def _engine_step(self, grads: Params, skip_if_nonfinite: bool) -> bool:
        return self._engine.proximal_adagrad(
            grads, self._lr, self._l1, self._l2, self._num_threads or 0, skip_if_nonfinite
        )

    def _engine_rows(self, i: int, indices: np.ndarray, rows: np.ndarray, assume_unique: bool) -> int:
        return self._engine.proximal_adagrad_rows(
            i, indices, rows, assume_unique, self._lr, self._l1, self._l2, self._num_threads or 0
        )


class AdagradDA(_Proximal):
    r"""AdaGrad dual averaging with l1 and l2 (TensorFlow's ``AdagradDAOptimizer``), exact, in place.

    Keeps two sums per element, ``S`` of the gradients (from 0) and ``G`` of their squares (from
    ``initial_accumulator_value``), and recomputes the param from them. At step ``t`` (1-based, ``T = t``;
    row steps count too), for every element, in this order and in the array's dtype::

        l1T   = l1 * T                   (once per step, in double, then rounded to the dtype)
        l2Tlr = (l2 * T) * lr            (once per step, in double, then rounded to the dtype)
        S = S + g
        G = G + g * g
        p = -sign(S) * lr * max(|S| - l1T, 0) / (l2Tlr + sqrt(G))     if l1 > 0
        p = -lr * S / (l2Tlr + sqrt(G))                                otherwise

    ``lr`` is rounded to the dtype; products and the quotient go left to right. The previous ``p`` does
    not enter. With ``l1 > 0`` an element whose ``|S|`` is at most ``l1 * T`` is an exact zero (-0.0 where
    ``S >= 0``). The rules page of the docs (docs/rules.rst, "AdaGrad dual averaging") is the full
    statement.

    Parameters
    ----------
    params : ndarray or sequence of ndarray
        Writable, C-contiguous float32/float64 arrays, updated in place; no two may share memory.
    lr : float
        Learning rate (required, > 0).
    l1 : float, default 0
        l1 penalty (>= 0); > 0 gives exact zeros.
    l2 : float, default 0
        l2 penalty (>= 0).
    initial_accumulator_value : float, default 0.1
        Start value of ``G`` (> 0; TensorFlow's ``initial_gradient_squared_accumulator_value``).
    num_threads : int or None, default None
        Threads of a large step; None asks ``cadagrad.get_num_threads()`` at every step.

    Notes
    -----
    ``lr``, ``l1``, ``l2`` and ``num_threads`` may be changed between steps (validated);
    ``initial_accumulator_value`` is fixed. State memory is twice the params'. ``state_dict()`` holds
    ``"sum"`` (``G``) and ``"grad_sum"`` (``S``).

    Examples
    --------
    >>> import numpy as np, cadagrad
    >>> w = np.zeros(3, dtype=np.float32)
    >>> opt = cadagrad.AdagradDA(w, lr=0.1, l1=0.5)
    >>> opt.step(np.array([1.0, 0.1, -1.0], dtype=np.float32))
    True
    >>> bool(w[1] == 0), bool(w[0] < 0 < w[2])
    (True, True)
    """

    _second_state_key = "grad_sum"

    @property
    def grad_sums(self) -> list[np.ndarray]:
        """The gradient sums ``S``, one per param (the optimizer's own arrays, not copies)."""
        return [b.materialize() for b in self._buffers2]

    def _engine_step(self, grads: Params, skip_if_nonfinite: bool) -> bool:
        return self._engine.adagrad_da(
            grads, self._lr, self._l1, self._l2, self._num_threads or 0, skip_if_nonfinite
        )

    def _engine_rows(self, i: int, indices: np.ndarray, rows: np.ndarray, assume_unique: bool) -> int:
        return self._engine.adagrad_da_rows(
            i, indices, rows, assume_unique, self._lr, self._l1, self._l2, self._num_threads or 0
        )
