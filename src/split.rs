//! One rsync run split into several, for the sshfs transport and restore.
//!
//! Over sshfs every file costs several SFTP round trips (create the temp
//! file, write, close, chmod, utime, rename; or open, read, close) and one
//! rsync waits for each in turn; at a 20 ms round trip that is most of a
//! backup or a restore. Workers on disjoint sets of directories keep
//! several files in flight, and sshfs (`max_conns`) spreads them over its
//! connections.
//!
//! Three phases; the contents of each directory are handled by exactly one
//! rsync:
//!
//! 1. **Directories** (`directories_pass(true)`): every directory, nothing
//!    else, made writable by its owner for now (so that the workers can
//!    write into a read-only one). A directory that replaces a file or a
//!    symlink replaces it here (into the snapshot).
//! 2. **Contents** (`contents_pass`): `workers` lists of directories,
//!    balanced by the bytes of their files plus a fixed cost per file
//!    (`Balancer`), one rsync each. It copies each listed directory's own
//!    entries (`--dirs` without recursion, `--files-from`) and, with
//!    `--delete`, deletes what is gone from it: a deleted or replaced
//!    entry reaches the snapshot dir from that worker only. rsync reads
//!    each directory whole on both sides, as a recursive run does, so the
//!    attributes sshfs caches from the listing spare a round trip per file.
//!    Directories that share a hard-linked file go to the same list, so
//!    `-H` keeps the link.
//! 3. **Directories again** (`directories_pass(false)`): their real modes
//!    and times, which the workers' writes (and phase 1) changed.
//!
//! Phases 1 and 3 name every directory in a list too (`--dirs`, no
//! trailing slash: the directory itself, not its entries), so that they
//! cost a stat per directory and no second reading of every listing:
//! through gocryptfs over sshfs each listing costs several round trips.
//!
//! Every pass uses the same `--backup-dir`; rsync (≥ 3.1) creates its
//! subdirectories race-free (an `EEXIST` from another worker is a dir that
//! is there). The snapshot dir itself is made before the workers start.
//! Limit: one directory is one worker's, however many files it holds.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::{interrupt, pool};

/// rsync workers per sshfs connection, and at most this many in all.
///
/// A worker spends most of its time waiting for SFTP round trips, one at a
/// time (about 20 per new file: bench/analysis.md, "Issue 14: round
/// trips per file over sshfs"), while one connection carries the requests
/// of several workers at once: SFTP tags each request, and sshfs sends a
/// request as soon as a worker makes it. More workers than connections
/// keep more files in flight without another ssh session, so the
/// connection budget (budget.rs) does not bound them. The cap: sshfs
/// serves about 10 requests at once (its FUSE threads), so 32 workers
/// gained a tenth over 16 for twice the processes (three per rsync).
const WORKERS_PER_CONNECTION: usize = 4;
const MAX_WORKERS: usize = 16;

/// The rsync workers of the sshfs transport over `connections` sshfs
/// connections: never fewer than the connections.
pub fn workers_for(connections: usize) -> usize {
    (connections * WORKERS_PER_CONNECTION)
        .min(MAX_WORKERS)
        .max(connections)
}

/// What a file costs a worker beyond its bytes: several round trips, worth
/// this many bytes of transfer at 100 Mbit/s and 10 ms.
pub const PER_FILE_COST: u64 = 128 * 1024;

/// The lists of one split run, each a nameless scratch file holding
/// NUL-separated paths relative to the tree (for `--from0 --files-from=-`),
/// read from the start.
pub struct Plan {
    /// Phase 2: one list of `dir/` entries (`./` for the top) per worker;
    /// fewer than two mean: do not split.
    pub workers: Vec<File>,
    /// Phase 1: every directory below the top.
    pub before: File,
    /// Phase 3: every directory, the top as `.`.
    pub after: File,
}

