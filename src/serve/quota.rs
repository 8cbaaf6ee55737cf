//! The account's size limit (`serve --quota BYTES`), the check the README
//! names: before serve starts anything that can write, it measures what
//! the account's directory holds, and over the quota it refuses to.
//!
//! - A receiving `rsync --server` is refused with one line naming the
//!   account, its usage and its quota.
//! - The SFTP subsystem cannot be limited per write (serve hands the
//!   connection to sftp-server), so a session that starts over the quota
//!   runs with the requests that add data denied (`sftp-server -P`); one
//!   that starts under it is not limited. A run therefore exceeds the
//!   quota by at most its own size; a filesystem project quota is the hard
//!   limit.
//! - Reads (restore, verify's sums) and deletions (prune) stay allowed, so
//!   data can always be got back and space freed.
//!
//! - A run that `ciphersync-server quota` (the client's question before a
//!   backup writes anything) let start gets a run permit: its own later
//!   sessions may write until it ends, even once it has crossed the quota
//!   (sshfs opens connections as it needs them, rsync workers start one
//!   after another: without the permit a run that crosses the quota would
//!   fail half way with an I/O error instead of finishing). The next
//!   question over the quota ends the permit and refuses that run; a
//!   permit also lapses after RUN_PERMIT_LIFETIME.
//!
//! Usage is measured afresh for every such request and never cached: serve
//! runs as the account, so any file it could keep a cache in, the
//! account's client could rewrite over SFTP to say "empty". The walk is
//! bounded (`MAX_TREE_ENTRIES`) and never follows a link; what it cannot
//! measure (an unreadable dir, too many entries) refuses writes, since an
//! unmeasured tree could be any size.

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

use super::tree::{Root, kind_of, list_names, refuse};
use crate::error::{Error, Result};
use crate::human::bytes_short;

/// The SFTP requests denied to a session that starts over the quota: those
/// that add data or entries. Reads, `remove`, `rmdir` and renames stay.
pub const SFTP_DENIED_OVER_QUOTA: &str = "write,copy-data,mkdir,symlink,hardlink";

/// Parses a size as the Nix option writes it: digits with an optional
/// K, M, G or T suffix, in powers of 1024 (as quota tools count).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'K')) => (&text[..i], 10),
        Some((i, 'M')) => (&text[..i], 20),
        Some((i, 'G')) => (&text[..i], 30),
        Some((i, 'T')) => (&text[..i], 40),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{:?} is not a size: digits with an optional K, M, G or T suffix",
            text
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// What the account's directory holds: allocated bytes (what `du` and a
/// filesystem quota count, a hard-linked file once) and entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub entries: usize,
}

