//! The possession check. With `remote_checksums: ssh` the server computes
//! the sha1s of its copy, and a server that deleted the data could answer
//! with a list it saved earlier. So every verify also reads a sample of the
//! remote files back (over SFTP, many at a time, else through an sshfs
//! mount) and compares their sha1 with the local list: that answer needs
//! the data.
//!
//! Which files: the files are ordered by a keyed hash of their encrypted
//! path, with a key kept secret in the state dir. Each run reads the next
//! window of that order (its width set by the byte budget), so the windows
//! rotate through every file within `runs_per_rotation` runs; and a second,
//! smaller window under a fresh random key, so that no file is ever safe to
//! drop, even one the rotation has just read.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;

use sha1::{Digest, Sha1};

use crate::checksums::{self, Sum};
use crate::crypt::REMOTE_CONFIG_NAME;
use crate::error::{Error, IoContext, Kind, Result};
use crate::fsutil;
use crate::progress::Phase;
use crate::state::SampleRotation;
use crate::target::{self, FILES, Ssh, TreeEntry};

/// The default budget: 1 % of the data, at most this much.
const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// The fresh window is this fraction of the rotating one.
const FRESH_SHARE: u64 = 8;

/// How much one run reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Every file (`verify --sample all`).
    All,
    Bytes(u64),
}

impl Budget {
    /// The job's `verify.sample_bytes`, else 1 % of the data, at most
    /// 256 MiB (but never nothing while there is data).
    pub fn for_job(setting: Option<u64>, data_bytes: u64) -> Budget {
        Budget::Bytes(setting.unwrap_or_else(|| (data_bytes / 100).clamp(1, DEFAULT_MAX_BYTES)))
    }
}

/// The files one run reads: a window `[start, start + width)` of the
/// keyed order (wrapping), and the fresh window.
#[derive(Debug, Clone)]
pub struct Selection {
    key: String,
    start: u64,
    /// None: every file.
    width: Option<u64>,
    fresh_key: String,
    fresh_start: u64,
}

impl Selection {
    /// Plans this run's windows. `rotation` is where the last run left off
    /// (None: a new rotation under `new_key`); `fresh` is this run's random
    /// key and start.
    pub fn plan(
        rotation: Option<&SampleRotation>,
        new_key: (String, u64),
        fresh: (String, u64),
        budget: Budget,
        data_bytes: u64,
    ) -> Selection {
        let (key, start) = match rotation {
            Some(r) => (r.key.clone(), r.cursor),
            None => new_key,
        };
        let width = match budget {
            Budget::All => None,
            Budget::Bytes(b) if b >= data_bytes => None,
            // The share of the keyed order whose files hold about `b` bytes.
            // Rounded up, so that the windows cover the order in
            // `runs_per_rotation` runs, not one more.
            Budget::Bytes(b) => {
                Some(((b as u128) << 64).div_ceil(data_bytes as u128).max(1) as u64)
            }
        };
        Selection {
            key,
            start,
            width,
            fresh_key: fresh.0,
            fresh_start: fresh.1,
        }
    }

    /// How far `path` lies after the window's start in the keyed order:
    /// the nearest file is read when the window holds none.
    fn distance(&self, path: &str) -> u64 {
        position(&self.key, path).wrapping_sub(self.start)
    }

    /// Whether this run reads `path` (relative to files/).
    pub fn contains(&self, path: &str) -> bool {
        let Some(width) = self.width else {
            return true;
        };
        let fresh_width = (width / FRESH_SHARE).max(1);
        position(&self.key, path).wrapping_sub(self.start) < width
            || position(&self.fresh_key, path).wrapping_sub(self.fresh_start) < fresh_width
    }

    /// Where the next run starts, under the same key.
    pub fn next(&self) -> SampleRotation {
        SampleRotation {
            key: self.key.clone(),
            cursor: self.start.wrapping_add(self.width.unwrap_or(0)),
        }
    }

