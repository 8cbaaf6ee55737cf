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
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, Kind, Result};
use crate::interrupt;
use crate::snapshots::Record;

#[derive(Debug, PartialEq, Eq)]
pub struct Estimate {
    /// Files (and symlinks) in the last record.
    pub recorded: u64,
    /// How many of them this run would move into its snapshot.
    pub moved: u64,
}

/// What the local view holds: path -> (size, newest of mtime/ctime in ns).
pub type ViewIndex = HashMap<String, (u64, i128)>;

pub fn index_view(view: &Path) -> Result<ViewIndex> {
    let mut index = HashMap::new();
    for entry in walkdir::WalkDir::new(view).min_depth(1).follow_links(false) {
        interrupt::check()?;
        let entry =
            entry.map_err(|e| Error::new(Kind::Io, format!("walking the encrypted view: {e}")))?;
        if entry.file_type().is_dir() {
            continue;
        }
        let meta = entry
            .metadata()
            .map_err(|e| Error::new(Kind::Io, format!("reading the encrypted view: {e}")))?;
        let changed = (meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128)
            .max(meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128);
        index.insert(
            crate::checksums::relative(view, entry.path()),
            (meta.len(), changed),
        );
    }
    Ok(index)
}

pub fn estimate(last: &Record, view: &ViewIndex, last_start_ns: Option<i128>) -> Estimate {
    let mut estimate = Estimate {
        recorded: 0,
        moved: 0,
    };
    // The user's files only: a directory's diriv follows the directory's
    // mtime, and the config backup uploads is not in the view at all.
    let counted = last
        .entries
        .iter()
        .filter(|e| e.kind != 'd' && !crate::snapshots::is_gocryptfs_metadata(&e.path));
    for entry in counted {
        estimate.recorded += 1;
        let moved = match view.get(&entry.path) {
            None => true,
            Some((size, changed)) => {
                (entry.kind == 'f' && *size != entry.size)
                    || last_start_ns.is_some_and(|start| *changed >= start)
            }
        };
        estimate.moved += u64::from(moved);
    }
    estimate
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
    use crate::remote::TreeEntry;

    fn record(paths: &[(&str, u64)]) -> Record {
        Record {
            snapshot: "20261129T030000Z".into(),
            transferred: 0,
            deleted: 0,
            changed: 0,
            entries: paths
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
                .collect(),
        }
    }

    #[test]
    fn counts_deleted_resized_and_touched_files() {
        let last = record(&[("a", 1), ("b", 2), ("c", 3), ("d", 4)]);
        let view: ViewIndex = [("a", (1, 10)), ("b", (20, 10)), ("c", (3, 500))]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        // d is gone, b changed size, c was touched after the last start (100).
        assert_eq!(
            estimate(&last, &view, Some(100)),
            Estimate {
                recorded: 4,
                moved: 3
            }
        );
        assert_eq!(
            estimate(&last, &view, None),
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
