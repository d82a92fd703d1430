//! Secrets known by their shape rather than by a key name: providers' token prefixes (AWS, GitHub,
//! GitLab, Slack, Stripe, Google, OpenAI, npm, …), PEM private-key blocks, HTTP `Authorization`
//! headers, and long random-looking tokens (character classes mixed throughout, high entropy).
//!
//! One pass over the token starts; each check looks at a bounded window, so the scan is linear.

use super::{Detector, Finding, find_with, finder, is_word, push};

/// A provider's token: its prefix, the characters of its body, and the body's length range.
struct Shape {
    prefix: &'static [u8],
    body: fn(u8) -> bool,
    min: usize,
    max: usize,
}

fn alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}
fn upper_digit(c: u8) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit()
}
fn word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}
fn b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}
fn dashed(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}
fn hex(c: u8) -> bool {
    c.is_ascii_hexdigit()
}
fn dotted(c: u8) -> bool {
    b64url(c) || c == b'.'
}

const fn shape(prefix: &'static [u8], body: fn(u8) -> bool, min: usize, max: usize) -> Shape {
    Shape {
        prefix,
        body,
        min,
        max,
    }
}

const SHAPES: &[Shape] = &[
    // AWS access key ids (long-term, temporary, and the other principal kinds).
    shape(b"AKIA", upper_digit, 16, 16),
    shape(b"ASIA", upper_digit, 16, 16),
    shape(b"AGPA", upper_digit, 16, 16),
    shape(b"AIDA", upper_digit, 16, 16),
    shape(b"AROA", upper_digit, 16, 16),
    shape(b"AIPA", upper_digit, 16, 16),
    shape(b"ANPA", upper_digit, 16, 16),
    shape(b"ANVA", upper_digit, 16, 16),
    shape(b"APKA", upper_digit, 16, 16),
    shape(b"ABIA", upper_digit, 16, 16),
    // GitHub.
    shape(b"ghp_", alnum, 30, 255),
    shape(b"gho_", alnum, 30, 255),
    shape(b"ghu_", alnum, 30, 255),
    shape(b"ghs_", alnum, 30, 255),
    shape(b"ghr_", alnum, 30, 255),
    shape(b"github_pat_", word, 22, 255),
    // GitLab.
    shape(b"glpat-", b64url, 20, 255),
    shape(b"gldt-", b64url, 20, 255),
    shape(b"glrt-", b64url, 20, 255),
    // Slack.
    shape(b"xoxb-", dashed, 10, 255),
    shape(b"xoxp-", dashed, 10, 255),
    shape(b"xoxa-", dashed, 10, 255),
    shape(b"xoxe-", dashed, 10, 255),
    shape(b"xoxo-", dashed, 10, 255),
    shape(b"xoxr-", dashed, 10, 255),
    shape(b"xoxs-", dashed, 10, 255),
    shape(b"xapp-", dashed, 10, 255),
    // Stripe (secret and restricted keys, webhook secrets).
    shape(b"sk_live_", alnum, 10, 255),
    shape(b"sk_test_", alnum, 10, 255),
    shape(b"rk_live_", alnum, 10, 255),
    shape(b"rk_test_", alnum, 10, 255),
    shape(b"whsec_", alnum, 20, 255),
    // Google API keys and OAuth access tokens.
    shape(b"AIza", b64url, 35, 35),
    shape(b"ya29.", dotted, 20, 2048),
    // OpenAI and Anthropic.
    shape(b"sk-proj-", b64url, 20, 255),
    shape(b"sk-ant-", b64url, 20, 255),
    // npm, PyPI, Hugging Face, DigitalOcean, Shopify, SendGrid, Mailgun, Square, Atlassian.
    shape(b"npm_", alnum, 36, 36),
    shape(b"pypi-", b64url, 50, 512),
    shape(b"hf_", alnum, 30, 60),
    shape(b"dop_v1_", hex, 64, 64),
    shape(b"doo_v1_", hex, 64, 64),
    shape(b"shpat_", hex, 32, 32),
    shape(b"shpss_", hex, 32, 32),
    shape(b"shpca_", hex, 32, 32),
    shape(b"SG.", dotted, 40, 80),
    shape(b"key-", hex, 32, 32),
    shape(b"sq0atp-", b64url, 22, 60),
    shape(b"sq0csp-", b64url, 40, 60),
    shape(b"ATATT", b64url, 40, 512),
];

