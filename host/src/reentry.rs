//! Re-entry from native code: instrumented code that native code calls (a `qsort`
//! comparator, an `atexit` handler or a C++ static destructor run by libc's `exit`, a
//! callback handed to a library) runs under the engine, not natively.
//!
//! The original pages of the instrumented modules lose their execute permission
//! (`qbdi_core::exec_guard`); the engine only reads them. A native call or jump into them
//! faults (`SIGSEGV`, `SEGV_ACCERR`, at the target itself), and [`on_segv`]:
//! 1. copies the interrupted registers (FP/vector state included) and errno into a record on
//!    a host stack of this thread's, one per nesting level (a re-entered function may call
//!    native code that re-enters again);
//! 2. makes the kernel's `sigreturn` continue in `qbdi_reenter` on that stack;
//! 3. there, a pooled Vm (the session's callbacks, as on any thread) runs the code from the
//!    faulting address until it returns to its native caller (the return address at [rsp],
//!    when it is native code), and `exec_guard::resume_native` continues the caller with
//!    the final state.
//!
//! Modules the host itself runs natively (libc, the loader, what the host and the plugins
//! link) keep their permission: their re-entry is not caught (with `--all-maps` every
//! such call is made from translated code anyway). Only with libc not instrumented and no
//! Python tools, as `signals`.
//!
//! The program's own `SIGSEGV` disposition is kept by `signals` and applied here to every
//! fault that is not a re-entry. Its `mprotect` requests never give the guarded pages their
//! execute permission back ([`mprotect`]).

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{CStr, c_int, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use qbdi_core::threads::{self, HostStack};
use qbdi_core::{FprState, GprState, Permission, Vm, VmError, exec_guard};

use crate::preload::next_fn;
use crate::{log, session, unwind};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Nesting levels of re-entry on one thread.
const LEVELS: usize = 32;

/// This thread's host stacks for re-entries, by nesting level, and the level in use. No
/// destructor: libc's `exit` runs the main thread's TLS destructors before the atexit
/// handlers, which re-enter; the threads' ends release the stacks ([`thread_ends`]).
struct Levels {
    stacks: [Cell<Option<HostStack>>; LEVELS],
    /// The guest stack pointer each level's run started with.
    entry_sp: [Cell<u64>; LEVELS],
    /// Each level's Vm while its run is in progress (or was abandoned), else 0.
    vms: [Cell<usize>; LEVELS],
    depth: Cell<usize>,
}

thread_local! {
    static LEVEL: Levels = const {
        Levels {
            stacks: [const { Cell::new(None) }; LEVELS],
            entry_sp: [const { Cell::new(0) }; LEVELS],
            vms: [const { Cell::new(0) }; LEVELS],
            depth: Cell::new(0),
        }
    };
}

/// What `on_segv` leaves at the top of a re-entry host stack for `reenter_entry`.
#[repr(C, align(64))]
struct Record {
    fpr: FprState,
    gpr: GprState,
    /// Where the run ends: the native return address at [rsp], or `threads::NO_STOP`.
    stop: u64,
    errno: i32,
    /// The nesting level this record uses.
    level: usize,
}

/// `si_code` of a fault on a mapped page without the access's permission.
const SEGV_ACCERR: c_int = 2;

/// How far above a run's starting stack pointer a new re-entry must be for that run to be
/// taken as abandoned (farther: another stack, such as a `sigaltstack`).
const ABANDONED_SPAN: u64 = 64 << 20;

/// Guards the instrumented modules that the host does not run natively, and takes
/// `SIGSEGV` to recognise native calls into them. `own`: the host's and the plugins' paths.
pub(crate) fn enable(vm: &Vm, own: &[String]) {
    let needed = host_needed(own);
    let ranges = vm.instrumented_ranges().ranges().to_vec();
    let mut guarded = 0u64;
    for m in qbdi_core::current_process_maps(true) {
        if !m.permission.contains(Permission::EXEC)
            || !m.name.starts_with('/')
            || needed.contains(basename(&m.name))
            || own.contains(&m.name)
        {
            continue;
        }
        for r in &ranges {
            let (s, e) = (r.start.max(m.range.start), r.end.min(m.range.end));
            if s >= e {
                continue;
            }
            // The mapping as just read: no reading of the maps per guarded range.
            match exec_guard::guard_mapping(s, e, m.permission) {
                Ok(n) => guarded += n,
                Err(err) => log::line(&format!(
                    "native calls into {} run natively: cannot change its protection ({err})",
                    m.name
                )),
            }
        }
    }
    if guarded == 0 {
        return;
    }
    crate::signals::take_segv(on_segv);
    ENABLED.store(true, Ordering::SeqCst);
}

/// The calling thread ends: its re-entry stacks go back to the pool.
pub(crate) fn thread_ends() {
    LEVEL.with(|l| {
        for s in &l.stacks {
            if let Some(s) = s.take() {
                s.release();
            }
        }
    });
}

/// Gives the guarded code its execute permission back (finalisation: what runs after it
/// runs natively).
pub(crate) fn disable() {
    if ENABLED.swap(false, Ordering::SeqCst) {
        exec_guard::unguard_all();
    }
}

/// Re-entries so far, and how many make the cost worth a word (once, while it runs).
static REENTRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const MANY_REENTRIES: u64 = 100_000;

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Names (sonames and file names) of the loaded objects that the objects at `roots` need,
/// directly or not (`DT_NEEDED`), with the loader: the code the host runs natively.
fn host_needed(roots: &[String]) -> HashSet<String> {
    struct Object {
        path: String,
        soname: Option<String>,
        needed: Vec<String>,
    }
    extern "C" fn each(info: *mut libc::dl_phdr_info, _: usize, data: *mut c_void) -> c_int {
        // SAFETY: dl_iterate_phdr's arguments: `info` describes one loaded object; `data` is
        // the Vec below.
        unsafe {
            let objects = &mut *(data as *mut Vec<Object>);
            let info = &*info;
            let path = if info.dlpi_name.is_null() {
                String::new()
            } else {
                CStr::from_ptr(info.dlpi_name)
                    .to_string_lossy()
                    .into_owned()
            };
            let mut soname = None;
            let mut needed = Vec::new();
            for i in 0..info.dlpi_phnum as usize {
                let ph = &*info.dlpi_phdr.add(i);
                if ph.p_type != libc::PT_DYNAMIC {
                    continue;
                }
                let dynamic = (info.dlpi_addr + ph.p_vaddr) as *const [u64; 2];
                let mut strtab = 0u64;
                let mut names = Vec::new();
                let mut j = 0;
                loop {
                    let [tag, val] = *dynamic.add(j);
                    match tag {
                        0 => break,
                        1 => names.push((false, val)),
                        14 => names.push((true, val)),
                        5 => strtab = val,
                        _ => {}
                    }
                    j += 1;
                }
                if strtab == 0 {
                    continue;
                }
                // The loader rebases DT_STRTAB in place, except in objects it does not
                // relocate (the vDSO).
                if strtab < info.dlpi_addr {
                    strtab += info.dlpi_addr;
                }
                for (is_soname, off) in names {
                    let name = CStr::from_ptr((strtab + off) as *const libc::c_char)
                        .to_string_lossy()
                        .into_owned();
                    if is_soname {
                        soname = Some(name);
                    } else {
                        needed.push(name);
                    }
                }
            }
            objects.push(Object {
                path,
                soname,
                needed,
            });
        }
        0
    }
    let mut objects: Vec<Object> = Vec::new();
    // SAFETY: `each` matches the callback type and only reads what the loader passes.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut objects).cast()) };
    let names_of = |o: &Object| {
        let mut n = vec![basename(&o.path).to_owned()];
        n.extend(o.soname.clone());
        n
    };
    let mut needed: HashSet<String> = HashSet::new();
    let mut queue: Vec<usize> = (0..objects.len())
        .filter(|&i| roots.contains(&objects[i].path))
        .collect();
    let mut seen: HashSet<usize> = queue.iter().copied().collect();
    while let Some(i) = queue.pop() {
        for want in &objects[i].needed {
            for (j, o) in objects.iter().enumerate() {
                if names_of(o).iter().any(|n| n == want) && seen.insert(j) {
                    needed.extend(names_of(o));
                    queue.push(j);
                }
            }
        }
    }
    // The loader runs natively for everyone (lazy binding, TLS, dlopen).
    for o in &objects {
        if o.path.contains("/ld-linux")
            || o.soname
                .as_deref()
                .is_some_and(|s| s.starts_with("ld-linux"))
        {
            needed.extend(names_of(o));
        }
    }
    needed
}

/// The process's `SIGSEGV` handler while guarding: a native call into guarded code is
/// re-entered under a Vm; any other fault goes to the program's disposition.
extern "C" fn on_segv(sig: c_int, info: *mut libc::siginfo_t, uctx: *mut c_void) {
    // SAFETY: the kernel's siginfo and ucontext of this delivery (SA_SIGINFO).
    if ENABLED.load(Ordering::Relaxed) && unsafe { redirect(info, uctx) } {
        return;
    }
    crate::signals::forward_segv(sig, info, uctx);
}

/// Whether this fault is a native transfer into guarded code; if so, the ucontext now
/// continues in `qbdi_reenter` with the record of the interrupted state.
///
/// # Safety
/// `info` and `uctx` are the kernel's for a `SIGSEGV` being handled on this thread.
unsafe fn redirect(info: *mut libc::siginfo_t, uctx: *mut c_void) -> bool {
    // SAFETY: the caller's contract.
    let (info, uc) = unsafe { (&*info, &mut *(uctx as *mut libc::ucontext_t)) };
    let g = &mut uc.uc_mcontext.gregs;
    let pc = g[libc::REG_RIP as usize] as u64;
    // SAFETY: a SIGSEGV siginfo carries the fault address.
    let addr = unsafe { info.si_addr() } as u64;
    if info.si_code != SEGV_ACCERR || addr != pc || !exec_guard::is_guarded(pc) {
        return false;
    }
    if follow_plt_stub(g) {
        return true;
    }
    let rsp = g[libc::REG_RSP as usize] as u64;
    let Some((level, stack)) = LEVEL.with(|l| -> Option<(usize, HostStack)> {
        let mut level = l.depth.get();
        // Runs whose frames are gone (left by longjmp or an exception to a native caller's
        // frame above them): this stack pointer is above where they started, on the same
        // stack. Their levels are free; `reenter_entry` takes their Vms back.
        while level > 0 {
            let started = l.entry_sp[level - 1].get();
            if rsp > started && rsp - started < ABANDONED_SPAN {
                level -= 1;
            } else {
                break;
            }
        }
        if level == LEVELS {
            return None;
        }
        let stack = match l.stacks[level].get() {
            Some(s) => s,
            None => {
                let s = HostStack::acquire()?;
                l.stacks[level].set(Some(s));
                s
            }
        };
        Some((level, stack))
    }) else {
        log::line("native code re-entered instrumented code too deeply; stopping");
        return false;
    };
    let top = stack.bounds().1;
    let record = ((top - size_of::<Record>() as u64 - 64) & !63) as *mut Record;
    // The native caller's return address, where the run ends: the function returns to it.
    // SAFETY: reads the word at the interrupted stack pointer, which the call just wrote
    // (checked to be aligned; the stack is mapped where rsp points).
    let ret = if rsp.is_multiple_of(8) {
        unsafe { *(rsp as *const u64) }
    } else {
        0
    };
    let stop = if ret != 0 && !crate::threads::instrumented(ret) && !exec_guard::is_guarded(ret) {
        ret
    } else {
        crate::threads::NO_STOP
    };
    let reg = |r: c_int| g[r as usize] as u64;
    let gpr = GprState {
        rax: reg(libc::REG_RAX),
        rbx: reg(libc::REG_RBX),
        rcx: reg(libc::REG_RCX),
        rdx: reg(libc::REG_RDX),
        rsi: reg(libc::REG_RSI),
        rdi: reg(libc::REG_RDI),
        r8: reg(libc::REG_R8),
        r9: reg(libc::REG_R9),
        r10: reg(libc::REG_R10),
        r11: reg(libc::REG_R11),
        r12: reg(libc::REG_R12),
        r13: reg(libc::REG_R13),
        r14: reg(libc::REG_R14),
        r15: reg(libc::REG_R15),
        rbp: reg(libc::REG_RBP),
        rsp,
        rip: pc,
        eflags: reg(libc::REG_EFL),
        fs: 0,
        gs: 0,
    };
    // SAFETY: fpregs is the kernel's FP image of this delivery; the record is at the top of
    // this thread's stack of this level, unused (the level is free).
    unsafe {
        let fpr = exec_guard::fpr_from_signal_frame(uc.uc_mcontext.fpregs as *const u8);
        record.write(Record {
            fpr,
            gpr,
            stop,
            errno: *libc::__errno_location(),
            level,
        });
    }
    LEVEL.with(|l| {
        l.depth.set(level + 1);
        l.entry_sp[level].set(rsp);
    });
    g[libc::REG_RIP as usize] = qbdi_reenter as *const () as i64;
    g[libc::REG_RSP as usize] = (record as i64 - 64) & !0xf;
    g[libc::REG_RDI as usize] = record as i64;
    true
}

/// A native call into a PLT stub of guarded code: in a non-PIE executable the stub of an
/// imported function is that function's address for every module (libc's, the host's own
/// calls to `malloc` included). The stub only jumps: this follows it (`endbr64`, `jmp
/// [rip+d]`, and the lazy-binding path `push imm` / `jmp rel` / `push [rip+d]`, with or
/// without `bnd`) in the interrupted state, up to native code, which then runs natively.
/// False (state untouched) when the code is not such a stub.
fn follow_plt_stub(g: &mut [i64; 23]) -> bool {
    let mut pc = g[libc::REG_RIP as usize] as u64;
    let mut rsp = g[libc::REG_RSP as usize] as u64;
    let mut pushed: [u64; 2] = [0; 2];
    let mut pushes = 0;
    let read_u64 = |addr: u64| -> Option<u64> {
        // SAFETY: the slot the decoded `push`/`jmp` reads, as the instruction itself would
        // (a stub's GOT slot: data of the same file).
        addr.is_multiple_of(8)
            .then(|| unsafe { *(addr as *const u64) })
    };
    for _ in 0..8 {
        if !exec_guard::is_guarded(pc) {
            // Native code reached: continue there with what the stub pushed.
            if pushes == 0 && pc == g[libc::REG_RIP as usize] as u64 {
                return false;
            }
            for (i, v) in pushed[..pushes].iter().enumerate() {
                // SAFETY: the words below the interrupted stack pointer that the stub's
                // pushes would have written (its caller's frame is above).
                unsafe {
                    *((g[libc::REG_RSP as usize] as u64 - 8 * (i as u64 + 1)) as *mut u64) = *v
                };
            }
            g[libc::REG_RSP as usize] = rsp as i64;
            g[libc::REG_RIP as usize] = pc as i64;
            return true;
        }
        // SAFETY: guarded code is readable (it only lost execute); an instruction of a stub
        // is at most 7 bytes, and a stub is never at the very end of its mapping.
        let b: [u8; 8] = unsafe { *(pc as *const [u8; 8]) };
        let disp = |at: usize| i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as i64;
        match b {
            // endbr64
            [0xf3, 0x0f, 0x1e, 0xfa, ..] => pc += 4,
            // jmp [rip+d] / bnd jmp [rip+d]
            [0xff, 0x25, ..] => {
                pc = match read_u64(pc.wrapping_add_signed(6 + disp(2))) {
                    Some(t) => t,
                    None => return false,
                }
            }
            [0xf2, 0xff, 0x25, ..] => {
                pc = match read_u64(pc.wrapping_add_signed(7 + disp(3))) {
                    Some(t) => t,
                    None => return false,
                }
            }
            // push imm32 (the lazy path's relocation index)
            [0x68, ..] if pushes < 2 => {
                rsp -= 8;
                pushed[pushes] = disp(1) as u64;
                pushes += 1;
                pc += 5;
            }
            // push [rip+d] (PLT0: the loader's link_map)
            [0xff, 0x35, ..] if pushes < 2 => {
                let Some(v) = read_u64(pc.wrapping_add_signed(6 + disp(2))) else {
                    return false;
                };
                rsp -= 8;
                pushed[pushes] = v;
                pushes += 1;
                pc += 6;
            }
            // jmp rel32 / bnd jmp rel32 (to PLT0)
            [0xe9, ..] => pc = pc.wrapping_add_signed(5 + disp(1)),
            [0xf2, 0xe9, ..] => pc = pc.wrapping_add_signed(6 + disp(2)),
            _ => return false,
        }
    }
    false
}

unsafe extern "C" {
    fn qbdi_reenter();
}

// After the sigreturn: rsp is a re-entry host stack, rdi the record; the FP state is still
// the guest's (saved in the record).
std::arch::global_asm!(
    ".globl qbdi_reenter",
    ".hidden qbdi_reenter",
    ".type qbdi_reenter, @function",
    "qbdi_reenter:",
    "cld",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym reenter_entry,
);

/// Runs the re-entered code under a pooled Vm, then resumes its native caller.
extern "C" fn reenter_entry(record: *mut Record) -> ! {
    // SAFETY: the record `redirect` wrote for this run, on this stack.
    let rec = unsafe { &mut *record };
    if REENTRIES.fetch_add(1, Ordering::Relaxed) + 1 == MANY_REENTRIES {
        log::line(&format!(
            "native code has called instrumented code {MANY_REENTRIES} times so far (each call a fault and a Vm entry, a few microseconds): --all-maps instruments the native callers too and avoids the faults; --native-callbacks lets such calls run natively, unseen"
        ));
    }
    let tid = threads::current_thread_id();
    // The Vms of abandoned runs at this level and above are free again.
    LEVEL.with(|l| {
        for v in &l.vms[rec.level..] {
            let vm = v.replace(0);
            if vm != 0 {
                unwind::unregister_nested(vm as *const Vm);
                // SAFETY: from Box::into_raw below; its run was abandoned (its frames are
                // gone), so nothing uses it.
                let mut vm = unsafe { Box::from_raw(vm as *mut Vm) };
                vm.set_leave_at_native(false);
                crate::threads::give_back(vm);
            }
        }
    });
    let vm = Box::into_raw(crate::threads::take_vm());
    LEVEL.with(|l| l.vms[rec.level].set(vm as usize));
    if let Some(stack) = LEVEL.with(|l| l.stacks[rec.level].get()) {
        unwind::register_nested(tid, vm, stack.bounds());
    }
    // SAFETY: the Vm just taken, this run's alone until it is given back below.
    let vm_ref = unsafe { &mut *vm };
    vm_ref.set_gpr_state(&rec.gpr);
    vm_ref.set_fpr_state(&rec.fpr);
    vm_ref.set_errno(rec.errno);
    vm_ref.set_leave_at_native(true);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        vm_ref.run(rec.gpr.rip, rec.stop)
    }));
    LEVEL.with(|l| l.vms[rec.level].set(0));
    unwind::unregister_nested(vm);
    // SAFETY: from Box::into_raw above; the run is over.
    let mut vm = unsafe { Box::from_raw(vm) };
    vm.set_leave_at_native(false);
    match result {
        Ok(Ok(())) => {}
        Ok(Err(VmError::ThreadExit { status })) => {
            LEVEL.with(|l| l.depth.set(rec.level));
            crate::threads::give_back(vm);
            threads::exit_thread(status, None)
        }
        Ok(Err(e)) => fail(&format!(
            "code called from native code at {:#x} stopped under the Vm: {e}",
            rec.gpr.rip
        )),
        Err(_) => {
            fail("the host panicked in code called from native code (a qbdi bug: please report it)")
        }
    }
    rec.gpr = *vm.gpr_state();
    rec.fpr = *vm.fpr_state();
    let errno = vm.errno();
    crate::threads::give_back(vm);
    LEVEL.with(|l| l.depth.set(rec.level));
    // SAFETY: sets this thread's errno to the guest's, last before leaving.
    unsafe { *libc::__errno_location() = errno };
    // SAFETY: the run ended where the guest left the instrumented code for native code:
    // at its stop address (the native caller's return address) after a `ret`, whose slot
    // is the one below rsp, or at a `jmp`/`ret` to native code it cannot come back from,
    // whose slot below rsp is no longer the function's.
    unsafe { exec_guard::resume_native(&rec.gpr, &rec.fpr) }
}

