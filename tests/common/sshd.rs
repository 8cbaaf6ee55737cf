//! [`Sshd`]: a throwaway OpenSSH server on 127.0.0.1 with its own host and
//! client key; free ports, banner wait.

use super::*;
use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A throwaway OpenSSH server on 127.0.0.1:`port`, its files under
/// `<base>/sshd`. Since the server is this machine, a "remote" path is a local
/// path: [`Sshd::remote_dir`] (`<base>/remote`, created empty). Killed (and
/// reaped) on drop.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    remote: PathBuf,
    /// Private client key authorised for root.
    pub client_key: PathBuf,
    /// known_hosts with `[127.0.0.1]:PORT <host key>`.
    pub known_hosts: PathBuf,
    /// sshd's stderr (-e), LogLevel ERROR.
    pub log: PathBuf,
}

/// A new ed25519 key pair at `path` and `path.pub`, no passphrase.
pub fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "ciphersync-e2e",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("run ssh-keygen");
    assert!(st.success(), "ssh-keygen -f {} failed", path.display());
}

/// A port that was free a moment ago (bind port 0, read it, drop).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// What a [`Sshd`] serves beyond the defaults: the sftp subsystem and lines
/// appended to sshd_config (`Match` blocks go here: they must come last).
pub struct SshdSetup<'a> {
    /// `Subsystem sftp <this>`.
    pub subsystem: &'a str,
    /// Appended to sshd_config as they are.
    pub extra_config: &'a str,
    /// Bind mounts made for sshd alone: it runs in a mount namespace of
    /// its own (unshare), so they vanish with it and never show on the
    /// host. What a chroot needs of the host's files (`BindMount`).
    pub bind_mounts: &'a [BindMount],
}

/// `mount --bind from to`, read-only when `read_only`.
pub struct BindMount {
    pub from: PathBuf,
    pub to: PathBuf,
    pub read_only: bool,
}

/// sshd itself, or `unshare` making its bind mounts first (one sh
/// script; `exec` keeps the pid, so killing the child stops sshd).
fn sshd_command(bind_mounts: &[BindMount]) -> Command {
    if bind_mounts.is_empty() {
        return Command::new("/usr/sbin/sshd");
    }
    let mut script = String::from("set -e\n");
    for m in bind_mounts {
        let ro = if m.read_only { "-o ro " } else { "" };
        script.push_str(&format!(
            "mount --bind {ro}'{}' '{}'\n",
            m.from.display(),
            m.to.display()
        ));
    }
    script.push_str("exec /usr/sbin/sshd \"$@\"\n");
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(script)
        .arg("sshd");
    c
}

impl Default for SshdSetup<'_> {
    fn default() -> Self {
        SshdSetup {
            subsystem: "internal-sftp",
            extra_config: "",
            bind_mounts: &[],
        }
    }
}

impl Sshd {
    pub fn start(base: &Path) -> Sshd {
        Sshd::start_with(base, &SshdSetup::default())
    }

    /// [`Sshd::start`] with another sftp subsystem and extra sshd_config
    /// lines (see [`SshdSetup`]).
    pub fn start_with(base: &Path, setup: &SshdSetup) -> Sshd {
        let dir = base.join("sshd");
        let remote = base.join("remote");
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(&remote).unwrap();
        fs::create_dir_all("/run/sshd").expect("create /run/sshd (privsep dir)");
        let host_key = dir.join("host_ed25519");
        let client_key = dir.join("client_ed25519");
        keygen(&host_key);
        keygen(&client_key);
        let auth = dir.join("authorized_keys");
        fs::copy(dir.join("client_ed25519.pub"), &auth).unwrap();
        let config = dir.join("sshd_config");
        let log = dir.join("sshd.log");
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {auth}\n\
                     PidFile {pid}\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     Subsystem sftp {subsystem}\nLogLevel ERROR\n{extra}",
                    subsystem = setup.subsystem,
                    extra = setup.extra_config,
                    hk = host_key.display(),
                    auth = auth.display(),
                    pid = dir.join("sshd.pid").display(),
                ),
            )
            .unwrap();
            let logf = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            let mut child = sshd_command(setup.bind_mounts)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(logf)
                .spawn()
                .expect("spawn /usr/sbin/sshd");
            match wait_ssh_banner(&mut child, port, Duration::from_secs(60)) {
                Ok(()) => {
                    let pubkey = fs::read_to_string(dir.join("host_ed25519.pub")).unwrap();
                    let mut parts = pubkey.split_whitespace();
                    let (kt, kb) = (parts.next().unwrap(), parts.next().unwrap());
                    let known_hosts = dir.join("known_hosts");
                    fs::write(&known_hosts, format!("[127.0.0.1]:{port} {kt} {kb}\n")).unwrap();
                    return Sshd {
                        child,
                        port,
                        dir,
                        remote,
                        client_key,
                        known_hosts,
                        log,
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
            "sshd did not start: {last_err}\nlog:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// The directory the "server" side sees (a local path; target.path).
    pub fn remote_dir(&self) -> &Path {
        &self.remote
    }

    /// ssh options that authenticate with the client key and check the host
    /// key strictly against our known_hosts (no user config involved).
    pub fn ssh_opts(&self) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-i".into(),
            self.client_key.display().to_string(),
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

    /// Runs `remote_cmd` on the server over ssh (as root).
    pub fn ssh(&self, remote_cmd: &str) -> Out {
        let mut c = Command::new("ssh");
        c.args(self.ssh_opts())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("root@127.0.0.1")
            .arg(remote_cmd);
        run_cmd(c)
    }

    /// Runs an `sftp -b` batch against the server.
    pub fn sftp_batch(&self, batch: &str) -> Out {
        let f = self.dir.join("batch.sftp");
        fs::write(&f, batch).unwrap();
        let mut c = Command::new("sftp");
        c.args(self.ssh_opts())
            .arg("-P")
            .arg(self.port.to_string())
            .arg("-b")
            .arg(&f)
            .arg("root@127.0.0.1");
        run_cmd(c)
    }
}

/// Waits until `port` answers with an SSH banner while `child` (the server)
/// still runs.
pub fn wait_ssh_banner(child: &mut Child, port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Err(format!("sshd exited early: {st}"));
        }
        if let Ok(mut s) =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
        {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf)
                && buf[..n].starts_with(b"SSH-")
            {
                // Make sure the banner came from *our* sshd.
                if child.try_wait().unwrap().is_none() {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no ssh banner on port {port} within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
