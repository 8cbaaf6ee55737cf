//! Issue 5, item 1: faults survived, nothing lost. The SFTP server runs as
//! its own host (tests/faults/netns.rs: network namespace, veth pair,
//! 10.213.X.0/30, sshd via `nsenter --net`, remote dir on its own tmpfs).
//!
//! The scenarios are the rows of [`FAULTS`], run by tests/faults/driver.rs.
//! Each asserts: the run ends in bounded time with outcome failed (or is
//! killed) and a one-line error naming the cause, no mount left, the lock
//! released, the previous good state of files/ and snapshots/ intact by
//! sha1; then the next run completes and verify passes.

mod common;
#[path = "faults/driver.rs"]
mod driver;
#[path = "faults/netns.rs"]
mod netns;
#[path = "faults/support.rs"]
mod support;

use common::*;
use driver::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::Scenario;

/// ServerAliveInterval 3 x CountMax 3 = 9 s (CIPHERSYNC_SSH_ALIVE, set by
/// the harness), plus slack for unmounting under load.
const LINK_BOUND: Duration = Duration::from_secs(45);
const SECS_60: Duration = Duration::from_secs(60);
const SECS_120: Duration = Duration::from_secs(120);

/// The baseline of a run interrupted while it sends 16 MiB of new data.
const MID_TRANSFER: Option<Baseline> = Some(Baseline { mb: 2, new_mb: 16 });

const REFUSAL_EXPECTED: &str = "backup exits 1 with outcome failed and a one-line error naming the cause, nothing on the remote changes, lock free, no mount; fixed -> next run ok (verify ok at the end of the group)";

/// A refusal: `break_it` before the backup, which must refuse naming one of
/// `cause` and change nothing on the remote; `fix` after; the next backup ok.
const fn refusal(
    name: &'static str,
    cause: &'static [&'static str],
    run_by: &'static [&'static str],
    break_it: fn(&NetJob, &Saved),
    fix: fn(&NetJob, &Saved),
) -> Row {
    Row {
        name,
        expected: REFUSAL_EXPECTED,
        baseline: None,
        stage: "backup",
        run_by,
        fault: Fault::Before { break_it, fix },
        outcome: Outcome::Refused { cause },
        check: None,
        recovery: Recovery::Backup,
        check_recovered: None,
    }
}

/// A group of one row with its own job and baseline.
const fn single(
    test: &'static str,
    tag: &'static str,
    disk_mb: u32,
    transport: &'static str,
    rows: &'static [Row],
) -> Group {
    Group {
        test,
        tag,
        disk_mb,
        transport,
        baseline: None,
        rows,
        verify_at_end: false,
    }
}

