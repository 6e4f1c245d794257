/* Differential suite, hand-written assembly: flags live across indirect jumps, returns and
 * block boundaries; loop/jrcxz/jecxz; pushf/popf, lahf/sahf; atomics; backward rep movsb;
 * red zone live across indirect jumps; memory-indirect jumps and calls; ret imm16;
 * RIP-relative operands with immediates; call/pop PC discovery; syscall; AVX-512 zmm16-31
 * and k1-k7. */
    .intel_syntax noprefix
    .text

/* uint64_t diff_asm_flags_indirect(uint64_t a, uint64_t b): flags of a + b after an
 * indirect jmp, masked to CF PF AF ZF SF OF. */
    .globl diff_asm_flags_indirect
    .type diff_asm_flags_indirect,@function
diff_asm_flags_indirect:
    lea rax, [rip + 1f]
    add rdi, rsi
    jmp rax
1:  pushfq
    pop rax
    and eax, 0x8d5
    ret
    .size diff_asm_flags_indirect, .-diff_asm_flags_indirect

/* uint64_t diff_asm_flags_ret(uint64_t a, uint64_t b): flags of a - b computed by a callee
 * and read by the caller after the ret; plus the borrow consumed by sbb. */
    .globl diff_asm_flags_ret
    .type diff_asm_flags_ret,@function
diff_asm_flags_ret:
    call .Lsub_helper
    pushfq
    pop rax
    and eax, 0x8d5
    call .Lcmp_helper   /* flags of a < b set by the callee */
    sbb rcx, rcx        /* -1 if a < b (unsigned) */
    shl rcx, 16
    or rax, rcx
    ret
.Lsub_helper:
    mov r8, rdi
    sub r8, rsi
    ret
.Lcmp_helper:
    cmp rdi, rsi
    ret
    .size diff_asm_flags_ret, .-diff_asm_flags_ret

/* uint32_t diff_asm_flags_chain(int64_t a, int64_t b): one cmp, then eight conditional
 * jumps in eight blocks consuming the same flags (lea keeps them intact). */
    .globl diff_asm_flags_chain
    .type diff_asm_flags_chain,@function
diff_asm_flags_chain:
    xor eax, eax
    cmp rdi, rsi
    jne 1f
    lea eax, [rax + 1]
1:  jae 2f
    lea eax, [rax + 2]
2:  jle 3f
    lea eax, [rax + 4]
3:  jno 4f
    lea eax, [rax + 8]
4:  jns 5f
    lea eax, [rax + 16]
5:  jnp 6f
    lea eax, [rax + 32]
6:  jbe 7f
    lea eax, [rax + 64]
7:  jge 8f
    lea eax, [rax + 128]
8:  ret
    .size diff_asm_flags_chain, .-diff_asm_flags_chain

/* uint64_t diff_asm_loops(uint64_t n): loop and jrcxz over n & 0xfffff, loopnz, and jecxz
 * on the full n (n = 1 << 32 takes jecxz, not jrcxz). */
    .globl diff_asm_loops
    .type diff_asm_loops,@function
diff_asm_loops:
    xor eax, eax
    mov rcx, rdi
    and rcx, 0xfffff
    jrcxz 2f
1:  add rax, rcx
    loop 1b
2:  mov rcx, rdi
    and rcx, 0xff
    inc rcx
3:  add rax, 3
    test al, 0x1f
    loopnz 3b
    imul rcx, rcx, 1000
    add rax, rcx
    mov rcx, rdi
    jecxz 4f
    add rax, 7
4:  jrcxz 5f
    add rax, 11
5:  ret
    .size diff_asm_loops, .-diff_asm_loops

/* uint64_t diff_asm_pushf_popf(uint64_t a): sets CF PF AF ZF SF OF from a with popfq and
 * reads them back with pushfq; adc/seto/setc consume them; stc/cmc; sahf/lahf round trip of
 * bits 16..23 of a. */
    .globl diff_asm_pushf_popf
    .type diff_asm_pushf_popf,@function
