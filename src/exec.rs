//! The only place that starts processes.
//!
//! Commands are argv vectors, never shell strings. Every spawn is logged at
//! debug level. stdout and stderr go to anonymous in-memory files (memfd),
//! never to pipes: gocryptfs and sshfs fork daemons that keep the descriptors
//! they inherit, and a pipe held open by a daemon would make us wait forever.
//! While a child runs we poll it, so a SIGINT/SIGTERM to the helper stops the
//! child first and then unwinds.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, Kind, Result};
use crate::{interrupt, log};

/// How much of a failing tool's stderr goes into the one-line error.
const STDERR_TAIL_BYTES: usize = 600;
/// How long a child gets to exit after SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(10);

pub struct Cmd {
    tool: &'static str,
    args: Vec<OsString>,
    stdin: Option<File>,
    stdout: Option<File>,
    cwd: Option<PathBuf>,
    timeout: Option<Duration>,
    /// Cleanup commands (unmounts) must run to their end even after a
    /// signal, or the very mounts the signal should undo would stay.
    cleanup: bool,
    /// Run in a process group of its own, killed whole when the command
    /// ends (see `whole_group`).
    whole_group: bool,
}

/// A finished command: its exit status, its stdout (a file to stream from,
/// since checksum lists can be large), and the tail of its stderr.
#[derive(Debug)]
pub struct Output {
    pub tool: &'static str,
    pub status: ExitStatus,
    stdout: File,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The stdout file, rewound, for streaming reads.
    pub fn stdout_reader(&mut self) -> Result<&mut File> {
        self.stdout
            .seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("rewinding tool output", e))?;
        Ok(&mut self.stdout)
    }

    /// The stdout file itself, rewound.
    pub fn into_stdout(mut self) -> Result<File> {
        self.stdout_reader()?;
        Ok(self.stdout)
    }

    /// The whole output as text, at most `limits::MAX_TEXT` bytes: it may
    /// be a server's answer.
    pub fn stdout_string(&mut self) -> Result<String> {
        let what = format!("the output of {}", self.tool);
        crate::limits::read_text(self.stdout_reader()?, crate::limits::MAX_TEXT, &what)
    }

    #[cfg(test)]
    /// `Err` naming the tool, its exit status and its stderr tail, unless it
    /// exited 0.
    pub fn check(self) -> Result<Output> {
        if self.success() {
            Ok(self)
        } else {
            Err(self.failure(None))
        }
    }

    /// The standard one-line failure; `what` says what the tool was doing.
    pub fn failure(&self, what: Option<&str>) -> Error {
        let status = match self.status.code() {
            Some(code) => format!("exit status {code}"),
            None => format!("killed by {}", describe_signal(&self.status)),
        };
        let doing = what.map(|w| format!(" ({w})")).unwrap_or_default();
        let tail = if self.stderr.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", self.stderr.trim())
        };
        Error::new(
            Kind::Tool,
            format!("{} failed{doing} with {status}{tail}", self.tool),
        )
    }
}

