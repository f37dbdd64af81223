"""cadagrad's update rules in plain NumPy: the readable statement the compiled kernels must match.

Each step follows the rules page of the documentation (``docs/rules.rst``, "The rules") line by line,
in the same operation order, with every scalar cast to the array's dtype before it meets an array, so
results are bit-identical to the kernels. A float16 or bfloat16 param is stepped in float32, then
rounded back once, to nearest or stochastically; its state is float32 or, by choice, 16-bit (the rules
page, "16-bit params"). No validation, no speed:
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


def state_dtype(dtype, mode=None):
    """The dtype of a param's state: the param's own with ``mode="param"`` or for a float32/float64
    param, else (a 16-bit param, by default) float32."""
    return np.dtype(np.float32) if is_16_bit(dtype) and mode != "param" else np.dtype(dtype)


_state_dtype_of = state_dtype       # for the constructors, whose state_dtype argument hides the function


def _mix32(x):
    """The generator's hash of uint32 array ``x``: two multiply-xorshift rounds, modulo 2**32."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def random_bits(seed, step, index):
    """The 32 random bits of stochastic rounding for the elements ``index`` (flat indices into their
    param, any integer array) at step ``step`` with ``seed`` (the rules page, "Stochastic rounding")."""

    def words(value):                                  # low and high 32-bit words, as uint32 arrays
        value = np.asarray(value, dtype=np.uint64)
        return (value & np.uint64(0xFFFFFFFF)).astype(np.uint32), (value >> np.uint64(32)).astype(np.uint32)

    seed_low, seed_high = words([seed])
    step_low, step_high = words([step])
    key = _mix32(_mix32(_mix32(_mix32(seed_low) ^ seed_high) ^ step_low) ^ step_high)
    index_low, index_high = words(index)
    return _mix32(_mix32(key ^ index_high) ^ index_low)


def round_stochastically(x, dtype, bits):
    """float32 ``x`` rounded to the 16-bit ``dtype``: away from zero if ``u < frac``, else toward zero,
    where ``u = (bits >> 8) / 2**24`` and ``frac`` is the distance of ``|x|`` from the 16-bit value below
    it over the spacing of 16-bit values there. NaN and infinities as rounding to nearest."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        nearest = x.astype(dtype)
        below = nearest.view(np.uint16) & np.uint16(0x7FFF)          # |x| to nearest, as bits
        widen = lambda b: b.view(dtype).astype(np.float32)             # noqa: E731
        below = below - (widen(below) > np.abs(x)).astype(np.uint16)  # |x| toward zero
        spacing = widen(below | np.uint16(1)) - widen(below & np.uint16(0xFFFE))
        frac = (np.abs(x) - widen(below)) / spacing
        u = (bits >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)
        rounded = below + (u < frac).astype(np.uint16)
    sign = (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16) & np.uint16(0x8000)
    return np.where(np.isnan(x), nearest.view(np.uint16), rounded | sign).view(dtype)


def _widened(update, p, grad, *state, stochastic=None):
    """``update(p, grad, *state)`` in float32 for a 16-bit param (the rules page, "16-bit params"): p,
    grad and any 16-bit state widened (exactly), the float32 rule, the state rounded back to nearest and
    p rounded back once, to nearest or, given ``stochastic`` (the elements' random bits), stochastically.
    A float32/float64 param is updated as it is."""
    if not is_16_bit(p.dtype):
        update(p, grad, *state)
        return
    wide_state = [s.astype(np.float32) if isinstance(s, np.ndarray) and is_16_bit(s.dtype) else s
                  for s in state]
    wide = p.astype(np.float32)
    update(wide, grad.astype(np.float32), *wide_state)
    for s, wide_s in zip(state, wide_state):
        if wide_s is not s:
            s[...] = wide_s.astype(s.dtype)
    p[...] = wide.astype(p.dtype) if stochastic is None else round_stochastically(wide, p.dtype, stochastic)


def _row_indices(named, width):
    """The flat element indices of rows ``named`` of a param with ``width`` columns, shape (k, width)."""
    return np.asarray(named, dtype=np.int64)[:, None] * width + np.arange(width)


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
    state_dtype, stochastic_rounding, seed : optional
        As for :class:`cadagrad.Adagrad`, but ``seed`` must be an int when ``stochastic_rounding``.
    num_threads : optional
        Ignored (the reference is serial).
    """

    def __init__(self, params, lr=0.01, *, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, eps_inside_sqrt=False, maximize=False, rowwise=False, state_dtype=None,
                 stochastic_rounding=False, seed=None, num_threads=None):
        self.params = _as_list(params)
        self.lr, self.lr_decay, self.weight_decay, self.eps = lr, lr_decay, weight_decay, eps
        self.eps_inside_sqrt, self.maximize, self.rowwise = eps_inside_sqrt, maximize, rowwise
        self.stochastic_rounding, self.seed = stochastic_rounding, seed
        self.sums = [np.full(p.shape[:1] if rowwise else p.shape, initial_accumulator_value,
                             dtype=_state_dtype_of(p.dtype, state_dtype)) for p in self.params]
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
            bits = _bits(self, np.arange(p.size).reshape(p.shape))
            _widened(self._update, p, grad, G, clr, stochastic=bits)

    def step_rows(self, indices, rows, *, param=0, assume_unique=False):
        clr = self._next_clr()
        p, G = self.params[param], self.sums[param]
        named, g = _summed_rows(indices, rows, assume_unique)
        p_rows, G_rows = p[named], G[named]               # copies, updated, then written back
        bits = _bits(self, _row_indices(named, p.shape[1]))
        _widened(self._update, p_rows, g, G_rows, clr, stochastic=bits)
        p[named], G[named] = p_rows, G_rows


def _bits(optimizer, index):
    """The random bits of the elements ``index`` at the optimizer's current step, or None (to nearest)."""
    if not optimizer.stochastic_rounding:
        return None
    return random_bits(optimizer.seed, optimizer.step_count, index)


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
    state_dtype, stochastic_rounding, seed : optional
        As for :class:`cadagrad.SGD`, but ``seed`` must be an int when ``stochastic_rounding``.
    num_threads : optional
        Ignored (the reference is serial).
    """

    def __init__(self, params, lr, *, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
                 maximize=False, state_dtype=None, stochastic_rounding=False, seed=None, num_threads=None):
        self.params = _as_list(params)
        self.lr, self.momentum, self.dampening, self.nesterov = lr, momentum, dampening, nesterov
        self.weight_decay, self.maximize = weight_decay, maximize
        self.stochastic_rounding, self.seed = stochastic_rounding, seed
        self.momentum_buffers = ([np.zeros(p.shape, dtype=_state_dtype_of(p.dtype, state_dtype))
                                  for p in self.params] if momentum != 0 else None)
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
            _widened(self._update, p, grad, self.momentum_buffers[i] if self.momentum != 0 else None,
                     stochastic=_bits(self, np.arange(p.size).reshape(p.shape)))

    def step_rows(self, indices, rows, *, param=0, assume_unique=False):
        """Only the named rows move, their momentum buffers too (the lazy rule, as TensorFlow's)."""
        self.step_count += 1
        p = self.params[param]
        named, g = _summed_rows(indices, rows, assume_unique)
        p_rows = p[named]
        buf_rows = self.momentum_buffers[param][named] if self.momentum != 0 else None
        _widened(self._update, p_rows, g, buf_rows, stochastic=_bits(self, _row_indices(named, p.shape[1])))
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
