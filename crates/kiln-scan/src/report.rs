//! The scan report document: what `kiln scan --format json` prints and what a build writes as
//! `scan.json` beside the image. One type, so the command line and the build cannot drift.
//!
//! Findings are in Image Builder's `ImageScanFinding` shape ([`ImageScanFinding`]); findings an
//! ignore rule suppressed are listed apart under `ignored`, each with `kiln.ignored` saying which
//! rule and until when.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::feed::FeedInfo;
use crate::finding::ImageScanFinding;
use crate::inventory::{Inventory, KernelPackage, OsRelease, Problem};
use crate::matching::{GateOutcome, ScanReport};
use crate::severity::Severity;

/// One scan of one target, as a JSON document (camelCase).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanDocument {
    /// What was scanned: a path, `NAME/VERSION[/BUILD]` or an image ARN.
    pub target: String,
    /// What the inventory held.
    pub inventory: InventorySummary,
    /// The release codename matched.
    pub release: String,
    /// The feeds that answered.
    pub feeds: Vec<FeedInfo>,
    /// Findings, highest severity first.
    pub findings: Vec<ImageScanFinding>,
    /// Findings an ignore rule in force suppressed.
    pub ignored: Vec<ImageScanFinding>,
    /// Packages that could not be matched, and why.
    pub notes: Vec<String>,
    /// Counts.
    pub summary: ScanSummary,
    /// The severity gate, when one was asked for (`null` otherwise).
    pub gate: Option<GateOutcome>,
}

/// The inventory in brief.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventorySummary {
    /// The OS release.
    pub os: Option<OsRelease>,
    /// How many packages are installed.
    pub packages: usize,
    /// The default kernel.
    pub kernel: Option<KernelPackage>,
    /// What could not be read.
    pub problems: Vec<Problem>,
}

/// Counts of a scan's findings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanSummary {
    /// Findings (ignored ones not counted).
    pub total: usize,
    /// Findings with a fixed version available.
    pub fixable: usize,
    /// Findings per severity name; every severity is present, 0 when none.
    pub by_severity: BTreeMap<String, usize>,
}

impl ScanDocument {
    /// The document of `report`, a scan of `inventory` taken from `target`.
    pub fn new(target: &str, inventory: &Inventory, report: &ScanReport, gate: Option<GateOutcome>) -> Self {
        let mut by_severity: BTreeMap<String, usize> =
            Severity::ALL.iter().map(|s| (s.as_str().to_string(), 0)).collect();
        for f in &report.findings {
            *by_severity.entry(f.severity.as_str().to_string()).or_default() += 1;
        }
        let ignored = report
            .ignored
            .iter()
            .map(|i| {
                let mut f = i.finding.to_image_scan_finding();
                f.kiln.ignored = Some(i.ignored_by.clone());
                f
            })
            .collect();
        ScanDocument {
            target: target.to_string(),
            inventory: InventorySummary {
                os: inventory.os.clone(),
                packages: inventory.packages.len(),
                kernel: inventory.kernel.clone(),
                problems: inventory.problems.clone(),
            },
            release: report.release.clone(),
            feeds: report.feeds.clone(),
            findings: report.findings.iter().map(|f| f.to_image_scan_finding()).collect(),
            ignored,
            notes: report.notes.clone(),
            summary: ScanSummary {
                total: report.findings.len(),
                fixable: report.findings.iter().filter(|f| f.fix_available()).count(),
                by_severity,
            },
            gate,
        }
    }

    /// Marks every finding as one of the catalogued image `arn`, observed at `at` (seconds
    /// since the epoch), as `ListImageScanFindings` reports them.
    pub fn stamp(&mut self, arn: &str, at: f64) {
        for f in self.findings.iter_mut().chain(self.ignored.iter_mut()) {
            f.image_build_version_arn = Some(arn.to_string());
            f.updated_at = Some(at);
        }
    }

    /// The gate's failure in one line (`None` when there is no gate or it passed): the
    /// severity, how many findings fail it and the first few of them.
    pub fn gate_failure(&self) -> Option<String> {
        let g = self.gate.as_ref().filter(|g| !g.passed)?;
        const SHOWN: usize = 10;
        let mut first: Vec<String> =
            g.failing.iter().take(SHOWN).map(|(id, pkg, sev)| format!("{id} ({pkg}, {sev})")).collect();
        if g.failing.len() > SHOWN {
            first.push(format!("and {} more", g.failing.len() - SHOWN));
        }
        Some(format!("{} finding(s) at or above {}: {}", g.failing.len(), g.fail_on, first.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Database;
    use crate::matching::{IgnoreRule, ScanOptions, evaluate_gate, scan};
    use std::path::{Path, PathBuf};

    fn case() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vuln/peer-cases/trivy-debian-buster")
    }

    fn buster_document() -> ScanDocument {
        let inv = Inventory::from_root(&case().join("rootfs")).unwrap();
        let mut db = Database::new();
        db.load_path(&case().join("feed/debian-tracker.json")).unwrap();
        let opts = ScanOptions {
            ignore: vec![IgnoreRule {
                id: "CVE-2019-18276".into(),
                package: Some("bash".into()),
                reason: "no login shell".into(),
                expires: Some(time::macros::date!(2999 - 12 - 31)),
            }],
            ..Default::default()
        };
        let report = scan(&inv, &db, &opts).unwrap();
        let gate = evaluate_gate(&report.findings, Severity::Untriaged);
        ScanDocument::new("buster", &inv, &report, Some(gate))
    }

    #[test]
    fn document_counts_and_round_trips() {
        let mut doc = buster_document();
        assert_eq!(doc.inventory.packages, 91);
        assert_eq!(doc.release, "buster");
        assert_eq!(doc.summary.total, 1);
        assert_eq!(doc.summary.fixable, 1);
        assert_eq!(doc.summary.by_severity.len(), Severity::ALL.len());
        assert_eq!(doc.summary.by_severity["UNTRIAGED"], 1, "the tracker has not rated it");
        assert_eq!(doc.summary.by_severity["LOW"], 0);
        assert_eq!(doc.findings[0].package_vulnerability_details.vulnerability_id, "CVE-2019-18224");
        assert_eq!(doc.ignored.len(), 1);
        assert_eq!(doc.ignored[0].kiln.ignored.as_ref().unwrap().expires.as_deref(), Some("2999-12-31"));

        doc.stamp("arn:aws:imagebuilder:local:000000000000:image/x/1.0.0/1", 1.5e9);
        let text = serde_json::to_string_pretty(&doc).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["summary"]["bySeverity"]["UNTRIAGED"], 1);
        assert_eq!(
            value["findings"][0]["imageBuildVersionArn"],
            "arn:aws:imagebuilder:local:000000000000:image/x/1.0.0/1"
        );
        assert_eq!(value["findings"][0]["updatedAt"], 1.5e9);
        assert_eq!(value["gate"]["fail_on"], "UNTRIAGED");
        let back: ScanDocument = serde_json::from_str(&text).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn gate_failure_names_severity_count_and_findings() {
        let doc = buster_document();
        assert_eq!(
            doc.gate_failure().as_deref(),
            Some("1 finding(s) at or above UNTRIAGED: CVE-2019-18224 (libidn2-0, UNTRIAGED)")
        );
        let mut passed = doc.clone();
        passed.gate = Some(evaluate_gate(&[], Severity::Untriaged));
        assert_eq!(passed.gate_failure(), None);
        passed.gate = None;
        assert_eq!(passed.gate_failure(), None);
    }
}
