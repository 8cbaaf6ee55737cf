//! One connection budget per target: every ssh session a stage opens at
//! once (sshfs connections, a command on the server, an rsync over ssh)
//! fits in `target.max_connections`.
//!
//! Why a budget: a stage's sessions ride on one ssh master connection, and
//! sshd refuses more than `MaxSessions` (10 by default) on one connection.
//! ssh then quietly opens a connection of its own for the refused session,
//! and a storage box that caps connections per account (often at 10)
//! refuses that one, or a later run's. Without the master (a socket path
//! too long, a master lost) every session is a connection of its own.
//! So the budget bounds both.
//!
//! What a stage holds at once (measured with sshd's session slots, see
//! tests/e2e_budget.rs): one sshfs mount with up to its `max_conns`
//! connections (never two mounts at once), plus one more session beside
//! it: a command (a server script, `sha1sum`) or the rsync of the `rsync`
//! transport. Commands and rsyncs run one at a time today; [`Gate`] makes
//! that a rule, so that a later change cannot open more.
//!
//! Settled up front ([`plan`], pure): sshfs gets what `connections` asks
//! for, at most the budget less the one session beside it; the sshfs
//! transport's rsync workers ride on those connections (4 each, at most
//! 16: `split::workers_for`) and open no session of their own. A budget
//! smaller than [`MIN`] the job file check refuses.

use std::sync::{Condvar, Mutex};

use crate::config::Sftp;

/// The fewest sessions a stage works with: one sshfs connection and one
/// command beside it.
pub const MIN: usize = 2;
/// The default: OpenSSH's own `MaxSessions`, and a common storage-box cap
/// on connections per account.
pub const DEFAULT: usize = 10;
/// The most a job file may set.
pub const MAX: usize = 64;

/// How a stage spends its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sessions {
    /// sshfs `max_conns` (the sshfs transport's rsync workers ride on it).
    pub sshfs: usize,
    /// Sessions beside the mount: commands and rsync over ssh (at least 1).
    pub beside: usize,
    /// `target.connections` when the budget cut it down to `sshfs`.
    pub cut_from: Option<usize>,
}

/// Splits `max_connections` (at least [`MIN`]) between the sshfs mount and
/// what runs beside it.
pub fn plan(max_connections: usize, connections: usize) -> Sessions {
    let budget = max_connections.max(MIN);
    let sshfs = connections.clamp(1, budget - 1);
    Sessions {
        sshfs,
        beside: budget - sshfs,
        cut_from: (connections > sshfs).then_some(connections),
    }
}

/// The target's plan (see [`plan`]).
pub fn of(sftp: &Sftp) -> Sessions {
    plan(sftp.max_connections, sftp.connections)
}

impl Sessions {
    /// The one info line a stage prints when the budget cut `connections`.
    pub fn note(&self, max_connections: usize) -> Option<String> {
        let asked = self.cut_from?;
        Some(format!(
            "target.connections = {asked} does not fit in target.max_connections = \
             {max_connections} beside one command: using {} sshfs connection(s)",
            self.sshfs
        ))
    }
}

/// A counting semaphore: at most `permits` sessions beside the mount at
/// once; one more waits for a permit instead of opening a session.
///
/// A session that finished its work cleanly may be parked here (`park`)
/// instead of closed: it keeps its place, and the next one that wants
/// such a session takes it (`enter_reusing`) without the round trips of
/// opening one. Where every place is taken and one is parked, a caller
/// that wants a place of its own (a command, an rsync) has the parked
/// session closed and takes its place; nobody waits while one is parked.
pub struct Gate<T> {
    state: Mutex<GateState<T>>,
    freed: Condvar,
}

struct GateState<T> {
    free: usize,
    /// Parked sessions: each holds a place.
    idle: Vec<T>,
    /// Callers waiting in `enter`.
    waiting: usize,
}

/// A session's place in the budget, given back on drop.
pub struct Permit<'a> {
    gate: &'a dyn Release,
}