diff_asm_pushf_popf:
    mov r8, rdi
    shr r8, 16          /* AH for sahf = bits 24..31 of a */
    pushfq
    pop rax
    and rax, ~0x8d5
    mov rcx, rdi
    and ecx, 0x8d5
    or rax, rcx
    push rax
    popfq               /* flags = the arithmetic flags of a */
    pushfq
    pop rsi             /* read back (pop does not touch the flags) */
    mov r9, rdi
    adc r9, 0           /* consumes CF set by popfq */
    seto r10b
    setc r11b
    pushfq
    pop rdx             /* flags of the adc */
    stc
    cmc
    setc cl             /* 0 */
    mov eax, r8d
    sahf
    lahf
    movzx eax, ah
    shl rax, 32
    and esi, 0x8d5
    or rax, rsi
    and edx, 0x8d5
    shl rdx, 12
    or rax, rdx
    movzx r10d, r10b
    shl r10, 24
    or rax, r10
    movzx r11d, r11b
    shl r11, 25
    or rax, r11
    movzx ecx, cl
    shl ecx, 26
    or rax, rcx
    shl r9, 40
    xor rax, r9
    ret
    .size diff_asm_pushf_popf, .-diff_asm_pushf_popf

/* uint64_t diff_asm_atomics(uint64_t *mem, uint64_t v): lock xadd, lock cmpxchg (success and
 * failure), xchg, lock bts/btr/btc, bsf/bsr, lock cmpxchg16b. mem needs 48 bytes, 16-aligned. */
    .globl diff_asm_atomics
    .type diff_asm_atomics,@function
diff_asm_atomics:
    push rbx
    mov r8, rsi
    lock xadd [rdi], r8         /* r8 = old mem[0], mem[0] += v */
    mov rax, [rdi]
    mov rcx, rsi
    not rcx
    lock cmpxchg [rdi + 8], rcx /* mem[1] == mem[0]? */
    setz r9b
    mov rax, [rdi + 8]
    lock cmpxchg [rdi + 8], rcx /* succeeds now */
    setz r10b
    mov r11, rsi
    xchg [rdi + 16], r11
    mov ecx, esi
    and ecx, 63
    lock bts qword ptr [rdi + 24], rcx
    setc dl
    lock btr qword ptr [rdi], rcx
    adc dl, 0
    lock btc qword ptr [rdi + 16], rcx
    adc dl, 0
    bsf rcx, rsi
    cmovz rcx, r8
    bsr rax, rsi
    cmovz rax, r11
    add rcx, rax
    /* cmpxchg16b on mem[4..6] with the expected value in rdx:rax */
    push rcx
    push rdx
    mov rax, [rdi + 32]
    mov rdx, [rdi + 40]
    mov rbx, rsi
    mov rcx, r8
    lock cmpxchg16b [rdi + 32]
    setz al
    movzx eax, al
    pop rdx
    pop rcx
    shl rax, 8
    or al, dl
    shl rax, 8
    or al, r9b
    shl rax, 8
    or al, r10b
    shl rcx, 32
    xor rax, rcx
    xor rax, r8
    pop rbx
    ret
    .size diff_asm_atomics, .-diff_asm_atomics

/* uint64_t diff_asm_std_movsb(uint8_t *dst, const uint8_t *src, uint64_t n): copies
 * backwards with DF = 1 (rep movsb from the last byte down), then rep stosb forwards with
 * DF = 0. Returns the final rcx/rdi/rsi offsets of the backward copy. */
    .globl diff_asm_std_movsb
    .type diff_asm_std_movsb,@function
