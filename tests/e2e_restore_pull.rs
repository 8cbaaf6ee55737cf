//! Restore from an account that runs `rsync --server` pulls the ciphertext
//! into a local stage with rsync over ssh (src/target/pull.rs) instead of
//! reading it through sshfs. What the server sends is checked against the
//! run's record before anything is decrypted: a server that swaps a file or
//! a directory for a symlink to a local path is refused, and nothing on
//! this machine outside the stage changes.
//!
//! The server runs on this machine, so a write through such a link would
//! land on the very file the server read from; these tests therefore check
//! the refusal and the untouched local files, and the unit tests of
//! pull.rs check that links arrive munged.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const BIG_LEN: u64 = 4321;

/// A shell account job with a file of BIG_LEN bytes in `dir/` and one
/// backup. Returns the job and the ciphertext path of `dir/` on the server.
fn backed_up(tag: &str) -> (Job, PathBuf) {
    let job = Job::sftp(tag).build();
    write_big(&job);
    fs::write(job.source.join("top"), "top\n").unwrap();
    job.init_and_backup();
    let file = job.remote_file_for_len(BIG_LEN);
    let dir = file.parent().unwrap().to_path_buf();
    assert_ne!(
        dir,
        job.files_dir(),
        "dir/big is not in a subdirectory of files/"
    );
    (job, dir)
}

/// An SFTP-only account (chroot, internal-sftp) with a backup of
/// `dir/big` and of `others` (path, text).
fn sftp_only_with_big(tag: &str, others: &[(&str, &str)]) -> ServerJob {
    let job = Job::sftp(tag).build_on(ServerKind::ChrootSftp);
    write_big(&job);
    for (path, text) in others {
        fs::write(job.source.join(path), text).unwrap();
    }
    job.init_and_backup();
    job
}

/// `dir/big`, BIG_LEN bytes: its ciphertext is the one file of its size.
fn write_big(job: &Job) {
    fs::create_dir_all(job.source.join("dir")).unwrap();
    fs::write(job.source.join("dir/big"), vec![b'b'; BIG_LEN as usize]).unwrap();
}

/// No `restore-<id>` stage is left in the state dir after a restore.
fn assert_no_stage_left(job: &Job) {
    let left: Vec<String> = fs::read_dir(&job.state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("restore-"))
        .collect();
    assert!(left.is_empty(), "stage left in the state dir: {left:?}");
}

/// A whole restore into `out` fails, its error saying `says`, and nothing
/// reaches --to.
fn assert_restore_refused(job: &Job, says: &str) {
    let to = job.root.join("out");
    let o = job.run(&["restore", "--to", to.to_str().unwrap()]);
    assert_ne!(o.code, 0, "a swapped file restored:\n{}", o.dump());
    assert!(
        o.stderr.contains(says),
        "the error should name the swapped entry:\n{}",
        o.dump()
    );
    assert_eq!(entries_under(&to), 0, "something was restored into --to");
}

/// A whole restore into `out` (verbose) that fails, its error saying each
/// of `says`: what it could not restore is named, the rest is in --to.
fn restore_that_names(job: &Job, says: &[&str]) -> (PathBuf, Out) {
    let to = job.root.join("out");
    let o = job.run(&["--verbose", "restore", "--to", to.to_str().unwrap()]);
    assert_ne!(o.code, 0, "damage restored silently:\n{}", o.dump());
    for said in says {
        assert!(
            o.stderr.contains(said),
            "the error should name the damage ({said:?}):\n{}",
            o.dump()
        );
    }
    (to, o)
}

/// The restore decrypted the stage itself (restore/decrypt.rs), not
/// through a gocryptfs mount.
fn assert_decrypted_here(said: &Out) {
    assert!(
        said.stderr
            .lines()
            .any(|l| l.contains("restore: decrypted here by ")),
        "the stage was not decrypted here:\n{}",
        said.dump()
    );
}

/// A local directory with one file, and its file's (mtime, size, content).
fn local_victim(job: &Job) -> (PathBuf, (i64, u64, Vec<u8>)) {
    let victim = job.root.join("local-victim");
    fs::create_dir_all(&victim).unwrap();
    fs::write(victim.join("keep"), "a local file\n").unwrap();
    (victim.clone(), fingerprint(&victim.join("keep")))
}

fn fingerprint(path: &Path) -> (i64, u64, Vec<u8>) {
    let m = fs::metadata(path).unwrap();
    (m.mtime(), m.size(), fs::read(path).unwrap())
}

