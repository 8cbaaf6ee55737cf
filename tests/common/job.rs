//! [`Job`] / [`JobBuilder`]: a job file (README "Job file" format) plus helpers to
//! run the real binary against it ([`Job::trust_stamps`] included) and to
//! read its status file.

use super::*;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

enum TargetKind {
    Sftp,
    Local,
}

/// Builds a [`Job`]: `Job::sftp("tag")` or `Job::local("tag")`, then options,
/// then `.build()`.
pub struct JobBuilder {
    tag: String,
    kind: TargetKind,
    transport: Option<String>,
    remote_checksums: Option<String>,
    extra: serde_json::Map<String, Value>,
    config_in_state_dir: bool,
    sshd_config: String,
}

impl JobBuilder {
    /// `target.transport` ("sshfs" | "rsync"); omitted (= default) unless set.
    pub fn transport(mut self, t: &str) -> Self {
        self.transport = Some(t.into());
        self
    }
    /// `target.remote_checksums` ("ssh" | "mount"); omitted unless set.
    pub fn remote_checksums(mut self, m: &str) -> Self {
        self.remote_checksums = Some(m.into());
        self
    }
    /// Any other field, e.g. `.set("filenames", json!("plaintext"))`; a
    /// `target.` prefix sets a field of the target.
    pub fn set(mut self, key: &str, v: Value) -> Self {
        self.extra.insert(key.into(), v);
        self
    }
    /// Lines appended to the job's own sshd's config (`Job::sftp` without
    /// `build_on`), e.g. `MaxSessions 3`.
    pub fn sshd_config(mut self, lines: &str) -> Self {
        self.sshd_config.push_str(lines);
        self
    }
    /// Put `gocryptfs_config` at `<state_dir>/gocryptfs.reverse.conf`, outside
    /// the source (then the helper must upload `files/gocryptfs.conf`).
    pub fn gocryptfs_config_in_state_dir(mut self) -> Self {
        self.config_in_state_dir = true;
        self
    }

    pub fn build(self) -> Job {
        self.build_with(None).0
    }

    /// Like [`JobBuilder::build`] (an sftp job), the target a fresh server
    /// of `kind` ([`Server::start`] in the job's temp dir).
    pub fn build_on(self, kind: ServerKind) -> ServerJob {
        assert!(
            matches!(self.kind, TargetKind::Sftp),
            "build_on needs an sftp job (Job::sftp)"
        );
        let (job, server) = self.build_with(Some(kind));
        ServerJob {
            server: server.expect("build_with started the server"),
            job,
        }
    }

    fn build_with(self, server_kind: Option<ServerKind>) -> (Job, Option<Server>) {
        let tmp = TempDir::new(&self.tag);
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
        let name: String = self
            .tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let mut server = None;
        let (sshd, target_path, target) = match (&self.kind, server_kind) {
            (TargetKind::Sftp, Some(kind)) => {
                let srv = Server::start(kind, &root);
                let path = srv.local_dir.clone();
                let mut t = srv.target_json();
                if let Some(tr) = &self.transport {
                    t["transport"] = json!(tr);
                }
                if let Some(rc) = &self.remote_checksums {
                    t["remote_checksums"] = json!(rc);
                }
                server = Some(srv);
                (None, path, t)
            }
            (TargetKind::Sftp, None) => {
                let sshd = Sshd::start_with(
                    &root,
                    &SshdSetup {
                        extra_config: &self.sshd_config,
                        ..SshdSetup::default()
                    },
                );
                let path = sshd.remote_dir().to_path_buf();
                let mut t = json!({
                    "type": "sftp",
                    "host": "127.0.0.1",
                    "port": sshd.port,
                    "user": "root",
                    "path": path,
                    "identity_file": sshd.client_key,
                    "known_hosts_file": sshd.known_hosts,
                });
                if let Some(tr) = &self.transport {
                    t["transport"] = json!(tr);
                }
                if let Some(rc) = &self.remote_checksums {
                    t["remote_checksums"] = json!(rc);
                }
                (Some(sshd), path, t)
            }
            (TargetKind::Local, _) => {
                let path = root.join("usb");
                fs::create_dir_all(&path).unwrap();
                let t = json!({ "type": "local", "path": path });
                (None, path, t)
            }
        };
        let mut config = json!({
            "version": 1,
            "name": name,
            "source": source,
            "password_file": password_file,
            "target": target,
            "state_dir": state_dir,
            "runtime_dir": runtime_dir,
        });
        if self.config_in_state_dir {
            config["gocryptfs_config"] = json!(state_dir.join("gocryptfs.reverse.conf"));
        }
        for (k, v) in self.extra {
            match k.strip_prefix("target.") {
                Some(field) => config["target"][field] = v,
                None => config[k] = v,
            }
        }
        let config_file = root.join("job.json");
        fs::write(&config_file, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        let job = Job {
            sshd,
            tmp,
            name,
            root,
            source,
            config_file,
            password_file,
            state_dir,
            runtime_dir,
            target_path,
            config,
            settle_ms: std::cell::Cell::new(SETTLE_NEVER_MS),
        };
        (job, server)
    }
}

/// One job with its own temp dir (and sshd for sftp targets).
/// Layout: `<root>/src` source, `<root>/password`, `<root>/state`,
/// `<root>/run`, `<root>/job.json`, target path `<root>/remote` (sftp) or
/// `<root>/usb` (local). Field order matters: sshd is dropped before the temp
/// dir (which unmounts leftovers and removes everything).
pub struct Job {
    pub sshd: Option<Sshd>,
    pub tmp: TempDir,
    pub name: String,
    pub root: PathBuf,
    pub source: PathBuf,
    pub config_file: PathBuf,
    pub password_file: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    /// target.path: the remote root as a local path.
    pub target_path: PathBuf,
    /// The job file as written.
    pub config: Value,
    /// `CIPHERSYNC_SETTLE_MS` for the runs of this job (see `trust_stamps`).
    pub settle_ms: std::cell::Cell<u64>,
}

/// The settle window the harness sets by default: an hour, so that nothing
/// a test wrote is old enough to trust, however slow the machine is.
pub const SETTLE_NEVER_MS: u64 = 3_600_000;

impl Job {
    pub fn sftp(tag: &str) -> JobBuilder {
        JobBuilder {
            tag: tag.into(),
            kind: TargetKind::Sftp,
            transport: None,
            remote_checksums: None,
            extra: Default::default(),
            config_in_state_dir: false,
            sshd_config: String::new(),
        }
    }
    pub fn local(tag: &str) -> JobBuilder {
        JobBuilder {
            kind: TargetKind::Local,
            ..Job::sftp(tag)
        }
    }

