//! `source_snapshot`: a backup that reads one moment of the source, not a
//! tree that changes while rsync walks it.
//!
//! Before the backup stage reads anything, a read-only file system snapshot
//! of the source is made; the stage then runs on a copy of the job whose
//! `source` is the snapshot's copy of the source, at a path that is the
//! same on every run:
//!
//! - **btrfs**: `btrfs subvolume snapshot -r` of the subvolume that holds
//!   the source, into `<parent of source>/.ciphersync-snapshots/<job>`
//!   (a btrfs snapshot must be on the same file system; next to the
//!   source, not inside it, so that the backup never holds it). The
//!   backup reads `<that>/<source relative to the subvolume>`.
//! - **zfs**: `zfs snapshot <dataset>@ciphersync-<job>`, mounted read-only
//!   at `<runtime_dir>/source` (`mount -t zfs`).
//! - **lvm**: `lvcreate --snapshot` of the logical volume the source's
//!   file system is on (thin: no size; thick: 20 % of the origin), mounted
//!   read-only at `<runtime_dir>/source`.
//!
//! Why the ciphertext is the live tree's: gocryptfs -reverse derives names
//! and IVs from the key and the path *relative to the view's root*, and
//! content from the plaintext; the root's own path goes into nothing
//! (tests/e2e_source_snapshot.rs compares two views of copies of a tree).
//! A snapshot keeps inode numbers and times (btrfs, zfs and a block copy
//! alike), so the source fingerprint of an unchanged tree is unchanged too
//! and the nothing-to-send shortcut still applies.
//!
//! Removal on every way out: the snapshot is removed when the stage ends,
//! by an error, by SIGINT/SIGTERM (the stage unwinds here) or by a panic
//! (Drop). Against SIGKILL, what is about to be made is written to
//! `<state_dir>/source-snapshot.json` *before* it is made; the next run of
//! any stage of the job, holding the job lock, removes what it names
//! (`remove_stale`, from run::enter) before it does anything else.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Job, SnapshotKind};
use crate::error::{Error, IoContext, Kind, Result};
use crate::exec::Cmd;
use crate::run::Context;
use crate::{fsutil, log, mount};

/// What a run is about to make, kept until it is removed.
const MARKER: &str = "source-snapshot.json";
/// Next to the source: the btrfs snapshots of the jobs of that source.
pub const BTRFS_DIR: &str = ".ciphersync-snapshots";
/// Under the runtime dir: where a zfs or lvm snapshot is mounted.
pub const MOUNT_NAME: &str = "source";
/// The inode number of every btrfs subvolume's root directory
/// (BTRFS_FIRST_FREE_OBJECTID).
const BTRFS_SUBVOLUME_ROOT_INO: u64 = 256;
/// What a snapshot shows where the original had a nested subvolume: an
/// empty directory with this inode number (BTRFS_EMPTY_SUBVOL_DIR_OBJECTID).
const BTRFS_EMPTY_SUBVOLUME_INO: u64 = 2;
/// A thick (non-thin) LVM snapshot's copy-on-write space.
const LVM_THICK_SIZE: &str = "20%ORIGIN";

/// A snapshot this helper made (or was about to make), by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Made {
    Btrfs { subvolume: PathBuf },
    Zfs { snapshot: String, mount: PathBuf },
    Lvm { volume: String, mount: PathBuf },
}

impl Made {
    fn describe(&self) -> String {
        match self {
            Made::Btrfs { subvolume } => format!("btrfs subvolume {}", subvolume.display()),
            Made::Zfs { snapshot, .. } => format!("zfs snapshot {snapshot}"),
            Made::Lvm { volume, .. } => format!("LVM snapshot {volume}"),
        }
    }
}

/// One command, built apart from running it (the unit tests read it).
#[derive(Debug, PartialEq, Eq)]
struct Step {
    tool: &'static str,
    args: Vec<OsString>,
}

impl Step {
    fn new<S: AsRef<OsStr>>(tool: &'static str, args: impl IntoIterator<Item = S>) -> Step {
        Step {
            tool,
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
        }
    }

