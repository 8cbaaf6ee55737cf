//! The driver of the fault table in tests/e2e_faults.rs (included there with
//! `#[path = "faults/driver.rs"] mod driver;`).
//!
//! A [`Group`] is one job on its own namespaced server (tests/faults/netns.rs)
//! and the [`Row`]s run against it in turn. Every row is one scenario of the
//! reliability report: it injects its [`Fault`] into one run of its stage,
//! checks the run's [`Outcome`] (bounded time, outcome failed, a one-line
//! error naming the cause, no mount, no helper, the lock free, the previous
//! good state of files/ and snapshots/ intact by sha1), undoes the fault and
//! checks the [`Recovery`] (the next run completes, verify passes, nothing
//! lost). A failed row is recorded as failed and the group goes on with the
//! next row; the test fails at the end listing every failed row.

use crate::common::*;
use crate::netns::NetServer;
use crate::support::{self, Scenario};
use std::collections::BTreeMap;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub const SUITE: &str = "faults";
pub const MIB: usize = 1 << 20;

/// sha1 (or link target) of every file under files/ and snapshots/.
pub type RemoteState = BTreeMap<String, String>;

/// One job on a namespaced server, and the scenarios run against it.
pub struct Group {
    /// The #[test] that runs this group.
    pub test: &'static str,
    /// Temp dir and job name.
    pub tag: &'static str,
    /// Size of the server's tmpfs.
    pub disk_mb: u32,
    /// target.transport.
    pub transport: &'static str,
    /// Set up once before the rows (their scenarios start after it), or
    /// `None` when the (single) row makes its own baseline.
    pub baseline: Option<Baseline>,
    pub rows: &'static [Row],
    /// After the last row: verify passes and nothing is left behind.
    pub verify_at_end: bool,
}

/// Sample tree + `mb` MiB, init, two backups (so that snapshots/ holds
/// something to protect); then `new_mb` MiB of new data for the run under
/// test.
#[derive(Clone, Copy)]
pub struct Baseline {
    pub mb: usize,
    pub new_mb: usize,
}

/// One scenario.
pub struct Row {
    /// Scenario name in the report.
    pub name: &'static str,
    /// Expected behaviour, as the report shows it.
    pub expected: &'static str,
    /// The baseline this row makes inside its scenario (see [`Group::baseline`]).
    pub baseline: Option<Baseline>,
    /// The command run under the fault: "backup" or "verify".
    pub stage: &'static str,
    /// Program and arguments the run is started through (e.g. setpriv).
    pub run_by: &'static [&'static str],
    pub fault: Fault,
    pub outcome: Outcome,
    /// Scenario-specific checks after the faulty run (and its heal when
    /// that comes right after the run), before the fault is undone.
    pub check: Option<Check>,
    pub recovery: Recovery,
    /// Scenario-specific checks after the recovery.
    pub check_recovered: Option<Check>,
}

pub type Check = fn(&mut Scenario, &NetJob, &RemoteState);

/// What the row does to the world, and how it undoes it.
pub enum Fault {
    /// Set up before the run starts (`break_it`); undone by `fix` after the
    /// checks, before the recovery.
    Before {
        break_it: fn(&NetJob, &Saved),
        fix: fn(&NetJob, &Saved),
    },
    /// Injected while the run is at `at`. `heal`, if any, undoes it: right
    /// after the run when `heal_after_run`, else after the checks.
    During {
        at: At,
        inject: fn(&mut NetJob, &mut Running),
        heal: Option<fn(&mut NetJob)>,
        heal_after_run: bool,
    },
}

/// When a [`Fault::During`] is injected.
pub enum At {
    /// rsync is a descendant of the run and files/ holds more than
    /// `above` regular files beyond the baseline (new data is being sent).
    MidRsync { above: usize },
    /// The run's remote checksum command (an ssh child running sha1sum)
    /// has started.
    RemoteHashing,
}

