//! The README's "Restoring by hand" lines, run as written against a real
//! backup: sshfs to the harness's sshd on 127.0.0.1 with the job's
//! `identity_file` and `known_hosts_file`, plain gocryptfs, cp, fusermount3.
//!
//! The lines are taken from README.md itself (the first ```sh block of the
//! "Restoring by hand" section), so a README line that would not work for
//! such a job fails here. The only changes made to them:
//!
//! * the values of the README's job file example (its first ```json block:
//!   `target.host`, `target.user`, `target.port`, `target.path`,
//!   `target.identity_file`, `target.known_hosts_file`) become this job's,
//!   and the example directories `/mnt/remote`, `/mnt/plain` and
//!   `/srv/docs-restored` become directories under the job's temp dir; each
//!   of them must appear in the lines (so they stay those of the example);
//! * the script's stdin is the job's password file: it stands for the
//!   terminal the README's reader types the password into (gocryptfs reads
//!   the password from stdin when stdin is not a terminal).

mod common;

use common::*;
use std::fs;
use std::process::Command;

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");

/// The lines of the first fenced block opened by `fence` (e.g. "```sh") at
/// or after line `from`.
fn fenced_block(lines: &[&str], from: usize, fence: &str) -> Option<(usize, Vec<String>)> {
    let start = from + lines[from..].iter().position(|l| l.trim_end() == fence)?;
    let len = lines[start + 1..]
        .iter()
        .position(|l| l.trim_end() == "```")?;
    Some((
        start,
        lines[start + 1..start + 1 + len]
            .iter()
            .map(|l| l.to_string())
            .collect(),
    ))
}

/// The README's job file example (its first ```json block with a target).
fn readme_job_example(lines: &[&str]) -> Value {
    let mut from = 0;
    while let Some((start, block)) = fenced_block(lines, from, "```json") {
        if let Ok(v) = serde_json::from_str::<Value>(&block.join("\n")) {
            if v["target"].is_object() {
                return v;
            }
        }
        from = start + 1;
    }
    panic!("README.md: no ```json block with the job file example (a \"target\" object)");
}

/// The first ```sh block of the "Restoring by hand" section.
fn readme_restore_lines(lines: &[&str]) -> Vec<String> {
    let section = lines
        .iter()
        .position(|l| l.starts_with('#') && l.contains("Restoring by hand"))
        .expect("README.md: no \"Restoring by hand\" section");
    let (start, block) = fenced_block(lines, section, "```sh")
        .expect("README.md: no ```sh block in \"Restoring by hand\"");
    let next_heading = lines[section + 1..]
        .iter()
        .position(|l| l.starts_with("## "))
        .map(|n| n + section + 1)
        .unwrap_or(lines.len());
    assert!(
        start < next_heading,
        "README.md: the first ```sh block after \"Restoring by hand\" is not in that section"
    );
    block
}

#[test]
fn readme_restore_by_hand_works_for_a_job_with_identity_and_known_hosts() {
    let test = "readme_restore_by_hand_works_for_a_job_with_identity_and_known_hosts";
    if !require_tools(test, SFTP_TOOLS) || !require_tools(test, &["cp", "sh"]) {
        return;
    }
    let readme = fs::read_to_string(README).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let example = readme_job_example(&lines);
    let snippet = readme_restore_lines(&lines).join("\n");

    let job = Job::sftp("readme-restore").build();
    make_sample_tree(&job.source);
    job.init_and_backup();
    let sshd = job.sshd.as_ref().unwrap();
    assert!(
        job.config["target"]["identity_file"].is_string()
            && job.config["target"]["known_hosts_file"].is_string(),
        "the harness job should name identity_file and known_hosts_file: {}",
        job.config
    );

    let remote_mnt = job.root.join("by-hand-remote");
    let plain_mnt = job.root.join("by-hand-plain");
    let restored = job.root.join("by-hand-restored");
    let ex = |k: &str| -> String {
        match &example["target"][k] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => panic!("README job example: target.{k} is {other}"),
        }
    };
    // Longest first, so that no value is replaced inside a longer one.
    let mut subst: Vec<(String, String)> = vec![
        (ex("identity_file"), sshd.client_key.display().to_string()),
        (ex("known_hosts_file"), sshd.known_hosts.display().to_string()),
        (
            format!("{}@{}", ex("user"), ex("host")),
            "root@127.0.0.1".to_string(),
        ),
        (ex("path"), job.target_path.display().to_string()),
        (format!("-p {}", ex("port")), format!("-p {}", sshd.port)),
        ("/srv/docs-restored".into(), restored.display().to_string()),
        ("/mnt/remote".into(), remote_mnt.display().to_string()),
        ("/mnt/plain".into(), plain_mnt.display().to_string()),
    ];
    subst.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    let mut script = snippet.clone();
    let mut absent = Vec::new();
    for (from, to) in &subst {
        if !script.contains(from.as_str()) {
            absent.push(from.clone());
        }
        script = script.replace(from.as_str(), to);
    }
    assert!(
        absent.is_empty(),
        "README \"Restoring by hand\": the lines no longer use {absent:?} from the job file \
         example (or the example mount points), so they are not shown for that job:\n{snippet}"
    );

    let script = format!(
        "set -e\nexec <{}   # the password, as typed at the terminal\n{script}\n",
        job.password_file.display()
    );
    let out = run_cmd({
        let mut c = Command::new("sh");
        c.arg("-c").arg(&script);
        c
    });
    let mounted = mounts_under(&job.root);
    unmount_all_under(&job.root);
    out.expect_code(0, &format!("the README's restore-by-hand lines:\n{script}"));
    assert!(
        mounted.is_empty(),
        "the README's lines left mounts behind: {:?}",
        mounted
    );
    assert_trees_equal(&job.source, &restored);
    job.assert_clean();
}
