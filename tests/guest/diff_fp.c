/* Differential suite, floating point and vectors: SSE doubles, MXCSR rounding, AVX2,
 * AVX-512 (masks, byte compares), x87 long double math and x87 rounding control. Results go
 * to out buffers (vm.call returns rax only). */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

/* Scalar double math: arithmetic, sqrt, min/max, conversions, a polynomial; out[0..12]. */
void diff_sse_double(int64_t a, int64_t b, double *out) {
    double x = (double)a / 7.0, y = (double)b * 0.125 + 1.5;
    out[0] = x + y;
    out[1] = x * y;
    out[2] = x / y; /* inf or nan for some inputs: compared as bits */
    out[3] = _mm_cvtsd_f64(_mm_sqrt_sd(_mm_setzero_pd(), _mm_set_sd(x < 0 ? -x : x)));
    out[4] = x < y ? x : y;
    out[5] = x > y ? x : y;
    out[6] = (double)(int64_t)(x * 1000.0 / (1.0 + (y < 0 ? -y : y)));
    out[7] = (double)(float)x;
    double p = 0;
    for (int i = 0; i < 8; i++)
        p = p * x + (double)(i + 1) * 0.25;
    out[8] = p;
    out[9] = (double)(uint64_t)a;
    out[10] = (double)(uint32_t)b * 1e-3;
    out[11] = x - y * 3.0;
    out[12] = _mm_cvtsd_f64(_mm_sqrt_sd(_mm_setzero_pd(), _mm_set_sd(y))); /* nan if y < 0 */
}

/* Dot product, sum of squares and a running max of two double arrays; out[0..3]. */
void diff_sse_arrays(const double *a, const double *b, size_t n, double *out) {
    double dot = 0, sq = 0, mx = -1e308;
    for (size_t i = 0; i < n; i++) {
        dot += a[i] * b[i];
        sq += a[i] * a[i];
        mx = a[i] - b[i] > mx ? a[i] - b[i] : mx;
    }
    out[0] = dot;
    out[1] = sq;
    out[2] = mx;
}

/* Rounds a/3 under each MXCSR rounding mode (cvtsd2si), plus a division result per mode;
 * restores the caller's MXCSR. out[0..8]. */
void diff_mxcsr_round(int64_t a, int64_t *out) {
    unsigned int old = _mm_getcsr();
    volatile double x = (double)a / 3.0;
    for (unsigned mode = 0; mode < 4; mode++) {
        _mm_setcsr((old & ~0x6000u) | (mode << 13));
        out[mode] = _mm_cvtsd_si64(_mm_set_sd(x));
        volatile double q = x / 7.0;
        double qq = q;
        __builtin_memcpy(&out[4 + mode], &qq, 8);
    }
    _mm_setcsr(old);
}

/* AVX2 integer kernel: out[i] = a[i]*b[i] + max(a[i], b[i]) with 8 lanes per step, a byte
 * shuffle and a lane permute; summary[0..4] gets horizontal sums. */
__attribute__((target("avx2"))) void diff_avx2_kernel(const int32_t *a, const int32_t *b,
                                                      int32_t *out, size_t n, int64_t *summary) {
    __m256i acc = _mm256_setzero_si256();
    __m256i mix = _mm256_setzero_si256();
    const __m256i perm = _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0);
    const __m256i shuf = _mm256_setr_epi8(3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12, 3,
                                          2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i va = _mm256_loadu_si256((const __m256i *)(a + i));
        __m256i vb = _mm256_loadu_si256((const __m256i *)(b + i));
        __m256i r = _mm256_add_epi32(_mm256_mullo_epi32(va, vb), _mm256_max_epi32(va, vb));
        _mm256_storeu_si256((__m256i *)(out + i), r);
        acc = _mm256_add_epi32(acc, r);
        mix = _mm256_xor_si256(_mm256_permutevar8x32_epi32(mix, perm), _mm256_shuffle_epi8(r, shuf));
    }
    for (; i < n; i++)
        out[i] = a[i] * b[i] + (a[i] > b[i] ? a[i] : b[i]);
    int32_t lanes[8], mixes[8];
    _mm256_storeu_si256((__m256i *)lanes, acc);
    _mm256_storeu_si256((__m256i *)mixes, mix);
    int64_t s = 0, m = 0;
    for (int k = 0; k < 8; k++) {
        s += lanes[k];
        m = m * 3 + mixes[k];
    }
    summary[0] = s;
    summary[1] = m;
    summary[2] = _mm256_movemask_epi8(_mm256_cmpgt_epi32(acc, mix));
    summary[3] = (int64_t)i;
}

/* AVX2 + FMA double kernel: out[i] = x[i] * k + y[i] (fused), and the sum into *sum. */
__attribute__((target("avx2,fma"))) void diff_avx2_fma(const double *x, const double *y,
                                                       double *out, size_t n, int64_t k,
                                                       double *sum) {
    __m256d vk = _mm256_set1_pd((double)k * 0.25);
    __m256d vs = _mm256_setzero_pd();
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m256d r = _mm256_fmadd_pd(_mm256_loadu_pd(x + i), vk, _mm256_loadu_pd(y + i));
        _mm256_storeu_pd(out + i, r);
        vs = _mm256_add_pd(vs, r);
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, vs);
    double s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (; i < n; i++) {
        out[i] = x[i] * ((double)k * 0.25) + y[i];
        s += out[i];
    }
    *sum = s;
}

