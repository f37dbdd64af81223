# The update rules, each formula once: AdaGrad (element-wise and row-wise), SGD with momentum, the lr
# decay of AdaGrad, proximal AdaGrad and AdaGrad dual averaging (at the end of the file); then the
# ceiling kernels and the non-finite scan. The rules page of the docs
# (docs/rules.rst) states them, and reference.py holds the same rules in NumPy, in the same operation
# order; nothing else in the package computes them.
#
# The loops use IEEE sqrt and division only and are built with -ffp-contract=off, so every variant gives
# the same bits as cadagrad.reference. Checked with `-fopt-info-vec-optimized -fopt-info-loop` (GCC 12,
# -O3 -fno-math-errno): each span loop below is unswitched on its loop-invariant flags (maximize, has_wd,
# eps_inside; SGD's momentum mode and nesterov are specialised by hand) and every resulting loop is
# vectorized (16-byte SSE2, 32-byte with -mavx2, 64-byte with -mavx512f), with a runtime alias check that
# falls back to the scalar loop when a grad *is* the param. The small inline helpers below (one per
# formula) are inlined into each loop before that happens: the same loops vectorize as when each loop
# spelled its formulas out.

from cython cimport floating
from libc.math cimport sqrt, sqrtf


cdef struct AdagradArgs:
    double clr
    double weight_decay
    double eps
    bint has_weight_decay
    bint eps_inside_sqrt
    bint maximize
    bint stochastic        # 16-bit params only: round p stochastically, with the step's key
    unsigned int sr_key


cdef struct SgdArgs:
    double lr
    double weight_decay
    double momentum
    double one_minus_dampening
    int momentum_mode      # MOMENTUM_NONE, MOMENTUM_FIRST or MOMENTUM_LATER
    bint has_weight_decay
    bint nesterov
    bint maximize
    bint stochastic        # as in AdagradArgs
    unsigned int sr_key


cdef enum:
    MOMENTUM_NONE = 0
    MOMENTUM_FIRST = 1     # first step: buf = g
    MOMENTUM_LATER = 2     # buf = momentum * buf + (1 - dampening) * g


cdef inline double _adagrad_clr(double lr, double lr_decay, Py_ssize_t steps) noexcept nogil:
    # AdaGrad's decayed learning rate at step t = steps + 1: lr / (1 + (t - 1) * lr_decay), in double
    # (each kernel casts it to the array's dtype once).
    return lr / (1.0 + <double>steps * lr_decay)


cdef inline int _momentum_mode(double momentum, Py_ssize_t steps) noexcept nogil:
    # Which momentum rule step t = steps + 1 takes: none, buf = g (t = 1), or the running average.
    if momentum == 0.0:
        return MOMENTUM_NONE
    if steps == 0:
        return MOMENTUM_FIRST
    return MOMENTUM_LATER


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _effective_grad(floating g, floating p, bint maximize, bint has_wd,
                                     floating wd) noexcept nogil:
    # What every rule steps along: the grad, negated to maximize, plus the coupled weight decay.
    if maximize:
        g = -g
    if has_wd:
        g = g + wd * p
    return g


cdef inline floating _adagrad_denominator(floating G, floating eps, bint inside) noexcept nogil:
    if inside:
        return _sqrt(G + eps)
    return _sqrt(G) + eps


cdef inline floating _adagrad_new_param(floating p, floating g, floating clr, floating d) noexcept nogil:
    return p - (clr * g) / d


cdef void _adagrad_span(floating* p, const floating* grad, floating* G, Py_ssize_t n,
                        const AdagradArgs* a) noexcept nogil:
    cdef floating clr = <floating>a.clr
    cdef floating wd = <floating>a.weight_decay
    cdef floating eps = <floating>a.eps
    cdef bint maximize = a.maximize, has_wd = a.has_weight_decay, inside = a.eps_inside_sqrt
    cdef floating g
    cdef Py_ssize_t i
    for i in range(n):
        g = _effective_grad(grad[i], p[i], maximize, has_wd, wd)
        G[i] = G[i] + g * g
        p[i] = _adagrad_new_param(p[i], g, clr, _adagrad_denominator(G[i], eps, inside))


