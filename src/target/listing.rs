//! What a listing of the target says about one entry, and the listing
//! line formats: `find -printf '%y %m %s %P'` from a server's shell, and the
//! record's entry line (snapshots.rs reads records back).

use std::path::Path;

use crate::crypt::is_gocryptfs_metadata;
use crate::error::{Error, Kind, Result};
use crate::interrupt;

/// One entry of a remote listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// 'f' file, 'd' directory, 'l' symlink, '?' anything else.
    pub kind: char,
    pub mode: u32,
    pub size: u64,
    pub path: String,
    /// A symlink's (encrypted) target, kept in the record because the
    /// server cannot store the symlink itself (`L` lines, see snapshots.rs).
    pub link: Option<String>,
}

pub fn list_local_tree(dir: &Path) -> Result<Vec<TreeEntry>> {
    let mut entries = Vec::new();
    if !dir.exists() {
        return Ok(entries);
    }
    for entry in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        interrupt::check()?;
        let entry = entry.map_err(|e| crate::walk::error(dir, e))?;
        entries.push(TreeEntry::of(dir, &entry)?);
        if entries.len() > crate::limits::MAX_TREE_ENTRIES {
            return Err(crate::limits::too_much(
                &format!("{} on the target", dir.display()),
                format!("more than {} entries", crate::limits::MAX_TREE_ENTRIES),
            ));
        }
    }
    Ok(entries)
}

impl TreeEntry {
    /// A file known by its path alone, to fetch or hash: its size and mode
    /// are what the server says.
    pub fn named_file(path: &str) -> TreeEntry {
        TreeEntry {
            kind: 'f',
            mode: 0,
            size: 0,
            path: path.to_string(),
            link: None,
        }
    }

    /// The listing line of an entry a walk of `root` found (as `find
    /// -printf` gives it on the server: sizes of files only).
    pub fn of(root: &Path, entry: &walkdir::DirEntry) -> Result<TreeEntry> {
        use std::os::unix::fs::MetadataExt;
        let meta = entry.metadata().map_err(|e| crate::walk::error(root, e))?;
        let t = entry.file_type();
        let kind = if t.is_file() {
            'f'
        } else if t.is_dir() {
            'd'
        } else if t.is_symlink() {
            'l'
        } else {
            '?'
        };
        Ok(TreeEntry {
            kind,
            mode: meta.mode() & 0o7777,
            size: if t.is_file() { meta.len() } else { 0 },
            path: crate::walk::relative(root, entry.path()),
            link: None,
        })
    }
}

/// Parses `find -printf '%y %m %s %P'` output.
pub fn parse_find_line(line: &str) -> Result<TreeEntry> {
    let bad = || {
        Error::new(
            Kind::Corrupt,
            format!("unexpected listing line from the server: {line:?}"),
        )
    };
    let mut fields = line.splitn(4, ' ');
    let kind = fields
        .next()
        .and_then(|k| k.chars().next())
        .ok_or_else(bad)?;
    let mode = u32::from_str_radix(fields.next().ok_or_else(bad)?, 8).map_err(|_| bad())?;
    let size = fields.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let path = fields
        .next()
        .filter(|p| !p.is_empty())
        .ok_or_else(bad)?
        .to_string();
    let kind = if "fdl".contains(kind) { kind } else { '?' };
    Ok(TreeEntry {
        kind,
        mode,
        size,
        path,
        link: None,
    })
}

impl TreeEntry {
    /// One record entry line: `<type> <octal mode> <size> <path>`, with `\`
    /// and newline in the path escaped.
    /// A symlink whose target the record keeps is written `L ... <path>
    /// TAB <target>` (only with encrypted names: neither holds a tab).
    pub fn record_line(&self) -> String {
        let escape = |text: &str| text.replace('\\', "\\\\").replace('\n', "\\n");
        let path = escape(&self.path);
        match &self.link {
            Some(target) => format!(
                "L {:o} {} {path}\t{}\n",
                self.mode,
                self.size,
                escape(target)
            ),
            None => format!("{} {:o} {} {path}\n", self.kind, self.mode, self.size),
        }
    }

    /// A file of the user's, not one of gocryptfs' own.
    pub fn is_user_file(&self) -> bool {
        self.kind == 'f' && !is_gocryptfs_metadata(&self.path)
    }
}
