//! The plan of an evaluation (profiles, exceptions, gate), checked before any work, and the
//! evaluation itself: every profile run, exceptions applied, the score and the gate.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use kiln_scan::rootfs::RootFs;
use serde::{Deserialize, Serialize};

use crate::profile::{Profile, Severity, profile_names};
use crate::report::{self, ComplianceReport, GateOutcome, ProfileInfo, RuleResult, Source, Status};
use crate::{ComplianceError, scap};

/// A rule whose result the recipe accepts, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exception {
    pub rule_id: String,
    pub justification: String,
}

/// When an evaluation fails: a score below `min_score` (percent), or any failed (or
/// unevaluable) rule at or above `fail_on_severity`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_on_severity: Option<Severity>,
}

/// Where in the plan a problem is; callers name it in their own terms (a resource file's
/// field, a command-line option).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanField {
    /// The profile name at this index.
    Profile(usize),
    /// The exception at this index, and its field (`ruleId`, `justification`).
    Exception(usize, &'static str),
    MinScore,
}

impl fmt::Display for PlanField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanField::Profile(i) => write!(f, "profiles[{i}]"),
            PlanField::Exception(i, field) => write!(f, "exceptions[{i}].{field}"),
            PlanField::MinScore => f.write_str("minScore"),
        }
    }
}

/// One thing wrong with a plan: where, what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanProblem {
    pub field: PlanField,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for PlanProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

/// A profile to evaluate.
#[derive(Debug, Clone)]
pub enum ProfileChoice {
    Kiln(Profile),
    Scap(scap::ScapProfile),
}

impl ProfileChoice {
    pub fn id(&self) -> &str {
        match self {
            ProfileChoice::Kiln(p) => &p.id,
            ProfileChoice::Scap(p) => &p.id,
        }
    }
}

/// Where profiles come from.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Relative profile file paths start here.
    pub base_dir: PathBuf,
    /// The SCAP Security Guide content (`/usr/share/xml/scap/ssg/content`).
    pub scap_content: PathBuf,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions { base_dir: PathBuf::from("."), scap_content: PathBuf::from(scap::CONTENT_DIR) }
    }
}

/// A checked plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub profiles: Vec<ProfileChoice>,
    pub exceptions: Vec<Exception>,
    pub gate: Gate,
}

impl Plan {
    /// Resolves every profile and checks every exception and the gate; every problem is
    /// reported, not only the first.
    pub fn new(
        names: &[String],
        exceptions: &[Exception],
        gate: Gate,
        opts: &PlanOptions,
    ) -> Result<Plan, ComplianceError> {
        let mut problems = Vec::new();
        let mut profiles = Vec::new();
        let mut all_resolved = true;
        if names.is_empty() {
            problems.push(PlanProblem {
                field: PlanField::Profile(0),
                message: "no profile given".into(),
                hint: Some(format!("kiln's profiles are {}", profile_names().collect::<Vec<_>>().join(", "))),
            });
        }
        for (i, name) in names.iter().enumerate() {
            match resolve(name, opts) {
                Ok(p) => {
                    if !profiles.iter().any(|q: &ProfileChoice| q.id() == p.id()) {
                        profiles.push(p)
                    }
                }
                Err((message, hint)) => {
                    all_resolved = false;
                    problems.push(PlanProblem { field: PlanField::Profile(i), message, hint })
                }
            }
        }
        let mut seen = BTreeSet::new();
        for (i, e) in exceptions.iter().enumerate() {
            let id = e.rule_id.trim();
            if id.is_empty() {
                problems.push(PlanProblem {
                    field: PlanField::Exception(i, "ruleId"),
                    message: "the rule id is empty".into(),
                    hint: None,
                });
                continue;
            }
            if e.justification.trim().is_empty() {
                problems.push(PlanProblem {
                    field: PlanField::Exception(i, "justification"),
                    message: format!("the exception for `{id}` has no justification"),
                    hint: Some("say why the rule's result is acceptable for this image".into()),
                });
            }
            if !seen.insert(id.to_string()) {
                problems.push(PlanProblem {
                    field: PlanField::Exception(i, "ruleId"),
                    message: format!("`{id}` has two exceptions"),
                    hint: None,
                });
            }
            // Unknown ids are only reportable once the profiles resolved.
            if all_resolved && !profiles.iter().any(|p| has_rule(p, id)) {
                let known = profiles.iter().flat_map(|p| match p {
                    ProfileChoice::Kiln(k) => k.rules.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
                    ProfileChoice::Scap(s) => s.rules.iter().map(String::as_str).collect(),
                });
                let hint = kiln_component::diag::suggest(id, known).map(|s| format!("did you mean `{s}`?"));
                let ids: Vec<&str> = profiles.iter().map(ProfileChoice::id).collect();
                problems.push(PlanProblem {
                    field: PlanField::Exception(i, "ruleId"),
                    message: format!("`{id}` is not a rule of the profiles evaluated ({})", ids.join(", ")),
                    hint: hint
                        .or_else(|| Some("`kiln compliance --list-profiles` lists the profiles".into())),
                });
            }
        }
        if let Some(s) = gate.min_score
            && !(0.0..=100.0).contains(&s)
        {
            problems.push(PlanProblem {
                field: PlanField::MinScore,
                message: format!("{s} is not a percentage"),
                hint: Some("give a number from 0 to 100".into()),
            });
        }
        if !problems.is_empty() {
            return Err(ComplianceError::Plan(problems));
        }
        let exceptions = exceptions
            .iter()
            .map(|e| Exception {
                rule_id: e.rule_id.trim().into(),
                justification: e.justification.trim().into(),
            })
            .collect();
        Ok(Plan { profiles, exceptions, gate })
    }
}

