//! The Rust side of callback sites: `site_entry` is what the `callback` routine calls, on
//! the host stack, with the guest state in the context. It runs the site's callbacks in
//! order, combines their actions, and tells the routine where to resume (0: leave the
//! cache). The dispatcher uses `fire_events` for the events it reports itself
//! (BASIC_BLOCK_NEW, EXEC_TRANSFER_CALL/RETURN).
//!
//! A panic in a callback is caught here (it must not unwind through generated code) and
//! resumed by `Vm::run` once the guest state is safely back in the Vm.

use super::context::{Context, EXIT_CALLBACK, FP_FAST, FP_FULL};
use super::context_switch::RESUME_AFTER_SITE;
use super::directory::Directory;
use super::ib_table::IbTable;
use super::xstate::XSaveKind;
use crate::callback::{InstPosition, VmAction, VmEvent, VmState};
use crate::instrumentation::shared::Shared;
use crate::instrumentation::vm_ref::{NO_SITE, VmRef};
use crate::instrumentation::{ENTRY_EVENTS, Instrumentation, SiteKind};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What `site_entry` needs; lives in the engine, its address is in `ctx.cb_data`.
pub(crate) struct CallbackEnv {
    pub ctx: *mut Context,
    pub shared: *mut Shared,
    pub fp: Option<XSaveKind>,
    /// Whether the guest's `errno` is kept from what callbacks do (unless
    /// OPT_DISABLE_ERRNO_BACKUP).
    pub keep_errno: bool,
    /// The engine's directory and inline table, for instrumentation changes made by
    /// callbacks (set by the dispatcher for the duration of a run).
    pub dir: *mut Directory,
    pub table: *const IbTable,
}

/// Called by the `callback` routine. Returns RESUME_AFTER_SITE to go on after the site, a
/// host address to resume at (skips), or 0 to leave the cache (`ctx.exit_id` =
/// EXIT_CALLBACK, `ctx.cb_stop` set for Stop).
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
    // The guest's errno: callbacks run on its thread and may call libc.
    // SAFETY: __errno_location returns the calling thread's errno slot.
    let errno = env.keep_errno.then(|| unsafe { *libc::__errno_location() });
    // Scalars, not a copy of the Site: a struct copied through the stack and read back
    // wider than it was written stalls store forwarding, and this runs per instruction.
    let s = &shared.inst.sites[site as usize];
    let (kind, first, len, inst_addr) = (s.kind, s.first, s.len, s.inst_addr);
    let (skip_inst, skip_patch) = (s.skip_inst, s.skip_patch);
    let pending = std::mem::take(&mut ctx.cb_pending);
    // The direct calls already ran this many of the site's callbacks (engine/direct_call.rs).
    let done = if pending != 0 { ctx.cb_pending_next } else { 0 };
    let result = catch_unwind(AssertUnwindSafe(|| match kind {
        SiteKind::Inst(position) if pending != 0 => {
            let action = pending_action(pending);
            let stop = action == VmAction::SkipPatch
                || (action == VmAction::SkipInst && position == InstPosition::PreInst);
            if stop || done >= len {
                action
            } else {
                action.max(run_inst_site(shared, ctx, site, position, done))
            }
        }
        SiteKind::Inst(position) => run_inst_site(shared, ctx, site, position, 0),
        SiteKind::Events(events) => {
            let s = &mut shared.inst.sites[site as usize];
            let mut events = events;
            if s.new_pending {
                s.new_pending = false;
                events |= VmEvent::BASIC_BLOCK_NEW;
            }
            let state = VmState {
                event: events,
                basic_block_start: s.block_start,
                basic_block_end: s.block_end,
                sequence_start: s.seq_start,
                sequence_end: s.seq_end,
            };
            let syscall = events.intersects(VmEvent::SYSCALL_ENTRY | VmEvent::SYSCALL_EXIT);
            let current = if syscall { inst_addr } else { 0 };
            let action = pending_action(pending);
            if done >= len {
                action
            } else {
                let ids = Ids::Site(first + done, len - done);
                action.max(run_event_callbacks(shared, ctx, ids, &state, current, site))
            }
        }
    }));
    let action = match result {
        Ok(a) => a,
        Err(payload) => {
            shared.inst.panic = Some(payload);
            VmAction::Stop
        }
    };
    if let Some(e) = errno {
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = e };
    }
    if let Some(fp) = env.fp
        && ctx.fp_mode == FP_FULL
    {
        // The routine restores the full state from the CPU's image.
        fp.fpr_to_native(&ctx.fpr, &mut ctx.xarea.0);
    }
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
        VmAction::Continue => RESUME_AFTER_SITE,
        VmAction::SkipInst if kind == SiteKind::Inst(InstPosition::PreInst) => skip_inst,
        VmAction::SkipInst => RESUME_AFTER_SITE,
        VmAction::SkipPatch => skip_patch,
        VmAction::BreakToVm | VmAction::Stop => {
            ctx.exit_id = EXIT_CALLBACK;
            ctx.cb_stop = u8::from(action == VmAction::Stop);
            0
        }
    }
}

