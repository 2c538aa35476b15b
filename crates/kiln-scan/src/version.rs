//! Debian package versions (`[epoch:]upstream[-revision]`) with dpkg's exact semantics.
//!
//! Hand-written rather than taken from a crate: it is about a hundred lines, a scanner's verdicts
//! are only as right as this comparison, and it must agree with dpkg on every one of the 147
//! comparison vectors and 99 parse cases in `shared/vuln/` (dpkg, APT, python-debian and
//! debversion test suites), which the tests load and check row by row. The parser follows
//! `parseversion()` in dpkg's `lib/dpkg/parsehelp.c` and the comparison follows `verrevcmp()` in
//! `lib/dpkg/version.c`, including what dpkg only warns about (such versions are still usable).

use std::cmp::Ordering;
use std::fmt;

/// A parsed Debian version. Equality and ordering are dpkg's (`1.0000-1 == 1.0-1`), so two
/// versions that print differently can be equal; [`Version::as_str`] keeps the original text.
#[derive(Clone)]
pub struct Version {
    original: Box<str>,
    epoch: u32,
    // Byte ranges into `original`: storing offsets keeps a version to one allocation, which
    // matters when a feed holds hundreds of thousands of fixed versions.
    upstream: (u32, u32),
    revision: Option<(u32, u32)>,
}

/// Why a string is not a Debian version (dpkg rejects it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("version string is empty: give a version such as 1.2-3")]
    Empty,
    #[error("version {0:?} has embedded spaces: a version is one word")]
    EmbeddedSpace(String),
    #[error("epoch in version {0:?} is empty: write the epoch digits before the colon, or drop the colon")]
    EmptyEpoch(String),
    #[error("epoch in version {0:?} is not a number: the part before the first colon must be digits")]
    EpochNotNumber(String),
    #[error("epoch in version {0:?} is negative: epochs are 0 or more")]
    NegativeEpoch(String),
    #[error("epoch in version {0:?} is too big: epochs must fit in a 32-bit signed integer")]
    EpochTooBig(String),
    #[error("nothing after the colon in version {0:?}: an upstream version must follow the epoch")]
    NothingAfterColon(String),
    #[error("revision in version {0:?} is empty: remove the trailing hyphen or add a revision")]
    EmptyRevision(String),
    #[error(
        "upstream part of version {0:?} is empty: a version needs an upstream part before the last hyphen"
    )]
    EmptyUpstream(String),
}

/// Why dpkg would warn about a version it still accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionWarning {
    /// The upstream part does not start with a digit.
    UpstreamNotDigit,
    /// The upstream part holds a character outside `[A-Za-z0-9.+~:-]`.
    InvalidUpstreamChar(char),
    /// The revision holds a character outside `[A-Za-z0-9.+~]`.
    InvalidRevisionChar(char),
}

impl fmt::Display for VersionWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionWarning::UpstreamNotDigit => f.write_str("version number does not start with digit"),
            VersionWarning::InvalidUpstreamChar(c) => write!(f, "invalid character {c:?} in version number"),
            VersionWarning::InvalidRevisionChar(c) => write!(f, "invalid character {c:?} in revision number"),
        }
    }
}

impl Version {
    /// Parses like `dpkg --compare-versions`: syntax errors are rejected, what dpkg only warns
    /// about is accepted (see [`Version::warning`]). Surrounding blanks are trimmed.
    pub fn parse(input: &str) -> Result<Version, VersionError> {
        let trimmed = input.trim_start_matches([' ', '\t']);
        // dpkg stops at the first whitespace and then insists nothing but whitespace follows.
        let end = trimmed.find(|c: char| c.is_ascii_whitespace()).unwrap_or(trimmed.len());
        if end == 0 {
            return Err(VersionError::Empty);
        }
        if !trimmed[end..].trim_start_matches(|c: char| c.is_ascii_whitespace()).is_empty() {
            return Err(VersionError::EmbeddedSpace(input.to_string()));
        }
        let s = &trimmed[..end];
        if s.len() > u32::MAX as usize {
            return Err(VersionError::EmbeddedSpace(input.to_string()));
        }
        let (epoch, rest_start) = match s.find(':') {
            None => (0u32, 0usize),
            Some(colon) => (parse_epoch(&s[..colon], s)?, colon + 1),
        };
        if rest_start == s.len() && rest_start > 0 {
            return Err(VersionError::NothingAfterColon(s.to_string()));
        }
        let rest = &s[rest_start..];
        let (upstream, revision) = match rest.rfind('-') {
            Some(h) => {
                if h + 1 == rest.len() {
                    return Err(VersionError::EmptyRevision(s.to_string()));
                }
                (&rest[..h], Some(h + 1))
            }
            None => (rest, None),
        };
        if upstream.is_empty() {
            return Err(VersionError::EmptyUpstream(s.to_string()));
        }
        let up = (rest_start as u32, (rest_start + upstream.len()) as u32);
        let rev = revision.map(|r| ((rest_start + r) as u32, s.len() as u32));
        Ok(Version { original: s.into(), epoch, upstream: up, revision: rev })
    }

