"""``cadagrad.torch.SGD``: a drop-in for ``torch.optim.SGD``, sparse embedding grads included."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import _checks
from .._state import State, new_state
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
    numpy_view,
    scalar,
    step_dtype,
)

__all__ = ["SGD"]

_ZERO_ROWS = 4096        # torch's momentum rule steps rows not named by a grad in blocks of this many


class _TouchedRows:
    """The rows of a table whose momentum buffer may be non-zero: the rows torch's rule moves at every
    step. A sorted array (the rule then visits rows in address order, which the hardware prefetcher
    follows), a mask of the table's rows, and a second mask (scratch) for the rows a step names; V bytes
    each."""

    __slots__ = ("buffer", "mask", "named", "rows")

    def __init__(self, nrows: int, buffer: np.ndarray | None = None) -> None:
        self.buffer: torch.Tensor | None = None    # the momentum buffer (state tensor) it describes
        self.mask = np.zeros(nrows, dtype=bool)
        self.named = np.zeros(nrows, dtype=bool)
        if buffer is None:                         # a new buffer: all zeros
            self.rows = np.empty(0, dtype=np.int64)
        else:                                      # one read of a loaded buffer, O(V x D)
            self.rows = np.flatnonzero(buffer.any(axis=1)).astype(np.int64)
            self.mask[self.rows] = True

    def others(self, indices: np.ndarray) -> np.ndarray:
        """The rows touched before, minus ``indices`` (in range), sorted: O(rows touched so far + k)."""
        prior = self.rows
        if prior.size == 0:
            return prior
        named = self.named
        named[indices] = True
        rest = prior[~named[prior]]
        named[indices] = False
        return rest

    def add(self, indices: np.ndarray) -> None:
        """Record the rows ``indices`` (in range, duplicates allowed) as touched: O(k log k) when none is
        new, O(rows touched so far) to merge new ones in."""
        new = indices[~self.mask[indices]]
        if new.size == 0:
            return
        new = np.unique(new)
        self.mask[new] = True
        self.rows = np.insert(self.rows, np.searchsorted(self.rows, new), new)


class SGD(EngineOptimizer):
    r"""SGD with momentum for CPU float32/float64/float16/bfloat16 tensors, stepped in place by cadagrad.

    A drop-in for :class:`torch.optim.SGD` (same arguments, param groups, ``state[p]["momentum_buffer"]``,
    ``state_dict`` layout). For every element, in this order and in the tensor's dtype::

        g = -grad if maximize else grad
        g = g + weight_decay * p                      (only if weight_decay != 0)
        if momentum != 0:
            buf = g                                    at a param's first step (no buffer yet)
            buf = momentum * buf + (1 - dampening) * g later
            g   = g + momentum * buf  if nesterov  else  buf
        p = p - lr * g

    **16-bit params** (``torch.float16``, ``torch.bfloat16``, dense or sparse grads, in any group beside
    float32 ones): each step widens the param and its grad to float32, runs the rule above in float32 and
    rounds the param back once (the rules page, "16-bit params"); with sparse grads the named rows' grads
    are widened and summed in float32. Per param group: with ``state_dtype=None``
    ``state[p]["momentum_buffer"]`` is **float32** (twice the param's memory; torch.optim.SGD's has the
    param's dtype); with ``state_dtype="param"`` it has the param's dtype, torch.optim's layout, rounded
    to nearest even at every step. ``stochastic_rounding=True`` rounds the param stochastically with the
    bits of ``(seed, t, element)``, ``t`` being the param's step count, which such a group keeps in
    ``state[p]["step"]`` (torch.optim.SGD loads it and ignores it); a momentum buffer that starts after
    the param's first step takes ``t = 1`` there. ``load_state_dict`` loads the groups' ``state_dtype``
    and converts the state to it by a documented rule (widened exactly to float32; float32 rounded to 16
    bits only with ``convert_state=True``; see :meth:`load_state_dict`). A grad must have its param's
    dtype.

    **Sparse grads** (``nn.Embedding`` / ``nn.EmbeddingBag`` with ``sparse=True``: COO tensors with one
    sparse dim, uncoalesced, duplicates, any nnz) go to the row kernel as ``grad._indices()[0]`` and
    ``grad._values()``, without coalescing; duplicate rows are summed from zero in order of appearance.
    Without momentum that is ``cadagrad.reference.SGD.step_rows``, bit for bit, in O(nnz x D). With
    momentum there are two rules:

    - torch's (the default): the rule above applied to the scattered gradient, as torch.optim.SGD's sparse
      momentum buffer does. A row, once named, keeps decaying its buffer and moving its param at every later
      step. cadagrad keeps a dense buffer (``state[p]["momentum_buffer"]``, the param's shape, which
      torch.optim.SGD loads; torch's sparse buffers load here too) and a record of the rows touched so far
      (two masks of V bytes and a list). A step runs the rule on the named rows with their summed grads,
      then on the other rows touched so far with a zero grad: O(nnz x D + T x D) for T rows touched so far,
      which grows towards the whole table. A record is rebuilt by one read of the buffer (O(V x D)) after
      loading a state or after a dense step of the param.
    - TensorFlow's lazy rule (``lazy_momentum=True``): only the named rows' buffers and params move,
      O(nnz x D), bit for bit ``cadagrad.SGD.step_rows``; a row named first after step 1 starts from a
      zero buffer.

    torch.optim.SGD refuses weight decay, maximize and nesterov with sparse grads; cadagrad steps them
    exactly: weight decay and maximize change the grads of the named rows (``g = -grad + weight_decay * p``
    there), which are then scattered as above; Nesterov's update applies to every row the rule moves.

    Parameters
    ----------
    params : iterable of Tensor, of dict, or of (name, Tensor)
        CPU, dense, contiguous float32, float64, float16 or bfloat16 tensors, or param groups, as for
        :class:`torch.optim.Optimizer`.
    lr : float or 1-element Tensor, default 0.001
        Learning rate; read from ``param_groups`` at every step.
    momentum : float, default 0
        Momentum factor; 0 keeps no buffers.
    dampening : float, default 0
        Dampening of the momentum.
    weight_decay : float, default 0
        Coupled L2 penalty added to the gradient (of the named rows only, for a sparse grad).
    nesterov : bool, default False
        Nesterov momentum (requires momentum > 0 and dampening == 0).
    maximize : bool, default False
        Ascend instead of descend.
    foreach, fused : bool or None, default None
        Accepted for compatibility and stored; they change nothing.
    differentiable : bool, default False
        Must be False.
    lazy_momentum : bool, default False
        With sparse grads and momentum, TensorFlow's lazy rule instead of torch's (above). Not a
        torch.optim option; no effect on dense grads.
    state_dtype : {None, "param"}, default None
        The dtype of a float16/bfloat16 param's momentum buffer: float32 (None) or the param's own.
        Other params keep their dtype. Not a torch.optim option.
    stochastic_rounding : bool, default False
        Round float16/bfloat16 params stochastically instead of to nearest. Refused for a group without
        such a param (naming the group). Not a torch.optim option.
    seed : int or None, default None
        The generator's seed (0 to 2**64 - 1). None with ``stochastic_rounding`` draws one per group when
        the group is created and stores it in the group, so that ``state_dict()`` records it.
    num_threads : int or None, default None
        Threads of a large step; None asks ``cadagrad.get_num_threads()`` at every step.
    """

    _state_key = "momentum_buffer"
    _accepts_16_bit = True
    _extra_defaults: dict[str, Any] = {
        **EngineOptimizer._extra_defaults, "lazy_momentum": False, **_checks.PRECISION_DEFAULTS,
    }

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
        lazy_momentum: bool = False,
        state_dtype: str | None = None,
        stochastic_rounding: bool = False,
        seed: int | None = None,
        num_threads: int | None = None,
    ) -> None:
        _checks.check_flag(lazy_momentum, "lazy_momentum")
        check_options(state_dtype, stochastic_rounding, seed)
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
            "lazy_momentum": lazy_momentum,
            "state_dtype": state_dtype,
            "stochastic_rounding": stochastic_rounding,
            "seed": seed,
        }
        super().__init__(params, defaults, num_threads)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)

    def _reset_engines(self) -> None:
        super()._reset_engines()
        self._touched: dict[torch.Tensor, _TouchedRows] = {}

    def _structure(self, group: dict) -> object:
        # Whether there are buffers, their dtype, and whether the params count steps (stochastic rounding).
        momentum = scalar(group["momentum"])
        return momentum != 0, group["state_dtype"], bool(group["stochastic_rounding"])

    def _hyperparameters(self, index: int, group: dict) -> tuple:
        if group.get("differentiable"):
            raise ValueError(f"param_groups[{index}]['differentiable']: True is not supported")
        try:
            checked = _checks.sgd_hyperparameters(
                lr=scalar(group["lr"]), momentum=scalar(group["momentum"]), dampening=group["dampening"],
                nesterov=group["nesterov"], weight_decay=scalar(group["weight_decay"]),
                maximize=group["maximize"],
            )
            lazy = _checks.check_flag(group["lazy_momentum"], "lazy_momentum")
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"param_groups[{index}]: {exc}") from None
        return (checked["lr"], checked["weight_decay"], checked["momentum"], checked["dampening"],
                checked["nesterov"], checked["maximize"], lazy, group_seed(index, group))

    def _build_plan(self, index: int, group: dict, with_grad: list[torch.Tensor], kinds: list[bool],
                    flag: object) -> Plan:
        labels = self._labels(index, group, with_grad)
        for p, label in zip(with_grad, labels):
            check_tensor(p, label, half=True)
        self._check_rounding_params(index, group)
        momentum_on, mode, stochastic = flag
        plan = Plan(group, with_grad, kinds, flag)
        dense, sparse = plan.split()
        # With stochastic rounding every param counts its steps in state[p]["step"] (the generator's t).
        counts = self._counts(with_grad, labels) if stochastic else [0] * len(with_grad)
        first = [False] * len(with_grad)
        buffers: list[State] | None = None
        if momentum_on:
            buffers = []
            for i, (p, label) in enumerate(zip(with_grad, labels)):
                state = self.state[p]
                found = state.get("momentum_buffer")
                if found is None:
                    # Written by the first step (buf = g) and put in ``state`` only once that step is taken.
                    param = numpy_view(p.detach())
                    dtype = _checks.state_dtype(param.dtype, mode)
                    buffers.append(new_state(param, tuple(p.shape), 0.0, dtype))
                else:
                    tensor, buffer = self._state_buffer(p, found, label, 0.0, mode=mode)
                    state["momentum_buffer"] = tensor
                    buffers.append(buffer)
                first[i] = found is None
        # Cohorts of params that share the engine's step count: the momentum rule's (buf = g at 0) and,
        # with stochastic rounding, the generator's t = steps + 1.
        by_key: dict[tuple[bool, int], list[int]] = {}
        for d, i in enumerate(dense):
            by_key.setdefault((first[i], counts[i]), []).append(d)
        dtype = np.float64 if step_dtype() == torch.float64 else np.float32
        for (starting, count), positions in sorted(by_key.items()):
            chosen = [dense[d] for d in positions]
            cohort = Cohort(
                positions, [with_grad[i] for i in chosen], [labels[i] for i in chosen],
                None if buffers is None else [buffers[i] for i in chosen],
                self._engine_steps(momentum_on, starting, count, stochastic), first=starting, mode=mode,
            )
            if stochastic:
                cohort.steps = np.full(len(positions), count, dtype=dtype)
                self._share_steps(cohort.steps, [with_grad[i] for i in chosen])
            plan.cohorts.append(cohort)
        if sparse:
            tables = Tables([with_grad[i] for i in sparse], [labels[i] for i in sparse],
                            None if buffers is None else [buffers[i] for i in sparse], mode=mode)
            if momentum_on:
                tables.first = [first[i] for i in sparse]
                tables.zeros = [None] * len(sparse)
            if stochastic:
                tables.steps = np.array([counts[i] for i in sparse], dtype=dtype)
                self._share_steps(tables.steps, [with_grad[i] for i in sparse])
            plan.tables = tables
        if momentum_on or stochastic:
            for p in with_grad:
                state = self.state[p]
                plan.dicts.append(state)
                plan.entries.append(state.get("momentum_buffer"))
            if stochastic:
                plan.steps = [self.state[p]["step"] for p in with_grad]
        return plan

    def _counts(self, with_grad: list[torch.Tensor], labels: list[str]) -> list[int]:
        """The params' step counts (``state[p]["step"]``, kept with stochastic rounding; 0 where none)."""
        counts = []
        for p, label in zip(with_grad, labels):
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0, dtype=step_dtype())
            step = float(scalar(state["step"]))
            if not (step >= 0 and step.is_integer()):
                raise ValueError(f"state of {label}['step']: expected a whole number >= 0, got {step}")
            counts.append(int(step))
        return counts

    @staticmethod
    def _engine_steps(momentum_on: bool, starting: bool, count: int, stochastic: bool) -> int:
        """The engine's ``steps`` for a param's step: the momentum rule starts (buf = g) at 0 only; with
        stochastic rounding it is also the generator's t - 1, so the param's count where the momentum rule
        allows it (a buffer starting late takes 0; a buffer without a count, from torch.optim, 1)."""
        if momentum_on:
            return 0 if starting else max(count, 1) if stochastic else 1
        return count if stochastic else 1

    def _run(self, plan: Plan, arrays: list[np.ndarray], hyper: tuple, threads: int) -> None:
        lr, weight_decay, momentum, dampening, nesterov, maximize, _, seed = hyper
        started = False
        for cohort in plan.cohorts:
            engine = cohort.engine
            if cohort.pending:
                cohort.ready(self._cohort_grads(plan, cohort, arrays))
            engine.sgd(
                self._cohort_grads(plan, cohort, arrays), lr, weight_decay, momentum, dampening, nesterov,
                maximize, threads, False, seed if cohort.half else None,
            )
            if cohort.steps is not None:            # stochastic rounding: the params' own counts
                count = int(cohort.steps[0]) + 1
                cohort.steps.fill(count)
                engine.steps = count
            increment_version(cohort.tensors)
            if self._touched:           # every row's buffer may have moved: records are rebuilt if needed
                for p in cohort.tensors:
                    self._touched.pop(p, None)
            if cohort.first:
                self._keep_buffers(cohort.tensors, cohort.buffers)
                started = True
        if started:
            self._forget(plan)

    def _batches(self, tables: Tables, hyper: tuple) -> list[list[int]]:
        """The tables (positions) that one kernel call steps: all of them without momentum; with it,
        those whose buffers start at this step (``buf = g``), then the others; with stochastic rounding,
        those that share a step count too (the generator's t)."""
        everything = tables.everything
        if tables.steps is not None:
            counts = tables.steps.tolist()
            first = tables.first if hyper[2] != 0 and tables.first else [False] * len(counts)
            by_key: dict[tuple[bool, float], list[int]] = {}
            for j, key in enumerate(zip(first, counts)):
                by_key.setdefault(key, []).append(j)
            return [by_key[key] for key in sorted(by_key, key=lambda key: not key[0])]
        if hyper[2] == 0 or not any(tables.first):
            return [everything]
        starting = [j for j in everything if tables.first[j]]
        going = [j for j in everything if not tables.first[j]]
        return [starting, going] if going else [starting]

    def _run_tables(self, plan: Plan, rows: list[tuple[np.ndarray, np.ndarray]], batch: list[int],
                    hyper: tuple, threads: int) -> None:
        lr, weight_decay, momentum, dampening, nesterov, maximize, lazy, seed = hyper
        tables = plan.tables
        engine = tables.engine
        starting = momentum != 0 and tables.first[batch[0]]
        records = [self._record(tables, j) for j in batch] if momentum != 0 and not lazy else None
        steps = tables.steps
        count = 0 if steps is None else int(steps[batch[0]])
        base = self._engine_steps(momentum != 0, starting, count, steps is not None)
        seed = seed if tables.half else None
        engine.steps = base                            # buf = g at a param's first step
        indices = [rows[j][0] for j in batch]
        tables.ready(batch, indices)
        bad = engine.sgd_rows_many(
            indices, [rows[j][1] for j in batch], batch, False, lr, weight_decay, momentum, dampening,
            nesterov, maximize, threads, seed,
        )
        if bad >= 0:
            raise tables.refused(batch, indices, bad)
        if records is not None:                        # torch's rule: then the rows named before
            for j, record, named in zip(batch, records, indices):
                self._step_others(tables, j, record.others(named), lr, momentum, dampening, nesterov,
                                  threads, base, seed)
                record.add(named)
        elif momentum != 0 and self._touched:
            for j in batch:
                self._touched.pop(tables.tensors[j], None)
        if steps is not None:                          # stochastic rounding: the tables' own counts
            steps[batch] = count + 1
        if starting:
            self._keep_buffers([tables.tensors[j] for j in batch], [tables.buffers[j] for j in batch])
            self._forget(plan)

    def _record(self, tables: Tables, j: int) -> _TouchedRows:
        """The touched rows of table ``j``, valid for its current momentum buffer."""
        p = tables.tensors[j]
        nrows = tables.arrays[j].shape[0]
        if tables.first[j]:
            record = _TouchedRows(nrows)       # the buffer enters ``state`` after this step
        else:
            record = self._touched.get(p)
            buffer = self.state[p]["momentum_buffer"]
            if record is not None and record.buffer is buffer:
                return record
            record = _TouchedRows(nrows, tables.states[j])
            record.buffer = buffer
        self._touched[p] = record
        return record

    def _step_others(self, tables: Tables, j: int, others: np.ndarray, lr: float, momentum: float,
                     dampening: float, nesterov: bool, threads: int, steps: int = 1,
                     seed: int | None = None) -> None:
        """torch's rule on rows touched at earlier steps that this step's grad does not name: a zero grad
        (``buf = momentum * buf``, then the param moves by it), in blocks of zero rows."""
        if others.size == 0:
            return
        zeros = tables.zeros[j]
        if zeros is None:
            table = tables.arrays[j]
            zeros = tables.zeros[j] = np.zeros((_ZERO_ROWS, table.shape[1]), table.dtype)
        engine = tables.engine
        for start in range(0, others.size, _ZERO_ROWS):
            block = others[start : start + _ZERO_ROWS]
            engine.steps = steps                       # the step of the named rows (the generator's t)
            engine.sgd_rows(
                j, block, zeros[: block.size], True, lr, 0.0, momentum, dampening, nesterov, False, threads,
                seed,
            )

    def _keep_buffers(self, tensors: list[torch.Tensor], buffers: list[State]) -> None:
        """Put the buffers that a first step wrote into ``state`` (torch.optim's layout)."""
        for p, buffer in zip(tensors, buffers):
            tensor = self._own(p, buffer)
            self.state[p]["momentum_buffer"] = tensor
            record = self._touched.get(p)
            if record is not None and record.buffer is None:
                record.buffer = tensor

    def _forget(self, plan: Plan) -> None:
        # The buffers are in ``state`` now: the next step builds one engine for all.
        for index, cached in list(self._plans.items()):
            if cached is plan:
                del self._plans[index]
