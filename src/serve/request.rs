//! What a client may ask of a `ciphersync serve` account, parsed from
//! `SSH_ORIGINAL_COMMAND` without a shell. Every byte of it is the
//! client's: the text is bounded, split on blanks with only backslash
//! escapes (what rsync's own argument escaping produces), and anything a
//! shell would give a meaning to (quotes, `$`, `;`, globs, braces) is
//! refused rather than guessed at. Paths are confined to the account's
//! root lexically here; serve.rs checks what exists on disk.

use crate::error::{Error, Kind, Result};

/// The longest command accepted: Linux's limit for one argument or
/// environment string (MAX_ARG_STRLEN), which sshd's SSH_ORIGINAL_COMMAND
/// could not exceed anyway.
pub const MAX_REQUEST: usize = 128 * 1024;
/// Words in one command: a `sha1sum` batch of the client (512 paths) and
/// then some.
pub const MAX_WORDS: usize = 4096;
/// Path arguments of one `rsync --server --sender`.
const MAX_RSYNC_PATHS: usize = 64;

/// A path below the account's root: its components (no `.`, `..` or empty
/// ones), and whether the client wrote it with a trailing `/` (rsync
/// treats `dir/` and `dir` differently).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Below {
    pub parts: Vec<String>,
    pub trailing_slash: bool,
}

impl Below {
    /// `parts` joined with `/`, "." for the root itself.
    pub fn rel(&self) -> String {
        match self.parts.is_empty() {
            true => ".".into(),
            false => self.parts.join("/"),
        }
    }
}

/// A request serve may carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The SFTP subsystem (sshd hands its `Subsystem` command line over as
    /// SSH_ORIGINAL_COMMAND): exec the configured sftp-server.
    Sftp,
    /// `rsync --server --version`: the probe's question.
    RsyncVersion,
    /// `rsync --server ...`, checked: the options to pass on (values that
    /// are paths made absolute below the root), and the path arguments.
    Rsync {
        sender: bool,
        options: Vec<RsyncOption>,
        paths: Vec<Below>,
    },
    /// `sha1sum --version`.
    Sha1sumVersion,
    /// `sha1sum [--] PATH...`: each path as the client wrote it (echoed in
    /// the answer, as sha1sum does) and where it is below the root.
    Sha1sum(Vec<(String, Below)>),
    /// `ciphersync-server sha1 DIR`: every regular file below DIR, in
    /// `sha1sum` format as `./<path>`, sorted on the path (the format of
    /// the shell target's hash.sh).
    TreeSha1(Below),
    /// `ciphersync-server stamps DIR`: one line, the stamps of the tree
    /// below DIR (tree.rs, `stamps_below`), so that a backup with nothing
    /// to send sees that nothing touched files/ since its last run.
    TreeStamps(Below),
    /// `ciphersync-server info`: what this account is (append-only, the
    /// server's retention).
    Info,
    /// `ciphersync-server quota`: whether the account may write (asked by
    /// a client before a backup, so that it fails with the server's line).
    Quota,
}

/// One rsync option to pass on: as the client wrote it, or with a path
/// value to be made absolute below the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RsyncOption {
    Plain(String),
    Path { name: String, value: Below },
}

fn refuse(message: impl Into<String>) -> Error {
    Error::new(Kind::Refused, message)
}

/// For messages: a word of the client's, escaped and cut short.
fn shown(word: &str) -> String {
    crate::limits::quote(word, 80)
}