/* AVX-512 byte kernel: counts bytes equal to `needle` and bytes above it with k-mask
 * compares, handles the tail with a masked load, and writes a masked min/max map to
 * out[0..n]. Returns count_eq | count_gt << 32. */
__attribute__((target("avx512f,avx512bw"))) uint64_t diff_avx512_bytes(const uint8_t *buf,
                                                                       size_t n, uint8_t needle,
                                                                       uint8_t *out) {
    __m512i vn = _mm512_set1_epi8((char)needle);
    uint64_t eq = 0, gt = 0;
    size_t i = 0;
    while (i < n) {
        size_t left = n - i;
        __mmask64 m = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
        __m512i v = _mm512_maskz_loadu_epi8(m, buf + i);
        __mmask64 e = _mm512_mask_cmpeq_epi8_mask(m, v, vn);
        __mmask64 g = _mm512_mask_cmpgt_epu8_mask(m, v, vn);
        eq += (uint64_t)__builtin_popcountll(e);
        gt += (uint64_t)__builtin_popcountll(g);
        __m512i r = _mm512_mask_blend_epi8(g, _mm512_min_epu8(v, vn), _mm512_subs_epu8(v, vn));
        r = _mm512_mask_mov_epi8(r, e, _mm512_set1_epi8(0x55));
        _mm512_mask_storeu_epi8(out + i, m, r);
        i += 64;
    }
    return eq | gt << 32;
}

/* AVX-512F dword kernel: masked adds driven by compares, a compress store and a reduction.
 * out[0..n] gets the elements of a greater than b, compressed; returns their count, and
 * summary[0..2] the masked reductions. */
__attribute__((target("avx512f"))) uint64_t diff_avx512_dwords(const int32_t *a, const int32_t *b,
                                                               size_t n, int32_t *out,
                                                               int64_t *summary) {
    __m512i acc = _mm512_setzero_si512();
    size_t count = 0;
    int64_t neg = 0;
    for (size_t i = 0; i < n; i += 16) {
        size_t left = n - i;
        __mmask16 m = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
        __m512i va = _mm512_maskz_loadu_epi32(m, a + i);
        __m512i vb = _mm512_maskz_loadu_epi32(m, b + i);
        __mmask16 gt = _mm512_mask_cmpgt_epi32_mask(m, va, vb);
        acc = _mm512_mask_add_epi32(acc, gt, acc, _mm512_sub_epi32(va, vb));
        _mm512_mask_compressstoreu_epi32(out + count, gt, va);
        count += (size_t)__builtin_popcount(gt);
        __mmask16 lt0 = _mm512_mask_cmplt_epi32_mask(m, va, _mm512_setzero_si512());
        neg += _mm512_mask_reduce_add_epi32(lt0, va);
    }
    summary[0] = _mm512_reduce_add_epi32(acc);
    summary[1] = neg;
    summary[2] = _mm512_reduce_max_epi32(acc);
    return count;
}

/* x87 long double math: arithmetic, fsqrt, fsin, fyl2x, frndint, fscale, integer loads and
 * stores. out[0..10] (16-byte slots, 10 significant bytes). */
void diff_x87(int64_t a, int64_t b, long double *out) {
    long double x = (long double)a / 3.0L, y = (long double)b + 0.5L;
    out[0] = x * y;
    out[1] = x / y;
    out[2] = x + y * y;
    long double ax = x < 0 ? -x : x, r;
    __asm__("fsqrt" : "=t"(r) : "0"(ax));
    out[3] = r;
    __asm__("fsin" : "=t"(r) : "0"(x / 1000.0L));
    out[4] = r;
    __asm__("fyl2x" : "=t"(r) : "0"(ax + 1.0L), "u"(y) : "st(1)");
    out[5] = r;
    __asm__("frndint" : "=t"(r) : "0"(x * 1.75L));
    out[6] = r;
    __asm__("fscale" : "=t"(r) : "0"(y), "u"((long double)(a & 15)));
    out[7] = r;
    out[8] = (long double)(uint64_t)b;
    out[9] = (long double)(int64_t)(x * 64.0L);
}

/* x87 rounding control: fistp of a/3 under each rounding mode via fldcw; restores the
 * caller's control word. out[0..4]. */
void diff_x87_round(int64_t a, int64_t *out) {
    unsigned short old, cw;
    __asm__ volatile("fnstcw %0" : "=m"(old));
    long double x = (long double)a / 3.0L;
    for (unsigned mode = 0; mode < 4; mode++) {
        cw = (unsigned short)((old & ~0x0c00u) | (mode << 10));
        int64_t v;
        __asm__ volatile("fldcw %1\n\tfistpll %0" : "=m"(v) : "m"(cw), "t"(x) : "st");
        out[mode] = v;
    }
    __asm__ volatile("fldcw %0" : : "m"(old));
}
