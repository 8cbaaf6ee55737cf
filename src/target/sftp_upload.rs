//! The first pass of a first backup over SFTP: every file of the encrypted
//! view uploaded into the empty `files/` with many requests in flight
//! (sftp.rs), before rsync runs through sshfs. Through sshfs rsync pays
//! about 18 waited round trips per new file (bench/analysis.md, "round
//! trips per file over sshfs"); here a file costs three, and up to
//! `MAX_OPEN` files travel together (up to `MAX_OPEN_SMALL` small ones),
//! in up to four sessions side by side (`side_by_side`). rsync then finds
//! each file as it would have left it (size, mtime) and only checks it.
//!
//! `upload_changes` does the same for the regular files of a change set
//! (delta.rs) after the old versions are kept in the run's snapshot: new
//! files as below, replaced ones renamed over their names in one step
//! (`posix-rename@openssh.com`). Every result is looked up (LSTAT: size
//! and mtime as the view's), since a server may answer OK and do nothing.
//!
//! `upload_new` never replaces anything: a file is written under a temp name
//! (`.NAME.XXXXXX`, as rsync's, which a killed run's cleanup removes) and
//! then hard-linked to its name (`hardlink@openssh.com`, which fails when
//! the name exists), so whatever the target already holds stays for rsync
//! to handle (and to file in the run's snapshot). A server without that
//! extension gets no first pass. Any failure leaves the file to rsync:
//! this pass only saves time.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::Ssh;
use super::sftp::{
    ATTR_ACMODTIME, ATTR_PERMISSIONS, Attrs, CHUNK, FSYNC, HARDLINK, Leased, MAX_IN_FLIGHT,
    MAX_OPEN, POSIX_RENAME, SSH_FXF_CREAT, SSH_FXF_EXCL, SSH_FXF_WRITE, SSH_FXP_ATTRS,
    SSH_FXP_CLOSE, SSH_FXP_EXTENDED, SSH_FXP_FSETSTAT, SSH_FXP_HANDLE, SSH_FXP_LSTAT,
    SSH_FXP_MKDIR, SSH_FXP_OPEN, SSH_FXP_REMOVE, SSH_FXP_STATUS, SSH_FXP_WRITE, Session, Slots,
    put_u32, put_u64, remote_base, remote_path,
};
use crate::error::Result;
use crate::progress::{Part, PartId, Phase};

/// What the first pass put on the target: the user's files (not
/// gocryptfs' own) and every byte.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    pub files: u64,
    pub bytes: u64,
}

/// Uploads every regular file of `view` into the account's `files/` where
/// that name is free.
/// Directories are made as needed (0700: rsync gives them their modes and
/// times afterwards; one that exists is left as it is).
pub fn upload_new(ssh: &Ssh, view: &Path, phase: Option<&Phase>) -> Result<Uploaded> {
    let tree = walk_view(view)?;
    if tree.files.is_empty() {
        return Ok(Uploaded::default());
    }
    let mut session = ssh.sftp_session()?;
    if !session.offers(HARDLINK) {
        crate::log::debug(|| format!("no first pass over SFTP: the server lacks {HARDLINK}"));
        session.give_back();
        return Ok(Uploaded::default());
    }
    let base = remote_base(&ssh.sftp().path, super::FILES);
    if let Err(e) = make_dirs(&mut session, &base, &tree.dirs) {
        return Err(session.explain(e, ssh));
    }
    let (done, _) = side_by_side(ssh, session, (&base, view), phase, tree.files, false)?;
    Ok(done)
}

