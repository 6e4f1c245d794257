//! Calls from instrumented code to native code (`tests/guest/native_calls.S`). In a Vm with
//! nothing to run around them, a call to a PLT entry whose slot holds a native target, and
//! a direct call to native code, are real `call`s from the caller's translation: the
//! callee returns into the caller's translated block (not into the return site's block,
//! as through the exec broker), the slot is checked at every call, a return address the
//! callee saw is mapped back to the guest's for unwinders, and instrumentation added later
//! on the PLT entry is run, not skipped.

use qbdi_core::{InstPosition, Options, Vm, VmAction, VmEvent};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Mutex;

unsafe extern "C" {
    fn nc_caller() -> u64;
    fn nc_caller_call();
    fn nc_caller_after();
    fn nc_caller2() -> u64;
    fn nc_caller2_after();
    fn nc_plt();
    fn nc_lazy();
    fn nc_pointer_call() -> u64;
    fn nc_caller_end();
    fn nc_direct() -> u64;
    fn nc_direct_after();
    fn nc_direct_end();
    fn nc_native_a() -> u64;
    fn nc_native_b() -> u64;
    fn nc_native_b_end();
    static mut nc_slot: u64;
    static mut nc_seen: u64;
}

use qbdi_tests::addr;

/// The guest's data words (the slot, the seen return address) are shared: one test at a
/// time.
static GUEST_DATA: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    GUEST_DATA
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How many times a callback at `at` (`position`) ran.
fn count_at(vm: &mut Vm, at: u64, position: InstPosition) -> Rc<Cell<u32>> {
    let hits = Rc::new(Cell::new(0));
    let h = hits.clone();
    vm.add_code_addr_cb(
        at,
        position,
        move |_, _, _| {
            h.set(h.get() + 1);
            VmAction::Continue
        },
        0,
    )
    .unwrap();
    hits
}

fn vm_over(start: u64, end: u64) -> (Vm, qbdi_core::VirtualStack) {
    qbdi_tests::vm_over(Options::NO_OPT, start, end)
}

fn set_slot(target: u64) {
    // SAFETY: the guest's data word, read by guest code only while a run is in progress
    // on this thread (not now).
    unsafe { (&raw mut nc_slot).write_volatile(target) };
}

fn seen() -> u64 {
    // SAFETY: as above.
    unsafe { (&raw const nc_seen).read_volatile() }
}

/// The guest block of the Vm's code that `host` (a return address a native callee saw) is
/// in, and the guest address [`Vm::restore_return_addresses`] maps it to.
fn return_site(vm: &Vm, host: u64) -> (Option<u64>, u64) {
    // SAFETY: the Vm is alive and idle; only its directory is read.
    let block = unsafe { Vm::guest_block_at(vm, host) }.map(|r| r.start);
    let mut word = host;
    let at = &raw mut word as u64;
    // SAFETY: a word of this thread's stack; the Vm is idle.
    let n = unsafe { Vm::restore_return_addresses(vm, at, at + 8) };
    assert_eq!(n, 1, "{host:#x} is a return address into the cache");
    (block, word)
}

#[test]
fn a_plt_call_to_native_code_is_a_real_call_checked_against_the_slot() {
    let _one = one_at_a_time();
    let (mut vm, _stack) = vm_over(addr!(nc_caller), addr!(nc_caller_end));
    let (caller, after) = (addr!(nc_caller), addr!(nc_caller_after));
    set_slot(addr!(nc_native_a));
    // The first calls go through the PLT entry's block and the exec broker, which enters
    // the target in the inline table; the site then caches it.
    for _ in 0..4 {
        assert_eq!(vm.call(caller, &[]).unwrap(), 0x101);
    }
    assert_eq!(
        return_site(&vm, seen()),
        (Some(caller), after),
        "the native callee returns into the caller's block"
    );
    // Another native target in the slot: called at once, then cached in turn.
    set_slot(addr!(nc_native_b));
    for _ in 0..4 {
        assert_eq!(vm.call(caller, &[]).unwrap(), 0x201);
    }
    assert_eq!(return_site(&vm, seen()), (Some(caller), after));
    // An instrumented target in the slot: translated, then reached straight from the site.
    set_slot(addr!(nc_lazy));
    let exits = vm.cache_exits();
    assert_eq!(vm.call(caller, &[]).unwrap(), 0x301);
    assert!(vm.cache_exits() > exits, "nc_lazy was translated");
    for _ in 0..4 {
        assert_eq!(vm.call(caller, &[]).unwrap(), 0x301);
    }
    // Back and forth: each pair answers for its target.
    for (target, want) in [
        (addr!(nc_native_b), 0x201),
        (addr!(nc_lazy), 0x301),
        (addr!(nc_native_b), 0x201),
    ] {
        set_slot(target);
        assert_eq!(vm.call(caller, &[]).unwrap(), want);
    }
    set_slot(addr!(nc_native_a));
    assert_eq!(vm.call(caller, &[]).unwrap(), 0x101);
    assert_eq!(return_site(&vm, seen()), (Some(caller), after));
}