/// The fault table: every scenario of the reliability report's "Faults
/// survived" section is one row.
const FAULTS: &[Group] = &[
    // -- Link cut. Both wait out the keepalive bound: their test runs them
    // at the same time (each group has its own namespace).
    single(
        "link_cut_during_rsync_and_during_verify",
        "f-linkcut-rsync",
        96,
        "sshfs",
        &[Row {
            name: "link cut during rsync (sshfs)",
            expected: "backup fails within ~60 s keepalive bound + unmount, error names the unreachable server; nothing lost; next run ok, verify ok",
            baseline: MID_TRANSFER,
            stage: "backup",
            run_by: &[],
            fault: Fault::During {
                at: At::MidRsync { above: 2 },
                inject: link_down,
                heal: Some(link_up),
                heal_after_run: true,
            },
            outcome: Outcome::Fails {
                bound: LINK_BOUND,
                cause: &[
                    "10.213.",
                    "reach",
                    "connection",
                    "timeout",
                    "timed out",
                    "link",
                ],
            },
            check: None,
            recovery: Recovery::BackupVerify,
            check_recovered: None,
        }],
    ),
    single(
        "link_cut_during_rsync_and_during_verify",
        "f-linkcut-verify",
        96,
        "sshfs",
        &[Row {
            name: "link cut during verify (ssh checksum command)",
            expected: "verify fails within the keepalive bound, error names the server; nothing lost; verify ok after the link is back",
            baseline: Some(Baseline { mb: 12, new_mb: 0 }),
            stage: "verify",
            run_by: &[],
            fault: Fault::During {
                at: At::RemoteHashing,
                inject: link_down,
                heal: Some(link_up),
                heal_after_run: true,
            },
            outcome: Outcome::Fails {
                bound: LINK_BOUND,
                cause: &["10.213.", "reach", "connection", "timeout", "timed out"],
            },
            check: None,
            recovery: Recovery::Verify,
            check_recovered: None,
        }],
    ),
    // -- Server and FUSE daemons die.
    single(
        "sshd_killed_during_rsync",
        "f-sshd-killed",
        96,
        "rsync",
        &[Row {
            name: "sshd killed (-9, with its sessions) during rsync (rsync transport)",
            expected: "backup fails quickly naming the connection; nothing lost; next run ok after sshd restarts",
            baseline: MID_TRANSFER,
            stage: "backup",
            run_by: &[],
            fault: Fault::During {
                at: At::MidRsync { above: 2 },
                inject: kill_sshd,
                heal: Some(restart_sshd),
                heal_after_run: false,
            },
            outcome: Outcome::Fails {
                bound: SECS_60,
                cause: &[
                    "10.213.",
                    "connection",
                    "reach",
                    "rsync",
                    "closed",
                    "unexpectedly",
                ],
            },
            check: None,
            recovery: Recovery::BackupVerify,
            check_recovered: None,
        }],
    ),
    single(
        "sshfs_killed_during_rsync",
        "f-sshfs-killed",
        96,
        "sshfs",
        &[Row {
            name: "sshfs killed (-9) during rsync",
            expected: "backup fails naming the broken mount / rsync; the dead mount is cleaned; nothing lost; next run ok",
            baseline: MID_TRANSFER,
            stage: "backup",
            run_by: &[],
            fault: Fault::During {
                at: At::MidRsync { above: 2 },
                inject: kill_sshfs,
                heal: None,
                heal_after_run: false,
            },
            outcome: Outcome::Fails {
                bound: SECS_60,
                cause: &[
                    "sshfs",
                    "mount",
                    "transport endpoint",
                    "rsync",
                    "not connected",
                ],
            },
            check: None,
            recovery: Recovery::BackupVerify,
            check_recovered: None,
        }],
    ),
    single(
        "helper_sigkilled_during_rsync_next_run_cleans_up",
        "f-helper-kill9",
        96,
        "sshfs",
        &[Row {
            name: "helper SIGKILLed during rsync; next run cleans up",
            expected: "backup.incomplete left; the next run removes stale mounts under runtime_dir and rsync temp files in files/, completes; verify ok; nothing lost",
            baseline: MID_TRANSFER,
            stage: "backup",
            run_by: &[],
            fault: Fault::During {
                at: At::MidRsync { above: 2 },
                inject: kill_helper,
                heal: None,
                heal_after_run: false,
            },
            outcome: Outcome::Killed,
            check: Some(helper_killed_left_state),
            recovery: Recovery::BackupVerify,
            check_recovered: Some(helper_killed_cleaned_up),
        }],
    ),
    single(
        "whole_run_sigkilled_like_a_cgroup_kill_next_run_cleans_up",
        "f-cgroup-kill9",
        96,
        "sshfs",
        &[Row {
            name: "helper and every process of the run SIGKILLed during rsync (systemd stop/timeout kills the cgroup)",
            expected: "dead FUSE mounts (ENOTCONN), a stale gocryptfs ctl.sock and rsync temp files are left; the next run cleans them and completes; verify ok; nothing lost",
            baseline: MID_TRANSFER,
            stage: "backup",
            run_by: &[],
            fault: Fault::During {
                at: At::MidRsync { above: 2 },
                inject: kill_whole_run,
                heal: None,
                heal_after_run: false,
            },
            outcome: Outcome::Killed,
            check: Some(whole_run_killed_left_state),
            recovery: Recovery::BackupVerify,
            check_recovered: None,
        }],
    ),
    // -- Disk full.
    single(
        "server_disk_full_during_backup",
        "f-disk-full",
        40,
        "sshfs",
        &[Row {
            name: "server disk fills up during a backup (40 MiB tmpfs)",
            expected: "backup fails naming the full disk; no good remote file replaced by a truncated one; after freeing space the next run is ok, verify ok",
            baseline: Some(Baseline { mb: 6, new_mb: 0 }),
            stage: "backup",
            run_by: &[],
            fault: Fault::Before {
                break_it: more_data_than_the_disk_holds,
                fix: grow_the_disk,
            },
            outcome: Outcome::Fails {
                bound: SECS_120,
                cause: &["space", "disk", "full", "quota"],
            },
            check: Some(no_truncated_file_under_a_real_name),
            recovery: Recovery::BackupVerify,
            check_recovered: None,
        }],
    ),
    // -- Source changing while rsync reads it.
    single(
        "source_changes_during_rsync",
        "f-src-changes",
        128,
        "sshfs",
        &[Row {
            name: "source files change, grow and vanish while rsync reads them",
            expected: "the run ends ok, partial (exit 4: rsync 24, the vanished files named) or failed with a clear error; nothing lost; the next run picks the changes up; verify and verify --deep ok",
            baseline: MID_TRANSFER,
            stage: "backup",
            run_by: &[],
            fault: Fault::During {
                at: At::MidRsync { above: 1 },
                inject: change_the_wave,
                heal: None,
                heal_after_run: false,
            },
            outcome: Outcome::OkOrFails { bound: SECS_120 },
            check: None,
            recovery: Recovery::BackupVerifyDeep,
            check_recovered: None,
        }],
    ),
    // -- Refusals before anything is copied: one job per group, one row
    // after the other, verify at the end of the group.
    Group {
        test: "refusals_source_and_password",
        tag: "f-refuse-src-pw",
        disk_mb: 64,
        transport: "sshfs",
        baseline: Some(Baseline { mb: 2, new_mb: 0 }),
        verify_at_end: true,
        rows: &[
            refusal(
                "source is an empty directory (unmounted disk)",
                &["empty", "max-delete", "max_delete"],
                &[],
                source_emptied,
                source_moved_back_over_the_empty_dir,
            ),
            refusal(
                "source does not exist",
                // The error must be about the source, not e.g. its gocryptfs
                // config. The message is matched with the job's root
                // replaced by <root>.
                &[
                    "source <root>/src does not exist",
                    "source <root>/src: no such",
                ],
                &[],
                source_moved_away,
                source_moved_back,
            ),
            refusal(
                "source is not a directory",
                &["not a directory"],
                &[],
                source_replaced_by_a_file,
                source_moved_back_over_the_file,
            ),
            refusal(
                "password file missing",
                &["password"],
                &[],
                password_removed,
                password_restored,
            ),
            refusal(
                "password file empty",
                &["password", "empty"],
                &[],
                password_emptied,
                password_restored,
            ),
            refusal(
                "password wrong",
                &["password", "wrong"],
                &[],
                password_wrong,
                password_restored,
            ),
            // Unreadable: root reads a mode-0000 file through
            // CAP_DAC_OVERRIDE, so the run drops it (and CAP_DAC_READ_SEARCH)
            // from its bounding set, as a unit without those capabilities
            // would have: still uid 0, still able to mount, but bound by
            // file modes.
            refusal(
                "password file unreadable (mode 0000, no DAC override)",
                &["password file", "permission denied"],
                &[
                    "setpriv",
                    "--bounding-set=-dac_override,-dac_read_search",
                    "--",
                ],
                password_mode_0000,
                password_mode_0600,
            ),
        ],
    },
    Group {
        test: "refusals_ssh_and_remote",
        tag: "f-refuse-ssh",
        disk_mb: 64,
        transport: "sshfs",
        baseline: Some(Baseline { mb: 2, new_mb: 0 }),
        verify_at_end: true,
        rows: &[
            // Or the key's path, as the cause is matched: with the job's
            // root replaced by <root> (the key lies in <root>/netsshd).
            refusal(
                "identity file missing",
                &["identity", "<root>/netsshd/client_ed25519"],
                &[],
                identity_moved_away,
                identity_moved_back,
            ),
            refusal(
                "identity file with loose permissions (0644)",
                &["identity", "permission"],
                &[],
                identity_mode_0644,
                identity_mode_0600,
            ),
            refusal(
                "host key does not match known_hosts",
                &["host key", "known_hosts"],
                &[],
                known_hosts_of_another_server,
                known_hosts_restored,
            ),
            refusal(
                "remote path does not exist",
                &["does not exist", "no such"],
                &[],
                remote_path_missing,
                job_file_restored,
            ),
            refusal(
                "remote path not writable (server disk read-only)",
                &[
                    "read-only",
                    "permission",
                    "not writable",
                    "denied",
                    "not permitted",
                ],
                &[],
                server_disk_readonly,
                server_disk_writable,
            ),
        ],
    },
];

