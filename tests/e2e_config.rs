//! `check-config FILE`: exit 0 on a valid file without touching the file
//! system, exit 2 naming the bad field otherwise. The same validation guards
//! every command run with `-c`.

mod common;

use common::*;
use std::fs;
use std::path::Path;

/// A valid sftp job whose paths all point below `base/missing` (which does
/// not exist): check-config must not care.
fn valid(base: &Path) -> Value {
    let m = base.join("missing");
    json!({
        "version": 1,
        "name": "docs",
        "source": m.join("src"),
        "exclude": ["*.tmp", "cache/"],
        "password_file": m.join("password"),
        "gocryptfs_config": m.join("state/gocryptfs.reverse.conf"),
        "filenames": "encrypted",
        "target": {
            "type": "sftp",
            "host": "backup.example.org",
            "port": 22,
            "user": "docs",
            "path": "/backups/docs",
            "identity_file": m.join("state/id_ed25519"),
            "known_hosts_file": m.join("known_hosts"),
            "transport": "sshfs",
            "remote_checksums": "ssh"
        },
        "snapshots": { "keep_last": 30, "keep_days": 90 },
        "state_dir": m.join("state"),
        "runtime_dir": m.join("run"),
    })
}

fn check(tmp: &TempDir, file: &str, v: &Value) -> Out {
    let p = tmp.path().join(file);
    fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    run_bin(&["check-config", p.to_str().unwrap()])
}

/// Mutates a valid config, expects exit 2 and `field` named in the output.
fn rejects(case: &str, field: &str, mutate: impl FnOnce(&mut Value)) {
    let tmp = TempDir::new("cfg");
    let mut v = valid(tmp.path());
    mutate(&mut v);
    let o = check(&tmp, "job.json", &v);
    o.expect_code(2, &format!("check-config with {case}"));
    assert!(
        o.text().contains(field),
        "check-config with {case}: message does not name `{field}`:\n{}",
        o.dump()
    );
}

#[test]
fn valid_sftp_and_local_configs_pass_without_touching_paths() {
    let tmp = TempDir::new("cfg-valid");
    let v = valid(tmp.path());
    check(&tmp, "full.json", &v).expect_code(0, "check-config on the README example");
    // minimal: only the required fields, defaults for the rest
    let mut min = v.clone();
    for k in [
        "exclude",
        "gocryptfs_config",
        "filenames",
        "snapshots",
        "state_dir",
        "runtime_dir",
    ] {
        min.as_object_mut().unwrap().remove(k);
    }
    for k in ["port", "identity_file", "transport", "remote_checksums"] {
        min["target"].as_object_mut().unwrap().remove(k);
    }
    check(&tmp, "min.json", &min).expect_code(0, "check-config on a minimal sftp job");
    let mut local = v.clone();
    local["target"] = json!({ "type": "local", "path": tmp.path().join("missing/usb") });
    check(&tmp, "local.json", &local).expect_code(0, "check-config on a local job");
    let mut nulls = v.clone();
    nulls["snapshots"] = json!({ "keep_last": null, "keep_days": 7 });
    nulls["max_delete_percent"] = json!(100);
    check(&tmp, "nulls.json", &nulls).expect_code(0, "check-config with a null snapshot bound");
    // several files at once
    let a = tmp.path().join("full.json");
    let b = tmp.path().join("local.json");
    run_bin(&["check-config", a.to_str().unwrap(), b.to_str().unwrap()])
        .expect_code(0, "check-config A B");
    assert!(
        !tmp.path().join("missing").exists(),
        "check-config created paths from the job file"
    );
}

#[test]
fn unknown_top_level_field() {
    rejects("an unknown field", "bogus_field", |v| {
        v["bogus_field"] = json!(1)
    });
}

#[test]
fn unknown_target_field() {
    rejects("an unknown target field", "colour", |v| {
        v["target"]["colour"] = json!("red")
    });
}

#[test]
fn relative_source() {
    rejects("a relative source", "source", |v| {
        v["source"] = json!("srv/docs")
    });
}