fn has_rule(p: &ProfileChoice, id: &str) -> bool {
    match p {
        ProfileChoice::Kiln(k) => k.rule(id).is_some(),
        ProfileChoice::Scap(s) => s.rules.contains(&scap::full_rule_id(id)),
    }
}

/// A profile name: kiln's, a profile file, or a SCAP Security Guide profile.
fn resolve(name: &str, opts: &PlanOptions) -> Result<ProfileChoice, (String, Option<String>)> {
    let name = name.trim();
    if let Some(p) = Profile::builtin(name) {
        return p.map(ProfileChoice::Kiln).map_err(|e| (e.to_string(), None));
    }
    if name.contains('/') || name.ends_with(".yml") || name.ends_with(".yaml") {
        let path = opts.base_dir.join(name);
        return Profile::from_file(&path).map(ProfileChoice::Kiln).map_err(|e| (e.to_string(), None));
    }
    match scap::resolve(name, &opts.scap_content) {
        Ok(Some(p)) => Ok(ProfileChoice::Scap(p)),
        Ok(None) => {
            let kiln: Vec<&str> = profile_names().collect();
            let ssg = scap::profile_ids(&opts.scap_content);
            let hint = kiln_component::diag::suggest(
                name,
                kiln.iter().copied().chain(ssg.iter().map(String::as_str)),
            )
            .map(|s| format!("did you mean `{s}`?"));
            let ssg_text = if ssg.is_empty() {
                format!(
                    "no SCAP Security Guide content is installed in {} (for its profiles: {})",
                    opts.scap_content.display(),
                    scap::INSTALL
                )
            } else {
                format!("SCAP Security Guide profiles: {}", ssg.join(", "))
            };
            Err((
                format!("unknown profile `{name}`: kiln's profiles are {}; {ssg_text}", kiln.join(", ")),
                hint,
            ))
        }
        Err(e) => Err((e, None)),
    }
}

/// Evaluates `plan` against the unpacked image at `root`; `target` names it in the report.
/// SCAP Security Guide profiles run offline on the tree ([`scap::run`]).
pub fn evaluate(root: &Path, target: &str, plan: &Plan) -> Result<ComplianceReport, ComplianceError> {
    evaluate_with(root, target, plan, &|fs, s| scap::run(root, fs, s))
}

/// How a SCAP Security Guide profile is run: offline on the tree, or in a booted guest.
pub type ScapRunner<'a> = dyn Fn(&RootFs, &scap::ScapProfile) -> Result<scap::ScapRun, ComplianceError> + 'a;

