//! Progress of the long phases of a stage: files and bytes done, of the
//! total where it is known, the rate and an estimate of the time left.
//!
//! - On a terminal (stderr is a tty, no `--json`): one line on stderr,
//!   redrawn in place (`\r`) at most `REDRAW` apart, cleared when the
//!   phase ends so that the stage's result starts on a clean line.
//! - Elsewhere (systemd, `--json`, a pipe): a plain line once the phase has
//!   run `CIPHERSYNC_PROGRESS_INTERVAL_MS` (default 30 s), again at most
//!   that often, and one summary at the end of a phase that logged a line.
//!   A phase shorter than the interval logs nothing: the journal gets the
//!   stage's result, not a line per phase.
//! - `-q`: nothing, and the tools run as they would without progress.
//!
//! No name is printed, only counts: names may come from the server.
//!
//! One `Progress` per command (its mode); each phase of a stage opens a
//! `Phase`, which the hooks count into (`add`, or a `Part` per concurrent
//! rsync that reports its own running totals, see progress/rsync.rs).

pub mod rsync;

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::human::{bytes_short, count};

/// The terminal line is redrawn at most this often.
const REDRAW: Duration = Duration::from_millis(100);
/// A log line at most this often, unless `CIPHERSYNC_PROGRESS_INTERVAL_MS`
/// says otherwise.
const LOG_EVERY: Duration = Duration::from_secs(30);
/// The widest line drawn: a line wider than the terminal wraps, and `\r`
/// then returns only to the start of its last row.
const MAX_WIDTH: usize = 79;

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Terminal,
    Log { every: Duration },
}

impl Mode {
    /// `-q` silences progress; `--json` or a stderr that is no terminal
    /// gets plain lines.
    pub fn for_run(quiet: bool, json: bool) -> Mode {
        if quiet {
            Mode::Off
        } else if !json && std::io::stderr().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Log {
                every: log_interval(),
            }
        }
    }
}

/// `CIPHERSYNC_PROGRESS_INTERVAL_MS` (tests set it so that they need not
/// wait 30 s for a line), else `LOG_EVERY`.
fn log_interval() -> Duration {
    std::env::var("CIPHERSYNC_PROGRESS_INTERVAL_MS")
        .ok()
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map_or(LOG_EVERY, Duration::from_millis)
}

/// The progress settings of one command.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    mode: Mode,
}

impl Progress {
    pub fn new(mode: Mode) -> Progress {
        Progress { mode }
    }

    /// Whether anything is shown: hooks that change how a tool runs
    /// (rsync's `--info=progress2`) do so only then.
    pub fn shows(&self) -> bool {
        self.mode != Mode::Off
    }

    /// Starts a phase named `label` (`backup`, `verify: local checksums`).
    pub fn phase(&self, label: &'static str, total: Totals) -> Phase {
        Phase {
            mode: self.mode,
            label,
            started: Instant::now(),
            state: Mutex::new(State {
                total,
                ..State::default()
            }),
        }
    }
}

/// What a phase will have done when it ends, where known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub files: Option<u64>,
    pub bytes: Option<u64>,
}

/// One of several concurrent counters of a phase (one rsync each), with
/// its own running total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Part {
    pub files: u64,
    pub files_total: u64,
    pub bytes: u64,
    /// The total may still grow (rsync still lists the tree).
    pub provisional: bool,
}

/// A part's index in its phase.
#[derive(Debug, Clone, Copy)]
pub struct PartId(usize);

/// A phase's figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    pub files: u64,
    pub bytes: u64,
    pub total: Totals,
    /// The total may still grow: no estimate of the time left.
    pub provisional: bool,
    pub elapsed: Duration,
}

#[derive(Default)]
struct State {
    files: u64,
    bytes: u64,
    total: Totals,
    parts: Vec<Part>,
    last_shown: Option<Instant>,
    /// A log line was printed: the phase ends with a summary.
    logged: bool,
    finished: bool,
}

