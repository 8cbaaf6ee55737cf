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
//!
//! The second test runs the "A first job" lines that create `target.path`
//! on a full-shell and on an SFTP-only account (ssh `mkdir -p`, an `sftp -b`
//! batch) the same way, one line at a time.
//!
//! The third parses the storage-server section's fleet flake and, with
//! NIXPKGS_LIB (as nix/eval/check.sh takes it), evaluates its colmena nodes
//! with the two modules and nix/eval's stubs.

mod common;

use common::*;
use std::fs;
use std::process::Command;

/// `target.<key>` of the README's job example, as text.
fn example_target(example: &Value, key: &str) -> String {
    match &example["target"][key] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("README job example: target.{key} is {other}"),
    }
}

/// The README's values of the job example's login (key, known_hosts,
/// user@host, ssh and sftp port flags) and this job's.
fn login_substitutions(example: &Value, job: &Job) -> Vec<(String, String)> {
    let sshd = job.sshd.as_ref().unwrap();
    let ex = |k: &str| example_target(example, k);
    vec![
        (ex("identity_file"), sshd.client_key.display().to_string()),
        (
            ex("known_hosts_file"),
            sshd.known_hosts.display().to_string(),
        ),
        (
            format!("{}@{}", ex("user"), ex("host")),
            "root@127.0.0.1".to_string(),
        ),
        (format!("-p {}", ex("port")), format!("-p {}", sshd.port)),
        (format!("-P {}", ex("port")), format!("-P {}", sshd.port)),
    ]
}

fn run_sh(script: &str) -> Out {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script);
    run_cmd(c)
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
    for field in ["identity_file", "known_hosts_file"] {
        assert!(
            job.config["target"][field].is_string(),
            "the harness job should name target.{field}: {}",
            job.config
        );
    }

    let remote_mnt = job.root.join("by-hand-remote");
    let plain_mnt = job.root.join("by-hand-plain");
    let restored = job.root.join("by-hand-restored");
    let mut subst = login_substitutions(&example, &job);
    // `-P PORT` is sftp's; the restore lines use sshfs's `-p`.
    subst.retain(|(from, _)| !from.starts_with("-P "));
    subst.extend([
        (
            example_target(&example, "path"),
            job.target_path.display().to_string(),
        ),
        ("/srv/docs-restored".into(), restored.display().to_string()),
        ("/mnt/remote".into(), remote_mnt.display().to_string()),
        ("/mnt/plain".into(), plain_mnt.display().to_string()),
    ]);
    let (script, absent) = substitute(&snippet, &subst);
    assert!(
        absent.is_empty(),
        "README \"Restoring by hand\": the lines no longer use {absent:?} from the job file \
         example (or the example mount points), so they are not shown for that job:\n{snippet}"
    );

    let script = format!(
        "set -e\nexec <{}   # the password, as typed at the terminal\n{script}\n",
        job.password_file.display()
    );
    let out = run_sh(&script);
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

#[test]
fn readme_target_directory_lines_create_target_path() {
    let test = "readme_target_directory_lines_create_target_path";
    if !require_tools(test, &["ssh", "sftp", "ssh-keygen", "/usr/sbin/sshd", "sh"]) {
        return;
    }
    let readme = fs::read_to_string(README).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let example = readme_job_example(&lines);
    let section = lines
        .iter()
        .position(|l| l.starts_with('#') && l.contains("A first job"))
        .expect("README.md: no \"A first job\" section");
    // The block that creates target.path: the first ```sh block of the
    // section with an sftp batch in it.
    let mut from = section;
    let block = loop {
        let (start, block) = fenced_block(&lines, from, "```sh")
            .expect("README.md: no ```sh block with `sftp -b` in \"A first job\"");
        if block.iter().any(|l| l.contains("sftp -b")) {
            break block;
        }
        from = start + 1;
    };
    let job = Job::sftp("readme-target-dir").build();
    let path = example_target(&example, "path");
    let parent = std::path::Path::new(&path)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let host = example_target(&example, "host");
    let mut ran = Vec::new();
    for (n, line) in block
        .iter()
        .filter(|l| !l.starts_with('#') && l.contains(&host))
        .enumerate()
    {
        // Each line gets a target path of its own, below the server's dir.
        let base = job.target_path.join(format!("line{n}"));
        let mut subst = login_substitutions(&example, &job);
        subst.push((path.clone(), base.join("docs").display().to_string()));
        subst.push((parent.clone(), base.display().to_string()));
        let (script, _) = substitute(line, &subst);
        for needed in [&subst[0].1, &subst[1].1] {
            assert!(
                script.contains(needed.as_str()),
                "README \"A first job\": `{line}` does not use the job's identity_file and \
                 known_hosts_file"
            );
        }
        let out = run_sh(&format!("set -e\n{script}\n"));
        out.expect_code(0, &format!("README line `{line}` as\n{script}"));
        assert!(
            base.join("docs").is_dir(),
            "README line `{line}` did not create target.path ({})\n{}",
            base.join("docs").display(),
            out.dump()
        );
        ran.push(line.clone());
    }
    assert!(
        ran.len() >= 2,
        "README \"A first job\": expected at least two lines creating target.path, ran {ran:?}"
    );
    assert!(
        ran.iter().any(|l| l.contains("sftp -b")),
        "README \"A first job\": expected an SFTP-only (sftp -b) line creating target.path, ran {ran:?}"
    );
    job.assert_clean();
}

