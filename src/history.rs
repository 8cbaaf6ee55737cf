//! What the records say about the past: every kept version of one path
//! (`log`) and what changed between two runs (`diff`).
//!
//! Both read only records and listings of snapshot dirs, never file
//! content. A path's entry in a record gives its type, mode and encrypted
//! size right after that run; a path held by `snapshots/<S>/` was replaced
//! or deleted by run S (rsync moved the old version there), which is how a
//! change that kept the size shows. Names in records are encrypted: the
//! plaintext path is encrypted (or record paths decrypted) through the
//! control socket of the reverse view (crypt::PathDecryptor).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use sha1::{Digest, Sha1};

use crate::config::Filenames;
use crate::crypt::{self, PathDecryptor, is_gocryptfs_metadata};
use crate::error::{Error, Kind, Result};
use crate::mount::Mount;
use crate::run::Context;
use crate::snapshots::{self, Record};
use crate::status::{parse_snapshot_id, rfc3339};
use crate::target::{self, Need, SNAPSHOTS, TreeEntry};

/// gocryptfs' file overhead: an 18-byte header, then per block of up to
/// 4096 plaintext bytes a 16-byte nonce and a 16-byte tag.
const HEADER: u64 = 18;
const BLOCK: u64 = 4096;
const BLOCK_OVERHEAD: u64 = 32;

/// The plaintext size of a gocryptfs file of `cipher` bytes; None when no
/// plaintext has that size (a damaged file).
pub fn plain_size(cipher: u64) -> Option<u64> {
    if cipher == 0 {
        return Some(0);
    }
    let body = cipher.checked_sub(HEADER)?;
    let blocks = body.div_ceil(BLOCK + BLOCK_OVERHEAD);
    let plain = body.checked_sub(blocks * BLOCK_OVERHEAD)?;
    (plain > 0 && plain.div_ceil(BLOCK) == blocks).then_some(plain)
}

/// What happened to a path in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// In the oldest kept run; what came before is no longer kept.
    Oldest,
    Added,
    Changed,
    Deleted,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Oldest => "oldest",
            Event::Added => "added",
            Event::Changed => "changed",
            Event::Deleted => "deleted",
        }
    }
}

/// A path as one record lists it: its own entry and, for a directory, a
/// digest of everything below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathState {
    pub kind: char,
    pub mode: u32,
    /// Encrypted size (files; a symlink's encrypted target length).
    pub size: u64,
    /// Below a directory: the user's files and their plaintext bytes.
    pub files_below: u64,
    pub bytes_below: u64,
    below: [u8; 20],
}

impl PathState {
    /// The path's plaintext size: a file's bytes, a directory's files'
    /// bytes; None for a symlink (its size is that of the encrypted target).
    pub fn plain_bytes(&self) -> Option<u64> {
        match self.kind {
            'f' => plain_size(self.size),
            'd' => Some(self.bytes_below),
            _ => None,
        }
    }
}

/// The state of `encrypted` in `record` (None: not there).
pub fn state_in(record: &Record, encrypted: &str) -> Option<PathState> {
    let prefix = format!("{encrypted}/");
    let mut own = None;
    let mut hash = Sha1::new();
    let (mut files, mut bytes) = (0, 0);
    for e in &record.entries {
        if e.path == encrypted {
            own = Some((e.kind, e.mode, e.size));
        } else if let Some(rest) = e.path.strip_prefix(&prefix) {
            hash.update(format!("{} {:o} {} {rest}\n", e.kind, e.mode, e.size).as_bytes());
            if e.kind == 'f' && !is_gocryptfs_metadata(&e.path) {
                files += 1;
                bytes += plain_size(e.size).unwrap_or(e.size);
            }
        }
    }
    let (kind, mode, size) = own?;
    Some(PathState {
        kind,
        mode,
        size,
        files_below: files,
        bytes_below: bytes,
        below: hash.finalize().into(),
    })
}

/// One version of a path: the run that made it, what happened, and the
/// path's state after the run (None when it was deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub id: String,
    pub event: Event,
    pub state: Option<PathState>,
}