/// One #[test] per name; each runs the groups of [`FAULTS`] whose `test` it
/// is (several at the same time).
macro_rules! fault_tests {
    ($($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                run_test(FAULTS, stringify!($test));
            }
        )*

        /// Every group of the table is run by one of the tests above.
        #[test]
        fn every_fault_group_is_run_by_a_test() {
            let tests = [$(stringify!($test)),*];
            let orphans: Vec<&str> = FAULTS
                .iter()
                .filter(|g| !tests.contains(&g.test))
                .map(|g| g.tag)
                .collect();
            assert!(orphans.is_empty(), "fault groups no test runs: {orphans:?}");
        }
    };
}

fault_tests!(
    link_cut_during_rsync_and_during_verify,
    sshd_killed_during_rsync,
    sshfs_killed_during_rsync,
    helper_sigkilled_during_rsync_next_run_cleans_up,
    whole_run_sigkilled_like_a_cgroup_kill_next_run_cleans_up,
    server_disk_full_during_backup,
    source_changes_during_rsync,
    refusals_source_and_password,
    refusals_ssh_and_remote,
);

// ---------------------------------------------------------------------------
// Faults injected during a run
// ---------------------------------------------------------------------------

fn link_down(j: &mut NetJob, _: &mut Running) {
    j.net.link_down();
}

