//! The plaintext of the last manifest a backup walked (metadata.rs), kept
//! in the state dir for the next backup.
//!
//! When the source's fingerprint (fingerprint.rs) is what it was before
//! that walk, so is every entry's owner, mode, ACL and xattr (a change of
//! any of them moves the entry's ctime), and the manifest would be the
//! same but for the run id in its headers: the next backup writes the kept
//! copy under its own id instead of walking the source. On SMALL (200,000
//! entries) at 20 ms that walk was the longest step of a backup with
//! nothing to send (2.5–3.1 s of 4.3 s). The owners' names come from the
//! user and group databases, which the fingerprint does not cover: the
//! copy is used only while /etc/passwd and /etc/group are as they were.
//!
//! Like the verify's kept list (verify_cache.rs) it only saves work: a
//! missing or damaged copy costs a walk. It holds the source's owners,
//! ACLs, xattrs and paths in the clear, in the job's state dir (0700), on
//! the machine that has the source.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use crate::checksums::{self, to_hex};
use crate::error::{Error, IoContext, Kind, Result};
use crate::fingerprint::SourceState;
use crate::log;
use crate::metadata::{self, Counts};
use crate::state::{KEPT_MANIFEST, KeptFile, KeptManifest};

/// Writes the kept manifest into `plain` (the manifest's mount) with run
/// `id` in its headers, where it was walked from a source with this
/// fingerprint and the names are as they were then: its counts. None where
/// there is none to use (the caller walks the source); a damaged copy is
/// forgotten, with a warning.
pub fn reuse(state_dir: &Path, source: &SourceState, id: &str, plain: &Path) -> Option<Counts> {
    let kept = KeptManifest::read(state_dir)?;
    if kept.fingerprint != source.fingerprint || Some(&kept.names) != names_stamp().as_ref() {
        return None;
    }
    match write_kept(&state_dir.join(KEPT_MANIFEST), &kept, id, plain) {
        Ok(()) => Some(kept.counts),
        Err(e) => {
            log::warn(format!(
                "the kept metadata manifest cannot be used ({e}); walking the source"
            ));
            KeptManifest::forget(state_dir);
            None
        }
    }
}

