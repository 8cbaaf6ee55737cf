//! Fetching a run's ciphertext over SFTP (protocol version 3) with many
//! requests in flight, for accounts that allow SFTP only. Reading through
//! sshfs, a file costs several round trips that one reader waits for in
//! turn; here up to `MAX_OPEN` files (more where the server allows more:
//! limits@openssh.com) are open at once and `MAX_IN_FLIGHT` requests or
//! more travel together, so a WAN round trip is paid a few times per
//! batch of files rather than several times per file (docs/benchmarks.md,
//! "restore over SFTP only"). Restore fills its stage with it (restore.rs)
//! where the account has no `rsync --server` (pull.rs does that one).
//!
//! Everything the server sends is untrusted: a packet is at most
//! `MAX_PACKET` bytes, a read never returns more than was asked, a file is
//! never larger than the stage has room for, and names are never taken
//! from the server: every path comes from the run's record, already
//! checked to stay inside the tree (restore.rs, `check_record_tree`).
//! Files are created new, without following links, in directories this
//! process made; a symlink's target is stored munged, exactly as rsync's
//! `--munge-links` stores it, so the caller's checks and `unmunge` treat
//! both fetchers alike.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::Ssh;
use super::listing::TreeEntry;
use super::pull::MUNGE_PREFIX;
use crate::budget::Permit;
use crate::checksums::InOrderSha1;
use crate::error::{Error, IoContext, Kind, Result};
use crate::exec::Conversation;
use crate::progress::Phase;

/// Bytes asked for by one read: what every server answers whole
/// (OpenSSH's own client asks for 32 KiB; rclone caps a reply there).
pub(super) const CHUNK: u32 = 32 * 1024;
/// Requests sent and not yet answered, unless the server lets more files
/// be open (`Session::max_in_flight`): 512 × 32 KiB, more than the 2 MiB
/// an ssh channel's window keeps on the wire (100 MB/s at a 20 ms round
/// trip), so that the opens and stats of small files never wait for room.
/// A turn's requests need not fit a pipe: `Session::flush` reads the
/// answers while ssh is not taking them.
pub(super) const MAX_IN_FLIGHT: usize = 512;
/// Files open at once on the server where it does not say how many it
/// allows (limits@openssh.com), and the most an upload keeps open in all
/// (see `MAX_OPEN_ASKED`): a small file takes two round trips (open
/// and stat, then the reads), so many at once hide them. A full restore of
/// data set S at 20 ms (2,000 files, 143 MB; docs/benchmarks.md) took
/// from the pull's start to the copy 4.8 s with 32 open and 64 in flight,
/// 2.9 s with 64 and 128, 2.4 s with 128 and 256. On SMALL (200,000 files
/// of 0–4 KB) 256 and 512 took the SFTP-only restore from 105 s to 74 s
/// and the first backup from 157 s to 104 s; S did not get slower. rclone
/// has no limit and says none.
pub(super) const MAX_OPEN: usize = 256;
/// The most files open at once where the server allows more: OpenSSH's
/// sftp-server allows as many as its descriptors (1,019 under the usual
/// limit of 1,024). Each open file may hold one of ours too
/// (`own_file_room`). Fetches, hashes and listings keep this many open
/// (SMALL's SFTP-only restore at 20 ms: 73.7 s with 256, 45.6 s with
/// 1,024); an upload keeps `MAX_OPEN` of any size (data set S's first
/// pass took 14 s with 1,024 files open where 256 took 3.5 s) and more
/// only while they are small (sftp_upload.rs, `MAX_OPEN_SMALL`).
const MAX_OPEN_ASKED: usize = 1024;
/// The answers read and not yet taken while a turn's requests wait for
/// ssh: what that many requests in flight could bring, and no more (a
/// server sending what nobody asked for is stopped here).
const MAX_UNTAKEN: usize = 64 * 1024 * 1024;
/// The extension that says how many files the server lets one session
/// keep open.
const LIMITS: &str = "limits@openssh.com";
/// OpenSSH's extensions this client uses, where the server announces them.
pub(super) const HARDLINK: &str = "hardlink@openssh.com";
/// Renames over an existing name in one step (rename(2) on the server).
pub(super) const POSIX_RENAME: &str = "posix-rename@openssh.com";
pub(super) const FSYNC: &str = "fsync@openssh.com";
/// The largest packet accepted from the server: a read's reply is at most
/// `CHUNK` bytes of data, a link's target at most `MAX_LINK` bytes, a
/// directory listing's part about a hundred names with their `ls -l` lines
/// (OpenSSH's own client accepts up to 256 KiB too).
const MAX_PACKET: usize = 256 * 1024;
/// The longest symlink target accepted (Linux's PATH_MAX).
const MAX_LINK: usize = 4096;
/// How long the server may leave every request unanswered. ssh's
/// keepalives end a dead link sooner; this bounds a live server that stops
/// answering SFTP.
const STALL_LIMIT: Duration = crate::target::ssh::SHORT_COMMAND;

// Packet types and flags of draft-ietf-secsh-filexfer-02 (version 3).
const SSH_FXP_INIT: u8 = 1;
const SSH_FXP_VERSION: u8 = 2;
pub(super) const SSH_FXP_OPEN: u8 = 3;
pub(super) const SSH_FXP_CLOSE: u8 = 4;
const SSH_FXP_READ: u8 = 5;
pub(super) const SSH_FXP_WRITE: u8 = 6;
pub(super) const SSH_FXP_LSTAT: u8 = 7;
pub(super) const SSH_FXP_FSETSTAT: u8 = 10;
const SSH_FXP_OPENDIR: u8 = 11;
const SSH_FXP_READDIR: u8 = 12;
pub(super) const SSH_FXP_REMOVE: u8 = 13;
pub(super) const SSH_FXP_MKDIR: u8 = 14;
const SSH_FXP_READLINK: u8 = 19;
pub(super) const SSH_FXP_STATUS: u8 = 101;
pub(super) const SSH_FXP_HANDLE: u8 = 102;
const SSH_FXP_DATA: u8 = 103;
const SSH_FXP_NAME: u8 = 104;
pub(super) const SSH_FXP_ATTRS: u8 = 105;
pub(super) const SSH_FXP_EXTENDED: u8 = 200;
const SSH_FXP_EXTENDED_REPLY: u8 = 201;
const SSH_FXF_READ: u32 = 0x1;
pub(super) const SSH_FXF_WRITE: u32 = 0x2;
pub(super) const SSH_FXF_CREAT: u32 = 0x8;
pub(super) const SSH_FXF_EXCL: u32 = 0x20;
const SSH_FX_EOF: u32 = 1;
const SSH_FX_NO_SUCH_FILE: u32 = 2;
const SSH_FX_PERMISSION_DENIED: u32 = 3;
const ATTR_SIZE: u32 = 0x1;
const ATTR_UIDGID: u32 = 0x2;
pub(super) const ATTR_PERMISSIONS: u32 = 0x4;
pub(super) const ATTR_ACMODTIME: u32 = 0x8;
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// Fetches from one account over SFTP.
pub struct SftpFetcher<'a> {
    ssh: &'a Ssh,
}

impl<'a> SftpFetcher<'a> {
    pub(super) fn new(ssh: &'a Ssh) -> SftpFetcher<'a> {
        SftpFetcher { ssh }
    }

    /// Copies `entries` (files, and symlinks the server keeps) from the
    /// account's `from` directory into `into`, where every directory they
    /// lie in already exists and only we write. Files get the server's
    /// mtime (gocryptfs shows it as the plaintext's) and mode 0600 (the
    /// caller applies the record's); symlinks arrive munged. An entry the
    /// server will not give back (no such file, permission denied) is left
    /// out and named in the list returned, each with the server's words;
    /// anything else the server does wrong ends the fetch with an error.
    pub fn fetch(
        &self,
        from: &str,
        entries: &[&TreeEntry],
        into: &Path,
        room: u64,
        phase: Option<&Phase>,
    ) -> Result<Vec<String>> {
        let wanted = entries
            .iter()
            .filter(|e| e.kind == 'f' || (e.kind == 'l' && e.link.is_none()))
            .map(|e| (*e).clone());
        let partial = PartialDir::fresh(into)?;
        let dest = Dest::Stage {
            into,
            partial: &partial.0,
            room,
        };
        let run = self.run(from, Box::new(wanted), dest, phase)?;
        Ok(run.refused)
    }

    /// Hashes each file `files` gives (below the account's `from`
    /// directory), read with as many requests in flight as `fetch` and kept
    /// nowhere, and hands its sha1 to `sink` as it completes (not in the
    /// order given), with its size and place among them: the fast restore test of an account
    /// that cannot hash on the server, and the possession check's sample
    /// (verify.rs, sample.rs). Only the files being read are held, so a
    /// listing of 200,000 files costs no second copy. A file gone since it
    /// was listed is named in `vanished`; one the server will not give back
    /// in `refused` with its words, as `fetch` names it (and nothing more
    /// is asked).
    pub fn hash(
        &self,
        from: &str,
        files: impl Iterator<Item = TreeEntry>,
        sink: &mut dyn FnMut(Hashed1<'_>) -> Result<()>,
    ) -> Result<Hashed> {
        let files = files.filter(|e| e.kind == 'f');
        let run = self.run(from, Box::new(files), Dest::Hash(sink), None)?;
        Ok(Hashed {
            vanished: run.vanished,
            refused: run.refused,
        })
    }

    /// Hands each of `entries` (files, and symlinks the server keeps),
    /// below the account's `from` directory, to `sink` once it is whole:
    /// restore decrypts them as they come (restore/streamed.rs). A file
    /// of up to `HOLD_MAX` bytes is held in memory while what the sink
    /// still holds (`held`: the sink takes back what it is done with)
    /// stays under `HELD_MAX`; a larger one goes to an unnamed file under
    /// `spill` where that leaves `keep_free` bytes free (without `spill`
    /// it ends the fetch with an error). What the server will not give
    /// back, or fails to read, is handed over as its words, and the fetch
    /// goes on.
    pub fn hand<'f>(
        &self,
        from: &'f str,
        entries: impl Iterator<Item = TreeEntry> + 'f,
        to: Hand<'f>,
        phase: Option<&'f Phase>,
    ) -> Result<()> {
        let wanted = entries.filter(|e| e.kind == 'f' || (e.kind == 'l' && e.link.is_none()));
        self.run(from, Box::new(wanted), Dest::Hand(to), phase)
            .map(drop)
    }

    fn run<'f>(
        &self,
        from: &'f str,
        queue: Box<dyn Iterator<Item = TreeEntry> + 'f>,
        dest: Dest<'f>,
        phase: Option<&'f Phase>,
    ) -> Result<Fetch<'f>> {
        let mut run = Fetch::new(self.ssh, from, queue, dest, phase);
        self.ssh.with_sftp(|session| run.go(session))?;
        Ok(run)
    }
}

