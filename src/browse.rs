//! `ciphersync mount` and `umount`: the latest state, or any kept run,
//! decrypted and read-only at a directory of the user's, without copying
//! file content to local disk (docs/design.md, "Browse").
//!
//! - The latest state is `files/` itself: gocryptfs `-ro` on it (through a
//!   read-only sshfs mount for an SFTP target).
//! - An older run ID is the union, looked up top-down, of a small local
//!   *mask* dir (the run's directories with their recorded modes, and an
//!   AUFS-style `.wh.NAME` whiteout for every name that a layer holds but
//!   the run's record does not), the snapshot dirs later than ID that the
//!   rebuild plan takes something from (oldest first: a path comes from the
//!   oldest later snapshot that holds it, as in `snapshots::plan_rebuild`),
//!   and `files/`. `fuse-overlayfs` with lower layers only (read-only)
//!   makes the union; gocryptfs decrypts it.
//!
//! Every daemon is started without its foreground flag, so it detaches
//! once its mount is up and no mount needs the helper: `--background`
//! returns at once, the foreground mode waits for SIGINT/SIGTERM (or for
//! the mount to go) and then unmounts exactly as `umount` does. What was
//! mounted is kept in `<runtime_dir>/browse/<key>/mount.json`, `key` from
//! the mount point's path; `umount` reads it.
//!
//! The job lock: a browse of the latest state holds it only while mounting
//! (a backup meanwhile shows through, as on any live mount). A browse of an
//! older run reads `files/` for what the run shares with it: a backup that
//! replaced such a file would show the newer content under the old run's
//! name, and a prune could take a layer away. So the union daemon inherits
//! the lock and holds it as long as its mount lives: other stages of the
//! job exit 75 (the units retry) until `umount`, and the lock can never
//! outlive the mount (a crash or a reboot ends both).

use std::collections::{BTreeSet, HashSet};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{Job, Target as JobTarget};
use crate::crypt::{self, is_gocryptfs_metadata};
use crate::error::{Error, IoContext, Kind, Result};
use crate::exec::Cmd;
use crate::run::Context;
use crate::target::{FILES, PathTarget, SNAPSHOTS, Ssh, Target as _, TreeEntry};
use crate::{fsutil, interrupt, log, mount, run, snapshots, status};

/// Below the runtime dir: one dir per mounted browse.
pub const BROWSE_DIR: &str = "browse";
const RECORD: &str = "mount.json";
/// AUFS-style whiteout prefix, which fuse-overlayfs honours in a lower
/// layer. No encrypted name starts with a dot.
const WHITEOUT: &str = ".wh.";
/// How often the foreground mode looks for a signal or a vanished mount.
const POLL: Duration = Duration::from_millis(200);

pub struct Request {
    pub dir: PathBuf,
    /// An older run; None for the latest state.
    pub snapshot: Option<String>,
    pub background: bool,
}

/// What a browse mounted, kept in its `mount.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Browse {
    dir: PathBuf,
    snapshot: Option<String>,
    /// The foreground helper serving it; None with `--background`.
    pid: Option<u32>,
    /// Mounts in the order they are undone: the user's dir first.
    points: Vec<PathBuf>,
    mounted_at: String,
}

fn browse_root(job: &Job) -> PathBuf {
    job.runtime_dir.join(BROWSE_DIR)
}

/// The dir of the browse mounted at `dir` (an absolute, resolved path).
fn base_for(job: &Job, dir: &Path) -> PathBuf {
    use sha1::{Digest, Sha1};
    use std::os::unix::ffi::OsStrExt;
    let digest = Sha1::digest(dir.as_os_str().as_bytes());
    let key: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    browse_root(job).join(key)
}