/// Every secret known by its shape: providers' prefixes, private keys, `Authorization` headers;
/// and, into `random`, long random-looking tokens, which yield to every other finding (a bearer
/// token or a JWT is reported as such).
pub(super) fn tokens(
    b: &[u8],
    starts: &[usize],
    long_runs: &[(usize, usize)],
    found: &mut Vec<Finding>,
    random: &mut Vec<Finding>,
) {
    if finder!(b"-----BEGIN ").find(b).is_some() {
        pem_blocks(b, found);
    }
    authorization(b, found);
    webhooks(b, found);
    if finder!(b" -u ").find(b).is_some() || finder!(b"--user ").find(b).is_some() {
        cli_credentials(b, found);
    }
    let mut done = 0;
    for &i in starts {
        if i < done || !b[i].is_ascii_alphanumeric() {
            continue;
        }
        if let Some(end) = provider_token(b, i) {
            push(found, Detector::SecretKey, i, end);
            done = end;
        }
    }
    for &(start, end) in long_runs {
        // The token starts at its first letter or digit, at a word boundary.
        let Some(i) = (start..end).find(|k| b[*k].is_ascii_alphanumeric()) else {
            continue;
        };
        if !super::before_ok(b, i) || end - i < 24 {
            continue;
        }
        let mut j = end;
        while j < b.len() && b[j] == b'=' && j < end + 2 && (j + 1 == b.len() || !b64url(b[j + 1]))
        {
            j += 1;
        }
        // Part of a dotted token (a JWT's segment, a host name) or of an address is not a token.
        let dotted_before = i >= 2 && matches!(b[i - 1], b'.' | b'@') && b64url(b[i - 2]);
        let dotted_after = j + 1 < b.len() && matches!(b[j], b'.' | b'@') && b64url(b[j + 1]);
        let end_ok = j >= b.len() || !is_word(b[j]);
        if end_ok && !dotted_before && !dotted_after {
            entropic(b, i, j, random);
        }
    }
}

/// The shapes by the first byte of their prefix, and which first two bytes any prefix has.
struct ByPrefix {
    first: Vec<Vec<&'static Shape>>,
    pairs: Vec<bool>,
}

fn by_prefix() -> &'static ByPrefix {
    static BY_PREFIX: std::sync::OnceLock<ByPrefix> = std::sync::OnceLock::new();
    BY_PREFIX.get_or_init(|| {
        let mut first: Vec<Vec<&'static Shape>> = (0..128).map(|_| Vec::new()).collect();
        let mut pairs = vec![false; 128 * 128];
        for s in SHAPES {
            first[usize::from(s.prefix[0])].push(s);
            pairs[usize::from(s.prefix[0]) * 128 + usize::from(s.prefix[1])] = true;
        }
        ByPrefix { first, pairs }
    })
}

