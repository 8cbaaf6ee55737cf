//! Encrypted names (gocryptfs internal/nametransform): base64 of the EME
//! encryption of the padded name under the directory's IV, and long names
//! kept as the hash of the encrypted name with the name in a `.name` file.
//! A name that decrypts to something no file can be called (empty, `.`,
//! `..`, with `/` or NUL, longer than 255 bytes) is refused, as gocryptfs
//! refuses it: it is what a server that rewrote names would produce.

use aes::Aes256;
use sha2::{Digest, Sha256};

use super::base64;
use super::eme::{self, Direction};

/// Each directory's IV for its names (16 bytes), with `DirIV`.
pub const DIRIV: &str = "gocryptfs.diriv";
pub const DIRIV_LEN: usize = 16;
/// The config the reverse view shows at its root.
pub const CONFIG: &str = "gocryptfs.conf";
const LONG_PREFIX: &str = "gocryptfs.longname.";
const LONG_SUFFIX: &str = ".name";
/// The longest encrypted name a `.name` file holds: a 255-byte name
/// padded to 256 bytes in base64, as gocryptfs' ReadLongNameAt bounds it.
pub const LONG_NAME_MAX: u64 = 344;
/// The longest name on Linux, and the longest encrypted name gocryptfs
/// stores as it is: a longer one is stored as a long name.
const NAME_MAX: usize = 255;

/// How names are encrypted, from the config's feature flags.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Naming {
    /// `DirIV`: each directory has its own IV; without it (deterministic
    /// names) the IV is all zeros.
    pub per_directory_iv: bool,
    /// `Raw64`: base64 without padding.
    pub raw64: bool,
}

/// What a name in a cipher directory is.
#[derive(Debug, PartialEq)]
pub enum Stored<'a> {
    /// gocryptfs' own: a directory IV, a long name's `.name` file, the
    /// config at the root. Nothing to restore.
    Metadata,
    /// An encrypted name.
    Short(&'a [u8]),
    /// A long name: its encrypted name is in the `.name` file beside it.
    Long(&'a [u8]),
}

/// Classifies the cipher name `name` of an entry of a directory (the
/// top one where `at_top`).
pub fn classify(name: &[u8], at_top: bool) -> Stored<'_> {
    let is = |s: &str| name == s.as_bytes();
    if is(DIRIV) || (at_top && is(CONFIG)) {
        return Stored::Metadata;
    }
    match name.strip_prefix(LONG_PREFIX.as_bytes()) {
        Some(rest) if rest.ends_with(LONG_SUFFIX.as_bytes()) => Stored::Metadata,
        Some(hash) => Stored::Long(hash),
        None => Stored::Short(name),
    }
}

/// The name of the `.name` file of the long name `cipher_name`.
pub fn long_name_file(cipher_name: &[u8]) -> Vec<u8> {
    [cipher_name, LONG_SUFFIX.as_bytes()].concat()
}

#[derive(Debug, PartialEq)]
pub enum NameError {
    NotBase64,
    NotWholeBlocks,
    BadPadding,
    Invalid(&'static str),
    LongNameMismatch,
    LongNameFile,
    /// A long name's `.name` file holds a name short enough to be stored
    /// as it is: the same plaintext could then be stored twice.
    LongNameShort,
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameError::NotBase64 => f.write_str("not base64"),
            NameError::NotWholeBlocks => f.write_str("not a whole number of 16-byte blocks"),
            NameError::BadPadding => {
                f.write_str("decrypts to bad padding (wrong key or altered name)")
            }
            NameError::Invalid(why) => write!(f, "decrypts to a name no file can have ({why})"),
            NameError::LongNameMismatch => {
                f.write_str("its .name file holds a name whose hash is not this one")
            }
            NameError::LongNameFile => {
                f.write_str("its .name file is missing, empty or longer than 344 bytes")
            }
            NameError::LongNameShort => f.write_str(
                "its .name file holds a name of 255 bytes or less, which gocryptfs never stores so",
            ),
        }
    }
}

/// The plaintext of the short encrypted name `cipher_name` in a directory
/// whose IV is `iv`.
pub fn decrypt(
    aes: &Aes256,
    naming: Naming,
    cipher_name: &[u8],
    iv: &[u8; DIRIV_LEN],
) -> Result<Vec<u8>, NameError> {
    let bytes = base64::decode(cipher_name, !naming.raw64).ok_or(NameError::NotBase64)?;
    if bytes.is_empty() || bytes.len() % 16 != 0 {
        return Err(NameError::NotWholeBlocks);
    }
    let padded =
        eme::transform(aes, iv, &bytes, Direction::Decrypt).ok_or(NameError::NotWholeBlocks)?;
    let name = unpad16(&padded).ok_or(NameError::BadPadding)?;
    check_plain(name)?;
    Ok(name.to_vec())
}

/// Checks that the `.name` file's content `long` belongs to the long name
/// whose hash part is `hash` (SHA-256 of the encrypted name, in base64),
/// and returns the encrypted name to decrypt. gocryptfs hashes only
/// encrypted names longer than 255 bytes (no `LongNameMax`: Format).
pub fn check_long<'a>(naming: Naming, hash: &[u8], long: &'a [u8]) -> Result<&'a [u8], NameError> {
    if long.len() <= NAME_MAX {
        return Err(NameError::LongNameShort);
    }
    let stored = base64::decode(hash, !naming.raw64).ok_or(NameError::NotBase64)?;
    match stored[..] == Sha256::digest(long)[..] {
        true => Ok(long),
        false => Err(NameError::LongNameMismatch),
    }
}

