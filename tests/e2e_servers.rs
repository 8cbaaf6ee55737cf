//! Targets as they exist (issue 12): the same flow against each kind of
//! SFTP account ([`ServerKind`]), with the job settings the README's server
//! table gives for it, and the refusals that must come before anything on
//! the target changes. First, for each kind, a self-test of the harness
//! server with plain ssh/sftp/rsync (no ciphersync): it behaves like the
//! real thing.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

// ---------------------------------------------------------------------------
// Harness self-tests: each server against plain OpenSSH clients.

/// The lines of stderr that are not warnings: a one-line error is exactly
/// one of them.
fn error_lines(o: &Out) -> Vec<&str> {
    o.stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("ciphersync: warning:"))
        .collect()
}

/// Writes `name` with `data` in the server's dir (as the local side of a
/// transfer) and returns its path.
fn local_file(server: &Server, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = server.dir.join(name);
    fs::write(&p, data).unwrap();
    p
}

/// Put `data` to `<job path>/NAME` with sftp, get it back, compare; the
/// file must be at `<local_dir>/NAME`.
fn sftp_round_trip(server: &Server, name: &str) {
    let data = format!("round trip through {}\n", server.kind.name());
    let up = local_file(server, "up.txt", data.as_bytes());
    let down = server.dir.join("down.txt");
    let remote = format!("{}/{name}", server.path);
    server
        .sftp_batch(&format!(
            "put {} {remote}\nget {remote} {}\n",
            up.display(),
            down.display()
        ))
        .expect_code(0, &format!("sftp put/get against {}", server.kind.name()));
    assert_eq!(
        fs::read_to_string(&down).unwrap(),
        data,
        "sftp get did not return what sftp put stored"
    );
    assert_eq!(
        fs::read_to_string(server.local_dir.join(name)).unwrap(),
        data,
        "the file sftp put to {remote} is not at {}",
        server.local_dir.join(name).display()
    );
}

fn uid_of(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
        .uid()
}

fn start_server(test: &str, kind: ServerKind) -> Option<(TempDir, Server)> {
    if !kind.require(test) {
        return None;
    }
    let tmp = TempDir::new(test);
    let server = Server::start(kind, tmp.path());
    Some((tmp, server))
}

#[test]
fn server_full_shell_runs_commands_and_sftp() {
    let Some((_tmp, s)) = start_server("srv-full", ServerKind::FullShell) else {
        return;
    };
    let o = s.ssh("sh -c 'echo $((6 * 7)) | cat'");
    o.expect_code(0, "a shell pipeline on the full-shell server");
    assert_eq!(o.stdout.trim(), "42", "the shell did not run the pipeline");
    sftp_round_trip(&s, "x.txt");
}

#[test]
fn server_chroot_sftp_allows_sftp_only_inside_the_chroot() {
    let Some((_tmp, s)) = start_server("srv-chroot", ServerKind::ChrootSftp) else {
        return;
    };
    let (uid, _) = ensure_system_user(CHROOT_USER, "/usr/sbin/nologin");
    assert_ne!(uid, 0, "the chroot account must not be root");

    let o = s.ssh("true");
    assert_ne!(
        o.code,
        0,
        "exec worked on the sftp-only server:\n{}",
        o.dump()
    );
    assert!(
        o.text()
            .contains("This service allows sftp connections only."),
        "exec refused without OpenSSH's internal-sftp message:\n{}",
        o.dump()
    );

    sftp_round_trip(&s, "x.txt");
    assert_eq!(
        uid_of(&s.local_dir.join("x.txt")),
        uid,
        "the file sftp wrote is not owned by {CHROOT_USER}"
    );
    let o = s.sftp_batch("pwd\nls /\n");
    o.expect_code(0, "sftp pwd/ls in the chroot");
    assert!(
        o.stdout.contains("Remote working directory: /\n") && o.stdout.contains("/backup"),
        "the chroot's / should hold just backup:\n{}",
        o.dump()
    );

    // Nothing outside /backup is writable, nothing outside the chroot visible.
    let up = local_file(&s, "up.txt", b"escape\n");
    let chroot = s.local_dir.parent().unwrap().to_path_buf();
    for batch in [
        format!("put {} /outside.txt\n", up.display()),
        "mkdir /outside-dir\n".to_string(),
        "ls /etc\n".to_string(),
    ] {
        let o = s.sftp_batch(&batch);
        assert_ne!(
            o.code,
            0,
            "sftp `{}` worked outside /backup:\n{}",
            batch.trim(),
            o.dump()
        );
    }
    let mut entries: Vec<String> = fs::read_dir(&chroot)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["backup"],
        "the chroot {} changed outside /backup",
        chroot.display()
    );
}

