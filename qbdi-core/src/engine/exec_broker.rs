//! The exec broker: the guest calls code outside the instrumented ranges (libc, the loader,
//! the host). That code runs natively with the guest's registers, on the guest's stack; its
//! return address is swapped for the translation of the guest return site, so the native
//! `ret` lands straight back in the code cache with no dispatcher round trip.
//!
//! The first transfer to a native address goes through here; the address is then entered
//! in the inline table with the shared `broker` routine as its host code, which does the
//! same swap from inside the cache (when the return address is at [rsp] and translated).
//!
//! With EXEC_TRANSFER_CALL/RETURN callbacks, every transfer comes here instead: the call is
//! reported, and the return address goes to a transfer return stub of that guest return
//! address (an exit stub made once per address), through which the dispatcher reports the
//! return. Because each stub stands for one guest address, a native `setjmp` that records
//! it and a later `longjmp` to it continue at the right place.

use super::Engine;
use super::context::{FIRST_STUB_ID, off};
use super::directory::ExitKind;
use super::dispatcher::Next;
use crate::callback::{VmAction, VmEvent};
use crate::error::VmError;
use crate::instrumentation::TRANSFER_EVENTS;

/// How deep to look for the return address: [rsp], or [rsp+16] for the lazy-binding
/// resolver, entered with two words pushed above the return address (see
/// [`return_slots`]).
const RETURN_ADDRESS_SLOTS: u64 = 3;

/// Largest relocation index the lazy-binding resolver is taken to be entered with.
const MAX_RELOC_INDEX: u64 = 1 << 24;

/// The stack slots (of `words`, the first [`RETURN_ADDRESS_SLOTS`] at rsp) that may hold
/// the native callee's return address: [rsp]; and [rsp+16] when [rsp+8] can be the
/// relocation index a PLT's lazy stub pushed (PLT0 then pushed its link map at [rsp]).
/// [rsp+8] never is: a value there that looks like one (an instrumented address, the
/// run's stop address) is a relocation index, which rewriting would corrupt (the
/// stop address of `Vm::call`, 0x2a, is index 42's). Nor is [rsp+16] otherwise: a word
/// of the guest's there (a saved function pointer) is the guest's.
fn return_slots(words: &[u64]) -> impl Iterator<Item = usize> + '_ {
    let resolver = words.len() == RETURN_ADDRESS_SLOTS as usize && words[1] < MAX_RELOC_INDEX;
    std::iter::once(0).chain(resolver.then_some(2))
}

impl Engine {
    /// Prepares a native transfer to `pc`: finds the guest return address on the stack and
    /// redirects it into the cache. None when there is none.
    pub(super) fn transfer_to_native(&mut self, pc: u64) -> Result<Option<Next>, VmError> {
        let ctx = self.cache().ctx();
        // SAFETY: the context is live; the dispatcher is not running guest code.
        let rsp = unsafe { (*ctx).gpr.rsp };
        if rsp % 8 != 0 {
            return Ok(None);
        }
        // Only the slots that are mapped: a guest that jumps out with a wild stack pointer
        // gets its own fault in native code, not one in the dispatcher.
        let Some(stack_end) = self.readable.end_of(rsp) else {
            return Ok(None);
        };
        let reported = self.shared().inst.events.intersects(TRANSFER_EVENTS);
        let slots = ((stack_end - rsp) / 8).min(RETURN_ADDRESS_SLOTS) as usize;
        let mut words = [0u64; RETURN_ADDRESS_SLOTS as usize];
        for (i, w) in words.iter_mut().enumerate().take(slots) {
            // SAFETY: the slot is in readable memory (checked above) and the guest's stack
            // (it just executed a call or a jump with this stack pointer); we read and write
            // words of it as the native callee itself would.
            *w = unsafe { ((rsp + 8 * i as u64) as *const u64).read() };
        }
        for i in return_slots(&words[..slots]) {
            let slot = (rsp + 8 * i as u64) as *mut u64;
            let value = words[i];
            let is_stop = value == self.stop;
            if !is_stop && !self.shared().inst.ranges.contains(value) {
                continue;
            }
            if reported {
                match self.fire(VmEvent::EXEC_TRANSFER_CALL, pc, pc, pc) {
                    VmAction::Stop => return Ok(Some(Next::Stop)),
                    // SAFETY: as above.
                    VmAction::BreakToVm => {
                        return Ok(Some(Next::Redispatch(unsafe { (*ctx).gpr.rip })));
                    }
                    _ => {}
                }
            }
            let redirect = if is_stop {
                self.cache().runtime.stop_return
            } else if reported {
                self.transfer_return_stub(value)
            } else {
                let host = match self.dir().lookup(value) {
                    Some(b) => b.host,
                    None => self.translate(value)?,
                };
                // The broker finds the return site's translation in the inline table at
                // the next native call from here (blocks enter it only when needed, see
                // `next_for`): without it, every such call would come back here.
                self.enter_table(value, host);
                host
            };
            // SAFETY: as above.
            unsafe { slot.write(redirect) };
            if i == 0 && !is_stop && !reported {
                let cache = self.cache();
                cache.table.insert_native(pc, cache.runtime.broker);
            }
            return Ok(Some(Next::Native(pc)));
        }
        Ok(None)
    }

    /// The host address of the transfer return stub of guest return address `ret`, made
    /// now if there is none: `mov dword [ctx.exit_id], id; jmp exit` (15 bytes; the id's
    /// place is what `transfer_stub_target` reads back). Allocates
    /// nothing (the guest may be inside malloc); a full cache or directory is reset first.
    fn transfer_return_stub(&mut self, ret: u64) -> u64 {
        if let Some(s) = self.dir().transfer_stub(ret) {
            return s.stub;
        }
        const STUB_BYTES: u64 = 15;
        let (cache, dir) = self.cache.as_mut().expect("cache exists");
        if cache.room() < STUB_BYTES || !dir.has_room(1) {
            self.reset_full_cache();
        }
        let (cache, dir) = self.cache.as_mut().expect("cache exists");
        let host = cache.next_addr();
        let id = dir.next_stub();
        // The translator's buffer is sized for a whole block: no allocation here.
        let a = &mut self.translator.asm;
        a.reset(host);
        a.store_imm32(cache.ctx_addr() + off::EXIT_ID, FIRST_STUB_ID + id);
        a.jmp_to(cache.runtime.exit);
        a.finish();
        debug_assert!(a.len() as u64 <= STUB_BYTES);
        cache.commit(a);
        dir.push_stub(ret, 0, host, ExitKind::TransferReturn);
        dir.set_transfer_stub(id);
        host
    }
}

#[cfg(test)]
mod tests {
    use super::return_slots;

    fn slots(words: &[u64]) -> Vec<usize> {
        return_slots(words).collect()
    }

    /// [rsp] always; [rsp+16] only above a word that can be a relocation index (the lazy
    /// resolver's frame); [rsp+8] never, even when it equals `Vm::call`'s stop address.
    #[test]
    fn the_return_address_is_looked_for_where_a_call_or_the_resolver_left_it() {
        let code = 0x5555_5555_6524;
        let link_map = 0x7fff_f7ff_e2e0;
        assert_eq!(slots(&[code, 7, 0]), [0, 2]);
        assert_eq!(slots(&[link_map, 42, code]), [0, 2], "index 42 as 0x2a");
        assert_eq!(slots(&[link_map, 0, code]), [0, 2]);
        assert_eq!(slots(&[code, link_map, code]), [0], "a pointer is no index");
        assert_eq!(slots(&[code, 7]), [0], "the stack ends");
        assert_eq!(slots(&[code]), [0]);
    }
}
