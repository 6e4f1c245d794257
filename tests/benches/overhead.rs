//! Overhead of the engine: each compute kernel of `kernels` (guest C code in
//! `tests/guest/bench_kernels.c`) timed natively and under the Vm, in the same process.
//!
//! `cargo bench --bench overhead [-- NAME...]` prints a table (one row per kernel, times in
//! milliseconds, the minimum over the timed repetitions) with, for each mode, its time and
//! its ratio to native: the plain Vm (`ratio`), a BASIC_BLOCK_ENTRY counting callback
//! (`bb_entry`), a PreInst callback on every instruction (`every_inst`), and memory
//! recording with a counting memory callback (`mem_access`). Then the geometric means:
//! `bb_entry_geomean=`, `every_inst_geomean=`, `mem_access_geomean=`, and last
//! `geomean_ratio=X.XX` (no callbacks).
//! Optional NAME arguments restrict the run to kernels whose name contains one of them.
//!
//! For each kernel: one run per mode checks that every mode returns the native checksum
//! (the process aborts otherwise) and warms the Vm's code cache; then the modes are timed in
//! turn, repetition after repetition (native, vm, native, vm, ...), 3 to 7 times depending
//! on the kernel's speed (the callback modes make a full run take several minutes).
//!
//! `QBDI_BENCH_QUICK=1` runs each kernel once per mode at a small size (a smoke test: the
//! times it prints include translation and are not meaningful).
//!
//! Each configuration is a [`Mode`] that gives a column of times (and, for instrumented
//! modes, a column of ratios to native and a geometric-mean line); adding a configuration
//! (an instrumentation callback, memory recording...) means adding a variant and saying
//! how to set up its Vm in [`Runner::new`].

mod kernels;

use std::hint::black_box;
use std::time::{Duration, Instant};

use kernels::{KERNELS, Kernel, SEED};
use qbdi_core::{
    InstPosition, MemoryAccessType, PRIORITY_DEFAULT, VirtualStack, Vm, VmAction, VmEvent,
    allocate_virtual_stack,
};

/// Size of the virtual stack of each Vm.
const STACK_SIZE: usize = 8 << 20;
/// Fewest timed repetitions of each mode (when not quick).
const MIN_REPS: u32 = 3;
/// Most timed repetitions of each mode.
const MAX_REPS: u32 = 7;
/// Time the timed repetitions of one kernel (all modes together) should take at most,
/// as long as `MIN_REPS` fit.
const KERNEL_BUDGET: Duration = Duration::from_millis(3500);

/// A configuration under which every kernel runs: one column of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Direct call of the kernel: the baseline.
    Native,
    /// `Vm::call` with the test binary instrumented and no callback.
    Vm,
    /// A BASIC_BLOCK_ENTRY callback that counts blocks.
    BbEntry,
    /// A PreInst callback on every instruction that counts instructions.
    EveryInst,
    /// Memory access recording with a callback counting the accesses.
    MemAccess,
}

impl Mode {
    /// Every mode, in column order; the first one is the baseline.
    const ALL: &[Mode] = &[
        Mode::Native,
        Mode::Vm,
        Mode::BbEntry,
        Mode::EveryInst,
        Mode::MemAccess,
    ];

    /// Header of the column of times.
    fn time_column(self) -> &'static str {
        match self {
            Mode::Native => "native_ms",
            Mode::Vm => "vm_ms",
            Mode::BbEntry => "bb_ms",
            Mode::EveryInst => "inst_ms",
            Mode::MemAccess => "mem_ms",
        }
    }

    /// Header of the column of ratios to the baseline (`None` for the baseline itself);
    /// the geometric-mean line is named `<header>_geomean` (`geomean_ratio` for the plain Vm).
    fn ratio_column(self) -> Option<&'static str> {
        match self {
            Mode::Native => None,
            Mode::Vm => Some("ratio"),
            Mode::BbEntry => Some("bb_entry"),
            Mode::EveryInst => Some("every_inst"),
            Mode::MemAccess => Some("mem_access"),
        }
    }
}

/// Runs kernels in one mode.
enum Runner {
    Native,
    Instrumented {
        vm: Box<Vm>,
        // Kept alive as long as the Vm uses it.
        _stack: VirtualStack,
    },
}

