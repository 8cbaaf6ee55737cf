//! Snapshots a user can rely on.
//!
//! Every successful backup writes a record, `records/<id>.rec`, listing every
//! entry of `files/` right after the run. The tree as it was after run ID is
//! rebuilt from that list: each path comes from the oldest `snapshots/<S>/`
//! with S later than ID that holds it (the version a later run replaced or
//! deleted), else from `files/`. Snapshot dirs of unfinished runs count too:
//! they hold versions those runs replaced.
//!
//! Record format (text, one entry per line after a short header):
//!
//! ```text
//! ciphersync-record 1
//! snapshot 20261129T030000Z
//! files 2000
//! bytes 157286400
//! transferred 120
//! deleted 3
//! changed 124
//!
//! d 755 0 Ckdzsn3MiFFyXiokYPQGnQ
//! f 644 56 Ckdzsn3MiFFyXiokYPQGnQ/kAut6PaczGNtKYahQZnWoQ
//! l 777 50 9hB7lGC5t9HebLrDYKz35g
//! ```
//!
//! Entry lines are `<type> <octal mode> <size> <encrypted path>`; a path that
//! holds a backslash or a newline (possible only with plaintext names) has
//! them written as `\\` and `\n`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::config::{Filenames, Job, Retention};
use crate::crypt::REMOTE_CONFIG_NAME;
use crate::error::{Error, Kind, Result};
use crate::status::parse_snapshot_id;
use crate::target::{FILES, MetadataFrom, RECORDS, RecordRequest, SNAPSHOTS, Target, TreeEntry};

const MAGIC: &str = "ciphersync-record 1";
/// A record that also holds what the server could not keep: the true modes
/// (taken from the view) and symlink targets (`L` lines). Older clients
/// refuse it by its first line instead of misreading it.
const MAGIC_METADATA: &str = "ciphersync-record 2";

/// One run's record, whole (restore and the tests); backup streams records
/// with `RecordReader` instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub snapshot: String,
    pub transferred: u64,
    pub deleted: u64,
    /// Files and symlinks this run created, changed or deleted.
    pub changed: u64,
    /// Modes and symlinks come from this record, not from the server.
    pub metadata_in_record: bool,
    pub entries: Vec<TreeEntry>,
}

impl Record {
    /// The user's files: gocryptfs' own files are not counted.
    fn user_files(&self) -> impl Iterator<Item = &TreeEntry> {
        self.entries.iter().filter(|e| e.is_user_file())
    }

    pub fn files(&self) -> u64 {
        self.user_files().count() as u64
    }

    /// Encrypted bytes of the user's files.
    pub fn bytes(&self) -> u64 {
        self.user_files().map(|e| e.size).sum()
    }

    #[cfg(test)]
    pub fn to_text(&self) -> String {
        let header = Header {
            snapshot: self.snapshot.clone(),
            files: self.files(),
            bytes: self.bytes(),
            transferred: self.transferred,
            deleted: self.deleted,
            changed: self.changed,
            metadata_in_record: self.metadata_in_record,
        };
        let mut text = header.to_text();
        for e in &self.entries {
            text.push_str(&e.record_line());
        }
        text
    }

    /// Parses a record read back from the target; damage is an error that
    /// names the line, never a panic.
    pub fn parse(text: &str) -> Result<Record> {
        Record::read(text.as_bytes())
    }

    /// A record streamed from `reader`: lines are bounded (limits.rs), so
    /// a record that never ends is an error, not a heap the size of it.
    pub fn read(reader: impl BufRead) -> Result<Record> {
        let mut reader = RecordReader::new(reader)?;
        let entries = reader.by_ref().collect::<Result<Vec<_>>>()?;
        let h = reader.header;
        Ok(Record {
            snapshot: h.snapshot,
            transferred: h.transferred,
            deleted: h.deleted,
            changed: h.changed,
            metadata_in_record: h.metadata_in_record,
            entries,
        })
    }
}

/// The header of a record: the run and its counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    pub snapshot: String,
    /// The user's files after the run, and their encrypted bytes.
    pub files: u64,
    pub bytes: u64,
    pub transferred: u64,
    pub deleted: u64,
    pub changed: u64,
    /// The server keeps no modes or no symlinks: the record holds them
    /// (`metadata record`), and restore takes them from it.
    pub metadata_in_record: bool,
}

