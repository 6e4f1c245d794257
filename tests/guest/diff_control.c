/* Differential suite, control flow: recursion, jump tables, function pointers, RIP-relative
 * tables, tail calls, mutual recursion, a state machine, bytecode interpreters, setjmp /
 * longjmp, varargs, stack arguments and struct returns. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

/* ---- recursion ---------------------------------------------------------------------- */

/* Recursive sum 1..n, one real stack frame per level: the volatile local is read after the
 * recursive call, so the compiler can turn it neither into a loop nor into a tail call. */
__attribute__((noipa)) int64_t diff_rec_sum(int64_t n) {
    volatile int64_t keep = n;
    if (n <= 0)
        return 0;
    return diff_rec_sum(n - 1) + keep;
}

/* Doubly recursive Fibonacci: many calls and returns at shallow depth. */
__attribute__((noipa)) uint64_t diff_fib(uint32_t n) {
    if (n < 2)
        return n;
    return diff_fib(n - 1) + diff_fib(n - 2);
}

/* Mutual recursion through tail calls (compiled to jmp). */
int diff_is_odd(uint32_t n);
__attribute__((noipa)) int diff_is_even(uint32_t n) { return n == 0 ? 1 : diff_is_odd(n - 1); }
__attribute__((noipa)) int diff_is_odd(uint32_t n) { return n == 0 ? 0 : diff_is_even(n - 1); }

/* Mutual recursion that keeps its frames (the result is post-processed). */
int64_t diff_ping(int64_t n);
__attribute__((noipa)) int64_t diff_pong(int64_t n) { return n <= 0 ? 7 : diff_ping(n - 1) * 3 + 1; }
__attribute__((noipa)) int64_t diff_ping(int64_t n) { return n <= 0 ? 5 : diff_pong(n - 1) ^ n; }

/* ---- switch statements ---------------------------------------------------------------- */

/* Dense switch with 14 cases: compiled to a jump table (an indirect jmp). */
__attribute__((noipa)) int64_t diff_switch_dense(int64_t op, int64_t x) {
    switch (op) {
    case 0: return x + 1;
    case 1: return x * 3;
    case 2: return x ^ 0x5555;
    case 3: return x - 77;
    case 4: return x << 3;
    case 5: return x >> 2;
    case 6: return ~x;
    case 7: return -x;
    case 8: return x * x;
    case 9: return x / 7;
    case 10: return x % 11;
    case 11: return x | 0x100;
    case 12: return x & 0xff;
    case 13: return x + 1000003;
    default: return -1;
    }
}

/* The same dispatch inside a loop: the table jump runs with a different target each time. */
int64_t diff_switch_loop(int64_t seed, uint32_t n) {
    int64_t acc = seed;
    for (uint32_t i = 0; i < n; i++) {
        switch ((uint64_t)(acc ^ i) % 16) {
        case 0: acc += 11; break;
        case 1: acc *= 5; break;
        case 2: acc ^= acc >> 7; break;
        case 3: acc -= i; break;
        case 4: acc = (acc << 1) | 1; break;
        case 5: acc = ~acc; break;
        case 6: acc += (int64_t)i * i; break;
        case 7: acc = acc / 3 + 1; break;
        case 8: acc ^= 0x5a5a5a5a; break;
        case 9: acc = acc * 7 - 3; break;
        case 10: acc -= acc >> 2; break;
        case 11: acc += 123456789; break;
        case 12: acc = (acc >> 3) ^ (acc << 5); break;
        default: acc += 1; break;
        }
    }
    return acc;
}

/* ---- function pointers ---------------------------------------------------------------- */

typedef int64_t (*diff_binop)(int64_t, int64_t);