/// The account's file `rel` (below its root), read whole over SFTP with
/// every part in flight into `into`, a scratch file, and rewound: at
/// most `room` bytes. None where the server has no such file or will not
/// give it back.
pub fn read_whole(ssh: &Ssh, rel: &str, into: File, room: u64) -> Result<Option<File>> {
    ssh.with_sftp(|session| read_whole_on(session, ssh, rel, into, room))
}

/// As `read_whole`, on a session the caller holds: a directory or
/// anything else under the name is an error.
pub(super) fn read_whole_on(
    session: &mut Session,
    ssh: &Ssh,
    rel: &str,
    mut into: File,
    room: u64,
) -> Result<Option<File>> {
    use std::io::{Seek, SeekFrom};
    let (dir, name) = rel.rsplit_once('/').unwrap_or((".", rel));
    let wanted = std::iter::once(TreeEntry::named_file(name));
    let dest = Dest::Scratch { file: &into, room };
    let mut run = Fetch::new(ssh, dir, Box::new(wanted), dest, None);
    run.go(session)?;
    if !run.refused.is_empty() {
        return Ok(None);
    }
    drop(run);
    into.seek(SeekFrom::Start(0))
        .ctx(|| format!("rewinding the copy of {rel}"))?;
    Ok(Some(into))
}

/// Where `SftpFetcher::hand` puts what it fetched.
pub struct Hand<'a> {
    pub sink: &'a mut dyn FnMut(Handed) -> Result<()>,
    pub held: &'a AtomicUsize,
    pub spill: Option<&'a Path>,
    /// Bytes a spilled file must leave free on `spill`'s file system.
    pub keep_free: u64,
}

/// A file or symlink `SftpFetcher::hand` fetched, by its record entry's
/// path (relative to the directory fetched) and mode.
pub struct Handed {
    pub path: String,
    pub mode: u32,
    /// The server's mtime, in whole seconds (SFTP version 3).
    pub mtime: Option<u32>,
    pub content: Content,
}

pub enum Content {
    /// The whole file; its length counts in `Hand::held` until the sink
    /// takes it back.
    Held(Vec<u8>),
    /// The whole file in an unnamed file, at offset 0.
    Spilled(File),
    /// A symlink's stored target.
    Link(Vec<u8>),
    /// The server would not give it back, or failed reading it: its
    /// words, not escaped yet.
    Refused(String),
}

/// What a fetch says of an entry the server has as something else.
const NOT_A_FILE: &str = "is not a file on the server, its record says a file";

/// The largest file `hand` holds in memory, and the most it holds at once.
pub const HOLD_MAX: usize = 1024 * 1024;
pub const HELD_MAX: usize = 32 * 1024 * 1024;

/// One file `SftpFetcher::hash` read.
pub struct Hashed1<'e> {
    /// Its place among the files given (0 the first).
    pub order: usize,
    pub entry: &'e TreeEntry,
    pub size: u64,
    pub sum: crate::checksums::Sum,
}

/// What `SftpFetcher::hash` could not hash: the files gone since they were
/// listed, and those the server would not give back.
pub struct Hashed {
    /// Paths relative to the directory hashed, as given.
    pub vanished: Vec<String>,
    pub refused: Vec<String>,
}

/// The stamps of the account's `rel` directory (files/) over SFTP, for an
/// account without a shell: one sha1 over the sorted lines `<mode> <size>
/// <mtime> <path>` of every entry below it, listed with many READDIRs in
/// flight (a few round trips per level of the tree). Equal stamps after
/// the last run and now mean nothing touched files/ in between, so a
/// backup whose source did not change either need not run rsync (sync.rs).
/// SFTP gives mtimes in whole seconds and no ctime: a change by the server
/// within the second, keeping size and mode, is missed until the next
/// change or verify, which checks files/ itself.
pub fn tree_stamps(ssh: &Ssh, rel: &str) -> Result<String> {
    Ok(list_tree(ssh, rel)?.stamps())
}

/// Every entry below the account's `rel` directory (files/) with its type,
/// mode, size and mtime as SFTP gives them, listed with many READDIRs in
/// flight. Names are checked to be plain names; at most
/// `MAX_TREE_ENTRIES` entries.
pub fn list_tree(ssh: &Ssh, rel: &str) -> Result<RemoteTree> {
    let base = remote_base(&ssh.sftp().path, rel);
    let top = vec![(String::new(), base.clone())];
    let mut lister = Lister::new(rel, base, top, true);
    ssh.with_sftp(|session| lister.go(session))?;
    Ok(lister.tree)
}

/// The names in each of the account's directories `rels` (below its
/// root, not below each other), all listed at once on `session`: a
/// directory that is not there has none. Names are checked as
/// `list_tree` checks them.
pub(super) fn list_dirs(
    session: &mut Session,
    ssh: &Ssh,
    rels: &[&str],
) -> Result<HashMap<String, Vec<RemoteEntry>>> {
    let root = &ssh.sftp().path;
    let dirs = rels
        .iter()
        .map(|rel| (rel.to_string(), remote_base(root, rel)))
        .collect();
    let mut lister = Lister::new("", Vec::new(), dirs, false);
    lister.go(session)?;
    Ok(lister.tree.dirs)
}

/// A listed tree: each directory (relative, "" the top) with its entries.
#[derive(Debug, Default)]
pub struct RemoteTree {
    pub dirs: HashMap<String, Vec<RemoteEntry>>,
}

impl RemoteTree {
    /// The stamps of the tree (see `tree_stamps`): the lines hashed in the
    /// order of `sorted`, so that no second copy of the listing is held
    /// (on SMALL, 200,000 entries, that copy was 20 MB). Stamps are only
    /// ever compared with stamps this function took.
    pub fn stamps(&self) -> String {
        use sha1::{Digest, Sha1};
        let mut hasher = Sha1::new();
        for (path, entry) in self.sorted() {
            hasher.update(
                format!("{:o} {} {} {path}\n", entry.mode, entry.size, entry.mtime).as_bytes(),
            );
        }
        crate::checksums::to_hex(&hasher.finalize().into())
    }

    /// Every entry as a listing line, in the order of `walk::sorted` (a
    /// directory's names sorted by their bytes, a directory's as if it
    /// ended in `/`; each directory followed by what it holds).
    pub fn sorted_entries(&self) -> impl Iterator<Item = TreeEntry> + '_ {
        self.sorted().map(|(path, entry)| entry.tree_entry(path))
    }

    /// Every entry with its path, in the order of `sorted_entries`.
    fn sorted(&self) -> impl Iterator<Item = (String, &RemoteEntry)> + '_ {
        let mut stack = vec![self.sorted_dir("")];
        std::iter::from_fn(move || {
            loop {
                let top = stack.last_mut()?;
                let Some((path, entry)) = top.pop() else {
                    stack.pop();
                    continue;
                };
                if entry.is_dir() {
                    stack.push(self.sorted_dir(&path));
                }
                return Some((path, entry));
            }
        })
    }

    /// The entries of `dir` with their paths, the first last.
    fn sorted_dir(&self, dir: &str) -> Vec<(String, &RemoteEntry)> {
        let key = |e: &RemoteEntry| {
            let mut key = e.name.as_bytes().to_vec();
            if e.is_dir() {
                key.push(b'/');
            }
            key
        };
        let mut entries: Vec<&RemoteEntry> = self.dirs.get(dir).into_iter().flatten().collect();
        entries.sort_by_cached_key(|e| std::cmp::Reverse(key(e)));
        entries
            .into_iter()
            .map(|e| (join(dir, &e.name), e))
            .collect()
    }
}

/// One listed entry: its plain name and what SFTP said of it (0 where it
/// said nothing of the size or the mtime).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEntry {
    pub name: Box<str>,
    /// Type and permission bits, as `st_mode`.
    pub mode: u32,
    pub size: u64,
    pub mtime: u32,
}

