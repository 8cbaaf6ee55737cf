//! Mount and process checks: /proc/self/mountinfo ([`mounts`],
//! [`assert_no_mounts_under`], [`unmount_all_under`]), /proc ([`processes`],
//! [`descendants`], [`assert_no_helpers_left`], [`proc_details`]),
//! [`wait_until`], [`send_signal`].

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// How long [`assert_no_helpers_left`] waits for helpers to exit.
pub const HELPERS_EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits (bounded, [`HELPERS_EXIT_TIMEOUT`]) until no gocryptfs, sshfs, rsync, ssh, ciphersync or fuse-overlayfs process
/// mentions `path` on its command line; panics listing them otherwise.
pub fn assert_no_helpers_left(path: &Path) {
    let needle = path.to_string_lossy().into_owned();
    let find = || -> Vec<String> {
        processes()
            .into_iter()
            .filter(|(pid, _, comm, cmd)| {
                *pid != std::process::id()
                    && [
                        "gocryptfs",
                        "sshfs",
                        "rsync",
                        "ssh",
                        "ciphersync",
                        "fuse-overlayfs",
                    ]
                    .contains(&comm.as_str())
                    && cmd.contains(&needle)
            })
            .map(|(pid, ppid, comm, cmd)| {
                format!("  {pid} (ppid {ppid}) {comm}: {cmd}\n{}", proc_details(pid))
            })
            .collect()
    };
    // Generous: a loaded machine may take a while to let a helper that is
    // on its way out go; one left behind for good is still caught.
    let deadline = Instant::now() + HELPERS_EXIT_TIMEOUT;
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

/// Sends SIGKILL to `pid` if it is still there: a process listed a moment
/// ago may have ended since, which is not a failure.
pub fn kill_if_alive(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
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
