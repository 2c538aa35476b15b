//! Semantic versions as Image Builder uses them: `MAJOR.MINOR.PATCH`, plain numbers only (no
//! leading zeros, each part at most [`MAX_VERSION_PART`]), and version filters where any part
//! may be `x` (`1.2.x`, `1.x.x`, `x.x.x`), with `x` allowed only after the fixed parts
//! (`1.x.2` is refused, as Image Builder refuses it). This is the one implementation in kiln:
//! the catalogue (kiln-store) stores and resolves these same types.

use std::fmt;
use std::str::FromStr;

/// The largest value of one version part, as Image Builder documents it (2^30 - 1).
pub const MAX_VERSION_PART: u32 = (1 << 30) - 1;

/// `MAJOR.MINOR.PATCH`, no pre-release or build suffix (Image Builder allows none), ordered
/// numerically (`1.10.0` > `1.9.7`). Serialized as its `X.Y.Z` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SemVer {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// Text that is not a semantic version, or not a version filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// Not `MAJOR.MINOR.PATCH`.
    #[error("`{text}` is not a semantic version: {reason} (write MAJOR.MINOR.PATCH, such as 1.0.0)")]
    Version { text: String, reason: String },
    /// Not an exact version nor one of Image Builder's wildcards.
    #[error(
        "`{text}` is not a version filter: {reason} (write an exact version such as 1.2.3, or a wildcard: 1.2.x, 1.x.x or x.x.x)"
    )]
    Filter { text: String, reason: String },
}

impl VersionError {
    /// The text that was refused.
    pub fn text(&self) -> &str {
        match self {
            VersionError::Version { text, .. } | VersionError::Filter { text, .. } => text,
        }
    }

    /// Why it was refused, without the text or the advice.
    pub fn reason(&self) -> &str {
        match self {
            VersionError::Version { reason, .. } | VersionError::Filter { reason, .. } => reason,
        }
    }
}

const PART_NAMES: [&str; 3] = ["major", "minor", "patch"];

/// The three dot-separated parts of `text`, or why there are not three.
fn three_parts(text: &str) -> Result<[&str; 3], String> {
    let parts: Vec<&str> = text.split('.').collect();
    <[&str; 3]>::try_from(parts.as_slice()).map_err(|_| format!("it has {} parts, not 3", parts.len()))
}

/// One numeric part: digits only, no leading zero, at most [`MAX_VERSION_PART`].
fn number(p: &str, what: &str) -> Result<u32, String> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("the {what} part `{p}` is not a whole number"));
    }
    if p.len() > 1 && p.starts_with('0') {
        return Err(format!("the {what} part `{p}` has a leading zero"));
    }
    match p.parse::<u32>() {
        Ok(n) if n <= MAX_VERSION_PART => Ok(n),
        _ => Err(format!("the {what} part {p} is larger than {MAX_VERSION_PART}")),
    }
}

impl SemVer {
    pub const fn new(major: u32, minor: u32, patch: u32) -> SemVer {
        SemVer { major, minor, patch }
    }

    pub fn parse(text: &str) -> Result<SemVer, VersionError> {
        let invalid = |reason: String| VersionError::Version { text: text.to_string(), reason };
        let [a, b, c] = three_parts(text).map_err(invalid)?;
        Ok(SemVer {
            major: number(a, "major").map_err(invalid)?,
            minor: number(b, "minor").map_err(invalid)?,
            patch: number(c, "patch").map_err(invalid)?,
        })
    }
}

impl fmt::Display for SemVer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for SemVer {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<SemVer, VersionError> {
        SemVer::parse(s)
    }
}

impl serde::Serialize for SemVer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SemVer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SemVer, D::Error> {
        let s = String::deserialize(d)?;
        SemVer::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Which versions a reference accepts: an exact version (`1.2.3`) or an Image Builder
/// wildcard (`1.2.x`, `1.x.x`, `x.x.x`; `X` is read as `x`). A wildcard part is never
/// followed by a fixed one, which the private fields guarantee. The highest matching version
/// wins ([`VersionFilter::best`]), so a filter never resolves ambiguously.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VersionFilter {
    major: Option<u32>,
    minor: Option<u32>,
    patch: Option<u32>,
}

impl VersionFilter {
    /// `x.x.x`: any version.
    pub const ANY: VersionFilter = VersionFilter { major: None, minor: None, patch: None };

    pub fn parse(text: &str) -> Result<VersionFilter, VersionError> {
        let invalid = |reason: String| VersionError::Filter { text: text.to_string(), reason };
        let parts = three_parts(text).map_err(invalid)?;
        let mut out = [None; 3];
        let mut wild = false;
        for (i, p) in parts.iter().enumerate() {
            if p.eq_ignore_ascii_case("x") {
                wild = true;
            } else if wild {
                return Err(invalid("`x` may only follow fixed parts".to_string()));
            } else {
                out[i] = Some(number(p, PART_NAMES[i]).map_err(invalid)?);
            }
        }
        Ok(VersionFilter { major: out[0], minor: out[1], patch: out[2] })
    }

    /// The fixed major part (`None` for `x.x.x`).
    pub fn major(&self) -> Option<u32> {
        self.major
    }

    /// The fixed minor part (`None` for `1.x.x` and `x.x.x`).
    pub fn minor(&self) -> Option<u32> {
        self.minor
    }