impl RemoteEntry {
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }

    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }

    /// As a walk of the tree lists it (`TreeEntry::of`): sizes of files
    /// only, no symlink target.
    pub fn tree_entry(&self, path: String) -> TreeEntry {
        let kind = match self.mode & S_IFMT {
            S_IFREG => 'f',
            S_IFDIR => 'd',
            S_IFLNK => 'l',
            _ => '?',
        };
        TreeEntry {
            kind,
            mode: self.mode & 0o7777,
            size: if kind == 'f' { self.size } else { 0 },
            path,
            link: None,
        }
    }
}

/// Lists a tree with pipelined OPENDIR/READDIR: each open directory has
/// one request in flight, as many directories at once as the session keeps
/// files open (`Session::max_open`): each costs an OPENDIR, a READDIR per
/// hundred names or so and a CLOSE, one after the other, so a listing of
/// many small directories waits for round trips: SMALL (200,000 files in
/// 2,044 directories) needs about 8,000, some 5 s at 20 ms when 32 go at
/// once.
struct Lister {
    /// The top, relative to the account's root, for messages ("" the root).
    top: String,
    /// The top's path as requests name it: below it, subdirectories.
    base: Vec<u8>,
    /// Directories (relative, "" the top) not opened yet, each with its
    /// path as requests name it.
    dirs: Vec<(String, Vec<u8>)>,
    /// Whether subdirectories are listed too (a tree), or only the
    /// directories given, where one that is not there is taken as empty.
    descend: bool,
    /// Request id -> the directory it is for (an OPENDIR, a READDIR with
    /// its handle, or a CLOSE).
    open: HashMap<u32, (String, Option<Vec<u8>>)>,
    tree: RemoteTree,
    /// Entries listed so far, in every directory.
    count: usize,
}

impl Lister {
    fn new(top: &str, base: Vec<u8>, dirs: Vec<(String, Vec<u8>)>, descend: bool) -> Lister {
        Lister {
            top: top.to_string(),
            base,
            dirs,
            descend,
            open: HashMap::new(),
            tree: RemoteTree::default(),
            count: 0,
        }
    }

    fn go(&mut self, session: &mut Session) -> Result<()> {
        loop {
            while self.open.len() < session.max_open() {
                let Some((dir, path)) = self.dirs.pop() else {
                    break;
                };
                let id = session.request(SSH_FXP_OPENDIR, &[&path], &[]);
                self.open.insert(id, (dir, None));
            }
            session.flush()?;
            if self.open.is_empty() {
                return Ok(());
            }
            let mut packet = session.receive()?;
            let Some((dir, handle)) = self.open.remove(&packet.id) else {
                return Err(unasked(packet.id));
            };
            self.answer(session, dir, handle, &mut packet)?;
        }
    }

    fn answer(
        &mut self,
        session: &mut Session,
        dir: String,
        handle: Option<Vec<u8>>,
        packet: &mut Packet,
    ) -> Result<()> {
        let shown = self.shown(&dir);
        match (handle, packet.kind) {
            // The answer to a CLOSE (the dir is done): nothing to do.
            (Some(h), SSH_FXP_STATUS) if h.is_empty() => Ok(()),
            (None, SSH_FXP_HANDLE) => {
                let handle = packet.body.string(256)?;
                self.read_more(session, dir, handle);
                Ok(())
            }
            (Some(handle), SSH_FXP_NAME) => {
                self.take_names(&dir, &mut packet.body)?;
                self.read_more(session, dir, handle);
                Ok(())
            }
            (Some(handle), SSH_FXP_STATUS) if packet.body.clone_u32() == Some(SSH_FX_EOF) => {
                let id = session.request(SSH_FXP_CLOSE, &[&handle], &[]);
                self.open.insert(id, (dir, Some(Vec::new())));
                Ok(())
            }
            (None, SSH_FXP_STATUS)
                if !self.descend && packet.body.clone_u32() == Some(SSH_FX_NO_SUCH_FILE) =>
            {
                Ok(())
            }
            (_, SSH_FXP_STATUS) => {
                let code = packet.body.u32()?;
                let message = packet.body.string(1024).unwrap_or_default();
                Err(Error::new(
                    Kind::Remote,
                    format!(
                        "listing {shown} over SFTP: {} (SFTP status {code})",
                        crate::human::escape(&String::from_utf8_lossy(&message))
                    ),
                ))
            }
            (_, kind) => Err(protocol(format!(
                "it answered a listing of {shown} with packet type {kind}"
            ))),
        }
    }

    /// `dir` for messages, with the top's name, escaped.
    fn shown(&self, dir: &str) -> String {
        let path = match (self.top.is_empty(), dir.is_empty()) {
            (true, _) => dir.to_string(),
            (false, true) => format!("{}/", self.top),
            (false, false) => format!("{}/{dir}", self.top),
        };
        crate::human::escape(&path)
    }

    fn read_more(&mut self, session: &mut Session, dir: String, handle: Vec<u8>) {
        let id = session.request(SSH_FXP_READDIR, &[&handle], &[]);
        self.open.insert(id, (dir, Some(handle)));
    }

    /// One READDIR answer's names: each a plain name (no `/`, NUL, `.` or
    /// `..` but the two entries every listing has), with its mode.
    fn take_names(&mut self, dir: &str, body: &mut Fields) -> Result<()> {
        let count = body.u32()?;
        for _ in 0..count {
            let name = body.string(MAX_LINK)?;
            body.string(MAX_PACKET)?; // the `ls -l` line
            let attrs = Attrs::read(body)?;
            if name == b"." || name == b".." {
                continue;
            }
            let name = String::from_utf8(name)
                .ok()
                .filter(|n| !n.is_empty() && !n.contains(['/', '\0']))
                .ok_or_else(|| protocol("it listed a name that is not a plain name".into()))?;
            let Some(mode) = attrs.mode else {
                return Err(protocol(format!(
                    "it listed {} without its type",
                    self.shown(&join(dir, &name))
                )));
            };
            self.count += 1;
            if self.count > crate::limits::MAX_TREE_ENTRIES {
                return Err(protocol(format!(
                    "{} holds more than {} entries",
                    self.shown(""),
                    crate::limits::MAX_TREE_ENTRIES
                )));
            }
            if self.descend && mode & S_IFMT == S_IFDIR {
                let sub = join(dir, &name);
                self.dirs.push((sub.clone(), remote_path(&self.base, &sub)));
            }
            self.tree
                .dirs
                .entry(dir.to_string())
                .or_default()
                .push(RemoteEntry {
                    name: name.into_boxed_str(),
                    mode,
                    size: attrs.size.unwrap_or(0),
                    mtime: attrs.mtime.unwrap_or(0),
                });
        }
        Ok(())
    }
}

/// `name` in the directory `dir` ("" the top).
fn join(dir: &str, name: &str) -> String {
    match dir.is_empty() {
        true => name.to_string(),
        false => format!("{dir}/{name}"),
    }
}

/// `rel` below `base` (see `remote_base`), as requests name it.
pub(super) fn remote_path(base: &[u8], rel: &str) -> Vec<u8> {
    let mut path = base.to_vec();
    path.push(b'/');
    path.extend_from_slice(rel.as_bytes());
    path
}

/// An answer to a request id that is not waiting for one.
pub(super) fn unasked(id: u32) -> Error {
    protocol(format!(
        "it answered request {id}, which was never sent or was answered before"
    ))
}

/// The directory requests name, as the server resolves it: relative to the
/// account's home unless the job's path is absolute (as sshfs does).
pub(super) fn remote_base(path: &Path, from: &str) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut base = path.as_os_str().as_bytes().to_vec();
    while base.len() > 1 && base.ends_with(b"/") {
        base.pop();
    }
    if !base.is_empty() && !base.ends_with(b"/") {
        base.push(b'/');
    }
    base.extend_from_slice(from.as_bytes());
    base
}

/// One SFTP session: `ssh -s … sftp`, version 3 agreed.
pub(super) struct Session {
    child: Conversation,
    /// Requests sent whose answer was not taken yet.
    unanswered: usize,
    /// The extensions the server announced (`hardlink@openssh.com`...).
    pub(super) extensions: Vec<String>,
    next_id: u32,
    /// Requests not yet written (flushed once per turn).
    out: Vec<u8>,
    /// What arrived: from `taken` on, not yet a whole packet (or packets
    /// not taken yet, read while a turn waited for ssh).
    arrived: Vec<u8>,
    taken: usize,
    /// The id of the limits@openssh.com request, until it is answered.
    limits_asked: Option<u32>,
    /// Files open at once (`max_open`), for all the sessions this one
    /// shares them with.
    max_open: usize,
    /// How many sessions share `max_open` (`share_open`).
    sharing: usize,
}

/// An SFTP session with its place in the connection budget
/// (`Ssh::sftp_session`). `give_back` keeps a session that finished its
/// work for the next step of the stage; dropped, it is closed.
pub(super) struct Leased<'a> {
    ssh: &'a Ssh,
    // Closed before its place is freed (fields drop in this order).
    session: Option<Session>,
    permit: Option<Permit<'a>>,
}

impl<'a> Leased<'a> {
    pub(super) fn new(ssh: &'a Ssh, permit: Permit<'a>, parked: Option<Session>) -> Result<Self> {
        // A parked session whose ssh ended since (the master went, the
        // server closed it) is replaced.
        let alive = |mut session: Session| (!session.child.ended()).then_some(session);
        let session = match parked.and_then(alive) {
            Some(session) => session,
            None => Session::start(ssh)?,
        };
        Ok(Leased {
            ssh,
            session: Some(session),
            permit: Some(permit),
        })
    }

