// Control-flow forms for tests/tests/control_flow.rs: conditional and unconditional
// branches, calls and returns in every encoding the translator must handle.
// Hand-written so that the exact instruction forms (rel8/rel32, memory operands with
// a register base, RIP-relative, SIB) are present. Comments use // (this file goes
// through the C preprocessor).

#include "asm_macros.h"

// ---------------------------------------------------------------------------------------
// jcc: cf_<jcc>_rel8 / cf_<jcc>_rel32 (u64 rflags) -> 1 if taken, 0 if not.
// The flags come from the argument (push rdi; popfq), so one function covers both paths.

.macro CF_JCC cc
FUNC cf_\cc\()_rel8
    push rdi
    popfq
    {disp8} \cc 1f
    xor eax, eax
    ret
1:  mov eax, 1
    ret
ENDF cf_\cc\()_rel8

FUNC cf_\cc\()_rel32
    push rdi
    popfq
    {disp32} \cc 1f
    xor eax, eax
    ret
1:  mov eax, 1
    ret
ENDF cf_\cc\()_rel32
.endm

    CF_JCC je
    CF_JCC jne
    CF_JCC jb
    CF_JCC jae
    CF_JCC jbe
    CF_JCC ja
    CF_JCC jl
    CF_JCC jge
    CF_JCC jle
    CF_JCC jg
    CF_JCC js
    CF_JCC jns
    CF_JCC jo
    CF_JCC jno
    CF_JCC jp
    CF_JCC jnp

// ---------------------------------------------------------------------------------------
// jmp rel8 / rel32: () -> 11 / 22 (100 if the skipped instruction ran).

FUNC cf_jmp_rel8
    mov eax, 1
    {disp8} jmp 1f
    mov eax, 100
1:  add eax, 10
    ret
ENDF cf_jmp_rel8

FUNC cf_jmp_rel32
    mov eax, 2
    {disp32} jmp 1f
    mov eax, 100
1:  add eax, 20
    ret
ENDF cf_jmp_rel32

// Shared callees: double(x) = 2x, triple(x) = 3x.
    .text
    .p2align 4
.Lcf_double:
    lea rax, [rdi + rdi]
    ret
.Lcf_triple:
    lea rax, [rdi + rdi*2]
    ret

// call rel32 (x) -> 2x + x: the callee result combined with state kept across the call.
FUNC cf_call_rel32
    push rbx
    mov rbx, rdi
    call 2f
    add rax, rbx
    pop rbx
    ret
2:  lea rax, [rdi + rdi]
    ret
ENDF cf_call_rel32

// call through a register (x) -> 3x + 1.
FUNC cf_call_reg
    push rbx
    lea rcx, [rip + .Lcf_triple]
    call rcx
    add rax, 1
    pop rbx
    ret
ENDF cf_call_reg

// jmp through a register (x) -> x + 5.
FUNC cf_jmp_reg
    lea rcx, [rip + 1f]
    mov eax, 5
    jmp rcx
    mov eax, 100
1:  add rax, rdi
    ret
ENDF cf_jmp_reg

// call through memory, register base + displacement (x) -> 3x + 2.
FUNC cf_call_mem_reg
    push rbx
    lea rbx, [rip + .Lcf_fnptrs]
    call qword ptr [rbx + 8]
    add rax, 2
    pop rbx
    ret
ENDF cf_call_mem_reg

// jmp through memory, plain register base (x) -> x + 7.
FUNC cf_jmp_mem_reg
    lea rcx, [rip + .Lcf_jmp_mem_reg_slot]
    mov eax, 7
    jmp qword ptr [rcx]
    mov eax, 100
    ret
.Lcf_jmp_mem_reg_target:
    add rax, rdi
    ret
ENDF cf_jmp_mem_reg

// call [rip + x] (x) -> 2x + 3.
FUNC cf_call_mem_rip
    push rbx
    call qword ptr [rip + .Lcf_fnptrs]
    add rax, 3
    pop rbx
    ret
ENDF cf_call_mem_rip

// jmp [rip + x] (x) -> x + 9.
FUNC cf_jmp_mem_rip
    mov eax, 9
    jmp qword ptr [rip + .Lcf_jmp_mem_rip_slot]
    mov eax, 100
    ret
.Lcf_jmp_mem_rip_target:
    add rax, rdi
    ret
ENDF cf_jmp_mem_rip

