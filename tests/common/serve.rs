//! [`ServeAccount`]: an OpenSSH account on 127.0.0.1 whose `ForceCommand`
//! is `ciphersync serve --root DIR` (issue 16), for a non-root system user
//! ([`SERVE_USER`]); [`serve_job`] points a job at it ([`ServeJob`]).
//! Append-only accounts are prepared and sealed by `serve --seal`, run
//! here as root the way the server's timer runs it.

use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The account's user: shell /bin/sh (sshd runs a ForceCommand through
/// it; nothing else ever reaches that shell).
pub const SERVE_USER: &str = "ciphersync-srv";

/// A running sshd with the serve account and what a job needs to reach it.
pub struct ServeAccount {
    pub sshd: Sshd,
    /// target.path: the account's root (`serve --root`).
    pub root: PathBuf,
    /// The copy of ciphersync the account runs (the build dir may be closed
    /// to it).
    pub binary: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// The server's side of every connection: the first two words of each
    /// request, one line each, written by the ForceCommand's wrapper
    /// before it execs serve (see [`ServeAccount::requests`]).
    pub request_log: PathBuf,
}

impl ServeAccount {
    /// Starts sshd with the account's `Match User` block; with
    /// `append_only`, `serve --seal` prepares the root first.
    pub fn start(base: &Path, append_only: bool) -> ServeAccount {
        ServeAccount::start_with(base, append_only, "")
    }

