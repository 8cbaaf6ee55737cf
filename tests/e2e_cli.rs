//! Issue 5, item 3: bad input to the CLI. Every command with missing or extra
//! arguments, a non-existent job, a job file that is not JSON, and a job file
//! with each field wrong in turn (generated from one good file). Each must
//! exit 2 with a message naming the problem, and never panic or print a Rust
//! backtrace. Also a bounded, seeded fuzz of job files through `check-config`
//! and every job command (issue 5, item 4, job-file parser).
//!
//! Needs no external tool: the binary must stop at argument/config checking.

mod common;
#[path = "faults/support.rs"]
mod support;

use common::{Running, TempDir, bin};
use serde_json::{Value, json};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

const SUITE: &str = "cli";
/// Commands that take a JOB (or -c FILE).
const JOB_COMMANDS: &[&[&str]] = &[
    &["init"],
    &["backup"],
    &["verify"],
    &["verify", "--deep"],
    &["restore", "--to", "/tmp/cs-cli-nonexistent/restore-to"],
    &["snapshots"],
    &["prune"],
    &["prune", "--dry-run"],
    &["status"],
];

/// Where the job files' paths point. Nothing may be created there; if a bad
/// file is wrongly accepted and a command runs, this guard removes what it made.
const NOWHERE: &str = "/tmp/cs-cli-nonexistent";
struct Nowhere;
impl Drop for Nowhere {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(NOWHERE);
    }
}

