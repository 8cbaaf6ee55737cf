//! The backup target as the stages see it: a directory we can reach as a
//! local path (a local disk, or the SFTP account mounted with sshfs), or an
//! SFTP account reached with ssh only (the `rsync` transport, and checksums
//! computed on the server).
//!
//! All ssh invocations share one generated ssh_config file in the runtime
//! dir: host key checking is always strict against the job's known_hosts
//! file, and keepalives make a dead link fail in bounded time.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Job, RemoteChecksums, Sftp};
use crate::error::{Error, IoContext, Kind, Result};
use crate::exec::{Cmd, Output, shell_quote};
use crate::mount::{FsType, Mount};
use crate::{interrupt, log};

/// The remote layout (docs/design.md, "Remote layout"): the mirror, the replaced versions, the
/// checksum lists.
pub const FILES: &str = "files";
pub const SNAPSHOTS: &str = "snapshots";
pub const CHECKSUMS: &str = "checksums";
pub const RECORDS: &str = "records";

/// The Host name our generated ssh_config defines.
const HOST_ALIAS: &str = "ciphersync-target";
/// ssh gives up on a silent server after interval * count seconds (30 s).
/// `CIPHERSYNC_SSH_ALIVE=interval,count` overrides it (the fault tests cut
/// links and should not wait half a minute each time).
const ALIVE_DEFAULT: (u32, u32) = (10, 3);

fn server_alive() -> (u32, u32) {
    let parse = |v: String| -> Option<(u32, u32)> {
        let (i, c) = v.split_once(',')?;
        Some((
            i.trim().parse().ok().filter(|i| *i > 0)?,
            c.trim().parse().ok().filter(|c| *c > 0)?,
        ))
    };
    std::env::var("CIPHERSYNC_SSH_ALIVE")
        .ok()
        .and_then(parse)
        .unwrap_or(ALIVE_DEFAULT)
}
const CONNECT_TIMEOUT_S: u32 = 20;
/// Upper bound for small remote commands (mkdir, cat, mv).
pub const SHORT_COMMAND: Duration = Duration::from_secs(300);

/// ssh to the job's server with the job's keys, through one config file.
/// One master connection is opened per stage and every later ssh, rsync and
/// sshfs connection rides on it: a stage makes a dozen small remote calls,
/// and a new ssh handshake for each costs several round trips.
pub struct Ssh {
    config_file: PathBuf,
    sftp: Sftp,
    /// The master's socket, while a master runs.
    master: Option<PathBuf>,
}

/// Unix socket paths are limited to 108 bytes; a longer runtime dir just
/// goes without multiplexing.
const MAX_SOCKET_PATH: usize = 100;

impl Ssh {
    /// Writes the ssh_config for this run into the runtime dir and connects:
    /// an unreachable server or a wrong host key is reported here, before
    /// anything is mounted or changed.
    pub fn prepare(job: &Job, sftp: &Sftp) -> Result<Ssh> {
        check_identity_file(sftp)?;
        check_known_hosts_file(sftp)?;
        let config_file = job.runtime_dir.join("ssh_config");
        let socket = job.runtime_dir.join("ssh.sock");
        let multiplex = socket.as_os_str().len() <= MAX_SOCKET_PATH;
        let text = ssh_config_text(sftp, multiplex.then_some(socket.as_path()))?;
        write_private(&config_file, text.as_bytes())?;
        let mut ssh = Ssh {
            config_file,
            sftp: sftp.clone(),
            master: None,
        };
        if multiplex {
            ssh.start_master(&socket)?;
        }
        Ok(ssh)
    }

    /// `ssh -fN` with ControlMaster=yes: it forks into the background once
    /// authenticated and serves the other connections until `-O exit`.
    fn start_master(&mut self, socket: &Path) -> Result<()> {
        // A master of a killed run may still be there (it is ours: the job
        // lock is held); stop it, and drop a socket file it left.
        if socket.exists() {
            let _ = self.control("exit");
            let _ = std::fs::remove_file(socket);
        }
        let limit = Duration::from_secs(u64::from(CONNECT_TIMEOUT_S) * 3);
        let out = self
            .base()
            .args(["-o", "ControlMaster=yes", "-f", "-N", "--", HOST_ALIAS])
            .timeout(limit)
            .run()
            .map_err(|e| match e.kind {
                Kind::Tool => self.connection_error(
                    &format!("no answer within {} s", limit.as_secs()),
                    "connecting",
                ),
                _ => e,
            })?;
        if !out.success() {
            return Err(self.connection_error(&out.stderr, "connecting"));
        }
        self.master = Some(socket.to_owned());
        Ok(())
    }

