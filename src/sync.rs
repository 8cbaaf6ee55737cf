//! The backup stage: mirror the encrypted view of the source into
//! `<remote>/files/` with rsync, moving every replaced or deleted file into
//! `<remote>/snapshots/<id>/`.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{Filenames, Job, Target, Transport};
use crate::crypt::{self, PathDecryptor, REMOTE_CONFIG_NAME};
use crate::error::{Error, IoContext, Kind, Result};
use crate::exec::Cmd;
use crate::fingerprint::{self, SourceState};
use crate::mount::Mount;
use crate::progress::{self, Phase, Progress, Totals};
use crate::rsync::{self, ITEMIZE_FORMAT, RsyncPlan, Stats, rsync_args, stats_from};
use crate::run::{Context, Done};
use crate::state::{BACKUP_INCOMPLETE, LastBackup, RepairList};
use crate::stats::{BackupStats, StageStats};
use crate::status::{self, Outcome};
use crate::target::{self, FILES, Need, NotKept, SNAPSHOTS};
use crate::{delta, guard, interrupt, log, pool, snapshots, split};

/// Options of one backup run that the command line may override.
pub struct BackupOptions {
    pub max_delete_percent: Option<u8>,
}

pub fn backup(ctx: &Context, options: &BackupOptions, progress: &Progress) -> Result<Done> {
    // With `source_snapshot`, what follows reads a snapshot of the source.
    crate::source_snapshot::around(ctx, |ctx| backup_source(ctx, options, progress))
}

fn backup_source(ctx: &Context, options: &BackupOptions, progress: &Progress) -> Result<Done> {
    let job = ctx.job;
    crypt::check_ready(job)?;
    let cipher_point = ctx.runtime("cipher");
    crate::mount::prepare_point(&cipher_point)?;
    let ctlsock = ctx.runtime("ctl.sock");
    let max_delete_percent = options.max_delete_percent.unwrap_or(job.max_delete_percent);
    // Read once: the job lock keeps the state dir as it is until this run
    // writes it.
    let mut last = LastBackup::read(&job.state_dir);
    see_gocryptfs_change(job, last.as_mut());
    let killed = BACKUP_INCOMPLETE.is_set(&job.state_dir);
    let repair_pending = RepairList::pending(&job.state_dir);
    let points = (cipher_point.as_path(), ctlsock.as_path());
    let start = start(ctx, points, last.as_ref(), killed, max_delete_percent)?;
    let plan = plan_backup(&PlanInputs {
        unchanged_since: start.unchanged_since.as_deref(),
        last_id: start.known.last_id.as_deref(),
        last_stamps: last.as_ref().and_then(|l| l.target_stamps.as_deref()),
        target_stamps: start.known.target_stamps.as_deref(),
        killed,
        repair_pending,
        max_delete_percent,
    });
    log::debug(|| format!("backup plan: {plan:?}"));
    match plan {
        BackupPlan::NothingToSend { last_id, stamps } => {
            record_unchanged_run(ctx, start, &last_id, &stamps, last.as_ref())
        }
        BackupPlan::Full(full) => {
            let last = last.as_ref();
            full_run(ctx, start, full, last, max_delete_percent, progress)
        }
    }
}

/// What backup decides from its inputs before it changes anything.
#[derive(Debug, PartialEq, Eq)]
enum BackupPlan {
    /// Source and target are as the last backup left them: no rsync; the
    /// record copies run `last_id`'s entries, with the stamps of files/
    /// the preflight took.
    NothingToSend { last_id: String, stamps: String },
    /// rsync mirrors the view.
    Full(FullRun),
}

#[derive(Debug, PartialEq, Eq)]
struct FullRun {
    /// A killed run may have left rsync's temp files in files/.
    clean_leftovers: bool,
    /// Index the view and check it against the last record (guard.rs).
    guard: bool,
    workers: Workers,
    /// The source is as this run found it: if rsync then changes nothing,
    /// files/ is what that run's record lists, and the record copies it.
    same_as: Option<String>,
}

/// Whether rsync runs as several workers (split.rs, sshfs only). Workers
/// pay off when files move; for a run that only checks (the common
/// nightly case) one rsync starts faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workers {
    Several,
    One,
    /// As the guard's estimate says: several unless nothing moves (and
    /// several when there is no estimate after all).
    ByEstimate,
}

impl Workers {
    fn split(self, estimate: Option<&guard::Estimate>) -> bool {
        match self {
            Workers::Several => true,
            Workers::One => false,
            Workers::ByEstimate => estimate.is_none_or(|e| !e.nothing_to_move()),
        }
    }
}

/// The inputs of the plan: the state dir as the last runs left it, and
/// what the start learned about the source and the target.
#[derive(Debug, Clone, Copy)]
struct PlanInputs<'a> {
    /// The last backup's id, when the source has its fingerprint (see
    /// `last_backup_if_unchanged`).
    unchanged_since: Option<&'a str>,
    /// The newest run on the target.
    last_id: Option<&'a str>,
    /// The stamps of files/ after the last backup, and now (only when the
    /// preflight did not send the record).
    last_stamps: Option<&'a str>,
    target_stamps: Option<&'a str>,
    /// The last backup was killed (its marker is still there).
    killed: bool,
    /// The last verify found damage for this run to repair.
    repair_pending: bool,
    max_delete_percent: u8,
}

/// Settles every decision of a backup. A source with the fingerprint of
/// the backup that wrote the newest record needs no guard (and the server
/// did not send the record); if the target, too, is as that backup left it
/// (its stamps, and no damage found by verify since), rsync need not run.
fn plan_backup(i: &PlanInputs) -> BackupPlan {
    let unchanged = i.unchanged_since.is_some() && i.unchanged_since == i.last_id;
    let target_unchanged =
        i.last_stamps.is_some() && i.last_stamps == i.target_stamps && !i.repair_pending;
    if let (true, true, Some(last_id), Some(stamps)) =
        (unchanged, target_unchanged, i.last_id, i.target_stamps)
    {
        return BackupPlan::NothingToSend {
            last_id: last_id.to_string(),
            stamps: stamps.to_string(),
        };
    }
    let guard = !unchanged && i.max_delete_percent < 100 && i.last_id.is_some();
    // Files move when the guard's estimate says so, or when an unchanged
    // source meets a target whose stamps changed (how much, nobody knows
    // yet).
    let workers = match (unchanged, guard) {
        (true, _) if i.target_stamps.is_some() => Workers::Several,
        (true, _) => Workers::One,
        (false, true) => Workers::ByEstimate,
        (false, false) => Workers::Several,
    };
    BackupPlan::Full(FullRun {
        clean_leftovers: i.killed,
        guard,
        workers,
        same_as: i.last_id.filter(|_| unchanged).map(String::from),
    })
}

/// The run that mirrors the view with rsync.
fn full_run(
    ctx: &Context,
    start: Start,
    full: FullRun,
    last: Option<&LastBackup>,
    max_delete_percent: u8,
    progress: &Progress,
) -> Result<Done> {
    let job = ctx.job;
    let Start {
        remote,
        known,
        view,
        manifest,
        snapshot,
        source,
        ..
    } = start;
    // The owners, ACLs, xattrs and special files (metadata.rs) are read
    // from the source while the guard and rsync work through the view:
    // on SMALL (200,000 files) the walk took 2.2 s, most of it beside
    // round trips to the server.
    let mirror = MirrorInputs {
        remote: &*remote,
        view: &view,
        snapshot: &snapshot,
        full: &full,
        last,
        max_delete_percent,
        progress,
    };
    let (collected, mirrored) = pool::both(
        || manifest.collected(ctx, view.point(), &snapshot, source.as_ref()),
        || guard_and_mirror(ctx, known, &mirror),
    );
    let (stats, unreadable, repair) = mirrored?;
    // Owners, ACLs, xattrs and special files, encrypted (metadata.rs).
    collected?.store(&*remote, &snapshot)?;

    // Only a run that got this far claims a complete state: the snapshot dir
    // (if rsync made one) is made self-contained, then the record is
    // written, last.
    if stats.touched {
        snapshots::complete_snapshot_dir(job, &*remote, &snapshot)?;
    }
    // Nothing changed on either side: files/ is what the last record lists.
    let same_as = full
        .same_as
        .as_deref()
        .filter(|_| !stats.touched && stats.changed == 0)
        .map(|last| snapshots::SameAs { last, stamps: None });
    let record = write_run_record(job, &*remote, view, &snapshot, &stats, same_as)?;
    // A partial run keeps no fingerprint: the next backup must run rsync
    // again (and retry the files it could not read), even if nothing in
    // the source changed.
    let source = source.filter(|_| unreadable.is_empty());
    record_last_backup(ctx, &snapshot, source, &record)?;
    RepairList::clear(&job.state_dir);
    BACKUP_INCOMPLETE.clear(&job.state_dir)?;
    // A partial run is a run like any other for the retention: what it
    // could not read stays in files/ as it was (rsync neither replaces
    // nor deletes a file it cannot read), so no kept version is lost.
    let pruned = snapshots::prune(job, &*remote, false)?;
    target::keep_space(job, &*remote);
    let mut done = done(&snapshot, &record.header, &stats, &repair, pruned);
    if !unreadable.is_empty() {
        done.outcome = Outcome::Partial;
        if let StageStats::Backup(b) = &mut done.stats {
            b.unreadable = unreadable;
        }
    }
    Ok(done)
}

