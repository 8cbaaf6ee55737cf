//! verify cannot be fooled by a server that keeps its answers but not the
//! data (issue 13, attack 4): with `remote_checksums: ssh` the server
//! computes the sha1s, so each verify also reads a sample back through
//! sshfs (sample.rs), which needs the data.

mod common;
#[path = "faults/support.rs"]
mod support;

use common::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use support::Scenario;

/// What the lying server and its read-back need.
const LIAR_TOOLS: &[&str] = &[
    "gocryptfs",
    "sshfs",
    "rsync",
    "/usr/lib/openssh/sftp-server",
];

/// Forty 4 KiB files in four directories.
fn forty_files(source: &Path) {
    for i in 0..40 {
        let dir = source.join(format!("d{}", i % 4));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("f{i}")), vec![b'a' + (i % 26) as u8; 4096]).unwrap();
    }
}

/// Every regular file under `dir` (the server deletes its data).
fn delete_files(dir: &Path) -> usize {
    let mut n = 0;
    for (rel, meta) in walk(dir) {
        if meta.file_type().is_file() {
            fs::remove_file(dir.join(rel)).unwrap();
            n += 1;
        }
    }
    n
}

/// Makes the job's server a liar: the account's key runs a wrapper that
/// answers the checksum script from `saved` (a copy of the target taken
/// while it held the data) and runs everything else, SFTP included, as
/// asked.
fn lie_from(job: &Job, saved: &Path) {
    let sshd = job.sshd.as_ref().expect("an sftp job has its sshd");
    let wrapper = sshd.dir.join("liar.sh");
    let script = format!(
        "#!/bin/sh\n\
         case \"$SSH_ORIGINAL_COMMAND\" in\n\
         internal-sftp|*sftp-server*) exec /usr/lib/openssh/sftp-server ;;\n\
         *remote.sha1*) exec sh -c \"$(printf '%s' \"$SSH_ORIGINAL_COMMAND\" | sed 's#{real}#{saved}#g')\" ;;\n\
         *) exec sh -c \"$SSH_ORIGINAL_COMMAND\" ;;\n\
         esac\n",
        real = job.target_path.display(),
        saved = saved.display(),
    );
    fs::write(&wrapper, script).unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let key = fs::read_to_string(sshd.client_key.with_extension("pub")).unwrap();
    let auth = sshd.dir.join("authorized_keys");
    fs::write(&auth, format!("command=\"{}\" {key}", wrapper.display())).unwrap();
}

/// The server's copy of the whole target, taken while it holds the data.
fn save_target(job: &Job) -> std::path::PathBuf {
    let saved = job.root.join("saved-target");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&job.target_path)
        .arg(&saved)
        .status()
        .unwrap();
    assert!(copied.success(), "cp -a of the target failed");
    saved
}

fn verify_json(job: &Job, args: &[&str]) -> (Out, Value) {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    job.run_json(&all)
}