    /// `work` on the session, which is kept for the next step where the
    /// work went through (`give_back`); an error says what ssh said where
    /// the connection went.
    pub(super) fn work<R>(mut self, work: impl FnOnce(&mut Session) -> Result<R>) -> Result<R> {
        match work(&mut self) {
            Ok(done) => {
                self.give_back();
                Ok(done)
            }
            Err(e) => {
                let ssh = self.ssh;
                Err(self.explain(e, ssh))
            }
        }
    }

    /// The session back as a place with it parked, to be opened (at no
    /// cost) on another thread.
    pub(super) fn into_place(mut self) -> SftpPlace<'a> {
        SftpPlace {
            ssh: self.ssh,
            permit: self.permit.take().expect("held until given back"),
            parked: self.session.take(),
        }
    }

    /// Keeps the session for the next step where it is as fresh: every
    /// request answered, nothing more sent by the server, ssh still there.
    /// Else (work given up halfway) it is closed.
    pub(super) fn give_back(mut self) {
        let (Some(mut session), Some(permit)) = (self.session.take(), self.permit.take()) else {
            return;
        };
        if session.is_settled() {
            session.sharing = 1;
            self.ssh.park_sftp(permit, session);
        }
    }
}

impl std::ops::Deref for Leased<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session.as_ref().expect("held until given back")
    }
}

impl std::ops::DerefMut for Leased<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        self.session.as_mut().expect("held until given back")
    }
}

/// A place in the budget for an SFTP session, with a parked session to
/// reuse where there was one (`Ssh::try_sftp_place`).
pub(super) struct SftpPlace<'a> {
    pub(super) ssh: &'a Ssh,
    pub(super) permit: Permit<'a>,
    pub(super) parked: Option<Session>,
}

impl<'a> SftpPlace<'a> {
    pub(super) fn open(self) -> Result<Leased<'a>> {
        Leased::new(self.ssh, self.permit, self.parked)
    }
}

/// A packet from the server: its type, request id and the rest.
pub(super) struct Packet {
    pub(super) kind: u8,
    pub(super) id: u32,
    pub(super) body: Fields,
}

impl Session {
    pub(super) fn start(ssh: &Ssh) -> Result<Session> {
        let mut session = Session::over(ssh.subsystem("sftp").converse()?)?;
        let mut init = Vec::new();
        put_u32(&mut init, 3);
        session.queue_packet(SSH_FXP_INIT, &init);
        session.flush()?;
        let (kind, body) = session.receive_raw()?;
        let mut body = Fields(body);
        if kind != SSH_FXP_VERSION {
            return Err(protocol(format!(
                "it answered the greeting with packet type {kind}"
            )));
        }
        let version = body.u32()?;
        if version < 3 {
            return Err(protocol(format!("it speaks SFTP version {version}, not 3")));
        }
        while let (Ok(name), Ok(_data)) = (body.string(256), body.string(4096)) {
            session
                .extensions
                .push(String::from_utf8_lossy(&name).into_owned());
        }
        // Asked with the first turn's requests, so it costs no round trip:
        // until the answer comes, `MAX_OPEN`.
        if session.offers(LIMITS) {
            let id = session.request(SSH_FXP_EXTENDED, &[LIMITS.as_bytes()], &[]);
            session.limits_asked = Some(id);
        }
        Ok(session)
    }

    /// Waits for the answer to limits@openssh.com where it was asked (one
    /// round trip), so that a session opened ahead is settled.
    pub(super) fn take_limits_answer(&mut self) -> Result<()> {
        self.flush()?;
        while let Some(asked) = self.limits_asked {
            let (kind, body) = self.receive_raw()?;
            let mut body = Fields(body);
            let id = body.u32()?;
            if id != asked {
                return Err(unasked(id));
            }
            self.unanswered = self.unanswered.saturating_sub(1);
            self.limits_asked = None;
            self.take_limits(kind, body);
        }
        Ok(())
    }

    /// Ends the session without waiting: ssh ends once the server closes
    /// the channel (dropping it then waits for that).
    pub(super) fn close(&mut self) {
        self.child.close_input();
    }

    /// Every request answered and taken, nothing unread, ssh running: the
    /// next step may use the session as if it were new.
    fn is_settled(&mut self) -> bool {
        self.unanswered == 0
            && self.out.is_empty()
            && self.taken == self.arrived.len()
            && !self.child.ended()
    }

    /// A session over `child`'s pipes, before the greeting.
    fn over(child: Conversation) -> Result<Session> {
        let session = Session {
            child,
            unanswered: 0,
            extensions: Vec::new(),
            next_id: 0,
            out: Vec::new(),
            arrived: Vec::new(),
            taken: 0,
            limits_asked: None,
            max_open: MAX_OPEN,
            sharing: 1,
        };
        // A turn's requests are written as ssh takes them, the answers read
        // meanwhile (`flush`).
        nix::fcntl::fcntl(
            session.child.pipe_fds().0,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| lost(format!("setting up the pipe to ssh: {e}")))?;
        Ok(session)
    }

    /// How many files (or directories) to keep open at once: what the
    /// server allows, at most `MAX_OPEN_ASKED` and what our own descriptors
    /// allow; `MAX_OPEN` where it did not say (yet).
    pub(super) fn max_open(&self) -> usize {
        self.max_open_of(usize::MAX)
    }

    /// As `max_open`, at most `total` among the sessions side by side.
    pub(super) fn max_open_of(&self, total: usize) -> usize {
        (self.max_open.min(total) / self.sharing).max(1)
    }

    /// This session is one of `sessions` that work side by side: each
    /// keeps its share of the files open, so that together they keep as
    /// many as one would (the server's and our own descriptors).
    pub(super) fn share_open(&mut self, sessions: usize) {
        self.sharing = sessions.max(1);
    }

    /// How many requests to keep unanswered: two for each file open (its
    /// open and stat, or two parts), at least `MAX_IN_FLIGHT`.
    pub(super) fn max_in_flight(&self) -> usize {
        (2 * self.max_open()).max(MAX_IN_FLIGHT / self.sharing)
    }

    /// How many WRITEs to keep unanswered (each holds a part of a file):
    /// `MAX_IN_FLIGHT` (16 MiB) among all the sessions side by side.
    pub(super) fn max_writes(&self) -> usize {
        (MAX_IN_FLIGHT / self.sharing).max(1)
    }

    /// Keeps as many files open as the server's answer to
    /// limits@openssh.com allows, where it names a number.
    fn take_limits(&mut self, kind: u8, body: Fields) {
        let Some(handles) = open_handles(kind, body) else {
            return;
        };
        self.max_open = files_at_once(handles, own_file_room());
        crate::log::debug(|| format!("sftp: the server allows {handles} open files"));
    }

    fn queue_packet(&mut self, kind: u8, payload: &[u8]) {
        put_u32(&mut self.out, payload.len() as u32 + 1);
        self.out.push(kind);
        self.out.extend_from_slice(payload);
    }

    /// Whether the server announced extension `name`.
    pub(super) fn offers(&self, name: &str) -> bool {
        self.extensions.iter().any(|e| e == name)
    }

