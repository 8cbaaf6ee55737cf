//! What an SFTP account cannot hold, carried encrypted: the owners (numeric
//! and by name), POSIX ACLs and user/trusted/security xattrs of every
//! entry of the source, and the special files rsync skips (docs/design.md,
//! "Metadata").
//!
//! Each backup writes three plaintext files, in formats standard tools
//! read, through a forward gocryptfs mount of a local directory that holds
//! a copy of the job's config (the config of `files/`) and of the view's
//! root `gocryptfs.diriv`; the resulting ciphertext goes to
//! `metadata/<id>/` on the target, next to copies of that config and
//! diriv, so `gocryptfs -ro metadata/<id> DIR` shows:
//!
//! - `acl.txt`: `getfacl -R -n` dump of every directory and regular file
//!   (`# owner:`/`# group:` numeric, `# owner-name:`/`# group-name:`, the
//!   ACL, the default ACL): `setfacl --restore=acl.txt` applies it;
//! - `xattrs.txt`: `getfattr -h -d -e hex -m '^(user|trusted|security)\.'`
//!   dump: `setfattr -h --restore=xattrs.txt` applies it;
//! - `others.txt`: symlinks and special files, one per line:
//!   `TYPE MODE UID GID OWNER GROUP RDEV PATH`.
//!
//! Each is padded with empty lines to a multiple of 64 KiB, so that the
//! server learns nothing from their sizes but a rough count of entries it
//! sees anyway. Everything read back is untrusted: lines and counts are
//! bounded, paths checked, every change made through a descriptor opened
//! without following links, no device and no setuid/setgid bit or file
//! capability unless asked (`--keep-setuid`).

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::libc;

use crate::config::Job;
use crate::error::{Error, IoContext, Kind, Result};
use crate::exec::Cmd;
use crate::fingerprint::SourceState;
use crate::limits;
use crate::log;
use crate::metadata_cache;
use crate::mount::{FsType, Mount};
use crate::run::Context;
use crate::target::Target;

/// The top-level directory on the target: `metadata/<id>/`.
pub const DIR: &str = "metadata";
pub const ACL_FILE: &str = "acl.txt";
pub const XATTR_FILE: &str = "xattrs.txt";
pub const OTHER_FILE: &str = "others.txt";
/// The three files of a manifest, and those that start with its header.
pub(crate) const FILES: [&str; 3] = [ACL_FILE, XATTR_FILE, OTHER_FILE];
pub(crate) const HEADED: [&str; 2] = [ACL_FILE, OTHER_FILE];
/// The first line of acl.txt and others.txt (setfacl skips comments).
const HEADER: &str = "# ciphersync-metadata 1 run ";
const PAD: u64 = 64 * 1024;
/// An xattr value is at most 64 KiB, hex-encoded twice that.
const MAX_LINE: usize = 256 * 1024;
const MAX_LINES: usize = 16 * limits::MAX_TREE_ENTRIES;
const NAMESPACES: [&str; 3] = ["user.", "trusted.", "security."];
const CAPABILITY: &str = "security.capability";
const ACL_ACCESS: &str = "system.posix_acl_access";
const ACL_DEFAULT: &str = "system.posix_acl_default";

/// What a manifest holds.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub entries: u64,
    pub acls: u64,
    pub xattrs: u64,
    pub specials: u64,
    /// Entries that could not be read (vanished, no permission).
    pub unreadable: u64,
}

// ---------------------------------------------------------------- writing

/// The first line of acl.txt and others.txt for run `id`.
pub(crate) fn header_line(id: &str) -> String {
    format!("{HEADER}{id}\n")
}

/// Whether `line` is the header of some run's manifest.
pub(crate) fn is_header(line: &[u8]) -> bool {
    line.starts_with(HEADER.as_bytes()) && line.ends_with(b"\n")
}

