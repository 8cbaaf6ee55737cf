//! The sshfs transport runs several rsync workers on each sshfs connection
//! (split.rs, `workers_for`) and lets the kernel cache "no such file" for
//! names it looked up through the mount (target/ssh.rs,
//! `sole_writer_options`). Neither may cost a file: every directory is
//! copied by some worker, and what the server lost or gained between two
//! runs is found by the next one, which mounts anew.

mod common;

use common::*;
use serde_json::json;
use std::fs;

#[test]
fn workers_sharing_one_connection_copy_everything_and_repair_server_damage() {
    if !require_tools("sshfs_workers_one_connection", SFTP_TOOLS) {
        return;
    }
    // One sshfs connection: before, one rsync; now four workers on it.
    let job = Job::sftp("sshfs-workers")
        .transport("sshfs")
        .set("target.connections", json!(1))
        .build();
    make_sample_tree(&job.source);
    // Enough directories for every worker to have some.
    for d in 0..12 {
        for f in 0..3 {
            write_random_file(
                &job.source.join(format!("many/dir {d:02}/file {f}.bin")),
                4096 + d * 100 + f,
                (d * 10 + f) as u64,
            );
        }
    }
    job.init_and_backup();
    job.verify_ok(false);
    job.restore_and_compare("first");

    // Between runs the server loses a file and gains a stray one; the
    // first run looked both names up through its mount.
    let victim = job.remote_file_for_len(VICTIM_MISSING_LEN);
    fs::remove_file(&victim).unwrap();
    let stray = job.files_dir().join("stray-file");
    fs::write(&stray, "not from ciphersync\n").unwrap();

    let b = job.backup_ok();
    assert!(
        victim.is_file(),
        "the next backup did not re-send {victim:?}"
    );
    assert!(!stray.exists(), "the next backup left the stray file: {b}");
    job.verify_ok(false);
    job.restore_and_compare("second");
    job.assert_clean();
}