/// Splits the command into words: blanks separate, a backslash makes the
/// next character literal. Refuses what a shell would interpret.
pub fn words(command: &str) -> Result<Vec<String>> {
    if command.len() > MAX_REQUEST {
        return Err(refuse(format!(
            "command not allowed: {} bytes, more than {MAX_REQUEST}",
            command.len()
        )));
    }
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => match chars.next() {
                Some(next) if !next.is_control() => {
                    word.push(next);
                    in_word = true;
                }
                _ => return Err(refuse("command not allowed: a dangling backslash")),
            },
            c if c.is_control() => {
                return Err(refuse("command not allowed: control characters"));
            }
            '\'' | '"' | '`' | '$' | ';' | '|' | '&' | '<' | '>' | '(' | ')' | '*' | '?' | '['
            | ']' | '{' | '}' | '~' | '#' => {
                return Err(refuse(format!(
                    "command not allowed: shell syntax ({c:?}) is not interpreted here"
                )));
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
        if words.len() >= MAX_WORDS {
            return Err(refuse(format!(
                "command not allowed: more than {MAX_WORDS} words"
            )));
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Parses SSH_ORIGINAL_COMMAND (None: an interactive login) for an account
/// whose root is the absolute path `root`.
pub fn parse(command: Option<&str>, root: &str) -> Result<Request> {
    let Some(command) = command else {
        return Err(refuse(
            "interactive login not allowed: this account serves ciphersync backups only",
        ));
    };
    let words = words(command)?;
    let first = words.first().map(String::as_str).unwrap_or("");
    let rest = words.get(1..).unwrap_or(&[]);
    match first {
        "" => Err(refuse("command not allowed: an empty command")),
        "internal-sftp" | "sftp-server" => sftp(rest),
        w if w.ends_with("/sftp-server") => sftp(rest),
        "rsync" => rsync(rest, root),
        "sha1sum" => sha1sum(rest, root),
        "ciphersync-server" => match rest {
            [w] if w == "info" => Ok(Request::Info),
            [w] if w == "quota" => Ok(Request::Quota),
            [w, dir] if w == "sha1" => Ok(Request::TreeSha1(below(dir, root, &[])?)),
            [w, dir] if w == "stamps" => Ok(Request::TreeStamps(below(dir, root, &[])?)),
            _ => Err(refuse(
                "command not allowed: ciphersync-server takes `info`, `quota`, `sha1 DIR` \
                 or `stamps DIR`",
            )),
        },
        other => Err(refuse(format!("command not allowed: {}", shown(other)))),
    }
}

fn sftp(rest: &[String]) -> Result<Request> {
    match rest.is_empty() {
        true => Ok(Request::Sftp),
        false => Err(refuse(
            "command not allowed: sftp-server with arguments (the server sets them)",
        )),
    }
}

fn sha1sum(rest: &[String], root: &str) -> Result<Request> {
    if rest.len() == 1 && rest[0] == "--version" {
        return Ok(Request::Sha1sumVersion);
    }
    let paths = match rest.first().map(String::as_str) {
        Some("--") => &rest[1..],
        _ => rest,
    };
    if paths.is_empty() {
        return Err(refuse(
            "command not allowed: sha1sum needs at least one path",
        ));
    }
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        if path.starts_with('-') && paths.len() == rest.len() {
            return Err(refuse(format!(
                "command not allowed: sha1sum option {} (only --version and --)",
                shown(path)
            )));
        }
        out.push((path.clone(), below(path, root, &[])?));
    }
    Ok(Request::Sha1sum(out))
}

/// Confines `path` to the root: an absolute path must lie at or below
/// `root`; a relative one is taken from `base` (components below the
/// root). No `..` anywhere, except leading ones of a relative path with a
/// `base`, which climb out of `base` but never above the root (rsync's
/// `--backup-dir=../snapshots/ID/`, relative to the destination).
pub fn below(path: &str, root: &str, base: &[String]) -> Result<Below> {
    if path.is_empty() {
        return Err(refuse("path not allowed: an empty path"));
    }
    let trailing_slash = path.ends_with('/') && path.len() > 1;
    let (mut parts, rest): (Vec<String>, &str) = match path.strip_prefix('/') {
        Some(_) => {
            let inside = if path == root || path.trim_end_matches('/') == root {
                ""
            } else if let Some(r) = path.strip_prefix(root).and_then(|r| r.strip_prefix('/')) {
                r
            } else {
                return Err(refuse(format!(
                    "path not allowed: {} is outside this account's directory",
                    shown(path)
                )));
            };
            (Vec::new(), inside)
        }
        None => (base.to_vec(), path),
    };
    let mut leading = !base.is_empty() && !path.starts_with('/');
    for part in rest.split('/') {
        match part {
            "" | "." => continue,
            ".." if leading => {
                if parts.pop().is_none() {
                    return Err(refuse(format!(
                        "path not allowed: {} climbs out of this account's directory",
                        shown(path)
                    )));
                }
            }
            ".." => {
                return Err(refuse(format!(
                    "path not allowed: {} holds `..`",
                    shown(path)
                )));
            }
            p => {
                leading = false;
                parts.push(p.to_string());
            }
        }
    }
    Ok(Below {
        parts,
        trailing_slash,
    })
}

/// Short options rsync's client sends to a server (rrsync's list), less
/// `s` (protect-args: the paths would come over the protocol, unchecked)
/// and `K`, `L`, `k` (follow symlinks on the server side).
const SHORT_OPTIONS: &str = "ACDEHIJNORSUWXbcdglmnopqrtuvxyz";
/// Short options with a number: `-B1024`, `-@1`.
const SHORT_WITH_NUMBER: &str = "B@";

/// How a long option's value is checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Value {
    /// Takes no value.
    None,
    /// A value that names no path.
    Free,
    /// A directory relative to the destination (receiver) or the root.
    Path,
}

/// The long options passed on (rrsync's list, less the ones that write
/// outside the tree or read the server's files: log-file, only-write-batch,
/// files-from other than `-`, copy-devices, write-devices, no-munge-links).
const LONG_OPTIONS: &[(&str, Value)] = &[
    ("append", Value::None),
    ("backup-dir", Value::Path),
    ("block-size", Value::Free),
    ("bwlimit", Value::Free),
    ("checksum-choice", Value::Free),
    ("checksum-seed", Value::Free),
    ("compare-dest", Value::Path),
    ("compress-choice", Value::Free),
    ("compress-level", Value::Free),
    ("compress-threads", Value::Free),
    ("copy-dest", Value::Path),
    ("copy-unsafe-links", Value::None),
    ("debug", Value::Free),
    ("delay-updates", Value::None),
    ("delete", Value::None),
    ("delete-after", Value::None),
    ("delete-before", Value::None),
    ("delete-delay", Value::None),
    ("delete-during", Value::None),
    ("delete-excluded", Value::None),
    ("delete-missing-args", Value::None),
    ("existing", Value::None),
    ("fake-super", Value::None),
    ("force", Value::None),
    ("from0", Value::None),
    ("fsync", Value::None),
    ("fuzzy", Value::None),
    ("group", Value::None),
    ("groupmap", Value::Free),
    ("hard-links", Value::None),
    ("iconv", Value::Free),
    ("ignore-errors", Value::None),
    ("ignore-existing", Value::None),
    ("ignore-missing-args", Value::None),
    ("ignore-times", Value::None),
    ("info", Value::Free),
    ("inplace", Value::None),
    ("link-dest", Value::Path),
    ("links", Value::None),
    ("list-only", Value::None),
    ("log-format", Value::Free),
    ("max-alloc", Value::Free),
    ("max-delete", Value::Free),
    ("max-size", Value::Free),
    ("min-size", Value::Free),
    ("mkpath", Value::None),
    ("modify-window", Value::Free),
    ("msgs2stderr", Value::None),
    ("munge-links", Value::None),
    ("new-compress", Value::None),
    ("no-W", Value::None),
    ("no-implied-dirs", Value::None),
    ("no-msgs2stderr", Value::None),
    ("no-r", Value::None),
    ("no-relative", Value::None),
    ("no-specials", Value::None),
    ("numeric-ids", Value::None),
    ("old-compress", Value::None),
    ("one-file-system", Value::None),
    ("open-noatime", Value::None),
    ("owner", Value::None),
    ("partial", Value::None),
    ("partial-dir", Value::Path),
    ("perms", Value::None),
    ("preallocate", Value::None),
    ("recursive", Value::None),
    ("remove-sent-files", Value::None),
    ("remove-source-files", Value::None),
    ("safe-links", Value::None),
    ("size-only", Value::None),
    ("skip-compress", Value::Free),
    ("specials", Value::None),
    ("stats", Value::None),
    ("stderr", Value::Free),
    ("suffix", Value::Free),
    ("super", Value::None),
    ("temp-dir", Value::Path),
    ("timeout", Value::Free),
    ("times", Value::None),
    ("use-qsort", Value::None),
    ("usermap", Value::Free),
];

fn short_ok(word: &str) -> bool {
    let Some(body) = word.strip_prefix('-') else {
        return false;
    };
    if body.is_empty() || body.starts_with('-') {
        return false;
    }
    if let Some(first) = body.chars().next()
        && SHORT_WITH_NUMBER.contains(first)
    {
        return body.len() > 1 && body[1..].bytes().all(|b| b.is_ascii_digit());
    }
    let mut chars = body.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == 'e' {
            break;
        }
        if !SHORT_OPTIONS.contains(c) {
            return false;
        }
        chars.next();
    }
    if chars.next().is_none() {
        return true;
    }
    // `e<digits>.<word chars>`: the protocol's compatibility flags.
    let rest: String = chars.collect();
    let digits = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    match digits.strip_prefix('.') {
        Some(flags) => flags.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        None => false,
    }
}

