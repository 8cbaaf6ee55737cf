//! A whole restore from a stage decrypted here (gocrypt.rs), not through a
//! gocryptfs mount copied out with rsync: a FUSE request per open, read,
//! stat and close made the copy-out of 200,000 small files the longest
//! step of a restore (bench/analysis.md, stop 31).
//!
//! It does what the rsync copy out of the mount does (`copy_pass`): the
//! directories first (private while they fill), then the files and
//! symlinks by several workers, hard links kept, then each directory's
//! mode and times, deepest first. No device or special file is made, no
//! setuid or setgid bit kept unless asked, no owner applied (the stored
//! owners come from the manifest, as after rsync). The stage is ours
//! alone and was checked against the run's record before this runs
//! (restore.rs `rebuild`); still nothing here follows a link, and every
//! name is decrypted and checked (gocrypt/names.rs) before it is used.
//!
//! A file or name that does not decrypt is named at the end with why, and
//! everything else is restored, as rsync does with a file gocryptfs
//! refuses to read (EIO).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Copied;
use crate::error::{Error, IoContext, Kind, Result};
use crate::gocrypt::names::{self, DIRIV, DIRIV_LEN, Stored};
use crate::gocrypt::{self, Keys};
use crate::progress::Phase;
use crate::rsync::Stats;

/// What the copy keeps of what the backup stored.
pub(super) struct Options {
    pub keep_setuid: bool,
    pub workers: usize,
}

/// Decrypts the cipher tree `stage` into the empty directory `to`,
/// removing each file of the stage once it is read.
pub(super) fn copy_out(
    keys: &Keys,
    stage: &Path,
    to: &Path,
    options: &Options,
    phase: Option<&Phase>,
) -> Result<Copied> {
    let top = std::fs::symlink_metadata(stage).ctx(|| format!("reading {}", stage.display()))?;
    let mut tree = Tree::default();
    tree.dirs.push(Dir {
        cipher: stage.to_path_buf(),
        plain: PathBuf::new(),
        stamp: Stamp::of(&top),
    });
    tree.scan(keys, 0)?;
    // Parents first, each name once (`scan`): nothing is there yet.
    for dir in &tree.dirs[1..] {
        crate::crypt::create_private_dir(&to.join(&dir.plain))?;
    }
    let entries = tree.items.iter().map(Item::len).sum::<usize>() as u64;
    crate::log::debug(|| {
        let dirs = tree.dirs.len();
        format!("restore: the stage's names decrypted: {entries} entries in {dirs} directories")
    });
    if let Some(phase) = phase {
        phase.set_total(crate::progress::Totals {
            files: Some(entries),
            bytes: None,
        });
    }
    let copier = Copier {
        keys,
        dirs: &tree.dirs,
        to,
        options,
        phase,
        failed: Mutex::new(std::mem::take(&mut tree.failed)),
        next: AtomicUsize::new(0),
    };
    let per_worker = copier.run(&tree.items)?;
    let mut stats = Stats::default();
    for s in per_worker {
        stats.add(&s);
    }
    for dir in tree.dirs[1..].iter().rev() {
        set_dir_stamp(&to.join(&dir.plain), dir.stamp, options.keep_setuid)?;
    }
    set_times_of_dir(to, tree.dirs[0].stamp)?;
    stats.files = entries + tree.dirs.len() as u64 - 1;
    let failed = copier
        .failed
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    Ok(Copied::named(stats, failed))
}

/// What is restored of an entry's inode: its mode and mtime. Kept instead
/// of the whole `stat` (144 bytes): a tree of 200,000 entries is held at
/// once.
#[derive(Clone, Copy)]
struct Stamp {
    mode: u32,
    mtime: (i64, u32),
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        Stamp {
            mode: meta.mode(),
            mtime: (meta.mtime(), meta.mtime_nsec() as u32),
        }
    }

    fn timespec(self) -> nix::sys::time::TimeSpec {
        nix::sys::time::TimeSpec::new(self.mtime.0, i64::from(self.mtime.1))
    }

    fn set_mtime(self, file: &File) -> std::io::Result<()> {
        set_mtime(file, self.mtime)
    }
}

/// Sets the mtime of the open file or directory `file` to (seconds,
/// nanoseconds); its atime stays. As the kernel takes it: no arithmetic
/// on a time the server chose.
pub(super) fn set_mtime(file: &File, (secs, nanos): (i64, u32)) -> std::io::Result<()> {
    use nix::sys::time::TimeSpec;
    let when = TimeSpec::new(secs, i64::from(nanos));
    nix::sys::stat::futimens(file, &TimeSpec::UTIME_OMIT, &when).map_err(std::io::Error::from)
}

