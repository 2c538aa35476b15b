//! `kiln compliance`: compliance profiles evaluated against a root directory, a disk file or a
//! catalogued image; `kiln compliance --list-profiles`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use kiln_build::Kiln;
use kiln_compliance::policy::{PlanField, PlanOptions};
use kiln_compliance::{ComplianceError, ComplianceReport, Exception, Gate, Plan, Severity, Status};

use crate::cli::{ComplianceArgs, ComplianceFormat};

/// The command line was wrong (documented in `kiln --help`).
const EXIT_USAGE: u8 = 2;

pub fn run(home: &Path, args: ComplianceArgs) -> Result<ExitCode> {
    if args.list_profiles {
        list_profiles();
        return Ok(ExitCode::SUCCESS);
    }
    // Everything on the command line is checked before a disk is imported.
    let Some(target) = args.target.as_deref() else {
        return Ok(usage(
            "give a TARGET (a root directory, a disk file or a catalogued image), or --list-profiles",
        ));
    };
    let fail_on = match args.fail_on.as_deref().map(str::parse::<Severity>).transpose() {
        Ok(s) => s,
        Err(e) => return Ok(usage(&format!("--fail-on: {e}"))),
    };
    let mut exceptions = Vec::new();
    for spec in &args.exceptions {
        match spec.split_once(':') {
            Some((rule, why)) => {
                exceptions.push(Exception { rule_id: rule.trim().into(), justification: why.trim().into() })
            }
            None => {
                return Ok(usage(&format!(
                    "--exception {spec}: expected RULE:JUSTIFICATION (say why the rule's result is acceptable)"
                )));
            }
        }
    }
    let gate = Gate { min_score: args.min_score, fail_on_severity: fail_on };
    let plan = match Plan::new(&args.profiles, &exceptions, gate, &PlanOptions::default()) {
        Ok(p) => p,
        Err(ComplianceError::Plan(problems)) => {
            for p in problems {
                let option = match p.field {
                    PlanField::Profile(i) => {
                        format!("--profile {}", args.profiles.get(i).map(String::as_str).unwrap_or(""))
                    }
                    PlanField::Exception(i, _) => format!("--exception {}", args.exceptions[i]),
                    PlanField::MinScore => "--min-score".into(),
                };
                let hint = p.hint.map(|h| format!(" ({h})")).unwrap_or_default();
                eprintln!("error: {option}: {}{hint}", p.message);
            }
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Err(e) => return Err(e.into()),
    };

    let report = if args.in_guest {
        let (disk, label, image) = super::target::disk_of(home, target, &["qcow2", "raw"])?;
        let (root, _scratch) = super::target::import_root(home, &disk)?;
        let req = kiln_build::guest_compliance::GuestCompliance {
            disk: &disk,
            root: &root,
            target: &label,
            infra: kiln_build::test_stage::image_infra(image.as_ref()),
        };
        eprintln!(
            "booting a test instance of {label} for OpenSCAP (accelerator {})",
            kiln_image::qemu::detect_accel()
        );
        Kiln::open(home)?
            .compliance_in_guest(&req, &plan)
            .with_context(|| format!("cannot evaluate {target} in a test instance"))?
    } else {
        let (root, label, _scratch) = super::target::root_of(home, target)?;
        kiln_compliance::evaluate(&root, &label, &plan)
            .with_context(|| format!("cannot evaluate {target}"))?
    };
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    let text = match args.format {
        ComplianceFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
        ComplianceFormat::Html => kiln_compliance::html::render(&report),
        ComplianceFormat::Table => table(&report),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write the report to {}", path.display()))?;
            eprintln!("report written to {}", path.display());
            if args.format != ComplianceFormat::Table {
                print!("{}", summary(&report));
            }
        }
        None => print!("{text}"),
    }
    match report.gate_failure() {
        Some(failure) => {
            eprintln!("compliance gate failed: {failure}");
            Ok(ExitCode::from(crate::EXIT_FAILED))
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_USAGE)
}

fn summary(r: &ComplianceReport) -> String {
    let counts: Vec<String> =
        Status::ALL.iter().filter(|s| r.count(**s) > 0).map(|s| format!("{} {s}", r.count(*s))).collect();
    format!(
        "score {:.1}% ({}); gate {}\n",
        r.score,
        counts.join(", "),
        if r.gate.passed { "passed" } else { "failed" }
    )
}

fn table(r: &ComplianceReport) -> String {
    let mut out = String::new();
    let profiles: Vec<&str> = r.profiles.iter().map(|p| p.id.as_str()).collect();
    out.push_str(&format!("{}: {}\n\n", r.target, profiles.join(", ")));
    let w = r.results.iter().map(|x| x.id.len()).max().unwrap_or(0).max(4);
    out.push_str(&format!("{:<13} {:<8} {:<w$} TITLE\n", "STATUS", "SEVERITY", "RULE"));
    for x in &r.results {
        out.push_str(&format!(
            "{:<13} {:<8} {:<w$} {}\n",
            x.status.as_str(),
            x.severity.as_str(),
            x.id,
            x.title
        ));
        // What a reader needs to act on: the evidence of failures, the reason of exceptions.
        if matches!(x.status, Status::Fail | Status::Error) {
            for e in x.evidence.iter().take(3) {
                out.push_str(&format!("{:13}   {e}\n", ""));
            }
        }
        if let Some(j) = &x.justification {
            out.push_str(&format!("{:13}   exception: {j}\n", ""));
        }
    }
    out.push('\n');
    out.push_str(&summary(r));
    for reason in &r.gate.reasons {
        out.push_str(&format!("  {reason}\n"));
    }
    out
}

fn list_profiles() {
    println!("kiln's profiles:");
    for name in kiln_compliance::profile_names() {
        match kiln_compliance::Profile::builtin(name) {
            Some(Ok(p)) => println!("  {:<20} {:>3} rules  {}", p.id, p.rules.len(), p.title),
            Some(Err(e)) => println!("  {name:<20} (does not load: {e})"),
            None => {}
        }
    }
    let dir = Path::new(kiln_compliance::scap::CONTENT_DIR);
    let ssg = kiln_compliance::scap::list_profiles(dir);
    if ssg.is_empty() {
        println!(
            "\nSCAP Security Guide profiles: none installed in {} ({})",
            dir.display(),
            kiln_compliance::scap::INSTALL
        );
        return;
    }
    println!("\nSCAP Security Guide profiles (OpenSCAP, from {}):", dir.display());
    for (release, id, title) in ssg {
        println!("  Debian {release:<3} {id:<32} {title}");
    }
}
