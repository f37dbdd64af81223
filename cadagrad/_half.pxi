# 16-bit params (the rules page, "16-bit params"): float16 or bfloat16 params with float32 state. Each
# element is widened to float32 (p, and the grad unless it is float32 already), stepped by the float32
# formulas above (the same inline helpers, so the same operation order), and rounded back once to
# nearest even by the helpers of _platform.pxi (integer code, or F16C for float16 where built with it). The params are read and written as 16-bit
# values in place: no float32 copy of them exists.
#
# The two 16-bit formats are two struct types (one 16-bit field each) in a fused type, so each loop is
# compiled for one format: a runtime format test left in a loop kept the conversions' float operations
# behind a branch, which GCC does not if-convert (they may trap), and the loop scalar.

cdef struct cg_f16:
    unsigned short bits

cdef struct cg_bf16:
    unsigned short bits

ctypedef fused half_param:
    cg_f16
    cg_bf16

ctypedef fused half_grad:
    # A 16-bit param's grad: in the param's format or float32 (a pairing of two different 16-bit
    # formats is compiled too, and never called).
    cg_f16
    cg_bf16
    float


cdef enum:
    # What a param holds; the engine keeps one per param (bfloat16 has no fixed NumPy type number).
    KIND_FLOAT32 = 0
    KIND_FLOAT64 = 1
    KIND_FLOAT16 = 2
    KIND_BFLOAT16 = 3


cdef inline float _widen(const half_param* p, Py_ssize_t i) noexcept nogil:
    if half_param is cg_f16:
        return cg_f16_to_f32(p[i].bits)
    else:
        return cg_bf16_to_f32(p[i].bits)


cdef inline void _store_rounded(half_param* p, Py_ssize_t i, float x) noexcept nogil:
    if half_param is cg_f16:
        p[i].bits = cg_f32_to_f16(x)
    else:
        p[i].bits = cg_f32_to_bf16(x)


cdef inline float _grad32(const half_grad* grad, Py_ssize_t i) noexcept nogil:
    if half_grad is float:
        return grad[i]
    elif half_grad is cg_f16:
        return cg_f16_to_f32(grad[i].bits)
    else:
        return cg_bf16_to_f32(grad[i].bits)


cdef enum:
    # Elements per block of a dense 16-bit step: the block's params and grads widened into two float32
    # stack buffers, stepped by the float32 span, rounded back. Small, so that the next block's widening
    # and the previous block's rounding sit in the core's out-of-order window beside this block's
    # divisions and square roots (the step's bottleneck once the traffic is 16-bit): measured at 2^24,
    # 1 thread, avx512 variant, interleaved, against a float32 step: bfloat16 1.06x with 512, 0.88x
    # with 128, 0.86x with 64, 1.38x with 32 (the span's per-call cost and vector epilogue take over).
    # Again with the rule inlined in the block loop (_adagrad_span_16_as): 64 and 128 within noise of
    # each other in avx512 (0.71-0.81x), float16 in avx2 slower with 128 (0.98-1.01x against
    # 0.88-0.89x with 64), 32 at 1.05-1.27x.
    HALF_BLOCK = 64
    # Columns up to which a row-wise row is widened whole into stack buffers (_adagrad_rowwise_rows_16).
    HALF_ROW_BLOCK = 512
    # Elements per block of an SGD step without momentum (_sgd_span_16_as).
    HALF_SGD_BLOCK = 256


cdef inline void _widen_params(float* out, const half_param* p, Py_ssize_t n) noexcept nogil:
    # No loop here: the C block helpers of _platform.pxi, written with intrinsics in the avx2 and avx512
    # variants (F16C for float16; bfloat16's shift as vpmovzxwd + vpslld, 16 values per zmm in avx512,
    # where GCC's own vectorization stayed at ymm without AVX512BW) and vectorized by GCC in generic.
    if half_param is cg_f16:
        cg_widen_f16_n(out, <const unsigned short*>p, n)
    else:
        cg_widen_bf16_n(out, <const unsigned short*>p, n)


cdef inline const float* _widened_grads(float* out, const half_grad* grad, Py_ssize_t n) noexcept nogil:
    # The block's grads as float32: a float32 grad as it is, a 16-bit one widened into out (as
    # _widen_params, whose vectorization notes hold here).
    if half_grad is float:
        return grad
    elif half_grad is cg_f16:
        cg_widen_f16_n(out, <const unsigned short*>grad, n)
        return out
    else:
        cg_widen_bf16_n(out, <const unsigned short*>grad, n)
        return out


cdef inline void _store_params(half_param* p, const float* wide, Py_ssize_t n) noexcept nogil:
    # No loop here: the C block helpers (F16C vcvtps2ph for float16; for bfloat16 one blend and one
    # narrowing per 16 values, where GCC's vectorization of cg_f32_to_bf16 took ~45 instructions).
    if half_param is cg_f16:
        cg_round_f16_n(<unsigned short*>p, wide, n)
    else:
        cg_round_bf16_n(<unsigned short*>p, wide, n)


