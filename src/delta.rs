//! What a backup through sshfs must change in files/, found before rsync
//! runs: the encrypted view against a listing of files/ taken over SFTP.
//!
//! rsync through sshfs finds the same by reading every directory on both
//! sides and stat'ing every file, waiting a round trip for each through
//! the mount: at a 20 ms round trip most of a backup that changed 1 % of
//! the files (bench/analysis.md, "Issue 14: the change set"). One SFTP
//! listing with many READDIRs in flight (sftp.rs) costs a few round trips
//! per level of the tree, and the view is local. rsync then gets only the
//! paths that differ, as `--files-from` lists, and still decides itself
//! how to send each listed file; this module only saves it the walk.
//!
//! Each path has an `Action` that says who keeps its old version in the
//! run's snapshot dir: nobody (a new file, a mode change), the SFTP pass
//! before rsync (target::keep_in_snapshot: a replaced file is linked
//! there, a deleted entry moved there, many at once; rsync then runs
//! without `--backup` for them), or rsync with `--backup` as always (a
//! type that changes, a symlink, and whatever the SFTP pass could not
//! keep; a listed path the view lacks is then deleted with
//! `--delete-missing-args`, into the snapshot as `--delete` would).
//!
//! The comparison is rsync's quick check for `-a` through sshfs: the type;
//! for a regular file the size and the mtime in whole seconds (SFTP carries
//! no more, and rsync compares no more by default); the permission bits
//! where the target keeps modes. A symlink is always listed: SFTP's listing
//! does not show its target, rsync compares it with one readlink.
//!
//! Directories:
//! - `make_dirs`: those the view has and files/ lacks (or holds as a file
//!   or symlink, which rsync moves into the snapshot), and those whose
//!   entries change but which files/ holds without owner write: made (or
//!   made owner-writable) before the workers, parents first.
//! - `fix_dirs`: those, and every directory whose entries change or whose
//!   mode or mtime differs: their real modes and times, after the workers.
//!
//! Nothing here trusts the listing for more than what to ask rsync to look
//! at: names are plain names (sftp.rs checks them), and a name the server
//! invents only makes rsync delete that entry of files/ on the server,
//! through the pinned mount, into the snapshot.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, IoContext, Kind, Result};
use crate::split::{self, Balancer};
use crate::target::{NotKept, RemoteEntry, RemoteTree};
use crate::{interrupt, pool};

/// What the target keeps, as rsync's options say (rsync.rs).
#[derive(Debug, Clone, Copy)]
pub struct Keeps {
    pub symlinks: bool,
    pub modes: bool,
    /// `/gocryptfs.conf` in files/ is ours, not the view's: never deleted.
    pub protected_config: bool,
}

/// The paths that differ, relative to the view and to files/.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Sorted by path.
    pub entries: Vec<Change>,
    /// Sorted, so parents come first.
    pub make_dirs: BTreeSet<String>,
    /// Sorted; "" is the top.
    pub fix_dirs: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub path: String,
    pub action: Action,
    /// For the balancer: bytes plus `split::PER_FILE_COST`.
    pub cost: u64,
    /// The user's files this takes out of files/ (a deleted directory's
    /// as the listing shows them): what rsync's count of deletions would
    /// have said.
    pub deletes: u64,
}

/// What becomes of a path, and so who keeps its old version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// A regular file files/ lacks: nothing to keep.
    New,
    /// A symlink files/ lacks, or a file whose mode alone changes (rsync
    /// sets it in place): nothing to keep.
    Send,
    /// A regular file whose content may have changed: its old version is
    /// linked into the snapshot first (target::keep_in_snapshot).
    Replace,
    /// An entry the view lacks: moved into the snapshot.
    Delete,
    /// Anything else (a type that changes, a symlink that may): rsync
    /// keeps the old one with `--backup`.
    Backed,
}

impl Changes {
    /// Paths whose old versions a run keeps over SFTP: (moves, links).
    pub fn to_keep(&self) -> (Vec<String>, Vec<String>) {
        let of = |action| {
            self.entries
                .iter()
                .filter(|c| c.action == action)
                .map(|c| c.path.clone())
                .collect()
        };
        (of(Action::Delete), of(Action::Replace))
    }