/// The versions of a path, oldest first: `states` holds, for each recorded
/// run (oldest first), the path's state after it; `replaced` the snapshot
/// dirs that hold the path (or, for a directory, a file below it). A run
/// changed the path when its state differs from the previous run's, or
/// when a snapshot dir since that run (this run's included, also of runs
/// that did not finish) holds an old version.
pub fn versions(
    states: &[(String, Option<PathState>)],
    replaced: &BTreeSet<String>,
) -> Vec<Version> {
    let mut out = Vec::new();
    let mut previous: Option<(&str, &Option<PathState>)> = None;
    for (id, state) in states {
        let replaced_since = |after: Option<&str>| {
            replaced
                .iter()
                .any(|s| s.as_str() <= id.as_str() && after.is_none_or(|a| s.as_str() > a))
        };
        let event = match (previous, state) {
            (None, Some(_)) if replaced.contains(id) => Some(Event::Changed),
            (None, Some(_)) => Some(Event::Oldest),
            (None, None) => None,
            (Some((_, None)), Some(_)) => Some(Event::Added),
            (Some((_, Some(_))), None) => Some(Event::Deleted),
            (Some((_, None)), None) => None,
            (Some((last, Some(old))), Some(new)) => {
                (old != new || replaced_since(Some(last))).then_some(Event::Changed)
            }
        };
        if let Some(event) = event {
            out.push(Version {
                id: id.clone(),
                event,
                state: state.clone(),
            });
        }
        previous = Some((id, state));
    }
    out
}

/// The paths that differ between two records (by encrypted path): added,
/// deleted, and changed (another type, mode or size, or held by a snapshot
/// dir of a run after `from` up to `to`). gocryptfs' own files are left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes<'a> {
    pub added: Vec<&'a TreeEntry>,
    pub deleted: Vec<&'a TreeEntry>,
    pub changed: Vec<&'a TreeEntry>,
}

pub fn changes<'a>(from: &'a Record, to: &'a Record, replaced: &BTreeSet<String>) -> Changes<'a> {
    let user = |r: &'a Record| -> BTreeMap<&'a str, &'a TreeEntry> {
        r.entries
            .iter()
            .filter(|e| !is_gocryptfs_metadata(&e.path))
            .map(|e| (e.path.as_str(), e))
            .collect()
    };
    let (old, new) = (user(from), user(to));
    let mut out = Changes::default();
    for (path, e) in &new {
        match old.get(path) {
            None => out.added.push(e),
            Some(o) => {
                let differs = o.kind != e.kind || o.mode != e.mode || o.size != e.size;
                if differs || (e.kind != 'd' && replaced.contains(*path)) {
                    out.changed.push(e);
                }
            }
        }
    }
    out.deleted = old
        .iter()
        .filter(|(path, _)| !new.contains_key(*path))
        .map(|(_, e)| *e)
        .collect();
    out
}

/// The snapshot dirs that hold `encrypted` (a file or symlink there, or a
/// file below it for a directory): the runs that replaced or deleted it.
pub fn snapshot_dirs_holding(
    remote: &dyn crate::target::Target,
    encrypted: &str,
    is_dir: bool,
) -> Result<BTreeSet<String>> {
    let mut holding = BTreeSet::new();
    let (parent, name) = match encrypted.rsplit_once('/') {
        Some((parent, name)) => (Some(parent), name),
        None => (None, encrypted),
    };
    for id in snapshots::snapshot_dir_ids(remote)? {
        let dir = format!("{SNAPSHOTS}/{id}");
        let held = if is_dir {
            remote
                .list_tree(&format!("{dir}/{encrypted}"))?
                .iter()
                .any(|e| e.kind != 'd' && !is_gocryptfs_metadata(&e.path))
        } else {
            let parent = parent.map_or(dir, |p| format!("{SNAPSHOTS}/{id}/{p}"));
            remote.list_names(&parent)?.iter().any(|n| n == name)
        };
        if held {
            holding.insert(id);
        }
    }
    Ok(holding)
}