/// Mounts what `request` asks for; in the foreground, returns once it has
/// been unmounted again.
pub fn mount(job: &Job, request: &Request) -> Result<Value> {
    let dir = check_dir(job, &request.dir)?;
    if let Some(id) = &request.snapshot
        && status::parse_snapshot_id(id).is_none()
    {
        return Err(Error::usage(format!(
            "--snapshot {id:?} is not a snapshot id (YYYYMMDDTHHMMSSZ; see `ciphersync snapshots`)"
        )));
    }
    // The latest state needs no lock once mounted, so it may be mounted
    // while an older run's browse (or a backup) holds it.
    let ctx = match run::enter(job) {
        Ok(ctx) => Some(ctx),
        Err(e) if e.kind == Kind::Locked && request.snapshot.is_none() => None,
        Err(e) => return Err(e),
    };
    let base = base_for(job, &dir);
    clear_leftover(job, &base)?;
    fsutil::ensure_private_dir(&browse_root(job), "runtime_dir/browse")?;
    crypt::create_private_dir(&base)?;
    let mut browse = Browse {
        dir: dir.clone(),
        snapshot: request.snapshot.clone(),
        pid: (!request.background).then(std::process::id),
        points: Vec::new(),
        mounted_at: status::rfc3339(SystemTime::now()),
    };
    save(&base, &browse)?;
    if let Err(e) = set_up(job, ctx.as_ref(), &base, &mut browse) {
        if let Err(undo) = teardown(&base, &browse) {
            log::warn(format!("undoing the browse mount: {undo}"));
        }
        return Err(e);
    }
    let doc = json!({
        "job": job.name,
        "dir": dir,
        "snapshot": browse.snapshot,
        "background": request.background,
    });
    match (request.background, browse.snapshot.is_some()) {
        // The union daemon holds the lock from now on; closing our copy
        // without unlocking it leaves it with the daemon.
        (true, true) => ctx.into_iter().for_each(Context::leave_lock_held),
        (true, false) => drop(ctx),
        (false, older) => {
            // In the foreground an older run's browse keeps our lock too.
            let _ctx = ctx.filter(|_| older);
            eprintln!("{}", crate::human::browse_waiting(&doc));
            wait_for_the_end(&dir);
            teardown(&base, &browse)?;
        }
    }
    Ok(doc)
}

/// Undoes the browses of `job` mounted at `dir`, or all of them; returns
/// the dirs unmounted.
pub fn umount(job: &Job, dir: Option<&Path>) -> Result<Value> {
    let wanted = dir.map(resolve_mount_point).transpose()?;
    let mut done = Vec::new();
    for (base, browse) in active(job)? {
        if wanted.as_ref().is_some_and(|w| *w != browse.dir) {
            continue;
        }
        teardown(&base, &browse)?;
        done.push(json!({ "dir": browse.dir, "snapshot": browse.snapshot }));
    }
    if let (Some(dir), true) = (dir, done.is_empty()) {
        return Err(Error::usage(format!(
            "{} is not a browse mount of job {} (`ciphersync mount` made none there)",
            dir.display(),
            job.name
        )));
    }
    Ok(json!({ "job": job.name, "unmounted": done }))
}

/// One line per browse of the job that holds its lock (an older run's),
/// for the "another run holds the lock" error.
pub fn lock_holders(job: &Job) -> Vec<String> {
    active(job)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, b)| b.snapshot.is_some() && mount::is_mounted(&b.dir).unwrap_or(false))
        .map(|(_, b)| {
            format!(
                "run {} is mounted at {} (`ciphersync umount {} {}` ends it)",
                b.snapshot.as_deref().unwrap_or(""),
                b.dir.display(),
                job.name,
                crate::exec::shell_quote(&b.dir.to_string_lossy())
            )
        })
        .collect()
}

/// The browses recorded in the runtime dir.
fn active(job: &Job) -> Result<Vec<(PathBuf, Browse)>> {
    let root = browse_root(job);
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", root.display()), e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let base = entry.ctx(|| format!("reading {}", root.display()))?.path();
        if let Some(browse) = load(&base)? {
            found.push((base, browse));
        }
    }
    found.sort_by(|a, b| a.1.dir.cmp(&b.1.dir));
    Ok(found)
}