fn entries_under(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_full_restore_pulls_and_equals_the_source() {
    if !require_tools("restore_pull_roundtrip", SFTP_TOOLS) {
        return;
    }
    let (job, _) = backed_up("pull-roundtrip");
    // Directories in directories: each directory's time is set last, as
    // rsync would, not by whichever part wrote into it last.
    for d in ["dir/a", "dir/a/b", "dir/c"] {
        fs::create_dir_all(job.source.join(d)).unwrap();
        fs::write(job.source.join(d).join("f"), d).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        fs::File::open(job.source.join(d))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    job.backup_ok();
    let (to, said) = job.restore_and_compare_with("restored", &["--verbose"]);
    let stats = &job.stage("restore")["stats"];
    assert_eq!(stats["read_via"], "rsync", "{stats}");
    assert_decrypted_here(&said);
    // rsync pulls the directories' times too; the copy gives them back.
    let mtime = |p: &Path| fs::metadata(p).unwrap().mtime();
    for d in ["dir", "dir/a", "dir/a/b", "dir/c"] {
        assert_eq!(
            mtime(&to.join(d)),
            mtime(&job.source.join(d)),
            "{d}/ lost its mtime"
        );
    }
    // The stage is gone afterwards: only the job's own state files remain.
    assert_no_stage_left(&job);

    // One path of the latest state is read through sshfs (its encrypted
    // name is only known once the mount decrypts the tree).
    let to = job.root.join("one");
    fs::create_dir_all(&to).unwrap();
    job.ok(&["restore", "--to", to.to_str().unwrap(), "dir/big"]);
    assert_eq!(fs::read(to.join("dir/big")).unwrap().len() as u64, BIG_LEN);
    assert_eq!(job.stage("restore")["stats"]["read_via"], "sshfs");
    job.assert_clean();
}

/// A backup that stopped part-way leaves what it added in files/ without
/// a record that lists it; the server may put anything there too. A
/// whole pull brings all of files/ (rsync recurses), and what the run's
/// record does not list is removed from the stage and said, not restored.
#[test]
fn what_files_holds_beyond_the_record_is_pulled_and_left_out() {
    if !require_tools("restore_pull_unlisted", SFTP_TOOLS) {
        return;
    }
    let (job, dir) = backed_up("pull-unlisted");
    let files = job.files_dir();
    fs::write(files.join("added-after-the-record"), "stray\n").unwrap();
    fs::create_dir_all(files.join("stray-dir/deeper")).unwrap();
    fs::write(files.join("stray-dir/deeper/f"), "stray\n").unwrap();
    fs::write(dir.join("planted"), "stray\n").unwrap();

    let (_, said) = job.restore_and_compare_with("restored", &["--verbose"]);
    assert_eq!(job.stage("restore")["stats"]["read_via"], "rsync");
    assert_decrypted_here(&said);
    assert!(
        said.stderr.contains("holds 3 entries that run ") && said.stderr.contains("does not list"),
        "the entries left out should be said:\n{}",
        said.dump()
    );
    assert_no_stage_left(&job);
    job.assert_clean();
}

#[test]
fn a_file_swapped_for_a_symlink_is_refused_by_a_pull() {
    if !require_tools("restore_pull_file_symlink", SFTP_TOOLS) {
        return;
    }
    let (job, _) = backed_up("pull-file-link");
    let (victim, before) = local_victim(&job);
    let file = job.remote_file_for_len(BIG_LEN);
    fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(victim.join("keep"), &file).unwrap();

    assert_restore_refused(&job, "is a symlink, its record says a file");
    assert_eq!(
        fingerprint(&victim.join("keep")),
        before,
        "the local file changed"
    );
    job.assert_clean();
}

/// Over the rsync transport the server keeps hard links, and the pull
/// brings them into the stage; the copy out goes part by part, so two
/// names in different directories are copied apart and then linked
/// again, as one rsync `-H` over the whole tree would have left them.
#[test]
fn a_hard_link_across_directories_comes_back_linked() {
    if !require_tools("restore_pull_hard_link", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("pull-hard-link").transport("rsync").build();
    for d in ["one", "two", "three"] {
        fs::create_dir_all(job.source.join(d)).unwrap();
        fs::write(job.source.join(d).join("own"), d.repeat(500)).unwrap();
    }
    fs::write(job.source.join("one/shared"), "one file, two names\n").unwrap();
    fs::hard_link(
        job.source.join("one/shared"),
        job.source.join("three/shared"),
    )
    .unwrap();
    // A first backup over ssh runs several rsyncs (split.rs: a pass for
    // the directories, workers, a pass for their modes); the directories
    // that share the linked file go to one worker, which keeps the link.
    job.ok(&["init"]);
    let first = job.ok(&["--verbose", "backup"]);
    let rsyncs = first.stderr.matches("run: rsync ").count();
    assert!(
        rsyncs >= 4,
        "the first backup ran {rsyncs} rsync(s):\n{}",
        first.dump()
    );
    let linked_on_server = walk(&job.files_dir())
        .into_iter()
        .filter(|(_, m)| m.is_file() && m.nlink() > 1)
        .count();
    assert_eq!(
        linked_on_server, 2,
        "the server does not keep the hard link"
    );

    let (to, said) = job.restore_and_compare_with("restored", &["--verbose"]);
    assert_decrypted_here(&said);
    let inode = |p: &str| fs::metadata(to.join(p)).unwrap().ino();
    assert_eq!(
        inode("one/shared"),
        inode("three/shared"),
        "the hard link came back as two files:\n{}",
        said.dump()
    );
    job.assert_clean();
}

/// The server swaps a ciphertext directory for a symlink to a local
/// directory of this machine that holds the same names. A whole pull
/// recurses, so its rsync sends the link itself (munged), not what it
/// leads to: the restore is refused naming it, nothing reaches --to, and
/// the local directory is left as it was.
#[test]
fn a_directory_swapped_for_a_symlink_writes_nothing_through_it() {
    if !require_tools("restore_pull_dir_symlink", SFTP_TOOLS) {
        return;
    }
    let (job, dir) = backed_up("pull-dir-link");
    let (victim, before) = local_victim(&job);
    for entry in fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), victim.join(entry.file_name())).unwrap();
    }
    let victim_before = tree_digest(&victim);
    fs::rename(&dir, job.root.join("moved-away")).unwrap();
    std::os::unix::fs::symlink(&victim, &dir).unwrap();

    assert_restore_refused(&job, "is a symlink, its record says a directory");
    assert_eq!(
        fingerprint(&victim.join("keep")),
        before,
        "the local file changed"
    );
    assert_digests_equal(&victim_before, &tree_digest(&victim), "the local directory");
    assert_no_stage_left(&job);
    job.assert_clean();
}

