//! `ciphersync serve`: the server side of an account (issue 16).
//!
//! sshd runs it as the account's `ForceCommand`; it reads
//! `SSH_ORIGINAL_COMMAND` and allows exactly (request.rs):
//!
//! - the SFTP subsystem: execs the configured `sftp-server` (`-d ROOT`);
//! - `rsync --server ...`, checked as rrsync checks it (an allow-list of
//!   options, no `-s`/`-K`/`-L`/`-k`, paths below the root) and executed
//!   with every path made absolute below the root;
//! - the read-only questions a client asks, answered here and not by a
//!   shell: `rsync --server --version`, `sha1sum --version`, `sha1sum [--]
//!   PATH...`, `ciphersync-server sha1 DIR` (hash.sh's format) and
//!   `ciphersync-server info` (`ciphersync-server 1`, `rsync yes|no`, then
//!   the append-only marker's fields: how a client recognises the account
//!   as a ciphersync server, probe.rs), `ciphersync-server quota`.
//!
//! With `--quota BYTES`, whatever can write (a receiving rsync, an SFTP
//! session) is checked against the account's usage first (quota.rs).
//!
//! Anything else is refused with one line on stderr and exit 1. Paths are
//! confined lexically (request.rs) and then walked with `openat(O_NOFOLLOW)`
//! from the root (tree.rs): a symlink the client planted is never followed
//! out of it.
//!
//! With `--seal` (run by root, from a timer) it seals finished runs of an
//! append-only account instead (seal.rs); with `--chroot` (root, at boot)
//! it names the account inside its chroot (chroot.rs).

mod chroot;
mod inserted;
mod quota;
mod request;
mod seal;
mod settle;
mod tree;

use std::io::{BufWriter, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use clap::Args;

pub use request::{Below, MAX_REQUEST, Request, RsyncOption, parse, words};
pub use seal::{APPEND_ONLY_MARKER, SealReport, seal, server_keeps};

use crate::checksums;
use crate::error::{Error, Kind, Result};
use tree::Root;

/// Where Debian's openssh-server puts the external SFTP server.
pub const DEFAULT_SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

/// `ciphersync serve` (see the module documentation).
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// The account's directory: everything the client reaches lies below it.
    #[arg(long, value_name = "DIR", required_unless_present = "chroot")]
    pub root: Option<PathBuf>,
    /// The sftp-server binary to run for the SFTP subsystem.
    #[arg(long = "sftp-server", value_name = "PATH", default_value = DEFAULT_SFTP_SERVER)]
    pub sftp_server: PathBuf,
    /// The rsync binary to run for `rsync --server`.
    #[arg(long, value_name = "PATH", default_value = "rsync")]
    pub rsync: PathBuf,
    /// The account's size limit (digits with an optional K/M/G/T suffix,
    /// powers of 1024): over it, a receiving rsync is refused and an SFTP
    /// session cannot add data; reads and deletions still work. Checked
    /// when a request starts, so one run may exceed it by its own size.
    #[arg(long, value_name = "BYTES", value_parser = quota::parse_size)]
    pub quota: Option<u64>,
    /// Seal the finished runs below --root (as root, from a timer): their
    /// records, snapshot dirs and metadata dirs become root's and
    /// read-only, so the account can add runs but never change or delete a
    /// sealed one.
    #[arg(long, requires = "account")]
    pub seal: bool,
    /// As root, at boot: write DIR/etc/passwd and DIR/etc/group holding
    /// the --account's lines only. sftp-server, started inside the
    /// account's chroot DIR, will not run for a uid it cannot name. DIR and
    /// DIR/etc must be root's and writable by no one else.
    #[arg(long, value_name = "DIR", requires = "account", conflicts_with_all = ["seal", "root"])]
    pub chroot: Option<PathBuf>,
    /// The account whose runs --seal seals, or whom --chroot names (its
    /// user name).
    #[arg(long, value_name = "USER")]
    pub account: Option<String>,
    /// With --seal: keep the newest N sealed runs (and every run within
    /// --keep-days); older sealed runs are deleted by the server.
    #[arg(long = "keep-last", value_name = "N", requires = "seal")]
    pub keep_last: Option<u32>,
    /// With --seal: keep the sealed runs of the last DAYS days.
    #[arg(long = "keep-days", value_name = "DAYS", requires = "seal")]
    pub keep_days: Option<u32>,
    /// With --seal: then keep watching records/ and seal again after each
    /// change, until nothing has landed there for SECONDS (the server
    /// module's path unit: systemd watches nothing while the seal runs).
    #[arg(long, value_name = "SECONDS", requires = "seal", value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub settle: Option<u32>,
}