impl State {
    fn figures(&self, elapsed: Duration) -> Figures {
        let of_parts = |f: fn(&Part) -> u64| self.parts.iter().map(f).fold(0, u64::saturating_add);
        let files_total = match (self.total.files, self.parts.is_empty()) {
            (Some(total), _) => Some(total),
            (None, false) => Some(of_parts(|p| p.files_total)),
            (None, true) => None,
        };
        Figures {
            files: self.files.saturating_add(of_parts(|p| p.files)),
            bytes: self.bytes.saturating_add(of_parts(|p| p.bytes)),
            total: Totals {
                files: files_total,
                bytes: self.total.bytes,
            },
            provisional: self.parts.iter().any(|p| p.provisional),
            elapsed,
        }
    }
}

/// A phase being counted; shared by the threads that do its work.
pub struct Phase {
    mode: Mode,
    label: &'static str,
    started: Instant,
    state: Mutex<State>,
}

impl Phase {
    /// A phase that shows nothing (for code run without a command line).
    pub fn hidden() -> Phase {
        Progress::new(Mode::Off).phase("", Totals::default())
    }

    pub fn shows(&self) -> bool {
        self.mode != Mode::Off
    }

    /// `files` more files and `bytes` more bytes done.
    pub fn add(&self, files: u64, bytes: u64) {
        self.update(|s| {
            s.files = s.files.saturating_add(files);
            s.bytes = s.bytes.saturating_add(bytes);
        });
    }

    /// The totals, once the work knows them (restore's decrypting copy,
    /// after it has listed the stage).
    pub fn set_total(&self, total: Totals) {
        self.update(|s| s.total = total);
    }

    /// A new concurrent counter (see `Part`).
    pub fn part(&self) -> PartId {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.parts.push(Part::default());
        PartId(state.parts.len() - 1)
    }

    /// The part's running figures, as its tool reported them.
    pub fn set_part(&self, id: PartId, part: Part) {
        self.update(|s| s.parts[id.0] = part);
    }

    /// The part's work is over: all of its files are done.
    pub fn end_part(&self, id: PartId) {
        self.update(|s| {
            let part = &mut s.parts[id.0];
            part.files_total = part.files_total.max(part.files);
            part.files = part.files_total;
            part.provisional = false;
        });
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut state);
        if self.mode == Mode::Off || state.finished {
            return;
        }
        let now = Instant::now();
        let since_shown = state.last_shown.map(|t| now.duration_since(t));
        let due = match self.mode {
            Mode::Off => false,
            Mode::Terminal => since_shown.is_none_or(|d| d >= REDRAW),
            Mode::Log { every } => {
                now.duration_since(self.started) >= every && since_shown.is_none_or(|d| d >= every)
            }
        };
        if !due {
            return;
        }
        state.last_shown = Some(now);
        let figures = state.figures(now - self.started);
        match self.mode {
            Mode::Terminal => draw(self.label, &figures),
            _ => {
                state.logged = true;
                eprintln!("ciphersync: {}", progress_line(self.label, &figures, true));
            }
        }
    }

    /// Ends the phase: on a terminal the final figures are drawn and the
    /// line cleared; in a log, the summary follows the lines it logged.
    pub fn finish(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.finished {
            return;
        }
        state.finished = true;
        let figures = state.figures(self.started.elapsed());
        match self.mode {
            Mode::Off => {}
            // Drawn once more so that a recording of the terminal (script,
            // a test) ends on the full count, then cleared.
            Mode::Terminal => {
                draw(self.label, &figures);
                clear_terminal_line();
            }
            Mode::Log { .. } if state.logged => {
                eprintln!("ciphersync: {}", summary_line(self.label, &figures));
            }
            Mode::Log { .. } => {}
        }
    }
}

impl Drop for Phase {
    /// A phase that ends on an error leaves a clean terminal line for the
    /// error, and no summary.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if !state.finished && self.mode == Mode::Terminal {
            clear_terminal_line();
        }
    }
}

/// Whether a progress line stands on the terminal now. Process-wide, like
/// the terminal: a log line clears it first (see `clear_terminal_line`).
static LINE_SHOWN: AtomicBool = AtomicBool::new(false);

