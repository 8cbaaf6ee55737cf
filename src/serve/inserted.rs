//! Entries an append-only account adds *behind* its sealed history.
//!
//! The account may create entries in `records/`, `snapshots/` and
//! `metadata/` (1770: that is how new runs arrive), and it holds the
//! gocryptfs key, so it can make valid ciphertext. A snapshot dir with an
//! id between two sealed runs would change what `restore --snapshot` of
//! the earlier one gives back (each path comes from the oldest later
//! snapshot dir that holds it), and a record with such an id would add a
//! run to sealed history. Runs take ids from their start time and one job
//! runs at a time, so every legitimate entry with an id at or before the
//! newest sealed record existed when that record was sealed, and was
//! sealed with it. Anything with such an id that is still the account's
//! was inserted later (or comes from a client whose clock went back): it
//! is moved, by root, into `<root>/refused/` (root's, 0700), out of the
//! account's and every restore's reach, and the seal report names it.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

use super::tree::Root;
use crate::error::{Error, Kind, Result};
use crate::status::parse_snapshot_id;

/// Where inserted entries go: a root-only dir in the account's root.
pub const REFUSED_DIR: &str = "refused";

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn errno(what: &str, e: Errno) -> Error {
    Error::new(Kind::Io, format!("{what}: {}", e.desc()))
}

/// The id of the newest record an earlier seal sealed (root's), if any.
pub fn sealed_until(records: &OwnedFd, record_ids: &[String]) -> Option<String> {
    record_ids
        .iter()
        .rev()
        .find(|id| owned_by_root(records, &format!("{id}.rec")))
        .cloned()
}

fn owned_by_root(dir: &OwnedFd, name: &str) -> bool {
    fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|st| st.st_uid == 0)
}

/// Whether `name` (in `dir`, called `what`) is an entry behind sealed
/// history: named for a run at or before `until`, and still not root's.
pub fn is_inserted(dir: &OwnedFd, name: &str, until: &str) -> bool {
    let id = name.strip_suffix(".rec").unwrap_or(name);
    parse_snapshot_id(id).is_some() && id <= until && !owned_by_root(dir, name)
}

/// Moves `name` out of `dir` (called `what`) into [`REFUSED_DIR`]; returns
/// how the report names it.
pub fn refuse(root: &Root, dir: &OwnedFd, what: &str, name: &str) -> Result<String> {
    let refused = refused_dir(root)?;
    let base = format!("{what}-{name}");
    for n in 0..1000u32 {
        let target = match n {
            0 => base.clone(),
            n => format!("{base}.{n}"),
        };
        match renameat(dir.as_fd(), name, refused.as_fd(), target.as_str()) {
            Ok(()) => return Ok(format!("{what}/{name}")),
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => continue,
            Err(e) => {
                return Err(errno(
                    &format!("moving {what}/{name} into {REFUSED_DIR}/"),
                    e,
                ));
            }
        }
    }
    Err(Error::new(
        Kind::Io,
        format!("{REFUSED_DIR}/ holds too many copies of {base}"),
    ))
}

/// `<root>/refused`, made root's and 0700 whatever the account left there
/// under that name (a link or a file is removed; its own dir is taken).
fn refused_dir(root: &Root) -> Result<OwnedFd> {
    let fd = match openat(root.fd.as_fd(), REFUSED_DIR, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => make_refused_dir(root)?,
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            unlinkat(root.fd.as_fd(), REFUSED_DIR, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| errno(&format!("removing the account's {REFUSED_DIR}"), e))?;
            make_refused_dir(root)?
        }
        Err(e) => return Err(errno(REFUSED_DIR, e)),
    };
    let st = fstat(&fd).map_err(|e| errno(REFUSED_DIR, e))?;
    if st.st_uid != 0 || st.st_gid != 0 || st.st_mode & 0o7777 != 0o700 {
        fchown(fd.as_fd(), Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))
            .and_then(|_| fchmod(fd.as_fd(), Mode::from_bits_truncate(0o700)))
            .map_err(|e| errno(&format!("making {REFUSED_DIR}/ root's"), e))?;
    }
    Ok(fd)
}

fn make_refused_dir(root: &Root) -> Result<OwnedFd> {
    match mkdirat(
        root.fd.as_fd(),
        REFUSED_DIR,
        Mode::from_bits_truncate(0o700),
    ) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(errno(&format!("creating {REFUSED_DIR}/"), e)),
    }
    openat(root.fd.as_fd(), REFUSED_DIR, DIR_FLAGS, Mode::empty())
        .map_err(|e| errno(REFUSED_DIR, e))
}
