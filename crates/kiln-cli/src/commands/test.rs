//! `kiln test`: boot an image as a test instance and report.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use kiln_build::Kiln;
use kiln_build::test_stage::{TestRequest, summary};
use kiln_instance::TestStatus;

use crate::cli::TestArgs;
use crate::progress::Lines;

pub fn run(home: &Path, args: TestArgs) -> Result<ExitCode> {
    let kiln = Kiln::open(home)?;
    let req = TestRequest {
        target: args.target.clone(),
        report_dir: args.report.clone(),
        keep: args.keep,
        single_instance: args.single_instance,
        cpus: args.cpus,
        memory_mib: args.memory_mib,
        timeout: args.timeout.map(Duration::from_secs),
    };
    eprintln!(
        "testing {} (accelerator {}: {})",
        args.target,
        kiln_image::qemu::detect_accel(),
        if kiln_image::qemu::detect_accel() == kiln_image::qemu::Accel::Kvm {
            "KVM works here"
        } else {
            "KVM does not work here, software emulation is slow"
        }
    );
    let tested = kiln.test(&req, &Lines)?;
    let report = &tested.outcome.report;
    if args.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        for t in &report.tests {
            let status = match t.status {
                TestStatus::Passed => "PASS",
                TestStatus::Failed => "FAIL",
                TestStatus::Skipped => "SKIP",
            };
            let why = t.reason.as_deref().map(|r| format!("  ({r})")).unwrap_or_default();
            println!("{status}  {:<32} {:>7.1}s{why}", t.name, t.duration_ms as f64 / 1000.0);
        }
        println!();
        println!(
            "{}; ready after {:.1}s ({}), {:.1}s in all",
            summary(&report.tests),
            report.system_ready_ms.unwrap_or_default() as f64 / 1000.0,
            report.accelerator,
            report.total_ms as f64 / 1000.0
        );
        println!("reports: {} and {}", tested.json.display(), tested.junit.display());
    }
    if let Some(kept) = &tested.outcome.kept {
        eprintln!("{kept}");
    }
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(crate::EXIT_FAILED) })
}
