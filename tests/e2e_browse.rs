//! `ciphersync mount` / `umount` end to end (issue 18, browse): the latest
//! state and an older run, decrypted and read-only, compared with plain
//! `diff -r` and `cmp` against copies of the source as it was; writes
//! fail; the older run's browse holds the job lock until `umount`; the
//! foreground mode unmounts everything on SIGINT. Real sshd, gocryptfs,
//! sshfs, fuse-overlayfs and rsync.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BROWSE_TOOLS: &[&str] = &["fuse-overlayfs", "diff", "cmp"];

fn tools(test: &str, base: &[&str]) -> bool {
    let all: Vec<&str> = base.iter().chain(BROWSE_TOOLS).copied().collect();
    require_tools(test, &all)
}

fn cp_a(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status();
    assert!(st.unwrap().success(), "cp -a {}", from.display());
}

/// `diff -r --no-dereference` (content, names, symlink targets): must
/// find nothing.
fn assert_same(reference: &Path, view: &Path, what: &str) {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(reference)
        .arg(view)
        .output()
        .expect("run diff");
    assert!(
        out.status.success(),
        "{what}: {} differs from {}:\n{}{}",
        view.display(),
        reference.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cmp(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

fn is_mount_point(path: &Path) -> bool {
    mounts().iter().any(|m| m.mount_point == path)
}

/// A write through the view must fail, and leave the view as it was.
fn assert_read_only(view: &Path) {
    let new = view.join("written-by-the-test");
    assert!(
        fs::write(&new, b"x").is_err(),
        "creating a file in {} worked",
        view.display()
    );
    let append = fs::OpenOptions::new()
        .append(true)
        .open(view.join("README.txt"));
    assert!(
        append.is_err(),
        "{}/README.txt opened for writing",
        view.display()
    );
    assert!(!new.exists());
}

/// The first tree, a backup, changes of every kind, a second backup.
/// Returns the two runs' ids and copies of the source after each.
fn two_runs(job: &Job) -> (String, String, std::path::PathBuf, std::path::PathBuf) {
    make_sample_tree(&job.source);
    let first = job.init_and_backup()["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let ref1 = job.root.join("ref1");
    cp_a(&job.source, &ref1);

    let src = &job.source;
    write_mode(
        &src.join("README.txt"),
        b"rewritten, and longer than before\n",
        0o644,
    );
    fs::remove_file(src.join("one-byte")).unwrap();
    write_mode(
        &src.join("added.txt"),
        b"created after the first run\n",
        0o644,
    );
    fs::remove_dir_all(src.join("nested/a")).unwrap();
    fs::remove_dir(src.join("empty")).unwrap();
    write_mode(&src.join("empty"), b"a file where a directory was\n", 0o644);
    let (o, v) = job.run_json(&["backup", "--max-delete", "100"]);
    o.expect_code(0, "second backup");
    let second = json_stats(&v, "backup")["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first, second);
    let ref2 = job.root.join("ref2");
    cp_a(&job.source, &ref2);
    (first, second, ref1, ref2)
}

#[test]
fn browse_the_latest_state_and_an_older_run_over_sftp() {
    if !tools("browse_sftp", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("browse-sftp")
        .gocryptfs_config_in_state_dir()
        .build();
    let (first, _, ref1, ref2) = two_runs(&job);
    let (v1, v2) = (job.root.join("v1"), job.root.join("v2"));
    fs::create_dir(&v1).unwrap();
    fs::create_dir(&v2).unwrap();

    let v1_arg = v1.to_str().unwrap();
    job.ok(&["mount", "--background", "--snapshot", &first, v1_arg]);
    // The older run's browse holds the lock; the latest state mounts anyway.
    job.ok(&["mount", "--background", v2.to_str().unwrap()]);
    assert!(is_mount_point(&v1) && is_mount_point(&v2));

    assert_same(&ref1, &v1, "run 1");
    assert_same(&ref2, &v2, "the latest state");
    assert!(v1.join("one-byte").is_file() && !v1.join("added.txt").exists());
    assert!(v1.join("empty").is_dir() && v1.join("nested/a/b/c/deep.bin").is_file());
    assert!(cmp(&v1.join("README.txt"), &ref1.join("README.txt")));
    assert!(!cmp(&v1.join("README.txt"), &v2.join("README.txt")));
    assert_read_only(&v1);
    assert_read_only(&v2);

    // Until umount, a backup finds the lock held and is told why.
    let o = job.run(&["backup"]);
    o.expect_code(75, "backup while an older run is mounted");
    assert!(o.stderr.contains(v1_arg), "{}", o.dump());

    let o = job.ok(&["umount", v1_arg]);
    assert!(o.stdout.contains("unmounted"), "{}", o.dump());
    assert!(!is_mount_point(&v1) && is_mount_point(&v2));
    job.ok(&["snapshots"]); // the lock went with the union
    job.ok(&["umount"]);
    assert!(!is_mount_point(&v2));
    let left: Vec<_> = fs::read_dir(job.runtime_dir.join("browse"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "browse records left: {left:?}");
    job.assert_clean();
}

#[test]
fn a_foreground_browse_unmounts_everything_on_sigint() {
    if !tools("browse_foreground", LOCAL_TOOLS) {
        return;
    }
    let job = Job::local("browse-fg")
        .gocryptfs_config_in_state_dir()
        .build();
    let (first, _, ref1, _) = two_runs(&job);
    let view = job.root.join("view");
    fs::create_dir(&view).unwrap();

    // Refused: a mount point that is not empty, or inside the source.
    let o = job.run(&["mount", job.source.to_str().unwrap()]);
    o.expect_code(2, "mount on the source");
    let inside = job.source.join("bin-view");
    fs::create_dir(&inside).unwrap();
    let o = job.run(&["mount", inside.to_str().unwrap()]);
    o.expect_code(2, "mount inside the source");
    assert!(o.stderr.contains("inside the job's source"), "{}", o.dump());
    fs::remove_dir(&inside).unwrap();

    let mut run = job.spawn(&["mount", "--snapshot", &first, view.to_str().unwrap()]);
    wait_until(
        "the foreground browse to be mounted",
        Duration::from_secs(120),
        || is_mount_point(&view) || !run.is_running(),
    );
    assert!(run.is_running(), "mount ended: {:?}", run.output_so_far());
    assert!(cmp(&view.join("README.txt"), &ref1.join("README.txt")));
    assert_same(&ref1, &view, "run 1 in the foreground");
    assert_read_only(&view);

    send_signal(run.pid(), "INT");
    let out = run.wait(Duration::from_secs(120));
    out.expect_code(0, "mount after SIGINT");
    assert!(!is_mount_point(&view));
    job.ok(&["snapshots"]); // the lock is free again
    job.assert_clean();
}
