//! `kiln lifecycle apply`: plan a lifecycle policy over the catalogue, print it, apply it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use kiln_build::Kiln;
use kiln_build::lifecycle::{Plan, plan};

use crate::cli::LifecycleCommand;

pub fn run(home: &Path, cmd: LifecycleCommand) -> Result<ExitCode> {
    let LifecycleCommand::Apply { file, dry_run, json, as_of } = cmd;
    let policy = match kiln_model::lifecycle::load_lifecycle_policy(&file) {
        Ok(p) => p,
        Err(diags) => {
            for d in diags {
                eprintln!("{d}");
            }
            return Ok(ExitCode::from(crate::EXIT_FAILED));
        }
    };
    let kiln = Kiln::open(home)?;
    let facts = kiln.lifecycle_facts().context("cannot read the catalogue")?;
    let now = as_of.unwrap_or_else(time::OffsetDateTime::now_utc);
    let planned = plan(&policy, &facts, now);
    if dry_run {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "dryRun": true, "plan": planned }))?
            );
        } else {
            print_plan(&planned, true);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let applied = kiln.apply_lifecycle(&planned);
    let failed = applied.iter().any(|a| a.error.is_some());
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dryRun": false, "plan": { "policy": planned.policy, "enabled": planned.enabled,
                "at": planned.at.to_string(), "selected": planned.selected, "exclusions": planned.exclusions },
                "applied": applied,
            }))?
        );
    } else {
        print_plan(&planned, false);
        for a in applied.iter().filter(|a| a.error.is_some()) {
            eprintln!("error: {}: {}", a.change.arn, a.error.as_deref().unwrap_or_default());
        }
    }
    Ok(if failed { ExitCode::from(crate::EXIT_FAILED) } else { ExitCode::SUCCESS })
}

fn print_plan(plan: &Plan, dry_run: bool) {
    let verb = if dry_run { "would change" } else { "changes" };
    if !plan.enabled {
        println!("policy {} is DISABLED: nothing to do ({} image(s) selected)", plan.policy, plan.selected);
        return;
    }
    println!(
        "policy {}: {} image(s) selected, {} {verb}{}",
        plan.policy,
        plan.selected,
        plan.changes.len(),
        if dry_run { " (dry run: nothing changed)" } else { "" }
    );
    for c in &plan.changes {
        println!(
            "  {}/{}/{}  {} -> {}  rule {} ({}): {}",
            c.name,
            c.version,
            c.build,
            c.current_state,
            c.new_state,
            c.rule,
            c.action.as_str(),
            c.why
        );
    }
    for e in &plan.exclusions {
        println!("  kept {}: rule {} ({}): {}", e.arn, e.rule, e.action.as_str(), e.why);
    }
}
