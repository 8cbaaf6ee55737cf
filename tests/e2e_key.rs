//! The master key on paper (`key export`, `key check`) and the README's
//! "with the master key alone" lines, run against real backups; and the
//! warnings about gocryptfs releases with known reverse-mode bugs.
//!
//! The README lines are taken from README.md itself (the ```sh block after
//! "With the master key alone" in "Restoring by hand") and changed only as
//! tests/e2e_readme.rs changes its lines: the job example's login and
//! paths become this job's, the example directories temp dirs, and the
//! script's stdin is a file holding the key, standing for the terminal the
//! reader types it into. Before they run, the password file, the local
//! gocryptfs config and the target's `files/gocryptfs.conf` are deleted:
//! what is left is the key and plain gocryptfs.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The ```sh block after "With the master key alone", inside "Restoring by hand".
fn readme_master_key_lines(lines: &[&str]) -> Vec<String> {
    let section = lines
        .iter()
        .position(|l| l.starts_with("## ") && l.contains("Restoring by hand"))
        .expect("README.md: no \"Restoring by hand\" section");
    let end = lines[section + 1..]
        .iter()
        .position(|l| l.starts_with("## "))
        .map(|n| n + section + 1)
        .unwrap_or(lines.len());
    let para = lines[section..end]
        .iter()
        .position(|l| l.contains("With the master key alone"))
        .map(|n| n + section)
        .expect("README.md \"Restoring by hand\": no \"With the master key alone\" paragraph");
    let (start, block) = fenced_block(lines, para, "```sh")
        .expect("README.md: no ```sh block after \"With the master key alone\"");
    assert!(
        start < end,
        "README.md: the master-key block is not inside \"Restoring by hand\""
    );
    block
}

fn example_target(example: &Value, key: &str) -> String {
    match &example["target"][key] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("README job example: target.{key} is {other}"),
    }
}

/// `ciphersync -c JOB ARGS...` with `stdin` as its stdin (the harness's
/// runner gives /dev/null): through `sh`, which redirects and execs.
fn run_with_stdin(job: &Job, args: &[&str], stdin: &Path) -> Out {
    let inner = job.command(args);
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("exec \"$@\" <\"$KEY_INPUT\"")
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args())
        .env("KEY_INPUT", stdin);
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    run_cmd(c)
}

/// `key export --json`: the document, with the warning checked.
fn export(job: &Job) -> Value {
    let (out, doc) = job.run_json(&["key", "export"]);
    out.expect_code(0, "key export");
    assert!(
        out.stderr.contains("is the master key of job"),
        "key export did not warn on stderr that its output is the key:\n{}",
        out.dump()
    );
    doc
}

/// The exported key in a file of its own (0600), as a person would type it.
fn key_file(job: &Job, doc: &Value, name: &str) -> PathBuf {
    let key = doc["master_key"]
        .as_str()
        .expect("master_key in key export");
    let path = job.root.join(name);
    write_mode(&path, format!("{key}\n").as_bytes(), 0o600);
    path
}

fn a_wrong_key(job: &Job, name: &str) -> PathBuf {
    let path = job.root.join(name);
    write_mode(&path, format!("{}\n", "5a".repeat(32)).as_bytes(), 0o600);
    path
}

fn assert_key_absent(key: &str, what: &str, text: &str) {
    let digits: String = key.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    for part in key.split('-').chain([digits.as_str()]) {
        assert!(
            !text.contains(part),
            "{what} holds (part of) the master key {part}:\n{text}"
        );
    }
}