// call [rip + slot] and jmp [rip + slot] with rdx live at both (x) -> 5 * (3x + 1): both
// slots hold an instrumented target, which the translation expects (a PLT's jump), and
// whose way there leaves rdx alone (it is not spilled before the check).
FUNC cf_slot_rdx
    mov rdx, rdi
    call qword ptr [rip + .Lcf_slot_rdx_call_slot]
    lea rdx, [rax + 1]
    jmp qword ptr [rip + .Lcf_slot_rdx_jmp_slot]
.Lcf_slot_rdx_call_target:
    lea rax, [rdx + rdx*2]
    ret
.Lcf_slot_rdx_jmp_target:
    lea rax, [rdx + rdx*4]
    ret
ENDF cf_slot_rdx

// jmp [rip + cf_switch_slot] and call [rip + cf_switch_slot], the slot writable: the test
// changes it between calls, so the target the translation expected is not always the one
// taken. (x) -> target(target(x)), each target x + 11 or 3x.
FUNC cf_slot_switch
    call qword ptr [rip + .Lcf_switch_slot]
    mov rdi, rax
    jmp qword ptr [rip + .Lcf_switch_slot]
ENDF cf_slot_switch

FUNC cf_switch_add
    lea rax, [rdi + 11]
    ret
ENDF cf_switch_add

FUNC cf_switch_mul
    lea rax, [rdi + rdi*2]
    ret
ENDF cf_switch_mul

// Jump tables: (index 0..3, x) -> a different function of x per case.
// Absolute entries, SIB base + index*8: jmp [rdx + rdi*8].
FUNC cf_jt_base_index
    lea rdx, [rip + .Lcf_abs_table]
    jmp qword ptr [rdx + rdi*8]
.Lcf_case0:
    lea rax, [rsi + 1]
    ret
.Lcf_case1:
    lea rax, [rsi + rsi]
    ret
.Lcf_case2:
    mov rax, rsi
    not rax
    ret
.Lcf_case3:
    imul rax, rsi, 7
    ret
ENDF cf_jt_base_index

// Absolute entries, SIB without base: jmp [index*8 + disp32]. In a position-independent
// executable the table address is not a link-time constant, so the index register holds
// table/8 - 2 + index and the displacement is 16: the same addressing form as
// `jmp [rax*8 + table]`.
FUNC cf_jt_index_disp
    lea rax, [rip + .Lcf_abs_table]
    shr rax, 3
    lea rax, [rax + rdi - 2]
    jmp qword ptr [rax*8 + 16]
ENDF cf_jt_index_disp

// Relative entries (as compilers emit for PIC): movsxd + add + jmp reg.
FUNC cf_jt_relative
    lea rdx, [rip + .Lcf_rel_table]
    movsxd rax, dword ptr [rdx + rdi*4]
    add rax, rdx
    jmp rax
ENDF cf_jt_relative

// One jump site, many turns: (n, k) runs n rounds; round i jumps through the table to
// case i % k (k in 1..4), which adds its own constant and a multiple of i to rax. With
// k = 1 or 2 the site's cache holds every target; with k = 3 or 4 it misses at every
// round (two places, targets in turn), fills until its countdown ends, then goes on
// through the plain lookup. Returns rax.
FUNC cf_jump_cycle
    push rbx
    xor eax, eax
    xor ecx, ecx                    // i
    lea rbx, [rip + .Lcf_cycle_table]
.Lcf_cycle_loop:
    cmp rcx, rdi
    jae .Lcf_cycle_done
    push rax
    mov rax, rcx
    xor edx, edx
    div rsi                         // rdx = i % k
    pop rax
    jmp qword ptr [rbx + rdx*8]
.Lcf_cycle_c0:
    add rax, 1
    jmp .Lcf_cycle_next
.Lcf_cycle_c1:
    lea rax, [rax + rcx*2 + 3]
    jmp .Lcf_cycle_next
.Lcf_cycle_c2:
    lea rax, [rax + rcx*4 + 5]
    jmp .Lcf_cycle_next
.Lcf_cycle_c3:
    imul rax, rax, 3
.Lcf_cycle_next:
    inc rcx
    jmp .Lcf_cycle_loop
.Lcf_cycle_done:
    pop rbx
    ret
ENDF cf_jump_cycle

// A `ret` and an indirect `jmp` used as jumps into native code (libc's memset, whose
// length is rdx): cf_ret_to_native(dst, c, n, fn) and cf_jmp_to_native(dst, c, n, fn) call
// fn(dst, c, n) through `push; push; ret` and `push; jmp rcx`. Called again, the site's
// cache sends them to the broker with rdx the guest's. Return dst.
FUNC cf_ret_to_native
    lea rax, [rip + 1f]
    push rax
    push rcx
    ret
