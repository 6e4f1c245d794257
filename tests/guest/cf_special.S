// Unusual control flow for tests/tests/control_flow.rs: overlapping instructions, a long
// straight-line block, a hot loop, far/transactional transfers the engine must refuse,
// and bytes that do not decode in 64-bit mode. Comments use // (C preprocessor).

#include "asm_macros.h"

// Target of cf_tail_call (cf_branches.S): (x) -> 4x + 1.
FUNC cf_tail_target
    lea rax, [rdi*4 + 1]
    ret
ENDF cf_tail_target

// Overlapping instructions: (sel). sel == 0 runs the movabs and returns its immediate;
// sel != 0 jumps 2 bytes into the movabs, where the immediate's bytes
// b8 2a 00 00 00 c3 decode as `mov eax, 42; ret`.
FUNC cf_overlap
    test rdi, rdi
    jnz .Lcf_overlap_mov + 2
.Lcf_overlap_mov:
    movabs rax, 0x9090c30000002ab8
    ret
ENDF cf_overlap

// A 330-instruction straight-line block: (x) -> a hash of x.
FUNC cf_long_block
    mov rax, rdi
    .rept 110
    lea rax, [rax + rax*4 + 7]
    rol rax, 13
    xor rax, rdi
    .endr
    ret
ENDF cf_long_block

// A tight loop: (n) -> sum over i = n..1 of a mix of i, n iterations of 4 instructions.
FUNC cf_hot_loop
    xor eax, eax
    mov rcx, rdi
    test rcx, rcx
    jz 2f
1:  lea rax, [rax + rcx*2]
    xor rax, rcx
    sub rcx, 1
    jnz 1b
2:  ret
ENDF cf_hot_loop

// ---------------------------------------------------------------------------------------
// Far and transactional transfers. Each builds a valid far pointer (current cs, a label of
// its own) before the instruction, so that an engine that wrongly ran it natively would
// not fault there. The engine must refuse them (UnsupportedInstruction at the *_insn label).

// jmp far m16:64 (REX.W FF /5).
FUNC cf_far_jmp
    sub rsp, 24
    lea rax, [rip + 1f]
    mov [rsp], rax
    mov word ptr [rsp + 8], cs
    mov rax, rsp
    .globl cf_far_jmp_insn
cf_far_jmp_insn:
    .att_syntax prefix
    rex64 ljmp *(%rax)
    .intel_syntax noprefix
1:  add rsp, 24
    mov eax, 7
    ret
ENDF cf_far_jmp

// call far m16:64 (REX.W FF /3).
FUNC cf_far_call
    sub rsp, 24
    lea rax, [rip + 2f]
    mov [rsp], rax
    mov word ptr [rsp + 8], cs
    mov rax, rsp
    .globl cf_far_call_insn
cf_far_call_insn:
    .att_syntax prefix
    rex64 lcall *(%rax)
    .intel_syntax noprefix
    add rsp, 24
    mov eax, 8
    ret
2:
    .att_syntax prefix
    lretq
    .intel_syntax noprefix
ENDF cf_far_call

// Far return (REX.W CB) used as a jump to the next label.
FUNC cf_far_ret
    mov eax, 9
    mov ecx, cs
    push rcx
    lea rcx, [rip + 1f]
    push rcx
    .globl cf_far_ret_insn
cf_far_ret_insn:
    .att_syntax prefix
    lretq
    .intel_syntax noprefix
1:  ret
ENDF cf_far_ret

// Transactional region.
FUNC cf_xbegin
    mov eax, 1
    .globl cf_xbegin_insn
cf_xbegin_insn:
    xbegin 1f
    mov eax, 2
    xend
1:  ret
ENDF cf_xbegin

// ---------------------------------------------------------------------------------------
// Undecodable bytes after a few valid instructions and a block boundary. At the byte,
// rax == 3. cf_invalid_XX_insn labels the byte.

.macro CF_INVALID byte
FUNC cf_invalid_\byte
    mov eax, 1
    jmp 1f
1:  add eax, 2
    nop
    .globl cf_invalid_\byte\()_insn
cf_invalid_\byte\()_insn:
    .byte 0x\byte
    ret
ENDF cf_invalid_\byte
.endm

    CF_INVALID 06
    CF_INVALID 07
    CF_INVALID 27
    CF_INVALID 37

    .section .note.GNU-stack,"",@progbits