__attribute__((noipa)) int64_t diff_op_add(int64_t a, int64_t b) { return a + b; }
__attribute__((noipa)) int64_t diff_op_sub(int64_t a, int64_t b) { return a - b; }
__attribute__((noipa)) int64_t diff_op_mul(int64_t a, int64_t b) { return a * (b | 1); }
__attribute__((noipa)) int64_t diff_op_xor(int64_t a, int64_t b) { return a ^ (b * 0x1234567); }
__attribute__((noipa)) int64_t diff_op_rotl(int64_t a, int64_t b) {
    uint64_t u = (uint64_t)a;
    unsigned s = (unsigned)b & 63;
    return (int64_t)((u << s) | (u >> ((64 - s) & 63)));
}
static int64_t diff_op_min(int64_t a, int64_t b) { return a < b ? a : b - 1; }
static int64_t diff_op_shr(int64_t a, int64_t b) { return (int64_t)((uint64_t)a >> (b & 31)) + b; }
static int64_t diff_op_mix(int64_t a, int64_t b) { return (a * 31) ^ (b * 17) ^ (a >> 9); }

static diff_binop const diff_ops[8] = {
    diff_op_add, diff_op_sub, diff_op_mul, diff_op_xor,
    diff_op_rotl, diff_op_min, diff_op_shr, diff_op_mix,
};

/* An array of function pointers called in a loop, the callee chosen by the data. */
int64_t diff_fnptr_loop(int64_t seed, uint32_t n) {
    int64_t acc = seed;
    for (uint32_t i = 0; i < n; i++)
        acc = diff_ops[(uint64_t)(acc ^ i) & 7](acc, (int64_t)i + 1);
    return acc;
}

/* A function pointer passed in by the caller. */
__attribute__((noipa)) int64_t diff_apply_twice(diff_binop f, int64_t a, int64_t b) {
    return f(f(a, b), b) * 2 + 1;
}

/* ---- RIP-relative tables -------------------------------------------------------------- */

static const uint16_t diff_tbl16[64] = {
    0x0000, 0x1d3c, 0x3a78, 0x2744, 0x74f0, 0x69cc, 0x4e88, 0x53b4, 0xe9e0, 0xf4dc, 0xd398,
    0xcea4, 0x9d10, 0x802c, 0xa768, 0xba54, 0x1b2d, 0x0611, 0x2155, 0x3c69, 0x6fdd, 0x72e1,
    0x55a5, 0x4899, 0xf2cd, 0xeff1, 0xc8b5, 0xd589, 0x863d, 0x9b01, 0xbc45, 0xa179, 0x365a,
    0x2b66, 0x0c22, 0x111e, 0x42aa, 0x5f96, 0x78d2, 0x65ee, 0xdfba, 0xc286, 0xe5c2, 0xf8fe,
    0xab4a, 0xb676, 0x9132, 0x8c0e, 0x2d77, 0x304b, 0x170f, 0x0a33, 0x5987, 0x44bb, 0x63ff,
    0x7ec3, 0xc497, 0xd9ab, 0xfeef, 0xe3d3, 0xb067, 0xad5b, 0x8a1f, 0x9723,
};
static const char *const diff_names[10] = {
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
};
static const int8_t diff_deltas[16] = {-8, 7, -6, 5, -4, 3, -2, 1, 0, -1, 2, -3, 4, -5, 6, -7};
static const double diff_weights[8] = {0.5, 1.25, -2.0, 3.75, 1e3, -1e-3, 42.0, 0.125};

/* A switch returning constants: gcc turns it into a RIP-relative value table (CSWTCH). */
__attribute__((noipa)) int32_t diff_switch_values(uint32_t i) {
    switch (i) {
    case 0: return 17;
    case 1: return -4;
    case 2: return 99;
    case 3: return 1 << 20;
    case 4: return 3;
    case 5: return -77;
    case 6: return 1234;
    case 7: return 8;
    case 8: return 0;
    case 9: return 65537;
    default: return 5;
    }
}

/* Lookups in several static const tables (integers, pointers to strings, doubles). */
uint64_t diff_rip_tables(uint32_t i, double *out) {
    uint64_t h = diff_tbl16[i & 63] * 0x10001ull;
    for (const char *p = diff_names[i % 10]; *p; p++)
        h = h * 31 + (uint8_t)*p;
    h += (uint64_t)(int64_t)diff_deltas[(i >> 2) & 15];
    h ^= (uint64_t)(int64_t)diff_switch_values(i % 12) << 20;
    *out = diff_weights[i & 7] * (double)(int32_t)i;
    return h;
}

