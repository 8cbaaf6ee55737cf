//! Sealed history for an append-only account (`serve --seal`, run by root
//! from a timer).
//!
//! Sealing happens in place, by ownership, so that restore and `restore
//! --snapshot` read sealed runs exactly where they always were:
//!
//! - the account's root, `records/`, `snapshots/` and `metadata/` become
//!   root's, group the account's (its own group), mode 1770: the account
//!   still creates entries there (new runs), but the sticky bit keeps it
//!   from deleting or renaming any entry it does not own;
//! - a finished run's record (`records/<id>.rec`) and every snapshot dir
//!   and metadata dir (`metadata/<id>/`, the encrypted owners, ACLs, xattrs
//!   and special files that restore applies) with an id up to the newest
//!   record's (its own, and those of interrupted runs before it) become
//!   root's, group the account's, read-only (files 0440, directories 0550):
//!   the account can read them and can no longer delete, rename, truncate,
//!   overwrite or chmod them, over SFTP, rsync or anything else. A backup
//!   writes the mirror, then `metadata/<id>/`, then the snapshot dir's last
//!   touches, then the record (sync.rs): a dir with an id up to a record's
//!   is complete, or belongs to a run that was interrupted and never
//!   writes there again (each run takes a new, later id);
//! - `files/` and `checksums/` stay the account's: the mirror changes on
//!   every run, and `checksums/` holds the lists the last few verifies
//!   kept of the mirror as it was (verify itself deletes the older ones),
//!   not history that restore reads.
//!
//! Every directory is opened with O_NOFOLLOW, made root's and read-only
//! before it is listed (the account cannot change it under us), and a
//! hard-linked file is replaced by a root-owned copy (so that sealing
//! never takes over an inode the account also reaches elsewhere). A record
//! whose id lies more than a day in the future is not trusted as "the
//! newest run" (it would seal a run still in progress).
//!
//! `keep_last`/`keep_days` apply the client's retention rule
//! (snapshots::plan_prune) to the sealed runs, and remove metadata dirs as
//! the client's prune does (metadata::prune_dirs): those of the removed
//! runs and of unfinished runs older than the oldest run kept. The marker
//! file [`APPEND_ONLY_MARKER`] in the root tells a client what the server
//! keeps.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, User, fchown, fchownat};

use super::ServeArgs;
use super::inserted;
use super::tree::{Root, kind_of};
use crate::config::Retention;
use crate::error::{Error, Kind, Result};
use crate::metadata::DIR as METADATA;
use crate::status::parse_snapshot_id;
use crate::target::{RECORDS, SNAPSHOTS, Target};

/// The file in an append-only account's root that says so (root's,
/// read-only): `ciphersync-server 1`, `append-only yes`, `keep-last N`,
/// `keep-days N` (or `all`).
pub const APPEND_ONLY_MARKER: &str = "APPEND-ONLY";

const SEALED_FILE: u32 = 0o440;
const SEALED_DIR: u32 = 0o550;
/// A snapshot dir being sealed: root only, until its whole tree is done.
const SEALING_DIR: u32 = 0o500;
const SHARED_DIR: u32 = 0o1770;

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);
const FILE_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_CLOEXEC);

/// What one `serve --seal` did.
#[derive(Debug, Default)]
pub struct SealReport {
    pub records: usize,
    pub snapshot_dirs: usize,
    pub metadata_dirs: usize,
    pub pruned_records: Vec<String>,
    pub pruned_dirs: Vec<String>,
    pub pruned_metadata: Vec<String>,
    /// Entries left as they were, with why.
    pub skipped: Vec<String>,
    /// Entries the account put behind sealed history, moved into
    /// `refused/` (inserted.rs).
    pub refused: Vec<String>,
}

