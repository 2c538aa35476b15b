//! The scan stage of a build, and the catalogue side of scans that `kiln scan --catalogue`
//! shares with it.
//!
//! The stage keeps the image's inventory in the catalogue (always, so later rescans need no
//! disk), then, unless the recipe's `imageScanningConfiguration` turns scanning off, imports
//! the policy's feeds into the feed store (`KILN_HOME/feeds`), matches the inventory against
//! them (or against every stored feed when the policy names none), writes `scan.json` beside
//! the image, records the scan and its findings, and applies the gate. A failed gate fails
//! the build after the report is written and recorded, so the reason can be read.

use std::path::{Path, PathBuf};

use kiln_model::ImageScanningConfiguration;
use kiln_scan::{
    Database, FeedStore, GateOutcome, IgnoreRule, Inventory, ScanDocument, ScanOptions, Severity,
    evaluate_gate,
};
use kiln_store::{NewScan, NewScanFinding, ScanTrigger};
use serde_json::json;

use crate::{BuildError, Kiln};

/// The file the scan report is written to, in the output folder.
pub const REPORT_FILE: &str = "scan.json";

/// The recipe's scan policy, checked: severities parsed, dates parsed, feed paths resolved.
#[derive(Debug, Clone)]
pub struct ScanPolicy {
    pub enabled: bool,
    pub fail_on: Option<Severity>,
    pub only_fixable: bool,
    pub ignore: Vec<IgnoreRule>,
    /// Absolute paths or URLs.
    pub feeds: Vec<String>,
}

const DATE: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

impl ScanPolicy {
    /// Checks the policy of a resource file in `base_dir` (where relative feed paths start).
    /// Every error names the field, the value and what is accepted.
    pub fn from_config(cfg: &ImageScanningConfiguration, base_dir: &Path) -> Result<ScanPolicy, BuildError> {
        let bad = |m: String| BuildError::ScanPolicy(m);
        let fail_on = cfg
            .fail_on
            .as_deref()
            .map(|s| s.parse::<Severity>().map_err(|e| bad(format!("failOn: {e}"))))
            .transpose()?;
        let mut ignore = Vec::new();
        for (i, r) in cfg.ignore.iter().enumerate() {
            let expires = r
                .expires
                .as_deref()
                .map(|d| {
                    time::Date::parse(d.trim(), DATE).map_err(|e| {
                        bad(format!(
                            "ignore[{i}].expires: `{d}` is not a date YYYY-MM-DD ({e}); write the last day the \
                             rule applies, such as 2030-01-31"
                        ))
                    })
                })
                .transpose()?;
            ignore.push(IgnoreRule {
                id: r.vulnerability_id.trim().to_string(),
                package: r.package.as_ref().map(|p| p.trim().to_string()),
                reason: r.reason.trim().to_string(),
                expires,
            });
        }
        let mut feeds = Vec::new();
        for (i, f) in cfg.feeds.iter().enumerate() {
            if f.starts_with("http://") || f.starts_with("https://") {
                feeds.push(f.clone());
                continue;
            }
            let path = base_dir.join(f.strip_prefix("file://").unwrap_or(f));
            if let Err(e) = std::fs::metadata(&path) {
                return Err(bad(format!(
                    "feeds[{i}]: cannot read {} ({e}); paths are relative to the resource file, or give an \
                     http(s) URL",
                    path.display()
                )));
            }
            feeds.push(path.display().to_string());
        }
        Ok(ScanPolicy {
            enabled: cfg.image_scanning_enabled,
            fail_on,
            only_fixable: cfg.only_fixable,
            ignore,
            feeds,
        })
    }
}

