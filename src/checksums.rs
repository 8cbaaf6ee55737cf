//! sha1 lists: hashing a tree with several threads (with a cache keyed by
//! file metadata), reading and writing the `sha1sum` format (including its
//! escaped names), and comparing two lists.
//!
//! Lists are streamed, never held whole: a tree of 200,000 files is hashed
//! into a file line by line, and the comparison keeps only an 8-byte key and
//! the 20-byte sum of each remote file.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use crate::error::{Error, IoContext, Kind, Result};
use crate::{interrupt, pool, walk};

/// A sha1 digest.
pub type Sum = [u8; 20];

pub fn to_hex(sum: &Sum) -> String {
    sum.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stamps of a tree: the sha1 (hex) of its listing lines, sorted, so that
/// the order the tree was walked in does not matter. Used by serve's
/// `stamps` answer and the SFTP listing of an account without a shell.
pub fn stamps_of_lines(lines: &mut [String]) -> String {
    lines.sort_unstable();
    let mut hasher = Sha1::new();
    for line in lines.iter() {
        hasher.update(line.as_bytes());
    }
    to_hex(&hasher.finalize().into())
}

/// The `N` bytes that exactly `2 * N` hex digits spell (a sha1 `Sum`, a
/// 32-byte key).
pub fn from_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(bytes)
}

/// A path stands for itself in the in-memory maps by 8 bytes of its sha1
/// (200,000 paths: a chance of about 1e-9 that two share a key; a shared
/// key can only make a file look changed, never hide a change).
pub fn path_key(rel: &str) -> u64 {
    let digest = Sha1::digest(rel.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("sha1 has 20 bytes"))
}

/// What the cache needs to know a file has not changed since it was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            ino: meta.ino(),
        }
    }

    /// The last change of content or metadata, in ns since the epoch.
    pub fn changed_ns(&self) -> i64 {
        self.mtime_ns.max(self.ctime_ns)
    }

    /// Whether a later run may trust this stamp for what was read after
    /// `walk_start_ns`. File times come from a coarse clock (a few ms on
    /// Linux, whole seconds on some filesystems), so a file changed just
    /// before the read may change again, same size, with the same stamp
    /// (git calls such an entry "racy").
    pub fn settled_before(&self, walk_start_ns: i64) -> bool {
        settled(self.changed_ns(), walk_start_ns)
    }
}

/// Whether a change at `changed_ns` is far enough before a walk started at
/// `walk_start_ns` to trust the stamps that walk saw.
pub fn settled(changed_ns: i64, walk_start_ns: i64) -> bool {
    changed_ns < walk_start_ns - settle_ns()
}

/// How long before a walk a change must be for its stamp to be trusted.
pub const SETTLE_NS: i64 = 2_000_000_000;

/// The settle window in force: `SETTLE_NS`, or `CIPHERSYNC_SETTLE_MS` where
/// it is set. Tests set it (0: every stamp is trusted at once; a large
/// value: none is) so that no test depends on how fast the machine runs a
/// stage; like `CIPHERSYNC_SSH_ALIVE`, it is not meant for production.
pub fn settle_ns() -> i64 {
    static SETTLE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *SETTLE.get_or_init(|| {
        std::env::var("CIPHERSYNC_SETTLE_MS")
            .ok()
            .and_then(|ms| ms.trim().parse::<i64>().ok())
            .filter(|ms| *ms >= 0)
            .map_or(SETTLE_NS, |ms| ms.saturating_mul(1_000_000))
    })
}

/// The wall clock in ns since the epoch, as file stamps count.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// One file of a hashed tree, as `hash_tree` hands it on.
pub struct FileSum {
    pub rel: String,
    pub stamp: Stamp,
    pub sum: Sum,
    /// Read now (false: the sum came from the cache).
    pub read: bool,
    /// More than one hard link. gocryptfs -reverse derives the IVs of such
    /// a file from whichever of its paths a mount looked up first, so its
    /// ciphertext differs between mounts.
    pub hardlinked: bool,
}

