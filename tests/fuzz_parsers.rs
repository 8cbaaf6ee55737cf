//! A bounded, seeded mutation fuzz of every parser that reads text the
//! helper does not control: the job file, rsync's --stats and itemized
//! output, sha1sum lists from the server, the per-run records read back from
//! the target, /proc/self/mountinfo. Each must answer a damaged input with
//! an error (or a harmless value), never a panic. (cargo-fuzz needs a nightly
//! toolchain, which this project's machines do not have; the fixed seeds make
//! every failure reproducible.)

use ciphersync::checksums::read_list;
use ciphersync::config;
use ciphersync::mount::parse_mountinfo;
use ciphersync::rsync::{parse_itemized, parse_stats};
use ciphersync::snapshots::{Record, RecordReader};

/// Mutations per seed input; enough to hit every byte position many times.
const ROUNDS: usize = 4_000;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to these formats, plus arbitrary ones.
const INTERESTING: &[u8] = b" \t\n\\\"{}[]:,/.-0123456789#*>+%'\x00\xff\xc3";

fn mutate(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                out.remove(at.min(out.len() - 1));
            }
            1 => out.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            2 => out.insert(at, rng.next() as u8),
            3 if at < out.len() => out[at] = INTERESTING[rng.below(INTERESTING.len())],
            4 => out.truncate(at),
            _ => {
                // Duplicate a slice: repeated fields, lines, separators.
                let from = rng.below(out.len() + 1);
                let len = rng.below(32).min(out.len() - from);
                let piece = out[from..from + len].to_vec();
                out.splice(at..at, piece);
            }
        }
    }
    out
}

/// Runs `parse` on ROUNDS mutations of `seed`; a panic fails the test and
/// the message says which input.
fn fuzz(name: &str, seed: u64, input: &str, parse: impl Fn(&[u8])) {
    parse(input.as_bytes());
    let mut rng = XorShift(seed);
    for round in 0..ROUNDS {
        let mutated = mutate(&mut rng, input.as_bytes());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(&mutated)));
        assert!(
            result.is_ok(),
            "{name}: panic on round {round} (seed {seed}) for input {:?}",
            String::from_utf8_lossy(&mutated)
        );
    }
}

const JOB: &str = r#"{
  "version": 1, "name": "docs", "source": "/srv/docs", "exclude": ["*.tmp"],
  "password_file": "/run/keys/docs", "filenames": "encrypted",
  "target": { "type": "sftp", "host": "backup.example.org", "port": 22, "user": "docs",
              "path": "/backups/docs", "identity_file": "/k/id", "known_hosts_file": "/k/kh",
              "transport": "sshfs", "remote_checksums": "ssh" },
  "snapshots": { "keep_last": 3, "keep_days": 9 }, "max_delete_percent": 50,
  "state_dir": "/var/lib/ciphersync/docs", "runtime_dir": "/run/ciphersync/docs"
}"#;

#[test]
fn job_file_parser_never_panics() {
    assert!(config::parse(JOB).is_ok(), "the seed input must be valid");
    fuzz("job file", 0x5eed_0001, JOB, |b| {
        let _ = config::parse(&String::from_utf8_lossy(b));
    });
}

const RSYNC_OUTPUT: &str = "cd+++++++++ Ab/\n>f+++++++++ Ab/Cd\n*deleting   Gh\n.f...p..... Ef\n\
    cL+++++++++ Kl\n\nNumber of files: 2,013 (reg: 2,000, dir: 13)\nNumber of deleted files: 3\n\
    Number of regular files transferred: 120\nTotal transferred file size: 104857600 bytes\n";

#[test]
fn rsync_output_parsers_never_panic() {
    fuzz("rsync stats", 0x5eed_0002, RSYNC_OUTPUT, |b| {
        let text = String::from_utf8_lossy(b);
        let _ = parse_stats(&text);
        let _ = parse_itemized(&text);
    });
}

const SHA1SUM: &str = "a9993e364706816aba3e25717850c26c9cd0d89d  ./plain name\n\
    \\da39a3ee5e6b4b0d3255bfef95601890afd80709  ./back\\\\slash\\nnew line\n\
    da39a3ee5e6b4b0d3255bfef95601890afd80709 *binary\n";

#[test]
fn sha1sum_list_parser_never_panics() {
    let count = |b: &[u8]| {
        let mut n = 0;
        read_list(b, |_, _| {
            n += 1;
            Ok(())
        })
        .map(|_| n)
    };
    assert_eq!(count(SHA1SUM.as_bytes()).unwrap(), 3);
    fuzz("sha1sum list", 0x5eed_0003, SHA1SUM, |b| {
        let _ = count(b);
    });
}

const RECORD: &str = "ciphersync-record 1\nsnapshot 20261129T030000Z\nfiles 2\nbytes 6\n\
    transferred 1\ndeleted 0\nchanged 1\n\nd 755 0 Ab\nf 644 3 Ab/Cd\nf 600 3 back\\\\slash\\nx\n\
    l 777 5 Kl\n";

#[test]
fn record_parser_never_panics() {
    assert_eq!(Record::parse(RECORD).unwrap().entries.len(), 4);
    fuzz("record", 0x5eed_0004, RECORD, |b| {
        if let Ok(record) = Record::parse(&String::from_utf8_lossy(b)) {
            // What parses must be safe to use: no path may leave the tree.
            for e in &record.entries {
                assert!(
                    !e.path.starts_with('/'),
                    "parsed record entry with an absolute path: {e:?}"
                );
                assert!(
                    !e.path.split('/').any(|c| c == ".."),
                    "parsed record entry with a .. component: {e:?}"
                );
            }
            let _ = (record.files(), record.bytes());
        }
        // The streaming reader backup uses, on raw bytes (not only text).
        if let Ok(reader) = RecordReader::new(b) {
            for entry in reader.flatten() {
                assert!(!entry.path.starts_with('/'), "{entry:?}");
            }
        }
    });
}

const MOUNTINFO: &str = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.sshfs u@h:/x rw\n\
    37 35 0:5 / /run/x rw - tmpfs tmpfs rw\n";

#[test]
fn mountinfo_parser_never_panics() {
    assert_eq!(parse_mountinfo(MOUNTINFO).len(), 2);
    fuzz("mountinfo", 0x5eed_0005, MOUNTINFO, |b| {
        let _ = parse_mountinfo(&String::from_utf8_lossy(b));
    });
}
