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


cdef inline void _adagrad_span_16_as(half_param* p, const half_grad* grad, float* G, half_param* G16,
                                     Py_ssize_t n, const AdagradArgs* a, Py_ssize_t first, bint maximize,
                                     bint has_wd, bint inside) noexcept nogil:
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
    # The optional modes change only what happens around the inner loop: a 16-bit accumulator (G16 not
    # NULL) is widened into a third buffer and rounded back to nearest, and with stochastic rounding p
    # is rounded by _store_params_as (p[0] is element `first` of its param).
    cdef float wide_p[HALF_BLOCK]
    cdef float wide_g[HALF_BLOCK]
    cdef float wide_G[HALF_BLOCK]
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
        if G16 != NULL:
            _widen_params(wide_G, G16 + lo, m)
            S = wide_G
        else:
            S = G + lo
        for i in range(m):
            g = _effective_grad(g32[i], wide_p[i], maximize, has_wd, wd)
            S[i] = S[i] + g * g
            wide_p[i] = _adagrad_new_param(wide_p[i], g, clr, _adagrad_denominator(S[i], eps, inside))
        _store_params_as(p + lo, wide_p, m, a.stochastic, a.sr_key, first + lo)
        if G16 != NULL:
            _store_params(G16 + lo, wide_G, m)
        lo += m


cdef void _adagrad_span_16(half_param* p, const half_grad* grad, float* G, half_param* G16, Py_ssize_t n,
                           const AdagradArgs* a, Py_ssize_t first) noexcept nogil:
    # A float32 accumulator G, or (G16 not NULL) one in the param's format; p[0] is element `first`.
    if a.maximize:
        if a.has_weight_decay:
            if a.eps_inside_sqrt:
                _adagrad_span_16_as(p, grad, G, G16, n, a, first, True, True, True)
            else:
                _adagrad_span_16_as(p, grad, G, G16, n, a, first, True, True, False)
        elif a.eps_inside_sqrt:
            _adagrad_span_16_as(p, grad, G, G16, n, a, first, True, False, True)
        else:
            _adagrad_span_16_as(p, grad, G, G16, n, a, first, True, False, False)
    elif a.has_weight_decay:
        if a.eps_inside_sqrt:
            _adagrad_span_16_as(p, grad, G, G16, n, a, first, False, True, True)
        else:
            _adagrad_span_16_as(p, grad, G, G16, n, a, first, False, True, False)
    elif a.eps_inside_sqrt:
        _adagrad_span_16_as(p, grad, G, G16, n, a, first, False, False, True)
    else:
        _adagrad_span_16_as(p, grad, G, G16, n, a, first, False, False, False)


cdef void _adagrad_rowwise_rows_16(half_param* p, const half_grad* grad, float* G, half_param* G16,
                                   Py_ssize_t rows, Py_ssize_t cols, const AdagradArgs* a,
                                   Py_ssize_t first_row) noexcept nogil:
    # _adagrad_rowwise_rows on widened values: the row's mean of g * g (left to right), then one d. A
    # row of at most HALF_ROW_BLOCK columns is widened once into the block buffers (the vectorized helpers
    # of _widen_params and _store_params) and stepped by _adagrad_rowwise_rows itself, whose second loop
    # vectorizes (its first is a left-to-right float sum, which stays scalar without reassociation);
    # a wider row widens each element twice, in the scalar loops below. The accumulator is float32 G, or
    # (G16 not NULL) one in the param's format, widened and rounded back to nearest; with stochastic
    # rounding p's first row is row `first_row` of its param.
    cdef float wide_p[HALF_ROW_BLOCK]
    cdef float wide_g[HALF_ROW_BLOCK]
    cdef float clr = <float>a.clr
    cdef float wd = <float>a.weight_decay
    cdef float eps = <float>a.eps
    cdef float width = <float>cols
    cdef bint maximize = a.maximize, has_wd = a.has_weight_decay, inside = a.eps_inside_sqrt
    cdef float g, d, total, w, sums
    cdef Py_ssize_t r, j, row
    for r in range(rows):
        row = (first_row + r) * cols                   # the index of the row's first element
        sums = _widen(G16, r) if G16 != NULL else G[r]
        if cols <= HALF_ROW_BLOCK:
            _widen_params(wide_p, p, cols)
            _adagrad_rowwise_rows(wide_p, _widened_grads(wide_g, grad, cols), &sums, 1, cols, a)
            _store_params_as(p, wide_p, cols, a.stochastic, a.sr_key, row)
        else:
            total = 0
            for j in range(cols):
                g = _effective_grad(_grad32(grad, j), _widen(p, j), maximize, has_wd, wd)
                total = total + g * g
            sums = sums + total / width
            d = _adagrad_denominator(sums, eps, inside)
            for j in range(cols):
                w = _widen(p, j)
                g = _effective_grad(_grad32(grad, j), w, maximize, has_wd, wd)
                _store_rounded_as(p, j, _adagrad_new_param(w, g, clr, d), a.stochastic, a.sr_key, row + j)
        if G16 != NULL:
            _store_rounded(G16, r, sums)
        else:
            G[r] = sums
        p += cols
        grad += cols


