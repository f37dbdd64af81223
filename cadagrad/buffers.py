"""Params as views of one flat buffer, for the fastest multi-tensor steps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _checks

_ALIGNMENT = 64  # bytes: a cache line, and a whole AVX-512 vector


def flat_arrays(
    shapes: Sequence[int | tuple[int, ...]], dtype: np.dtype | type = np.float32, *, fill: float = 0.0
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Allocate one flat, 64-byte-aligned buffer and C-contiguous views of it with the given shapes.

    Stepping the views as a list and stepping the flat buffer as one array give the same bits; the flat
    buffer is one contiguous range, so a step on it has no per-tensor work at all. Give the grads the
    same layout (a second ``flat_arrays`` call with the same shapes) to step ``flat`` with ``flat_grad``.

    Parameters
    ----------
    shapes : sequence of int or tuple of int
        The shape of each view, in order.
    dtype : float32 or float64
        The dtype of the buffer.
    fill : float, default 0
        Initial value of every element.

    Returns
    -------
    flat : ndarray
        The 1-D buffer holding every view back to back.
    views : list of ndarray
        One view of ``flat`` per shape.

    Examples
    --------
    >>> from cadagrad import flat_arrays
    >>> flat, (w, b) = flat_arrays([(3, 2), 2])
    >>> w.shape, b.shape, flat.size
    ((3, 2), (2,), 8)
    """
    dtype = np.dtype(dtype)
    if dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
    shapes = [(s,) if isinstance(s, (int, np.integer)) else tuple(s) for s in shapes]
    for i, shape in enumerate(shapes):
        if any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
            raise ValueError(f"shapes[{i}]: expected non-negative ints, got {shape}")
    sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
    total = sum(sizes)
    raw = np.empty(total * dtype.itemsize + _ALIGNMENT, dtype=np.uint8)
    offset = -raw.ctypes.data % _ALIGNMENT
    flat = raw[offset : offset + total * dtype.itemsize].view(dtype)
    flat.fill(fill)
    views, start = [], 0
    for shape, size in zip(shapes, sizes):
        views.append(flat[start : start + size].reshape(shape))
        start += size
    return flat, views