#[test]
fn a_callback_added_on_the_plt_entry_later_runs_at_every_call() {
    let _one = one_at_a_time();
    let (mut vm, _stack) = vm_over(addr!(nc_caller), addr!(nc_caller_end));
    let caller = addr!(nc_caller);
    set_slot(addr!(nc_native_a));
    for _ in 0..4 {
        assert_eq!(vm.call(caller, &[]).unwrap(), 0x101);
    }
    assert_eq!(
        return_site(&vm, seen()).0,
        Some(caller),
        "the PLT block is skipped"
    );
    let hits = count_at(&mut vm, addr!(nc_plt), InstPosition::PreInst);
    for _ in 0..3 {
        assert_eq!(vm.call(caller, &[]).unwrap(), 0x101);
    }
    assert_eq!(hits.get(), 3, "the PLT entry ran at every call");
}

#[test]
fn a_direct_call_to_native_code_returns_into_the_callers_block() {
    let _one = one_at_a_time();
    let (mut vm, _stack) = vm_over(addr!(nc_direct), addr!(nc_direct_end));
    for _ in 0..2 {
        assert_eq!(vm.call(addr!(nc_direct), &[]).unwrap(), 0x102);
    }
    assert_eq!(
        return_site(&vm, seen()),
        (Some(addr!(nc_direct)), addr!(nc_direct_after))
    );
}

/// With a callback after the call, the call stays an emulated one (a pushed return
/// address, then a jump); its return address maps back the same.
#[test]
fn a_direct_call_with_a_post_callback_returns_into_the_callers_block() {
    let _one = one_at_a_time();
    let (mut vm, _stack) = vm_over(addr!(nc_direct), addr!(nc_direct_end));
    let hits = count_at(&mut vm, addr!(nc_direct), InstPosition::PostInst);
    assert_eq!(vm.call(addr!(nc_direct), &[]).unwrap(), 0x102);
    assert_eq!(hits.get(), 1);
    assert_eq!(
        return_site(&vm, seen()),
        (Some(addr!(nc_direct)), addr!(nc_direct_after))
    );
}

/// A callback elsewhere (on the instruction after the call) leaves the PLT entry's block
/// with nothing to run: the call is still a real one.
#[test]
fn with_a_callback_elsewhere_a_plt_call_is_still_a_real_call() {
    let _one = one_at_a_time();
    let (mut vm, _stack) = vm_over(addr!(nc_caller), addr!(nc_caller_end));
    let hits = count_at(&mut vm, addr!(nc_caller_after), InstPosition::PreInst);
    set_slot(addr!(nc_native_b));
    for _ in 0..4 {
        assert_eq!(vm.call(addr!(nc_caller), &[]).unwrap(), 0x201);
    }
    assert_eq!(hits.get(), 4);
    assert_eq!(
        return_site(&vm, seen()),
        (Some(addr!(nc_caller)), addr!(nc_caller_after))
    );
}

/// With BASIC_BLOCK_NEW reported, a PLT entry's block is skipped only once it ran (and
/// was reported), whatever met its native target first: here an indirect call through
/// the same slot, before any call of the PLT entry. The entry is reported exactly once,
/// and both call sites then call the target for real.
#[test]
fn new_block_events_report_the_plt_entry_before_calls_skip_it() {
    let _one = one_at_a_time();
    let (mut vm, _stack) = vm_over(addr!(nc_caller), addr!(nc_caller_end));
    let new = Rc::new(std::cell::RefCell::new(Vec::new()));
    let n = new.clone();
    vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_NEW, move |_, state, _, _| {
        n.borrow_mut().push(state.basic_block_start);
        VmAction::Continue
    })
    .unwrap();
    set_slot(addr!(nc_native_a));
    for _ in 0..3 {
        assert_eq!(vm.call(addr!(nc_pointer_call), &[]).unwrap(), 0x100);
    }
    let plt_reports = || new.borrow().iter().filter(|&&s| s == addr!(nc_plt)).count();
    assert_eq!(plt_reports(), 0, "the PLT entry has not run yet");
    for _ in 0..3 {
        assert_eq!(vm.call(addr!(nc_caller2), &[]).unwrap(), 0x101);
    }
    assert_eq!(
        plt_reports(),
        1,
        "reported when it first ran: {:x?}",
        new.borrow()
    );
    assert_eq!(
        return_site(&vm, seen()),
        (Some(addr!(nc_caller2)), addr!(nc_caller2_after)),
        "then skipped: a real call"
    );
    for _ in 0..3 {
        assert_eq!(vm.call(addr!(nc_caller), &[]).unwrap(), 0x101);
    }
    assert_eq!(
        return_site(&vm, seen()),
        (Some(addr!(nc_caller)), addr!(nc_caller_after)),
        "the other site too"
    );
    assert_eq!(plt_reports(), 1);
}

