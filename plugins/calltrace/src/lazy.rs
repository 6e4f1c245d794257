//! Lazily bound calls: the first call through a PLT slot goes to the dynamic loader's
//! resolver (`_dl_runtime_resolve*`), not to the function; the PLT stub has pushed the
//! slot's index and the loader's `link_map` above the return address:
//! `[rsp] = link_map, [rsp+8] = index, [rsp+16] = return address`.
//!
//! For such a call this finds the slot (`.rela.plt` of the file the return address is in,
//! see [`crate::elf`]): its symbol names the call, and after the return the GOT slot
//! holds the function's address. Memory is read through `/proc/self/mem` (a read of an
//! unmapped address fails instead of faulting).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use qbdi_plugin_support::hash::AddrMap;
use qbdi_plugin_support::maps::{self, Module};

use crate::calls::Lazy;
use crate::elf::{self, PltInfo};

/// Finds the PLT slot of calls into the resolver; caches modules and PLT tables.
#[derive(Debug)]
pub struct LazyResolver {
    /// `/proc/self/mem`, opened on first use (`None` also when it cannot be opened).
    mem: Option<Option<File>>,
    /// The modules at the last read of `/proc/self/maps`.
    modules: Vec<Module>,
    /// PLT tables by file path (`None`: not readable).
    plts: BTreeMap<String, Option<PltInfo>>,
    /// Whether a call target is in the dynamic loader, by address (asked on every call).
    in_loader: AddrMap<u64, bool>,
}

impl LazyResolver {
    /// An empty resolver (for a `static`).
    pub const fn new() -> LazyResolver {
        LazyResolver {
            mem: None,
            modules: Vec::new(),
            plts: BTreeMap::new(),
            in_loader: AddrMap::with_hasher(std::hash::BuildHasherDefault::new()),
        }
    }

    /// Reads the 8-byte word at `addr` of this process.
    pub fn read_word(&mut self, addr: u64) -> Option<u64> {
        let mem = self
            .mem
            .get_or_insert_with(|| File::open("/proc/self/mem").ok())
            .as_ref()?;
        let mut buf = [0u8; 8];
        mem.read_exact_at(&mut buf, addr).ok()?;
        Some(u64::from_le_bytes(buf))
    }

    /// The module containing `addr`, reading `/proc/self/maps` again if the cached list has
    /// none (a library loaded since).
    fn module(&mut self, addr: u64) -> Option<Module> {
        if let Some(i) = maps::find_module(&self.modules, addr) {
            return Some(self.modules[i].clone());
        }
        self.modules = maps::code_modules(&maps::read_self_maps().ok()?);
        maps::find_module(&self.modules, addr).map(|i| self.modules[i].clone())
    }

    /// Whether `target` is in the dynamic loader (`ld-linux-x86-64.so.2`, `ld-*.so*`).
    pub fn in_loader(&mut self, target: u64) -> bool {
        if let Some(&known) = self.in_loader.get(&target) {
            return known;
        }
        let answer = self
            .module(target)
            .is_some_and(|m| m.name().starts_with("ld-"));
        self.in_loader.insert(target, answer);
        answer
    }

    /// For a call to `target` with stack pointer `rsp`: the PLT slot being resolved, if
    /// `target` is in the dynamic loader and the stack has a PLT stub's frame.
    pub fn pending(&mut self, target: u64, rsp: u64) -> Option<Lazy> {
        if !self.in_loader(target) {
            return None;
        }
        let index = self.read_word(rsp.checked_add(8)?)?;
        let ret = self.read_word(rsp.checked_add(16)?)?;
        let module = self.module(ret)?;
        let plt = self
            .plts
            .entry(module.path.clone())
            .or_insert_with(|| elf::plt_info(Path::new(&module.path)).ok())
            .as_ref()?;
        let (offset, name) = plt.slots.get(usize::try_from(index).ok()?)?;
        let got = module
            .base
            .checked_sub(plt.first_load)?
            .checked_add(*offset)?;
        let name = name.clone();
        let unresolved = self.read_word(got)?;
        Some(Lazy {
            name,
            got,
            unresolved,
        })
    }