#[test]
fn readme_master_key_lines_restore_without_password_or_config() {
    let test = "readme_master_key_lines_restore_without_password_or_config";
    if !require_tools(test, SFTP_TOOLS) || !require_tools(test, &["gocryptfs-xray", "cp", "sh"]) {
        return;
    }
    let readme = fs::read_to_string(README).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let example = readme_job_example(&lines);
    let block = readme_master_key_lines(&lines);

    let job = Job::sftp("key-readme")
        .gocryptfs_config_in_state_dir()
        .build();
    make_sample_tree(&job.source);
    job.init_and_backup();
    let doc = export(&job);
    let key = doc["master_key"].as_str().unwrap().to_string();
    let keyfile = key_file(&job, &doc, "paper-key");

    // key check proves the key, with -v logging every command it runs:
    // the key is in none of them, nor in status.json.
    let out = run_with_stdin(&job, &["key", "check", "-v"], &keyfile);
    out.expect_code(0, "key check with the exported key");
    assert!(
        out.stdout.contains("the master key opens the backup"),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr.contains("-masterkey=stdin"),
        "key check -v logged no gocryptfs -masterkey=stdin mount:\n{}",
        out.dump()
    );
    assert_key_absent(&key, "key check -v's log", &out.stderr);
    let status = fs::read_to_string(job.state_dir.join("status.json")).unwrap();
    assert_key_absent(&key, "status.json", &status);
    // A wrong key of the right form: encrypted names do not decrypt.
    let wrong = a_wrong_key(&job, "wrong-key");
    let out = run_with_stdin(&job, &["key", "check"], &wrong);
    out.expect_code(1, "key check with a wrong key");
    assert!(
        out.stderr.contains("does not open") && out.stderr.contains("no file name"),
        "{}",
        out.dump()
    );

    // The README's lines, for this job.
    let sshd = job.sshd.as_ref().unwrap();
    let ex = |k: &str| example_target(&example, k);
    let remote_mnt = job.root.join("mk-remote");
    let plain_mnt = job.root.join("mk-plain");
    let restored = job.root.join("mk-restored");
    let subst: Vec<(String, String)> = vec![
        (ex("identity_file"), sshd.client_key.display().to_string()),
        (
            ex("known_hosts_file"),
            sshd.known_hosts.display().to_string(),
        ),
        (
            format!("{}@{}", ex("user"), ex("host")),
            "root@127.0.0.1".to_string(),
        ),
        (format!("-p {}", ex("port")), format!("-p {}", sshd.port)),
        (ex("path"), job.target_path.display().to_string()),
        ("/srv/docs-restored".into(), restored.display().to_string()),
        ("/mnt/remote".into(), remote_mnt.display().to_string()),
        ("/mnt/plain".into(), plain_mnt.display().to_string()),
    ];
    let snippet = block.join("\n");
    let (script, absent) = substitute(&snippet, &subst);
    assert!(
        absent.is_empty(),
        "README \"With the master key alone\": the lines no longer use {absent:?} from the \
         job file example (or the example mount points):\n{snippet}"
    );
    // The README's lines are what key export prints for such a job (the
    // example and this job both have encrypted names).
    for (field, what) in [
        ("mount_remote", "sshfs line"),
        ("read_files", "gocryptfs line"),
    ] {
        let printed = doc[field].as_str().unwrap();
        let (printed, _) = substitute(printed, &subst);
        assert!(
            script.lines().any(|l| l.starts_with(&printed)),
            "key export's {what} `{printed}` is not among the README's lines:\n{script}"
        );
    }

    // Nothing but the key: no password, no config anywhere.
    fs::remove_file(&job.password_file).unwrap();
    fs::remove_file(job.state_dir.join("gocryptfs.reverse.conf")).unwrap();
    fs::remove_file(job.files_dir().join("gocryptfs.conf")).unwrap();

    let script = format!(
        "set -e\nexec <{}   # the master key, as typed at the terminal\n{script}\n",
        keyfile.display()
    );
    let out = run_cmd({
        let mut c = Command::new("sh");
        c.arg("-c").arg(&script);
        c
    });
    let mounted = mounts_under(&job.root);
    unmount_all_under(&job.root);
    out.expect_code(0, &format!("the README's master-key lines:\n{script}"));
    assert!(
        mounted.is_empty(),
        "the README's lines left mounts behind: {mounted:?}"
    );
    assert_trees_equal(&job.source, &restored);
    job.assert_clean();
}

