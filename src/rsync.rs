//! rsync as backup and restore run it: the shared argv, and the parsers of
//! what it prints (`--stats`, the itemized `%i %n` lines, the errors that
//! mean a full disk). No stage logic here: backup (sync.rs) and restore
//! both build on it, and snapshots.rs records its counts.

use std::fs::File;
use std::io::BufReader;

use crate::crypt::{REMOTE_CONFIG_NAME, is_gocryptfs_metadata};
use crate::error::Result;
use crate::target::SNAPSHOTS;

// rsync exit codes (rsync's errcode.h).
pub const PARTIAL: i32 = 23;
pub const VANISHED: i32 = 24;

/// The figures of one rsync run (or the passes of one stage), from its
/// --stats and, for backup, its itemized lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub files: u64,
    pub transferred: u64,
    pub bytes_transferred: u64,
    pub deleted: u64,
    /// Files and symlinks created, changed (content or mode) or deleted.
    pub changed: u64,
    /// See `Changes::touched`.
    pub touched: bool,
}

/// A name as rsync prints it in a message: bytes it will not print raw
/// (non-ASCII, control characters) are written `\\#ooo` (octal).
pub fn unescape_name(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 2..i + 5)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], bytes.get(i + 1), octal) {
            (b'\\', Some(b'#'), Some(d)) => {
                let value =
                    (d[0] - b'0') as u32 * 64 + (d[1] - b'0') as u32 * 8 + (d[2] - b'0') as u32;
                out.push(value as u8);
                i += 5;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// rsync's words for a target that has no room left.
pub fn disk_full(stderr: &str) -> bool {
    stderr.contains("No space left") || stderr.contains("Disk quota exceeded")
}

/// True when the target has less room than the file whose write failed
/// (rsync has removed its temp file by now, so the space is free again) or
/// under 1 MiB. statvfs works through sshfs too (statvfs@openssh.com).
pub fn no_room_for(free_bytes: u64, failed_size: u64) -> bool {
    free_bytes < failed_size.max(1 << 20)
}

/// What the rsync argv depends on; kept apart so the argv can be tested.
pub struct RsyncPlan<'a> {
    pub snapshot: &'a str,
    pub over_sshfs: bool,
    /// False where the server cannot store symlinks: `--no-links` (the
    /// record keeps them, see target::Keeps).
    pub store_symlinks: bool,
    /// False where the server ignores modes: `--no-perms`, or every run
    /// would find every mode changed (the record keeps them).
    pub store_modes: bool,
    pub protect_config: bool,
    pub ssh_shell: Option<String>,
}

/// The bound of each backup rsync in KiB/s (`--bwlimit`), set once per
/// process by `limit_bandwidth`. A process-wide setting rather than a
/// field of RsyncPlan so that every rsync of the backup gets it, whichever
/// pass or worker builds the plan.
static BWLIMIT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Bounds the backup's transfer rate to `kib_per_s` for the whole job,
/// shared among the `workers` rsync processes that may run side by side
/// (the sshfs workers, split.rs): each gets an equal share, at least 1.
/// The first call wins.
pub fn limit_bandwidth(kib_per_s: u32, workers: usize) {
    let _ = BWLIMIT.set(bwlimit_share(kib_per_s, workers));
}

/// One rsync's share of a job's `target.bwlimit`.
pub fn bwlimit_share(kib_per_s: u32, workers: usize) -> u32 {
    let workers = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
    (kib_per_s / workers).max(1)
}

/// The shared rsync options. Never --partial or -P: a killed run must not
/// leave a truncated file under a real name (it would later be kept as the
/// "old version" in a snapshot).
pub fn rsync_args(plan: &RsyncPlan) -> Vec<String> {
    rsync_args_limited(plan, BWLIMIT.get().copied())
}

/// `rsync_args` with an explicit `--bwlimit` (KiB/s), for the tests.
fn rsync_args_limited(plan: &RsyncPlan, bwlimit: Option<u32>) -> Vec<String> {
    let mut args: Vec<String> = [
        "-a",
        "--no-specials",
        "--no-devices",
        "--backup",
        &format!("--backup-dir=../{SNAPSHOTS}/{}/", plan.snapshot),
    ]
    .map(String::from)
    .to_vec();
    if plan.over_sshfs {
        // SFTP cannot set symlink times, and a non-root account cannot chown.
        args.extend(["--omit-link-times", "--no-owner", "--no-group"].map(String::from));
        // The account is not root even when we are: rsync must give a
        // read-only directory (0555) owner write while it fills it, and its
        // mode back at the end, as it does when it runs as a user.
        args.push("--no-super".into());
    } else {
        // SFTP carries no inode numbers, so hard links are kept only over
        // ssh or on a local disk; through sshfs they are separate files
        // (rsync would re-link them on every run and leave `.name.NNNN`
        // temp files behind).
        args.push("-H".into());
    }
    if !plan.store_symlinks {
        args.push("--no-links".into());
    }
    if !plan.store_modes {
        args.push("--no-perms".into());
    }
    if plan.protect_config {
        // The config we upload is not in the view: keep --delete off it.
        args.push(format!("--filter=P /{REMOTE_CONFIG_NAME}"));
    }
    if let Some(kib) = bwlimit {
        // A plain number is KiB/s in every rsync since 3.0 ("1024" = 1 MiB/s).
        args.push(format!("--bwlimit={kib}"));
    }
    if let Some(shell) = &plan.ssh_shell {
        args.push("-e".into());
        args.push(shell.clone());
    }
    args
}

/// Reads rsync's --stats (with --no-human-readable; commas are tolerated).
pub fn parse_stats(text: &str) -> Stats {
    let mut stats = Stats::default();
    for line in text.lines() {
        stats.read_stats_line(line);
    }
    stats
}

/// `--out-format` for one line per changed entry, read by `stats_from`.
pub const ITEMIZE_FORMAT: &str = "%i %n";

/// rsync's byte figures with the file counts of the user's files, read line
/// by line from rsync's stdout.
pub fn stats_from(rsync_stdout: &mut File) -> Result<Stats> {
    let mut stats = Stats::default();
    let mut changes = Changes::default();
    // Progress records (`--info=progress2`, progress/rsync.rs) are no lines.
    let without_progress = crate::progress::rsync::WithoutProgress::new(rsync_stdout);
    for line in
        crate::limits::Lines::new(BufReader::new(without_progress), "rsync's list of changes")
    {
        let line = line?;
        let line = String::from_utf8_lossy(&line);
        stats.read_stats_line(&line);
        changes.read_line(&line);
    }
    Ok(Stats {
        transferred: changes.transferred,
        deleted: changes.deleted,
        changed: changes.changed,
        touched: changes.touched,
        ..stats
    })
}

impl Stats {
    /// Adds the figures of another rsync pass of the same run.
    pub fn add(&mut self, other: &Stats) {
        self.transferred += other.transferred;
        self.bytes_transferred += other.bytes_transferred;
        self.deleted += other.deleted;
        self.changed += other.changed;
        self.touched |= other.touched;
    }

    fn read_stats_line(&mut self, line: &str) {
        let Some((label, value)) = line.split_once(':') else {
            return;
        };
        let number = |v: &str| -> u64 {
            v.split_whitespace()
                .next()
                .unwrap_or("0")
                .replace(',', "")
                .parse()
                .unwrap_or(0)
        };
        match label.trim() {
            // "Number of files: 5 (reg: 3, dir: 2)": we count regular files.
            "Number of files" => {
                self.files = value
                    .split_once("reg:")
                    .map(|(_, rest)| number(rest.trim_end_matches([')', ' '])))
                    .unwrap_or(0)
            }
            "Number of regular files transferred" => self.transferred = number(value),
            "Number of deleted files" => self.deleted = number(value),
            "Total transferred file size" => self.bytes_transferred = number(value),
            _ => {}
        }
    }
}

/// What one run changed, counted in the user's files: directories and
/// gocryptfs' own files (diriv, long-name files, the config) left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub transferred: u64,
    pub deleted: u64,
    pub changed: u64,
    /// Anything created, replaced or deleted, gocryptfs' files included:
    /// only then may rsync have made a snapshot dir.
    pub touched: bool,
}

