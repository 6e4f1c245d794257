/* Differential suite, algorithms written in C: SHA-256, CRC-32 (table and bitwise), string
 * functions, insertion sort and quicksort, matrix multiply, an open-addressing hash table. */
#include <stddef.h>
#include <stdint.h>

/* ---- SHA-256 ------------------------------------------------------------------------ */

static const uint32_t diff_sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline uint32_t diff_ror(uint32_t x, unsigned n) { return (x >> n) | (x << (32 - n)); }

static void diff_sha_block(uint32_t h[8], const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
               p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = diff_ror(w[i - 15], 7) ^ diff_ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = diff_ror(w[i - 2], 17) ^ diff_ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t S1 = diff_ror(e, 6) ^ diff_ror(e, 11) ^ diff_ror(e, 25);
        uint32_t ch = (e & f) ^ (~e & g);
        uint32_t t1 = hh + S1 + ch + diff_sha_k[i] + w[i];
        uint32_t S0 = diff_ror(a, 2) ^ diff_ror(a, 13) ^ diff_ror(a, 22);
        uint32_t mj = (a & b) ^ (a & c) ^ (b & c);
        uint32_t t2 = S0 + mj;
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

/* SHA-256 of data[0..len] into digest[0..32]. Returns the number of blocks processed. */
uint64_t diff_sha256(const uint8_t *data, size_t len, uint8_t *digest) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    uint64_t blocks = 0;
    size_t off = 0;
    for (; off + 64 <= len; off += 64, blocks++)
        diff_sha_block(h, data + off);
    uint8_t last[128];
    size_t rest = len - off;
    for (size_t i = 0; i < rest; i++)
        last[i] = data[off + i];
    last[rest] = 0x80;
    size_t total = rest + 1 + 8 <= 64 ? 64 : 128;
    for (size_t i = rest + 1; i < total - 8; i++)
        last[i] = 0;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        last[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t o = 0; o < total; o += 64, blocks++)
        diff_sha_block(h, last + o);
    for (int i = 0; i < 8; i++) {
        digest[4 * i] = (uint8_t)(h[i] >> 24);
        digest[4 * i + 1] = (uint8_t)(h[i] >> 16);
        digest[4 * i + 2] = (uint8_t)(h[i] >> 8);
        digest[4 * i + 3] = (uint8_t)h[i];
    }
    return blocks;
}

/* ---- CRC-32 -------------------------------------------------------------------------- */