/// The action a direct site's callback returned, as the site stored it (0: none).
fn pending_action(value: u32) -> VmAction {
    match value {
        1 => VmAction::SkipInst,
        2 => VmAction::SkipPatch,
        3 => VmAction::BreakToVm,
        4 => VmAction::Stop,
        _ => VmAction::Continue,
    }
}

/// Which event callbacks to call: a site's list (read in place: translation, the only
/// thing that changes the lists, cannot run during a callback), or a list of ids.
pub(crate) enum Ids<'a> {
    Site(u32, u32),
    List(&'a [u32]),
}

impl Ids<'_> {
    fn get(&self, inst: &Instrumentation, k: usize) -> Option<u32> {
        match self {
            Ids::Site(first, len) => {
                (k < *len as usize).then(|| inst.site_cbs[*first as usize + k])
            }
            Ids::List(ids) => ids.get(k).copied(),
        }
    }
}

/// Makes `ctx.fpr` show the guest's FP state as the callback routine saved it.
fn prepare_fp_image(ctx: &mut Context, fp: Option<XSaveKind>) {
    let Some(fp) = fp else {
        return;
    };
    match ctx.fp_mode {
        FP_FULL => {
            fp.native_to_fpr(&ctx.xarea.0, &mut ctx.fpr);
            fp.fill_after_callback_save(&mut ctx.fpr);
            ctx.ext_dirty = 1;
        }
        FP_FAST => {
            // The components in use were just stored; the others hold their initial values
            // in the registers, and may hold older values in the image.
            let in_use = u64::from(ctx.fp_in_use) & fp.ext_mask();
            fp.fill_after_fast_save(&mut ctx.fpr, in_use, ctx.ext_dirty != 0);
            ctx.ext_dirty = u8::from(in_use != 0);
        }
        _ => {}
    }
}

fn run_inst_site(
    shared: &mut Shared,
    ctx: &mut Context,
    site: u32,
    position: InstPosition,
    skip: u32,
) -> VmAction {
    let mut action = VmAction::Continue;
    let Context {
        gpr,
        fpr,
        mem_slots,
        ..
    } = ctx;
    let s = &shared.inst.sites[site as usize];
    let (first, len, inst_addr) = (s.first, s.len, s.inst_addr);
    fill_view(shared, &mem_slots[..], site);
    for k in first + skip..first + len {
        let id = shared.inst.site_cbs[k as usize];
        if let Some((kind, range)) = shared.inst.mem_range(id) {
            // A memory range callback runs only if an access of this instruction touches it.
            let hit = shared.view.iter().any(|a| {
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
            view: &shared.view,
            inst: &mut shared.inst,
            analyses: &mut shared.analyses,
            memory: &mut shared.memory,
            slots: &mem_slots[..],
            site,
            current: inst_addr,
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

/// Fills `shared.view` with the accesses `VmRef::inst_memory_access` gives at `site`: those
/// of its instruction (none for a site without one).
fn fill_view(shared: &mut Shared, slots: &[[u64; 2]], site: u32) {
    shared.view.clear();
    if let Some(s) = shared.inst.sites.get(site as usize)
        && s.mem_len != 0
    {
        let pre = (s.kind == SiteKind::Inst(InstPosition::PreInst)).then_some(s.inst_addr);
        shared
            .memory
            .collect_into(&mut shared.view, s.mem_first, s.mem_len, slots, pre);
    }
}

/// Calls the event callbacks `ids` with `state` (each sees only the events it registered
/// for); the largest action wins.
pub(crate) fn run_event_callbacks(
    shared: &mut Shared,
    ctx: &mut Context,
    ids: Ids<'_>,
    state: &VmState,
    current: u64,
    site: u32,
) -> VmAction {
    let mut action = VmAction::Continue;
    let Context {
        gpr,
        fpr,
        mem_slots,
        ..
    } = ctx;
    fill_view(shared, &mem_slots[..], site);
    let mut k = 0;
    while let Some(id) = ids.get(&shared.inst, k) {
        k += 1;
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
            view: &shared.view,
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
    shared: &mut Shared,
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
        run_event_callbacks(shared, ctx, Ids::List(&ids), &state, 0, NO_SITE)
    }));
    result.unwrap_or_else(|payload| {
        shared.inst.panic = Some(payload);
        VmAction::Stop
    })
}
