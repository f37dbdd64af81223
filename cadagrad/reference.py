"""cadagrad's update rules in plain NumPy: the readable statement the compiled kernels must match.

Each step follows the rules page of the documentation (``docs/rules.rst``, "The rules") line by line,
in the same operation order, with every scalar cast to the array's dtype before it meets an array, so
results are bit-identical to the kernels. A float16 or bfloat16 param keeps float32 state and is
stepped in float32, then rounded back once (the rules page, "16-bit params"). No validation, no speed:
this module exists to be read and to hold the kernels honest in the tests.

Examples
--------
>>> import numpy as np, cadagrad
>>> rng = np.random.default_rng(0)
>>> p = rng.standard_normal(1000).astype(np.float32)
>>> q = p.copy()
>>> fast = cadagrad.Adagrad(p, lr=0.1, weight_decay=0.01)
>>> slow = cadagrad.reference.Adagrad(q, lr=0.1, weight_decay=0.01)
>>> for _ in range(5):
...     g = rng.standard_normal(1000).astype(np.float32)
...     taken = fast.step(g)
...     slow.step(g)
>>> np.array_equal(p, q)
True
"""

from __future__ import annotations

import numpy as np


def _as_list(arrays):
    return [arrays] if isinstance(arrays, np.ndarray) else list(arrays)


def is_16_bit(dtype):
    """Whether ``dtype`` is a 16-bit float (``np.float16`` or ``ml_dtypes.bfloat16``): the only 2-byte
    dtypes a param can have, so the itemsize decides (and this module needs NumPy only)."""
    return np.dtype(dtype).itemsize == 2


def state_dtype(dtype):
    """The dtype of a param's state: float32 for a 16-bit param, else the param's own dtype."""
    return np.dtype(np.float32) if is_16_bit(dtype) else np.dtype(dtype)


def _widened(update, p, grad, *state):
    """``update(p, grad, *state)`` in float32 for a 16-bit param (the rules page, "16-bit params"):
    p and grad widened (exactly), the float32 rule, p rounded back once to nearest even; else as it is."""
    if not is_16_bit(p.dtype):
        update(p, grad, *state)
        return
    wide = p.astype(np.float32)
    update(wide, grad.astype(np.float32), *state)
    p[...] = wide.astype(p.dtype)


def _summed_rows(indices, rows, assume_unique):
    """The distinct rows named by ``indices`` and their gradients, duplicates summed from zero in order."""
    if is_16_bit(rows.dtype):                          # summed in float32 (the rules page, "16-bit params")
        rows = rows.astype(np.float32)
    if assume_unique:
        return indices, rows
    unique, inverse = np.unique(indices, return_inverse=True)
    summed = np.zeros((len(unique), rows.shape[1]), dtype=rows.dtype)
    np.add.at(summed, inverse.ravel(), rows)
    return unique, summed


def adagrad_denominator(sums, eps, eps_inside_sqrt=False):
    """AdaGrad's divisor ``d`` from the accumulator: ``sqrt(G) + eps``, or ``sqrt(G + eps)`` with
    ``eps_inside_sqrt``; ``eps`` is cast to the accumulator's dtype first. A step moves by ``(lr*g) / d``."""
    eps = sums.dtype.type(eps)
    return np.sqrt(sums + eps) if eps_inside_sqrt else np.sqrt(sums) + eps


class Adagrad:
    """AdaGrad, as :class:`cadagrad.Adagrad` computes it, in plain NumPy.

    PyTorch's rule by default; ``eps_inside_sqrt=True`` for the ``sqrt(G + eps)`` denominator of Keras 3
    and optax; ``rowwise=True`` for one accumulator per row. The arguments are those of
    :class:`cadagrad.Adagrad` (``num_threads`` is accepted and ignored). ``step(grads)`` and
    ``step_rows(indices, rows, param=0, assume_unique=False)`` follow the rules page of the
    documentation, sections "AdaGrad" and "Sparse rows".

    Parameters
    ----------
    params : ndarray or list of ndarray
        Updated in place; nothing is validated.
    lr, lr_decay, weight_decay, initial_accumulator_value, eps, eps_inside_sqrt, maximize, rowwise : optional
        As for :class:`cadagrad.Adagrad`.
    num_threads : optional
        Ignored (the reference is serial).
    """

    def __init__(self, params, lr=0.01, *, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, eps_inside_sqrt=False, maximize=False, rowwise=False, num_threads=None):
        self.params = _as_list(params)
        self.lr, self.lr_decay, self.weight_decay, self.eps = lr, lr_decay, weight_decay, eps
        self.eps_inside_sqrt, self.maximize, self.rowwise = eps_inside_sqrt, maximize, rowwise
        self.sums = [np.full(p.shape[:1] if rowwise else p.shape, initial_accumulator_value,
                             dtype=state_dtype(p.dtype)) for p in self.params]
        self.step_count = 0

    def _update(self, p, grad, G, clr):
        dtype = p.dtype.type
        g = -grad if self.maximize else grad
        if self.weight_decay != 0:
            g = g + dtype(self.weight_decay) * p
        if self.rowwise:                                  # one accumulator per row: the mean of g*g,
            G += np.cumsum(g * g, axis=1)[:, -1] / dtype(p.shape[1])   # summed left to right
            G = G[:, None]
        else:
            G += g * g
        p -= (dtype(clr) * g) / adagrad_denominator(G, self.eps, self.eps_inside_sqrt)

    def _next_clr(self):
        self.step_count += 1
        return self.lr / (1 + (self.step_count - 1) * self.lr_decay)     # in double (Python float)

    def step(self, grads):
        clr = self._next_clr()
        for p, grad, G in zip(self.params, _as_list(grads), self.sums):
            _widened(self._update, p, grad, G, clr)

    def step_rows(self, indices, rows, *, param=0, assume_unique=False):
        clr = self._next_clr()
        p, G = self.params[param], self.sums[param]
        named, g = _summed_rows(indices, rows, assume_unique)
        p_rows, G_rows = p[named], G[named]               # copies, updated, then written back
        _widened(self._update, p_rows, g, G_rows, clr)
        p[named], G[named] = p_rows, G_rows


