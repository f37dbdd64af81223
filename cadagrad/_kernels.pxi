# Every hot loop of cadagrad, and the C-level step engine that feeds them.
#
# This file is compiled once per instruction set (see _kernels_generic.pyx, _kernels_avx2.pyx,
# _kernels_avx512.pyx and setup.py); cadagrad._kernels picks one at import. The loops use IEEE sqrt
# and division only and are built with -ffp-contract=off, so every variant gives the same bits as
# cadagrad.reference.
#
# Checked with `-fopt-info-vec-optimized -fopt-info-loop` (GCC 12, -O3 -fno-math-errno): each span loop
# below is unswitched on its loop-invariant flags (maximize, has_wd, eps_inside; SGD's momentum mode and
# nesterov are specialised by hand) and every resulting loop is vectorized (16-byte SSE2, 32-byte with -mavx2, 64-byte with
# -mavx512f), with a runtime alias check that falls back to the scalar loop when a grad *is* the param.

from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK, NOWAIT_LOCK)
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf
from cython.parallel cimport threadid
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memset

# The NumPy C-API is used only by the step engine, to check a step's grads in a few nanoseconds each
# (a typed memoryview costs ~0.5 us per array). The extension is built against NumPy >= 2, which
# makes one build work with NumPy 1.x and 2.x at run time.
cimport numpy as cnp

