//! The ciphersync command line: parses arguments, runs a stage of the
//! library, prints the result and turns it into the exit code.

mod cli;

use ciphersync::{
    about, browse, config, crypt, error, history, human, interrupt, keys, log, metrics, progress,
    restore, rsync, run, snapshots, status, sync, target, verify, wait,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use serde_json::{Value, json};

use cli::{Cli, Command, KeyAction};
use config::Job;
use error::{Error, Result};
use status::{Outcome, Stage, StageResult};

fn main() -> ExitCode {
    let cli = Cli::parse();
    log::set_debug(cli.verbose || std::env::var("CIPHERSYNC_LOG").is_ok_and(|v| v == "debug"));
    interrupt::install();
    raise_open_file_limit();
    let code = match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            if cli.json {
                println!(
                    "{}",
                    json!({ "error": { "kind": e.kind.as_str(), "message": e.message } })
                );
            }
            eprintln!("ciphersync: error: {e}");
            e.kind.exit_code()
        }
    };
    ExitCode::from(code as u8)
}

/// Lets this process open as many files as it may (systemd starts a
/// service with a soft limit of 1,024 and a far higher hard one): an SFTP
/// fetch writes each of the files it keeps open on the server
/// (target/sftp.rs). Capped, as the tools started inherit it.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const ENOUGH: u64 = 65_536;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let wanted = hard.min(ENOUGH);
        if soft < wanted {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, wanted, hard);
        }
    }
}

fn dispatch(cli: &Cli) -> Result<i32> {
    if cli.version {
        println!("ciphersync {}", env!("CARGO_PKG_VERSION"));
        about::tool_lines().iter().for_each(|l| println!("{l}"));
        about::warn_gocryptfs_bugs(None);
        return Ok(0);
    }
    let Some(command) = &cli.command else {
        return Err(Error::usage("name a command (see `ciphersync --help`)"));
    };
    let progress = progress::Progress::new(progress::Mode::for_run(cli.quiet, cli.json));
    match command {
        Command::CheckConfig { files } => check_config(files, cli.json),
        Command::Init(arg) => {
            let job = load_job(cli, arg.job.as_deref())?;
            about::warn_gocryptfs_bugs(Some(!job.exclude.is_empty()));
            init(&job, cli.json)
        }
        Command::Backup {
            job,
            max_delete,
            wait_for_target,
        } => {
            let job = load_job(cli, job.job.as_deref())?;
            about::warn_gocryptfs_bugs(Some(!job.exclude.is_empty()));
            if let Some(kib) = job.bwlimit {
                rsync::limit_bandwidth(kib, backup_rsync_workers(&job));
            }
            if let Some(minutes) = wait_for_target {
                wait::wait_for_target(
                    &job,
                    std::time::Duration::from_secs(u64::from(*minutes) * 60),
                )?;
            }
            let options = sync::BackupOptions {
                max_delete_percent: *max_delete,
            };
            let result = run::stage(&job, Stage::Backup, |ctx| {
                sync::backup(ctx, &options, &progress)
            })?;
            write_metrics(cli, &job, Stage::Backup, &result);
            Ok(report(cli, &job, Stage::Backup, &result))
        }
        Command::Verify { job, deep, sample } => {
            let job = load_job(cli, job.job.as_deref())?;
            let (stage, result) = if *deep {
                (
                    Stage::DeepVerify,
                    run::stage(&job, Stage::DeepVerify, |ctx| {
                        verify::deep_verify(ctx, &progress)
                    })?,
                )
            } else {
                (
                    Stage::Verify,
                    run::stage(&job, Stage::Verify, |ctx| {
                        verify::verify(ctx, *sample, &progress)
                    })?,
                )
            };
            write_metrics(cli, &job, stage, &result);
            Ok(report(cli, &job, stage, &result))
        }
        Command::Restore {
            to,
            snapshot,
            keep_setuid,
            owners,
            no_owners,
            args,
        } => {
            let (job_name, paths) = match cli.config {
                Some(_) => (None, args.clone()),
                None => (
                    args.first().map(String::as_str),
                    args.iter().skip(1).cloned().collect(),
                ),
            };
            let job = load_job(cli, job_name)?;
            let request = restore::RestoreRequest {
                to: to.clone(),
                paths,
                snapshot: snapshot.clone(),
                keep_setuid: *keep_setuid,
                owners: *owners,
                no_owners: *no_owners,
            };
            // Refuse a bad --to before taking the lock or touching status.
            restore::check_request(&job, &request)?;
            let result = run::stage(&job, Stage::Restore, |ctx| {
                restore::restore(ctx, &request, &progress)
            })?;
            write_metrics(cli, &job, Stage::Restore, &result);
            Ok(report(cli, &job, Stage::Restore, &result))
        }
        Command::Snapshots(arg) => list_snapshots(cli, &load_job(cli, arg.job.as_deref())?),
        Command::Prune { job, dry_run } => {
            let job = load_job(cli, job.job.as_deref())?;
            let result = run::stage(&job, Stage::Prune, |ctx| prune(ctx, *dry_run))?;
            write_metrics(cli, &job, Stage::Prune, &result);
            Ok(report(cli, &job, Stage::Prune, &result))
        }
        Command::Status { job } => show_status(cli, job.as_deref()),
        Command::Log { args } => {
            let (job, rest) = job_and_args(cli, args, 1, "log JOB PATH")?;
            let ctx = run::enter(&job)?;
            let mut doc = history::log(&ctx, &rest[0])?;
            drop(ctx);
            doc["restore"] = json!(restore_command(cli, &job, "ID", &doc["path"]));
            print_doc(cli, &doc, human::log_lines);
            Ok(0)
        }
        Command::Diff { args } => {
            let (job, rest) = job_and_args(cli, args, 2, "diff JOB OLDER NEWER")?;
            let ctx = run::enter(&job)?;
            let doc = history::diff(&ctx, &rest[0], &rest[1])?;
            drop(ctx);
            print_doc(cli, &doc, human::diff_lines);
            Ok(0)
        }
        Command::Mount {
            snapshot,
            background,
            args,
        } => {
            let (job, rest) = job_and_args(cli, args, 1, "mount JOB DIR")?;
            let request = browse::Request {
                dir: PathBuf::from(&rest[0]),
                snapshot: snapshot.clone(),
                background: *background,
            };
            let doc = browse::mount(&job, &request)?;
            print_doc(cli, &doc, human::mount_lines);
            Ok(0)
        }
        Command::Umount { args } => {
            let (name, dir) = match (&cli.config, args.as_slice()) {
                (Some(_), [dir]) => (None, Some(dir)),
                (Some(_), []) => (None, None),
                (None, [job]) => (Some(job.as_str()), None),
                (None, [job, dir]) => (Some(job.as_str()), Some(dir)),
                _ => {
                    return Err(Error::usage(
                        "usage: ciphersync umount JOB [DIR] (or -c FILE umount [DIR])",
                    ));
                }
            };
            let job = load_job(cli, name)?;
            let doc = browse::umount(&job, dir.map(Path::new))?;
            print_doc(cli, &doc, human::umount_lines);
            Ok(0)
        }
        Command::Key {
            action: KeyAction::Export(arg),
        } => {
            let job = load_job(cli, arg.job.as_deref())?;
            let doc = keys::export(&job)?;
            eprintln!("{}", human::key_export_warning(&job.name));
            print_doc(cli, &doc, human::key_export_lines);
            Ok(0)
        }
        Command::Key {
            action: KeyAction::Check { job, from },
        } => {
            let job = load_job(cli, job.job.as_deref())?;
            let key = keys::read_key(from.as_deref())?;
            let ctx = run::enter(&job)?;
            let doc = keys::check(&ctx, &key)?;
            drop(ctx);
            print_doc(cli, &doc, human::key_check_lines);
            Ok(0)
        }
        Command::Serve(args) => ciphersync::serve::main(args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command, "ciphersync", &mut script);
            write_stdout(&script, "the completion script")
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .map_err(|e| Error::io("rendering the man page", e))?;
            write_stdout(&page, "the man page")
        }
    }
}

