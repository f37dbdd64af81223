"""AdaGrad and SGD optimizers that own their state and step NumPy params in place."""

from __future__ import annotations

import numpy as np

from . import _checks
from ._base import AccumulatorOptimizer, Hyperparameter, Optimizer
from ._checks import Params
from ._state import new_state


class Adagrad(AccumulatorOptimizer):
    r"""AdaGrad, in place on float32/float64/float16/bfloat16 NumPy arrays, bit-identical to
    ``cadagrad.reference``.

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
        Writable, C-contiguous float32, float64, float16 or bfloat16 (``ml_dtypes.bfloat16``) arrays,
        updated in place; no two may share memory. Lists may mix dtypes.
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
    state_dtype : {None, "param"}, default None
        The dtype of the state of float16/bfloat16 params: float32 (None), or the param's own dtype
        (``"param"``, as ``torch.optim`` keeps it), which halves the state's memory at a cost in
        accuracy (the rules page, "16-bit state"). float32/float64 params keep state in their dtype.
    stochastic_rounding : bool, default False
        Round float16/bfloat16 params stochastically rather than to nearest, so that updates smaller
        than half a unit in the last place move them in expectation (the rules page, "Stochastic
        rounding"). Refused if no param is 16-bit.
    seed : int or None, default None
        The seed (0 to 2**64 - 1) of stochastic rounding's generator, whose bits depend on the seed,
        the step and the element only; None draws one (recorded in :meth:`state_dict`).
    num_threads : int or None, default None
        Threads of a large step; None asks ``cadagrad.get_num_threads()`` at every step.

    Notes
    -----
    A float16 or bfloat16 param keeps a float32 accumulator by default; each step widens ``p``,
    ``grad`` (and a 16-bit accumulator) to float32, applies the rule above in float32 and rounds ``p``
    back once, to nearest even or stochastically, and a 16-bit accumulator to nearest even (the rules
    page, "16-bit params"). Its grads (and gradient rows) may be in its dtype or float32.

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
    _accepts_16_bit = True
    _optional_hyperparameters = _checks.PRECISION_DEFAULTS
    _hyperparameter_names = (
        "lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "eps_inside_sqrt", "maximize",
        "rowwise", *_checks.PRECISION_DEFAULTS,
    )
    lr = Hyperparameter(_checks.check_number)
    lr_decay = Hyperparameter(_checks.check_number)
    weight_decay = Hyperparameter(_checks.check_number)
    eps = Hyperparameter(_checks.check_number)
    initial_accumulator_value = Hyperparameter()
    eps_inside_sqrt = Hyperparameter()
    maximize = Hyperparameter()
    rowwise = Hyperparameter()
    state_dtype = Hyperparameter()
    stochastic_rounding = Hyperparameter()
    seed = Hyperparameter()

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
        state_dtype: str | None = None,
        stochastic_rounding: bool = False,
        seed: int | None = None,
        num_threads: int | None = None,
    ) -> None:
        hyper = _checks.adagrad_hyperparameters(
            lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, eps=eps,
            eps_inside_sqrt=eps_inside_sqrt, maximize=maximize, rowwise=rowwise,
        )
        self._set_params(params, num_threads)
        hyper.update(_checks.precision_options(state_dtype, stochastic_rounding, seed, self._params))
        if hyper["rowwise"]:
            _checks.check_rowwise_params(self._params, self._single)
        self._set_hyperparameters(hyper)
        self._set_states([
            new_state(p, p.shape[:1] if self._rowwise else p.shape, hyper["initial_accumulator_value"], dtype)
            for p, dtype in zip(self._params, self._state_dtypes())
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
            The gradient rows, in the param's dtype (or float32 for a float16/bfloat16 param).
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
            self._eps_inside_sqrt, self._maximize, self._num_threads or 0, self._rounding_seed(),
        )
        self._raise_if_out_of_range(bad, indices, i)

    def step(self, grads: Params, *, skip_if_nonfinite: bool = False) -> bool:
        """Take one step: update the params and accumulators in place.

        Parameters
        ----------
        grads : ndarray or sequence of ndarray
            Same structure, shapes and dtypes as ``params`` (float32 also for a float16/bfloat16 param).
            A grad may be its own param; it may not share memory with the accumulators. Every grad is
            checked before anything is written.
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
            self._rounding_seed(),
        )


