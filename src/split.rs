//! One rsync run split into several, for the sshfs transport.
//!
//! Over sshfs every file costs several SFTP round trips (create the temp
//! file, write, close, chmod, utime, rename) and one rsync waits for each
//! in turn; at a 20 ms round trip that is most of a backup. Workers on
//! disjoint parts of the tree keep several files in flight, and sshfs
//! (`max_conns`) spreads them over its connections.
//!
//! The parts are the top-level directories of the encrypted view. A first
//! pass syncs the top level only (its files and links, the directories
//! themselves, and the deletion of whatever is gone from the top level);
//! then each worker syncs whole top-level directories with `--delete`.
//! rsync never deletes what its filter excludes, so no pass touches another
//! pass's files. Every pass uses the same `--backup-dir`; below the
//! snapshot dir, which is made before the workers start, their backups go
//! to disjoint subtrees.
//!
//! Limits: a tree with one top-level directory gets one worker; hard links
//! between two top-level directories are stored as separate files.

use std::path::Path;

use crate::error::{IoContext, Result};
use crate::pool;

/// The top-level directories of `tree`, sorted. Empty (one rsync, no
/// split) when a name cannot be written as a filter rule: not UTF-8, or
/// with a line break (plaintext names in a restore).
pub fn top_level_dirs(tree: &Path) -> Result<Vec<String>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(tree).ctx(|| format!("reading {}", tree.display()))? {
        let entry = entry.ctx(|| format!("reading {}", tree.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Ok(Vec::new());
        };
        if name.contains(['\n', '\r']) {
            return Ok(Vec::new());
        }
        let is_dir = entry
            .file_type()
            .ctx(|| format!("reading {}", entry.path().display()))?
            .is_dir();
        if is_dir {
            dirs.push(name);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Runs `pass` on every batch of directories, `workers` at a time (the
/// job's `target.connections`; sshfs opens as many connections); after the
/// first failure no new pass starts. The results in no particular order;
/// the first error, if any.
pub fn in_workers<R: Send>(
    dirs: Vec<String>,
    workers: usize,
    pass: impl Fn(&[String]) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    pool::map_unordered(batches(dirs, workers), workers, |batch| pass(&batch))
}

/// The first pass's filter: nothing below the top level. Perishable (`p`):
/// in a directory that is being deleted (gone from the source, or now a
/// file) the rule does not apply, so its contents are deleted, into the
/// snapshot, with it.
pub fn top_level_pass() -> Vec<String> {
    vec!["--filter=-p /*/*".to_string()]
}

/// A worker's filter: these top-level directories in full, nothing else.
pub fn directories_pass(dirs: &[String]) -> Vec<String> {
    dirs.iter()
        .map(|dir| format!("--filter=+ /{}/", escape_pattern(dir)))
        .chain(["--filter=- /*".to_string()])
        .collect()
}

/// The directories in batches for the workers to take one at a time: about
/// four batches a worker, so that one large directory does not leave the
/// other workers idle at the end, and few rsync processes for a wide tree.
pub fn batches(dirs: Vec<String>, workers: usize) -> Vec<Vec<String>> {
    let size = dirs.len().div_ceil(workers * 4).max(1);
    dirs.chunks(size).map(<[String]>::to_vec).collect()
}

/// rsync filter patterns treat `*`, `?`, `[` and `\` as wildcards.
fn escape_pattern(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '*' | '?' | '[' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_filters_name_whole_directories() {
        let dirs = ["Ab-c".to_string(), "we*rd[1]".to_string()];
        assert_eq!(
            directories_pass(&dirs),
            [
                "--filter=+ /Ab-c/",
                "--filter=+ /we\\*rd\\[1]/",
                "--filter=- /*"
            ]
        );
    }

    #[test]
    fn batches_cover_every_directory_once() {
        let dirs: Vec<String> = (0..37).map(|i| format!("d{i:02}")).collect();
        let batches = batches(dirs.clone(), 4);
        assert_eq!(batches.len(), 13);
        assert_eq!(batches.concat(), dirs);
        assert_eq!(super::batches(vec!["one".into()], 4), [["one"]]);
    }
}
