//! File contents and symlink targets (gocryptfs internal/contentenc with
//! AES-SIV): an 18-byte header, then 4,096-byte blocks, each a nonce and
//! its AES-SIV output, authenticated with the block number and the file
//! id. Every block is authenticated before a byte of it is written: a
//! block the server altered, swapped with another or moved to another
//! file fails, as does a file cut short inside a block.

use std::io::{self, Read, Write};

use aes_siv::siv::Aes256Siv;
use aes_siv::{KeyInit, Tag};

use super::base64;

/// AES-SIV-512: a 64-byte key.
pub const KEY_LEN: usize = 64;
const HEADER_LEN: usize = 18;
const FILE_ID_LEN: usize = 16;
const VERSION: u16 = 2;
const PLAIN_BLOCK: usize = 4096;
const NONCE_LEN: usize = 16;
const TAG_LEN: usize = 16;
const CIPHER_BLOCK: usize = PLAIN_BLOCK + NONCE_LEN + TAG_LEN;
/// Blocks read at once: 264 KB of ciphertext per read.
const BLOCKS_PER_READ: usize = 64;

#[derive(Debug)]
pub enum ContentError {
    Io(io::Error),
    /// The header is cut short, names another version, or its id is zero.
    BadHeader(&'static str),
    /// This block (numbered from 0) fails authentication or is cut short.
    Block(u64),
    /// A symlink target that is not base64, or decrypts to no target.
    BadLink(&'static str),
}

impl std::fmt::Display for ContentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContentError::Io(e) => write!(f, "{e}"),
            ContentError::BadHeader(why) => write!(f, "not a gocryptfs file: its header {why}"),
            ContentError::Block(n) => write!(
                f,
                "block {n} (bytes {} to {} of the plaintext) fails authentication: \
                 altered, truncated, or another key's",
                n * PLAIN_BLOCK as u64,
                (n + 1) * PLAIN_BLOCK as u64 - 1
            ),
            ContentError::BadLink(why) => write!(f, "a symlink target that {why}"),
        }
    }
}

impl From<io::Error> for ContentError {
    fn from(e: io::Error) -> ContentError {
        ContentError::Io(e)
    }
}

/// AES-SIV under a backup's content key. Each thread needs its own.
pub struct ContentCipher {
    siv: Aes256Siv,
    /// The read buffer, kept from file to file: a fresh 264 KB per file
    /// is a page-faulting allocation, zeroed, for each of 200,000 small
    /// files (a tenth of a restore's CPU, bench/analysis.md).
    stored: Vec<u8>,
    plain: Vec<u8>,
}

impl ContentCipher {
    pub fn new(key: &[u8; KEY_LEN]) -> ContentCipher {
        ContentCipher {
            siv: Aes256Siv::new(&(*key).into()),
            stored: Vec::new(),
            plain: Vec::new(),
        }
    }

    /// Decrypts a whole file read from `input` into `output`; returns the
    /// plaintext's length. Writes nothing of a block that fails.
    pub fn decrypt_file(
        &mut self,
        input: &mut impl Read,
        output: &mut impl Write,
    ) -> Result<u64, ContentError> {
        let mut header = [0u8; HEADER_LEN];
        match read_full(input, &mut header)? {
            0 => return Ok(0),
            HEADER_LEN => {}
            _ => return Err(ContentError::BadHeader("is cut short")),
        }
        let file_id = parse_header(&header)?;
        let mut stored = std::mem::take(&mut self.stored);
        let mut plain = std::mem::take(&mut self.plain);
        stored.resize(CIPHER_BLOCK * BLOCKS_PER_READ, 0);
        let done = self.decrypt_blocks(input, output, (&mut stored, &mut plain), &file_id);
        (self.stored, self.plain) = (stored, plain);
        done
    }

    /// The blocks after the header, read `stored.len()` bytes at a time.
    fn decrypt_blocks(
        &mut self,
        input: &mut impl Read,
        output: &mut impl Write,
        (stored, plain): (&mut [u8], &mut Vec<u8>),
        file_id: &[u8; FILE_ID_LEN],
    ) -> Result<u64, ContentError> {
        let (mut number, mut total) = (0u64, 0u64);
        loop {
            let read = read_full(input, stored)?;
            plain.clear();
            for block in stored[..read].chunks_mut(CIPHER_BLOCK) {
                plain.extend_from_slice(self.open_block(block, number, file_id)?);
                number += 1;
            }
            output.write_all(plain)?;
            total += plain.len() as u64;
            if read < stored.len() {
                return Ok(total);
            }
        }
    }