fn fail(why: &str) -> ! {
    log::line(why);
    session::fini_all();
    // SAFETY: ends the process.
    unsafe { libc::_exit(crate::preload::QBDI_FAILURE_STATUS) }
}

type MprotectFn = unsafe extern "C" fn(*mut c_void, usize, c_int) -> c_int;

/// `mprotect`, interposed: a request for execute permission on guarded code is granted
/// without it (the program's code keeps running under the engine); making instrumented
/// code writable drops its translations in every Vm (they come back with byte checks, see
/// docs/architecture.md, "Code written at run time").
///
/// # Safety
/// mprotect's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mprotect(addr: *mut c_void, len: usize, prot: c_int) -> c_int {
    static REAL: OnceLock<usize> = OnceLock::new();
    // SAFETY: MprotectFn is mprotect's type.
    let Some(real) = (unsafe { next_fn::<MprotectFn>(&REAL, c"mprotect") }) else {
        // SAFETY: sets this thread's errno.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        return -1;
    };
    let start = addr as u64;
    let end = start.saturating_add(len as u64);
    let enabled = ENABLED.load(Ordering::Relaxed);
    let granted = if enabled {
        exec_guard::filter_protection(start, end, prot)
    } else {
        prot
    };
    // SAFETY: forwarding the caller's request.
    let r = unsafe { real(addr, len, granted) };
    if r == 0 && prot & libc::PROT_WRITE != 0 {
        // The program may now rewrite its instrumented code: every Vm drops what it
        // translated there, and translates it again with byte checks (writable memory).
        let touched = crate::threads::instrumented_parts(start, end);
        if !touched.is_empty() {
            qbdi_core::late_code::publish_ranges(&touched, &touched);
            // This thread's Vms now: the guest goes on in linked blocks, with no dispatcher
            // round before it runs the code it is about to rewrite.
            for vm in crate::unwind::thread_vms() {
                // SAFETY: this thread's Vms, suspended in this native call (the guest's
                // call of mprotect).
                unsafe { Vm::sync_published_ranges(vm as *mut Vm) };
            }
        }
    }
    r
}

