//! Inventory × feeds → findings, with Debian's semantics.
//!
//! - Feeds list **source** packages; a finding names the installed **binary** package.
//! - The installed *source* version is what is compared with `fixed_version`: binNMU
//!   binaries (`2.8-1+b1`) and binaries with an epoch their source lacks (`bsdutils
//!   1:2.33.1-0.1` from `util-linux 2.33.1-0.1`) would otherwise compare wrongly.
//! - Only entries for the image's own release (by codename) count.
//! - `resolved` with installed < fixed → vulnerable and fixable; `open`/`undetermined` →
//!   vulnerable, not fixable; `fixed_version "0"` (not affected) → never.
//! - `end-of-life` entries are reported (status `end_of_life`, not fixable), as the peer does:
//!   the package is unsupported, which is itself a risk to act on.
//! - Signed packages (`linux-image-*` from `linux-signed-amd64`, `grub-efi-amd64-signed`,
//!   `shim-signed`) are matched as the unsigned source named in their `Built-Using` field: the
//!   tracker lists CVEs under `linux`/`grub2`/`shim`, and the signed source's own version
//!   (`6.1.76+1`) sorts above a fix such as `6.1.76-2`, which would hide a vulnerability.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::feed::{AffectedRange, Database, Entry, FeedInfo, NoDsa, TrackerStatus};
use crate::finding::{Finding, FindingStatus, IgnoredBy};
use crate::inventory::{Inventory, Package, PackageManager};
use crate::severity::Severity;
use crate::version::Version;

/// A rule that suppresses matching findings until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoreRule {
    /// Vulnerability id or alias (`CVE-2024-1234`, `DSA-5555-1`).
    pub id: String,
    /// Only for this binary package (all packages when absent).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub package: Option<String>,
    /// Why it is acceptable; required.
    pub reason: String,
    /// Last day the rule applies; from the next day on the finding is reported again.
    #[serde(skip_serializing_if = "Option::is_none", default, with = "iso_date")]
    pub expires: Option<time::Date>,
}

impl IgnoreRule {
    /// Whether the rule is in force on `today`.
    pub fn in_force(&self, today: time::Date) -> bool {
        self.expires.is_none_or(|e| today <= e)
    }

    fn matches(&self, f: &Finding) -> bool {
        (self.id == f.vulnerability_id || f.aliases.contains(&self.id))
            && self.package.as_ref().is_none_or(|p| *p == f.package)
    }
}

/// Scan settings.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Report only findings with a fixed version.
    pub only_fixable: bool,
    /// Ignore rules.
    pub ignore: Vec<IgnoreRule>,
    /// The day ignore-rule expiry is judged against (the caller's clock; `None`: today in UTC).
    pub today: Option<time::Date>,
    /// Release codename to match, overriding the image's os-release.
    pub release: Option<String>,
}

/// A scan could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The release is unknown, so no release-specific entry can be chosen.
    #[error(
        "the image's Debian release is unknown (no VERSION_CODENAME or VERSION_ID in its os-release); \
         give the release codename explicitly"
    )]
    UnknownRelease,
    /// The image is not Debian; the feeds kiln reads only describe Debian.
    #[error("the image is {0:?}, not Debian: kiln's feeds (Debian tracker, OSV Debian) do not describe it")]
    UnsupportedOs(String),
    /// An ignore rule lacks its reason.
    #[error("ignore rule for {0} has no reason: every ignore rule must say why the finding is acceptable")]
    IgnoreRuleWithoutReason(String),
}

/// A finding suppressed by an ignore rule (kept so reports can show it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IgnoredFinding {
    /// The finding.
    pub finding: Finding,
    /// The rule's reason and expiry.
    pub ignored_by: IgnoredBy,
}

/// The result of a scan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanReport {
    /// Release codename matched.
    pub release: String,
    /// Findings, sorted by severity (highest first), id, package.
    pub findings: Vec<Finding>,
    /// Findings an ignore rule in force suppressed.
    pub ignored: Vec<IgnoredFinding>,
    /// Packages that could not be matched, and why.
    pub notes: Vec<String>,
    /// The feeds used.
    pub feeds: Vec<FeedInfo>,
}

