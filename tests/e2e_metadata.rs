//! Metadata SFTP cannot hold travels encrypted (issue 19, item 1).
//!
//! As root, against a real sshd: a tree with several owners, an ACL, a
//! default ACL, a user xattr, a FIFO and a symlink of its own owner is
//! backed up; the target is searched for the names, ids and values in the
//! clear; restore (latest, `--snapshot` of an older run, `--no-owners`)
//! is compared with the source by `getfacl -R`, `getfattr -R -d` and
//! `stat`; a manifest swapped in from another run is refused.

mod common;
use common::*;

use std::fs;
use std::os::unix::fs::{chown, lchown};
use std::path::Path;
use std::process::Command;

const XATTR_VALUE: &str = "xattr-secret-7c1e";

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What the three tools say about a tree, paths relative to it.
fn describe(dir: &Path) -> String {
    sh(
        dir,
        "getfacl -R -n -p . 2>/dev/null; \
         getfattr -R -h -d -e hex -m '^(user|trusted)\\.' . 2>/dev/null; \
         find . -printf '%P\\n' | LC_ALL=C sort | while IFS= read -r p; do \
           [ -n \"$p\" ] && stat -c '%n %F %u %g %a' -- \"$p\"; done",
    )
}

fn make_tree(src: &Path) {
    fs::create_dir_all(src.join("home/alice")).unwrap();
    fs::create_dir_all(src.join("shared")).unwrap();
    fs::write(src.join("home/alice/notes"), "alice's\n").unwrap();
    fs::write(src.join("shared/report"), "report\n").unwrap();
    fs::write(src.join("daemon-owned"), "d\n").unwrap();
    fs::write(src.join("root-owned"), "r\n").unwrap();
    std::os::unix::fs::symlink("notes", src.join("home/alice/link")).unwrap();
    sh(src, "mkfifo -m 0640 home/alice/fifo");
    chown(src.join("home/alice"), Some(1001), Some(1002)).unwrap();
    chown(src.join("home/alice/notes"), Some(1001), Some(1002)).unwrap();
    chown(src.join("home/alice/fifo"), Some(1001), Some(1003)).unwrap();
    lchown(src.join("home/alice/link"), Some(1004), Some(1004)).unwrap();
    // uid/gid 1 are "daemon" on Debian: a name to look for on the server.
    chown(src.join("daemon-owned"), Some(1), Some(1)).unwrap();
    chown(src.join("shared"), Some(1005), Some(1005)).unwrap();
    sh(
        src,
        &format!(
            "setfacl -m u:1234:r,g:2345:rw shared/report && \
             setfacl -d -m u:1234:rwx shared && \
             setfattr -n user.tag -v {XATTR_VALUE} home/alice/notes && \
             setfattr -n user.bin -v 0x00ff0a20 shared/report"
        ),
    );
}

