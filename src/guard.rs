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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::checksums::{Stamp, path_key};
use crate::error::{Error, IoContext, Kind, Result};
use crate::target::TreeEntry;
use crate::{interrupt, pool, walk};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Files (and symlinks) in the last record.
    pub recorded: u64,
    /// How many of them this run would move into its snapshot.
    pub moved: u64,
    /// Files (and symlinks) in the view that the last record lacks.
    pub added: u64,
}

impl Estimate {
    /// Nothing to send or delete but, perhaps, directories and modes.
    pub fn nothing_to_move(&self) -> bool {
        self.moved == 0 && self.added == 0
    }
}

/// What the local view holds: path key -> (size, newest of mtime/ctime in
/// ns). Keys, not paths: 24 bytes a file however long its name.
pub type ViewIndex = HashMap<u64, (u64, i64)>;

/// Stats every entry of the view. Each stat is a round trip through FUSE
/// to gocryptfs, so the top-level entries are shared among a few threads.
pub fn index_view(view: &Path) -> Result<ViewIndex> {
    let top: Vec<PathBuf> = std::fs::read_dir(view)
        .ctx(|| format!("reading {}", view.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .ctx(|| format!("reading {}", view.display()))?;
    let parts = pool::fold(top, INDEX_THREADS, ViewIndex::new, |index, subtree| {
        index_subtree(view, &subtree, index)
    })?;
    let mut index = ViewIndex::new();
    for part in parts {
        index.extend(part);
    }
    Ok(index)
}

const INDEX_THREADS: usize = 4;

fn index_subtree(view: &Path, subtree: &Path, index: &mut ViewIndex) -> Result<()> {
    // walkdir follows a root that is a symlink; a top-level link is a file.
    let meta =
        std::fs::symlink_metadata(subtree).ctx(|| format!("reading {}", subtree.display()))?;
    if !meta.is_dir() {
        insert(index, &walk::relative(view, subtree), &meta);
        return Ok(());
    }
    for entry in walkdir::WalkDir::new(subtree).follow_links(false) {
        interrupt::check()?;
        let entry = entry.map_err(|e| walk::error(view, e))?;
        if entry.file_type().is_dir() {
            continue;
        }
        let meta = entry.metadata().map_err(|e| walk::error(view, e))?;
        insert(index, &walk::relative(view, entry.path()), &meta);
    }
    Ok(())
}

/// The user's files only, as the estimate counts them.
fn insert(index: &mut ViewIndex, rel: &str, meta: &std::fs::Metadata) {
    if !crate::crypt::is_gocryptfs_metadata(rel) {
        let stamp = Stamp::of(meta);
        index.insert(path_key(rel), (stamp.size, stamp.changed_ns()));
    }
}

/// Passes once over the last record's entries.
pub fn estimate(
    last: impl Iterator<Item = Result<TreeEntry>>,
    view: &ViewIndex,
    last_start_ns: Option<i128>,
) -> Result<Estimate> {
    let mut estimate = Estimate::default();
    let mut found = HashSet::new();
    for entry in last {
        let entry = entry?;
        // The user's files only: a directory's diriv follows the directory's
        // mtime, and the config backup uploads is not in the view at all.
        if entry.kind == 'd' || crate::crypt::is_gocryptfs_metadata(&entry.path) {
            continue;
        }
        estimate.recorded += 1;
        let key = path_key(&entry.path);
        let moved = match view.get(&key) {
            None => true,
            Some((size, changed)) => {
                found.insert(key);
                (entry.kind == 'f' && *size != entry.size)
                    || last_start_ns.is_some_and(|start| i128::from(*changed) >= start)
            }
        };
        estimate.moved += u64::from(moved);
    }
    estimate.added = view.keys().filter(|k| !found.contains(k)).count() as u64;
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

/// The gocryptfs release from which `-reverse` shows every
/// `gocryptfs.diriv` and `gocryptfs.longname.*.name` file with its ctime and
/// mtime 10 s later than before (gocryptfs issue 802): so that sync tools
/// replace the copies the bug may have damaged, the first backup made with
/// it re-sends all of them once, and their old copies go into that run's
/// snapshot.
pub const METADATA_RESEND_RELEASE: [u32; 3] = [2, 5, 0];

/// What a backup learns from the gocryptfs release of the last successful
/// backup and its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GocryptfsChange {
    /// Nothing the run must know: no earlier backup, the same side of
    /// 2.5.0, or this run's release unknown.
    Same,
    /// The release crossed 2.5.0 upwards: this run re-sends every
    /// gocryptfs.diriv and .name file once. Expected; the guard lets it
    /// through (`estimate` never counts those files) with a note.
    CrossedResend { from: [u32; 3], to: [u32; 3] },
    /// The last backup recorded no release (made before ciphersync kept
    /// it) and this one is 2.5.0 or later: it may have crossed. An
    /// unchanged source then proves nothing about the view.
    MaybeCrossed { to: [u32; 3] },
}

impl GocryptfsChange {
    /// Decides from the last successful backup (None: there is none; Some
    /// of None: it recorded no release) and this run's release.
    pub fn between(last: Option<Option<[u32; 3]>>, now: Option<[u32; 3]>) -> GocryptfsChange {
        let (Some(last), Some(now)) = (last, now) else {
            return GocryptfsChange::Same;
        };
        if now < METADATA_RESEND_RELEASE {
            return GocryptfsChange::Same;
        }
        match last {
            Some(from) if from < METADATA_RESEND_RELEASE => {
                GocryptfsChange::CrossedResend { from, to: now }
            }
            Some(_) => GocryptfsChange::Same,
            None => GocryptfsChange::MaybeCrossed { to: now },
        }
    }

    /// The view may differ from the last backup's although the source
    /// does not: the nothing-to-send shortcut must not skip rsync.
    pub fn view_may_differ(self) -> bool {
        self != GocryptfsChange::Same
    }

    /// The one-line note of a run that crossed 2.5.0.
    pub fn note(self, job_name: &str) -> Option<String> {
        let GocryptfsChange::CrossedResend { from, to } = self else {
            return None;
        };
        let v = |r: [u32; 3]| format!("{}.{}.{}", r[0], r[1], r[2]);
        Some(format!(
            "job {job_name}: gocryptfs went from {} to {} since the last backup: this run \
             re-sends every gocryptfs.diriv and .name file once (2.5.0 moved their times so that \
             copies damaged by gocryptfs issue 802 are replaced; the old ones go to this run's \
             snapshot); expected, and not counted by the deletion guard",
            v(from),
            v(to)
        ))
    }
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
                link: None,
            })
            .chain([TreeEntry {
                kind: 'd',
                mode: 0o755,
                size: 0,
                path: "dir".into(),
                link: None,
            }])
            .collect()
    }

    fn entries(record: &[TreeEntry]) -> impl Iterator<Item = Result<TreeEntry>> + '_ {
        record.iter().cloned().map(Ok)
    }

    #[test]
    fn counts_deleted_resized_and_touched_files() {
        let last = record(&[("a", 1), ("b", 2), ("c", 3), ("d", 4)]);
        let view: ViewIndex = [
            ("a", (1, 10)),
            ("b", (20, 10)),
            ("c", (3, 500)),
            ("new", (1, 9)),
        ]
        .map(|(k, v)| (path_key(k), v))
        .into();
        // d is gone, b changed size, c was touched after the last start (100).
        assert_eq!(
            estimate(entries(&last), &view, Some(100)).unwrap(),
            Estimate {
                recorded: 4,
                moved: 3,
                added: 1,
            }
        );
        assert_eq!(
            estimate(entries(&last), &view, None).unwrap(),
            Estimate {
                recorded: 4,
                moved: 2,
                added: 1,
            }
        );
    }

    /// Files and symlinks at every depth, from every thread; no directories.
    #[test]
    fn the_index_holds_every_file_and_link() {
        let root = std::env::temp_dir().join(format!("ciphersync-index-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut expected = Vec::new();
        for d in 0..9 {
            std::fs::create_dir_all(root.join(format!("d{d}/sub"))).unwrap();
            for f in 0..d {
                let rel = format!("d{d}/sub/f{f}");
                std::fs::write(root.join(&rel), vec![0u8; f]).unwrap();
                expected.push((rel, f as u64));
            }
        }
        std::fs::write(root.join("top"), "12345").unwrap();
        expected.push(("top".into(), 5));
        // gocryptfs' own files are not the user's: not indexed.
        std::fs::write(root.join("d1/gocryptfs.diriv"), "iv").unwrap();
        // A top-level link whose target does not exist (like an encrypted one).
        std::os::unix::fs::symlink("no/such/target", root.join("link")).unwrap();
        let index = index_view(&root).unwrap();
        assert_eq!(index.len(), expected.len() + 1);
        assert!(index.contains_key(&path_key("link")));
        assert!(!index.contains_key(&path_key("d3/sub")));
        assert!(!index.contains_key(&path_key("d1/gocryptfs.diriv")));
        for (rel, size) in expected {
            assert_eq!(index.get(&path_key(&rel)).map(|v| v.0), Some(size), "{rel}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_gocryptfs_upgrade_past_2_5_0_is_recognised() {
        use GocryptfsChange::*;
        let old = Some([2, 4, 0]);
        let new = Some([2, 6, 1]);
        // Crossed upwards since the last backup: the note names both.
        let crossed = GocryptfsChange::between(Some(old), new);
        assert_eq!(
            crossed,
            CrossedResend {
                from: [2, 4, 0],
                to: [2, 6, 1]
            }
        );
        assert!(crossed.view_may_differ());
        let note = crossed.note("docs").unwrap();
        assert!(note.contains("from 2.4.0 to 2.6.1"), "{note}");
        assert!(!note.contains('\n'), "one line: {note}");
        // Exactly at 2.5.0 counts; a build of 2.4.x from git does not.
        assert!(matches!(
            GocryptfsChange::between(Some(Some([2, 4, 9])), Some([2, 5, 0])),
            CrossedResend { .. }
        ));
        // Both before, both after, or a downgrade: nothing to say.
        assert_eq!(GocryptfsChange::between(Some(old), Some([2, 4, 9])), Same);
        assert_eq!(GocryptfsChange::between(Some(new), Some([2, 5, 4])), Same);
        assert_eq!(GocryptfsChange::between(Some(new), old), Same);
        // No earlier backup (it sends everything anyway), or this run's
        // release unknown.
        assert_eq!(GocryptfsChange::between(None, new), Same);
        assert_eq!(GocryptfsChange::between(Some(old), None), Same);
        assert_eq!(Same.note("docs"), None);
        assert!(!Same.view_may_differ());
        // A record from before releases were kept: maybe crossed, no note.
        let maybe = GocryptfsChange::between(Some(None), new);
        assert_eq!(maybe, MaybeCrossed { to: [2, 6, 1] });
        assert!(maybe.view_may_differ());
        assert_eq!(maybe.note("docs"), None);
        assert_eq!(GocryptfsChange::between(Some(None), old), Same);
    }

    /// The run after the upgrade: every diriv and .name file of the view
    /// is newer than the last start (rsync re-sends them all, and moves
    /// the old copies into the snapshot), the user's files are unchanged.
    /// The record lists those files; the view index never holds them
    /// (`the_index_holds_every_file_and_link`). The guard counts nothing,
    /// even at max_delete_percent 0: the run is let through.
    #[test]
    fn the_metadata_resend_is_not_counted() {
        let mut last = record(&[("Aa/Bb", 10), ("Cc", 20)]);
        let metadata = [
            "gocryptfs.diriv",
            "Aa/gocryptfs.diriv",
            "Aa/gocryptfs.longname.0123456789012345678901234567890123456789012.name",
        ];
        for path in metadata {
            last.push(TreeEntry {
                kind: 'f',
                mode: 0o444,
                size: 16,
                path: path.into(),
                link: None,
            });
        }
        let view: ViewIndex = [("Aa/Bb", (10, 50)), ("Cc", (20, 50))]
            .map(|(k, v)| (path_key(k), v))
            .into();
        let estimate = estimate(entries(&last), &view, Some(100)).unwrap();
        assert_eq!(
            estimate,
            Estimate {
                recorded: 2,
                moved: 0,
                added: 0,
            }
        );
        assert!(check("docs", &estimate, 0).is_ok());
    }

    #[test]
    fn refuses_over_the_share_and_yields_to_the_override() {
        let half = Estimate {
            recorded: 10,
            moved: 5,
            added: 0,
        };
        let most = Estimate {
            recorded: 10,
            moved: 6,
            added: 0,
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
                    moved: 0,
                    added: 0,
                },
                0
            )
            .is_ok()
        );
    }
}
