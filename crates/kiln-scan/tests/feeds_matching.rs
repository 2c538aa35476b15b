//! Feed formats, every tracker status and urgency, bad input, atomic loading, and the Debian
//! matching traps, ignore rules, only-fixable and the gate.

mod common;

use std::io::Write;

use kiln_scan::feed::{FeedError, FeedFormat};
use kiln_scan::{Database, FindingStatus, IgnoreRule, Inventory, ScanOptions, Severity, evaluate_gate, scan};
use time::macros::date;

fn tracker_sample() -> std::path::PathBuf {
    common::vuln_dir().join("debian-tracker-sample.json")
}

#[test]
fn real_tracker_samples_load() {
    let mut db = Database::new();
    let info = db.load_path(&tracker_sample()).unwrap().clone();
    assert_eq!(info.format, FeedFormat::DebianTracker);
    assert_eq!(info.skipped, 0, "{:?}", info.warnings);
    // prototypejs CVE-2007-2383 is `fixed_version: "0"` in its 4 releases.
    assert_eq!(info.not_affected, 4);
    assert!(info.date.is_some(), "file time is the date when the content has none");
    // chromium CVE-2022-0456: resolved in bookworm/bullseye/sid, end-of-life in buster/stretch.
    let chromium = db.entries_for("chromium");
    assert_eq!(chromium.len(), 5);
    assert_eq!(chromium.iter().filter(|e| e.is_end_of_life()).count(), 2);
    // `"releases": []` is accepted and indexes nothing.
    assert!(db.entries_for("chromium-browser").is_empty());

    let info = db.load_path(&common::vuln_dir().join("debian-tracker-sample-apparmor.json")).unwrap();
    assert_eq!(info.not_affected, 5);
    assert_eq!(db.feeds.len(), 2);
}

#[test]
fn real_osv_records_load_from_dir_file_and_zip() {
    let dir = common::vuln_dir().join("osv-debian");
    let mut db = Database::new();
    let info = db.load_path(&dir).unwrap().clone();
    assert_eq!(info.format, FeedFormat::Osv);
    assert_eq!(info.date.as_deref(), Some("2026-03-09T01:23:37.553205Z"));
    let openssl = db.entries_for("openssl");
    assert_eq!(openssl.len(), 1);
    let vuln = &db.vulns[openssl[0].vuln as usize];
    // An advisory record speaks for its CVEs: the finding id is the CVE, the DLA an alias.
    assert_eq!(vuln.id, "CVE-2022-1292");
    assert_eq!(vuln.aliases, ["DLA-3008-1"]);
    assert_eq!(&*openssl[0].release, "stretch");
    assert!(!openssl[0].primary);
    // DSA-3029-1 (nginx, Debian:7) uses `aliases` instead of `upstream`.
    assert_eq!(db.vulns[db.entries_for("nginx")[0].vuln as usize].id, "CVE-2014-3616");
    assert_eq!(&*db.entries_for("nginx")[0].release, "wheezy");

    // One record as a file.
    let mut one = Database::new();
    one.load_path(&dir.join("DLA-3022-1.json")).unwrap();
    assert_eq!(one.entries_for("dpkg").len(), 1);

    // The same records zipped, as OSV's Debian export ships them.
    let tmp = tempfile::tempdir().unwrap();
    let zip_path = tmp.path().join("all.zip");
    let mut zw = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        zw.start_file(p.file_name().unwrap().to_str().unwrap(), zip::write::SimpleFileOptions::default())
            .unwrap();
        zw.write_all(&std::fs::read(&p).unwrap()).unwrap();
    }
    zw.finish().unwrap();
    let mut zdb = Database::new();
    let zinfo = zdb.load_path(&zip_path).unwrap();
    assert_eq!(zinfo.entries, info.entries);
}

