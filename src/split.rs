//! One rsync run split into several, for the sshfs transport and restore.
//!
//! Over sshfs every file costs several SFTP round trips (create the temp
//! file, write, close, chmod, utime, rename; or open, read, close) and one
//! rsync waits for each in turn; at a 20 ms round trip that is most of a
//! backup or a restore. Workers on disjoint lists of files keep several
//! files in flight, and sshfs (`max_conns`) spreads them over its
//! connections.
//!
//! Three phases, each file handled by exactly one rsync:
//!
//! 1. **Structure** (`structure_pass`): one rsync over the whole tree that
//!    transfers no regular file (`--max-size`/`--min-size` are transfer
//!    rules: the skipped files stay in the file list, so `--delete` keeps
//!    them). It creates the directories (writable by their owner for now),
//!    the symlinks, replaces a file that became a directory and, with
//!    `--delete`, deletes everything that is gone: the deleted files reach
//!    the snapshot dir once, from this pass only.
//! 2. **Files** (`files_pass`): the regular files, in `workers` lists
//!    balanced by size plus a fixed cost per file (`Balancer`), one rsync
//!    each with `--files-from` and no `--delete`; a file it replaces goes
//!    to the snapshot dir from that worker only. All members of a hard-link
//!    group go to the same list, so `-H` still sees them together.
//! 3. **Directories** (`directories_pass`): the directories' real modes and
//!    times, which the workers' writes (and phase 1's `u+w`) changed.
//!
//! Every pass uses the same `--backup-dir`; rsync (≥ 3.1) creates its
//! subdirectories race-free (an `EEXIST` from another worker is a dir that
//! is there). The snapshot dir itself is made before the workers start.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::{interrupt, pool, walk};

/// What a file costs a worker beyond its bytes: several round trips, worth
/// this many bytes of transfer at 100 Mbit/s and 10 ms.
const PER_FILE_COST: u64 = 128 * 1024;

