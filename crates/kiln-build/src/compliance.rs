//! The compliance stage of a build: the resource file's `compliance` policy checked before any
//! work (every problem a `FILE:LINE:COLUMN` diagnostic at the field), then, after the scan
//! stage, the profiles evaluated against the staged tree, `compliance.json` and
//! `compliance.html` written beside the image, and the gate applied. A failed gate fails the
//! build after the reports are written, so the reason can be read.

use std::path::{Path, PathBuf};

use kiln_compliance::policy::{PlanField, PlanOptions, ProfileChoice};
use kiln_compliance::{ComplianceError, ComplianceReport, Exception, Gate, Plan, Severity};
use kiln_component::diag::Diagnostic;
use kiln_model::ResourceFile;
use serde_json::json;

use crate::BuildError;

/// The report files, in the output folder.
pub const REPORT_JSON: &str = "compliance.json";
pub const REPORT_HTML: &str = "compliance.html";

/// The check stage's part: `None` when the file asks for no compliance stage. With a managed
/// parent the release is known now, so SCAP Security Guide profiles without content for it
/// are refused here too.
pub(crate) fn check(
    file: &ResourceFile,
    resource_file: &Path,
    parent: &kiln_parent::ParentRef,
) -> Result<Option<Plan>, BuildError> {
    let Some(cfg) = &file.compliance else { return Ok(None) };
    let at = |field: &str, message: String| {
        kiln_model::diagnostic_at(resource_file, &format!("compliance.{field}"), message)
    };
    let mut diags: Vec<Diagnostic> = Vec::new();
    let fail_on = match cfg.fail_on_severity.as_deref().map(str::parse::<Severity>).transpose() {
        Ok(s) => s,
        Err(e) => {
            diags.push(at("failOnSeverity", format!("compliance.failOnSeverity: {e}")));
            None
        }
    };
    let exceptions: Vec<Exception> = cfg
        .exceptions
        .iter()
        .map(|e| Exception { rule_id: e.rule_id.clone(), justification: e.justification.clone() })
        .collect();
    let opts = PlanOptions {
        base_dir: resource_file.parent().unwrap_or(Path::new(".")).to_path_buf(),
        ..PlanOptions::default()
    };
    let gate = Gate { min_score: cfg.min_score, fail_on_severity: fail_on };
    match Plan::new(&cfg.profiles, &exceptions, gate, &opts) {
        Ok(plan) => {
            if let kiln_parent::ParentRef::Managed { suite, .. } = parent {
                for (i, name) in cfg.profiles.iter().enumerate() {
                    let Some(ProfileChoice::Scap(p)) = plan.profiles.iter().find(|p| scap_named(p, name))
                    else {
                        continue;
                    };
                    let ds = p.content_dir.join(format!("ssg-debian{}-ds.xml", suite.version()));
                    if !ds.is_file() {
                        diags.push(at(
                            &format!("profiles[{i}]"),
                            format!(
                                "compliance.profiles[{i}]: `{name}` is a SCAP Security Guide profile, but {} has no \
                                 content for Debian {} ({}), the parent's release: use kiln's profiles, a parent \
                                 it has content for, or newer content ({})",
                                p.content_dir.display(),
                                suite.version(),
                                suite.codename(),
                                kiln_compliance::scap::INSTALL
                            ),
                        ));
                    }
                }
            }
            if diags.is_empty() { Ok(Some(plan)) } else { Err(BuildError::Invalid(diags)) }
        }
        Err(ComplianceError::Plan(problems)) => {
            for p in problems {
                let field = match p.field {
                    PlanField::Profile(i) => format!("profiles[{i}]"),
                    PlanField::Exception(i, f) => format!("exceptions[{i}].{f}"),
                    PlanField::MinScore => "minScore".into(),
                };
                let mut d = at(&field, format!("compliance.{field}: {}", p.message));
                d.hint = p.hint;
                diags.push(d);
            }
            Err(BuildError::Invalid(diags))
        }
        Err(e) => Err(BuildError::Compliance(e.to_string())),
    }
}