/// [`evaluate`], with SCAP Security Guide profiles run by `scap` (inside a test instance, for
/// the probes that need a running system); kiln's own profiles still read the tree at `root`.
pub fn evaluate_with(
    root: &Path,
    target: &str,
    plan: &Plan,
    scap: &ScapRunner<'_>,
) -> Result<ComplianceReport, ComplianceError> {
    let fs =
        RootFs::open(root).map_err(|source| ComplianceError::Root { path: root.to_path_buf(), source })?;
    let mut results: Vec<RuleResult> = Vec::new();
    let mut infos = Vec::new();
    let mut notes = Vec::new();
    for p in &plan.profiles {
        let (rs, info) = match p {
            ProfileChoice::Kiln(k) => {
                let rs = crate::eval::evaluate_profile(&fs, k);
                let info = ProfileInfo {
                    id: k.id.clone(),
                    title: k.title.clone(),
                    source: Source::Kiln,
                    datastream: None,
                    rules: rs.len(),
                };
                (rs, info)
            }
            ProfileChoice::Scap(s) => {
                let run = scap(&fs, s)?;
                notes.extend(run.notes);
                (run.results, run.info)
            }
        };
        infos.push(info);
        for r in rs {
            // A rule in two selected profiles (Level 1 under Level 2) is reported once.
            if !results.iter().any(|x| x.id == r.id) {
                results.push(r);
            }
        }
    }
    for e in &plan.exceptions {
        let full = scap::full_rule_id(&e.rule_id);
        for r in results.iter_mut().filter(|r| r.id == e.rule_id || r.id == full) {
            r.evaluated = Some(r.status);
            r.status = Status::Exception;
            r.justification = Some(e.justification.clone());
        }
    }
    let score = report::score(&results);
    let gate = apply_gate(&plan.gate, score, &results);
    let now = time::OffsetDateTime::now_utc();
    Ok(ComplianceReport {
        target: target.to_string(),
        profiles: infos,
        time: now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        score,
        counts: report::counts(&results),
        gate,
        results,
        notes,
    })
}

/// How many failing rule ids a reason names before "and N more".
const NAMED: usize = 8;

fn named(ids: &[&str]) -> String {
    let mut s = ids[..ids.len().min(NAMED)].join(", ");
    if ids.len() > NAMED {
        s.push_str(&format!(" and {} more", ids.len() - NAMED));
    }
    s
}

