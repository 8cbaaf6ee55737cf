//! Checks of the test harness itself (tests/common): the throwaway sshd, the
//! mount and tree helpers. These run without the ciphersync binary doing
//! anything, so a harness bug can't masquerade as a binary bug.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn sshd_accepts_client_key_checks_host_key_and_serves_sftp() {
    if !require_tools(
        "sshd_accepts_client_key",
        &["ssh", "sftp", "ssh-keygen", "sha1sum", "/usr/sbin/sshd"],
    ) {
        return;
    }
    let tmp = TempDir::new("harness-sshd");
    let sshd = Sshd::start(tmp.path());
    let remote = sshd.remote_dir();
    assert!(
        remote.is_dir(),
        "sshd remote dir {} is not a directory",
        remote.display()
    );
    assert!(
        remote.starts_with(tmp.path()),
        "sshd remote dir {} is not under the test's temp dir {}",
        remote.display(),
        tmp.path().display()
    );

    // ssh with the client key and strict host key checking.
    sshd.ssh("true").expect_code(0, "ssh root@127.0.0.1 true");
    fs::write(remote.join("marker"), "hello remote\n").unwrap();
    let o = sshd.ssh(&format!("sha1sum {}", remote.join("marker").display()));
    o.expect_code(0, "remote sha1sum");
    assert!(
        o.stdout
            .starts_with("fb84a4a6e7248dd9bacb8c7c3f89ddf7ab3c5c78 "),
        "unexpected sha1: {}",
        o.stdout
    ); // sha1("hello remote\n")
    assert_eq!(
        sha1_file(&remote.join("marker")),
        "fb84a4a6e7248dd9bacb8c7c3f89ddf7ab3c5c78"
    );

    // The host key really is checked: an empty known_hosts must fail.
    let empty = tmp.path().join("empty_known_hosts");
    fs::write(&empty, "").unwrap();
    let st = Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(&sshd.client_key)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", empty.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-p",
        ])
        .arg(sshd.port.to_string())
        .args(["root@127.0.0.1", "true"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success(), "ssh succeeded without a known host key");

    // And the client key really is needed: another key is refused.
    let other = tmp.path().join("other_key");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "ssh-keygen of a second client key failed: {st}"
    );
    let st = Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(&other)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", sshd.known_hosts.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-p",
        ])
        .arg(sshd.port.to_string())
        .args(["root@127.0.0.1", "true"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success(), "ssh succeeded with an unauthorised key");

    // sftp batch: mkdir, put, ls, get.
    let local = tmp.path().join("up.bin");
    write_random_file(&local, 100_000, 5);
    let back = tmp.path().join("back.bin");
    let o = sshd.sftp_batch(&format!(
        "mkdir {r}/sub\nput {l} {r}/sub/x.bin\nls {r}/sub\nget {r}/sub/x.bin {b}\n",
        r = remote.display(),
        l = local.display(),
        b = back.display()
    ));
    o.expect_code(0, "sftp -b");
    assert_eq!(
        fs::read(remote.join("sub/x.bin")).unwrap(),
        fs::read(&local).unwrap()
    );
    assert_eq!(fs::read(&back).unwrap(), fs::read(&local).unwrap());

    let pid = sshd_pid(&sshd);
    drop(sshd);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "sshd {pid} still alive after drop"
    );
    assert_no_mounts_under(tmp.path());
}

fn sshd_pid(sshd: &Sshd) -> u32 {
    let t = fs::read_to_string(sshd.dir.join("sshd.pid")).unwrap();
    t.trim().parse().unwrap()
}

#[test]
fn mountinfo_unescape() {
    assert_eq!(
        unescape_mountinfo(r"/tmp/a\040b\011c\134d\012e"),
        b"/tmp/a b\tc\\d\ne".to_vec()
    );
    assert_eq!(unescape_mountinfo(r"/plain"), b"/plain".to_vec());
    assert_eq!(unescape_mountinfo(r"trailing\04"), b"trailing\\04".to_vec());
    assert!(
        mounts().iter().any(|m| m.mount_point == Path::new("/")),
        "/ not in mountinfo"
    );
}

#[test]
fn snapshot_id_and_cipher_size_helpers() {
    assert!(
        is_snapshot_id("20261129T030000Z"),
        "YYYYMMDDTHHMMSSZ must be a snapshot id"
    );
    assert!(
        !is_snapshot_id("2026-11-29T03:00:00Z"),
        "an RFC 3339 time with separators must not be a snapshot id"
    );
    assert!(
        !is_snapshot_id("20261129T030000"),
        "an id without the trailing Z must not be a snapshot id"
    );
    assert_eq!(cipher_size(0), 0);
    assert_eq!(cipher_size(1), 18 + 1 + 32);
    assert_eq!(cipher_size(4096), 18 + 4096 + 32);
    assert_eq!(cipher_size(4097), 18 + 4097 + 64);
}

