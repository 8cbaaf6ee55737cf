//! The deletion guard: before rsync runs, estimate how many remote files the
//! run would move into its snapshot (replaced or deleted) and refuse when that
//! is more than the allowed share. An empty or unmounted source, a wrong
//! source path or a ransomware-scrambled tree then stops at the guard instead
//! of turning the whole mirror into one big snapshot.
//!
//! The estimate compares the local encrypted view (a local stat walk, no
//! network) with the record of the last run: a recorded file is moved when it
//! is gone from the view, or when its size changed or it was modified after
//! the last backup started.

use std::collections::HashMap;

use crate::checksums::{Stamp, path_key};
use crate::error::{Error, Kind, Result};
use crate::remote::TreeEntry;
use crate::{interrupt, walk};

#[derive(Debug, PartialEq, Eq)]
pub struct Estimate {
    /// Files (and symlinks) in the last record.
    pub recorded: u64,
    /// How many of them this run would move into its snapshot.
    pub moved: u64,
}

/// What the local view holds: path key -> (size, newest of mtime/ctime in
/// ns). Keys, not paths: 24 bytes a file however long its name.
pub type ViewIndex = HashMap<u64, (u64, i64)>;

pub fn index_view(view: &std::path::Path) -> Result<ViewIndex> {
    let mut index = HashMap::new();
    for entry in walkdir::WalkDir::new(view).min_depth(1).follow_links(false) {
        interrupt::check()?;
        let entry = entry.map_err(|e| walk::error(view, e))?;
        if entry.file_type().is_dir() {
            continue;
        }
        let meta = entry.metadata().map_err(|e| walk::error(view, e))?;
        let stamp = Stamp::of(&meta);
        index.insert(
            path_key(&walk::relative(view, entry.path())),
            (stamp.size, stamp.changed_ns()),
        );
    }
    Ok(index)
}

/// Passes once over the last record's entries.
pub fn estimate(
    last: impl Iterator<Item = Result<TreeEntry>>,
    view: &ViewIndex,
    last_start_ns: Option<i128>,
) -> Result<Estimate> {
    let mut estimate = Estimate {
        recorded: 0,
        moved: 0,
    };
    for entry in last {
        let entry = entry?;
        // The user's files only: a directory's diriv follows the directory's
        // mtime, and the config backup uploads is not in the view at all.
        if entry.kind == 'd' || crate::snapshots::is_gocryptfs_metadata(&entry.path) {
            continue;
        }
        estimate.recorded += 1;
        let moved = match view.get(&path_key(&entry.path)) {
            None => true,
            Some((size, changed)) => {
                (entry.kind == 'f' && *size != entry.size)
                    || last_start_ns.is_some_and(|start| i128::from(*changed) >= start)
            }
        };
        estimate.moved += u64::from(moved);
    }
    Ok(estimate)
}

/// Refuses when the estimate is over `percent` of the recorded files.
pub fn check(job_name: &str, estimate: &Estimate, percent: u8) -> Result<()> {
    if percent >= 100 || estimate.recorded == 0 {
        return Ok(());
    }
    if estimate.moved * 100 <= estimate.recorded * u64::from(percent) {
        return Ok(());
    }
    Err(Error::new(
        Kind::Refused,
        format!(
            "job {job_name}: this backup would replace or delete {} of the {} files on the target, \
             more than max_delete_percent ({percent}%); nothing was changed. If this is intended, run \
             `ciphersync backup {job_name} --max-delete 100` (or raise max_delete_percent)",
            estimate.moved, estimate.recorded
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(paths: &[(&str, u64)]) -> Vec<TreeEntry> {
        paths
            .iter()
            .map(|(p, size)| TreeEntry {
                kind: 'f',
                mode: 0o644,
                size: *size,
                path: p.to_string(),
            })
            .chain([TreeEntry {
                kind: 'd',
                mode: 0o755,
                size: 0,
                path: "dir".into(),
            }])
            .collect()
    }

    fn entries(record: &[TreeEntry]) -> impl Iterator<Item = Result<TreeEntry>> + '_ {
        record.iter().cloned().map(Ok)
    }

    #[test]
    fn counts_deleted_resized_and_touched_files() {
        let last = record(&[("a", 1), ("b", 2), ("c", 3), ("d", 4)]);
        let view: ViewIndex = [("a", (1, 10)), ("b", (20, 10)), ("c", (3, 500))]
            .map(|(k, v)| (path_key(k), v))
            .into();
        // d is gone, b changed size, c was touched after the last start (100).
        assert_eq!(
            estimate(entries(&last), &view, Some(100)).unwrap(),
            Estimate {
                recorded: 4,
                moved: 3
            }
        );
        assert_eq!(
            estimate(entries(&last), &view, None).unwrap(),
            Estimate {
                recorded: 4,
                moved: 2
            }
        );
    }

    #[test]
    fn refuses_over_the_share_and_yields_to_the_override() {
        let half = Estimate {
            recorded: 10,
            moved: 5,
        };
        let most = Estimate {
            recorded: 10,
            moved: 6,
        };
        assert!(check("docs", &half, 50).is_ok());
        let err = check("docs", &most, 50).unwrap_err();
        assert_eq!(err.kind, Kind::Refused);
        assert!(err.message.contains("--max-delete 100"), "{}", err.message);
        assert!(check("docs", &most, 100).is_ok());
        assert!(
            check(
                "docs",
                &Estimate {
                    recorded: 0,
                    moved: 0
                },
                0
            )
            .is_ok()
        );
    }
}
