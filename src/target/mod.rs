//! The backup target, as every stage sees it: one trait, [`Target`], and
//! the kinds of account behind it.
//!
//! - [`PathTarget`]: a directory that is a local path: a local disk, or the
//!   SFTP account mounted with sshfs (any SFTP server, no shell needed).
//! - [`ShellTarget`]: an account with a POSIX shell; bulk work (listings,
//!   records, checksums) runs on the server in one round trip, with the
//!   scripts in `scripts/*.sh`.
//! - [`WhitelistTarget`]: a storage-box account that runs only single
//!   whitelisted commands (`rsync --server`, `sha1sum`): files, records and
//!   listings go over SFTP (the sshfs mount), data over `rsync --server`.
//!   A ciphersync server (`ciphersync serve`) is one too, with one more
//!   fast path: the whole tree's sums in one round trip.
//!
//! [`open`] probes what the account allows on first contact (probe.rs),
//! picks the kind, and refuses a job setting the account cannot honour
//! before anything on the target changes. The stages never ask which kind
//! they got.

mod listing;
mod path;
mod probe;
mod pull;
mod sftp;
mod sftp_keep;
mod sftp_survey;
mod sftp_upload;
mod sftp_write;
mod shell;
pub mod ssh;
mod whitelist;

use std::fs::File;
use std::path::Path;
use std::time::Duration;

pub use listing::TreeEntry;
pub use path::PathTarget;
pub use probe::forget_capabilities;
pub use pull::{Puller, unmunge};
pub use sftp::{
    Content, HOLD_MAX, Hand, Handed, Hashed, Hashed1, RemoteEntry, RemoteTree, SftpFetcher,
};
pub use sftp_keep::{NotKept, ToKeep, keep_in_snapshot, set_dir_attrs};
pub use sftp_survey::NewestRun;
pub use sftp_upload::{Uploaded, upload_changes, upload_new};
pub use shell::ShellTarget;
pub use ssh::Ssh;
pub use whitelist::{ServerSums, WhitelistTarget};

use crate::config::{Job, RemoteChecksums, Sftp, Transport};
use crate::error::{Error, IoContext, Kind, Result};
use crate::log;
use crate::mount::Mount;

/// The remote layout (docs/design.md, "Remote layout"): the mirror, the
/// replaced versions, the checksum lists, the run records. The scripts in
/// `scripts/` use the same names.
pub const FILES: &str = "files";
pub const SNAPSHOTS: &str = "snapshots";
pub const CHECKSUMS: &str = "checksums";
pub const RECORDS: &str = "records";

/// Upper bound for small remote commands (mkdir, cat, mv).
pub const SHORT_COMMAND: Duration = Duration::from_secs(300);

/// Where rsync writes a directory of the target.
pub struct RsyncDest {
    /// A local path (a local target, the sshfs mount) or `host:path`.
    pub location: String,
    /// rsync's `-e`, when the location is over ssh.
    pub ssh_shell: Option<String>,
    /// rsync writes through sshfs: SFTP's limits apply (no owners, no
    /// symlink times, no inode numbers, so no hard links).
    pub over_sshfs: bool,
}

/// The size of the file system that holds the target, as `df` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub size_bytes: u64,
    pub used_bytes: u64,
    /// What the account may still write (df's "Available").
    pub free_bytes: u64,
}

impl Space {
    /// From statvfs(3): blocks of `f_frsize` bytes.
    pub fn from_statvfs(s: &nix::sys::statvfs::Statvfs) -> Space {
        let unit = s.fragment_size();
        Space {
            size_bytes: s.blocks().saturating_mul(unit),
            used_bytes: s
                .blocks()
                .saturating_sub(s.blocks_free())
                .saturating_mul(unit),
            free_bytes: s.blocks_available().saturating_mul(unit),
        }
    }

    /// The free share, in percent of the size (None for a size of 0).
    pub fn free_percent(&self) -> Option<f64> {
        (self.size_bytes > 0).then(|| self.free_bytes as f64 * 100.0 / self.size_bytes as f64)
    }

