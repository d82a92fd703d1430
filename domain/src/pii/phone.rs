//! Phone numbers checked against libphonenumber's metadata (the copy in the `phonenumber` crate,
//! ADR 019): country calling codes, national prefixes, possible lengths, each region's pattern of
//! valid national numbers and the groupings its numbers are written in.
//!
//! The scanner in `pii.rs` finds candidates (runs of digits and separators) in linear time; this
//! module only answers, for one candidate, whether it is a valid number, a possible one (right
//! length for a region) or neither. Regions' patterns are compiled once, on first use.

use phonenumber::metadata::DATABASE;
use regex::bytes::Regex;
use std::collections::HashMap;
use std::sync::OnceLock;

/// How well a candidate fits the metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Fit {
    No,
    /// A length some region's numbers have.
    Possible,
    /// Matches a region's pattern of valid numbers, written in one of its groupings.
    Valid,
}

struct Region {
    id: String,
    code: u16,
    /// The national (trunk) prefix, as digits: `0` in most of Europe, `1` in the NANP, `8` in Russia.
    prefix: Option<Vec<u8>>,
    /// Bit n: a national significant number of n digits is possible.
    lengths: u32,
    source: String,
    pattern: OnceLock<Option<Regex>>,
    /// The formats the region writes its numbers in.
    groupings: Vec<Grouping>,
}

/// One format: the leading digits it applies to, and its digit groups (`(\d{3})(\d{4})` → [3, 4]).
struct Grouping {
    leading: Option<String>,
    leading_re: OnceLock<Option<Regex>>,
    groups: Vec<(u8, u8)>,
}

impl Grouping {
    fn applies(&self, nsn: &[u8]) -> bool {
        let Some(source) = &self.leading else {
            return true;
        };
        self.leading_re
            .get_or_init(|| compile(&format!("^(?:{source})")))
            .as_ref()
            .is_none_or(|re| re.is_match(nsn))
    }
}

fn compile(pattern: &str) -> Option<Regex> {
    // The metadata's patterns are written with insignificant whitespace.
    regex::bytes::RegexBuilder::new(pattern)
        .ignore_whitespace(true)
        .unicode(false)
        .build()
        .ok()
}

impl Region {
    fn valid(&self, nsn: &[u8]) -> bool {
        if nsn.len() >= 32 || self.lengths & (1 << nsn.len()) == 0 {
            return false;
        }
        let pattern = self.pattern.get_or_init(|| {
            compile(&format!("^(?:{})$", self.source)).filter(|_| !self.source.is_empty())
        });
        pattern.as_ref().is_some_and(|p| p.is_match(nsn))
    }

    fn possible(&self, nsn: &[u8]) -> bool {
        nsn.len() < 32 && self.lengths & (1 << nsn.len()) != 0
    }

    /// Whether the text's groups (digit counts of the national significant number) could be a
    /// format's groups, some of them run together: `030 12345678` fits `(\d{2})(\d{4})(\d{4})`
    /// and `(\d{2})(\d{8})`; `94105-1234` fits no format of a region writing 3-3-3.
    fn grouped(&self, nsn: &[u8], groups: &[u8]) -> bool {
        if groups.len() <= 1 || self.groupings.is_empty() {
            return true;
        }
        self.groupings
            .iter()
            .any(|f| fits(groups, &f.groups) && f.applies(nsn))
    }
}

fn fits(text: &[u8], format: &[(u8, u8)]) -> bool {
    // reach[j]: the text groups seen so far cover exactly the first j format groups.
    let m = format.len();
    if text.len() > m || m >= 32 {
        return false;
    }
    let mut reach = [false; 33];
    reach[0] = true;
    for &g in text {
        let mut next = [false; 33];
        for (j, _) in reach.iter().enumerate().take(m).filter(|(_, r)| **r) {
            let (mut lo, mut hi) = (0u32, 0u32);
            for (k, (a, b)) in format.iter().enumerate().skip(j) {
                lo += u32::from(*a);
                hi += u32::from(*b);
                if lo > u32::from(g) {
                    break;
                }
                if hi >= u32::from(g) {
                    next[k + 1] = true;
                }
            }
        }
        reach = next;
    }
    reach[m]
}

