# Sparse rows: a step that names k rows of 2-D params (V, D) costs O(k * D), whatever V is. A step may
# name rows of several params (tables) at once. Each table's duplicate indices are grouped in O(k)
# (RowGroups), then the distinct rows of all tables are split between threads by work and walked in
# one parallel region.

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
    # The distinct rows of one table, found by _group_rows, inside the engine's scratch (3k + 1 words).
    Py_ssize_t* uniq       # the distinct rows, in order of first appearance
    Py_ssize_t* first      # occurrences of distinct row u: order[first[u] : first[u + 1]]
    Py_ssize_t* order      # positions into indices/rows, grouped by distinct row, in order of appearance


cdef struct RowTable:
    # One table of a sparse step: its param's buffers, the step's indices and gradient rows, and, once
    # grouped, its distinct rows. With assume_unique, groups.uniq is NULL: row u is indices[u] and its
    # gradient is rows[u].
    Segment* seg
    const char* indices
    const char* rows
    bint wide              # int64 indices (else int32)
    bint rows_f32          # a 16-bit param's gradient rows are float32 (else in its format)
    Py_ssize_t k           # number of indices
    Py_ssize_t nrows       # V: rows of the param
    Py_ssize_t width       # D: elements per row
    Py_ssize_t n_rows      # distinct rows named (after grouping)
    Py_ssize_t unit        # work of one row touch: width * itemsize
    Py_ssize_t cost_before # work of all earlier tables of the step (see _row_cost)
    RowGroups groups


cdef inline Py_ssize_t _groups_size(Py_ssize_t k) noexcept nogil:
    # Words of a table's RowGroups: uniq[k], first[k + 1], order[k].
    return 3 * k + 1


cdef inline RowGroups _row_groups(Py_ssize_t* words, Py_ssize_t k) noexcept nogil:
    cdef RowGroups groups
    groups.uniq = words
    groups.first = words + k
    groups.order = words + 2 * k + 1
    return groups


cdef inline Py_ssize_t _table_size(Py_ssize_t k) noexcept nogil:
    # The hash table of _group_rows: a power of two, at least 2k (load factor <= 1/2).
    cdef Py_ssize_t size = 16
    while size < 2 * k:
        size *= 2
    return size


cdef inline Py_ssize_t _hash_size(Py_ssize_t k) noexcept nogil:
    # Words of _group_rows' transient scratch for k indices: keys[T], slots[T], slot_of[k], cursor[k]
    # (T = _table_size(k)); the tables of a step group one after another in the same scratch.
    return 2 * _table_size(k) + 2 * k


cdef Py_ssize_t _group_rows(const char* indices, bint wide, Py_ssize_t k, Py_ssize_t nrows,
                            RowGroups groups, Py_ssize_t* hashing) noexcept nogil:
    # Groups the k indices by row in O(k): an open-addressing hash table maps each distinct row to a
    # slot numbered in order of first appearance, then a counting pass lists each slot's occurrences in
    # order of appearance. Fills groups (uniq[n_unique], first[n_unique + 1], order[k]), using hashing
    # (_hash_size(k) words) as scratch. Returns the number of distinct rows, or -(j + 1) if indices[j]
    # is out of [0, nrows).
    cdef Py_ssize_t table_size = _table_size(k), bits = 4, mask = table_size - 1, j, h, v, u, n_unique = 0
    while (<Py_ssize_t>1 << bits) < table_size:
        bits += 1
    cdef Py_ssize_t* keys = hashing
    cdef Py_ssize_t* slots = keys + table_size
    cdef Py_ssize_t* slot_of = slots + table_size
    cdef Py_ssize_t* cursor = slot_of + k
    cdef Py_ssize_t* uniq = groups.uniq
    cdef Py_ssize_t* first = groups.first
    cdef Py_ssize_t* order = groups.order
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


