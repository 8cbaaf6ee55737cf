//! Writing files without being led astray.
//!
//! * Local directories the helper trusts with what it writes: the state dir
//!   (status, caches, the lock), the runtime dir (ssh_config, control
//!   sockets, mount points) and restore's `--to`. A directory another user
//!   owns or may write to lets that user plant a symlink or an ssh_config
//!   where root will write or read next, so such a directory is refused.
//! * Atomic writes: a random temp name created with O_EXCL|O_NOFOLLOW in a
//!   directory held open, then renamed over the real name. Below a target's
//!   root (a local disk, an sshfs mount) every directory is opened without
//!   following a link too: the target decides what its tree holds, and a
//!   planted `records -> /etc` must not make root write into /etc.

use std::ffi::CString;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::libc;

use crate::error::{Error, IoContext, Kind, Result};

/// Creates `dir` with mode 0700 if it is missing (its parents with the
/// default mode), then checks it as `check_private_dir` does. `what`
/// names the directory in errors (`state_dir`, `--to`).
pub fn ensure_private_dir(dir: &Path, what: &str) -> Result<()> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => check_private_dir(dir, what),
        Err(e) => Err(Error::io(
            format!("cannot create {what} {}", dir.display()),
            e,
        )),
    }
}

/// `dir` must be a directory owned by the user running the helper and not
/// writable by group or others. The error names the path and the fix.
pub fn check_private_dir(dir: &Path, what: &str) -> Result<()> {
    let meta = std::fs::metadata(dir)
        .map_err(|e| Error::io(format!("cannot read {what} {}", dir.display()), e))?;
    if !meta.is_dir() {
        return Err(Error::usage(format!(
            "{what} {} is not a directory",
            dir.display()
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(Error::new(
            Kind::Refused,
            format!(
                "{what} {} belongs to uid {}, not to the user running ciphersync (uid {me}): \
                 another user could plant files there; remove it (ciphersync creates it) or `chown {me} {}`",
                dir.display(),
                meta.uid(),
                dir.display()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Error::new(
            Kind::Refused,
            format!(
                "{what} {} is writable by group or others (mode {mode:04o}): \
                 another user could plant files there; run `chmod go-w {}`",
                dir.display(),
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// A directory held open: files are created and renamed relative to it.
struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn c_name(name: &str) -> Result<CString> {
    CString::new(name)
        .map_err(|_| Error::new(Kind::Corrupt, format!("the name {name:?} holds a NUL byte")))
}

fn last_os_error(what: String) -> Error {
    Error::io(what, std::io::Error::last_os_error())
}

impl Dir {
    /// A directory the configuration names (it may be reached through a
    /// link the user made).
    fn open(path: &Path) -> Result<Dir> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| Error::usage(format!("{} holds a NUL byte", path.display())))?;
        // SAFETY: a valid C string; the returned descriptor is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(last_os_error(format!("opening {}", path.display())));
        }
        // SAFETY: fd was just returned by open and is owned by nobody else.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_owned(),
        })
    }

    /// `openat(self, name, flags | O_NOFOLLOW | O_CLOEXEC)`, read-only.
    fn open_at(&self, name: &str, flags: libc::c_int) -> std::io::Result<OwnedFd> {
        let c = CString::new(name).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | flags;
        // SAFETY: a valid directory descriptor and C string.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by openat and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// A subdirectory, never through a symlink.
    fn child(&self, name: &str) -> Result<Dir> {
        let path = self.path.join(name);
        match self.open_at(name, libc::O_DIRECTORY) {
            Ok(fd) => Ok(Dir { fd, path }),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                Err(Error::new(
                    Kind::Corrupt,
                    format!(
                        "{} is not a directory (a symlink or a file): refusing to write through it",
                        path.display()
                    ),
                ))
            }
            Err(e) => Err(Error::io(format!("opening {}", path.display()), e)),
        }
    }

    /// `rel` (a relative directory path, "" for the root itself) below a
    /// root, one component at a time, following no link.
    fn below(root: &Path, rel: &str) -> Result<Dir> {
        let mut dir = Dir::open(root)?;
        for part in rel.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." {
                return Err(Error::new(
                    Kind::Corrupt,
                    format!("{rel:?} leaves {}", root.display()),
                ));
            }
            dir = dir.child(part)?;
        }
        Ok(dir)
    }

    /// Opens `name` for reading: a regular file, not a link.
    fn open_file(&self, name: &str) -> Result<File> {
        let path = self.path.join(name);
        // O_NONBLOCK: a FIFO planted there must not hang the open.
        let file = File::from(
            self.open_at(name, libc::O_NONBLOCK)
                .ctx(|| format!("opening {}", path.display()))?,
        );
        let meta = file
            .metadata()
            .ctx(|| format!("reading {}", path.display()))?;
        if !meta.is_file() {
            return Err(Error::new(
                Kind::Corrupt,
                format!("{} is not a regular file", path.display()),
            ));
        }
        Ok(file)
    }
}

/// Splits `dir/name` into its directory part ("" at the top) and name.
fn split_rel(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

/// A random hex string from the kernel's generator (temp names, samples).
pub fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .ctx(|| "reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `bytes` to `path` atomically (see `AtomicFile`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)
        .ctx(|| format!("writing {}", path.display()))?;
    file.commit()
}

/// A file written in full under a random temp name and then renamed over
/// its real name: readers see the old file or the new one, never half of
/// one. The temp file is created new (O_EXCL), never through a link, in a
/// directory held open, and renamed within it. Dropped without `commit`,
/// the temp file is removed.
pub struct AtomicFile {
    dir: Dir,
    temp: String,
    name: String,
    out: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// `path`'s directory is trusted (the state dir, a path from the job).
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let dir = Dir::open(path.parent().unwrap_or(Path::new("/")))?;
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        AtomicFile::create_in(dir, &name)
    }

    /// `rel` below a target's root: no directory on the way is followed
    /// if it is a link.
    pub fn create_under(root: &Path, rel: &str) -> Result<AtomicFile> {
        let (dir, name) = split_rel(rel);
        AtomicFile::create_in(Dir::below(root, dir)?, name)
    }

    fn create_in(dir: Dir, name: &str) -> Result<AtomicFile> {
        for _ in 0..8 {
            let temp = format!(".{name}.{}.tmp", random_hex(6)?);
            let c = c_name(&temp)?;
            // SAFETY: a valid directory descriptor and C string.
            let fd = unsafe {
                libc::openat(
                    dir.fd.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o600 as libc::c_uint,
                )
            };
            if fd >= 0 {
                // SAFETY: as in `Dir::open`.
                let file = unsafe { File::from_raw_fd(fd) };
                return Ok(AtomicFile {
                    dir,
                    temp,
                    name: name.to_owned(),
                    out: Some(BufWriter::new(file)),
                });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(Error::io(
                    format!("creating a temp file in {}", dir.path.display()),
                    e,
                ));
            }
        }
        Err(Error::new(
            Kind::Io,
            format!("no free temp name in {}", dir.path.display()),
        ))
    }

    fn path(&self) -> PathBuf {
        self.dir.path.join(&self.name)
    }

    /// The mode the file will have (created 0600).
    pub fn set_mode(&self, mode: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let out = self.out.as_ref().expect("not committed");
        out.get_ref()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .ctx(|| format!("setting the mode of {}", self.path().display()))
    }

    pub fn commit(mut self) -> Result<()> {
        let out = self.out.take().expect("an uncommitted file has its writer");
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .ctx(|| format!("writing {}", self.path().display()))?;
        file.sync_all()
            .ctx(|| format!("writing {}", self.path().display()))?;
        drop(file);
        let (temp, name) = (c_name(&self.temp)?, c_name(&self.name)?);
        let fd = self.dir.fd.as_raw_fd();
        // SAFETY: valid descriptors and C strings. renameat replaces a
        // link planted at `name` itself, never what it points to.
        if unsafe { libc::renameat(fd, temp.as_ptr(), fd, name.as_ptr()) } != 0 {
            let e = last_os_error(format!("replacing {}", self.path().display()));
            self.remove_temp();
            return Err(e);
        }
        // SAFETY: a valid descriptor.
        if unsafe { libc::fsync(fd) } != 0 {
            return Err(last_os_error(format!(
                "syncing {}",
                self.dir.path.display()
            )));
        }
        Ok(())
    }

    fn remove_temp(&self) {
        if let Ok(temp) = c_name(&self.temp) {
            // SAFETY: a valid descriptor and C string.
            unsafe { libc::unlinkat(self.dir.fd.as_raw_fd(), temp.as_ptr(), 0) };
        }
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.as_mut().expect("not committed").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            self.remove_temp();
        }
    }
}

/// Opens `rel` below a target's root for reading: a regular file, reached
/// through no link; `None` if it is missing.
pub fn open_below(root: &Path, rel: &str) -> Result<Option<File>> {
    let (dir, name) = split_rel(rel);
    let dir = match Dir::below(root, dir) {
        Ok(dir) => dir,
        Err(e) if e.kind == Kind::Io && !root.join(rel).exists() => return Ok(None),
        Err(e) => return Err(e),
    };
    match dir.open_file(name) {
        Ok(file) => Ok(Some(file)),
        Err(_) if std::fs::symlink_metadata(root.join(rel)).is_err() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Copies `from` to `to`, both relative to a target's root, keeping the
/// mode and mtime: gocryptfs' small per-directory files, copied into a
/// snapshot dir. Neither side is reached through a link, and at most
/// `limit` bytes are read: the target chooses what these files hold.
pub fn copy_below(root: &Path, from: &str, to: &str, limit: u64) -> Result<()> {
    let (from_dir, from_name) = split_rel(from);
    let source = Dir::below(root, from_dir)?.open_file(from_name)?;
    let meta = source.metadata().ctx(|| format!("reading {from}"))?;
    if meta.len() > limit {
        return Err(Error::new(
            Kind::Corrupt,
            format!(
                "{} on the target holds {} bytes, more than the {limit} it may",
                root.join(from).display(),
                meta.len()
            ),
        ));
    }
    let mut copy = AtomicFile::create_under(root, to)?;
    std::io::copy(&mut (&source).take(limit), &mut copy)
        .ctx(|| format!("copying {from} to {to}"))?;
    let out = copy.out.as_mut().expect("not committed").get_ref();
    use std::os::unix::fs::PermissionsExt;
    out.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o777))
        .ctx(|| format!("setting the mode of {to}"))?;
    if let Ok(mtime) = meta.modified() {
        copy.flush().ctx(|| format!("writing {to}"))?;
        let out = copy.out.as_mut().expect("not committed").get_ref();
        out.set_modified(mtime)
            .ctx(|| format!("setting the time of {to}"))?;
    }
    copy.commit()
}

/// Bytes an unprivileged writer may still use on the file system of
/// `path`, or None when it cannot be asked.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// Whether `path` lies on a tmpfs: written there, a file costs memory,
/// not a disk write.
pub fn on_tmpfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// The kernel's estimate of the memory available without swapping
/// (`MemAvailable` of /proc/meminfo), in bytes.
pub fn mem_available() -> Option<u64> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open("/proc/meminfo")
        .ok()?
        .take(64 * 1024)
        .read_to_string(&mut text)
        .ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn memory_available_is_read_and_dev_shm_is_tmpfs() {
        let available = mem_available().expect("MemAvailable in /proc/meminfo");
        assert!(available > 0);
        if Path::new("/dev/shm").is_dir() {
            assert!(
                on_tmpfs(Path::new("/dev/shm")),
                "/dev/shm is not a tmpfs here"
            );
        }
        assert!(!on_tmpfs(Path::new("/proc")), "/proc taken for a tmpfs");
    }

    fn temp(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cs-fsutil-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn writes_below_a_root_never_pass_a_planted_link() {
        let root = temp("below");
        let elsewhere = temp("elsewhere");
        std::fs::create_dir_all(root.join("files")).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("records")).unwrap();
        let err = AtomicFile::create_under(&root, "records/1.rec")
            .err()
            .expect("refused");
        assert!(
            err.message.contains("is not a directory (a symlink"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "wrote through the link"
        );

        // A link planted at the final name is replaced, its target untouched.
        let victim = elsewhere.join("victim");
        std::fs::write(&victim, "local").unwrap();
        std::os::unix::fs::symlink(&victim, root.join("files/gocryptfs.conf")).unwrap();
        let mut f = AtomicFile::create_under(&root, "files/gocryptfs.conf").unwrap();
        f.write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "local");
        assert_eq!(
            std::fs::read_to_string(root.join("files/gocryptfs.conf")).unwrap(),
            "new"
        );

        // A copy never reads through a link either.
        std::os::unix::fs::symlink(&victim, root.join("files/gocryptfs.diriv")).unwrap();
        let err = copy_below(&root, "files/gocryptfs.diriv", "files/copy", 1024).unwrap_err();
        assert!(err.to_string().contains("gocryptfs.diriv"), "{err}");
        assert!(
            !root.join("files/copy").exists(),
            "a copy through a link was written"
        );
    }

    #[test]
    fn an_uncommitted_file_leaves_nothing() {
        let root = temp("drop");
        std::fs::create_dir_all(&root).unwrap();
        let mut f = AtomicFile::create(&root.join("status.json")).unwrap();
        f.write_all(b"half").unwrap();
        drop(f);
        assert_eq!(
            std::fs::read_dir(&root).unwrap().count(),
            0,
            "a temp file was left"
        );
    }

    #[test]
    fn a_missing_dir_is_created_private() {
        let dir = temp("new").join("a/b");
        ensure_private_dir(&dir, "state_dir").unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_dir_others_may_write_is_refused_with_the_fix() {
        let dir = temp("open");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_private_dir(&dir, "runtime_dir").unwrap_err();
        assert_eq!(err.kind, Kind::Refused, "{err}");
        assert!(
            err.message.contains("mode 0777") && err.message.contains("chmod go-w"),
            "the error should name the mode and the fix: {err}"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_private_dir(&dir, "runtime_dir").expect("0755 is not writable by others");
    }
}
