"""Optimizer state buffers: where they live in memory and when they are filled.

A large buffer (from :data:`LAZY_BYTES` on) is anonymous memory that the OS zero-fills on first touch,
so the rows a step never touches cost nothing: an AdaGrad accumulator over a 10^7 x 64 float32 table
takes memory only for the rows that sparse steps name. Three rules keep that cheap and exact:

* Huge pages only where a dense step runs. The buffer is advised ``MADV_NOHUGEPAGE`` at allocation
  (4,096 random rows would otherwise fault in 4,096 x 2 MiB where transparent huge pages are always
  on) and ``MADV_HUGEPAGE`` by :meth:`State.ready_all`, before the first dense step touches it: a dense
  step over 4 KiB pages runs up to ~1.45x slower than over huge pages.
* The 2 MiB phase from the param. A large buffer starts :data:`STATE_PHASE` bytes after its param
  modulo 2 MiB: with huge pages, streams whose addresses nearly coincide modulo 2 MiB collide
  (BENCHMARKS.md: a 2^24-element AdaGrad step took 14.6 ms at a 4 KiB offset, 8.9 ms at 768 KiB).
* An exact initial value. Zero pages are the initial value 0 for free. Any other value (bitwise: -0.0
  too) is written row by row on first touch: :meth:`State.ready_rows` fills the rows a row step names
  that no step has named before (a per-row ``bool`` array records which), O(k) for k indices; the
  first dense step fills all remaining rows once (:meth:`State.ready_all`) and drops that record.
  Every value is the one ``np.full(shape, value, dtype)`` would hold, so results stay bit-identical
  to ``cadagrad.reference``, which fills eagerly.

A small buffer is filled eagerly with ``np.full`` (no mapping of its own; nothing to make ready).

Interface (for ``cadagrad.optim`` and the torch adapter)
-------------------------------------------------------
``new_state(param: np.ndarray, shape: tuple[int, ...], value: float) -> State``
    Allocate the state of ``param`` (its dtype, float32 for float16/bfloat16; ``shape`` is
    ``param.shape``, or ``param.shape[:1]`` for row-wise state), holding ``value`` everywhere as far
    as any reader can tell.
``State.array: np.ndarray``
    The buffer itself, C-contiguous, fixed address for the life of the ``State`` (hand it to the step
    engine; ``torch.from_numpy(state.array)`` shares it). Untouched rows may still hold 0 where
    ``value`` is not 0: read it only after :meth:`State.materialize`.
``State.pending: bool``
    True while :meth:`State.ready_all` has work left (huge-page advice or rows to fill). Cheap to
    test on every step; False for small buffers.
``State.ready_rows(indices: np.ndarray) -> None``
    Call before a row kernel on rows ``indices`` (int32/int64, 1-D, already validated as an array;
    the range is not: an out-of-range index makes it write nothing, so the kernel's own check still
    reports it). Idempotent, O(k), no allocation once the named rows are ready.
``State.fills: bool``
    Whether ``ready_rows`` may still write (a value other than 0 and rows not filled yet). A kernel
    call over several tables checks the ranges of all their indices itself, but only once called:
    while any of its tables ``fills``, check those ranges before the first ``ready_rows``, so that a
    bad index in one table leaves the others' rows unfilled.
``State.ready_all() -> None``
    Call before a dense kernel step (after validating its grads): advises huge pages, fills every
    remaining row, and leaves ``pending`` False. O(size) once, then free.
``State.materialize() -> np.ndarray``
    Fill every remaining row (as ``ready_all``) only if ``value`` is not 0, and return ``array``: call
    it before handing the buffer itself out (a ``sums`` property, a torch ``state_dict`` that holds
    references). With ``value == 0`` it costs nothing and keeps the buffer sparse.
``State.copy() -> np.ndarray``
    A copy as a reader sees it (``state_dict``), leaving this buffer as it is. With ``value == 0`` and
    no dense step yet, the copy is itself lazy (only nonzero rows are written: one read of the buffer,
    memory for the touched rows); otherwise a full, filled copy.
``State.from_array(param, shape, value, array) -> State``
    A new state holding ``array`` (``load_state_dict``): rows equal to zero stay zero pages and rows
    bitwise equal to ``value`` stay unfilled, so loading a sparse checkpoint costs the touched rows.

Thread safety: ``ready_rows``, ``ready_all`` and ``materialize`` may run while a kernel in another
thread updates rows that are already ready (they only write rows not ready yet).
"""

from __future__ import annotations

import math
import mmap
import threading
from collections.abc import Iterator

import numpy as np

from ._checks import state_dtype
from ._kernels import data_address

PHASE_PERIOD = 1 << 21           # a transparent huge page: address bits below it are physical
STATE_PHASE = 768 << 10          # where a large buffer starts relative to its param, modulo that
LAZY_BYTES = 1 << 22             # from this size on, a buffer is lazy (NumPy too switches to huge pages here)
_CHUNK_BYTES = 1 << 22           # rows scanned per chunk when copying or loading

