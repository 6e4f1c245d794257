// Guest functions of tests/tests/callbacks.rs: hand-written so that the tests know every
// instruction executed (count, order, addresses, mnemonics). `cb_<func>_<what>` labels mark
// the instructions callbacks are attached to; `cb_<func>_end` is the end of each function.
// Comments use // (this file goes through the C preprocessor).

#include "asm_macros.h"

// (x) -> (x + 3) * 5 + 7: six instructions, no branch.
FUNC cb_straight
    mov rax, rdi
    add rax, 3
    imul rax, rax, 5
    xor edx, edx
    lea rax, [rax + rdx*2 + 7]
    ret
ENDF cb_straight

// (n) -> n + (n - 1) + ... + 1. Executes 5 instructions for n = 0 and 3n + 5 otherwise:
// xor, mov, test, jz, n times (add, dec, jnz), ret.
FUNC cb_loop
    xor eax, eax
    mov rcx, rdi
    test rcx, rcx
LABEL cb_loop_jz
    jz 2f
LABEL cb_loop_body
1:  add rax, rcx
    dec rcx
LABEL cb_loop_jnz
    jnz 1b
LABEL cb_loop_ret
2:  ret
ENDF cb_loop

// (x) -> 4x through a direct call to a local callee:
// push, mov, call, lea, ret, add, pop, ret.
FUNC cb_call_ret
    push rbx
    mov rbx, rdi
LABEL cb_call_ret_call
    call 1f
LABEL cb_call_ret_after
    add rax, rbx
    pop rbx
    ret
LABEL cb_call_ret_callee
1:  lea rax, [rdi + rdi*2]
    ret
ENDF cb_call_ret

// (x) -> x + 17, with the increment in its own instruction (skipping it gives x + 16).
FUNC cb_inc
    mov rax, rdi
LABEL cb_inc_inc
    inc rax
LABEL cb_inc_add
    add rax, 16
LABEL cb_inc_ret
    ret
ENDF cb_inc

// (x) -> x + 6 + the arithmetic and direction flags the guest saw after its adds (OF SF ZF
// AF PF CF DF). The adds run with the direction flag set: callbacks on them see it set.
FUNC cb_df
    std
    mov rax, rdi
    add rax, 2
    add rax, 4
    pushfq
    pop rdx
    cld
    and edx, 0xcd5
    add rax, rdx
    ret
ENDF cb_df

// (buf) -> a checksum of memory work on the 64-byte buffer at rdi: loads, stores,
// read-modify-writes, push and pop of memory, xchg, and string instructions with and
// without rep (their accesses are what memory callbacks see).
FUNC cb_mem
    push rbx
    mov rax, [rdi]
    add [rdi + 8], rax
    mov qword ptr [rdi + 24], 0x1234
    mov rdx, rdi
    lea rsi, [rdx]
    lea rdi, [rdx + 32]
    mov ecx, 8
    rep movsb
    lea rsi, [rdx + 8]
    movsq
    mov rdi, rdx
    xchg rax, [rdi + 16]
    movzx ebx, byte ptr [rdi + 33]
    add rax, rbx
    push qword ptr [rdi + 8]
    pop rcx
    add rax, rcx
    add rax, [rdi + 40]
    pop rbx
    ret
ENDF cb_mem

// (x) -> 2x.
FUNC cb_double
    lea rax, [rdi + rdi]
    ret
ENDF cb_double

// (x) -> the low quadword of xmm0 after the probe `nop` (0 natively). xmm1 holds x at the
// probe.
FUNC cb_xmm_io
    movq xmm1, rdi
    pxor xmm0, xmm0
LABEL cb_xmm_io_probe
    nop
    movq rax, xmm0
    ret
ENDF cb_xmm_io

// (x) -> the low quadword of the upper half of ymm0 after the probe `nop` (0 natively).
// ymm2 holds x in its four quadwords at the probe. Needs AVX2.
FUNC cb_ymm_io
    vpxor xmm0, xmm0, xmm0
    vmovq xmm2, rdi
    vpbroadcastq ymm2, xmm2
LABEL cb_ymm_io_probe
    nop
    vextracti128 xmm0, ymm0, 1
    vmovq rax, xmm0
    vzeroupper
    ret
ENDF cb_ymm_io

