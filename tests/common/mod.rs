//! Shared harness for the ciphersync end-to-end tests.
//!
//! Everything here is std plus `serde_json` and `sha1` (both dependencies of
//! the crate); no other crates.
//!
//! * [`require_tools`] — skip (or, under `CI=true`, fail) when a tool is missing.
//! * [`TempDir`] — a unique directory under `std::env::temp_dir()`, lazily
//!   unmounting anything left mounted under it and removing it on drop.
//! * [`Sshd`] — a throwaway sshd on 127.0.0.1 with its own host and client key.
//! * [`Job`] / [`JobBuilder`] — a job file (design.md format) plus helpers to
//!   run the real binary against it and to read its status file.
//! * [`assert_no_mounts_under`], [`assert_no_helpers_left`] — leak checks.
//! * [`make_sample_tree`], [`make_big_tree`], [`assert_trees_equal`],
//!   [`tree_digest`] — tree helpers (own xorshift, no rand crate).
//! * [`cipher_size`], [`Job::remote_file_for_len`], [`flip_byte_keep_mtime`] —
//!   find and damage the remote copy of one plaintext file.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use serde_json::{Value, json};

/// Everything the sftp end-to-end tests need.
pub const SFTP_TOOLS: &[&str] = &[
    "gocryptfs",
    "sshfs",
    "rsync",
    "ssh",
    "ssh-keygen",
    "fusermount3",
    "sha1sum",
    "/usr/sbin/sshd",
    "/dev/fuse",
];
/// Everything the `local` target tests need.
pub const LOCAL_TOOLS: &[&str] = &["gocryptfs", "rsync", "fusermount3", "/dev/fuse"];

/// Default bound for one run of the binary.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------
// Tool checks
// ---------------------------------------------------------------------------

/// Returns true when every tool is there. A tool is a program name looked up
/// on PATH, or an absolute path (e.g. `/usr/sbin/sshd`, `/dev/fuse`) that must
/// exist. When something is missing: with `CI=true` this panics naming it;
/// otherwise it prints `SKIP <test>: <reason>` to stderr and returns false so
/// the test can `return` early.
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<String> = tools.iter().filter_map(|t| tool_missing(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let reason = missing.join("; ");
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("{test}: required tool missing (CI=true, not skipping): {reason}");
    }
    eprintln!("SKIP {test}: {reason}");
    record_skip(test, &reason);
    false
}

/// Appends `test<TAB>reason` to `$CIPHERSYNC_TEST_SKIP_LOG` where it is set:
/// libtest reports a test that returned early as `ok`, so scripts/test.sh
/// counts the skips from this file and shows them in its summary.
fn record_skip(test: &str, reason: &str) {
    use std::io::Write;
    let Some(log) = std::env::var_os("CIPHERSYNC_TEST_SKIP_LOG") else {
        return;
    };
    let line = format!("{test}\t{}\n", reason.replace(['\t', '\n'], " "));
    let appended = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = appended {
        panic!("{test}: cannot record the skip in {log:?}: {e}");
    }
}

fn tool_missing(tool: &str) -> Option<String> {
    if tool.starts_with('/') {
        return if Path::new(tool).exists() {
            None
        } else {
            Some(format!("{tool} does not exist"))
        };
    }
    if find_on_path(tool).is_some() {
        None
    } else {
        Some(format!("`{tool}` not found on PATH"))
    }
}

/// First executable file named `name` on PATH.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