impl Header {
    fn to_text(&self) -> String {
        let (magic, metadata) = match self.metadata_in_record {
            true => (MAGIC_METADATA, "metadata record\n"),
            false => (MAGIC, ""),
        };
        format!(
            "{magic}\nsnapshot {}\nfiles {}\nbytes {}\ntransferred {}\ndeleted {}\nchanged {}\n{metadata}\n",
            self.snapshot, self.files, self.bytes, self.transferred, self.deleted, self.changed
        )
    }
}

/// A record read one entry at a time: a record has a line per file, and
/// backup only needs to pass over it once.
pub struct RecordReader<R> {
    pub header: Header,
    lines: crate::limits::Lines<R>,
    line: usize,
}

impl<R: BufRead> RecordReader<R> {
    /// Reads the header; the entries follow as the iterator.
    pub fn new(reader: R) -> Result<RecordReader<R>> {
        let mut lines = crate::limits::Lines::new(reader, "a record");
        let mut next_line = || -> Result<Option<String>> {
            match lines.next() {
                None => Ok(None),
                Some(line) => text_line(line?).map(Some),
            }
        };
        let magic = next_line()?;
        if magic.as_deref() != Some(MAGIC) && magic.as_deref() != Some(MAGIC_METADATA) {
            return Err(corrupt(
                "does not start with the ciphersync record header".into(),
            ));
        }
        let mut fields = BTreeMap::new();
        let mut line = 1;
        while let Some(text) = next_line()? {
            line += 1;
            if text.is_empty() {
                break;
            }
            let (key, value) = text.split_once(' ').ok_or_else(|| {
                corrupt(format!(
                    "bad header line {}",
                    crate::limits::quote(&text, 200)
                ))
            })?;
            fields.insert(key.to_string(), value.to_string());
        }
        let snapshot = fields
            .get("snapshot")
            .filter(|s| parse_snapshot_id(s).is_some())
            .ok_or_else(|| corrupt("no valid snapshot id".into()))?
            .clone();
        let number = |key: &str| {
            fields
                .get(key)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let header = Header {
            snapshot,
            files: number("files"),
            bytes: number("bytes"),
            transferred: number("transferred"),
            deleted: number("deleted"),
            changed: number("changed"),
            metadata_in_record: magic.as_deref() == Some(MAGIC_METADATA)
                && fields.get("metadata").map(String::as_str) == Some("record"),
        };
        Ok(RecordReader {
            header,
            lines,
            line,
        })
    }
}

impl<R: BufRead> Iterator for RecordReader<R> {
    type Item = Result<TreeEntry>;

    fn next(&mut self) -> Option<Result<TreeEntry>> {
        loop {
            let bytes = match self.lines.next()? {
                Ok(bytes) => bytes,
                Err(e) => return Some(Err(e)),
            };
            self.line += 1;
            if bytes.is_empty() {
                continue;
            }
            let number = self.line;
            return Some(text_line(bytes).and_then(|text| {
                parse_entry(&text).ok_or_else(|| {
                    corrupt(format!(
                        "bad entry line {number}: {}",
                        crate::limits::quote(&text, 200)
                    ))
                })
            }));
        }
    }
}

fn corrupt(what: String) -> Error {
    Error::new(Kind::Corrupt, format!("record: {what}"))
}

fn text_line(bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| corrupt("is not text".into()))
}

fn parse_entry(line: &str) -> Option<TreeEntry> {
    let mut fields = line.splitn(4, ' ');
    let kind = fields.next()?;
    let kind = match kind {
        "f" | "d" | "l" | "L" => kind.chars().next()?,
        _ => return None,
    };
    let mode = u32::from_str_radix(fields.next()?, 8).ok()?;
    let size = fields.next()?.parse().ok()?;
    let rest = fields.next()?;
    // `L`: a symlink the record keeps, `<path> TAB <target>`.
    let (path, link) = match kind {
        'L' => {
            let (path, target) = rest.split_once('\t')?;
            (
                unescape(path)?,
                Some(unescape(target)?).filter(|t| !t.is_empty())?.into(),
            )
        }
        _ => (unescape(rest)?, None),
    };
    let safe = !path.is_empty()
        && !path.starts_with('/')
        && !path.split('/').any(|c| c == ".." || c.is_empty());
    safe.then_some(TreeEntry {
        kind: if kind == 'L' { 'l' } else { kind },
        mode,
        size,
        path,
        link,
    })
}

fn unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(match c {
            '\\' => match chars.next()? {
                '\\' => '\\',
                'n' => '\n',
                _ => return None,
            },
            c => c,
        });
    }
    Some(out)
}

