//! Pulling ciphertext from the account with `rsync --server --sender`
//! into a local directory: one stream per source, instead of the several
//! SFTP round trips per file that reading through sshfs costs. Restore
//! uses it to fill its stage (restore.rs), then decrypts the stage locally.
//!
//! The server sends the file list, so it chooses names, types and symlink
//! targets. The receiving rsync is told `--munge-links`: every symlink the
//! server sends is stored as `/rsyncd-munged/<target>`, which leads
//! nowhere, so no later entry of the same transfer can be written through
//! it. The caller checks what arrived against the run's record and only
//! then gives the symlinks their targets back (`unmunge`).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::Ssh;
use crate::config::{Job, Sftp};
use crate::error::{Error, IoContext, Kind, Result};
use crate::exec::Cmd;

/// What rsync puts in front of a munged symlink's target.
const MUNGE_PREFIX: &str = "/rsyncd-munged/";

/// How to pull from one account over ssh.
pub struct Puller<'a> {
    /// The stage's ssh: its config and master, and its connection budget
    /// (a pull is one session beside the sshfs mount).
    ssh: Option<&'a Ssh>,
    /// rsync's `-e`: ssh with the stage's config.
    shell: String,
    /// The account's directory as rsync names it (`host:path`).
    location: String,
}

impl<'a> Puller<'a> {
    /// A puller for an account that runs `rsync --server`, or None (no
    /// rsync there, or a machine where munged links would lead somewhere).
    pub(super) fn new(job: &Job, sftp: &Sftp, ssh: &'a Ssh) -> Result<Option<Puller<'a>>> {
        let (caps, _) = super::probe::capabilities(job, sftp, ssh)?;
        if !caps.rsync_server {
            return Ok(None);
        }
        if Path::new(MUNGE_PREFIX).symlink_metadata().is_ok() {
            crate::log::warn(format!(
                "{MUNGE_PREFIX} exists on this machine: a symlink from the target \
                 could lead into it, so restore reads through sshfs instead of rsync"
            ));
            return Ok(None);
        }
        Ok(Some(Puller {
            ssh: Some(ssh),
            shell: ssh.rsync_shell(),
            location: ssh.rsync_location(&sftp.path),
        }))
    }

    /// Copies the NUL-separated relative paths in `list` from the account's
    /// `from` directory (relative to its root) into `into`, which must be a
    /// directory only we write to. Devices, special files and setuid bits
    /// never arrive; symlinks arrive munged.
    pub fn pull(&self, from: &str, list: &Path, into: &Path) -> Result<()> {
        let _session = self.ssh.map(Ssh::session);
        let out = Cmd::new("rsync")
            .args(["-a", "-H", "--no-owner", "--no-group", "--from0"])
            .args(["--munge-links", "--no-devices", "--no-specials"])
            .arg("--chmod=ug-s")
            .arg(format!("--files-from={}", list.display()))
            .arg("-e")
            .arg(&self.shell)
            .arg(format!("{}/{from}/", self.location.trim_end_matches('/')))
            .arg(format!("{}/", into.display()))
            .run()?;
        if !out.success() {
            return Err(out.failure(Some(&format!("pulling {from}/ from the target"))));
        }
        Ok(())
    }
}

/// Gives a symlink that `pull` stored munged its target back. Only called
/// on a path the caller has checked is a symlink the run's record lists.
pub fn unmunge(link: &Path) -> Result<()> {
    let stored = std::fs::read_link(link).ctx(|| format!("reading {}", link.display()))?;
    let stored = stored.as_os_str().as_bytes();
    let Some(target) = stored.strip_prefix(MUNGE_PREFIX.as_bytes()) else {
        return Err(Error::new(
            Kind::Corrupt,
            format!(
                "{} arrived as a symlink rsync did not munge",
                link.display()
            ),
        ));
    };
    let target = std::ffi::OsStr::from_bytes(target);
    std::fs::remove_file(link).ctx(|| format!("removing {}", link.display()))?;
    std::os::unix::fs::symlink(target, link)
        .ctx(|| format!("making the symlink {}", link.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cs-pull-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A real rsync sender behind a stand-in for ssh that drops the host
    /// name and runs the command here: what a server sends arrives as the
    /// receiver stores it.
    #[test]
    fn links_from_the_server_arrive_munged_and_come_back_whole() {
        let dir = temp_dir("munge");
        let shell = dir.join("fake-ssh");
        std::fs::write(&shell, "#!/bin/sh\nshift\nexec \"$@\"\n").unwrap();
        std::fs::set_permissions(&shell, std::fs::Permissions::from_mode(0o755)).unwrap();
        let server = dir.join("server");
        std::fs::create_dir_all(server.join("files/d")).unwrap();
        std::fs::write(server.join("files/d/f"), "data").unwrap();
        std::os::unix::fs::symlink("/etc", server.join("files/d/l")).unwrap();
        let list = dir.join("list");
        std::fs::write(&list, b"d/f\0d/l").unwrap();
        let stage = dir.join("stage");
        std::fs::create_dir_all(stage.join("d")).unwrap();

        let puller = Puller {
            ssh: None,
            shell: shell.display().to_string(),
            location: format!("host:{}", server.display()),
        };
        puller.pull("files", &list, &stage).unwrap();
        assert_eq!(std::fs::read(stage.join("d/f")).unwrap(), b"data");
        let stored = std::fs::read_link(stage.join("d/l")).unwrap();
        assert!(
            stored.starts_with(MUNGE_PREFIX),
            "the link arrived unmunged: {}",
            stored.display()
        );
        unmunge(&stage.join("d/l")).unwrap();
        assert_eq!(
            std::fs::read_link(stage.join("d/l")).unwrap(),
            Path::new("/etc")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_that_was_not_munged_is_refused() {
        let dir = temp_dir("plain");
        std::os::unix::fs::symlink("/etc", dir.join("l")).unwrap();
        let err = unmunge(&dir.join("l")).unwrap_err();
        assert!(err.to_string().contains("did not munge"), "{err}");
        assert_eq!(
            std::fs::read_link(dir.join("l")).unwrap(),
            Path::new("/etc")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
