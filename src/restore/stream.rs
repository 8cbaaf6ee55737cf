//! A whole restore from a stage pulled here copies each part of the tree
//! out as soon as the pull has brought that part whole, instead of after
//! the last file: the copy through gocryptfs takes about as long as the
//! fetch, and now both run at once (bench/analysis.md).
//!
//! The order:
//! 1. the names first: every `gocryptfs.diriv`, the `.name` file of each
//!    long name and `gocryptfs.conf`, so that the mount decrypts every
//!    name (gocryptfs reads nothing else to list a directory);
//! 2. every directory made in `--to` (split.rs, phase 1), by the plaintext
//!    paths the mount's control socket gives;
//! 3. the rest of the pull, while workers copy each part once every entry
//!    it waits for has arrived and the part is checked, in the pull's
//!    order (split.rs, phase 2);
//! 4. the whole stage checked again, as a restore that copies after the
//!    pull checks it; then the directories' modes and times (phase 3,
//!    here without rsync: `finish_directories`).
//!
//! A part is a set of directories with their own entries (not their
//! subdirectories'). A name in the stage is a whole file: rsync writes a
//! temporary name and renames it, the SFTP fetch writes beside the stage
//! and moves the file in (sftp.rs). Each part is checked as the whole stage
//! is (the types of its entries and of the directories above them, nothing
//! in its directories that the record does not list) before it is copied;
//! what the server changes after that, the final check catches. A restore
//! stopped by any check or failure leaves `--to` empty, as it was.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::time::Duration;

use super::{Copied, Copy, Rebuilt, RunRecord, STAGED_POINT, Stage};
use crate::crypt::{self, PathDecryptor};
use crate::error::{Error, IoContext, Kind, Result};
use crate::progress::Phase;
use crate::run::Context;
use crate::target::{self, PathTarget, Puller, TreeEntry};
use crate::{pool, split};

/// restore.rs `rebuild` from the stage's empty directories on, for a
/// whole tree pulled by `puller`: the run's `plan` (source -> entries) is
/// pulled, checked and copied out through `copy` as the module says.
pub(super) fn fill_and_copy(
    ctx: &Context,
    (remote, puller): (&PathTarget, &Puller),
    run: &RunRecord,
    plan: &BTreeMap<Option<&str>, Vec<&TreeEntry>>,
    mut stage: Stage,
    copy: &Copy,
    watched: Option<&Phase>,
) -> Result<Rebuilt> {
    let (id, entries) = (run.id.as_str(), &run.record.entries);
    let workers = super::stage_workers(ctx.job);
    let cut = parts(entries, part_count(workers));
    crate::log::debug(|| {
        format!(
            "restore: copied out in {} part(s) by {workers} rsync(s) while the pull goes on",
            cut.parts.len()
        )
    });
    let names: HashSet<&str> = cut.names.iter().map(|e| e.path.as_str()).collect();
    let (names_plan, rest_plan) = split_plan(plan, &names, entries);
    // Symlinks the record keeps (the server could not): made first, in the
    // stage only we write to, so that their parts need not wait for them.
    for entry in entries.iter().filter(|e| e.link.is_some()) {
        let path = stage.path.join(&entry.path);
        let target = entry.link.as_deref().unwrap_or_default();
        std::os::unix::fs::symlink(target, &path)
            .ctx(|| format!("making the symlink {}", path.display()))?;
    }
    let pull = Pull::default();
    let streamed = Streamed {
        ctx,
        run,
        stage: &stage.path,
        copy,
        plain: &ctx.runtime(STAGED_POINT),
        ctlsock: &ctx.runtime("staged-ctl.sock"),
        pull: &pull,
    };
    // The names and the rest are pulled side by side (the names are few:
    // their pull ends first), while the stage is mounted and then copied
    // out part by part.
    let (copied, pulled) = pool::both(
        || streamed.copy_out(&cut, workers),
        || {
            let fill = |plan: &Plan, list: &str| {
                let list = ctx.runtime(list);
                super::fill(
                    ctx,
                    (remote, Some(puller)),
                    id,
                    plan,
                    &list,
                    &stage,
                    watched,
                )
            };
            let (names, rest) = pool::both(
                || fill(&names_plan, "rebuild-names.files"),
                || fill(&rest_plan, "rebuild.files"),
            );
            let refused = names.and_then(|mut names| {
                names.extend(rest?);
                Ok(names)
            });
            pull.end(refused.as_ref().is_ok_and(Vec::is_empty));
            refused
        },
    );
    let outcome = match (pulled, copied) {
        (Err(e), _) => Err(e),
        (Ok(refused), _) if !refused.is_empty() => Ok(Rebuilt::Unreadable(refused)),
        (Ok(_), Err(e)) => Err(e),
        // The copy stops early only where the pull did.
        (Ok(_), Ok(None)) => Err(Error::new(Kind::Tool, "the copy out of the stage stopped")),
        (Ok(_), Ok(Some((mount, copied)))) => {
            stage.mount = Some(mount);
            stage.copied = Some(copied);
            return Ok(Rebuilt::Stage(stage));
        }
    };
    empty_out(copy.to);
    outcome
}