/// The same swap, pointing at a local directory without those names:
/// refused the same way, and nothing is restored or changed.
#[test]
fn a_directory_swapped_for_a_symlink_to_elsewhere_fails_cleanly() {
    if !require_tools("restore_pull_dir_symlink_elsewhere", SFTP_TOOLS) {
        return;
    }
    let (job, dir) = backed_up("pull-dir-elsewhere");
    let (victim, before) = local_victim(&job);
    fs::rename(&dir, job.root.join("moved-away")).unwrap();
    std::os::unix::fs::symlink(&victim, &dir).unwrap();

    let to = job.root.join("out");
    let o = job.run(&["restore", "--to", to.to_str().unwrap()]);
    assert_ne!(
        o.code,
        0,
        "a restore without the data succeeded:\n{}",
        o.dump()
    );
    assert!(
        o.stderr
            .contains("is a symlink, its record says a directory"),
        "the error should name the swapped directory:\n{}",
        o.dump()
    );
    assert_eq!(
        fingerprint(&victim.join("keep")),
        before,
        "the local file changed"
    );
    assert_eq!(
        entries_under(&victim),
        1,
        "the pull wrote into the local directory"
    );
    assert_eq!(entries_under(&to), 0, "something was restored into --to");
    job.assert_clean();
}

