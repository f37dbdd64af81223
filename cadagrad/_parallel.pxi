# The segment table (every tensor of a step as raw pointers, laid end to end), the one parallel walk
# over it, and how many threads a step gets and where each thread's share starts.

from cython.parallel cimport prange


cdef enum:
    # Below this many elements per thread, starting a thread costs more than it saves.
    GRAIN = 32768

PARALLEL_GRAIN = GRAIN


cdef struct Segment:
    # One tensor of a step: its buffers as raw pointers and its place in the flattened element range.
    char* param
    char* state            # AdaGrad: the accumulator G; SGD: the momentum buffer (NULL without momentum)
    char* state2           # AdaGrad dual averaging: the gradient sum S; else NULL
    const char* grad       # refreshed at every step
    Py_ssize_t size
    Py_ssize_t start       # index of its first element in the concatenation of all segments
    Py_ssize_t cols        # row-wise AdaGrad: elements per row (one accumulator per row); else 0
    Py_ssize_t state_size  # elements of the state: size, or size // cols when row-wise
    int typenum            # NumPy's type number of the param (and of its grads, but see grad_f32)
    int state_typenum      # of its state: the param's, or float32 for a 16-bit param
    int kind               # KIND_FLOAT32, KIND_FLOAT64, KIND_FLOAT16 or KIND_BFLOAT16
    bint is_double
    bint grad_f32          # a 16-bit param's grad of this step is float32 (refreshed at every step)
    bint state_16          # a 16-bit param's state is in its own format (else float32)


cdef enum:
    KERNEL_ADAGRAD = 0
    KERNEL_SGD = 1
    KERNEL_CEILING = 2
    KERNEL_CHECK_FINITE = 3     # reads the grads only; the range reports whether one is not finite
    KERNEL_PROXIMAL_ADAGRAD = 4
    KERNEL_ADAGRAD_DA = 5       # state: G, state2: S


cdef inline void _proximal_span_at(int kernel, Segment* s, Py_ssize_t lo, Py_ssize_t n, const floating* grad,
                                   const void* args, bint dense) noexcept nogil:
    # Elements [lo, lo + n) of a segment, stepped along grad: the proximal kernels, for the dense walk
    # (grad = the segment's grad + lo) and the row walk (grad = a row's summed gradient). A dense step
    # streams the params of a large dual-averaging segment (see STREAM_BYTES).
    cdef floating* param = <floating*>s.param + lo
    cdef bint stream = dense and s.size * <Py_ssize_t>sizeof(floating) >= STREAM_BYTES
    if kernel == KERNEL_PROXIMAL_ADAGRAD:
        _proximal_adagrad_span(param, grad, <floating*>s.state + lo, n, <const ProximalArgs*>args)
    elif kernel == KERNEL_ADAGRAD_DA:
        if stream:
            _adagrad_da_span_streamed(param, grad, <floating*>s.state2 + lo, <floating*>s.state + lo, n,
                                      <const DualAveragingArgs*>args)
        else:
            _adagrad_da_span(param, grad, <floating*>s.state2 + lo, <floating*>s.state + lo, n,
                             <const DualAveragingArgs*>args)
    elif stream:    # KERNEL_CEILING of a segment with two states
        _ceiling_two_states_streamed(param, grad, <floating*>s.state2 + lo, <floating*>s.state + lo, n)
    else:
        _ceiling_two_states_span(param, grad, <floating*>s.state2 + lo, <floating*>s.state + lo, n)


cdef inline void _step_span_16(int kernel, const Segment* s, half_param* param, const half_grad* grad,
                               Py_ssize_t lo, Py_ssize_t n, const void* args) noexcept nogil:
    # Elements [lo, lo + n) of a 16-bit segment, for the dense walk and the row walk alike: param is the
    # segment's first element, grad the gradient of element lo (a dense grad + lo, or a row's gradient).
    # A row-wise segment is given whole rows (lo a multiple of cols). The state is float32 or (state_16)
    # in the param's format; lo is also the first element's index for stochastic rounding.
    cdef Py_ssize_t at = lo // s.cols if s.cols > 0 else lo          # the state of element lo
    cdef float* state = <float*>s.state + at if s.state != NULL and not s.state_16 else NULL
    cdef half_param* state16 = <half_param*>s.state + at if s.state != NULL and s.state_16 else NULL
    if kernel == KERNEL_ADAGRAD and s.cols > 0:
        _adagrad_rowwise_rows_16(param + lo, grad, state, state16, n // s.cols, s.cols, <const AdagradArgs*>args,
                                 at)
    elif kernel == KERNEL_ADAGRAD:
        _adagrad_span_16(param + lo, grad, state, state16, n, <const AdagradArgs*>args, lo)
    elif kernel == KERNEL_SGD:
        _sgd_span_16(param + lo, grad, state, state16, n, <const SgdArgs*>args, lo)
    elif s.cols > 0:                    # KERNEL_CEILING: the per-row state is a negligible part of the traffic
        _ceiling_span_16(param + lo, grad, <float*>NULL, n)
    elif state16 != NULL:               # KERNEL_CEILING
        _ceiling_span_16_state16(param + lo, grad, state16, n)
    else:                               # KERNEL_CEILING, state or none
        _ceiling_span_16(param + lo, grad, state, n)