#[test]
fn server_whitelist_runs_listed_commands_without_a_shell() {
    let Some((_tmp, s)) = start_server("srv-whitelist", ServerKind::Whitelist) else {
        return;
    };
    let (uid, _) = ensure_system_user(WHITELIST_USER, "/bin/sh");
    assert_ne!(uid, 0, "the whitelist account must not be root");

    for (cmd, refused) in [
        ("sh -c true", "command not allowed: sh"),
        ("cat /etc/passwd", "command not allowed: cat"),
        ("find .", "command not allowed: find"),
        ("cd backup", "command not allowed: cd"),
        ("rsync --version", "command not allowed: rsync"),
        ("ls; id", "command not allowed: shell metacharacters"),
        ("ls | cat", "command not allowed: shell metacharacters"),
        ("ls $HOME", "command not allowed: shell metacharacters"),
        ("ls `id`", "command not allowed: shell metacharacters"),
        ("ls > out", "command not allowed: shell metacharacters"),
        ("ls\\ -a", "command not allowed: shell metacharacters"),
    ] {
        let o = s.ssh(cmd);
        assert_eq!(
            (o.code, o.stderr.trim()),
            (1, refused),
            "`{cmd}` on the whitelist server:\n{}",
            o.dump()
        );
    }

    // The listed ones reach their binaries, in the account's home.
    let o = s.ssh("ls -a");
    o.expect_code(0, "ls on the whitelist server");
    assert!(
        o.stdout.lines().any(|l| l == "backup"),
        "ls did not run in the account's home (the job dir's parent):\n{}",
        o.dump()
    );
    let o = s.ssh(&format!("mkdir '{}/made by mkdir'", s.path));
    o.expect_code(0, "mkdir on the whitelist server");
    assert_eq!(
        uid_of(&s.local_dir.join("made by mkdir")),
        uid,
        "mkdir did not run as {WHITELIST_USER}"
    );

    sftp_round_trip(&s, "x.txt");
    let o = s.ssh("sha1sum backup/x.txt");
    o.expect_code(0, "sha1sum on the whitelist server");
    assert_eq!(
        o.stdout,
        format!("{}  backup/x.txt\n", sha1_file(&s.local_dir.join("x.txt"))),
        "sha1sum's answer"
    );

    // rsync --server: a real rsync over it.
    let up = local_file(&s, "rsynced.txt", b"through rsync --server\n");
    let mut c = Command::new("rsync");
    c.arg("-a")
        .arg("-e")
        .arg(format!("ssh {} -p {}", s.ssh_opts().join(" "), s.port))
        .arg(&up)
        .arg(format!("{}@127.0.0.1:{}/", s.user, s.path));
    run_cmd(c).expect_code(0, "rsync to the whitelist server");
    assert_eq!(
        fs::read(s.local_dir.join("rsynced.txt")).unwrap(),
        b"through rsync --server\n",
        "rsync did not store the file"
    );
    assert_eq!(
        uid_of(&s.local_dir.join("rsynced.txt")),
        uid,
        "rsync --server did not run as {WHITELIST_USER}"
    );
}

#[test]
fn server_rclone_serves_sftp_without_modes_or_links() {
    let Some((_tmp, s)) = start_server("srv-rclone", ServerKind::Rclone) else {
        return;
    };
    sftp_round_trip(&s, "x.txt");
    // rclone's own exec emulation: sha1sum of one path, nothing else.
    let o = s.ssh("sha1sum /backup/x.txt");
    o.expect_code(0, "rclone's sha1sum");
    assert_eq!(
        o.stdout.split_whitespace().next(),
        Some(sha1_file(&s.local_dir.join("x.txt")).as_str()),
        "rclone's sha1sum:\n{}",
        o.dump()
    );
    let o = s.ssh("sh -c true");
    assert_ne!(o.code, 0, "rclone ran a shell:\n{}", o.dump());

    // What the product has to make up for: chmod is accepted and ignored,
    // symlinks are refused.
    s.sftp_batch("chmod 600 /backup/x.txt\n")
        .expect_code(0, "chmod through rclone");
    assert_eq!(
        fs::metadata(s.local_dir.join("x.txt")).unwrap().mode() & 0o777,
        0o644,
        "rclone applied a chmod: the README's rclone row needs another look"
    );
    let o = s.sftp_batch("symlink x.txt /backup/link\n");
    assert_ne!(o.code, 0, "rclone made a symlink:\n{}", o.dump());
    assert!(
        !s.local_dir.join("link").exists()
            && fs::symlink_metadata(s.local_dir.join("link")).is_err(),
        "rclone left something at /backup/link"
    );
}