#[test]
fn wrong_format_and_truncated_feeds_are_rejected_and_change_nothing() {
    let mut db = Database::new();
    db.load_path(&tracker_sample()).unwrap();
    let before = db.len();
    let tmp = tempfile::tempdir().unwrap();

    // Truncated tracker JSON: a JSON error with the position, nothing merged.
    let full = std::fs::read(tracker_sample()).unwrap();
    let cut = tmp.path().join("truncated.json");
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    let e = db.load_path(&cut).unwrap_err();
    assert!(matches!(e, FeedError::Json { .. }), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    assert_eq!((db.len(), db.feeds.len()), (before, 1), "a failed load must not change the database");

    // Other documents.
    let cases: &[(&str, &[u8])] = &[
        ("status", b"Package: bash\nVersion: 5.0-4\n"),
        ("bom.json", br#"{"bomFormat": "CycloneDX", "specVersion": "1.5"}"#),
        ("empty.json", b"   "),
        ("list.json", b"[1, 2]"),
        ("osv-bad.json", br#"{"id": "DSA-1-1", "affected": "no"}"#),
        ("zip.zip", b"PK\x03\x04 this is not really a zip"),
    ];
    for (name, content) in cases {
        let p = tmp.path().join(name);
        std::fs::write(&p, content).unwrap();
        let e = db.load_path(&p).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(name), "{name}: the error names the file: {msg}");
        assert_eq!(db.len(), before);
    }

    // An OSV directory with one corrupt record is rejected as a whole.
    let osv = tmp.path().join("osv");
    std::fs::create_dir(&osv).unwrap();
    std::fs::copy(common::vuln_dir().join("osv-debian/DLA-3008-1.json"), osv.join("a.json")).unwrap();
    std::fs::write(osv.join("b.json"), br#"{"id": "DLA-9-1", "affected": [{"package": {"#).unwrap();
    let e = db.load_path(&osv).unwrap_err();
    assert!(e.to_string().contains("b.json"), "{e}");
    assert_eq!(db.len(), before);
    assert!(db.entries_for("openssl").is_empty());
}

/// A tracker feed with one source and every status/urgency shape.
const ALL_STATUSES: &str = r#"{
  "pkg": {
    "CVE-2000-0001": {"description": "fixed later", "releases": {"bookworm": {"status": "resolved", "fixed_version": "1.0-3", "urgency": "high**"}}},
    "CVE-2000-0002": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "0", "urgency": "unimportant"}}},
    "CVE-2000-0003": {"releases": {"bookworm": {"status": "open", "urgency": "not yet assigned"}}},
    "CVE-2000-0004": {"releases": {"bookworm": {"status": "undetermined", "urgency": "medium"}}},
    "CVE-2000-0005": {"releases": {"bookworm": {"status": "open", "urgency": "end-of-life"}}},
    "CVE-2000-0006": {"releases": {"bookworm": {"status": "open", "urgency": "low", "nodsa": "Minor issue", "nodsa_reason": "ignored"}}},
    "CVE-2000-0007": {"releases": {"bookworm": {"status": "open", "urgency": "unimportant", "nodsa": "x", "nodsa_reason": "postponed"}}},
    "CVE-2000-0008": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "1.0-2", "urgency": "medium*"}}},
    "CVE-2000-0009": {"releases": {"bookworm": {"status": "open", "urgency": "low", "nodsa": "Minor issue", "nodsa_reason": ""}}},
    "CVE-2000-0010": {"releases": {"bullseye": {"status": "open", "urgency": "high"}}},
    "TEMP-0000000-ABCDEF": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "1:0.9-1", "urgency": "low"}}}
  }
}"#;

fn image_with(status: &str) -> tempfile::TempDir {
    common::image(&[("etc/os-release", common::BOOKWORM_OS_RELEASE), ("var/lib/dpkg/status", status)])
}

fn scan_with(status: &str, feed: &str, opts: &ScanOptions) -> kiln_scan::ScanReport {
    let img = image_with(status);
    let inv = Inventory::from_root(img.path()).unwrap();
    let mut db = Database::new();
    db.load_bytes(feed.as_bytes(), "test-feed").unwrap();
    scan(&inv, &db, opts).unwrap()
}

