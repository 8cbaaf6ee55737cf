//! Progress (src/progress.rs) with the real tools: on a pseudo-terminal,
//! one line per phase redrawn with `\r` that ends on its full count and is
//! cleared; without a terminal (or with `--json`), plain lines no more
//! often than the interval and one summary per phase that logged one;
//! `-q`, nothing. No test waits for the interval: it is set per run
//! (`CIPHERSYNC_PROGRESS_INTERVAL_MS`).

mod common;

use common::*;
use std::fs;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The user's files of the test tree.
const FILES: u64 = 300;

/// 300 files of 1 to 4 KiB in 10 directories.
fn few_hundred_files(source: &std::path::Path) {
    for i in 0..FILES {
        let path = source.join(format!("dir{}/file{i:03}.bin", i % 10));
        write_random_file(&path, 1024 * (1 + (i as usize % 4)), 7_000 + i);
    }
}

/// An initialised job over sshfs (split workers, server-side checksums
/// and the read-back) whose source holds the test tree.
fn job_with_tree(tag: &str) -> Job {
    let job = Job::sftp(tag).build();
    few_hundred_files(&job.source);
    job.ok(&["init"]);
    job
}

/// Runs `cmd` with its stderr on a pseudo-terminal (raw, so that `\n`
/// stays `\n` and every `\r` is the helper's) and stdout on a pipe.
/// Returns the exit code, stdout and what reached the terminal.
fn run_on_pty(mut cmd: Command) -> (i32, String, String) {
    use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut attrs = tcgetattr(&pty.slave).expect("tcgetattr");
    cfmakeraw(&mut attrs);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &attrs).expect("tcsetattr");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(pty.slave));
    let mut child = cmd.spawn().expect("spawn ciphersync");
    // The Command holds our copy of the terminal's slave side: without it
    // the master reads EOF (EIO) once the child and its helpers are gone.
    drop(cmd);
    let mut master = fs::File::from(pty.master);
    let (sent, terminal) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = master.read(&mut buf) {
            all.extend_from_slice(&buf[..n]);
        }
        let _ = sent.send(all);
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    let status = child.wait().expect("wait for ciphersync");
    let terminal = terminal
        .recv_timeout(Duration::from_secs(60))
        .expect("the terminal's slave side stayed open after the run");
    let code = status.code().unwrap_or(-1);
    (
        code,
        stdout,
        String::from_utf8_lossy(&terminal).into_owned(),
    )
}

/// `A of B` of `... files, A of B, ...`.
fn bytes_of(line: &str) -> Option<(&str, &str)> {
    line.split(", ").nth(1)?.split_once(" of ")
}

/// `done/total` (or `done`) of `... N/M files, ...` (or `1 file`).
fn files_of(line: &str) -> Option<(u64, Option<u64>)> {
    let counts = line.split(" file").next()?.rsplit(' ').next()?;
    match counts.split_once('/') {
        Some((done, total)) => Some((done.parse().ok()?, Some(total.parse().ok()?))),
        None => Some((counts.parse().ok()?, None)),
    }
}

/// Whether `text` is `head` followed by a count (`restore: 3/9 files`,
/// not `restore: fetching: ...`).
fn counts_after(text: &str, head: &str) -> bool {
    text.strip_prefix(head)
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The progress lines drawn for `label` on a terminal, in order: each
/// draw is `\r<line>\x1b[K`.
fn drawn<'a>(terminal: &'a str, label: &str) -> Vec<&'a str> {
    let head = format!("{label}: ");
    terminal
        .split('\r')
        .filter(|s| counts_after(s, &head))
        .map(|s| s.split("\x1b[K").next().unwrap_or(s))
        .collect()
}

/// Checks the terminal output of one phase: drawn at least once, its last
/// draw at its full count (at least `least` files) and then cleared.
/// Returns the last draw.
fn ends_complete_and_cleared<'a>(terminal: &'a str, label: &str, least: u64) -> &'a str {
    let lines = drawn(terminal, label);
    let last = *lines
        .last()
        .unwrap_or_else(|| panic!("no progress line for {label:?} on the terminal:\n{terminal:?}"));
    let (done, total) = files_of(last).unwrap_or_else(|| panic!("no count in {last:?}"));
    assert_eq!(
        Some(done),
        total,
        "{label}: the last draw is complete: {last:?}"
    );
    assert!(done >= least, "{label}: {done} < {least} files: {last:?}");
    for line in &lines {
        assert!(line.len() <= 79, "wider than a terminal: {line:?}");
        let (done, total) = files_of(line).unwrap_or_else(|| panic!("no count in {line:?}"));
        assert!(total.is_none_or(|t| done <= t), "{line:?}");
    }
    // The segment after the last draw is the clear: `\r\x1b[K`.
    let segments: Vec<&str> = terminal.split('\r').collect();
    let at = segments
        .iter()
        .rposition(|s| counts_after(s, &format!("{label}: ")))
        .expect("drawn");
    assert!(
        segments
            .get(at + 1)
            .is_some_and(|s| s.starts_with("\x1b[K")),
        "{label}: the line is not cleared after its last draw: {:?}",
        &segments[at..]
    );
    last
}

