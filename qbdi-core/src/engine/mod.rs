//! The engine: code cache, translator, context switch, dispatcher, exec broker.
#![allow(dead_code, unused_variables)]
use crate::{FprState, GprState, Options, Range, RangeSet, Rword, VmError};

pub(crate) struct Engine;
impl Engine {
    pub fn new(_o: Options) -> Self { Engine }
    pub fn set_options(&mut self, _o: Options) {}
    pub fn ranges_changed(&mut self) {}
    pub fn run(&mut self, gpr: &mut GprState, fpr: &mut FprState, errno: &mut i32, ranges: &RangeSet, stop: Rword) -> Result<(), VmError> { todo!() }
    pub fn precache(&mut self, addr: Rword, ranges: &RangeSet) -> Result<bool, VmError> { todo!() }
    pub fn clear_cache(&mut self, r: Range) {}
    pub fn clear_all_cache(&mut self) {}
}
