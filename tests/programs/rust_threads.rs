//! Rust std::thread workers: each of 4 workers calls rs_step 1000 times. Deterministic
//! output.

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rs_step(k: u64) -> u64 {
    std::hint::black_box(k * 5 + 2)
}

fn main() {
    let workers: Vec<_> = (0..4u64)
        .map(|i| std::thread::spawn(move || (0..1000u64).map(|k| rs_step(k + i)).sum::<u64>()))
        .collect();
    for w in workers {
        println!("{}", w.join().expect("worker"));
    }
}