    #[cfg(test)]
    fn words(&self) -> Vec<String> {
        std::iter::once(self.tool.to_string())
            .chain(self.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect()
    }

    /// Runs it; a failure is an error naming `doing`.
    fn run(&self, doing: &str) -> Result<String> {
        let mut out = Cmd::new(self.tool).args(&self.args).run()?;
        if !out.success() {
            return Err(out.failure(Some(doing)));
        }
        out.stdout_string()
    }

    /// Runs it even after SIGINT/SIGTERM (removal); Ok(false) when it failed.
    fn run_cleanup(&self) -> Result<(bool, String)> {
        let out = Cmd::new(self.tool).args(&self.args).cleanup().run()?;
        Ok((out.success(), out.stderr.trim().to_string()))
    }
}

/// Runs `body` on the job as its source snapshot shows it, when the job
/// has `source_snapshot`; removes the snapshot afterwards whatever `body`
/// returned. A snapshot that cannot be removed fails the stage (it would
/// hold disk space, and a thick LVM snapshot slows every write), naming it;
/// the marker stays, so the next run tries again.
pub fn around<T>(ctx: &Context, body: impl FnOnce(&Context) -> Result<T>) -> Result<T> {
    let job = ctx.job;
    let Some(kind) = job.source_snapshot else {
        return body(ctx);
    };
    crate::crypt::check_source(job)?;
    let taken = take(job, kind, &ctx.runtime(MOUNT_NAME))?;
    log::debug(|| {
        format!(
            "backing up {} ({} of {})",
            taken.job.source.display(),
            taken.made.as_ref().map(Made::describe).unwrap_or_default(),
            job.source.display()
        )
    });
    let result = body(&ctx.with_job(&taken.job));
    let removed = taken.remove();
    match (result, removed) {
        (Err(e), Err(r)) => {
            log::warn(r.message);
            Err(e)
        }
        (Err(e), Ok(())) => Err(e),
        (Ok(_), Err(r)) => Err(r),
        (Ok(v), Ok(())) => Ok(v),
    }
}

/// Removes what a killed run left (see the module doc). Called with the
/// job lock held, before the stage does anything else.
pub fn remove_stale(job: &Job) -> Result<()> {
    let path = job.state_dir.join(MARKER);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let made: Made = serde_json::from_str(&text).map_err(|e| {
        Error::new(
            Kind::Corrupt,
            format!(
                "job {}: {} is damaged ({e}); remove the snapshot it names by hand, then the file",
                job.name,
                path.display()
            ),
        )
    })?;
    log::warn(format!(
        "job {}: removing the {} an earlier run left behind",
        job.name,
        made.describe()
    ));
    undo(job, &made)?;
    clear_marker(job)
}

/// A snapshot in place; removed when dropped (`remove` reports failure).
struct Taken {
    /// The job as the snapshot shows it.
    job: Job,
    made: Option<Made>,
    name: String,
    state_dir: PathBuf,
}

impl Taken {
    fn remove(mut self) -> Result<()> {
        match self.made.take() {
            Some(made) => remove_made(&self.name, &self.state_dir, &made),
            None => Ok(()),
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(made) = self.made.take()
            && let Err(e) = remove_made(&self.name, &self.state_dir, &made)
        {
            log::warn(e.message);
        }
    }
}

fn remove_made(name: &str, state_dir: &Path, made: &Made) -> Result<()> {
    let job_like = Named { name, state_dir };
    undo_named(&job_like, made)?;
    let _ = std::fs::remove_file(state_dir.join(MARKER));
    Ok(())
}

/// The job's name and state dir: all that removal needs.
struct Named<'a> {
    name: &'a str,
    state_dir: &'a Path,
}

fn undo(job: &Job, made: &Made) -> Result<()> {
    undo_named(
        &Named {
            name: &job.name,
            state_dir: &job.state_dir,
        },
        made,
    )
}

fn clear_marker(job: &Job) -> Result<()> {
    let path = job.state_dir.join(MARKER);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// Unmounts and deletes `made`; what is already gone is fine.
fn undo_named(job: &Named, made: &Made) -> Result<()> {
    let failed = |what: String, detail: String| {
        Error::new(
            Kind::Tool,
            format!(
                "job {}: cannot remove the source snapshot, {what}: {detail}; \
                 remove it by hand, then {}",
                job.name,
                job.state_dir.join(MARKER).display()
            ),
        )
    };
    let unmount = |point: &Path| -> Result<()> {
        if mount::is_mounted(point)? {
            let (ok, stderr) = unmount_step(point).run_cleanup()?;
            if !ok && mount::is_mounted(point)? {
                return Err(failed(format!("unmounting {}", point.display()), stderr));
            }
        }
        Ok(())
    };
    match made {
        Made::Btrfs { subvolume } => {
            if std::fs::symlink_metadata(subvolume).is_err() {
                return Ok(());
            }
            let as_user = !nix::unistd::geteuid().is_root();
            if as_user {
                // A user may delete a snapshot of their own subvolume
                // (user_subvol_rm_allowed), but not while it is read-only
                // (EROFS): the flag goes first (tried: btrfs-progs 6.2).
                let (ok, stderr) = btrfs_make_writable(subvolume).run_cleanup()?;
                if !ok {
                    return Err(failed(made.describe(), stderr));
                }
            }
            let (ok, stderr) = btrfs_delete(subvolume).run_cleanup()?;
            if !ok && std::fs::symlink_metadata(subvolume).is_ok() {
                let hint = if as_user {
                    " (a user may delete snapshots only on a btrfs mounted with \
                     user_subvol_rm_allowed)"
                } else {
                    ""
                };
                return Err(failed(made.describe(), format!("{stderr}{hint}")));
            }
        }
        Made::Zfs { snapshot, mount } => {
            unmount(mount)?;
            if zfs_exists(snapshot).run_cleanup()?.0 {
                let (ok, stderr) = zfs_destroy(snapshot).run_cleanup()?;
                if !ok && zfs_exists(snapshot).run_cleanup()?.0 {
                    return Err(failed(made.describe(), stderr));
                }
            }
        }
        Made::Lvm { volume, mount } => {
            unmount(mount)?;
            if lvm_exists(volume).run_cleanup()?.0 {
                let (ok, stderr) = lvm_remove(volume).run_cleanup()?;
                if !ok && lvm_exists(volume).run_cleanup()?.0 {
                    return Err(failed(made.describe(), stderr));
                }
            }
        }
    }
    Ok(())
}

fn error(job: &Job, kind: SnapshotKind, problem: impl std::fmt::Display) -> Error {
    Error::new(
        Kind::Tool,
        format!(
            "job {}: source_snapshot \"{}\": {problem}",
            job.name,
            kind.name()
        ),
    )
}

/// Makes the snapshot; on any failure, removes what was made.
fn take(job: &Job, kind: SnapshotKind, point: &Path) -> Result<Taken> {
    let (made, source, create) = match kind {
        SnapshotKind::Btrfs => plan_btrfs(job)?,
        SnapshotKind::Zfs => plan_zfs(job, point)?,
        SnapshotKind::Lvm => plan_lvm(job, point)?,
    };
    // Before it exists: a SIGKILL from here on leaves a marker to follow.
    let text = serde_json::to_string(&made).expect("plain fields serialise");
    fsutil::write_atomic(&job.state_dir.join(MARKER), text.as_bytes())?;
    let taken = Taken {
        job: job_in(job, source),
        made: Some(made),
        name: job.name.clone(),
        state_dir: job.state_dir.clone(),
    };
    if matches!(kind, SnapshotKind::Zfs | SnapshotKind::Lvm) {
        mount::prepare_point(point)?;
    }
    for (step, doing) in &create {
        step.run(doing).map_err(|e| error(job, kind, e.message))?;
    }
    if kind == SnapshotKind::Btrfs
        && let Some(nested) = nested_subvolume(&taken.job.source)?
    {
        return Err(error(
            job,
            kind,
            format!(
                "{} is a nested btrfs subvolume, which a snapshot shows as an empty \
                 directory (the backup would lose its files); back it up as a job of its \
                 own, or leave source_snapshot off for this job",
                job.source.join(nested).display()
            ),
        ));
    }
    Ok(taken)
}

/// The job with `source` in the snapshot. A gocryptfs config kept in the
/// source is read from the snapshot's copy (the same bytes), so that the
/// view still shows it as `gocryptfs.conf`.
fn job_in(job: &Job, source: PathBuf) -> Job {
    let mut view = job.clone();
    if job.config_in_source() {
        view.gocryptfs_config = source.join(".gocryptfs.reverse.conf");
    }
    view.source = source;
    view
}

type Plan = (Made, PathBuf, Vec<(Step, &'static str)>);

// ---------------------------------------------------------------------------
// btrfs
// ---------------------------------------------------------------------------

fn plan_btrfs(job: &Job) -> Result<Plan> {
    use nix::sys::statfs;
    let kind = SnapshotKind::Btrfs;
    let source = std::fs::canonicalize(&job.source)
        .ctx(|| format!("resolving source {}", job.source.display()))?;
    let fs = statfs::statfs(&source)
        .map_err(|e| Error::io(format!("statfs {}", source.display()), e.into()))?;
    if fs.filesystem_type() != statfs::BTRFS_SUPER_MAGIC {
        return Err(error(
            job,
            kind,
            format!(
                "source {} is not on a btrfs file system",
                job.source.display()
            ),
        ));
    }
    let root = subvolume_root(&source).map_err(|p| error(job, kind, p))?;
    let Some(layout) = btrfs_layout(&source, &root, &job.name) else {
        return Err(error(
            job,
            kind,
            "the source is `/`: its snapshot would have to lie inside it",
        ));
    };
    // Created once; the job's units may write here and nowhere else in the
    // source's file system (the NixOS module's ReadWritePaths=).
    crate::crypt::create_private_dir(&layout.dir)?;
    if std::fs::symlink_metadata(&layout.snapshot).is_ok() {
        return Err(error(
            job,
            kind,
            format!(
                "{} exists, but no run of this job left it (no {MARKER}); remove it \
                 (btrfs subvolume delete)",
                layout.snapshot.display()
            ),
        ));
    }
    let create = vec![(
        btrfs_create(&root, &layout.snapshot),
        "creating the read-only snapshot",
    )];
    Ok((
        Made::Btrfs {
            subvolume: layout.snapshot.clone(),
        },
        layout.source,
        create,
    ))
}

/// Where a btrfs snapshot of the subvolume at `root` goes, for a job of
/// `name` whose source is `source` (at or below `root`).
#[derive(Debug, PartialEq, Eq)]
struct BtrfsLayout {
    /// `<parent of source>/.ciphersync-snapshots`
    dir: PathBuf,
    /// `<dir>/<name>`: the snapshot subvolume.
    snapshot: PathBuf,
    /// What the backup reads: `<snapshot>/<source relative to root>`.
    source: PathBuf,
}

fn btrfs_layout(source: &Path, root: &Path, name: &str) -> Option<BtrfsLayout> {
    let dir = source.parent()?.join(BTRFS_DIR);
    let snapshot = dir.join(name);
    let rel = source.strip_prefix(root).ok()?;
    let source = if rel.as_os_str().is_empty() {
        snapshot.clone()
    } else {
        snapshot.join(rel)
    };
    Some(BtrfsLayout {
        dir,
        snapshot,
        source,
    })
}

/// The root of the btrfs subvolume that holds `path`: the topmost
/// directory above it on the same device (each subvolume is a device of
/// its own), which must be a subvolume root (inode 256), not a bind mount
/// of a directory inside one.
fn subvolume_root(path: &Path) -> std::result::Result<PathBuf, String> {
    let stat = |p: &Path| std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()));
    let dev = stat(path)?.dev();
    let mut root = path.to_path_buf();
    while let Some(parent) = root.parent() {
        if stat(parent)?.dev() != dev {
            break;
        }
        root = parent.to_path_buf();
    }
    if stat(&root)?.ino() != BTRFS_SUBVOLUME_ROOT_INO {
        return Err(format!(
            "{} is mounted from a directory inside a btrfs subvolume (a bind mount?), \
             not from a subvolume: the subvolume to snapshot is not reachable from it",
            root.display()
        ));
    }
    Ok(root)
}

/// The first nested subvolume below `source` in a snapshot (an empty
/// directory with inode 2), relative to it. Our own snapshot directory
/// is skipped: other jobs' snapshots of the same source lie there.
fn nested_subvolume(source: &Path) -> Result<Option<PathBuf>> {
    let walk = walkdir::WalkDir::new(source)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !(e.depth() == 1 && e.file_name() == BTRFS_DIR));
    for entry in walk {
        let entry = entry.map_err(|e| crate::walk::error(source, e))?;
        if !entry.file_type().is_dir() {
            continue;
        }
        let meta = entry
            .metadata()
            .map_err(|e| crate::walk::error(source, e))?;
        if meta.ino() == BTRFS_EMPTY_SUBVOLUME_INO {
            let rel = entry.path().strip_prefix(source).unwrap_or(entry.path());
            return Ok(Some(rel.to_path_buf()));
        }
    }
    Ok(None)
}

fn btrfs_create(root: &Path, snapshot: &Path) -> Step {
    Step::new(
        "btrfs",
        [
            OsStr::new("subvolume"),
            OsStr::new("snapshot"),
            OsStr::new("-r"),
            root.as_os_str(),
            snapshot.as_os_str(),
        ],
    )
}

/// Clears the read-only flag of a snapshot, so that its owner may delete it.
fn btrfs_make_writable(subvolume: &Path) -> Step {
    Step::new(
        "btrfs",
        [
            OsStr::new("property"),
            OsStr::new("set"),
            OsStr::new("-ts"),
            subvolume.as_os_str(),
            OsStr::new("ro"),
            OsStr::new("false"),
        ],
    )
}

fn btrfs_delete(subvolume: &Path) -> Step {
    Step::new(
        "btrfs",
        [
            OsStr::new("subvolume"),
            OsStr::new("delete"),
            subvolume.as_os_str(),
        ],
    )
}

// ---------------------------------------------------------------------------
// zfs
// ---------------------------------------------------------------------------

fn plan_zfs(job: &Job, point: &Path) -> Result<Plan> {
    let kind = SnapshotKind::Zfs;
    let source = std::fs::canonicalize(&job.source)
        .ctx(|| format!("resolving source {}", job.source.display()))?;
    let found = zfs_list(&source)
        .run("finding the dataset of the source")
        .map_err(|e| error(job, kind, e.message))?;
    let Some((dataset, mountpoint)) = parse_zfs_list(&found).into_iter().next() else {
        return Err(error(job, kind, "zfs list named no dataset for the source"));
    };
    let rel = source
        .strip_prefix(&mountpoint)
        .map_err(|_| {
            error(
                job,
                kind,
                format!(
                    "source {} is not below its dataset {dataset}'s mount point {mountpoint}",
                    source.display()
                ),
            )
        })?
        .to_path_buf();
    let children = zfs_list_children(&dataset)
        .run("listing the datasets below the source's")
        .map_err(|e| error(job, kind, e.message))?;
    if let Some(child) = nested_dataset(&parse_zfs_list(&children), &dataset, &source) {
        return Err(error(
            job,
            kind,
            format!(
                "dataset {child} is mounted inside the source, and a snapshot of {dataset} \
                 does not hold it (the backup would lose its files); back it up as a job of \
                 its own, or leave source_snapshot off for this job"
            ),
        ));
    }
    let snapshot = format!("{dataset}@ciphersync-{}", job.name);
    let create = vec![
        (zfs_snapshot(&snapshot), "creating the snapshot"),
        (zfs_mount(&snapshot, point), "mounting the snapshot"),
    ];
    Ok((
        Made::Zfs {
            snapshot,
            mount: point.to_path_buf(),
        },
        point.join(rel),
        create,
    ))
}

/// `zfs list -H` lines: the name and the mount point, tab-separated.
fn parse_zfs_list(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, m)| (n.to_string(), m.trim_end().to_string()))
        .collect()
}

