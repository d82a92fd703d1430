//! The view the detectors scan: the text's bytes with Unicode folded to the ASCII the patterns
//! know, and a map back to the original byte offsets.
//!
//! Folding (NFKC where it matters, ADR 019): full-width forms become ASCII, every Unicode space
//! (no-break, narrow, ideographic …) a space, zero-width characters (ZWSP, ZWJ, word joiner, BOM,
//! soft hyphen, directional marks) disappear, Unicode dashes a `-`, curly quotes and guillemets a quote, decimal digits
//! of other scripts ASCII digits, and compatibility characters (ligatures, circled and
//! mathematical digits …) their NFKC form when that is ASCII. Letters of scripts written without
//! spaces (Han, kana, Hangul, Thai …) become the boundary `0x1F`, as every other symbol does;
//! every other non-ASCII letter or digit becomes `0x80` (a word character no pattern matches). So a value wrapped in `«…»` or `「…」`, or grouped with NBSPs, is seen as ASCII.

use unicode_normalization::UnicodeNormalization;

/// A word character that no detector's pattern contains.
pub(super) const WORD: u8 = 0x80;
/// A boundary that no detector's pattern contains.
pub(super) const BOUNDARY: u8 = 0x1F;

/// The folded bytes, and where they came from when the text was not pure ASCII.
#[derive(Debug)]
pub(super) struct Folded<'a> {
    pub bytes: std::borrow::Cow<'a, [u8]>,
    /// One mark for each non-ASCII character, in order; ASCII in between maps one to one.
    marks: Vec<Mark>,
}

/// A non-ASCII character: where its folded bytes start, how many there are (none when it was
/// dropped), and its original byte range.
#[derive(Debug, Clone, Copy)]
struct Mark {
    folded: u32,
    count: u32,
    original: u32,
    len: u32,
}

impl<'a> Folded<'a> {
    pub fn new(text: &'a str) -> Self {
        if text.is_ascii() {
            return Self {
                bytes: std::borrow::Cow::Borrowed(text.as_bytes()),
                marks: Vec::new(),
            };
        }
        let src = text.as_bytes();
        let mut bytes = Vec::with_capacity(text.len());
        let mut marks = Vec::new();
        let mut at = 0;
        while at < src.len() {
            // ASCII runs are copied whole.
            let run = src[at..]
                .iter()
                .position(|b| *b >= 0x80)
                .unwrap_or(src.len() - at);
            bytes.extend_from_slice(&src[at..at + run]);
            at += run;
            let Some(c) = text[at..].chars().next() else {
                break;
            };
            let folded = bytes.len() as u32;
            match fold(c) {
                Fold::One(b) => bytes.push(b),
                Fold::Drop => {}
                Fold::Nfkc => {
                    let mut ascii = [0u8; 8];
                    let mut n = 0;
                    let mut all_ascii = true;
                    for d in std::iter::once(c).nfkc() {
                        if !d.is_ascii() || n == ascii.len() {
                            all_ascii = false;
                            break;
                        }
                        ascii[n] = d as u8;
                        n += 1;
                    }
                    if all_ascii && n > 0 {
                        bytes.extend_from_slice(&ascii[..n]);
                    } else {
                        bytes.push(class(c));
                    }
                }
            }
            marks.push(Mark {
                folded,
                count: bytes.len() as u32 - folded,
                original: at as u32,
                len: c.len_utf8() as u32,
            });
            at += c.len_utf8();
        }
        Self {
            bytes: std::borrow::Cow::Owned(bytes),
            marks,
        }
    }

    /// The original byte range of the folded range `start..end` (non-empty).
    pub fn original(&self, start: usize, end: usize) -> (usize, usize) {
        if self.marks.is_empty() {
            return (start, end);
        }
        (self.locate(start).0, self.locate(end - 1).1)
    }

    /// The original byte range of the character that gave the folded byte `p`.
    fn locate(&self, p: usize) -> (usize, usize) {
        let p = p as u32;
        let k = self.marks.partition_point(|m| m.folded <= p);
        let (o, f) = match k.checked_sub(1).map(|k| self.marks[k]) {
            None => (p, p),
            Some(m) if p < m.folded + m.count => {
                return (m.original as usize, (m.original + m.len) as usize);
            }
            Some(m) => (m.original + m.len, m.folded + m.count),
        };
        let at = (o + (p - f)) as usize;
        (at, at + 1)
    }
}

enum Fold {
    One(u8),
    Drop,
    Nfkc,
}

/// Zero digits of the scripts whose decimal digits are folded to ASCII.
const ZEROS: &[u32] = &[
    0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6, 0x0D66,
    0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x17E0, 0x1810, 0xFF10,
];