    /// `ssh -F <our config>`: every ssh the helper starts begins so.
    fn base(&self) -> Cmd {
        Cmd::new("ssh").arg("-F").arg(&self.config_file)
    }

    /// `ssh -O <command>` to the master (a cleanup: runs even after a signal).
    fn control(&self, command: &str) -> Result<Output> {
        self.base()
            .args(["-O", command, "--", HOST_ALIAS])
            .cleanup()
            .timeout(Duration::from_secs(10))
            .run()
    }

    pub fn sftp(&self) -> &Sftp {
        &self.sftp
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        if let Some(socket) = self.master.take() {
            if let Err(e) = self.control("exit") {
                log::warn(format!("cannot stop the ssh master connection: {e}"));
            }
            let _ = std::fs::remove_file(socket);
        }
    }
}

impl Ssh {
    /// `ssh ... -- <remote shell command>`; the command is parsed by the
    /// server's shell, so every path in it goes through `shell_quote`.
    pub fn command(&self, remote_command: &str) -> Cmd {
        self.base().arg("--").arg(HOST_ALIAS).arg(remote_command)
    }

    /// Runs a remote command; connection failures become one clear error.
    /// Keepalives bound a dead link; `limit` bounds a server that answers
    /// keepalives but never finishes the command.
    pub fn run(&self, remote_command: &str, what: &str, limit: Duration) -> Result<Output> {
        let output = self.command(remote_command).timeout(limit).run()?;
        if output.code() == Some(255) {
            return Err(self.connection_error(&output.stderr, what));
        }
        Ok(output)
    }

    /// Runs a command made with `command` (and given its stdin, stdout or
    /// time limit): a lost connection (ssh's 255) and a failure on the
    /// server both become one clear error, `what` saying what was done.
    pub fn run_checked(&self, cmd: Cmd, what: &str) -> Result<Output> {
        let out = cmd.run()?;
        if out.code() == Some(255) {
            return Err(self.connection_error(&out.stderr, what));
        }
        if !out.success() {
            return Err(remote_failure(self, &out, what));
        }
        Ok(out)
    }

    /// The `-e` argument for rsync, which splits it into words itself.
    pub fn rsync_shell(&self) -> String {
        format!(
            "ssh -F {}",
            rsync_shell_quote(&self.config_file.to_string_lossy())
        )
    }

    /// `host:path` for rsync; rsync >= 3.2.4 protects spaces in it.
    pub fn rsync_location(&self, remote_path: &Path) -> String {
        format!("{HOST_ALIAS}:{}", remote_path.display())
    }

    /// Mounts the job's remote directory with sshfs.
    pub fn mount(&self, point: &Path) -> Result<Mount> {
        let cmd = Cmd::new("sshfs")
            // -f: the daemon is our child (see exec::Daemon).
            .arg("-f")
            .arg("-F")
            .arg(&self.config_file)
            .arg(format!("{HOST_ALIAS}:{}", self.sftp.path.display()))
            .arg(point)
            // Keep FUSE from caching stale attributes of files rsync renames.
            .args(["-o", "noatime"])
            // The server is not trusted: a symlink it stores must not lead
            // out of the mount. sshfs 3.7 does this by default; say it, so
            // that an sshfs without that default fails instead of following.
            .args(["-o", "contain_symlinks", "-o"])
            .arg(format!("max_conns={}", self.sftp.connections));
        Mount::establish(point, FsType::Sshfs, cmd, |out| {
            self.connection_error(&out.stderr, "mounting with sshfs")
        })
    }

