/* Compute kernels of the overhead benchmark (tests/benches/overhead.rs) and of its smoke
 * test (tests/tests/bench_kernels.rs).
 *
 * Every kernel has the same signature, `uint64_t bench_<name>(uint64_t size, uint64_t seed)`,
 * generates its own input from `seed` (so native and instrumented runs see the same data) and
 * returns a checksum of everything it computed, so that a native run and a run under the Vm
 * can be compared. `size` scales the work linearly (the bench uses a large size, the smoke
 * test a small one). Kernels that need memory take it from malloc/calloc and free it again,
 * which also exercises calls from guest code into libc.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))

/* Sizes above these make the kernels return 0 instead of overflowing a size computation. */
#define MAX_ELEMENTS (1ull << 28)
#define MAX_MATRIX_DIM 8192ull

/* 64-bit LCG (Knuth's MMIX constants); the high bits are the good ones. */
static inline uint64_t lcg_next(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s;
}

static inline uint64_t mix64(uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h;
}

/* ---------------------------------------------------------------------------------------- */
/* 1. Recursive Fibonacci: deep call/return traffic. */

static NOINLINE uint64_t fib_rec(uint64_t n) {
    if (n < 2)
        return n;
    return fib_rec(n - 1) + fib_rec(n - 2);
}

/* fib(size); the seed is mixed in afterwards so that it is not constant-folded away. */
uint64_t bench_fib(uint64_t size, uint64_t seed) {
    return fib_rec(size) ^ seed;
}

/* ---------------------------------------------------------------------------------------- */
/* 2. Integer loop: xorshift64 accumulation, `size` iterations. */

uint64_t bench_xorshift(uint64_t size, uint64_t seed) {
    uint64_t x = seed | 1;
    uint64_t acc = 0;
    for (uint64_t i = 0; i < size; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc += x ^ (acc >> 3);
        acc = (acc << 1) | (acc >> 63);
    }
    return acc ^ x;
}

/* ---------------------------------------------------------------------------------------- */
/* 3. Quicksort of `size` 32-bit ints produced by an LCG (own quicksort, not libc qsort). */

static void insertion_sort(uint32_t *a, ptrdiff_t n) {
    for (ptrdiff_t i = 1; i < n; i++) {
        uint32_t v = a[i];
        ptrdiff_t j = i - 1;
        while (j >= 0 && a[j] > v) {
            a[j + 1] = a[j];
            j--;
        }
        a[j + 1] = v;
    }
}

static void quicksort(uint32_t *a, ptrdiff_t n) {
    while (n > 16) {
        /* Median of three as pivot, Hoare partition. */
        uint32_t x = a[0], y = a[n / 2], z = a[n - 1];
        uint32_t pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        ptrdiff_t i = -1, j = n;
        for (;;) {
            do
                i++;
            while (a[i] < pivot);
            do
                j--;
            while (a[j] > pivot);
            if (i >= j)
                break;
            uint32_t t = a[i];
            a[i] = a[j];
            a[j] = t;
        }
        /* Recurse into the smaller half, loop on the larger one. */
        ptrdiff_t left = j + 1;
        if (left < n - left) {
            quicksort(a, left);
            a += left;
            n -= left;
        } else {
            quicksort(a + left, n - left);
            n = left;
        }
    }
    insertion_sort(a, n);
}

uint64_t bench_sort(uint64_t size, uint64_t seed) {
    if (size > MAX_ELEMENTS)
        return 0;
    uint32_t *a = malloc(size * sizeof *a + 1);
    if (!a)
        return 0;
    uint64_t s = seed;
    for (uint64_t i = 0; i < size; i++)
        a[i] = (uint32_t)(lcg_next(&s) >> 32);
    quicksort(a, (ptrdiff_t)size);
    uint64_t h = size;
    uint64_t unsorted = 0;
    for (uint64_t i = 0; i < size; i++) {
        h = mix64(h, a[i]);
        if (i > 0 && a[i - 1] > a[i])
            unsorted++;
    }
    free(a);
    /* An unsorted result changes the checksum in a way no sorted one can hide. */
    return h ^ (unsorted << 56);
}

/* ---------------------------------------------------------------------------------------- */
/* 4. SHA-256 over a 1 MiB buffer filled by an LCG (several passes). */

static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
};

static inline uint32_t ror32(uint32_t x, unsigned r) {
    return (x >> r) | (x << (32 - r));
}