/// `(\d{3})(\d{2,4})(\d)` → [(3, 3), (2, 4), (1, 1)]; anything else → None.
fn groups_of(pattern: &str) -> Option<Vec<(u8, u8)>> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        rest = rest.strip_prefix("(\\d")?;
        let (lo, hi, tail) = if let Some(t) = rest.strip_prefix(')') {
            (1, 1, t)
        } else {
            let t = rest.strip_prefix('{')?;
            let close = t.find('}')?;
            let (range, t) = (&t[..close], &t[close + 1..]);
            let (a, b) = match range.split_once(',') {
                Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
                None => {
                    let n = range.parse().ok()?;
                    (n, n)
                }
            };
            (a, b, t.strip_prefix(')')?)
        };
        out.push((lo, hi));
        rest = tail;
    }
    (!out.is_empty()).then_some(out)
}

struct Index {
    regions: Vec<Region>,
    by_code: HashMap<u16, Vec<usize>>,
    by_id: HashMap<String, usize>,
    fallback: Vec<usize>,
}

/// Regions tried, after the default region, for numbers written without a country code: the most
/// populous and most connected ones, so a national number from elsewhere is still recognised.
const FALLBACK: &[&str] = &[
    "US", "GB", "DE", "FR", "ES", "IT", "NL", "BE", "CH", "AT", "IE", "PT", "SE", "NO", "DK", "FI",
    "PL", "CZ", "GR", "RO", "HU", "TR", "RU", "UA", "IL", "AE", "SA", "EG", "ZA", "NG", "KE", "MA",
    "IN", "PK", "BD", "CN", "HK", "TW", "JP", "KR", "SG", "MY", "TH", "VN", "ID", "PH", "AU", "NZ",
    "CA", "MX", "BR", "AR", "CL", "CO", "PE",
];

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut regions: Vec<Region> = DATABASE
            .iter()
            .map(|m| {
                let general = m.descriptors().general();
                let mut lengths = 0u32;
                for l in general.possible_length() {
                    if *l < 32 {
                        lengths |= 1 << l;
                    }
                }
                if lengths == 0 {
                    lengths = !0b111; // unknown: any length of 3 or more digits
                }
                Region {
                    id: m.id().to_owned(),
                    code: m.country_code(),
                    prefix: m
                        .national_prefix()
                        .filter(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
                        .map(|p| p.as_bytes().to_vec()),
                    lengths,
                    source: general.national_number().as_str().to_owned(),
                    pattern: OnceLock::new(),
                    groupings: m
                        .formats()
                        .iter()
                        .filter_map(|f| {
                            Some(Grouping {
                                groups: groups_of(f.pattern().as_str())?,
                                // The last, most specific, of the leading-digits patterns.
                                leading: f.leading_digits().last().map(|r| r.as_str().to_owned()),
                                leading_re: OnceLock::new(),
                            })
                        })
                        .collect(),
                }
            })
            .collect();
        // A stable order (the database is a hash map), main region of each code first.
        regions.sort_by(|a, b| a.id.cmp(&b.id));
        let mut by_code: HashMap<u16, Vec<usize>> = HashMap::new();
        let mut by_id = HashMap::new();
        for (i, r) in regions.iter().enumerate() {
            by_code.entry(r.code).or_default().push(i);
            by_id.insert(r.id.clone(), i);
        }
        for (code, list) in by_code.iter_mut() {
            if let Some(main) = DATABASE
                .region(code)
                .and_then(|ids| ids.first().map(|s| s.to_string()))
                && let Some(pos) = list.iter().position(|i| regions[*i].id == main)
            {
                let m = list.remove(pos);
                list.insert(0, m);
            }
        }
        let fallback = FALLBACK
            .iter()
            .filter_map(|id| by_id.get(*id).copied())
            .collect();
        Index {
            regions,
            by_code,
            by_id,
            fallback,
        }
    })
}

/// The index of a region by its ISO 3166 code (`DE`, `us`), if the metadata knows it.
pub(super) fn region(id: &str) -> Option<usize> {
    index().by_id.get(&id.to_ascii_uppercase()).copied()
}