cdef inline void _sgd_span_16_as(half_param* p, const half_grad* grad, float* buf, half_param* buf16,
                                 Py_ssize_t n, const SgdArgs* a, Py_ssize_t first, int mode,
                                 bint nesterov) noexcept nogil:
    # Called only with literal mode and nesterov (see _sgd_span_16): as _adagrad_span_16_as, blocks with
    # _sgd_span_as (the float32 rule's own inline loop) inlined in the block loop, where it meets the
    # stack buffers. Checked with -fopt-info-vec-optimized (GCC 12, avx2 and avx512 builds): every
    # inner loop vectorizes (32-byte vectors in avx2, 64-byte in avx512). Without momentum (no state
    # stream, no division) longer blocks pay less per block: at 2^24, avx512, a bfloat16 step took
    # 0.79-0.84x a float32 one with 64-element blocks and 0.57x with 256; with momentum 64 did better
    # (0.76x against 0.93x), as for AdaGrad. The optional modes as in _adagrad_span_16_as: a 16-bit
    # momentum buffer (buf16 not NULL) widened into a third buffer and rounded back to nearest, and p
    # rounded by _store_params_as (p[0] is element `first` of its param).
    cdef float wide_p[HALF_SGD_BLOCK]
    cdef float wide_g[HALF_SGD_BLOCK]
    cdef float wide_buf[HALF_BLOCK]
    cdef float* momentum
    cdef Py_ssize_t block = HALF_SGD_BLOCK if mode == MOMENTUM_NONE else HALF_BLOCK
    cdef Py_ssize_t lo = 0, m
    while lo < n:
        m = min(block, n - lo)
        _widen_params(wide_p, p + lo, m)
        momentum = NULL
        if mode != MOMENTUM_NONE:
            if buf16 != NULL:
                _widen_params(wide_buf, buf16 + lo, m)
                momentum = wide_buf
            else:
                momentum = buf + lo
        _sgd_span_as(wide_p, _widened_grads(wide_g, grad + lo, m), momentum, m, a, mode, nesterov)
        _store_params_as(p + lo, wide_p, m, a.stochastic, a.sr_key, first + lo)
        if buf16 != NULL and mode != MOMENTUM_NONE:
            _store_params(buf16 + lo, wide_buf, m)
        lo += m


cdef void _sgd_span_16(half_param* p, const half_grad* grad, float* buf, half_param* buf16, Py_ssize_t n,
                       const SgdArgs* a, Py_ssize_t first) noexcept nogil:
    # As _sgd_span: one block loop per momentum mode and nesterov (buf and buf16 are NULL without
    # momentum; buf16 holds a momentum buffer in the param's format).
    if a.momentum_mode == MOMENTUM_NONE:
        _sgd_span_16_as(p, grad, buf, buf16, n, a, first, MOMENTUM_NONE, False)
    elif a.momentum_mode == MOMENTUM_FIRST:
        if a.nesterov:
            _sgd_span_16_as(p, grad, buf, buf16, n, a, first, MOMENTUM_FIRST, True)
        else:
            _sgd_span_16_as(p, grad, buf, buf16, n, a, first, MOMENTUM_FIRST, False)
    elif a.nesterov:
        _sgd_span_16_as(p, grad, buf, buf16, n, a, first, MOMENTUM_LATER, True)
    else:
        _sgd_span_16_as(p, grad, buf, buf16, n, a, first, MOMENTUM_LATER, False)


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


# Stochastic rounding and 16-bit state (the rules page, "Stochastic rounding" and "16-bit state"): the
# generator and the stochastic stores that the loops above call when a step rounds stochastically, and
# the ceiling of a 16-bit state. (The loops take either mode through their G16/buf16 and first.)