    /// Names the host, the port and the likely cause of an ssh failure.
    pub fn connection_error(&self, stderr: &str, what: &str) -> Error {
        let s = &self.sftp;
        let at = format!("{}:{}", s.host, s.port);
        let detail = stderr.trim();
        let message = if detail.contains("Host key verification failed")
            || detail.contains("HOST IDENTIFICATION HAS CHANGED")
        {
            format!(
                "host key of {at} does not match {}: refusing to connect",
                s.known_hosts_file.display()
            )
        } else if detail.contains("UNPROTECTED PRIVATE KEY") {
            format!("identity file for {at} has loose permissions: {detail}")
        } else if detail.contains("Permission denied") {
            format!(
                "{}@{at} refused our key ({}): {detail}",
                s.user,
                identity_label(s)
            )
        } else if detail.contains("No such file") && what.contains("sshfs") {
            format!("remote path {} does not exist on {at}", s.path.display())
        } else {
            let detail = if detail.is_empty() {
                "no answer from the server".to_string()
            } else {
                detail.to_string()
            };
            format!("cannot reach {at} ({what}): {detail}")
        };
        Error::new(Kind::Remote, message)
    }
}

fn identity_label(s: &Sftp) -> String {
    s.identity_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "ssh's default keys".into())
}

fn ssh_config_text(s: &Sftp, control_path: Option<&Path>) -> Result<String> {
    let mut lines = vec![
        format!("Host {HOST_ALIAS}"),
        format!(
            "  HostName {}",
            s.host.trim_start_matches('[').trim_end_matches(']')
        ),
        format!("  Port {}", s.port),
        format!("  User {}", s.user),
        format!(
            "  UserKnownHostsFile {}",
            config_quote(&s.known_hosts_file)?
        ),
        "  GlobalKnownHostsFile /dev/null".into(),
        "  StrictHostKeyChecking yes".into(),
        "  UpdateHostKeys no".into(),
        "  BatchMode yes".into(),
        "  PasswordAuthentication no".into(),
        "  KbdInteractiveAuthentication no".into(),
        format!("  ConnectTimeout {CONNECT_TIMEOUT_S}"),
        format!("  ServerAliveInterval {}", server_alive().0),
        format!("  ServerAliveCountMax {}", server_alive().1),
        "  ForwardAgent no".into(),
        "  ClearAllForwardings yes".into(),
        // Prefer AES-GCM (hardware-accelerated almost everywhere) over the
        // default ChaCha20 for bulk data; `^` only moves them to the front.
        "  Ciphers ^aes128-gcm@openssh.com,aes256-gcm@openssh.com".into(),
        "  LogLevel ERROR".into(),
    ];
    if let Some(socket) = control_path {
        // Use the stage's master when it is up; without it (not started yet,
        // or gone with a broken link) ssh connects on its own.
        lines.push("  ControlMaster no".into());
        lines.push(format!("  ControlPath {}", config_quote(socket)?));
    }
    if let Some(id) = &s.identity_file {
        lines.push(format!("  IdentityFile {}", config_quote(id)?));
        lines.push("  IdentitiesOnly yes".into());
    }
    Ok(lines.join("\n") + "\n")
}

/// A path as one double-quoted ssh_config argument. ssh expands `%` tokens
/// (`%d` is the home directory) in ControlPath, IdentityFile and
/// UserKnownHostsFile, so `%` is written `%%`. What has no escape valid for
/// every OpenSSH (`"`, `\`, `${`, line breaks) the job file check refuses;
/// it is refused here again in case a default path holds it.
fn config_quote(path: &Path) -> Result<String> {
    let text = path.to_string_lossy();
    if text.contains(['"', '\\']) || text.contains("${") || text.chars().any(char::is_control) {
        return Err(Error::usage(format!(
            "path {text:?} cannot be written into an ssh config \
             (it holds a double quote, a backslash, `${{` or a control character)"
        )));
    }
    Ok(format!("\"{}\"", text.replace('%', "%%")))
}

/// One word of rsync's `-e` command. rsync splits that string at spaces
/// itself, not with a shell: inside '...' everything is literal except `'`,
/// which is written twice (`''`); a backslash is no escape. So a shell's
/// `'\''` would break it.
fn rsync_shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "''"))
}

