// Guest code of tests/tests/memory_access.rs: one memory instruction per `mem_t_*` function
// (the tests run exactly that first instruction with `vm.run(start, start + its length)`,
// from registers they set themselves), and small functions whose accesses the tests know
// one by one (`mem_bb4`, `mem_probe`).
// Comments use // (this file goes through the C preprocessor).

#include "asm_macros.h"

// One instruction under test, then `ret` (never reached by the table tests).
.macro CASE name, insn:vararg
FUNC \name
    \insn
    ret
ENDF \name
.endm

// ---- plain loads and stores (rdi = data buffer) -----------------------------------------
CASE mem_t_load8, mov al, byte ptr [rdi + 3]
CASE mem_t_load16, mov ax, word ptr [rdi + 6]
CASE mem_t_load32, mov eax, dword ptr [rdi + 12]
CASE mem_t_load64, mov rax, qword ptr [rdi + rcx*8 + 16]
CASE mem_t_store8, mov byte ptr [rdi + 5], sil
CASE mem_t_store16, mov word ptr [rdi + 10], 0xbeef
CASE mem_t_store32, mov dword ptr [rdi + 20], esi
CASE mem_t_store64, mov qword ptr [rdi + rdx - 8], rsi
CASE mem_t_movzx8, movzx eax, byte ptr [rdi + 1]
CASE mem_t_movzx16, movzx ecx, word ptr [rdi + 14]
CASE mem_t_movsx16, movsx rax, word ptr [rdi + 2]
CASE mem_t_movsxd, movsxd rax, dword ptr [rdi + 4]
CASE mem_t_cmp_byte, cmp byte ptr [rdi + 9], 0x42
CASE mem_t_rip_load, mov rax, qword ptr [rip + .Lrodata_qword]
CASE mem_t_fs_load, mov rax, qword ptr fs:[0x28]

// ---- read-modify-write ------------------------------------------------------------------
CASE mem_t_add_rw, add qword ptr [rdi + 24], rsi
CASE mem_t_inc_dword, inc dword ptr [rdi + 60]
CASE mem_t_xchg, xchg qword ptr [rdi + 32], rax
CASE mem_t_cmpxchg, cmpxchg qword ptr [rdi + 40], rcx
CASE mem_t_lock_xadd, lock xadd qword ptr [rdi + 48], rax
// The address of the write depends on rax: the value read must not be taken for it.
CASE mem_t_add_rax_base, add dword ptr [rax + 4], ecx
CASE mem_t_xchg_rax_index, xchg qword ptr [rdi + rax*8], rdx

// ---- stack ------------------------------------------------------------------------------
CASE mem_t_push_reg, push rbx
CASE mem_t_pop_reg, pop rbx
CASE mem_t_push_mem, push qword ptr [rdi + 8]
CASE mem_t_pop_mem, pop qword ptr [rdi + 16]
CASE mem_t_pushfq, pushfq
CASE mem_t_popfq, popfq
CASE mem_t_enter, enter 16, 0
CASE mem_t_leave, leave
CASE mem_t_call, call .Lcallee
CASE mem_t_call_mem, call qword ptr [rdi + 64]
CASE mem_t_jmp_mem, jmp qword ptr [rdi + 72]
CASE mem_t_ret, ret

// The target of mem_t_call / mem_t_call_mem (the tests stop there).
FUNC mem_callee
.Lcallee:
    ret
ENDF mem_callee

// Where mem_t_ret and mem_t_jmp_mem go (the tests stop there).
FUNC mem_landing
    ret
ENDF mem_landing

// ---- string instructions (rsi = source, rdi = destination, rcx = count) ----------------
CASE mem_t_movsb, movsb
CASE mem_t_movsw, movsw
CASE mem_t_movsd, movsd
CASE mem_t_movsq, movsq
CASE mem_t_stosb, stosb
CASE mem_t_stosw, stosw
CASE mem_t_stosd, stosd
CASE mem_t_stosq, stosq
CASE mem_t_lodsb, lodsb
CASE mem_t_lodsw, lodsw
CASE mem_t_lodsd, lodsd
CASE mem_t_lodsq, lodsq
CASE mem_t_cmpsb, cmpsb
CASE mem_t_cmpsw, cmpsw
CASE mem_t_cmpsd, cmpsd
CASE mem_t_cmpsq, cmpsq
CASE mem_t_scasb, scasb
CASE mem_t_scasw, scasw
CASE mem_t_scasd, scasd
CASE mem_t_scasq, scasq
CASE mem_t_rep_movsb, rep movsb
CASE mem_t_rep_stosq, rep stosq
CASE mem_t_repe_cmpsb, repe cmpsb
CASE mem_t_repne_scasb, repne scasb

