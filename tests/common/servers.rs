//! [`Server`]: the kinds of SFTP account ciphersync meets, each a real
//! server on 127.0.0.1 ([`ServerKind`]): OpenSSH with a full shell, OpenSSH
//! chrooted to `internal-sftp`, OpenSSH with a storage-box style command
//! whitelist (`tests/servers/whitelist-shell.py`) and `rclone serve sftp`.
//! [`JobBuilder::build_on`] points a job at one ([`ServerJob`]).
//!
//! The chroot and whitelist accounts are system users
//! ([`CHROOT_USER`], [`WHITELIST_USER`]), created once and kept (like any
//! package's system user); everything else is removed when the [`Server`]
//! is dropped.

use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The chroot account: shell nologin, `ForceCommand internal-sftp`.
pub const CHROOT_USER: &str = "ciphersync-sftp";
/// The whitelist account: its sshd `ForceCommand` is the whitelist wrapper
/// (sshd runs a ForceCommand through the user's shell, so it has /bin/sh;
/// nothing else ever reaches that shell).
pub const WHITELIST_USER: &str = "ciphersync-wl";
/// The user name rclone accepts (any name works with the key; this one is
/// what the job names).
pub const RCLONE_USER: &str = "ciphersync";
/// Where sshd's external sftp server lives on Debian.
pub const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";
/// Serialises creating and fixing the system users across test binaries.
const USERS_LOCK: &str = "/tmp/ciphersync-e2e-users.lock";

/// The kinds of SFTP account the product has to work with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// OpenSSH as root with a full shell (`Sshd`, as every other test).
    FullShell,
    /// OpenSSH, non-root user, `ChrootDirectory` + `ForceCommand
    /// internal-sftp`: SFTP only, no exec at all (a NAS's SFTP share).
    ChrootSftp,
    /// OpenSSH, non-root user, `ForceCommand` = a wrapper that runs only the
    /// sftp subsystem, `rsync --server`, `sha1sum`, `mkdir` and `ls`, without
    /// a shell (Hetzner Storage Box / rsync.net style).
    Whitelist,
    /// `rclone serve sftp` of a local directory: no modes, symlinks or hard
    /// links; exec only of rclone's own `sha1sum`/`md5sum`/`df`.
    Rclone,
}

impl ServerKind {
    pub const ALL: [ServerKind; 4] = [
        ServerKind::FullShell,
        ServerKind::ChrootSftp,
        ServerKind::Whitelist,
        ServerKind::Rclone,
    ];

    /// A short name for temp dirs and messages.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::FullShell => "full-shell",
            ServerKind::ChrootSftp => "chroot-sftp",
            ServerKind::Whitelist => "whitelist",
            ServerKind::Rclone => "rclone",
        }
    }

    /// What starting this kind of server needs besides [`SFTP_TOOLS`].
    pub fn tools(self) -> &'static [&'static str] {
        match self {
            ServerKind::FullShell => &[],
            ServerKind::ChrootSftp => &["useradd", "usermod", "getent", "flock", "id"],
            ServerKind::Whitelist => &[
                "useradd",
                "usermod",
                "getent",
                "flock",
                "id",
                "/usr/bin/python3",
                SFTP_SERVER,
            ],
            ServerKind::Rclone => &["rclone"],
        }
    }

    /// [`require_tools`] for a test against this kind: SFTP_TOOLS plus
    /// [`ServerKind::tools`].
    pub fn require(self, test: &str) -> bool {
        let mut all: Vec<&str> = SFTP_TOOLS.to_vec();
        all.extend_from_slice(self.tools());
        require_tools(test, &all)
    }
}

enum Process {
    Sshd(Sshd),
    Rclone(Child),
}

