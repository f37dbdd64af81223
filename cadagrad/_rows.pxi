# Sparse rows: a step that names k rows of a 2-D param (V, D) costs O(k * D), whatever V is. Duplicate
# indices are grouped in O(k) (RowGroups), then the distinct rows are walked by threads balanced by work.

from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.string cimport memset

cdef enum:
    PREFETCH_ROWS = 8            # how far ahead sparse steps prefetch rows (measured: see bench)


cdef inline Py_ssize_t _read_index(const char* indices, bint wide, Py_ssize_t j) noexcept nogil:
    if wide:
        return <Py_ssize_t>(<const int64_t*>indices)[j]
    return <Py_ssize_t>(<const int32_t*>indices)[j]


cdef struct RowGroups:
    # The distinct rows of a sparse step, found by _group_rows, inside the engine's scratch.
    Py_ssize_t* uniq       # the distinct rows, in order of first appearance
    Py_ssize_t* first      # occurrences of distinct row u: order[first[u] : first[u + 1]]
    Py_ssize_t* order      # positions into indices/rows, grouped by distinct row, in order of appearance


cdef inline Py_ssize_t _table_size(Py_ssize_t k) noexcept nogil:
    # The hash table of _group_rows: a power of two, at least 2k (load factor <= 1/2).
    cdef Py_ssize_t size = 16
    while size < 2 * k:
        size *= 2
    return size


cdef inline Py_ssize_t _work_size(Py_ssize_t k) noexcept nogil:
    # The scratch of k indices, laid out as: keys[T], slots[T], uniq[k], first[k + 1], order[k],
    # slot_of[k], cursor[k] (T = _table_size(k)). _row_groups and _group_rows read this layout.
    return 2 * _table_size(k) + 5 * k + 1


cdef inline RowGroups _row_groups(Py_ssize_t* work, Py_ssize_t k) noexcept nogil:
    cdef RowGroups groups
    groups.uniq = work + 2 * _table_size(k)
    groups.first = groups.uniq + k
    groups.order = groups.first + k + 1
    return groups


cdef Py_ssize_t _group_rows(const char* indices, bint wide, Py_ssize_t k, Py_ssize_t nrows,
                            Py_ssize_t* work) noexcept nogil:
    # Groups the k indices by row in O(k): an open-addressing hash table maps each distinct row to a
    # slot numbered in order of first appearance, then a counting pass lists each slot's occurrences in
    # order of appearance. Fills the RowGroups of work (uniq[n_unique], first[n_unique + 1], order[k]).
    # Returns the number of distinct rows, or -(j + 1) if indices[j] is out of [0, nrows).
    cdef Py_ssize_t table_size = _table_size(k), bits = 4, mask = table_size - 1, j, h, v, u, n_unique = 0
    while (<Py_ssize_t>1 << bits) < table_size:
        bits += 1
    cdef RowGroups groups = _row_groups(work, k)
    cdef Py_ssize_t* keys = work
    cdef Py_ssize_t* slots = keys + table_size
    cdef Py_ssize_t* uniq = groups.uniq
    cdef Py_ssize_t* first = groups.first
    cdef Py_ssize_t* order = groups.order
    cdef Py_ssize_t* slot_of = order + k
    cdef Py_ssize_t* cursor = slot_of + k
    memset(keys, 0xFF, table_size * sizeof(Py_ssize_t))          # every key -1: empty
    for j in range(k):
        v = _read_index(indices, wide, j)
        if v < 0 or v >= nrows:
            return -(j + 1)
        h = <Py_ssize_t>((<uint64_t>v * <uint64_t>0x9E3779B97F4A7C15ULL) >> (64 - bits))
        while keys[h] != -1 and keys[h] != v:
            h = (h + 1) & mask
        if keys[h] == -1:
            keys[h] = v
            slots[h] = n_unique
            uniq[n_unique] = v
            cursor[n_unique] = 0
            n_unique += 1
        slot_of[j] = slots[h]
        cursor[slots[h]] += 1
    first[0] = 0
    for u in range(n_unique):
        first[u + 1] = first[u] + cursor[u]
        cursor[u] = first[u]
    for j in range(k):
        order[cursor[slot_of[j]]] = j
        cursor[slot_of[j]] += 1
    return n_unique


