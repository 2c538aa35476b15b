//! Findings, and their Image Builder `ImageScanFinding` JSON shape.
//!
//! [`ImageScanFinding`] mirrors the shapes `ImageScanFinding`, `PackageVulnerabilityDetails` and
//! `VulnerablePackage` of the Image Builder service model (camelCase, optional members left
//! out when unknown), so the same objects can answer `ListImageScanFindings`. What Image Builder
//! has no member for (source package, tracker status, feed and its date, ignore state) is under
//! the extra key **`kiln`** ([`KilnFindingExtras`]); AWS clients ignore unknown keys.

use serde::{Deserialize, Serialize};

use crate::feed::{NoDsa, TrackerStatus};
use crate::inventory::PackageManager;
use crate::severity::{Cvss, Severity};
use crate::version::Version;

/// Where a vulnerable package stands, in the peer scanners' vocabulary (Trivy's statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingStatus {
    /// A fixed version exists for the release; installed is older.
    Fixed,
    /// Open in the tracker, no fix yet.
    Affected,
    /// Open, and Debian marked it `<ignored>`: no fix will be shipped.
    WillNotFix,
    /// Open, and Debian marked it `<postponed>`.
    FixDeferred,
    /// The package is end-of-life in the release: it gets no security support.
    EndOfLife,
    /// The tracker has not determined whether the release is affected.
    Undetermined,
}

/// One vulnerability in one installed binary package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// `CVE-…`, `TEMP-…`, or an advisory id that names no CVE.
    pub vulnerability_id: String,
    /// Other ids for it (`DSA-…`, `DLA-…`, `DEBIAN-CVE-…`).
    pub aliases: Vec<String>,
    /// The installed binary package.
    pub package: String,
    /// Its architecture.
    pub arch: Option<String>,
    /// Its package manager.
    pub package_manager: PackageManager,
    /// Installed binary version.
    pub installed_version: String,
    /// Source package the feeds list it under.
    pub source_package: String,
    /// Source version compared with the fix.
    pub source_version: String,
    /// First fixed source version for the release, if any.
    pub fixed_version: Option<String>,
    /// Severity (see [`crate::severity`] for the mapping).
    pub severity: Severity,
    /// The feed's own rating (Debian urgency such as `low**`).
    pub vendor_severity: Option<String>,
    /// Status class.
    pub status: FindingStatus,
    /// The tracker status behind it.
    pub tracker_status: TrackerStatus,
    /// `nodsa_reason`, when Debian will not issue a DSA.
    pub nodsa: Option<NoDsa>,
    /// Release codename matched.
    pub release: String,
    /// Short description from the feed.
    pub description: Option<String>,
    /// CVSS scores the feeds publish.
    pub cvss: Vec<Cvss>,
    /// Feed that decided the finding.
    pub feed: String,
    /// That feed's date.
    pub feed_date: Option<String>,
    /// Which matching rule mapped the package to its source, when it was not the plain
    /// `Source:` field (`signed-kernel`, `built-using`, `binnmu`).
    pub source_rule: Option<String>,
}

impl Finding {
    /// Whether a fixed version is available.
    pub fn fix_available(&self) -> bool {
        self.fixed_version.is_some()
    }

    /// Inspector-style title: `CVE-2019-18224 - libidn2-0`.
    pub fn title(&self) -> String {
        format!("{} - {}", self.vulnerability_id, self.package)
    }

    /// What to do about it.
    pub fn remediation(&self) -> String {
        match (&self.fixed_version, self.status) {
            (Some(f), _) => format!(
                "Upgrade {} to a version built from {} {} or later (apt-get install --only-upgrade {}), then \
                 rebuild the image.",
                self.package, self.source_package, f, self.package
            ),
            (None, FindingStatus::EndOfLife) => format!(
                "Debian no longer provides security support for {} in {}; move to a supported release or \
                 remove the package.",
                self.source_package, self.release
            ),
            (None, FindingStatus::WillNotFix) => format!(
                "Debian will not fix this in {}; remove {} if it is not needed, or accept the risk with an \
                 ignore rule.",
                self.release, self.package
            ),
            (None, _) => format!(
                "No fixed version of {} is available in {} yet; rescan when the feed is updated.",
                self.source_package, self.release
            ),
        }
    }