/// A callback on the PLT entry's jump from the start: the entry's block runs at every call.
#[test]
fn a_callback_on_the_plt_entry_runs_at_every_call() {
    let _one = one_at_a_time();
    let (mut vm, _stack) = vm_over(addr!(nc_caller), addr!(nc_caller_end));
    // endbr64 is 4 bytes: the jump.
    let hits = count_at(&mut vm, addr!(nc_plt) + 4, InstPosition::PostInst);
    set_slot(addr!(nc_native_a));
    for _ in 0..5 {
        assert_eq!(vm.call(addr!(nc_caller), &[]).unwrap(), 0x101);
    }
    assert_eq!(hits.get(), 5);
}

/// A callback after the call instruction itself (PostInst): the call is not made for real
/// (that would skip it), and the callback runs at every call.
#[test]
fn a_callback_after_the_call_runs_at_every_call() {
    let _one = one_at_a_time();
    let (mut vm, _stack) = vm_over(addr!(nc_caller), addr!(nc_caller_end));
    let hits = count_at(&mut vm, addr!(nc_caller_call), InstPosition::PostInst);
    set_slot(addr!(nc_native_a));
    for _ in 0..5 {
        assert_eq!(vm.call(addr!(nc_caller), &[]).unwrap(), 0x101);
    }
    assert_eq!(hits.get(), 5);
}

/// An AFL map (65536 entries, NeverZero) of the run, as a block-entry callback computes it.
struct CallbackMap {
    map: Vec<u8>,
    prev: u64,
}

/// With an edge map, a call to a PLT entry whose slot holds an instrumented target counts
/// both of its edges (the caller to the entry, the entry to the target) at the call, and
/// goes to the target without the entry's block; once the slot holds another target, the
/// call goes through the entry's block as before. The map is compared with the one a
/// block-entry callback of another Vm computes over the same calls (a callback makes the
/// entry's block run there), the map in the first 2 GiB and above it, with the slot bound
/// at translation, changed, and bound again.
#[test]
fn plt_calls_count_both_edges_whether_the_slot_kept_its_target_or_not() {
    const MAP: usize = 1 << 16;
    let _one = one_at_a_time();
    for low in [true, false] {
        // A thread of its own: the engine's `prev` word is the thread's.
        std::thread::spawn(move || {
            let flags =
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if low { libc::MAP_32BIT } else { 0 };
            // SAFETY: a fresh anonymous mapping, never unmapped (the Vm's code writes it).
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    MAP,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            let (start, end) = (addr!(nc_caller), addr!(nc_native_b_end));
            let (mut vm, _stack) = vm_over(start, end);
            // SAFETY: MAP bytes, mapped for the life of the process.
            unsafe { vm.add_edge_map(p.cast(), MAP, qbdi_core::afl_block_hash, true) }
                .expect("an edge map");
            let (mut reference, _rstack) = vm_over(start, end);
            let expected = Rc::new(std::cell::RefCell::new(CallbackMap {
                map: vec![0; MAP],
                prev: 0,
            }));
            let e = expected.clone();
            reference
                .add_vm_event_cb(VmEvent::BASIC_BLOCK_ENTRY, move |_vm, state, _gpr, _fpr| {
                    let mut e = e.borrow_mut();
                    let cur = qbdi_core::afl_block_hash(state.basic_block_start) & (MAP as u64 - 1);
                    let at = (e.prev ^ cur) as usize;
                    e.map[at] = match e.map[at] {
                        255 => 1,
                        v => v + 1,
                    };
                    e.prev = cur >> 1;
                    VmAction::Continue
                })
                .expect("a block entry callback");
            let (lazy, a) = (addr!(nc_lazy), addr!(nc_native_a));
            for (round, (target, want)) in [
                (lazy, 0x301),
                (lazy, 0x301),
                (a, 0x101),
                (a, 0x101),
                (lazy, 0x301),
                (a, 0x101),
            ]
            .into_iter()
            .enumerate()
            {
                set_slot(target);
                for caller in [addr!(nc_caller), addr!(nc_caller2)] {
                    assert_eq!(vm.call(caller, &[]), Ok(want), "round {round}");
                    assert_eq!(reference.call(caller, &[]), Ok(want), "round {round}");
                }
            }
            // SAFETY: the map's MAP bytes; no guest runs now.
            let map = unsafe { std::slice::from_raw_parts(p as *const u8, MAP) };
            let expected = &expected.borrow().map;
            let differ: Vec<(usize, u8, u8)> = (0..MAP)
                .filter(|&i| map[i] != expected[i])
                .map(|i| (i, map[i], expected[i]))
                .collect();
            assert!(expected.iter().filter(|&&b| b != 0).count() > 8);
            assert!(
                differ.is_empty(),
                "low={low}: (index, inline, callback) {differ:?}"
            );
        })
        .join()
        .expect("the test's thread");
    }
    set_slot(0);
}