class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum, in place, bit-identical to ``cadagrad.reference``.

    Takes float32/float64 params, and float16/bfloat16 params with float32 momentum buffers (as for
    :class:`Adagrad`).

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
        Writable, C-contiguous float32, float64, float16 or bfloat16 (``ml_dtypes.bfloat16``) arrays,
        updated in place; no two may share memory. Lists may mix dtypes.
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
    state_dtype : {None, "param"}, default None
        The dtype of the state of float16/bfloat16 params: float32 (None), or the param's own dtype
        (``"param"``, as ``torch.optim`` keeps it), which halves the state's memory at a cost in
        accuracy (the rules page, "16-bit state"). float32/float64 params keep state in their dtype.
    stochastic_rounding : bool, default False
        Round float16/bfloat16 params stochastically rather than to nearest, so that updates smaller
        than half a unit in the last place move them in expectation (the rules page, "Stochastic
        rounding"). Refused if no param is 16-bit.
    seed : int or None, default None
        The seed (0 to 2**64 - 1) of stochastic rounding's generator, whose bits depend on the seed,
        the step and the element only; None draws one (recorded in :meth:`state_dict`).
    num_threads : int or None, default None
        Threads of a large step; None asks ``cadagrad.get_num_threads()`` at every step.

    Notes
    -----
    ``lr``, ``weight_decay`` and ``num_threads`` may be changed between steps; the momentum and
    precision options are fixed at construction.
    """

    _state_key = "momentum_buffer"
    _accepts_16_bit = True
    _optional_hyperparameters = _checks.PRECISION_DEFAULTS
    _hyperparameter_names = (
        "lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize", *_checks.PRECISION_DEFAULTS,
    )
    lr = Hyperparameter(_checks.check_number)
    weight_decay = Hyperparameter(_checks.check_number)
    momentum = Hyperparameter()
    dampening = Hyperparameter()
    nesterov = Hyperparameter()
    maximize = Hyperparameter()
    state_dtype = Hyperparameter()
    stochastic_rounding = Hyperparameter()
    seed = Hyperparameter()

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
        state_dtype: str | None = None,
        stochastic_rounding: bool = False,
        seed: int | None = None,
        num_threads: int | None = None,
    ) -> None:
        hyper = _checks.sgd_hyperparameters(
            lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
            weight_decay=weight_decay, maximize=maximize,
        )
        self._set_params(params, num_threads)
        hyper.update(_checks.precision_options(state_dtype, stochastic_rounding, seed, self._params))
        self._set_hyperparameters(hyper)
        if self._needs_state(hyper):
            self._set_states(
                [new_state(p, p.shape, 0.0, dtype) for p, dtype in zip(self._params, self._state_dtypes())]
            )
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
            self._dampening, self._nesterov, self._maximize, self._num_threads or 0, self._rounding_seed(),
        )
        self._raise_if_out_of_range(bad, indices, i)

    def step(self, grads: Params, *, skip_if_nonfinite: bool = False) -> bool:
        """Take one step: update the params (and momentum buffers) in place.

        Parameters
        ----------
        grads : ndarray or sequence of ndarray
            Same structure, shapes and dtypes as ``params`` (float32 also for a float16/bfloat16 param).
            A grad may be its own param; it may not share memory with the momentum buffers. Every grad is
            checked before anything is written.
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
            self._nesterov, self._maximize, self._num_threads or 0, skip_if_nonfinite, self._rounding_seed(),
        )
