"""cadagrad: AdaGrad, SGD, proximal AdaGrad and AdaGrad dual averaging steps in place on NumPy buffers,
OpenMP-parallel Cython kernels.

The compiled optimizers give results bit-identical to the plain NumPy rules in ``cadagrad.reference``.
"""

from __future__ import annotations

from . import reference
from ._threads import build_info, get_num_threads, set_num_threads
from ._version import __version__
from .buffers import flat_arrays
from .functional import adagrad_da_step, adagrad_step, proximal_adagrad_step, sgd_step
from .optim import SGD, Adagrad
from .proximal import AdagradDA, ProximalAdagrad

__all__ = [
    "Adagrad",
    "SGD",
    "ProximalAdagrad",
    "AdagradDA",
    "adagrad_step",
    "sgd_step",
    "proximal_adagrad_step",
    "adagrad_da_step",
    "set_num_threads",
    "get_num_threads",
    "build_info",
    "flat_arrays",
    "reference",
    "__version__",
]
