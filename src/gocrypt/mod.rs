//! The gocryptfs format read natively: what a restore needs to turn the
//! ciphertext a backup stored (files/, a snapshot rebuilt in a stage) back
//! into plaintext without a FUSE mount. Copying 200,000 small files out of
//! a `gocryptfs` mount costs 140 to 170 µs of CPU per file in gocryptfs
//! alone (bench/analysis.md); reading the same files and decrypting them
//! here costs the AES and the system calls.
//!
//! Only what `gocryptfs -init -reverse` writes is read (AES-SIV content,
//! HKDF, EME names with or without per-directory IVs, long names, raw or
//! padded base64): `Format::of_config` says None for anything else, and
//! the restore then mounts with gocryptfs as before. Nothing here writes
//! the format; it stays gocryptfs' own, and a backup stays readable with
//! gocryptfs alone (README, "Restoring by hand").
//!
//! The layout, from gocryptfs' documentation and source
//! (internal/cryptocore, contentenc, nametransform):
//! - keys: HKDF-SHA256 of the 32-byte master key, no salt, info "EME
//!   filename encryption" (32 bytes, AES-256 for EME) and "AES-SIV file
//!   content encryption" (64 bytes, AES-SIV-512);
//! - a file: an 18-byte header (version 2, big-endian u16; a 16-byte file
//!   id), then blocks of 4,096 plaintext bytes, each stored as a 16-byte
//!   nonce and the AES-SIV output (16-byte tag, ciphertext), authenticated
//!   with the block number (big-endian u64) and the file id, the nonce as
//!   the last header; an empty file is empty;
//! - a symlink's target: one such block, number 0, no file id, in base64;
//! - a name: base64 of EME(name padded to 16 bytes, PKCS#7) under the
//!   directory's `gocryptfs.diriv`; a long one is stored as
//!   `gocryptfs.longname.<base64 of its SHA-256>`, the encrypted name in a
//!   `.name` file beside it.

mod base64;
pub mod content;
pub mod eme;
pub mod names;

use aes::Aes256;
use aes::cipher::{Array, KeyInit};
use hkdf::Hkdf;
use sha2::Sha256;

pub use content::{ContentCipher, ContentError};
pub use names::{NameError, Naming};

/// The feature flags `gocryptfs -init -reverse` writes (with or without
/// `-deterministic-names`, which drops DirIV). LongNameMax, plaintext
/// names, GCM or XChaCha20 content are read by gocryptfs' own mount.
const READ_HERE: [&str; 7] = [
    "GCMIV128",
    "HKDF",
    "DirIV",
    "EMENames",
    "LongNames",
    "Raw64",
    "AESSIV",
];
const NEEDED: [&str; 5] = ["GCMIV128", "HKDF", "EMENames", "LongNames", "AESSIV"];

/// How a backup's ciphertext is laid out, from its gocryptfs config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Format {
    pub naming: Naming,
}

impl Format {
    /// The format of data made with the config `config` (a
    /// gocryptfs.conf's text), where this module reads it; None where only
    /// gocryptfs can (or where it is no config at all: the mount says why).
    pub fn of_config(config: &str) -> Option<Format> {
        let doc: serde_json::Value = serde_json::from_str(config).ok()?;
        if doc["Version"] != 2 {
            return None;
        }
        let flags: Vec<&str> = doc["FeatureFlags"]
            .as_array()?
            .iter()
            .map(|f| f.as_str())
            .collect::<Option<_>>()?;
        let known = flags.iter().all(|f| READ_HERE.contains(f));
        let complete = NEEDED.iter().all(|f| flags.contains(f));
        (known && complete).then(|| Format {
            naming: Naming {
                per_directory_iv: flags.contains(&"DirIV"),
                raw64: flags.contains(&"Raw64"),
            },
        })
    }
}

/// The keys derived from a master key, for `format`. A clone is wiped
/// when dropped, as the original is.
#[derive(Clone)]
pub struct Keys {
    pub format: Format,
    names: Aes256,
    content: [u8; content::KEY_LEN],
}

impl Keys {
    /// Derives the name and content keys from the 32-byte master key.
    pub fn derive(master: &[u8; 32], format: Format) -> Keys {
        let hkdf = Hkdf::<Sha256>::new(None, master);
        let mut names = [0u8; 32];
        let mut content = [0u8; content::KEY_LEN];
        hkdf.expand(b"EME filename encryption", &mut names)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        hkdf.expand(b"AES-SIV file content encryption", &mut content)
            .expect("64 bytes is a valid HKDF-SHA256 length");
        let cipher = Aes256::new(&Array::from(names));
        wipe(&mut names);
        Keys {
            format,
            names: cipher,
            content,
        }
    }

    /// A content cipher (each thread that decrypts needs its own).
    pub fn content(&self) -> ContentCipher {
        ContentCipher::new(&self.content)
    }

    pub fn name_cipher(&self) -> &Aes256 {
        &self.names
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        wipe(&mut self.content);
    }
}

/// Overwrites key bytes before their memory goes.
pub fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: a valid, aligned &mut u8; volatile so the write stays.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REVERSE: &str = r#"{"Version": 2, "FeatureFlags": ["HKDF", "GCMIV128", "DirIV",
        "EMENames", "LongNames", "Raw64", "AESSIV"]}"#;

    #[test]
    fn reads_what_gocryptfs_init_reverse_writes() {
        let format = Format::of_config(REVERSE).unwrap();
        assert!(format.naming.per_directory_iv && format.naming.raw64);
        let deterministic = REVERSE.replace("\"DirIV\",", "");
        let format = Format::of_config(&deterministic).unwrap();
        assert!(!format.naming.per_directory_iv);
    }

    #[test]
    fn leaves_every_other_format_to_gocryptfs() {
        for (what, config) in [
            (
                "plaintext names",
                REVERSE.replace("\"EMENames\"", "\"PlaintextNames\""),
            ),
            ("GCM content", REVERSE.replace(", \"AESSIV\"", "")),
            (
                "a long name max",
                REVERSE.replace("\"Raw64\"", "\"Raw64\", \"LongNameMax\""),
            ),
            ("no HKDF", REVERSE.replace("\"HKDF\", ", "")),
            ("version 1", REVERSE.replace("2,", "1,")),
            ("not JSON", "Version 2".to_string()),
        ] {
            assert_eq!(Format::of_config(&config), None, "{what}");
        }
    }
}