fn provider_token(b: &[u8], i: usize) -> Option<usize> {
    let (c0, c1) = (b[i], *b.get(i + 1)?);
    if c0 >= 128 || c1 >= 128 {
        return None;
    }
    let table = by_prefix();
    if !table.pairs[usize::from(c0) * 128 + usize::from(c1)] {
        return None;
    }
    let shapes = &table.first[usize::from(c0)];
    for s in shapes {
        if s.prefix[0] != b[i] || !super::starts(&b[i..], s.prefix) {
            continue;
        }
        let start = i + s.prefix.len();
        let mut j = start;
        while j < b.len() && j - start <= s.max && (s.body)(b[j]) {
            j += 1;
        }
        let n = j - start;
        let ends = j >= b.len() || !is_word(b[j]) || (s.max == s.min && n == s.max);
        let body = &b[start..j];
        // A body that is one repeated character or a word (`sk_live_example`) is a placeholder.
        let random = s.min == s.max
            || body.iter().any(u8::is_ascii_digit)
            || (body.iter().any(u8::is_ascii_uppercase) && body.iter().any(u8::is_ascii_lowercase))
            || body.len() >= 30;
        if (s.min..=s.max).contains(&n) && ends && random {
            return Some(j);
        }
    }
    None
}

/// A long token whose characters look drawn at random: upper, lower and digits mixed throughout
/// (identifiers and words switch class rarely) and a high Shannon entropy. Hex-only tokens (hashes,
/// ids, UUIDs) are not flagged: they are digests far more often than secrets.
fn entropic(b: &[u8], start: usize, end: usize, found: &mut Vec<Finding>) {
    let t = &b[start..end];
    let class = |c: u8| -> u8 {
        if c.is_ascii_uppercase() {
            0
        } else if c.is_ascii_lowercase() {
            1
        } else if c.is_ascii_digit() {
            2
        } else {
            3
        }
    };
    let (mut up, mut low, mut dig) = (0usize, 0usize, 0usize);
    let mut counts = [0u32; 128];
    let mut switches = 0usize;
    let mut slashes = 0usize;
    for (k, &c) in t.iter().enumerate() {
        match class(c) {
            0 => up += 1,
            1 => low += 1,
            2 => dig += 1,
            _ => slashes += usize::from(c == b'/'),
        }
        counts[usize::from(c & 0x7F)] += 1;
        if k > 0 && class(c) != class(t[k - 1]) {
            switches += 1;
        }
    }
    if up == 0 || low == 0 || dig == 0 || (dig < 2 && t.len() < 32) {
        return;
    }
    if t.iter().all(|c| c.is_ascii_hexdigit() || *c == b'-') {
        return;
    }
    // A path (`src/main/java/Foo2Bar`) is words between slashes.
    if slashes >= 2
        && t.split(|c| *c == b'/')
            .any(|seg| seg.len() >= 3 && seg.iter().all(u8::is_ascii_lowercase))
    {
        return;
    }
    let n = t.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum();
    let threshold = if t.len() < 32 { 3.7 } else { 4.2 };
    if switches * 10 >= t.len() * 4 && entropy >= threshold {
        push(found, Detector::SecretKey, start, end);
    }
}

/// `-----BEGIN … PRIVATE KEY-----` up to its `-----END … -----` (or the end of the text, when the
/// text holds only the start of the block).
fn pem_blocks(b: &[u8], found: &mut Vec<Finding>) {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let mut i = 0;
    while let Some(p) = find_with(finder!(BEGIN), b, i) {
        let head = p + BEGIN.len();
        let mut j = head;
        while j < b.len() && j - head < 64 && (b[j].is_ascii_uppercase() || b[j] == b' ') {
            j += 1;
        }
        let label = &b[head..j];
        if !(b[j..].starts_with(b"-----") && label.windows(11).any(|w| w == b"PRIVATE KEY")) {
            i = head;
            continue;
        }
        let end = match find_with(finder!(b"-----END "), b, j + 5) {
            Some(e) => {
                let mut k = e + 9;
                while k < b.len() && k - e < 80 && b[k] != b'\n' && !b[k..].starts_with(b"-----") {
                    k += 1;
                }
                if b[k..].starts_with(b"-----") {
                    k + 5
                } else {
                    k
                }
            }
            None => b.len(),
        };
        push(found, Detector::SecretKey, p, end);
        i = end.max(head);
    }
}

