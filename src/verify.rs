//! The restore tests.
//!
//! `verify`: sha1 of every local encrypted file (read through the reverse
//! view, cached by file stamp) against sha1 of every file in the remote
//! `files/`, computed on the server over ssh (nothing is downloaded) or read
//! through the sshfs mount. Both lists are kept in the remote `checksums/`.
//!
//! `verify --deep`: decrypt the local encrypted view again with a forward
//! gocryptfs mount and compare it with the plaintext source.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use crate::checksums::{self, Cache, Diff, Sum};
use crate::config::Job;
use crate::crypt::{self, PathDecryptor, REMOTE_CONFIG_NAME};
use crate::error::{Error, IoContext, Kind, Result};
use crate::exec::scratch_file;
use crate::fingerprint::{self, SourceState};
use crate::progress::{Phase, Progress, Totals};
use crate::run::{Context, Done};
use crate::sample::{self, Budget, Selection};
use crate::state::{LastBackup, RepairList, SHA1_CACHE, SampleRotation};
use crate::stats::{DeepVerifyStats, StageStats, VerifyStats};
use crate::status::{self, AtomicFile, Outcome};
use crate::target::{self, FILES, Need, RemoteSums, Target, TreeEntry};
use crate::{interrupt, log, pool, verify_cache};

/// How many verify runs keep their checksum lists on the target.
const KEPT_CHECKSUM_RUNS: usize = 10;

/// `sample`: `verify --sample`, else the job's budget (sample.rs).
pub fn verify(ctx: &Context, sample: Option<Budget>, progress: &Progress) -> Result<Done> {
    let job = ctx.job;
    crypt::check_ready(job)?;
    let cipher_point = ctx.runtime("cipher");
    crate::mount::prepare_point(&cipher_point)?;
    let ctlsock = ctx.runtime("ctl.sock");
    let id = status::snapshot_id(ctx.started_at);
    let since = LastBackup::read(&job.state_dir).map(|last| last.started_ns);
    // The server hashes its copy while we hash ours, or reuse our last list
    // when the source has not changed.
    let ((remote, mut remote_list), (view, mut local, source)) = pool::side_by_side(
        || {
            let remote = target::open(job, Need::Records, &ctx.runtime("remote"))?;
            let into = scratch_file(&job.state_dir, "verify-remote")?;
            let list = remote.checksums(&id, into)?;
            Ok((remote, list))
        },
        || local_side(ctx, &cipher_point, &ctlsock, since, progress),
    )?;
    view.check_live()?;

    local
        .list
        .seek(SeekFrom::Start(0))
        .ctx(|| "rewinding the local list")?;
    let diff = checksums::compare(&mut local.list, &mut remote_list.file)?;
    if local.tally.hardlinked > 0 {
        log::warn(format!(
            "{} hard-linked file(s) cannot be compared by ciphertext (gocryptfs -reverse encrypts them \
             differently in every mount): they are checked for presence and size only",
            local.tally.hardlinked
        ));
    }
    let diff = without(diff, &local.tally);
    let diff = check_hardlinked_sizes(&*remote, view.point(), &local.tally, diff)?;
    let budget =
        sample.unwrap_or_else(|| Budget::for_job(job.verify_sample_bytes, local.tally.data_bytes));
    let read = ReadBack {
        remote: &*remote,
        theirs: &remote_list,
        budget,
        progress,
    };
    let (diff, possession) = read_back(ctx, &read, &mut local, diff)?;
    // Tells the next backup which remote files to re-send by checksum.
    RepairList::save(&job.state_dir, &diff.changed)?;
    keep_or_forget_list(ctx, source.as_ref(), &mut local, &diff);
    // Names need the view's control socket; then the view can go while
    // the lists are stored.
    let decryptor = PathDecryptor::new(&ctlsock);
    let name = |encrypted: &String| plaintext_name(&decryptor, encrypted);
    let stats = VerifyStats {
        files: local.tally.files,
        hashed: local.tally.hashed,
        pending: local.tally.pending,
        hardlinked: local.tally.hardlinked,
        sampled: possession.read,
        sampled_bytes: possession.bytes,
        sample_rotation_runs: possession.rotation_runs,
        missing: diff.missing.iter().map(name).collect(),
        extra: diff.extra.iter().map(name).collect(),
        changed: diff.changed.iter().map(name).collect(),
    };
    pool::side_by_side(
        || {
            let theirs = (!remote_list.stored).then_some(remote_list.file);
            remote.store_checksum_lists(&id, local.list, theirs, KEPT_CHECKSUM_RUNS)
        },
        || view.unmount(),
    )?;
    Ok(Done {
        outcome: outcome_of(&diff),
        stats: StageStats::Verify(stats),
    })
}