/* A static mutable table, written then read through RIP-relative addressing. */
static uint64_t diff_rw_table[32];
uint64_t diff_rip_rw(uint64_t seed) {
    for (int i = 0; i < 32; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        diff_rw_table[i] = seed;
    }
    uint64_t h = 0;
    for (int i = 0; i < 32; i++)
        h = (h ^ diff_rw_table[(i * 7) & 31]) * 0x100000001b3ull;
    return h;
}

/* ---- tail calls --------------------------------------------------------------------- */

__attribute__((noipa)) uint64_t diff_tail_target(uint64_t x, uint64_t y) { return x * 31 + y; }

/* Ends with `return other(x)`: compiled to a jmp at -O2. */
__attribute__((noipa)) uint64_t diff_tail_caller(uint64_t x) {
    return diff_tail_target(x ^ 0xabc, x >> 3);
}

/* A tail call through a function pointer (jmp through a register). */
__attribute__((noipa)) int64_t diff_tail_indirect(diff_binop f, int64_t a, int64_t b) {
    return f(a + 1, b - 1);
}

/* A chain of tail calls that counts down. */
__attribute__((noipa)) uint64_t diff_tail_countdown(uint64_t n, uint64_t acc) {
    if (n == 0)
        return acc;
    return diff_tail_countdown(n - 1, acc * 3 + n);
}

/* ---- a state machine ---------------------------------------------------------------- */

enum diff_lex_state { LX_START, LX_INT, LX_FRAC, LX_IDENT, LX_OP, LX_STRING, LX_ESC };

/* Lexer over a NUL-terminated string. out[0..6] = ints, floats, identifiers, operators,
 * strings, invalid bytes. Returns the number of tokens. */
int32_t diff_lexer(const char *s, uint32_t *out) {
    enum diff_lex_state st = LX_START;
    uint32_t counts[6] = {0, 0, 0, 0, 0, 0};
    for (const char *p = s;; p++) {
        char c = *p;
        int digit = c >= '0' && c <= '9';
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        int op = c && strchr("+-*/=<>!&|^%", c) != 0;
        switch (st) {
        case LX_INT:
            if (digit)
                continue;
            if (c == '.') {
                st = LX_FRAC;
                continue;
            }
            counts[0]++;
            break;
        case LX_FRAC:
            if (digit)
                continue;
            counts[1]++;
            break;
        case LX_IDENT:
            if (alpha || digit)
                continue;
            counts[2]++;
            break;
        case LX_OP:
            if (op)
                continue;
            counts[3]++;
            break;
        case LX_STRING:
            if (c == '\\')
                st = LX_ESC;
            else if (c == '"') {
                counts[4]++;
                st = LX_START;
            } else if (c == 0) {
                counts[5]++;
                goto done;
            }
            continue;
        case LX_ESC:
            if (c == 0) {
                counts[5]++;
                goto done;
            }
            st = LX_STRING;
            continue;
        case LX_START:
            break;
        }
        /* Start a new token with c. */
        if (c == 0)
            break;
        if (digit)
            st = LX_INT;
        else if (alpha)
            st = LX_IDENT;
        else if (op)
            st = LX_OP;
        else if (c == '"')
            st = LX_STRING;
        else {
            st = LX_START;
            if (c != ' ' && c != '\t' && c != '\n')
                counts[5]++;
        }
    }
done:
    memcpy(out, counts, sizeof counts);
    return (int32_t)(counts[0] + counts[1] + counts[2] + counts[3] + counts[4]);
}

/* ---- bytecode interpreters ------------------------------------------------------------ */

enum {
    OP_HALT, OP_PUSH, OP_LOAD, OP_STORE, OP_ADD, OP_SUB, OP_MUL, OP_AND,
    OP_XOR, OP_SHR, OP_DUP, OP_DROP, OP_JZ, OP_JMP, OP_LT, OP_COUNT
};

