//! `source_snapshot` (issue 19, item 4): a backup reads a read-only
//! snapshot of the source, and the snapshot is gone after every way out.
//!
//! - The premise, on any machine with gocryptfs: gocryptfs -reverse of a
//!   copy of a tree at another path, with the same config, shows the same
//!   names and the same bytes.
//! - btrfs for real, on a loop device: the backup is the snapshot's moment
//!   (a change made after the snapshot is not in it), verify and verify
//!   --deep of the live tree pass (same ciphertext), the nothing-to-send
//!   shortcut still applies, SIGTERM removes the snapshot, and after a
//!   SIGKILL the next run removes it.
//! - btrfs as a user who owns the subvolume, on a file system mounted with
//!   `user_subvol_rm_allowed` (a non-root NixOS job): backup and restore,
//!   the snapshot made and deleted by the user.
//!
//! The btrfs tests need root, btrfs-progs, losetup and a kernel with btrfs
//! and loop devices: without them they are skipped with the reason (under
//! `CI=true` they fail: CI machines are of the kind this suite runs on,
//! which can). ZFS and LVM are not tested here (see the README).

mod common;
use common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SNAPSHOT_TOOLS: &[&str] = &["btrfs", "mkfs.btrfs", "losetup", "mount", "umount"];

/// Skips (or under CI=true fails) naming what the machine lacks.
fn skip(test: &str, reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {reason} (CI=true, not skipping)");
    }
    eprintln!("SKIP {test}: {reason}");
    if let Some(log) = std::env::var_os("CIPHERSYNC_TEST_SKIP_LOG") {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        writeln!(f, "{test}\t{reason}").unwrap();
    }
}

