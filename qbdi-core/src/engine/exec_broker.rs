//! The exec broker: the guest calls code outside the instrumented ranges (libc, the loader,
//! the host). That code runs natively with the guest's registers, on the guest's stack; its
//! return address is swapped for the translation of the guest return site, so the native
//! `ret` lands straight back in the code cache with no dispatcher round trip.
//!
//! The first transfer to a native address goes through here; the address is then entered
//! in the inline table with the shared `broker` routine as its host code, which does the
//! same swap from inside the cache (when the return address is at [rsp] and translated).

use super::Engine;
use crate::error::VmError;
use crate::range::RangeSet;

/// How deep to look for the return address: [rsp], [rsp+8], [rsp+16]. The lazy-binding
/// resolver is entered with two words pushed above the return address.
const RETURN_ADDRESS_SLOTS: u64 = 3;

impl Engine {
    /// Prepares a native transfer to `pc`: finds the guest return address on the stack and
    /// redirects it into the cache. Returns false when there is none.
    pub(super) fn transfer_to_native(
        &mut self,
        pc: u64,
        ranges: &RangeSet,
    ) -> Result<bool, VmError> {
        let ctx = self.cache().ctx();
        // SAFETY: the context is live; the dispatcher is not running guest code.
        let rsp = unsafe { (*ctx).gpr.rsp };
        if rsp % 8 != 0 {
            return Ok(false);
        }
        // Only the slots that are mapped: a guest that jumps out with a wild stack pointer
        // gets its own fault in native code, not one in the dispatcher.
        let Some(stack_end) = self.readable.end_of(rsp) else {
            return Ok(false);
        };
        let slots = ((stack_end - rsp) / 8).min(RETURN_ADDRESS_SLOTS);
        for i in 0..slots {
            let slot = (rsp + 8 * i) as *mut u64;
            // SAFETY: the slot is in readable memory (checked above) and the guest's stack
            // (it just executed a call or a jump with this stack pointer); we read and write
            // words of it as the native callee itself would.
            let value = unsafe { slot.read() };
            let redirect = if value == self.stop {
                self.cache().runtime.stop_return
            } else if ranges.contains(value) {
                match self.dir().lookup(value) {
                    Some(b) => b.host,
                    None => self.translate(value, ranges)?,
                }
            } else {
                continue;
            };
            // SAFETY: as above.
            unsafe { slot.write(redirect) };
            if i == 0 && value != self.stop {
                let cache = self.cache();
                cache.table.insert_native(pc, cache.runtime.broker);
            }
            return Ok(true);
        }
        Ok(false)
    }
}
