//! A fingerprint of the plaintext source: one sha1 over every entry's path,
//! type and mode, size, times, inode and link count, and over the job
//! settings that shape the encrypted view (the gocryptfs config, the
//! excludes). gocryptfs -reverse derives the view from exactly these (names
//! and IVs from the paths and the key, content from the files, whose change
//! always moves ctime), so an equal fingerprint means an equal view.
//!
//! Walking the plaintext needs no FUSE mount and no scrypt, only a stat per
//! entry. Backup and verify use it to skip the work that would only learn,
//! through the view, that nothing changed since their last run.

use std::os::unix::fs::MetadataExt;

use sha1::{Digest, Sha1};

use crate::checksums::{self, Stamp};
use crate::config::Job;
use crate::error::{IoContext, Result};
use crate::{interrupt, log, walk};

/// The source as one run found it, before it read the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceState {
    /// Hex sha1 of the settings and of every entry's metadata.
    pub fingerprint: String,
    /// The newest change (mtime or ctime) of any entry, in ns.
    pub newest_change_ns: i64,
    /// When the walk started, in ns.
    pub walked_at_ns: i64,
}

impl SourceState {
    /// Whether a later run may trust this fingerprint: not when an entry
    /// changed just before the walk (see `Stamp::settled_before`).
    pub fn settled(&self) -> bool {
        checksums::settled(self.newest_change_ns, self.walked_at_ns)
    }
}

/// The fingerprint of the job's source, or None (with the reason in the
/// debug log) when part of it cannot be read: then nothing is skipped.
pub fn of_source(job: &Job) -> Option<SourceState> {
    if on_network_filesystem(&job.source) {
        log::debug(|| "no fingerprint of a source on a network filesystem".into());
        return None;
    }
    match walk_source(job) {
        Ok(state) => {
            log::debug(|| "fingerprint of the source: taken".into());
            Some(state)
        }
        Err(e) => {
            log::debug(|| format!("no fingerprint of the source: {e}"));
            None
        }
    }
}

/// File times there come from the server's clock, which may lag ours by
/// more than the 2 s that `settled` allows for.
fn on_network_filesystem(path: &std::path::Path) -> bool {
    use nix::sys::statfs::{self, FsType};
    const CIFS: FsType = FsType(0xFF53_4D42);
    const SMB2: FsType = FsType(0xFE53_4D42);
    const CEPH: FsType = FsType(0x00C3_6400);
    const V9FS: FsType = FsType(0x0102_1997);
    let network = [
        statfs::NFS_SUPER_MAGIC,
        statfs::SMB_SUPER_MAGIC,
        statfs::AFS_SUPER_MAGIC,
        statfs::CODA_SUPER_MAGIC,
        statfs::NCP_SUPER_MAGIC,
        statfs::FUSE_SUPER_MAGIC,
        CIFS,
        SMB2,
        CEPH,
        V9FS,
    ];
    statfs::statfs(path).is_ok_and(|s| network.contains(&s.filesystem_type()))
}

fn walk_source(job: &Job) -> Result<SourceState> {
    let walked_at_ns = checksums::now_ns();
    let mut hasher = Sha1::new();
    hasher.update(b"ciphersync source fingerprint 1\0");
    add_settings(&mut hasher, job)?;
    let root = &job.source;
    let meta = std::fs::symlink_metadata(root).ctx(|| format!("reading {}", root.display()))?;
    let mut newest_change_ns = add_entry(&mut hasher, b"", &meta);
    for entry in walk::sorted(root) {
        interrupt::check()?;
        let entry = entry.map_err(|e| walk::error(root, e))?;
        let meta = entry.metadata().map_err(|e| walk::error(root, e))?;
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let changed_ns = add_entry(&mut hasher, rel.as_os_str().as_encoded_bytes(), &meta);
        newest_change_ns = newest_change_ns.max(changed_ns);
    }
    Ok(SourceState {
        fingerprint: checksums::to_hex(&hasher.finalize().into()),
        newest_change_ns,
        walked_at_ns,
    })
}

/// What, besides the tree, decides the view: the key and feature flags
/// (the config), which paths are left out, and how names are stored.
fn add_settings(hasher: &mut Sha1, job: &Job) -> Result<()> {
    let config = std::fs::read(&job.gocryptfs_config)
        .ctx(|| format!("reading {}", job.gocryptfs_config.display()))?;
    hasher.update(Sha1::digest(&config));
    add_field(hasher, job.source.as_os_str().as_encoded_bytes());
    add_field(hasher, format!("{:?}", job.filenames).as_bytes());
    add_field(hasher, &[u8::from(job.config_in_source())]);
    hasher.update((job.exclude.len() as u64).to_le_bytes());
    for pattern in &job.exclude {
        add_field(hasher, pattern.as_bytes());
    }
    Ok(())
}

