//! Minimal leveled logging to stderr. Debug lines (every spawn, every mount)
//! are shown with `--verbose` or `CIPHERSYNC_LOG=debug`. Nothing secret is
//! ever logged: the helper never reads the password, only passes its path.

use std::sync::atomic::{AtomicBool, Ordering};

static DEBUG: AtomicBool = AtomicBool::new(false);

pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

pub fn debug(message: impl FnOnce() -> String) {
    if debug_enabled() {
        crate::progress::clear_terminal_line();
        eprintln!("ciphersync: debug: {}", message());
    }
}

pub fn info(message: impl AsRef<str>) {
    crate::progress::clear_terminal_line();
    eprintln!("ciphersync: {}", message.as_ref());
}

pub fn warn(message: impl AsRef<str>) {
    crate::progress::clear_terminal_line();
    eprintln!("ciphersync: warning: {}", message.as_ref());
}