/// A directory of the stage: its path there and in `--to` (relative).
struct Dir {
    cipher: PathBuf,
    plain: PathBuf,
    stamp: Stamp,
}

/// An entry of the directory numbered `dir`, by its two names.
struct Entry {
    dir: u32,
    cipher_name: Box<OsStr>,
    plain_name: Box<OsStr>,
    stamp: Stamp,
}

impl Entry {
    fn cipher(&self, dirs: &[Dir]) -> PathBuf {
        dirs[self.dir as usize].cipher.join(&*self.cipher_name)
    }

    fn plain(&self, dirs: &[Dir]) -> PathBuf {
        dirs[self.dir as usize].plain.join(&*self.plain_name)
    }
}

/// What a worker restores at once.
enum Item {
    File(Entry),
    /// Hard links to one inode: the first decrypted, the rest linked to it.
    Linked(Vec<Entry>),
    Symlink(Entry),
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::Linked(all) => all.len(),
            _ => 1,
        }
    }
}

/// The stage, decrypted by name: directories in walk order (parents
/// first, the top one first), the rest as work items, and the names that
/// did not decrypt.
#[derive(Default)]
struct Tree {
    dirs: Vec<Dir>,
    items: Vec<Item>,
    /// Where a hard-linked inode's item is, by (device, inode).
    linked: HashMap<(u64, u64), usize>,
    failed: Vec<String>,
}

impl Tree {
    /// Adds the entries of directory `at` (an index into `dirs`), and
    /// those below its subdirectories.
    fn scan(&mut self, keys: &Keys, at: usize) -> Result<()> {
        let naming = keys.format.naming;
        let dir = self.dirs[at].cipher.clone();
        let iv = match naming.per_directory_iv {
            true => read_diriv(&dir)?,
            false => [0u8; DIRIV_LEN],
        };
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .ctx(|| format!("listing {}", dir.display()))?
            .collect::<std::io::Result<_>>()
            .ctx(|| format!("listing {}", dir.display()))?;
        entries.sort_by_cached_key(|e| e.file_name());
        // One plaintext name once per directory: a hostile server could
        // store one name under two encrypted forms.
        let mut seen = std::collections::HashSet::new();
        for entry in entries {
            let cipher_name = entry.file_name();
            let name = match names::classify(cipher_name.as_bytes(), at == 0) {
                Stored::Metadata => continue,
                Stored::Short(name) => names::decrypt(keys.name_cipher(), naming, name, &iv),
                Stored::Long(hash) => read_long_name(&entry.path()).and_then(|long| {
                    let long = names::check_long(naming, hash, &long)?.to_vec();
                    names::decrypt(keys.name_cipher(), naming, &long, &iv)
                }),
            };
            let name = match name {
                Ok(name) if !seen.insert(name.clone()) => {
                    let where_ = self.dirs[at].plain.join(OsStr::from_bytes(&name));
                    self.failed
                        .push(named(&where_, "is stored twice, under two encrypted names"));
                    continue;
                }
                Ok(name) => name,
                Err(why) => {
                    let where_ = self.dirs[at].plain.join(&cipher_name);
                    self.failed
                        .push(named(&where_, &format!("the encrypted name {why}")));
                    continue;
                }
            };
            let meta = entry
                .metadata()
                .ctx(|| format!("reading {}", entry.path().display()))?;
            let plain_name = OsStr::from_bytes(&name);
            if meta.is_dir() {
                self.dirs.push(Dir {
                    cipher: entry.path(),
                    plain: self.dirs[at].plain.join(plain_name),
                    stamp: Stamp::of(&meta),
                });
                self.scan(keys, self.dirs.len() - 1)?;
                continue;
            }
            let item = Entry {
                dir: at as u32,
                cipher_name: cipher_name.into_boxed_os_str(),
                plain_name: plain_name.into(),
                stamp: Stamp::of(&meta),
            };
            self.add(item, &meta);
        }
        Ok(())
    }

    /// Adds a file or symlink. Devices, fifos and sockets are not restored
    /// (rsync's --no-devices --no-specials).
    fn add(&mut self, entry: Entry, meta: &Metadata) {
        let kind = meta.file_type();
        if kind.is_symlink() {
            self.items.push(Item::Symlink(entry));
        } else if kind.is_file() && meta.nlink() > 1 {
            let inode = (meta.dev(), meta.ino());
            match self.linked.get(&inode) {
                Some(&at) => match &mut self.items[at] {
                    Item::Linked(all) => all.push(entry),
                    _ => unreachable!("the map points at Linked items only"),
                },
                None => {
                    self.linked.insert(inode, self.items.len());
                    self.items.push(Item::Linked(vec![entry]));
                }
            }
        } else if kind.is_file() {
            self.items.push(Item::File(entry));
        }
    }
}

