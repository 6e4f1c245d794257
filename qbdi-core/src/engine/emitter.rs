//! Hand emission of the few x86-64 instruction forms the engine generates itself.
//!
//! Code is assembled into a reusable byte buffer whose final address (`base`) is known
//! before emission, so RIP-relative operands and rel32 branches are computed directly.
//! Forward branches use labels fixed up by `finish`. Nothing here allocates once the buffer
//! has grown to its working size. None of these forms touch RFLAGS unless the name says so.

/// A general purpose register number (0 = rax .. 15 = r15), as encoded in ModRM/REX.
pub(crate) use crate::regs::{R11, R12, R13, R14, R15, RAX, RBP, RBX, RCX, RDI, RDX, RSP, Reg};

/// A forward or backward branch target inside the buffer being assembled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Label(u32);

/// An assembly buffer for code that will live at `base`.
pub(crate) struct Asm {
    pub base: u64,
    pub buf: Vec<u8>,
    labels: Vec<Option<u32>>,
    /// (offset of a rel32 or rel8 field, label, field size)
    fixups: Vec<(u32, Label, u8)>,
}

impl Asm {
    pub fn new() -> Asm {
        Asm::with_capacity(4096)
    }

    /// A buffer that holds `bytes` (and a block's worth of labels) without growing.
    pub fn with_capacity(bytes: usize) -> Asm {
        Asm {
            base: 0,
            buf: Vec::with_capacity(bytes),
            labels: Vec::with_capacity(64),
            fixups: Vec::with_capacity(64),
        }
    }

    /// Starts a new piece of code that will be copied to `base`.
    pub fn reset(&mut self, base: u64) {
        self.base = base;
        self.buf.clear();
        self.labels.clear();
        self.fixups.clear();
    }

