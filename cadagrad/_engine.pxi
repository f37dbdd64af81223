# The step engine: a fixed list of params and state buffers, checked once by the Python layer and kept
# as raw pointers. A step only re-reads a few header fields of each array (nanoseconds), so stepping
# the same params again costs no Python-level work. On any mismatch it asks the Python validator,
# which owns every error message, to explain. A step's hyperparameters are packed (and checked) in one
# place per rule, shared by the dense and the sparse-row steps.

from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK, NOWAIT_LOCK)
from libc.stdlib cimport calloc, free, malloc, realloc


cdef struct ByteRange:
    # The bytes of one param or state buffer; an engine keeps them sorted by start (they are disjoint).
    const char* start
    const char* end
    Py_ssize_t owner       # index of the param
    bint is_state


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


cdef inline bint _rows_fit(cnp.ndarray rows, int typenum, Py_ssize_t k, Py_ssize_t width) noexcept:
    # The gradient rows of a sparse step: (k, width), the param's dtype, C-contiguous, aligned, native.
    return (cnp.PyArray_TYPE(rows) == typenum and cnp.PyArray_IS_C_CONTIGUOUS(rows)
            and cnp.PyArray_ISALIGNED(rows) and not cnp.PyArray_ISBYTESWAPPED(rows)
            and cnp.PyArray_NDIM(rows) == 2 and cnp.PyArray_DIM(rows, 0) == k
            and cnp.PyArray_DIM(rows, 1) == width)


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


cdef str _where(Py_ssize_t j, bint many):
    # How an error names table j of a row step: by its place in the lists, or not at all for one table.
    return f"[{j}]" if many else ""


cdef int _grow(void** buf, Py_ssize_t* cap, Py_ssize_t nbytes) except -1:
    # Grows a scratch buffer to at least nbytes (contents not kept); never shrinks it.
    cdef void* grown
    if nbytes > cap[0]:
        grown = realloc(buf[0], nbytes)
        if grown == NULL:
            raise MemoryError()
        buf[0], cap[0] = grown, nbytes
    return 0


cdef inline bint _overlaps_named(const char* start, Py_ssize_t nbytes, const ByteRange* ranges,
                                 Py_ssize_t n_ranges, const Py_ssize_t* named, Py_ssize_t stamp) noexcept:
    # Whether [start, start + nbytes) meets a buffer of a param that named[owner] == stamp marks. The
    # ranges are disjoint and sorted, so those that meet it are the last ones starting below its end.
    cdef Py_ssize_t lo = 0, hi = n_ranges, mid
    cdef const char* end = start + nbytes
    if nbytes == 0:
        return False
    while lo < hi:
        mid = (lo + hi) // 2
        if ranges[mid].start < end:
            lo = mid + 1
        else:
            hi = mid
    lo -= 1
    while lo >= 0 and ranges[lo].end > start:
        if named[ranges[lo].owner] == stamp:
            return True
        lo -= 1
    return False


cdef int _kind_of(cnp.ndarray p, object kind) except -1:
    # A param's kind: as named by the caller (checked against its itemsize), else from its type number.
    cdef int typenum = cnp.PyArray_TYPE(p)
    cdef int found
    if kind is None:
        if typenum == cnp.NPY_FLOAT16:
            return KIND_FLOAT16
        return KIND_FLOAT64 if typenum == cnp.NPY_FLOAT64 else KIND_FLOAT32
    found = kind
    if (found == KIND_FLOAT32 and typenum == cnp.NPY_FLOAT32) or (found == KIND_FLOAT64 and typenum == cnp.NPY_FLOAT64) \
            or (found == KIND_FLOAT16 and typenum == cnp.NPY_FLOAT16) \
            or (found == KIND_BFLOAT16 and cnp.PyArray_ITEMSIZE(p) == 2 and typenum != cnp.NPY_FLOAT16):
        return found
    raise ValueError(f"kinds: {kind!r} does not fit a param of dtype {p.dtype}")


