//! Flows shared by several tests: [`Job::init_and_backup`],
//! [`Job::backup_ok`], [`Job::verify_ok`], [`Job::verify_mismatch`],
//! [`Job::restore_and_compare`], [`assert_verify_lists`].

use super::*;
use std::fs;
use std::path::PathBuf;

/// Sorted strings of `v` (a JSON array of strings).
pub fn sorted_list(v: &Value) -> Vec<String> {
    let mut l = str_list(v);
    l.sort();
    l
}

impl Job {
    /// `init` then `backup --json`, both must exit 0 with outcome ok; returns
    /// backup's stats.
    pub fn init_and_backup(&self) -> Value {
        self.ok(&["init"]);
        self.backup_ok()
    }

    /// `backup --json` must exit 0 with outcome ok, a snapshot id, and the same
    /// result in status.json; returns the stats.
    pub fn backup_ok(&self) -> Value {
        let (o, v) = self.run_json(&["backup"]);
        o.expect_code(0, "backup");
        assert_eq!(
            json_outcome(&v, "backup"),
            "ok",
            "backup --json outcome: {v}"
        );
        let stats = json_stats(&v, "backup").clone();
        let snap = stats["snapshot"]
            .as_str()
            .unwrap_or_else(|| panic!("backup stats without snapshot: {stats}"));
        assert!(
            is_snapshot_id(snap),
            "snapshot id {snap:?} is not YYYYMMDDTHHMMSSZ"
        );
        let st = self.stage("backup");
        assert_eq!(st["outcome"], "ok", "status.json backup: {st}");
        assert_eq!(
            st["stats"]["snapshot"], stats["snapshot"],
            "status.json and --json disagree: {st}"
        );
        stats
    }

    /// `verify [--deep] --json` must exit 0, outcome ok, and (for the fast
    /// verify) empty `missing`/`extra`/`changed`; status.json agrees.
    pub fn verify_ok(&self, deep: bool) {
        let args: &[&str] = if deep {
            &["verify", "--deep"]
        } else {
            &["verify"]
        };
        let stage = if deep { "deep_verify" } else { "verify" };
        let (o, v) = self.run_json(args);
        o.expect_code(0, &args.join(" "));
        assert_eq!(
            json_outcome(&v, stage),
            "ok",
            "{} --json: {v}",
            args.join(" ")
        );
        let st = self.stage(stage);
        assert_eq!(st["outcome"], "ok", "status.json {stage}: {st}");
        if !deep {
            let stats = json_stats(&v, stage);
            for k in ["missing", "extra", "changed"] {
                assert_eq!(
                    str_list(&stats[k]),
                    Vec::<String>::new(),
                    "verify ok but {k} not empty: {v}"
                );
            }
        }
    }

    /// `verify --json` must exit 3 with outcome mismatch; status.json must hold
    /// the same lists. Returns the stats.
    pub fn verify_mismatch(&self) -> Value {
        let (o, v) = self.run_json(&["verify"]);
        o.expect_code(3, "verify after damage");
        assert_eq!(json_outcome(&v, "verify"), "mismatch", "verify --json: {v}");
        let stats = json_stats(&v, "verify").clone();
        let st = self.stage("verify");
        assert_eq!(st["outcome"], "mismatch", "status.json verify: {st}");
        for k in ["missing", "extra", "changed"] {
            assert_eq!(
                sorted_list(&st["stats"][k]),
                sorted_list(&stats[k]),
                "status.json vs --json {k}"
            );
        }
        stats
    }

    /// `restore --to <root>/<dir>` into a fresh empty directory must exit 0,
    /// outcome ok, and give a tree equal to the source. Returns the directory.
    pub fn restore_and_compare(&self, dir: &str) -> PathBuf {
        self.restore_and_compare_with(dir, &[]).0
    }

    /// As `restore_and_compare`, with `flags` before the command (such
    /// as `--verbose`); also returns what it said.
    pub fn restore_and_compare_with(&self, dir: &str, flags: &[&str]) -> (PathBuf, Out) {
        let to = self.root.join(dir);
        fs::create_dir_all(&to).unwrap();
        let mut args = flags.to_vec();
        args.extend(["restore", "--to", to.to_str().unwrap()]);
        let (o, v) = self.run_json(&args);
        o.expect_code(0, "restore");
        assert_eq!(json_outcome(&v, "restore"), "ok", "restore --json: {v}");
        assert_eq!(self.stage("restore")["outcome"], "ok");
        assert_trees_equal(&self.source, &to);
        (to, o)
    }

    /// Plain `gocryptfs <target>/files DIR` (what a user without ciphersync
    /// does) must mount and show a tree equal to the source.
    pub fn manual_restore_matches_source(&self) {
        let m = ManualMount::new(
            &self.files_dir(),
            &self.password_file,
            &self.root.join("manual"),
        );
        assert_trees_equal(&self.source, &m.mnt);
    }
}

/// Asserts verify's three lists of plaintext paths: `missing`, `extra`,
/// `changed`, each exactly as given.
pub fn assert_verify_lists(stats: &Value, missing: &[&str], extra: &[&str], changed: &[&str]) {
    for (list, expected) in [("missing", missing), ("extra", extra), ("changed", changed)] {
        assert_eq!(
            str_list(&stats[list]),
            expected.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "verify {list}: {stats}"
        );
    }
}