/// What a permit gives its place back to.
trait Release: Sync {
    fn release(&self);
}

impl<T: Send> Release for Gate<T> {
    fn release(&self) {
        let mut state = self.lock();
        state.free += 1;
        self.freed.notify_one();
    }
}

impl<T: Send> Gate<T> {
    pub fn new(permits: usize) -> Gate<T> {
        Gate {
            state: Mutex::new(GateState {
                free: permits.max(1),
                idle: Vec::new(),
                waiting: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn permit(&self) -> Permit<'_> {
        Permit { gate: self }
    }

    /// A place now, where there is one: a parked session's (handed back)
    /// first where `reuse`, else a free place, else a parked session's
    /// (handed back for the caller to close, outside the lock).
    fn take_now(state: &mut GateState<T>, reuse: bool) -> Option<Option<T>> {
        if reuse && let Some(parked) = state.idle.pop() {
            return Some(Some(parked));
        }
        if state.free > 0 {
            state.free -= 1;
            return Some(None);
        }
        state.idle.pop().map(Some)
    }

    /// Waits for a place (`take_now`).
    fn wait_for_place(&self, reuse: bool) -> (Permit<'_>, Option<T>) {
        let mut state = self.lock();
        loop {
            if let Some(parked) = Self::take_now(&mut state, reuse) {
                return (self.permit(), parked);
            }
            state.waiting += 1;
            state = self.freed.wait(state).unwrap_or_else(|e| e.into_inner());
            state.waiting -= 1;
        }
    }

    /// A free place, where there is one now (a parked session's, closed,
    /// where that is the only one).
    pub fn try_enter(&self) -> Option<Permit<'_>> {
        let parked = Self::take_now(&mut self.lock(), false)?;
        drop(parked);
        Some(self.permit())
    }

    /// Waits for a free place (a parked session's, closed, where that is
    /// the only one).
    pub fn enter(&self) -> Permit<'_> {
        let (permit, parked) = self.wait_for_place(false);
        drop(parked);
        permit
    }

    /// A place with a parked session where there is one, else as `enter`.
    pub fn enter_reusing(&self) -> (Permit<'_>, Option<T>) {
        self.wait_for_place(true)
    }

    /// As `enter_reusing`, without waiting: None where every place is
    /// taken by a session at work.
    pub fn try_enter_reusing(&self) -> Option<(Permit<'_>, Option<T>)> {
        let parked = Self::take_now(&mut self.lock(), true)?;
        Some((self.permit(), parked))
    }

    /// Keeps `session` with its place (`permit`, which must be this
    /// gate's) for the next `enter_reusing`; where somebody waits for a
    /// place, the session is closed and the place goes to them instead.
    pub fn park(&self, permit: Permit<'_>, session: T) {
        debug_assert!(std::ptr::addr_eq(permit.gate, self as &dyn Release));
        let mut state = self.lock();
        if state.waiting > 0 {
            drop(state);
            drop(session);
            drop(permit);
            return;
        }
        state.idle.push(session);
        std::mem::forget(permit);
    }

    /// Takes every parked session out (to close them), their places freed.
    pub fn drain(&self) -> Vec<T> {
        let mut state = self.lock();
        let parked = std::mem::take(&mut state.idle);
        state.free += parked.len();
        self.freed.notify_all();
        parked
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.gate.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn sshfs_gets_what_is_asked_when_it_fits() {
        assert_eq!(
            plan(10, 4),
            Sessions {
                sshfs: 4,
                beside: 6,
                cut_from: None
            }
        );
        assert_eq!(plan(10, 9).cut_from, None);
        assert_eq!(plan(2, 1).sshfs, 1);
    }

    #[test]
    fn the_budget_cuts_sshfs_and_leaves_one_session_beside() {
        for (budget, asked) in [(3, 8), (10, 16), (10, 10), (2, 16)] {
            let s = plan(budget, asked);
            assert_eq!(s.sshfs + s.beside, budget, "{budget} {asked}: {s:?}");
            assert_eq!((s.sshfs, s.beside), (budget - 1, 1), "{budget} {asked}");
            assert_eq!(s.cut_from, Some(asked));
        }
    }

    #[test]
    fn no_plan_exceeds_the_budget_or_leaves_nothing_beside() {
        for budget in MIN..=MAX {
            for asked in 1..=16 {
                let s = plan(budget, asked);
                assert!(s.sshfs >= 1 && s.beside >= 1, "{budget} {asked}: {s:?}");
                assert!(s.sshfs + s.beside <= budget, "{budget} {asked}: {s:?}");
                assert!(s.sshfs <= asked, "{budget} {asked}: {s:?}");
            }
        }
        // Below the minimum (refused by the job file check) still one each.
        assert_eq!((plan(1, 4).sshfs, plan(1, 4).beside), (1, 1));
    }

    #[test]
    fn the_note_names_both_fields_and_the_figure_used() {
        let note = plan(3, 8).note(3).unwrap();
        assert!(
            note.contains("target.connections = 8")
                && note.contains("target.max_connections = 3")
                && note.contains("using 2 sshfs"),
            "{note}"
        );
        assert_eq!(plan(10, 4).note(10), None);
    }

    #[test]
    fn the_gate_never_lets_more_in_than_it_has_permits() {
        let gate = Gate::<()>::new(2);
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let _permit = gate.enter();
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert!(most.load(Ordering::SeqCst) <= 2, "{most:?}");
        assert_eq!(inside.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_parked_session_is_reused_and_keeps_its_place() {
        let gate = Gate::<&str>::new(2);
        let (permit, reused) = gate.enter_reusing();
        assert_eq!(reused, None);
        gate.park(permit, "session");
        // One place is free, the other held by the parked session.
        let other = gate.try_enter().expect("the free place");
        let (permit, reused) = gate.try_enter_reusing().expect("the parked one");
        assert_eq!(reused, Some("session"));
        drop(permit);
        drop(other);
        assert_eq!(gate.drain(), Vec::<&str>::new());
        let (_a, _b) = (gate.enter(), gate.enter());
        assert!(gate.try_enter().is_none(), "two places, both taken");
    }

    #[test]
    fn a_caller_without_a_place_has_the_parked_session_closed() {
        let gate = Gate::<std::sync::Arc<()>>::new(1);
        let session = std::sync::Arc::new(());
        let (permit, _) = gate.enter_reusing();
        gate.park(permit, session.clone());
        assert_eq!(std::sync::Arc::strong_count(&session), 2);
        let command = gate.enter();
        assert_eq!(std::sync::Arc::strong_count(&session), 1, "closed");
        assert!(gate.try_enter_reusing().is_none());
        drop(command);
        assert!(gate.try_enter().is_some());
    }

    #[test]
    fn a_session_is_not_parked_while_somebody_waits_for_a_place() {
        let gate = Gate::<u32>::new(1);
        let (permit, _) = gate.enter_reusing();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let _place = gate.enter();
            });
            while gate.lock().waiting == 0 {
                std::thread::yield_now();
            }
            gate.park(permit, 7);
            waiter.join().unwrap();
        });
        assert!(gate.drain().is_empty(), "given to the waiter, not parked");
        assert!(gate.try_enter().is_some());
    }

    #[test]
    fn drained_sessions_free_their_places() {
        let gate = Gate::<u32>::new(2);
        let (a, _) = gate.enter_reusing();
        let (b, _) = gate.enter_reusing();
        gate.park(a, 1);
        gate.park(b, 2);
        let mut drained = gate.drain();
        drained.sort();
        assert_eq!(drained, vec![1, 2]);
        let (_x, _y) = (gate.enter(), gate.enter());
        assert!(gate.try_enter().is_none());
    }
}
