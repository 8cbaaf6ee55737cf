//! The remote (ciphertext) side: [`cipher_size`], [`flip_byte_keep_mtime`],
//! [`ManualMount`] (plain `gocryptfs -ro`, as a user restoring by hand).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Size of the gocryptfs ciphertext of an `n`-byte file: 18-byte header plus
/// 32 bytes (nonce + tag) per started 4096-byte block; empty stays empty.
pub fn cipher_size(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        18 + n + 32 * n.div_ceil(4096)
    }
}

/// XORs the byte at `offset` with 0xFF, then puts the mtime back; asserts
/// that size and mtime are what they were (so rsync's quick check can't see it).
pub fn flip_byte_keep_mtime(path: &Path, offset: u64) {
    let before = fs::metadata(path).unwrap();
    let mtime = before.modified().unwrap();
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0xFF;
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let after = fs::metadata(path).unwrap();
    assert_eq!(after.len(), before.len(), "size changed by flip");
    assert_eq!(
        after.modified().unwrap(),
        mtime,
        "mtime not restored by flip"
    );
}

/// Mounts `cipher_dir` with plain `gocryptfs -ro` (forward) at `mnt` using the
/// password file, as a user restoring by hand would; unmounted on drop.
pub struct ManualMount {
    pub mnt: PathBuf,
}

impl ManualMount {
    pub fn new(cipher_dir: &Path, password_file: &Path, mnt: &Path) -> ManualMount {
        fs::create_dir_all(mnt).unwrap();
        let log = fs::File::create(mnt.with_extension("log")).unwrap();
        let st = Command::new("gocryptfs")
            .args(["-ro", "-nosyslog", "-q", "-passfile"])
            .arg(password_file)
            .arg(cipher_dir)
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .expect("run gocryptfs");
        assert!(
            st.success(),
            "plain `gocryptfs {} {}` failed ({st}): {}",
            cipher_dir.display(),
            mnt.display(),
            fs::read_to_string(mnt.with_extension("log")).unwrap_or_default()
        );
        ManualMount {
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Drop for ManualMount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .status();
    }
}