    /// The PLT slot's symbol name of a call to `target` whose return address is at `rsp`,
    /// if a slot of the caller's file holds `target` (names functions the host's symbols
    /// do not, such as a libc IFUNC's implementation reached through `strlen`'s slot).
    pub fn slot_name(&mut self, target: u64, rsp: u64) -> Option<String> {
        let ret = self.read_word(rsp)?;
        let module = self.module(ret)?;
        let plt = self
            .plts
            .entry(module.path.clone())
            .or_insert_with(|| elf::plt_info(Path::new(&module.path)).ok())
            .as_ref()?;
        let bias = module.base.checked_sub(plt.first_load)?;
        let slots: Vec<(u64, String)> = plt.slots.clone();
        slots
            .into_iter()
            .find(|(offset, name)| {
                !name.is_empty() && self.read_word(bias.wrapping_add(*offset)) == Some(target)
            })
            .map(|(_, name)| name)
    }

    /// The function a lazy call resolved to: the GOT slot's new value.
    pub fn resolved(&mut self, lazy: &Lazy) -> Option<u64> {
        self.read_word(lazy.got).filter(|&v| v != lazy.unresolved)
    }
}

impl Default for LazyResolver {
    fn default() -> Self {
        LazyResolver::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_and_fails_on_unmapped() {
        let mut r = LazyResolver::new();
        let word: u64 = 0x1122_3344_5566_7788;
        let addr = &word as *const u64 as u64;
        assert_eq!(r.read_word(addr), Some(word));
        assert_eq!(r.read_word(8), None);
    }

    #[test]
    fn loader_detection_and_non_plt_stacks() {
        let mut r = LazyResolver::new();
        let here = reads_own_memory_and_fails_on_unmapped as fn() as usize as u64;
        assert!(!r.in_loader(here), "test code is not the loader");
        // A stack that is no PLT frame: the target is not in the loader, nothing pending.
        let frame = [0u64; 3];
        assert_eq!(r.pending(here, frame.as_ptr() as u64), None);
    }

    #[test]
    fn names_a_target_by_the_bound_slot_that_holds_it() {
        let info = elf::plt_info(Path::new("/proc/self/exe")).unwrap();
        let mappings = maps::read_self_maps().unwrap();
        let ret = names_a_target_by_the_bound_slot_that_holds_it as fn() as usize as u64;
        let exe = maps::code_modules(&mappings)
            .into_iter()
            .find(|m| m.contains(ret))
            .unwrap();
        let mut r = LazyResolver::new();
        let (offset, name) = info
            .slots
            .iter()
            .find(|(_, n)| !n.is_empty())
            .expect("this test needs a binary with named PLT relocations");
        let target = r.read_word(exe.base - info.first_load + offset).unwrap();
        let stack = [ret];
        assert_eq!(
            r.slot_name(target, stack.as_ptr() as u64).as_ref(),
            Some(name)
        );
        assert_eq!(
            r.slot_name(ret, stack.as_ptr() as u64),
            None,
            "no slot holds it"
        );
    }

    #[test]
    fn finds_the_plt_slot_of_a_resolver_frame() {
        // This test binary has PLT relocations (bound at load: BIND_NOW). Fake the frame a
        // PLT stub leaves when it enters the resolver: [link_map, index 0, return address].
        let info = elf::plt_info(Path::new("/proc/self/exe")).unwrap();
        let Some((_, name)) = info.slots.first() else {
            panic!("this test needs a binary with PLT relocations");
        };
        let mappings = maps::read_self_maps().unwrap();
        let loader = mappings
            .iter()
            .find(|m| m.exec && maps::basename(&m.path).starts_with("ld-"))
            .expect("a dynamically linked test binary maps the loader");
        let ret = finds_the_plt_slot_of_a_resolver_frame as fn() as usize as u64;
        let frame = [0u64, 0, ret];
        let mut r = LazyResolver::new();
        let lazy = r
            .pending(loader.start, frame.as_ptr() as u64)
            .expect("a resolver frame");
        assert_eq!(&lazy.name, name);
        let exe = maps::code_modules(&mappings)
            .into_iter()
            .find(|m| m.contains(ret))
            .unwrap();
        assert!(exe.contains(lazy.got), "the GOT slot is in the binary");
        assert_eq!(r.read_word(lazy.got), Some(lazy.unresolved));
        let bound = lazy.unresolved;
        assert!(
            mappings
                .iter()
                .any(|m| m.exec && m.start <= bound && bound < m.end),
            "a bound slot holds a code address"
        );
        assert_eq!(r.resolved(&lazy), None, "unchanged since the call");
        // Out of range index: nothing.
        let frame = [0u64, info.slots.len() as u64, ret];
        assert_eq!(r.pending(loader.start, frame.as_ptr() as u64), None);
    }
}
