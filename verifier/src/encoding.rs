//! Strict decoders for the bundle's text encodings: padded standard base64 in its one canonical
//! spelling, lowercase hex, and the store's RFC 3339 timestamps (UTC, six fractional digits).

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_value(c: u8) -> Option<u32> {
    B64.iter().position(|&x| x == c).map(|v| v as u32)
}

/// Decodes canonical padded base64; anything else (whitespace, missing padding, non-zero spare
/// bits) is refused so that one value has one spelling.
pub fn base64(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (i, chunk) in b.chunks(4).enumerate() {
        let last = i == b.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | b64_value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        // The bits a padded group does not use must be zero.
        if (pad == 1 && bytes[2] != 0) || (pad == 2 && (bytes[1] != 0 || bytes[2] != 0)) {
            return None;
        }
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// Decodes a 32-byte hash from base64.
pub fn base64_hash(s: &str) -> Option<[u8; 32]> {
    base64(s)?.try_into().ok()
}

/// Lowercase hex digit values; 0xff marks anything else.
const HEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Decodes a 32-byte hash from lowercase hex (on every event's path: no allocation).
pub fn hex_hash(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (i, o) in out.iter_mut().enumerate() {
        let (hi, lo) = (HEX[usize::from(b[2 * i])], HEX[usize::from(b[2 * i + 1])]);
        bad |= (hi | lo) & 0xf0;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad == 0).then_some(out)
}

/// Parses `YYYY-MM-DDTHH:MM:SS.ffffffZ` exactly, to microseconds since the Unix epoch.
pub fn timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 27
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[26] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 59
    {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + se) * 1_000_000) + us)
}

/// Parses a command-line time: a full timestamp as above, `YYYY-MM-DDTHH:MM:SSZ`, or a date
/// `YYYY-MM-DD` (midnight UTC).
pub fn loose_timestamp(s: &str) -> Option<i64> {
    if let Some(t) = timestamp(s) {
        return Some(t);
    }
    if s.len() == 20 && s.ends_with('Z') {
        return timestamp(&format!("{}.000000Z", &s[..19]));
    }
    if s.len() == 10 {
        return timestamp(&format!("{s}T00:00:00.000000Z"));
    }
    None
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_strict() {
        assert_eq!(base64("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(base64("Zg==").unwrap(), b"f");
        assert_eq!(base64("Zm8=").unwrap(), b"fo");
        assert!(base64("Zh==").is_none(), "non-zero spare bits");
        assert!(base64("Zg").is_none(), "missing padding");
        assert!(base64("Zg==Zg==").is_none(), "padding inside");
        assert!(base64("Zm9v\n").is_none());
        assert_eq!(base64("").unwrap(), b"");
    }

    #[test]
    fn hex_is_lowercase_and_exact() {
        let h = "00ff10a0".repeat(8);
        assert_eq!(hex_hash(&h).unwrap()[..4], [0x00, 0xff, 0x10, 0xa0]);
        assert!(hex_hash(&h.to_uppercase()).is_none());
        assert!(hex_hash(&h[..62]).is_none());
        assert!(hex_hash(&format!("{}g0", &h[..62])).is_none());
    }

    #[test]
    fn timestamps_are_exact() {
        assert_eq!(timestamp("1970-01-01T00:00:00.000000Z"), Some(0));
        assert_eq!(timestamp("1969-12-31T23:59:59.999999Z"), Some(-1));
        assert_eq!(
            timestamp("2024-02-29T00:00:00.000001Z"),
            Some(1_709_164_800_000_001)
        );
        assert!(timestamp("2023-02-29T00:00:00.000000Z").is_none());
        assert!(timestamp("2024-01-01T00:00:00.000000+00:00").is_none());
        assert_eq!(loose_timestamp("1970-01-02"), Some(86_400_000_000));
        assert_eq!(loose_timestamp("1970-01-01T00:00:01Z"), Some(1_000_000));
    }
}