fn allocated(st: &FileStat) -> u64 {
    (st.st_blocks as u64).saturating_mul(512)
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Measures everything below the root (the root included), at most
/// `limit` entries. Directories are opened only when their turn comes,
/// so the descriptors held stay bounded by the tree's depth.
pub fn usage(root: &Root, limit: usize) -> Result<Usage> {
    let cannot = |what: &str, e: Errno| {
        refuse(format!(
            "cannot measure the account's usage: {what}: {}",
            e.desc()
        ))
    };
    let top = fstat(&root.fd).map_err(|e| cannot(".", e))?;
    let mut usage = Usage {
        bytes: allocated(&top),
        entries: 0,
    };
    let mut linked: HashSet<(u64, u64)> = HashSet::new();
    let root_fd = Rc::new(
        root.fd
            .try_clone()
            .map_err(|e| Error::io("duplicating a descriptor", e))?,
    );
    // (parent, name, shown): a directory still to list.
    let mut stack: Vec<(Rc<OwnedFd>, String, String)> = Vec::new();
    list_into(&root_fd, "", &mut stack, &mut usage, &mut linked, limit)?;
    while let Some((parent, name, shown)) = stack.pop() {
        crate::interrupt::check()?;
        let fd = openat(parent.as_fd(), name.as_str(), DIR_FLAGS, Mode::empty())
            .map_err(|e| cannot(&crate::limits::quote(&shown, 120), e))?;
        drop(parent);
        list_into(
            &Rc::new(fd),
            &shown,
            &mut stack,
            &mut usage,
            &mut linked,
            limit,
        )?;
    }
    Ok(usage)
}

/// Adds the entries of the open directory `dir` (shown as `prefix`) to
/// `usage`, and its subdirectories to `stack`.
fn list_into(
    dir: &Rc<OwnedFd>,
    prefix: &str,
    stack: &mut Vec<(Rc<OwnedFd>, String, String)>,
    usage: &mut Usage,
    linked: &mut HashSet<(u64, u64)>,
    limit: usize,
) -> Result<()> {
    let too_many = || {
        refuse(format!(
            "cannot measure the account's usage: more than {limit} entries (use a filesystem quota)"
        ))
    };
    let what = match prefix.is_empty() {
        true => "cannot measure the account's usage: .".to_string(),
        false => format!(
            "cannot measure the account's usage: {}",
            crate::limits::quote(prefix, 120)
        ),
    };
    let names =
        list_names(dir, &what, limit).map_err(|e| match e.message.contains("more than") {
            true => too_many(),
            false => e,
        })?;
    for name in names {
        usage.entries += 1;
        if usage.entries > limit {
            return Err(too_many());
        }
        let shown = match prefix.is_empty() {
            true => name.clone(),
            false => format!("{prefix}/{name}"),
        };
        let st = match fstatat(dir.as_fd(), name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Gone since the listing (a client deleting): nothing to count.
            Err(Errno::ENOENT) => continue,
            Err(e) => {
                return Err(refuse(format!(
                    "cannot measure the account's usage: {}: {}",
                    crate::limits::quote(&shown, 120),
                    e.desc()
                )));
            }
        };
        let kind = kind_of(&st);
        if kind != SFlag::S_IFDIR
            && st.st_nlink > 1
            && !linked.insert((st.st_dev as u64, st.st_ino as u64))
        {
            continue;
        }
        usage.bytes = usage.bytes.saturating_add(allocated(&st));
        if kind == SFlag::S_IFDIR {
            stack.push((Rc::clone(dir), name, shown));
        }
    }
    Ok(())
}

/// Whether the account may start something that writes: `Ok(None)` under
/// its quota (or with none, or within a permitted run), `Ok(Some(line))`
/// over it, the line naming the account, the usage and the quota. A tree
/// that cannot be measured is an error (the caller refuses the write).
pub fn over_quota(root: &Root, quota: Option<u64>, account: &str) -> Result<Option<String>> {
    let Some(quota) = quota else {
        return Ok(None);
    };
    let used = usage(root, crate::limits::MAX_TREE_ENTRIES)?;
    let over = over_message(account, used.bytes, quota);
    if over.is_some() && run_permit_fresh(root) {
        return Ok(None);
    }
    Ok(over)
}

/// The file whose mtime is the start of the run the quota question let
/// through. It lies in the account's own directory, so a client can forge
/// it: like a session opened under the quota and kept open, that only
/// lets a compromised client write on, which the filesystem quota the
/// README names is there to stop.
pub const RUN_PERMIT_NAME: &str = ".ciphersync-run-permit";

/// Longer than any backup should run (the modules' default maxRuntime is
/// 12 h): a client that died mid-run does not keep its permit.
const RUN_PERMIT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// Lets the run that just asked write until it ends (see the module text).
pub fn grant_run_permit(root: &Root) -> Result<()> {
    end_run_permit(root)?;
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
    let fd = openat(
        root.fd.as_fd(),
        RUN_PERMIT_NAME,
        flags | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| Error::io(format!("creating {RUN_PERMIT_NAME}"), e.into()))?;
    drop(fd);
    Ok(())
}

/// Ends a run permit, if there is one.
pub fn end_run_permit(root: &Root) -> Result<()> {
    match nix::unistd::unlinkat(
        root.fd.as_fd(),
        RUN_PERMIT_NAME,
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    ) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::io(format!("removing {RUN_PERMIT_NAME}"), e.into())),
    }
}

