//! `ciphersync serve` as an account's ForceCommand on the real OpenSSH
//! (issue 16): what it allows and refuses, a whole job through it, and
//! sealed history that a client holding the account's key cannot erase.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn require(test: &str) -> bool {
    let mut tools: Vec<&str> = SFTP_TOOLS.to_vec();
    tools.extend_from_slice(&["useradd", "usermod", "getent", "flock", "id", SFTP_SERVER]);
    require_tools(test, &tools)
}

/// A refusal: exit 1 and exactly one line on stderr holding `says`.
fn assert_refused(o: &Out, what: &str, says: &str) {
    let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        o.code == 1 && lines.len() == 1 && lines[0].contains(says),
        "{what}: expected exit 1 and one line saying {says:?}:\n{}",
        o.dump()
    );
}

#[test]
fn serve_allows_the_listed_requests_and_refuses_the_rest() {
    if !require("serve_allows_listed") {
        return;
    }
    let tmp = TempDir::new("serve-allow");
    let acct = ServeAccount::start(tmp.path(), false);
    let root = acct.root.display().to_string();
    assert_ne!(acct.uid, 0, "the serve account must not be root");

    for (cmd, says) in [
        ("sh -c true", "command not allowed: \"sh\""),
        ("cat /etc/passwd", "command not allowed: \"cat\""),
        (
            "rsync --version",
            "rsync runs here only as `rsync --server`",
        ),
        ("ls; id", "shell syntax"),
        ("sha1sum /etc/passwd", "outside this account's directory"),
        ("sha1sum files/../../../etc/passwd", "holds `..`"),
        (
            "rsync --server -slogDtpre.iLsfxCIvu . files/",
            "rsync option not allowed",
        ),
        (
            "rsync --server -logDtpre.iLsfxCIvu --log-file=/tmp/x . files/",
            "--log-file",
        ),
        (
            "rsync --server -logDtpre.iLsfxCIvu . /etc/",
            "outside this account's directory",
        ),
    ] {
        assert_refused(&acct.ssh(cmd), cmd, says);
    }
    // Too many words: refused by serve itself, in one line.
    let many = format!("sha1sum{}", " a".repeat(5000));
    assert_refused(&acct.ssh(&many), "5000 words", "more than 4096 words");

    // SFTP, as the account, in its root.
    let up = tmp.path().join("up.txt");
    fs::write(&up, b"through serve\n").unwrap();
    acct.sftp_batch(&format!("put {} {root}/x.txt\n", up.display()))
        .expect_code(0, "sftp put through serve");
    assert_eq!(
        fs::symlink_metadata(acct.root.join("x.txt")).unwrap().uid(),
        acct.uid,
        "sftp-server did not run as the account"
    );

    // The probe's questions and sha1sum, answered by serve.
    let o = acct.ssh("rsync --server --version");
    o.expect_code(0, "rsync --server --version");
    assert!(o.text().contains("rsync"), "{}", o.dump());
    let o = acct.ssh("sha1sum --version");
    o.expect_code(0, "sha1sum --version");
    assert!(o.stdout.contains("sha1sum"), "{}", o.dump());
    let o = acct.ssh(&format!("sha1sum -- {root}/x.txt x.txt"));
    o.expect_code(0, "sha1sum through serve");
    let sum = sha1_file(&acct.root.join("x.txt"));
    assert_eq!(
        o.stdout,
        format!("{sum}  {root}/x.txt\n{sum}  x.txt\n"),
        "sha1sum's answer"
    );

    // A symlink the client plants is never followed out of the root.
    acct.sftp_batch(&format!(
        "symlink /etc {root}/etc\nsymlink /etc/passwd {root}/pw\n"
    ))
    .expect_code(0, "sftp symlink");
    assert_refused(
        &acct.ssh("sha1sum pw"),
        "sha1sum of a symlink",
        "is a symlink",
    );
    assert_refused(
        &acct.ssh("sha1sum etc/passwd"),
        "sha1sum through a symlinked dir",
        "passes a symlink",
    );
    let dir = tmp.path().join("push");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("f"), b"x").unwrap();
    let o = acct.rsync_to(&["-r"], &dir, &format!("{root}/etc/"));
    assert_ne!(o.code, 0, "rsync through a planted symlink:\n{}", o.dump());
    assert!(o.stderr.contains("passes a symlink"), "{}", o.dump());

    // rsync into the root works, and runs as the account.
    acct.rsync_to(&["-a"], &dir, &format!("{root}/"))
        .expect_code(0, "rsync through serve");
    assert_eq!(fs::read(acct.root.join("push/f")).unwrap(), b"x");
    assert_eq!(
        fs::symlink_metadata(acct.root.join("push/f"))
            .unwrap()
            .uid(),
        acct.uid
    );

    // The whole-tree list in hash.sh's format.
    fs::create_dir_all(acct.root.join("files/d")).unwrap();
    fs::write(acct.root.join("files/d/b"), b"b").unwrap();
    fs::write(acct.root.join("files/a.c"), b"a").unwrap();
    let o = acct.ssh("ciphersync-server sha1 files");
    o.expect_code(0, "ciphersync-server sha1 files");
    assert_eq!(
        o.stdout,
        format!(
            "{}  ./a.c\n{}  ./d/b\n",
            sha1_file(&acct.root.join("files/a.c")),
            sha1_file(&acct.root.join("files/d/b"))
        )
    );
    let o = acct.ssh("ciphersync-server info");
    o.expect_code(0, "info");
    assert!(
        o.stdout.starts_with("ciphersync-server 1\nrsync yes\n")
            && o.stdout.contains("append-only no"),
        "{}",
        o.dump()
    );
}