    /// [`ServeAccount::start`] with more `serve` options in the
    /// ForceCommand (`serve_args`, shell words, e.g. `--quota 4M`).
    pub fn start_with(base: &Path, append_only: bool, serve_args: &str) -> ServeAccount {
        let (uid, gid) = ensure_system_user(SERVE_USER, "/bin/sh");
        let home = base.join("serve-home");
        fs::create_dir_all(&home).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();
        let root = home.join("backup");
        fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::chown(&root, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let binary = base.join("ciphersync-serve");
        fs::copy(bin(), &binary).expect("copy the ciphersync binary");
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
        // The ForceCommand: a wrapper that notes the request's first two
        // words (the test reads what the server was asked), then serve.
        let request_log = base.join("serve-requests.log");
        fs::write(&request_log, b"").unwrap();
        std::os::unix::fs::chown(&request_log, Some(uid), Some(gid)).unwrap();
        let wrapper = base.join("serve-wrapper.sh");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nset -f\n# shellcheck disable=SC2086\nset -- $SSH_ORIGINAL_COMMAND\n\
                 printf '%s %s\\n' \"${{1:-}}\" \"${{2:-}}\" >>{}\n\
                 exec {} serve --root {} --sftp-server {SFTP_SERVER} {serve_args}\n",
                request_log.display(),
                binary.display(),
                root.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
        let extra = format!(
            "Match User {SERVE_USER}\n  ForceCommand {}\n  \
             AllowTcpForwarding no\n  X11Forwarding no\n  PermitTTY no\n",
            wrapper.display()
        );
        let sshd = Sshd::start_with(
            base,
            &SshdSetup {
                subsystem: SFTP_SERVER,
                extra_config: &extra,
            },
        );
        let account = ServeAccount {
            sshd,
            root,
            binary,
            uid,
            gid,
            request_log,
        };
        if append_only {
            account
                .seal(&[])
                .expect_code(0, "serve --seal (preparing the account)");
        }
        account
    }

    /// The requests the server got since the last call (first two words
    /// each), and forgets them.
    pub fn requests(&self) -> Vec<String> {
        let text = fs::read_to_string(&self.request_log).unwrap_or_default();
        fs::write(&self.request_log, b"").unwrap();
        text.lines().map(String::from).collect()
    }

    /// `serve --seal` as root (the server's timer).
    pub fn seal(&self, extra: &[&str]) -> Out {
        let mut c = Command::new(&self.binary);
        c.args(["serve", "--seal", "--account", SERVE_USER, "--root"])
            .arg(&self.root)
            .args(extra);
        run_cmd(c)
    }

    /// The job's `target` object.
    pub fn target_json(&self, transport: &str) -> Value {
        json!({
            "type": "sftp",
            "host": "127.0.0.1",
            "port": self.sshd.port,
            "user": SERVE_USER,
            "path": self.root,
            "identity_file": self.sshd.client_key,
            "known_hosts_file": self.sshd.known_hosts,
            "transport": transport,
        })
    }

    /// `ssh account@127.0.0.1 CMD` with the account's key.
    pub fn ssh(&self, remote_cmd: &str) -> Out {
        let mut c = Command::new("ssh");
        c.args(self.sshd.ssh_opts())
            .arg("-p")
            .arg(self.sshd.port.to_string())
            .arg(format!("{SERVE_USER}@127.0.0.1"))
            .arg(remote_cmd);
        run_cmd(c)
    }

    /// `sftp -b BATCH` as the account.
    pub fn sftp_batch(&self, batch: &str) -> Out {
        let f = self.sshd.dir.join("batch.sftp");
        fs::write(&f, batch).unwrap();
        let mut c = Command::new("sftp");
        c.args(self.sshd.ssh_opts())
            .arg("-P")
            .arg(self.sshd.port.to_string())
            .arg("-b")
            .arg(&f)
            .arg(format!("{SERVE_USER}@127.0.0.1"));
        run_cmd(c)
    }

    /// `rsync ARGS... SRC account@127.0.0.1:DEST` over ssh.
    pub fn rsync_to(&self, args: &[&str], src: &Path, dest: &str) -> Out {
        let mut c = Command::new("rsync");
        c.args(args)
            .arg("-e")
            .arg(format!(
                "ssh {} -p {}",
                self.sshd.ssh_opts().join(" "),
                self.sshd.port
            ))
            .arg(src)
            .arg(format!("{SERVE_USER}@127.0.0.1:{dest}"));
        run_cmd(c)
    }
}

/// A job whose target is a [`ServeAccount`]. Field order: the server stops
/// before the job's temp dir is removed.
pub struct ServeJob {
    pub account: ServeAccount,
    pub job: Job,
}

impl std::ops::Deref for ServeJob {
    type Target = Job;
    fn deref(&self) -> &Job {
        &self.job
    }
}

/// A job (transport `transport`, `extra` top-level fields) on a fresh
/// serve account.
pub fn serve_job(tag: &str, transport: &str, append_only: bool, extra: Value) -> ServeJob {
    serve_job_with(tag, transport, append_only, extra, "")
}

/// [`serve_job`] on an account whose ForceCommand has `serve_args` too.
pub fn serve_job_with(
    tag: &str,
    transport: &str,
    append_only: bool,
    extra: Value,
    serve_args: &str,
) -> ServeJob {
    let tmp = TempDir::new(tag);
    let root = tmp.path().to_path_buf();
    let source = root.join("src");
    fs::create_dir_all(&source).unwrap();
    let password_file = root.join("password");
    write_mode(
        &password_file,
        format!("{}\n", random_password()).as_bytes(),
        0o600,
    );
    let state_dir = root.join("state");
    let runtime_dir = root.join("run");
    let name: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let account = ServeAccount::start_with(&root, append_only, serve_args);
    let mut config = json!({
        "version": 1,
        "name": name,
        "source": source,
        "password_file": password_file,
        "target": account.target_json(transport),
        "state_dir": state_dir,
        "runtime_dir": runtime_dir,
    });
    if let Value::Object(fields) = extra {
        for (k, v) in fields {
            config[k] = v;
        }
    }
    let config_file = root.join("job.json");
    fs::write(&config_file, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let job = Job {
        sshd: None,
        tmp,
        name,
        root,
        source,
        config_file,
        password_file,
        state_dir,
        runtime_dir,
        target_path: account.root.clone(),
        config,
        settle_ms: std::cell::Cell::new(SETTLE_NEVER_MS),
    };
    ServeJob { account, job }
}