static const uint32_t diff_crc_table[256] = {
    0x00000000u, 0x77073096u, 0xee0e612cu, 0x990951bau, 0x076dc419u, 0x706af48fu,
    0xe963a535u, 0x9e6495a3u, 0x0edb8832u, 0x79dcb8a4u, 0xe0d5e91eu, 0x97d2d988u,
    0x09b64c2bu, 0x7eb17cbdu, 0xe7b82d07u, 0x90bf1d91u, 0x1db71064u, 0x6ab020f2u,
    0xf3b97148u, 0x84be41deu, 0x1adad47du, 0x6ddde4ebu, 0xf4d4b551u, 0x83d385c7u,
    0x136c9856u, 0x646ba8c0u, 0xfd62f97au, 0x8a65c9ecu, 0x14015c4fu, 0x63066cd9u,
    0xfa0f3d63u, 0x8d080df5u, 0x3b6e20c8u, 0x4c69105eu, 0xd56041e4u, 0xa2677172u,
    0x3c03e4d1u, 0x4b04d447u, 0xd20d85fdu, 0xa50ab56bu, 0x35b5a8fau, 0x42b2986cu,
    0xdbbbc9d6u, 0xacbcf940u, 0x32d86ce3u, 0x45df5c75u, 0xdcd60dcfu, 0xabd13d59u,
    0x26d930acu, 0x51de003au, 0xc8d75180u, 0xbfd06116u, 0x21b4f4b5u, 0x56b3c423u,
    0xcfba9599u, 0xb8bda50fu, 0x2802b89eu, 0x5f058808u, 0xc60cd9b2u, 0xb10be924u,
    0x2f6f7c87u, 0x58684c11u, 0xc1611dabu, 0xb6662d3du, 0x76dc4190u, 0x01db7106u,
    0x98d220bcu, 0xefd5102au, 0x71b18589u, 0x06b6b51fu, 0x9fbfe4a5u, 0xe8b8d433u,
    0x7807c9a2u, 0x0f00f934u, 0x9609a88eu, 0xe10e9818u, 0x7f6a0dbbu, 0x086d3d2du,
    0x91646c97u, 0xe6635c01u, 0x6b6b51f4u, 0x1c6c6162u, 0x856530d8u, 0xf262004eu,
    0x6c0695edu, 0x1b01a57bu, 0x8208f4c1u, 0xf50fc457u, 0x65b0d9c6u, 0x12b7e950u,
    0x8bbeb8eau, 0xfcb9887cu, 0x62dd1ddfu, 0x15da2d49u, 0x8cd37cf3u, 0xfbd44c65u,
    0x4db26158u, 0x3ab551ceu, 0xa3bc0074u, 0xd4bb30e2u, 0x4adfa541u, 0x3dd895d7u,
    0xa4d1c46du, 0xd3d6f4fbu, 0x4369e96au, 0x346ed9fcu, 0xad678846u, 0xda60b8d0u,
    0x44042d73u, 0x33031de5u, 0xaa0a4c5fu, 0xdd0d7cc9u, 0x5005713cu, 0x270241aau,
    0xbe0b1010u, 0xc90c2086u, 0x5768b525u, 0x206f85b3u, 0xb966d409u, 0xce61e49fu,
    0x5edef90eu, 0x29d9c998u, 0xb0d09822u, 0xc7d7a8b4u, 0x59b33d17u, 0x2eb40d81u,
    0xb7bd5c3bu, 0xc0ba6cadu, 0xedb88320u, 0x9abfb3b6u, 0x03b6e20cu, 0x74b1d29au,
    0xead54739u, 0x9dd277afu, 0x04db2615u, 0x73dc1683u, 0xe3630b12u, 0x94643b84u,
    0x0d6d6a3eu, 0x7a6a5aa8u, 0xe40ecf0bu, 0x9309ff9du, 0x0a00ae27u, 0x7d079eb1u,
    0xf00f9344u, 0x8708a3d2u, 0x1e01f268u, 0x6906c2feu, 0xf762575du, 0x806567cbu,
    0x196c3671u, 0x6e6b06e7u, 0xfed41b76u, 0x89d32be0u, 0x10da7a5au, 0x67dd4accu,
    0xf9b9df6fu, 0x8ebeeff9u, 0x17b7be43u, 0x60b08ed5u, 0xd6d6a3e8u, 0xa1d1937eu,
    0x38d8c2c4u, 0x4fdff252u, 0xd1bb67f1u, 0xa6bc5767u, 0x3fb506ddu, 0x48b2364bu,
    0xd80d2bdau, 0xaf0a1b4cu, 0x36034af6u, 0x41047a60u, 0xdf60efc3u, 0xa867df55u,
    0x316e8eefu, 0x4669be79u, 0xcb61b38cu, 0xbc66831au, 0x256fd2a0u, 0x5268e236u,
    0xcc0c7795u, 0xbb0b4703u, 0x220216b9u, 0x5505262fu, 0xc5ba3bbeu, 0xb2bd0b28u,
    0x2bb45a92u, 0x5cb36a04u, 0xc2d7ffa7u, 0xb5d0cf31u, 0x2cd99e8bu, 0x5bdeae1du,
    0x9b64c2b0u, 0xec63f226u, 0x756aa39cu, 0x026d930au, 0x9c0906a9u, 0xeb0e363fu,
    0x72076785u, 0x05005713u, 0x95bf4a82u, 0xe2b87a14u, 0x7bb12baeu, 0x0cb61b38u,
    0x92d28e9bu, 0xe5d5be0du, 0x7cdcefb7u, 0x0bdbdf21u, 0x86d3d2d4u, 0xf1d4e242u,
    0x68ddb3f8u, 0x1fda836eu, 0x81be16cdu, 0xf6b9265bu, 0x6fb077e1u, 0x18b74777u,
    0x88085ae6u, 0xff0f6a70u, 0x66063bcau, 0x11010b5cu, 0x8f659effu, 0xf862ae69u,
    0x616bffd3u, 0x166ccf45u, 0xa00ae278u, 0xd70dd2eeu, 0x4e048354u, 0x3903b3c2u,
    0xa7672661u, 0xd06016f7u, 0x4969474du, 0x3e6e77dbu, 0xaed16a4au, 0xd9d65adcu,
    0x40df0b66u, 0x37d83bf0u, 0xa9bcae53u, 0xdebb9ec5u, 0x47b2cf7fu, 0x30b5ffe9u,
    0xbdbdf21cu, 0xcabac28au, 0x53b39330u, 0x24b4a3a6u, 0xbad03605u, 0xcdd70693u,
    0x54de5729u, 0x23d967bfu, 0xb3667a2eu, 0xc4614ab8u, 0x5d681b02u, 0x2a6f2b94u,
    0xb40bbe37u, 0xc30c8ea1u, 0x5a05df1bu, 0x2d02ef8du,
};

