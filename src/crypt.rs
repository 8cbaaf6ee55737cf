//! Everything gocryptfs: creating the reverse config, the reverse (encrypted)
//! view of the source, forward (decrypted) mounts of a cipher directory, and
//! turning encrypted paths back into plaintext ones through the control socket.
//!
//! gocryptfs reads the password from `-passfile`; the helper never reads it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Filenames, Job};
use crate::error::{Error, IoContext, Kind, Result};
use crate::exec::{Cmd, Output};
use crate::mount::{FsType, Mount};

// gocryptfs exit codes (internal/exitcodes in its source).
const EXIT_CIPHERDIR: i32 = 6;
const EXIT_LOAD_CONF_OTHER: i32 = 11;
const EXIT_READ_PASSWORD: i32 = 9;
const EXIT_MOUNTPOINT: i32 = 10;
const EXIT_PASSWORD_INCORRECT: i32 = 12;

/// The name under which `files/` carries the config on the remote, so that
/// plain `gocryptfs files/ DIR` mounts it.
pub const REMOTE_CONFIG_NAME: &str = "gocryptfs.conf";

/// gocryptfs' own files in an encrypted tree: directory IVs, long-name
/// files and the config. They are backed up like any file but are not the
/// user's files, so counts leave them out.
pub fn is_gocryptfs_metadata(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name == "gocryptfs.diriv"
        || (name.starts_with("gocryptfs.longname.") && name.ends_with(".name"))
        || path == REMOTE_CONFIG_NAME
}

pub enum InitOutcome {
    Created,
    AlreadyThere,
}

/// Creates the reverse config unless it exists. Never overwrites: a new
/// config is a new master key, and the old backups need the old one.
pub fn init(job: &Job) -> Result<InitOutcome> {
    if job.gocryptfs_config.exists() {
        return Ok(InitOutcome::AlreadyThere);
    }
    check_source(job)?;
    check_password_file(job)?;
    if let Some(dir) = job
        .gocryptfs_config
        .parent()
        .filter(|_| !job.config_in_source())
    {
        create_private_dir(dir)?;
    }
    let mut cmd = Cmd::new("gocryptfs")
        .args(["-init", "-reverse", "-q"])
        .arg("-passfile")
        .arg(&job.password_file);
    if !job.config_in_source() {
        cmd = cmd.arg("-config").arg(&job.gocryptfs_config);
    }
    cmd = match job.filenames {
        Filenames::Encrypted => cmd,
        Filenames::Plaintext => cmd.arg("-plaintextnames"),
        Filenames::Deterministic => cmd.arg("-deterministic-names"),
    };
    // gocryptfs -init prints the master key unless -q: its output is kept in
    // memory and shown only as the stderr tail of a failure.
    let output = cmd.arg("--").arg(&job.source).run()?;
    if !output.success() {
        return Err(explain_failure(
            job,
            &output,
            "creating the gocryptfs config",
        ));
    }
    Ok(InitOutcome::Created)
}

/// Mounts the encrypted view of the source at `point`. With `ctlsock`, the
/// mount answers path decryption requests there.
pub fn mount_reverse(job: &Job, point: &Path, ctlsock: Option<&Path>) -> Result<Mount> {
    check_excludes(job)?;
    check_source(job)?;
    check_password_file(job)?;
    require_config(job)?;
    let mut cmd = Cmd::new("gocryptfs")
        // -fg: the daemon is our child (see exec::Daemon).
        .args(["-reverse", "-fg", "-q", "-nosyslog"])
        .arg("-passfile")
        .arg(&job.password_file);
    // Passing -config even with the default location would hide
    // gocryptfs.conf from the view, so only pass a custom one.
    if !job.config_in_source() {
        cmd = cmd.arg("-config").arg(&job.gocryptfs_config);
    }
    for pattern in &job.exclude {
        cmd = cmd.arg("-exclude-wildcard").arg(pattern);
    }
    if let Some(sock) = ctlsock {
        // A socket left by a killed run would make gocryptfs fail with
        // "address already in use"; with the job lock held it is stale.
        let _ = std::fs::remove_file(sock);
        cmd = cmd.arg("-ctlsock").arg(sock);
    }
    let cmd = cmd.arg("--").arg(&job.source).arg(point);
    Mount::establish(point, FsType::GocryptfsReverse, cmd, |out| {
        explain_failure(job, out, "mounting the encrypted view of the source")
    })
}

