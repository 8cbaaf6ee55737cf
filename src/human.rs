//! What a person reads: one sentence per result, the right count word
//! (`1 file`, `2 files`), and every name from a backup or a target escaped,
//! so that a hostile file name cannot send escape sequences to a terminal.
//!
//! It reads results in their published JSON form (the `--json` output and
//! status.json), so the lines say exactly what the JSON says.

use serde_json::Value;

use crate::status::Stage;

/// `n` with its noun: `1 file`, `2 files`, `0 files`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn files(n: u64) -> String {
    count(n, "file", "files")
}

fn bytes(n: u64) -> String {
    count(n, "byte", "bytes")
}

/// A name or message for a terminal: control characters (C0, DEL, C1) and
/// backslashes are written as escapes (`\n`, `\x1b`, `\u{9b}`, `\\`).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if ('\u{80}'..='\u{9f}').contains(&c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Bytes for people, in binary units: `512 B`, `1.5 KiB`, `93.1 GiB`.
pub fn bytes_short(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn number(stats: &Value, key: &str) -> u64 {
    stats[key].as_u64().unwrap_or(0)
}

fn text<'a>(stats: &'a Value, key: &str) -> &'a str {
    stats[key].as_str().unwrap_or("-")
}

/// The lines for one stage's result (`result` as `StageResult::to_json`
/// gives it): on stdout for a result, on stderr for a failure.
pub fn result_lines(job: &str, stage: Stage, result: &Value) -> (Vec<String>, Vec<String>) {
    let outcome = result["outcome"].as_str().unwrap_or("failed");
    let stats = &result["stats"];
    let job = escape(job);
    let stage_name = stage.key().replace('_', " ");
    if !matches!(outcome, "ok" | "mismatch" | "partial") {
        let message = result["error"]["message"].as_str().unwrap_or("");
        let line = format!(
            "ciphersync: {stage_name} of {job} {outcome}: {}",
            escape(message)
        );
        return (Vec::new(), vec![line]);
    }
    let lines = match stage {
        Stage::Backup if outcome == "partial" => return partial_lines(&job, stats),
        Stage::Backup => vec![backup_line(&job, stats)],
        Stage::Restore => vec![restore_line(&job, stats)],
        Stage::Prune => prune_lines(&job, stats),
        Stage::Verify | Stage::DeepVerify => verify_lines(&job, &stage_name, outcome, stats),
    };
    (lines, Vec::new())
}

/// A partial backup: the usual line, and on stderr what could not be read.
fn partial_lines(job: &str, s: &Value) -> (Vec<String>, Vec<String>) {
    let unreadable = string_list(&s["unreadable"]);
    let mut err = vec![format!(
        "ciphersync: backup of {job} partial: could not read {} of the source; \
         missing from the backup, or kept in their last backed-up version:",
        count(unreadable.len() as u64, "entry", "entries")
    )];
    err.extend(
        unreadable
            .iter()
            .map(|p| format!("  unreadable: {}", escape(p))),
    );
    (
        vec![backup_line(job, s).replacen(" ok: ", " partial: ", 1)],
        err,
    )
}

fn backup_line(job: &str, s: &Value) -> String {
    format!(
        "backup of {job} ok: {} in the backup; {} sent ({} encrypted), {} deleted; snapshot {}",
        files(number(s, "files")),
        files(number(s, "transferred")),
        bytes(number(s, "bytes_transferred")),
        files(number(s, "deleted")),
        text(s, "snapshot"),
    )
}

fn restore_line(job: &str, s: &Value) -> String {
    let from = match s["snapshot"].as_str() {
        Some(id) => format!("snapshot {id} of {job}"),
        None => format!("the latest backup of {job}"),
    };
    format!(
        "restored {} ({}) from {from} into {}",
        files(number(s, "files")),
        bytes(number(s, "bytes")),
        escape(text(s, "to")),
    )
}

fn prune_lines(job: &str, s: &Value) -> Vec<String> {
    let records = string_list(&s["records"]);
    let dirs = string_list(&s["snapshot_dirs"]);
    let dry = s["dry_run"].as_bool().unwrap_or(false);
    if records.is_empty() && dirs.is_empty() {
        return vec![format!(
            "prune of {job}: nothing to delete, every run is kept"
        )];
    }
    let what = format!(
        "{} and {}",
        count(records.len() as u64, "record", "records"),
        count(dirs.len() as u64, "snapshot dir", "snapshot dirs"),
    );
    let mut lines = vec![match dry {
        true => format!("prune of {job} (dry run): would delete {what}:"),
        false => format!("prune of {job}: deleted {what}"),
    }];
    if dry {
        lines.extend(
            records
                .iter()
                .map(|r| format!("  records/{}.rec", escape(r))),
        );
        lines.extend(dirs.iter().map(|d| format!("  snapshots/{}/", escape(d))));
    }
    lines
}