/// Draws the line over the last one; where it is too wide, without the
/// rate (the time left says more), and cut.
fn draw(label: &str, figures: &Figures) {
    let mut line = progress_line(label, figures, true);
    if line.len() > MAX_WIDTH {
        line = progress_line(label, figures, false);
    }
    let width = line.len().min(MAX_WIDTH);
    let mut err = std::io::stderr().lock();
    // The line is ASCII (labels, digits, units): cut at any byte.
    let _ = write!(err, "\r{}\x1b[K", &line[..width]);
    let _ = err.flush();
    LINE_SHOWN.store(true, Ordering::Relaxed);
}

/// Clears a progress line from the terminal, if one is shown, so that a
/// log line does not run on after it; the next redraw shows it again.
pub fn clear_terminal_line() {
    if LINE_SHOWN.swap(false, Ordering::Relaxed) {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K");
        let _ = err.flush();
    }
}

/// `backup: 120/300 files, 1.5 MiB, 2.0 MiB/s, 2s left`
pub fn progress_line(label: &str, f: &Figures, with_rate: bool) -> String {
    let files = match f.total.files {
        Some(total) => format!("{}/{} files", f.files, total.max(f.files)),
        None => count(f.files, "file", "files"),
    };
    let bytes = match f.total.bytes {
        Some(total) => format!(
            "{} of {}",
            bytes_short(f.bytes),
            bytes_short(total.max(f.bytes))
        ),
        None => bytes_short(f.bytes),
    };
    let mut line = format!("{label}: {files}, {bytes}");
    if with_rate {
        line.push_str(&format!(", {}", rate(f)));
    }
    if let Some(left) = time_left(f) {
        line.push_str(&format!(", {} left", duration(left)));
    }
    line
}

/// `backup done: 300 files, 1.5 MiB in 3s (512.0 KiB/s)`
pub fn summary_line(label: &str, f: &Figures) -> String {
    format!(
        "{label} done: {}, {} in {} ({})",
        count(f.files, "file", "files"),
        bytes_short(f.bytes),
        duration(f.elapsed),
        rate(f)
    )
}

/// The mean rate since the phase started.
fn rate(f: &Figures) -> String {
    let secs = f.elapsed.as_secs_f64();
    let per_second = match secs > 0.0 {
        true => (f.bytes as f64 / secs) as u64,
        false => 0,
    };
    format!("{}/s", bytes_short(per_second))
}

/// The time left at the mean pace so far: by bytes where their total is
/// known, else by files; none while a total may still grow or nothing is
/// done yet.
pub fn time_left(f: &Figures) -> Option<Duration> {
    if f.provisional {
        return None;
    }
    let (done, total) = match (f.total.bytes, f.total.files) {
        (Some(total), _) if total > 0 => (f.bytes, total),
        (_, Some(total)) if total > 0 => (f.files, total),
        _ => return None,
    };
    if done == 0 {
        return None;
    }
    let left = total.saturating_sub(done) as f64 / done as f64;
    Some(Duration::from_secs_f64(
        (f.elapsed.as_secs_f64() * left).min(1e9),
    ))
}

