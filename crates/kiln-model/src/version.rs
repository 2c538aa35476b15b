//! Semantic versions as Image Builder uses them: `MAJOR.MINOR.PATCH`, plain numbers only, and
//! version filters where any part may be `x` (`1.x.x`, `x.x.x`), with `x` allowed only after
//! the fixed parts (`1.x.2` is refused, as Image Builder refuses it).

use std::fmt;

/// `MAJOR.MINOR.PATCH`, no pre-release or build suffix (Image Builder allows none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SemVer {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a semantic version: {reason} (write MAJOR.MINOR.PATCH, such as 1.0.0)")]
pub struct VersionError {
    pub text: String,
    pub reason: &'static str,
}

fn part(text: &str, p: &str) -> Result<u64, VersionError> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VersionError { text: text.to_string(), reason: "each part must be a whole number" });
    }
    if p.len() > 1 && p.starts_with('0') {
        return Err(VersionError { text: text.to_string(), reason: "parts have no leading zeros" });
    }
    p.parse().map_err(|_| VersionError { text: text.to_string(), reason: "a part is too large" })
}

impl SemVer {
    pub fn parse(text: &str) -> Result<SemVer, VersionError> {
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() != 3 {
            return Err(VersionError { text: text.to_string(), reason: "it needs exactly three parts" });
        }
        Ok(SemVer {
            major: part(text, parts[0])?,
            minor: part(text, parts[1])?,
            patch: part(text, parts[2])?,
        })
    }
}

impl fmt::Display for SemVer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A version or a filter with `x` wildcards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionFilter {
    pub major: Option<u64>,
    pub minor: Option<u64>,
    pub patch: Option<u64>,
}

impl VersionFilter {
    pub const ANY: VersionFilter = VersionFilter { major: None, minor: None, patch: None };

    pub fn parse(text: &str) -> Result<VersionFilter, VersionError> {
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() != 3 {
            return Err(VersionError { text: text.to_string(), reason: "it needs exactly three parts" });
        }
        let mut out = [None; 3];
        let mut wild = false;
        for (i, p) in parts.iter().enumerate() {
            if *p == "x" || *p == "X" {
                wild = true;
            } else if wild {
                return Err(VersionError {
                    text: text.to_string(),
                    reason: "`x` may only follow fixed parts",
                });
            } else {
                out[i] = Some(part(text, p)?);
            }
        }
        Ok(VersionFilter { major: out[0], minor: out[1], patch: out[2] })
    }

    pub fn matches(&self, v: SemVer) -> bool {
        self.major.is_none_or(|m| m == v.major)
            && self.minor.is_none_or(|m| m == v.minor)
            && self.patch.is_none_or(|p| p == v.patch)
    }

    /// The exact version, when the filter has no wildcard.
    pub fn exact(&self) -> Option<SemVer> {
        Some(SemVer { major: self.major?, minor: self.minor?, patch: self.patch? })
    }

    /// The highest of `versions` that matches.
    pub fn best<'a>(&self, versions: impl IntoIterator<Item = &'a SemVer>) -> Option<SemVer> {
        versions.into_iter().copied().filter(|v| self.matches(*v)).max()
    }
}

impl fmt::Display for VersionFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = |v: Option<u64>| v.map_or("x".to_string(), |n| n.to_string());
        write!(f, "{}.{}.{}", p(self.major), p(self.minor), p(self.patch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_strictly() {
        assert_eq!(SemVer::parse("1.20.3").unwrap(), SemVer { major: 1, minor: 20, patch: 3 });
        for bad in ["1.0", "1.0.0.0", "1.a.0", "01.0.0", "1.0.0-rc1", "", "1..0"] {
            assert!(SemVer::parse(bad).is_err(), "{bad}");
        }
        assert!(SemVer::parse("1.0").unwrap_err().to_string().contains("MAJOR.MINOR.PATCH"));
    }

    #[test]
    fn filters_follow_image_builder_wildcards() {
        let vs: Vec<SemVer> =
            ["1.0.0", "1.2.0", "1.2.7", "2.0.1"].iter().map(|v| SemVer::parse(v).unwrap()).collect();
        let best = |f: &str| VersionFilter::parse(f).unwrap().best(&vs).map(|v| v.to_string());
        assert_eq!(best("x.x.x").as_deref(), Some("2.0.1"));
        assert_eq!(best("1.x.x").as_deref(), Some("1.2.7"));
        assert_eq!(best("1.2.x").as_deref(), Some("1.2.7"));
        assert_eq!(best("1.0.0").as_deref(), Some("1.0.0"));
        assert_eq!(best("3.x.x"), None);
        assert!(VersionFilter::parse("1.x.2").is_err());
        assert_eq!(VersionFilter::parse("1.x.x").unwrap().exact(), None);
    }
}