/// Walks `source` and writes the three files. Excludes are not applied:
/// a manifest entry whose file the backup lacks is skipped at restore.
pub fn collect(
    source: &Path,
    id: &str,
    acl: &mut dyn Write,
    xattrs: &mut dyn Write,
    others: &mut dyn Write,
) -> Result<Counts> {
    let io = |e: std::io::Error| Error::io("writing the metadata manifest", e);
    acl.write_all(header_line(id).as_bytes()).map_err(io)?;
    others.write_all(header_line(id).as_bytes()).map_err(io)?;
    writeln!(others, "# TYPE MODE UID GID OWNER GROUP RDEV PATH").map_err(io)?;
    let mut names = Names::default();
    let mut counts = Counts::default();
    for entry in walkdir::WalkDir::new(source)
        .follow_links(false)
        .sort_by_file_name()
    {
        crate::interrupt::check()?;
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                if e.io_error().map(|e| e.kind()) != Some(std::io::ErrorKind::NotFound) {
                    log::warn(format!("metadata: {e}"));
                }
                counts.unreadable += 1;
                continue;
            }
        };
        let Ok(meta) = entry.path().symlink_metadata() else {
            counts.unreadable += 1;
            continue;
        };
        let rel = entry.path().strip_prefix(source).unwrap_or(entry.path());
        let rel = match rel.as_os_str().is_empty() {
            true => b".".to_vec(),
            false => rel.as_os_str().as_bytes().to_vec(),
        };
        counts.entries += 1;
        let path = c_path(entry.path())?;
        let kind = meta.file_type();
        let (uid, gid) = (meta.uid(), meta.gid());
        let owner = names.user(uid);
        let group = names.group(gid);
        if kind.is_dir() || kind.is_file() {
            let mut block = Vec::new();
            block.extend_from_slice(b"# file: ");
            block.extend(quote(&rel));
            block.extend(format!("\n# owner: {uid}\n# group: {gid}\n").as_bytes());
            for (key, name) in [("owner-name", &owner), ("group-name", &group)] {
                if let Some(name) = name {
                    block.extend(format!("# {key}: ").as_bytes());
                    block.extend(quote(name));
                    block.push(b'\n');
                }
            }
            let mode = meta.mode();
            if mode & 0o7000 != 0 {
                let flag = |bit: u32, c: char| if mode & bit != 0 { c } else { '-' };
                block.extend(
                    format!(
                        "# flags: {}{}{}\n",
                        flag(0o4000, 's'),
                        flag(0o2000, 's'),
                        flag(0o1000, 't')
                    )
                    .as_bytes(),
                );
            }
            let access = get_xattr(&path, ACL_ACCESS).ok().flatten();
            let access = access.as_deref().and_then(parse_acl);
            let base = base_acl(mode);
            counts.acls += u64::from(access.is_some());
            write_acl(&mut block, "", access.as_deref().unwrap_or(&base));
            if kind.is_dir()
                && let Some(default) = get_xattr(&path, ACL_DEFAULT)
                    .ok()
                    .flatten()
                    .as_deref()
                    .and_then(parse_acl)
                    .filter(|d| !d.is_empty())
            {
                counts.acls += 1;
                write_acl(&mut block, "default:", &default);
            }
            block.push(b'\n');
            acl.write_all(&block).map_err(io)?;
        } else {
            let (letter, rdev) = if kind.is_symlink() {
                ('l', 0)
            } else if kind.is_fifo() {
                ('p', 0)
            } else if kind.is_socket() {
                ('s', 0)
            } else if kind.is_char_device() {
                ('c', meta.rdev())
            } else {
                ('b', meta.rdev())
            };
            counts.specials += u64::from(letter != 'l');
            let mut line =
                format!("{letter} {:04o} {uid} {gid} ", meta.mode() & 0o7777).into_bytes();
            for name in [&owner, &group] {
                match name {
                    Some(name) => line.extend(quote(name)),
                    None => line.push(b'-'),
                }
                line.push(b' ');
            }
            line.extend(format!("{rdev:#x} ").as_bytes());
            line.extend(quote(&rel));
            line.push(b'\n');
            others.write_all(&line).map_err(io)?;
        }
        let mut attrs = Vec::new();
        for name in list_xattrs(&path).unwrap_or_default() {
            let text = String::from_utf8_lossy(&name);
            if !NAMESPACES.iter().any(|ns| text.starts_with(ns)) {
                continue;
            }
            if let Ok(Some(value)) = get_xattr(&path, &text) {
                attrs.extend(quote(&name));
                attrs.extend(b"=0x");
                attrs.extend(hex(&value).as_bytes());
                attrs.push(b'\n');
                counts.xattrs += 1;
            }
        }
        if !attrs.is_empty() {
            xattrs.write_all(b"# file: ").map_err(io)?;
            xattrs.write_all(&quote(&rel)).map_err(io)?;
            xattrs.write_all(b"\n").map_err(io)?;
            xattrs.write_all(&attrs).map_err(io)?;
            xattrs.write_all(b"\n").map_err(io)?;
        }
    }
    Ok(counts)
}

/// A local scratch dir mounted for writing run's manifest, filled by
/// `collect` and uploaded by `Collected::store`. Dropped unused, it is
/// unmounted and removed.
pub struct ManifestWriter {
    // Declared first: unmounted before the scratch dir is removed.
    mount: Mount,
    scratch: ScratchDir,
    /// Where the last walk's manifest is kept (metadata_cache.rs).
    state_dir: std::path::PathBuf,
}

impl ManifestWriter {
    /// The scratch dir, with the config and root diriv that make
    /// `metadata/<id>/` a gocryptfs directory of its own, mounted.
    fn prepare(ctx: &Context, view: &Path) -> Result<ManifestWriter> {
        let job = ctx.job;
        let scratch = ScratchDir(ctx.state("metadata-next"));
        scratch.reset()?;
        let conf = std::fs::read(&job.gocryptfs_config)
            .ctx(|| format!("reading {}", job.gocryptfs_config.display()))?;
        crate::fsutil::write_atomic(&scratch.0.join(crate::crypt::REMOTE_CONFIG_NAME), &conf)?;
        // Names are encrypted with the root's IV: the view's (that of files/).
        // Plaintext and deterministic names have none.
        let diriv = view.join("gocryptfs.diriv");
        if let Ok(mut file) = File::open(&diriv) {
            let mut bytes = Vec::new();
            (&mut file)
                .take(limits::MAX_SMALL_FILE)
                .read_to_end(&mut bytes)
                .ctx(|| format!("reading {}", diriv.display()))?;
            crate::fsutil::write_atomic(&scratch.0.join("gocryptfs.diriv"), &bytes)?;
        }
        let point = ctx.runtime("metadata");
        crate::mount::prepare_point(&point)?;
        let mount = mount_writable(job, &scratch.0, &point)?;
        Ok(ManifestWriter {
            mount,
            scratch,
            state_dir: job.state_dir.clone(),
        })
    }

    /// The manifest of `source` as it is now, for run `id`, encrypted in
    /// the scratch dir, which is unmounted: ready to store. `state` is the
    /// source's fingerprint, taken before: where the last walk's manifest
    /// was of a source with the same, that one is written under this run's
    /// id; else the source is walked, and the walk's manifest kept.
    pub fn collect(
        self,
        source: &Path,
        id: &str,
        state: Option<&SourceState>,
    ) -> Result<Collected> {
        let ManifestWriter {
            mount,
            scratch,
            state_dir,
        } = self;
        let reused = state.and_then(|s| metadata_cache::reuse(&state_dir, s, id, mount.point()));
        let counts = match reused {
            Some(counts) => {
                log::debug(|| "metadata: the manifest kept from the last walk reused".into());
                counts
            }
            None => {
                let keeping = metadata_cache::keeping(&state_dir, state);
                write_manifest(source, id, mount.point(), keeping)?
            }
        };
        mount.unmount()?;
        Ok(Collected {
            scratch,
            counts,
            id: id.to_string(),
        })
    }
}