impl ServeArgs {
    /// `--root` (clap requires it unless `--chroot` is given).
    pub fn root(&self) -> &std::path::Path {
        self.root
            .as_deref()
            .expect("clap requires --root without --chroot")
    }
}

/// Runs `serve` (or `serve --seal`); returns the exit code, or never
/// returns when it hands the connection to sftp-server or rsync.
pub fn main(args: &ServeArgs) -> Result<i32> {
    if let Some(dir) = &args.chroot {
        chroot::name_account(dir, args.account.as_deref().unwrap_or_default())?;
        return Ok(0);
    }
    if args.seal {
        let report = match args.settle {
            Some(s) => settle::seal_until_quiet(args, std::time::Duration::from_secs(s.into()))?,
            None => seal(args)?,
        };
        println!("{}", report.line());
        return Ok(0);
    }
    let root = Root::open(args.root())?;
    let command = match std::env::var("SSH_ORIGINAL_COMMAND") {
        Ok(c) => Some(c),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(tree::refuse("command not allowed: not UTF-8"));
        }
    };
    let request = parse(command.as_deref(), &root.text())?;
    crate::log::debug(|| format!("serve: {request:?}"));
    answer(args, &root, request)
}

fn answer(args: &ServeArgs, root: &Root, request: Request) -> Result<i32> {
    match request {
        Request::Sftp => {
            let mut command = std::process::Command::new(&args.sftp_server);
            command.arg("-d").arg(&root.path);
            // Over the quota, or unmeasured, the session still reads,
            // removes and renames: restores and prunes work. sshfs and sftp
            // show the subsystem's stderr.
            let refusal = match quota::over_quota(root, args.quota, &quota::account_name()) {
                Ok(over) => over,
                Err(e) => Some(e.message),
            };
            if let Some(line) = refusal {
                eprintln!("ciphersync serve: {line}; this SFTP session cannot add data");
                command.arg("-P").arg(quota::SFTP_DENIED_OVER_QUOTA);
            }
            Err(exec(&mut command, &root.path))
        }
        Request::Quota => {
            let line = match args.quota {
                None => "quota none".to_string(),
                Some(quota) => {
                    let used = quota::usage(root, crate::limits::MAX_TREE_ENTRIES)?;
                    if let Some(line) =
                        quota::over_message(&quota::account_name(), used.bytes, quota)
                    {
                        quota::end_run_permit(root)?;
                        return Err(tree::refuse(line));
                    }
                    // The client asks before a backup writes anything:
                    // this run may finish even if it crosses the quota.
                    quota::grant_run_permit(root)?;
                    format!("quota {quota} used {}", used.bytes)
                }
            };
            println!("{line}");
            Ok(0)
        }
        Request::RsyncVersion => Err(exec(
            std::process::Command::new(&args.rsync).arg("--version"),
            &root.path,
        )),
        Request::Rsync {
            sender,
            options,
            paths,
        } => {
            if !sender
                && let Some(line) = quota::over_quota(root, args.quota, &quota::account_name())?
            {
                return Err(tree::refuse(line));
            }
            let mut command = std::process::Command::new(&args.rsync);
            command.arg("--server");
            if sender {
                command.arg("--sender");
            }
            for option in options {
                match option {
                    RsyncOption::Plain(word) => command.arg(word),
                    RsyncOption::Path { name, value } => {
                        let shown = format!("{name} {}", value.rel());
                        root.check_path(&value, &shown)?;
                        command.arg(format!("{name}={}", absolute(root, &value)))
                    }
                };
            }
            command.arg("--").arg(".");
            for path in paths {
                root.check_path(&path, &path.rel())?;
                command.arg(absolute(root, &path));
            }
            Err(exec(&mut command, &root.path))
        }
        Request::Sha1sumVersion => {
            println!(
                "sha1sum (ciphersync serve {}): sha1 of files below the account's directory",
                env!("CARGO_PKG_VERSION")
            );
            Ok(0)
        }
        Request::Sha1sum(paths) => {
            let mut out = BufWriter::new(std::io::stdout().lock());
            for (shown, below) in paths {
                let mut file = root.open_file(&below, &shown)?;
                let sum = checksums::hash_reader(&mut file)
                    .map_err(|e| Error::io(format!("reading {shown}"), e))?;
                write_sum(&mut out, &shown, &sum)?;
            }
            out.flush().map_err(|e| Error::io("answering", e))?;
            Ok(0)
        }
        Request::TreeSha1(dir) => {
            let shown = dir.rel();
            let files = root.files_below(&dir, &shown, crate::limits::MAX_TREE_ENTRIES)?;
            let mut out = BufWriter::new(std::io::stdout().lock());
            for rel in files {
                let mut parts = dir.parts.clone();
                parts.extend(rel.split('/').map(String::from));
                let below = Below {
                    parts,
                    trailing_slash: false,
                };
                let mut file = root.open_file(&below, &rel)?;
                let sum = checksums::hash_reader(&mut file)
                    .map_err(|e| Error::io(format!("reading {rel}"), e))?;
                checksums::write_line(&mut out, &rel, &sum)
                    .map_err(|e| Error::io("answering", e))?;
            }
            out.flush().map_err(|e| Error::io("answering", e))?;
            Ok(0)
        }
        Request::TreeStamps(dir) => {
            let shown = dir.rel();
            let stamps = root.stamps_below(&dir, &shown, crate::limits::MAX_TREE_ENTRIES)?;
            println!("{stamps}");
            Ok(0)
        }
        Request::Info => {
            // Our own first lines, then the marker's (seal's) fields.
            let rsync = match program_found(&args.rsync) {
                true => "yes",
                false => "no",
            };
            let mut text = format!("ciphersync-server 1\nrsync {rsync}\n");
            for line in seal::info(root)?.lines().filter(|l| {
                !l.starts_with("ciphersync-server") && !l.starts_with("rsync ") && !l.is_empty()
            }) {
                text.push_str(line);
                text.push('\n');
            }
            print!("{text}");
            Ok(0)
        }
    }
}

