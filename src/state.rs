//! What a job keeps in its state dir between runs, typed: the last
//! backup, the repair list verify leaves for the next backup, the marker of
//! an unfinished backup, and the state of the kept verify list. The one
//! place that knows these files' names and formats.
//!
//! Every reader treats a missing or unreadable file as absent: state only
//! saves work or carries a finding forward, and a damaged file must cost a
//! full run, never stop one. (status.json is status.rs's.)

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};
use crate::status::write_atomic;

/// The local sha1s of earlier verify runs (format: `checksums::Cache`).
pub const SHA1_CACHE: &str = "sha1-cache.tsv";
/// The last verify's local list, kept for the next (see verify_cache.rs).
pub const KEPT_LIST: &str = "verify-local.sha1";
/// What `KEPT_LIST` was made from: `KeptList`.
const KEPT_LIST_STATE: &str = "verify-local.json";
/// The last walked manifest's plaintext, kept for the next backup (see
/// metadata_cache.rs): a directory of its three files.
pub const KEPT_MANIFEST: &str = "metadata-kept";
/// What `KEPT_MANIFEST` was made from: `KeptManifest`.
const KEPT_MANIFEST_STATE: &str = "metadata-kept.json";
/// `LastBackup`.
const LAST_BACKUP: &str = "last-backup.json";
/// `RepairList`.
const REPAIR_LIST: &str = "repair.list";
/// `SampleRotation`.
const SAMPLE_ROTATION: &str = "verify-sample.json";
/// `AccountCapabilities`.
const CAPABILITIES: &str = "target-capabilities.json";

/// The last successful backup: its snapshot id (a new run never reuses it)
/// and its exact start time (verify treats files changed after it as
/// pending); with the source's fingerprint and the stamps of files/ when
/// the run could vouch for both (together they say "nothing to send").
///
/// Fields in name order, so the file reads as it did when it was written
/// from an untyped JSON map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastBackup {
    /// The gocryptfs release the backup's view was made with (the deletion
    /// guard's GocryptfsChange); None when gocryptfs printed none, or the
    /// file is older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gocryptfs_release: Option<[u32; 3]>,
    pub snapshot: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_fingerprint: Option<String>,
    /// ns since the epoch; a JSON string, as a number this large would lose
    /// precision in many JSON readers.
    #[serde(with = "decimal_string")]
    pub started_ns: i128,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_stamps: Option<String>,
    /// Whether the server kept that run's modes and symlinks (its record
    /// holds none): a run that finds files/ with the same stamps and
    /// nothing to send takes this instead of trying the server again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_kept_all: Option<bool>,
}

impl LastBackup {
    /// None when there is none, or it cannot be read.
    pub fn read(state_dir: &Path) -> Option<LastBackup> {
        read_json(&state_dir.join(LAST_BACKUP))
    }

    pub fn write(&self, state_dir: &Path) -> Result<()> {
        let text = serde_json::to_string(self).expect("plain fields serialise");
        write_atomic(&state_dir.join(LAST_BACKUP), text.as_bytes())
    }
}

/// Encrypted paths (relative to files/) that the last verify found damaged
/// on the target, for the next backup to re-send by checksum. Stored as
/// NUL-terminated paths, the form `rsync --from0 --files-from` reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairList {
    pub paths: Vec<String>,
}

impl RepairList {
    /// None when there is no list. A path that is not UTF-8 (verify never
    /// writes one) is left out.
    pub fn read(state_dir: &Path) -> Option<RepairList> {
        let bytes = std::fs::read(state_dir.join(REPAIR_LIST)).ok()?;
        let paths = bytes
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .filter_map(|p| std::str::from_utf8(p).ok())
            .map(String::from)
            .collect();
        Some(RepairList { paths })
    }

    /// Whether a list is waiting for the next backup.
    pub fn pending(state_dir: &Path) -> bool {
        state_dir.join(REPAIR_LIST).exists()
    }

    /// Replaces the list; no paths means no list.
    pub fn save(state_dir: &Path, paths: &[String]) -> Result<()> {
        if paths.is_empty() {
            Self::clear(state_dir);
            return Ok(());
        }
        let mut bytes = Vec::new();
        for rel in paths {
            bytes.extend_from_slice(rel.as_bytes());
            bytes.push(0);
        }
        write_atomic(&state_dir.join(REPAIR_LIST), &bytes)
    }

    /// After a backup that re-sent them; a list that is not there is fine.
    pub fn clear(state_dir: &Path) {
        let _ = std::fs::remove_file(state_dir.join(REPAIR_LIST));
    }
}