/// The regular files of `tree` in `workers` balanced lists, each a nameless
/// scratch file in `scratch_dir` holding NUL-separated paths relative to
/// `tree` (for `--from0 --files-from=-`), read from the start. Empty lists
/// are left out; fewer than two lists mean: do not split.
pub fn file_lists(tree: &Path, workers: usize, scratch_dir: &Path) -> Result<Vec<File>> {
    let mut lists = (0..workers)
        .map(|_| crate::exec::scratch_file(scratch_dir, "split").map(BufWriter::new))
        .collect::<Result<Vec<_>>>()?;
    let mut used = vec![false; workers];
    let mut balancer = Balancer::new(workers);
    for entry in walk::sorted(tree) {
        interrupt::check()?;
        let entry = entry.map_err(|e| walk::error(tree, e))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let meta = entry.metadata().map_err(|e| walk::error(tree, e))?;
        let link = (meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
        let i = balancer.place(meta.len(), link);
        let rel = entry.path().strip_prefix(tree).unwrap_or(entry.path());
        let list = &mut lists[i];
        list.write_all(rel.as_os_str().as_encoded_bytes())
            .and_then(|()| list.write_all(b"\0"))
            .ctx(|| "writing a list of files for the rsync workers")?;
        used[i] = true;
    }
    let mut files = Vec::new();
    for (list, used) in lists.into_iter().zip(used) {
        let mut file = list
            .into_inner()
            .map_err(|e| e.into_error())
            .ctx(|| "writing a list of files for the rsync workers")?;
        if used {
            file.rewind()
                .ctx(|| "rewinding a list of files for the rsync workers")?;
            files.push(file);
        }
    }
    Ok(files)
}

/// Assigns each file, in walk order, to the list with the least work so
/// far: no list ends up more than one file's cost above another. Members
/// of a hard-link group follow the first one.
pub struct Balancer {
    loads: Vec<u64>,
    links: HashMap<(u64, u64), usize>,
}

impl Balancer {
    pub fn new(lists: usize) -> Balancer {
        Balancer {
            loads: vec![0; lists.max(1)],
            links: HashMap::new(),
        }
    }

    /// The list for a file of `size` bytes; `link` is its (device, inode)
    /// when it has other hard links.
    pub fn place(&mut self, size: u64, link: Option<(u64, u64)>) -> usize {
        let lightest = (0..self.loads.len())
            .min_by_key(|&i| self.loads[i])
            .unwrap_or(0);
        let i = match link {
            Some(key) => *self.links.entry(key).or_insert(lightest),
            None => lightest,
        };
        self.loads[i] += size.saturating_add(PER_FILE_COST);
        i
    }
}

/// Runs `pass` on every list, `workers` at a time (the job's
/// `target.connections`; sshfs opens as many connections); after the first
/// failure no new pass starts. The results in no particular order; the
/// first error, if any.
pub fn in_workers<R: Send>(
    lists: Vec<File>,
    workers: usize,
    pass: impl Fn(File) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    pool::map_unordered(lists, workers, pass)
}

/// Phase 1: the whole tree but no regular file's content. No size is both
/// above 1 and below 2 bytes: every regular file is skipped. Directories
/// get `u+w` so that the workers (and, over SFTP, an account that is not
/// root) can write into them; phase 3 gives them their real modes.
pub fn structure_pass() -> Vec<String> {
    ["--max-size=1", "--min-size=2", "--chmod=Du+w"]
        .map(String::from)
        .to_vec()
}

/// Phase 2: the files a list names (on stdin). `--no-implied-dirs`: the
/// parents are phase 1's and phase 3's, never touched by a worker.
pub fn files_pass() -> Vec<String> {
    ["--from0", "--files-from=-", "--no-implied-dirs"]
        .map(String::from)
        .to_vec()
}

/// Phase 3: directories only, with their modes and times.
pub fn directories_pass() -> Vec<String> {
    ["--filter=+ */", "--filter=- *"].map(String::from).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn balancer_evens_out_sizes_and_file_counts() {
        let mut balancer = Balancer::new(3);
        let sizes = [10 << 20, 1, 1, 1, 1, 1, 1, 1, 5 << 20, 5 << 20];
        let placed: Vec<usize> = sizes.iter().map(|&s| balancer.place(s, None)).collect();
        // The large file fills list 0; the small ones go to 1 and 2 until
        // the two 5 MB files come, one each.
        assert_eq!(placed, [0, 1, 2, 1, 2, 1, 2, 1, 2, 1]);
        let spread = balancer.loads.iter().max().unwrap() - balancer.loads.iter().min().unwrap();
        assert!(spread <= (5 << 20) + PER_FILE_COST, "{:?}", balancer.loads);
    }

    #[test]
    fn hard_links_stay_in_one_list() {
        let mut balancer = Balancer::new(4);
        let first = balancer.place(100, Some((1, 42)));
        let others: Vec<usize> = (0..6).map(|_| balancer.place(100, None)).collect();
        assert!(others.contains(&first), "the lists should rotate");
        assert_eq!(balancer.place(100, Some((1, 42))), first);
        assert_ne!(balancer.place(100, Some((1, 43))), first);
    }

    #[test]
    fn lists_name_every_file_once_and_nothing_else() {
        let tree = std::env::temp_dir().join(format!("cs-split-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::create_dir_all(tree.join("one/deep")).unwrap();
        let mut expected = Vec::new();
        for i in 0..40 {
            let rel = match i % 3 {
                0 => format!("one/f{i}"),
                1 => format!("one/deep/line\nbreak {i}"),
                _ => format!("top{i}"),
            };
            std::fs::write(tree.join(&rel), vec![0u8; i * 1000]).unwrap();
            expected.push(rel);
        }
        std::os::unix::fs::symlink("one", tree.join("link")).unwrap();
        let lists = file_lists(&tree, 4, &std::env::temp_dir()).unwrap();
        assert_eq!(lists.len(), 4);
        let mut got = Vec::new();
        for mut list in lists {
            let mut text = String::new();
            list.read_to_string(&mut text).unwrap();
            assert!(text.ends_with('\0'));
            got.extend(text.trim_end_matches('\0').split('\0').map(String::from));
        }
        std::fs::remove_dir_all(&tree).unwrap();
        got.sort();
        expected.sort();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_tree_with_one_file_makes_one_list() {
        let tree = std::env::temp_dir().join(format!("cs-split1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::create_dir_all(tree.join("d")).unwrap();
        std::fs::write(tree.join("d/only"), b"x").unwrap();
        let lists = file_lists(&tree, 4, &std::env::temp_dir()).unwrap();
        std::fs::remove_dir_all(&tree).unwrap();
        assert_eq!(lists.len(), 1);
    }
}
