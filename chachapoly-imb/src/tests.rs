//! The shim against ring, message by message: same ciphertext, same tag, and forgeries refused.
//! Run on whatever code the library picks on this CPU (AVX-512 or not): the shim is the same.

use super::*;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

/// The library loaded with any code, or `None` outside CI when it is not installed here.
fn any_arch() -> Option<ChaChaPoly> {
    match ChaChaPoly::load_any_code() {
        Ok(c) => Some(c),
        // The library exists for x86-64 only: CI elsewhere tests ring alone.
        Err(e) if twill_tests::in_ci() && cfg!(target_arch = "x86_64") => {
            panic!("CI=true: intel-ipsec-mb must be installed for these tests: {e}")
        }
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next() as u8;
        }
    }
}

fn ring_seal(key: &[u8; 32], nonce: &[u8; 12], data: &mut [u8]) -> [u8; 16] {
    let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).unwrap());
    let tag = k
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::empty(), data)
        .unwrap();
    tag.as_ref().try_into().unwrap()
}

#[test]
fn seals_as_ring_does_and_opens_what_ring_sealed() {
    let Some(c) = any_arch() else { return };
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut lengths: Vec<usize> = (0..=80).collect();
    lengths.extend([
        255, 256, 257, 511, 512, 1023, 1024, 1420, 1424, 1436, 1500, 9000, 65535,
    ]);
    lengths.extend((0..200).map(|_| (rng.next() % 2048) as usize));
    for len in lengths {
        let (mut key, mut nonce) = ([0u8; 32], [0u8; 12]);
        rng.fill(&mut key);
        rng.fill(&mut nonce[4..]);
        let mut plain = vec![0u8; len];
        rng.fill(&mut plain);

        let mut ours = plain.clone();
        let tag = c.seal(&key, &nonce, &mut ours).unwrap();
        let mut theirs = plain.clone();
        let their_tag = ring_seal(&key, &nonce, &mut theirs);
        assert_eq!(ours, theirs, "ciphertext differs at length {len}");
        assert_eq!(tag, their_tag, "tag differs at length {len}");

        c.open(&key, &nonce, &mut theirs, &their_tag).unwrap();
        assert_eq!(theirs, plain, "plaintext differs at length {len}");
    }
}

#[test]
fn refuses_a_flipped_bit_anywhere_and_a_wrong_key_or_nonce() {
    let Some(c) = any_arch() else { return };
    let key = [7u8; 32];
    let nonce = [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let mut sealed = b"an inner IPv4 packet, or near enough".to_vec();
    let tag = c.seal(&key, &nonce, &mut sealed).unwrap();
    for bit in 0..sealed.len() * 8 {
        let mut m = sealed.clone();
        m[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(c.open(&key, &nonce, &mut m, &tag), Err(CipherError::BadTag));
    }
    for bit in 0..128 {
        let mut t = tag;
        t[bit / 8] ^= 1 << (bit % 8);
        let mut m = sealed.clone();
        assert_eq!(c.open(&key, &nonce, &mut m, &t), Err(CipherError::BadTag));
    }
    let mut m = sealed.clone();
    assert_eq!(
        c.open(&[8u8; 32], &nonce, &mut m, &tag),
        Err(CipherError::BadTag)
    );
    let mut m = sealed.clone();
    let other = [0, 0, 0, 0, 2, 2, 3, 4, 5, 6, 7, 8];
    assert_eq!(c.open(&key, &other, &mut m, &tag), Err(CipherError::BadTag));
}

#[test]
fn threads_get_managers_of_their_own() {
    let Some(c) = any_arch() else { return };
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..500u64 {
                    let key = [t; 32];
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&i.to_le_bytes());
                    let mut data = vec![t; 1424];
                    let mut theirs = data.clone();
                    let tag = c.seal(&key, &nonce, &mut data).unwrap();
                    assert_eq!(tag, ring_seal(&key, &nonce, &mut theirs));
                    assert_eq!(data, theirs);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn load_says_why_it_cannot_be_used() {
    match ChaChaPoly::load() {
        Ok(c) => assert!(c.describe().starts_with("intel-ipsec-mb 1.")),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("libipsec-mb") || msg.contains("AVX-512"),
                "{msg}"
            );
        }
    }
}
