//! The backup stage: mirror the encrypted view of the source into
//! `<remote>/files/` with rsync, moving every replaced or deleted file into
//! `<remote>/snapshots/<id>/`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{Filenames, Job, Target, Transport};
use crate::crypt::{self, PathDecryptor, REMOTE_CONFIG_NAME};
use crate::error::{Error, IoContext, Kind, Result};
use crate::exec::Cmd;
use crate::fingerprint::{self, SourceState};
use crate::mount::Mount;
use crate::remote::{self, CHECKSUMS, FILES, RECORDS, Remote, SNAPSHOTS};
use crate::rsync::{self, ITEMIZE_FORMAT, RsyncPlan, Stats, rsync_args, stats_from};
use crate::run::{Context, Done};
use crate::state::{BACKUP_INCOMPLETE, LastBackup, RepairList};
use crate::stats::{BackupStats, StageStats};
use crate::status::{self, Outcome};
use crate::{guard, interrupt, log, pool, snapshots, split};

/// Options of one backup run that the command line may override.
pub struct BackupOptions {
    pub max_delete_percent: Option<u8>,
}

pub fn backup(ctx: &Context, options: &BackupOptions) -> Result<Done> {
    let job = ctx.job;
    crypt::check_ready(job)?;
    let cipher_point = ctx.runtime("cipher");
    crate::mount::prepare_point(&cipher_point)?;
    let ctlsock = ctx.runtime("ctl.sock");
    let max_delete_percent = options.max_delete_percent.unwrap_or(job.max_delete_percent);
    // Read once: the job lock keeps the state dir as it is until this run
    // writes it.
    let last = LastBackup::read(&job.state_dir);
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
        BackupPlan::Full(full) => full_run(ctx, start, full, last.as_ref(), max_delete_percent),
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
) -> Result<Done> {
    let job = ctx.job;
    let Start {
        remote,
        known,
        view,
        source,
        ..
    } = start;
    let index = match full.guard {
        true => Some(guard::index_view(view.point())?),
        false => None,
    };
    if full.clean_leftovers {
        clean_after_killed_run(job, &remote)?;
    }
    ensure_remote_config(job, &remote, known.config)?;
    let estimate = match index {
        Some(index) => guard_mass_changes(
            ctx,
            known.last_record,
            index,
            last.map(|l| l.started_ns),
            max_delete_percent,
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
    let snapshot = next_snapshot_id(ctx, last)?;
    BACKUP_INCOMPLETE.set(&job.state_dir, &snapshot)?;

    let rsync = Rsync {
        job,
        remote: &remote,
        source: view.point(),
        snapshot: &snapshot,
        split,
    };
    let repair = repair_damaged(ctx, &rsync)?;

    // The last moment before we trust both mounts with --delete.
    view.check_live()?;
    remote.check_live()?;
    let decryptor = PathDecryptor::new(&ctx.runtime("ctl.sock"));
    let mut stats = rsync.mirror(&decryptor)?;
    stats.add(&repair);

    // Only a run that got this far claims a complete state: the snapshot dir
    // (if rsync made one) is made self-contained, then the record is
    // written, last.
    if stats.touched {
        snapshots::complete_snapshot_dir(job, &remote, &snapshot)?;
    }
    // Nothing changed on either side: files/ is what the last record lists.
    let same_as = full
        .same_as
        .as_deref()
        .filter(|_| !stats.touched && stats.changed == 0)
        .map(|last| snapshots::SameAs { last, stamps: None });
    // The view is not needed any more: unmount it while the server writes.
    let (record, ()) = pool::side_by_side(
        || snapshots::write_record(job, &remote, &snapshot, &stats, same_as),
        || view.unmount(),
    )?;
    record_last_backup(ctx, &snapshot, source, record.target_stamps.as_deref())?;
    RepairList::clear(&job.state_dir);
    BACKUP_INCOMPLETE.clear(&job.state_dir)?;
    let pruned = snapshots::prune(job, &remote, false)?;
    Ok(done(&snapshot, &record.header, &stats, &repair, pruned))
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
        source,
        ..
    } = start;
    log::info("the source and the target are as the last backup left them: nothing to send");
    ensure_remote_config(job, &remote, known.config)?;
    let snapshot = next_snapshot_id(ctx, last)?;
    let nothing = Stats::default();
    // No rsync ran: files/ still has the stamps the preflight took.
    let same_as = snapshots::SameAs {
        last: last_id,
        stamps: Some(stamps),
    };
    let (record, ()) = pool::side_by_side(
        || snapshots::write_record(job, &remote, &snapshot, &nothing, Some(same_as)),
        || view.unmount(),
    )?;
    record_last_backup(ctx, &snapshot, source, record.target_stamps.as_deref())?;
    let pruned = snapshots::prune(job, &remote, false)?;
    Ok(done(&snapshot, &record.header, &nothing, &nothing, pruned))
}

/// What the start of a run set up and learned.
struct Start {
    remote: Remote,
    /// What the preflight found on the target.
    known: Known,
    view: Mount,
    /// The source's fingerprint, taken before anything read the view.
    source: Option<SourceState>,
    /// What the preflight was told (see `last_backup_if_unchanged`).
    unchanged_since: Option<String>,
}

/// The server is asked (ssh master, preflight) while the view is mounted
/// (scrypt) on a second thread. The source is fingerprinted while the ssh
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
    let (view, remote) = pool::join(
        || {
            let view = crypt::mount_reverse(job, cipher_point, Some(ctlsock))?;
            refuse_empty_view(job, view.point(), max_delete_percent)?;
            Ok(view)
        },
        || {
            let (remote, source) = pool::join(
                || remote::open(job, uses_sshfs(job), &ctx.runtime("remote")),
                || fingerprint::of_source(job),
            );
            let unchanged_since = last_backup_if_unchanged(last, source.as_ref(), killed);
            let remote = remote.unwrap_or_else(|_| Err(panicked("the connection")))?;
            let known = preflight(job, &remote, unchanged_since.as_deref())?;
            Ok((remote, known, source, unchanged_since))
        },
    );
    let view: Result<Mount> = view.unwrap_or_else(|_| Err(panicked("the view's mount")));
    let ((remote, known, source, unchanged_since), view) = match (remote, view) {
        (_, Err(local)) => return Err(local),
        (Err(remote), Ok(_)) => return Err(remote),
        (Ok(remote), Ok(view)) => (remote, view),
    };
    Ok(Start {
        remote,
        known,
        view,
        source,
        unchanged_since,
    })
}

