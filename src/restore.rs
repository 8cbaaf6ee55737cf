//! Restore: read the remote `files/` (through sshfs, or the local target
//! as it is), or rebuild a run in a local stage (pulled with rsync over ssh
//! where the account runs `rsync --server`: target/pull.rs), decrypt it
//! with a read-only forward gocryptfs mount, and copy all or some plaintext
//! paths out with rsync into an empty directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::config::{Job, Target};
use crate::error::{Error, IoContext, Kind, Result};
use crate::exec::Cmd;
use crate::gocrypt::{Format, Keys};
use crate::progress::{self, Phase, Progress, Totals};
use crate::rsync::{self, Stats};
use crate::run::{Context, Done};
use crate::split;
use crate::stats::{ReadVia, RestoreStats, StageStats};
use crate::status::Outcome;
use crate::target::{self, FILES, PathTarget, Puller, SNAPSHOTS, Target as _, TreeEntry};
use crate::{crypt, fsutil, keys, log};
use crate::{interrupt, snapshots};

mod decrypt;
mod streamed;

pub struct RestoreRequest {
    pub to: PathBuf,
    pub paths: Vec<String>,
    /// Rebuild the tree as it was after this run instead of the latest.
    pub snapshot: Option<String>,
    /// Keep setuid/setgid bits (`--keep-setuid`); dropped by default.
    pub keep_setuid: bool,
    /// Apply the stored owners (`--owners`, root only).
    pub owners: bool,
    /// Skip the metadata manifest (`--no-owners`): files belong to the
    /// user running the restore, without ACLs or xattrs.
    pub no_owners: bool,
}

/// Checks the request before anything is mounted: `--to` must be empty (or
/// missing) and outside the source, the paths relative and inside the tree.
pub fn check_request(job: &Job, request: &RestoreRequest) -> Result<()> {
    let to = absolute(&request.to)?;
    let resolved = resolve_existing_prefix(&to);
    let source = job
        .source
        .canonicalize()
        .unwrap_or_else(|_| job.source.clone());
    if resolved.starts_with(&source) {
        return Err(Error::usage(format!(
            "--to {} lies inside the source {}: restore never writes into the source",
            request.to.display(),
            job.source.display()
        )));
    }
    if let Ok(mut entries) = std::fs::read_dir(&to)
        && entries.next().is_some()
    {
        return Err(Error::usage(format!(
            "--to {} is not empty: restore only writes into an empty directory",
            to.display()
        )));
    }
    for path in &request.paths {
        check_relative(path)?;
    }
    if request.owners && request.no_owners {
        return Err(Error::usage(
            "--owners and --no-owners contradict each other",
        ));
    }
    if request.owners && !nix::unistd::geteuid().is_root() {
        return Err(Error::usage(
            "--owners needs root: only root can give files to other users",
        ));
    }
    if let Some(id) = &request.snapshot
        && crate::status::parse_snapshot_id(id).is_none()
    {
        return Err(Error::usage(format!(
            "--snapshot {id:?} is not a snapshot id (YYYYMMDDTHHMMSSZ)"
        )));
    }
    Ok(())
}

pub fn restore(ctx: &Context, request: &RestoreRequest, progress: &Progress) -> Result<Done> {
    let job = ctx.job;
    check_request(job, request)?;
    let to = absolute(&request.to)?;
    // An existing --to must be ours alone: a directory another user may
    // write to could be swapped for a link while we copy into it.
    fsutil::ensure_private_dir(&to, "--to")?;

    // A whole restore of the newest run needs its record first: over SFTP
    // it is read while sshfs mounts the account.
    let whole = request.paths.is_empty() && request.snapshot.is_none();
    let point = ctx.runtime("remote");
    let (remote, newest) = match whole {
        true => {
            let scratch = crate::exec::scratch_file(&job.state_dir, "record")?;
            target::open_path_with_newest(job, &point, scratch)?
        }
        false => (target::open_path(job, &point)?, None),
    };
    // Some paths of the latest run are read from files/ unless its record
    // says otherwise: files/ is mounted decrypted (scrypt) while the
    // target is asked what restore needs to know.
    let early = !request.paths.is_empty() && request.snapshot.is_none();
    // A whole tree is decrypted here (restore/decrypt.rs, streamed.rs)
    // where the job's config is one gocrypt.rs reads. From an account the
    // key is unwrapped (scrypt) while the account is asked, not after; a
    // local disk's latest run is read through a mount and needs none.
    // A restore of some paths decrypts only the owners manifest here (no
    // mount, no second scrypt after the files), so it wants the key too.
    let all_paths = request.paths.is_empty();
    let format = decrypt::format_of(job);
    let sftp = matches!(job.target, Target::Sftp(_));
    let unwrap_now = format.filter(|_| sftp && (all_paths || owners_wanted(request)));
    let ((mounted, keys), survey) = crate::pool::both(
        || {
            crate::pool::both(
                || match early {
                    true => mount_plain(ctx, &remote.root().join(FILES), FILES_POINT).map(Some),
                    false => Ok(None),
                },
                || {
                    unwrap_now
                        .map(|format| native_keys(job, format))
                        .transpose()
                },
            )
        },
        || survey(ctx, &remote, newest),
    );
    // The survey's error first: it says why a mount of files/ failed.
    let Survey {
        latest,
        newest_read,
        puller,
    } = survey?;
    let mounted = mounted?;
    let keys = keys?;
    let here = match (&keys, all_paths) {
        (_, false) => None,
        (Some(keys), true) => Some(Here::Keys(keys)),
        (None, true) => format.map(Here::Format),
    };
    // The stored owners, ACLs and xattrs are fetched and mounted while the
    // files are copied: for a few paths out of a large tree, fetching the
    // manifest takes as long as the copy (docs/benchmarks.md).
    let manifest_run = manifest_to_apply(request, latest.as_ref().map(|l| l.id.as_str()));
    let (manifest, copied) = crate::pool::both(
        || match &manifest_run {
            Some(id) => prepare_manifest(ctx, (&remote, puller.as_ref()), id, keys.as_ref()),
            None => Ok(None),
        },
        || {
            let target = (&remote, puller.as_ref());
            copy_files(
                ctx,
                target,
                request,
                (latest.as_ref(), newest_read),
                (mounted, here),
                &to,
                progress,
            )
        },
    );
    let (stats, read_via) = copied?;
    let manifest = manifest?;
    if let Some(id) = &manifest_run {
        apply_manifest(id, manifest, request, &to)?;
    }
    drop(remote);
    Ok(Done {
        outcome: Outcome::Ok,
        stats: StageStats::Restore(RestoreStats {
            to,
            snapshot: request.snapshot.clone(),
            files: stats.transferred,
            bytes: stats.bytes_transferred,
            read_via,
        }),
    })
}

/// What restore learns of the target before it reads any file.
struct Survey<'a> {
    latest: Option<Latest>,
    /// The newest run's record, where it was read already.
    newest_read: Option<RunRecord>,
    puller: Option<Puller<'a>>,
}

/// The newest run with a record.
struct Latest {
    id: String,
    /// Its record says the server lost modes or symlinks that the record
    /// keeps (`metadata record`): restoring files/ as the server has it
    /// would lose them, so the run is rebuilt from the record.
    needs_record: bool,
}