cdef Py_ssize_t _check_unique_rows(const char* indices, bint wide, Py_ssize_t k,
                                   Py_ssize_t nrows) noexcept nogil:
    # assume_unique: nothing to group, only the range to check. Returns k, or -(j + 1) as _group_rows.
    cdef Py_ssize_t j, v
    for j in range(k):
        v = _read_index(indices, wide, j)
        if v < 0 or v >= nrows:
            return -(j + 1)
    return k


cdef inline Py_ssize_t _row_cost(const RowTable* t, Py_ssize_t u) noexcept nogil:
    # The work of a table's distinct rows [0, u): each costs its occurrences (rows to sum) plus about
    # two for its update, in row bytes. Zipf-like ids put hundreds of duplicates on a few rows, so an
    # even split by row count would leave one thread with most of the work.
    if t.groups.first == NULL:
        return 3 * u * t.unit
    return (t.groups.first[u] + 2 * u) * t.unit


cdef Py_ssize_t _prepare_tables(RowTable* tables, Py_ssize_t n_tables, Py_ssize_t* words,
                                Py_ssize_t* hashing, bint assume_unique, Py_ssize_t* bad) noexcept nogil:
    # Groups (or range-checks) every table before any row is written; words holds the tables' RowGroups
    # one after another (sum of _groups_size(k)), hashing is shared (_hash_size of the largest k). Sets
    # each table's n_rows and cost_before and returns the step's total work; or, at the first index out
    # of range, sets bad[0] to its table and bad[1] to its position and returns -1.
    cdef Py_ssize_t i, n, total = 0
    cdef RowTable* t
    for i in range(n_tables):
        t = &tables[i]
        if assume_unique:
            t.groups.uniq = NULL
            t.groups.first = NULL
            t.groups.order = NULL
            n = _check_unique_rows(t.indices, t.wide, t.k, t.nrows)
        else:
            t.groups = _row_groups(words, t.k)
            words += _groups_size(t.k)
            n = _group_rows(t.indices, t.wide, t.k, t.nrows, t.groups, hashing)
        if n < 0:
            bad[0], bad[1] = i, -n - 1
            return -1
        t.n_rows = n
        t.cost_before = total
        total += _row_cost(t, n)
    return total


cdef void _row_split(const RowTable* tables, Py_ssize_t n_tables, Py_ssize_t total, int nthreads, int t,
                     Py_ssize_t* table, Py_ssize_t* row) noexcept nogil:
    # Thread t updates the distinct rows from split(t) to split(t + 1), in the order (table, row): the
    # first position whose work before it reaches t / nthreads of the total.
    cdef Py_ssize_t lo = 0, hi = n_tables - 1, mid, target
    if t >= nthreads or n_tables == 0:
        table[0], row[0] = n_tables, 0
        return
    target = total * t // nthreads
    while lo < hi:                   # the first table whose work up to its end reaches target
        mid = (lo + hi) // 2
        if tables[mid].cost_before + _row_cost(&tables[mid], tables[mid].n_rows) < target:
            lo = mid + 1
        else:
            hi = mid
    table[0] = lo
    target -= tables[lo].cost_before
    lo, hi = 0, tables[table[0]].n_rows
    while lo < hi:                   # then the first row of it whose work before it reaches target
        mid = (lo + hi) // 2
        if _row_cost(&tables[table[0]], mid) < target:
            lo = mid + 1
        else:
            hi = mid
    row[0] = lo


