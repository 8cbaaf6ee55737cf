//! The job file: parsed strictly (unknown and repeated fields are an error),
//! then checked field by field so that every error names the field it is
//! about and says in words what the field takes, then resolved into a `Job`
//! with every default filled in.
//!
//! The text is first read into a JSON tree (syntax errors give the line and
//! column), then each field is taken from the tree by hand: serde's derived
//! messages (`invalid type: string "50", expected u8`) speak Rust, not job
//! files.
//!
//! Several fields end up in the generated ssh_config or in ssh and rsync
//! arguments, so they are held to what their consumer reads as intended:
//! no control character anywhere (a line break in `target.user` would add an
//! ssh_config line, e.g. a ProxyCommand), user and host names from a small
//! alphabet, and no `"`, `\` or `${` in the paths written into ssh_config
//! (remote.rs escapes `%` there).
//!
//! Parsing and checking never touch the file system beyond reading the job
//! file itself, so `check-config` runs inside a Nix build sandbox where the
//! paths the job names do not exist.

use std::cell::RefCell;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

pub const CONFIG_VERSION: u32 = 1;
pub const DEFAULT_MAX_DELETE_PERCENT: u8 = 50;

/// How gocryptfs encrypts file names (only used when the config is created).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filenames {
    #[default]
    Encrypted,
    Plaintext,
    Deterministic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sshfs,
    Rsync,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteChecksums {
    /// On the server where the account allows it (a shell, or a whitelisted
    /// `sha1sum`), else by reading through the mount: the probe decides.
    Auto,
    Ssh,
    Mount,
}

/// `source_snapshot`: the file system snapshot a backup reads instead of
/// the live source (source_snapshot.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    Btrfs,
    Zfs,
    Lvm,
}

impl SnapshotKind {
    pub fn name(self) -> &'static str {
        match self {
            SnapshotKind::Btrfs => "btrfs",
            SnapshotKind::Zfs => "zfs",
            SnapshotKind::Lvm => "lvm",
        }
    }
}

/// Snapshot retention; a bound that is `None` is not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_days: Option<u32>,
}

impl Retention {
    /// Whether any bound is set: without one every snapshot is kept.
    pub fn bounded(&self) -> bool {
        self.keep_last.is_some() || self.keep_days.is_some()
    }
}

/// A job with every default resolved; what the rest of the helper works on.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub source: PathBuf,
    pub exclude: Vec<String>,
    /// `source_snapshot`: back up a read-only snapshot of the source taken
    /// at the start of the run (None: the live tree).
    pub source_snapshot: Option<SnapshotKind>,
    pub password_file: PathBuf,
    pub gocryptfs_config: PathBuf,
    pub filenames: Filenames,
    pub target: Target,
    pub snapshots: Retention,
    /// Bytes of remote files verify reads back each run (the possession
    /// check, sample.rs); None: 1 % of the data, at most 256 MiB.
    pub verify_sample_bytes: Option<u64>,
    pub max_delete_percent: u8,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    /// `target.bwlimit`: the backup's rate bound in KiB/s, for the whole
    /// job (rsync.rs shares it among the workers).
    pub bwlimit: Option<u32>,
    /// `target.space_warning_percent`: below this share of free space on
    /// the target, `status` and the backup warn (target/space.rs).
    pub space_warning_percent: u8,
    /// `password_credential`: the systemd credential that holds the
    /// password, used instead of `password_file` inside a unit.
    pub password_credential: Option<String>,
    /// `target.identity_credential`: the same for the ssh key.
    pub identity_credential: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Target {
    /// A directory on a disk that is already mounted.
    Local {
        path: PathBuf,
    },
    Sftp(Sftp),
}

#[derive(Debug, Clone)]
pub struct Sftp {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Absolute path on the server.
    pub path: PathBuf,
    pub identity_file: Option<PathBuf>,
    pub known_hosts_file: PathBuf,
    pub transport: Transport,
    pub remote_checksums: RemoteChecksums,
    /// sshfs connections as asked (4 rsync workers ride on each, at most
    /// 16: `split::workers_for`); `budget::of` says how many a stage uses.
    pub connections: usize,
    /// The most ssh sessions a stage holds at once (budget.rs).
    pub max_connections: usize,
}

impl Job {
    /// True when the gocryptfs config lives in the source, where the reverse
    /// view shows it as `gocryptfs.conf`; otherwise backup uploads it.
    pub fn config_in_source(&self) -> bool {
        self.gocryptfs_config == self.source.join(".gocryptfs.reverse.conf")
    }

    /// A human name for where the backup goes, for messages.
    pub fn target_label(&self) -> String {
        match &self.target {
            Target::Local { path } => path.display().to_string(),
            Target::Sftp(s) => format!("{}@{}:{}:{}", s.user, s.host, s.port, s.path.display()),
        }
    }
}

/// Reads and checks a job file; errors name the file and the field, or the
/// line and column of a JSON syntax error.
pub fn load(file: &Path) -> Result<Job> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::usage(format!("cannot read job file {}: {e}", file.display())))?;
    parse_job(&text).map_err(|p| {
        Error::usage(match p.at {
            Some((line, column)) => format!(
                "{} line {line}, column {column}: {}",
                file.display(),
                p.message
            ),
            None => format!("{}: {}", file.display(), p.message),
        })
    })
}

/// Parses job file text; the error message names the field.
pub fn parse(text: &str) -> Result<Job> {
    parse_job(text).map_err(|p| Error::usage(p.to_string()))
}

/// What is wrong with a job file: one line, and where in the text when the
/// JSON itself is broken.
#[derive(Debug)]
struct Problem {
    at: Option<(usize, usize)>,
    message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, column)) => write!(f, "line {line}, column {column}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

type Checked<T> = std::result::Result<T, Problem>;

fn field_error(field: &str, problem: impl fmt::Display) -> Problem {
    Problem {
        at: None,
        message: format!("field `{field}`: {problem}"),
    }
}

fn parse_job(text: &str) -> Checked<Job> {
    let tree = read_tree(text)?;
    resolve(&tree)
}

// ---------------------------------------------------------------------------
// JSON text to tree
// ---------------------------------------------------------------------------

/// Reads the text into a JSON tree; a field given twice is an error (JSON
/// allows it, and a reader of the file would see one value while another
/// one counts).
fn read_tree(text: &str) -> Checked<Value> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let failed_in = RefCell::new(None);
    let tree = Tree {
        path: String::new(),
        failed_in: &failed_in,
    }
    .deserialize(&mut *de)
    .map_err(|e| json_problem(&e, failed_in.take().as_deref()))?;
    de.end()
        .map_err(|e| json_problem(&e, None).instead("text after the job object"))?;
    Ok(tree)
}

/// A serde_json error as "line L, column C: not valid JSON in field `F`:
/// what". Errors our own tree builder raised (a repeated field) are not
/// syntax errors and keep their own words.
fn json_problem(e: &serde_json::Error, field: Option<&str>) -> Problem {
    use serde_json::error::Category;
    let full = e.to_string();
    let what = full
        .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
        .unwrap_or(&full);
    let what = match what.strip_prefix("EOF while parsing ") {
        Some("a value") => "the text ends where a value should be".to_string(),
        Some(inside) => format!("the text ends inside {inside}"),
        None => what.to_string(),
    };
    let message = match (e.classify(), field) {
        (Category::Data, _) => what,
        (_, Some(field)) => format!("not valid JSON in field `{field}`: {what}"),
        (_, None) => format!("not valid JSON: {what}"),
    };
    Problem {
        at: (e.line() > 0).then_some((e.line(), e.column())),
        message,
    }
}

impl Problem {
    fn instead(self, what: &str) -> Problem {
        Problem {
            message: format!("not valid JSON: {what}"),
            ..self
        }
    }
}

/// Builds a `serde_json::Value` like `Value::deserialize`, but refuses an
/// object key that appears twice, naming it by its full path.
struct Tree<'c> {
    path: String,
    /// The innermost field whose value did not parse, for the message.
    failed_in: &'c RefCell<Option<String>>,
}