    /// The regular files the SFTP pass may send itself
    /// (target::upload_changes), each with whether it replaces a file whose
    /// old version is kept: every new one, and the replaced ones in
    /// `not_kept` left out.
    pub fn to_upload(&self, not_kept: &NotKept) -> Vec<(String, bool)> {
        let left: HashSet<&str> = not_kept.links.iter().map(String::as_str).collect();
        self.entries
            .iter()
            .filter_map(|c| match c.action {
                Action::New => Some((c.path.clone(), false)),
                Action::Replace if !left.contains(c.path.as_str()) => Some((c.path.clone(), true)),
                _ => None,
            })
            .collect()
    }

    /// Nothing at all to do.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.make_dirs.is_empty() && self.fix_dirs.is_empty()
    }

    /// Phase 1's list (`split::directories_pass(true)`), if it has any.
    pub fn make_dirs_list(&self, scratch_dir: &Path) -> Result<Option<File>> {
        if self.make_dirs.is_empty() {
            return Ok(None);
        }
        let dirs = self.make_dirs.iter().map(|d| d.as_bytes().to_vec());
        split::write_list(scratch_dir, dirs).map(Some)
    }

    /// Writes the rsync lists into scratch files in `scratch_dir`, at most
    /// `workers` per phase and kind. The deletions and replacements in
    /// `not_kept` go to rsync with `--backup`; the other deletions are
    /// done, the other replacements need none; what the SFTP pass sent
    /// (`uploaded`) is left out.
    pub fn lists(
        &self,
        not_kept: &NotKept,
        uploaded: &HashSet<String>,
        workers: usize,
        scratch_dir: &Path,
    ) -> Result<ChangePlan> {
        let backed_too: HashSet<&str> = not_kept
            .moves
            .iter()
            .chain(&not_kept.links)
            .map(String::as_str)
            .collect();
        let mut plain = Vec::new();
        let mut backed = Vec::new();
        for change in &self.entries {
            match change.action {
                Action::Backed => backed.push(change),
                _ if backed_too.contains(change.path.as_str()) => backed.push(change),
                Action::Delete => {}
                _ if uploaded.contains(&change.path) => {}
                Action::New | Action::Send | Action::Replace => plain.push(change),
            }
        }
        Ok(ChangePlan {
            plain: balanced(&plain, workers, scratch_dir)?,
            backed: balanced(&backed, workers, scratch_dir)?,
        })
    }

    /// The directories whose modes and times are to be set (`fix_dirs`),
    /// deepest first, each with the view's mode and mtime; one the view no
    /// longer has is left out (the next run sees it).
    pub fn dir_attrs(&self, view: &Path) -> Vec<DirAttrs> {
        let mut dirs: Vec<DirAttrs> = self
            .fix_dirs
            .iter()
            .filter_map(|dir| {
                let meta = std::fs::symlink_metadata(view.join(dir)).ok()?;
                meta.is_dir().then(|| DirAttrs {
                    path: dir.clone(),
                    mode: meta.permissions().mode() & 0o7777,
                    mtime: meta.mtime(),
                })
            })
            .collect();
        dirs.sort_by_key(|d| {
            std::cmp::Reverse(d.path.matches('/').count() + usize::from(!d.path.is_empty()))
        });
        dirs
    }
}

/// A directory's mode and mtime in the view, to be given to its copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirAttrs {
    /// Relative to files/; "" is files/ itself.
    pub path: String,
    pub mode: u32,
    pub mtime: i64,
}

/// Phase 3's lists (`split::directories_pass(false)`) for `dirs`, at most
/// `workers`: each directory is named alone, so they may go side by side.
pub fn fix_dirs_lists(
    dirs: &BTreeSet<String>,
    workers: usize,
    scratch_dir: &Path,
) -> Result<Vec<File>> {
    deal(dirs, workers)
        .into_iter()
        .map(|dirs| {
            let names = dirs.into_iter().map(|d| match d.is_empty() {
                true => b".".to_vec(),
                false => d.as_bytes().to_vec(),
            });
            split::write_list(scratch_dir, names)
        })
        .collect()
}

