//! Excludes that cannot break the backup (issue 19, item 2).
//!
//! Deny-lists (anchored, unanchored, directories), with long names (over
//! 255 bytes once encrypted) inside and outside the excluded set: the
//! restored tree is the source minus exactly the excluded paths.
//!
//! Allow-lists (`/*` then `!/docs`) and other patterns that can match an
//! encrypted name: with a gocryptfs that has bug 686 (up to 2.6.1) they
//! are refused by check-config and by backup, in one line naming the field
//! and the bug; with a fixed gocryptfs the restore is exactly the allowed
//! part. Which branch runs depends on the installed gocryptfs; each asserts.

mod common;
use common::*;

use std::fs;
use std::path::Path;
use std::process::Command;

/// A 200-byte name: its encrypted form is over 255 bytes (a long name).
fn long(stem: &str) -> String {
    format!("{stem}-{}", "L".repeat(200 - stem.len() - 1))
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// The tree every case starts from.
fn tree(root: &Path) {
    for rel in [
        "a.tmp".to_string(),
        "keep.txt".to_string(),
        "deep/x/y.tmp".to_string(),
        "deep/x/z.txt".to_string(),
        "cache/c1".to_string(),
        "deep/cache/c2".to_string(),
        "build/out.o".to_string(),
        "sub/build/kept.o".to_string(),
        "docs/d.txt".to_string(),
        "docs/private/p.txt".to_string(),
        format!("docs/{}", long("docs-long")),
        format!("docs/{}/inside.txt", long("docs-longdir")),
        format!("deep/x/{}.tmp", long("excluded")),
        format!("cache/{}", long("in-cache")),
        format!("build/{}", long("in-build")),
        format!("other/{}", long("other")),
        long("top"),
    ] {
        write(root, &rel, &format!("content of {rel}\n"));
    }
    fs::create_dir_all(root.join("emptydir")).unwrap();
}

/// The gocryptfs build on PATH (its release, and whether the fix of issue
/// 686 is patched in), when it prints one.
fn gocryptfs_build() -> Option<ciphersync::about::GocryptfsBuild> {
    let out = Command::new("gocryptfs").arg("-version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ciphersync::about::gocryptfs_build(&text)
}

/// Backs up with `exclude`, restores, and compares with the source
/// without `excluded` (paths relative to the source).
fn backup_restore_minus(tag: &str, exclude: &[&str], excluded: &[String]) {
    let job = Job::local(tag)
        .gocryptfs_config_in_state_dir()
        .set("exclude", json!(exclude))
        .build();
    tree(&job.source);
    job.ok(&["check-config", job.config_file.to_str().unwrap()]);
    job.ok(&["init"]);
    let (o, v) = job.run_json(&["backup"]);
    o.expect_code(0, &format!("backup with {exclude:?}"));
    assert_eq!(json_outcome(&v, "backup"), "ok", "{v}");
    let expected = job.root.join("expected");
    copy_tree(&job.source, &expected);
    for rel in excluded {
        let p = expected.join(rel);
        assert!(
            fs::symlink_metadata(&p).is_ok(),
            "the test names {rel}, which the tree lacks"
        );
        if p.is_dir() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
    let to = job.root.join("restored");
    fs::create_dir_all(&to).unwrap();
    job.ok(&["restore", "--to", to.to_str().unwrap()]);
    assert_trees_equal(&expected, &to);
    // And what verify --deep compares agrees.
    job.verify_ok(true);
    job.assert_clean();
}

#[test]
fn deny_lists_leave_out_exactly_what_they_name_long_names_included() {
    if !require_tools("deny_lists", LOCAL_TOOLS) {
        return;
    }
    // Unanchored: every *.tmp and what every directory named cache holds,
    // at any depth. gocryptfs reads `cache/` as go-gitignore does, as
    // "below a cache/": the directory itself stays, empty.
    backup_restore_minus(
        "excl-unanchored",
        &["*.tmp", "cache/"],
        &[
            "a.tmp".into(),
            "deep/x/y.tmp".into(),
            format!("deep/x/{}.tmp", long("excluded")),
            "cache/c1".into(),
            format!("cache/{}", long("in-cache")),
            "deep/cache/c2".into(),
        ],
    );
    // Without the slash, the directory goes too.
    backup_restore_minus(
        "excl-dir",
        &["cache"],
        &["cache".into(), "deep/cache".into()],
    );
    // Anchored: the top-level build only (sub/build stays), one
    // subdirectory, one long name by its full path.
    backup_restore_minus(
        "excl-anchored",
        &[
            "/build",
            "/docs/private",
            &format!("/other/{}", long("other")),
        ],
        &[
            "build".into(),
            "docs/private".into(),
            format!("other/{}", long("other")),
        ],
    );
}

/// Allow-lists and a deny pattern that matches encrypted names.
#[test]
fn patterns_gocryptfs_mishandles_are_refused_or_work() {
    if !require_tools("allow_lists", LOCAL_TOOLS) {
        return;
    }
    let buggy = gocryptfs_build().is_some_and(ciphersync::about::has_exclude_bug_686);
    let everything_but_docs: Vec<String> = [
        "a.tmp", "keep.txt", "deep", "cache", "build", "sub", "emptydir", "other",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([long("top")])
    .collect();
    for (tag, exclude) in [
        ("allow-anchored", vec!["/*", "!/docs"]),
        ("allow-unanchored", vec!["*", "!docs", "!docs/**"]),
    ] {
        if !buggy {
            backup_restore_minus(tag, &exclude, &everything_but_docs);
            continue;
        }
        let job = Job::local(tag)
            .gocryptfs_config_in_state_dir()
            .set("exclude", json!(exclude))
            .build();
        tree(&job.source);
        let o = job.run(&["check-config", job.config_file.to_str().unwrap()]);
        o.expect_code(2, &format!("check-config with {exclude:?}"));
        let line = o.stderr.trim();
        assert_eq!(line.lines().count(), 1, "not one line: {line}");
        for word in [
            "field `exclude[0]`",
            "gocryptfs issue 686",
            "fixed after 2.6.1",
        ] {
            assert!(line.contains(word), "{word:?} missing: {line}");
        }
        job.ok(&["init"]);
        let o = job.run(&["backup"]);
        o.expect_code(2, &format!("backup with {exclude:?}"));
        assert!(
            o.stderr.contains("gocryptfs issue 686"),
            "backup: {}",
            o.stderr
        );
        assert!(
            !job.target_path.join("files").exists()
                || fs::read_dir(job.target_path.join("files"))
                    .unwrap()
                    .next()
                    .is_none(),
            "a refused backup wrote files/"
        );
        job.assert_clean();
    }
    // A deny pattern that can match an encrypted name (`-` is a base64
    // character): refused on a buggy gocryptfs, exact on a fixed one.
    if buggy {
        let job = Job::local("deny-dash")
            .gocryptfs_config_in_state_dir()
            .set("exclude", json!(["*.tmp", "*-*"]))
            .build();
        let o = job.run(&["check-config", job.config_file.to_str().unwrap()]);
        o.expect_code(2, "check-config with *-*");
        assert!(
            o.stderr.contains("field `exclude[1]` \"*-*\""),
            "{}",
            o.stderr
        );
    }
}