#[test]
fn exported_lines_read_files_and_a_snapshot_of_a_plaintext_names_job() {
    let test = "exported_lines_read_files_and_a_snapshot_of_a_plaintext_names_job";
    if !require_tools(test, LOCAL_TOOLS) || !require_tools(test, &["gocryptfs-xray", "sh"]) {
        return;
    }
    let job = Job::local("key-plain")
        .gocryptfs_config_in_state_dir()
        .set("filenames", json!("plaintext"))
        .build();
    make_sample_tree(&job.source);
    job.init_and_backup();
    let old = fs::read(job.source.join("one-byte")).unwrap();
    write_mode(&job.source.join("one-byte"), b"a new version\n", 0o644);
    let second = job.backup_ok();
    let id = second["snapshot"]
        .as_str()
        .expect("the second backup's snapshot id")
        .to_string();

    let doc = export(&job);
    assert_eq!(
        doc["gocryptfs_flags"],
        json!(["-aessiv", "-plaintextnames"]),
        "{doc}"
    );
    assert!(doc["mount_remote"].is_null(), "{doc}");
    let keyfile = key_file(&job, &doc, "paper-key");

    // key check from a file; then a wrong key: with plaintext names the
    // names show, and every block fails authentication.
    let (out, check) = job.run_json(&["key", "check", "--from", keyfile.to_str().unwrap()]);
    out.expect_code(0, "key check --from FILE");
    assert!(check["files_read"].as_u64().unwrap() >= 1, "{check}");
    assert!(check["equal_to_source"].as_u64().unwrap() >= 1, "{check}");
    let wrong = a_wrong_key(&job, "wrong-key");
    let out = job.run(&["key", "check", "--from", wrong.to_str().unwrap()]);
    out.expect_code(1, "key check with a wrong key");
    assert!(
        out.stderr.contains("does not open") && out.stderr.contains("failed authentication"),
        "{}",
        out.dump()
    );
    let not_a_key = job.root.join("not-a-key");
    write_mode(&not_a_key, b"my password\n", 0o600);
    let out = job.run(&["key", "check", "--from", not_a_key.to_str().unwrap()]);
    out.expect_code(2, "key check with something that is no key");
    assert!(
        out.stderr.contains("not a gocryptfs master key"),
        "{}",
        out.dump()
    );

    // The printed commands, with the key alone.
    fs::remove_file(&job.password_file).unwrap();
    fs::remove_file(job.state_dir.join("gocryptfs.reverse.conf")).unwrap();
    fs::remove_file(job.files_dir().join("gocryptfs.conf")).unwrap();
    let plain = job.root.join("mk-plain");
    fs::create_dir_all(&plain).unwrap();
    let run_line = |line: &str| {
        let line = line.replace("/mnt/plain", &plain.display().to_string());
        let got = job.root.join("got");
        let script = format!(
            "set -e\nexec <{}\n{line}\ncat {}/one-byte >{}\nfusermount3 -u {}\n",
            keyfile.display(),
            plain.display(),
            got.display(),
            plain.display()
        );
        let out = run_cmd({
            let mut c = Command::new("sh");
            c.arg("-c").arg(&script);
            c
        });
        unmount_all_under(&job.root);
        out.expect_code(0, &format!("key export's line:\n{script}"));
        fs::read(&got).unwrap()
    };
    let latest = run_line(doc["read_files"].as_str().unwrap());
    assert_eq!(latest, b"a new version\n", "files/ read with the key alone");
    let snapshot = doc["read_snapshot"]
        .as_str()
        .unwrap()
        .replace("snapshots/ID", &format!("snapshots/{id}"));
    assert_eq!(
        run_line(&snapshot),
        old,
        "snapshots/{id} read with the key alone holds the replaced version"
    );
    job.assert_clean();
}

/// A `gocryptfs` on PATH that says it is `version` and runs the real one
/// for everything else.
fn fake_gocryptfs(job: &Job, version: &str) -> PathBuf {
    let real = find_on_path("gocryptfs").expect("gocryptfs on PATH");
    let dir = job.root.join(format!("fake-{version}"));
    fs::create_dir_all(&dir).unwrap();
    write_mode(
        &dir.join("gocryptfs"),
        format!(
            "#!/bin/sh\nif [ \"$1\" = -version ]; then echo 'gocryptfs {version}; go-fuse v2.5.1; 2024-12-01 go1.23 linux/amd64'; exit 0; fi\nexec {} \"$@\"\n",
            real.display()
        )
        .as_bytes(),
        0o755,
    );
    dir
}

fn with_path(mut c: Command, dir: &Path) -> Command {
    let path = std::env::var("PATH").unwrap_or_default();
    c.env("PATH", format!("{}:{path}", dir.display()));
    c
}