/// `changes` in at most `workers` lists of about equal cost.
fn balanced(changes: &[&Change], workers: usize, scratch_dir: &Path) -> Result<Vec<File>> {
    let mut balancer = Balancer::new(workers);
    for change in changes {
        let unit = balancer.add_unit();
        balancer.add_cost(unit, change.cost);
    }
    balancer
        .assign()
        .into_iter()
        .map(|units| {
            let paths = units
                .into_iter()
                .map(|u| changes[u].path.as_bytes().to_vec());
            split::write_list(scratch_dir, paths)
        })
        .collect()
}

/// The rsync lists of phase 2 of a change set.
pub struct ChangePlan {
    /// Without `--backup`: nothing to keep, or kept already.
    pub plain: Vec<File>,
    /// With `--backup` (`changes_pass`).
    pub backed: Vec<File>,
}

/// Directories per phase-3 list at least: below that, another rsync costs
/// more than the round trips it saves.
const DIRS_PER_LIST: usize = 8;

/// `dirs` dealt round-robin into at most `lists` lists of at least
/// `DIRS_PER_LIST` (one list when there are fewer).
fn deal(dirs: &BTreeSet<String>, lists: usize) -> Vec<Vec<&str>> {
    let lists = (dirs.len() / DIRS_PER_LIST).clamp(1, lists.max(1));
    let mut out = vec![Vec::new(); lists];
    for (i, dir) in dirs.iter().enumerate() {
        out[i % lists].push(dir.as_str());
    }
    out.retain(|l| !l.is_empty());
    out
}

/// The change set of `view` against `remote`: level by level, the
/// directories of a level read and compared on `threads` threads.
pub fn compare(view: &Path, remote: &RemoteTree, keeps: Keeps, threads: usize) -> Result<Changes> {
    let mut changes = Changes::default();
    let mut read_only = Vec::new();
    let mut level = vec![String::new()];
    while !level.is_empty() {
        interrupt::check()?;
        let done = pool::map_unordered(level, threads, |dir| {
            let listed = list_view_dir(view, &dir)?;
            Ok(compare_dir(&dir, listed, remote, keeps))
        })?;
        level = Vec::new();
        for dir in done {
            level.extend(dir.subdirs);
            changes.entries.extend(dir.entries);
            changes.make_dirs.extend(dir.make_dirs);
            changes.fix_dirs.extend(dir.fix_dirs);
            read_only.extend(dir.read_only);
        }
    }
    // A directory files/ holds read-only is made writable for the workers
    // only when they write into it.
    for dir in read_only {
        if changes.fix_dirs.contains(&dir) {
            changes.make_dirs.insert(dir);
        }
    }
    changes.entries.sort();
    Ok(changes)
}

/// An entry of the view, as rsync `-a` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ViewEntry {
    name: String,
    kind: EntryType,
    perms: u32,
    size: u64,
    mtime: i64,
}

/// The types rsync handles here; the rest (devices, fifos, sockets) it
/// skips (`--no-specials --no-devices`), and so do we.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryType {
    Dir,
    File,
    Symlink,
    Other,
}

