//! A whole restore from an SFTP account decrypted as the files arrive,
//! with no stage: the fetch (target/sftp.rs, `SftpFetcher::hand`) hands
//! each whole file to workers that decrypt it into `--to`. Writing 200,000
//! small files into a stage, checking, chmod-ing and reading them back
//! cost a restore of data set SMALL more CPU than decrypting them, and
//! nothing could be decrypted before the last file had arrived
//! (bench/analysis.md, stop 33).
//!
//! Names come first: every directory's IV and every long name's `.name`
//! file are fetched before any file, so that each directory of the run's
//! record is decrypted and made (private) before the files that go into
//! it, and a worker decrypts a file's own name as it gets the file. As in
//! restore/decrypt.rs, every name is checked (gocrypt/names.rs), every
//! block authenticated before a byte of it is written, files are created
//! new without following links, no setuid or setgid bit is kept unless
//! asked, and what fails is named while the rest is restored. A file the
//! server will not give back is named by its plaintext path.
//!
//! Memory: the fetch and the queue hold at most `HELD_MAX` bytes of small
//! files (larger ones go to unnamed files in a private spill directory),
//! and each worker the one file it decrypts (at most `HOLD_MAX`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use super::Copied;
use super::decrypt::{Options, named, open_dir, restored_mode, set_mtime, write_new};
use crate::error::{IoContext, Result};
use crate::gocrypt::names::{self, DIRIV, DIRIV_LEN, Stored};
use crate::gocrypt::{ContentCipher, Keys};
use crate::progress::Phase;
use crate::rsync::Stats;
use crate::target::{Content, Hand, Handed, SftpFetcher};
use crate::target::{FILES, SNAPSHOTS, TreeEntry};

/// Files fetched and not yet taken by a worker: few, each is held whole
/// (the bytes are bounded by `HELD_MAX` besides).
const QUEUED_MAX: usize = 256;

/// Where a restore's files come from: each source directory of the
/// account (files/ or a snapshot dir) with the record's entries it holds.
pub(super) type Plan<'a> = BTreeMap<Option<&'a str>, Vec<&'a TreeEntry>>;

/// What a streamed restore needs besides its plan.
pub(super) struct Streamed<'a> {
    pub fetcher: &'a SftpFetcher<'a>,
    pub keys: &'a Keys,
    /// The run's record: its directories and the symlinks it keeps.
    pub entries: &'a [TreeEntry],
    pub to: &'a Path,
    /// A private directory for files too large to hold, and the bytes a
    /// spilled file must leave free there.
    pub spill: (&'a Path, u64),
    pub options: &'a Options,
    pub phase: Option<&'a Phase>,
}

/// The account directory a plan's source names.
fn source_dir(source: Option<&str>) -> String {
    match source {
        Some(snapshot) => format!("{SNAPSHOTS}/{snapshot}"),
        None => FILES.to_string(),
    }
}

/// The directory IVs and long names of the run, by their cipher path.
type NameFiles = HashMap<String, Vec<u8>>;

impl Streamed<'_> {
    /// Makes the run's directories from its names (`fetch_names`), then
    /// fetches everything else into `to`.
    pub(super) fn restore(&self, plan: &Plan, name_files: &NameFiles) -> Result<Copied> {
        let mut failed = Vec::new();
        let dirs = Dirs::make(self, name_files, &mut failed)?;
        let fetched = plan
            .values()
            .flatten()
            .filter(|e| !is_gocryptfs_own(&e.path));
        let kept_links = self.entries.iter().filter(|e| e.link.is_some());
        let files = (fetched.count() + kept_links.count()) as u64;
        if let Some(phase) = self.phase {
            phase.set_total(crate::progress::Totals {
                files: Some(files),
                bytes: None,
            });
        }
        let workers = Workers {
            run: self,
            dirs: &dirs,
            name_files,
            failed: Mutex::new(failed),
        };
        let stats = workers.run(plan)?;
        // Deepest first: a read-only directory would refuse its entries.
        for dir in dirs.list.iter().skip(1).rev() {
            set_dir_mode(&self.to.join(&dir.plain), dir.mode, self.options)?;
        }
        let failed = workers
            .failed
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        Ok(Copied::named(stats, failed))
    }
}

