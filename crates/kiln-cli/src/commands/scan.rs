//! `kiln scan`: inventory of a target, matched against the feeds in KILN_HOME/feeds; and
//! `kiln scan --catalogue`, every AVAILABLE image rescanned from its kept inventory.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use kiln_build::Kiln;
use kiln_scan::feedstore::Change;
use kiln_scan::{FeedStore, IgnoreRule, Inventory, ScanDocument, ScanOptions, Severity, evaluate_gate};
use serde_json::{Value, json};

use crate::cli::{ScanArgs, ScanFormat};

/// The command line was wrong (documented in `kiln --help`).
const EXIT_USAGE: u8 = 2;

pub fn run(home: &Path, args: ScanArgs) -> Result<ExitCode> {
    // Command-line values first: a typo must not cost a feed import or a disk import.
    let fail_on = match args.fail_on.as_deref().map(str::parse::<Severity>).transpose() {
        Ok(s) => s,
        Err(e) => return Ok(usage(&format!("--fail-on: {e}"))),
    };
    let mut ignore = Vec::new();
    for spec in &args.ignore {
        match parse_ignore(spec) {
            Ok(rule) => ignore.push(rule),
            Err(e) => return Ok(usage(&format!("--ignore {spec}: {e}"))),
        }
    }
    if args.catalogue && args.format == ScanFormat::Sarif {
        return Ok(usage("--format sarif describes one target: use --format table or json with --catalogue"));
    }
    let opts = ScanOptions { only_fixable: args.only_fixable, ignore, ..Default::default() };

    let store = FeedStore::open(&home.join("feeds"))?;
    let used = import_feeds(&store, &args.feeds)?;
    // With --feed, exactly those feeds answer a TARGET; the catalogue and a TARGET without
    // --feed get every stored feed (the newest copy of each source).
    let records = if args.feeds.is_empty() || args.catalogue { store.list()? } else { used };
    if records.is_empty() {
        bail!(
            "no vulnerability feeds: import one with `kiln scan --feed FILE` (the Debian Security Tracker \
             JSON, an OSV record, or a directory or zip of OSV records) or `--feed URL`; feeds are kept in {}",
            store.dir().display()
        );
    }
    let db = store.database_of(&records)?;
    match &args.target {
        Some(target) if !args.catalogue => scan_target(home, target, &args, &db, &opts, fail_on),
        _ => rescan_catalogue(home, &args, &db, &opts, fail_on),
    }
}

/// Imports each feed, saying what changed; returns their records.
fn import_feeds(store: &FeedStore, feeds: &[String]) -> Result<Vec<kiln_scan::FeedRecord>> {
    let mut used = Vec::new();
    for feed in feeds {
        let out = store.import(feed).with_context(|| format!("cannot import feed {feed}"))?;
        let what = match out.change {
            Change::New => "imported",
            Change::Updated => "updated",
            Change::Unchanged => "unchanged",
            Change::NotModified => "not modified (304), kept",
        };
        eprintln!(
            "feed {}: {what} ({}, {} vulnerabilities, {} entries, sha256 {})",
            out.record.source,
            out.record.format.as_str(),
            out.record.vulnerabilities,
            out.record.entries,
            &out.record.sha256[..out.record.sha256.len().min(20)]
        );
        used.push(out.record);
    }
    Ok(used)
}