    /// Less than `percent` of the size is free (0: never).
    pub fn low(&self, percent: u8) -> bool {
        self.free_percent()
            .is_some_and(|free| free < f64::from(percent))
    }
}

/// What the server stores of what rsync gives it. An SFTP server may keep
/// no modes (rclone accepts a chmod and ignores it) or refuse symlinks;
/// then the record keeps them (snapshots.rs, `metadata record`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keeps {
    pub modes: bool,
    pub symlinks: bool,
}

impl Keeps {
    pub const ALL: Keeps = Keeps {
        modes: true,
        symlinks: true,
    };

    pub fn all(&self) -> bool {
        self.modes && self.symlinks
    }
}

/// Where a record takes what the server does not keep: the encrypted view
/// the run mirrored.
#[derive(Debug, Clone, Copy)]
pub struct MetadataFrom<'a> {
    pub view: &'a Path,
    /// Every entry's mode from the view.
    pub modes: bool,
    /// The view's symlinks, with their targets (`L` lines).
    pub symlinks: bool,
}

/// What backup's first round trip learns (see `Target::preflight`).
pub struct Preflight {
    /// files/gocryptfs.conf, if there is one.
    pub config: Option<Vec<u8>>,
    /// The newest run's id, if any.
    pub last_id: Option<String>,
    /// Its record, positioned at its start, unless the caller knew it.
    pub last_record: Option<File>,
    /// The stamps of files/ when the record was not sent (only a server's
    /// shell takes them).
    pub target_stamps: Option<String>,
}

/// A run's record to write (see snapshots.rs for the format).
pub struct RecordRequest<'a> {
    pub id: &'a str,
    /// The header with `%s` for the file count and the byte count, in
    /// that order; no other `%` (snapshot ids and numbers only).
    pub header_format: &'a str,
    /// Leave out names that start with a dot (rsync's temp files: only
    /// when names are encrypted, as no encrypted name starts with one).
    pub skip_dot_names: bool,
    /// The last run, when files/ holds exactly what its record lists.
    pub same_as: Option<&'a str>,
    /// The stamps of files/ taken after the last rsync, if any.
    pub known_stamps: Option<&'a str>,
    /// Where scratch files go (the job's state dir).
    pub scratch_dir: &'a Path,
    /// What the server does not keep, to be taken from the view; only a
    /// path target (where rsync wrote through sshfs) is ever asked.
    pub metadata_from: Option<MetadataFrom<'a>>,
}

/// What writing a record counted.
pub struct RecordCounts {
    pub files: u64,
    pub bytes: u64,
    /// The stamps of files/ right after (a server's shell only).
    pub stamps: Option<String>,
}

/// The target's sha1 list of files/, in `sha1sum` format, sorted on the path.
pub struct RemoteSums {
    pub file: File,
    /// The server computed it: its word, to be checked by reading back a
    /// sample (sample.rs). Otherwise every byte was read here.
    pub by_server: bool,
    /// Already kept in checksums/ by the server.
    pub stored: bool,
}

/// A local path to the target's root for reading files back, and the mount
/// that provides it when one had to be made.
pub struct ReadBack<'a> {
    root: std::path::PathBuf,
    mount: Option<Mount>,
    _target: std::marker::PhantomData<&'a ()>,
}

impl ReadBack<'_> {
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn close(self) -> Result<()> {
        match self.mount {
            Some(mount) => mount.unmount(),
            None => Ok(()),
        }
    }
}