#[test]
fn every_tracker_status_and_urgency() {
    let status = common::stanza("libpkg1", "1.0-2", Some("pkg"), "");
    let r = scan_with(&status, ALL_STATUSES, &ScanOptions::default());
    let get = |id: &str| r.findings.iter().find(|f| f.vulnerability_id == id);
    let f1 = get("CVE-2000-0001").unwrap();
    assert_eq!(
        (f1.status, f1.severity, f1.fixed_version.as_deref(), f1.package.as_str()),
        (FindingStatus::Fixed, Severity::High, Some("1.0-3"), "libpkg1")
    );
    assert_eq!(f1.vendor_severity.as_deref(), Some("high**"));
    assert!(get("CVE-2000-0002").is_none(), "fixed_version 0 = not affected");
    let f3 = get("CVE-2000-0003").unwrap();
    assert_eq!(
        (f3.status, f3.severity, f3.fix_available()),
        (FindingStatus::Affected, Severity::Untriaged, false)
    );
    let f4 = get("CVE-2000-0004").unwrap();
    assert_eq!((f4.status, f4.severity), (FindingStatus::Undetermined, Severity::Medium));
    let f5 = get("CVE-2000-0005").unwrap();
    assert_eq!(
        (f5.status, f5.severity, f5.fix_available()),
        (FindingStatus::EndOfLife, Severity::Untriaged, false)
    );
    assert!(f5.remediation().contains("no longer provides security support"));
    assert_eq!(get("CVE-2000-0006").unwrap().status, FindingStatus::WillNotFix);
    let f7 = get("CVE-2000-0007").unwrap();
    assert_eq!((f7.status, f7.severity), (FindingStatus::FixDeferred, Severity::Informational));
    assert!(get("CVE-2000-0008").is_none(), "installed 1.0-2 == fixed 1.0-2 is not vulnerable");
    assert_eq!(get("CVE-2000-0009").unwrap().status, FindingStatus::Affected, "plain no-dsa stays affected");
    assert!(get("CVE-2000-0010").is_none(), "other release");
    // The fix carries an epoch the installed source lacks: 1:0.9-1 > 1.0-2, so still vulnerable.
    let t = get("TEMP-0000000-ABCDEF").unwrap();
    assert_eq!((t.status, t.severity), (FindingStatus::Fixed, Severity::Low));
}

#[test]
fn findings_sorted_and_in_image_builder_shape() {
    let status = common::stanza("libpkg1", "1:1.0-2", Some("pkg (1.0-2)"), "");
    let r = scan_with(&status, ALL_STATUSES, &ScanOptions::default());
    assert!(r.findings.windows(2).all(|w| w[0].severity >= w[1].severity));
    let f = r.findings.iter().find(|f| f.vulnerability_id == "CVE-2000-0001").unwrap();
    let v = serde_json::to_value(f.to_image_scan_finding()).unwrap();
    assert_eq!(v["type"], "PACKAGE_VULNERABILITY");
    assert_eq!(v["severity"], "HIGH");
    assert_eq!(v["fixAvailable"], "YES");
    assert_eq!(v["title"], "CVE-2000-0001 - libpkg1");
    assert!(v["remediation"]["recommendation"]["text"].as_str().unwrap().contains("1.0-3"));
    let d = &v["packageVulnerabilityDetails"];
    assert_eq!(d["vulnerabilityId"], "CVE-2000-0001");
    assert_eq!(d["vendorSeverity"], "high**");
    let p = &d["vulnerablePackages"][0];
    assert_eq!(p["name"], "libpkg1");
    assert_eq!(p["version"], "1.0");
    assert_eq!(p["epoch"], 1);
    assert_eq!(p["release"], "2");
    assert_eq!(p["arch"], "amd64");
    assert_eq!(p["packageManager"], "OS");
    assert_eq!(p["fixedInVersion"], "1.0-3");
    let k = &v["kiln"];
    assert_eq!(k["sourcePackage"], "pkg");
    assert_eq!(k["sourceVersion"], "1.0-2");
    assert_eq!(k["installedVersion"], "1:1.0-2");
    assert_eq!(k["status"], "fixed");
    assert_eq!(k["trackerStatus"], "resolved");
    assert_eq!(k["release"], "bookworm");
    assert_eq!(k["feed"], "debian-security-tracker");
    // Round trip: the same object can be read back (ListImageScanFindings later).
    let back: kiln_scan::ImageScanFinding = serde_json::from_value(v).unwrap();
    assert_eq!(back.package_vulnerability_details.vulnerability_id, "CVE-2000-0001");
}

const TRAPS: &str = r#"{
  "linux": {"CVE-2024-0001": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "6.1.76-2", "urgency": "high"}}}},
  "util-linux": {"CVE-2024-0002": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "2.38.1-5+deb12u1", "urgency": "low"}}}},
  "libselinux": {"CVE-2024-0003": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "3.4-1+deb12u1", "urgency": "low"}}}},
  "mawk": {"CVE-2024-0004": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "1.3.4.20200120-3.1", "urgency": "low"}}}},
  "grub2": {"CVE-2024-0005": {"releases": {"bookworm": {"status": "resolved", "fixed_version": "2.06-13+deb12u1", "urgency": "medium"}}}}
}"#;