_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)        # Linux only
_NOHUGEPAGE = getattr(mmap, "MADV_NOHUGEPAGE", None)
# Private, not Python's default shared mapping: shared anonymous memory is shmem, which ignores
# MADV_HUGEPAGE under the usual shmem_enabled=never, and a forked child would share the state.
_PRIVATE = {"flags": mmap.MAP_PRIVATE} if hasattr(mmap, "MAP_PRIVATE") else {}


def _advise(mapping: mmap.mmap, advice: int | None) -> None:
    if advice is None:
        return
    try:
        mapping.madvise(advice)
    except OSError:                 # a kernel built without transparent huge pages: EINVAL; harmless
        pass


def _is_zero(value: float) -> bool:
    return value == 0.0 and math.copysign(1.0, value) > 0.0


def _anonymous(
    shape: tuple[int, ...], dtype: np.dtype, phase_from: int | None
) -> tuple[np.ndarray, mmap.mmap]:
    """Zero pages of ``shape``, 4 KiB pages only; with ``phase_from``, at STATE_PHASE from it mod 2 MiB."""
    nbytes = math.prod(shape) * dtype.itemsize
    mapping = mmap.mmap(-1, nbytes + (PHASE_PERIOD if phase_from is not None else 0), **_PRIVATE)
    _advise(mapping, _NOHUGEPAGE)
    raw = np.frombuffer(mapping, dtype=np.uint8)
    offset = 0
    if phase_from is not None:
        offset = (phase_from + STATE_PHASE - data_address(raw)) % PHASE_PERIOD
        offset -= offset % dtype.itemsize
    return raw[offset : offset + nbytes].view(dtype).reshape(shape), mapping


_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}   # by item size: 16-bit state too


def _as_rows(array: np.ndarray) -> np.ndarray:
    """``array`` as (rows, columns) of unsigned integers of its item size: bitwise comparisons."""
    bits = array.view(_UINT[array.dtype.itemsize])
    return bits.reshape(array.shape[0], math.prod(array.shape[1:])) if array.ndim else bits.reshape(1, 1)


def _per_row(mask: np.ndarray, array: np.ndarray) -> np.ndarray:
    """A ``bool`` per row of ``array``, shaped to broadcast over it."""
    return mask.reshape(array.shape[:1] + (1,) * (array.ndim - 1)) if array.ndim else mask.reshape(())


