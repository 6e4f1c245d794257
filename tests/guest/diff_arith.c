/* Differential suite, integer side: arithmetic, flags, overflow builtins, carry chains,
 * divisions, 128-bit products, bit tricks and loops. Every function is pure (or writes only
 * its out buffer) so native and instrumented runs can be compared byte for byte. */
#include <stdint.h>
#include <immintrin.h>

/* Shifts and rotates by variable counts, signed/unsigned compares feeding cmov and setcc. */
uint64_t diff_arith_mix(uint64_t a, uint64_t b, uint64_t c) {
    uint64_t r = a * 0x9E3779B97F4A7C15ull;
    r ^= (a >> (b & 63)) | (b << (c & 63));
    r += (int64_t)a < (int64_t)b ? c : ~c;
    r -= (uint64_t)((int64_t)c >> (a & 63));
    r = (r << 13) | (r >> 51);
    r += (uint64_t)(a == b) + 2 * (uint64_t)(a > c) + 4 * (uint64_t)((int64_t)b <= (int64_t)c);
    r ^= (uint64_t)((uint32_t)a * (uint32_t)b);
    r += (uint64_t)(int64_t)(int32_t)(a ^ c);
    r += (uint64_t)(int64_t)(int16_t)(b >> 7) * 3;
    r ^= (uint64_t)(uint8_t)(c + a) << 40;
    return r;
}

/* One bit per condition code, computed from a single pair of operands at several widths. */
uint32_t diff_compare_all(int64_t a, int64_t b) {
    uint64_t ua = (uint64_t)a, ub = (uint64_t)b;
    uint32_t r = 0;
    r |= (uint32_t)(a == b) << 0;
    r |= (uint32_t)(a != b) << 1;
    r |= (uint32_t)(a < b) << 2;
    r |= (uint32_t)(a <= b) << 3;
    r |= (uint32_t)(a > b) << 4;
    r |= (uint32_t)(a >= b) << 5;
    r |= (uint32_t)(ua < ub) << 6;
    r |= (uint32_t)(ua <= ub) << 7;
    r |= (uint32_t)(ua > ub) << 8;
    r |= (uint32_t)(ua >= ub) << 9;
    r |= (uint32_t)((int32_t)a < (int32_t)b) << 10;
    r |= (uint32_t)((uint32_t)a < (uint32_t)b) << 11;
    r |= (uint32_t)((int16_t)a < (int16_t)b) << 12;
    r |= (uint32_t)((int8_t)a == (int8_t)b) << 13;
    r |= (uint32_t)((a & b) == 0) << 14;
    r |= (uint32_t)((a ^ b) < 0) << 15;
    r |= (uint32_t)__builtin_parityll(ua & ub) << 16;
    r |= (uint32_t)((uint8_t)a > (uint8_t)b) << 17;
    return r;
}

/* Overflow builtins: bit i of the result says operation i overflowed; the wrapped values go
 * to out[0..8]. */
uint64_t diff_overflow_flags(int64_t a, int64_t b, uint64_t *out) {
    int64_t s;
    uint64_t u;
    int32_t s32;
    uint32_t u32;
    uint64_t flags = 0;
    flags |= (uint64_t)__builtin_add_overflow(a, b, &s) << 0;
    out[0] = (uint64_t)s;
    flags |= (uint64_t)__builtin_sub_overflow(a, b, &s) << 1;
    out[1] = (uint64_t)s;
    flags |= (uint64_t)__builtin_mul_overflow(a, b, &s) << 2;
    out[2] = (uint64_t)s;
    flags |= (uint64_t)__builtin_add_overflow((uint64_t)a, (uint64_t)b, &u) << 3;
    out[3] = u;
    flags |= (uint64_t)__builtin_sub_overflow((uint64_t)a, (uint64_t)b, &u) << 4;
    out[4] = u;
    flags |= (uint64_t)__builtin_mul_overflow((uint64_t)a, (uint64_t)b, &u) << 5;
    out[5] = u;
    flags |= (uint64_t)__builtin_add_overflow((int32_t)a, (int32_t)b, &s32) << 6;
    out[6] = (uint32_t)s32;
    flags |= (uint64_t)__builtin_mul_overflow((uint32_t)a, (uint32_t)b, &u32) << 7;
    out[7] = u32;
    return flags;
}

