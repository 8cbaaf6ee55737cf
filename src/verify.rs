//! The restore tests.
//!
//! `verify`: sha1 of every local encrypted file (read through the reverse
//! view, cached by file stamp) against sha1 of every file in the remote
//! `files/`, computed on the server over ssh (nothing is downloaded) or read
//! through the sshfs mount. Both lists are kept in the remote `checksums/`.
//!
//! `verify --deep`: decrypt the local encrypted view again with a forward
//! gocryptfs mount and compare it with the plaintext source.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use crate::checksums::{self, Cache, Diff, Sum};
use crate::config::{Job, RemoteChecksums, Target};
use crate::crypt::{self, PathDecryptor, REMOTE_CONFIG_NAME};
use crate::error::{Error, IoContext, Result};
use crate::exec::scratch_file;
use crate::fingerprint::{self, SourceState};
use crate::remote::{self, CHECKSUMS, FILES, Remote, Ssh, quote_path};
use crate::run::{Context, Done};
use crate::sample::{self, Budget, Selection};
use crate::state::{LastBackup, RepairList, SHA1_CACHE, SampleRotation};
use crate::stats::{DeepVerifyStats, StageStats, VerifyStats};
use crate::status::{self, AtomicFile, Outcome};
use crate::{interrupt, log, pool, verify_cache};

/// How many verify runs keep their checksum lists on the target.
const KEPT_CHECKSUM_RUNS: usize = 10;

/// `sample`: `verify --sample`, else the job's budget (sample.rs).
pub fn verify(ctx: &Context, sample: Option<Budget>) -> Result<Done> {
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
            let remote = remote::open(job, needs_mount(job), &ctx.runtime("remote"))?;
            let list = remote_list(ctx, &remote, &id)?;
            Ok((remote, list))
        },
        || local_side(ctx, &cipher_point, &ctlsock, since),
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
             differently in every mount); verify --deep checks them",
            local.tally.hardlinked
        ));
    }
    let diff = without(diff, &local.tally.skip);
    let budget =
        sample.unwrap_or_else(|| Budget::for_job(job.verify_sample_bytes, local.tally.data_bytes));
    let (diff, possession) = read_back(ctx, &remote, &mut local, diff, budget)?;
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
        || store_lists(&remote, &id, local.list, remote_list),
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
    remote: &Remote,
    local: &mut LocalList,
    mut diff: Diff,
    budget: Budget,
) -> Result<(Diff, Possession)> {
    let Remote::Shell { ssh } = remote else {
        let everything = Possession {
            read: local.tally.files,
            bytes: local.tally.data_bytes,
            rotation_runs: 1,
        };
        return Ok((diff, everything));
    };
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
    let point = ctx.runtime("remote");
    crate::mount::prepare_point(&point)?;
    let mount = ssh.mount(&point)?;
    // Already reported files are not read again.
    let mut skip = local.tally.skip.clone();
    skip.extend(diff.missing.iter().chain(&diff.changed).cloned());
    let found = sample::read_back(&mut local.list, &mount.pinned(), &selection, &skip)?;
    mount.unmount()?;
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
    let local = local_list(ctx, view.point(), since)?;
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

fn needs_mount(job: &Job) -> bool {
    matches!(&job.target, Target::Sftp(s) if s.remote_checksums == RemoteChecksums::Mount)
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
    /// Files whose difference has a known, harmless cause.
    skip: HashSet<String>,
    /// The hard-linked ones among them, kept with a reused list.
    hardlinked_paths: Vec<String>,
}

/// Hashes the reverse view with the stamp cache, writing the list and a
/// new cache as it goes. Files changed after the last backup started differ
/// from the remote for a good reason: they are pending, not damage.
fn local_list(ctx: &Context, view: &Path, since: Option<i128>) -> Result<LocalList> {
    let job = ctx.job;
    let cache_path = ctx.state(SHA1_CACHE);
    let cache = Cache::load(&cache_path);
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
        local.files += usize::from(!crate::crypt::is_gocryptfs_metadata(&file.rel));
        local.hashed += usize::from(file.read);
        local.data_bytes += file.stamp.size;
        let pending = since.is_some_and(|start| i128::from(file.stamp.changed_ns()) >= start);
        local.pending += usize::from(pending);
        local.hardlinked += usize::from(file.hardlinked);
        if file.hardlinked {
            local.hardlinked_paths.push(file.rel.clone());
        }
        if pending || file.hardlinked {
            local.skip.insert(file.rel);
        }
        Ok(())
    })?;
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
struct RemoteList {
    file: File,
    /// Already kept in checksums/ by the server.
    stored: bool,
}