#[test]
fn a_server_that_replays_saved_checksums_after_deleting_its_data_fails_verify() {
    if !require_tools("replayed_checksums", LIAR_TOOLS) {
        return;
    }
    let mut sc = Scenario::new(
        "hostile",
        "security",
        "server replays saved checksums after deleting every file",
        "with the read-back off (--sample 0) the lie passes (premise); by default verify exits 3 naming missing files; --sample all finds all 40",
    );
    let job = Job::sftp("liar").build();
    forty_files(&job.source);
    job.init_and_backup();
    let (o, v) = verify_json(&job, &[]);
    o.expect_code(0, "verify of an honest server");
    let honest = json_stats(&v, "verify").clone();
    assert!(
        honest["sampled"].as_u64() > Some(0),
        "an honest verify read nothing back: {honest}"
    );
    // The sample is read over SFTP, many files at a time, not through sshfs.
    let o = job.ok(&["--verbose", "verify"]);
    assert!(
        o.stderr.contains("sampled file(s) read over SFTP"),
        "the sample was not read over SFTP:\n{}",
        o.dump()
    );

    let saved = save_target(&job);
    let deleted = delete_files(&job.files_dir());
    assert!(deleted >= 40, "only {deleted} files deleted");
    lie_from(&job, &saved);

    // The premise: the replayed list alone fools the comparison.
    let (o, v) = verify_json(&job, &["--sample", "0"]);
    o.expect_code(0, "verify without read-back against the replayed list");
    assert!(
        o.stderr.contains("takes the server's word"),
        "turning the read-back off should warn: {}",
        o.stderr
    );
    assert_eq!(
        json_stats(&v, "verify")["missing"],
        serde_json::json!([]),
        "{v}"
    );

    // With the default budget (1 %: here one file or two per run) the
    // read-back finds the data gone.
    let (o, v) = verify_json(&job, &[]);
    o.expect_code(3, "verify against a server that replays its checksums");
    let stats = json_stats(&v, "verify");
    let missing = str_list(&stats["missing"]);
    assert!(
        !missing.is_empty(),
        "the deleted data was not found missing: {stats}"
    );
    let named = |m: &String| m.starts_with('d') && m.contains("/f");
    assert!(
        missing
            .iter()
            .filter(|m| !m.ends_with("gocryptfs.diriv"))
            .all(named),
        "missing files are named by plaintext path: {missing:?}"
    );

    // --sample all reads every file: all forty are found missing (with
    // gocryptfs' own files, deleted too).
    let (o, v) = verify_json(&job, &["--sample", "all"]);
    o.expect_code(3, "verify --sample all");
    let missing = str_list(&json_stats(&v, "verify")["missing"]);
    let users = missing.iter().filter(|m| named(m)).count();
    assert_eq!(users, 40, "verify --sample all: {missing:?}");
    job.assert_clean();
    sc.note("--sample 0: ok with a warning; default: exit 3, missing files named; --sample all: 40 of 40 user files missing");
    sc.pass();
}

/// The rotation reaches every file within the runs it announces: a server
/// that lost one file is caught within that many verifies.
#[test]
fn one_lost_file_is_found_within_the_announced_runs() {
    if !require_tools("rotation_bound", LIAR_TOOLS) {
        return;
    }
    let mut sc = Scenario::new(
        "hostile",
        "security",
        "one lost file behind replayed checksums",
        "the rotating read-back finds it within the sample_rotation_runs the first verify announces",
    );
    let job = Job::sftp("rotation")
        .set("verify", serde_json::json!({ "sample_bytes": 16 * 1024 }))
        .build();
    forty_files(&job.source);
    job.init_and_backup();
    let saved = save_target(&job);
    let lost = walk(&job.files_dir())
        .into_iter()
        .find(|(rel, m)| {
            m.file_type().is_file()
                && !rel.ends_with("gocryptfs.diriv")
                && !rel.ends_with("gocryptfs.conf")
        })
        .map(|(rel, _)| job.files_dir().join(rel))
        .unwrap();
    fs::remove_file(&lost).unwrap();
    lie_from(&job, &saved);

    let mut announced = None;
    for run in 1..=64 {
        let (o, v) = verify_json(&job, &[]);
        let stats = json_stats(&v, "verify");
        let bound = stats["sample_rotation_runs"].as_u64().unwrap();
        let bound = *announced.get_or_insert(bound);
        if o.code == 3 {
            assert_eq!(str_list(&stats["missing"]).len(), 1, "{stats}");
            assert!(
                run as u64 <= bound,
                "found after {run} runs, more than the {bound} announced"
            );
            job.assert_clean();
            sc.note("found missing within the announced bound");
            sc.pass();
            return;
        }
        o.expect_code(0, "verify before the lost file is read back");
        assert!(
            run as u64 <= bound,
            "not found within the {bound} runs announced"
        );
    }
    panic!("the lost file was never found");
}