pub fn record_path(id: &str) -> String {
    format!("{RECORDS}/{id}.rec")
}

/// Writes the record of run `snapshot` from a listing of files/ taken right
/// after it, and returns its header. Written last and atomically: an
/// unfinished run has no record. Where the server's shell may be used the
/// server lists, sorts and writes it (nothing crosses the wire); else the
/// tree is walked through the mount or on the local target.
/// `same_as`: when this run found the source as the last run left it and
/// changed nothing on the target. files/ then holds what that run's record
/// lists, and the server copies its entries under the new header instead
/// of listing files/ again.
pub fn write_record(
    job: &Job,
    remote: &dyn Target,
    snapshot: &str,
    stats: &crate::rsync::Stats,
    same_as: Option<SameAs>,
    metadata_from: Option<MetadataFrom>,
) -> Result<Written> {
    let mut header = Header {
        snapshot: snapshot.to_string(),
        transferred: stats.transferred,
        deleted: stats.deleted,
        changed: stats.changed,
        metadata_in_record: metadata_from.is_some(),
        ..Header::default()
    };
    let format = header_format(&header);
    let counts = remote.write_record(&RecordRequest {
        id: snapshot,
        header_format: &format,
        // Encrypted names never start with a dot, so such a name is an
        // rsync temp file; plaintext names may, and rsync has removed its
        // temp files by the time a run writes its record.
        skip_dot_names: job.filenames == Filenames::Encrypted,
        same_as: same_as.map(|s| s.last),
        known_stamps: same_as.and_then(|s| s.stamps),
        scratch_dir: &job.state_dir,
        metadata_from,
    })?;
    (header.files, header.bytes) = (counts.files, counts.bytes);
    Ok(Written {
        header,
        target_stamps: counts.stamps,
    })
}

/// The last run, whose record lists what files/ holds now.
#[derive(Debug, Clone, Copy)]
pub struct SameAs<'a> {
    pub last: &'a str,
    /// The stamps of files/, when no rsync ran since the server took them.
    pub stamps: Option<&'a str>,
}

/// A record as written, and the stamps of files/ right after it.
pub struct Written {
    pub header: Header,
    /// See lib.sh's `stamps_of`; only where the server's shell may be used.
    pub target_stamps: Option<String>,
}

/// The header as a printf format, with `%s` for the file and byte counts
/// (see `RecordRequest::header_format`).
fn header_format(header: &Header) -> String {
    header
        .to_text()
        .replace("\nfiles 0\nbytes 0\n", "\nfiles %s\nbytes %s\n")
}

/// A whole record, for restore and listing.
/// `scratch_dir` (the state dir) holds the record on its way from a server.
pub fn read_record(remote: &dyn Target, id: &str, scratch_dir: &Path) -> Result<Record> {
    let scratch = crate::exec::scratch_file(scratch_dir, "record")?;
    let file = remote
        .open_file(&record_path(id), scratch)?
        .ok_or_else(|| {
            Error::usage(format!(
                "there is no snapshot {id} (see `ciphersync snapshots`)"
            ))
        })?;
    parse_record(file, id)
}

/// Run `id`'s record from a copy of it read from the target.
pub fn parse_record(file: std::fs::File, id: &str) -> Result<Record> {
    Record::read(BufReader::new(file)).map_err(|e| name_record(e, id))
}

/// The header of one record (its entries are not read).
pub fn open_header(remote: &dyn Target, id: &str, scratch_dir: &Path) -> Result<Header> {
    let scratch = crate::exec::scratch_file(scratch_dir, "record")?;
    let file = remote
        .open_file(&record_path(id), scratch)?
        .ok_or_else(|| Error::usage(format!("there is no snapshot {id}")))?;
    RecordReader::new(BufReader::new(file))
        .map(|r| r.header)
        .map_err(|e| name_record(e, id))
}

/// Damage in a record names the record.
pub fn name_record(e: Error, id: &str) -> Error {
    Error::new(
        Kind::Corrupt,
        format!("{} ({})", e.message, record_path(id)),
    )
}

/// The header of every record, oldest first: one round trip where the
/// server's shell may be used (a record's entries are never read).
pub fn headers(job: &Job, remote: &dyn Target) -> Result<Vec<Header>> {
    remote
        .record_headers(&job.state_dir)?
        .into_iter()
        .map(|(id, text)| {
            RecordReader::new(text.as_bytes())
                .map(|r| r.header)
                .map_err(|e| name_record(e, &id))
        })
        .collect()
}

