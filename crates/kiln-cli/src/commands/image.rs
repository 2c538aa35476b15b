//! `kiln image`: list, show, tag, share, usage, distribute, verify, pull, logs.

use std::process::ExitCode;

use anyhow::{Result, bail};
use kiln_build::Kiln;

use crate::cli::ImageCommand;

pub fn run(home: &std::path::Path, cmd: ImageCommand) -> Result<ExitCode> {
    let kiln = Kiln::open(home)?;
    let store = kiln.store();
    match cmd {
        ImageCommand::List { name, tags, all, json } => {
            let filter = kiln_store::ImageFilter { name, tags, include_deleted: all, ..Default::default() };
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
                        when(i.created_at)
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
            let permissions = kiln.block_on(store.launch_permissions(&found.arn))?;
            let names = kiln.block_on(store.image_region_names(&found.arn))?;
            let names_json: serde_json::Map<String, serde_json::Value> =
                names.iter().map(|(r, n)| (r.clone(), n.clone().into())).collect();
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
                        "regions": regions, "launchPermissions": permissions, "names": names_json,
                    }))?
                );
            } else {
                println!("{}", found.arn);
                println!(
                    "  state:    {}{}",
                    found.state.as_str(),
                    found.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
                );
                println!("  created:  {}", when(found.created_at));
                println!("  owner:    {}", found.account);
                if !permissions.is_empty() {
                    println!("  shared:   {}", permissions.join(", "));
                }
                if !found.tags.is_empty() {
                    let tags: Vec<String> = found.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!("  tags:     {}", tags.join(", "));
                }
                for (region, name) in &names {
                    println!("  name:     {name} (region {region})");
                }
                for r in &regions {
                    println!(
                        "  region:   {} {} {}{}",
                        r.region,
                        r.state,
                        r.store_url,
                        r.reason.as_deref().map(|x| format!(" ({x})")).unwrap_or_default()
                    );
                }
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
                    println!(
                        "  {}  {:<10} {}",
                        when(h.at),
                        h.to.as_str(),
                        h.reason.as_deref().unwrap_or_default()
                    );
                }
                for u in &usage {
                    println!("  {}  {:<10} {} {}", when(u.at), u.kind, u.account, u.details);
                }
            }
        }
        ImageCommand::Tag { image, tags } => {
            let found = kiln.find_image(&image)?;
            let mut all = found.tags.clone();
            all.extend(tags);
            kiln.block_on(store.set_image_tags(&found.arn, &all))?;
            println!("{}: {}", found.arn, tag_list(&all));
        }
        ImageCommand::Untag { image, keys } => {
            let found = kiln.find_image(&image)?;
            let mut all = found.tags.clone();
            for k in &keys {
                all.remove(k);
            }
            kiln.block_on(store.set_image_tags(&found.arn, &all))?;
            println!("{}: {}", found.arn, tag_list(&all));
        }
        ImageCommand::Share { image, accounts, all } => return share(&kiln, &image, accounts, all, true),
        ImageCommand::Unshare { image, accounts, all } => return share(&kiln, &image, accounts, all, false),
        ImageCommand::Usage { image, json } => {
            let arn = image.map(|i| kiln.find_image(&i)).transpose()?.map(|i| i.arn);
            let summary = kiln.block_on(store.usage_summary(arn.as_deref(), "launch"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else if summary.is_empty() {
                eprintln!("no launches recorded{}", arn.map(|a| format!(" for {a}")).unwrap_or_default());
            } else {
                println!("{:<64} {:<12} {:>8}  LAST LAUNCH", "IMAGE", "ACCOUNT", "LAUNCHES");
                for u in &summary {
                    println!("{:<64} {:<12} {:>8}  {}", u.image_arn, u.account, u.count, when(u.last_at));
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
        ImageCommand::Logs { image, follow, json } => {
            let found = kiln.find_image(&image)?;
            return logs(&kiln, &found, follow, json);
        }
        ImageCommand::Pull { image, region, out, account } => {
            let found = kiln.find_image(&image)?;
            match kiln.check_access(&found, account.as_deref(), "pull") {
                Ok(warning) => {
                    if let Some(w) = warning {
                        eprintln!("warning: {w}");
                    }
                }
                Err(kiln_build::BuildError::Access(e)) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(crate::EXIT_FAILED));
                }
                Err(e) => return Err(e.into()),
            }
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
                    let details = serde_json::json!({ "region": region });
                    let by = account.as_deref().unwrap_or(&found.account);
                    kiln.block_on(store.record_usage(&found.arn, "pull", by, &details))?;
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

/// `kiln image share` (`sharing`) and `unshare`. Only the owner may change who can use an
/// image: KILN_ACCOUNT, when set, must be the owner.
fn share(kiln: &Kiln, image: &str, accounts: Vec<String>, all: bool, sharing: bool) -> Result<ExitCode> {
    let store = kiln.store();
    let found = kiln.find_image(image)?;
    if let Some(acting) = std::env::var("KILN_ACCOUNT").ok().filter(|a| !a.is_empty())
        && acting != found.account
    {
        eprintln!(
            "error: account {acting} may not change who can use image {}: only its owner, {}, can",
            found.arn, found.account
        );
        return Ok(ExitCode::from(crate::EXIT_FAILED));
    }
    let mut principals = accounts;
    if all {
        principals.push(kiln_store::ALL_ACCOUNTS.to_string());
    }
    if let Some(bad) = principals.iter().find(|p| !kiln_store::is_valid_principal(p)) {
        eprintln!("error: `{bad}` is not an account id (twelve digits, such as 111122223333)");
        return Ok(ExitCode::from(2));
    }
    if sharing {
        kiln.block_on(store.add_launch_permissions(&found.arn, &principals))?;
    } else {
        kiln.block_on(store.remove_launch_permissions(&found.arn, &principals))?;
    }
    let now = kiln.block_on(store.launch_permissions(&found.arn))?;
    println!(
        "{}: launch permission: owner {}{}",
        found.arn,
        found.account,
        if now.is_empty() { String::new() } else { format!(", {}", now.join(", ")) }
    );
    Ok(ExitCode::SUCCESS)
}

fn tag_list(tags: &kiln_store::Tags) -> String {
    if tags.is_empty() {
        return "no tags".into();
    }
    tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

fn image_ref(image: &kiln_store::Image) -> kiln_dist::ImageRef {
    kiln_dist::ImageRef { name: image.name.clone(), version: image.version.to_string(), build: image.build }
}

/// A catalogue time as people read it: UTC to the second (`2026-11-27 08:55:35Z`).
fn when(t: time::OffsetDateTime) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    t.to_offset(time::UtcOffset::UTC).format(&format).unwrap_or_else(|_| t.to_string())
}

/// `kiln image logs`: the build's `build-log.jsonl`, whole lines only (the build may be
/// writing the last one); with `follow`, new lines until the image leaves the in-progress
/// states.
fn logs(kiln: &Kiln, image: &kiln_store::Image, follow: bool, json: bool) -> Result<ExitCode> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let Some(dir) = &image.output_location else {
        if !follow {
            bail!("{} has no output folder yet (its build has not started)", image.arn);
        }
        return follow_until_started(kiln, image, json);
    };
    let path = std::path::Path::new(dir).join("build-log.jsonl");
    let mut offset = 0u64;
    let mut pending = String::new();
    let stdout = std::io::stdout();
    loop {
        // The state is read before the file, so lines written before the build ended are
        // printed before stopping.
        let running = kiln.block_on(kiln.store().get_image_by_arn(&image.arn))?.state.is_in_progress();
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                f.seek(SeekFrom::Start(offset))?;
                let mut chunk = Vec::new();
                f.read_to_end(&mut chunk)?;
                offset += chunk.len() as u64;
                pending.push_str(&String::from_utf8_lossy(&chunk));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
        }
        let mut out = stdout.lock();
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            writeln!(out, "{}", if json { line.trim_end().to_owned() } else { log_line(line.trim_end()) })?;
        }
        out.flush()?;
        if !follow || !running {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Waits for a queued build to get its output folder, then follows it.
fn follow_until_started(kiln: &Kiln, image: &kiln_store::Image, json: bool) -> Result<ExitCode> {
    loop {
        let now = kiln.block_on(kiln.store().get_image_by_arn(&image.arn))?;
        if now.output_location.is_some() {
            return logs(kiln, &now, true, json);
        }
        if !now.state.is_in_progress() {
            println!("{} is {} and has no build log", now.arn, now.state.as_str());
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// A build log line for people: the time, the event, then its fields as `key=value`.
fn log_line(line: &str) -> String {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_owned();
    };
    let mut out = format!(
        "{} {}",
        fields.get("time").and_then(|v| v.as_str()).unwrap_or("-"),
        fields.get("event").and_then(|v| v.as_str()).unwrap_or("-")
    );
    for (k, v) in fields.iter().filter(|(k, _)| *k != "time" && *k != "event") {
        match v {
            serde_json::Value::String(s) => out.push_str(&format!(" {k}={s}")),
            other => out.push_str(&format!(" {k}={other}")),
        }
    }
    out
}
