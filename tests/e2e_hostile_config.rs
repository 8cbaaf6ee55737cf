//! A hostile or careless job file must not reach ssh, sshfs or rsync as
//! something else (issue 13): a line break in a field that ends up in the
//! generated ssh_config would add a line to it (a `ProxyCommand` runs any
//! command), `%` there is a token ssh expands, and rsync splits its `-e`
//! string with its own quoting rules.

mod common;
#[path = "faults/support.rs"]
mod support;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::Scenario;

/// `check-config` on the job's file: exit 2, one line naming `field`.
fn refused_by_check_config(job: &Job, field: &str) -> String {
    let o = run_bin(&["check-config", job.config_file.to_str().unwrap()]);
    o.expect_code(2, &format!("check-config with a bad {field}"));
    let text = o.text();
    let line = text
        .lines()
        .find(|l| l.contains("error"))
        .unwrap_or_else(|| panic!("no error line:\n{}", o.dump()));
    assert!(
        line.contains(&format!("field `{field}`")),
        "the error does not name `{field}`:\n{}",
        o.dump()
    );
    line.to_string()
}

/// Rewrites the job file after changing `job.config`.
fn rewrite(job: &Job) {
    fs::write(
        &job.config_file,
        serde_json::to_string_pretty(&job.config).unwrap(),
    )
    .unwrap();
}

/// Each field that reaches ssh_config gets a line break and a ProxyCommand
/// that would create a marker file. check-config, init and backup refuse the
/// job naming the field, and the command never runs.
#[test]
fn proxycommand_injection_is_refused_and_never_runs() {
    if !require_tools("proxycommand_injection", SFTP_TOOLS) {
        return;
    }
    let mut sc = Scenario::new(
        "hostile",
        "security",
        "ProxyCommand injected through target.user, host, key paths or runtime_dir",
        "check-config, backup and verify exit 2 naming the field; the injected command never runs; ssh_config holds no ProxyCommand",
    );
    let mut job = Job::sftp("hostile-inject").transport("rsync").build();
    make_sample_tree(&job.source);
    let marker = job.root.join("owned");
    let inject = format!("\nProxyCommand touch {}", marker.display());
    let good = job.config.clone();
    // init does not connect; backup and verify do, each with a fresh
    // ssh_config.
    job.ok(&["init"]);
    // Each field's good value with the injection appended.
    let cases = [
        ("target.user", "/target/user"),
        ("target.host", "/target/host"),
        ("target.identity_file", "/target/identity_file"),
        ("target.known_hosts_file", "/target/known_hosts_file"),
        ("runtime_dir", "/runtime_dir"),
    ];
    for (field, pointer) in cases {
        job.config = good.clone();
        let v = job.config.pointer_mut(pointer).unwrap();
        *v = json!(format!("{}{inject}", v.as_str().unwrap()));
        rewrite(&job);
        for cmd in ["backup", "verify"] {
            let o = job.run(&[cmd]);
            assert!(
                !marker.exists(),
                "{cmd}: the ProxyCommand injected through {field} ran"
            );
            o.expect_code(2, &format!("{cmd} with a line break in {field}"));
            assert!(
                o.text().contains(&format!("field `{field}`")),
                "{cmd}: does not name {field}:\n{}",
                o.dump()
            );
        }
        let line = refused_by_check_config(&job, field);
        assert!(
            line.contains("\\nProxyCommand touch"),
            "the bad value is not shown escaped on one line: {line}"
        );
    }
    // The same job without the injection works (the test's setup is sound:
    // the refusals above came from the field, not from something else).
    job.config = good;
    rewrite(&job);
    job.backup_ok();
    assert!(
        !marker.exists(),
        "the injected ProxyCommand ran: {marker:?} exists"
    );
    let ssh_config = fs::read_to_string(job.runtime_dir.join("ssh_config")).unwrap_or_default();
    assert!(
        !ssh_config.contains("ProxyCommand"),
        "a ProxyCommand reached ssh_config:\n{ssh_config}"
    );
    job.assert_clean();
    sc.note("each field refused with exit 2 naming it; marker file never created");
    sc.pass();
}