/// Fetches every directory IV and long name's `.name` file of `plan`:
/// one of another size than gocryptfs writes is left out (the names that
/// need it are named as failed); one the server says is over
/// `HOLD_MAX` bytes ends the restore as corrupt.
pub(super) fn fetch_names(fetcher: &SftpFetcher, plan: &Plan) -> Result<NameFiles> {
    let mut found = NameFiles::new();
    let held = AtomicUsize::new(0);
    for (source, entries) in plan {
        let from = source_dir(*source);
        let wanted = entries
            .iter()
            .filter(|e| e.kind == 'f' && is_name_file(&e.path));
        let mut sink = |handed: Handed| {
            if let Content::Held(bytes) = handed.content {
                held.fetch_sub(bytes.len(), Ordering::Relaxed);
                let fits = match handed.path.ends_with(DIRIV) {
                    true => bytes.len() == DIRIV_LEN,
                    false => !bytes.is_empty() && bytes.len() as u64 <= names::LONG_NAME_MAX,
                };
                if fits {
                    found.insert(handed.path, bytes);
                }
            }
            Ok(())
        };
        let hand = Hand {
            sink: &mut sink,
            held: &held,
            spill: None,
            keep_free: 0,
        };
        fetcher.hand(&from, wanted.map(|e| (*e).clone()), hand, None)?;
    }
    Ok(found)
}

/// gocryptfs' own files (directory IVs, long names' `.name` files, the
/// config at the top): never restored.
fn is_gocryptfs_own(path: &str) -> bool {
    let (dir, name) = split(path);
    matches!(
        names::classify(name.as_bytes(), dir.is_empty()),
        Stored::Metadata
    )
}

/// Those of gocryptfs' own files that names are decrypted with: all but
/// the config.
fn is_name_file(path: &str) -> bool {
    let (dir, name) = split(path);
    is_gocryptfs_own(path) && !(dir.is_empty() && name == names::CONFIG)
}

/// A cipher path's directory ("" at the top) and name.
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// A directory of the run, decrypted.
struct Dir {
    plain: PathBuf,
    /// None without `DirIV` where it is needed: its names fail.
    iv: Option<[u8; DIRIV_LEN]>,
    mode: u32,
}

/// The run's directories, the top one first, parents before children,
/// each made in `to`; by cipher path. A directory whose name does not
/// decrypt is named, and nothing below it is restored.
struct Dirs {
    list: Vec<Dir>,
    by_cipher: HashMap<String, usize>,
}

impl Dirs {
    fn make(run: &Streamed, name_files: &NameFiles, failed: &mut Vec<String>) -> Result<Dirs> {
        let mut dirs = Dirs {
            list: vec![Dir {
                plain: PathBuf::new(),
                iv: iv_of(run.keys, name_files, ""),
                mode: 0o700,
            }],
            by_cipher: HashMap::from([(String::new(), 0)]),
        };
        let mut records: Vec<&TreeEntry> = run.entries.iter().filter(|e| e.kind == 'd').collect();
        // Byte order puts each directory after its parent.
        records.sort_by(|a, b| a.path.cmp(&b.path));
        let mut seen = HashSet::new();
        for entry in records {
            let (parent, name) = split(&entry.path);
            // Below a directory that failed: named already.
            let Some(&at) = dirs.by_cipher.get(parent) else {
                continue;
            };
            let plain = match plain_name(run.keys, name_files, (parent, &dirs.list[at]), name) {
                Ok(Some(plain)) => plain,
                Ok(None) => continue,
                Err(why) => {
                    failed.push(why);
                    continue;
                }
            };
            let plain = dirs.list[at].plain.join(OsStr::from_bytes(&plain));
            if !seen.insert(plain.clone()) {
                failed.push(named(&plain, "is stored twice, under two encrypted names"));
                continue;
            }
            crate::crypt::create_private_dir(&run.to.join(&plain))?;
            dirs.by_cipher.insert(entry.path.clone(), dirs.list.len());
            dirs.list.push(Dir {
                plain,
                iv: iv_of(run.keys, name_files, &entry.path),
                mode: entry.mode,
            });
        }
        Ok(dirs)
    }
}

/// Directory `cipher_dir`'s IV: its `gocryptfs.diriv`, or all zeros
/// without `DirIV` (deterministic names).
fn iv_of(keys: &Keys, name_files: &NameFiles, cipher_dir: &str) -> Option<[u8; DIRIV_LEN]> {
    if !keys.format.naming.per_directory_iv {
        return Some([0; DIRIV_LEN]);
    }
    let path = match cipher_dir {
        "" => DIRIV.to_string(),
        dir => format!("{dir}/{DIRIV}"),
    };
    name_files.get(&path)?.as_slice().try_into().ok()
}

