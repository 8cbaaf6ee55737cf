//! Damage on the remote side (flipped byte, deleted file, stray file) is found
//! by verify and repaired by the next backup; a wrong password fails cleanly.

mod common;

use common::*;
use std::fs;

#[test]
fn flipped_remote_byte_is_reported_as_changed_and_repaired() {
    if !require_tools("flipped_remote_byte", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("dmg-flip").build(); // default transport and remote_checksums
    make_sample_tree(&job.source);
    job.init_and_backup();
    job.verify_ok(false);

    let victim = job.remote_file_for_len(VICTIM_CHANGED_LEN);
    flip_byte_keep_mtime(&victim, 100);
    let damaged = fs::read(&victim).unwrap();

    let stats = job.verify_mismatch();
    assert_verify_lists(&stats, &[], &[], &[VICTIM_CHANGED]);

    // The repair backup re-sends the file although size and mtime match...
    let b = job.backup_ok();
    let repaired = fs::read(&victim).unwrap();
    assert_ne!(
        repaired, damaged,
        "repair backup did not re-send the damaged file"
    );
    // ...and keeps the version it replaced under snapshots/<id>/.
    let snap = b["snapshot"].as_str().unwrap();
    let snap_dir = job.target_path.join("snapshots").join(snap);
    let kept = walk(&snap_dir).into_iter().any(|(rel, m)| {
        m.file_type().is_file() && fs::read(snap_dir.join(rel)).unwrap() == damaged
    });
    assert!(
        kept,
        "the replaced (damaged) version is not under snapshots/{snap}/"
    );

    job.verify_ok(false);
    job.verify_ok(true);
    job.assert_clean();
    // The run's stats must count the file it re-sent.
    assert!(
        b["transferred"].as_u64().unwrap_or(0) >= 1,
        "repair backup does not count the re-sent file in stats.transferred: {b}"
    );
}

/// A verify of an unchanged source reuses the last verify's local list:
/// nothing local is read again (the view is still mounted: it proves the
/// password). The server's side is hashed in full every time, so damage
/// there is found as before, and named in plaintext.
#[test]
fn verify_of_an_unchanged_source_reuses_its_list_and_still_finds_damage() {
    if !require_tools("verify_reuses_list", SFTP_TOOLS) {
        return;
    }
    const REUSED: &str = "its local checksums are reused";
    let job = Job::sftp("dmg-reuse").transport("rsync").build();
    make_sample_tree(&job.source);
    job.init_and_backup();
    // The tree counts as settled from here (CIPHERSYNC_SETTLE_MS=0): its
    // stamps may be trusted, whatever time the machine took so far.
    job.trust_stamps(true);
    let verify = |expect: i32| {
        let (o, v) = job.run_json(&["verify"]);
        o.expect_code(expect, "verify");
        (o.stderr.contains(REUSED), json_stats(&v, "verify").clone())
    };
    let (reused, first) = verify(0);
    assert!(!reused, "the first verify reused a list: {first}");
    assert!(
        first["hashed"].as_u64() > Some(0),
        "the first verify hashed nothing: {first}"
    );
    let (reused, second) = verify(0);
    assert!(reused, "an unchanged source was hashed again: {second}");
    assert_eq!(
        (second["hashed"].as_u64(), second["files"].clone()),
        (Some(0), first["files"].clone())
    );

    let victim = job.remote_file_for_len(VICTIM_CHANGED_LEN);
    flip_byte_keep_mtime(&victim, 100);
    let (reused, damaged) = verify(3);
    assert!(
        reused,
        "damage on the server made the local side be hashed again"
    );
    assert_verify_lists(&damaged, &[], &[], &[VICTIM_CHANGED]);
    job.backup_ok();
    // After a difference the kept list is dropped: the view is walked
    // again (the per-file cache still spares reading unchanged files).
    let (reused, repaired) = verify(0);
    assert!(!reused, "a list was reused after a difference: {repaired}");

    // A change made just before a verify (settle window of an hour: every
    // stamp is too fresh to trust) is hashed again, is pending until the
    // next backup, and leaves no list to reuse.
    job.trust_stamps(false);
    std::fs::write(job.source.join("one-byte"), "x").unwrap();
    let (reused, changed) = verify(0);
    assert!(!reused, "a changed source reused the last list: {changed}");
    assert_eq!(changed["pending"], 1, "pending after a change: {changed}");
    job.backup_ok();
    let (reused, after) = verify(0);
    assert!(
        !reused,
        "a list made from a source too fresh to trust was reused: {after}"
    );
    job.assert_clean();

    // A wrong password fails even when nothing local needs reading.
    job.trust_stamps(true);
    let (reused, settled) = verify(0);
    assert!(
        !reused,
        "no list was kept while the stamps were fresh, yet one was reused: {settled}"
    );
    let (reused_again, again) = verify(0);
    assert!(
        reused_again,
        "the settled source's list was not reused: {again}"
    );
    std::fs::write(&job.password_file, "not the password\n").unwrap();
    let o = job.run(&["verify"]);
    assert_ne!(o.code, 0, "a wrong password passed: {}", o.stderr);
    job.assert_clean();
}

#[test]
fn deleted_and_stray_remote_files_are_reported_and_repaired() {
    if !require_tools("deleted_and_stray_remote_files", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("dmg-missing").build();
    make_sample_tree(&job.source);
    job.init_and_backup();

    // missing
    let victim = job.remote_file_for_len(VICTIM_MISSING_LEN);
    fs::remove_file(&victim).unwrap();
    let stats = job.verify_mismatch();
    assert_verify_lists(&stats, &[VICTIM_MISSING], &[], &[]);
    job.backup_ok();
    assert!(victim.is_file(), "backup did not re-send the missing file");
    job.verify_ok(false);

    // extra: a file on the remote that no local file encrypts to
    let stray = job.files_dir().join("stray-file");
    fs::write(&stray, "not from ciphersync\n").unwrap();
    let stats = job.verify_mismatch();
    let extra = str_list(&stats["extra"]);
    assert_eq!(
        extra.len(),
        1,
        "verify extra: want the stray file alone: {stats}"
    );
    assert!(
        extra[0].ends_with("stray-file"),
        "verify extra {:?} is not the stray file: {stats}",
        extra[0]
    );
    assert_eq!(str_list(&stats["missing"]), Vec::<String>::new());
    assert_eq!(str_list(&stats["changed"]), Vec::<String>::new());
    let b = job.backup_ok();
    assert!(
        !stray.exists(),
        "backup did not remove the stray file from files/"
    );
    assert_eq!(b["deleted"], 1, "backup stats.deleted: {b}");
    job.verify_ok(false);
    job.assert_clean();
}

#[test]
fn wrong_password_fails_cleanly_and_leaves_remote_untouched() {
    if !require_tools("wrong_password", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("dmg-wrongpw").build();
    make_sample_tree(&job.source);
    job.init_and_backup();
    job.verify_ok(false);
    let remote_before = tree_digest(&job.target_path);

    write_mode(&job.password_file, b"definitely not the password\n", 0o600);
    let pw = job.password_file.to_str().unwrap();

    let o = job.run(&["backup"]);
    o.expect_code(1, "backup with a wrong password");
    assert!(
        o.stderr.contains(pw),
        "backup error does not name the password file {pw}:\n{}",
        o.dump()
    );
    assert!(
        o.stderr.contains(&job.name),
        "backup error does not name the job {}:\n{}",
        job.name,
        o.dump()
    );
    let st = job.stage("backup");
    assert_eq!(st["outcome"], "failed", "status.json backup: {st}");
    assert!(
        st["error"]["kind"].as_str().is_some_and(|k| !k.is_empty()),
        "status.json backup.error: {st}"
    );
    assert!(
        st["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(pw)),
        "status.json error message: {st}"
    );
    assert_no_mounts_under(&job.runtime_dir);
    assert_digests_equal(
        &remote_before,
        &tree_digest(&job.target_path),
        "remote tree after a wrong-password backup",
    );

    let o = job.run(&["verify"]);
    o.expect_code(1, "verify with a wrong password");
    assert!(
        o.stderr.contains(pw),
        "verify error does not name the password file:\n{}",
        o.dump()
    );
    assert_no_mounts_under(&job.runtime_dir);

    let to = job.root.join("restored");
    fs::create_dir(&to).unwrap();
    let o = job.run(&["restore", "--to", to.to_str().unwrap()]);
    o.expect_code(1, "restore with a wrong password");
    assert!(
        o.stderr.contains(pw),
        "restore error does not name the password file:\n{}",
        o.dump()
    );
    assert_eq!(
        fs::read_dir(&to).unwrap().count(),
        0,
        "failed restore wrote into --to"
    );

    assert_digests_equal(
        &remote_before
            .iter()
            .filter(|(k, _)| k.starts_with("files") || k.starts_with("snapshots"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        &tree_digest(&job.target_path)
            .iter()
            .filter(|(k, _)| k.starts_with("files") || k.starts_with("snapshots"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        "remote files/ and snapshots/ after wrong-password verify/restore",
    );
    job.assert_clean();
}

/// verify keeps both lists in checksums/ for the last 10 runs, sorted the
/// same way (so `diff` compares them), equal when nothing is damaged, and
/// `sha1sum -c` run in files/ accepts them. Over ssh (the server stores its
/// own list, one command stores ours and prunes) and on a local target.
#[test]
fn checksum_lists_are_sorted_checkable_and_pruned() {
    if !require_tools("checksum_lists", SFTP_TOOLS) {
        return;
    }
    for job in [
        Job::sftp("ck-ssh").transport("rsync").build(),
        Job::local("ck-local").build(),
    ] {
        make_sample_tree(&job.source);
        job.init_and_backup();
        let dir = job.target_path.join("checksums");
        fs::create_dir_all(&dir).unwrap();
        let old: Vec<String> = (0..12).map(|i| format!("20200101T0000{i:02}Z")).collect();
        for run in &old {
            for side in ["local", "remote"] {
                fs::write(dir.join(format!("{run}.{side}.sha1")), "").unwrap();
            }
        }
        job.verify_ok(false);
        let mut runs: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|n| n.strip_suffix(".local.sha1").map(str::to_owned))
            .collect();
        runs.sort();
        assert_eq!(runs.len(), 10, "{}: runs kept: {runs:?}", job.name);
        assert_eq!(runs[..9], old[3..], "{}: the oldest runs go", job.name);
        let newest = &runs[9];
        assert!(is_snapshot_id(newest), "{newest}");
        for side in ["local", "remote"] {
            assert!(
                dir.join(format!("{newest}.{side}.sha1")).is_file(),
                "{side} list missing"
            );
        }
        let local = fs::read_to_string(dir.join(format!("{newest}.local.sha1"))).unwrap();
        let remote = fs::read_to_string(dir.join(format!("{newest}.remote.sha1"))).unwrap();
        assert_eq!(local, remote, "{}: the two lists differ", job.name);
        let names: Vec<&str> = local.lines().map(|l| &l[42..]).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "{}: list not sorted by path", job.name);
        assert!(
            names.len() > 3,
            "{}: checksum list has only {} entries (want more than 3): {names:?}",
            job.name,
            names.len()
        );
        let not_relative: Vec<&&str> = names.iter().filter(|n| !n.starts_with("./")).collect();
        assert!(
            not_relative.is_empty(),
            "{}: checksum list paths not starting with ./: {not_relative:?}",
            job.name
        );
        for side in ["local", "remote"] {
            let list = dir.join(format!("{newest}.{side}.sha1"));
            let mut check = std::process::Command::new("sha1sum");
            check
                .args(["-c", "--quiet"])
                .arg(&list)
                .current_dir(job.target_path.join("files"));
            run_cmd(check).expect_code(0, "sha1sum -c");
        }
    }
}