fn scan_target(
    home: &Path,
    target: &str,
    args: &ScanArgs,
    db: &kiln_scan::Database,
    opts: &ScanOptions,
    fail_on: Option<Severity>,
) -> Result<ExitCode> {
    let (inventory, _scratch) = inventory_of(home, target)?;
    for p in &inventory.problems {
        eprintln!("warning: inventory incomplete: {p}");
    }
    let report = kiln_scan::scan(&inventory, db, opts).with_context(|| format!("cannot scan {target}"))?;
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    let gate = fail_on.map(|s| evaluate_gate(&report.findings, s));
    let doc = ScanDocument::new(target, &inventory, &report, gate);
    match args.format {
        ScanFormat::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        ScanFormat::Sarif => {
            println!(
                "{}",
                serde_json::to_string_pretty(&kiln_scan::sarif::to_sarif(&report.findings, target))?
            );
        }
        ScanFormat::Table => print_table(target, &inventory, &report),
    }
    match doc.gate_failure() {
        Some(failure) => {
            eprintln!("scan gate failed: {failure}");
            Ok(ExitCode::from(crate::EXIT_FAILED))
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// `kiln scan --catalogue`: every AVAILABLE image, from its kept inventory.
fn rescan_catalogue(
    home: &Path,
    args: &ScanArgs,
    db: &kiln_scan::Database,
    opts: &ScanOptions,
    fail_on: Option<Severity>,
) -> Result<ExitCode> {
    let kiln = Kiln::open(home)?;
    let store = kiln.store();
    let filter =
        kiln_store::ImageFilter { state: Some(kiln_store::ImageState::Available), ..Default::default() };
    let images = kiln.block_on(store.list_images(&filter))?;
    let mut rows = Vec::new();
    let (mut gate_failed, mut errors) = (false, 0usize);
    for image in &images {
        let result = (|| -> Result<(Value, Option<String>)> {
            let (inventory, source) = kept_inventory(&kiln, image)?;
            let r = kiln.rescan_image(image, &inventory, db, opts, fail_on)?;
            let mut new_ids: Vec<&str> = r.scan.new_findings().map(|f| f.vulnerability_id.as_str()).collect();
            new_ids.sort_unstable();
            new_ids.dedup();
            let row = json!({
                "arn": image.arn,
                "name": image.name,
                "version": image.version.to_string(),
                "build": image.build,
                "inventorySource": source,
                "total": r.document.summary.total,
                "fixable": r.document.summary.fixable,
                "bySeverity": r.document.summary.by_severity,
                "newFindings": new_ids,
                "findings": r.document.findings,
                "ignored": r.document.ignored.len(),
                "needsRebuild": r.needs_rebuild,
                "gate": r.document.gate,
            });
            Ok((row, r.document.gate_failure()))
        })();
        match result {
            Ok((row, failure)) => {
                if let Some(f) = failure {
                    eprintln!("scan gate failed for {}: {f}", image.arn);
                    gate_failed = true;
                }
                rows.push(row);
            }
            Err(e) => {
                errors += 1;
                let message = format!("{e:#}");
                eprintln!("error: cannot rescan {}: {message}", image.arn);
                rows.push(json!({ "arn": image.arn, "error": message }));
            }
        }
    }
    match args.format {
        ScanFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&json!({ "images": rows, "feeds": db.feeds }))?)
        }
        _ => print_catalogue_table(&rows, db),
    }
    Ok(if gate_failed {
        ExitCode::from(crate::EXIT_FAILED)
    } else if errors > 0 {
        ExitCode::from(crate::EXIT_ERROR)
    } else {
        ExitCode::SUCCESS
    })
}

/// The image's inventory as kept at build time, or, for an image built before kiln kept
/// them, read once from its disk and kept. Also says which it was.
fn kept_inventory(kiln: &Kiln, image: &kiln_store::Image) -> Result<(Inventory, &'static str)> {
    let kept = kiln.block_on(kiln.store().get_inventory(&image.arn))?;
    if let Some(value) = kept {
        let inventory = serde_json::from_value(value)
            .with_context(|| format!("the inventory kept for {} does not read", image.arn))?;
        return Ok((inventory, "catalogue"));
    }
    let disk = kiln.image_disk(image, &["raw", "qcow2"])?;
    let (inventory, _scratch) = disk_inventory(&kiln.home, &disk)?;
    let value = serde_json::to_value(&inventory)?;
    kiln.block_on(kiln.store().put_inventory(&image.arn, &value))?;
    Ok((inventory, "disk"))
}

fn print_catalogue_table(rows: &[Value], db: &kiln_scan::Database) {
    for f in &db.feeds {
        println!("feed {} ({}, {})", f.location, f.format.as_str(), f.date.as_deref().unwrap_or("undated"));
    }
    if rows.is_empty() {
        println!("no AVAILABLE images in the catalogue: `kiln build -f FILE` makes one");
        return;
    }
    println!();
    let label = |r: &Value| match (r["name"].as_str(), r["version"].as_str(), r["build"].as_u64()) {
        (Some(n), Some(v), Some(b)) => format!("{n}/{v}/{b}"),
        _ => r["arn"].as_str().unwrap_or_default().to_string(),
    };
    let w = rows.iter().map(|r| label(r).len()).max().unwrap_or(0).max(5);
    println!("{:<w$} {:>8} {:>4} {:>7}  REBUILD", "IMAGE", "FINDINGS", "NEW", "FIXABLE");
    for r in rows {
        if let Some(e) = r["error"].as_str() {
            println!("{:<w$} error: {e}", label(r));
            continue;
        }
        let new: Vec<&str> =
            r["newFindings"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        println!(
            "{:<w$} {:>8} {:>4} {:>7}  {}",
            label(r),
            // Numbers, not JSON values: a Value's Display ignores the width.
            r["total"].as_u64().unwrap_or(0),
            new.len(),
            r["fixable"].as_u64().unwrap_or(0),
            if r["needsRebuild"].is_string() { "needed" } else { "-" }
        );
        if !new.is_empty() {
            println!("{:w$}   new: {}", "", new.join(", "));
        }
        if let Some(reason) = r["needsRebuild"].as_str() {
            println!("{:w$}   rebuild: {reason}", "");
        }
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_USAGE)
}

/// `ID:REASON` or `ID:REASON:YYYY-MM-DD`; ID may be `PACKAGE/ID`.
fn parse_ignore(spec: &str) -> std::result::Result<IgnoreRule, String> {
    let (id, rest) = spec.split_once(':').ok_or("expected ID:REASON or ID:REASON:YYYY-MM-DD")?;
    let (package, id) = match id.split_once('/') {
        Some((p, i)) => (Some(p.trim().to_string()), i.trim()),
        None => (None, id.trim()),
    };
    if id.is_empty() {
        return Err("the vulnerability id is empty".into());
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let (reason, expires) = match rest.rsplit_once(':') {
        Some((reason, date)) if looks_like_date(date) => {
            let d = time::Date::parse(date.trim(), format)
                .map_err(|e| format!("`{date}` is not a date YYYY-MM-DD: {e}"))?;
            (reason, Some(d))
        }
        _ => (rest, None),
    };
    if reason.trim().is_empty() {
        return Err("the reason is empty: say why the finding is acceptable".into());
    }
    Ok(IgnoreRule { id: id.to_string(), package, reason: reason.trim().to_string(), expires })
}

fn looks_like_date(s: &str) -> bool {
    let s = s.trim();
    s.len() == 10
        && s.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() })
}

