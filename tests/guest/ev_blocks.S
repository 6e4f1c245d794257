/* Guest code of the VM event tests (tests/tests/examples.rs, tests/tests/vm_events.rs):
 * small functions whose basic blocks are known. Global labels mark block boundaries so the
 * tests can name the expected (start, end) pairs. A block (QBDI's definition) ends after
 * the first instruction that may change rip (jcc, jmp, call, ret); `syscall` does not end
 * one, and a block that falls through into a label continues past it. */
    .intel_syntax noprefix
    .text

/* uint64_t ev_bb_branch(uint64_t x): 1 if x == 0, else 2.
 *   A [ev_bb_branch,   ev_bb_branch_b):   cmp; jne C
 *   B [ev_bb_branch_b, ev_bb_branch_c):   mov; jmp E
 *   C [ev_bb_branch_c, ev_bb_branch_end): mov; ret   (falls into E's code)
 *   E [ev_bb_branch_e, ev_bb_branch_end): ret */
    .globl ev_bb_branch, ev_bb_branch_b, ev_bb_branch_c, ev_bb_branch_e, ev_bb_branch_end
    .type ev_bb_branch,@function
ev_bb_branch:
    cmp rdi, 0
    jne 1f
ev_bb_branch_b:
    mov eax, 1
    jmp 2f
ev_bb_branch_c:
1:  mov eax, 2
ev_bb_branch_e:
2:  ret
ev_bb_branch_end:
    .size ev_bb_branch, .-ev_bb_branch

/* int64_t ev_bb_loop(uint64_t n): for i = n down to 1, adds i when i is odd and subtracts
 * 1 when it is even.
 *   H [ev_bb_loop,      ev_bb_loop_top):  xor; test; jz D
 *   T [ev_bb_loop_top,  ev_bb_loop_odd):  test; jz V
 *   O [ev_bb_loop_odd,  ev_bb_loop_even): add; jmp N
 *   V [ev_bb_loop_even, ev_bb_loop_done): sub; dec; jnz T   (falls into N's code)
 *   N [ev_bb_loop_next, ev_bb_loop_done): dec; jnz T
 *   D [ev_bb_loop_done, ev_bb_loop_end):  ret */
    .globl ev_bb_loop, ev_bb_loop_top, ev_bb_loop_odd, ev_bb_loop_even, ev_bb_loop_next
    .globl ev_bb_loop_done, ev_bb_loop_end
    .type ev_bb_loop,@function
ev_bb_loop:
    xor eax, eax
    test rdi, rdi
    jz 4f
ev_bb_loop_top:
1:  test dil, 1
    jz 2f
ev_bb_loop_odd:
    add rax, rdi
    jmp 3f
ev_bb_loop_even:
2:  sub rax, 1
ev_bb_loop_next:
3:  dec rdi
    jnz 1b
ev_bb_loop_done:
4:  ret
ev_bb_loop_end:
    .size ev_bb_loop, .-ev_bb_loop

/* uint64_t ev_sys_getpid(void): getpid through the syscall instruction, in one block
 * [ev_sys_getpid, ev_sys_getpid_end); returns the pid. */
    .globl ev_sys_getpid, ev_sys_getpid_syscall, ev_sys_getpid_after, ev_sys_getpid_end
    .type ev_sys_getpid,@function
ev_sys_getpid:
    mov eax, 39
ev_sys_getpid_syscall:
    syscall
ev_sys_getpid_after:
    mov rdx, rax
    mov rax, rdx
    ret
ev_sys_getpid_end:
    .size ev_sys_getpid, .-ev_sys_getpid

/* uint64_t ev_long_block(uint64_t *buf): one basic block of 1 + 3 * 600 instructions and a
 * ret, each triple loading, adding and storing buf[0]: 1201 memory accesses, far more than
 * one translation holds with memory recording and callbacks on every instruction. Returns
 * x + 600 * 7 where x = buf[0], and leaves it in buf[0].
 *   [ev_long_block, ev_long_block_end): the whole block. */
    .globl ev_long_block, ev_long_block_end
    .type ev_long_block,@function
ev_long_block:
    xor eax, eax
    .rept 600
    mov rax, [rdi]
    add rax, 7
    mov [rdi], rax
    .endr
    ret
ev_long_block_end:
    .size ev_long_block, .-ev_long_block

    .section .note.GNU-stack,"",@progbits
