//! Shared harness for the ciphersync end-to-end tests.
//!
//! Everything here is std plus `serde_json` and `sha1` (both dependencies of
//! the crate); no other crates. Every test binary includes it with
//! `mod common;` and `use common::*;`: this file only declares the parts and
//! re-exports them.
//!
//! * [`tools`] — [`require_tools`]: skip (or, under `CI=true`, fail) when a
//!   tool is missing; the skip log.
//! * [`tempdir`] — [`TempDir`]: a unique directory under
//!   `std::env::temp_dir()`, lazily unmounting anything left mounted under it
//!   and removing it on drop.
//! * [`procs`] — mounts and processes: [`assert_no_mounts_under`],
//!   [`assert_no_helpers_left`], [`processes`], [`proc_details`],
//!   [`wait_until`].
//! * [`run`] — [`Running`], [`Out`], [`run_cmd`], the `--json` readers.
//! * [`sshd`] — [`Sshd`]: a throwaway sshd on 127.0.0.1 with its own host and
//!   client key.
//! * [`servers`] — [`Server`] / [`ServerKind`]: the kinds of SFTP account
//!   (full shell, chroot `internal-sftp`, storage-box command whitelist,
//!   `rclone serve sftp`) on 127.0.0.1; [`JobBuilder::build_on`] points a
//!   job at one ([`ServerJob`]).
//! * [`job`] — [`Job`] / [`JobBuilder`]: a job file (README "Job file" format) plus
//!   helpers to run the real binary against it and to read its status file.
//! * [`flows`] — checks several tests share ([`Job::backup_ok`], ...).
//! * [`tree`] — [`make_sample_tree`], [`make_big_tree`],
//!   [`assert_trees_equal`], [`tree_digest`] (own xorshift, no rand crate).
//! * [`readme`] — the README's fenced shell blocks and the substitution of
//!   a test job's values for the example's.
//! * [`cipher`] — [`cipher_size`], [`Job::remote_file_for_len`],
//!   [`flip_byte_keep_mtime`]: find and damage the remote copy of one
//!   plaintext file.
// Each test binary uses only part of the harness.
#![allow(dead_code)]

pub mod cipher;
pub mod flows;
pub mod job;
pub mod procs;
pub mod readme;
pub mod run;
pub mod serve;
pub mod servers;
pub mod sshd;
pub mod tempdir;
pub mod tools;
pub mod tree;

// A binary that uses nothing of one part would warn about its re-export.
#[allow(unused_imports)]
pub use cipher::*;
#[allow(unused_imports)]
pub use flows::*;
#[allow(unused_imports)]
pub use job::*;
#[allow(unused_imports)]
pub use procs::*;
#[allow(unused_imports)]
pub use readme::*;
#[allow(unused_imports)]
pub use run::*;
pub use serde_json::{Value, json};
#[allow(unused_imports)]
pub use serve::*;
#[allow(unused_imports)]
pub use servers::*;
#[allow(unused_imports)]
pub use sshd::*;
#[allow(unused_imports)]
pub use tempdir::*;
#[allow(unused_imports)]
pub use tools::*;
#[allow(unused_imports)]
pub use tree::*;
