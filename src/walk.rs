//! Walking a tree in one fixed order, so that two listings of the same tree
//! (ours and the server's `sort`ed one) come out alike and can be compared
//! or diffed line by line without holding either in memory.

use std::cmp::Ordering;
use std::path::Path;

use walkdir::{DirEntry, WalkDir};

use crate::error::{Error, Kind};

/// Every entry below `root` (not `root` itself), symlinks not followed.
/// Names in a directory are sorted by their bytes, a directory's name as if
/// it ended in `/`: the files then come out in the byte order of their full
/// paths, which is the order of `LC_ALL=C sort` on the server.
pub fn sorted(root: &Path) -> walkdir::IntoIter {
    WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by(by_path_bytes)
        .into_iter()
}

fn by_path_bytes(a: &DirEntry, b: &DirEntry) -> Ordering {
    let key = |e: &DirEntry| {
        let mut name = e.file_name().as_encoded_bytes().to_vec();
        if e.file_type().is_dir() {
            name.push(b'/');
        }
        name
    };
    key(a).cmp(&key(b))
}

/// A walk error naming the path it happened at.
pub fn error(root: &Path, e: walkdir::Error) -> Error {
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

/// `path` relative to `root`, as text.
pub fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `a-c` sorts before `a/b` as bytes ('-' < '/'), although a plain
    /// depth-first walk would list the directory `a` first.
    #[test]
    fn files_come_out_in_byte_order_of_their_paths() {
        let root = std::env::temp_dir().join(format!("ciphersync-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["a", "a/b", "ab"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        for file in ["a-c", "a/b/z", "a/x", "a.d", "ab/y", "B"] {
            std::fs::write(root.join(file), "").unwrap();
        }
        let files: Vec<String> = sorted(&root)
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| relative(&root, e.path()))
            .collect();
        let mut expected = files.clone();
        expected.sort();
        assert_eq!(files, expected);
        assert_eq!(files, ["B", "a-c", "a.d", "a/b/z", "a/x", "ab/y"]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