fn load(base: &Path) -> Result<Option<Browse>> {
    let path = base.join(RECORD);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            Error::new(
                Kind::Corrupt,
                format!("{} is not a browse record: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

fn save(base: &Path, browse: &Browse) -> Result<()> {
    let text = serde_json::to_string_pretty(browse).expect("a browse record serialises");
    fsutil::write_atomic(&base.join(RECORD), format!("{text}\n").as_bytes())
}

/// A browse left at the same dir: refused while it is mounted there, else
/// (a helper that was killed) whatever is left of it is undone.
fn clear_leftover(job: &Job, base: &Path) -> Result<()> {
    if !base.exists() {
        return Ok(());
    }
    if let Some(browse) = load(base)? {
        if mount::is_mounted(&browse.dir)? {
            return Err(Error::usage(format!(
                "{} is already a browse mount of job {}: `ciphersync umount {} {}` first",
                browse.dir.display(),
                job.name,
                job.name,
                crate::exec::shell_quote(&browse.dir.to_string_lossy())
            )));
        }
        log::warn(format!(
            "undoing what a killed `ciphersync mount` left at {}",
            browse.dir.display()
        ));
        return teardown(base, &browse);
    }
    remove_base(base)
}

/// Mounts the remote (an SFTP target), the union (an older run) and the
/// decrypted view, recording each point before it is mounted so that a
/// failure half way is undone.
fn set_up(job: &Job, ctx: Option<&Context>, base: &Path, browse: &mut Browse) -> Result<()> {
    let root = match &job.target {
        JobTarget::Local { path } => path.clone(),
        JobTarget::Sftp(sftp) => {
            let point = base.join("remote");
            mount::prepare_point(&point)?;
            browse.points.insert(0, point.clone());
            save(base, browse)?;
            Ssh::mount_detached(sftp, &base.join("ssh_config"), &point)?;
            point
        }
    };
    let remote = PathTarget::local(&root)?;
    if remote.list_names(FILES)?.is_empty() {
        return Err(Error::usage(format!(
            "there is no backup of job {} on {} yet (no files/ there): run `ciphersync backup {}` first",
            job.name,
            job.target_label(),
            job.name
        )));
    }
    let cipher = match browse.snapshot.clone() {
        None => root.join(FILES),
        Some(id) => {
            let ctx = ctx.expect("an older run is browsed with the lock held");
            let mask = base.join("mask");
            let layers = build_mask(ctx, &remote, &id, &mask)?;
            let point = base.join("union");
            mount::prepare_point(&point)?;
            browse.points.insert(0, point.clone());
            save(base, browse)?;
            mount_union(ctx, &id, &layers, &point)?;
            point
        }
    };
    interrupt::check()?;
    browse.points.insert(0, browse.dir.clone());
    save(base, browse)?;
    crypt::mount_forward_detached(job, &cipher, &browse.dir)
}

/// Writes the mask of run `id` and returns the union's layers, top first:
/// the mask, the later snapshot dirs the run needs (oldest first), files/.
fn build_mask(ctx: &Context, remote: &PathTarget, id: &str, mask: &Path) -> Result<Vec<PathBuf>> {
    let record = snapshots::read_record(remote, id, &ctx.job.state_dir)?;
    crate::restore::check_record_tree(id, &record.entries)?;
    let mut later = Vec::new();
    for later_id in snapshots::snapshot_dir_ids(remote)?
        .into_iter()
        .filter(|s| s.as_str() > id)
    {
        interrupt::check()?;
        let entries = remote.list_tree(&format!("{SNAPSHOTS}/{later_id}"))?;
        later.push((later_id, entries));
    }
    let sets: Vec<(String, BTreeSet<String>)> = later
        .iter()
        .map(|(id, entries)| {
            let paths = entries.iter().filter(|e| e.kind != 'd');
            (id.clone(), paths.map(|e| e.path.clone()).collect())
        })
        .collect();
    let used: BTreeSet<String> = snapshots::plan_rebuild(&record, &sets)
        .keys()
        .flatten()
        .map(|s| s.to_string())
        .collect();
    let files = remote.list_tree(FILES)?;
    let in_layers = later
        .iter()
        .filter(|(id, _)| used.contains(id))
        .flat_map(|(_, entries)| entries)
        .chain(&files);
    let plan = mask_plan(&record.entries, in_layers);

    crypt::create_private_dir(mask)?;
    for dir in &plan.dirs {
        crypt::create_private_dir(&mask.join(dir))?;
    }
    for whiteout in &plan.whiteouts {
        let path = mask.join(whiteout);
        std::fs::File::create(&path).ctx(|| format!("creating {}", path.display()))?;
    }
    // Directory modes last (deepest first): the record's, so the view
    // shows the run's; the root gets files/'s. Never setuid/setgid/sticky.
    for (dir, mode) in plan.dirs.iter().rev().zip(plan.modes.iter().rev()) {
        set_mode(&mask.join(dir), *mode)?;
    }
    let root_mode = std::fs::metadata(remote.root().join(FILES))
        .ctx(|| format!("reading {}", remote.root().join(FILES).display()))?
        .permissions()
        .mode();
    set_mode(mask, root_mode & 0o777)?;

    let mut layers = vec![mask.to_owned()];
    layers.extend(used.iter().map(|s| remote.root().join(SNAPSHOTS).join(s)));
    layers.push(remote.root().join(FILES));
    Ok(layers)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o777))
        .ctx(|| format!("setting the mode of {}", path.display()))
}

/// What the mask holds: the recorded directories (parents first) with
/// their modes, and a whiteout for each entry of a layer that the record
/// lacks, at the highest such level (its parent is recorded). gocryptfs'
/// own files are never hidden: the config and the dirivs are needed, and a
/// stray long-name file is ignored by gocryptfs anyway.
#[derive(Debug, Default, PartialEq)]
struct MaskPlan {
    dirs: Vec<String>,
    modes: Vec<u32>,
    whiteouts: Vec<String>,
}

fn mask_plan<'a>(
    record: &'a [TreeEntry],
    in_layers: impl Iterator<Item = &'a TreeEntry>,
) -> MaskPlan {
    let mut dirs: Vec<&TreeEntry> = record.iter().filter(|e| e.kind == 'd').collect();
    dirs.sort_by(|a, b| {
        let depth = |e: &TreeEntry| e.path.matches('/').count();
        depth(a).cmp(&depth(b)).then(a.path.cmp(&b.path))
    });
    let recorded: HashSet<&str> = record.iter().map(|e| e.path.as_str()).collect();
    let dir_set: HashSet<&str> = dirs.iter().map(|e| e.path.as_str()).collect();
    let mut whiteouts = BTreeSet::new();
    for entry in in_layers {
        let path = entry.path.as_str();
        if recorded.contains(path) || is_gocryptfs_metadata(path) {
            continue;
        }
        let (parent, name) = match path.rsplit_once('/') {
            Some((parent, name)) => (parent, name),
            None => ("", path),
        };
        if parent.is_empty() {
            whiteouts.insert(format!("{WHITEOUT}{name}"));
        } else if dir_set.contains(parent) {
            whiteouts.insert(format!("{parent}/{WHITEOUT}{name}"));
        }
    }
    MaskPlan {
        modes: dirs.iter().map(|e| e.mode & 0o777).collect(),
        dirs: dirs.into_iter().map(|e| e.path.clone()).collect(),
        whiteouts: whiteouts.into_iter().collect(),
    }
}