impl SealReport {
    /// Adds what a later pass of the same seal run did.
    pub fn absorb(&mut self, other: SealReport) {
        self.records += other.records;
        self.snapshot_dirs += other.snapshot_dirs;
        self.metadata_dirs += other.metadata_dirs;
        self.pruned_records.extend(other.pruned_records);
        self.pruned_dirs.extend(other.pruned_dirs);
        self.pruned_metadata.extend(other.pruned_metadata);
        self.refused.extend(other.refused);
        for why in other.skipped {
            if !self.skipped.contains(&why) {
                self.skipped.push(why);
            }
        }
    }

    pub fn line(&self) -> String {
        let mut line = format!(
            "sealed {} records, {} snapshot dirs and {} metadata dirs; \
             retention removed {} records, {} snapshot dirs and {} metadata dirs",
            self.records,
            self.snapshot_dirs,
            self.metadata_dirs,
            self.pruned_records.len(),
            self.pruned_dirs.len(),
            self.pruned_metadata.len()
        );
        if !self.refused.is_empty() {
            line.push_str(&format!(
                "; refused {} entries behind sealed history, moved to {}/: {}",
                self.refused.len(),
                inserted::REFUSED_DIR,
                self.refused.join(", ")
            ));
        }
        if !self.skipped.is_empty() {
            line.push_str(&format!(
                "; left {} entries alone (first: {})",
                self.skipped.len(),
                self.skipped[0]
            ));
        }
        line
    }
}

fn errno(what: &str, e: Errno) -> Error {
    Error::new(Kind::Io, format!("{what}: {}", e.desc()))
}

struct Owner {
    uid: Uid,
    gid: Gid,
}

/// `serve --seal`: prepares the layout, seals finished runs, applies the
/// server's retention.
pub fn seal(args: &ServeArgs) -> Result<SealReport> {
    if !Uid::effective().is_root() {
        return Err(Error::usage(
            "serve --seal must run as root: sealed runs become root's",
        ));
    }
    let name = args.account.as_deref().unwrap_or_default();
    let user = User::from_name(name)
        .map_err(|e| errno(&format!("looking up the account {name}"), e))?
        .ok_or_else(|| Error::usage(format!("no such account: {name}")))?;
    if user.uid.is_root() {
        return Err(Error::usage("the account must not be root"));
    }
    let owner = Owner {
        uid: user.uid,
        gid: user.gid,
    };
    let root = Root::open(args.root())?;
    let retention = Retention {
        keep_last: args.keep_last,
        keep_days: args.keep_days,
    };
    prepare(&root, &owner, &retention)?;
    let mut report = SealReport::default();
    let records = root.dir_at(&root.fd, &[RECORDS.to_string()], RECORDS)?;
    let snapshots = root.dir_at(&root.fd, &[SNAPSHOTS.to_string()], SNAPSHOTS)?;
    let metadata = root.dir_at(&root.fd, &[METADATA.to_string()], METADATA)?;
    // What the account put behind sealed history goes first (inserted.rs).
    if let Some(until) = inserted::sealed_until(&records, &record_ids(&records)?) {
        for (dir, what) in [
            (&records, RECORDS),
            (&snapshots, SNAPSHOTS),
            (&metadata, METADATA),
        ] {
            for name in names(dir, what)? {
                if inserted::is_inserted(dir, &name, &until) {
                    report
                        .refused
                        .push(inserted::refuse(&root, dir, what, &name)?);
                }
            }
        }
    }
    let record_ids = record_ids(&records)?;
    let Some(newest) = record_ids.last().cloned() else {
        return Ok(report);
    };
    // Snapshot and metadata dirs first: a record is sealed only once the
    // runs it needs are.
    let dir_ids = run_ids(&snapshots, SNAPSHOTS)?;
    for id in dir_ids.iter().filter(|id| **id <= newest) {
        if seal_tree(&snapshots, SNAPSHOTS, id, &owner, &mut report)? {
            report.snapshot_dirs += 1;
        }
    }
    let metadata_ids = run_ids(&metadata, METADATA)?;
    for id in metadata_ids.iter().filter(|id| **id <= newest) {
        if seal_tree(&metadata, METADATA, id, &owner, &mut report)? {
            report.metadata_dirs += 1;
        }
    }
    for id in &record_ids {
        if seal_record(&records, &format!("{id}.rec"), &owner, &mut report)? {
            report.records += 1;
        }
    }
    let runs = Runs {
        records: &record_ids,
        snapshot_dirs: &dir_ids,
        metadata_dirs: &metadata_ids,
    };
    prune(&root, &records, &runs, &retention, &mut report)?;
    Ok(report)
}

