//! The Rust side of callback sites: `site_entry` is what the `callback` routine calls, on
//! the host stack, with the guest state in the context. It runs the site's callbacks in
//! order, combines their actions, and tells the routine where to resume (0: leave the
//! cache). The dispatcher uses `fire_events` for the events it reports itself
//! (BASIC_BLOCK_NEW, EXEC_TRANSFER_CALL/RETURN).
//!
//! A panic in a callback is caught here (it must not unwind through generated code) and
//! resumed by `Vm::run` once the guest state is safely back in the Vm.

use super::context::{Context, EXIT_CALLBACK, FP_FAST, FP_FULL};
use super::directory::Directory;
use super::ib_table::IbTable;
use super::xstate::XSaveKind;
use crate::callback::{InstPosition, VmAction, VmEvent, VmState};
use crate::instrumentation::{ENTRY_EVENTS, Instrumentation, Site, SiteKind};
use crate::vm_ref::VmRef;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What `site_entry` needs; lives in the engine, its address is in `ctx.cb_data`.
pub(crate) struct CallbackEnv {
    pub ctx: *mut Context,
    pub shared: *mut crate::vm::Shared,
    pub fp: Option<XSaveKind>,
    /// The engine's directory and inline table, for instrumentation changes made by
    /// callbacks (set by the dispatcher for the duration of a run).
    pub dir: *mut Directory,
    pub table: *const IbTable,
}

/// Called by the `callback` routine. Returns the host address to resume at, or 0 to leave
/// the cache (`ctx.exit_id` = EXIT_CALLBACK, `ctx.cb_stop` set for Stop).
///
/// # Safety
/// Only called by generated code of the cache `env` belongs to, with the guest state saved
/// in `env.ctx` and no other reference to the context or the shared state alive.
pub(crate) unsafe extern "C" fn site_entry(env: *mut CallbackEnv, site: u32) -> u64 {
    // SAFETY: per the contract: env, its context and shared state are live and unaliased.
    let (env, ctx, shared) = unsafe {
        let env = &*env;
        (env, &mut *env.ctx, &mut *env.shared)
    };
    prepare_fp_image(ctx, env.fp);
    let s: Site = shared.inst.sites[site as usize];
    let result = catch_unwind(AssertUnwindSafe(|| match s.kind {
        SiteKind::Inst(position) => run_inst_site(shared, ctx, &s, position),
        SiteKind::Events(events) => {
            let mut events = events;
            if s.new_pending {
                shared.inst.sites[site as usize].new_pending = false;
                events |= VmEvent::BASIC_BLOCK_NEW;
            }
            let state = VmState {
                event: events,
                basic_block_start: s.block_start,
                basic_block_end: s.block_end,
                sequence_start: s.block_start,
                sequence_end: s.block_end,
            };
            let current = if events.intersects(VmEvent::SYSCALL_ENTRY | VmEvent::SYSCALL_EXIT) {
                s.inst_addr
            } else {
                0
            };
            let ids = shared_ids(&shared.inst, &s);
            run_event_callbacks(shared, ctx, &ids, &state, current, Some(s))
        }
    }));
    let action = match result {
        Ok(a) => a,
        Err(payload) => {
            shared.inst.panic = Some(payload);
            VmAction::Stop
        }
    };
    if shared.inst.flush.all || !shared.inst.flush.ranges.is_empty() {
        // The callback changed instrumentation: the running block finishes as translated,
        // then every exit goes back to the dispatcher, which applies the change.
        // SAFETY: the dispatcher set these for this run; it is suspended in `enter`, and
        // unlinking only retargets branches (no code is freed or moved).
        unsafe {
            (*env.table).clear();
            (*env.dir).unlink_all(|s| super::emitter::patch_rel32(s.site, s.stub));
        }
    }
    match action {
        VmAction::Continue => s.cont,
        VmAction::SkipInst if s.kind == SiteKind::Inst(InstPosition::PreInst) => s.skip_inst,
        VmAction::SkipInst => s.cont,
        VmAction::SkipPatch => s.skip_patch,
        VmAction::BreakToVm | VmAction::Stop => {
            ctx.exit_id = EXIT_CALLBACK;
            ctx.cb_stop = u8::from(action == VmAction::Stop);
            0
        }
    }
}

/// The callback ids of a site (a copy: callbacks may register more while they run).
fn shared_ids(inst: &Instrumentation, s: &Site) -> smallvec_ids::Ids {
    smallvec_ids::Ids::from(&inst.site_cbs[s.first as usize..(s.first + s.len) as usize])
}

/// Makes `ctx.fpr` show the guest's FP state as the callback routine saved it.
fn prepare_fp_image(ctx: &mut Context, fp: Option<XSaveKind>) {
    let Some(fp) = fp else {
        return;
    };
    match ctx.fp_mode {
        FP_FULL => {
            fp.complete_after_save(&mut ctx.fpr);
            ctx.ext_dirty = 1;
        }
        FP_FAST if ctx.ext_dirty != 0 => {
            fp.write_initial_ext(&mut ctx.fpr);
            ctx.ext_dirty = 0;
        }
        _ => {}
    }
}