/// Uploads the regular files `files` names (paths below the view, each
/// with whether it replaces a file of `files/`, whose old version the run
/// has kept already: delta.rs) into the account's `files/`. A new file is
/// linked to its name only where that name is free (as `upload_new`); a
/// replacing one is renamed over it in one step (`posix-rename@openssh.com`,
/// which the server must offer). Every result is looked up: the paths
/// returned are on the server with the view's size and mtime; the rest is
/// rsync's. Their directories exist (phase 1 made them).
pub fn upload_changes(
    ssh: &Ssh,
    view: &Path,
    files: &[(String, bool)],
    phase: Option<&Phase>,
) -> Result<(Uploaded, Vec<String>)> {
    let session = ssh.sftp_session()?;
    let (can_link, can_replace) = (session.offers(HARDLINK), session.offers(POSIX_RENAME));
    let mut queue = Vec::new();
    for (rel, replace) in files {
        if (*replace && !can_replace) || (!*replace && !can_link) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(view.join(rel)) else {
            continue;
        };
        if meta.is_file() {
            let mut file = LocalFile::of(rel.clone(), &meta);
            file.replace = *replace;
            queue.push(file);
        }
    }
    if queue.is_empty() {
        session.give_back();
        return Ok((Uploaded::default(), Vec::new()));
    }
    let base = remote_base(&ssh.sftp().path, super::FILES);
    side_by_side(ssh, session, (&base, view), phase, queue, true)
}

/// Writes the regular files `names` of the local directory `from` (a
/// run's encrypted manifest, metadata.rs) into the account's `to`, all in
/// flight on one session: the directories `dirs` (parents first, `to`
/// among them) are made and looked up in one turn, then each file goes to
/// a temp name, is synced and renamed over its name, and the name looked
/// up, as `upload_changes` does a replacing file. Through sshfs each of
/// these steps waits for the one before, and each file had a session of
/// its own: at 20 ms the manifest of a no-change backup took 0.24 s.
/// Returns the names not confirmed there (every name where a directory
/// is not there, or the server cannot rename in one step), for the
/// caller to write through the mount, which says why.
pub fn upload_dir(
    ssh: &Ssh,
    dirs: &[&str],
    (from, to): (&Path, &str),
    names: &[String],
) -> Result<Vec<String>> {
    let session = ssh.sftp_session()?;
    if !session.offers(POSIX_RENAME) {
        session.give_back();
        return Ok(names.to_vec());
    }
    let queue: Vec<LocalFile> = names
        .iter()
        .filter_map(|name| {
            let meta = std::fs::symlink_metadata(from.join(name)).ok()?;
            let mut file = LocalFile::of(name.clone(), &meta);
            // Only the account reads what it holds of a run.
            (file.mode, file.replace) = (0o600, true);
            meta.is_file().then_some(file)
        })
        .collect();
    let base = remote_base(&ssh.sftp().path, to);
    session.work(|session| {
        if !made_dirs(session, ssh, dirs)? {
            return Ok(names.to_vec());
        }
        let mut pass = Pass::new(&base, from, None, queue);
        (pass.named, pass.fsync) = (true, session.offers(FSYNC));
        pass.go(session)?;
        let sent: HashSet<&String> = pass.sent.iter().collect();
        Ok(names
            .iter()
            .filter(|n| !sent.contains(n))
            .cloned()
            .collect())
    })
}

/// MKDIRs of `dirs` (0700), then a lookup of each, in one turn: whether
/// every one is a directory now (one that was there is fine). A server
/// that runs the requests out of order may look up before it made one:
/// that only sends the caller through the mount.
fn made_dirs(session: &mut Session, ssh: &Ssh, dirs: &[&str]) -> Result<bool> {
    let root = &ssh.sftp().path;
    let paths: Vec<Vec<u8>> = dirs.iter().map(|d| remote_base(root, d)).collect();
    for path in &paths {
        session.request(SSH_FXP_MKDIR, &[path], &perms(0o700));
    }
    let lookups: HashSet<u32> = paths
        .iter()
        .map(|path| session.request(SSH_FXP_LSTAT, &[path], &[]))
        .collect();
    session.flush()?;
    let mut all_there = true;
    for _ in 0..2 * paths.len() {
        let mut packet = session.receive()?;
        if lookups.contains(&packet.id) {
            let there = packet.kind == SSH_FXP_ATTRS && Attrs::read(&mut packet.body)?.is_dir();
            all_there &= there;
        }
    }
    Ok(all_there)
}