/// Walks `tree` and deals its directories out to at most `workers` lists,
/// balanced (see `Plan`); the lists are scratch files in `scratch_dir`.
pub fn plan(tree: &Path, workers: usize, scratch_dir: &Path) -> Result<Plan> {
    let mut balancer = Balancer::new(workers);
    let mut dirs = Vec::new();
    for (dir, listing) in walk_dirs(tree, PathBuf::new(), workers.max(WALK_THREADS), false)? {
        let unit = balancer.add_unit();
        balancer.add_cost(unit, listing.cost);
        for key in listing.links {
            balancer.link(unit, key);
        }
        dirs.push(dir);
    }
    let workers = balancer
        .assign()
        .into_iter()
        .map(|group| write_list(scratch_dir, group.iter().map(|&u| contents_entry(&dirs[u]))))
        .collect::<Result<Vec<_>>>()?;
    let below_top = || {
        dirs.iter()
            .skip(1)
            .map(|d| d.as_os_str().as_encoded_bytes().to_vec())
    };
    Ok(Plan {
        workers,
        before: write_list(scratch_dir, below_top())?,
        after: write_list(
            scratch_dir,
            std::iter::once(b".".to_vec()).chain(below_top()),
        )?,
    })
}

/// Threads for the walk at least: each listing through gocryptfs over sshfs
/// waits for several round trips.
const WALK_THREADS: usize = 4;

/// What the walk keeps of one directory.
#[derive(Default)]
struct Listing {
    subdirs: Vec<PathBuf>,
    /// Of its regular files: bytes plus `PER_FILE_COST` each.
    cost: u64,
    /// (device, inode) of its files that have other hard links.
    links: Vec<(u64, u64)>,
    /// Its entries other than directories, when the walk keeps them.
    leaves: Vec<Leaf>,
}

/// A file, symlink or other non-directory, as a unit of its own.
struct Leaf {
    path: PathBuf,
    cost: u64,
    link: Option<(u64, u64)>,
}