/// A dataset below `dataset` mounted at or below `source`.
fn nested_dataset(list: &[(String, String)], dataset: &str, source: &Path) -> Option<String> {
    list.iter()
        .filter(|(name, _)| name != dataset)
        .filter(|(_, mountpoint)| mountpoint.starts_with('/'))
        .find(|(_, mountpoint)| Path::new(mountpoint).starts_with(source))
        .map(|(name, _)| name.clone())
}

fn zfs_list(path: &Path) -> Step {
    Step::new(
        "zfs",
        [
            OsStr::new("list"),
            OsStr::new("-H"),
            OsStr::new("-o"),
            OsStr::new("name,mountpoint"),
            path.as_os_str(),
        ],
    )
}

fn zfs_list_children(dataset: &str) -> Step {
    Step::new(
        "zfs",
        [
            "list",
            "-H",
            "-r",
            "-t",
            "filesystem",
            "-o",
            "name,mountpoint",
            dataset,
        ],
    )
}

fn zfs_snapshot(snapshot: &str) -> Step {
    Step::new("zfs", ["snapshot", snapshot])
}

fn zfs_mount(snapshot: &str, point: &Path) -> Step {
    Step::new(
        "mount",
        [
            OsStr::new("-t"),
            OsStr::new("zfs"),
            OsStr::new("-o"),
            OsStr::new("ro"),
            OsStr::new(snapshot),
            point.as_os_str(),
        ],
    )
}