1:  ret
ENDF cf_ret_to_native

FUNC cf_jmp_to_native
    lea rax, [rip + 1f]
    push rax
    jmp rcx
1:  ret
ENDF cf_jmp_to_native

// ret imm16: the caller pushes two arguments, the callee pops them with `ret 16`.
// (a, b) -> a*b + a, plus (stack imbalance << 32) (0 when ret 16 popped exactly 16 bytes).
FUNC cf_ret_imm16
    push rbx
    mov rbx, rsp
    push rsi
    push rdi
    call .Lcf_ret16_callee
    sub rbx, rsp
    shl rbx, 32
    add rax, rbx
    pop rbx
    ret
.Lcf_ret16_callee:
    mov rax, [rsp + 8]
    imul rax, [rsp + 16]
    add rax, [rsp + 8]
    ret 16
ENDF cf_ret_imm16

// ---------------------------------------------------------------------------------------
// loop family: result = iterations | (final rcx << 32).

// loop (n >= 1) -> n iterations.
FUNC cf_loop
    mov rcx, rdi
    xor eax, eax
1:  add rax, 1
    loop 1b
    shl rcx, 32
    or rax, rcx
    ret
ENDF cf_loop

// loope (n, lim): continues while rcx != 0 and the counter <= lim.
FUNC cf_loope
    mov rcx, rdi
    xor eax, eax
1:  add rax, 1
    cmp rsi, rax
    sbb edx, edx
    loope 1b
    shl rcx, 32
    or rax, rcx
    ret
ENDF cf_loope

// loopne (n, lim): continues while rcx != 0 and the counter < lim.
FUNC cf_loopne
    mov rcx, rdi
    xor eax, eax
1:  add rax, 1
    cmp rax, rsi
    sbb edx, edx
    loopne 1b
    shl rcx, 32
    or rax, rcx
    ret
ENDF cf_loopne

// jrcxz / jecxz (rcx) -> 1 if taken, 2 if not.
FUNC cf_jrcxz
    mov rcx, rdi
    xor eax, eax
    jrcxz 1f
    mov eax, 2
    ret
1:  mov eax, 1
    ret
ENDF cf_jrcxz

FUNC cf_jecxz
    mov rcx, rdi
    xor eax, eax
    jecxz 1f
    mov eax, 2
    ret
1:  mov eax, 1
    ret
ENDF cf_jecxz

// ---------------------------------------------------------------------------------------
// Tail call: (x) -> 4(x + 3) + 1, the second half in another function (cf_tail_target,
// in cf_special.S, so the jmp is a linker-resolved rel32) reached by jmp.
FUNC cf_tail_call
    add rdi, 3
    jmp cf_tail_target
ENDF cf_tail_call

// Computed goto: (sel) -> 11 if sel == 0 else 22.
FUNC cf_computed_goto
    lea rax, [rip + 1f]
    lea rcx, [rip + 2f]
    test rdi, rdi
    cmovnz rax, rcx
    jmp rax
1:  mov eax, 11
    ret
2:  mov eax, 22
    ret
ENDF cf_computed_goto

// push + ret as a jump: (x) -> x + 3.
FUNC cf_push_ret
    lea rax, [rip + 1f]
    push rax
    mov eax, 3
    ret
    mov eax, 100
    ret
1:  add rax, rdi
    ret
ENDF cf_push_ret

// call $+5; pop rax: returns the address of the instruction after the call.
FUNC cf_call_next_pop
    call 1f
    .globl cf_call_next_pop_after
cf_call_next_pop_after:
1:  pop rax
    ret
ENDF cf_call_next_pop

// lea rax, [rip + 0]: returns the address of the next instruction.
FUNC cf_lea_rip
    lea rax, [rip + 0]
    .globl cf_lea_rip_after
cf_lea_rip_after:
    ret
ENDF cf_lea_rip

// RIP-relative load and store of data: () -> the constant, read back through a store.
FUNC cf_rip_data
    mov rax, qword ptr [rip + .Lcf_magic]
    mov qword ptr [rip + .Lcf_scratch], rax
    xor eax, eax
    add rax, qword ptr [rip + .Lcf_scratch]
    ret
ENDF cf_rip_data