/// The gate's verdict on `results` with `score`.
pub fn apply_gate(gate: &Gate, score: f64, results: &[RuleResult]) -> GateOutcome {
    let mut reasons = Vec::new();
    let mut failing: Vec<&str> = Vec::new();
    if let Some(min) = gate.min_score
        && score < min
    {
        let failed: Vec<&str> =
            results.iter().filter(|r| r.status == Status::Fail).map(|r| r.id.as_str()).collect();
        reasons
            .push(format!("score {score:.1}% is below the minimum {min}%; failed rules: {}", named(&failed)));
        failing.extend(failed);
    }
    if let Some(sev) = gate.fail_on_severity {
        // A rule that could not be evaluated cannot be shown to pass.
        let bad: Vec<&RuleResult> = results
            .iter()
            .filter(|r| matches!(r.status, Status::Fail | Status::Error) && r.severity >= sev)
            .collect();
        if !bad.is_empty() {
            let ids: Vec<&str> = bad.iter().map(|r| r.id.as_str()).collect();
            reasons.push(format!(
                "{} rule(s) of severity {sev} or above failed or could not be evaluated: {}",
                bad.len(),
                named(&ids)
            ));
            for id in ids {
                if !failing.contains(&id) {
                    failing.push(id);
                }
            }
        }
    }
    GateOutcome {
        min_score: gate.min_score,
        fail_on_severity: gate.fail_on_severity,
        passed: reasons.is_empty(),
        reasons,
        failing_rules: failing.into_iter().map(str::to_string).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::testing::*;

    fn plan(names: &[&str], exceptions: &[(&str, &str)], gate: Gate) -> Result<Plan, ComplianceError> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let ex: Vec<Exception> = exceptions
            .iter()
            .map(|(r, j)| Exception { rule_id: r.to_string(), justification: j.to_string() })
            .collect();
        let opts =
            PlanOptions { base_dir: PathBuf::from("."), scap_content: PathBuf::from("/nonexistent/ssg") };
        Plan::new(&names, &ex, gate, &opts)
    }

    fn problems(r: Result<Plan, ComplianceError>) -> Vec<String> {
        match r {
            Err(ComplianceError::Plan(p)) => p.iter().map(ToString::to_string).collect(),
            other => panic!("expected plan problems, got {other:?}"),
        }
    }

    #[test]
    fn bad_plans_are_refused_with_every_problem_named() {
        let p = problems(plan(&["cis-levl1"], &[], Gate::default()));
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with("profiles[0]: unknown profile `cis-levl1`: kiln's profiles are cis-level1,"),
            "{p:?}"
        );
        assert!(p[0].contains("apt-get install") && p[0].contains("did you mean `cis-level1`?"), "{p:?}");
        let p = problems(plan(
            &["cis-level1"],
            &[
                ("cis-1.1.1.1-cramfs-disabled", " "),
                ("cis-9.9-nonsense", "why not"),
                ("cis-1.1.1.1-cramfs-disabld", "typo"),
            ],
            Gate { min_score: Some(120.0), fail_on_severity: None },
        ));
        assert_eq!(p.len(), 4, "{p:?}");
        assert_eq!(
            p[0],
            "exceptions[0].justification: the exception for `cis-1.1.1.1-cramfs-disabled` has no justification (say why the rule's result is acceptable for this image)"
        );
        assert!(p[1].starts_with("exceptions[1].ruleId: `cis-9.9-nonsense` is not a rule of the profiles evaluated (cis-level1)"), "{p:?}");
        assert!(p[2].ends_with("(did you mean `cis-1.1.1.1-cramfs-disabled`?)"), "{p:?}");
        assert!(p[3].starts_with("minScore: 120 is not a percentage"), "{p:?}");
        let p = problems(plan(&[], &[], Gate::default()));
        assert!(p[0].starts_with("profiles[0]: no profile given"), "{p:?}");
    }

    #[test]
    fn exceptions_gate_and_score() {
        // Two rules fail (high and low), one passes, one is not applicable.
        let text = "id: p
title: P
rules:
  - { id: a, title: A, severity: high, rationale: r, remediation: m, references: { cis: [1] }, check: { fileExists: { path: /etc/a } } }
  - { id: b, title: B, severity: low, rationale: r, remediation: m, references: { cis: [2] }, check: { fileExists: { path: /etc/b } } }
  - { id: c, title: C, severity: low, rationale: r, remediation: m, references: { cis: [3] }, check: { fileExists: { path: /etc/c } } }
  - { id: d, title: D, severity: critical, rationale: r, remediation: m, references: { cis: [4] }, check: { mount: { mountPoint: /tmp, options: [nodev] } } }
";
        let dir = tree(&[("etc/c", ""), ("profile.yml", text)]);
        let opts =
            PlanOptions { base_dir: dir.path().to_path_buf(), scap_content: PathBuf::from("/nonexistent") };
        let gate = Gate { min_score: Some(50.0), fail_on_severity: Some(Severity::High) };
        let p = Plan::new(&["profile.yml".into()], &[], gate, &opts).unwrap();
        let r = evaluate(dir.path(), "tree", &p).unwrap();
        assert_eq!(r.score, 33.3);
        assert_eq!((r.count(Status::Pass), r.count(Status::Fail), r.count(Status::NotApplicable)), (1, 2, 1));
        assert!(!r.gate.passed);
        assert_eq!(r.gate.failing_rules, ["a", "b"]);
        assert_eq!(
            r.gate_failure().unwrap(),
            "score 33.3%: score 33.3% is below the minimum 50%; failed rules: a, b; 1 rule(s) of severity high or above failed or could not be evaluated: a"
        );
        // The high one is excepted: it no longer counts, and the score is 1 / 2.
        let ex = [Exception { rule_id: "a".into(), justification: "the appliance has no /etc/a".into() }];
        let p = Plan::new(&["profile.yml".into()], &ex, gate, &opts).unwrap();
        let r = evaluate(dir.path(), "tree", &p).unwrap();
        assert_eq!(r.score, 50.0);
        assert!(r.gate.passed, "{:?}", r.gate);
        let a = &r.results[0];
        assert_eq!((a.status, a.evaluated), (Status::Exception, Some(Status::Fail)));
        assert_eq!(a.justification.as_deref(), Some("the appliance has no /etc/a"));
        assert_eq!(a.evidence, ["/etc/a does not exist"], "what the rule found stays in the report");
        assert_eq!(r.count(Status::Exception), 1);
        // The JSON names statuses and fields the way the docs say.
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["counts"]["notapplicable"], 1);
        assert_eq!(json["results"][0]["status"], "exception");
        assert_eq!(json["results"][0]["evaluated"], "fail");
        assert_eq!(json["gate"]["failOnSeverity"], "high");
        let back: ComplianceReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn an_empty_evaluation_scores_full_marks() {
        assert_eq!(report::score(&[]), 100.0);
        let g =
            apply_gate(&Gate { min_score: Some(100.0), fail_on_severity: Some(Severity::Low) }, 100.0, &[]);
        assert!(g.passed);
    }
}