#[test]
fn debian_traps() {
    let status = [
        // Signed kernel: source linux-signed-amd64 6.1.76+1 sorts above the fix 6.1.76-2; the
        // kernel it carries is linux 6.1.76-1 (Built-Using), which is vulnerable.
        common::stanza(
            "linux-image-6.1.0-18-amd64",
            "6.1.76-1",
            Some("linux-signed-amd64 (6.1.76+1)"),
            "Built-Using: linux (= 6.1.76-1)\n",
        ),
        // Binary epoch the source lacks: 1:2.38.1-5 > 2.38.1-5+deb12u1 by binary version, but
        // the source 2.38.1-5 is older than the fix.
        common::stanza("bsdutils", "1:2.38.1-5", Some("util-linux (2.38.1-5)"), ""),
        // binNMU with the source version given.
        common::stanza("libselinux1", "3.4-1+b6", Some("libselinux (3.4-1)"), ""),
        // binNMU without a Source field: `+b1` stripped; 1.3.4.20200120-3.1+b1 vs fix -3.1 would
        // otherwise say "fixed".
        common::stanza("mawk", "1.3.4.20200120-3.1+b1", None, ""),
        // Signed bootloader: template source, Built-Using names grub2.
        common::stanza(
            "grub-efi-amd64-signed",
            "1+2.06+13",
            Some("grub-efi-amd64-signed"),
            "Built-Using: grub2 (= 2.06-13)\n",
        ),
    ]
    .concat();
    let r = scan_with(&status, TRAPS, &ScanOptions::default());
    let get = |id: &str| r.findings.iter().find(|f| f.vulnerability_id == id);
    let k = get("CVE-2024-0001").expect("signed kernel matched as linux");
    assert_eq!(
        (k.package.as_str(), k.source_package.as_str(), k.source_version.as_str()),
        ("linux-image-6.1.0-18-amd64", "linux", "6.1.76-1")
    );
    assert_eq!(k.source_rule.as_deref(), Some("built-using"));
    let u = get("CVE-2024-0002").expect("binary epoch must not hide the source's age");
    assert_eq!((u.package.as_str(), u.source_version.as_str()), ("bsdutils", "2.38.1-5"));
    assert_eq!(u.installed_version, "1:2.38.1-5");
    assert_eq!(get("CVE-2024-0003").expect("binNMU").source_version, "3.4-1");
    // mawk: the binNMU of the unfixed 3.1 must count as 3.1, which is the fixed version → not
    // vulnerable. (By binary version 3.1+b1 > 3.1 too; the point is the compared version.)
    assert!(get("CVE-2024-0004").is_none());
    let g = get("CVE-2024-0005").expect("signed grub matched as grub2");
    assert_eq!(g.source_package, "grub2");

    // The same kernel without Built-Using (older status files): the package's own version.
    let bare =
        common::stanza("linux-image-6.1.0-18-amd64", "6.1.76-1", Some("linux-signed-amd64 (6.1.76+1)"), "");
    let r = scan_with(&bare, TRAPS, &ScanOptions::default());
    assert_eq!(r.findings[0].source_rule.as_deref(), Some("signed-kernel"));
}

#[test]
fn binnmu_rule_is_applied_without_source_version() {
    let status = common::stanza("mawk", "1.3.4.20200120-3+b1", None, "");
    let r = scan_with(&status, TRAPS, &ScanOptions::default());
    let f = &r.findings[0];
    assert_eq!((f.source_version.as_str(), f.source_rule.as_deref()), ("1.3.4.20200120-3", Some("binnmu")));
}