/// `0s`, `42s`, `3m20s`, `2h05m`, `3d04h`: precise enough to plan by.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(files: u64, bytes: u64, total: Totals, secs: u64) -> Figures {
        Figures {
            files,
            bytes,
            total,
            provisional: false,
            elapsed: Duration::from_secs(secs),
        }
    }

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn lines_say_counts_totals_rate_and_time_left() {
        let both = Totals {
            files: Some(300),
            bytes: Some(40 * MIB),
        };
        let files_only = Totals {
            files: Some(300),
            bytes: None,
        };
        let big = Totals {
            files: Some(2_000_000),
            bytes: Some(1_300_000 * MIB),
        };
        let lines = [
            progress_line("verify: hashing", &figures(75, 10 * MIB, both, 5), true),
            progress_line("backup", &figures(100, 3 * MIB, files_only, 10), true),
            progress_line(
                "verify: read-back",
                &figures(1, 1000, Totals::default(), 0),
                true,
            ),
            progress_line("restore", &figures(0, 0, files_only, 4), true),
            // An estimated total that turned out short.
            progress_line("verify: hashing", &figures(310, 41 * MIB, both, 41), true),
            // Too wide for a terminal with the rate.
            progress_line(
                "verify: hashing",
                &figures(1_234_567, 700_000 * MIB, big, 7000),
                true,
            ),
            progress_line(
                "verify: hashing",
                &figures(1_234_567, 700_000 * MIB, big, 7000),
                false,
            ),
            summary_line("deep verify", &figures(300, 40 * MIB, both, 200)),
            summary_line("verify: read-back", &figures(1, 4096, Totals::default(), 0)),
        ];
        insta::assert_snapshot!(lines.join("\n"), @r"
        verify: hashing: 75/300 files, 10.0 MiB of 40.0 MiB, 2.0 MiB/s, 15s left
        backup: 100/300 files, 3.0 MiB, 307.2 KiB/s, 20s left
        verify: read-back: 1 file, 1000 B, 0 B/s
        restore: 0/300 files, 0 B, 0 B/s
        verify: hashing: 310/310 files, 41.0 MiB of 41.0 MiB, 1.0 MiB/s, 0s left
        verify: hashing: 1234567/2000000 files, 683.6 GiB of 1.2 TiB, 100.0 MiB/s, 1h40m left
        verify: hashing: 1234567/2000000 files, 683.6 GiB of 1.2 TiB, 1h40m left
        deep verify done: 300 files, 40.0 MiB in 3m20s (204.8 KiB/s)
        verify: read-back done: 1 file, 4.0 KiB in 0s (0 B/s)
        ");
    }

    #[test]
    fn durations_read_at_a_glance() {
        let cases = [0, 59, 60, 200, 3599, 3600, 7500, 86399, 86400, 277_200];
        let shown: Vec<String> = cases
            .iter()
            .map(|&s| duration(Duration::from_secs(s)))
            .collect();
        assert_eq!(
            shown,
            [
                "0s", "59s", "1m00s", "3m20s", "59m59s", "1h00m", "2h05m", "23h59m", "1d00h",
                "3d05h"
            ]
        );
    }

    #[test]
    fn no_time_left_without_a_settled_total_or_a_start() {
        let files = Totals {
            files: Some(10),
            bytes: None,
        };
        assert_eq!(
            time_left(&figures(5, 0, files, 10)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(time_left(&figures(0, 0, files, 10)), None);
        assert_eq!(time_left(&figures(5, 0, Totals::default(), 10)), None);
        let growing = Figures {
            provisional: true,
            ..figures(5, 0, files, 10)
        };
        assert_eq!(time_left(&growing), None);
        // Bytes decide where their total is known.
        let both = Totals {
            files: Some(10),
            bytes: Some(100),
        };
        assert_eq!(
            time_left(&figures(9, 25, both, 10)),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn parts_add_up_and_an_ended_part_is_complete() {
        let phase = Phase::hidden();
        let a = phase.part();
        let b = phase.part();
        phase.set_part(
            a,
            Part {
                files: 3,
                files_total: 10,
                bytes: 100,
                provisional: true,
            },
        );
        phase.set_part(
            b,
            Part {
                files: 1,
                files_total: 5,
                bytes: 50,
                provisional: false,
            },
        );
        phase.add(2, 7);
        let state = phase.state.lock().unwrap();
        let f = state.figures(Duration::ZERO);
        assert_eq!((f.files, f.bytes, f.total.files), (6, 157, Some(15)));
        assert!(f.provisional);
        drop(state);
        phase.end_part(a);
        let f = phase.state.lock().unwrap().figures(Duration::ZERO);
        assert_eq!(
            (f.files, f.total.files, f.provisional),
            (13, Some(15), false)
        );
    }

    #[test]
    fn quiet_and_log_modes_follow_the_flags() {
        assert_eq!(Mode::for_run(true, false), Mode::Off);
        assert_eq!(Mode::for_run(true, true), Mode::Off);
        assert!(matches!(Mode::for_run(false, true), Mode::Log { .. }));
    }
}
