//! The job file: parsed strictly (unknown fields are an error), then checked
//! field by field so that every error names the field it is about, then
//! resolved into a `Job` with every default filled in.
//!
//! Parsing and checking never touch the file system beyond reading the job
//! file itself, so `check-config` runs inside a Nix build sandbox where the
//! paths the job names do not exist.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

pub const CONFIG_VERSION: u32 = 1;
pub const DEFAULT_MAX_DELETE_PERCENT: u8 = 50;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    version: u32,
    name: String,
    source: PathBuf,
    #[serde(default)]
    exclude: Vec<String>,
    password_file: PathBuf,
    gocryptfs_config: Option<PathBuf>,
    #[serde(default)]
    filenames: Filenames,
    target: RawTarget,
    #[serde(default)]
    snapshots: Retention,
    max_delete_percent: Option<u8>,
    state_dir: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    #[serde(rename = "type")]
    kind: TargetKind,
    path: PathBuf,
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    identity_file: Option<PathBuf>,
    known_hosts_file: Option<PathBuf>,
    transport: Option<Transport>,
    remote_checksums: Option<RemoteChecksums>,
    connections: Option<u8>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum TargetKind {
    Sftp,
    Local,
}

/// How gocryptfs encrypts file names (only used when the config is created).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Filenames {
    #[default]
    Encrypted,
    Plaintext,
    Deterministic,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Sshfs,
    Rsync,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RemoteChecksums {
    Ssh,
    Mount,
}

/// Snapshot retention; a bound that is `None` is not applied.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub keep_last: Option<u32>,
    #[serde(default)]
    pub keep_days: Option<u32>,
}

/// A job with every default resolved; what the rest of the helper works on.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub source: PathBuf,
    pub exclude: Vec<String>,
    pub password_file: PathBuf,
    pub gocryptfs_config: PathBuf,
    pub filenames: Filenames,
    pub target: Target,
    pub snapshots: Retention,
    pub max_delete_percent: u8,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub enum Target {
    /// A directory on a disk that is already mounted.
    Local {
        path: PathBuf,
    },
    Sftp(Sftp),
}

#[derive(Debug, Clone)]
pub struct Sftp {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Absolute path on the server.
    pub path: PathBuf,
    pub identity_file: Option<PathBuf>,
    pub known_hosts_file: PathBuf,
    pub transport: Transport,
    pub remote_checksums: RemoteChecksums,
    /// sshfs connections, and rsync workers over them (split.rs).
    pub connections: usize,
}

impl Job {
    /// True when the gocryptfs config lives in the source, where the reverse
    /// view shows it as `gocryptfs.conf`; otherwise backup uploads it.
    pub fn config_in_source(&self) -> bool {
        self.gocryptfs_config == self.source.join(".gocryptfs.reverse.conf")
    }

    /// A human name for where the backup goes, for messages.
    pub fn target_label(&self) -> String {
        match &self.target {
            Target::Local { path } => path.display().to_string(),
            Target::Sftp(s) => format!("{}@{}:{}:{}", s.user, s.host, s.port, s.path.display()),
        }
    }
}

/// Reads and checks a job file; errors name the file and the field.
pub fn load(file: &Path) -> Result<Job> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::usage(format!("cannot read job file {}: {e}", file.display())))?;
    parse(&text).map_err(|e| Error::usage(format!("{}: {}", file.display(), e.message)))
}

/// Parses job file text; the error message names the field.
pub fn parse(text: &str) -> Result<Job> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let raw: RawJob = serde_path_to_error::deserialize(&mut *de).map_err(describe_serde_error)?;
    de.end()
        .map_err(|e| Error::usage(format!("not valid JSON: text after the job object ({e})")))?;
    require_objects(text)?;
    resolve(raw)
}

/// serde also reads a struct from an array (`"snapshots": [30, 90]`); a job
/// file is meant to be read by people, so the sections must be objects.
fn require_objects(text: &str) -> Result<()> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::usage(format!("not valid JSON: {e}")))?;
    for (field, v) in [
        ("(the job)", Some(&value)),
        ("target", value.get("target")),
        ("snapshots", value.get("snapshots")),
    ] {
        if let Some(v) = v.filter(|v| !v.is_object()) {
            return Err(field_error(
                field,
                format!("must be a JSON object, got {v}"),
            ));
        }
    }
    Ok(())
}

