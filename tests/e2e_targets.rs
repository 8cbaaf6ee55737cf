//! The other targets and modes: the `local` target (with the gocryptfs config
//! outside the source), the `rsync` transport, `remote_checksums: mount`, and
//! plaintext file names that sha1sum has to escape.

mod common;

use common::*;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

/// Flip a byte in the remote copy of VICTIM_CHANGED, expect verify to name
/// it, back up, expect verify ok.
fn damage_and_repair(job: &Job) {
    let victim = job.remote_file_for_len(VICTIM_CHANGED_LEN);
    flip_byte_keep_mtime(&victim, 200);
    let stats = job.verify_mismatch();
    assert_verify_lists(&stats, &[], &[], &[VICTIM_CHANGED]);
    job.backup_ok();
    job.verify_ok(false);
}

#[test]
fn local_target_with_config_outside_source() {
    if !require_tools("local_target", LOCAL_TOOLS) {
        return;
    }
    let job = Job::local("tgt-local")
        .gocryptfs_config_in_state_dir()
        .build();
    make_sample_tree(&job.source);
    job.ok(&["init"]);
    assert!(
        job.state_dir.join("gocryptfs.reverse.conf").is_file(),
        "init did not create the config at gocryptfs_config"
    );
    assert!(
        !job.source.join(".gocryptfs.reverse.conf").exists(),
        "init wrote a config into the source"
    );

    job.backup_ok();
    // files/ must be self-contained although the config lives outside the source
    assert!(
        job.files_dir().join("gocryptfs.conf").is_file(),
        "files/gocryptfs.conf was not uploaded"
    );
    assert_eq!(
        fs::read(job.files_dir().join("gocryptfs.conf")).unwrap(),
        fs::read(job.state_dir.join("gocryptfs.reverse.conf")).unwrap(),
        "files/gocryptfs.conf is not the job's gocryptfs config"
    );
    job.verify_ok(false);
    job.verify_ok(true);
    job.restore_and_compare("restored");
    job.manual_restore_matches_source();

    // --delete must not remove the uploaded config on the next run
    job.backup_ok();
    assert!(
        job.files_dir().join("gocryptfs.conf").is_file(),
        "second backup deleted files/gocryptfs.conf"
    );
    damage_and_repair(&job);
    job.assert_clean();
}

