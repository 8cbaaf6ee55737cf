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

/// A restore of named paths through sshfs spreads their files over
/// workers (split.rs, `plan_paths`), also the files of one directory. It
/// must still give exactly the paths and their parents: every file, mode,
/// time and symlink, a read-only directory filled, a path
/// named inside another one copied once.
#[test]
fn a_path_restore_spreads_one_directory_over_workers_and_loses_nothing() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !require_tools("sshfs_path_restore_workers", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("path-workers")
        .transport("sshfs")
        .set("target.connections", json!(1))
        .build();
    let proj = job.source.join("top/proj");
    for f in 0..24 {
        write_random_file(
            &proj.join(format!("file {f:02}.bin")),
            3000 + f * 7,
            f as u64,
        );
    }
    write_random_file(&proj.join("sub/inner.bin"), 5000, 99);
    // Stored as two files through sshfs (README, "Hard links"): both come
    // back whole from different lists.
    fs::hard_link(proj.join("file 00.bin"), proj.join("sub/linked.bin")).unwrap();
    std::os::unix::fs::symlink("../file 01.bin", proj.join("sub/link")).unwrap();
    fs::create_dir_all(proj.join("ro")).unwrap();
    write_mode(&proj.join("ro/kept"), b"in a read-only dir", 0o640);
    fs::set_permissions(proj.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::set_permissions(job.source.join("top"), fs::Permissions::from_mode(0o750)).unwrap();
    write_random_file(&job.source.join("top/not-named.bin"), 100, 7);
    write_random_file(&job.source.join("elsewhere/one.bin"), 100, 8);
    job.init_and_backup();

    let to = job.root.join("paths");
    fs::create_dir_all(&to).unwrap();
    let to_arg = to.to_str().unwrap();
    let out = job.ok(&[
        "--verbose",
        "restore",
        "--to",
        to_arg,
        "top/proj",
        "top/proj/sub",
    ]);
    // Phase 1, at least two workers, phase 3: more than the one rsync of
    // an unsplit restore.
    let rsync_runs = out.stderr.matches("run: rsync ").count();
    assert!(rsync_runs >= 4, "{rsync_runs} rsync runs:\n{}", out.stderr);
    fs::set_permissions(to.join("top/proj/ro"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(proj.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_trees_equal(&proj, &to.join("top/proj"));
    let names = |dir: &std::path::Path| -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&to), ["top"], "only the path and its parents");
    assert_eq!(
        names(&to.join("top")),
        ["proj"],
        "only the path and its parents"
    );
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&to.join("top")), 0o750, "the parent's mode");
    for rel in ["top/proj", "top/proj/sub", "top/proj/file 05.bin"] {
        let (want, got) = (
            fs::symlink_metadata(job.source.join(rel)).unwrap(),
            fs::symlink_metadata(to.join(rel)).unwrap(),
        );
        assert_eq!(want.mtime(), got.mtime(), "the mtime of {rel}");
    }
    job.assert_clean();
}