fn snapshot_ids(job: &Job) -> Vec<String> {
    let (o, v) = job.run_json(&["snapshots"]);
    o.expect_code(0, "snapshots --json");
    v["snapshots"]
        .as_array()
        .unwrap_or_else(|| panic!("snapshots --json: {v}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The features tree backed up once and sealed: the run's id, and a copy
/// of the source as that run saw it.
fn first_run_sealed(job: &ServeJob) -> (String, std::path::PathBuf) {
    make_features_tree(&job.source);
    job.ok(&["init"]);
    let first = job.backup_ok()["snapshot"].as_str().unwrap().to_string();
    let as_of_first = job.root.join("as-of-first");
    copy_tree(&job.source, &as_of_first);
    job.account
        .seal(&[])
        .expect_code(0, "seal after the first run");
    (first, as_of_first)
}

fn restore_snapshot(job: &Job, id: &str, dir: &str) -> std::path::PathBuf {
    let to = job.root.join(dir);
    fs::create_dir_all(&to).unwrap();
    job.run(&["restore", "--snapshot", id, "--to", to.to_str().unwrap()])
        .expect_code(0, &format!("restore --snapshot {id}"));
    to
}

#[test]
fn a_job_over_rsync_runs_through_serve() {
    if !require("serve_job_rsync") {
        return;
    }
    let job = serve_job("serve-job", "rsync", false, json!({}));
    make_features_tree(&job.source);
    job.ok(&["init"]);
    let first = job.backup_ok()["snapshot"].as_str().unwrap().to_string();
    let as_of_first = job.root.join("as-of-first");
    copy_tree(&job.source, &as_of_first);
    // serve is recognised as a ciphersync server, and the cache says so.
    let caps: Value = serde_json::from_str(
        &fs::read_to_string(job.state_dir.join("target-capabilities.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            &caps["shell"],
            &caps["rsync_server"],
            &caps["sha1sum"],
            &caps["ciphersync_server"]
        ),
        (&json!(false), &json!(true), &json!(true), &json!(true)),
        "what the probe learned of a serve account: {caps}"
    );
    change_features_tree(&job.source);
    let second = job.backup_ok();
    assert!(second["transferred"].as_u64().unwrap_or(0) >= 3, "{second}");

    // verify: the whole tree's sums in one round trip, never a sha1sum
    // batch; asked of the server (its request log) and said by the client.
    job.account.requests();
    let o = job.run(&["--verbose", "verify"]);
    o.expect_code(0, "verify --verbose");
    let asked = job.account.requests();
    let sums: Vec<&String> = asked
        .iter()
        .filter(|r| r.starts_with("ciphersync-server sha1"))
        .collect();
    assert_eq!(
        sums.len(),
        1,
        "one `ciphersync-server sha1` per verify: {asked:?}"
    );
    assert!(
        !asked.iter().any(|r| r.starts_with("sha1sum")),
        "verify sent sha1sum batches to a ciphersync server: {asked:?}"
    );
    assert!(
        !asked
            .iter()
            .any(|r| r.starts_with("ciphersync-server info") || r.starts_with("sh ")),
        "the cached probe was asked again: {asked:?}"
    );
    assert!(
        o.stderr
            .contains("in one `ciphersync-server sha1` round trip"),
        "{}",
        o.dump()
    );
    // The server's list equals what a shell target computes (hash.sh) over
    // the same files.
    assert_eq!(
        newest_remote_list(&job.account.root),
        hash_sh_list(&job.account.root.join("files")),
        "ciphersync-server sha1 and the shell target's hash.sh disagree"
    );
    job.verify_ok(false);
    job.verify_ok(true);
    restores_pull_through_serve(&job, &first, &as_of_first);
}

/// The latest state and run `first` (the source as `as_of_first` holds
/// it) restore equal; serve allows `rsync --server --sender`, so restore
/// pulls through it. Nothing is left behind.
fn restores_pull_through_serve(job: &Job, first: &str, as_of_first: &Path) {
    job.restore_and_compare("restored-latest");
    let restore = job.stage("restore");
    assert_eq!(restore["stats"]["read_via"], "rsync", "{restore}");
    let to = restore_snapshot(job, first, "restored-first");
    assert_trees_equal(as_of_first, &to);
    job.assert_clean();
}

/// A backup with nothing to send runs no rsync on a ciphersync server, as
/// on a shell account: serve answers `ciphersync-server stamps files`, and
/// equal stamps show files/ is as the last run left it. Anything that
/// touches files/ on the server in between brings rsync back.
#[test]
fn a_backup_with_nothing_to_send_runs_no_rsync_through_serve() {
    if !require("serve_nothing_to_send") {
        return;
    }
    const NOTHING_TO_SEND: &str = "as the last backup left them: nothing to send";
    let job = serve_job("serve-nochange", "rsync", false, json!({}));
    make_features_tree(&job.source);
    job.ok(&["init"]);
    job.backup_ok();
    // From here on the source's stamps count as settled.
    job.trust_stamps(true);
    job.backup_ok();
    job.account.requests();
    let o = job.ok(&["--verbose", "backup"]);
    assert!(
        o.stderr.contains(NOTHING_TO_SEND) && !o.stderr.contains("run: rsync "),
        "an unchanged source and target ran rsync (or did not say so):\n{}",
        o.dump()
    );
    let asked = job.account.requests();
    assert!(
        asked
            .iter()
            .any(|r| r.starts_with("ciphersync-server stamps")),
        "the server was not asked for its stamps: {asked:?}"
    );

    // Something on the server touches files/: rsync runs again.
    let files = job.account.root.join("files");
    fs::write(files.join("planted-by-the-server"), "x").unwrap();
    let o = job.ok(&["--verbose", "backup"]);
    assert!(
        o.stderr.contains("run: rsync ") && !o.stderr.contains(NOTHING_TO_SEND),
        "a changed files/ was taken for the last run's:\n{}",
        o.dump()
    );
    job.assert_clean();
}

/// The server's list the last verify kept, `checksums/<id>.remote.sha1`.
fn newest_remote_list(root: &Path) -> String {
    let dir = root.join("checksums");
    let mut lists: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".remote.sha1") && !n.starts_with('.'))
        .collect();
    lists.sort();
    let newest = lists.last().expect("verify kept a remote list");
    fs::read_to_string(dir.join(newest)).unwrap()
}

/// What the shell target's hash.sh prints for `files`, run here by sh on a
/// copy (it writes checksums/ next to files/), in the C locale.
fn hash_sh_list(files: &Path) -> String {
    let tmp = TempDir::new("hash-sh");
    copy_tree(files, &tmp.path().join("files"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/src/target/scripts/hash.sh");
    let o = run_cmd({
        let mut c = std::process::Command::new("sh");
        c.arg(script)
            .arg("20260101T000000Z")
            .current_dir(tmp.path())
            .env("LC_ALL", "C");
        c
    });
    o.expect_code(0, "hash.sh");
    assert!(
        o.stdout.lines().count() > 3,
        "hash.sh listed too little:\n{}",
        o.dump()
    );
    o.stdout
}

/// Every entry below `dir` with its type, size, mode, owner and content.
fn state_of(dir: &Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .map(|(rel, m)| {
            let content = match m.is_file() {
                true => sha1_file(&dir.join(&rel)),
                false => String::new(),
            };
            format!(
                "{} {:o} {} {} {content}",
                rel.display(),
                m.mode(),
                m.uid(),
                m.len()
            )
        })
        .collect()
}

#[test]
fn sealed_runs_survive_a_compromised_client() {
    if !require("serve_sealed") {
        return;
    }
    // keep_last 1: the client's retention would delete every older run.
    let job = serve_job(
        "serve-sealed",
        "rsync",
        true,
        json!({ "snapshots": { "keep_last": 1 } }),
    );
    let acct = &job.account;
    let root = acct.root.display().to_string();
    make_features_tree(&job.source);
    // A file of another owner: its owner comes back only from the run's
    // metadata dir (metadata/<id>/), which is sealed too.
    let owned = job.source.join("owned-by-nobody.txt");
    fs::write(&owned, b"nobody's\n").unwrap();
    std::os::unix::fs::chown(&owned, Some(NOBODY), Some(NOBODY)).unwrap();
    job.ok(&["init"]);
    let first = job.backup_ok()["snapshot"].as_str().unwrap().to_string();
    let as_of_first = job.root.join("as-of-first");
    copy_tree(&job.source, &as_of_first);
    let o = acct.seal(&[]);
    o.expect_code(0, "seal after the first run");
    assert!(
        o.stdout.starts_with("sealed 1 records, ") && o.stdout.contains(" and 1 metadata dirs;"),
        "{}",
        o.dump()
    );
    // The second run's manifest says root: only the first's says nobody.
    std::os::unix::fs::chown(&owned, Some(0), Some(0)).unwrap();
    change_features_tree(&job.source);
    let second = job.backup_ok()["snapshot"].as_str().unwrap().to_string();
    let o = acct.seal(&[]);
    o.expect_code(0, "seal after the second run");
    assert!(
        o.stdout
            .contains("sealed 1 records, 1 snapshot dirs and 1 metadata dirs"),
        "{}",
        o.dump()
    );
    assert_eq!(snapshot_ids(&job), [first.clone(), second.clone()]);

    let records = acct.root.join("records");
    let snapshots = acct.root.join("snapshots");
    let metadata = acct.root.join("metadata");
    let sealed_state = || {
        (
            state_of(&records),
            state_of(&snapshots),
            state_of(&metadata),
        )
    };
    let before = sealed_state();

    // The client's prune defers to the server and changes nothing (`before`
    // is compared after the attacks below).
    let o = job.run(&["prune"]);
    o.expect_code(0, "prune against an append-only account");
    assert!(
        o.stderr.contains("append-only") && o.stderr.contains("keep-last all"),
        "prune did not say what the server keeps:\n{}",
        o.dump()
    );

    let record = format!("{root}/records/{first}.rec");
    let snap = format!("{root}/snapshots/{second}");
    let victim = walk(&snapshots.join(&second))
        .into_iter()
        .find(|(_, m)| m.is_file())
        .map(|(rel, _)| format!("{snap}/{}", rel.display()))
        .expect("the second run's snapshot holds a file");
    // The first run's metadata dir and its encrypted manifest (the largest
    // file: acl.txt, padded to 64 KiB).
    let meta = format!("{root}/metadata/{first}");
    let manifest = walk(&metadata.join(&first))
        .into_iter()
        .filter(|(_, m)| m.is_file())
        .max_by_key(|(_, m)| m.len())
        .map(|(rel, _)| format!("{meta}/{}", rel.display()))
        .expect("the first run's metadata dir holds its manifest");
    let empty = job.root.join("empty");
    fs::write(&empty, b"").unwrap();
    let evil = job.root.join("evil");
    fs::write(&evil, b"ransom\n").unwrap();

    // SFTP: delete, rename, truncate, overwrite, chmod; one at a time.
    for batch in [
        format!("rm {record}"),
        format!("rename {record} {root}/records/x.rec"),
        format!("put {} {record}", empty.display()),
        format!("put {} {record}", evil.display()),
        format!("chmod 666 {record}"),
        format!("rm {victim}"),
        format!("put {} {victim}", empty.display()),
        format!("rename {victim} {root}/files/stolen"),
        format!("rmdir {snap}"),
        format!("rename {snap} {root}/snapshots/x"),
        format!("rename {root}/records {root}/records.old"),
        format!("rename {root}/snapshots {root}/snapshots.old"),
        format!("rm {manifest}"),
        format!("rename {manifest} {root}/files/stolen"),
        format!("put {} {manifest}", empty.display()),
        format!("put {} {manifest}", evil.display()),
        format!("chmod 666 {manifest}"),
        format!("put {} {meta}/gocryptfs.conf", evil.display()),
        format!("rmdir {meta}"),
        format!("rename {meta} {root}/metadata/x"),
        format!("rename {root}/metadata/{second} {meta}"),
        format!("chmod 777 {meta}"),
        format!("rename {root}/metadata {root}/metadata.old"),
    ] {
        let o = acct.sftp_batch(&format!("{batch}\n"));
        assert_ne!(
            o.code,
            0,
            "sftp `{batch}` worked on sealed history:\n{}",
            o.dump()
        );
    }
    // rsync: delete the records and a snapshot, overwrite a record.
    let empty_dir = job.root.join("empty-dir");
    fs::create_dir_all(&empty_dir).unwrap();
    for (args, src, dest) in [
        (
            &["-r", "--delete"][..],
            &empty_dir,
            format!("{root}/records/"),
        ),
        (&["-r", "--delete"][..], &empty_dir, format!("{snap}/")),
        (&["-r", "--delete"][..], &empty_dir, format!("{root}/")),
        (&[][..], &evil, record.clone()),
        (&["--inplace"][..], &evil, record.clone()),
        (
            &["-r", "--delete"][..],
            &empty_dir,
            format!("{root}/metadata/"),
        ),
        (&["-r", "--delete"][..], &empty_dir, format!("{meta}/")),
        (&[][..], &evil, manifest.clone()),
        (&["--inplace"][..], &evil, manifest.clone()),
    ] {
        let with_slash = format!("{}/", src.display());
        let src_arg = if src.is_dir() {
            Path::new(&with_slash)
        } else {
            src.as_path()
        };
        let o = acct.rsync_to(args, src_arg, &dest);
        assert_ne!(
            o.code,
            0,
            "rsync {args:?} to {dest} worked on sealed history:\n{}",
            o.dump()
        );
    }
    assert_eq!(
        sealed_state(),
        before,
        "the sealed records, snapshots or metadata changed"
    );

    // The next honest backup writes its metadata dir into the shared
    // metadata/ (the account's until sealed), and a point-in-time restore
    // still applies the first run's owners.
    fs::write(job.source.join("after-attack.txt"), b"still backing up\n").unwrap();
    let third = job.backup_ok()["snapshot"].as_str().unwrap().to_string();
    let uid_of = |p: &Path| fs::symlink_metadata(p).unwrap().uid();
    assert_eq!(uid_of(&metadata.join(&third)), acct.uid);
    acct.seal(&[]).expect_code(0, "seal after the third run");
    assert_eq!(
        uid_of(&metadata.join(&third)),
        0,
        "the third run's metadata"
    );
    assert_eq!(
        snapshot_ids(&job),
        [first.clone(), second.clone(), third.clone()]
    );
    let to = job.root.join("restored-first");
    fs::create_dir_all(&to).unwrap();
    let o = job.run(&[
        "restore",
        "--snapshot",
        &first,
        "--to",
        to.to_str().unwrap(),
    ]);
    o.expect_code(0, &format!("restore --snapshot {first}"));
    assert!(
        o.stderr
            .contains(&format!("applied the metadata of run {first}")),
        "{}",
        o.dump()
    );
    assert_trees_equal(&as_of_first, &to);
    assert_eq!(
        uid_of(&to.join("owned-by-nobody.txt")),
        NOBODY,
        "restore --snapshot {first} lost the owner its sealed metadata holds"
    );
    let latest = job.restore_and_compare("restored-latest");
    assert_eq!(uid_of(&latest.join("owned-by-nobody.txt")), 0);

    // Retention runs on the server, and takes the runs' metadata along.
    let o = acct.seal(&["--keep-last", "1"]);
    o.expect_code(0, "seal --keep-last 1");
    assert!(
        o.stdout.contains("retention removed 2 records")
            && o.stdout.contains("and 2 metadata dirs"),
        "{}",
        o.dump()
    );
    assert_eq!(snapshot_ids(&job).len(), 1, "the server's retention");
    let mut left: Vec<String> = fs::read_dir(&metadata)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, [third], "metadata dirs after the server's retention");
    job.assert_clean();
}

/// `nobody` on Debian and NixOS.
const NOBODY: u32 = 65534;

/// What the account's dir holds, as serve's quota counts it: allocated
/// blocks (`du`), each inode once.
fn allocated_below(dir: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let top = fs::symlink_metadata(dir).unwrap().blocks() * 512;
    top + walk(dir)
        .into_iter()
        .filter(|(_, m)| seen.insert(m.ino()))
        .map(|(_, m)| m.blocks() * 512)
        .sum::<u64>()
}

#[test]
fn over_its_quota_an_account_refuses_backups_and_still_restores() {
    if !require("serve_quota") {
        return;
    }
    const QUOTA: u64 = 4 << 20;
    let job = serve_job_with("serve-quota", "rsync", false, json!({}), "--quota 4M");
    let acct = &job.account;
    let root = acct.root.display().to_string();
    make_features_tree(&job.source);
    job.ok(&["init"]);
    job.backup_ok();
    let used = allocated_below(&acct.root);
    assert!(used < QUOTA, "the first run alone fills the quota: {used}");
    let o = acct.ssh("ciphersync-server quota");
    o.expect_code(0, "ciphersync-server quota under the quota");
    assert!(o.stdout.starts_with("quota 4194304 used "), "{}", o.dump());
    // An SFTP file made while under the quota, to delete once over it.
    let scratch = job.root.join("scratch");
    fs::write(&scratch, b"scratch\n").unwrap();
    acct.sftp_batch(&format!("put {} {root}/scratch\n", scratch.display()))
        .expect_code(0, "sftp put under the quota");

    // A run that starts under the quota finishes, even past it: the check
    // is made when a request starts.
    write_random_file(&job.source.join("big.bin"), 6 << 20, 16);
    job.backup_ok();
    let used = allocated_below(&acct.root);
    assert!(
        used > QUOTA,
        "the second run did not pass the quota: {used}"
    );
    // The run's permit (granted by the question it asked under the quota)
    // still holds: a session that run opens after crossing the quota (sshfs
    // adds connections as it needs them, rsync workers start one after
    // another) may still write, so the run cannot fail half way.
    acct.sftp_batch(&format!("put {} {root}/within-run\n", scratch.display()))
        .expect_code(0, "sftp put within a permitted run, over the quota");
    assert_eq!(
        fs::read(acct.root.join("within-run")).unwrap(),
        b"scratch\n"
    );
    acct.sftp_batch(&format!("rm {root}/within-run\n"))
        .expect_code(0, "sftp rm within a permitted run");

    // The next backup fails with the server's line, naming the account,
    // the usage and the quota, and writes nothing.
    fs::write(job.source.join("after-quota.txt"), b"too late\n").unwrap();
    let files_before = state_of(&acct.root.join("files"));
    let o = job.run(&["backup"]);
    assert_ne!(o.code, 0, "a backup over the quota worked:\n{}", o.dump());
    let said = format!("account {SERVE_USER} is over its quota");
    assert!(
        o.stderr.contains(&said) && o.stderr.contains("used of 4.0 MiB"),
        "the backup did not say the quota:\n{}",
        o.dump()
    );
    assert!(!o.stderr.contains("cannot reach"), "{}", o.dump());
    assert!(
        job.stage("backup")["error"]["message"]
            .as_str()
            .is_some_and(|e| e.contains(&said)),
        "status.json: {}",
        job.stage("backup")
    );
    assert_eq!(state_of(&acct.root.join("files")), files_before);

    // Each way to write is refused or limited, not only the client's.
    let o = acct.ssh("ciphersync-server quota");
    assert_refused(&o, "ciphersync-server quota over the quota", &said);
    let o = acct.rsync_to(&["-r"], &scratch, &format!("{root}/files/"));
    assert_ne!(o.code, 0, "rsync push over the quota:\n{}", o.dump());
    assert!(o.stderr.contains(&said), "{}", o.dump());
    let o = acct.sftp_batch(&format!("put {} {root}/more\n", scratch.display()));
    assert_ne!(o.code, 0, "sftp put over the quota:\n{}", o.dump());
    // (sftp-server may create the file empty before the write is denied.)
    let more = fs::metadata(acct.root.join("more")).map_or(0, |m| m.len());
    assert_eq!(more, 0, "sftp wrote data over the quota");
    // The subsystem says why on its stderr (sftp does not show it; ssh does).
    let o = acct.ssh(SFTP_SERVER);
    assert!(
        o.stderr.contains(&said) && o.stderr.contains("this SFTP session cannot add data"),
        "{}",
        o.dump()
    );
    // Deleting (what prune does) still works over SFTP.
    acct.sftp_batch(&format!("rm {root}/scratch\n"))
        .expect_code(0, "sftp rm over the quota");
    assert!(!acct.root.join("scratch").exists());

    // Reads stay allowed: verify (the server's sums) and restore.
    fs::remove_file(job.source.join("after-quota.txt")).unwrap();
    let o = job.run(&["verify"]);
    o.expect_code(0, "verify over the quota");
    assert!(
        o.stderr.contains("checksum lists were not kept") && o.stderr.contains(&said),
        "{}",
        o.dump()
    );
    job.restore_and_compare("restored-over-quota");

    // And prune frees space: a shorter retention deletes the older runs.
    let mut config = job.config.clone();
    config["snapshots"] = json!({ "keep_last": 1 });
    fs::write(&job.config_file, serde_json::to_string(&config).unwrap()).unwrap();
    let runs = snapshot_ids(&job).len();
    job.run(&["prune"]).expect_code(0, "prune over the quota");
    assert!(
        snapshot_ids(&job).len() < runs,
        "prune deleted nothing over the quota"
    );

    // A dir serve cannot read could hold anything: writes are refused.
    let locked = acct.root.join("locked");
    fs::create_dir(&locked).unwrap();
    std::os::unix::fs::chown(&locked, Some(acct.uid), Some(acct.gid)).unwrap();
    fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let o = acct.ssh("ciphersync-server quota");
    assert_refused(
        &o,
        "quota with an unreadable dir",
        "cannot measure the account's usage: \"locked\": Permission denied",
    );
    fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
}

/// Waits (up to 120 s, polling) until `path` exists and is root's.
fn wait_until_roots(path: &Path, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while fs::symlink_metadata(path).map_or(true, |m| m.uid() != 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {} never became root's",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `serve --seal --settle` (what the server module's path unit starts):
/// systemd watches nothing while the seal it started runs, so a record
/// that lands then must be sealed by that same run, not wait for the
/// hourly timer.
#[test]
fn a_record_that_lands_while_sealing_is_sealed_by_the_same_run() {
    if !require("serve_settle") {
        return;
    }
    let job = serve_job("serve-settle", "rsync", true, json!({}));
    let acct = &job.account;
    make_features_tree(&job.source);
    job.ok(&["init"]);
    let first = job.backup_ok()["snapshot"].as_str().unwrap().to_string();
    let mut seal = std::process::Command::new(&acct.binary);
    seal.args(["serve", "--seal", "--account", SERVE_USER, "--root"])
        .arg(&acct.root)
        .args(["--settle", "600"]);
    let mut run = Running::spawn(seal);
    let records = acct.root.join("records");
    wait_until_roots(&records.join(format!("{first}.rec")), "the first pass");

    fs::write(job.source.join("later.txt"), b"later\n").unwrap();
    let second = job.backup_ok()["snapshot"].as_str().unwrap().to_string();
    wait_until_roots(
        &records.join(format!("{second}.rec")),
        "a record that landed while sealing",
    );
    assert!(
        run.is_running(),
        "the seal run ended before the second record landed: {:?}",
        run.output_so_far()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let o = run.wait(std::time::Duration::from_secs(120));
    assert!(o.stderr.contains("interrupted"), "{}", o.dump());
}

/// The run id one second after `id` (`YYYYMMDDTHHMMSSZ`), by date(1).
fn id_after(id: &str) -> String {
    let iso = format!(
        "{}-{}-{} {}:{}:{}",
        &id[0..4],
        &id[4..6],
        &id[6..8],
        &id[9..11],
        &id[11..13],
        &id[13..15]
    );
    let out = std::process::Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("{iso} UTC + 1 second"),
            "+%Y%m%dT%H%M%SZ",
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A compromised client cannot rewrite sealed history by adding entries
/// behind it: a snapshot dir with an id between two sealed runs (holding
/// another file's ciphertext under a changed file's name: `restore
/// --snapshot` of the earlier run would give that content) and a record of
/// a run that never was. The next seal moves both into `refused/`, root's,
/// and the point-in-time restore still equals the source as it was.
#[test]
fn entries_inserted_behind_sealed_history_are_refused() {
    if !require("serve_inserted") {
        return;
    }
    let job = serve_job("serve-inserted", "rsync", true, json!({}));
    let acct = &job.account;
    let (first, as_of_first) = first_run_sealed(&job);
    // Two seconds apart, so that an id lies between the two runs.
    std::thread::sleep(std::time::Duration::from_secs(2));
    change_features_tree(&job.source);
    let second = job.backup_ok()["snapshot"].as_str().unwrap().to_string();
    acct.seal(&[]).expect_code(0, "seal after the second run");
    let between = id_after(&first);
    assert!(
        first < between && between < second,
        "{first} < {between} < {second}"
    );

    // The forged snapshot dir: the second run's, with one old version's
    // ciphertext swapped for another file's; made as the account would.
    let snapshots = acct.root.join("snapshots");
    let forged = snapshots.join(&between);
    copy_tree(&snapshots.join(&second), &forged);
    let mut contents: Vec<std::path::PathBuf> = walk(&forged)
        .into_iter()
        .filter(|(rel, m)| {
            m.is_file() && !rel.ends_with("gocryptfs.diriv") && rel.as_os_str() != "gocryptfs.conf"
        })
        .map(|(rel, _)| forged.join(rel))
        .collect();
    contents.sort();
    let victim = contents
        .first()
        .expect("the second run replaced or deleted a file")
        .clone();
    let other = walk(&acct.root.join("files"))
        .into_iter()
        .map(|(rel, m)| (acct.root.join("files").join(rel), m))
        .find(|(p, m)| {
            m.is_file()
                && m.len() != fs::metadata(&victim).unwrap().len()
                && p.file_name()
                    .is_some_and(|n| n != "gocryptfs.diriv" && n != "gocryptfs.conf")
        })
        .expect("another file's ciphertext")
        .0;
    fs::copy(&other, &victim).unwrap();
    let fake_record = acct.root.join("records").join(format!("{between}.rec"));
    fs::copy(
        acct.root.join("records").join(format!("{first}.rec")),
        &fake_record,
    )
    .unwrap();
    for path in [&forged, &fake_record] {
        let st = std::process::Command::new("chown")
            .args(["-R", &format!("{}:{}", acct.uid, acct.gid)])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success());
    }

    let o = acct.seal(&[]);
    o.expect_code(0, "seal with entries behind sealed history");
    assert!(
        o.stdout.contains("refused 2 entries behind sealed history"),
        "{}",
        o.dump()
    );
    assert!(
        !forged.exists(),
        "the forged snapshot dir is still in snapshots/"
    );
    assert!(
        !fake_record.exists(),
        "the fake record is still in records/"
    );
    let refused = acct.root.join("refused");
    let meta = fs::metadata(&refused).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o7777),
        (0, 0o700),
        "refused/ is not root's alone"
    );
    assert!(refused.join(format!("snapshots-{between}")).is_dir());
    assert!(refused.join(format!("records-{between}.rec")).is_file());

    let listed = job.ok(&["snapshots"]).stdout;
    assert!(
        !listed.contains(&between),
        "the fake run is listed:\n{listed}"
    );
    let to = job.root.join("restored-first");
    fs::create_dir_all(&to).unwrap();
    job.ok(&[
        "restore",
        "--snapshot",
        &first,
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_trees_equal(&as_of_first, &to);
    job.assert_clean();
}

/// The server module's account: `ChrootDirectory` with serve as its
/// ForceCommand (the chroot as ciphersync-server-chroots.service and
/// tmpfiles leave it). The session sees the chroot only, and a whole job
/// (rsync transport, SFTP listings, sealed history) works through it.
#[test]
fn a_chrooted_account_serves_its_dir_and_nothing_else() {
    if !require("serve_chroot") {
        return;
    }
    let job = serve_job_chrooted("serve-chroot", "rsync", true);
    let acct = &job.account;
    let chroot = acct.chroot.clone().expect("a chrooted account");

    // serve --chroot named the account and nobody else, read-only.
    let passwd = fs::read_to_string(chroot.join("etc/passwd")).unwrap();
    assert_eq!(
        passwd,
        format!("{SERVE_USER}:x:{}:{}::/:/nonexistent\n", acct.uid, acct.gid)
    );
    for name in ["passwd", "group"] {
        let meta = fs::symlink_metadata(chroot.join("etc").join(name)).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o444), "etc/{name}");
    }

    // The session lives in the chroot: serve answers, SFTP lists only the
    // chroot and reads the chroot's passwd, never the host's files.
    let o = acct.ssh("ciphersync-server info");
    o.expect_code(0, "ciphersync-server info in the chroot");
    assert!(o.stdout.contains("append-only yes"), "{}", o.dump());
    assert_refused(
        &acct.ssh("sha1sum /etc/passwd"),
        "sha1sum of the chroot's passwd",
        "outside this account's directory",
    );
    let o = acct.sftp_batch("ls -1 /\n");
    o.expect_code(0, "sftp ls / in the chroot");
    let listed: Vec<&str> = o
        .stdout
        .lines()
        .filter(|l| !l.starts_with("sftp>"))
        .collect();
    assert!(listed.iter().any(|l| l.trim() == "/data"), "{}", o.dump());
    for host_only in ["/root", "/home", "/var", "/tmp", "/proc"] {
        assert!(
            !listed.iter().any(|l| l.trim() == host_only),
            "{host_only} in the chroot:\n{}",
            o.dump()
        );
    }
    let got = job.root.join("got-passwd");
    acct.sftp_batch(&format!("get /etc/passwd {}\n", got.display()))
        .expect_code(0, "sftp get /etc/passwd");
    assert_eq!(
        fs::read_to_string(&got).unwrap(),
        passwd,
        "the host's passwd reached the account"
    );
    let shadow = job.root.join("got-shadow");
    let o = acct.sftp_batch(&format!("get /etc/shadow {}\n", shadow.display()));
    assert!(
        o.code != 0 && !shadow.exists(),
        "the host's shadow reached the account:\n{}",
        o.dump()
    );

    // A whole job: backup, seal, a second backup, verify, restores.
    let (first, as_of_first) = first_run_sealed(&job);
    let record = acct.root.join(format!("records/{first}.rec"));
    let meta = fs::symlink_metadata(&record).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o7777),
        (0, 0o440),
        "sealed record"
    );
    let o = acct.sftp_batch(&format!("rm {}/records/{first}.rec\n", acct.remote_root));
    assert_ne!(
        o.code,
        0,
        "the account removed a sealed record:\n{}",
        o.dump()
    );
    assert!(record.exists());
    change_features_tree(&job.source);
    job.backup_ok();
    job.verify_ok(false);
    job.verify_ok(true);
    restores_pull_through_serve(&job, &first, &as_of_first);
}

/// `serve --chroot` writes nowhere sshd would refuse as a chroot: a
/// chroot another user could write to is named as the problem.
#[test]
fn serve_chroot_refuses_a_chroot_others_can_write() {
    if !require("serve_chroot_refuses") {
        return;
    }
    ensure_system_user(SERVE_USER, "/bin/sh");
    let (chroot, _guard) = chroot_dir("bad-chroot");
    fs::create_dir(chroot.join("etc")).unwrap();
    fs::set_permissions(&chroot, fs::Permissions::from_mode(0o775)).unwrap();
    let mut c = std::process::Command::new(bin());
    c.args(["serve", "--chroot"])
        .arg(&chroot)
        .args(["--account", SERVE_USER]);
    let o = run_cmd(c);
    assert!(
        o.code != 0
            && o.stderr.contains(&format!(
                "{} must be a directory owned by root",
                chroot.display()
            )),
        "{}",
        o.dump()
    );
    assert!(!chroot.join("etc/passwd").exists());
    // Made right, it names the account.
    fs::set_permissions(&chroot, fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = std::process::Command::new(bin());
    c.args(["serve", "--chroot"])
        .arg(&chroot)
        .args(["--account", SERVE_USER]);
    run_cmd(c).expect_code(0, "serve --chroot on a root-only chroot");
    assert!(
        fs::read_to_string(chroot.join("etc/passwd"))
            .unwrap()
            .starts_with(&format!("{SERVE_USER}:x:"))
    );
}