// ---- vector -----------------------------------------------------------------------------
CASE mem_t_movaps_load, movaps xmm0, xmmword ptr [rdi + 48]
CASE mem_t_movups_store, movups xmmword ptr [rdi + 17], xmm1
CASE mem_t_movdqu_load, movdqu xmm2, xmmword ptr [rdi + 33]
CASE mem_t_movdqu_store, movdqu xmmword ptr [rdi + 80], xmm3
CASE mem_t_vmovdqu_load, vmovdqu ymm4, ymmword ptr [rdi + 7]
CASE mem_t_vmovdqu_store, vmovdqu ymmword ptr [rdi + 96], ymm5
CASE mem_t_zmm_store, vmovdqu64 zmmword ptr [rdi + 128], zmm6
CASE mem_t_gather, vpgatherdd ymm0, [rdi + ymm1*4 + 8], ymm2
CASE mem_t_xsave, xsave [rdi]
CASE mem_t_xrstor, xrstor [rdi]

// ---- addressing forms and special instructions -------------------------------------------
CASE mem_t_xlatb, xlatb
CASE mem_t_bt_far, bt qword ptr [rdi], rsi
CASE mem_t_bt_back, bt qword ptr [rdi + 64], rsi
CASE mem_t_bts_dword, bts dword ptr [rdi], esi
CASE mem_t_btr_word, btr word ptr [rdi + 32], si
CASE mem_t_btc_rcx, btc qword ptr [rdi], rcx
CASE mem_t_addr32, mov eax, dword ptr [edi + 4]
CASE mem_t_fs_reg, mov rax, qword ptr fs:[rcx + 8]
CASE mem_t_push_rsp_rel, push qword ptr [rsp + 8]
CASE mem_t_pop_rsp_rel, pop qword ptr [rsp + 8]
CASE mem_t_enter_nested, enter 16, 1
CASE mem_t_ret_imm, ret 16
CASE mem_t_lea, lea rax, [rdi + 8]
CASE mem_t_nop_mem, nop dword ptr [rax]
CASE mem_t_prefetch, prefetcht0 byte ptr [rdi]
CASE mem_t_cmpxchg16b, cmpxchg16b xmmword ptr [rdi + 64]
CASE mem_t_maskmovdqu, maskmovdqu xmm1, xmm0
CASE mem_t_fld80, fld tbyte ptr [rdi + 16]
CASE mem_t_fld64, fld qword ptr [rdi + 24]
CASE mem_t_fstp64, fstp qword ptr [rdi + 24]
CASE mem_t_vmaskmovps_store, vmaskmovps ymmword ptr [rdi + 32], ymm1, ymm2
CASE mem_t_zmm_masked_store, vmovdqu32 zmmword ptr [rdi + 64] {k1}, zmm0
CASE mem_t_scatter, vpscatterdd [rdi + zmm1*4 + 8] {k1}, zmm2

// ---- whole blocks -----------------------------------------------------------------------

// (p, q) with a return address on the stack: one block of four accesses, in this order:
// read [p], write [p+8], read byte [q], read the return address.
FUNC mem_bb4
    mov rax, qword ptr [rdi]
    mov qword ptr [rdi + 8], rax
    movzx ecx, byte ptr [rsi]
    ret
ENDF mem_bb4

// (buf): accesses around buf+13 and buf[32..48), see tests/tests/memory_access.rs.
FUNC mem_probe
    mov al, byte ptr [rdi + 13]             // 0: R 13
    mov cl, byte ptr [rdi + 12]             // 1: R 12
    mov dword ptr [rdi + 10], 0             // 2: W 10..14
    mov word ptr [rdi + 14], dx             // 3: W 14..16
    mov rax, qword ptr [rdi + 8]            // 4: R 8..16
    mov rax, qword ptr [rdi + 16]           // 5: R 16..24
    mov qword ptr [rdi + 5], rcx            // 6: W 5..13
    add byte ptr [rdi + 13], 1              // 7: R+W 13
    mov r8, qword ptr [rdi + 40]            // 8: R 40..48
    mov byte ptr [rdi + 47], r9b            // 9: W 47
    mov qword ptr [rdi + 48], r10           // 10: W 48..56
    mov r11, qword ptr [rdi + 24]           // 11: R 24..32
    movdqu xmm0, xmmword ptr [rdi + 20]     // 12: R 20..36
    ret                                     // 13: R [rsp]
ENDF mem_probe

    .section .rodata
    .p2align 3
    .globl mem_rodata_qword
    .type mem_rodata_qword,@object
mem_rodata_qword:
.Lrodata_qword:
    .quad 0x0123456789abcdef
    .size mem_rodata_qword, 8

    .section .note.GNU-stack,"",@progbits