/// Removes a directory (outside any [`TempDir`]) on drop.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if std::env::var_os("CIPHERSYNC_E2E_KEEP").is_some() {
            eprintln!("harness: keeping {}", self.0.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running server of one [`ServerKind`] and what a job's `target` needs
/// to reach it. Its own files are under `<base>/<kind>` (keys, config,
/// log); the chroot of [`ServerKind::ChrootSftp`] is under `/run` (sshd
/// wants every component of a chroot root-owned and closed to others, which
/// `/tmp` is not) and removed on drop. The server is stopped on drop.
pub struct Server {
    pub kind: ServerKind,
    pub port: u16,
    /// target.user
    pub user: String,
    /// target.path: the job's directory as the job must name it (inside the
    /// chroot for ChrootSftp, inside rclone's root for Rclone).
    pub path: String,
    /// Where that directory is on this machine (to inspect or damage files).
    pub local_dir: PathBuf,
    /// target.identity_file
    pub identity_file: PathBuf,
    /// target.known_hosts_file: `[127.0.0.1]:PORT <host key>`.
    pub known_hosts: PathBuf,
    /// The server's own files.
    pub dir: PathBuf,
    /// The server's stderr.
    pub log: PathBuf,
    // Field order: the server stops before its chroot is removed.
    process: Process,
    _chroot: Option<RemoveOnDrop>,
}

impl Server {
    /// Starts a server of `kind` with its files under `base` (a temp dir)
    /// and an empty job directory ([`Server::local_dir`]) that the account
    /// may write to.
    pub fn start(kind: ServerKind, base: &Path) -> Server {
        match kind {
            ServerKind::FullShell => {
                let sshd = Sshd::start(base);
                let local = sshd.remote_dir().to_path_buf();
                Server::over_sshd(kind, sshd, "root", local.display().to_string(), local, None)
            }
            ServerKind::ChrootSftp => start_chroot(base),
            ServerKind::Whitelist => start_whitelist(base),
            ServerKind::Rclone => start_rclone(base),
        }
    }

    fn over_sshd(
        kind: ServerKind,
        sshd: Sshd,
        user: &str,
        path: String,
        local_dir: PathBuf,
        chroot: Option<RemoveOnDrop>,
    ) -> Server {
        Server {
            kind,
            port: sshd.port,
            user: user.into(),
            path,
            local_dir,
            identity_file: sshd.client_key.clone(),
            known_hosts: sshd.known_hosts.clone(),
            dir: sshd.dir.clone(),
            log: sshd.log.clone(),
            process: Process::Sshd(sshd),
            _chroot: chroot,
        }
    }

    /// The job's `target` object (type sftp; no transport or
    /// remote_checksums: the builder adds those).
    pub fn target_json(&self) -> Value {
        json!({
            "type": "sftp",
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "path": self.path,
            "identity_file": self.identity_file,
            "known_hosts_file": self.known_hosts,
        })
    }

    /// ssh/sftp options: our key, our known_hosts, nothing from the user's
    /// config.
    pub fn ssh_opts(&self) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-i".into(),
            self.identity_file.display().to_string(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
        ]
    }

    /// `ssh user@127.0.0.1 REMOTE_CMD`.
    pub fn ssh(&self, remote_cmd: &str) -> Out {
        let mut c = Command::new("ssh");
        c.args(self.ssh_opts())
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{}@127.0.0.1", self.user))
            .arg(remote_cmd);
        run_cmd(c)
    }

    /// `sftp -b BATCH user@127.0.0.1`.
    pub fn sftp_batch(&self, batch: &str) -> Out {
        let f = self.dir.join("batch.sftp");
        fs::write(&f, batch).unwrap();
        let mut c = Command::new("sftp");
        c.args(self.ssh_opts())
            .arg("-P")
            .arg(self.port.to_string())
            .arg("-b")
            .arg(&f)
            .arg(format!("{}@127.0.0.1", self.user));
        run_cmd(c)
    }

    /// The server's pid (sshd's listener or rclone).
    pub fn pid(&self) -> u32 {
        match &self.process {
            Process::Sshd(s) => {
                let t = fs::read_to_string(s.dir.join("sshd.pid")).unwrap_or_default();
                t.trim().parse().unwrap_or(0)
            }
            Process::Rclone(c) => c.id(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Process::Rclone(child) = &mut self.process {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // An Sshd stops itself when `process` is dropped, after this.
    }
}

/// Creates the system user `name` with `shell` and home `/` unless it
/// exists, and makes sure its password field is `*` (no password, not
/// locked: with `UsePAM no` sshd refuses even key logins to an account whose
/// password field starts with `!`, useradd's default). Serialised with
/// flock: several test binaries may do this at once. Returns (uid, gid).
pub fn ensure_system_user(name: &str, shell: &str) -> (u32, u32) {
    const SCRIPT: &str = r#"set -e
u=$1 shell=$2
getent passwd "$u" >/dev/null || useradd --system --no-create-home --home-dir / --shell "$shell" "$u"
[ "$(getent passwd "$u" | cut -d: -f6-7)" = "/:$shell" ] || usermod --home / --shell "$shell" "$u"
[ "$(getent shadow "$u" | cut -d: -f2)" = "*" ] || usermod --password '*' "$u"
"#;
    let mut c = Command::new("flock");
    c.args([USERS_LOCK, "sh", "-c", SCRIPT, "sh", name, shell]);
    run_cmd(c).expect_code(0, &format!("create the system user {name}"));
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, name])
            .stderr(Stdio::inherit())
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("id {flag} {name}: {out:?}"))
    };
    (id("-u"), id("-g"))
}