fn panicked(what: &str) -> Error {
    Error::new(Kind::Io, format!("{what} panicked"))
}

fn uses_sshfs(job: &Job) -> bool {
    matches!(&job.target, Target::Sftp(s) if s.transport == Transport::Sshfs)
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

/// After a killed run: rsync's temp files (`.name.XXXXXX`) may sit in files/
/// and would otherwise be "deleted" into the next snapshot as if they were
/// old versions. Encrypted names never start with a dot; plaintext ones may,
/// so then we leave them to rsync.
fn clean_after_killed_run(job: &Job, remote: &Remote) -> Result<()> {
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
fn ensure_remote_config(job: &Job, remote: &Remote, theirs: Option<Vec<u8>>) -> Result<()> {
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
            remote.write_file_atomic(&rel, &ours)
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

/// Creates the layout and reads the config in files/ and the newest record:
/// one round trip where the server's shell may be used, else one operation
/// at a time through the mount or on the local target.
/// The newest record is not sent when it is `unchanged_since` (the guard
/// will not need it).
fn preflight(job: &Job, remote: &Remote, unchanged_since: Option<&str>) -> Result<Known> {
    let output = crate::exec::scratch_file(&job.state_dir, "preflight")?;
    let script = preflight_script(unchanged_since.unwrap_or(""));
    if let Some(out) = remote.run_script(&script, "preparing the target", output)? {
        return parse_preflight(out);
    }
    remote.ensure_layout()?;
    let config = remote.read_file(
        &format!("{FILES}/{REMOTE_CONFIG_NAME}"),
        crate::limits::MAX_SMALL_FILE,
    )?;
    let root = remote
        .local_root()
        .expect("without a shell the target is a path");
    let last_id = snapshots::recorded_ids(remote)?.pop();
    let last_record = last_id
        .as_ref()
        .filter(|id| Some(id.as_str()) != unchanged_since)
        .map(|id| snapshots::open_record(root, id));
    Ok(Known {
        config,
        last_id,
        target_stamps: None,
        last_record,
    })
}

/// `known` is a snapshot id (checked by the caller) or empty.
fn preflight_script(known: &str) -> String {
    format!(
        "set -e\nexport LC_ALL=C\nmkdir -p {FILES} {SNAPSHOTS} {CHECKSUMS} {RECORDS}\n\
         if [ -f {FILES}/{REMOTE_CONFIG_NAME} ]; then printf C; cat {FILES}/{REMOTE_CONFIG_NAME}; fi\n\
         printf '\\0'\n\
         last=$(ls -1A {RECORDS} | grep -E '^[0-9]{{8}}T[0-9]{{6}}Z[.]rec$' | sort | tail -n 1 || true)\n\
         if [ -n \"$last\" ]; then printf '%s\\0' \"${{last%.rec}}\"; fi\n\
         if [ -z \"$last\" ]; then :; elif [ \"$last\" = '{known}.rec' ]; then\n\
         {stamps}\
         printf '=%s' \"$stamps\"\n\
         else cat \"{RECORDS}/$last\"; fi\n",
        stamps = snapshots::stamps_snippet(FILES, &format!("{RECORDS}/.preflight.stamps"))
    )
}

/// `[C<config>] NUL [<id> NUL (<record> | =<stamps of files/>)]`, as the
/// preflight script prints it. The record is left in the file, to be
/// streamed.
fn parse_preflight(out: File) -> Result<Known> {
    let corrupt = || {
        Error::new(
            Kind::Corrupt,
            "unexpected output from the server while preparing the target",
        )
    };
    let mut out = BufReader::new(out);
    let read_field = |out: &mut BufReader<File>| -> Result<Option<Vec<u8>>> {
        let mut field = Vec::new();
        out.read_until(0, &mut field)
            .ctx(|| "reading the server's answer")?;
        Ok(field.pop().filter(|end| *end == 0).map(|_| field))
    };
    let config = match read_field(&mut out)?.ok_or_else(corrupt)?.as_slice() {
        [] => None,
        [b'C', conf @ ..] => Some(conf.to_vec()),
        _ => return Err(corrupt()),
    };
    let mut target_stamps = None;
    let (last_id, last_record) = match read_field(&mut out)? {
        None if at_end(&mut out) => (None, None),
        None => return Err(corrupt()),
        // `=`: not sent, the run said it would not need it.
        Some(id) if out.fill_buf().is_ok_and(|b| b.first() == Some(&b'=')) => {
            let rest = crate::limits::read_text(&mut out, 64, "the server's stamps")?;
            target_stamps = Some(&rest[1..])
                .filter(|s| snapshots::is_hex_sha1(s))
                .map(String::from);
            (Some(String::from_utf8_lossy(&id).into_owned()), None)
        }
        Some(id) => {
            let id = String::from_utf8_lossy(&id).into_owned();
            let record =
                snapshots::RecordReader::new(out).map_err(|e| snapshots::name_record(e, &id));
            (Some(id), Some(record))
        }
    };
    Ok(Known {
        config,
        last_id,
        target_stamps,
        last_record,
    })
}

fn at_end(out: &mut BufReader<File>) -> bool {
    out.fill_buf().map(|b| b.is_empty()).unwrap_or(false)
}

fn record_last_backup(
    ctx: &Context,
    snapshot: &str,
    source: Option<SourceState>,
    target_stamps: Option<&str>,
) -> Result<()> {
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
        started_ns: i128::try_from(started_ns).unwrap_or(i128::MAX),
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

/// One rsync run of `Rsync::mirror` (the phases: split.rs).
struct Pass {
    options: Vec<String>,
    delete: bool,
    /// `--files-from=-`: the list rsync reads on stdin.
    list: Option<File>,
}

impl Pass {
    /// The whole view in one run.
    fn whole() -> Pass {
        Pass {
            options: Vec::new(),
            delete: true,
            list: None,
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
        }
    }

    /// The directories of `list` alone: made owner-writable before the
    /// workers (`writable`), with their real modes and times after them.
    fn directories(writable: bool, list: File) -> Pass {
        Pass {
            options: split::directories_pass(writable),
            delete: false,
            list: Some(list),
        }
    }
}

struct Rsync<'a> {
    job: &'a Job,
    remote: &'a Remote,
    source: &'a Path,
    snapshot: &'a str,
    /// Several workers over sshfs allowed (see `mirror`).
    split: bool,
}

impl Rsync<'_> {
    /// Mirrors the view into files/: one rsync, or over sshfs a pass for
    /// the directories, workers on balanced lists of directories, and a
    /// pass for the directories' modes and times (see split.rs).
    fn mirror(&self, decryptor: &PathDecryptor) -> Result<Stats> {
        let workers = match &self.job.target {
            Target::Sftp(s) if s.transport == Transport::Sshfs && self.split => s.connections,
            _ => 1,
        };
        let plan = match workers > 1 {
            true => Some(split::plan(self.source, workers, &self.job.state_dir)?),
            false => None,
        };
        let Some(plan) = plan.filter(|p| p.workers.len() > 1) else {
            return self.mirror_pass(Pass::whole(), decryptor);
        };
        let mut stats = self.mirror_pass(Pass::directories(true, plan.before), decryptor)?;
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
            stats.add(&result);
        }
        stats.add(&self.mirror_pass(Pass::directories(false, plan.after), decryptor)?);
        Ok(stats)
    }

    /// The snapshot dir, made before the workers start: rsync does not
    /// expect another process to create the same backup dir at once.
    /// Through the pinned mount path, like rsync (see Mount::pinned).
    fn prepare_backup_dir(&self) -> Result<PathBuf> {
        let dir = PathBuf::from(self.remote.rsync_path(SNAPSHOTS)).join(self.snapshot);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                Err(Error::io(format!("creating {}", dir.display()), e))
            }
            _ => Ok(dir),
        }
    }

    /// One rsync run: the whole view, or the part `pass` says.
    fn mirror_pass(&self, pass: Pass, decryptor: &PathDecryptor) -> Result<Stats> {
        let mut args = self.common_args();
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
        let mut out = match pass.list {
            Some(list) => self.run_listed(args, list)?,
            None => self.run(args)?,
        };
        let stats = stats_from(out.stdout_reader()?)?;
        match out.code() {
            Some(0) => {}
            Some(rsync::VANISHED) => log::warn(format!(
                "some source files vanished while rsync read them; the next backup picks up the change: {}",
                out.stderr.trim()
            )),
            Some(rsync::PARTIAL) => {
                if let Some(cause) = self.diagnose(&out.stderr) {
                    return Err(cause);
                }
                return Err(Error::new(
                    Kind::Tool,
                    format!(
                        "rsync could not transfer some files: {}",
                        name_files(&out.stderr, self.source, decryptor)
                    ),
                ));
            }
            _ => return Err(self.failure(&out)),
        }
        Ok(stats)
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
        let mut out = self.run(args)?;
        if !(out.success() || out.code() == Some(rsync::VANISHED)) {
            return Err(self.failure(&out));
        }
        stats_from(out.stdout_reader()?)
    }

    fn common_args(&self) -> Vec<String> {
        rsync_args(&RsyncPlan {
            snapshot: self.snapshot,
            over_sshfs: uses_sshfs(self.job),
            protect_config: !self.job.config_in_source(),
            ssh_shell: match self.remote {
                Remote::Shell { ssh } => Some(ssh.rsync_shell()),
                Remote::Path { .. } => None,
            },
        })
    }

    fn run(&self, mut args: Vec<String>) -> Result<crate::exec::Output> {
        args.push(format!("{}/", self.source.display()));
        args.push(format!("{}/", self.remote.rsync_path(FILES)));
        // One line per changed file: on disk, not in memory.
        let output = crate::exec::scratch_file(&self.job.state_dir, "rsync-out")?;
        Cmd::new("rsync")
            .args(args)
            .stdout_to(output)
            .whole_group()
            .run()
    }

    /// `run` with a list of files (`--files-from=-`) on rsync's stdin.
    fn run_listed(&self, mut args: Vec<String>, list: File) -> Result<crate::exec::Output> {
        args.push(format!("{}/", self.source.display()));
        args.push(format!("{}/", self.remote.rsync_path(FILES)));
        let output = crate::exec::scratch_file(&self.job.state_dir, "rsync-out")?;
        Cmd::new("rsync")
            .args(args)
            .stdin(list)
            .stdout_to(output)
            .whole_group()
            .run()
    }

    fn failure(&self, out: &crate::exec::Output) -> Error {
        if (out.code() == Some(255) || out.stderr.contains("connection unexpectedly closed"))
            && let Some(ssh) = self.remote.ssh()
        {
            return ssh.connection_error(&out.stderr, "rsync");
        }
        self.diagnose(&out.stderr)
            .unwrap_or_else(|| out.failure(Some("mirroring files")))
    }

    /// The size of the source file named by rsync's `write failed on "…"`
    /// (a path under the target's files/), or 0.
    fn failed_write_size(&self, stderr: &str) -> u64 {
        let Some(dest) = stderr
            .split("write failed on \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        else {
            return 0;
        };
        let files = format!("{}/", self.remote.rsync_path(FILES));
        let rel = dest.strip_prefix(&files).unwrap_or(dest);
        std::fs::metadata(self.source.join(rel))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// A mount that stopped answering during the transfer means a lost
    /// link when the target is reached over ssh.
    fn lost_connection(&self, dead: Error, detail: &str) -> Error {
        let Some(ssh) = self.remote.ssh() else {
            return dead;
        };
        let s = ssh.sftp();
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
                .local_root()
                .is_some_and(|root| rsync::no_room_for(root, self.failed_write_size(stderr)));
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

/// Turns rsync's error lines into a message that names the files, decrypted
/// to plaintext paths where the view can tell.
fn name_files(stderr: &str, source: &Path, decryptor: &PathDecryptor) -> String {
    let prefix = format!("{}/", source.display());
    let mut named = Vec::new();
    for line in stderr.lines().filter(|l| l.starts_with("rsync:")) {
        let quoted = line.split('"').nth(1).unwrap_or("");
        let rel = quoted.strip_prefix(&prefix).unwrap_or(quoted);
        let plain = decryptor.decrypt(rel).unwrap_or_else(|| rel.to_string());
        let why = line.rsplit_once(": ").map(|(_, w)| w).unwrap_or("");
        named.push(format!("{plain} ({why})"));
    }
    if named.is_empty() {
        stderr.trim().to_string()
    } else {
        named.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The preflight script as a server's sh runs it, on an empty target and
    /// on one with a config and two records.
    #[test]
    fn preflight_script_on_a_real_shell() {
        let root =
            std::env::temp_dir().join(format!("ciphersync-preflight-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let run_knowing = |known: &str| {
            let script = crate::exec::Cmd::new("sh")
                .arg("-c")
                .arg(preflight_script(known))
                .cwd(&root);
            let out = script.run().unwrap();
            assert!(out.success(), "{}", out.stderr);
            parse_preflight(out.into_stdout().unwrap()).unwrap()
        };
        let run = || run_knowing("");
        let empty = run();
        assert!(empty.config.is_none() && empty.last_record.is_none());
        for dir in [FILES, SNAPSHOTS, CHECKSUMS, RECORDS] {
            assert!(root.join(dir).is_dir(), "{dir} not created");
        }
        std::fs::write(root.join("files/gocryptfs.conf"), "{\"conf\": 1}").unwrap();
        let record = "ciphersync-record 1\nsnapshot 20261129T030000Z\n\nf 644 3 Ab\n";
        std::fs::write(root.join("records/20261128T030000Z.rec"), "older").unwrap();
        std::fs::write(root.join("records/20261129T030000Z.rec"), record).unwrap();
        std::fs::write(root.join("records/.20261130T030000Z.rec.partial"), "half").unwrap();
        let known = run();
        assert_eq!(known.config.as_deref(), Some(&b"{\"conf\": 1}"[..]));
        assert_eq!(known.last_id.as_deref(), Some("20261129T030000Z"));
        let mut last = known.last_record.unwrap().unwrap();
        assert_eq!(last.header.snapshot, "20261129T030000Z");
        assert_eq!(last.by_ref().count(), 1);
        // A run that knows the last record does not get it again...
        let knowing = run_knowing("20261129T030000Z");
        assert_eq!(knowing.last_id.as_deref(), Some("20261129T030000Z"));
        assert!(knowing.last_record.is_none() && knowing.config.is_some());
        // It gets the stamps of files/ instead, which move with any change.
        let stamps = knowing.target_stamps.expect("stamps");
        assert_eq!(
            run_knowing("20261129T030000Z").target_stamps,
            Some(stamps.clone())
        );
        let conf = root.join("files/gocryptfs.conf");
        let file = std::fs::File::options().write(true).open(&conf).unwrap();
        file.set_modified(std::time::UNIX_EPOCH).unwrap();
        let touched = run_knowing("20261129T030000Z")
            .target_stamps
            .expect("stamps");
        assert_ne!(touched, stamps);
        // ...but does when the newest record is another one.
        let stale = run_knowing("20261128T030000Z");
        assert_eq!(
            stale.last_record.unwrap().unwrap().header.snapshot,
            "20261129T030000Z"
        );
        std::fs::remove_dir_all(&root).unwrap();
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
            added: 0,
        };
        let still = guard::Estimate::default();
        assert!(Workers::ByEstimate.split(Some(&moves)));
        assert!(!Workers::ByEstimate.split(Some(&still)));
        assert!(Workers::ByEstimate.split(None));
        assert!(Workers::Several.split(Some(&still)));
        assert!(!Workers::One.split(Some(&moves)));
    }
}
