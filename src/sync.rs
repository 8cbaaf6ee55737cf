//! The backup stage: mirror the encrypted view of the source into
//! `<remote>/files/` with rsync, moving every replaced or deleted file into
//! `<remote>/snapshots/<id>/`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
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
    // Read once: the job lock keeps it as it is until this run writes it.
    let last = LastBackup::read(&job.state_dir);
    let last = last.as_ref();
    // The server is asked (ssh master, preflight) while the view is mounted
    // (scrypt) and, when the target has a last run to compare with,
    // indexed for the deletion guard. A source with the fingerprint of the
    // last backup needs no guard, and the server need not send the record;
    // if the target, too, is as that backup left it, rsync need not run.
    let (unchanged_tx, unchanged_rx) = std::sync::mpsc::channel();
    let (last_id_tx, last_id_rx) = std::sync::mpsc::channel();
    let ((remote, known), local) = pool::side_by_side(
        || start_remote(ctx, unchanged_rx, last_id_tx),
        || {
            let points = (cipher_point.as_path(), ctlsock.as_path());
            start_local(
                ctx,
                points,
                last,
                max_delete_percent,
                unchanged_tx,
                last_id_rx,
            )
        },
    )?;
    let LocalStart {
        view,
        source,
        unchanged,
        index,
    } = local;
    if unchanged && target_unchanged(ctx, last, &known) {
        return record_unchanged_run(ctx, &remote, known, source, view, last);
    }
    if BACKUP_INCOMPLETE.is_set(&job.state_dir) {
        clean_after_killed_run(job, &remote)?;
    }
    ensure_remote_config(job, &remote, known.config)?;
    let estimate = match unchanged {
        true => {
            log::debug(|| {
                "the source has not changed since the last backup: no deletion guard needed".into()
            });
            None
        }
        false => guard_mass_changes(
            ctx,
            known.last_record,
            index,
            last.map(|l| l.started_ns),
            max_delete_percent,
        )?,
    };
    // Workers pay off when files move; for a run that only checks (the
    // common nightly case) one rsync starts faster. Files move when the
    // guard's estimate says so, or when an unchanged source meets a target
    // whose stamps changed (how much, nobody knows yet).
    let split = match estimate {
        Some(estimate) => !estimate.nothing_to_move(),
        None if unchanged => known.target_stamps.is_some(),
        None => true,
    };
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
    let decryptor = PathDecryptor::new(&ctlsock);
    let mut stats = rsync.mirror(&decryptor)?;
    stats.add(&repair);

    // Only a run that got this far claims a complete state: the snapshot dir
    // (if rsync made one) is made self-contained, then the record is
    // written, last.
    if stats.touched {
        snapshots::complete_snapshot_dir(job, &remote, &snapshot)?;
    }
    // Nothing changed on either side: files/ is what the last record lists.
    let same_as = match (
        unchanged && !stats.touched && stats.changed == 0,
        &known.last_id,
    ) {
        (true, Some(last)) => Some(snapshots::SameAs { last, stamps: None }),
        _ => None,
    };
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

/// Whether files/ is as the last backup left it: the stamps the server
/// just took are those it took after that backup's record, and no verify
/// since found damage (that needs rsync's repair by checksum).
fn target_unchanged(ctx: &Context, last: Option<&LastBackup>, known: &Known) -> bool {
    let last_stamps = last.and_then(|last| last.target_stamps.as_ref());
    last_stamps.is_some()
        && last_stamps == known.target_stamps.as_ref()
        && !RepairList::pending(&ctx.job.state_dir)
}

/// Source and target are as the last backup left them (fingerprint and
/// stamps): rsync would find nothing to send, replace or delete, so it does
/// not run. The view was still mounted: that proves the password and the
/// config still open the key. The run checks the config on the target,
/// writes its record (the last one's entries) and prunes, as any other.
fn record_unchanged_run(
    ctx: &Context,
    remote: &Remote,
    known: Known,
    source: Option<SourceState>,
    view: Mount,
    last: Option<&LastBackup>,
) -> Result<Done> {
    let job = ctx.job;
    log::info("the source and the target are as the last backup left them: nothing to send");
    ensure_remote_config(job, remote, known.config)?;
    let snapshot = next_snapshot_id(ctx, last)?;
    let nothing = Stats::default();
    // No rsync ran: files/ still has the stamps the preflight took.
    let same_as = known.last_id.as_deref().map(|last| snapshots::SameAs {
        last,
        stamps: known.target_stamps.as_deref(),
    });
    let (record, ()) = pool::side_by_side(
        || snapshots::write_record(job, remote, &snapshot, &nothing, same_as),
        || view.unmount(),
    )?;
    record_last_backup(ctx, &snapshot, source, record.target_stamps.as_deref())?;
    let pruned = snapshots::prune(job, remote, false)?;
    Ok(done(&snapshot, &record.header, &nothing, &nothing, pruned))
}

