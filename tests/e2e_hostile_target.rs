//! A tampered target cannot harm the machine it backs up (issue 13): each
//! test reproduces one attack against a local target (a USB disk someone
//! else handled; the same files an SFTP server would return) and shows it
//! defended. See docs/reliability.md.

mod common;
#[path = "faults/support.rs"]
mod support;

use common::*;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use support::Scenario;

const SECRET_LEN: u64 = 1234;

/// A local job with one 1234-byte file and one backup; returns the
/// encrypted path of that file under files/ and the run's id.
fn backed_up(tag: &str) -> (Job, PathBuf, String) {
    let job = Job::local(tag).build();
    fs::write(job.source.join("tool"), vec![b'x'; SECRET_LEN as usize]).unwrap();
    fs::write(job.source.join("other"), "other\n").unwrap();
    let stats = job.init_and_backup();
    let id = stats["snapshot"].as_str().unwrap().to_string();
    let victim = job.remote_file_for_len(SECRET_LEN);
    (job, victim, id)
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Attack 1: the target swaps a backed-up file for a symlink to a local
/// file and sets that entry's mode to 4777 in the record; `restore
/// --snapshot` used to chmod through the link.
#[test]
fn a_planted_symlink_in_a_snapshot_is_refused_and_nothing_is_chmodded() {
    if !require_tools(
        "planted_symlink_chmod",
        &["gocryptfs", "fusermount3", "rsync"],
    ) {
        return;
    }
    let mut sc = Scenario::new(
        "hostile",
        "security",
        "restore --snapshot through a planted symlink with record mode 4777",
        "the target swaps a backed-up file for a symlink to a local file and sets 4777 in the record: restore refuses, naming the swapped entry; the local file keeps its mode",
    );
    let (job, victim, id) = backed_up("hostile-chmod");
    let local_file = job.root.join("local-victim");
    fs::write(&local_file, "a local file\n").unwrap();
    fs::set_permissions(&local_file, fs::Permissions::from_mode(0o644)).unwrap();

    fs::remove_file(&victim).unwrap();
    std::os::unix::fs::symlink(&local_file, &victim).unwrap();
    let record = job.target_path.join(format!("records/{id}.rec"));
    let rel = victim
        .strip_prefix(job.files_dir())
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let text = fs::read_to_string(&record).unwrap();
    let tampered: String = text
        .lines()
        .map(
            |l| match l.ends_with(&format!(" {rel}")) && l.starts_with("f ") {
                true => l.replacen("f 644 ", "f 4777 ", 1),
                false => l.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(
        tampered.trim_end(),
        text.trim_end(),
        "the record entry was not found"
    );
    fs::write(&record, tampered + "\n").unwrap();

    let to = job.root.join("out");
    let o = job.run(&["restore", "--snapshot", &id, "--to", to.to_str().unwrap()]);
    assert_ne!(o.code, 0, "a tampered snapshot restored: {}", o.stdout);
    assert!(
        o.stderr.contains("is a symlink, its record says a file"),
        "the error should say what was swapped: {}",
        o.stderr
    );
    assert_eq!(
        mode_of(&local_file),
        0o644,
        "restore chmodded a local file through a link"
    );
    job.assert_clean();
    sc.note("restore exited non-zero: the entry is a symlink, its record says a file; the local file stays 0644");
    sc.pass();
}

/// Attack 3: the target marks a backed-up executable setuid, and plants a
/// device node and a FIFO under real encrypted names.
#[test]
fn setuid_bits_devices_and_fifos_from_the_target_are_not_restored() {
    if !require_tools(
        "setuid_devices",
        &["gocryptfs", "fusermount3", "rsync", "mknod"],
    ) {
        return;
    }
    let mut sc = Scenario::new(
        "hostile",
        "security",
        "setuid bit and device node planted on the target",
        "a file marked 4755 and a char device under a real encrypted name: restore gives 0755 and no device; --keep-setuid keeps the bit",
    );
    let (job, victim, _) = backed_up("hostile-suid");
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o4755)).unwrap();
    let names: Vec<PathBuf> = fs::read_dir(job.files_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != &victim && p.is_file())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            !n.starts_with("gocryptfs.")
        })
        .collect();
    let other = names.first().expect("the other file's encrypted name");
    // A char device (/dev/null's numbers) where "other" was.
    fs::remove_file(other).unwrap();
    let made = std::process::Command::new("mknod")
        .arg(other)
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(made.success(), "mknod on the target failed");

    let to = job.root.join("out");
    let o = job.run(&["restore", "--to", to.to_str().unwrap()]);
    o.expect_code(0, "restore from a target with a setuid file and a device");
    let tool = to.join("tool");
    assert_eq!(
        mode_of(&tool),
        0o755,
        "the setuid bit came back from the target"
    );
    let leftovers: Vec<PathBuf> = walk(&to)
        .into_iter()
        .filter(|(_, m)| {
            let t = m.file_type();
            t.is_char_device() || t.is_block_device() || t.is_fifo() || t.is_socket()
        })
        .map(|(rel, _)| rel)
        .collect();
    assert!(
        leftovers.is_empty(),
        "special files restored: {leftovers:?}"
    );

    // The flag that asks for the bits documents its risk and does it.
    let kept = job.root.join("kept");
    job.ok(&[
        "restore",
        "--keep-setuid",
        "--to",
        kept.to_str().unwrap(),
        "tool",
    ]);
    assert_eq!(
        mode_of(&kept.join("tool")),
        0o4755,
        "--keep-setuid dropped the bit"
    );
    job.assert_clean();
    sc.note("restored tool mode 0755, no special file under --to; with --keep-setuid 4755");
    sc.pass();
}