/// What the possession check read.
struct Possession {
    read: usize,
    bytes: u64,
    rotation_runs: u64,
}

/// The possession check (sample.rs). Where the remote list came from the
/// server's own word (sha1 computed there), a sample of files/ is read back
/// through an sshfs mount and compared with the local list; what it finds
/// joins the differences. Where the remote list was made here, by reading
/// every remote byte (a local target, `remote_checksums: mount`), that read
/// was the check.
fn read_back(
    ctx: &Context,
    read: &ReadBack,
    local: &mut LocalList,
    mut diff: Diff,
) -> Result<(Diff, Possession)> {
    let (remote, budget) = (read.remote, read.budget);
    if !read.theirs.by_server {
        let everything = Possession {
            read: local.tally.files,
            bytes: local.tally.data_bytes,
            rotation_runs: 1,
        };
        return Ok((diff, everything));
    }
    if budget == Budget::Bytes(0) {
        log::warn(
            "verify.sample_bytes is 0: no remote file is read back, so verify takes the server's word for its data",
        );
        return Ok((
            diff,
            Possession {
                read: 0,
                bytes: 0,
                rotation_runs: 0,
            },
        ));
    }
    let state_dir = &ctx.job.state_dir;
    let selection = Selection::plan(
        SampleRotation::read(state_dir).as_ref(),
        sample::random_key()?,
        sample::random_key()?,
        budget,
        local.tally.data_bytes,
    );
    // Already reported files are not read again.
    let mut skip = local.tally.skip.clone();
    skip.extend(diff.missing.iter().chain(&diff.changed).cloned());
    // About the budget's bytes are read; how many files, the read tells.
    let expected = match budget {
        Budget::All => local.tally.data_bytes,
        Budget::Bytes(b) => b.min(local.tally.data_bytes),
    };
    let totals = Totals {
        files: None,
        bytes: Some(expected),
    };
    let phase = read.progress.phase("verify: read-back", totals);
    let chosen = sample::selected(&mut local.list, &selection, &skip)?;
    let found = read_sample(ctx, remote, &chosen, &phase)?;
    phase.finish();
    if let Err(e) = selection.next().write(state_dir) {
        log::warn(format!(
            "cannot keep where the read-back rotation stands: {e}"
        ));
    }
    log::debug(|| {
        format!(
            "read back {} remote files ({} bytes); every file within {} runs",
            found.read,
            found.bytes,
            selection.runs_per_rotation()
        )
    });
    diff.missing.extend(found.missing);
    diff.changed.extend(found.changed);
    diff.missing.sort();
    diff.changed.sort();
    let possession = Possession {
        read: found.read,
        bytes: found.bytes,
        rotation_runs: selection.runs_per_rotation(),
    };
    Ok((diff, possession))
}

/// Reads the sample back: over SFTP where the target is an SFTP account
/// (many files at a time), else, or where that fails, through the
/// target's path or an sshfs mount, one file after the other.
fn read_sample(
    ctx: &Context,
    remote: &dyn Target,
    chosen: &[(String, checksums::Sum)],
    phase: &Phase,
) -> Result<sample::Findings> {
    if let Some(ssh) = remote.sftp_reads() {
        match sample::read_back_over_sftp(ssh, chosen, phase) {
            Ok(found) => {
                log::debug(|| format!("verify: {} sampled file(s) read over SFTP", found.read));
                return Ok(found);
            }
            Err(e) if e.kind == Kind::Interrupted => return Err(e),
            Err(e) => log::debug(|| format!("verify: the sample read through sshfs: {e}")),
        }
    }
    let files = remote.read_back(&ctx.runtime("remote-read"))?;
    let found = sample::read_back(files.root(), chosen, phase)?;
    files.close()?;
    Ok(found)
}

