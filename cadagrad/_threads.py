"""Thread count and build facts of the compiled kernels."""

from __future__ import annotations

import numpy as np

from . import _checks, _kernels
from ._version import __version__


def set_num_threads(n: int | None) -> None:
    """Set how many threads a large step uses when its optimizer names none.

    Parameters
    ----------
    n : int or None
        A positive count, or None to go back to the default: ``omp_get_max_threads()`` asked at every
        step, which follows ``OMP_NUM_THREADS`` and threadpoolctl limits. 0 and negative counts are
        refused. Steps on fewer than 32,768 elements per thread use fewer threads (one below that size).
    """
    _kernels.set_num_threads(_checks.check_num_threads(n, "n"))


def get_num_threads() -> int:
    """The thread count a large step uses when its optimizer names none (1 without OpenMP)."""
    return _kernels.get_num_threads()


def build_info() -> dict:
    """How the kernels were built and which variant runs.

    Returns
    -------
    dict
        ``version``, ``openmp`` (bool), ``isa`` (the variant in use), ``variants`` (those built and runnable
        here), ``compile_flags`` (of the variant in use), ``cpu`` (features the dispatcher checked),
        ``num_threads``, ``parallel_grain`` and ``numpy`` (the version at run time).
    """
    kernels = _kernels.selected
    return {
        "version": __version__,
        "openmp": kernels.has_openmp(),
        "isa": kernels.ISA,
        "variants": list(_kernels.available_variants()),
        "compile_flags": kernels.COMPILE_FLAGS,
        "cpu": _kernels._kernels_generic.cpu_features(),
        "num_threads": get_num_threads(),
        "parallel_grain": kernels.PARALLEL_GRAIN,
        "numpy": np.__version__,
    }
