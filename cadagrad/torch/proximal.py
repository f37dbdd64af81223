"""``cadagrad.torch.ProximalAdagrad`` and ``cadagrad.torch.AdagradDA``: TensorFlow's proximal optimizers
for PyTorch params, dense and sparse grads, with the bits of ``cadagrad.ProximalAdagrad``/``AdagradDA``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import _checks
from .._state import State
from ._engine import (
    Cohort,
    EngineOptimizer,
    ParamsT,
    Plan,
    Tables,
    check_tensor,
    increment_version,
    scalar,
    step_dtype,
)

__all__ = ["ProximalAdagrad", "AdagradDA"]

_COMMON_DOC = """
    Parameters
    ----------
    params : iterable of Tensor, of dict, or of (name, Tensor)
        CPU, dense, contiguous float32/float64 tensors, or param groups (dicts with ``"params"`` and
        per-group hyperparameters), as for :class:`torch.optim.Optimizer`. float16 and bfloat16 params
        are refused (a TypeError naming the param, nothing changed): unlike Adagrad and SGD, these rules
        have no 16-bit kernels.
    lr : float or 1-element Tensor
        Learning rate (required, > 0); read from ``param_groups`` at every step (schedulers may change it).
    l1 : float, default 0
        l1 penalty (>= 0); > 0 gives exact zeros.
    l2 : float, default 0
        l2 penalty (>= 0).
    initial_accumulator_value : float, default 0.1
        Start value of the accumulator ``G`` (> 0; a group's own value applies to its params).
    num_threads : int or None, default None
        Threads of a large step; None asks ``cadagrad.get_num_threads()`` at every step.

    Notes
    -----
    **Sparse grads** (``nn.Embedding`` / ``nn.EmbeddingBag`` with ``sparse=True``) update only the rows they
    name: duplicates summed from zero in order of appearance, then the rule once per distinct row, bit for
    bit ``step_rows`` of the NumPy class on ``grad._indices()[0]`` and ``grad._values()``. State of 4 MiB
    or more is lazy, as :class:`cadagrad.torch.Adagrad`'s (its docstring says what reading it costs).
    ``state[p]["step"]`` counts the param's own steps, as in :class:`cadagrad.torch.Adagrad`.

    Examples
    --------
    >>> import torch, cadagrad.torch
    >>> bag = torch.nn.EmbeddingBag(1000, 16, mode="sum", sparse=True)
    >>> opt = cadagrad.torch.AdagradDA(bag.parameters(), lr=0.1, l1=0.01)
    >>> bag(torch.tensor([[3, 7, 7], [999, 0, 3]])).sum().backward()
    >>> opt.step()
"""


class _Proximal(EngineOptimizer):
    """What the two proximal adapters share: hyperparameters, state, plans; the kernels differ."""

    _state_key = "sum"
    _extra_defaults: dict[str, Any] = {}

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor,
        *,
        l1: float = 0.0,
        l2: float = 0.0,
        initial_accumulator_value: float = _checks.PROXIMAL_INITIAL_ACCUMULATOR,
        num_threads: int | None = None,
    ) -> None:
        _checks.proximal_hyperparameters(
            lr=scalar(lr), l1=l1, l2=l2, initial_accumulator_value=initial_accumulator_value
        )
        defaults = {"lr": lr, "l1": l1, "l2": l2, "initial_accumulator_value": initial_accumulator_value}
        super().__init__(params, defaults, num_threads)
        dtype = step_dtype()
        for index, group in enumerate(self.param_groups):
            init = self._initial_value(index, group)
            for p in group["params"]:
                state = self.state[p]
                state["step"] = torch.tensor(0.0, dtype=dtype)
                self._add_state(state, p, init)

    def _add_state(self, state: dict, p: torch.Tensor, init: float) -> None:
        state["sum"] = self._new_state(p, init)
        if self._second_state_key is not None:              # the gradient sums start at 0
            state[self._second_state_key] = self._new_state(p, 0.0, second=True)

    @staticmethod
    def _initial_value(index: int, group: dict) -> float:
        try:
            return _checks.check_positive(group["initial_accumulator_value"], "initial_accumulator_value")
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"param_groups[{index}]: {exc}") from None

    def _structure(self, group: dict) -> object:
        return None

    def _hyperparameters(self, index: int, group: dict) -> tuple:
        try:
            checked = _checks.proximal_hyperparameters(
                lr=scalar(group["lr"]), l1=group["l1"], l2=group["l2"],
                initial_accumulator_value=group["initial_accumulator_value"],
            )
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"param_groups[{index}]: {exc}") from None
        return checked["lr"], checked["l1"], checked["l2"]

    def _build_plan(self, index: int, group: dict, with_grad: list[torch.Tensor], kinds: list[bool],
                    flag: object) -> Plan:
        labels = self._labels(index, group, with_grad)
        for p, label in zip(with_grad, labels):
            check_tensor(p, label, half=False)
        init = self._initial_value(index, group)
        key2 = self._second_state_key
        plan = Plan(group, with_grad, kinds, flag)
        sums: list[State] = []
        grad_sums: list[State] = []
        counts: list[int] = []
        for p, label in zip(with_grad, labels):
            state = self.state[p]
            if "sum" not in state:                     # a param added after construction
                state["step"] = torch.tensor(0.0, dtype=step_dtype())
                self._add_state(state, p, init)
            if "step" not in state or (key2 is not None and key2 not in state):
                missing = "step" if "step" not in state else key2
                raise ValueError(f"state of {label}: has 'sum' but no {missing!r}")
            step = float(scalar(state["step"]))
            if not (step >= 0 and step.is_integer()):
                raise ValueError(f"state of {label}['step']: expected a whole number >= 0, got {step}")
            tensor, buffer = self._state_buffer(p, state["sum"], label, init)
            state["sum"] = tensor
            sums.append(buffer)
            if key2 is not None:
                tensor, buffer = self._state_buffer(p, state[key2], label, 0.0, second=True)
                state[key2] = tensor
                grad_sums.append(buffer)
            counts.append(int(step))
        second = grad_sums if key2 is not None else None
        dense, sparse = plan.split()
        by_step: dict[int, list[int]] = {}
        for d, i in enumerate(dense):
            by_step.setdefault(counts[i], []).append(d)
        dtype = np.float64 if step_dtype() == torch.float64 else np.float32
        for step, positions in by_step.items():
            chosen = [dense[d] for d in positions]
            cohort = Cohort(
                positions, [with_grad[i] for i in chosen], [labels[i] for i in chosen],
                [sums[i] for i in chosen], step,
                buffers2=None if second is None else [second[i] for i in chosen],
            )
            cohort.steps = np.full(len(positions), step, dtype=dtype)
            self._share_steps(cohort.steps, [with_grad[i] for i in chosen])
            plan.cohorts.append(cohort)
        if sparse:
            tables = Tables([with_grad[i] for i in sparse], [labels[i] for i in sparse],
                            [sums[i] for i in sparse],
                            buffers2=None if second is None else [second[i] for i in sparse])
            tables.steps = np.array([counts[i] for i in sparse], dtype=dtype)
            self._share_steps(tables.steps, [with_grad[i] for i in sparse])
            plan.tables = tables
        plan.steps = []
        if key2 is not None:
            plan.entries2 = []
        for p in with_grad:
            state = self.state[p]
            plan.dicts.append(state)
            plan.entries.append(state["sum"])
            plan.steps.append(state["step"])
            if key2 is not None:
                plan.entries2.append(state[key2])
        return plan

    def _share_steps(self, steps: np.ndarray, params: list[torch.Tensor]) -> None:
        """Make ``state[p]["step"]`` of ``params`` views of ``steps`` (one write counts them all)."""
        views = torch.from_numpy(steps)
        for k, p in enumerate(params):
            self.state[p]["step"] = views[k]

    def _dense(self, engine: Any, grads: list[np.ndarray], hyper: tuple, threads: int) -> None:
        raise NotImplementedError

    def _rows(self, engine: Any, j: int, indices: np.ndarray, values: np.ndarray, hyper: tuple,
              threads: int) -> int:
        raise NotImplementedError

    def _run(self, plan: Plan, arrays: list[np.ndarray], hyper: tuple, threads: int) -> None:
        for cohort in plan.cohorts:
            grads = self._cohort_grads(plan, cohort, arrays)
            if cohort.pending:
                cohort.ready(grads)
            self._dense(cohort.engine, grads, hyper, threads)
            cohort.steps.fill(cohort.engine.steps)
            increment_version(cohort.tensors)

    def _batches(self, tables: Tables, hyper: tuple) -> list[list[int]]:
        """One table a call: the engine has no many-table row kernel for these rules (yet)."""
        return [[j] for j in range(tables.steps.shape[0])]

    def _run_tables(self, plan: Plan, rows: list[tuple[np.ndarray, np.ndarray]], batch: list[int],
                    hyper: tuple, threads: int) -> None:
        tables = plan.tables
        engine = tables.engine
        steps = tables.steps
        for j in batch:
            indices, values = rows[j]
            engine.steps = int(steps[j])                   # each table's own step count (T)
            tables.ready([j], [indices])
            bad = self._rows(engine, j, indices, values, hyper, threads)
            if bad >= 0:
                raise tables.out_of_range(j, indices, bad)
            steps[j] = engine.steps


class ProximalAdagrad(_Proximal):
    __doc__ = r"""Proximal AdaGrad with l1 and l2 (TensorFlow's ``ProximalAdagradOptimizer``) for CPU tensors.

    The rule of :class:`cadagrad.ProximalAdagrad`, with its bits, per element in the tensor's dtype::

        G   = G + g * g                                   (G starts at initial_accumulator_value)
        lrt = lr / sqrt(G)
        v   = p - lrt * g
        v   = sign(v) * max(|v| - lrt * l1, 0)            only if l1 > 0
        v   = v / (1 + lrt * l2)                          only if l2 > 0
        p   = v

    ``state[p]`` holds ``"step"`` and ``"sum"`` (``G``). The rules page of the docs (docs/rules.rst,
    "Proximal AdaGrad") is the full statement.
    """ + _COMMON_DOC

    def _dense(self, engine: Any, grads: list[np.ndarray], hyper: tuple, threads: int) -> None:
        engine.proximal_adagrad(grads, *hyper, threads)

    def _rows(self, engine: Any, j: int, indices: np.ndarray, values: np.ndarray, hyper: tuple,
              threads: int) -> int:
        return engine.proximal_adagrad_rows(j, indices, values, False, *hyper, threads)


class AdagradDA(_Proximal):
    __doc__ = r"""AdaGrad dual averaging with l1 and l2 (TensorFlow's ``AdagradDAOptimizer``) for CPU tensors.

    The rule of :class:`cadagrad.AdagradDA`, with its bits, per element in the tensor's dtype, at the
    param's step ``t`` (``T = t``, its own count as ``state[p]["step"]``)::

        l1T   = l1 * T,  l2Tlr = (l2 * T) * lr          (once per step, in double, then cast)
        S = S + g
        G = G + g * g
        p = -sign(S) * lr * max(|S| - l1T, 0) / (l2Tlr + sqrt(G))     if l1 > 0
        p = -lr * S / (l2Tlr + sqrt(G))                                otherwise

    ``state[p]`` holds ``"step"``, ``"sum"`` (``G``) and ``"grad_sum"`` (``S``, from 0). The param's
    previous value does not enter. The rules page of the docs (docs/rules.rst, "AdaGrad dual averaging")
    is the full statement.
    """ + _COMMON_DOC

    _second_state_key = "grad_sum"

    def _dense(self, engine: Any, grads: list[np.ndarray], hyper: tuple, threads: int) -> None:
        engine.adagrad_da(grads, *hyper, threads)

    def _rows(self, engine: Any, j: int, indices: np.ndarray, values: np.ndarray, hyper: tuple,
              threads: int) -> int:
        return engine.adagrad_da_rows(j, indices, values, False, *hyper, threads)