cdef void _apply_rows_typed(int kernel, const RowTable* t, Py_ssize_t u0, Py_ssize_t u1, floating* acc,
                            const void* args) noexcept nogil:
    # Updates distinct rows u0..u1-1 of one table. With assume_unique row u is indices[u] and its
    # gradient is rows[u]; else the gradient is the sum, from zero and in order of appearance, of the
    # rows naming it (the reference's np.add.at into zeros).
    cdef Segment* s = t.seg
    cdef floating* param = <floating*>s.param
    cdef floating* state = <floating*>s.state
    cdef const floating* rows = <const floating*>t.rows
    cdef const Py_ssize_t* uniq = t.groups.uniq
    cdef const Py_ssize_t* first = t.groups.first
    cdef const Py_ssize_t* order = t.groups.order
    cdef const floating* g
    cdef const floating* src
    cdef Py_ssize_t width = t.width
    cdef Py_ssize_t u, o, c, row, ahead
    cdef Py_ssize_t row_bytes = width * sizeof(floating)
    cdef Py_ssize_t state_bytes = sizeof(floating) if s.cols > 0 else row_bytes
    cdef Py_ssize_t state_width = 1 if s.cols > 0 else width
    cdef bint unique = uniq == NULL
    for u in range(u0, u1):
        ahead = u + PREFETCH_ROWS
        if ahead < u1:           # the param and state rows this thread updates a few rows from now
            ahead = _read_index(t.indices, t.wide, ahead) if unique else uniq[ahead]
            cg_prefetch(param + ahead * width, row_bytes, 1)
            if state != NULL:
                cg_prefetch(state + ahead * state_width, state_bytes, 1)
            if s.state2 != NULL:
                cg_prefetch(<floating*>s.state2 + ahead * width, row_bytes, 1)
        if unique:
            row = _read_index(t.indices, t.wide, u)
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
        elif kernel == KERNEL_SGD:
            _sgd_span(param + row * width, g, state + row * width if state != NULL else NULL, width,
                      <const SgdArgs*>args)
        elif state != NULL and s.cols > 0:      # KERNEL_CEILING, one accumulator per row
            _ceiling_rowwise_row(param + row * width, g, state + row, width)
        else:                                   # KERNEL_CEILING
            _ceiling_span(param + row * width, g, state + row * width if state != NULL else NULL, width)


cdef void _apply_rows_16(int kernel, const RowTable* t, Py_ssize_t u0, Py_ssize_t u1, half_param* param,
                        const half_grad* rows, float* acc, const void* args) noexcept nogil:
    # _apply_rows_typed for a 16-bit param (float32 or 16-bit state): each row's gradient is widened to float32
    # and, with duplicates, summed in float32 from zero in order of appearance (the rules page, "16-bit
    # params"), then the row is stepped by _step_span_16. With assume_unique a row goes to the
    # span as it is (the span widens it block by block, as a dense step's grad): no pass through acc.
    # Grouped rows are summed into acc from zero (so a row named once too: 0 + -0 is +0); float16 rows
    # are widened a block at a time by the F16C helper first (the add loop vectorizes, checked with
    # -fopt-info-vec-optimized), bfloat16 and float32 rows in the one loop below (a shift, vectorized).
    cdef Segment* s = t.seg
    cdef const Py_ssize_t* uniq = t.groups.uniq
    cdef const Py_ssize_t* first = t.groups.first
    cdef const Py_ssize_t* order = t.groups.order
    cdef Py_ssize_t width = t.width
    cdef Py_ssize_t u, o, c, c0, m, row, ahead
    cdef Py_ssize_t state_width = 1 if s.cols > 0 else width
    cdef Py_ssize_t state_bytes = 2 if s.state_16 else 4
    cdef bint unique = uniq == NULL
    cdef const half_grad* src
    cdef float wide[HALF_BLOCK]
    cdef const float* w
    for u in range(u0, u1):
        ahead = u + PREFETCH_ROWS
        if ahead < u1:
            ahead = _read_index(t.indices, t.wide, ahead) if unique else uniq[ahead]
            cg_prefetch(param + ahead * width, width * sizeof(half_param), 1)
            if s.state != NULL:
                cg_prefetch(<char*>s.state + ahead * state_width * state_bytes, state_width * state_bytes, 1)
        if unique:
            row = _read_index(t.indices, t.wide, u)
            _step_span_16(kernel, s, param, rows + u * width, row * width, width, args)
            continue
        row = uniq[u]
        # Summed from zero even when named once (0 + -0 is +0: passing such a row as it is would change bits).
        for c in range(width):
            acc[c] = 0
        for o in range(first[u], first[u + 1]):
            src = rows + order[o] * width
            if half_grad is cg_f16:
                c0 = 0
                while c0 < width:
                    m = min(<Py_ssize_t>HALF_BLOCK, width - c0)
                    w = _widened_grads(wide, src + c0, m)
                    for c in range(m):
                        acc[c0 + c] = acc[c0 + c] + w[c]
                    c0 += m
            else:
                for c in range(width):
                    acc[c] = acc[c] + _grad32(src, c)
        _step_span_16(kernel, s, param, <const float*>acc, row * width, width, args)