cdef void _apply_rows_typed(int kernel, Segment* s, Py_ssize_t width, const floating* rows,
                            const char* indices, bint wide, Py_ssize_t* work, Py_ssize_t k,
                            Py_ssize_t u0, Py_ssize_t u1, floating* acc, const void* args) noexcept nogil:
    # Updates distinct rows u0..u1-1. With work == NULL (assume_unique) row u is indices[u] and its
    # gradient is rows[u]; else the gradient is the sum, from zero and in order of appearance, of the
    # rows naming it (the reference's np.add.at into zeros).
    cdef floating* param = <floating*>s.param
    cdef floating* state = <floating*>s.state
    cdef const floating* g
    cdef const floating* src
    cdef const Py_ssize_t* uniq = NULL
    cdef const Py_ssize_t* first = NULL
    cdef const Py_ssize_t* order = NULL
    cdef Py_ssize_t u, o, c, row, ahead
    cdef Py_ssize_t row_bytes = width * sizeof(floating)
    cdef Py_ssize_t state_bytes = sizeof(floating) if s.cols > 0 else row_bytes
    cdef Py_ssize_t state_width = 1 if s.cols > 0 else width
    cdef RowGroups groups
    if work != NULL:
        groups = _row_groups(work, k)
        uniq, first, order = groups.uniq, groups.first, groups.order
    for u in range(u0, u1):
        ahead = u + PREFETCH_ROWS
        if ahead < u1:           # the param and state rows this thread updates a few rows from now
            ahead = _read_index(indices, wide, ahead) if work == NULL else uniq[ahead]
            cg_prefetch(param + ahead * width, row_bytes, 1)
            if state != NULL:
                cg_prefetch(state + ahead * state_width, state_bytes, 1)
            if s.state2 != NULL:
                cg_prefetch(<floating*>s.state2 + ahead * width, row_bytes, 1)
        if work == NULL:
            row = _read_index(indices, wide, u)
            g = rows + u * width
        else:
            row = uniq[u]
            for c in range(width):
                acc[c] = 0
            for o in range(first[u], first[u + 1]):
                if o + PREFETCH_ROWS < first[u + 1]:
                    cg_prefetch(rows + order[o + PREFETCH_ROWS] * width, row_bytes, 0)
                src = rows + order[o] * width
                for c in range(width):
                    acc[c] = acc[c] + src[c]
            g = acc
        if kernel == KERNEL_PROXIMAL_ADAGRAD or kernel == KERNEL_ADAGRAD_DA:
            _proximal_span_at(kernel, s, row * width, width, g, args, False)
        elif kernel == KERNEL_ADAGRAD:
            if s.cols > 0:
                _adagrad_rowwise_rows(param + row * width, g, state + row, 1, width, <const AdagradArgs*>args)
            else:
                _adagrad_span(param + row * width, g, state + row * width, width, <const AdagradArgs*>args)
        else:
            _sgd_span(param + row * width, g, state + row * width if state != NULL else NULL, width,
                      <const SgdArgs*>args)


cdef Py_ssize_t _row_split(Py_ssize_t* work, Py_ssize_t k, Py_ssize_t n_rows, int nthreads,
                           int t) noexcept nogil:
    # Thread t updates distinct rows [split(t), split(t + 1)), balanced by work: a distinct row costs its
    # occurrences (rows to sum) plus about two for its update. Zipf-like ids put hundreds of duplicates
    # on a few rows, so an even split by row count would leave one thread with most of the work.
    cdef const Py_ssize_t* first
    cdef Py_ssize_t lo = 0, hi = n_rows, mid, target
    if t >= nthreads:
        return n_rows
    if work == NULL:
        return n_rows * t // nthreads
    first = _row_groups(work, k).first         # first[u]: occurrences before distinct row u
    target = (first[n_rows] + 2 * n_rows) * t // nthreads
    while lo < hi:                                 # the first u whose cumulative cost reaches target
        mid = (lo + hi) // 2
        if first[mid] + 2 * mid < target:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef void _apply_rows(int kernel, Segment* s, Py_ssize_t width, const char* rows, const char* indices,
                      bint wide, Py_ssize_t* work, Py_ssize_t k, Py_ssize_t n_rows,
                      char* scratch, int requested_threads, const void* args) noexcept nogil:
    cdef int nthreads = _threads_for(k * width, requested_threads)
    cdef int t
    cdef Py_ssize_t itemsize = 8 if s.is_double else 4
    if nthreads == 1:
        if s.is_double:
            _apply_rows_typed(kernel, s, width, <const double*>rows, indices, wide, work, k, 0, n_rows,
                              <double*>scratch, args)
        else:
            _apply_rows_typed(kernel, s, width, <const float*>rows, indices, wide, work, k, 0, n_rows,
                              <float*>scratch, args)
        return
    for t in prange(nthreads, schedule='static', num_threads=nthreads):
        if s.is_double:
            _apply_rows_typed(kernel, s, width, <const double*>rows, indices, wide, work, k,
                              _row_split(work, k, n_rows, nthreads, t),
                              _row_split(work, k, n_rows, nthreads, t + 1),
                              <double*>(scratch + t * width * itemsize), args)
        else:
            _apply_rows_typed(kernel, s, width, <const float*>rows, indices, wide, work, k,
                              _row_split(work, k, n_rows, nthreads, t),
                              _row_split(work, k, n_rows, nthreads, t + 1),
                              <float*>(scratch + t * width * itemsize), args)