/// Every byte under `dir`, searched for `needle`.
fn found_in(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for (path, meta) in walk(dir) {
        if meta.is_file() {
            let bytes = fs::read(dir.join(&path)).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

fn restore(job: &Job, tag: &str, extra: &[&str]) -> std::path::PathBuf {
    let to = job.root.join(tag);
    let mut args = vec!["restore", "--to", to.to_str().unwrap()];
    args.extend_from_slice(extra);
    job.ok(&args);
    to
}

#[test]
fn owners_acls_xattrs_and_fifos_come_back_and_the_server_sees_none() {
    let mut tools = SFTP_TOOLS.to_vec();
    tools.extend(["getfacl", "setfacl", "getfattr", "setfattr", "mkfifo"]);
    if !require_tools("metadata", &tools) {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP metadata: needs root");
        return;
    }
    let job = Job::sftp("meta").gocryptfs_config_in_state_dir().build();
    make_tree(&job.source);
    let want = describe(&job.source);
    // The test can fail: the source really has what is compared.
    for needle in [
        "user:1234:r--",
        "default:user:1234:rwx",
        "user.tag=",
        "1001 1002",
        "fifo",
    ] {
        assert!(want.contains(needle), "the source lacks {needle}:\n{want}");
    }
    job.ok(&["init"]);
    let (o, v) = job.run_json(&["backup"]);
    o.expect_code(0, "first backup");
    let first = json_stats(&v, "backup")["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let meta_dir = job.target_path.join("metadata").join(&first);
    assert!(
        meta_dir.join("gocryptfs.conf").is_file(),
        "{}",
        meta_dir.display()
    );

    // Nothing of it in the clear anywhere on the target.
    for needle in [
        XATTR_VALUE.as_bytes(),
        b"daemon",
        b"user:1234",
        b"# owner:",
        b"1001",
        b"ciphersync-metadata",
    ] {
        let hits = found_in(&job.target_path, needle);
        assert!(
            hits.is_empty(),
            "{:?} in the clear in {hits:?}",
            String::from_utf8_lossy(needle)
        );
    }

    let to = restore(&job, "restored", &[]);
    assert_eq!(describe(&to), want, "restored as root");

    // One named path: the run's metadata dir is pulled into a local stage
    // over ssh (not read through sshfs), decrypted here (the job's config
    // is here: no gocryptfs mount), applied, and the stage removed.
    let one = job.root.join("one");
    let o = job.ok(&[
        "--verbose",
        "restore",
        "--to",
        one.to_str().unwrap(),
        "home/alice/notes",
    ]);
    for said in [
        format!("restore: metadata/{first} pulled over"),
        format!("restore: the manifest of run {first} decrypted here"),
    ] {
        assert!(o.stderr.contains(&said), "{said}:\n{}", o.dump());
    }
    let tag = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", "user.tag"])
        .arg(one.join("home/alice/notes"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&tag.stdout),
        XATTR_VALUE,
        "the named file's xattr"
    );
    let staged: Vec<_> = fs::read_dir(&job.state_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("restore-metadata-")
        })
        .collect();
    assert!(staged.is_empty(), "the metadata stage was left behind");

    // A second run with other owners; the first stays restorable as it was.
    chown(job.source.join("root-owned"), Some(1010), Some(1010)).unwrap();
    sh(&job.source, "setfattr -x user.tag home/alice/notes");
    let want_second = describe(&job.source);
    assert_ne!(want, want_second);
    let (o, v) = job.run_json(&["backup"]);
    o.expect_code(0, "second backup");
    let second = json_stats(&v, "backup")["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first, second);
    let latest = restore(&job, "latest", &[]);
    assert_eq!(describe(&latest), want_second, "latest");
    let older = restore(&job, "older", &["--snapshot", &first]);
    assert_eq!(describe(&older), want, "--snapshot {first}");

    // --no-owners: the restoring user's files, no xattrs, no ACLs.
    let plain = restore(&job, "plain", &["--no-owners"]);
    let described = describe(&plain);
    assert!(
        !described.contains("1001") && !described.contains("user.tag"),
        "{described}"
    );

    kept_manifest_reused_while_the_source_is_unchanged(&job, &want_second);

    // The server swaps in the first run's manifest for the second's.
    let second_dir = job.target_path.join("metadata").join(&second);
    for entry in fs::read_dir(&meta_dir).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), second_dir.join(entry.file_name())).unwrap();
    }
    let to = job.root.join("swapped");
    let out = job.run(&[
        "restore",
        "--to",
        to.to_str().unwrap(),
        "--snapshot",
        &second,
    ]);
    out.expect_code(1, "a swapped manifest");
    assert!(out.text().contains("another run"), "{}", out.dump());
    job.assert_clean();
}

/// A backup of a source as the last walk found it (the same fingerprint)
/// writes the manifest that walk kept in the state dir under its own id
/// (metadata_cache.rs): its restore gives back the same owners, ACLs and
/// xattrs. A changed xattr moves the entry's ctime: the next backup walks
/// the source again, and its restore has the new value.
fn kept_manifest_reused_while_the_source_is_unchanged(job: &Job, want: &str) {
    const REUSED: &str = "metadata: the manifest kept from the last walk reused";
    job.trust_stamps(true);
    // The first backup with a settled source walks it and keeps the walk.
    let o = job.ok(&["--verbose", "backup"]);
    assert!(!o.stderr.contains(REUSED), "{}", o.dump());
    assert!(job.state_dir.join("metadata-kept.json").is_file());
    let o = job.ok(&["--verbose", "backup"]);
    assert!(
        o.stderr.contains(REUSED),
        "the kept manifest was not used:\n{}",
        o.dump()
    );
    let reused = restore(job, "restored-kept", &[]);
    assert_eq!(describe(&reused), want, "restored from the kept manifest");

    sh(
        &job.source,
        "setfattr -n user.tag -v changed-7c1e home/alice/notes",
    );
    let want_changed = describe(&job.source);
    assert!(want_changed.contains("user.tag="), "{want_changed}");
    let o = job.ok(&["--verbose", "backup"]);
    assert!(
        !o.stderr.contains(REUSED),
        "a kept manifest was used for a changed source:\n{}",
        o.dump()
    );
    let changed = restore(job, "restored-changed", &[]);
    assert_eq!(describe(&changed), want_changed, "restored after a change");
}
