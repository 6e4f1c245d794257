/*
 * Native harness of the random-sequence differential tests (tests/tests/random_sequences.rs).
 *
 *   void rand_run_native(struct RandState *in, struct RandState *out, void *code);
 *   void rand_run_native_avx(struct RandState *in, struct RandState *out, void *code);
 *
 * Loads every general purpose register (rsp included), RFLAGS, MXCSR and xmm0-15 (ymm0-15
 * for the _avx variant) from `in`, `call`s `code`, stores the same registers to `out` and
 * returns to the host. Layout of struct RandState (must match the Rust side):
 *
 *     0   gpr[16]   in hardware order: rax rcx rdx rbx rsp rbp rsi rdi r8 .. r15
 *   128   rflags
 *   136   host_rsp  (written by the harness into `out`)
 *   144   mxcsr (u32), then 12 bytes of padding
 *   160   vec[16]   32-byte slots: xmm in the low 16 bytes, ymm upper half in the high 16
 *
 * Before switching to the guest stack, the harness stores `out` at [in.rsp] and `code` at
 * [in.rsp + 16], above the guest's stack pointer where the guest never writes: the code is
 * called through [rsp + 16] and, once it has returned (rsp == in.rsp again), `out` is
 * recovered with an xchg that does not touch the flags. The host rsp is kept in out.host_rsp.
 * The host MXCSR is saved on the host stack and restored; DF is cleared before returning.
 */
        .intel_syntax noprefix
        .text

        .macro RAND_ENTER
        push    rbx
        push    rbp
        push    r12
        push    r13
        push    r14
        push    r15
        sub     rsp, 8
        stmxcsr [rsp]
        mov     [rsi + 136], rsp
        mov     rax, [rdi + 32]
        mov     [rax], rsi
        mov     [rax + 8], rsp
        mov     [rax + 16], rdx
        ldmxcsr [rdi + 144]
        .endm

        .macro RAND_SWITCH_AND_CALL
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
        stmxcsr [rax + 144]
        .endm

        .macro RAND_LEAVE
        mov     rsp, [rax + 136]
        ldmxcsr [rsp]
        add     rsp, 8
        pop     r15
        pop     r14
        pop     r13
        pop     r12
        pop     rbp
        pop     rbx
        ret
        .endm

        .globl  rand_run_native
        .type   rand_run_native, @function
rand_run_native:
        RAND_ENTER
        movdqu  xmm0, [rdi + 160 + 0 * 32]
        movdqu  xmm1, [rdi + 160 + 1 * 32]
        movdqu  xmm2, [rdi + 160 + 2 * 32]
        movdqu  xmm3, [rdi + 160 + 3 * 32]
        movdqu  xmm4, [rdi + 160 + 4 * 32]
        movdqu  xmm5, [rdi + 160 + 5 * 32]
        movdqu  xmm6, [rdi + 160 + 6 * 32]
        movdqu  xmm7, [rdi + 160 + 7 * 32]
        movdqu  xmm8, [rdi + 160 + 8 * 32]
        movdqu  xmm9, [rdi + 160 + 9 * 32]
        movdqu  xmm10, [rdi + 160 + 10 * 32]
        movdqu  xmm11, [rdi + 160 + 11 * 32]
        movdqu  xmm12, [rdi + 160 + 12 * 32]
        movdqu  xmm13, [rdi + 160 + 13 * 32]
        movdqu  xmm14, [rdi + 160 + 14 * 32]
        movdqu  xmm15, [rdi + 160 + 15 * 32]
        RAND_SWITCH_AND_CALL
        movdqu  [rax + 160 + 0 * 32], xmm0
        movdqu  [rax + 160 + 1 * 32], xmm1
        movdqu  [rax + 160 + 2 * 32], xmm2
        movdqu  [rax + 160 + 3 * 32], xmm3
        movdqu  [rax + 160 + 4 * 32], xmm4
        movdqu  [rax + 160 + 5 * 32], xmm5
        movdqu  [rax + 160 + 6 * 32], xmm6
        movdqu  [rax + 160 + 7 * 32], xmm7
        movdqu  [rax + 160 + 8 * 32], xmm8
        movdqu  [rax + 160 + 9 * 32], xmm9
        movdqu  [rax + 160 + 10 * 32], xmm10
        movdqu  [rax + 160 + 11 * 32], xmm11
        movdqu  [rax + 160 + 12 * 32], xmm12
        movdqu  [rax + 160 + 13 * 32], xmm13
        movdqu  [rax + 160 + 14 * 32], xmm14
        movdqu  [rax + 160 + 15 * 32], xmm15
        RAND_LEAVE
        .size   rand_run_native, . - rand_run_native

        .globl  rand_run_native_avx
        .type   rand_run_native_avx, @function
rand_run_native_avx:
        RAND_ENTER
        vmovdqu ymm0, [rdi + 160 + 0 * 32]
        vmovdqu ymm1, [rdi + 160 + 1 * 32]
        vmovdqu ymm2, [rdi + 160 + 2 * 32]
        vmovdqu ymm3, [rdi + 160 + 3 * 32]
        vmovdqu ymm4, [rdi + 160 + 4 * 32]
        vmovdqu ymm5, [rdi + 160 + 5 * 32]
        vmovdqu ymm6, [rdi + 160 + 6 * 32]
        vmovdqu ymm7, [rdi + 160 + 7 * 32]
        vmovdqu ymm8, [rdi + 160 + 8 * 32]
        vmovdqu ymm9, [rdi + 160 + 9 * 32]
        vmovdqu ymm10, [rdi + 160 + 10 * 32]
        vmovdqu ymm11, [rdi + 160 + 11 * 32]
        vmovdqu ymm12, [rdi + 160 + 12 * 32]
        vmovdqu ymm13, [rdi + 160 + 13 * 32]
        vmovdqu ymm14, [rdi + 160 + 14 * 32]
        vmovdqu ymm15, [rdi + 160 + 15 * 32]
        RAND_SWITCH_AND_CALL
        vmovdqu [rax + 160 + 0 * 32], ymm0
        vmovdqu [rax + 160 + 1 * 32], ymm1
        vmovdqu [rax + 160 + 2 * 32], ymm2
        vmovdqu [rax + 160 + 3 * 32], ymm3
        vmovdqu [rax + 160 + 4 * 32], ymm4
        vmovdqu [rax + 160 + 5 * 32], ymm5
        vmovdqu [rax + 160 + 6 * 32], ymm6
        vmovdqu [rax + 160 + 7 * 32], ymm7
        vmovdqu [rax + 160 + 8 * 32], ymm8
        vmovdqu [rax + 160 + 9 * 32], ymm9
        vmovdqu [rax + 160 + 10 * 32], ymm10
        vmovdqu [rax + 160 + 11 * 32], ymm11
        vmovdqu [rax + 160 + 12 * 32], ymm12
        vmovdqu [rax + 160 + 13 * 32], ymm13
        vmovdqu [rax + 160 + 14 * 32], ymm14
        vmovdqu [rax + 160 + 15 * 32], ymm15
        vzeroupper
        RAND_LEAVE
        .size   rand_run_native_avx, . - rand_run_native_avx

        .section .note.GNU-stack,"",@progbits