cnp.import_array()

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int cg_max_threads(void) { return omp_get_max_threads(); }
    #define CG_HAVE_OPENMP 1
    #else
    static int cg_max_threads(void) { return 1; }
    #define CG_HAVE_OPENMP 0
    #endif
    """
    int cg_max_threads() noexcept nogil
    const int CG_HAVE_OPENMP

cdef extern from *:
    """
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    static int cg_cpu_has_avx2(void) { __builtin_cpu_init(); return __builtin_cpu_supports("avx2"); }
    static int cg_cpu_has_avx512(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
    }
    #else
    static int cg_cpu_has_avx2(void) { return 0; }
    static int cg_cpu_has_avx512(void) { return 0; }
    #endif
    """
    int cg_cpu_has_avx2() noexcept nogil
    int cg_cpu_has_avx512() noexcept nogil

cdef extern from *:
    """
    #include <stdint.h>
    /* Integer views of float bits that may alias the floats (strict aliasing stays on). */
    #if defined(__GNUC__)
    typedef uint32_t __attribute__((__may_alias__)) cg_bits32;
    typedef uint64_t __attribute__((__may_alias__)) cg_bits64;
    #else
    typedef uint32_t cg_bits32;
    typedef uint64_t cg_bits64;
    #endif
    """
    ctypedef unsigned int cg_bits32
    ctypedef unsigned long long cg_bits64

cdef extern from *:
    """
    /* Asks for every cache line of [p, p + nbytes) ahead of use: sparse steps jump between rows that
       no hardware prefetcher can guess. */
    static inline void cg_prefetch(const void* p, Py_ssize_t nbytes, int for_write) {
    #if defined(__GNUC__)
        const char* c = (const char*)p;
        Py_ssize_t off;
        for (off = 0; off < nbytes; off += 64) {
            if (for_write) __builtin_prefetch(c + off, 1, 3); else __builtin_prefetch(c + off, 0, 3);
        }
    #else
        (void)p; (void)nbytes; (void)for_write;
    #endif
    }
    """
    void cg_prefetch(const void* p, Py_ssize_t nbytes, int for_write) noexcept nogil

cdef extern from *:
    """
    #ifndef CG_COMPILE_FLAGS
    #define CG_COMPILE_FLAGS "unknown"
    #endif
    """
    const char* CG_COMPILE_FLAGS


cdef enum:
    # Below this many elements per thread, starting a thread costs more than it saves.
    GRAIN = 32768

cdef int _global_threads = 0      # set_num_threads(); 0 means "ask OpenMP at call time"
cdef bint _forked_child = False   # see _after_fork_in_child()


cdef struct Segment:
    # One tensor of a step: its buffers as raw pointers and its place in the flattened element range.
    char* param
    char* state            # AdaGrad: the accumulator G; SGD: the momentum buffer (NULL without momentum)
    const char* grad       # refreshed at every step
    Py_ssize_t size
    Py_ssize_t start       # index of its first element in the concatenation of all segments
    Py_ssize_t cols        # row-wise AdaGrad: elements per row (one accumulator per row); else 0
    Py_ssize_t state_size  # elements of the state: size, or size // cols when row-wise
    int typenum            # NumPy's type number of the param (and of its state and grads)
    bint is_double


cdef struct ByteRange:
    # The bytes of one param or state buffer; an engine keeps them sorted by start (they are disjoint).
    const char* start
    const char* end
    Py_ssize_t owner       # index of the param
    bint is_state


cdef struct AdagradArgs:
    double clr
    double weight_decay
    double eps
    bint has_weight_decay
    bint eps_inside_sqrt
    bint maximize


cdef struct SgdArgs:
    double lr
    double weight_decay
    double momentum
    double one_minus_dampening
    int momentum_mode      # MOMENTUM_NONE, MOMENTUM_FIRST or MOMENTUM_LATER
    bint has_weight_decay
    bint nesterov
    bint maximize


cdef enum:
    MOMENTUM_NONE = 0
    MOMENTUM_FIRST = 1     # first step: buf = g
    MOMENTUM_LATER = 2     # buf = momentum * buf + (1 - dampening) * g


# ---------------------------------------------------------------------------------------------------
# The update rules (../shared/SEMANTICS.md). reference.py holds the same rules in NumPy, in the same
# operation order; nothing else in the package computes them.

cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef void _adagrad_span(floating* p, const floating* grad, floating* G, Py_ssize_t n,
                        const AdagradArgs* a) noexcept nogil:
    cdef floating clr = <floating>a.clr
    cdef floating wd = <floating>a.weight_decay
    cdef floating eps = <floating>a.eps
    cdef bint maximize = a.maximize, has_wd = a.has_weight_decay, inside = a.eps_inside_sqrt
    cdef floating g, d
    cdef Py_ssize_t i
    for i in range(n):
        g = grad[i]
        if maximize:
            g = -g
        if has_wd:
            g = g + wd * p[i]
        G[i] = G[i] + g * g
        if inside:
            d = _sqrt(G[i] + eps)
        else:
            d = _sqrt(G[i]) + eps
        p[i] = p[i] - (clr * g) / d


cdef void _adagrad_rowwise_rows(floating* p, const floating* grad, floating* G, Py_ssize_t rows,
                                Py_ssize_t cols, const AdagradArgs* a) noexcept nogil:
    # Row-wise AdaGrad (FBGEMM's rule): G_row = G_row + mean(g * g) over the row, the sum taken left to
    # to right (the reference's np.cumsum order), then every element of the row divides by one d.
    cdef floating clr = <floating>a.clr
    cdef floating wd = <floating>a.weight_decay
    cdef floating eps = <floating>a.eps
    cdef floating width = <floating>cols
    cdef bint maximize = a.maximize, has_wd = a.has_weight_decay, inside = a.eps_inside_sqrt
    cdef floating g, d, total
    cdef Py_ssize_t r, j
    for r in range(rows):
        total = 0
        for j in range(cols):
            g = grad[j]
            if maximize:
                g = -g
            if has_wd:
                g = g + wd * p[j]
            total = total + g * g
        G[r] = G[r] + total / width
        if inside:
            d = _sqrt(G[r] + eps)
        else:
            d = _sqrt(G[r]) + eps
        for j in range(cols):
            g = grad[j]
            if maximize:
                g = -g
            if has_wd:
                g = g + wd * p[j]
            p[j] = p[j] - (clr * g) / d
        p += cols
        grad += cols


cdef inline void _sgd_span_as(floating* p, const floating* grad, floating* buf, Py_ssize_t n,
                              const SgdArgs* a, int mode, bint nesterov) noexcept nogil:
    # Called only with literal mode and nesterov (see _sgd_span), so each caller gets its own loop;
    # GCC's unswitching alone gave up on five flags and left most SGD loops scalar.
    cdef floating lr = <floating>a.lr
    cdef floating wd = <floating>a.weight_decay
    cdef floating momentum = <floating>a.momentum
    cdef floating damp1 = <floating>a.one_minus_dampening
    cdef bint maximize = a.maximize, has_wd = a.has_weight_decay
    cdef floating g, b
    cdef Py_ssize_t i
    for i in range(n):
        g = grad[i]
        if maximize:
            g = -g
        if has_wd:
            g = g + wd * p[i]
        if mode != MOMENTUM_NONE:
            if mode == MOMENTUM_FIRST:
                b = g
            else:
                b = momentum * buf[i] + damp1 * g
            buf[i] = b
            if nesterov:
                g = g + momentum * b
            else:
                g = b
        p[i] = p[i] - lr * g


cdef void _sgd_span(floating* p, const floating* grad, floating* buf, Py_ssize_t n,
                    const SgdArgs* a) noexcept nogil:
    if a.momentum_mode == MOMENTUM_NONE:
        _sgd_span_as(p, grad, buf, n, a, MOMENTUM_NONE, False)
    elif a.momentum_mode == MOMENTUM_FIRST:
        if a.nesterov:
            _sgd_span_as(p, grad, buf, n, a, MOMENTUM_FIRST, True)
        else:
            _sgd_span_as(p, grad, buf, n, a, MOMENTUM_FIRST, False)
    elif a.nesterov:
        _sgd_span_as(p, grad, buf, n, a, MOMENTUM_LATER, True)
    else:
        _sgd_span_as(p, grad, buf, n, a, MOMENTUM_LATER, False)


cdef void _ceiling_span(floating* p, const floating* grad, floating* state, Py_ssize_t n) noexcept nogil:
    # The memory traffic of a step (read p, grad and the state if any; write p and the state) with an
    # addition or two per store: the bandwidth ceiling that benchmarks compare against, run on the
    # optimizer's own buffers. The state grows by g * g, so an AdaGrad accumulator stays >= 0 and the
    # real steps timed beside it stay finite. Not an optimizer.
    cdef Py_ssize_t i
    if state == NULL:
        for i in range(n):
            p[i] = p[i] + grad[i]
    else:
        for i in range(n):
            state[i] = state[i] + grad[i] * grad[i]
            p[i] = p[i] + grad[i]


cdef bint _has_nonfinite_span(const floating* grad, Py_ssize_t n) noexcept nogil:
    # An element is NaN or infinite exactly when all its exponent bits are set. An integer max over the
    # exponent fields vectorizes (a float reduction would not, without -fassociative-math).
    cdef Py_ssize_t i
    cdef const cg_bits32* bits32
    cdef const cg_bits64* bits64
    cdef cg_bits32 top32 = 0
    cdef cg_bits64 top64 = 0
    if floating is float:
        bits32 = <const cg_bits32*>grad
        for i in range(n):
            top32 = max(top32, bits32[i] & 0x7F800000u)
        return top32 == 0x7F800000u
    else:
        bits64 = <const cg_bits64*>grad
        for i in range(n):
            top64 = max(top64, bits64[i] & 0x7FF0000000000000u)
        return top64 == 0x7FF0000000000000u


# ---------------------------------------------------------------------------------------------------
# Walking a range of the concatenated elements, and splitting the work between threads.

cdef enum:
    KERNEL_ADAGRAD = 0
    KERNEL_SGD = 1
    KERNEL_CEILING = 2
    KERNEL_CHECK_FINITE = 3     # reads the grads only; the range reports whether one is not finite


cdef inline bint _run_segment(int kernel, Segment* s, Py_ssize_t lo, Py_ssize_t n,
                              const void* args) noexcept nogil:
    if kernel == KERNEL_CHECK_FINITE:
        if s.is_double:
            return _has_nonfinite_span(<const double*>s.grad + lo, n)
        return _has_nonfinite_span(<const float*>s.grad + lo, n)
    cdef Py_ssize_t row, last_row
    if s.cols > 0:
        # Row-wise segment: the rows whose first element lies in [lo, lo + n) belong to this range.
        row = (lo + s.cols - 1) // s.cols
        last_row = (lo + n + s.cols - 1) // s.cols
        if kernel == KERNEL_ADAGRAD and last_row > row:
            if s.is_double:
                _adagrad_rowwise_rows(<double*>s.param + row * s.cols, <const double*>s.grad + row * s.cols,
                                      <double*>s.state + row, last_row - row, s.cols, <const AdagradArgs*>args)
            else:
                _adagrad_rowwise_rows(<float*>s.param + row * s.cols, <const float*>s.grad + row * s.cols,
                                      <float*>s.state + row, last_row - row, s.cols, <const AdagradArgs*>args)
            return False
        if kernel == KERNEL_CEILING:     # the per-row state is a negligible part of the traffic
            if s.is_double:
                _ceiling_span(<double*>s.param + lo, <const double*>s.grad + lo, <double*>NULL, n)
            else:
                _ceiling_span(<float*>s.param + lo, <const float*>s.grad + lo, <float*>NULL, n)
        return False
    if s.is_double:
        if kernel == KERNEL_ADAGRAD:
            _adagrad_span(<double*>s.param + lo, <const double*>s.grad + lo, <double*>s.state + lo, n,
                          <const AdagradArgs*>args)
        elif kernel == KERNEL_SGD:
            _sgd_span(<double*>s.param + lo, <const double*>s.grad + lo,
                      <double*>s.state + lo if s.state != NULL else NULL, n, <const SgdArgs*>args)
        else:
            _ceiling_span(<double*>s.param + lo, <const double*>s.grad + lo,
                          <double*>s.state + lo if s.state != NULL else NULL, n)
    else:
        if kernel == KERNEL_ADAGRAD:
            _adagrad_span(<float*>s.param + lo, <const float*>s.grad + lo, <float*>s.state + lo, n,
                          <const AdagradArgs*>args)
        elif kernel == KERNEL_SGD:
            _sgd_span(<float*>s.param + lo, <const float*>s.grad + lo,
                      <float*>s.state + lo if s.state != NULL else NULL, n, <const SgdArgs*>args)
        else:
            _ceiling_span(<float*>s.param + lo, <const float*>s.grad + lo,
                          <float*>s.state + lo if s.state != NULL else NULL, n)
    return False


cdef bint _run_range(int kernel, Segment* segs, Py_ssize_t k, Py_ssize_t lo, Py_ssize_t hi,
                     const void* args) noexcept nogil:
    # Applies the kernel to elements [lo, hi) of the concatenation: each segment overlapping the range
    # gets one straight loop over its part. Returns whether any part reported (KERNEL_CHECK_FINITE).
    cdef Py_ssize_t first = 0, last = k - 1, mid, a, b
    cdef bint found = False
    while first < last:                    # the last segment that starts at or before lo
        mid = (first + last + 1) // 2
        if segs[mid].start <= lo:
            first = mid
        else:
            last = mid - 1
    while first < k and segs[first].start < hi:
        a = max(lo, segs[first].start) - segs[first].start
        b = min(hi, segs[first].start + segs[first].size) - segs[first].start
        if b > a:
            found |= _run_segment(kernel, &segs[first], a, b - a, args)
        first += 1
    return found


cdef inline Py_ssize_t _split_point(Py_ssize_t total, int nthreads, int t) noexcept nogil:
    # Thread t owns [split(t), split(t + 1)): equal shares rounded down to 64 elements, so that
    # neighbouring threads do not write into the same cache line of a segment that starts aligned.
    if t >= nthreads:
        return total
    return (total // nthreads * t) & ~(<Py_ssize_t>63)


cdef int _threads_for(Py_ssize_t total, int requested) noexcept nogil:
    cdef int wanted
    cdef Py_ssize_t useful
    if _forked_child or not CG_HAVE_OPENMP:
        return 1
    if requested > 0:
        wanted = requested
    elif _global_threads > 0:
        wanted = _global_threads
    else:
        wanted = cg_max_threads()
    useful = total // GRAIN
    if useful < wanted:
        return <int>useful if useful > 1 else 1
    return wanted


cdef bint _run(int kernel, Segment* segs, Py_ssize_t k, Py_ssize_t total, int requested_threads,
               const void* args) noexcept nogil:
    cdef int nthreads = _threads_for(total, requested_threads)
    cdef int t
    cdef int found = 0
    if nthreads == 1:
        return _run_range(kernel, segs, k, 0, total, args)
    for t in prange(nthreads, schedule='static', num_threads=nthreads):
        found |= _run_range(kernel, segs, k, _split_point(total, nthreads, t),
                            _split_point(total, nthreads, t + 1), args)
    return found != 0



# ---------------------------------------------------------------------------------------------------
# Sparse rows: a step that names k rows of a 2-D param (V, D) costs O(k * D), whatever V is.

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
        if kernel == KERNEL_ADAGRAD:
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

# ---------------------------------------------------------------------------------------------------
# The step engine: a fixed list of params and state buffers, checked once by the Python layer and kept
# as raw pointers. A step only re-reads a few header fields of each array (nanoseconds), so stepping
# the same params again costs no Python-level work. On any mismatch it asks the Python validator,
# which owns every error message, to explain.

cdef inline bint _same_array(object obj, char* data, Py_ssize_t size, int typenum) noexcept:
    # The array still has the buffer, size and dtype it had at set-up, and may be written.
    cdef cnp.ndarray arr = <cnp.ndarray>obj
    return (<char*>cnp.PyArray_DATA(arr) == data and cnp.PyArray_SIZE(arr) == size
            and cnp.PyArray_TYPE(arr) == typenum and not cnp.PyArray_ISBYTESWAPPED(arr)
            and cnp.PyArray_ISWRITEABLE(arr))


cdef inline bint _grad_fits(object obj, object param_obj, int typenum) noexcept:
    cdef cnp.ndarray g, p
    cdef int nd, i
    if not cnp.PyArray_Check(obj):
        return False
    g = <cnp.ndarray>obj
    p = <cnp.ndarray>param_obj
    if (cnp.PyArray_TYPE(g) != typenum or not cnp.PyArray_IS_C_CONTIGUOUS(g)
            or not cnp.PyArray_ISALIGNED(g) or cnp.PyArray_ISBYTESWAPPED(g)):
        return False
    nd = cnp.PyArray_NDIM(g)
    if nd != cnp.PyArray_NDIM(p):
        return False
    for i in range(nd):
        if cnp.PyArray_DIM(g, i) != cnp.PyArray_DIM(p, i):
            return False
    return True


cdef inline bint _overlap(const char* a, const char* b, Py_ssize_t nbytes) noexcept:
    return nbytes > 0 and a < b + nbytes and b < a + nbytes


cdef inline bint _grad_alias_ok(const char* grad, Py_ssize_t nbytes, Py_ssize_t owner,
                                const ByteRange* ranges, Py_ssize_t n_ranges) noexcept:
    # A grad may be its own param exactly (a well-defined element-wise update), but no other buffer
    # a step writes: not part of its param, not a state, not another param (threads would race).
    # The ranges are disjoint and sorted, so only the last one starting below the grad's end can
    # overlap it: a binary search, O(log k) per grad.
    cdef Py_ssize_t lo = 0, hi = n_ranges, mid
    cdef const char* end = grad + nbytes
    if nbytes == 0:
        return True
    while lo < hi:
        mid = (lo + hi) // 2
        if ranges[mid].start < end:
            lo = mid + 1
        else:
            hi = mid
    if lo == 0 or ranges[lo - 1].end <= grad:
        return True
    return (ranges[lo - 1].owner == owner and not ranges[lo - 1].is_state
            and ranges[lo - 1].start == grad and ranges[lo - 1].end == end)


cdef class StepEngine:
    """Params and their state as raw pointers, stepped in one parallel region.

    Built by cadagrad.optim and cadagrad.functional after cadagrad._checks has validated every array;
    not a public class. Steps on one engine are serialized by an internal lock; the lock is waited
    for with the GIL released.
    """
    cdef tuple params
    cdef tuple states
    cdef object explain
    cdef bint single
    cdef Segment* segs
    cdef ByteRange* ranges
    cdef Py_ssize_t n_ranges
    cdef Py_ssize_t k
    cdef Py_ssize_t total
    cdef PyThread_type_lock lock
    cdef Py_ssize_t* work          # sparse-row grouping scratch, grown, never shrunk
    cdef Py_ssize_t work_cap
    cdef char* row_scratch         # one accumulation row per thread for sparse steps, grown
    cdef Py_ssize_t row_scratch_cap
    cdef public Py_ssize_t steps

    def __cinit__(self, params, states, bint single, explain, Py_ssize_t steps=0, row_widths=None):
        """
        Parameters
        ----------
        params : sequence of ndarray
            Writable, aligned, C-contiguous float32/float64 arrays (already validated).
        states : sequence of ndarray or None
            One state buffer per param, same shape and dtype (already validated), or None.
        single : bool
            Whether a step takes one grad array rather than a sequence.
        explain : callable
            ``explain(grads)`` raises the exception that describes why a step's grads or the params
            no longer fit.
        steps : int
            Steps taken so far.
        row_widths : sequence of int, optional
            Per param: 0 for element-wise state, or the row width D of a row-wise AdaGrad param whose
            state holds one accumulator per row (``size // D`` elements).
        """
        cdef Py_ssize_t i, start = 0
        cdef cnp.ndarray p
        self.params = tuple(params)
        self.states = tuple(states) if states is not None else None
        self.single = single
        self.explain = explain
        self.steps = steps
        self.k = len(self.params)
        self.lock = PyThread_allocate_lock()
        self.segs = <Segment*>malloc(max(self.k, 1) * sizeof(Segment))
        if self.segs == NULL or self.lock == NULL:
            raise MemoryError()
        for i in range(self.k):
            p = <cnp.ndarray?>self.params[i]
            self.segs[i].param = <char*>cnp.PyArray_DATA(p)
            self.segs[i].state = (<char*>cnp.PyArray_DATA(<cnp.ndarray?>self.states[i])
                                  if self.states is not None else NULL)
            self.segs[i].grad = NULL
            self.segs[i].size = cnp.PyArray_SIZE(p)
            self.segs[i].cols = row_widths[i] if row_widths is not None else 0
            self.segs[i].state_size = (self.segs[i].size // self.segs[i].cols if self.segs[i].cols > 0
                                       else self.segs[i].size)
            self.segs[i].start = start
            self.segs[i].typenum = cnp.PyArray_TYPE(p)
            self.segs[i].is_double = self.segs[i].typenum == cnp.NPY_FLOAT64
            start += self.segs[i].size
        self.total = start
        self._sort_ranges()

    cdef int _sort_ranges(self) except -1:
        cdef Py_ssize_t i, itemsize
        cdef list found = []
        cdef Segment* s
        for i in range(self.k):
            s = &self.segs[i]
            itemsize = 8 if s.is_double else 4
            if s.size > 0:
                found.append((<Py_ssize_t>s.param, <Py_ssize_t>(s.param + s.size * itemsize), i, False))
            if s.state != NULL and s.state_size > 0:
                found.append((<Py_ssize_t>s.state, <Py_ssize_t>(s.state + s.state_size * itemsize), i, True))
        found.sort()
        self.ranges = <ByteRange*>malloc(max(len(found), 1) * sizeof(ByteRange))
        if self.ranges == NULL:
            raise MemoryError()
        self.n_ranges = len(found)
        for i, (first, last, owner, is_state) in enumerate(found):
            self.ranges[i].start = <const char*><Py_ssize_t>first
            self.ranges[i].end = <const char*><Py_ssize_t>last
            self.ranges[i].owner = owner
            self.ranges[i].is_state = is_state
        return 0

    def __dealloc__(self):
        free(self.segs)
        free(self.ranges)
        free(self.work)
        free(self.row_scratch)
        if self.lock != NULL:
            PyThread_free_lock(self.lock)

    @property
    def size(self):
        """Number of elements over all params."""
        return self.total

    cdef int _acquire(self) except -1:
        if not PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self.lock, WAIT_LOCK)
        return 0

    cdef bint _any_nonfinite(self, int num_threads):
        cdef bint found
        with nogil:
            found = _run(KERNEL_CHECK_FINITE, self.segs, self.k, self.total, num_threads, NULL)
        return found

    def has_nonfinite(self, grads, int num_threads=0):
        """Whether any of ``grads`` (checked as for a step) holds a NaN or an infinity."""
        self._acquire()
        try:
            self._load_grads(grads)
            return self._any_nonfinite(num_threads)
        finally:
            PyThread_release_lock(self.lock)

    cdef int _load_grads(self, grads) except -1:
        # Checks everything a step touches before anything is written, and stores the grad pointers.
        cdef Py_ssize_t i
        cdef object g, given = grads
        cdef Segment* s
        if self.single:
            grads = (grads,)
        elif not isinstance(grads, (list, tuple)) or len(grads) != self.k:
            self.explain(given)
            raise ValueError("grads do not fit the params")     # explain() always raises
        for i in range(self.k):
            s = &self.segs[i]
            g = grads[i]
            if (not _grad_fits(g, self.params[i], s.typenum)
                    or not _same_array(self.params[i], s.param, s.size, s.typenum)
                    or (self.states is not None
                        and not _same_array(self.states[i], s.state, s.state_size, s.typenum))
                    or not _grad_alias_ok(<const char*>cnp.PyArray_DATA(<cnp.ndarray>g),
                                          cnp.PyArray_NBYTES(<cnp.ndarray>g), i, self.ranges, self.n_ranges)):
                self.explain(given)
                raise ValueError(f"grads[{i}] does not fit params[{i}]")
            s.grad = <const char*>cnp.PyArray_DATA(<cnp.ndarray>g)
        return 0

    def adagrad(self, grads, double lr, double lr_decay, double weight_decay, double eps,
                bint eps_inside_sqrt, bint maximize, int num_threads, bint skip_if_nonfinite=False):
        """Take one AdaGrad step (the rule is in SEMANTICS.md) with ``t = steps + 1``.

        Returns False, having written nothing, when ``skip_if_nonfinite`` and a grad holds NaN or inf.
        """
        cdef AdagradArgs a
        if self.states is None:
            raise ValueError("AdaGrad needs accumulators (states)")
        self._acquire()
        try:
            self._load_grads(grads)
            if skip_if_nonfinite and self._any_nonfinite(num_threads):
                return False
            a.clr = lr / (1.0 + <double>self.steps * lr_decay)     # (t - 1) * lr_decay, in double
            a.weight_decay = weight_decay
            a.eps = eps
            a.has_weight_decay = weight_decay != 0.0
            a.eps_inside_sqrt = eps_inside_sqrt
            a.maximize = maximize
            with nogil:
                _run(KERNEL_ADAGRAD, self.segs, self.k, self.total, num_threads, &a)
            self.steps += 1
            return True
        finally:
            PyThread_release_lock(self.lock)

    def sgd(self, grads, double lr, double weight_decay, double momentum, double dampening,
            bint nesterov, bint maximize, int num_threads, bint skip_if_nonfinite=False):
        """Take one SGD step (the rule is in SEMANTICS.md); momentum starts as g at ``steps == 0``.

        Returns False, having written nothing, when ``skip_if_nonfinite`` and a grad holds NaN or inf.
        """
        cdef SgdArgs a
        self._acquire()
        try:
            self._load_grads(grads)
            if skip_if_nonfinite and self._any_nonfinite(num_threads):
                return False
            a.lr = lr
            a.weight_decay = weight_decay
            a.momentum = momentum
            a.one_minus_dampening = 1.0 - dampening
            if momentum == 0.0:
                a.momentum_mode = MOMENTUM_NONE
            elif self.steps == 0:
                a.momentum_mode = MOMENTUM_FIRST
            else:
                a.momentum_mode = MOMENTUM_LATER
            if a.momentum_mode != MOMENTUM_NONE and self.states is None:
                raise ValueError("momentum needs momentum buffers")
            a.has_weight_decay = weight_decay != 0.0
            a.nesterov = nesterov
            a.maximize = maximize
            with nogil:
                _run(KERNEL_SGD, self.segs, self.k, self.total, num_threads, &a)
            self.steps += 1
            return True
        finally:
            PyThread_release_lock(self.lock)

    cdef int _reserve(self, Py_ssize_t work_size, Py_ssize_t scratch_bytes) except -1:
        cdef void* grown
        if work_size > self.work_cap:
            grown = realloc(self.work, work_size * sizeof(Py_ssize_t))
            if grown == NULL:
                raise MemoryError()
            self.work, self.work_cap = <Py_ssize_t*>grown, work_size
        if scratch_bytes > self.row_scratch_cap:
            grown = realloc(self.row_scratch, scratch_bytes)
            if grown == NULL:
                raise MemoryError()
            self.row_scratch, self.row_scratch_cap = <char*>grown, scratch_bytes
        return 0

    cdef Py_ssize_t _rows_step(self, int kernel, Py_ssize_t index, indices, rows, bint assume_unique,
                               const void* args, int num_threads) except -2:
        # Returns -1 after the update, or the position of the first index out of range (nothing written).
        cdef Segment* s = &self.segs[index]
        cdef cnp.ndarray param = <cnp.ndarray>self.params[index]
        cdef cnp.ndarray idx = <cnp.ndarray?>indices
        cdef cnp.ndarray grad_rows = <cnp.ndarray?>rows
        cdef Py_ssize_t nrows = cnp.PyArray_DIM(param, 0), width = cnp.PyArray_DIM(param, 1)
        cdef Py_ssize_t k = cnp.PyArray_SIZE(idx), n_rows, j, v
        cdef bint wide = cnp.PyArray_TYPE(idx) == cnp.NPY_INT64
        cdef const char* idx_data = <const char*>cnp.PyArray_DATA(idx)
        cdef const char* rows_data = <const char*>cnp.PyArray_DATA(grad_rows)
        cdef int nthreads = _threads_for(k * width, num_threads)
        if (not _same_array(param, s.param, s.size, s.typenum)
                or (self.states is not None
                    and not _same_array(self.states[index], s.state, s.state_size, s.typenum))):
            self.explain(None)
            raise ValueError(f"params[{index}] changed after set-up")
        self._reserve(0 if assume_unique else _work_size(k), nthreads * width * (8 if s.is_double else 4))
        with nogil:
            if assume_unique:
                n_rows = k
                for j in range(k):
                    v = _read_index(idx_data, wide, j)
                    if v < 0 or v >= nrows:
                        n_rows = -(j + 1)
                        break
            else:
                n_rows = _group_rows(idx_data, wide, k, nrows, self.work)
            if n_rows >= 0:
                _apply_rows(kernel, s, width, rows_data, idx_data, wide,
                            NULL if assume_unique else self.work, k, n_rows, self.row_scratch,
                            nthreads, args)
        return -1 if n_rows >= 0 else -n_rows - 1

    def adagrad_rows(self, Py_ssize_t index, indices, rows, bint assume_unique, double lr,
                     double lr_decay, double weight_decay, double eps, bint eps_inside_sqrt,
                     bint maximize, int num_threads):
        """AdaGrad on the rows ``indices`` of 2-D param ``index`` (validated by the caller).

        Duplicate indices are summed first (unless ``assume_unique``). Returns -1 after the step, or the
        position of the first index out of range, in which case nothing was written.
        """
        cdef AdagradArgs a
        cdef Py_ssize_t bad
        if self.states is None:
            raise ValueError("AdaGrad needs accumulators (states)")
        self._acquire()
        try:
            a.clr = lr / (1.0 + <double>self.steps * lr_decay)
            a.weight_decay = weight_decay
            a.eps = eps
            a.has_weight_decay = weight_decay != 0.0
            a.eps_inside_sqrt = eps_inside_sqrt
            a.maximize = maximize
            bad = self._rows_step(KERNEL_ADAGRAD, index, indices, rows, assume_unique, &a, num_threads)
            if bad == -1:
                self.steps += 1
            return bad
        finally:
            PyThread_release_lock(self.lock)

    def sgd_rows(self, Py_ssize_t index, indices, rows, bint assume_unique, double lr, double weight_decay,
                 double momentum, double dampening, bint nesterov, bint maximize, int num_threads):
        """SGD on the rows ``indices`` of 2-D param ``index``; momentum buffers of other rows stay put.

        Returns -1 after the step, or the position of the first index out of range (nothing written).
        """
        cdef SgdArgs a
        cdef Py_ssize_t bad
        self._acquire()
        try:
            a.lr = lr
            a.weight_decay = weight_decay
            a.momentum = momentum
            a.one_minus_dampening = 1.0 - dampening
            if momentum == 0.0:
                a.momentum_mode = MOMENTUM_NONE
            elif self.steps == 0:
                a.momentum_mode = MOMENTUM_FIRST
            else:
                a.momentum_mode = MOMENTUM_LATER
            a.has_weight_decay = weight_decay != 0.0
            a.nesterov = nesterov
            a.maximize = maximize
            bad = self._rows_step(KERNEL_SGD, index, indices, rows, assume_unique, &a, num_threads)
            if bad == -1:
                self.steps += 1
            return bad
        finally:
            PyThread_release_lock(self.lock)

    def ceiling(self, grads, int num_threads):
        """Run the ceiling kernel: this engine's memory traffic, trivial arithmetic; changes the buffers."""
        self._acquire()
        try:
            self._load_grads(grads)
            with nogil:
                _run(KERNEL_CEILING, self.segs, self.k, self.total, num_threads, NULL)
        finally:
            PyThread_release_lock(self.lock)


# ---------------------------------------------------------------------------------------------------
# Threads and build facts.

def set_num_threads(int n):
    """Set the default thread count of every step (0 restores ``omp_get_max_threads()``)."""
    global _global_threads
    _global_threads = n


def get_num_threads():
    """The thread count a large step uses when it names none."""
    if _forked_child or not CG_HAVE_OPENMP:
        return 1
    return _global_threads if _global_threads > 0 else cg_max_threads()


def _after_fork_in_child():
    # GNU OpenMP hangs a forked child that enters a parallel region after its parent used one, so a
    # forked child steps serially.
    global _forked_child
    _forked_child = True


def data_address(cnp.ndarray arr):
    """The address of ``arr``'s first byte, read in C.

    The validators use this, not ``__array_interface__`` or ``byte_bounds``: both leak about 10 bytes per
    call in NumPy 2.4 (found by tests/test_steady_state.py).
    """
    return <Py_ssize_t>cnp.PyArray_DATA(arr)


def has_openmp():
    """Whether this build runs steps with OpenMP threads."""
    return bool(CG_HAVE_OPENMP)


PARALLEL_GRAIN = GRAIN
COMPILE_FLAGS = CG_COMPILE_FLAGS.decode()


def cpu_features():
    """The instruction sets of this CPU that a kernel variant may need (checked with the OS's support)."""
    return {"avx2": bool(cg_cpu_has_avx2()), "avx512": bool(cg_cpu_has_avx512())}
