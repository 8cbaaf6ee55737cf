//! Running processes: [`Out`], [`Running`], [`run_cmd`], [`bin`], the
//! `--json` readers ([`parse_json`], [`json_stats`], [`json_outcome`],
//! [`str_list`]), [`is_snapshot_id`], [`panics`].

use super::*;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long [`Running::wait`] lets the pipes of a finished process stay
/// open: generous, so that a daemon on its way out on a loaded machine is
/// not taken for a leaked one (a leaked one holds them for good).
pub const PIPE_GRACE: Duration = Duration::from_secs(60);

/// Default bound for one run of the binary.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);

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
    /// then up to [`PIPE_GRACE`] more for its stdout/stderr to close: a pipe
    /// that stays open means something it spawned (a FUSE daemon) outlived
    /// it, which is reported as a failure.
    pub fn wait(self, timeout: Duration) -> Out {
        self.wait_with_grace(timeout, PIPE_GRACE)
    }

    /// [`Running::wait`] with `grace` instead of [`PIPE_GRACE`] for the pipes
    /// to close.
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

/// Used by the harness self-tests: does `f` panic?
/// (The panic message is still printed; that is expected.)
pub fn panics(f: impl FnOnce() + std::panic::UnwindSafe) -> bool {
    std::panic::catch_unwind(f).is_err()
}
