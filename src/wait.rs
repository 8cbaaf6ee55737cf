//! Waiting for the target before a backup (`backup --wait-for-target
//! MINUTES`, the modules' `waitForTarget`): a timer that fires right after
//! resume or boot often runs before the network or the disk is there. Instead
//! of failing at once, the helper probes the target with a growing pause
//! (1 s, 2 s, 4 s, ... at most 60 s) until it answers or the budget is spent.
//!
//! What is probed: for an sftp target a TCP connect to host:port (the ssh
//! handshake comes later, with its own checks); for a local target that its
//! path is a directory (the disk is mounted). Nothing is sent, and a probe
//! never takes the job's lock: the stage does that afterwards.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::{Job, Target};
use crate::error::{Error, Kind, Result};

/// The longest pause between two probes.
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// How long one TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until the job's target answers, for at most `budget`; the error
/// names the target and what the last probe found. A zero budget probes once.
pub fn wait_for_target(job: &Job, budget: Duration) -> Result<()> {
    let (what, probe): (String, Box<dyn Fn() -> std::result::Result<(), String>>) =
        match &job.target {
            Target::Sftp(s) => {
                let host = s
                    .host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let port = s.port;
                (
                    format!("{}:{}", s.host, s.port),
                    Box::new(move || connect(&host, port)),
                )
            }
            Target::Local { path } => {
                let path = path.clone();
                (path.display().to_string(), Box::new(move || is_dir(&path)))
            }
        };
    wait_until(&what, budget, probe)
        .map_err(|e| Error::new(e.kind, format!("job {}: {}", job.name, e.message)))
}

/// Probes until `probe` succeeds or `budget` is spent, pausing 1 s, 2 s, 4 s
/// ... (at most MAX_PAUSE, and never past the budget) in between.
pub fn wait_until(
    what: &str,
    budget: Duration,
    probe: impl Fn() -> std::result::Result<(), String>,
) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_secs(1);
    let mut tries = 0u32;
    loop {
        crate::interrupt::check()?;
        tries += 1;
        let why = match probe() {
            Ok(()) => {
                if tries > 1 {
                    crate::log::info(format!(
                        "target {what} answered after {tries} probes ({} s)",
                        start.elapsed().as_secs()
                    ));
                }
                return Ok(());
            }
            Err(why) => why,
        };
        let left = budget.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(Error::new(
                Kind::Remote,
                format!(
                    "target {what} did not answer within {} s ({tries} probes; last: {why})",
                    budget.as_secs()
                ),
            ));
        }
        crate::log::info(format!(
            "waiting for target {what} ({why}); next probe in {} s",
            pause.min(left).as_secs_f32()
        ));
        sleep_interruptible(pause.min(left))?;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Sleeps in small steps so that SIGINT/SIGTERM end the wait at once.
fn sleep_interruptible(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if left.is_zero() {
            break;
        }
        crate::interrupt::check()?;
        std::thread::sleep(left.min(Duration::from_millis(200)));
    }
    Ok(())
}

fn connect(host: &str, port: u16) -> std::result::Result<(), String> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut last = format!("{host} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

fn is_dir(path: &Path) -> std::result::Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err("not a directory".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A port nothing listens on (bound, then released).
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn a_port_that_listens_late_is_waited_for() {
        let port = free_port();
        // The listener appears after the first probe has failed: the probe
        // itself says when (no sleep decides the order).
        let (failed_tx, failed_rx) = std::sync::mpsc::channel::<()>();
        let listener = std::thread::spawn(move || {
            failed_rx.recv().unwrap();
            let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
            let _ = l.accept();
        });
        let tries = std::cell::Cell::new(0);
        let result = wait_until("late", Duration::from_secs(120), || {
            tries.set(tries.get() + 1);
            let r = connect("127.0.0.1", port);
            if r.is_err() && tries.get() == 1 {
                failed_tx.send(()).unwrap();
            }
            r
        });
        assert!(result.is_ok(), "{result:?}");
        assert!(
            tries.get() >= 2,
            "answered at the first probe: the test proves nothing"
        );
        listener.join().unwrap();
    }

    #[test]
    fn a_target_that_never_answers_is_named() {
        let port = free_port();
        let e = wait_until(&format!("127.0.0.1:{port}"), Duration::ZERO, || {
            connect("127.0.0.1", port)
        })
        .unwrap_err();
        assert_eq!(e.kind, Kind::Remote);
        assert!(
            e.message
                .starts_with(&format!("target 127.0.0.1:{port} did not answer within 0 s (1 probes; last: 127.0.0.1:{port}: ")),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_local_target_is_a_directory() {
        assert!(is_dir(Path::new("/")).is_ok());
        let e = is_dir(Path::new("/nonexistent-ciphersync-disk")).unwrap_err();
        assert!(e.contains("No such file"), "{e}");
    }
}