fn check_identity_file(s: &Sftp) -> Result<()> {
    let Some(id) = &s.identity_file else {
        return Ok(());
    };
    let meta = std::fs::metadata(id)
        .map_err(|e| Error::new(Kind::Remote, format!("identity file {}: {e}", id.display())))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 && nix::unistd::getuid().as_raw() == meta_uid(&meta) {
        return Err(Error::new(
            Kind::Remote,
            format!(
                "identity file {} has loose permissions {:o}: ssh would ignore it (chmod 600)",
                id.display(),
                mode & 0o777
            ),
        ));
    }
    Ok(())
}

fn meta_uid(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::MetadataExt;
    meta.uid()
}

fn check_known_hosts_file(s: &Sftp) -> Result<()> {
    match std::fs::metadata(&s.known_hosts_file) {
        Ok(m) if m.len() > 0 => Ok(()),
        Ok(_) => Err(Error::new(
            Kind::Remote,
            format!("known_hosts file {} is empty", s.known_hosts_file.display()),
        )),
        Err(e) => Err(Error::new(
            Kind::Remote,
            format!("known_hosts file {}: {e}", s.known_hosts_file.display()),
        )),
    }
}

/// Writes a file readable by its owner only (AtomicFile creates 0600).
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::fsutil::write_atomic(path, bytes)
}

/// Where a stage reaches the remote.
pub enum Remote {
    /// A directory that is a local path: a local target, or an sshfs mount
    /// (then `mount` keeps it mounted and `ssh` reaches the same server).
    Path {
        root: PathBuf,
        mount: Option<Mount>,
        ssh: Option<Ssh>,
    },
    /// The server's directory, reached by ssh commands (rsync transport).
    Shell { ssh: Ssh },
}

impl Remote {
    /// The local path of the remote root, when there is one.
    pub fn local_root(&self) -> Option<&Path> {
        match self {
            Remote::Path { root, .. } => Some(root),
            Remote::Shell { .. } => None,
        }
    }

    pub fn ssh(&self) -> Option<&Ssh> {
        match self {
            Remote::Path { ssh, .. } => ssh.as_ref(),
            Remote::Shell { ssh } => Some(ssh),
        }
    }

    /// Re-checks an sshfs mount right before it is trusted.
    pub fn check_live(&self) -> Result<()> {
        match self {
            Remote::Path { mount: Some(m), .. } => m.check_live(),
            Remote::Path {
                root, mount: None, ..
            } => std::fs::read_dir(root)
                .map(|_| ())
                .ctx(|| format!("target {}", root.display())),
            Remote::Shell { .. } => Ok(()),
        }
    }

    /// rsync's notion of a remote directory: a local path or `host:path`.
    pub fn rsync_path(&self, rel: &str) -> String {
        match self {
            Remote::Path { mount: Some(m), .. } => {
                m.pinned().join(rel).to_string_lossy().into_owned()
            }
            Remote::Path { root, .. } => root.join(rel).to_string_lossy().into_owned(),
            Remote::Shell { ssh } => ssh.rsync_location(&ssh.sftp.path.join(rel)),
        }
    }