/// The files and symlinks the snapshot dirs of the runs after `from` up to
/// `to` hold: what those runs replaced or deleted.
pub fn replaced_between(
    remote: &dyn crate::target::Target,
    from: &str,
    to: &str,
) -> Result<BTreeSet<String>> {
    let mut replaced = BTreeSet::new();
    for id in snapshots::snapshot_dir_ids(remote)?
        .into_iter()
        .filter(|s| s.as_str() > from && s.as_str() <= to)
    {
        replaced.extend(
            remote
                .list_tree(&format!("{SNAPSHOTS}/{id}"))?
                .into_iter()
                .filter(|e| e.kind != 'd')
                .map(|e| e.path),
        );
    }
    Ok(replaced)
}

/// A path as `log` takes it: relative to the source, no `.`, `..` or empty
/// component (a trailing `/` is dropped).
pub fn check_path(path: &str) -> Result<String> {
    let trimmed = path.trim_end_matches('/');
    let bad = trimmed.is_empty()
        || trimmed.starts_with('/')
        || trimmed
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Error::usage(format!(
            "{path:?} is not a path relative to the source (like docs/report.txt)"
        )));
    }
    Ok(trimmed.to_string())
}

/// Names through the reverse view's control socket; with plaintext names
/// a path is its own name and nothing is mounted.
struct Names {
    view: Option<(Mount, PathDecryptor)>,
}

impl Names {
    fn open(ctx: &Context) -> Result<Names> {
        let job = ctx.job;
        if job.filenames == Filenames::Plaintext {
            return Ok(Names { view: None });
        }
        let (point, socket) = (ctx.runtime("cipher"), ctx.runtime("ctl.sock"));
        crate::mount::prepare_point(&point)?;
        let view = crypt::mount_reverse(job, &point, Some(&socket))?;
        Ok(Names {
            view: Some((view, PathDecryptor::new(&socket))),
        })
    }

    fn encrypt(&self, plain: &str) -> Result<String> {
        match &self.view {
            None => Ok(plain.to_string()),
            Some((_, names)) => names.encrypt(plain),
        }
    }

    /// The plaintext path, or None when gocryptfs cannot decrypt it (a
    /// long name whose file the source no longer has).
    fn decrypt(&self, encrypted: &str) -> Option<String> {
        match &self.view {
            None => Some(encrypted.to_string()),
            Some((_, names)) => names.decrypt(encrypted),
        }
    }

    fn close(self) -> Result<()> {
        match self.view {
            Some((view, _)) => view.unmount(),
            None => Ok(()),
        }
    }
}

/// Records and snapshot dirs, read however the account allows.
fn open_remote(ctx: &Context) -> Result<Box<dyn crate::target::Target>> {
    target::open(ctx.job, Need::Records, &ctx.runtime("remote"))
}

fn type_name(kind: char) -> &'static str {
    match kind {
        'f' => "file",
        'd' => "dir",
        'l' => "symlink",
        _ => "other",
    }
}

/// `log`: every kept version of `path` (relative to the source), oldest
/// first, as JSON: `{path, versions: [{id, time, event, type, size,
/// files, mode}]}`. An error when no kept run holds the path.
pub fn log(ctx: &Context, path: &str) -> Result<Value> {
    let plain = check_path(path)?;
    let names = Names::open(ctx)?;
    let encrypted = names.encrypt(&plain);
    names.close()?;
    let encrypted = encrypted?;
    let remote = open_remote(ctx)?;
    let mut states = Vec::new();
    for id in snapshots::recorded_ids(&*remote)? {
        let record = snapshots::read_record(&*remote, &id, &ctx.job.state_dir)?;
        states.push((id, state_in(&record, &encrypted)));
    }
    let is_dir = states
        .iter()
        .any(|(_, s)| s.as_ref().is_some_and(|s| s.kind == 'd'));
    let replaced = snapshot_dirs_holding(&*remote, &encrypted, is_dir)?;
    let found = versions(&states, &replaced);
    if found.is_empty() {
        return Err(Error::new(
            Kind::Usage,
            format!(
                "no kept run of job {} holds {plain:?} (a path relative to the source {}; \
                 see `ciphersync snapshots`)",
                ctx.job.name,
                ctx.job.source.display()
            ),
        ));
    }
    let rows: Vec<Value> = found
        .iter()
        .map(|v| {
            let s = v.state.as_ref();
            json!({
                "id": v.id,
                "time": parse_snapshot_id(&v.id).map(rfc3339),
                "event": v.event.as_str(),
                "type": s.map(|s| type_name(s.kind)),
                "size": s.and_then(PathState::plain_bytes),
                "files": s.filter(|s| s.kind == 'd').map(|s| s.files_below),
                "mode": s.map(|s| format!("{:o}", s.mode)),
            })
        })
        .collect();
    Ok(json!({ "job": ctx.job.name, "path": plain, "versions": rows }))
}