/// Ids of all runs with a record, oldest first.
pub fn recorded_ids(remote: &dyn Target) -> Result<Vec<String>> {
    Ok(ids_of_records(remote.list_names(RECORDS)?))
}

/// The run ids among the names in records/, oldest first.
pub fn ids_of_records(names: Vec<String>) -> Vec<String> {
    let ids = names
        .into_iter()
        .filter_map(|n| n.strip_suffix(".rec").map(str::to_owned));
    run_ids(ids)
}

/// Ids of all snapshot dirs, oldest first.
pub fn snapshot_dir_ids(remote: &dyn Target) -> Result<Vec<String>> {
    Ok(ids_of_snapshot_dirs(remote.list_names(SNAPSHOTS)?))
}

/// The run ids among the names in snapshots/, oldest first.
pub fn ids_of_snapshot_dirs(names: Vec<String>) -> Vec<String> {
    run_ids(names.into_iter())
}

fn run_ids(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut ids: Vec<String> = names.filter(|id| parse_snapshot_id(id).is_some()).collect();
    ids.sort();
    ids
}

/// Where each path of a record comes from in a rebuild: `None` = files/,
/// `Some(S)` = snapshots/S/.
pub fn plan_rebuild<'a>(
    record: &'a Record,
    later_snapshots: &'a [(String, BTreeSet<String>)],
) -> BTreeMap<Option<&'a str>, Vec<&'a TreeEntry>> {
    let mut plan: BTreeMap<Option<&str>, Vec<&TreeEntry>> = BTreeMap::new();
    // A symlink the record keeps was never on the server.
    for entry in record
        .entries
        .iter()
        .filter(|e| e.kind != 'd' && e.link.is_none())
    {
        let from = later_snapshots
            .iter()
            .filter(|(id, _)| id.as_str() > record.snapshot.as_str())
            .find(|(_, paths)| paths.contains(&entry.path))
            .map(|(id, _)| id.as_str());
        plan.entry(from).or_default().push(entry);
    }
    plan
}

/// Makes `snapshots/<id>/` mountable by plain gocryptfs: every directory
/// gets its `gocryptfs.diriv`, every long name its `.name` file, the root its
/// `gocryptfs.conf`, copied from `files/`. A deleted directory's diriv was
/// moved into the snapshot with its files, so what is missing is always in
/// `files/` (directory IVs and name files never change for a given path).
pub fn complete_snapshot_dir(job: &Job, remote: &dyn Target, id: &str) -> Result<usize> {
    let dir = format!("{SNAPSHOTS}/{id}");
    let entries = remote.list_tree(&dir)?;
    if entries.is_empty() {
        return Ok(0);
    }
    let present: BTreeSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let mut wanted: Vec<String> = vec![REMOTE_CONFIG_NAME.to_string()];
    if job.filenames == Filenames::Encrypted {
        wanted.push("gocryptfs.diriv".to_string());
        for e in &entries {
            if e.kind == 'd' {
                wanted.push(format!("{}/gocryptfs.diriv", e.path));
            }
            let name = e.path.rsplit('/').next().unwrap_or("");
            if e.kind == 'f' && name.starts_with("gocryptfs.longname.") && !name.ends_with(".name")
            {
                wanted.push(format!("{}.name", e.path));
            }
        }
    }
    let pairs: Vec<(String, String)> = wanted
        .into_iter()
        .filter(|rel| !present.contains(rel.as_str()))
        .map(|rel| (format!("{FILES}/{rel}"), format!("{dir}/{rel}")))
        .collect();
    remote.copy_within(&pairs)?;
    Ok(pairs.len())
}

/// Which runs retention keeps: the newest always; then every run within
/// `keep_last` or within `keep_days`; a run goes only when it is outside
/// every bound that is set. With no bound set, everything is kept.
pub fn runs_to_keep(ids: &[String], retention: &Retention, now: SystemTime) -> BTreeSet<String> {
    if !retention.bounded() {
        return ids.iter().cloned().collect();
    }
    let mut keep = BTreeSet::new();
    let newest_first: Vec<&String> = ids.iter().rev().collect();
    if let Some(newest) = newest_first.first() {
        keep.insert((*newest).clone());
    }
    if let Some(n) = retention.keep_last {
        keep.extend(newest_first.iter().take(n as usize).map(|id| (*id).clone()));
    }
    if let Some(days) = retention.keep_days {
        let horizon = now
            .checked_sub(Duration::from_secs(u64::from(days) * 86_400))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        keep.extend(
            ids.iter()
                .filter(|id| parse_snapshot_id(id).is_some_and(|t| t >= horizon))
                .cloned(),
        );
    }
    keep
}