static void sha256_block(uint32_t st[8], const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror32(w[i - 15], 7) ^ ror32(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror32(w[i - 2], 17) ^ ror32(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = st[0], b = st[1], c = st[2], d = st[3];
    uint32_t e = st[4], f = st[5], g = st[6], h = st[7];
    for (int i = 0; i < 64; i++) {
        uint32_t s1 = ror32(e, 6) ^ ror32(e, 11) ^ ror32(e, 25);
        uint32_t ch = (e & f) ^ (~e & g);
        uint32_t t1 = h + s1 + ch + sha256_k[i] + w[i];
        uint32_t s0 = ror32(a, 2) ^ ror32(a, 13) ^ ror32(a, 22);
        uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
        uint32_t t2 = s0 + maj;
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    st[0] += a;
    st[1] += b;
    st[2] += c;
    st[3] += d;
    st[4] += e;
    st[5] += f;
    st[6] += g;
    st[7] += h;
}

/* Full SHA-256 (with padding) of `len` bytes; returns the first 64 bits of the digest. */
static uint64_t sha256(const uint8_t *data, uint64_t len) {
    uint32_t st[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    uint64_t off = 0;
    for (; off + 64 <= len; off += 64)
        sha256_block(st, data + off);
    uint8_t tail[128];
    uint64_t rest = len - off;
    memset(tail, 0, sizeof tail);
    for (uint64_t i = 0; i < rest; i++)
        tail[i] = data[off + i];
    tail[rest] = 0x80;
    uint64_t tail_len = rest + 9 <= 64 ? 64 : 128;
    uint64_t bits = len * 8;
    for (int i = 0; i < 8; i++)
        tail[tail_len - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (uint64_t o = 0; o < tail_len; o += 64)
        sha256_block(st, tail + o);
    return (uint64_t)st[0] << 32 | st[1];
}

/* Buffers of the hashing kernels: a pass covers at most this many bytes of LCG data. */
#define SHA256_BUF_MAX (1u << 20)
#define CRC32_BUF_MAX (4u << 20)

/* `size` bytes hashed in total: SHA-256 over a buffer of min(size, 1 MiB) bytes, repeated
 * until `size` bytes are hashed, each digest written into the buffer before the next pass. */
uint64_t bench_sha256(uint64_t size, uint64_t seed) {
    uint64_t len = size < SHA256_BUF_MAX ? size : SHA256_BUF_MAX;
    uint8_t *buf = malloc(len + 8);
    if (!buf)
        return 0;
    uint64_t s = seed;
    for (uint64_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(lcg_next(&s) >> 56);
    uint64_t h = 0;
    for (uint64_t done = 0; done < size; done += len) {
        uint64_t n = size - done < len ? size - done : len;
        h = mix64(h, sha256(buf, n));
        memcpy(buf, &h, n < 8 ? n : 8);
    }
    free(buf);
    return h;
}

/* Known-answer hook for the smoke test: SHA-256 of `len` bytes at `data`, first 64 bits. */
uint64_t bench_sha256_of(const uint8_t *data, uint64_t len) {
    return sha256(data, len);
}

/* ---------------------------------------------------------------------------------------- */
/* 5. CRC-32 (IEEE, reflected, byte-wise table) over a 4 MiB buffer (several passes). */

static uint32_t crc32_update(const uint32_t table[256], uint32_t crc, const uint8_t *p,
                             uint64_t n) {
    crc = ~crc;
    for (uint64_t i = 0; i < n; i++)
        crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static void crc32_table(uint32_t table[256]) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
}

/* `size` bytes checksummed in total: CRC-32 over a buffer of min(size, 4 MiB) bytes,
 * continued over the same buffer until `size` bytes are covered. */
uint64_t bench_crc32(uint64_t size, uint64_t seed) {
    uint64_t len = size < CRC32_BUF_MAX ? size : CRC32_BUF_MAX;
    uint8_t *buf = malloc(len + 8);
    if (!buf)
        return 0;
    uint64_t s = seed;
    for (uint64_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(lcg_next(&s) >> 56);
    uint32_t table[256];
    crc32_table(table);
    uint32_t crc = 0;
    for (uint64_t done = 0; done < size; done += len) {
        uint64_t n = size - done < len ? size - done : len;
        crc = crc32_update(table, crc, buf, n);
    }
    free(buf);
    return (uint64_t)crc | (size << 32);
}

/* Known-answer hook for the smoke test: CRC-32 of `len` bytes at `data`. */
uint64_t bench_crc32_of(const uint8_t *data, uint64_t len) {
    uint32_t table[256];
    crc32_table(table);
    return crc32_update(table, 0, data, len);
}

/* ---------------------------------------------------------------------------------------- */
/* 6. Bytecode interpreter, threaded dispatch through computed goto (`goto *label`). */

enum {
    OP_LOADI, /* r[a] = imm */
    OP_MOV,   /* r[a] = r[b] */
    OP_ADD,   /* r[a] += r[b] */
    OP_SUB,   /* r[a] -= r[b] */
    OP_MUL,   /* r[a] *= r[b] */
    OP_XOR,   /* r[a] ^= r[b] */
    OP_SHLI,  /* r[a] <<= imm */
    OP_SHRI,  /* r[a] >>= imm */
    OP_ADDI,  /* r[a] += imm */
    OP_JNZ,   /* if r[a] != 0: pc += imm (relative to the next op) */
    OP_JODD,  /* if r[a] & 1: pc += imm */
    OP_HALT,  /* return r[a] */
};

struct bc_op {
    uint8_t op, a, b, pad;
    int32_t imm;
};

static uint64_t bc_run(const struct bc_op *code, uint64_t *r) {
    static void *const dispatch[] = {
        &&op_loadi, &&op_mov, &&op_add,  &&op_sub,  &&op_mul, &&op_xor,
        &&op_shli,  &&op_shri, &&op_addi, &&op_jnz, &&op_jodd, &&op_halt,
    };
    const struct bc_op *pc = code;
#define NEXT goto *dispatch[(++pc)->op]
    goto *dispatch[pc->op];
op_loadi:
    r[pc->a] = (uint64_t)(int64_t)pc->imm;
    NEXT;
op_mov:
    r[pc->a] = r[pc->b];
    NEXT;
op_add:
    r[pc->a] += r[pc->b];
    NEXT;
op_sub:
    r[pc->a] -= r[pc->b];
    NEXT;
op_mul:
    r[pc->a] *= r[pc->b];
    NEXT;
op_xor:
    r[pc->a] ^= r[pc->b];
    NEXT;
op_shli:
    r[pc->a] <<= pc->imm;
    NEXT;
op_shri:
    r[pc->a] >>= pc->imm;
    NEXT;
op_addi:
    r[pc->a] += (uint64_t)(int64_t)pc->imm;
    NEXT;
op_jnz:
    if (r[pc->a] != 0)
        pc += pc->imm;
    NEXT;
op_jodd:
    if (r[pc->a] & 1)
        pc += pc->imm;
    NEXT;
op_halt:
    return r[pc->a];
#undef NEXT
}

/* Runs a loop program of 13 or 14 bytecode ops per iteration, `size` iterations. */
uint64_t bench_interp(uint64_t size, uint64_t seed) {
    /* r0 = counter, r1 = state, r2 = accumulator, r3 = temp, r4 = multiplier, r5 = 1 */
    static const struct bc_op prog[] = {
        /* 0 */ {OP_LOADI, 4, 0, 0, 0x2545F491},
        /* 1 */ {OP_LOADI, 5, 0, 0, 1},
        /* loop: */
        /* 2 */ {OP_MOV, 3, 1, 0, 0},
        /* 3 */ {OP_SHLI, 3, 0, 0, 13},
        /* 4 */ {OP_XOR, 1, 3, 0, 0},
        /* 5 */ {OP_MOV, 3, 1, 0, 0},
        /* 6 */ {OP_SHRI, 3, 0, 0, 7},
        /* 7 */ {OP_XOR, 1, 3, 0, 0},
        /* 8 */ {OP_MOV, 3, 1, 0, 0},
        /* 9 */ {OP_SHLI, 3, 0, 0, 17},
        /* 10 */ {OP_XOR, 1, 3, 0, 0},
        /* 11 */ {OP_JODD, 1, 0, 0, 1}, /* odd state: skip the multiply */
        /* 12 */ {OP_MUL, 2, 4, 0, 0},
        /* 13 */ {OP_ADD, 2, 1, 0, 0},
        /* 14 */ {OP_SUB, 0, 5, 0, 0},
        /* 15 */ {OP_JNZ, 0, 0, 0, -14}, /* back to 2 */
        /* 16 */ {OP_HALT, 2, 0, 0, 0},
    };
    uint64_t r[8] = {0};
    r[0] = size;
    r[1] = seed | 1;
    r[2] = seed;
    if (size == 0)
        return 0;
    uint64_t acc = bc_run(prog, r);
    return acc ^ r[1];
}

/* ---------------------------------------------------------------------------------------- */
/* 7. Function-pointer calls: 8 small functions picked by data, `size` calls. */

typedef uint64_t (*fp_fn)(uint64_t, uint64_t);

static NOINLINE uint64_t fp0(uint64_t x, uint64_t i) { return x * 31 + i; }
static NOINLINE uint64_t fp1(uint64_t x, uint64_t i) { return x ^ (i << 7); }
static NOINLINE uint64_t fp2(uint64_t x, uint64_t i) { return (x >> 3) + i * 17 + 1; }
static NOINLINE uint64_t fp3(uint64_t x, uint64_t i) { return x - (i ^ 0x5555); }
static NOINLINE uint64_t fp4(uint64_t x, uint64_t i) { return (x << 5) | (x >> 59); }
static NOINLINE uint64_t fp5(uint64_t x, uint64_t i) { return x + (x >> 11) + i; }
static NOINLINE uint64_t fp6(uint64_t x, uint64_t i) { return x * 0x9e3779b97f4a7c15ULL; }
static NOINLINE uint64_t fp7(uint64_t x, uint64_t i) { return ~x + (i & 0xff); }

/* Writable, so the compiler cannot turn the indirect calls into direct ones. */
static fp_fn fp_table[8] = {fp0, fp1, fp2, fp3, fp4, fp5, fp6, fp7};

uint64_t bench_fptr(uint64_t size, uint64_t seed) {
    uint64_t x = seed | 1;
    uint64_t sel = seed;
    for (uint64_t i = 0; i < size; i++) {
        sel = sel * 6364136223846793005ULL + 1442695040888963407ULL;
        x = fp_table[sel >> 61](x, i);
    }
    return x;
}

/* ---------------------------------------------------------------------------------------- */
/* 8. libc in a loop: small memcpy + strlen, `size` iterations. */

uint64_t bench_libc(uint64_t size, uint64_t seed) {
    char src[512];
    char dst[128];
    uint64_t s = seed;
    for (size_t i = 0; i < sizeof src; i++) {
        uint64_t v = lcg_next(&s) >> 56;
        /* Some NULs inside, so strlen is not simply the copied length. */
        src[i] = (v % 41 == 0) ? 0 : (char)('a' + v % 26);
    }
    uint64_t acc = 0;
    for (uint64_t i = 0; i < size; i++) {
        uint64_t v = lcg_next(&s);
        size_t len = 1 + (size_t)((v >> 33) % 96);
        size_t off = (size_t)((v >> 45) % (sizeof src - 96));
        /* Hide the bound of `len`, or the compiler expands memcpy inline. */
        __asm__("" : "+r"(len));
        memcpy(dst, src + off, len);
        dst[len] = 0;
        size_t n = strlen(dst);
        acc = acc * 33 + n + (unsigned char)dst[len / 2];
    }
    return acc;
}

/* ---------------------------------------------------------------------------------------- */
/* 9. Integer matrix multiply, two `size` x `size` u32 matrices. */

uint64_t bench_matmul(uint64_t size, uint64_t seed) {
    if (size > MAX_MATRIX_DIM)
        return 0;
    size_t n = (size_t)size;
    uint32_t *a = malloc(n * n * sizeof *a + 4);
    uint32_t *b = malloc(n * n * sizeof *b + 4);
    uint32_t *c = calloc(n * n + 1, sizeof *c);
    uint64_t h = 0;
    if (a && b && c) {
        uint64_t s = seed;
        for (size_t i = 0; i < n * n; i++) {
            a[i] = (uint32_t)(lcg_next(&s) >> 40);
            b[i] = (uint32_t)(lcg_next(&s) >> 40);
        }
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < n; k++) {
                uint32_t aik = a[i * n + k];
                for (size_t j = 0; j < n; j++)
                    c[i * n + j] += aik * b[k * n + j];
            }
        h = n;
        for (size_t i = 0; i < n * n; i++)
            h = mix64(h, c[i]);
    }
    free(a);
    free(b);
    free(c);
    return h;
}

/* ---------------------------------------------------------------------------------------- */
/* 10. Open-addressing hash table: `size` inserts/updates, then `size` lookups. */

struct ht_slot {
    uint64_t key; /* 0 = empty */
    uint64_t value;
};

uint64_t bench_hashtab(uint64_t size, uint64_t seed) {
    if (size > MAX_ELEMENTS)
        return 0;
    uint64_t cap = 16;
    while (cap < 2 * size)
        cap <<= 1;
    struct ht_slot *t = calloc(cap, sizeof *t);
    if (!t)
        return 0;
    uint64_t mask = cap - 1;
    uint64_t s = seed;
    uint64_t distinct = 0;
    /* Keys drawn from a range of about size/2 values: many updates of existing keys. */
    uint64_t range = size / 2 + 1;
    for (uint64_t i = 0; i < size; i++) {
        uint64_t key = 1 + (lcg_next(&s) >> 20) % range;
        uint64_t hsh = key * 0x9e3779b97f4a7c15ULL;
        uint64_t idx = hsh >> 20 & mask;
        while (t[idx].key != 0 && t[idx].key != key)
            idx = (idx + 1) & mask;
        if (t[idx].key == 0) {
            t[idx].key = key;
            distinct++;
        }
        t[idx].value += i;
    }
    uint64_t acc = distinct;
    for (uint64_t i = 0; i < size; i++) {
        uint64_t key = 1 + (lcg_next(&s) >> 20) % (2 * range);
        uint64_t hsh = key * 0x9e3779b97f4a7c15ULL;
        uint64_t idx = hsh >> 20 & mask;
        while (t[idx].key != 0 && t[idx].key != key)
            idx = (idx + 1) & mask;
        acc = mix64(acc, t[idx].key == key ? t[idx].value : 0);
    }
    free(t);
    return acc;
}
