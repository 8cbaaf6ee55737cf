//! The last verify's local list, kept in the state dir for the next verify.
//!
//! When the source's fingerprint (fingerprint.rs) is what it was when that
//! list was made, the encrypted view is the same, and so is every sha1 in
//! the list: the next verify reuses the list and reads nothing through the
//! view (it still mounts it, to prove the password). The remote side is
//! hashed in full every time, so damage on the server is found just the
//! same.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use sha1::{Digest, Sha1};

use crate::checksums::{self, to_hex};
use crate::error::{IoContext, Result};
use crate::fingerprint::SourceState;
use crate::log;
use crate::state::{self, KEPT_LIST as LIST_FILE};
use crate::status::AtomicFile;

/// A kept list and what the next verify needs to know about it.
pub struct KeptList {
    /// The sha1sum list, rewound.
    pub list: File,
    pub files: usize,
    /// Bytes of the listed files.
    pub data_bytes: u64,
    /// Hard-linked files: never compared (see `checksums::FileSum`).
    pub hardlinked: Vec<String>,
}

/// The kept list when it was made from a source with this fingerprint, and
/// when neither file was damaged since; else None.
pub fn reuse(state_dir: &Path, source: &SourceState) -> Option<KeptList> {
    let state = state::KeptList::read(state_dir)?;
    if state.fingerprint != source.fingerprint {
        return None;
    }
    let mut list = File::open(state_dir.join(LIST_FILE)).ok()?;
    let (bytes, sum) = copy_hashing(&mut list, &mut std::io::sink()).ok()?;
    if state.list_bytes != bytes || state.list_sha1 != sum {
        log::warn("the kept local checksum list is damaged; hashing the view again");
        return None;
    }
    list.seek(SeekFrom::Start(0)).ok()?;
    Some(KeptList {
        list,
        files: state.files,
        data_bytes: state.data_bytes,
        hardlinked: state.hardlinked,
    })
}

/// Keeps a copy of `list` (a verify's local list, made after `source` was
/// fingerprinted) for the next verify. Not when the source changed just
/// before the fingerprint: its stamps could hide a change (see `settled`).
/// Failing to keep it only costs the next run time, so it warns.
pub fn keep(
    state_dir: &Path,
    source: &SourceState,
    list: &mut File,
    (files, data_bytes): (usize, u64),
    hardlinked: &[String],
) {
    forget(state_dir);
    if !source.settled() {
        return;
    }
    if let Err(e) = write_kept(state_dir, source, list, (files, data_bytes), hardlinked) {
        log::warn(format!("could not keep the local checksum list: {e}"));
        forget(state_dir);
    }
}

fn write_kept(
    state_dir: &Path,
    source: &SourceState,
    list: &mut File,
    (files, data_bytes): (usize, u64),
    hardlinked: &[String],
) -> Result<()> {
    let path = state_dir.join(LIST_FILE);
    let mut copy = AtomicFile::create(&path)?;
    let (bytes, sum) =
        copy_hashing(list, &mut copy).ctx(|| format!("writing {}", path.display()))?;
    copy.commit()?;
    state::KeptList {
        data_bytes,
        files,
        fingerprint: source.fingerprint.clone(),
        hardlinked: hardlinked.to_vec(),
        list_bytes: bytes,
        list_sha1: sum,
    }
    .write(state_dir)
}

/// Drops the kept list (the state first: see `state::KeptList::forget`).
pub fn forget(state_dir: &Path) {
    state::KeptList::forget(state_dir);
}

/// Copies `from` (from its start) into `to`: its length and hex sha1.
fn copy_hashing(from: &mut File, to: &mut impl Write) -> std::io::Result<(u64, String)> {
    from.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha1::new();
    let bytes = checksums::copy_hashing(from, to, &mut hasher)?;
    Ok((bytes, to_hex(&hasher.finalize().into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::settled;
    use std::io::Read;

    fn list_file(dir: &Path, text: &str) -> File {
        let path = dir.join("scratch");
        std::fs::write(&path, text).unwrap();
        File::open(path).unwrap()
    }

    fn read(mut file: File) -> String {
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn a_kept_list_comes_back_only_for_the_same_fingerprint_and_intact() {
        let dir = std::env::temp_dir().join(format!("ciphersync-kept-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let text = "aa  ./x\nbb  ./y\n";
        let mut list = list_file(&dir, text);
        list.seek(SeekFrom::End(0)).unwrap();
        keep(&dir, &settled("f1"), &mut list, (2, 10), &["y".into()]);

        let kept = reuse(&dir, &settled("f1")).expect("same fingerprint");
        assert_eq!(
            (kept.files, kept.hardlinked.clone()),
            (2, vec!["y".to_string()])
        );
        assert_eq!(read(kept.list), text);
        assert!(reuse(&dir, &settled("f2")).is_none(), "another fingerprint");

        // A damaged copy is not used.
        std::fs::write(dir.join(LIST_FILE), "aa  ./x\nbc  ./y\n").unwrap();
        assert!(reuse(&dir, &settled("f1")).is_none(), "a damaged list");

        // A source that changed just before its walk is not kept at all.
        let mut list = list_file(&dir, text);
        let racy = SourceState {
            walked_at_ns: 1,
            ..settled("f3")
        };
        keep(&dir, &racy, &mut list, (2, 10), &[]);
        assert!(reuse(&dir, &racy).is_none());
        assert!(!dir.join(LIST_FILE).exists() && state::KeptList::read(&dir).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