/// PKCS#7 padding to 16 bytes removed; None where it is not such padding.
fn unpad16(padded: &[u8]) -> Option<&[u8]> {
    let pad = usize::from(*padded.last()?);
    if pad == 0 || pad > 16 || pad >= padded.len() {
        return None;
    }
    let (name, padding) = padded.split_at(padded.len() - pad);
    padding
        .iter()
        .all(|&b| usize::from(b) == pad)
        .then_some(name)
}

fn check_plain(name: &[u8]) -> Result<(), NameError> {
    let why = match name {
        [] => "empty",
        b"." | b".." => "a dot name",
        n if n.len() > NAME_MAX => "longer than 255 bytes",
        n if n.contains(&b'/') => "a slash",
        n if n.contains(&0) => "a NUL byte",
        _ => return Ok(()),
    };
    Err(NameError::Invalid(why))
}

/// Encrypts `name` as gocryptfs does (tests here build hostile names with it).
#[cfg(test)]
pub fn encrypt_for_test(aes: &Aes256, name: &[u8], iv: &[u8; DIRIV_LEN]) -> Vec<u8> {
    let pad = 16 - name.len() % 16;
    let mut padded = name.to_vec();
    padded.extend(std::iter::repeat_n(pad as u8, pad));
    eme::transform(aes, iv, &padded, Direction::Encrypt).expect("a valid length")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::{Array, KeyInit};

    const RAW: Naming = Naming {
        per_directory_iv: true,
        raw64: true,
    };

    fn aes() -> Aes256 {
        Aes256::new(&Array::from([3u8; 32]))
    }

    fn encode(bytes: &[u8]) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = Vec::new();
        for chunk in bytes.chunks(3) {
            let mut acc = 0u32;
            for (i, b) in chunk.iter().enumerate() {
                acc |= u32::from(*b) << (16 - 8 * i);
            }
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((acc >> (18 - 6 * i)) & 63) as usize]);
            }
        }
        out
    }

    #[test]
    fn a_name_round_trips() {
        let iv = [5u8; 16];
        for name in [
            &b"a"[..],
            b"exactly16bytes!!",
            b"caf\xc3\xa9 with spaces",
            &[b'x'; 255],
        ] {
            let cipher = encode(&encrypt_for_test(&aes(), name, &iv));
            assert_eq!(decrypt(&aes(), RAW, &cipher, &iv).unwrap(), name);
        }
    }

    #[test]
    fn the_wrong_directory_iv_does_not_decrypt() {
        let cipher = encode(&encrypt_for_test(&aes(), b"file.txt", &[1; 16]));
        assert_ne!(
            decrypt(&aes(), RAW, &cipher, &[2; 16]),
            Ok(b"file.txt".to_vec())
        );
    }

    #[test]
    fn names_no_file_can_have_are_refused() {
        let iv = [0u8; 16];
        for (name, why) in [
            (&b".."[..], "a dot name"),
            (b".", "a dot name"),
            (b"a/b", "a slash"),
            (b"../../etc/passwd", "a slash"),
            (b"nul\0byte", "a NUL byte"),
        ] {
            let cipher = encode(&encrypt_for_test(&aes(), name, &iv));
            assert_eq!(
                decrypt(&aes(), RAW, &cipher, &iv),
                Err(NameError::Invalid(why))
            );
        }
        let long = encode(&encrypt_for_test(&aes(), &[b'y'; 256], &iv));
        assert_eq!(
            decrypt(&aes(), RAW, &long, &iv),
            Err(NameError::Invalid("longer than 255 bytes"))
        );
        assert_eq!(
            decrypt(&aes(), RAW, b"not base64!", &iv),
            Err(NameError::NotBase64)
        );
        assert_eq!(
            decrypt(&aes(), RAW, b"AAAA", &iv),
            Err(NameError::NotWholeBlocks)
        );
    }

    #[test]
    fn gocryptfs_own_names_are_not_restored() {
        assert_eq!(classify(b"gocryptfs.diriv", false), Stored::Metadata);
        assert_eq!(classify(b"gocryptfs.conf", true), Stored::Metadata);
        assert_eq!(
            classify(b"gocryptfs.conf", false),
            Stored::Short(b"gocryptfs.conf")
        );
        assert_eq!(
            classify(b"gocryptfs.longname.abc.name", false),
            Stored::Metadata
        );
        assert_eq!(
            classify(b"gocryptfs.longname.abc", false),
            Stored::Long(b"abc")
        );
        assert_eq!(
            long_name_file(b"gocryptfs.longname.abc"),
            b"gocryptfs.longname.abc.name"
        );
    }

    #[test]
    fn a_long_name_file_must_match_its_hash() {
        let long = [b'A'; 300];
        let hash = encode(&Sha256::digest(long));
        assert_eq!(check_long(RAW, &hash, &long), Ok(&long[..]));
        let other = [b'B'; 300];
        assert_eq!(
            check_long(RAW, &hash, &other),
            Err(NameError::LongNameMismatch)
        );
        // A name short enough to be stored as it is, stored as a long one
        // too: the same plaintext twice in one directory.
        let short = [b'A'; 255];
        let hash = encode(&Sha256::digest(short));
        assert_eq!(
            check_long(RAW, &hash, &short),
            Err(NameError::LongNameShort)
        );
    }
}