cdef extern from *:
    """
    #include <stdint.h>
    /* The generator of stochastic rounding: a bijective 32-bit integer hash (two multiply-xorshift
       rounds), applied to the seed and step once per step (the key) and to each element's index. The
       bits of element i at step t depend on (seed, t, i) only, so they do not depend on the thread count
       or on which rows a step names, and cadagrad.reference computes the same bits in NumPy. */
    static inline uint32_t cg_mix32(uint32_t x) {
        x ^= x >> 16;
        x *= 0x7feb352du;
        x ^= x >> 15;
        x *= 0x846ca68bu;
        x ^= x >> 16;
        return x;
    }
    static inline uint32_t cg_sr_key(uint64_t seed, uint64_t step) {
        uint32_t k = cg_mix32(cg_mix32((uint32_t)seed) ^ (uint32_t)(seed >> 32));
        return cg_mix32(cg_mix32(k ^ (uint32_t)step) ^ (uint32_t)(step >> 32));
    }
    /* The key of the 2^32 indices that share the high word hi: the bits of index hi * 2^32 + lo are
       cg_mix32(cg_sr_block(key, hi) ^ lo). */
    static inline uint32_t cg_sr_block(uint32_t key, uint64_t hi) { return cg_mix32(key ^ (uint32_t)hi); }
    static inline uint32_t cg_is_nan(float f) { return (cg_f32_bits(f) & 0x7fffffffu) > 0x7f800000u; }

    /* float32 -> 16 bits, stochastically: away from zero iff u < frac, where u = (r >> 8) / 2^24 and frac
       is |f| minus |f| truncated (toward zero) to the format, over the format's spacing there. A NaN
       converts as by the nearest-rounding helpers; an infinity stays one.

       bfloat16 drops the low 16 bits everywhere (subnormals too), so frac = low16 / 2^16 and
       u < frac <=> (r >> 16) < low16. A carry past the largest finite value gives infinity. */
    static inline uint16_t cg_f32_to_bf16_sr(float f, uint32_t r) {
        /* A NaN is first made the quiet NaN 0x7fc00000 of its sign: its low 16 bits are then 0, so it
           is never rounded up and gives cg_f32_to_bf16's NaN (one select, which vectorizes cheaply). */
        uint32_t u = cg_f32_bits(f);
        u = cg_select(cg_is_nan(f), (u & 0x80000000u) | 0x7fc00000u, u);
        return (uint16_t)((u >> 16) + (uint32_t)((r >> 16) < (u & 0xffffu)));
    }
    /* float16: a normal result (2^-14 <= |f|) drops 13 bits: u < frac <=> (r >> 19) < low13, and a
       carry may reach the exponent (from 65504, infinity); from 2^16 on, infinity. A subnormal result
       (|f| < 2^-14) is m * 2^-24: y = |f| * 2^24 is exact, m = trunc(y), frac = y - m is exact, and
       u < frac is compared in float32 (exact). */
    static inline uint16_t cg_f32_to_f16_sr_number(float f, uint32_t r) {         /* f not a NaN */
        uint32_t u = cg_f32_bits(f);
        uint32_t sign = (u >> 16) & 0x8000u;
        uint32_t a = u & 0x7fffffffu;
        uint32_t normal = ((a - 0x38000000u) >> 13) + (uint32_t)((r >> 19) < (a & 0x1fffu));
        float y = cg_bits_f32(cg_select(a < 0x38800000u, a, 0u)) * 16777216.0f;   /* < 1024 */
        float m = (float)(int32_t)y;
        uint32_t sub = (uint32_t)(int32_t)m + (uint32_t)((float)(r >> 8) * 5.9604644775390625e-08f < y - m);
        uint32_t out = cg_select(a < 0x38800000u, sub, normal);
        out = cg_select(a >= 0x47800000u, 0x7c00u, out);
        return (uint16_t)(sign | out);
    }
    static inline uint16_t cg_f32_to_f16_sr(float f, uint32_t r) {
        return (uint16_t)cg_select(cg_is_nan(f), cg_f32_to_f16(f), cg_f32_to_f16_sr_number(f, r));
    }

    /* n float32 values rounded stochastically into bfloat16 bits, out[j] with the random bits
       cg_mix32(block ^ (low + j)) (low + n <= 2^32): cg_f32_to_bf16_sr and cg_mix32 written as
       intrinsics, 16 values a step (AVX-512F; vpmulld for the hash, one vpmovdw to narrow) or 8 (AVX2),
       the portable helper for the rest and in the generic variant. Integer operations only, so the bits
       are the helper's for every input. GCC's vectorization of the helper's loop ran at about twice the
       time of a bfloat16 step rounded to nearest. */
    #if defined(__AVX512F__)
    #include <immintrin.h>
    static void cg_round_bf16_sr_n(uint16_t* out, const float* in, Py_ssize_t n, uint32_t block, uint32_t low) {
        const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512i key = _mm512_set1_epi32((int)block);
        const __m512i m1 = _mm512_set1_epi32(0x7feb352d), m2 = _mm512_set1_epi32((int)0x846ca68bu);
        const __m512i magnitude = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
        const __m512i sign = _mm512_set1_epi32((int)0x80000000u), quiet = _mm512_set1_epi32(0x7fc00000);
        const __m512i low16 = _mm512_set1_epi32(0xffff), one = _mm512_set1_epi32(1);
        Py_ssize_t i = 0;
        for (; i + 16 <= n; i += 16) {
            __m512i x = _mm512_xor_si512(key, _mm512_add_epi32(_mm512_set1_epi32((int)(low + (uint32_t)i)), lanes));
            x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
            x = _mm512_mullo_epi32(x, m1);
            x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
            x = _mm512_mullo_epi32(x, m2);
            x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
            __m512i u = _mm512_loadu_si512((const void*)(in + i));
            __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, magnitude), inf);
            u = _mm512_mask_mov_epi32(u, nan, _mm512_or_si512(_mm512_and_si512(u, sign), quiet));
            __mmask16 up = _mm512_cmplt_epu32_mask(_mm512_srli_epi32(x, 16), _mm512_and_si512(u, low16));
            __m512i top = _mm512_srli_epi32(u, 16);
            _mm256_storeu_si256((__m256i*)(out + i), _mm512_cvtepi32_epi16(_mm512_mask_add_epi32(top, up, top, one)));
        }
        for (; i < n; i++) out[i] = cg_f32_to_bf16_sr(in[i], cg_mix32(block ^ (low + (uint32_t)i)));
    }
    /* The same for float16, with cg_f32_to_f16_sr_number's integer and float steps (the float ones exact
       as in the helper); a group of 16 that holds a NaN is rounded by the portable helper instead. */
    static void cg_round_f16_sr_n(uint16_t* out, const float* in, Py_ssize_t n, uint32_t block, uint32_t low) {
        const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512i key = _mm512_set1_epi32((int)block);
        const __m512i m1 = _mm512_set1_epi32(0x7feb352d), m2 = _mm512_set1_epi32((int)0x846ca68bu);
        const __m512i magnitude = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
        const __m512i one = _mm512_set1_epi32(1), sign = _mm512_set1_epi32(0x8000);
        const __m512i rebias = _mm512_set1_epi32(0x38000000), low13 = _mm512_set1_epi32(0x1fff);
        const __m512i smallest = _mm512_set1_epi32(0x38800000), too_big = _mm512_set1_epi32(0x47800000);
        const __m512i f16_inf = _mm512_set1_epi32(0x7c00);
        const __m512 scale = _mm512_set1_ps(16777216.0f), unit = _mm512_set1_ps(5.9604644775390625e-08f);
        Py_ssize_t i = 0, j;
        for (; i + 16 <= n; i += 16) {
            __m512i u = _mm512_loadu_si512((const void*)(in + i));
            __m512i a = _mm512_and_si512(u, magnitude);
            if (_mm512_cmpgt_epu32_mask(a, inf)) {
                for (j = i; j < i + 16; j++) out[j] = cg_f32_to_f16_sr(in[j], cg_mix32(block ^ (low + (uint32_t)j)));
                continue;
            }
            __m512i x = _mm512_xor_si512(key, _mm512_add_epi32(_mm512_set1_epi32((int)(low + (uint32_t)i)), lanes));
            x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
            x = _mm512_mullo_epi32(x, m1);
            x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
            x = _mm512_mullo_epi32(x, m2);
            x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
            __m512i normal = _mm512_srli_epi32(_mm512_sub_epi32(a, rebias), 13);
            normal = _mm512_mask_add_epi32(normal, _mm512_cmplt_epu32_mask(_mm512_srli_epi32(x, 19),
                                           _mm512_and_si512(a, low13)), normal, one);
            __mmask16 subnormal = _mm512_cmplt_epu32_mask(a, smallest);
            __m512 y = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_maskz_mov_epi32(subnormal, a)), scale);
            __m512i m = _mm512_cvttps_epi32(y);
            __m512 frac = _mm512_sub_ps(y, _mm512_cvtepi32_ps(m));
            __m512 r = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(x, 8)), unit);
            m = _mm512_mask_add_epi32(m, _mm512_cmp_ps_mask(r, frac, _CMP_LT_OQ), m, one);
            __m512i result = _mm512_mask_mov_epi32(normal, subnormal, m);
            result = _mm512_mask_mov_epi32(result, _mm512_cmpge_epu32_mask(a, too_big), f16_inf);
            result = _mm512_or_si512(result, _mm512_and_si512(_mm512_srli_epi32(u, 16), sign));
            _mm256_storeu_si256((__m256i*)(out + i), _mm512_cvtepi32_epi16(result));
        }
        for (; i < n; i++) out[i] = cg_f32_to_f16_sr(in[i], cg_mix32(block ^ (low + (uint32_t)i)));
    }
    #elif defined(__AVX2__)
    #include <immintrin.h>
    static inline __m256i cg_round_bf16_sr_x8(__m256i u, __m256i x) {
        /* every compared value is below 2^31, so the signed compares are the unsigned ones */
        const __m256i m1 = _mm256_set1_epi32(0x7feb352d), m2 = _mm256_set1_epi32((int)0x846ca68bu);
        const __m256i magnitude = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
        const __m256i sign = _mm256_set1_epi32((int)0x80000000u), quiet = _mm256_set1_epi32(0x7fc00000);
        const __m256i low16 = _mm256_set1_epi32(0xffff);
        x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
        x = _mm256_mullo_epi32(x, m1);
        x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
        x = _mm256_mullo_epi32(x, m2);
        x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
        __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, magnitude), inf);
        u = _mm256_blendv_epi8(u, _mm256_or_si256(_mm256_and_si256(u, sign), quiet), nan);
        __m256i up = _mm256_cmpgt_epi32(_mm256_and_si256(u, low16), _mm256_srli_epi32(x, 16));   /* -1 or 0 */
        return _mm256_sub_epi32(_mm256_srli_epi32(u, 16), up);
    }
    static void cg_round_bf16_sr_n(uint16_t* out, const float* in, Py_ssize_t n, uint32_t block, uint32_t low) {
        const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i key = _mm256_set1_epi32((int)block);
        Py_ssize_t i = 0;
        for (; i + 16 <= n; i += 16) {
            __m256i x0 = _mm256_xor_si256(key, _mm256_add_epi32(_mm256_set1_epi32((int)(low + (uint32_t)i)), lanes));
            __m256i x1 = _mm256_xor_si256(key, _mm256_add_epi32(_mm256_set1_epi32((int)(low + (uint32_t)i + 8u)), lanes));
            __m256i lo = cg_round_bf16_sr_x8(_mm256_loadu_si256((const __m256i*)(in + i)), x0);
            __m256i hi = cg_round_bf16_sr_x8(_mm256_loadu_si256((const __m256i*)(in + i + 8)), x1);
            _mm256_storeu_si256((__m256i*)(out + i), _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xd8));
        }
        for (; i < n; i++) out[i] = cg_f32_to_bf16_sr(in[i], cg_mix32(block ^ (low + (uint32_t)i)));
    }
    static inline __m256i cg_round_f16_sr_x8(__m256i u, __m256i x) {
        /* as the AVX-512 loop, for 8 values without NaN; every compared integer is below 2^31 */
        const __m256i m1 = _mm256_set1_epi32(0x7feb352d), m2 = _mm256_set1_epi32((int)0x846ca68bu);
        const __m256i magnitude = _mm256_set1_epi32(0x7fffffff);
        const __m256i rebias = _mm256_set1_epi32(0x38000000), low13 = _mm256_set1_epi32(0x1fff);
        const __m256i smallest = _mm256_set1_epi32(0x38800000), too_big = _mm256_set1_epi32(0x477fffff);
        const __m256i f16_inf = _mm256_set1_epi32(0x7c00), sign = _mm256_set1_epi32(0x8000);
        const __m256 scale = _mm256_set1_ps(16777216.0f), unit = _mm256_set1_ps(5.9604644775390625e-08f);
        x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
        x = _mm256_mullo_epi32(x, m1);
        x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
        x = _mm256_mullo_epi32(x, m2);
        x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
        __m256i a = _mm256_and_si256(u, magnitude);
        __m256i normal = _mm256_srli_epi32(_mm256_sub_epi32(a, rebias), 13);
        normal = _mm256_sub_epi32(normal, _mm256_cmpgt_epi32(_mm256_and_si256(a, low13), _mm256_srli_epi32(x, 19)));
        __m256i subnormal = _mm256_cmpgt_epi32(smallest, a);
        __m256 y = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_and_si256(subnormal, a)), scale);
        __m256i m = _mm256_cvttps_epi32(y);
        __m256 frac = _mm256_sub_ps(y, _mm256_cvtepi32_ps(m));
        __m256 r = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 8)), unit);
        m = _mm256_sub_epi32(m, _mm256_castps_si256(_mm256_cmp_ps(r, frac, _CMP_LT_OQ)));
        __m256i result = _mm256_blendv_epi8(normal, m, subnormal);
        result = _mm256_blendv_epi8(result, f16_inf, _mm256_cmpgt_epi32(a, too_big));
        return _mm256_or_si256(result, _mm256_and_si256(_mm256_srli_epi32(u, 16), sign));
    }
    static void cg_round_f16_sr_n(uint16_t* out, const float* in, Py_ssize_t n, uint32_t block, uint32_t low) {
        const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i key = _mm256_set1_epi32((int)block);
        const __m256i magnitude = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
        Py_ssize_t i = 0, j;
        for (; i + 16 <= n; i += 16) {
            __m256i u0 = _mm256_loadu_si256((const __m256i*)(in + i));
            __m256i u1 = _mm256_loadu_si256((const __m256i*)(in + i + 8));
            __m256i nan = _mm256_or_si256(_mm256_cmpgt_epi32(_mm256_and_si256(u0, magnitude), inf),
                                          _mm256_cmpgt_epi32(_mm256_and_si256(u1, magnitude), inf));
            if (!_mm256_testz_si256(nan, nan)) {
                for (j = i; j < i + 16; j++) out[j] = cg_f32_to_f16_sr(in[j], cg_mix32(block ^ (low + (uint32_t)j)));
                continue;
            }
            __m256i x0 = _mm256_xor_si256(key, _mm256_add_epi32(_mm256_set1_epi32((int)(low + (uint32_t)i)), lanes));
            __m256i x1 = _mm256_xor_si256(key, _mm256_add_epi32(_mm256_set1_epi32((int)(low + (uint32_t)i + 8u)), lanes));
            __m256i lo = cg_round_f16_sr_x8(u0, x0), hi = cg_round_f16_sr_x8(u1, x1);
            _mm256_storeu_si256((__m256i*)(out + i), _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xd8));
        }
        for (; i < n; i++) out[i] = cg_f32_to_f16_sr(in[i], cg_mix32(block ^ (low + (uint32_t)i)));
    }
    #else
    static void cg_round_bf16_sr_n(uint16_t* out, const float* in, Py_ssize_t n, uint32_t block, uint32_t low) {
        Py_ssize_t i;
        for (i = 0; i < n; i++) out[i] = cg_f32_to_bf16_sr(in[i], cg_mix32(block ^ (low + (uint32_t)i)));
    }
    static void cg_round_f16_sr_n(uint16_t* out, const float* in, Py_ssize_t n, uint32_t block, uint32_t low) {
        Py_ssize_t i;
        for (i = 0; i < n; i++) out[i] = cg_f32_to_f16_sr(in[i], cg_mix32(block ^ (low + (uint32_t)i)));
    }
    #endif
    """
    unsigned int cg_mix32(unsigned int x) noexcept nogil
    void cg_round_bf16_sr_n(unsigned short* out, const float* inp, Py_ssize_t n, unsigned int block,
                            unsigned int low) noexcept nogil
    void cg_round_f16_sr_n(unsigned short* out, const float* inp, Py_ssize_t n, unsigned int block,
                           unsigned int low) noexcept nogil
    unsigned int cg_sr_key(unsigned long long seed, unsigned long long step) noexcept nogil
    unsigned int cg_sr_block(unsigned int key, unsigned long long hi) noexcept nogil
    unsigned int cg_is_nan(float f) noexcept nogil
    unsigned short cg_f32_to_bf16_sr(float f, unsigned int r) noexcept nogil
    unsigned short cg_f32_to_f16_sr_number(float f, unsigned int r) noexcept nogil
    unsigned short cg_f32_to_f16_sr(float f, unsigned int r) noexcept nogil