/// What the faulty run must do.
pub enum Outcome {
    /// Ends within `bound` with exit 1 (2 accepted for configuration
    /// errors), outcome failed and a one-line error naming one of `cause`;
    /// no mount, no helper left, the lock free, nothing lost. A run that
    /// exits 0 under a [`Fault::During`] means the fault came too late.
    Fails {
        bound: Duration,
        cause: &'static [&'static str],
    },
    /// [`Outcome::Fails`] within 60 s, and nothing at all on the remote
    /// changed.
    Refused { cause: &'static [&'static str] },
    /// Ends within `bound`, ok (exit 0), partial (exit 4: source files
    /// vanished while rsync read them, named in `stats.unreadable`) or
    /// failed (exit 1) with a one-line error; no mount, the lock free,
    /// nothing lost.
    OkOrFails { bound: Duration },
    /// The run was killed by the fault (the row's `check` says what must
    /// hold).
    Killed,
}

/// What must work once the fault is undone.
#[derive(Clone, Copy, PartialEq)]
pub enum Recovery {
    /// The next backup is ok, nothing of the old state lost.
    Backup,
    /// ... and verify is ok, nothing left behind.
    BackupVerify,
    /// ... and verify --deep is ok too.
    BackupVerifyDeep,
    /// verify alone is ok, nothing left behind.
    Verify,
}

/// What a group keeps of the good set-up, for rows to put back.
pub struct Saved {
    pub password: Vec<u8>,
    pub known_hosts: Vec<u8>,
}

/// A job whose target is the namespaced server. Field order: the server is
/// torn down before the job's temp dir is removed.
pub struct NetJob {
    pub net: NetServer,
    pub job: Job,
}

impl std::ops::Deref for NetJob {
    type Target = Job;
    fn deref(&self) -> &Job {
        &self.job
    }
}

pub fn net_job(tag: &str, disk_mb: u32, transport: &str) -> Option<NetJob> {
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
        settle_ms: std::cell::Cell::new(SETTLE_NEVER_MS),
    };
    Some(NetJob { net, job })
}