/// A run's manifest, encrypted in the scratch dir, not yet on the target.
pub struct Collected {
    scratch: ScratchDir,
    counts: Counts,
    id: String,
}

/// A run's manifest as the start of the backup left it: collected
/// already where the source was as the last backup found it (during the
/// preflight: sync.rs, `start`), else not begun: its scratch dir's mount
/// (a gocryptfs scrypt, 0.17 s here) is made beside the mirror, where it
/// no longer delays the first byte sent.
pub enum Manifest {
    NotBegun,
    Collected(Collected),
}

impl Manifest {
    /// Collected from the job's source now, where it was not yet (a backup
    /// does it beside the mirror: sync.rs); `view` is the source's
    /// encrypted view, whose root IV the manifest's names use.
    pub fn collected(
        self,
        ctx: &Context,
        view: &Path,
        id: &str,
        state: Option<&SourceState>,
    ) -> Result<Collected> {
        match self {
            Manifest::NotBegun => {
                ManifestWriter::prepare(ctx, view)?.collect(&ctx.job.source, id, state)
            }
            Manifest::Collected(collected) => Ok(collected),
        }
    }
}

impl Collected {
    /// Stores run `id`'s manifest on the target (a backup, after the
    /// mirror and before the record).
    pub fn store(self, remote: &dyn Target, id: &str) -> Result<Counts> {
        if self.id != id {
            return Err(Error::new(
                Kind::Io,
                format!("the manifest was made for run {}, not {id}", self.id),
            ));
        }
        self.upload(remote)
    }
}

