/* Differential suite, guest code calling libc (run natively through the exec broker):
 * malloc/calloc/realloc/free, memcpy/memmove/memset/memcmp, qsort with a guest comparator,
 * snprintf, strtol (errno), plus alloca and VLAs. */
#include <alloca.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Allocates n blocks of varying sizes, fills and checksums them, grows some with realloc,
 * frees them all. Returns the checksum (addresses never enter it), or ~0 on failure. */
uint64_t diff_malloc_churn(uint32_t n) {
    uint8_t **blocks = calloc(n + 1, sizeof *blocks);
    if (!blocks)
        return ~0ull;
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint32_t i = 0; i < n; i++) {
        size_t sz = 1 + (i * 37u) % 3000;
        blocks[i] = malloc(sz);
        if (!blocks[i])
            return ~0ull;
        for (size_t k = 0; k < sz; k++)
            blocks[i][k] = (uint8_t)(k * 7 + i);
        if (i % 3 == 0) {
            uint8_t *g = realloc(blocks[i], sz * 2 + 5);
            if (!g)
                return ~0ull;
            memset(g + sz, (int)(i & 0xff), sz + 5);
            blocks[i] = g;
            sz = sz * 2 + 5;
        }
        for (size_t k = 0; k < sz; k += 13)
            h = (h ^ blocks[i][k]) * 0x100000001b3ull;
        if (i % 4 == 1) {
            free(blocks[i]);
            blocks[i] = 0;
        }
    }
    for (uint32_t i = 0; i < n; i++)
        free(blocks[i]);
    free(blocks);
    return h;
}

/* memcpy, overlapping memmove both ways, memset, memcmp and memchr on dst[0..2n+16]. */
int64_t diff_mem_ops(const uint8_t *src, uint8_t *dst, size_t n) {
    memcpy(dst, src, n);
    memmove(dst + 3, dst, n / 2);
    memmove(dst, dst + 5, n / 3);
    memset(dst + n, 0xa5, n / 4 + 1);
    int64_t r = memcmp(dst, src, n) < 0 ? -1 : memcmp(dst, src, n) > 0 ? 1 : 0;
    const uint8_t *p = memchr(dst, 0x42, n);
    r = r * 1000003 + (p ? (int64_t)(p - dst) : -1);
    return r;
}

/* A comparator in the guest, called by libc's qsort. Orders by key, then by index. */
struct diff_rec {
    int64_t key;
    int64_t index;
};
static int diff_cmp_rec(const void *pa, const void *pb) {
    const struct diff_rec *a = pa, *b = pb;
    if (a->key != b->key)
        return a->key < b->key ? -1 : 1;
    return (a->index > b->index) - (a->index < b->index);
}
static int diff_cmp_u32_desc(const void *pa, const void *pb) {
    uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
    return (a < b) - (a > b);
}

/* Sorts recs[0..n] ascending and words[0..m] descending with qsort. Returns a checksum of
 * the order. */
uint64_t diff_qsort(struct diff_rec *recs, size_t n, uint32_t *words, size_t m) {
    qsort(recs, n, sizeof *recs, diff_cmp_rec);
    qsort(words, m, sizeof *words, diff_cmp_u32_desc);
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++)
        h = h * 31 + (uint64_t)recs[i].index;
    for (size_t i = 0; i < m; i++)
        h = h * 17 + words[i];
    return h;
}

/* snprintf with many conversions (integers, doubles, strings, chars, padding): more than
 * six arguments and vector registers for the varargs. Returns what snprintf returns. */
int32_t diff_snprintf(char *buf, size_t cap, int64_t a, uint32_t b, int32_t c) {
    double d = (double)a / 3.0;
    return snprintf(buf, cap, "a=%lld b=%#x c=%+d d=%.5f s=%s ch=%c |%-6d|%08.3e|%5.2s|%%", (long long)a,
                    b, c, d, (c & 1) ? "odd" : "even", 'A' + (int)(b % 26), c, d * 1e6, "xyz");
}

/* strtol: returns the value and stores the end offset; errno is left as strtol sets it. */
int64_t diff_strtol(const char *s, int32_t base, int64_t *end_offset) {
    char *end;
    long v = strtol(s, &end, base);
    *end_offset = end - s;
    return v;
}

