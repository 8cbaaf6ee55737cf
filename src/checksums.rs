//! sha1 lists: hashing a tree with several threads (with a cache keyed by
//! file metadata), reading and writing the `sha1sum` format (including its
//! escaped names), and comparing two lists.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha1::{Digest, Sha1};

use crate::error::{Error, IoContext, Kind, Result};
use crate::interrupt;

pub type Sha1Hex = String;
/// Relative path -> sha1 (lower-case hex), sorted by path.
pub type List = BTreeMap<String, Sha1Hex>;

/// What the cache needs to know a file has not changed since it was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            ino: meta.ino(),
        }
    }
}

/// A file found by the walk, waiting to be hashed.
struct Pending {
    rel: String,
    path: PathBuf,
    stamp: Stamp,
}

/// The result of hashing a tree.
pub struct Hashed {
    pub list: List,
    /// The stamp of every file, for telling which changed when.
    pub stamps: HashMap<String, Stamp>,
    /// How many files were read (the rest came from the cache).
    pub read: usize,
    /// Files with more than one hard link. gocryptfs -reverse derives the
    /// IVs of such a file from whichever of its paths a mount looked up
    /// first, so their ciphertext differs between mounts.
    pub hardlinked: BTreeSet<String>,
}

/// Hashes every regular file below `root` (symlinks and directories are not
/// hashed, as with `find -type f | sha1sum`). With a cache, files whose stamp
/// is unchanged are not read again; the cache is updated in place.
pub fn hash_tree(root: &Path, mut cache: Option<&mut Cache>) -> Result<Hashed> {
    let mut list = List::new();
    let mut stamps = HashMap::new();
    let mut hardlinked = BTreeSet::new();
    let mut todo = Vec::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
        interrupt::check()?;
        let entry = entry.map_err(|e| walk_error(root, e))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = relative(root, entry.path());
        let meta = entry.metadata().map_err(|e| walk_error(root, e))?;
        let stamp = Stamp::of(&meta);
        stamps.insert(rel.clone(), stamp);
        if meta.nlink() > 1 {
            hardlinked.insert(rel.clone());
        }
        match cache.as_deref().and_then(|c| c.lookup(&rel, stamp)) {
            Some(sum) => {
                list.insert(rel, sum.to_string());
            }
            None => todo.push(Pending {
                rel,
                path: entry.path().to_owned(),
                stamp,
            }),
        }
    }
    let read = todo.len();
    for (pending, sum) in hash_files_parallel(todo)? {
        if let Some(c) = cache.as_deref_mut() {
            c.insert(&pending.rel, pending.stamp, &sum);
        }
        list.insert(pending.rel, sum);
    }
    if let Some(c) = cache {
        c.retain(|rel| list.contains_key(rel));
    }
    Ok(Hashed {
        list,
        stamps,
        read,
        hardlinked,
    })
}

/// A walk error naming the path it happened at.
pub fn walk_error(root: &Path, e: walkdir::Error) -> Error {
    let at = e
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| root.display().to_string());
    Error::new(
        Kind::Io,
        format!(
            "reading {at}: {}",
            e.io_error().map(|e| e.to_string()).unwrap_or_default()
        ),
    )
}

pub fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Hashes the named files (relative to `root`) with the worker pool.
pub fn hash_files(root: &Path, rels: &[String]) -> Result<List> {
    let todo = rels
        .iter()
        .map(|rel| Pending {
            rel: rel.clone(),
            path: root.join(rel),
            stamp: Stamp::default(),
        })
        .collect();
    Ok(hash_files_parallel(todo)?
        .into_iter()
        .map(|(p, sum)| (p.rel, sum))
        .collect())
}

