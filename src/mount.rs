//! FUSE mounts: the mount points under the job's runtime dir, a guard that
//! unmounts on every way out (including unwinding after a signal), the
//! liveness check done right before rsync, and the cleanup of mounts that a
//! killed run left behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;

use crate::error::{Error, IoContext, Kind, Result};
use crate::exec::{Cmd, Daemon, Output};
use crate::{interrupt, log};

/// An unmount that hangs (a daemon stuck on a dead link) is given up on
/// after this; the lazy unmount that follows detaches it anyway.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon gets to exit by itself once its mount is gone before
/// it is stopped (see `exec::Daemon`).
const DAEMON_EXIT_GRACE: Duration = Duration::from_secs(5);

/// The FUSE file system types as /proc/self/mountinfo names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    GocryptfsReverse,
    Gocryptfs,
    Sshfs,
}

impl FsType {
    pub fn mountinfo_name(self) -> &'static str {
        match self {
            FsType::GocryptfsReverse => "fuse.gocryptfs-reverse",
            FsType::Gocryptfs => "fuse.gocryptfs",
            FsType::Sshfs => "fuse.sshfs",
        }
    }
}

/// A live mount; unmounted when dropped.
pub struct Mount {
    point: PathBuf,
    fs_type: FsType,
    active: bool,
    /// The mount's root, held open (see `pinned`).
    root: Option<std::fs::File>,
    /// The FUSE daemon serving it, our child (see `exec::Daemon`).
    daemon: Option<Daemon>,
}

impl Mount {
    /// Starts `daemon_command` (a FUSE daemon in the foreground), waits
    /// until its mount appears at `point`, and checks it. `explain` turns a
    /// daemon that ended before mounting into the error the user sees.
    pub fn establish(
        point: &Path,
        fs_type: FsType,
        daemon_command: Cmd,
        explain: impl Fn(&Output) -> Error,
    ) -> Result<Mount> {
        let mut mount = Mount {
            point: point.to_owned(),
            fs_type,
            active: false,
            root: None,
            daemon: Some(daemon_command.spawn_daemon()?),
        };
        mount.wait_until_mounted(&explain)?;
        if let Err(dead) = mount.check_live() {
            return Err(mount.why_it_died(dead, &explain));
        }
        mount.root = Some(
            std::fs::File::open(point)
                .ctx(|| format!("the mount at {} does not answer", point.display()))?,
        );
        log::debug(|| {
            format!(
                "mounted {} at {}",
                fs_type.mountinfo_name(),
                point.display()
            )
        });
        Ok(mount)
    }

