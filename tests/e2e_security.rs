//! Issue 5, item 2: security. Fails if plaintext (names, contents, symlink
//! targets) or the password reaches the server, if the password shows in the
//! argv/environment of any process of the run, in status.json or the output,
//! if a mount point is reachable by other users, or if restore writes outside
//! `--to`.

mod common;
#[path = "faults/support.rs"]
mod support;

use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::Scenario;

const SUITE: &str = "security";

/// Every occurrence of any needle in any file's bytes or any path (names)
/// under `root`: returns "where: needle" lines.
fn grep_tree(root: &Path, needles: &[&[u8]]) -> Vec<String> {
    let mut hits = Vec::new();
    for (rel, m) in walk(root) {
        let name = rel.to_string_lossy().into_owned();
        for n in needles {
            let ns = String::from_utf8_lossy(n);
            if name.contains(ns.as_ref()) {
                hits.push(format!("name {name}: {ns}"));
            }
        }
        let p = root.join(&rel);
        if m.file_type().is_symlink() {
            let t = fs::read_link(&p).unwrap();
            let t = t.to_string_lossy();
            for n in needles {
                let ns = String::from_utf8_lossy(n);
                if t.contains(ns.as_ref()) {
                    hits.push(format!("symlink target of {name}: {ns}"));
                }
            }
        } else if m.file_type().is_file() {
            let data = fs::read(&p).unwrap();
            for n in needles {
                if data.windows(n.len()).any(|w| w == *n) {
                    hits.push(format!("content of {name}: {}", String::from_utf8_lossy(n)));
                }
            }
        }
    }
    hits
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------
// (a) no plaintext on the server
// ---------------------------------------------------------------------------

const NAME_MARK: &str = "PlainNameMarkerQ7";
const DIR_MARK: &str = "PlainDirMarkerZ3";
const CONTENT_MARK: &str = "PlainContentMarkerK9";
const LINK_MARK: &str = "PlainLinkMarkerW5";

fn marker_tree(src: &Path) {
    fs::create_dir_all(src.join(format!("{DIR_MARK} dir"))).unwrap();
    let body = format!("{CONTENT_MARK}\n").repeat(500);
    fs::write(src.join(format!("{NAME_MARK}.txt")), &body).unwrap();
    fs::write(
        src.join(format!("{DIR_MARK} dir/{NAME_MARK}-inner.txt")),
        format!("small {CONTENT_MARK}"),
    )
    .unwrap();
    // A file exactly one block, one spanning blocks, an empty one.
    fs::write(
        src.join("block.bin"),
        CONTENT_MARK.repeat(4096 / CONTENT_MARK.len() + 1),
    )
    .unwrap();
    fs::write(src.join(format!("{NAME_MARK}-empty")), b"").unwrap();
    symlink(
        format!("{LINK_MARK}/target/does-not-exist"),
        src.join("rel-link"),
    )
    .unwrap();
    symlink(format!("/{LINK_MARK}/absolute"), src.join("abs-link")).unwrap();
    symlink(
        format!("{NAME_MARK}.txt"),
        src.join(format!("{NAME_MARK}-link")),
    )
    .unwrap();
}

fn no_plaintext_on_server(transport: &str) {
    let tag = format!("sec-plain-{transport}");
    if !require_tools(&tag, SFTP_TOOLS) {
        return;
    }
    let mut sc = Scenario::new(
        SUITE,
        "security",
        &format!("no plaintext name, content or symlink target on the server ({transport})"),
        "markers in names, contents and symlink targets never appear in any byte or name under the remote dir (files/, snapshots/, checksums/, records/)",
    );
    let job = Job::sftp(&tag).transport(transport).build();
    make_sample_tree(&job.source);
    marker_tree(&job.source);
    job.init_and_backup();
    // Change and delete files so that snapshots/ fills up too.
    fs::write(
        job.source.join(format!("{NAME_MARK}.txt")),
        format!("changed {CONTENT_MARK}\n").repeat(300),
    )
    .unwrap();
    fs::remove_file(
        job.source
            .join(format!("{DIR_MARK} dir/{NAME_MARK}-inner.txt")),
    )
    .unwrap();
    fs::remove_file(job.source.join("rel-link")).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    job.backup_ok();
    job.verify_ok(false);
    job.verify_ok(true);
    let needles: Vec<&[u8]> = vec![
        NAME_MARK.as_bytes(),
        DIR_MARK.as_bytes(),
        CONTENT_MARK.as_bytes(),
        LINK_MARK.as_bytes(),
    ];
    let remote = &job.target_path;
    let dirs: BTreeSet<String> = fs::read_dir(remote)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    sc.note(format!("remote top level: {dirs:?}"));
    assert!(dirs.contains("files"), "no files/ on the remote: {dirs:?}");
    let snaps = walk(&remote.join("snapshots")).len();
    assert!(
        snaps > 0,
        "the second backup left nothing under snapshots/ (premise)"
    );
    let n = walk(remote).len();
    let hits = grep_tree(remote, &needles);
    sc.note(format!(
        "{n} remote entries scanned ({snaps} under snapshots/), {} plaintext hits",
        hits.len()
    ));
    assert!(
        hits.is_empty(),
        "plaintext reached the server:\n  {}",
        hits.join("\n  ")
    );
    // The markers are really in the source (the scan would find them).
    assert!(
        !grep_tree(&job.source, &needles).is_empty(),
        "the markers are not found in the source: the scan of the remote proves nothing"
    );
    job.assert_clean();
    sc.pass();
}

#[test]
fn no_plaintext_reaches_the_server_sshfs() {
    no_plaintext_on_server("sshfs");
}

#[test]
fn no_plaintext_reaches_the_server_rsync() {
    no_plaintext_on_server("rsync");
}

// ---------------------------------------------------------------------------
// (b) the password never shows; (c) mount points private
// ---------------------------------------------------------------------------

struct Sampling {
    samples: u64,
    comms: BTreeSet<String>,
    leaks: Vec<String>,
    mounts_seen: BTreeSet<String>,
    mount_problems: Vec<String>,
}

/// While `run` is alive: every ~20 ms read cmdline and environ of the run's
/// whole process tree (and of the sshd's children: the server side), look
/// for `secret`; check every mount under runtime_dir for privacy.
fn sample_run(job: &Job, run: &mut Running, secret: &[u8]) -> Sampling {
    let mut s = Sampling {
        samples: 0,
        comms: BTreeSet::new(),
        leaks: Vec::new(),
        mounts_seen: BTreeSet::new(),
        mount_problems: Vec::new(),
    };
    let sshd_pid = job
        .sshd
        .as_ref()
        .map(|d| {
            fs::read_to_string(d.dir.join("sshd.pid"))
                .unwrap_or_default()
                .trim()
                .parse::<u32>()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    while run.is_running() {
        s.samples += 1;
        let mut pids: Vec<(u32, String)> = vec![(run.pid(), "ciphersync".into())];
        pids.extend(descendants(run.pid()));
        if sshd_pid != 0 {
            pids.extend(descendants(sshd_pid));
        }
        for (pid, comm) in pids {
            s.comms.insert(comm.clone());
            for f in ["cmdline", "environ"] {
                if let Ok(b) = fs::read(format!("/proc/{pid}/{f}"))
                    && contains(&b, secret)
                {
                    s.leaks.push(format!(
                        "/proc/{pid}/{f} ({comm}): {}",
                        String::from_utf8_lossy(&b).replace('\0', " ")
                    ));
                }
            }
        }
        for m in mounts_under(&job.runtime_dir) {
            let mp = m.mount_point.clone();
            if s.mounts_seen.insert(mp.display().to_string()) {
                check_mount_private(job, &m, &mut s.mount_problems);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    s
}

/// Other users must not reach a mount: runtime_dir and every dir from it to
/// the mount point without group/other bits, no allow_other, and user
/// `nobody` cannot list it.
fn check_mount_private(job: &Job, m: &MountEntry, problems: &mut Vec<String>) {
    let mp = &m.mount_point;
    let mut dir = mp.parent().map(Path::to_path_buf);
    while let Some(d) = dir {
        if !d.starts_with(&job.runtime_dir) {
            break;
        }
        if let Ok(meta) = fs::metadata(&d)
            && meta.mode() & 0o077 != 0
        {
            problems.push(format!(
                "{} (above mount {}) has mode {:o}",
                d.display(),
                mp.display(),
                meta.mode() & 0o7777
            ));
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let esc = mp.to_string_lossy().replace(' ', "\\040");
    for line in info
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(esc.as_str()))
    {
        if line.contains("allow_other") {
            problems.push(format!("mount {} has allow_other: {line}", mp.display()));
        }
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "ls",
            "-a",
        ])
        .arg(mp)
        .output();
    if let Ok(o) = out
        && o.status.success()
    {
        problems.push(format!(
            "user nobody can list {}: {}",
            mp.display(),
            String::from_utf8_lossy(&o.stdout).replace('\n', " ")
        ));
    }
}

fn password_never_shows(transport: &str, checksums: &str) {
    let tag = format!("sec-pw-{transport}-{checksums}");
    if !require_tools(&tag, SFTP_TOOLS) {
        return;
    }
    let mut sc = Scenario::new(
        SUITE,
        "security",
        &format!(
            "password never in argv/environ/status/output/remote; mount points private ({transport}, checksums {checksums})"
        ),
        "no /proc/<pid>/cmdline or environ of the helper's process tree (and the server's) holds the password during backup, verify and verify --deep; nor status.json, -v output, state_dir, remote; mounts under runtime_dir unreachable by other users (0700 path, no allow_other, `nobody` cannot list)",
    );
    let job = Job::sftp(&tag)
        .transport(transport)
        .remote_checksums(checksums)
        .build();
    make_sample_tree(&job.source);
    make_big_tree(&job.source, "big", 8, 2 << 20);
    let secret_line = fs::read_to_string(&job.password_file).unwrap();
    let secret = secret_line.trim().as_bytes().to_vec();
    assert!(
        secret.len() >= 32,
        "the password is only {} bytes (want 32 or more, so that a match is no accident)",
        secret.len()
    );
    job.ok(&["init"]);
    let mut outputs = Vec::new();
    let mut total_samples = 0;
    let mut comms = BTreeSet::new();
    let mut mounts = BTreeSet::new();
    for args in [
        &["backup", "-v"][..],
        &["verify", "-v"],
        &["verify", "--deep", "-v"],
    ] {
        let mut run = job.spawn(args);
        let s = sample_run(&job, &mut run, &secret);
        let out = run.wait(Duration::from_secs(300));
        out.expect_code(0, &args.join(" "));
        assert!(
            s.leaks.is_empty(),
            "{}: password visible:\n  {}",
            args.join(" "),
            s.leaks.join("\n  ")
        );
        assert!(
            s.mount_problems.is_empty(),
            "{}: mount points reachable by others:\n  {}",
            args.join(" "),
            s.mount_problems.join("\n  ")
        );
        total_samples += s.samples;
        comms.extend(s.comms);
        mounts.extend(s.mounts_seen);
        outputs.push(out);
    }
    // The sampler saw the interesting processes.
    assert!(
        comms.contains("gocryptfs"),
        "never saw gocryptfs in the process tree: {comms:?}"
    );
    assert!(
        comms.iter().any(|c| c == "rsync"),
        "never saw rsync: {comms:?}"
    );
    assert!(
        comms.iter().any(|c| c == "ssh" || c == "sshfs"),
        "never saw ssh/sshfs: {comms:?}"
    );
    assert!(
        !mounts.is_empty(),
        "no mount seen under runtime_dir during the runs"
    );
    sc.note(format!("{total_samples} process-tree samples over backup/verify/verify --deep; processes seen: {comms:?}; {} mount points checked", mounts.len()));
    // Output and files.
    for o in &outputs {
        assert!(
            !contains(o.stdout.as_bytes(), &secret),
            "password in stdout:\n{}",
            o.dump()
        );
        assert!(
            !contains(o.stderr.as_bytes(), &secret),
            "password in stderr:\n{}",
            o.dump()
        );
    }
    let mut places = grep_tree(&job.state_dir, &[&secret]);
    places.extend(grep_tree(&job.target_path, &[&secret]));
    places.extend(grep_tree(&job.runtime_dir, &[&secret]));
    assert!(
        places.is_empty(),
        "password found in files the helper writes:\n  {}",
        places.join("\n  ")
    );
    let status = fs::read(job.state_dir.join("status.json")).unwrap();
    assert!(!contains(&status, &secret), "password in status.json");
    // runtime_dir itself is private.
    let rt = fs::metadata(&job.runtime_dir).unwrap().mode() & 0o7777;
    assert_eq!(rt & 0o077, 0, "runtime_dir mode {rt:o}");
    sc.note(format!(
        "runtime_dir mode {rt:o}; status.json, state_dir, runtime_dir, remote and output clean"
    ));
    job.assert_clean();
    sc.pass();
}

#[test]
fn password_never_visible_sshfs_ssh_checksums() {
    password_never_shows("sshfs", "ssh");
}

#[test]
fn password_never_visible_rsync_mount_checksums() {
    password_never_shows("rsync", "mount");
}

// ---------------------------------------------------------------------------
// (d) restore never writes outside --to
// ---------------------------------------------------------------------------

fn rand_tag() -> String {
    random_password()[..12].to_string()
}

#[test]
fn restore_never_writes_outside_to() {
    if !require_tools("sec-restore", SFTP_TOOLS) {
        return;
    }
    let mut sc = Scenario::new(
        SUITE,
        "security",
        "restore never writes outside --to",
        "symlinks pointing out of the tree (absolute and relative) are restored as symlinks, not followed; a PATH through such a symlink writes nothing outside; PATH with `..` or absolute exits 2",
    );
    let outside = PathBuf::from(format!("/tmp/outside-{}", rand_tag()));
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(outside.clone());
    fs::create_dir_all(&outside).unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o777)).unwrap();

    let job = Job::sftp("sec-restore").build();
    let src = &job.source;
    fs::write(src.join("inside.txt"), b"inside\n").unwrap();
    // In the backup: a directory whose name is a symlink to the outside dir,
    // an absolute symlink to a file outside, a relative one climbing out.
    symlink(&outside, src.join("escape-dir")).unwrap();
    symlink(outside.join("x"), src.join("escape-abs")).unwrap();
    let depth = src.components().count();
    let rel_target = format!(
        "{}{}",
        "../".repeat(depth + 2),
        outside
            .join("y")
            .display()
            .to_string()
            .trim_start_matches('/')
    );
    symlink(&rel_target, src.join("escape-rel")).unwrap();
    job.init_and_backup();

    // The outside dir holds a file with known bytes only now (after the
    // backup), so a restore that follows a symlink would touch it.
    fs::write(outside.join("x"), b"outside original\n").unwrap();
    let before = tree_digest(&outside);

    // Full restore: the links come back as links with the same targets.
    let to = job.root.join("restored");
    let (o, _) = job.run_json(&["restore", "--to", to.to_str().unwrap()]);
    o.expect_code(0, "restore");
    for (name, target) in [
        ("escape-dir", outside.display().to_string()),
        ("escape-abs", outside.join("x").display().to_string()),
        ("escape-rel", rel_target.clone()),
    ] {
        let m = fs::symlink_metadata(to.join(name))
            .unwrap_or_else(|e| panic!("{name} not restored: {e}"));
        assert!(
            m.file_type().is_symlink(),
            "{name} restored as {:?}, not as a symlink",
            m.file_type()
        );
        assert_eq!(
            fs::read_link(to.join(name)).unwrap().display().to_string(),
            target,
            "{name} target"
        );
    }
    assert_digests_equal(
        &before,
        &tree_digest(&outside),
        "the outside dir after a full restore",
    );
    sc.note("full restore: 3 escaping symlinks restored as symlinks, outside dir untouched");

    // PATH arguments through or at the escaping links.
    let mut tried = 0;
    for path in [
        "escape-dir/x",
        "escape-dir",
        "escape-abs",
        "escape-rel",
        "escape-dir/new-file",
    ] {
        let to = job.root.join(format!("r-{}", path.replace('/', "_")));
        let o = job.run(&["restore", "--to", to.to_str().unwrap(), path]);
        tried += 1;
        support::assert_no_panic(&format!("restore {path}"), o.code, &o.stdout, &o.stderr);
        assert_digests_equal(
            &before,
            &tree_digest(&outside),
            &format!("the outside dir after `restore {path}`"),
        );
        if o.code == 0 {
            // Whatever came back lies under --to and is not a copy of the outside file.
            for (rel, m) in walk(&to) {
                if m.file_type().is_file() {
                    let b = fs::read(to.join(&rel)).unwrap();
                    sc.soft_check(
                        b != b"outside original\n",
                        format!("`restore {path}` copied the file outside the backup ({}/x, reached through the backed-up symlink) into {}", outside.display(), rel.display()),
                    );
                }
            }
        }
        sc.note(format!("restore PATH {path:?}: exit {}", o.code));
    }
    // `..` and absolute paths are refused before anything happens.
    for path in [
        "../x",
        "a/../../x",
        "..",
        "./../x",
        "/etc/passwd",
        &format!("{}/x", outside.display()),
    ] {
        let to = job.root.join("r-dotdot");
        let o = job.run(&["restore", "--to", to.to_str().unwrap(), path]);
        tried += 1;
        support::assert_no_panic(&format!("restore {path}"), o.code, &o.stdout, &o.stderr);
        assert_eq!(
            o.code,
            2,
            "restore PATH {path:?}: expected exit 2\n{}",
            o.dump()
        );
        assert!(
            o.stderr.contains(path) || o.stderr.contains(".."),
            "restore {path:?}: stderr names neither the path nor \"..\": {}",
            o.stderr
        );
        let written: Vec<_> = match fs::read_dir(&to) {
            Ok(rd) => rd.flatten().map(|e| e.file_name()).collect(),
            Err(_) => Vec::new(),
        };
        assert!(
            !to.exists() || written.is_empty(),
            "refused restore wrote into --to {}: {written:?}",
            to.display()
        );
    }
    assert_digests_equal(
        &before,
        &tree_digest(&outside),
        "the outside dir at the end",
    );
    sc.inputs = tried;
    sc.note(format!(
        "{tried} restore PATH arguments tried; `..`/absolute refused with exit 2"
    ));
    job.assert_clean();
    sc.pass();
}

// ---------------------------------------------------------------------------
// Bounded fuzz of what the helper reads back (issue 5, item 4): records
// from the remote, status.json, last-backup.json and the checksum cache from
// the state dir. A corrupted file must give an error, never a panic.
// ---------------------------------------------------------------------------

fn fuzz_iters(default: u64) -> u64 {
    std::env::var("CIPHERSYNC_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Structured record corruptions (besides the random byte mutations).
fn record_variants(good: &str) -> Vec<String> {
    let mut lines: Vec<&str> = good.split('\n').collect();
    let header_end = lines.iter().position(|l| l.is_empty()).unwrap_or(1);
    let mut v = vec![
        String::new(),
        "\n".into(),
        good.replacen('\n', "\r\n", 1),
        good.lines().next().unwrap_or("").to_string(),
        good.replace("snapshot ", "snapshot 99999999T999999Z-"),
        good.replace("snapshot 20", "snapshot 19"),
        good.replace("transferred ", "transferred -"),
        good.replace("deleted ", "deleted 18446744073709551616"),
        format!("{good}\nf 644 1 ../../../etc/passwd\n"),
        format!("{good}\nf 644 1 /etc/passwd\n"),
        format!("{good}\nl 777 0 a//b\n"),
        format!("{good}\nf 999 1 x\n"),
        format!("{good}\nf 644 99999999999999999999 x\n"),
        format!("{good}\nf 644 -1 x\n"),
        format!("{good}\nq 644 1 x\n"),
        format!("{good}\nf 644 1 back\\slash\\\n"),
        format!("{good}\nf 644 1 new\\x\n"),
        format!("{good}\nf\n"),
        format!("{good}\nd 755 0 .\n"),
        format!("{good}\n{}", "f 644 1 dup\n".repeat(3)),
        format!("{good}\nf 644 1 {}\n", "a/".repeat(2000)),
        good.replace(' ', "\t"),
        good.to_uppercase(),
    ];
    // Header only, entries only, entries duplicated.
    v.push(lines[..header_end].join("\n"));
    v.push(lines[header_end..].join("\n"));
    let entries = lines.split_off(header_end);
    v.push(format!(
        "{}\n{}\n{}",
        lines.join("\n"),
        entries.join("\n"),
        entries.join("\n")
    ));
    v
}

#[test]
fn fuzz_records_status_and_state_files_never_panic() {
    if !require_tools("sec-fuzz", LOCAL_TOOLS) {
        return;
    }
    let seed: u64 = 0xC1F5_2026;
    let iters = fuzz_iters(160);
    let mut sc = Scenario::new(
        SUITE,
        "fuzz",
        &format!(
            "fuzz: corrupted records/<id>.rec, status.json, last-backup.json, sha1-cache.tsv -> snapshots, restore --snapshot, prune --dry-run, status, verify, backup (seed {seed:#x})"
        ),
        "an error (exit 1/2/3) or a correct answer; never a panic (exit 101 / \"panicked\"), never a signal",
    );
    let job = Job::local("sec-fuzz").build();
    make_sample_tree(&job.source);
    job.init_and_backup();
    let mut ids = Vec::new();
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(1100));
        fs::write(
            job.source.join(format!("round-{round}.txt")),
            format!("round {round}\n"),
        )
        .unwrap();
        fs::remove_file(
            job.source
                .join(if round == 0 { "one-byte" } else { "empty-file" }),
        )
        .unwrap();
        ids.push(job.backup_ok()["snapshot"].as_str().unwrap().to_string());
    }
    job.verify_ok(false);
    let records = job.target_path.join("records");
    let rec_files: Vec<PathBuf> = fs::read_dir(&records)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        rec_files.len() >= 3,
        "expected a record per run under {}: {rec_files:?}",
        records.display()
    );
    let originals: Vec<(PathBuf, Vec<u8>)> = rec_files
        .iter()
        .map(|p| (p.clone(), fs::read(p).unwrap()))
        .collect();
    let state_files = ["status.json", "last-backup.json", "sha1-cache.tsv"];
    let state_orig: Vec<(PathBuf, Option<Vec<u8>>)> = state_files
        .iter()
        .map(|f| (job.state_dir.join(f), fs::read(job.state_dir.join(f)).ok()))
        .collect();

    let mut rng = support::Fuzz::new(seed);
    let mut failures = Vec::new();
    let mut codes: std::collections::BTreeMap<String, u64> = Default::default();
    let mut tried = 0u64;
    let mut check = |what: String,
                     o: &Out,
                     tried: &mut u64,
                     codes: &mut std::collections::BTreeMap<String, u64>,
                     input: &[u8]| {
        *tried += 1;
        *codes
            .entry(format!(
                "{}:{}",
                what.split(' ').next().unwrap_or(""),
                o.code
            ))
            .or_default() += 1;
        if let Some(sign) = support::panic_signs(o.code, &o.stdout, &o.stderr) {
            failures.push(format!(
                "{what}: {sign}\ninput ({} bytes): {:?}\nstderr: {}",
                input.len(),
                String::from_utf8_lossy(&input[..input.len().min(400)]),
                o.stderr
            ));
        }
    };

    // 1. Records.
    let (rec_path, rec_good) = originals
        .iter()
        .find(|(p, _)| p.to_string_lossy().contains(&ids[0]))
        .cloned()
        .unwrap_or_else(|| originals[0].clone());
    let good_text = String::from_utf8_lossy(&rec_good).into_owned();
    let mut inputs: Vec<Vec<u8>> = record_variants(&good_text)
        .into_iter()
        .map(String::into_bytes)
        .collect();
    for _ in 0..iters {
        inputs.push(rng.mutate(&rec_good));
    }
    let restore_every = (inputs.len() / 12).max(1);
    for (i, body) in inputs.iter().enumerate() {
        fs::write(&rec_path, body).unwrap();
        let o = job.run(&["snapshots", "--json"]);
        check(
            format!("snapshots [record input {i}]"),
            &o,
            &mut tried,
            &mut codes,
            body,
        );
        if i % restore_every == 0 {
            let to = job.root.join(format!("fz-restore-{i}"));
            let o = job.run(&[
                "restore",
                "--to",
                to.to_str().unwrap(),
                "--snapshot",
                &ids[0],
            ]);
            check(
                format!("restore --snapshot [record input {i}]"),
                &o,
                &mut tried,
                &mut codes,
                body,
            );
            let _ = fs::remove_dir_all(&to);
            let o = job.run(&["prune", "--dry-run"]);
            check(
                format!("prune --dry-run [record input {i}]"),
                &o,
                &mut tried,
                &mut codes,
                body,
            );
        }
    }
    for (p, b) in &originals {
        fs::write(p, b).unwrap();
    }
    // A record under a name that is not a snapshot id, and a directory named like a record.
    fs::write(records.join("not-an-id.rec"), b"x").unwrap();
    fs::create_dir_all(records.join("20990101T000000Z.rec")).unwrap();
    let o = job.run(&["snapshots"]);
    check(
        "snapshots [odd names in records/]".into(),
        &o,
        &mut tried,
        &mut codes,
        b"",
    );
    let _ = fs::remove_file(records.join("not-an-id.rec"));
    let _ = fs::remove_dir_all(records.join("20990101T000000Z.rec"));

    // 2. State files.
    for (k, (path, orig)) in state_orig.iter().enumerate() {
        let base = orig.clone().unwrap_or_else(|| b"{}".to_vec());
        let n = iters / 4 + 6;
        for i in 0..n {
            let body = match i {
                0 => Vec::new(),
                1 => b"null".to_vec(),
                2 => b"[]".to_vec(),
                3 => b"{\"stages\": 5}".to_vec(),
                4 => b"{\"stages\": {\"backup\": {\"outcome\": 5, \"duration_ms\": \"x\", \"error\": []}}}".to_vec(),
                5 => vec![0xff; 100],
                _ => rng.mutate(&base),
            };
            fs::write(path, &body).unwrap();
            let o = job.run(&["status"]);
            check(
                format!("status [{} input {i}]", state_files[k]),
                &o,
                &mut tried,
                &mut codes,
                &body,
            );
            let o = job.run(&["status", "--json"]);
            check(
                format!("status --json [{} input {i}]", state_files[k]),
                &o,
                &mut tried,
                &mut codes,
                &body,
            );
            if i % 8 == 0 {
                let o = job.run(&["verify"]);
                check(
                    format!("verify [{} input {i}]", state_files[k]),
                    &o,
                    &mut tried,
                    &mut codes,
                    &body,
                );
                fs::write(path, &body).unwrap();
                let o = job.run(&["backup"]);
                check(
                    format!("backup [{} input {i}]", state_files[k]),
                    &o,
                    &mut tried,
                    &mut codes,
                    &body,
                );
            }
        }
        match orig {
            Some(b) => fs::write(path, b).unwrap(),
            None => {
                let _ = fs::remove_file(path);
            }
        }
    }
    sc.inputs = tried;
    sc.note(format!("{tried} runs; exit codes by command: {codes:?}"));
    assert!(
        failures.is_empty(),
        "{} fuzz failures:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    job.assert_clean();
    sc.pass();
}