fn describe_serde_error(err: serde_path_to_error::Error<serde_json::Error>) -> Error {
    let path = err.path().to_string();
    let inner = err.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        let at = if path == "." {
            String::new()
        } else {
            format!(" in field `{path}`")
        };
        return Error::usage(format!("not valid JSON{at}: {inner}"));
    }
    // serde names unknown and missing fields itself; add where they sit.
    if path == "." {
        Error::usage(format!("{inner}"))
    } else {
        Error::usage(format!("field `{path}`: {inner}"))
    }
}

fn resolve(raw: RawJob) -> Result<Job> {
    if raw.version != CONFIG_VERSION {
        return Err(field_error(
            "version",
            format!("must be {CONFIG_VERSION}, got {}", raw.version),
        ));
    }
    check_name(&raw.name)?;
    absolute("source", &raw.source)?;
    absolute("password_file", &raw.password_file)?;
    for (i, pattern) in raw.exclude.iter().enumerate() {
        if pattern.trim().is_empty() {
            return Err(field_error(&format!("exclude[{i}]"), "is empty"));
        }
    }
    let gocryptfs_config = match raw.gocryptfs_config {
        Some(p) => absolute("gocryptfs_config", &p).map(|_| p)?,
        None => raw.source.join(".gocryptfs.reverse.conf"),
    };
    check_retention(&raw.snapshots)?;
    let max_delete_percent = raw.max_delete_percent.unwrap_or(DEFAULT_MAX_DELETE_PERCENT);
    if max_delete_percent > 100 {
        return Err(field_error(
            "max_delete_percent",
            "must be between 0 and 100",
        ));
    }
    let state_dir = match raw.state_dir {
        Some(p) => absolute("state_dir", &p).map(|_| p)?,
        None => default_dir(DirKind::State, &raw.name)?,
    };
    let runtime_dir = match raw.runtime_dir {
        Some(p) => absolute("runtime_dir", &p).map(|_| p)?,
        None => default_dir(DirKind::Runtime, &raw.name)?,
    };
    let target = resolve_target(raw.target)?;
    if let Target::Local { path } = &target
        && path.starts_with(&raw.source)
    {
        return Err(field_error("target.path", "must not lie inside source"));
    }
    if raw.filenames == Filenames::Plaintext && matches!(target, Target::Sftp(_)) {
        // With plaintext names gocryptfs keeps symlink targets in the clear,
        // and sshfs (used by backup and by every restore) refuses to read a
        // symlink whose target leaves the mount (`../x`, `/x`): such a backup
        // could be written once but never updated or restored.
        return Err(field_error(
            "filenames",
            "\"plaintext\" is only allowed for a local target: sshfs cannot read back symlinks \
             pointing outside the mount, which plaintext names store as they are \
             (use \"encrypted\" or \"deterministic\")",
        ));
    }
    Ok(Job {
        name: raw.name,
        source: raw.source,
        exclude: raw.exclude,
        password_file: raw.password_file,
        gocryptfs_config,
        filenames: raw.filenames,
        target,
        snapshots: raw.snapshots,
        max_delete_percent,
        state_dir,
        runtime_dir,
    })
}

/// sshfs connections and rsync workers: 4 halves a backup at a 20 ms round
/// trip against 1 and costs little on a fast link (docs/benchmarks.md).
const DEFAULT_CONNECTIONS: u8 = 4;
const MAX_CONNECTIONS: u8 = 16;