/// The inventory of TARGET, and the temporary root it was read from (removed when dropped).
fn inventory_of(home: &Path, target: &str) -> Result<(Inventory, Option<tempfile::TempDir>)> {
    let (root, _, scratch) = super::target::root_of(home, target)?;
    Ok((Inventory::from_root(&root)?, scratch))
}

/// The inventory of a raw or qcow2 disk, read from its root file system imported into a
/// temporary directory (removed when the returned guard is dropped).
fn disk_inventory(home: &Path, disk: &Path) -> Result<(Inventory, tempfile::TempDir)> {
    let (root, scratch) = super::target::import_root(home, disk)?;
    Ok((Inventory::from_root(&root)?, scratch))
}

fn print_table(target: &str, inv: &Inventory, report: &kiln_scan::ScanReport) {
    let os = inv.os.as_ref().and_then(|o| o.pretty_name.clone()).unwrap_or_else(|| "unknown OS".into());
    println!("{target}: {os}, {} packages, release {}", inv.packages.len(), report.release);
    for f in &report.feeds {
        println!("feed {} ({}, {})", f.location, f.format.as_str(), f.date.as_deref().unwrap_or("undated"));
    }
    if report.findings.is_empty() {
        println!("no findings");
    } else {
        println!();
        let w_id = report.findings.iter().map(|f| f.vulnerability_id.len()).max().unwrap_or(0).max(16);
        let w_pkg = report.findings.iter().map(|f| f.package.len()).max().unwrap_or(0).max(7);
        let w_ver = report.findings.iter().map(|f| f.installed_version.len()).max().unwrap_or(0).max(9);
        println!(
            "{:<13} {:<w_id$} {:<w_pkg$} {:<w_ver$} FIXED IN",
            "SEVERITY", "VULNERABILITY", "PACKAGE", "INSTALLED"
        );
        for f in &report.findings {
            println!(
                "{:<13} {:<w_id$} {:<w_pkg$} {:<w_ver$} {}",
                f.severity.as_str(),
                f.vulnerability_id,
                f.package,
                f.installed_version,
                f.fixed_version.as_deref().unwrap_or("-")
            );
        }
    }
    let fixable = report.findings.iter().filter(|f| f.fix_available()).count();
    let mut counts = Vec::new();
    for s in Severity::ALL.iter().rev() {
        let n = report.findings.iter().filter(|f| f.severity == *s).count();
        if n > 0 {
            counts.push(format!("{n} {}", s.as_str()));
        }
    }
    println!();
    println!(
        "{} finding(s), {fixable} fixable{}{}",
        report.findings.len(),
        if counts.is_empty() { String::new() } else { format!(": {}", counts.join(", ")) },
        if report.ignored.is_empty() { String::new() } else { format!("; {} ignored", report.ignored.len()) }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_rules_parse() {
        let r = parse_ignore("CVE-2019-18276:not exploitable: no login shell:2030-01-31").unwrap();
        assert_eq!(r.id, "CVE-2019-18276");
        assert_eq!(r.reason, "not exploitable: no login shell");
        assert_eq!(r.expires, Some(time::macros::date!(2030 - 01 - 31)));
        let r = parse_ignore("bash/CVE-1:why").unwrap();
        assert_eq!((r.package.as_deref(), r.id.as_str(), r.expires), (Some("bash"), "CVE-1", None));
        assert!(parse_ignore("CVE-1").is_err());
        assert!(parse_ignore("CVE-1:").is_err());
        assert!(parse_ignore("CVE-1:why:2030-13-01").is_err());
    }
}