cdef class StepEngine:
    """Params and their state as raw pointers, stepped in one parallel region.

    Built by cadagrad.optim and cadagrad.functional after cadagrad._checks has validated every array;
    not a public class. Steps on one engine are serialized by an internal lock; the lock is waited
    for with the GIL released.
    """
    cdef tuple params
    cdef tuple states
    cdef tuple states2             # a second state per param (AdaGrad dual averaging's S), or None
    cdef object explain
    cdef bint single
    cdef Segment* segs
    cdef ByteRange* ranges
    cdef Py_ssize_t n_ranges
    cdef Py_ssize_t k
    cdef Py_ssize_t total
    cdef PyThread_type_lock lock
    # Sparse-row scratch, grown, never shrunk: a steady state of row steps allocates nothing.
    cdef RowTable* row_tables      # the tables of a row step
    cdef Py_ssize_t row_tables_cap
    cdef Py_ssize_t* row_groups    # their RowGroups, one after another
    cdef Py_ssize_t row_groups_cap
    cdef Py_ssize_t* hashing       # _group_rows' hash table, shared by the tables of a step
    cdef Py_ssize_t hashing_cap
    cdef char* row_scratch         # one accumulation row per thread
    cdef Py_ssize_t row_scratch_cap
    cdef Py_ssize_t* named         # per param: the number of the last row step that named it
    cdef Py_ssize_t row_calls
    cdef public Py_ssize_t steps
    cdef bint has_16_bit           # some param is float16 or bfloat16

    def __cinit__(self, params, states, bint single, explain, Py_ssize_t steps=0, row_widths=None,
                  states2=None, kinds=None):
        """
        Parameters
        ----------
        params : sequence of ndarray
            Writable, aligned, C-contiguous float32/float64/float16/bfloat16 arrays (already validated).
        states : sequence of ndarray or None
            One state buffer per param, same shape and dtype (float32 for a 16-bit param; already
            validated), or None.
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
        states2 : sequence of ndarray, optional
            A second state buffer per param, same shape and dtype (already validated): the gradient sums
            of AdaGrad dual averaging, whose ``states`` are the squared sums.
        kinds : sequence of int, optional
            Per param: 0 float32, 1 float64, 2 float16, 3 bfloat16 (whose NumPy type number is assigned
            at run time, so the caller names it). A 16-bit param's states are float32 and its grads may
            be in its dtype or float32. Without it, float16 params are recognised by type number.
        """
        cdef Py_ssize_t i, start = 0
        cdef cnp.ndarray p
        self.params = tuple(params)
        self.states = tuple(states) if states is not None else None
        self.states2 = tuple(states2) if states2 is not None else None
        self.single = single
        self.explain = explain
        self.steps = steps
        self.k = len(self.params)
        self.lock = PyThread_allocate_lock()
        self.segs = <Segment*>malloc(max(self.k, 1) * sizeof(Segment))
        self.named = <Py_ssize_t*>calloc(max(self.k, 1), sizeof(Py_ssize_t))
        if self.segs == NULL or self.named == NULL or self.lock == NULL:
            raise MemoryError()
        for i in range(self.k):
            p = <cnp.ndarray?>self.params[i]
            self.segs[i].param = <char*>cnp.PyArray_DATA(p)
            self.segs[i].state = (<char*>cnp.PyArray_DATA(<cnp.ndarray?>self.states[i])
                                  if self.states is not None else NULL)
            self.segs[i].state2 = (<char*>cnp.PyArray_DATA(<cnp.ndarray?>self.states2[i])
                                   if self.states2 is not None else NULL)
            self.segs[i].grad = NULL
            self.segs[i].size = cnp.PyArray_SIZE(p)
            self.segs[i].cols = row_widths[i] if row_widths is not None else 0
            self.segs[i].state_size = (self.segs[i].size // self.segs[i].cols if self.segs[i].cols > 0
                                       else self.segs[i].size)
            self.segs[i].start = start
            self.segs[i].typenum = cnp.PyArray_TYPE(p)
            self.segs[i].is_double = self.segs[i].typenum == cnp.NPY_FLOAT64
            self.segs[i].kind = _kind_of(p, kinds[i] if kinds is not None else None)
            # A 16-bit param's state is float32, or in the param's own format (the caller chose; its
            # dtype was validated): told apart by the state's item size.
            self.segs[i].state_16 = (self.segs[i].kind >= KIND_FLOAT16 and self.states is not None
                                     and cnp.PyArray_ITEMSIZE(<cnp.ndarray?>self.states[i]) == 2)
            self.segs[i].state_typenum = (self.segs[i].typenum if self.segs[i].state_16
                                          else cnp.NPY_FLOAT32 if self.segs[i].kind >= KIND_FLOAT16
                                          else self.segs[i].typenum)
            self.segs[i].grad_f32 = False
            self.has_16_bit |= self.segs[i].kind >= KIND_FLOAT16
            start += self.segs[i].size
        self.total = start
        self._sort_ranges()

    cdef int _sort_ranges(self) except -1:
        cdef Py_ssize_t i, itemsize
        cdef list found = []
        cdef Segment* s
        cdef Py_ssize_t state_itemsize
        for i in range(self.k):
            s = &self.segs[i]
            itemsize = 8 if s.is_double else (2 if s.kind >= KIND_FLOAT16 else 4)
            state_itemsize = 8 if s.is_double else (2 if s.state_16 else 4)
            if s.size > 0:
                found.append((<Py_ssize_t>s.param, <Py_ssize_t>(s.param + s.size * itemsize), i, False))
            if s.state != NULL and s.state_size > 0:
                found.append((<Py_ssize_t>s.state, <Py_ssize_t>(s.state + s.state_size * state_itemsize), i,
                              True))
            if s.state2 != NULL and s.size > 0:
                found.append((<Py_ssize_t>s.state2, <Py_ssize_t>(s.state2 + s.size * state_itemsize), i, True))
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
        free(self.named)
        free(self.row_tables)
        free(self.row_groups)
        free(self.hashing)
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
        """Whether any of ``grads`` (checked as for a step) holds a NaN or an infinity.

        The optimizers ask it before the first dense step over lazily filled state, so that a step that
        ``skip_if_nonfinite`` will skip fills nothing either.
        """
        self._acquire()
        try:
            self._load_grads(grads)
            return self._any_nonfinite(num_threads)
        finally:
            PyThread_release_lock(self.lock)

    cdef unsigned int _rounding_key(self, object seed, bint* stochastic) except? 0:
        # Stochastic rounding of 16-bit params with the generator's key of (seed, t = steps + 1), or
        # (seed None) rounding to nearest.
        stochastic[0] = seed is not None
        if seed is None:
            return 0
        if not self.has_16_bit:
            raise ValueError("seed: stochastic rounding applies to float16 and bfloat16 params only")
        if not 0 <= seed < 2 ** 64:
            raise ValueError(f"seed: expected an int from 0 to 2**64 - 1, got {seed!r}")
        return cg_sr_key(<unsigned long long>seed, <unsigned long long>(self.steps + 1))

    cdef int _pack_adagrad(self, AdagradArgs* a, double lr, double lr_decay, double weight_decay,
                           double eps, bint eps_inside_sqrt, bint maximize, object seed) except -1:
        # The arguments of an AdaGrad step (dense or rows), checked before anything is read or written.
        if self.states is None:
            raise ValueError("AdaGrad needs accumulators (states)")
        a.sr_key = self._rounding_key(seed, &a.stochastic)
        a.clr = _adagrad_clr(lr, lr_decay, self.steps)
        a.weight_decay = weight_decay
        a.eps = eps
        a.has_weight_decay = weight_decay != 0.0
        a.eps_inside_sqrt = eps_inside_sqrt
        a.maximize = maximize
        return 0

    cdef int _pack_sgd(self, SgdArgs* a, double lr, double weight_decay, double momentum, double dampening,
                       bint nesterov, bint maximize, object seed) except -1:
        # The arguments of an SGD step (dense or rows), checked before anything is read or written.
        a.sr_key = self._rounding_key(seed, &a.stochastic)
        a.momentum_mode = _momentum_mode(momentum, self.steps)
        if a.momentum_mode != MOMENTUM_NONE and self.states is None:
            raise ValueError("momentum needs momentum buffers")
        a.lr = lr
        a.weight_decay = weight_decay
        a.momentum = momentum
        a.one_minus_dampening = 1.0 - dampening
        a.has_weight_decay = weight_decay != 0.0
        a.nesterov = nesterov
        a.maximize = maximize
        return 0

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
            s.grad_f32 = (s.kind >= KIND_FLOAT16 and cnp.PyArray_Check(g)
                          and cnp.PyArray_TYPE(<cnp.ndarray>g) == cnp.NPY_FLOAT32)
            if (not _grad_fits(g, self.params[i], cnp.NPY_FLOAT32 if s.grad_f32 else s.typenum)
                    or not _same_array(self.params[i], s.param, s.size, s.typenum)
                    or (self.states is not None
                        and not _same_array(self.states[i], s.state, s.state_size, s.state_typenum))
                    or (self.states2 is not None
                        and not _same_array(self.states2[i], s.state2, s.size, s.state_typenum))
                    or not _grad_alias_ok(<const char*>cnp.PyArray_DATA(<cnp.ndarray>g),
                                          cnp.PyArray_NBYTES(<cnp.ndarray>g), i, self.ranges, self.n_ranges)):
                self.explain(given)
                raise ValueError(f"grads[{i}] does not fit params[{i}]")
            s.grad = <const char*>cnp.PyArray_DATA(<cnp.ndarray>g)
        return 0

    def adagrad(self, grads, double lr, double lr_decay, double weight_decay, double eps,
                bint eps_inside_sqrt, bint maximize, int num_threads, bint skip_if_nonfinite=False,
                seed=None):
        """Take one AdaGrad step with ``t = steps + 1``.

        The rule is on the rules page of the docs (docs/rules.rst). Returns False, having written nothing,
        when ``skip_if_nonfinite`` and a grad holds NaN or inf. With ``seed`` (an int), 16-bit params are
        rounded stochastically with the generator's bits of ``(seed, t, element index)``.
        """
        cdef AdagradArgs a
        self._acquire()
        try:
            self._pack_adagrad(&a, lr, lr_decay, weight_decay, eps, eps_inside_sqrt, maximize, seed)
            self._load_grads(grads)
            if skip_if_nonfinite and self._any_nonfinite(num_threads):
                return False
            with nogil:
                _run(KERNEL_ADAGRAD, self.segs, self.k, self.total, num_threads, &a)
            self.steps += 1
            return True
        finally:
            PyThread_release_lock(self.lock)

    def sgd(self, grads, double lr, double weight_decay, double momentum, double dampening,
            bint nesterov, bint maximize, int num_threads, bint skip_if_nonfinite=False, seed=None):
        """Take one SGD step; momentum starts as g at ``steps == 0``.

        The rule is on the rules page of the docs (docs/rules.rst). Returns False, having written nothing,
        when ``skip_if_nonfinite`` and a grad holds NaN or inf. ``seed`` as for ``adagrad``.
        """
        cdef SgdArgs a
        self._acquire()
        try:
            self._pack_sgd(&a, lr, weight_decay, momentum, dampening, nesterov, maximize, seed)
            self._load_grads(grads)
            if skip_if_nonfinite and self._any_nonfinite(num_threads):
                return False
            with nogil:
                _run(KERNEL_SGD, self.segs, self.k, self.total, num_threads, &a)
            self.steps += 1
            return True
        finally:
            PyThread_release_lock(self.lock)

    cdef int _reserve_rows(self, Py_ssize_t n_tables, Py_ssize_t groups_words, Py_ssize_t hashing_words,
                           Py_ssize_t scratch_bytes) except -1:
        _grow(<void**>&self.row_tables, &self.row_tables_cap, n_tables * sizeof(RowTable))
        _grow(<void**>&self.row_groups, &self.row_groups_cap, groups_words * sizeof(Py_ssize_t))
        _grow(<void**>&self.hashing, &self.hashing_cap, hashing_words * sizeof(Py_ssize_t))
        _grow(<void**>&self.row_scratch, &self.row_scratch_cap, scratch_bytes)
        return 0

    cdef int _set_table(self, RowTable* t, Py_ssize_t index, object indices, object rows, Py_ssize_t j,
                        bint many) except -1:
        # One table of a row step: checks the headers of its arrays (the Python layer validated them;
        # these checks keep a wrong call from reading out of bounds) and that no other table of the step
        # names the same param. Errors name the table by its place j in the lists when many.
        cdef cnp.ndarray param, idx
        cdef Segment* s
        cdef int typenum
        if not 0 <= index < self.k:
            raise ValueError(f"params{_where(j, many)}: expected 0 <= param < {self.k}, got {index}")
        if self.named[index] == self.row_calls:
            raise ValueError(f"params{_where(j, many)}: params[{index}] is named twice in one step")
        self.named[index] = self.row_calls
        s = &self.segs[index]
        param = <cnp.ndarray>self.params[index]
        if (not _same_array(param, s.param, s.size, s.typenum)
                or (self.states is not None
                    and not _same_array(self.states[index], s.state, s.state_size, s.state_typenum))
                or (self.states2 is not None
                    and not _same_array(self.states2[index], s.state2, s.size, s.state_typenum))):
            self.explain(None)
            raise ValueError(f"params[{index}] changed after set-up")
        if cnp.PyArray_NDIM(param) != 2:
            raise ValueError(f"params[{index}]: sparse rows need a 2-D param, got {param.ndim} dimensions")
        if not cnp.PyArray_Check(indices):
            raise TypeError(f"indices{_where(j, many)}: expected a numpy.ndarray of int32 or int64")
        idx = <cnp.ndarray>indices
        typenum = cnp.PyArray_TYPE(idx)
        if ((typenum != cnp.NPY_INT32 and typenum != cnp.NPY_INT64) or cnp.PyArray_ISBYTESWAPPED(idx)
                or cnp.PyArray_NDIM(idx) != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(idx)
                or not cnp.PyArray_ISALIGNED(idx)):
            raise ValueError(f"indices{_where(j, many)}: expected a contiguous, aligned 1-D array of int32 "
                             "or int64")
        t.seg = s
        t.indices = <const char*>cnp.PyArray_DATA(idx)
        t.wide = typenum == cnp.NPY_INT64
        t.k = cnp.PyArray_DIM(idx, 0)
        t.nrows = cnp.PyArray_DIM(param, 0)
        t.width = cnp.PyArray_DIM(param, 1)
        t.unit = t.width * (8 if s.is_double else 4)
        t.n_rows = 0
        if not cnp.PyArray_Check(rows):
            raise TypeError(f"rows{_where(j, many)}: expected a numpy.ndarray, got {type(rows).__name__}")
        t.rows_f32 = (s.kind >= KIND_FLOAT16 and cnp.PyArray_Check(rows)
                      and cnp.PyArray_TYPE(<cnp.ndarray>rows) == cnp.NPY_FLOAT32)
        if not _rows_fit(<cnp.ndarray>rows, cnp.NPY_FLOAT32 if t.rows_f32 else s.typenum, t.k, t.width):
            raise ValueError(f"rows{_where(j, many)}: expected a C-contiguous, aligned array of shape "
                             f"({t.k}, {t.width}) and dtype {param.dtype} (as params[{index}]), "
                             f"got {rows.dtype} {rows.shape}")
        t.rows = <const char*>cnp.PyArray_DATA(<cnp.ndarray>rows)
        return 0

    cdef int _check_row_aliases(self, Py_ssize_t n_tables, tuple indices_list, tuple rows_list,
                                bint many) except -1:
        # After every table is set: no table's indices or rows may share memory with a param or state
        # that the step writes (threads would race; one table at a time, a step would read its own writes).
        cdef Py_ssize_t j
        cdef cnp.ndarray idx, grad_rows
        for j in range(n_tables):
            idx, grad_rows = <cnp.ndarray>indices_list[j], <cnp.ndarray>rows_list[j]
            if _overlaps_named(<const char*>cnp.PyArray_DATA(idx), cnp.PyArray_NBYTES(idx), self.ranges,
                               self.n_ranges, self.named, self.row_calls):
                raise ValueError(f"indices{_where(j, many)}: shares memory with a param or optimizer state "
                                 "that the step writes")
            if _overlaps_named(<const char*>cnp.PyArray_DATA(grad_rows), cnp.PyArray_NBYTES(grad_rows),
                               self.ranges, self.n_ranges, self.named, self.row_calls):
                raise ValueError(f"rows{_where(j, many)}: shares memory with a param or optimizer state "
                                 "that the step writes")
        return 0

    cdef Py_ssize_t _rows_step(self, int kernel, tuple indices_list, tuple rows_list, tuple params, bint many,
                               bint assume_unique, const void* args, int num_threads) except -2:
        # The one sparse-row step, for one table or several: sets and checks every table, groups (or
        # range-checks) all their indices, and only then writes, in one parallel region. Returns -1 after
        # the update; else, having written nothing, the position of the first index out of range (one
        # table) or table + n_tables * position (several).
        cdef Py_ssize_t n_tables = len(params), j, total, groups_words = 0, max_k = 0, elements = 0
        cdef Py_ssize_t acc_bytes = 0
        cdef Py_ssize_t bad[2]
        cdef RowTable* t
        cdef int nthreads
        if len(indices_list) != n_tables or len(rows_list) != n_tables:
            raise ValueError(f"indices_list, rows_list and params: expected equal lengths, got "
                             f"{len(indices_list)}, {len(rows_list)} and {n_tables}")
        self._reserve_rows(n_tables, 0, 0, 0)
        self.row_calls += 1
        for j in range(n_tables):
            t = &self.row_tables[j]
            self._set_table(t, params[j], indices_list[j], rows_list[j], j, many)
            groups_words += _groups_size(t.k)
            max_k = max(max_k, t.k)
            elements += t.k * t.width
            acc_bytes = max(acc_bytes, t.unit)
        self._check_row_aliases(n_tables, indices_list, rows_list, many)
        nthreads = _threads_for(elements, num_threads)
        acc_bytes = (acc_bytes + 63) & ~(<Py_ssize_t>63)     # threads' rows on their own cache lines
        self._reserve_rows(n_tables, 0 if assume_unique else groups_words,
                           0 if assume_unique else _hash_size(max_k), nthreads * acc_bytes)
        with nogil:
            total = _prepare_tables(self.row_tables, n_tables, self.row_groups, self.hashing, assume_unique,
                                    bad)
            if total >= 0:
                _apply_rows(kernel, self.row_tables, n_tables, total, nthreads, self.row_scratch, acc_bytes,
                            args)
        if total >= 0:
            return -1
        return bad[0] + n_tables * bad[1] if many else bad[1]

    cdef Py_ssize_t _adagrad_rows(self, tuple indices_list, tuple rows_list, tuple params, bint many,
                                  bint assume_unique, double lr, double lr_decay, double weight_decay,
                                  double eps, bint eps_inside_sqrt, bint maximize, int num_threads,
                                  object seed) except -2:
        cdef AdagradArgs a
        cdef Py_ssize_t bad
        self._acquire()
        try:
            self._pack_adagrad(&a, lr, lr_decay, weight_decay, eps, eps_inside_sqrt, maximize, seed)
            bad = self._rows_step(KERNEL_ADAGRAD, indices_list, rows_list, params, many, assume_unique, &a,
                                  num_threads)
            if bad == -1:
                self.steps += 1
            return bad
        finally:
            PyThread_release_lock(self.lock)

    cdef Py_ssize_t _sgd_rows(self, tuple indices_list, tuple rows_list, tuple params, bint many,
                              bint assume_unique, double lr, double weight_decay, double momentum,
                              double dampening, bint nesterov, bint maximize, int num_threads,
                              object seed) except -2:
        cdef SgdArgs a
        cdef Py_ssize_t bad
        self._acquire()
        try:
            self._pack_sgd(&a, lr, weight_decay, momentum, dampening, nesterov, maximize, seed)
            bad = self._rows_step(KERNEL_SGD, indices_list, rows_list, params, many, assume_unique, &a,
                                  num_threads)
            if bad == -1:
                self.steps += 1
            return bad
        finally:
            PyThread_release_lock(self.lock)

    def adagrad_rows(self, Py_ssize_t index, indices, rows, bint assume_unique, double lr,
                     double lr_decay, double weight_decay, double eps, bint eps_inside_sqrt,
                     bint maximize, int num_threads, seed=None):
        """AdaGrad on the rows ``indices`` of 2-D param ``index`` (validated by the caller).

        Duplicate indices are summed first (unless ``assume_unique``). Returns -1 after the step, or the
        position of the first index out of range, in which case nothing was written.
        """
        return self._adagrad_rows((indices,), (rows,), (index,), False, assume_unique, lr, lr_decay,
                                  weight_decay, eps, eps_inside_sqrt, maximize, num_threads, seed)

    def adagrad_rows_many(self, indices_list, rows_list, params, bint assume_unique, double lr,
                          double lr_decay, double weight_decay, double eps, bint eps_inside_sqrt,
                          bint maximize, int num_threads, seed=None):
        """AdaGrad on rows of several 2-D params (tables) at once: one step, one parallel region.

        Table ``j`` is ``params[j]`` (an index into this engine's params, each named once), stepped on the
        rows ``indices_list[j]`` with gradient rows ``rows_list[j]``, as ``adagrad_rows`` would, with the
        same ``t = steps + 1`` for every table; ``steps`` advances once. Every table's indices are grouped
        and checked before any row is written. Returns -1 after the step or, having written nothing,
        ``table + len(params) * position`` for the first index out of range (the first such table, then
        its first such position): ``position, table = divmod(result, len(params))``.
        """
        return self._adagrad_rows(tuple(indices_list), tuple(rows_list), tuple(params), True, assume_unique,
                                  lr, lr_decay, weight_decay, eps, eps_inside_sqrt, maximize, num_threads, seed)

    def sgd_rows(self, Py_ssize_t index, indices, rows, bint assume_unique, double lr, double weight_decay,
                 double momentum, double dampening, bint nesterov, bint maximize, int num_threads, seed=None):
        """SGD on the rows ``indices`` of 2-D param ``index``; momentum buffers of other rows stay put.

        Returns -1 after the step, or the position of the first index out of range (nothing written).
        """
        return self._sgd_rows((indices,), (rows,), (index,), False, assume_unique, lr, weight_decay, momentum,
                              dampening, nesterov, maximize, num_threads, seed)

    def sgd_rows_many(self, indices_list, rows_list, params, bint assume_unique, double lr,
                      double weight_decay, double momentum, double dampening, bint nesterov, bint maximize,
                      int num_threads, seed=None):
        """SGD on rows of several 2-D params (tables) at once, as ``adagrad_rows_many``.

        Every table takes the momentum rule of step ``t = steps + 1`` (``buf = g`` at the first step);
        ``steps`` advances once. Returns as ``adagrad_rows_many``.
        """
        return self._sgd_rows(tuple(indices_list), tuple(rows_list), tuple(params), True, assume_unique, lr,
                              weight_decay, momentum, dampening, nesterov, maximize, num_threads, seed)

    def rows_ceiling(self, indices_list, rows_list, params, bint assume_unique, int num_threads):
        """The ceiling of ``adagrad_rows_many`` (and ``sgd_rows_many``) on the same tables and indices.

        The same grouping and checks, the same row walk, threads and prefetches, reading the same gradient
        rows (duplicates summed into ``g``) and reading and writing the same param and state rows, with
        trivial arithmetic: each named row of a param grows by its ``g``; its element-wise state by
        ``g * g``, or a row-wise state by ``g[0] * g[0]``. Nothing else changes; ``steps`` stays. Not an
        optimizer step. Returns as ``adagrad_rows_many``.
        """
        self._acquire()
        try:
            return self._rows_step(KERNEL_CEILING, tuple(indices_list), tuple(rows_list), tuple(params), True,
                                   assume_unique, NULL, num_threads)
        finally:
            PyThread_release_lock(self.lock)

    cdef int _pack_proximal(self, ProximalArgs* a, double lr, double l1, double l2) except -1:
        # The arguments of a proximal AdaGrad step (dense or rows), checked before anything is written.
        if self.has_16_bit:
            raise TypeError("proximal AdaGrad takes float32 or float64 params only")
        if self.states is None:
            raise ValueError("proximal AdaGrad needs accumulators (states)")
        if not (lr > 0.0 and l1 >= 0.0 and l2 >= 0.0):
            raise ValueError(f"expected lr > 0, l1 >= 0 and l2 >= 0, got lr={lr}, l1={l1}, l2={l2}")
        a.lr = lr
        a.l1 = l1
        a.l2 = l2
        a.has_l1 = l1 > 0.0
        a.has_l2 = l2 > 0.0
        return 0

    cdef int _pack_adagrad_da(self, DualAveragingArgs* a, double lr, double l1, double l2) except -1:
        # The arguments of a dual-averaging step with T = steps + 1; the products in double.
        if self.has_16_bit:
            raise TypeError("AdaGrad dual averaging takes float32 or float64 params only")
        cdef double T = <double>(self.steps + 1)
        if self.states is None or self.states2 is None:
            raise ValueError("AdaGrad dual averaging needs squared sums (states) and gradient sums (states2)")
        if not (lr > 0.0 and l1 >= 0.0 and l2 >= 0.0):
            raise ValueError(f"expected lr > 0, l1 >= 0 and l2 >= 0, got lr={lr}, l1={l1}, l2={l2}")
        a.lr = lr
        a.l1T = l1 * T
        a.l2Tlr = l2 * T * lr
        a.has_l1 = l1 > 0.0
        return 0

    cdef bint _dense_step(self, int kernel, grads, const void* args, int num_threads,
                          bint skip_if_nonfinite) except -1:
        # A dense step of the proximal kernels: the lock is held by the caller.
        self._load_grads(grads)
        if skip_if_nonfinite and self._any_nonfinite(num_threads):
            return False
        with nogil:
            _run(kernel, self.segs, self.k, self.total, num_threads, args)
        self.steps += 1
        return True

    def proximal_adagrad(self, grads, double lr, double l1, double l2, int num_threads,
                         bint skip_if_nonfinite=False):
        """Take one proximal AdaGrad step (``states``: the accumulators G).

        The rule is on the rules page of the docs (docs/rules.rst). Returns False, having written nothing,
        when ``skip_if_nonfinite`` and a grad holds NaN or inf.
        """
        cdef ProximalArgs a
        self._acquire()
        try:
            self._pack_proximal(&a, lr, l1, l2)
            return self._dense_step(KERNEL_PROXIMAL_ADAGRAD, grads, &a, num_threads, skip_if_nonfinite)
        finally:
            PyThread_release_lock(self.lock)

    def proximal_adagrad_rows(self, Py_ssize_t index, indices, rows, bint assume_unique, double lr,
                              double l1, double l2, int num_threads):
        """Proximal AdaGrad on the rows ``indices`` of 2-D param ``index`` (validated by the caller).

        Returns -1 after the step, or the position of the first index out of range (nothing written).
        """
        cdef ProximalArgs a
        cdef Py_ssize_t bad
        self._acquire()
        try:
            self._pack_proximal(&a, lr, l1, l2)
            bad = self._rows_step(KERNEL_PROXIMAL_ADAGRAD, (indices,), (rows,), (index,), False, assume_unique,
                                  &a, num_threads)
            if bad == -1:
                self.steps += 1
            return bad
        finally:
            PyThread_release_lock(self.lock)

    def adagrad_da(self, grads, double lr, double l1, double l2, int num_threads,
                   bint skip_if_nonfinite=False):
        """Take one AdaGrad dual-averaging step with ``T = steps + 1`` (``states``: G, ``states2``: S).

        The rule is on the rules page of the docs (docs/rules.rst). Returns False, having written nothing,
        when ``skip_if_nonfinite`` and a grad holds NaN or inf.
        """
        cdef DualAveragingArgs a
        self._acquire()
        try:
            self._pack_adagrad_da(&a, lr, l1, l2)
            return self._dense_step(KERNEL_ADAGRAD_DA, grads, &a, num_threads, skip_if_nonfinite)
        finally:
            PyThread_release_lock(self.lock)

    def adagrad_da_rows(self, Py_ssize_t index, indices, rows, bint assume_unique, double lr,
                        double l1, double l2, int num_threads):
        """AdaGrad dual averaging on the rows ``indices`` of 2-D param ``index``, ``T = steps + 1``.

        Returns -1 after the step, or the position of the first index out of range (nothing written).
        """
        cdef DualAveragingArgs a
        cdef Py_ssize_t bad
        self._acquire()
        try:
            self._pack_adagrad_da(&a, lr, l1, l2)
            bad = self._rows_step(KERNEL_ADAGRAD_DA, (indices,), (rows,), (index,), False, assume_unique, &a,
                                  num_threads)
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
