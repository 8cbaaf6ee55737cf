//! What every stage does around its own work: take the job's lock, make the
//! state and runtime dirs, clear what a killed run left behind, and record
//! the result in status.json whatever happens.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

use crate::config::Job;
use crate::error::{Error, IoContext, Kind, Result};
use crate::stats::StageStats;
use crate::status::{self, Outcome, Stage, StageResult};
use crate::{fsutil, log, mount};

/// Held for the whole stage: one run of a job at a time.
pub struct Context<'a> {
    pub job: &'a Job,
    pub started_at: SystemTime,
    _lock: Arc<Flock<File>>,
}

impl Context<'_> {
    /// The same run (its lock, its start) working on `job`: the job as a
    /// source snapshot shows it (source_snapshot.rs).
    pub fn with_job<'b>(&self, job: &'b Job) -> Context<'b> {
        Context {
            job,
            started_at: self.started_at,
            _lock: Arc::clone(&self._lock),
        }
    }

    /// A path under the job's runtime dir (mount points, sockets).
    pub fn runtime(&self, name: &str) -> PathBuf {
        self.job.runtime_dir.join(name)
    }

    /// A path under the job's state dir.
    pub fn state(&self, name: &str) -> PathBuf {
        self.job.state_dir.join(name)
    }

    /// The lock's descriptor, for a daemon that is to hold the lock after
    /// the helper exits (browse.rs: the union of an older run).
    pub fn lock_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&**self._lock)
    }

    /// Ends the stage without unlocking: a daemon that inherited the lock's
    /// descriptor keeps the lock until it exits. (Dropping the lock would
    /// unlock it for every holder of the descriptor.)
    pub fn leave_lock_held(self) {
        std::mem::forget(self);
    }
}

/// Takes the lock and prepares the dirs; exits 75 (Kind::Locked) when
/// another run of the job holds the lock.
pub fn enter(job: &Job) -> Result<Context<'_>> {
    fsutil::ensure_private_dir(&job.state_dir, "state_dir")?;
    fsutil::ensure_private_dir(&job.runtime_dir, "runtime_dir")?;
    let lock_path = job.state_dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .ctx(|| format!("opening lock {}", lock_path.display()))?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, Errno::EWOULDBLOCK)) => {
            let browses = crate::browse::lock_holders(job);
            let because = match browses.is_empty() {
                true => String::new(),
                false => format!(": {}", browses.join("; ")),
            };
            return Err(Error::new(
                Kind::Locked,
                format!(
                    "job {}: another run holds {}{because}",
                    job.name,
                    lock_path.display()
                ),
            ));
        }
        Err((_, e)) => {
            return Err(Error::new(
                Kind::Io,
                format!("locking {}: {e}", lock_path.display()),
            ));
        }
    };
    // With the lock held nothing else uses our mount points: whatever is
    // still mounted there was left by a run that was killed. The mounts of
    // `ciphersync mount` outlive the run that made them (browse.rs).
    let browses = job.runtime_dir.join(crate::browse::BROWSE_DIR);
    mount::clean_stale_except(&job.runtime_dir, Some(&browses))?;
    // And a source snapshot a killed backup could not remove.
    crate::source_snapshot::remove_stale(job)?;
    Ok(Context {
        job,
        started_at: SystemTime::now(),
        _lock: Arc::new(lock),
    })
}

/// What a stage's body returns when it did not fail.
pub struct Done {
    pub outcome: Outcome,
    pub stats: StageStats,
}

/// Runs a stage body inside the lock and records its result. The lock is
/// released (and every mount the body made is gone) before this returns.
pub fn stage(
    job: &Job,
    stage: Stage,
    body: impl FnOnce(&Context) -> Result<Done>,
) -> Result<StageResult> {
    let started_at = SystemTime::now();
    let ctx = enter(job)?;
    let outcome = body(&ctx);
    let result = match outcome {
        Ok(done) => StageResult {
            outcome: done.outcome,
            started_at,
            finished_at: SystemTime::now(),
            error: None,
            stats: done.stats.to_json(),
        },
        Err(error) => {
            // What the account allows may be what changed: probe it again
            // on the next run (target/probe.rs).
            crate::target::forget_capabilities(&job.state_dir);
            StageResult {
                // A failure after SIGINT/SIGTERM is the interruption's:
                // systemd signals the whole unit at once, and sshfs may die
                // (EIO on the mount) before the helper's next check of the
                // flag.
                outcome: if error.kind == Kind::Interrupted || crate::interrupt::requested() {
                    Outcome::Interrupted
                } else {
                    Outcome::Failed
                },
                started_at,
                finished_at: SystemTime::now(),
                error: Some(error),
                stats: Value::Object(Default::default()),
            }
        }
    };
    if let Err(e) = status::record(&job.state_dir, &job.name, stage, &result) {
        log::warn(format!("cannot record the status: {e}"));
    }
    drop(ctx);
    Ok(result)
}