/// Everything a stage does with a target. Paths are relative to the
/// target's root and use `/`.
pub trait Target: Send + Sync {
    /// Re-checks, right before it is trusted with `--delete`, that the
    /// target still answers.
    fn check_live(&self) -> Result<()>;
    /// Where rsync writes `rel`.
    fn rsync_dest(&self, rel: &str) -> RsyncDest;
    /// Creates directory `rel` where rsync will write (ok if it exists).
    fn create_dir(&self, rel: &str) -> Result<()>;
    /// Free bytes on the target, when it can tell (no round trip).
    fn free_bytes(&self) -> Option<u64>;
    /// Size, used and free space of the target's file system, when the
    /// target can tell: statvfs on a path (through sshfs, the server's
    /// `statvfs@openssh.com`), `df` in a shell. None from a server that
    /// has neither, or when the question fails.
    fn space(&self) -> Option<Space>;
    /// What the server stores of the modes and symlinks rsync gives it.
    fn keeps(&self) -> Keeps;
    /// What the server kept, known without asking it (the last run's,
    /// where nothing touched files/ since): `keeps` then asks nothing.
    fn keeps_known(&self, _keeps: Keeps) {}
    /// The place in the connection budget (budget.rs) that an rsync over
    /// ssh holds while it runs; None where rsync writes into a path.
    fn rsync_session(&self) -> Option<crate::budget::Permit<'_>> {
        None
    }
    /// An ssh failure (rsync's exit 255, a lost link) named with the host.
    fn connection_error(&self, stderr: &str, what: &str) -> Option<Error>;
    /// The ssh of an SFTP account that rsync writes to through the sshfs
    /// mount: a backup into an empty files/ uploads over SFTP first
    /// (sftp_upload.rs). None for a local disk, or where rsync runs over
    /// ssh.
    fn sftp_writes(&self) -> Option<&Ssh> {
        None
    }

    /// A file, at most `limit` bytes (the target decides how large it is);
    /// None if it is missing.
    fn read_file(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>>;
    /// A file to stream from (a record can be large); copied into `scratch`
    /// (on disk) when it comes from a server. None if it is missing.
    fn open_file(&self, rel: &str, scratch: File) -> Result<Option<File>>;
    /// Replaces a file in one step with `content` (read from its start):
    /// a broken link never leaves half a file under the real name.
    fn write_file(&self, rel: &str, content: File) -> Result<()>;
    /// Makes `dirs` (parents first; one that exists is fine), then writes
    /// each of `names`, regular files of the local directory `from`, into
    /// `to` as `write_file` does (a run's manifest).
    fn write_dir(&self, dirs: &[&str], (from, to): (&Path, &str), names: &[String]) -> Result<()> {
        for dir in dirs {
            self.create_dir(dir)?;
        }
        write_each(self, (from, to), names)
    }
    /// Every entry below `rel`, relative to it (empty if it is missing).
    fn list_tree(&self, rel: &str) -> Result<Vec<TreeEntry>>;
    /// The names in directory `rel`, sorted (empty if it is missing).
    fn list_names(&self, rel: &str) -> Result<Vec<String>>;
    /// Deletes files or whole directories.
    fn remove(&self, rels: &[String]) -> Result<()>;
    /// Copies files within the target (`from` -> `to`), keeping modes and
    /// times; the parents of `to` exist.
    fn copy_within(&self, pairs: &[(String, String)]) -> Result<()>;
    /// Deletes the temp files (`.name.XXXXXX`) that an rsync killed in the
    /// middle leaves in files/; returns how many.
    fn remove_rsync_leftovers(&self) -> Result<usize>;

    /// Creates the layout and reads the config in files/ and the newest
    /// record, which is not sent when it is `known`.
    fn preflight(&self, known: Option<&str>, scratch_dir: &Path) -> Result<Preflight>;
    /// Writes `records/<id>.rec` from a listing of files/, last and
    /// atomically.
    fn write_record(&self, request: &RecordRequest) -> Result<RecordCounts>;
    /// Each record's id and header text, oldest first.
    fn record_headers(&self, scratch_dir: &Path) -> Result<Vec<(String, String)>>;
    /// The sha1 list of files/ for verify run `id`, into `into`.
    fn checksums(&self, id: &str, into: File) -> Result<RemoteSums>;
    /// Keeps verify's lists in checksums/ (`remote` unless the server
    /// already stored its own) and drops those of all but `keep` runs.
    fn store_checksum_lists(
        &self,
        id: &str,
        local: File,
        remote: Option<File>,
        keep: usize,
    ) -> Result<()>;
    /// A local path to the root to read files back (verify's sample),
    /// mounted at `point` if the target has none.
    fn read_back(&self, point: &Path) -> Result<ReadBack<'_>>;
    /// The ssh of an SFTP account, through which files can be read back
    /// over SFTP, many at a time (`hash_over_sftp`); None for a local disk.
    fn sftp_reads(&self) -> Option<&Ssh> {
        None
    }
}