    /// The Image Builder shape of this finding.
    pub fn to_image_scan_finding(&self) -> ImageScanFinding {
        let parsed = Version::parse(&self.installed_version).ok();
        let (epoch, version, release) = match &parsed {
            Some(v) => (v.epoch(), v.upstream().to_string(), v.revision().map(str::to_string)),
            None => (0, self.installed_version.clone(), None),
        };
        let source_url =
            if self.vulnerability_id.starts_with("CVE-") || self.vulnerability_id.starts_with("TEMP-") {
                Some(format!("https://security-tracker.debian.org/tracker/{}", self.vulnerability_id))
            } else {
                None
            };
        ImageScanFinding {
            aws_account_id: None,
            image_build_version_arn: None,
            image_pipeline_arn: None,
            kind: "PACKAGE_VULNERABILITY".into(),
            description: self.description.clone().or_else(|| Some(self.title())),
            title: self.title(),
            remediation: Remediation {
                recommendation: RemediationRecommendation {
                    text: self.remediation(),
                    url: source_url.clone(),
                },
            },
            severity: self.severity,
            first_observed_at: None,
            updated_at: None,
            inspector_score: self.cvss.iter().filter_map(|c| c.base_score).reduce(f64::max),
            package_vulnerability_details: PackageVulnerabilityDetails {
                vulnerability_id: self.vulnerability_id.clone(),
                vulnerable_packages: vec![VulnerablePackage {
                    name: self.package.clone(),
                    version,
                    epoch,
                    release,
                    arch: self.arch.clone(),
                    // Inspector reports distribution packages with package manager "OS".
                    package_manager: "OS".into(),
                    fixed_in_version: self.fixed_version.clone(),
                    remediation: self.fixed_version.as_ref().map(|_| {
                        format!("apt-get update && apt-get install --only-upgrade {}", self.package)
                    }),
                }],
                source: self.feed.clone(),
                cvss: self.cvss.clone(),
                related_vulnerabilities: self.aliases.clone(),
                source_url,
                vendor_severity: self.vendor_severity.clone(),
            },
            fix_available: if self.fix_available() { "YES" } else { "NO" }.into(),
            kiln: KilnFindingExtras {
                source_package: self.source_package.clone(),
                source_version: self.source_version.clone(),
                installed_version: self.installed_version.clone(),
                status: self.status,
                tracker_status: self.tracker_status,
                nodsa: self.nodsa,
                release: self.release.clone(),
                package_manager: self.package_manager,
                feed: self.feed.clone(),
                feed_date: self.feed_date.clone(),
                source_rule: self.source_rule.clone(),
                ignored: None,
            },
        }
    }
}

/// Image Builder's `ImageScanFinding`, plus `kiln`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageScanFinding {
    /// Filled by the catalogue.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub aws_account_id: Option<String>,
    /// Filled by the catalogue.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_build_version_arn: Option<String>,
    /// Filled by the catalogue.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_pipeline_arn: Option<String>,
    /// Always `PACKAGE_VULNERABILITY`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
    /// Title.
    pub title: String,
    /// How to fix it.
    pub remediation: Remediation,
    /// Severity name.
    pub severity: Severity,
    /// Epoch seconds; filled by the catalogue.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_observed_at: Option<f64>,
    /// Epoch seconds; filled by the catalogue.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub updated_at: Option<f64>,
    /// Highest CVSS base score, when a feed gave one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub inspector_score: Option<f64>,
    /// The vulnerability and package.
    pub package_vulnerability_details: PackageVulnerabilityDetails,
    /// `YES` or `NO`.
    pub fix_available: String,
    /// kiln's extra fields.
    pub kiln: KilnFindingExtras,
}

/// Image Builder's `Remediation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remediation {
    /// The recommendation.
    pub recommendation: RemediationRecommendation,
}

/// Image Builder's `RemediationRecommendation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemediationRecommendation {
    /// What to do.
    pub text: String,
    /// Where to read more.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub url: Option<String>,
}

/// Image Builder's `PackageVulnerabilityDetails`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageVulnerabilityDetails {
    /// The vulnerability id.
    pub vulnerability_id: String,
    /// The affected package (one per finding in kiln).
    pub vulnerable_packages: Vec<VulnerablePackage>,
    /// The feed.
    pub source: String,
    /// Scores.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub cvss: Vec<Cvss>,
    /// Aliases and advisory ids.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub related_vulnerabilities: Vec<String>,
    /// The tracker page.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source_url: Option<String>,
    /// The feed's own rating.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vendor_severity: Option<String>,
}

/// Image Builder's `VulnerablePackage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VulnerablePackage {
    /// Binary package name.
    pub name: String,
    /// Upstream part of the installed version.
    pub version: String,
    /// Epoch of the installed version.
    pub epoch: u32,
    /// Debian revision of the installed version.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub release: Option<String>,
    /// Architecture.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub arch: Option<String>,
    /// `OS`, as Inspector reports distribution packages.
    pub package_manager: String,
    /// Fixed (source) version.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fixed_in_version: Option<String>,
    /// Command that applies the fix.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub remediation: Option<String>,
}

/// kiln's fields beyond the Image Builder model, under the `kiln` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KilnFindingExtras {
    /// Source package matched.
    pub source_package: String,
    /// Source version compared.
    pub source_version: String,
    /// Full installed binary version (`1:2.33.1-0.1`).
    pub installed_version: String,
    /// Status class.
    pub status: FindingStatus,
    /// Tracker status.
    pub tracker_status: TrackerStatus,
    /// `nodsa_reason`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nodsa: Option<NoDsa>,
    /// Release codename.
    pub release: String,
    /// The database the package came from (`dpkg`).
    pub package_manager: PackageManager,
    /// Feed name.
    pub feed: String,
    /// Feed date.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub feed_date: Option<String>,
    /// Non-default source mapping rule.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source_rule: Option<String>,
    /// Set when an ignore rule suppressed the finding: its reason and expiry.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ignored: Option<IgnoredBy>,
}

/// The ignore rule that suppressed a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoredBy {
    /// The rule's reason.
    pub reason: String,
    /// Last day it applies (ISO date).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expires: Option<String>,
}