def _row_chunks(nrows: int, ncols: int, itemsize: int) -> Iterator[tuple[int, int]]:
    step = max(1, _CHUNK_BYTES // max(1, ncols * itemsize))
    for lo in range(0, nrows, step):
        yield lo, min(nrows, lo + step)


def _nonzero_rows(array: np.ndarray) -> np.ndarray:
    """A ``bool`` per row: whether any bit of the row is set. Reads untouched pages as the zero page."""
    rows = _as_rows(array)
    out = np.empty(rows.shape[0], dtype=np.bool_)
    for lo, hi in _row_chunks(rows.shape[0], rows.shape[1], array.dtype.itemsize):
        np.any(rows[lo:hi], axis=1, out=out[lo:hi])
    return out


def _copy_rows(dst: np.ndarray, src: np.ndarray, which: np.ndarray) -> None:
    """``dst[r] = src[r]`` for the rows ``r`` where ``which`` is True, a chunk at a time."""
    dst_rows, src_rows = _as_rows(dst), _as_rows(src)
    for lo, hi in _row_chunks(src_rows.shape[0], src_rows.shape[1], src.dtype.itemsize):
        named = np.flatnonzero(which[lo:hi]) + lo
        if named.size:
            dst_rows[named] = src_rows[named]


class State:
    """One state buffer of an optimizer, zero pages until touched; see the module docstring.

    Build it with :func:`new_state` or :meth:`State.from_array`.
    """

    __slots__ = ("array", "value", "pending", "_mapping", "_fill", "_ready", "_seen", "_lock", "_dense")

    array: np.ndarray
    value: float
    pending: bool

    def __init__(
        self, param: np.ndarray, shape: tuple[int, ...], value: float, dtype: np.dtype | None = None
    ) -> None:
        dtype = state_dtype(param.dtype) if dtype is None else np.dtype(dtype)
        self.value = float(value)
        self._ready: np.ndarray | None = None       # rows filled with value (2-D use only), or None
        self._seen: np.ndarray | None = None        # scratch for ready_rows, grown, never shrunk
        self._lock = threading.Lock()
        if math.prod(shape) * dtype.itemsize < LAZY_BYTES:
            self.array = np.full(shape, self.value, dtype=dtype)
            self._mapping: mmap.mmap | None = None
            self._fill = self._dense = False
            self.pending = False
            return
        self.array, self._mapping = _anonymous(shape, dtype, data_address(param))
        self._fill = not _is_zero(self.value)        # rows still to be written with value
        self._dense = False                          # advised for huge pages (a dense step ran)
        self.pending = True

    @classmethod
    def from_array(
        cls,
        param: np.ndarray,
        shape: tuple[int, ...],
        value: float,
        array: np.ndarray,
        dtype: np.dtype | None = None,
    ) -> State:
        """A state whose content is ``array`` (validated by the caller: same shape, castable dtype).

        Costs one read of ``array``; memory only for rows that are neither all-zero bits nor bitwise
        ``value`` (those stay zero pages or unfilled), unless more than half the rows need copying,
        in which case the whole buffer is written at once over huge pages (a dense-trained state).
        """
        state = cls(param, shape, value, dtype)
        if state._mapping is None:
            np.copyto(state.array, array)
            return state
        array = np.ascontiguousarray(array, dtype=state.array.dtype)
        copy = _nonzero_rows(array)
        if state._fill:
            bits = _as_rows(np.array(value, dtype=state.array.dtype))[0, 0]
            rows = _as_rows(array)
            at_value = np.empty(rows.shape[0], dtype=np.bool_)
            for lo, hi in _row_chunks(rows.shape[0], rows.shape[1], array.dtype.itemsize):
                np.all(rows[lo:hi] == bits, axis=1, out=at_value[lo:hi])
            copy &= ~at_value
            if at_value.any():
                state._ready = ~at_value             # all-zero rows are ready as they are
            else:
                state._fill = False                  # no row is waiting for its value
        if np.count_nonzero(copy) * 2 > copy.size:
            state._fill, state._ready = False, None   # every row is written next
            state.ready_all()
            np.copyto(state.array, array)
        else:
            _copy_rows(state.array, array, copy)
        return state

    @property
    def fills(self) -> bool:
        """Whether :meth:`ready_rows` may still write; see the module docstring."""
        return self._fill

    def ready_rows(self, indices: np.ndarray) -> None:
        """Fill the rows ``indices`` that hold no value yet; see the module docstring."""
        if not self._fill:
            return
        k = indices.shape[0]
        with self._lock:
            ready = self._ready
            if ready is None:
                if not self._fill:                   # ready_all ran in another thread meanwhile
                    return
                ready = self._ready = np.zeros(self.array.shape[0], dtype=np.bool_)   # zero pages too
            seen = self._seen
            if seen is None or seen.shape[0] < k:
                seen = self._seen = np.empty(max(k, 2 * (0 if seen is None else seen.shape[0])), np.bool_)
            seen = seen[:k]
            np.take(ready, indices, out=seen, mode="clip")     # clip: never raise, the kernel does
            if seen.all():
                return
            if indices.min() < 0 or indices.max() >= ready.shape[0]:
                return                               # the kernel rejects this step, writing nothing
            new = indices[~seen]
            self.array[new] = self.value
            ready[new] = True

    def ready_all(self) -> None:
        """Advise huge pages and fill every remaining row; see the module docstring."""
        if not self.pending:
            return
        with self._lock:
            if self._mapping is not None and not self._dense:
                _advise(self._mapping, _HUGEPAGE)
                self._dense = True
            if self._fill:
                if self._ready is None:
                    self.array.fill(self.value)
                else:
                    np.copyto(self.array, self.value, where=~_per_row(self._ready, self.array))
                self._fill = False
                self._ready = None
            self.pending = False

    def materialize(self) -> np.ndarray:
        """``array`` with every row holding its value (fills the remaining rows if ``value`` != 0)."""
        if self._fill:
            self.ready_all()
        return self.array

    def copy(self) -> np.ndarray:
        """A copy as a reader sees it; this buffer is left as it is. See the module docstring."""
        with self._lock:
            if self._mapping is None or (self._dense and not self._fill):
                return self.array.copy()
            if self._fill:
                out = np.full(self.array.shape, self.value, dtype=self.array.dtype)
                if self._ready is not None:
                    np.copyto(out, self.array, where=_per_row(self._ready, self.array))
                return out
            out, _ = _anonymous(self.array.shape, self.array.dtype, None)
            _copy_rows(out, self.array, _nonzero_rows(self.array))
            return out


def new_state(
    param: np.ndarray, shape: tuple[int, ...], value: float, dtype: np.dtype | None = None
) -> State:
    """The state buffer of ``param``: ``shape`` in ``dtype`` (by default its state dtype: the param's,
    float32 for a 16-bit param), ``value`` everywhere (lazily if large).

    Parameters
    ----------
    param : ndarray
        The param the state belongs to (its dtype and address are used, never its values).
    shape : tuple of int
        ``param.shape``, or ``param.shape[:1]`` for row-wise state.
    value : float
        The initial value (rounded to nearest in a 16-bit ``dtype``).
    dtype : numpy.dtype, optional
        The state's dtype.
    """
    return State(param, shape, value, dtype)