cdef inline void _store_params_stochastic(half_param* p, const float* wide, Py_ssize_t n, unsigned int key,
                                          Py_ssize_t first) noexcept nogil:
    # Rounds wide[0:n] into p[0:n] stochastically; p[0] is element `first` of its param. Split where the
    # index's low word wraps, so that each call of the C helpers (intrinsics) has one block key.
    cdef Py_ssize_t i = 0, m
    cdef unsigned int block, low
    while i < n:
        block = cg_sr_block(key, <unsigned long long>(first + i) >> 32)
        low = <unsigned int><unsigned long long>(first + i)        # the low word
        m = min(n - i, (<Py_ssize_t>1 << 32) - <Py_ssize_t>low)
        if half_param is cg_bf16:
            cg_round_bf16_sr_n(<unsigned short*>(p + i), wide + i, m, block, low)
        else:
            cg_round_f16_sr_n(<unsigned short*>(p + i), wide + i, m, block, low)
        i += m


cdef inline void _store_params_as(half_param* p, const float* wide, Py_ssize_t n, bint stochastic,
                                  unsigned int key, Py_ssize_t first) noexcept nogil:
    if stochastic:
        _store_params_stochastic(p, wide, n, key, first)
    else:
        _store_params(p, wide, n)


cdef inline void _store_rounded_as(half_param* p, Py_ssize_t j, float x, bint stochastic, unsigned int key,
                                   Py_ssize_t index) noexcept nogil:
    # p[j] = x rounded, stochastically with the bits of element `index` of its param, or to nearest.
    cdef unsigned int r
    if not stochastic:
        _store_rounded(p, j, x)
        return
    r = cg_mix32(cg_sr_block(key, <unsigned long long>index >> 32) ^ <unsigned int><unsigned long long>index)
    if half_param is cg_f16:
        p[j].bits = cg_f32_to_f16_sr(x, r)
    else:
        p[j].bits = cg_f32_to_bf16_sr(x, r)


