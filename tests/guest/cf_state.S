// Guest functions of tests/tests/transparency.rs: they read or write the guest machine
// state (red zone, RFLAGS, errno, MXCSR, x87 control word, vector and opmask registers,
// general purpose registers) after block boundaries, so that what the engine does between
// blocks is visible. Comments use // (C preprocessor).

#include "asm_macros.h"

// Three block boundaries in a row: a direct jmp, an indirect jmp, a conditional branch.
// Clobbers rcx only; the flags are preserved (lea/mov/jmp/jrcxz do not write them).
.macro BOUNDARIES
    jmp 91f
91: lea rcx, [rip + 92f]
    jmp rcx
92: mov ecx, 0
    jrcxz 93f
93:
.endm

// ---------------------------------------------------------------------------------------
// Red zone.

// Leaf: (seed) writes q[i] = seed*(i+1) + i at [rsp-128 + 8i], i = 0..15, crosses block
// boundaries, then returns h = fold(h = rol(h, 3) + q[i]) over i = 0..15.
FUNC cf_redzone_leaf
    .irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    imul rax, rdi, \i + 1
    add rax, \i
    mov [rsp - 128 + 8 * \i], rax
    .endr
    BOUNDARIES
    xor eax, eax
    .irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    rol rax, 3
    add rax, [rsp - 128 + 8 * \i]
    .endr
    ret
ENDF cf_redzone_leaf

// Caller: (seed) writes q[i] = (seed*(i+3)) ^ i into its red zone, crosses block
// boundaries, then makes the red zone part of its frame (sub rsp) and calls
// cf_redzone_check, which folds the 16 values from its caller's frame as above.
FUNC cf_redzone_caller
    .irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    imul rax, rdi, \i + 3
    xor rax, \i
    mov [rsp - 128 + 8 * \i], rax
    .endr
    BOUNDARIES
    sub rsp, 136
    call cf_redzone_check
    add rsp, 136
    ret
ENDF cf_redzone_caller

// Reads its caller's 16 values at [rsp+16, rsp+144) (above its return address and 8 bytes
// of padding), after writing garbage into its own red zone and crossing boundaries.
FUNC cf_redzone_check
    mov qword ptr [rsp - 8], -1
    mov qword ptr [rsp - 128], -1
    BOUNDARIES
    xor eax, eax
    .irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    rol rax, 3
    add rax, [rsp + 16 + 8 * \i]
    .endr
    ret
ENDF cf_redzone_check

// ---------------------------------------------------------------------------------------
// RFLAGS.

// () -> RFLAGS as the function found them, read after block boundaries.
FUNC cf_flags_read
    BOUNDARIES
    pushfq
    pop rax
    cld
    ret
ENDF cf_flags_read

// () -> RFLAGS after `std` and a block exit (DF must survive it); clears DF before returning.
FUNC cf_flags_std
    std
    jmp 1f
1:  pushfq
    pop rax
    cld
    ret
ENDF cf_flags_std

// (a, b) -> RFLAGS of `sub a, b`, read after block boundaries; the flags are left as the
// sub set them on return.
FUNC cf_flags_sub
    sub rdi, rsi
    BOUNDARIES
    pushfq
    pop rax
    ret
ENDF cf_flags_sub

// ---------------------------------------------------------------------------------------
// errno (libc, reached natively through the exec broker).

// () -> errno.
FUNC cf_errno_get
    sub rsp, 8
    BOUNDARIES
    call __errno_location@PLT
    mov eax, dword ptr [rax]
    add rsp, 8
    ret
ENDF cf_errno_get

// (v) sets errno = v.
FUNC cf_errno_set
    push rbx
    mov ebx, edi
    call __errno_location@PLT
    mov dword ptr [rax], ebx
    BOUNDARIES
    pop rbx
    ret
ENDF cf_errno_set

// ---------------------------------------------------------------------------------------
// MXCSR and x87 control word.

// (buf) stores MXCSR at buf[0..4] and the x87 control word at buf[4..6].
FUNC cf_fpctl_read
    BOUNDARIES
    stmxcsr dword ptr [rdi]
    fnstcw word ptr [rdi + 4]
    ret
ENDF cf_fpctl_read

// (mxcsr, fcw) loads both, then crosses block boundaries.
FUNC cf_fpctl_write
    mov dword ptr [rsp - 8], edi
    ldmxcsr dword ptr [rsp - 8]
    mov word ptr [rsp - 16], si
    fldcw word ptr [rsp - 16]
    BOUNDARIES
    ret
ENDF cf_fpctl_write

// () -> cvtsd2si of xmm0 (rounded by MXCSR.RC).
FUNC cf_cvtsd2si_xmm0
    BOUNDARIES
    cvtsd2si rax, xmm0
    ret
ENDF cf_cvtsd2si_xmm0

// (p: *const f64) -> fistp of *p (rounded by the x87 control word's RC).
FUNC cf_x87_round
    BOUNDARIES
    fld qword ptr [rdi]
    fistp qword ptr [rsp - 8]
    mov rax, [rsp - 8]
    ret
ENDF cf_x87_round

// ---------------------------------------------------------------------------------------
// Vector and opmask registers.

