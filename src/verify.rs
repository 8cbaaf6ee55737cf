//! The restore tests.
//!
//! `verify`: sha1 of every local encrypted file (read through the reverse
//! view, cached by file stamp) against sha1 of every file in the remote
//! `files/`, computed on the server over ssh (nothing is downloaded) or read
//! through the sshfs mount. Both lists are kept in the remote `checksums/`.
//!
//! `verify --deep`: decrypt the local encrypted view again with a forward
//! gocryptfs mount and compare it with the plaintext source.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::checksums::{self, Cache, Diff, List, Stamp};
use crate::config::{Job, RemoteChecksums, Target};
use crate::crypt::{self, PathDecryptor, REMOTE_CONFIG_NAME};
use crate::error::{IoContext, Result};
use crate::remote::{self, CHECKSUMS, FILES, Remote, Ssh, quote_path};
use crate::run::{Context, Done};
use crate::status::{self, Outcome};
use crate::sync::REPAIR_LIST;
use crate::{interrupt, log};

const CACHE_FILE: &str = "sha1-cache.tsv";
/// How many verify runs keep their checksum lists on the target.
const KEPT_CHECKSUM_RUNS: usize = 10;

pub fn verify(ctx: &Context) -> Result<Done> {
    let job = ctx.job;
    crypt::check_ready(job)?;
    let cipher_point = ctx.runtime("cipher");
    crate::mount::prepare_point(&cipher_point)?;
    let ctlsock = ctx.runtime("ctl.sock");
    // The server hashes its copy while we hash ours.
    let ((remote, remote_list), (view, local)) = crate::run::side_by_side(
        || {
            let remote = remote::open(job, needs_mount(job), &ctx.runtime("remote"))?;
            let list = remote_list(&remote)?;
            Ok((remote, list))
        },
        || {
            let view = crypt::mount_reverse(job, &cipher_point, Some(&ctlsock))?;
            let local = local_list(ctx, view.point())?;
            Ok((view, local))
        },
    )?;
    view.check_live()?;

    let diff = checksums::compare(&local.list, &remote_list);
    let pending = changed_since_last_backup(ctx, &local.stamps);
    if !local.hardlinked.is_empty() {
        log::warn(format!(
            "{} hard-linked file(s) cannot be compared by ciphertext (gocryptfs -reverse encrypts them \
             differently in every mount); verify --deep checks them",
            local.hardlinked.len()
        ));
    }
    let skip: BTreeSet<&String> = pending.iter().chain(&local.hardlinked).collect();
    let diff = without(diff, &skip);
    store_lists(ctx, &remote, &local.list, &remote_list)?;
    save_repair_list(ctx, &diff)?;

    let decryptor = PathDecryptor::new(&ctlsock);
    let name = |encrypted: &String| plaintext_name(&decryptor, encrypted);
    let outcome = outcome_of(&diff);
    Ok(Done {
        outcome,
        stats: json!({
            "files": local.list.len(),
            "hashed": local.hashed,
            "pending": pending.len(),
            "hardlinked": local.hardlinked.len(),
            "missing": diff.missing.iter().map(name).collect::<Vec<_>>(),
            "extra": diff.extra.iter().map(name).collect::<Vec<_>>(),
            "changed": diff.changed.iter().map(name).collect::<Vec<_>>(),
        }),
    })
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

struct LocalList {
    list: List,
    stamps: HashMap<String, Stamp>,
    hashed: usize,
    hardlinked: BTreeSet<String>,
}

/// The local side, hashed through the reverse view with the stamp cache.
fn local_list(ctx: &Context, view: &Path) -> Result<LocalList> {
    let cache_path = ctx.state(CACHE_FILE);
    let mut cache = Cache::load(&cache_path);
    let checksums::Hashed {
        mut list,
        stamps,
        read: hashed,
        hardlinked,
    } = checksums::hash_tree(view, Some(&mut cache))?;
    cache.save(&cache_path)?;
    // When the config is kept outside the source, backup uploads it into
    // files/: check it like any other file.
    let job = ctx.job;
    if !job.config_in_source() {
        list.insert(
            REMOTE_CONFIG_NAME.into(),
            checksums::hash_file(&job.gocryptfs_config)?,
        );
    }
    Ok(LocalList {
        list,
        stamps,
        hashed,
        hardlinked,
    })
}

/// The remote side, always hashed in full.
fn remote_list(remote: &Remote) -> Result<List> {
    match remote {
        Remote::Path { root, .. } => Ok(checksums::hash_tree(&root.join(FILES), None)?.list),
        Remote::Shell { ssh } => remote_list_over_ssh(ssh),
    }
}

/// `sha1sum` on the server: one ssh command, nothing downloaded but the list.
fn remote_list_over_ssh(ssh: &Ssh) -> Result<List> {
    let files = quote_path(&ssh.sftp().path.join(FILES));
    // Several sha1sum processes when the server has coreutils' nproc and
    // stdbuf: line-buffered, each output line is one write and cannot
    // interleave with another's (a damaged line would fail to parse anyway).
    let command = format!(
        "cd {files} && export LC_ALL=C && if command -v nproc >/dev/null 2>&1 && command -v stdbuf >/dev/null 2>&1; \
         then find . -type f -print0 | xargs -0r -P \"$(nproc)\" -n 64 stdbuf -oL sha1sum; \
         else find . -type f -print0 | xargs -0r sha1sum; fi"
    );
    // A day bounds a server that hangs while answering keepalives.
    let mut out = ssh.run(
        &command,
        "computing remote checksums",
        Duration::from_secs(24 * 3600),
    )?;
    if !out.success() {
        return Err(remote::remote_failure(ssh, &out, "sha1sum failed"));
    }
    checksums::parse_sha1sum(out.stdout_reader()?)
}

/// Files whose local copy changed after the last backup started differ from
/// the remote for a good reason: they are pending, not damage.
fn changed_since_last_backup(ctx: &Context, stamps: &HashMap<String, Stamp>) -> Vec<String> {
    let Some(since) = last_backup_start(ctx) else {
        return Vec::new();
    };
    stamps
        .iter()
        .filter(|(_, s)| s.mtime_ns.max(s.ctime_ns) >= since)
        .map(|(rel, _)| rel.clone())
        .collect()
}

fn last_backup_start(ctx: &Context) -> Option<i128> {
    crate::sync::last_backup_start_ns(&ctx.job.state_dir)
}

/// Drops the paths whose difference has a known, harmless cause.
fn without(diff: Diff, skip: &BTreeSet<&String>) -> Diff {
    let keep = |list: Vec<String>| list.into_iter().filter(|p| !skip.contains(p)).collect();
    Diff {
        missing: keep(diff.missing),
        extra: diff.extra,
        changed: keep(diff.changed),
    }
}

/// Keeps both lists in the remote checksums/ dir, as the seed did.
fn store_lists(ctx: &Context, remote: &Remote, local: &List, theirs: &List) -> Result<()> {
    let id = status::snapshot_id(ctx.started_at);
    remote.write_file_atomic(
        &format!("{CHECKSUMS}/{id}.local.sha1"),
        checksums::format_sha1sum(local).as_bytes(),
    )?;
    remote.write_file_atomic(
        &format!("{CHECKSUMS}/{id}.remote.sha1"),
        checksums::format_sha1sum(theirs).as_bytes(),
    )?;
    // The lists of the last KEPT_CHECKSUM_RUNS verify runs are enough to see
    // when damage appeared; older ones would only grow without bound.
    let names = remote.list_names(CHECKSUMS)?;
    let mut runs: Vec<&str> = names.iter().filter_map(|n| n.split('.').next()).collect();
    runs.dedup();
    let old = runs.len().saturating_sub(KEPT_CHECKSUM_RUNS);
    let stale: Vec<String> = runs[..old]
        .iter()
        .flat_map(|run| ["local", "remote"].map(|side| format!("{CHECKSUMS}/{run}.{side}.sha1")))
        .collect();
    remote.remove(&stale)?;
    Ok(())
}

/// Tells the next backup which remote files to re-send by checksum.
fn save_repair_list(ctx: &Context, diff: &Diff) -> Result<()> {
    let path = ctx.state(REPAIR_LIST);
    if diff.changed.is_empty() {
        let _ = std::fs::remove_file(&path);
        return Ok(());
    }
    let mut bytes = Vec::new();
    for rel in &diff.changed {
        bytes.extend_from_slice(rel.as_bytes());
        bytes.push(0);
    }
    status::write_atomic(&path, &bytes)
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
        stats: json!({
            "files": report.files,
            "missing": report.diff.missing,
            "extra": report.diff.extra,
            "changed": report.diff.changed,
        }),
    })
}