cdef void _apply_rows_16_of(int kernel, const RowTable* t, Py_ssize_t u0, Py_ssize_t u1, float* acc,
                           const void* args) noexcept nogil:
    # The format of the param and of its gradient rows, picked once per table.
    if t.seg.kind == KIND_FLOAT16:
        if t.rows_f32:
            _apply_rows_16(kernel, t, u0, u1, <cg_f16*>t.seg.param, <const float*>t.rows, acc, args)
        else:
            _apply_rows_16(kernel, t, u0, u1, <cg_f16*>t.seg.param, <const cg_f16*>t.rows, acc, args)
    elif t.rows_f32:
        _apply_rows_16(kernel, t, u0, u1, <cg_bf16*>t.seg.param, <const float*>t.rows, acc, args)
    else:
        _apply_rows_16(kernel, t, u0, u1, <cg_bf16*>t.seg.param, <const cg_bf16*>t.rows, acc, args)


cdef void _walk_rows(int kernel, const RowTable* tables, Py_ssize_t j0, Py_ssize_t u0, Py_ssize_t j1,
                     Py_ssize_t u1, char* acc, const void* args) noexcept nogil:
    # The one row walk: distinct rows from (table j0, row u0) up to, not including, (table j1, row u1).
    cdef Py_ssize_t j, lo, hi
    for j in range(j0, j1 + 1):
        lo = u0 if j == j0 else 0
        if j == j1:
            hi = u1
        else:
            hi = tables[j].n_rows
        if hi <= lo:
            continue
        if tables[j].seg.kind >= KIND_FLOAT16:
            _apply_rows_16_of(kernel, &tables[j], lo, hi, <float*>acc, args)
        elif tables[j].seg.is_double:
            _apply_rows_typed(kernel, &tables[j], lo, hi, <double*>acc, args)
        else:
            _apply_rows_typed(kernel, &tables[j], lo, hi, <float*>acc, args)


cdef void _walk_share(int kernel, const RowTable* tables, Py_ssize_t n_tables, Py_ssize_t total,
                      int nthreads, int t, char* acc, const void* args) noexcept nogil:
    # Thread t's share of the walk (n_tables > 0).
    cdef Py_ssize_t j0, u0, j1, u1
    _row_split(tables, n_tables, total, nthreads, t, &j0, &u0)
    _row_split(tables, n_tables, total, nthreads, t + 1, &j1, &u1)
    if j1 == n_tables:
        j1, u1 = n_tables - 1, tables[n_tables - 1].n_rows
    _walk_rows(kernel, tables, j0, u0, j1, u1, acc, args)


cdef void _apply_rows(int kernel, const RowTable* tables, Py_ssize_t n_tables, Py_ssize_t total,
                      int nthreads, char* scratch, Py_ssize_t acc_bytes, const void* args) noexcept nogil:
    # Walks the distinct rows of every table (_prepare_tables done) with nthreads threads, in one
    # parallel region; thread t sums duplicates into its own acc_bytes of scratch.
    cdef int t
    if n_tables == 0:
        return
    if nthreads == 1:
        _walk_rows(kernel, tables, 0, 0, n_tables - 1, tables[n_tables - 1].n_rows, scratch, args)
        return
    for t in prange(nthreads, schedule='static', num_threads=nthreads):
        _walk_share(kernel, tables, n_tables, total, nthreads, t, scratch + t * acc_bytes, args)
