# 16-bit params (the rules page, "16-bit params"): float16 or bfloat16 params with float32 state. Each
# element is widened to float32 (p, and the grad unless it is float32 already), stepped by the float32
# formulas above (the same inline helpers, so the same operation order), and rounded back once to
# nearest even by the integer helpers of _platform.pxi. The params are read and written as 16-bit
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
    # stack buffers (4 KiB in all, in L1), not a float32 copy of the params in memory.
    HALF_BLOCK = 512


cdef inline void _widen_params(float* out, const half_param* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = _widen(p, i)


cdef inline const float* _widened_grads(float* out, const half_grad* grad, Py_ssize_t n) noexcept nogil:
    # The block's grads as float32: a float32 grad as it is, a 16-bit one widened into out.
    cdef Py_ssize_t i
    if half_grad is float:
        return grad
    else:
        for i in range(n):
            out[i] = _grad32(grad, i)
        return out


cdef inline void _store_params(half_param* p, const float* wide, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        _store_rounded(p, i, wide[i])


cdef void _adagrad_span_16(half_param* p, const half_grad* grad, float* G, Py_ssize_t n,
                           const AdagradArgs* a) noexcept nogil:
    # Block by block: widen, _adagrad_span itself on float32 (the same loop and bits as for float32
    # params), round back. Each of the three loops vectorizes on its own; a single fused loop with the
    # conversions inside did not (GCC left its flag and format tests as branches around the float
    # operations, which it does not if-convert because they may trap). A grad that is its param is
    # widened, a block at a time, before that block of p is written.
    cdef float wide_p[HALF_BLOCK]
    cdef float wide_g[HALF_BLOCK]
    cdef Py_ssize_t lo = 0, m
    while lo < n:
        m = min(<Py_ssize_t>HALF_BLOCK, n - lo)
        _widen_params(wide_p, p + lo, m)
        _adagrad_span(wide_p, _widened_grads(wide_g, grad + lo, m), G + lo, m, a)
        _store_params(p + lo, wide_p, m)
        lo += m


cdef void _adagrad_rowwise_rows_16(half_param* p, const half_grad* grad, float* G, Py_ssize_t rows,
                                   Py_ssize_t cols, const AdagradArgs* a) noexcept nogil:
    # _adagrad_rowwise_rows on widened values: the row's mean of g * g (left to right), then one d.
    cdef float clr = <float>a.clr
    cdef float wd = <float>a.weight_decay
    cdef float eps = <float>a.eps
    cdef float width = <float>cols
    cdef bint maximize = a.maximize, has_wd = a.has_weight_decay, inside = a.eps_inside_sqrt
    cdef float g, d, total, w
    cdef Py_ssize_t r, j
    for r in range(rows):
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


cdef void _sgd_span_16(half_param* p, const half_grad* grad, float* buf, Py_ssize_t n,
                       const SgdArgs* a) noexcept nogil:
    # As _adagrad_span_16, with _sgd_span (buf is NULL without momentum).
    cdef float wide_p[HALF_BLOCK]
    cdef float wide_g[HALF_BLOCK]
    cdef Py_ssize_t lo = 0, m
    while lo < n:
        m = min(<Py_ssize_t>HALF_BLOCK, n - lo)
        _widen_params(wide_p, p + lo, m)
        _sgd_span(wide_p, _widened_grads(wide_g, grad + lo, m), buf + lo if buf != NULL else NULL, m, a)
        _store_params(p + lo, wide_p, m)
        lo += m


cdef void _ceiling_span_16(half_param* p, const half_grad* grad, float* state, Py_ssize_t n) noexcept nogil:
    # The ceiling of a 16-bit step: its traffic (read p, grad and the float32 state; write p and the
    # state) with the widening and rounding a real step pays, and an addition or two per store.
    cdef Py_ssize_t i
    cdef float g
    if state == NULL:
        for i in range(n):
            _store_rounded(p, i, _widen(p, i) + _grad32(grad, i))
    else:
        for i in range(n):
            g = _grad32(grad, i)
            state[i] = state[i] + g * g
            _store_rounded(p, i, _widen(p, i) + g)


cdef bint _has_nonfinite_span_16(const half_param* grad, Py_ssize_t n) noexcept nogil:
    # As _has_nonfinite_span: all exponent bits set (0x7c00 in float16, 0x7f80 in bfloat16).
    cdef unsigned short mask = 0x7c00 if half_param is cg_f16 else 0x7f80
    cdef unsigned short top = 0
    cdef Py_ssize_t i
    for i in range(n):
        top = max(top, grad[i].bits & mask)
    return top == mask


# Stochastic rounding and 16-bit state (the rules page, "Stochastic rounding" and "16-bit state"). These
# loops serve the two optional modes; the default (float32 state, nearest rounding) takes the loops above.

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
    """
    unsigned int cg_mix32(unsigned int x) noexcept nogil
    unsigned int cg_sr_key(unsigned long long seed, unsigned long long step) noexcept nogil
    unsigned int cg_sr_block(unsigned int key, unsigned long long hi) noexcept nogil
    unsigned int cg_is_nan(float f) noexcept nogil
    unsigned short cg_f32_to_bf16_sr(float f, unsigned int r) noexcept nogil
    unsigned short cg_f32_to_f16_sr_number(float f, unsigned int r) noexcept nogil
    unsigned short cg_f32_to_f16_sr(float f, unsigned int r) noexcept nogil


cdef inline void _store_params_stochastic(half_param* p, const float* wide, Py_ssize_t n, unsigned int key,
                                          Py_ssize_t first) noexcept nogil:
    # Rounds wide[0:n] into p[0:n] stochastically; p[0] is element `first` of its param. Split where the
    # index's low word wraps, so that each inner loop has one block key. A float16 loop rounds every
    # value as a number and notes whether one was a NaN; only then are the NaNs rounded again, by the
    # full helper (its NaN select inside the loop cost about a third of the loop).
    cdef Py_ssize_t i = 0, j, m
    cdef unsigned int block, low, nan
    while i < n:
        block = cg_sr_block(key, <unsigned long long>(first + i) >> 32)
        low = <unsigned int><unsigned long long>(first + i)        # the low word
        m = min(n - i, (<Py_ssize_t>1 << 32) - <Py_ssize_t>low)
        nan = 0
        for j in range(m):
            if half_param is cg_f16:
                nan |= cg_is_nan(wide[i + j])
                p[i + j].bits = cg_f32_to_f16_sr_number(wide[i + j], cg_mix32(block ^ <unsigned int>(low + j)))
            else:
                p[i + j].bits = cg_f32_to_bf16_sr(wide[i + j], cg_mix32(block ^ <unsigned int>(low + j)))
        if nan:
            for j in range(m):
                if cg_is_nan(wide[i + j]):
                    _store_rounded(p, i + j, wide[i + j])
        i += m


cdef inline void _store_params_as(half_param* p, const float* wide, Py_ssize_t n, bint stochastic,
                                  unsigned int key, Py_ssize_t first) noexcept nogil:
    if stochastic:
        _store_params_stochastic(p, wide, n, key, first)
    else:
        _store_params(p, wide, n)


cdef inline float* _wide_state(float* block, void* state, bint state_16, Py_ssize_t lo, Py_ssize_t m,
                               half_param* like) noexcept nogil:
    # The state of elements [lo, lo + m) as float32: a float32 state as it is, a 16-bit one (in the
    # format of `like`, the param) widened into block.
    if state == NULL:
        return NULL
    if not state_16:
        return <float*>state + lo
    _widen_params(block, <half_param*>state + lo, m)
    return block


cdef inline void _adagrad_16_fused_as(half_param* p, const half_grad* grad, half_param* G, Py_ssize_t n,
                                      const AdagradArgs* a, unsigned int block, unsigned int low,
                                      bint stochastic, bint inside) noexcept nogil:
    # One pass per element over a 16-bit param and accumulator (widen, the float32 rule, round back),
    # called only with literal stochastic and inside so that each caller gets its own straight loop,
    # without maximize or weight decay. p[0] is element `low` of the index block whose key is `block`.
    cdef float clr = <float>a.clr
    cdef float eps = <float>a.eps
    cdef float w, g, s
    cdef Py_ssize_t i
    for i in range(n):
        w = _widen(p, i)
        g = _grad32(grad, i)
        s = _widen(G, i) + g * g
        w = _adagrad_new_param(w, g, clr, _adagrad_denominator(s, eps, inside))
        if stochastic:
            if half_param is cg_f16:
                p[i].bits = cg_f32_to_f16_sr(w, cg_mix32(block ^ <unsigned int>(low + i)))
            else:
                p[i].bits = cg_f32_to_bf16_sr(w, cg_mix32(block ^ <unsigned int>(low + i)))
        else:
            _store_rounded(p, i, w)
        _store_rounded(G, i, s)


cdef void _adagrad_span_16_fused(half_param* p, const half_grad* grad, void* G, Py_ssize_t n,
                                 const AdagradArgs* a, Py_ssize_t first) noexcept nogil:
    # _adagrad_span_16_modes with a 16-bit accumulator, without maximize and weight decay, in one pass:
    # on a 2^24-element bfloat16 step, blocks (five passes over L1) took 1.3x the time of this loop.
    # (With a float32 accumulator and stochastic rounding, this loop measured slower than the blocks.)
    cdef Py_ssize_t i = 0, m
    cdef unsigned int block, low
    cdef bint inside = a.eps_inside_sqrt, stochastic = a.stochastic
    cdef half_param* G16 = <half_param*>G
    while i < n:
        block = cg_sr_block(a.sr_key, <unsigned long long>(first + i) >> 32)
        low = <unsigned int><unsigned long long>(first + i)
        m = min(n - i, (<Py_ssize_t>1 << 32) - <Py_ssize_t>low)
        if stochastic:
            if inside:
                _adagrad_16_fused_as(p + i, grad + i, G16 + i, m, a, block, low, True, True)
            else:
                _adagrad_16_fused_as(p + i, grad + i, G16 + i, m, a, block, low, True, False)
        elif inside:
            _adagrad_16_fused_as(p + i, grad + i, G16 + i, m, a, block, low, False, True)
        else:
            _adagrad_16_fused_as(p + i, grad + i, G16 + i, m, a, block, low, False, False)
        i += m


cdef void _adagrad_span_16_modes(half_param* p, const half_grad* grad, void* G, bint state_16, Py_ssize_t n,
                                 const AdagradArgs* a, Py_ssize_t first) noexcept nogil:
    # _adagrad_span_16 with a 16-bit accumulator (widened, stepped, rounded back to nearest) and/or a
    # stochastic rounding of p; p[0] and G[0] are element `first` of their param.
    cdef float wide_p[HALF_BLOCK]
    cdef float wide_g[HALF_BLOCK]
    cdef float wide_G[HALF_BLOCK]
    cdef float* sums
    cdef Py_ssize_t lo = 0, m
    if state_16 and not a.maximize and not a.has_weight_decay and (half_param is cg_bf16 or not a.stochastic):
        _adagrad_span_16_fused(p, grad, G, n, a, first)
        return
    while lo < n:
        m = min(<Py_ssize_t>HALF_BLOCK, n - lo)
        _widen_params(wide_p, p + lo, m)
        sums = _wide_state(wide_G, G, state_16, lo, m, p)
        _adagrad_span(wide_p, _widened_grads(wide_g, grad + lo, m), sums, m, a)
        _store_params_as(p + lo, wide_p, m, a.stochastic, a.sr_key, first + lo)
        if state_16:
            _store_params(<half_param*>G + lo, sums, m)
        lo += m


cdef void _sgd_span_16_modes(half_param* p, const half_grad* grad, void* buf, bint state_16, Py_ssize_t n,
                             const SgdArgs* a, Py_ssize_t first) noexcept nogil:
    # As _adagrad_span_16_modes, for SGD (buf is NULL without momentum).
    cdef float wide_p[HALF_BLOCK]
    cdef float wide_g[HALF_BLOCK]
    cdef float wide_buf[HALF_BLOCK]
    cdef float* momentum
    cdef Py_ssize_t lo = 0, m
    while lo < n:
        m = min(<Py_ssize_t>HALF_BLOCK, n - lo)
        _widen_params(wide_p, p + lo, m)
        momentum = _wide_state(wide_buf, buf, state_16, lo, m, p)
        _sgd_span(wide_p, _widened_grads(wide_g, grad + lo, m), momentum, m, a)
        _store_params_as(p + lo, wide_p, m, a.stochastic, a.sr_key, first + lo)
        if state_16 and momentum != NULL:
            _store_params(<half_param*>buf + lo, momentum, m)
        lo += m


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


cdef void _adagrad_rowwise_rows_16_modes(half_param* p, const half_grad* grad, void* G, bint state_16,
                                         Py_ssize_t rows, Py_ssize_t cols, const AdagradArgs* a,
                                         Py_ssize_t first_row) noexcept nogil:
    # _adagrad_rowwise_rows_16 with a 16-bit row accumulator (widened, stepped, rounded back to nearest)
    # and/or a stochastic rounding of p; p's first row is row `first_row` of its param.
    cdef float clr = <float>a.clr
    cdef float wd = <float>a.weight_decay
    cdef float eps = <float>a.eps
    cdef float width = <float>cols
    cdef bint maximize = a.maximize, has_wd = a.has_weight_decay, inside = a.eps_inside_sqrt
    cdef float g, d, total, w, sums
    cdef Py_ssize_t r, j
    for r in range(rows):
        total = 0
        for j in range(cols):
            g = _effective_grad(_grad32(grad, j), _widen(p, j), maximize, has_wd, wd)
            total = total + g * g
        sums = (_widen(<half_param*>G, r) if state_16 else (<float*>G)[r]) + total / width
        d = _adagrad_denominator(sums, eps, inside)
        for j in range(cols):
            w = _widen(p, j)
            g = _effective_grad(_grad32(grad, j), w, maximize, has_wd, wd)
            _store_rounded_as(p, j, _adagrad_new_param(w, g, clr, d), a.stochastic, a.sr_key,
                              (first_row + r) * cols + j)
        if state_16:
            _store_rounded(<half_param*>G, r, sums)
        else:
            (<float*>G)[r] = sums
        p += cols
        grad += cols


cdef void _ceiling_span_16_state16(half_param* p, const half_grad* grad, half_param* state,
                                   Py_ssize_t n) noexcept nogil:
    # _ceiling_span_16 over a 16-bit state: the same traffic with 2-byte state, widened and rounded.
    cdef Py_ssize_t i
    cdef float g
    for i in range(n):
        g = _grad32(grad, i)
        _store_rounded(state, i, _widen(state, i) + g * g)
        _store_rounded(p, i, _widen(p, i) + g)


cdef inline bint _uses_modes(int kernel, const Segment* s, const void* args) noexcept nogil:
    # Whether a 16-bit step takes the loops of this section: a 16-bit state, or stochastic rounding.
    if s.state_16:
        return True
    if kernel == KERNEL_ADAGRAD:
        return (<const AdagradArgs*>args).stochastic
    if kernel == KERNEL_SGD:
        return (<const SgdArgs*>args).stochastic
    return False


cdef void _span_16_modes(int kernel, const Segment* s, half_param* param, const half_grad* grad,
                         Py_ssize_t lo, Py_ssize_t n, const void* args) noexcept nogil:
    # Elements [lo, lo + n) of a 16-bit segment when _uses_modes: param is the segment's first element,
    # grad the gradient of element lo (a dense grad + lo, or a row's float32 sum). A row-wise segment is
    # given whole rows (lo a multiple of cols).
    cdef void* state = NULL
    if s.state != NULL:
        state = <void*>(<half_param*>s.state + (lo // s.cols if s.cols > 0 else lo)) if s.state_16 else \
                <void*>(<float*>s.state + (lo // s.cols if s.cols > 0 else lo))
    if kernel == KERNEL_ADAGRAD and s.cols > 0:
        _adagrad_rowwise_rows_16_modes(param + lo, grad, state, s.state_16, n // s.cols, s.cols,
                                       <const AdagradArgs*>args, lo // s.cols)
    elif kernel == KERNEL_ADAGRAD:
        _adagrad_span_16_modes(param + lo, grad, state, s.state_16, n, <const AdagradArgs*>args, lo)
    elif kernel == KERNEL_SGD:
        _sgd_span_16_modes(param + lo, grad, state, s.state_16, n, <const SgdArgs*>args, lo)
    elif kernel == KERNEL_CEILING and state != NULL and s.cols == 0:    # with a 16-bit state
        _ceiling_span_16_state16(param + lo, grad, <half_param*>state, n)
    elif kernel == KERNEL_CEILING:      # a row-wise 16-bit state: its traffic is negligible
        _ceiling_span_16(param + lo, grad, <float*>NULL, n)


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
