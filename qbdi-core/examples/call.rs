//! Calls one function of a shared library natively and under the Vm (the library's code
//! instrumented, everything else native) and prints both results.
//!
//! ```text
//! cargo run --release -p qbdi-core --example call -- libc.so.6 strlen "hello, world"
//! cargo run --release -p qbdi-core --example call -- libz.so.1 crc32 0 "some bytes" 10
//! ```
//!
//! Arguments that parse as integers (decimal or 0x-hex) are passed as integers, anything
//! else as a pointer to a NUL-terminated copy of the text; `s:TEXT` forces text
//! (`call libc.so.6 atoi s:12345`).

use qbdi_core::{Vm, allocate_virtual_stack};
use std::ffi::CString;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: call LIBRARY SYMBOL [ARG]...   (e.g. call libc.so.6 strlen hello)");
        return ExitCode::from(2);
    }
    match run(&args[0], &args[1], &args[2..]) {
        Ok(same) => {
            if same {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("call: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(library: &str, symbol: &str, args: &[String]) -> Result<bool, String> {
    let lib = CString::new(library).map_err(|_| "library name contains a NUL byte")?;
    let sym = CString::new(symbol).map_err(|_| "symbol name contains a NUL byte")?;
    // SAFETY: dlopen/dlsym with NUL-terminated names; the library stays loaded.
    let function = unsafe {
        let handle = libc::dlopen(lib.as_ptr(), libc::RTLD_NOW);
        if handle.is_null() {
            return Err(format!(
                "cannot load {library}: check the name (e.g. libc.so.6) or give a path"
            ));
        }
        let f = libc::dlsym(handle, sym.as_ptr());
        if f.is_null() {
            return Err(format!("{library} has no symbol {symbol}"));
        }
        f as u64
    };
    let texts: Vec<CString> = args
        .iter()
        .filter(|a| parse_int(a).is_none())
        .map(|a| {
            CString::new(a.strip_prefix("s:").unwrap_or(a))
                .map_err(|_| format!("argument {a:?} contains a NUL byte"))
        })
        .collect::<Result<_, _>>()?;
    let mut next_text = texts.iter();
    let values: Vec<u64> = args
        .iter()
        .map(|a| parse_int(a).unwrap_or_else(|| next_text.next().map_or(0, |t| t.as_ptr() as u64)))
        .collect();
    if values.len() > 6 {
        return Err("at most 6 arguments".into());
    }

    let mut vm = Vm::new();
    let _stack = allocate_virtual_stack(vm.gpr_state_mut(), 8 << 20).map_err(|e| e.to_string())?;
    vm.add_instrumented_module_from_addr(function)
        .map_err(|e| e.to_string())?;
    let under_vm = vm.call(function, &values).map_err(|e| e.to_string())?;
    let native = call_native(function, &values);
    println!(
        "{symbol}{args:?}: native {native:#x} ({native}), under the Vm {under_vm:#x} ({under_vm})"
    );
    Ok(native == under_vm)
}

fn call_native(function: u64, a: &[u64]) -> u64 {
    let mut v = [0u64; 6];
    v[..a.len()].copy_from_slice(a);
    // SAFETY: the user names a function taking up to six integer arguments; extra zero
    // arguments in registers are ignored by a SysV callee.
    unsafe {
        let f: extern "C" fn(u64, u64, u64, u64, u64, u64) -> u64 =
            std::mem::transmute(function as usize);
        f(v[0], v[1], v[2], v[3], v[4], v[5])
    }
}

fn parse_int(s: &str) -> Option<u64> {
    if s.starts_with("s:") {
        return None;
    }
    if let Some(hex) = s.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok();
    }
    s.parse::<i64>().ok().map(|v| v as u64)
}