fn sh(cmd: &mut Command) -> Out {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A btrfs file system on a loop device, mounted at `<tmp>/mnt`, with one
/// subvolume `vol`. Dropped: unmounted and detached.
struct Btrfs {
    mnt: PathBuf,
    device: String,
    _tmp: TempDir,
}

impl Btrfs {
    /// None (skipped, with the reason) when this machine cannot.
    fn new(test: &str) -> Option<Btrfs> {
        Btrfs::mounted_with(test, "defaults")
    }

    /// The same, mounted with `options` (`mount -o`).
    fn mounted_with(test: &str, options: &str) -> Option<Btrfs> {
        if !require_tools(test, SNAPSHOT_TOOLS) || !require_tools(test, LOCAL_TOOLS) {
            return None;
        }
        let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !filesystems.lines().any(|l| l.trim_end().ends_with("btrfs")) {
            skip(test, "the kernel has no btrfs (not in /proc/filesystems)");
            return None;
        }
        let tmp = TempDir::new("btrfs");
        let img = tmp.path().join("img");
        let st = sh(Command::new("truncate").arg("-s").arg("300M").arg(&img));
        st.expect_code(0, "truncate");
        let lo = sh(Command::new("losetup").arg("-f").arg("--show").arg(&img));
        if lo.code != 0 {
            skip(
                test,
                &format!("the kernel refused a loop device: {}", lo.stderr.trim()),
            );
            return None;
        }
        let device = lo.stdout.trim().to_string();
        let mnt = tmp.path().join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let fs = Btrfs {
            mnt,
            device,
            _tmp: tmp,
        };
        sh(Command::new("mkfs.btrfs").arg("-q").arg(&fs.device)).expect_code(0, "mkfs.btrfs");
        let m = sh(Command::new("mount")
            .args(["-o", options])
            .arg(&fs.device)
            .arg(&fs.mnt));
        if m.code != 0 {
            skip(
                test,
                &format!("the kernel refused to mount btrfs: {}", m.stderr.trim()),
            );
            return None;
        }
        sh(Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(fs.mnt.join("vol")))
        .expect_code(0, "btrfs subvolume create");
        Some(fs)
    }

    /// The subvolumes of the file system, by path.
    fn subvolumes(&self) -> Vec<String> {
        let o = sh(Command::new("btrfs")
            .args(["subvolume", "list", "-a"])
            .arg(&self.mnt));
        o.expect_code(0, "btrfs subvolume list");
        o.stdout
            .lines()
            .filter_map(|l| l.rsplit(" path ").next())
            .map(|p| p.trim_start_matches("<FS_TREE>/").to_string())
            .collect()
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        if sh(Command::new("umount").arg(&self.mnt)).code != 0 {
            let _ = sh(Command::new("umount").arg("-l").arg(&self.mnt));
        }
        let _ = sh(Command::new("losetup").arg("-d").arg(&self.device));
    }
}

/// Points the job at `source` (on the btrfs) with `source_snapshot`.
fn use_source(job: &mut Job, source: &Path, extra: &[(&str, Value)]) {
    fs::create_dir_all(source).unwrap();
    job.source = source.to_path_buf();
    job.config["source"] = json!(source);
    job.config["source_snapshot"] = json!("btrfs");
    for (k, v) in extra {
        match k.strip_prefix("target.") {
            Some(field) => job.config["target"][field] = v.clone(),
            None => job.config[*k] = v.clone(),
        }
    }
    fs::write(
        &job.config_file,
        serde_json::to_string_pretty(&job.config).unwrap(),
    )
    .unwrap();
}

fn marker(job: &Job) -> PathBuf {
    job.state_dir.join("source-snapshot.json")
}

/// The premise of backing up a snapshot: the reverse view's root path goes
/// into nothing. Two copies of a tree at different paths, one config: the
/// same encrypted names, the same bytes (and a third view with another
/// config differs, so the comparison can fail).
#[test]
fn a_reverse_view_of_a_copy_elsewhere_has_the_same_ciphertext() {
    if !require_tools("reverse_view_of_a_copy", LOCAL_TOOLS) {
        return;
    }
    let tmp = TempDir::new("viewroot");
    let root = tmp.path();
    let a = root.join("a/deeper/src");
    fs::create_dir_all(&a).unwrap();
    make_sample_tree(&a);
    let b = root.join("b");
    copy_tree(&a, &b);
    let password = root.join("password");
    write_mode(&password, b"the same password\n", 0o600);
    let init = |config: &Path| {
        sh(Command::new("gocryptfs")
            .args(["-init", "-reverse", "-q", "-passfile"])
            .arg(&password)
            .arg("-config")
            .arg(config)
            .arg(&a))
        .expect_code(0, "gocryptfs -init -reverse");
    };
    let config = root.join("one.conf");
    let other = root.join("other.conf");
    init(&config);
    init(&other);
    let mount = |src: &Path, config: &Path, at: &str| {
        let point = root.join(at);
        fs::create_dir_all(&point).unwrap();
        sh(Command::new("gocryptfs")
            .args(["-reverse", "-q", "-passfile"])
            .arg(&password)
            .arg("-config")
            .arg(config)
            .arg(src)
            .arg(&point))
        .expect_code(0, "gocryptfs -reverse");
        point
    };
    let va = mount(&a, &config, "va");
    let vb = mount(&b, &config, "vb");
    let vc = mount(&b, &other, "vc");
    let (da, db, dc) = (tree_digest(&va), tree_digest(&vb), tree_digest(&vc));
    for v in [&va, &vb, &vc] {
        sh(Command::new("fusermount3").arg("-u").arg(v)).expect_code(0, "fusermount3 -u");
    }
    assert!(da.len() > 20, "the view shows too little: {da:?}");
    assert_eq!(da, db, "a copy at another path gave other names or bytes");
    assert_ne!(da, dc, "another key gave the same ciphertext");
}

/// btrfs, the source being a subvolume, over SFTP: the snapshot is backed
/// up, is gone afterwards, and gives the live tree's ciphertext (verify and
/// verify --deep of the live tree pass); an unchanged source sends nothing
/// across snapshots; a change is one file sent.
#[test]
fn btrfs_snapshot_backups_match_the_live_tree_and_skip_when_unchanged() {
    let test = "btrfs_snapshot_backups";
    if !require_tools(test, SFTP_TOOLS) {
        return;
    }
    let mut job = Job::sftp("snap-btrfs-sftp").build();
    let Some(btrfs) = Btrfs::new(test) else {
        return;
    };
    use_source(&mut job, &btrfs.mnt.join("vol"), &[]);
    make_sample_tree(&job.source);
    job.ok(&["init"]);
    let o = job.ok(&["-v", "backup"]);
    let snapshot = btrfs.mnt.join(".ciphersync-snapshots").join(&job.name);
    assert!(
        o.stderr
            .contains(&format!("backing up {}", snapshot.display())),
        "the backup did not read the snapshot: {}",
        o.stderr
    );
    assert!(!snapshot.exists(), "{} is still there", snapshot.display());
    assert!(!marker(&job).exists(), "the marker is still there");
    assert_eq!(btrfs.subvolumes(), ["vol"]);
    // The target holds what the live tree's view shows, byte for byte.
    job.verify_ok(false);
    job.verify_ok(true);

    // The nothing-to-send shortcut across two snapshots.
    job.trust_stamps(true);
    job.ok(&["backup"]);
    let o = job.ok(&["-v", "backup"]);
    assert!(
        o.stderr
            .contains("as the last backup left them: nothing to send"),
        "an unchanged source was synced again: {}",
        o.stderr
    );
    assert!(!o.stderr.contains("run: rsync"), "rsync ran: {}", o.stderr);

    fs::write(job.source.join("README.txt"), "changed\n").unwrap();
    let (o, v) = job.run_json(&["backup"]);
    o.expect_code(0, "backup after one change");
    assert_eq!(json_stats(&v, "backup")["transferred"], 1, "{v}");
    assert_eq!(btrfs.subvolumes(), ["vol"]);
    job.restore_and_compare("restored");
    job.assert_clean();
}

/// btrfs, the source a directory inside a subvolume, local target, slowed
/// by a bandwidth bound so that a run can be caught while its snapshot
/// exists: what changes after the snapshot is not in the backup; SIGTERM
/// removes the snapshot; after SIGKILL the next run removes it.
#[test]
fn btrfs_snapshots_hold_one_moment_and_go_on_every_way_out() {
    let test = "btrfs_snapshot_ways_out";
    let mut job = Job::local("snap-btrfs-out").build();
    let Some(btrfs) = Btrfs::new(test) else {
        return;
    };
    // 200 KiB/s: a 3 MB file takes about 15 s, during which the snapshot
    // exists (the test waits for it, then acts: no timing assumption
    // beyond "a run lasts longer than a 50 ms poll").
    use_source(
        &mut job,
        &btrfs.mnt.join("vol/data"),
        &[("target.bwlimit", json!(200))],
    );
    make_sample_tree(&job.source);
    let snapshot = btrfs.mnt.join("vol/.ciphersync-snapshots").join(&job.name);
    job.ok(&["init"]);
    let reference = job.root.join("reference");
    copy_tree(&job.source, &reference);

    // 1. One moment: right after the snapshot is made (before gocryptfs
    // has even derived its key), a directory goes and a file appears in
    // the live tree. A backup of the live tree would miss or add them.
    let run = job.spawn(&["backup"]);
    wait_until("the snapshot of run 1", Duration::from_secs(120), || {
        snapshot.exists()
    });
    fs::remove_dir_all(job.source.join("nested")).unwrap();
    fs::write(job.source.join("after.txt"), "written after the snapshot\n").unwrap();
    run.wait(RUN_TIMEOUT).expect_code(0, "backup 1");
    assert!(!snapshot.exists(), "run 1 left {}", snapshot.display());
    let to = job.root.join("restore-1");
    fs::create_dir_all(&to).unwrap();
    job.ok(&["restore", "--to", to.to_str().unwrap()]);
    assert_trees_equal(&reference, &to);

    // 2. SIGTERM while the snapshot exists: the run ends, the snapshot
    // with it.
    write_random_file(&job.source.join("slow-2.bin"), 3_000_000, 2);
    let run = job.spawn(&["backup"]);
    wait_until("the snapshot of run 2", Duration::from_secs(120), || {
        snapshot.exists()
    });
    send_signal(run.pid(), "TERM");
    let o = run.wait(RUN_TIMEOUT);
    assert_ne!(o.code, 0, "backup 2 ignored SIGTERM: {}", o.dump());
    assert_eq!(job.stage("backup")["outcome"], "interrupted");
    assert!(!snapshot.exists(), "SIGTERM left {}", snapshot.display());
    assert!(!marker(&job).exists(), "SIGTERM left the marker");
    assert_eq!(btrfs.subvolumes(), ["vol"]);
    assert_no_mounts_under(&job.runtime_dir);

    // 3. SIGKILL (and the rsync it started, as systemd would kill the
    // unit's cgroup): the snapshot and its marker stay; the next run
    // removes them, then backs up.
    write_random_file(&job.source.join("slow-3.bin"), 3_000_000, 3);
    let mut run = job.spawn(&["backup"]);
    wait_until("the snapshot of run 3", Duration::from_secs(120), || {
        snapshot.exists()
    });
    send_signal(run.pid(), "KILL");
    let _ = run.child.wait();
    let runtime = job.runtime_dir.to_string_lossy().into_owned();
    let rsyncs: Vec<u32> = processes()
        .into_iter()
        .filter(|(_, _, comm, cmd)| comm == "rsync" && cmd.contains(&runtime))
        .map(|p| p.0)
        .collect();
    for pid in &rsyncs {
        send_signal(*pid, "KILL");
    }
    assert!(snapshot.exists(), "the snapshot vanished with SIGKILL");
    assert!(marker(&job).exists(), "no marker after SIGKILL");
    let o = job.ok(&["backup"]);
    assert!(
        o.stderr.contains("an earlier run left behind"),
        "the next run did not say it removed the snapshot: {}",
        o.stderr
    );
    assert!(!snapshot.exists(), "run 4 left {}", snapshot.display());
    assert!(!marker(&job).exists(), "run 4 left the marker");
    assert_eq!(btrfs.subvolumes(), ["vol"]);
    job.restore_and_compare("restore-4");
    job.assert_clean();
}

/// Runs `ciphersync -c <job file> ARGS...` as `user` (runuser), with the
/// harness's environment, in a mount namespace of its own whose /dev/fuse
/// is a node of mode 0666 (as NixOS's programs.fuse makes it): the host's
/// node is root-only here, and is not changed. The FUSE mounts of the run
/// live and end in that namespace; the snapshot is a subvolume, seen by all.
fn as_user(job: &Job, user: &str, args: &[&str]) -> Out {
    let node = job.root.join("fuse-node");
    if !node.exists() {
        sh(Command::new("mknod")
            .args(["-m", "0666"])
            .arg(&node)
            .args(["c", "10", "229"]))
        .expect_code(0, "mknod a FUSE node");
    }
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" /dev/fuse && shift && exec runuser "$@""#)
        .arg("sh")
        .arg(&node)
        .args(["-u", user, "--"])
        .arg(bin())
        .arg("-c")
        .arg(&job.config_file)
        .args(args)
        .env("CIPHERSYNC_SETTLE_MS", job.settle_ms.get().to_string());
    sh(&mut c)
}

/// btrfs as a user who owns the subvolume, on a file system mounted with
/// `user_subvol_rm_allowed` (what the NixOS module accepts for a non-root
/// job): the user may make the read-only snapshot, and may delete it only
/// once its read-only flag is cleared (tried: `btrfs subvolume delete` of a
/// read-only snapshot fails with "Read-only file system" for a user). The
/// backup reads the snapshot and leaves nothing behind.
#[test]
fn btrfs_snapshots_work_for_a_user_who_owns_the_subvolume() {
    let test = "btrfs_snapshot_as_user";
    if !require_tools(test, &["runuser", "unshare", "mknod", "fusermount3"]) {
        return;
    }
    let mut job = Job::local("snap-btrfs-user").build();
    let Some(btrfs) = Btrfs::mounted_with(test, "user_subvol_rm_allowed") else {
        return;
    };
    let user = "ciphersync-snapuser";
    let (uid, gid) = ensure_system_user(user, "/usr/sbin/nologin");
    use_source(&mut job, &btrfs.mnt.join("vol/data"), &[]);
    make_sample_tree(&job.source);
    let snapshot = btrfs.mnt.join("vol/.ciphersync-snapshots").join(&job.name);
    // Everything of the job is the user's; the directories above are
    // only traversed.
    for dir in [&job.root, &btrfs.mnt.join("vol")] {
        sh(Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(dir))
        .expect_code(0, "chown");
    }
    for dir in [job.root.as_path(), btrfs.mnt.as_path()] {
        let mut at = Some(dir);
        while let Some(d) = at.filter(|d| *d != Path::new("/")) {
            let mode = fs::metadata(d).unwrap().permissions().mode();
            fs::set_permissions(d, fs::Permissions::from_mode(mode | 0o111)).unwrap();
            at = d.parent();
        }
    }
    as_user(&job, user, &["init"]).expect_code(0, "init as the user");
    let o = as_user(&job, user, &["-v", "backup"]);
    o.expect_code(0, "backup as the user");
    assert!(
        o.stderr
            .contains(&format!("backing up {}", snapshot.join("data").display())),
        "the backup did not read the snapshot: {}",
        o.stderr
    );
    assert!(!snapshot.exists(), "{} is still there", snapshot.display());
    assert!(!marker(&job).exists(), "the marker is still there");
    assert_eq!(btrfs.subvolumes(), ["vol"]);
    let to = job.root.join("restored");
    fs::create_dir_all(&to).unwrap();
    std::os::unix::fs::chown(&to, Some(uid), Some(gid)).unwrap();
    as_user(&job, user, &["restore", "--to", to.to_str().unwrap()])
        .expect_code(0, "restore as the user");
    assert_trees_equal(&job.source, &to);
    job.assert_clean();
}
