//! `--metrics-file FILE`: after each stage, the job's figures as Prometheus
//! metrics in the node exporter's textfile format.
//!
//! status.json is the source of truth: after every stage the whole file is
//! rendered again from it, so each stage's last values stay. status.json
//! keeps only the last result of a stage; what must outlive a failed run
//! (the time of the last success, the figures of the last complete run,
//! the number of snapshots kept) is kept in `<state_dir>/metrics.json`.
//! The file is replaced atomically: a temp file in the same directory,
//! created new (never through a symlink), fsynced and renamed over it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::UNIX_EPOCH;

use serde_json::{Map, Value, json};

use crate::error::{Error, IoContext, Kind, Result};
use crate::status::{self, Stage};

/// Kept across runs in the state dir.
pub const STATE_FILE: &str = "metrics.json";

const OUTCOMES: [&str; 5] = ["ok", "partial", "failed", "mismatch", "interrupted"];

/// Seconds since the epoch of an RFC 3339 time as status.json writes it
/// (`2026-11-29T03:00:00Z`).
fn epoch_seconds(time: &str) -> Option<u64> {
    let id: String = time.chars().filter(|c| !matches!(c, '-' | ':')).collect();
    let t = status::parse_snapshot_id(&id)?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// What outlives a failed run, updated from status.json after each stage:
/// `{last_success: {stage: time}, last_complete: {stage: result},
/// snapshots_kept: n}`.
pub fn update_state(state: &mut Value, status_doc: &Value, snapshots_kept: Option<usize>) {
    if !state.is_object() {
        *state = json!({});
    }
    for stage in Stage::ALL {
        let result = &status_doc["stages"][stage.key()];
        let outcome = result["outcome"].as_str();
        // A partial backup counts as a success: it stored everything it
        // could read and wrote a run that can be restored. The staleness
        // alert is for backups that do not run; `partial` has its own
        // outcome and `ciphersync_backup_unreadable_files`.
        if matches!(outcome, Some("ok" | "partial")) {
            state["last_success"][stage.key()] = result["finished_at"].clone();
        }
        if matches!(outcome, Some("ok" | "mismatch" | "partial")) {
            state["last_complete"][stage.key()] = result.clone();
        }
    }
    if let Some(n) = snapshots_kept {
        state["snapshots_kept"] = json!(n);
    }
}

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

/// The metrics text for `job` from its status.json and kept state.
pub fn render(job: &str, status_doc: &Value, state: &Value) -> String {
    let job = label(job);
    let with = |extra: &str| format!("{{job=\"{job}\"{extra}}}");
    let stage_label = |s: Stage| format!(",stage=\"{}\"", s.key());
    let mut families = vec![
        Family {
            name: "ciphersync_last_success_timestamp_seconds",
            help: "Unix time at which the stage last finished with outcome ok or partial (0: never).",
            samples: Vec::new(),
        },
        Family {
            name: "ciphersync_last_run_outcome",
            help: "The outcome of the stage's last run: 1 for that outcome, 0 for the others.",
            samples: Vec::new(),
        },
        Family {
            name: "ciphersync_last_run_timestamp_seconds",
            help: "Unix time at which the stage's last run finished, whatever its outcome.",
            samples: Vec::new(),
        },
        Family {
            name: "ciphersync_last_run_duration_seconds",
            help: "How long the stage's last run took.",
            samples: Vec::new(),
        },
    ];
    for stage in Stage::ALL {
        let last = &status_doc["stages"][stage.key()];
        let success = state["last_success"][stage.key()]
            .as_str()
            .and_then(epoch_seconds);
        // A backup that never succeeded reads 0, so the staleness alert fires.
        if success.is_some() || stage == Stage::Backup || last.is_object() {
            families[0]
                .samples
                .push((with(&stage_label(stage)), success.unwrap_or(0) as f64));
        }
        let Some(outcome) = last["outcome"].as_str() else {
            continue;
        };
        for o in OUTCOMES {
            families[1].samples.push((
                with(&format!("{},outcome=\"{o}\"", stage_label(stage))),
                f64::from(u8::from(o == outcome)),
            ));
        }
        if let Some(t) = last["finished_at"].as_str().and_then(epoch_seconds) {
            families[2]
                .samples
                .push((with(&stage_label(stage)), t as f64));
        }
        let ms = last["duration_ms"].as_u64().unwrap_or(0);
        families[3]
            .samples
            .push((with(&stage_label(stage)), ms as f64 / 1000.0));
    }
    let backup = &state["last_complete"]["backup"]["stats"];
    let number = |v: &Value, key: &str| v[key].as_u64().map(|n| n as f64);
    let backup_family = |name, help, key: &str| Family {
        name,
        help,
        samples: number(backup, key)
            .map(|n| vec![(with(""), n)])
            .unwrap_or_default(),
    };
    families.extend([
        backup_family(
            "ciphersync_backup_files",
            "The user's files in the backup after the last successful backup.",
            "files",
        ),
        backup_family(
            "ciphersync_backup_bytes",
            "Encrypted bytes of those files.",
            "bytes",
        ),
        backup_family(
            "ciphersync_backup_sent_files",
            "Files the last successful backup sent (new or changed).",
            "transferred",
        ),
        backup_family(
            "ciphersync_backup_sent_bytes",
            "Encrypted bytes the last successful backup sent.",
            "bytes_transferred",
        ),
        backup_family(
            "ciphersync_backup_deleted_files",
            "Files the last successful backup deleted on the target.",
            "deleted",
        ),
        Family {
            name: "ciphersync_backup_unreadable_files",
            help: "Source files and directories the last successful backup could not read (outcome partial when above 0).",
            samples: backup["unreadable"]
                .as_array()
                .map(|list| vec![(with(""), list.len() as f64)])
                .or_else(|| backup.is_object().then(|| vec![(with(""), 0.0)]))
                .unwrap_or_default(),
        },
    ]);
    families.push(Family {
        name: "ciphersync_snapshots_kept",
        help: "Runs that can be restored (records on the target) after the last backup or prune.",
        samples: state["snapshots_kept"]
            .as_u64()
            .map(|n| vec![(with(""), n as f64)])
            .unwrap_or_default(),
    });
    let space = &status_doc[status::TARGET_SPACE];
    let space_family = |name, help, value: Option<f64>| Family {
        name,
        help,
        samples: value.map(|v| vec![(with(""), v)]).unwrap_or_default(),
    };
    let bytes = |key: &str| space[key].as_u64().map(|n| n as f64);
    families.extend([
        space_family(
            "ciphersync_target_size_bytes",
            "Size of the target's file system after the last backup or prune (absent: the server does not tell).",
            bytes("size_bytes"),
        ),
        space_family(
            "ciphersync_target_free_bytes",
            "Bytes the account may still write on the target after the last backup or prune.",
            bytes("free_bytes"),
        ),
        space_family(
            "ciphersync_target_space_low",
            "1 when less than target.space_warning_percent of the target is free, else 0.",
            bytes("free_bytes").map(|_| f64::from(u8::from(space["low"] == true))),
        ),
    ]);
    let mut verify_files = Family {
        name: "ciphersync_verify_files",
        help: "Files the last complete verify compared.",
        samples: Vec::new(),
    };
    let mut differences = Family {
        name: "ciphersync_verify_differences",
        help: "Missing, extra and changed files the last complete verify found (0: the backup matches).",
        samples: Vec::new(),
    };
    for stage in [Stage::Verify, Stage::DeepVerify] {
        let stats = &state["last_complete"][stage.key()]["stats"];
        if !stats.is_object() {
            continue;
        }
        let found: usize = ["missing", "extra", "changed"]
            .iter()
            .map(|k| stats[k].as_array().map_or(0, Vec::len))
            .sum();
        verify_files.samples.push((
            with(&stage_label(stage)),
            number(stats, "files").unwrap_or(0.0),
        ));
        differences
            .samples
            .push((with(&stage_label(stage)), found as f64));
    }
    families.extend([verify_files, differences]);

    let mut text = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        text.push_str(&format!(
            "# HELP {} {}\n# TYPE {} gauge\n",
            f.name, f.help, f.name
        ));
        for (labels, value) in &f.samples {
            text.push_str(&format!("{}{labels} {value}\n", f.name));
        }
    }
    text
}