struct Res {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args`, an isolated config dir, RUST_BACKTRACE=1 (so
/// a panic would show), a 30 s bound.
fn run(cfg_dir: &Path, args: &[&str]) -> Res {
    let mut c = Command::new(bin());
    c.args(args)
        .env("CIPHERSYNC_CONFIG_DIR", cfg_dir)
        .env("RUST_BACKTRACE", "1")
        .env_remove("CIPHERSYNC_LOG");
    let o = Running::spawn(c).wait(Duration::from_secs(30));
    Res {
        code: o.code,
        stdout: o.stdout,
        stderr: o.stderr,
    }
}

/// Checks exit 2, no panic, and that stderr contains one of `names`
/// (case-insensitive). Returns a failure description instead of panicking so
/// that every input is tried and all failures are listed at once.
fn expect_usage(what: &str, r: &Res, names: &[&str]) -> Option<String> {
    if let Some(sign) = panic_signs(r.code, &r.stdout, &r.stderr) {
        return Some(format!("{what}: {sign}\n{}", r.stderr));
    }
    if r.code != 2 {
        return Some(format!(
            "{what}: expected exit 2, got {}\nstdout: {}\nstderr: {}",
            r.code, r.stdout, r.stderr
        ));
    }
    let low = r.stderr.to_lowercase();
    if r.stderr.trim().is_empty() {
        return Some(format!("{what}: exit 2 but stderr is empty"));
    }
    if !names.is_empty() && !names.iter().any(|n| low.contains(&n.to_lowercase())) {
        return Some(format!(
            "{what}: stderr does not name the problem (wanted one of {names:?}): {}",
            r.stderr.trim()
        ));
    }
    None
}

// ---------------------------------------------------------------------------
// Argument errors
// ---------------------------------------------------------------------------

#[test]
fn bad_arguments_to_every_command_exit_2_without_panic() {
    let _nowhere = Nowhere;
    let mut sc = Scenario::new(
        SUITE,
        "cli",
        "bad arguments to every command",
        "exit 2, stderr names the problem, no panic/backtrace",
    );
    let tmp = TempDir::new("cli-args");
    let cfg = tmp.path().join("conf.d");
    fs::create_dir_all(&cfg).unwrap();
    // A job that exists in the config dir (its paths do not matter here).
    fs::write(
        cfg.join("docs.json"),
        serde_json::to_string(&good_sftp()).unwrap(),
    )
    .unwrap();
    let good_file = tmp.path().join("good.json");
    fs::write(&good_file, serde_json::to_string(&good_sftp()).unwrap()).unwrap();
    let gf = good_file.to_str().unwrap();
    let empty_dir = tmp.path().join("empty");
    fs::create_dir_all(&empty_dir).unwrap();
    let cd = cfg.to_str().unwrap();

    // (args, any of these words must be in stderr)
    let mut cases: Vec<(Vec<String>, Vec<&str>)> = Vec::new();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    cases.push((s(&[]), vec!["usage", "command"]));
    cases.push((s(&["frobnicate"]), vec!["frobnicate"]));
    cases.push((s(&["--no-such-flag", "status"]), vec!["--no-such-flag"]));
    cases.push((s(&["check-config"]), vec!["FILE", "required"]));
    cases.push((
        s(&["check-config", "/tmp/cs-cli-nonexistent/x.json"]),
        vec!["/tmp/cs-cli-nonexistent/x.json"],
    ));
    cases.push((s(&["check-config", "--bogus", gf]), vec!["--bogus"]));
    cases.push((
        s(&["-c", gf, "--config-dir", cd, "status"]),
        vec!["config-dir", "cannot be used"],
    ));
    for cmd in JOB_COMMANDS {
        let name = cmd[0];
        // missing JOB (no -c, no job name)
        if name != "status" {
            let mut a = s(cmd);
            if name == "restore" {
                a = s(&["restore", "--to", "/tmp/cs-cli-nonexistent/r"]);
            }
            cases.push((a, vec!["JOB", "job"]));
        }
        // extra argument
        if name != "restore" {
            let mut a = s(cmd);
            a.push("docs".into());
            a.push("extra-arg".into());
            cases.push((a, vec!["extra-arg"]));
        }
        // non-existent job
        let mut a = s(cmd);
        if name == "restore" {
            a = s(&["restore", "nosuchjob", "--to", "/tmp/cs-cli-nonexistent/r"]);
        } else {
            a.push("nosuchjob".into());
        }
        cases.push((a, vec!["nosuchjob"]));
        // job name that is a path
        let mut a = s(cmd);
        if name == "restore" {
            a = s(&[
                "restore",
                "../etc/passwd",
                "--to",
                "/tmp/cs-cli-nonexistent/r",
            ]);
        } else {
            a.push("../etc/passwd".into());
        }
        cases.push((a, vec!["../etc/passwd", "not a job name"]));
        // both -c and JOB
        let mut a = s(&["-c", gf]);
        a.extend(s(cmd));
        if name == "restore" {
            // with -c, positional args of restore are PATHs: not an error by design
        } else {
            a.push("docs".into());
            cases.push((a, vec!["docs", "not both", "either"]));
        }
        // -c naming a missing file
        let mut a = s(&["-c", "/tmp/cs-cli-nonexistent/job.json"]);
        a.extend(s(cmd));
        cases.push((a, vec!["/tmp/cs-cli-nonexistent/job.json"]));
        // -c naming a directory
        let mut a = s(&["-c", empty_dir.to_str().unwrap()]);
        a.extend(s(cmd));
        cases.push((a, vec!["directory", empty_dir.to_str().unwrap()]));
        // unknown option
        let mut a = s(cmd);
        a.push("--no-such-option".into());
        a.push("docs".into());
        cases.push((a, vec!["--no-such-option"]));
    }
    // option values
    for v in ["101", "-1", "abc", "", "50.5"] {
        cases.push((
            s(&["backup", "docs", "--max-delete", v]),
            vec!["max-delete", "'-1'"],
        ));
    }
    cases.push((s(&["backup", "docs", "--max-delete"]), vec!["max-delete"]));
    cases.push((s(&["restore", "docs"]), vec!["--to"]));
    cases.push((s(&["restore", "docs", "--to"]), vec!["--to"]));
    cases.push((
        s(&[
            "restore",
            "docs",
            "--to",
            "/tmp/cs-cli-nonexistent/r",
            "--snapshot",
            "yesterday",
        ]),
        vec!["yesterday"],
    ));
    cases.push((
        s(&[
            "restore",
            "docs",
            "--to",
            "/tmp/cs-cli-nonexistent/r",
            "--snapshot",
            "20261399T999999Z",
        ]),
        vec!["20261399T999999Z"],
    ));
    cases.push((
        s(&[
            "restore",
            "docs",
            "--to",
            "/tmp/cs-cli-nonexistent/r",
            "../etc/passwd",
        ]),
        vec![".."],
    ));
    cases.push((
        s(&[
            "restore",
            "docs",
            "--to",
            "/tmp/cs-cli-nonexistent/r",
            "/etc/passwd",
        ]),
        vec!["/etc/passwd"],
    ));
    cases.push((
        s(&[
            "restore",
            "docs",
            "--to",
            "/tmp/cs-cli-nonexistent/r",
            "a/../../b",
        ]),
        vec![".."],
    ));
    cases.push((s(&["verify", "docs", "--deep", "--deep"]), vec!["--deep"]));
    cases.push((
        s(&["--config-dir", "/tmp/cs-cli-nonexistent/confdir", "status"]),
        vec!["/tmp/cs-cli-nonexistent/confdir"],
    ));
    cases.push((
        s(&[
            "--config-dir",
            "/tmp/cs-cli-nonexistent/confdir",
            "backup",
            "docs",
        ]),
        vec!["docs", "/tmp/cs-cli-nonexistent/confdir"],
    ));
    cases.push((s(&["status", ""]), vec!["not a job name", "\"\""]));
    cases.push((s(&["backup", ".hidden"]), vec![".hidden"]));

    let mut failures = Vec::new();
    for (args, names) in &cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = run(&cfg, &a);
        if let Some(f) = expect_usage(&format!("ciphersync {}", a.join(" ")), &r, names) {
            failures.push(f);
        }
    }
    sc.inputs = cases.len() as u64;
    sc.note(format!(
        "{} argument lists tried, {} failures",
        cases.len(),
        failures.len()
    ));
    assert!(
        failures.is_empty(),
        "{} of {} bad argument lists misbehaved:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    sc.pass();
}

// ---------------------------------------------------------------------------
// Job files that are not JSON
// ---------------------------------------------------------------------------

#[test]
fn job_files_that_are_not_json_exit_2() {
    let _nowhere = Nowhere;
    let mut sc = Scenario::new(
        SUITE,
        "cli",
        "job file that is not JSON (check-config and every job command)",
        "exit 2, stderr names the file / says not valid JSON, no panic",
    );
    let tmp = TempDir::new("cli-notjson");
    let cfg = tmp.path().join("conf.d");
    fs::create_dir_all(&cfg).unwrap();
    let good = serde_json::to_string_pretty(&good_sftp()).unwrap();
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("whitespace", b"  \n\t ".to_vec()),
        ("open brace", b"{".to_vec()),
        ("array", b"[]".to_vec()),
        ("null", b"null".to_vec()),
        ("number", b"42".to_vec()),
        ("string", b"\"docs\"".to_vec()),
        ("binary", (0u8..=255).collect()),
        ("nul bytes", vec![0; 64]),
        (
            "invalid utf8",
            b"{\"version\": 1, \"name\": \"\xff\xfe\"}".to_vec(),
        ),
        (
            "truncated good file",
            good.as_bytes()[..good.len() / 2].to_vec(),
        ),
        ("trailing garbage", format!("{good} trailing").into_bytes()),
        ("two objects", format!("{good}{good}").into_bytes()),
        ("yaml", b"version: 1\nname: docs\n".to_vec()),
        ("comments", format!("// job\n{good}").into_bytes()),
        (
            "trailing comma",
            good.replacen("\"name\": \"docs\",", "\"name\": \"docs\",,", 1)
                .into_bytes(),
        ),
        ("single quotes", good.replace('"', "'").into_bytes()),
        (
            "bom",
            [b"\xef\xbb\xbf".as_slice(), good.as_bytes()].concat(),
        ),
        (
            "deep nesting",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        ),
        (
            "duplicate key",
            good.replacen(
                "\"name\": \"docs\",",
                "\"name\": \"docs\", \"name\": \"docs\",",
                1,
            )
            .into_bytes(),
        ),
    ];
    let mut failures = Vec::new();
    let mut tried = 0u64;
    for (label, body) in &bodies {
        let file = tmp.path().join("job.json");
        fs::write(&file, body).unwrap();
        let f = file.to_str().unwrap();
        let r = run(&cfg, &["check-config", f]);
        tried += 1;
        if let Some(e) = expect_usage(&format!("check-config <{label}>"), &r, &[f]) {
            failures.push(e);
        }
        for cmd in JOB_COMMANDS {
            let mut a = vec!["-c", f];
            a.extend_from_slice(cmd);
            let r = run(&cfg, &a);
            tried += 1;
            if let Some(e) = expect_usage(&format!("-c <{label}> {}", cmd.join(" ")), &r, &[f]) {
                failures.push(e);
            }
        }
    }
    sc.inputs = tried;
    sc.note(format!(
        "{} bodies x {} commands = {tried} runs, {} failures",
        bodies.len(),
        JOB_COMMANDS.len() + 1,
        failures.len()
    ));
    assert!(
        failures.is_empty(),
        "{} failures:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    sc.pass();
}

// ---------------------------------------------------------------------------
// Each field wrong in turn
// ---------------------------------------------------------------------------

fn good_sftp() -> Value {
    json!({
        "version": 1,
        "name": "docs",
        "source": "/tmp/cs-cli-nonexistent/srv/docs",
        "exclude": ["*.tmp", "cache/"],
        "password_file": "/tmp/cs-cli-nonexistent/keys/docs",
        "gocryptfs_config": "/tmp/cs-cli-nonexistent/state/gocryptfs.reverse.conf",
        "filenames": "encrypted",
        "target": {
            "type": "sftp",
            "host": "backup.example.org",
            "port": 22,
            "user": "docs",
            "path": "/backups/docs",
            "identity_file": "/tmp/cs-cli-nonexistent/state/id_ed25519",
            "known_hosts_file": "/tmp/cs-cli-nonexistent/known_hosts",
            "transport": "sshfs",
            "remote_checksums": "ssh"
        },
        "snapshots": { "keep_last": 30, "keep_days": 90 },
        "max_delete_percent": 50,
        "state_dir": "/tmp/cs-cli-nonexistent/state",
        "runtime_dir": "/tmp/cs-cli-nonexistent/run"
    })
}

fn good_local() -> Value {
    json!({
        "version": 1,
        "name": "usb",
        "source": "/tmp/cs-cli-nonexistent/srv/docs",
        "password_file": "/tmp/cs-cli-nonexistent/keys/docs",
        "target": { "type": "local", "path": "/tmp/cs-cli-nonexistent/mnt/usb" },
        "state_dir": "/tmp/cs-cli-nonexistent/state",
        "runtime_dir": "/tmp/cs-cli-nonexistent/run"
    })
}

const PATH_FIELDS: &[&str] = &[
    "source",
    "password_file",
    "gocryptfs_config",
    "state_dir",
    "runtime_dir",
    "target.path",
    "target.identity_file",
    "target.known_hosts_file",
];
const REQUIRED: &[&str] = &[
    "version",
    "name",
    "source",
    "password_file",
    "target",
    "target.type",
    "target.path",
    "target.host",
    "target.user",
    "target.known_hosts_file",
];
const ENUMS: &[&str] = &[
    "filenames",
    "target.type",
    "target.transport",
    "target.remote_checksums",
];

fn get_mut<'a>(v: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur.get_mut(part)?;
    }
    Some(cur)
}

fn remove(v: &mut Value, path: &str) {
    let (parent, leaf) = match path.rsplit_once('.') {
        Some((p, l)) => (get_mut(v, p).unwrap(), l),
        None => (v, path),
    };
    parent.as_object_mut().unwrap().remove(leaf);
}

/// Every leaf (and object) path of a JSON object: "a", "b.c", ...
fn paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Object(m) = v {
        for (k, child) in m {
            let p = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            out.push(p.clone());
            paths(child, &p, out);
        }
    }
}

/// Values of other JSON types than `v`.
fn wrong_types(v: &Value) -> Vec<Value> {
    let all = [
        json!(42),
        json!("text"),
        json!(true),
        json!([1, 2]),
        json!({"x": 1}),
        json!(-1),
        json!(1.5),
    ];
    all.into_iter()
        .filter(|w| {
            std::mem::discriminant(w) != std::mem::discriminant(v)
                || (v.is_number() && w.is_number() && (w.as_i64() == Some(-1) || w.is_f64()))
        })
        .collect()
}

/// (label, mutated job, words one of which stderr must contain)
fn variants() -> Vec<(String, Value, Vec<String>)> {
    let mut out: Vec<(String, Value, Vec<String>)> = Vec::new();
    for (base_label, good) in [("sftp", good_sftp()), ("local", good_local())] {
        let mut ps = Vec::new();
        paths(&good, "", &mut ps);
        for p in &ps {
            let leaf = p.rsplit('.').next().unwrap().to_string();
            let cur = {
                let mut g = good.clone();
                get_mut(&mut g, p).unwrap().clone()
            };
            // wrong type
            let array_elem = p == "exclude";
            for w in wrong_types(&cur) {
                if array_elem && w.is_array() {
                    continue;
                }
                let mut j = good.clone();
                *get_mut(&mut j, p).unwrap() = w.clone();
                out.push((format!("{base_label}: {p} = {w}"), j, vec![leaf.clone()]));
            }
            // null where the field is required
            if REQUIRED.contains(&p.as_str()) {
                let mut j = good.clone();
                *get_mut(&mut j, p).unwrap() = Value::Null;
                out.push((format!("{base_label}: {p} = null"), j, vec![leaf.clone()]));
                // missing required field
                if !(base_label == "local"
                    && ["target.host", "target.user", "target.known_hosts_file"]
                        .contains(&p.as_str()))
                {
                    let mut j = good.clone();
                    remove(&mut j, p);
                    out.push((format!("{base_label}: {p} missing"), j, vec![leaf.clone()]));
                }
            }
            // relative / empty / dot-dot paths
            if PATH_FIELDS.contains(&p.as_str()) {
                for bad in ["relative/path", "", "./x", "/abs/../escape", "~/x"] {
                    let mut j = good.clone();
                    *get_mut(&mut j, p).unwrap() = json!(bad);
                    out.push((
                        format!("{base_label}: {p} = {bad:?}"),
                        j,
                        vec![leaf.clone()],
                    ));
                }
            }
            // bad enum values
            if ENUMS.contains(&p.as_str()) {
                for bad in ["bogus", "", "SFTP", "Encrypted", " sshfs"] {
                    let mut j = good.clone();
                    *get_mut(&mut j, p).unwrap() = json!(bad);
                    out.push((
                        format!("{base_label}: {p} = {bad:?}"),
                        j,
                        vec![leaf.clone(), "variant".into()],
                    ));
                }
            }
        }
        // unknown field at every object level
        for (obj, label) in [
            ("", "top level"),
            ("target", "target"),
            ("snapshots", "snapshots"),
        ] {
            let mut j = good.clone();
            let o = if obj.is_empty() {
                Some(&mut j)
            } else {
                get_mut(&mut j, obj)
            };
            if let Some(Value::Object(m)) = o {
                m.insert("bogus_field_x".into(), json!(1));
                out.push((
                    format!("{base_label}: unknown field in {label}"),
                    j,
                    vec!["bogus_field_x".into()],
                ));
            }
        }
    }
    // Semantic errors, one field at a time, on the sftp file.
    let semantic: &[(&str, Value, &str)] = &[
        ("version", json!(2), "version"),
        ("version", json!(0), "version"),
        ("version", json!(4294967296u64), "version"),
        ("name", json!(""), "name"),
        ("name", json!("a/b"), "name"),
        ("name", json!("-docs"), "name"),
        ("name", json!(".docs"), "name"),
        ("name", json!("docs job"), "name"),
        ("name", json!("x".repeat(65)), "name"),
        ("name", json!("dócs"), "name"),
        ("exclude", json!([""]), "exclude"),
        ("exclude", json!(["  "]), "exclude"),
        ("exclude", json!([1]), "exclude"),
        ("exclude", json!([null]), "exclude"),
        ("target.host", json!(""), "host"),
        (
            "target.host",
            json!("-oProxyCommand=touch /tmp/pwned"),
            "host",
        ),
        ("target.host", json!("a b"), "host"),
        ("target.host", json!("user@host"), "host"),
        ("target.user", json!(""), "user"),
        ("target.user", json!("-oProxyCommand=x"), "user"),
        ("target.user", json!("@b"), "user"),
        ("target.user", json!("root\nProxyCommand=x"), "user"),
        ("target.user", json!("a b"), "user"),
        ("target.port", json!(0), "port"),
        ("target.port", json!(65536), "port"),
        ("target.port", json!(-22), "port"),
        ("target.port", json!("22"), "port"),
        (
            "target.known_hosts_file",
            json!("/x/\"quoted\""),
            "known_hosts",
        ),
        ("snapshots.keep_last", json!(0), "keep_last"),
        ("snapshots.keep_last", json!(-1), "keep_last"),
        ("snapshots.keep_days", json!(-1), "keep_days"),
        ("snapshots.keep_days", json!(1e10), "keep_days"),
        ("max_delete_percent", json!(101), "max_delete_percent"),
        ("max_delete_percent", json!(-1), "max_delete_percent"),
        ("max_delete_percent", json!(256), "max_delete_percent"),
        ("max_delete_percent", json!(50.5), "max_delete_percent"),
    ];
    for (p, v, word) in semantic {
        let mut j = good_sftp();
        *get_mut(&mut j, p).unwrap() = v.clone();
        out.push((format!("sftp: {p} = {v}"), j, vec![word.to_string()]));
    }
    // sftp-only fields on a local target
    for f in [
        "host",
        "port",
        "user",
        "identity_file",
        "known_hosts_file",
        "transport",
        "remote_checksums",
    ] {
        let mut j = good_local();
        let v = good_sftp()["target"][f].clone();
        j["target"].as_object_mut().unwrap().insert(f.into(), v);
        out.push((format!("local: target.{f} set"), j, vec![f.to_string()]));
    }
    // local target inside the source
    let mut j = good_local();
    j["target"]["path"] = json!("/tmp/cs-cli-nonexistent/srv/docs/backup");
    out.push((
        "local: target.path inside source".into(),
        j,
        vec!["target.path".into()],
    ));
    // whole objects of the wrong shape
    let mut j = good_sftp();
    j["snapshots"] = json!({"keep_last": 1, "keep_days": 1, "keep_weeks": 1});
    out.push((
        "sftp: snapshots.keep_weeks".into(),
        j,
        vec!["keep_weeks".into()],
    ));
    out
}

#[test]
fn job_file_with_each_field_wrong_in_turn_exits_2_naming_the_field() {
    let _nowhere = Nowhere;
    let mut sc = Scenario::new(
        SUITE,
        "cli",
        "job file with each field wrong in turn (wrong type, relative path, bad enum, unknown field, missing required field, out-of-range value)",
        "check-config and every job command exit 2 naming the field; no panic",
    );
    let tmp = TempDir::new("cli-fields");
    let cfg = tmp.path().join("conf.d");
    fs::create_dir_all(&cfg).unwrap();
    // The good files themselves pass check-config (so each variant differs in one field only).
    for (label, good) in [("sftp", good_sftp()), ("local", good_local())] {
        let f = tmp.path().join(format!("good-{label}.json"));
        fs::write(&f, serde_json::to_string_pretty(&good).unwrap()).unwrap();
        let r = run(&cfg, &["check-config", f.to_str().unwrap()]);
        assert_eq!(
            r.code, 0,
            "the good {label} file must pass check-config: {}",
            r.stderr
        );
    }
    let vs = variants();
    let mut failures = Vec::new();
    let mut tried = 0u64;
    for (i, (label, job, words)) in vs.iter().enumerate() {
        let file = tmp.path().join(format!("v{i}.json"));
        fs::write(&file, serde_json::to_string_pretty(job).unwrap()).unwrap();
        let f = file.to_str().unwrap();
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        let r = run(&cfg, &["check-config", f]);
        tried += 1;
        if let Some(e) = expect_usage(&format!("check-config [{label}]"), &r, &w) {
            failures.push(e);
            continue;
        }
        // The same file through every job command (-c) and, as <name>.json, by name.
        // (Rotated over the commands to keep the suite fast: each variant goes
        // through check-config, one job command (-c) and one run by name.)
        for k in 1..3 {
            if k == 2 {
                fs::write(cfg.join("docs.json"), serde_json::to_string(job).unwrap()).unwrap();
                let by_name: &[&str] = if i % 2 == 0 {
                    &["backup", "docs"]
                } else {
                    &["status"]
                };
                let r = run(&cfg, by_name);
                tried += 1;
                if let Some(e) = expect_usage(
                    &format!("{} via config dir [{label}]", by_name.join(" ")),
                    &r,
                    &w,
                ) {
                    failures.push(e);
                }
                continue;
            }
            let cmd = JOB_COMMANDS[(i * 2 + k) % JOB_COMMANDS.len()];
            let mut a = vec!["-c", f];
            a.extend_from_slice(cmd);
            let r = run(&cfg, &a);
            tried += 1;
            if let Some(e) = expect_usage(&format!("-c [{label}] {}", cmd.join(" ")), &r, &w) {
                failures.push(e);
            }
        }
    }
    sc.inputs = tried;
    sc.note(format!(
        "{} job-file variants from 2 good files, {tried} runs, {} failures",
        vs.len(),
        failures.len()
    ));
    assert!(
        failures.is_empty(),
        "{} of {tried} runs misbehaved:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    sc.pass();
}

// ---------------------------------------------------------------------------
// Bounded fuzz of the job-file parser (issue 5, item 4)
// ---------------------------------------------------------------------------

/// Iterations; override with CIPHERSYNC_FUZZ_ITERS.
fn fuzz_iters(default: u64) -> u64 {
    std::env::var("CIPHERSYNC_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn fuzz_job_files_through_check_config_never_panics() {
    let _nowhere = Nowhere;
    let iters = fuzz_iters(400);
    let seed = 0x5EED_C1F5;
    let mut sc = Scenario::new(
        SUITE,
        "fuzz",
        &format!("fuzz: mutated job files -> check-config and -c FILE backup (seed {seed:#x})"),
        "exit 0 or 2, never a panic (exit 101 / \"panicked\")",
    );
    let tmp = TempDir::new("cli-fuzz");
    let cfg = tmp.path().join("conf.d");
    fs::create_dir_all(&cfg).unwrap();
    let mut rng = Fuzz::new(seed);
    let seeds: Vec<Vec<u8>> = vec![
        serde_json::to_vec_pretty(&good_sftp()).unwrap(),
        serde_json::to_vec(&good_local()).unwrap(),
    ];
    let mut failures = Vec::new();
    let mut codes: std::collections::BTreeMap<i32, u64> = Default::default();
    let file = tmp.path().join("fuzz.json");
    let f = file.to_str().unwrap().to_string();
    for i in 0..iters {
        let base = rng.pick(&seeds).clone();
        let body = if i % 5 == 4 {
            // Structured mutation: a random field replaced by a random value.
            let mut v: Value = serde_json::from_slice(&base).unwrap();
            let mut ps = Vec::new();
            paths(&v, "", &mut ps);
            let p = rng.pick(&ps).clone();
            let vals = [
                json!(null),
                json!(""),
                json!("/"),
                json!(u64::MAX),
                json!(-1),
                json!(1e300),
                json!("x".repeat(5000)),
                json!([[[]]]),
                json!({"": {}}),
                json!("\u{0}"),
                json!("/a\nb"),
                json!("ünï/cödé"),
                json!(true),
            ];
            *get_mut(&mut v, &p).unwrap() = rng.pick(&vals).clone();
            serde_json::to_vec(&v).unwrap()
        } else {
            rng.mutate(&base)
        };
        fs::write(&file, &body).unwrap();
        // check-config must be 0 or 2; never anything else.
        let r = run(&cfg, &["check-config", &f]);
        *codes.entry(r.code).or_default() += 1;
        if let Some(sign) = panic_signs(r.code, &r.stdout, &r.stderr) {
            failures.push(format!(
                "iteration {i}: {sign}\ninput: {}\n{}",
                String::from_utf8_lossy(&body),
                r.stderr
            ));
        } else if r.code != 0 && r.code != 2 {
            failures.push(format!(
                "iteration {i}: check-config exit {}\n{}",
                r.code, r.stderr
            ));
        }
        // Where it is invalid, a job command must agree (exit 2, no panic).
        if r.code == 2 && i % 8 == 0 {
            let r2 = run(&cfg, &["-c", &f, "status"]);
            if let Some(sign) = panic_signs(r2.code, &r2.stdout, &r2.stderr) {
                failures.push(format!("iteration {i} (status): {sign}\n{}", r2.stderr));
            } else if r2.code != 2 {
                failures.push(format!(
                    "iteration {i}: check-config said 2 but `-c FILE status` exit {}\n{}",
                    r2.code, r2.stderr
                ));
            }
        }
    }
    sc.inputs = iters;
    sc.note(format!(
        "{iters} iterations, exit codes {codes:?}, {} failures",
        failures.len()
    ));
    assert!(
        failures.is_empty(),
        "{} fuzz failures:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    sc.pass();
}