/// The (source, version) feeds know a package by, and the rule that was needed to get there.
pub fn feed_source(pkg: &Package) -> (String, String, Option<&'static str>) {
    let src = pkg.source_name.as_str();
    let signed = src.starts_with("linux-signed") || src.ends_with("-signed");
    if signed {
        if let Some((n, v)) = pkg.built_using.first() {
            return (n.clone(), v.clone(), Some("built-using"));
        }
        if src.starts_with("linux-signed") {
            // linux-image-* binaries carry the `linux` source version as their own version.
            return ("linux".into(), pkg.version.clone(), Some("signed-kernel"));
        }
    }
    if pkg.source_version != pkg.version {
        return (src.to_string(), pkg.source_version.clone(), None);
    }
    // No explicit source version: strip a binNMU suffix (`+b3`), which the source never has.
    if let Some(stripped) = strip_binnmu(&pkg.version) {
        return (src.to_string(), stripped.to_string(), Some("binnmu"));
    }
    (src.to_string(), pkg.source_version.clone(), None)
}

fn strip_binnmu(v: &str) -> Option<&str> {
    let (head, tail) = v.rsplit_once("+b")?;
    (!tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) && head.contains('-')).then_some(head)
}

/// Matches an inventory against the database.
pub fn scan(inv: &Inventory, db: &Database, opts: &ScanOptions) -> Result<ScanReport, ScanError> {
    if let Some(rule) = opts.ignore.iter().find(|r| r.reason.trim().is_empty()) {
        return Err(ScanError::IgnoreRuleWithoutReason(rule.id.clone()));
    }
    if let Some(os) = &inv.os
        && !os.id.is_empty()
        && os.id != "debian"
        && opts.release.is_none()
    {
        return Err(ScanError::UnsupportedOs(os.id.clone()));
    }
    let release = opts
        .release
        .clone()
        .or_else(|| inv.codename().map(str::to_string))
        .ok_or(ScanError::UnknownRelease)?;
    let today = opts.today.unwrap_or_else(|| time::OffsetDateTime::now_utc().date());
    let mut findings = Vec::new();
    let mut notes = Vec::new();
    for pkg in inv.packages.iter().filter(|p| p.manager == PackageManager::Dpkg) {
        let (src, src_ver, rule) = feed_source(pkg);
        let Ok(installed) = Version::parse(&src_ver) else {
            notes.push(format!(
                "{}: source version {src_ver:?} is not a Debian version; not matched",
                pkg.name
            ));
            continue;
        };
        match_package(db, pkg, &src, &src_ver, &installed, rule, &release, &mut findings);
    }
    let mut kept = Vec::new();
    let mut ignored = Vec::new();
    for f in findings {
        if opts.only_fixable && !f.fix_available() {
            continue;
        }
        match opts.ignore.iter().find(|r| r.in_force(today) && r.matches(&f)) {
            Some(r) => ignored.push(IgnoredFinding {
                finding: f,
                ignored_by: IgnoredBy { reason: r.reason.clone(), expires: r.expires.map(|d| d.to_string()) },
            }),
            None => kept.push(f),
        }
    }
    kept.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.vulnerability_id.cmp(&b.vulnerability_id))
            .then_with(|| a.package.cmp(&b.package))
    });
    Ok(ScanReport { release, findings: kept, ignored, notes, feeds: db.feeds.clone() })
}

/// The range containing `v` with the lowest fix (an unfixed range wins: nothing fixes it).
fn affecting<'a>(ranges: &'a [AffectedRange], v: &Version) -> Option<Option<&'a Version>> {
    let mut best: Option<Option<&Version>> = None;
    for r in ranges.iter().filter(|r| r.contains(v)) {
        best = Some(match (best, r.fixed()) {
            (None, f) => f,
            (Some(None), _) | (Some(_), None) => None,
            (Some(Some(a)), Some(b)) => Some(if b < a { b } else { a }),
        });
    }
    best
}