/// The account and its SFTP session where a change set is possible
/// (see `Rsync::change_plan`).
fn change_set_target<'a>(
    job: &'a Job,
    remote: &'a dyn target::Target,
) -> Option<(&'a crate::config::Sftp, &'a target::Ssh)> {
    let Target::Sftp(s) = &job.target else {
        return None;
    };
    let ssh = remote.sftp_writes()?;
    let possible = s.transport == Transport::Sshfs && job.filenames != Filenames::Plaintext;
    possible.then_some((s, ssh))
}

/// What `guard_and_mirror` works with.
struct MirrorInputs<'a> {
    remote: &'a dyn target::Target,
    view: &'a Mount,
    snapshot: &'a str,
    full: &'a FullRun,
    last: Option<&'a LastBackup>,
    max_delete_percent: u8,
    progress: &'a Progress,
}

/// The deletion guard, then rsync (with a first pass over SFTP into an
/// empty files/, or the change set): what the mirror stored, what it
/// could not read, and what the repair of damaged files sent.
fn guard_and_mirror(
    ctx: &Context,
    known: Known,
    m: &MirrorInputs,
) -> Result<(Stats, Vec<String>, Stats)> {
    let (job, remote, full) = (ctx.job, m.remote, m.full);
    let first_backup = known.last_id.is_none();
    // files/ is listed over SFTP (the change set, delta.rs) while the
    // guard walks the view, where nothing changes files/ between the two.
    let list_early = !first_backup
        && !full.clean_leftovers
        && known.config.is_some()
        && !RepairList::pending(&job.state_dir);
    let early_target = change_set_target(job, remote).filter(|_| list_early);
    let (listed, index) = pool::both(
        || {
            let (_, ssh) = early_target?;
            log::debug(|| format!("{FILES}/ listed over SFTP while the guard reads the view"));
            Some(target::list_files_over_sftp(ssh))
        },
        || match full.guard {
            true => guard::index_view(m.view.point()).map(Some),
            false => Ok(None),
        },
    );
    let index = index?;
    if full.clean_leftovers {
        clean_after_killed_run(job, remote)?;
    }
    ensure_remote_config(job, remote, known.config)?;
    let estimate = match index {
        Some(index) => guard_mass_changes(
            ctx,
            known.last_record,
            index,
            m.last.map(|l| l.started_ns),
            m.max_delete_percent,
        )?,
        None => {
            if full.same_as.is_some() {
                log::debug(|| {
                    "the source has not changed since the last backup: no deletion guard needed"
                        .into()
                });
            }
            None
        }
    };
    let split = full.workers.split(estimate.as_ref());
    BACKUP_INCOMPLETE.set(&job.state_dir, m.snapshot)?;

    // rsync's own count of what it checked and sent (progress/rsync.rs):
    // the guard's index of the view is not there on every run.
    let phase = m.progress.phase("backup", Totals::default());
    let rsync = Rsync {
        job,
        remote,
        source: m.view.point(),
        snapshot: m.snapshot,
        split,
        first_backup,
        phase: Some(&phase).filter(|p| p.shows()),
    };
    let repair = repair_damaged(ctx, &rsync)?;

    // The last moment before we trust both mounts with --delete.
    m.view.check_live()?;
    remote.check_live()?;
    let decryptor = PathDecryptor::new(&ctx.runtime("ctl.sock"));
    // A first backup sends every file over SFTP first, and makes their
    // directories there too. Later ones send their new files with the
    // change set (delta.rs), which an SFTP pass needs as well.
    // What the server keeps, which the change set after it needs (a probe
    // dir through sshfs on an SFTP-only account: 0.4 s at 20 ms), is asked
    // beside the pass.
    let first = match first_backup {
        true => {
            let (_, first) = pool::both(
                || remote.keeps(),
                || first_pass_over_sftp(job, remote, m.view.point(), rsync.phase),
            );
            first?
        }
        false => target::Uploaded::default(),
    };
    let Mirrored {
        mut stats,
        unreadable,
    } = rsync.mirror(&decryptor, listed)?;
    phase.finish();
    stats.add(&repair);
    // What the first pass sent, rsync found there and left alone.
    stats.transferred += first.files;
    stats.changed += first.files;
    stats.bytes_transferred += first.bytes;
    Ok((stats, unreadable, repair))
}

/// The run's result, as status.json and --json show it.
fn done(
    snapshot: &str,
    record: &snapshots::Header,
    stats: &Stats,
    repair: &Stats,
    pruned: snapshots::PrunePlan,
) -> Done {
    Done {
        outcome: Outcome::Ok,
        stats: StageStats::Backup(BackupStats {
            files: record.files,
            transferred: stats.transferred,
            bytes_transferred: stats.bytes_transferred,
            deleted: stats.deleted,
            changed: stats.changed,
            repaired: repair.transferred,
            snapshot: snapshot.to_string(),
            bytes: record.bytes,
            pruned: pruned.snapshot_dirs,
            unreadable: Vec::new(),
        }),
    }
}

/// Source and target are as the last backup left them (fingerprint and
/// stamps): rsync would find nothing to send, replace or delete, so it does
/// not run. The view was still mounted: that proves the password and the
/// config still open the key. The run checks the config on the target,
/// writes its record (the last one's entries) and prunes, as any other.
fn record_unchanged_run(
    ctx: &Context,
    start: Start,
    last_id: &str,
    stamps: &str,
    last: Option<&LastBackup>,
) -> Result<Done> {
    let job = ctx.job;
    let Start {
        remote,
        known,
        view,
        manifest,
        snapshot,
        source,
        ..
    } = start;
    log::info("the source and the target are as the last backup left them: nothing to send");
    ensure_remote_config(job, &*remote, known.config)?;
    let nothing = Stats::default();
    // The record asks what the server keeps (modes, symlinks). files/ has
    // the stamps the last run left: where that run's server kept both, so
    // does the record copied from its record. Else, where the target must
    // try it (an SFTP account, through sshfs: 0.4 s at 20 ms), that goes
    // beside the manifest's upload.
    let kept_all = last
        .filter(|l| l.snapshot == last_id)
        .and_then(|l| l.target_kept_all);
    if kept_all == Some(true) {
        log::debug(|| {
            format!("the server kept modes and symlinks at run {last_id}: not asked again")
        });
        remote.keeps_known(target::Keeps::ALL);
    }
    let (_, counts) = pool::both(
        || remote.keeps(),
        || {
            manifest
                .collected(ctx, view.point(), &snapshot, source.as_ref())?
                .store(&*remote, &snapshot)
        },
    );
    counts?;
    // No rsync ran: files/ still has the stamps the preflight took.
    let same_as = snapshots::SameAs {
        last: last_id,
        stamps: Some(stamps),
    };
    let record = write_run_record(job, &*remote, view, &snapshot, &nothing, Some(same_as))?;
    record_last_backup(ctx, &snapshot, source, &record)?;
    let pruned = snapshots::prune(job, &*remote, false)?;
    target::keep_space(job, &*remote);
    Ok(done(&snapshot, &record.header, &nothing, &nothing, pruned))
}