// ---------------------------------------------------------------------------
// Temp dirs
// ---------------------------------------------------------------------------

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory `<tmp>/cse2e-<tag>-<pid>-<n>` (short: socket paths under
/// it must stay below 108 bytes). On drop it lazily unmounts (`fusermount3
/// -uz`) whatever is still mounted under it, deepest first, then removes it;
/// set `CIPHERSYNC_E2E_KEEP=1` to keep it for debugging. It is never removed
/// while something is still mounted under it.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let tag: String = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(20)
            .collect();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("cse2e-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let path = fs::canonicalize(&path).unwrap();
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        unmount_all_under(&self.path);
        if !mounts_under(&self.path).is_empty() {
            eprintln!(
                "harness: mounts still under {}, not removing it",
                self.path.display()
            );
            return;
        }
        if std::env::var_os("CIPHERSYNC_E2E_KEEP").is_some() {
            eprintln!("harness: keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Lazily unmounts every mount at or under `path`, deepest first (cleanup
/// only; tests assert with [`assert_no_mounts_under`] before this runs).
pub fn unmount_all_under(path: &Path) {
    let mut left = mounts_under(path);
    left.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    for m in left {
        eprintln!(
            "harness: cleaning up leftover mount {}",
            m.mount_point.display()
        );
        let ok = Command::new("fusermount3")
            .arg("-uz")
            .arg(&m.mount_point)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&m.mount_point)
                .status();
        }
    }
}

// ---------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// Undoes the octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash) the kernel uses in /proc/self/mountinfo.
pub fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// All mounts of this process's mount namespace.
pub fn mounts() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let mp = fields.get(4)?;
            Some(MountEntry {
                mount_point: PathBuf::from(OsStr::from_bytes(&unescape_mountinfo(mp))),
                fs_type: right.first().unwrap_or(&"").to_string(),
                source: String::from_utf8_lossy(&unescape_mountinfo(right.get(1).unwrap_or(&"")))
                    .into_owned(),
            })
        })
        .collect()
}

/// Mounts at or under `path` (component-wise prefix).
pub fn mounts_under(path: &Path) -> Vec<MountEntry> {
    mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(path))
        .collect()
}

/// Panics listing every mount at or under `path`.
pub fn assert_no_mounts_under(path: &Path) {
    let left = mounts_under(path);
    if !left.is_empty() {
        let list: Vec<String> = left
            .iter()
            .map(|m| {
                format!(
                    "  {} ({} from {})",
                    m.mount_point.display(),
                    m.fs_type,
                    m.source
                )
            })
            .collect();
        panic!("mounts left under {}:\n{}", path.display(), list.join("\n"));
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// (pid, ppid, comm, cmdline) of every process we can read.
pub fn processes() -> Vec<(u32, u32, String, String)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[l + 1..r].to_string();
        let rest: Vec<&str> = stat[r + 1..].split_whitespace().collect();
        let ppid = rest.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        let cmdline = fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push((pid, ppid, comm, cmdline));
    }
    out
}

/// (pid, comm) of every descendant of `pid`.
pub fn descendants(pid: u32) -> Vec<(u32, String)> {
    let procs = processes();
    let mut found: Vec<(u32, String)> = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (c, pp, comm, _) in &procs {
            if *pp == p && !found.iter().any(|(f, _)| f == c) {
                found.push((*c, comm.clone()));
                frontier.push(*c);
            }
        }
    }
    found
}