/// Asks the target, side by side (each takes a round trip or more over a
/// WAN), whether it holds a backup at all and which run is the newest;
/// then how to pull from it. A run with a record is a backup: where the
/// newest was read already, that is all.
fn survey<'a>(
    ctx: &Context,
    remote: &'a PathTarget,
    newest: Option<target::NewestRun>,
) -> Result<Survey<'a>> {
    let job = ctx.job;
    let (latest, newest_read) = match newest {
        Some(newest) => {
            let read = RunRecord::parse(newest)?;
            log::debug(|| format!("restore: the record of {} read over SFTP", read.id));
            let latest = Latest {
                id: read.id.clone(),
                needs_record: read.record.metadata_in_record,
            };
            (Some(latest), Some(read))
        }
        None => {
            let (not_empty, latest) = crate::pool::both(
                || refuse_empty_target(job, remote),
                || latest_run(ctx, remote),
            );
            not_empty?;
            (latest?, None)
        }
    };
    // The newest record says whether the server kept modes and symlinks
    // at the last backup (`needs_record`): no probe of it needed.
    let keeps_all = latest.as_ref().map(|l| !l.needs_record);
    Ok(Survey {
        puller: remote.puller(job, keeps_all)?,
        latest,
        newest_read,
    })
}

fn latest_run(ctx: &Context, remote: &PathTarget) -> Result<Option<Latest>> {
    let Some(id) = snapshots::recorded_ids(remote)?.pop() else {
        return Ok(None);
    };
    let header = snapshots::open_header(remote, &id, &ctx.job.state_dir)?;
    Ok(Some(Latest {
        id,
        needs_record: header.metadata_in_record,
    }))
}

/// Where files/ is mounted decrypted, and a stage.
const FILES_POINT: &str = "plain";
const STAGED_POINT: &str = "staged";

/// `cipher_dir` decrypted, read-only, at runtime dir `point`.
fn mount_plain(ctx: &Context, cipher_dir: &Path, point: &str) -> Result<crate::mount::Mount> {
    let point = ctx.runtime(point);
    crate::mount::prepare_point(&point)?;
    crypt::mount_forward(ctx.job, cipher_dir, &point)
}

/// Decrypts the run asked for (a stage rebuilt or pulled here, or files/
/// as the target has it, perhaps `mounted` already) and copies it, or the
/// named paths, into `to`.
fn copy_files(
    ctx: &Context,
    (remote, puller): (&PathTarget, Option<&Puller>),
    request: &RestoreRequest,
    (latest, newest_read): (Option<&Latest>, Option<RunRecord>),
    (mounted, here): (Option<crate::mount::Mount>, Option<Here>),
    to: &Path,
    progress: &Progress,
) -> Result<(Stats, ReadVia)> {
    let job = ctx.job;
    // An older state is rebuilt in a local stage first, and so is the
    // latest where its record says so, or where rsync can pull it faster
    // than sshfs reads it. Otherwise the latest state is read from files/
    // itself.
    let rebuilt_latest = latest.filter(|l| l.needs_record).map(|l| l.id.as_str());
    // rsync's own count of what it checked and copied (progress/rsync.rs).
    let phase = progress.phase("restore", Totals::default());
    let copy = Copy {
        job,
        request,
        to,
        phase: Some(&phase).filter(|p| p.shows()),
    };
    // A whole restore from an SFTP account is decrypted as it arrives.
    if let (Some(Here::Keys(keys)), Some(fetcher)) = (here, puller.and_then(Puller::sftp)) {
        let newest = latest.map(|l| l.id.as_str());
        if let Some(id) = request.snapshot.as_deref().or(newest) {
            let run = RunRecord::read(ctx, remote, id, newest_read)?;
            let stats = stream(ctx, remote, &run, (fetcher, keys), request, to, copy.phase)?;
            phase.finish();
            return Ok((stats, ReadVia::Sftp));
        }
    }
    let mut stage = match (&request.snapshot, rebuilt_latest) {
        (Some(id), _) => {
            let run = RunRecord::read(ctx, remote, id, newest_read)?;
            Some(rebuild_somehow(ctx, remote, &run, puller, here, progress)?)
        }
        (None, Some(id)) => {
            let run = RunRecord::read(ctx, remote, id, newest_read)?;
            Some(rebuild_somehow(ctx, remote, &run, puller, here, progress)?)
        }
        (None, None) => match (puller, latest, request.paths.is_empty()) {
            (Some(puller), Some(latest), true) => {
                let run = RunRecord::read(ctx, remote, &latest.id, newest_read)?;
                pull_latest(ctx, remote, &run, puller, here, progress)?
            }
            _ => None,
        },
    };
    let read_via = match (&job.target, &stage) {
        (Target::Local { .. }, _) => ReadVia::Local,
        (
            Target::Sftp(_),
            Some(Stage {
                pulled: Some(via), ..
            }),
        ) => *via,
        (Target::Sftp(_), _) => ReadVia::Sshfs,
    };
    if let Some(stage) = &mut stage
        && let Some(Decrypted::Here(keys)) = stage.decrypted.take()
    {
        let stats = decrypt_stage(job, request, (&keys, &stage.path), to, copy.phase)?;
        phase.finish();
        return Ok((stats, read_via));
    }
    let plain = match (&mut stage, mounted) {
        (None, Some(files)) => files,
        (None, None) => mount_plain(ctx, &remote.root().join(FILES), FILES_POINT)?,
        (Some(stage), _) => match stage.decrypted.take() {
            Some(Decrypted::Mounted(mount)) => mount,
            _ => mount_plain(ctx, &stage.path, STAGED_POINT)?,
        },
    };
    let stats = copy_out(&copy, plain.point(), stage.is_some())?;
    give_root_mode(plain.point(), to)?;
    phase.finish();
    plain.unmount()?;
    Ok((stats, read_via))
}

/// Where a whole tree is decrypted here: with the key unwrapped already,
/// or the format to unwrap it for once needed.
#[derive(Clone, Copy)]
enum Here<'k> {
    Keys(&'k Keys),
    Format(Format),
}

/// How a stage is decrypted, made ready while it fills.
enum Decrypted {
    Mounted(crate::mount::Mount),
    Here(Box<Keys>),
}

/// The keys that decrypt data of `format`: the job's master key from its
/// config and password file (keys.rs: gocryptfs-xray, scrypt), derived.
fn native_keys(job: &Job, format: Format) -> Result<Keys> {
    let master = keys::dump(job)?;
    let mut bytes = master.bytes();
    let keys = Keys::derive(&bytes, format);
    crate::gocrypt::wipe(&mut bytes);
    Ok(keys)
}

/// A whole stage decrypted into `to` here, with the top's mode.
fn decrypt_stage(
    job: &Job,
    request: &RestoreRequest,
    (keys, stage): (&Keys, &Path),
    to: &Path,
    phase: Option<&Phase>,
) -> Result<Stats> {
    let options = decrypt::Options {
        keep_setuid: request.keep_setuid,
        workers: stage_workers(job),
    };
    let copied = decrypt::copy_out(keys, stage, to, &options, phase)?;
    log::debug(|| {
        format!(
            "restore: decrypted here by {} worker(s), not through a mount: {} file(s)",
            options.workers, copied.stats.transferred
        )
    });
    let stats = copied.into_result(stage)?;
    give_root_mode(stage, to)?;
    Ok(stats)
}

/// Whether the restore applies stored owners, ACLs and xattrs: as root,
/// unless `--no-owners` (`manifest_to_apply` says why not).
fn owners_wanted(request: &RestoreRequest) -> bool {
    !request.no_owners && nix::unistd::geteuid().is_root()
}

/// The run whose stored owners, ACLs and xattrs the restore applies
/// (`--snapshot`'s or the newest), unless `--no-owners` or not root.
fn manifest_to_apply(request: &RestoreRequest, latest: Option<&str>) -> Option<String> {
    if request.no_owners {
        return None;
    }
    let id = request.snapshot.as_deref().or(latest)?;
    if !nix::unistd::geteuid().is_root() {
        crate::log::info(format!(
            "not root: the owners, ACLs and xattrs stored with run {id} are not applied \
             (restore as root to apply them)"
        ));
        return None;
    }
    Some(id.to_string())
}