/// Hashes every regular file below `root` (symlinks and directories are not
/// hashed, as with `find -type f | sha1sum`) and hands them to `sink` in the
/// order of `walk::sorted`. With a cache, files whose stamp is unchanged are
/// not read again.
pub fn hash_tree(
    root: &Path,
    cache: Option<&Cache>,
    mut sink: impl FnMut(FileSum) -> Result<()> + Send,
) -> Result<()> {
    struct Found {
        rel: String,
        path: PathBuf,
        stamp: Stamp,
        hardlinked: bool,
        cached: Option<Sum>,
    }
    // Reading through FUSE is CPU and latency bound: one reader would leave
    // the cores and the daemon idle.
    pool::ordered(
        pool::cpu_threads(),
        WINDOW,
        |submit| {
            for entry in walk::sorted(root) {
                let entry = entry.map_err(|e| walk::error(root, e))?;
                if !entry.file_type().is_file() {
                    continue;
                }
                let meta = entry.metadata().map_err(|e| walk::error(root, e))?;
                let rel = walk::relative(root, entry.path());
                let stamp = Stamp::of(&meta);
                let cached = cache.and_then(|c| c.lookup(&rel, stamp));
                submit(Found {
                    path: entry.into_path(),
                    rel,
                    stamp,
                    hardlinked: meta.nlink() > 1,
                    cached,
                })?;
            }
            Ok(())
        },
        |found| match found.cached {
            Some(sum) => Ok(sum),
            None => hash_file(&found.path),
        },
        |found, sum| {
            sink(FileSum {
                read: found.cached.is_none(),
                rel: found.rel,
                stamp: found.stamp,
                sum,
                hardlinked: found.hardlinked,
            })
        },
    )
}

/// How many files may be between the walk and the sink at once: memory
/// does not grow with the tree.
pub const WINDOW: usize = 1024;

pub fn hash_file(path: &Path) -> Result<Sum> {
    let mut file = File::open(path).ctx(|| format!("reading {}", path.display()))?;
    hash_reader(&mut file).ctx(|| format!("reading {}", path.display()))
}

pub fn hash_reader(reader: &mut impl Read) -> std::io::Result<Sum> {
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if interrupt::requested() {
            return Err(std::io::Error::other("interrupted"));
        }
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// Copies the rest of `from` into `to`, each byte into `hasher` too: how
/// many bytes.
pub fn copy_hashing(
    from: &mut impl Read,
    to: &mut impl Write,
    hasher: &mut Sha1,
) -> std::io::Result<u64> {
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(bytes);
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        bytes += n as u64;
    }
}

/// The sha1 of a file whose parts arrive by offset, not always in order:
/// over SFTP a short read's rest is asked for again after later parts
/// (target/sftp.rs). Parts ahead of the next byte wait here; the caller
/// bounds them by what it has in flight.
#[derive(Default)]
pub struct InOrderSha1 {
    hasher: Sha1,
    /// The next byte to hash.
    next: u64,
    ahead: std::collections::BTreeMap<u64, Vec<u8>>,
}

impl InOrderSha1 {
    /// Takes the part at `offset`. Parts must not overlap.
    pub fn add(&mut self, offset: u64, data: &[u8]) -> std::result::Result<(), String> {
        if offset < self.next || self.ahead.contains_key(&offset) {
            return Err(format!("byte {offset} arrived twice"));
        }
        if offset > self.next {
            self.ahead.insert(offset, data.to_vec());
            return Ok(());
        }
        self.hasher.update(data);
        self.next += data.len() as u64;
        while let Some(part) = self.ahead.remove(&self.next) {
            self.hasher.update(&part);
            self.next += part.len() as u64;
        }
        Ok(())
    }

    /// The sum, once every byte of a `size`-byte file was added.
    pub fn finish(self, size: u64) -> std::result::Result<Sum, String> {
        if self.next != size || !self.ahead.is_empty() {
            return Err(format!(
                "only its first {} of {size} bytes could be hashed",
                self.next
            ));
        }
        Ok(self.hasher.finalize().into())
    }
}

/// Reads `sha1sum` output and hands on each (name, sum). A line is
/// `<40 hex>  <name>`; when the name holds a backslash, newline or CR,
/// sha1sum prefixes the line with `\` and escapes them as `\\`, `\n`, `\r`.
/// A leading `./` (from `find .`) is dropped.
pub fn read_list(reader: impl Read, mut each: impl FnMut(String, Sum) -> Result<()>) -> Result<()> {
    for (number, line) in
        crate::limits::Lines::new(BufReader::new(reader), "a checksum list").enumerate()
    {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let (sum, name) = parse_line(&line).ok_or_else(|| {
            Error::new(
                Kind::Corrupt,
                format!("checksum list line {} is not sha1sum output", number + 1),
            )
        })?;
        each(name, sum)?;
    }
    Ok(())
}