cdef inline void _adagrad_span_16_as(half_param* p, const half_grad* grad, float* G, Py_ssize_t n,
                                     const AdagradArgs* a, bint maximize, bint has_wd,
                                     bint inside) noexcept nogil:
    # Called only with literal flags (see _adagrad_span_16). Block by block: widen, the float32 rule
    # (_adagrad_span's loop, the same helpers in the same order, so the same bits), round back.
    # Checked (GCC 12, -fopt-info-vec-optimized, avx2 and avx512 builds): in all 8 flag cases the inner
    # loop vectorizes (32-byte vectors in avx2, 64-byte in avx512, each with a half-width epilogue),
    # with no runtime alias check for a 16-bit grad (p and grad are then this function's stack buffers;
    # a float32 grad is read in place, behind one alias check per block); the outer loop is not, and
    # need not be, vectorized; the conversions are the intrinsics of _platform.pxi. Calling
    # _adagrad_span itself per 64-element block paid its flag dispatch and alias checks per block:
    # bfloat16 at 2^24, avx512, 0.86x a float32 step that way, 0.81x this way (interleaved medians). A single fused loop (widen, rule,
    # round per element, the format a fused type) did vectorize but its conversions stayed in ymm with
    # per-operand narrowing, and a bfloat16 step ran at 2.2x to 5x the time of 512-element blocks at
    # 2^24 (avx2 and avx512 builds), so it was dropped. A grad that is its param is widened, a block at
    # a time, before that block of p is written.
    cdef float wide_p[HALF_BLOCK]
    cdef float wide_g[HALF_BLOCK]
    cdef const float* g32
    cdef float clr = <float>a.clr
    cdef float wd = <float>a.weight_decay
    cdef float eps = <float>a.eps
    cdef float g
    cdef float* S
    cdef Py_ssize_t lo = 0, m, i
    while lo < n:
        m = min(<Py_ssize_t>HALF_BLOCK, n - lo)
        _widen_params(wide_p, p + lo, m)
        g32 = _widened_grads(wide_g, grad + lo, m)
        S = G + lo
        for i in range(m):
            g = _effective_grad(g32[i], wide_p[i], maximize, has_wd, wd)
            S[i] = S[i] + g * g
            wide_p[i] = _adagrad_new_param(wide_p[i], g, clr, _adagrad_denominator(S[i], eps, inside))
        _store_params(p + lo, wide_p, m)
        lo += m


cdef void _adagrad_span_16(half_param* p, const half_grad* grad, float* G, Py_ssize_t n,
                           const AdagradArgs* a) noexcept nogil:
    if a.maximize:
        if a.has_weight_decay:
            if a.eps_inside_sqrt:
                _adagrad_span_16_as(p, grad, G, n, a, True, True, True)
            else:
                _adagrad_span_16_as(p, grad, G, n, a, True, True, False)
        elif a.eps_inside_sqrt:
            _adagrad_span_16_as(p, grad, G, n, a, True, False, True)
        else:
            _adagrad_span_16_as(p, grad, G, n, a, True, False, False)
    elif a.has_weight_decay:
        if a.eps_inside_sqrt:
            _adagrad_span_16_as(p, grad, G, n, a, False, True, True)
        else:
            _adagrad_span_16_as(p, grad, G, n, a, False, True, False)
    elif a.eps_inside_sqrt:
        _adagrad_span_16_as(p, grad, G, n, a, False, False, True)
    else:
        _adagrad_span_16_as(p, grad, G, n, a, False, False, False)


cdef void _adagrad_rowwise_rows_16(half_param* p, const half_grad* grad, float* G, Py_ssize_t rows,
                                   Py_ssize_t cols, const AdagradArgs* a) noexcept nogil:
    # _adagrad_rowwise_rows on widened values: the row's mean of g * g (left to right), then one d. A
    # row of at most HALF_ROW_BLOCK columns is widened once into the block buffers (the vectorized helpers
    # of _widen_params and _store_params) and stepped by _adagrad_rowwise_rows itself, whose second loop
    # vectorizes (its first is a left-to-right float sum, which stays scalar without reassociation);
    # a wider row widens each element twice, in the scalar loops below.
    cdef float wide_p[HALF_ROW_BLOCK]
    cdef float wide_g[HALF_ROW_BLOCK]
    cdef float clr = <float>a.clr
    cdef float wd = <float>a.weight_decay
    cdef float eps = <float>a.eps
    cdef float width = <float>cols
    cdef bint maximize = a.maximize, has_wd = a.has_weight_decay, inside = a.eps_inside_sqrt
    cdef float g, d, total, w
    cdef Py_ssize_t r, j
    for r in range(rows):
        if cols <= HALF_ROW_BLOCK:
            _widen_params(wide_p, p, cols)
            _adagrad_rowwise_rows(wide_p, _widened_grads(wide_g, grad, cols), G + r, 1, cols, a)
            _store_params(p, wide_p, cols)
        else:
            total = 0
            for j in range(cols):
                g = _effective_grad(_grad32(grad, j), _widen(p, j), maximize, has_wd, wd)
                total = total + g * g
            G[r] = G[r] + total / width
            d = _adagrad_denominator(G[r], eps, inside)
            for j in range(cols):
                w = _widen(p, j)
                g = _effective_grad(_grad32(grad, j), w, maximize, has_wd, wd)
                _store_rounded(p, j, _adagrad_new_param(w, g, clr, d))
        p += cols
        grad += cols