fn verify_lines(job: &str, stage: &str, outcome: &str, s: &Value) -> Vec<String> {
    let total = number(s, "files");
    let lists = ["missing", "extra", "changed"].map(|list| (list, string_list(&s[list])));
    let differing: usize = lists.iter().map(|(_, l)| l.len()).sum();
    let mut lines = vec![match outcome {
        "ok" => match s.get("sampled").and_then(Value::as_u64) {
            Some(read) if stage == "verify" => format!(
                "{stage} of {job} ok: {} match, {} read back from the target",
                files(total),
                read
            ),
            _ => format!("{stage} of {job} ok: {} match", files(total)),
        },
        _ => format!(
            "{stage} of {job} found {}: {} in the backup",
            count(differing as u64, "difference", "differences"),
            files(total)
        ),
    }];
    for (list, paths) in &lists {
        lines.extend(paths.iter().map(|p| format!("  {list}: {}", escape(p))));
    }
    lines
}

fn string_list(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            x.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| x.to_string())
        })
        .collect()
}

/// The `status` table: one row per stage that has run, and for a job
/// with no recorded run, a line that says so and what to run.
pub fn status_lines(docs: &[Value]) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<16} {:<12} {:<12} {:<21} {:>10}  detail",
        "JOB", "STAGE", "OUTCOME", "FINISHED", "SECONDS"
    )];
    for doc in docs {
        let job = escape(doc["job"].as_str().unwrap_or("?"));
        let ran: Vec<Stage> = Stage::ALL
            .into_iter()
            .filter(|stage| !doc["stages"][stage.key()].is_null())
            .collect();
        if ran.is_empty() {
            lines.push(format!(
                "{job:<16} no run recorded yet: start with `ciphersync backup {job}`"
            ));
        }
        for stage in ran {
            let s = &doc["stages"][stage.key()];
            lines.push(format!(
                "{:<16} {:<12} {:<12} {:<21} {:>10.1}  {}",
                job,
                stage.key(),
                s["outcome"].as_str().unwrap_or("?"),
                s["finished_at"].as_str().unwrap_or("?"),
                s["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                status_detail(stage, s)
            ));
        }
        if let Some(line) = space_line(&job, &doc[crate::status::TARGET_SPACE]) {
            lines.push(line);
        }
    }
    lines
}

/// The target's space as the last backup or prune measured it.
fn space_line(job: &str, space: &Value) -> Option<String> {
    let at = space["measured_at"].as_str()?;
    let (Some(free), Some(size)) = (space["free_bytes"].as_u64(), space["size_bytes"].as_u64())
    else {
        return Some(format!(
            "{job:<16} target space unknown (the server does not tell), asked {at}"
        ));
    };
    let mut line = format!(
        "{job:<16} target space: {} free of {} ({}), measured {at}",
        bytes_short(free),
        bytes_short(size),
        space["free_percent"]
            .as_f64()
            .map_or("?".to_string(), |p| format!("{p:.1} %")),
    );
    if space["low"] == true {
        line.push_str(&format!(
            "; WARNING: below {} % free (target.space_warning_percent)",
            space["warning_percent"].as_u64().unwrap_or(0)
        ));
    }
    Some(line)
}

fn status_detail(stage: Stage, s: &Value) -> String {
    if let Some(message) = s["error"]["message"].as_str() {
        return escape(message);
    }
    let st = &s["stats"];
    let unreadable = string_list(&st["unreadable"]);
    match stage {
        Stage::Backup if !unreadable.is_empty() => format!(
            "snapshot {}, {}; could not read: {}",
            text(st, "snapshot"),
            files(number(st, "files")),
            escape(&unreadable.join("; "))
        ),
        Stage::Backup => format!(
            "snapshot {}, {}",
            text(st, "snapshot"),
            files(number(st, "files"))
        ),
        Stage::Prune => {
            let (records, dirs) = (
                string_list(&st["records"]),
                string_list(&st["snapshot_dirs"]),
            );
            match (records.len(), dirs.len(), st["dry_run"] == true) {
                (0, 0, _) => "nothing to delete".to_string(),
                (r, d, dry) => format!(
                    "{} {} and {}",
                    if dry { "would delete" } else { "deleted" },
                    count(r as u64, "record", "records"),
                    count(d as u64, "snapshot dir", "snapshot dirs"),
                ),
            }
        }
        Stage::Restore => format!(
            "{} into {}",
            files(number(st, "files")),
            escape(text(st, "to"))
        ),
        Stage::Verify | Stage::DeepVerify => files(number(st, "files")),
    }
}

