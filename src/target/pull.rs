//! Pulling a run's ciphertext from the account into a local directory,
//! instead of reading it file by file through sshfs, which costs several
//! SFTP round trips per file that one reader waits for in turn. Where the
//! account runs `rsync --server`, one `rsync --sender` stream per source;
//! where it allows SFTP only, many pipelined SFTP requests (sftp.rs).
//! Restore uses it to fill its stage (restore.rs), then decrypts the stage
//! locally.
//!
//! With rsync the server sends the file list, so it chooses names, types
//! and symlink targets. The receiving rsync is told `--munge-links`: every
//! symlink the server sends is stored as `/rsyncd-munged/<target>`, which
//! leads nowhere, so no later entry of the same transfer can be written
//! through it. The SFTP fetcher stores links the same way. The caller
//! checks what arrived against the run's record and only then gives the
//! symlinks their targets back (`unmunge`).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::Ssh;
use super::listing::TreeEntry;
use super::sftp::SftpFetcher;
use crate::config::{Job, Sftp};
use crate::error::{Error, IoContext, Kind, Result};
use crate::exec::Cmd;
use crate::progress::{self, Phase};
use crate::stats::ReadVia;

/// What rsync puts in front of a munged symlink's target.
pub(super) const MUNGE_PREFIX: &str = "/rsyncd-munged/";

/// How to pull from one account over ssh.
pub struct Puller<'a> {
    /// The stage's ssh: its config and master, and its connection budget
    /// (a pull is one session beside the sshfs mount).
    ssh: Option<&'a Ssh>,
    via: Via<'a>,
}

enum Via<'a> {
    Rsync {
        /// rsync's `-e`: ssh with the stage's config.
        shell: String,
        /// The account's directory as rsync names it (`host:path`).
        location: String,
    },
    Sftp(SftpFetcher<'a>),
}

impl<'a> Puller<'a> {
    /// A puller for an account: rsync where it runs `rsync --server` and
    /// keeps modes and symlinks, else SFTP. None on a machine where munged
    /// links would lead somewhere.
    pub(super) fn new(
        job: &Job,
        sftp: &Sftp,
        ssh: &'a Ssh,
        keeps_all: bool,
    ) -> Result<Option<Puller<'a>>> {
        if Path::new(MUNGE_PREFIX).symlink_metadata().is_ok() {
            crate::log::warn(format!(
                "{MUNGE_PREFIX} exists on this machine: a symlink from the target \
                 could lead into it, so restore reads through sshfs instead"
            ));
            return Ok(None);
        }
        let (caps, _) = super::probe::capabilities(job, sftp, ssh)?;
        let via = if caps.rsync_server && keeps_all {
            Via::Rsync {
                shell: ssh.rsync_shell(),
                location: ssh.rsync_location(&sftp.path),
            }
        } else {
            Via::Sftp(SftpFetcher::new(ssh))
        };
        Ok(Some(Puller {
            ssh: Some(ssh),
            via,
        }))
    }

    /// The SFTP fetcher, where this account is pulled from over SFTP.
    pub fn sftp(&self) -> Option<&SftpFetcher<'a>> {
        match &self.via {
            Via::Sftp(fetcher) => Some(fetcher),
            Via::Rsync { .. } => None,
        }
    }

    /// How the stage is filled, for restore's statistics.
    pub fn read_via(&self) -> ReadVia {
        match self.via {
            Via::Rsync { .. } => ReadVia::Rsync,
            Via::Sftp(_) => ReadVia::Sftp,
        }
    }

    /// Copies `entries` from the account's `from` directory (relative to
    /// its root) into `into`, a directory only we write to where their
    /// directories exist. `list` holds the same paths, NUL-separated (what
    /// rsync reads); None where all of `from` is wanted: rsync then
    /// recurses, sending the tree as it walks it instead of listing every
    /// path first (1.3 s of 7 for 200,000 files at a 20 ms round trip),
    /// and what else `from` holds arrives too, for the caller to remove.
    /// At most `room` bytes may arrive over SFTP. Devices, special files
    /// and setuid bits never arrive; symlinks arrive munged. With `phase`,
    /// its progress counts there. Returns what the server would not give
    /// back over SFTP (sftp.rs); rsync fails instead.
    pub fn pull(
        &self,
        from: &str,
        list: Option<&Path>,
        entries: &[&TreeEntry],
        into: &Path,
        room: u64,
        phase: Option<&Phase>,
    ) -> Result<Vec<String>> {
        match &self.via {
            Via::Rsync { shell, location } => self
                .pull_rsync(shell, location, from, list, into, phase)
                .map(|()| Vec::new()),
            Via::Sftp(fetcher) => fetcher.fetch(from, entries, into, room, phase),
        }
    }

    fn pull_rsync(
        &self,
        shell: &str,
        location: &str,
        from: &str,
        list: Option<&Path>,
        into: &Path,
        phase: Option<&Phase>,
    ) -> Result<()> {
        let _session = self.ssh.map(Ssh::session);
        let mut cmd = Cmd::new("rsync")
            .args(["-a", "-H", "--no-owner", "--no-group", "--from0"])
            .args(trust_sender())
            .args(["--munge-links", "--no-devices", "--no-specials"])
            .arg("--chmod=ug-s");
        if phase.is_some() {
            cmd = cmd.arg(progress::rsync::PROGRESS_ARG);
        }
        if let Some(list) = list {
            cmd = cmd.arg(format!("--files-from={}", list.display()));
        }
        let cmd = cmd
            .arg("-e")
            .arg(shell)
            .arg(format!("{}/{from}/", location.trim_end_matches('/')))
            .arg(format!("{}/", into.display()));
        // rsync's stdout (its progress) in a scratch file beside the list.
        let beside = list
            .and_then(Path::parent)
            .or(into.parent())
            .unwrap_or(into);
        let output = crate::exec::scratch_file(beside, "pull-out")?;
        let out = progress::rsync::run(cmd, output, phase)?;
        if !out.success() {
            return Err(out.failure(Some(&format!("pulling {from}/ from the target"))));
        }
        Ok(())
    }
}

/// `--trust-sender` where this rsync knows it. Since 3.2.5 a pulling
/// rsync checks every name the sender lists against the `--files-from`
/// list, one implied include rule per listed path scanned in turn: for
/// 200,000 paths that took 12 CPU-seconds on loopback and 31 at a 20 ms
/// round trip, five times the transfer (bench/analysis.md). The option
/// turns that check off; restore makes it itself once the transfer ends
/// (restore.rs `check_stage`: nothing unlisted, nothing missing, every
/// entry of its kind), and what keeps the stage safe during the transfer
/// stays with rsync whatever the option says: no absolute or `..` name,
/// links munged, no devices, no setuid bit. An rsync before 3.2.5 makes
/// no such check and does not know the option.
fn trust_sender() -> Option<&'static str> {
    static KNOWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        Cmd::new("rsync")
            .args(["--trust-sender", "--version"])
            .run()
            .is_ok_and(|out| out.success())
    });
    known.then_some("--trust-sender")
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
        crate::test_util::temp_dir(&format!("pull-{tag}"))
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
            via: Via::Rsync {
                shell: shell.display().to_string(),
                location: format!("host:{}", server.display()),
            },
        };
        puller
            .pull("files", Some(&list), &[], &stage, u64::MAX, None)
            .unwrap();
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