/// Reading through FUSE (gocryptfs decrypts or encrypts on read) is CPU and
/// latency bound: several threads keep the cores and the daemon busy.
fn hash_files_parallel(todo: Vec<Pending>) -> Result<Vec<(Pending, Sha1Hex)>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8);
    let queue = Mutex::new(todo.into_iter());
    let results = Mutex::new(Vec::new());
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    if interrupt::requested() || failure.lock().unwrap().is_some() {
                        return;
                    }
                    let Some(item) = queue.lock().unwrap().next() else {
                        return;
                    };
                    match hash_file(&item.path) {
                        Ok(sum) => results.lock().unwrap().push((item, sum)),
                        Err(e) => {
                            failure.lock().unwrap().get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    interrupt::check()?;
    if let Some(e) = failure.into_inner().unwrap() {
        return Err(e);
    }
    Ok(results.into_inner().unwrap())
}

pub fn hash_file(path: &Path) -> Result<Sha1Hex> {
    let mut file = File::open(path).ctx(|| format!("reading {}", path.display()))?;
    hash_reader(&mut file).ctx(|| format!("reading {}", path.display()))
}

pub fn hash_reader(reader: &mut impl Read) -> std::io::Result<Sha1Hex> {
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses `sha1sum` output. A line is `<40 hex>  <name>`; when the name
/// holds a backslash, newline or CR, sha1sum prefixes the line with `\` and
/// escapes them as `\\`, `\n`, `\r`. A leading `./` (from `find .`) is dropped.
pub fn parse_sha1sum(reader: impl Read) -> Result<List> {
    let mut list = List::new();
    for (number, line) in BufReader::new(reader).split(b'\n').enumerate() {
        let line = line.map_err(|e| Error::io("reading a checksum list", e))?;
        if line.is_empty() {
            continue;
        }
        let (sum, name) = parse_sha1sum_line(&line).ok_or_else(|| {
            Error::new(
                Kind::Corrupt,
                format!("checksum list line {} is not sha1sum output", number + 1),
            )
        })?;
        list.insert(name, sum);
    }
    Ok(list)
}

fn parse_sha1sum_line(line: &[u8]) -> Option<(Sha1Hex, String)> {
    let (escaped, line) = match line.first() {
        Some(b'\\') => (true, &line[1..]),
        _ => (false, line),
    };
    let sum = std::str::from_utf8(line.get(..40)?).ok()?;
    if !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // Two spaces (text mode) or space-star (binary mode) separate sum and name.
    let sep = line.get(40..42)?;
    if sep != b"  " && sep != b" *" {
        return None;
    }
    let raw = &line[42..];
    let name = if escaped {
        unescape_sha1sum(raw)?
    } else {
        raw.to_vec()
    };
    let name = String::from_utf8_lossy(&name).into_owned();
    let name = name.strip_prefix("./").map(str::to_owned).unwrap_or(name);
    (!name.is_empty()).then(|| (sum.to_ascii_lowercase(), name))
}

fn unescape_sha1sum(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match bytes.next()? {
            b'\\' => b'\\',
            b'n' => b'\n',
            b'r' => b'\r',
            _ => return None,
        });
    }
    Some(out)
}

/// Writes a list in the format `sha1sum -c` reads back.
pub fn format_sha1sum(list: &List) -> String {
    let mut out = String::new();
    for (name, sum) in list {
        if name.contains(['\\', '\n', '\r']) {
            let escaped = name
                .replace('\\', "\\\\")
                .replace('\n', "\\n")
                .replace('\r', "\\r");
            out.push_str(&format!("\\{sum}  {escaped}\n"));
        } else {
            out.push_str(&format!("{sum}  {name}\n"));
        }
    }
    out
}

/// The differences between what we have and what the server has.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Here, not on the server.
    pub missing: Vec<String>,
    /// On the server, not here.
    pub extra: Vec<String>,
    /// On both, different content.
    pub changed: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.changed.is_empty()
    }
}

pub fn compare(local: &List, remote: &List) -> Diff {
    let mut diff = Diff::default();
    for (name, sum) in local {
        match remote.get(name) {
            None => diff.missing.push(name.clone()),
            Some(other) if other != sum => diff.changed.push(name.clone()),
            Some(_) => {}
        }
    }
    diff.extra = remote
        .keys()
        .filter(|name| !local.contains_key(*name))
        .cloned()
        .collect();
    diff
}

/// Local encrypted sha1s from earlier runs, so an unchanged file is not read
/// again: the ciphertext of a reverse view depends only on the encrypted path
/// and the content, and the stamp tells when the content may have changed.
/// Stored as tab-separated lines: sha1, size, mtime_ns, ctime_ns, ino, path
/// (path escaped like sha1sum's).
#[derive(Default)]
pub struct Cache {
    entries: HashMap<String, (Stamp, Sha1Hex)>,
}

