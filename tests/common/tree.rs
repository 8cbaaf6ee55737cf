//! Trees: [`make_sample_tree`], [`make_big_tree`], [`walk`],
//! [`assert_trees_equal`], [`tree_digest`], [`sha1_file`], [`write_mode`],
//! own xorshift ([`XorShift`], no rand crate).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// Writes `data` to a new file created with `mode`.
pub fn write_mode(path: &Path, data: &[u8], mode: u32) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .unwrap();
    f.write_all(data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// xorshift64 — deterministic pseudo-random bytes from a seed.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `len` pseudo-random bytes (seeded) to `path`, creating parents.
pub fn write_random_file(path: &Path, len: usize, seed: u64) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    let mut r = XorShift::new(seed);
    let mut f = fs::File::create(path).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        r.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
}

/// Sample-tree file whose remote copy the damage tests flip a byte in.
pub const VICTIM_CHANGED: &str = "damage target/victim.bin";
pub const VICTIM_CHANGED_LEN: u64 = 12_345;
/// Sample-tree file whose remote copy the damage tests delete.
pub const VICTIM_MISSING: &str = "ünïcödé/missing victim.txt";
pub const VICTIM_MISSING_LEN: u64 = 23_456;

/// The 200-character file name used in the sample tree.
pub fn long_name() -> String {
    format!("{}.bin", "L".repeat(196))
}

/// Fills `root` with the sample tree: names with spaces, unicode and 200
/// characters; nested and empty dirs; file, directory and dangling symlinks;
/// an executable and a 0600 file in a 0700 dir; sizes 0 B .. 3 MB around the
/// 4096-byte gocryptfs block edge. Deterministic (fixed seeds). Every file
/// size is unique so that the two victims' ciphertexts can be found by size.
pub fn make_sample_tree(root: &Path) {
    let files: &[(&str, usize)] = &[
        ("README.txt", 0), // text, below
        ("empty-file", 0),
        ("one-byte", 1),
        ("block-edge.bin", 4096),
        ("block-edge-plus-1.bin", 4097),
        ("dir with spaces/file with spaces.txt", 3000),
        ("ünïcödé/日本語のファイル.txt", 5000),
        ("ünïcödé/emoji 🎉 party.bin", 7000),
        ("nested/a/b/c/deep.bin", 100_000),
        ("nested/big.bin", 3_000_000),
        (VICTIM_CHANGED, VICTIM_CHANGED_LEN as usize),
        (VICTIM_MISSING, VICTIM_MISSING_LEN as usize),
    ];
    for (i, (rel, len)) in files.iter().enumerate() {
        if *rel == "README.txt" {
            continue;
        }
        write_random_file(&root.join(rel), *len, 1000 + i as u64);
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(0o644)).unwrap();
    }
    write_mode(
        &root.join("README.txt"),
        b"ciphersync e2e sample tree\nsecond line\n",
        0o644,
    );
    write_random_file(&root.join("long").join(long_name()), 9000, 77);
    fs::create_dir_all(root.join("bin")).unwrap();
    write_mode(
        &root.join("bin/run.sh"),
        b"#!/bin/sh\necho hello from ciphersync\n",
        0o755,
    );
    fs::create_dir_all(root.join("private")).unwrap();
    write_mode(&root.join("private/secret.txt"), b"top secret\n", 0o600);
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    for d in ["empty", "nested/empty inner", "nested/a/b/c/empty leaf"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    symlink("README.txt", root.join("link-to-readme")).unwrap();
    symlink("../bin/run.sh", root.join("nested/link up")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    symlink("nested/a", root.join("dir-link")).unwrap();
}

/// `files` files of `file_size` bytes each under `root/<subdir>/` (for the
/// large interrupt/lock tests).
pub fn make_big_tree(root: &Path, subdir: &str, files: usize, file_size: usize) {
    for i in 0..files {
        write_random_file(
            &root.join(subdir).join(format!("chunk {i:04}.bin")),
            file_size,
            50_000 + i as u64,
        );
    }
}

/// Every entry under `root` (not `root` itself) as (relative path, lstat),
/// sorted by path. Does not follow symlinks.
pub fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    fn rec(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            // A tree that rsync is writing loses temp files between
            // readdir and lstat (they are renamed): skip what vanished.
            let m = match fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("lstat {}: {e}", p.display()),
            };
            out.push((p.strip_prefix(root).unwrap().to_path_buf(), m.clone()));
            if m.file_type().is_dir() {
                rec(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    rec(root, root, &mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Hex sha1 of a file's bytes.
pub fn sha1_file(path: &Path) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    let mut f = fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..]).unwrap();
        if k == 0 {
            break;
        }
        n += k;
    }
    n
}