impl Runner {
    /// Sets up `mode`; `module_addr` is an address in the binary that holds the kernels.
    fn new(mode: Mode, module_addr: u64) -> Runner {
        match mode {
            Mode::Native => Runner::Native,
            Mode::Vm => Runner::instrumented(module_addr, |_vm| {}),
            Mode::BbEntry => Runner::instrumented(module_addr, |vm| {
                let mut blocks = 0u64;
                vm.add_vm_event_cb(
                    VmEvent::BASIC_BLOCK_ENTRY,
                    move |_vm, _state, _gpr, _fpr| {
                        blocks = black_box(blocks + 1);
                        VmAction::Continue
                    },
                )
                .unwrap_or_else(|e| fatal(&format!("cannot add the block callback: {e}")));
            }),
            Mode::EveryInst => Runner::instrumented(module_addr, |vm| {
                let mut instructions = 0u64;
                vm.add_code_cb(
                    InstPosition::PreInst,
                    move |_vm, _gpr, _fpr| {
                        instructions = black_box(instructions + 1);
                        VmAction::Continue
                    },
                    PRIORITY_DEFAULT,
                )
                .unwrap_or_else(|e| fatal(&format!("cannot add the instruction callback: {e}")));
            }),
            Mode::MemAccess => Runner::instrumented(module_addr, |vm| {
                let mut accesses = 0u64;
                vm.add_mem_access_cb(
                    MemoryAccessType::READ_WRITE,
                    move |vm, _gpr, _fpr| {
                        accesses = black_box(accesses + vm.inst_memory_access().len() as u64);
                        VmAction::Continue
                    },
                    PRIORITY_DEFAULT,
                )
                .unwrap_or_else(|e| fatal(&format!("cannot add the memory callback: {e}")));
            }),
        }
    }

    /// A Vm with its own stack, instrumenting the module around `module_addr`, then
    /// configured by `setup` (callbacks of the mode).
    fn instrumented(module_addr: u64, setup: impl FnOnce(&mut Vm)) -> Runner {
        let mut vm = Box::new(Vm::new());
        let stack = allocate_virtual_stack(vm.gpr_state_mut(), STACK_SIZE)
            .unwrap_or_else(|e| fatal(&format!("cannot allocate the virtual stack: {e}")));
        vm.add_instrumented_module_from_addr(module_addr)
            .unwrap_or_else(|e| fatal(&format!("cannot instrument the bench binary: {e}")));
        setup(&mut vm);
        Runner::Instrumented { vm, _stack: stack }
    }

    /// Runs `kernel` once at `size` and returns its checksum.
    fn run(&mut self, kernel: &Kernel, size: u64) -> u64 {
        match self {
            Runner::Native => kernel.run_native(black_box(size), black_box(SEED)),
            Runner::Instrumented { vm, .. } => vm
                .call(kernel.addr(), &[size, SEED])
                .unwrap_or_else(|e| fatal(&format!("kernel {} under the Vm: {e}", kernel.name))),
        }
    }

    /// Runs `kernel` once, checks its checksum against `expected` and returns the time.
    fn timed_run(&mut self, mode: Mode, kernel: &Kernel, size: u64, expected: u64) -> Duration {
        let start = Instant::now();
        let got = black_box(self.run(kernel, size));
        let elapsed = start.elapsed();
        if got != expected {
            fatal(&format!(
                "kernel {} returned {got:#018x} in mode {mode:?}, but {expected:#018x} natively",
                kernel.name
            ));
        }
        elapsed
    }
}

