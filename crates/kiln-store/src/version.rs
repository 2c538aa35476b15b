//! Image Builder's semantic versions (`MAJOR.MINOR.PATCH`) and version filters
//! (`1.2.3`, `1.2.x`, `1.x.x`, `x.x.x`).

use std::fmt;
use std::str::FromStr;

use crate::error::StoreError;

/// The largest value of one version part, as in Image Builder (2^30 - 1).
pub const MAX_VERSION_PART: u32 = (1 << 30) - 1;

/// A semantic version `MAJOR.MINOR.PATCH`, ordered numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self { major, minor, patch }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

fn parse_part(input: &str, part: &str, what: &str) -> Result<u32, StoreError> {
    let invalid = |reason: String| StoreError::InvalidVersion { input: input.to_owned(), reason };
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(format!("the {what} part {part:?} is not a number")));
    }
    if part.len() > 1 && part.starts_with('0') {
        return Err(invalid(format!("the {what} part {part:?} has a leading zero")));
    }
    match part.parse::<u32>() {
        Ok(n) if n <= MAX_VERSION_PART => Ok(n),
        _ => Err(invalid(format!("the {what} part {part} is larger than {MAX_VERSION_PART}"))),
    }
}

impl FromStr for Version {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() != 3 {
            return Err(StoreError::InvalidVersion {
                input: s.to_owned(),
                reason: format!("it has {} parts, not 3", parts.len()),
            });
        }
        Ok(Version {
            major: parse_part(s, parts[0], "major")?,
            minor: parse_part(s, parts[1], "minor")?,
            patch: parse_part(s, parts[2], "patch")?,
        })
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which versions a reference accepts: an exact version or an Image Builder wildcard.
/// The highest matching version wins, so a filter never resolves ambiguously.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionFilter {
    /// `x.x.x`: any version.
    Any,
    /// `1.x.x`: any version with this major part.
    Major(u32),
    /// `1.2.x`: any version with these major and minor parts.
    Minor(u32, u32),
    /// `1.2.3`: exactly this version.
    Exact(Version),
}

impl VersionFilter {
    /// Whether `v` is accepted by this filter.
    pub fn matches(&self, v: &Version) -> bool {
        match *self {
            VersionFilter::Any => true,
            VersionFilter::Major(major) => v.major == major,
            VersionFilter::Minor(major, minor) => v.major == major && v.minor == minor,
            VersionFilter::Exact(e) => *v == e,
        }
    }
}

impl From<Version> for VersionFilter {
    fn from(v: Version) -> Self {
        VersionFilter::Exact(v)
    }
}

impl fmt::Display for VersionFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionFilter::Any => f.write_str("x.x.x"),
            VersionFilter::Major(m) => write!(f, "{m}.x.x"),
            VersionFilter::Minor(m, n) => write!(f, "{m}.{n}.x"),
            VersionFilter::Exact(v) => v.fmt(f),
        }
    }
}

impl FromStr for VersionFilter {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        let invalid = || StoreError::InvalidVersionFilter { input: s.to_owned() };
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() != 3 {
            return Err(invalid());
        }
        let wild = |p: &str| p.eq_ignore_ascii_case("x");
        let num = |p: &str, what| parse_part(s, p, what).map_err(|_| invalid());
        match (wild(parts[0]), wild(parts[1]), wild(parts[2])) {
            (true, true, true) => Ok(VersionFilter::Any),
            (false, true, true) => Ok(VersionFilter::Major(num(parts[0], "major")?)),
            (false, false, true) => {
                Ok(VersionFilter::Minor(num(parts[0], "major")?, num(parts[1], "minor")?))
            }
            (false, false, false) => Ok(VersionFilter::Exact(s.parse().map_err(|_| invalid())?)),
            // 1.x.3, x.2.x and friends: Image Builder refuses them, so do we.
            _ => Err(invalid()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order_numerically() {
        let a: Version = "1.10.0".parse().unwrap();
        let b: Version = "1.9.7".parse().unwrap();
        assert!(a > b);
        assert_eq!(a.to_string(), "1.10.0");
        for bad in ["1.2", "1.2.3.4", "1.a.3", "01.2.3", "", "1..3", "1.2.-3", "1.2.1073741824"] {
            assert!(matches!(bad.parse::<Version>(), Err(StoreError::InvalidVersion { .. })), "{bad}");
        }
    }

    #[test]
    fn filters_parse_and_match() {
        let v = Version::new(1, 2, 3);
        for (f, yes) in [
            ("x.x.x", true),
            ("1.x.x", true),
            ("2.x.x", false),
            ("1.2.x", true),
            ("1.3.x", false),
            ("1.2.3", true),
            ("1.2.4", false),
            ("X.X.X", true),
        ] {
            let filter: VersionFilter = f.parse().unwrap();
            assert_eq!(filter.matches(&v), yes, "{f}");
            assert_eq!(filter.to_string(), f.to_ascii_lowercase());
        }
        for bad in ["1.x.3", "x.2.x", "x.x", "1.2.3.x", "a.x.x", "*"] {
            assert!(
                matches!(bad.parse::<VersionFilter>(), Err(StoreError::InvalidVersionFilter { .. })),
                "{bad}"
            );
        }
    }
}