/// The ids of the records in `records/`, sorted; one more than a day in
/// the future is not trusted as a finished run (it would seal a run still
/// in progress).
fn record_ids(records: &OwnedFd) -> Result<Vec<String>> {
    let latest_trusted = SystemTime::now() + Duration::from_secs(24 * 3600);
    let mut ids: Vec<String> = names(records, RECORDS)?
        .into_iter()
        .filter_map(|n| n.strip_suffix(".rec").map(String::from))
        .filter(|id| parse_snapshot_id(id).is_some_and(|t| t <= latest_trusted))
        .collect();
    ids.sort();
    Ok(ids)
}

/// The entries of `dir` named as a run's id, sorted.
fn run_ids(dir: &OwnedFd, what: &str) -> Result<Vec<String>> {
    let mut ids: Vec<String> = names(dir, what)?
        .into_iter()
        .filter(|id| parse_snapshot_id(id).is_some())
        .collect();
    ids.sort();
    Ok(ids)
}

/// The root, `records/`, `snapshots/` and `metadata/`: root's, the
/// account's group, 1770; the marker file.
fn prepare(root: &Root, owner: &Owner, retention: &Retention) -> Result<()> {
    // Only what is not yet so is changed: a chown, even to the same
    // owner, is an inotify event, and the server module's path unit on
    // records/ would start the next seal, and so on.
    let shared = |fd: &OwnedFd, what: &str| -> Result<()> {
        let st = fstat(fd).map_err(|e| errno(what, e))?;
        if st.st_uid == 0 && st.st_gid == owner.gid.as_raw() && st.st_mode & 0o7777 == SHARED_DIR {
            return Ok(());
        }
        fchown(fd.as_fd(), Some(Uid::from_raw(0)), Some(owner.gid))
            .and_then(|_| fchmod(fd.as_fd(), Mode::from_bits_truncate(SHARED_DIR)))
            .map_err(|e| errno(&format!("sealing {what}"), e))
    };
    let st = fstat(&root.fd).map_err(|e| errno("the served directory", e))?;
    if st.st_uid != 0 && st.st_uid != owner.uid.as_raw() {
        return Err(Error::usage(format!(
            "{} belongs to uid {}, neither root nor the account",
            root.path.display(),
            st.st_uid
        )));
    }
    shared(&root.fd, "the served directory")?;
    for name in [RECORDS, SNAPSHOTS, METADATA] {
        match mkdirat(root.fd.as_fd(), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(errno(&format!("creating {name}"), e)),
        }
        let fd = root.dir_at(&root.fd, &[name.to_string()], name)?;
        shared(&fd, name)?;
    }
    let keep = |v: Option<u32>| v.map_or("all".to_string(), |n| n.to_string());
    let text = format!(
        "ciphersync-server 1\nappend-only yes\nkeep-last {}\nkeep-days {}\n",
        keep(retention.keep_last),
        keep(retention.keep_days)
    );
    if info(root).ok().as_deref() != Some(text.as_str()) {
        write_root_file(&root.fd, APPEND_ONLY_MARKER, text.as_bytes(), owner)?;
    }
    Ok(())
}

/// What `ciphersync-server info` answers: the marker, or "not append-only".
pub fn info(root: &Root) -> Result<String> {
    let below = super::Below {
        parts: vec![APPEND_ONLY_MARKER.into()],
        trailing_slash: false,
    };
    match root.open_file(&below, APPEND_ONLY_MARKER) {
        Ok(file) => crate::limits::read_text(file, 4096, APPEND_ONLY_MARKER),
        Err(_) => Ok("ciphersync-server 1\nappend-only no\n".into()),
    }
}

