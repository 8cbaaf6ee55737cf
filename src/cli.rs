//! The command line (docs/design.md, "CLI").

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ciphersync",
    version,
    disable_version_flag = true,
    arg_required_else_help = true,
    about = "Encrypted remote backups with gocryptfs -reverse, sshfs and rsync"
)]
pub struct Cli {
    /// Print the version of ciphersync and of the gocryptfs, sshfs and
    /// rsync it finds on PATH, one per line.
    #[arg(short = 'V', long, exclusive = true)]
    pub version: bool,

    /// Job file to use; then the command takes no JOB.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        value_name = "FILE",
        conflicts_with = "config_dir"
    )]
    pub config: Option<PathBuf>,

    /// Directory of <JOB>.json files (default: $CIPHERSYNC_CONFIG_DIR, else
    /// /etc/ciphersync for root and $XDG_CONFIG_HOME/ciphersync otherwise).
    #[arg(long = "config-dir", global = true, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,

    /// Print the result as one JSON object on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// Log every command the helper runs (to stderr).
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// Show no progress of backup, verify and restore (errors and the
    /// result still print).
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// After a stage, write the job's Prometheus metrics to FILE (the node
    /// exporter's textfile format), replacing it atomically.
    #[arg(long = "metrics-file", global = true, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate job files; exit 2 naming the bad field.
    CheckConfig {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Create the gocryptfs reverse config if it is missing (idempotent).
    Init(JobArg),
    /// Mirror the encrypted view of the source to the target.
    Backup {
        #[command(flatten)]
        job: JobArg,
        /// Allow this run to delete up to PERCENT of the remote files
        /// (overrides max_delete_percent; 100 also allows an empty source).
        #[arg(long = "max-delete", value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
        max_delete: Option<u8>,
        /// Before the backup, wait up to MINUTES for the target to answer
        /// (TCP connect to host:port, or a local target's directory), with a
        /// growing pause between probes, instead of failing at once.
        #[arg(long = "wait-for-target", value_name = "MINUTES", value_parser = clap::value_parser!(u32).range(0..=1440))]
        wait_for_target: Option<u32>,
    },
    /// Compare local and remote checksums; --deep decrypts and compares with the source.
    Verify {
        #[command(flatten)]
        job: JobArg,
        #[arg(long)]
        deep: bool,
        /// How much of the remote data to read back and compare (the
        /// possession check): `all`, or a number of bytes. Default: the
        /// job's verify.sample_bytes, else 1 % of the data (at most 256 MiB).
        #[arg(long, value_name = "all|BYTES", value_parser = parse_sample)]
        sample: Option<ciphersync::sample::Budget>,
    },
    /// Copy all or some plaintext paths out of the backup into an empty directory.
    Restore {
        /// Empty (or new) directory to restore into.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Rebuild the tree as it was right after this backup run (see
        /// `snapshots`) instead of the latest state.
        #[arg(long, value_name = "ID")]
        snapshot: Option<String>,
        /// Keep setuid and setgid bits as the target stores them. Risky: a
        /// hostile target can mark any restored executable setuid. Off by
        /// default, so restored files never carry those bits.
        #[arg(long)]
        keep_setuid: bool,
        /// Also give restored files the owners and groups a local target
        /// keeps on its own files (root only). Run as root, restore applies
        /// the owners, ACLs and xattrs each backup stores encrypted anyway.
        #[arg(long)]
        owners: bool,
        /// Do not apply the stored owners, ACLs and xattrs: every restored
        /// file belongs to the user who runs the restore.
        #[arg(long, conflicts_with = "owners")]
        no_owners: bool,
        /// JOB (unless -c FILE is given), then paths relative to the source
        /// to restore (default: everything).
        #[arg(value_name = "JOB|PATH")]
        args: Vec<String>,
    },
    /// List the backup runs that can be restored: id, files, bytes, changes.
    Snapshots(JobArg),
    /// Apply the snapshot retention (keep_last, keep_days) now.
    Prune {
        #[command(flatten)]
        job: JobArg,
        /// Only show what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// The last result of each stage, of one job or of every job.
    Status {
        /// A job name (default: every job in the config dir).
        job: Option<String>,
    },
    /// Every kept version of one file or directory: run, time, size, event.
    Log {
        /// JOB (unless -c FILE is given), then the path relative to the source.
        #[arg(value_name = "JOB|PATH", required = true, num_args = 1..=2)]
        args: Vec<String>,
    },
    /// What changed between two runs: added, deleted and changed paths.
    Diff {
        /// JOB (unless -c FILE is given), then the two snapshot ids (see
        /// `snapshots`), older first.
        #[arg(value_name = "JOB|ID", required = true, num_args = 2..=3)]
        args: Vec<String>,
    },
    /// Mount the latest state, or a kept run (--snapshot), decrypted and
    /// read-only at DIR, until Ctrl-C (or, with --background, until
    /// `ciphersync umount`). Nothing is copied to local disk.
    Mount {
        /// The run to show (see `snapshots`) instead of the latest state.
        /// While it is mounted, the job's other stages find its lock held.
        #[arg(long, value_name = "ID")]
        snapshot: Option<String>,
        /// Return once mounted; the mounts stay until `ciphersync umount`.
        #[arg(long)]
        background: bool,
        /// JOB (unless -c FILE is given), then DIR: an empty directory.
        #[arg(value_name = "JOB|DIR", required = true, num_args = 1..=2)]
        args: Vec<String>,
    },
    /// Unmount what `ciphersync mount` mounted at DIR (default: all of the job's).
    Umount {
        /// JOB (unless -c FILE is given), then DIR.
        #[arg(value_name = "JOB|DIR", num_args = 0..=2)]
        args: Vec<String>,
    },
    /// The master key on paper: print it (export), or prove a typed one
    /// opens the target (check).
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// The server side of an account (sshd's ForceCommand): SFTP, a
    /// confined `rsync --server` and read-only questions, nothing else;
    /// with --seal (root, from a timer) seal the finished runs of an
    /// append-only account.
    Serve(ciphersync::serve::ServeArgs),
    /// Print a shell completion script (for packaging).
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page in roff (for packaging).
    #[command(hide = true)]
    Man,
}

#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// Print the job's gocryptfs master key and the commands that read the
    /// backup with it alone (no password, no config file). The output IS
    /// the key: print it, keep it offline.
    Export(JobArg),
    /// Read a master key from stdin (or --from FILE) and prove that it
    /// opens the target's files/: mount it read-only with the key alone,
    /// decrypt names and files, compare them with the source.
    Check {
        #[command(flatten)]
        job: JobArg,
        /// Read the key from FILE instead of stdin.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct JobArg {
    /// The job: <config dir>/<JOB>.json (omit with -c FILE).
    #[arg(value_name = "JOB")]
    pub job: Option<String>,
}

/// `--sample all` or `--sample BYTES`.
fn parse_sample(text: &str) -> Result<ciphersync::sample::Budget, String> {
    match text {
        "all" => Ok(ciphersync::sample::Budget::All),
        n => n
            .parse::<u64>()
            .map(ciphersync::sample::Budget::Bytes)
            .map_err(|_| format!("expected `all` or a whole number of bytes, found {n:?}")),
    }
}
