//! What operators expect from a backup tool (issue 18, part): the versions
//! of one file (`log`), what changed between two runs (`diff`), Prometheus
//! metrics (`--metrics-file`), `--version`, completions and the man page.
//! Real gocryptfs, sshfs, rsync and sshd (harness).

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Writes `content` to `path` and sets its mtime to `mtime` (seconds since
/// the epoch): a change that keeps the size is then seen by rsync's quick
/// check whatever the clock did, with no sleep.
fn write_at(path: &Path, content: &str, mtime: u64) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, content).unwrap();
    let st = Command::new("touch")
        .arg("-m")
        .arg("-d")
        .arg(format!("@{mtime}"))
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "touch {}", path.display());
}

fn backup_id(job: &Job) -> String {
    job.backup_ok()["snapshot"].as_str().unwrap().to_string()
}

fn events(log: &Value) -> Vec<(String, String, Value)> {
    log["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("log --json without versions: {log}"))
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_string(),
                v["event"].as_str().unwrap().to_string(),
                v["size"].clone(),
            )
        })
        .collect()
}

fn paths(diff: &Value, list: &str) -> Vec<String> {
    diff[list]
        .as_array()
        .unwrap_or_else(|| panic!("diff --json without {list}: {diff}"))
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

/// Five runs: a.txt is backed up, rewritten with the same size (only the
/// snapshot dir shows it), grown, deleted and written again. `log` must
/// say exactly that, and `restore --snapshot ID a.txt` must give back the
/// content each listed version had, as the log's output says it does.
/// `diff` names the same changes by plaintext path.
#[test]
fn log_and_diff_follow_a_file_through_its_runs() {
    if !require_tools("log_and_diff_follow_a_file_through_its_runs", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("ops-log").build();
    let a = job.source.join("a.txt");
    write_at(&a, "one", 1_000_000_000);
    write_at(&job.source.join("dir/b.txt"), "bee", 1_000_000_000);
    job.ok(&["init"]);
    let s1 = backup_id(&job);
    write_at(&a, "two", 1_000_000_100); // same size, another mtime
    let s2 = backup_id(&job);
    write_at(&a, "three", 1_000_000_200);
    let odd = "new\nline.txt";
    write_at(&job.source.join("dir").join(odd), "x", 1_000_000_200);
    let s3 = backup_id(&job);
    fs::remove_file(&a).unwrap();
    let s4 = backup_id(&job);
    write_at(&a, "four!", 1_000_000_300);
    let s5 = backup_id(&job);
    let s6 = backup_id(&job); // nothing changed

    let (o, log) = job.run_json(&["log", "a.txt"]);
    o.expect_code(0, "log a.txt --json");
    assert_eq!(
        events(&log),
        [
            (s1.clone(), "oldest".into(), json!(3)),
            (s2.clone(), "changed".into(), json!(3)),
            (s3.clone(), "changed".into(), json!(5)),
            (s4.clone(), "deleted".into(), Value::Null),
            (s5.clone(), "added".into(), json!(5)),
        ],
        "log a.txt: {log}"
    );
    assert!(
        !log.to_string().contains(&s6),
        "an unchanged run is no version: {log}"
    );

    // Each version is what restore --snapshot ID gets back.
    for (id, content) in [(&s1, "one"), (&s2, "two"), (&s3, "three"), (&s5, "four!")] {
        let to = job.root.join(format!("restore-{id}"));
        job.ok(&[
            "restore",
            "--to",
            to.to_str().unwrap(),
            "--snapshot",
            id,
            "a.txt",
        ]);
        assert_eq!(
            fs::read_to_string(to.join("a.txt")).unwrap(),
            content,
            "restore --snapshot {id} a.txt"
        );
    }

    let human = job.ok(&["log", "a.txt"]).stdout;
    assert!(
        human.starts_with("a.txt has 5 kept versions in the backup of "),
        "{human}"
    );
    assert!(
        human.contains("restore --to DIR --snapshot ID a.txt` restores"),
        "{human}"
    );

    // A directory: it changes with what is below it.
    let (o, dir_log) = job.run_json(&["log", "dir"]);
    o.expect_code(0, "log dir");
    let dir_events: Vec<String> = events(&dir_log).into_iter().map(|e| e.1).collect();
    assert_eq!(dir_events, ["oldest", "changed"], "log dir: {dir_log}");

    // A path no run holds is an error that names it.
    let o = job.run(&["log", "never.txt"]);
    o.expect_code(2, "log never.txt");
    assert!(o.stderr.contains("never.txt"), "{}", o.dump());

    // diff: same size but replaced counts as changed.
    let (o, d) = job.run_json(&["diff", &s1, &s2]);
    o.expect_code(0, "diff s1 s2");
    assert_eq!(paths(&d, "changed"), ["a.txt"], "{d}");
    assert!(paths(&d, "added").is_empty(), "nothing added: {d}");
    assert!(paths(&d, "deleted").is_empty(), "nothing deleted: {d}");
    let (_, d) = job.run_json(&["diff", &s2, &s4]);
    assert_eq!(paths(&d, "added"), [format!("dir/{odd}")], "{d}");
    assert_eq!(paths(&d, "deleted"), ["a.txt"], "{d}");
    assert!(paths(&d, "changed").is_empty(), "{d}");
    let (_, d) = job.run_json(&["diff", &s5, &s6]);
    assert_eq!(
        (
            paths(&d, "added"),
            paths(&d, "deleted"),
            paths(&d, "changed")
        ),
        (vec![], vec![], vec![]),
        "{d}"
    );
    let human = job.ok(&["diff", &s2, &s4]).stdout;
    assert!(
        human.contains("2 changes (1 added, 1 deleted, 0 changed)"),
        "{human}"
    );
    assert!(
        human.contains("  added: dir/new\\nline.txt\n"),
        "the name is escaped: {human}"
    );
    let o = job.run(&["diff", &s4, &s2]);
    o.expect_code(2, "diff newer older");
    assert!(o.stderr.contains("older run first"), "{}", o.dump());
    job.assert_clean();
}

/// Python's prometheus_client (Debian: python3-prometheus-client) parses
/// the metrics file: the node exporter reads the same format.
const PARSER_TOOLS: &[&str] = &[
    "/usr/bin/python3",
    "/usr/lib/python3/dist-packages/prometheus_client/parser.py",
];

/// `name{labels} value` for every sample, as the real parser reads them.
fn parse_metrics(file: &Path) -> Vec<(String, Value, f64)> {
    let script = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = []\n\
        for f in text_string_to_metric_families(open(sys.argv[1]).read()):\n\
        \x20   assert f.type == 'gauge', (f.name, f.type)\n\
        \x20   for s in f.samples:\n\
        \x20       out.append([s.name, s.labels, s.value])\n\
        print(json.dumps(out))\n";
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "prometheus_client cannot parse {}: {}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(file).unwrap_or_default()
    );
    let rows: Vec<(String, Value, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    rows
}

fn sample(rows: &[(String, Value, f64)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    rows.iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|r| r.2)
}

/// Each stage rewrites the metrics file from status.json: a failed backup
/// keeps the time of the last good one, verify adds its differences, and
/// a symlink planted at the file's path is replaced, not written through.
#[test]
fn metrics_file_keeps_every_stage_and_the_last_success() {
    if !require_tools(
        "metrics_file_keeps_every_stage_and_the_last_success",
        LOCAL_TOOLS,
    ) || !require_tools(
        "metrics_file_keeps_every_stage_and_the_last_success",
        PARSER_TOOLS,
    ) {
        return;
    }
    let job = Job::local("ops-metrics").build();
    make_sample_tree(&job.source);
    let dir = job.root.join("textfile");
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ciphersync-job.prom");
    let victim = job.root.join("victim");
    fs::write(&victim, "not yours").unwrap();
    std::os::unix::fs::symlink(&victim, &file).unwrap();
    let metrics = file.to_str().unwrap();
    let name = job.name.clone();
    let backup = |stage: &'static str| [("job", name.as_str()), ("stage", stage)];

    job.ok(&["init"]);
    let stats = json_stats(
        &job.run_json(&["--metrics-file", metrics, "backup"]).1,
        "backup",
    )
    .clone();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "not yours");
    assert!(
        !fs::symlink_metadata(&file)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let rows = parse_metrics(&file);
    let success = sample(
        &rows,
        "ciphersync_last_success_timestamp_seconds",
        &backup("backup"),
    )
    .unwrap_or_else(|| panic!("no last success: {rows:?}"));
    assert!(success > 1.7e9, "{success}");
    let finished = job.stage("backup")["finished_at"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        sample(
            &rows,
            "ciphersync_last_run_timestamp_seconds",
            &backup("backup")
        ),
        Some(success),
        "the last run is the last success ({finished})"
    );
    let outcome = |rows: &[(String, Value, f64)], stage: &str, o: &str| {
        sample(
            rows,
            "ciphersync_last_run_outcome",
            &[("job", &name), ("stage", stage), ("outcome", o)],
        )
    };
    assert_eq!(outcome(&rows, "backup", "ok"), Some(1.0));
    assert_eq!(outcome(&rows, "backup", "failed"), Some(0.0));
    let job_only = [("job", name.as_str())];
    assert_eq!(
        sample(&rows, "ciphersync_backup_files", &job_only),
        stats["files"].as_f64()
    );
    assert_eq!(
        sample(&rows, "ciphersync_backup_sent_bytes", &job_only),
        stats["bytes_transferred"].as_f64()
    );
    assert_eq!(
        sample(&rows, "ciphersync_snapshots_kept", &job_only),
        Some(1.0)
    );

    // verify: its differences, and the backup's values stay.
    job.ok(&["--metrics-file", metrics, "verify"]);
    let rows = parse_metrics(&file);
    assert_eq!(
        sample(&rows, "ciphersync_verify_differences", &backup("verify")),
        Some(0.0)
    );
    assert_eq!(outcome(&rows, "verify", "ok"), Some(1.0));
    assert_eq!(outcome(&rows, "backup", "ok"), Some(1.0));

    // A failed backup (the source is gone): outcome failed, the last
    // success and its figures stay.
    let moved = job.root.join("src-away");
    fs::rename(&job.source, &moved).unwrap();
    let o = job.run(&["--metrics-file", metrics, "backup"]);
    assert_eq!(o.code, 1, "backup without a source: {}", o.dump());
    fs::rename(&moved, &job.source).unwrap();
    let rows = parse_metrics(&file);
    assert_eq!(outcome(&rows, "backup", "failed"), Some(1.0), "{rows:?}");
    assert_eq!(outcome(&rows, "backup", "ok"), Some(0.0));
    assert_eq!(
        sample(
            &rows,
            "ciphersync_last_success_timestamp_seconds",
            &backup("backup")
        ),
        Some(success)
    );
    assert_eq!(
        sample(&rows, "ciphersync_backup_files", &job_only),
        stats["files"].as_f64()
    );
    assert_eq!(
        sample(&rows, "ciphersync_snapshots_kept", &job_only),
        Some(1.0)
    );
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "temp files left in the textfile dir: {leftovers:?}"
    );

    // A metrics file in a missing directory: the stage still counts, the
    // warning names the path.
    let missing = job.root.join("no-such-dir/x.prom");
    let o = job.run(&["--metrics-file", missing.to_str().unwrap(), "verify"]);
    o.expect_code(0, "verify with an unwritable metrics file");
    assert!(o.stderr.contains("no-such-dir"), "{}", o.dump());
    job.assert_clean();
}

#[test]
fn version_names_the_tools_it_finds() {
    let o = run_bin(&["--version"]);
    o.expect_code(0, "--version");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("ciphersync {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(lines.len(), 4, "{}", o.stdout);
    for (line, tool) in lines[1..].iter().zip(["gocryptfs", "sshfs", "rsync"]) {
        assert!(line.starts_with(&format!("{tool}: ")), "{line}");
        match find_on_path(tool) {
            Some(path) => {
                assert!(line.ends_with(&format!("({})", path.display())), "{line}");
                assert!(
                    line.chars().any(|c| c.is_ascii_digit()),
                    "no version in {line}"
                );
            }
            None => assert_eq!(*line, format!("{tool}: not found")),
        }
    }
    // Without the tools on PATH it says so, one line each.
    let empty = TempDir::new("ops-nopath");
    let mut c = Command::new(bin());
    c.arg("--version").env("PATH", empty.path());
    let o = run_cmd(c);
    o.expect_code(0, "--version with an empty PATH");
    assert_eq!(
        o.stdout.lines().skip(1).collect::<Vec<_>>(),
        [
            "gocryptfs: not found",
            "sshfs: not found",
            "rsync: not found"
        ]
    );
}

#[test]
fn completions_and_man_page_come_from_the_command_line_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let o = run_bin(&["completions", shell]);
        o.expect_code(0, &format!("completions {shell}"));
        for word in ["backup", "restore", "log", "diff", "metrics-file"] {
            assert!(o.stdout.contains(word), "{shell} completions lack {word}");
        }
    }
    let dir = TempDir::new("ops-completions");
    let script = dir.path().join("ciphersync.bash");
    fs::write(&script, run_bin(&["completions", "bash"]).stdout).unwrap();
    let st = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success(), "bash -n rejects the completion script");
    let o = run_bin(&["man"]);
    o.expect_code(0, "man");
    assert!(o.stdout.contains(".TH ciphersync 1"), "{}", o.stdout);
    assert!(o.stdout.contains("metrics\\-file"), "{}", o.stdout);
    // Hidden: packaging commands are not in --help.
    let help = run_bin(&["--help"]).stdout;
    assert!(
        !help.contains("completions"),
        "completions is hidden: {help}"
    );
    assert!(help.contains("diff"), "diff is listed: {help}");
}