/* r1 = sum of i*i for i in n..1 (r0 = n). */
static const int64_t diff_prog_squares[] = {
    OP_PUSH, 0, OP_STORE, 1,
    OP_LOAD, 0, OP_JZ, 26,                                      /* 4 */
    OP_LOAD, 0, OP_DUP, OP_MUL, OP_LOAD, 1, OP_ADD, OP_STORE, 1, /* 8 */
    OP_LOAD, 0, OP_PUSH, 1, OP_SUB, OP_STORE, 0,                 /* 17 */
    OP_JMP, 4,                                                   /* 24 */
    OP_LOAD, 1, OP_HALT,                                         /* 26 */
};
/* Collatz steps of r0 (>= 1), counted in r1. */
static const int64_t diff_prog_collatz[] = {
    OP_PUSH, 0, OP_STORE, 1,
    OP_LOAD, 0, OP_PUSH, 1, OP_SUB, OP_JZ, 47,             /* 4: x == 1 -> end */
    OP_LOAD, 0, OP_PUSH, 1, OP_AND, OP_JZ, 31,             /* 11: even -> 31 */
    OP_LOAD, 0, OP_DUP, OP_DUP, OP_ADD, OP_ADD,            /* 18: 3x */
    OP_PUSH, 1, OP_ADD, OP_STORE, 0, OP_JMP, 38,           /* 24 */
    OP_LOAD, 0, OP_PUSH, 1, OP_SHR, OP_STORE, 0,           /* 31: x >>= 1 */
    OP_LOAD, 1, OP_PUSH, 1, OP_ADD, OP_STORE, 1, OP_JMP, 4, /* 38: steps++ */
    OP_LOAD, 1, OP_HALT,                                   /* 47 */
};
/* Iterative Fibonacci: F(r0) in r1. */
static const int64_t diff_prog_fib[] = {
    OP_PUSH, 0, OP_STORE, 1, OP_PUSH, 1, OP_STORE, 2,
    OP_LOAD, 0, OP_JZ, 32,                                   /* 8 */
    OP_LOAD, 1, OP_LOAD, 2, OP_ADD, OP_LOAD, 2, OP_STORE, 1, /* 12 */
    OP_STORE, 2,                                             /* 21 */
    OP_LOAD, 0, OP_PUSH, 1, OP_SUB, OP_STORE, 0, OP_JMP, 8,  /* 23 */
    OP_LOAD, 1, OP_HALT,                                     /* 32 */
};
/* Mixes r0 with a few xor/shift/lt steps (exercises the remaining opcodes). */
static const int64_t diff_prog_mix[] = {
    OP_LOAD, 0, OP_PUSH, 0x5bd1e995, OP_XOR, OP_DUP, OP_PUSH, 13, OP_SHR, OP_XOR,
    OP_DUP, OP_PUSH, 1000, OP_LT, OP_ADD, OP_PUSH, 77, OP_DROP, OP_HALT,
};

static const int64_t *const diff_programs[4] = {
    diff_prog_squares, diff_prog_collatz, diff_prog_fib, diff_prog_mix,
};

#define DIFF_MAX_STEPS 10000000

/* Stack-machine interpreter with switch dispatch. Returns the top of the stack at HALT, or
 * INT64_MIN on a bad program or step limit. */