/// What a stage needs from the target beyond files, records and listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Listings and records (snapshots, prune, log, verify).
    Records,
    /// Backup: rsync writes into files/.
    Transfer,
}

/// The stamps of the account's files/ listed over SFTP (sftp.rs), or None
/// when the listing fails: said in a debug line, as a backup without
/// stamps only runs rsync.
fn sftp_stamps(ssh: &Ssh) -> Option<String> {
    match sftp::tree_stamps(ssh, FILES) {
        Ok(stamps) => Some(stamps),
        Err(e) => {
            log::debug(|| format!("no stamps of {FILES}/ over SFTP: {e}"));
            None
        }
    }
}

/// The sha1 of each file `files` names below the account's `rel` dir,
/// read over SFTP with many requests in flight and kept nowhere; each goes
/// to `sink` with its size and place as it completes (sftp.rs, `SftpFetcher::hash`).
pub fn hash_over_sftp(
    ssh: &Ssh,
    rel: &str,
    files: impl Iterator<Item = TreeEntry>,
    sink: &mut dyn FnMut(Hashed1<'_>) -> Result<()>,
) -> Result<Hashed> {
    sftp::SftpFetcher::new(ssh).hash(rel, files, sink)
}

/// Every entry of the account's files/, listed over SFTP with many
/// requests in flight (sftp.rs): what a backup through sshfs compares the
/// view with (delta.rs).
pub fn list_files_over_sftp(ssh: &Ssh) -> Result<RemoteTree> {
    sftp::list_tree(ssh, FILES)
}

/// Opens the job's target for a stage: connects, learns what the account
/// allows (cached after the first contact), refuses a setting it cannot
/// honour, and picks the kind.
pub fn open(job: &Job, need: Need, mount_point: &Path) -> Result<Box<dyn Target>> {
    let sftp = match &job.target {
        crate::config::Target::Local { path } => return Ok(Box::new(PathTarget::local(path)?)),
        crate::config::Target::Sftp(sftp) => sftp,
    };
    let ssh = Ssh::prepare(job, sftp)?;
    let (caps, fresh) = probe::capabilities(job, sftp, &ssh)?;
    let plan = plan(sftp, &caps)?;
    if fresh {
        probe::say_once(sftp, &caps);
    }
    log::debug(|| format!("target: {plan:?} ({caps:?})"));
    Ok(match plan {
        Plan::Shell => {
            let sshfs_transfer = need == Need::Transfer && sftp.transport == Transport::Sshfs;
            Box::new(ShellTarget::new(
                ssh,
                sshfs_transfer.then_some(mount_point),
            )?)
        }
        Plan::Sftp {
            rsync_over_ssh: false,
            sums: ServerSums::None,
        } => Box::new(PathTarget::mounted(ssh, mount_point)?),
        Plan::Sftp {
            rsync_over_ssh,
            sums,
        } => {
            let path = PathTarget::mount_with(&ssh, mount_point)?;
            Box::new(WhitelistTarget::new(path, ssh, rsync_over_ssh, sums))
        }
    })
}

/// `write_file` of each of `names` (files of `from`) into `to`, side by
/// side: each is a few round trips to the server, and over a WAN they add
/// up.
pub fn write_each<T: Target + ?Sized>(
    target: &T,
    (from, to): (&Path, &str),
    names: &[String],
) -> Result<()> {
    crate::pool::map_unordered(names.to_vec(), names.len().max(1), |name| {
        let path = from.join(&name);
        let file = File::open(&path).ctx(|| format!("opening {}", path.display()))?;
        target.write_file(&format!("{to}/{name}"), file)
    })?;
    Ok(())
}

/// Measures the target's space after a backup or prune (where the target
/// is open anyway), keeps it in status.json and warns when less than
/// `target.space_warning_percent` of it is free. Never fails the stage.
pub fn keep_space(job: &Job, remote: &dyn Target) {
    let space = remote.space();
    match space {
        Some(s) if s.low(job.space_warning_percent) => log::warn(format!(
            "the target {} is running out of space: {} free of {} ({:.1} %, below \
             target.space_warning_percent = {})",
            job.target_label(),
            crate::human::bytes_short(s.free_bytes),
            crate::human::bytes_short(s.size_bytes),
            s.free_percent().unwrap_or(0.0),
            job.space_warning_percent
        )),
        Some(s) => log::debug(|| format!("target space: {s:?}")),
        None => log::debug(|| "the target does not tell its free space".into()),
    }
    if let Err(e) =
        crate::status::record_space(&job.state_dir, &job.name, space, job.space_warning_percent)
    {
        log::warn(format!("cannot record the target's space: {e}"));
    }
}

/// Opens the target as a local path (restore, key check: gocryptfs mounts
/// files/ from it): the local dir, or the account mounted with sshfs.
pub fn open_path(job: &Job, mount_point: &Path) -> Result<PathTarget> {
    match &job.target {
        crate::config::Target::Local { path } => PathTarget::local(path),
        crate::config::Target::Sftp(sftp) => {
            PathTarget::mounted(Ssh::prepare(job, sftp)?, mount_point)
        }
    }
}

/// As `open_path`, where a full restore also wants the newest run: over
/// an SFTP account it is read over SFTP while sshfs mounts the account
/// (each takes round trips over a WAN), into `scratch`. None where the
/// target is a local disk, no run has a record, or SFTP could not say
/// (a debug line says why): the caller asks through the path.
pub fn open_path_with_newest(
    job: &Job,
    mount_point: &Path,
    scratch: File,
) -> Result<(PathTarget, Option<NewestRun>)> {
    let crate::config::Target::Sftp(sftp) = &job.target else {
        return Ok((open_path(job, mount_point)?, None));
    };
    let ssh = Ssh::prepare(job, sftp)?;
    let (mounted, newest) = crate::pool::both(
        || PathTarget::mount_with(&ssh, mount_point),
        || sftp_survey::newest_run(&ssh, scratch),
    );
    let target = mounted?.keeping(ssh);
    let newest = match newest {
        Ok(newest) => newest,
        Err(e) if e.kind == Kind::Interrupted => return Err(e),
        Err(e) => {
            log::debug(|| format!("restore: the newest run not read over SFTP: {e}"));
            None
        }
    };
    Ok((target, newest))
}

/// `bytes` in an anonymous file, to hand to `Target::write_file`.
pub fn bytes_file(bytes: &[u8]) -> Result<File> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use std::io::{Seek, SeekFrom, Write};
    let mut file = File::from(
        memfd_create("ciphersync-upload", MFdFlags::MFD_CLOEXEC)
            .map_err(|e| Error::new(Kind::Io, format!("memfd: {e}")))?,
    );
    file.write_all(bytes)
        .and_then(|_| file.seek(SeekFrom::Start(0)))
        .map_err(|e| Error::io("buffering an upload", e))?;
    Ok(file)
}

