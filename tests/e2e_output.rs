//! What a person reads: sentences with the right count word, one count of
//! the same files across backup, verify, deep verify, snapshots and
//! restore, a job that never ran saying what to run, a dry-run prune
//! listing what it would delete, and `--to` given the backed-up root's mode.

mod common;

use common::*;
use serde_json::json;
use std::fs;
use std::os::unix::fs::PermissionsExt;

/// Three regular files, a symlink and an empty directory: the user's
/// files are the three regular files.
fn three_files(source: &std::path::Path) {
    fs::create_dir_all(source.join("docs/empty")).unwrap();
    fs::write(source.join("a.txt"), "alpha\n").unwrap();
    fs::write(source.join("docs/b.txt"), "beta\n").unwrap();
    fs::write(source.join("docs/c.txt"), "gamma\n").unwrap();
    std::os::unix::fs::symlink("a.txt", source.join("link")).unwrap();
    fs::set_permissions(source, fs::Permissions::from_mode(0o750)).unwrap();
}

fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

#[test]
fn a_job_that_never_ran_says_so_and_what_to_run() {
    if !require_tools("never_ran", &["gocryptfs", "fusermount3"]) {
        return;
    }
    let job = Job::local("never-ran").build();
    let status = job.ok(&["status"]);
    let line = line_with(&status.stdout, "no run recorded yet");
    assert!(
        line.contains(&format!("ciphersync backup {}", job.name)),
        "status of a job that never ran should name the command to run: {line}"
    );
    let snapshots = job.ok(&["snapshots"]);
    let line = line_with(&snapshots.stdout, "has no snapshots yet");
    assert!(
        line.contains("ciphersync backup"),
        "snapshots of a job that never ran should name the command to run: {line}"
    );
}

#[test]
fn every_stage_counts_the_same_files_in_sentences() {
    if !require_tools("same_counts", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("same-counts").build();
    three_files(&job.source);
    job.ok(&["init"]);

    let backup = job.ok(&["backup"]);
    let line = line_with(&backup.stdout, "backup of");
    assert!(
        line.contains("ok: 3 files in the backup; 3 files sent"),
        "backup line: {line}"
    );
    let verify = job.ok(&["verify"]);
    let line = line_with(&verify.stdout, "verify of");
    assert!(line.contains("ok: 3 files match"), "verify line: {line}");
    let deep = job.ok(&["verify", "--deep"]);
    let line = line_with(&deep.stdout, "deep verify of");
    assert!(
        line.contains("ok: 3 files match"),
        "deep verify line: {line}"
    );

    let (_, v) = job.run_json(&["verify"]);
    assert_eq!(json_stats(&v, "verify")["files"], 3, "verify --json: {v}");
    let (_, v) = job.run_json(&["snapshots"]);
    let rows = v["snapshots"].as_array().expect("snapshots --json rows");
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["files"], 3, "snapshots --json: {v}");
    // `changed` is the record's: files and symlinks created, changed or
    // deleted (three files and one symlink, all new).
    assert_eq!(rows[0]["changed"], 4, "snapshots --json: {v}");

    let to = job.root.join("restored");
    let restore = job.ok(&["restore", "--to", to.to_str().unwrap()]);
    let line = line_with(&restore.stdout, "restored");
    assert!(
        line.starts_with("restored 3 files ("),
        "restore line: {line}"
    );
    let mode = fs::metadata(&to).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o750, "--to should get the backed-up root's mode");

    let one = job.root.join("one");
    let restore = job.ok(&["restore", "--to", one.to_str().unwrap(), "docs/b.txt"]);
    let line = line_with(&restore.stdout, "restored");
    assert!(
        line.starts_with("restored 1 file ("),
        "restore of one file: {line}"
    );
    let mode = fs::metadata(&one).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        mode, 0o750,
        "--to of a partial restore should get the root's mode"
    );

    // A second run, then a retention that keeps only it: the first run's
    // record is what a prune would delete.
    fs::write(job.source.join("a.txt"), "alpha, changed\n").unwrap();
    job.ok(&["backup"]);
    let mut config = job.config.clone();
    config["snapshots"] = json!({ "keep_last": 1 });
    fs::write(&job.config_file, config.to_string()).unwrap();
    let first = rows[0]["id"].as_str().unwrap();
    let dry = job.ok(&["prune", "--dry-run"]);
    let head = line_with(&dry.stdout, "prune of");
    assert!(
        head.contains("(dry run): would delete 1 record and "),
        "dry-run prune: {head}"
    );
    let listed: Vec<&str> = dry.stdout.lines().filter(|l| l.starts_with("  ")).collect();
    assert!(
        listed.contains(&format!("  records/{first}.rec").as_str()),
        "dry-run prune should list the record it would delete:\n{}",
        dry.stdout
    );
    for entry in &listed {
        let path = job.target_path.join(entry.trim());
        assert!(
            path.exists(),
            "a dry run deleted (or listed a missing) {entry}"
        );
    }
    let dirs = listed.iter().filter(|l| l.contains("snapshots/")).count();
    assert!(
        head.contains(&format!("and {dirs} snapshot dir")),
        "the header should count the {dirs} listed snapshot dirs: {head}"
    );
    job.assert_clean();
}