/// Writes the run's record, then lets the view go. What the server does
/// not keep (modes, symlinks: rclone) the record takes from the view;
/// where it keeps everything the view is not needed any more and is
/// unmounted while the record is written.
fn write_run_record(
    job: &Job,
    remote: &dyn target::Target,
    view: Mount,
    snapshot: &str,
    stats: &Stats,
    same_as: Option<snapshots::SameAs>,
) -> Result<snapshots::Written> {
    let keeps = remote.keeps();
    if keeps.all() {
        let (record, ()) = pool::side_by_side(
            || snapshots::write_record(job, remote, snapshot, stats, same_as, None),
            || view.unmount(),
        )?;
        return Ok(record);
    }
    let from = target::MetadataFrom {
        view: view.point(),
        modes: !keeps.modes,
        symlinks: !keeps.symlinks,
    };
    let record = snapshots::write_record(job, remote, snapshot, stats, same_as, Some(from))?;
    view.unmount()?;
    Ok(record)
}

/// What the start of a run set up and learned.
struct Start {
    remote: Box<dyn target::Target>,
    /// What the preflight found on the target.
    known: Known,
    view: Mount,
    /// The run's owners, ACLs and xattrs (metadata.rs): ready to be
    /// written, or written already.
    manifest: crate::metadata::Manifest,
    /// The run's id.
    snapshot: String,
    /// The source's fingerprint, taken before anything read the view.
    source: Option<SourceState>,
    /// What the preflight was told (see `last_backup_if_unchanged`).
    unchanged_since: Option<String>,
}

/// The server is asked (ssh master, preflight) while the view and the
/// manifest's scratch dir are mounted (scrypt) on a second thread. The source is fingerprinted while the ssh
/// master connects: the preflight needs to know whether the source is as
/// the last backup found it (then the server need not send the record).
/// A local error (the view) wins over a remote one; whatever the other
/// side set up is dropped (unmounted, disconnected) on the way out.
fn start(
    ctx: &Context,
    (cipher_point, ctlsock): (&Path, &Path),
    last: Option<&LastBackup>,
    killed: bool,
    max_delete_percent: u8,
) -> Result<Start> {
    let job = ctx.job;
    let snapshot = next_snapshot_id(ctx, last)?;
    // Whether the source is as the last backup found it, told by the
    // thread that fingerprints it to the one that holds the manifest.
    let (tell_unchanged, told_unchanged) = std::sync::mpsc::channel::<Option<SourceState>>();
    let (view, remote) = pool::join(
        || {
            let told_unchanged = told_unchanged;
            let view = crypt::mount_reverse(job, cipher_point, Some(ctlsock))?;
            refuse_empty_view(job, view.point(), max_delete_percent)?;
            // An unchanged source (likely nothing to send) has its manifest
            // collected while the preflight asks the server: on SMALL at
            // 20 ms the walk took 2.6 s, the stamps of files/ 2.2 s.
            let manifest = match told_unchanged.recv() {
                Ok(Some(source)) => {
                    log::debug(|| "metadata: collecting beside the preflight".into());
                    let collected = crate::metadata::Manifest::NotBegun.collected(
                        ctx,
                        view.point(),
                        &snapshot,
                        Some(&source),
                    )?;
                    log::debug(|| "metadata: collected beside the preflight".into());
                    crate::metadata::Manifest::Collected(collected)
                }
                _ => crate::metadata::Manifest::NotBegun,
            };
            Ok((view, manifest))
        },
        || {
            let tell_unchanged = tell_unchanged;
            let (remote, (source, unchanged_since)) = pool::join(
                || target::open(job, Need::Transfer, &ctx.runtime("remote")),
                || {
                    let source = fingerprint::of_source(job);
                    let unchanged_since = last_backup_if_unchanged(last, source.as_ref(), killed);
                    // The other side waits for this (or for the sender to
                    // go), as soon as it is known: not after the connection,
                    // so that an unchanged source's manifest mount (its
                    // scrypt) runs beside the ssh handshake.
                    let _ =
                        tell_unchanged.send(source.clone().filter(|_| unchanged_since.is_some()));
                    (source, unchanged_since)
                },
            );
            let remote = remote.unwrap_or_else(|_| Err(panicked("the connection")))?;
            let known = preflight(job, &*remote, unchanged_since.as_deref())?;
            log::debug(|| "preflight: answered".into());
            Ok((remote, known, source, unchanged_since))
        },
    );
    let view = view.unwrap_or_else(|_| Err(panicked("the view's mount")));
    let ((remote, known, source, unchanged_since), (view, manifest)) = match (remote, view) {
        (_, Err(local)) => return Err(local),
        (Err(remote), Ok(_)) => return Err(remote),
        (Ok(remote), Ok(view)) => (remote, view),
    };
    Ok(Start {
        remote,
        known,
        view,
        manifest,
        snapshot,
        source,
        unchanged_since,
    })
}

fn panicked(what: &str) -> Error {
    Error::new(Kind::Io, format!("{what} panicked"))
}

/// An empty encrypted view means an empty (or unmounted) source: mirroring it
/// would move every remote file into a snapshot.
fn refuse_empty_view(job: &Job, view: &Path, max_delete_percent: u8) -> Result<()> {
    let has_content = std::fs::read_dir(view)
        .ctx(|| format!("reading the encrypted view of {}", job.source.display()))?
        .filter_map(|e| e.ok())
        .any(|e| {
            !matches!(
                e.file_name().to_str(),
                Some("gocryptfs.diriv" | "gocryptfs.conf")
            )
        });
    if has_content || max_delete_percent >= 100 {
        return Ok(());
    }
    Err(Error::new(
        Kind::Refused,
        format!(
            "job {}: source {} is empty (not mounted?); refusing to empty the backup. \
             To back up an empty source on purpose, run `ciphersync backup {} --max-delete 100`",
            job.name,
            job.source.display(),
            job.name
        ),
    ))
}

/// The deletion guard (guard.rs) against the record of the last run. A
/// damaged last record only costs the guard, with a warning. Returns the
/// estimate when there was one.
fn guard_mass_changes(
    ctx: &Context,
    last: Option<Result<LastRecord>>,
    index: guard::ViewIndex,
    started_ns: Option<i128>,
    percent: u8,
) -> Result<Option<guard::Estimate>> {
    let Some(last) = last else {
        return Ok(None);
    };
    let estimate = last.and_then(|last| guard::estimate(last, &index, started_ns));
    let estimate = match estimate {
        Ok(estimate) => estimate,
        Err(e) => {
            log::warn(format!("deletion guard skipped: {e}"));
            return Ok(None);
        }
    };
    log::debug(|| format!("deletion guard: {estimate:?}"));
    guard::check(&ctx.job.name, &estimate, percent)?;
    Ok(Some(estimate))
}

/// Into the empty files/ of an SFTP account that rsync writes to through
/// sshfs, a first backup's files go over SFTP first, many at a time
/// (sftp_upload.rs). Through sshfs each new file costs rsync about 18
/// waited round trips. Only encrypted names: a plaintext name may start
/// with a dot like the temp names this pass (and rsync) use. The pass
/// only saves time: what it could not send, rsync sends, and a failure of
/// the pass itself is a debug line.
fn first_pass_over_sftp(
    job: &Job,
    remote: &dyn target::Target,
    view: &Path,
    phase: Option<&crate::progress::Phase>,
) -> Result<target::Uploaded> {
    let Some(ssh) = remote.sftp_writes() else {
        return Ok(target::Uploaded::default());
    };
    if job.filenames != Filenames::Encrypted {
        return Ok(target::Uploaded::default());
    }
    // The pass has no rate bound: a job that sets one gets rsync's.
    if job.bwlimit.is_some() {
        log::debug(|| "no first pass over SFTP: target.bwlimit is set".into());
        return Ok(target::Uploaded::default());
    }
    match target::upload_new(ssh, view, phase) {
        Ok(sent) => {
            log::debug(|| format!("first pass over SFTP: {sent:?}"));
            Ok(sent)
        }
        Err(e) if e.kind == crate::error::Kind::Interrupted => Err(e),
        Err(e) => {
            log::debug(|| format!("first pass over SFTP given up, rsync sends all: {e}"));
            // Its temp names must not reach the run's snapshot as deletions.
            remote.remove_rsync_leftovers()?;
            Ok(target::Uploaded::default())
        }
    }
}

/// After a killed run: rsync's temp files (`.name.XXXXXX`) may sit in files/
/// and would otherwise be "deleted" into the next snapshot as if they were
/// old versions. Encrypted names never start with a dot; plaintext ones may,
/// so then we leave them to rsync.
fn clean_after_killed_run(job: &Job, remote: &dyn target::Target) -> Result<()> {
    if job.filenames == Filenames::Plaintext {
        log::warn(
            "the previous backup did not finish; with plaintext names its temp files cannot be told apart",
        );
        return Ok(());
    }
    let removed = remote.remove_rsync_leftovers()?;
    if removed > 0 {
        log::warn(format!(
            "removed {removed} temp file(s) left by an interrupted backup"
        ));
    }
    Ok(())
}