/// `fuse-overlayfs` over `layers` (lower layers only: read-only), which
/// daemonizes once mounted. It inherits the job's lock (module doc).
fn mount_union(ctx: &Context, id: &str, layers: &[PathBuf], point: &Path) -> Result<()> {
    let mut lower = Vec::new();
    for layer in layers {
        let text = layer.to_string_lossy();
        // fuse-overlayfs splits its options at `,` and `:`.
        if text.contains([':', ',', '\\']) {
            return Err(Error::usage(format!(
                "{} cannot be a layer of fuse-overlayfs (it holds `:`, `,` or `\\`): \
                 use `restore --snapshot {id}` instead",
                layer.display()
            )));
        }
        lower.push(text.into_owned());
    }
    let cmd = Cmd::new("fuse-overlayfs")
        .arg("-o")
        .arg(format!("lowerdir={}", lower.join(":")))
        .arg(point)
        .timeout(Duration::from_secs(120));
    let fd = ctx.lock_fd();
    set_cloexec(fd, false)?;
    let out = cmd.run();
    set_cloexec(fd, true)?;
    let out = out?;
    if !out.success() {
        return Err(out.failure(Some(&format!("joining the layers of run {id}"))));
    }
    Ok(())
}

fn set_cloexec(fd: BorrowedFd, on: bool) -> Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd, FcntlArg::F_SETFD(flags))
        .map(|_| ())
        .map_err(|e| Error::new(Kind::Io, format!("setting FD_CLOEXEC on the job lock: {e}")))
}

/// The foreground mode: until SIGINT/SIGTERM/SIGHUP, or until the view is
/// unmounted by someone else (`umount`, `fusermount3 -u`).
fn wait_for_the_end(dir: &Path) {
    while !interrupt::requested() && mount::is_mounted(dir).unwrap_or(false) {
        std::thread::sleep(POLL);
    }
}

/// Unmounts every point of a browse that is still mounted (a busy one
/// lazily), then removes its dir. Undoing twice is harmless.
fn teardown(base: &Path, browse: &Browse) -> Result<()> {
    for point in &browse.points {
        if mount::is_mounted(point)? {
            mount::unmount_point(point)?;
        }
    }
    remove_base(base)
}

fn remove_base(base: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(base).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700));
        }
    }
    match std::fs::remove_dir_all(base) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("removing {}", base.display()), e))
        }
        _ => Ok(()),
    }
}

