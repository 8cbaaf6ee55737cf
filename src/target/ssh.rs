//! ssh to the job's server: one generated ssh_config file in the runtime
//! dir (host key checking always strict against the job's known_hosts file,
//! keepalives so that a dead link fails in bounded time), one master
//! connection per stage, and errors that name the host and the cause.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::sftp::{Leased, Session, SftpPlace};
use crate::budget::{self, Gate, Permit, Sessions};
use crate::config::{Job, Sftp};
use crate::error::{Error, Kind, Result};
use crate::exec::{Cmd, Output, shell_quote};
use crate::log;
use crate::mount::{FsType, Mount};

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
    /// The target's connection budget (budget.rs): the sshfs mount's
    /// share, and the gate every other session passes; SFTP sessions
    /// that finished their work wait there for the next (`sftp_session`).
    sessions: Sessions,
    beside_mount: Gate<Session>,
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
        let sessions = budget::of(sftp);
        if let Some(note) = sessions.note(sftp.max_connections) {
            log::info(note);
        }
        let mut ssh = Ssh {
            config_file,
            sftp: sftp.clone(),
            master: None,
            sessions,
            beside_mount: Gate::new(sessions.beside),
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

    /// A place for one session beside the sshfs mount (a command, an rsync
    /// over ssh): waits while the budget's share is taken.
    pub fn session(&self) -> Permit<'_> {
        self.beside_mount.enter()
    }

    /// A place for one more session beside the mount, where the budget
    /// has one free now.
    pub fn try_session(&self) -> Option<Permit<'_>> {
        self.beside_mount.try_enter()
    }

    /// An SFTP session beside the mount: one that an earlier step of the
    /// stage finished with where there is one (opening one costs about
    /// four round trips: the channel, the subsystem, the greeting), else a
    /// new one in a free place.
    pub(super) fn sftp_session(&self) -> Result<Leased<'_>> {
        let (permit, parked) = self.beside_mount.enter_reusing();
        Leased::new(self, permit, parked)
    }

    /// A place for one more SFTP session, where one is free now (None
    /// where not); `SftpPlace::open` opens it (on the thread that works
    /// on it: opening takes round trips).
    pub(super) fn try_sftp_place(&self) -> Option<SftpPlace<'_>> {
        let (permit, parked) = self.beside_mount.try_enter_reusing()?;
        Some(SftpPlace {
            ssh: self,
            permit,
            parked,
        })
    }

    /// `work` on an SFTP session (`sftp_session`, `Leased::work`).
    pub(super) fn with_sftp<R>(&self, work: impl FnOnce(&mut Session) -> Result<R>) -> Result<R> {
        self.sftp_session()?.work(work)
    }

    /// Opens an SFTP session and parks it for the first step that wants
    /// one: called beside other work that waits on round trips (the sshfs
    /// mount), it saves that step the opening. Where none opens, that
    /// step tries again and says why.
    pub(super) fn open_sftp_ahead(&self) {
        let opened = self.sftp_session().and_then(|mut session| {
            session.take_limits_answer()?;
            Ok(session)
        });
        match opened {
            Ok(session) => session.give_back(),
            Err(e) => log::debug(|| format!("sftp: no session opened ahead: {e}")),
        }
    }

    /// Keeps a session that finished its work for the next step.
    pub(super) fn park_sftp(&self, permit: Permit<'_>, session: Session) {
        self.beside_mount.park(permit, session);
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        // The parked SFTP sessions end (all at once) before their master.
        let mut parked = self.beside_mount.drain();
        parked.iter_mut().for_each(Session::close);
        drop(parked);
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

    /// `ssh -s ... -- <subsystem>`: a session of the server's subsystem
    /// (sftp), talked to over pipes (exec::Conversation).
    pub fn subsystem(&self, name: &str) -> Cmd {
        self.base().args(["-s", "--", HOST_ALIAS, name])
    }

    /// Runs a remote command; connection failures become one clear error.
    /// Keepalives bound a dead link; `limit` bounds a server that answers
    /// keepalives but never finishes the command.
    pub fn run(&self, remote_command: &str, what: &str, limit: Duration) -> Result<Output> {
        let output = self.exec(self.command(remote_command).timeout(limit))?;
        if output.code() == Some(255) {
            return Err(self.connection_error(&output.stderr, what));
        }
        Ok(output)
    }

    /// Runs a command made with `command` within the budget: every session
    /// the stage opens beside the mount goes through here (or `session`).
    pub fn exec(&self, cmd: Cmd) -> Result<Output> {
        let _session = self.session();
        cmd.run()
    }

    /// Runs a command made with `command` (and given its stdin, stdout or
    /// time limit): a lost connection (ssh's 255) and a failure on the
    /// server both become one clear error, `what` saying what was done.
    pub fn run_checked(&self, cmd: Cmd, what: &str) -> Result<Output> {
        let mut out = self.exec(cmd)?;
        if out.code() == Some(255) {
            return Err(self.connection_error(&out.stderr, what));
        }
        if !out.success() {
            return Err(remote_failure(self, &mut out, what));
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
            // The mount's share of the budget; its connections open as
            // reads and writes need them, and stay until the unmount.
            .arg(format!("max_conns={}", self.sessions.sshfs))
            .args(sole_writer_options(self.sftp.transport));
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

impl Ssh {
    /// Mounts the job's remote directory read-only with an sshfs that
    /// outlives the helper (`ciphersync mount`): it daemonizes once mounted,
    /// and has its own connection (the config written to `config_file` has
    /// no ControlPath), since a stage's master goes when the helper does.
    /// `-o reconnect`: a browse may stay mounted for hours. One connection
    /// (sshfs's default `max_conns`), beside the budget of the stages that
    /// run meanwhile (README, "Connection budget").
    pub fn mount_detached(sftp: &Sftp, config_file: &Path, point: &Path) -> Result<()> {
        check_identity_file(sftp)?;
        check_known_hosts_file(sftp)?;
        write_private(config_file, ssh_config_text(sftp, None)?.as_bytes())?;
        let ssh = Ssh {
            config_file: config_file.to_owned(),
            sftp: sftp.clone(),
            master: None,
            sessions: budget::of(sftp),
            beside_mount: Gate::new(1),
        };
        let out = Cmd::new("sshfs")
            .arg("-F")
            .arg(config_file)
            .arg(format!("{HOST_ALIAS}:{}", sftp.path.display()))
            .arg(point)
            .args(["-o", "ro", "-o", "noatime", "-o", "contain_symlinks"])
            .args(["-o", "reconnect"])
            .timeout(Duration::from_secs(u64::from(CONNECT_TIMEOUT_S) * 3))
            .run()?;
        if !out.success() {
            return Err(ssh.connection_error(&out.stderr, "mounting with sshfs"));
        }
        Ok(())
    }
}

/// How long the kernel may answer "no such file" from its cache for a
/// name it looked up through the mount, in seconds.
const NEGATIVE_TIMEOUT_S: u32 = 60;

/// sshfs options for a mount that every write to the account goes through
/// while it is mounted: the sshfs transport, where rsync writes into it.
///
/// `negative_timeout`: for each new file rsync looks its name up three
/// times (the generator, the backup check, the rename), each an SFTP
/// LSTAT that rsync waits for; with the answer cached only the first goes
/// to the server (2 of a new file's 20 round trips that rsync waits for:
/// bench/analysis.md, "Issue 14: round trips per file over sshfs").
/// Safe because the kernel keeps its cache right for everything done
/// through the mount (rsync's creates and
/// renames, `create_dir`), each run mounts anew (nothing carries over to
/// the next run, which looks again), and with this transport nothing
/// else writes the account meanwhile (the shell target's scripts write
/// records/, which nothing looks up through this mount). Not where rsync
/// writes over ssh beside the mount (transport `rsync`: the whitelist
/// target lists files/ through it after rsync made new names there), nor
/// for `ciphersync mount`, which should show what later backups add.
/// Positive entries and attributes keep sshfs's defaults: longer ones
/// spared no request (measured) and would only widen the window in which
/// a change made on the server is not seen.
fn sole_writer_options(transport: crate::config::Transport) -> Vec<String> {
    match transport {
        crate::config::Transport::Sshfs => {
            vec![
                "-o".into(),
                format!("negative_timeout={NEGATIVE_TIMEOUT_S}"),
            ]
        }
        crate::config::Transport::Rsync => Vec::new(),
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

/// At most `max` bytes of `text`, control characters escaped.
fn one_line(text: &str, max: usize) -> String {
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let more = if cut < text.len() { "…" } else { "" };
    format!("{}{more}", crate::human::escape(&text[..cut]))
}

/// A path as one word for the server's shell.
pub fn quote_path(path: &Path) -> String {
    shell_quote(&path.to_string_lossy())
}

pub fn remote_failure(ssh: &Ssh, out: &mut Output, what: &str) -> Error {
    let s = ssh.sftp();
    Error::new(
        Kind::Remote,
        format!("{what} on {}:{}: {}", s.host, s.port, server_words(out)),
    )
}

/// What the server said about a failed command: its stderr, and its stdout
/// too (OpenSSH's internal-sftp writes "This service allows sftp
/// connections only." there), each bounded and on one line.
pub fn server_words(out: &mut Output) -> String {
    let mut stdout = String::new();
    if let Ok(file) = out.stdout_reader() {
        let mut head = Vec::new();
        let _ = file.take(1024).read_to_end(&mut head);
        stdout = String::from_utf8_lossy(&head).into_owned();
    }
    let words: Vec<String> = [out.stderr.as_str(), stdout.as_str()]
        .iter()
        .map(|w| w.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|w| !w.is_empty())
        .map(|w| one_line(&w, 300))
        .collect();
    match words.is_empty() {
        true => format!(
            "the command failed (exit {:?}) and said nothing",
            out.code()
        ),
        false => words.join(" / "),
    }
}

/// Opens the remote for a stage. `want_path` asks for a local path to the
/// remote root (an sshfs mount for sftp targets); otherwise sftp targets are
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_lookups_are_cached_only_where_the_mount_is_the_writer() {
        use crate::config::Transport;
        assert_eq!(
            sole_writer_options(Transport::Sshfs),
            ["-o", "negative_timeout=60"]
        );
        // rsync over ssh writes files/ beside the mount: a cached "no
        // such file" would hide what it made from the listings.
        assert!(sole_writer_options(Transport::Rsync).is_empty());
    }

    fn sftp(identity_file: &str) -> Sftp {
        Sftp {
            host: "backup.example.org".into(),
            port: 22,
            user: "docs".into(),
            path: "/backups/docs".into(),
            identity_file: Some(identity_file.into()),
            known_hosts_file: "/etc/ciphersync/known hosts %h".into(),
            transport: crate::config::Transport::Rsync,
            remote_checksums: crate::config::RemoteChecksums::Ssh,
            connections: 4,
            max_connections: crate::budget::DEFAULT,
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