/* 256-bit add (adc chain from __int128) and subtract (sbb chain from _subborrow_u64) of
 * little-endian 4-limb numbers: sum to out[0..4], difference to out[4..8]. Returns
 * carry | borrow << 1. */
uint64_t diff_u256_addsub(const uint64_t *a, const uint64_t *b, uint64_t *out) {
    uint64_t *sum = out, *diff = out + 4;
    unsigned __int128 t;
    t = (unsigned __int128)a[0] + b[0];
    sum[0] = (uint64_t)t;
    t = (unsigned __int128)a[1] + b[1] + (uint64_t)(t >> 64);
    sum[1] = (uint64_t)t;
    t = (unsigned __int128)a[2] + b[2] + (uint64_t)(t >> 64);
    sum[2] = (uint64_t)t;
    t = (unsigned __int128)a[3] + b[3] + (uint64_t)(t >> 64);
    sum[3] = (uint64_t)t;
    uint64_t carry = (uint64_t)(t >> 64);

    unsigned long long d0, d1, d2, d3;
    unsigned char bw = _subborrow_u64(0, a[0], b[0], &d0);
    bw = _subborrow_u64(bw, a[1], b[1], &d1);
    bw = _subborrow_u64(bw, a[2], b[2], &d2);
    bw = _subborrow_u64(bw, a[3], b[3], &d3);
    diff[0] = d0;
    diff[1] = d1;
    diff[2] = d2;
    diff[3] = d3;
    return carry | (uint64_t)bw << 1;
}

/* 256 x 64 -> 320-bit multiply (mul + adc), out[0..5]. Returns the top limb. */
uint64_t diff_u256_mul_u64(const uint64_t *a, uint64_t m, uint64_t *out) {
    uint64_t carry = 0;
    for (int i = 0; i < 4; i++) {
        unsigned __int128 p = (unsigned __int128)a[i] * m + carry;
        out[i] = (uint64_t)p;
        carry = (uint64_t)(p >> 64);
    }
    out[4] = carry;
    return carry;
}

/* Divisions by variables: signed/unsigned, 64/32/16/8-bit quotients and remainders into
 * out[0..12]. Divisor 0 and INT_MIN / -1 are avoided by the guards. Returns q64 + r64. */
int64_t diff_divisions(int64_t a, int64_t b, int64_t *out) {
    if (b == 0)
        b = 1;
    if (b == -1 && a == INT64_MIN)
        b = 1;
    out[0] = a / b;
    out[1] = a % b;
    out[2] = (int64_t)((uint64_t)a / (uint64_t)b);
    out[3] = (int64_t)((uint64_t)a % (uint64_t)b);
    int32_t a32 = (int32_t)a, b32 = (int32_t)b;
    if (b32 == 0)
        b32 = 3;
    if (b32 == -1 && a32 == INT32_MIN)
        b32 = 5;
    out[4] = a32 / b32;
    out[5] = a32 % b32;
    out[6] = (uint32_t)a32 / (uint32_t)b32;
    out[7] = (uint32_t)a32 % (uint32_t)b32;
    int16_t a16 = (int16_t)a, b16 = (int16_t)b;
    if (b16 == 0 || b16 == -1)
        b16 = 7;
    out[8] = a16 / b16;
    out[9] = (uint16_t)a16 % (uint16_t)b16;
    uint8_t a8 = (uint8_t)a, b8 = (uint8_t)b;
    if (b8 == 0)
        b8 = 9;
    out[10] = a8 / b8;
    out[11] = a8 % b8;
    return out[0] + out[1];
}

