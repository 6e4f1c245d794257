/*
 * Native harness of the random vector and x87 differential tests (tests/tests/random_vector.rs).
 *
 *   void vec_run_native(struct VecHarness *in, struct VecHarness *out, void *code);
 *
 * Loads the whole FP/vector state with `xrstor` (x87, SSE, AVX, AVX-512 as the mask says),
 * then every general purpose register (rsp included) and RFLAGS from `in`, `call`s `code`,
 * stores the general purpose registers and RFLAGS to `out`, the FP/vector state with
 * `xsave`, and returns to the host. Layout of struct VecHarness (must match the Rust side):
 *
 *     0   gpr[16]     in hardware order: rax rcx rdx rbx rsp rbp rsi rdi r8 .. r15
 *   128   rflags
 *   136   host_rsp    (written by the harness into `out`)
 *   144   xsave_mask  requested-feature bitmap of xrstor (from `in`) and xsave (from `out`)
 *   152   padding
 *   192   XSAVE area  (standard format, the CPU's component offsets), 64-byte aligned
 *
 * As in rand_harness.S, `out` is kept at [in.rsp] and `code` at [in.rsp + 16], above the
 * guest's stack pointer, and `out` is recovered with an xchg that leaves the flags alone.
 * The host's MXCSR and x87 control word are saved on the host stack and restored after an
 * `fninit` (the x87 stack is empty again, as the ABI wants); `vzeroupper` if the mask has
 * AVX; DF is cleared before returning.
 */
        .intel_syntax noprefix
        .text

        .globl  vec_run_native
        .type   vec_run_native, @function
vec_run_native:
        push    rbx
        push    rbp
        push    r12
        push    r13
        push    r14
        push    r15
        sub     rsp, 8
        stmxcsr [rsp]
        fnstcw  [rsp + 4]
        mov     [rsi + 136], rsp
        mov     rax, [rdi + 32]
        mov     [rax], rsi
        mov     [rax + 8], rsp
        mov     [rax + 16], rdx
        mov     eax, [rdi + 144]
        mov     edx, [rdi + 148]
        xrstor  [rdi + 192]
        push    qword ptr [rdi + 128]
        popfq
        mov     rax, [rdi + 0]
        mov     rcx, [rdi + 8]
        mov     rdx, [rdi + 16]
        mov     rbx, [rdi + 24]
        mov     rbp, [rdi + 40]
        mov     rsi, [rdi + 48]
        mov     r8, [rdi + 64]
        mov     r9, [rdi + 72]
        mov     r10, [rdi + 80]
        mov     r11, [rdi + 88]
        mov     r12, [rdi + 96]
        mov     r13, [rdi + 104]
        mov     r14, [rdi + 112]
        mov     r15, [rdi + 120]
        mov     rsp, [rdi + 32]
        mov     rdi, [rdi + 56]
        call    qword ptr [rsp + 16]
        /* Back from the guest: nothing below may change the flags before pushfq. */
        xchg    rax, [rsp]
        mov     [rax + 8], rcx
        mov     [rax + 16], rdx
        mov     [rax + 24], rbx
        mov     [rax + 32], rsp
        mov     [rax + 40], rbp
        mov     [rax + 48], rsi
        mov     [rax + 56], rdi
        mov     [rax + 64], r8
        mov     [rax + 72], r9
        mov     [rax + 80], r10
        mov     [rax + 88], r11
        mov     [rax + 96], r12
        mov     [rax + 104], r13
        mov     [rax + 112], r14
        mov     [rax + 120], r15
        pushfq
        pop     qword ptr [rax + 128]
        cld
        mov     rcx, [rsp]
        mov     [rax + 0], rcx
        mov     rcx, rax
        mov     eax, [rcx + 144]
        mov     edx, [rcx + 148]
        xsave   [rcx + 192]
        mov     rsp, [rcx + 136]
        fninit
        fldcw   [rsp + 4]
        ldmxcsr [rsp]
        test    byte ptr [rcx + 144], 4
        jz      1f
        vzeroupper
1:
        add     rsp, 8
        pop     r15
        pop     r14
        pop     r13
        pop     r12
        pop     rbp
        pop     rbx
        ret
        .size   vec_run_native, . - vec_run_native

        .section .note.GNU-stack,"",@progbits