    /// Queues a request; returns its id.
    pub(super) fn request(&mut self, kind: u8, fields: &[&[u8]], tail: &[u8]) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.unanswered += 1;
        let mut payload = Vec::with_capacity(64);
        put_u32(&mut payload, id);
        for field in fields {
            put_string(&mut payload, field);
        }
        payload.extend_from_slice(tail);
        self.queue_packet(kind, &payload);
        id
    }

    /// Writes the requests queued. Where ssh does not take them all (the
    /// pipe is full while the server answers what came before), the
    /// answers are read meanwhile, so that neither side waits for the
    /// other; a server that sends more than `MAX_UNTAKEN` that nobody
    /// took, or stops reading for `STALL_LIMIT`, ends the session.
    pub(super) fn flush(&mut self) -> Result<()> {
        let out = std::mem::take(&mut self.out);
        let mut written = 0;
        let mut quiet_since = Instant::now();
        while written < out.len() {
            match self.child.input().write(&out[written..]) {
                Ok(n) => {
                    written += n;
                    quiet_since = Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    crate::interrupt::check()?;
                    if quiet_since.elapsed() > STALL_LIMIT {
                        return Err(lost(format!(
                            "ssh took no request for {} s",
                            STALL_LIMIT.as_secs()
                        )));
                    }
                    self.wait_to_write()?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(lost(format!("writing to ssh: {e}"))),
            }
        }
        Ok(())
    }

    /// Waits (a second at most) until ssh takes more, reading what the
    /// server sent meanwhile.
    fn wait_to_write(&mut self) -> Result<()> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let (input, output) = self.child.pipe_fds();
        let mut fds = [
            PollFd::new(input, PollFlags::POLLOUT),
            PollFd::new(output, PollFlags::POLLIN),
        ];
        let answers = match poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(_) => fds[1].any().unwrap_or(false),
            Err(nix::errno::Errno::EINTR) => false,
            Err(e) => return Err(lost(format!("waiting for ssh: {e}"))),
        };
        if !answers {
            return Ok(());
        }
        if self.arrived.len() - self.taken > MAX_UNTAKEN {
            return Err(protocol(format!(
                "it sent more than {} MiB that was not asked for yet",
                MAX_UNTAKEN >> 20
            )));
        }
        self.read_some().map(|_| ())
    }

    /// The next packet with a request id (the limits' answer is taken
    /// here).
    pub(super) fn receive(&mut self) -> Result<Packet> {
        loop {
            let (kind, body) = self.receive_raw()?;
            let mut body = Fields(body);
            let id = body.u32()?;
            self.unanswered = self.unanswered.saturating_sub(1);
            if self.limits_asked == Some(id) {
                self.limits_asked = None;
                self.take_limits(kind, body);
                continue;
            }
            return Ok(Packet { kind, id, body });
        }
    }

    /// The next whole packet: waits for it in steps of a second, so that
    /// an interrupt is seen and a silent server is given up on.
    fn receive_raw(&mut self) -> Result<(u8, Vec<u8>)> {
        let mut quiet_since = Instant::now();
        loop {
            if let Some(packet) = self.take_packet()? {
                return Ok(packet);
            }
            crate::interrupt::check()?;
            if quiet_since.elapsed() > STALL_LIMIT {
                return Err(lost(format!("no answer for {} s", STALL_LIMIT.as_secs())));
            }
            if !self.readable()? {
                continue;
            }
            self.read_some()?;
            quiet_since = Instant::now();
        }
    }

    /// Reads what ssh has for us (it said it has some).
    fn read_some(&mut self) -> Result<usize> {
        let mut buf = [0u8; 64 * 1024];
        let n = self
            .child
            .output()
            .read(&mut buf)
            .map_err(|e| lost(format!("reading from ssh: {e}")))?;
        if n == 0 {
            return Err(lost("ssh ended the session".into()));
        }
        self.arrived.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn readable(&mut self) -> Result<bool> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let output = self.child.output();
        let mut fds = [PollFd::new(output.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(lost(format!("waiting for ssh: {e}"))),
        }
    }

    /// A whole packet from what arrived, if there is one. What was taken
    /// is dropped from the front now and then, not at every packet: many
    /// answers may wait there (`flush`).
    fn take_packet(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        if self.taken > 0 && self.taken >= self.arrived.len() / 2 {
            self.arrived.drain(..self.taken);
            self.taken = 0;
        }
        let waiting = &self.arrived[self.taken..];
        if waiting.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(waiting[..4].try_into().unwrap_or_default()) as usize;
        if len == 0 || len > MAX_PACKET {
            return Err(protocol(format!(
                "it sent a packet of {len} bytes (at most {MAX_PACKET} are accepted)"
            )));
        }
        if waiting.len() < 4 + len {
            return Ok(None);
        }
        let kind = waiting[4];
        let body = waiting[5..4 + len].to_vec();
        self.taken += 4 + len;
        Ok(Some((kind, body)))
    }

    /// An error of the session, with what ssh said if it ended.
    pub(super) fn explain(&mut self, err: Error, ssh: &Ssh) -> Error {
        if err.kind == Kind::Remote && self.child.ended() {
            return ssh.connection_error(&self.child.stderr_tail(), "fetching over SFTP");
        }
        err
    }
}

/// The files one session may keep open, from the answer to
/// limits@openssh.com (the most a packet, a read and a write may hold,
/// then the open handles): None where it is no such answer or says 0 (no
/// limit it would name).
fn open_handles(kind: u8, mut body: Fields) -> Option<usize> {
    if kind != SSH_FXP_EXTENDED_REPLY {
        return None;
    }
    for _packet_read_write in 0..3 {
        body.u64().ok()?;
    }
    let handles = body.u64().ok()?;
    (handles > 0).then(|| usize::try_from(handles).unwrap_or(usize::MAX))
}

/// How many files to keep open where the server allows `handles` and this
/// process has room for `own`: at most `MAX_OPEN_ASKED`, at least one.
fn files_at_once(handles: usize, own: usize) -> usize {
    handles.min(MAX_OPEN_ASKED).min(own).max(1)
}

/// Files this process may open for a session's transfers: half its
/// descriptors, less some for everything else (a fetch writes each file it
/// keeps open on the server; main.rs raises the limit to the hard one).
fn own_file_room() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    let (soft, _hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    usize::try_from(soft / 2)
        .unwrap_or(usize::MAX)
        .saturating_sub(64)
        .max(MAX_OPEN)
}

/// The transfers in flight, each at an index that stays its own until it
/// is released: the requests in flight name their transfer by it.
pub(super) struct Slots<T> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Slots<T> {
    pub(super) fn new() -> Slots<T> {
        Slots {
            items: Vec::new(),
            free: Vec::new(),
        }
    }

    /// How many are in flight.
    pub(super) fn open(&self) -> usize {
        self.items.len() - self.free.len()
    }

    /// Every index that may hold one (some are free).
    pub(super) fn indices(&self) -> std::ops::Range<usize> {
        0..self.items.len()
    }

    pub(super) fn take(&mut self, item: T) -> usize {
        match self.free.pop() {
            Some(index) => {
                self.items[index] = Some(item);
                index
            }
            None => {
                self.items.push(Some(item));
                self.items.len() - 1
            }
        }
    }

    pub(super) fn get(&self, index: usize) -> Option<&T> {
        self.items.get(index)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.items.get_mut(index)?.as_mut()
    }

    pub(super) fn release(&mut self, index: usize) {
        self.items[index] = None;
        self.free.push(index);
    }
}

/// What a request in flight was for.
enum Want {
    Open,
    Lstat,
    Read { offset: u64, len: u32 },
    Readlink,
    Close,
}

/// One file or symlink being fetched.
struct Slot {
    entry: Rc<TreeEntry>,
    /// Its place among the entries fetched (`Hashed1::order`).
    order: usize,
    out: Option<Out>,
    handle: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<u32>,
    /// Reads were asked for up to here.
    asked_to: u64,
    /// Parts a short read left, to ask for again.
    again: Vec<(u64, u32)>,
    /// Requests of this slot not yet answered: a slot is reused only once
    /// none is left, so no late answer lands in another file.
    in_flight: usize,
    /// The server would not give it back: answers still due are dropped.
    refused: bool,
}

/// Where a fetch puts the files it reads.
enum Dest<'a> {
    /// Created under `into` (restore's stage), within `room` bytes: each
    /// written in `partial` and moved to its name once whole, so that a
    /// name in the stage is always a complete file, never one a fetch
    /// stopped in the middle of.
    Stage {
        into: &'a Path,
        partial: &'a Path,
        room: u64,
    },
    /// Hashed as their bytes arrive, kept nowhere; each sum to the sink.
    Hash(&'a mut dyn FnMut(Hashed1<'_>) -> Result<()>),
    /// One file, into the caller's scratch file, within `room` bytes.
    Scratch { file: &'a File, room: u64 },
    /// Each handed to a sink once whole (`SftpFetcher::hand`).
    Hand(Hand<'a>),
}

/// Where one file's bytes go.
enum Out {
    File(File),
    Hash(InOrderSha1),
    Held(Vec<u8>),
}

struct Fetch<'a> {
    base: Vec<u8>,
    from: &'a str,
    dest: Dest<'a>,
    phase: Option<&'a Phase>,
    /// Entries not started yet.
    queue: Box<dyn Iterator<Item = TreeEntry> + 'a>,
    /// Entries started so far: the next one's `Slot::order`.
    started: usize,
    /// Paths of files a hash found gone (`Dest::Hash` only).
    vanished: Vec<String>,
    slots: Slots<Slot>,
    /// Slots that may want reads, in the order they became ready: looked
    /// at instead of every open slot for each answer (up to 1,024 of them
    /// per answer were most of the fetch's own CPU, bench/analysis.md).
    /// A slot may be listed twice or after it is done: `next_read` says.
    ready: VecDeque<usize>,
    /// Request id -> (slot, what for); closes carry no slot.
    pending: HashMap<u32, (Option<usize>, Want)>,
    /// What the server would not give back, with its words.
    refused: Vec<String>,
}

