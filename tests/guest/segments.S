// Guest functions of tests/tests/segments.rs: accesses through the FS and GS segments, and
// code that changes its own FS or GS base (fsgsbase instructions).
// Comments use // (this file goes through the C preprocessor).

#include "asm_macros.h"

// (offset) -> the quadword at gs:[offset].
FUNC seg_gs_load
    mov rax, gs:[rdi]
    ret
ENDF seg_gs_load

// (offset) -> the quadword at fs:[offset].
FUNC seg_fs_load
    mov rax, fs:[rdi]
    ret
ENDF seg_fs_load

// (base) -> the GS base the function started with; leaves its GS base at `base`.
FUNC seg_gs_swap
    rdgsbase rax
    wrgsbase rdi
    ret
ENDF seg_gs_swap

// (base) -> the quadword at `base`, read as fs:[0] while the FS base is `base` for a few
// instructions; the function's own FS base is back when it returns.
FUNC seg_fs_visit
    rdfsbase rcx
    wrfsbase rdi
    mov rax, fs:[0]
    nop
    nop
    wrfsbase rcx
    ret
ENDF seg_fs_visit
