//! A backup into an empty files/ through sshfs first uploads every file
//! over SFTP, many at a time (src/target/sftp_upload.rs), then runs rsync,
//! which finds them as it would have left them. The pass never replaces
//! what the target holds: it writes a temp name and hard-links it to the
//! real one, which fails where a file is already there.

mod common;

use common::*;
use std::fs;

const FIRST_PASS: &str = "first pass over SFTP: Uploaded { files: ";

/// The files the first pass said it sent, from `backup --verbose`.
fn first_pass_files(o: &Out) -> Option<u64> {
    let rest = o.stderr.split(FIRST_PASS).nth(1)?;
    rest.split(',').next()?.trim().parse().ok()
}

/// How many files the change set sent over SFTP (`sent over SFTP: N of
/// M files` in the verbose log), if it sent any.
fn sent_over_sftp(o: &Out) -> Option<u64> {
    let rest = o.stderr.split("sent over SFTP: ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

/// No `.NAME.XXXXXX` left in files/ (the pass's and rsync's temp names).
fn assert_no_temp_names(job: &Job) {
    let names: Vec<String> = walk(&job.files_dir())
        .into_iter()
        .map(|(rel, _)| rel.display().to_string())
        .filter(|rel| rel.rsplit('/').next().unwrap_or("").starts_with('.'))
        .collect();
    assert!(names.is_empty(), "temp names left in files/: {names:?}");
}

fn first_backup_goes_over_sftp_first(job: &Job) {
    make_features_tree(&job.source);
    // Enough files for several sessions side by side (sftp_upload.rs,
    // at least 256 each).
    for i in 0..1100 {
        write_random_file(&job.source.join(format!("many/f{i:04}")), i % 300, i as u64);
    }
    job.ok(&["init"]);
    let o = job.ok(&["--verbose", "backup"]);
    let sessions: usize = o
        .stderr
        .split("sftp upload: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        sessions >= 2,
        "1,100 files went over fewer than 2 SFTP sessions side by side:\n{}",
        o.dump()
    );
    // Every file of the backup went in the first pass (hard links over
    // sshfs are files of their own), and the run counts them as sent.
    let stats = &job.stage("backup")["stats"];
    let files = stats["files"].as_u64().unwrap_or(0);
    assert!(files > 10, "the features tree holds more files: {stats}");
    assert_eq!(
        first_pass_files(&o),
        Some(files),
        "the first pass did not send every file of the backup:\n{}",
        o.dump()
    );
    assert_eq!(stats["transferred"], files, "the run's count: {stats}");
    // rsync found everything in place: a second run sends nothing.
    let second = job.backup_ok();
    assert_eq!(second["transferred"], 0, "{second}");
    assert_no_temp_names(job);
    job.verify_ok(false);
    job.verify_ok(true);
    job.restore_and_compare("restored");
    job.assert_clean();
}

#[test]
fn a_first_backup_over_a_shell_account_goes_over_sftp_first() {
    if !require_tools("first_pass_shell", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("first-pass-shell").transport("sshfs").build();
    first_backup_goes_over_sftp_first(&job);
}

#[test]
fn a_first_backup_to_an_sftp_only_account_goes_over_sftp_first() {
    if !ServerKind::ChrootSftp.require("first_pass_chroot") {
        return;
    }
    let job = Job::sftp("first-pass-chroot")
        .transport("sshfs")
        .build_on(ServerKind::ChrootSftp);
    first_backup_goes_over_sftp_first(&job);
}

/// With no record on the target (all were lost) the next backup is a
/// first one again, but files/ is full: the pass replaces nothing, a file
/// the server changed is replaced by rsync, which files the server's
/// version in the run's snapshot, and the restore equals the source.
#[test]
fn the_first_pass_never_replaces_what_the_target_holds() {
    if !require_tools("first_pass_keeps", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("first-pass-keeps").transport("sshfs").build();
    fs::create_dir_all(job.source.join("d")).unwrap();
    fs::write(job.source.join("d/victim"), vec![b'v'; 4321]).unwrap();
    fs::write(job.source.join("other"), "other\n").unwrap();
    job.init_and_backup();
    let victim = job.remote_file_for_len(4321);
    let planted = vec![b'p'; fs::metadata(&victim).unwrap().len() as usize];
    fs::write(&victim, &planted).unwrap();
    fs::remove_dir_all(job.target_path.join("records")).unwrap();

    let o = job.ok(&["--verbose", "backup"]);
    assert_eq!(
        first_pass_files(&o),
        Some(0),
        "the first pass wrote over files the target held:\n{}",
        o.dump()
    );
    let id = job.stage("backup")["stats"]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let rel = victim.strip_prefix(job.files_dir()).unwrap();
    let kept = job.target_path.join("snapshots").join(&id).join(rel);
    assert_eq!(
        fs::read(&kept).ok(),
        Some(planted),
        "rsync did not file the server's version in snapshot {id}"
    );
    job.restore_and_compare("restored");
    job.assert_clean();
}

/// The pass has no rate bound of its own: a job with `target.bwlimit`
/// gets none, and rsync (which the limit reaches) sends everything.
#[test]
fn a_job_with_a_bandwidth_limit_gets_no_first_pass() {
    if !require_tools("first_pass_bwlimit", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("first-pass-bwlimit")
        .transport("sshfs")
        .set("target.bwlimit", serde_json::json!(100_000))
        .build();
    make_sample_tree(&job.source);
    job.ok(&["init"]);
    let o = job.ok(&["--verbose", "backup"]);
    assert!(
        o.stderr
            .contains("no first pass over SFTP: target.bwlimit is set")
            && first_pass_files(&o).is_none(),
        "a rate-limited job went over SFTP unlimited:\n{}",
        o.dump()
    );
    job.restore_and_compare("restored");
}

/// A later backup has no first pass: its change set (src/delta.rs) sends
/// the new files and the changed one over SFTP, a handful as well as
/// many, after keeping the old versions; its snapshot keeps the old
/// versions of the changed and the deleted file and nothing else.
#[test]
fn a_later_backup_sends_its_new_and_changed_files_over_sftp() {
    if !require_tools("later_pass", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("later-pass").transport("sshfs").build();
    let src = &job.source;
    fs::create_dir_all(src.join("old")).unwrap();
    fs::write(src.join("old/changed"), "v1\n").unwrap();
    fs::write(src.join("old/deleted"), "gone soon\n").unwrap();
    // Enough that 2 moved files stay below the deletion guard's share.
    for i in 0..10 {
        fs::write(src.join(format!("old/kept-{i}")), "kept\n").unwrap();
    }
    let first = job.init_and_backup()["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let as_of_first = job.root.join("as-of-first");
    copy_tree(src, &as_of_first);

    // 20 new files, in a directory the target has and in new ones.
    for i in 0..12 {
        fs::write(src.join(format!("old/new-{i}")), vec![b'n'; 100 + i]).unwrap();
    }
    fs::create_dir_all(src.join("fresh/deeper")).unwrap();
    for i in 0..8 {
        fs::write(
            src.join(format!("fresh/deeper/f-{i}")),
            vec![b'f'; 3000 + i],
        )
        .unwrap();
    }
    fs::write(src.join("old/changed"), "v2, longer\n").unwrap();
    fs::remove_file(src.join("old/deleted")).unwrap();
    let o = job.ok(&["--verbose", "backup"]);
    assert_eq!(
        first_pass_files(&o),
        None,
        "a later first pass:\n{}",
        o.dump()
    );
    // files/ was listed while the guard read the view (sync.rs), and
    // that listing made the change set.
    assert!(
        o.stderr
            .contains("files/ listed over SFTP while the guard reads the view")
            && o.stderr.contains("change set: "),
        "files/ was not listed beside the guard:\n{}",
        o.dump()
    );
    assert!(
        o.stderr.contains("kept over SFTP: 1 of 1 moved")
            && sent_over_sftp(&o).is_some_and(|n| n >= 21),
        "the new and changed files did not go over SFTP:\n{}",
        o.dump()
    );
    let stats = &job.stage("backup")["stats"];
    assert_eq!(stats["transferred"], 21, "20 new and 1 changed: {stats}");
    let second = stats["snapshot"].as_str().unwrap().to_string();
    // The run's snapshot: the old versions of the changed and the deleted
    // file (and the config and directories' gocryptfs.diriv that keep it
    // decryptable on its own).
    let kept: Vec<String> = walk(&job.target_path.join("snapshots").join(&second))
        .into_iter()
        .filter(|(rel, meta)| {
            meta.is_file() && !rel.ends_with("gocryptfs.diriv") && !rel.ends_with("gocryptfs.conf")
        })
        .map(|(rel, _)| rel.display().to_string())
        .collect();
    assert_eq!(kept.len(), 2, "snapshot {second} holds: {kept:?}");
    assert_no_temp_names(&job);

    // Everything is in place: nothing to send now.
    assert_eq!(job.backup_ok()["transferred"], 0);
    // A few new files go the same way.
    for i in 0..3 {
        fs::write(src.join(format!("fresh/few-{i}")), "few\n").unwrap();
    }
    let o = job.ok(&["--verbose", "backup"]);
    assert!(
        sent_over_sftp(&o).is_some_and(|n| n >= 3) && !o.stderr.contains("run: rsync "),
        "3 new files:\n{}",
        o.dump()
    );
    assert_eq!(job.stage("backup")["stats"]["transferred"], 3);

    job.verify_ok(false);
    job.verify_ok(true);
    job.restore_and_compare("restored");
    let to = job.root.join("restored-first");
    fs::create_dir_all(&to).unwrap();
    job.run(&[
        "restore",
        "--snapshot",
        &first,
        "--to",
        to.to_str().unwrap(),
    ])
    .expect_code(0, "restore --snapshot of the first run");
    assert_trees_equal(&as_of_first, &to);
    job.assert_clean();
}