// (x) -> a mix of x. Calls (direct and indirect), jumps (jmp, jcc), movs and look-alikes
// (movzx, cmovne, movsxd) in a known order. Instruction indices, as the tests name them:
//  0 mov  1 mov  2 call  3 jmp  4 add  5 ret  6 movzx  7 test  8 je  9 cmovne  10 lea
// 11 call 12 movsxd 13 add 14 ret 15 mov 16 ret
// Executed for x != -3: 0 1 2 4 5 3 6 7 8 9 10 11 15 16 12 13 14; for x == -3 the je is
// taken and 9 is not executed.
FUNC cb_mnem
    mov rax, rdi
    mov ecx, 3
    call 1f
    jmp 2f
1:  add rax, rcx
    ret
2:  movzx edx, al
    test rax, rax
    je 3f
    cmovne rdx, rax
3:  lea r8, [rip + 4f]
    call r8
    movsxd rax, eax
    add rax, rdx
    ret
4:  mov r9, rax
    ret
ENDF cb_mnem

// ---------------------------------------------------------------------------------------
// Vector state kept in registers across many instructions.

// One round over ymm0..ymm15: every register is read and most are written.
.macro AVX2_ROUND
    vpaddq ymm0, ymm0, ymm8
    vpxor ymm1, ymm1, ymm9
    vpmuludq ymm2, ymm2, ymm10
    vpsubq ymm3, ymm3, ymm11
    vpshufd ymm4, ymm4, 0x1b
    vaddpd ymm5, ymm5, ymm13
    vpermq ymm6, ymm6, 0x4e
    vpor ymm7, ymm7, ymm15
    vpaddd ymm8, ymm8, ymm1
    vpxor ymm9, ymm9, ymm2
    vpsrlq ymm10, ymm10, 3
    vpunpcklqdq ymm11, ymm11, ymm4
    vmulpd ymm12, ymm12, ymm5
    vpandn ymm13, ymm13, ymm6
    vpalignr ymm14, ymm14, ymm7, 8
    vpaddq ymm15, ymm15, ymm0
.endm

// (const u8 in[512], u8 out[512]): loads ymm0..ymm15 from `in`, mixes them for 64
// instructions, stores them to `out`. Needs AVX2.
FUNC cb_vec_avx2
    vmovdqu ymm0, [rdi + 0*32]
    vmovdqu ymm1, [rdi + 1*32]
    vmovdqu ymm2, [rdi + 2*32]
    vmovdqu ymm3, [rdi + 3*32]
    vmovdqu ymm4, [rdi + 4*32]
    vmovdqu ymm5, [rdi + 5*32]
    vmovdqu ymm6, [rdi + 6*32]
    vmovdqu ymm7, [rdi + 7*32]
    vmovdqu ymm8, [rdi + 8*32]
    vmovdqu ymm9, [rdi + 9*32]
    vmovdqu ymm10, [rdi + 10*32]
    vmovdqu ymm11, [rdi + 11*32]
    vmovdqu ymm12, [rdi + 12*32]
    vmovdqu ymm13, [rdi + 13*32]
    vmovdqu ymm14, [rdi + 14*32]
    vmovdqu ymm15, [rdi + 15*32]
    AVX2_ROUND
    AVX2_ROUND
    AVX2_ROUND
    AVX2_ROUND
LABEL cb_vec_avx2_done
    vmovdqu [rsi + 0*32], ymm0
    vmovdqu [rsi + 1*32], ymm1
    vmovdqu [rsi + 2*32], ymm2
    vmovdqu [rsi + 3*32], ymm3
    vmovdqu [rsi + 4*32], ymm4
    vmovdqu [rsi + 5*32], ymm5
    vmovdqu [rsi + 6*32], ymm6
    vmovdqu [rsi + 7*32], ymm7
    vmovdqu [rsi + 8*32], ymm8
    vmovdqu [rsi + 9*32], ymm9
    vmovdqu [rsi + 10*32], ymm10
    vmovdqu [rsi + 11*32], ymm11
    vmovdqu [rsi + 12*32], ymm12
    vmovdqu [rsi + 13*32], ymm13
    vmovdqu [rsi + 14*32], ymm14
    vmovdqu [rsi + 15*32], ymm15
    vzeroupper
    ret
ENDF cb_vec_avx2