fn write_stdout(bytes: &[u8], what: &str) -> Result<i32> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|_| out.flush())
        .map_err(|e| Error::io(format!("writing {what} to stdout"), e))?;
    Ok(0)
}

/// The job and the `n` arguments after it: with -c FILE all arguments are
/// the command's, else the first names the job.
fn job_and_args(cli: &Cli, args: &[String], n: usize, usage: &str) -> Result<(Job, Vec<String>)> {
    let (name, rest) = match cli.config {
        Some(_) => (None, args.to_vec()),
        None => (
            args.first().map(String::as_str),
            args.iter().skip(1).cloned().collect(),
        ),
    };
    if rest.len() != n {
        return Err(Error::usage(format!(
            "usage: ciphersync {usage} (or -c FILE without JOB)"
        )));
    }
    Ok((load_job(cli, name)?, rest))
}

/// The restore command line that gets version `id` of `path` back, as the
/// job was named on this command line.
fn restore_command(cli: &Cli, job: &Job, id: &str, path: &Value) -> String {
    let path = sync_quote(path.as_str().unwrap_or(""));
    match &cli.config {
        Some(file) => format!(
            "ciphersync -c {} restore --to DIR --snapshot {id} {path}",
            sync_quote(&file.to_string_lossy())
        ),
        None => format!(
            "ciphersync restore {} --to DIR --snapshot {id} {path}",
            job.name
        ),
    }
}

fn sync_quote(word: &str) -> String {
    ciphersync::exec::shell_quote(word)
}