/// An empty-ish file whose presence says something about the last run.
pub struct Marker {
    name: &'static str,
}

/// Left in the state dir while rsync runs: if it is there when a backup
/// starts, the previous one was killed and may have left temp files. It
/// holds the snapshot id of that run.
pub const BACKUP_INCOMPLETE: Marker = Marker {
    name: "backup.incomplete",
};

impl Marker {
    pub fn path(&self, state_dir: &Path) -> PathBuf {
        state_dir.join(self.name)
    }

    pub fn is_set(&self, state_dir: &Path) -> bool {
        self.path(state_dir).exists()
    }

    pub fn set(&self, state_dir: &Path, content: &str) -> Result<()> {
        let path = self.path(state_dir);
        crate::fsutil::write_atomic(&path, content.as_bytes())
    }

    pub fn clear(&self, state_dir: &Path) -> Result<()> {
        let path = self.path(state_dir);
        std::fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))
    }
}

/// What the kept verify list (`KEPT_LIST`) was made from, and its length
/// and sha1, so that a damaged copy is never used. Fields in name order, as
/// in `LastBackup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptList {
    /// Bytes of the listed (encrypted) files: the possession check sizes
    /// its sample from it. A state written before it existed does not
    /// read, so its list is made anew once.
    pub data_bytes: u64,
    pub files: usize,
    /// The source's fingerprint when the list was made.
    pub fingerprint: String,
    /// Hard-linked files, never compared (see `checksums::FileSum`).
    pub hardlinked: Vec<String>,
    pub list_bytes: u64,
    pub list_sha1: String,
}

impl KeptList {
    pub fn read(state_dir: &Path) -> Option<KeptList> {
        read_json(&state_dir.join(KEPT_LIST_STATE))
    }

    pub fn write(&self, state_dir: &Path) -> Result<()> {
        let text = serde_json::to_string(self).expect("plain fields serialise");
        write_atomic(&state_dir.join(KEPT_LIST_STATE), text.as_bytes())
    }

    /// The state goes first, so a list is never taken for another source.
    pub fn forget(state_dir: &Path) {
        let _ = std::fs::remove_file(state_dir.join(KEPT_LIST_STATE));
        let _ = std::fs::remove_file(state_dir.join(KEPT_LIST));
    }
}

/// What the kept manifest was made from and holds: the source's
/// fingerprint and the user and group databases when it was walked, its
/// counts, and each file's length and sha1, so that a damaged copy is
/// never used. Fields in name order, as in `LastBackup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptManifest {
    pub counts: crate::metadata::Counts,
    pub fingerprint: String,
    pub files: Vec<KeptFile>,
    /// `/etc/passwd` and `/etc/group` as the owners' names were looked up.
    pub names: String,
}

/// One file of the kept manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptFile {
    pub bytes: u64,
    pub name: String,
    pub sha1: String,
}

impl KeptManifest {
    pub fn read(state_dir: &Path) -> Option<KeptManifest> {
        read_json(&state_dir.join(KEPT_MANIFEST_STATE))
    }

    pub fn write(&self, state_dir: &Path) -> Result<()> {
        let text = serde_json::to_string(self).expect("plain fields serialise");
        write_atomic(&state_dir.join(KEPT_MANIFEST_STATE), text.as_bytes())
    }

    /// The state goes first, so the files are never taken for another
    /// source.
    pub fn forget(state_dir: &Path) {
        let _ = std::fs::remove_file(state_dir.join(KEPT_MANIFEST_STATE));
        let _ = std::fs::remove_dir_all(state_dir.join(KEPT_MANIFEST));
    }
}

/// Where the possession check's rotation stands (sample.rs): a secret key
/// that orders the files in a way the server cannot know, and how far the
/// rotation has come in that order. A lost or damaged state starts a new
/// rotation with a new key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleRotation {
    /// Where the next run's window starts.
    pub cursor: u64,
    /// 32 hex digits.
    pub key: String,
}

impl SampleRotation {
    pub fn read(state_dir: &Path) -> Option<SampleRotation> {
        read_json(&state_dir.join(SAMPLE_ROTATION))
    }