#[test]
fn a_terminal_shows_one_redrawn_line_per_phase() {
    if !require_tools("progress_terminal", SFTP_TOOLS) {
        return;
    }
    let job = job_with_tree("progress-tty");
    let (code, stdout, terminal) = run_on_pty(job.command(&["backup"]));
    assert_eq!(code, 0, "backup: {stdout}\n{terminal}");
    // rsync's count: the files and the directories of the view.
    ends_complete_and_cleared(&terminal, "backup", FILES);
    assert!(!stdout.contains("files, "), "progress on stdout: {stdout}");

    // The sha1 cache of a first verify is the next one's total.
    job.trust_stamps(true);
    let (code, _, terminal) = run_on_pty(job.command(&["verify"]));
    assert_eq!(code, 0, "{terminal}");
    let first = drawn(&terminal, "verify: hashing");
    let last = first.last().expect("a line while hashing");
    assert_eq!(files_of(last), Some((FILES, None)), "no total yet: {last}");
    // A changed file (same size) makes the next verify hash again.
    write_random_file(&job.source.join("dir0/file000.bin"), 1024, 1);
    job.ok(&["backup"]);
    let (code, stdout, terminal) = run_on_pty(job.command(&["verify"]));
    assert_eq!(code, 0, "verify: {stdout}\n{terminal}");
    let last = ends_complete_and_cleared(&terminal, "verify: hashing", FILES);
    assert_eq!(files_of(last), Some((FILES, Some(FILES))), "{last}");
    assert!(last.contains(" of "), "bytes of a total: {last}");
    let read = last_count_drawn(&terminal, "verify: read-back");
    assert!(
        read.contains(" of "),
        "the read-back's bytes of its budget: {read}"
    );

    let (code, _, terminal) = run_on_pty(job.command(&["verify", "--deep"]));
    assert_eq!(code, 0, "{terminal}");
    let last = ends_complete_and_cleared(&terminal, "deep verify", FILES);
    assert_eq!(files_of(last), Some((FILES, Some(FILES))), "{last}");

    let to = job.root.join("restored");
    let to_arg = to.to_str().unwrap();
    let (code, _, terminal) = run_on_pty(job.command(&["restore", "--to", to_arg]));
    assert_eq!(code, 0, "{terminal}");
    // The account runs rsync: the ciphertext is fetched first, its bytes
    // counted against the record's, then decrypted into --to.
    let fetched = ends_complete_and_cleared(&terminal, "restore: fetching", FILES);
    let (done, of) = bytes_of(fetched).unwrap_or_else(|| panic!("no bytes total: {fetched}"));
    assert_eq!(done, of, "all of the record's ciphertext: {fetched}");
    ends_complete_and_cleared(&terminal, "restore", FILES);
    assert_trees_equal(&job.source, &to);

    // -q: nothing drawn, nothing redrawn.
    write_random_file(&job.source.join("dir1/file001.bin"), 2048, 2);
    let quiet_to = job.root.join("restored-quietly");
    let quiet_to = quiet_to.to_str().unwrap();
    for args in [
        &["-q", "backup"][..],
        &["-q", "verify"],
        &["--quiet", "verify", "--deep"],
        &["-q", "restore", "--to", quiet_to],
    ] {
        let (code, stdout, terminal) = run_on_pty(job.command(args));
        assert_eq!(code, 0, "{args:?}: {stdout}\n{terminal}");
        assert!(
            !terminal.contains('\r') && !terminal.contains(" files, "),
            "{args:?} printed progress: {terminal:?}"
        );
    }
}

/// The read-back's last draw: it has no file total (how many files the
/// budget holds is known when they are read), so only its count.
fn last_count_drawn<'a>(terminal: &'a str, label: &str) -> &'a str {
    let lines = drawn(terminal, label);
    let last = lines
        .last()
        .unwrap_or_else(|| panic!("no {label:?} line: {terminal:?}"));
    let (done, _) = files_of(last).expect("a count");
    assert!(done >= 1, "{last}");
    last
}

/// `ciphersync ARGS` of `job` without a terminal, with the log interval
/// `interval_ms`; returns its output and how long it ran.
fn run_logged(job: &Job, args: &[&str], interval_ms: u64) -> (Out, Duration) {
    let mut cmd = job.command(args);
    cmd.env("CIPHERSYNC_PROGRESS_INTERVAL_MS", interval_ms.to_string());
    let started = Instant::now();
    let out = run_cmd(cmd);
    (out, started.elapsed())
}

