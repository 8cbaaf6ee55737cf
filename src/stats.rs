//! The figures each stage reports, as `--json` and status.json show them
//! under `stats`. The JSON field names are an interface (scripts and the
//! tests read them): a field is renamed only with its readers.

use std::path::PathBuf;

use serde::Serialize;

/// One stage's figures; serialised as the inner struct alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum StageStats {
    Backup(BackupStats),
    Verify(VerifyStats),
    DeepVerify(DeepVerifyStats),
    Restore(RestoreStats),
    Prune(PruneStats),
}

impl StageStats {
    /// The JSON object status.json keeps.
    pub fn to_json(&self) -> serde_json::Value {
        // Every field is a number, a string, a list of strings or a path;
        // a path that is not UTF-8 fails here (as `json!` did before).
        serde_json::to_value(self).expect("stage stats serialise")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BackupStats {
    /// The user's files after the run (from its record).
    pub files: u64,
    /// Regular files sent, and their bytes.
    pub transferred: u64,
    pub bytes_transferred: u64,
    pub deleted: u64,
    /// Files and symlinks created, changed or deleted.
    pub changed: u64,
    /// Files that the last verify found damaged and this run re-sent.
    pub repaired: u64,
    pub snapshot: String,
    /// Encrypted bytes of the user's files after the run.
    pub bytes: u64,
    /// Snapshot dirs removed by the retention.
    pub pruned: Vec<String>,
    /// Source files that could not be read (outcome `partial`), each as
    /// `plaintext path (rsync's reason)`.
    pub unreadable: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyStats {
    pub files: usize,
    /// Files read (not taken from the sha1 cache or a kept list).
    pub hashed: usize,
    /// Changed after the last backup started: not compared.
    pub pending: usize,
    pub hardlinked: usize,
    /// Remote files read back and compared (the possession check,
    /// sample.rs), and their bytes.
    pub sampled: usize,
    pub sampled_bytes: u64,
    /// Runs until every file has been read back once.
    pub sample_rotation_runs: u64,
    /// Plaintext paths where they can be decrypted.
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub changed: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeepVerifyStats {
    pub files: usize,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub changed: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestoreStats {
    pub to: PathBuf,
    /// The run restored; None (`null`) for the latest state.
    pub snapshot: Option<String>,
    pub files: u64,
    pub bytes: u64,
    /// How the ciphertext was read from the target.
    pub read_via: ReadVia,
}

/// How restore read the ciphertext: what an operator needs to know when a
/// restore over a WAN is slow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadVia {
    /// A local disk.
    #[default]
    Local,
    /// Through the sshfs mount, file by file.
    Sshfs,
    /// Pulled with rsync over ssh into a local stage, one stream per source.
    Rsync,
    /// Fetched over SFTP into a local stage, many requests in flight.
    Sftp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneStats {
    pub dry_run: bool,
    pub records: Vec<String>,
    pub snapshot_dirs: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The names and shapes that `json!` gave them before they had types.
    #[test]
    fn stats_keep_their_json_names() {
        let backup = StageStats::Backup(BackupStats {
            files: 3,
            transferred: 2,
            bytes_transferred: 100,
            deleted: 1,
            changed: 4,
            repaired: 0,
            snapshot: "20261129T030000Z".into(),
            bytes: 300,
            pruned: vec!["20261101T030000Z".into()],
            unreadable: vec!["docs/a.txt (Permission denied (13))".into()],
        });
        assert_eq!(
            backup.to_json(),
            json!({
                "files": 3, "transferred": 2, "bytes_transferred": 100, "deleted": 1,
                "changed": 4, "repaired": 0, "snapshot": "20261129T030000Z", "bytes": 300,
                "pruned": ["20261101T030000Z"],
                "unreadable": ["docs/a.txt (Permission denied (13))"],
            })
        );
        let restore = StageStats::Restore(RestoreStats {
            to: "/tmp/out".into(),
            snapshot: None,
            files: 1,
            bytes: 2,
            read_via: ReadVia::Rsync,
        });
        assert_eq!(
            restore.to_json(),
            json!({ "to": "/tmp/out", "snapshot": null, "files": 1, "bytes": 2, "read_via": "rsync" })
        );
        let verify = StageStats::Verify(VerifyStats {
            files: 1,
            changed: vec!["a".into()],
            ..VerifyStats::default()
        });
        assert_eq!(
            verify.to_json(),
            json!({
                "files": 1, "hashed": 0, "pending": 0, "hardlinked": 0,
                "sampled": 0, "sampled_bytes": 0, "sample_rotation_runs": 0,
                "missing": [], "extra": [], "changed": ["a"],
            })
        );
        let deep = StageStats::DeepVerify(DeepVerifyStats::default());
        assert_eq!(
            deep.to_json(),
            json!({ "files": 0, "missing": [], "extra": [], "changed": [] })
        );
        let prune = StageStats::Prune(PruneStats {
            dry_run: true,
            ..PruneStats::default()
        });
        assert_eq!(
            prune.to_json(),
            json!({ "dry_run": true, "records": [], "snapshot_dirs": [] })
        );
    }
}