fn link_up(j: &mut NetJob) {
    j.net.link_up();
}

fn kill_sshd(j: &mut NetJob, _: &mut Running) {
    j.net.kill_sshd();
}

fn restart_sshd(j: &mut NetJob) {
    j.net.start_sshd();
}

fn kill_sshfs(j: &mut NetJob, _: &mut Running) {
    let sshfs: Vec<u32> = processes()
        .into_iter()
        .filter(|(_, _, comm, cmd)| {
            comm == "sshfs" && cmd.contains(j.runtime_dir.to_str().unwrap())
        })
        .map(|p| p.0)
        .collect();
    assert!(!sshfs.is_empty(), "no sshfs process of this run found");
    for p in &sshfs {
        send_signal(*p, "KILL");
    }
}

/// SIGKILL the helper; then stop the rsync it started, as a supervisor
/// killing the unit's cgroup would (rsync and the FUSE daemons outlive the
/// helper); leave the mounts for the next run to find.
fn kill_helper(j: &mut NetJob, run: &mut Running) {
    freeze_rsyncs(run);
    send_signal(run.pid(), "KILL");
    let _ = run.child.wait();
    let mut rsyncs = Vec::new();
    for (pid, _, comm, cmd) in processes() {
        if comm == "rsync" && cmd.contains(j.runtime_dir.to_str().unwrap()) {
            // One that was not frozen (forked after the freeze) may end
            // between the listing and the kill.
            kill_if_alive(pid);
            rsyncs.push(pid);
        }
    }
    let alive = wait_dead(&rsyncs);
    if !alive.is_empty() {
        eprintln!("rsync {alive:?} still alive 60 s after SIGKILL");
    }
}

