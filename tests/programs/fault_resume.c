// Faults whose handlers read the interrupted context, fix it and resume: an integer
// division by zero (SIGFPE) skipped with a result of -1, another one retried after the
// handler set the divisor register to 7, and a load from an unmapped address (SIGSEGV)
// skipped. Each handler checks that the context's pc and si_addr are the faulting
// instruction's own address (labels in the code), and that the registers are the
// program's. Prints what each handler saw.
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <ucontext.h>

extern char div_here[], div_end[], retry_here[], load_here[], load_end[];

static int fpe_count, fpe_pc_ok, fpe_addr_ok, fpe_regs_ok;
static int segv_count, segv_pc_ok, segv_regs_ok;

__attribute__((noinline, noipa)) static int divide(int a, int b) {
    int q;
    __asm__ volatile("cltd\n"
                     ".globl div_here\n"
                     "div_here:\n"
                     "idivl %2\n"
                     ".globl div_end\n"
                     "div_end:\n"
                     : "=a"(q)
                     : "a"(a), "r"(b)
                     : "edx", "cc");
    return q;
}

// The divisor in ecx, which the handler sets to 7 before the division runs again.
__attribute__((noinline, noipa)) static int divide_retried(int a, int b) {
    int q;
    __asm__ volatile("cltd\n"
                     ".globl retry_here\n"
                     "retry_here:\n"
                     "idivl %%ecx\n"
                     : "=a"(q), "+c"(b)
                     : "a"(a)
                     : "edx", "cc");
    return q;
}

__attribute__((noinline, noipa)) static long load(const long *p) {
    long v;
    __asm__ volatile("mov $0x5eed, %%r11\n"
                     ".globl load_here\n"
                     "load_here:\n"
                     "mov (%1), %0\n"
                     ".globl load_end\n"
                     "load_end:\n"
                     : "=r"(v)
                     : "r"(p)
                     : "r11", "memory");
    return v;
}

__attribute__((noinline, noipa)) static void on_fpe(int sig, siginfo_t *si, void *ctx) {
    ucontext_t *uc = ctx;
    fpe_count++;
    if (uc->uc_mcontext.gregs[REG_RIP] != (long)retry_here) {
        fpe_pc_ok += uc->uc_mcontext.gregs[REG_RIP] == (long)div_here;
        fpe_addr_ok += si->si_addr == (void *)div_here;
        // The dividend is in eax, as the program put it.
        fpe_regs_ok += (int)uc->uc_mcontext.gregs[REG_RAX] == 1000 + fpe_count;
    }
    if (uc->uc_mcontext.gregs[REG_RIP] == (long)retry_here) {
        // Retry with a divisor of 7 (pc unchanged).
        fpe_pc_ok++;
        fpe_addr_ok += si->si_addr == (void *)retry_here;
        fpe_regs_ok += (int)uc->uc_mcontext.gregs[REG_RAX] == 700 && uc->uc_mcontext.gregs[REG_RCX] == 0;
        uc->uc_mcontext.gregs[REG_RCX] = 7;
        return;
    }
    uc->uc_mcontext.gregs[REG_RAX] = -1;
    uc->uc_mcontext.gregs[REG_RIP] = (long)div_end;
    (void)sig;
}

__attribute__((noinline, noipa)) static void on_segv(int sig, siginfo_t *si, void *ctx) {
    ucontext_t *uc = ctx;
    segv_count++;
    segv_pc_ok += uc->uc_mcontext.gregs[REG_RIP] == (long)load_here && si->si_addr == (void *)16;
    segv_regs_ok += uc->uc_mcontext.gregs[REG_R11] == 0x5eed;
    // Skip the load.
    uc->uc_mcontext.gregs[REG_RIP] = (long)load_end;
    (void)sig;
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_flags = SA_SIGINFO;
    sa.sa_sigaction = on_fpe;
    sigaction(SIGFPE, &sa, NULL);
    sa.sa_sigaction = on_segv;
    sigaction(SIGSEGV, &sa, NULL);
    long sum = 0;
    for (int i = 1; i <= 3; i++) {
        sum += divide(1000 + i, 0);
        sum += divide(1000 + i, 10);
    }
    sum += divide_retried(700, 0);
    printf("divisions: %ld, SIGFPE %d times, pc %d, si_addr %d, registers %d\n", sum,
           fpe_count, fpe_pc_ok, fpe_addr_ok, fpe_regs_ok);
    for (int i = 0; i < 3; i++) load((const long *)16);
    printf("loads: SIGSEGV %d times, pc and address %d, registers %d\n", segv_count,
           segv_pc_ok, segv_regs_ok);
    return 0;
}