/// What the possession check reads, and from where.
struct ReadBack<'a> {
    remote: &'a dyn Target,
    theirs: &'a RemoteSums,
    budget: Budget,
    progress: &'a Progress,
}

/// The last run's local list, when the source is as it was then and no
/// file of it may still be on its way to the target (pending).
fn reuse_kept_list(job: &Job, source: &SourceState, since: Option<i128>) -> Option<LocalList> {
    if fingerprint::changed_since(source, since) {
        return None;
    }
    let kept = verify_cache::reuse(&job.state_dir, source)?;
    Some(LocalList {
        list: kept.list,
        tally: Tally {
            files: kept.files,
            data_bytes: kept.data_bytes,
            hardlinked: kept.hardlinked.len(),
            skip: kept.hardlinked.iter().cloned().collect(),
            hardlinked_paths: kept.hardlinked,
            ..Tally::default()
        },
        reused: true,
    })
}

/// The local list: mounts the view while the source is fingerprinted; then
/// reuses the last list if the source is as it was then, else hashes the
/// view. The view is mounted either way: that proves the password and the
/// config still open the key, and its control socket names differences.
fn local_side(
    ctx: &Context,
    cipher_point: &Path,
    ctlsock: &Path,
    since: Option<i128>,
    progress: &Progress,
) -> Result<(crate::mount::Mount, LocalList, Option<SourceState>)> {
    let job = ctx.job;
    let (fingerprinted, view) = pool::join(
        || {
            let source = fingerprint::of_source(job);
            let kept = source.as_ref().and_then(|s| reuse_kept_list(job, s, since));
            (source, kept)
        },
        || crypt::mount_reverse(job, cipher_point, Some(ctlsock)),
    );
    let (source, kept) = fingerprinted.unwrap_or((None, None));
    let view = view?;
    if let Some(kept) = kept {
        // Said only now: with a wrong password the mount fails first.
        log::info(
            "the source has not changed since the last verify: its local checksums are reused",
        );
        return Ok((view, kept, source));
    }
    // The fingerprint was taken before this reads the view: a change in
    // between makes the kept list's fingerprint stale, never wrong.
    let local = local_list(ctx, view.point(), since, progress)?;
    Ok((view, local, source))
}

/// Keeps a list just hashed for the next verify when this one found no
/// difference. After a difference the next verify hashes the view again:
/// a list that was itself wrong must not be reused until the source
/// changes.
fn keep_or_forget_list(
    ctx: &Context,
    source: Option<&SourceState>,
    local: &mut LocalList,
    diff: &Diff,
) {
    let state_dir = &ctx.job.state_dir;
    match (source, local.reused, diff.is_empty()) {
        (_, _, false) => verify_cache::forget(state_dir),
        (Some(source), false, true) => {
            let counts = (local.tally.files, local.tally.data_bytes);
            let hardlinked = &local.tally.hardlinked_paths;
            verify_cache::keep(state_dir, source, &mut local.list, counts, hardlinked);
        }
        _ => {}
    }
}

fn outcome_of(diff: &Diff) -> Outcome {
    if diff.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Mismatch
    }
}

/// The local side: a sha1sum list in a scratch file, and its tally.
struct LocalList {
    list: File,
    tally: Tally,
    /// The last verify's list, reused (verify_cache.rs).
    reused: bool,
}

/// What hashing the local side counted, and what to skip.
#[derive(Default)]
struct Tally {
    files: usize,
    /// Bytes of every listed file (gocryptfs' own included).
    data_bytes: u64,
    hashed: usize,
    pending: usize,
    hardlinked: usize,
    /// Files whose content may differ for a known, harmless cause
    /// (pending, hard-linked).
    skip: HashSet<String>,
    /// Files that may be missing for a good reason: changed after the last
    /// backup started.
    pending_paths: HashSet<String>,
    /// The hard-linked ones among them, kept with a reused list.
    hardlinked_paths: Vec<String>,
}

