//! SIGINT and SIGTERM do not kill the helper: they set a flag. Every wait on
//! a child and every long loop checks it and returns `Error::interrupted()`,
//! so the stack unwinds through the mount guards and every mount is undone.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use crate::error::{Error, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    // Only an atomic store: the one thing that is safe in a signal handler.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handlers. Children get default dispositions back on exec,
/// because handlers (unlike ignored signals) are reset by execve.
pub fn install() {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(signal, &action) }.expect("installing a signal handler");
    }
}

pub fn requested() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Returns `Err(interrupted)` once a signal has arrived; call it in loops.
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::interrupted())
    } else {
        Ok(())
    }
}