fn zfs_exists(snapshot: &str) -> Step {
    Step::new(
        "zfs",
        ["list", "-H", "-t", "snapshot", "-o", "name", snapshot],
    )
}

fn zfs_destroy(snapshot: &str) -> Step {
    Step::new("zfs", ["destroy", snapshot])
}

fn unmount_step(point: &Path) -> Step {
    Step::new("umount", [point.as_os_str()])
}

// ---------------------------------------------------------------------------
// LVM
// ---------------------------------------------------------------------------

fn plan_lvm(job: &Job, point: &Path) -> Result<Plan> {
    let kind = SnapshotKind::Lvm;
    let source = std::fs::canonicalize(&job.source)
        .ctx(|| format!("resolving source {}", job.source.display()))?;
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").ctx(|| "reading /proc/self/mountinfo")?;
    let entries = parse_mountinfo(&text);
    let Some(fs) = containing_mount(&entries, &source) else {
        return Err(error(
            job,
            kind,
            format!("no mount holds {}", source.display()),
        ));
    };
    let found = lvs(&fs.device)
        .run("finding the logical volume of the source")
        .map_err(|e| {
            error(
                job,
                kind,
                format!(
                    "{} (the source's file system, {}, must be on an LVM logical volume)",
                    e.message, fs.device
                ),
            )
        })?;
    let Some(lv) = parse_lvs(&found) else {
        return Err(error(
            job,
            kind,
            format!("{} is not an LVM logical volume", fs.device),
        ));
    };
    let name = lvm_snapshot_name(&lv.lv, &job.name);
    let volume = format!("{}/{name}", lv.vg);
    let create = vec![
        (lvm_create(&lv, &name), "creating the snapshot"),
        (
            lvm_mount(&fs.fs_type, &lv.vg, &name, point),
            "mounting the snapshot",
        ),
    ];
    Ok((
        Made::Lvm {
            volume,
            mount: point.to_path_buf(),
        },
        lvm_source(point, fs, &source),
        create,
    ))
}