const REVERSE_CONF: &str = ".gocryptfs.reverse.conf";

fn describe(root: &Path) -> BTreeMap<PathBuf, fs::Metadata> {
    walk(root)
        .into_iter()
        .filter(|(rel, _)| rel != Path::new(REVERSE_CONF))
        .collect()
}

/// Panics listing every difference between the trees under `a` and `b`:
/// relative paths, entry kinds, file bytes, permission bits (files and dirs
/// below the roots), symlink targets, empty dirs. `.gocryptfs.reverse.conf` at
/// the root is ignored. Timestamps and owners are not compared.
pub fn assert_trees_equal(a: &Path, b: &Path) {
    let (ta, tb) = (describe(a), describe(b));
    let mut diffs = Vec::new();
    let keys: BTreeSet<&PathBuf> = ta.keys().chain(tb.keys()).collect();
    for k in keys {
        let (ma, mb) = match (ta.get(k), tb.get(k)) {
            (Some(x), Some(y)) => (x, y),
            (Some(_), None) => {
                diffs.push(format!("only in {}: {}", a.display(), k.display()));
                continue;
            }
            (None, _) => {
                diffs.push(format!("only in {}: {}", b.display(), k.display()));
                continue;
            }
        };
        let (fa, fb) = (ma.file_type(), mb.file_type());
        let kind = |f: fs::FileType| {
            if f.is_symlink() {
                "symlink"
            } else if f.is_dir() {
                "dir"
            } else if f.is_file() {
                "file"
            } else {
                "other"
            }
        };
        if kind(fa) != kind(fb) {
            diffs.push(format!("{}: {} vs {}", k.display(), kind(fa), kind(fb)));
            continue;
        }
        if fa.is_symlink() {
            let (la, lb) = (
                fs::read_link(a.join(k)).unwrap(),
                fs::read_link(b.join(k)).unwrap(),
            );
            if la != lb {
                diffs.push(format!(
                    "{}: symlink -> {} vs -> {}",
                    k.display(),
                    la.display(),
                    lb.display()
                ));
            }
            continue;
        }
        if ma.mode() & 0o7777 != mb.mode() & 0o7777 {
            diffs.push(format!(
                "{}: mode {:o} vs {:o}",
                k.display(),
                ma.mode() & 0o7777,
                mb.mode() & 0o7777
            ));
        }
        if fa.is_file() && (ma.len() != mb.len() || !same_bytes(&a.join(k), &b.join(k))) {
            diffs.push(format!(
                "{}: contents differ ({} vs {} bytes)",
                k.display(),
                ma.len(),
                mb.len()
            ));
        }
    }
    if !diffs.is_empty() {
        panic!(
            "trees differ: {} vs {}:\n  {}",
            a.display(),
            b.display(),
            diffs.join("\n  ")
        );
    }
}

/// A fingerprint of everything under `root` (for "untouched" checks): per
/// relative path its kind, permission bits, size, mtime (ns) and, for files,
/// the sha1 of the bytes; symlink targets.
pub fn tree_digest(root: &Path) -> BTreeMap<String, String> {
    walk(root)
        .into_iter()
        .map(|(rel, m)| {
            let p = root.join(&rel);
            let ft = m.file_type();
            let d = if ft.is_symlink() {
                format!("link -> {}", fs::read_link(&p).unwrap().display())
            } else if ft.is_dir() {
                format!(
                    "dir {:o} mtime {}.{}",
                    m.mode() & 0o7777,
                    m.mtime(),
                    m.mtime_nsec()
                )
            } else {
                format!(
                    "file {:o} {} bytes mtime {}.{} sha1 {}",
                    m.mode() & 0o7777,
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    sha1_file(&p)
                )
            };
            (rel.to_string_lossy().into_owned(), d)
        })
        .collect()
}

/// Panics listing what differs between two [`tree_digest`]s.
pub fn assert_digests_equal(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    what: &str,
) {
    if before == after {
        return;
    }
    let mut diffs = Vec::new();
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for k in keys {
        match (before.get(k), after.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => diffs.push(format!("{k}: {x:?} -> {y:?}")),
        }
    }
    panic!("{what} changed:\n  {}", diffs.join("\n  "));
}