/// How a job reaches an account, settled from the job and the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// A POSIX shell does the bulk work; rsync over ssh or into sshfs.
    Shell,
    /// Everything through the sshfs mount, except what single commands do.
    Sftp {
        rsync_over_ssh: bool,
        sums: ServerSums,
    },
}

fn plan(sftp: &Sftp, caps: &probe::Capabilities) -> Result<Plan> {
    let at = format!("{}@{}:{}", sftp.user, sftp.host, sftp.port);
    if sftp.transport == Transport::Rsync && !caps.rsync_server {
        return Err(Error::new(
            Kind::Usage,
            format!(
                "{at} cannot run `rsync --server` ({}): set target.transport = \"sshfs\"",
                caps.describe()
            ),
        ));
    }
    if sftp.remote_checksums == RemoteChecksums::Ssh && !caps.shell && !caps.sha1sum {
        return Err(Error::new(
            Kind::Usage,
            format!(
                "{at} has no shell and no sha1sum ({}): set target.remote_checksums = \"mount\"",
                caps.describe()
            ),
        ));
    }
    let server_sums = sftp.remote_checksums != RemoteChecksums::Mount;
    if caps.shell && server_sums {
        return Ok(Plan::Shell);
    }
    let sums = match (server_sums, caps.ciphersync_server, caps.sha1sum) {
        (false, _, _) => ServerSums::None,
        (true, true, _) => ServerSums::Tree,
        (true, false, true) => ServerSums::Sha1sum,
        (true, false, false) => ServerSums::None,
    };
    Ok(Plan::Sftp {
        rsync_over_ssh: sftp.transport == Transport::Rsync,
        sums,
    })
}