#[test]
fn gocryptfs_releases_with_reverse_bugs_are_named_once_per_run() {
    let test = "gocryptfs_releases_with_reverse_bugs_are_named_once_per_run";
    if !require_tools(test, LOCAL_TOOLS) {
        return;
    }
    let job = Job::local("key-versions")
        .set("exclude", json!(["*.tmp"]))
        .build();
    make_sample_tree(&job.source);
    let old = fake_gocryptfs(&job, "v2.4.0");
    let count =
        |text: &str, issue: &str| text.matches(&format!("gocryptfs issue {issue}:")).count();

    let out = run_cmd(with_path(job.command(&["init"]), &old));
    out.expect_code(0, "init with gocryptfs 2.4.0");
    assert_eq!(count(&out.stderr, "802"), 1, "{}", out.dump());
    assert_eq!(count(&out.stderr, "686"), 1, "{}", out.dump());
    let out = run_cmd(with_path(job.command(&["backup"]), &old));
    out.expect_code(0, "backup with gocryptfs 2.4.0");
    for issue in ["802", "686"] {
        assert_eq!(
            count(&out.stderr, issue),
            1,
            "issue {issue}:\n{}",
            out.dump()
        );
    }
    assert!(
        out.stderr
            .contains("gocryptfs 2.4.0 has a reverse-mode bug")
            && out.stderr.contains("fixed in gocryptfs 2.5.0"),
        "{}",
        out.dump()
    );

    // 2.5.0: only the exclude bug, and only where excludes are used.
    let mid = fake_gocryptfs(&job, "2.5.0");
    let out = run_cmd(with_path(job.command(&["backup"]), &mid));
    out.expect_code(0, "backup with gocryptfs 2.5.0");
    assert_eq!(count(&out.stderr, "802"), 0, "{}", out.dump());
    assert_eq!(count(&out.stderr, "686"), 1, "{}", out.dump());
    let mut version = Command::new(bin());
    version.arg("--version");
    let out = run_cmd(with_path(version, &mid));
    out.expect_code(0, "--version with gocryptfs 2.5.0");
    assert!(out.stdout.contains("gocryptfs: 2.5.0;"), "{}", out.dump());
    assert_eq!(count(&out.stderr, "686"), 1, "{}", out.dump());
    assert_eq!(count(&out.stderr, "802"), 0, "{}", out.dump());

    // A release with both fixes: no warning.
    let new = fake_gocryptfs(&job, "v2.7.0");
    let out = run_cmd(with_path(job.command(&["backup"]), &new));
    out.expect_code(0, "backup with gocryptfs 2.7.0");
    assert!(!out.stderr.contains("gocryptfs issue"), "{}", out.dump());
    job.assert_clean();
}

/// nix/package.nix builds gocryptfs 2.6.1 with the fix of issue 686 patched
/// in and says so in its version (`2.6.1+ciphersync.686`): with that build
/// on PATH an allow-list passes `check-config` and nothing warns about
/// 686; with a plain 2.6.1 the same job is refused, naming the issue.
#[test]
fn the_nix_packages_patched_gocryptfs_is_allowed_allow_lists() {
    let test = "the_nix_packages_patched_gocryptfs_is_allowed_allow_lists";
    if !require_tools(test, LOCAL_TOOLS) {
        return;
    }
    let job = Job::local("key-patched")
        .gocryptfs_config_in_state_dir()
        .set("exclude", json!(["/*", "!/docs"]))
        .build();
    make_sample_tree(&job.source);
    let config = job.config_file.to_str().unwrap();

    let plain = fake_gocryptfs(&job, "2.6.1");
    let out = run_cmd(with_path(job.command(&["check-config", config]), &plain));
    out.expect_code(2, "check-config with an allow-list and gocryptfs 2.6.1");
    assert!(
        out.stderr.contains("field `exclude[0]`") && out.stderr.contains("gocryptfs issue 686"),
        "{}",
        out.dump()
    );

    let patched = fake_gocryptfs(&job, "2.6.1+ciphersync.686");
    let out = run_cmd(with_path(job.command(&["check-config", config]), &patched));
    out.expect_code(0, "check-config with an allow-list and the patched 2.6.1");
    assert!(!out.stderr.contains("686"), "{}", out.dump());
    let mut version = Command::new(bin());
    version.arg("--version");
    let out = run_cmd(with_path(version, &patched));
    out.expect_code(0, "--version with the patched 2.6.1");
    assert!(
        out.stdout.contains("gocryptfs: 2.6.1+ciphersync.686;"),
        "{}",
        out.dump()
    );
    assert!(!out.stderr.contains("gocryptfs issue"), "{}", out.dump());
    job.assert_clean();
}
