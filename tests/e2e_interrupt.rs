//! SIGTERM in the middle of a large backup, and the per-job lock.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// Waits until `run` has an rsync descendant and the remote `files/` holds at
/// least `min_files` regular files. Panics (test premise broken) if the run
/// ends first.
/// Waits until files/ holds `min_files` files while the backup runs
/// (with `by_rsync`, while an rsync runs: not the first pass over SFTP).
fn wait_for_transfer(job: &Job, run: &mut Running, min_files: usize, by_rsync: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        if !run.is_running() {
            let (o, e) = run.output_so_far();
            panic!(
                "backup ended before it could be caught mid-transfer; test premise broken\n--- stdout ---\n{o}\n--- stderr ---\n{e}"
            );
        }
        let rsync = !by_rsync || descendants(run.pid()).iter().any(|(_, c)| c == "rsync");
        if rsync && job.files_dir().is_dir() && count_files(&job.files_dir()) >= min_files {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("no rsync transfer seen within 180 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every regular file under files/ (except gocryptfs metadata and dot temp
/// files) must have the ciphertext size of some source file: a truncated file
/// under a real name would not.
fn assert_no_truncated_remote_files(job: &Job) {
    let sizes: BTreeSet<u64> = walk(&job.source)
        .into_iter()
        .filter(|(_, m)| m.file_type().is_file())
        .map(|(_, m)| cipher_size(m.len()))
        .collect();
    let bad: Vec<String> = walk(&job.files_dir())
        .into_iter()
        .filter(|(rel, m)| {
            let n = rel.file_name().unwrap().to_string_lossy().into_owned();
            m.file_type().is_file()
                && !n.starts_with('.')
                && n != "gocryptfs.conf"
                && n != "gocryptfs.diriv"
                && !n.ends_with(".name")
                && !sizes.contains(&m.len())
        })
        .map(|(rel, m)| format!("{} ({} bytes)", rel.display(), m.len()))
        .collect();
    assert!(
        bad.is_empty(),
        "truncated files under real names on the remote: {bad:?}"
    );
}

fn dot_files_under(root: &std::path::Path) -> Vec<String> {
    walk(root)
        .into_iter()
        .filter(|(rel, _)| rel.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|(rel, _)| rel.display().to_string())
        .collect()
}

/// SIGTERM while the transfer runs: the run ends `interrupted` with no
/// mount or helper left and no truncated file under a real name; the next
/// run cleans the temp names up, completes, and verifies.
fn sigterm_mid_transfer(job: &Job, min_files: usize, by_rsync: bool) {
    let mut run = job.spawn(&["-v", "backup"]);
    wait_for_transfer(job, &mut run, min_files, by_rsync);
    send_signal(run.pid(), "TERM");
    let out = run.wait(Duration::from_secs(120));
    eprintln!("backup after SIGTERM (exit {}):\n{}", out.code, out.dump());
    assert_ne!(out.code, 0, "backup exited 0 after SIGTERM\n{}", out.dump());
    let st = job.stage("backup");
    assert_eq!(
        st["outcome"],
        "interrupted",
        "status.json backup after SIGTERM: {st}\n{}",
        out.dump()
    );
    assert_no_mounts_under(&job.runtime_dir);
    assert_no_mounts_under(&job.root);
    assert_no_helpers_left(&job.root);
    assert!(
        count_files(&job.files_dir()) < count_files(&job.source),
        "the backup had finished before SIGTERM; test premise broken"
    );
    assert_no_truncated_remote_files(job);

    // The next run completes, cleans the temp files, and verify passes.
    job.backup_ok();
    let dots = dot_files_under(&job.files_dir());
    assert!(
        dots.is_empty(),
        "temp files left in files/ after the next backup: {dots:?}"
    );
    assert_no_truncated_remote_files(job);
    job.verify_ok(false);
    job.assert_clean();
}

/// A first backup: the files go over SFTP first (src/target/sftp_upload.rs).
#[test]
fn sigterm_during_a_first_backup_cleans_up_and_next_run_completes() {
    if !require_tools("sigterm_during_first_backup", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("int-term-first").build();
    make_sample_tree(&job.source);
    // Many more files than the SFTP passes keep open (256 among them:
    // sftp_upload.rs): the open ones progress together and end together,
    // so fewer would all be done by the time the third file shows.
    make_big_tree(&job.source, "big", 2048, MIB / 8); // 256 MiB
    job.ok(&["init"]);
    sigterm_mid_transfer(&job, 3, false);
}

/// A later backup through sshfs: its change set sends the new files over
/// SFTP (src/delta.rs, target::upload_changes), 256 open at once among
/// its sessions, so most are still unsent at the signal.
#[test]
fn sigterm_during_a_later_backups_sftp_pass_cleans_up_and_next_run_completes() {
    if !require_tools("sigterm_during_later_sftp_pass", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("int-term-later").build();
    make_sample_tree(&job.source);
    job.ok(&["init"]);
    job.backup_ok();
    let before = count_files(&job.files_dir());
    make_big_tree(&job.source, "big", 2048, MIB / 8); // 256 MiB
    sigterm_mid_transfer(&job, before + 3, false);
}

/// A later backup: rsync moves the new files (a job with a bandwidth
/// limit gets no SFTP pass, which would send them first).
#[test]
fn sigterm_during_large_backup_cleans_up_and_next_run_completes() {
    if !require_tools("sigterm_during_large_backup", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("int-term")
        .set("target.bwlimit", serde_json::json!(100_000))
        .build();
    make_sample_tree(&job.source);
    job.ok(&["init"]);
    job.backup_ok();
    let before = count_files(&job.files_dir());
    make_big_tree(&job.source, "big", 100, 2 * MIB); // 200 MiB
    sigterm_mid_transfer(&job, before + 3, true);
}

#[test]
fn second_concurrent_backup_of_same_job_exits_75() {
    if !require_tools("second_concurrent_backup", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("int-lock").build();
    make_sample_tree(&job.source);
    make_big_tree(&job.source, "big", 50, 2 * MIB); // 100 MiB
    job.ok(&["init"]);

    let mut first = job.spawn(&["backup"]);
    wait_for_transfer(&job, &mut first, 1, false);
    let second = job.run(&["backup"]);
    let first_still_running = first.is_running();
    second.expect_code(75, "second backup while the first holds the lock");
    assert!(
        first_still_running,
        "first backup ended before the second returned; test premise broken"
    );

    let out = first.wait(Duration::from_secs(300));
    out.expect_code(0, "first backup (must not be disturbed by the second)");
    assert_eq!(job.stage("backup")["outcome"], "ok");
    job.verify_ok(false);

    // The lock is released: a third backup runs.
    job.backup_ok();
    job.assert_clean();
}

#[test]
fn lock_does_not_block_other_jobs() {
    // Two different jobs back up at the same time: neither gets 75.
    if !require_tools("lock_does_not_block_other_jobs", LOCAL_TOOLS) {
        return;
    }
    let a = Job::local("lock-a").build();
    let b = Job::local("lock-b").build();
    for j in [&a, &b] {
        make_sample_tree(&j.source);
        make_big_tree(&j.source, "big", 10, 2 * MIB);
        j.ok(&["init"]);
    }
    let ra = a.spawn(&["backup"]);
    let rb = b.spawn(&["backup"]);
    ra.wait(Duration::from_secs(300)).expect_code(0, "job a");
    rb.wait(Duration::from_secs(300)).expect_code(0, "job b");
    for j in [&a, &b] {
        assert_eq!(j.stage("backup")["outcome"], "ok", "job {}", j.name);
    }
    a.assert_clean();
    b.assert_clean();
}

/// SIGINT (Ctrl-C) during a backup to the `local` target: same guarantees.
#[test]
fn sigint_during_local_backup_cleans_up_and_next_run_completes() {
    if !require_tools("sigint_during_local_backup", LOCAL_TOOLS) {
        return;
    }
    let job = Job::local("int-sigint").build();
    make_sample_tree(&job.source);
    make_big_tree(&job.source, "big", 75, 2 * MIB); // 150 MiB
    job.ok(&["init"]);

    let mut run = job.spawn(&["-v", "backup"]);
    wait_for_transfer(&job, &mut run, 1, true);
    send_signal(run.pid(), "INT");
    let out = run.wait(Duration::from_secs(120));
    eprintln!("backup after SIGINT (exit {}):\n{}", out.code, out.dump());
    assert_ne!(out.code, 0, "backup exited 0 after SIGINT");
    let st = job.stage("backup");
    assert_eq!(
        st["outcome"], "interrupted",
        "status.json backup after SIGINT: {st}"
    );
    assert_no_mounts_under(&job.runtime_dir);
    assert_no_helpers_left(&job.root);
    assert_no_truncated_remote_files(&job);

    job.backup_ok();
    let dots = dot_files_under(&job.files_dir());
    assert!(
        dots.is_empty(),
        "temp files left in files/ after the next backup: {dots:?}"
    );
    job.verify_ok(false);
    job.assert_clean();
}
