# Type stubs for the compiled kernels (cadagrad/_kernels_{generic,avx2,avx512}, re-exported by _kernels.py).
from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np

class StepEngine:
    steps: int
    def __init__(
        self,
        params: Sequence[np.ndarray],
        states: Sequence[np.ndarray] | None,
        single: bool,
        explain: Callable[[object], None] | None,
        steps: int = 0,
    ) -> None: ...
    @property
    def size(self) -> int: ...
    def adagrad(
        self,
        grads: np.ndarray | Sequence[np.ndarray],
        lr: float,
        lr_decay: float,
        weight_decay: float,
        eps: float,
        eps_inside_sqrt: bool,
        maximize: bool,
        num_threads: int,
    ) -> None: ...
    def sgd(
        self,
        grads: np.ndarray | Sequence[np.ndarray],
        lr: float,
        weight_decay: float,
        momentum: float,
        dampening: float,
        nesterov: bool,
        maximize: bool,
        num_threads: int,
    ) -> None: ...
    def ceiling(self, grads: np.ndarray | Sequence[np.ndarray], num_threads: int) -> None: ...

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def available_variants() -> dict[str, ModuleType]: ...

selected: ModuleType