    /// The version as given (trimmed).
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// The epoch (0 when absent).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The upstream part (between the epoch colon and the last hyphen).
    pub fn upstream(&self) -> &str {
        &self.original[self.upstream.0 as usize..self.upstream.1 as usize]
    }

    /// The Debian revision (after the last hyphen), if any.
    pub fn revision(&self) -> Option<&str> {
        self.revision.map(|(a, b)| &self.original[a as usize..b as usize])
    }

    /// The version without its epoch, as source packages and filenames spell it.
    pub fn without_epoch(&self) -> &str {
        &self.original[self.upstream.0 as usize..]
    }

    /// What dpkg would warn about in this version, if anything (the first problem, as dpkg).
    pub fn warning(&self) -> Option<VersionWarning> {
        let up = self.upstream();
        let mut chars = up.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_digit()) {
            return Some(VersionWarning::UpstreamNotDigit);
        }
        if let Some(c) = chars.find(|&c| !(c.is_ascii_alphanumeric() || ".-+~:".contains(c))) {
            return Some(VersionWarning::InvalidUpstreamChar(c));
        }
        if let Some(c) =
            self.revision().unwrap_or("").chars().find(|&c| !(c.is_ascii_alphanumeric() || ".+~".contains(c)))
        {
            return Some(VersionWarning::InvalidRevisionChar(c));
        }
        None
    }
}

fn parse_epoch(text: &str, whole: &str) -> Result<u32, VersionError> {
    // Mirrors strtol(): an optional sign, then digits that must reach the colon.
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() {
        return Err(if text.is_empty() {
            VersionError::EmptyEpoch(whole.to_string())
        } else {
            VersionError::EpochNotNumber(whole.to_string())
        });
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(if digits.as_bytes()[0].is_ascii_digit() {
            VersionError::EpochNotNumber(whole.to_string())
        } else {
            VersionError::EmptyEpoch(whole.to_string())
        });
    }
    let value: u64 = match digits.parse::<u64>() {
        Ok(v) => v,
        Err(_) => {
            return Err(if negative {
                VersionError::NegativeEpoch(whole.to_string())
            } else {
                VersionError::EpochTooBig(whole.to_string())
            });
        }
    };
    if negative && value != 0 {
        return Err(VersionError::NegativeEpoch(whole.to_string()));
    }
    if value > i32::MAX as u64 {
        return Err(VersionError::EpochTooBig(whole.to_string()));
    }
    Ok(value as u32)
}

/// dpkg's character weight: `~` below everything (even the end), letters below other symbols.
fn order(c: u8) -> i32 {
    if c.is_ascii_digit() {
        0
    } else if c.is_ascii_alphabetic() {
        c as i32
    } else if c == b'~' {
        -1
    } else if c != 0 {
        c as i32 + 256
    } else {
        0
    }
}

/// dpkg's `verrevcmp()`: alternating non-digit and digit runs.
pub(crate) fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let at = |i: usize| a.get(i).copied().unwrap_or(0);
    let bt = |j: usize| b.get(j).copied().unwrap_or(0);
    let (mut i, mut j) = (0usize, 0usize);
    while i < a.len() || j < b.len() {
        let mut first_diff = 0i32;
        while (at(i) != 0 && !at(i).is_ascii_digit()) || (bt(j) != 0 && !bt(j).is_ascii_digit()) {
            let (ac, bc) = (order(at(i)), order(bt(j)));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while at(i) == b'0' {
            i += 1;
        }
        while bt(j) == b'0' {
            j += 1;
        }
        while at(i).is_ascii_digit() && bt(j).is_ascii_digit() {
            if first_diff == 0 {
                first_diff = at(i) as i32 - bt(j) as i32;
            }
            i += 1;
            j += 1;
        }
        if at(i).is_ascii_digit() {
            return Ordering::Greater;
        }
        if bt(j).is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != 0 {
            return first_diff.cmp(&0);
        }
    }
    Ordering::Equal
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| verrevcmp(self.upstream(), other.upstream()))
            .then_with(|| verrevcmp(self.revision().unwrap_or(""), other.revision().unwrap_or("")))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({:?})", &*self.original)
    }
}

impl std::str::FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::parse(s)
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.original)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Version::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts() {
        let v = Version::parse("2:1.0.4~rc2-1").unwrap();
        assert_eq!((v.epoch(), v.upstream(), v.revision()), (2, "1.0.4~rc2", Some("1")));
        assert_eq!(v.without_epoch(), "1.0.4~rc2-1");
        assert!(Version::parse("1.0~").unwrap() < Version::parse("1.0").unwrap());
    }
}
