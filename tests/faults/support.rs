//! Private helpers shared by e2e_cli.rs, e2e_security.rs and e2e_faults.rs
//! (included with `#[path = "faults/support.rs"] mod support;`).
//!
//! * [`record`] appends one JSON line per scenario to
//!   `target/reliability/<suite>.jsonl`; `tests/faults/report.py` renders
//!   those lines into `docs/reliability.md`.
//! * [`assert_no_panic`] — the "never a panic, never a backtrace" check.
//! * [`Fuzz`] — a seeded xorshift for the bounded fuzz loops.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::PathBuf;

pub use serde_json::{Value, json};

/// `target/reliability` (respects CARGO_TARGET_DIR when set at run time).
pub fn report_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(target)
    };
    target.join("reliability")
}

/// Appends one scenario result. `fields` should hold at least `scenario`,
/// `expected`, `observed`, `passed`; optional `kind` ("fault", "security",
/// "cli", "fuzz"), `inputs` (bad inputs tried), `data_lost` (files lost),
/// `seconds`.
pub fn record(suite: &str, mut fields: Value) {
    let dir = report_dir();
    let _ = fs::create_dir_all(&dir);
    fields["suite"] = json!(suite);
    fields["at"] = json!(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    let line = format!("{fields}\n");
    if let Ok(mut f) = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{suite}.jsonl")))
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Records a scenario as failed when dropped during a panic (so the report
/// shows failures too), as passed when [`Scenario::pass`] was called.
pub struct Scenario {
    pub suite: &'static str,
    pub name: String,
    pub kind: &'static str,
    pub expected: String,
    pub observed: Vec<String>,
    pub inputs: u64,
    pub start: std::time::Instant,
    /// Failed checks that do not stop the scenario (asserted in `pass`).
    pub soft: Vec<String>,
    /// Files of the previous good state found lost (set before asserting).
    pub lost: u64,
    done: bool,
}

impl Scenario {
    pub fn new(suite: &'static str, kind: &'static str, name: &str, expected: &str) -> Scenario {
        Scenario {
            suite,
            name: name.into(),
            kind,
            expected: expected.into(),
            observed: Vec::new(),
            inputs: 0,
            start: std::time::Instant::now(),
            soft: Vec::new(),
            lost: 0,
            done: false,
        }
    }
    pub fn note(&mut self, s: impl Into<String>) {
        let s: String = s.into();
        eprintln!("[{}] {}", self.name, s);
        self.observed.push(s);
    }
    /// A check whose failure is reported but lets the scenario go on.
    pub fn soft_check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            let w: String = what.into();
            eprintln!("[{}] FAILED CHECK: {}", self.name, w);
            self.soft.push(w);
        }
    }
    /// Records the result; panics (recording a failure) if a soft check failed.
    pub fn pass(mut self) {
        if !self.soft.is_empty() {
            let list = self.soft.join("\n  ");
            self.observed
                .push(format!("FAILED: {}", self.soft.join(" / ")));
            // Every hard check held (bounded, no loss, recovered): survived,
            // but not every check passed.
            self.write_full(false, true);
            self.done = true;
            panic!(
                "{}: {} check(s) failed:\n  {list}",
                self.name,
                self.soft.len()
            );
        }
        self.write(true);
        self.done = true;
    }
    fn write(&self, passed: bool) {
        self.write_full(passed, passed)
    }
    fn write_full(&self, passed: bool, survived: bool) {
        record(
            self.suite,
            json!({
                "scenario": self.name,
                "kind": self.kind,
                "expected": self.expected,
                "observed": self.observed.join("; "),
                "passed": passed,
                "survived": survived,
                "inputs": self.inputs,
                "data_lost": self.lost,
                "seconds": (self.start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            }),
        );
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if !self.done {
            if std::thread::panicking() {
                self.observed
                    .push("TEST FAILED (see the test output)".into());
            }
            self.write(false);
        }
    }
}

/// The binary must never panic nor print a Rust backtrace.
pub fn panic_signs(code: i32, stdout: &str, stderr: &str) -> Option<String> {
    let text = format!("{stdout}\n{stderr}");
    if code == 101 {
        return Some("exit code 101 (Rust panic)".into());
    }
    for bad in [
        "panicked",
        "RUST_BACKTRACE",
        "stack backtrace",
        "note: run with",
    ] {
        if text.contains(bad) {
            return Some(format!("output contains {bad:?}"));
        }
    }
    if code >= 128 {
        return Some(format!("killed by signal {}", code - 128));
    }
    None
}

/// Panics describing `what` when the run shows panic signs.
pub fn assert_no_panic(what: &str, code: i32, stdout: &str, stderr: &str) {
    if let Some(sign) = panic_signs(code, stdout, stderr) {
        panic!("{what}: {sign}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    }
}

/// Deterministic pseudo-random numbers for the bounded fuzz loops.
pub struct Fuzz(u64);

impl Fuzz {
    pub fn new(seed: u64) -> Fuzz {
        Fuzz((seed ^ 0x2545_F491_4F6C_DD1D) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    /// Mutates `data` with 1..=4 random edits: flip a byte, delete a range,
    /// duplicate a range, insert an interesting token, truncate.
    pub fn mutate(&mut self, data: &[u8]) -> Vec<u8> {
        const TOKENS: &[&[u8]] = &[
            b"\n",
            b"\0",
            b"\t",
            b" ",
            b"\"",
            b"\\",
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"-1",
            b"18446744073709551616",
            b"9999999999999999999999",
            b"1e999",
            b"NaN",
            b"null",
            b"true",
            b"\xff\xfe",
            b"\xc3\x28",
            b"..",
            b"../../",
            b"/",
            b"%s%n",
            b"0",
            b"-",
            b"f",
            b"d",
            b"l",
            b"\\u0000",
            b"\\ud800",
        ];
        let mut out = data.to_vec();
        let edits = 1 + self.below(4);
        for _ in 0..edits {
            let len = out.len() as u64;
            match self.below(6) {
                0 if len > 0 => {
                    let i = self.below(len) as usize;
                    out[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let a = self.below(len) as usize;
                    let b = (a + 1 + self.below(16) as usize).min(out.len());
                    out.drain(a..b);
                }
                2 if len > 0 => {
                    let a = self.below(len) as usize;
                    let b = (a + 1 + self.below(64) as usize).min(out.len());
                    let chunk = out[a..b].to_vec();
                    let at = self.below(len + 1) as usize;
                    out.splice(at..at, chunk);
                }
                3 => {
                    let t = *self.pick(TOKENS);
                    let at = self.below(len + 1) as usize;
                    out.splice(at..at, t.iter().copied());
                }
                4 if len > 0 => {
                    let at = self.below(len) as usize;
                    out.truncate(at);
                }
                _ => {
                    let i = self.below(len + 1) as usize;
                    out.insert(i, self.next() as u8);
                }
            }
        }
        out
    }
}
