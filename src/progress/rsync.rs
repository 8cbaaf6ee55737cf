//! rsync's own progress (`--info=progress2`) as a part of a phase.
//!
//! rsync knows what it has checked of its file list and what it has sent,
//! and prints it on stdout as records that start with `\r`:
//!
//! ```text
//! \r        1234567  45%   12.34MB/s    0:00:12 (xfr#5, to-chk=100/200)
//! ```
//!
//! `ir-chk` in place of `to-chk` while rsync is still listing the tree
//! (its total may grow). rsync's stdout goes to a scratch file (exec.rs:
//! files, never pipes); while rsync runs, a thread reads what it appended
//! (at an offset of its own, `pread`, so rsync's writes stay where they
//! are) and reports the newest record. The itemized lines and `--stats`
//! in the same file are read afterwards through `WithoutProgress`, which
//! leaves the records out: a file sent for an hour is one "line" of
//! thousands of records.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use super::{Part, PartId, Phase};
use crate::error::{Error, Result};
use crate::exec::{Cmd, Output};

/// The option that makes rsync print its progress records.
pub const PROGRESS_ARG: &str = "--info=progress2";

/// How often the scratch file is read for new records.
const POLL: Duration = Duration::from_millis(100);
/// The longest record kept: a longer "record" is an itemized line.
const MAX_RECORD: usize = 256;

/// Runs `cmd` (rsync, with `PROGRESS_ARG` when `phase` is given) with its
/// stdout in `output`; while it runs its progress counts as a part of
/// `phase`, complete when it ends.
pub fn run(cmd: Cmd, output: File, phase: Option<&Phase>) -> Result<Output> {
    let Some(phase) = phase else {
        return cmd.stdout_to(output).run();
    };
    let reader = output
        .try_clone()
        .map_err(|e| Error::io("opening rsync's output for its progress", e))?;
    let part = phase.part();
    let (stop, stopped) = mpsc::channel::<()>();
    let out = std::thread::scope(|scope| {
        scope.spawn(move || watch(&reader, &stopped, phase, part));
        let out = cmd.stdout_to(output).run();
        drop(stop);
        out
    });
    phase.end_part(part);
    out
}

/// Reads the records rsync appends to `file` until told to stop, then
/// once more for the last ones.
fn watch(file: &File, stop: &mpsc::Receiver<()>, phase: &Phase, part: PartId) {
    let mut records = Records::default();
    loop {
        let last = !matches!(stop.recv_timeout(POLL), Err(RecvTimeoutError::Timeout));
        if records.read_new(file) {
            phase.set_part(part, records.part);
        }
        if last {
            return;
        }
    }
}

/// Where the reading of rsync's output stands.
#[derive(Default)]
struct Records {
    offset: u64,
    /// The text since the last `\r` or `\n`.
    pending: Vec<u8>,
    /// `pending` outgrew `MAX_RECORD`: not a record.
    overlong: bool,
    part: Part,
}

impl Records {
    /// Reads what was appended since the last call; true if a record
    /// was among it.
    fn read_new(&mut self, file: &File) -> bool {
        let mut buf = vec![0u8; 64 * 1024];
        let mut found = false;
        loop {
            match file.read_at(&mut buf, self.offset) {
                Ok(0) | Err(_) => return found,
                Ok(n) => {
                    self.offset += n as u64;
                    found |= self.feed(&buf[..n]);
                }
            }
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut found = false;
        for &b in bytes {
            if b == b'\r' || b == b'\n' {
                if !self.overlong
                    && let Some(record) = parse_record(&self.pending)
                {
                    record.apply(&mut self.part);
                    found = true;
                }
                self.pending.clear();
                self.overlong = false;
            } else if self.pending.len() < MAX_RECORD {
                self.pending.push(b);
            } else {
                self.overlong = true;
            }
        }
        found
    }
}

/// One progress record.
#[derive(Debug, PartialEq, Eq)]
struct Record {
    bytes: u64,
    /// (still to check, total, the total may grow): absent in the records
    /// rsync prints while one file is on its way.
    check: Option<(u64, u64, bool)>,
}

impl Record {
    fn apply(&self, part: &mut Part) {
        part.bytes = self.bytes;
        if let Some((left, total, growing)) = self.check {
            part.files_total = total;
            part.files = total.saturating_sub(left);
            part.provisional = growing;
        }
    }
}

/// `BYTES PCT% RATE ETA [(xfr#N, to-chk=LEFT/TOTAL)]`; anything else
/// (an itemized line, `--stats`) is None.
fn parse_record(text: &[u8]) -> Option<Record> {
    let text = std::str::from_utf8(text).ok()?;
    let mut words = text.split_whitespace();
    let bytes = words.next()?.replace(',', "").parse::<u64>().ok()?;
    words.next()?.strip_suffix('%')?.parse::<u16>().ok()?;
    let check = ["to-chk=", "ir-chk="].iter().find_map(|key| {
        let at = text.find(key)?;
        let rest = &text[at + key.len()..];
        let (left, total) = rest.split(')').next()?.split_once('/')?;
        Some((
            left.parse().ok()?,
            total.parse().ok()?,
            key.starts_with("ir"),
        ))
    });
    Some(Record { bytes, check })
}

/// rsync's stdout without its progress records: from a `\r` to the end
/// of the line; a line that held nothing else goes whole.
pub struct WithoutProgress<R> {
    inner: R,
    in_record: bool,
    at_line_start: bool,
    /// The line had text before its first record: its `\n` stays.
    line_has_text: bool,
}

impl<R: Read> WithoutProgress<R> {
    pub fn new(inner: R) -> WithoutProgress<R> {
        WithoutProgress {
            inner,
            in_record: false,
            at_line_start: true,
            line_has_text: false,
        }
    }