/// Every directory of `tree` from `start` down (the top as an empty path)
/// with its listing, parents before children; the directories of each
/// level are read on `threads` threads. Symlinks are not followed. With
/// `leaves`, each listing keeps its other entries too.
fn walk_dirs(
    tree: &Path,
    start: PathBuf,
    threads: usize,
    leaves: bool,
) -> Result<Vec<(PathBuf, Listing)>> {
    let mut all = Vec::new();
    let mut level = vec![start];
    while !level.is_empty() {
        interrupt::check()?;
        let listed = pool::map_unordered(level, threads, |rel| {
            list_dir(tree, &rel, leaves).map(|listing| (rel, listing))
        })?;
        level = listed
            .iter()
            .flat_map(|(_, l)| l.subdirs.iter().cloned())
            .collect();
        all.extend(listed);
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(all)
}

fn list_dir(tree: &Path, rel: &Path, keep_leaves: bool) -> Result<Listing> {
    let dir = tree.join(rel);
    let reading = || format!("reading {}", dir.display());
    let mut listing = Listing::default();
    for entry in std::fs::read_dir(&dir).ctx(reading)? {
        let entry = entry.ctx(reading)?;
        let kind = entry.file_type().ctx(reading)?;
        if kind.is_dir() {
            listing.subdirs.push(rel.join(entry.file_name()));
            continue;
        }
        let mut leaf = Leaf {
            path: rel.join(entry.file_name()),
            cost: PER_FILE_COST,
            link: None,
        };
        if kind.is_file() {
            let meta = entry.metadata().ctx(reading)?;
            leaf.cost = meta.len().saturating_add(PER_FILE_COST);
            leaf.link = (meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
            listing.cost += leaf.cost;
            listing.links.extend(leaf.link);
        }
        if keep_leaves {
            listing.leaves.push(leaf);
        }
    }
    Ok(listing)
}

/// The plan of a restore of some paths of `tree` (relative, checked to
/// lead through no symlink): the same three phases, but phase 2's lists
/// name files and symlinks, not directories. A restore writes into an
/// empty directory and deletes nothing, so the entries of one directory
/// may go to several workers: the one directory of a path restore is not
/// one worker's. Phases 1 and 3 name the paths' parents too, parents
/// first, as `--relative` would have made them. Hard-linked files share a
/// list. Use `contents_pass_of_files` for phase 2.
pub fn plan_paths(
    tree: &Path,
    paths: &[PathBuf],
    workers: usize,
    scratch_dir: &Path,
) -> Result<Plan> {
    let mut dirs = Vec::new();
    let mut leaves = Vec::new();
    for path in paths {
        dirs.extend(
            path.ancestors()
                .skip(1)
                .filter(|a| !a.as_os_str().is_empty())
                .map(Path::to_path_buf),
        );
        let full = tree.join(path);
        let meta =
            std::fs::symlink_metadata(&full).ctx(|| format!("reading {}", full.display()))?;
        if !meta.is_dir() {
            leaves.push(Leaf {
                path: path.clone(),
                cost: meta.len().saturating_add(PER_FILE_COST),
                link: (meta.is_file() && meta.nlink() > 1).then(|| (meta.dev(), meta.ino())),
            });
            continue;
        }
        for (dir, listing) in walk_dirs(tree, path.clone(), workers.max(WALK_THREADS), true)? {
            dirs.push(dir);
            leaves.extend(listing.leaves);
        }
    }
    // A path named twice, or inside another named one, is copied once.
    dirs.sort();
    dirs.dedup();
    leaves.sort_by(|a, b| a.path.cmp(&b.path));
    leaves.dedup_by(|a, b| a.path == b.path);
    let mut balancer = Balancer::new(workers);
    for leaf in &leaves {
        let unit = balancer.add_unit();
        balancer.add_cost(unit, leaf.cost);
        if let Some(key) = leaf.link {
            balancer.link(unit, key);
        }
    }
    let bytes = |p: &PathBuf| p.as_os_str().as_encoded_bytes().to_vec();
    let workers = balancer
        .assign()
        .into_iter()
        .map(|group| write_list(scratch_dir, group.iter().map(|&u| bytes(&leaves[u].path))))
        .collect::<Result<Vec<_>>>()?;
    Ok(Plan {
        workers,
        before: write_list(scratch_dir, dirs.iter().map(bytes))?,
        after: write_list(scratch_dir, dirs.iter().map(bytes))?,
    })
}

/// `dir/` (`./` for the top): with `--dirs`, rsync copies the entries of a
/// directory named with a trailing slash, and none deeper.
pub fn contents_entry(dir: &Path) -> Vec<u8> {
    let mut entry = dir.as_os_str().as_encoded_bytes().to_vec();
    if entry.is_empty() {
        entry.push(b'.');
    }
    entry.push(b'/');
    entry
}

/// A scratch file of NUL-terminated entries, read from the start.
pub fn write_list(scratch_dir: &Path, entries: impl Iterator<Item = Vec<u8>>) -> Result<File> {
    let what = "a list of directories for rsync";
    let mut list = BufWriter::new(crate::exec::scratch_file(scratch_dir, "split")?);
    for entry in entries {
        list.write_all(&entry)
            .and_then(|()| list.write_all(b"\0"))
            .ctx(|| format!("writing {what}"))?;
    }
    let mut file = list
        .into_inner()
        .map_err(|e| e.into_error())
        .ctx(|| format!("writing {what}"))?;
    file.rewind().ctx(|| format!("rewinding {what}"))?;
    Ok(file)
}

/// Directories (units) with the cost of their files, joined where they
/// share a hard-linked file, then dealt out largest first, each to the
/// list with the least work so far.
pub struct Balancer {
    lists: usize,
    costs: Vec<u64>,
    /// Union-find: the unit each unit was joined to.
    joined: Vec<usize>,
    links: HashMap<(u64, u64), usize>,
}

impl Balancer {
    pub fn new(lists: usize) -> Balancer {
        Balancer {
            lists: lists.max(1),
            costs: Vec::new(),
            joined: Vec::new(),
            links: HashMap::new(),
        }
    }

    pub fn add_unit(&mut self) -> usize {
        self.joined.push(self.costs.len());
        self.costs.push(0);
        self.costs.len() - 1
    }

    pub fn add_cost(&mut self, unit: usize, cost: u64) {
        self.costs[unit] = self.costs[unit].saturating_add(cost);
    }

    /// `unit` holds a file with other hard links, (device, inode) `key`:
    /// it joins the unit that holds the first one seen.
    pub fn link(&mut self, unit: usize, key: (u64, u64)) {
        let first = *self.links.entry(key).or_insert(unit);
        let (a, b) = (self.root(first), self.root(unit));
        self.joined[b] = a;
    }

    fn root(&mut self, mut unit: usize) -> usize {
        while self.joined[unit] != unit {
            self.joined[unit] = self.joined[self.joined[unit]];
            unit = self.joined[unit];
        }
        unit
    }

    /// The units in at most `lists` non-empty groups.
    pub fn assign(mut self) -> Vec<Vec<usize>> {
        let mut groups: HashMap<usize, (u64, Vec<usize>)> = HashMap::new();
        for unit in 0..self.costs.len() {
            let root = self.root(unit);
            let group = groups.entry(root).or_default();
            group.0 += self.costs[unit];
            group.1.push(unit);
        }
        let mut groups: Vec<(u64, Vec<usize>)> = groups.into_values().collect();
        groups.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut lists = vec![(0u64, Vec::new()); self.lists];
        for (cost, units) in groups {
            let lightest = (0..lists.len()).min_by_key(|&i| lists[i].0).unwrap_or(0);
            lists[lightest].0 += cost;
            lists[lightest].1.extend(units);
        }
        let mut out: Vec<Vec<usize>> = lists
            .into_iter()
            .map(|(_, mut units)| {
                units.sort_unstable();
                units
            })
            .filter(|units| !units.is_empty())
            .collect();
        out.sort();
        out
    }
}

/// Runs `pass` on every list, `workers` at a time (backup: `workers_for`
/// the sshfs connections the budget gives, budget.rs); after the first
/// failure no new pass starts. The results in no particular order; the
/// first error, if any.
pub fn in_workers<T: Send, R: Send>(
    lists: Vec<T>,
    workers: usize,
    pass: impl Fn(T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    pool::map_unordered(lists, workers, pass)
}

/// Phases 1 and 3: the directories their list names (on stdin), each
/// alone. Phase 1 (`writable`) gives them `u+w` until phase 3 applies their
/// real modes; phase 3's `.` also names the top's entries, but no size is
/// both above 1 and below 2 bytes: no regular file is copied again.
pub fn directories_pass(writable: bool) -> Vec<String> {
    let last: &[&str] = match writable {
        true => &["--chmod=Du+w"],
        false => &["--max-size=1", "--min-size=2"],
    };
    [
        "--no-recursive",
        "--dirs",
        "--from0",
        "--files-from=-",
        "--no-implied-dirs",
    ]
    .iter()
    .chain(last)
    .map(|o| o.to_string())
    .collect()
}

/// Phase 2: the entries of the directories a list names (on stdin), none
/// deeper. `--no-implied-dirs`: their parents are other workers'.
pub fn contents_pass() -> Vec<String> {
    [
        "--no-recursive",
        "--dirs",
        "--from0",
        "--files-from=-",
        "--no-implied-dirs",
        "--chmod=Du+w",
    ]
    .map(String::from)
    .to_vec()
}

/// Phase 2 of `plan_paths`: the files and symlinks a list names (on
/// stdin), into the directories phase 1 made.
pub fn contents_pass_of_files() -> Vec<String> {
    ["--from0", "--files-from=-", "--no-implied-dirs"]
        .map(String::from)
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A unit per size: one file of that size, none for 0.
    fn balancer(sizes: &[u64]) -> Balancer {
        let mut balancer = Balancer::new(3);
        for &size in sizes {
            let unit = balancer.add_unit();
            if size > 0 {
                balancer.add_cost(unit, size + PER_FILE_COST);
            }
        }
        balancer
    }

    #[test]
    fn several_workers_share_each_connection_up_to_a_cap() {
        assert_eq!(workers_for(1), 4);
        assert_eq!(workers_for(4), 16);
        assert_eq!(workers_for(8), 16);
        // A job that asks for more connections keeps one worker each.
        assert_eq!(workers_for(32), 32);
    }

    #[test]
    fn largest_directories_are_dealt_first_to_the_lightest_list() {
        let mb = 1 << 20;
        let lists = balancer(&[mb, 10 * mb, 2 * mb, 5 * mb, 5 * mb, 0]).assign();
        // 10 | 5 + 2 | 5 + 1 + the empty one (MB)
        assert_eq!(lists, [vec![0, 4, 5], vec![1], vec![2, 3]]);
    }

    #[test]
    fn directories_sharing_a_hard_link_stay_in_one_list() {
        let mut balancer = balancer(&[100, 100, 100, 100, 100, 100]);
        balancer.link(1, (1, 42));
        balancer.link(4, (1, 42));
        let lists = balancer.assign();
        assert_eq!(lists.len(), 3);
        assert!(
            lists.iter().any(|l| l.contains(&1) && l.contains(&4)),
            "{lists:?}"
        );
        assert_eq!(lists.concat().len(), 6);
    }

    #[test]
    fn lists_name_every_directory_once() {
        let tree = std::env::temp_dir().join(format!("cs-split-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tree);
        for dir in ["one/deep", "one/line\nbreak", "two", "empty"] {
            std::fs::create_dir_all(tree.join(dir)).unwrap();
        }
        for (i, file) in ["top", "one/a", "one/deep/b", "one/line\nbreak/c", "two/d"]
            .iter()
            .enumerate()
        {
            std::fs::write(tree.join(file), vec![0u8; i * 1000]).unwrap();
        }
        std::os::unix::fs::symlink("one", tree.join("link")).unwrap();
        let plan = plan(&tree, 4, &std::env::temp_dir()).unwrap();
        std::fs::remove_dir_all(&tree).unwrap();
        assert_eq!(plan.workers.len(), 4);
        let mut got = Vec::new();
        for list in plan.workers {
            got.extend(entries(list));
        }
        got.sort();
        let want = [
            "./",
            "empty/",
            "one/",
            "one/deep/",
            "one/line\nbreak/",
            "two/",
        ];
        assert_eq!(got, want);
        let below = ["empty", "one", "one/deep", "one/line\nbreak", "two"];
        assert_eq!(entries(plan.before), below);
        assert_eq!(entries(plan.after), [&["."][..], &below].concat());
    }

    fn entries(mut list: File) -> Vec<String> {
        let mut text = String::new();
        list.read_to_string(&mut text).unwrap();
        assert!(text.ends_with('\0'));
        text.trim_end_matches('\0')
            .split('\0')
            .map(String::from)
            .collect()
    }

    #[test]
    fn a_tree_without_subdirectories_makes_one_list() {
        let tree = std::env::temp_dir().join(format!("cs-split1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::create_dir_all(&tree).unwrap();
        for i in 0..5 {
            std::fs::write(tree.join(format!("f{i}")), b"x").unwrap();
        }
        let plan = plan(&tree, 4, &std::env::temp_dir()).unwrap();
        std::fs::remove_dir_all(&tree).unwrap();
        assert_eq!(plan.workers.len(), 1);
    }
}