/// `log`: one row per kept version of a path (`doc` as `log --json`
/// prints it), then how to get one back.
pub fn log_lines(doc: &Value) -> Vec<String> {
    let path = escape(doc["path"].as_str().unwrap_or("?"));
    let job = escape(doc["job"].as_str().unwrap_or("?"));
    let versions = doc["versions"].as_array().cloned().unwrap_or_default();
    let mut lines = vec![format!(
        "{path} has {} in the backup of {job}:",
        count(versions.len() as u64, "kept version", "kept versions")
    )];
    lines.push(format!(
        "  {:<18} {:<21} {:<8} {}",
        "ID", "TIME", "EVENT", "SIZE"
    ));
    for v in &versions {
        let size = match (v["type"].as_str(), v["size"].as_u64()) {
            (Some("dir"), Some(b)) => format!(
                "{} in {}",
                bytes(b),
                files(v["files"].as_u64().unwrap_or(0))
            ),
            (Some("symlink"), _) => "symlink".to_string(),
            (_, Some(b)) => bytes(b),
            (_, None) => "-".to_string(),
        };
        lines.push(format!(
            "  {:<18} {:<21} {:<8} {}",
            text(v, "id"),
            text(v, "time"),
            text(v, "event"),
            size
        ));
    }
    lines.push(format!(
        "Each version is exactly what `{}` restores, ID being its run (a deleted one: the run before).",
        escape(doc["restore"].as_str().unwrap_or("ciphersync restore JOB --to DIR --snapshot ID PATH"))
    ));
    lines
}

/// `diff`: a sentence with the counts, then one line per path.
pub fn diff_lines(doc: &Value) -> Vec<String> {
    let lists = ["added", "deleted", "changed"]
        .map(|k| (k, doc[k].as_array().cloned().unwrap_or_default()));
    let total: usize = lists.iter().map(|(_, l)| l.len()).sum();
    let mut lines = vec![format!(
        "from {} to {} in {}: {} ({} added, {} deleted, {} changed)",
        escape(text(doc, "from")),
        escape(text(doc, "to")),
        escape(text(doc, "job")),
        count(total as u64, "change", "changes"),
        lists[0].1.len(),
        lists[1].1.len(),
        lists[2].1.len(),
    )];
    for (what, list) in &lists {
        for item in list {
            let slash = if item["type"] == "dir" { "/" } else { "" };
            let note = if item["decrypted"] == false {
                " (encrypted name: gocryptfs cannot decrypt it without the file in the source)"
            } else {
                ""
            };
            lines.push(format!(
                "  {what}: {}{slash}{note}",
                escape(item["path"].as_str().unwrap_or("?"))
            ));
        }
    }
    lines
}

/// The warning for a known bug of the installed gocryptfs (about.rs).
pub fn gocryptfs_bug_line(release: [u32; 3], bug: &crate::about::GocryptfsBug) -> String {
    let [a, b, c] = release;
    let scope = if bug.with_exclude {
        " (jobs with exclude patterns)"
    } else {
        ""
    };
    format!(
        "gocryptfs {a}.{b}.{c} has a reverse-mode bug that damages backups{scope}, gocryptfs issue {}: {}; {}",
        bug.issue, bug.what, bug.fix
    )
}

/// When `gocryptfs -version` names no release this can compare.
pub fn gocryptfs_unknown_version(version: &str) -> String {
    format!(
        "cannot tell the gocryptfs release from its version {:?}: its known reverse-mode bugs (fixed in 2.5.0 and after 2.6.1) are not checked",
        escape(version)
    )
}

/// `key export`, on stderr before the key: what the output is.
pub fn key_export_warning(job: &str) -> String {
    format!(
        "ciphersync: warning: the output below is the master key of job {}: with it anyone can read every backup of the job, without the password. Print it or write it down, keep it offline, and clear the screen and any copy.",
        escape(job)
    )
}