/// `mkdir` with exactly `mode`, owned by `owner` (uid, gid) when given.
pub fn make_dir(path: &Path, mode: u32, owner: Option<(u32, u32)>) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// A directory for a chroot: below /run (root's, 0755), since sshd
/// refuses a chroot with any component writable by others (/tmp is 1777).
pub fn chroot_dir(tag: &str) -> (PathBuf, RemoveOnDrop) {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let chroot = PathBuf::from(format!("/run/cse2e-{tag}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&chroot);
    make_dir(&chroot, 0o755, None);
    let guard = RemoveOnDrop(chroot.clone());
    (chroot, guard)
}

fn start_chroot(base: &Path) -> Server {
    let owner = ensure_system_user(CHROOT_USER, "/usr/sbin/nologin");
    let (chroot, guard) = chroot_dir("chroot");
    let local = chroot.join("backup");
    make_dir(&local, 0o755, Some(owner));
    let extra = format!(
        "Match User {CHROOT_USER}\n  ChrootDirectory {}\n  ForceCommand internal-sftp\n  \
         AllowTcpForwarding no\n  X11Forwarding no\n",
        chroot.display()
    );
    let sshd = Sshd::start_with(
        base,
        &SshdSetup {
            subsystem: "internal-sftp",
            extra_config: &extra,
            bind_mounts: &[],
        },
    );
    Server::over_sshd(
        ServerKind::ChrootSftp,
        sshd,
        CHROOT_USER,
        "/backup".into(),
        local,
        Some(guard),
    )
}

fn start_whitelist(base: &Path) -> Server {
    let owner = ensure_system_user(WHITELIST_USER, "/bin/sh");
    let home = base.join("wl-home");
    make_dir(&home, 0o755, Some(owner));
    let local = home.join("backup");
    make_dir(&local, 0o755, Some(owner));
    // A copy the account can read (the checkout may not be readable to it).
    let script = base.join("whitelist-shell.py");
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/whitelist-shell.py"),
        &script,
    )
    .expect("copy tests/servers/whitelist-shell.py");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let extra = format!(
        "Match User {WHITELIST_USER}\n  ForceCommand /usr/bin/python3 {} {}\n  \
         AllowTcpForwarding no\n  X11Forwarding no\n",
        script.display(),
        home.display()
    );
    // An external sftp-server: the wrapper sees it as SSH_ORIGINAL_COMMAND
    // and execs it (internal-sftp only exists inside sshd).
    let sshd = Sshd::start_with(
        base,
        &SshdSetup {
            subsystem: SFTP_SERVER,
            extra_config: &extra,
            bind_mounts: &[],
        },
    );
    Server::over_sshd(
        ServerKind::Whitelist,
        sshd,
        WHITELIST_USER,
        local.display().to_string(),
        local,
        None,
    )
}

fn start_rclone(base: &Path) -> Server {
    let dir = base.join("rclone");
    let root = base.join("rclone-root");
    let local = root.join("backup");
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(&local).unwrap();
    let host_key = dir.join("host_ed25519");
    let client_key = dir.join("client_ed25519");
    keygen(&host_key);
    keygen(&client_key);
    let auth = dir.join("authorized_keys");
    fs::copy(dir.join("client_ed25519.pub"), &auth).unwrap();
    let log = dir.join("rclone.log");
    let mut last_err = String::new();
    for _attempt in 0..5 {
        let port = free_port();
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new("rclone");
        cmd.args(["serve", "sftp"])
            .arg(&root)
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .args(["--user", RCLONE_USER])
            .arg("--authorized-keys")
            .arg(&auth)
            .arg("--key")
            .arg(&host_key)
            // Nothing in root's ~/.config or ~/.cache.
            .arg("--config")
            .arg(dir.join("rclone.conf"))
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf);
        let mut child = cmd.spawn().expect("spawn rclone serve sftp");
        match wait_ssh_banner(&mut child, port, Duration::from_secs(60)) {
            Ok(()) => {
                let pubkey = fs::read_to_string(dir.join("host_ed25519.pub")).unwrap();
                let mut parts = pubkey.split_whitespace();
                let (kt, kb) = (parts.next().unwrap(), parts.next().unwrap());
                let known_hosts = dir.join("known_hosts");
                fs::write(&known_hosts, format!("[127.0.0.1]:{port} {kt} {kb}\n")).unwrap();
                return Server {
                    kind: ServerKind::Rclone,
                    port,
                    user: RCLONE_USER.into(),
                    path: "/backup".into(),
                    local_dir: local,
                    identity_file: client_key,
                    known_hosts,
                    dir,
                    log,
                    process: Process::Rclone(child),
                    _chroot: None,
                };
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                last_err = e;
            }
        }
    }
    panic!(
        "rclone serve sftp did not start: {last_err}\nlog:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
}

/// A job whose target is a [`Server`] ([`JobBuilder::build_on`]). Field
/// order: the server stops before the job's temp dir is removed.
pub struct ServerJob {
    pub server: Server,
    pub job: Job,
}

impl std::ops::Deref for ServerJob {
    type Target = Job;
    fn deref(&self) -> &Job {
        &self.job
    }
}
