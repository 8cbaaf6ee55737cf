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

/// A gocryptfs release as `gocryptfs -version` names it: `gocryptfs 2.3;
/// go-fuse ...` -> 2.3.0, `gocryptfs v2.4.0-25-g0a8d8b7; ...` -> 2.4.0 (a
/// build from git counts as the release it follows).
pub fn gocryptfs_release(output: &str) -> Option<[u32; 3]> {
    let version = version_in("gocryptfs", output)?;
    let word = version.split([';', ' ']).next()?;
    let word = word.strip_prefix('v').unwrap_or(word);
    let numbers = word.split(['-', '+', '~']).next()?;
    let mut parts = [0u32; 3];
    let mut count = 0;
    for (i, part) in numbers.split('.').enumerate() {
        *parts.get_mut(i)? = part.parse().ok()?;
        count = i + 1;
    }
    (count >= 2).then_some(parts)
}

/// A known gocryptfs bug that damages what `-reverse` shows, and so what
/// a backup stores.
pub struct GocryptfsBug {
    /// The gocryptfs issue number.
    pub issue: u32,
    /// Whether it only matters for a job with `exclude` patterns.
    pub with_exclude: bool,
    /// What goes wrong, in a few words.
    pub what: &'static str,
    /// Which release fixes it, and what to do.
    pub fix: &'static str,
    affects: fn([u32; 3]) -> bool,
}

/// From gocryptfs' changelog: 2.5.0 fixed stale `gocryptfs.diriv` data
/// and hard-linked `.name` files in reverse mode (#802); the fix for long
/// names under `-exclude-wildcard` (#686) came after 2.6.1.
pub const GOCRYPTFS_BUGS: [GocryptfsBug; 2] = [
    GocryptfsBug {
        issue: 802,
        with_exclude: false,
        what: "-reverse can serve a stale gocryptfs.diriv and hard-links the .name files of \
               hard-linked long names, which can leave names undecryptable",
        fix: "fixed in gocryptfs 2.5.0: upgrade gocryptfs",
        affects: |v| v < [2, 5, 0],
    },
    GocryptfsBug {
        issue: 686,
        with_exclude: true,
        what: "with -exclude-wildcard, -reverse can hide the gocryptfs.longname.*.name files \
               of long names, so those names cannot be decrypted from the backup",
        fix: "fixed after gocryptfs 2.6.1 (its commit 5f5c34a): use a gocryptfs with that fix, \
              or no exclude patterns",
        affects: |v| v <= [2, 6, 1],
    },
];

/// The bugs of `release` that matter for a job (`uses_exclude`: it has
/// `exclude` patterns; None: any job, for `--version`).
pub fn gocryptfs_bugs(release: [u32; 3], uses_exclude: Option<bool>) -> Vec<&'static GocryptfsBug> {
    GOCRYPTFS_BUGS
        .iter()
        .filter(|b| (b.affects)(release))
        .filter(|b| !b.with_exclude || uses_exclude != Some(false))
        .collect()
}

/// The installed gocryptfs: what `gocryptfs -version` printed (its
/// version field) and the release in it; None when it is not on PATH or
/// printed no version.
pub fn installed_gocryptfs() -> Option<(String, Option<[u32; 3]>)> {
    which("gocryptfs")?;
    let mut out = Cmd::new("gocryptfs")
        .arg("-version")
        .timeout(Duration::from_secs(10))
        .run()
        .ok()?;
    let mut text = out.stdout_string().unwrap_or_default();
    text.push('\n');
    text.push_str(&out.stderr);
    let version = version_in("gocryptfs", &text)?;
    Some((version, gocryptfs_release(&text)))
}

/// One warning line per known bug of the installed gocryptfs, once per
/// process: `init` and `backup` call it, and `--version`.
pub fn warn_gocryptfs_bugs(uses_exclude: Option<bool>) {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let Some((version, release)) = installed_gocryptfs() else {
            return;
        };
        let Some(release) = release else {
            crate::log::warn(crate::human::gocryptfs_unknown_version(&version));
            return;
        };
        for bug in gocryptfs_bugs(release, uses_exclude) {
            crate::log::warn(crate::human::gocryptfs_bug_line(release, bug));
        }
    });
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

    #[test]
    fn gocryptfs_releases_are_read_from_its_version_line() {
        let release = |t: &str| gocryptfs_release(t);
        assert_eq!(
            release("gocryptfs 2.3; go-fuse 2.1.0+git20220822.58a7e14; 2023-04-09 go1.19.8"),
            Some([2, 3, 0])
        );
        assert_eq!(
            release("gocryptfs v2.4.0-25-g0a8d8b7; go-fuse v2.3.0"),
            Some([2, 4, 0])
        );
        assert_eq!(
            release("gocryptfs v2.6.1 without_openssl; go-fuse"),
            Some([2, 6, 1])
        );
        assert_eq!(release("gocryptfs [GitAttributes]; go-fuse"), None);
        assert_eq!(release("gocryptfs 2; go-fuse"), None);
        assert_eq!(release("rsync version 3.2.7"), None);
    }

    #[test]
    fn known_bugs_by_release_and_excludes() {
        let issues = |v, ex| {
            gocryptfs_bugs(v, ex)
                .iter()
                .map(|b| b.issue)
                .collect::<Vec<_>>()
        };
        assert_eq!(issues([2, 3, 0], Some(false)), [802]);
        assert_eq!(issues([2, 3, 0], Some(true)), [802, 686]);
        assert_eq!(issues([2, 4, 9], None), [802, 686]);
        assert_eq!(issues([2, 5, 0], Some(false)), Vec::<u32>::new());
        assert_eq!(issues([2, 6, 1], Some(true)), [686]);
        assert_eq!(issues([2, 6, 2], Some(true)), Vec::<u32>::new());
        assert_eq!(issues([3, 0, 0], None), Vec::<u32>::new());
    }
}