/* CRC-32 (IEEE, reflected) with the static table. */
uint32_t diff_crc32_table(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++)
        c = diff_crc_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

/* CRC-32 bit by bit, branch-free. */
uint32_t diff_crc32_bitwise(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return c ^ 0xffffffffu;
}

/* ---- strings ------------------------------------------------------------------------- */

size_t diff_strlen(const char *s) {
    const char *p = s;
    while (*p)
        p++;
    return (size_t)(p - s);
}

/* Reverses s in place; returns its length. */
size_t diff_strrev(char *s) {
    size_t n = diff_strlen(s);
    for (size_t i = 0, j = n; i + 1 < j; i++, j--) {
        char t = s[i];
        s[i] = s[j - 1];
        s[j - 1] = t;
    }
    return n;
}

/* atoi-like parser: leading spaces, sign, decimal digits, saturating at INT64 bounds.
 * *consumed = characters used (0 when no digit). */
int64_t diff_atoi(const char *s, int64_t *consumed) {
    const char *p = s;
    while (*p == ' ' || *p == '\t' || *p == '\n')
        p++;
    int neg = 0;
    if (*p == '-' || *p == '+')
        neg = *p++ == '-';
    if (*p < '0' || *p > '9') {
        *consumed = 0;
        return 0;
    }
    uint64_t v = 0;
    int sat = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        uint64_t d = (uint64_t)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            sat = 1;
        else
            v = v * 10 + d;
    }
    *consumed = p - s;
    uint64_t lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    if (sat || v > lim)
        v = lim;
    return neg ? (int64_t)(0 - v) : (int64_t)v;
}

/* Upper-cases ASCII letters and counts words (maximal runs of non-space). */
int32_t diff_upper_words(char *s) {
    int32_t words = 0, in = 0;
    for (; *s; s++) {
        if (*s >= 'a' && *s <= 'z')
            *s = (char)(*s - 32);
        int sp = *s == ' ' || *s == '\t' || *s == '\n';
        words += !sp && !in;
        in = !sp;
    }
    return words;
}

/* ---- sorting ------------------------------------------------------------------------- */

void diff_insertion_sort(int32_t *v, size_t n) {
    for (size_t i = 1; i < n; i++) {
        int32_t x = v[i];
        size_t j = i;
        while (j > 0 && v[j - 1] > x) {
            v[j] = v[j - 1];
            j--;
        }
        v[j] = x;
    }
}

static void diff_qs(int64_t *v, long lo, long hi) {
    while (lo < hi) {
        int64_t pivot = v[lo + (hi - lo) / 2];
        long i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot)
                i++;
            while (v[j] > pivot)
                j--;
            if (i <= j) {
                int64_t t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++;
                j--;
            }
        }
        /* Recurse on the smaller side, loop on the larger. */
        if (j - lo < hi - i) {
            diff_qs(v, lo, j);
            lo = i;
        } else {
            diff_qs(v, i, hi);
            hi = j;
        }
    }
}

