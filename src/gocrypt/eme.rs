//! EME (ECB-Mix-ECB), the wide-block mode gocryptfs encrypts names with
//! (Halevi and Rogaway, "A Parallelizable Enciphering Mode", 2003), as
//! github.com/rfjakob/eme computes it: the whole name is one block of
//! 16 to 2048 bytes under a 16-byte tweak (the directory's IV).

use aes::Aes256;
use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt};

const BLOCK: usize = 16;
/// EME enciphers 1 to 128 AES blocks.
pub const MAX_BLOCKS: usize = 128;

#[derive(Clone, Copy, PartialEq)]
pub enum Direction {
    Encrypt,
    Decrypt,
}

/// EME-transforms `data` (a whole number of 1 to 128 blocks) under
/// `tweak`. None for a length EME does not take.
pub fn transform(
    aes: &Aes256,
    tweak: &[u8; BLOCK],
    data: &[u8],
    direction: Direction,
) -> Option<Vec<u8>> {
    let m = data.len() / BLOCK;
    if !data.len().is_multiple_of(BLOCK) || m == 0 || m > MAX_BLOCKS {
        return None;
    }
    let cipher = |block: &mut [u8]| {
        let mut b = Array::from(<[u8; BLOCK]>::try_from(&*block).expect("16 bytes"));
        match direction {
            Direction::Encrypt => aes.encrypt_block(&mut b),
            Direction::Decrypt => aes.decrypt_block(&mut b),
        }
        block.copy_from_slice(&b);
    };
    let l_table = l_table(aes, m);
    let mut c = data.to_vec();
    // PPPj = AES(K; 2^(j-1) L xor Pj)
    for (j, chunk) in c.chunks_mut(BLOCK).enumerate() {
        xor_into(chunk, &l_table[j]);
        cipher(chunk);
    }
    // MP = (xor of PPPj) xor T; MC = AES(K; MP); M = MP xor MC
    let mut mp = *tweak;
    for chunk in c.chunks(BLOCK) {
        xor_into(&mut mp, chunk);
    }
    let mut mc = mp;
    cipher(&mut mc);
    let mut mask = mp;
    xor_into(&mut mask, &mc);
    // CCCj = 2^(j-1) M xor PPPj for j > 1
    for chunk in c.chunks_mut(BLOCK).skip(1) {
        mask = times_two(&mask);
        xor_into(chunk, &mask);
    }
    // CCC1 = (xor of CCCj, j > 1) xor T xor MC
    let mut ccc1 = mc;
    xor_into(&mut ccc1, tweak);
    for chunk in c.chunks(BLOCK).skip(1) {
        xor_into(&mut ccc1, chunk);
    }
    c[..BLOCK].copy_from_slice(&ccc1);
    // Cj = AES(K; CCCj) xor 2^(j-1) L
    for (j, chunk) in c.chunks_mut(BLOCK).enumerate() {
        cipher(chunk);
        xor_into(chunk, &l_table[j]);
    }
    Some(c)
}

/// L_j = 2^j * AES-encrypt(K; 0), j = 1..=m (the encryption in both
/// directions).
fn l_table(aes: &Aes256, m: usize) -> Vec<[u8; BLOCK]> {
    let mut zero = Array::from([0u8; BLOCK]);
    aes.encrypt_block(&mut zero);
    let mut l: [u8; BLOCK] = zero.into();
    (0..m)
        .map(|_| {
            l = times_two(&l);
            l
        })
        .collect()
}

/// Multiplication by 2 in GF(2^128), little-endian bytes, as EME-32.
fn times_two(x: &[u8; BLOCK]) -> [u8; BLOCK] {
    let mut out = [0u8; BLOCK];
    out[0] = x[0].wrapping_mul(2);
    if x[15] >= 128 {
        out[0] ^= 135;
    }
    for j in 1..BLOCK {
        out[j] = x[j].wrapping_mul(2);
        if x[j - 1] >= 128 {
            out[j] = out[j].wrapping_add(1);
        }
    }
    out
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::KeyInit;

    fn aes() -> Aes256 {
        Aes256::new(&Array::from([7u8; 32]))
    }

    #[test]
    fn decrypt_undoes_encrypt_for_every_length() {
        let tweak = [9u8; 16];
        for blocks in [1, 2, 3, 16, 128] {
            let data: Vec<u8> = (0..blocks * 16).map(|i| i as u8).collect();
            let enc = transform(&aes(), &tweak, &data, Direction::Encrypt).unwrap();
            assert_ne!(enc, data);
            let dec = transform(&aes(), &tweak, &enc, Direction::Decrypt).unwrap();
            assert_eq!(dec, data, "{blocks} block(s)");
        }
    }

    #[test]
    fn the_tweak_changes_every_block() {
        let data = [1u8; 48];
        let a = transform(&aes(), &[0; 16], &data, Direction::Encrypt).unwrap();
        let b = transform(&aes(), &[1; 16], &data, Direction::Encrypt).unwrap();
        for (x, y) in a.chunks(16).zip(b.chunks(16)) {
            assert_ne!(x, y);
        }
    }

    #[test]
    fn lengths_eme_does_not_take_are_refused() {
        for len in [0, 15, 17, 129 * 16] {
            assert!(transform(&aes(), &[0; 16], &vec![0; len], Direction::Decrypt).is_none());
        }
    }
}