/// `files/` must always be mountable by plain gocryptfs, so it carries the
/// config. A remote config that differs from ours means the key changed
/// (a lost and re-created config): refuse rather than mix two keys.
fn ensure_remote_config(
    job: &Job,
    remote: &dyn target::Target,
    theirs: Option<Vec<u8>>,
) -> Result<()> {
    let ours = std::fs::read(&job.gocryptfs_config)
        .ctx(|| format!("reading {}", job.gocryptfs_config.display()))?;
    let rel = format!("{FILES}/{REMOTE_CONFIG_NAME}");
    match theirs {
        Some(theirs) if theirs == ours => Ok(()),
        Some(_) => Err(Error::new(
            Kind::Refused,
            format!(
                "job {}: {rel} on {} is not {}: the backup there was made with another key. \
                 Restore the original config (copy it from the target) instead of creating a new one",
                job.name,
                job.target_label(),
                job.gocryptfs_config.display()
            ),
        )),
        None => {
            log::info(format!("uploading the gocryptfs config to {rel}"));
            remote.write_file(&rel, target::bytes_file(&ours)?)
        }
    }
}

/// The newest run's record, read as it is passed over.
type LastRecord = snapshots::RecordReader<BufReader<File>>;

/// What backup learns about the target before rsync runs.
struct Known {
    /// files/gocryptfs.conf, if there is one.
    config: Option<Vec<u8>>,
    /// The newest run's id, if any.
    last_id: Option<String>,
    /// The stamps of files/, when the record was not sent (see
    /// `snapshots::stamps_snippet`).
    target_stamps: Option<String>,
    /// Its record (an error if it is damaged), unless not asked for.
    last_record: Option<Result<LastRecord>>,
}

/// Creates the layout and reads the config in files/ and the newest record
/// (one round trip where the server's shell may be used). The newest record
/// is not sent when it is `unchanged_since` (the guard will not need it).
fn preflight(
    job: &Job,
    remote: &dyn target::Target,
    unchanged_since: Option<&str>,
) -> Result<Known> {
    let found = remote.preflight(unchanged_since, &job.state_dir)?;
    let last_record = match (&found.last_id, found.last_record) {
        (Some(id), Some(file)) => Some(
            snapshots::RecordReader::new(BufReader::new(file))
                .map_err(|e| snapshots::name_record(e, id)),
        ),
        _ => None,
    };
    Ok(Known {
        config: found.config,
        last_id: found.last_id,
        target_stamps: found.target_stamps,
        last_record,
    })
}

/// A gocryptfs upgrade past 2.5.0 since the last backup (guard.rs,
/// GocryptfsChange): said in one line when known. The source's
/// fingerprint stands for the view only while gocryptfs shows it the same
/// way, so the nothing-to-send shortcut is off for this run (otherwise an
/// unchanged source would keep the copies the upgrade is meant to replace).
fn see_gocryptfs_change(job: &Job, last: Option<&mut LastBackup>) {
    let Some(last) = last else {
        return;
    };
    let change = guard::GocryptfsChange::between(
        Some(last.gocryptfs_release),
        crate::about::installed_gocryptfs_release(),
    );
    if let Some(note) = change.note(&job.name) {
        log::info(note);
    }
    if change.view_may_differ() {
        log::debug(|| format!("{change:?}: no nothing-to-send shortcut this run"));
        last.source_fingerprint = None;
    }
}

fn record_last_backup(
    ctx: &Context,
    snapshot: &str,
    source: Option<SourceState>,
    record: &snapshots::Written,
) -> Result<()> {
    let target_stamps = record.target_stamps.as_deref();
    let started_ns = ctx
        .started_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // Only a settled fingerprint may stand for the source this run sent.
    let source_fingerprint = source.filter(SourceState::settled).map(|s| s.fingerprint);
    LastBackup {
        snapshot: snapshot.to_string(),
        // Only with a fingerprint: the pair says "nothing to send".
        target_stamps: target_stamps
            .filter(|_| source_fingerprint.is_some())
            .map(String::from),
        source_fingerprint,
        target_kept_all: Some(!record.header.metadata_in_record),
        started_ns: i128::try_from(started_ns).unwrap_or(i128::MAX),
        gocryptfs_release: crate::about::installed_gocryptfs_release(),
    }
    .write(&ctx.job.state_dir)
}

/// The last backup's snapshot id when the source has its fingerprint and
/// that backup was not followed by a killed one: the target then holds
/// what the view shows (rsync checks that anyway), and the guard has
/// nothing to guard against.
fn last_backup_if_unchanged(
    last: Option<&LastBackup>,
    source: Option<&SourceState>,
    incomplete: bool,
) -> Option<String> {
    let last = last?;
    let same = last.source_fingerprint.as_deref() == Some(source?.fingerprint.as_str());
    let id = Some(&last.snapshot).filter(|id| status::parse_snapshot_id(id).is_some())?;
    (same && !incomplete).then(|| id.clone())
}