// Returns its own return address.
FUNC cf_read_ret
    mov rax, [rsp]
    ret
ENDF cf_read_ret

// Calls cf_read_ret and returns what it read: the address of cf_call_read_ret_after.
FUNC cf_call_read_ret
    sub rsp, 8
    call cf_read_ret
    .globl cf_call_read_ret_after
cf_call_read_ret_after:
    add rsp, 8
    ret
ENDF cf_call_read_ret

// ---------------------------------------------------------------------------------------
// Data: function pointers and jump tables.

    .section .data.rel.ro,"aw"
    .p2align 3
.Lcf_fnptrs:
    .quad .Lcf_double
    .quad .Lcf_triple
.Lcf_jmp_mem_reg_slot:
    .quad .Lcf_jmp_mem_reg_target
.Lcf_jmp_mem_rip_slot:
    .quad .Lcf_jmp_mem_rip_target
.Lcf_slot_rdx_call_slot:
    .quad .Lcf_slot_rdx_call_target
.Lcf_slot_rdx_jmp_slot:
    .quad .Lcf_slot_rdx_jmp_target
.Lcf_abs_table:
    .quad .Lcf_case0
    .quad .Lcf_case1
    .quad .Lcf_case2
    .quad .Lcf_case3
.Lcf_cycle_table:
    .quad .Lcf_cycle_c0
    .quad .Lcf_cycle_c1
    .quad .Lcf_cycle_c2
    .quad .Lcf_cycle_c3

    .section .rodata
    .p2align 3
.Lcf_magic:
    .quad 0x1122334455667788
.Lcf_rel_table:
    .long .Lcf_case0 - .Lcf_rel_table
    .long .Lcf_case1 - .Lcf_rel_table
    .long .Lcf_case2 - .Lcf_rel_table
    .long .Lcf_case3 - .Lcf_rel_table

    .data
    .p2align 3
.Lcf_scratch:
    .quad 0
    // Referenced through the local label: a global symbol may be preempted in a shared
    // object (the Python tests build these files into one), which RIP-relative code cannot
    // address.
    .globl cf_switch_slot
cf_switch_slot:
.Lcf_switch_slot:
    .quad cf_switch_add

    .section .note.GNU-stack,"",@progbits

// RIP-relative operands the translator rewrites when the code is more than 2 GiB from the
// code cache (the test copies [cf_far_operands, cf_far_operands_end), code and data, to a
// page in the first 2 GiB): (u64 *out) -> what each form wrote, in out[0..12].
FUNC cf_far_operands
.Lfar_start:
    push rbx
    push r12
    mov r12, rdi
    mov rax, 0x1111111111111111
    mov rcx, 0x2222222222222222
    mov rdx, 0x3333333333333333
    mov rbx, 0x4444444444444444
    mov rsi, 0x5555555555555555
    mov r8, 0x8888888888888888
    lea rax, [rip + .Lfar_q]                // lea r64: a constant
    mov [r12], rax
    lea ecx, [rip + .Lfar_q]                // lea r32: its low half, zero-extended
    mov [r12 + 8], rcx
    mov rdx, qword ptr [rip + .Lfar_q]      // loads through their destination
    mov [r12 + 16], rdx
    mov ebx, dword ptr [rip + .Lfar_q]
    mov [r12 + 24], rbx
    movzx esi, word ptr [rip + .Lfar_q]
    mov [r12 + 32], rsi
    movsx rax, byte ptr [rip + .Lfar_b]
    mov [r12 + 40], rax
    movsxd rcx, dword ptr [rip + .Lfar_d]
    mov [r12 + 48], rcx
    mov r8, qword ptr [rip + .Lfar_q]       // r8: through another register
    mov [r12 + 56], r8
    mov edi, dword ptr [rip + .Lfar_d]
    mov [r12 + 64], rdi
    mov dx, word ptr [rip + .Lfar_d]        // a partial write keeps rdx's upper bits
    mov [r12 + 72], rdx
    lea rsi, [rip + .Lfar_start]            // the copy's own address
    mov [r12 + 80], rsi
    mov rcx, 0x7777
    add rcx, qword ptr [rip + .Lfar_q]      // reads its destination: another register
    mov [r12 + 88], rcx
    pop r12
    pop rbx
    ret
    .p2align 3
.Lfar_q:
    .quad 0x8877665544332211
.Lfar_d:
    .long 0x80000001
.Lfar_b:
    .byte 0x80
ENDF cf_far_operands