/// The remote side of the start: the ssh master, then the preflight, told
/// by the local side whether it will need the last record.
fn start_remote(
    ctx: &Context,
    unchanged_rx: Receiver<Option<String>>,
    last_id_tx: Sender<Option<String>>,
) -> Result<(Remote, Known)> {
    let job = ctx.job;
    let remote = remote::open(job, uses_sshfs(job), &ctx.runtime("remote"))?;
    // An error on the other side drops its sender: then None.
    let unchanged_since = unchanged_rx.recv().unwrap_or(None);
    let known = preflight(job, &remote, unchanged_since.as_deref())?;
    let _ = last_id_tx.send(known.last_id.clone());
    Ok((remote, known))
}

/// The local side of the start.
struct LocalStart {
    view: Mount,
    /// The source's fingerprint, taken before anything read the view.
    source: Option<SourceState>,
    /// The source is as the backup that wrote the newest record found it.
    unchanged: bool,
    /// The view's index for the deletion guard, when the guard is needed.
    index: Option<guard::ViewIndex>,
}

/// Mounts the view while the source is fingerprinted, telling the remote
/// side as soon as the fingerprint is known; then indexes the view when the
/// guard needs it: when the target has a last record and the source is not
/// as the backup that wrote it found it.
fn start_local(
    ctx: &Context,
    (cipher_point, ctlsock): (&Path, &Path),
    last: Option<&LastBackup>,
    max_delete_percent: u8,
    unchanged_tx: Sender<Option<String>>,
    last_id_rx: Receiver<Option<String>>,
) -> Result<LocalStart> {
    let job = ctx.job;
    let incomplete = BACKUP_INCOMPLETE.is_set(&job.state_dir);
    let (fingerprinted, view) = pool::join(
        || {
            let unchanged_tx = unchanged_tx; // moved in: dropped even on a panic
            let source = fingerprint::of_source(job);
            let since = last_backup_if_unchanged(last, source.as_ref(), incomplete);
            let _ = unchanged_tx.send(since.clone());
            (source, since)
        },
        || crypt::mount_reverse(job, cipher_point, Some(ctlsock)),
    );
    let (source, unchanged_since) = fingerprinted.unwrap_or((None, None));
    let view = view?;
    refuse_empty_view(job, view.point(), max_delete_percent)?;
    let last_id = last_id_rx.recv().unwrap_or(None);
    let unchanged = unchanged_since.is_some() && unchanged_since == last_id;
    let index = match max_delete_percent < 100 && last_id.is_some() && !unchanged {
        true => Some(guard::index_view(view.point())?),
        false => None,
    };
    Ok(LocalStart {
        view,
        source,
        unchanged,
        index,
    })
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
    index: Option<guard::ViewIndex>,
    started_ns: Option<i128>,
    percent: u8,
) -> Result<Option<guard::Estimate>> {
    let (Some(last), Some(index)) = (last, index) else {
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
    let config = remote.read_file(&format!("{FILES}/{REMOTE_CONFIG_NAME}"))?;
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
            let mut rest = String::new();
            out.read_to_string(&mut rest)
                .ctx(|| "reading the server's answer")?;
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
    std::fs::write(&files_from, present.join("\0"))
        .ctx(|| format!("writing {}", files_from.display()))?;
    log::info(format!(
        "re-sending {} file(s) that the last verify found damaged",
        present.len()
    ));
    rsync.repair(&files_from)
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
    /// Mirrors the view into files/: one rsync, or over sshfs one for the
    /// top level and then several workers (see split.rs).
    fn mirror(&self, decryptor: &PathDecryptor) -> Result<Stats> {
        let workers = match &self.job.target {
            Target::Sftp(s) if s.transport == Transport::Sshfs && self.split => s.connections,
            _ => 1,
        };
        let dirs = match workers > 1 {
            true => split::top_level_dirs(self.source)?,
            false => Vec::new(),
        };
        if dirs.len() < 2 {
            return self.mirror_pass(Vec::new(), decryptor);
        }
        let mut stats = self.mirror_pass(split::top_level_pass(), decryptor)?;
        let backup_dir = self.prepare_backup_dir()?;
        let results = split::in_workers(dirs, workers, |batch| {
            self.remote
                .check_live()
                .map_err(|e| self.lost_connection(e, ""))?;
            self.mirror_pass(split::directories_pass(batch), decryptor)
        });
        // Empty means nothing was replaced or deleted: no snapshot dir.
        let _ = std::fs::remove_dir(&backup_dir);
        for result in results? {
            stats.add(&result);
        }
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

    /// One rsync run with --delete, limited by `filters`.
    fn mirror_pass(&self, filters: Vec<String>, decryptor: &PathDecryptor) -> Result<Stats> {
        let mut args = self.common_args();
        args.extend(filters);
        args.extend([
            "--delete".into(),
            "--stats".into(),
            "--no-human-readable".into(),
            // One line per changed entry, parsed for the user-level counts.
            format!("--out-format={ITEMIZE_FORMAT}"),
        ]);
        let mut out = self.run(args)?;
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
}