/// Mounts `cipher_dir` decrypted and read-only at `point`, with the job's
/// local config if it has one, else the `gocryptfs.conf` inside `cipher_dir`.
pub fn mount_forward(job: &Job, cipher_dir: &Path, point: &Path) -> Result<Mount> {
    check_password_file(job)?;
    let mut cmd = Cmd::new("gocryptfs")
        .args(["-ro", "-fg", "-q", "-nosyslog"])
        .arg("-passfile")
        .arg(&job.password_file);
    if job.gocryptfs_config.exists() {
        cmd = cmd.arg("-config").arg(&job.gocryptfs_config);
    }
    let cmd = cmd.arg("--").arg(cipher_dir).arg(point);
    Mount::establish(point, FsType::Gocryptfs, cmd, |out| {
        explain_failure(job, out, "mounting the backup decrypted")
    })
}

/// Like `mount_forward`, but gocryptfs daemonizes once the mount is up
/// and outlives the helper (`ciphersync mount`).
pub fn mount_forward_detached(job: &Job, cipher_dir: &Path, point: &Path) -> Result<()> {
    check_password_file(job)?;
    let mut cmd = Cmd::new("gocryptfs")
        .args(["-ro", "-q", "-nosyslog"])
        .arg("-passfile")
        .arg(&job.password_file);
    if job.gocryptfs_config.exists() {
        cmd = cmd.arg("-config").arg(&job.gocryptfs_config);
    }
    let out = cmd.arg("--").arg(cipher_dir).arg(point).run()?;
    if !out.success() {
        return Err(explain_failure(job, &out, "mounting the backup decrypted"));
    }
    Ok(())
}

/// Refuses the exclude patterns that the installed gocryptfs mishandles:
/// before the fix of gocryptfs issue 686 (after 2.6.1), `-reverse` checks
/// a long name's `gocryptfs.longname.*.name` file against the patterns by
/// the *encrypted* path of its directory; where a pattern excludes that
/// path (`/*` of an allow-list, `*-*`), reading the file fails with EPERM,
/// rsync fails on every run and the long name can never be restored.
/// Rewriting the patterns cannot help (the encrypted paths are not known
/// before the view is mounted), so such a job is refused, naming the
/// field; patterns that cannot match an encrypted name pass (see
/// `about::patterns_hit_by_bug_686`). Plaintext names have no `.name`
/// files. An unknown gocryptfs version is not refused (`--version` and
/// every backup warn about it).
pub fn check_excludes(job: &Job) -> Result<()> {
    if job.exclude.is_empty() || job.filenames == Filenames::Plaintext {
        return Ok(());
    }
    let hits = crate::about::patterns_hit_by_bug_686(&job.exclude);
    let Some(&(index, pattern)) = hits.first() else {
        return Ok(());
    };
    static BUILD: std::sync::OnceLock<Option<crate::about::GocryptfsBuild>> =
        std::sync::OnceLock::new();
    let build = *BUILD.get_or_init(|| crate::about::installed_gocryptfs().and_then(|(_, b)| b));
    let Some(build) = build else {
        return Ok(());
    };
    if !crate::about::has_exclude_bug_686(build) {
        return Ok(());
    }
    let [a, b, c] = build.release;
    let more = match hits.len() {
        1 => String::new(),
        n => format!(
            " ({} more pattern{} too)",
            n - 1,
            if n > 2 { "s" } else { "" }
        ),
    };
    Err(Error::new(
        Kind::Usage,
        format!(
            "job {}: field `exclude[{index}]` {pattern:?}{more}: the installed gocryptfs {a}.{b}.{c} \
             hides the gocryptfs.longname.*.name files of long names in every directory whose \
             encrypted path such a pattern matches (gocryptfs issue 686, fixed after 2.6.1), so a \
             backup holding such a name would fail on every run; use patterns that cannot match an \
             encrypted name (such as *.tmp, cache/, /build), or a gocryptfs with the fix (as \
             ciphersync's Nix package builds it)",
            job.name
        ),
    ))
}

fn explain_failure(job: &Job, out: &Output, doing: &str) -> Error {
    let pass = job.password_file.display();
    let conf = job.gocryptfs_config.display();
    match out.code() {
        Some(EXIT_PASSWORD_INCORRECT) => Error::new(
            Kind::Password,
            format!(
                "wrong password for job {}: {pass} does not unlock {conf}",
                job.name
            ),
        ),
        Some(EXIT_READ_PASSWORD) => Error::new(
            Kind::Password,
            format!(
                "job {}: cannot read a password from {pass}: {}",
                job.name,
                out.stderr.trim()
            ),
        ),
        Some(EXIT_LOAD_CONF_OTHER) if !job.gocryptfs_config.exists() => missing_config(job),
        Some(EXIT_CIPHERDIR) => Error::new(
            Kind::Io,
            format!("job {}: {doing}: {}", job.name, out.stderr.trim()),
        ),
        Some(EXIT_MOUNTPOINT) => Error::new(
            Kind::Io,
            format!(
                "job {}: {doing}: bad mount point: {}",
                job.name,
                out.stderr.trim()
            ),
        ),
        _ => out.failure(Some(doing)),
    }
}

