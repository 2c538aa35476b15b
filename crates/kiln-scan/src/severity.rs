//! Severities (Amazon Inspector's names, as Image Builder reports them) and where they come from.
//!
//! Debian urgency → severity, the mapping kiln documents and tests:
//!
//! | tracker urgency | severity | why |
//! |---|---|---|
//! | `high`, `high*`, `high**` | HIGH | the `*`/`**` suffixes only say the value came from NVD |
//! | `medium`, `medium*`, `medium**` | MEDIUM | |
//! | `low`, `low*`, `low**` | LOW | |
//! | `unimportant` | INFORMATIONAL | Debian's "no security impact on Debian's packages" is Inspector's "not a vulnerability risk" (Trivy says LOW) |
//! | `not yet assigned`, absent | UNTRIAGED | nobody has rated it yet |
//! | `end-of-life` | UNTRIAGED | it says the release no longer gets fixes, not how bad the issue is |
//!
//! Debian never rates CRITICAL; where a feed gives a CVSS v3 vector (OSV `severity`) and Debian
//! has not triaged the issue, the CVSS base score's band decides instead.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A finding's severity. The order is the gate's order: UNTRIAGED is lowest, so a gate at
/// UNTRIAGED fails on any finding and a gate at HIGH ignores untriaged ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    /// Not rated yet.
    Untriaged,
    /// Not a vulnerability risk.
    Informational,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Severity; 6] = [
        Severity::Untriaged,
        Severity::Informational,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// The Inspector name (`HIGH`).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Untriaged => "UNTRIAGED",
            Severity::Informational => "INFORMATIONAL",
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }

    /// Maps a Debian tracker urgency (see the module table); `None` for a value the tracker
    /// does not emit.
    pub fn from_debian_urgency(urgency: &str) -> Option<Severity> {
        let base = urgency.trim().trim_end_matches('*');
        Some(match base {
            "high" => Severity::High,
            "medium" => Severity::Medium,
            "low" => Severity::Low,
            "unimportant" => Severity::Informational,
            "not yet assigned" | "end-of-life" | "" => Severity::Untriaged,
            _ => return None,
        })
    }

    /// The CVSS qualitative band of a base score.
    pub fn from_cvss_score(score: f64) -> Severity {
        match score {
            s if s >= 9.0 => Severity::Critical,
            s if s >= 7.0 => Severity::High,
            s if s >= 4.0 => Severity::Medium,
            s if s > 0.0 => Severity::Low,
            _ => Severity::Informational,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A severity name that is not one of Inspector's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown severity {0:?}: use one of UNTRIAGED, INFORMATIONAL, LOW, MEDIUM, HIGH, CRITICAL")]
pub struct UnknownSeverity(pub String);

impl FromStr for Severity {
    type Err = UnknownSeverity;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownSeverity(s.to_string()))
    }
}

/// A CVSS score as a feed published it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cvss {
    /// Base score, when kiln could compute it (CVSS v3.x vectors).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub base_score: Option<f64>,
    /// The vector string.
    pub scoring_vector: String,
    /// `2.0`, `3.0`, `3.1`, `4.0`.
    pub version: String,
    /// Who published it (the feed's name).
    pub source: String,
}

/// The CVSS v3.x base score of a vector (`CVSS:3.1/AV:N/AC:L/...`), per the FIRST
/// specification's formulas including its Roundup; `None` for other versions or a malformed
/// vector.
pub fn cvss3_base_score(vector: &str) -> Option<f64> {
    let mut parts = vector.split('/');
    let head = parts.next()?;
    if head != "CVSS:3.0" && head != "CVSS:3.1" {
        return None;
    }
    let mut m = std::collections::HashMap::new();
    for p in parts {
        let (k, v) = p.split_once(':')?;
        m.insert(k, v);
    }
    let changed = match *m.get("S")? {
        "U" => false,
        "C" => true,
        _ => return None,
    };
    let av = match *m.get("AV")? {
        "N" => 0.85,
        "A" => 0.62,
        "L" => 0.55,
        "P" => 0.2,
        _ => return None,
    };
    let ac = match *m.get("AC")? {
        "L" => 0.77,
        "H" => 0.44,
        _ => return None,
    };
    let pr = match (*m.get("PR")?, changed) {
        ("N", _) => 0.85,
        ("L", false) => 0.62,
        ("L", true) => 0.68,
        ("H", false) => 0.27,
        ("H", true) => 0.5,
        _ => return None,
    };
    let ui = match *m.get("UI")? {
        "N" => 0.85,
        "R" => 0.62,
        _ => return None,
    };
    let cia = |k: &str| -> Option<f64> {
        Some(match *m.get(k)? {
            "H" => 0.56,
            "L" => 0.22,
            "N" => 0.0,
            _ => return None,
        })
    };
    let (c, i, a) = (cia("C")?, cia("I")?, cia("A")?);
    let iss = 1.0 - (1.0 - c) * (1.0 - i) * (1.0 - a);
    let impact = if changed { 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02f64).powi(15) } else { 6.42 * iss };
    let expl = 8.22 * av * ac * pr * ui;
    if impact <= 0.0 {
        return Some(0.0);
    }
    let raw = if changed { (1.08 * (impact + expl)).min(10.0) } else { (impact + expl).min(10.0) };
    Some(roundup(raw))
}

/// CVSS v3.1 Roundup: the smallest one-decimal number ≥ the input, robust to float noise.
fn roundup(x: f64) -> f64 {
    let int_input = (x * 100_000.0).round() as i64;
    if int_input % 10_000 == 0 {
        int_input as f64 / 100_000.0
    } else {
        ((int_input / 10_000) + 1) as f64 / 10.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cvss_scores_match_nvd() {
        // NVD's published base scores for these vectors.
        assert_eq!(cvss3_base_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"), Some(9.8));
        assert_eq!(cvss3_base_score("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H"), Some(7.8));
        assert_eq!(cvss3_base_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N"), Some(6.1));
        assert_eq!(cvss3_base_score("CVSS:3.0/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:N"), Some(5.9));
        assert_eq!(cvss3_base_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H"), Some(10.0));
        assert_eq!(cvss3_base_score("AV:N/AC:L/Au:N/C:P/I:P/A:P"), None);
    }

    #[test]
    fn urgencies_map_as_documented() {
        assert_eq!(Severity::from_debian_urgency("high**"), Some(Severity::High));
        assert_eq!(Severity::from_debian_urgency("low*"), Some(Severity::Low));
        assert_eq!(Severity::from_debian_urgency("unimportant"), Some(Severity::Informational));
        assert_eq!(Severity::from_debian_urgency("not yet assigned"), Some(Severity::Untriaged));
        assert_eq!(Severity::from_debian_urgency("end-of-life"), Some(Severity::Untriaged));
        assert_eq!(Severity::from_debian_urgency("urgent"), None);
        assert!("hihg".parse::<Severity>().unwrap_err().to_string().contains("MEDIUM"));
        assert_eq!("high".parse::<Severity>(), Ok(Severity::High));
    }
}
