// Guest functions of tests/tests/native_calls.rs: calls from instrumented code to native
// code (outside the instrumented ranges), through a PLT-shaped entry and directly. The
// native functions leave their return address in nc_seen (what a native unwinder would
// read) and return a constant of their own.

#include "asm_macros.h"

// Hidden: direct references to them stay PC-relative when this file is linked into a
// shared object (the Python tests' guest library) as well as into the test executables.
    .hidden nc_caller, nc_caller_call, nc_caller_after, nc_caller2, nc_caller2_after, nc_plt
    .hidden nc_lazy, nc_pointer_call, nc_caller_end
    .hidden nc_direct, nc_direct_after, nc_direct_end, nc_native_a, nc_native_a_end
    .hidden nc_native_b, nc_native_b_end, nc_slot, nc_seen

// () -> (what nc_slot's target returns) + 1, through a PLT-shaped entry (endbr64, then
// `bnd jmp [rip+nc_slot]`, as .plt.sec entries are) that the test instruments with
// nc_caller. nc_lazy is an instrumented target for the slot (a lazy-binding stub's place).
FUNC nc_caller
LABEL nc_caller_call
    call nc_plt
LABEL nc_caller_after
    add rax, 1
    ret
// () -> as nc_caller, from another call site.
LABEL nc_caller2
    call nc_plt
LABEL nc_caller2_after
    add rax, 1
    ret
LABEL nc_plt
    endbr64
    bnd jmp qword ptr [rip + nc_slot]
LABEL nc_lazy
    mov eax, 0x300
    ret
// () -> what nc_slot's target returns, by an indirect call through the slot (as code
// built with -fno-plt calls): the exec broker meets the target without the PLT entry.
LABEL nc_pointer_call
    call qword ptr [rip + nc_slot]
    ret
ENDF nc_caller

// () -> nc_native_a() + 2, by a direct call.
FUNC nc_direct
    call nc_native_a
LABEL nc_direct_after
    add rax, 2
    ret
ENDF nc_direct

// Native: () -> 0x100; its return address in nc_seen.
FUNC nc_native_a
    mov rcx, [rsp]
    mov [rip + nc_seen], rcx
    mov eax, 0x100
    ret
ENDF nc_native_a

// Native: () -> 0x200; its return address in nc_seen.
FUNC nc_native_b
    mov rcx, [rsp]
    mov [rip + nc_seen], rcx
    mov eax, 0x200
    ret
ENDF nc_native_b

    .data
    .p2align 3
    .globl nc_slot
nc_slot:
    .quad 0
    .globl nc_seen
nc_seen:
    .quad 0