/* strtoul on an array of strings, returning the number of ERANGE results seen via errno. */
int32_t diff_strtoul_count_erange(const char *const *strs, size_t n, uint64_t *values) {
    int32_t ranges = 0;
    for (size_t i = 0; i < n; i++) {
        errno = 0;
        values[i] = strtoul(strs[i], 0, 0);
        if (errno == ERANGE)
            ranges++;
    }
    return ranges;
}

/* Consumes a buffer through a pointer so VLA/alloca contents must really be in memory. */
__attribute__((noipa)) int64_t diff_consume(const int64_t *v, size_t n) {
    int64_t s = 0;
    for (size_t i = 0; i < n; i++)
        s = s * 3 + v[i];
    return s;
}

/* A VLA sized by the argument, and a VLA per loop iteration of varying size. */
int64_t diff_vla(int32_t n) {
    if (n < 1)
        n = 1;
    int64_t v[n];
    for (int32_t i = 0; i < n; i++)
        v[i] = (int64_t)i * i ^ n;
    int64_t r = diff_consume(v, (size_t)n);
    for (int32_t k = 1; k <= 8; k++) {
        int32_t m = (n * k) % 97 + 1;
        int64_t w[m];
        for (int32_t i = 0; i < m; i++)
            w[i] = v[i % n] + k;
        r ^= diff_consume(w, (size_t)m) << k;
    }
    return r;
}

/* alloca of n bytes (n may be 0), plus alloca in a loop. */
uint64_t diff_alloca(size_t n) {
    uint8_t *p = alloca(n + 1);
    for (size_t i = 0; i <= n; i++)
        p[i] = (uint8_t)(i * 13 + n);
    uint64_t h = 0;
    for (size_t i = 0; i <= n; i++)
        h = h * 31 + p[i];
    for (int k = 0; k < 4; k++) {
        int64_t *q = alloca(sizeof(int64_t) * (size_t)(k + 2));
        for (int i = 0; i < k + 2; i++)
            q[i] = (int64_t)(h >> i) + k;
        h += (uint64_t)diff_consume(q, (size_t)(k + 2));
    }
    return h;
}

/* The floating point environment and errno as the guest sees them around native libc and
 * libm calls: MXCSR and x87 exception flags after exact arithmetic (none may be set),
 * errno from log, strtod and strtol, and an errno the guest set itself surviving its own
 * instructions. out[0..12]. Returns a value computed from a. */
#include <fenv.h>
#include <immintrin.h>
#include <math.h>
int64_t diff_fp_env(int64_t a, int64_t *out) {
    feclearexcept(FE_ALL_EXCEPT);
    volatile double x = (double)(a & 0xffff) * 2.0; /* exact: no flag */
    volatile double y = x + 1.0;                     /* exact: no flag */
    out[0] = (int64_t)(_mm_getcsr() & 0x3f);
    out[1] = fetestexcept(FE_ALL_EXCEPT);
    unsigned short sw;
    __asm__ volatile("fnstsw %0" : "=m"(sw));
    out[2] = sw & 0x3f;
    errno = 0;
    volatile double l = log((double)(a % 3)); /* 0: -inf and ERANGE; < 0: nan and EDOM */
    out[3] = errno;
    out[4] = fetestexcept(FE_ALL_EXCEPT);
    errno = 0;
    char *end;
    volatile double d = strtod((a & 1) ? "1e-400" : "2.5e-3", &end); /* underflow: ERANGE */
    out[5] = errno;
    double dd = d;
    __builtin_memcpy(&out[6], &dd, 8);
    errno = 0;
    out[7] = strtol((a & 2) ? "99999999999999999999" : "-42", &end, 10);
    out[8] = errno;
    errno = 1234;
    volatile int64_t k = a;
    for (int i = 0; i < 8; i++)
        k = k * 3 + i;
    out[9] = errno;
    out[10] = k;
    feclearexcept(FE_ALL_EXCEPT);
    volatile double z = y * 0.5;
    out[11] = (int64_t)(_mm_getcsr() & 0x3f) | ((int64_t)fetestexcept(FE_ALL_EXCEPT) << 8);
    double ll = l;
    return (int64_t)z + (ll != ll ? 1 : 0);
}