int64_t diff_interp_switch(uint32_t which, int64_t input) {
    if (which >= 4)
        return INT64_MIN;
    const int64_t *code = diff_programs[which];
    int64_t stack[64], regs[8] = {input, 0, 0, 0, 0, 0, 0, 0};
    int sp = 0;
    long pc = 0;
    for (long steps = 0; steps < DIFF_MAX_STEPS; steps++) {
        int64_t a, b;
        switch (code[pc++]) {
        case OP_HALT: return sp > 0 ? stack[sp - 1] : 0;
        case OP_PUSH: stack[sp++] = code[pc++]; break;
        case OP_LOAD: stack[sp++] = regs[code[pc++] & 7]; break;
        case OP_STORE: regs[code[pc++] & 7] = stack[--sp]; break;
        case OP_ADD: b = stack[--sp]; a = stack[--sp]; stack[sp++] = (int64_t)((uint64_t)a + (uint64_t)b); break;
        case OP_SUB: b = stack[--sp]; a = stack[--sp]; stack[sp++] = (int64_t)((uint64_t)a - (uint64_t)b); break;
        case OP_MUL: b = stack[--sp]; a = stack[--sp]; stack[sp++] = (int64_t)((uint64_t)a * (uint64_t)b); break;
        case OP_AND: b = stack[--sp]; a = stack[--sp]; stack[sp++] = a & b; break;
        case OP_XOR: b = stack[--sp]; a = stack[--sp]; stack[sp++] = a ^ b; break;
        case OP_SHR: b = stack[--sp]; a = stack[--sp]; stack[sp++] = (int64_t)((uint64_t)a >> (b & 63)); break;
        case OP_DUP: a = stack[sp - 1]; stack[sp++] = a; break;
        case OP_DROP: sp--; break;
        case OP_JZ: a = stack[--sp]; if (a == 0) pc = code[pc]; else pc++; break;
        case OP_JMP: pc = code[pc]; break;
        case OP_LT: b = stack[--sp]; a = stack[--sp]; stack[sp++] = a < b; break;
        default: return INT64_MIN;
        }
        if (sp < 0 || sp >= 62)
            return INT64_MIN;
    }
    return INT64_MIN;
}

/* The same interpreter with computed-goto dispatch (`goto *labels[op]`). */
int64_t diff_interp_goto(uint32_t which, int64_t input) {
    static void *const labels[OP_COUNT] = {
        &&l_halt, &&l_push, &&l_load, &&l_store, &&l_add, &&l_sub, &&l_mul, &&l_and,
        &&l_xor, &&l_shr, &&l_dup, &&l_drop, &&l_jz, &&l_jmp, &&l_lt,
    };
    if (which >= 4)
        return INT64_MIN;
    const int64_t *code = diff_programs[which];
    int64_t stack[64], regs[8] = {input, 0, 0, 0, 0, 0, 0, 0};
    int sp = 0;
    long pc = 0, steps = 0;
    int64_t a, b;
#define DISPATCH()                                                                       \
    do {                                                                                 \
        if (++steps > DIFF_MAX_STEPS || sp < 0 || sp >= 62 || (uint64_t)code[pc] >= OP_COUNT) \
            return INT64_MIN;                                                            \
        goto *labels[code[pc++]];                                                        \
    } while (0)
    DISPATCH();
l_halt: return sp > 0 ? stack[sp - 1] : 0;
l_push: stack[sp++] = code[pc++]; DISPATCH();
l_load: stack[sp++] = regs[code[pc++] & 7]; DISPATCH();
l_store: regs[code[pc++] & 7] = stack[--sp]; DISPATCH();
l_add: b = stack[--sp]; a = stack[--sp]; stack[sp++] = (int64_t)((uint64_t)a + (uint64_t)b); DISPATCH();
l_sub: b = stack[--sp]; a = stack[--sp]; stack[sp++] = (int64_t)((uint64_t)a - (uint64_t)b); DISPATCH();
l_mul: b = stack[--sp]; a = stack[--sp]; stack[sp++] = (int64_t)((uint64_t)a * (uint64_t)b); DISPATCH();
l_and: b = stack[--sp]; a = stack[--sp]; stack[sp++] = a & b; DISPATCH();
l_xor: b = stack[--sp]; a = stack[--sp]; stack[sp++] = a ^ b; DISPATCH();
l_shr: b = stack[--sp]; a = stack[--sp]; stack[sp++] = (int64_t)((uint64_t)a >> (b & 63)); DISPATCH();
l_dup: a = stack[sp - 1]; stack[sp++] = a; DISPATCH();
l_drop: sp--; DISPATCH();
l_jz: a = stack[--sp]; if (a == 0) pc = code[pc]; else pc++; DISPATCH();
l_jmp: pc = code[pc]; DISPATCH();
l_lt: b = stack[--sp]; a = stack[--sp]; stack[sp++] = a < b; DISPATCH();
#undef DISPATCH
}