/// Hashes the reverse view with the stamp cache, writing the list and a
/// new cache as it goes. Files changed after the last backup started differ
/// from the remote for a good reason: they are pending, not damage.
fn local_list(
    ctx: &Context,
    view: &Path,
    since: Option<i128>,
    progress: &Progress,
) -> Result<LocalList> {
    let job = ctx.job;
    let cache_path = ctx.state(SHA1_CACHE);
    let cache = Cache::load(&cache_path);
    // The last run's count: no walk ahead of the hashing for a total.
    let last_run = (cache.files > 0).then_some(Totals {
        files: Some(cache.files),
        bytes: Some(cache.bytes),
    });
    let phase = progress.phase("verify: hashing", last_run.unwrap_or_default());
    let mut new_cache = AtomicFile::create(&cache_path)?;
    let mut list = BufWriter::new(scratch_file(&job.state_dir, "verify-local")?);
    // When the config is kept outside the source, backup uploads it into
    // files/: check it like any other file, in its sorted place.
    let mut config = match job.config_in_source() {
        true => None,
        false => Some(checksums::hash_file(&job.gocryptfs_config)?),
    };
    let walk_start_ns = checksums::now_ns();
    let mut local = Tally::default();
    let write_error = |e: std::io::Error| Error::io("writing the local checksum list", e);
    checksums::hash_tree(view, Some(&cache), |file| {
        if file.rel.as_str() > REMOTE_CONFIG_NAME {
            write_config_line(&mut list, &mut config).map_err(write_error)?;
        }
        checksums::write_line(&mut list, &file.rel, &file.sum).map_err(write_error)?;
        if file.stamp.settled_before(walk_start_ns) {
            checksums::write_cache_line(&mut new_cache, &file)
                .map_err(|e| Error::io("writing the sha1 cache", e))?;
        }
        // gocryptfs' own files are checked like any other, but counted
        // like backup, snapshots and deep verify count: the user's files.
        let user_file = !crate::crypt::is_gocryptfs_metadata(&file.rel);
        phase.add(u64::from(user_file), file.stamp.size);
        local.files += usize::from(user_file);
        local.hashed += usize::from(file.read);
        local.data_bytes += file.stamp.size;
        let pending = since.is_some_and(|start| i128::from(file.stamp.changed_ns()) >= start);
        local.pending += usize::from(pending);
        local.hardlinked += usize::from(file.hardlinked);
        if file.hardlinked {
            local.hardlinked_paths.push(file.rel.clone());
        }
        if pending {
            local.pending_paths.insert(file.rel.clone());
        }
        if pending || file.hardlinked {
            local.skip.insert(file.rel);
        }
        Ok(())
    })?;
    phase.finish();
    drop(cache);
    new_cache.commit()?;
    write_config_line(&mut list, &mut config).map_err(write_error)?;
    Ok(LocalList {
        list: list.into_inner().map_err(|e| write_error(e.into_error()))?,
        tally: local,
        reused: false,
    })
}

fn write_config_line(list: &mut impl Write, config: &mut Option<Sum>) -> std::io::Result<()> {
    match config.take() {
        Some(sum) => checksums::write_line(list, REMOTE_CONFIG_NAME, &sum),
        None => Ok(()),
    }
}

/// The remote side's sha1sum list, always hashed in full.
/// Drops the differences that have a known, harmless cause: files changed
/// after the last backup started (pending), and the content of hard-linked
/// files (their ciphertext differs per mount). A hard-linked file that is
/// missing is still missing.
fn without(diff: Diff, tally: &Tally) -> Diff {
    let keep = |list: Vec<String>, skip: &HashSet<String>| {
        list.into_iter().filter(|p| !skip.contains(p)).collect()
    };
    Diff {
        missing: keep(diff.missing, &tally.pending_paths),
        extra: diff.extra,
        changed: keep(diff.changed, &tally.skip),
    }
}

