"""The compiled kernels, in the variant that suits this CPU.

setup.py builds one module per instruction set (``_kernels_generic``, ``_kernels_avx2``,
``_kernels_avx512``); this module imports the widest one that the CPU runs and that was built, once (the
avx2 and avx512 variants also need F16C, which they use for float16 params).
Every variant gives the same bits. ``CADAGRAD_ISA=generic|avx2|avx512`` at import forces a variant
(one the CPU cannot run, or that was not built, is an ImportError).
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from . import _kernels_generic

# Widest first, with the CPU features each one needs (the avx2 and avx512 variants are built with -mf16c).
_VARIANTS = (("avx512", ("avx512", "f16c")), ("avx2", ("avx2", "f16c")), ("generic", ()))


def available_variants() -> dict[str, ModuleType]:
    """The kernel variants that were built and that this CPU can run, widest first."""
    features = _kernels_generic.cpu_features()
    found = {}
    for isa, needs in _VARIANTS:
        if not all(features[feature] for feature in needs):
            continue
        try:
            found[isa] = importlib.import_module(f"{__package__}._kernels_{isa}")
        except ModuleNotFoundError:
            continue
    return found


def _select() -> ModuleType:
    usable = available_variants()
    forced = os.environ.get("CADAGRAD_ISA", "").strip()
    if forced:
        if forced not in usable:
            raise ImportError(
                f"CADAGRAD_ISA={forced!r}: expected one of {sorted(usable)} (built and run by this CPU)"
            )
        return usable[forced]
    return next(iter(usable.values()))


selected = _select()
StepEngine = selected.StepEngine
set_num_threads = selected.set_num_threads
get_num_threads = selected.get_num_threads
data_address = selected.data_address


def _after_fork_in_child() -> None:
    for isa, _ in _VARIANTS:
        module = sys.modules.get(f"{__package__}._kernels_{isa}")
        if module is not None:
            module._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