/// The check stage's part: the policy checked, and a gate that could only fail for want of
/// feeds refused before any work.
pub(crate) fn check(
    cfg: &ImageScanningConfiguration,
    base_dir: &Path,
    home: &Path,
) -> Result<ScanPolicy, BuildError> {
    let policy = ScanPolicy::from_config(cfg, base_dir)?;
    if policy.enabled && policy.feeds.is_empty() {
        if let Some(sev) = policy.fail_on {
            let store = FeedStore::open(&home.join("feeds")).map_err(|e| BuildError::Scan(e.to_string()))?;
            if store.list().map_err(|e| BuildError::Scan(e.to_string()))?.is_empty() {
                return Err(no_feeds_for_gate(sev, &store));
            }
        }
    }
    Ok(policy)
}

fn no_feeds_for_gate(sev: Severity, store: &FeedStore) -> BuildError {
    BuildError::ScanPolicy(format!(
        "failOn is {sev}, but no vulnerability feeds are stored in {}, and a gate with no data cannot pass: {NO_FEEDS_TODO}",
        store.dir().display()
    ))
}

const NO_FEEDS_TODO: &str =
    "import one with `kiln scan --feed FILE|URL` or list `feeds` in imageScanningConfiguration";

/// What the scan stage gives the rest of the build.
#[derive(Debug)]
pub(crate) struct StageOutcome {
    /// `scan.json`, when a scan ran.
    pub report: Option<PathBuf>,
    /// The manifest's `scan` object.
    pub manifest: serde_json::Value,
}

/// The scan stage (see the module documentation).
pub(crate) fn stage(
    kiln: &Kiln,
    arn: &str,
    out_dir: &Path,
    inventory: &Inventory,
    policy: &ScanPolicy,
) -> Result<StageOutcome, BuildError> {
    let inventory_json = serde_json::to_value(inventory).unwrap_or_default();
    kiln.block_on(kiln.store().put_inventory(arn, &inventory_json))
        .map_err(|e| BuildError::Store(e.to_string()))?;
    if !policy.enabled {
        return Ok(skipped("imageScanningEnabled is false in the resource file"));
    }
    let store = FeedStore::open(&kiln.home.join("feeds")).map_err(|e| BuildError::Scan(e.to_string()))?;
    let mut records = Vec::new();
    for feed in &policy.feeds {
        let out =
            store.import(feed).map_err(|e| BuildError::Scan(format!("cannot import feed {feed}: {e}")))?;
        records.push(out.record);
    }
    if policy.feeds.is_empty() {
        records = store.list().map_err(|e| BuildError::Scan(e.to_string()))?;
    }
    if records.is_empty() {
        let why = format!("no vulnerability feeds are stored in {}", store.dir().display());
        let todo =
            "import one with `kiln scan --feed FILE|URL` or list `feeds` in imageScanningConfiguration";
        if let Some(sev) = policy.fail_on {
            return Err(BuildError::Scan(format!(
                "failOn is {sev}, but {why}, and a gate with no data cannot pass: {todo}"
            )));
        }
        eprintln!("kiln: warning: the image was not scanned: {why}; {todo}");
        return Ok(skipped(&format!("{why}; {todo}")));
    }
    let db = store.database_of(&records).map_err(|e| BuildError::Scan(e.to_string()))?;
    let opts = ScanOptions {
        only_fixable: policy.only_fixable,
        ignore: policy.ignore.clone(),
        ..Default::default()
    };
    let doc = scan_document(arn, inventory, &db, &opts, policy.fail_on)?;

    let path = out_dir.join(REPORT_FILE);
    let text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    std::fs::write(&path, text).map_err(|e| BuildError::io("writing the scan report", &path, e))?;
    kiln.record_scan(arn, ScanTrigger::Build, &doc)?;
    if let Some(failure) = doc.gate_failure() {
        return Err(BuildError::ScanGate(format!("{failure} (report in {})", path.display())));
    }
    Ok(StageOutcome { report: Some(path), manifest: manifest_summary(&doc) })
}

fn skipped(reason: &str) -> StageOutcome {
    StageOutcome { report: None, manifest: json!({ "status": "SKIPPED", "reason": reason }) }
}