impl Cmd {
    pub fn new(tool: &'static str) -> Cmd {
        Cmd {
            tool,
            args: Vec::new(),
            stdin: None,
            stdout: None,
            cwd: None,
            timeout: None,
            cleanup: false,
            whole_group: false,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn stdin(mut self, file: File) -> Cmd {
        self.stdin = Some(file);
        self
    }

    /// Sends stdout to this file (see `scratch_file`) instead of memory:
    /// for output that grows with the number of files.
    pub fn stdout_to(mut self, file: File) -> Cmd {
        self.stdout = Some(file);
        self
    }

    #[cfg(test)]
    pub fn cwd(mut self, dir: &std::path::Path) -> Cmd {
        self.cwd = Some(dir.to_owned());
        self
    }

    /// Marks a cleanup command: a pending SIGINT/SIGTERM does not stop it
    /// (a timeout still bounds it).
    pub fn cleanup(mut self) -> Cmd {
        self.cleanup = true;
        self
    }

    /// rsync forks helpers (a local transfer's receiver writes into the
    /// sshfs mount); when rsync ends on an error such a helper may still be
    /// running, and would write into the mount point once the mount is
    /// gone. The whole group is killed as soon as the command ends.
    pub fn whole_group(mut self) -> Cmd {
        self.whole_group = true;
        self
    }

    pub fn timeout(mut self, limit: Duration) -> Cmd {
        self.timeout = Some(limit);
        self
    }

    /// The argv as one printable line, for logs.
    pub fn display(&self) -> String {
        let mut line = self.tool.to_string();
        for arg in &self.args {
            line.push(' ');
            line.push_str(&shell_quote(&arg.to_string_lossy()));
        }
        line
    }

    /// Runs the command to its end; a non-zero exit is not an error here
    /// (callers decide, e.g. rsync's 24 is fine): use `Output::check`.
    pub fn run(mut self) -> Result<Output> {
        log::debug(|| format!("run: {}", self.display()));
        let (mut command, stdout, stderr) = self.command()?;
        if let Some(dir) = &self.cwd {
            command.current_dir(dir);
        }
        if self.whole_group {
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        let child = command.spawn().map_err(|e| spawn_error(self.tool, e))?;
        let group = Pid::from_raw(-(child.id() as i32));
        let status = wait(child, self.tool, self.timeout, !self.cleanup);
        if self.whole_group {
            // Usually empty by now (ESRCH); a leftover dies before it can
            // write again, even when it sits in a FUSE call.
            let _ = kill(group, Signal::SIGKILL);
        }
        let status = status?;
        let stderr = tail_of(stderr)?;
        log::debug(|| format!("{} ended with {status}", self.tool));
        Ok(Output {
            tool: self.tool,
            status,
            stdout,
            stderr,
        })
    }
}

/// A long-lived child: a FUSE daemon run in the foreground, so that the
/// mount's daemon is our child and not an orphan. A FUSE daemon lives as
/// long as the kernel's mount, not as long as our unmount call: a lazy
/// unmount of a busy mount, or a copy of the mount in another mount
/// namespace, keeps it serving after `fusermount3 -u` returned. As our
/// child it is waited for, and stopped, when its mount guard goes.
pub struct Daemon {
    tool: &'static str,
    child: Child,
    stdout: File,
    stderr: File,
}

impl Cmd {
    /// The process to start, with its output going to two anonymous files
    /// (or the file given for stdout) and its input from the file given,
    /// else /dev/null (gocryptfs -masterkey=stdin reads the key from it).
    fn command(&mut self) -> Result<(Command, File, File)> {
        let stdout = match self.stdout.take() {
            Some(file) => file,
            None => anonymous_file(self.tool, "stdout")?,
        };
        let stderr = anonymous_file(self.tool, "stderr")?;
        let mut command = Command::new(self.tool);
        command
            .args(&self.args)
            // Fixed locale: we parse tool output (rsync --stats, sha1sum).
            .env("LC_ALL", "C")
            .stdout(Stdio::from(clone(&stdout)?))
            .stderr(Stdio::from(clone(&stderr)?))
            .stdin(match self.stdin.take() {
                Some(file) => Stdio::from(file),
                None => Stdio::null(),
            });
        Ok((command, stdout, stderr))
    }

    /// Starts the command without waiting for it, in a process group of
    /// its own: a terminal's Ctrl-C then reaches only the helper, which
    /// unmounts in order instead of the daemon vanishing under rsync.
    pub fn spawn_daemon(mut self) -> Result<Daemon> {
        log::debug(|| format!("run in the background: {}", self.display()));
        let (mut command, stdout, stderr) = self.command()?;
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().map_err(|e| spawn_error(self.tool, e))?;
        Ok(Daemon {
            tool: self.tool,
            child,
            stdout,
            stderr,
        })
    }
}

/// A child we talk with over pipes while it runs: an SFTP session
/// (`ssh -s … sftp`, target/sftp.rs). Only for a tool that forks no daemon
/// (see the top of this file): ssh here is a client of the stage's master,
/// or a plain client, never a master itself. Dropping it closes its input
/// and stops it if it does not end by itself.
pub struct Conversation {
    tool: &'static str,
    child: Child,
    input: Option<std::process::ChildStdin>,
    output: std::process::ChildStdout,
    stderr: File,
}

impl Cmd {
    /// Starts the command with its stdin and stdout as pipes to us.
    pub fn converse(self) -> Result<Conversation> {
        log::debug(|| format!("run, talking over pipes: {}", self.display()));
        let stderr = anonymous_file(self.tool, "stderr")?;
        let mut command = Command::new(self.tool);
        command
            .args(&self.args)
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(clone(&stderr)?));
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(|e| spawn_error(self.tool, e))?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            stop(&mut child, self.tool);
            return Err(Error::new(
                Kind::Tool,
                format!("{} started without pipes", self.tool),
            ));
        };
        Ok(Conversation {
            tool: self.tool,
            child,
            input: Some(input),
            output,
            stderr,
        })
    }
}

impl Conversation {
    /// Ends the child's input now (it ends by itself then), so that several
    /// can end at once before each is waited for on drop.
    pub fn close_input(&mut self) {
        drop(self.input.take());
    }

