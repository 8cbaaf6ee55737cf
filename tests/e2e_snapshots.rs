//! Issue 3 end to end: point-in-time restore of every snapshot, plain
//! gocryptfs on a snapshot dir, retention, the deletion guard and an
//! interrupted run. Real sshd (harness), gocryptfs, sshfs and rsync.
//!
//! The trees here are small (a few KB) except in the interrupt test.
//! Every mutation changes file sizes, so rsync's size+mtime quick check
//! cannot miss a change made within the same second as the last backup.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Private helpers
// ---------------------------------------------------------------------------

const REVERSE_CONF: &str = ".gocryptfs.reverse.conf";

/// What the strict comparison looks at for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File { mode: u32, len: u64, sha1: String },
    Dir { mode: u32 },
    Link { target: PathBuf },
    Other { mode: u32 },
}

/// Every entry under `root` (root itself excluded), by relative path, without
/// following symlinks. The reverse config at the root is not part of a backup.
fn scan(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn rec(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        let rd = fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for e in rd {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if rel == Path::new(REVERSE_CONF) {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let mode = m.mode() & 0o7777;
            let node = if ft.is_symlink() {
                Node::Link {
                    target: fs::read_link(&p).unwrap(),
                }
            } else if ft.is_dir() {
                rec(root, &p, out);
                Node::Dir { mode }
            } else if ft.is_file() {
                Node::File {
                    mode,
                    len: m.len(),
                    sha1: sha1_file(&p),
                }
            } else {
                Node::Other { mode }
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    rec(root, root, &mut out);
    out
}

/// Every difference between two scans: missing and extra paths, kinds,
/// bytes (sha1 + length), permission bits of files and dirs, symlink targets.
fn diff_scans(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let mut diffs = Vec::new();
    let keys: BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), None) => diffs.push(format!("missing {}: {x:?}", k.display())),
            (None, Some(y)) => diffs.push(format!("unexpected {}: {y:?}", k.display())),
            (Some(x), Some(y)) => diffs.push(format!("{}: want {x:?}, got {y:?}", k.display())),
            (None, None) => unreachable!(),
        }
    }
    diffs
}

/// Strict tree comparison; returns the differences instead of panicking.
fn tree_diffs(reference: &Path, restored: &Path) -> Vec<String> {
    diff_scans(&scan(reference), &scan(restored))
}

fn assert_same_tree(reference: &Path, restored: &Path, what: &str) {
    let d = tree_diffs(reference, restored);
    assert!(
        d.is_empty(),
        "{what}: {} differs from {}:\n  {}",
        restored.display(),
        reference.display(),
        d.join("\n  ")
    );
}

/// Appends every difference between `reference` and `restored` to `problems`
/// (so a test can go on checking other things and fail at the end).
fn note_tree_diffs(problems: &mut Vec<String>, reference: &Path, restored: &Path, what: &str) {
    for d in tree_diffs(reference, restored) {
        problems.push(format!("{what}: {d}"));
    }
}

fn fail_if_any(problems: &[String], what: &str) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