/// The colmena nodes of the README's fleet flake, evaluated with the
/// repository's modules in place of the flake input and nix/eval's stubs:
/// per node its deployment target, sshd lines and jobs' target paths.
const FLEET_EVAL: &str = r#"{nixpkgsLib, repo}: let
  lib = import nixpkgsLib;
  pkgs = import (repo + "/nix/eval/stubs/pkgs.nix") {inherit lib;};
  outputs = (import ./flake.nix).outputs {
    nixpkgs = throw "meta.nixpkgs is not evaluated here";
    ciphersync.nixosModules = {
      default = repo + "/nix/module.nix";
      server = repo + "/nix/server-module.nix";
    };
  };
  deployment = {lib, ...}: {options.deployment = lib.mkOption {type = lib.types.attrs;};};
  node = name: module: let
    config = (lib.evalModules {
      modules = [
        (repo + "/nix/eval/stubs/nixos.nix")
        (repo + "/nix/eval/stubs/nixos-server.nix")
        deployment
        module
        {_module.args.pkgs = pkgs;}
      ];
    }).config;
    failed = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  in
    if failed != []
    then throw "${name}: ${lib.concatStringsSep "; " failed}"
    else {
      target = config.deployment.targetHost;
      sshd = config.services.openssh.extraConfig or "";
      jobs = lib.mapAttrs (_: j: {inherit (j.target.sftp) host user path;}) (config.services.ciphersync.jobs or {});
    };
in
  lib.mapAttrs node (removeAttrs outputs.colmena ["meta"])
"#;

#[test]
fn readme_fleet_flake_parses_and_deploys_the_server_and_its_clients() {
    let test = "readme_fleet_flake";
    if !require_tools(test, &["nix-instantiate"]) {
        return;
    }
    let readme = fs::read_to_string(README).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("**A fleet.**"))
        .expect("README.md: no **A fleet.** paragraph");
    let (_, block) = fenced_block(&lines, at, "```nix").expect("the fleet's ```nix block");
    let tmp = TempDir::new("readme-fleet");
    let dir = tmp.path();
    fs::write(dir.join("flake.nix"), block.join("\n")).unwrap();
    let mut c = Command::new("nix-instantiate");
    c.arg("--parse").arg(dir.join("flake.nix"));
    run_cmd(c).expect_code(0, "nix-instantiate --parse of the README's fleet flake");

    let Some(lib) = std::env::var_os("NIXPKGS_LIB") else {
        eprintln!("SKIP {test} evaluation: set NIXPKGS_LIB (see nix/eval/check.sh)");
        return;
    };
    fs::create_dir_all(dir.join("hosts")).unwrap();
    for host in ["backup", "laptop", "desktop"] {
        fs::write(dir.join(format!("hosts/{host}.nix")), "{}\n").unwrap();
    }
    fs::write(dir.join("check.nix"), FLEET_EVAL).unwrap();
    let mut c = Command::new("nix-instantiate");
    c.args(["--eval", "--strict", "--json"])
        .arg(dir.join("check.nix"))
        .arg("--arg")
        .arg("nixpkgsLib")
        .arg(std::path::Path::new(&lib).join("lib"))
        .arg("--arg")
        .arg("repo")
        .arg(env!("CARGO_MANIFEST_DIR"));
    let o = run_cmd(c);
    o.expect_code(0, "evaluating the fleet's colmena nodes");
    let nodes: Value = serde_json::from_str(&o.stdout).unwrap();
    let sshd = nodes["backup"]["sshd"].as_str().unwrap_or_default();
    for client in ["laptop", "desktop"] {
        assert!(
            sshd.contains(&format!("Match User {client}\n"))
                && sshd.contains(&format!("--root /var/lib/ciphersync-server/{client} ")),
            "the server has no account for {client}: {sshd}"
        );
        assert_eq!(
            nodes[client]["jobs"]["home"],
            json!({
                "host": nodes["backup"]["target"],
                "user": client,
                "path": format!("/var/lib/ciphersync-server/{client}"),
            }),
            "{client}'s job does not point at its account: {nodes}"
        );
    }
    assert_eq!(sshd.matches("--quota 500G").count(), 2, "{sshd}");
}