class SGD:
    """SGD with momentum, dampening, Nesterov, weight decay and maximize, in plain NumPy.

    PyTorch's rule, as :class:`cadagrad.SGD` computes it; the arguments are those of
    :class:`cadagrad.SGD` (``num_threads`` is accepted and ignored). ``step_rows`` follows the lazy rule
    of the rules page ("SGD with sparse gradients"): only the named rows and their momentum buffers move.

    Parameters
    ----------
    params : ndarray or list of ndarray
        Updated in place; nothing is validated.
    lr : float
        Learning rate.
    momentum, dampening, nesterov, weight_decay, maximize : optional
        As for :class:`cadagrad.SGD`.
    num_threads : optional
        Ignored (the reference is serial).
    """

    def __init__(self, params, lr, *, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
                 maximize=False, num_threads=None):
        self.params = _as_list(params)
        self.lr, self.momentum, self.dampening, self.nesterov = lr, momentum, dampening, nesterov
        self.weight_decay, self.maximize = weight_decay, maximize
        self.momentum_buffers = ([np.zeros(p.shape, dtype=state_dtype(p.dtype)) for p in self.params]
                                 if momentum != 0 else None)
        self.step_count = 0

    def _update(self, p, grad, buf):
        dtype = p.dtype.type
        g = -grad if self.maximize else grad
        if self.weight_decay != 0:
            g = g + dtype(self.weight_decay) * p
        if self.momentum != 0:
            if self.step_count == 1:
                buf[...] = g
            else:
                buf[...] = dtype(self.momentum) * buf + dtype(1 - self.dampening) * g
            g = g + dtype(self.momentum) * buf if self.nesterov else buf
        p -= dtype(self.lr) * g

    def step(self, grads):
        self.step_count += 1
        for i, (p, grad) in enumerate(zip(self.params, _as_list(grads))):
            _widened(self._update, p, grad, self.momentum_buffers[i] if self.momentum != 0 else None)

    def step_rows(self, indices, rows, *, param=0, assume_unique=False):
        """Only the named rows move, their momentum buffers too (the lazy rule, as TensorFlow's)."""
        self.step_count += 1
        p = self.params[param]
        named, g = _summed_rows(indices, rows, assume_unique)
        p_rows = p[named]
        buf_rows = self.momentum_buffers[param][named] if self.momentum != 0 else None
        _widened(self._update, p_rows, g, buf_rows)
        p[named] = p_rows
        if buf_rows is not None:
            self.momentum_buffers[param][named] = buf_rows


def sign(x):
    """``np.sign``: 1 for x > 0, -1 for x < 0, +0.0 for +0.0 and -0.0, NaN for NaN (the kernels' too)."""
    return np.sign(x)


def positive_part(x):
    """``max(x, 0)`` as the kernels compute it: ``x`` if ``x > 0`` or NaN, else +0.0 (never -0.0)."""
    return np.where(x <= 0, x.dtype.type(0), x)