/// Workers over the items, each taking the next few in turn.
struct Copier<'a> {
    keys: &'a Keys,
    dirs: &'a [Dir],
    to: &'a Path,
    options: &'a Options,
    phase: Option<&'a Phase>,
    failed: Mutex<Vec<String>>,
    next: AtomicUsize,
}

/// Items a worker takes at once: few enough to keep the workers even at
/// the end, enough that the counter is not contended.
const ITEMS_PER_TAKE: usize = 32;

impl Copier<'_> {
    fn run(&self, items: &[Item]) -> Result<Vec<Stats>> {
        let workers = self.options.workers.clamp(1, 16);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| scope.spawn(|| self.work(items)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a decrypting worker panicked"))
                .collect()
        })
    }

    fn work(&self, items: &[Item]) -> Result<Stats> {
        let mut cipher = self.keys.content();
        let mut stats = Stats::default();
        loop {
            let start = self.next.fetch_add(ITEMS_PER_TAKE, Ordering::Relaxed);
            if start >= items.len() {
                return Ok(stats);
            }
            crate::interrupt::check()?;
            let end = (start + ITEMS_PER_TAKE).min(items.len());
            for item in &items[start..end] {
                if let Err(why) = self.restore(&mut cipher, item, &mut stats) {
                    let failed = &mut self.failed.lock().unwrap_or_else(|e| e.into_inner());
                    failed.push(why);
                }
            }
        }
    }

    /// Restores one item; Err: the line that names what failed.
    fn restore(
        &self,
        cipher: &mut gocrypt::ContentCipher,
        item: &Item,
        stats: &mut Stats,
    ) -> std::result::Result<(), String> {
        match item {
            Item::File(entry) => self.file(cipher, entry, stats),
            Item::Linked(all) => {
                self.file(cipher, &all[0], stats)
                    .map_err(|why| match all.len() {
                        1 => why,
                        n => format!(
                            "{why}; its {} other name(s) were not restored either",
                            n - 1
                        ),
                    })?;
                self.count(all.len() as u64 - 1, 0);
                let first = self.to.join(all[0].plain(self.dirs));
                for other in &all[1..] {
                    let plain = other.plain(self.dirs);
                    std::fs::hard_link(&first, self.to.join(&plain))
                        .map_err(|e| named(&plain, &format!("cannot be linked: {e}")))?;
                }
                Ok(())
            }
            Item::Symlink(entry) => self.symlink(cipher, entry),
        }
    }

    fn file(
        &self,
        cipher: &mut gocrypt::ContentCipher,
        entry: &Entry,
        stats: &mut Stats,
    ) -> std::result::Result<(), String> {
        let plain = entry.plain(self.dirs);
        let out_path = self.to.join(&plain);
        let from = entry.cipher(self.dirs);
        let written = decrypt_file(cipher, &from, &out_path, entry.stamp, self.options);
        // The stage is given back as it is read: removed by one thread
        // after the copy it took 1.3 s of 200,000 files, and on a tmpfs it
        // holds memory. What cannot go now (a read-only directory) goes
        // with the rest of the stage.
        let _ = std::fs::remove_file(&from);
        let written = written.map_err(|why| named(&plain, &why))?;
        stats.transferred += 1;
        stats.bytes_transferred += written;
        self.count(1, written);
        Ok(())
    }

    /// Entries (each name of a hard-linked file, each symlink) and bytes
    /// done, for the progress line.
    fn count(&self, entries: u64, bytes: u64) {
        if let Some(phase) = self.phase {
            phase.add(entries, bytes);
        }
    }

    fn symlink(
        &self,
        cipher: &mut gocrypt::ContentCipher,
        entry: &Entry,
    ) -> std::result::Result<(), String> {
        let plain = entry.plain(self.dirs);
        let stored = std::fs::read_link(entry.cipher(self.dirs))
            .map_err(|e| named(&plain, &format!("cannot be read: {e}")))?;
        let raw64 = self.keys.format.naming.raw64;
        let target = cipher
            .decrypt_link(stored.as_os_str().as_bytes(), raw64)
            .map_err(|e| named(&plain, &e.to_string()))?;
        let path = self.to.join(&plain);
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
            .map_err(|e| named(&plain, &format!("cannot be made: {e}")))?;
        set_link_times(&path, entry.stamp)
            .map_err(|e| named(&plain, &format!("cannot get its times: {e}")))?;
        self.count(1, 0);
        Ok(())
    }
}