fn scap_named(p: &ProfileChoice, name: &str) -> bool {
    let ProfileChoice::Scap(s) = p else { return false };
    s.id == name || s.id.strip_prefix(kiln_compliance::scap::PROFILE_PREFIX) == Some(name.trim())
}

/// What the compliance stage gives the rest of the build.
#[derive(Debug)]
pub(crate) struct StageOutcome {
    /// `(path, artifact format)` of the reports written.
    pub reports: Vec<(PathBuf, &'static str)>,
    /// The manifest's `compliance` object.
    pub manifest: serde_json::Value,
}

/// The compliance stage on the staged tree `root`.
pub(crate) fn stage(
    root: &Path,
    arn: &str,
    out_dir: &Path,
    plan: Option<&Plan>,
) -> Result<StageOutcome, BuildError> {
    let Some(plan) = plan else {
        return Ok(StageOutcome {
            reports: Vec::new(),
            manifest: json!({ "status": "SKIPPED", "reason": "the resource file has no compliance policy" }),
        });
    };
    let report =
        kiln_compliance::evaluate(root, arn, plan).map_err(|e| BuildError::Compliance(e.to_string()))?;
    let json_path = out_dir.join(REPORT_JSON);
    let html_path = out_dir.join(REPORT_HTML);
    let text = serde_json::to_vec_pretty(&report).unwrap_or_default();
    std::fs::write(&json_path, text)
        .map_err(|e| BuildError::io("writing the compliance report", &json_path, e))?;
    std::fs::write(&html_path, kiln_compliance::html::render(&report))
        .map_err(|e| BuildError::io("writing the compliance report", &html_path, e))?;
    if let Some(failure) = report.gate_failure() {
        return Err(BuildError::ComplianceGate(format!("{failure} (report in {})", html_path.display())));
    }
    Ok(StageOutcome {
        reports: vec![(json_path, "compliance-report"), (html_path, "compliance-report-html")],
        manifest: manifest_summary(&report),
    })
}

/// The manifest's `compliance` object: profiles, score, counts, the gate and the reports.
fn manifest_summary(r: &ComplianceReport) -> serde_json::Value {
    json!({
        "status": "COMPLETED",
        "report": REPORT_JSON,
        "html": REPORT_HTML,
        "profiles": r.profiles.iter().map(|p| json!({ "id": p.id, "source": p.source, "rules": p.rules })).collect::<Vec<_>>(),
        "score": r.score,
        "counts": r.counts,
        "gate": r.gate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "imageRecipe:
  name: c
  semanticVersion: 1.0.0
  parentImage: debian-12-x86
  components:
    - componentArn: x/1.0.0
";

    fn checked(compliance: &str) -> (tempfile::TempDir, Result<Option<Plan>, BuildError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.yml");
        std::fs::write(&path, format!("{BASE}{compliance}")).unwrap();
        let file = kiln_model::load_resource_file(&path).unwrap_or_else(|d| panic!("{d:?}"));
        let parent = kiln_parent::ParentRef::parse(&file.image_recipe.parent_image).unwrap();
        let r = check(&file, &path, &parent);
        (dir, r)
    }

    #[test]
    fn bad_policies_are_refused_at_the_field_before_any_work() {
        let (_d, r) = checked("");
        assert!(r.unwrap().is_none(), "no policy, no stage");
        let (_d, r) = checked(
            "compliance:\n  profiles: [cis-level1, cis-levle2]\n  failOnSeverity: severe\n  exceptions:\n    - { ruleId: cis-9-nothing, justification: because }\n",
        );
        let e = r.unwrap_err().to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 2, "{e}");
        assert!(lines[0].ends_with("r.yml:9:19: compliance.failOnSeverity: `severe` is not a severity: use low, medium, high or critical"), "{e}");
        assert!(
            lines[1].contains("r.yml:8:26: compliance.profiles[1]: unknown profile `cis-levle2`")
                && lines[1].ends_with("(did you mean `cis-level2`?)"),
            "{e}"
        );
        let (_d, r) = checked(
            "compliance:\n  profiles: cis-level1\n  exceptions:\n    - { ruleId: cis-9-nothing, justification: because }\n",
        );
        let e = r.unwrap_err().to_string();
        assert!(e.contains("r.yml:10:17: compliance.exceptions[0].ruleId: `cis-9-nothing` is not a rule of the profiles evaluated (cis-level1)"), "{e}");
        let (_d, r) = checked("compliance:\n  profiles: cis-level1\n  minScore: 101\n");
        assert!(
            r.unwrap_err().to_string().contains("r.yml:9:13: compliance.minScore: 101 is not a percentage")
        );
        let (_d, r) = checked(
            "compliance:\n  profiles: [cis-level2]\n  minScore: 80\n  failOnSeverity: HIGH\n  exceptions:\n    - { ruleId: cis-1.1.2.1-tmp-separate, justification: tmpfs }\n",
        );
        let plan = r.unwrap().unwrap();
        assert_eq!(plan.gate.fail_on_severity, Some(Severity::High));
        assert_eq!(plan.exceptions.len(), 1);
    }

    #[test]
    fn an_ssg_profile_without_content_for_the_parent_release_is_refused_before_any_work() {
        if !Path::new(kiln_compliance::scap::CONTENT_DIR).join("ssg-debian11-ds.xml").is_file() {
            panic!("needs ssg-debian: run scripts/install-deps.sh --test");
        }
        // debian-12-x86: Debian 12's ssg-debian has no bookworm content.
        let (_d, r) = checked("compliance:\n  profiles: [cis-level1, standard]\n");
        if Path::new(kiln_compliance::scap::CONTENT_DIR).join("ssg-debian12-ds.xml").is_file() {
            assert!(r.is_ok(), "newer content has bookworm");
            return;
        }
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("r.yml:8:26: compliance.profiles[1]: `standard` is a SCAP Security Guide profile")
                && e.contains("no content for Debian 12 (bookworm), the parent's release"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.yml");
        let text = format!(
            "{}compliance:\n  profiles: [standard]\n",
            BASE.replace("debian-12-x86", "debian-11-x86")
        );
        std::fs::write(&path, text).unwrap();
        let file = kiln_model::load_resource_file(&path).unwrap();
        let parent = kiln_parent::ParentRef::parse(&file.image_recipe.parent_image).unwrap();
        assert!(check(&file, &path, &parent).unwrap().is_some(), "bullseye has content");
    }

    #[test]
    fn the_stage_writes_both_reports_and_fails_on_the_gate() {
        let root = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let plan = |gate| Plan::new(&["cis-level1".into()], &[], gate, &PlanOptions::default()).unwrap();
        let ok = stage(root.path(), "arn:x", out.path(), Some(&plan(Gate::default()))).unwrap();
        assert_eq!(ok.reports.len(), 2);
        let report: ComplianceReport =
            serde_json::from_slice(&std::fs::read(out.path().join(REPORT_JSON)).unwrap()).unwrap();
        assert_eq!(report.target, "arn:x");
        assert_eq!(ok.manifest["score"], report.score);
        assert!(
            std::fs::read_to_string(out.path().join(REPORT_HTML)).unwrap().starts_with("<!DOCTYPE html>")
        );
        // An empty tree fails nearly everything.
        let gate = Gate { min_score: Some(90.0), fail_on_severity: Some(Severity::Critical) };
        let e = stage(root.path(), "arn:x", out.path(), Some(&plan(gate))).unwrap_err().to_string();
        assert!(e.starts_with("compliance gate failed: score "), "{e}");
        assert!(e.contains("is below the minimum 90%; failed rules: cis-1.1.1.1-cramfs-disabled"), "{e}");
        assert!(!e.contains("severity critical"), "the one critical rule passes on an empty tree: {e}");
        assert!(out.path().join(REPORT_JSON).is_file(), "the report is written before the build fails");
        let skipped = stage(root.path(), "arn:x", out.path(), None).unwrap();
        assert_eq!(skipped.manifest["status"], "SKIPPED");
    }
}