cdef void _adagrad_rowwise_rows(floating* p, const floating* grad, floating* G, Py_ssize_t rows,
                                Py_ssize_t cols, const AdagradArgs* a) noexcept nogil:
    # Row-wise AdaGrad (FBGEMM's rule): G_row = G_row + mean(g * g) over the row, the sum taken left
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
            g = _effective_grad(grad[j], p[j], maximize, has_wd, wd)
            total = total + g * g
        G[r] = G[r] + total / width
        d = _adagrad_denominator(G[r], eps, inside)
        for j in range(cols):
            g = _effective_grad(grad[j], p[j], maximize, has_wd, wd)
            p[j] = _adagrad_new_param(p[j], g, clr, d)
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
        g = _effective_grad(grad[i], p[i], maximize, has_wd, wd)
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


cdef void _ceiling_rowwise_row(floating* p, const floating* grad, floating* G, Py_ssize_t n) noexcept nogil:
    # The ceiling of a row-wise AdaGrad row (sparse steps): its one accumulator read and written (grown
    # by the square of the row's first gradient element), the row as _ceiling_span without state.
    cdef Py_ssize_t i
    if n > 0:
        G[0] = G[0] + grad[0] * grad[0]
    for i in range(n):
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


# Proximal AdaGrad and AdaGrad dual averaging (TensorFlow's ApplyProximalAdagrad and ApplyAdagradDA),
# in the operation order of the rules page, sections "Proximal AdaGrad" and "AdaGrad dual averaging".
# Checked with `-fopt-info-vec-optimized` on the avx2 build (GCC 12, -O3 -fno-math-errno
# -ffp-contract=off -mavx2): every specialisation of both span loops vectorizes (32-byte vectors) in
# both dtypes: proximal AdaGrad's four (l1 and l2 each on or off, specialised by hand as SGD's flags) and
# dual averaging's two; _sign and _positive_part become compares and blends, and objdump of that build
# shows vsqrtps/vdivps (vsqrtpd/vdivpd) and no vrsqrtps or vrcpps.

from libc.math cimport fabs, fabsf


cdef struct ProximalArgs:
    double lr
    double l1
    double l2
    bint has_l1            # l1 > 0, decided on the double value
    bint has_l2            # l2 > 0: without it the division by 1 + lrt * l2 is skipped (the rules page)


cdef struct DualAveragingArgs:
    double lr
    double l1T             # l1 * T, in double (each kernel casts it once)
    double l2Tlr           # (l2 * T) * lr, in double
    bint has_l1