fn parse_line(line: &[u8]) -> Option<(Sum, String)> {
    let (escaped, line) = match line.first() {
        Some(b'\\') => (true, &line[1..]),
        _ => (false, line),
    };
    let sum = from_hex(line.get(..40)?)?;
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
    (!name.is_empty()).then_some((sum, name))
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

/// One line in the format `sha1sum -c` reads back, named `./<rel>` like the
/// server's `find . | sha1sum`, so that the two stored lists diff cleanly.
pub fn write_line(out: &mut impl Write, rel: &str, sum: &Sum) -> std::io::Result<()> {
    let hex = to_hex(sum);
    if rel.contains(['\\', '\n', '\r']) {
        let escaped = rel
            .replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('\r', "\\r");
        writeln!(out, "\\{hex}  ./{escaped}")
    } else {
        writeln!(out, "{hex}  ./{rel}")
    }
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

/// Compares two sha1sum lists. Only the remote one is held, as key and sum
/// per file; its names are read again, from the file, for the few extras.
pub fn compare(local: impl Read, remote: &mut File) -> Result<Diff> {
    remote
        .seek(SeekFrom::Start(0))
        .ctx(|| "rewinding the remote list")?;
    let mut theirs: HashMap<u64, Sum> = HashMap::new();
    read_list(&mut *remote, |name, sum| {
        theirs.insert(path_key(&name), sum);
        Ok(())
    })?;
    let mut diff = Diff::default();
    read_list(local, |name, sum| {
        match theirs.remove(&path_key(&name)) {
            None => diff.missing.push(name),
            Some(other) if other != sum => diff.changed.push(name),
            Some(_) => {}
        }
        Ok(())
    })?;
    if !theirs.is_empty() {
        let extra: HashSet<u64> = theirs.into_keys().collect();
        remote
            .seek(SeekFrom::Start(0))
            .ctx(|| "rewinding the remote list")?;
        read_list(&mut *remote, |name, _| {
            if extra.contains(&path_key(&name)) {
                diff.extra.push(name);
            }
            Ok(())
        })?;
    }
    Ok(diff)
}

/// Local encrypted sha1s from earlier runs, so an unchanged file is not read
/// again: the ciphertext of a reverse view depends only on the encrypted path
/// and the content, and the stamp tells when the content may have changed.
/// Stored as tab-separated lines: sha1, size, mtime_ns, ctime_ns, ino, path
/// (path escaped like sha1sum's). In memory: 8-byte path key, stamp and sum.
#[derive(Default)]
pub struct Cache {
    entries: HashMap<u64, (Stamp, Sum)>,
    /// The user's files it holds and the bytes of all: what the last run
    /// hashed, the best guess at what this one will (progress.rs).
    pub files: u64,
    pub bytes: u64,
}

impl Cache {
    pub fn load(path: &Path) -> Cache {
        // A missing or damaged cache only costs time: start empty.
        let Ok(file) = File::open(path) else {
            return Cache::default();
        };
        let mut cache = Cache::default();
        let lines = BufReader::new(file).lines().map_while(|line| line.ok());
        for (rel, entry) in lines.filter_map(|line| parse_cache_line(&line)) {
            cache.files += u64::from(!crate::crypt::is_gocryptfs_metadata(&rel));
            cache.bytes = cache.bytes.saturating_add(entry.0.size);
            cache.entries.insert(path_key(&rel), entry);
        }
        cache
    }

    fn lookup(&self, rel: &str, stamp: Stamp) -> Option<Sum> {
        self.entries
            .get(&path_key(rel))
            .filter(|(s, _)| *s == stamp)
            .map(|(_, sum)| *sum)
    }
}

/// One line of the cache file; a new cache is written line by line while
/// a tree is hashed.
pub fn write_cache_line(out: &mut impl Write, file: &FileSum) -> std::io::Result<()> {
    let name = file
        .rel
        .replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\t', "\\t");
    let s = &file.stamp;
    writeln!(
        out,
        "{}\t{}\t{}\t{}\t{}\t{name}",
        to_hex(&file.sum),
        s.size,
        s.mtime_ns,
        s.ctime_ns,
        s.ino
    )
}

fn parse_cache_line(line: &str) -> Option<(String, (Stamp, Sum))> {
    let mut fields = line.splitn(6, '\t');
    let sum = from_hex(fields.next()?.as_bytes())?;
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
    Some((rel, (stamp, sum)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn parts_out_of_order_hash_as_the_whole() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut hasher = InOrderSha1::default();
        // A short read's rest (10..40) arrives after the part behind it.
        hasher.add(0, &data[..10]).unwrap();
        hasher.add(40, &data[40..]).unwrap();
        hasher.add(10, &data[10..40]).unwrap();
        let whole: Sum = Sha1::digest(&data).into();
        assert_eq!(hasher.finish(100).unwrap(), whole);
    }

    #[test]
    fn a_part_twice_or_a_gap_is_refused() {
        let mut hasher = InOrderSha1::default();
        hasher.add(0, b"abcd").unwrap();
        assert!(hasher.add(2, b"cd").is_err(), "overlap accepted");
        hasher.add(10, b"k").unwrap();
        assert!(hasher.add(10, b"k").is_err(), "a part twice accepted");
        let err = hasher.finish(11).unwrap_err();
        assert!(err.contains("first 4 of 11"), "{err}");
    }

    const A: &str = "a9993e364706816aba3e25717850c26c9cd0d89d";
    const B: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";

    fn sum(hex: &str) -> Sum {
        from_hex(hex.as_bytes()).unwrap()
    }

    fn collect(text: &[u8]) -> Result<BTreeMap<String, String>> {
        let mut list = BTreeMap::new();
        read_list(text, |name, sum| {
            list.insert(name, to_hex(&sum));
            Ok(())
        })?;
        Ok(list)
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ciphersync-{name}-{}", std::process::id()))
    }

    #[test]
    fn parses_plain_and_escaped_names() {
        let text = format!("{A}  ./plain name\n\\{B}  ./back\\\\slash\\nnew line\n{B} *binary\n");
        let list = collect(text.as_bytes()).unwrap();
        assert_eq!(list.get("plain name").map(String::as_str), Some(A));
        assert_eq!(
            list.get("back\\slash\nnew line").map(String::as_str),
            Some(B)
        );
        assert_eq!(list.get("binary").map(String::as_str), Some(B));
    }

    /// Our hashing and our list format agree with coreutils' sha1sum, odd
    /// names included, and the list comes out sorted by path bytes.
    #[test]
    fn real_sha1sum_output_round_trips() {
        let dir = temp("sha1sum");
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
        let theirs = collect(out.stdout_string().unwrap().as_bytes()).unwrap();
        let mut written = Vec::new();
        let mut order = Vec::new();
        hash_tree(&dir, None, |f| {
            order.push(f.rel.clone());
            write_line(&mut written, &f.rel, &f.sum).map_err(|e| Error::io("test", e))
        })
        .unwrap();
        assert_eq!(collect(&written).unwrap(), theirs);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
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
            assert!(collect(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn compare_sorts_into_three_lists() {
        let local = format!("{A}  ./same\n{A}  ./changed\n{A}  ./missing\n");
        let path = temp("compare");
        std::fs::write(
            &path,
            format!("{B}  ./extra\n{B}  ./changed\n{A}  ./same\n"),
        )
        .unwrap();
        let mut remote = File::open(&path).unwrap();
        insta::assert_debug_snapshot!(compare(local.as_bytes(), &mut remote).unwrap());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn cache_round_trips_odd_names() {
        let file = FileSum {
            rel: "tab\there\nand\\slash".into(),
            stamp: Stamp {
                size: 3,
                mtime_ns: -5,
                ctime_ns: 7,
                ino: 9,
            },
            sum: sum(A),
            read: true,
            hardlinked: false,
        };
        let path = temp("cache");
        let mut text = Vec::new();
        write_cache_line(&mut text, &file).unwrap();
        std::fs::write(&path, text).unwrap();
        let loaded = Cache::load(&path);
        assert_eq!(loaded.lookup(&file.rel, file.stamp), Some(sum(A)));
        let resized = Stamp {
            size: 4,
            ..file.stamp
        };
        assert_eq!(loaded.lookup(&file.rel, resized), None);
        std::fs::remove_file(path).unwrap();
    }
}