// One round over zmm0..zmm31 and k0..k7 (AVX512F/BW/DQ): masked and unmasked vector
// operations, mask arithmetic, comparisons into masks.
.macro AVX512_ROUND
    vpaddq zmm0{k1}, zmm0, zmm16
    vpxorq zmm1{k2}{z}, zmm1, zmm17
    vpmullq zmm2, zmm2, zmm18
    vpsubq zmm3{k3}, zmm3, zmm19
    vprolq zmm4, zmm4, 13
    vpermq zmm5, zmm6, zmm20
    vpternlogq zmm6, zmm21, zmm22, 0x96
    vaddpd zmm7{k4}, zmm7, zmm23
    vpaddd zmm16, zmm16, zmm8
    vpxord zmm17, zmm17, zmm9
    vpcmpuq k5, zmm10, zmm24, 1
    kxorq k6, k6, k5
    kaddq k7, k7, k1
    kandq k2, k2, k7
    korq k3, k3, k0
    vpaddq zmm25{k5}, zmm25, zmm11
    vpshufb zmm26, zmm26, zmm12
    vpsrlvq zmm27, zmm27, zmm13
    vpandq zmm28, zmm28, zmm14
    vporq zmm29, zmm29, zmm15
    vpaddq zmm30, zmm30, zmm31
    vpxorq zmm31, zmm31, zmm0
    kshiftlq k4, k4, 3
    vpaddb zmm8{k6}, zmm8, zmm9
    vpsubw zmm9, zmm9, zmm28
    vmulpd zmm10, zmm10, zmm7
    vpermi2q zmm11, zmm12, zmm30
    vpmaxuq zmm12, zmm12, zmm29
    vpminsq zmm13, zmm13, zmm27
    vpunpckhqdq zmm14, zmm14, zmm26
    vpsllq zmm15, zmm15, 7
    vpaddq zmm18{k7}, zmm18, zmm25
    vpxorq zmm19, zmm19, zmm3
    vpsubq zmm20, zmm20, zmm5
    vshufi64x2 zmm21, zmm21, zmm4, 0x4e
    vpaddq zmm22, zmm22, zmm6
    vpxorq zmm23, zmm23, zmm1
    vpaddq zmm24, zmm24, zmm2
    korq k1, k1, k3
    kxnorq k0, k6, k2
.endm

// (const u8 in[2112], u8 out[2112]): loads zmm0..zmm31 from in[0..2048] and k0..k7 from
// in[2048..2112], mixes them for 120 instructions, stores them to `out` in the same
// layout.
FUNC cb_vec_avx512
    kmovq k0, [rdi + 2048 + 0*8]
    kmovq k1, [rdi + 2048 + 1*8]
    kmovq k2, [rdi + 2048 + 2*8]
    kmovq k3, [rdi + 2048 + 3*8]
    kmovq k4, [rdi + 2048 + 4*8]
    kmovq k5, [rdi + 2048 + 5*8]
    kmovq k6, [rdi + 2048 + 6*8]
    kmovq k7, [rdi + 2048 + 7*8]
    vmovdqu64 zmm0, [rdi + 0*64]
    vmovdqu64 zmm1, [rdi + 1*64]
    vmovdqu64 zmm2, [rdi + 2*64]
    vmovdqu64 zmm3, [rdi + 3*64]
    vmovdqu64 zmm4, [rdi + 4*64]
    vmovdqu64 zmm5, [rdi + 5*64]
    vmovdqu64 zmm6, [rdi + 6*64]
    vmovdqu64 zmm7, [rdi + 7*64]
    vmovdqu64 zmm8, [rdi + 8*64]
    vmovdqu64 zmm9, [rdi + 9*64]
    vmovdqu64 zmm10, [rdi + 10*64]
    vmovdqu64 zmm11, [rdi + 11*64]
    vmovdqu64 zmm12, [rdi + 12*64]
    vmovdqu64 zmm13, [rdi + 13*64]
    vmovdqu64 zmm14, [rdi + 14*64]
    vmovdqu64 zmm15, [rdi + 15*64]
    vmovdqu64 zmm16, [rdi + 16*64]
    vmovdqu64 zmm17, [rdi + 17*64]
    vmovdqu64 zmm18, [rdi + 18*64]
    vmovdqu64 zmm19, [rdi + 19*64]
    vmovdqu64 zmm20, [rdi + 20*64]
    vmovdqu64 zmm21, [rdi + 21*64]
    vmovdqu64 zmm22, [rdi + 22*64]
    vmovdqu64 zmm23, [rdi + 23*64]
    vmovdqu64 zmm24, [rdi + 24*64]
    vmovdqu64 zmm25, [rdi + 25*64]
    vmovdqu64 zmm26, [rdi + 26*64]
    vmovdqu64 zmm27, [rdi + 27*64]
    vmovdqu64 zmm28, [rdi + 28*64]
    vmovdqu64 zmm29, [rdi + 29*64]
    vmovdqu64 zmm30, [rdi + 30*64]
    vmovdqu64 zmm31, [rdi + 31*64]
    AVX512_ROUND
    AVX512_ROUND
    AVX512_ROUND