/// `rsync --server ...` (the words after `rsync`), checked the way rrsync
/// checks it: options from the allow-list only, then `.`, then paths below
/// the root.
fn rsync(rest: &[String], root: &str) -> Result<Request> {
    if rest.first().map(String::as_str) != Some("--server") {
        return Err(refuse(
            "command not allowed: rsync runs here only as `rsync --server`",
        ));
    }
    let rest = &rest[1..];
    if rest.len() == 1 && rest[0] == "--version" {
        return Ok(Request::RsyncVersion);
    }
    let sender = rest.first().map(String::as_str) == Some("--sender");
    let mut words = rest.iter().skip(usize::from(sender));
    // Path options keep their raw value until the destination is known.
    let mut raw: Vec<(String, Option<String>)> = Vec::new();
    let mut saw_dot = false;
    while let Some(word) = words.next() {
        if word == "." {
            saw_dot = true;
            break;
        }
        if short_ok(word) {
            raw.push((word.clone(), None));
            continue;
        }
        let Some(long) = word.strip_prefix("--") else {
            return Err(refuse(format!(
                "rsync option not allowed: {} (only the options a client sends to a server)",
                shown(word)
            )));
        };
        let (name, inline) = match long.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (long, None),
        };
        if name == "files-from" && inline.as_deref() == Some("-") {
            raw.push((word.clone(), None));
            continue;
        }
        let Some(&(_, kind)) = LONG_OPTIONS.iter().find(|(n, _)| *n == name) else {
            return Err(refuse(format!(
                "rsync option not allowed: --{}",
                shown(name).trim_matches('"')
            )));
        };
        match kind {
            Value::None if inline.is_some() => {
                return Err(refuse(format!("rsync option --{name} takes no value")));
            }
            Value::None => raw.push((word.clone(), None)),
            Value::Free | Value::Path => {
                let value = match inline {
                    Some(v) => v,
                    None => words
                        .next()
                        .cloned()
                        .ok_or_else(|| refuse(format!("rsync option --{name} lacks its value")))?,
                };
                if name == "suffix" && value.contains('/') {
                    return Err(refuse("rsync option --suffix may not hold `/`"));
                }
                let tag = match kind {
                    Value::Path => Some(value),
                    _ => {
                        raw.push((format!("--{name}={value}"), None));
                        continue;
                    }
                };
                raw.push((format!("--{name}"), tag));
            }
        }
    }
    if !saw_dot {
        return Err(refuse(
            "command not allowed: rsync --server without its `.` argument",
        ));
    }
    let paths: Vec<&String> = words.collect();
    let paths = match (sender, paths.len()) {
        (_, 0) => return Err(refuse("command not allowed: rsync --server without a path")),
        (false, 1) => paths,
        (false, _) => {
            return Err(refuse(
                "command not allowed: a receiving rsync --server takes one destination",
            ));
        }
        (true, n) if n > MAX_RSYNC_PATHS => {
            return Err(refuse(format!(
                "command not allowed: more than {MAX_RSYNC_PATHS} rsync paths"
            )));
        }
        (true, _) => paths,
    };
    let paths: Vec<Below> = paths
        .into_iter()
        .map(|p| below(p, root, &[]))
        .collect::<Result<_>>()?;
    // A receiver resolves these options' relative values from its
    // destination directory.
    let base: &[String] = match sender {
        false => &paths[0].parts,
        true => &[],
    };
    let mut options = Vec::with_capacity(raw.len());
    for (word, value) in raw {
        options.push(match value {
            None => RsyncOption::Plain(word),
            Some(value) => RsyncOption::Path {
                value: below(&value, root, base)?,
                name: word,
            },
        });
    }
    Ok(Request::Rsync {
        sender,
        options,
        paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/srv/acct";

    fn parts(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    fn refused(command: &str) -> String {
        match parse(Some(command), ROOT) {
            Ok(r) => panic!("`{command}` was allowed: {r:?}"),
            Err(e) => {
                assert_eq!(e.kind, Kind::Refused, "{e}");
                assert!(!e.message.contains('\n'), "one line: {e}");
                e.message
            }
        }
    }

    #[test]
    fn the_commands_a_client_sends_are_allowed() {
        assert_eq!(
            parse(Some("/usr/lib/openssh/sftp-server"), ROOT).unwrap(),
            Request::Sftp
        );
        assert_eq!(parse(Some("internal-sftp"), ROOT).unwrap(), Request::Sftp);
        for (command, rel) in [
            ("ciphersync-server sha1 /srv/acct/files", "files"),
            ("ciphersync-server stamps files", "files"),
        ] {
            let got = parse(Some(command), ROOT).unwrap();
            let (Request::TreeSha1(dir) | Request::TreeStamps(dir)) = &got else {
                panic!("`{command}` gave {got:?}");
            };
            assert_eq!(dir.rel(), rel, "`{command}`");
        }
        assert!(matches!(
            parse(Some("ciphersync-server stamps files"), ROOT).unwrap(),
            Request::TreeStamps(_)
        ));
        assert_eq!(
            parse(Some("rsync --server --version"), ROOT).unwrap(),
            Request::RsyncVersion
        );
        assert_eq!(
            parse(Some("sha1sum --version"), ROOT).unwrap(),
            Request::Sha1sumVersion
        );
        assert_eq!(
            parse(Some("ciphersync-server info"), ROOT).unwrap(),
            Request::Info
        );
        assert_eq!(
            parse(Some("ciphersync-server quota"), ROOT).unwrap(),
            Request::Quota
        );
        // What ciphersync's backup sends (captured from rsync 3.x).
        let got = parse(
            Some(
                "rsync --server -blHogtpre.iLsfxCIvu --log-format=%i --bwlimit=100 \
                 --backup-dir ../snapshots/20260101T000000Z/ --delete --stats . /srv/acct/files/",
            ),
            ROOT,
        )
        .unwrap();
        let Request::Rsync {
            sender,
            options,
            paths,
        } = got
        else {
            panic!("not rsync: {got:?}");
        };
        assert!(!sender);
        assert_eq!(
            paths,
            [Below {
                parts: parts(&["files"]),
                trailing_slash: true
            }]
        );
        assert!(options.contains(&RsyncOption::Path {
            name: "--backup-dir".into(),
            value: Below {
                parts: parts(&["snapshots", "20260101T000000Z"]),
                trailing_slash: true
            }
        }));
        assert!(options.contains(&RsyncOption::Plain("--bwlimit=100".into())));
        // A pull, and a path with an escaped space.
        let got = parse(
            Some("rsync --server --sender -logDtpre.iLsfxCIvu . my\\ dir/x"),
            ROOT,
        )
        .unwrap();
        assert!(
            matches!(&got, Request::Rsync { sender: true, paths, .. }
                if paths[0].parts == parts(&["my dir", "x"])),
            "{got:?}"
        );
        let got = parse(Some("sha1sum -- /srv/acct/files/a files/b"), ROOT).unwrap();
        assert_eq!(
            got,
            Request::Sha1sum(vec![
                (
                    "/srv/acct/files/a".into(),
                    Below {
                        parts: parts(&["files", "a"]),
                        trailing_slash: false
                    }
                ),
                (
                    "files/b".into(),
                    Below {
                        parts: parts(&["files", "b"]),
                        trailing_slash: false
                    }
                ),
            ])
        );
    }

    #[test]
    fn anything_else_is_refused_in_one_line() {
        for (command, says) in [
            ("sh -c true", "command not allowed: \"sh\""),
            ("cat /etc/passwd", "command not allowed: \"cat\""),
            ("", "an empty command"),
            ("   ", "an empty command"),
            ("ls; id", "shell syntax"),
            ("sha1sum files/a | cat", "shell syntax"),
            ("sha1sum $HOME/x", "shell syntax"),
            ("sha1sum `id`", "shell syntax"),
            ("sha1sum 'files/a'", "shell syntax"),
            ("sha1sum files/*", "shell syntax"),
            ("sha1sum files/a\nid", "control characters"),
            ("sha1sum files/a\\", "dangling backslash"),
            ("sha1sum", "at least one path"),
            ("sha1sum -c list", "sha1sum option"),
            ("rsync --version", "only as `rsync --server`"),
            ("rsync -e sh --server . x", "only as `rsync --server`"),
            ("/usr/lib/openssh/sftp-server -d /", "with arguments"),
            ("ciphersync-server rm files", "takes `info`"),
        ] {
            let got = refused(command);
            assert!(got.contains(says), "`{command}`: {got}");
        }
        assert!(refused("interactive").contains("not allowed"));
        let e = parse(None, ROOT).unwrap_err();
        assert!(e.message.contains("interactive login not allowed"), "{e}");
    }

    #[test]
    fn paths_cannot_leave_the_root() {
        for command in [
            "sha1sum /etc/passwd",
            "sha1sum /srv/acctX/files/a",
            "sha1sum /srv",
            "sha1sum files/../../etc/passwd",
            "sha1sum ../acct2/files/a",
            "sha1sum files/..",
            "rsync --server -logDtpre.iLsfxCIvu . /etc/",
            "rsync --server -logDtpre.iLsfxCIvu . ../other/",
            "rsync --server --sender -logDtpre.iLsfxCIvu . files/../../x",
            "rsync --server -logDtpre.iLsfxCIvu --backup-dir ../../x/ . /srv/acct/files/",
            "rsync --server -logDtpre.iLsfxCIvu --backup-dir=/tmp/x . files/",
            "rsync --server -logDtpre.iLsfxCIvu --temp-dir=../../../tmp . files/",
            "rsync --server -logDtpre.iLsfxCIvu --partial-dir=x/../../.. . files/",
            "ciphersync-server sha1 /",
            "ciphersync-server stamps /",
            "ciphersync-server stamps ../x",
        ] {
            let got = refused(command);
            assert!(got.contains("path not allowed"), "`{command}`: {got}");
        }
        // `..` only climbs out of the destination, and not above the root.
        let b = below("../snapshots/X/", ROOT, &parts(&["files"])).unwrap();
        assert_eq!(b.parts, parts(&["snapshots", "X"]));
        assert!(below("../../x", ROOT, &parts(&["files"])).is_err());
        assert!(below("a/../b", ROOT, &parts(&["files"])).is_err());
        assert_eq!(below("/srv/acct/", ROOT, &[]).unwrap().rel(), ".");
        assert_eq!(below("/srv/acct", ROOT, &[]).unwrap().rel(), ".");
    }

    #[test]
    fn options_cannot_be_smuggled_into_rsync_server() {
        for (command, says) in [
            // protect-args: the paths would arrive over the protocol.
            (
                "rsync --server -slogDtpre.iLsfxCIvu . files/",
                "option not allowed",
            ),
            ("rsync --server -logDtprs . files/", "option not allowed"),
            // follow symlinks on the server.
            ("rsync --server -logDtprK . files/", "option not allowed"),
            ("rsync --server -Llogtpr . files/", "option not allowed"),
            ("rsync --server -k . files/", "option not allowed"),
            ("rsync --server --log-file=/tmp/x . files/", "--log-file"),
            ("rsync --server --log-file /tmp/x . files/", "--log-file"),
            (
                "rsync --server --only-write-batch=/tmp/x . files/",
                "--only-write-batch",
            ),
            ("rsync --server --write-batch=x . files/", "--write-batch"),
            (
                "rsync --server --files-from=/etc/passwd . files/",
                "--files-from",
            ),
            ("rsync --server --rsync-path=sh . files/", "--rsync-path"),
            ("rsync --server --daemon . files/", "--daemon"),
            ("rsync --server --config=/x . files/", "--config"),
            ("rsync --server --copy-devices . files/", "--copy-devices"),
            ("rsync --server --write-devices . files/", "--write-devices"),
            (
                "rsync --server --no-munge-links . files/",
                "--no-munge-links",
            ),
            ("rsync --server --protect-args . files/", "--protect-args"),
            ("rsync --server --keep-dirlinks . files/", "--keep-dirlinks"),
            ("rsync --server --delete=yes . files/", "takes no value"),
            ("rsync --server --suffix=/../x . files/", "--suffix"),
            ("rsync --server --backup-dir", "lacks its value"),
            ("rsync --server -logDtpre.x", "without its `.`"),
            ("rsync --server -logDtpr . a b", "one destination"),
            ("rsync --server -logDtpr .", "without a path"),
            ("rsync --server -B . files/", "option not allowed"),
            ("rsync --server -logDtpre.i;x . files/", "shell syntax"),
            (
                "rsync --server -logDtpre.i-x . files/",
                "option not allowed",
            ),
            ("rsync --server x . files/", "option not allowed"),
        ] {
            let got = refused(command);
            assert!(got.contains(says), "`{command}`: {got}");
        }
        assert!(short_ok("-B1024") && short_ok("-@1") && short_ok("-e.LsfxCIvu"));
        assert!(short_ok("-blJHtpre.iLsfxCIvu") && short_ok("-blogDtpcRe31.iLsfx"));
    }

    #[test]
    fn oversized_requests_are_refused_before_parsing() {
        let long = format!("sha1sum {}", "a".repeat(MAX_REQUEST));
        assert!(refused(&long).contains("more than 131072"));
        let many = format!("sha1sum{}", " a".repeat(MAX_WORDS + 1));
        assert!(refused(&many).contains("more than 4096 words"));
        let senders = format!(
            "rsync --server --sender -logDtpr .{}",
            " files/a".repeat(MAX_RSYNC_PATHS + 1)
        );
        assert!(refused(&senders).contains("rsync paths"));
        // Exactly at the bound is fine.
        let fits = format!("sha1sum {}", "a".repeat(MAX_REQUEST - 8));
        assert!(parse(Some(&fits), ROOT).is_ok());
    }
}