    /// What we write to the child.
    pub fn input(&mut self) -> &mut std::process::ChildStdin {
        self.input.as_mut().expect("the input is open until drop")
    }

    /// Both pipes, to wait on them together: (its stdin, its stdout).
    pub fn pipe_fds(&self) -> (std::os::fd::BorrowedFd<'_>, std::os::fd::BorrowedFd<'_>) {
        use std::os::fd::AsFd;
        let input = self.input.as_ref().expect("the input is open until drop");
        (input.as_fd(), self.output.as_fd())
    }

    /// What the child writes to us.
    pub fn output(&mut self) -> &mut std::process::ChildStdout {
        &mut self.output
    }

    /// The end of what the child wrote to stderr so far (for an error).
    pub fn stderr_tail(&self) -> String {
        clone(&self.stderr).and_then(tail_of).unwrap_or_default()
    }

    /// Whether the child has ended (an ssh that lost its connection).
    pub fn ended(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        // End of input: the SFTP server ends, then ssh.
        drop(self.input.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        stop(&mut self.child, self.tool);
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's output if it has ended (e.g. a wrong password before it
    /// mounted anything); `None` while it runs.
    pub fn ended(&mut self) -> Result<Option<Output>> {
        let status = self
            .child
            .try_wait()
            .map_err(|e| Error::io(format!("waiting for {}", self.tool), e))?;
        let Some(status) = status else {
            return Ok(None);
        };
        Ok(Some(Output {
            tool: self.tool,
            status,
            stdout: clone(&self.stdout)?,
            stderr: tail_of(clone(&self.stderr)?)?,
        }))
    }

    /// Waits up to `grace` for the daemon to exit by itself (it does once
    /// its mount is gone), then stops it: SIGTERM, and SIGKILL after
    /// `TERM_GRACE`. Returns its output if it had exited by itself.
    pub fn finish(mut self, grace: Duration) -> Option<Output> {
        let deadline = Instant::now() + grace;
        let mut pause = Duration::from_millis(1);
        while Instant::now() < deadline {
            if let Ok(Some(output)) = self.ended() {
                return Some(output);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        stop(&mut self.child, self.tool);
        None
    }
}

/// A nameless file on disk in `dir` (created, then unlinked at once: a
/// killed run leaves nothing behind), for large tool output and lists.
pub fn scratch_file(dir: &std::path::Path, name: &str) -> Result<File> {
    // Unique within the process too: rsync workers each make one at once.
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".{name}.{}.{serial}.scratch", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    std::fs::remove_file(&path)
        .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    Ok(file)
}

fn anonymous_file(tool: &str, which: &str) -> Result<File> {
    memfd_create(
        format!("ciphersync-{tool}-{which}").as_str(),
        MFdFlags::MFD_CLOEXEC,
    )
    .map(File::from)
    .map_err(|e| {
        Error::new(
            Kind::Io,
            format!("cannot create a buffer for {tool} {which}: {e}"),
        )
    })
}

fn clone(file: &File) -> Result<File> {
    file.try_clone()
        .map_err(|e| Error::io("duplicating a descriptor", e))
}

fn tail_of(mut file: File) -> Result<String> {
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::io("reading tool stderr", e))?;
    let start = len.saturating_sub(STDERR_TAIL_BYTES as u64);
    file.seek(SeekFrom::Start(start))
        .map_err(|e| Error::io("reading tool stderr", e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io("reading tool stderr", e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Polls the child so that a signal to the helper or a timeout stops it:
/// SIGTERM first (rsync then removes its temp file), SIGKILL after a grace.
fn wait(
    mut child: Child,
    tool: &str,
    timeout: Option<Duration>,
    interruptible: bool,
) -> Result<ExitStatus> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Error::io(format!("waiting for {tool}"), e))?
        {
            return Ok(status);
        }
        if interruptible && interrupt::requested() {
            stop(&mut child, tool);
            return Err(Error::interrupted());
        }
        if timeout.is_some_and(|limit| started.elapsed() > limit) {
            stop(&mut child, tool);
            return Err(Error::new(
                Kind::Tool,
                format!(
                    "{tool} did not finish within {} s and was stopped",
                    timeout.unwrap().as_secs()
                ),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn stop(child: &mut Child, tool: &str) {
    log::debug(|| format!("stopping {tool} (pid {})", child.id()));
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn spawn_error(tool: &str, err: std::io::Error) -> Error {
    if err.kind() == std::io::ErrorKind::NotFound {
        Error::new(
            Kind::Tool,
            format!(
                "{tool} is not installed or not on PATH (Debian package: {})",
                package_of(tool)
            ),
        )
    } else {
        Error::new(Kind::Tool, format!("cannot start {tool}: {err}"))
    }
}

/// The Debian package that provides a tool, for the "not installed" message.
pub fn package_of(tool: &str) -> &'static str {
    match tool {
        "gocryptfs" | "gocryptfs-xray" => "gocryptfs",
        "sshfs" => "sshfs",
        "rsync" => "rsync",
        "ssh" => "openssh-client",
        "fusermount3" => "fuse3",
        "fuse-overlayfs" => "fuse-overlayfs",
        _ => "coreutils",
    }
}

fn describe_signal(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal().and_then(|s| Signal::try_from(s).ok()) {
        Some(signal) => signal.as_str().to_string(),
        None => "a signal".to_string(),
    }
}

/// POSIX shell quoting, for the few places where a remote shell parses a
/// command line (ssh's remote command, rsync's `-e`), and for logs.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_a_shell() {
        assert_eq!(shell_quote("plain/path"), "plain/path");
        assert_eq!(shell_quote("it's here"), r"'it'\''s here'");
        assert_eq!(shell_quote(""), "''");
        // A shell reads the quoted word back as the original.
        let nasty = "a b'c\"d$(x)`y`\\";
        let mut out = Cmd::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(nasty)))
            .run()
            .unwrap();
        assert!(out.success());
        assert_eq!(out.stdout_string().unwrap(), nasty);
    }

    #[test]
    fn failure_names_tool_status_and_stderr() {
        let out = Cmd::new("sh")
            .args(["-c", "echo boom >&2; exit 7"])
            .run()
            .unwrap();
        let err = out.check().unwrap_err();
        assert_eq!(err.message, "sh failed with exit status 7: boom");
    }

    #[test]
    fn missing_tool_names_its_package() {
        let err = Cmd::new("gocryptfs-not-here").run().err().unwrap();
        assert!(
            err.message.contains("gocryptfs-not-here is not installed"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_daemon_holding_stdout_does_not_block() {
        // The child forks a sleeper that keeps stdout open and exits at once;
        // with a pipe we would wait for the sleeper.
        let started = Instant::now();
        let out = Cmd::new("sh")
            .args(["-c", "sleep 5 & echo ready"])
            .run()
            .unwrap();
        assert!(out.success());
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn timeout_stops_the_child() {
        let err = Cmd::new("sleep")
            .arg("5")
            .timeout(Duration::from_millis(100))
            .run()
            .err()
            .unwrap();
        assert!(err.message.contains("did not finish"), "{}", err.message);
    }
}