/// Decrypts cipher file `from` into the new file `to` and gives it the
/// mode and mtime of `stamp`; the plaintext bytes written.
fn decrypt_file(
    cipher: &mut gocrypt::ContentCipher,
    from: &Path,
    to: &Path,
    stamp: Stamp,
    options: &Options,
) -> std::result::Result<u64, String> {
    let mut input = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(from)
        .map_err(|e| format!("cannot be read: {e}"))?;
    let fill = |out: &mut File| {
        cipher
            .decrypt_file(&mut input, out)
            .map_err(|e| e.to_string())
    };
    let give_stamp = |out: &File| {
        let mode = restored_mode(stamp.mode, options.keep_setuid);
        out.set_permissions(std::fs::Permissions::from_mode(mode))?;
        stamp.set_mtime(out)
    };
    write_new(to, fill, &give_stamp)
}

/// Creates `path` new (not through a link), private while `fill` writes
/// it, then gives it `stamp`; the bytes written. What fails after the
/// file was made removes it, and only it: a name that exists already
/// (a hostile server can store one name twice) is never touched, and
/// nothing half-decrypted stays in --to.
pub(super) fn write_new(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::result::Result<u64, String>,
    stamp: &dyn Fn(&File) -> std::io::Result<()>,
) -> std::result::Result<u64, String> {
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("cannot be made: {e}"))?;
    let done = fill(&mut out).and_then(|written| {
        stamp(&out).map_err(|e| format!("cannot get its mode and times: {e}"))?;
        Ok(written)
    });
    if done.is_err() {
        let _ = std::fs::remove_file(path);
    }
    done
}

/// The permission bits restored: setuid and setgid only when kept (rsync's
/// `--chmod=ug-s` otherwise).
pub(super) fn restored_mode(mode: u32, keep_setuid: bool) -> u32 {
    match keep_setuid {
        true => mode & 0o7777,
        false => mode & 0o1777,
    }
}

/// The 16-byte IV of cipher dir `dir`.
fn read_diriv(dir: &Path) -> Result<[u8; DIRIV_LEN]> {
    let path = dir.join(DIRIV);
    let mut bytes = Vec::with_capacity(DIRIV_LEN + 1);
    open_nofollow(&path)
        .and_then(|f| f.take(DIRIV_LEN as u64 + 1).read_to_end(&mut bytes))
        .ctx(|| format!("reading {}", path.display()))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        Error::new(
            Kind::Corrupt,
            format!(
                "{}: {} bytes, not the {DIRIV_LEN} of a gocryptfs directory IV",
                path.display(),
                b.len()
            ),
        )
    })
}

/// The encrypted name in the `.name` file of long name `cipher`.
fn read_long_name(cipher: &Path) -> std::result::Result<Vec<u8>, names::NameError> {
    let file = cipher.with_file_name(OsStr::from_bytes(&names::long_name_file(
        cipher.file_name().unwrap_or_default().as_bytes(),
    )));
    let mut long = Vec::new();
    let read =
        open_nofollow(&file).and_then(|f| f.take(names::LONG_NAME_MAX + 1).read_to_end(&mut long));
    match read {
        Ok(n) if n > 0 && n as u64 <= names::LONG_NAME_MAX => Ok(long),
        _ => Err(names::NameError::LongNameFile),
    }
}

fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// A restored directory's mode and mtime, set through a descriptor opened
/// without following a link.
fn set_dir_stamp(path: &Path, stamp: Stamp, keep_setuid: bool) -> Result<()> {
    let mode = restored_mode(stamp.mode, keep_setuid);
    let dir = open_dir(path)?;
    dir.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|_| stamp.set_mtime(&dir))
        .ctx(|| format!("setting the mode and times of {}", path.display()))
}

fn set_times_of_dir(path: &Path, stamp: Stamp) -> Result<()> {
    stamp
        .set_mtime(&open_dir(path)?)
        .ctx(|| format!("setting the times of {}", path.display()))
}

pub(super) fn open_dir(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(path)
        .ctx(|| format!("opening {}", path.display()))
}

/// A symlink's own mtime (rsync -a sets it too).
fn set_link_times(path: &Path, stamp: Stamp) -> nix::Result<()> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_OMIT,
        &stamp.timespec(),
        UtimensatFlags::NoFollowSymlink,
    )
}

/// `path (why)`, escaped for a terminal.
pub(super) fn named(path: &Path, why: &str) -> String {
    crate::human::escape(&format!("{} ({why})", path.to_string_lossy()))
}

/// The format of the job's config where gocrypt.rs reads it; None where
/// only gocryptfs can, or where the job has no config here (a new machine:
/// the mount reads the stage's own).
pub(super) fn format_of(job: &crate::config::Job) -> Option<gocrypt::Format> {
    let text = crate::keys::read_local_config(job).ok()?;
    gocrypt::Format::of_config(&text)
}
