//! The compliance report: what `kiln compliance --format json` prints and builds keep as
//! `compliance.json` (and render as `compliance.html`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::profile::{References, Rule, Severity};

/// A rule's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// The rule does not apply to this image (SSH rules without openssh-server, OpenSCAP's
    /// notapplicable and notchecked).
    NotApplicable,
    /// The rule could not be evaluated (an unreadable file, an OpenSCAP error).
    Error,
    /// The recipe accepts the rule's result, with a justification.
    Exception,
}

impl Status {
    pub const ALL: [Status; 5] =
        [Status::Pass, Status::Fail, Status::NotApplicable, Status::Error, Status::Exception];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::NotApplicable => "notapplicable",
            Status::Error => "error",
            Status::Exception => "exception",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who evaluated a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Kiln,
    Openscap,
}

/// One rule's result with everything a reader needs to act on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleResult {
    pub id: String,
    pub title: String,
    pub severity: Severity,
    pub status: Status,
    /// For an excepted rule: what the evaluation found before the exception applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluated: Option<Status>,
    /// What was found: files and lines, modes, values.
    #[serde(default)]
    pub evidence: Vec<String>,
    #[serde(default)]
    pub rationale: String,
    #[serde(default)]
    pub remediation: String,
    #[serde(default)]
    pub references: References,
    /// The exception's justification, for an excepted rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    /// The profile the rule came from.
    pub profile: String,
    pub source: Source,
    /// The check's kind (`sysctl`, `sshd`, ...; `xccdf` for OpenSCAP rules).
    #[serde(default)]
    pub kind: String,
}

impl RuleResult {
    pub fn from_rule(
        rule: &Rule,
        profile: &str,
        source: Source,
        status: Status,
        evidence: Vec<String>,
    ) -> Self {
        RuleResult {
            id: rule.id.clone(),
            title: rule.title.clone(),
            severity: rule.severity,
            status,
            evaluated: None,
            evidence,
            rationale: rule.rationale.trim().to_string(),
            remediation: rule.remediation.trim().to_string(),
            references: rule.references.clone(),
            justification: None,
            profile: profile.to_string(),
            source,
            kind: rule.check.kind().to_string(),
        }
    }
}

/// A profile evaluated in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileInfo {
    pub id: String,
    pub title: String,
    pub source: Source,
    /// For OpenSCAP profiles: the data stream used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastream: Option<String>,
    pub rules: usize,
}

/// What the gate asked and what it decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateOutcome {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_on_severity: Option<Severity>,
    pub passed: bool,
    /// Why it failed, one reason per line.
    #[serde(default)]
    pub reasons: Vec<String>,
    /// The ids of the rules that failed it.
    #[serde(default)]
    pub failing_rules: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComplianceReport {
    /// What was evaluated: a directory, a disk, an image ARN.
    pub target: String,
    pub profiles: Vec<ProfileInfo>,
    /// RFC 3339.
    pub time: String,
    /// Passed / (passed + failed) over applicable, non-excepted rules, in percent (100 when
    /// no rule applies).
    pub score: f64,
    /// Results per status (every status present, zeros included).
    pub counts: BTreeMap<Status, usize>,
    pub gate: GateOutcome,
    pub results: Vec<RuleResult>,
    /// Things the reader should know (OpenSCAP warnings, inventory problems).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl ComplianceReport {
    pub fn count(&self, s: Status) -> usize {
        self.counts.get(&s).copied().unwrap_or(0)
    }

    /// The sentence a failed gate fails a build or a command with.
    pub fn gate_failure(&self) -> Option<String> {
        if self.gate.passed {
            return None;
        }
        Some(format!("score {:.1}%: {}", self.score, self.gate.reasons.join("; ")))
    }
}

/// The score of `results` (see [`ComplianceReport::score`]).
pub fn score(results: &[RuleResult]) -> f64 {
    let pass = results.iter().filter(|r| r.status == Status::Pass).count();
    let fail = results.iter().filter(|r| r.status == Status::Fail).count();
    if pass + fail == 0 {
        return 100.0;
    }
    // One decimal is what reports show; rounding here keeps JSON and HTML in agreement.
    (pass as f64 * 1000.0 / (pass + fail) as f64).round() / 10.0
}

pub fn counts(results: &[RuleResult]) -> BTreeMap<Status, usize> {
    let mut m: BTreeMap<Status, usize> = Status::ALL.iter().map(|s| (*s, 0)).collect();
    for r in results {
        *m.entry(r.status).or_default() += 1;
    }
    m
}
