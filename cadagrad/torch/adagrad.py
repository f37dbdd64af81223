"""``cadagrad.torch.Adagrad``: a drop-in for ``torch.optim.Adagrad``."""

from __future__ import annotations

import numpy as np
import torch

from .. import _checks
from ._engine import (
    Cohort,
    EngineOptimizer,
    ParamsT,
    Plan,
    check_tensor,
    increment_version,
    scalar,
    step_dtype,
)

__all__ = ["Adagrad"]


class Adagrad(EngineOptimizer):
    r"""AdaGrad for CPU float32/float64 tensors, stepped in place by cadagrad's kernels.

    A drop-in for :class:`torch.optim.Adagrad` (same arguments, param groups, ``state[p]["sum"]`` and
    ``state[p]["step"]``, ``state_dict`` layout). At step ``t`` of a param (1-based, its own count), for
    every element, in this order and in the tensor's dtype::

        g   = -grad if maximize else grad
        g   = g + weight_decay * p                   (only if weight_decay != 0)
        clr = lr / (1 + (t - 1) * lr_decay)          (in double, then cast)
        G   = G + g * g
        p   = p - (clr * g) / (sqrt(G) + eps)

    PyTorch computes ``G`` with a fused multiply-add, so results agree within a tolerance, not bitwise.

    Parameters
    ----------
    params : iterable of Tensor, of dict, or of (name, Tensor)
        CPU, dense, contiguous float32/float64 tensors, or param groups (dicts with ``"params"`` and
        per-group hyperparameters), as for :class:`torch.optim.Optimizer`.
    lr : float or 1-element Tensor, default 0.01
        Learning rate; read from ``param_groups`` at every step (schedulers may change it).
    lr_decay : float, default 0
        Learning-rate decay.
    weight_decay : float, default 0
        Coupled L2 penalty added to the gradient.
    initial_accumulator_value : float, default 0
        Start value of ``G`` (a group's own value applies to its params).
    eps : float, default 1e-10
        Added to ``sqrt(G)``.
    foreach : bool or None, default None
        Accepted for compatibility and stored; changes nothing (the step is one multi-tensor kernel).
    maximize : bool, default False
        Ascend instead of descend.
    differentiable : bool, default False
        Must be False: the step runs outside autograd.
    fused : bool or None, default None
        Accepted for compatibility and stored; changes nothing.
    num_threads : int or None, default None
        Threads of a large step; None asks ``cadagrad.get_num_threads()`` at every step.

    Examples
    --------
    >>> import torch, cadagrad.torch
    >>> model = torch.nn.Linear(4, 1)
    >>> opt = cadagrad.torch.Adagrad(model.parameters(), lr=0.1)
    >>> model(torch.ones(2, 4)).sum().backward()
    >>> opt.step()
    >>> opt.zero_grad()
    """

    _state_key = "sum"

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = _checks.ADAGRAD_LR,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = _checks.ADAGRAD_EPS,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        num_threads: int | None = None,
    ) -> None:
        _checks.adagrad_hyperparameters(
            lr=scalar(lr), lr_decay=lr_decay, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, eps=eps, eps_inside_sqrt=False,
            maximize=maximize,
        )
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(params, defaults, num_threads)
        # As torch.optim.Adagrad: every param has a state from the start (step 0, sum filled).
        dtype = step_dtype()
        for group in self.param_groups:
            init = _checks.check_number(group["initial_accumulator_value"], "initial_accumulator_value")
            for p in group["params"]:
                state = self.state[p]
                state["step"] = torch.tensor(0.0, dtype=dtype)
                state["sum"] = self._new_state(p, init)

    def _uses_state(self, group: dict) -> bool:
        return True

    def _hyperparameters(self, index: int, group: dict) -> tuple:
        if group.get("differentiable"):
            raise ValueError(f"param_groups[{index}]['differentiable']: True is not supported")
        try:
            checked = _checks.adagrad_hyperparameters(
                lr=scalar(group["lr"]), lr_decay=group["lr_decay"], weight_decay=group["weight_decay"],
                initial_accumulator_value=group["initial_accumulator_value"], eps=group["eps"],
                eps_inside_sqrt=False, maximize=group["maximize"],
            )
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"param_groups[{index}]: {exc}") from None
        return (
            checked["lr"], checked["lr_decay"], checked["weight_decay"], checked["eps"], checked["maximize"]
        )

    def _build_plan(self, index: int, group: dict, with_grad: list[torch.Tensor], flag: bool) -> Plan:
        labels = self._labels(index, group, with_grad)
        for p, label in zip(with_grad, labels):
            check_tensor(p, label)
        init = _checks.check_number(group["initial_accumulator_value"], "initial_accumulator_value")
        plan = Plan(group, with_grad, flag)
        by_step: dict[int, list[int]] = {}
        sums: list[np.ndarray] = []
        for i, (p, label) in enumerate(zip(with_grad, labels)):
            state = self.state[p]
            if "sum" not in state:                     # a param added after construction
                state["step"] = torch.tensor(0.0, dtype=step_dtype())
                state["sum"] = self._new_state(p, init)
            if "step" not in state:
                raise ValueError(f"state of {label}: has 'sum' but no 'step'")
            step = float(scalar(state["step"]))
            if not (step >= 0 and step.is_integer()):
                raise ValueError(f"state of {label}['step']: expected a whole number >= 0, got {step}")
            tensor, array = self._state_array(p, state["sum"], label)
            state["sum"] = tensor
            sums.append(array)
            by_step.setdefault(int(step), []).append(i)
        dtype = np.float64 if step_dtype() == torch.float64 else np.float32
        for step, positions in by_step.items():
            cohort = Cohort(
                positions, [with_grad[i] for i in positions], [labels[i] for i in positions],
                [sums[i] for i in positions], step,
            )
            cohort.steps = np.full(len(positions), step, dtype=dtype)
            views = torch.from_numpy(cohort.steps)
            for k, i in enumerate(positions):
                self.state[with_grad[i]]["step"] = views[k]
            plan.cohorts.append(cohort)
        plan.steps = []
        for p in with_grad:
            state = self.state[p]
            plan.dicts.append(state)
            plan.entries.append(state["sum"])
            plan.steps.append(state["step"])
        return plan

    def _run(self, plan: Plan, arrays: list[np.ndarray], hyper: tuple, threads: int) -> None:
        lr, lr_decay, weight_decay, eps, maximize = hyper
        for cohort in plan.cohorts:
            engine = cohort.engine
            engine.adagrad(
                self._cohort_grads(plan, cohort, arrays), lr, lr_decay, weight_decay, eps, False, maximize,
                threads,
            )
            cohort.steps.fill(engine.steps)
            increment_version(cohort.tensors)