fn resolve_target(t: RawTarget) -> Result<Target> {
    absolute("target.path", &t.path)?;
    match t.kind {
        TargetKind::Local => {
            let sftp_only = [
                ("host", t.host.is_some()),
                ("port", t.port.is_some()),
                ("user", t.user.is_some()),
                ("identity_file", t.identity_file.is_some()),
                ("known_hosts_file", t.known_hosts_file.is_some()),
                ("transport", t.transport.is_some()),
                ("remote_checksums", t.remote_checksums.is_some()),
                ("connections", t.connections.is_some()),
            ];
            if let Some((field, _)) = sftp_only.iter().find(|(_, set)| *set) {
                return Err(field_error(
                    &format!("target.{field}"),
                    "is only allowed for a target of type \"sftp\"",
                ));
            }
            Ok(Target::Local { path: t.path })
        }
        TargetKind::Sftp => {
            let host = required("target.host", t.host)?;
            check_host(&host)?;
            let user = required("target.user", t.user)?;
            if user.is_empty() || user.starts_with('-') || user.contains(['@', ' ', '/']) {
                return Err(field_error(
                    "target.user",
                    format!("{user:?} is not a user name"),
                ));
            }
            let known_hosts_file = required("target.known_hosts_file", t.known_hosts_file)
                .map_err(|_| {
                    field_error(
                        "target.known_hosts_file",
                        "is required for an sftp target: host keys are always checked",
                    )
                })?;
            absolute("target.known_hosts_file", &known_hosts_file)?;
            ssh_config_safe("target.known_hosts_file", &known_hosts_file)?;
            if let Some(id) = &t.identity_file {
                absolute("target.identity_file", id)?;
                ssh_config_safe("target.identity_file", id)?;
            }
            if t.port == Some(0) {
                return Err(field_error("target.port", "must be between 1 and 65535"));
            }
            let connections = t.connections.unwrap_or(DEFAULT_CONNECTIONS);
            if !(1..=MAX_CONNECTIONS).contains(&connections) {
                return Err(field_error(
                    "target.connections",
                    format!("must be between 1 and {MAX_CONNECTIONS}, not {connections}"),
                ));
            }
            Ok(Target::Sftp(Sftp {
                host,
                port: t.port.unwrap_or(22),
                user,
                path: t.path,
                identity_file: t.identity_file,
                known_hosts_file,
                transport: t.transport.unwrap_or(Transport::Sshfs),
                remote_checksums: t.remote_checksums.unwrap_or(RemoteChecksums::Ssh),
                connections: usize::from(connections),
            }))
        }
    }
}

/// These paths go into the generated ssh_config, which has no escape for a
/// double quote or a line break.
fn ssh_config_safe(field: &str, path: &Path) -> Result<()> {
    let text = path.to_string_lossy();
    if text.contains(['"', '\n', '\r']) {
        return Err(field_error(
            field,
            format!("must not contain a double quote or a line break: {text:?}"),
        ));
    }
    Ok(())
}

fn field_error(field: &str, problem: impl std::fmt::Display) -> Error {
    Error::usage(format!("field `{field}` {problem}"))
}

fn required<T>(field: &str, value: Option<T>) -> Result<T> {
    value.ok_or_else(|| field_error(field, "is required"))
}

fn absolute(field: &str, path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(field_error(field, "is empty"));
    }
    if !path.is_absolute() {
        return Err(field_error(
            field,
            format!("must be an absolute path, got {:?}", path),
        ));
    }
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(field_error(
            field,
            format!("must not contain `..`: {:?}", path),
        ));
    }
    Ok(())
}

/// Job names become file and unit names: keep them to a safe alphabet.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(field_error(
            "name",
            format!(
                "{name:?} must be 1-64 characters of A-Z a-z 0-9 - _ . (not starting with . or -)"
            ),
        ))
    }
}

/// A host goes into ssh's argv: refuse anything that ssh could read as an option.
fn check_host(host: &str) -> Result<()> {
    let ok = !host.is_empty()
        && !host.starts_with('-')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:_[]".contains(c));
    if ok {
        Ok(())
    } else {
        Err(field_error(
            "target.host",
            format!("{host:?} is not a host name"),
        ))
    }
}

fn check_retention(r: &Retention) -> Result<()> {
    if r.keep_last == Some(0) {
        return Err(field_error(
            "snapshots.keep_last",
            "must be at least 1 (the newest run is always kept)",
        ));
    }
    Ok(())
}

enum DirKind {
    State,
    Runtime,
}

/// Defaults follow systemd's StateDirectory/RuntimeDirectory for root and the
/// XDG base directories for everyone else.
fn default_dir(kind: DirKind, name: &str) -> Result<PathBuf> {
    let root = nix::unistd::geteuid().is_root();
    let base = match (kind, root) {
        (DirKind::State, true) => PathBuf::from("/var/lib/ciphersync"),
        (DirKind::Runtime, true) => PathBuf::from("/run/ciphersync"),
        (DirKind::State, false) => xdg_dir("XDG_STATE_HOME", ".local/state")?.join("ciphersync"),
        (DirKind::Runtime, false) => match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d).join("ciphersync"),
            _ => {
                return Err(field_error(
                    "runtime_dir",
                    "is not set and XDG_RUNTIME_DIR is not set either: set one of them",
                ));
            }
        },
    };
    Ok(base.join(name))
}