fn remote_list(ctx: &Context, remote: &Remote, id: &str) -> Result<RemoteList> {
    let file = scratch_file(&ctx.job.state_dir, "verify-remote")?;
    match remote {
        Remote::Path { root, .. } => {
            let mut list = BufWriter::new(file);
            checksums::hash_tree(&root.join(FILES), None, |f| {
                checksums::write_line(&mut list, &f.rel, &f.sum)
                    .map_err(|e| Error::io("writing the remote checksum list", e))
            })?;
            let file = list
                .into_inner()
                .map_err(|e| Error::io("writing the remote checksum list", e.into_error()))?;
            Ok(RemoteList {
                file,
                stored: false,
            })
        }
        Remote::Shell { ssh } => Ok(RemoteList {
            file: remote_list_over_ssh(ssh, id, file)?,
            stored: true,
        }),
    }
}

/// sha1 on the server: one ssh command. The server keeps the sorted list
/// in checksums/ and sends it; nothing else is downloaded.
fn remote_list_over_ssh(ssh: &Ssh, id: &str, into: File) -> Result<File> {
    let root = quote_path(&ssh.sftp().path);
    let command = format!("cd {root}/{FILES} && {}", remote_hash_script(id));
    // A day bounds a server that hangs while answering keepalives.
    let cmd = ssh
        .command(&command)
        .stdout_to(into)
        .timeout(Duration::from_secs(24 * 3600));
    ssh.run_checked(cmd, "computing remote checksums")?
        .into_stdout()
}

/// The script that hashes files/ (the current dir) into `sha1sum` format,
/// sorted, keeps it as checksums/<id>.remote.sha1 and prints it.
///
/// - `openssl dgst -sha1` where the server has it (SHA-NI: about twice
///   sha1sum's speed here), in sha1sum's format by `sed`; only for paths
///   of the characters encrypted names use, as openssl does not escape a
///   newline in a name. Everything else goes to sha1sum.
/// - Several processes when the server has coreutils' nproc and stdbuf:
///   line-buffered, each output line is one write and cannot interleave
///   with another's (a damaged line would fail to parse anyway).
/// - Every list goes to a file first: `| sort` would hide a failure.
/// - Sorted on field 3 (`./path`), the byte order of our own list.
fn remote_hash_script(id: &str) -> String {
    let dir = format!("../{CHECKSUMS}/.{id}.remote");
    let kept = format!("../{CHECKSUMS}/{id}.remote.sha1");
    let plain = "'*[!A-Za-z0-9._/-]*'";
    format!(
        "set -e; export LC_ALL=C; mkdir -p ../{CHECKSUMS}; \
         in_parallel() {{ if command -v nproc >/dev/null 2>&1 && command -v stdbuf >/dev/null 2>&1; \
         then xargs -0r -P \"$(nproc)\" -n 256 stdbuf -oL \"$@\"; else xargs -0r \"$@\"; fi; }}; \
         if [ \"$(printf '' | openssl dgst -sha1 -r 2>/dev/null)\" = '{EMPTY_SHA1} *stdin' ]; then \
         find . -type f ! -path {plain} -print0 | in_parallel openssl dgst -sha1 -r > {dir}.openssl; \
         sed 's/^\\([0-9a-f]\\{{40\\}}\\) \\*/\\1  /' {dir}.openssl > {dir}.unsorted; rm -f {dir}.openssl; \
         find . -type f -path {plain} -print0 | in_parallel sha1sum >> {dir}.unsorted; \
         else find . -type f -print0 | in_parallel sha1sum > {dir}.unsorted; fi; \
         sort -t ' ' -k 3 {dir}.unsorted > {dir}.sha1.tmp; rm -f {dir}.unsorted; \
         mv -f {dir}.sha1.tmp {kept}; cat {kept}"
    )
}

/// sha1 of no bytes, as `openssl dgst -sha1 -r` prints it for empty stdin.
const EMPTY_SHA1: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";

/// Drops the paths whose difference has a known, harmless cause.
fn without(diff: Diff, skip: &HashSet<String>) -> Diff {
    let keep = |list: Vec<String>| list.into_iter().filter(|p| !skip.contains(p)).collect();
    Diff {
        missing: keep(diff.missing),
        extra: diff.extra,
        changed: keep(diff.changed),
    }
}

/// Keeps both lists in the remote checksums/ dir, as the seed did. The
/// lists of the last KEPT_CHECKSUM_RUNS verify runs are enough to see when
/// damage appeared; older ones would only grow without bound.
fn store_lists(remote: &Remote, id: &str, local: File, theirs: RemoteList) -> Result<()> {
    match remote {
        Remote::Shell { ssh } => store_lists_over_ssh(ssh, id, local),
        Remote::Path { .. } => store_lists_on_path(remote, id, local, theirs),
    }
}

/// One ssh command: the local list (the server stored its own) goes up
/// on stdin, then the lists of older runs are removed.
fn store_lists_over_ssh(ssh: &Ssh, id: &str, local: File) -> Result<()> {
    let dir = quote_path(&ssh.sftp().path.join(CHECKSUMS));
    let command = format!(
        "cd {dir} && cat > .{id}.local.sha1.tmp && mv -f .{id}.local.sha1.tmp {id}.local.sha1 && \
         for run in $(ls -1A | grep -E '^[0-9]{{8}}T[0-9]{{6}}Z[.](local|remote)[.]sha1$' | sed 's/[.].*//' \
         | sort -ru | tail -n +{}); do rm -f \"$run.local.sha1\" \"$run.remote.sha1\"; done",
        KEPT_CHECKSUM_RUNS + 1
    );
    let mut local = local;
    local
        .seek(SeekFrom::Start(0))
        .ctx(|| "rewinding the local list")?;
    let cmd = ssh
        .command(&command)
        .stdin(local)
        .timeout(remote::SHORT_COMMAND * 12);
    ssh.run_checked(cmd, "storing the checksum lists")
        .map(|_| ())
}