/// The plaintext of `name`, an entry of directory `dir` (cipher path and
/// decrypted); None for gocryptfs' own files; Err: the line that names it.
fn plain_name(
    keys: &Keys,
    name_files: &NameFiles,
    (cipher_dir, dir): (&str, &Dir),
    name: &str,
) -> std::result::Result<Option<Vec<u8>>, String> {
    let naming = keys.format.naming;
    let fail = |why: &str| named(&dir.plain.join(name), why);
    let Some(iv) = &dir.iv else {
        return Err(fail(
            "its directory's IV (gocryptfs.diriv) did not come back whole",
        ));
    };
    let decrypted = match names::classify(name.as_bytes(), cipher_dir.is_empty()) {
        Stored::Metadata => return Ok(None),
        Stored::Short(short) => names::decrypt(keys.name_cipher(), naming, short, iv),
        Stored::Long(hash) => {
            let file =
                String::from_utf8_lossy(&names::long_name_file(name.as_bytes())).into_owned();
            let path = match cipher_dir {
                "" => file,
                dir => format!("{dir}/{file}"),
            };
            let long = name_files.get(&path).ok_or(names::NameError::LongNameFile);
            long.and_then(|long| names::check_long(naming, hash, long))
                .and_then(|long| names::decrypt(keys.name_cipher(), naming, long, iv))
        }
    };
    decrypted
        .map(Some)
        .map_err(|why| fail(&format!("the encrypted name {why}")))
}

/// What a worker restores: a fetched file or link, or a symlink the
/// record keeps (the server could not).
enum Work {
    Fetched(Handed),
    KeptLink { path: String, target: String },
}

/// Queues `work`; Err where no worker is left to take it (each ended
/// with an error), and what it held is given back.
fn send(queue: &SyncSender<Work>, work: Work, held: &AtomicUsize) -> Result<()> {
    queue.send(work).map_err(|unsent| {
        give_back(&unsent.0, held);
        crate::error::Error::new(
            crate::error::Kind::Io,
            "every decrypting worker stopped before the fetch ended",
        )
    })
}

/// What `work` held of the fetch's budget, given back once it leaves the
/// queue.
fn give_back(work: &Work, held: &AtomicUsize) {
    if let Work::Fetched(Handed {
        content: Content::Held(bytes),
        ..
    }) = work
    {
        held.fetch_sub(bytes.len(), Ordering::Relaxed);
    }
}

/// The workers that decrypt what the fetch hands over, and what failed.
struct Workers<'a> {
    run: &'a Streamed<'a>,
    dirs: &'a Dirs,
    name_files: &'a NameFiles,
    failed: Mutex<Vec<String>>,
}