/// `key export` (`doc` as `key export --json` prints it): the key, then
/// the commands that read the backup with it alone.
pub fn key_export_lines(doc: &Value) -> Vec<String> {
    let job = escape(text(doc, "job"));
    let mut lines = vec![
        format!("gocryptfs master key of ciphersync job {job}:"),
        String::new(),
        format!("    {}", text(doc, "master_key")),
        String::new(),
        "To read the backup with this key alone (no password, no config file), type the key when gocryptfs asks for it (-masterkey=stdin keeps it off the command line):".to_string(),
    ];
    if let Some(line) = doc["mount_remote"].as_str() {
        lines.push("  mkdir -p /mnt/remote /mnt/plain".to_string());
        lines.push(format!("  {}", escape(line)));
    } else {
        lines.push("  mkdir -p /mnt/plain".to_string());
    }
    lines.push(format!("  {}", escape(text(doc, "read_files"))));
    lines.push("  cp -a /mnt/plain/. /srv/restored/".to_string());
    lines.push(format!(
        "  fusermount3 -u /mnt/plain{}",
        if doc["mount_remote"].is_string() {
            "; fusermount3 -u -z /mnt/remote"
        } else {
            ""
        }
    ));
    lines.push("What run ID replaced or deleted (see `ciphersync snapshots`):".to_string());
    lines.push(format!("  {}", escape(text(doc, "read_snapshot"))));
    lines
}

/// `key check` (`doc` as `key check --json` prints it).
pub fn key_check_lines(doc: &Value) -> Vec<String> {
    let n = |k: &str| number(doc, k);
    let compared = match (n("equal_to_source"), n("differ_from_source")) {
        (0, 0) => "none of them could be compared with the source (not there, or changed since)"
            .to_string(),
        (equal, 0) => format!("{equal} equal to the source"),
        (equal, differ) => {
            format!("{equal} equal to the source, {differ} different (changed since the backup?)")
        }
    };
    vec![format!(
        "the master key opens the backup of {} ({}): {} decrypted, {} read and authenticated, {compared}",
        escape(text(doc, "job")),
        escape(text(doc, "target")),
        count(n("names"), "name", "names"),
        files(n("files_read")),
    )]
}

/// `mount` in the foreground, once everything is mounted (to stderr).
pub fn browse_waiting(doc: &Value) -> String {
    format!(
        "{} of job {} is mounted read-only at {}; Ctrl-C unmounts it",
        what_is_browsed(doc),
        escape(doc["job"].as_str().unwrap_or("")),
        escape(doc["dir"].as_str().unwrap_or(""))
    )
}

fn what_is_browsed(doc: &Value) -> String {
    match doc["snapshot"].as_str() {
        Some(id) => format!("run {}", escape(id)),
        None => "the latest state".to_string(),
    }
}

/// `mount`'s result: still mounted (--background) or unmounted again.
pub fn mount_lines(doc: &Value) -> Vec<String> {
    let job = escape(doc["job"].as_str().unwrap_or(""));
    let dir = escape(doc["dir"].as_str().unwrap_or(""));
    if doc["background"].as_bool() == Some(true) {
        let mut lines = vec![format!(
            "{} of job {job} is mounted read-only at {dir}; `ciphersync umount {job} {dir}` unmounts it",
            what_is_browsed(doc)
        )];
        if doc["snapshot"].is_string() {
            lines.push(
                "until then the job's backups, verifies and prunes find its lock held (exit 75)"
                    .to_string(),
            );
        }
        return lines;
    }
    vec![format!("unmounted {dir}")]
}

