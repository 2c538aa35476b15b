//! `kiln threats`: the findings of `kiln serve`'s threat detection, most serious first.

use std::process::ExitCode;

use anyhow::{Context, Result};
use kiln_store::{Store, ThreatFindingFilter};

use crate::cli::ThreatsArgs;

pub fn run(home: &std::path::Path, args: ThreatsArgs) -> Result<ExitCode> {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let mut findings = rt.block_on(async {
        let store = Store::open_default(home)
            .await
            .with_context(|| format!("opening kiln's state in {}", home.display()))?;
        let filter = ThreatFindingFilter { include_archived: args.all, ..Default::default() };
        store.list_threat_findings(&filter).await.context("reading the threat findings")
    })?;
    let rank = |s: &str| kiln_store::THREAT_SEVERITIES.iter().position(|x| *x == s).unwrap_or(0);
    findings.sort_by(|a, b| rank(&b.severity).cmp(&rank(&a.severity)).then(b.last_seen.cmp(&a.last_seen)));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
        return Ok(ExitCode::SUCCESS);
    }
    if findings.is_empty() {
        eprintln!("no threat findings");
        return Ok(ExitCode::SUCCESS);
    }
    let fmt = time::format_description::well_known::Rfc3339;
    println!(
        "{:<7} {:>6}  {:<20}  {:<46} {:<22} RESOURCE",
        "SEVERITY", "COUNT", "LAST SEEN", "TYPE", "PRINCIPAL"
    );
    for f in &findings {
        println!(
            "{:<7} {:>6}  {:<20}  {:<46} {:<22} {}",
            f.severity,
            f.count,
            f.last_seen.replace_nanosecond(0).unwrap_or(f.last_seen).format(&fmt).unwrap_or_default(),
            f.finding_type,
            f.principal,
            f.resource
        );
        println!("        {}", f.title);
    }
    Ok(ExitCode::SUCCESS)
}