impl Workers<'_> {
    /// Fetches the plan's files (its names were fetched first) and hands
    /// them to the workers, then the symlinks the record keeps.
    fn run(&self, plan: &Plan) -> Result<Stats> {
        let held = AtomicUsize::new(0);
        let (queue, work) = std::sync::mpsc::sync_channel::<Work>(QUEUED_MAX);
        // Only the workers hold the receiving end: were they all gone, a
        // send would fail instead of waiting on a full queue for ever.
        let work = Arc::new(Mutex::new(work));
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..self.run.options.workers.clamp(1, 16))
                .map(|_| {
                    let work = Arc::clone(&work);
                    let held = &held;
                    scope.spawn(move || self.work(&work, held))
                })
                .collect();
            drop(work);
            let fetched = self.fetch(plan, &queue, &held);
            // The workers end once the queue is empty and closed.
            drop(queue);
            let mut stats = Stats::default();
            for worker in workers {
                stats.add(&worker.join().expect("a decrypting worker panicked")?);
            }
            fetched?;
            stats.files = stats.transferred + self.dirs.list.len() as u64 - 1;
            Ok(stats)
        })
    }

    /// Fetches the files (below directories that were made) and hands
    /// them to the workers, then the symlinks the record keeps.
    fn fetch(&self, plan: &Plan, queue: &SyncSender<Work>, held: &AtomicUsize) -> Result<()> {
        let (spill, keep_free) = self.run.spill;
        let made = |e: &&&TreeEntry| self.dirs.by_cipher.contains_key(split(&e.path).0);
        for (source, entries) in plan {
            let from = source_dir(*source);
            let wanted = entries
                .iter()
                .filter(|e| !is_gocryptfs_own(&e.path))
                .filter(made);
            let mut sink = |handed: Handed| {
                send(queue, Work::Fetched(handed), held)?;
                crate::interrupt::check()
            };
            let hand = Hand {
                sink: &mut sink,
                held,
                spill: Some(spill),
                keep_free,
            };
            self.run
                .fetcher
                .hand(&from, wanted.map(|e| (*e).clone()), hand, self.run.phase)?;
        }
        for entry in self.run.entries.iter().filter(|e| e.kind == 'l') {
            if let Some(target) = &entry.link {
                let work = Work::KeptLink {
                    path: entry.path.clone(),
                    target: target.clone(),
                };
                send(queue, work, held)?;
            }
        }
        Ok(())
    }

    /// Takes work until the queue is closed. Once interrupted, it only
    /// empties the queue (the fetch stops at its next file), so that the
    /// fetch never waits long on a full queue.
    fn work(&self, queue: &Mutex<Receiver<Work>>, held: &AtomicUsize) -> Result<Stats> {
        let mut cipher = self.run.keys.content();
        let mut stats = Stats::default();
        let mut stopped = Ok(());
        loop {
            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(work) = next else {
                return stopped.map(|()| stats);
            };
            // Taken off the queue: its bytes no longer count as held.
            give_back(&work, held);
            if stopped.is_ok() {
                stopped = crate::interrupt::check();
            }
            if stopped.is_err() {
                continue;
            }
            if let Err(why) = self.restore(&mut cipher, work, &mut stats) {
                self.failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(why);
            }
        }
    }

    /// Restores one file or link; Err: the line that names what failed.
    /// Ok for what lies below a directory that failed (named already).
    fn restore(
        &self,
        cipher: &mut ContentCipher,
        work: Work,
        stats: &mut Stats,
    ) -> std::result::Result<(), String> {
        let (path, content, mode, mtime) = match work {
            Work::Fetched(h) => (h.path, h.content, h.mode, h.mtime),
            Work::KeptLink { path, target } => {
                (path, Content::Link(target.into_bytes()), 0o777, None)
            }
        };
        let (cipher_dir, name) = split(&path);
        let Some(&at) = self.dirs.by_cipher.get(cipher_dir) else {
            return Ok(());
        };
        let dir = (cipher_dir, &self.dirs.list[at]);
        let Some(plain) = plain_name(self.run.keys, self.name_files, dir, name)? else {
            return Ok(());
        };
        let plain = self.dirs.list[at].plain.join(OsStr::from_bytes(&plain));
        let out_path = self.run.to.join(&plain);
        let stamp = |out: &File| {
            // The record's permission bits, as a stage's chmod gives them:
            // setuid, setgid and sticky bits come from the manifest.
            let mode = restored_mode(mode & 0o777, self.run.options.keep_setuid);
            out.set_permissions(std::fs::Permissions::from_mode(mode))?;
            match mtime {
                Some(secs) => set_mtime(out, (i64::from(secs), 0)),
                None => Ok(()),
            }
        };
        let written = match content {
            Content::Refused(words) => {
                let why = format!("the target would not give it back: {words}");
                return Err(named(&plain, &why));
            }
            Content::Link(stored) => {
                let raw64 = self.run.keys.format.naming.raw64;
                let target = cipher
                    .decrypt_link(&stored, raw64)
                    .map_err(|e| named(&plain, &e.to_string()))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &out_path)
                    .map_err(|e| named(&plain, &format!("cannot be made: {e}")))?;
                self.count(1, 0);
                return Ok(());
            }
            Content::Held(mut bytes) => write_new(
                &out_path,
                |out| {
                    cipher
                        .decrypt_held(&mut bytes, out)
                        .map_err(|e| e.to_string())
                },
                &stamp,
            ),
            Content::Spilled(mut file) => write_new(
                &out_path,
                |out| {
                    cipher
                        .decrypt_file(&mut file, out)
                        .map_err(|e| e.to_string())
                },
                &stamp,
            ),
        };
        let written = written.map_err(|why| named(&plain, &why))?;
        stats.transferred += 1;
        stats.bytes_transferred += written;
        Ok(())
    }

    fn count(&self, entries: u64, bytes: u64) {
        if let Some(phase) = self.run.phase {
            phase.add(entries, bytes);
        }
    }
}

/// A restored directory's mode, through a descriptor opened without
/// following a link.
fn set_dir_mode(path: &Path, mode: u32, options: &Options) -> Result<()> {
    let mode = restored_mode(mode & 0o777, options.keep_setuid);
    open_dir(path)?
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .ctx(|| format!("setting the mode of {}", path.display()))
}