    /// Runs until the rotation has read every file once (1: this run reads
    /// them all).
    pub fn runs_per_rotation(&self) -> u64 {
        match self.width {
            None => 1,
            Some(w) => u64::try_from((1u128 << 64).div_ceil(w as u128)).unwrap_or(u64::MAX),
        }
    }
}

/// A file's place in the order that `key` gives: the first 8 bytes of
/// sha1(key, path). Without the key the server cannot tell which files a
/// run will read.
fn position(key: &str, path: &str) -> u64 {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    let digest: [u8; 20] = h.finalize().into();
    u64::from_be_bytes(digest[..8].try_into().expect("8 of 20 bytes"))
}

/// What the read-back found.
#[derive(Debug, Default)]
pub struct Findings {
    pub read: usize,
    pub bytes: u64,
    /// Encrypted paths (relative to files/) missing on the target.
    pub missing: Vec<String>,
    /// Encrypted paths whose bytes on the target do not have the local
    /// sha1 (or that are not regular files there).
    pub changed: Vec<String>,
}

/// The selected files of the local list (`sha1sum` format, read from its
/// start) with their local sums; `skip`: files whose difference has a
/// known cause. Should the window hold none (a small budget and large
/// files), the first file after its start: a run never reads nothing.
pub fn selected(
    local_list: &mut File,
    selection: &Selection,
    skip: &HashSet<String>,
) -> Result<Vec<(String, Sum)>> {
    local_list
        .seek(SeekFrom::Start(0))
        .ctx(|| "rewinding the local list")?;
    let mut chosen = Vec::new();
    let mut nearest: Option<(u64, String, Sum)> = None;
    checksums::read_list(&mut *local_list, |name, sum| {
        if name == REMOTE_CONFIG_NAME || skip.contains(&name) {
            return Ok(());
        }
        if selection.contains(&name) {
            chosen.push((name, sum));
            return Ok(());
        }
        let distance = selection.distance(&name);
        if nearest.as_ref().is_none_or(|(d, _, _)| distance < *d) {
            nearest = Some((distance, name, sum));
        }
        Ok(())
    })?;
    if chosen.is_empty()
        && let Some((_, name, sum)) = nearest
    {
        chosen.push((name, sum));
    }
    Ok(chosen)
}

/// Reads the `chosen` files below `remote_root` (`files/` is under it, a
/// mount or a local disk), one after the other, and compares them with
/// their local sums.
pub fn read_back(remote_root: &Path, chosen: &[(String, Sum)], phase: &Phase) -> Result<Findings> {
    let mut found = Findings::default();
    for (name, sum) in chosen {
        match read_remote(remote_root, name)? {
            None => found.missing.push(name.clone()),
            Some((theirs, bytes)) => found.read_one(name, bytes, theirs != Some(*sum), phase),
        }
    }
    Ok(found)
}

/// As `read_back`, over SFTP with many requests in flight
/// (`target::hash_over_sftp`): through sshfs each file waits for several
/// round trips in turn (2.2 s of a 3 s verify at 20 ms). A file gone is
/// missing. Anything else the server does not answer as a plain file (it
/// refuses one, or has something else under its name) is an error: the
/// caller reads through the mount, which names such a file changed.
pub fn read_back_over_sftp(ssh: &Ssh, chosen: &[(String, Sum)], phase: &Phase) -> Result<Findings> {
    let ours: HashMap<&str, &Sum> = chosen.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let mut found = Findings::default();
    let files = chosen.iter().map(|(name, _)| TreeEntry::named_file(name));
    let mut each = |file: target::Hashed1| {
        let differs = ours.get(file.entry.path.as_str()) != Some(&&file.sum);
        found.read_one(&file.entry.path, file.size, differs, phase);
        Ok(())
    };
    let not = target::hash_over_sftp(ssh, FILES, files, &mut each)?;
    if let Some(first) = not.refused.first() {
        return Err(Error::new(
            Kind::Remote,
            format!("the target would not give back {first} over SFTP"),
        ));
    }
    found.missing.extend(not.vanished);
    Ok(found)
}