LABEL cb_vec_avx512_done
    vmovdqu64 [rsi + 0*64], zmm0
    vmovdqu64 [rsi + 1*64], zmm1
    vmovdqu64 [rsi + 2*64], zmm2
    vmovdqu64 [rsi + 3*64], zmm3
    vmovdqu64 [rsi + 4*64], zmm4
    vmovdqu64 [rsi + 5*64], zmm5
    vmovdqu64 [rsi + 6*64], zmm6
    vmovdqu64 [rsi + 7*64], zmm7
    vmovdqu64 [rsi + 8*64], zmm8
    vmovdqu64 [rsi + 9*64], zmm9
    vmovdqu64 [rsi + 10*64], zmm10
    vmovdqu64 [rsi + 11*64], zmm11
    vmovdqu64 [rsi + 12*64], zmm12
    vmovdqu64 [rsi + 13*64], zmm13
    vmovdqu64 [rsi + 14*64], zmm14
    vmovdqu64 [rsi + 15*64], zmm15
    vmovdqu64 [rsi + 16*64], zmm16
    vmovdqu64 [rsi + 17*64], zmm17
    vmovdqu64 [rsi + 18*64], zmm18
    vmovdqu64 [rsi + 19*64], zmm19
    vmovdqu64 [rsi + 20*64], zmm20
    vmovdqu64 [rsi + 21*64], zmm21
    vmovdqu64 [rsi + 22*64], zmm22
    vmovdqu64 [rsi + 23*64], zmm23
    vmovdqu64 [rsi + 24*64], zmm24
    vmovdqu64 [rsi + 25*64], zmm25
    vmovdqu64 [rsi + 26*64], zmm26
    vmovdqu64 [rsi + 27*64], zmm27
    vmovdqu64 [rsi + 28*64], zmm28
    vmovdqu64 [rsi + 29*64], zmm29
    vmovdqu64 [rsi + 30*64], zmm30
    vmovdqu64 [rsi + 31*64], zmm31
    kmovq [rsi + 2048 + 0*8], k0
    kmovq [rsi + 2048 + 1*8], k1
    kmovq [rsi + 2048 + 2*8], k2
    kmovq [rsi + 2048 + 3*8], k3
    kmovq [rsi + 2048 + 4*8], k4
    kmovq [rsi + 2048 + 5*8], k5
    kmovq [rsi + 2048 + 6*8], k6
    kmovq [rsi + 2048 + 7*8], k7
    vzeroupper
    ret
ENDF cb_vec_avx512

    .section .note.GNU-stack,"",@progbits

// void cb_read_hi16(uint8_t *out): a few integer instructions (callbacks run between
// them), then stores zmm16-31 (16 x 64 bytes) and k1-k7 (7 x 8 bytes) to out[0..1080],
// without writing any of them first. Needs AVX-512 F and BW.
FUNC cb_read_hi16
    mov rax, 1
    add rax, 2
    imul rax, rax, 3
    xor rax, 5
    vmovdqu64 [rdi + 0 * 64], zmm16
    vmovdqu64 [rdi + 1 * 64], zmm17
    vmovdqu64 [rdi + 2 * 64], zmm18
    vmovdqu64 [rdi + 3 * 64], zmm19
    vmovdqu64 [rdi + 4 * 64], zmm20
    vmovdqu64 [rdi + 5 * 64], zmm21
    vmovdqu64 [rdi + 6 * 64], zmm22
    vmovdqu64 [rdi + 7 * 64], zmm23
    vmovdqu64 [rdi + 8 * 64], zmm24
    vmovdqu64 [rdi + 9 * 64], zmm25
    vmovdqu64 [rdi + 10 * 64], zmm26
    vmovdqu64 [rdi + 11 * 64], zmm27
    vmovdqu64 [rdi + 12 * 64], zmm28
    vmovdqu64 [rdi + 13 * 64], zmm29
    vmovdqu64 [rdi + 14 * 64], zmm30
    vmovdqu64 [rdi + 15 * 64], zmm31
    kmovq [rdi + 1024], k1
    kmovq [rdi + 1032], k2
    kmovq [rdi + 1040], k3
    kmovq [rdi + 1048], k4
    kmovq [rdi + 1056], k5
    kmovq [rdi + 1064], k6
    kmovq [rdi + 1072], k7
    ret
ENDF cb_read_hi16

// (x) -> 2x, with the flags of that add (CF, ZF, PF and OF for x = 1 << 63) returned to
// the caller: they are live from the add to the ret, dead before the add.
FUNC cb_flags_tail
    mov rax, rdi
    add rax, rdi
    mov rdx, rax
    ret
ENDF cb_flags_tail