fn list_view_dir(view: &Path, dir: &str) -> Result<Vec<ViewEntry>> {
    let path = view.join(dir);
    let reading = || format!("reading {}", path.display());
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(&path).ctx(reading)? {
        let entry = entry.ctx(reading)?;
        let name = entry.file_name().into_string().map_err(|name| {
            Error::new(
                Kind::Io,
                format!(
                    "the view holds a name that is not UTF-8: {}",
                    crate::human::escape(&name.to_string_lossy())
                ),
            )
        })?;
        let meta = entry.metadata().ctx(reading)?;
        let kind = match meta.file_type() {
            t if t.is_dir() => EntryType::Dir,
            t if t.is_file() => EntryType::File,
            t if t.is_symlink() => EntryType::Symlink,
            _ => EntryType::Other,
        };
        entries.push(ViewEntry {
            name,
            kind,
            perms: meta.permissions().mode() & 0o7777,
            size: meta.len(),
            mtime: meta.mtime(),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// What one directory adds to the change set.
#[derive(Debug, Default)]
struct DirChanges {
    subdirs: Vec<String>,
    entries: Vec<Change>,
    make_dirs: Vec<String>,
    fix_dirs: Vec<String>,
    /// Subdirectories that files/ holds without owner write.
    read_only: Vec<String>,
}

/// One directory of the view (`dir`, "" the top; its entries sorted by
/// name) against the same directory of files/, if the listing has it.
fn compare_dir(dir: &str, view: Vec<ViewEntry>, remote: &RemoteTree, keeps: Keeps) -> DirChanges {
    let mut by_name: HashMap<&str, Vec<&RemoteEntry>> = HashMap::new();
    for r in remote.dirs.get(dir).into_iter().flatten() {
        by_name.entry(&r.name).or_default().push(r);
    }
    let mut out = DirChanges::default();
    let path = |name: &str| match dir.is_empty() {
        true => name.to_string(),
        false => format!("{dir}/{name}"),
    };
    let mut entries_change = false;
    for v in &view {
        let there = by_name.get(v.name.as_str()).map(Vec::as_slice);
        // A server that lists a name twice gets it sent again, and rsync
        // keeps whatever is there.
        let (there, doubled) = match there {
            Some([one]) => (Some(*one), false),
            Some(_) => (None, true),
            None => (None, false),
        };
        let rel = path(&v.name);
        match v.kind {
            EntryType::Other => {}
            EntryType::Symlink if !keeps.symlinks => {}
            EntryType::Dir => {
                match there {
                    Some(r) if r.is_dir() => {
                        if dir_attrs_differ(v, r, keeps) {
                            out.fix_dirs.push(rel.clone());
                        }
                        if r.mode & 0o200 == 0 {
                            out.read_only.push(rel.clone());
                        }
                    }
                    _ => {
                        entries_change = true;
                        out.make_dirs.push(rel.clone());
                        out.fix_dirs.push(rel.clone());
                    }
                }
                out.subdirs.push(rel);
            }
            EntryType::File | EntryType::Symlink => {
                let action = match (v.kind, there, doubled) {
                    (_, _, true) => Some(Action::Backed),
                    (EntryType::File, None, false) => Some(Action::New),
                    (_, None, false) => Some(Action::Send),
                    (EntryType::File, Some(r), false) if r.is_file() => file_action(v, r, keeps),
                    _ => Some(Action::Backed),
                };
                if let Some(action) = action {
                    entries_change = true;
                    out.entries.push(Change {
                        path: rel,
                        action,
                        cost: v.size.saturating_add(split::PER_FILE_COST),
                        deletes: 0,
                    });
                }
            }
        }
    }
    let in_view: HashSet<&str> = view.iter().map(|v| v.name.as_str()).collect();
    let mut gone: Vec<&str> = by_name
        .keys()
        .copied()
        .filter(|name| !in_view.contains(name))
        .filter(|name| {
            !(dir.is_empty() && *name == crate::crypt::REMOTE_CONFIG_NAME && keeps.protected_config)
        })
        .collect();
    gone.sort_unstable();
    for name in gone {
        entries_change = true;
        let rel = path(name);
        let deletes = match by_name[name].iter().any(|r| r.is_dir()) {
            true => user_files_below(remote, &rel),
            false => u64::from(!crate::crypt::is_gocryptfs_metadata(&rel)),
        };
        out.entries.push(Change {
            path: rel,
            action: Action::Delete,
            cost: split::PER_FILE_COST,
            deletes,
        });
    }
    if entries_change {
        out.fix_dirs.push(dir.to_string());
    }
    out
}

/// rsync's quick check of a regular file against the one files/ holds:
/// None when they agree, `Send` when only the mode differs (rsync sets it
/// in place and keeps nothing), `Replace` when the content may differ.
fn file_action(v: &ViewEntry, r: &RemoteEntry, keeps: Keeps) -> Option<Action> {
    if r.size != v.size || i64::from(r.mtime) != v.mtime {
        return Some(Action::Replace);
    }
    (keeps.modes && r.mode & 0o7777 != v.perms).then_some(Action::Send)
}

/// The user's files below the directory `rel` in the listing (gocryptfs'
/// own files left out, as rsync's count of deletions does).
fn user_files_below(remote: &RemoteTree, rel: &str) -> u64 {
    let user = |path: &str| u64::from(!crate::crypt::is_gocryptfs_metadata(path));
    let Some(entries) = remote.dirs.get(rel) else {
        return 0;
    };
    let mut count = 0;
    let mut stack = vec![(rel.to_string(), entries)];
    while let Some((dir, entries)) = stack.pop() {
        for entry in entries {
            let path = format!("{dir}/{}", entry.name);
            match remote.dirs.get(&path) {
                Some(below) if entry.is_dir() => stack.push((path, below)),
                _ if entry.is_dir() => {}
                _ => count += user(&path),
            }
        }
    }
    count
}

fn dir_attrs_differ(v: &ViewEntry, r: &RemoteEntry, keeps: Keeps) -> bool {
    i64::from(r.mtime) != v.mtime || (keeps.modes && r.mode & 0o7777 != v.perms)
}

/// Phase 2's options: the paths a list names (on stdin), none deeper;
/// `--no-implied-dirs`: phase 1 made every parent. With `backup` (rsync
/// keeps what it replaces), a listed path the view lacks is deleted from
/// files/ into the snapshot dir, and `--force` lets a file replace a
/// directory; without, a path that vanished from the view is skipped.
pub fn changes_pass(backup: bool) -> Vec<String> {
    let last: &[&str] = match backup {
        true => &["--delete-missing-args", "--force"],
        false => &["--ignore-missing-args"],
    };
    ["--from0", "--files-from=-", "--no-implied-dirs"]
        .iter()
        .chain(last)
        .map(|o| o.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP_ALL: Keeps = Keeps {
        symlinks: true,
        modes: true,
        protected_config: true,
    };

    fn file(name: &str, size: u64, mtime: i64) -> ViewEntry {
        ViewEntry {
            name: name.into(),
            kind: EntryType::File,
            perms: 0o644,
            size,
            mtime,
        }
    }

    fn dir(name: &str, mtime: i64) -> ViewEntry {
        ViewEntry {
            name: name.into(),
            kind: EntryType::Dir,
            perms: 0o755,
            size: 4096,
            mtime,
        }
    }

    fn there(name: &str, mode: u32, size: u64, mtime: u32) -> RemoteEntry {
        RemoteEntry {
            name: name.into(),
            mode,
            size,
            mtime,
        }
    }

    /// A listing with `entries` in `dir`.
    fn listing(dir: &str, entries: Vec<RemoteEntry>) -> RemoteTree {
        let mut tree = RemoteTree::default();
        tree.dirs.insert(dir.to_string(), entries);
        tree
    }

    fn actions(out: &DirChanges) -> Vec<(&str, Action)> {
        out.entries
            .iter()
            .map(|c| (c.path.as_str(), c.action))
            .collect()
    }

    #[test]
    fn only_what_differs_is_listed_with_who_keeps_the_old_version() {
        let view = vec![
            file("same", 10, 100),
            file("bigger", 11, 100),
            file("newer", 10, 101),
            file("new", 5, 100),
            file("chmodded", 10, 100),
            file("was_link", 10, 100),
            dir("sub", 100),
        ];
        let remote = listing(
            "d",
            vec![
                there("same", 0o100644, 10, 100),
                there("bigger", 0o100644, 10, 100),
                there("newer", 0o100644, 10, 100),
                there("chmodded", 0o100600, 10, 100),
                there("was_link", 0o120777, 10, 100),
                there("gone", 0o100644, 1, 1),
                there("sub", 0o040755, 0, 100),
            ],
        );
        let out = compare_dir("d", view, &remote, KEEP_ALL);
        assert_eq!(
            actions(&out),
            [
                ("d/bigger", Action::Replace),
                ("d/newer", Action::Replace),
                ("d/new", Action::New),
                ("d/chmodded", Action::Send),
                ("d/was_link", Action::Backed),
                ("d/gone", Action::Delete),
            ]
        );
        assert_eq!(out.entries.last().unwrap().deletes, 1);
        assert_eq!(out.subdirs, ["d/sub"]);
        assert!(out.make_dirs.is_empty());
        assert_eq!(out.fix_dirs, ["d"]);
        // Without modes kept, a chmod alone is no change.
        let keep = Keeps {
            modes: false,
            ..KEEP_ALL
        };
        let remote = listing("", vec![there("chmodded", 0o100600, 10, 100)]);
        let out = compare_dir("", vec![file("chmodded", 10, 100)], &remote, keep);
        assert!(out.entries.is_empty() && out.fix_dirs.is_empty());
    }

    #[test]
    fn directories_are_made_replaced_and_fixed() {
        let view = vec![
            dir("new", 1),
            dir("was_file", 1),
            dir("touched", 2),
            dir("ro", 1),
        ];
        let remote = listing(
            "",
            vec![
                there("was_file", 0o100644, 3, 1),
                there("touched", 0o040755, 0, 1),
                there("ro", 0o040555, 0, 1),
            ],
        );
        let out = compare_dir("", view, &remote, KEEP_ALL);
        assert_eq!(out.make_dirs, ["new", "was_file"]);
        assert_eq!(out.subdirs, ["new", "was_file", "touched", "ro"]);
        assert_eq!(out.read_only, ["ro"]);
        // "ro" differs in mode, "touched" in mtime; "" because two entries
        // are new there.
        let fix: BTreeSet<&str> = out.fix_dirs.iter().map(String::as_str).collect();
        assert_eq!(
            fix,
            BTreeSet::from(["", "new", "was_file", "touched", "ro"])
        );
        assert!(out.entries.is_empty());
    }

    #[test]
    fn a_deleted_directory_is_one_move_counting_the_files_below() {
        let mut remote = listing("", vec![there("old", 0o040755, 0, 1)]);
        remote.dirs.insert(
            "old".into(),
            vec![
                there("a", 0o100644, 1, 1),
                there("gocryptfs.diriv", 0o100440, 16, 1),
                there("sub", 0o040755, 0, 1),
            ],
        );
        remote
            .dirs
            .insert("old/sub".into(), vec![there("b", 0o100644, 1, 1)]);
        let out = compare_dir("", vec![], &remote, KEEP_ALL);
        assert_eq!(actions(&out), [("old", Action::Delete)]);
        assert_eq!(out.entries[0].deletes, 2);
    }

    #[test]
    fn a_file_replacing_a_directory_is_backed_and_not_descended() {
        let remote = listing("", vec![there("x", 0o040755, 0, 1)]);
        let out = compare_dir("", vec![file("x", 1, 1)], &remote, KEEP_ALL);
        assert_eq!(actions(&out), [("x", Action::Backed)]);
        assert!(out.subdirs.is_empty());
    }

    #[test]
    fn symlinks_are_always_checked_unless_the_target_keeps_none() {
        let link = ViewEntry {
            kind: EntryType::Symlink,
            ..file("l", 20, 1)
        };
        let remote = listing("", vec![there("l", 0o120777, 20, 1)]);
        let out = compare_dir("", vec![link.clone()], &remote, KEEP_ALL);
        assert_eq!(actions(&out), [("l", Action::Backed)]);
        let out = compare_dir("", vec![link.clone()], &RemoteTree::default(), KEEP_ALL);
        assert_eq!(actions(&out), [("l", Action::Send)]);
        let keep = Keeps {
            symlinks: false,
            ..KEEP_ALL
        };
        let out = compare_dir("", vec![link], &RemoteTree::default(), keep);
        assert!(out.entries.is_empty() && out.fix_dirs.is_empty());
    }

    #[test]
    fn the_uploaded_config_stays_and_a_doubled_name_is_backed() {
        let remote = listing(
            "",
            vec![
                there(crate::crypt::REMOTE_CONFIG_NAME, 0o100400, 500, 1),
                there("twice", 0o100644, 1, 1),
                there("twice", 0o100644, 1, 1),
            ],
        );
        let out = compare_dir("", vec![file("twice", 1, 1)], &remote, KEEP_ALL);
        assert_eq!(actions(&out), [("twice", Action::Backed)]);
        let keep = Keeps {
            protected_config: false,
            ..KEEP_ALL
        };
        let out = compare_dir("", vec![], &remote, keep);
        let names: Vec<&str> = out.entries.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(names, [crate::crypt::REMOTE_CONFIG_NAME, "twice"]);
    }

    #[test]
    fn lists_leave_out_what_was_kept_or_sent_and_give_rsync_what_was_not() {
        let change = |path: &str, action| Change {
            path: path.into(),
            action,
            cost: 1,
            deletes: 1,
        };
        let changes = Changes {
            entries: vec![
                change("del_kept", Action::Delete),
                change("del_not", Action::Delete),
                change("rep_kept", Action::Replace),
                change("rep_not", Action::Replace),
                change("send", Action::Send),
                change("new_sent", Action::New),
                change("new_left", Action::New),
                change("backed", Action::Backed),
            ],
            ..Changes::default()
        };
        assert_eq!(
            changes.to_keep(),
            (
                vec!["del_kept".to_string(), "del_not".to_string()],
                vec!["rep_kept".to_string(), "rep_not".to_string()]
            )
        );
        let not_kept = NotKept {
            moves: vec!["del_not".into()],
            links: vec!["rep_not".into()],
        };
        assert_eq!(
            changes.to_upload(&not_kept),
            [
                ("rep_kept".to_string(), true),
                ("new_sent".to_string(), false),
                ("new_left".to_string(), false)
            ]
        );
        let uploaded = HashSet::from(["rep_kept".to_string(), "new_sent".to_string()]);
        let scratch = std::env::temp_dir();
        let plan = changes.lists(&not_kept, &uploaded, 1, &scratch).unwrap();
        let read = |files: Vec<File>| -> Vec<String> {
            let mut all = Vec::new();
            for mut f in files {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut f, &mut text).unwrap();
                all.extend(text.split('\0').filter(|p| !p.is_empty()).map(String::from));
            }
            all.sort();
            all
        };
        assert_eq!(read(plan.plain), ["new_left", "send"].map(String::from));
        assert_eq!(
            read(plan.backed),
            ["backed", "del_not", "rep_not"].map(String::from)
        );
    }

    #[test]
    fn directory_attributes_come_deepest_first_from_the_view() {
        let view = std::env::temp_dir().join(format!("cs-delta-dirs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&view);
        std::fs::create_dir_all(view.join("a/b")).unwrap();
        std::fs::set_permissions(view.join("a"), std::fs::Permissions::from_mode(0o750)).unwrap();
        let changes = Changes {
            fix_dirs: ["", "a", "a/b", "gone"].map(String::from).into(),
            ..Changes::default()
        };
        let attrs = changes.dir_attrs(&view);
        let paths: Vec<&str> = attrs.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["a/b", "a", ""]);
        assert_eq!(attrs[1].mode, 0o750);
        let mtime = std::fs::metadata(view.join("a")).unwrap().mtime();
        assert_eq!(attrs[1].mtime, mtime);
        std::fs::remove_dir_all(&view).unwrap();
    }

    #[test]
    fn phase_three_lists_hold_at_least_eight_directories() {
        let dirs: BTreeSet<String> = (0..20).map(|i| format!("d{i:02}")).collect();
        let lists = deal(&dirs, 16);
        assert_eq!(lists.len(), 2);
        assert_eq!(lists.iter().map(Vec::len).sum::<usize>(), 20);
        assert_eq!(deal(&BTreeSet::from(["".to_string()]), 16), vec![vec![""]]);
    }
}