/// What pruning deletes: the records of runs retention drops, and every
/// snapshot dir that no kept run needs (a rebuild of run R reads only the
/// snapshot dirs later than R). Because the oldest kept run bounds both,
/// only whole old snapshot dirs go.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PrunePlan {
    pub records: Vec<String>,
    pub snapshot_dirs: Vec<String>,
}

pub fn plan_prune(
    recorded: &[String],
    snapshot_dirs: &[String],
    retention: &Retention,
    now: SystemTime,
) -> PrunePlan {
    if !retention.bounded() {
        return PrunePlan::default();
    }
    let keep = runs_to_keep(recorded, retention, now);
    let Some(oldest_kept) = keep.iter().next() else {
        return PrunePlan::default();
    };
    PrunePlan {
        records: recorded
            .iter()
            .filter(|id| *id < oldest_kept)
            .cloned()
            .collect(),
        snapshot_dirs: snapshot_dirs
            .iter()
            .filter(|id| *id <= oldest_kept)
            .cloned()
            .collect(),
    }
}

/// Applies the job's retention on the target (or only reports, with
/// `dry_run`). Records go first: a crash half-way never leaves a record
/// whose snapshot dirs are gone.
pub fn prune(job: &Job, remote: &dyn Target, dry_run: bool) -> Result<PrunePlan> {
    if !job.snapshots.bounded() {
        return Ok(PrunePlan::default()); // no bound: keep everything, list nothing
    }
    // An append-only account (`ciphersync serve --seal`): its server
    // applies the retention; sealed runs cannot be deleted from here.
    if let Some(says) = crate::serve::server_keeps(remote)? {
        crate::log::info(says);
        return Ok(PrunePlan::default());
    }
    let plan = plan_prune(
        &recorded_ids(remote)?,
        &snapshot_dir_ids(remote)?,
        &job.snapshots,
        SystemTime::now(),
    );
    if dry_run {
        return Ok(plan);
    }
    // Records first (a separate call): if the second one fails half-way, no
    // record is left that needs a snapshot dir that is gone.
    remote.remove(
        &plan
            .records
            .iter()
            .map(|id| record_path(id))
            .collect::<Vec<_>>(),
    )?;
    remote.remove(
        &plan
            .snapshot_dirs
            .iter()
            .map(|id| format!("{SNAPSHOTS}/{id}"))
            .collect::<Vec<_>>(),
    )?;
    crate::metadata::prune_dirs(remote, &plan.records)?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: char, path: &str) -> TreeEntry {
        TreeEntry {
            kind,
            mode: if kind == 'd' { 0o755 } else { 0o644 },
            size: 3,
            path: path.into(),
            link: None,
        }
    }

    #[test]
    fn record_round_trips() {
        let record = Record {
            snapshot: "20261129T030000Z".into(),
            transferred: 2,
            deleted: 1,
            changed: 3,
            metadata_in_record: false,
            entries: vec![
                entry('d', "dir"),
                entry('f', "dir/a b"),
                entry('l', "odd\\name\nx"),
            ],
        };
        let text = record.to_text();
        insta::assert_snapshot!(text);
        assert_eq!(Record::parse(&text).unwrap(), record);
        // A record that keeps what the server could not: version 2, the
        // true modes, and symlink targets on `L` lines.
        let mut kept = record.clone();
        kept.metadata_in_record = true;
        kept.entries.push(TreeEntry {
            link: Some("Tk9Ud0hFUkUK".into()),
            ..entry('l', "dir/link")
        });
        let text = kept.to_text();
        assert!(text.starts_with("ciphersync-record 2\n"), "{text}");
        assert!(text.contains("\nmetadata record\n"), "{text}");
        assert!(
            text.contains("\nL 644 3 dir/link\tTk9Ud0hFUkUK\n"),
            "{text}"
        );
        assert_eq!(Record::parse(&text).unwrap(), kept);
        // A version-1 record cannot claim it; an `L` line needs a target.
        let claimed = record
            .to_text()
            .replacen("\n\n", "\nmetadata record\n\n", 1);
        assert!(!Record::parse(&claimed).unwrap().metadata_in_record);
        let no_target = format!("{}L 777 3 dir/x\t\n", record.to_text());
        assert!(Record::parse(&no_target).is_err());
    }

    #[test]
    fn damaged_records_are_errors() {
        let good = "ciphersync-record 1\nsnapshot 20261129T030000Z\n\nf 644 3 a\n";
        assert!(Record::parse(good).is_ok());
        for bad in [
            "",
            "something else\n",
            "ciphersync-record 1\nsnapshot nope\n\n",
            "ciphersync-record 1\nsnapshot 20261129T030000Z\n\nx 644 3 a\n",
            "ciphersync-record 1\nsnapshot 20261129T030000Z\n\nf 9z9 3 a\n",
            "ciphersync-record 1\nsnapshot 20261129T030000Z\n\nf 644 3 ../../etc/passwd\n",
            "ciphersync-record 1\nsnapshot 20261129T030000Z\n\nf 644 3 /abs\n",
            "ciphersync-record 1\nsnapshot 20261129T030000Z\n\nf 644\n",
        ] {
            assert!(Record::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rebuild_takes_the_oldest_later_version() {
        let record = Record {
            snapshot: "20260102T000000Z".into(),
            transferred: 0,
            deleted: 0,
            changed: 0,
            metadata_in_record: false,
            entries: vec![
                entry('d', "d"),
                entry('f', "d/a"),
                entry('f', "b"),
                entry('f', "c"),
            ],
        };
        let set = |paths: &[&str]| paths.iter().map(|p| p.to_string()).collect::<BTreeSet<_>>();
        let later = vec![
            ("20260101T000000Z".to_string(), set(&["b"])), // earlier: never used
            ("20260102T000000Z".to_string(), set(&["c"])), // the run itself: state before it
            ("20260103T000000Z".to_string(), set(&["d/a"])),
            ("20260104T000000Z".to_string(), set(&["d/a", "b"])),
        ];
        let plan = plan_rebuild(&record, &later);
        let paths = |k: Option<&str>| plan[&k].iter().map(|e| e.path.as_str()).collect::<Vec<_>>();
        assert_eq!(paths(Some("20260103T000000Z")), ["d/a"]);
        assert_eq!(paths(Some("20260104T000000Z")), ["b"]);
        assert_eq!(paths(None), ["c"]);
        assert_eq!(plan.len(), 3);
    }

    #[test]
    fn retention_keeps_what_the_bounds_say() {
        let ids: Vec<String> = (1..=9).map(|d| format!("2026110{d}T000000Z")).collect();
        let now = parse_snapshot_id("20261110T000000Z").unwrap();
        let keep = |last, days| {
            runs_to_keep(
                &ids,
                &Retention {
                    keep_last: last,
                    keep_days: days,
                },
                now,
            )
            .into_iter()
            .map(|id| id[6..8].to_string())
            .collect::<Vec<_>>()
            .join(",")
        };
        assert_eq!(keep(None, None), "01,02,03,04,05,06,07,08,09");
        assert_eq!(keep(Some(3), None), "07,08,09");
        assert_eq!(keep(None, Some(2)), "08,09");
        // Outside both bounds to go: the union of what each keeps.
        assert_eq!(keep(Some(2), Some(4)), "06,07,08,09");
        assert_eq!(keep(Some(1), Some(0)), "09");
        // The newest run is kept even when every bound has passed it.
        let later = parse_snapshot_id("20271110T000000Z").unwrap();
        let kept = runs_to_keep(
            &ids,
            &Retention {
                keep_last: None,
                keep_days: Some(1),
            },
            later,
        );
        assert_eq!(kept.into_iter().collect::<Vec<_>>(), ["20261109T000000Z"]);
    }

    #[test]
    fn prune_deletes_only_what_no_kept_run_needs() {
        let recorded: Vec<String> = ["03", "05", "07"]
            .iter()
            .map(|d| format!("202611{d}T000000Z"))
            .collect();
        let dirs: Vec<String> = ["03", "04", "05", "06", "07"]
            .iter()
            .map(|d| format!("202611{d}T000000Z"))
            .collect();
        let now = parse_snapshot_id("20261110T000000Z").unwrap();
        let plan = plan_prune(
            &recorded,
            &dirs,
            &Retention {
                keep_last: Some(2),
                keep_days: None,
            },
            now,
        );
        // Run 05 is the oldest kept: it needs the dirs after it (06, 07).
        assert_eq!(plan.records, ["20261103T000000Z"]);
        assert_eq!(
            plan.snapshot_dirs,
            ["20261103T000000Z", "20261104T000000Z", "20261105T000000Z"]
        );
        let none = plan_prune(&recorded, &dirs, &Retention::default(), now);
        assert_eq!(none, PrunePlan::default());
    }
}