/// Whether copying out while the pull goes on pays for a tree: not for
/// many small files. Their copy is per-file work through gocryptfs (FUSE
/// calls, on the same CPUs as the pull's ssh and file writes) and far the
/// longer half, so running it beside the pull adds more than it hides:
/// SMALL (200,000 files of 2 KB on average) at 20 ms over SFTP, on the
/// 2-CPU benchmark machine, took 57.4 s streamed against 47.4 s after the
/// pull, while S (2,000 files, 70 KB on average) went from 4.55 s to
/// 3.73 s (bench/analysis.md, stop 28).
pub(super) fn worth_it(entries: &[TreeEntry]) -> bool {
    let files = entries.iter().filter(|e| e.kind == 'f');
    let (count, bytes) = files.fold((0u64, 0u64), |(n, b), e| (n + 1, b.saturating_add(e.size)));
    let many_small = count >= MANY_FILES && bytes / count.max(1) < SMALL_FILE;
    !many_small
}

/// "Many small files" (`worth_it`): SMALL is 200,000 files of 2 KB on
/// average; S and M are 2,000 and 20,000 files of 70 KB.
const MANY_FILES: u64 = 50_000;
const SMALL_FILE: u64 = 16 * 1024;

/// Each source's entries.
type Plan<'r> = BTreeMap<Option<&'r str>, Vec<&'r TreeEntry>>;

/// `plan` cut in two: the names, and the rest in the order of the parts,
/// which an SFTP fetch keeps (a record lists a directory's own files
/// among its subdirectories' in path order). The parts take whole
/// directories in record order, so the order of each entry's directory
/// in the record is the order of the parts.
fn split_plan<'r>(
    plan: &Plan<'r>,
    names: &HashSet<&str>,
    record: &[TreeEntry],
) -> (Plan<'r>, Plan<'r>) {
    let dirs = record
        .iter()
        .filter(|e| e.kind == 'd')
        .map(|e| e.path.as_str());
    let rank: HashMap<&str, usize> = std::iter::once("").chain(dirs).zip(0..).collect();
    let (mut first, mut rest) = (Plan::new(), Plan::new());
    for (from, entries) in plan {
        let (a, mut b): (Vec<&TreeEntry>, Vec<&TreeEntry>) = entries
            .iter()
            .partition(|e| names.contains(e.path.as_str()));
        b.sort_by_key(|e| rank.get(parent_of(&e.path)).copied().unwrap_or(usize::MAX));
        if !a.is_empty() {
            first.insert(*from, a);
        }
        if !b.is_empty() {
            rest.insert(*from, b);
        }
    }
    (first, rest)
}

/// The copy side of `fill_and_copy`.
struct Streamed<'a> {
    ctx: &'a Context<'a>,
    run: &'a RunRecord,
    stage: &'a Path,
    copy: &'a Copy<'a>,
    /// Where the stage is mounted decrypted, and its control socket.
    plain: &'a Path,
    ctlsock: &'a Path,
    pull: &'a Pull,
}