impl<'c> Tree<'c> {
    fn child(&self, path: String) -> Tree<'c> {
        Tree {
            path,
            failed_in: self.failed_in,
        }
    }

    fn note<T, E>(&self, path: &str, r: std::result::Result<T, E>) -> std::result::Result<T, E> {
        if r.is_err() && self.failed_in.borrow().is_none() {
            *self.failed_in.borrow_mut() = Some(path.to_string());
        }
        r
    }
}

impl<'de> DeserializeSeed<'de> for Tree<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Tree<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        self.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let path = format!("{}[{}]", self.path, items.len());
            let next = seq.next_element_seed(self.child(path.clone()));
            match self.note(&path, next)? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = join_field(&self.path, &key);
            if fields.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "field `{path}` is given twice"
                )));
            }
            let value = map.next_value_seed(self.child(path.clone()));
            let value = self.note(&path, value)?;
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

/// `parent.key`, the key shown escaped (it may hold anything).
fn join_field(parent: &str, key: &str) -> String {
    let key = escape(key, 60);
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

// ---------------------------------------------------------------------------
// Values in words
// ---------------------------------------------------------------------------

/// `text` on one line and inside double quotes: control characters and `\`
/// escaped as `human::escape` does (`\n`, `\x1b`, `\u{85}`), and `"` and the
/// characters that reorder or hide text too; cut after about `max` bytes
/// with `…`.
fn escape(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.char_indices() {
        if i >= max {
            out.push('…');
            break;
        }
        match c {
            '"' => out.push_str("\\\""),
            c if is_invisible(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push_str(&crate::human::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    out
}

/// Characters that would break or hide part of a one-line message.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{feff}')
}

/// A string value for a message: quoted and escaped.
fn quoted(text: &str) -> String {
    format!("\"{}\"", escape(text, 100))
}

/// What was found where something else was expected, in words.
fn found(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {}", quoted(s)),
        Value::Array(a) if a.is_empty() => "an empty list".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn expected(field: &str, what: &str, v: &Value) -> Problem {
    field_error(field, format!("expected {what}, found {}", found(v)))
}

// ---------------------------------------------------------------------------
// Fields
// ---------------------------------------------------------------------------

/// One JSON object of the job file (the job, `target`, `snapshots`) with the
/// fields it may hold.
struct Section<'a> {
    /// "" for the job itself, else "target." or "snapshots.".
    prefix: &'static str,
    fields: &'a Map<String, Value>,
}

const JOB_FIELDS: &[&str] = &[
    "version",
    "name",
    "source",
    "exclude",
    "source_snapshot",
    "password_file",
    "gocryptfs_config",
    "filenames",
    "target",
    "snapshots",
    "verify",
    "max_delete_percent",
    "state_dir",
    "runtime_dir",
    "password_credential",
];
const TARGET_FIELDS: &[&str] = &[
    "type",
    "path",
    "bwlimit",
    "space_warning_percent",
    // Fields from here on are for sftp targets only (SFTP_ONLY_FROM).
    "host",
    "port",
    "user",
    "identity_file",
    "known_hosts_file",
    "transport",
    "remote_checksums",
    "connections",
    "max_connections",
    "identity_credential",
];
/// The index in TARGET_FIELDS of the first field only an sftp target has.
const SFTP_ONLY_FROM: usize = 4;
const SNAPSHOTS_FIELDS: &[&str] = &["keep_last", "keep_days"];
const VERIFY_FIELDS: &[&str] = &["sample_bytes"];
const SECTIONS: &[(&str, &[&str])] = &[
    ("", JOB_FIELDS),
    ("target.", TARGET_FIELDS),
    ("snapshots.", SNAPSHOTS_FIELDS),
    ("verify.", VERIFY_FIELDS),
];

impl<'a> Section<'a> {
    /// The section at `v`, which must be an object holding only known fields.
    fn new(prefix: &'static str, what: &str, v: &'a Value) -> Checked<Section<'a>> {
        let Value::Object(fields) = v else {
            return Err(match prefix.strip_suffix('.') {
                Some(field) => expected(field, what, v),
                None => Problem {
                    at: None,
                    message: format!("{what}, found {}", found(v)),
                },
            });
        };
        let known = SECTIONS
            .iter()
            .find(|(p, _)| *p == prefix)
            .map_or(&[][..], |(_, k)| *k);
        if let Some(key) = fields.keys().find(|k| !known.contains(&k.as_str())) {
            let message = format!("unknown field `{}{}`", prefix, escape(key, 60));
            let hint = match suggest(prefix, key) {
                Some(s) => format!("; did you mean `{s}`?"),
                None => format!(
                    " ({} fields are: {})",
                    if prefix.is_empty() {
                        "the job's".to_string()
                    } else {
                        format!("`{}`'s", prefix.trim_end_matches('.'))
                    },
                    known.join(", ")
                ),
            };
            return Err(Problem {
                at: None,
                message: message + &hint,
            });
        }
        Ok(Section { prefix, fields })
    }

    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The field's value; absent and `null` are the same.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.fields.get(key).filter(|v| !v.is_null())
    }

    fn required(&self, key: &str) -> Checked<&'a Value> {
        self.get(key)
            .ok_or_else(|| field_error(&self.name(key), "is required but missing"))
    }

    /// An optional field read with `read(field name, value)`.
    fn optional<T>(
        &self,
        key: &str,
        read: impl FnOnce(&str, &Value) -> Checked<T>,
    ) -> Checked<Option<T>> {
        self.get(key).map(|v| read(&self.name(key), v)).transpose()
    }

    /// A required field read with `read(field name, value)`.
    fn read<T>(&self, key: &str, read: impl FnOnce(&str, &Value) -> Checked<T>) -> Checked<T> {
        read(&self.name(key), self.required(key)?)
    }
}

/// The known field an unknown one was probably meant to be: the same field
/// in another section (`host` at the top level), the same name in another
/// spelling (`maxDeletePercent`), or one a typo or two away.
fn suggest(prefix: &str, key: &str) -> Option<String> {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let typed = squash(key);
    if typed.is_empty() {
        return None;
    }
    let mut best: Option<(usize, String)> = None;
    for (section, fields) in SECTIONS {
        for field in *fields {
            let known = squash(field);
            let distance = if known == typed {
                0
            } else if *section != prefix {
                // Another section: only an exact match is a good guess.
                continue;
            } else if typed.len() >= 4 && known.starts_with(&typed) {
                1
            } else {
                edit_distance(&typed, &known)
            };
            let limit = if typed.len() < 5 { 1 } else { 2 };
            let full = format!("{section}{field}");
            if distance <= limit && best.as_ref().is_none_or(|(d, _)| distance < *d) {
                best = Some((distance, full));
            }
        }
    }
    best.map(|(_, field)| field)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(current + 1);
            previous = current;
        }
    }
    row[b.len()]
}

/// A whole number in `min..=max`; `words` says so ("a whole number 0–100").
fn whole(field: &str, v: &Value, min: u64, max: u64, words: &str) -> Checked<u64> {
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(expected(field, words, v)),
    }
}

fn string<'v>(field: &str, v: &'v Value, words: &str) -> Checked<&'v str> {
    v.as_str().ok_or_else(|| expected(field, words, v))
}

/// One of a few strings.
fn choice<T: Copy>(field: &str, v: &Value, options: &[(&str, T)]) -> Checked<T> {
    let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    let words = match names.as_slice() {
        [one] => one.clone(),
        [rest @ .., last] => format!("one of {} or {last}", rest.join(", ")),
        [] => "nothing".into(),
    };
    let given = v.as_str();
    options
        .iter()
        .find(|(n, _)| Some(*n) == given)
        .map(|(_, t)| *t)
        .ok_or_else(|| expected(field, &words, v))
}

/// No line break or other control character: they end lines in ssh_config,
/// vanish in rsync's remote arguments, and hide in messages.
fn no_control(field: &str, text: &str) -> Checked<()> {
    if text.chars().any(|c| c.is_control()) {
        return Err(field_error(
            field,
            format!(
                "must not contain a line break or other control character, found {}",
                quoted(text)
            ),
        ));
    }
    Ok(())
}