fn fatal(msg: &str) -> ! {
    eprintln!("overhead bench: {msg}");
    std::process::exit(1);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The table: fixed-width columns, one row printed as soon as its kernel is measured.
struct Table {
    widths: Vec<usize>,
}

impl Table {
    const NAME_WIDTH: usize = 10;
    const NUM_WIDTH: usize = 10;

    fn new() -> Table {
        let mut headers = vec!["kernel"];
        for mode in Mode::ALL {
            headers.push(mode.time_column());
            if let Some(ratio) = mode.ratio_column() {
                headers.push(ratio);
            }
        }
        let widths: Vec<usize> = headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let min = if i == 0 {
                    Self::NAME_WIDTH
                } else {
                    Self::NUM_WIDTH
                };
                h.len().max(min)
            })
            .collect();
        let table = Table { widths };
        table.print_row(&headers.iter().map(|h| h.to_string()).collect::<Vec<_>>());
        table
    }

    fn print_row(&self, cells: &[String]) {
        let mut line = String::new();
        for (i, (cell, width)) in cells.iter().zip(&self.widths).enumerate() {
            if i == 0 {
                line.push_str(&format!("{cell:<width$}"));
            } else {
                line.push_str(&format!(" {cell:>width$}"));
            }
        }
        println!("{line}");
    }
}

/// Times every mode on `kernel`, interleaved (native, vm, native, vm...), from `MIN_REPS`
/// to `MAX_REPS` repetitions within `KERNEL_BUDGET`; returns the fastest time of each mode.
fn timed_repetitions(
    runners: &mut [Runner],
    kernel: &Kernel,
    size: u64,
    expected: u64,
) -> Vec<Duration> {
    let mut best = vec![Duration::MAX; runners.len()];
    let mut reps = 0;
    let mut spent = Duration::ZERO;
    while reps < MAX_REPS {
        let round_start = Instant::now();
        for (i, (runner, &mode)) in runners.iter_mut().zip(Mode::ALL).enumerate() {
            best[i] = best[i].min(runner.timed_run(mode, kernel, size, expected));
        }
        spent += round_start.elapsed();
        reps += 1;
        if reps >= MIN_REPS && spent + spent / reps > KERNEL_BUDGET {
            break;
        }
    }
    best
}

fn main() {
    let quick = std::env::var("QBDI_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    // `cargo bench` passes `--bench`; other arguments select kernels by name.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|k| filters.is_empty() || filters.iter().any(|f| k.name.contains(f.as_str())))
        .collect();
    if selected.is_empty() {
        fatal(&format!("no kernel matches {filters:?}"));
    }

    let mut runners: Vec<Runner> = Mode::ALL
        .iter()
        .map(|&m| Runner::new(m, KERNELS[0].addr()))
        .collect();
    // ratios[m]: one ratio per kernel for each mode that has a ratio column.
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); Mode::ALL.len()];
    let table = Table::new();

    for kernel in selected {
        let size = kernel.size_for(quick);
        // First run of each mode: the native one gives the checksum every other mode must
        // return, and the runs under a Vm fill its code cache (warm-up).
        let start = Instant::now();
        let expected = runners[0].run(kernel, size);
        let mut first = vec![start.elapsed()];
        for (runner, &mode) in runners.iter_mut().zip(Mode::ALL).skip(1) {
            first.push(runner.timed_run(mode, kernel, size, expected));
        }
        // Quick: these single runs are the result. Otherwise they are discarded (they
        // include translation) and the modes are timed in interleaved repetitions.
        let best = if quick {
            first
        } else {
            timed_repetitions(&mut runners, kernel, size, expected)
        };

        let native = best[0];
        let mut cells = vec![kernel.name.to_string()];
        for (i, &mode) in Mode::ALL.iter().enumerate() {
            cells.push(format!("{:.1}", ms(best[i])));
            if mode.ratio_column().is_some() {
                let ratio = best[i].as_secs_f64() / native.as_secs_f64().max(1e-9);
                ratios[i].push(ratio);
                cells.push(format!("{ratio:.2}"));
            }
        }
        table.print_row(&cells);
    }

    // One geometric-mean line per ratio column; the plain Vm's `geomean_ratio` comes last.
    let vm_last = |&(i, _): &(usize, &Mode)| Mode::ALL[i] == Mode::Vm;
    let (last, others): (Vec<_>, Vec<_>) = Mode::ALL.iter().enumerate().partition(vm_last);
    for (i, mode) in others.into_iter().chain(last) {
        if let Some(col) = mode.ratio_column() {
            let geomean = qbdi_tests::geomean(&ratios[i]);
            if *mode == Mode::Vm {
                println!("geomean_ratio={geomean:.2}");
            } else {
                println!("{col}_geomean={geomean:.2}");
            }
        }
    }
}