fn print_doc(cli: &Cli, doc: &Value, lines: fn(&Value) -> Vec<String>) {
    if cli.json {
        println!("{doc}");
    } else {
        lines(doc).iter().for_each(|line| println!("{line}"));
    }
}

/// `--metrics-file`: the job's metrics after a stage, with the snapshots
/// counted again after a backup or prune. A failure to write them is a
/// warning: the backup itself is not worse for it (and the alert on the
/// last success notices a file that stops changing).
fn write_metrics(cli: &Cli, job: &Job, stage: Stage, result: &StageResult) {
    let Some(file) = &cli.metrics_file else {
        return;
    };
    let kept = match stage {
        Stage::Backup | Stage::Prune
            if matches!(result.outcome, Outcome::Ok | Outcome::Partial) =>
        {
            count_snapshots(job)
                .map_err(|e| log::warn(format!("metrics: cannot count the snapshots: {e}")))
                .ok()
        }
        _ => None,
    };
    if let Err(e) = metrics::write(&job.state_dir, &job.name, file, kept) {
        log::warn(format!("cannot write the metrics: {e}"));
    }
}

fn count_snapshots(job: &Job) -> Result<usize> {
    let ctx = run::enter(job)?;
    let remote = target::open(job, target::Need::Records, &ctx.runtime("remote"))?;
    Ok(snapshots::recorded_ids(&*remote)?.len())
}

/// The config dir: --config-dir, $CIPHERSYNC_CONFIG_DIR, /etc/ciphersync for
/// root, $XDG_CONFIG_HOME/ciphersync (or ~/.config/ciphersync) otherwise.
fn config_dir(cli: &Cli) -> Result<PathBuf> {
    if let Some(dir) = &cli.config_dir {
        return Ok(dir.clone());
    }
    if let Some(dir) = std::env::var_os("CIPHERSYNC_CONFIG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/etc/ciphersync"));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| Path::new(d).is_absolute()) {
        return Ok(PathBuf::from(dir).join("ciphersync"));
    }
    match std::env::var_os("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".config/ciphersync")),
        None => Err(Error::usage(
            "cannot find the config dir: set --config-dir or CIPHERSYNC_CONFIG_DIR",
        )),
    }
}

/// How many backup rsyncs may run side by side: the sshfs workers
/// (split.rs, `workers_for` the connections the budget gives sshfs), else
/// one. Must be the count sync.rs runs, or they would exceed the bound.
fn backup_rsync_workers(job: &Job) -> usize {
    match &job.target {
        config::Target::Sftp(s) if s.transport == config::Transport::Sshfs => {
            ciphersync::split::workers_for(ciphersync::budget::of(s).sshfs)
        }
        _ => 1,
    }
}

/// The job file, with the systemd credentials the unit holds in place of
/// the secret files it names (config::use_credentials).
fn load_job(cli: &Cli, name: Option<&str>) -> Result<Job> {
    let mut job = load_job_file(cli, name)?;
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY");
    config::use_credentials(&mut job, credentials.as_deref().map(Path::new))?;
    Ok(job)
}

fn load_job_file(cli: &Cli, name: Option<&str>) -> Result<Job> {
    match (&cli.config, name) {
        (Some(file), None) => config::load(file),
        (Some(_), Some(name)) => Err(Error::usage(format!(
            "give either -c FILE or the job name {name:?}, not both"
        ))),
        (None, Some(name)) => {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(Error::usage(format!("{name:?} is not a job name")));
            }
            let file = config_dir(cli)?.join(format!("{name}.json"));
            if !file.exists() {
                return Err(Error::usage(format!(
                    "no job {name:?}: {} does not exist",
                    file.display()
                )));
            }
            config::load(&file)
        }
        (None, None) => Err(Error::usage("name a JOB, or give its file with -c FILE")),
    }
}

fn check_config(files: &[PathBuf], as_json: bool) -> Result<i32> {
    let mut failures = Vec::new();
    for file in files {
        match config::load(file).and_then(|job| crypt::check_excludes(&job).map(|()| job)) {
            Ok(job) => {
                if !as_json {
                    println!("{}: ok (job {})", file.display(), job.name);
                }
            }
            Err(e) => {
                eprintln!("ciphersync: error: {e}");
                failures.push(json!({ "file": file, "message": e.message }));
            }
        }
    }
    if as_json {
        println!(
            "{}",
            json!({ "ok": failures.is_empty(), "errors": failures })
        );
    }
    Ok(if failures.is_empty() { 0 } else { 2 })
}