/// The guarded regions, for the plugins' map readers (`qbdi_plugin_support::maps`): up to
/// `cap` pairs `(start, end)` written at `out`; returns how many there are.
///
/// # Safety
/// `out` must be writable for `cap` pairs.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qbdi_exec_guard_ranges(out: *mut [u64; 2], cap: usize) -> usize {
    let regions = exec_guard::regions();
    for (i, &(s, e)) in regions.iter().take(cap).enumerate() {
        // SAFETY: i < cap (the caller's contract).
        unsafe { out.add(i).write([s, e]) };
    }
    regions.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(at: u64, len: u64, target: u64) -> [u8; 4] {
        ((target as i64 - (at + len) as i64) as i32).to_le_bytes()
    }

    #[test]
    fn native_calls_into_plt_stubs_are_followed_to_native_code() {
        // SAFETY: a fresh anonymous mapping of this test, filled with stubs below.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED);
        let base = page as u64;
        let mut code = vec![0xccu8; 0x900];
        let mut put = |at: u64, bytes: &[u8]| {
            let o = (at - base) as usize;
            code[o..o + bytes.len()].copy_from_slice(bytes);
        };
        let got = base + 0x800;
        // PLT0: push [got+8]; jmp [got+16]
        put(base, &[0xff, 0x35]);
        put(base + 2, &rel(base, 6, got + 8));
        put(base + 6, &[0xff, 0x25]);
        put(base + 8, &rel(base + 6, 6, got + 16));
        // A lazy entry: jmp [got+24]; push 1; jmp PLT0
        let lazy = base + 0x10;
        put(lazy, &[0xff, 0x25]);
        put(lazy + 2, &rel(lazy, 6, got + 24));
        put(lazy + 6, &[0x68, 1, 0, 0, 0]);
        put(lazy + 11, &[0xe9]);
        put(lazy + 12, &rel(lazy + 11, 5, base));
        // An IBT entry, bound: endbr64; bnd jmp [got+32]
        let bound = base + 0x20;
        put(bound, &[0xf3, 0x0f, 0x1e, 0xfa, 0xf2, 0xff, 0x25]);
        put(bound + 7, &rel(bound + 4, 7, got + 32));
        // Ordinary code: push rbp
        put(base + 0x40, &[0x55]);
        for (i, v) in [0, 0xaaaa, 0x5555_0000, lazy + 6, 0x7777_0000u64]
            .iter()
            .enumerate()
        {
            put(got + 8 * i as u64, &v.to_le_bytes());
        }
        // SAFETY: the page is ours and writable.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), page.cast(), code.len()) };
        exec_guard::guard(base, base + 0x800).expect("guard");

        let mut stack = [0u64; 8];
        let top = &raw mut stack[6] as u64;
        let mut g = [0i64; 23];
        let state = |rip: u64| {
            let mut g = [0i64; 23];
            g[libc::REG_RIP as usize] = rip as i64;
            g[libc::REG_RSP as usize] = top as i64;
            g
        };
        g.copy_from_slice(&state(lazy));
        assert!(follow_plt_stub(&mut g));
        assert_eq!(g[libc::REG_RIP as usize] as u64, 0x5555_0000);
        assert_eq!(g[libc::REG_RSP as usize] as u64, top - 16);
        assert_eq!((stack[5], stack[4]), (1, 0xaaaa));

        g.copy_from_slice(&state(bound));
        assert!(follow_plt_stub(&mut g));
        assert_eq!(g[libc::REG_RIP as usize] as u64, 0x7777_0000);
        assert_eq!(g[libc::REG_RSP as usize] as u64, top);

        g.copy_from_slice(&state(base + 0x40));
        assert!(!follow_plt_stub(&mut g));
        assert_eq!(g, state(base + 0x40));
        exec_guard::unguard_all();
    }
}