    /// Creates files/, snapshots/, checksums/ and records/ if missing.
    pub fn ensure_layout(&self) -> Result<()> {
        match self {
            Remote::Path { root, .. } => {
                for dir in [FILES, SNAPSHOTS, CHECKSUMS, RECORDS] {
                    let path = root.join(dir);
                    if !path.is_dir() {
                        std::fs::create_dir(&path)
                            .ctx(|| format!("cannot create {} on the target", path.display()))?;
                    }
                }
                Ok(())
            }
            Remote::Shell { ssh } => {
                let root = &ssh.sftp.path;
                let dirs: Vec<String> = [FILES, SNAPSHOTS, CHECKSUMS, RECORDS]
                    .iter()
                    .map(|d| quote_path(&root.join(d)))
                    .collect();
                let command = format!("cd {} && mkdir -p -- {}", quote_path(root), dirs.join(" "));
                let out = ssh.run(&command, "creating the remote layout", SHORT_COMMAND)?;
                if !out.success() {
                    return Err(remote_failure(
                        ssh,
                        &out,
                        &format!("cannot create the layout in {}", root.display()),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Reads a file relative to the remote root, at most `limit` bytes
    /// (the target decides how large it is); None if it is missing.
    pub fn read_file(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let what = format!("{rel} on the target");
        match self {
            Remote::Path { root, .. } => match std::fs::File::open(root.join(rel)) {
                Ok(file) => {
                    crate::limits::read_text(file, limit, &what).map(|t| Some(t.into_bytes()))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(
                    format!("reading {} on the target", root.join(rel).display()),
                    e,
                )),
            },
            Remote::Shell { ssh } => {
                let path = quote_path(&ssh.sftp.path.join(rel));
                let mut out = ssh.run(
                    &format!("if [ -f {path} ]; then cat -- {path}; else exit 44; fi"),
                    "reading a file",
                    SHORT_COMMAND,
                )?;
                match out.code() {
                    Some(0) => crate::limits::read_text(out.stdout_reader()?, limit, &what)
                        .map(|t| Some(t.into_bytes())),
                    Some(44) => Ok(None),
                    _ => Err(remote_failure(ssh, &out, &format!("cannot read {rel}"))),
                }
            }
        }
    }

    /// A file relative to the remote root, to stream from (a record can be
    /// large): on a path target opened in place, through no link; from a
    /// server, copied into `scratch` (on disk, not in memory). None if it
    /// is missing.
    pub fn open_file(&self, rel: &str, scratch: File) -> Result<Option<File>> {
        match self {
            Remote::Path { root, .. } => crate::fsutil::open_below(root, rel),
            Remote::Shell { ssh } => {
                let path = quote_path(&ssh.sftp.path.join(rel));
                // At most what a record of the largest tree can hold.
                let limit = crate::limits::MAX_TREE_ENTRIES as u64 * 160;
                let cmd = ssh
                    .command(&format!(
                        "if [ -f {path} ]; then head -c {limit} -- {path}; else exit 44; fi"
                    ))
                    .stdout_to(scratch)
                    .timeout(SHORT_COMMAND * 12);
                let out = cmd.run()?;
                match out.code() {
                    Some(0) => out.into_stdout().map(Some),
                    Some(44) => Ok(None),
                    _ => Err(remote_failure(ssh, &out, &format!("cannot read {rel}"))),
                }
            }
        }
    }

    /// Replaces a file relative to the remote root in one step: the bytes go
    /// to a temporary name first, so a broken link never leaves half a file
    /// under the real name.
    pub fn write_file_atomic(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        self.write_file_atomic_from(rel, memfd_with(bytes)?)
    }

    /// `write_file_atomic` with the content streamed from a file (read from
    /// its start), for lists that grow with the number of files.
    pub fn write_file_atomic_from(&self, rel: &str, mut content: File) -> Result<()> {
        content
            .seek(SeekFrom::Start(0))
            .ctx(|| format!("rewinding the content of {rel}"))?;
        match self {
            Remote::Path { root, .. } => {
                let mut file = crate::fsutil::AtomicFile::create_under(root, rel)?;
                std::io::copy(&mut content, &mut file)
                    .ctx(|| format!("writing {}", root.join(rel).display()))?;
                file.commit()
            }
            Remote::Shell { ssh } => {
                // On the server's own disk: what it does there is its own
                // business, the client only names the files.
                let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
                let temp_rel = Path::new(dir).join(format!(".{name}.tmp"));
                let (temp, target) = (
                    quote_path(&ssh.sftp.path.join(&temp_rel)),
                    quote_path(&ssh.sftp.path.join(rel)),
                );
                let command = format!("cat > {temp} && mv -f -- {temp} {target}");
                let cmd = ssh
                    .command(&command)
                    .stdin(content)
                    .timeout(SHORT_COMMAND * 12);
                ssh.run_checked(cmd, &format!("cannot write {rel}"))
                    .map(|_| ())
            }
        }
    }

    /// Deletes the temp files (`.name.XXXXXX`) that an rsync killed in the
    /// middle leaves in files/. Only safe when names are encrypted: no
    /// encrypted name starts with a dot.
    pub fn remove_rsync_leftovers(&self) -> Result<usize> {
        match self.place() {
            Place::Shell(ssh) => {
                let files = quote_path(&ssh.sftp.path.join(FILES));
                let command = format!("find {files} -type f -name '.*' -print -delete | wc -l");
                let mut out = ssh.run(&command, "removing rsync leftovers", SHORT_COMMAND * 4)?;
                if !out.success() {
                    return Err(remote_failure(ssh, &out, "cannot remove rsync temp files"));
                }
                Ok(out.stdout_string()?.trim().parse().unwrap_or(0))
            }
            Place::Local(root) => remove_dot_files(&root.join(FILES)),
        }
    }
}

/// Where bulk operations on the target run: on the server's shell when we
/// may use one (one round trip instead of one per file over sshfs), else on
/// a local path (a local target or the sshfs mount).
enum Place<'a> {
    Local(&'a Path),
    Shell(&'a Ssh),
}

impl Remote {
    fn place(&self) -> Place<'_> {
        match self {
            Remote::Shell { ssh } => Place::Shell(ssh),
            Remote::Path { ssh: Some(ssh), .. }
                if ssh.sftp.remote_checksums == RemoteChecksums::Ssh =>
            {
                Place::Shell(ssh)
            }
            Remote::Path { root, .. } => Place::Local(root),
        }
    }

    /// Every entry below `rel` (files, dirs, symlinks), relative to it.
    pub fn list_tree(&self, rel: &str) -> Result<Vec<TreeEntry>> {
        match self.place() {
            Place::Local(root) => list_local_tree(&root.join(rel)),
            Place::Shell(ssh) => {
                let dir = quote_path(&ssh.sftp.path.join(rel));
                let command = format!(
                    "if [ -d {dir} ]; then cd {dir} && find . -mindepth 1 -printf '%y %m %s %P\\0'; fi"
                );
                let mut out = ssh.run(&command, "listing the remote tree", SHORT_COMMAND * 12)?;
                if !out.success() {
                    return Err(remote_failure(ssh, &out, &format!("cannot list {rel}")));
                }
                let text = out.stdout_string()?;
                text.split('\0')
                    .filter(|l| !l.is_empty())
                    .map(parse_find_line)
                    .collect()
            }
        }
    }

    /// The names in the remote directory `rel` (empty if it is missing).
    pub fn list_names(&self, rel: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = match self.place() {
            Place::Local(root) => match std::fs::read_dir(root.join(rel)) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(Error::io(format!("listing {rel} on the target"), e)),
            },
            Place::Shell(ssh) => {
                let dir = quote_path(&ssh.sftp.path.join(rel));
                let command = format!("if [ -d {dir} ]; then cd {dir} && ls -1A; fi");
                let mut out = ssh.run(&command, "listing a remote directory", SHORT_COMMAND)?;
                if !out.success() {
                    return Err(remote_failure(ssh, &out, &format!("cannot list {rel}")));
                }
                out.stdout_string()?.lines().map(str::to_owned).collect()
            }
        };
        names.sort();
        Ok(names)
    }

    /// Deletes files or whole directories (relative to the root) on the
    /// target, in one remote command when a shell is used.
    pub fn remove(&self, rels: &[String]) -> Result<()> {
        if rels.is_empty() {
            return Ok(());
        }
        match self.place() {
            Place::Local(root) => {
                for rel in rels {
                    remove_local(&root.join(rel))?;
                }
                Ok(())
            }
            Place::Shell(ssh) => {
                let paths: Vec<String> = rels
                    .iter()
                    .map(|r| quote_path(&ssh.sftp.path.join(r)))
                    .collect();
                let command = format!("rm -rf -- {}", paths.join(" "));
                let out = ssh.run(&command, "removing", SHORT_COMMAND * 12)?;
                if out.success() {
                    Ok(())
                } else {
                    Err(remote_failure(
                        ssh,
                        &out,
                        &format!("cannot remove {}", rels.join(", ")),
                    ))
                }
            }
        }
    }

    /// Runs a shell script in the target's root on the server and returns
    /// its stdout (written to `into`, rewound), when a shell may be used;
    /// None otherwise (the caller then does the same without a shell).
    pub fn run_script(&self, script: &str, what: &str, into: File) -> Result<Option<File>> {
        let Place::Shell(ssh) = self.place() else {
            return Ok(None);
        };
        let root = quote_path(&ssh.sftp.path);
        let cmd = ssh
            .command(&format!("cd {root} && sh"))
            .stdin(memfd_with(script.as_bytes())?)
            .stdout_to(into)
            .timeout(SHORT_COMMAND * 12);
        ssh.run_checked(cmd, what)?.into_stdout().map(Some)
    }

    /// Copies files within the target (`from` -> `to`, both relative to the
    /// root), keeping modes and times; the target's parents must exist.
    pub fn copy_within(&self, pairs: &[(String, String)]) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        match self.place() {
            Place::Local(root) => {
                for (from, to) in pairs {
                    interrupt::check()?;
                    crate::fsutil::copy_below(root, from, to, GOCRYPTFS_SMALL_FILE_LIMIT)?;
                }
                Ok(())
            }
            Place::Shell(ssh) => {
                // One shell script on stdin: no argv length limit, one round trip.
                let mut script = String::from("set -e\n");
                for (from, to) in pairs {
                    let (f, t) = (quote_path(Path::new(from)), quote_path(Path::new(to)));
                    script.push_str(&format!("cp -p -- {f} {t}\n"));
                }
                let root = quote_path(&ssh.sftp.path);
                let out = ssh
                    .command(&format!("cd {root} && sh"))
                    .stdin(memfd_with(script.as_bytes())?)
                    .timeout(SHORT_COMMAND * 12)
                    .run()?;
                if out.success() {
                    Ok(())
                } else {
                    Err(remote_failure(ssh, &out, "cannot complete a snapshot dir"))
                }
            }
        }
    }
}

/// One entry of a remote listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// 'f' file, 'd' directory, 'l' symlink, '?' anything else.
    pub kind: char,
    pub mode: u32,
    pub size: u64,
    pub path: String,
}

fn list_local_tree(dir: &Path) -> Result<Vec<TreeEntry>> {
    let mut entries = Vec::new();
    if !dir.exists() {
        return Ok(entries);
    }
    for entry in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        interrupt::check()?;
        let entry = entry.map_err(|e| crate::walk::error(dir, e))?;
        entries.push(TreeEntry::of(dir, &entry)?);
        if entries.len() > crate::limits::MAX_TREE_ENTRIES {
            return Err(crate::limits::too_much(
                &format!("{} on the target", dir.display()),
                format!("more than {} entries", crate::limits::MAX_TREE_ENTRIES),
            ));
        }
    }
    Ok(entries)
}

impl TreeEntry {
    /// The listing line of an entry a walk of `root` found (as `find
    /// -printf` gives it on the server: sizes of files only).
    pub fn of(root: &Path, entry: &walkdir::DirEntry) -> Result<TreeEntry> {
        use std::os::unix::fs::MetadataExt;
        let meta = entry.metadata().map_err(|e| crate::walk::error(root, e))?;
        let t = entry.file_type();
        let kind = if t.is_file() {
            'f'
        } else if t.is_dir() {
            'd'
        } else if t.is_symlink() {
            'l'
        } else {
            '?'
        };
        Ok(TreeEntry {
            kind,
            mode: meta.mode() & 0o7777,
            size: if t.is_file() { meta.len() } else { 0 },
            path: crate::walk::relative(root, entry.path()),
        })
    }
}

/// Parses `find -printf '%y %m %s %P'` output.
fn parse_find_line(line: &str) -> Result<TreeEntry> {
    let bad = || {
        Error::new(
            Kind::Corrupt,
            format!("unexpected listing line from the server: {line:?}"),
        )
    };
    let mut fields = line.splitn(4, ' ');
    let kind = fields
        .next()
        .and_then(|k| k.chars().next())
        .ok_or_else(bad)?;
    let mode = u32::from_str_radix(fields.next().ok_or_else(bad)?, 8).map_err(|_| bad())?;
    let size = fields.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let path = fields
        .next()
        .filter(|p| !p.is_empty())
        .ok_or_else(bad)?
        .to_string();
    let kind = if "fdl".contains(kind) { kind } else { '?' };
    Ok(TreeEntry {
        kind,
        mode,
        size,
        path,
    })
}

/// gocryptfs.diriv (16 bytes), a long name's .name file (a name of at
/// most a few KiB) and gocryptfs.conf (about 1 KiB) are all a snapshot
/// dir is completed with: anything larger on the target is not one.
const GOCRYPTFS_SMALL_FILE_LIMIT: u64 = 64 * 1024;

fn remove_local(path: &Path) -> Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.ctx(|| format!("removing {}", path.display()))
}

fn remove_dot_files(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in walkdir::WalkDir::new(dir).min_depth(1) {
        interrupt::check()?;
        let entry = entry.map_err(|e| crate::walk::error(dir, e))?;
        let is_temp =
            entry.file_name().to_string_lossy().starts_with('.') && entry.file_type().is_file();
        if is_temp {
            std::fs::remove_file(entry.path())
                .ctx(|| format!("removing {}", entry.path().display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn memfd_with(bytes: &[u8]) -> Result<File> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let mut file = File::from(
        memfd_create("ciphersync-upload", MFdFlags::MFD_CLOEXEC)
            .map_err(|e| Error::new(Kind::Io, format!("memfd: {e}")))?,
    );
    file.write_all(bytes)
        .and_then(|_| file.seek(SeekFrom::Start(0)))
        .ctx(|| "buffering an upload")?;
    Ok(file)
}

pub fn quote_path(path: &Path) -> String {
    shell_quote(&path.to_string_lossy())
}

pub fn remote_failure(ssh: &Ssh, out: &Output, what: &str) -> Error {
    let s = ssh.sftp();
    Error::new(
        Kind::Remote,
        format!("{what} on {}:{}: {}", s.host, s.port, out.stderr.trim()),
    )
}

/// Opens the remote for a stage. `want_path` asks for a local path to the
/// remote root (an sshfs mount for sftp targets); otherwise sftp targets are
/// reached with ssh alone.
pub fn open(job: &Job, want_path: bool, mount_point: &Path) -> Result<Remote> {
    match &job.target {
        crate::config::Target::Local { path } => {
            if !path.is_dir() {
                return Err(Error::new(
                    Kind::Io,
                    format!(
                        "target {} is not a directory (is the disk mounted?)",
                        path.display()
                    ),
                ));
            }
            Ok(Remote::Path {
                root: path.clone(),
                mount: None,
                ssh: None,
            })
        }
        crate::config::Target::Sftp(sftp) => {
            let ssh = Ssh::prepare(job, sftp)?;
            if want_path {
                crate::mount::prepare_point(mount_point)?;
                let mount = ssh.mount(mount_point)?;
                log::debug(|| format!("remote mounted at {}", mount_point.display()));
                Ok(Remote::Path {
                    root: mount_point.to_owned(),
                    mount: Some(mount),
                    ssh: Some(ssh),
                })
            } else {
                Ok(Remote::Shell { ssh })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sftp(identity_file: &str) -> Sftp {
        Sftp {
            host: "backup.example.org".into(),
            port: 22,
            user: "docs".into(),
            path: "/backups/docs".into(),
            identity_file: Some(identity_file.into()),
            known_hosts_file: "/etc/ciphersync/known hosts %h".into(),
            transport: crate::config::Transport::Rsync,
            remote_checksums: RemoteChecksums::Ssh,
            connections: 4,
        }
    }

    #[test]
    fn ssh_config_paths_escape_percent() {
        let text = ssh_config_text(
            &sftp("/keys/100%/id"),
            Some(Path::new("/run/p%d it's/ssh.sock")),
        )
        .unwrap();
        for line in [
            "  UserKnownHostsFile \"/etc/ciphersync/known hosts %%h\"",
            "  ControlPath \"/run/p%%d it's/ssh.sock\"",
            "  IdentityFile \"/keys/100%%/id\"",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn ssh_config_refuses_what_it_cannot_quote() {
        for bad in ["/k/a\"b", "/k/a\\b", "/k/${HOME}", "/k/a\nProxyCommand x"] {
            let e = ssh_config_text(&sftp(bad), None).unwrap_err();
            assert!(e.message.contains("ssh config"), "{bad:?}: {}", e.message);
        }
    }

    #[test]
    fn rsync_shell_words_survive_rsync_splitting() {
        assert_eq!(
            rsync_shell_quote("/run/p%d it's/ssh_config"),
            "'/run/p%d it''s/ssh_config'"
        );
        assert_eq!(rsync_shell_quote(r#"/a "b" \c"#), r#"'/a "b" \c'"#);
    }
}
