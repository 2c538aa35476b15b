//! SARIF 2.1.0 output of findings, for code-scanning dashboards: one run, tool `kiln`, a rule
//! per vulnerability id, one result per (vulnerability, package).
//!
//! Levels: CRITICAL and HIGH → `error`, MEDIUM → `warning`, LOW, INFORMATIONAL and UNTRIAGED →
//! `note`. Each rule also carries `properties.security-severity` (the CVSS score when the feed
//! gives one, else a score in the severity's band), which GitHub uses to rank alerts.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::finding::Finding;
use crate::severity::Severity;

/// The SARIF schema this module writes.
pub const SARIF_SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// The SARIF `level` of a severity.
pub fn level(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Informational | Severity::Untriaged => "note",
    }
}

fn security_severity(severity: Severity) -> f64 {
    match severity {
        Severity::Critical => 9.5,
        Severity::High => 8.0,
        Severity::Medium => 5.5,
        Severity::Low => 2.0,
        Severity::Informational | Severity::Untriaged => 0.0,
    }
}

/// A SARIF 2.1.0 log of `findings` found in `target` (a path, disk or image name).
pub fn to_sarif(findings: &[Finding], target: &str) -> Value {
    let mut rules: BTreeMap<&str, &Finding> = BTreeMap::new();
    for f in findings {
        // The rule shows the worst severity any package has for that vulnerability.
        let e = rules.entry(&f.vulnerability_id).or_insert(f);
        if f.severity > e.severity {
            *e = f;
        }
    }
    let rule_index: BTreeMap<&str, usize> = rules.keys().enumerate().map(|(i, k)| (*k, i)).collect();
    let rules_json: Vec<Value> = rules
        .values()
        .map(|f| {
            let score = f.cvss.iter().filter_map(|c| c.base_score).reduce(f64::max);
            let mut rule = json!({
                "id": f.vulnerability_id,
                "name": f.vulnerability_id,
                "shortDescription": { "text": f.vulnerability_id },
                "fullDescription": { "text": f.description.clone().unwrap_or_else(|| f.vulnerability_id.clone()) },
                "defaultConfiguration": { "level": level(f.severity) },
                "properties": {
                    "tags": ["security", "vulnerability"],
                    "security-severity": format!("{:.1}", score.unwrap_or(security_severity(f.severity))),
                    "severity": f.severity.as_str(),
                },
            });
            if f.vulnerability_id.starts_with("CVE-") || f.vulnerability_id.starts_with("TEMP-") {
                rule["helpUri"] =
                    json!(format!("https://security-tracker.debian.org/tracker/{}", f.vulnerability_id));
            }
            rule
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let fix = match &f.fixed_version {
                Some(v) => format!("fixed in {v}"),
                None => "no fixed version yet".to_string(),
            };
            json!({
                "ruleId": f.vulnerability_id,
                "ruleIndex": rule_index[f.vulnerability_id.as_str()],
                "level": level(f.severity),
                "message": {
                    "text": format!(
                        "{} {} is vulnerable to {} ({}), source {} {}; {}. {}",
                        f.package, f.installed_version, f.vulnerability_id, f.severity,
                        f.source_package, f.source_version, fix, f.remediation()
                    ),
                },
                "locations": [{
                    "physicalLocation": { "artifactLocation": { "uri": target } },
                    "logicalLocations": [{
                        "name": f.package,
                        "fullyQualifiedName": format!("{}@{}", f.package, f.installed_version),
                        "kind": "package",
                    }],
                }],
                "partialFingerprints": {
                    "kilnFinding/v1": format!("{}/{}/{}", f.vulnerability_id, f.package, f.installed_version),
                },
                "properties": {
                    "package": f.package,
                    "installedVersion": f.installed_version,
                    "sourcePackage": f.source_package,
                    "fixedVersion": f.fixed_version,
                    "fixAvailable": f.fix_available(),
                    "severity": f.severity.as_str(),
                    "feed": f.feed,
                },
            })
        })
        .collect();
    json!({
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": "kiln",
                    "version": env!("CARGO_PKG_VERSION"),
                    "rules": rules_json,
                },
            },
            "results": results,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Database, Inventory, ScanOptions, scan};

    fn findings() -> Vec<Finding> {
        let case = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/vuln/peer-cases/trivy-debian-buster");
        let inv = Inventory::from_root(&case.join("rootfs")).unwrap();
        let mut db = Database::new();
        db.load_path(&case.join("feed/debian-tracker.json")).unwrap();
        scan(&inv, &db, &ScanOptions::default()).unwrap().findings
    }

    #[test]
    fn sarif_has_the_required_fields() {
        let found = findings();
        assert!(!found.is_empty());
        let text = serde_json::to_string(&to_sarif(&found, "rootfs")).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], "2.1.0");
        assert_eq!(v["runs"].as_array().unwrap().len(), 1);
        let run = &v["runs"][0];
        assert_eq!(run["tool"]["driver"]["name"], "kiln");
        let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
        let results = run["results"].as_array().unwrap();
        assert_eq!(results.len(), found.len());
        for r in results {
            let id = r["ruleId"].as_str().unwrap();
            let idx = r["ruleIndex"].as_u64().unwrap() as usize;
            assert_eq!(rules[idx]["id"], id);
            assert!(["error", "warning", "note"].contains(&r["level"].as_str().unwrap()));
            assert!(r["message"]["text"].as_str().unwrap().contains(' '));
        }
        let idn = results.iter().find(|r| r["ruleId"] == "CVE-2019-18224").unwrap();
        let msg = idn["message"]["text"].as_str().unwrap();
        assert!(msg.contains("libidn2-0 2.0.5-1") && msg.contains("fixed in 2.0.5-1+deb10u1"), "{msg}");
    }

    #[test]
    fn no_findings_is_still_a_valid_log() {
        let v = to_sarif(&[], "x");
        assert_eq!(v["runs"][0]["results"], json!([]));
        assert_eq!(v["runs"][0]["tool"]["driver"]["rules"], json!([]));
    }

    #[test]
    fn levels_follow_severity() {
        assert_eq!(level(Severity::Critical), "error");
        assert_eq!(level(Severity::Medium), "warning");
        assert_eq!(level(Severity::Untriaged), "note");
    }
}