    /// `ciphersync -c <job file> ARGS...` as a Command (`-v` added when
    /// `CIPHERSYNC_E2E_VERBOSE` is set).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("-c").arg(&self.config_file);
        // Debugging aid: CIPHERSYNC_E2E_VERBOSE=1 adds -v (every spawn logged
        // to stderr, which failing assertions print).
        if std::env::var_os("CIPHERSYNC_E2E_VERBOSE").is_some() && !args.contains(&"-v") {
            c.arg("-v");
        }
        c.args(args).env_remove("CIPHERSYNC_CONFIG_DIR");
        // A cut link is noticed after 3 s x 3 instead of the default 30 s,
        // so the fault scenarios stay short (everything here is loopback or
        // a veth pair; an answered keepalive takes microseconds).
        c.env("CIPHERSYNC_SSH_ALIVE", "3,3");
        // Whether stamps are old enough to trust is the test's choice, not
        // the machine's speed (see `trust_stamps`).
        c.env("CIPHERSYNC_SETTLE_MS", self.settle_ms.get().to_string());
        c
    }
    /// From now on, whether the runs of this job trust file stamps written
    /// before they start (`true`: settle window 0, as if the tree had
    /// rested; `false`, the default: an hour, as if every change had just
    /// been made). Replaces sleeping past the real 2 s window, which made
    /// the outcome depend on how fast the machine ran the next stage.
    pub fn trust_stamps(&self, trust: bool) {
        self.settle_ms.set(if trust { 0 } else { SETTLE_NEVER_MS });
    }
    /// Runs `ciphersync -c <job file> ARGS...` to completion.
    pub fn run(&self, args: &[&str]) -> Out {
        run_cmd(self.command(args))
    }
    /// Runs and panics unless it exits 0.
    pub fn ok(&self, args: &[&str]) -> Out {
        let o = self.run(args);
        o.expect_code(0, &format!("ciphersync {}", args.join(" ")));
        o
    }
    /// Runs with `--json` appended; returns the output and the parsed object.
    pub fn run_json(&self, args: &[&str]) -> (Out, Value) {
        let mut a = args.to_vec();
        a.push("--json");
        let o = self.run(&a);
        let v = parse_json(&o);
        (o, v)
    }
    /// Starts `ciphersync -c <job file> ARGS...` without waiting.
    pub fn spawn(&self, args: &[&str]) -> Running {
        Running::spawn(self.command(args))
    }

    /// `<state_dir>/status.json`, parsed.
    pub fn status(&self) -> Value {
        let p = self.state_dir.join("status.json");
        let t = fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        serde_json::from_str(&t)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}):\n{t}", p.display()))
    }
    /// `status.json` → `stages.<stage>` (panics if absent).
    pub fn stage(&self, stage: &str) -> Value {
        let s = self.status();
        let v = s["stages"][stage].clone();
        assert!(v.is_object(), "status.json has no stages.{stage}: {s}");
        v
    }

    /// `<target>/files`.
    pub fn files_dir(&self) -> PathBuf {
        self.target_path.join("files")
    }

    /// The one remote file under `files/` whose size is the ciphertext size of
    /// a `plain_len`-byte plaintext file (sample-tree victims have unique sizes).
    pub fn remote_file_for_len(&self, plain_len: u64) -> PathBuf {
        let want = cipher_size(plain_len);
        let hits: Vec<PathBuf> = walk(&self.files_dir())
            .into_iter()
            .filter(|(_, m)| m.file_type().is_file() && m.len() == want)
            .map(|(rel, _)| self.files_dir().join(rel))
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "expected one remote file of {want} bytes (plaintext {plain_len}), found {hits:?}"
        );
        hits.into_iter().next().unwrap()
    }

    /// Final checks every e2e test ends with: no mount under the job's temp
    /// dir (runtime_dir included) and no helper process left.
    pub fn assert_clean(&self) {
        assert_no_mounts_under(&self.runtime_dir);
        assert_no_mounts_under(&self.root);
        assert_no_helpers_left(&self.root);
    }
}

/// A fresh random password (hex), seeded from time, pid and a counter.
pub fn random_password() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut r = XorShift::new(
        t ^ ((std::process::id() as u64) << 32) ^ COUNTER.fetch_add(1, Ordering::SeqCst),
    );
    (0..4).map(|_| format!("{:016x}", r.next_u64())).collect()
}
