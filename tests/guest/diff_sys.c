/* Differential suite, machine-level C: cpuid, rep string instructions in inline assembly,
 * and leaf functions whose locals live in the red zone below rsp. */
#include <stddef.h>
#include <stdint.h>

/* cpuid(leaf, subleaf) -> out[0..4] = eax, ebx, ecx, edx. */
void diff_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *out) {
    uint32_t a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(subleaf));
    out[0] = a;
    out[1] = b;
    out[2] = c;
    out[3] = d;
}

/* rep movsb, rep stosq, repne scasb and repe cmpsb on caller buffers; the final rdi / rsi /
 * rcx of each go to regs[0..10] (as offsets) and the flags of the scans to the return value.
 * dst needs 2 * n + 64 bytes, src n bytes. */
uint64_t diff_rep_strings(uint8_t *dst, const uint8_t *src, size_t n, uint8_t needle,
                          uint64_t *regs) {
    void *d = dst;
    const void *s = src;
    size_t c = n;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(c) : : "memory");
    regs[0] = (uint64_t)((uint8_t *)d - dst);
    regs[1] = (uint64_t)((const uint8_t *)s - src);
    regs[2] = c;

    uint64_t pattern = 0x0123456789abcdefull ^ n;
    d = dst + n;
    c = (n + 7) / 8;
    __asm__ volatile("rep stosq" : "+D"(d), "+c"(c) : "a"(pattern) : "memory");
    regs[3] = (uint64_t)((uint8_t *)d - dst);
    regs[4] = c;

    uint8_t found;
    d = dst;
    c = n;
    __asm__ volatile("test %%rsp, %%rsp\n\t" /* ZF = 0: rcx = 0 leaves it, "not found" */
                     "repne scasb\n\t"
                     "sete %3"
                     : "+D"(d), "+c"(c), "+a"(needle), "=q"(found)
                     :
                     : "memory", "cc");
    regs[5] = (uint64_t)((uint8_t *)d - dst);
    regs[6] = c;

    uint8_t equal;
    d = dst;
    s = src;
    c = n;
    __asm__ volatile("cmp %%rcx, %%rcx\n\t" /* rcx = 0: ZF = 1, "equal" */
                     "repe cmpsb\n\t"
                     "sete %3"
                     : "+D"(d), "+S"(s), "+c"(c), "=q"(equal)
                     :
                     : "memory", "cc");
    regs[7] = (uint64_t)((uint8_t *)d - dst);
    regs[8] = (uint64_t)((const uint8_t *)s - src);
    regs[9] = c;
    return (uint64_t)found | (uint64_t)equal << 1;
}

/* A leaf function whose volatile local array (96 bytes) lives in the red zone: no stack
 * adjustment, stores at negative offsets from rsp, loops in between. (The build may ask for
 * frame pointers; this function addresses its locals from rsp.) */
__attribute__((optimize("omit-frame-pointer"))) int64_t diff_redzone_leaf(int64_t a, int64_t b) {
    volatile int64_t tmp[12];
    for (int i = 0; i < 12; i++)
        tmp[i] = a * i + (b ^ i);
    int64_t s = 0;
    for (int i = 0; i < 12; i++)
        s = s * 7 + tmp[11 - i];
    return s;
}

/* A red-zone leaf with a data-dependent switch (jump table) between the stores and loads. */
__attribute__((optimize("omit-frame-pointer"))) int64_t diff_redzone_switch(int64_t a, uint32_t op) {
    volatile int64_t tmp[14];
    for (int i = 0; i < 14; i++)
        tmp[i] = a + i * 0x101;
    int64_t r;
    switch (op % 12) {
    case 0: r = tmp[0] + tmp[13]; break;
    case 1: r = tmp[1] * 3; break;
    case 2: r = tmp[2] ^ tmp[12]; break;
    case 3: r = tmp[3] - tmp[11]; break;
    case 4: r = tmp[4] << 2; break;
    case 5: r = tmp[5] >> 1; break;
    case 6: r = ~tmp[6]; break;
    case 7: r = tmp[7] + 77; break;
    case 8: r = tmp[8] * tmp[9]; break;
    case 9: r = tmp[9] | 1; break;
    case 10: r = tmp[10] & 0xffff; break;
    default: r = -tmp[11]; break;
    }
    for (int i = 0; i < 14; i++)
        r = r * 5 + tmp[i];
    return r;
}