/// Webhook URLs are credentials: whoever has one can post. The path after the service's prefix.
fn webhooks(b: &[u8], found: &mut Vec<Finding>) {
    // All of them are on a `.com/` host: one search rules most texts out.
    if finder!(b".com/").find(b).is_none() {
        return;
    }
    for prefix in [
        &b"hooks.slack.com/services/"[..],
        b"discord.com/api/webhooks/",
        b"discordapp.com/api/webhooks/",
        b"outlook.office.com/webhook/",
    ] {
        let f = memchr::memmem::Finder::new(prefix);
        let mut i = 0;
        while let Some(p) = find_with(&f, b, i) {
            let start = p + prefix.len();
            let mut j = start;
            while j < b.len() && (b64url(b[j]) || b[j] == b'/' || b[j] == b'@') {
                j += 1;
            }
            if j - start >= 16 {
                push(found, Detector::SecretKey, start, j);
            }
            i = j.max(start);
        }
    }
}

/// `curl -u user:password`, `--user user:password`: the password.
fn cli_credentials(b: &[u8], found: &mut Vec<Finding>) {
    for flag in [&b" -u "[..], b"--user "] {
        let f = memchr::memmem::Finder::new(flag);
        let mut i = 0;
        while let Some(p) = find_with(&f, b, i) {
            let start = p + flag.len();
            let quoted = start < b.len() && matches!(b[start], b'"' | b'\'');
            let from = start + usize::from(quoted);
            let mut j = from;
            while j < b.len() && !matches!(b[j], b' ' | b'\t' | b'\n' | b'"' | b'\'') {
                j += 1;
            }
            if let Some(colon) = b[from..j].iter().position(|c| *c == b':')
                && j > from + colon + 1
            {
                push(found, Detector::SecretKey, from + colon + 1, j);
            }
            i = j.max(start);
        }
    }
}

/// `Authorization: Basic dXNlcjpwYXNz`, `Authorization: Token …`: the credentials (a bearer
/// token is the bearer detector's).
fn authorization(b: &[u8], found: &mut Vec<Finding>) {
    const KEY: &[u8] = b"authorization";
    let mut i = 0;
    while i + KEY.len() < b.len() {
        let Some(p) = find_ci(b, i, KEY) else {
            return;
        };
        i = p + KEY.len();
        let mut j = i;
        if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
            j += 1;
        }
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if !(j < b.len() && (b[j] == b':' || b[j] == b'=')) {
            continue;
        }
        j += 1;
        while j < b.len() && (b[j] == b' ' || b[j] == b'"' || b[j] == b'\'') {
            j += 1;
        }
        let scheme_start = j;
        while j < b.len() && b[j].is_ascii_alphabetic() {
            j += 1;
        }
        let scheme = &b[scheme_start..j];
        if scheme.eq_ignore_ascii_case(b"bearer") || j >= b.len() || b[j] != b' ' {
            continue;
        }
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        let start = j;
        while j < b.len()
            && j - start < 4096
            && !matches!(
                b[j],
                b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'\'' | b',' | b';'
            )
        {
            j += 1;
        }
        if j - start >= 8 {
            push(found, Detector::SecretKey, start, j);
        }
        i = j;
    }
}

/// Case-insensitive search; it looks for the needle's rarest letter first (`z` in
/// `authorization`) with `memchr`, so ordinary text is passed over quickly.
pub(super) fn find_ci(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    let at = needle.iter().position(|c| *c == b'z').unwrap_or(0);
    let key = needle[at];
    let mut i = from + at;
    while i + needle.len() - at <= hay.len() {
        let p = memchr::memchr2(key, key.to_ascii_uppercase(), &hay[i..])?;
        let start = i + p - at;
        if start + needle.len() <= hay.len()
            && hay[start..start + needle.len()].eq_ignore_ascii_case(needle)
        {
            return Some(start);
        }
        i += p + 1;
    }
    None
}
