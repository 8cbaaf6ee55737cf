//! `<state_dir>/status.json`: the last result of each stage, replaced
//! atomically (temp file, fsync, rename, fsync of the directory) so a crash
//! never leaves a half-written status behind.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::error::{Error, Kind, Result};

pub const STATUS_FILE: &str = "status.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Backup,
    Verify,
    DeepVerify,
    Restore,
    Prune,
}

impl Stage {
    pub fn key(self) -> &'static str {
        match self {
            Stage::Backup => "backup",
            Stage::Verify => "verify",
            Stage::DeepVerify => "deep_verify",
            Stage::Restore => "restore",
            Stage::Prune => "prune",
        }
    }

    pub const ALL: [Stage; 5] = [
        Stage::Backup,
        Stage::Verify,
        Stage::DeepVerify,
        Stage::Restore,
        Stage::Prune,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A backup that stored everything it could read; some source files
    /// could not be read (permission denied, vanished) and are listed in
    /// its stats (`unreadable`). Exit 4; see docs/design.md, "Partial runs".
    Partial,
    Failed,
    Mismatch,
    Interrupted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
            Outcome::Mismatch => "mismatch",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// One stage's result, as stored under `stages.<stage>`.
#[derive(Debug, Clone)]
pub struct StageResult {
    pub outcome: Outcome,
    pub started_at: SystemTime,
    pub finished_at: SystemTime,
    pub error: Option<Error>,
    pub stats: Value,
}

impl StageResult {
    pub fn to_json(&self) -> Value {
        let duration = self
            .finished_at
            .duration_since(self.started_at)
            .unwrap_or(Duration::ZERO);
        json!({
            "outcome": self.outcome.as_str(),
            "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at),
            "duration_ms": duration.as_millis() as u64,
            "error": self.error.as_ref().map(|e| json!({ "kind": e.kind.as_str(), "message": e.message })),
            "stats": self.stats,
        })
    }
}

/// Reads status.json; a missing file is an empty status.
pub fn read(state_dir: &Path) -> Result<Value> {
    let path = state_dir.join(STATUS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => match serde_json::from_str::<Value>(&text) {
            Ok(doc) if doc.is_object() => Ok(doc),
            Ok(_) => Err(Error::new(
                Kind::Corrupt,
                format!("{} is not a JSON object", path.display()),
            )),
            Err(e) => Err(Error::new(
                Kind::Corrupt,
                format!("{} is not valid JSON: {e}", path.display()),
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// Records one stage's result, keeping the others.
pub fn record(state_dir: &Path, job: &str, stage: Stage, result: &StageResult) -> Result<()> {
    // A corrupt old status must not stop us from recording the new result.
    let old = read(state_dir).unwrap_or_else(|_| json!({}));
    let mut stages = old
        .get("stages")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    stages.insert(stage.key().to_string(), result.to_json());
    let mut doc = Map::new();
    doc.insert("job".into(), Value::String(job.to_string()));
    doc.insert("stages".into(), Value::Object(stages));
    if let Some(space) = old.get(TARGET_SPACE) {
        doc.insert(TARGET_SPACE.into(), space.clone());
    }
    write_doc(state_dir, doc)
}

fn write_doc(state_dir: &Path, doc: Map<String, Value>) -> Result<()> {
    let text = serde_json::to_string_pretty(&Value::Object(doc)).expect("JSON values serialise");
    write_atomic(&state_dir.join(STATUS_FILE), format!("{text}\n").as_bytes())
}

/// status.json's key for the target's space, measured after each backup
/// and prune (target::keep_space).
pub const TARGET_SPACE: &str = "target_space";

/// Records the target's space (`None`: the target cannot tell) and the
/// warning threshold it was judged by, keeping everything else.
pub fn record_space(
    state_dir: &Path,
    job: &str,
    space: Option<crate::target::Space>,
    warning_percent: u8,
) -> Result<()> {
    let old = read(state_dir).unwrap_or_else(|_| json!({}));
    let mut doc = old.as_object().cloned().unwrap_or_default();
    doc.insert("job".into(), Value::String(job.to_string()));
    let free_percent = space
        .and_then(|s| s.free_percent())
        .map(|p| (p * 10.0).round() / 10.0);
    doc.insert(
        TARGET_SPACE.into(),
        json!({
            "measured_at": rfc3339(SystemTime::now()),
            "size_bytes": space.map(|s| s.size_bytes),
            "used_bytes": space.map(|s| s.used_bytes),
            "free_bytes": space.map(|s| s.free_bytes),
            "free_percent": free_percent,
            "warning_percent": warning_percent,
            "low": space.is_some_and(|s| s.low(warning_percent)),
        }),
    );
    write_doc(state_dir, doc)
}

pub use crate::fsutil::{AtomicFile, write_atomic};

/// `2026-11-29T03:00:00Z`
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `20261129T030000Z`, the snapshot id of a run started at `t`.
pub fn snapshot_id(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// Parses a snapshot id back into a time; None if it is not one.
pub fn parse_snapshot_id(id: &str) -> Option<SystemTime> {
    let b = id.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = id.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s;
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?);
    (snapshot_id(t) == id).then_some(t)
}

fn civil(t: SystemTime) -> (i64, i64, i64, i64, i64, i64) {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, mo, d) = civil_from_days(days);
    (y, mo, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian, UTC).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formats() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_921_200); // 2026-11-29T03:00:00Z
        assert_eq!(rfc3339(t), "2026-11-29T03:00:00Z");
        assert_eq!(snapshot_id(t), "20261129T030000Z");
        assert_eq!(parse_snapshot_id("20261129T030000Z"), Some(t));
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        for bad in [
            "20261129T030000",
            "2026112XT030000Z",
            "20261340T030000Z",
            "../etc/passwdxxx",
        ] {
            assert_eq!(parse_snapshot_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn stage_result_serialises() {
        let start = UNIX_EPOCH + Duration::from_secs(1_795_921_200);
        let result = StageResult {
            outcome: Outcome::Mismatch,
            started_at: start,
            finished_at: start + Duration::from_millis(250_123),
            error: Some(Error::new(Kind::Tool, "rsync failed")),
            stats: json!({ "files": 3, "missing": ["a/b.txt"], "extra": [], "changed": ["c.pdf"] }),
        };
        insta::assert_json_snapshot!(result.to_json());
    }

    #[test]
    fn the_target_space_outlives_stage_results() {
        let dir =
            std::env::temp_dir().join(format!("ciphersync-space-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let space = crate::target::Space {
            size_bytes: 1000,
            used_bytes: 950,
            free_bytes: 50,
        };
        record_space(&dir, "docs", Some(space), 10).unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_795_921_200);
        let ok = StageResult {
            outcome: Outcome::Ok,
            started_at: at,
            finished_at: at,
            error: None,
            stats: json!({}),
        };
        record(&dir, "docs", Stage::Backup, &ok).unwrap();
        let doc = read(&dir).unwrap();
        let kept = &doc[TARGET_SPACE];
        assert_eq!(kept["free_bytes"], 50, "{doc}");
        assert_eq!(kept["free_percent"], 5.0);
        assert_eq!(kept["low"], true);
        assert_eq!(doc["stages"]["backup"]["outcome"], "ok");
        record_space(&dir, "docs", None, 10).unwrap();
        let doc = read(&dir).unwrap();
        assert!(doc[TARGET_SPACE]["free_bytes"].is_null(), "{doc}");
        assert_eq!(doc[TARGET_SPACE]["low"], false);
        assert_eq!(doc["stages"]["backup"]["outcome"], "ok");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn record_keeps_other_stages() {
        let dir =
            std::env::temp_dir().join(format!("ciphersync-status-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_795_921_200);
        let ok = StageResult {
            outcome: Outcome::Ok,
            started_at: at,
            finished_at: at,
            error: None,
            stats: json!({}),
        };
        record(&dir, "docs", Stage::Backup, &ok).unwrap();
        let failed = StageResult {
            outcome: Outcome::Failed,
            ..ok.clone()
        };
        record(&dir, "docs", Stage::Verify, &failed).unwrap();
        let doc = read(&dir).unwrap();
        assert_eq!(doc["job"], "docs");
        assert_eq!(doc["stages"]["backup"]["outcome"], "ok");
        assert_eq!(doc["stages"]["verify"]["outcome"], "failed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