cdef inline floating _abs(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating _sign(floating x) noexcept nogil:
    # np.sign: 1, -1, +0.0 for either zero, x itself for NaN. Three independent selects: written as one
    # nested conditional, GCC left the dual-averaging loop with l1 unvectorized (control flow in loop).
    cdef floating r = 0
    if x > 0:
        r = 1
    if x < 0:
        r = -1
    if x != x:
        r = x
    return r


cdef inline floating _positive_part(floating x) noexcept nogil:
    # np.maximum(x, 0): +0.0 for x <= 0, x itself otherwise (NaN included).
    return 0 if x <= 0 else x


cdef inline void _proximal_adagrad_span_as(floating* p, const floating* grad, floating* G, Py_ssize_t n,
                                           const ProximalArgs* a, bint has_l1, bint has_l2) noexcept nogil:
    # Called only with literal flags (see _proximal_adagrad_span): one loop per case.
    cdef floating lr = <floating>a.lr
    cdef floating l1 = <floating>a.l1
    cdef floating l2 = <floating>a.l2
    cdef floating one = 1
    cdef floating g, acc, lrt, v
    cdef Py_ssize_t i
    for i in range(n):
        g = grad[i]
        acc = G[i] + g * g
        G[i] = acc
        lrt = lr / _sqrt(acc)
        v = p[i] - lrt * g
        if has_l1:
            v = _sign(v) * _positive_part(_abs(v) - lrt * l1)
        if has_l2:
            v = v / (one + lrt * l2)
        p[i] = v


cdef void _proximal_adagrad_span(floating* p, const floating* grad, floating* G, Py_ssize_t n,
                                 const ProximalArgs* a) noexcept nogil:
    if a.has_l1:
        if a.has_l2:
            _proximal_adagrad_span_as(p, grad, G, n, a, True, True)
        else:
            _proximal_adagrad_span_as(p, grad, G, n, a, True, False)
    elif a.has_l2:
        _proximal_adagrad_span_as(p, grad, G, n, a, False, True)
    else:
        _proximal_adagrad_span_as(p, grad, G, n, a, False, False)


cdef inline void _adagrad_da_span_as(floating* p, const floating* grad, floating* S, floating* G,
                                     Py_ssize_t n, const DualAveragingArgs* a, bint has_l1) noexcept nogil:
    # p is written, never read: the iterate is recomputed from the sums S and G.
    cdef floating lr = <floating>a.lr
    cdef floating neg_lr = -lr
    cdef floating l1T = <floating>a.l1T
    cdef floating l2Tlr = <floating>a.l2Tlr
    cdef floating g, s, acc, d
    cdef Py_ssize_t i
    for i in range(n):
        g = grad[i]
        s = S[i] + g
        S[i] = s
        acc = G[i] + g * g
        G[i] = acc
        d = l2Tlr + _sqrt(acc)
        if has_l1:
            p[i] = -_sign(s) * lr * _positive_part(_abs(s) - l1T) / d
        else:
            p[i] = neg_lr * s / d


cdef void _adagrad_da_span(floating* p, const floating* grad, floating* S, floating* G, Py_ssize_t n,
                           const DualAveragingArgs* a) noexcept nogil:
    if a.has_l1:
        _adagrad_da_span_as(p, grad, S, G, n, a, True)
    else:
        _adagrad_da_span_as(p, grad, S, G, n, a, False)


cdef enum:
    # A step writes a param it does not read (AdaGrad dual averaging) with non-temporal stores from this
    # size on, in blocks computed into a stack buffer: measured on a 2^24 float32 step, ~1.6x an AdaGrad
    # step's time with cached stores (each store reads its line first), ~1.3x streamed. Below it the
    # param may still be in cache for the next reader, and plain stores keep it there.
    STREAM_BYTES = 1 << 24
    STREAM_BLOCK = 1024          # elements per block (4 or 8 KiB of stack, in L1)


cdef inline void _stream(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    if floating is float:
        cg_stream_f32(dst, src, n)
    else:
        cg_stream_f64(dst, src, n)


cdef void _adagrad_da_span_streamed(floating* p, const floating* grad, floating* S, floating* G,
                                    Py_ssize_t n, const DualAveragingArgs* a) noexcept nogil:
    # _adagrad_da_span, block by block into an L1 buffer that is then streamed to p: the same bits. A
    # grad that is its param is read, a block at a time, before that block of p is written.
    cdef floating block[STREAM_BLOCK]
    cdef Py_ssize_t lo = 0, m
    while lo < n:
        m = min(<Py_ssize_t>STREAM_BLOCK, n - lo)
        _adagrad_da_span(block, grad + lo, S + lo, G + lo, m, a)
        _stream(p + lo, block, m)
        lo += m


cdef void _ceiling_two_states_span(floating* p, const floating* grad, floating* S, floating* G,
                                   Py_ssize_t n) noexcept nogil:
    # The ceiling of AdaGrad dual averaging's traffic: read grad, S and G; write S, G and p (p not read).
    cdef Py_ssize_t i
    cdef floating g, s
    for i in range(n):
        g = grad[i]
        s = S[i] + g
        S[i] = s
        G[i] = G[i] + g * g
        p[i] = s


cdef void _ceiling_two_states_streamed(floating* p, const floating* grad, floating* S, floating* G,
                                       Py_ssize_t n) noexcept nogil:
    # The ceiling of a streamed dual-averaging step (see _adagrad_da_span_streamed).
    cdef floating block[STREAM_BLOCK]
    cdef Py_ssize_t lo = 0, m
    while lo < n:
        m = min(<Py_ssize_t>STREAM_BLOCK, n - lo)
        _ceiling_two_states_span(block, grad + lo, S + lo, G + lo, m)
        _stream(p + lo, block, m)
        lo += m
