//! `serve --seal --settle SECONDS`: seal, then keep watching `records/`
//! until nothing has landed there for SECONDS, sealing again after each
//! change.
//!
//! Why: the server module starts the seal service from a path unit on
//! `records/`, and systemd watches nothing while the service it started
//! runs. A client writes its record as a temp file and renames it into
//! place; the temp file starts a seal, and a rename that lands during that
//! seal was lost until the timer (up to an hour of an unsealed record).
//! Here the watch is ours, made before the second pass, so a record that
//! lands while we seal is seen. What is left is the moment between our
//! exit and systemd watching again; the timer covers that.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::ServeArgs;
use super::seal::{SealReport, seal};
use crate::error::{Error, Kind, Result};
use crate::target::RECORDS;

/// Seals until `records/` has been quiet for `settle`.
pub fn seal_until_quiet(args: &ServeArgs, settle: Duration) -> Result<SealReport> {
    // The first pass makes records/ (root's, so the account cannot swap
    // it for a link before we watch it).
    let mut report = seal(args)?;
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .map_err(|e| errno("watching records/", e))?;
    // Entries made or renamed in; not IN_ATTRIB, which our own sealing
    // (a chown) causes.
    let landed =
        AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE;
    inotify
        .add_watch(&args.root().join(RECORDS), landed)
        .map_err(|e| errno("watching records/", e))?;
    report.absorb(seal(args)?);
    let mut quiet_since = Instant::now();
    loop {
        crate::interrupt::check()?;
        let left = settle.saturating_sub(quiet_since.elapsed());
        if left.is_zero() {
            return Ok(report);
        }
        if wait_readable(&inotify, left.min(Duration::from_secs(1)))? && drain(&inotify)? {
            report.absorb(seal(args)?);
            quiet_since = Instant::now();
        }
    }
}

/// Whether the watch has events within `timeout`.
fn wait_readable(inotify: &Inotify, timeout: Duration) -> Result<bool> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(errno("waiting for records/", e)),
    }
}

/// Reads every pending event; true if there was any.
fn drain(inotify: &Inotify) -> Result<bool> {
    let mut any = false;
    loop {
        match inotify.read_events() {
            Ok(events) if events.is_empty() => return Ok(any),
            Ok(_) => any = true,
            Err(nix::errno::Errno::EAGAIN) => return Ok(any),
            Err(e) => return Err(errno("reading the watch on records/", e)),
        }
    }
}

fn errno(what: &str, e: nix::errno::Errno) -> Error {
    Error::new(Kind::Io, format!("{what}: {e}"))
}