/// Attack 5: directories the helper writes into must be the user's alone.
#[test]
fn dirs_that_others_own_or_may_write_are_refused() {
    if !require_tools("foreign_dirs", &["gocryptfs", "fusermount3", "rsync"]) {
        return;
    }
    let mut sc = Scenario::new(
        "hostile",
        "security",
        "--to owned by another user, world-writable state_dir",
        "restore into a --to owned by uid 65534 and backup with a 0777 state_dir refuse, naming the path and the fix; nothing written",
    );
    let (job, _, _) = backed_up("hostile-dirs");

    // A --to that another user made beforehand.
    let to = job.root.join("theirs");
    fs::create_dir(&to).unwrap();
    std::os::unix::fs::chown(&to, Some(65534), Some(65534)).unwrap();
    let o = job.run(&["restore", "--to", to.to_str().unwrap()]);
    assert_ne!(o.code, 0, "a --to owned by uid 65534 was accepted");
    assert!(
        o.stderr.contains("belongs to uid 65534"),
        "the error should name the owner: {}",
        o.stderr
    );
    assert!(
        o.stderr.contains(to.to_str().unwrap()),
        "the error should name the path: {}",
        o.stderr
    );
    assert_eq!(
        fs::read_dir(&to).unwrap().count(),
        0,
        "a refused restore wrote into --to"
    );

    // A state dir anyone may write to (a planted ssh_config or status
    // link would be used by root).
    fs::set_permissions(&job.state_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let o = job.run(&["backup"]);
    assert_ne!(o.code, 0, "a world-writable state_dir was accepted");
    assert!(
        o.stderr.contains("chmod go-w"),
        "the error should name the fix: {}",
        o.stderr
    );
    assert!(
        o.stderr.contains(job.state_dir.to_str().unwrap()),
        "the error should name the state dir: {}",
        o.stderr
    );
    fs::set_permissions(&job.state_dir, fs::Permissions::from_mode(0o700)).unwrap();
    job.ok(&["backup"]);
    job.assert_clean();
    sc.note("both refused with the path and the fix; --to left empty; backup ok after chmod 0700");
    sc.pass();
}

/// Attack 2: the target plants links where backup writes next (its
/// records dir, the uploaded config): nothing is written through them.
#[test]
fn writes_to_the_target_never_follow_planted_links() {
    if !require_tools(
        "planted_links_on_write",
        &["gocryptfs", "fusermount3", "rsync"],
    ) {
        return;
    }
    let mut sc = Scenario::new(
        "hostile",
        "security",
        "records/ on the target replaced by a symlink to a local dir",
        "backup refuses to write its record through the link, naming it; nothing appears in the linked dir",
    );
    let (job, _, _) = backed_up("hostile-write");
    let elsewhere = job.root.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let records = job.target_path.join("records");
    fs::rename(&records, job.root.join("records-moved")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &records).unwrap();

    fs::write(job.source.join("new"), "a change to back up\n").unwrap();
    let o = job.run(&["backup"]);
    assert_ne!(o.code, 0, "backup wrote its record through a planted link");
    assert!(
        o.stderr.contains("not a directory (a symlink or a file)"),
        "the error should name the planted link: {}",
        o.stderr
    );
    let written: Vec<_> = fs::read_dir(&elsewhere).unwrap().collect();
    assert!(
        written.is_empty(),
        "files written through the link: {written:?}"
    );
    job.assert_clean();
    sc.note("backup failed: records is not a directory (a symlink or a file); linked dir empty");
    sc.pass();
}

/// The largest resident set of the children this test process has waited
/// for, in KiB (getrusage(RUSAGE_CHILDREN)).
fn children_max_rss_kib() -> i64 {
    let mut usage = std::mem::MaybeUninit::<nix::libc::rusage>::zeroed();
    // SAFETY: a valid pointer to a rusage the call fills.
    let rc = unsafe { nix::libc::getrusage(nix::libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage failed");
    // SAFETY: filled by a successful getrusage.
    unsafe { usage.assume_init() }.ru_maxrss
}

/// Attack 6: a 1 GiB sparse record (zeros, no newline) used to take minutes
/// and 8 GB of memory and left a 3 GiB status.json. Lines are bounded now.
#[test]
fn an_endless_record_is_refused_with_a_short_error_in_little_memory() {
    if !require_tools("endless_record", &["gocryptfs", "fusermount3", "rsync"]) {
        return;
    }
    let mut sc = Scenario::new(
        "hostile",
        "security",
        "a 1 GiB sparse record (one endless line)",
        "restore --snapshot fails with a short error naming the record; status.json stays small; no child above 512 MiB",
    );
    let (job, _, id) = backed_up("hostile-sparse");
    let record = job.target_path.join(format!("records/{id}.rec"));
    fs::File::options()
        .write(true)
        .truncate(true)
        .open(&record)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let to = job.root.join("out");
    let o = job.run(&["restore", "--snapshot", &id, "--to", to.to_str().unwrap()]);
    assert_ne!(o.code, 0, "an endless record restored");
    assert!(
        o.stderr.contains("record"),
        "the error should name the record: {}",
        o.stderr
    );
    assert!(
        o.stderr.contains("more than any backup can produce"),
        "the error should say a bound was passed: {}",
        o.stderr
    );
    assert!(
        o.stderr.len() < 8192,
        "an error of {} bytes",
        o.stderr.len()
    );
    let status = fs::metadata(job.state_dir.join("status.json"))
        .unwrap()
        .len();
    assert!(status < 64 * 1024, "status.json grew to {status} bytes");
    let rss_mib = children_max_rss_kib() / 1024;
    assert!(
        rss_mib < 512,
        "a child (the restore, or another test's) peaked at {rss_mib} MiB reading a 1 GiB record"
    );
    job.assert_clean();
    sc.note("error under 8 KiB naming the bound; status.json under 64 KiB; peak child RSS under 512 MiB");
    sc.pass();
}

/// Attack 2, as reported: links planted at the temp names the helper used
/// to write through (`files/.gocryptfs.conf.tmp`, `records/.<id>.rec.tmp`).
/// Temp names are random now, and created O_EXCL|O_NOFOLLOW.
#[test]
fn links_at_the_old_temp_names_change_no_local_file() {
    if !require_tools("planted_temp_names", &["gocryptfs", "fusermount3", "rsync"]) {
        return;
    }
    let mut sc = Scenario::new(
        "hostile",
        "security",
        "links planted at files/.gocryptfs.conf.tmp and records/.<id>.rec.tmp",
        "the first backup uploads the config and writes its record; the local file the links point to is unchanged",
    );
    let job = Job::local("hostile-temp")
        .gocryptfs_config_in_state_dir()
        .build();
    fs::write(job.source.join("a"), "a\n").unwrap();
    job.ok(&["init"]);
    let victim = job.root.join("local-victim");
    fs::write(&victim, "precious\n").unwrap();
    for dir in ["files", "records"] {
        fs::create_dir_all(job.target_path.join(dir)).unwrap();
    }
    std::os::unix::fs::symlink(&victim, job.target_path.join("files/.gocryptfs.conf.tmp")).unwrap();
    let stats = job.backup_ok();
    let id = stats["snapshot"].as_str().unwrap();
    std::os::unix::fs::symlink(
        &victim,
        job.target_path.join(format!("records/.{id}.rec.tmp")),
    )
    .unwrap();
    fs::write(job.source.join("b"), "b\n").unwrap();
    job.backup_ok();
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "a planted link was written through"
    );
    assert!(
        job.files_dir().join("gocryptfs.conf").is_file(),
        "the config was not uploaded as a regular file"
    );
    job.assert_clean();
    sc.note("two backups ok; the linked local file unchanged; files/gocryptfs.conf a regular file");
    sc.pass();
}

/// Attack 8: a name on the target holding terminal escape sequences is
/// reported by verify escaped, never raw.
#[test]
fn escape_sequences_in_a_target_name_are_printed_escaped() {
    if !require_tools("escaped_names", &["gocryptfs", "fusermount3", "rsync"]) {
        return;
    }
    let mut sc = Scenario::new(
        "hostile",
        "security",
        "a file name with terminal escapes planted in files/",
        "verify lists it as extra with the escapes written as \\x1b; no raw control character on stdout or stderr",
    );
    let (job, _, _) = backed_up("hostile-escape");
    let name = "x\u{1b}]0;owned\u{7}\u{1b}[2J";
    fs::write(job.files_dir().join(name), "planted\n").unwrap();
    let o = job.run(&["verify"]);
    o.expect_code(3, "verify with a planted file");
    for (what, text) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        let raw: Vec<char> = text
            .chars()
            .filter(|c| c.is_control() && *c != '\n')
            .collect();
        assert!(
            raw.is_empty(),
            "raw control characters on {what}: {raw:?}\n{text:?}"
        );
    }
    assert!(
        o.stdout.contains("extra: x\\x1b]0;owned\\x07\\x1b[2J"),
        "the planted name should be listed, escaped: {}",
        o.stdout
    );
    job.assert_clean();
    sc.note("verify exit 3, the name listed as extra, escaped; no raw control character");
    sc.pass();
}