/// Waits (bounded) until no gocryptfs, sshfs, rsync, ssh or ciphersync process
/// mentions `path` on its command line; panics listing them otherwise.
pub fn assert_no_helpers_left(path: &Path) {
    let needle = path.to_string_lossy().into_owned();
    let find = || -> Vec<String> {
        processes()
            .into_iter()
            .filter(|(pid, _, comm, cmd)| {
                *pid != std::process::id()
                    && ["gocryptfs", "sshfs", "rsync", "ssh", "ciphersync"].contains(&comm.as_str())
                    && cmd.contains(&needle)
            })
            .map(|(pid, ppid, comm, cmd)| {
                format!("  {pid} (ppid {ppid}) {comm}: {cmd}\n{}", proc_details(pid))
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = find();
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "helper processes left behind for {}:\n{}",
                path.display(),
                left.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// State, kernel wait channel and open files of a process (diagnostics).
pub fn proc_details(pid: u32) -> String {
    let rd = |f: &str| fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
    let state = rd("status")
        .lines()
        .filter(|l| l.starts_with("State:"))
        .collect::<Vec<_>>()
        .join(" ");
    let fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| fs::read_link(e.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    format!("    {state} wchan={} fds={fds:?}", rd("wchan"))
}

/// Polls `cond` every 50 ms until it is true; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends a signal (`"TERM"`, `"INT"`, ...) with kill(1).
pub fn send_signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

// ---------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------

/// Result of one finished process.
#[derive(Debug, Clone)]
pub struct Out {
    /// Exit code; `128 + signal` when killed by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Panics (showing stdout and stderr) unless the exit code is `code`.
    pub fn expect_code(&self, code: i32, what: &str) -> &Out {
        assert_eq!(
            self.code,
            code,
            "{what}: expected exit {code}, got {}\n{}",
            self.code,
            self.dump()
        );
        self
    }
    /// stdout and stderr together, for "the message mentions X" checks.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
    pub fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

fn exit_code(st: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// A spawned process whose stdout/stderr are being collected.
pub struct Running {
    pub child: Child,
    desc: String,
    /// What has been read so far from stdout (0) and stderr (1).
    bufs: [std::sync::Arc<std::sync::Mutex<Vec<u8>>>; 2],
    /// One message per pipe when it reaches EOF.
    eof_rx: mpsc::Receiver<usize>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let desc = format!("{cmd:?}");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
        let (tx, eof_rx) = mpsc::channel();
        let bufs: [std::sync::Arc<std::sync::Mutex<Vec<u8>>>; 2] = Default::default();
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for (i, mut pipe) in pipes.into_iter().enumerate() {
            let (tx, buf) = (tx.clone(), bufs[i].clone());
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tx.send(i);
            });
        }
        Running {
            child,
            desc,
            bufs,
            eof_rx,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// stdout and stderr read so far.
    pub fn output_so_far(&self) -> (String, String) {
        let get = |i: usize| String::from_utf8_lossy(&self.bufs[i].lock().unwrap()).into_owned();
        (get(0), get(1))
    }

    /// Waits up to `timeout` for the process (SIGKILL and panic after that),
    /// then up to 15 s more for its stdout/stderr to close: a pipe that stays
    /// open means something it spawned (a FUSE daemon) outlived it, which is
    /// reported as a failure.
    pub fn wait(self, timeout: Duration) -> Out {
        self.wait_with_grace(timeout, Duration::from_secs(15))
    }

    /// [`Running::wait`] with `grace` instead of 15 s for the pipes to close.
    pub fn wait_with_grace(mut self, timeout: Duration, grace: Duration) -> Out {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let (o, e) = self.output_so_far();
                panic!(
                    "{} did not finish within {timeout:?}\n--- stdout ---\n{o}\n--- stderr ---\n{e}",
                    self.desc
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let pipe_deadline = Instant::now() + grace;
        for _ in 0..2 {
            let left = pipe_deadline.saturating_duration_since(Instant::now());
            if self.eof_rx.recv_timeout(left).is_err() {
                let (o, e) = self.output_so_far();
                let helpers: Vec<String> = processes()
                    .into_iter()
                    .filter(|p| ["gocryptfs", "sshfs", "rsync", "ssh"].contains(&p.2.as_str()))
                    .map(|p| format!("  {} {}: {}", p.0, p.2, p.3))
                    .collect();
                panic!(
                    "{} exited ({status}) but a process it started still holds its stdout/stderr \
                     {grace:?} later (leaked daemon?)\nhelper processes now:\n{}\n--- stdout ---\n{o}\n--- stderr ---\n{e}",
                    self.desc,
                    helpers.join("\n")
                );
            }
        }
        let (stdout, stderr) = self.output_so_far();
        Out {
            code: exit_code(status),
            stdout,
            stderr,
        }
    }
}

/// Runs `cmd` to completion with [`RUN_TIMEOUT`].
pub fn run_cmd(cmd: Command) -> Out {
    Running::spawn(cmd).wait(RUN_TIMEOUT)
}

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ciphersync")
}

/// `ciphersync ARGS...` without `-c` (e.g. `check-config FILE`).
pub fn run_bin(args: &[&str]) -> Out {
    let mut c = Command::new(bin());
    c.args(args).env_remove("CIPHERSYNC_CONFIG_DIR");
    run_cmd(c)
}

/// Parses `--json` stdout as one JSON object; panics showing the output.
pub fn parse_json(out: &Out) -> Value {
    let v: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("--json stdout is not one JSON object ({e})\n{}", out.dump()));
    assert!(
        v.is_object(),
        "--json stdout is not an object: {v}\n{}",
        out.dump()
    );
    v
}

/// The `stats` of a `--json` stage result: `v.stats`, or `v.stages.<stage>.stats`.
pub fn json_stats<'a>(v: &'a Value, stage: &str) -> &'a Value {
    if v["stats"].is_object() {
        &v["stats"]
    } else if v["stages"][stage]["stats"].is_object() {
        &v["stages"][stage]["stats"]
    } else {
        panic!("no stats object for stage {stage} in --json output: {v}")
    }
}

/// The `outcome` of a `--json` stage result: `v.outcome`, or `v.stages.<stage>.outcome`.
pub fn json_outcome<'a>(v: &'a Value, stage: &str) -> &'a str {
    v["outcome"]
        .as_str()
        .or_else(|| v["stages"][stage]["outcome"].as_str())
        .unwrap_or_else(|| panic!("no outcome for stage {stage} in --json output: {v}"))
}

/// The strings of a JSON array (panics if `v` is not an array of strings).
pub fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a JSON array, got {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("expected strings, got {s}"))
                .to_string()
        })
        .collect()
}