// (buf) stores xmm0..15 at buf + 16n.
FUNC cf_store_xmm
    BOUNDARIES
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    movdqu [rdi + 16 * \n], xmm\n
    .endr
    ret
ENDF cf_store_xmm

// (buf) loads xmm0..15 from buf + 16n.
FUNC cf_load_xmm
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    movdqu xmm\n, [rdi + 16 * \n]
    .endr
    BOUNDARIES
    ret
ENDF cf_load_xmm

// (buf) stores ymm0..15 at buf + 32n (AVX).
FUNC cf_store_ymm
    BOUNDARIES
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    vmovdqu [rdi + 32 * \n], ymm\n
    .endr
    ret
ENDF cf_store_ymm

// (buf) loads ymm0..15 from buf + 32n (AVX).
FUNC cf_load_ymm
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    vmovdqu ymm\n, [rdi + 32 * \n]
    .endr
    BOUNDARIES
    ret
ENDF cf_load_ymm

// (buf) stores zmm0..31 at buf + 64n (AVX-512F).
FUNC cf_store_zmm
    BOUNDARIES
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    vmovdqu64 [rdi + 64 * \n], zmm\n
    .endr
    ret
ENDF cf_store_zmm

// (buf) loads zmm0..31 from buf + 64n (AVX-512F).
FUNC cf_load_zmm
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    vmovdqu64 zmm\n, [rdi + 64 * \n]
    .endr
    BOUNDARIES
    ret
ENDF cf_load_zmm

// (buf) stores k0..7 at buf + 8n (AVX-512BW for kmovq).
FUNC cf_store_k
    BOUNDARIES
    .irp n, 0,1,2,3,4,5,6,7
    kmovq [rdi + 8 * \n], k\n
    .endr
    ret
ENDF cf_store_k

// (buf) loads k0..7 from buf + 8n (AVX-512BW).
FUNC cf_load_k
    .irp n, 0,1,2,3,4,5,6,7
    kmovq k\n, [rdi + 8 * \n]
    .endr
    BOUNDARIES
    ret
ENDF cf_load_k

// ---------------------------------------------------------------------------------------
// General purpose registers, for vm.run(start, stop) (not called with a stack frame of
// their own: they stop at the *_end label).

// Stores rax, rbx, rcx, rdx, rsi, rdi, r8..r15, rbp, rsp (GprState order) into cf_gpr_out,
// after a direct jmp (a block boundary that clobbers nothing).
FUNC cf_store_gprs
    jmp 1f
1:  mov [rip + .Lcf_gpr_out + 0], rax
    mov [rip + .Lcf_gpr_out + 8], rbx
    mov [rip + .Lcf_gpr_out + 16], rcx
    mov [rip + .Lcf_gpr_out + 24], rdx
    mov [rip + .Lcf_gpr_out + 32], rsi
    mov [rip + .Lcf_gpr_out + 40], rdi
    mov [rip + .Lcf_gpr_out + 48], r8
    mov [rip + .Lcf_gpr_out + 56], r9
    mov [rip + .Lcf_gpr_out + 64], r10
    mov [rip + .Lcf_gpr_out + 72], r11
    mov [rip + .Lcf_gpr_out + 80], r12
    mov [rip + .Lcf_gpr_out + 88], r13
    mov [rip + .Lcf_gpr_out + 96], r14
    mov [rip + .Lcf_gpr_out + 104], r15
    mov [rip + .Lcf_gpr_out + 112], rbp
    mov [rip + .Lcf_gpr_out + 120], rsp
    jmp 2f
2:  nop
ENDF cf_store_gprs

// Loads rax..r15 and rbp (not rsp) from cf_gpr_in, then crosses a block boundary.
FUNC cf_load_gprs
    mov rax, [rip + .Lcf_gpr_in + 0]
    mov rbx, [rip + .Lcf_gpr_in + 8]
    mov rcx, [rip + .Lcf_gpr_in + 16]
    mov rdx, [rip + .Lcf_gpr_in + 24]
    mov rsi, [rip + .Lcf_gpr_in + 32]
    mov rdi, [rip + .Lcf_gpr_in + 40]
    mov r8, [rip + .Lcf_gpr_in + 48]
    mov r9, [rip + .Lcf_gpr_in + 56]
    mov r10, [rip + .Lcf_gpr_in + 64]
    mov r11, [rip + .Lcf_gpr_in + 72]
    mov r12, [rip + .Lcf_gpr_in + 80]
    mov r13, [rip + .Lcf_gpr_in + 88]
    mov r14, [rip + .Lcf_gpr_in + 96]
    mov r15, [rip + .Lcf_gpr_in + 104]
    mov rbp, [rip + .Lcf_gpr_in + 112]
    jmp 1f
1:  nop
ENDF cf_load_gprs

    .bss
    .p2align 4
    .globl cf_gpr_out
    .type cf_gpr_out,@object
cf_gpr_out:
.Lcf_gpr_out:
    .zero 128
    .size cf_gpr_out, 128
    .globl cf_gpr_in
    .type cf_gpr_in,@object
cf_gpr_in:
.Lcf_gpr_in:
    .zero 128
    .size cf_gpr_in, 128

    .section .note.GNU-stack,"",@progbits