/// A run's manifest as plaintext, and the stage it was pulled into.
struct Manifest {
    plain: PlainManifest,
    _stage: Option<Stage>,
}

/// Where a manifest's plaintext is read.
enum PlainManifest {
    /// The metadata dir mounted decrypted.
    Mounted(crate::mount::Mount),
    /// Its stage decrypted here (restore/decrypt.rs) into a private dir,
    /// removed with it.
    Here(Stage),
}

impl Manifest {
    fn dir(&self) -> &Path {
        match &self.plain {
            PlainManifest::Mounted(mount) => mount.point(),
            PlainManifest::Here(plain) => &plain.path,
        }
    }
}

/// Pulls run `id`'s metadata dir where the target lets us (else it is read
/// through sshfs) and decrypts it: here where it was pulled and the key is
/// unwrapped (`keys`), else through a gocryptfs mount. None: the run
/// stored none.
fn prepare_manifest(
    ctx: &Context,
    (remote, puller): (&PathTarget, Option<&Puller>),
    id: &str,
    keys: Option<&Keys>,
) -> Result<Option<Manifest>> {
    let staged = stage_metadata(ctx, remote, id, puller)?;
    if let (Some(stage), Some(keys)) = (&staged, keys) {
        // Only a stage: decrypting removes each file it has read.
        let plain = Stage::fresh(ctx.runtime(&format!("metadata-{id}")), None)?;
        let options = decrypt::Options {
            keep_setuid: false,
            workers: 1,
        };
        decrypt::copy_out(keys, &stage.path, &plain.path, &options, None)?
            .into_result(&stage.path)?;
        log::debug(|| format!("restore: the manifest of run {id} decrypted here, not mounted"));
        return Ok(Some(Manifest {
            plain: PlainManifest::Here(plain),
            _stage: staged,
        }));
    }
    let dir = match &staged {
        Some(stage) => stage.path.clone(),
        None => remote.root().join(crate::metadata::DIR).join(id),
    };
    Ok(
        crate::metadata::mount_manifest(ctx, &dir)?.map(|mount| Manifest {
            plain: PlainManifest::Mounted(mount),
            _stage: staged,
        }),
    )
}

/// Applies the owners, ACLs and xattrs run `id` stored (metadata.rs), as
/// root, to the restored tree.
fn apply_manifest(
    id: &str,
    manifest: Option<Manifest>,
    request: &RestoreRequest,
    to: &Path,
) -> Result<()> {
    let Some(manifest) = manifest else {
        crate::log::warn(format!(
            "run {id} stored no owners, ACLs or xattrs (made before ciphersync kept them): \
             restored files belong to the user running the restore"
        ));
        return Ok(());
    };
    let options = crate::metadata::ApplyOptions {
        owners: true,
        keep_setuid: request.keep_setuid,
        paths: &request.paths,
    };
    let applied = crate::metadata::apply(manifest.dir(), id, to, options);
    if let PlainManifest::Mounted(mount) = manifest.plain {
        mount.unmount()?;
    }
    let applied = applied?;
    crate::log::info(format!(
        "applied the metadata of run {id}: {} owners, {} ACLs, {} xattrs, {} FIFOs made; \
         {} sockets/devices not restored; {} entries not in the restored tree",
        applied.owners,
        applied.acls,
        applied.xattrs,
        applied.fifos,
        applied.specials_left,
        applied.missing
    ));
    if applied.problem_count > 0 {
        return Err(Error::new(
            Kind::Io,
            format!(
                "restored into {}, but {} metadata changes failed: {}",
                to.display(),
                applied.problem_count,
                applied.problems.join("; ")
            ),
        ));
    }
    Ok(())
}

/// The run's metadata dir, pulled into a local stage over ssh (pull.rs)
/// instead of read through sshfs, which reads a file one request at a
/// time: for a large tree the files are tens of MB (3 s for 200,000
/// entries at 20 ms RTT, docs/benchmarks.md), and even a restore of one
/// file needs all of them. None: read it through the mount, as without a
/// puller, when the dir is not there, holds anything but plain files,
/// does not fit, or the server would not give a file back.
fn stage_metadata(
    ctx: &Context,
    remote: &PathTarget,
    id: &str,
    puller: Option<&Puller>,
) -> Result<Option<Stage>> {
    let Some(puller) = puller else {
        return Ok(None);
    };
    let rel = format!("{}/{id}", crate::metadata::DIR);
    if !std::fs::symlink_metadata(remote.root().join(&rel)).is_ok_and(|m| m.is_dir()) {
        return Ok(None);
    }
    let entries = remote.list_tree(&rel)?;
    let plain_file = |e: &TreeEntry| {
        e.kind == 'f' && !e.path.is_empty() && !e.path.contains(['/', '\0']) && e.path != ".."
    };
    if entries.is_empty() || !entries.iter().all(plain_file) {
        log::debug(|| format!("restore: {rel} holds more than files: read through sshfs"));
        return Ok(None);
    }
    let needed = entries.iter().map(|e| e.size).fold(0, u64::saturating_add);
    let free = fsutil::free_bytes(&ctx.job.state_dir);
    if free.is_some_and(|free| free < needed.saturating_add(STAGE_MARGIN)) {
        return Ok(None);
    }
    let stage = Stage::fresh(
        ctx.state(&format!("restore-metadata-{id}")),
        Some(puller.read_via()),
    )?;
    let list = ctx.runtime("metadata.files");
    let refs: Vec<&TreeEntry> = entries.iter().collect();
    write_path_list(&list, &refs)?;
    let refused = puller.pull(&rel, Some(&list), &refs, &stage.path, stage.room(), None)?;
    if !refused.is_empty() {
        log::debug(|| {
            format!("restore: the target would not give back {refused:?}: read {rel} through sshfs")
        });
        return Ok(None);
    }
    check_stage(id, &stage.path, &entries, Unlisted::Refuse)?;
    log::debug(|| format!("restore: {rel} pulled over {:?}", puller.read_via()));
    Ok(Some(stage))
}

/// A whole restore of the latest run from an account that runs `rsync
/// --server`: pulled into a local stage in one stream per source, which at
/// a WAN round trip is many times faster than sshfs reading file by file
/// (docs/benchmarks.md). It needs local room for the ciphertext; without
/// it, restore reads through sshfs as before.
fn pull_latest(
    ctx: &Context,
    remote: &PathTarget,
    latest: &RunRecord,
    puller: &Puller<'_>,
    here: Option<Here>,
    progress: &Progress,
) -> Result<Option<Stage>> {
    let needed: u64 = latest.record.entries.iter().map(|e| e.size).sum();
    let home = stage_home(ctx, needed);
    let free = fsutil::free_bytes(home);
    if free.is_some_and(|free| free < needed.saturating_add(STAGE_MARGIN)) {
        log::info(format!(
            "restore: {} free in {} is too little to stage {} of ciphertext; reading \
             through sshfs instead (slower over a WAN)",
            crate::human::bytes_short(free.unwrap_or(0)),
            home.display(),
            crate::human::bytes_short(needed)
        ));
        return Ok(None);
    }
    match rebuild(ctx, remote, (latest, true), Some(puller), here, progress)? {
        Rebuilt::Stage(stage) => Ok(Some(stage)),
        Rebuilt::Unreadable(refused) => {
            say_read_through_sshfs(&refused);
            Ok(None)
        }
    }
}

/// A run's record, read once (a large tree's is tens of MB through
/// sshfs), and the snapshot dirs where they were listed with it.
struct RunRecord {
    id: String,
    record: snapshots::Record,
    snapshot_ids: Option<Vec<String>>,
}

