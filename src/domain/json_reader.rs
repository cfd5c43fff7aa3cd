//! A reader of JSON text for one known shape at a time: borrowed strings,
//! whole numbers, `null`, booleans, objects whose keys are matched against
//! a table of names a word at a time, arrays. It reads a subset of JSON
//! (RFC 8259) that serde_json reads alike (no escapes in strings, no signs
//! on unsigned numbers, no fractions or exponents) and answers `None` for
//! anything else, so a caller falls back to serde for that message and
//! every value it does read is serde's.
//!
//! Used by the event parser's typed path (`events::fast`) and the
//! dispatcher's read of a stored posting (`records`' fast read).

/// The reader: a position in the message's text.
pub(crate) struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `text`.
    pub(crate) fn new(text: &'a str) -> Self {
        Self { text, at: 0 }
    }
}

impl<'a> Reader<'a> {
    /// The next byte that is not JSON whitespace, not consumed.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        // The usual case, no whitespace (all of it is at most b' '): one
        // comparison.
        if let Some(&b) = bytes.get(self.at)
            && b > b' '
        {
            return Some(b);
        }
        while let Some(&b) = bytes.get(self.at) {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    /// Consumes `b`, the next byte after whitespace.
    pub(crate) fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.at += 1)
    }

    /// A string without escapes or control characters, borrowed.
    pub(crate) fn str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let bytes = self.text.as_bytes();
        // Eight bytes at a time to the first quote, backslash or control
        // character, then byte by byte over the last few.
        while let Some(chunk) = bytes.get(self.at..self.at + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            match special(u64::from_le_bytes(word)) {
                0 => self.at += 8,
                found => {
                    self.at += (found.trailing_zeros() / 8) as usize;
                    break;
                }
            }
        }
        loop {
            match *bytes.get(self.at)? {
                b'"' => break,
                // An escape (the fallback reads it) or a control character
                // (not JSON: the fallback names it).
                b'\\' | 0x00..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        // Both ends are at an ASCII quote, so at character boundaries.
        let s = self.text.get(start..self.at)?;
        self.at += 1;
        Some(s)
    }

    /// `null`, consumed when it is next.
    pub(crate) fn null(&mut self) -> bool {
        let next = self.peek() == Some(b'n');
        if next && self.text.as_bytes()[self.at..].starts_with(b"null") {
            self.at += 4;
            true
        } else {
            false
        }
    }

    /// A string, or `null` (`None`).
    pub(crate) fn opt_str(&mut self) -> Option<Option<&'a str>> {
        if self.null() {
            Some(None)
        } else {
            self.str().map(Some)
        }
    }

    /// `true` or `false`.
    pub(crate) fn bool(&mut self) -> Option<bool> {
        let next = self.peek()?;
        let rest = &self.text.as_bytes()[self.at..];
        let (value, len) = match next {
            b't' if rest.starts_with(b"true") => (true, 4),
            b'f' if rest.starts_with(b"false") => (false, 5),
            _ => return None,
        };
        self.at += len;
        Some(value)
    }

    /// A whole number without sign, fraction or exponent that fits a
    /// `u64` (serde_json reads it as that `u64`).
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.peek()?;
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(&b) = bytes.get(self.at) {
            if !b.is_ascii_digit() {
                break;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            self.at += 1;
        }
        let len = self.at - start;
        // No digits, a leading zero, or a fraction or exponent next.
        if len == 0
            || len > 1 && bytes[start] == b'0'
            || matches!(bytes.get(self.at), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        Some(n)
    }

    /// An object's key when it is one of `keys`: the name as the table
    /// holds it. `None` for any other key, or one with an escape (the fallback
    /// reads those).
    pub(crate) fn key<const N: usize>(&mut self, keys: &Keys<N>) -> Option<&'static str> {
        if self.peek()? != b'"' {
            return None;
        }
        let bytes = self.text.as_bytes();
        let Some(chunk) = bytes.get(self.at + 1..self.at + 1 + KEY_BYTES) else {
            // Near the message's end: read as a string, then looked up.
            let key = self.str()?;
            return keys.names.into_iter().find(|name| *name == key);
        };
        let mut words = [0u64; KEY_WORDS];
        for (w, bytes) in words.iter_mut().zip(chunk.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(bytes);
            *w = u64::from_le_bytes(word);
        }
        let i = (0..N)
            .find(|&i| (0..KEY_WORDS).all(|k| words[k] & keys.masks[i][k] == keys.words[i][k]))?;
        // The quotes and the name are ASCII: `at` stays at a character
        // boundary.
        self.at += keys.names[i].len() + 2;
        Some(keys.names[i])
    }

    /// An object whose members `member` reads, each after its key, one of
    /// `keys`; `member` answers `None` for a key it does not take (or
    /// takes twice), and any other key gives `None`.
    pub(crate) fn object<const N: usize>(
        &mut self,
        keys: &Keys<N>,
        mut member: impl FnMut(&mut Self, &'static str) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = self.key(keys)?;
            self.eat(b':')?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array of what `item` reads; at most `max` items are read (more
    /// is the fallback's to read or refuse).
    pub(crate) fn array<T>(
        &mut self,
        max: usize,
        mut item: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<Vec<T>> {
        self.eat(b'[')?;
        // Room for an order's few lines or payments without growing.
        let mut items = Vec::with_capacity(8);
        if self.peek()? == b']' {
            self.at += 1;
            return Some(items);
        }
        loop {
            if items.len() == max {
                return None;
            }
            items.push(item(self)?);
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(items);
                }
                _ => return None,
            }
        }
    }

    /// An array, or `null` (`None`).
    pub(crate) fn opt_array<T>(
        &mut self,
        max: usize,
        item: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<Option<Vec<T>>> {
        if self.null() {
            Some(None)
        } else {
            self.array(max, item).map(Some)
        }
    }

    /// A whole number that fits an `i64`: a `-` (not before `0`), then
    /// what [`Reader::u64`] takes (serde_json reads it as that `i64`; it
    /// reads `-0` as a float, which an integer field refuses).
    pub(crate) fn i64(&mut self) -> Option<i64> {
        if self.peek()? != b'-' {
            return i64::try_from(self.u64()?).ok();
        }
        self.at += 1;
        if self.text.as_bytes().get(self.at) == Some(&b'0') {
            return None;
        }
        let n = self.u64()?;
        // -(2^63) is the one magnitude above i64::MAX that fits.
        0i64.checked_sub_unsigned(n)
    }

    /// Skips one value of any shape exactly as serde_json reads one it
    /// ignores (`IgnoredAny`): what it accepts, this accepts.
    pub(crate) fn skip_value(&mut self) -> Option<()> {
        use serde::de::IgnoredAny;
        let rest = self.text.get(self.at..)?;
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<IgnoredAny>();
        values.next()?.ok()?;
        self.at += values.byte_offset();
        Some(())
    }

    /// Nothing but whitespace is left.
    pub(crate) fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }
}

/// The high bit of each byte of `w` (little-endian) that is a quote, a
/// backslash or a control character (below 0x20), and maybe of bytes
/// above such a byte: the lowest bit set is always the first such byte
/// (a borrow only ever runs past a byte that is zero itself), 0 when there
/// is none.
fn special(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    zero(w & (0xe0 * ONES))
        | zero(w ^ (u64::from(b'"') * ONES))
        | zero(w ^ (u64::from(b'\\') * ONES))
}

/// The member names an object of one shape may have, each with what
/// reads it from the message by comparing words: its bytes and closing
/// quote, and which bytes of the words are its. A key is one of them
/// exactly when the bytes after its opening quote begin with one's name
/// and quote (a name holds no quote or backslash, so that quote ends the
/// key), without scanning the key and then matching its text.
pub(crate) struct Keys<const N: usize> {
    names: [&'static str; N],
    words: [[u64; KEY_WORDS]; N],
    masks: [[u64; KEY_WORDS]; N],
}

/// The bytes compared for a key: a name and its quote fit.
const KEY_BYTES: usize = 24;
const KEY_WORDS: usize = KEY_BYTES / 8;

impl<const N: usize> Keys<N> {
    pub(crate) const fn new(names: [&'static str; N]) -> Self {
        let mut words = [[0u64; KEY_WORDS]; N];
        let mut masks = [[0u64; KEY_WORDS]; N];
        let mut i = 0;
        while i < N {
            let name = names[i].as_bytes();
            assert!(name.len() < KEY_BYTES, "a key name and its quote fit");
            let mut j = 0;
            while j <= name.len() {
                let b = if j < name.len() { name[j] } else { b'"' };
                assert!(
                    j == name.len() || (b != b'"' && b != b'\\' && b >= 0x20),
                    "a key name needs no escape"
                );
                words[i][j / 8] |= (b as u64) << (8 * (j % 8));
                masks[i][j / 8] |= 0xff << (8 * (j % 8));
                j += 1;
            }
            i += 1;
        }
        Self {
            names,
            words,
            masks,
        }
    }
}

/// Marks field `bit` of an object as read: `None` when it already was
/// (a key given twice: serde refuses it, or a tree takes the last one).
pub(crate) fn first(seen: &mut u16, bit: u16) -> Option<()> {
    let once = *seen & bit == 0;
    *seen |= bit;
    once.then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names of every length a table takes, 1 to 23 bytes.
    const TEST_KEYS: Keys<5> = Keys::new([
        "a",
        "id",
        "unit_price",
        "previous_subject_seq",
        "twenty_three_characters",
    ]);

    /// A key is read as the table's name exactly when it is that name,
    /// with enough of the message after it for the words and without
    /// (near the end, where it is read as a string).
    #[test]
    fn keys_are_read_as_exactly_their_names() {
        let names = TEST_KEYS.names;
        for tail in ["", ":1}", ":1,\"padding_to_pass_the_words\":2}"] {
            for (i, name) in names.iter().enumerate() {
                let text = format!("\"{name}\"{tail}");
                let mut r = Reader { text: &text, at: 0 };
                assert_eq!(r.key(&TEST_KEYS), Some(names[i]), "{text}");
                assert_eq!(r.at, name.len() + 2, "{text}");
                for other in [
                    format!("\"{name}x\"{tail}"),
                    format!("\"{}\"{tail}", &name[..name.len() - 1]),
                    format!("\"{name}\\\"\"{tail}"),
                    format!("\"x{name}\"{tail}"),
                    format!("{name}\"{tail}"),
                ] {
                    let mut r = Reader {
                        text: &other,
                        at: 0,
                    };
                    assert_eq!(r.key(&TEST_KEYS), None, "{other}");
                }
            }
        }
        let mut r = Reader {
            text: " \n\"id\" :",
            at: 0,
        };
        assert_eq!(r.key(&TEST_KEYS), Some("id"));
        assert_eq!(r.peek(), Some(b':'));
    }
}
