"""One step of AdaGrad, SGD, proximal AdaGrad or AdaGrad dual averaging on buffers the caller owns.

Every call validates all of its arrays, then runs the same compiled kernels as cadagrad.optim. For a
loop over many small steps, an optimizer object is cheaper: it validates its params once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from . import _checks
from ._checks import Params
from ._kernels import StepEngine


def _engine(
    params: Params,
    grads: Params,
    states: Params | None,
    states_name: str,
    steps: int,
    states2: Params | None = None,
    states2_name: str = "",
    half: bool = False,
) -> StepEngine:
    # states=None only where the rule keeps none (SGD without momentum); AdaGrad always passes its sums.
    # states2: the second state of AdaGrad dual averaging (its gradient sums), else None. half: whether
    # float16/bfloat16 params are accepted (AdaGrad and SGD).
    arrays, single = _checks.check_params(params, half=half)
    state_arrays = None if states is None else _checks.check_states(states, arrays, single, states_name)
    second = None
    if states2 is not None:
        second = _checks.check_second_states(states2, state_arrays, arrays, single, states2_name, states_name)

    def explain(grads: object) -> None:
        _checks.check_grads(grads, arrays, single, state_arrays)
        if second is not None:
            _checks.check_grads(grads, arrays, single, second)

    explain(grads)
    kinds = [_checks.param_kind(p.dtype) for p in arrays]
    return StepEngine(arrays, state_arrays, single, explain, steps, None, second, kinds)


def adagrad_step(
    params: Params,
    grads: Params,
    sums: Params,
    *,
    step: int,
    lr: float = _checks.ADAGRAD_LR,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = _checks.ADAGRAD_EPS,
    eps_inside_sqrt: bool = False,
    maximize: bool = False,
    num_threads: int | None = None,
    skip_if_nonfinite: bool = False,
    stochastic_rounding: bool = False,
    seed: int | None = None,
) -> bool:
    """Apply AdaGrad step ``step`` to ``params`` and their accumulators ``sums``, in place.

    The rule is that of :class:`cadagrad.Adagrad` (see its docstring).

    Parameters
    ----------
    params, grads, sums : ndarray or sequence of ndarray
        Same structure, shapes and float dtype; params and sums are written. A float16/bfloat16 param
        takes a grad in its dtype or float32, and sums in float32 or in its own dtype (the rules page,
        "16-bit state").
    step : int
        The 1-based index of this step (``t``, used by ``lr_decay``).
    lr, lr_decay, weight_decay, eps, eps_inside_sqrt, maximize, num_threads
        As for :class:`cadagrad.Adagrad`.
    skip_if_nonfinite : bool, default False
        Write nothing if any grad holds NaN or infinity.
    stochastic_rounding : bool, default False
        Round float16/bfloat16 params stochastically (the rules page, "Stochastic rounding").
    seed : int, optional
        The generator's seed, required with ``stochastic_rounding``; the bits depend on it, ``step`` and
        the element only.

    Returns
    -------
    bool
        True if the step was taken, False if it was skipped.
    """
    hyper = _checks.adagrad_hyperparameters(
        lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, initial_accumulator_value=0.0, eps=eps,
        eps_inside_sqrt=eps_inside_sqrt, maximize=maximize,
    )
    t = _checks.check_step(step)
    threads = _checks.check_num_threads(num_threads)
    if sums is None:
        raise TypeError("sums: expected the accumulators (an ndarray or a list of them, like params), got None")
    skip = _checks.check_flag(skip_if_nonfinite, "skip_if_nonfinite")
    rounding = _checks.check_step_rounding(stochastic_rounding, seed, _checks.check_params(params, half=True)[0])
    return _engine(params, grads, sums, "sums", t - 1, half=True).adagrad(
        grads, hyper["lr"], hyper["lr_decay"], hyper["weight_decay"], hyper["eps"],
        hyper["eps_inside_sqrt"], hyper["maximize"], threads, skip, rounding,
    )


def sgd_step(
    params: Params,
    grads: Params,
    momentum_buffers: Params | None = None,
    *,
    step: int,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
    num_threads: int | None = None,
    skip_if_nonfinite: bool = False,
    stochastic_rounding: bool = False,
    seed: int | None = None,
) -> bool:
    """Apply SGD step ``step`` to ``params`` (and ``momentum_buffers``), in place.

    The rule is that of :class:`cadagrad.SGD` (see its docstring); at ``step == 1`` the momentum buffers
    are overwritten with the gradient, so their content before the first step does not matter.

    Parameters
    ----------
    params, grads : ndarray or sequence of ndarray
        Same structure, shapes and float dtype; params are written (16-bit params as for
        :func:`adagrad_step`).
    momentum_buffers : ndarray or sequence of ndarray, optional
        Required when ``momentum != 0``; written.
    step : int
        The 1-based index of this step.
    lr, momentum, dampening, nesterov, weight_decay, maximize, num_threads
        As for :class:`cadagrad.SGD`.
    skip_if_nonfinite : bool, default False
        Write nothing if any grad holds NaN or infinity.
    stochastic_rounding, seed : optional
        As for :func:`adagrad_step`.

    Returns
    -------
    bool
        True if the step was taken, False if it was skipped.
    """
    hyper = _checks.sgd_hyperparameters(
        lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
        weight_decay=weight_decay, maximize=maximize,
    )
    t = _checks.check_step(step)
    threads = _checks.check_num_threads(num_threads)
    if hyper["momentum"] != 0.0 and momentum_buffers is None:
        raise ValueError("momentum_buffers: required when momentum != 0")
    buffers = momentum_buffers if hyper["momentum"] != 0.0 else None
    skip = _checks.check_flag(skip_if_nonfinite, "skip_if_nonfinite")
    rounding = _checks.check_step_rounding(stochastic_rounding, seed, _checks.check_params(params, half=True)[0])
    return _engine(params, grads, buffers, "momentum_buffers", t - 1, half=True).sgd(
        grads, hyper["lr"], hyper["weight_decay"], hyper["momentum"], hyper["dampening"],
        hyper["nesterov"], hyper["maximize"], threads, skip, rounding,
    )


def memory_ceiling(
    params: Params,
    states: Params | None = None,
    *,
    states2: Params | None = None,
    num_threads: int | None = None,
) -> Callable[[Params], None]:
    """A kernel with a step's memory traffic and almost no arithmetic: the speed limit of a step.

    ``python -m cadagrad bench`` times it beside the real steps, on the same buffers, to show how close
    a step comes to the memory bandwidth. It is not an optimizer: it changes the buffers' values.

    Parameters
    ----------
    params : ndarray or sequence of ndarray
        As for the steps (float16 and bfloat16 too, as for :class:`cadagrad.Adagrad`: widened and rounded
        back as a step does); written.
    states : ndarray or sequence of ndarray, optional
        One state buffer per param (as ``sums``; float32 for a 16-bit param), for the traffic of a step
        with state; written.
    states2 : ndarray or sequence of ndarray, optional
        A second state buffer per param (as AdaGrad dual averaging's ``grad_sums``; needs ``states``):
        then the traffic is that rule's, reading grads and both states and writing both states and the
        params, which are not read (``s2 = s2 + g``, ``s = s + g * g``, ``p = s2``).
    num_threads : int or None, default None
        As for the steps.

    Returns
    -------
    callable
        ``run(grads)``: reads params, grads (and states), and writes ``p = p + g`` (and ``s = s + g * g``)
        with the thread split of a real step. The arrays are validated once, here; each call re-checks
        only their headers, as an optimizer's step does.
    """
    threads = _checks.check_num_threads(num_threads)
    arrays, single = _checks.check_params(params, half=True)
    state_arrays = None if states is None else _checks.check_states(states, arrays, single, "states")
    second = None
    if states2 is not None:
        if state_arrays is None:
            raise ValueError("states2: needs states")
        if any(_checks.is_16_bit(p.dtype) for p in arrays):
            raise TypeError("states2: not for float16 or bfloat16 params (no 16-bit rule keeps two states)")
        second = _checks.check_second_states(states2, state_arrays, arrays, single, "states2", "states")

    def explain(grads: object) -> None:
        _checks.explain_changed(arrays, state_arrays, [(p.size, p.dtype) for p in arrays])
        _checks.check_grads(grads, arrays, single, state_arrays)
        if second is not None:
            _checks.check_grads(grads, arrays, single, second)

    kinds = [_checks.param_kind(p.dtype) for p in arrays]
    engine = StepEngine(arrays, state_arrays, single, explain, 0, None, second, kinds)
    return lambda grads: engine.ceiling(grads, threads)


def rows_memory_ceiling(
    params: Params, states: Params | None = None, *, num_threads: int | None = None
) -> Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], None]:
    """The speed limit of a sparse-rows step over several tables: its memory traffic, no optimizer.

    Parameters
    ----------
    params : ndarray or sequence of ndarray
        2-D tables ``(V, D)``; the named rows are written.
    states : ndarray or sequence of ndarray, optional
        One state buffer per table, of the table's shape and dtype (as AdaGrad's ``sums``); written.
    num_threads : int or None, default None
        As for the steps.

    Returns
    -------
    callable
        ``run(indices_list, rows_list)``, one ``(indices, rows)`` pair per table as
        :meth:`cadagrad.Adagrad.step_rows` takes them: groups each table's duplicate indices, then reads
        the grad rows and reads and writes the named rows of each table and its state, in the order and
        with the threads of a row step, with trivial arithmetic (a named row grows by its summed grad,
        its state by the grad's square). Every pair is validated first; an out-of-range index raises
        ValueError and nothing is written.
    """
    threads = _checks.check_num_threads(num_threads)
    arrays, single = _checks.check_params(params, half=True)
    state_arrays = None if states is None else _checks.check_states(states, arrays, single, "states")
    layout = [(p.size, p.dtype) for p in arrays]

    def explain(grads: object) -> None:
        _checks.explain_changed(arrays, state_arrays, layout)

    engine = StepEngine(arrays, state_arrays, single, explain, 0)
    tables = tuple(range(len(arrays)))

    def run(indices_list: Sequence[np.ndarray], rows_list: Sequence[np.ndarray]) -> None:
        if len(indices_list) != len(arrays) or len(rows_list) != len(arrays):
            raise ValueError(f"expected one (indices, rows) pair per table ({len(arrays)})")
        for i, (indices, rows) in enumerate(zip(indices_list, rows_list)):
            _checks.check_rows(indices, rows, i, arrays, state_arrays)
        bad = engine.rows_ceiling(indices_list, rows_list, tables, False, threads)
        if bad >= 0:
            position, table = divmod(bad, len(arrays))
            raise _checks.index_out_of_range(indices_list[table], position, table, arrays[table].shape[0])

    return run


def proximal_adagrad_step(
    params: Params,
    grads: Params,
    sums: Params,
    *,
    lr: float,
    l1: float = 0.0,
    l2: float = 0.0,
    num_threads: int | None = None,
    skip_if_nonfinite: bool = False,
) -> bool:
    """Apply one proximal AdaGrad step to ``params`` and their accumulators ``sums``, in place.

    The rule is that of :class:`cadagrad.ProximalAdagrad` (see its docstring); it does not depend on the
    step count. Start ``sums`` at a value > 0 (the optimizer's default is 0.1).

    Parameters
    ----------
    params, grads, sums : ndarray or sequence of ndarray
        Same structure, shapes and float dtype; params and sums are written.
    lr, l1, l2, num_threads
        As for :class:`cadagrad.ProximalAdagrad`.
    skip_if_nonfinite : bool, default False
        Write nothing if any grad holds NaN or infinity.

    Returns
    -------
    bool
        True if the step was taken, False if it was skipped.
    """
    hyper = _checks.proximal_hyperparameters(
        lr=lr, l1=l1, l2=l2, initial_accumulator_value=_checks.PROXIMAL_INITIAL_ACCUMULATOR
    )
    threads = _checks.check_num_threads(num_threads)
    skip = _checks.check_flag(skip_if_nonfinite, "skip_if_nonfinite")
    if sums is None:
        raise TypeError("sums: expected the accumulators (an ndarray or a list of them), got None")
    return _engine(params, grads, sums, "sums", 0).proximal_adagrad(
        grads, hyper["lr"], hyper["l1"], hyper["l2"], threads, skip
    )


def adagrad_da_step(
    params: Params,
    grads: Params,
    grad_sums: Params,
    sums: Params,
    *,
    step: int,
    lr: float,
    l1: float = 0.0,
    l2: float = 0.0,
    num_threads: int | None = None,
    skip_if_nonfinite: bool = False,
) -> bool:
    """Apply AdaGrad dual-averaging step ``step`` (``T``) to ``params``, ``grad_sums`` and ``sums``, in place.

    The rule is that of :class:`cadagrad.AdagradDA` (see its docstring). Start ``grad_sums`` at 0 and
    ``sums`` at a value > 0 (the optimizer's default is 0.1). The params are written, never read.

    Parameters
    ----------
    params, grads, grad_sums, sums : ndarray or sequence of ndarray
        Same structure, shapes and float dtype; params, grad_sums (``S``) and sums (``G``) are written.
    step : int
        The 1-based index of this step (``T`` of the rule).
    lr, l1, l2, num_threads
        As for :class:`cadagrad.AdagradDA`.
    skip_if_nonfinite : bool, default False
        Write nothing if any grad holds NaN or infinity.

    Returns
    -------
    bool
        True if the step was taken, False if it was skipped.
    """
    hyper = _checks.proximal_hyperparameters(
        lr=lr, l1=l1, l2=l2, initial_accumulator_value=_checks.PROXIMAL_INITIAL_ACCUMULATOR
    )
    t = _checks.check_step(step)
    threads = _checks.check_num_threads(num_threads)
    skip = _checks.check_flag(skip_if_nonfinite, "skip_if_nonfinite")
    for value, name in ((grad_sums, "grad_sums"), (sums, "sums")):
        if value is None:
            raise TypeError(f"{name}: expected an ndarray or a list of them, like params, got None")
    return _engine(params, grads, sums, "sums", t - 1, grad_sums, "grad_sums").adagrad_da(
        grads, hyper["lr"], hyper["l1"], hyper["l2"], threads, skip
    )


__all__ = [
    "adagrad_step", "sgd_step", "proximal_adagrad_step", "adagrad_da_step", "memory_ceiling", "rows_memory_ceiling",
]

