//! `kiln image list|show`.

use std::process::ExitCode;

use anyhow::{Result, bail};
use kiln_build::Kiln;

use crate::cli::ImageCommand;

pub fn run(home: &std::path::Path, cmd: ImageCommand) -> Result<ExitCode> {
    let kiln = Kiln::open(home)?;
    let store = kiln.store();
    match cmd {
        ImageCommand::List { name, json } => {
            let filter = kiln_store::ImageFilter { name, ..Default::default() };
            let images = kiln.block_on(store.list_images(&filter))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else if images.is_empty() {
                eprintln!("no images yet: `kiln build -f FILE` makes one");
            } else {
                println!("{:<24} {:<10} {:>5}  {:<10} CREATED", "NAME", "VERSION", "BUILD", "STATE");
                for i in &images {
                    println!(
                        "{:<24} {:<10} {:>5}  {:<10} {}",
                        i.name,
                        i.version.to_string(),
                        i.build,
                        i.state.as_str(),
                        i.created_at
                    );
                }
            }
        }
        ImageCommand::Show { image, json } => {
            let found = kiln.find_image(&image)?;
            let history = kiln.block_on(store.image_history(&found.arn))?;
            let usage = kiln.block_on(store.list_usage(Some(&found.arn)))?;
            let scan = kiln.block_on(store.latest_scan(&found.arn))?;
            let rebuild = kiln.block_on(store.needs_rebuild(&found.arn))?;
            let regions = kiln.block_on(store.image_regions(&found.arn))?;
            if json {
                // The latest scan without its findings (`kiln scan` lists those).
                let scan = scan.map(|s| {
                    serde_json::json!({
                        "id": s.id, "trigger": s.trigger, "scannedAt": s.scanned_at.to_string(),
                        "summary": s.summary, "feeds": s.feeds,
                        "newFindings": s.new_findings().map(|f| &f.vulnerability_id).collect::<Vec<_>>(),
                    })
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "image": found, "history": history, "scan": scan, "needsRebuild": rebuild, "usage": usage,
                        "regions": regions,
                    }))?
                );
            } else {
                println!("{}", found.arn);
                println!(
                    "  state:    {}{}",
                    found.state.as_str(),
                    found.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
                );
                println!("  created:  {}", found.created_at);
                if let Some(dir) = &found.output_location {
                    println!("  output:   {dir}");
                }
                if let Some(s) = &scan {
                    let count = |k: &str| s.summary[k].as_u64().unwrap_or(0);
                    // Highest first, as the scan table lists them.
                    let by_severity: Vec<String> = kiln_scan::Severity::ALL
                        .iter()
                        .rev()
                        .filter_map(|sev| {
                            let n = s.summary["bySeverity"][sev.as_str()].as_u64().unwrap_or(0);
                            (n > 0).then(|| format!("{n} {sev}"))
                        })
                        .collect();
                    println!(
                        "  scan:     {} finding(s), {} fixable{} ({} {}, {} new)",
                        count("total"),
                        count("fixable"),
                        if by_severity.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", by_severity.join(", "))
                        },
                        s.trigger.as_str(),
                        s.scanned_at,
                        s.new_findings().count()
                    );
                } else if let Some(status) =
                    found.manifest.as_ref().and_then(|m| m["scan"]["status"].as_str())
                {
                    let reason = found.manifest.as_ref().and_then(|m| m["scan"]["reason"].as_str());
                    println!("  scan:     {status}{}", reason.map(|r| format!(" ({r})")).unwrap_or_default());
                }
                if let Some(m) = &rebuild {
                    println!("  rebuild:  needed since {}: {}", m.marked_at, m.reason);
                }
                for h in &history {
                    println!("  {}  {:<10} {}", h.at, h.to.as_str(), h.reason.as_deref().unwrap_or_default());
                }
                for u in &usage {
                    println!("  {}  {:<10} {}", u.at, u.kind, u.details);
                }
            }
        }
        ImageCommand::Distribute { image, again } => {
            let found = kiln.find_image(&image)?;
            let outcomes = kiln.distribute(&found, again)?;
            if outcomes.is_empty() {
                println!("{}: nothing to do (every region with a store is complete)", found.arn);
            }
            let mut failed = false;
            for r in &outcomes {
                match &r.reason {
                    None => println!(
                        "{} {} ({} of {} bytes uploaded)",
                        r.region, r.state, r.uploaded_bytes, r.total_bytes
                    ),
                    Some(why) => {
                        failed = true;
                        println!("{} {}: {why}", r.region, r.state);
                    }
                }
            }
            if failed {
                return Ok(ExitCode::from(crate::EXIT_FAILED));
            }
        }
        ImageCommand::Verify { image, region } => {
            let found = kiln.find_image(&image)?;
            let regions: Vec<String> = match region {
                Some(r) => vec![r],
                None => kiln_build::distribute::targets_of(&found.manifest.clone().unwrap_or_default())
                    .into_iter()
                    .map(|t| t.region)
                    .collect(),
            };
            if regions.is_empty() {
                bail!("image {} has no region with a store to verify", found.arn);
            }
            let keyring = kiln.keyring()?;
            let trusted = keyring.signing_key()?.verifying_key();
            let mut refused = false;
            for r in &regions {
                let target = kiln.region_target(&found, r)?;
                match kiln.block_on(kiln_dist::verify(
                    &target,
                    &keyring,
                    &image_ref(&found),
                    Some(&trusted),
                    None,
                )) {
                    Ok(v) => println!(
                        "{r}: verified {} artifact(s), {} chunk(s), {} bytes",
                        v.artifacts, v.chunks, v.bytes
                    ),
                    Err(e) => {
                        refused = true;
                        println!("{r}: {e}");
                    }
                }
            }
            if refused {
                return Ok(ExitCode::from(crate::EXIT_FAILED));
            }
        }
        ImageCommand::Pull { image, region, out } => {
            let found = kiln.find_image(&image)?;
            let keyring = kiln.keyring()?;
            let trusted = keyring.signing_key()?.verifying_key();
            let target = kiln.region_target(&found, &region)?;
            match kiln.block_on(kiln_dist::verify(
                &target,
                &keyring,
                &image_ref(&found),
                Some(&trusted),
                Some(&out),
            )) {
                Ok(v) => {
                    println!("pulled {} artifact(s), {} bytes, into {}", v.artifacts, v.bytes, out.display())
                }
                Err(e) => {
                    eprintln!("error: refused to pull {} from {region}: {e}", found.arn);
                    return Ok(ExitCode::from(crate::EXIT_FAILED));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn image_ref(image: &kiln_store::Image) -> kiln_dist::ImageRef {
    kiln_dist::ImageRef { name: image.name.clone(), version: image.version.to_string(), build: image.build }
}