/// An absolute path without `..` and without control characters.
fn abs_path(field: &str, v: &Value) -> Checked<PathBuf> {
    let text = string(field, v, "an absolute path (a string)")?;
    if text.is_empty() {
        return Err(field_error(
            field,
            "expected an absolute path, found an empty string",
        ));
    }
    no_control(field, text)?;
    let p = PathBuf::from(text);
    if !p.is_absolute() {
        return Err(field_error(
            field,
            format!(
                "expected an absolute path (starting with /), found {}",
                quoted(text)
            ),
        ));
    }
    if p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(field_error(
            field,
            format!("must not contain `..`, found {}", quoted(text)),
        ));
    }
    Ok(p)
}

/// These paths go into the generated ssh_config: a `"` would end the quoted
/// value, a backslash is an escape there for some OpenSSH versions and not
/// others, and `${NAME}` is replaced by an environment variable (remote.rs
/// escapes `%`, which ssh would expand too).
fn ssh_config_safe(field: &str, path: &Path) -> Checked<()> {
    let text = path.to_string_lossy();
    if text.contains(['"', '\\']) || text.contains("${") {
        return Err(field_error(
            field,
            format!(
                "must not contain a double quote, a backslash or `${{` (it is written into \
                 ssh_config), found {}",
                quoted(&text)
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The job
// ---------------------------------------------------------------------------

fn resolve(tree: &Value) -> Checked<Job> {
    let job = Section::new("", "the job file must be a JSON object", tree)?;
    let version = job.read("version", |f, v| {
        whole(f, v, 0, u64::MAX, &format!("the number {CONFIG_VERSION}"))
    })?;
    if version != u64::from(CONFIG_VERSION) {
        return Err(field_error(
            "version",
            format!("expected the number {CONFIG_VERSION}, found the number {version}"),
        ));
    }
    let name = job.read("name", |f, v| {
        string(f, v, "a job name (a string)").map(str::to_string)
    })?;
    check_name(&name)?;
    let source = job.read("source", abs_path)?;
    let exclude = job
        .optional("exclude", exclude_patterns)?
        .unwrap_or_default();
    let source_snapshot = job.optional("source_snapshot", |f, v| {
        choice(
            f,
            v,
            &[
                ("btrfs", SnapshotKind::Btrfs),
                ("zfs", SnapshotKind::Zfs),
                ("lvm", SnapshotKind::Lvm),
            ],
        )
    })?;
    let password_file = job.read("password_file", abs_path)?;
    let gocryptfs_config = job
        .optional("gocryptfs_config", abs_path)?
        .unwrap_or_else(|| source.join(".gocryptfs.reverse.conf"));
    let filenames = job
        .optional("filenames", |f, v| {
            choice(
                f,
                v,
                &[
                    ("encrypted", Filenames::Encrypted),
                    ("plaintext", Filenames::Plaintext),
                    ("deterministic", Filenames::Deterministic),
                ],
            )
        })?
        .unwrap_or_default();
    let snapshots = match job.get("snapshots") {
        Some(v) => retention(v)?,
        None => Retention::default(),
    };
    let verify_sample_bytes = match job.get("verify") {
        Some(v) => sample_bytes(v)?,
        None => None,
    };
    let max_delete_percent = job
        .optional("max_delete_percent", |f, v| {
            whole(f, v, 0, 100, "a whole number 0–100 (a percentage)")
        })?
        .map_or(DEFAULT_MAX_DELETE_PERCENT, |n| n as u8);
    let state_dir = match job.optional("state_dir", abs_path)? {
        Some(p) => p,
        None => default_dir(DirKind::State, &name)?,
    };
    let runtime_dir = match job.optional("runtime_dir", abs_path)? {
        Some(p) => p,
        None => default_dir(DirKind::Runtime, &name)?,
    };
    let password_credential = job.optional("password_credential", credential_name)?;
    let TargetFields {
        target,
        bwlimit,
        space_warning_percent,
        identity_credential,
    } = resolve_target(job.required("target")?)?;
    if matches!(target, Target::Sftp(_)) {
        // The ssh master's ControlPath lies in it.
        ssh_config_safe("runtime_dir", &runtime_dir)?;
    }
    if let Target::Local { path } = &target
        && path.starts_with(&source)
    {
        return Err(field_error("target.path", "must not lie inside source"));
    }
    if filenames == Filenames::Plaintext && matches!(target, Target::Sftp(_)) {
        // With plaintext names gocryptfs keeps symlink targets in the clear,
        // and sshfs (used by backup and by every restore) refuses to read a
        // symlink whose target leaves the mount (`../x`, `/x`): such a backup
        // could be written once but never updated or restored.
        return Err(field_error(
            "filenames",
            "\"plaintext\" is only allowed for a local target: sshfs cannot read back symlinks \
             pointing outside the mount, which plaintext names store as they are \
             (use \"encrypted\" or \"deterministic\")",
        ));
    }
    Ok(Job {
        name,
        source,
        exclude,
        source_snapshot,
        password_file,
        gocryptfs_config,
        filenames,
        target,
        snapshots,
        verify_sample_bytes,
        max_delete_percent,
        state_dir,
        runtime_dir,
        bwlimit,
        space_warning_percent,
        password_credential,
        identity_credential,
    })
}

fn sample_bytes(v: &Value) -> Checked<Option<u64>> {
    let s = Section::new(
        "verify.",
        "an object such as {\"sample_bytes\": 268435456}",
        v,
    )?;
    s.optional("sample_bytes", |f, v| {
        whole(
            f,
            v,
            0,
            u64::MAX >> 1,
            "a whole number of bytes (0 turns the read-back off), or null for the default",
        )
    })
}

fn exclude_patterns(field: &str, v: &Value) -> Checked<Vec<String>> {
    let Value::Array(items) = v else {
        return Err(expected(field, "a list of strings (patterns)", v));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("{field}[{i}]");
            let pattern = string(&field, item, "a string (a pattern)")?;
            if pattern.trim().is_empty() {
                return Err(field_error(
                    &field,
                    format!(
                        "expected a pattern, found the blank string {}",
                        quoted(pattern)
                    ),
                ));
            }
            no_control(&field, pattern)?;
            Ok(pattern.to_string())
        })
        .collect()
}

fn retention(v: &Value) -> Checked<Retention> {
    let s = Section::new(
        "snapshots.",
        "an object such as {\"keep_last\": 30, \"keep_days\": 90}",
        v,
    )?;
    let max = u64::from(u32::MAX);
    let keep_last = s.optional("keep_last", |f, v| {
        whole(
            f,
            v,
            1,
            max,
            "a whole number of at least 1 (the newest run is always kept), or null",
        )
    })?;
    let keep_days = s.optional("keep_days", |f, v| {
        whole(f, v, 0, max, "a whole number of days (0 or more), or null")
    })?;
    Ok(Retention {
        keep_last: keep_last.map(|n| n as u32),
        keep_days: keep_days.map(|n| n as u32),
    })
}

/// sshfs connections (each carrying 4 rsync workers, split.rs): 4 halves
/// a backup at a 20 ms round trip against 1 and costs little on a fast
/// link (docs/benchmarks.md).
const DEFAULT_CONNECTIONS: u8 = 4;
const MAX_CONNECTIONS: u8 = 16;

/// The target, with the fields the Job keeps apart: `bwlimit` and
/// `identity_credential`.
struct TargetFields {
    target: Target,
    bwlimit: Option<u32>,
    space_warning_percent: u8,
    identity_credential: Option<String>,
}

/// Warn when less than this share of the target's space is free.
pub const DEFAULT_SPACE_WARNING_PERCENT: u8 = 10;

/// rsync takes up to 4 GiB/s written in KiB; more is no bound at all.
const MAX_BWLIMIT_KIB: u64 = 4 * 1024 * 1024;

fn resolve_target(v: &Value) -> Checked<TargetFields> {
    let t = Section::new("target.", "an object", v)?;
    let sftp = t.read("type", |f, v| {
        choice(f, v, &[("sftp", true), ("local", false)])
    })?;
    let path = t.read("path", abs_path)?;
    let bwlimit = t
        .optional("bwlimit", |f, v| {
            whole(
                f,
                v,
                1,
                MAX_BWLIMIT_KIB,
                &format!("a whole number of KiB/s, 1–{MAX_BWLIMIT_KIB}, or null for no bound"),
            )
        })?
        .map(|n| n as u32);
    let space_warning_percent = t
        .optional("space_warning_percent", |f, v| {
            whole(
                f,
                v,
                0,
                99,
                "a whole number 0–99 (a percentage; 0: never warn)",
            )
        })?
        .map_or(DEFAULT_SPACE_WARNING_PERCENT, |n| n as u8);
    Ok(TargetFields {
        bwlimit,
        space_warning_percent,
        ..resolve_target_kind(&t, sftp, path)?
    })
}

fn resolve_target_kind(t: &Section, sftp: bool, path: PathBuf) -> Checked<TargetFields> {
    let done = |target| TargetFields {
        target,
        bwlimit: None,
        space_warning_percent: DEFAULT_SPACE_WARNING_PERCENT,
        identity_credential: None,
    };
    if !sftp {
        if let Some(field) = TARGET_FIELDS[SFTP_ONLY_FROM..]
            .iter()
            .find(|f| t.get(f).is_some())
        {
            return Err(field_error(
                &t.name(field),
                "is only allowed for a target of type \"sftp\"",
            ));
        }
        return Ok(done(Target::Local { path }));
    }
    let host = t.read("host", |f, v| {
        check_host(f, string(f, v, "a host name or IP address (a string)")?)
    })?;
    let user = t.read("user", |f, v| {
        check_user(f, string(f, v, "a login name (a string)")?)
    })?;
    let port = t
        .optional("port", |f, v| {
            whole(f, v, 1, 65535, "a whole number 1–65535")
        })?
        .map_or(22, |n| n as u16);
    let known_hosts_file = t.optional("known_hosts_file", abs_path)?.ok_or_else(|| {
        field_error(
            "target.known_hosts_file",
            "is required for an sftp target: host keys are always checked",
        )
    })?;
    ssh_config_safe("target.known_hosts_file", &known_hosts_file)?;
    let identity_file = t.optional("identity_file", abs_path)?;
    if let Some(id) = &identity_file {
        ssh_config_safe("target.identity_file", id)?;
    }
    let transport = t
        .optional("transport", |f, v| {
            choice(
                f,
                v,
                &[("sshfs", Transport::Sshfs), ("rsync", Transport::Rsync)],
            )
        })?
        .unwrap_or(Transport::Sshfs);
    let remote_checksums = t
        .optional("remote_checksums", |f, v| {
            choice(
                f,
                v,
                &[
                    ("auto", RemoteChecksums::Auto),
                    ("ssh", RemoteChecksums::Ssh),
                    ("mount", RemoteChecksums::Mount),
                ],
            )
        })?
        .unwrap_or(RemoteChecksums::Auto);
    let connections = t
        .optional("connections", |f, v| {
            whole(
                f,
                v,
                1,
                u64::from(MAX_CONNECTIONS),
                &format!("a whole number 1–{MAX_CONNECTIONS}"),
            )
        })?
        .map_or(DEFAULT_CONNECTIONS, |n| n as u8);
    let max_connections = t
        .optional("max_connections", |f, v| {
            whole(
                f,
                v,
                crate::budget::MIN as u64,
                crate::budget::MAX as u64,
                &format!(
                    "a whole number {}–{} (a stage needs one sshfs connection and one command \
                     beside it; target.connections is cut to fit)",
                    crate::budget::MIN,
                    crate::budget::MAX
                ),
            )
        })?
        .map_or(crate::budget::DEFAULT, |n| n as usize);
    let identity_credential = t.optional("identity_credential", credential_name)?;
    if identity_credential.is_some() && identity_file.is_none() {
        return Err(field_error(
            "target.identity_credential",
            "needs target.identity_file too: the file is what commands run by hand \
             (outside a systemd unit) read",
        ));
    }
    Ok(TargetFields {
        identity_credential,
        ..done(Target::Sftp(Sftp {
            host,
            port,
            user,
            path,
            identity_file,
            known_hosts_file,
            transport,
            remote_checksums,
            connections: usize::from(connections),
            max_connections,
        }))
    })
}

/// A systemd credential name (LoadCredential=NAME:PATH): a file name in
/// $CREDENTIALS_DIRECTORY.
fn credential_name(field: &str, v: &Value) -> Checked<String> {
    let name = string(field, v, "a credential name (a string)")?;
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(name.to_string())
    } else {
        Err(field_error(
            field,
            format!(
                "expected a credential name (1-64 of A-Z a-z 0-9 - _ ., not starting with .), found {}",
                quoted(name)
            ),
        ))
    }
}

/// Inside a systemd unit with credentials ($CREDENTIALS_DIRECTORY, `dir`),
/// the password and the identity named by `password_credential` and
/// `target.identity_credential` replace `password_file` and
/// `target.identity_file`; without `dir` (a command run by hand) the files
/// stay. A credential the unit was not given is an error that names the
/// field: falling back to the file would hide a unit without LoadCredential=.
pub fn use_credentials(job: &mut Job, dir: Option<&Path>) -> Result<()> {
    let Some(dir) = dir else {
        return Ok(());
    };
    let find = |field: &str, name: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        if !dir.is_absolute() || !path.is_file() {
            return Err(Error::usage(format!(
                "field `{field}`: no credential {} in $CREDENTIALS_DIRECTORY ({}): the unit \
                 needs LoadCredential={name}:<file>",
                quoted(name),
                escape(&dir.display().to_string(), 200)
            )));
        }
        Ok(path)
    };
    if let Some(name) = &job.password_credential {
        job.password_file = find("password_credential", name)?;
    }
    if let (Some(name), Target::Sftp(s)) = (&job.identity_credential, &mut job.target) {
        let path = find("target.identity_credential", name)?;
        ssh_config_safe("target.identity_credential", &path)
            .map_err(|p| Error::usage(p.to_string()))?;
        s.identity_file = Some(path);
    }
    Ok(())
}

/// Job names become file and unit names: keep them to a safe alphabet.
fn check_name(name: &str) -> Checked<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(field_error(
            "name",
            format!(
                "expected 1-64 characters of A-Z a-z 0-9 - _ . (not starting with . or -), found {}",
                quoted(name)
            ),
        ))
    }
}