diff_asm_std_movsb:
    mov r8, rdi
    mov r9, rsi
    mov rcx, rdx
    lea rdi, [rdi + rdx - 1]
    lea rsi, [rsi + rdx - 1]
    std
    rep movsb
    cld
    mov rax, rdi
    sub rax, r8
    mov r10, rsi
    sub r10, r9
    shl r10, 20
    xor rax, r10
    shl rcx, 40
    xor rax, rcx
    /* rep stosb of 0x5c over dst[n .. n + n/2] */
    lea rdi, [r8 + rdx]
    mov rcx, rdx
    shr rcx, 1
    mov r10, rax
    mov al, 0x5c
    rep stosb
    mov rax, r10
    ret
    .size diff_asm_std_movsb, .-diff_asm_std_movsb

/* uint64_t diff_asm_red_zone(uint64_t a): fills 16 qwords of the red zone, then crosses an
 * indirect jmp, a direct jmp and a conditional branch before summing them. */
    .globl diff_asm_red_zone
    .type diff_asm_red_zone,@function
diff_asm_red_zone:
    mov rax, rdi
    mov rcx, -128
1:  imul rax, rax, 0x5851f42d
    add rax, rcx
    mov [rsp + rcx], rax
    add rcx, 8
    jnz 1b
    lea rdx, [rip + 2f]
    jmp rdx
2:  jmp 3f
3:  test rdi, rdi
    jz 4f
    nop
4:  xor eax, eax
    mov rcx, -128
5:  rol rax, 7
    xor rax, [rsp + rcx]
    add rcx, 8
    jnz 5b
    ret
    .size diff_asm_red_zone, .-diff_asm_red_zone

/* uint64_t diff_asm_indirect_mem(uint64_t idx, uint64_t x): a jmp through a RIP-relative
 * table of absolute addresses, call [rip + ptr], call through a stack slot, and a callee
 * ending with ret 16 (stack arguments popped by the callee). */
    .globl diff_asm_indirect_mem
    .type diff_asm_indirect_mem,@function
diff_asm_indirect_mem:
    and edi, 3
    lea rax, [rip + .Ljt]
    jmp qword ptr [rax + rdi * 8]
.Lcase0:
    lea rax, [rsi + 11]
    ret
.Lcase1:
    mov rdi, rsi
    call qword ptr [rip + .Lfptr]
    add rax, 1
    ret
.Lcase2:
    mov rdi, rsi
    mov rax, [rip + .Lfptr]
    push rax
    call qword ptr [rsp]
    add rsp, 8
    xor rax, 0x77
    ret
.Lcase3:
    push rsi
    lea rax, [rsi + 5]
    push rax
    call .Lret16_callee
    add rax, rsi
    ret
.Lhelper:
    imul rax, rdi, 13
    ret
.Lret16_callee:
    mov rax, [rsp + 8]
    imul rax, [rsp + 16]
    ret 16
    .size diff_asm_indirect_mem, .-diff_asm_indirect_mem

/* uint64_t diff_asm_slot_switch(uint64_t i, uint64_t x): calls, then tail-jumps, through a
 * writable slot that holds one of two functions depending on i: the translator expects the
 * slot's value at translation (a direct jump when it holds it), and every other value must
 * take the lookup with the right target. */
    .globl diff_asm_slot_switch
    .type diff_asm_slot_switch,@function
diff_asm_slot_switch:
    lea rax, [rip + .Lslot_a]
    lea rcx, [rip + .Lslot_b]
    test edi, 1
    cmovnz rax, rcx
    mov [rip + .Lslot], rax
    push rbx
    mov rbx, rsi
    mov rdi, rsi
    call qword ptr [rip + .Lslot]
    add rbx, rax
    mov rdi, rbx
    pop rbx
    jmp qword ptr [rip + .Lslot]
.Lslot_a:
    lea rax, [rdi * 2 + 1]
    ret
.Lslot_b:
    mov rax, rdi
    xor rax, 0x5a5a
    ret
    .size diff_asm_slot_switch, .-diff_asm_slot_switch