/// Sessions that upload side by side where the connection budget has
/// room for them (`session` is the first): one session reads the view one
/// file after the other, and through gocryptfs -reverse each small file
/// costs a few FUSE calls of CPU, so that a pass over 200,000 small files
/// at 20 ms waited on those reads, not on the server (SMALL's first pass:
/// 84 s with one session and 1,024 files open). They share the files kept
/// open (`Session::share_open`) and are dealt the files in turn.
const SESSIONS_SIDE_BY_SIDE: usize = 4;

/// Files open at once beyond `MAX_OPEN` while all that are open hold at
/// most `OPEN_BYTES` together: a first backup of 200,000 small files
/// (SMALL) left the two CPUs a third idle with 256 open (a file costs
/// three round trips), while 1,024 open files of S's sizes made its first
/// pass slower (sftp.rs, `MAX_OPEN_ASKED`).
const MAX_OPEN_SMALL: usize = 1024;
const OPEN_BYTES: u64 = 4 * 1024 * 1024;

/// The files confirmed on the server come back where `named` (a first
/// pass of 200,000 files would hold every path twice for nothing).
fn side_by_side<'a>(
    ssh: &'a Ssh,
    session: Leased<'a>,
    (base, view): (&[u8], &Path),
    phase: Option<&Phase>,
    files: Vec<LocalFile>,
    named: bool,
) -> Result<(Uploaded, Vec<String>)> {
    let wanted = SESSIONS_SIDE_BY_SIDE.min(files.len().div_ceil(MIN_FILES_PER_SESSION));
    let more: Vec<_> = (1..wanted).map_while(|_| ssh.try_sftp_place()).collect();
    let mut shares: Vec<Vec<LocalFile>> = (0..=more.len()).map(|_| Vec::new()).collect();
    let count = shares.len();
    for (i, file) in files.into_iter().enumerate() {
        shares[i % count].push(file);
    }
    crate::log::debug(|| format!("sftp upload: {count} session(s) side by side"));
    // The first share on `session` (opened already), each other on a
    // session opened in its own thread.
    let places = std::iter::once(session.into_place()).chain(more);
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .zip(places)
            .map(|(share, place)| {
                scope.spawn(move || {
                    one_pass(place.open()?, count, (base, view, phase), share, named)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(panicked())))
            .collect::<Vec<_>>()
    });
    let mut done = Uploaded::default();
    let mut sent = Vec::new();
    for result in results {
        let (uploaded, paths) = result?;
        done.files += uploaded.files;
        done.bytes += uploaded.bytes;
        sent.extend(paths);
    }
    Ok((done, sent))
}

fn panicked() -> crate::error::Error {
    crate::error::Error::new(crate::error::Kind::Io, "an SFTP upload panicked")
}

/// Fewer files than this per session are not worth one more session.
const MIN_FILES_PER_SESSION: usize = 256;

/// One session's pass over `share`.
fn one_pass(
    mut session: Leased<'_>,
    sharing: usize,
    (base, view, phase): (&[u8], &Path, Option<&Phase>),
    share: Vec<LocalFile>,
    named: bool,
) -> Result<(Uploaded, Vec<String>)> {
    session.share_open(sharing);
    let mut pass = Pass::new(base, view, phase, share);
    pass.named = named;
    session.work(|session| pass.go(session))?;
    Ok((pass.done, pass.sent))
}

/// A file of the view: its path below the view, size, mode and mtime.
struct LocalFile {
    rel: String,
    size: u64,
    mode: u32,
    mtime: u32,
    /// Renamed over a file of the same name (its old version is kept),
    /// not linked where the name is free.
    replace: bool,
}