/// `cmd` run by `setpriv` with `caps` dropped from its bounding set: still
/// uid 0 and able to mount, but bound by file modes as a job without
/// CAP_DAC_OVERRIDE is (the harness runs as root, which reads everything).
/// gocryptfs -reverse, started by the helper, inherits the bound.
fn bounded(cmd: Command, caps: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--bounding-set={caps}"))
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

const NO_DAC: &str = "-dac_override,-dac_read_search";

/// Source files the job cannot read (mode 0000, no DAC override) make the
/// backup `partial`: exit 4, the plaintext names listed, a record written
/// (restore gives the readable files new and the unreadable one as it was
/// last backed up), the metrics say partial and count it a success, and
/// the next backup that can read them is ok again. A refusal by the
/// target in the same situation stays `failed` (exit 1).
#[test]
fn unreadable_source_files_make_a_partial_backup() {
    let tag = "ops-partial";
    if !require_tools(tag, LOCAL_TOOLS)
        || !require_tools(tag, PARSER_TOOLS)
        || !require_tools(tag, &["setpriv"])
    {
        return;
    }
    let job = Job::local(tag).build();
    fs::create_dir_all(job.source.join("dir")).unwrap();
    write_at(&job.source.join("a.txt"), "alpha", 1_700_000_000);
    write_at(&job.source.join("dir/b.txt"), "bravo", 1_700_000_000);
    write_at(&job.source.join("secret.txt"), "old secret", 1_700_000_000);
    // Enough unchanged files that the deletion guard lets the changes by
    // (and no other directory: the target's one directory is dir/).
    for i in 0..10 {
        write_at(
            &job.source.join(format!("keep{i}.txt")),
            "kept",
            1_700_000_000,
        );
    }
    let metrics = job.root.join("job.prom");
    let metrics_arg = metrics.to_str().unwrap();
    job.ok(&["init"]);
    job.ok(&["backup"]);

    // A readable change, a changed file and a new file the job cannot read.
    write_at(
        &job.source.join("a.txt"),
        "alpha, second run",
        1_700_000_100,
    );
    write_at(&job.source.join("secret.txt"), "new secret!", 1_700_000_100);
    write_at(&job.source.join("dir/locked.txt"), "locked", 1_700_000_100);
    for f in ["secret.txt", "dir/locked.txt"] {
        fs::set_permissions(job.source.join(f), fs::Permissions::from_mode(0o000)).unwrap();
    }
    let o = run_cmd(bounded(
        job.command(&["--metrics-file", metrics_arg, "--json", "backup"]),
        NO_DAC,
    ));
    assert_eq!(
        o.code,
        4,
        "a backup that cannot read two files: {}",
        o.dump()
    );
    let v = parse_json(&o);
    assert_eq!(v["outcome"], "partial", "{v}");
    assert!(v["error"].is_null(), "{v}");
    let unreadable = str_list(&v["stats"]["unreadable"]);
    assert_eq!(unreadable.len(), 2, "{unreadable:?}");
    for (plain, i) in [("secret.txt", 0), ("dir/locked.txt", 1)] {
        assert!(
            unreadable
                .iter()
                .any(|u| u.starts_with(&format!("{plain} (")) && u.contains("Permission denied")),
            "{plain} ({i}) is not named in plaintext: {unreadable:?}"
        );
    }
    assert_eq!(job.stage("backup")["outcome"], "partial");
    let partial_id = v["stats"]["snapshot"].as_str().unwrap().to_string();
    assert!(
        job.target_path
            .join(format!("records/{partial_id}.rec"))
            .is_file(),
        "a partial run writes its record"
    );
    // The human form names them too.
    let status = job.ok(&["status"]);
    assert!(
        status.stdout.contains("partial") && status.stdout.contains("dir/locked.txt"),
        "{}",
        status.dump()
    );

    let rows = parse_metrics(&metrics);
    let name = job.name.as_str();
    let outcome = |o: &str| {
        sample(
            &rows,
            "ciphersync_last_run_outcome",
            &[("job", name), ("stage", "backup"), ("outcome", o)],
        )
    };
    assert_eq!(outcome("partial"), Some(1.0), "{rows:?}");
    assert_eq!(outcome("failed"), Some(0.0), "{rows:?}");
    assert_eq!(
        sample(
            &rows,
            "ciphersync_backup_unreadable_files",
            &[("job", name)]
        ),
        Some(2.0)
    );
    let finished = job.stage("backup")["finished_at"]
        .as_str()
        .unwrap()
        .to_string();
    let success = sample(
        &rows,
        "ciphersync_last_success_timestamp_seconds",
        &[("job", name), ("stage", "backup")],
    )
    .unwrap();
    assert_eq!(
        Some(success),
        sample(
            &rows,
            "ciphersync_last_run_timestamp_seconds",
            &[("job", name), ("stage", "backup")]
        ),
        "a partial run is the last success ({finished})"
    );

    // What the partial run left: the readable change, the unreadable file
    // as the last run stored it, the new unreadable one absent.
    let out = job.root.join("restored-partial");
    job.ok(&["restore", "--to", out.to_str().unwrap()]);
    assert_eq!(
        fs::read_to_string(out.join("a.txt")).unwrap(),
        "alpha, second run"
    );
    assert_eq!(
        fs::read_to_string(out.join("secret.txt")).unwrap(),
        "old secret"
    );
    assert!(!out.join("dir/locked.txt").exists());
    assert_eq!(fs::read_to_string(out.join("dir/b.txt")).unwrap(), "bravo");

    // The target refuses a file (its directory belongs to someone else,
    // and the job may neither write into it nor chmod or chown it): failed, exit 1,
    // though a source file is unreadable too. The message names both.
    let enc_dir = fs::read_dir(job.files_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("the encrypted dir/ on the target");
    std::os::unix::fs::chown(&enc_dir, Some(65534), Some(65534)).unwrap();
    write_at(
        &job.source.join("dir/b.txt"),
        "bravo, changed",
        1_700_000_200,
    );
    let o = run_cmd(bounded(
        job.command(&["--json", "backup"]),
        &format!("{NO_DAC},-fowner,-chown"),
    ));
    assert_eq!(o.code, 1, "a target refusal is a failure: {}", o.dump());
    let v = parse_json(&o);
    assert_eq!(v["outcome"], "failed", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("dir/b.txt")
            && message.contains("could not read from the source")
            && message.contains("secret.txt"),
        "{message}"
    );
    std::os::unix::fs::chown(&enc_dir, Some(0), Some(0)).unwrap();

    // Readable again: the next backup is ok and stores the new versions.
    for f in ["secret.txt", "dir/locked.txt"] {
        fs::set_permissions(job.source.join(f), fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (o, v) = job.run_json(&["--metrics-file", metrics_arg, "backup"]);
    o.expect_code(0, "the backup after the files became readable");
    assert_eq!(v["outcome"], "ok");
    assert_eq!(str_list(&v["stats"]["unreadable"]), Vec::<String>::new());
    let rows = parse_metrics(&metrics);
    assert_eq!(
        sample(
            &rows,
            "ciphersync_backup_unreadable_files",
            &[("job", name)]
        ),
        Some(0.0)
    );
    let out = job.root.join("restored-ok");
    job.ok(&["restore", "--to", out.to_str().unwrap()]);
    assert_eq!(
        fs::read_to_string(out.join("secret.txt")).unwrap(),
        "new secret!"
    );
    assert_eq!(
        fs::read_to_string(out.join("dir/locked.txt")).unwrap(),
        "locked"
    );
    job.assert_clean();
}

/// `stat -f` of `dir`: (size, available) in bytes, as statvfs counts them.
fn fs_space(dir: &Path) -> (u64, u64) {
    let out = Command::new("stat")
        .args(["-f", "-c", "%S %b %a"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "stat -f {}", dir.display());
    let n: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    (n[0] * n[1], n[0] * n[2])
}

/// The target's space after a backup and after a prune, in status.json,
/// `status` and the metrics, on a target (a 16 MiB tmpfs) that is nearly
/// full: the backup warns, naming the threshold; a prune after room was
/// made measures again and the warning goes.
#[test]
fn target_space_is_measured_and_warned_about() {
    let tag = "ops-space";
    if !require_tools(tag, LOCAL_TOOLS) || !require_tools(tag, PARSER_TOOLS) {
        return;
    }
    let job = Job::local(tag).build();
    let st = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=16m,mode=0700",
            "ciphersync-e2e-space",
        ])
        .arg(&job.target_path)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "mount a tmpfs at {}",
        job.target_path.display()
    );
    write_at(&job.source.join("a.txt"), "alpha", 1_700_000_000);
    // 15 of 16 MiB taken: about 6 % free, below the default 10 %.
    let filler = job.target_path.join("filler");
    fs::write(&filler, vec![0u8; 15 << 20]).unwrap();
    let metrics = job.root.join("job.prom");
    let metrics_arg = metrics.to_str().unwrap();
    job.ok(&["init"]);
    let o = job.ok(&["--metrics-file", metrics_arg, "backup"]);
    assert!(
        o.stderr.contains("running out of space")
            && o.stderr.contains("space_warning_percent = 10"),
        "{}",
        o.dump()
    );
    let (size, free) = fs_space(&job.target_path);
    let space = job.status()["target_space"].clone();
    assert_eq!(space["size_bytes"].as_u64(), Some(size), "{space}");
    assert_eq!(space["free_bytes"].as_u64(), Some(free), "{space}");
    assert_eq!(space["low"], true, "{space}");
    let rows = parse_metrics(&metrics);
    let name = [("job", job.name.as_str())];
    assert_eq!(
        sample(&rows, "ciphersync_target_size_bytes", &name),
        Some(size as f64)
    );
    assert_eq!(
        sample(&rows, "ciphersync_target_free_bytes", &name),
        Some(free as f64)
    );
    assert_eq!(
        sample(&rows, "ciphersync_target_space_low", &name),
        Some(1.0)
    );
    let status = job.ok(&["status"]);
    assert!(
        status.stdout.contains("target space:")
            && status.stdout.contains("WARNING: below 10 % free"),
        "{}",
        status.dump()
    );

    // Room made; prune measures again.
    fs::remove_file(&filler).unwrap();
    let o = job.ok(&["--metrics-file", metrics_arg, "prune"]);
    assert!(!o.stderr.contains("running out of space"), "{}", o.dump());
    let (_, free) = fs_space(&job.target_path);
    let space = job.status()["target_space"].clone();
    assert_eq!(space["free_bytes"].as_u64(), Some(free), "{space}");
    assert_eq!(space["low"], false, "{space}");
    let rows = parse_metrics(&metrics);
    assert_eq!(
        sample(&rows, "ciphersync_target_space_low", &name),
        Some(0.0)
    );
    assert_eq!(
        sample(&rows, "ciphersync_target_free_bytes", &name),
        Some(free as f64)
    );
    let st = Command::new("umount")
        .arg(&job.target_path)
        .status()
        .unwrap();
    assert!(st.success(), "umount {}", job.target_path.display());
    job.assert_clean();
}

/// `backup --wait-for-target` (the modules' `waitForTarget`): a disk that
/// is not mounted yet when the timer fires is waited for, and the backup
/// runs once it is there; with no budget left the error names the target.
#[test]
fn a_backup_waits_for_a_target_that_comes_late() {
    if !require_tools("wait_for_target", LOCAL_TOOLS) {
        return;
    }
    let job = Job::local("wait-target").build();
    fs::write(job.source.join("a"), "a\n").unwrap();
    job.init_and_backup();
    let away = job.root.join("disk-unplugged");
    fs::rename(&job.target_path, &away).unwrap();

    let o = job.run(&["backup", "--wait-for-target", "0"]);
    assert_ne!(
        o.code,
        0,
        "a backup to a missing target succeeded:\n{}",
        o.dump()
    );
    assert!(
        o.stderr.contains(&format!(
            "target {} did not answer",
            job.target_path.display()
        )),
        "the error should name the target:\n{}",
        o.dump()
    );

    fs::write(job.source.join("b"), "b\n").unwrap();
    let mut run = job.spawn(&["backup", "--wait-for-target", "5"]);
    // The target comes back only once the backup has said it waits.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !run.output_so_far().1.contains("waiting for target") {
        assert!(
            run.is_running(),
            "backup ended before waiting: {:?}",
            run.output_so_far()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "backup never said it waits"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    fs::rename(&away, &job.target_path).unwrap();
    let o = run.wait(std::time::Duration::from_secs(300));
    o.expect_code(0, "backup --wait-for-target 5 after the target came back");
    assert!(o.stderr.contains("answered after"), "{}", o.dump());
    assert_eq!(job.stage("backup")["outcome"], "ok");
    job.restore_and_compare("restored");
    job.assert_clean();
}