/// rsync's remote argument would lose a line break in target.path (and the
/// backup would land elsewhere): refused before anything runs.
#[test]
fn newline_in_target_path_is_refused() {
    if !require_tools("newline_in_target_path", SFTP_TOOLS) {
        return;
    }
    let mut sc = Scenario::new(
        "hostile",
        "security",
        "a line break in target.path (rsync and sshfs transports)",
        "every command exits 2 naming target.path; nothing is written to the server; no state dir",
    );
    for transport in ["rsync", "sshfs"] {
        let mut job = Job::sftp(&format!("hostile-nl-{transport}"))
            .transport(transport)
            .build();
        make_sample_tree(&job.source);
        let remote = job.target_path.clone();
        job.config["target"]["path"] = json!(format!("{}\nelsewhere", remote.display()));
        rewrite(&job);
        let line = refused_by_check_config(&job, "target.path");
        assert!(
            line.contains(&format!(
                "must not contain a line break or other control character, found \"{}\\nelsewhere\"",
                remote.display()
            )),
            "{line}"
        );
        for cmd in ["init", "backup"] {
            job.run(&[cmd])
                .expect_code(2, &format!("{cmd} with a line break in target.path"));
        }
        assert_eq!(
            fs::read_dir(&remote).unwrap().count(),
            0,
            "something was written to the server"
        );
        assert!(
            !job.state_dir.exists(),
            "a refused job created its state dir"
        );
        job.assert_clean();
    }
    sc.note("refused for both transports; server dir empty");
    sc.pass();
}

/// A runtime dir, identity file and known_hosts file whose paths hold `%`,
/// `'`, a space and `#` work end to end with both transports: ssh would
/// expand `%d` in ControlPath (to the home directory) and the shell-style
/// `'\''` breaks rsync's -e splitting.
#[test]
fn percent_quote_and_space_in_paths_work_end_to_end() {
    if !require_tools("percent_quote_paths", SFTP_TOOLS) {
        return;
    }
    let mut sc = Scenario::new(
        "hostile",
        "security",
        "% ' space and # in runtime_dir and key paths",
        "init, backup and verify work with both transports; ssh_config escapes % as %%; rsync -e is quoted for rsync's own splitter",
    );
    for transport in ["rsync", "sshfs"] {
        let mut job = Job::sftp(&format!("hostile-pct-{transport}"))
            .transport(transport)
            .build();
        make_sample_tree(&job.source);
        let sshd = job.sshd.as_ref().unwrap();
        let keys = job.root.join("keys %h #1");
        fs::create_dir_all(&keys).unwrap();
        let identity = copy_private(&sshd.client_key, &keys.join("id %d"));
        let known_hosts = copy_private(&sshd.known_hosts, &keys.join("known'hosts %%"));
        let runtime = job.root.join("p%d it's");
        job.config["runtime_dir"] = json!(runtime);
        job.config["target"]["identity_file"] = json!(identity);
        job.config["target"]["known_hosts_file"] = json!(known_hosts);
        job.runtime_dir = runtime.clone();
        rewrite(&job);
        run_bin(&["check-config", job.config_file.to_str().unwrap()])
            .expect_code(0, "check-config with % ' and space in paths");

        job.init_and_backup();
        job.verify_ok(false);

        let config = fs::read_to_string(runtime.join("ssh_config")).unwrap();
        for line in [
            format!(
                "  ControlPath \"{}/p%%d it's/ssh.sock\"",
                job.root.display()
            ),
            format!(
                "  IdentityFile \"{}/keys %%h #1/id %%d\"",
                job.root.display()
            ),
            format!(
                "  UserKnownHostsFile \"{}/keys %%h #1/known'hosts %%%%\"",
                job.root.display()
            ),
        ] {
            assert!(
                config.lines().any(|l| l == line),
                "ssh_config lacks {line:?}:\n{config}"
            );
        }
        // Nothing was created where ssh's expansion of `%d` would point.
        assert!(
            !job.root.join("p").exists(),
            "a path was created from an expanded %d"
        );
        job.assert_clean();
    }
    sc.note("both transports ok; ssh_config lines escaped; nothing created from an expanded %d");
    sc.pass();
}

fn copy_private(from: &Path, to: &Path) -> PathBuf {
    fs::copy(from, to).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(0o600)).unwrap();
    to.to_path_buf()
}
