//! `ciphersync --version`: its own version and those of the tools it
//! orchestrates, as found on PATH, so that a bug report says what ran.

use std::time::Duration;

use crate::exec::Cmd;

/// The tools whose versions `--version` reports, with the flag that prints it.
pub const TOOLS: [(&str, &str); 3] = [
    ("gocryptfs", "-version"),
    ("sshfs", "--version"),
    ("rsync", "--version"),
];

/// The version in a tool's `--version` output: the first line that starts
/// with the tool's name, without the name and a following "version"
/// (`rsync  version 3.2.7  protocol version 31` -> `3.2.7 protocol version
/// 31`, `SSHFS version 3.7.3` -> `3.7.3`, `gocryptfs 2.3; go-fuse ...` ->
/// `2.3; go-fuse ...`).
pub fn version_in(tool: &str, output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let line = line.trim();
        let head = line.get(..tool.len())?;
        if !head.eq_ignore_ascii_case(tool) {
            return None;
        }
        let rest = line[tool.len()..].trim_start();
        let rest = rest.strip_prefix("version").unwrap_or(rest);
        let words: Vec<&str> = rest.split_whitespace().collect();
        (!words.is_empty()).then(|| words.join(" "))
    })
}

/// `tool: VERSION (PATH)` or `tool: not found`, one line per tool.
pub fn tool_lines() -> Vec<String> {
    TOOLS
        .iter()
        .map(|(tool, flag)| {
            let found = which(tool);
            let version = found.as_ref().and_then(|_| run_version(tool, flag));
            match (found, version) {
                (None, _) => format!("{tool}: not found"),
                (Some(path), Some(v)) => format!("{tool}: {v} ({})", path.display()),
                (Some(path), None) => {
                    format!(
                        "{tool}: found at {}, but it printed no version",
                        path.display()
                    )
                }
            }
        })
        .collect()
}

fn run_version(tool: &'static str, flag: &str) -> Option<String> {
    let mut out = Cmd::new(tool)
        .arg(flag)
        .timeout(Duration::from_secs(10))
        .run()
        .ok()?;
    let mut text = out.stdout_string().unwrap_or_default();
    text.push('\n');
    text.push_str(&out.stderr);
    version_in(tool, &text)
}

/// The first executable `name` on PATH.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_found_in_what_the_tools_print() {
        assert_eq!(
            version_in(
                "rsync",
                "rsync  version 3.2.7  protocol version 31\nCopyright"
            )
            .as_deref(),
            Some("3.2.7 protocol version 31")
        );
        assert_eq!(
            version_in(
                "sshfs",
                "fusermount3 version: 3.14.0\nSSHFS version 3.7.3\nFUSE library version 3.14.0"
            )
            .as_deref(),
            Some("3.7.3")
        );
        assert_eq!(
            version_in("gocryptfs", "gocryptfs 2.3; go-fuse 2.1.0; 2023-04-09").as_deref(),
            Some("2.3; go-fuse 2.1.0; 2023-04-09")
        );
        assert_eq!(version_in("rsync", "usage: something else"), None);
    }
}