cdef void _ceiling_span_16_state16(half_param* p, const half_grad* grad, half_param* state,
                                   Py_ssize_t n) noexcept nogil:
    # _ceiling_span_16 over a 16-bit state: the same traffic with 2-byte state, in the blocks of the
    # step it stands beside (p and the state widened, _ceiling_span, both rounded back). A scalar loop
    # per element took 1.5x to 3x the step's time, which made the ratio to the ceiling meaningless.
    cdef float wide_p[HALF_BLOCK]
    cdef float wide_g[HALF_BLOCK]
    cdef float wide_s[HALF_BLOCK]
    cdef Py_ssize_t lo = 0, m
    while lo < n:
        m = min(<Py_ssize_t>HALF_BLOCK, n - lo)
        _widen_params(wide_p, p + lo, m)
        _widen_params(wide_s, state + lo, m)
        _ceiling_span(wide_p, _widened_grads(wide_g, grad + lo, m), wide_s, m)
        _store_params(p + lo, wide_p, m)
        _store_params(state + lo, wide_s, m)
        lo += m


def _random_bits(unsigned long long seed, unsigned long long step, const long long[::1] indices,
                 unsigned int[::1] out):
    """The generator's 32 bits for each element index of ``indices`` at ``step`` (for the tests)."""
    cdef unsigned int key = cg_sr_key(seed, step)
    cdef Py_ssize_t i
    cdef unsigned long long index
    with nogil:
        for i in range(indices.shape[0]):
            index = <unsigned long long>indices[i]
            out[i] = cg_mix32(cg_sr_block(key, index >> 32) ^ <unsigned int><unsigned long long>index)


def _round_stochastically(const float[::1] values, const unsigned int[::1] bits, unsigned short[::1] out,
                          bint bfloat16):
    """Round float32 ``values`` with random ``bits`` into the bits of float16 (or bfloat16) ``out`` with
    the kernels' helper (for the tests)."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(values.shape[0]):
            out[i] = cg_f32_to_bf16_sr(values[i], bits[i]) if bfloat16 else cg_f32_to_f16_sr(values[i], bits[i])