cdef inline void _sgd_span_16_as(half_param* p, const half_grad* grad, float* buf, Py_ssize_t n,
                                 const SgdArgs* a, int mode, bint nesterov) noexcept nogil:
    # Called only with literal mode and nesterov (see _sgd_span_16): as _adagrad_span_16_as, blocks with
    # _sgd_span_as (the float32 rule's own inline loop) inlined in the block loop, where it meets the
    # stack buffers. Checked with -fopt-info-vec-optimized (GCC 12, avx2 and avx512 builds): every
    # inner loop vectorizes (32-byte vectors in avx2, 64-byte in avx512). Without momentum (no state
    # stream, no division) longer blocks pay less per block: at 2^24, avx512, a bfloat16 step took
    # 0.79-0.84x a float32 one with 64-element blocks and 0.57x with 256; with momentum 64 did better
    # (0.76x against 0.93x), as for AdaGrad.
    cdef float wide_p[HALF_SGD_BLOCK]
    cdef float wide_g[HALF_SGD_BLOCK]
    cdef Py_ssize_t block = HALF_SGD_BLOCK if mode == MOMENTUM_NONE else HALF_BLOCK
    cdef Py_ssize_t lo = 0, m
    while lo < n:
        m = min(block, n - lo)
        _widen_params(wide_p, p + lo, m)
        _sgd_span_as(wide_p, _widened_grads(wide_g, grad + lo, m), buf + lo if buf != NULL else NULL, m, a,
                     mode, nesterov)
        _store_params(p + lo, wide_p, m)
        lo += m


cdef void _sgd_span_16(half_param* p, const half_grad* grad, float* buf, Py_ssize_t n,
                       const SgdArgs* a) noexcept nogil:
    # As _sgd_span: one block loop per momentum mode and nesterov (buf is NULL without momentum).
    if a.momentum_mode == MOMENTUM_NONE:
        _sgd_span_16_as(p, grad, buf, n, a, MOMENTUM_NONE, False)
    elif a.momentum_mode == MOMENTUM_FIRST:
        if a.nesterov:
            _sgd_span_16_as(p, grad, buf, n, a, MOMENTUM_FIRST, True)
        else:
            _sgd_span_16_as(p, grad, buf, n, a, MOMENTUM_FIRST, False)
    elif a.nesterov:
        _sgd_span_16_as(p, grad, buf, n, a, MOMENTUM_LATER, True)
    else:
        _sgd_span_16_as(p, grad, buf, n, a, MOMENTUM_LATER, False)


cdef void _ceiling_span_16(half_param* p, const half_grad* grad, float* state, Py_ssize_t n) noexcept nogil:
    # The ceiling of a 16-bit step: its traffic (read p, grad and the float32 state; write p and the
    # state) with the widening and rounding a real step pays, and an addition or two per store: the
    # step's blocks (_widen_params, _widened_grads, _store_params), with _ceiling_span on the widened
    # block. Before this used the blocks, its float16 loop with state stayed scalar (GCC 12: "no vectype"
    # for the widened load) and ran at 10x a float32 step. The blocks are those of the step it stands
    # beside: HALF_BLOCK with state, HALF_SGD_BLOCK without (SGD without momentum).
    cdef float wide_p[HALF_SGD_BLOCK]
    cdef float wide_g[HALF_SGD_BLOCK]
    cdef Py_ssize_t block = HALF_SGD_BLOCK if state == NULL else HALF_BLOCK
    cdef Py_ssize_t lo = 0, m
    while lo < n:
        m = min(block, n - lo)
        _widen_params(wide_p, p + lo, m)
        _ceiling_span(wide_p, _widened_grads(wide_g, grad + lo, m), state + lo if state != NULL else NULL, m)
        _store_params(p + lo, wide_p, m)
        lo += m


cdef bint _has_nonfinite_span_16(const half_param* grad, Py_ssize_t n) noexcept nogil:
    # As _has_nonfinite_span: all exponent bits set (0x7c00 in float16, 0x7f80 in bfloat16).
    cdef unsigned short mask = 0x7c00 if half_param is cg_f16 else 0x7f80
    cdef unsigned short top = 0
    cdef Py_ssize_t i
    for i in range(n):
        top = max(top, grad[i].bits & mask)
    return top == mask
