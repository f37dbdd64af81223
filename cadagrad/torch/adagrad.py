"""``cadagrad.torch.Adagrad``: a drop-in for ``torch.optim.Adagrad``, sparse embedding grads included."""

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
    check_options,
    check_tensor,
    group_seed,
    increment_version,
    scalar,
    step_dtype,
)

__all__ = ["Adagrad"]


class Adagrad(EngineOptimizer):
    r"""AdaGrad for CPU float32/float64/float16/bfloat16 tensors, stepped in place by cadagrad's kernels.

    A drop-in for :class:`torch.optim.Adagrad` (same arguments, param groups, ``state[p]["sum"]`` and
    ``state[p]["step"]``, ``state_dict`` layout). At step ``t`` of a param (1-based, its own count), for
    every element, in this order and in the tensor's dtype::

        g   = -grad if maximize else grad
        g   = g + weight_decay * p                   (only if weight_decay != 0)
        clr = lr / (1 + (t - 1) * lr_decay)          (in double, then cast)
        G   = G + g * g
        d   = sqrt(G) + eps    or, with eps_inside_sqrt,    sqrt(G + eps)
        p   = p - (clr * g) / d

    PyTorch computes ``G`` with a fused multiply-add, so results agree within a tolerance, not bitwise.

    **16-bit params** (``torch.float16``, ``torch.bfloat16``, dense or sparse grads, in any group beside
    float32 ones): each step widens the param and its grad to float32, runs the rule above in float32 and
    rounds the param back once (the rules page, "16-bit params"); bit for bit ``cadagrad.reference.Adagrad``
    with the same ``state_dtype``, ``stochastic_rounding`` and ``seed`` on the same 16-bit arrays. Per
    param group: with ``state_dtype=None`` ``state[p]["sum"]`` is **float32** (twice the param's memory,
    one float32 per row with ``rowwise``; torch.optim.Adagrad's has the param's dtype); with
    ``state_dtype="param"`` it has the param's dtype, torch.optim's layout, rounded to nearest even at
    every step. ``stochastic_rounding=True`` rounds the param stochastically, with the bits of
    ``(seed, state[p]["step"], element)``. ``load_state_dict`` loads the groups' ``state_dtype`` and
    converts the state to it by a documented rule (widened exactly to float32; float32 rounded to 16 bits
    only with ``convert_state=True``; see :meth:`load_state_dict`). A grad must have its param's dtype.

    **Sparse grads** (``nn.Embedding`` / ``nn.EmbeddingBag`` with ``sparse=True``: COO tensors with one
    sparse dim, uncoalesced, duplicates, any nnz) update only the rows they name, as torch.optim does.
    The row kernel reads ``grad._indices()[0]`` and ``grad._values()`` as they are (no coalesce, no
    ``sparse_mask``, nothing of the table's size), sums duplicate rows from zero in order of appearance,
    then applies the rule above once per distinct row: bit for bit ``cadagrad.reference.Adagrad.step_rows``
    on those indices and values, O(nnz x D) whatever the number of rows. Every option works with sparse
    grads; ``weight_decay`` then decays the named rows only (torch.optim refuses weight decay with sparse
    grads). A param whose grad is sparse at one step and dense at another is fine.

    **Row-wise AdaGrad** (``rowwise=True``, FBGEMM's rule, for 2-D params): one accumulator per row,
    ``G_row = G_row + mean(g_row * g_row)`` (summed left to right) and ``sqrt(G_row)`` for every element of
    the row. ``state[p]["sum"]`` then has shape ``(V,)`` for a ``(V, D)`` param: D times less memory, a
    layout torch.optim.Adagrad cannot load (and a full ``(V, D)`` sum cannot be loaded into a row-wise group).

    **Memory of the state.** An accumulator of 4 MiB or more is lazy: zero pages from the OS, so the rows
    that no step touches take no memory (over a 10^7 x 64 float32 table, the first sparse step of 4,096
    rows costs their pages, not 2.4 GiB). Smaller accumulators are filled at construction, as torch's. The
    first dense step of a param fills and advises huge pages for its whole accumulator.

    With ``initial_accumulator_value`` ``v != 0``, a lazy accumulator gets ``v`` written into a row the
    first time a sparse step names it, just before the update, and into every remaining row at the
    param's first dense step; results are bit for bit those of an eager fill. Until then, reading
    ``state[p]["sum"]`` directly shows 0, not ``v``, in the rows no step has touched. ``state_dict()``,
    pickling and ``copy.deepcopy`` first write ``v`` into those rows in place, so that what they hand out
    reads right; from then on the accumulator takes its full size. So read ``state[p]["sum"]`` of a large
    table after ``opt.state_dict()``, and write into it in place only after that (a row waiting for ``v``
    would get ``v`` over your value at its first step). With ``v == 0`` (the default) the tensor always
    reads right and ``state_dict()`` costs nothing. A checkpoint loaded by ``load_state_dict`` is copied
    into such a buffer at the next step, leaving its rows that are all zero or all ``v`` unwritten (one
    read of the loaded tensor; memory for the rows that differ).

    Parameters
    ----------
    params : iterable of Tensor, of dict, or of (name, Tensor)
        CPU, dense, contiguous float32, float64, float16 or bfloat16 tensors, or param groups (dicts with
        ``"params"`` and per-group hyperparameters), as for :class:`torch.optim.Optimizer`.
    lr : float or 1-element Tensor, default 0.01
        Learning rate; read from ``param_groups`` at every step (schedulers may change it).
    lr_decay : float, default 0
        Learning-rate decay.
    weight_decay : float, default 0
        Coupled L2 penalty added to the gradient (of the named rows only, for a sparse grad).
    initial_accumulator_value : float, default 0
        Start value of ``G`` (a group's own value applies to its params).
    eps : float, default 1e-10
        Added to ``sqrt(G)``, or to ``G`` under the root with ``eps_inside_sqrt``.
    foreach : bool or None, default None
        Accepted for compatibility and stored; changes nothing (the step is one multi-tensor kernel).
    maximize : bool, default False
        Ascend instead of descend.
    differentiable : bool, default False
        Must be False: the step runs outside autograd.
    fused : bool or None, default None
        Accepted for compatibility and stored; changes nothing.
    eps_inside_sqrt : bool, default False
        ``sqrt(G + eps)`` (Keras 3, optax) instead of ``sqrt(G) + eps`` (PyTorch). Not a torch.optim option.
    rowwise : bool, default False
        Row-wise AdaGrad (above); every param of the group must be 2-D. Fixed by the state's layout.
    state_dtype : {None, "param"}, default None
        The dtype of a float16/bfloat16 param's accumulator: float32 (None) or the param's own (2 bytes
        per element instead of 4). Other params keep their dtype. Not a torch.optim option.
    stochastic_rounding : bool, default False
        Round float16/bfloat16 params stochastically instead of to nearest, so that updates smaller than
        half a unit in the last place are kept in expectation. Refused for a group without such a param
        (naming the group). Not a torch.optim option.
    seed : int or None, default None
        The generator's seed (0 to 2**64 - 1). None with ``stochastic_rounding`` draws one per group when
        the group is created (``secrets.randbits(64)``) and stores it in the group, so that
        ``state_dict()`` records it and a resumed run is bit for bit an uninterrupted one.
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

    An embedding table with sparse grads, beside dense params in the same optimizer:

    >>> bag = torch.nn.EmbeddingBag(1000, 16, mode="sum", sparse=True)
    >>> head = torch.nn.Linear(16, 1)
    >>> opt = cadagrad.torch.Adagrad([*bag.parameters(), *head.parameters()], lr=0.1)
    >>> head(bag(torch.tensor([[3, 7, 7], [999, 0, 3]]))).sum().backward()
    >>> opt.step()
    """

    _state_key = "sum"
    _accepts_16_bit = True
    _extra_defaults: dict[str, Any] = {
        **EngineOptimizer._extra_defaults, "eps_inside_sqrt": False, "rowwise": False,
        **_checks.PRECISION_DEFAULTS,
    }

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
        eps_inside_sqrt: bool = False,
        rowwise: bool = False,
        state_dtype: str | None = None,
        stochastic_rounding: bool = False,
        seed: int | None = None,
        num_threads: int | None = None,
    ) -> None:
        check_options(state_dtype, stochastic_rounding, seed)
        _checks.adagrad_hyperparameters(
            lr=scalar(lr), lr_decay=lr_decay, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, eps=eps, eps_inside_sqrt=eps_inside_sqrt,
            maximize=maximize, rowwise=rowwise,
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
            "eps_inside_sqrt": eps_inside_sqrt,
            "rowwise": rowwise,
            "state_dtype": state_dtype,
            "stochastic_rounding": stochastic_rounding,
            "seed": seed,
        }
        super().__init__(params, defaults, num_threads)
        # As torch.optim.Adagrad: every param has a state from the start (step 0, sum filled).
        dtype = step_dtype()
        for group in self.param_groups:
            init = _checks.check_number(group["initial_accumulator_value"], "initial_accumulator_value")
            for p in group["params"]:
                state = self.state[p]
                state["step"] = torch.tensor(0.0, dtype=dtype)
                state["sum"] = self._new_state(p, init, group["rowwise"], mode=group["state_dtype"])

    def _check_group(self, index: int, group: dict) -> None:
        rowwise = _checks.check_flag(group.get("rowwise", False), f"param_groups[{index}]['rowwise']")
        for j, p in enumerate(group["params"]):
            if rowwise and (p.dim() != 2 or p.shape[1] == 0):
                raise ValueError(
                    f"param_groups[{index}]['params'][{j}]: rowwise=True needs 2-D params "
                    f"(rows, columns >= 1), got shape {tuple(p.shape)}"
                )

    def _structure(self, group: dict) -> object:
        # The state's layout and dtype, and whether the group rounds stochastically (checked at builds).
        return bool(group["rowwise"]), group["state_dtype"], bool(group["stochastic_rounding"])

    def _hyperparameters(self, index: int, group: dict) -> tuple:
        if group.get("differentiable"):
            raise ValueError(f"param_groups[{index}]['differentiable']: True is not supported")
        try:
            checked = _checks.adagrad_hyperparameters(
                lr=scalar(group["lr"]), lr_decay=group["lr_decay"], weight_decay=group["weight_decay"],
                initial_accumulator_value=group["initial_accumulator_value"], eps=group["eps"],
                eps_inside_sqrt=group["eps_inside_sqrt"], maximize=group["maximize"],
                rowwise=group["rowwise"],
            )
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"param_groups[{index}]: {exc}") from None
        return (checked["lr"], checked["lr_decay"], checked["weight_decay"], checked["eps"],
                checked["eps_inside_sqrt"], checked["maximize"], group_seed(index, group))

    def _build_plan(self, index: int, group: dict, with_grad: list[torch.Tensor], kinds: list[bool],
                    flag: object) -> Plan:
        labels = self._labels(index, group, with_grad)
        for p, label in zip(with_grad, labels):
            check_tensor(p, label, half=True)
        self._check_group(index, group)
        self._check_rounding_params(index, group)
        rowwise, mode, _ = flag
        init = _checks.check_number(group["initial_accumulator_value"], "initial_accumulator_value")
        plan = Plan(group, with_grad, kinds, flag)
        sums: list[State] = []
        counts: list[int] = []
        for p, label in zip(with_grad, labels):
            state = self.state[p]
            if "sum" not in state:                     # a param added after construction
                state["step"] = torch.tensor(0.0, dtype=step_dtype())
                state["sum"] = self._new_state(p, init, rowwise, mode=mode)
            if "step" not in state:
                raise ValueError(f"state of {label}: has 'sum' but no 'step'")
            step = float(scalar(state["step"]))
            if not (step >= 0 and step.is_integer()):
                raise ValueError(f"state of {label}['step']: expected a whole number >= 0, got {step}")
            tensor, buffer = self._state_buffer(p, state["sum"], label, init, rowwise, mode=mode)
            state["sum"] = tensor
            sums.append(buffer)
            counts.append(int(step))
        dense, sparse = plan.split()
        by_step: dict[int, list[int]] = {}
        for d, i in enumerate(dense):
            by_step.setdefault(counts[i], []).append(d)
        dtype = np.float64 if step_dtype() == torch.float64 else np.float32
        for step, positions in by_step.items():
            chosen = [dense[d] for d in positions]
            cohort = Cohort(
                positions, [with_grad[i] for i in chosen], [labels[i] for i in chosen],
                [sums[i] for i in chosen], step, rowwise=rowwise, mode=mode,
            )
            cohort.steps = np.full(len(positions), step, dtype=dtype)
            self._share_steps(cohort.steps, [with_grad[i] for i in chosen])
            plan.cohorts.append(cohort)
        if sparse:
            tables = Tables([with_grad[i] for i in sparse], [labels[i] for i in sparse],
                            [sums[i] for i in sparse], rowwise, mode=mode)
            tables.steps = np.array([counts[i] for i in sparse], dtype=dtype)
            self._share_steps(tables.steps, [with_grad[i] for i in sparse])
            plan.tables = tables
        plan.steps = []
        for p in with_grad:
            state = self.state[p]
            plan.dicts.append(state)
            plan.entries.append(state["sum"])
            plan.steps.append(state["step"])
        return plan

    def _run(self, plan: Plan, arrays: list[np.ndarray], hyper: tuple, threads: int) -> None:
        lr, lr_decay, weight_decay, eps, inside, maximize, seed = hyper
        for cohort in plan.cohorts:
            engine = cohort.engine
            if cohort.pending:
                cohort.ready(self._cohort_grads(plan, cohort, arrays))
            engine.adagrad(
                self._cohort_grads(plan, cohort, arrays), lr, lr_decay, weight_decay, eps, inside, maximize,
                threads, False, seed if cohort.half else None,
            )
            cohort.steps.fill(engine.steps)
            increment_version(cohort.tensors)

    def _batches(self, tables: Tables, hyper: tuple) -> list[list[int]]:
        """The tables (positions) that one kernel call steps: those with the same step count, which
        ``lr_decay`` depends on (a table that had no grad at some steps counts fewer)."""
        counts = tables.steps.tolist()
        if counts.count(counts[0]) == len(counts):
            return [tables.everything]
        by_step: dict[float, list[int]] = {}
        for j, count in enumerate(counts):
            by_step.setdefault(count, []).append(j)
        return list(by_step.values())

    def _run_tables(self, plan: Plan, rows: list[tuple[np.ndarray, np.ndarray]], batch: list[int],
                    hyper: tuple, threads: int) -> None:
        lr, lr_decay, weight_decay, eps, inside, maximize, seed = hyper
        tables = plan.tables
        engine = tables.engine
        steps = tables.steps
        engine.steps = int(steps[batch[0]])            # one count for the batch: lr_decay counts it
        indices = [rows[j][0] for j in batch]
        tables.ready(batch, indices)
        bad = engine.adagrad_rows_many(
            indices, [rows[j][1] for j in batch], batch, False, lr, lr_decay, weight_decay, eps, inside,
            maximize, threads, seed if tables.half else None,
        )
        if bad >= 0:
            raise tables.refused(batch, indices, bad)
        if len(batch) == steps.shape[0]:
            steps.fill(engine.steps)
        else:
            steps[batch] = engine.steps
