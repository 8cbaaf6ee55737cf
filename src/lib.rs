//! ciphersync: a small orchestrator of gocryptfs, sshfs, rsync and ssh for
//! encrypted remote backups. See docs/design.md for the contract it implements.
//!
//! The binary (main.rs, cli.rs) is a thin layer over these modules; they
//! form a library so that the parsers of untrusted text can be exercised
//! directly by tests/fuzz_parsers.rs.

pub mod about;
pub mod browse;
pub mod budget;
pub mod checksums;
pub mod config;
pub mod crypt;
pub mod delta;
pub mod error;
pub mod exec;
pub mod fingerprint;
pub mod fsutil;
pub mod gocrypt;
pub mod guard;
pub mod history;
pub mod human;
pub mod interrupt;
pub mod keys;
pub mod limits;
pub mod log;
pub mod metadata;
pub mod metadata_cache;
pub mod metrics;
pub mod mount;
pub mod pool;
pub mod progress;
pub mod restore;
pub mod rsync;
pub mod run;
pub mod sample;
pub mod serve;
pub mod snapshots;
pub mod source_snapshot;
pub mod split;
pub mod state;
pub mod stats;
pub mod status;
pub mod sync;
pub mod target;
pub mod verify;
pub mod verify_cache;
pub mod wait;
pub mod walk;

#[cfg(test)]
pub(crate) mod test_util {
    /// An empty dir for one test, named by `tag` and the process id.
    pub fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ciphersync-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The state of a source whose last change was long before its walk.
    pub fn settled(fingerprint: &str) -> crate::fingerprint::SourceState {
        crate::fingerprint::SourceState {
            fingerprint: fingerprint.into(),
            newest_change_ns: 0,
            walked_at_ns: crate::checksums::settle_ns() + 1,
        }
    }
}