/// An account that allows SFTP only (chroot, internal-sftp) is fetched
/// over SFTP with many requests in flight (src/target/sftp.rs): more files
/// than it keeps open at once, an empty file, files of several reads with
/// a short last one, a symlink and a read-only directory, all equal to the
/// source after restore; the stage is gone afterwards.
#[test]
fn an_sftp_only_account_is_fetched_over_sftp_and_equals_the_source() {
    if !ServerKind::ChrootSftp.require("restore_sftp_fetch") {
        return;
    }
    let job = Job::sftp("sftp-fetch").build_on(ServerKind::ChrootSftp);
    let many = job.source.join("many");
    fs::create_dir_all(&many).unwrap();
    // More than the 1,024 files a session keeps open where OpenSSH allows
    // that many (sftp.rs, limits@openssh.com).
    for i in 0..1100 {
        fs::write(
            many.join(format!("f{i:04}")),
            vec![b'a' + (i % 26) as u8; (i % 80) * 37],
        )
        .unwrap();
    }
    fs::write(job.source.join("empty"), "").unwrap();
    let big: Vec<u8> = (0..300_007u32).map(|i| (i % 251) as u8).collect();
    fs::write(job.source.join("big"), &big).unwrap();
    // Larger than the fetch holds in memory (sftp.rs, HOLD_MAX): it goes
    // through a spilled file.
    let huge: Vec<u8> = (0..2_500_003u32).map(|i| (i % 253) as u8).collect();
    fs::write(job.source.join("huge"), &huge).unwrap();
    std::os::unix::fs::symlink("many/f0001", job.source.join("link")).unwrap();
    fs::create_dir_all(job.source.join("ro")).unwrap();
    fs::write(job.source.join("ro/in"), "in a read-only dir\n").unwrap();
    fs::set_permissions(
        job.source.join("ro"),
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    job.init_and_backup();

    let (to, said) = job.restore_and_compare_with("restored", &["--verbose"]);
    let stats = &job.stage("restore")["stats"];
    assert_eq!(stats["read_via"], "sftp", "{stats}");
    assert_decrypted_here(&said);
    assert!(
        said.stderr.contains("as it came over SFTP, no stage"),
        "the SFTP fetch was not decrypted as it came:\n{}",
        said.dump()
    );
    assert_eq!(
        fs::metadata(to.join("big")).unwrap().mtime(),
        fs::metadata(job.source.join("big")).unwrap().mtime(),
        "the restored file lost its mtime"
    );
    assert_no_stage_left(&job);
    fs::set_permissions(
        job.source.join("ro"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    job.assert_clean();
}

/// Over SFTP the server's lstat of each file is checked before a byte is
/// asked for: a file swapped for a symlink is named by its plaintext path
/// and not restored; the rest is.
#[test]
fn a_file_swapped_for_a_symlink_is_named_over_sftp_and_the_rest_restored() {
    if !ServerKind::ChrootSftp.require("restore_sftp_file_symlink") {
        return;
    }
    let job = sftp_only_with_big("sftp-file-link", &[("dir/small", "next to it\n")]);
    let file = job.remote_file_for_len(BIG_LEN);
    fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink("gocryptfs.diriv", &file).unwrap();

    let said = "dir/big (the target would not give it back: \
                is not a file on the server, its record says a file)";
    let (to, _) = restore_that_names(&job, &[said]);
    assert!(
        fs::symlink_metadata(to.join("dir/big")).is_err(),
        "the swapped file was restored"
    );
    assert_eq!(fs::read(to.join("dir/small")).unwrap(), b"next to it\n");
    job.assert_clean();
}

/// On a new machine the job's gocryptfs config is not there: the stage is
/// then mounted only after the pull brought `files/gocryptfs.conf` (with
/// the config here, it is mounted while the pull runs). Both restore.
#[test]
fn a_pull_restores_with_and_without_the_local_config() {
    if !require_tools("restore_pull_no_local_config", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("pull-no-conf")
        .gocryptfs_config_in_state_dir()
        .build();
    write_big(&job);
    job.init_and_backup();
    job.restore_and_compare("with-config");
    assert_eq!(job.stage("restore")["stats"]["read_via"], "rsync");
    fs::remove_file(job.state_dir.join("gocryptfs.reverse.conf")).unwrap();
    job.restore_and_compare("without-config");
    assert_eq!(job.stage("restore")["stats"]["read_via"], "rsync");
    assert_no_stage_left(&job);
    job.assert_clean();
}

/// Where the runtime dir is a tmpfs (NixOS' /run/ciphersync/<job>,
/// $XDG_RUNTIME_DIR) and the stage is small against the memory available,
/// the pull stages there instead of on the state dir's disk
/// (src/restore.rs, `stage_home`); the restore equals the source and the
/// stage is gone afterwards from both places.
#[test]
fn a_small_stage_goes_to_a_tmpfs_runtime_dir() {
    if !require_tools("stage_in_tmpfs", SFTP_TOOLS) {
        return;
    }
    let shm = Path::new("/dev/shm");
    assert!(
        shm.is_dir(),
        "/dev/shm is missing: this test needs a tmpfs to put a runtime dir on"
    );
    let runtime = shm.join(format!("cse2e-stage-tmpfs-{}", std::process::id()));
    let _ = fs::remove_dir_all(&runtime);
    let job = Job::sftp("stage-tmpfs")
        .set("runtime_dir", serde_json::json!(runtime))
        .build();
    write_big(&job);
    fs::write(job.source.join("top"), "top\n").unwrap();
    job.init_and_backup();
    let to = job.root.join("restored");
    fs::create_dir_all(&to).unwrap();
    let o = job.ok(&["--verbose", "restore", "--to", to.to_str().unwrap()]);
    // The newest record came over SFTP while sshfs mounted the account.
    assert!(
        o.stderr.contains("restore: the record of ") && o.stderr.contains(" read over SFTP"),
        "the newest record was not read over SFTP:\n{}",
        o.dump()
    );
    let staged = format!("restore: staged in {}/restore-", runtime.display());
    assert!(
        o.stderr.contains(&staged),
        "the stage was not put in the tmpfs runtime dir ({staged}):\n{}",
        o.dump()
    );
    assert_trees_equal(&job.source, &to);
    let left: Vec<String> = fs::read_dir(&runtime)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("restore-"))
        .collect();
    assert!(left.is_empty(), "stage left in the runtime dir: {left:?}");
    assert_no_stage_left(&job);
    assert_no_mounts_under(&runtime);
    job.assert_clean();
    fs::remove_dir_all(&runtime).unwrap();
}

/// The server flips a byte of one file's ciphertext (its size unchanged,
/// so the pull and the record's checks pass it): the restore decrypts
/// the stage here, finds the block that fails authentication, names the
/// plaintext path and the block, restores everything else, and leaves no
/// part of the damaged file in --to.
#[test]
fn a_flipped_ciphertext_byte_is_named_and_the_rest_restored() {
    if !require_tools("restore_pull_flipped_byte", SFTP_TOOLS) {
        return;
    }
    let (job, _) = backed_up("pull-flipped");
    a_flipped_byte_is_named(&job);
}

/// The same over an SFTP-only account, whose files are decrypted as they
/// arrive (restore/streamed.rs).
#[test]
fn a_flipped_ciphertext_byte_is_named_over_sftp_too() {
    if !ServerKind::ChrootSftp.require("restore_sftp_flipped_byte") {
        return;
    }
    a_flipped_byte_is_named(&sftp_only_with_big("sftp-flipped", &[("top", "top\n")]));
}

fn a_flipped_byte_is_named(job: &Job) {
    let victim = job.remote_file_for_len(BIG_LEN);
    let mut bytes = fs::read(&victim).unwrap();
    bytes[18 + 16 + 16 + 100] ^= 0x40; // the first block's ciphertext
    fs::write(&victim, &bytes).unwrap();

    let (to, o) = restore_that_names(
        job,
        &["dir/big (block 0 (bytes 0 to 4095 of the plaintext) fails authentication"],
    );
    assert_decrypted_here(&o);
    assert!(
        !to.join("dir/big").exists(),
        "a part of the damaged file reached --to"
    );
    assert_eq!(
        fs::read(to.join("top")).unwrap(),
        b"top\n",
        "the rest was not restored"
    );
    assert_no_stage_left(job);
    job.assert_clean();
}

/// The server rewrites the `.name` file of a long name (same length): the
/// name it holds no longer matches the hash the file is stored under.
/// gocryptfs' mount would decrypt the altered name, or skip the entry
/// without a word; here the entry is named, by its directory and stored
/// name, and the rest restored.
#[test]
fn an_altered_long_name_is_named_and_the_rest_restored() {
    if !require_tools("restore_pull_long_name", SFTP_TOOLS) {
        return;
    }
    an_altered_long_name_is_named(&Job::sftp("pull-long-name").build());
}

#[test]
fn an_altered_long_name_is_named_over_sftp_too() {
    if !ServerKind::ChrootSftp.require("restore_sftp_long_name") {
        return;
    }
    an_altered_long_name_is_named(&Job::sftp("sftp-long-name").build_on(ServerKind::ChrootSftp));
}

fn an_altered_long_name_is_named(job: &Job) {
    fs::create_dir_all(job.source.join("long")).unwrap();
    fs::write(job.source.join("long").join("n".repeat(200)), "long\n").unwrap();
    fs::write(job.source.join("short"), "short\n").unwrap();
    job.init_and_backup();
    let name_file = walk(&job.files_dir())
        .into_iter()
        .map(|(rel, _)| job.files_dir().join(rel))
        .find(|p| p.to_string_lossy().ends_with(".name"))
        .expect("a long name's .name file on the server");
    let mut text = fs::read(&name_file).unwrap();
    text[0] = if text[0] == b'A' { b'B' } else { b'A' };
    fs::write(&name_file, &text).unwrap();

    let (to, _) = restore_that_names(
        job,
        &[
            "long/gocryptfs.longname.",
            "its .name file holds a name whose hash is not this one",
        ],
    );
    assert_eq!(fs::read(to.join("short")).unwrap(), b"short\n");
    assert_eq!(
        entries_under(&to.join("long")),
        0,
        "the altered entry reached --to"
    );
    job.assert_clean();
}

/// Deterministic names (no per-directory IV: gocryptfs encrypts every
/// name under an all-zero IV) are decrypted here too: the features tree
/// (long names, symlinks, empty and odd-sized files, odd modes) comes back
/// equal to the source.
#[test]
fn deterministic_names_are_decrypted_here_and_equal_the_source() {
    if !require_tools("restore_pull_deterministic", SFTP_TOOLS) {
        return;
    }
    let job = Job::sftp("pull-deterministic").set("filenames", serde_json::json!("deterministic"));
    deterministic_names_equal_the_source(&job.build());
}

#[test]
fn deterministic_names_are_decrypted_as_they_come_over_sftp() {
    if !ServerKind::ChrootSftp.require("restore_sftp_deterministic") {
        return;
    }
    let job = Job::sftp("sftp-deterministic").set("filenames", serde_json::json!("deterministic"));
    deterministic_names_equal_the_source(&job.build_on(ServerKind::ChrootSftp));
}

fn deterministic_names_equal_the_source(job: &Job) {
    make_features_tree(&job.source);
    job.init_and_backup();
    let divs = walk(&job.files_dir())
        .into_iter()
        .filter(|(rel, _)| rel.ends_with("gocryptfs.diriv"))
        .count();
    assert_eq!(divs, 0, "deterministic names keep no directory IVs");
    let (_, said) = job.restore_and_compare_with("restored", &["--verbose"]);
    assert_decrypted_here(&said);
    job.assert_clean();
}

/// A server that stops answering in the middle of a restore over SFTP
/// (here sftp-server blocks opening the FIFO stored where the record has
/// a file): SIGTERM ends the restore `interrupted` with no mount, spill
/// directory or helper left, and the error says that what was decrypted
/// before is in --to (its directories were made before any file came).
#[test]
fn sigterm_while_the_server_stalls_a_streamed_restore_leaves_nothing_behind() {
    if !ServerKind::ChrootSftp.require("restore_sftp_stalled") {
        return;
    }
    let job = sftp_only_with_big("sftp-stall", &[]);
    let file = job.remote_file_for_len(BIG_LEN);
    fs::remove_file(&file).unwrap();
    let made = std::process::Command::new("mkfifo")
        .args(["-m", "0644"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo {}", file.display());

    let to = job.root.join("out");
    let mut run = job.spawn(&["-v", "restore", "--to", to.to_str().unwrap()]);
    // Every directory is made before a file is asked for.
    while !to.join("dir").is_dir() {
        assert!(
            run.is_running(),
            "the restore ended before it stalled:\n{:?}",
            run.output_so_far()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    send_signal(run.pid(), "TERM");
    let out = run.wait(std::time::Duration::from_secs(120));
    // Let the blocked sftp-server go (it waits for a writer).
    let _ = fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&file);
    assert_ne!(out.code, 0, "a stalled restore exited 0:\n{}", out.dump());
    assert_eq!(
        job.stage("restore")["outcome"],
        "interrupted",
        "{}",
        out.dump()
    );
    assert!(
        out.stderr
            .contains("what was decrypted before it stopped is in"),
        "the error does not say what is in --to:\n{}",
        out.dump()
    );
    assert_no_stage_left(&job);
    let spills: Vec<_> = fs::read_dir(&job.runtime_dir)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        !spills
            .iter()
            .any(|n| n.to_string_lossy().starts_with("restore-")),
        "a spill directory was left in the runtime dir: {spills:?}"
    );
    job.assert_clean();
}
