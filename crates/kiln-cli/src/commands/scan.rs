//! `kiln scan`: inventory of a target, matched against the feeds in KILN_HOME/feeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use kiln_scan::feedstore::Change;
use kiln_scan::{FeedStore, IgnoreRule, Inventory, ScanOptions, Severity, evaluate_gate};
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

    let store = FeedStore::open(&home.join("feeds"))?;
    let mut used = Vec::new();
    for feed in &args.feeds {
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
    // With --feed, exactly those feeds answer; without, every stored feed.
    let records = if args.feeds.is_empty() { store.list()? } else { used };
    if records.is_empty() {
        bail!(
            "no vulnerability feeds: import one with `kiln scan --feed FILE` (the Debian Security Tracker \
             JSON, an OSV record, or a directory or zip of OSV records) or `--feed URL`; feeds are kept in {}",
            store.dir().display()
        );
    }
    let db = store.database_of(&records)?;

    let (inventory, _scratch) = inventory_of(home, &args.target)?;
    for p in &inventory.problems {
        eprintln!("warning: inventory incomplete: {p}");
    }
    let opts = ScanOptions { only_fixable: args.only_fixable, ignore, ..Default::default() };
    let report =
        kiln_scan::scan(&inventory, &db, &opts).with_context(|| format!("cannot scan {}", args.target))?;
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    let gate = fail_on.map(|s| evaluate_gate(&report.findings, s));

    match args.format {
        ScanFormat::Json => {
            let mut summary: BTreeMap<&str, usize> = Severity::ALL.iter().map(|s| (s.as_str(), 0)).collect();
            for f in &report.findings {
                *summary.entry(f.severity.as_str()).or_default() += 1;
            }
            let ignored: Vec<Value> = report
                .ignored
                .iter()
                .map(|i| {
                    let mut f = i.finding.to_image_scan_finding();
                    f.kiln.ignored = Some(i.ignored_by.clone());
                    serde_json::to_value(f).unwrap_or_default()
                })
                .collect();
            let out = json!({
                "target": args.target,
                "inventory": {
                    "os": inventory.os,
                    "packages": inventory.packages.len(),
                    "kernel": inventory.kernel,
                    "problems": inventory.problems,
                },
                "release": report.release,
                "feeds": report.feeds,
                "findings": report.findings.iter().map(|f| f.to_image_scan_finding()).collect::<Vec<_>>(),
                "ignored": ignored,
                "notes": report.notes,
                "summary": {
                    "total": report.findings.len(),
                    "fixable": report.findings.iter().filter(|f| f.fix_available()).count(),
                    "bySeverity": summary,
                },
                "gate": gate,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ScanFormat::Sarif => {
            println!(
                "{}",
                serde_json::to_string_pretty(&kiln_scan::sarif::to_sarif(&report.findings, &args.target))?
            );
        }
        ScanFormat::Table => print_table(&args.target, &inventory, &report),
    }

    match gate {
        Some(g) if !g.passed => {
            eprintln!(
                "scan gate failed: {} finding(s) at or above {}: {}",
                g.failing.len(),
                g.fail_on,
                g.failing
                    .iter()
                    .take(10)
                    .map(|(id, pkg, _)| format!("{id} ({pkg})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(ExitCode::from(crate::EXIT_FAILED))
        }
        _ => Ok(ExitCode::SUCCESS),
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
    let path = Path::new(target);
    if path.is_dir() {
        return Ok((Inventory::from_root(path)?, None));
    }
    let disk = if path.is_file() {
        path.to_path_buf()
    } else if target.starts_with("arn:") || target.contains('/') {
        catalogued_disk(home, target)?
    } else {
        bail!("{target} is not a directory, a disk file or a catalogued image (NAME/VERSION[/BUILD] or ARN)");
    };
    let tmp_root = home.join("tmp");
    std::fs::create_dir_all(&tmp_root).with_context(|| format!("cannot create {}", tmp_root.display()))?;
    let scratch = tempfile::Builder::new().prefix("scan-").tempdir_in(&tmp_root)?;
    let root = scratch.path().join("root");
    eprintln!("importing the root file system of {} (needs root)", disk.display());
    kiln_parent::import_disk(&disk, &root)
        .with_context(|| format!("cannot read the disk {} to scan it", disk.display()))?;
    Ok((Inventory::from_root(&root)?, Some(scratch)))
}

/// The raw or qcow2 disk of a catalogued image.
fn catalogued_disk(home: &Path, image: &str) -> Result<PathBuf> {
    let kiln = kiln_build::Kiln::open(home)?;
    let store = kiln.store();
    let found = if image.starts_with("arn:") {
        kiln.block_on(store.get_image_by_arn(image))
    } else {
        let parts: Vec<&str> = image.split('/').collect();
        let (name, version, build) = match parts.as_slice() {
            [n, v] => (*n, *v, None),
            [n, v, b] => {
                (*n, *v, Some(b.parse::<u32>().with_context(|| format!("`{b}` is not a build number"))?))
            }
            _ => bail!("`{image}` is not a path, NAME/VERSION[/BUILD] or an image ARN"),
        };
        let version: kiln_store::Version =
            version.parse().with_context(|| format!("`{image}` is not a path or NAME/VERSION[/BUILD]"))?;
        kiln.block_on(store.get_image(name, &version, build))
    }
    .with_context(|| format!("{image} is not a path and not a catalogued image"))?;
    let dir = PathBuf::from(found.output_location.clone().unwrap_or_default());
    let manifest = found.manifest.clone().unwrap_or_default();
    let disk = manifest["artifacts"]
        .as_array()
        .and_then(|a| {
            a.iter().find(|x| x["format"] == "raw").or_else(|| a.iter().find(|x| x["format"] == "qcow2"))
        })
        .and_then(|x| x["file"].as_str())
        .map(|f| dir.join(f));
    match disk {
        Some(d) if d.is_file() => Ok(d),
        Some(d) => bail!("image {} lists its disk {} but the file is missing", found.arn, d.display()),
        None => bail!("image {} has no raw or qcow2 disk in its manifest", found.arn),
    }
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
