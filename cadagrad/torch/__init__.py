"""PyTorch optimizers that step CPU tensors in place through cadagrad's kernels, zero-copy.

``cadagrad.torch.Adagrad`` and ``cadagrad.torch.SGD`` are :class:`torch.optim.Optimizer` subclasses with
the constructor arguments, param groups, ``state`` layout and ``state_dict`` format of
``torch.optim.Adagrad`` and ``torch.optim.SGD``: a checkpoint moves between the two both ways, LR
schedulers drive them, and ``torch.distributed.optim.ZeroRedundancyOptimizer`` can shard them. The
update rules are cadagrad's (the rules page of the docs); PyTorch accumulates with a fused multiply-add,
so the two agree within a tolerance (relative ~1e-5 in float32 after tens of steps), not bit for bit.

torch is an optional dependency (``pip install cadagrad[torch]``): importing ``cadagrad`` does not import it;
importing ``cadagrad.torch`` does.

How a step runs
---------------
Params, grads and state are viewed as NumPy arrays (``tensor.numpy()``, no copy) and every param of a
param group that has a grad is updated by **one** kernel call (one OpenMP parallel region). The
arrays' addresses are kept in a step engine that is built at the first step and rebuilt only when the
set of params with a grad, a param's storage (``data_ptr()``) or a state entry changes; a step only
checks that nothing changed, views the current grads and runs the kernel. Hyperparameters are read
from ``param_groups`` at every step, so schedulers and ``ZeroRedundancyOptimizer`` can change them.

After the kernel call the params' autograd version counters are bumped, as an in-place
``param.add_`` would do, so a graph saved before the step refuses to back-propagate through the new values.

Params whose ``grad`` is None are skipped, as in PyTorch. AdaGrad's ``lr_decay`` uses each param's own
step count (``state[p]["step"]``, as PyTorch); params of a group whose counts differ (after a skipped
step, or after loading such a checkpoint) are stepped by one kernel call per distinct count.

Sparse grads (embedding tables)
-------------------------------
``nn.Embedding`` and ``nn.EmbeddingBag`` with ``sparse=True`` give their weight a sparse COO grad: one
sparse dim, uncoalesced, with duplicate rows and possibly no entry at all; DDP's all-reduce of such grads
gives one too. Such a grad is stepped by the same row kernel as ``cadagrad.Adagrad.step_rows``, called on
``grad._indices()[0]`` and ``grad._values()`` as they are: no coalesce, no ``sparse_mask``, nothing of
the table's size. Duplicate rows are summed from zero in order of appearance and every distinct row is
updated once, in O(nnz x D), bit for bit ``cadagrad.reference``'s ``step_rows`` on those indices and
values. Params with sparse and with dense grads may share an optimizer and a param group: the dense ones
still step in one kernel call per group, and the group's tables in one row-kernel call (one per distinct
step count, as the dense ones; for SGD with momentum, one for the tables whose buffers start at this step
and one for the others). A step runs the tables first. The row-kernel call with the most tables checks
all their indices before it writes; the indices of the other calls' tables are checked before any kernel
runs, so that an index out of range writes nothing anywhere. Every option works with sparse grads,
including those torch.optim refuses there (weight decay, which then applies to the named rows only;
maximize; Nesterov). For SGD with momentum the default is torch's rule (every row once named keeps
moving), ``lazy_momentum=True`` gives TensorFlow's (only the named rows move); the SGD docstring gives
both and their costs. A param of any shape (V, ...) takes a grad with one sparse dim as V
rows; ``rowwise`` AdaGrad needs 2-D params.

Requirements and differences from PyTorch
-----------------------------------------
- Params: CPU, dense (strided), C-contiguous float32 or float64 tensors, and for Adagrad and SGD float16
  or bfloat16 ones too (float32 state: see below); grads: the same, or sparse COO with one sparse dim,
  the param's shape and dtype and indices in range. Others (sparse CSR/CSC grads,
  several sparse dims, a wrong shape or dtype, an index out of range) raise a ValueError or TypeError
  naming the tensor (``param_groups[0]['params'][3].grad``) before anything is written.
- State tensors are cadagrad's own contiguous buffers (``torch.from_numpy`` views); tensors put in
  ``state`` from outside (``load_state_dict``, or ``ZeroRedundancyOptimizer`` writing ``state[p]``) are
  copied into such buffers at the next step. Buffers of 4 MiB or more are lazy (zero pages; rows take
  memory when a step touches them); the Adagrad docstring says what that means for reading
  ``state[p]["sum"]`` with a non-zero ``initial_accumulator_value``. ``state[p]["step"]`` tensors of
  params that step together are views of one buffer, replaced when the engine is rebuilt: read them
  from ``state`` or ``state_dict()`` after stepping rather than keeping references.
- ``foreach`` and ``fused`` are accepted and stored (for checkpoints) but change nothing: cadagrad's
  step is always one fused, multi-tensor kernel. ``differentiable=True`` is refused.
- A float16/bfloat16 param's state (``"sum"``, ``"momentum_buffer"``) is float32, not the param's dtype
  as in torch.optim; each step runs in float32 and rounds the param once (the rules page, "16-bit
  params"). ``load_state_dict`` keeps such state float32 and widens a torch.optim checkpoint's 16-bit
  state to it exactly (other dtypes are refused, naming the entry), where torch.optim casts loaded state
  to the param's dtype.
- ``initial_accumulator_value`` of a param group applies to that group's params (PyTorch uses the
  constructor's value for every group).
- ``cadagrad.torch.ProximalAdagrad`` and ``cadagrad.torch.AdagradDA`` have no torch.optim counterpart
  (TensorFlow's optimizers): their state is ``"step"`` and ``"sum"`` (and ``"grad_sum"`` for AdagradDA),
  and their results are bit for bit those of the NumPy classes on the same grads.
- Options beyond torch.optim's: ``eps_inside_sqrt`` and ``rowwise`` (AdaGrad), ``lazy_momentum`` (SGD).
  They are stored in the param groups (a group loaded from a torch.optim checkpoint takes the
  constructor's values). Row-wise AdaGrad state (shape ``(V,)`` per ``(V, D)`` param) cannot be loaded by
  torch.optim.Adagrad; everything else in ``state_dict()`` can, and torch's loads here (its sparse SGD
  momentum buffers too, made dense).
- ``ZeroRedundancyOptimizer(..., overlap_with_ddp=True)`` needs a functional optimizer and is not
  supported; the default ``overlap_with_ddp=False`` is.
"""

from __future__ import annotations

from .adagrad import Adagrad
from .proximal import AdagradDA, ProximalAdagrad
from .sgd import SGD

__all__ = ["Adagrad", "SGD", "ProximalAdagrad", "AdagradDA"]