/// The mount point: an existing, empty directory that is not mounted, not
/// in the source (the next backup would read the backup) and not in the
/// job's own dirs. Returned resolved, as the records keep it.
fn check_dir(job: &Job, dir: &Path) -> Result<PathBuf> {
    let shown = dir.display();
    let meta = std::fs::metadata(dir).map_err(|e| {
        Error::usage(format!(
            "mount point {shown}: {e} (create an empty directory to mount on)"
        ))
    })?;
    if !meta.is_dir() {
        return Err(Error::usage(format!(
            "mount point {shown} is not a directory"
        )));
    }
    let resolved = dir
        .canonicalize()
        .ctx(|| format!("resolving mount point {shown}"))?;
    if mount::is_mounted(&resolved)? {
        return Err(Error::usage(format!(
            "mount point {shown} is already a mount point"
        )));
    }
    if std::fs::read_dir(&resolved)
        .ctx(|| format!("reading mount point {shown}"))?
        .next()
        .is_some()
    {
        return Err(Error::usage(format!("mount point {shown} is not empty")));
    }
    let inside = |other: &Path, what: &str| -> Result<()> {
        let other = other.canonicalize().unwrap_or_else(|_| other.to_owned());
        match resolved.starts_with(&other) {
            true => Err(Error::usage(format!(
                "mount point {shown} lies inside the job's {what} {}",
                other.display()
            ))),
            false => Ok(()),
        }
    };
    inside(&job.source, "source")?;
    inside(&job.state_dir, "state_dir")?;
    inside(&job.runtime_dir, "runtime_dir")?;
    Ok(resolved)
}

/// `umount`'s DIR as `mount` recorded it: resolved, also when the mount
/// no longer answers (the parent is resolved, the name kept).
fn resolve_mount_point(dir: &Path) -> Result<PathBuf> {
    if let Ok(resolved) = dir.canonicalize() {
        return Ok(resolved);
    }
    let absolute = match dir.is_absolute() {
        true => dir.to_owned(),
        false => std::env::current_dir()
            .ctx(|| "reading the current directory")?
            .join(dir),
    };
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => Ok(parent
            .canonicalize()
            .unwrap_or_else(|_| parent.to_owned())
            .join(name)),
        _ => Ok(absolute),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: char, mode: u32, path: &str) -> TreeEntry {
        TreeEntry {
            kind,
            mode,
            size: 0,
            path: path.into(),
            link: None,
        }
    }

    #[test]
    fn the_mask_hides_what_the_run_did_not_have_at_the_highest_level() {
        let record = vec![
            entry('d', 0o755, "A"),
            entry('f', 0o644, "A/gocryptfs.diriv"),
            entry('f', 0o644, "A/x"),
            entry('d', 0o500, "A/B"),
            entry('f', 0o644, "gocryptfs.diriv"),
            entry('f', 0o644, "top"),
        ];
        let layers = [
            entry('f', 0o644, "gocryptfs.conf"),
            entry('f', 0o644, "gocryptfs.diriv"),
            entry('f', 0o644, "top"),
            entry('f', 0o644, "new-top"),
            entry('d', 0o755, "newdir"),
            entry('f', 0o644, "newdir/y"),
            entry('f', 0o644, "A/x"),
            entry('f', 0o644, "A/later"),
            entry('f', 0o644, "A/gocryptfs.longname.abc.name"),
            entry('f', 0o644, "A/.x.Tmp123"),
            entry('f', 0o644, "A/B/gone/deeper"),
        ];
        let plan = mask_plan(&record, layers.iter());
        assert_eq!(plan.dirs, ["A", "A/B"]);
        assert_eq!(plan.modes, [0o755, 0o500]);
        assert_eq!(
            plan.whiteouts,
            [
                ".wh.new-top",
                ".wh.newdir",
                "A/.wh..x.Tmp123",
                "A/.wh.later",
            ]
        );
        // A/B/gone/deeper is not in the record and A/B/gone is not a
        // recorded dir: nothing more to hide below a hidden name.
        let with_gone = [entry('d', 0o755, "A/B/gone")];
        let plan = mask_plan(&record, layers.iter().chain(&with_gone));
        assert!(plan.whiteouts.contains(&"A/B/.wh.gone".to_string()));
        assert!(!plan.whiteouts.iter().any(|w| w.contains("deeper")));
    }
}