/// Replaces `path` with `text`: a new temp file beside it (created with
/// O_EXCL and O_NOFOLLOW, mode 0644 so the node exporter can read it),
/// fsynced, renamed over `path` (a symlink there is replaced, never
/// followed), then the directory fsynced.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let name = path.file_name().filter(|n| !n.is_empty()).ok_or_else(|| {
        Error::usage(format!(
            "--metrics-file {} does not name a file",
            path.display()
        ))
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::new(
            Kind::Io,
            format!(
                "cannot write the metrics file {}: {} is not a directory",
                path.display(),
                dir.display()
            ),
        ));
    }
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A temp file of ours left by a killed run of the same pid: unlink
    // removes a name, never what a symlink points to.
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&temp)
        .ctx(|| format!("creating {}", temp.display()))?;
    let written = file
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|_| file.write_all(text.as_bytes()))
        .and_then(|_| file.sync_all())
        .and_then(|_| std::fs::rename(&temp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(Error::io(
            format!("writing the metrics file {}", path.display()),
            e,
        ));
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing {}", dir.display()))
}

/// After a stage: updates the kept state from status.json and writes the
/// metrics file. `snapshots_kept`: counted after a backup or prune.
pub fn write(
    state_dir: &Path,
    job: &str,
    file: &Path,
    snapshots_kept: Option<usize>,
) -> Result<()> {
    let status_doc = status::read(state_dir)?;
    let state_path = state_dir.join(STATE_FILE);
    let mut state = std::fs::read_to_string(&state_path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .unwrap_or_else(|| Value::Object(Map::new()));
    update_state(&mut state, &status_doc, snapshots_kept);
    crate::fsutil::write_atomic(&state_path, format!("{state}\n").as_bytes())?;
    write_atomic(file, &render(job, &status_doc, &state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with(stages: Value) -> Value {
        json!({ "job": "docs", "stages": stages })
    }

    #[test]
    fn a_failed_backup_keeps_the_last_success_and_its_figures() {
        let ok = status_with(json!({
            "backup": {"outcome": "ok", "finished_at": "2026-11-29T03:00:00Z", "duration_ms": 1500,
                       "stats": {"files": 3, "bytes": 300, "transferred": 2, "bytes_transferred": 200, "deleted": 1}},
            "verify": {"outcome": "mismatch", "finished_at": "2026-11-29T04:00:00Z", "duration_ms": 10,
                       "stats": {"files": 3, "missing": ["a"], "extra": [], "changed": ["b", "c"]}},
        }));
        let mut state = json!({});
        update_state(&mut state, &ok, Some(4));
        let failed = status_with(json!({
            "backup": {"outcome": "failed", "finished_at": "2026-11-30T03:00:00Z", "duration_ms": 500, "stats": {}},
            "verify": ok["stages"]["verify"].clone(),
        }));
        update_state(&mut state, &failed, None);
        let text = render("docs", &failed, &state);
        for line in [
            "ciphersync_last_success_timestamp_seconds{job=\"docs\",stage=\"backup\"} 1795921200",
            "ciphersync_last_success_timestamp_seconds{job=\"docs\",stage=\"verify\"} 0",
            "ciphersync_last_run_outcome{job=\"docs\",stage=\"backup\",outcome=\"failed\"} 1",
            "ciphersync_last_run_outcome{job=\"docs\",stage=\"backup\",outcome=\"ok\"} 0",
            "ciphersync_last_run_timestamp_seconds{job=\"docs\",stage=\"backup\"} 1796007600",
            "ciphersync_last_run_duration_seconds{job=\"docs\",stage=\"backup\"} 0.5",
            "ciphersync_backup_files{job=\"docs\"} 3",
            "ciphersync_backup_sent_bytes{job=\"docs\"} 200",
            "ciphersync_snapshots_kept{job=\"docs\"} 4",
            "ciphersync_verify_differences{job=\"docs\",stage=\"verify\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn a_partial_backup_is_a_success_with_its_own_outcome() {
        let partial = status_with(json!({
            "backup": {"outcome": "partial", "finished_at": "2026-11-29T03:00:00Z", "duration_ms": 1500,
                       "stats": {"files": 3, "bytes": 300, "transferred": 2, "bytes_transferred": 200,
                                 "deleted": 0, "unreadable": ["a (Permission denied (13))", "b (vanished)"]}},
        }));
        let mut state = json!({});
        update_state(&mut state, &partial, Some(1));
        let text = render("docs", &partial, &state);
        for line in [
            "ciphersync_last_success_timestamp_seconds{job=\"docs\",stage=\"backup\"} 1795921200",
            "ciphersync_last_run_outcome{job=\"docs\",stage=\"backup\",outcome=\"partial\"} 1",
            "ciphersync_last_run_outcome{job=\"docs\",stage=\"backup\",outcome=\"ok\"} 0",
            "ciphersync_last_run_outcome{job=\"docs\",stage=\"backup\",outcome=\"failed\"} 0",
            "ciphersync_backup_unreadable_files{job=\"docs\"} 2",
            "ciphersync_backup_files{job=\"docs\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn the_target_space_is_rendered_when_known() {
        let doc = json!({"job": "docs", "stages": {}, "target_space": {
            "measured_at": "2026-11-29T03:00:00Z", "size_bytes": 1000, "used_bytes": 960,
            "free_bytes": 40, "free_percent": 4.0, "warning_percent": 10, "low": true}});
        let text = render("docs", &doc, &json!({}));
        for line in [
            "ciphersync_target_size_bytes{job=\"docs\"} 1000",
            "ciphersync_target_free_bytes{job=\"docs\"} 40",
            "ciphersync_target_space_low{job=\"docs\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let unknown = json!({"job": "docs", "stages": {}, "target_space": {
            "measured_at": "2026-11-29T03:00:00Z", "size_bytes": null, "free_bytes": null, "low": false}});
        assert!(!render("docs", &unknown, &json!({})).contains("ciphersync_target_"));
    }

    #[test]
    fn a_job_that_never_ran_reads_never_succeeded() {
        let text = render("docs", &json!({}), &json!({}));
        assert_eq!(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            ["ciphersync_last_success_timestamp_seconds{job=\"docs\",stage=\"backup\"} 0"]
        );
    }

    #[test]
    fn the_file_is_replaced_never_written_through_a_link() {
        let dir = std::env::temp_dir().join(format!("ciphersync-metrics-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let file = dir.join("job.prom");
        std::os::unix::fs::symlink(&victim, &file).unwrap();
        write_atomic(&file, "a 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "a 1\n");
        assert!(
            !std::fs::symlink_metadata(&file)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "a temp file was left: {names:?}");
        let e = write_atomic(&dir.join("missing/job.prom"), "").unwrap_err();
        assert!(e.message.contains("missing"), "{}", e.message);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