impl Collected {
    fn upload(self, remote: &dyn Target) -> Result<Counts> {
        let Collected {
            scratch,
            counts,
            id,
        } = self;
        let dir = format!("{DIR}/{id}");
        let names: Vec<String> = std::fs::read_dir(&scratch.0)
            .ctx(|| format!("reading {}", scratch.0.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        remote.write_dir(&[DIR, &dir], (&scratch.0, &dir), &names)?;
        log::debug(|| format!("metadata of run {id}: {counts:?}"));
        Ok(counts)
    }
}

/// Walks `source` into the manifest's three files under `plain`, with a
/// copy of each to keep where `keeping` says so.
fn write_manifest(
    source: &Path,
    id: &str,
    plain: &Path,
    keeping: Option<metadata_cache::Keeping>,
) -> Result<Counts> {
    let create = |name: &str| -> Result<Tee> {
        let path = plain.join(name);
        let file = File::create(&path).ctx(|| format!("creating {}", path.display()))?;
        Ok(Tee {
            main: BufWriter::new(file),
            copy: keeping.as_ref().and_then(|k| k.copy(name)),
        })
    };
    let (mut acl, mut xattrs, mut others) =
        (create(ACL_FILE)?, create(XATTR_FILE)?, create(OTHER_FILE)?);
    let counts = collect(source, id, &mut acl, &mut xattrs, &mut others)?;
    let mut copies = Vec::new();
    for (name, tee) in [(ACL_FILE, acl), (XATTR_FILE, xattrs), (OTHER_FILE, others)] {
        let file = tee
            .main
            .into_inner()
            .map_err(|e| Error::io(format!("writing {name}"), e.into_error()))?;
        pad(&file).ctx(|| format!("writing {name}"))?;
        copies.push(tee.copy);
    }
    if let Some(keeping) = keeping {
        keeping.keep(&counts, copies);
    }
    Ok(counts)
}

/// A manifest file being written, and its copy to keep: a copy that fails
/// is dropped (it only saves the next run time), the file is not.
struct Tee {
    main: BufWriter<File>,
    copy: Option<metadata_cache::KeptCopy>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.main.write_all(buf)?;
        if let Some(copy) = &mut self.copy
            && let Err(e) = copy.write_all(buf)
        {
            log::debug(|| format!("the manifest is not kept: {e}"));
            self.copy = None;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.main.flush()
    }
}

/// Empty lines up to the next multiple of `PAD` (at least one): setfacl
/// and setfattr skip them.
pub(crate) fn pad(mut file: &File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    let target = (len / PAD + 1) * PAD;
    let newlines = vec![b'\n'; 64 * 1024];
    let mut left = target - len;
    while left > 0 {
        let n = left.min(newlines.len() as u64) as usize;
        file.write_all(&newlines[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

fn mount_writable(job: &Job, cipher_dir: &Path, point: &Path) -> Result<Mount> {
    crate::crypt::check_password_file(job)?;
    let cmd = Cmd::new("gocryptfs")
        .args(["-fg", "-q", "-nosyslog"])
        .arg("-passfile")
        .arg(&job.password_file)
        .arg("--")
        .arg(cipher_dir)
        .arg(point);
    Mount::establish(point, FsType::Gocryptfs, cmd, |out| {
        out.failure(Some("mounting the metadata manifest for writing"))
    })
}

struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    fn reset(&self) -> Result<()> {
        if self.0.exists() {
            std::fs::remove_dir_all(&self.0).ctx(|| format!("removing {}", self.0.display()))?;
        }
        crate::crypt::create_private_dir(&self.0)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `metadata/<id>` of runs whose records prune deleted, and of unfinished
/// runs older than the oldest run kept.
pub fn prune_dirs(remote: &dyn Target, deleted_records: &[String]) -> Result<()> {
    let kept = crate::snapshots::recorded_ids(remote)?;
    let oldest = kept.first().cloned();
    let gone: Vec<String> = remote
        .list_names(DIR)?
        .into_iter()
        .filter(|id| crate::status::parse_snapshot_id(id).is_some())
        .filter(|id| deleted_records.contains(id) || oldest.as_ref().is_some_and(|o| id < o))
        .map(|id| format!("{DIR}/{id}"))
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    remote.remove(&gone)
}

// ---------------------------------------------------------------- applying

/// How a restore applies a manifest.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions<'a> {
    /// Apply owners (root); ACLs and xattrs are applied either way.
    pub owners: bool,
    /// Allow setuid/setgid bits to survive the chown, and security.capability.
    pub keep_setuid: bool,
    /// The restored paths (empty: everything, the root included).
    pub paths: &'a [String],
}

/// What applying did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub owners: u64,
    pub acls: u64,
    pub xattrs: u64,
    pub fifos: u64,
    /// Sockets and devices, never restored.
    pub specials_left: u64,
    /// Entries the restored tree lacks (excluded, not asked for).
    pub missing: u64,
    /// What failed, one line each (the first few).
    pub problems: Vec<String>,
    pub problem_count: u64,
}

impl Applied {
    fn problem(&mut self, what: String) {
        self.problem_count += 1;
        if self.problems.len() < 10 {
            self.problems.push(what);
        }
    }
}

/// Restore: mounts `dir`, a run's `metadata/<id>` (on the target, or
/// pulled into a local stage), decrypted and read-only, for `apply`. None
/// when that run stored none.
pub fn mount_manifest(ctx: &Context, dir: &Path) -> Result<Option<Mount>> {
    // A local target's planted link must not lead the mount elsewhere.
    if !std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Ok(None);
    }
    let point = ctx.runtime("metadata");
    crate::mount::prepare_point(&point)?;
    crate::crypt::mount_forward(ctx.job, dir, &point).map(Some)
}

/// Applies the plaintext manifest in `plain` to `to`.
pub fn apply(plain: &Path, id: &str, to: &Path, options: ApplyOptions) -> Result<Applied> {
    let mut tree = Tree::open(to)?;
    let mut applied = Applied::default();
    let mut names = Names::default();
    let open = |name: &str| -> Result<ManifestLines> {
        let path = plain.join(name);
        let file = File::open(&path).ctx(|| format!("opening {}", path.display()))?;
        Ok(ManifestLines::new(file, format!("{name} of run {id}")))
    };
    let header = format!("{HEADER}{id}");
    // Owners first: a chown clears setuid bits and file capabilities.
    let mut lines = open(ACL_FILE)?;
    expect_header(&mut lines, &header, ACL_FILE)?;
    let mut block = AclBlock::default();
    while let Some(line) = lines.next_line()? {
        if line.is_empty() {
            if let Some(done) = block.take() {
                apply_acl_block(&mut tree, &mut names, &done, options, &mut applied);
            }
            continue;
        }
        block.add(&line).map_err(|why| lines.corrupt(why))?;
    }
    if let Some(done) = block.take() {
        apply_acl_block(&mut tree, &mut names, &done, options, &mut applied);
    }

    let mut lines = open(OTHER_FILE)?;
    expect_header(&mut lines, &header, OTHER_FILE)?;
    while let Some(line) = lines.next_line()? {
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let other = parse_other(&line).map_err(|why| lines.corrupt(why))?;
        if wanted(&other.path, options.paths) {
            apply_other(&mut tree, &mut names, &other, options, &mut applied);
        }
    }

    let mut lines = open(XATTR_FILE)?;
    let mut current: Option<Vec<u8>> = None;
    while let Some(line) = lines.next_line()? {
        if line.is_empty() {
            current = None;
            continue;
        }
        if let Some(rest) = line.strip_prefix(b"# file: ") {
            current = Some(check_path(rest).map_err(|why| lines.corrupt(why))?);
            continue;
        }
        if line.starts_with(b"#") {
            continue;
        }
        let Some(path) = current.as_ref().filter(|p| wanted(p, options.paths)) else {
            continue;
        };
        let (name, value) = parse_xattr(&line).map_err(|why| lines.corrupt(why))?;
        let text = String::from_utf8_lossy(&name).into_owned();
        if !NAMESPACES.iter().any(|ns| text.starts_with(ns))
            || (text == CAPABILITY && !options.keep_setuid)
        {
            continue;
        }
        match tree.set_xattr(path, &name, &value) {
            Ok(true) => applied.xattrs += 1,
            Ok(false) => applied.missing += 1,
            Err(e) => applied.problem(format!("{}: xattr {text}: {e}", show(path))),
        }
    }
    Ok(applied)
}

fn expect_header(lines: &mut ManifestLines, header: &str, name: &str) -> Result<()> {
    match lines.next_line()? {
        Some(line) if line == header.as_bytes() => Ok(()),
        Some(line) if line.starts_with(HEADER.as_bytes()) => Err(Error::new(
            Kind::Corrupt,
            format!(
                "{name}: the metadata stored for this run says it is of another run ({}): \
                 the target swapped it; not applied",
                limits::quote(&String::from_utf8_lossy(&line[HEADER.len()..]), 40)
            ),
        )),
        _ => Err(lines.corrupt("no ciphersync-metadata header".into())),
    }
}

fn wanted(path: &[u8], paths: &[String]) -> bool {
    if paths.is_empty() {
        return true;
    }
    paths.iter().any(|p| {
        let p = p.trim_end_matches('/').as_bytes();
        path == p || (path.starts_with(p) && path.get(p.len()) == Some(&b'/'))
    })
}

#[derive(Default)]
struct AclBlock {
    path: Option<Vec<u8>>,
    uid: Option<u32>,
    gid: Option<u32>,
    owner: Option<Vec<u8>>,
    group: Option<Vec<u8>>,
    access: Vec<AclEntry>,
    default: Vec<AclEntry>,
    lines: usize,
}

impl AclBlock {
    fn add(&mut self, line: &[u8]) -> std::result::Result<(), String> {
        self.lines += 1;
        if self.lines > 4096 {
            return Err("an entry of more than 4096 lines".into());
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let number = |b: &[u8]| {
            text(b)
                .parse::<u32>()
                .map_err(|_| format!("not an id: {}", limits::quote(&text(b), 40)))
        };
        if let Some(rest) = line.strip_prefix(b"# file: ") {
            self.path = Some(check_path(rest)?);
        } else if let Some(rest) = line.strip_prefix(b"# owner: ") {
            self.uid = Some(number(rest)?);
        } else if let Some(rest) = line.strip_prefix(b"# group: ") {
            self.gid = Some(number(rest)?);
        } else if let Some(rest) = line.strip_prefix(b"# owner-name: ") {
            self.owner = Some(unquote(rest).ok_or("a badly quoted name")?);
        } else if let Some(rest) = line.strip_prefix(b"# group-name: ") {
            self.group = Some(unquote(rest).ok_or("a badly quoted name")?);
        } else if line.starts_with(b"#") {
        } else if let Some(rest) = line.strip_prefix(b"default:") {
            self.default.push(parse_acl_entry(rest)?);
        } else {
            self.access.push(parse_acl_entry(line)?);
        }
        Ok(())
    }

    fn take(&mut self) -> Option<AclBlock> {
        let block = std::mem::take(self);
        block.path.is_some().then_some(block)
    }
}

fn apply_acl_block(
    tree: &mut Tree,
    names: &mut Names,
    block: &AclBlock,
    options: ApplyOptions,
    applied: &mut Applied,
) {
    let path = block.path.as_deref().unwrap_or(b".");
    if !wanted(path, options.paths) || (path == b"." && !options.paths.is_empty()) {
        return;
    }
    let fd = match tree.open_entry(path) {
        Ok(Some(fd)) => fd,
        Ok(None) => {
            applied.missing += 1;
            return;
        }
        Err(e) => return applied.problem(format!("{}: {e}", show(path))),
    };
    let Ok(stat) = nix::sys::stat::fstat(&fd) else {
        return applied.problem(format!("{}: cannot stat", show(path)));
    };
    let is_dir = stat.st_mode & libc::S_IFMT == libc::S_IFDIR;
    if !is_dir && stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        return applied.problem(format!("{}: not a file or directory", show(path)));
    }
    if options.owners
        && let (Some(uid), Some(gid)) = (block.uid, block.gid)
    {
        let uid = names.local_uid(block.owner.as_deref(), uid);
        let gid = names.local_gid(block.group.as_deref(), gid);
        match nix::unistd::fchown(&fd, Some(uid.into()), Some(gid.into())) {
            Ok(()) => applied.owners += 1,
            Err(e) => applied.problem(format!("{}: chown: {e}", show(path))),
        }
        // The kernel drops setuid/setgid on a chown: kept only when asked
        // (the copy kept them only then).
        let special = stat.st_mode & 0o6000;
        if options.keep_setuid && special != 0 && !is_dir {
            let mode = nix::sys::stat::Mode::from_bits_truncate(stat.st_mode & 0o7777);
            if let Err(e) = nix::sys::stat::fchmod(&fd, mode) {
                applied.problem(format!("{}: chmod: {e}", show(path)));
            }
        }
    }
    // No record lists the root, so a rebuilt run (`--snapshot`) has the
    // stage's 0700 there: the manifest has the root's permission bits.
    if path == b"." {
        let bits = |tag: u16, shift: u32| {
            block
                .access
                .iter()
                .find(|e| e.tag == tag)
                .map_or(0, |e| u32::from(e.perm & 7) << shift)
        };
        let group = match block.access.iter().any(|e| e.tag == 0x10) {
            true => bits(0x10, 3),
            false => bits(4, 3),
        };
        let mode = bits(1, 6) | group | bits(0x20, 0);
        if let Err(e) = nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(mode))
        {
            applied.problem(format!("{}: chmod: {e}", show(path)));
        }
    }
    for (name, entries) in [(ACL_ACCESS, &block.access), (ACL_DEFAULT, &block.default)] {
        let extended = entries.iter().any(|e| !matches!(e.tag, 1 | 4 | 0x20));
        if (name == ACL_ACCESS && !extended)
            || (name == ACL_DEFAULT && (entries.is_empty() || !is_dir))
        {
            continue;
        }
        match set_fd_xattr(fd.as_raw_fd(), name, &acl_binary(entries)) {
            Ok(()) => applied.acls += 1,
            Err(e) => applied.problem(format!("{}: {name}: {e}", show(path))),
        }
    }
}

struct Other {
    kind: u8,
    mode: u32,
    uid: u32,
    gid: u32,
    owner: Option<Vec<u8>>,
    group: Option<Vec<u8>>,
    path: Vec<u8>,
}

fn parse_other(line: &[u8]) -> std::result::Result<Other, String> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let [kind, mode, uid, gid, owner, group, _rdev, path] = fields[..] else {
        return Err("a line without its 8 fields".into());
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let name = |b: &[u8]| -> std::result::Result<Option<Vec<u8>>, String> {
        match b {
            b"-" => Ok(None),
            _ => unquote(b)
                .map(Some)
                .ok_or_else(|| "a badly quoted name".into()),
        }
    };
    let kind = match kind {
        [k @ (b'l' | b'p' | b's' | b'c' | b'b')] => *k,
        _ => return Err(format!("unknown type {}", limits::quote(&text(kind), 20))),
    };
    Ok(Other {
        kind,
        mode: u32::from_str_radix(&text(mode), 8).map_err(|_| "a bad mode")?,
        uid: text(uid).parse().map_err(|_| "a bad uid")?,
        gid: text(gid).parse().map_err(|_| "a bad gid")?,
        owner: name(owner)?,
        group: name(group)?,
        path: check_path(path)?,
    })
}

fn apply_other(
    tree: &mut Tree,
    names: &mut Names,
    other: &Other,
    options: ApplyOptions,
    applied: &mut Applied,
) {
    let path = &other.path;
    let want = match other.kind {
        b'l' => libc::S_IFLNK,
        b'p' => libc::S_IFIFO,
        _ => {
            applied.specials_left += 1;
            return;
        }
    };
    let Ok((dir, Some(name))) = tree.parent(path) else {
        applied.missing += 1;
        return;
    };
    let exists = lstat_at(dir, &name);
    let stat = match exists {
        Err(nix::errno::Errno::ENOENT) if other.kind == b'p' => {
            // A FIFO is safe to make: a name, no device, no data.
            let mode = other.mode & 0o777;
            let made = unsafe { libc::mknodat(dir, name.as_ptr(), libc::S_IFIFO | mode, 0) };
            if made != 0 {
                return applied.problem(format!(
                    "{}: mkfifo: {}",
                    show(path),
                    std::io::Error::last_os_error()
                ));
            }
            // mknodat applied the umask.
            unsafe { libc::fchmodat(dir, name.as_ptr(), mode, 0) };
            applied.fifos += 1;
            match lstat_at(dir, &name) {
                Ok(stat) => stat,
                Err(e) => return applied.problem(format!("{}: {e}", show(path))),
            }
        }
        Err(_) => {
            applied.missing += 1;
            return;
        }
        Ok(stat) => stat,
    };
    if stat.st_mode & libc::S_IFMT != want {
        return applied.problem(format!("{}: not what the metadata says", show(path)));
    }
    if options.owners {
        let uid = names.local_uid(other.owner.as_deref(), other.uid);
        let gid = names.local_gid(other.group.as_deref(), other.gid);
        let done =
            unsafe { libc::fchownat(dir, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) };
        match done {
            0 => applied.owners += 1,
            _ => applied.problem(format!(
                "{}: chown: {}",
                show(path),
                std::io::Error::last_os_error()
            )),
        }
    }
}

/// The restored tree, walked one component at a time without following
/// a link; the last parent stays open (manifests are in walk order).
struct Tree {
    root: OwnedFd,
    last: Option<(Vec<u8>, OwnedFd)>,
}

impl Tree {
    fn open(to: &Path) -> Result<Tree> {
        let fd = open_at(libc::AT_FDCWD, &c_path(to)?, libc::O_DIRECTORY)
            .ctx(|| format!("opening {}", to.display()))?;
        Ok(Tree {
            root: fd,
            last: None,
        })
    }

    /// The open parent directory of `path` and its last component (None
    /// for the root itself).
    fn parent(&mut self, path: &[u8]) -> std::io::Result<(RawFd, Option<CString>)> {
        if path == b"." {
            return Ok((self.root.as_raw_fd(), None));
        }
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        let name = CString::new(name).map_err(std::io::Error::other)?;
        if parent.is_empty() {
            return Ok((self.root.as_raw_fd(), Some(name)));
        }
        if self.last.as_ref().is_none_or(|(p, _)| p != parent) {
            let mut fd = open_at(
                self.root.as_raw_fd(),
                &CString::new(".").unwrap(),
                libc::O_DIRECTORY,
            )?;
            for part in parent.split(|&b| b == b'/') {
                let part = CString::new(part).map_err(std::io::Error::other)?;
                fd = open_at(fd.as_raw_fd(), &part, libc::O_DIRECTORY)?;
            }
            self.last = Some((parent.to_vec(), fd));
        }
        let fd = self
            .last
            .as_ref()
            .map(|(_, fd)| fd.as_raw_fd())
            .unwrap_or_default();
        Ok((fd, Some(name)))
    }

    /// The entry, opened without following a link; None when missing or
    /// a link.
    fn open_entry(&mut self, path: &[u8]) -> std::io::Result<Option<OwnedFd>> {
        let (dir, name) = match self.parent(path) {
            Ok(found) => found,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let name = name.unwrap_or_else(|| CString::new(".").unwrap());
        match open_at(dir, &name, libc::O_NONBLOCK | libc::O_NOCTTY) {
            Ok(fd) => Ok(Some(fd)),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ELOOP | libc::ENXIO)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sets an xattr on the entry; a symlink's own (lsetxattr through the
    /// open parent). false when the entry is missing.
    fn set_xattr(&mut self, path: &[u8], name: &[u8], value: &[u8]) -> std::io::Result<bool> {
        let name = CString::new(name).map_err(std::io::Error::other)?;
        if let Some(fd) = self.open_entry(path)? {
            let done = unsafe {
                libc::fsetxattr(
                    fd.as_raw_fd(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            return match done {
                0 => Ok(true),
                _ => Err(std::io::Error::last_os_error()),
            };
        }
        let Ok((dir, Some(last))) = self.parent(path) else {
            return Ok(false);
        };
        let link = lstat_at(dir, &last);
        if !link.is_ok_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFLNK) {
            return Ok(false);
        }
        let mut via = format!("/proc/self/fd/{dir}/").into_bytes();
        via.extend(last.as_bytes());
        let via = CString::new(via).map_err(std::io::Error::other)?;
        let done = unsafe {
            libc::lsetxattr(
                via.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        match done {
            0 => Ok(true),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
}

fn open_at(dir: RawFd, name: &CString, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn lstat_at(dir: RawFd, name: &CString) -> nix::Result<nix::sys::stat::FileStat> {
    // The fd is one of Tree's, open for the whole call.
    let dir = unsafe { std::os::fd::BorrowedFd::borrow_raw(dir) };
    nix::sys::stat::fstatat(
        dir,
        name.as_c_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
}

fn set_fd_xattr(fd: RawFd, name: &str, value: &[u8]) -> std::io::Result<()> {
    let name = CString::new(name).map_err(std::io::Error::other)?;
    match unsafe { libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Lines of at most `MAX_LINE` bytes, at most `MAX_LINES` of them.
struct ManifestLines {
    reader: BufReader<File>,
    what: String,
    count: usize,
}

impl ManifestLines {
    fn new(file: File, what: String) -> ManifestLines {
        ManifestLines {
            reader: BufReader::new(file),
            what,
            count: 0,
        }
    }

    fn next_line(&mut self) -> Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        let limit = MAX_LINE as u64 + 1;
        let read = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io(format!("reading {}", self.what), e))?;
        if read == 0 {
            return Ok(None);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() as u64 >= limit {
            return Err(limits::too_much(
                &self.what,
                format!("a line longer than {MAX_LINE} bytes"),
            ));
        }
        self.count += 1;
        if self.count > MAX_LINES {
            return Err(limits::too_much(
                &self.what,
                format!("more than {MAX_LINES} lines"),
            ));
        }
        Ok(Some(line))
    }

    fn corrupt(&self, why: String) -> Error {
        Error::new(
            Kind::Corrupt,
            format!("{}, line {}: {why}", self.what, self.count),
        )
    }
}

// ---------------------------------------------------------------- formats

/// getfacl's quoting: whitespace, control bytes and `\` as `\ooo`.
pub fn quote(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if b <= b' ' || b == b'\\' || b == 0x7f {
            out.extend(format!("\\{b:03o}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

pub fn unquote(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let digits = bytes.get(i + 1..i + 4)?;
            if !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                return None;
            }
            let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(value).ok()?);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A manifest path: `.` or relative components, none empty, `.`, `..`
/// or holding a NUL.
fn check_path(quoted: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let path = unquote(quoted).ok_or("a badly quoted path")?;
    let bad = || {
        format!(
            "a path outside the tree: {}",
            limits::quote(&String::from_utf8_lossy(&path), 80)
        )
    };
    if path == b"." {
        return Ok(path);
    }
    if path.len() > 4096
        || path.contains(&0)
        || path
            .split(|&b| b == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..")
    {
        return Err(bad());
    }
    Ok(path)
}

fn show(path: &[u8]) -> String {
    limits::quote(&String::from_utf8_lossy(path), 200)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AclEntry {
    tag: u16,
    perm: u16,
    id: u32,
}

const UNDEFINED_ID: u32 = u32::MAX;

/// The kernel's `system.posix_acl_*` value: version 2, then (tag, perm,
/// id) entries, little-endian.
fn parse_acl(bytes: &[u8]) -> Option<Vec<AclEntry>> {
    let (version, rest) = bytes.split_at_checked(4)?;
    if version != 2u32.to_le_bytes() || !rest.len().is_multiple_of(8) {
        return None;
    }
    Some(
        rest.chunks(8)
            .map(|c| AclEntry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

fn acl_binary(entries: &[AclEntry]) -> Vec<u8> {
    let mut sorted = entries.to_vec();
    sorted.sort_by_key(|e| (e.tag, e.id));
    let mut out = 2u32.to_le_bytes().to_vec();
    for e in sorted {
        out.extend(e.tag.to_le_bytes());
        out.extend(e.perm.to_le_bytes());
        out.extend(e.id.to_le_bytes());
    }
    out
}

fn base_acl(mode: u32) -> Vec<AclEntry> {
    let entry = |tag, shift: u32| AclEntry {
        tag,
        perm: ((mode >> shift) & 7) as u16,
        id: UNDEFINED_ID,
    };
    vec![entry(1, 6), entry(4, 3), entry(0x20, 0)]
}

fn write_acl(out: &mut Vec<u8>, prefix: &str, entries: &[AclEntry]) {
    for e in entries {
        let perm = format!(
            "{}{}{}",
            if e.perm & 4 != 0 { 'r' } else { '-' },
            if e.perm & 2 != 0 { 'w' } else { '-' },
            if e.perm & 1 != 0 { 'x' } else { '-' }
        );
        let line = match e.tag {
            1 => format!("{prefix}user::{perm}\n"),
            2 => format!("{prefix}user:{}:{perm}\n", e.id),
            4 => format!("{prefix}group::{perm}\n"),
            8 => format!("{prefix}group:{}:{perm}\n", e.id),
            0x10 => format!("{prefix}mask::{perm}\n"),
            0x20 => format!("{prefix}other::{perm}\n"),
            _ => continue,
        };
        out.extend(line.as_bytes());
    }
}

fn parse_acl_entry(line: &[u8]) -> std::result::Result<AclEntry, String> {
    let text = String::from_utf8_lossy(line);
    // getfacl may add "\t#effective:r--".
    let text = text
        .split(['\t', '#'])
        .next()
        .unwrap_or_default()
        .trim_end();
    let bad = || format!("not an ACL entry: {}", limits::quote(text, 60));
    let mut parts = text.split(':');
    let (Some(tag), Some(qualifier), Some(perm), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let named = !qualifier.is_empty();
    let tag = match (tag, named) {
        ("user" | "u", false) => 1,
        ("user" | "u", true) => 2,
        ("group" | "g", false) => 4,
        ("group" | "g", true) => 8,
        ("mask" | "m", false) => 0x10,
        ("other" | "o", false) => 0x20,
        _ => return Err(bad()),
    };
    let id = match named {
        true => qualifier.parse::<u32>().map_err(|_| bad())?,
        false => UNDEFINED_ID,
    };
    if perm.len() != 3 {
        return Err(bad());
    }
    let mut bits = 0;
    for (c, (letter, bit)) in perm.chars().zip([('r', 4), ('w', 2), ('x', 1)]) {
        match c {
            '-' => {}
            c if c == letter => bits |= bit,
            _ => return Err(bad()),
        }
    }
    Ok(AclEntry {
        tag,
        perm: bits,
        id,
    })
}

fn parse_xattr(line: &[u8]) -> std::result::Result<(Vec<u8>, Vec<u8>), String> {
    let eq = line
        .iter()
        .position(|&b| b == b'=')
        .ok_or("an xattr line without =")?;
    let name = unquote(&line[..eq]).ok_or("a badly quoted xattr name")?;
    if name.is_empty() || name.len() > 255 || name.contains(&0) {
        return Err("a bad xattr name".into());
    }
    let value = line[eq + 1..]
        .strip_prefix(b"0x")
        .and_then(unhex)
        .ok_or("an xattr value that is not 0x followed by hex")?;
    if value.len() > 64 * 1024 {
        return Err("an xattr value over 64 KiB".into());
    }
    Ok((name, value))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

// ---------------------------------------------------------------- system

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::new(Kind::Io, format!("{} holds a NUL", path.display())))
}

fn list_xattrs(path: &CString) -> std::io::Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf
                .split(|&b| b == 0)
                .filter(|n| !n.is_empty())
                .map(<[u8]>::to_vec)
                .collect());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    }
}

fn get_xattr(path: &CString, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    let name = CString::new(name).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; 256];
    loop {
        let n = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < 1 << 17 => buf.resize(buf.len() * 4, 0),
            Some(libc::ENODATA | libc::ENOTSUP) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Owner and group names, looked up once each.
#[derive(Default)]
struct Names {
    users: HashMap<u32, Option<Vec<u8>>>,
    groups: HashMap<u32, Option<Vec<u8>>>,
    uids: HashMap<Vec<u8>, Option<u32>>,
    gids: HashMap<Vec<u8>, Option<u32>>,
}

impl Names {
    fn user(&mut self, uid: u32) -> Option<Vec<u8>> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name.into_bytes())
            })
            .clone()
    }

    fn group(&mut self, gid: u32) -> Option<Vec<u8>> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| g.name.into_bytes())
            })
            .clone()
    }

    /// As tar does: the name's id on this machine, else the stored number.
    fn local_uid(&mut self, name: Option<&[u8]>, uid: u32) -> u32 {
        let Some(name) = name else { return uid };
        self.uids
            .entry(name.to_vec())
            .or_insert_with(|| {
                let name = std::str::from_utf8(name).ok()?;
                nix::unistd::User::from_name(name)
                    .ok()
                    .flatten()
                    .map(|u| u.uid.as_raw())
            })
            .unwrap_or(uid)
    }

    fn local_gid(&mut self, name: Option<&[u8]>, gid: u32) -> u32 {
        let Some(name) = name else { return gid };
        self.gids
            .entry(name.to_vec())
            .or_insert_with(|| {
                let name = std::str::from_utf8(name).ok()?;
                nix::unistd::Group::from_name(name)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw())
            })
            .unwrap_or(gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_round_trips_and_refuses_a_bad_escape() {
        let name = b"a b\\c\n\x7f\xc3\xa9";
        let quoted = quote(name);
        assert_eq!(quoted, b"a\\040b\\134c\\012\\177\xc3\xa9".to_vec());
        assert_eq!(unquote(&quoted).unwrap(), name.to_vec());
        assert_eq!(unquote(b"a\\9zz"), None);
        assert_eq!(unquote(b"a\\"), None);
        assert_eq!(unquote(b"\\777"), None);
    }

    #[test]
    fn paths_must_stay_inside_the_tree() {
        for bad in [
            &b"../etc"[..],
            b"a/../b",
            b"/etc",
            b"a//b",
            b"a/./b",
            b"a\\000b",
            b"",
        ] {
            assert!(check_path(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(check_path(b".").unwrap(), b".");
        assert_eq!(check_path(b"a/b\\040c").unwrap(), b"a/b c");
    }

    #[test]
    fn acl_text_and_binary_round_trip() {
        let entries = vec![
            AclEntry {
                tag: 1,
                perm: 6,
                id: UNDEFINED_ID,
            },
            AclEntry {
                tag: 2,
                perm: 4,
                id: 1234,
            },
            AclEntry {
                tag: 4,
                perm: 4,
                id: UNDEFINED_ID,
            },
            AclEntry {
                tag: 0x10,
                perm: 5,
                id: UNDEFINED_ID,
            },
            AclEntry {
                tag: 0x20,
                perm: 0,
                id: UNDEFINED_ID,
            },
        ];
        let mut text = Vec::new();
        write_acl(&mut text, "", &entries);
        assert_eq!(
            String::from_utf8(text.clone()).unwrap(),
            "user::rw-\nuser:1234:r--\ngroup::r--\nmask::r-x\nother::---\n"
        );
        let parsed: Vec<AclEntry> = text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| parse_acl_entry(l).unwrap())
            .collect();
        assert_eq!(parsed, entries);
        assert_eq!(parse_acl(&acl_binary(&entries)).unwrap(), entries);
        assert!(parse_acl_entry(b"user:root:rwx").is_err());
        assert!(parse_acl_entry(b"user::rwz").is_err());
        assert!(parse_acl(&[2, 0, 0, 0, 1]).is_none());
    }

    #[test]
    fn other_lines_and_xattr_lines_are_checked() {
        let other = parse_other(b"p 0640 1001 1002 bob - 0x0 dir/fi\\040fo").unwrap();
        assert_eq!(
            (other.kind, other.mode, other.uid, other.gid),
            (b'p', 0o640, 1001, 1002)
        );
        assert_eq!(other.owner.as_deref(), Some(&b"bob"[..]));
        assert_eq!(other.group, None);
        assert_eq!(other.path, b"dir/fi fo");
        assert!(parse_other(b"x 0640 1 1 - - 0 a").is_err());
        assert!(parse_other(b"p 0640 1 1 - - 0 ../a").is_err());
        assert!(parse_other(b"p 0640 1 1 - - 0").is_err());
        assert_eq!(
            parse_xattr(b"user.a\\040b=0x68ff").unwrap(),
            (b"user.a b".to_vec(), vec![0x68, 0xff])
        );
        assert!(parse_xattr(b"user.a=0sAAA").is_err());
        assert!(parse_xattr(b"user.a=0x6").is_err());
    }

    #[test]
    fn restored_paths_select_their_entries() {
        let paths = ["a/b/".to_string()];
        assert!(wanted(b"a/b", &paths));
        assert!(wanted(b"a/b/c", &paths));
        assert!(!wanted(b"a/bc", &paths));
        assert!(!wanted(b"a", &paths));
        assert!(wanted(b"x", &[]));
    }
}