impl RunRecord {
    /// Run `id`'s record: the one read already where it is that run's.
    fn read(
        ctx: &Context,
        remote: &PathTarget,
        id: &str,
        read: Option<RunRecord>,
    ) -> Result<RunRecord> {
        if let Some(read) = read.filter(|r| r.id == id) {
            return Ok(read);
        }
        Ok(RunRecord {
            id: id.to_string(),
            record: snapshots::read_record(remote, id, &ctx.job.state_dir)?,
            snapshot_ids: None,
        })
    }

    /// The newest run as the survey read it over SFTP.
    fn parse(newest: target::NewestRun) -> Result<RunRecord> {
        Ok(RunRecord {
            record: snapshots::parse_record(newest.record, &newest.id)?,
            id: newest.id,
            snapshot_ids: Some(newest.snapshot_ids),
        })
    }
}

/// Rebuilds run `id`, pulled where `puller` can; where the server would
/// not give some files back over SFTP, again through sshfs, whose copy
/// names each of them by its plaintext path and restores the rest.
fn rebuild_somehow(
    ctx: &Context,
    remote: &PathTarget,
    run: &RunRecord,
    puller: Option<&Puller>,
    here: Option<Here>,
    progress: &Progress,
) -> Result<Stage> {
    match rebuild(ctx, remote, (run, false), puller, here, progress)? {
        Rebuilt::Stage(stage) => Ok(stage),
        Rebuilt::Unreadable(refused) => {
            say_read_through_sshfs(&refused);
            match rebuild(ctx, remote, (run, false), None, here, progress)? {
                Rebuilt::Stage(stage) => Ok(stage),
                Rebuilt::Unreadable(_) => unreachable!("only a pull leaves files out"),
            }
        }
    }
}

fn say_read_through_sshfs(refused: &[String]) {
    log::info(format!(
        "restore: the target would not give back {} over SFTP (first: {}); reading \
         through sshfs instead, which names each by its plaintext path",
        crate::human::count(refused.len() as u64, "file", "files"),
        refused.first().map(String::as_str).unwrap_or_default()
    ));
}

/// Room a stage leaves free on its file system besides the ciphertext.
const STAGE_MARGIN: u64 = 256 * 1024 * 1024;

/// The largest share of the memory available a stage in RAM may take.
const STAGE_MEMORY_SHARE: u64 = 4;

/// Where a stage of `bytes` of ciphertext goes: the runtime dir where it
/// is a tmpfs (NixOS' /run/ciphersync/<job>, home-manager's
/// $XDG_RUNTIME_DIR) with room for it, and the stage takes at most a
/// quarter of the memory available; else the state dir, on disk. The
/// stage is written once, read once and removed, and a disk write is the
/// dearer half: 143 MB of new files cost 1.4 s of CPU on ext4 here and
/// 0.14 s on tmpfs (bench/analysis.md, "a stage in RAM").
fn stage_home<'a>(ctx: &Context<'a>, bytes: u64) -> &'a Path {
    let runtime = &ctx.job.runtime_dir;
    let fits_memory =
        fsutil::mem_available().is_some_and(|available| bytes <= available / STAGE_MEMORY_SHARE);
    let fits_tmpfs =
        fsutil::free_bytes(runtime).is_some_and(|free| bytes.saturating_add(STAGE_MARGIN) <= free);
    match fits_memory && fits_tmpfs && fsutil::on_tmpfs(runtime) {
        true => runtime,
        false => &ctx.job.state_dir,
    }
}

/// A target no backup has reached has nothing to decrypt: say so, instead
/// of gocryptfs' "Invalid cipherdir".
fn refuse_empty_target(job: &Job, remote: &PathTarget) -> Result<()> {
    if !remote.list_names(FILES)?.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        Kind::Usage,
        format!(
            "there is no backup of job {} on {} yet (no files/ there): run `ciphersync backup {}` first",
            job.name,
            job.target_label(),
            job.name
        ),
    ))
}

/// `--to` was made private (0700) while the copy ran; now it gets the
/// permission bits of the backed-up root, also when only some paths were
/// restored. Never setuid, setgid or sticky bits: those are not the
/// server's to choose. Changed through a descriptor opened without
/// following a link.
fn give_root_mode(plain_root: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mode = std::fs::metadata(plain_root)
        .ctx(|| format!("reading the mode of {}", plain_root.display()))?
        .permissions()
        .mode()
        & 0o777;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(to)
        .ctx(|| format!("opening {}", to.display()))?;
    dir.set_permissions(std::fs::Permissions::from_mode(mode))
        .ctx(|| format!("setting mode {mode:o} on {}", to.display()))
}

/// Copies all or the named plaintext paths out of a decrypted mount. All
/// of a remote tree is copied in the phases of split.rs, as backup writes
/// it: the directories, then workers on balanced lists of directories,
/// then the directories' modes and times. Over sshfs one rsync waits for
/// each file in turn.
fn copy_out(copy: &Copy, plain: &Path, from_local_stage: bool) -> Result<Stats> {
    let (job, request) = (copy.job, copy.request);
    let mut copied = Copied::default();
    let paths = &request.paths;
    if !paths.is_empty() {
        for path in paths {
            check_inside_backup(job, plain, path)?;
        }
        return copy_paths(copy, plain, from_local_stage);
    }
    let whole = format!("{}/", plain.display());
    // Workers name directories in `--files-from` lists, and the sending
    // rsync follows a symlink in a listed path's parents: a server that
    // swapped a directory for a symlink between the walk and a worker could
    // make it read this machine's files into --to. So workers only for a
    // stage rebuilt here (checked against its record, and ours alone);
    // straight from the server, one recursive rsync, which follows no link.
    // The stage is on local disk: its workers open no ssh session, so the
    // connection budget (budget.rs) does not bound them.
    let workers = match from_local_stage {
        true => stage_workers(job),
        false => 1,
    };
    let plan = match workers > 1 {
        true => Some(split::plan(plain, workers, &job.state_dir)?),
        false => None,
    };
    let Some(plan) = plan.filter(|p| p.workers.len() > 1) else {
        copied.add(copy.pass(vec![whole], None, true)?);
        return copied.into_result(plain);
    };
    copied.add(copy.split(plain, plan, workers, split::contents_pass())?);
    copied.into_result(plain)
}

/// Copies the named paths (each checked by `check_inside_backup`) with
/// their parents. Over sshfs one rsync waits for each file in turn (several
/// round trips: bench/analysis.md), so where the paths hold more than a
/// few files they go to workers on balanced lists of files
/// (`split::plan_paths`). A worker reads each listed file by its path, as
/// the one rsync does after its own listing and after
/// `check_inside_backup`: a parent the server swaps for a symlink in
/// between would be followed either way. The lists make that window the
/// seconds a path restore takes; a whole tree read from the server keeps
/// the one recursive rsync (see `copy_out`).
fn copy_paths(copy: &Copy, plain: &Path, from_local_stage: bool) -> Result<Stats> {
    let mut copied = Copied::default();
    let paths: Vec<PathBuf> = copy
        .request
        .paths
        .iter()
        .map(|p| Path::new(p).components().collect())
        .collect();
    let workers = match &copy.job.target {
        Target::Sftp(s) if from_local_stage => s.connections,
        Target::Sftp(s) => split::workers_for(s.connections),
        Target::Local { .. } => 1,
    };
    let plan = match workers > 1 {
        true => Some(split::plan_paths(
            plain,
            &paths,
            workers,
            &copy.job.state_dir,
        )?),
        false => None,
    };
    let Some(plan) = plan.filter(|p| p.workers.len() >= MIN_LISTS_TO_SPLIT) else {
        // `mount/./path` copies `path` with its parents (rsync --relative).
        let mut args = vec!["--relative".to_string()];
        for path in &paths {
            args.push(format!("{}/./{}", plain.display(), path.display()));
        }
        copied.add(copy.pass(args, None, true)?);
        return copied.into_result(plain);
    };
    copied.add(copy.split(plain, plan, workers, split::contents_pass_of_files())?);
    copied.into_result(plain)
}