pub fn umount_lines(doc: &Value) -> Vec<String> {
    let done = doc["unmounted"].as_array().cloned().unwrap_or_default();
    if done.is_empty() {
        return vec![format!(
            "job {} has nothing mounted by `ciphersync mount`",
            escape(doc["job"].as_str().unwrap_or(""))
        )];
    }
    done.iter()
        .map(|d| format!("unmounted {}", escape(d["dir"].as_str().unwrap_or(""))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn space_is_shown_with_its_warning() {
        assert_eq!(bytes_short(512), "512 B");
        assert_eq!(bytes_short(1536), "1.5 KiB");
        assert_eq!(bytes_short(100 * 1024 * 1024 * 1024), "100.0 GiB");
        let doc = json!({"job": "docs", "stages": {}, "target_space": {
            "measured_at": "2026-11-29T03:00:00Z", "size_bytes": 1u64 << 30, "used_bytes": 0,
            "free_bytes": 50u64 << 20, "free_percent": 4.9, "warning_percent": 10, "low": true}});
        let lines = status_lines(&[doc]);
        assert_eq!(
            lines.last().unwrap(),
            "docs             target space: 50.0 MiB free of 1.0 GiB (4.9 %), measured \
             2026-11-29T03:00:00Z; WARNING: below 10 % free (target.space_warning_percent)"
        );
        let unknown = json!({"job": "docs", "stages": {}, "target_space": {
            "measured_at": "2026-11-29T03:00:00Z", "size_bytes": null, "free_bytes": null}});
        assert!(
            status_lines(&[unknown])
                .last()
                .unwrap()
                .contains("target space unknown")
        );
    }

    #[test]
    fn counts_take_the_right_word() {
        assert_eq!(files(0), "0 files");
        assert_eq!(files(1), "1 file");
        assert_eq!(files(2), "2 files");
        assert_eq!(count(1, "snapshot dir", "snapshot dirs"), "1 snapshot dir");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape("a\x1b[31mb\nc\\d\u{9b}e\u{7f}"),
            "a\\x1b[31mb\\nc\\\\d\\u{9b}e\\x7f"
        );
        assert_eq!(escape("Grüße"), "Grüße");
    }

    #[test]
    fn dry_run_prune_lists_what_it_would_delete() {
        let result = json!({"outcome": "ok", "stats": {
            "dry_run": true, "records": ["20260101T000000Z"], "snapshot_dirs": ["20260101T000000Z", "20260102T000000Z"]}});
        let (out, err) = result_lines("docs", Stage::Prune, &result);
        assert!(err.is_empty(), "a dry run printed an error: {err:?}");
        assert_eq!(
            out,
            [
                "prune of docs (dry run): would delete 1 record and 2 snapshot dirs:",
                "  records/20260101T000000Z.rec",
                "  snapshots/20260101T000000Z/",
                "  snapshots/20260102T000000Z/",
            ]
        );
    }

    #[test]
    fn a_partial_backup_says_what_it_could_not_read() {
        let result = json!({"outcome": "partial", "error": null, "stats": {
            "files": 2, "transferred": 2, "bytes_transferred": 100, "deleted": 0,
            "snapshot": "20261129T030000Z",
            "unreadable": ["docs/a\u{1b}.txt (Permission denied (13))"]}});
        let (out, err) = result_lines("docs", Stage::Backup, &result);
        assert_eq!(
            out,
            [
                "backup of docs partial: 2 files in the backup; 2 files sent (100 bytes encrypted), 0 files deleted; snapshot 20261129T030000Z"
            ]
        );
        assert_eq!(err.len(), 2, "{err:?}");
        assert!(err[0].contains("could not read 1 entry"), "{err:?}");
        assert_eq!(
            err[1],
            "  unreadable: docs/a\\x1b.txt (Permission denied (13))"
        );
        let doc = json!({"job": "docs", "stages": {"backup": result}});
        let rows = status_lines(&[doc]);
        assert!(
            rows[1].contains(" partial ") && rows[1].contains("could not read: docs/a\\x1b.txt"),
            "{rows:?}"
        );
    }

    #[test]
    fn a_hostile_name_in_a_difference_is_escaped() {
        let result = json!({"outcome": "mismatch", "stats": {
            "files": 1, "missing": [], "extra": ["\u{1b}]0;pwned\u{7}"], "changed": []}});
        let (out, _) = result_lines("docs", Stage::Verify, &result);
        assert_eq!(
            out,
            [
                "verify of docs found 1 difference: 1 file in the backup",
                "  extra: \\x1b]0;pwned\\x07"
            ]
        );
    }

    #[test]
    fn log_and_diff_lines_escape_names_and_count() {
        let doc = json!({"job": "docs", "path": "a\u{1b}b", "restore": "ciphersync restore docs --to DIR --snapshot ID 'a\u{1b}b'",
            "versions": [{"id": "20260101T000000Z", "time": "2026-01-01T00:00:00Z", "event": "oldest", "type": "file", "size": 1}]});
        let lines = log_lines(&doc);
        assert_eq!(
            lines[0],
            "a\\x1bb has 1 kept version in the backup of docs:"
        );
        assert_eq!(
            lines[2],
            "  20260101T000000Z   2026-01-01T00:00:00Z  oldest   1 byte"
        );
        assert!(!lines.concat().contains('\u{1b}'), "{lines:?}");
        let diff = json!({"job": "docs", "from": "20260101T000000Z", "to": "20260102T000000Z",
            "added": [{"path": "d", "type": "dir", "decrypted": true}], "deleted": [], "changed": [{"path": "x\ny", "type": "file", "decrypted": true}]});
        assert_eq!(
            diff_lines(&diff),
            [
                "from 20260101T000000Z to 20260102T000000Z in docs: 2 changes (1 added, 0 deleted, 1 changed)",
                "  added: d/",
                "  changed: x\\ny",
            ]
        );
    }

    #[test]
    fn a_job_that_never_ran_says_what_to_run() {
        let lines = status_lines(&[json!({"job": "docs"})]);
        assert_eq!(
            lines[1],
            "docs             no run recorded yet: start with `ciphersync backup docs`"
        );
    }
}