impl LocalFile {
    fn of(rel: String, meta: &std::fs::Metadata) -> LocalFile {
        LocalFile {
            rel,
            size: meta.len(),
            mode: meta.mode() & 0o777,
            mtime: u32::try_from(meta.mtime()).unwrap_or(0),
            replace: false,
        }
    }
}

struct LocalTree {
    /// Parents before children.
    dirs: Vec<String>,
    files: Vec<LocalFile>,
}

/// The view's directories and regular files (symlinks and the rest are
/// rsync's), names that start with a dot left out (rsync's temp names).
fn walk_view(view: &Path) -> Result<LocalTree> {
    let mut tree = LocalTree {
        dirs: Vec::new(),
        files: Vec::new(),
    };
    for entry in walkdir::WalkDir::new(view).min_depth(1).follow_links(false) {
        crate::interrupt::check()?;
        let entry = entry.map_err(|e| crate::walk::error(view, e))?;
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let rel = crate::walk::relative(view, entry.path());
        let meta = entry.metadata().map_err(|e| crate::walk::error(view, e))?;
        if meta.is_dir() {
            tree.dirs.push(rel);
        } else if meta.is_file() {
            tree.files.push(LocalFile::of(rel, &meta));
        }
        if tree.dirs.len() + tree.files.len() > crate::limits::MAX_TREE_ENTRIES {
            return Err(crate::limits::too_much(
                "the encrypted view",
                format!("more than {} entries", crate::limits::MAX_TREE_ENTRIES),
            ));
        }
    }
    Ok(tree)
}

fn perms(mode: u32) -> Vec<u8> {
    let mut attrs = Vec::new();
    put_u32(&mut attrs, ATTR_PERMISSIONS);
    put_u32(&mut attrs, mode);
    attrs
}

/// Makes the directories one level at a time (a level's MKDIRs travel
/// together); one that exists, or cannot be made, is left to rsync.
fn make_dirs(session: &mut Session, base: &[u8], dirs: &[String]) -> Result<()> {
    let mut by_depth: Vec<Vec<&String>> = Vec::new();
    for dir in dirs {
        let depth = dir.matches('/').count();
        if by_depth.len() <= depth {
            by_depth.resize_with(depth + 1, Vec::new);
        }
        by_depth[depth].push(dir);
    }
    for level in by_depth {
        for chunk in level.chunks(MAX_IN_FLIGHT) {
            for dir in chunk {
                session.request(SSH_FXP_MKDIR, &[&remote_path(base, dir)], &perms(0o700));
            }
            session.flush()?;
            for _ in chunk {
                session.receive()?;
            }
        }
    }
    Ok(())
}

/// Where one file is.
enum Step {
    Opening,
    /// Writes go out; the file is read as they do.
    Writing,
    Closing,
    /// Linked or renamed to its name, and the name looked up in the same
    /// turn (a server that answers OK and does nothing, as rclone does to
    /// a hard link, is caught; a server that runs the two out of order
    /// only loses the file to rsync).
    Linking,
}

struct Slot {
    file: LocalFile,
    temp: Vec<u8>,
    local: Option<File>,
    handle: Vec<u8>,
    sent: u64,
    in_flight: usize,
    step: Step,
    failed: bool,
    /// The link or rename request, and what came of it and of the lookup.
    link_id: u32,
    linked: bool,
    found: bool,
}

struct Pass<'a> {
    base: &'a [u8],
    view: &'a Path,
    phase: Option<&'a Phase>,
    /// Files not started, the next last.
    queue: Vec<LocalFile>,
    slots: Slots<Slot>,
    /// The sizes of the files open, together (`start_files`).
    open_bytes: u64,
    /// Request id -> its slot (None: a REMOVE of a temp name nobody waits for).
    pending: HashMap<u32, Option<usize>>,
    /// The WRITEs among them: each holds a part of a file, and there are
    /// never more than `Session::max_writes` (16 MiB in all), however many
    /// files the server lets us keep open.
    writes: HashSet<u32>,
    done: Uploaded,
    /// The files confirmed on the server.
    sent: Vec<String>,
    /// Whether `sent` is kept.
    named: bool,
    /// Whether each file is synced on the server before it is closed
    /// (`fsync@openssh.com`): a run's manifest, not the view's files
    /// (rsync does not sync them either).
    fsync: bool,
    /// One read of the view, reused for every write.
    chunk: Vec<u8>,
    /// This pass's counter in the phase, with the user's files it was
    /// given as its total (gocryptfs' own files are not counted).
    part: Option<(PartId, u64)>,
}