/* uint64_t diff_asm_riprel(uint64_t i): RIP-relative loads, a RIP-relative compare with an
 * imm32 and with an imm8 (displacement relative to the end of the immediate), a RIP-relative
 * read-modify-write, a RIP-relative movdqu; imul, pshufd, vpshufd with immediates after the
 * displacement, a RIP-relative shift and test (the translator rewrites displacements in
 * place). */
    .globl diff_asm_riprel
    .type diff_asm_riprel,@function
diff_asm_riprel:
    and edi, 7
    lea rcx, [rip + .Ltab]
    mov rax, [rcx + rdi * 8]
    add rax, [rip + .Ltab + 8]
    cmp qword ptr [rip + .Ltab], 0x1234
    sete dl
    movzx edx, dl
    add rax, rdx
    cmp byte ptr [rip + .Lbyte], 0x7f
    setne dl
    movzx edx, dl
    shl rdx, 4
    add rax, rdx
    mov qword ptr [rip + .Lscratch], 0x10
    add qword ptr [rip + .Lscratch], rdi
    imul rax, [rip + .Lscratch]
    movdqu xmm0, [rip + .Lvec]
    movq rdx, xmm0
    add rax, rdx
    pextrq rdx, xmm0, 1
    xor rax, rdx
    /* An immediate after the displacement in legacy, SSE and VEX forms, a shift. */
    imul edx, dword ptr [rip + .Ltab + 8], 0x12345
    add rax, rdx
    pshufd xmm1, [rip + .Lvec], 0x1b
    vpshufd xmm2, [rip + .Lvec], 0x4e
    movq rdx, xmm1
    add rax, rdx
    movq rdx, xmm2
    xor rax, rdx
    shl qword ptr [rip + .Lscratch], 3
    add rax, [rip + .Lscratch]
    test byte ptr [rip + .Lbyte], 2
    setnz dl
    movzx edx, dl
    add rax, rdx
    ret
    .size diff_asm_riprel, .-diff_asm_riprel

/* uint64_t diff_asm_lea_rip(void): the guest address of a data table (lea rip). */
    .globl diff_asm_lea_rip
    .type diff_asm_lea_rip,@function
diff_asm_lea_rip:
    lea rax, [rip + .Ltab]
    ret
    .size diff_asm_lea_rip, .-diff_asm_lea_rip

/* uint64_t diff_asm_get_pc(void): the guest address of a label, found with call/pop. */
    .globl diff_asm_get_pc
    .type diff_asm_get_pc,@function
diff_asm_get_pc:
    call 1f
1:  pop rax
    ret
    .size diff_asm_get_pc, .-diff_asm_get_pc

/* uint64_t diff_asm_ret_addr(void): the return address a nested call pushed, read by the
 * callee from [rsp]. */
    .globl diff_asm_ret_addr
    .type diff_asm_ret_addr,@function
diff_asm_ret_addr:
    call .Lread_ret
    ret
.Lread_ret:
    mov rax, [rsp]
    ret
    .size diff_asm_ret_addr, .-diff_asm_ret_addr

/* uint64_t diff_asm_getpid(void): getpid through the syscall instruction. */
    .globl diff_asm_getpid
    .type diff_asm_getpid,@function
diff_asm_getpid:
    mov eax, 39
    syscall
    ret
    .size diff_asm_getpid, .-diff_asm_getpid

/* uint64_t diff_asm_syscall_rcx(void): rcx after a syscall (the kernel puts the address of
 * the next instruction there) minus that address: 0 natively. */
    .globl diff_asm_syscall_rcx
    .type diff_asm_syscall_rcx,@function
diff_asm_syscall_rcx:
    mov eax, 39
    syscall
1:  lea rdx, [rip + 1b]
    mov rax, rcx
    sub rax, rdx
    ret
    .size diff_asm_syscall_rcx, .-diff_asm_syscall_rcx