void diff_quicksort(int64_t *v, size_t n) {
    if (n > 1)
        diff_qs(v, 0, (long)n - 1);
}

/* ---- matrix multiply ------------------------------------------------------------------ */

/* c = a * b for n x n row-major doubles. */
void diff_matmul_f64(const double *a, const double *b, double *c, size_t n) {
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            double s = 0;
            for (size_t k = 0; k < n; k++)
                s += a[i * n + k] * b[k * n + j];
            c[i * n + j] = s;
        }
}

/* c = a * b for n x n row-major int32 (wrapping), i-k-j order. */
void diff_matmul_i32(const int32_t *a, const int32_t *b, int32_t *c, size_t n) {
    for (size_t i = 0; i < n * n; i++)
        c[i] = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < n; k++) {
            uint32_t aik = (uint32_t)a[i * n + k];
            for (size_t j = 0; j < n; j++)
                c[i * n + j] = (int32_t)((uint32_t)c[i * n + j] + aik * (uint32_t)b[k * n + j]);
        }
}

/* ---- hash table ---------------------------------------------------------------------- */

#define DIFF_HT_SIZE 1024

struct diff_slot {
    uint64_t key;
    uint64_t value;
    uint32_t used;
    uint32_t probes;
};

static uint64_t diff_hash64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return k;
}

/* Open addressing with linear probing on a stack table: n insert-or-update operations with
 * keys from an LCG (with repeats), deletions by tombstone-free backward shift, then lookups.
 * stats[0..4] = inserts, updates, hits, misses. Returns a checksum. */
uint64_t diff_hash_table(uint32_t n, uint64_t seed, uint64_t *stats) {
    struct diff_slot t[DIFF_HT_SIZE];
    for (int i = 0; i < DIFF_HT_SIZE; i++) {
        t[i].used = 0;
        t[i].key = 0;
        t[i].value = 0;
        t[i].probes = 0;
    }
    uint64_t inserts = 0, updates = 0, hits = 0, misses = 0, count = 0;
    uint64_t x = seed;
    for (uint32_t op = 0; op < n; op++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t key = (x >> 40) % 977;
        uint64_t i = diff_hash64(key) & (DIFF_HT_SIZE - 1);
        uint32_t probes = 0;
        while (t[i].used && t[i].key != key) {
            i = (i + 1) & (DIFF_HT_SIZE - 1);
            probes++;
        }
        if (t[i].used) {
            t[i].value += x;
            updates++;
        } else if (count < DIFF_HT_SIZE * 3 / 4) {
            t[i].used = 1;
            t[i].key = key;
            t[i].value = x;
            t[i].probes = probes;
            count++;
            inserts++;
        }
        if ((op & 7) == 7) {
            /* Delete the key probed now, with backward-shift deletion. */
            if (t[i].used && t[i].key == key) {
                uint64_t hole = i, j = i;
                for (;;) {
                    j = (j + 1) & (DIFF_HT_SIZE - 1);
                    if (!t[j].used)
                        break;
                    uint64_t home = diff_hash64(t[j].key) & (DIFF_HT_SIZE - 1);
                    int between = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
                    if (!between) {
                        t[hole] = t[j];
                        hole = j;
                    }
                }
                t[hole].used = 0;
                count--;
            }
        }
    }
    uint64_t h = 0;
    for (uint64_t key = 0; key < 1000; key += 3) {
        uint64_t i = diff_hash64(key) & (DIFF_HT_SIZE - 1);
        while (t[i].used && t[i].key != key)
            i = (i + 1) & (DIFF_HT_SIZE - 1);
        if (t[i].used) {
            hits++;
            h = (h ^ t[i].value) * 0x100000001b3ull;
        } else {
            misses++;
        }
    }
    stats[0] = inserts;
    stats[1] = updates;
    stats[2] = hits;
    stats[3] = misses;
    return h ^ count;
}