impl<'a> Fetch<'a> {
    fn new(
        ssh: &Ssh,
        from: &'a str,
        queue: Box<dyn Iterator<Item = TreeEntry> + 'a>,
        dest: Dest<'a>,
        phase: Option<&'a Phase>,
    ) -> Fetch<'a> {
        Fetch {
            base: remote_base(&ssh.sftp().path, from),
            from,
            dest,
            phase,
            queue,
            started: 0,
            slots: Slots::new(),
            ready: VecDeque::new(),
            pending: HashMap::new(),
            refused: Vec::new(),
            vanished: Vec::new(),
        }
    }

    fn go(&mut self, session: &mut Session) -> Result<()> {
        loop {
            self.start_entries(session)?;
            self.ask_reads(session);
            session.flush()?;
            if self.pending.is_empty() {
                return Ok(());
            }
            let packet = session.receive()?;
            let Some((slot, want)) = self.pending.remove(&packet.id) else {
                return Err(unasked(packet.id));
            };
            self.answer(session, slot, want, packet)?;
        }
    }

    fn label(&self, entry: &TreeEntry) -> String {
        crate::human::escape(&format!("{}/{}", self.from, entry.path))
    }

    /// Opens files (and asks for link targets) while there is room. Once
    /// the server refused one, nothing new is asked: the caller gives the
    /// stage up (restore reads through sshfs instead).
    fn start_entries(&mut self, session: &mut Session) -> Result<()> {
        while self.refused.is_empty()
            && self.slots.open() < session.max_open()
            && self.pending.len() + 2 <= session.max_in_flight()
        {
            let Some(entry) = self.queue.next() else {
                return Ok(());
            };
            let remote = remote_path(&self.base, &entry.path);
            let is_link = entry.kind == 'l';
            let order = self.started;
            self.started += 1;
            let index = self.slots.take(Slot {
                entry: Rc::new(entry),
                order,
                out: None,
                handle: None,
                size: None,
                mtime: None,
                asked_to: 0,
                again: Vec::new(),
                in_flight: 0,
                refused: false,
            });
            if is_link {
                let id = session.request(SSH_FXP_READLINK, &[&remote], &[]);
                self.sent(id, index, Want::Readlink);
                continue;
            }
            // Opened and stat'ed in the same round trip.
            let mut tail = Vec::new();
            put_u32(&mut tail, SSH_FXF_READ);
            put_u32(&mut tail, 0);
            let id = session.request(SSH_FXP_OPEN, &[&remote], &tail);
            self.sent(id, index, Want::Open);
            let id = session.request(SSH_FXP_LSTAT, &[&remote], &[]);
            self.sent(id, index, Want::Lstat);
        }
        Ok(())
    }

    fn sent(&mut self, id: u32, index: usize, want: Want) {
        self.slot(index).in_flight += 1;
        self.pending.insert(id, (Some(index), want));
    }

    /// Asks for the next parts of the open files whose size is known,
    /// oldest first, while there is room in flight.
    fn ask_reads(&mut self, session: &mut Session) {
        if !self.refused.is_empty() {
            return;
        }
        while self.pending.len() < session.max_in_flight() {
            let Some(&index) = self.ready.front() else {
                return;
            };
            let Some((offset, len)) = self.next_read(index) else {
                self.ready.pop_front();
                continue;
            };
            let mut tail = Vec::new();
            put_u64(&mut tail, offset);
            put_u32(&mut tail, len);
            let handle = self.slots.get(index).and_then(|s| s.handle.as_deref());
            let id = session.request(SSH_FXP_READ, &[handle.unwrap_or_default()], &tail);
            self.sent(id, index, Want::Read { offset, len });
        }
    }

    /// The next part of slot `index` to ask for, if it wants one: its
    /// handle and size are known and some part is not asked for yet.
    fn next_read(&mut self, index: usize) -> Option<(u64, u32)> {
        let slot = self.slots.get_mut(index).filter(|s| !s.refused)?;
        let size = slot.size.filter(|_| slot.handle.is_some())?;
        if let Some(part) = slot.again.pop() {
            return Some(part);
        }
        if slot.asked_to >= size {
            return None;
        }
        let len = (size - slot.asked_to).min(u64::from(CHUNK)) as u32;
        slot.asked_to += u64::from(len);
        Some((slot.asked_to - u64::from(len), len))
    }

    fn answer(
        &mut self,
        session: &mut Session,
        slot: Option<usize>,
        want: Want,
        mut packet: Packet,
    ) -> Result<()> {
        let Some(index) = slot else {
            // A close: the data is already safe here; a server that fails
            // to close a file it only read costs us nothing.
            return Ok(());
        };
        let entry = self
            .slots
            .get(index)
            .map(|s| Rc::clone(&s.entry))
            .ok_or_else(|| protocol("it answered for a file already done".into()))?;
        self.slot(index).in_flight -= 1;
        if self.slot(index).refused {
            return self.drop_late_answer(session, index, packet);
        }
        if packet.kind == SSH_FXP_STATUS {
            return self.status(session, index, want, &mut packet);
        }
        match (want, packet.kind) {
            (Want::Open, SSH_FXP_HANDLE) => {
                let handle = packet.body.string(256)?;
                self.slot(index).handle = Some(handle);
                self.ready.push_back(index);
            }
            (Want::Lstat, SSH_FXP_ATTRS) => {
                let attrs = Attrs::read(&mut packet.body)?;
                let not_a_file = attrs.mode.is_some_and(|m| m & S_IFMT != S_IFREG);
                if not_a_file && matches!(self.dest, Dest::Hand(_)) {
                    return self.hand_refusal(session, index, &entry, NOT_A_FILE.into());
                }
                self.accept_size(index, &entry, attrs)?;
                self.ready.push_back(index);
            }
            (Want::Read { offset, len }, SSH_FXP_DATA) => {
                let data = packet.body.string(len as usize)?;
                self.write(index, &entry, offset, len, &data)?;
            }
            (Want::Readlink, SSH_FXP_NAME) => {
                let target = read_link_name(&mut packet.body)
                    .map_err(|e| corrupt(&self.label(&entry), &e.to_string()))?;
                self.make_link(&entry, &target)?;
                self.release(index);
                return Ok(());
            }
            (_, kind) => {
                return Err(protocol(format!(
                    "it answered a request for {} with packet type {kind}",
                    self.label(&entry)
                )));
            }
        }
        self.finish_if_done(session, index)
    }

    fn slot(&mut self, index: usize) -> &mut Slot {
        self.slots.get_mut(index).expect("an answered slot is open")
    }

    /// A status: the end of a file is expected only past its end; a file
    /// the server will not give back is left out and named; any other
    /// failure ends the fetch.
    fn status(
        &mut self,
        session: &mut Session,
        index: usize,
        want: Want,
        packet: &mut Packet,
    ) -> Result<()> {
        let code = packet.body.u32()?;
        let message = packet.body.string(1024).unwrap_or_default();
        let entry = Rc::clone(&self.slot(index).entry);
        let label = self.label(&entry);
        let words = crate::human::escape(&String::from_utf8_lossy(&message));
        match want {
            Want::Read { offset, .. } if code == SSH_FX_EOF => {
                let size = self.slot(index).size.unwrap_or(0);
                let why = format!("it ended at byte {offset}, its size said {size} bytes");
                match self.dest {
                    Dest::Hand(_) => self.hand_refusal(session, index, &entry, why),
                    _ => Err(corrupt(&label, &why)),
                }
            }
            // Listed, then gone: a listing can be stale (rclone caches
            // directories). Not there is what a hash reports (as missing).
            _ if code == SSH_FX_NO_SUCH_FILE && matches!(self.dest, Dest::Hash(_)) => {
                self.vanished.push(entry.path.clone());
                self.refuse(session, index)
            }
            // One file the server fails on is named by the caller, and the
            // fetch goes on.
            _ if matches!(self.dest, Dest::Hand(_)) => {
                let said = String::from_utf8_lossy(&message);
                let words = match code {
                    SSH_FX_NO_SUCH_FILE | SSH_FX_PERMISSION_DENIED => said.into_owned(),
                    _ => format!("{said} (SFTP status {code})"),
                };
                self.hand_refusal(session, index, &entry, words)
            }
            _ if matches!(code, SSH_FX_NO_SUCH_FILE | SSH_FX_PERMISSION_DENIED) => {
                self.refused.push(format!("{label}: {words}"));
                self.refuse(session, index)
            }
            _ => Err(Error::new(
                Kind::Remote,
                format!("the target could not give back {label}: {words} (SFTP status {code})"),
            )),
        }
    }

    /// Leaves a file out: what was written of it goes, its handle is
    /// closed, and the slot is freed once no answer for it is due.
    fn refuse(&mut self, session: &mut Session, index: usize) -> Result<()> {
        let partial = match self.dest {
            Dest::Stage { partial, .. } => Some(partial),
            Dest::Hash(_) | Dest::Scratch { .. } | Dest::Hand(_) => None,
        };
        let slot = self.slots.get_mut(index).expect("a refused slot is open");
        slot.refused = true;
        match (slot.out.take(), partial) {
            (Some(Out::File(_)), Some(partial)) => {
                let path = partial_path(partial, slot.order);
                std::fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
            }
            (Some(Out::Held(bytes)), _) => {
                if let Dest::Hand(hand) = &self.dest {
                    hand.held.fetch_sub(bytes.len(), Ordering::Relaxed);
                }
            }
            _ => {}
        }
        if let Some(handle) = slot.handle.take() {
            let id = session.request(SSH_FXP_CLOSE, &[&handle], &[]);
            self.pending.insert(id, (None, Want::Close));
        }
        if self.slot(index).in_flight == 0 {
            self.release(index);
        }
        Ok(())
    }

    /// An answer for a file already left out: a handle it opened is
    /// closed, anything else dropped.
    fn drop_late_answer(
        &mut self,
        session: &mut Session,
        index: usize,
        mut packet: Packet,
    ) -> Result<()> {
        if packet.kind == SSH_FXP_HANDLE {
            let handle = packet.body.string(256)?;
            let id = session.request(SSH_FXP_CLOSE, &[&handle], &[]);
            self.pending.insert(id, (None, Want::Close));
        }
        if self.slot(index).in_flight == 0 {
            self.release(index);
        }
        Ok(())
    }

    /// The file's size and mtime from its lstat, within the stage's room;
    /// its bytes' destination made ready.
    fn accept_size(&mut self, index: usize, entry: &TreeEntry, attrs: Attrs) -> Result<()> {
        let label = self.label(entry);
        let order = self.slot(index).order;
        if attrs.mode.is_some_and(|m| m & S_IFMT != S_IFREG) {
            return Err(corrupt(&label, NOT_A_FILE));
        }
        let Some(size) = attrs.size else {
            return Err(corrupt(&label, "the server gave no size"));
        };
        let out = match &mut self.dest {
            Dest::Hash(_) => Out::Hash(InOrderSha1::default()),
            Dest::Stage { partial, room, .. } => {
                if size > *room {
                    return Err(Error::new(
                        Kind::Corrupt,
                        format!(
                            "the target says {label} is {size} bytes; the restore stage has room \
                             for {room} more"
                        ),
                    ));
                }
                *room -= size;
                Out::File(create_staged(&partial_path(partial, order))?)
            }
            Dest::Scratch { file, room } => {
                if size > *room {
                    return Err(Error::new(
                        Kind::Corrupt,
                        format!("the target says {label} is {size} bytes, more than {room}"),
                    ));
                }
                Out::File(file.try_clone().ctx(|| format!("reading {label}"))?)
            }
            Dest::Hand(hand) => hand_out(hand, &label, size)?,
        };
        let slot = self.slot(index);
        slot.size = Some(size);
        slot.mtime = attrs.mtime;
        slot.out = Some(out);
        Ok(())
    }

    fn write(
        &mut self,
        index: usize,
        entry: &TreeEntry,
        offset: u64,
        asked: u32,
        data: &[u8],
    ) -> Result<()> {
        let label = self.label(entry);
        let slot = self.slots.get_mut(index).expect("an answered slot is open");
        let size = slot.size.unwrap_or(0);
        let got = data.len() as u64;
        if got == 0 || offset + got > size {
            return Err(corrupt(
                &label,
                &format!("a read at byte {offset} gave {got} bytes of a {size}-byte file"),
            ));
        }
        if got < u64::from(asked) && offset + got < size {
            let rest = (u64::from(asked) - got).min(size - offset - got) as u32;
            slot.again.push((offset + got, rest));
            self.ready.push_back(index);
        }
        match slot.out.as_mut().expect("a file is open before its reads") {
            Out::File(file) => file
                .write_all_at(data, offset)
                .ctx(|| format!("writing the stage's copy of {label}"))?,
            Out::Hash(hasher) => hasher
                .add(offset, data)
                .map_err(|why| corrupt(&label, &why))?,
            // `offset + got <= size`, the buffer's length, was checked.
            Out::Held(bytes) => bytes[offset as usize..][..data.len()].copy_from_slice(data),
        }
        if let Some(phase) = self.phase {
            phase.add(0, got);
        }
        Ok(())
    }

    /// A file is done once its size is known and every part arrived: its
    /// mtime is set, the server's handle closed (not waited for).
    fn finish_if_done(&mut self, session: &mut Session, index: usize) -> Result<()> {
        let slot = self.slot(index);
        let done = slot.handle.is_some()
            && slot.size.is_some_and(|size| slot.asked_to >= size)
            && slot.again.is_empty()
            && slot.in_flight == 0;
        if !done {
            return Ok(());
        }
        let (entry, order) = (Rc::clone(&slot.entry), slot.order);
        let (size, mtime) = (slot.size, slot.mtime);
        let handle = slot.handle.take().unwrap_or_default();
        match slot.out.take() {
            Some(Out::Held(bytes)) => self.hand_over(&entry, mtime, Content::Held(bytes))?,
            Some(Out::File(file)) if matches!(self.dest, Dest::Hand(_)) => {
                self.hand_over(&entry, mtime, Content::Spilled(file))?
            }
            Some(Out::File(file)) => {
                if let Some(mtime) = mtime {
                    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(mtime));
                    file.set_modified(when).ctx(|| {
                        format!(
                            "setting the mtime of the stage's copy of {}",
                            self.label(&entry)
                        )
                    })?;
                }
                if let Dest::Stage { into, partial, .. } = self.dest {
                    move_whole(&partial_path(partial, order), &into.join(&entry.path))?;
                }
            }
            Some(Out::Hash(hasher)) => {
                let sum = hasher
                    .finish(size.unwrap_or(0))
                    .map_err(|why| corrupt(&self.label(&entry), &why))?;
                if let Dest::Hash(sink) = &mut self.dest {
                    sink(Hashed1 {
                        order,
                        entry: &entry,
                        size: size.unwrap_or(0),
                        sum,
                    })?;
                }
            }
            // Set with the size, which `done` waits for.
            None => {}
        }
        let id = session.request(SSH_FXP_CLOSE, &[&handle], &[]);
        self.pending.insert(id, (None, Want::Close));
        if let Some(phase) = self.phase {
            phase.add(1, 0);
        }
        self.release(index);
        Ok(())
    }

    fn release(&mut self, index: usize) {
        self.slots.release(index);
    }

    /// Leaves one file of a `Dest::Hand` fetch out, handing the sink why.
    fn hand_refusal(
        &mut self,
        session: &mut Session,
        index: usize,
        entry: &TreeEntry,
        why: String,
    ) -> Result<()> {
        self.hand_over(entry, None, Content::Refused(why))?;
        self.refuse(session, index)
    }

    /// Gives a whole file or link to `Dest::Hand`'s sink.
    fn hand_over(&mut self, entry: &TreeEntry, mtime: Option<u32>, content: Content) -> Result<()> {
        let Dest::Hand(hand) = &mut self.dest else {
            unreachable!("only a Hand fetch holds files or hands links over");
        };
        (hand.sink)(Handed {
            path: entry.path.clone(),
            mode: entry.mode,
            mtime,
            content,
        })
    }

    fn make_link(&mut self, entry: &TreeEntry, target: &[u8]) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        if matches!(self.dest, Dest::Hand(_)) {
            return self.hand_over(entry, None, Content::Link(target.to_vec()));
        }
        let Dest::Stage { into, .. } = self.dest else {
            return Err(protocol(format!(
                "it answered a READLINK never asked for, for {}",
                self.label(entry)
            )));
        };
        let mut munged = MUNGE_PREFIX.as_bytes().to_vec();
        munged.extend_from_slice(target);
        let path = into.join(&entry.path);
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&munged), &path)
            .ctx(|| format!("making the symlink {}", path.display()))
    }
}