/// The rsyncs that copy out of a stage rebuilt here: on local disk, they
/// open no ssh session, so the connection budget (budget.rs) does not
/// bound them; as many as the job has connections.
fn stage_workers(job: &Job) -> usize {
    match &job.target {
        Target::Sftp(s) => s.connections,
        Target::Local { .. } => 1,
    }
}

/// Paths with files for fewer lists than this go to one rsync: workers
/// cost a process each and two more passes over the directories.
const MIN_LISTS_TO_SPLIT: usize = 4;

/// What the copy passes did, and rsync's lines about what they could not
/// copy (a file the server cannot read back, a name it lost).
#[derive(Default)]
struct Copied {
    stats: Stats,
    failed: Vec<String>,
    /// What could not be decrypted here, each as `path (why)`.
    named: Vec<String>,
}

impl Copied {
    fn named(stats: Stats, named: Vec<String>) -> Copied {
        Copied {
            stats,
            failed: Vec::new(),
            named,
        }
    }

    fn add(&mut self, other: Copied) {
        self.stats.add(&other.stats);
        self.failed.extend(other.failed);
        self.named.extend(other.named);
    }

    /// The figures, or one error naming every path that did not come
    /// back: the rest is in `--to`.
    fn into_result(self, plain: &Path) -> Result<Stats> {
        if self.failed.is_empty() && self.named.is_empty() {
            return Ok(self.stats);
        }
        let prefix = format!("{}/", plain.display());
        let named: Vec<String> = self
            .failed
            .iter()
            .map(|line| {
                let quoted = line.split('"').nth(1).unwrap_or(line);
                let path = quoted.strip_prefix(&prefix).unwrap_or(quoted);
                let why = line.rsplit_once(": ").map(|(_, w)| w).unwrap_or("");
                crate::human::escape(&format!("{} ({why})", rsync::unescape_name(path)))
            })
            .chain(self.named)
            .collect();
        Err(Error::new(
            Kind::Tool,
            format!(
                "{} path(s) could not be copied out of the backup (everything else was restored): {}",
                named.len(),
                named.join("; ")
            ),
        ))
    }
}

/// What the copy passes share.
struct Copy<'a> {
    job: &'a Job,
    request: &'a RestoreRequest,
    to: &'a Path,
    /// Where the passes that copy files count their progress.
    phase: Option<&'a Phase>,
}

impl Copy<'_> {
    fn pass(
        &self,
        args: Vec<String>,
        list: Option<std::fs::File>,
        copies_files: bool,
    ) -> Result<Copied> {
        let phase = self.phase.filter(|_| copies_files);
        copy_pass(self.job, self.request, args, list, self.to, phase)
    }

    /// The three phases of split.rs out of `plain`: the directories, the
    /// workers' lists with `contents` options, the directories again.
    fn split(
        &self,
        plain: &Path,
        plan: split::Plan,
        workers: usize,
        contents: Vec<String>,
    ) -> Result<Copied> {
        let whole = format!("{}/", plain.display());
        let with = |options: Vec<String>| options.into_iter().chain([whole.clone()]).collect();
        let mut copied = Copied::default();
        copied.add(self.pass(
            with(split::directories_pass(true)),
            Some(plan.before),
            false,
        )?);
        for pass in split::in_workers(plan.workers, workers, |list| {
            self.pass(with(contents.clone()), Some(list), true)
        })? {
            copied.add(pass);
        }
        copied.add(self.pass(
            with(split::directories_pass(false)),
            Some(plan.after),
            false,
        )?);
        Ok(copied)
    }
}

/// One rsync out of the decrypted mount; `args` ends with the source(s),
/// `list` is the `--files-from=-` list for its stdin. What the target
/// stores is not trusted: no device or special file is created,
/// setuid/setgid bits are dropped and owners are not applied, unless the
/// request asks for them.
fn copy_pass(
    job: &Job,
    request: &RestoreRequest,
    args: Vec<String>,
    list: Option<std::fs::File>,
    to: &Path,
    phase: Option<&Phase>,
) -> Result<Copied> {
    let mut cmd = Cmd::new("rsync").args(["-a", "-H", "--stats", "--no-human-readable"]);
    cmd = cmd.args(untrusted_copy_flags(request.keep_setuid));
    // Over SFTP the owners on the server are the account's, never the
    // original ones; elsewhere they are applied only when asked.
    if matches!(job.target, Target::Sftp(_)) || !request.owners {
        cmd = cmd.args(["--no-owner", "--no-group"]);
    }
    if phase.is_some() {
        cmd = cmd.arg(progress::rsync::PROGRESS_ARG);
    }
    cmd = cmd.args(args).arg(format!("{}/", to.display()));
    if let Some(list) = list {
        cmd = cmd.stdin(list);
    }
    let output = crate::exec::scratch_file(&job.state_dir, "restore-out")?;
    let mut out = progress::rsync::run(cmd.whole_group(), output, phase)?;
    let stats = progress::rsync::stats_of(&mut out)?;
    let failed = match out.code() {
        Some(0) => Vec::new(),
        // Some files or names could not be read back (23) or vanished
        // (24): the rest was copied; the caller names them at the end.
        Some(rsync::PARTIAL | rsync::VANISHED) => out
            .stderr
            .lines()
            .filter(|l| l.starts_with("rsync:") && l.contains('"'))
            .map(str::to_owned)
            .collect(),
        _ => return Err(out.failure(Some("copying out of the decrypted backup"))),
    };
    if failed.is_empty() && !out.success() {
        return Err(out.failure(Some("copying out of the decrypted backup")));
    }
    Ok(Copied {
        stats,
        failed,
        named: Vec::new(),
    })
}

/// rsync flags for a copy whose source the target controls: never a device
/// or special file, and (unless kept) no setuid/setgid bit.
fn untrusted_copy_flags(keep_setuid: bool) -> Vec<&'static str> {
    let mut flags = vec!["--no-devices", "--no-specials"];
    if !keep_setuid {
        flags.push("--chmod=ug-s");
    }
    flags
}

/// A rebuilt cipher tree in the state dir, removed when dropped.
struct Stage {
    path: PathBuf,
    /// Filled over ssh (pull.rs: rsync or SFTP), not read through a path.
    pulled: Option<ReadVia>,
    /// How the stage is decrypted, made ready while it was filled.
    decrypted: Option<Decrypted>,
}

impl Stage {
    /// An empty stage at `path`, private to us; whatever a killed restore
    /// left there is removed first.
    fn fresh(path: PathBuf, pulled: Option<ReadVia>) -> Result<Stage> {
        let stage = Stage {
            path,
            pulled,
            decrypted: None,
        };
        if stage.path.exists() {
            remove_tree(&stage.path).ctx(|| format!("removing {}", stage.path.display()))?;
        }
        crypt::create_private_dir(&stage.path)?;
        Ok(stage)
    }

    /// What a pull may still put here, the margin kept free.
    fn room(&self) -> u64 {
        fsutil::free_bytes(&self.path)
            .unwrap_or(u64::MAX)
            .saturating_sub(STAGE_MARGIN)
    }
}

/// The entries' paths, NUL-separated: what `rsync --from0 --files-from`
/// reads.
fn write_path_list(list: &Path, entries: &[&TreeEntry]) -> Result<()> {
    let names: Vec<&[u8]> = entries.iter().map(|e| e.path.as_bytes()).collect();
    fsutil::write_atomic(list, &names.join(&0u8))
}

impl Drop for Stage {
    fn drop(&mut self) {
        drop(self.decrypted.take());
        let _ = remove_tree(&self.path);
    }
}