#[test]
fn relative_password_file() {
    rejects("a relative password_file", "password_file", |v| {
        v["password_file"] = json!("keys/docs")
    });
}

#[test]
fn relative_identity_file() {
    rejects("a relative identity_file", "identity_file", |v| {
        v["target"]["identity_file"] = json!("./id")
    });
}

#[test]
fn relative_known_hosts_file() {
    rejects("a relative known_hosts_file", "known_hosts_file", |v| {
        v["target"]["known_hosts_file"] = json!("known_hosts")
    });
}

#[test]
fn bad_transport() {
    rejects("a bad transport", "transport", |v| {
        v["target"]["transport"] = json!("ftp")
    });
}

#[test]
fn bad_remote_checksums() {
    rejects("bad remote_checksums", "remote_checksums", |v| {
        v["target"]["remote_checksums"] = json!("md5")
    });
}

#[test]
fn bad_filenames() {
    rejects("bad filenames", "filenames", |v| {
        v["filenames"] = json!("rot13")
    });
}

#[test]
fn missing_password_file() {
    rejects("no password_file", "password_file", |v| {
        v.as_object_mut().unwrap().remove("password_file");
    });
}

#[test]
fn missing_source() {
    rejects("no source", "source", |v| {
        v.as_object_mut().unwrap().remove("source");
    });
}

#[test]
fn sftp_without_known_hosts_file() {
    rejects(
        "an sftp target without known_hosts_file",
        "known_hosts_file",
        |v| {
            v["target"]
                .as_object_mut()
                .unwrap()
                .remove("known_hosts_file");
        },
    );
}

#[test]
fn wrong_version() {
    rejects("version 2", "version", |v| v["version"] = json!(2));
}

#[test]
fn max_delete_percent_out_of_range() {
    rejects("max_delete_percent 101", "max_delete_percent", |v| {
        v["max_delete_percent"] = json!(101)
    });
}

#[test]
fn not_json_exits_2() {
    let tmp = TempDir::new("cfg-notjson");
    let p = tmp.path().join("job.json");
    fs::write(&p, "{ this is not json").unwrap();
    run_bin(&["check-config", p.to_str().unwrap()]).expect_code(2, "check-config on broken JSON");
}

#[test]
fn one_bad_file_among_good_ones_exits_2() {
    let tmp = TempDir::new("cfg-multi");
    let good = valid(tmp.path());
    let mut bad = good.clone();
    bad["target"]["transport"] = json!("carrier-pigeon");
    check(&tmp, "good.json", &good);
    check(&tmp, "bad.json", &bad);
    let (g, b) = (tmp.path().join("good.json"), tmp.path().join("bad.json"));
    let o = run_bin(&["check-config", g.to_str().unwrap(), b.to_str().unwrap()]);
    o.expect_code(2, "check-config GOOD BAD");
    assert!(
        o.text().contains("transport"),
        "does not name the bad field:\n{}",
        o.dump()
    );
}

/// Every command that takes `-c` refuses an invalid job file with exit 2
/// before doing anything.
#[test]
fn commands_refuse_invalid_job_file() {
    let tmp = TempDir::new("cfg-cmds");
    let mut v = valid(tmp.path());
    v["bogus_field"] = json!(true);
    let p = tmp.path().join("job.json");
    fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    for cmd in [&["init"][..], &["backup"], &["verify"], &["status"]] {
        let mut args = vec!["-c", p.to_str().unwrap()];
        args.extend_from_slice(cmd);
        let o = run_bin(&args);
        o.expect_code(2, &format!("{} with an unknown field", cmd.join(" ")));
        assert!(
            o.text().contains("bogus_field"),
            "{}: does not name the field:\n{}",
            cmd.join(" "),
            o.dump()
        );
    }
    assert!(
        !tmp.path().join("missing").exists(),
        "a command created paths from an invalid job file"
    );
}