fn missing_config(job: &Job) -> Error {
    Error::new(
        Kind::Usage,
        format!(
            "job {}: the gocryptfs config {} does not exist; run `ciphersync init {}` \
             (or copy back the config of your existing backup: a new one cannot read it)",
            job.name,
            job.gocryptfs_config.display(),
            job.name
        ),
    )
}

/// Before a stage mounts the source: the source must be there, then its
/// config (checked second: a missing source also hides a config kept in it,
/// and "run init" would be the wrong advice for an unmounted disk).
pub fn check_ready(job: &Job) -> Result<()> {
    check_source(job)?;
    require_config(job)
}

pub fn require_config(job: &Job) -> Result<()> {
    if job.gocryptfs_config.exists() {
        Ok(())
    } else {
        Err(missing_config(job))
    }
}

/// Refuses a missing or unusable password file before gocryptfs is started,
/// so the error names the file and nothing gets mounted.
pub fn check_password_file(job: &Job) -> Result<()> {
    let path = &job.password_file;
    let problem = match std::fs::File::open(path) {
        Err(e) => Some(format!("cannot be opened: {e}")),
        Ok(file) => match file.metadata() {
            Ok(meta) if !meta.is_file() => Some("is not a regular file".to_string()),
            Ok(meta) if meta.len() == 0 => Some("is empty".to_string()),
            Ok(_) => None,
            Err(e) => Some(format!("cannot be read: {e}")),
        },
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(Error::new(
            Kind::Password,
            format!("job {}: password file {} {p}", job.name, path.display()),
        )),
    }
}

pub fn check_source(job: &Job) -> Result<()> {
    match std::fs::metadata(&job.source) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::new(
            Kind::Io,
            format!(
                "job {}: source {} is not a directory",
                job.name,
                job.source.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::new(
            Kind::Io,
            format!(
                "job {}: source {} does not exist (is its disk mounted?)",
                job.name,
                job.source.display()
            ),
        )),
        Err(e) => Err(Error::new(
            Kind::Io,
            format!("job {}: source {}: {e}", job.name, job.source.display()),
        )),
    }
}

pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .ctx(|| format!("cannot create {}", dir.display()))
}

/// Decrypts encrypted relative paths through a reverse mount's control socket.
pub struct PathDecryptor {
    socket: PathBuf,
}

impl PathDecryptor {
    pub fn new(socket: &Path) -> PathDecryptor {
        PathDecryptor {
            socket: socket.to_owned(),
        }
    }

    /// The plaintext path, or None when gocryptfs cannot decrypt it (e.g. a
    /// remote file whose directory no longer exists in the source).
    pub fn decrypt(&self, encrypted: &str) -> Option<String> {
        let request = serde_json::json!({ "DecryptPath": encrypted });
        let reply = self.ask(&request).ok()?;
        let ok = reply.get("ErrNo").and_then(|v| v.as_i64()) == Some(0);
        reply
            .get("Result")
            .and_then(|v| v.as_str())
            .filter(|_| ok)
            .map(str::to_owned)
    }

    /// The encrypted path of a plaintext path relative to the source. A
    /// reverse mount derives names from the path alone, so this works for a
    /// path the source no longer has, too.
    pub fn encrypt(&self, plain: &str) -> Result<String> {
        let request = serde_json::json!({ "EncryptPath": plain });
        let reply = self.ask(&request).ctx(|| {
            format!(
                "asking gocryptfs for the encrypted name of {plain:?} through {}",
                self.socket.display()
            )
        })?;
        match (
            reply.get("ErrNo").and_then(|v| v.as_i64()),
            reply.get("Result").and_then(|v| v.as_str()),
        ) {
            (Some(0), Some(result)) if !result.is_empty() => Ok(result.to_owned()),
            _ => Err(Error::new(
                Kind::Tool,
                format!(
                    "gocryptfs cannot encrypt the path {plain:?}: {}",
                    reply
                        .get("ErrText")
                        .and_then(|v| v.as_str())
                        .unwrap_or("no answer")
                ),
            )),
        }
    }

    fn ask(&self, request: &serde_json::Value) -> std::io::Result<serde_json::Value> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.to_string().as_bytes())?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        serde_json::from_str(&line).map_err(std::io::Error::other)
    }
}