/// For the client's `prune`: the server's word on what it keeps when the
/// target is an append-only account (its marker file), else None.
pub fn server_keeps(remote: &dyn Target) -> Result<Option<String>> {
    let Some(bytes) = remote.read_file(APPEND_ONLY_MARKER, 4096)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(str::trim))
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric()))
            .unwrap_or("?")
            .to_string()
    };
    if field("append-only ") != "yes" {
        return Ok(None);
    }
    Ok(Some(format!(
        "the target is an append-only account: its server keeps sealed runs \
         (keep-last {}, keep-days {}) and the client deletes none",
        field("keep-last "),
        field("keep-days ")
    )))
}

/// A root-owned, read-only file written atomically in `dir`.
fn write_root_file(dir: &OwnedFd, name: &str, bytes: &[u8], owner: &Owner) -> Result<()> {
    let temp = format!(".{name}.{}", crate::fsutil::random_hex(6)?);
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(
        dir.as_fd(),
        temp.as_str(),
        flags,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| errno(&format!("writing {name}"), e))?;
    let mut file = File::from(fd);
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::io(format!("writing {name}"), e))?;
    fchown(file.as_fd(), Some(Uid::from_raw(0)), Some(owner.gid))
        .and_then(|_| fchmod(file.as_fd(), Mode::from_bits_truncate(SEALED_FILE)))
        .map_err(|e| errno(&format!("writing {name}"), e))?;
    renameat(dir.as_fd(), temp.as_str(), dir.as_fd(), name)
        .map_err(|e| errno(&format!("writing {name}"), e))
}

/// The names in a directory (bounded).
fn names(dir: &OwnedFd, what: &str) -> Result<Vec<String>> {
    super::tree::list_names(dir, what, crate::limits::MAX_TREE_ENTRIES)
}

/// Seals one record; false if it already was (or was left alone).
fn seal_record(dir: &OwnedFd, name: &str, owner: &Owner, report: &mut SealReport) -> Result<bool> {
    let what = format!("{RECORDS}/{name}");
    let fd = match openat(dir.as_fd(), name, FILE_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            report.skipped.push(format!("{what} ({})", e.desc()));
            return Ok(false);
        }
    };
    seal_file(dir, name, fd, &what, owner, report)
}

/// Seals an open regular file `name` in `dir`.
fn seal_file(
    dir: &OwnedFd,
    name: &str,
    fd: OwnedFd,
    what: &str,
    owner: &Owner,
    report: &mut SealReport,
) -> Result<bool> {
    let st = fstat(&fd).map_err(|e| errno(what, e))?;
    if kind_of(&st) != SFlag::S_IFREG {
        report.skipped.push(format!("{what} (not a regular file)"));
        return Ok(false);
    }
    if st.st_uid == 0 && st.st_mode & 0o7777 == SEALED_FILE {
        return Ok(false);
    }
    if st.st_uid != 0 && st.st_uid != owner.uid.as_raw() {
        report
            .skipped
            .push(format!("{what} (belongs to uid {})", st.st_uid));
        return Ok(false);
    }
    if st.st_nlink > 1 {
        // Another name reaches this inode: seal a copy of our own.
        copy_over(dir, name, File::from(fd), what, owner)?;
        return Ok(true);
    }
    fchown(fd.as_fd(), Some(Uid::from_raw(0)), Some(owner.gid))
        .and_then(|_| fchmod(fd.as_fd(), Mode::from_bits_truncate(SEALED_FILE)))
        .map_err(|e| errno(&format!("sealing {what}"), e))?;
    Ok(true)
}

