//! Issue 5, item 1: faults survived, nothing lost. The SFTP server runs as
//! its own host (tests/faults/netns.rs: network namespace, veth pair,
//! 10.213.X.0/30, sshd via `ip netns exec`, remote dir on its own tmpfs).
//! Each scenario asserts: the run ends in bounded time with outcome
//! failed/interrupted and a one-line error naming the cause, no mount left,
//! the lock released, the previous good state of files/ and snapshots/
//! intact by sha1; then the next run completes and verify passes.

mod common;
#[path = "faults/netns.rs"]
mod netns;
#[path = "faults/support.rs"]
mod support;

use common::*;
use netns::NetServer;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::Scenario;

const SUITE: &str = "faults";
const MIB: usize = 1 << 20;

/// A job whose target is the namespaced server. Field order: the server is
/// torn down before the job's temp dir is removed.
struct NetJob {
    net: NetServer,
    job: Job,
}

impl std::ops::Deref for NetJob {
    type Target = Job;
    fn deref(&self) -> &Job {
        &self.job
    }
}

fn net_job(tag: &str, disk_mb: u32, transport: &str) -> Option<NetJob> {
    if !require_tools(tag, SFTP_TOOLS) || !require_tools(tag, &["ip", "flock"]) {
        return None;
    }
    let tmp = TempDir::new(tag);
    let root = tmp.path().to_path_buf();
    let net = NetServer::start(&root, disk_mb);
    let source = root.join("src");
    fs::create_dir_all(&source).unwrap();
    let password_file = root.join("password");
    write_mode(
        &password_file,
        format!("{}\n", random_password()).as_bytes(),
        0o600,
    );
    let name: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let config = json!({
        "version": 1,
        "name": name,
        "source": source,
        "password_file": password_file,
        "target": {
            "type": "sftp",
            "host": net.server_ip,
            "port": 22,
            "user": "root",
            "path": net.remote,
            "identity_file": net.client_key,
            "known_hosts_file": net.known_hosts,
            "transport": transport,
        },
        "state_dir": root.join("state"),
        "runtime_dir": root.join("run"),
    });
    let config_file = root.join("job.json");
    fs::write(&config_file, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let job = Job {
        sshd: None,
        name,
        source,
        config_file,
        password_file,
        state_dir: root.join("state"),
        runtime_dir: root.join("run"),
        target_path: net.remote.clone(),
        config,
        root,
        tmp,
        settle_ms: std::cell::Cell::new(common::SETTLE_NEVER_MS),
    };
    Some(NetJob { net, job })
}

/// sha1 (or link target) of every file under files/ and snapshots/.
fn remote_state(remote: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for top in ["files", "snapshots"] {
        for (rel, meta) in walk(&remote.join(top)) {
            let p = remote.join(top).join(&rel);
            let key = format!("{top}/{}", rel.display());
            if meta.file_type().is_file() {
                m.insert(key, sha1_file(&p));
            } else if meta.file_type().is_symlink() {
                m.insert(key, format!("-> {}", fs::read_link(&p).unwrap().display()));
            }
        }
    }
    m
}

/// The previous good state is still all there: every snapshot file
/// unchanged; every files/ entry unchanged or its old version moved (by
/// rsync --backup) into some snapshots/<id>/ with the same sha1. Returns the
/// losses.
fn losses(before: &BTreeMap<String, String>, remote: &Path) -> Vec<String> {
    let now = remote_state(remote);
    let mut lost = Vec::new();
    for (k, sha) in before {
        if now.get(k) == Some(sha) {
            continue;
        }
        if let Some(rel) = k.strip_prefix("files/") {
            let kept = now.iter().any(|(nk, nsha)| {
                nsha == sha && nk.starts_with("snapshots/") && nk.splitn(3, '/').nth(2) == Some(rel)
            });
            if kept {
                continue;
            }
        }
        lost.push(format!("{k}: was {sha}, now {:?}", now.get(k)));
    }
    lost
}

/// The lock is free: flock(1) can take it at once.
fn lock_free(job: &Job) -> bool {
    let lock = job.state_dir.join("lock");
    if !lock.exists() {
        return true;
    }
    Command::new("flock")
        .args(["-n", "-E", "99"])
        .arg(&lock)
        .arg("true")
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn regular_count(dir: &Path) -> usize {
    if dir.is_dir() { count_files(dir) } else { 0 }
}

/// Waits until `run` has an rsync descendant and files/ holds more than
/// `above` regular files (the transfer of new data is under way).
fn wait_mid_rsync(job: &Job, run: &mut Running, above: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            run.is_running(),
            "the run ended before the fault could be injected (premise broken)"
        );
        let rsync = descendants(run.pid()).iter().any(|(_, c)| c == "rsync");
        if rsync && regular_count(&job.files_dir()) > above {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no rsync transfer seen within 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Baseline: sample tree + `mb` MiB, init, backup; then `new_mb` MiB of new
/// data for the run under test. Returns (remote state before, files/ count).
fn baseline(j: &NetJob, mb: usize, new_mb: usize) -> (BTreeMap<String, String>, usize) {
    make_sample_tree(&j.source);
    make_big_tree(&j.source, "base", mb, MIB);
    j.init_and_backup();
    // A second run so that snapshots/ holds something to protect.
    fs::write(j.source.join("README.txt"), b"changed once\n").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    reap_orphans(j);
    j.backup_ok();
    if new_mb > 0 {
        make_big_tree(&j.source, "wave", new_mb, MIB);
    }
    let before = remote_state(&j.target_path);
    assert!(
        before.keys().any(|k| k.starts_with("snapshots/")),
        "baseline has no snapshot files"
    );
    (before, regular_count(&j.files_dir()))
}

/// Common post-fault checks; returns the stage's error message.
fn after_fault(
    sc: &mut Scenario,
    j: &NetJob,
    stage: &str,
    out: &Out,
    took: Duration,
    bound: Duration,
    outcomes: &[&str],
    cause: &[&str],
    before: &BTreeMap<String, String>,
) -> String {
    support::assert_no_panic(stage, out.code, &out.stdout, &out.stderr);
    assert!(took <= bound, "{stage} took {took:?}, bound {bound:?}");
    let st = j.stage(stage);
    let outcome = st["outcome"].as_str().unwrap_or("?").to_string();
    assert!(
        outcomes.contains(&outcome.as_str()),
        "{stage}: outcome {outcome}, wanted one of {outcomes:?}: {st}\n{}",
        out.dump()
    );
    // 1 = a stage failed; 2 (bad config) is accepted for conditions the
    // helper classes as configuration (e.g. a missing source).
    assert!(
        out.code == 1 || out.code == 2,
        "{stage}: exit {} (wanted 1)\n{}",
        out.code,
        out.dump()
    );
    let msg = st["error"]["message"].as_str().unwrap_or("").to_string();
    assert!(
        !msg.is_empty() && !msg.contains('\n'),
        "{stage}: error is not one line: {st}"
    );
    // Match the cause against the message without the job's own paths
    // (test dirs are named after the scenario, e.g. ".../f-disk-full-...").
    let low = msg
        .replace(j.root.to_str().unwrap(), "<root>")
        .to_lowercase();
    sc.soft_check(
        cause.iter().any(|c| low.contains(&c.to_lowercase())),
        format!("{stage}: error does not name the cause (wanted one of {cause:?}): {msg}"),
    );
    assert_no_mounts_under(&j.runtime_dir);
    assert_no_helpers_left(&j.root);
    assert!(
        lock_free(j),
        "{stage}: the lock is still held after the run ended"
    );
    let lost = losses(before, &j.target_path);
    sc.lost = sc.lost.max(lost.len() as u64);
    assert!(
        lost.is_empty(),
        "{stage}: previous good state damaged:\n  {}",
        lost.join("\n  ")
    );
    sc.note(format!(
        "exit {} after {:.1}s, outcome {outcome}, error: {msg}",
        out.code,
        took.as_secs_f64()
    ));
    msg
}

/// Diagnostic only, off by default: with CIPHERSYNC_FAULTS_REAP_ORPHANS=1,
/// before the runs of the baseline and of the recovery, kill a gocryptfs
/// daemon of this job that is no longer mounted and remove its ctl.sock
/// (the binary bug "orphaned gocryptfs keeps ctl.sock", see
/// docs/reliability.md), so that the other properties can still be observed.
fn reap_orphans(j: &Job) {
    if std::env::var("CIPHERSYNC_FAULTS_REAP_ORPHANS").as_deref() != Ok("1") {
        return;
    }
    let sock = j.runtime_dir.join("ctl.sock");
    let sock_s = sock.to_string_lossy().into_owned();
    if !mounts_under(&j.runtime_dir).is_empty() {
        return;
    }
    for (pid, _, comm, cmd) in processes() {
        if comm == "gocryptfs" && cmd.contains(&sock_s) {
            eprintln!("REAP: orphaned gocryptfs {pid}: {cmd}");
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
    if sock.exists() {
        eprintln!("REAP: removing stale {}", sock.display());
        let _ = fs::remove_file(&sock);
    }
}

/// The next run completes, verify passes, nothing of the old state lost.
fn recovers(sc: &mut Scenario, j: &NetJob, before: &BTreeMap<String, String>) {
    recovers_with(sc, j, before, true)
}

fn recovers_with(sc: &mut Scenario, j: &NetJob, before: &BTreeMap<String, String>, verify: bool) {
    std::thread::sleep(Duration::from_millis(1100));
    reap_orphans(j);
    let (o, v) = j.run_json(&["backup"]);
    assert_eq!(o.code, 0, "recovery backup failed:\n{}", o.dump());
    assert_eq!(v["outcome"], "ok");
    reap_orphans(j);
    if verify {
        j.verify_ok(false);
    }
    let lost = losses(before, &j.target_path);
    sc.lost = sc.lost.max(lost.len() as u64);
    assert!(
        lost.is_empty(),
        "after recovery, old state lost:\n  {}",
        lost.join("\n  ")
    );
    j.assert_clean();
    sc.note(if verify {
        "next backup ok, verify ok, no loss"
    } else {
        "next backup ok, no loss"
    });
}

fn spawn_timed(j: &Job, args: &[&str]) -> (Running, Instant) {
    (j.spawn(args), Instant::now())
}

fn finish(run: Running, t0: Instant, bound: Duration) -> (Out, Duration) {
    let out = run.wait(bound + Duration::from_secs(30));
    (out, t0.elapsed())
}

// ---------------------------------------------------------------------------
// Link cut
// ---------------------------------------------------------------------------

/// ServerAliveInterval 3 x CountMax 3 = 9 s (CIPHERSYNC_SSH_ALIVE, set by
/// the harness), plus slack for unmounting under load.
const LINK_BOUND: Duration = Duration::from_secs(45);

fn link_cut_during_rsync() {
    let Some(j) = net_job("f-linkcut-rsync", 96, "sshfs") else {
        return;
    };
    let mut sc = Scenario::new(
        SUITE,
        "fault",
        "link cut during rsync (sshfs)",
        "backup fails within ~60 s keepalive bound + unmount, error names the unreachable server; nothing lost; next run ok, verify ok",
    );
    let (before, n) = baseline(&j, 2, 16);
    let (mut run, t0) = spawn_timed(&j, &["backup"]);
    wait_mid_rsync(&j, &mut run, n + 2);
    j.net.link_down();
    let (out, took) = finish(run, t0, LINK_BOUND);
    j.net.link_up();
    after_fault(
        &mut sc,
        &j,
        "backup",
        &out,
        took,
        LINK_BOUND,
        &["failed"],
        &[
            "10.213.",
            "reach",
            "connection",
            "timeout",
            "timed out",
            "link",
        ],
        &before,
    );
    recovers(&mut sc, &j, &before);
    sc.pass();
}

fn link_cut_during_verify() {
    let Some(j) = net_job("f-linkcut-verify", 96, "sshfs") else {
        return;
    };
    let mut sc = Scenario::new(
        SUITE,
        "fault",
        "link cut during verify (ssh checksum command)",
        "verify fails within the keepalive bound, error names the server; nothing lost; verify ok after the link is back",
    );
    let (before, _) = baseline(&j, 12, 0);
    let (mut run, t0) = spawn_timed(&j, &["verify"]);
    // Wait until the remote checksum command runs (the ssh child whose
    // remote command is the sha1sum script, not the master's handshake).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            run.is_running(),
            "verify ended before the link could be cut (premise broken)"
        );
        let hashing = |pid: u32| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("sha1sum"))
        };
        if descendants(run.pid())
            .iter()
            .any(|(pid, c)| c == "ssh" && hashing(*pid))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ssh child of verify within 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    j.net.link_down();
    let (out, took) = finish(run, t0, LINK_BOUND);
    j.net.link_up();
    reap_orphans(&j);
    if out.code == 0 {
        // The checksum command finished before the cut took effect.
        sc.note(format!(
            "verify finished before the cut ({:.1}s); premise not met",
            took.as_secs_f64()
        ));
        panic!("verify completed before the link cut (premise broken; make the tree larger)");
    }
    after_fault(
        &mut sc,
        &j,
        "verify",
        &out,
        took,
        LINK_BOUND,
        &["failed"],
        &["10.213.", "reach", "connection", "timeout", "timed out"],
        &before,
    );
    reap_orphans(&j);
    j.verify_ok(false);
    j.assert_clean();
    sc.note("verify ok after the link came back");
    sc.pass();
}

/// Both link-cut scenarios wait out the ~60 s keepalive bound: run them at
/// the same time (each with its own namespace) to keep the suite short.
#[test]
fn link_cut_during_rsync_and_during_verify() {
    let a = std::thread::spawn(link_cut_during_rsync);
    let b = std::thread::spawn(link_cut_during_verify);
    let (ra, rb) = (a.join(), b.join());
    assert!(
        ra.is_ok() && rb.is_ok(),
        "link cut: during rsync {}, during verify {}",
        if ra.is_ok() { "ok" } else { "FAILED" },
        if rb.is_ok() { "ok" } else { "FAILED" }
    );
}

// ---------------------------------------------------------------------------
// Server and FUSE daemons die
// ---------------------------------------------------------------------------

#[test]
fn sshd_killed_during_rsync() {
    let Some(mut j) = net_job("f-sshd-killed", 96, "rsync") else {
        return;
    };
    let mut sc = Scenario::new(
        SUITE,
        "fault",
        "sshd killed (-9, with its sessions) during rsync (rsync transport)",
        "backup fails quickly naming the connection; nothing lost; next run ok after sshd restarts",
    );
    let (before, n) = baseline(&j, 2, 16);
    let (mut run, t0) = spawn_timed(&j, &["backup"]);
    wait_mid_rsync(&j, &mut run, n + 2);
    j.net.kill_sshd();
    let bound = Duration::from_secs(60);
    let (out, took) = finish(run, t0, bound);
    after_fault(
        &mut sc,
        &j,
        "backup",
        &out,
        took,
        bound,
        &["failed"],
        &[
            "10.213.",
            "connection",
            "reach",
            "rsync",
            "closed",
            "unexpectedly",
        ],
        &before,
    );
    j.net.start_sshd();
    recovers(&mut sc, &j, &before);
    sc.pass();
}

#[test]
fn sshfs_killed_during_rsync() {
    let Some(j) = net_job("f-sshfs-killed", 96, "sshfs") else {
        return;
    };
    let mut sc = Scenario::new(
        SUITE,
        "fault",
        "sshfs killed (-9) during rsync",
        "backup fails naming the broken mount / rsync; the dead mount is cleaned; nothing lost; next run ok",
    );
    let (before, n) = baseline(&j, 2, 16);
    let (mut run, t0) = spawn_timed(&j, &["backup"]);
    wait_mid_rsync(&j, &mut run, n + 2);
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
    let bound = Duration::from_secs(60);
    let (out, took) = finish(run, t0, bound);
    after_fault(
        &mut sc,
        &j,
        "backup",
        &out,
        took,
        bound,
        &["failed"],
        &[
            "sshfs",
            "mount",
            "transport endpoint",
            "rsync",
            "not connected",
        ],
        &before,
    );
    recovers(&mut sc, &j, &before);
    sc.pass();
}

#[test]
fn helper_sigkilled_during_rsync_next_run_cleans_up() {
    let Some(j) = net_job("f-helper-kill9", 96, "sshfs") else {
        return;
    };
    let mut sc = Scenario::new(
        SUITE,
        "fault",
        "helper SIGKILLed during rsync; next run cleans up",
        "backup.incomplete left; the next run removes stale mounts under runtime_dir and rsync temp files in files/, completes; verify ok; nothing lost",
    );
    let (before, n) = baseline(&j, 2, 16);
    let (mut run, _t0) = spawn_timed(&j, &["backup"]);
    wait_mid_rsync(&j, &mut run, n + 2);
    // Let rsync have a temp file open.
    std::thread::sleep(Duration::from_millis(200));
    send_signal(run.pid(), "KILL");
    let _ = run.child.wait();
    // rsync (and the FUSE daemons) outlive the helper: stop the rsync it
    // started, as a supervisor killing the unit's cgroup would; leave the
    // mounts for the next run to find.
    for (pid, _, comm, cmd) in processes() {
        if comm == "rsync" && cmd.contains(j.runtime_dir.to_str().unwrap()) {
            send_signal(pid, "KILL");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        j.state_dir.join("backup.incomplete").exists(),
        "no state_dir/backup.incomplete after SIGKILL"
    );
    let stale = mounts_under(&j.runtime_dir).len();
    let dots: Vec<String> = walk(&j.files_dir())
        .into_iter()
        .filter(|(rel, _)| rel.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|(rel, _)| rel.display().to_string())
        .collect();
    sc.note(format!(
        "after SIGKILL: {stale} stale mount(s) under runtime_dir, {} dot temp file(s) in files/",
        dots.len()
    ));
    assert!(
        lock_free(&j),
        "lock held after the helper was killed (flock must die with it)"
    );
    let lost = losses(&before, &j.target_path);
    sc.lost = sc.lost.max(lost.len() as u64);
    assert!(
        lost.is_empty(),
        "SIGKILL damaged the old state:\n  {}",
        lost.join("\n  ")
    );
    recovers(&mut sc, &j, &before);
    assert!(
        !j.state_dir.join("backup.incomplete").exists(),
        "backup.incomplete still there after a good run"
    );
    let left: Vec<String> = walk(&j.files_dir())
        .into_iter()
        .filter(|(rel, _)| rel.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|(rel, _)| rel.display().to_string())
        .collect();
    assert!(left.is_empty(), "rsync temp files left in files/: {left:?}");
    // Temp files must not have been "deleted" into the snapshot either.
    let in_snap: Vec<String> = walk(&j.target_path.join("snapshots"))
        .into_iter()
        .filter(|(rel, _)| rel.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|(rel, _)| rel.display().to_string())
        .collect();
    assert!(
        in_snap.is_empty(),
        "rsync temp files moved into snapshots/: {in_snap:?}"
    );
    sc.pass();
}

// ---------------------------------------------------------------------------
// Disk full
// ---------------------------------------------------------------------------

#[test]
fn server_disk_full_during_backup() {
    let Some(j) = net_job("f-disk-full", 40, "sshfs") else {
        return;
    };
    let mut sc = Scenario::new(
        SUITE,
        "fault",
        "server disk fills up during a backup (40 MiB tmpfs)",
        "backup fails naming the full disk; no good remote file replaced by a truncated one; after freeing space the next run is ok, verify ok",
    );
    let (before, _) = baseline(&j, 6, 0);
    // A file that will be replaced by a bigger version during the failing run.
    write_random_file(&j.source.join("base/chunk 0000.bin"), 3 * MIB, 999);
    make_big_tree(&j.source, "wave", 40, MIB);
    let bound = Duration::from_secs(120);
    let (run, t0) = spawn_timed(&j, &["backup"]);
    let (out, took) = finish(run, t0, bound);
    after_fault(
        &mut sc,
        &j,
        "backup",
        &out,
        took,
        bound,
        &["failed"],
        &["space", "disk", "full", "quota"],
        &before,
    );
    // No truncated file under a real name.
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
    // The admin gives the server more space (replaced and deleted files
    // move into snapshots/, so deleting source files frees nothing there).
    let o = Command::new("mount")
        .args(["-o", "remount,size=160m"])
        .arg(&j.net.disk)
        .output()
        .unwrap();
    assert!(o.status.success(), "grow the tmpfs: {o:?}");
    recovers(&mut sc, &j, &before);
    sc.pass();
}

// ---------------------------------------------------------------------------
// Source changing while rsync reads it
// ---------------------------------------------------------------------------

#[test]
fn source_changes_during_rsync() {
    let Some(j) = net_job("f-src-changes", 128, "sshfs") else {
        return;
    };
    let mut sc = Scenario::new(
        SUITE,
        "fault",
        "source files change, grow and vanish while rsync reads them",
        "the run ends ok (rsync 24 = warning) or failed with a clear error; nothing lost; the next run picks the changes up; verify and verify --deep ok",
    );
    let (before, n) = baseline(&j, 2, 16);
    let (mut run, t0) = spawn_timed(&j, &["backup"]);
    wait_mid_rsync(&j, &mut run, n + 1);
    // Change, grow and delete wave files while the transfer is running.
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
    let bound = Duration::from_secs(120);
    let (out, took) = finish(run, t0, bound);
    support::assert_no_panic("backup", out.code, &out.stdout, &out.stderr);
    let st = j.stage("backup");
    sc.note(format!(
        "run under change: exit {}, outcome {}, error {}",
        out.code, st["outcome"], st["error"]
    ));
    assert!(took < bound);
    assert!(out.code == 0 || out.code == 1, "exit {}", out.code);
    if out.code == 1 {
        let msg = st["error"]["message"].as_str().unwrap_or("");
        assert!(!msg.is_empty() && !msg.contains('\n'));
    }
    assert_no_mounts_under(&j.runtime_dir);
    assert!(lock_free(&j));
    let lost = losses(&before, &j.target_path);
    sc.lost = sc.lost.max(lost.len() as u64);
    assert!(lost.is_empty(), "old state lost:\n  {}", lost.join("\n  "));
    recovers(&mut sc, &j, &before);
    reap_orphans(&j);
    j.verify_ok(true);
    sc.note("verify --deep ok: the remote matches the changed source");
    sc.pass();
}

// ---------------------------------------------------------------------------
// Refusals before anything is copied
// ---------------------------------------------------------------------------

/// Runs `backup` with a fault set up by `break_it`, checks the common
/// properties (no change at all on the remote), undoes it with `fix`, then
/// checks recovery. Records one scenario.
fn refusal(
    j: &NetJob,
    name: &str,
    cause: &[&str],
    break_it: impl FnOnce(&NetJob),
    fix: impl FnOnce(&NetJob),
) -> Option<String> {
    refusal_run_by(j, name, cause, &[], break_it, fix)
}

/// `refusal` with the backup started through `wrapper` (e.g. setpriv).
fn refusal_run_by(
    j: &NetJob,
    name: &str,
    cause: &[&str],
    wrapper: &[&str],
    break_it: impl FnOnce(&NetJob),
    fix: impl FnOnce(&NetJob),
) -> Option<String> {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let mut sc = Scenario::new(
        SUITE,
        "fault",
        name,
        "backup exits 1 with outcome failed and a one-line error naming the cause, nothing on the remote changes, lock free, no mount; fixed -> next run ok (verify ok at the end of the group)",
    );
    let before = remote_state(&j.target_path);
    break_it(j);
    reap_orphans(j);
    let bound = Duration::from_secs(60);
    let (run, t0) = match wrapper.split_first() {
        None => spawn_timed(j, &["backup"]),
        Some((tool, tool_args)) => {
            let inner = j.command(&["backup"]);
            let mut c = Command::new(tool);
            c.args(tool_args)
                .arg(inner.get_program())
                .args(inner.get_args());
            for (key, value) in inner.get_envs() {
                match value {
                    Some(v) => c.env(key, v),
                    None => c.env_remove(key),
                };
            }
            (Running::spawn(c), Instant::now())
        }
    };
    let (out, took) = finish(run, t0, bound);
    let checked = catch_unwind(AssertUnwindSafe(|| {
        after_fault(
            &mut sc,
            j,
            "backup",
            &out,
            took,
            bound,
            &["failed"],
            cause,
            &before,
        );
        assert_eq!(
            remote_state(&j.target_path),
            before,
            "{name}: the remote changed"
        );
    }));
    // Always undo the fault so that the next scenario starts from a good state.
    fix(j);
    let recovered = catch_unwind(AssertUnwindSafe(|| {
        recovers_with(&mut sc, j, &before, false)
    }));
    if checked.is_err() || recovered.is_err() {
        return Some(name.to_string()); // sc records the failure on drop
    }
    match catch_unwind(AssertUnwindSafe(move || sc.pass())) {
        Ok(()) => None,
        Err(_) => Some(name.to_string()),
    }
}

/// End of a refusal group: verify passes, nothing left behind; panics
/// listing the scenarios that failed.
fn refusal_group_end(j: &NetJob, failed: Vec<Option<String>>) {
    reap_orphans(j);
    j.verify_ok(false);
    j.assert_clean();
    let failed: Vec<String> = failed.into_iter().flatten().collect();
    assert!(
        failed.is_empty(),
        "{} refusal scenario(s) failed (see above): {failed:?}",
        failed.len()
    );
}

fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn refusals_source_and_password() {
    let Some(j) = net_job("f-refuse-src-pw", 64, "sshfs") else {
        return;
    };
    let _ = baseline(&j, 2, 0);
    let mut failed = Vec::new();
    let moved = j.root.join("src-away");
    failed.push(refusal(
        &j,
        "source is an empty directory (unmounted disk)",
        &["empty", "max-delete", "max_delete"],
        |j| {
            fs::rename(&j.source, &moved).unwrap();
            fs::create_dir(&j.source).unwrap();
            // the reverse config stays (as on a real unmounted disk it would not:
            // then the error is the missing config, also a refusal)
            fs::copy(
                moved.join(".gocryptfs.reverse.conf"),
                j.source.join(".gocryptfs.reverse.conf"),
            )
            .unwrap();
        },
        |j| {
            fs::remove_dir_all(&j.source).unwrap();
            fs::rename(&moved, &j.source).unwrap();
        },
    ));
    failed.push(refusal(
        &j,
        "source does not exist",
        // The error must be about the source, not e.g. its gocryptfs config.
        &[
            // The message is matched with the job's root replaced by <root>.
            "source <root>/src does not exist",
            "source <root>/src: no such",
        ],
        |j| fs::rename(&j.source, &moved).unwrap(),
        |j| fs::rename(&moved, &j.source).unwrap(),
    ));
    failed.push(refusal(
        &j,
        "source is not a directory",
        &["not a directory"],
        |j| {
            fs::rename(&j.source, &moved).unwrap();
            fs::write(&j.source, b"a file").unwrap();
        },
        |j| {
            fs::remove_file(&j.source).unwrap();
            fs::rename(&moved, &j.source).unwrap();
        },
    ));
    let pw = fs::read(&j.password_file).unwrap();
    failed.push(refusal(
        &j,
        "password file missing",
        &["password"],
        |j| fs::remove_file(&j.password_file).unwrap(),
        |j| write_mode(&j.password_file, &pw, 0o600),
    ));
    failed.push(refusal(
        &j,
        "password file empty",
        &["password", "empty"],
        |j| write_mode(&j.password_file, b"", 0o600),
        |j| write_mode(&j.password_file, &pw, 0o600),
    ));
    failed.push(refusal(
        &j,
        "password wrong",
        &["password", "wrong"],
        |j| write_mode(&j.password_file, b"not-the-password\n", 0o600),
        |j| write_mode(&j.password_file, &pw, 0o600),
    ));
    // Unreadable: root reads a mode-0000 file through CAP_DAC_OVERRIDE, so
    // the run drops it (and CAP_DAC_READ_SEARCH) from its bounding set, as a
    // unit without those capabilities would have: still uid 0, still able
    // to mount, but bound by file modes.
    failed.push(refusal_run_by(
        &j,
        "password file unreadable (mode 0000, no DAC override)",
        &["password file", "permission denied"],
        &[
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
        ],
        |j| set_mode(&j.password_file, 0o000),
        |j| set_mode(&j.password_file, 0o600),
    ));
    refusal_group_end(&j, failed);
}

#[test]
fn refusals_ssh_and_remote() {
    let Some(j) = net_job("f-refuse-ssh", 64, "sshfs") else {
        return;
    };
    let _ = baseline(&j, 2, 0);
    let mut failed = Vec::new();
    let key = j.net.client_key.clone();
    let key_away = j.root.join("key-away");
    failed.push(refusal(
        &j,
        "identity file missing",
        &["identity", key.to_str().unwrap()],
        |_| fs::rename(&key, &key_away).unwrap(),
        |_| fs::rename(&key_away, &key).unwrap(),
    ));
    failed.push(refusal(
        &j,
        "identity file with loose permissions (0644)",
        &["identity", "permission"],
        |_| set_mode(&key, 0o644),
        |_| set_mode(&key, 0o600),
    ));
    let kh = j.net.known_hosts.clone();
    let good_kh = fs::read(&kh).unwrap();
    failed.push(refusal(
        &j,
        "host key does not match known_hosts",
        &["host key", "known_hosts"],
        |j| {
            let other = j.root.join("other_host_key");
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&other)
                .status()
                .unwrap();
            let p = fs::read_to_string(other.with_extension("pub")).unwrap();
            let mut it = p.split_whitespace();
            fs::write(
                &kh,
                format!(
                    "{} {} {}\n",
                    j.net.server_ip,
                    it.next().unwrap(),
                    it.next().unwrap()
                ),
            )
            .unwrap();
        },
        |_| fs::write(&kh, &good_kh).unwrap(),
    ));
    failed.push(refusal(
        &j,
        "remote path does not exist",
        &["does not exist", "no such"],
        |j| {
            let mut c = j.config.clone();
            c["target"]["path"] = json!(format!("{}-missing", j.target_path.display()));
            fs::write(&j.config_file, serde_json::to_string_pretty(&c).unwrap()).unwrap();
        },
        |j| {
            fs::write(
                &j.config_file,
                serde_json::to_string_pretty(&j.config).unwrap(),
            )
            .unwrap()
        },
    ));
    failed.push(refusal(
        &j,
        "remote path not writable (server disk read-only)",
        &[
            "read-only",
            "permission",
            "not writable",
            "denied",
            "not permitted",
        ],
        |j| j.net.disk_readonly(true),
        |j| j.net.disk_readonly(false),
    ));
    refusal_group_end(&j, failed);
}

#[test]
fn whole_run_sigkilled_like_a_cgroup_kill_next_run_cleans_up() {
    let Some(j) = net_job("f-cgroup-kill9", 96, "sshfs") else {
        return;
    };
    let mut sc = Scenario::new(
        SUITE,
        "fault",
        "helper and every process of the run SIGKILLed during rsync (systemd stop/timeout kills the cgroup)",
        "dead FUSE mounts (ENOTCONN), a stale gocryptfs ctl.sock and rsync temp files are left; the next run cleans them and completes; verify ok; nothing lost",
    );
    let (before, n) = baseline(&j, 2, 16);
    let (mut run, _t0) = spawn_timed(&j, &["backup"]);
    wait_mid_rsync(&j, &mut run, n + 2);
    std::thread::sleep(Duration::from_millis(200));
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
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
    let _ = run.child.wait();
    std::thread::sleep(Duration::from_millis(300));
    let stale = mounts_under(&j.runtime_dir).len();
    let sock = j.runtime_dir.join("ctl.sock").exists();
    sc.note(format!(
        "killed {} processes; left: {stale} dead mount(s), ctl.sock present: {sock}",
        victims.len()
    ));
    assert!(lock_free(&j), "lock held after the whole run was killed");
    let lost = losses(&before, &j.target_path);
    sc.lost = sc.lost.max(lost.len() as u64);
    assert!(
        lost.is_empty(),
        "SIGKILL damaged the old state:\n  {}",
        lost.join("\n  ")
    );
    recovers(&mut sc, &j, &before);
    sc.pass();
}