impl<'a> Pass<'a> {
    fn new(
        base: &'a [u8],
        view: &'a Path,
        phase: Option<&'a Phase>,
        mut queue: Vec<LocalFile>,
    ) -> Pass<'a> {
        queue.reverse();
        let user_files = queue
            .iter()
            .filter(|f| !crate::crypt::is_gocryptfs_metadata(&f.rel))
            .count() as u64;
        let part = phase.map(|phase| (phase.part(), user_files));
        let pass = Pass {
            base,
            view,
            phase,
            queue,
            slots: Slots::new(),
            open_bytes: 0,
            pending: HashMap::new(),
            writes: HashSet::new(),
            done: Uploaded::default(),
            sent: Vec::new(),
            named: false,
            fsync: false,
            chunk: vec![0u8; CHUNK as usize],
            part,
        };
        pass.count(user_files);
        pass
    }

    /// Shows what the pass sent against `total`: the files it was given
    /// while it runs, what it sent once it ends (the rest is rsync's,
    /// which counts it itself).
    fn count(&self, total: u64) {
        if let (Some(phase), Some((id, _))) = (self.phase, self.part) {
            let part = Part {
                files: self.done.files,
                files_total: total,
                bytes: self.done.bytes,
                provisional: false,
            };
            phase.set_part(id, part);
        }
    }

    fn go(&mut self, session: &mut Session) -> Result<()> {
        loop {
            self.start_files(session)?;
            self.send_writes(session)?;
            session.flush()?;
            if self.pending.is_empty() {
                self.count(self.done.files);
                return Ok(());
            }
            let packet = session.receive()?;
            let Some(slot) = self.pending.remove(&packet.id) else {
                return Err(super::sftp::unasked(packet.id));
            };
            self.writes.remove(&packet.id);
            if let Some(index) = slot {
                self.answer(session, index, packet)?;
            }
        }
    }

    /// Opens the next files while there is room: `MAX_OPEN` of any size,
    /// and up to `MAX_OPEN_SMALL` while the files open hold at most
    /// `OPEN_BYTES` together (each session its share), so that many small
    /// files travel at once and large ones do not crowd the writes.
    fn start_files(&mut self, session: &mut Session) -> Result<()> {
        let (most, small_most) = (
            session.max_open_of(MAX_OPEN),
            session.max_open_of(MAX_OPEN_SMALL),
        );
        let byte_cap = OPEN_BYTES * small_most as u64 / MAX_OPEN_SMALL as u64;
        while self.pending.len() < session.max_in_flight() {
            let Some(next) = self.queue.last() else {
                return Ok(());
            };
            let open = self.slots.open();
            let small_room = open < small_most && self.open_bytes + next.size <= byte_cap;
            if open >= most && !small_room {
                return Ok(());
            }
            let Some(file) = self.queue.pop() else {
                return Ok(());
            };
            self.open_bytes += file.size;
            let temp = temp_name(&remote_path(self.base, &file.rel))?;
            let mut tail = Vec::new();
            put_u32(&mut tail, SSH_FXF_WRITE | SSH_FXF_CREAT | SSH_FXF_EXCL);
            tail.extend_from_slice(&perms(0o600));
            let id = session.request(SSH_FXP_OPEN, &[&temp], &tail);
            let index = self.slots.take(Slot {
                file,
                temp,
                local: None,
                handle: Vec::new(),
                sent: 0,
                in_flight: 1,
                step: Step::Opening,
                failed: false,
                link_id: 0,
                linked: false,
                found: false,
            });
            self.pending.insert(id, Some(index));
        }
        Ok(())
    }

    /// Sends the next parts of the files being written, read from the
    /// view as they go; at the end of a file its mode and mtime, and the
    /// close.
    fn send_writes(&mut self, session: &mut Session) -> Result<()> {
        for index in self.slots.indices() {
            // At the caps no later slot gets a write either.
            if self.pending.len() >= session.max_in_flight()
                || self.writes.len() >= session.max_writes()
            {
                return Ok(());
            }
            while self.pending.len() < session.max_in_flight()
                && self.writes.len() < session.max_writes()
            {
                let Some(slot) = self.slots.get_mut(index) else {
                    break;
                };
                if !matches!(slot.step, Step::Writing) {
                    break;
                }
                let read = match slot.local.as_mut() {
                    Some(local) => read_full(local, &mut self.chunk),
                    None => Ok(0),
                };
                let Ok(n) = read else {
                    // The view could not be read: rsync will say why.
                    slot.failed = true;
                    self.close(session, index);
                    break;
                };
                if n == 0 {
                    let mut attrs = Vec::new();
                    put_u32(&mut attrs, ATTR_PERMISSIONS | ATTR_ACMODTIME);
                    put_u32(&mut attrs, slot.file.mode);
                    put_u32(&mut attrs, slot.file.mtime);
                    put_u32(&mut attrs, slot.file.mtime);
                    let handle = slot.handle.clone();
                    let id = session.request(SSH_FXP_FSETSTAT, &[&handle], &attrs);
                    slot.in_flight += 1;
                    self.pending.insert(id, Some(index));
                    if self.fsync {
                        let mut tail = Vec::new();
                        super::sftp::put_string(&mut tail, &handle);
                        let id = session.request(SSH_FXP_EXTENDED, &[FSYNC.as_bytes()], &tail);
                        slot.in_flight += 1;
                        self.pending.insert(id, Some(index));
                    }
                    self.close(session, index);
                    break;
                }
                let mut tail = Vec::with_capacity(n + 16);
                put_u64(&mut tail, slot.sent);
                super::sftp::put_string(&mut tail, &self.chunk[..n]);
                let handle = slot.handle.clone();
                let id = session.request(SSH_FXP_WRITE, &[&handle], &tail);
                slot.sent += n as u64;
                slot.in_flight += 1;
                self.pending.insert(id, Some(index));
                self.writes.insert(id);
            }
        }
        Ok(())
    }

    fn close(&mut self, session: &mut Session, index: usize) {
        let slot = self.slots.get_mut(index).expect("an open slot");
        slot.local = None;
        slot.step = Step::Closing;
        let handle = slot.handle.clone();
        let id = session.request(SSH_FXP_CLOSE, &[&handle], &[]);
        slot.in_flight += 1;
        self.pending.insert(id, Some(index));
    }

    fn answer(
        &mut self,
        session: &mut Session,
        index: usize,
        mut packet: super::sftp::Packet,
    ) -> Result<()> {
        let view = self.view;
        let slot = self.slots.get_mut(index).expect("an answered slot is open");
        slot.in_flight -= 1;
        let ok = packet.kind == SSH_FXP_STATUS && packet.body.u32()? == 0;
        match (&slot.step, packet.kind) {
            (Step::Opening, SSH_FXP_HANDLE) => {
                slot.handle = packet.body.string(256)?;
                let path = view.join(&slot.file.rel);
                let local = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&path);
                slot.step = Step::Writing;
                match local {
                    Ok(local) => slot.local = Some(local),
                    Err(_) => {
                        slot.failed = true;
                        self.close(session, index);
                    }
                }
            }
            // The temp name could not be made: nothing on the server.
            (Step::Opening, _) => self.release(index),
            (Step::Writing, _) if !ok => slot.failed = true,
            (Step::Closing, _) if !ok => slot.failed = true,
            (Step::Writing | Step::Closing, _) => {}
            (Step::Linking, _) => {
                if packet.id == slot.link_id {
                    slot.linked = ok;
                } else if packet.kind == SSH_FXP_ATTRS {
                    let attrs = Attrs::read(&mut packet.body)?;
                    slot.found =
                        attrs.size == Some(slot.file.size) && attrs.mtime == Some(slot.file.mtime);
                }
                if slot.in_flight == 0 {
                    self.linked(session, index);
                }
                return Ok(());
            }
        }
        self.after_close(session, index);
        Ok(())
    }

    /// Once the close and everything before it is answered: link the temp
    /// name to the real one, or (after a failure) remove it.
    fn after_close(&mut self, session: &mut Session, index: usize) {
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if !matches!(slot.step, Step::Closing) || slot.in_flight > 0 {
            return;
        }
        let temp = slot.temp.clone();
        if slot.failed || slot.sent != slot.file.size {
            let id = session.request(SSH_FXP_REMOVE, &[&temp], &[]);
            self.pending.insert(id, None);
            self.release(index);
            return;
        }
        let name = remote_path(self.base, &slot.file.rel);
        let how = match slot.file.replace {
            true => POSIX_RENAME,
            false => HARDLINK,
        };
        let id = session.request(SSH_FXP_EXTENDED, &[how.as_bytes(), &temp, &name], &[]);
        slot.link_id = id;
        self.pending.insert(id, Some(index));
        let id = session.request(SSH_FXP_LSTAT, &[&name], &[]);
        self.pending.insert(id, Some(index));
        slot.step = Step::Linking;
        slot.in_flight += 2;
    }

    /// Both answers of the link (or rename) and the lookup are in: the
    /// file counts where both say it is there as the view has it. A link
    /// leaves the temp name, and so does a failed rename.
    fn linked(&mut self, session: &mut Session, index: usize) {
        let slot = self.slots.get_mut(index).expect("a linked slot is open");
        if !(slot.linked && slot.file.replace) {
            let temp = slot.temp.clone();
            let id = session.request(SSH_FXP_REMOVE, &[&temp], &[]);
            self.pending.insert(id, None);
        }
        if slot.linked && slot.found {
            // Counted as rsync counts: gocryptfs' own files are not the
            // user's.
            let user_file = !crate::crypt::is_gocryptfs_metadata(&slot.file.rel);
            self.done.files += u64::from(user_file);
            self.done.bytes += slot.sent;
            if self.named {
                self.sent.push(slot.file.rel.clone());
            }
            self.count(self.part.map_or(0, |(_, total)| total));
        }
        self.release(index);
    }

    fn release(&mut self, index: usize) {
        if let Some(slot) = self.slots.get(index) {
            self.open_bytes -= slot.file.size;
        }
        self.slots.release(index);
    }
}

/// rsync's temp name for `path`: `.NAME.XXXXXX` beside it.
fn temp_name(path: &[u8]) -> Result<Vec<u8>> {
    let (dir, name) = match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => (&path[..0], path),
    };
    let mut temp = dir.to_vec();
    temp.push(b'.');
    temp.extend_from_slice(name);
    temp.push(b'.');
    temp.extend_from_slice(crate::fsutil::random_hex(3)?.as_bytes());
    Ok(temp)
}

/// Fills `buf` as far as the file goes.
pub(super) fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_rsyncs() {
        let temp = temp_name(b"files/Ab/Cd").unwrap();
        let text = String::from_utf8(temp).unwrap();
        assert!(text.starts_with("files/Ab/.Cd."), "{text}");
        assert_eq!(text.len(), "files/Ab/.Cd.".len() + 6, "{text}");
        assert_eq!(
            crate::sync::without_temp_suffix(&text),
            "files/Ab/Cd",
            "a killed run's cleanup would not know it"
        );
    }
}