#[cfg(test)]
mod tests {
    use super::probe::Capabilities;
    use super::*;

    fn sftp(transport: Transport, sums: RemoteChecksums) -> Sftp {
        Sftp {
            host: "box.example.org".into(),
            port: 23,
            user: "u1".into(),
            path: "backup".into(),
            identity_file: None,
            known_hosts_file: "/k".into(),
            transport,
            remote_checksums: sums,
            connections: 4,
            max_connections: crate::budget::DEFAULT,
        }
    }

    const FULL: Capabilities = Capabilities {
        shell: true,
        rsync_server: true,
        sha1sum: true,
        ciphersync_server: false,
    };
    const SFTP_ONLY: Capabilities = Capabilities {
        shell: false,
        rsync_server: false,
        sha1sum: false,
        ciphersync_server: false,
    };
    const STORAGE_BOX: Capabilities = Capabilities {
        shell: false,
        rsync_server: true,
        sha1sum: true,
        ciphersync_server: false,
    };
    const CIPHERSYNC_SERVER: Capabilities = Capabilities {
        shell: false,
        rsync_server: true,
        sha1sum: true,
        ciphersync_server: true,
    };

    #[test]
    fn each_account_gets_the_fastest_way_it_allows() {
        use RemoteChecksums::*;
        use Transport::*;
        let cases = [
            (Sshfs, Auto, FULL, Plan::Shell),
            (Rsync, Auto, FULL, Plan::Shell),
            (
                Rsync,
                Mount,
                FULL,
                Plan::Sftp {
                    rsync_over_ssh: true,
                    sums: ServerSums::None,
                },
            ),
            (
                Sshfs,
                Auto,
                SFTP_ONLY,
                Plan::Sftp {
                    rsync_over_ssh: false,
                    sums: ServerSums::None,
                },
            ),
            (
                Rsync,
                Auto,
                STORAGE_BOX,
                Plan::Sftp {
                    rsync_over_ssh: true,
                    sums: ServerSums::Sha1sum,
                },
            ),
            (
                Sshfs,
                Ssh,
                STORAGE_BOX,
                Plan::Sftp {
                    rsync_over_ssh: false,
                    sums: ServerSums::Sha1sum,
                },
            ),
            (
                Rsync,
                Auto,
                CIPHERSYNC_SERVER,
                Plan::Sftp {
                    rsync_over_ssh: true,
                    sums: ServerSums::Tree,
                },
            ),
            (
                Rsync,
                Mount,
                CIPHERSYNC_SERVER,
                Plan::Sftp {
                    rsync_over_ssh: true,
                    sums: ServerSums::None,
                },
            ),
        ];
        for (transport, sums, caps, want) in cases {
            let got = plan(&sftp(transport, sums), &caps).unwrap();
            assert_eq!(got, want, "{transport:?} {sums:?} {caps:?}");
        }
    }

    #[test]
    fn a_setting_the_account_cannot_honour_says_what_to_set() {
        let e = plan(&sftp(Transport::Rsync, RemoteChecksums::Auto), &SFTP_ONLY).unwrap_err();
        assert!(
            e.message.contains("set target.transport = \"sshfs\""),
            "{}",
            e.message
        );
        let e = plan(&sftp(Transport::Sshfs, RemoteChecksums::Ssh), &SFTP_ONLY).unwrap_err();
        assert!(
            e.message.contains("has no shell")
                && e.message.contains("remote_checksums = \"mount\""),
            "{}",
            e.message
        );
        assert!(!e.message.contains('\n'), "one line: {}", e.message);
    }
}