/// A stage, or what a pull over SFTP could not get (ciphertext paths, with
/// the server's words): then nothing is staged.
enum Rebuilt {
    Stage(Stage),
    Unreadable(Vec<String>),
}

/// Rebuilds run `id` in a stage in the state dir: each path of its record
/// from the oldest later snapshot dir that holds it, else from files/;
/// pulled with rsync over ssh when `puller` is given, else read from the
/// target's path (a local disk, the sshfs mount). `newest`: the run is the
/// newest with a record, so files/ holds little else, and may be pulled
/// whole. What arrived is checked against the record before any mode is
/// applied or link restored.
fn rebuild(
    ctx: &Context,
    remote: &PathTarget,
    (run, newest): (&RunRecord, bool),
    puller: Option<&Puller>,
    here: Option<Here>,
    progress: &Progress,
) -> Result<Rebuilt> {
    let (id, record) = (run.id.as_str(), &run.record);
    // The record says how many bytes of ciphertext the stage takes; rsync
    // counts the files of each source it fetches from (progress/rsync.rs).
    let ciphertext = record
        .entries
        .iter()
        .filter(|e| e.kind == 'f')
        .map(|e| e.size)
        .fold(0, u64::saturating_add);
    let totals = Totals {
        files: None,
        bytes: Some(ciphertext),
    };
    let phase = progress.phase("restore: fetching", totals);
    let watched = Some(&phase).filter(|p| p.shows());
    check_record_tree(id, &record.entries)?;
    let later = later_snapshots(remote, run)?;
    let plan = snapshots::plan_rebuild(record, &later);
    let fill_by = match puller {
        None => Fill::Read,
        Some(puller) if newest && pulls_whole(&plan) => Fill::PullAll(puller),
        Some(puller) => Fill::Pull(puller),
    };

    let stage = Stage::fresh(
        stage_home(ctx, ciphertext).join(format!("restore-{id}")),
        puller.map(Puller::read_via),
    )?;
    log::debug(|| format!("restore: staged in {}", stage.path.display()));
    for dir in record.entries.iter().filter(|e| e.kind == 'd') {
        crypt::create_private_dir(&stage.path.join(&dir.path))?;
    }
    // The key is unwrapped, or the stage mounted decrypted, while it is
    // filled (scrypt beside the transfer); nothing reads the stage before
    // the checks below. Without the job's config here (a new machine)
    // gocryptfs needs the stage's own, which only the fill brings.
    let beside = ctx.job.gocryptfs_config.exists();
    let (decrypted, refused) = crate::pool::both(
        || match here {
            Some(Here::Keys(keys)) => Some(Ok(Decrypted::Here(Box::new(keys.clone())))),
            Some(Here::Format(format)) => {
                Some(native_keys(ctx.job, format).map(|k| Decrypted::Here(Box::new(k))))
            }
            None => {
                beside.then(|| mount_plain(ctx, &stage.path, STAGED_POINT).map(Decrypted::Mounted))
            }
        },
        || {
            let list = ctx.runtime("rebuild.files");
            fill(ctx, (remote, fill_by), id, &plan, &list, &stage, watched)
        },
    );
    let refused = refused?;
    if !refused.is_empty() {
        return Ok(Rebuilt::Unreadable(refused));
    }
    let mut stage = stage;
    stage.decrypted = decrypted.transpose()?;
    phase.finish();
    // Symlinks the record keeps (the server could not): made here, in the
    // stage only we write to, below directories just made; gocryptfs
    // decrypts their targets like any other.
    for entry in record.entries.iter().filter(|e| e.link.is_some()) {
        let path = stage.path.join(&entry.path);
        let target = entry.link.as_deref().unwrap_or_default();
        std::os::unix::fs::symlink(target, &path)
            .ctx(|| format!("making the symlink {}", path.display()))?;
    }
    let unlisted = match fill_by {
        Fill::PullAll(_) => Unlisted::Remove,
        Fill::Read | Fill::Pull(_) => Unlisted::Refuse,
    };
    let removed = check_stage(id, &stage.path, &record.entries, unlisted)?;
    if removed > 0 {
        log::info(format!(
            "restore: files/ on the target holds {removed} entries that run {id} does not \
             list (added by a backup that stopped before its end, or by the server): not restored"
        ));
    }
    if puller.is_some() {
        // Each is a symlink the record lists, below checked directories.
        for entry in record
            .entries
            .iter()
            .filter(|e| e.kind == 'l' && e.link.is_none())
        {
            target::unmunge(&stage.path.join(&entry.path))?;
        }
    }
    // A chmod-only change is applied in place by rsync (nothing goes into a
    // snapshot), so the copies may carry a later mode: the record has the
    // mode of the run, without setuid/setgid/sticky bits. Directory modes
    // last: a read-only directory would have refused the files copied into
    // it. Every entry was just checked to be what the record says, below
    // directories that are real directories, in a dir only we write to: a
    // chmod here cannot reach through a link.
    let by_mode = |kind: char| record.entries.iter().filter(move |e| e.kind == kind);
    for entry in by_mode('f').chain(by_mode('d')) {
        let path = stage.path.join(&entry.path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(entry.mode & 0o777))
            .ctx(|| format!("setting the mode of {}", path.display()))?;
    }
    log::debug(|| format!("restore: the stage holds what record {id} lists"));
    Ok(Rebuilt::Stage(stage))
}

/// The snapshot dirs of the runs after `run`, each with the paths it
/// holds: where a rebuild of `run` finds what changed since
/// (`snapshots::plan_rebuild`).
fn later_snapshots(
    remote: &PathTarget,
    run: &RunRecord,
) -> Result<Vec<(String, std::collections::BTreeSet<String>)>> {
    let snapshot_ids = match &run.snapshot_ids {
        Some(ids) => ids.clone(),
        None => snapshots::snapshot_dir_ids(remote)?,
    };
    let mut later = Vec::new();
    for later_id in snapshot_ids.into_iter().filter(|s| *s > run.id) {
        let paths = remote.list_tree(&format!("{SNAPSHOTS}/{later_id}"))?;
        let files = paths.into_iter().filter(|e| e.kind != 'd').map(|e| e.path);
        later.push((later_id, files.collect()));
    }
    Ok(later)
}

/// A whole restore of `run` from an SFTP account, decrypted as it arrives
/// (restore/streamed.rs): no stage, a spill directory for files too
/// large to hold.
fn stream(
    ctx: &Context,
    remote: &PathTarget,
    run: &RunRecord,
    (fetcher, keys): (&target::SftpFetcher, &Keys),
    request: &RestoreRequest,
    to: &Path,
    phase: Option<&Phase>,
) -> Result<Stats> {
    let (id, record) = (run.id.as_str(), &run.record);
    check_record_tree(id, &record.entries)?;
    let later = later_snapshots(remote, run)?;
    let plan = snapshots::plan_rebuild(record, &later);
    let large = record
        .entries
        .iter()
        .filter(|e| e.kind == 'f' && e.size > target::HOLD_MAX as u64)
        .map(|e| e.size)
        .fold(0, u64::saturating_add);
    let spill = Stage::fresh(
        stage_home(ctx, large).join(format!("restore-{id}")),
        Some(ReadVia::Sftp),
    )?;
    let name_files = streamed::fetch_names(fetcher, &plan)?;
    let options = decrypt::Options {
        keep_setuid: request.keep_setuid,
        workers: stage_workers(ctx.job),
    };
    let streamed = streamed::Streamed {
        fetcher,
        keys,
        entries: &record.entries,
        to,
        spill: (&spill.path, STAGE_MARGIN),
        options: &options,
        phase,
    };
    // Directories and files are made in --to as they come: say what a
    // restore that stops part-way leaves there.
    let copied = streamed.restore(&plan, &name_files).map_err(|e| {
        let left = format!(
            "what was decrypted before it stopped is in {}",
            to.display()
        );
        Error::new(e.kind, format!("{} ({left})", e.message))
    })?;
    log::debug(|| {
        format!(
            "restore: decrypted here by {} worker(s) as it came over SFTP, no stage: {} file(s)",
            options.workers, copied.stats.transferred
        )
    });
    copied.into_result(to)
}

