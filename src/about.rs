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
        fix: "fixed after gocryptfs 2.6.1 (its commit 5f5c34a): ciphersync refuses the \
              patterns that reach it (check-config names them); use a gocryptfs with that fix \
              for allow-lists",
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

/// Whether a release has bug 686: in `-reverse`, a long name's
/// `gocryptfs.longname.*.name` file is checked against the exclude
/// patterns by the *encrypted* path of its directory, and reading it fails
/// with EPERM when that path is excluded (so rsync fails on every run).
pub fn has_exclude_bug_686(release: [u32; 3]) -> bool {
    GOCRYPTFS_BUGS
        .iter()
        .any(|b| b.issue == 686 && (b.affects)(release))
}

/// The exclude patterns (index, pattern) that can exclude an *encrypted*
/// directory path, and so hide long names' `.name` files under gocryptfs
/// bug 686. gocryptfs reads each pattern as sabhiram/go-gitignore does:
/// trimmed, `#` a comment, a leading `!` a re-include (which never
/// excludes), `/`-separated components, `*` any run within a component,
/// `**` any run of components, `?` a literal, `[...]` a class, other
/// regular-expression characters passed through. A pattern can exclude an
/// encrypted path when each of its components can match an encrypted name
/// (22 or more characters of `A-Za-z0-9_-`, or `gocryptfs.longname.` and
/// 43 of them); a class or a raw regular-expression character counts as
/// able to (this errs on the side of refusing). So `*`, `/*`, `*-*` are
/// refused, `*.tmp`, `cache/`, `/build`, `.git` are not.
pub fn patterns_hit_by_bug_686(patterns: &[String]) -> Vec<(usize, &str)> {
    patterns
        .iter()
        .enumerate()
        .filter(|(_, p)| can_exclude_encrypted_path(p))
        .map(|(i, p)| (i, p.as_str()))
        .collect()
}

fn can_exclude_encrypted_path(pattern: &str) -> bool {
    let line = pattern.trim_matches(' ');
    if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
        return false;
    }
    let line = line
        .strip_prefix("\\#")
        .or_else(|| line.strip_prefix("\\!"))
        .map(|rest| rest.to_string())
        .unwrap_or_else(|| line.to_string());
    line.split('/')
        .filter(|c| !c.is_empty() && *c != "**")
        .all(component_can_match_encrypted_name)
}

#[derive(Debug, Clone, Copy)]
enum GlobToken {
    Star,
    AnyChar,
    Literal(u8),
}

/// A state of the automaton of encrypted names: `Short(n)`, n characters
/// of a plain encrypted name so far (22 and more accepted, counted up to
/// 22); `Prefix(n)`, n characters of `gocryptfs.longname.`; `Hash(n)`, n of
/// the 43 hash characters after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum NameState {
    Start,
    Short(u8),
    Prefix(u8),
    Hash(u8),
}

const LONGNAME_PREFIX: &[u8] = b"gocryptfs.longname.";
const SHORT_MIN: u8 = 22;
const HASH_LEN: u8 = 43;

fn is_b64(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

impl NameState {
    fn accepting(self) -> bool {
        matches!(self, NameState::Short(n) if n >= SHORT_MIN) || self == NameState::Hash(HASH_LEN)
    }

    /// The states after one character; `None` stands for any character.
    fn next(self, c: Option<u8>) -> Vec<NameState> {
        let b64 = c.is_none_or(is_b64);
        let mut out = Vec::new();
        match self {
            NameState::Start => {
                if b64 {
                    out.push(NameState::Short(1));
                }
                if c.is_none_or(|c| c == LONGNAME_PREFIX[0]) {
                    out.push(NameState::Prefix(1));
                }
            }
            NameState::Short(n) if b64 => out.push(NameState::Short((n + 1).min(SHORT_MIN))),
            NameState::Prefix(n)
                if (n as usize) < LONGNAME_PREFIX.len()
                    && c.is_none_or(|c| c == LONGNAME_PREFIX[n as usize]) =>
            {
                out.push(if n as usize + 1 == LONGNAME_PREFIX.len() {
                    NameState::Hash(0)
                } else {
                    NameState::Prefix(n + 1)
                });
            }
            NameState::Hash(n) if n < HASH_LEN && b64 => out.push(NameState::Hash(n + 1)),
            _ => {}
        }
        out
    }
}

/// Whether one pattern component can match some encrypted name: a search
/// over (position in the pattern, state of the name automaton).
fn component_can_match_encrypted_name(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.iter().any(|b| b"+(){}|^$\\".contains(b)) {
        return true;
    }
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'*' => tokens.push(GlobToken::Star),
            b'[' => {
                tokens.push(GlobToken::AnyChar);
                while i < bytes.len() && bytes[i] != b']' {
                    i += 1;
                }
            }
            c => tokens.push(GlobToken::Literal(c)),
        }
        i += 1;
    }
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![(0usize, NameState::Start)];
    while let Some((at, state)) = todo.pop() {
        if !seen.insert((at, state)) {
            continue;
        }
        let Some(token) = tokens.get(at) else {
            if state.accepting() {
                return true;
            }
            continue;
        };
        match token {
            GlobToken::Star => {
                todo.push((at + 1, state));
                todo.extend(state.next(None).into_iter().map(|s| (at, s)));
            }
            GlobToken::AnyChar => todo.extend(state.next(None).into_iter().map(|s| (at + 1, s))),
            GlobToken::Literal(c) => {
                todo.extend(state.next(Some(*c)).into_iter().map(|s| (at + 1, s)))
            }
        }
    }
    false
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

/// The installed gocryptfs's release, asked once per process: a backup
/// compares it with the last backup's and records it (guard.rs,
/// GocryptfsChange).
pub fn installed_gocryptfs_release() -> Option<[u32; 3]> {
    static RELEASE: std::sync::OnceLock<Option<[u32; 3]>> = std::sync::OnceLock::new();
    *RELEASE.get_or_init(|| installed_gocryptfs().and_then(|(_, release)| release))
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
    fn patterns_that_can_exclude_an_encrypted_path() {
        let hit = |p: &str| can_exclude_encrypted_path(p);
        for p in [
            "*",
            "/*",
            "**",
            "*-*",
            "*_*",
            "[a-z]*",
            "**/A*",
            "*.*",
            "gocryptfs.*",
            "*longname*",
            "a+",
            "*/",
            "/*/*",
            // Possible, if unlikely: a name of 22 characters could start and end so.
            "short*name",
        ] {
            assert!(hit(p), "{p:?} can exclude an encrypted path");
        }
        for p in [
            "*.tmp",
            "cache/",
            "/build",
            ".git",
            "node_modules",
            "*~",
            "*.o",
            "!/docs",
            "!*",
            "# *",
            "   ",
            "/home/*.tmp",
            "*/cache",
            "target/**",
            "?*",
        ] {
            assert!(!hit(p), "{p:?} cannot exclude an encrypted path");
        }
        // 22 characters of base64 can be a whole encrypted name.
        assert!(hit("Ckdzsn3MiFFyXiokYPQGnQ"));
        assert!(!hit("Ckdzsn3MiFFyXiokYPQGn"));
        let patterns: Vec<String> = ["*.tmp", "/*", "!/docs"].map(String::from).to_vec();
        assert_eq!(patterns_hit_by_bug_686(&patterns), [(1, "/*")]);
        assert!(has_exclude_bug_686([2, 3, 0]));
        assert!(has_exclude_bug_686([2, 6, 1]));
        assert!(!has_exclude_bug_686([2, 6, 2]));
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