// ---------------------------------------------------------------------------
// The matrix: init, three backups, verify, restore, snapshots, prune.

/// `backup --json`: exit 0, outcome ok, a snapshot id, no dot entries left
/// in `files/`. Returns the output and the stats.
fn backup_run(job: &Job, what: &str) -> (Out, Value) {
    let (o, v) = job.run_json(&["backup"]);
    o.expect_code(0, what);
    assert_eq!(json_outcome(&v, "backup"), "ok", "{what} --json: {v}");
    let stats = json_stats(&v, "backup").clone();
    let id = stats["snapshot"].as_str().unwrap_or_default();
    assert!(is_snapshot_id(id), "{what}: snapshot id {id:?} in {stats}");
    assert_no_dot_entries(&job.files_dir(), &format!("after the {what}"));
    (o, stats)
}

/// The target's space in status.json after the matrix (a backup, then a
/// prune): the size of the server's file system (`stat -f`, as statvfs
/// counts it; the free bytes move with the machine's other writers), or
/// nothing for a server that cannot tell, which `status` says.
fn assert_space(job: &Job, known: bool) {
    let space = job.status()["target_space"].clone();
    assert!(space["measured_at"].is_string(), "no target_space: {space}");
    let status = job.ok(&["status"]);
    if !known {
        assert!(space["size_bytes"].is_null(), "{space}");
        assert!(
            status.stdout.contains("target space unknown"),
            "{}",
            status.dump()
        );
        return;
    }
    let out = Command::new("stat")
        .args(["-f", "-c", "%S %b"])
        .arg(&job.target_path)
        .output()
        .unwrap();
    let n: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(space["size_bytes"].as_u64(), Some(n[0] * n[1]), "{space}");
    assert!(space["free_bytes"].as_u64().is_some(), "{space}");
    assert!(status.stdout.contains("target space:"), "{}", status.dump());
}

