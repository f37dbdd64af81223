# Type stubs for the compiled kernels (cadagrad/_kernels_{generic,avx2,avx512}, re-exported by _kernels.py).
# tools/check_wheel.sh runs `python -m mypy.stubtest cadagrad._kernels` on the installed wheel against them.
from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np
from typing_extensions import disjoint_base

_Arrays = np.ndarray | Sequence[np.ndarray]

@disjoint_base  # a cdef class with C fields (PEP 800)
class StepEngine:
    steps: int
    def __new__(
        cls,
        params: Sequence[np.ndarray],
        states: Sequence[np.ndarray] | None,
        single: bool,
        explain: Callable[[object], object] | None,
        steps: int = 0,
        row_widths: Sequence[int] | None = None,
        states2: Sequence[np.ndarray] | None = None,
        kinds: Sequence[int] | None = None,
    ) -> StepEngine: ...
    @property
    def size(self) -> int: ...
    def has_nonfinite(self, grads: _Arrays, num_threads: int = 0) -> bool: ...
    def adagrad(
        self,
        grads: _Arrays,
        lr: float,
        lr_decay: float,
        weight_decay: float,
        eps: float,
        eps_inside_sqrt: bool,
        maximize: bool,
        num_threads: int,
        skip_if_nonfinite: bool = False,
        seed: int | None = None,
    ) -> bool: ...
    def sgd(
        self,
        grads: _Arrays,
        lr: float,
        weight_decay: float,
        momentum: float,
        dampening: float,
        nesterov: bool,
        maximize: bool,
        num_threads: int,
        skip_if_nonfinite: bool = False,
        seed: int | None = None,
    ) -> bool: ...
    def adagrad_rows(
        self,
        index: int,
        indices: np.ndarray,
        rows: np.ndarray,
        assume_unique: bool,
        lr: float,
        lr_decay: float,
        weight_decay: float,
        eps: float,
        eps_inside_sqrt: bool,
        maximize: bool,
        num_threads: int,
        seed: int | None = None,
    ) -> int: ...
    def sgd_rows(
        self,
        index: int,
        indices: np.ndarray,
        rows: np.ndarray,
        assume_unique: bool,
        lr: float,
        weight_decay: float,
        momentum: float,
        dampening: float,
        nesterov: bool,
        maximize: bool,
        num_threads: int,
        seed: int | None = None,
    ) -> int: ...
    def adagrad_rows_many(
        self,
        indices_list: Sequence[np.ndarray],
        rows_list: Sequence[np.ndarray],
        params: Sequence[int],
        assume_unique: bool,
        lr: float,
        lr_decay: float,
        weight_decay: float,
        eps: float,
        eps_inside_sqrt: bool,
        maximize: bool,
        num_threads: int,
        seed: int | None = None,
    ) -> int: ...
    def sgd_rows_many(
        self,
        indices_list: Sequence[np.ndarray],
        rows_list: Sequence[np.ndarray],
        params: Sequence[int],
        assume_unique: bool,
        lr: float,
        weight_decay: float,
        momentum: float,
        dampening: float,
        nesterov: bool,
        maximize: bool,
        num_threads: int,
        seed: int | None = None,
    ) -> int: ...
    def rows_ceiling(
        self,
        indices_list: Sequence[np.ndarray],
        rows_list: Sequence[np.ndarray],
        params: Sequence[int],
        assume_unique: bool,
        num_threads: int,
    ) -> int: ...
    def proximal_adagrad(
        self,
        grads: _Arrays,
        lr: float,
        l1: float,
        l2: float,
        num_threads: int,
        skip_if_nonfinite: bool = False,
    ) -> bool: ...
    def proximal_adagrad_rows(
        self,
        index: int,
        indices: np.ndarray,
        rows: np.ndarray,
        assume_unique: bool,
        lr: float,
        l1: float,
        l2: float,
        num_threads: int,
    ) -> int: ...
    def adagrad_da(
        self,
        grads: _Arrays,
        lr: float,
        l1: float,
        l2: float,
        num_threads: int,
        skip_if_nonfinite: bool = False,
    ) -> bool: ...
    def adagrad_da_rows(
        self,
        index: int,
        indices: np.ndarray,
        rows: np.ndarray,
        assume_unique: bool,
        lr: float,
        l1: float,
        l2: float,
        num_threads: int,
    ) -> int: ...
    def ceiling(self, grads: _Arrays, num_threads: int) -> None: ...

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def data_address(arr: np.ndarray) -> int: ...
def available_variants() -> dict[str, ModuleType]: ...

# The variant in use and the portable one: modules with the names above plus ISA (str), COMPILE_FLAGS
# (str), PARALLEL_GRAIN (int), has_openmp() -> bool and cpu_features() -> dict[str, bool].
selected: ModuleType
_kernels_generic: ModuleType
