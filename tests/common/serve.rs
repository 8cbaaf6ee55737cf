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

/// The chroot the server module declares, on Debian: root's dirs, the
/// host's /usr read-only with the merged-/usr links (the module binds
/// /nix/store), /dev/null, etc/ named by `serve --chroot` as the module's
/// ciphersync-server-chroots.service does, and the test's tools at /srv.
/// Returns the bind mounts sshd makes for itself.
fn chroot_layout(chroot: &Path, tools: &Path, binary: &Path) -> Vec<BindMount> {
    for dir in ["dev", "etc", "usr", "srv"] {
        make_dir(&chroot.join(dir), 0o755, None);
    }
    fs::write(chroot.join("dev/null"), b"").unwrap();
    for link in ["bin", "lib", "lib64", "sbin"] {
        if Path::new("/").join(link).exists() {
            std::os::unix::fs::symlink(format!("usr/{link}"), chroot.join(link)).unwrap();
        }
    }
    let mut c = Command::new(binary);
    c.args(["serve", "--chroot"])
        .arg(chroot)
        .args(["--account", SERVE_USER]);
    run_cmd(c).expect_code(0, "serve --chroot (naming the account in its chroot)");
    let bind = |from: &Path, to: &str, read_only: bool| BindMount {
        from: from.to_path_buf(),
        to: chroot.join(to),
        read_only,
    };
    vec![
        bind(Path::new("/usr"), "usr", true),
        bind(Path::new("/dev/null"), "dev/null", false),
        bind(tools, "srv", false),
    ]
}

/// The account's user: shell /bin/sh (sshd runs a ForceCommand through
/// it; nothing else ever reaches that shell).
pub const SERVE_USER: &str = "ciphersync-srv";

/// A running sshd with the serve account and what a job needs to reach it.
pub struct ServeAccount {
    pub sshd: Sshd,
    /// The account's root (`serve --root`) on the host.
    pub root: PathBuf,
    /// target.path: the root as the account sees it (`/data` in a chroot).
    pub remote_root: String,
    /// The account's chroot on the host, when it has one.
    pub chroot: Option<PathBuf>,
    /// The copy of ciphersync the account runs (the build dir may be closed
    /// to it).
    pub binary: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// The server's side of every connection: the first two words of each
    /// request, one line each, written by the ForceCommand's wrapper
    /// before it execs serve (see [`ServeAccount::requests`]).
    pub request_log: PathBuf,
    /// Removes the chroot (after sshd, declared before it, has stopped).
    _chroot_guard: Option<RemoveOnDrop>,
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
        ServeAccount::start_setup(base, append_only, serve_args, false)
    }

    /// An account locked into a chroot as the server module declares it
    /// (`ChrootDirectory`): the chroot below /run, the account's dir
    /// `/data` in it, the host's /usr (read-only) and /dev/null bound in
    /// for sshd alone, etc/ written by `serve --chroot`.
    pub fn start_chrooted(base: &Path, append_only: bool) -> ServeAccount {
        ServeAccount::start_setup(base, append_only, "", true)
    }

    fn start_setup(
        base: &Path,
        append_only: bool,
        serve_args: &str,
        chrooted: bool,
    ) -> ServeAccount {
        let (uid, gid) = ensure_system_user(SERVE_USER, "/bin/sh");
        // The tools: a copy of ciphersync (the build dir may be closed to
        // the account), the ForceCommand's wrapper and its request log,
        // in one dir a chroot sees as /srv.
        let tools = base.join("serve-bin");
        make_dir(&tools, 0o755, None);
        let binary = tools.join("ciphersync-serve");
        fs::copy(bin(), &binary).expect("copy the ciphersync binary");
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
        let request_log = tools.join("serve-requests.log");
        fs::write(&request_log, b"").unwrap();
        std::os::unix::fs::chown(&request_log, Some(uid), Some(gid)).unwrap();
        let chroot = chrooted.then(|| chroot_dir("serve-chroot"));
        let root = match &chroot {
            Some((dir, _)) => dir.join("data"),
            None => {
                let home = base.join("serve-home");
                make_dir(&home, 0o755, None);
                home.join("backup")
            }
        };
        make_dir(&root, 0o755, Some((uid, gid)));
        let mounts = match &chroot {
            Some((dir, _)) => chroot_layout(dir, &tools, &binary),
            None => Vec::new(),
        };
        // Paths as the account's sshd session sees them: in the chroot the
        // tools are at /srv and the root is /data.
        let seen = |host: &Path| -> String {
            match chrooted {
                true => format!("/srv/{}", host.file_name().unwrap().to_string_lossy()),
                false => host.display().to_string(),
            }
        };
        let remote_root = match chrooted {
            true => "/data".to_string(),
            false => root.display().to_string(),
        };
        // The ForceCommand: a wrapper that notes the request's first two
        // words (the test reads what the server was asked), then serve.
        let wrapper = tools.join("serve-wrapper.sh");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nset -f\n# shellcheck disable=SC2086\nset -- $SSH_ORIGINAL_COMMAND\n\
                 printf '%s %s\\n' \"${{1:-}}\" \"${{2:-}}\" >>{}\n\
                 exec {} serve --root {remote_root} --sftp-server {SFTP_SERVER} {serve_args}\n",
                seen(&request_log),
                seen(&binary),
            ),
        )
        .unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
        let chroot_line = chroot
            .as_ref()
            .map(|(dir, _)| format!("  ChrootDirectory {}\n", dir.display()))
            .unwrap_or_default();
        let extra = format!(
            "Match User {SERVE_USER}\n{chroot_line}  ForceCommand {}\n  \
             AllowTcpForwarding no\n  X11Forwarding no\n  PermitTTY no\n",
            seen(&wrapper)
        );
        let (chroot, chroot_guard) = chroot.unzip();
        let sshd = Sshd::start_with(
            base,
            &SshdSetup {
                subsystem: SFTP_SERVER,
                extra_config: &extra,
                bind_mounts: &mounts,
            },
        );
        let account = ServeAccount {
            sshd,
            root,
            remote_root,
            chroot,
            binary,
            uid,
            gid,
            request_log,
            _chroot_guard: chroot_guard,
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
            "path": self.remote_root,
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
    serve_job_on(tag, transport, extra, |base| {
        ServeAccount::start_with(base, append_only, serve_args)
    })
}

/// [`serve_job`] on an account locked into a chroot
/// ([`ServeAccount::start_chrooted`]).
pub fn serve_job_chrooted(tag: &str, transport: &str, append_only: bool) -> ServeJob {
    serve_job_on(tag, transport, json!({}), |base| {
        ServeAccount::start_chrooted(base, append_only)
    })
}

fn serve_job_on(
    tag: &str,
    transport: &str,
    extra: Value,
    start: impl FnOnce(&Path) -> ServeAccount,
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
    let account = start(&root);
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
