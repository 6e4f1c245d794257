//! What the random differential tests (`random_sequences.rs`, `random_vector.rs`) share:
//! the seeded generator, the register order of their native harnesses, the guest stack
//! buffer, disassembly for failure reports, the campaign seed, and the async-signal-safe
//! crash reporter's pieces. Included by each with `#[path]`.

#![allow(dead_code)]

use iced_x86::{
    Decoder, DecoderOptions, Formatter, IcedError, Instruction, IntelFormatter, Register,
};
use qbdi_core::GprState;
use std::fmt::Write as _;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) const RSP: usize = 4;

pub(crate) const RDI: usize = 7;

pub(crate) const GPR_NAMES_HW: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

pub(crate) fn gprs_to_vm(g: &[u64; 16], s: &mut GprState) {
    s.rax = g[0];
    s.rcx = g[1];
    s.rdx = g[2];
    s.rbx = g[3];
    s.rsp = g[4];
    s.rbp = g[5];
    s.rsi = g[6];
    s.rdi = g[7];
    s.r8 = g[8];
    s.r9 = g[9];
    s.r10 = g[10];
    s.r11 = g[11];
    s.r12 = g[12];
    s.r13 = g[13];
    s.r14 = g[14];
    s.r15 = g[15];
}

pub(crate) fn gprs_from_vm(s: &GprState) -> [u64; 16] {
    [
        s.rax, s.rcx, s.rdx, s.rbx, s.rsp, s.rbp, s.rsi, s.rdi, s.r8, s.r9, s.r10, s.r11, s.r12,
        s.r13, s.r14, s.r15,
    ]
}

pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xorshift64* seeded through splitmix64.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// A generator seeded through splitmix64.
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(splitmix64(seed) | 1)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-enough in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// In `lo..=hi_inclusive`.
    pub(crate) fn range(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        lo + self.below(hi_inclusive - lo + 1)
    }

    /// True `percent` times in 100.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `items` (not empty).
    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// A value that often hits edge cases: 0, -1, small counts, single bits, sign bits.
    pub(crate) fn interesting(&mut self) -> u64 {
        match self.below(10) {
            0 => 0,
            1 => u64::MAX,
            2 => self.below(70),
            3 => 1 << self.below(64),
            4 => !(1u64 << self.below(64)),
            5 => u64::from(self.next_u64() as u32),
            6 => self.next_u64() as i32 as i64 as u64,
            7 => 0x8000_0000_0000_0000 | self.below(4),
            8 => u64::from(self.next_u64() as u8) << (8 * self.below(8)),
            _ => self.next_u64(),
        }
    }
}

pub(crate) const STACK_LEN: usize = 16 * 1024;

pub(crate) const STACK_TOP_RESERVE: usize = 256;

pub(crate) const STACK_INIT: usize = 512;

/// CF PF AF ZF SF DF OF.
pub(crate) const FLAGS_MASK: u64 = 0xcd5;

pub(crate) const STATUS_FLAGS: u64 = 0x8d5;

pub(crate) const GPR64: [Register; 14] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RBP,
    Register::RSI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

pub(crate) const CONDITIONS: [&str; 16] = [
    "o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g",
];

pub(crate) type Gen = Result<Vec<Instruction>, IcedError>;

pub(crate) fn disassemble(bytes: &[u8], base: u64) -> String {
    let mut decoder = Decoder::with_ip(64, bytes, base, DecoderOptions::NONE);
    let mut formatter = IntelFormatter::new();
    let mut text = String::new();
    let mut out = String::new();
    for ins in &mut decoder {
        text.clear();
        formatter.format(&ins, &mut text);
        let start = (ins.ip() - base) as usize;
        let hex: String = bytes[start..start + ins.len()]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let _ = writeln!(out, "  +{:04x}  {hex:<30} {text}", ins.ip() - base);
    }
    out
}

#[repr(C, align(64))]
pub(crate) struct StackBuf(pub(crate) [u8; STACK_LEN]);

/// Bytes as one little-endian hex number per 8-byte lane, high lane first.
pub(crate) fn hex_le(bytes: &[u8]) -> String {
    let lanes: Vec<String> = bytes
        .chunks(8)
        .rev()
        .map(|c| {
            format!(
                "{:016x}",
                u64::from_le_bytes(c.try_into().expect("8-byte lane"))
            )
        })
        .collect();
    lanes.join("_")
}

#[derive(Clone, Copy)]
pub(crate) enum Phase {
    Idle = 0,
    Native = 1,
    Vm = 2,
}

pub(crate) static OLD_ACTIONS: [AtomicU64; 32] = [const { AtomicU64::new(0) }; 32];

pub(crate) const FATAL_SIGNALS: [libc::c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
];

pub(crate) fn write_stderr(bytes: &[u8]) {
    // SAFETY: write(2) on fd 2 with a valid buffer; async-signal-safe.
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

pub(crate) fn hex_into(buf: &mut [u8; 18], v: u64) -> &[u8] {
    buf[0] = b'0';
    buf[1] = b'x';
    for i in 0..16 {
        let nibble = ((v >> (60 - 4 * i)) & 0xf) as u8;
        buf[2 + i] = if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        };
    }
    &buf[..]
}

pub(crate) fn dec_into(buf: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

/// Installs `on_fatal_signal` for the fatal signals (once per process), keeping the previous
/// actions in `OLD_ACTIONS` for the handler to restore.
pub(crate) fn install_crash_reporter(on_fatal_signal: extern "C" fn(libc::c_int)) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for &sig in &FATAL_SIGNALS {
            let old: &'static mut libc::sigaction = Box::leak(Box::new(
                // SAFETY: sigaction is a plain C struct; all-zero is a valid value.
                unsafe { std::mem::zeroed() },
            ));
            // SAFETY: as above.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = on_fatal_signal as *const () as usize;
            // SAFETY: installs a handler that only uses async-signal-safe calls; `old`
            // receives the previous action and lives forever.
            let rc = unsafe {
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(sig, &action, old)
            };
            if rc == 0 {
                OLD_ACTIONS[sig as usize]
                    .store(old as *const libc::sigaction as u64, Ordering::SeqCst);
            }
        }
    });
}

/// The campaign seed: `QBDI_TEST_SEED` (decimal or 0x-hex), else `default`.
pub(crate) fn base_seed(default: u64) -> u64 {
    match std::env::var("QBDI_TEST_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("QBDI_TEST_SEED={s:?} is not a decimal or 0x-hex u64"))
        }
        Err(_) => default,
    }
}
