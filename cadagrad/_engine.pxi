# The step engine: a fixed list of params and state buffers, checked once by the Python layer and kept
# as raw pointers. A step only re-reads a few header fields of each array (nanoseconds), so stepping
# the same params again costs no Python-level work. On any mismatch it asks the Python validator,
# which owns every error message, to explain. A step's hyperparameters are packed (and checked) in one
# place per rule, shared by the dense and the sparse-row steps.

from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK, NOWAIT_LOCK)
from libc.stdlib cimport free, malloc, realloc


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
    cdef tuple states2             # a second state per param (AdaGrad dual averaging's S), or None
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

    def __cinit__(self, params, states, bint single, explain, Py_ssize_t steps=0, row_widths=None,
                  states2=None):
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
        states2 : sequence of ndarray, optional
            A second state buffer per param, same shape and dtype (already validated): the gradient sums
            of AdaGrad dual averaging, whose ``states`` are the squared sums.
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
        if self.segs == NULL or self.lock == NULL:
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
            if s.state2 != NULL and s.size > 0:
                found.append((<Py_ssize_t>s.state2, <Py_ssize_t>(s.state2 + s.size * itemsize), i, True))
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

    cdef int _pack_adagrad(self, AdagradArgs* a, double lr, double lr_decay, double weight_decay,
                           double eps, bint eps_inside_sqrt, bint maximize) except -1:
        # The arguments of an AdaGrad step (dense or rows), checked before anything is read or written.
        if self.states is None:
            raise ValueError("AdaGrad needs accumulators (states)")
        a.clr = _adagrad_clr(lr, lr_decay, self.steps)
        a.weight_decay = weight_decay
        a.eps = eps
        a.has_weight_decay = weight_decay != 0.0
        a.eps_inside_sqrt = eps_inside_sqrt
        a.maximize = maximize
        return 0

    cdef int _pack_sgd(self, SgdArgs* a, double lr, double weight_decay, double momentum, double dampening,
                       bint nesterov, bint maximize) except -1:
        # The arguments of an SGD step (dense or rows), checked before anything is read or written.
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
            if (not _grad_fits(g, self.params[i], s.typenum)
                    or not _same_array(self.params[i], s.param, s.size, s.typenum)
                    or (self.states is not None
                        and not _same_array(self.states[i], s.state, s.state_size, s.typenum))
                    or (self.states2 is not None
                        and not _same_array(self.states2[i], s.state2, s.size, s.typenum))
                    or not _grad_alias_ok(<const char*>cnp.PyArray_DATA(<cnp.ndarray>g),
                                          cnp.PyArray_NBYTES(<cnp.ndarray>g), i, self.ranges, self.n_ranges)):
                self.explain(given)
                raise ValueError(f"grads[{i}] does not fit params[{i}]")
            s.grad = <const char*>cnp.PyArray_DATA(<cnp.ndarray>g)
        return 0

    def adagrad(self, grads, double lr, double lr_decay, double weight_decay, double eps,
                bint eps_inside_sqrt, bint maximize, int num_threads, bint skip_if_nonfinite=False):
        """Take one AdaGrad step with ``t = steps + 1``.

        The rule is on the rules page of the docs (docs/rules.rst). Returns False, having written nothing,
        when ``skip_if_nonfinite`` and a grad holds NaN or inf.
        """
        cdef AdagradArgs a
        self._acquire()
        try:
            self._pack_adagrad(&a, lr, lr_decay, weight_decay, eps, eps_inside_sqrt, maximize)
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
            bint nesterov, bint maximize, int num_threads, bint skip_if_nonfinite=False):
        """Take one SGD step; momentum starts as g at ``steps == 0``.

        The rule is on the rules page of the docs (docs/rules.rst). Returns False, having written nothing,
        when ``skip_if_nonfinite`` and a grad holds NaN or inf.
        """
        cdef SgdArgs a
        self._acquire()
        try:
            self._pack_sgd(&a, lr, weight_decay, momentum, dampening, nesterov, maximize)
            self._load_grads(grads)
            if skip_if_nonfinite and self._any_nonfinite(num_threads):
                return False
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
                    and not _same_array(self.states[index], s.state, s.state_size, s.typenum))
                or (self.states2 is not None
                    and not _same_array(self.states2[index], s.state2, s.size, s.typenum))):
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
        self._acquire()
        try:
            self._pack_adagrad(&a, lr, lr_decay, weight_decay, eps, eps_inside_sqrt, maximize)
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
            self._pack_sgd(&a, lr, weight_decay, momentum, dampening, nesterov, maximize)
            bad = self._rows_step(KERNEL_SGD, index, indices, rows, assume_unique, &a, num_threads)
            if bad == -1:
                self.steps += 1
            return bad
        finally:
            PyThread_release_lock(self.lock)

    cdef int _pack_proximal(self, ProximalArgs* a, double lr, double l1, double l2) except -1:
        # The arguments of a proximal AdaGrad step (dense or rows), checked before anything is written.
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
            bad = self._rows_step(KERNEL_PROXIMAL_ADAGRAD, index, indices, rows, assume_unique, &a,
                                  num_threads)
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
            bad = self._rows_step(KERNEL_ADAGRAD_DA, index, indices, rows, assume_unique, &a, num_threads)
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