fn helper_killed_left_state(sc: &mut Scenario, j: &NetJob, before: &RemoteState) {
    assert!(
        j.state_dir.join("backup.incomplete").exists(),
        "no state_dir/backup.incomplete after SIGKILL"
    );
    let stale = mounts_under(&j.runtime_dir).len();
    let dots = dot_files(&j.files_dir());
    sc.note(format!(
        "after SIGKILL: {stale} stale mount(s) under runtime_dir, {} dot temp file(s) in files/",
        dots.len()
    ));
    assert!(
        lock_free(j),
        "lock held after the helper was killed (flock must die with it)"
    );
    assert_nothing_lost(sc, j, before, "SIGKILL");
}

fn helper_killed_cleaned_up(_: &mut Scenario, j: &NetJob, _: &RemoteState) {
    assert!(
        !j.state_dir.join("backup.incomplete").exists(),
        "backup.incomplete still there after a good run"
    );
    let left = dot_files(&j.files_dir());
    assert!(left.is_empty(), "rsync temp files left in files/: {left:?}");
    // Temp files must not have been "deleted" into the snapshot either.
    let in_snap = dot_files(&j.target_path.join("snapshots"));
    assert!(
        in_snap.is_empty(),
        "rsync temp files moved into snapshots/: {in_snap:?}"
    );
}

/// Entries under `dir` whose name starts with a dot (rsync's temp files).
fn dot_files(dir: &Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .filter(|(rel, _)| rel.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|(rel, _)| rel.display().to_string())
        .collect()
}