/// Scans `inventory` of the catalogued image `arn` and stamps the findings with it.
pub fn scan_document(
    arn: &str,
    inventory: &Inventory,
    db: &Database,
    opts: &ScanOptions,
    fail_on: Option<Severity>,
) -> Result<ScanDocument, BuildError> {
    let report = kiln_scan::scan(inventory, db, opts).map_err(|e| BuildError::Scan(e.to_string()))?;
    let gate: Option<GateOutcome> = fail_on.map(|s| evaluate_gate(&report.findings, s));
    let mut doc = ScanDocument::new(arn, inventory, &report, gate);
    let now = time::OffsetDateTime::now_utc();
    doc.stamp(arn, now.unix_timestamp() as f64 + f64::from(now.millisecond()) / 1000.0);
    Ok(doc)
}

/// The manifest's `scan` object: the counts, the gate and where the report is.
fn manifest_summary(doc: &ScanDocument) -> serde_json::Value {
    json!({
        "status": "COMPLETED",
        "report": REPORT_FILE,
        "release": doc.release,
        "feeds": doc.feeds.iter().map(|f| json!({ "location": f.location, "format": f.format, "date": f.date })).collect::<Vec<_>>(),
        "total": doc.summary.total,
        "fixable": doc.summary.fixable,
        "bySeverity": doc.summary.by_severity,
        "ignored": doc.ignored.len(),
        "gate": doc.gate.as_ref().map(|g| json!({ "failOn": g.fail_on, "passed": g.passed, "failing": g.failing.len() })),
    })
}

/// Why an image with these findings needs a rebuild, or `None` when no finding has a fix.
pub fn rebuild_reason(doc: &ScanDocument) -> Option<String> {
    const SHOWN: usize = 5;
    let fixable: Vec<String> = doc
        .findings
        .iter()
        .filter(|f| f.fix_available == "YES")
        .map(|f| {
            let pkg = f.package_vulnerability_details.vulnerable_packages.first().map(|p| p.name.as_str());
            format!("{} ({})", f.package_vulnerability_details.vulnerability_id, pkg.unwrap_or("?"))
        })
        .collect();
    if fixable.is_empty() {
        return None;
    }
    let more = fixable.len().saturating_sub(SHOWN);
    let mut shown = fixable[..fixable.len().min(SHOWN)].join(", ");
    if more > 0 {
        shown.push_str(&format!(" and {more} more"));
    }
    Some(format!(
        "{} finding(s) with a fix available: {shown}; a rebuild picks up the fixed packages",
        fixable.len()
    ))
}

/// The ignore rules of the recipe a catalogued image was built from (the resource file's
/// JSON as the catalogue keeps it); rules that do not parse are left out, since the build
/// checked them.
pub fn recipe_ignore_rules(recipe: &serde_json::Value) -> Vec<IgnoreRule> {
    let Ok(cfg) =
        serde_json::from_value::<ImageScanningConfiguration>(recipe["imageScanningConfiguration"].clone())
    else {
        return Vec::new();
    };
    ScanPolicy::from_config(&ImageScanningConfiguration { feeds: Vec::new(), ..cfg }, Path::new("/"))
        .map(|p| p.ignore)
        .unwrap_or_default()
}

/// One image rescanned against newer feeds.
#[derive(Debug, Clone)]
pub struct Rescan {
    pub document: ScanDocument,
    /// The scan as recorded: its findings say which are new since the image's previous scan.
    pub scan: kiln_store::Scan,
    /// Why the image now needs a rebuild (`None`: it does not, and its mark was cleared).
    pub needs_rebuild: Option<String>,
}