/// Reads the `%i %n` lines rsync prints (an 11-character change summary, a
/// space, the name; directories end in `/`). Other lines are ignored.
pub fn parse_itemized(text: &str) -> Changes {
    let mut changes = Changes::default();
    for line in text.lines() {
        changes.read_line(line);
    }
    changes
}

impl Changes {
    fn read_line(&mut self, line: &str) {
        let (Some(summary), Some(name)) = (line.get(..11), line.get(12..)) else {
            return;
        };
        if line.as_bytes().get(11) != Some(&b' ') {
            return;
        }
        let deleting = summary.starts_with("*deleting");
        let first = summary.as_bytes()[0];
        if deleting || b"<>c".contains(&first) {
            self.touched = true;
        }
        if name.ends_with('/') || is_gocryptfs_metadata(name) {
            return;
        }
        let kind = summary.as_bytes()[1];
        if deleting {
            self.deleted += 1;
        } else if !matches!(kind, b'f' | b'L') || !b"<>ch.".contains(&first) {
            return;
        } else if b"<>".contains(&first) && kind == b'f' {
            // `>` received (into a local path or the sshfs mount), `<` sent
            // (to `rsync --server` over ssh): content went over either way.
            self.transferred += 1;
        }
        self.changed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsync_argv_for_sshfs() {
        let plan = RsyncPlan {
            snapshot: "20261129T030000Z",
            over_sshfs: true,
            store_symlinks: true,
            store_modes: true,
            protect_config: true,
            ssh_shell: None,
        };
        insta::assert_debug_snapshot!(rsync_args(&plan));
    }

    #[test]
    fn rsync_argv_over_ssh() {
        let plan = RsyncPlan {
            snapshot: "20261129T030000Z",
            over_sshfs: false,
            store_symlinks: true,
            store_modes: true,
            protect_config: false,
            ssh_shell: Some("ssh -F '/run/ciphersync/my docs/ssh_config'".into()),
        };
        let args = rsync_args(&plan);
        assert!(!args.iter().any(|a| a == "-P" || a.starts_with("--partial")));
        insta::assert_debug_snapshot!(args);
    }

    #[test]
    fn rsync_argv_with_bwlimit() {
        let plan = RsyncPlan {
            snapshot: "20261129T030000Z",
            over_sshfs: false,
            store_symlinks: true,
            store_modes: true,
            protect_config: false,
            ssh_shell: Some("ssh -F '/run/ciphersync/docs/ssh_config'".into()),
        };
        let args = rsync_args_limited(&plan, Some(bwlimit_share(2048, 1)));
        insta::assert_debug_snapshot!(args);
        // Without a bound, no --bwlimit at all (rsync's 0 would mean none,
        // but the argv stays what it was before the option existed).
        let unlimited = rsync_args_limited(&plan, None);
        assert!(
            !unlimited.iter().any(|a| a.starts_with("--bwlimit")),
            "{unlimited:?}"
        );
    }

    #[test]
    fn bwlimit_is_shared_among_workers() {
        // 4 sshfs workers side by side never exceed the job's bound.
        assert_eq!(bwlimit_share(1000, 4), 250);
        assert_eq!(bwlimit_share(1000, 1), 1000);
        assert_eq!(bwlimit_share(1000, 0), 1000);
        // Never 0, which rsync reads as "no limit".
        assert_eq!(bwlimit_share(3, 16), 1);
    }

    #[test]
    fn counts_itemized_user_files() {
        let text = "cd+++++++++ Ab/\n>f+++++++++ Ab/Cd\n>f+++++++++ Ab/gocryptfs.diriv\n\
                    .f...p..... Ef\n*deleting   Gh\n*deleting   Ij/\ncL+++++++++ Kl\n\
                    >f.st...... gocryptfs.longname.XYZ.name\n>f+++++++++ gocryptfs.conf\n\n\
                    Number of files: 9 (reg: 7, dir: 2)\n";
        assert_eq!(
            parse_itemized(text),
            Changes {
                transferred: 1,
                deleted: 1,
                changed: 4,
                touched: true,
            }
        );
        // Over ssh rsync sends (`<`) what it receives locally (`>`).
        let sent = "<f+++++++++ Ab/Cd\n<f.st...... Ef\n<f+++++++++ Ab/gocryptfs.diriv\n";
        assert_eq!(parse_itemized(sent).transferred, 2);
    }

    #[test]
    fn unescapes_rsync_names() {
        assert_eq!(
            unescape_name("docs/\\#303\\#251t\\#303\\#251.txt"),
            "docs/été.txt"
        );
        assert_eq!(unescape_name("a\\#012b"), "a\nb");
        assert_eq!(unescape_name("plain \\#9z \\"), "plain \\#9z \\");
    }

    #[test]
    fn parses_rsync_stats() {
        let text = "\nNumber of files: 2,013 (reg: 2,000, dir: 13)\nNumber of created files: 5 (reg: 5)\n\
                    Number of deleted files: 3 (reg: 3)\nNumber of regular files transferred: 120\n\
                    Total file size: 157286400 bytes\nTotal transferred file size: 104857600 bytes\n\
                    Literal data: 104857600 bytes\n";
        assert_eq!(
            parse_stats(text),
            Stats {
                files: 2000,
                transferred: 120,
                bytes_transferred: 104_857_600,
                deleted: 3,
                changed: 0,
                touched: false,
            }
        );
        assert_eq!(parse_stats("Number of files: 1 (dir: 1)\n").files, 0);
    }

    #[test]
    fn disk_full_is_named() {
        assert!(disk_full(
            "rsync: write failed on \"x\": No space left on device (28)"
        ));
        assert!(!disk_full("rsync: connection reset"));
    }
}