/// One line of /proc/self/mountinfo, the parts this module needs.
#[derive(Debug, PartialEq, Eq)]
struct MountLine {
    /// The directory of the file system that is mounted (`/` unless a
    /// bind mount of a subdirectory).
    root: PathBuf,
    point: PathBuf,
    fs_type: String,
    device: String,
}

fn parse_mountinfo(text: &str) -> Vec<MountLine> {
    let unescape = |field: &str| PathBuf::from(unescape_octal(field));
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let mut after = after.split(' ');
            Some(MountLine {
                root: unescape(fields.get(3)?),
                point: unescape(fields.get(4)?),
                fs_type: after.next()?.to_string(),
                device: after.next()?.to_string(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and `\\` as `\\ooo`.
fn unescape_octal(field: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

/// The mount `path` is on: the longest mount point above it (the last one
/// of equal length, as stacked mounts go).
fn containing_mount<'a>(entries: &'a [MountLine], path: &Path) -> Option<&'a MountLine> {
    entries
        .iter()
        .filter(|m| path.starts_with(&m.point))
        .max_by_key(|m| m.point.components().count())
        .and_then(|best| {
            entries
                .iter()
                .rfind(|m| m.point == best.point && path.starts_with(&m.point))
        })
}

/// The source inside the snapshot mounted at `point`.
fn lvm_source(point: &Path, fs: &MountLine, source: &Path) -> PathBuf {
    let in_fs = fs.root.strip_prefix("/").unwrap_or(&fs.root);
    let below = source.strip_prefix(&fs.point).unwrap_or(Path::new(""));
    point.join(in_fs).join(below)
}

#[derive(Debug, PartialEq, Eq)]
struct LogicalVolume {
    vg: String,
    lv: String,
    /// A thin volume: its snapshot needs no size.
    thin: bool,
}

fn lvs(device: &str) -> Step {
    Step::new(
        "lvs",
        [
            "--noheadings",
            "--separator",
            ":",
            "-o",
            "vg_name,lv_name,pool_lv",
            device,
        ],
    )
}

fn parse_lvs(text: &str) -> Option<LogicalVolume> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut parts = line.split(':');
    let vg = parts.next()?.trim();
    let lv = parts.next()?.trim();
    let pool = parts.next().unwrap_or("").trim();
    (!vg.is_empty() && !lv.is_empty()).then(|| LogicalVolume {
        vg: vg.to_string(),
        lv: lv.to_string(),
        thin: !pool.is_empty(),
    })
}

fn lvm_snapshot_name(lv: &str, job: &str) -> String {
    format!("{lv}-ciphersync-{job}")
}

fn lvm_create(lv: &LogicalVolume, name: &str) -> Step {
    let origin = format!("{}/{}", lv.vg, lv.lv);
    let mut args = vec!["--snapshot", "--name", name];
    if lv.thin {
        // A thin snapshot is skipped by activation unless told otherwise.
        args.extend(["--setactivationskip", "n", "--activate", "y"]);
    } else {
        args.extend(["--extents", LVM_THICK_SIZE]);
    }
    args.push(&origin);
    Step::new("lvcreate", args)
}

fn lvm_mount(fs_type: &str, vg: &str, name: &str, point: &Path) -> Step {
    // XFS refuses a second mount with the same UUID as the origin's.
    let options = if fs_type == "xfs" { "ro,nouuid" } else { "ro" };
    let device = format!("/dev/{vg}/{name}");
    Step::new(
        "mount",
        [
            OsStr::new("-t"),
            OsStr::new(fs_type),
            OsStr::new("-o"),
            OsStr::new(options),
            OsStr::new(&device),
            point.as_os_str(),
        ],
    )
}

fn lvm_exists(volume: &str) -> Step {
    Step::new("lvs", ["--noheadings", "-o", "lv_name", volume])
}

fn lvm_remove(volume: &str) -> Step {
    Step::new("lvremove", ["--yes", volume])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn btrfs_snapshots_lie_next_to_the_source() {
        let at = |s: &str, r: &str| btrfs_layout(Path::new(s), Path::new(r), "docs").unwrap();
        // The source is the subvolume.
        assert_eq!(
            at("/home", "/home"),
            BtrfsLayout {
                dir: "/.ciphersync-snapshots".into(),
                snapshot: "/.ciphersync-snapshots/docs".into(),
                source: "/.ciphersync-snapshots/docs".into(),
            }
        );
        // A directory inside one: the whole subvolume is snapshotted.
        assert_eq!(
            at("/home/alice/docs", "/home"),
            BtrfsLayout {
                dir: "/home/alice/.ciphersync-snapshots".into(),
                snapshot: "/home/alice/.ciphersync-snapshots/docs".into(),
                source: "/home/alice/.ciphersync-snapshots/docs/alice/docs".into(),
            }
        );
        assert_eq!(btrfs_layout(Path::new("/"), Path::new("/"), "docs"), None);
        assert_eq!(
            btrfs_create(Path::new("/home"), Path::new("/.ciphersync-snapshots/docs")).words(),
            [
                "btrfs",
                "subvolume",
                "snapshot",
                "-r",
                "/home",
                "/.ciphersync-snapshots/docs"
            ]
        );
        assert_eq!(
            btrfs_make_writable(Path::new("/.ciphersync-snapshots/docs")).words(),
            [
                "btrfs",
                "property",
                "set",
                "-ts",
                "/.ciphersync-snapshots/docs",
                "ro",
                "false"
            ]
        );
        assert_eq!(
            btrfs_delete(Path::new("/.ciphersync-snapshots/docs")).words(),
            [
                "btrfs",
                "subvolume",
                "delete",
                "/.ciphersync-snapshots/docs"
            ]
        );
    }

    #[test]
    fn zfs_commands_and_answers() {
        let list =
            parse_zfs_list("tank/home\t/home\ntank/home/alice\t/home/alice\ntank/home/x\tlegacy\n");
        assert_eq!(list[0], ("tank/home".to_string(), "/home".to_string()));
        assert_eq!(
            nested_dataset(&list, "tank/home", Path::new("/home")),
            Some("tank/home/alice".into())
        );
        assert_eq!(
            nested_dataset(&list, "tank/home", Path::new("/home/bob")),
            None
        );
        assert_eq!(
            zfs_list(Path::new("/home/bob")).words(),
            ["zfs", "list", "-H", "-o", "name,mountpoint", "/home/bob"]
        );
        assert_eq!(
            zfs_list_children("tank/home").words(),
            [
                "zfs",
                "list",
                "-H",
                "-r",
                "-t",
                "filesystem",
                "-o",
                "name,mountpoint",
                "tank/home"
            ]
        );
        let snap = "tank/home@ciphersync-docs";
        assert_eq!(
            zfs_snapshot(snap).words(),
            ["zfs", "snapshot", "tank/home@ciphersync-docs"]
        );
        assert_eq!(
            zfs_mount(snap, Path::new("/run/ciphersync/docs/source")).words(),
            [
                "mount",
                "-t",
                "zfs",
                "-o",
                "ro",
                "tank/home@ciphersync-docs",
                "/run/ciphersync/docs/source"
            ]
        );
        assert_eq!(
            zfs_exists(snap).words(),
            [
                "zfs",
                "list",
                "-H",
                "-t",
                "snapshot",
                "-o",
                "name",
                "tank/home@ciphersync-docs"
            ]
        );
        assert_eq!(
            zfs_destroy(snap).words(),
            ["zfs", "destroy", "tank/home@ciphersync-docs"]
        );
    }

    #[test]
    fn lvm_commands_and_answers() {
        let mountinfo = "22 1 253:0 / / rw,relatime - ext4 /dev/mapper/vg0-root rw\n\
                         30 22 253:1 / /srv rw,relatime - xfs /dev/mapper/vg0-srv rw\n\
                         31 22 253:1 /data /mnt/data\\040x rw - xfs /dev/mapper/vg0-srv rw\n";
        let entries = parse_mountinfo(mountinfo);
        let srv = containing_mount(&entries, Path::new("/srv/docs")).unwrap();
        assert_eq!(
            (
                srv.point.as_path(),
                srv.fs_type.as_str(),
                srv.device.as_str()
            ),
            (Path::new("/srv"), "xfs", "/dev/mapper/vg0-srv")
        );
        let point = Path::new("/run/ciphersync/docs/source");
        assert_eq!(
            lvm_source(point, srv, Path::new("/srv/docs")),
            PathBuf::from("/run/ciphersync/docs/source/docs")
        );
        let bind = containing_mount(&entries, Path::new("/mnt/data x/a")).unwrap();
        assert_eq!(
            lvm_source(point, bind, Path::new("/mnt/data x/a")),
            PathBuf::from("/run/ciphersync/docs/source/data/a")
        );
        let root = containing_mount(&entries, Path::new("/etc")).unwrap();
        assert_eq!(root.device, "/dev/mapper/vg0-root");

        assert_eq!(
            lvs("/dev/mapper/vg0-srv").words(),
            [
                "lvs",
                "--noheadings",
                "--separator",
                ":",
                "-o",
                "vg_name,lv_name,pool_lv",
                "/dev/mapper/vg0-srv"
            ]
        );
        let thick = parse_lvs("  vg0:srv:\n").unwrap();
        assert_eq!(
            thick,
            LogicalVolume {
                vg: "vg0".into(),
                lv: "srv".into(),
                thin: false
            }
        );
        let thin = parse_lvs("  vg0:srv:pool0\n").unwrap();
        assert!(thin.thin);
        assert_eq!(parse_lvs("\n"), None);
        let name = lvm_snapshot_name("srv", "docs");
        assert_eq!(
            lvm_create(&thick, &name).words(),
            [
                "lvcreate",
                "--snapshot",
                "--name",
                "srv-ciphersync-docs",
                "--extents",
                "20%ORIGIN",
                "vg0/srv"
            ]
        );
        assert_eq!(
            lvm_create(&thin, &name).words(),
            [
                "lvcreate",
                "--snapshot",
                "--name",
                "srv-ciphersync-docs",
                "--setactivationskip",
                "n",
                "--activate",
                "y",
                "vg0/srv"
            ]
        );
        assert_eq!(
            lvm_mount("xfs", "vg0", &name, point).words(),
            [
                "mount",
                "-t",
                "xfs",
                "-o",
                "ro,nouuid",
                "/dev/vg0/srv-ciphersync-docs",
                "/run/ciphersync/docs/source"
            ]
        );
        assert_eq!(lvm_mount("ext4", "vg0", &name, point).args[3], "ro");
        assert_eq!(
            lvm_remove("vg0/srv-ciphersync-docs").words(),
            ["lvremove", "--yes", "vg0/srv-ciphersync-docs"]
        );
        assert_eq!(
            lvm_exists("vg0/srv-ciphersync-docs").words(),
            [
                "lvs",
                "--noheadings",
                "-o",
                "lv_name",
                "vg0/srv-ciphersync-docs"
            ]
        );
    }

    /// The marker names what to remove; a killed run's is read back.
    #[test]
    fn markers_round_trip() {
        for made in [
            Made::Btrfs {
                subvolume: "/.ciphersync-snapshots/docs".into(),
            },
            Made::Zfs {
                snapshot: "tank/home@ciphersync-docs".into(),
                mount: "/run/ciphersync/docs/source".into(),
            },
            Made::Lvm {
                volume: "vg0/srv-ciphersync-docs".into(),
                mount: "/run/ciphersync/docs/source".into(),
            },
        ] {
            let text = serde_json::to_string(&made).unwrap();
            assert_eq!(serde_json::from_str::<Made>(&text).unwrap(), made, "{text}");
        }
    }
}