/// The progress lines and the summaries `ciphersync: <label>...` in stderr.
fn logged(stderr: &str, label: &str) -> (Vec<String>, Vec<String>) {
    let progress = format!("ciphersync: {label}: ");
    let summary = format!("ciphersync: {label} done: ");
    let of = |head: &str| {
        stderr
            .lines()
            .filter(|l| counts_after(l, head))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    (of(&progress), of(&summary))
}

#[test]
fn without_a_terminal_lines_are_plain_few_and_summed_up_once() {
    if !require_tools("progress_log", SFTP_TOOLS) {
        return;
    }
    let job = job_with_tree("progress-log");
    job.trust_stamps(true);
    let to = job.root.join("restored");
    let to_arg = to.to_str().unwrap().to_string();
    let stages: [(&[&str], &[&str]); 4] = [
        (&["backup"], &["backup"]),
        (&["verify"], &["verify: hashing", "verify: read-back"]),
        (&["verify", "--deep"], &["deep verify"]),
        (
            &["restore", "--to", &to_arg],
            &["restore: fetching", "restore"],
        ),
    ];

    // Interval 0: a line at every count, then exactly one summary.
    for (args, labels) in stages {
        let (out, _) = run_logged(&job, args, 0);
        out.expect_code(0, &args.join(" "));
        assert!(!out.stderr.contains('\r'), "{args:?}: {:?}", out.stderr);
        for label in labels {
            let (lines, summaries) = logged(&out.stderr, label);
            assert!(!lines.is_empty(), "{label}: no line:\n{}", out.stderr);
            assert_eq!(summaries.len(), 1, "{label}: one summary:\n{}", out.stderr);
            let (done, _) = files_of(&summaries[0]).expect("a count");
            let least = match *label {
                "verify: read-back" => 1,
                _ => FILES,
            };
            assert!(done >= least, "{}", summaries[0]);
        }
    }
    assert_trees_equal(&job.source, &to);

    // A run shorter than the interval logs nothing at all; so does -q.
    let change = |seed| write_random_file(&job.source.join("dir2/file002.bin"), 3072, seed);
    change(3);
    for (args, interval) in [
        (&["backup"][..], 600_000),
        (&["verify"], 600_000),
        (&["-q", "backup"], 0),
        (&["-q", "verify", "--deep"], 0),
    ] {
        if args.contains(&"backup") {
            change(interval + 4);
        }
        let (out, _) = run_logged(&job, args, interval);
        out.expect_code(0, &args.join(" "));
        assert!(
            !out.stderr.contains(" files, ") && !out.stderr.contains(" done: "),
            "{args:?} with interval {interval} ms logged progress:\n{}",
            out.stderr
        );
    }

    // With an interval, no more lines than the run's time allows (one per
    // interval and phase at most), and --json keeps stdout one object.
    change(5);
    let interval_ms = 200;
    for args in [&["backup", "--json"][..], &["verify", "--deep", "--json"]] {
        let (out, took) = run_logged(&job, args, interval_ms);
        out.expect_code(0, &args.join(" "));
        parse_json(&out);
        assert!(!out.stderr.contains('\r'), "{:?}", out.stderr);
        let label = match args[0] {
            "backup" => "backup",
            _ => "deep verify",
        };
        let (lines, summaries) = logged(&out.stderr, label);
        let bound = took.as_millis() as usize / interval_ms as usize + 1;
        assert!(
            lines.len() <= bound,
            "{} lines in {took:?} at most every {interval_ms} ms:\n{}",
            lines.len(),
            out.stderr
        );
        assert_eq!(
            summaries.len(),
            usize::from(!lines.is_empty()),
            "{}",
            out.stderr
        );
    }
}

/// Over rsync's own transport (ssh to `rsync --server`) the records come
/// from the local rsync as well, and leave its statistics as they were.
#[test]
fn rsync_over_ssh_counts_too_and_its_statistics_stay_right() {
    if !require_tools("progress_rsync", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("progress-rsync").transport("rsync").build();
    few_hundred_files(&job.source);
    job.ok(&["init"]);
    let (out, _) = run_logged(&job, &["backup"], 0);
    out.expect_code(0, "backup");
    let (lines, summaries) = logged(&out.stderr, "backup");
    assert!(!lines.is_empty() && summaries.len() == 1, "{}", out.stderr);
    let (done, _) = files_of(&summaries[0]).expect("a count");
    assert!(done >= FILES, "{}", summaries[0]);
    assert!(
        out.stdout
            .contains(&format!("{FILES} files in the backup; {FILES} files sent")),
        "{}",
        out.dump()
    );
}