/// The login name goes into ssh_config's `User` line (never into a
/// `user@host` argument): letters, digits, `_ - .`, and `@` for providers
/// whose logins look like mail addresses; nothing ssh could read as an
/// option, a token (`%`) or a second line.
fn check_user(field: &str, user: &str) -> Checked<String> {
    let ok = !user.is_empty()
        && user.len() <= 128
        && !user.starts_with(['-', '@'])
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.@".contains(c));
    if ok {
        Ok(user.to_string())
    } else {
        Err(field_error(
            field,
            format!(
                "expected a login name (1-128 of A-Z a-z 0-9 _ - . @, not starting with - or @), found {}",
                quoted(user)
            ),
        ))
    }
}

/// A host goes into ssh_config's `HostName` and ssh's messages: a DNS name,
/// an IPv4 address, or an IPv6 address (bare or in brackets, no zone).
fn check_host(field: &str, host: &str) -> Checked<String> {
    let dns_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    };
    let ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|a| a.parse::<Ipv6Addr>().is_ok())
    } else if host.contains(':') {
        host.parse::<Ipv6Addr>().is_ok()
    } else if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        host.parse::<Ipv4Addr>().is_ok()
    } else {
        let name = host.strip_suffix('.').unwrap_or(host);
        name.len() <= 253 && name.split('.').all(dns_label)
    };
    if ok {
        Ok(host.to_string())
    } else {
        Err(field_error(
            field,
            format!(
                "expected a host name, an IPv4 address or an IPv6 address, found {}",
                quoted(host)
            ),
        ))
    }
}

enum DirKind {
    State,
    Runtime,
}