impl Cache {
    pub fn load(path: &Path) -> Cache {
        // A missing or damaged cache only costs time: start empty.
        let Ok(text) = std::fs::read_to_string(path) else {
            return Cache::default();
        };
        let entries = text.lines().filter_map(parse_cache_line).collect();
        Cache { entries }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = String::new();
        for (rel, (s, sum)) in &self.entries {
            let name = rel
                .replace('\\', "\\\\")
                .replace('\n', "\\n")
                .replace('\t', "\\t");
            text.push_str(&format!(
                "{sum}\t{}\t{}\t{}\t{}\t{name}\n",
                s.size, s.mtime_ns, s.ctime_ns, s.ino
            ));
        }
        crate::status::write_atomic(path, text.as_bytes())
    }

    fn lookup(&self, rel: &str, stamp: Stamp) -> Option<&str> {
        self.entries
            .get(rel)
            .filter(|(s, _)| *s == stamp)
            .map(|(_, sum)| sum.as_str())
    }

    fn insert(&mut self, rel: &str, stamp: Stamp, sum: &str) {
        self.entries
            .insert(rel.to_string(), (stamp, sum.to_string()));
    }

    fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.entries.retain(|rel, _| keep(rel));
    }
}

fn parse_cache_line(line: &str) -> Option<(String, (Stamp, Sha1Hex))> {
    let mut fields = line.splitn(6, '\t');
    let sum = fields.next()?.to_string();
    let stamp = Stamp {
        size: fields.next()?.parse().ok()?,
        mtime_ns: fields.next()?.parse().ok()?,
        ctime_ns: fields.next()?.parse().ok()?,
        ino: fields.next()?.parse().ok()?,
    };
    let name = fields.next()?;
    let mut rel = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        rel.push(match (c, c == '\\') {
            (_, true) => match chars.next()? {
                'n' => '\n',
                't' => '\t',
                '\\' => '\\',
                _ => return None,
            },
            (c, false) => c,
        });
    }
    (sum.len() == 40).then_some((rel, (stamp, sum)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "a9993e364706816aba3e25717850c26c9cd0d89d";
    const B: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";

    #[test]
    fn parses_plain_and_escaped_names() {
        let text = format!("{A}  ./plain name\n\\{B}  ./back\\\\slash\\nnew line\n{B} *binary\n");
        let list = parse_sha1sum(text.as_bytes()).unwrap();
        assert_eq!(list.get("plain name").map(String::as_str), Some(A));
        assert_eq!(
            list.get("back\\slash\nnew line").map(String::as_str),
            Some(B)
        );
        assert_eq!(list.get("binary").map(String::as_str), Some(B));
    }

    #[test]
    fn real_sha1sum_output_round_trips() {
        let dir = std::env::temp_dir().join(format!("ciphersync-sha1sum-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let names = ["plain", "with space", "back\\slash", "new\nline", "ünïcödé"];
        for (i, name) in names.iter().enumerate() {
            std::fs::write(dir.join(name), format!("content {i}")).unwrap();
        }
        let mut out = crate::exec::Cmd::new("sha1sum")
            .args(names)
            .cwd(&dir)
            .run()
            .unwrap();
        let parsed = parse_sha1sum(out.stdout_reader().unwrap()).unwrap();
        let ours = hash_tree(&dir, None).unwrap().list;
        assert_eq!(parsed, ours);
        assert_eq!(
            parse_sha1sum(format_sha1sum(&ours).as_bytes()).unwrap(),
            ours
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "nothex",
            "zz99  name",
            &format!("{A}name"),
            &format!("\\{A}  bad\\qescape"),
        ] {
            assert!(parse_sha1sum(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn compare_sorts_into_three_lists() {
        let local: List = [("same", A), ("changed", A), ("missing", A)]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        let remote: List = [("same", A), ("changed", B), ("extra", B)]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        insta::assert_debug_snapshot!(compare(&local, &remote));
    }

    #[test]
    fn cache_round_trips_odd_names() {
        let stamp = Stamp {
            size: 3,
            mtime_ns: -5,
            ctime_ns: 7,
            ino: 9,
        };
        let mut cache = Cache::default();
        cache.insert("tab\there\nand\\slash", stamp, A);
        let path = std::env::temp_dir().join(format!("ciphersync-cache-{}", std::process::id()));
        cache.save(&path).unwrap();
        let loaded = Cache::load(&path);
        assert_eq!(loaded.lookup("tab\there\nand\\slash", stamp), Some(A));
        assert_eq!(
            loaded.lookup("tab\there\nand\\slash", Stamp { size: 4, ..stamp }),
            None
        );
        std::fs::remove_file(path).unwrap();
    }
}
