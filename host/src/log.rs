//! The host's messages: to stderr with a `qbdi:` prefix, or to the `--log` file, so that the
//! program's own output stays its own.

use std::io::Write;
use std::sync::Mutex;

static LOG_FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Sends the host's messages to `path` (appending) instead of stderr.
pub fn to_file(path: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    *LOG_FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    Ok(())
}

/// Writes one message line.
pub fn line(message: &str) {
    // try_lock: a fatal signal may arrive while this thread holds the lock.
    if let Ok(mut guard) = LOG_FILE.try_lock()
        && let Some(file) = guard.as_mut()
    {
        let _ = writeln!(file, "qbdi: {message}");
        return;
    }
    let _ = writeln!(std::io::stderr(), "qbdi: {message}");
}