    /// Address the next byte will have.
    pub fn here(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    pub(super) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn new_label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() as u32 - 1)
    }

    pub fn bind(&mut self, l: Label) {
        self.labels[l.0 as usize] = Some(self.buf.len() as u32);
    }

    pub fn label_addr(&self, l: Label) -> u64 {
        self.base + u64::from(self.labels[l.0 as usize].expect("label bound"))
    }

    /// Resolves label fixups. Panics on an unbound label or a rel8 out of reach: both
    /// are bugs of the emitting code, never of the guest.
    pub fn finish(&mut self) {
        for &(at, l, size) in &self.fixups {
            let target =
                self.labels[l.0 as usize].expect("every label is bound before finish") as i64;
            let end = i64::from(at) + i64::from(size);
            let rel = target - end;
            let at = at as usize;
            if size == 1 {
                let r = i8::try_from(rel).expect("rel8 label within reach");
                self.buf[at] = r as u8;
            } else {
                let r = i32::try_from(rel).expect("rel32 label within reach");
                self.buf[at..at + 4].copy_from_slice(&r.to_le_bytes());
            }
        }
        self.fixups.clear();
    }

    /// disp32 of a RIP-relative operand whose instruction ends `tail` bytes after the
    /// displacement field.
    pub(super) fn rip_disp(&self, target: u64, tail: u64) -> u32 {
        let end = self.here() + 4 + tail;
        let rel = target.wrapping_sub(end) as i64;
        i32::try_from(rel).expect("engine data is within +/-2 GiB of the code cache") as u32
    }

    /// rel32 from the end of a 4-byte field starting here to `target`, if it fits.
    pub fn rel32_to(&self, target: u64) -> Option<i32> {
        let end = self.here() + 4;
        i32::try_from(target.wrapping_sub(end) as i64).ok()
    }

    fn rex_w(&mut self, reg: Reg, rm: Reg) {
        self.buf.push(0x48 | ((reg >> 3) << 2) | (rm >> 3));
    }

    /// `mov [rip+addr], reg64`
    pub fn store(&mut self, addr: u64, reg: Reg) {
        self.rex_w(reg, 0);
        self.bytes(&[0x89, 0x05 | ((reg & 7) << 3)]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `mov reg64, [rip+addr]`
    pub fn load(&mut self, reg: Reg, addr: u64) {
        self.rex_w(reg, 0);
        self.bytes(&[0x8b, 0x05 | ((reg & 7) << 3)]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `lea reg64, [rip+addr]`
    pub fn lea_rip(&mut self, reg: Reg, addr: u64) {
        self.rex_w(reg, 0);
        self.bytes(&[0x8d, 0x05 | ((reg & 7) << 3)]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `mov qword [rip+addr], imm32` (sign-extended)
    pub fn store_imm32_sx64(&mut self, addr: u64, imm: u32) {
        self.bytes(&[0x48, 0xc7, 0x05]);
        let d = self.rip_disp(addr, 4);
        self.u32(d);
        self.u32(imm);
    }

    /// `mov dword [rip+addr], imm32`
    pub fn store_imm32(&mut self, addr: u64, imm: u32) {
        self.bytes(&[0xc7, 0x05]);
        let d = self.rip_disp(addr, 4);
        self.u32(d);
        self.u32(imm);
    }

    /// `mov reg64, imm64`
    pub fn mov_imm64(&mut self, reg: Reg, imm: u64) {
        self.rex_w(0, reg);
        self.buf.push(0xb8 + (reg & 7));
        self.buf.extend_from_slice(&imm.to_le_bytes());
    }

    /// `mov r32, imm32` (zero-extends)
    pub fn mov_imm32(&mut self, reg: Reg, imm: u32) {
        if reg >= 8 {
            self.buf.push(0x41);
        }
        self.buf.push(0xb8 + (reg & 7));
        self.u32(imm);
    }

    /// `mov dst64, src64`
    pub fn mov_rr(&mut self, dst: Reg, src: Reg) {
        self.rex_w(dst, src);
        self.bytes(&[0x8b, 0xc0 | ((dst & 7) << 3) | (src & 7)]);
    }

    pub fn push(&mut self, reg: Reg) {
        if reg >= 8 {
            self.buf.push(0x41);
        }
        self.buf.push(0x50 + (reg & 7));
    }

    pub fn pop(&mut self, reg: Reg) {
        if reg >= 8 {
            self.buf.push(0x41);
        }
        self.buf.push(0x58 + (reg & 7));
    }

    /// `push qword [rip+addr]`
    pub fn push_mem(&mut self, addr: u64) {
        self.bytes(&[0xff, 0x35]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `pop qword [rip+addr]`
    pub fn pop_mem(&mut self, addr: u64) {
        self.bytes(&[0x8f, 0x05]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `push imm32`: pushes `value`, a sign-extended 32-bit immediate ([`is_simm32`]), with
    /// one 8-byte store and without touching flags (other values: `push_mem_label` of a
    /// literal).
    pub fn push_simm32(&mut self, value: u64) {
        assert!(
            is_simm32(value),
            "push imm32 pushes a sign-extended 32-bit value"
        );
        self.buf.push(0x68);
        self.u32(value as u32);
    }

    /// `lea rsp, [rsp+disp]`: moves the stack pointer without touching flags.
    pub fn lea_rsp(&mut self, disp: i32) {
        self.bytes(&[0x48, 0x8d, 0xa4, 0x24]);
        self.u32(disp as u32);
    }

    /// `mov rcx, [rsp]`
    pub fn load_rcx_from_stack_top(&mut self) {
        self.bytes(&[0x48, 0x8b, 0x0c, 0x24]);
    }

    /// `mov [rsp], rax`
    pub fn store_rax_to_stack_top(&mut self) {
        self.bytes(&[0x48, 0x89, 0x04, 0x24]);
    }

    /// `mov rax, [rsp]`
    pub fn load_rax_from_stack_top(&mut self) {
        self.bytes(&[0x48, 0x8b, 0x04, 0x24]);
    }

    /// `test dword [rsp], imm32` (sets flags)
    pub fn test_stack_top32(&mut self, imm: u32) {
        self.bytes(&[0xf7, 0x04, 0x24]);
        self.u32(imm);
    }

    /// `cmp byte [rax], imm8` (sets flags)
    pub fn cmp_byte_at_rax(&mut self, imm: u8) {
        self.bytes(&[0x80, 0x38, imm]);
    }

    /// `call rax`
    pub fn call_rax(&mut self) {
        self.bytes(&[0xff, 0xd0]);
    }

    /// `rdfsbase`/`rdgsbase`/`wrfsbase`/`wrgsbase` on a 64-bit register (below r8):
    /// `op` is the ModRM reg field (0 rdfs, 1 rdgs, 2 wrfs, 3 wrgs).
    fn fsgsbase(&mut self, op: u8, reg: Reg) {
        debug_assert!(reg < 8 && op < 4);
        self.bytes(&[0xf3, 0x48, 0x0f, 0xae, 0xc0 | (op << 3) | reg]);
    }

    /// `rdfsbase reg`
    pub fn rdfsbase(&mut self, reg: Reg) {
        self.fsgsbase(0, reg);
    }

    /// `rdgsbase reg`
    pub fn rdgsbase(&mut self, reg: Reg) {
        self.fsgsbase(1, reg);
    }

    /// `wrfsbase reg`
    pub fn wrfsbase(&mut self, reg: Reg) {
        self.fsgsbase(2, reg);
    }

    /// `wrgsbase reg`
    pub fn wrgsbase(&mut self, reg: Reg) {
        self.fsgsbase(3, reg);
    }

    /// `test eax, eax` (sets flags)
    pub fn test_eax_eax(&mut self) {
        self.bytes(&[0x85, 0xc0]);
    }

    /// `mov dword [rip+addr], eax`
    pub fn store_eax32(&mut self, addr: u64) {
        self.bytes(&[0x89, 0x05]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `jmp rel32` to an absolute address; returns the address of the rel32 field.
    pub fn jmp_to(&mut self, target: u64) -> u64 {
        self.buf.push(0xe9);
        let site = self.here();
        let rel = self
            .rel32_to(target)
            .expect("code cache branch within +/-2 GiB");
        self.u32(rel as u32);
        site
    }

    /// `call rel32` to an absolute address.
    pub fn call_to(&mut self, target: u64) {
        self.buf.push(0xe8);
        let rel = self
            .rel32_to(target)
            .expect("code cache call within +/-2 GiB");
        self.u32(rel as u32);
    }

    /// `call qword [rip+label]`.
    pub fn call_mem_label(&mut self, l: Label) {
        self.bytes(&[0xff, 0x15]);
        self.fixups.push((self.buf.len() as u32, l, 4));
        self.u32(0);
    }

    /// `push qword [rip+label]` (one 8-byte store: a load of the slot right after it is
    /// forwarded from the store, where two 4-byte stores are not).
    pub fn push_mem_label(&mut self, l: Label) {
        self.bytes(&[0xff, 0x35]);
        self.fixups.push((self.buf.len() as u32, l, 4));
        self.u32(0);
    }

    /// Aligns the buffer to `n` bytes (a power of two) with `int3` padding.
    pub fn align(&mut self, n: usize) {
        while !(self.here() as usize).is_multiple_of(n) {
            self.buf.push(0xcc);
        }
    }

    /// `jmp rel32` to a label; returns the address of the rel32 field.
    pub fn jmp_label(&mut self, l: Label) -> u64 {
        self.buf.push(0xe9);
        let site = self.here();
        self.fixups.push((self.buf.len() as u32, l, 4));
        self.u32(0);
        site
    }

    /// `jcc rel32` (condition code `cc` 0..16) to a label; returns the rel32 field address.
    pub fn jcc_label(&mut self, cc: u8, l: Label) -> u64 {
        self.bytes(&[0x0f, 0x80 | cc]);
        let site = self.here();
        self.fixups.push((self.buf.len() as u32, l, 4));
        self.u32(0);
        site
    }

    /// `jrcxz rel8` to a label.
    pub fn jrcxz_label(&mut self, l: Label) {
        self.buf.push(0xe3);
        self.fixups.push((self.buf.len() as u32, l, 1));
        self.buf.push(0);
    }

    /// `jrcxz` to a label out of its 127-byte reach: `jrcxz +2; jmp +5; jmp rel32`.
    pub fn jrcxz_far_label(&mut self, l: Label) {
        self.bytes(&[0xe3, 0x02, 0xeb, 0x05]);
        self.jmp_label(l);
    }

    /// `jmp qword [rip+addr]`
    pub fn jmp_mem(&mut self, addr: u64) {
        self.bytes(&[0xff, 0x25]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `jmp qword [rip+0]; dq target`: an absolute jump reaching anywhere (14 bytes).
    pub fn jmp_abs(&mut self, target: u64) {
        self.bytes(&[0xff, 0x25, 0, 0, 0, 0]);
        self.buf.extend_from_slice(&target.to_le_bytes());
    }

    /// Makes rcx zero exactly when the 64-bit values in rcx and `reg` are equal, without
    /// touching flags: `not rcx; lea rcx, [rcx+reg+1]` computes reg - rcx.
    pub fn rcx_diff(&mut self, reg: Reg) {
        debug_assert!(reg < 8 && reg != RSP && reg != RBP);
        self.bytes(&[0x48, 0xf7, 0xd1]);
        self.bytes(&[0x48, 0x8d, 0x4c, (reg << 3) | RCX, 0x01]);
    }

    /// Saves the status flags (SF ZF AF PF CF, and OF) to the word at `slot` without
    /// `pushfq`: `lahf; seto al; mov [slot], rax` (rax must be saved already).
    pub fn save_status_flags(&mut self, slot: u64) {
        self.bytes(&[0x9f]); // lahf
        self.bytes(&[0x0f, 0x90, 0xc0]); // seto al
        self.store(slot, RAX);
    }

    /// Restores what [`save_status_flags`](Self::save_status_flags) saved at `slot`,
    /// without `popfq` (about 5 ns): `mov rax, [slot]; add al, 0x7f` (OF as saved);
    /// `sahf`. Leaves rax to be reloaded.
    pub fn restore_status_flags(&mut self, slot: u64) {
        self.load(RAX, slot);
        self.bytes(&[0x04, 0x7f]); // add al, 0x7f: OF as saved
        self.bytes(&[0x9e]); // sahf
    }

    pub fn pushfq(&mut self) {
        self.buf.push(0x9c);
    }

    pub fn popfq(&mut self) {
        self.buf.push(0x9d);
    }

    pub fn ret(&mut self) {
        self.buf.push(0xc3);
    }

    /// `push imm8` (sign-extended to 64 bits).
    pub fn push_imm8(&mut self, v: i8) {
        self.bytes(&[0x6a, v as u8]);
    }

    /// `stmxcsr [rip+addr]`
    pub fn stmxcsr(&mut self, addr: u64) {
        self.bytes(&[0x0f, 0xae, 0x1d]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `ldmxcsr [rip+addr]`
    pub fn ldmxcsr(&mut self, addr: u64) {
        self.bytes(&[0x0f, 0xae, 0x15]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `fnstcw [rip+addr]`
    pub fn fnstcw(&mut self, addr: u64) {
        self.bytes(&[0xd9, 0x3d]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `fldcw [rip+addr]`
    pub fn fldcw(&mut self, addr: u64) {
        self.bytes(&[0xd9, 0x2d]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    pub fn fninit(&mut self) {
        self.bytes(&[0xdb, 0xe3]);
    }

    pub fn vzeroupper(&mut self) {
        self.bytes(&[0xc5, 0xf8, 0x77]);
    }

    /// `xsave [rip+addr]` (components in edx:eax; 32-bit FPU pointer format)
    pub fn xsave(&mut self, addr: u64) {
        self.bytes(&[0x0f, 0xae, 0x25]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `xrstor [rip+addr]`
    pub fn xrstor(&mut self, addr: u64) {
        self.bytes(&[0x0f, 0xae, 0x2d]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `fxsave [rip+addr]`
    pub fn fxsave(&mut self, addr: u64) {
        self.bytes(&[0x0f, 0xae, 0x05]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `fxrstor [rip+addr]`
    pub fn fxrstor(&mut self, addr: u64) {
        self.bytes(&[0x0f, 0xae, 0x0d]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }
}

impl Asm {
    pub fn xgetbv(&mut self) {
        self.bytes(&[0x0f, 0x01, 0xd0]);
    }

    /// `movdqu [rip+addr], xmmN`
    pub fn store_xmm(&mut self, addr: u64, n: u8) {
        self.buf.push(0xf3);
        if n >= 8 {
            self.buf.push(0x44);
        }
        self.bytes(&[0x0f, 0x7f, 0x05 | ((n & 7) << 3)]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `movdqu xmmN, [rip+addr]`
    pub fn load_xmm(&mut self, n: u8, addr: u64) {
        self.buf.push(0xf3);
        if n >= 8 {
            self.buf.push(0x44);
        }
        self.bytes(&[0x0f, 0x6f, 0x05 | ((n & 7) << 3)]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `test eax, imm32` (sets flags)
    pub fn test_eax(&mut self, imm: u32) {
        self.buf.push(0xa9);
        self.u32(imm);
    }

    /// `cmp byte [rip+addr], imm8` (sets flags)
    pub fn cmp_byte(&mut self, addr: u64, imm: u8) {
        self.bytes(&[0x80, 0x3d]);
        let d = self.rip_disp(addr, 1);
        self.u32(d);
        self.buf.push(imm);
    }

    /// `mov byte [rip+addr], imm8`
    pub fn store_byte(&mut self, addr: u64, imm: u8) {
        self.bytes(&[0xc6, 0x05]);
        let d = self.rip_disp(addr, 1);
        self.u32(d);
        self.buf.push(imm);
    }

    /// `call qword [rip+addr]`
    pub fn call_mem(&mut self, addr: u64) {
        self.bytes(&[0xff, 0x15]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `mov ecx, dword [rip+addr]`
    pub fn load_ecx32(&mut self, addr: u64) {
        self.bytes(&[0x8b, 0x0d]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `and eax, imm32` (sets flags)
    pub fn and_eax(&mut self, imm: u32) {
        self.buf.push(0x25);
        self.u32(imm);
    }

    /// `mov eax, dword [rip+addr]`
    pub fn load_eax32(&mut self, addr: u64) {
        self.bytes(&[0x8b, 0x05]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `cmp eax, dword [rip+addr]` (sets flags)
    pub fn cmp_eax_mem(&mut self, addr: u64) {
        self.bytes(&[0x3b, 0x05]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }

    /// `cmp word [rip+addr], imm16` (sets flags)
    pub fn cmp_word(&mut self, addr: u64, imm: u16) {
        self.bytes(&[0x66, 0x81, 0x3d]);
        let d = self.rip_disp(addr, 2);
        self.u32(d);
        self.buf.extend_from_slice(&imm.to_le_bytes());
    }

    /// `test dword [rip+addr], imm32` (sets flags)
    pub fn test_mem32(&mut self, addr: u64, imm: u32) {
        self.bytes(&[0xf7, 0x05]);
        let d = self.rip_disp(addr, 4);
        self.u32(d);
        self.u32(imm);
    }

    /// `mov esi, dword [rip+addr]`
    pub fn load_esi32(&mut self, addr: u64) {
        self.bytes(&[0x8b, 0x35]);
        let d = self.rip_disp(addr, 0);
        self.u32(d);
    }
}

/// Writes `rel32` at `site` so that the branch whose field it is lands on `target`.
///
/// # Safety
/// `site` must be the 4-byte displacement field of a branch in writable code memory that no
/// thread is executing concurrently in a way that could observe a torn write (the engine
/// patches only from the dispatcher, with no guest code running on this Vm).
pub(crate) unsafe fn patch_rel32(site: u64, target: u64) {
    let rel = target.wrapping_sub(site + 4) as i64;
    let rel = i32::try_from(rel).expect("code cache branches stay within +/-2 GiB");
    // SAFETY: per the function contract.
    unsafe { (site as *mut i32).write_unaligned(rel) };
}

/// Whether `value` is a 32-bit immediate sign-extended to 64 bits.
pub(crate) fn is_simm32(value: u64) -> bool {
    value as u32 as i32 as i64 as u64 == value
}

/// For tests that run generated code: a fresh private anonymous mapping of `len` bytes with
/// protection `prot` and the extra `flags` (`MAP_32BIT`), asserted mapped; the caller
/// unmaps it (or leaks it).
/// Resolves `a`'s labels and copies its code to `a.base` (executable memory of a test
/// mapping, `room` bytes there), as a System V function of one argument.
///
/// # Safety
/// `a.base` is writable and executable for `room` bytes; the code is a function of that
/// signature.
#[cfg(test)]
pub(crate) unsafe fn install_test_fn(a: &mut Asm, room: usize) -> extern "C" fn(u64) -> u64 {
    a.finish();
    assert!(a.len() <= room, "the test code fits its room");
    // SAFETY: the caller's contract: `room` writable bytes at `a.base`, holding a function
    // of this signature once copied.
    unsafe {
        std::ptr::copy_nonoverlapping(a.buf.as_ptr(), a.base as *mut u8, a.len());
        std::mem::transmute::<u64, extern "C" fn(u64) -> u64>(a.base)
    }
}

#[cfg(test)]
pub(crate) fn test_mapping(len: usize, prot: libc::c_int, flags: libc::c_int) -> *mut u8 {
    // SAFETY: a new anonymous mapping with no address hint replaces nothing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p.cast()
}

/// Read, write and execute: code written then run in place.
#[cfg(test)]
pub(crate) const RWX: libc::c_int = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

    fn disasm(a: &Asm) -> Vec<String> {
        let mut d = Decoder::with_ip(64, &a.buf, a.base, DecoderOptions::NONE);
        let mut f = IntelFormatter::new();
        f.options_mut().set_rip_relative_addresses(false);
        let mut out = Vec::new();
        for i in &mut d {
            let mut s = String::new();
            f.format(&i, &mut s);
            out.push(s);
        }
        out
    }

    #[test]
    fn hand_encodings_decode_as_intended() {
        let mut a = Asm::new();
        a.reset(0x1000);
        a.store(0x2000, R13);
        a.load(RAX, 0x2000);
        a.store_imm32(0x2000, 7);
        a.push_simm32(0x1234_5678);
        a.push_simm32(0xffff_ffff_8000_0000);
        a.lea_rsp(24);
        a.rcx_diff(RAX);
        a.bytes(&[
            0x0f, 0xb7, 0xd1, 0x48, 0x8d, 0x14, 0xd5, 0, 0, 0, 0, 0x48, 0x8d, 0x14, 0x50,
        ]);
        a.mov_imm64(R12, 5);
        a.mov_rr(RCX, R15);
        a.push_mem(0x2000);
        a.pop_mem(0x2000);
        a.jmp_mem(0x2000);
        a.load_rax_from_stack_top();
        a.test_stack_top32(0x40400);
        a.cmp_byte_at_rax(0);
        a.call_rax();
        a.test_eax_eax();
        a.store_eax32(0x2000);
        a.rdfsbase(RAX);
        a.rdgsbase(RCX);
        a.wrfsbase(RAX);
        a.wrgsbase(RDX);
        let got = disasm(&a);
        let want = [
            "mov [2000h],r13",
            "mov rax,[2000h]",
            "mov dword ptr [2000h],7",
            "push 12345678h",
            "push 0FFFFFFFF80000000h",
            "lea rsp,[rsp+18h]",
            "not rcx",
            "lea rcx,[rcx+rax+1]",
            "movzx edx,cx",
            "lea rdx,[rdx*8]",
            "lea rdx,[rax+rdx*2]",
            "mov r12,5",
            "mov rcx,r15",
            "push qword ptr [2000h]",
            "pop qword ptr [2000h]",
            "jmp qword ptr [2000h]",
            "mov rax,[rsp]",
            "test dword ptr [rsp],40400h",
            "cmp byte ptr [rax],0",
            "call rax",
            "test eax,eax",
            "mov [2000h],eax",
            "rdfsbase rax",
            "rdgsbase rcx",
            "wrfsbase rax",
            "wrgsbase rdx",
        ];
        assert_eq!(got, want);
    }
}