fn snapshot_ids(job: &Job) -> Vec<String> {
    let (o, v) = job.run_json(&["snapshots"]);
    o.expect_code(0, "snapshots --json");
    v["snapshots"]
        .as_array()
        .unwrap_or_else(|| panic!("snapshots --json has no `snapshots` array: {v}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The whole flow against one server kind; `check_first` looks at the
/// first backup's output (the chroot row: "no shell").
fn matrix(job: &ServerJob, check_first: impl Fn(&Out)) {
    make_features_tree(&job.source);
    job.ok(&["init"]);

    let (o1, s1) = backup_run(job, "first backup");
    check_first(&o1);
    let first = s1["snapshot"].as_str().unwrap().to_string();
    let as_of_first = job.root.join("as-of-first");
    copy_tree(&job.source, &as_of_first);

    change_features_tree(&job.source);
    let (_, s2) = backup_run(job, "second backup (after changes)");
    assert!(
        s2["transferred"].as_u64().unwrap_or(0) >= 3,
        "the second backup sent fewer than the 3 changed files: {s2}"
    );
    let (_, s3) = backup_run(job, "third backup (nothing changed)");
    for k in ["transferred", "deleted", "changed"] {
        assert_eq!(
            s3[k].as_u64(),
            Some(0),
            "the no-change backup reports {k} = {}: {s3}",
            s3[k]
        );
    }

    // Three backups of a tree with a hard link: nothing missing, extra or
    // changed.
    job.verify_ok(false);
    job.verify_ok(true);

    let ids = snapshot_ids(job);
    let made: Vec<String> = [&s1, &s2, &s3]
        .iter()
        .map(|s| s["snapshot"].as_str().unwrap().to_string())
        .collect();
    for id in &made {
        assert!(
            ids.contains(id),
            "snapshots does not list run {id}: {ids:?}"
        );
    }

    let (_, o) = job.restore_and_compare_with("restored-latest", &["--verbose"]);
    // The newest record is read over SFTP while sshfs mounts the account
    // (target/sftp_survey.rs), whatever else the server allows.
    assert!(
        o.stderr.contains("restore: the record of ") && o.stderr.contains(" read over SFTP"),
        "the newest record was not read over SFTP:\n{}",
        o.dump()
    );
    // An account that runs `rsync --server` is pulled from in one stream
    // (target/pull.rs); an SFTP-only one is fetched over SFTP (sftp.rs).
    let via = match job.server.kind {
        ServerKind::FullShell | ServerKind::Whitelist => "rsync",
        ServerKind::ChrootSftp | ServerKind::Rclone => "sftp",
    };
    let latest = job.stage("restore");
    assert_eq!(
        latest["stats"]["read_via"], via,
        "restore of the latest: {latest}"
    );
    // OpenSSH says how many files a session may keep open
    // (limits@openssh.com), and the SFTP sessions keep that many open
    // (sftp.rs); rclone names no limit.
    let says_limits = o.stderr.contains("sftp: the server allows ");
    let openssh = job.server.kind != ServerKind::Rclone;
    assert_eq!(
        says_limits,
        openssh,
        "limits@openssh.com was{} taken:\n{}",
        if says_limits { "" } else { " not" },
        o.dump()
    );
    let to = job.root.join("restored-first");
    fs::create_dir_all(&to).unwrap();
    let (o, v) = job.run_json(&[
        "restore",
        "--snapshot",
        &first,
        "--to",
        to.to_str().unwrap(),
    ]);
    o.expect_code(0, "restore --snapshot <first run>");
    assert_eq!(json_outcome(&v, "restore"), "ok", "restore --json: {v}");
    assert_trees_equal(&as_of_first, &to);
    let stats = json_stats(&v, "restore");
    assert_eq!(stats["read_via"], via, "restore --snapshot: {stats}");

    job.ok(&["prune", "--dry-run"]);
    assert_eq!(
        snapshot_ids(job),
        ids,
        "prune --dry-run changed the list of snapshots"
    );
    job.assert_clean();
}

#[test]
fn full_shell_sshfs() {
    if !ServerKind::FullShell.require("full_shell_sshfs") {
        return;
    }
    let job = Job::sftp("srv-full-sshfs").build_on(ServerKind::FullShell);
    matrix(&job, |_| {});
    // A shell: df on the server.
    assert_space(&job, true);
}

#[test]
fn full_shell_rsync() {
    if !ServerKind::FullShell.require("full_shell_rsync") {
        return;
    }
    let job = Job::sftp("srv-full-rsync")
        .transport("rsync")
        .build_on(ServerKind::FullShell);
    matrix(&job, |_| {});
}

#[test]
fn chroot_sftp_sshfs_falls_back_to_the_mount() {
    if !ServerKind::ChrootSftp.require("chroot_sftp_sshfs") {
        return;
    }
    let job = Job::sftp("srv-chroot-sshfs")
        .transport("sshfs")
        .build_on(ServerKind::ChrootSftp);
    matrix(&job, |o| {
        assert!(
            o.stderr.to_lowercase().contains("no shell"),
            "the first backup against an sftp-only account did not say that it found \
             no shell (and reads checksums through the mount):\n{}",
            o.dump()
        );
    });
}

/// A file the server cannot read back (here: mode 000 on the server, read
/// by a non-root account) does not stop the restore: everything else comes
/// back, and the one error names the file that did not.
#[test]
fn restore_finishes_and_names_what_the_server_cannot_read() {
    if !ServerKind::ChrootSftp.require("restore_finishes_and_names_what_the_server_cannot_read") {
        return;
    }
    let job = Job::sftp("srv-unreadable")
        .transport("sshfs")
        .build_on(ServerKind::ChrootSftp);
    make_features_tree(&job.source);
    job.ok(&["init"]);
    backup_run(&job, "backup");
    // docs/été à.txt has 3000 bytes: the only file of that size.
    let unreadable = job.remote_file_for_len(3_000);
    fs::set_permissions(&unreadable, fs::Permissions::from_mode(0o000)).unwrap();
    let to = job.root.join("restored");
    fs::create_dir_all(&to).unwrap();
    let o = job.run(&["restore", "--to", to.to_str().unwrap()]);
    fs::set_permissions(&unreadable, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(o.code, 1, "restore with one unreadable file:\n{}", o.dump());
    // The SFTP fetch (src/target/sftp.rs) hands the server's refusal on;
    // the restore names the file by its plaintext path, with the words.
    let said = error_lines(&o).join("\n");
    assert!(
        said.contains("docs/été à.txt (the target would not give it back")
            && said.contains("could not be copied"),
        "the error does not name docs/été à.txt:\n{}",
        o.dump()
    );
    for rel in [
        "notes.txt",
        "filler/f11.bin",
        "hard/a.bin",
        "readonly/inside.txt",
    ] {
        assert_eq!(
            sha1_file(&to.join(rel)),
            sha1_file(&job.source.join(rel)),
            "{rel} was not restored next to the unreadable file"
        );
    }
    assert!(
        !to.join("docs/été à.txt").exists(),
        "the unreadable file was restored anyway"
    );
}

#[test]
fn whitelist_rsync() {
    if !ServerKind::Whitelist.require("whitelist_rsync") {
        return;
    }
    let job = Job::sftp("srv-whitelist-rsync")
        .transport("rsync")
        .build_on(ServerKind::Whitelist);
    matrix(&job, |_| {});
    // No shell: the SFTP server's statvfs@openssh.com through sshfs.
    assert_space(&job, true);
}

/// A storage box with the sshfs transport (the README's table lists it):
/// rsync writes through the mount, the box's `sha1sum` computes verify's
/// sums, and restore pulls with its `rsync --server`.
#[test]
fn whitelist_sshfs() {
    if !ServerKind::Whitelist.require("whitelist_sshfs") {
        return;
    }
    let job = Job::sftp("srv-whitelist-sshfs")
        .transport("sshfs")
        .build_on(ServerKind::Whitelist);
    matrix(&job, |_| {});
    assert_space(&job, true);
}

/// rclone keeps no modes (its chmod is accepted and ignored) and refuses
/// symlinks: ciphersync probes that, keeps both in the record, and restore
/// (latest and point in time) applies them.
#[test]
fn rclone_sshfs_restores_modes_and_symlinks_from_the_record() {
    if !ServerKind::Rclone.require("rclone_sshfs") {
        return;
    }
    let job = Job::sftp("srv-rclone-sshfs")
        .transport("sshfs")
        .build_on(ServerKind::Rclone);
    // More small files than the SFTP client keeps open at once (sftp.rs,
    // MAX_OPEN): rclone must take them side by side, up and down.
    for i in 0..300 {
        write_random_file(&job.source.join(format!("many/f{i:03}")), 100 + i, i as u64);
    }
    matrix(&job, |_| {});
    // No statvfs either: sshfs's made-up figures are not taken for real.
    assert_space(&job, false);
    // The server really has neither: what came back came from the records.
    let files = job.server.local_dir.join("files");
    let server_links = walk(&files)
        .into_iter()
        .filter(|(_, m)| m.file_type().is_symlink())
        .count();
    assert_eq!(server_links, 0, "rclone stored a symlink after all");
}

/// One entry the server refuses (a directory the account may not write
/// to) does not stop the rest of the backup: it fails at the end naming
/// the file, and every other change reached the server.
#[test]
fn backup_finishes_and_names_what_the_server_refuses() {
    if !ServerKind::ChrootSftp.require("backup_finishes_and_names_what_the_server_refuses") {
        return;
    }
    let job = Job::sftp("srv-refuses")
        .transport("sshfs")
        .build_on(ServerKind::ChrootSftp);
    make_features_tree(&job.source);
    job.ok(&["init"]);
    backup_run(&job, "first backup");
    // The server's copy of docs/ now belongs to root: the account can
    // neither write in it nor make it writable.
    let docs = job
        .remote_file_for_len(3_000)
        .parent()
        .unwrap()
        .to_path_buf();
    let chown = |owner: &str| {
        let st = Command::new("chown")
            .arg(owner)
            .arg(&docs)
            .status()
            .unwrap();
        assert!(st.success(), "chown {owner} {}", docs.display());
    };
    let account_owner = fs::metadata(&docs).unwrap().uid().to_string();
    chown("root");
    write_random_file(&job.source.join("docs/new.txt"), 1_234, 901);
    write_random_file(&job.source.join("filler/new.bin"), 4_321, 902);
    let o = job.run(&["backup"]);
    chown(&account_owner);
    assert_eq!(o.code, 1, "backup with one refused dir:\n{}", o.dump());
    let said = error_lines(&o).join("\n");
    assert!(
        said.contains("docs/new.txt"),
        "the error does not name docs/new.txt:\n{}",
        o.dump()
    );
    let stored = walk(&job.server.local_dir.join("files"))
        .into_iter()
        .filter(|(_, m)| m.is_file() && m.len() == cipher_size(4_321))
        .count();
    assert_eq!(
        stored, 1,
        "filler/new.bin did not reach the server next to the refused file"
    );
}

// ---------------------------------------------------------------------------
// Refusals: before anything on the target changes, in one line.

/// `init` then `backup` must fail with a one-line error containing every
/// one of `words`, the job dir on the server still empty.
fn refused(job: &ServerJob, words: &[&str]) {
    make_features_tree(&job.source);
    job.ok(&["init"]);
    let before = tree_digest(&job.server.local_dir);
    assert!(before.is_empty(), "the job dir is not empty to start with");
    let o = job.run(&["backup"]);
    assert_ne!(o.code, 0, "backup was not refused:\n{}", o.dump());
    assert_digests_equal(
        &before,
        &tree_digest(&job.server.local_dir),
        "the job dir on the server after the refused backup",
    );
    let lines = error_lines(&o);
    assert_eq!(lines.len(), 1, "the refusal is not one line:\n{}", o.dump());
    for w in words {
        assert!(
            lines[0].contains(w),
            "the refusal does not mention `{w}`:\n{}",
            o.dump()
        );
    }
    job.assert_clean();
}

#[test]
fn chroot_sftp_refuses_remote_checksums_ssh() {
    if !ServerKind::ChrootSftp.require("chroot_refuses_ssh_sums") {
        return;
    }
    let job = Job::sftp("srv-chroot-ssh-sums")
        .remote_checksums("ssh")
        .build_on(ServerKind::ChrootSftp);
    refused(&job, &["no shell", "remote_checksums"]);
}

#[test]
fn chroot_sftp_refuses_transport_rsync() {
    if !ServerKind::ChrootSftp.require("chroot_refuses_rsync") {
        return;
    }
    let job = Job::sftp("srv-chroot-rsync")
        .transport("rsync")
        .build_on(ServerKind::ChrootSftp);
    refused(&job, &["transport", "sshfs"]);
}

#[test]
fn rclone_refuses_transport_rsync() {
    if !ServerKind::Rclone.require("rclone_refuses_rsync") {
        return;
    }
    let job = Job::sftp("srv-rclone-rsync")
        .transport("rsync")
        .build_on(ServerKind::Rclone);
    refused(&job, &["transport", "sshfs"]);
}

#[test]
fn restore_from_an_empty_target_says_no_backup() {
    if !ServerKind::FullShell.require("restore_empty_target") {
        return;
    }
    let job = Job::sftp("srv-restore-empty").build_on(ServerKind::FullShell);
    make_features_tree(&job.source);
    job.ok(&["init"]);
    let to = job.root.join("restored");
    fs::create_dir_all(&to).unwrap();
    let o = job.run(&["restore", "--to", to.to_str().unwrap()]);
    assert_ne!(
        o.code,
        0,
        "restore from an empty target worked:\n{}",
        o.dump()
    );
    let lines = error_lines(&o);
    assert!(
        lines.len() == 1 && lines[0].contains("no backup"),
        "restore from an empty target should say, in one line, that there is no backup there:\n{}",
        o.dump()
    );
    assert!(
        !o.text().contains("Invalid cipherdir"),
        "restore passed gocryptfs' raw error through:\n{}",
        o.dump()
    );
    assert!(
        walk(&job.server.local_dir).is_empty(),
        "restore changed the empty target"
    );
    assert!(walk(&to).is_empty(), "restore wrote into --to");
    job.assert_clean();
}

/// On an account without a shell, the stamps of files/ are listed over
/// SFTP (src/target/sftp.rs, `tree_stamps`): a backup of an unchanged
/// source to an unchanged files/ runs no rsync, and a file the server
/// puts into files/ in between brings rsync back.
fn nothing_to_send_over_sftp(kind: ServerKind, tag: &str) {
    if !kind.require(tag) {
        return;
    }
    const NOTHING_TO_SEND: &str = "as the last backup left them: nothing to send";
    let job = Job::sftp(tag).transport("sshfs").build_on(kind);
    make_features_tree(&job.source);
    job.ok(&["init"]);
    backup_run(&job, "first backup");
    // From here on the source's stamps count as settled.
    job.trust_stamps(true);
    backup_run(&job, "backup with a settled source");
    let o = job.ok(&["--verbose", "backup"]);
    assert!(
        o.stderr.contains(NOTHING_TO_SEND),
        "an unchanged source and files/ did not skip rsync:\n{}",
        o.dump()
    );
    assert!(
        !o.stderr.contains("run: rsync "),
        "rsync ran with nothing to send:\n{}",
        o.dump()
    );
    // The source was as the last backup found it: its owners, ACLs and
    // xattrs were collected while the preflight asked the server.
    assert!(
        o.stderr
            .contains("metadata: collected beside the preflight"),
        "the manifest was not collected beside the preflight:\n{}",
        o.dump()
    );
    // What the server keeps is not asked again where the last run found
    // it keeps modes and symlinks; rclone keeps neither, so it is.
    const PROBE: &str = "asking the SFTP server what it keeps";
    let keeps_all = kind != ServerKind::Rclone;
    assert_eq!(
        !o.stderr.contains(PROBE),
        keeps_all,
        "keeps all: {keeps_all}; the probe ran: {}\n{}",
        o.stderr.contains(PROBE),
        o.dump()
    );
    // Where it keeps both, the last record's entries are copied; an
    // account that allows SFTP only reads it over SFTP, not through the
    // mount (a whitelist account's mount has no ssh of its own).
    if kind == ServerKind::ChrootSftp {
        assert!(
            o.stderr.contains("record: the entries of ")
                && o.stderr
                    .contains(".rec read over SFTP beside the preflight")
                && o.stderr
                    .contains(".rec: the copy read beside the preflight"),
            "the last record was not copied, read over SFTP beside the preflight:\n{}",
            o.dump()
        );
        assert_sftp_sessions_reused(&o);
        assert_manifest_written_over_sftp(&job, &o);
    }
    // The run's record is whole: restore (rclone: modes and symlinks from
    // the record) gives the source back.
    job.restore_and_compare("restored-after-nothing-to-send");
    // Through the server's own SFTP: rclone caches its directory
    // listings and would not see a file written behind its back.
    put_over_sftp(&job, "x", "files/put-there-by-the-server");
    // Through sshfs the run lists files/ over SFTP and compares (delta.rs):
    // the planted file is moved into the run's snapshot over SFTP, not by
    // rsync.
    let o = job.ok(&["--verbose", "backup"]);
    assert!(
        o.stderr.contains("kept over SFTP: 1 of 1 moved") && !o.stderr.contains(NOTHING_TO_SEND),
        "a changed files/ was taken for the last run's:\n{}",
        o.dump()
    );
    assert!(
        !job.files_dir().join("put-there-by-the-server").exists(),
        "the mirror kept what the server added"
    );
    job.verify_ok(false);
}

/// Every step of a run over SFTP (the preflight's listing, the manifest,
/// the new record) works on the sessions opened while sshfs mounted and
/// beside the preflight (the last record's read): each step that opened
/// its own paid about four round trips (src/target/ssh.rs,
/// `sftp_session`).
fn assert_sftp_sessions_reused(o: &Out) {
    let opened = o
        .stderr
        .lines()
        .filter(|l| l.contains("run, talking over pipes: ssh ") && l.ends_with(" sftp"))
        .count();
    assert!(
        opened <= 2,
        "a run with nothing to send opened {opened} SFTP sessions, not 1 or 2:\n{}",
        o.dump()
    );
}

/// The run's manifest went over SFTP in one go (sftp_upload.rs,
/// `upload_dir`), each file private to the account and whole.
fn assert_manifest_written_over_sftp(job: &ServerJob, o: &Out) {
    assert!(
        o.stderr.contains("file(s) written over SFTP"),
        "the manifest was not written over SFTP:\n{}",
        o.dump()
    );
    let runs = job.server.local_dir.join("metadata");
    let newest = fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .expect("a run's manifest on the server");
    let files: Vec<_> = fs::read_dir(&newest).unwrap().map(|e| e.unwrap()).collect();
    assert!(files.len() >= 3, "{newest:?} holds {} files", files.len());
    for file in files {
        let name = file.file_name().to_string_lossy().into_owned();
        let meta = file.metadata().unwrap();
        assert!(
            meta.is_file() && !name.starts_with('.'),
            "{name} in {newest:?}: a temp name or not a file"
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
    }
}

#[test]
fn chroot_sftp_with_nothing_to_send_runs_no_rsync() {
    nothing_to_send_over_sftp(ServerKind::ChrootSftp, "srv-chroot-nochange");
}

#[test]
fn whitelist_with_nothing_to_send_runs_no_rsync() {
    nothing_to_send_over_sftp(ServerKind::Whitelist, "srv-whitelist-nochange");
}

#[test]
fn rclone_with_nothing_to_send_runs_no_rsync() {
    nothing_to_send_over_sftp(ServerKind::Rclone, "srv-rclone-nochange");
}

/// The job's directory on the server, as its SFTP names it.
fn target_dir(job: &ServerJob) -> String {
    job.server.target_json()["path"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Puts `content` at `rel` below the job's directory through the server's
/// own SFTP: rclone caches its directory listings and would not see a file
/// written behind its back.
fn put_over_sftp(job: &ServerJob, content: &str, rel: &str) {
    let local = job.root.join("to-put");
    fs::write(&local, content).unwrap();
    job.server
        .sftp_batch(&format!(
            "put {} {}/{rel}\n",
            local.display(),
            target_dir(job)
        ))
        .expect_code(0, &format!("sftp put {rel}"));
}

/// An account without a shell cannot hash on the server, so verify reads
/// every remote byte itself: over SFTP, many requests in flight
/// (src/target/sftp.rs, `SftpFetcher::hash`), not file by file through
/// sshfs. It must still find a flipped byte under the same size and mtime,
/// a deleted file and a stray one, and the next backup repairs them.
fn verify_hashes_over_sftp(kind: ServerKind, name: &str) {
    if !kind.require(name) {
        return;
    }
    let job = Job::sftp(name).transport("sshfs").build_on(kind);
    make_sample_tree(&job.source);
    job.init_and_backup();
    let o = job.ok(&["--verbose", "verify"]);
    assert!(
        o.stderr.contains("of files/ hashed over SFTP"),
        "verify did not hash files/ over SFTP:\n{}",
        o.dump()
    );
    // Its lists are stored over SFTP too (sftp_write.rs: both servers
    // rename in one step), and whole.
    assert!(
        o.stderr.contains("local.sha1 written over SFTP"),
        "verify's list was not stored over SFTP:\n{}",
        o.dump()
    );
    for list in fs::read_dir(job.target_path.join("checksums")).unwrap() {
        let list = list.unwrap().path();
        let text = fs::read_to_string(&list).unwrap();
        assert!(
            text.lines().count() > 10 && text.ends_with('\n'),
            "{} is not a whole list:\n{text}",
            list.display()
        );
        // Sorted by path, as every list (so that `diff` compares two).
        let names: Vec<&str> = text.lines().map(|l| &l[42..]).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "{} is not sorted by path", list.display());
    }
    // The byte in place (same size and mtime: only reading it finds it);
    // the rest through the server's own SFTP: rclone caches directory
    // listings and would not see a change behind its back.
    flip_byte_keep_mtime(&job.remote_file_for_len(VICTIM_CHANGED_LEN), 100);
    let files = job.files_dir();
    let missing = job.remote_file_for_len(VICTIM_MISSING_LEN);
    let missing = missing.strip_prefix(&files).unwrap().to_str().unwrap();
    job.server
        .sftp_batch(&format!("rm {}/files/{missing}\n", target_dir(&job)))
        .expect_code(0, "sftp rm in files/");
    put_over_sftp(&job, "not from ciphersync\n", "files/stray-file");
    let stats = job.verify_mismatch();
    assert_eq!(
        str_list(&stats["missing"]),
        vec![VICTIM_MISSING.to_string()]
    );
    assert_eq!(
        str_list(&stats["changed"]),
        vec![VICTIM_CHANGED.to_string()]
    );
    let extra = str_list(&stats["extra"]);
    assert!(
        extra.len() == 1 && extra[0].ends_with("stray-file"),
        "verify extra: want the stray file alone: {stats}"
    );
    job.backup_ok();
    job.verify_ok(false);
    // Deleted behind the server's back: rclone still lists it, then cannot
    // open it (gone since listed); either way it is missing. (rclone's
    // listing would hide it from a backup until its cache expires.)
    fs::remove_file(job.remote_file_for_len(VICTIM_MISSING_LEN)).unwrap();
    let stats = job.verify_mismatch();
    assert_eq!(
        str_list(&stats["missing"]),
        vec![VICTIM_MISSING.to_string()]
    );
    assert_eq!(str_list(&stats["changed"]), Vec::<String>::new());
    job.assert_clean();
}

#[test]
fn chroot_sftp_verify_hashes_over_sftp() {
    verify_hashes_over_sftp(ServerKind::ChrootSftp, "srv-chroot-verify");
}

#[test]
fn rclone_verify_hashes_over_sftp() {
    verify_hashes_over_sftp(ServerKind::Rclone, "srv-rclone-verify");
}