/// Replaces `name` in `dir` with a sealed copy of `source`, keeping its
/// mtime.
fn copy_over(dir: &OwnedFd, name: &str, mut source: File, what: &str, owner: &Owner) -> Result<()> {
    let mtime = source.metadata().and_then(|m| m.modified()).ok();
    let temp = format!(".seal.{}", crate::fsutil::random_hex(6)?);
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(
        dir.as_fd(),
        temp.as_str(),
        flags,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| errno(&format!("copying {what}"), e))?;
    let mut copy = File::from(fd);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = source
            .read(&mut buf)
            .map_err(|e| Error::io(format!("copying {what}"), e))?;
        if n == 0 {
            break;
        }
        copy.write_all(&buf[..n])
            .map_err(|e| Error::io(format!("copying {what}"), e))?;
    }
    if let Some(t) = mtime {
        let _ = copy.set_modified(t);
    }
    fchown(copy.as_fd(), Some(Uid::from_raw(0)), Some(owner.gid))
        .and_then(|_| fchmod(copy.as_fd(), Mode::from_bits_truncate(SEALED_FILE)))
        .and_then(|_| renameat(dir.as_fd(), temp.as_str(), dir.as_fd(), name))
        .map_err(|e| errno(&format!("sealing {what}"), e))
}

/// Seals `<parent_name>/<id>` (a snapshot or metadata dir) and everything
/// below it; false if it already was. A directory is made root's and
/// read-only before it is listed.
fn seal_tree(
    parent: &OwnedFd,
    parent_name: &str,
    id: &str,
    owner: &Owner,
    report: &mut SealReport,
) -> Result<bool> {
    let what = format!("{parent_name}/{id}");
    let top = match openat(parent.as_fd(), id, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            report.skipped.push(format!("{what} ({})", e.desc()));
            return Ok(false);
        }
    };
    let st = fstat(&top).map_err(|e| errno(&what, e))?;
    if st.st_uid == 0 && st.st_mode & 0o7777 == SEALED_DIR {
        return Ok(false);
    }
    if st.st_uid != 0 && st.st_uid != owner.uid.as_raw() {
        report
            .skipped
            .push(format!("{what} (belongs to uid {})", st.st_uid));
        return Ok(false);
    }
    freeze(&top, SEALING_DIR, owner, &what)?;
    let mut stack = vec![(
        top.try_clone().map_err(|e| Error::io("duplicating", e))?,
        what.clone(),
    )];
    while let Some((dir, path)) = stack.pop() {
        crate::interrupt::check()?;
        for name in names(&dir, &path)? {
            let rel = format!("{path}/{name}");
            let st = match fstatat(dir.as_fd(), name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(e) => return Err(errno(&rel, e)),
            };
            if st.st_uid != 0 && st.st_uid != owner.uid.as_raw() {
                report
                    .skipped
                    .push(format!("{rel} (belongs to uid {})", st.st_uid));
                continue;
            }
            match kind_of(&st) {
                SFlag::S_IFDIR => {
                    let child = openat(dir.as_fd(), name.as_str(), DIR_FLAGS, Mode::empty())
                        .map_err(|e| errno(&rel, e))?;
                    freeze(&child, SEALED_DIR, owner, &rel)?;
                    stack.push((child, rel));
                }
                SFlag::S_IFREG => {
                    let fd = openat(dir.as_fd(), name.as_str(), FILE_FLAGS, Mode::empty())
                        .map_err(|e| errno(&rel, e))?;
                    seal_file(&dir, &name, fd, &rel, owner, report)?;
                }
                _ => {
                    // Symlinks (and anything else): root's; their own mode
                    // means nothing, the frozen directory keeps them.
                    fchownat(
                        dir.as_fd(),
                        name.as_str(),
                        Some(Uid::from_raw(0)),
                        Some(owner.gid),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| errno(&format!("sealing {rel}"), e))?;
                }
            }
        }
    }
    // Done: readable by the account again, and marked complete.
    freeze(&top, SEALED_DIR, owner, &what)?;
    Ok(true)
}

fn freeze(fd: &OwnedFd, mode: u32, owner: &Owner, what: &str) -> Result<()> {
    fchown(fd.as_fd(), Some(Uid::from_raw(0)), Some(owner.gid))
        .and_then(|_| fchmod(fd.as_fd(), Mode::from_bits_truncate(mode)))
        .map_err(|e| errno(&format!("sealing {what}"), e))
}