class ProximalAdagrad:
    """Proximal AdaGrad with l1 and l2 (TensorFlow's ``ProximalAdagradOptimizer``), in plain NumPy.

    At step ``t``, for every element, in the param's dtype (``lr``, ``l1``, ``l2`` each rounded to it)::

        G   = G + g*g
        lrt = lr / sqrt(G)
        v   = p - lrt*g
        v   = sign(v) * max(|v| - lrt*l1, 0)                    only if l1 > 0
        v   = v / (1 + lrt*l2)                                  only if l2 > 0
        p   = v

    The rules page of the documentation, section "Proximal AdaGrad", is the full statement.
    ``step_rows`` sums duplicate rows first and updates the named rows only.

    Parameters
    ----------
    params : ndarray or list of ndarray
        Updated in place; nothing is validated.
    lr, l1, l2, initial_accumulator_value : optional
        As for :class:`cadagrad.ProximalAdagrad`.
    num_threads : optional
        Ignored (the reference is serial).
    """

    def __init__(self, params, lr, *, l1=0.0, l2=0.0, initial_accumulator_value=0.1, num_threads=None):
        self.params = _as_list(params)
        self.lr, self.l1, self.l2 = lr, l1, l2
        self.sums = [np.full(p.shape, initial_accumulator_value, dtype=p.dtype) for p in self.params]
        self.step_count = 0

    def _update(self, p, g, G):
        dtype = p.dtype.type
        lr, l1, l2 = dtype(self.lr), dtype(self.l1), dtype(self.l2)
        G += g * g
        lrt = lr / np.sqrt(G)
        v = p - lrt * g
        if self.l1 > 0:
            v = sign(v) * positive_part(np.abs(v) - lrt * l1)
        if self.l2 > 0:                                   # with l2 == 0 the division by 1 is skipped
            v = v / (dtype(1) + lrt * l2)
        p[...] = v

    def step(self, grads):
        self.step_count += 1
        for p, g, G in zip(self.params, _as_list(grads), self.sums):
            self._update(p, g, G)

    def step_rows(self, indices, rows, *, param=0, assume_unique=False):
        self.step_count += 1
        p, G = self.params[param], self.sums[param]
        named, g = _summed_rows(indices, rows, assume_unique)
        p_rows, G_rows = p[named], G[named]
        self._update(p_rows, g, G_rows)
        p[named], G[named] = p_rows, G_rows


class AdagradDA:
    """AdaGrad dual averaging with l1 and l2 (TensorFlow's ``AdagradDAOptimizer``), in plain NumPy.

    Keeps the gradient sum ``S`` (from 0) and the squared sum ``G`` (from ``initial_accumulator_value``).
    At step ``t`` (``T = t``), for every element, in the param's dtype::

        S  = S + g
        G  = G + g*g
        p  = -sign(S) * lr * max(|S| - l1T, 0) / (l2Tlr + sqrt(G))     if l1 > 0
        p  = -lr * S / (l2Tlr + sqrt(G))                               otherwise

    with ``l1T = l1*T`` and ``l2Tlr = (l2*T)*lr`` computed once per step in double precision, then
    rounded to the dtype; ``lr`` is rounded to the dtype. The previous ``p`` does not enter. The rules
    page of the documentation, section "AdaGrad dual averaging", is the full statement.

    Parameters
    ----------
    params : ndarray or list of ndarray
        Updated in place; nothing is validated.
    lr, l1, l2, initial_accumulator_value : optional
        As for :class:`cadagrad.AdagradDA`.
    num_threads : optional
        Ignored (the reference is serial).
    """

    def __init__(self, params, lr, *, l1=0.0, l2=0.0, initial_accumulator_value=0.1, num_threads=None):
        self.params = _as_list(params)
        self.lr, self.l1, self.l2 = lr, l1, l2
        self.grad_sums = [np.zeros(p.shape, dtype=p.dtype) for p in self.params]
        self.sums = [np.full(p.shape, initial_accumulator_value, dtype=p.dtype) for p in self.params]
        self.step_count = 0

    def _update(self, p, g, S, G):
        dtype = p.dtype.type
        T = self.step_count
        lr = dtype(self.lr)
        l1T = dtype(self.l1 * T)                          # in double (Python float), then cast
        l2Tlr = dtype(self.l2 * T * self.lr)
        S += g
        G += g * g
        denominator = l2Tlr + np.sqrt(G)
        if self.l1 > 0:
            p[...] = -sign(S) * lr * positive_part(np.abs(S) - l1T) / denominator
        else:
            p[...] = -lr * S / denominator

    def step(self, grads):
        self.step_count += 1
        for p, g, S, G in zip(self.params, _as_list(grads), self.grad_sums, self.sums):
            self._update(p, g, S, G)

    def step_rows(self, indices, rows, *, param=0, assume_unique=False):
        self.step_count += 1
        p, S, G = self.params[param], self.grad_sums[param], self.sums[param]
        named, g = _summed_rows(indices, rows, assume_unique)
        p_rows, S_rows, G_rows = p[named], S[named], G[named]
        self._update(p_rows, g, S_rows, G_rows)
        p[named], S[named], G[named] = p_rows, S_rows, G_rows