#[test]
fn only_fixable_ignore_rules_and_gate() {
    let status = common::stanza("libpkg1", "1.0-2", Some("pkg"), "");
    let all = scan_with(&status, ALL_STATUSES, &ScanOptions::default());
    let fixable = scan_with(&status, ALL_STATUSES, &ScanOptions { only_fixable: true, ..Default::default() });
    assert!(fixable.findings.iter().all(|f| f.fix_available()));
    assert_eq!(fixable.findings.len(), all.findings.iter().filter(|f| f.fix_available()).count());

    let rule = |expires| IgnoreRule {
        id: "CVE-2000-0001".into(),
        package: None,
        reason: "not reachable: the daemon is not installed".into(),
        expires: Some(expires),
    };
    let today = date!(2026 - 06 - 15);
    // In force through its expiry day.
    for exp in [date!(2026 - 06 - 15), date!(2027 - 01 - 01)] {
        let opts = ScanOptions { ignore: vec![rule(exp)], today: Some(today), ..Default::default() };
        let r = scan_with(&status, ALL_STATUSES, &opts);
        assert!(r.findings.iter().all(|f| f.vulnerability_id != "CVE-2000-0001"));
        assert_eq!(r.ignored.len(), 1);
        assert_eq!(r.ignored[0].ignored_by.reason, "not reachable: the daemon is not installed");
    }
    // Expired the day before: reported again.
    let opts =
        ScanOptions { ignore: vec![rule(date!(2026 - 06 - 14))], today: Some(today), ..Default::default() };
    let r = scan_with(&status, ALL_STATUSES, &opts);
    assert!(r.findings.iter().any(|f| f.vulnerability_id == "CVE-2000-0001"));
    assert!(r.ignored.is_empty());
    // A rule needs a reason.
    let img = image_with(&status);
    let inv = Inventory::from_root(img.path()).unwrap();
    let mut bad = rule(date!(2030 - 01 - 01));
    bad.reason = " ".into();
    let e =
        scan(&inv, &Database::new(), &ScanOptions { ignore: vec![bad], ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("reason"), "{e}");
    // Ignore rules deserialize from recipe-style JSON with an ISO date.
    let parsed: IgnoreRule =
        serde_json::from_str(r#"{"id": "CVE-1", "reason": "r", "expires": "2026-12-31"}"#).unwrap();
    assert_eq!(parsed.expires, Some(date!(2026 - 12 - 31)));
    assert!(
        serde_json::from_str::<IgnoreRule>(r#"{"id": "CVE-1", "reason": "r", "expires": "31/12/2026"}"#)
            .is_err()
    );

    // Gate: HIGH fails on CVE-2000-0001; CRITICAL passes; UNTRIAGED fails on anything.
    let g = evaluate_gate(&all.findings, Severity::High);
    assert!(!g.passed);
    assert_eq!(g.failing.len(), 1);
    assert!(evaluate_gate(&all.findings, Severity::Critical).passed);
    assert_eq!(evaluate_gate(&all.findings, Severity::Untriaged).failing.len(), all.findings.len());
    let e = "SEVERE".parse::<Severity>().unwrap_err();
    assert!(e.to_string().contains("SEVERE") && e.to_string().contains("CRITICAL"), "{e}");
}

#[test]
fn osv_ranges_and_cvss() {
    let rec = r#"{"id": "DEBIAN-CVE-2030-0001", "modified": "2030-01-01T00:00:00Z", "upstream": ["CVE-2030-0001"],
      "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
      "affected": [
        {"package": {"ecosystem": "Debian:12", "name": "pkg"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "1.0-5"}, {"fixed": "1.0-9"}, {"introduced": "2.0-1"}, {"last_affected": "2.0-3"}]}],
         "ecosystem_specific": {"urgency": "not yet assigned"}},
        {"package": {"ecosystem": "npm", "name": "pkg"}, "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}]}
      ]}"#;
    let check = |ver: &str| {
        let status = common::stanza("pkg", ver, None, "");
        scan_with(&status, rec, &ScanOptions::default()).findings
    };
    assert!(check("1.0-4").is_empty(), "before introduced");
    let f = check("1.0-5");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].vulnerability_id, "CVE-2030-0001");
    assert_eq!(f[0].aliases, ["DEBIAN-CVE-2030-0001"]);
    assert_eq!(f[0].fixed_version.as_deref(), Some("1.0-9"));
    // Untriaged by Debian, so the CVSS 9.8 decides.
    assert_eq!(f[0].severity, Severity::Critical);
    assert_eq!(f[0].cvss[0].base_score, Some(9.8));
    assert!(check("1.0-9").is_empty());
    let f = check("2.0-3");
    assert_eq!((f.len(), f[0].fix_available()), (1, false), "last_affected is inclusive");
    assert!(check("2.0-4").is_empty());
}