/// A run's entries, by id, as `seal` listed them.
struct Runs<'a> {
    records: &'a [String],
    snapshot_dirs: &'a [String],
    metadata_dirs: &'a [String],
}

/// The server's retention over sealed runs: records first, then the
/// snapshot dirs no kept run needs (snapshots::plan_prune), then the
/// metadata dirs the client's prune would remove (metadata::prune_dirs).
fn prune(
    root: &Root,
    records: &OwnedFd,
    runs: &Runs,
    retention: &Retention,
    report: &mut SealReport,
) -> Result<()> {
    if !retention.bounded() {
        return Ok(()); // no bound: keep everything
    }
    let sealed: Vec<String> = runs
        .records
        .iter()
        .filter(|id| {
            fstatat(
                records.as_fd(),
                format!("{id}.rec").as_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .is_ok_and(|st| st.st_uid == 0)
        })
        .cloned()
        .collect();
    let plan =
        crate::snapshots::plan_prune(&sealed, runs.snapshot_dirs, retention, SystemTime::now());
    for id in &plan.records {
        let path = root.path.join(RECORDS).join(format!("{id}.rec"));
        std::fs::remove_file(&path)
            .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
        report.pruned_records.push(id.clone());
    }
    for id in &plan.snapshot_dirs {
        if remove_dir(root, SNAPSHOTS, id)? {
            report.pruned_dirs.push(id.clone());
        }
    }
    for id in metadata_to_remove(runs, &plan.records) {
        if remove_dir(root, METADATA, id)? {
            report.pruned_metadata.push(id.clone());
        }
    }
    Ok(())
}

/// As metadata::prune_dirs on the client: the metadata dirs of the runs
/// whose records retention removed, and those older than the oldest run
/// kept (interrupted runs no record needs). A record kept by the server
/// (any not removed, sealed or not) keeps its own.
fn metadata_to_remove<'a>(runs: &Runs<'a>, removed: &[String]) -> Vec<&'a String> {
    let oldest_kept = runs.records.iter().find(|id| !removed.contains(id));
    runs.metadata_dirs
        .iter()
        .filter(|id| removed.contains(id) || oldest_kept.is_some_and(|o| *id < o))
        .collect()
}

/// Removes `<parent>/<id>` when it is a directory (never following a
/// link); false when it is not one.
fn remove_dir(root: &Root, parent: &str, id: &str) -> Result<bool> {
    let path = root.path.join(parent).join(id);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path)
            .map(|()| true)
            .map_err(|e| Error::io(format!("removing {}", path.display()), e)),
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn metadata_goes_with_its_record_and_with_older_unfinished_runs() {
        let records = ids(&["20260101T000000Z", "20260102T000000Z", "20260104T000000Z"]);
        let metadata = ids(&[
            "20251231T000000Z", // unfinished, before every record
            "20260101T000000Z",
            "20260101T120000Z", // unfinished, before the oldest kept
            "20260102T000000Z",
            "20260103T000000Z", // unfinished, after the oldest kept
            "20260104T000000Z",
        ]);
        let runs = Runs {
            records: &records,
            snapshot_dirs: &[],
            metadata_dirs: &metadata,
        };
        let removed = ids(&["20260101T000000Z"]);
        assert_eq!(
            metadata_to_remove(&runs, &removed),
            ["20251231T000000Z", "20260101T000000Z", "20260101T120000Z"]
        );
        // Nothing removed: only what lies before the oldest record goes.
        assert_eq!(metadata_to_remove(&runs, &[]), ["20251231T000000Z"]);
        // The oldest kept run keeps its own metadata.
        let removed = ids(&["20260101T000000Z", "20260102T000000Z"]);
        assert_eq!(
            metadata_to_remove(&runs, &removed),
            [
                "20251231T000000Z",
                "20260101T000000Z",
                "20260101T120000Z",
                "20260102T000000Z",
                "20260103T000000Z"
            ]
        );
    }
}