/* ---- setjmp / longjmp ---------------------------------------------------------------- */

/* Recurses `depth` frames, then longjmps back to the setjmp of diff_setjmp_loop. */
__attribute__((noipa)) int64_t diff_throw_deep(jmp_buf *env, int depth, int value) {
    volatile int64_t keep = depth;
    if (depth <= 0) {
        if (value != 0)
            longjmp(*env, value);
        return -1;
    }
    return diff_throw_deep(env, depth - 1, value) + keep;
}

/* setjmp in this frame, longjmp from a deeper guest frame, n times in a loop. */
int64_t diff_setjmp_loop(int32_t n) {
    jmp_buf env;
    volatile int64_t total = 0;
    volatile int32_t i;
    for (i = 0; i < n; i++) {
        int r = setjmp(env);
        if (r == 0) {
            total = total + diff_throw_deep(&env, i % 7 + 1, i + 1);
            total = total + 1000000; /* never reached: the throw always jumps */
        } else {
            total = total * 3 + r;
        }
    }
    return total;
}

/* ---- varargs ------------------------------------------------------------------------ */

__attribute__((noipa)) int diff_va_sum(int n, ...) {
    va_list ap;
    va_start(ap, n);
    int s = 0;
    for (int i = 0; i < n; i++)
        s += va_arg(ap, int) * (i + 1);
    va_end(ap);
    return s;
}

/* Alternating int64 and double arguments; the double sum goes to *out. */
__attribute__((noipa)) int64_t diff_va_mixed(double *out, int n, ...) {
    va_list ap;
    va_start(ap, n);
    int64_t si = 0;
    double sd = 0;
    for (int i = 0; i < n; i++) {
        si = si * 3 + va_arg(ap, int64_t);
        sd = sd * 0.5 + va_arg(ap, double);
    }
    va_end(ap);
    *out = sd;
    return si;
}

/* A guest function calling the guest varargs functions (register and stack varargs). */
int64_t diff_va_caller(int a, int b, int c, double *out) {
    int64_t r = diff_va_sum(10, a, b, c, a + b, b + c, a ^ c, 7, -3, a * 2, c - 1);
    r += diff_va_sum(0);
    r += (int64_t)diff_va_sum(1, a) << 20;
    r ^= diff_va_mixed(out, 5, (int64_t)a, (double)b * 0.5, (int64_t)b, (double)c, (int64_t)c,
                       1.5, (int64_t)a * b, -2.25, (int64_t)-7, (double)a / 3.0);
    return r;
}

/* ---- stack arguments -------------------------------------------------------------- */

__attribute__((noipa)) int64_t diff_args8(int64_t a, int64_t b, int64_t c, int64_t d, int64_t e,
                                          int64_t f, int64_t g, int64_t h) {
    int64_t r = a;
    r = r * 31 + b;
    r = r * 31 + c;
    r = r * 31 + d;
    r = r * 31 + e;
    r = r * 31 + f;
    r = r * 31 + g;
    r = r * 31 + h;
    return r ^ (g - h);
}

__attribute__((noipa)) int64_t diff_args9(int64_t a, int64_t b, int64_t c, int64_t d, int64_t e,
                                          int64_t f, int64_t g, int64_t h, int64_t i) {
    return diff_args8(a, b, c, d, e, f, g, h) * 7 + (i ^ (a << 1));
}

/* Twelve arguments of mixed widths and signedness, six of them on the stack. */
__attribute__((noipa)) int64_t diff_args12(int8_t a, uint8_t b, int16_t c, uint16_t d, int32_t e,
                                           uint32_t f, int64_t g, uint64_t h, int32_t i, int8_t j,
                                           uint16_t k, int64_t l) {
    int64_t r = a;
    r = r * 37 + b;
    r = r * 37 + c;
    r = r * 37 + d;
    r = r * 37 + e;
    r = r * 37 + (int64_t)f;
    r = r * 37 + g;
    r = r * 37 + (int64_t)h;
    r = r * 37 + i;
    r = r * 37 + j;
    r = r * 37 + k;
    r = r * 37 + l;
    return r;
}