/// A number written with its country code (`+49 30 1234567`, `0049 30 1234567`): `digits` start
/// with the country calling code.
pub(super) fn international(digits: &[u8]) -> Fit {
    let idx = index();
    // Country calling codes are prefix-free: at most one of the first 1–3 digits is one.
    for len in 1..=3.min(digits.len()) {
        let code = digits[..len]
            .iter()
            .fold(0u16, |a, d| a * 10 + u16::from(d - b'0'));
        let Some(list) = idx.by_code.get(&code) else {
            continue;
        };
        let nsn = &digits[len..];
        let mut fit = Fit::No;
        for &r in list {
            let region = &idx.regions[r];
            // `+44 020 …`: a national prefix written after the country code.
            let stripped = region
                .prefix
                .as_deref()
                .and_then(|p| nsn.strip_prefix(p))
                .unwrap_or(nsn);
            if region.valid(nsn) || region.valid(stripped) {
                return Fit::Valid;
            }
            if region.possible(nsn) {
                fit = Fit::Possible;
            }
        }
        return fit;
    }
    Fit::No
}

/// A number written without a country code, in the default region or one of the fallback
/// regions. `groups` are the digit counts of the groups as written (national prefix included).
pub(super) fn national(digits: &[u8], groups: &[u8], default: Option<usize>) -> Fit {
    let idx = index();
    let mut fit = Fit::No;
    let candidates = default
        .into_iter()
        .chain(idx.fallback.iter().copied().filter(|r| Some(*r) != default));
    for r in candidates {
        let region = &idx.regions[r];
        let nanp = region.code == 1;
        let (nsn, cut) = match region.prefix.as_deref() {
            Some(p) if digits.starts_with(p) => (&digits[p.len()..], p.len()),
            // Where a trunk prefix exists, numbers are written with it; the NANP's `1` is the
            // exception, usually left out.
            Some(_) if !nanp => continue,
            _ => (digits, 0),
        };
        if !region.possible(nsn) {
            continue;
        }
        if fit == Fit::No {
            fit = Fit::Possible;
        }
        // The groups as written, without the trunk prefix.
        let mut g = [0u8; 16];
        let mut n = 0;
        let mut skip = cut;
        for &x in groups.iter().take(16) {
            let x = if skip > 0 {
                let take = skip.min(usize::from(x));
                skip -= take;
                x - take as u8
            } else {
                x
            };
            if x > 0 {
                g[n] = x;
                n += 1;
            }
        }
        // Groupings are plain arithmetic: a region none of whose formats fits is passed over
        // before its pattern runs.
        if n > 1
            && !region.groupings.is_empty()
            && !region.groupings.iter().any(|f| fits(&g[..n], &f.groups))
        {
            continue;
        }
        if region.valid(nsn) && region.grouped(nsn, &g[..n]) {
            return Fit::Valid;
        }
    }
    fit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_patterns_give_their_groups() {
        assert_eq!(
            groups_of(r"(\d{3})(\d{3})(\d{4})"),
            Some(vec![(3, 3), (3, 3), (4, 4)])
        );
        assert_eq!(groups_of(r"(\d)(\d{2,4})"), Some(vec![(1, 1), (2, 4)]));
        assert_eq!(groups_of(r"(\d{3})(\d+)"), None);
        assert!(fits(&[2, 8], &[(2, 2), (4, 4), (4, 4)]));
        assert!(!fits(&[5, 4], &[(3, 3), (3, 3), (3, 3)]));
        assert!(fits(&[3, 3, 3], &[(3, 3), (3, 3), (3, 3)]));
    }

    #[test]
    fn every_regions_example_numbers_are_valid_with_their_country_code() {
        let mut checked = 0;
        for m in DATABASE.iter() {
            let d = m.descriptors();
            for desc in [d.fixed_line(), d.mobile()].into_iter().flatten() {
                let Some(example) = desc.example() else {
                    continue;
                };
                let digits = format!("{}{example}", m.country_code());
                assert_eq!(
                    international(digits.as_bytes()),
                    Fit::Valid,
                    "{} {example}",
                    m.id()
                );
                checked += 1;
            }
        }
        assert!(checked > 300, "{checked}");
    }

    #[test]
    fn national_numbers_are_checked_in_the_default_region_first() {
        let de = region("de");
        assert_eq!(national(b"03012345678", &[3, 8], de), Fit::Valid);
        assert_eq!(national(b"02079460958", &[3, 4, 4], None), Fit::Valid);
        // Valid in Spain, but not as Spain writes its numbers (3-3-3, 3-2-2-2).
        assert_ne!(national(b"612345678", &[4, 5], region("es")), Fit::Valid);
        assert_eq!(national(b"612345678", &[3, 3, 3], region("es")), Fit::Valid);
    }
}