    /// Polls until the daemon's mount shows at the point. There is no time
    /// limit: the daemon either mounts or ends (a wrong password, a server
    /// that refuses), and a signal to the helper stops the wait.
    fn wait_until_mounted(&mut self, explain: &impl Fn(&Output) -> Error) -> Result<()> {
        let mut pause = Duration::from_millis(1);
        loop {
            if mounted_type_at(&self.point)?.as_deref() == Some(self.fs_type.mountinfo_name()) {
                self.active = true;
                return Ok(());
            }
            let daemon = self.daemon.as_mut().expect("the daemon is kept until drop");
            if let Some(output) = daemon.ended()? {
                self.daemon = None;
                return Err(explain(&output));
            }
            if interrupt::requested() {
                // Drop stops the daemon and undoes a mount made meanwhile.
                self.active = true;
                return Err(Error::interrupted());
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    pub fn point(&self) -> &Path {
        &self.point
    }

    /// A path that reaches this mount and nothing else: `/proc/<pid>/fd/<n>`
    /// of the root we hold open. When a dying sshfs takes its mount away, a
    /// tool started afterwards with the plain mount point would write into
    /// the bare directory on the local disk; through this path it gets
    /// ENOTCONN instead.
    pub fn pinned(&self) -> PathBuf {
        match &self.root {
            Some(root) => PathBuf::from(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                std::os::fd::AsRawFd::as_raw_fd(root)
            )),
            None => self.point.clone(),
        }
    }

    /// Right before we trust the mount: is it still the FUSE mount we made,
    /// and does it answer? A dead sshfs leaves an empty local directory (or
    /// ENOTCONN) where the remote was, and rsync --delete into an empty
    /// directory would be a disaster.
    pub fn check_live(&self) -> Result<()> {
        let found = mounted_type_at(&self.point)?;
        if found.as_deref() != Some(self.fs_type.mountinfo_name()) {
            return Err(Error::new(
                Kind::Tool,
                format!(
                    "{} is no longer a {} mount (found {}): the file system daemon died",
                    self.point.display(),
                    self.fs_type.mountinfo_name(),
                    found.unwrap_or_else(|| "no mount".into())
                ),
            ));
        }
        std::fs::read_dir(&self.point)
            .ctx(|| format!("the mount at {} does not answer", self.point.display()))?;
        // sshfs answers readdir from its cache; statfs always asks the server.
        let answer = match nix::sys::statvfs::statvfs(&self.point) {
            // A server without `statvfs@openssh.com` (rclone serve sftp, many
            // NAS firmwares) answered: it is alive. Ask it something it must
            // answer instead: a name that cannot exist (sshfs does not cache
            // a miss by default, so this reaches the server).
            Err(Errno::EOPNOTSUPP | Errno::ENOSYS) => self.lstat_unlikely_name(),
            other => other.map(|_| ()),
        };
        answer.map_err(|e| {
            Error::new(
                Kind::Tool,
                format!("the mount at {} does not answer: {e}", self.point.display()),
            )
        })
    }

    /// `lstat` of a random name below the mount: ENOENT is an answer.
    fn lstat_unlikely_name(&self) -> std::result::Result<(), Errno> {
        let name = format!(".ciphersync-alive-{}", std::process::id());
        match nix::sys::stat::lstat(&self.point.join(name)) {
            Ok(_) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Unmounts now, reporting failure (the guard's Drop only logs).
    pub fn unmount(mut self) -> Result<()> {
        self.active = false;
        self.root = None;
        let unmounted = unmount_point(&self.point);
        self.end_daemon();
        unmounted
    }

    /// A mount that appeared but does not answer: when its daemon has
    /// exited with an error (sshfs mounts, then finds the remote path
    /// missing), its own words explain it better than ENOTCONN.
    fn why_it_died(&mut self, seen: Error, explain: &impl Fn(&Output) -> Error) -> Error {
        self.root = None;
        self.active = false;
        if let Err(e) = unmount_point(&self.point) {
            log::warn(format!("{e}"));
        }
        match self.daemon.take().and_then(|d| d.finish(DAEMON_EXIT_GRACE)) {
            Some(output) if !output.success() => explain(&output),
            _ => seen,
        }
    }

    /// After the unmount: the daemon exits by itself, or is stopped.
    fn end_daemon(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            let pid = daemon.pid();
            if daemon.finish(DAEMON_EXIT_GRACE).is_none() {
                log::warn(format!(
                    "the {} daemon (pid {pid}) of {} still ran {} s after its unmount and was stopped",
                    self.fs_type.mountinfo_name(),
                    self.point.display(),
                    DAEMON_EXIT_GRACE.as_secs()
                ));
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.root = None; // an open root would make the mount busy
        if self.active
            && let Err(e) = unmount_point(&self.point)
        {
            log::warn(format!("{e}"));
        }
        self.end_daemon();
    }
}

/// Unmounts `point`: a clean unmount first; if the mount is busy or its
/// daemon is gone (ENOTCONN), a lazy one so that nothing stays behind.
pub fn unmount_point(point: &Path) -> Result<()> {
    let clean = Cmd::new("fusermount3")
        .cleanup()
        .timeout(UNMOUNT_TIMEOUT)
        .arg("-u")
        .arg("--")
        .arg(point)
        .run()?;
    if clean.success() || !is_mounted(point)? {
        return Ok(());
    }
    log::debug(|| {
        format!(
            "clean unmount of {} failed ({}); unmounting lazily",
            point.display(),
            clean.stderr.trim()
        )
    });
    // Give a daemon that is just finishing a write a moment, then detach.
    std::thread::sleep(Duration::from_millis(200));
    let lazy = Cmd::new("fusermount3")
        .cleanup()
        .timeout(UNMOUNT_TIMEOUT)
        .arg("-u")
        .arg("-z")
        .arg("--")
        .arg(point)
        .run()?;
    if lazy.success() || !is_mounted(point)? {
        Ok(())
    } else {
        Err(lazy.failure(Some(&format!("unmounting {}", point.display()))))
    }
}

/// Creates a mount point with mode 0700 (only the job's user may look in).
pub fn prepare_point(point: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if is_mounted(point)? {
        return Err(Error::new(
            Kind::Io,
            format!("{} is still mounted", point.display()),
        ));
    }
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(point)
    {
        return Err(Error::io(
            format!("cannot create mount point {}", point.display()),
            e,
        ));
    }
    std::fs::set_permissions(point, std::fs::Permissions::from_mode(0o700))
        .ctx(|| format!("cannot set mode 0700 on {}", point.display()))?;
    let first = std::fs::read_dir(point)
        .ctx(|| format!("reading {}", point.display()))?
        .next();
    if let Some(entry) = first {
        let name = entry
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(Error::new(
            Kind::Io,
            format!(
                "mount point {} is not empty (it holds {name:?})",
                point.display()
            ),
        ));
    }
    Ok(())
}

/// Unmounts whatever a killed run left mounted at or below `dir`, deepest
/// first. Called with the job lock held, so nothing else is using them.
pub fn clean_stale(dir: &Path) -> Result<Vec<PathBuf>> {
    clean_stale_except(dir, None)
}

/// `clean_stale`, leaving alone what lies below `keep` (the mounts of
/// `ciphersync mount`, which outlive the run that made them).
pub fn clean_stale_except(dir: &Path, keep: Option<&Path>) -> Result<Vec<PathBuf>> {
    let mut stale = stale_points(mounts()?, dir);
    if let Some(keep) = keep {
        stale.retain(|p| !p.starts_with(keep));
    }
    for point in &stale {
        log::warn(format!(
            "unmounting {} left behind by an earlier run",
            point.display()
        ));
        unmount_point(point)?;
    }
    Ok(stale)
}

/// The FUSE mounts strictly below `dir`, deepest first. Only FUSE: systemd
/// bind-mounts a unit's RuntimeDirectory onto itself, and that mount (like
/// any other the admin made) is not ours to remove.
fn stale_points(entries: Vec<MountEntry>, dir: &Path) -> Vec<PathBuf> {
    let mut stale: Vec<PathBuf> = entries
        .into_iter()
        .filter(|m| m.fs_type == "fuse" || m.fs_type.starts_with("fuse."))
        .map(|m| m.point)
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    stale.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    stale.dedup();
    stale
}

pub fn is_mounted(point: &Path) -> Result<bool> {
    Ok(mounted_type_at(point)?.is_some())
}

/// The file system type mounted exactly at `point`, if any (the last entry
/// wins, as with stacked mounts).
fn mounted_type_at(point: &Path) -> Result<Option<String>> {
    Ok(mounts()?
        .into_iter()
        .rfind(|m| m.point == point)
        .map(|m| m.fs_type))
}

#[derive(Debug, PartialEq)]
pub struct MountEntry {
    pub point: PathBuf,
    pub fs_type: String,
}

pub fn mounts() -> Result<Vec<MountEntry>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").ctx(|| "reading /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// Parses mountinfo lines: field 5 is the mount point (octal-escaped), the
/// file system type follows the " - " separator.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let point = before.split(' ').nth(4)?;
            let fs_type = after.split(' ').next()?;
            Some(MountEntry {
                point: PathBuf::from(unescape_octal(point)),
                fs_type: fs_type.to_string(),
            })
        })
        .collect()
}

fn unescape_octal(field: &str) -> String {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // `\ooo` with a value that fits a byte (the kernel never writes more;
        // anything else is taken literally).
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')))
            .and_then(|n| u8::try_from(n).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_fuse_mounts_are_stale() {
        let entry = |p: &str, t: &str| MountEntry {
            point: p.into(),
            fs_type: t.into(),
        };
        let entries = vec![
            entry("/run/ciphersync/docs", "tmpfs"), // systemd's RuntimeDirectory bind mount
            entry("/run/ciphersync/docs/cipher", "fuse.gocryptfs-reverse"),
            entry("/run/ciphersync/docs/cipher/x", "fuse.gocryptfs"),
            entry("/run/ciphersync/docsother/remote", "fuse.sshfs"),
            entry("/run/ciphersync/docs/remote", "fuse"),
        ];
        let dir = Path::new("/run/ciphersync/docs");
        let expected: Vec<PathBuf> = [
            "/run/ciphersync/docs/cipher/x",
            "/run/ciphersync/docs/cipher",
            "/run/ciphersync/docs/remote",
        ]
        .map(PathBuf::from)
        .to_vec();
        assert_eq!(stale_points(entries, dir), expected);
    }

    #[test]
    fn mountinfo_escapes_out_of_byte_range_are_literal() {
        let entries = parse_mountinfo("1 2 0:1 / /a\\777b rw - tmpfs t rw\n");
        assert_eq!(entries[0].point, PathBuf::from("/a\\777b"));
    }

    #[test]
    fn mountinfo_with_escaped_spaces() {
        let text = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.sshfs user@host:/x rw\n\
                    37 35 0:5 / /run/x rw - tmpfs tmpfs rw\n";
        let entries = parse_mountinfo(text);
        assert_eq!(
            entries,
            vec![
                MountEntry {
                    point: "/mnt/a b".into(),
                    fs_type: "fuse.sshfs".into()
                },
                MountEntry {
                    point: "/run/x".into(),
                    fs_type: "tmpfs".into()
                },
            ]
        );
    }
}