impl Streamed<'_> {
    /// Steps 2 to 4 of the module, beside the pull: the stage's mount and
    /// what was copied, or None where the pull stopped.
    fn copy_out(
        &self,
        cut: &Parts<'_>,
        workers: usize,
    ) -> Result<Option<(crate::mount::Mount, Copied)>> {
        let (id, entries) = (self.run.id.as_str(), &self.run.record.entries);
        let job = self.ctx.job;
        crate::mount::prepare_point(self.plain)?;
        let mount = crypt::mount_forward_with(job, self.stage, self.plain, Some(self.ctlsock))?;
        // gocryptfs reads the names as files: each checked to be one.
        if !wait_whole(self.stage, &cut.names, self.pull)? {
            return Ok(None);
        }
        for name in &cut.names {
            super::check_staged_type(id, self.stage, &name.path, 'f')?;
        }
        let decryptor = PathDecryptor::new(self.ctlsock);
        let plain_dirs = plain_dirs(entries, &decryptor)?;
        let listed: HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        let stream = Stream {
            copy: self.copy,
            id,
            stage: self.stage,
            plain: self.plain,
            plain_dirs: &plain_dirs,
            listed: &listed,
            pull: self.pull,
            linked: Mutex::default(),
        };
        let mut copied = stream.make_directories()?;
        copied.add(stream.parts(&cut.parts, workers)?);
        // Nothing may arrive after the final check.
        if !wait_over(self.pull)? {
            return Ok(None);
        }
        super::check_staged_types(id, self.stage, entries)?;
        super::check_nothing_unlisted(id, self.stage, &listed)?;
        stream.relink(&decryptor)?;
        stream.finish_directories(entries)?;
        Ok(Some((mount, copied)))
    }
}

/// Parts per copy worker: enough that the last part to arrive is a small
/// share of the copy, few enough that each rsync has work for its start.
const PARTS_PER_WORKER: usize = 4;

/// How often a part not yet whole is looked at again.
const POLL: Duration = Duration::from_millis(5);

/// What the pull brings first, and the rest in parts.
pub(super) struct Parts<'r> {
    /// The files gocryptfs reads to decrypt names.
    pub names: Vec<&'r TreeEntry>,
    pub parts: Vec<Part<'r>>,
}

/// Directories copied together, and the entries to wait for.
#[derive(Default)]
pub(super) struct Part<'r> {
    /// Paths in the record ("" is the top).
    pub dirs: Vec<&'r str>,
    /// The dirs' own entries other than directories and names.
    pub entries: Vec<&'r TreeEntry>,
}

/// A file gocryptfs reads to decrypt the names of its directory.
fn is_name_file(entry: &TreeEntry) -> bool {
    let name = entry.path.rsplit('/').next().unwrap_or_default();
    entry.kind == 'f'
        && (name == "gocryptfs.diriv"
            || name == "gocryptfs.conf"
            || (name.starts_with("gocryptfs.longname.") && name.ends_with(".name")))
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// Cuts a checked record (`check_record_tree`) into the names and about
/// `count` parts of similar cost (bytes plus `split::PER_FILE_COST` a
/// file), directories in record order, each whole in one part.
pub(super) fn parts(entries: &[TreeEntry], count: usize) -> Parts<'_> {
    let mut names = Vec::new();
    let mut own: HashMap<&str, Vec<&TreeEntry>> = HashMap::new();
    for entry in entries.iter().filter(|e| e.kind != 'd') {
        match is_name_file(entry) {
            true => names.push(entry),
            false => own.entry(parent_of(&entry.path)).or_default().push(entry),
        }
    }
    let cost = |e: &TreeEntry| e.size.saturating_add(split::PER_FILE_COST);
    let total = own
        .values()
        .flatten()
        .map(|e| cost(e))
        .fold(0, u64::saturating_add);
    let share = total.div_ceil(count.max(1) as u64).max(1);
    let dirs = std::iter::once("").chain(
        entries
            .iter()
            .filter(|e| e.kind == 'd')
            .map(|e| e.path.as_str()),
    );
    let mut parts = Vec::new();
    let mut part = Part::default();
    let mut part_cost = 0u64;
    for dir in dirs {
        let Some(files) = own.remove(dir) else {
            continue;
        };
        let dir_cost = files.iter().map(|e| cost(e)).fold(0, u64::saturating_add);
        // A directory of a share or more is a part of its own: the smaller
        // ones before it need not wait for it.
        if dir_cost >= share && !part.dirs.is_empty() {
            parts.push(std::mem::take(&mut part));
            part_cost = 0;
        }
        part_cost = part_cost.saturating_add(dir_cost);
        part.dirs.push(dir);
        part.entries.extend(files);
        if part_cost >= share {
            parts.push(std::mem::take(&mut part));
            part_cost = 0;
        }
    }
    if !part.dirs.is_empty() {
        parts.push(part);
    }
    Parts { names, parts }
}

