//! `edges`: AFL-style edge coverage, the map a fuzzer reads:
//! `map[prev ^ cur]++; prev = cur >> 1`, with `cur` AFL's QEMU-mode hash of the block's
//! address and `prev` per thread.
//! Translated code counts each edge itself, with no callback: on the branch when both ends
//! are known at translation, at a return's, indirect jump's or indirect call's site cache
//! when it goes where it went before, at the target's entry otherwise (0.1-0.4 ns a block
//! on the programs benchmark's gzip, sort, python3 and sqlite3 rows).
//!
//! - Under AFL++ (`__AFL_SHM_ID` in the environment) the map is the fuzzer's System V
//!   shared memory, of `AFL_MAP_SIZE` bytes (65536 if unset; a size that is not a power of
//!   two uses its largest power of two). Nothing is written at exit: the fuzzer reads the
//!   map.
//! - Otherwise the map is the plugin's own (`size` bytes, one per thread, added up at exit:
//!   threads never fight over map lines) and is written raw to `out` at exit (default
//!   `edges.<pid>.log`), with a one-line summary on stderr. What runs after the host's last
//!   exit handler (libc's stdio flush and `_exit`) is not in the file. A `fork` child starts
//!   from an empty map and writes its own file.
//!
//! Counters skip 0 when they wrap (AFL++'s NeverZero) unless `wrap` is given. In AFL++'s
//! shared map, as with AFL's own instrumentation, counts of two threads running the same
//! edge at once may be lost.

#![warn(missing_docs)]

use std::sync::OnceLock;
use std::sync::atomic::AtomicU8;

use qbdi_plugin_support::output::{Output, warn};
use qbdi_sdk::prelude::*;

/// The plugin's name.
const NAME: &str = "edges";

qbdi_sdk::plugin!(
    name: "edges",
    description: "AFL++-compatible edge coverage map (inline, shared memory under AFL++)",
    options: [
        ("out", "file the map is written to when not under AFL++", "edges.<pid>.log"),
        ("size", "map size in bytes when not under AFL++ (a power of two)", "65536"),
        ("wrap", "let counters wrap to 0 (no NeverZero)", ""),
    ],
);

/// Where the map lives.
enum Map {
    /// The fuzzer's shared memory (the fuzzer reads it).
    Shared,
    /// The plugin's own, one per thread (no thread waits for another's map lines), added
    /// up and written at fini.
    Own(ThreadEdgeMaps, Output),
}

static MAP: OnceLock<Map> = OnceLock::new();

/// The AFL++ map of `__AFL_SHM_ID`, if the variable is set; its size from `AFL_MAP_SIZE`.
fn afl_map() -> Result<Option<EdgeMap>, String> {
    let Ok(id) = std::env::var("__AFL_SHM_ID") else {
        return Ok(None);
    };
    let id: i32 = id
        .trim()
        .parse()
        .map_err(|_| format!("__AFL_SHM_ID={id:?} is not a shared memory id"))?;
    let size = match std::env::var("AFL_MAP_SIZE") {
        Ok(s) => s
            .trim()
            .parse::<usize>()
            .map_err(|_| format!("AFL_MAP_SIZE={s:?} is not a size in bytes"))?,
        Err(_) => 1 << 16,
    };
    if size == 0 {
        return Err("AFL_MAP_SIZE=0: the map needs at least one byte".into());
    }
    // The largest power of two that fits (the engine masks the hash with size - 1).
    let used = 1usize << (usize::BITS - 1 - size.leading_zeros());
    let p = attach_low(id, used).unwrap_or_else(|| {
        // SAFETY: attaches an existing segment; the result is checked below.
        unsafe { libc::shmat(id, std::ptr::null(), 0) }
    });
    if p as isize == -1 {
        return Err(format!(
            "cannot attach the fuzzer's shared memory __AFL_SHM_ID={id}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the segment is at least AFL_MAP_SIZE bytes (the fuzzer made it so) and stays
    // attached for the life of the process (never detached); AtomicU8 has u8's layout.
    let map = unsafe { std::slice::from_raw_parts(p as *const AtomicU8, used) };
    Ok(Some(map))
}

/// Attaches segment `id` (at least `size` bytes) in the first 2 GiB of the address space,
/// in place of a reservation made there: translated code then reaches the map's lines with
/// a 32-bit absolute address, with no register. None if there is no room or the kernel
/// refuses (the caller attaches it anywhere).
fn attach_low(id: i32, size: usize) -> Option<*mut libc::c_void> {
    // SAFETY: a fresh private reservation (no access), replaced below or unmapped.
    let spot = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    if spot == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: attaches the segment over our own reservation (SHM_REMAP replaces it).
    let p = unsafe { libc::shmat(id, spot, libc::SHM_REMAP) };
    if p as isize == -1 {
        // SAFETY: our reservation, unused.
        unsafe { libc::munmap(spot, size) };
        return None;
    }
    Some(p)
}

#[plugin_init]
fn init(vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    let never_zero = !options.flag("wrap");
    let map = match afl_map()? {
        Some(m) => {
            vm.add_edge_map(m, EdgeHash::Afl, never_zero)
                .map_err(|e| e.to_string())?;
            Map::Shared
        }
        None => {
            let size = options.parse::<usize>("size")?.unwrap_or(1 << 16);
            if !size.is_power_of_two() || size > 1 << 30 {
                return Err(format!(
                    "size={size}: the map size is a power of two up to 2^30 (65536 is AFL's)"
                ));
            }
            let maps = vm
                .add_thread_edge_maps(size, EdgeHash::Afl, never_zero)
                .map_err(|e| e.to_string())?;
            qbdi_plugin_support::fork::on_fork_child(forget_parents_edges);
            Map::Own(maps, Output::from_options(NAME, options)?)
        }
    };
    let _ = MAP.set(map);
    Ok(())
}

/// In a `fork` child: its own maps start empty.
fn forget_parents_edges() {
    if let Some(Map::Own(maps, _)) = MAP.get() {
        maps.reset();
    }
}

#[plugin_fini]
fn fini() {
    let Some(Map::Own(maps, output)) = MAP.get() else {
        return;
    };
    let bytes = maps.merged();
    let hit = bytes.iter().filter(|&&b| b != 0).count();
    output.write_all(NAME, &bytes);
    warn(
        NAME,
        &format!(
            "{hit} of {} map entries hit, map written to {}",
            bytes.len(),
            output.describe()
        ),
    );
}