/// Whether `program` can be run: an existing file when it names a path,
/// else a file of that name in a `PATH` directory.
fn program_found(program: &std::path::Path) -> bool {
    if program.components().count() > 1 {
        return program.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// `root/<below>`, with the client's trailing slash.
fn absolute(root: &Root, below: &Below) -> String {
    let mut path = root.text();
    for part in &below.parts {
        path.push('/');
        path.push_str(part);
    }
    if below.trailing_slash {
        path.push('/');
    }
    path
}

/// One line of `sha1sum` output for `name`, escaped as sha1sum escapes a
/// name with a backslash or a newline.
fn write_sum(out: &mut impl Write, name: &str, sum: &checksums::Sum) -> Result<()> {
    let hex = checksums::to_hex(sum);
    let result = if name.contains(['\\', '\n', '\r']) {
        let escaped = name
            .replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('\r', "\\r");
        writeln!(out, "\\{hex}  {escaped}")
    } else {
        writeln!(out, "{hex}  {name}")
    };
    result.map_err(|e| Error::io("answering", e))
}

/// Replaces this process with `command`, run in the root; returns only
/// the error of a failed exec.
fn exec(command: &mut std::process::Command, root: &std::path::Path) -> Error {
    let program = command.get_program().to_string_lossy().into_owned();
    let e = command.current_dir(root).exec();
    Error::new(Kind::Tool, format!("cannot run {program}: {e}"))
}