impl Kiln {
    /// Record `doc` as a scan of the image `arn`.
    pub fn record_scan(
        &self,
        arn: &str,
        trigger: ScanTrigger,
        doc: &ScanDocument,
    ) -> Result<kiln_store::Scan, BuildError> {
        let findings = doc
            .findings
            .iter()
            .map(|f| NewScanFinding {
                vulnerability_id: f.package_vulnerability_details.vulnerability_id.clone(),
                package: f
                    .package_vulnerability_details
                    .vulnerable_packages
                    .first()
                    .map(|p| p.name.clone())
                    .unwrap_or_default(),
                severity: f.severity.as_str().to_string(),
                fix_available: f.fix_available == "YES",
                body: serde_json::to_value(f).unwrap_or_default(),
            })
            .collect();
        let mut summary = manifest_summary(doc);
        if let Some(o) = summary.as_object_mut() {
            o.remove("report");
            o.remove("feeds");
        }
        let new = NewScan {
            image_arn: arn.to_string(),
            trigger,
            feeds: serde_json::to_value(&doc.feeds).unwrap_or_default(),
            summary,
            findings,
        };
        self.block_on(self.store().record_scan(&new)).map_err(|e| BuildError::Store(e.to_string()))
    }

    /// Rescan the catalogued image `arn` from its `inventory` against `db`, record the scan,
    /// and mark the image as needing a rebuild when a finding has a fix (clear it otherwise).
    /// The image's recipe's ignore rules apply besides those in `opts`.
    pub fn rescan_image(
        &self,
        image: &kiln_store::Image,
        inventory: &Inventory,
        db: &Database,
        opts: &ScanOptions,
        fail_on: Option<Severity>,
    ) -> Result<Rescan, BuildError> {
        let mut opts = opts.clone();
        opts.ignore.extend(recipe_ignore_rules(&image.recipe));
        let document = scan_document(&image.arn, inventory, db, &opts, fail_on)?;
        let scan = self.record_scan(&image.arn, ScanTrigger::Rescan, &document)?;
        let needs_rebuild = rebuild_reason(&document);
        let store = self.store();
        match &needs_rebuild {
            Some(reason) => self.block_on(store.mark_needs_rebuild(&image.arn, reason)),
            None => self.block_on(store.clear_needs_rebuild(&image.arn)).map(|_| ()),
        }
        .map_err(|e| BuildError::Store(e.to_string()))?;
        Ok(Rescan { document, scan, needs_rebuild })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml_fields: serde_json::Value) -> ImageScanningConfiguration {
        serde_json::from_value(yaml_fields).unwrap()
    }

    #[test]
    fn policy_is_checked_with_the_field_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tracker.json"), "{}").unwrap();
        let p = ScanPolicy::from_config(
            &config(json!({
                "failOn": "high",
                "onlyFixable": true,
                "ignore": [{"vulnerabilityId": "CVE-1", "package": "bash", "reason": "why", "expires": "2030-01-31"}],
                "feeds": ["tracker.json", "https://example.invalid/feed.json"],
            })),
            dir.path(),
        )
        .unwrap();
        assert!(p.enabled && p.only_fixable);
        assert_eq!(p.fail_on, Some(Severity::High));
        assert_eq!(p.ignore[0].expires, Some(time::macros::date!(2030 - 01 - 31)));
        assert_eq!(p.ignore[0].package.as_deref(), Some("bash"));
        assert_eq!(
            p.feeds,
            [
                dir.path().join("tracker.json").display().to_string(),
                "https://example.invalid/feed.json".into()
            ]
        );

