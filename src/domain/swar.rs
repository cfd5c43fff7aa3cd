//! Byte scans eight bytes at a time (one `u64` a step), for the engine's
//! text checks: printable ASCII in the parser, characters to escape in the
//! body writer.

/// `0x01` in every byte.
pub(crate) const ONES: u64 = 0x0101_0101_0101_0101;
/// `0x80` in every byte.
pub(crate) const HIGH: u64 = 0x8080_8080_8080_8080;

/// `b` in every byte.
pub(crate) const fn splat(b: u8) -> u64 {
    b as u64 * ONES
}

/// Whether a byte of `w` is zero (exact: a borrow only ever runs past a
/// byte that is zero itself).
pub(crate) fn has_zero(w: u64) -> bool {
    w.wrapping_sub(ONES) & !w & HIGH != 0
}

/// Whether `word` holds for one of `bytes`' whole eight-byte words (read
/// little-endian), or `byte` for one of the bytes left over. `word` must
/// say of a word what `byte` says of any of its bytes.
#[inline]
pub(crate) fn any(bytes: &[u8], word: impl Fn(u64) -> bool, byte: impl Fn(u8) -> bool) -> bool {
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        if word(u64::from_le_bytes(w)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| byte(b))
}

/// Asserts that `scan` finds a byte in a run of `a`s (of every length up
/// to 19) exactly when `byte` holds for it, for every byte value at every
/// place of a word and of the tail.
#[cfg(test)]
pub(crate) fn check_each_byte_at_each_place(
    scan: impl Fn(&[u8]) -> bool,
    byte: impl Fn(u8) -> bool,
) {
    for len in 0..20 {
        for at in 0..len {
            for b in 0..=255u8 {
                let mut bytes = vec![b'a'; len];
                bytes[at] = b;
                assert_eq!(scan(&bytes), byte(b), "{b:#x} at {at} of {len}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_zero_finds_exactly_the_words_with_a_zero_byte() {
        for i in 0..8 {
            for b in [0u8, 1, 0x7f, 0x80, 0xff] {
                let w = (u64::from(b) << (8 * i)) | (!(0xff_u64 << (8 * i)) & splat(0x42));
                assert_eq!(has_zero(w), b == 0, "byte {b:#x} at {i}");
            }
        }
        assert!(!has_zero(splat(0x01)));
        assert!(has_zero(0));
    }

    #[test]
    fn any_looks_at_whole_words_and_the_rest() {
        let is_x = |b: u8| b == b'x';
        let word_has_x = |w: u64| has_zero(w ^ splat(b'x'));
        for n in 0..20 {
            for at in 0..n {
                let mut v = vec![b'a'; n];
                v[at] = b'x';
                assert!(any(&v, word_has_x, is_x), "{n} {at}");
            }
            assert!(!any(&vec![b'a'; n], word_has_x, is_x), "{n}");
        }
    }
}