pub(super) fn part_count(workers: usize) -> usize {
    workers.max(1) * PARTS_PER_WORKER
}

/// Where the pull stands, for the parts waiting on it.
pub(super) struct Pull(AtomicU8);

impl Default for Pull {
    fn default() -> Pull {
        Pull(AtomicU8::new(PULLING))
    }
}

const PULLING: u8 = 0;
const PULLED: u8 = 1;
const STOPPED: u8 = 2;

impl Pull {
    /// The pull ended: whole, or with an error or a refusal (then no part
    /// is waited for any more).
    pub fn end(&self, whole: bool) {
        self.0.store(if whole { PULLED } else { STOPPED }, SeqCst);
    }

    fn state(&self) -> u8 {
        self.0.load(SeqCst)
    }
}

/// What the copy of the parts needs of the stage.
pub(super) struct Stream<'a, 'r> {
    pub copy: &'a Copy<'a>,
    pub id: &'a str,
    pub stage: &'a Path,
    pub plain: &'a Path,
    /// The record's directories' plaintext paths (`plain_dirs`).
    pub plain_dirs: &'a HashMap<&'r str, PathBuf>,
    pub listed: &'a HashSet<&'r str>,
    pub pull: &'a Pull,
    /// The stage's files with other names, by (device, inode): parts copy
    /// them apart, `relink` joins them again in `--to`.
    pub linked: Mutex<HashMap<(u64, u64), Vec<&'r str>>>,
}

/// The plaintext path of each directory of the record, asked of the
/// stage's mount through its control socket (the names are there first).
pub(super) fn plain_dirs<'r>(
    entries: &'r [TreeEntry],
    decryptor: &crate::crypt::PathDecryptor,
) -> Result<HashMap<&'r str, PathBuf>> {
    let mut plain = HashMap::from([("", PathBuf::new())]);
    for dir in entries.iter().filter(|e| e.kind == 'd') {
        let Some(name) = decryptor.decrypt(&dir.path) else {
            return Err(Error::new(
                Kind::Corrupt,
                format!(
                    "the backup's directory {:?} has a name that does not decrypt",
                    crate::human::escape(&dir.path)
                ),
            ));
        };
        plain.insert(dir.path.as_str(), PathBuf::from(name));
    }
    Ok(plain)
}