fn fold(c: char) -> Fold {
    let u = c as u32;
    match u {
        // Full-width ASCII: exactly what NFKC does, without the table walk.
        0xFF01..=0xFF5E => Fold::One((u - 0xFEE0) as u8),
        0x00A0 | 0x1680 | 0x2000..=0x200A | 0x202F | 0x205F | 0x3000 | 0x2028 | 0x2029 => {
            Fold::One(b' ')
        }
        // Zero-width characters, and the directional marks right-to-left text puts around numbers.
        0x200B..=0x200F
        | 0x2060..=0x2064
        | 0xFEFF
        | 0x00AD
        | 0x180E
        | 0x034F
        | 0x202A..=0x202E
        | 0x2066..=0x2069
        | 0x061C => Fold::Drop,
        0x2010..=0x2013 | 0x2212 | 0x2043 | 0xFE58 | 0xFE63 => Fold::One(b'-'),
        // Em dashes and bars set words apart; they never join the parts of a value.
        0x2014 | 0x2015 | 0x2E3A | 0x2E3B => Fold::One(BOUNDARY),
        0x2018..=0x201B | 0x2039 | 0x203A | 0x2032 | 0x02BC => Fold::One(b'\''),
        0x201C..=0x201F | 0x00AB | 0x00BB | 0x2033 | 0x301D..=0x301F => Fold::One(b'"'),
        // CJK brackets are quotes to the detectors: they wrap a value, they never open a group.
        0x3008..=0x3011 | 0x3014..=0x301B | 0xFF62 | 0xFF63 => Fold::One(b'"'),
        0x3001 | 0xFF64 => Fold::One(b','),
        0x3002 | 0xFF61 => Fold::One(b'.'),
        // The numero sign is a label, not letters to glue to the number (`№4111…`).
        0x2116 => Fold::One(BOUNDARY),
        0x2070..=0x209F
        | 0x2100..=0x24FF
        | 0x2776..=0x2793
        | 0x3200..=0x33FF
        | 0xFB00..=0xFB4F
        | 0xFE10..=0xFE6F
        | 0xFF00..=0xFFEF
        | 0x1D400..=0x1D7FF
        | 0x1F100..=0x1F1FF => Fold::Nfkc,
        _ => match ZEROS.iter().find(|z| (**z..**z + 10).contains(&u)) {
            Some(z) => Fold::One(b'0' + (u - z) as u8),
            // Scripts written without spaces between words (Han, kana, Hangul, Thai, Lao,
            // Khmer, Myanmar): a number is glued to the words around it, so their letters are
            // boundaries, not parts of a word.
            None if unspaced(u) => Fold::One(BOUNDARY),
            None => Fold::One(class(c)),
        },
    }
}

fn unspaced(u: u32) -> bool {
    matches!(
        u,
        0x0E00..=0x0EFF
            | 0x1000..=0x109F
            | 0x1100..=0x11FF
            | 0x1780..=0x17FF
            | 0x3040..=0x30FF
            | 0x3400..=0x4DBF
            | 0x4E00..=0x9FFF
            | 0xAC00..=0xD7AF
            | 0xF900..=0xFAFF
            | 0x20000..=0x2FFFF
    )
}

fn class(c: char) -> u8 {
    if c.is_alphanumeric() {
        WORD
    } else if c.is_whitespace() {
        b' '
    } else {
        BOUNDARY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folded(text: &str) -> String {
        Folded::new(text)
            .bytes
            .iter()
            .map(|b| match *b {
                WORD => '▪',
                BOUNDARY => '|',
                b => char::from(b),
            })
            .collect()
    }

    #[test]
    fn unicode_folds_to_the_ascii_the_patterns_know() {
        assert_eq!(folded("４１１１\u{a0}1111"), "4111 1111");
        assert_eq!(folded("a\u{200b}b\u{feff}c\u{ad}d"), "abcd");
        assert_eq!(folded("«ada@example.com»"), "\"ada@example.com\"");
        assert_eq!(folded("2019–2023"), "2019-2023");
        assert_eq!(folded("—x—"), "|x|");
        assert_eq!(folded("「電話」"), "\"||\"");
        assert_eq!(folded("番号は090"), "|||090");
        assert_eq!(folded("٠١٢٣ ①ﬁ 📞"), "0123 1fi |");
        assert_eq!(folded("Grüße"), "Gr▪▪e");
    }

    #[test]
    fn folded_ranges_map_back_to_whole_characters() {
        let text = "x «４１\u{200b}１» y";
        let f = Folded::new(text);
        let s = f.bytes.iter().position(|b| *b == b'4').unwrap();
        let (a, b) = f.original(s, s + 3);
        assert_eq!(&text[a..b], "４１\u{200b}１");
    }
}