    fn keep(&mut self, b: u8) -> bool {
        match (self.in_record, b) {
            (false, b'\r') => {
                self.in_record = true;
                self.line_has_text = !self.at_line_start;
                false
            }
            (true, b'\n') => {
                self.in_record = false;
                self.at_line_start = true;
                self.line_has_text
            }
            (true, _) => false,
            (false, _) => {
                self.at_line_start = b == b'\n';
                true
            }
        }
    }
}

impl<R: Read> Read for WithoutProgress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.inner.read(buf)?;
            if n == 0 {
                return Ok(0);
            }
            let mut kept = 0;
            for i in 0..n {
                let b = buf[i];
                if self.keep(b) {
                    buf[kept] = b;
                    kept += 1;
                }
            }
            if kept > 0 {
                return Ok(kept);
            }
        }
    }
}

/// The `--stats` of a finished rsync whose stdout holds only them (and,
/// when watched, its progress records).
pub fn stats_of(out: &mut Output) -> Result<crate::rsync::Stats> {
    let what = "rsync's statistics";
    let reader = WithoutProgress::new(out.stdout_reader()?);
    let text = crate::limits::read_text(reader, crate::limits::MAX_TEXT, what)?;
    Ok(crate::rsync::parse_stats(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rsync 3.5.0's stdout for a first copy of 50 files, as it is.
    const FIRST_RUN: &str = "cd+++++++++ a/\n>f+++++++++ a/f1\n\
        \r           1000   0%    0.00kB/s    0:00:00  \r           1000   0%    0.00kB/s    0:00:00 (xfr#1, ir-chk=49/52)\r           1000   0%    0.00kB/s    0:00:00 (xfr#1, to-chk=0/52) \n\
        >f+++++++++ a/f10\n\
        \r          11000   0%    9.54MB/s    0:00:00 (xfr#2, to-chk=48/52)\n\
        \r          12000   1%    9.54MB/s    0:00:00  \n\
        \nNumber of files: 52 (reg: 50, dir: 2)\nTotal file size: 1273000 bytes\n";

    #[test]
    fn records_are_read_however_the_output_is_cut() {
        for cut in [1, 7, 64, FIRST_RUN.len()] {
            let mut records = Records::default();
            let mut seen = Vec::new();
            for chunk in FIRST_RUN.as_bytes().chunks(cut) {
                if records.feed(chunk) {
                    seen.push(records.part);
                }
            }
            assert_eq!(
                records.part,
                Part {
                    files: 4,
                    files_total: 52,
                    bytes: 12000,
                    provisional: false
                },
                "cut at {cut}"
            );
            assert!(seen.iter().all(|p| p.files <= p.files_total));
        }
        let mut records = Records::default();
        records.feed(b"\r  1000   0%    0.00kB/s    0:00:00 (xfr#1, ir-chk=49/52)\r");
        assert!(records.part.provisional);
    }

    #[test]
    fn other_lines_are_no_records() {
        for line in [
            ">f+++++++++ a/f1",
            "Number of files: 52 (reg: 50, dir: 2)",
            "sent 5765 bytes  received 36 bytes  11602.00 bytes/sec",
            "12 files",
            "",
            "1 2% ok (xfr#1, to-chk=x/52)",
        ] {
            let record = parse_record(line.as_bytes());
            assert!(
                record.as_ref().is_none_or(|r| r.check.is_none()),
                "{line:?}: {record:?}"
            );
        }
        let overlong = format!("\r1000 1% {} (xfr#1, to-chk=1/2)\n", "x".repeat(MAX_RECORD));
        let mut records = Records::default();
        assert!(!records.feed(overlong.as_bytes()));
    }

    #[test]
    fn the_stats_parser_sees_no_record() {
        let mut text = String::new();
        WithoutProgress::new(FIRST_RUN.as_bytes())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(
            text,
            "cd+++++++++ a/\n>f+++++++++ a/f1\n>f+++++++++ a/f10\n\
             \nNumber of files: 52 (reg: 50, dir: 2)\nTotal file size: 1273000 bytes\n"
        );
        // A record after text on the same line keeps the line's end.
        let mut text = String::new();
        WithoutProgress::new(&b"abc\r 1 0% x\ndef\n"[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "abc\ndef\n");
    }

    #[test]
    fn a_watched_run_keeps_its_output() {
        let phase = Phase::hidden();
        let out = run(
            Cmd::new("echo").arg("hello"),
            tempfile_in_tmp(),
            Some(&phase),
        );
        let mut out = out.unwrap();
        assert_eq!(out.stdout_string().unwrap(), "hello\n");
    }

    fn tempfile_in_tmp() -> File {
        crate::exec::scratch_file(&std::env::temp_dir(), "progress-test").unwrap()
    }
}