/// Stops the run's rsyncs where they are (SIGSTOP; SIGKILL ends a stopped
/// process all the same), so that the run cannot finish between the moment
/// the fault is due and the kill, however fast the machine: the helper
/// waits for every rsync it started. A fixed pause here would race a fast
/// run (a change set sends 16 MiB in well under 200 ms).
fn freeze_rsyncs(run: &mut Running) -> Vec<u32> {
    loop {
        assert!(
            run.is_running(),
            "the run ended before the fault could be injected (premise broken)"
        );
        let stopped: Vec<u32> = descendants(run.pid())
            .into_iter()
            .filter(|(_, comm)| comm == "rsync")
            .map(|(pid, _)| pid)
            .filter(|pid| {
                Command::new("kill")
                    .args(["-STOP", &pid.to_string()])
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .collect();
        if !stopped.is_empty() {
            return stopped;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILL the helper, its descendants and every helper tool of the job's
/// runtime_dir at once (systemd stop/timeout kills the cgroup).
fn kill_whole_run(j: &mut NetJob, run: &mut Running) {
    freeze_rsyncs(run);
    let rt = j.runtime_dir.to_str().unwrap().to_string();
    let mut victims: Vec<u32> = vec![run.pid()];
    victims.extend(descendants(run.pid()).into_iter().map(|p| p.0));
    for (pid, _, comm, cmd) in processes() {
        if ["gocryptfs", "sshfs", "ssh", "rsync"].contains(&comm.as_str()) && cmd.contains(&rt) {
            victims.push(pid);
        }
    }
    victims.sort();
    victims.dedup();
    for p in &victims {
        kill_if_alive(*p);
    }
    let _ = run.child.wait();
    let alive = wait_dead(&victims);
    if !alive.is_empty() {
        eprintln!("{alive:?} still alive 60 s after SIGKILL");
    }
    KILLED.with(|k| k.set(victims.len()));
}

thread_local! {
    /// How many processes `kill_whole_run` killed (for the scenario's note).
    static KILLED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn whole_run_killed_left_state(sc: &mut Scenario, j: &NetJob, before: &RemoteState) {
    let stale = mounts_under(&j.runtime_dir).len();
    let sock = j.runtime_dir.join("ctl.sock").exists();
    sc.note(format!(
        "killed {} processes; left: {stale} dead mount(s), ctl.sock present: {sock}",
        KILLED.with(|k| k.get())
    ));
    assert!(lock_free(j), "lock held after the whole run was killed");
    assert_nothing_lost(sc, j, before, "SIGKILL");
}

/// Change, grow and delete wave files while the transfer is running.
fn change_the_wave(j: &mut NetJob, _: &mut Running) {
    for i in (0..16).rev() {
        let p = j.source.join(format!("wave/chunk {i:04}.bin"));
        match i % 3 {
            0 => {
                let _ = fs::remove_file(&p);
            }
            1 => {
                use std::io::Write;
                if let Ok(mut f) = fs::OpenOptions::new().append(true).open(&p) {
                    let _ = f.write_all(&vec![7u8; 300_000]);
                }
            }
            _ => write_random_file(&p, MIB / 2, 4242 + i as u64),
        }
    }
}

// ---------------------------------------------------------------------------
// Disk full
// ---------------------------------------------------------------------------

fn more_data_than_the_disk_holds(j: &NetJob, _: &Saved) {
    // A file that will be replaced by a bigger version during the failing run.
    write_random_file(&j.source.join("base/chunk 0000.bin"), 3 * MIB, 999);
    make_big_tree(&j.source, "wave", 40, MIB);
}

/// The admin gives the server more space (replaced and deleted files move
/// into snapshots/, so deleting source files frees nothing there).
fn grow_the_disk(j: &NetJob, _: &Saved) {
    let o = Command::new("mount")
        .args(["-o", "remount,size=160m"])
        .arg(&j.net.disk)
        .output()
        .unwrap();
    assert!(o.status.success(), "grow the tmpfs: {o:?}");
}

fn no_truncated_file_under_a_real_name(_: &mut Scenario, j: &NetJob, before: &RemoteState) {
    let sizes: std::collections::BTreeSet<u64> = walk(&j.source)
        .into_iter()
        .filter(|(_, m)| m.file_type().is_file())
        .map(|(_, m)| cipher_size(m.len()))
        .collect();
    let old_sizes: std::collections::BTreeSet<u64> = before
        .keys()
        .filter_map(|k| fs::metadata(j.target_path.join(k)).ok().map(|m| m.len()))
        .collect();
    let bad: Vec<String> = walk(&j.files_dir())
        .into_iter()
        .filter(|(rel, m)| {
            let n = rel.file_name().unwrap().to_string_lossy().into_owned();
            m.file_type().is_file()
                && !n.starts_with('.')
                && !n.starts_with("gocryptfs.")
                && !n.ends_with(".name")
                && !sizes.contains(&m.len())
                && !old_sizes.contains(&m.len())
        })
        .map(|(rel, m)| format!("{} ({} bytes)", rel.display(), m.len()))
        .collect();
    assert!(bad.is_empty(), "truncated files under real names: {bad:?}");
}

// ---------------------------------------------------------------------------
// Refusals: break before the run, fix after
// ---------------------------------------------------------------------------

fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Where the refusals move the source while it is "gone".
fn moved(j: &NetJob) -> std::path::PathBuf {
    j.root.join("src-away")
}

fn source_emptied(j: &NetJob, _: &Saved) {
    fs::rename(&j.source, moved(j)).unwrap();
    fs::create_dir(&j.source).unwrap();
    // the reverse config stays (as on a real unmounted disk it would not:
    // then the error is the missing config, also a refusal)
    fs::copy(
        moved(j).join(".gocryptfs.reverse.conf"),
        j.source.join(".gocryptfs.reverse.conf"),
    )
    .unwrap();
}

fn source_moved_back_over_the_empty_dir(j: &NetJob, _: &Saved) {
    fs::remove_dir_all(&j.source).unwrap();
    fs::rename(moved(j), &j.source).unwrap();
}

fn source_moved_away(j: &NetJob, _: &Saved) {
    fs::rename(&j.source, moved(j)).unwrap();
}

fn source_moved_back(j: &NetJob, _: &Saved) {
    fs::rename(moved(j), &j.source).unwrap();
}

fn source_replaced_by_a_file(j: &NetJob, _: &Saved) {
    fs::rename(&j.source, moved(j)).unwrap();
    fs::write(&j.source, b"a file").unwrap();
}

fn source_moved_back_over_the_file(j: &NetJob, _: &Saved) {
    fs::remove_file(&j.source).unwrap();
    fs::rename(moved(j), &j.source).unwrap();
}

fn password_removed(j: &NetJob, _: &Saved) {
    fs::remove_file(&j.password_file).unwrap();
}

fn password_emptied(j: &NetJob, _: &Saved) {
    write_mode(&j.password_file, b"", 0o600);
}

fn password_wrong(j: &NetJob, _: &Saved) {
    write_mode(&j.password_file, b"not-the-password\n", 0o600);
}

fn password_restored(j: &NetJob, s: &Saved) {
    write_mode(&j.password_file, &s.password, 0o600);
}

fn password_mode_0000(j: &NetJob, _: &Saved) {
    set_mode(&j.password_file, 0o000);
}

fn password_mode_0600(j: &NetJob, _: &Saved) {
    set_mode(&j.password_file, 0o600);
}

fn key_away(j: &NetJob) -> std::path::PathBuf {
    j.root.join("key-away")
}

fn identity_moved_away(j: &NetJob, _: &Saved) {
    fs::rename(&j.net.client_key, key_away(j)).unwrap();
}

fn identity_moved_back(j: &NetJob, _: &Saved) {
    fs::rename(key_away(j), &j.net.client_key).unwrap();
}

fn identity_mode_0644(j: &NetJob, _: &Saved) {
    set_mode(&j.net.client_key, 0o644);
}

fn identity_mode_0600(j: &NetJob, _: &Saved) {
    set_mode(&j.net.client_key, 0o600);
}

fn known_hosts_of_another_server(j: &NetJob, _: &Saved) {
    let other = j.root.join("other_host_key");
    Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    let p = fs::read_to_string(other.with_extension("pub")).unwrap();
    let mut it = p.split_whitespace();
    fs::write(
        &j.net.known_hosts,
        format!(
            "{} {} {}\n",
            j.net.server_ip,
            it.next().unwrap(),
            it.next().unwrap()
        ),
    )
    .unwrap();
}

fn known_hosts_restored(j: &NetJob, s: &Saved) {
    fs::write(&j.net.known_hosts, &s.known_hosts).unwrap();
}

fn remote_path_missing(j: &NetJob, _: &Saved) {
    let mut c = j.config.clone();
    c["target"]["path"] = json!(format!("{}-missing", j.target_path.display()));
    fs::write(&j.config_file, serde_json::to_string_pretty(&c).unwrap()).unwrap();
}

fn job_file_restored(j: &NetJob, _: &Saved) {
    fs::write(
        &j.config_file,
        serde_json::to_string_pretty(&j.config).unwrap(),
    )
    .unwrap()
}

fn server_disk_readonly(j: &NetJob, _: &Saved) {
    j.net.disk_readonly(true);
}

fn server_disk_writable(j: &NetJob, _: &Saved) {
    j.net.disk_readonly(false);
}