#[test]
fn rsync_transport_roundtrip() {
    if !require_tools("rsync_transport", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("tgt-rsync").transport("rsync").build();
    make_sample_tree(&job.source);
    job.init_and_backup();
    for d in ["files", "snapshots", "checksums"] {
        assert!(
            job.target_path.join(d).is_dir(),
            "remote {d}/ missing after an rsync-transport backup"
        );
    }
    job.verify_ok(false);
    job.verify_ok(true);
    job.restore_and_compare("restored");
    job.manual_restore_matches_source();
    let again = job.backup_ok();
    assert_eq!(
        again["transferred"], 0,
        "unchanged source, yet transferred: {again}"
    );
    damage_and_repair(&job);
    job.assert_clean();
}

#[test]
fn remote_checksums_mount() {
    if !require_tools("remote_checksums_mount", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("tgt-mountsum")
        .transport("sshfs")
        .remote_checksums("mount")
        .build();
    make_sample_tree(&job.source);
    job.init_and_backup();
    job.verify_ok(false);
    damage_and_repair(&job);

    let victim = job.remote_file_for_len(VICTIM_MISSING_LEN);
    fs::remove_file(&victim).unwrap();
    let stats = job.verify_mismatch();
    assert_eq!(
        str_list(&stats["missing"]),
        vec![VICTIM_MISSING.to_string()],
        "verify stats: {stats}"
    );
    job.backup_ok();
    job.verify_ok(false);
    job.assert_clean();
}

const BACKSLASH: &str = "back\\slash name.txt";
const BACKSLASH_LEN: u64 = 31_111;
const NEWLINE: &str = "new\nline.txt";

/// With `filenames: plaintext` (local targets only) the target's names are
/// the plaintext names, so a backslash or newline reaches the checksum lists,
/// which escape them as sha1sum does ("\\" prefix).
#[test]
fn plaintext_names_with_backslash_and_newline_verify() {
    if !require_tools("plaintext_names", LOCAL_TOOLS) {
        return;
    }
    let job = Job::local("tgt-plainnames")
        .set("filenames", json!("plaintext"))
        .build();
    make_sample_tree(&job.source);
    write_random_file(&job.source.join(BACKSLASH), BACKSLASH_LEN as usize, 9);
    write_random_file(&job.source.join(NEWLINE), 32_222, 10);
    job.init_and_backup();
    assert!(
        job.files_dir().join(BACKSLASH).is_file(),
        "plaintext names: remote lacks files/{BACKSLASH}"
    );
    job.verify_ok(false);

    flip_byte_keep_mtime(&job.files_dir().join(BACKSLASH), 300);
    flip_byte_keep_mtime(&job.files_dir().join(NEWLINE), 300);
    let stats = job.verify_mismatch();
    assert_eq!(
        sorted_list(&stats["changed"]),
        vec![BACKSLASH.to_string(), NEWLINE.to_string()],
        "verify stats: {stats}"
    );
    assert_eq!(str_list(&stats["missing"]), Vec::<String>::new());
    assert_eq!(str_list(&stats["extra"]), Vec::<String>::new());
    job.backup_ok();
    job.verify_ok(false);
    job.verify_ok(true);
    job.restore_and_compare("restored");
    job.assert_clean();
}

/// With `filenames: plaintext` symlink targets are stored as they are
/// (`nested/link up -> ../bin/run.sh`). sshfs refuses to read such a link
/// back (EPERM, its contain_symlinks protection), so an sftp job with
/// plaintext names is refused up front, naming the field; on a local target
/// a second backup and the restore work.
#[test]
fn plaintext_names_relative_symlink_second_backup() {
    if !require_tools("plaintext_names_relative_symlink", SFTP_TOOLS) {
        return;
    }
    let sftp = Job::sftp("tgt-plainlink-sftp")
        .set("filenames", json!("plaintext"))
        .build();
    let out = run_bin(&["check-config", sftp.config_file.to_str().unwrap()]);
    out.expect_code(2, "check-config of plaintext names over sftp");
    assert!(out.stderr.contains("filenames"), "{}", out.dump());
    sftp.run(&["backup"])
        .expect_code(2, "backup of plaintext names over sftp");
    sftp.assert_clean();

    let job = Job::local("tgt-plainlink")
        .set("filenames", json!("plaintext"))
        .build();
    make_sample_tree(&job.source);
    job.init_and_backup();
    job.backup_ok();
    job.verify_ok(false);
    job.restore_and_compare("restored");
    job.assert_clean();
}

/// `restore --to DIR PATH...` copies only the named plaintext paths, keeping
/// their place relative to the source.
#[test]
fn restore_named_paths_only() {
    if !require_tools("restore_named_paths_only", LOCAL_TOOLS) {
        return;
    }
    let job = Job::local("tgt-restore-paths").build();
    make_sample_tree(&job.source);
    job.init_and_backup();
    let to = job.root.join("partial");
    fs::create_dir(&to).unwrap();
    job.run(&[
        "restore",
        "--to",
        to.to_str().unwrap(),
        "nested/a",
        "README.txt",
    ])
    .expect_code(0, "restore of two paths");
    let mut top: Vec<String> = fs::read_dir(&to)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, vec!["README.txt".to_string(), "nested".to_string()]);
    let nested: Vec<String> = fs::read_dir(to.join("nested"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        nested,
        vec!["a".to_string()],
        "restore copied more of nested/ than nested/a"
    );
    assert_eq!(
        fs::read(to.join("README.txt")).unwrap(),
        fs::read(job.source.join("README.txt")).unwrap()
    );
    assert_trees_equal(&job.source.join("nested/a"), &to.join("nested/a"));
    job.assert_clean();
}

/// `exclude` patterns keep files out of the backup (any depth, as in the
/// design's `["*.tmp", "cache/"]`); verify, deep verify and restore agree.
#[test]
fn exclude_patterns_are_not_backed_up() {
    if !require_tools("exclude_patterns", LOCAL_TOOLS) {
        return;
    }
    let job = Job::local("tgt-exclude")
        .set("exclude", json!(["*.tmp", "cache/"]))
        .build();
    make_sample_tree(&job.source);
    let excluded = [
        "scratch.tmp",
        "nested/a/also.tmp",
        "cache/blob.bin",
        "nested/cache/blob2.bin",
    ];
    for (i, rel) in excluded.iter().enumerate() {
        write_random_file(&job.source.join(rel), 40_000 + i * 1111, 300 + i as u64);
    }
    job.init_and_backup();
    for (i, _) in excluded.iter().enumerate() {
        let want = cipher_size((40_000 + i * 1111) as u64);
        let hits = walk(&job.files_dir())
            .into_iter()
            .filter(|(_, m)| m.file_type().is_file() && m.len() == want)
            .count();
        assert_eq!(hits, 0, "excluded file {} was backed up", excluded[i]);
    }
    job.verify_ok(false);
    job.verify_ok(true);

    let to = job.root.join("restored");
    fs::create_dir(&to).unwrap();
    job.run(&["restore", "--to", to.to_str().unwrap()])
        .expect_code(0, "restore");
    let expected = job.root.join("expected");
    make_sample_tree(&expected);
    // An excluded directory may be restored as an empty dir or not at all.
    for d in ["cache", "nested/cache"] {
        if to.join(d).is_dir() && fs::read_dir(to.join(d)).unwrap().count() == 0 {
            fs::create_dir_all(expected.join(d)).unwrap();
        }
    }
    assert_trees_equal(&expected, &to);
    job.assert_clean();
}

/// Over sshfs a backup lists files/ over SFTP and compares it with the
/// view (src/delta.rs): only what differs is sent, the regular files over
/// SFTP, the rest by rsync. The first backup sends every file over SFTP
/// first, so what is left is the config in the source (which the view
/// shows, and which the run uploaded before with its own mtime: kept in
/// the snapshot and replaced over SFTP) and the directories' modes and
/// times (set over SFTP too). A backup with nothing changed (not yet
/// trusted to skip the comparison) does nothing; a new file and the diriv
/// of its directory (whose mtime moved) go over SFTP, the old diriv kept
/// in the run's snapshot, and the directory gets its time. No rsync runs
/// at all. The tree stays exact.
#[test]
fn sshfs_backups_send_only_what_differs() {
    if !require_tools("sshfs_change_set", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("changeset")
        .transport("sshfs")
        .set("target.connections", serde_json::json!(2))
        .build();
    for dir in ["one", "two"] {
        fs::create_dir_all(job.source.join(dir)).unwrap();
        for i in 0..3 {
            write_mode(&job.source.join(dir).join(format!("f{i}")), b"data", 0o644);
        }
    }
    job.ok(&["init"]);
    // The config the backup uploads gets the upload's time: a second after
    // init's at least, so that it differs from the view's in whole seconds
    // however fast the machine.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let rsync_runs = |out: &Out| out.stderr.matches("run: rsync ").count();
    let first = job.ok(&["--verbose", "backup"]);
    assert!(
        first
            .stderr
            .contains("change set: 1 paths to send or delete, 0 directories to make, 3 to fix"),
        "first backup:\n{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("sent over SFTP: 1 of 1 files"),
        "first backup:\n{}",
        first.stderr
    );
    assert!(
        first
            .stderr
            .contains("directories given their modes and times over SFTP: 3 of 3"),
        "first backup:\n{}",
        first.stderr
    );
    assert_eq!(rsync_runs(&first), 0, "first backup:\n{}", first.stderr);
    let again = job.ok(&["--verbose", "backup"]);
    assert!(
        again
            .stderr
            .contains("change set: 0 paths to send or delete, 0 directories to make, 0 to fix"),
        "no-change backup:\n{}",
        again.stderr
    );
    assert_eq!(rsync_runs(&again), 0, "no-change backup:\n{}", again.stderr);
    write_mode(&job.source.join("two/new"), b"new file", 0o644);
    let changed = job.ok(&["--verbose", "--json", "backup"]);
    assert!(
        changed
            .stderr
            .contains("change set: 2 paths to send or delete, 0 directories to make, 1 to fix")
            && changed
                .stderr
                .contains("kept over SFTP: 0 of 0 moved, 1 of 1 linked")
            && changed.stderr.contains("sent over SFTP: 2 of 2 files"),
        "backup with a new file:\n{}",
        changed.stderr
    );
    assert_eq!(rsync_runs(&changed), 0, "{}", changed.stderr);
    let json = parse_json(&changed);
    let stats = json_stats(&json, "backup");
    assert_eq!(stats["transferred"], 1, "{stats}");
    job.verify_ok(true);
    job.restore_and_compare("restored-after-change-set");
}

/// Where files/ cannot be listed as the change set needs (here an
/// SFTP-only account holds a name that is not UTF-8, which no encrypted
/// name is; a shell account's scripts refuse such a name), the backup
/// falls back to rsync walking files/ through sshfs, as before change sets:
/// one rsync, since nothing in the view moved (workers by directory when
/// files do: a structure pass, a worker for each of the 3 directories
/// here, a directory pass). The odd name goes into the run's snapshot like
/// anything the view lacks, and the next run compares again. The tree
/// stays exact.
#[test]
fn sshfs_backup_walks_files_where_they_cannot_be_listed() {
    let kind = ServerKind::ChrootSftp;
    if !kind.require("sshfs_walk_by_directory") {
        return;
    }
    let job = Job::sftp("split")
        .transport("sshfs")
        .set("target.connections", serde_json::json!(2))
        .build_on(kind);
    for dir in ["one", "two"] {
        fs::create_dir_all(job.source.join(dir)).unwrap();
        for i in 0..3 {
            write_mode(&job.source.join(dir).join(format!("f{i}")), b"data", 0o644);
        }
    }
    job.ok(&["init"]);
    job.backup_ok();
    let odd = std::ffi::OsStr::from_bytes(b"odd-\xff-name");
    fs::write(job.files_dir().join(odd), b"put there by the server").unwrap();
    let rsync_runs = |out: &Out| out.stderr.matches("run: rsync ").count();
    let walked = job.ok(&["--verbose", "--json", "backup"]);
    assert!(
        walked.stderr.contains("no change set, rsync walks files/")
            && walked.stderr.contains("not a plain name"),
        "{}",
        walked.stderr
    );
    assert_eq!(rsync_runs(&walked), 1, "the walk:\n{}", walked.stderr);
    assert!(
        !job.files_dir().join(odd).exists(),
        "files/ kept the odd name"
    );
    let json = parse_json(&walked);
    let id = json_stats(&json, "backup")["snapshot"].as_str().unwrap();
    let kept = job.target_path.join("snapshots").join(id).join(odd);
    assert_eq!(fs::read(&kept).unwrap(), b"put there by the server");
    let again = job.ok(&["--verbose", "backup"]);
    assert!(
        again.stderr.contains("change set: 0 paths"),
        "{}",
        again.stderr
    );
    fs::write(job.files_dir().join(odd), b"back again").unwrap();
    write_mode(&job.source.join("two/new"), b"new file", 0o644);
    let split = job.ok(&["--verbose", "backup"]);
    assert!(split.stderr.contains("no change set"), "{}", split.stderr);
    assert_eq!(rsync_runs(&split), 5, "the split walk:\n{}", split.stderr);
    assert!(
        !job.files_dir().join(odd).exists(),
        "files/ kept the odd name"
    );
    job.verify_ok(true);
    job.restore_and_compare("restored-after-the-walk");
}

/// A tree of one top-level directory gets every worker: the change set's
/// paths are dealt out file by file (3 connections allow 12 workers). Every
/// deleted or replaced file reaches the run's snapshot dir exactly once, as
/// its old version (moved or linked there over SFTP before rsync runs); restore (from a stage pulled here) uses the workers too
/// and gives back the source, and the first run as it was.
#[test]
fn sshfs_workers_share_one_directory() {
    if !require_tools("sshfs_one_dir", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("onedir")
        .transport("sshfs")
        .set("target.connections", serde_json::json!(3))
        .build();
    let dir = job.source.join("only");
    // Sizes 1000 + 37 i: every version has a size of its own.
    let size = |i: usize| 1000 + 37 * i;
    let file = |i: usize| dir.join(format!("s{}/f{i:02}", i % 5));
    for i in 0..30 {
        write_random_file(&file(i), size(i), i as u64);
    }
    fs::create_dir_all(dir.join("ro")).unwrap();
    write_mode(&dir.join("ro/inner"), b"in a read-only dir", 0o644);
    fs::set_permissions(dir.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    job.ok(&["init"]);
    let first = job.ok(&["--verbose", "--json", "backup"]);
    let first_id = json_stats(&parse_json(&first), "backup")["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let as_first = job.root.join("as-first");
    copy_tree(&job.source, &as_first);

    // 5 deleted, 5 replaced (new sizes: 5000 + i), 3 added.
    let mut old_sizes = Vec::new();
    for i in 0..5 {
        fs::remove_file(file(i)).unwrap();
        old_sizes.push(size(i));
    }
    for i in 10..15 {
        write_random_file(&file(i), 5000 + i, 100 + i as u64);
        old_sizes.push(size(i));
    }
    for i in 0..3 {
        write_random_file(&dir.join(format!("new{i}")), 7000 + i, 200 + i as u64);
    }
    let changed = job.ok(&["--verbose", "--json", "backup"]);
    // The 5 replaced files and the diriv files of the 6 directories whose
    // entries changed are linked; the 5 deleted ones moved.
    assert!(
        changed
            .stderr
            .contains("kept over SFTP: 5 of 5 moved, 11 of 11 linked"),
        "second backup:\n{}",
        changed.stderr
    );
    let json = parse_json(&changed);
    let stats = json_stats(&json, "backup");
    let counts = (stats["deleted"].as_u64(), stats["transferred"].as_u64());
    assert_eq!(counts, (Some(5), Some(8)), "{stats}");
    let id = json_stats(&parse_json(&changed), "backup")["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let snapshot = walk(&job.target_path.join("snapshots").join(&id));
    let mut kept: Vec<u64> = snapshot
        .iter()
        // Every snapshot dir also carries the config and its diriv files.
        .filter(|(rel, m)| {
            m.is_file() && !rel.ends_with("gocryptfs.diriv") && rel.as_os_str() != "gocryptfs.conf"
        })
        .map(|(_, m)| m.len())
        .collect();
    kept.sort();
    let mut want: Vec<u64> = old_sizes.iter().map(|&s| cipher_size(s as u64)).collect();
    want.sort();
    let listing: Vec<_> = snapshot.iter().map(|(rel, m)| (rel, m.len())).collect();
    assert_eq!(
        kept, want,
        "snapshot {id}: the old version of each deleted or replaced file, once; it holds {listing:?}"
    );

    let to = job.root.join("restored");
    let restore = job.ok(&["--verbose", "restore", "--to", to.to_str().unwrap()]);
    // A shell account runs `rsync --server`: the latest run's files/ is
    // pulled into a local stage in one rsync (links munged; the run's
    // metadata dir comes in another), checked against its record, and
    // decrypted here by one worker per connection (restore/decrypt.rs).
    let pulls = restore
        .stderr
        .lines()
        .filter(|l| {
            l.contains("run: rsync") && l.contains("--munge-links") && l.contains("/files/ ")
        })
        .count();
    assert_eq!(
        pulls, 1,
        "restore pulled {pulls} times:\n{}",
        restore.stderr
    );
    assert_decrypted_by_workers(&restore, 3);
    assert_trees_equal(&job.source, &to);
    let to_first = job.root.join("restored-first");
    let point_in_time = job.ok(&[
        "--verbose",
        "restore",
        "--snapshot",
        &first_id,
        "--to",
        to_first.to_str().unwrap(),
    ]);
    // The stage rebuilt here is decrypted here too.
    assert_decrypted_by_workers(&point_in_time, 3);
    assert_trees_equal(&as_first, &to_first);
    job.verify_ok(true);
    job.assert_clean();
}

/// The restore decrypted its stage here with `workers` workers.
fn assert_decrypted_by_workers(said: &Out, workers: usize) {
    let line = format!("restore: decrypted here by {workers} worker(s)");
    assert!(said.stderr.contains(&line), "no {line:?}:\n{}", said.stderr);
}

/// `cp -a FROM TO`.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}