    /// Decrypts a whole file held in memory, in place: every block is
    /// authenticated before any byte is written, then the plaintext is
    /// written at once. Returns its length.
    pub fn decrypt_held(
        &mut self,
        stored: &mut [u8],
        output: &mut impl Write,
    ) -> Result<u64, ContentError> {
        if stored.is_empty() {
            return Ok(0);
        }
        let Some((header, blocks)) = stored.split_first_chunk_mut::<HEADER_LEN>() else {
            return Err(ContentError::BadHeader("is cut short"));
        };
        let file_id = parse_header(header)?;
        // Each block's plaintext moves down to its place in the file: the
        // place is never past the block's own bytes, so nothing unread is
        // overwritten.
        let mut end = 0;
        for (number, at) in (0..blocks.len()).step_by(CIPHER_BLOCK).enumerate() {
            let block_end = (at + CIPHER_BLOCK).min(blocks.len());
            let len = self
                .open_block(&mut blocks[at..block_end], number as u64, &file_id)?
                .len();
            let from = at + NONCE_LEN + TAG_LEN;
            blocks.copy_within(from..from + len, end);
            end += len;
        }
        output.write_all(&blocks[..end])?;
        Ok(end as u64)
    }

    /// The target of a symlink stored as `stored` (base64 of one block).
    pub fn decrypt_link(&mut self, stored: &[u8], raw64: bool) -> Result<Vec<u8>, ContentError> {
        let mut block =
            base64::decode(stored, !raw64).ok_or(ContentError::BadLink("is not base64"))?;
        let target = self
            .open_block(&mut block, 0, &[])
            .map_err(|_| ContentError::BadLink("fails authentication"))?;
        match target {
            [] => Err(ContentError::BadLink("is empty")),
            t if t.contains(&0) => Err(ContentError::BadLink("holds a NUL byte")),
            t => Ok(t.to_vec()),
        }
    }

    /// Authenticates and decrypts one stored block in place; the
    /// plaintext is the slice returned.
    fn open_block<'b>(
        &mut self,
        block: &'b mut [u8],
        number: u64,
        file_id: &[u8],
    ) -> Result<&'b [u8], ContentError> {
        if block.len() <= NONCE_LEN + TAG_LEN {
            return Err(ContentError::Block(number));
        }
        let (nonce, rest) = block.split_at_mut(NONCE_LEN);
        if nonce.iter().all(|&b| b == 0) {
            // gocryptfs refuses an all-zero nonce too (a tmpfs bug once
            // wrote zeros).
            return Err(ContentError::Block(number));
        }
        let (tag, text) = rest.split_at_mut(TAG_LEN);
        let tag = Tag::try_from(&*tag).map_err(|_| ContentError::Block(number))?;
        let mut associated = number.to_be_bytes().to_vec();
        associated.extend_from_slice(file_id);
        let headers: [&[u8]; 2] = [&associated, nonce];
        self.siv
            .decrypt_inout_detached(headers, (&mut *text).into(), &tag)
            .map_err(|_| ContentError::Block(number))?;
        Ok(text)
    }
}

/// The file id of a version-2 header.
fn parse_header(header: &[u8; HEADER_LEN]) -> Result<[u8; FILE_ID_LEN], ContentError> {
    if u16::from_be_bytes([header[0], header[1]]) != VERSION {
        return Err(ContentError::BadHeader("names a version other than 2"));
    }
    let id: [u8; FILE_ID_LEN] = header[2..].try_into().expect("16 bytes");
    match id.iter().all(|&b| b == 0) {
        true => Err(ContentError::BadHeader("has an all-zero file id")),
        false => Ok(id),
    }
}