/// Defaults follow systemd's StateDirectory/RuntimeDirectory for root and the
/// XDG base directories for everyone else.
fn default_dir(kind: DirKind, name: &str) -> Checked<PathBuf> {
    let root = nix::unistd::geteuid().is_root();
    let base = match (kind, root) {
        (DirKind::State, true) => PathBuf::from("/var/lib/ciphersync"),
        (DirKind::Runtime, true) => PathBuf::from("/run/ciphersync"),
        (DirKind::State, false) => xdg_dir("XDG_STATE_HOME", ".local/state")?.join("ciphersync"),
        (DirKind::Runtime, false) => match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d).join("ciphersync"),
            _ => {
                return Err(field_error(
                    "runtime_dir",
                    "is not set and XDG_RUNTIME_DIR is not set either: set one of them",
                ));
            }
        },
    };
    Ok(base.join(name))
}

fn xdg_dir(var: &str, fallback_in_home: &str) -> Checked<PathBuf> {
    if let Some(d) = std::env::var_os(var).filter(|d| Path::new(d).is_absolute()) {
        return Ok(PathBuf::from(d));
    }
    match std::env::var_os("HOME").filter(|h| Path::new(h).is_absolute()) {
        Some(home) => Ok(PathBuf::from(home).join(fallback_in_home)),
        None => Err(Problem {
            at: None,
            message: format!("neither {var} nor HOME is set"),
        }),
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
      "version": 1, "name": "docs", "source": "/srv/docs",
      "exclude": ["*.tmp"], "password_file": "/run/keys/docs",
      "target": { "type": "sftp", "host": "backup.example.org", "user": "docs",
                  "path": "/backups/docs", "known_hosts_file": "/etc/ciphersync/known_hosts" },
      "state_dir": "/var/lib/ciphersync/docs", "runtime_dir": "/run/ciphersync/docs"
    }"#;

    fn error_of(text: &str) -> String {
        parse(text).unwrap_err().message
    }

    fn with(replace: &str, by: &str) -> String {
        assert!(GOOD.contains(replace), "fixture lacks {replace}");
        GOOD.replace(replace, by)
    }

    /// GOOD with a top-level `"key": value` (given as that text) replacing
    /// the field of that key, or added.
    fn set_field(field: &str) -> String {
        let key = &field[..field.find(':').unwrap()];
        match GOOD.find(key) {
            Some(start) => {
                let end = start + GOOD[start..].find(['\n', ',']).unwrap();
                format!("{}{field}{}", &GOOD[..start], &GOOD[end..])
            }
            None => with(
                r#""name": "docs","#,
                &format!(r#""name": "docs", {field},"#),
            ),
        }
    }

    #[test]
    fn source_snapshot_takes_a_kind_or_nothing() {
        assert_eq!(parse(GOOD).unwrap().source_snapshot, None);
        for (text, kind) in [
            ("btrfs", SnapshotKind::Btrfs),
            ("zfs", SnapshotKind::Zfs),
            ("lvm", SnapshotKind::Lvm),
        ] {
            let job = parse(&set_field(&format!(r#""source_snapshot": "{text}""#))).unwrap();
            assert_eq!(job.source_snapshot, Some(kind));
            assert_eq!(kind.name(), text);
        }
        let job = parse(&set_field(r#""source_snapshot": null"#)).unwrap();
        assert_eq!(job.source_snapshot, None);
        assert_eq!(
            error_of(&set_field(r#""source_snapshot": "ext4""#)),
            r#"field `source_snapshot`: expected one of "btrfs", "zfs" or "lvm", found the string "ext4""#
        );
    }

    #[test]
    fn good_file_gets_defaults() {
        let job = parse(GOOD).unwrap();
        assert_eq!(
            job.gocryptfs_config,
            PathBuf::from("/srv/docs/.gocryptfs.reverse.conf")
        );
        assert!(job.config_in_source());
        assert_eq!(job.filenames, Filenames::Encrypted);
        assert_eq!(job.max_delete_percent, 50);
        let Target::Sftp(s) = &job.target else {
            panic!("sftp expected")
        };
        assert_eq!(s.port, 22);
        assert_eq!(s.transport, Transport::Sshfs);
        assert_eq!(s.remote_checksums, RemoteChecksums::Auto);
        assert_eq!(s.connections, 4);
        assert_eq!(
            job.target_label(),
            "docs@backup.example.org:22:/backups/docs"
        );
    }

    #[test]
    fn the_design_example_parses() {
        let text = r#"{
          "version": 1, "name": "docs", "source": "/srv/docs", "exclude": ["*.tmp", "cache/"],
          "password_file": "/run/keys/ciphersync-docs",
          "gocryptfs_config": "/var/lib/ciphersync/docs/gocryptfs.reverse.conf",
          "filenames": "encrypted",
          "target": { "type": "sftp", "host": "backup.example.org", "port": 22, "user": "docs",
            "path": "/backups/docs", "identity_file": "/var/lib/ciphersync/docs/id_ed25519",
            "known_hosts_file": "/etc/ciphersync/known_hosts", "transport": "sshfs",
            "remote_checksums": "ssh" },
          "snapshots": { "keep_last": 30, "keep_days": 90 },
          "state_dir": "/var/lib/ciphersync/docs", "runtime_dir": "/run/ciphersync/docs"
        }"#;
        let job = parse(text).unwrap();
        assert!(!job.config_in_source());
        assert_eq!(
            job.snapshots,
            Retention {
                keep_last: Some(30),
                keep_days: Some(90)
            }
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let e = error_of(&with(r#""name": "docs""#, r#""name": "docs", "colour": 1"#));
        assert!(e.contains("colour"), "{e}");
        let e = error_of(&with(
            r#""user": "docs""#,
            r#""user": "docs", "pasword": "x""#,
        ));
        assert!(e.contains("target") && e.contains("pasword"), "{e}");
    }

    #[test]
    fn relative_path_is_named() {
        let e = error_of(&with(r#""/srv/docs""#, r#""srv/docs""#));
        assert!(e.contains("`source`") && e.contains("absolute"), "{e}");
        let e = error_of(&with(
            r#""/etc/ciphersync/known_hosts""#,
            r#""known_hosts""#,
        ));
        assert!(e.contains("target.known_hosts_file"), "{e}");
    }

    #[test]
    fn bad_enum_value_is_named() {
        let e = error_of(&with(
            r#""type": "sftp","#,
            r#""type": "sftp", "transport": "scp","#,
        ));
        assert!(e.contains("target.transport") && e.contains("scp"), "{e}");
    }

    #[test]
    fn missing_required_field_is_named() {
        let e = error_of(&with(r#""password_file": "/run/keys/docs","#, ""));
        assert!(e.contains("password_file"), "{e}");
        let e = error_of(&with(r#""host": "backup.example.org","#, ""));
        assert!(e.contains("target.host"), "{e}");
    }

    #[test]
    fn sftp_needs_known_hosts() {
        let e = error_of(&with(
            r#", "known_hosts_file": "/etc/ciphersync/known_hosts""#,
            "",
        ));
        assert!(
            e.contains("target.known_hosts_file") && e.contains("host keys"),
            "{e}"
        );
    }

    #[test]
    fn connections_are_bounded_and_sftp_only() {
        let set = |n: &str| {
            with(
                r#""type": "sftp","#,
                &format!(r#""type": "sftp", "connections": {n},"#),
            )
        };
        let Target::Sftp(s) = parse(&set("16")).unwrap().target else {
            panic!("sftp expected")
        };
        assert_eq!(s.connections, 16);
        for bad in ["0", "17"] {
            let e = error_of(&set(bad));
            assert_eq!(
                e,
                format!(
                    "field `target.connections`: expected a whole number 1–16, found the number {bad}"
                )
            );
        }
        let local = r#"{ "version": 1, "name": "usb", "source": "/srv/docs",
            "password_file": "/run/keys/docs",
            "target": { "type": "local", "path": "/mnt/usb/docs", "connections": 2 } }"#;
        let e = error_of(local);
        assert!(
            e.contains("target.connections") && e.contains("sftp"),
            "{e}"
        );
    }

    #[test]
    fn max_connections_has_a_floor_and_a_default_and_is_sftp_only() {
        let set = |n: &str| {
            with(
                r#""type": "sftp","#,
                &format!(r#""type": "sftp", "max_connections": {n},"#),
            )
        };
        let Target::Sftp(s) = parse(&set("3")).unwrap().target else {
            panic!("sftp expected")
        };
        assert_eq!(s.max_connections, 3);
        let Target::Sftp(s) = parse(GOOD).unwrap().target else {
            panic!("sftp expected")
        };
        assert_eq!(s.max_connections, crate::budget::DEFAULT);
        for bad in ["1", "0", "65", "\"8\""] {
            let e = error_of(&set(bad));
            assert!(
                e.starts_with("field `target.max_connections`: expected a whole number 2–64")
                    && e.contains("target.connections is cut to fit"),
                "{bad}: {e}"
            );
        }
        let local = r#"{ "version": 1, "name": "usb", "source": "/srv/docs",
            "password_file": "/run/keys/docs",
            "target": { "type": "local", "path": "/mnt/usb/docs", "max_connections": 4 } }"#;
        let e = error_of(local);
        assert!(
            e.contains("target.max_connections") && e.contains("sftp"),
            "{e}"
        );
    }

    #[test]
    fn local_target_refuses_ssh_fields() {
        let e = error_of(&with(r#""type": "sftp""#, r#""type": "local""#));
        assert!(e.contains("target.host") && e.contains("sftp"), "{e}");
    }

    #[test]
    fn plaintext_names_only_for_local_targets() {
        let e = error_of(&with(
            r#""name": "docs","#,
            r#""name": "docs", "filenames": "plaintext","#,
        ));
        assert!(e.contains("`filenames`") && e.contains("local"), "{e}");
        let local = with(
            r#""name": "docs","#,
            r#""name": "docs", "filenames": "plaintext","#,
        )
        .replace(
            r#""type": "sftp", "host": "backup.example.org", "user": "docs","#,
            r#""type": "local","#,
        )
        .replace(r#", "known_hosts_file": "/etc/ciphersync/known_hosts""#, "");
        assert!(parse(&local).is_ok(), "{local}");
    }

    /// The type errors say in words what the field takes and show what was
    /// found.
    #[test]
    fn type_errors_say_what_is_expected() {
        let cases = [
            (
                r#""max_delete_percent": "50""#,
                r#"field `max_delete_percent`: expected a whole number 0–100 (a percentage), found the string "50""#,
            ),
            (
                r#""max_delete_percent": 50.5"#,
                "field `max_delete_percent`: expected a whole number 0–100 (a percentage), found the number 50.5",
            ),
            (
                r#""max_delete_percent": 101"#,
                "field `max_delete_percent`: expected a whole number 0–100 (a percentage), found the number 101",
            ),
            (
                r#""filenames": 3"#,
                r#"field `filenames`: expected one of "encrypted", "plaintext" or "deterministic", found the number 3"#,
            ),
            (
                r#""exclude": "*.tmp""#,
                r#"field `exclude`: expected a list of strings (patterns), found the string "*.tmp""#,
            ),
            (
                r#""exclude": ["a", ["b"]]"#,
                "field `exclude[1]`: expected a string (a pattern), found a list",
            ),
            (
                r#""snapshots": [30, 90]"#,
                r#"field `snapshots`: expected an object such as {"keep_last": 30, "keep_days": 90}, found a list"#,
            ),
            (
                r#""snapshots": {"keep_last": 0}"#,
                "field `snapshots.keep_last`: expected a whole number of at least 1 (the newest run is always kept), or null, found the number 0",
            ),
            (
                r#""snapshots": {"keep_days": -1}"#,
                "field `snapshots.keep_days`: expected a whole number of days (0 or more), or null, found the number -1",
            ),
            (
                r#""state_dir": true"#,
                "field `state_dir`: expected an absolute path (a string), found true",
            ),
        ];
        for (field, message) in cases {
            let text = set_field(field);
            assert_eq!(error_of(&text), message, "{text}");
        }
        let target_cases = [
            (
                r#""port": "22""#,
                r#"field `target.port`: expected a whole number 1–65535, found the string "22""#,
            ),
            (
                r#""port": 0"#,
                "field `target.port`: expected a whole number 1–65535, found the number 0",
            ),
            (
                r#""connections": 17"#,
                "field `target.connections`: expected a whole number 1–16, found the number 17",
            ),
            (
                r#""transport": "scp""#,
                r#"field `target.transport`: expected one of "sshfs" or "rsync", found the string "scp""#,
            ),
            (
                r#""identity_file": "id_ed25519""#,
                r#"field `target.identity_file`: expected an absolute path (starting with /), found "id_ed25519""#,
            ),
        ];
        for (field, message) in target_cases {
            let text = with(
                r#""type": "sftp","#,
                &format!(r#"{field}, "type": "sftp","#),
            );
            assert_eq!(error_of(&text), message, "{text}");
        }
        assert_eq!(
            error_of(&with(r#""type": "sftp""#, r#""type": "ftp""#)),
            r#"field `target.type`: expected one of "sftp" or "local", found the string "ftp""#
        );
        assert_eq!(
            error_of(&with(r#""version": 1"#, r#""version": "1""#)),
            r#"field `version`: expected the number 1, found the string "1""#
        );
        assert_eq!(
            error_of("[1, 2]"),
            "the job file must be a JSON object, found a list"
        );
        assert_eq!(
            error_of(&with(
                r#""name": "docs","#,
                r#""name": "docs", "target": [],"#
            )),
            "line 4, column 14: field `target` is given twice"
        );
    }

    /// JSON syntax errors say where, in lines and columns from 1.
    #[test]
    fn syntax_errors_give_line_and_column() {
        let trailing = "{\n  \"version\": 1,\n  \"name\": \"docs\",\n}\n";
        assert_eq!(
            error_of(trailing),
            "line 4, column 1: not valid JSON: trailing comma"
        );
        assert_eq!(
            error_of("{\n  \"version\": 1\n  \"name\": \"docs\"\n}"),
            "line 3, column 3: not valid JSON: expected `,` or `}`"
        );
        assert_eq!(
            error_of("{\n  \"version\": 1,"),
            "line 2, column 15: not valid JSON: the text ends where a value should be"
        );
        assert_eq!(
            error_of("{\n  \"version\": 1,\n  \"exclude\": [\"a\" \"b\"]}"),
            "line 3, column 19: not valid JSON in field `exclude[1]`: expected `,` or `]`"
        );
        assert_eq!(
            error_of("{\n  \"target\": {\"type\": sftp}}"),
            "line 2, column 22: not valid JSON in field `target.type`: expected value"
        );
        assert_eq!(
            error_of("{\"version\": 1, \"name\": \"a"),
            "line 1, column 25: not valid JSON in field `name`: the text ends inside a string"
        );
        assert_eq!(
            error_of(&format!("{GOOD}\n}}")),
            "line 8, column 1: not valid JSON: text after the job object"
        );
        let e = error_of(&with(
            r#""user": "docs""#,
            r#""user": "docs", "user": "root""#,
        ));
        assert!(
            e.starts_with("line 4, column ") && e.ends_with(": field `target.user` is given twice"),
            "{e}"
        );
    }

    /// The file name goes before the line and column.
    #[test]
    fn load_names_file_line_and_column() {
        let dir = std::env::temp_dir().join(format!("ciphersync-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("job.json");
        std::fs::write(&file, "{\n  \"version\": 1,\n}").unwrap();
        let e = load(&file).unwrap_err().message;
        std::fs::write(&file, with(r#""version": 1"#, r#""version": 2"#)).unwrap();
        let e2 = load(&file).unwrap_err().message;
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            e,
            format!(
                "{} line 3, column 1: not valid JSON: trailing comma",
                file.display()
            )
        );
        assert_eq!(
            e2,
            format!(
                "{}: field `version`: expected the number 1, found the number 2",
                file.display()
            )
        );
    }

    #[test]
    fn unknown_fields_suggest_the_closest() {
        let add = |field: &str| {
            with(
                r#""name": "docs","#,
                &format!(r#""name": "docs", {field},"#),
            )
        };
        let add_target = |field: &str| {
            with(
                r#""type": "sftp","#,
                &format!(r#""type": "sftp", {field},"#),
            )
        };
        for (text, message) in [
            (
                add(r#""max_delete_percnt": 5"#),
                "unknown field `max_delete_percnt`; did you mean `max_delete_percent`?",
            ),
            (
                add(r#""maxDeletePercent": 5"#),
                "unknown field `maxDeletePercent`; did you mean `max_delete_percent`?",
            ),
            (
                add(r#""host": "x""#),
                "unknown field `host`; did you mean `target.host`?",
            ),
            (
                add_target(r#""identityFile": "/k""#),
                "unknown field `target.identityFile`; did you mean `target.identity_file`?",
            ),
            (
                add_target(r#""knownHosts": "/k""#),
                "unknown field `target.knownHosts`; did you mean `target.known_hosts_file`?",
            ),
            (
                add(r#""snapshots": {"keep_day": 3}"#),
                "unknown field `snapshots.keep_day`; did you mean `snapshots.keep_days`?",
            ),
            (
                add(r#""colour": 1"#),
                "unknown field `colour` (the job's fields are: version, name, source, exclude, \
                 source_snapshot, password_file, gocryptfs_config, filenames, target, snapshots, verify, \
                 max_delete_percent, state_dir, runtime_dir, password_credential)",
            ),
            (
                add_target(r#""a\nb": 1"#),
                "unknown field `target.a\\nb` (`target`'s fields are: type, path, bwlimit, \
                 space_warning_percent, host, port, user, identity_file, known_hosts_file, \
                 transport, remote_checksums, connections, max_connections, identity_credential)",
            ),
        ] {
            assert_eq!(error_of(&text), message, "{text}");
        }
    }

    #[test]
    fn space_warning_percent_is_bounded_and_named() {
        let target = |field: &str| {
            with(
                r#""type": "sftp","#,
                &format!(r#""type": "sftp", {field},"#),
            )
        };
        assert_eq!(
            parse(GOOD).unwrap().space_warning_percent,
            DEFAULT_SPACE_WARNING_PERCENT
        );
        assert_eq!(
            parse(&target(r#""space_warning_percent": 0"#))
                .unwrap()
                .space_warning_percent,
            0
        );
        for bad in ["100", "-1", "\"10\"", "2.5"] {
            let e = error_of(&target(&format!(r#""space_warning_percent": {bad}"#)));
            assert!(
                e.starts_with("field `target.space_warning_percent`: expected a whole number 0–99"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn bwlimit_is_bounded_and_named() {
        let target = |field: &str| {
            with(
                r#""type": "sftp","#,
                &format!(r#""type": "sftp", {field},"#),
            )
        };
        assert_eq!(
            parse(&target(r#""bwlimit": 2048"#)).unwrap().bwlimit,
            Some(2048)
        );
        assert_eq!(parse(GOOD).unwrap().bwlimit, None);
        for (bad, found) in [
            ("0", "the number 0"),
            ("4194305", "the number 4194305"),
            (r#""1m""#, r#"the string "1m""#),
            ("1.5", "the number 1.5"),
        ] {
            let e = error_of(&target(&format!(r#""bwlimit": {bad}"#)));
            assert_eq!(
                e,
                format!(
                    "field `target.bwlimit`: expected a whole number of KiB/s, 1–4194304, \
                     or null for no bound, found {found}"
                ),
                "{bad}"
            );
        }
        // A local target takes it too (a USB disk shared with others).
        let local = r#"{ "version": 1, "name": "docs", "source": "/srv/docs",
            "password_file": "/run/keys/docs", "state_dir": "/s", "runtime_dir": "/r",
            "target": { "type": "local", "path": "/mnt/usb/docs", "bwlimit": 100 } }"#;
        assert_eq!(parse(local).unwrap().bwlimit, Some(100));
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn credentials_replace_the_files_inside_a_unit() {
        let text = with(
            r#""type": "sftp","#,
            r#""type": "sftp", "identity_file": "/var/lib/ciphersync/docs/id_ed25519",
               "identity_credential": "identity","#,
        )
        .replace(
            r#""password_file": "/run/keys/docs","#,
            r#""password_file": "/run/keys/docs", "password_credential": "password","#,
        );
        let job = parse(&text).unwrap();
        // Run by hand: the files the job names.
        let mut by_hand = job.clone();
        use_credentials(&mut by_hand, None).unwrap();
        assert_eq!(by_hand.password_file, Path::new("/run/keys/docs"));
        // In a unit: $CREDENTIALS_DIRECTORY/<name>.
        let dir = TempDir(
            std::env::temp_dir().join(format!("ciphersync-credentials-{}", std::process::id())),
        );
        std::fs::create_dir_all(dir.path()).unwrap();
        std::fs::write(dir.path().join("password"), "secret\n").unwrap();
        std::fs::write(dir.path().join("identity"), "key\n").unwrap();
        let mut in_unit = job.clone();
        use_credentials(&mut in_unit, Some(dir.path())).unwrap();
        assert_eq!(in_unit.password_file, dir.path().join("password"));
        let Target::Sftp(s) = &in_unit.target else {
            panic!("not sftp")
        };
        assert_eq!(
            s.identity_file.as_deref(),
            Some(&*dir.path().join("identity"))
        );
        // A unit without the credential: an error naming the field, never
        // the file behind the unit's back.
        std::fs::remove_file(dir.path().join("identity")).unwrap();
        let mut missing = job.clone();
        let e = use_credentials(&mut missing, Some(dir.path()))
            .unwrap_err()
            .message;
        assert!(
            e.starts_with("field `target.identity_credential`: no credential \"identity\"")
                && e.contains("LoadCredential=identity:<file>"),
            "{e}"
        );
    }

    #[test]
    fn credential_fields_are_checked() {
        let e = error_of(&set_field(r#""password_credential": "../etc/shadow""#));
        assert!(
            e.starts_with("field `password_credential`: expected a credential name"),
            "{e}"
        );
        let e = error_of(&with(
            r#""type": "sftp","#,
            r#""type": "sftp", "identity_credential": "identity","#,
        ));
        assert!(
            e.starts_with("field `target.identity_credential`: needs target.identity_file"),
            "{e}"
        );
        let local = r#"{ "version": 1, "name": "docs", "source": "/srv/docs",
            "password_file": "/run/keys/docs", "state_dir": "/s", "runtime_dir": "/r",
            "target": { "type": "local", "path": "/mnt/usb/docs", "identity_credential": "id" } }"#;
        let e = error_of(local);
        assert_eq!(
            e,
            "field `target.identity_credential`: is only allowed for a target of type \"sftp\""
        );
    }

    /// A line break in `user` would add a line to ssh_config (a ProxyCommand).
    #[test]
    fn user_is_a_login_name() {
        let user = |u: &str| {
            with(
                r#""user": "docs""#,
                &format!(r#""user": {}"#, Value::from(u)),
            )
        };
        for good in [
            "docs",
            "u123456",
            "backup_1.x-y",
            "docs@example.org",
            "Docs",
        ] {
            let Target::Sftp(s) = parse(&user(good)).unwrap().target else {
                panic!("sftp expected")
            };
            assert_eq!(s.user, good);
        }
        assert_eq!(
            error_of(&user("root\nProxyCommand=touch /tmp/owned")),
            "field `target.user`: expected a login name (1-128 of A-Z a-z 0-9 _ - . @, not \
             starting with - or @), found \"root\\nProxyCommand=touch /tmp/owned\""
        );
        for bad in [
            "",
            "-oProxyCommand=x",
            "@x",
            "a b",
            "a\tb",
            "a%d",
            "a/b",
            "a\"b",
            "é",
            &"x".repeat(129),
        ] {
            let e = error_of(&user(bad));
            assert!(
                e.starts_with("field `target.user`: expected a login name"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn host_is_a_name_or_an_address() {
        let host = |h: &str| with(r#""backup.example.org""#, &Value::from(h).to_string());
        for good in [
            "backup.example.org",
            "backup.example.org.",
            "localhost",
            "u123.your-storagebox.de",
            "_sftp.internal",
            "127.0.0.1",
            "::1",
            "[::1]",
            "[2001:db8::1]",
        ] {
            assert!(
                parse(&host(good)).is_ok(),
                "{good:?}: {}",
                error_of(&host(good))
            );
        }
        for bad in [
            "",
            "-oProxyCommand=x",
            "a b",
            "host\nProxyCommand x",
            "a..b",
            "-a.b",
            "a-.b",
            "999.1.1.1",
            "1.2.3",
            "fe80::1%eth0",
            "[::1",
            "[backup.example.org]",
            "a%h",
            "user@host",
            &format!("{}.org", "a".repeat(64)),
        ] {
            let e = error_of(&host(bad));
            assert!(
                e.starts_with("field `target.host`: expected a host name, an IPv4 address or an IPv6 address, found \""),
                "{bad:?}: {e}"
            );
        }
    }

    /// Every path field and exclude pattern refuses control characters,
    /// naming the field and showing the value escaped.
    #[test]
    fn paths_refuse_control_characters() {
        let fields = [
            ("source", "/srv/docs"),
            ("password_file", "/run/keys/docs"),
            ("state_dir", "/var/lib/ciphersync/docs"),
            ("runtime_dir", "/run/ciphersync/docs"),
            ("target.path", "/backups/docs"),
            ("target.known_hosts_file", "/etc/ciphersync/known_hosts"),
        ];
        for (field, value) in fields {
            for (bad, shown) in [
                ("\n", "\\n"),
                ("\r", "\\r"),
                ("\u{1b}", "\\x1b"),
                ("\u{7f}", "\\x7f"),
                ("\u{85}", "\\u{85}"),
            ] {
                let text = GOOD.replacen(
                    &format!("\"{value}\""),
                    &Value::from(format!("{value}{bad}x")).to_string(),
                    1,
                );
                assert_eq!(
                    error_of(&text),
                    format!(
                        "field `{field}`: must not contain a line break or other control \
                         character, found \"{value}{shown}x\""
                    ),
                    "{text}"
                );
            }
        }
        let add = |field: &str, v: &str| {
            with(
                r#""name": "docs","#,
                &format!(r#""name": "docs", "{field}": {},"#, Value::from(v)),
            )
        };
        assert_eq!(
            error_of(&add("gocryptfs_config", "/x\n/y")),
            "field `gocryptfs_config`: must not contain a line break or other control \
             character, found \"/x\\n/y\""
        );
        assert_eq!(
            error_of(&with(r#"["*.tmp"]"#, r#"["*.tmp", "a\tb"]"#)),
            "field `exclude[1]`: must not contain a line break or other control \
             character, found \"a\\tb\""
        );
        let e = error_of(&with(
            r#""type": "sftp","#,
            r#""type": "sftp", "identity_file": "/k/id\u0000","#,
        ));
        assert!(
            e.starts_with("field `target.identity_file`: must not contain a line break"),
            "{e}"
        );
    }

    /// Long values are cut in messages; a message is one line.
    #[test]
    fn bad_values_are_shown_short_and_on_one_line() {
        let long = format!("/{}\n", "x".repeat(300));
        let e = error_of(&GOOD.replace("\"/srv/docs\"", &Value::from(long).to_string()));
        assert!(!e.contains('\n'), "{e}");
        assert!(e.len() < 250, "{} bytes: {e}", e.len());
        assert!(
            e.ends_with(&format!("found \"/{}…\"", "x".repeat(99))),
            "{e}"
        );
        assert_eq!(
            escape("a\u{2028}b\u{202e}c\\\"", 100),
            "a\\u{2028}b\\u{202e}c\\\\\\\""
        );
        assert_eq!(escape("ééé", 3), "éé…");
    }

    /// Paths written into ssh_config: `%` is escaped there (remote.rs), what
    /// has no portable escape is refused.
    #[test]
    fn ssh_config_paths_refuse_quote_backslash_and_dollar_brace() {
        let runtime = |dir: &str| with(r#""/run/ciphersync/docs""#, &Value::from(dir).to_string());
        // % and ' and spaces are fine: escaped where they are used.
        assert!(parse(&runtime("/run/p%d it's")).is_ok());
        for (bad, shown) in [
            ("/run/a\"b", "/run/a\\\"b"),
            ("/run/a\\b", "/run/a\\\\b"),
            ("/run/${HOME}", "/run/${HOME}"),
        ] {
            assert_eq!(
                error_of(&runtime(bad)),
                format!(
                    "field `runtime_dir`: must not contain a double quote, a backslash or `${{` \
                     (it is written into ssh_config), found \"{shown}\""
                )
            );
        }
        // A local target writes no ssh_config.
        let local = runtime("/run/a\"b")
            .replace(
                r#""type": "sftp", "host": "backup.example.org", "user": "docs","#,
                r#""type": "local","#,
            )
            .replace(r#", "known_hosts_file": "/etc/ciphersync/known_hosts""#, "");
        assert!(parse(&local).is_ok(), "{local}");
        let e = error_of(&with("/etc/ciphersync/known_hosts", "/etc/${X}/kh"));
        assert!(
            e.starts_with("field `target.known_hosts_file`: must not contain a double quote"),
            "{e}"
        );
    }

    /// Every kind of message at a glance, for review: one line each.
    #[test]
    fn message_gallery() {
        let sftp = |field: &str| {
            with(
                r#""type": "sftp","#,
                &format!(r#"{field}, "type": "sftp","#),
            )
        };
        let cases = [
            set_field(r#""max_delete_percent": "50""#),
            set_field(r#""max_delete_percent": -1"#),
            set_field(r#""version": 2"#),
            set_field(r#""name": "my docs""#),
            set_field(r#""source": "srv/docs""#),
            set_field(r#""source": """#),
            set_field(r#""password_file": "/run/keys/../docs""#),
            set_field(r#""exclude": [" "]"#),
            set_field(r#""filenames": "rot13""#),
            set_field(r#""filenames": "plaintext""#),
            set_field(r#""snapshots": {"keep_last": "30"}"#),
            set_field(r#""runtime_dir": "/run/x\"y""#),
            set_field(r#""state_dir": "/var/lib/x\u001b[2Jy""#),
            set_field(r#""stat_dir": "/var/lib/x""#),
            sftp(r#""port": 22.0"#),
            with(r#""user": "docs""#, r#""user": ["docs"]"#),
            with(
                r#""backup.example.org""#,
                r#""backup.example.org; touch /tmp/x""#,
            ),
            with(r#""/etc/ciphersync/known_hosts""#, "null"),
            sftp(r#""remote_checksums": "sha1""#),
            sftp(r#""conections": 2"#),
            with(r#""type": "sftp""#, r#""type": "local""#),
            with(r#""password_file": "/run/keys/docs","#, ""),
            "{\n  \"version\": 1,\n}".to_string(),
            "{\"version\": 1} {}".to_string(),
            "\"docs\"".to_string(),
            String::new(),
        ];
        let lines: Vec<String> = cases.iter().map(|text| error_of(text)).collect();
        insta::assert_snapshot!(lines.join("\n"));
    }

    #[test]
    fn other_checks() {
        assert!(error_of(&with(r#""version": 1"#, r#""version": 2"#)).contains("`version`"));
        assert!(error_of(&with(r#""name": "docs""#, r#""name": "../x""#)).contains("`name`"));
        assert!(
            error_of(&with(r#""backup.example.org""#, r#""-oProxyCommand=x""#))
                .contains("target.host")
        );
        assert!(error_of("{ nope").contains("not valid JSON"));
        assert!(error_of(&format!("{GOOD} trailing")).contains("text after"));
        assert!(error_of(&format!("{GOOD}{GOOD}")).contains("text after"));
        let e = error_of(&with(
            r#""name": "docs","#,
            r#""name": "docs", "snapshots": [1, 2],"#,
        ));
        assert!(e.contains("`snapshots`") && e.contains("object"), "{e}");
        let e = error_of(&with(
            r#""name": "docs","#,
            r#""name": "docs", "filenames": encrypted,"#,
        ));
        assert!(e.contains("`filenames`"), "{e}");
        let e = error_of(&with(
            "/etc/ciphersync/known_hosts",
            "/etc/ciphersync/known\\\"hosts",
        ));
        assert!(
            e.contains("target.known_hosts_file") && e.contains("quote"),
            "{e}"
        );
        let e = error_of(&with(r#""/run/keys/docs""#, r#""/run/keys/../docs""#));
        assert!(e.contains("password_file") && e.contains(".."), "{e}");
    }
}