    pub fn write(&self, state_dir: &Path) -> Result<()> {
        let text = serde_json::to_string(self).expect("plain fields serialise");
        write_atomic(&state_dir.join(SAMPLE_ROTATION), text.as_bytes())
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// An integer written as a JSON string of its decimal digits.
mod decimal_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(value: &i128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i128, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// What the SFTP account allowed when it was probed (target/probe.rs),
/// for the account and the host key it was probed with: re-probed when
/// either changes, or after a run failed on the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountCapabilities {
    /// `user@host:port:path`.
    pub account: String,
    /// sha1 of the known_hosts file the probe trusted.
    pub known_hosts: String,
    pub shell: bool,
    pub rsync_server: bool,
    pub sha1sum: bool,
    /// The account is a `ciphersync serve` account (it answered
    /// `ciphersync-server info`). No default: a cache written before the
    /// field existed does not read, and the account is probed again.
    pub ciphersync_server: bool,
}

impl AccountCapabilities {
    pub fn read(state_dir: &Path) -> Option<AccountCapabilities> {
        read_json(&state_dir.join(CAPABILITIES))
    }

    pub fn write(&self, state_dir: &Path) -> Result<()> {
        let text = serde_json::to_string(self).expect("plain fields serialise");
        write_atomic(&state_dir.join(CAPABILITIES), text.as_bytes())
    }

    pub fn forget(state_dir: &Path) {
        let _ = std::fs::remove_file(state_dir.join(CAPABILITIES));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::temp_dir;

    /// The file as the untyped version wrote it (`json!` sorts its keys)
    /// reads back, and is written again byte for byte.
    #[test]
    fn last_backup_reads_and_writes_the_old_format() {
        let dir = temp_dir("state-last");
        let old = r#"{"snapshot":"20261129T030000Z","source_fingerprint":"ab","started_ns":"1795921200123456789","target_stamps":"cd"}"#;
        std::fs::write(dir.join(LAST_BACKUP), old).unwrap();
        let last = LastBackup::read(&dir).expect("readable");
        assert_eq!(
            last,
            LastBackup {
                snapshot: "20261129T030000Z".into(),
                source_fingerprint: Some("ab".into()),
                started_ns: 1_795_921_200_123_456_789,
                target_stamps: Some("cd".into()),
                target_kept_all: None,
                gocryptfs_release: None,
            }
        );
        last.write(&dir).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(LAST_BACKUP)).unwrap(), old);

        let bare = LastBackup {
            source_fingerprint: None,
            target_stamps: None,
            ..last
        };
        bare.write(&dir).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(LAST_BACKUP)).unwrap(),
            r#"{"snapshot":"20261129T030000Z","started_ns":"1795921200123456789"}"#
        );
        assert_eq!(LastBackup::read(&dir), Some(bare.clone()));

        // The gocryptfs release, when known, is kept as [major, minor, patch].
        let with_release = LastBackup {
            gocryptfs_release: Some([2, 6, 1]),
            ..bare
        };
        with_release.write(&dir).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(LAST_BACKUP)).unwrap(),
            r#"{"gocryptfs_release":[2,6,1],"snapshot":"20261129T030000Z","started_ns":"1795921200123456789"}"#
        );
        assert_eq!(LastBackup::read(&dir), Some(with_release));

        for damaged in ["", "{", "[]", r#"{"snapshot":"x","started_ns":"soon"}"#] {
            std::fs::write(dir.join(LAST_BACKUP), damaged).unwrap();
            assert_eq!(LastBackup::read(&dir), None, "{damaged}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn repair_list_round_trips_and_empty_means_none() {
        let dir = temp_dir("state-repair");
        assert_eq!(RepairList::read(&dir), None);
        let paths = vec!["Ab/Cd".to_string(), "Ef".to_string()];
        RepairList::save(&dir, &paths).unwrap();
        assert!(RepairList::pending(&dir));
        assert_eq!(
            std::fs::read(dir.join(REPAIR_LIST)).unwrap(),
            b"Ab/Cd\0Ef\0"
        );
        assert_eq!(RepairList::read(&dir), Some(RepairList { paths }));
        RepairList::save(&dir, &[]).unwrap();
        assert!(!RepairList::pending(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_marker_is_set_and_cleared() {
        let dir = temp_dir("state-marker");
        assert!(!BACKUP_INCOMPLETE.is_set(&dir));
        BACKUP_INCOMPLETE.set(&dir, "20261129T030000Z").unwrap();
        assert!(dir.join("backup.incomplete").exists());
        assert!(BACKUP_INCOMPLETE.is_set(&dir));
        BACKUP_INCOMPLETE.clear(&dir).unwrap();
        assert!(!BACKUP_INCOMPLETE.is_set(&dir));
        assert!(BACKUP_INCOMPLETE.clear(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