/* A guest function forwarding ten arguments plus two computed ones to diff_args12. */
__attribute__((noipa)) int64_t diff_args10_forward(int64_t a, int64_t b, int64_t c, int64_t d,
                                                   int64_t e, int64_t f, int64_t g, int64_t h,
                                                   int64_t i, int64_t j) {
    return diff_args12((int8_t)a, (uint8_t)b, (int16_t)c, (uint16_t)d, (int32_t)e, (uint32_t)f, g,
                       (uint64_t)h, (int32_t)i, (int8_t)j, (uint16_t)(a ^ j), b + c) *
               3 +
           diff_args9(j, i, h, g, f, e, d, c, b);
}

/* Pointer and count passed on the stack: fills out[0..n] from the six register args. */
__attribute__((noipa)) int64_t diff_args8_out(int64_t a, int64_t b, int64_t c, int64_t d,
                                              int64_t e, int64_t f, int64_t *out, int64_t n) {
    int64_t v[6] = {a, b, c, d, e, f};
    int64_t s = 0;
    for (int64_t k = 0; k < n; k++) {
        out[k] = v[k % 6] * (k + 1) - s;
        s += out[k];
    }
    return s;
}

/* Sixteen arguments: ten on the stack. */
__attribute__((noipa)) uint64_t diff_args16(uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3,
                                            uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7,
                                            uint64_t a8, uint64_t a9, uint64_t a10, uint64_t a11,
                                            uint64_t a12, uint64_t a13, uint64_t a14,
                                            uint64_t a15) {
    uint64_t v[16] = {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15};
    uint64_t h = 0xcbf29ce484222325ull;
    for (int k = 0; k < 16; k++)
        h = (h ^ v[k]) * 0x100000001b3ull;
    return h;
}

/* ---- struct returns ---------------------------------------------------------------- */

struct diff_big {
    int64_t a, b, c;
    double d;
    uint8_t tag[8];
};
struct diff_pair {
    int64_t lo, hi;
};
struct diff_dpair {
    double x, y;
};
struct diff_mixed {
    int64_t i;
    double d;
};

/* 40 bytes: returned through the hidden pointer in rdi. */
__attribute__((noipa)) struct diff_big diff_make_big(int64_t x, double y) {
    struct diff_big r;
    r.a = x * 3;
    r.b = x ^ 0x7777;
    r.c = -x;
    r.d = y * 1.5;
    for (int i = 0; i < 8; i++)
        r.tag[i] = (uint8_t)(x >> (i * 8)) ^ (uint8_t)i;
    return r;
}
__attribute__((noipa)) struct diff_pair diff_make_pair(int64_t a, int64_t b) {
    struct diff_pair p = {a * b, a - b};
    return p;
}
__attribute__((noipa)) struct diff_dpair diff_make_dpair(int64_t a, int64_t b) {
    struct diff_dpair p = {(double)a / 8.0, (double)b * 0.75};
    return p;
}
__attribute__((noipa)) struct diff_mixed diff_make_mixed(int64_t a) {
    struct diff_mixed m = {a + 42, (double)a - 0.5};
    return m;
}

/* Wrapper: the by-value results go to out (40 + 16 + 16 + 16 bytes). */
void diff_struct_returns(int64_t x, int64_t y, uint8_t *out) {
    struct diff_big big = diff_make_big(x, (double)y);
    struct diff_pair p = diff_make_pair(x, y);
    struct diff_dpair dp = diff_make_dpair(x, y);
    struct diff_mixed m = diff_make_mixed(y);
    memcpy(out, &big, sizeof big);
    memcpy(out + 40, &p, sizeof p);
    memcpy(out + 56, &dp, sizeof dp);
    memcpy(out + 72, &m, sizeof m);
}