fn store_lists_on_path(remote: &Remote, id: &str, local: File, theirs: RemoteList) -> Result<()> {
    remote.write_file_atomic_from(&format!("{CHECKSUMS}/{id}.local.sha1"), local)?;
    if !theirs.stored {
        remote.write_file_atomic_from(&format!("{CHECKSUMS}/{id}.remote.sha1"), theirs.file)?;
    }
    let names = remote.list_names(CHECKSUMS)?;
    let mut runs: Vec<&str> = names
        .iter()
        .filter(|n| !n.starts_with('.'))
        .filter_map(|n| n.split('.').next())
        .collect();
    runs.dedup();
    let old = runs.len().saturating_sub(KEPT_CHECKSUM_RUNS);
    let stale: Vec<String> = runs[..old]
        .iter()
        .flat_map(|run| ["local", "remote"].map(|side| format!("{CHECKSUMS}/{run}.{side}.sha1")))
        .collect();
    remote.remove(&stale)?;
    Ok(())
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
pub fn deep_verify(ctx: &Context) -> Result<Done> {
    let job = ctx.job;
    crypt::check_ready(job)?;
    let cipher_point = ctx.runtime("cipher");
    let plain_point = ctx.runtime("plain");
    crate::mount::prepare_point(&cipher_point)?;
    crate::mount::prepare_point(&plain_point)?;
    let view = crypt::mount_reverse(job, &cipher_point, None)?;
    let decrypted = crypt::mount_forward(job, view.point(), &plain_point)?;
    let report = compare_trees(&job.source, decrypted.point(), !job.exclude.is_empty())?;
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
fn compare_trees(source: &Path, decrypted: &Path, has_excludes: bool) -> Result<TreeReport> {
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
            Ok(checksums::hash_file(&source.join(rel))?
                == checksums::hash_file(&decrypted.join(rel))?)
        },
        |rel, same| {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's script lists a tree exactly as our own hashing does,
    /// odd names included, with openssl and with sha1sum alone.
    #[test]
    fn the_remote_hash_script_agrees_with_our_list() {
        let root = std::env::temp_dir().join(format!("ciphersync-rhash-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let files = root.join(FILES);
        std::fs::create_dir_all(files.join("Ab/dir with space")).unwrap();
        for (i, name) in [
            "Ab/Cd_-x.y",
            "gocryptfs.diriv",
            "odd\nname",
            "back\\slash",
            "ünï",
            "Ab/dir with space/f",
            "-dash",
        ]
        .iter()
        .enumerate()
        {
            std::fs::write(files.join(name), vec![i as u8; 1000 * i]).unwrap();
        }
        let mut ours = Vec::new();
        checksums::hash_tree(&files, None, |f| {
            checksums::write_line(&mut ours, &f.rel, &f.sum).map_err(|e| Error::io("list", e))
        })
        .unwrap();

        // A PATH with every tool the script uses but openssl.
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let which = |tool: &str| {
            let mut out = crate::exec::Cmd::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .run()
                .unwrap();
            out.success()
                .then(|| out.stdout_string().unwrap().trim().to_string())
        };
        for tool in [
            "mkdir", "xargs", "nproc", "stdbuf", "find", "sed", "sort", "rm", "mv", "cat",
            "sha1sum",
        ] {
            let found = which(tool).unwrap_or_else(|| panic!("{tool} is missing"));
            std::os::unix::fs::symlink(found, bin.join(tool)).unwrap();
        }
        let has_openssl = which("openssl").is_some();
        assert!(
            has_openssl || std::env::var_os("CI").is_none(),
            "openssl is missing in CI"
        );
        for path_prefix in ["", &format!("PATH={}; ", bin.display())] {
            let script = format!("{path_prefix}{}", remote_hash_script("20261129T030000Z"));
            let mut out = crate::exec::Cmd::new("sh")
                .arg("-c")
                .arg(&script)
                .cwd(&files)
                .run()
                .unwrap();
            assert!(out.success(), "{path_prefix}: {}", out.stderr);
            let listed = out.stdout_string().unwrap();
            assert_eq!(listed, String::from_utf8_lossy(&ours), "{path_prefix}");
            let kept = root.join(CHECKSUMS).join("20261129T030000Z.remote.sha1");
            assert_eq!(std::fs::read(kept).unwrap(), ours);
            let left: Vec<_> = std::fs::read_dir(root.join(CHECKSUMS)).unwrap().collect();
            assert_eq!(left.len(), 1, "temp files left: {left:?}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