/// Hard-linked files are not compared by content, but their size is
/// known: the ciphertext's size follows from the plaintext's. One listing
/// of files/, only when there are any.
fn check_hardlinked_sizes(
    remote: &dyn Target,
    view: &Path,
    tally: &Tally,
    mut diff: Diff,
) -> Result<Diff> {
    let linked: Vec<&String> = tally
        .hardlinked_paths
        .iter()
        .filter(|p| !tally.pending_paths.contains(*p))
        .collect();
    if linked.is_empty() {
        return Ok(diff);
    }
    let sizes: HashMap<String, u64> = remote
        .list_tree(FILES)?
        .into_iter()
        .filter(|e: &TreeEntry| e.kind == 'f')
        .map(|e| (e.path, e.size))
        .collect();
    for path in linked {
        let ours = std::fs::symlink_metadata(view.join(path)).map(|m| m.len());
        match (sizes.get(path.as_str()), ours) {
            (Some(theirs), Ok(ours)) if *theirs != ours => diff.changed.push(path.clone()),
            _ => {}
        }
    }
    diff.changed.sort();
    Ok(diff)
}

/// A plaintext path for the report where gocryptfs can decrypt it; for
/// gocryptfs' own files (diriv, long-name files) the decrypted directory
/// plus the file's name; else the encrypted path.
fn plaintext_name(decryptor: &PathDecryptor, encrypted: &str) -> String {
    if let Some(plain) = decryptor.decrypt(encrypted) {
        return plain;
    }
    let (dir, file) = encrypted.rsplit_once('/').unwrap_or(("", encrypted));
    let special =
        file == "gocryptfs.diriv" || file == REMOTE_CONFIG_NAME || file.ends_with(".name");
    match (special, dir.is_empty()) {
        (true, true) => file.to_string(),
        (true, false) => decryptor
            .decrypt(dir)
            .map(|d| format!("{d}/{file}"))
            .unwrap_or_else(|| encrypted.to_string()),
        (false, _) => encrypted.to_string(),
    }
}

/// verify --deep: forward-mount the local encrypted view and compare it with
/// the source, file content and symlink targets alike.
pub fn deep_verify(ctx: &Context, progress: &Progress) -> Result<Done> {
    let job = ctx.job;
    crypt::check_ready(job)?;
    let cipher_point = ctx.runtime("cipher");
    let plain_point = ctx.runtime("plain");
    crate::mount::prepare_point(&cipher_point)?;
    crate::mount::prepare_point(&plain_point)?;
    // The source's files are counted while the two layers mount.
    let (totals, view) = pool::join(
        || source_totals(&job.source, progress),
        || crypt::mount_reverse(job, &cipher_point, None),
    );
    let view = view?;
    let decrypted = crypt::mount_forward(job, view.point(), &plain_point)?;
    let phase = progress.phase("deep verify", totals.unwrap_or_default());
    let report = compare_trees(
        &job.source,
        decrypted.point(),
        !job.exclude.is_empty(),
        &phase,
    )?;
    phase.finish();
    decrypted.unmount()?;
    view.unmount()?;
    let outcome = outcome_of(&report.diff);
    Ok(Done {
        outcome,
        stats: StageStats::DeepVerify(DeepVerifyStats {
            files: report.files,
            missing: report.diff.missing,
            extra: report.diff.extra,
            changed: report.diff.changed,
        }),
    })
}

struct TreeReport {
    files: usize,
    diff: Diff,
}

/// Compares the decrypted view with the source, one directory of each at a
/// time; file pairs are hashed by the worker pool (decrypting through two
/// gocryptfs layers is CPU-bound, and one reader would use one core).
/// `missing` are source entries the view lacks (a missing directory is
/// named once, not with its contents); with exclude patterns these are
/// expected, so they are not reported (gocryptfs applies the patterns, we do
/// not second-guess it).
fn compare_trees(
    source: &Path,
    decrypted: &Path,
    has_excludes: bool,
    phase: &Phase,
) -> Result<TreeReport> {
    let mut diff = Diff::default();
    let mut files = 0;
    let mut changed_content = Vec::new();
    let walk = TwoTrees {
        source,
        decrypted,
        has_excludes,
    };
    pool::ordered(
        pool::cpu_threads(),
        checksums::WINDOW,
        |submit| walk.compare_dir("", &mut diff, submit),
        |rel: &String| {
            let same = checksums::hash_file(&source.join(rel))?
                == checksums::hash_file(&decrypted.join(rel))?;
            let size = std::fs::symlink_metadata(source.join(rel)).map_or(0, |m| m.len());
            Ok((same, size))
        },
        |rel, (same, size)| {
            phase.add(1, size);
            files += 1;
            if !same {
                changed_content.push(rel);
            }
            Ok(())
        },
    )?;
    diff.changed.extend(changed_content);
    diff.changed.sort();
    Ok(TreeReport { files, diff })
}