impl Findings {
    fn read_one(&mut self, name: &str, bytes: u64, differs: bool, phase: &Phase) {
        phase.add(1, bytes);
        self.read += 1;
        self.bytes += bytes;
        if differs {
            self.changed.push(name.to_owned());
        }
    }
}

/// The sha1 and size of `files/<name>` on the target (None inside: not a
/// regular file there); None if it is missing.
fn read_remote(root: &Path, name: &str) -> Result<Option<(Option<Sum>, u64)>> {
    let rel = format!("{FILES}/{name}");
    let file = match fsutil::open_below(root, &rel) {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(None),
        // A link or a special file where the backup has a file.
        Err(_) => return Ok(Some((None, 0))),
    };
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let sum = checksums::hash_reader(&mut &file).ctx(|| format!("reading {rel} on the target"))?;
    Ok(Some((Some(sum), bytes)))
}

/// A new secret key and a random start.
pub fn random_key() -> Result<(String, u64)> {
    let key = fsutil::random_hex(16)?;
    let start = u64::from_str_radix(&fsutil::random_hex(8)?, 16).expect("16 hex digits");
    Ok((key, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("Ab{i:05}/Cd{}", i * 7)).collect()
    }

    #[test]
    fn a_rotation_reads_every_file_within_its_runs() {
        let files = paths(2000);
        let data_bytes = 2000 * 1000;
        let budget = Budget::Bytes(data_bytes / 50);
        let mut rotation: Option<SampleRotation> = None;
        let mut seen = HashSet::new();
        let mut runs = 0;
        let mut bound = 0;
        for run in 0..200u64 {
            let plan = Selection::plan(
                rotation.as_ref(),
                ("k".repeat(32), 12345),
                (format!("fresh{run}"), run * 31),
                budget,
                data_bytes,
            );
            bound = plan.runs_per_rotation();
            seen.extend(files.iter().filter(|f| plan.contains(f)).cloned());
            rotation = Some(plan.next());
            runs += 1;
            if seen.len() == files.len() {
                break;
            }
        }
        assert_eq!(bound, 50, "a budget of 2 % needs 50 runs");
        assert_eq!(seen.len(), files.len(), "files never read in {runs} runs");
        assert!(
            runs <= bound,
            "the rotation took {runs} runs, more than its bound {bound}"
        );
    }

    #[test]
    fn each_run_reads_about_its_budget() {
        let files = paths(10_000);
        let plan = Selection::plan(
            None,
            ("a".repeat(32), 7),
            ("b".repeat(32), 9),
            Budget::Bytes(100),
            10_000,
        );
        let read = files.iter().filter(|f| plan.contains(f)).count();
        // 1 % rotating plus an eighth of that fresh: about 112 files.
        assert!(
            (60..200).contains(&read),
            "read {read} files for a 1 % budget"
        );
    }

    #[test]
    fn all_or_a_budget_over_the_data_reads_everything() {
        let files = paths(100);
        for budget in [Budget::All, Budget::Bytes(10_000)] {
            let plan =
                Selection::plan(None, ("a".repeat(32), 7), ("b".repeat(32), 9), budget, 5000);
            assert!(files.iter().all(|f| plan.contains(f)), "{budget:?}");
            assert_eq!(plan.runs_per_rotation(), 1);
        }
    }

    #[test]
    fn without_the_key_the_order_is_another() {
        let files = paths(1000);
        let a = Selection::plan(
            None,
            ("a".repeat(32), 0),
            ("x".into(), 0),
            Budget::Bytes(10),
            1000,
        );
        let b = Selection::plan(
            None,
            ("b".repeat(32), 0),
            ("y".into(), 0),
            Budget::Bytes(10),
            1000,
        );
        let pick = |s: &Selection| {
            files
                .iter()
                .filter(|f| s.contains(f))
                .cloned()
                .collect::<HashSet<_>>()
        };
        let (pa, pb) = (pick(&a), pick(&b));
        assert!(
            pa.intersection(&pb).count() < pa.len().max(1),
            "two keys chose the same files"
        );
    }
}
