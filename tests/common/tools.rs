//! Tool checks: [`require_tools`] (skip, or fail under `CI=true`, when a
//! tool is missing), the skip log, [`find_on_path`].

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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
