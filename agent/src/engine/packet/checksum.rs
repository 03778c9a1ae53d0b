//! The Internet checksum (RFC 1071), summed 64 bits at a time.

/// Adds `data` to a running ones'-complement sum. `data` must start at an even offset of the
/// checksummed region (every caller passes whole headers or payloads that follow them).
///
/// The hot loop of the sender (one pass over every payload byte), so it sums native-endian
/// 64-bit words into a 128-bit accumulator (add-with-carry, no per-word folding) and swaps
/// bytes once at the end: the ones'-complement sum does not care about byte order
/// (RFC 1071 §2(B)).
pub fn sum(acc: u64, data: &[u8]) -> u64 {
    let word = |c: &[u8]| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    let (mut a, mut b, mut c, mut d) = (0u128, 0u128, 0u128, 0u128);
    let mut blocks = data.chunks_exact(32);
    for x in &mut blocks {
        a += word(&x[0..8]) as u128;
        b += word(&x[8..16]) as u128;
        c += word(&x[16..24]) as u128;
        d += word(&x[24..32]) as u128;
    }
    let mut wide = a + b + c + d;
    let mut words = blocks.remainder().chunks_exact(8);
    for x in &mut words {
        wide += word(x) as u128;
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut pad = [0u8; 8];
        pad[..rest.len()].copy_from_slice(rest);
        wide += u64::from_ne_bytes(pad) as u128;
    }
    while wide > 0xffff {
        wide = (wide & 0xffff) + (wide >> 16);
    }
    let native = wide as u16;
    let be = if cfg!(target_endian = "little") {
        native.swap_bytes()
    } else {
        native
    };
    acc + be as u64
}

/// Folds a running sum to 16 bits (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// The checksum of an IPv4 header (20–60 bytes), summed as big-endian 32-bit words: every
/// segment sent and received has its header checksummed, and for 20 bytes [`sum`]'s wide
/// accumulators and 128-bit fold cost several times as much (docs/benchmarks.md).
/// Adding 32-bit words is the same ones'-complement sum, since 2^16 ≡ 1 (mod 2^16 − 1).
pub fn header_checksum(hdr: &[u8]) -> u16 {
    let mut words = hdr.chunks_exact(4);
    let mut acc: u64 = 0;
    for w in &mut words {
        acc += u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as u64;
    }
    let mut pad = [0u8; 4];
    let rest = words.remainder();
    pad[..rest.len()].copy_from_slice(rest);
    acc += u32::from_be_bytes(pad) as u64;
    !fold(acc)
}

/// The IPv6 pseudo-header sum (RFC 8200 §8.1) for a transport segment of `len` bytes.
pub(super) fn pseudo_header6(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    sum(0, src) + sum(0, dst) + proto as u64 + len as u64
}

/// The IPv4 pseudo-header sum for a transport segment of `len` bytes.
pub(super) fn pseudo_header(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u64 {
    sum(0, &src) + sum(0, &dst) + proto as u64 + len as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &data)), 0xddf2);
        // Odd lengths pad with a zero byte.
        assert_eq!(fold(sum(0, &[0xab])), 0xab00);
        assert_eq!(
            fold(sum(0, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])),
            fold(sum(0, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0]))
        );
    }

    /// RFC 1071 the plain way: big-endian 16-bit words.
    fn naive_sum(data: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        for w in data.chunks(2) {
            acc += u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u64;
        }
        fold(acc)
    }

    #[test]
    fn header_checksum_agrees_with_the_general_one_at_every_header_length() {
        let data: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        for len in 0..=64 {
            assert_eq!(
                header_checksum(&data[..len]),
                checksum(&data[..len]),
                "len {len}"
            );
        }
        // A real header with its checksum filled in sums to zero.
        let mut h = [
            0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0,
            0xc7,
        ];
        let c = header_checksum(&h);
        assert_eq!(c, 0xb861);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(header_checksum(&h), 0);
    }

    #[test]
    fn fast_sum_agrees_with_the_plain_one_at_every_length() {
        let data: Vec<u8> = (0..3000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for len in (0..200).chain([1400, 1447, 2999, 3000]) {
            assert_eq!(
                fold(sum(0, &data[..len])),
                naive_sum(&data[..len]),
                "len {len}"
            );
        }
        let ones = vec![0xffu8; 65535];
        assert_eq!(fold(sum(0, &ones)), naive_sum(&ones));
    }
}