struct TreeReport {
    files: usize,
    diff: Diff,
}

/// Compares the decrypted view with the source. `missing` are source entries
/// the view lacks; with exclude patterns these are expected, so they are not
/// reported (gocryptfs applies the patterns, we do not second-guess it).
fn compare_trees(source: &Path, decrypted: &Path, has_excludes: bool) -> Result<TreeReport> {
    let theirs = entries(decrypted)?;
    let ours = entries(source)?;
    // Files on both sides are hashed by the worker pool: decrypting through
    // two gocryptfs layers is CPU-bound, and one reader would use one core.
    let both: Vec<String> = theirs
        .iter()
        .filter(|(rel, kind)| **kind == EntryKind::File && ours.get(*rel) == Some(&EntryKind::File))
        .map(|(rel, _)| rel.clone())
        .collect();
    let (source_sums, decrypted_sums) = (
        checksums::hash_files(source, &both)?,
        checksums::hash_files(decrypted, &both)?,
    );
    let mut diff = Diff::default();
    for (rel, kind) in &theirs {
        interrupt::check()?;
        match ours.get(rel) {
            None => diff.extra.push(rel.clone()),
            Some(our_kind) if our_kind != kind => diff.changed.push(rel.clone()),
            Some(EntryKind::File) => {
                if source_sums.get(rel) != decrypted_sums.get(rel) {
                    diff.changed.push(rel.clone());
                }
            }
            Some(EntryKind::Symlink) => {
                let a =
                    std::fs::read_link(source.join(rel)).ctx(|| format!("reading link {rel}"))?;
                let b = std::fs::read_link(decrypted.join(rel))
                    .ctx(|| format!("reading decrypted link {rel}"))?;
                if a != b {
                    diff.changed.push(rel.clone());
                }
            }
            Some(_) => {}
        }
    }
    if !has_excludes {
        diff.missing = ours
            .keys()
            .filter(|rel| !theirs.contains_key(*rel))
            .cloned()
            .collect();
    }
    Ok(TreeReport {
        files: both.len(),
        diff,
    })
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

fn entries(root: &Path) -> Result<std::collections::BTreeMap<String, EntryKind>> {
    let mut map = std::collections::BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
        interrupt::check()?;
        let entry = entry.map_err(|e| checksums::walk_error(root, e))?;
        let rel = checksums::relative(root, entry.path());
        if rel == ".gocryptfs.reverse.conf" {
            continue;
        }
        let t = entry.file_type();
        let kind = if t.is_file() {
            EntryKind::File
        } else if t.is_dir() {
            EntryKind::Dir
        } else if t.is_symlink() {
            EntryKind::Symlink
        } else {
            EntryKind::Other
        };
        map.insert(rel, kind);
    }
    Ok(map)
}
