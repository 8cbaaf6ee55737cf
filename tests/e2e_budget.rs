//! The connection budget (`target.max_connections`, src/budget.rs) against
//! a server that enforces one, as a storage box does: sshd with
//! `MaxSessions 3` (sessions on one connection) behind a TCP proxy that
//! lets one connection in at a time and closes any other at once (a cap on
//! connections per account). A session sshd refuses on the master makes
//! ssh open a connection of its own, which the proxy refuses: so a stage
//! that opens more than 3 sessions at once fails here.
//!
//! With the budget at 3, backup, verify and restore pass although
//! `target.connections` asks for 8; with the budget above what
//! `connections` asks for (not applied), the same job fails once its
//! files go through sshfs (no first pass over SFTP).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// sshd's sessions per connection, and the budget that fits them.
const MAX_SESSIONS: usize = 3;

/// A TCP proxy to `upstream` that admits at most `cap` connections at once
/// and closes any other as soon as it is accepted (counted in `refused`).
struct ConnCap {
    port: u16,
    active: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl ConnCap {
    fn start(upstream: u16, cap: usize) -> ConnCap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let cap_ = ConnCap {
            port,
            active: Arc::default(),
            refused: Arc::default(),
            peak: Arc::default(),
            stop: Arc::default(),
        };
        let (active, refused, peak, stop) = (
            cap_.active.clone(),
            cap_.refused.clone(),
            cap_.peak.clone(),
            cap_.stop.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                // Taken here, on the accepting thread: two connections
                // arriving together cannot both see a free place.
                if active.load(Ordering::SeqCst) >= cap {
                    refused.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let active = active.clone();
                std::thread::spawn(move || {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) {
                        relay(client, server);
                    }
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        cap_
    }

    /// Waits until the last stage's connections are gone (its master
    /// closes as the helper exits; the proxy sees that a moment later).
    fn wait_idle(&self) {
        wait_until(
            "the proxy's connections to close",
            Duration::from_secs(60),
            || self.active.load(Ordering::SeqCst) == 0,
        );
    }
}

impl Drop for ConnCap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies both ways until both sides have closed.
fn relay(client: TcpStream, server: TcpStream) {
    let pipe = |mut from: TcpStream, mut to: TcpStream| {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
        let _ = from.shutdown(Shutdown::Read);
    };
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up = std::thread::spawn(move || pipe(c2, s2));
    pipe(server, client);
    let _ = up.join();
}

/// A job on its own sshd with `MaxSessions 3`, reached through a proxy
/// that caps connections at one; `connections` 8, `max_connections` as
/// given. The source has enough directories for 8 rsync workers (and so
/// 8 sshfs connections) to be busy at once.
fn capped_job(tag: &str, max_connections: usize) -> (Job, ConnCap) {
    let job = Job::sftp(tag)
        .transport("sshfs")
        .sshd_config(&format!("MaxSessions {MAX_SESSIONS}\n"))
        .set("target.connections", json!(8))
        .set("target.max_connections", json!(max_connections))
        .build();
    make_sample_tree(&job.source);
    for d in 0..24 {
        for f in 0..6 {
            write_random_file(
                &job.source.join(format!("dir {d:02}/file {f}.bin")),
                48 * 1024 + d * 1000 + f,
                (d * 100 + f) as u64,
            );
        }
    }
    let sshd = job.sshd.as_ref().expect("an sftp job has its sshd");
    let proxy = ConnCap::start(sshd.port, 1);
    // The host key, also under the proxy's port (known_hosts names both).
    let known = std::fs::read_to_string(&sshd.known_hosts).unwrap();
    let key = known.split_once(' ').unwrap().1;
    std::fs::write(
        &sshd.known_hosts,
        format!("{known}[127.0.0.1]:{} {key}", proxy.port),
    )
    .unwrap();
    let mut config = job.config.clone();
    config["target"]["port"] = json!(proxy.port);
    std::fs::write(&job.config_file, config.to_string()).unwrap();
    (job, proxy)
}

#[test]
fn a_budget_of_three_fits_a_server_that_allows_three_sessions() {
    if !require_tools("budget_fits", SFTP_TOOLS) {
        return;
    }
    let (job, proxy) = capped_job("budget-fits", MAX_SESSIONS);
    job.ok(&["init"]);
    let (out, v) = job.run_json(&["backup"]);
    out.expect_code(0, "backup within the budget");
    assert_eq!(json_outcome(&v, "backup"), "ok", "{v}");
    assert_eq!(
        out.stderr
            .matches("target.connections = 8 does not fit in target.max_connections = 3")
            .count(),
        1,
        "one info line about the cut: {}",
        out.stderr
    );
    proxy.wait_idle();
    job.verify_ok(false);
    proxy.wait_idle();
    job.restore_and_compare("restored");
    proxy.wait_idle();
    assert_eq!(
        proxy.refused.load(Ordering::SeqCst),
        0,
        "a stage opened a second connection"
    );
    assert_eq!(proxy.peak.load(Ordering::SeqCst), 1);
    job.assert_clean();
}

#[test]
fn without_the_budget_the_same_job_fails_on_that_server() {
    if !require_tools("budget_not_applied", SFTP_TOOLS) {
        return;
    }
    // 9: sshfs may take all 8 connections asked for, one command beside.
    let (job, proxy) = capped_job("budget-off", 9);
    // A rate bound (far above this machine's) turns the first pass over
    // SFTP off (sync.rs): rsync's 8 workers write every file through
    // sshfs, as they would into an account without SFTP writes. With the
    // first pass, the steps over SFTP reuse one session and this small
    // job may get by on the connections sshfs opened first.
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&job.config_file).unwrap()).unwrap();
    config["target"]["bwlimit"] = json!(1_000_000);
    std::fs::write(&job.config_file, config.to_string()).unwrap();
    job.ok(&["init"]);
    let out = job.run(&["backup"]);
    assert_ne!(
        out.code, 0,
        "backup with 8 sshfs connections passed a server that allows {MAX_SESSIONS} sessions:\n{}",
        out.stderr
    );
    assert!(
        proxy.refused.load(Ordering::SeqCst) > 0,
        "the backup failed, but not for want of a connection:\n{}",
        out.stderr
    );
    proxy.wait_idle();
    job.assert_clean();
}

/// check-config refuses a budget too small for any stage (one sshfs
/// connection and one command beside it), in one line naming the field,
/// and takes the smallest one whatever `connections` asks for (the stages
/// cut it).
#[test]
fn check_config_refuses_a_budget_no_stage_fits_in() {
    let tmp = TempDir::new("budget-cfg");
    let m = tmp.path().join("missing");
    let job = |max_connections: u64| {
        json!({
            "version": 1,
            "name": "docs",
            "source": m.join("src"),
            "password_file": m.join("password"),
            "target": {
                "type": "sftp",
                "host": "box.example.org",
                "user": "u1",
                "path": "/backup",
                "known_hosts_file": m.join("known_hosts"),
                "connections": 16,
                "max_connections": max_connections,
            },
        })
    };
    let check = |name: &str, v: &Value| {
        let p = tmp.path().join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        run_bin(&["check-config", p.to_str().unwrap()])
    };
    let o = check("one.json", &job(1));
    o.expect_code(2, "check-config with target.max_connections = 1");
    assert_eq!(o.stderr.lines().count(), 1, "not one line:\n{}", o.dump());
    assert!(
        o.stderr
            .contains("field `target.max_connections`: expected a whole number 2–64")
            && o.stderr.contains("target.connections is cut to fit"),
        "{}",
        o.dump()
    );
    check("two.json", &job(2)).expect_code(0, "check-config with target.max_connections = 2");
}