/// A length-prefixed field: two different lists never hash alike.
fn add_field(hasher: &mut Sha1, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

/// Hashes one entry; returns its last change (see `Stamp::changed_ns`).
fn add_entry(hasher: &mut Sha1, rel: &[u8], meta: &std::fs::Metadata) -> i64 {
    add_field(hasher, rel);
    let stamp = Stamp::of(meta);
    for value in [
        u64::from(meta.mode()),
        stamp.size,
        stamp.mtime_ns as u64,
        stamp.ctime_ns as u64,
        stamp.ino,
        meta.nlink(),
    ] {
        hasher.update(value.to_le_bytes());
    }
    stamp.changed_ns()
}

/// Whether an entry of `state` was changed at or after `since_ns` (the
/// start of the last backup): such a file may not be on the target yet.
pub fn changed_since(state: &SourceState, since_ns: Option<i128>) -> bool {
    since_ns.is_some_and(|since| i128::from(state.newest_change_ns) >= since)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The fingerprint of `root/src`, with the config in `root`.
    fn of_tree(src: &Path) -> SourceState {
        let root = src.parent().unwrap();
        let job = crate::config::parse(
            &serde_json::json!({
                "version": 1, "name": "t", "source": src,
                "password_file": root.join("password"),
                "gocryptfs_config": root.join("gocryptfs.reverse.conf"),
                "target": { "type": "local", "path": root.join("target") },
                "state_dir": root, "runtime_dir": root.join("run"),
            })
            .to_string(),
        )
        .unwrap();
        walk_source(&job).unwrap()
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!(
            "ciphersync-fingerprint-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("src/dir")).unwrap();
        std::fs::write(root.join("src/dir/a"), "alpha").unwrap();
        std::fs::write(root.join("src/b"), "beta").unwrap();
        std::fs::write(root.join("gocryptfs.reverse.conf"), "{}").unwrap();
        root
    }

    /// Each kind of change a view would show moves the fingerprint; reading
    /// the tree again does not.
    #[test]
    fn every_change_of_the_view_changes_the_fingerprint() {
        let root = temp("changes");
        let src = root.join("src");
        let first = of_tree(&src);
        assert_eq!(
            of_tree(&src).fingerprint,
            first.fingerprint,
            "a second walk of an unchanged tree"
        );
        type Change<'a> = (&'a str, Box<dyn Fn() + 'a>);
        let changes: [Change; 7] = [
            // (A same-size rewrite within one clock tick is the racy case that
            // `settled` guards against.)
            (
                "content",
                Box::new(|| std::fs::write(src.join("dir/a"), "alpha 2").unwrap()),
            ),
            (
                "times",
                Box::new(|| {
                    let file = std::fs::File::options()
                        .write(true)
                        .open(src.join("b"))
                        .unwrap();
                    file.set_modified(std::time::UNIX_EPOCH).unwrap()
                }),
            ),
            (
                "new file",
                Box::new(|| std::fs::write(src.join("dir/c"), "").unwrap()),
            ),
            (
                "rename",
                Box::new(|| std::fs::rename(src.join("b"), src.join("b2")).unwrap()),
            ),
            (
                "mode",
                Box::new(|| {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(
                        src.join("dir"),
                        std::fs::Permissions::from_mode(0o700),
                    )
                    .unwrap()
                }),
            ),
            (
                "hard link",
                Box::new(|| std::fs::hard_link(src.join("dir/a"), src.join("a2")).unwrap()),
            ),
            (
                "config",
                Box::new(|| std::fs::write(root.join("gocryptfs.reverse.conf"), "{ }").unwrap()),
            ),
        ];
        let mut seen = vec![first.fingerprint];
        for (what, change) in changes {
            change();
            let now = of_tree(&src).fingerprint;
            assert!(
                !seen.contains(&now),
                "{what} did not change the fingerprint"
            );
            seen.push(now);
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn files_changed_after_the_last_backup_are_seen() {
        let root = temp("since");
        let state = of_tree(&root.join("src"));
        assert!(!changed_since(&state, None));
        assert!(!changed_since(
            &state,
            Some(i128::from(state.newest_change_ns) + 1)
        ));
        assert!(changed_since(
            &state,
            Some(i128::from(state.newest_change_ns))
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A tree written just now may change again within the same tick of
    /// the filesystem clock without a new stamp: not to be trusted yet.
    #[test]
    fn a_fresh_tree_is_not_settled_an_old_one_is() {
        let root = temp("settled");
        let src = root.join("src");
        let fresh = of_tree(&src);
        assert!(!fresh.settled());
        let later = SourceState {
            walked_at_ns: fresh.newest_change_ns + checksums::settle_ns() + 1,
            ..fresh
        };
        assert!(later.settled());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