/// Count of regular files under `root`.
pub fn count_files(root: &Path) -> usize {
    walk(root)
        .iter()
        .filter(|(_, m)| m.file_type().is_file())
        .count()
}

/// The 200-character name of [`make_features_tree`]: its encrypted name is
/// longer than 255 bytes, so gocryptfs stores it as `gocryptfs.longname.*`.
pub fn long_ascii_name() -> String {
    format!("{}.txt", "n".repeat(196))
}

/// A small tree with what servers treat differently: a hard link pair
/// (`hard/a.bin`, `hard/b.bin`), a relative symlink (`links/up` ->
/// `../docs/été à.txt`), an empty dir, a 0555 dir with a file in it
/// (`readonly/inside.txt`), a name with spaces and non-ASCII characters, a
/// 200-character name ([`long_ascii_name`]), `notes.txt` and `gone.txt`
/// for [`change_features_tree`], and 12 files under `filler/` that keep its
/// changes below the deletion guard's 50 %. Deterministic.
pub fn make_features_tree(root: &Path) {
    write_random_file(&root.join("hard/a.bin"), 5_000, 501);
    fs::hard_link(root.join("hard/a.bin"), root.join("hard/b.bin")).unwrap();
    write_random_file(&root.join("docs/été à.txt"), 3_000, 502);
    fs::create_dir_all(root.join("links")).unwrap();
    symlink("../docs/été à.txt", root.join("links/up")).unwrap();
    fs::create_dir_all(root.join("empty dir")).unwrap();
    write_random_file(&root.join("readonly/inside.txt"), 2_000, 503);
    write_random_file(&root.join("long").join(long_ascii_name()), 4_000, 504);
    write_mode(&root.join("notes.txt"), b"first version\n", 0o644);
    // Unchanged files, so that the changes stay below the deletion guard.
    for i in 0..12 {
        write_random_file(
            &root.join(format!("filler/f{i:02}.bin")),
            100 + i,
            600 + i as u64,
        );
    }
    write_mode(
        &root.join("gone.txt"),
        b"deleted by the second run\n",
        0o644,
    );
    for (rel, mode) in [
        ("hard/a.bin", 0o640),
        ("docs/été à.txt", 0o644),
        ("readonly/inside.txt", 0o444),
        ("readonly", 0o555),
    ] {
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Changes [`make_features_tree`]: both names of the hard link get new
/// content (one inode), `notes.txt` new content and mode 0600, the file in
/// the 0555 dir new content, `gone.txt` deleted, `added.txt` new.
pub fn change_features_tree(root: &Path) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(root.join("hard/a.bin"))
        .unwrap();
    f.write_all(b"appended by the second run\n").unwrap();
    drop(f);
    write_mode(&root.join("notes.txt"), b"second version, longer\n", 0o600);
    let inside = root.join("readonly/inside.txt");
    fs::set_permissions(&inside, fs::Permissions::from_mode(0o644)).unwrap();
    write_random_file(&inside, 2_100, 505);
    fs::set_permissions(&inside, fs::Permissions::from_mode(0o444)).unwrap();
    fs::remove_file(root.join("gone.txt")).unwrap();
    write_mode(&root.join("added.txt"), b"added by the second run\n", 0o644);
}

/// `cp -a SRC DST`: a copy of a tree as it is now (modes, symlinks, hard
/// links), to compare a later restore of this state with.
pub fn copy_tree(src: &Path, dst: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .expect("run cp -a");
    assert!(
        st.success(),
        "cp -a {} {} failed",
        src.display(),
        dst.display()
    );
}

/// Panics listing every entry under `dir` with a component that starts
/// with `.` (rsync's temp files `.NAME.XXXXXX` and the like; gocryptfs'
/// encrypted names never start with a dot).
pub fn assert_no_dot_entries(dir: &Path, what: &str) {
    let dots: Vec<String> = walk(dir)
        .into_iter()
        .filter(|(rel, _)| {
            rel.components()
                .any(|c| c.as_os_str().as_encoded_bytes().starts_with(b"."))
        })
        .map(|(rel, _)| rel.display().to_string())
        .collect();
    assert!(
        dots.is_empty(),
        "{what}: {} holds entries whose names start with '.' (left-over temp files?):\n  {}",
        dir.display(),
        dots.join("\n  ")
    );
}