/// How a rebuild fills its stage.
#[derive(Clone, Copy)]
enum Fill<'a, 'p> {
    /// rsync from the target's path (a local disk, the sshfs mount).
    Read,
    /// Pulled over ssh, the paths of the plan.
    Pull(&'a Puller<'p>),
    /// Pulled over ssh, all of files/ (`pulls_whole`, newest run only).
    PullAll(&'a Puller<'p>),
}

/// Copies each path of a rebuild's `plan` into the stage, as `fill_by`
/// says. Returns what the server would not give back over SFTP (then the
/// stage is given up).
fn fill(
    ctx: &Context,
    (remote, fill_by): (&PathTarget, Fill),
    id: &str,
    plan: &std::collections::BTreeMap<Option<&str>, Vec<&TreeEntry>>,
    list: &Path,
    stage: &Stage,
    watched: Option<&Phase>,
) -> Result<Vec<String>> {
    let root = remote.root();
    for (from, entries) in plan {
        interrupt::check()?;
        let from = match from {
            Some(snapshot) => format!("{SNAPSHOTS}/{snapshot}"),
            None => FILES.to_string(),
        };
        // A whole pull reads no list (and SMALL's holds 200,000 paths).
        if !matches!(fill_by, Fill::PullAll(_)) {
            write_path_list(list, entries)?;
        }
        let pulled = match fill_by {
            Fill::Read => None,
            Fill::Pull(puller) => Some((puller, Some(list))),
            Fill::PullAll(puller) => Some((puller, None)),
        };
        if let Some((puller, list)) = pulled {
            let refused = puller.pull(&from, list, entries, &stage.path, stage.room(), watched)?;
            if !refused.is_empty() {
                return Ok(refused);
            }
            continue;
        }
        let source = root.join(&from);
        let mut cmd = Cmd::new("rsync")
            .args(["-a", "-H", "--no-owner", "--no-group", "--from0"])
            .args(untrusted_copy_flags(false));
        if watched.is_some() {
            cmd = cmd.arg(progress::rsync::PROGRESS_ARG);
        }
        let cmd = cmd
            .arg(format!("--files-from={}", list.display()))
            .arg(format!("{}/", source.display()))
            .arg(format!("{}/", stage.path.display()));
        let output = crate::exec::scratch_file(&ctx.job.state_dir, "rebuild-out")?;
        let out = progress::rsync::run(cmd, output, watched)?;
        if !out.success() {
            return Err(out.failure(Some(&format!("rebuilding snapshot {id}"))));
        }
    }
    Ok(Vec::new())
}

/// Whether a rebuild of the newest run may pull all of files/: where its
/// plan takes every path from there (no later backup replaced or deleted
/// any of them before it stopped), what else files/ holds is only what
/// such a backup added, or what the server put there; `check_stage`
/// removes it.
fn pulls_whole(plan: &std::collections::BTreeMap<Option<&str>, Vec<&TreeEntry>>) -> bool {
    plan.keys().all(Option::is_none)
}

/// A record comes from the target: every path must stay inside the tree
/// (relative, no `.`/`..`/empty component), appear once, and sit in a
/// directory the record also lists, so that nothing built from it can be
/// reached through a symlink.
pub(crate) fn check_record_tree(id: &str, entries: &[TreeEntry]) -> Result<()> {
    let corrupt =
        |why: String| Error::new(Kind::Corrupt, format!("record {id} of the target: {why}"));
    let mut seen = std::collections::HashSet::new();
    let dirs: std::collections::HashSet<&str> = entries
        .iter()
        .filter(|e| e.kind == 'd')
        .map(|e| e.path.as_str())
        .collect();
    for entry in entries {
        let path = entry.path.as_str();
        let name = crate::human::escape(path);
        if path.is_empty()
            || path.starts_with('/')
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
            || path.contains('\0')
        {
            return Err(corrupt(format!("the path {name:?} leaves the tree")));
        }
        if !matches!(entry.kind, 'f' | 'd' | 'l') {
            return Err(corrupt(format!(
                "{name:?} has the unknown type {:?}",
                entry.kind
            )));
        }
        if !seen.insert(path) {
            return Err(corrupt(format!("{name:?} is listed twice")));
        }
        if let Some((parent, _)) = path.rsplit_once('/')
            && !dirs.contains(parent)
        {
            return Err(corrupt(format!(
                "{name:?} lies in {parent:?}, which is not a recorded directory"
            )));
        }
    }
    Ok(())
}

/// What `check_stage` does with an entry the record does not list.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unlisted {
    /// Fails: the server sent what was not asked for.
    Refuse,
    /// Removes it: all of a directory was pulled (`pulls_whole`).
    Remove,
}

/// After the copy the stage must hold what the record lists and nothing
/// else, each entry of the kind the record says: a server that swapped a
/// file for a symlink (or a directory for one), or sent a name the record
/// does not list (a pull lets rsync take the sender's names), is caught
/// here, before any mode is applied, link restored or file decrypted.
/// One walk that follows no link and takes each type from the directory
/// listing: a stat per entry made this check a second of SMALL's restore.
/// Returns how many unlisted entries (each with what is below it) it
/// removed.
fn check_stage(id: &str, stage: &Path, entries: &[TreeEntry], unlisted: Unlisted) -> Result<usize> {
    let listed: std::collections::HashMap<&str, char> =
        entries.iter().map(|e| (e.path.as_str(), e.kind)).collect();
    let (mut found, mut removed) = (0, 0);
    let mut walk = walkdir::WalkDir::new(stage)
        .min_depth(1)
        .follow_links(false)
        .into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.map_err(|e| crate::walk::error(stage, e))?;
        let rel = entry.path().strip_prefix(stage).unwrap_or(entry.path());
        let rel = rel.to_string_lossy();
        let Some(&kind) = listed.get(rel.as_ref()) else {
            if unlisted == Unlisted::Refuse {
                return Err(sent_unlisted(id, &rel));
            }
            let is_dir = entry.file_type().is_dir();
            if is_dir {
                walk.skip_current_dir();
            }
            remove_unlisted(entry.path(), is_dir)?;
            removed += 1;
            continue;
        };
        let is = kind_of(entry.file_type());
        if is != kind {
            return Err(not_of_its_kind(id, &rel, is, kind));
        }
        found += 1;
    }
    if found < listed.len() {
        // Every entry found was listed and of its kind (no link stands
        // where a directory should), so the first that lstat misses is
        // one the server did not send.
        if let Some(missing) = entries
            .iter()
            .find(|e| std::fs::symlink_metadata(stage.join(&e.path)).is_err())
        {
            return Err(not_of_its_kind(id, &missing.path, '-', missing.kind));
        }
    }
    Ok(removed)
}

/// Removes `path` (with what is below it, where `is_dir`: the walk's type,
/// which follows no link) from the stage. Its parent is
/// the stage or a directory `check_stage` found listed and a directory;
/// rsync gave it the server's mode, which may not let its owner write, so
/// it is opened up for the removal and then given that mode back (the
/// stage's own mode becomes that of --to).
fn remove_unlisted(path: &Path, is_dir: bool) -> Result<()> {
    let parent = path.parent().unwrap_or(path);
    let mode = std::fs::symlink_metadata(parent)
        .ctx(|| format!("reading {}", parent.display()))?
        .permissions()
        .mode();
    let opened = mode | 0o700;
    let set = |mode: u32| {
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode & 0o7777))
            .ctx(|| format!("setting the mode of {}", parent.display()))
    };
    if opened != mode {
        set(opened)?;
    }
    let removed = match is_dir {
        true => remove_tree(path),
        false => std::fs::remove_file(path),
    }
    .ctx(|| format!("removing {}", path.display()));
    if opened != mode {
        set(mode)?;
    }
    removed
}