/// check-config's stderr for a file holding `text`: the one error line.
fn error_line(tmp: &TempDir, text: &str) -> (String, String) {
    let p = tmp.path().join("job.json");
    fs::write(&p, text).unwrap();
    let o = run_bin(&["check-config", p.to_str().unwrap()]);
    o.expect_code(2, "check-config on a bad job file");
    assert_eq!(o.stderr.lines().count(), 1, "not one line:\n{}", o.dump());
    (o.stderr.trim_end().to_string(), p.display().to_string())
}

/// Type errors name the field and say in words what it takes (issue 17).
#[test]
fn type_errors_say_what_the_field_takes() {
    let tmp = TempDir::new("cfg-words");
    let base = valid(tmp.path());
    let cases: [(&str, Value, &str); 6] = [
        (
            "max_delete_percent",
            json!("50"),
            r#"field `max_delete_percent`: expected a whole number 0–100 (a percentage), found the string "50""#,
        ),
        (
            "target.port",
            json!("22"),
            r#"field `target.port`: expected a whole number 1–65535, found the string "22""#,
        ),
        (
            "target.connections",
            json!(32),
            "field `target.connections`: expected a whole number 1–16, found the number 32",
        ),
        (
            "target.transport",
            json!("scp"),
            r#"field `target.transport`: expected one of "sshfs" or "rsync", found the string "scp""#,
        ),
        (
            "exclude",
            json!("*.tmp"),
            r#"field `exclude`: expected a list of strings (patterns), found the string "*.tmp""#,
        ),
        (
            "source",
            json!(["/srv"]),
            "field `source`: expected an absolute path (a string), found a list",
        ),
    ];
    for (field, value, message) in cases {
        let mut v = base.clone();
        match field.strip_prefix("target.") {
            Some(f) => v["target"][f] = value,
            None => v[field] = value,
        }
        let (line, file) = error_line(&tmp, &serde_json::to_string_pretty(&v).unwrap());
        assert_eq!(line, format!("ciphersync: error: {file}: {message}"));
    }
}

/// A JSON syntax error gives the line and column (issue 17).
#[test]
fn syntax_errors_give_line_and_column() {
    let tmp = TempDir::new("cfg-syntax");
    let good = serde_json::to_string_pretty(&valid(tmp.path())).unwrap();
    // A trailing comma after the last field of the job.
    let trailing = good.trim_end().strip_suffix("\n}").unwrap().to_string() + ",\n}\n";
    let last_line = trailing.lines().count();
    let (line, file) = error_line(&tmp, &trailing);
    assert_eq!(
        line,
        format!(
            "ciphersync: error: {file} line {last_line}, column 1: not valid JSON: trailing comma"
        )
    );
    let (line, file) = error_line(&tmp, "{\n  \"version\": 1,\n  \"name\": docs\n}\n");
    assert_eq!(
        line,
        format!(
            "ciphersync: error: {file} line 3, column 11: not valid JSON in field `name`: expected value"
        )
    );
}

/// An unknown field is named, with the closest known one (issue 17).
#[test]
fn unknown_field_suggests_the_known_one() {
    let tmp = TempDir::new("cfg-suggest");
    let mut v = valid(tmp.path());
    v["target"]["knownHostsFile"] = json!("/etc/kh");
    let (line, file) = error_line(&tmp, &serde_json::to_string(&v).unwrap());
    assert_eq!(
        line,
        format!(
            "ciphersync: error: {file}: unknown field `target.knownHostsFile`; did you mean `target.known_hosts_file`?"
        )
    );
}

/// Fields that reach ssh_config refuse line breaks, shown escaped (issue 13).
#[test]
fn user_with_a_line_break_is_refused() {
    let tmp = TempDir::new("cfg-user");
    let mut v = valid(tmp.path());
    v["target"]["user"] = json!("root\nProxyCommand=sh -c 'touch /tmp/x'");
    let (line, file) = error_line(&tmp, &serde_json::to_string(&v).unwrap());
    assert_eq!(
        line,
        format!(
            "ciphersync: error: {file}: field `target.user`: expected a login name (1-128 of \
             A-Z a-z 0-9 _ - . @, not starting with - or @), found \
             \"root\\nProxyCommand=sh -c 'touch /tmp/x'\""
        )
    );
}