/* 128-bit products and a 128-bit division (libgcc's __udivti3): out[0..6]. */
uint64_t diff_mul128(uint64_t a, uint64_t b, uint64_t *out) {
    unsigned __int128 p = (unsigned __int128)a * b;
    out[0] = (uint64_t)p;
    out[1] = (uint64_t)(p >> 64);
    __int128 s = (__int128)(int64_t)a * (int64_t)b;
    out[2] = (uint64_t)s;
    out[3] = (uint64_t)((unsigned __int128)s >> 64);
    unsigned __int128 n = ((unsigned __int128)a << 64) | b;
    unsigned __int128 d = (unsigned __int128)((a >> 17) | 1) * 3;
    unsigned __int128 q = n / d;
    out[4] = (uint64_t)q;
    out[5] = (uint64_t)(q >> 64);
    out[6] = (uint64_t)(n % d);
    return out[1] ^ out[3];
}

/* Bit builtins without special target features (popcount via libgcc or a sequence). */
uint64_t diff_bits(uint64_t x, uint64_t *out) {
    out[0] = (uint64_t)__builtin_popcountll(x);
    out[1] = x ? (uint64_t)__builtin_clzll(x) : 64;
    out[2] = x ? (uint64_t)__builtin_ctzll(x) : 64;
    out[3] = __builtin_bswap64(x);
    out[4] = __builtin_bswap32((uint32_t)x);
    out[5] = (uint64_t)__builtin_parityll(x);
    out[6] = (x << 17) | (x >> 47);
    out[7] = x & (0 - x);
    out[8] = (uint64_t)__builtin_clrsbll((long long)x);
    out[9] = __builtin_bswap16((uint16_t)x);
    out[10] = (uint64_t)__builtin_ffsll((long long)x);
    out[11] = (uint64_t)__builtin_popcount((uint32_t)(x >> 32));
    return out[0] * 131 + out[1] * 17 + out[2];
}

/* The same with popcnt/lzcnt/tzcnt and BMI1/BMI2 instructions (pext, pdep, bzhi, shlx). */
__attribute__((target("popcnt,lzcnt,bmi,bmi2"))) uint64_t diff_bits_bmi(uint64_t x, uint64_t m,
                                                                        uint64_t *out) {
    out[0] = (uint64_t)__builtin_popcountll(x);
    out[1] = _lzcnt_u64(x);
    out[2] = _tzcnt_u64(x);
    out[3] = _pext_u64(x, m);
    out[4] = _pdep_u64(x, m);
    out[5] = _bzhi_u64(x, (unsigned)(m & 0xff));
    out[6] = _blsr_u64(x);
    out[7] = _andn_u64(m, x);
    out[8] = x << (m & 63);
    out[9] = (uint64_t)((int64_t)x >> (m & 63));
    out[10] = _blsi_u64(x) ^ _blsmsk_u64(m);
    unsigned long long hi;
    out[11] = _mulx_u64(x, m, &hi);
    out[12] = hi;
    return out[3] ^ out[4];
}

/* Nested loops, early exit, do/while and a clear-lowest-bit loop. */
uint64_t diff_loops(uint32_t n) {
    uint64_t acc = 0x12345;
    for (uint32_t i = 0; i < n; i++) {
        for (uint32_t j = 0; j <= i % 7; j++)
            acc += (uint64_t)i * j ^ (acc >> 3);
        if ((acc & 0xfff) == 0x42)
            break;
    }
    uint32_t k = n;
    do {
        acc = acc * 31 + k;
    } while (k-- > 0 && k > n / 2);
    while (n) {
        acc ^= n;
        n &= n - 1;
    }
    return acc;
}

/* Collatz step count: a data-dependent loop with a hard-to-predict branch. */
uint32_t diff_collatz_steps(uint64_t x) {
    uint32_t steps = 0;
    if (x == 0)
        return 0;
    while (x != 1) {
        x = (x & 1) ? 3 * x + 1 : x >> 1;
        steps++;
    }
    return steps;
}