        let err = |v| ScanPolicy::from_config(&config(v), dir.path()).unwrap_err().to_string();
        let e = err(json!({"failOn": "SEVERE"}));
        assert!(
            e.starts_with("imageScanningConfiguration: failOn:") && e.contains("LOW, MEDIUM, HIGH, CRITICAL"),
            "{e}"
        );
        let e =
            err(json!({"ignore": [{"vulnerabilityId": "CVE-1", "reason": "r", "expires": "2030-13-01"}]}));
        assert!(e.contains("ignore[0].expires: `2030-13-01` is not a date YYYY-MM-DD"), "{e}");
        let e =
            err(json!({"ignore": [{"vulnerabilityId": "CVE-1", "reason": "r", "expires": "31.01.2030"}]}));
        assert!(e.contains("ignore[0].expires"), "{e}");
        let e = err(json!({"feeds": ["missing.json"]}));
        assert!(e.contains("feeds[0]: cannot read") && e.contains("missing.json"), "{e}");
    }

    #[test]
    fn the_examples_scan_and_build_without_feeds() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        for (example, rules) in [("minimal/minimal.yml", 0), ("web-server/web-server.yml", 1)] {
            let path = examples.join(example);
            let file = kiln_model::load_resource_file(&path).unwrap_or_else(|d| panic!("{example}: {d:?}"));
            let p =
                ScanPolicy::from_config(&file.image_scanning_configuration, path.parent().unwrap()).unwrap();
            assert!(p.enabled, "{example}");
            assert_eq!(p.fail_on, None, "{example} must build on a machine without feeds");
            assert_eq!(p.ignore.len(), rules, "{example}");
        }
    }

    #[test]
    fn a_gate_without_feeds_is_refused_before_any_work() {
        let home = tempfile::tempdir().unwrap();
        let base = home.path();
        let e = check(&config(json!({"failOn": "LOW"})), base, home.path()).unwrap_err().to_string();
        assert!(e.contains("failOn is LOW") && e.contains("kiln scan --feed"), "{e}");
        // No gate: the stage skips the scan with a warning instead; disabled: nothing to check.
        assert!(check(&config(json!({})), base, home.path()).is_ok());
        assert!(
            check(&config(json!({"failOn": "LOW", "imageScanningEnabled": false})), base, home.path())
                .is_ok()
        );
        let tracker = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/vuln/peer-cases/trivy-debian-buster/feed/debian-tracker.json");
        FeedStore::open(&home.path().join("feeds")).unwrap().import(tracker.to_str().unwrap()).unwrap();
        assert_eq!(
            check(&config(json!({"failOn": "LOW"})), base, home.path()).unwrap().fail_on,
            Some(Severity::Low)
        );
    }

    #[test]
    fn recipe_rules_and_rebuild_reasons() {
        let recipe =
            json!({"imageScanningConfiguration": {"ignore": [{"vulnerabilityId": "CVE-9", "reason": "ok"}]}});
        let rules = recipe_ignore_rules(&recipe);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].id, "CVE-9");
        assert!(recipe_ignore_rules(&json!({"imageRecipe": {}})).is_empty());

        let case =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vuln/peer-cases/trivy-debian-buster");
        let inv = Inventory::from_root(&case.join("rootfs")).unwrap();
        let mut db = Database::new();
        db.load_path(&case.join("feed/debian-tracker.json")).unwrap();
        let doc = scan_document("arn:x", &inv, &db, &ScanOptions::default(), Some(Severity::Low)).unwrap();
        assert_eq!(doc.findings[0].image_build_version_arn.as_deref(), Some("arn:x"));
        assert_eq!(
            rebuild_reason(&doc).as_deref(),
            Some(
                "1 finding(s) with a fix available: CVE-2019-18224 (libidn2-0); a rebuild picks up the fixed packages"
            )
        );
        assert_eq!(
            manifest_summary(&doc)["gate"],
            json!({"failOn": "LOW", "passed": false, "failing": 1}),
            "bash's LOW finding fails; libidn2's is UNTRIAGED in this feed"
        );
        let unfixed = ScanOptions {
            ignore: vec![IgnoreRule {
                id: "CVE-2019-18224".into(),
                package: None,
                reason: "r".into(),
                expires: None,
            }],
            ..Default::default()
        };
        let doc = scan_document("arn:x", &inv, &db, &unfixed, None).unwrap();
        assert_eq!(doc.summary.total, 1);
        assert_eq!(rebuild_reason(&doc), None, "only the unfixed bash finding is left");
    }
}