/// Fills `buf` from `input` unless it ends first; the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Encrypts as gocryptfs does, for tests that alter the result.
#[cfg(test)]
pub fn encrypt_for_test(key: &[u8; KEY_LEN], plain: &[u8], file_id: [u8; 16]) -> Vec<u8> {
    let mut siv = Aes256Siv::new(&(*key).into());
    if plain.is_empty() {
        return Vec::new();
    }
    let mut out = VERSION.to_be_bytes().to_vec();
    out.extend_from_slice(&file_id);
    for (number, chunk) in plain.chunks(PLAIN_BLOCK).enumerate() {
        let nonce = [number as u8 + 1; NONCE_LEN];
        let mut associated = (number as u64).to_be_bytes().to_vec();
        associated.extend_from_slice(&file_id);
        let sealed = siv.encrypt([&associated[..], &nonce], chunk).unwrap();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; KEY_LEN] = [4; KEY_LEN];
    const ID: [u8; 16] = [8; 16];

    fn decrypt(stored: &[u8]) -> Result<Vec<u8>, ContentError> {
        let mut out = Vec::new();
        ContentCipher::new(&KEY).decrypt_file(&mut &stored[..], &mut out)?;
        Ok(out)
    }

    fn decrypt_held(stored: &[u8]) -> Result<Vec<u8>, ContentError> {
        let mut out = Vec::new();
        ContentCipher::new(&KEY).decrypt_held(&mut stored.to_vec(), &mut out)?;
        Ok(out)
    }

    #[test]
    fn files_of_every_shape_round_trip() {
        // One cipher for every file: its buffers are reused.
        let mut cipher = ContentCipher::new(&KEY);
        for len in [0, 1, 4095, 4096, 4097, 64 * 4096, 64 * 4096 + 1, 300_000, 5] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let stored = encrypt_for_test(&KEY, &plain, ID);
            let mut out = Vec::new();
            cipher.decrypt_file(&mut &stored[..], &mut out).unwrap();
            assert_eq!(out, plain, "{len} bytes");
            assert_eq!(decrypt_held(&stored).unwrap(), plain, "{len} bytes held");
        }
    }

    #[test]
    fn a_file_held_whole_is_written_only_once_every_block_passed() {
        let plain = vec![3u8; 3 * 4096 + 10];
        let mut stored = encrypt_for_test(&KEY, &plain, ID);
        let last_block = HEADER_LEN + 3 * CIPHER_BLOCK + NONCE_LEN + TAG_LEN + 2;
        stored[last_block] ^= 1;
        let mut out = Vec::new();
        let err = ContentCipher::new(&KEY)
            .decrypt_held(&mut stored.clone(), &mut out)
            .unwrap_err();
        assert!(matches!(err, ContentError::Block(3)), "{err}");
        assert!(out.is_empty(), "nothing of a failing file is written");
        let cut = &stored[..HEADER_LEN - 1];
        assert!(matches!(decrypt_held(cut), Err(ContentError::BadHeader(_))));
        let only_header = &stored[..HEADER_LEN + NONCE_LEN + TAG_LEN];
        assert!(matches!(
            decrypt_held(only_header),
            Err(ContentError::Block(0))
        ));
    }

    #[test]
    fn an_altered_byte_fails_its_block_and_nothing_of_it_is_written() {
        let plain = vec![1u8; 3 * 4096];
        let mut stored = encrypt_for_test(&KEY, &plain, ID);
        let second_block = HEADER_LEN + CIPHER_BLOCK + 100;
        stored[second_block] ^= 1;
        let mut out = Vec::new();
        let err = ContentCipher::new(&KEY)
            .decrypt_file(&mut &stored[..], &mut out)
            .unwrap_err();
        assert!(matches!(err, ContentError::Block(1)), "{err}");
        assert!(
            out.is_empty(),
            "the read's blocks are written only once all passed"
        );
    }

    #[test]
    fn swapped_blocks_cut_files_and_foreign_ids_fail() {
        let plain: Vec<u8> = (0..2 * 4096).map(|i| i as u8).collect();
        let stored = encrypt_for_test(&KEY, &plain, ID);
        let (head, blocks) = stored.split_at(HEADER_LEN);
        let (a, b) = blocks.split_at(CIPHER_BLOCK);
        let swapped = [head, b, a].concat();
        assert!(matches!(decrypt(&swapped), Err(ContentError::Block(0))));
        let cut = &stored[..stored.len() - 10];
        assert!(matches!(decrypt(cut), Err(ContentError::Block(1))));
        let mut other_id = stored.clone();
        other_id[5] ^= 1;
        assert!(matches!(decrypt(&other_id), Err(ContentError::Block(0))));
        let no_block = &stored[..HEADER_LEN + 20];
        assert!(matches!(decrypt(no_block), Err(ContentError::Block(0))));
    }

    #[test]
    fn bad_headers_are_named() {
        let stored = encrypt_for_test(&KEY, b"x", ID);
        assert!(matches!(
            decrypt(&stored[..5]),
            Err(ContentError::BadHeader(_))
        ));
        let mut version = stored.clone();
        version[1] = 3;
        assert!(matches!(decrypt(&version), Err(ContentError::BadHeader(_))));
        let zero_id = [&stored[..2], &[0; 16], &stored[HEADER_LEN..]].concat();
        assert!(matches!(decrypt(&zero_id), Err(ContentError::BadHeader(_))));
    }

    #[test]
    fn another_key_fails() {
        let stored = encrypt_for_test(&[5; KEY_LEN], b"secret", ID);
        assert!(matches!(decrypt(&stored), Err(ContentError::Block(0))));
    }
}