fn xdg_dir(var: &str, fallback_in_home: &str) -> Result<PathBuf> {
    if let Some(d) = std::env::var_os(var).filter(|d| Path::new(d).is_absolute()) {
        return Ok(PathBuf::from(d));
    }
    match std::env::var_os("HOME").filter(|h| Path::new(h).is_absolute()) {
        Some(home) => Ok(PathBuf::from(home).join(fallback_in_home)),
        None => Err(Error::usage(format!("neither {var} nor HOME is set"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
      "version": 1, "name": "docs", "source": "/srv/docs",
      "exclude": ["*.tmp"], "password_file": "/run/keys/docs",
      "target": { "type": "sftp", "host": "backup.example.org", "user": "docs",
                  "path": "/backups/docs", "known_hosts_file": "/etc/ciphersync/known_hosts" },
      "state_dir": "/var/lib/ciphersync/docs", "runtime_dir": "/run/ciphersync/docs"
    }"#;

    fn error_of(text: &str) -> String {
        parse(text).unwrap_err().message
    }

    fn with(replace: &str, by: &str) -> String {
        assert!(GOOD.contains(replace), "fixture lacks {replace}");
        GOOD.replace(replace, by)
    }

    #[test]
    fn good_file_gets_defaults() {
        let job = parse(GOOD).unwrap();
        assert_eq!(
            job.gocryptfs_config,
            PathBuf::from("/srv/docs/.gocryptfs.reverse.conf")
        );
        assert!(job.config_in_source());
        assert_eq!(job.filenames, Filenames::Encrypted);
        assert_eq!(job.max_delete_percent, 50);
        let Target::Sftp(s) = &job.target else {
            panic!("sftp expected")
        };
        assert_eq!(s.port, 22);
        assert_eq!(s.transport, Transport::Sshfs);
        assert_eq!(s.remote_checksums, RemoteChecksums::Ssh);
        assert_eq!(s.connections, 4);
        assert_eq!(
            job.target_label(),
            "docs@backup.example.org:22:/backups/docs"
        );
    }

    #[test]
    fn the_design_example_parses() {
        let text = r#"{
          "version": 1, "name": "docs", "source": "/srv/docs", "exclude": ["*.tmp", "cache/"],
          "password_file": "/run/keys/ciphersync-docs",
          "gocryptfs_config": "/var/lib/ciphersync/docs/gocryptfs.reverse.conf",
          "filenames": "encrypted",
          "target": { "type": "sftp", "host": "backup.example.org", "port": 22, "user": "docs",
            "path": "/backups/docs", "identity_file": "/var/lib/ciphersync/docs/id_ed25519",
            "known_hosts_file": "/etc/ciphersync/known_hosts", "transport": "sshfs",
            "remote_checksums": "ssh" },
          "snapshots": { "keep_last": 30, "keep_days": 90 },
          "state_dir": "/var/lib/ciphersync/docs", "runtime_dir": "/run/ciphersync/docs"
        }"#;
        let job = parse(text).unwrap();
        assert!(!job.config_in_source());
        assert_eq!(
            job.snapshots,
            Retention {
                keep_last: Some(30),
                keep_days: Some(90)
            }
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let e = error_of(&with(r#""name": "docs""#, r#""name": "docs", "colour": 1"#));
        assert!(e.contains("colour"), "{e}");
        let e = error_of(&with(
            r#""user": "docs""#,
            r#""user": "docs", "pasword": "x""#,
        ));
        assert!(e.contains("target") && e.contains("pasword"), "{e}");
    }

    #[test]
    fn relative_path_is_named() {
        let e = error_of(&with(r#""/srv/docs""#, r#""srv/docs""#));
        assert!(e.contains("`source`") && e.contains("absolute"), "{e}");
        let e = error_of(&with(
            r#""/etc/ciphersync/known_hosts""#,
            r#""known_hosts""#,
        ));
        assert!(e.contains("target.known_hosts_file"), "{e}");
    }

    #[test]
    fn bad_enum_value_is_named() {
        let e = error_of(&with(
            r#""type": "sftp","#,
            r#""type": "sftp", "transport": "scp","#,
        ));
        assert!(e.contains("target.transport") && e.contains("scp"), "{e}");
    }

    #[test]
    fn missing_required_field_is_named() {
        let e = error_of(&with(r#""password_file": "/run/keys/docs","#, ""));
        assert!(e.contains("password_file"), "{e}");
        let e = error_of(&with(r#""host": "backup.example.org","#, ""));
        assert!(e.contains("target.host"), "{e}");
    }

    #[test]
    fn sftp_needs_known_hosts() {
        let e = error_of(&with(
            r#", "known_hosts_file": "/etc/ciphersync/known_hosts""#,
            "",
        ));
        assert!(
            e.contains("target.known_hosts_file") && e.contains("host keys"),
            "{e}"
        );
    }

    #[test]
    fn connections_are_bounded_and_sftp_only() {
        let set = |n: &str| {
            with(
                r#""type": "sftp","#,
                &format!(r#""type": "sftp", "connections": {n},"#),
            )
        };
        let Target::Sftp(s) = parse(&set("16")).unwrap().target else {
            panic!("sftp expected")
        };
        assert_eq!(s.connections, 16);
        for bad in ["0", "17"] {
            let e = error_of(&set(bad));
            assert!(
                e.contains("target.connections") && e.contains("between 1 and 16"),
                "{e}"
            );
        }
        let local = r#"{ "version": 1, "name": "usb", "source": "/srv/docs",
            "password_file": "/run/keys/docs",
            "target": { "type": "local", "path": "/mnt/usb/docs", "connections": 2 } }"#;
        let e = error_of(local);
        assert!(
            e.contains("target.connections") && e.contains("sftp"),
            "{e}"
        );
    }

    #[test]
    fn local_target_refuses_ssh_fields() {
        let e = error_of(&with(r#""type": "sftp""#, r#""type": "local""#));
        assert!(e.contains("target.host") && e.contains("sftp"), "{e}");
    }

    #[test]
    fn plaintext_names_only_for_local_targets() {
        let e = error_of(&with(
            r#""name": "docs","#,
            r#""name": "docs", "filenames": "plaintext","#,
        ));
        assert!(e.contains("`filenames`") && e.contains("local"), "{e}");
        let local = with(
            r#""name": "docs","#,
            r#""name": "docs", "filenames": "plaintext","#,
        )
        .replace(
            r#""type": "sftp", "host": "backup.example.org", "user": "docs","#,
            r#""type": "local","#,
        )
        .replace(r#", "known_hosts_file": "/etc/ciphersync/known_hosts""#, "");
        assert!(parse(&local).is_ok(), "{local}");
    }

    #[test]
    fn other_checks() {
        assert!(error_of(&with(r#""version": 1"#, r#""version": 2"#)).contains("`version`"));
        assert!(error_of(&with(r#""name": "docs""#, r#""name": "../x""#)).contains("`name`"));
        assert!(
            error_of(&with(r#""backup.example.org""#, r#""-oProxyCommand=x""#))
                .contains("target.host")
        );
        assert!(error_of("{ nope").contains("not valid JSON"));
        assert!(error_of(&format!("{GOOD} trailing")).contains("text after"));
        assert!(error_of(&format!("{GOOD}{GOOD}")).contains("text after"));
        let e = error_of(&with(
            r#""name": "docs","#,
            r#""name": "docs", "snapshots": [1, 2],"#,
        ));
        assert!(e.contains("`snapshots`") && e.contains("object"), "{e}");
        let e = error_of(&with(
            r#""name": "docs","#,
            r#""name": "docs", "filenames": encrypted,"#,
        ));
        assert!(e.contains("`filenames`"), "{e}");
        let e = error_of(&with(
            "/etc/ciphersync/known_hosts",
            "/etc/ciphersync/known\\\"hosts",
        ));
        assert!(
            e.contains("target.known_hosts_file") && e.contains("quote"),
            "{e}"
        );
        let e = error_of(&with(r#""/run/keys/docs""#, r#""/run/keys/../docs""#));
        assert!(e.contains("password_file") && e.contains(".."), "{e}");
    }
}
