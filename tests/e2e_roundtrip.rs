//! init → backup → verify → verify --deep → restore, over sftp with sshfs;
//! init idempotence; restore's refusals; status --json.

mod common;

use common::*;
use std::fs;
use std::path::Path;

fn plain_files_and_bytes(src: &Path) -> (u64, u64) {
    let files: Vec<_> = walk(src)
        .into_iter()
        .filter(|(rel, m)| m.file_type().is_file() && rel != Path::new(".gocryptfs.reverse.conf"))
        .collect();
    (files.len() as u64, files.iter().map(|(_, m)| m.len()).sum())
}

fn names_under(root: &Path) -> Vec<String> {
    walk(root)
        .into_iter()
        .map(|(rel, _)| rel.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn sshfs_roundtrip_init_backup_verify_deep_restore() {
    if !require_tools("sshfs_roundtrip", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("rt-sshfs")
        .transport("sshfs")
        .remote_checksums("ssh")
        .build();
    make_sample_tree(&job.source);

    job.ok(&["init"]);
    assert!(
        job.source.join(".gocryptfs.reverse.conf").is_file(),
        "init did not create <source>/.gocryptfs.reverse.conf"
    );
    assert!(job.state_dir.is_dir(), "init did not create state_dir");
    let source_digest = tree_digest(&job.source);
    let (n_plain, plain_bytes) = plain_files_and_bytes(&job.source);

    // backup
    let stats = job.backup_ok();
    let num = |k: &str| {
        stats[k]
            .as_u64()
            .unwrap_or_else(|| panic!("backup stats.{k} not a number: {stats}"))
    };
    assert!(
        num("files") >= n_plain,
        "stats.files {} < {n_plain} plaintext files",
        num("files")
    );
    assert!(
        num("transferred") >= n_plain,
        "first backup transferred {} < {n_plain} files",
        num("transferred")
    );
    assert!(
        num("bytes_transferred") >= plain_bytes,
        "bytes_transferred {} < {plain_bytes}",
        num("bytes_transferred")
    );
    assert_eq!(num("deleted"), 0);
    let st = job.status();
    assert_eq!(st["job"], job.name.as_str());
    let b = &st["stages"]["backup"];
    assert!(b["error"].is_null(), "backup ok but error set: {b}");
    for k in ["started_at", "finished_at"] {
        assert!(
            b[k].as_str()
                .is_some_and(|s| s.ends_with('Z') && s.contains('T')),
            "backup.{k} not an RFC 3339 UTC time: {b}"
        );
    }
    assert!(b["duration_ms"].is_u64(), "backup.duration_ms: {b}");

    // remote layout
    let t = &job.target_path;
    for d in ["files", "snapshots", "checksums"] {
        assert!(t.join(d).is_dir(), "remote {d}/ missing after backup");
    }
    assert!(
        job.files_dir().join("gocryptfs.conf").is_file(),
        "remote files/gocryptfs.conf missing"
    );
    assert!(
        job.files_dir().join("gocryptfs.diriv").is_file(),
        "remote files/ is not a gocryptfs dir"
    );
    let leaked: Vec<String> = names_under(&job.files_dir())
        .into_iter()
        .filter(|n| {
            ["README", "victim", "nested", "spaces", "ünïcödé"]
                .iter()
                .any(|p| n.contains(p))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "plaintext names on the remote: {leaked:?}"
    );
    let n_remote = count_files(&job.files_dir()) as u64;
    assert!(
        n_remote >= n_plain,
        "files/ holds {n_remote} regular files, fewer than the {n_plain} of the source"
    );

    // verify, deep verify
    job.verify_ok(false);
    assert!(
        count_files(&t.join("checksums")) > 0,
        "verify left no checksum list in remote checksums/"
    );
    job.verify_ok(true);
    assert_eq!(job.stage("deep_verify")["outcome"], "ok");

    // restore with ciphersync, and by hand with plain gocryptfs
    job.restore_and_compare("restored");
    job.manual_restore_matches_source();

    // a backup with nothing changed sends nothing and deletes nothing
    let stats2 = job.backup_ok();
    assert_eq!(
        stats2["transferred"], 0,
        "unchanged source, yet transferred: {stats2}"
    );
    assert_eq!(
        stats2["deleted"], 0,
        "unchanged source, yet deleted: {stats2}"
    );

    // status --json, by -c and by --config-dir + JOB name
    let (o, v) = job.run_json(&["status"]);
    o.expect_code(0, "status --json");
    let file = job.status();
    for s in ["backup", "verify", "deep_verify", "restore"] {
        assert_eq!(
            v["stages"][s]["outcome"], "ok",
            "status --json stages.{s}: {v}"
        );
    }
    assert_eq!(
        v["stages"]["backup"]["stats"]["snapshot"],
        file["stages"]["backup"]["stats"]["snapshot"]
    );
    let cdir = job.root.join("confdir");
    fs::create_dir_all(&cdir).unwrap();
    fs::copy(&job.config_file, cdir.join(format!("{}.json", job.name))).unwrap();
    let o = run_bin(&[
        "--config-dir",
        cdir.to_str().unwrap(),
        "status",
        &job.name,
        "--json",
    ]);
    o.expect_code(0, "--config-dir DIR status JOB --json");
    assert_eq!(parse_json(&o)["stages"]["backup"]["outcome"], "ok");

    // nothing of the above wrote into the source
    assert_digests_equal(&source_digest, &tree_digest(&job.source), "source tree");
    job.assert_clean();
}

#[test]
fn init_twice_changes_nothing() {
    if !require_tools("init_twice_changes_nothing", LOCAL_TOOLS) {
        return;
    }
    let job = Job::local("init-twice").build();
    make_sample_tree(&job.source);
    let conf = job.source.join(".gocryptfs.reverse.conf");
    let first = job.ok(&["init"]);
    assert!(conf.is_file(), "init did not create {}", conf.display());
    assert!(
        first.text().contains(conf.to_str().unwrap()),
        "init does not tell where the config is:\n{}",
        first.dump()
    );
    let bytes = fs::read(&conf).unwrap();
    let mtime = fs::metadata(&conf).unwrap().modified().unwrap();
    let digest = tree_digest(&job.root);

    let second = job.ok(&["init"]);
    let said = second.text().to_lowercase();
    assert!(
        ["already", "exist", "unchanged", "nothing"]
            .iter()
            .any(|w| said.contains(w)),
        "second init does not say it changed nothing:\n{}",
        second.dump()
    );
    assert_eq!(
        fs::read(&conf).unwrap(),
        bytes,
        "second init rewrote the config"
    );
    assert_eq!(
        fs::metadata(&conf).unwrap().modified().unwrap(),
        mtime,
        "second init touched the config"
    );
    // nothing else changed either (state_dir may hold a status/log, so only the source and config)
    let after = tree_digest(&job.root);
    let src_only = |d: &std::collections::BTreeMap<String, String>| {
        d.iter()
            .filter(|(k, _)| k.starts_with("src"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_digests_equal(
        &src_only(&digest),
        &src_only(&after),
        "source after second init",
    );
    job.assert_clean();
}

#[test]
fn restore_refuses_non_empty_dir_and_dir_inside_source() {
    if !require_tools("restore_refuses", LOCAL_TOOLS) {
        return;
    }
    let job = Job::local("restore-refuse").build();
    make_sample_tree(&job.source);
    fs::create_dir(job.source.join("restore here")).unwrap();
    job.init_and_backup();
    let source_digest = tree_digest(&job.source);

    // non-empty --to
    let nonempty = job.root.join("nonempty");
    fs::create_dir(&nonempty).unwrap();
    fs::write(nonempty.join("keep.txt"), "precious\n").unwrap();
    let before = tree_digest(&nonempty);
    let o = job.run(&["restore", "--to", nonempty.to_str().unwrap()]);
    o.expect_code(2, "restore into a non-empty dir");
    assert_digests_equal(&before, &tree_digest(&nonempty), "non-empty --to dir");

    // an empty dir inside the source
    let inside = job.source.join("restore here");
    job.run(&["restore", "--to", inside.to_str().unwrap()])
        .expect_code(2, "restore into an empty dir inside the source");
    // a dir that does not exist yet, inside the source
    let fresh = job.source.join("nested/new restore dir");
    job.run(&["restore", "--to", fresh.to_str().unwrap()])
        .expect_code(2, "restore into a new dir inside the source");
    assert!(!fresh.exists(), "restore created {}", fresh.display());
    // the source itself
    job.run(&["restore", "--to", job.source.to_str().unwrap()])
        .expect_code(2, "restore into the source");
    // through a symlink pointing into the source
    let link = job.root.join("link-into-source");
    std::os::unix::fs::symlink(&inside, &link).unwrap();
    job.run(&["restore", "--to", link.to_str().unwrap()])
        .expect_code(2, "restore into the source via a symlink");

    assert_digests_equal(&source_digest, &tree_digest(&job.source), "source tree");
    job.assert_clean();
}