impl<'r> Stream<'_, 'r> {
    /// Phase 1 of split.rs: every directory of the record.
    pub fn make_directories(&self) -> Result<Copied> {
        let mut dirs: Vec<&Path> = self
            .plain_dirs
            .values()
            .map(PathBuf::as_path)
            .filter(|d| !d.as_os_str().is_empty())
            .collect();
        dirs.sort();
        let list = split::write_list(
            &self.copy.job.state_dir,
            dirs.iter()
                .map(|d| d.as_os_str().as_encoded_bytes().to_vec()),
        )?;
        let args = split::directories_pass(true)
            .into_iter()
            .chain([format!("{}/", self.plain.display())])
            .collect();
        self.copy.pass(args, Some(list), false)
    }

    /// Hard links: the pull keeps them in the stage (rsync `-H`), but the
    /// parts copy the names of one file apart, so each name after the
    /// first becomes a link to the first in `--to` again, as one rsync
    /// `-H` over the whole tree would have made it.
    fn relink(&self, decryptor: &PathDecryptor) -> Result<()> {
        let linked = std::mem::take(&mut *self.linked.lock().unwrap_or_else(|e| e.into_inner()));
        let mut groups: Vec<Vec<&str>> = linked.into_values().filter(|g| g.len() > 1).collect();
        groups.sort();
        crate::log::debug(|| format!("restore: {} hard-linked file(s) linked again", groups.len()));
        for mut names in groups {
            names.sort();
            let plain = names
                .iter()
                .map(|name| {
                    decryptor.decrypt(name).ok_or_else(|| {
                        Error::new(
                            Kind::Corrupt,
                            format!(
                                "the backup's file {:?} has a name that does not decrypt",
                                crate::human::escape(name)
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<String>>>()?;
            for other in &plain[1..] {
                crate::fsutil::relink_below(self.copy.to, &plain[0], other)?;
            }
        }
        Ok(())
    }

    /// Phase 3 of split.rs, without rsync: each directory in `--to` gets
    /// its mode (the record's; the top's from the stage) and mtime (the
    /// stage's, which the pull set), deepest first, the top last. Read
    /// from the stage itself, not through the mount: the kernel keeps
    /// what a mount said of a directory for a second, and these were set
    /// since. Every directory of the stage was just checked.
    fn finish_directories(&self, entries: &[TreeEntry]) -> Result<()> {
        let top = self
            .stage
            .symlink_metadata()
            .ctx(|| format!("reading {}", self.stage.display()))?;
        let mut dirs: Vec<(&str, u32)> = entries
            .iter()
            .filter(|e| e.kind == 'd')
            .map(|e| (e.path.as_str(), e.mode & 0o777))
            .collect();
        dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.matches('/').count()));
        dirs.push(("", top.mode() & 0o777));
        for (dir, mode) in dirs {
            let staged = self.stage.join(dir);
            let meta = staged
                .symlink_metadata()
                .ctx(|| format!("reading {}", staged.display()))?;
            let plain = self.plain_dirs[dir].to_string_lossy();
            let mtime = (meta.mtime(), meta.mtime_nsec());
            crate::fsutil::set_dir_mode_and_mtime(self.copy.to, &plain, mode, mtime)?;
        }
        Ok(())
    }

    /// Copies the parts with `workers` rsyncs, each part once it is whole
    /// and checked. Ends early, without error, where the pull stopped.
    pub fn parts(&self, parts: &[Part<'r>], workers: usize) -> Result<Copied> {
        let ready = Ready {
            stream: self,
            parts: parts.iter(),
            stopped: false,
        };
        let whole = format!("{}/", self.plain.display());
        let copied = crate::pool::map_unordered(ready, workers, |list: Result<File>| {
            let args = split::contents_pass()
                .into_iter()
                .chain([whole.clone()])
                .collect();
            self.copy.pass(args, Some(list?), true)
        })?;
        let mut all = Copied::default();
        for one in copied {
            all.add(one);
        }
        Ok(all)
    }

    /// The part's entries, the directories above them and the part's own
    /// directories checked as `check_staged_types` and `check_nothing_extra`
    /// check the whole stage; then its files get the record's modes and
    /// its symlinks their targets (restore.rs `rebuild` says why that
    /// cannot reach through a link), and its directories are listed for
    /// the copy.
    fn check(&self, part: &Part<'r>) -> Result<File> {
        let mut above: Vec<&str> = Vec::new();
        for dir in &part.dirs {
            let mut at = *dir;
            while !at.is_empty() {
                above.push(at);
                at = parent_of(at);
            }
        }
        above.sort_by_key(|d| (d.matches('/').count(), *d));
        above.dedup();
        for dir in above {
            super::check_staged_type(self.id, self.stage, dir, 'd')?;
        }
        for entry in &part.entries {
            let meta = super::check_staged_type(self.id, self.stage, &entry.path, entry.kind)?;
            if entry.kind == 'f' && meta.nlink() > 1 {
                let mut linked = self.linked.lock().unwrap_or_else(|e| e.into_inner());
                linked
                    .entry((meta.dev(), meta.ino()))
                    .or_default()
                    .push(&entry.path);
            }
        }
        for dir in &part.dirs {
            self.check_nothing_extra_in(dir)?;
        }
        for entry in &part.entries {
            let path = self.stage.join(&entry.path);
            match entry.kind {
                'f' => std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(entry.mode & 0o777),
                )
                .ctx(|| format!("setting the mode of {}", path.display()))?,
                'l' if is_pulled_symlink(entry) => target::unmunge(&path)?,
                _ => {}
            }
        }
        let entries = part
            .dirs
            .iter()
            .map(|dir| split::contents_entry(&self.plain_dirs[dir]));
        split::write_list(&self.copy.job.state_dir, entries)
    }

    fn check_nothing_extra_in(&self, dir: &str) -> Result<()> {
        let path = self.stage.join(dir);
        for entry in std::fs::read_dir(&path).ctx(|| format!("reading {}", path.display()))? {
            let entry = entry.ctx(|| format!("reading {}", path.display()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let rel = match dir {
                "" => name.to_string(),
                _ => format!("{dir}/{name}"),
            };
            if !self.listed.contains(rel.as_str()) {
                return Err(super::sent_unlisted(self.id, &rel));
            }
        }
        Ok(())
    }
}

/// The parts' lists, each given out once its part is whole and checked;
/// `pool::fold` takes them one at a time, so the checks run in order while
/// the copies of earlier parts go on.
struct Ready<'s, 'a, 'r> {
    stream: &'s Stream<'a, 'r>,
    parts: std::slice::Iter<'s, Part<'r>>,
    stopped: bool,
}

impl Iterator for Ready<'_, '_, '_> {
    type Item = Result<File>;

    fn next(&mut self) -> Option<Result<File>> {
        if self.stopped {
            return None;
        }
        let part = self.parts.next()?;
        let ready = match wait_whole(self.stream.stage, &part.entries, self.stream.pull) {
            Ok(true) => self.stream.check(part),
            Ok(false) => {
                self.stopped = true;
                return None;
            }
            Err(e) => Err(e),
        };
        self.stopped = ready.is_err();
        Some(ready)
    }
}

/// Waits until every one of `entries` has its name in `stage`; false
/// where the pull stopped first. A symlink the pull brings counts only
/// once the pull is over: rsync makes it under its name and then sets its
/// times, and the part's unmunging (remove, make again) must not come in
/// between (rsync failed with "stat ... failed" when it did).
fn wait_whole(stage: &Path, entries: &[&TreeEntry], pull: &Pull) -> Result<bool> {
    let mut arrived = 0;
    loop {
        let state = pull.state();
        while arrived < entries.len()
            && !is_pulled_symlink(entries[arrived])
            && stage
                .join(&entries[arrived].path)
                .symlink_metadata()
                .is_ok()
        {
            arrived += 1;
        }
        match state {
            _ if arrived == entries.len() => return Ok(true),
            // What is missing, the checks name.
            PULLED => return Ok(true),
            STOPPED => return Ok(false),
            _ => {}
        }
        crate::interrupt::check()?;
        std::thread::sleep(POLL);
    }
}

/// A symlink the server kept, which the pull brings munged (the record's
/// own are made before the pull).
fn is_pulled_symlink(entry: &TreeEntry) -> bool {
    entry.kind == 'l' && entry.link.is_none()
}

/// Waits until the pull is over; false where it stopped.
fn wait_over(pull: &Pull) -> Result<bool> {
    loop {
        match pull.state() {
            PULLED => return Ok(true),
            STOPPED => return Ok(false),
            _ => {}
        }
        crate::interrupt::check()?;
        std::thread::sleep(POLL);
    }
}

/// Empties `to` (ours alone, empty before the restore) of what a restore
/// stopped midway copied: a refused restore leaves nothing behind.
pub(super) fn empty_out(to: &Path) {
    super::make_writable(to);
    if let Ok(entries) = std::fs::read_dir(to) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = match entry.file_type().is_ok_and(|t| t.is_dir()) {
                true => std::fs::remove_dir_all(&path),
                false => std::fs::remove_file(&path),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: char, path: &str, size: u64) -> TreeEntry {
        TreeEntry {
            kind,
            mode: 0o644,
            size,
            path: path.to_string(),
            link: None,
        }
    }

    #[test]
    fn names_come_first_and_each_directory_is_in_one_part() {
        let mb = 1 << 20;
        let record = vec![
            entry('f', "gocryptfs.conf", 400),
            entry('f', "gocryptfs.diriv", 16),
            entry('f', "top", mb),
            entry('d', "a", 0),
            entry('f', "a/gocryptfs.diriv", 16),
            entry('f', "a/gocryptfs.longname.xyz", mb),
            entry('f', "a/gocryptfs.longname.xyz.name", 300),
            entry('f', "a/one", mb),
            entry('d', "a/b", 0),
            entry('f', "a/b/gocryptfs.diriv", 16),
            entry('f', "a/b/two", 3 * mb),
            entry('l', "a/b/link", 40),
            entry('d', "empty", 0),
            entry('f', "empty/gocryptfs.diriv", 16),
        ];
        let cut = parts(&record, 3);
        let names: Vec<&str> = cut.names.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "gocryptfs.conf",
                "gocryptfs.diriv",
                "a/gocryptfs.diriv",
                "a/gocryptfs.longname.xyz.name",
                "a/b/gocryptfs.diriv",
                "empty/gocryptfs.diriv"
            ]
        );
        let dirs: Vec<Vec<&str>> = cut.parts.iter().map(|p| p.dirs.clone()).collect();
        // About 6.6 MB in 3 shares of 2.2 MB: the top's 1.1 MB waits for
        // more, but a's 2.3 MB and a/b's 3.1 MB are a share or more each,
        // so each is a part of its own; an empty directory is in none.
        assert_eq!(dirs, [vec![""], vec!["a"], vec!["a/b"]]);
        let paths = |i: usize| -> Vec<&str> {
            cut.parts[i]
                .entries
                .iter()
                .map(|e| e.path.as_str())
                .collect()
        };
        assert_eq!(paths(0), ["top"]);
        assert_eq!(paths(1), ["a/gocryptfs.longname.xyz", "a/one"]);
        assert_eq!(paths(2), ["a/b/two", "a/b/link"]);
    }

    #[test]
    fn small_directories_share_a_part_until_it_holds_a_share() {
        let record: Vec<TreeEntry> = (0..10)
            .flat_map(|d| {
                let dir = format!("d{d}");
                [entry('d', &dir, 0), entry('f', &format!("{dir}/f"), 1000)]
            })
            .collect();
        let cut = parts(&record, 2);
        let dirs: Vec<Vec<&str>> = cut.parts.iter().map(|p| p.dirs.clone()).collect();
        assert_eq!(
            dirs,
            [
                vec!["d0", "d1", "d2", "d3", "d4"],
                vec!["d5", "d6", "d7", "d8", "d9"]
            ]
        );
    }

    #[test]
    fn many_small_files_are_copied_after_the_pull() {
        let tree = |files: usize, size: u64| -> Vec<TreeEntry> {
            (0..files)
                .map(|i| entry('f', &format!("f{i}"), size))
                .collect()
        };
        assert!(!worth_it(&tree(200_000, 2_000)), "SMALL");
        assert!(worth_it(&tree(2_000, 70_000)), "S");
        assert!(worth_it(&tree(20_000, 70_000)), "M");
        assert!(worth_it(&tree(100, 10)), "a few small files");
        assert!(worth_it(&tree(60_000, 40_000)), "many larger files");
    }

    #[test]
    fn a_tree_of_names_alone_has_no_part() {
        let record = vec![entry('f', "gocryptfs.diriv", 16), entry('d', "d", 0)];
        let cut = parts(&record, 8);
        assert_eq!(cut.names.len(), 1);
        assert!(cut.parts.is_empty());
    }
}