#[allow(clippy::too_many_arguments)]
fn match_package(
    db: &Database,
    pkg: &Package,
    src: &str,
    src_ver: &str,
    installed: &Version,
    rule: Option<&'static str>,
    release: &str,
    out: &mut Vec<Finding>,
) {
    // Group this release's entries by vulnerability id, keeping load order (feed precedence).
    let mut groups: Vec<(&str, Vec<&Entry>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for e in db.entries_for(src).iter().filter(|e| &*e.release == release) {
        let id = db.vulns[e.vuln as usize].id.as_str();
        let i = *index.entry(id).or_insert_with(|| {
            groups.push((id, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(e);
    }
    for (id, entries) in groups {
        // A per-vulnerability record (tracker, DEBIAN-CVE) decides; advisory-derived entries
        // (DSA/DLA) only decide when no such record exists, taking the earliest fix.
        let (decider, fixed) = match entries.iter().find(|e| e.primary) {
            Some(e) => match affecting(&e.ranges, installed) {
                Some(f) => (*e, f),
                None => continue,
            },
            None => {
                let mut best: Option<(&Entry, Option<&Version>)> = None;
                for e in &entries {
                    if let Some(f) = affecting(&e.ranges, installed) {
                        best = match best {
                            None => Some((e, f)),
                            Some((_, None)) => best,
                            Some((be, Some(bf))) => match f {
                                Some(nf) if nf < bf => Some((e, Some(nf))),
                                None => Some((e, None)),
                                _ => Some((be, Some(bf))),
                            },
                        };
                    }
                }
                match best {
                    Some(b) => b,
                    None => continue,
                }
            }
        };
        let vuln = &db.vulns[decider.vuln as usize];
        let mut aliases: Vec<String> = Vec::new();
        for e in &entries {
            for a in &db.vulns[e.vuln as usize].aliases {
                if a != id && !aliases.contains(a) {
                    aliases.push(a.clone());
                }
            }
        }
        aliases.sort();
        let mut cvss = Vec::new();
        for e in &entries {
            for c in &db.vulns[e.vuln as usize].cvss {
                if !cvss.contains(c) {
                    cvss.push(c.clone());
                }
            }
        }
        let status = match (fixed, decider) {
            (Some(_), _) => FindingStatus::Fixed,
            (None, e) if e.is_end_of_life() => FindingStatus::EndOfLife,
            (None, e) if e.nodsa == Some(NoDsa::Ignored) => FindingStatus::WillNotFix,
            (None, e) if e.nodsa == Some(NoDsa::Postponed) => FindingStatus::FixDeferred,
            (None, e) if e.status == TrackerStatus::Undetermined => FindingStatus::Undetermined,
            (None, _) => FindingStatus::Affected,
        };
        let urgency = entries.iter().find_map(|e| e.urgency.as_deref());
        let mut severity = urgency.and_then(Severity::from_debian_urgency).unwrap_or(Severity::Untriaged);
        if severity == Severity::Untriaged
            && let Some(score) = cvss.iter().filter_map(|c| c.base_score).reduce(f64::max)
        {
            severity = Severity::from_cvss_score(score);
        }
        let feed = &db.feeds[vuln.feed];
        out.push(Finding {
            vulnerability_id: id.to_string(),
            aliases,
            package: pkg.name.clone(),
            arch: pkg.arch.clone(),
            package_manager: pkg.manager,
            installed_version: pkg.version.clone(),
            source_package: src.to_string(),
            source_version: src_ver.to_string(),
            fixed_version: fixed.map(|v| v.as_str().to_string()),
            severity,
            vendor_severity: urgency.map(str::to_string),
            status,
            tracker_status: decider.status,
            nodsa: decider.nodsa,
            release: release.to_string(),
            description: entries.iter().find_map(|e| db.vulns[e.vuln as usize].description.clone()),
            cvss,
            feed: feed.name.clone(),
            feed_date: feed.date.clone(),
            source_rule: rule.map(str::to_string),
        });
    }
}

/// The outcome of a severity gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateOutcome {
    /// The threshold.
    pub fail_on: Severity,
    /// True when no finding is at or above it.
    pub passed: bool,
    /// `(vulnerability id, package, severity)` of each finding at or above it.
    pub failing: Vec<(String, String, Severity)>,
}

/// Fails when any (not ignored) finding's severity is at or above `fail_on`.
pub fn evaluate_gate(findings: &[Finding], fail_on: Severity) -> GateOutcome {
    let failing: Vec<_> = findings
        .iter()
        .filter(|f| f.severity >= fail_on)
        .map(|f| (f.vulnerability_id.clone(), f.package.clone(), f.severity))
        .collect();
    GateOutcome { fail_on, passed: failing.is_empty(), failing }
}

/// `YYYY-MM-DD` for ignore-rule expiry dates, as people write them in recipes.
mod iso_date {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::macros::format_description;

    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        format_description!("[year]-[month]-[day]");

    pub fn serialize<S: Serializer>(d: &Option<time::Date>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&d.format(FORMAT).map_err(serde::ser::Error::custom)?),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<time::Date>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else { return Ok(None) };
        time::Date::parse(&text, FORMAT)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("expiry date {text:?} is not YYYY-MM-DD ({e})")))
    }
}
