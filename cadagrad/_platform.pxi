# What the kernels need from the compiler, the CPU and OpenMP, and the module's only global state (the
# thread setting and the fork flag), with the Python functions that read them.

# The NumPy C-API is used only by the step engine, to check a step's grads in a few nanoseconds each
# (a typed memoryview costs ~0.5 us per array), and by data_address. The extension is built against
# NumPy >= 2, which makes one build work with NumPy 1.x and 2.x at run time.
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
    static int cg_cpu_has_f16c(void) { __builtin_cpu_init(); return __builtin_cpu_supports("f16c"); }
    #else
    static int cg_cpu_has_avx2(void) { return 0; }
    static int cg_cpu_has_avx512(void) { return 0; }
    static int cg_cpu_has_f16c(void) { return 0; }
    #endif
    """
    int cg_cpu_has_avx2() noexcept nogil
    int cg_cpu_has_avx512() noexcept nogil
    int cg_cpu_has_f16c() noexcept nogil

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


cdef int _global_threads = 0      # set_num_threads(); 0 means "ask OpenMP at call time"
cdef bint _forked_child = False   # see _after_fork_in_child()


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


COMPILE_FLAGS = CG_COMPILE_FLAGS.decode()


def cpu_features():
    """The instruction sets of this CPU that a kernel variant may need (checked with the OS's support)."""
    return {"avx2": bool(cg_cpu_has_avx2()), "avx512": bool(cg_cpu_has_avx512()), "f16c": bool(cg_cpu_has_f16c())}


cdef extern from *:
    """
    /* Copies n floats or doubles to dst with non-temporal stores where the CPU has them (x86-64: SSE2),
       past the caches: for a large buffer that a step writes without reading (AdaGrad dual averaging's
       params), whose cache lines then need no read for ownership. A plain copy elsewhere. The bits are
       copied, never converted. Ends with a store fence, so the stores are visible after the parallel
       region like ordinary ones. */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #include <stdint.h>
    static void cg_stream_f32(float* dst, const float* src, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i < n && ((uintptr_t)(dst + i) & 15) != 0; i++) dst[i] = src[i];
        for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
        for (; i < n; i++) dst[i] = src[i];
        _mm_sfence();
    }
    static void cg_stream_f64(double* dst, const double* src, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i < n && ((uintptr_t)(dst + i) & 15) != 0; i++) dst[i] = src[i];
        for (; i + 2 <= n; i += 2) _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
        for (; i < n; i++) dst[i] = src[i];
        _mm_sfence();
    }
    #else
    #include <string.h>
    static void cg_stream_f32(float* dst, const float* src, Py_ssize_t n) { memcpy(dst, src, n * sizeof(float)); }
    static void cg_stream_f64(double* dst, const double* src, Py_ssize_t n) { memcpy(dst, src, n * sizeof(double)); }
    #endif
    """
    void cg_stream_f32(float* dst, const float* src, Py_ssize_t n) noexcept nogil
    void cg_stream_f64(double* dst, const double* src, Py_ssize_t n) noexcept nogil

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* Exact float16/bfloat16 <-> float32 conversions, to the bit of NumPy's float16 casts
       (npy_halfbits_to_floatbits, npy_floatbits_to_halfbits) and ml_dtypes' bfloat16 casts: portable,
       no F16C. Every candidate result is computed and one is picked by masks (cg_select), not by ?:
       which GCC turns into branches around the float additions (they may trap, under the default
       -ftrapping-math) and then leaves the loop scalar. Checked with -fopt-info-vec-optimized (GCC 12,
       the flags of setup.py): loops of each helper vectorize with SSE2, -mavx2 and -mavx512f. Float
       arithmetic here relies on the default rounding mode (to nearest even), as every kernel does.
       The rules page of the docs, "16-bit params"; tests/test_half.py checks them bit for bit against
       NumPy and ml_dtypes over every 16-bit value and millions of float32 values. */
    static inline uint32_t cg_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
    static inline float cg_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
    static inline uint32_t cg_select(uint32_t cond, uint32_t x, uint32_t y) {
        uint32_t m = 0u - cond;                                        /* cond is 0 or 1 */
        return (x & m) | (y & ~m);
    }

    /* float16 -> float32, exact; a NaN keeps its payload (not quieted), as NumPy's cast. */
    static inline float cg_f16_to_f32(uint16_t h) {
        uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
        uint32_t a = (uint32_t)(h & 0x7fffu);
        uint32_t o = a << 13;
        uint32_t normal = o + 0x38000000u;                             /* exponent rebiased 15 -> 127 */
        uint32_t special = o | 0x7f800000u;                            /* inf, NaN */
        /* subnormal: 1.m x 2^-14 minus 2^-14 is 0.m x 2^-14, exactly */
        uint32_t sub = cg_f32_bits(cg_bits_f32(o + 0x38800000u) - 6.103515625e-05f);
        uint32_t out = cg_select(a >= 0x7c00u, special, normal);
        out = cg_select(a < 0x0400u, sub, out);
        return cg_bits_f32(sign | out);
    }

    /* float32 -> float16, to nearest even. Past 65504 after rounding: inf; below 2^-14: a subnormal
       (or zero), also to nearest even; NaN: the top 10 payload bits, or 1 if they are all 0 (NumPy's rule). */
    static inline uint16_t cg_f32_to_f16(float f) {
        uint32_t u = cg_f32_bits(f);
        uint32_t sign = (u >> 16) & 0x8000u;
        uint32_t a = u & 0x7fffffffu;
        /* normal: the 13 dropped bits rounded to nearest even (a carry may reach the exponent) */
        uint32_t normal = (a + 0x0fffu + ((a >> 13) & 1u) - 0x38000000u) >> 13;
        /* subnormal: |f| + 0.5 rounds |f| to a multiple of 2^-24 (the ulp of 0.5), to nearest even */
        uint32_t sub = cg_f32_bits(cg_bits_f32(a) + 0.5f) - 0x3f000000u;
        uint32_t payload = (a & 0x7fffffu) >> 13;
        uint32_t nan = 0x7c00u + payload + (uint32_t)(payload == 0u);
        uint32_t out = cg_select(a < 0x38800000u, sub, normal);
        out = cg_select(a >= 0x477ff000u, 0x7c00u, out);
        out = cg_select(a > 0x7f800000u, nan, out);
        return (uint16_t)(sign | out);
    }

    static inline float cg_bf16_to_f32(uint16_t b) { return cg_bits_f32((uint32_t)b << 16); }

    /* float32 -> bfloat16, to nearest even (a carry past the largest finite value gives inf); NaN:
       the quiet NaN 0x7fc0 with its sign (ml_dtypes' rule). */
    static inline uint16_t cg_f32_to_bf16(float f) {
        uint32_t u = cg_f32_bits(f);
        uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        uint32_t nan = ((u >> 16) & 0x8000u) | 0x7fc0u;
        return (uint16_t)cg_select((u & 0x7fffffffu) > 0x7f800000u, nan, rounded);
    }
    """
    float cg_f16_to_f32(unsigned short h) noexcept nogil
    unsigned short cg_f32_to_f16(float f) noexcept nogil
    float cg_bf16_to_f32(unsigned short b) noexcept nogil
    unsigned short cg_f32_to_bf16(float f) noexcept nogil

cdef extern from *:
    """
    /* float16 <-> float32 for n values at a time: 8 per F16C instruction (16 with AVX-512F) in the
       variants built with -mf16c (avx2, avx512; cadagrad._kernels picks them only on CPUs with F16C),
       the portable helpers above elsewhere and for the last n % 8. GCC 12 does not vectorize a _Float16 conversion with F16C
       alone (checked: scalar vcvtps2ph in the loop), hence the intrinsics. The hardware conversions
       differ from NumPy's only for NaN (vcvtph2ps quiets a signalling NaN; vcvtps2ph quiets and keeps
       the top 9 payload bits, NumPy keeps 10 and makes an all-zero payload 1): any group of 8 holding a
       NaN is redone by the portable helper, so every value gets the bits of cg_f16_to_f32 and
       cg_f32_to_f16. vcvtps2ph rounds to nearest even by its immediate, whatever MXCSR says; both
       instructions convert subnormals exactly (DAZ is off, as every kernel assumes). */
    #if defined(__F16C__) && defined(__AVX2__)
    #include <immintrin.h>
    #define CG_HAVE_F16C 1
    static void cg_widen_f16_n(float* out, const uint16_t* in, Py_ssize_t n) {
        const __m128i magnitude = _mm_set1_epi16(0x7fff), inf = _mm_set1_epi16(0x7c00);
        Py_ssize_t i = 0, j;
    #if defined(__AVX512F__)
        /* 16 at a time (vcvtph2ps zmm is AVX-512F); the NaN test on 32-bit lanes (no AVX512BW) */
        const __m512i magnitude32 = _mm512_set1_epi32(0x7fff), inf32 = _mm512_set1_epi32(0x7c00);
        for (; i + 16 <= n; i += 16) {
            __m256i h = _mm256_loadu_si256((const __m256i*)(in + i));
            _mm512_storeu_ps(out + i, _mm512_cvtph_ps(h));
            if (_mm512_cmpgt_epi32_mask(_mm512_and_si512(_mm512_cvtepu16_epi32(h), magnitude32), inf32)) {
                for (j = i; j < i + 16; j++) out[j] = cg_f16_to_f32(in[j]);
            }
        }
    #endif
        for (; i + 8 <= n; i += 8) {
            __m128i h = _mm_loadu_si128((const __m128i*)(in + i));
            _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
            if (_mm_movemask_epi8(_mm_cmpgt_epi16(_mm_and_si128(h, magnitude), inf))) {
                for (j = i; j < i + 8; j++) out[j] = cg_f16_to_f32(in[j]);
            }
        }
        for (; i < n; i++) out[i] = cg_f16_to_f32(in[i]);
    }
    static void cg_round_f16_n(uint16_t* out, const float* in, Py_ssize_t n) {
        Py_ssize_t i = 0, j;
    #if defined(__AVX512F__)
        for (; i + 16 <= n; i += 16) {
            __m512 f = _mm512_loadu_ps(in + i);
            _mm256_storeu_si256((__m256i*)(out + i), _mm512_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT));
            if (_mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q)) {
                for (j = i; j < i + 16; j++) out[j] = cg_f32_to_f16(in[j]);
            }
        }
    #endif
        for (; i + 8 <= n; i += 8) {
            __m256 f = _mm256_loadu_ps(in + i);
            _mm_storeu_si128((__m128i*)(out + i), _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT));
            if (_mm256_movemask_ps(_mm256_cmp_ps(f, f, _CMP_UNORD_Q))) {
                for (j = i; j < i + 8; j++) out[j] = cg_f32_to_f16(in[j]);
            }
        }
        for (; i < n; i++) out[i] = cg_f32_to_f16(in[i]);
    }
    #else
    #define CG_HAVE_F16C 0
    /* Vectorized by GCC (the helpers are branch-free). */
    static void cg_widen_f16_n(float* out, const uint16_t* in, Py_ssize_t n) {
        Py_ssize_t i;
        for (i = 0; i < n; i++) out[i] = cg_f16_to_f32(in[i]);
    }
    static void cg_round_f16_n(uint16_t* out, const float* in, Py_ssize_t n) {
        Py_ssize_t i;
        for (i = 0; i < n; i++) out[i] = cg_f32_to_f16(in[i]);
    }
    #endif
    """
    const int CG_HAVE_F16C
    void cg_widen_f16_n(float* out, const unsigned short* inp, Py_ssize_t n) noexcept nogil
    void cg_round_f16_n(unsigned short* out, const float* inp, Py_ssize_t n) noexcept nogil

cdef extern from *:
    """
    /* bfloat16 <-> float32 for n values at a time, with the integer rules of cg_bf16_to_f32 and
       cg_f32_to_bf16 written as intrinsics: 16 values a step (AVX-512F: one zmm, narrowed by vpmovdw;
       AVX2: two ymm, narrowed by vpackusdw + vpermq), the portable helpers for the rest and in the
       generic variant. GCC's own vectorization of cg_f32_to_bf16 narrowed each operand of the NaN
       select to 16 bits before selecting (four vpackusdw + vpermq per 16 values, about 45 instructions;
       seen in perf annotate of the avx512 build): it made the rounding loop the most expensive part of a
       bfloat16 step after the divisions. No float arithmetic here: the bits are those of the helpers for
       every input, NaN payloads included. */
    #if defined(__AVX512F__)
    #include <immintrin.h>
    static void cg_widen_bf16_n(float* out, const uint16_t* in, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i + 16 <= n; i += 16) {
            __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(in + i)));
            _mm512_storeu_si512((void*)(out + i), _mm512_slli_epi32(h, 16));
        }
        for (; i < n; i++) out[i] = cg_bf16_to_f32(in[i]);
    }
    static void cg_round_bf16_n(uint16_t* out, const float* in, Py_ssize_t n) {
        const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7fff);
        const __m512i magnitude = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
        const __m512i sign = _mm512_set1_epi32(0x8000), quiet = _mm512_set1_epi32(0x7fc0);
        Py_ssize_t i = 0;
        for (; i + 16 <= n; i += 16) {
            __m512i u = _mm512_loadu_si512((const void*)(in + i));
            __m512i top = _mm512_srli_epi32(u, 16);
            __m512i rounded = _mm512_srli_epi32(
                _mm512_add_epi32(_mm512_add_epi32(u, half), _mm512_and_si512(top, one)), 16);
            __m512i nan = _mm512_or_si512(_mm512_and_si512(top, sign), quiet);
            __mmask16 is_nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, magnitude), inf);
            _mm256_storeu_si256((__m256i*)(out + i),
                                _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, is_nan, nan)));
        }
        for (; i < n; i++) out[i] = cg_f32_to_bf16(in[i]);
    }
    #elif defined(__AVX2__)
    #include <immintrin.h>
    static void cg_widen_bf16_n(float* out, const uint16_t* in, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i + 8 <= n; i += 8) {
            __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(in + i)));
            _mm256_storeu_si256((__m256i*)(out + i), _mm256_slli_epi32(h, 16));
        }
        for (; i < n; i++) out[i] = cg_bf16_to_f32(in[i]);
    }
    static inline __m256i cg_round_bf16_x8(__m256i u) {
        const __m256i one = _mm256_set1_epi32(1), half = _mm256_set1_epi32(0x7fff);
        const __m256i magnitude = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
        const __m256i sign = _mm256_set1_epi32(0x8000), quiet = _mm256_set1_epi32(0x7fc0);
        __m256i top = _mm256_srli_epi32(u, 16);
        __m256i rounded = _mm256_srli_epi32(
            _mm256_add_epi32(_mm256_add_epi32(u, half), _mm256_and_si256(top, one)), 16);
        __m256i nan = _mm256_or_si256(_mm256_and_si256(top, sign), quiet);
        __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, magnitude), inf);   /* both < 2^31 */
        return _mm256_blendv_epi8(rounded, nan, is_nan);                              /* 0 .. 0xffff */
    }
    static void cg_round_bf16_n(uint16_t* out, const float* in, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i + 16 <= n; i += 16) {
            __m256i lo = cg_round_bf16_x8(_mm256_loadu_si256((const __m256i*)(in + i)));
            __m256i hi = cg_round_bf16_x8(_mm256_loadu_si256((const __m256i*)(in + i + 8)));
            /* packus works per 128-bit lane: lo0 hi0 lo1 hi1, put back in order by the permute */
            __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xd8);
            _mm256_storeu_si256((__m256i*)(out + i), packed);
        }
        for (; i < n; i++) out[i] = cg_f32_to_bf16(in[i]);
    }
    #else
    static void cg_widen_bf16_n(float* out, const uint16_t* in, Py_ssize_t n) {
        Py_ssize_t i;
        for (i = 0; i < n; i++) out[i] = cg_bf16_to_f32(in[i]);
    }
    static void cg_round_bf16_n(uint16_t* out, const float* in, Py_ssize_t n) {
        Py_ssize_t i;
        for (i = 0; i < n; i++) out[i] = cg_f32_to_bf16(in[i]);
    }
    #endif
    """
    void cg_widen_bf16_n(float* out, const unsigned short* inp, Py_ssize_t n) noexcept nogil
    void cg_round_bf16_n(unsigned short* out, const float* inp, Py_ssize_t n) noexcept nogil


def _round_to_16_bit(const float[::1] values, unsigned short[::1] out, bint bfloat16):
    """Round float32 ``values`` into the bits of float16 (or bfloat16) ``out`` with the block helper that
    the steps use (F16C for float16, AVX2/AVX-512 integer code for bfloat16, where this variant has them)."""
    cdef Py_ssize_t n = values.shape[0]
    if n == 0:
        return
    with nogil:
        if bfloat16:
            cg_round_bf16_n(&out[0], &values[0], n)
        else:
            cg_round_f16_n(&out[0], &values[0], n)


def _widen_16_bit(const unsigned short[::1] bits, float[::1] out, bint bfloat16):
    """Widen the bits of float16 (or bfloat16) values into float32 ``out`` with the block helper that the
    steps use (as _round_to_16_bit)."""
    cdef Py_ssize_t n = bits.shape[0]
    if n == 0:
        return
    with nogil:
        if bfloat16:
            cg_widen_bf16_n(&out[0], &bits[0], n)
        else:
            cg_widen_f16_n(&out[0], &bits[0], n)