/* uint64_t diff_asm_avx512_hi(uint64_t a, uint8_t *out): computes with zmm16-zmm31 and
 * k1-k7 (AVX-512 F, BW and DQ), stores zmm16..zmm31 (16 x 64 bytes) to out[0..1024] and
 * k1..k7 to out[1024..1080]. Returns a mix of masks. */
    .globl diff_asm_avx512_hi
    .type diff_asm_avx512_hi,@function
diff_asm_avx512_hi:
    vpbroadcastq zmm16, rdi
    mov rax, 0x0101010101010101
    vpbroadcastq zmm17, rax
    vpaddq zmm18, zmm16, zmm17
    vpmullq zmm19, zmm18, zmm16
    vpxorq zmm20, zmm19, zmm17
    vprolq zmm21, zmm20, 13
    vpsubb zmm22, zmm21, zmm18
    vpcmpub k1, zmm22, zmm16, 1     /* lt */
    vpcmpeqb k2, zmm22, zmm21
    korq k3, k1, k2
    kshiftlq k4, k3, 3
    kxorq k5, k4, k1
    vpblendmb zmm23{k5}, zmm16, zmm22
    vmovdqu8 zmm24{k3}{z}, zmm21
    vpternlogq zmm25, zmm23, zmm24, 0x96
    vpermq zmm26, zmm25, 0x1b
    vpshufb zmm27, zmm26, zmm17
    vpmaxub zmm28, zmm27, zmm22
    vpminsq zmm29, zmm28, zmm19
    vpandnq zmm30, zmm29, zmm25
    vpaddd zmm31, zmm30, zmm26
    kmovq rax, k5
    kandnq k6, k1, k2
    kmovq rdx, k6
    xor rax, rdx
    kunpckdq k7, k6, k3
    kmovq rdx, k7
    rol rdx, 17
    xor rax, rdx
    vmovdqu64 [rsi + 0 * 64], zmm16
    vmovdqu64 [rsi + 1 * 64], zmm17
    vmovdqu64 [rsi + 2 * 64], zmm18
    vmovdqu64 [rsi + 3 * 64], zmm19
    vmovdqu64 [rsi + 4 * 64], zmm20
    vmovdqu64 [rsi + 5 * 64], zmm21
    vmovdqu64 [rsi + 6 * 64], zmm22
    vmovdqu64 [rsi + 7 * 64], zmm23
    vmovdqu64 [rsi + 8 * 64], zmm24
    vmovdqu64 [rsi + 9 * 64], zmm25
    vmovdqu64 [rsi + 10 * 64], zmm26
    vmovdqu64 [rsi + 11 * 64], zmm27
    vmovdqu64 [rsi + 12 * 64], zmm28
    vmovdqu64 [rsi + 13 * 64], zmm29
    vmovdqu64 [rsi + 14 * 64], zmm30
    vmovdqu64 [rsi + 15 * 64], zmm31
    kmovq [rsi + 1024], k1
    kmovq [rsi + 1032], k2
    kmovq [rsi + 1040], k3
    kmovq [rsi + 1048], k4
    kmovq [rsi + 1056], k5
    kmovq [rsi + 1064], k6
    kmovq [rsi + 1072], k7
    vzeroupper
    ret
    .size diff_asm_avx512_hi, .-diff_asm_avx512_hi

    .section .rodata
    .balign 16
.Lvec:
    .quad 0x1122334455667788, 0x99aabbccddeeff00
.Lbyte:
    .byte 0x7e

    .section .data.rel.ro,"aw"
    .balign 8
.Ljt:
    .quad .Lcase0, .Lcase1, .Lcase2, .Lcase3
.Lfptr:
    .quad .Lhelper

    .data
    .balign 8
.Ltab:
    .quad 0x1234, 0x1111, 0x2222, 0x3333, 0x4444, 0x5555, 0x6666, 0x7777
.Lscratch:
    .quad 0
.Lslot:
    .quad .Lslot_a

    .section .note.GNU-stack,"",@progbits