fn write_kept(dir: &Path, kept: &KeptManifest, id: &str, plain: &Path) -> Result<()> {
    for name in metadata::FILES {
        let want = kept
            .files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| Error::new(Kind::Corrupt, format!("{name} is not listed")))?;
        let path = dir.join(name);
        let from = File::open(&path).ctx(|| format!("reading {}", path.display()))?;
        let out = plain.join(name);
        let mut to = File::create(&out).ctx(|| format!("creating {}", out.display()))?;
        let (bytes, sha1) = copy_under_header(from, &mut to, name, id)
            .ctx(|| format!("copying {} to {}", path.display(), out.display()))?;
        if (bytes, sha1.as_str()) != (want.bytes, want.sha1.as_str()) {
            return Err(Error::new(
                Kind::Corrupt,
                format!("{} changed since it was kept", path.display()),
            ));
        }
        metadata::pad(&to).ctx(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// Copies a kept file with run `id`'s header in place of its first line
/// where it has one; the length and sha1 of the kept file as it is.
fn copy_under_header(
    from: File,
    to: &mut File,
    name: &str,
    id: &str,
) -> std::io::Result<(u64, String)> {
    let mut from = BufReader::with_capacity(256 * 1024, from);
    let mut to = BufWriter::with_capacity(256 * 1024, to);
    let mut hasher = Sha1::new();
    let mut bytes = 0u64;
    if metadata::HEADED.contains(&name) {
        let mut first = Vec::new();
        (&mut from).take(4096).read_until(b'\n', &mut first)?;
        if !metadata::is_header(&first) {
            return Err(std::io::Error::other(
                "its first line is not a manifest header",
            ));
        }
        hasher.update(&first);
        bytes += first.len() as u64;
        to.write_all(metadata::header_line(id).as_bytes())?;
    }
    bytes += checksums::copy_hashing(&mut from, &mut to, &mut hasher)?;
    to.flush()?;
    Ok((bytes, to_hex(&hasher.finalize().into())))
}

/// A walk's manifest on its way into the state dir: the old copy is
/// forgotten first, the new one is kept only if whole.
pub struct Keeping {
    state_dir: PathBuf,
    fingerprint: String,
    names: String,
}

/// Keeping for a walk of a source with this fingerprint, taken before the
/// walk; None (and nothing kept) where a later run could not trust it: a
/// source that changed just before its fingerprint (see `settled`), names
/// whose databases cannot be stamped, a dir that cannot be made.
pub fn keeping(state_dir: &Path, source: Option<&SourceState>) -> Option<Keeping> {
    KeptManifest::forget(state_dir);
    let source = source.filter(|s| s.settled())?;
    let names = names_stamp()?;
    if let Err(e) = crate::crypt::create_private_dir(&state_dir.join(KEPT_MANIFEST)) {
        log::debug(|| format!("the manifest is not kept: {e}"));
        return None;
    }
    Some(Keeping {
        state_dir: state_dir.to_path_buf(),
        fingerprint: source.fingerprint.clone(),
        names,
    })
}

impl Keeping {
    /// A new file for the copy of the manifest's `name`; None where it
    /// cannot be made.
    pub fn copy(&self, name: &str) -> Option<KeptCopy> {
        let path = self.state_dir.join(KEPT_MANIFEST).join(name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .inspect_err(|e| log::debug(|| format!("{}: {e}", path.display())))
            .ok()?;
        Some(KeptCopy {
            name: name.to_string(),
            out: BufWriter::with_capacity(256 * 1024, file),
            hasher: Sha1::new(),
            bytes: 0,
        })
    }

    /// Keeps the walk's copies where every one of them is whole and the
    /// walk read every entry (one it could not read may be readable the
    /// next time, with the same fingerprint).
    pub fn keep(self, counts: &Counts, copies: Vec<Option<KeptCopy>>) {
        let kept = || -> Result<()> {
            let mut files = Vec::new();
            for copy in copies {
                let copy = copy.ok_or_else(|| Error::new(Kind::Io, "a copy was not written"))?;
                files.push(copy.finish()?);
            }
            KeptManifest {
                counts: counts.clone(),
                fingerprint: self.fingerprint.clone(),
                files,
                names: self.names.clone(),
            }
            .write(&self.state_dir)
        };
        let result = match counts.unreadable {
            0 => kept(),
            n => Err(Error::new(Kind::Io, format!("{n} entries were unreadable"))),
        };
        if let Err(e) = result {
            log::debug(|| format!("the manifest is not kept: {e}"));
            KeptManifest::forget(&self.state_dir);
        }
    }
}

/// One file of the kept manifest, being written.
pub struct KeptCopy {
    name: String,
    out: BufWriter<File>,
    hasher: Sha1,
    bytes: u64,
}

impl KeptCopy {
    fn finish(self) -> Result<KeptFile> {
        let KeptCopy {
            name,
            out,
            hasher,
            bytes,
        } = self;
        let file = out
            .into_inner()
            .map_err(|e| Error::io(format!("keeping {name}"), e.into_error()))?;
        file.sync_all()
            .map_err(|e| Error::io(format!("keeping {name}"), e))?;
        Ok(KeptFile {
            bytes,
            name,
            sha1: to_hex(&hasher.finalize().into()),
        })
    }
}

impl Write for KeptCopy {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The user and group databases as `names` of metadata.rs looks owners up
/// in them (files): device, inode, size and change time of each. None when
/// either cannot be read.
fn names_stamp() -> Option<String> {
    let stamp = |path: &str| {
        let m = std::fs::metadata(path).ok()?;
        Some(format!(
            "{}:{}:{}:{}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.ctime(),
            m.ctime_nsec()
        ))
    };
    Some(format!(
        "{} {}",
        stamp("/etc/passwd")?,
        stamp("/etc/group")?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::settled;

    /// Writes a manifest of `text` per file as a walk does, keeping it.
    fn walk(state_dir: &Path, source: &SourceState, id: &str, plain: &Path) {
        let keeping = keeping(state_dir, Some(source)).expect("keeping");
        let mut copies = Vec::new();
        for name in metadata::FILES {
            let mut copy = keeping.copy(name).expect("a copy");
            let mut text = String::new();
            if metadata::HEADED.contains(&name) {
                text.push_str(&metadata::header_line(id));
            }
            text.push_str(&format!("# file: {name}-entry\n"));
            copy.write_all(text.as_bytes()).unwrap();
            std::fs::write(plain.join(name), &text).unwrap();
            copies.push(Some(copy));
        }
        let counts = Counts {
            entries: 3,
            ..Counts::default()
        };
        keeping.keep(&counts, copies);
    }

    #[test]
    fn the_kept_manifest_comes_back_under_the_new_id_for_the_same_source_only() {
        let dir = crate::test_util::temp_dir("metadata-cache");
        let (state, first, second) = (dir.join("state"), dir.join("a"), dir.join("b"));
        for d in [&state, &first, &second] {
            std::fs::create_dir_all(d).unwrap();
        }
        let source = settled("f1");
        walk(&state, &source, "20261206T010000Z", &first);

        assert_eq!(
            reuse(&state, &settled("f2"), "20261206T020000Z", &second),
            None
        );
        let counts = reuse(&state, &source, "20261206T020000Z", &second).expect("reused");
        assert_eq!(counts.entries, 3);
        for name in metadata::FILES {
            let was = std::fs::read_to_string(first.join(name)).unwrap();
            let now = std::fs::read_to_string(second.join(name)).unwrap();
            let now = now.trim_end_matches('\n');
            let want = was.replace("20261206T010000Z", "20261206T020000Z");
            assert_eq!(now, want.trim_end_matches('\n'), "{name}");
            if metadata::HEADED.contains(&name) {
                assert!(now.contains("20261206T020000Z"), "{name}: {now}");
            }
        }
        // Padded as a walked manifest is.
        let len = std::fs::metadata(second.join(metadata::ACL_FILE))
            .unwrap()
            .len();
        assert_eq!(len % (64 * 1024), 0);

        // A copy changed behind its state is not used, and forgotten.
        let acl = state.join(KEPT_MANIFEST).join(metadata::ACL_FILE);
        let text = std::fs::read_to_string(&acl).unwrap();
        std::fs::write(&acl, text.replace("entry", "ENTRY")).unwrap();
        assert_eq!(reuse(&state, &source, "20261206T030000Z", &second), None);
        assert!(KeptManifest::read(&state).is_none());
        assert!(!state.join(KEPT_MANIFEST).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nothing_is_kept_from_an_unsettled_source_or_a_walk_that_missed_entries() {
        let dir = crate::test_util::temp_dir("metadata-cache-not");
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let unsettled = SourceState {
            fingerprint: "f1".into(),
            newest_change_ns: i64::MAX,
            walked_at_ns: 0,
        };
        assert!(keeping(&state, Some(&unsettled)).is_none());
        assert!(keeping(&state, None).is_none());

        let keeping = keeping(&state, Some(&settled("f1"))).unwrap();
        let copies = metadata::FILES.iter().map(|n| keeping.copy(n)).collect();
        let counts = Counts {
            unreadable: 1,
            ..Counts::default()
        };
        keeping.keep(&counts, copies);
        assert!(KeptManifest::read(&state).is_none());
        assert!(!state.join(KEPT_MANIFEST).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