/// Is `s` a snapshot id `YYYYMMDDTHHMMSSZ`?
pub fn is_snapshot_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
}

// ---------------------------------------------------------------------------
// sshd
// ---------------------------------------------------------------------------

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

fn keygen(path: &Path) {
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

impl Sshd {
    pub fn start(base: &Path) -> Sshd {
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
                     Subsystem sftp internal-sftp\nLogLevel ERROR\n",
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
            let mut child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(logf)
                .spawn()
                .expect("spawn /usr/sbin/sshd");
            match wait_ssh_banner(&mut child, port, Duration::from_secs(20)) {
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

fn wait_ssh_banner(child: &mut Child, port: u16, timeout: Duration) -> Result<(), String> {
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
            if let Ok(n) = s.read(&mut buf) {
                if buf[..n].starts_with(b"SSH-") {
                    // Make sure the banner came from *our* sshd.
                    if child.try_wait().unwrap().is_none() {
                        return Ok(());
                    }
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

// ---------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------

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
    /// Put `gocryptfs_config` at `<state_dir>/gocryptfs.reverse.conf`, outside
    /// the source (then the helper must upload `files/gocryptfs.conf`).
    pub fn gocryptfs_config_in_state_dir(mut self) -> Self {
        self.config_in_state_dir = true;
        self
    }

    pub fn build(self) -> Job {
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
        let (sshd, target_path, target) = match self.kind {
            TargetKind::Sftp => {
                let sshd = Sshd::start(&root);
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
            TargetKind::Local => {
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
        Job {
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
        }
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

/// Writes `data` to a new file created with `mode`.
pub fn write_mode(path: &Path, data: &[u8], mode: u32) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .unwrap();
    f.write_all(data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Size of the gocryptfs ciphertext of an `n`-byte file: 18-byte header plus
/// 32 bytes (nonce + tag) per started 4096-byte block; empty stays empty.
pub fn cipher_size(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        18 + n + 32 * n.div_ceil(4096)
    }
}

/// XORs the byte at `offset` with 0xFF, then puts the mtime back; asserts
/// that size and mtime are what they were (so rsync's quick check can't see it).
pub fn flip_byte_keep_mtime(path: &Path, offset: u64) {
    let before = fs::metadata(path).unwrap();
    let mtime = before.modified().unwrap();
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0xFF;
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let after = fs::metadata(path).unwrap();
    assert_eq!(after.len(), before.len(), "size changed by flip");
    assert_eq!(
        after.modified().unwrap(),
        mtime,
        "mtime not restored by flip"
    );
}

/// Mounts `cipher_dir` with plain `gocryptfs -ro` (forward) at `mnt` using the
/// password file, as a user restoring by hand would; unmounted on drop.
pub struct ManualMount {
    pub mnt: PathBuf,
}

impl ManualMount {
    pub fn new(cipher_dir: &Path, password_file: &Path, mnt: &Path) -> ManualMount {
        fs::create_dir_all(mnt).unwrap();
        let log = fs::File::create(mnt.with_extension("log")).unwrap();
        let st = Command::new("gocryptfs")
            .args(["-ro", "-nosyslog", "-q", "-passfile"])
            .arg(password_file)
            .arg(cipher_dir)
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .expect("run gocryptfs");
        assert!(
            st.success(),
            "plain `gocryptfs {} {}` failed ({st}): {}",
            cipher_dir.display(),
            mnt.display(),
            fs::read_to_string(mnt.with_extension("log")).unwrap_or_default()
        );
        ManualMount {
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Drop for ManualMount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .status();
    }
}

// ---------------------------------------------------------------------------
// Trees
// ---------------------------------------------------------------------------

/// xorshift64 — deterministic pseudo-random bytes from a seed.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `len` pseudo-random bytes (seeded) to `path`, creating parents.
pub fn write_random_file(path: &Path, len: usize, seed: u64) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    let mut r = XorShift::new(seed);
    let mut f = fs::File::create(path).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        r.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
}

/// Sample-tree file whose remote copy the damage tests flip a byte in.
pub const VICTIM_CHANGED: &str = "damage target/victim.bin";
pub const VICTIM_CHANGED_LEN: u64 = 12_345;
/// Sample-tree file whose remote copy the damage tests delete.
pub const VICTIM_MISSING: &str = "ünïcödé/missing victim.txt";
pub const VICTIM_MISSING_LEN: u64 = 23_456;

/// The 200-character file name used in the sample tree.
pub fn long_name() -> String {
    format!("{}.bin", "L".repeat(196))
}

/// Fills `root` with the sample tree: names with spaces, unicode and 200
/// characters; nested and empty dirs; file, directory and dangling symlinks;
/// an executable and a 0600 file in a 0700 dir; sizes 0 B .. 3 MB around the
/// 4096-byte gocryptfs block edge. Deterministic (fixed seeds). Every file
/// size is unique so that the two victims' ciphertexts can be found by size.
pub fn make_sample_tree(root: &Path) {
    let files: &[(&str, usize)] = &[
        ("README.txt", 0), // text, below
        ("empty-file", 0),
        ("one-byte", 1),
        ("block-edge.bin", 4096),
        ("block-edge-plus-1.bin", 4097),
        ("dir with spaces/file with spaces.txt", 3000),
        ("ünïcödé/日本語のファイル.txt", 5000),
        ("ünïcödé/emoji 🎉 party.bin", 7000),
        ("nested/a/b/c/deep.bin", 100_000),
        ("nested/big.bin", 3_000_000),
        (VICTIM_CHANGED, VICTIM_CHANGED_LEN as usize),
        (VICTIM_MISSING, VICTIM_MISSING_LEN as usize),
    ];
    for (i, (rel, len)) in files.iter().enumerate() {
        if *rel == "README.txt" {
            continue;
        }
        write_random_file(&root.join(rel), *len, 1000 + i as u64);
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(0o644)).unwrap();
    }
    write_mode(
        &root.join("README.txt"),
        b"ciphersync e2e sample tree\nsecond line\n",
        0o644,
    );
    write_random_file(&root.join("long").join(long_name()), 9000, 77);
    fs::create_dir_all(root.join("bin")).unwrap();
    write_mode(
        &root.join("bin/run.sh"),
        b"#!/bin/sh\necho hello from ciphersync\n",
        0o755,
    );
    fs::create_dir_all(root.join("private")).unwrap();
    write_mode(&root.join("private/secret.txt"), b"top secret\n", 0o600);
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    for d in ["empty", "nested/empty inner", "nested/a/b/c/empty leaf"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    symlink("README.txt", root.join("link-to-readme")).unwrap();
    symlink("../bin/run.sh", root.join("nested/link up")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    symlink("nested/a", root.join("dir-link")).unwrap();
}

/// `files` files of `file_size` bytes each under `root/<subdir>/` (for the
/// large interrupt/lock tests).
pub fn make_big_tree(root: &Path, subdir: &str, files: usize, file_size: usize) {
    for i in 0..files {
        write_random_file(
            &root.join(subdir).join(format!("chunk {i:04}.bin")),
            file_size,
            50_000 + i as u64,
        );
    }
}

/// Every entry under `root` (not `root` itself) as (relative path, lstat),
/// sorted by path. Does not follow symlinks.
pub fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    fn rec(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            // A tree that rsync is writing loses temp files between
            // readdir and lstat (they are renamed): skip what vanished.
            let m = match fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("lstat {}: {e}", p.display()),
            };
            out.push((p.strip_prefix(root).unwrap().to_path_buf(), m.clone()));
            if m.file_type().is_dir() {
                rec(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    rec(root, root, &mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Hex sha1 of a file's bytes.
pub fn sha1_file(path: &Path) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    let mut f = fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..]).unwrap();
        if k == 0 {
            break;
        }
        n += k;
    }
    n
}

const REVERSE_CONF: &str = ".gocryptfs.reverse.conf";

fn describe(root: &Path) -> BTreeMap<PathBuf, fs::Metadata> {
    walk(root)
        .into_iter()
        .filter(|(rel, _)| rel != Path::new(REVERSE_CONF))
        .collect()
}

/// Panics listing every difference between the trees under `a` and `b`:
/// relative paths, entry kinds, file bytes, permission bits (files and dirs
/// below the roots), symlink targets, empty dirs. `.gocryptfs.reverse.conf` at
/// the root is ignored. Timestamps and owners are not compared.
pub fn assert_trees_equal(a: &Path, b: &Path) {
    let (ta, tb) = (describe(a), describe(b));
    let mut diffs = Vec::new();
    let keys: BTreeSet<&PathBuf> = ta.keys().chain(tb.keys()).collect();
    for k in keys {
        let (ma, mb) = match (ta.get(k), tb.get(k)) {
            (Some(x), Some(y)) => (x, y),
            (Some(_), None) => {
                diffs.push(format!("only in {}: {}", a.display(), k.display()));
                continue;
            }
            (None, _) => {
                diffs.push(format!("only in {}: {}", b.display(), k.display()));
                continue;
            }
        };
        let (fa, fb) = (ma.file_type(), mb.file_type());
        let kind = |f: fs::FileType| {
            if f.is_symlink() {
                "symlink"
            } else if f.is_dir() {
                "dir"
            } else if f.is_file() {
                "file"
            } else {
                "other"
            }
        };
        if kind(fa) != kind(fb) {
            diffs.push(format!("{}: {} vs {}", k.display(), kind(fa), kind(fb)));
            continue;
        }
        if fa.is_symlink() {
            let (la, lb) = (
                fs::read_link(a.join(k)).unwrap(),
                fs::read_link(b.join(k)).unwrap(),
            );
            if la != lb {
                diffs.push(format!(
                    "{}: symlink -> {} vs -> {}",
                    k.display(),
                    la.display(),
                    lb.display()
                ));
            }
            continue;
        }
        if ma.mode() & 0o7777 != mb.mode() & 0o7777 {
            diffs.push(format!(
                "{}: mode {:o} vs {:o}",
                k.display(),
                ma.mode() & 0o7777,
                mb.mode() & 0o7777
            ));
        }
        if fa.is_file() && (ma.len() != mb.len() || !same_bytes(&a.join(k), &b.join(k))) {
            diffs.push(format!(
                "{}: contents differ ({} vs {} bytes)",
                k.display(),
                ma.len(),
                mb.len()
            ));
        }
    }
    if !diffs.is_empty() {
        panic!(
            "trees differ: {} vs {}:\n  {}",
            a.display(),
            b.display(),
            diffs.join("\n  ")
        );
    }
}

/// A fingerprint of everything under `root` (for "untouched" checks): per
/// relative path its kind, permission bits, size, mtime (ns) and, for files,
/// the sha1 of the bytes; symlink targets.
pub fn tree_digest(root: &Path) -> BTreeMap<String, String> {
    walk(root)
        .into_iter()
        .map(|(rel, m)| {
            let p = root.join(&rel);
            let ft = m.file_type();
            let d = if ft.is_symlink() {
                format!("link -> {}", fs::read_link(&p).unwrap().display())
            } else if ft.is_dir() {
                format!(
                    "dir {:o} mtime {}.{}",
                    m.mode() & 0o7777,
                    m.mtime(),
                    m.mtime_nsec()
                )
            } else {
                format!(
                    "file {:o} {} bytes mtime {}.{} sha1 {}",
                    m.mode() & 0o7777,
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    sha1_file(&p)
                )
            };
            (rel.to_string_lossy().into_owned(), d)
        })
        .collect()
}

/// Panics listing what differs between two [`tree_digest`]s.
pub fn assert_digests_equal(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    what: &str,
) {
    if before == after {
        return;
    }
    let mut diffs = Vec::new();
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for k in keys {
        match (before.get(k), after.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => diffs.push(format!("{k}: {x:?} -> {y:?}")),
        }
    }
    panic!("{what} changed:\n  {}", diffs.join("\n  "));
}

/// Count of regular files under `root`.
pub fn count_files(root: &Path) -> usize {
    walk(root)
        .iter()
        .filter(|(_, m)| m.file_type().is_file())
        .count()
}

/// Used by the harness self-tests: does `f` panic?
/// (The panic message is still printed; that is expected.)
pub fn panics(f: impl FnOnce() + std::panic::UnwindSafe) -> bool {
    std::panic::catch_unwind(f).is_err()
}

// ---------------------------------------------------------------------------
// Flows shared by several tests
// ---------------------------------------------------------------------------

/// Sorted strings of `v` (a JSON array of strings).
pub fn sorted_list(v: &Value) -> Vec<String> {
    let mut l = str_list(v);
    l.sort();
    l
}

impl Job {
    /// `init` then `backup --json`, both must exit 0 with outcome ok; returns
    /// backup's stats.
    pub fn init_and_backup(&self) -> Value {
        self.ok(&["init"]);
        self.backup_ok()
    }

    /// `backup --json` must exit 0 with outcome ok, a snapshot id, and the same
    /// result in status.json; returns the stats.
    pub fn backup_ok(&self) -> Value {
        let (o, v) = self.run_json(&["backup"]);
        o.expect_code(0, "backup");
        assert_eq!(
            json_outcome(&v, "backup"),
            "ok",
            "backup --json outcome: {v}"
        );
        let stats = json_stats(&v, "backup").clone();
        let snap = stats["snapshot"]
            .as_str()
            .unwrap_or_else(|| panic!("backup stats without snapshot: {stats}"));
        assert!(
            is_snapshot_id(snap),
            "snapshot id {snap:?} is not YYYYMMDDTHHMMSSZ"
        );
        let st = self.stage("backup");
        assert_eq!(st["outcome"], "ok", "status.json backup: {st}");
        assert_eq!(
            st["stats"]["snapshot"], stats["snapshot"],
            "status.json and --json disagree: {st}"
        );
        stats
    }

    /// `verify [--deep] --json` must exit 0, outcome ok, and (for the fast
    /// verify) empty `missing`/`extra`/`changed`; status.json agrees.
    pub fn verify_ok(&self, deep: bool) {
        let args: &[&str] = if deep {
            &["verify", "--deep"]
        } else {
            &["verify"]
        };
        let stage = if deep { "deep_verify" } else { "verify" };
        let (o, v) = self.run_json(args);
        o.expect_code(0, &args.join(" "));
        assert_eq!(
            json_outcome(&v, stage),
            "ok",
            "{} --json: {v}",
            args.join(" ")
        );
        let st = self.stage(stage);
        assert_eq!(st["outcome"], "ok", "status.json {stage}: {st}");
        if !deep {
            let stats = json_stats(&v, stage);
            for k in ["missing", "extra", "changed"] {
                assert_eq!(
                    str_list(&stats[k]),
                    Vec::<String>::new(),
                    "verify ok but {k} not empty: {v}"
                );
            }
        }
    }

    /// `verify --json` must exit 3 with outcome mismatch; status.json must hold
    /// the same lists. Returns the stats.
    pub fn verify_mismatch(&self) -> Value {
        let (o, v) = self.run_json(&["verify"]);
        o.expect_code(3, "verify after damage");
        assert_eq!(json_outcome(&v, "verify"), "mismatch", "verify --json: {v}");
        let stats = json_stats(&v, "verify").clone();
        let st = self.stage("verify");
        assert_eq!(st["outcome"], "mismatch", "status.json verify: {st}");
        for k in ["missing", "extra", "changed"] {
            assert_eq!(
                sorted_list(&st["stats"][k]),
                sorted_list(&stats[k]),
                "status.json vs --json {k}"
            );
        }
        stats
    }

    /// `restore --to <root>/<dir>` into a fresh empty directory must exit 0,
    /// outcome ok, and give a tree equal to the source. Returns the directory.
    pub fn restore_and_compare(&self, dir: &str) -> PathBuf {
        let to = self.root.join(dir);
        fs::create_dir_all(&to).unwrap();
        let (o, v) = self.run_json(&["restore", "--to", to.to_str().unwrap()]);
        o.expect_code(0, "restore");
        assert_eq!(json_outcome(&v, "restore"), "ok", "restore --json: {v}");
        assert_eq!(self.stage("restore")["outcome"], "ok");
        assert_trees_equal(&self.source, &to);
        to
    }

    /// Plain `gocryptfs <target>/files DIR` (what a user without ciphersync
    /// does) must mount and show a tree equal to the source.
    pub fn manual_restore_matches_source(&self) {
        let m = ManualMount::new(
            &self.files_dir(),
            &self.password_file,
            &self.root.join("manual"),
        );
        assert_trees_equal(&self.source, &m.mnt);
    }
}

/// Asserts verify's three lists of plaintext paths: `missing`, `extra`,
/// `changed`, each exactly as given.
pub fn assert_verify_lists(stats: &Value, missing: &[&str], extra: &[&str], changed: &[&str]) {
    for (list, expected) in [("missing", missing), ("extra", extra), ("changed", changed)] {
        assert_eq!(
            str_list(&stats[list]),
            expected.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "verify {list}: {stats}"
        );
    }
}
