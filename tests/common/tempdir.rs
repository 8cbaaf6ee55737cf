//! [`TempDir`]: a unique directory under `std::env::temp_dir()` that
//! lazily unmounts what is left under it and removes itself on drop.

use super::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub(super) static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory `<tmp>/cse2e-<tag>-<pid>-<n>` (short: socket paths under
/// it must stay below 108 bytes). On drop it lazily unmounts (`fusermount3
/// -uz`) whatever is still mounted under it, deepest first, then removes it;
/// set `CIPHERSYNC_E2E_KEEP=1` to keep it for debugging. It is never removed
/// while something is still mounted under it.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let tag: String = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(20)
            .collect();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("cse2e-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let path = fs::canonicalize(&path).unwrap();
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        unmount_all_under(&self.path);
        if !mounts_under(&self.path).is_empty() {
            eprintln!(
                "harness: mounts still under {}, not removing it",
                self.path.display()
            );
            return;
        }
        if std::env::var_os("CIPHERSYNC_E2E_KEEP").is_some() {
            eprintln!("harness: keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}