/// Snapshot ids are UTC start times to the second; two runs within one
/// second must not share a snapshot dir, so wait for the clock if needed.
fn next_snapshot_id(ctx: &Context, last: Option<&LastBackup>) -> Result<String> {
    let last = last.map_or("", |d| d.snapshot.as_str());
    loop {
        let id = status::snapshot_id(SystemTime::now().max(ctx.started_at));
        if id.as_str() > last {
            return Ok(id);
        }
        interrupt::check()?;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// rsync decides by size and mtime, which a flipped byte on the server does
/// not change: files that the last verify found damaged are compared by
/// checksum and re-sent (the damaged copy goes into the snapshot).
fn repair_damaged(ctx: &Context, rsync: &Rsync) -> Result<Stats> {
    let Some(list) = RepairList::read(&ctx.job.state_dir) else {
        return Ok(Stats::default());
    };
    let present: Vec<&str> = list
        .paths
        .iter()
        .map(String::as_str)
        .filter(|p| rsync.source.join(p).is_file())
        .collect();
    if present.is_empty() {
        return Ok(Stats::default());
    }
    let files_from = ctx.runtime("repair.files");
    crate::fsutil::write_atomic(&files_from, present.join("\0").as_bytes())?;
    log::info(format!(
        "re-sending {} file(s) that the last verify found damaged",
        present.len()
    ));
    rsync.repair(&files_from)
}

/// What the passes of one mirror did, what the target refused to store
/// and what could not be read from the source.
#[derive(Default)]
struct Passed {
    stats: Stats,
    /// Entries the target refused (or an rsync error that names no file
    /// of the view), files named: the run fails.
    refused: Vec<String>,
    /// Files and directories of the view rsync could not read (permission
    /// denied, vanished): the run is `partial`.
    unreadable: Vec<String>,
    /// rsync left every deletion out (a directory of the source could not
    /// be listed).
    deletions_skipped: bool,
}

/// What a mirror stored, and what it could not read.
struct Mirrored {
    stats: Stats,
    unreadable: Vec<String>,
}

impl Passed {
    /// A pass that exited 23 or 24 (`vanished`: every file it names is
    /// the source's): each file rsync named goes to the side its path lies
    /// on (see `Named`).
    fn sorted(stats: Stats, named: Vec<Named>, stderr: &str, vanished: bool) -> Passed {
        let mut passed = Passed {
            stats,
            deletions_skipped: stderr.contains("skipping file deletion"),
            ..Passed::default()
        };
        if named.is_empty() {
            match vanished {
                true => passed.unreadable.push(stderr.trim().to_string()),
                false => passed.refused.push(stderr.trim().to_string()),
            }
        }
        for n in named {
            match n.source_side || vanished {
                true => passed.unreadable.push(n.item),
                false => passed.refused.push(n.item),
            }
        }
        passed
    }

    fn add(&mut self, other: Passed) {
        self.stats.add(&other.stats);
        self.refused.extend(other.refused);
        for item in other.unreadable {
            if !self.unreadable.contains(&item) {
                self.unreadable.push(item);
            }
        }
        self.deletions_skipped |= other.deletions_skipped;
    }

    /// The run's figures and what it could not read, or the one error
    /// that names every file the target refused.
    fn into_result(self) -> Result<Mirrored> {
        if !self.refused.is_empty() {
            let mut message = format!(
                "rsync could not transfer some files: {}",
                self.refused.join("; ")
            );
            if !self.unreadable.is_empty() {
                message.push_str(&format!(
                    "; and could not read from the source: {}",
                    self.unreadable.join("; ")
                ));
            }
            return Err(Error::new(Kind::Tool, message));
        }
        if self.deletions_skipped {
            log::warn(
                "rsync deleted nothing on the target, since a directory of the source could not \
                 be read; the next backup that reads it deletes what is gone",
            );
        }
        Ok(Mirrored {
            stats: self.stats,
            unreadable: self.unreadable,
        })
    }
}

/// One rsync run of `Rsync::mirror` (the phases: split.rs).
struct Pass {
    options: Vec<String>,
    delete: bool,
    /// `--files-from=-`: the list rsync reads on stdin.
    list: Option<File>,
    /// Its progress counts (it copies files, not only directories).
    watched: bool,
    /// `--backup` into the run's snapshot dir: off only where nothing is
    /// to be kept, or it is kept already (delta.rs).
    backup: bool,
}

impl Pass {
    /// The whole view in one run.
    fn whole() -> Pass {
        Pass {
            options: Vec::new(),
            delete: true,
            list: None,
            watched: true,
            backup: true,
        }
    }

    /// A worker: the entries of the directories of its list, deleting
    /// what is gone from them; `--force` lets a file replace a directory
    /// (whose contents go to the snapshot like any deleted entry). A listed
    /// directory that vanished since the list was made is no error: the
    /// next backup deletes it.
    fn contents(list: File) -> Pass {
        let mut options = split::contents_pass();
        options.extend(["--force", "--ignore-missing-args"].map(String::from));
        Pass {
            options,
            delete: true,
            list: Some(list),
            watched: true,
            backup: true,
        }
    }

    /// A worker of a change set (delta.rs): the files and symlinks its
    /// list names. With `backup`, rsync keeps what it replaces, and a
    /// listed path the view lacks is deleted; without, nothing needs
    /// keeping, and a path that vanished from the view since is left for
    /// the next run.
    fn changes(list: File, backup: bool) -> Pass {
        Pass {
            options: delta::changes_pass(backup),
            delete: false,
            list: Some(list),
            watched: true,
            backup,
        }
    }

    /// The directories of `list` alone: made owner-writable before the
    /// workers (`writable`), with their real modes and times after them.
    fn directories(writable: bool, list: File) -> Pass {
        Pass {
            options: split::directories_pass(writable),
            delete: false,
            list: Some(list),
            watched: false,
            backup: true,
        }
    }
}

struct Rsync<'a> {
    job: &'a Job,
    remote: &'a dyn target::Target,
    source: &'a Path,
    snapshot: &'a str,
    /// Several workers allowed (see `mirror`).
    split: bool,
    /// files/ had no run yet: over ssh, workers only then.
    first_backup: bool,
    /// Where the passes that copy files count their progress.
    phase: Option<&'a Phase>,
}

impl Rsync<'_> {
    /// Mirrors the view into files/: one rsync, or (over sshfs, or a first
    /// backup over ssh) a pass for the directories, workers on balanced
    /// lists of directories, and a pass for the directories' modes and
    /// times (see split.rs).
    fn mirror(
        &self,
        decryptor: &PathDecryptor,
        listed: Option<Result<target::RemoteTree>>,
    ) -> Result<Mirrored> {
        if let Some((changes, workers)) = self.change_plan(listed)? {
            return self.mirror_changes(changes, workers, decryptor);
        }
        let workers = match &self.job.target {
            Target::Sftp(s) if s.transport == Transport::Sshfs && self.split => {
                split::workers_for(crate::budget::of(s).sshfs)
            }
            // Over ssh, a first backup (every file to send) reads the view
            // with as many rsyncs as CPUs, within the session budget: the
            // view's FUSE requests cost less CPU per MB with several
            // readers. S at 0 ms: 1.35x restic with one rsync, 1.18x with
            // two on 2 CPUs. A later run keeps one: at 20 ms the split's
            // three phases cost S's 1 % change 0.45 s of round trips. So
            // does a job with target.bwlimit, which one rsync gets whole
            // (main.rs, backup_rsync_workers).
            Target::Sftp(s) if self.split && self.first_backup && self.job.bwlimit.is_none() => {
                crate::budget::of(s).sshfs.min(pool::cpu_threads())
            }
            _ => 1,
        };
        let plan = match workers > 1 {
            true => Some(split::plan(self.source, workers, &self.job.state_dir)?),
            false => None,
        };
        let mut done = Passed::default();
        let Some(plan) = plan.filter(|p| p.workers.len() > 1) else {
            done.add(self.mirror_pass(Pass::whole(), decryptor)?);
            return done.into_result();
        };
        done.add(self.mirror_pass(Pass::directories(true, plan.before), decryptor)?);
        let backup_dir = self.prepare_backup_dir()?;
        let results = split::in_workers(plan.workers, workers, |list| {
            self.remote
                .check_live()
                .map_err(|e| self.lost_connection(e, ""))?;
            self.mirror_pass(Pass::contents(list), decryptor)
        });
        // Empty means nothing was replaced or deleted: no snapshot dir.
        let _ = std::fs::remove_dir(&backup_dir);
        for result in results? {
            done.add(result);
        }
        done.add(self.mirror_pass(Pass::directories(false, plan.after), decryptor)?);
        done.into_result()
    }

    /// Over sshfs, where files/ can be listed over SFTP: the change set
    /// (delta.rs) and the workers to send it, so that rsync need not walk
    /// files/ through the mount. None where it cannot be had: another
    /// transport, plaintext names (they need not be UTF-8 and may look
    /// like rsync's temp names; config.rs allows them on local targets
    /// only), or a listing that failed (a debug line says why; the
    /// directory walk of `mirror` does the same work).
    fn change_plan(
        &self,
        listed: Option<Result<target::RemoteTree>>,
    ) -> Result<Option<(delta::Changes, usize)>> {
        let Some((s, ssh)) = change_set_target(self.job, self.remote) else {
            return Ok(None);
        };
        let workers = split::workers_for(crate::budget::of(s).sshfs);
        // What the server keeps may take a probe through the mount (an
        // SFTP-only account, on its first question): beside the listing,
        // unless files/ was listed while the guard walked the view.
        let (kept, listed) = pool::both(
            || self.remote.keeps(),
            || listed.unwrap_or_else(|| target::list_files_over_sftp(ssh)),
        );
        let keeps = delta::Keeps {
            symlinks: kept.symlinks,
            modes: kept.modes,
            protected_config: !self.job.config_in_source(),
        };
        let compared = listed.and_then(|listed| {
            delta::compare(
                self.source,
                &listed,
                keeps,
                workers.max(pool::cpu_threads()),
            )
        });
        match compared {
            Ok(changes) => {
                log::debug(|| {
                    format!(
                        "change set: {} paths to send or delete, {} directories to make, {} to fix",
                        changes.entries.len(),
                        changes.make_dirs.len(),
                        changes.fix_dirs.len()
                    )
                });
                Ok(Some((changes, workers)))
            }
            Err(e) if e.kind == Kind::Interrupted => Err(e),
            Err(e) => {
                log::debug(|| format!("no change set, rsync walks files/: {e}"));
                Ok(None)
            }
        }
    }

    /// Sends a change set: the directories to make; what is replaced or
    /// deleted kept in the snapshot over SFTP; the workers' lists side by
    /// side; then the directories' modes and times side by side (each
    /// directory is named alone, so the lists are independent).
    fn mirror_changes(
        &self,
        changes: delta::Changes,
        workers: usize,
        decryptor: &PathDecryptor,
    ) -> Result<Mirrored> {
        let mut done = Passed::default();
        if changes.is_empty() {
            return done.into_result();
        }
        let backup_dir = self.prepare_backup_dir()?;
        if let Some(list) = changes.make_dirs_list(&self.job.state_dir)? {
            done.add(self.mirror_pass(Pass::directories(true, list), decryptor)?);
        }
        let not_kept = self.keep_over_sftp(&changes, &mut done)?;
        let uploaded = self.upload_over_sftp(&changes, &not_kept, &mut done)?;
        let plan = changes.lists(&not_kept, &uploaded, workers, &self.job.state_dir)?;
        let lists = (plan.plain.into_iter().map(|l| (l, false)))
            .chain(plan.backed.into_iter().map(|l| (l, true)))
            .collect();
        let results = split::in_workers(lists, workers, |(list, backup)| {
            self.remote
                .check_live()
                .map_err(|e| self.lost_connection(e, ""))?;
            self.mirror_pass(Pass::changes(list, backup), decryptor)
        });
        // Empty means nothing was replaced or deleted: no snapshot dir.
        let _ = std::fs::remove_dir(&backup_dir);
        for result in results? {
            done.add(result);
        }
        let unfixed = self.fix_dirs_over_sftp(&changes)?;
        let lists = delta::fix_dirs_lists(&unfixed, workers, &self.job.state_dir)?;
        let fixed = split::in_workers(lists, workers, |list| {
            self.mirror_pass(Pass::directories(false, list), decryptor)
        });
        for result in fixed? {
            done.add(result);
        }
        done.into_result()
    }

    /// Gives the change set's directories the view's modes and times over
    /// SFTP (target::set_dir_attrs), all at once, where rsync's last pass
    /// through sshfs waits round trips for each; returns those left to
    /// that pass: the ones the server refused, an mtime SFTP cannot carry,
    /// or all of them where the SFTP pass failed (a debug line says why).
    fn fix_dirs_over_sftp(
        &self,
        changes: &delta::Changes,
    ) -> Result<std::collections::BTreeSet<String>> {
        let all = || changes.fix_dirs.clone();
        let Some(ssh) = self.remote.sftp_writes() else {
            return Ok(all());
        };
        if changes.fix_dirs.is_empty() {
            return Ok(all());
        }
        let mut left = std::collections::BTreeSet::new();
        let mut attrs = Vec::new();
        for dir in changes.dir_attrs(self.source) {
            match u32::try_from(dir.mtime) {
                Ok(mtime) => attrs.push((dir.path, dir.mode, mtime)),
                Err(_) => drop(left.insert(dir.path)),
            }
        }
        match target::set_dir_attrs(ssh, &attrs, self.remote.keeps().modes) {
            Ok(refused) => {
                log::debug(|| {
                    format!(
                        "directories given their modes and times over SFTP: {} of {}",
                        attrs.len() - refused.len(),
                        attrs.len()
                    )
                });
                left.extend(refused);
                Ok(left)
            }
            Err(e) if e.kind == Kind::Interrupted => Err(e),
            Err(e) => {
                log::debug(|| format!("no directory fixed over SFTP, rsync does it: {e}"));
                Ok(all())
            }
        }
    }

    /// Sends the change set's new files, and the replaced ones whose old
    /// versions are kept, over SFTP (target::upload_changes: many at once,
    /// where rsync through sshfs waits several round trips for each), as
    /// the first pass does; returns the paths the server now holds as the
    /// view does, which rsync need not look at. Not where the job bounds
    /// the rate (the pass has no bound); a failure of the pass is a debug
    /// line, and rsync sends everything.
    fn upload_over_sftp(
        &self,
        changes: &delta::Changes,
        not_kept: &NotKept,
        done: &mut Passed,
    ) -> Result<std::collections::HashSet<String>> {
        let files = changes.to_upload(not_kept);
        let ssh = self.remote.sftp_writes();
        let (Some(ssh), false, false) = (ssh, files.is_empty(), self.job.bwlimit.is_some()) else {
            return Ok(Default::default());
        };
        match target::upload_changes(ssh, self.source, &files, self.phase) {
            Ok((uploaded, sent)) => {
                log::debug(|| format!("sent over SFTP: {} of {} files", sent.len(), files.len()));
                done.stats.transferred += uploaded.files;
                done.stats.changed += uploaded.files;
                done.stats.bytes_transferred += uploaded.bytes;
                done.stats.touched |= !sent.is_empty();
                Ok(sent.into_iter().collect())
            }
            Err(e) if e.kind == Kind::Interrupted => Err(e),
            Err(e) => {
                log::debug(|| format!("nothing sent over SFTP, rsync sends it all: {e}"));
                // Its temp names must not reach the run's snapshot.
                self.remote.remove_rsync_leftovers()?;
                Ok(Default::default())
            }
        }
    }

    /// Keeps what the change set replaces or deletes in the run's snapshot
    /// over SFTP (target::keep_in_snapshot), counting the deletions as
    /// rsync would have; returns what rsync must keep itself.
    fn keep_over_sftp(&self, changes: &delta::Changes, done: &mut Passed) -> Result<NotKept> {
        let (moves, links) = changes.to_keep();
        if moves.is_empty() && links.is_empty() {
            return Ok(NotKept::default());
        }
        let everything = || NotKept {
            moves: moves.clone(),
            links: links.clone(),
        };
        let Some(ssh) = self.remote.sftp_writes() else {
            return Ok(everything());
        };
        let what = target::ToKeep {
            moves: &moves,
            links: &links,
        };
        let not_kept = match target::keep_in_snapshot(ssh, self.snapshot, &what) {
            Ok(not_kept) => not_kept,
            Err(e) if e.kind == Kind::Interrupted => return Err(e),
            Err(e) => {
                log::debug(|| format!("nothing kept over SFTP, rsync keeps it all: {e}"));
                return Ok(everything());
            }
        };
        log::debug(|| {
            format!(
                "kept over SFTP: {} of {} moved, {} of {} linked",
                moves.len() - not_kept.moves.len(),
                moves.len(),
                links.len() - not_kept.links.len(),
                links.len()
            )
        });
        let left: std::collections::HashSet<&str> =
            not_kept.moves.iter().map(String::as_str).collect();
        let deleted: u64 = changes
            .entries
            .iter()
            .filter(|c| c.action == delta::Action::Delete && !left.contains(c.path.as_str()))
            .map(|c| c.deletes)
            .sum();
        done.stats.deleted += deleted;
        done.stats.changed += deleted;
        done.stats.touched |=
            not_kept.moves.len() < moves.len() || not_kept.links.len() < links.len();
        Ok(not_kept)
    }

    /// The snapshot dir, made before the workers start: rsync does not
    /// expect another process to create the same backup dir at once.
    /// Through the pinned mount path, like rsync (see Mount::pinned).
    fn prepare_backup_dir(&self) -> Result<PathBuf> {
        let rel = format!("{SNAPSHOTS}/{}", self.snapshot);
        if let Err(failed) = self.remote.create_dir(&rel) {
            // A link cut here reaches the mkdir through sshfs as a bare EIO:
            // name the server that went away, as a cut during rsync does.
            return Err(match self.remote.check_live() {
                Err(dead) => self.lost_connection(dead, &failed.message),
                Ok(()) => failed,
            });
        }
        Ok(PathBuf::from(self.remote.rsync_dest(&rel).location))
    }

    /// One rsync run: the whole view, or the part `pass` says. Entries
    /// the target refused (rsync's exit 23 with the link and the disk
    /// fine) do not end the run: the other passes and workers go on, and
    /// `Passed::into_result` fails at the end naming every one.
    fn mirror_pass(&self, pass: Pass, decryptor: &PathDecryptor) -> Result<Passed> {
        let mut args = self.common_args();
        if !pass.backup {
            args.retain(|a| a != "--backup" && !a.starts_with("--backup-dir="));
        }
        args.extend(pass.options);
        if pass.delete {
            args.push("--delete".into());
        }
        args.extend([
            "--stats".into(),
            "--no-human-readable".into(),
            // One line per changed entry, parsed for the user-level counts.
            format!("--out-format={ITEMIZE_FORMAT}"),
        ]);
        let phase = self.phase.filter(|_| pass.watched);
        if phase.is_some() {
            args.push(progress::rsync::PROGRESS_ARG.into());
        }
        let mut out = match pass.list {
            Some(list) => self.run_listed(args, list, phase)?,
            None => self.run(args, phase)?,
        };
        let stats = stats_from(out.stdout_reader()?)?;
        match out.code() {
            Some(0) => Ok(Passed {
                stats,
                ..Passed::default()
            }),
            Some(rsync::VANISHED) => {
                // Every line names a file of the view: the source changed
                // while rsync read it.
                let named = name_files(&out.stderr, &self.roots(), decryptor);
                Ok(Passed::sorted(stats, named, &out.stderr, true))
            }
            Some(rsync::PARTIAL) => {
                if let Some(cause) = self.diagnose(&out.stderr) {
                    return Err(cause);
                }
                let named = name_files(&out.stderr, &self.roots(), decryptor);
                Ok(Passed::sorted(stats, named, &out.stderr, false))
            }
            _ => Err(self.failure(&out)),
        }
    }

    fn repair(&self, files_from: &Path) -> Result<Stats> {
        let mut args = self.common_args();
        args.extend([
            "--checksum".into(),
            "--from0".into(),
            format!("--files-from={}", files_from.display()),
            "--stats".into(),
            "--no-human-readable".into(),
            format!("--out-format={ITEMIZE_FORMAT}"),
        ]);
        let mut out = self.run(args, None)?;
        if !(out.success() || out.code() == Some(rsync::VANISHED)) {
            return Err(self.failure(&out));
        }
        stats_from(out.stdout_reader()?)
    }

    /// The two sides as rsync names them in its errors, each with a
    /// trailing `/`: the view, and files/ on the target.
    fn roots(&self) -> [String; 2] {
        [
            format!("{}/", self.source.display()),
            format!("{}/", self.remote.rsync_dest(FILES).location),
        ]
    }

    fn common_args(&self) -> Vec<String> {
        let dest = self.remote.rsync_dest(FILES);
        rsync_args(&RsyncPlan {
            snapshot: self.snapshot,
            over_sshfs: dest.over_sshfs,
            // A server that refuses symlinks gets none; the record keeps them.
            store_symlinks: self.remote.keeps().symlinks,
            store_modes: self.remote.keeps().modes,
            protect_config: !self.job.config_in_source(),
            ssh_shell: dest.ssh_shell,
        })
    }

    fn run(&self, mut args: Vec<String>, phase: Option<&Phase>) -> Result<crate::exec::Output> {
        args.push(format!("{}/", self.source.display()));
        args.push(format!("{}/", self.remote.rsync_dest(FILES).location));
        // One line per changed file: on disk, not in memory.
        let output = crate::exec::scratch_file(&self.job.state_dir, "rsync-out")?;
        let _session = self.remote.rsync_session();
        progress::rsync::run(Cmd::new("rsync").args(args).whole_group(), output, phase)
    }

    /// `run` with a list of files (`--files-from=-`) on rsync's stdin.
    fn run_listed(
        &self,
        mut args: Vec<String>,
        list: File,
        phase: Option<&Phase>,
    ) -> Result<crate::exec::Output> {
        args.push(format!("{}/", self.source.display()));
        args.push(format!("{}/", self.remote.rsync_dest(FILES).location));
        let output = crate::exec::scratch_file(&self.job.state_dir, "rsync-out")?;
        let _session = self.remote.rsync_session();
        let cmd = Cmd::new("rsync").args(args).stdin(list).whole_group();
        progress::rsync::run(cmd, output, phase)
    }

    fn failure(&self, out: &crate::exec::Output) -> Error {
        if (out.code() == Some(255) || out.stderr.contains("connection unexpectedly closed"))
            && let Some(e) = self.remote.connection_error(&out.stderr, "rsync")
        {
            return e;
        }
        self.diagnose(&out.stderr)
            .unwrap_or_else(|| out.failure(Some("mirroring files")))
    }

    /// The size of the source file named by rsync's `write failed on "…"`
    /// (a path under the target's files/), or 0.
    fn failed_write_size(&self, stderr: &str) -> u64 {
        let files = format!("{}/", self.remote.rsync_dest(FILES).location);
        let Some(rel) = failed_write(stderr, &files) else {
            return 0;
        };
        std::fs::metadata(self.source.join(rel))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// A mount that stopped answering during the transfer means a lost
    /// link when the target is reached over ssh.
    fn lost_connection(&self, dead: Error, detail: &str) -> Error {
        let Target::Sftp(s) = &self.job.target else {
            return dead;
        };
        let detail = if detail.is_empty() {
            dead.message.as_str()
        } else {
            detail
        };
        Error::new(
            Kind::Remote,
            format!(
                "lost the connection to {}:{} during the transfer: {detail}",
                s.host, s.port
            ),
        )
    }

    /// Over sshfs a lost link or a full disk reach rsync as a bare EIO or
    /// ENOTCONN; look at the mount and the target's free space to name the
    /// real cause.
    fn diagnose(&self, stderr: &str) -> Option<Error> {
        let first_error = stderr
            .lines()
            .find(|l| l.contains("rsync"))
            .unwrap_or("")
            .trim();
        if let Err(e) = self.remote.check_live() {
            return Some(self.lost_connection(e, first_error));
        }
        let full = rsync::disk_full(stderr)
            || self
                .remote
                .free_bytes()
                .is_some_and(|free| rsync::no_room_for(free, self.failed_write_size(stderr)));
        full.then(|| {
            Error::new(
                Kind::Remote,
                format!(
                    "the target {} is full; the files already there are unchanged: {first_error}",
                    self.job.target_label()
                ),
            )
        })
    }
}

/// A file or directory one of rsync's error or warning lines names.
#[derive(Debug, PartialEq, Eq)]
struct Named {
    /// Its path lies under the view (`roots[0]`): the source could not be
    /// read. Anything else (under files/ on the target, or a path rsync
    /// printed otherwise) counts as the target's refusal.
    source_side: bool,
    /// `plaintext path (rsync's reason)`.
    item: String,
}

/// The files rsync's error lines (`rsync: ... "PATH" ...: why`) and
/// warnings (`file has vanished: "PATH"`) name, decrypted to plaintext
/// paths where the view can tell, each once.
fn name_files(stderr: &str, roots: &[String], decryptor: &PathDecryptor) -> Vec<Named> {
    let mut named: Vec<Named> = Vec::new();
    for line in stderr.lines() {
        let vanished = line.contains("has vanished: ");
        if !line.starts_with("rsync:") && !vanished {
            continue;
        }
        let quoted = line.split('"').nth(1).unwrap_or("");
        let under = roots
            .iter()
            .position(|root| quoted.starts_with(root.as_str()));
        let rel = under.map_or(quoted, |i| &quoted[roots[i].len()..]);
        let rel = without_temp_suffix(&rsync::unescape_name(rel));
        let plain = decrypt_for_people(decryptor, &rel);
        let why = match vanished {
            true => "vanished",
            false => line.rsplit_once(": ").map(|(_, w)| w).unwrap_or(""),
        };
        let n = Named {
            source_side: under == Some(0),
            item: format!("{plain} ({why})"),
        };
        if !named.contains(&n) {
            named.push(n);
        }
    }
    named
}

/// The file (relative to files/, its real name) whose write rsync reports
/// as failed: `write failed on "…"`, or `close failed on "…"` where sshfs
/// hands the server's refusal back only when the file is closed.
fn failed_write(stderr: &str, files_root: &str) -> Option<String> {
    let dest = ["write failed on \"", "close failed on \""]
        .iter()
        .find_map(|marker| stderr.split(marker).nth(1))
        .and_then(|rest| rest.split('"').next())?;
    let rel = dest.strip_prefix(files_root).unwrap_or(dest);
    Some(without_temp_suffix(&rsync::unescape_name(rel)))
}

/// rsync writes `dir/.NAME.XXXXXX` before renaming it to `dir/NAME`: its
/// errors name the temp file; people want NAME.
pub(crate) fn without_temp_suffix(rel: &str) -> String {
    let (dir, name) = match rel.rsplit_once('/') {
        Some((dir, name)) => (Some(dir), name),
        None => (None, rel),
    };
    let inner = name
        .strip_prefix('.')
        .and_then(|n| n.rsplit_once('.'))
        .filter(|(n, suffix)| {
            !n.is_empty() && suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_alphanumeric())
        })
        .map(|(n, _)| n);
    match (dir, inner) {
        (Some(dir), Some(n)) => format!("{dir}/{n}"),
        (None, Some(n)) => n.to_string(),
        _ => rel.to_string(),
    }
}