/// A regular file (not a link) made within RUN_PERMIT_LIFETIME.
fn run_permit_fresh(root: &Root) -> bool {
    let Ok(st) = fstatat(
        root.fd.as_fd(),
        RUN_PERMIT_NAME,
        AtFlags::AT_SYMLINK_NOFOLLOW,
    ) else {
        return false;
    };
    let made = std::time::UNIX_EPOCH + std::time::Duration::from_secs(st.st_mtime.max(0) as u64);
    kind_of(&st) == SFlag::S_IFREG
        && std::time::SystemTime::now()
            .duration_since(made)
            .is_ok_and(|age| age < RUN_PERMIT_LIFETIME)
}

/// The refusal for `used` bytes against `quota`, or None within it.
pub fn over_message(account: &str, used: u64, quota: u64) -> Option<String> {
    (used >= quota).then(|| {
        format!(
            "account {account} is over its quota: {} used of {} ({used} of {quota} bytes); \
             backups are refused until runs are pruned, restores and reads still work",
            bytes_short(used),
            bytes_short(quota)
        )
    })
}

/// The account's name for messages: the user serve runs as (the module
/// names the user after the account).
pub fn account_name() -> String {
    let uid = nix::unistd::geteuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => format!("uid {uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sizes_parse_as_the_nix_option_writes_them() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("3M"), Ok(3 << 20));
        assert_eq!(parse_size("500G"), Ok(500 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        for bad in ["", "G", "1.5G", "-1", "1g", "1 G", "1GB", "1KiB", " 1"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("not a size"), "{bad:?}: {e}");
        }
        assert!(
            parse_size("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            parse_size("99999999999999999999")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn the_refusal_names_account_usage_and_quota_at_the_limit() {
        assert_eq!(over_message("laptop", 1023, 1024), None);
        let line = over_message("laptop", 5 << 20, 4 << 20).unwrap();
        assert!(
            line.starts_with("account laptop is over its quota: 5.0 MiB used of 4.0 MiB"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        assert!(
            over_message("laptop", 1024, 1024).is_some(),
            "at the quota is over"
        );
    }

    fn tmp(tag: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ciphersync-quota-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn usage_counts_allocated_bytes_once_per_inode_and_never_follows_links() {
        let dir = tmp("usage");
        let root = Root::open(&dir).unwrap();
        let empty = usage(&root, 100).unwrap();
        assert_eq!(empty.entries, 0);
        std::fs::create_dir_all(dir.join("files/a/b")).unwrap();
        // Written, not sparse: allocated blocks are what is counted.
        std::fs::write(dir.join("files/a/b/big"), vec![7u8; 1 << 20]).unwrap();
        std::fs::hard_link(dir.join("files/a/b/big"), dir.join("files/twin")).unwrap();
        // A link to a big tree outside counts as the link only.
        std::os::unix::fs::symlink("/usr", dir.join("files/usr")).unwrap();
        let used = usage(&root, 100).unwrap();
        assert_eq!(used.entries, 6, "{used:?}");
        let data = std::fs::metadata(dir.join("files/twin")).unwrap().blocks() * 512;
        assert!(data >= 1 << 20, "the file's blocks: {data}");
        assert!(
            used.bytes >= empty.bytes + data && used.bytes < empty.bytes + 2 * data,
            "the hard link counted twice or not at all: {used:?}, file {data}"
        );
        // The bound refuses rather than guess.
        let e = usage(&root, 5).unwrap_err();
        assert!(e.message.contains("more than 5 entries"), "{e}");
        let e = over_quota(&root, Some(1), "acct").unwrap();
        assert!(e.unwrap().contains("account acct is over its quota"));
        assert_eq!(over_quota(&root, None, "acct").unwrap(), None);
        assert_eq!(over_quota(&root, Some(1 << 40), "acct").unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