    /// The fixed patch part (`None` for any wildcard).
    pub fn patch(&self) -> Option<u32> {
        self.patch
    }

    /// Whether `v` is accepted by this filter.
    pub fn matches(&self, v: &SemVer) -> bool {
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
        versions.into_iter().filter(|v| self.matches(v)).max().copied()
    }
}

impl From<SemVer> for VersionFilter {
    /// The filter that accepts exactly `v`.
    fn from(v: SemVer) -> VersionFilter {
        VersionFilter { major: Some(v.major), minor: Some(v.minor), patch: Some(v.patch) }
    }
}

impl fmt::Display for VersionFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = |v: Option<u32>| v.map_or("x".to_string(), |n| n.to_string());
        write!(f, "{}.{}.{}", p(self.major), p(self.minor), p(self.patch))
    }
}

impl FromStr for VersionFilter {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<VersionFilter, VersionError> {
        VersionFilter::parse(s)
    }
}

impl serde::Serialize for VersionFilter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for VersionFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<VersionFilter, D::Error> {
        let s = String::deserialize(d)?;
        VersionFilter::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_strictly() {
        assert_eq!(SemVer::parse("1.20.3").unwrap(), SemVer { major: 1, minor: 20, patch: 3 });
        assert_eq!("0.0.0".parse::<SemVer>().unwrap(), SemVer::new(0, 0, 0));
        let max = format!("{MAX_VERSION_PART}.0.{MAX_VERSION_PART}");
        assert_eq!(max.parse::<SemVer>().unwrap(), SemVer::new(MAX_VERSION_PART, 0, MAX_VERSION_PART));
        for bad in [
            "1.0",
            "1.0.0.0",
            "1.a.0",
            "01.0.0",
            "1.00.0",
            "1.0.0-rc1",
            "",
            "1..0",
            "1.2.-3",
            "+1.0.0",
            " 1.0.0",
            "1.2.1073741824",
            "1.2.99999999999",
            "x.x.x",
        ] {
            assert!(matches!(SemVer::parse(bad), Err(VersionError::Version { .. })), "{bad}");
        }
        assert!(SemVer::parse("1.0").unwrap_err().to_string().contains("MAJOR.MINOR.PATCH"));
        let e = SemVer::parse("1.2.1073741824").unwrap_err();
        assert_eq!(e.text(), "1.2.1073741824");
        assert!(e.reason().contains("larger than 1073741823"), "{e}");
        assert!(SemVer::parse("01.0.0").unwrap_err().reason().contains("leading zero"));
    }

    #[test]
    fn versions_order_numerically_and_print_back() {
        let a: SemVer = "1.10.0".parse().unwrap();
        let b: SemVer = "1.9.7".parse().unwrap();
        assert!(a > b);
        assert!(SemVer::new(2, 0, 0) > SemVer::new(1, 99, 99));
        assert_eq!(a.to_string(), "1.10.0");
    }

    #[test]
    fn versions_serialize_as_text() {
        let v = SemVer::new(1, 2, 3);
        assert_eq!(serde_json::to_string(&v).unwrap(), r#""1.2.3""#);
        assert_eq!(serde_json::from_str::<SemVer>(r#""1.2.3""#).unwrap(), v);
        assert!(serde_json::from_str::<SemVer>(r#""1.2""#).is_err());
        assert!(serde_json::from_str::<SemVer>("123").is_err());
        let f = VersionFilter::parse("1.x.x").unwrap();
        assert_eq!(serde_json::to_string(&f).unwrap(), r#""1.x.x""#);
        assert_eq!(serde_json::from_str::<VersionFilter>(r#""1.x.x""#).unwrap(), f);
        assert!(serde_json::from_str::<VersionFilter>(r#""x.1.x""#).is_err());
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
        assert_eq!(VersionFilter::parse("1.2.3").unwrap().exact(), Some(SemVer::new(1, 2, 3)));
        assert_eq!(VersionFilter::from(SemVer::new(1, 2, 3)), VersionFilter::parse("1.2.3").unwrap());
        assert_eq!(VersionFilter::parse("x.x.x").unwrap(), VersionFilter::ANY);
        let f = VersionFilter::parse("4.5.x").unwrap();
        assert_eq!((f.major(), f.minor(), f.patch()), (Some(4), Some(5), None));
    }

    #[test]
    fn filters_parse_match_and_print_back() {
        let v = SemVer::new(1, 2, 3);
        for (f, yes) in [
            ("x.x.x", true),
            ("1.x.x", true),
            ("2.x.x", false),
            ("1.2.x", true),
            ("1.3.x", false),
            ("1.2.3", true),
            ("1.2.4", false),
            ("X.X.X", true),
            ("1.2.X", true),
        ] {
            let filter: VersionFilter = f.parse().unwrap();
            assert_eq!(filter.matches(&v), yes, "{f}");
            assert_eq!(filter.to_string(), f.to_ascii_lowercase());
        }
        for bad in ["1.x.3", "x.2.x", "x.x", "1.2.3.x", "a.x.x", "*", "01.x.x", "1.1073741824.x", ""] {
            assert!(matches!(VersionFilter::parse(bad), Err(VersionError::Filter { .. })), "{bad}");
        }
        let e = VersionFilter::parse("1.x.3").unwrap_err();
        assert!(e.to_string().contains("`x` may only follow fixed parts"), "{e}");
        assert!(e.to_string().contains("is not a version filter"), "{e}");
    }
}
