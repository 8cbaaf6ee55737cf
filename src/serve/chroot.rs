//! `serve --chroot DIR --account NAME` (root, at boot): names the account
//! inside its chroot.
//!
//! sshd locks an account's logins into its chroot (`ChrootDirectory`), and
//! serve starts the account's sftp-server there. OpenSSH's sftp-server
//! refuses to start for a uid it cannot name ("No user found for uid"),
//! and a chroot has no /etc of its own. So DIR/etc/passwd and
//! DIR/etc/group get the account's own lines, nothing about any other
//! user, written whole and renamed into place. NixOS picks a system
//! user's uid at activation, so the server module runs this at boot
//! rather than writing the files at build time.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::unistd::{Group, User};

use crate::error::{Error, Kind, Result};
use crate::fsutil::AtomicFile;

/// Writes `chroot`/etc/passwd and `chroot`/etc/group for `account`.
pub fn name_account(chroot: &Path, account: &str) -> Result<()> {
    let user = User::from_name(account)
        .map_err(|e| lookup_failed(account, e))?
        .ok_or_else(|| Error::usage(format!("no such account: {account}")))?;
    let group = Group::from_gid(user.gid)
        .map_err(|e| lookup_failed(account, e))?
        .ok_or_else(|| {
            Error::usage(format!(
                "the account {account}'s group {} has no name",
                user.gid
            ))
        })?;
    let etc = chroot.join("etc");
    require_roots_dir(chroot)?;
    require_roots_dir(&etc)?;
    // Home "/" and no shell: sftp-server only needs the name. The real
    // shell and home stay in the host's passwd.
    let passwd = format!(
        "{}:x:{}:{}::/:/nonexistent\n",
        user.name, user.uid, user.gid
    );
    let groups = format!("{}:x:{}:\n", group.name, group.gid);
    write_readable(&etc.join("passwd"), &passwd)?;
    write_readable(&etc.join("group"), &groups)
}

fn lookup_failed(account: &str, e: nix::errno::Errno) -> Error {
    Error::new(
        Kind::Io,
        format!("looking up the account {account}: {}", e.desc()),
    )
}

/// What sshd requires of a chroot's directories, and what makes writing
/// into them safe: a real directory (not a link), root's, writable by
/// root only.
fn require_roots_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::io(format!("the chroot dir {}", dir.display()), e))?;
    if !meta.file_type().is_dir() || meta.uid() != 0 || meta.permissions().mode() & 0o022 != 0 {
        return Err(Error::usage(format!(
            "{} must be a directory owned by root and writable by root only \
             (sshd's rule for a chroot)",
            dir.display()
        )));
    }
    Ok(())
}

fn write_readable(path: &Path, text: &str) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.set_mode(0o444)?;
    file.write_all(text.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    file.commit()
}