/// `diff`: what changed from run `from` to run `to` (older first), by
/// plaintext path: `{from, to, added, deleted, changed}`, each a list of
/// `{path, type}` sorted by path.
pub fn diff(ctx: &Context, from: &str, to: &str) -> Result<Value> {
    for id in [from, to] {
        if parse_snapshot_id(id).is_none() {
            return Err(Error::usage(format!(
                "{id:?} is not a snapshot id (YYYYMMDDTHHMMSSZ; see `ciphersync snapshots`)"
            )));
        }
    }
    if from >= to {
        return Err(Error::usage(format!(
            "diff {from} {to}: give the older run first (diff OLDER NEWER)"
        )));
    }
    let remote = open_remote(ctx)?;
    let (old, new) = (
        snapshots::read_record(&*remote, from, &ctx.job.state_dir)?,
        snapshots::read_record(&*remote, to, &ctx.job.state_dir)?,
    );
    let replaced = replaced_between(&*remote, from, to)?;
    let found = changes(&old, &new, &replaced);
    drop(remote);
    let names = Names::open(ctx)?;
    let list = |entries: &[&TreeEntry]| -> Vec<Value> {
        let mut rows: Vec<(String, Value)> = entries
            .iter()
            .map(|e| {
                let plain = names.decrypt(&e.path);
                let path = plain.clone().unwrap_or_else(|| e.path.clone());
                let row = json!({
                    "path": path,
                    "type": type_name(e.kind),
                    "decrypted": plain.is_some(),
                });
                (path, row)
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.into_iter().map(|(_, row)| row).collect()
    };
    let doc = json!({
        "job": ctx.job.name,
        "from": from,
        "to": to,
        "added": list(&found.added),
        "deleted": list(&found.deleted),
        "changed": list(&found.changed),
    });
    names.close()?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: char, size: u64, path: &str) -> TreeEntry {
        TreeEntry {
            kind,
            mode: if kind == 'd' { 0o755 } else { 0o644 },
            size,
            path: path.into(),
            link: None,
        }
    }

    fn record(id: &str, entries: Vec<TreeEntry>) -> Record {
        Record {
            snapshot: id.into(),
            transferred: 0,
            deleted: 0,
            changed: 0,
            metadata_in_record: false,
            entries,
        }
    }

    #[test]
    fn plaintext_sizes_from_ciphertext_sizes() {
        // 1 byte -> 18 + 1 + 32; 4096 -> one full block; 4097 -> two blocks.
        for (plain, cipher) in [
            (0, 0),
            (1, 51),
            (4096, 4146),
            (4097, 4179),
            (10_000, 10_114),
        ] {
            assert_eq!(plain_size(cipher), Some(plain), "{cipher}");
        }
        assert_eq!(plain_size(18), None);
        assert_eq!(plain_size(50), None);
    }

    #[test]
    fn versions_say_what_each_run_did() {
        let ids = [
            "20260101T000000Z",
            "20260102T000000Z",
            "20260103T000000Z",
            "20260104T000000Z",
            "20260105T000000Z",
            "20260106T000000Z",
        ];
        let recs = [
            record(ids[0], vec![entry('f', 51, "a")]),
            record(ids[1], vec![entry('f', 51, "a")]), // same size, replaced: snapshots/2 holds it
            record(ids[2], vec![entry('f', 60, "a")]), // bigger
            record(ids[3], vec![]),                    // deleted
            record(ids[4], vec![entry('f', 51, "a")]), // back
            record(ids[5], vec![entry('f', 51, "a")]), // untouched
        ];
        let states: Vec<_> = recs
            .iter()
            .map(|r| (r.snapshot.clone(), state_in(r, "a")))
            .collect();
        let replaced: BTreeSet<String> = [ids[1].to_string(), ids[3].to_string()].into();
        let found = versions(&states, &replaced);
        let events: Vec<(&str, &str)> = found
            .iter()
            .map(|v| (&v.id[6..8], v.event.as_str()))
            .collect();
        assert_eq!(
            events,
            [
                ("01", "oldest"),
                ("02", "changed"),
                ("03", "changed"),
                ("04", "deleted"),
                ("05", "added")
            ]
        );
        // An interrupted run between two records replaced it: the next
        // recorded run shows the change.
        let same: Vec<_> = states[..2]
            .iter()
            .map(|(id, _)| (id.clone(), states[0].1.clone()))
            .collect();
        let between: BTreeSet<String> = ["20260101T120000Z".to_string()].into();
        assert_eq!(versions(&same, &between)[1].event, Event::Changed);
        assert_eq!(versions(&same, &BTreeSet::new()).len(), 1);
    }

    #[test]
    fn a_directory_changes_with_what_is_below_it() {
        let r1 = record(
            "20260101T000000Z",
            vec![
                entry('d', 0, "d"),
                entry('f', 51, "d/x"),
                entry('f', 51, "dx"),
            ],
        );
        let r2 = record(
            "20260102T000000Z",
            vec![
                entry('d', 0, "d"),
                entry('f', 60, "d/x"),
                entry('f', 60, "dx"),
            ],
        );
        let r3 = record(
            "20260103T000000Z",
            vec![
                entry('d', 0, "d"),
                entry('f', 60, "d/x"),
                entry('f', 70, "dx"),
            ],
        );
        let states: Vec<_> = [&r1, &r2, &r3]
            .iter()
            .map(|r| (r.snapshot.clone(), state_in(r, "d")))
            .collect();
        let v = versions(&states, &BTreeSet::new());
        assert_eq!(
            v.iter().map(|v| v.event).collect::<Vec<_>>(),
            [Event::Oldest, Event::Changed]
        );
        assert_eq!(v[1].state.as_ref().unwrap().plain_bytes(), Some(10));
        assert_eq!(v[1].state.as_ref().unwrap().files_below, 1);
    }

    #[test]
    fn changes_between_two_records() {
        let from = record(
            "20260101T000000Z",
            vec![
                entry('f', 10, "gocryptfs.diriv"),
                entry('f', 51, "same"),
                entry('f', 51, "replaced"),
                entry('f', 51, "grown"),
                entry('f', 51, "gone"),
                entry('d', 0, "dir"),
            ],
        );
        let to = record(
            "20260103T000000Z",
            vec![
                entry('f', 10, "gocryptfs.diriv"),
                entry('f', 51, "same"),
                entry('f', 51, "replaced"),
                entry('f', 60, "grown"),
                entry('l', 20, "new"),
                entry('d', 0, "dir"),
            ],
        );
        let replaced: BTreeSet<String> = ["replaced".to_string(), "dir".to_string()].into();
        let c = changes(&from, &to, &replaced);
        let paths = |l: &[&TreeEntry]| l.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths(&c.added), ["new"]);
        assert_eq!(paths(&c.deleted), ["gone"]);
        assert_eq!(paths(&c.changed), ["grown", "replaced"]);
    }

    #[test]
    fn log_paths_are_relative() {
        assert_eq!(check_path("a/b/").unwrap(), "a/b");
        for bad in ["", "/", "/etc/passwd", "a/../b", "./a", "a//b"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }
}