/// A plaintext path where the view can decrypt it; gocryptfs' own files
/// (a directory's IV) by their directory; else the encrypted path.
fn decrypt_for_people(decryptor: &PathDecryptor, rel: &str) -> String {
    if let Some(plain) = decryptor.decrypt(rel) {
        return plain;
    }
    match rel.rsplit_once('/') {
        Some((dir, name)) if crate::crypt::is_gocryptfs_metadata(name) => {
            match decryptor.decrypt(dir) {
                Some(plain) => format!("{plain}/{name}"),
                None => rel.to_string(),
            }
        }
        _ => rel.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_names_the_file() {
        let root = "/proc/7/fd/8/files/";
        let closed = "rsync: [receiver] close failed on \"/proc/7/fd/8/files/Ab/.Cd.SAoGrn\": Input/output error (5)";
        assert_eq!(failed_write(closed, root).as_deref(), Some("Ab/Cd"));
        let written = "rsync: [receiver] write failed on \"/proc/7/fd/8/files/Ef\": No space left on device (28)";
        assert_eq!(failed_write(written, root).as_deref(), Some("Ef"));
        assert_eq!(
            failed_write("rsync: connection unexpectedly closed", root),
            None
        );
    }

    #[test]
    fn rsync_temp_names_become_the_real_ones() {
        assert_eq!(without_temp_suffix("Ab/.Cd.x1Y2z3"), "Ab/Cd");
        assert_eq!(
            without_temp_suffix(".gocryptfs.diriv.W3Ty0A"),
            "gocryptfs.diriv"
        );
        assert_eq!(without_temp_suffix("Ab/Cd"), "Ab/Cd");
        assert_eq!(without_temp_suffix("Ab/.hidden"), "Ab/.hidden");
        assert_eq!(without_temp_suffix("Ab/.x.toolong1"), "Ab/.x.toolong1");
    }

    /// rsync's words (3.2 to 3.5) for files it could not read from the
    /// view, and for entries the target refused.
    #[test]
    fn unreadable_source_files_are_told_from_target_refusals() {
        let roots = ["/run/c/cipher/".to_string(), "/mnt/t/files/".to_string()];
        let no_socket = PathDecryptor::new(Path::new("/nonexistent/ctl.sock"));
        let source = "rsync: [sender] opendir \"/run/c/cipher/Dd\" failed: Permission denied (13)\n\
            IO error encountered -- skipping file deletion\n\
            rsync: [sender] send_files failed to open \"/run/c/cipher/Dd/Ff\": Permission denied (13)\n\
            rsync error: some files/attrs were not transferred (see previous errors) (code 23) at main.c(1394) [sender=3.5.0]\n";
        let passed = Passed::sorted(
            Stats::default(),
            name_files(source, &roots, &no_socket),
            source,
            false,
        );
        assert!(passed.refused.is_empty(), "{:?}", passed.refused);
        assert_eq!(
            passed.unreadable,
            [
                "Dd (Permission denied (13))",
                "Dd/Ff (Permission denied (13))"
            ]
        );
        assert!(passed.deletions_skipped);
        let mirrored = passed.into_result().unwrap();
        assert_eq!(mirrored.unreadable.len(), 2);

        // The target's refusal fails the run, and the error still names
        // what could not be read.
        let both = format!(
            "{source}rsync: [receiver] mkstemp \"/mnt/t/files/Dd/.Gg.a1B2c3\" failed: Permission denied (13)\n"
        );
        let passed = Passed::sorted(
            Stats::default(),
            name_files(&both, &roots, &no_socket),
            &both,
            false,
        );
        assert_eq!(passed.refused, ["Dd/Gg (Permission denied (13))"]);
        let e = passed.into_result().err().expect("a refusal fails the run");
        assert!(
            e.message.contains("Dd/Gg") && e.message.contains("could not read from the source: Dd"),
            "{}",
            e.message
        );

        // An error that names no file of the view (a remote path over
        // rsync's own transport) is the target's: failed, not partial.
        let remote = "rsync: [receiver] mkstemp \"/backups/files/.Hh.x1y2z3\" failed: Disk quota exceeded (122)\n";
        let passed = Passed::sorted(
            Stats::default(),
            name_files(remote, &roots, &no_socket),
            remote,
            false,
        );
        assert!(passed.unreadable.is_empty() && passed.refused.len() == 1);

        // Exit 24: the source changed while rsync read it.
        let vanished = "file has vanished: \"/run/c/cipher/Vv\"\n\
            rsync warning: some files vanished before they could be transferred (code 24) at main.c(1389) [sender=3.5.0]\n";
        let passed = Passed::sorted(
            Stats::default(),
            name_files(vanished, &roots, &no_socket),
            vanished,
            true,
        );
        assert!(passed.refused.is_empty());
        assert_eq!(passed.unreadable, ["Vv (vanished)"]);
    }

    const LAST: &str = "20261129T030000Z";
    const STAMPS: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";

    /// An unchanged source and target, as a nightly run usually finds them.
    fn quiet() -> PlanInputs<'static> {
        PlanInputs {
            unchanged_since: Some(LAST),
            last_id: Some(LAST),
            last_stamps: Some(STAMPS),
            target_stamps: Some(STAMPS),
            killed: false,
            repair_pending: false,
            max_delete_percent: 50,
        }
    }

    fn full(plan: BackupPlan) -> FullRun {
        match plan {
            BackupPlan::Full(full) => full,
            other => panic!("expected a full run, got {other:?}"),
        }
    }

    #[test]
    fn an_unchanged_source_and_target_send_nothing() {
        assert_eq!(
            plan_backup(&quiet()),
            BackupPlan::NothingToSend {
                last_id: LAST.into(),
                stamps: STAMPS.into()
            }
        );
    }

    #[test]
    fn a_changed_target_or_pending_repair_runs_rsync_without_the_guard() {
        let touched = "0000000000000000000000000000000000000000";
        for inputs in [
            PlanInputs {
                target_stamps: Some(touched),
                ..quiet()
            },
            PlanInputs {
                repair_pending: true,
                ..quiet()
            },
            PlanInputs {
                last_stamps: None,
                ..quiet()
            },
        ] {
            let run = full(plan_backup(&inputs));
            assert!(!run.guard, "{inputs:?}");
            assert_eq!(run.same_as.as_deref(), Some(LAST));
            assert_eq!(run.workers, Workers::Several);
        }
        // The record was sent after all (no shell): one rsync checks.
        let run = full(plan_backup(&PlanInputs {
            target_stamps: None,
            ..quiet()
        }));
        assert_eq!((run.guard, run.workers), (false, Workers::One));
    }

    #[test]
    fn a_changed_source_is_guarded_unless_allowed_or_first() {
        let changed = PlanInputs {
            unchanged_since: None,
            target_stamps: None,
            ..quiet()
        };
        let run = full(plan_backup(&changed));
        assert!(run.guard && run.same_as.is_none());
        assert_eq!(run.workers, Workers::ByEstimate);
        // A fingerprint that matches an older run than the newest one.
        let stale = PlanInputs {
            unchanged_since: Some("20261128T030000Z"),
            ..changed
        };
        assert!(full(plan_backup(&stale)).guard);
        for inputs in [
            PlanInputs {
                max_delete_percent: 100,
                ..changed
            },
            PlanInputs {
                last_id: None,
                ..changed
            },
        ] {
            let run = full(plan_backup(&inputs));
            assert_eq!((run.guard, run.workers), (false, Workers::Several));
        }
    }

    #[test]
    fn a_killed_run_is_cleaned_up_after() {
        let killed = PlanInputs {
            // The marker also keeps the source from counting as unchanged.
            unchanged_since: None,
            killed: true,
            ..quiet()
        };
        assert!(full(plan_backup(&killed)).clean_leftovers);
        assert!(
            !full(plan_backup(&PlanInputs {
                killed: false,
                ..killed
            }))
            .clean_leftovers
        );
    }

    #[test]
    fn unchanged_since_needs_the_fingerprint_and_no_killed_run() {
        let source = SourceState {
            fingerprint: "ab".into(),
            newest_change_ns: 0,
            walked_at_ns: 0,
        };
        let last = LastBackup {
            snapshot: LAST.into(),
            source_fingerprint: Some("ab".into()),
            started_ns: 1,
            target_stamps: None,
            target_kept_all: None,
            gocryptfs_release: None,
        };
        let since = |last: &LastBackup, source: Option<&SourceState>, killed: bool| {
            last_backup_if_unchanged(Some(last), source, killed)
        };
        assert_eq!(since(&last, Some(&source), false).as_deref(), Some(LAST));
        assert_eq!(since(&last, Some(&source), true), None);
        assert_eq!(since(&last, None, false), None);
        let other = LastBackup {
            source_fingerprint: Some("cd".into()),
            ..last.clone()
        };
        assert_eq!(since(&other, Some(&source), false), None);
        let bad_id = LastBackup {
            snapshot: "latest".into(),
            ..last
        };
        assert_eq!(since(&bad_id, Some(&source), false), None);
    }

    #[test]
    fn workers_follow_the_estimate() {
        let moves = guard::Estimate {
            recorded: 10,
            moved: 1,
            ..Default::default()
        };
        let still = guard::Estimate::default();
        assert!(Workers::ByEstimate.split(Some(&moves)));
        assert!(!Workers::ByEstimate.split(Some(&still)));
        assert!(Workers::ByEstimate.split(None));
        assert!(Workers::Several.split(Some(&still)));
        assert!(!Workers::One.split(Some(&moves)));
    }
}