/// The tree helpers must see every kind of difference.
#[test]
fn tree_helpers_detect_differences() {
    let tmp = TempDir::new("harness-trees");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    make_sample_tree(&a);
    make_sample_tree(&b);
    assert_trees_equal(&a, &b);
    assert!(
        fs::symlink_metadata(a.join("long").join(long_name())).is_ok(),
        "the sample tree has no long/<200-character name>"
    );
    assert_eq!(long_name().chars().count(), 200);
    assert_eq!(
        fs::metadata(a.join(VICTIM_CHANGED)).unwrap().len(),
        VICTIM_CHANGED_LEN
    );

    // Ignored: the reverse config at the root.
    fs::write(a.join(".gocryptfs.reverse.conf"), "x").unwrap();
    assert_trees_equal(&a, &b);

    let d0 = tree_digest(&b);
    let check = |mutate: &dyn Fn(&Path), what: &str| {
        let c = tmp.path().join(format!("c-{}", what.replace(' ', "-")));
        make_sample_tree(&c);
        mutate(&c);
        let (a2, c2) = (a.clone(), c.clone());
        assert!(
            panics(move || assert_trees_equal(&a2, &c2)),
            "assert_trees_equal missed: {what}"
        );
        let (b2, c3) = (b.clone(), c.clone());
        let _ = b2;
        assert_ne!(tree_digest(&c3), d0, "tree_digest missed: {what}");
    };
    check(
        &|c| flip_byte_keep_mtime(&c.join("nested/big.bin"), 1_234_567),
        "flipped byte",
    );
    check(
        &|c| fs::set_permissions(c.join("bin/run.sh"), fs::Permissions::from_mode(0o644)).unwrap(),
        "mode",
    );
    check(
        &|c| fs::create_dir(c.join("empty/extra")).unwrap(),
        "extra empty dir",
    );
    check(
        &|c| fs::remove_dir(c.join("nested/empty inner")).unwrap(),
        "missing empty dir",
    );
    check(
        &|c| {
            fs::remove_file(c.join("link-to-readme")).unwrap();
            symlink("one-byte", c.join("link-to-readme")).unwrap();
        },
        "symlink target",
    );
    check(
        &|c| fs::remove_file(c.join(VICTIM_MISSING)).unwrap(),
        "missing file",
    );

    // tree_digest also sees a pure mtime change.
    let f = b.join("README.txt");
    let file = fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.set_modified(
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000),
    )
    .unwrap();
    assert_ne!(tree_digest(&b), d0, "tree_digest missed an mtime change");
}

/// The size formula and the tree comparison against real gocryptfs: reverse
/// view sizes match `cipher_size`, a forward mount of the reverse view
/// compares equal to the source (names, modes, symlinks, empty dirs), and
/// TempDir's drop cleans up a mount left behind.
#[test]
fn gocryptfs_roundtrip_matches_helpers_and_tempdir_cleans_mounts() {
    if !require_tools(
        "gocryptfs_roundtrip_matches_helpers",
        &["gocryptfs", "fusermount3", "/dev/fuse"],
    ) {
        return;
    }
    let tmp = TempDir::new("harness-gcfs");
    let root = tmp.path().to_path_buf();
    let src = root.join("src");
    make_sample_tree(&src);
    let pw = root.join("pw");
    write_mode(&pw, b"harness password\n", 0o600);
    let st = Command::new("gocryptfs")
        .args(["-init", "-reverse", "-q", "-passfile"])
        .arg(&pw)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "gocryptfs -init -reverse failed");
    let rev = root.join("rev");
    fs::create_dir(&rev).unwrap();
    let st = Command::new("gocryptfs")
        .args(["-reverse", "-ro", "-nosyslog", "-q", "-passfile"])
        .arg(&pw)
        .arg(&src)
        .arg(&rev)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "gocryptfs -reverse mount failed");
    assert_eq!(mounts_under(&root).len(), 1);
    assert!(
        panics({
            let r = root.clone();
            move || assert_no_mounts_under(&r)
        }),
        "assert_no_mounts_under did not panic with a mount under {}",
        root.display()
    );

    let mut want: Vec<u64> = walk(&src)
        .iter()
        .filter(|(rel, m)| m.file_type().is_file() && rel.as_os_str() != ".gocryptfs.reverse.conf")
        .map(|(_, m)| cipher_size(m.len()))
        .collect();
    let mut got: Vec<u64> = walk(&rev)
        .iter()
        .filter(|(rel, m)| {
            let n = rel.file_name().unwrap().to_string_lossy().into_owned();
            m.file_type().is_file()
                && n != "gocryptfs.conf"
                && n != "gocryptfs.diriv"
                && !n.ends_with(".name")
        })
        .map(|(_, m)| m.len())
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "ciphertext sizes in the reverse view");
    assert!(
        fs::metadata(rev.join("gocryptfs.conf")).is_ok(),
        "reverse view lacks gocryptfs.conf"
    );

    {
        let fwd = ManualMount::new(&rev, &pw, &root.join("fwd"));
        assert_trees_equal(&src, &fwd.mnt);
    }
    assert_eq!(
        mounts_under(&root).len(),
        1,
        "ManualMount drop did not unmount"
    );

    // Leave the reverse mount; TempDir's drop must clean it up.
    drop(tmp);
    assert!(mounts_under(&root).is_empty(), "TempDir drop left mounts");
    assert!(
        !root.exists(),
        "TempDir drop did not remove {}",
        root.display()
    );
}

/// The command runner returns exit code and both streams, and reports a
/// process that exits while something it started still holds its pipes.
#[test]
fn runner_collects_output_and_reports_leaked_pipes() {
    let mut c = Command::new("sh");
    c.args(["-c", "echo out; echo err >&2; exit 3"]);
    let o = run_cmd(c);
    assert_eq!(
        (o.code, o.stdout.as_str(), o.stderr.as_str()),
        (3, "out\n", "err\n")
    );

    let mut c = Command::new("sh");
    c.args(["-c", "sleep 3 & echo started"]);
    let r = Running::spawn(c);
    assert!(
        panics(move || {
            r.wait_with_grace(
                std::time::Duration::from_secs(10),
                std::time::Duration::from_millis(300),
            );
        }),
        "a leaked child holding stdout was not reported"
    );
}