fn init(job: &Job, as_json: bool) -> Result<i32> {
    let _ctx = run::enter(job)?;
    let created = matches!(crypt::init(job)?, crypt::InitOutcome::Created);
    let conf = job.gocryptfs_config.display();
    if as_json {
        println!(
            "{}",
            json!({ "job": job.name, "created": created, "gocryptfs_config": conf.to_string() })
        );
    } else if created {
        println!(
            "created the gocryptfs config {conf}.\n\
             Keep a copy of it and of the password ({}) somewhere safe and apart from this machine:\n\
             together they are what a restore needs (the config is also uploaded to the target's files/).",
            job.password_file.display()
        );
    } else {
        println!("the gocryptfs config {conf} exists already; nothing changed.");
    }
    Ok(0)
}

/// Prints a stage's result and returns the exit code it stands for.
fn report(cli: &Cli, job: &Job, stage: Stage, result: &StageResult) -> i32 {
    if cli.json {
        let mut doc = result.to_json();
        doc["job"] = json!(job.name);
        doc["stage"] = json!(stage.key());
        println!("{doc}");
    } else {
        print_human(job, stage, result);
    }
    match (result.outcome, &result.error) {
        (Outcome::Ok, _) => 0,
        (Outcome::Mismatch, _) => 3,
        (Outcome::Partial, _) => 4,
        (_, Some(e)) => e.kind.exit_code(),
        (_, None) => 1,
    }
}

fn print_human(job: &Job, stage: Stage, result: &StageResult) {
    let (out, err) = human::result_lines(&job.name, stage, &result.to_json());
    out.iter().for_each(|line| println!("{line}"));
    err.iter().for_each(|line| eprintln!("{line}"));
}

/// `snapshots`: one row per run that can be rebuilt, oldest first.
fn list_snapshots(cli: &Cli, job: &Job) -> Result<i32> {
    let ctx = run::enter(job)?;
    let remote = target::open(job, target::Need::Records, &ctx.runtime("remote"))?;
    let mut rows = Vec::new();
    for header in snapshots::headers(job, &*remote)? {
        let id = &header.snapshot;
        rows.push(json!({
            "id": id,
            "time": status::parse_snapshot_id(id).map(status::rfc3339),
            "files": header.files,
            "bytes": header.bytes,
            "changed": header.changed,
        }));
    }
    if cli.json {
        println!("{}", json!({ "job": job.name, "snapshots": rows }));
    } else if rows.is_empty() {
        println!(
            "{} has no snapshots yet: the first successful `ciphersync backup {}` makes one",
            human::escape(&job.name),
            human::escape(&job.name)
        );
    } else {
        println!(
            "{:<18} {:<21} {:>10} {:>14} {:>8}",
            "ID", "TIME", "FILES", "BYTES", "CHANGED"
        );
        for r in &rows {
            println!(
                "{:<18} {:<21} {:>10} {:>14} {:>8}",
                r["id"].as_str().unwrap_or(""),
                r["time"].as_str().unwrap_or(""),
                r["files"].as_u64().unwrap_or(0),
                r["bytes"].as_u64().unwrap_or(0),
                r["changed"].as_u64().unwrap_or(0)
            );
        }
    }
    Ok(0)
}

fn prune(ctx: &run::Context, dry_run: bool) -> Result<run::Done> {
    let job = ctx.job;
    let remote = target::open(job, target::Need::Records, &ctx.runtime("remote"))?;
    let plan = snapshots::prune(job, &*remote, dry_run)?;
    target::keep_space(job, &*remote);
    Ok(run::Done {
        outcome: Outcome::Ok,
        stats: ciphersync::stats::StageStats::Prune(ciphersync::stats::PruneStats {
            dry_run,
            records: plan.records,
            snapshot_dirs: plan.snapshot_dirs,
        }),
    })
}

fn show_status(cli: &Cli, name: Option<&str>) -> Result<i32> {
    let jobs = match (name, &cli.config) {
        (Some(_), _) | (None, Some(_)) => vec![load_job(cli, name)?],
        (None, None) => all_jobs(cli)?,
    };
    let mut docs = Vec::new();
    for job in &jobs {
        let mut doc = status::read(&job.state_dir)?;
        doc["job"] = json!(job.name);
        docs.push(doc);
    }
    if cli.json {
        let out = if name.is_some() || cli.config.is_some() {
            docs.remove(0)
        } else {
            json!({ "jobs": docs })
        };
        println!("{out}");
    } else {
        print_status_table(&docs);
    }
    Ok(0)
}

fn all_jobs(cli: &Cli) -> Result<Vec<Job>> {
    let dir = config_dir(cli)?;
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(e) => {
            return Err(Error::usage(format!(
                "cannot list jobs in {}: {e}",
                dir.display()
            )));
        }
    };
    files.retain(|p| p.extension().is_some_and(|x| x == "json"));
    files.sort();
    files.iter().map(|f| config::load(f)).collect()
}

fn print_status_table(docs: &[Value]) {
    human::status_lines(docs)
        .iter()
        .for_each(|line| println!("{line}"));
}