fn kind_of(found: std::fs::FileType) -> char {
    match found {
        t if t.is_symlink() => 'l',
        t if t.is_dir() => 'd',
        t if t.is_file() => 'f',
        _ => '?',
    }
}

fn not_of_its_kind(id: &str, path: &str, is: char, should: char) -> Error {
    Error::new(
        Kind::Corrupt,
        format!(
            "snapshot {id} on the target: {:?} is {}, its record says {}",
            crate::human::escape(path),
            kind_name(is),
            kind_name(should)
        ),
    )
}

fn sent_unlisted(id: &str, rel: &str) -> Error {
    Error::new(
        Kind::Corrupt,
        format!(
            "snapshot {id} on the target: the server sent {:?}, which its record does not list",
            crate::human::escape(rel)
        ),
    )
}

fn kind_name(kind: char) -> &'static str {
    match kind {
        'f' => "a file",
        'd' => "a directory",
        'l' => "a symlink",
        '-' => "missing",
        _ => "a special file",
    }
}

/// Removes `dir` and what is below it, read-only directories too (rsync
/// gives a stage's directories the server's modes). Follows no link.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    make_writable(dir);
    std::fs::remove_dir_all(dir)
}

/// So that a stage with read-only directories can be removed.
fn make_writable(dir: &Path) {
    for entry in walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        if entry.file_type().is_dir() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700));
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    Ok(std::env::current_dir()
        .ctx(|| "reading the current directory")?
        .join(path))
}

/// Canonicalizes the longest existing prefix of `path` (the rest may not
/// exist yet), so symlinked parents cannot hide that `path` is in the source.
fn resolve_existing_prefix(path: &Path) -> PathBuf {
    let mut existing = path.to_owned();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_owned();
            }
            _ => break,
        }
    }
    let mut resolved = existing.canonicalize().unwrap_or(existing);
    for name in rest.iter().rev() {
        resolved.push(name);
    }
    resolved
}

/// A named path must exist in the backup, and none of its parents may be a
/// symlink: the kernel would follow it while resolving the path, and copy
/// something that was never backed up (`link -> /etc`, then `link/passwd`).
fn check_inside_backup(job: &Job, plain: &Path, path: &str) -> Result<()> {
    let mut prefix = plain.to_path_buf();
    let parts: Vec<Component> = Path::new(path)
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    for (i, part) in parts.iter().enumerate() {
        prefix.push(part);
        match std::fs::symlink_metadata(&prefix) {
            Ok(meta) if meta.file_type().is_symlink() && i + 1 < parts.len() => {
                return Err(Error::usage(format!(
                    "{path} goes through a symlink in the backup ({}); name the link itself to restore it",
                    Path::new(path)
                        .components()
                        .take(i + 1)
                        .collect::<PathBuf>()
                        .display()
                )));
            }
            Ok(_) => {}
            Err(_) => {
                return Err(Error::usage(format!(
                    "{path} is not in the backup of job {}",
                    job.name
                )));
            }
        }
    }
    Ok(())
}

/// A restore path must stay inside the backup: relative, no `..`.
fn check_relative(path: &str) -> Result<()> {
    let p = Path::new(path);
    let bad = path.is_empty()
        || p.is_absolute()
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)));
    if bad {
        return Err(Error::new(
            Kind::Usage,
            format!(
                "restore path {path:?} must be relative to the source and must not contain `..`"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_paths_stay_inside() {
        assert!(check_relative("docs/a.txt").is_ok());
        assert!(check_relative("docs/./a.txt").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x"] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
    }

    fn entry(kind: char, path: &str) -> TreeEntry {
        TreeEntry {
            kind,
            mode: 0o600,
            size: 0,
            path: path.to_string(),
            link: None,
        }
    }

    /// A pull lets rsync take the sender's names (`--trust-sender`): this
    /// check is what stops a name the record does not list, wherever in
    /// the tree the server put it, an entry of another kind, and one the
    /// server left out.
    #[test]
    fn a_stage_must_hold_what_its_record_lists_and_nothing_else() {
        let stage = crate::test_util::temp_dir("restore-check-stage");
        std::fs::create_dir_all(stage.join("d/sub")).unwrap();
        std::fs::write(stage.join("d/f"), b"x").unwrap();
        let listed = [entry('d', "d"), entry('f', "d/f"), entry('d', "d/sub")];
        assert_eq!(
            check_stage("R", &stage, &listed, Unlisted::Refuse).unwrap(),
            0
        );
        let refused = |why: &str| {
            let err = check_stage("R", &stage, &listed, Unlisted::Refuse)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{err}");
        };
        for extra in ["d/sub/planted", "top"] {
            std::fs::write(stage.join(extra), b"x").unwrap();
            refused(&format!("the server sent \"{extra}\""));
            std::fs::remove_file(stage.join(extra)).unwrap();
        }
        std::fs::remove_file(stage.join("d/f")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", stage.join("d/f")).unwrap();
        refused("\"d/f\" is a symlink, its record says a file");
        std::fs::remove_file(stage.join("d/f")).unwrap();
        refused("\"d/f\" is missing, its record says a file");
        std::fs::remove_dir_all(&stage).unwrap();
    }

    /// A whole pull of files/ brings what a stopped backup added there:
    /// removed, also below a directory without write permission, and the
    /// directories keep their modes; the listed entries stay.
    #[test]
    fn a_whole_pull_loses_what_its_record_does_not_list() {
        use std::os::unix::fs::PermissionsExt;
        let stage = crate::test_util::temp_dir("restore-remove-unlisted");
        std::fs::create_dir_all(stage.join("d/new/deeper")).unwrap();
        std::fs::write(stage.join("d/f"), b"x").unwrap();
        std::fs::write(stage.join("d/new/deeper/g"), b"x").unwrap();
        std::fs::write(stage.join("d/added"), b"x").unwrap();
        std::fs::write(stage.join("top"), b"x").unwrap();
        let mode = |p: &str| {
            std::fs::symlink_metadata(stage.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        for (dir, bits) in [("d", 0o555), ("", 0o751)] {
            std::fs::set_permissions(stage.join(dir), std::fs::Permissions::from_mode(bits))
                .unwrap();
        }
        let listed = [entry('d', "d"), entry('f', "d/f")];
        let removed = check_stage("R", &stage, &listed, Unlisted::Remove).unwrap();
        assert_eq!(removed, 3, "d/new (with what is below it), d/added, top");
        let mut left: Vec<_> = walkdir::WalkDir::new(&stage)
            .min_depth(1)
            .into_iter()
            .map(|e| {
                e.unwrap()
                    .path()
                    .strip_prefix(&stage)
                    .unwrap()
                    .to_path_buf()
            })
            .collect();
        left.sort();
        assert_eq!(left, [Path::new("d"), Path::new("d/f")]);
        assert_eq!((mode("d"), mode("")), (0o555, 0o751));
        // A listed entry of another kind still fails.
        std::fs::set_permissions(stage.join("d"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::remove_file(stage.join("d/f")).unwrap();
        std::fs::create_dir(stage.join("d/f")).unwrap();
        let err = check_stage("R", &stage, &listed, Unlisted::Remove).unwrap_err();
        assert!(
            err.to_string()
                .contains("is a directory, its record says a file"),
            "{err}"
        );
        std::fs::remove_dir_all(&stage).unwrap();
    }
}