/// Where a file of `size` bytes goes in a `Dest::Hand` fetch: held while
/// the budget allows, else spilled to an unnamed file.
fn hand_out(hand: &mut Hand, label: &str, size: u64) -> Result<Out> {
    let held = hand.held.load(Ordering::Relaxed);
    if size <= HOLD_MAX as u64 && held + size as usize <= HELD_MAX {
        hand.held.fetch_add(size as usize, Ordering::Relaxed);
        return Ok(Out::Held(vec![0; size as usize]));
    }
    let Some(spill) = hand.spill else {
        return Err(corrupt(
            label,
            &format!("the server says it is {size} bytes"),
        ));
    };
    // Asked per file: a spilled file's room comes back once its worker
    // closes it, so what is free now is what the restore may use.
    let free = crate::fsutil::free_bytes(spill).unwrap_or(u64::MAX);
    if size > free.saturating_sub(hand.keep_free) {
        return Err(Error::new(
            Kind::Io,
            format!(
                "{} has {} free, {} of it kept free; the target says {label} is {size} bytes",
                spill.display(),
                crate::human::bytes_short(free),
                crate::human::bytes_short(hand.keep_free)
            ),
        ));
    }
    Ok(Out::File(unnamed_file(spill, label)?))
}

/// A new file in the private directory `dir` that no name leads to: gone
/// when closed. Made with O_TMPFILE, or where the file system has none
/// (NFS, CIFS) made under a unique name and unlinked at once.
fn unnamed_file(dir: &Path, label: &str) -> Result<File> {
    let open = |flags: i32, path: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(flags == 0)
            .custom_flags(flags | nix::libc::O_NOFOLLOW)
            .mode(0o600)
            .open(path)
    };
    match open(nix::libc::O_TMPFILE, dir) {
        Ok(file) => return Ok(file),
        Err(e)
            if e.raw_os_error() == Some(nix::libc::EISDIR)
                || e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => {}
        Err(e) => {
            return Err(Error::io(
                format!("making a file in {} for {label}", dir.display()),
                e,
            ));
        }
    }
    static MADE: AtomicUsize = AtomicUsize::new(0);
    let path = dir.join(format!("spill-{}", MADE.fetch_add(1, Ordering::Relaxed)));
    let file = open(0, &path).ctx(|| format!("making {} for {label}", path.display()))?;
    std::fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
    Ok(file)
}

/// A directory beside a stage where one fetch writes its files until
/// whole: private, fresh (a killed run's is removed first), removed when
/// dropped. Fetches into the same stage side by side would each have
/// their own.
struct PartialDir(PathBuf);

impl PartialDir {
    fn fresh(into: &Path) -> Result<PartialDir> {
        static FETCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let nth = FETCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut name = into.as_os_str().to_owned();
        name.push(format!(".partial-{nth}"));
        let dir = PathBuf::from(name);
        if dir.symlink_metadata().is_ok() {
            std::fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
        }
        crate::crypt::create_private_dir(&dir)?;
        Ok(PartialDir(dir))
    }
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The file being fetched as the `order`th: named by its place, so no
/// name from the server is used here.
fn partial_path(partial: &Path, order: usize) -> PathBuf {
    partial.join(order.to_string())
}

/// Gives a whole file its name in the stage, never replacing an entry
/// (the stage's directories are ours; the name is the record's).
fn move_whole(from: &Path, to: &Path) -> Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE)
        .map_err(std::io::Error::from)
        .ctx(|| format!("moving the fetched {} to {}", from.display(), to.display()))
}

