"""``cadagrad.torch.SGD``: a drop-in for ``torch.optim.SGD``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import _checks
from ..optim import _state_like
from ._engine import Cohort, EngineOptimizer, ParamsT, Plan, check_tensor, increment_version, scalar

__all__ = ["SGD"]


class SGD(EngineOptimizer):
    r"""SGD with momentum for CPU float32/float64 tensors, stepped in place by cadagrad's kernels.

    A drop-in for :class:`torch.optim.SGD` (same arguments, param groups, ``state[p]["momentum_buffer"]``,
    ``state_dict`` layout). For every element, in this order and in the tensor's dtype::

        g = -grad if maximize else grad
        g = g + weight_decay * p                      (only if weight_decay != 0)
        if momentum != 0:
            buf = g                                    at a param's first step (no buffer yet)
            buf = momentum * buf + (1 - dampening) * g later
            g   = g + momentum * buf  if nesterov  else  buf
        p = p - lr * g

    Parameters
    ----------
    params : iterable of Tensor, of dict, or of (name, Tensor)
        CPU, dense, contiguous float32/float64 tensors, or param groups, as for
        :class:`torch.optim.Optimizer`.
    lr : float or 1-element Tensor, default 0.001
        Learning rate; read from ``param_groups`` at every step.
    momentum : float, default 0
        Momentum factor; 0 keeps no buffers.
    dampening : float, default 0
        Dampening of the momentum.
    weight_decay : float, default 0
        Coupled L2 penalty added to the gradient.
    nesterov : bool, default False
        Nesterov momentum (requires momentum > 0 and dampening == 0).
    maximize : bool, default False
        Ascend instead of descend.
    foreach, fused : bool or None, default None
        Accepted for compatibility and stored; they change nothing.
    differentiable : bool, default False
        Must be False.
    num_threads : int or None, default None
        Threads of a large step; None asks ``cadagrad.get_num_threads()`` at every step.
    """

    _state_key = "momentum_buffer"

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float | torch.Tensor = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        num_threads: int | None = None,
    ) -> None:
        _checks.sgd_hyperparameters(
            lr=scalar(lr), momentum=momentum, dampening=dampening, nesterov=nesterov,
            weight_decay=scalar(weight_decay), maximize=maximize,
        )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(params, defaults, num_threads)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)

    def _uses_state(self, group: dict) -> bool:
        momentum = scalar(group["momentum"])
        return momentum != 0

    def _hyperparameters(self, index: int, group: dict) -> tuple:
        if group.get("differentiable"):
            raise ValueError(f"param_groups[{index}]['differentiable']: True is not supported")
        try:
            checked = _checks.sgd_hyperparameters(
                lr=scalar(group["lr"]), momentum=scalar(group["momentum"]), dampening=group["dampening"],
                nesterov=group["nesterov"], weight_decay=scalar(group["weight_decay"]),
                maximize=group["maximize"],
            )
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"param_groups[{index}]: {exc}") from None
        return (checked["lr"], checked["weight_decay"], checked["momentum"], checked["dampening"],
                checked["nesterov"], checked["maximize"])

    def _build_plan(self, index: int, group: dict, with_grad: list[torch.Tensor], flag: bool) -> Plan:
        labels = self._labels(index, group, with_grad)
        for p, label in zip(with_grad, labels):
            check_tensor(p, label)
        plan = Plan(group, with_grad, flag)
        if not flag:
            plan.cohorts.append(Cohort(list(range(len(with_grad))), with_grad, labels, None, 1))
            return plan
        later: list[int] = []
        first: list[int] = []
        buffers: list[np.ndarray] = []
        for i, (p, label) in enumerate(zip(with_grad, labels)):
            state = self.state[p]
            found = state.get("momentum_buffer")
            if found is None:
                # Written by the first step (buf = g) and put in ``state`` only once that step is taken.
                buffers.append(_state_like(p.detach().numpy(), tuple(p.shape), 0.0))
                first.append(i)
            else:
                tensor, array = self._state_array(p, found, label)
                state["momentum_buffer"] = tensor
                buffers.append(array)
                later.append(i)
            plan.dicts.append(state)
            plan.entries.append(state.get("momentum_buffer"))
        for positions, steps in ((later, 1), (first, 0)):
            if positions:
                plan.cohorts.append(Cohort(
                    positions, [with_grad[i] for i in positions], [labels[i] for i in positions],
                    [buffers[i] for i in positions], steps, first=steps == 0,
                ))
        return plan

    def _run(self, plan: Plan, arrays: list[np.ndarray], hyper: tuple, threads: int) -> None:
        lr, weight_decay, momentum, dampening, nesterov, maximize = hyper
        started = False
        for cohort in plan.cohorts:
            cohort.engine.sgd(
                self._cohort_grads(plan, cohort, arrays), lr, weight_decay, momentum, dampening, nesterov,
                maximize, threads,
            )
            increment_version(cohort.tensors)
            if cohort.first:
                for p, array in zip(cohort.tensors, cohort.states):
                    tensor = torch.from_numpy(array)
                    self._owned[p] = (tensor, array)
                    self.state[p]["momentum_buffer"] = tensor
                started = True
        if started:     # the buffers are in ``state`` now: the next step builds one engine for all
            for index, cached in list(self._plans.items()):
                if cached is plan:
                    del self._plans[index]
