//! The account's directory, reached without following a link: every
//! component is opened with `openat(O_NOFOLLOW)` from a descriptor of the
//! root, so a symlink the client planted (over SFTP, say `files/x ->
//! /etc`) is refused rather than followed out of the root.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

use super::request::Below;
use crate::error::{Error, Kind, Result};

pub fn refuse(message: impl Into<String>) -> Error {
    Error::new(Kind::Refused, message)
}

fn errno(what: &str, e: Errno) -> Error {
    Error::new(Kind::Io, format!("{what}: {}", e.desc()))
}

pub fn kind_of(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// The root, held open.
pub struct Root {
    pub path: PathBuf,
    pub fd: OwnedFd,
}

impl Root {
    /// Opens `path` (resolved once, here: the admin's setting) as the root.
    pub fn open(path: &Path) -> Result<Root> {
        let path = std::fs::canonicalize(path)
            .map_err(|e| Error::io(format!("the served directory {}", path.display()), e))?;
        let fd = nix::fcntl::open(&path, DIR_FLAGS, Mode::empty()).map_err(|e| {
            errno(
                &format!("opening the served directory {}", path.display()),
                e,
            )
        })?;
        Ok(Root { path, fd })
    }

    /// The root as the client names it in absolute paths.
    pub fn text(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// The directory `parts` below `from`, every component a real directory.
    pub fn dir_at(&self, from: &OwnedFd, parts: &[String], shown: &str) -> Result<OwnedFd> {
        let mut fd = from
            .try_clone()
            .map_err(|e| Error::io("duplicating a descriptor", e))?;
        for part in parts {
            fd = openat(fd.as_fd(), part.as_str(), DIR_FLAGS, Mode::empty()).map_err(
                |e| match e {
                    Errno::ELOOP | Errno::ENOTDIR => refuse(format!(
                        "path not allowed: {shown} passes a symlink or a file"
                    )),
                    e => errno(shown, e),
                },
            )?;
        }
        Ok(fd)
    }

    /// Opens a regular file below the root for reading.
    pub fn open_file(&self, below: &Below, shown: &str) -> Result<File> {
        let Some((name, dirs)) = below.parts.split_last() else {
            return Err(refuse(format!("{shown}: is a directory")));
        };
        let dir = self.dir_at(&self.fd, dirs, shown)?;
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = openat(dir.as_fd(), name.as_str(), flags, Mode::empty()).map_err(|e| match e {
            Errno::ELOOP => refuse(format!("path not allowed: {shown} is a symlink")),
            e => errno(shown, e),
        })?;
        let st = fstat(&fd).map_err(|e| errno(shown, e))?;
        if kind_of(&st) != SFlag::S_IFREG {
            return Err(refuse(format!("{shown}: not a regular file")));
        }
        Ok(File::from(fd))
    }

    /// Refuses a path that passes a symlink or a file where rsync will
    /// need a directory: every component that exists must be a real
    /// directory, but the last, which may also be a regular file. Missing
    /// components are rsync's to create.
    pub fn check_path(&self, below: &Below, shown: &str) -> Result<()> {
        let mut fd = self
            .fd
            .try_clone()
            .map_err(|e| Error::io("duplicating a descriptor", e))?;
        for (i, part) in below.parts.iter().enumerate() {
            let st = match fstatat(
                fd.as_fd(),
                part.as_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => st,
                Err(Errno::ENOENT) => return Ok(()),
                Err(e) => return Err(errno(shown, e)),
            };
            let last = i + 1 == below.parts.len();
            match kind_of(&st) {
                SFlag::S_IFDIR => {}
                SFlag::S_IFREG if last => return Ok(()),
                SFlag::S_IFLNK => {
                    return Err(refuse(format!(
                        "path not allowed: {shown} passes a symlink"
                    )));
                }
                _ => {
                    return Err(refuse(format!(
                        "path not allowed: {shown} passes something that is not a directory"
                    )));
                }
            }
            fd = openat(fd.as_fd(), part.as_str(), DIR_FLAGS, Mode::empty())
                .map_err(|e| errno(shown, e))?;
        }
        Ok(())
    }

    /// Every regular file below `below` (a directory), relative to it,
    /// sorted on the path's bytes; at most `limit` entries. Symlinks and
    /// other types are left out and never followed.
    pub fn files_below(&self, below: &Below, shown: &str, limit: usize) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.walk_below(below, shown, limit, |rel, st| {
            if kind_of(st) == SFlag::S_IFREG {
                out.push(rel.to_string());
            }
            out.len()
        })?;
        out.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(out)
    }

    /// The stamps of the tree below `below`: the sha1 of the sorted lines
    /// `<type> <mode> <size> <mtime> <ctime> <links> <path>` of every
    /// entry, what rsync's quick check compares and more. Equal stamps
    /// mean nothing below was touched in between (the shell target's
    /// `stamps_of` does the same with find; the two are never compared).
    pub fn stamps_below(&self, below: &Below, shown: &str, limit: usize) -> Result<String> {
        let mut lines = Vec::new();
        self.walk_below(below, shown, limit, |rel, st| {
            lines.push(format!(
                "{:o} {} {}.{:09} {}.{:09} {} {rel}\n",
                st.st_mode,
                st.st_size,
                st.st_mtime,
                st.st_mtime_nsec,
                st.st_ctime,
                st.st_ctime_nsec,
                st.st_nlink
            ));
            lines.len()
        })?;
        Ok(crate::checksums::stamps_of_lines(&mut lines))
    }

    /// Calls `visit` with every entry below `below` (a directory) and its
    /// lstat, descending into real directories only (never a link);
    /// `visit` returns how many entries it kept, at most `limit`.
    fn walk_below(
        &self,
        below: &Below,
        shown: &str,
        limit: usize,
        mut visit: impl FnMut(&str, &FileStat) -> usize,
    ) -> Result<()> {
        let top = self.dir_at(&self.fd, &below.parts, shown)?;
        let mut stack: Vec<(OwnedFd, String)> = vec![(top, String::new())];
        while let Some((fd, prefix)) = stack.pop() {
            crate::interrupt::check()?;
            for name in list_names(&fd, shown, limit)? {
                let rel = match prefix.is_empty() {
                    true => name.clone(),
                    false => format!("{prefix}/{name}"),
                };
                let st = fstatat(
                    fd.as_fd(),
                    name.as_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| errno(&rel, e))?;
                if kind_of(&st) == SFlag::S_IFDIR {
                    let child = openat(fd.as_fd(), name.as_str(), DIR_FLAGS, Mode::empty())
                        .map_err(|e| errno(&rel, e))?;
                    stack.push((child, rel.clone()));
                }
                if visit(&rel, &st) > limit {
                    return Err(refuse(format!("{shown} holds more than {limit} entries")));
                }
            }
        }
        Ok(())
    }
}

/// The names in an open directory (not `.` and `..`), at most `limit`.
pub fn list_names(dir: &OwnedFd, what: &str, limit: usize) -> Result<Vec<String>> {
    use nix::libc;
    use std::os::fd::IntoRawFd;
    let fd = dir
        .try_clone()
        .map_err(|e| Error::io("duplicating a descriptor", e))?
        .into_raw_fd();
    // SAFETY: a descriptor we own; fdopendir takes it over (closedir
    // closes it), and on failure we close it.
    let stream = unsafe { libc::fdopendir(fd) };
    if stream.is_null() {
        let e = Errno::last();
        // SAFETY: still ours after a failed fdopendir.
        unsafe { libc::close(fd) };
        return Err(errno(what, e));
    }
    // SAFETY: a fresh stream positioned at its start.
    unsafe { libc::rewinddir(stream) };
    let mut out = Vec::new();
    let result = loop {
        Errno::clear();
        // SAFETY: a valid stream; the entry is read before the next call.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            break match Errno::last_raw() {
                0 => Ok(()),
                _ => Err(errno(what, Errno::last())),
            };
        }
        // SAFETY: readdir returns a NUL-terminated d_name.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if out.len() >= limit {
            break Err(refuse(format!("{what} holds more than {limit} entries")));
        }
        out.push(String::from_utf8_lossy(name).into_owned());
    };
    // SAFETY: the stream from fdopendir, closed once.
    unsafe { libc::closedir(stream) };
    result.map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Below {
        Below {
            parts: vec!["files".into()],
            trailing_slash: false,
        }
    }

    #[test]
    fn stamps_change_with_any_entry_and_never_follow_a_link() {
        let dir = std::env::temp_dir().join(format!("cs-stamps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("files/d")).unwrap();
        std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
        std::fs::write(dir.join("files/d/a"), "one").unwrap();
        let root = Root::open(&dir).unwrap();
        let stamps = || root.stamps_below(&files(), "files", 100).unwrap();
        let first = stamps();
        assert_eq!(first.len(), 40, "{first}");
        assert_eq!(stamps(), first, "nothing changed");

        // Same size; the mtime set apart from the first (a clock tick may
        // be coarser than two writes).
        std::fs::write(dir.join("files/d/a"), "two").unwrap();
        let file = std::fs::File::options()
            .write(true)
            .open(dir.join("files/d/a"))
            .unwrap();
        file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000))
            .unwrap();
        let rewritten = stamps();
        assert_ne!(rewritten, first, "same size, another mtime");
        std::fs::rename(dir.join("files/d/a"), dir.join("files/d/b")).unwrap();
        let renamed = stamps();
        assert_ne!(renamed, rewritten, "a renamed file");

        std::os::unix::fs::symlink("../../elsewhere", dir.join("files/d/l")).unwrap();
        let linked = stamps();
        assert_ne!(linked, renamed, "a new link");
        std::fs::write(dir.join("elsewhere/x"), "outside").unwrap();
        assert_eq!(stamps(), linked, "the link was followed");
        assert!(
            root.stamps_below(&files(), "files", 1).is_err(),
            "more entries than the limit"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
