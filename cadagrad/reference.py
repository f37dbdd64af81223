"""cadagrad's update rules in plain NumPy: the readable statement the compiled kernels must match.

Each step follows ../shared/SEMANTICS.md line by line, in the same operation order, with every scalar
cast to the array's dtype before it meets an array, so results are bit-identical to the kernels. No
validation, no speed: this module exists to be read and to hold the kernels honest in the tests.
"""

from __future__ import annotations

import numpy as np


def _as_list(arrays):
    return [arrays] if isinstance(arrays, np.ndarray) else list(arrays)


class Adagrad:
    """AdaGrad (PyTorch's rule; ``eps_inside_sqrt`` for Keras / optax / the classic notebook)."""

    def __init__(self, params, lr=0.01, *, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, eps_inside_sqrt=False, maximize=False, num_threads=None):
        self.params = _as_list(params)
        self.lr, self.lr_decay, self.weight_decay, self.eps = lr, lr_decay, weight_decay, eps
        self.eps_inside_sqrt, self.maximize = eps_inside_sqrt, maximize
        self.sums = [np.full(p.shape, initial_accumulator_value, dtype=p.dtype) for p in self.params]
        self.step_count = 0

    def step(self, grads):
        self.step_count += 1
        t = self.step_count
        clr = self.lr / (1 + (t - 1) * self.lr_decay)        # in double (Python float)
        for p, grad, G in zip(self.params, _as_list(grads), self.sums):
            dtype = p.dtype.type
            g = -grad if self.maximize else grad
            if self.weight_decay != 0:
                g = g + dtype(self.weight_decay) * p
            G += g * g
            if self.eps_inside_sqrt:
                d = np.sqrt(G + dtype(self.eps))
            else:
                d = np.sqrt(G) + dtype(self.eps)
            p -= (dtype(clr) * g) / d


class SGD:
    """SGD with momentum, dampening, Nesterov, weight decay and maximize (PyTorch's rule)."""

    def __init__(self, params, lr, *, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
                 maximize=False, num_threads=None):
        self.params = _as_list(params)
        self.lr, self.momentum, self.dampening, self.nesterov = lr, momentum, dampening, nesterov
        self.weight_decay, self.maximize = weight_decay, maximize
        self.momentum_buffers = [np.zeros_like(p) for p in self.params] if momentum != 0 else None
        self.step_count = 0

    def step(self, grads):
        self.step_count += 1
        for i, (p, grad) in enumerate(zip(self.params, _as_list(grads))):
            dtype = p.dtype.type
            g = -grad if self.maximize else grad
            if self.weight_decay != 0:
                g = g + dtype(self.weight_decay) * p
            if self.momentum != 0:
                buf = self.momentum_buffers[i]
                if self.step_count == 1:
                    buf[...] = g
                else:
                    buf[...] = dtype(self.momentum) * buf + dtype(1 - self.dampening) * g
                g = g + dtype(self.momentum) * buf if self.nesterov else buf
            p -= dtype(self.lr) * g
