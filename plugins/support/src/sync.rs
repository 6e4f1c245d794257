//! Locks for plugin state.
//!
//! Callbacks take their plugin's lock with [`lock`]: a panic in an earlier callback (caught
//! by the SDK) must not make every later one panic on a poisoned lock. Fini takes it with
//! [`lock_for_fini`]: the host may run fini from a signal handler or `atexit` while a
//! callback on the same thread holds the lock (blocking would deadlock) or while another
//! thread is in a callback (waiting a little lets it finish).

use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

/// Locks `m`, recovering the data if a panic poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long [`lock_for_fini`] waits for a lock held elsewhere.
pub const FINI_WAIT: Duration = Duration::from_millis(500);

/// Locks `m` without blocking indefinitely: retries `try_lock` for up to `wait`, then gives
/// up (`None`: the holder is the code fini interrupted, or it is stuck). Recovers poisoned
/// data.
pub fn lock_for_fini<T>(m: &Mutex<T>, wait: Duration) -> Option<MutexGuard<'_, T>> {
    let deadline = Instant::now() + wait;
    loop {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(TryLockError::Poisoned(e)) => return Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => {
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_recovers_poisoned_data() {
        let m = std::sync::Arc::new(Mutex::new(5));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 5);
        assert_eq!(lock_for_fini(&m, Duration::ZERO).map(|g| *g), Some(5));
    }

    #[test]
    fn lock_for_fini_gives_up_on_a_lock_held_by_this_thread() {
        let m = Mutex::new(1);
        let held = m.lock().unwrap();
        let start = Instant::now();
        assert!(lock_for_fini(&m, Duration::from_millis(20)).is_none());
        assert!(start.elapsed() >= Duration::from_millis(20));
        drop(held);
        assert!(lock_for_fini(&m, Duration::from_millis(20)).is_some());
    }

    #[test]
    fn lock_for_fini_waits_for_another_thread_to_release() {
        let m = std::sync::Arc::new(Mutex::new(0));
        let g = m.lock().unwrap();
        let m2 = m.clone();
        let t = std::thread::spawn(move || lock_for_fini(&m2, Duration::from_secs(10)).map(|g| *g));
        std::thread::sleep(Duration::from_millis(20));
        drop(g);
        assert_eq!(t.join().unwrap(), Some(0));
    }
}