cdef inline bint _run_segment_16_typed(int kernel, Segment* s, Py_ssize_t lo, Py_ssize_t n, half_param* param,
                                       const half_grad* grad, const void* args) noexcept nogil:
    # _run_segment for a 16-bit param in one format, with a grad in that format or float32. The engine
    # never gives the proximal kernels a 16-bit segment.
    cdef Py_ssize_t row, last_row
    if kernel == KERNEL_CHECK_FINITE:
        if half_grad is float:
            return _has_nonfinite_span(grad + lo, n)
        else:
            return _has_nonfinite_span_16(grad + lo, n)
    if s.cols > 0 and kernel == KERNEL_ADAGRAD:
        # Row-wise segment: the rows whose first element lies in [lo, lo + n) belong to this range.
        row = (lo + s.cols - 1) // s.cols
        last_row = (lo + n + s.cols - 1) // s.cols
        if last_row > row:
            _step_span_16(kernel, s, param, grad + row * s.cols, row * s.cols, (last_row - row) * s.cols, args)
    else:
        _step_span_16(kernel, s, param, grad + lo, lo, n, args)
    return False


cdef inline bint _run_segment_16(int kernel, Segment* s, Py_ssize_t lo, Py_ssize_t n,
                                 const void* args) noexcept nogil:
    if s.kind == KIND_FLOAT16:
        if s.grad_f32:
            return _run_segment_16_typed(kernel, s, lo, n, <cg_f16*>s.param, <const float*>s.grad, args)
        return _run_segment_16_typed(kernel, s, lo, n, <cg_f16*>s.param, <const cg_f16*>s.grad, args)
    if s.grad_f32:
        return _run_segment_16_typed(kernel, s, lo, n, <cg_bf16*>s.param, <const float*>s.grad, args)
    return _run_segment_16_typed(kernel, s, lo, n, <cg_bf16*>s.param, <const cg_bf16*>s.grad, args)


cdef inline bint _run_segment(int kernel, Segment* s, Py_ssize_t lo, Py_ssize_t n,
                              const void* args) noexcept nogil:
    if s.kind >= KIND_FLOAT16:
        return _run_segment_16(kernel, s, lo, n, args)
    if kernel == KERNEL_CHECK_FINITE:
        if s.is_double:
            return _has_nonfinite_span(<const double*>s.grad + lo, n)
        return _has_nonfinite_span(<const float*>s.grad + lo, n)
    if kernel == KERNEL_PROXIMAL_ADAGRAD or kernel == KERNEL_ADAGRAD_DA or (
            kernel == KERNEL_CEILING and s.state2 != NULL):
        if s.is_double:
            _proximal_span_at(kernel, s, lo, n, <const double*>s.grad + lo, args, True)
        else:
            _proximal_span_at(kernel, s, lo, n, <const float*>s.grad + lo, args, True)
        return False
    cdef Py_ssize_t row, last_row
    if s.cols > 0:
        # Row-wise segment: the rows whose first element lies in [lo, lo + n) belong to this range.
        row = (lo + s.cols - 1) // s.cols
        last_row = (lo + n + s.cols - 1) // s.cols
        if kernel == KERNEL_ADAGRAD and last_row > row:
            if s.is_double:
                _adagrad_rowwise_rows(<double*>s.param + row * s.cols, <const double*>s.grad + row * s.cols,
                                      <double*>s.state + row, last_row - row, s.cols,
                                      <const AdagradArgs*>args)
            else:
                _adagrad_rowwise_rows(<float*>s.param + row * s.cols, <const float*>s.grad + row * s.cols,
                                      <float*>s.state + row, last_row - row, s.cols,
                                      <const AdagradArgs*>args)
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