fn run_inst_site(
    shared: &mut crate::vm::Shared,
    ctx: &mut Context,
    s: &Site,
    position: InstPosition,
) -> VmAction {
    let mut action = VmAction::Continue;
    let Context {
        gpr,
        fpr,
        mem_slots,
        ..
    } = ctx;
    for k in s.first..s.first + s.len {
        let id = shared.inst.site_cbs[k as usize];
        if let Some((kind, range)) = shared.inst.mem_range(id) {
            // A memory range callback runs only if an access of this instruction touches it.
            let pre = (position == InstPosition::PreInst).then_some(s.inst_addr);
            let hit = shared
                .memory
                .collect(s.mem_first, s.mem_len, &mem_slots[..], pre)
                .iter()
                .any(|a| {
                    kind.intersects(a.access_type)
                        && a.access_address < range.end
                        && range.start < a.access_address.saturating_add(u64::from(a.size.max(1)))
                });
            if !hit {
                continue;
            }
        }
        let Some(mut cb) = shared.inst.take_inst(id) else {
            continue; // deleted since translation
        };
        let mut vm = VmRef {
            inst: &mut shared.inst,
            analyses: &mut shared.analyses,
            memory: &mut shared.memory,
            slots: &mem_slots[..],
            site: Some(*s),
            current: s.inst_addr,
        };
        let a = cb(&mut vm, gpr, fpr);
        shared.inst.put_back_inst(id, cb);
        action = action.max(a);
        if a == VmAction::SkipPatch
            || (a == VmAction::SkipInst && position == InstPosition::PreInst)
        {
            break;
        }
    }
    action
}

/// Calls the event callbacks `ids` with `state` (each sees only the events it registered
/// for); the largest action wins.
pub(crate) fn run_event_callbacks(
    shared: &mut crate::vm::Shared,
    ctx: &mut Context,
    ids: &[u32],
    state: &VmState,
    current: u64,
    site: Option<Site>,
) -> VmAction {
    let mut action = VmAction::Continue;
    let Context {
        gpr,
        fpr,
        mem_slots,
        ..
    } = ctx;
    for &id in ids {
        let Some((registered, mut cb)) = shared.inst.take_event(id) else {
            continue;
        };
        let mine = VmState {
            event: state.event & registered,
            ..*state
        };
        if mine.event.is_empty() {
            shared.inst.put_back_event(id, cb);
            continue;
        }
        let mut vm = VmRef {
            inst: &mut shared.inst,
            analyses: &mut shared.analyses,
            memory: &mut shared.memory,
            slots: &mem_slots[..],
            site,
            current,
        };
        let a = cb(&mut vm, &mine, gpr, fpr);
        shared.inst.put_back_event(id, cb);
        action = action.max(a);
    }
    action
}

/// The dispatcher's own events: calls the callbacks registered for any of `events`
/// (excluding, for BASIC_BLOCK_NEW, those that also take block entries: their entry site
/// reports it). Catches panics like `site_entry`.
pub(crate) fn fire_events(
    shared: &mut crate::vm::Shared,
    ctx: &mut Context,
    events: VmEvent,
    start: u64,
    end: u64,
) -> VmAction {
    let ids: Vec<u32> = shared
        .inst
        .event_ids(events)
        .filter(|(_, registered)| {
            !(events == VmEvent::BASIC_BLOCK_NEW && registered.intersects(ENTRY_EVENTS))
        })
        .map(|(id, _)| id)
        .collect();
    if ids.is_empty() {
        return VmAction::Continue;
    }
    let state = VmState {
        event: events,
        basic_block_start: start,
        basic_block_end: end,
        sequence_start: start,
        sequence_end: end,
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        run_event_callbacks(shared, ctx, &ids, &state, 0, None)
    }));
    result.unwrap_or_else(|payload| {
        shared.inst.panic = Some(payload);
        VmAction::Stop
    })
}

/// A small copy of a site's callback ids without heap allocation for the usual sizes.
mod smallvec_ids {
    pub(crate) enum Ids {
        Inline([u32; 8], usize),
        Heap(Vec<u32>),
    }

    impl From<&[u32]> for Ids {
        fn from(s: &[u32]) -> Ids {
            if s.len() <= 8 {
                let mut a = [0; 8];
                a[..s.len()].copy_from_slice(s);
                Ids::Inline(a, s.len())
            } else {
                Ids::Heap(s.to_vec())
            }
        }
    }

    impl std::ops::Deref for Ids {
        type Target = [u32];
        fn deref(&self) -> &[u32] {
            match self {
                Ids::Inline(a, n) => &a[..*n],
                Ids::Heap(v) => v,
            }
        }
    }
}