/// The regular files of the source and their bytes: what deep verify will
/// compare (without exclude patterns). A stat walk of local files, cheap
/// beside decrypting them; only when progress is shown.
fn source_totals(source: &Path, progress: &Progress) -> Totals {
    if !progress.shows() {
        return Totals::default();
    }
    let (mut files, mut bytes) = (0u64, 0u64);
    for entry in walkdir::WalkDir::new(source).follow_links(false) {
        let Ok(entry) = entry else {
            // Unreadable parts: no total rather than a wrong one.
            return Totals::default();
        };
        if entry.file_type().is_file() && entry.depth() > 0 {
            files += 1;
            bytes = bytes.saturating_add(entry.metadata().map_or(0, |m| m.len()));
        }
    }
    // The config kept in the source is no file of the view.
    if source.join(".gocryptfs.reverse.conf").is_file() {
        files = files.saturating_sub(1);
        let size = std::fs::metadata(source.join(".gocryptfs.reverse.conf")).map_or(0, |m| m.len());
        bytes = bytes.saturating_sub(size);
    }
    Totals {
        files: Some(files),
        bytes: Some(bytes),
    }
}

struct TwoTrees<'a> {
    source: &'a Path,
    decrypted: &'a Path,
    has_excludes: bool,
}

impl TwoTrees<'_> {
    /// Merges the sorted entries of one directory on both sides; files on
    /// both go to `submit` for hashing, directories on both are descended.
    fn compare_dir(
        &self,
        rel: &str,
        diff: &mut Diff,
        submit: &mut dyn FnMut(String) -> Result<()>,
    ) -> Result<()> {
        let ours = dir_entries(self.source, rel)?;
        let theirs = dir_entries(self.decrypted, rel)?;
        let (mut ours, mut theirs) = (ours.into_iter().peekable(), theirs.into_iter().peekable());
        loop {
            interrupt::check()?;
            let order = match (ours.peek(), theirs.peek()) {
                (None, None) => return Ok(()),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(a), Some(b)) => a.0.cmp(&b.0),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let (path, _) = ours.next().expect("peeked");
                    if !self.has_excludes {
                        diff.missing.push(path);
                    }
                }
                std::cmp::Ordering::Greater => diff.extra.push(theirs.next().expect("peeked").0),
                std::cmp::Ordering::Equal => {
                    let (path, our_kind) = ours.next().expect("peeked");
                    let (_, their_kind) = theirs.next().expect("peeked");
                    match (our_kind, their_kind) {
                        (a, b) if a != b => diff.changed.push(path),
                        (EntryKind::File, _) => submit(path)?,
                        (EntryKind::Dir, _) => self.compare_dir(&path, diff, submit)?,
                        (EntryKind::Symlink, _) => {
                            if !self.same_link(&path)? {
                                diff.changed.push(path);
                            }
                        }
                        (EntryKind::Other, _) => {}
                    }
                }
            }
        }
    }

    fn same_link(&self, rel: &str) -> Result<bool> {
        let ours =
            std::fs::read_link(self.source.join(rel)).ctx(|| format!("reading link {rel}"))?;
        let theirs = std::fs::read_link(self.decrypted.join(rel))
            .ctx(|| format!("reading decrypted link {rel}"))?;
        Ok(ours == theirs)
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// The entries of one directory (`rel` below `root`), sorted by name, as
/// paths relative to `root`.
fn dir_entries(root: &Path, rel: &str) -> Result<Vec<(String, EntryKind)>> {
    let dir = root.join(rel);
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(&dir).ctx(|| format!("reading {}", dir.display()))? {
        let entry = entry.ctx(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if rel.is_empty() && name == ".gocryptfs.reverse.conf" {
            continue;
        }
        let t = entry
            .file_type()
            .ctx(|| format!("reading {}", entry.path().display()))?;
        let kind = if t.is_file() {
            EntryKind::File
        } else if t.is_dir() {
            EntryKind::Dir
        } else if t.is_symlink() {
            EntryKind::Symlink
        } else {
            EntryKind::Other
        };
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        entries.push((path, kind));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}