/// `cp -a FROM TO` (TO must not exist).
fn cp_a(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

fn write(path: &Path, data: &[u8], mode: u32) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    write_mode(path, data, mode);
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A 200-character file name (gocryptfs stores it as a longname + .name).
fn long_file_name() -> String {
    format!("{}.txt", "l".repeat(196))
}

/// `backup --json` exit 0, outcome ok; returns the snapshot id.
fn backup_id(job: &Job) -> String {
    job.backup_ok()["snapshot"].as_str().unwrap().to_string()
}

/// `snapshots --json` rows (must exit 0).
fn snapshot_rows(job: &Job) -> Vec<Value> {
    let (o, v) = job.run_json(&["snapshots"]);
    o.expect_code(0, "snapshots --json");
    v["snapshots"]
        .as_array()
        .unwrap_or_else(|| panic!("snapshots --json has no `snapshots` array: {v}"))
        .clone()
}

fn snapshot_ids(job: &Job) -> Vec<String> {
    snapshot_rows(job)
        .iter()
        .map(|r| {
            r["id"]
                .as_str()
                .unwrap_or_else(|| panic!("row without id: {r}"))
                .to_string()
        })
        .collect()
}

/// `restore --snapshot ID --to DIR [PATH...] --json`: exit 0, outcome ok.
fn restore_snapshot(job: &Job, id: &str, to: &Path, paths: &[&str]) {
    let mut args = vec!["restore", "--snapshot", id, "--to", to.to_str().unwrap()];
    args.extend_from_slice(paths);
    let (o, v) = job.run_json(&args);
    o.expect_code(0, &format!("restore --snapshot {id} {paths:?}"));
    assert_eq!(json_outcome(&v, "restore"), "ok", "restore --json: {v}");
}

/// Ids with a record in `<target>/records/`.
fn record_ids(job: &Job) -> BTreeSet<String> {
    names_in(&job.target_path.join("records"))
        .into_iter()
        .filter_map(|n| n.strip_suffix(".rec").map(str::to_owned))
        .collect()
}

/// Names of the dirs in `<target>/snapshots/`.
fn snapshot_dir_ids(job: &Job) -> BTreeSet<String> {
    names_in(&job.target_path.join("snapshots"))
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// Relative path -> sha1 (files) / link target / "dir" of everything under `dir`.
fn sha1_map(dir: &Path) -> BTreeMap<String, String> {
    walk(dir)
        .into_iter()
        .map(|(rel, m)| {
            let p = dir.join(&rel);
            let v = if m.file_type().is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else if m.file_type().is_dir() {
                "dir".to_string()
            } else {
                format!("sha1 {}", sha1_file(&p))
            };
            (rel.to_string_lossy().into_owned(), v)
        })
        .collect()
}

fn refused(job: &Job, out: &Out, v: &Value, what: &str) {
    out.expect_code(1, what);
    assert_eq!(json_outcome(v, "backup"), "failed", "{what}: --json {v}");
    let err = if v["error"].is_object() {
        v["error"].clone()
    } else {
        v["stages"]["backup"]["error"].clone()
    };
    assert_eq!(err["kind"], "refused", "{what}: --json error {err}");
    let msg = err["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("--max-delete"),
        "{what}: the message should say how to allow it (--max-delete): {msg:?}"
    );
    let st = job.stage("backup");
    assert_eq!(st["outcome"], "failed", "{what}: status.json {st}");
    assert_eq!(st["error"]["kind"], "refused", "{what}: status.json {st}");
    assert!(
        st["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("--max-delete"),
        "{what}: status.json message: {st}"
    );
}

// ---------------------------------------------------------------------------
// The scenario: an initial tree and four rounds of different changes
// ---------------------------------------------------------------------------

fn initial_tree(src: &Path) {
    write(&src.join("keep/sub/file.txt"), b"file v0\n", 0o644);
    write(
        &src.join("keep/sub/other.txt"),
        b"other stays the same in every run\n",
        0o644,
    );
    write_random_file(&src.join("docs/a.txt"), 5000, 1);
    write_random_file(&src.join("docs/b.txt"), 3000, 2);
    write(&src.join("docs/c/deep.txt"), b"deep\n", 0o644);
    write_random_file(&src.join("old/x.txt"), 4097, 3);
    write(&src.join("old/y/z.txt"), b"zzz\n", 0o644);
    write(&src.join("bin/tool.sh"), b"#!/bin/sh\necho tool\n", 0o755);
    write(&src.join("private/secret.txt"), b"secret\n", 0o600);
    chmod(&src.join("private"), 0o700);
    symlink("docs/a.txt", src.join("link")).unwrap();
    fs::create_dir_all(src.join("empty0")).unwrap();
    write_random_file(&src.join("ünï cödé/spaced name.txt"), 100, 4);
    write(&src.join("zero.bin"), b"", 0o644);
    for p in [
        "docs/a.txt",
        "docs/b.txt",
        "old/x.txt",
        "ünï cödé/spaced name.txt",
    ] {
        chmod(&src.join(p), 0o644);
    }
}

/// Round `n` (1..=4) of changes; each round differs.
fn change_round(src: &Path, n: usize) {
    match n {
        1 => {
            // change a file, delete a file, rename a directory, add an empty
            // dir, a symlink, an executable
            write(&src.join("keep/sub/file.txt"), b"file v1, longer\n", 0o644);
            fs::remove_file(src.join("docs/b.txt")).unwrap();
            fs::rename(src.join("old"), src.join("renamed")).unwrap();
            fs::create_dir_all(src.join("new-empty")).unwrap();
            symlink("renamed/x.txt", src.join("newlink")).unwrap();
            write(&src.join("bin/new.sh"), b"#!/bin/sh\necho new\n", 0o755);
        }
        2 => {
            // rewrite, mode-only change, re-pointed symlink, removed empty
            // dir, empty dir filled, nested rename, long name, dir mode
            write_random_file(&src.join("docs/a.txt"), 6000, 5);
            chmod(&src.join("docs/c/deep.txt"), 0o600);
            fs::remove_file(src.join("link")).unwrap();
            symlink("docs/c/deep.txt", src.join("link")).unwrap();
            fs::remove_dir(src.join("empty0")).unwrap();
            write(
                &src.join("new-empty/now-full.txt"),
                b"not empty now\n",
                0o644,
            );
            fs::rename(src.join("renamed/y"), src.join("renamed/w")).unwrap();
            write_random_file(&src.join("docs").join(long_file_name()), 777, 6);
            chmod(&src.join("docs").join(long_file_name()), 0o644);
            chmod(&src.join("private"), 0o750);
        }
        3 => {
            // file changed again, top-level dir renamed (with the long name
            // in it), dangling symlink, symlink -> file, truncation, mode-only
            // change of an executable
            write(
                &src.join("keep/sub/file.txt"),
                b"file v3, changed once more\n",
                0o644,
            );
            fs::rename(src.join("docs"), src.join("documents")).unwrap();
            symlink("no/such/target", src.join("dangling")).unwrap();
            fs::remove_file(src.join("newlink")).unwrap();
            write(&src.join("newlink"), b"now a regular file\n", 0o644);
            write(&src.join("ünï cödé/spaced name.txt"), b"", 0o644);
            chmod(&src.join("bin/tool.sh"), 0o700);
        }
        4 => {
            // dir -> file (nested and top-level), file -> dir, a path deleted in round 1 comes back
            // with other content, new executable, long name deleted
            fs::remove_dir_all(src.join("renamed/w")).unwrap();
            write(&src.join("renamed/w"), b"w is a file now\n", 0o644);
            // The same at the top level, where the sshfs transport splits
            // the tree between its rsync workers.
            fs::remove_dir_all(src.join("private")).unwrap();
            write(&src.join("private"), b"private is a file now\n", 0o600);
            fs::remove_file(src.join("zero.bin")).unwrap();
            write(&src.join("zero.bin/inside.txt"), b"inside\n", 0o644);
            write(&src.join("docs/b.txt"), b"b is back, different\n", 0o644);
            write(
                &src.join("documents/run.sh"),
                b"#!/bin/sh\necho run\n",
                0o755,
            );
            fs::remove_file(src.join("documents").join(long_file_name())).unwrap();
        }
        _ => unreachable!(),
    }
}

/// Backs up the initial tree and then `rounds` rounds of changes; after each
/// backup copies the source to `<root>/ref<k>`. Returns (id, reference) per run.
fn run_scenario(job: &Job, rounds: usize) -> Vec<(String, PathBuf)> {
    initial_tree(&job.source);
    job.ok(&["init"]);
    let mut runs = Vec::new();
    for k in 0..=rounds {
        if k > 0 {
            change_round(&job.source, k);
        }
        let id = backup_id(job);
        let reference = job.root.join(format!("ref{k}"));
        cp_a(&job.source, &reference);
        runs.push((id, reference));
    }
    runs
}

/// Restores every snapshot that `snapshots --json` lists and compares it with
/// its reference; returns every difference (all snapshots are checked before
/// anything fails, so one run shows every broken snapshot).
fn restore_all_and_compare(job: &Job, runs: &[(String, PathBuf)]) -> Vec<String> {
    let listed = snapshot_ids(job);
    let ids: Vec<String> = runs.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        listed, ids,
        "`snapshots --json` should list every run, oldest first"
    );
    let mut problems = Vec::new();
    for (k, id) in listed.iter().enumerate() {
        let reference = &runs.iter().find(|(i, _)| i == id).unwrap().1;
        let to = job.root.join(format!("restore-all-{k}"));
        restore_snapshot(job, id, &to, &[]);
        for d in tree_diffs(reference, &to) {
            problems.push(format!("snapshot {id} (run {k}): {d}"));
        }
    }
    problems
}

/// `restore --snapshot ID --to DIR PATH`: exactly PATH and its parents appear,
/// PATH's subtree equal to the reference.
fn check_path_restore(job: &Job, id: &str, reference: &Path, path: &str, tag: &str) {
    let to = job.root.join(format!("restore-path-{tag}"));
    restore_snapshot(job, id, &to, &[path]);
    let got = scan(&to);
    let want: BTreeMap<PathBuf, Node> = scan(reference)
        .into_iter()
        .filter(|(rel, _)| rel.starts_with(path))
        .collect();
    assert!(
        !want.is_empty(),
        "test bug: {path} not in {}",
        reference.display()
    );
    let parents: BTreeSet<PathBuf> = Path::new(path)
        .ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect();
    let got_paths: BTreeSet<PathBuf> = got.keys().cloned().collect();
    let want_paths: BTreeSet<PathBuf> = want
        .keys()
        .cloned()
        .chain(parents.iter().cloned())
        .collect();
    assert_eq!(
        got_paths, want_paths,
        "restore --snapshot {id} {path}: only {path} and its parents should appear"
    );
    for p in &parents {
        assert!(
            matches!(got[p], Node::Dir { .. }),
            "parent {} is not a dir: {:?}",
            p.display(),
            got[p]
        );
    }
    let got_sub: BTreeMap<PathBuf, Node> = got
        .into_iter()
        .filter(|(rel, _)| rel.starts_with(path))
        .collect();
    let d = diff_scans(&want, &got_sub);
    assert!(
        d.is_empty(),
        "restore --snapshot {id} {path}:\n  {}",
        d.join("\n  ")
    );
}

fn full_cycle(job: &Job, rounds: usize) {
    let runs = run_scenario(job, rounds);
    let rows = snapshot_rows(job);
    for r in &rows {
        let id = r["id"].as_str().unwrap_or("");
        assert!(is_snapshot_id(id), "bad id in row {r}");
        for k in ["time", "files", "bytes", "changed"] {
            assert!(!r[k].is_null(), "snapshots row without {k}: {r}");
        }
    }
    let problems = restore_all_and_compare(job, &runs);
    // A named file from the first run (its dir was renamed in round 1), and a
    // named directory from the second run.
    check_path_restore(job, &runs[0].0, &runs[0].1, "old/y/z.txt", "file");
    check_path_restore(job, &runs[1].0, &runs[1].1, "keep/sub", "dir");
    job.assert_clean();
    fail_if_any(
        &problems,
        "restored snapshots differ from the copies taken right after each backup",
    );
}

// ---------------------------------------------------------------------------
// 1. Point-in-time restore of every snapshot
// ---------------------------------------------------------------------------

#[test]
fn every_snapshot_restores_exactly_sftp_sshfs() {
    if !require_tools("every_snapshot_restores_exactly_sftp_sshfs", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("snap-sshfs").build();
    full_cycle(&job, 4);
}

#[test]
fn every_snapshot_restores_exactly_sftp_rsync() {
    if !require_tools("every_snapshot_restores_exactly_sftp_rsync", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("snap-rsync").transport("rsync").build();
    full_cycle(&job, 2);
}

#[test]
fn every_snapshot_restores_exactly_local() {
    if !require_tools("every_snapshot_restores_exactly_local", LOCAL_TOOLS) {
        return;
    }
    let job = Job::local("snap-local").build();
    full_cycle(&job, 2);
}

// ---------------------------------------------------------------------------
// 2. A snapshot dir is a gocryptfs dir of its own
// ---------------------------------------------------------------------------

#[test]
fn plain_gocryptfs_mounts_a_snapshot_dir() {
    if !require_tools("plain_gocryptfs_mounts_a_snapshot_dir", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("snap-plain").build();
    let runs = run_scenario(&job, 3);
    let mut problems = Vec::new();
    for k in 1..runs.len() {
        let (id, _) = &runs[k];
        let before = &runs[k - 1].1; // snapshots/<run k> holds the state after run k-1
        let dir = job.target_path.join("snapshots").join(id);
        assert!(
            dir.is_dir(),
            "run {k} changed files but {} is missing",
            dir.display()
        );
        let mnt = job.root.join(format!("plain-{k}"));
        {
            let m = ManualMount::new(&dir, &job.password_file, &mnt);
            // The file the brief names: its parent keep/sub did not change in
            // runs 1 and 3, only the file did.
            if k == 1 || k == 3 {
                let got = fs::read(m.mnt.join("keep/sub/file.txt"))
                    .unwrap_or_else(|e| panic!("read keep/sub/file.txt in snapshot {id}: {e}"));
                assert_eq!(
                    got,
                    fs::read(before.join("keep/sub/file.txt")).unwrap(),
                    "keep/sub/file.txt in snapshot dir {id}"
                );
                assert!(
                    fs::symlink_metadata(m.mnt.join("keep/sub/other.txt")).is_err(),
                    "unchanged keep/sub/other.txt should not be in snapshot dir {id}"
                );
            }
            if k == 3 {
                // docs/ (with the long name) was renamed away in run 3.
                let long = format!("docs/{}", long_file_name());
                assert_eq!(
                    fs::read(m.mnt.join(&long)).unwrap_or_else(|e| panic!("read {long}: {e}")),
                    fs::read(before.join(&long)).unwrap(),
                    "{long} in snapshot dir {id}"
                );
            }
            // Every file and symlink in it is the version right before run k.
            let ref_scan = scan(before);
            for (rel, node) in scan(&m.mnt) {
                if matches!(node, Node::Dir { .. }) {
                    continue;
                }
                match ref_scan.get(&rel) {
                    Some(want) if *want == node => {}
                    Some(want) if matches!((want, &node), (Node::File { sha1: a, .. }, Node::File { sha1: b, .. }) if a == b) =>
                    {
                        // same bytes, mode differs: not a content problem here
                    }
                    want => problems.push(format!(
                        "snapshot dir {id}: {} is {node:?}, before run {k} it was {want:?}",
                        rel.display()
                    )),
                }
            }
        }
        assert_no_mounts_under(&mnt);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    job.assert_clean();
}

// ---------------------------------------------------------------------------
// 3. Retention
// ---------------------------------------------------------------------------

#[test]
fn retention_keep_last_two_end_to_end() {
    if !require_tools("retention_keep_last_two_end_to_end", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("snap-keep")
        .set("snapshots", json!({ "keep_last": 2, "keep_days": null }))
        .build();
    let runs = run_scenario(&job, 3);
    let ids: Vec<String> = runs.iter().map(|(id, _)| id.clone()).collect();

    assert_eq!(
        snapshot_ids(&job),
        ids[2..].to_vec(),
        "keep_last 2 should list exactly the newest two runs"
    );
    let records = record_ids(&job);
    assert_eq!(
        records,
        ids[2..].iter().cloned().collect::<BTreeSet<_>>(),
        "records/ after keep_last 2"
    );
    let dirs = snapshot_dir_ids(&job);
    for old in &ids[..2] {
        assert!(
            !dirs.contains(old),
            "snapshot dir {old} of a dropped run is still there: {dirs:?}"
        );
    }
    assert!(
        dirs.contains(&ids[3]),
        "snapshot dir of the newest run (needed to rebuild the run before) is gone: {dirs:?}"
    );
    let mut problems = Vec::new();
    for (k, (id, reference)) in runs.iter().enumerate().skip(2) {
        let to = job.root.join(format!("kept-{k}"));
        restore_snapshot(&job, id, &to, &[]);
        note_tree_diffs(
            &mut problems,
            reference,
            &to,
            &format!("kept run {k} ({id})"),
        );
    }
    let to = job.root.join("dropped");
    let o = job.run(&[
        "restore",
        "--snapshot",
        &ids[0],
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_ne!(
        o.code,
        0,
        "restore of a pruned snapshot should fail\n{}",
        o.dump()
    );

    // Tighter bound in the job file: dry run lists, deletes nothing.
    let mut config = job.config.clone();
    config["snapshots"] = json!({ "keep_last": 1, "keep_days": null });
    fs::write(
        &job.config_file,
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    let before = (record_ids(&job), snapshot_dir_ids(&job));
    let (o, v) = job.run_json(&["prune", "--dry-run"]);
    o.expect_code(0, "prune --dry-run");
    let stats = json_stats(&v, "prune");
    assert_eq!(stats["dry_run"], true, "{v}");
    assert_eq!(
        str_list(&stats["records"]),
        vec![ids[2].clone()],
        "dry run records: {v}"
    );
    let would_go = str_list(&stats["snapshot_dirs"]);
    assert!(
        !would_go.is_empty(),
        "dry run: no snapshot dir would go: {v}"
    );
    let too_new: Vec<&String> = would_go.iter().filter(|d| **d > ids[3]).collect();
    assert!(
        too_new.is_empty(),
        "dry run: snapshot dirs newer than {} would go: {too_new:?}: {v}",
        ids[3]
    );
    assert_eq!(
        (record_ids(&job), snapshot_dir_ids(&job)),
        before,
        "prune --dry-run deleted something"
    );
    for d in &would_go {
        assert!(
            job.target_path.join("snapshots").join(d).is_dir(),
            "{d} gone after dry run"
        );
    }
    assert_eq!(
        snapshot_ids(&job),
        ids[2..].to_vec(),
        "dry run changed the listing"
    );

    // The real prune does what the dry run said.
    let (o, v) = job.run_json(&["prune"]);
    o.expect_code(0, "prune");
    assert_eq!(
        str_list(&json_stats(&v, "prune")["records"]),
        vec![ids[2].clone()]
    );
    assert_eq!(snapshot_ids(&job), vec![ids[3].clone()]);
    for d in &would_go {
        assert!(
            !job.target_path.join("snapshots").join(d).exists(),
            "{d} still there after prune"
        );
    }
    let to = job.root.join("after-prune");
    restore_snapshot(&job, &ids[3], &to, &[]);
    note_tree_diffs(&mut problems, &runs[3].1, &to, "newest run after prune");

    // keep_days 1 keeps every run made today: nothing to prune.
    config["snapshots"] = json!({ "keep_last": null, "keep_days": 1 });
    fs::write(
        &job.config_file,
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    let (o, v) = job.run_json(&["prune", "--dry-run"]);
    o.expect_code(0, "prune --dry-run keep_days 1");
    assert_eq!(
        str_list(&json_stats(&v, "prune")["records"]),
        Vec::<String>::new(),
        "{v}"
    );
    job.assert_clean();
    fail_if_any(&problems, "kept runs do not restore exactly");
}

// ---------------------------------------------------------------------------
// 4. Deletion guard
// ---------------------------------------------------------------------------

/// Ten small files, five in each of two directories.
fn ten_files(src: &Path) {
    for d in ["alpha", "beta"] {
        for i in 0..5 {
            write(
                &src.join(d).join(format!("f{i}.txt")),
                format!("{d} {i}\n").as_bytes(),
                0o644,
            );
        }
    }
}

#[test]
fn guard_refuses_emptied_source_and_leaves_mirror_untouched() {
    if !require_tools("guard_refuses_emptied_source", SFTP_TOOLS) {
        return;
    }
    // Config outside the source, so the source can be emptied completely
    // (as an unmounted mount point would be).
    let job = Job::sftp("guard-empty")
        .gocryptfs_config_in_state_dir()
        .build();
    ten_files(&job.source);
    job.ok(&["init"]);
    backup_id(&job);
    let files_before = sha1_map(&job.files_dir());
    let records_before = record_ids(&job);
    let dirs_before = snapshot_dir_ids(&job);

    for e in fs::read_dir(&job.source).unwrap() {
        let p = e.unwrap().path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
    assert_eq!(fs::read_dir(&job.source).unwrap().count(), 0);
    let (o, v) = job.run_json(&["backup"]);
    refused(&job, &o, &v, "backup of an emptied source");
    assert_digests_equal(&files_before, &sha1_map(&job.files_dir()), "remote files/");
    assert_eq!(
        record_ids(&job),
        records_before,
        "a refused run wrote a record"
    );
    assert_eq!(
        snapshot_dir_ids(&job),
        dirs_before,
        "a refused run made a snapshot dir"
    );
    job.assert_clean();
}

#[test]
fn guard_refuses_mass_deletion_until_overridden() {
    if !require_tools("guard_refuses_mass_deletion", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("guard-mass").build();
    ten_files(&job.source);
    job.ok(&["init"]);
    let first = backup_id(&job);
    let reference = job.root.join("ref-first");
    cp_a(&job.source, &reference);
    let files_before = sha1_map(&job.files_dir());

    // 6 of the 10 files (60%), the directories stay.
    for (d, i) in [
        ("alpha", 0),
        ("alpha", 1),
        ("alpha", 2),
        ("beta", 0),
        ("beta", 1),
        ("beta", 2),
    ] {
        fs::remove_file(job.source.join(d).join(format!("f{i}.txt"))).unwrap();
    }
    let (o, v) = job.run_json(&["backup"]);
    refused(&job, &o, &v, "backup after deleting 60% of the files");
    assert_digests_equal(&files_before, &sha1_map(&job.files_dir()), "remote files/");
    assert_eq!(snapshot_ids(&job), vec![first.clone()]);

    // The override lets it through.
    let (o, v) = job.run_json(&["backup", "--max-delete", "100"]);
    o.expect_code(0, "backup --max-delete 100");
    assert_eq!(json_outcome(&v, "backup"), "ok", "{v}");
    let second = json_stats(&v, "backup")["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(snapshot_ids(&job), vec![first.clone(), second.clone()]);
    // The deleted files went into the snapshot: the first run still restores.
    let to = job.root.join("restore-first");
    restore_snapshot(&job, &first, &to, &[]);
    assert_same_tree(&reference, &to, "first run after the override");
    let to = job.root.join("restore-second");
    restore_snapshot(&job, &second, &to, &[]);
    assert_same_tree(&job.source, &to, "second run");
    job.assert_clean();
}

const GUARD_SKIPPED: &str = "no deletion guard needed";
const NOTHING_TO_SEND: &str = "as the last backup left them: nothing to send";

/// `backup --verbose`: whether it compared the view with files/ (ran
/// rsync, or through sshfs listed files/ for the change set, which runs
/// rsync only where something differs), and its stderr.
fn backup_verbose(job: &Job) -> (bool, String) {
    let o = job.ok(&["--verbose", "backup"]);
    let compared = o.stderr.contains("run: rsync ") || o.stderr.contains("change set: ");
    (compared, o.stderr)
}

/// A source with the fingerprint of the last backup needs no deletion
/// guard (nothing in it moved); a killed run in between, or any change,
/// brings the guard back. On a local target (no server shell, so no stamps
/// of files/) the view is still mounted and rsync still runs.
#[test]
fn guard_is_skipped_only_while_the_source_is_unchanged() {
    if !require_tools("guard_is_skipped_only_while_unchanged", SFTP_TOOLS) {
        return;
    }
    let job = Job::local("guard-skip-local").build();
    ten_files(&job.source);
    job.ok(&["init"]);
    backup_id(&job);
    let (_, stderr) = backup_verbose(&job);
    assert!(
        !stderr.contains(GUARD_SKIPPED),
        "a fresh source skipped the guard"
    );
    // From here on the tree counts as settled (CIPHERSYNC_SETTLE_MS=0).
    job.trust_stamps(true);
    job.ok(&["backup"]);
    let (mounted, stderr) = backup_verbose(&job);
    assert!(
        mounted,
        "unchanged source on a local target: rsync did not run (it still should): {stderr}"
    );
    assert!(
        stderr.contains(GUARD_SKIPPED),
        "unchanged source: stderr lacks {GUARD_SKIPPED:?}: {stderr}"
    );

    // A killed run in between: the target may hold more than the last
    // record says.
    fs::write(job.state_dir.join("backup.incomplete"), "x").unwrap();
    let (_, stderr) = backup_verbose(&job);
    assert!(
        !stderr.contains(GUARD_SKIPPED),
        "after a killed run: {stderr}"
    );

    for i in 0..4 {
        fs::remove_file(job.source.join("alpha").join(format!("f{i}.txt"))).unwrap();
    }
    fs::remove_file(job.source.join("beta/f0.txt")).unwrap();
    fs::remove_file(job.source.join("beta/f1.txt")).unwrap();
    let (o, v) = job.run_json(&["backup"]);
    refused(
        &job,
        &o,
        &v,
        "backup after deleting 60% of an unchanged source",
    );
    job.assert_clean();
}

/// The gocryptfs release each backup records, and what the next run makes
/// of it (guard.rs, GocryptfsChange). With the gocryptfs installed here
/// the release is written to last-backup.json; a last backup that says it
/// ran with 2.4.0 is then, for a gocryptfs of 2.5.0 or later, an upgrade
/// past 2.5.0: one note line, and rsync runs although the source is
/// unchanged (the diriv and .name files of the view moved); for an older
/// gocryptfs nothing changes and the unchanged run sends nothing.
#[test]
fn a_gocryptfs_upgrade_past_2_5_0_is_noted_and_synced() {
    if !require_tools("gocryptfs_upgrade", SFTP_TOOLS) {
        return;
    }
    let version = Command::new("gocryptfs").arg("-version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let installed = ciphersync::about::gocryptfs_release(&version)
        .unwrap_or_else(|| panic!("no release in `gocryptfs -version`: {version}"));
    let job = Job::sftp("gocryptfs-upgrade").transport("rsync").build();
    ten_files(&job.source);
    job.ok(&["init"]);
    backup_id(&job);
    job.trust_stamps(true);
    backup_verbose(&job);
    let last_path = job.state_dir.join("last-backup.json");
    let last: Value = serde_json::from_str(&fs::read_to_string(&last_path).unwrap()).unwrap();
    assert_eq!(
        last["gocryptfs_release"],
        serde_json::json!(installed),
        "last-backup.json: {last}"
    );

    let note = "gocryptfs went from 2.4.0 to";
    let mut older = last.clone();
    older["gocryptfs_release"] = serde_json::json!([2, 4, 0]);
    fs::write(&last_path, older.to_string()).unwrap();
    let (mounted, stderr) = backup_verbose(&job);
    if installed >= [2, 5, 0] {
        assert!(mounted, "after the upgrade rsync did not run: {stderr}");
        assert!(
            stderr.contains(note) && !stderr.contains(NOTHING_TO_SEND),
            "after the upgrade: {stderr}"
        );
    } else {
        eprintln!(
            "gocryptfs_upgrade: gocryptfs {installed:?} is older than 2.5.0 here: only the \
             no-upgrade side is checked"
        );
        assert!(!stderr.contains(note), "no upgrade: {stderr}");
        assert!(
            !mounted && stderr.contains(NOTHING_TO_SEND),
            "no upgrade, unchanged source: {stderr}"
        );
    }
    // The run recorded the release it ran with: the next one is quiet.
    let (mounted, stderr) = backup_verbose(&job);
    assert!(
        !mounted && !stderr.contains(note) && stderr.contains(NOTHING_TO_SEND),
        "the run after: {stderr}"
    );
    job.assert_clean();
}

/// Where the server's shell may be used, a backup whose source and target
/// are both as the last backup left them (source fingerprint, stamps of
/// files/) runs no rsync: it writes its record (a copy of the last one's
/// entries) and is done. Any change on the server (a touched
/// mtime, a deleted file) brings the full run back, which repairs it.
#[test]
fn an_unchanged_source_and_target_are_not_synced_again() {
    if !require_tools("unchanged_source_and_target", SFTP_TOOLS) {
        return;
    }
    for transport in ["rsync", "sshfs"] {
        let job = Job::sftp(&format!("unchanged-{transport}"))
            .transport(transport)
            .build();
        ten_files(&job.source);
        job.ok(&["init"]);
        backup_id(&job);
        // From here on the tree counts as settled (CIPHERSYNC_SETTLE_MS=0).
        job.trust_stamps(true);
        let (mounted, _) = backup_verbose(&job);
        assert!(mounted, "{transport}: a run without stamps of the last one");
        let (mounted, stderr) = backup_verbose(&job);
        assert!(
            !mounted,
            "{transport}: the second unchanged run ran rsync: {stderr}"
        );
        assert!(
            stderr.contains(NOTHING_TO_SEND),
            "{transport}: stderr lacks {NOTHING_TO_SEND:?}: {stderr}"
        );
        assert!(
            !stderr.contains("run: rsync"),
            "{transport}: rsync ran: {stderr}"
        );
        // Its record lists the same tree, under its own header.
        let ids: Vec<String> = record_ids(&job).into_iter().collect();
        let records: Vec<String> = ids
            .iter()
            .map(|id| {
                fs::read_to_string(job.target_path.join(format!("records/{id}.rec"))).unwrap()
            })
            .collect();
        let [.., before, last] = records.as_slice() else {
            panic!("fewer than two records")
        };
        let body = |r: &str| r.split_once("\n\n").map(|(_, b)| b.to_string());
        assert_eq!(
            body(last),
            body(before),
            "{transport}: the unchanged run's record"
        );
        let previous_id = &ids[ids.len() - 2];
        assert!(
            last.contains("\nfiles 10\n"),
            "{transport}: the unchanged run's record lacks \"files 10\": {last}"
        );
        assert!(
            !last.contains(previous_id.as_str()),
            "{transport}: the unchanged run's record names the previous id {previous_id}: {last}"
        );

        // A touched mtime on the server: the full run, which fixes it.
        let victim = job.files_dir().join(
            fs::read_dir(job.files_dir())
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.is_dir())
                .unwrap(),
        );
        let victim = fs::read_dir(&victim)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.is_file() && !p.ends_with("gocryptfs.diriv"))
            .unwrap();
        let mtime = fs::metadata(&victim).unwrap().modified().unwrap();
        fs::File::options()
            .write(true)
            .open(&victim)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH)
            .unwrap();
        let (mounted, stderr) = backup_verbose(&job);
        assert!(
            mounted,
            "{transport}, touched: rsync did not run (the full run should): {stderr}"
        );
        assert!(
            stderr.contains(GUARD_SKIPPED),
            "{transport}, touched: stderr lacks {GUARD_SKIPPED:?}: {stderr}"
        );
        assert_eq!(fs::metadata(&victim).unwrap().modified().unwrap(), mtime);
        let (mounted, _) = backup_verbose(&job);
        assert!(
            !mounted,
            "{transport}: the repaired target was not taken as unchanged"
        );

        // A deleted file: the full run sends it again.
        fs::remove_file(&victim).unwrap();
        let (mounted, _) = backup_verbose(&job);
        assert!(
            mounted,
            "{transport}: after a deleted remote file, rsync did not run"
        );
        assert!(
            victim.is_file(),
            "{transport}: the deleted file was not sent again"
        );
        job.verify_ok(false);
        job.assert_clean();
    }
}

#[test]
fn guard_refuses_empty_source_on_first_run() {
    if !require_tools("guard_refuses_empty_source_on_first_run", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("guard-first").build();
    job.ok(&["init"]);
    let (o, v) = job.run_json(&["backup"]);
    refused(&job, &o, &v, "first backup of an empty source");
    assert!(
        record_ids(&job).is_empty(),
        "a refused first run wrote a record"
    );
    let listed = snapshot_rows(&job);
    assert!(
        listed.is_empty(),
        "snapshots after a refused first run: {listed:?}"
    );
    job.assert_clean();
}

// ---------------------------------------------------------------------------
// 5. Interrupted run
// ---------------------------------------------------------------------------

const MIB: usize = 1 << 20;

/// (regular files, bytes) under `dir`, for polling a tree that rsync is
/// changing: entries that vanish mid-walk (renamed temp files) are skipped.
fn live_usage(dir: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                files += 1;
                bytes += m.len();
            }
        }
    }
    (files, bytes)
}

fn dir_bytes(dir: &Path) -> u64 {
    live_usage(dir).1
}

#[test]
fn interrupted_run_leaves_no_record_and_keeps_its_versions() {
    if !require_tools("interrupted_run_leaves_no_record", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("snap-int").build();
    let runs = run_scenario(&job, 1);
    let last_id = runs.last().unwrap().0.clone();

    // Changes at the top level (rsync handles them before descending into
    // big/), then 150 MiB of new files.
    write(&job.source.join("top-a.txt"), b"top a, new\n", 0o644);
    write(
        &job.source.join("zero.bin"),
        b"zero is not empty any more\n",
        0o644,
    );
    fs::remove_file(job.source.join("link")).unwrap();
    symlink("keep/sub/other.txt", job.source.join("link")).unwrap();
    make_big_tree(&job.source, "big", 75, 2 * MIB);
    let files_bytes_before = dir_bytes(&job.files_dir());
    let mut run = job.spawn(&["-v", "backup"]);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if !run.is_running() {
            let out = run.wait(Duration::from_secs(10));
            panic!(
                "backup finished (exit {}) before it could be interrupted; test premise broken\n{}",
                out.code,
                out.dump()
            );
        }
        let rsync = descendants(run.pid()).iter().any(|(_, c)| c == "rsync");
        let new_dirs = snapshot_dir_ids(&job)
            .into_iter()
            .filter(|d| *d > last_id)
            .collect::<Vec<_>>();
        let replaced = new_dirs
            .iter()
            .any(|d| live_usage(&job.target_path.join("snapshots").join(d)).0 > 0);
        if rsync && replaced && dir_bytes(&job.files_dir()) > files_bytes_before + 10 * MIB as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rsync transfer seen within 240 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    send_signal(run.pid(), "TERM");
    let out = run.wait(Duration::from_secs(120));
    assert_eq!(out.code, 1, "backup after SIGTERM\n{}", out.dump());
    let st = job.stage("backup");
    assert_eq!(st["outcome"], "interrupted", "status.json: {st}");
    // Checked now, failed at the end, so the rest of the run is still checked.
    let mut problems = Vec::new();
    let left = mounts_under(&job.root);
    if !left.is_empty() {
        problems.push(format!(
            "mounts left after the interrupted backup: {:?}\n{}",
            left.iter()
                .map(|m| m.mount_point.display().to_string())
                .collect::<Vec<_>>(),
            out.stderr
        ));
    }

    let interrupted: Vec<String> = snapshot_dir_ids(&job)
        .into_iter()
        .filter(|d| *d > last_id)
        .collect();
    assert_eq!(
        interrupted.len(),
        1,
        "snapshot dirs of the interrupted run: {interrupted:?}"
    );
    let int_id = interrupted[0].clone();
    let int_dir = job.target_path.join("snapshots").join(&int_id);
    let int_content = sha1_map(&int_dir);
    assert!(
        !int_content.is_empty(),
        "interrupted run's snapshot dir is empty"
    );
    assert!(
        !record_ids(&job).contains(&int_id),
        "the interrupted run {int_id} has a record"
    );
    assert_eq!(
        record_ids(&job),
        runs.iter().map(|(i, _)| i.clone()).collect::<BTreeSet<_>>(),
        "records/ after the interrupted run"
    );
    let ids: Vec<String> = runs.iter().map(|(i, _)| i.clone()).collect();
    assert_eq!(
        snapshot_ids(&job),
        ids,
        "snapshots lists the interrupted run"
    );

    // The next run succeeds; the interrupted run's versions stay (a
    // leftover ctl.sock must not stop it).
    let (o, v) = job.run_json(&["backup"]);
    if o.code != 0 {
        problems.push(format!(
            "the first backup after the interrupted run failed (exit {}): {}",
            o.code, v["error"]
        ));
    }
    let next = if o.code == 0 {
        json_stats(&v, "backup")["snapshot"]
            .as_str()
            .unwrap()
            .to_string()
    } else {
        backup_id(&job)
    };
    assert!(next > int_id, "next id {next} not after {int_id}");
    assert!(
        int_dir.is_dir(),
        "the interrupted run's snapshot dir was removed"
    );
    let after = sha1_map(&int_dir);
    for (p, v) in &int_content {
        assert_eq!(
            after.get(p),
            Some(v),
            "{p} in the interrupted run's snapshot dir changed"
        );
    }
    let mut all = ids.clone();
    all.push(next.clone());
    assert_eq!(snapshot_ids(&job), all);
    // Every earlier run still restores exactly (the latest, 150 MiB, is left
    // to the other interrupt test's verify).
    for (k, (id, reference)) in runs.iter().enumerate() {
        let to = job.root.join(format!("after-int-{k}"));
        restore_snapshot(&job, id, &to, &[]);
        for d in tree_diffs(reference, &to) {
            problems.push(format!("snapshot {id} (run {k}): {d}"));
        }
    }
    assert!(
        problems.is_empty(),
        "after the interrupted run:\n  {}",
        problems.join("\n  ")
    );
    job.assert_clean();
}

// ---------------------------------------------------------------------------
// 6. A run killed outright (SIGKILL to the helper and its gocryptfs daemon,
//    as the OOM killer or systemd's final SIGKILL would do) must not block
//    the next backup, and leaves no record.
// ---------------------------------------------------------------------------

#[test]
fn backup_after_sigkilled_run_succeeds() {
    if !require_tools("backup_after_sigkilled_run_succeeds", LOCAL_TOOLS) {
        return;
    }
    let job = Job::local("snap-kill").build();
    initial_tree(&job.source);
    job.ok(&["init"]);
    let first = backup_id(&job);
    change_round(&job.source, 1);

    let mut run = job.spawn(&["backup"]);
    let sock = job.runtime_dir.join("ctl.sock");
    wait_until(
        "the backup's gocryptfs ctl.sock",
        Duration::from_secs(60),
        || sock.exists() || !run.is_running(),
    );
    assert!(
        run.is_running(),
        "backup ended before it could be killed; premise broken"
    );
    let root = job.root.to_string_lossy().into_owned();
    let daemons: Vec<u32> = processes()
        .into_iter()
        .filter(|(_, _, comm, cmd)| comm == "gocryptfs" && cmd.contains(&root))
        .map(|(pid, ..)| pid)
        .collect();
    send_signal(run.pid(), "KILL");
    for pid in &daemons {
        send_signal(*pid, "KILL");
    }
    let out = run.wait(Duration::from_secs(30));
    assert_eq!(out.code, 128 + 9, "{}", out.dump());
    assert_eq!(
        record_ids(&job),
        [first.clone()].into_iter().collect::<BTreeSet<_>>(),
        "a killed run left a record"
    );

    let (o, v) = job.run_json(&["backup"]);
    o.expect_code(0, "the backup after a SIGKILLed run");
    assert_eq!(json_outcome(&v, "backup"), "ok", "{v}");
    let second = json_stats(&v, "backup")["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(snapshot_ids(&job), vec![first, second]);
    job.assert_clean();
}

// ---------------------------------------------------------------------------
// 7. What `snapshots` reports per run
// ---------------------------------------------------------------------------

/// Regular files under `root` (the reverse config at the root excluded).
fn user_files(root: &Path) -> u64 {
    scan(root)
        .values()
        .filter(|n| matches!(n, Node::File { .. }))
        .count() as u64
}

#[test]
fn snapshots_rows_count_the_users_files_and_changes() {
    if !require_tools("snapshots_rows_count_the_users_files", LOCAL_TOOLS) {
        return;
    }
    let job = Job::local("snap-rows").build();
    ten_files(&job.source);
    job.ok(&["init"]);
    let first = backup_id(&job);
    let second = backup_id(&job); // nothing changed
    write(
        &job.source.join("alpha/f0.txt"),
        b"alpha 0, changed\n",
        0o644,
    );
    fs::remove_file(job.source.join("beta/f4.txt")).unwrap();
    let third = backup_id(&job); // one file changed, one deleted

    let rows = snapshot_rows(&job);
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [first.as_str(), second.as_str(), third.as_str()]);
    let got: Vec<(u64, u64)> = rows
        .iter()
        .map(|r| (r["files"].as_u64().unwrap(), r["changed"].as_u64().unwrap()))
        .collect();
    assert_eq!(user_files(&job.source), 9);
    // (files, changed) per run, as the user sees the tree: 10 files, all new;
    // 10 files, none changed; 9 files, 2 changed.
    assert_eq!(
        got,
        [(10, 10), (10, 0), (9, 2)],
        "snapshots rows (files, changed) should count the user's files, not gocryptfs metadata \
         (gocryptfs.diriv, gocryptfs.conf, .name); rows: {rows:?}"
    );
    job.assert_clean();
}

// ---------------------------------------------------------------------------
// 8. The README's restore-by-hand procedure (issue 3, point 1: someone with
//    only gocryptfs and a shell must be able to follow the record by hand)
// ---------------------------------------------------------------------------

/// The README's shell lines that rebuild run ID by hand: from the line that
/// sets `R=` up to (not including) the final `gocryptfs -ro "$STAGE"` line.
fn readme_rebuild_snippet() -> Vec<String> {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("R=") && l.contains("ID=") && l.contains("STAGE="))
        .expect("README: no `R=...; ID=...; STAGE=...` line in the restore-by-hand section");
    let end = lines[start..]
        .iter()
        .position(|l| l.starts_with("gocryptfs -ro \"$STAGE\""))
        .expect("README: the by-hand rebuild does not end with `gocryptfs -ro \"$STAGE\"`")
        + start;
    lines[start + 1..end]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

#[test]
fn readme_rebuild_by_hand_gives_the_snapshot() {
    if !require_tools("readme_rebuild_by_hand_gives_the_snapshot", LOCAL_TOOLS) {
        return;
    }
    let snippet = readme_rebuild_snippet();
    let job = Job::local("snap-readme").build();
    let runs = run_scenario(&job, 2);
    let mut problems = Vec::new();
    for (k, (id, reference)) in runs.iter().enumerate().take(2) {
        let stage = job.root.join(format!("stage-{k}"));
        let script = format!(
            "set -e\nR={}; ID={id}; STAGE={}\nmkdir -p \"$STAGE\"\n{}\n",
            job.target_path.display(),
            stage.display(),
            snippet.join("\n")
        );
        let out = run_cmd({
            let mut c = Command::new("sh");
            c.arg("-c").arg(&script);
            c
        });
        out.expect_code(0, &format!("README rebuild of {id}:\n{script}"));
        let mnt = job.root.join(format!("by-hand-{k}"));
        {
            let m = ManualMount::new(&stage, &job.password_file, &mnt);
            // Content, kinds, symlink targets and empty dirs; by hand, modes
            // of directories are mkdir's, so modes are left out here.
            let strip = |t: BTreeMap<PathBuf, Node>| -> BTreeMap<PathBuf, Node> {
                t.into_iter()
                    .map(|(p, n)| {
                        let n = match n {
                            Node::File { len, sha1, .. } => Node::File { mode: 0, len, sha1 },
                            Node::Dir { .. } => Node::Dir { mode: 0 },
                            other => other,
                        };
                        (p, n)
                    })
                    .collect()
            };
            for d in diff_scans(&strip(scan(reference)), &strip(scan(&m.mnt))) {
                problems.push(format!("README rebuild of run {k} ({id}): {d}"));
            }
        }
        assert_no_mounts_under(&mnt);
    }
    fail_if_any(
        &problems,
        "the README's by-hand rebuild differs from the snapshot",
    );
    job.assert_clean();
}