/// A stage's copy of a fetched file: new, private, not through a link.
fn create_staged(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .ctx(|| format!("creating {}", path.display()))
}

/// The one name of a READLINK answer: a link's target, bounded, no NUL.
fn read_link_name(body: &mut Fields) -> Result<Vec<u8>> {
    let count = body.u32()?;
    if count != 1 {
        return Err(protocol(format!("a link's target came as {count} names")));
    }
    let target = body.string(MAX_LINK)?;
    if target.is_empty() || target.contains(&0) {
        return Err(protocol(
            "a link's target is empty or holds a NUL byte".into(),
        ));
    }
    Ok(target)
}

/// The attributes this fetcher uses.
pub(super) struct Attrs {
    pub(super) size: Option<u64>,
    mode: Option<u32>,
    pub(super) mtime: Option<u32>,
}

impl Attrs {
    pub(super) fn is_dir(&self) -> bool {
        self.mode.is_some_and(|mode| mode & S_IFMT == S_IFDIR)
    }

    pub(super) fn read(body: &mut Fields) -> Result<Attrs> {
        let flags = body.u32()?;
        let size = (flags & ATTR_SIZE != 0).then(|| body.u64()).transpose()?;
        if flags & ATTR_UIDGID != 0 {
            body.u32()?;
            body.u32()?;
        }
        let mode = (flags & ATTR_PERMISSIONS != 0)
            .then(|| body.u32())
            .transpose()?;
        let mtime = if flags & ATTR_ACMODTIME != 0 {
            body.u32()?;
            Some(body.u32()?)
        } else {
            None
        };
        // Extended attributes may follow; nothing here needs them.
        Ok(Attrs { size, mode, mtime })
    }
}

/// A packet's fields, read front to back; running out is the server's error.
pub(super) struct Fields(Vec<u8>);

impl Fields {
    fn take(&mut self, n: usize) -> Result<Vec<u8>> {
        if self.0.len() < n {
            return Err(protocol("it sent a packet shorter than its fields".into()));
        }
        let rest = self.0.split_off(n);
        Ok(std::mem::replace(&mut self.0, rest))
    }

    pub(super) fn u32(&mut self) -> Result<u32> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes(bytes.try_into().unwrap_or_default()))
    }

    /// The next u32, left in place (a STATUS's code, looked at first).
    pub(super) fn clone_u32(&self) -> Option<u32> {
        self.0
            .get(..4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap_or_default()))
    }

    fn u64(&mut self) -> Result<u64> {
        let bytes = self.take(8)?;
        Ok(u64::from_be_bytes(bytes.try_into().unwrap_or_default()))
    }

    /// A string of at most `limit` bytes.
    pub(super) fn string(&mut self, limit: usize) -> Result<Vec<u8>> {
        let len = self.u32()? as usize;
        if len > limit {
            return Err(protocol(format!(
                "it sent a field of {len} bytes where at most {limit} fit"
            )));
        }
        self.take(len)
    }
}

pub(super) fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

pub(super) fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_be_bytes());
}

pub(super) fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

pub(super) fn protocol(why: String) -> Error {
    Error::new(
        Kind::Remote,
        format!("the target's SFTP server broke the protocol: {why}"),
    )
}

fn corrupt(label: &str, why: &str) -> Error {
    Error::new(Kind::Corrupt, format!("the target's {label}: {why}"))
}

fn lost(why: String) -> Error {
    Error::new(Kind::Remote, format!("the SFTP session was lost: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_is_relative_to_home_unless_the_path_is_absolute() {
        assert_eq!(remote_base(Path::new(""), "files"), b"files");
        assert_eq!(remote_base(Path::new("backup"), "files"), b"backup/files");
        assert_eq!(remote_base(Path::new("/srv/b/"), "files"), b"/srv/b/files");
        assert_eq!(remote_base(Path::new("/"), "files"), b"/files");
    }

    #[test]
    fn fields_refuse_what_runs_past_the_packet_or_the_limit() {
        let mut body = Fields(vec![0, 0, 0, 9, b'a']);
        assert!(body.string(100).is_err(), "a string longer than the packet");
        let mut body = Fields(vec![0, 0, 0, 3, b'a', b'b', b'c']);
        assert!(body.string(2).is_err(), "a string over its limit");
        let mut body = Fields(vec![0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(body.string(3).unwrap(), b"abc");
        assert!(Fields(vec![1, 2]).u32().is_err(), "a short u32");
    }

    #[test]
    fn a_link_target_must_be_one_bounded_name_without_nul() {
        let name = |count: u32, target: &[u8]| {
            let mut body = Vec::new();
            put_u32(&mut body, count);
            put_string(&mut body, target);
            Fields(body)
        };
        assert_eq!(read_link_name(&mut name(1, b"x/y")).unwrap(), b"x/y");
        assert!(read_link_name(&mut name(2, b"x")).is_err(), "two names");
        assert!(read_link_name(&mut name(1, b"a\0b")).is_err(), "a NUL");
        assert!(read_link_name(&mut name(1, b"")).is_err(), "empty");
        let long = vec![b'a'; MAX_LINK + 1];
        assert!(read_link_name(&mut name(1, &long)).is_err(), "too long");
    }

    #[test]
    fn attrs_read_the_fields_their_flags_announce() {
        let mut body = Vec::new();
        put_u32(
            &mut body,
            ATTR_SIZE | ATTR_UIDGID | ATTR_PERMISSIONS | ATTR_ACMODTIME,
        );
        put_u64(&mut body, 70_000);
        put_u32(&mut body, 1000);
        put_u32(&mut body, 1000);
        put_u32(&mut body, 0o100644);
        put_u32(&mut body, 1);
        put_u32(&mut body, 1_700_000_000);
        let attrs = Attrs::read(&mut Fields(body)).unwrap();
        assert_eq!(attrs.size, Some(70_000));
        assert_eq!(attrs.mode, Some(0o100644));
        assert_eq!(attrs.mtime, Some(1_700_000_000));
        let mut only_size = Vec::new();
        put_u32(&mut only_size, ATTR_SIZE);
        put_u64(&mut only_size, 5);
        let attrs = Attrs::read(&mut Fields(only_size)).unwrap();
        assert_eq!((attrs.size, attrs.mode, attrs.mtime), (Some(5), None, None));
    }

    fn limits_reply(handles: u64) -> Fields {
        let mut body = Vec::new();
        for limit in [256 * 1024, 261_120, 261_120, handles] {
            put_u64(&mut body, limit);
        }
        Fields(body)
    }

    #[test]
    fn the_server_says_how_many_files_stay_open() {
        assert_eq!(
            open_handles(SSH_FXP_EXTENDED_REPLY, limits_reply(1019)),
            Some(1019)
        );
        // 0: the server names no limit; a status or a short reply: none.
        assert_eq!(open_handles(SSH_FXP_EXTENDED_REPLY, limits_reply(0)), None);
        assert_eq!(open_handles(SSH_FXP_STATUS, limits_reply(1019)), None);
        let mut short = Vec::new();
        put_u64(&mut short, 1019);
        assert_eq!(open_handles(SSH_FXP_EXTENDED_REPLY, Fields(short)), None);
        // Never more than asked for or than our own descriptors allow.
        assert_eq!(files_at_once(1019, 10_000), 1019);
        assert_eq!(files_at_once(u64::MAX as usize, 10_000), MAX_OPEN_ASKED);
        assert_eq!(files_at_once(5_000, 448), 448);
        assert_eq!(files_at_once(64, 448), 64);
    }

    /// `cat` answers each request with itself and stops reading once its
    /// answers fill the pipe back: a turn of 2 MB, far more than two
    /// pipes hold, arrives whole only if the answers are read while it is
    /// written.
    #[test]
    fn a_turn_larger_than_the_pipes_is_written_while_the_answers_are_read() {
        let cat = crate::exec::Cmd::new("cat").converse().unwrap();
        let mut session = Session::over(cat).unwrap();
        let count = 20_000u32;
        for _ in 0..count {
            session.request(SSH_FXP_READ, &[&[7u8; 90]], &[]);
        }
        session.flush().unwrap();
        for id in 0..count {
            let mut packet = session.receive().unwrap();
            assert_eq!((packet.kind, packet.id), (SSH_FXP_READ, id));
            assert_eq!(packet.body.string(100).unwrap(), vec![7u8; 90]);
        }
    }

    /// A session is parked for the next step only once every request is
    /// answered and taken, and while ssh (here `cat`) still runs.
    #[test]
    fn a_session_is_settled_only_with_nothing_in_flight() {
        let cat = crate::exec::Cmd::new("cat").converse().unwrap();
        let mut session = Session::over(cat).unwrap();
        assert!(session.is_settled());
        session.request(SSH_FXP_READ, &[b"a"], &[]);
        assert!(!session.is_settled(), "a request not sent yet");
        session.request(SSH_FXP_READ, &[b"b"], &[]);
        session.flush().unwrap();
        assert!(!session.is_settled(), "two answers to come");
        session.receive().unwrap();
        assert!(!session.is_settled(), "one answer to come");
        session.receive().unwrap();
        assert!(session.is_settled());
        session.close();
        // cat ends at the end of its input, in its own time.
        let since = Instant::now();
        while session.is_settled() {
            assert!(since.elapsed() < Duration::from_secs(60), "cat never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