/// sha1 (or link target) of every file under files/ and snapshots/.
pub fn remote_state(remote: &Path) -> RemoteState {
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
pub fn losses(before: &RemoteState, remote: &Path) -> Vec<String> {
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

/// Records the losses in the scenario and panics listing them.
pub fn assert_nothing_lost(sc: &mut Scenario, j: &NetJob, before: &RemoteState, when: &str) {
    let lost = losses(before, &j.target_path);
    sc.lost = sc.lost.max(lost.len() as u64);
    assert!(
        lost.is_empty(),
        "{when}: previous good state damaged:\n  {}",
        lost.join("\n  ")
    );
}

/// The lock is free: flock(1) can take it at once.
pub fn lock_free(job: &Job) -> bool {
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

pub fn regular_count(dir: &Path) -> usize {
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
            "no rsync transfer seen within 120 s (rsync running: {rsync}, files/ holds {} regular files, waiting for more than {above})",
            regular_count(&job.files_dir())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the remote checksum command runs (the ssh child whose
/// remote command is the sha1sum script, not the master's handshake).
fn wait_remote_hashing(run: &mut Running) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            run.is_running(),
            "the run ended before the fault could be injected (premise broken)"
        );
        let hashing = |pid: u32| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("sha1sum"))
        };
        if descendants(run.pid())
            .iter()
            .any(|(pid, c)| c == "ssh" && hashing(*pid))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no ssh child running sha1sum within 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Makes the baseline; returns (remote state before the run under test,
/// files/ count).
fn baseline(j: &NetJob, b: Baseline) -> (RemoteState, usize) {
    make_sample_tree(&j.source);
    make_big_tree(&j.source, "base", b.mb, MIB);
    j.init_and_backup();
    // A second run so that snapshots/ holds something to protect.
    fs::write(j.source.join("README.txt"), b"changed once\n").unwrap();
    // Snapshot ids have one-second resolution.
    std::thread::sleep(Duration::from_millis(1100));
    reap_orphans(j);
    j.backup_ok();
    if b.new_mb > 0 {
        // In 2 MiB files: fewer than 16 new files, so that rsync moves them
        // (a backup sends 16 or more new files over SFTP before rsync runs,
        // and "during rsync" would come too late).
        make_big_tree(&j.source, "wave", b.new_mb.div_ceil(2), 2 * MIB);
    }
    let before = remote_state(&j.target_path);
    assert!(
        before.keys().any(|k| k.starts_with("snapshots/")),
        "baseline has no snapshot files"
    );
    (before, regular_count(&j.files_dir()))
}

/// Common post-fault checks of [`Outcome::Fails`]; returns the stage's error
/// message.
#[allow(clippy::too_many_arguments)]
fn after_fault(
    sc: &mut Scenario,
    j: &NetJob,
    stage: &str,
    out: &Out,
    took: Duration,
    bound: Duration,
    cause: &[&str],
    before: &RemoteState,
) -> String {
    let outcomes = ["failed"];
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
        "{stage}: exit {} (wanted 1, or 2 for a configuration error)\n{}",
        out.code,
        out.dump()
    );
    let msg = st["error"]["message"].as_str().unwrap_or("").to_string();
    assert_one_line_error(stage, &msg, &st);
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
    assert_nothing_lost(sc, j, before, stage);
    sc.note(format!(
        "exit {} after {:.1}s, outcome {outcome}, error: {msg}",
        out.code,
        took.as_secs_f64()
    ));
    msg
}

/// status.json's error message of a failed stage: present, one line.
fn assert_one_line_error(stage: &str, msg: &str, st: &Value) {
    assert!(
        !msg.is_empty(),
        "{stage}: failed without an error message: {st}"
    );
    assert!(
        !msg.contains('\n'),
        "{stage}: error is not one line: {msg:?}"
    );
}

/// Diagnostic only, off by default: with CIPHERSYNC_FAULTS_REAP_ORPHANS=1,
/// before the runs of the baseline and of the recovery, kill a gocryptfs
/// daemon of this job that is no longer mounted and remove its ctl.sock
/// (the binary bug "orphaned gocryptfs keeps ctl.sock", see
/// docs/reliability.md), so that the other properties can still be observed.
pub fn reap_orphans(j: &Job) {
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

/// Waits up to 60 s until none of `pids` is alive (gone, or a zombie nobody
/// has reaped yet): a SIGKILL is delivered at once but the process dies, and
/// drops its locks and files, a little later. Returns those still alive
/// then; the checks that follow decide whether that matters.
pub fn wait_dead(pids: &[u32]) -> Vec<u32> {
    let alive = |p: &u32| {
        fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
            s.rfind(')')
                .and_then(|r| s[r + 1..].split_whitespace().next().map(|st| st != "Z"))
                .unwrap_or(false)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The checks of [`Recovery`].
fn recovers(sc: &mut Scenario, j: &NetJob, before: &RemoteState, r: Recovery) {
    if r == Recovery::Verify {
        reap_orphans(j);
        j.verify_ok(false);
        j.assert_clean();
        sc.note("verify ok after the link came back");
        return;
    }
    // Snapshot ids have one-second resolution.
    std::thread::sleep(Duration::from_millis(1100));
    reap_orphans(j);
    let (o, v) = j.run_json(&["backup"]);
    assert_eq!(o.code, 0, "recovery backup failed:\n{}", o.dump());
    assert_eq!(v["outcome"], "ok", "recovery backup --json: {v}");
    reap_orphans(j);
    let verify = r != Recovery::Backup;
    if verify {
        j.verify_ok(false);
    }
    assert_nothing_lost(sc, j, before, "after recovery");
    j.assert_clean();
    sc.note(if verify {
        "next backup ok, verify ok, no loss"
    } else {
        "next backup ok, no loss"
    });
    if r == Recovery::BackupVerifyDeep {
        reap_orphans(j);
        j.verify_ok(true);
        sc.note("verify --deep ok: the remote matches the changed source");
    }
}

/// Starts `stage` of the job, through `run_by` when given.
fn spawn_stage(j: &Job, stage: &str, run_by: &[&str]) -> (Running, Instant) {
    match run_by.split_first() {
        None => (j.spawn(&[stage]), Instant::now()),
        Some((tool, tool_args)) => {
            let inner = j.command(&[stage]);
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
    }
}

/// Bound of the faulty run (the runner kills it 30 s later).
fn bound_of(o: &Outcome) -> Duration {
    match o {
        Outcome::Fails { bound, .. } | Outcome::OkOrFails { bound } => *bound,
        Outcome::Refused { .. } => Duration::from_secs(60),
        // The run is killed; give it the longest bound of the table.
        Outcome::Killed => Duration::from_secs(120),
    }
}

/// Runs one row: returns whether it passed. Its scenario is recorded either
/// way (a failure by `Scenario`'s drop).
fn run_row(j: &mut NetJob, saved: &Saved, row: &Row) -> bool {
    let mut sc = Scenario::new(SUITE, "fault", row.name, row.expected);
    let failed = |sc: &mut Scenario| {
        sc.observed.push("TEST FAILED (see the test output)".into());
        false
    };
    // Set-up and the faulty run: a failure here leaves nothing to undo
    // but what the fault did.
    let mut before = RemoteState::new();
    // Whether the fault was put in place (then it must be undone).
    let mut applied = false;
    let mut healed = false;
    let ran = catch_unwind(AssertUnwindSafe(|| {
        let n = match row.baseline {
            Some(b) => {
                let (state, n) = baseline(j, b);
                before = state;
                n
            }
            None => {
                before = remote_state(&j.target_path);
                regular_count(&j.files_dir())
            }
        };
        if let Fault::Before { break_it, .. } = &row.fault {
            applied = true;
            break_it(j, saved);
            reap_orphans(j);
        }
        let bound = bound_of(&row.outcome);
        let (mut run, t0) = spawn_stage(j, row.stage, row.run_by);
        if let Fault::During {
            at,
            inject,
            heal,
            heal_after_run,
        } = &row.fault
        {
            match at {
                At::MidRsync { above } => wait_mid_rsync(j, &mut run, n + above),
                At::RemoteHashing => {
                    wait_remote_hashing(&mut run);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            applied = true;
            inject(j, &mut run);
            if matches!(row.outcome, Outcome::Killed) {
                return None;
            }
            let out = run.wait(bound + Duration::from_secs(30));
            let took = t0.elapsed();
            if let (Some(heal), true) = (heal, heal_after_run) {
                heal(j);
                healed = true;
            }
            reap_orphans(j);
            if out.code == 0 && matches!(row.outcome, Outcome::Fails { .. }) {
                sc.note(format!(
                    "{} finished before the fault took effect ({:.1}s); premise not met",
                    row.stage,
                    took.as_secs_f64()
                ));
                panic!(
                    "{} completed before the fault (premise broken; make the tree larger)",
                    row.stage
                );
            }
            return Some((out, took));
        }
        let out = run.wait(bound + Duration::from_secs(30));
        Some((out, t0.elapsed()))
    }));
    let checked = match ran {
        Err(_) => Err(()),
        Ok(out) => catch_unwind(AssertUnwindSafe(|| {
            check_outcome(&mut sc, j, row, out, &before);
            if let Some(check) = row.check {
                check(&mut sc, j, &before);
            }
        }))
        .map_err(|_| ()),
    };
    // Always undo the fault so that the next row starts from a good state.
    match &row.fault {
        Fault::Before { fix, .. } if applied => fix(j, saved),
        Fault::During {
            heal: Some(heal), ..
        } if applied && !healed => heal(j),
        _ => {}
    }
    if checked.is_err() {
        // The recovery is still tried: the next row needs a good state,
        // and the report shows whether the fault broke it.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            recovers(&mut sc, j, &before, row.recovery)
        }));
        return failed(&mut sc);
    }
    let recovered = catch_unwind(AssertUnwindSafe(|| {
        recovers(&mut sc, j, &before, row.recovery);
        if let Some(check) = row.check_recovered {
            check(&mut sc, j, &before);
        }
    }));
    if recovered.is_err() {
        return failed(&mut sc);
    }
    catch_unwind(AssertUnwindSafe(move || sc.pass())).is_ok()
}

/// The checks of the row's [`Outcome`] on the faulty run (`None`: killed).
fn check_outcome(
    sc: &mut Scenario,
    j: &NetJob,
    row: &Row,
    ran: Option<(Out, Duration)>,
    before: &RemoteState,
) {
    let stage = row.stage;
    let Some((out, took)) = ran else {
        return; // Outcome::Killed: the row's check says what must hold.
    };
    match &row.outcome {
        Outcome::Fails { bound, cause } => {
            after_fault(sc, j, stage, &out, took, *bound, cause, before);
        }
        Outcome::Refused { cause } => {
            after_fault(
                sc,
                j,
                stage,
                &out,
                took,
                Duration::from_secs(60),
                cause,
                before,
            );
            assert_eq!(
                &remote_state(&j.target_path),
                before,
                "{}: the remote changed",
                row.name
            );
        }
        Outcome::OkOrFails { bound } => {
            support::assert_no_panic(stage, out.code, &out.stdout, &out.stderr);
            let st = j.stage(stage);
            sc.note(format!(
                "run under change: exit {}, outcome {}, error {}",
                out.code, st["outcome"], st["error"]
            ));
            assert!(took < *bound, "{stage} took {took:?}, bound {bound:?}");
            assert!(
                matches!(out.code, 0 | 1 | 4),
                "{stage}: exit {} (wanted 0, 1 or 4)\n{}",
                out.code,
                out.dump()
            );
            if out.code == 1 {
                let msg = st["error"]["message"].as_str().unwrap_or("");
                assert_one_line_error(stage, msg, &st);
            }
            if out.code == 4 {
                assert_eq!(st["outcome"], "partial", "{stage}: exit 4\n{}", out.dump());
                let unreadable = st["stats"]["unreadable"].as_array().map_or(0, Vec::len);
                assert!(unreadable > 0, "{stage}: partial without names: {st}");
            }
            assert_no_mounts_under(&j.runtime_dir);
            assert!(
                lock_free(j),
                "{stage}: the lock is still held after the run ended"
            );
            assert_nothing_lost(sc, j, before, stage);
        }
        Outcome::Killed => unreachable!("a killed run has no output"),
    }
}

/// Runs a group: its job, baseline, rows and end checks; panics listing
/// the rows that failed.
pub fn run_group(g: &Group) {
    let Some(mut j) = net_job(g.tag, g.disk_mb, g.transport) else {
        return;
    };
    if let Some(b) = g.baseline {
        let _ = baseline(&j, b);
    }
    let saved = Saved {
        password: fs::read(&j.password_file).unwrap(),
        known_hosts: fs::read(&j.net.known_hosts).unwrap(),
    };
    let mut failed = Vec::new();
    for row in g.rows {
        if !run_row(&mut j, &saved, row) {
            failed.push(row.name);
        }
    }
    if g.verify_at_end {
        reap_orphans(&j);
        j.verify_ok(false);
        j.assert_clean();
    }
    assert!(
        failed.is_empty(),
        "{}: {} scenario(s) failed (see above): {failed:?}",
        g.tag,
        failed.len()
    );
}

/// Runs the groups of `test` in `table`, at the same time when there are
/// several (each has its own namespace); panics naming each group's result.
pub fn run_test(table: &'static [Group], test: &str) {
    let groups: Vec<&'static Group> = table.iter().filter(|g| g.test == test).collect();
    assert!(
        !groups.is_empty(),
        "no group of the fault table is run by {test}"
    );
    if let [g] = groups[..] {
        return run_group(g);
    }
    let handles: Vec<_> = groups
        .into_iter()
        .map(|g| (g.tag, std::thread::spawn(move || run_group(g))))
        .collect();
    let results: Vec<(&str, bool)> = handles
        .into_iter()
        .map(|(tag, h)| (tag, h.join().is_ok()))
        .collect();
    assert!(
        results.iter().all(|(_, ok)| *ok),
        "{test}: {}",
        results
            .iter()
            .map(|(tag, ok)| format!("{tag} {}", if *ok { "ok" } else { "FAILED" }))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
