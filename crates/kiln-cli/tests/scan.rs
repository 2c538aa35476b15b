//! `kiln scan` from the command line: the peer cases in `shared/vuln/peer-cases/`, the output
//! formats, the gate's exit codes, the feed store's atomic updates, disk files and catalogued
//! images as targets, and `--catalogue` rescans. The disk tests make small GPT disks with
//! mkfs.ext4 and import them, which needs root (as the tests have).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{catalogue_image, disk_from_root, shared, text};
use serde_json::Value;

/// (vulnerability id, binary package, installed version, fixed version).
type Row = (String, String, String, Option<String>);

fn case(name: &str) -> PathBuf {
    shared().join("vuln/peer-cases").join(name)
}

/// Runs kiln with its own KILN_HOME.
fn kiln(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .env("KILN_HOME", home)
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .expect("run kiln")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn json_out(out: &Output) -> Value {
    assert!(out.status.success(), "kiln failed: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stdout is not one JSON object: {e}"))
}

fn rows(report: &Value) -> BTreeSet<Row> {
    report["findings"]
        .as_array()
        .expect("findings list")
        .iter()
        .map(|f| {
            let d = &f["packageVulnerabilityDetails"];
            let p = &d["vulnerablePackages"][0];
            // `version` is the upstream part only; the full installed version is in kiln's extras.
            let fixed = p["fixedInVersion"].as_str().map(str::to_string);
            assert_eq!(f["fixAvailable"], if fixed.is_some() { "YES" } else { "NO" });
            assert!(f["severity"].is_string());
            (
                d["vulnerabilityId"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
                f["kiln"]["installedVersion"].as_str().unwrap().to_string(),
                fixed,
            )
        })
        .collect()
}

fn expected(path: &Path) -> BTreeSet<Row> {
    let v: Vec<Value> = serde_json::from_slice(&std::fs::read(path).expect("read expected")).unwrap();
    v.iter()
        .map(|e| {
            (
                e["vulnerability_id"].as_str().unwrap().to_string(),
                e["package"].as_str().unwrap().to_string(),
                e["installed_version"].as_str().unwrap().to_string(),
                e["fixed_version"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn scan_case(name: &str, feeds: &[&str], extra: &[&str]) -> Value {
    let home = tempfile::tempdir().unwrap();
    let dir = case(name);
    let root = dir.join("rootfs");
    let feed_paths: Vec<PathBuf> = feeds.iter().map(|f| dir.join("feed").join(f)).collect();
    let mut args = vec!["scan", s(&root), "--format", "json"];
    for f in &feed_paths {
        args.extend(["--feed", s(f)]);
    }
    args.extend(extra);
    json_out(&kiln(home.path(), &args))
}

const FEED_SETS: [&[&str]; 3] = [&["debian-tracker.json"], &["osv"], &["debian-tracker.json", "osv"]];

#[test]
fn peer_cases_agree_with_the_expected_findings() {
    for name in ["trivy-debian-buster", "trivy-debian-stretch", "trivy-detector-apache2-stretch"] {
        let want = expected(&case(name).join("expected.json"));
        for feeds in FEED_SETS {
            let report = scan_case(name, feeds, &[]);
            assert_eq!(rows(&report), want, "{name} with {feeds:?}");
            assert_eq!(report["feeds"].as_array().unwrap().len(), feeds.len());
            assert!(report["inventory"]["packages"].as_u64().unwrap() > 0);
            assert_eq!(report["summary"]["total"].as_u64().unwrap() as usize, want.len());
        }
    }
}

#[test]
fn only_fixable_matches_the_peer() {
    let name = "trivy-debian-buster";
    let want = expected(&case(name).join("expected-only-fixable.json"));
    for feeds in FEED_SETS {
        let report = scan_case(name, feeds, &["--only-fixable"]);
        assert_eq!(rows(&report), want, "{feeds:?}");
    }
}

fn buster(home: &Path, extra: &[&str]) -> Output {
    let dir = case("trivy-debian-buster");
    let root = dir.join("rootfs");
    let feed = dir.join("feed/debian-tracker.json");
    let mut args = vec!["scan", s(&root), "--feed", s(&feed)];
    args.extend(extra);
    kiln(home, &args)
}

#[test]
fn fail_on_sets_the_exit_code() {
    let home = tempfile::tempdir().unwrap();
    // bash CVE-2019-18276 is LOW (tracker urgency); nothing is MEDIUM or above.
    let out = buster(home.path(), &["--fail-on", "LOW"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("CVE-2019-18276"), "{}", text(&out.stderr));
    let out = buster(home.path(), &["--fail-on", "medium"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The LOW finding has no fix: --only-fixable leaves nothing at LOW.
    let out = buster(home.path(), &["--fail-on", "LOW", "--only-fixable"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // An ignore rule in force passes the gate; an expired one does not.
    let out =
        buster(home.path(), &["--fail-on", "LOW", "--ignore", "CVE-2019-18276:no login shell:2999-12-31"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out =
        buster(home.path(), &["--fail-on", "LOW", "--ignore", "CVE-2019-18276:no login shell:2000-01-01"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // Command-line mistakes are exit 2 with the accepted values named.
    let out = buster(home.path(), &["--fail-on", "SEVERE"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("CRITICAL"), "{}", text(&out.stderr));
    let out = buster(home.path(), &["--ignore", "CVE-2019-18276"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn ignored_findings_are_listed_apart() {
    let home = tempfile::tempdir().unwrap();
    let report =
        json_out(&buster(home.path(), &["--format", "json", "--ignore", "bash/CVE-2019-18276:accepted"]));
    let ids: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["packageVulnerabilityDetails"]["vulnerabilityId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["CVE-2019-18224"]);
    assert_eq!(report["ignored"][0]["packageVulnerabilityDetails"]["vulnerabilityId"], "CVE-2019-18276");
}

#[test]
fn sarif_and_table_formats() {
    let home = tempfile::tempdir().unwrap();
    let out = buster(home.path(), &["--format", "sarif"]);
    let v = json_out(&out);
    assert_eq!(v["version"], "2.1.0");
    assert_eq!(v["runs"][0]["tool"]["driver"]["name"], "kiln");
    let ids: BTreeSet<&str> =
        v["runs"][0]["results"].as_array().unwrap().iter().map(|r| r["ruleId"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from(["CVE-2019-18224", "CVE-2019-18276"]));

    let out = buster(home.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("CVE-2019-18224") && table.contains("2.0.5-1+deb10u1"), "{table}");
    assert!(table.contains("2 finding(s), 1 fixable"), "{table}");
}

#[test]
fn no_feeds_and_wrong_format_feeds_are_clear_errors() {
    let home = tempfile::tempdir().unwrap();
    let root = case("trivy-debian-buster").join("rootfs");
    let out = kiln(home.path(), &["scan", s(&root)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("no vulnerability feeds"), "{}", text(&out.stderr));

    let bad = home.path().join("sbom.json");
    std::fs::write(&bad, br#"{"bomFormat": "CycloneDX", "specVersion": "1.5"}"#).unwrap();
    let out = kiln(home.path(), &["scan", s(&root), "--feed", s(&bad)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("not a vulnerability feed"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
}

#[test]
fn truncated_feed_leaves_the_good_data_answering() {
    let home = tempfile::tempdir().unwrap();
    let root = case("trivy-debian-buster").join("rootfs");
    let feed = home.path().join("tracker.json");
    let good = std::fs::read(case("trivy-debian-buster").join("feed/debian-tracker.json")).unwrap();
    std::fs::write(&feed, &good).unwrap();
    let want =
        rows(&json_out(&kiln(home.path(), &["scan", s(&root), "--feed", s(&feed), "--format", "json"])));
    assert_eq!(want.len(), 2);

    std::fs::write(&feed, &good[..good.len() * 2 / 3]).unwrap();
    let out = kiln(home.path(), &["scan", s(&root), "--feed", s(&feed), "--format", "json"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("truncated"), "{}", text(&out.stderr));

    // The store still answers with the good copy.
    let report = json_out(&kiln(home.path(), &["scan", s(&root), "--format", "json"]));
    assert_eq!(rows(&report), want);
}

#[test]
fn unknown_target_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let feed = case("trivy-debian-buster").join("feed/debian-tracker.json");
    let out = kiln(home.path(), &["scan", "no-such-target", "--feed", s(&feed)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("not a directory, a disk file or a catalogued image"),
        "{}",
        text(&out.stderr)
    );
}

/// The buster case's root as a raw disk in `dir`.
fn buster_disk(dir: &Path, name: &str) -> PathBuf {
    disk_from_root(dir, &case("trivy-debian-buster").join("rootfs"), name)
}

fn tracker() -> PathBuf {
    case("trivy-debian-buster").join("feed/debian-tracker.json")
}

#[test]
fn a_disk_file_scans_like_its_root_directory() {
    let home = tempfile::tempdir().unwrap();
    let disk = buster_disk(home.path(), "buster");
    let root = case("trivy-debian-buster").join("rootfs");
    let from_dir =
        json_out(&kiln(home.path(), &["scan", s(&root), "--feed", s(&tracker()), "--format", "json"]));
    let from_disk = json_out(&kiln(home.path(), &["scan", s(&disk), "--format", "json"]));
    assert_eq!(rows(&from_disk), rows(&from_dir));
    assert_eq!(rows(&from_disk), expected(&case("trivy-debian-buster").join("expected.json")));
    assert_eq!(from_disk["inventory"], from_dir["inventory"]);
    assert_eq!(from_disk["target"], s(&disk));
    // The imported root is temporary.
    let left: Vec<_> = std::fs::read_dir(home.path().join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "scratch roots left behind: {left:?}");
}

#[test]
fn a_catalogued_image_is_scanned_from_its_disk_by_name_or_arn() {
    let home = tempfile::tempdir().unwrap();
    let images = home.path().join("images/scanned");
    std::fs::create_dir_all(&images).unwrap();
    let disk = buster_disk(&images, "scanned");
    let arn = catalogue_image(home.path(), "scanned", Some(&disk), None);
    let want = expected(&case("trivy-debian-buster").join("expected.json"));
    let by_name =
        json_out(&kiln(home.path(), &["scan", "scanned/1.0.0", "--feed", s(&tracker()), "--format", "json"]));
    assert_eq!(rows(&by_name), want);
    let by_arn = json_out(&kiln(home.path(), &["scan", &arn, "--format", "json"]));
    assert_eq!(rows(&by_arn), want);
    let out = kiln(home.path(), &["scan", "scanned/1.0.0/7", "--format", "json"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("not a catalogued image"), "{}", text(&out.stderr));
    // A manifest whose disk is gone says so.
    std::fs::remove_file(&disk).unwrap();
    let out = kiln(home.path(), &["scan", "scanned/1.0.0"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("the file is missing"), "{}", text(&out.stderr));
}

/// The ids of `newFindings` of each image in a `--catalogue` report, by image name.
fn new_ids(report: &Value) -> Vec<(String, Vec<String>)> {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let ids = i["newFindings"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string());
            (i["name"].as_str().unwrap().to_string(), ids.collect())
        })
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn catalogue_rescans_record_new_findings_and_mark_rebuilds() {
    let home = tempfile::tempdir().unwrap();
    let root = case("trivy-debian-buster").join("rootfs");
    // One image with its inventory kept (as builds keep it), one from before that: only a disk.
    catalogue_image(home.path(), "kept", None, Some(&root));
    let out_dir = home.path().join("images/old");
    std::fs::create_dir_all(&out_dir).unwrap();
    let old_disk = buster_disk(&out_dir, "old");
    catalogue_image(home.path(), "old", Some(&old_disk), None);

    let first =
        json_out(&kiln(home.path(), &["scan", "--catalogue", "--feed", s(&tracker()), "--format", "json"]));
    let images = first["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{first:#}");
    assert_eq!(first["feeds"].as_array().unwrap().len(), 1);
    let both = strings(&["CVE-2019-18224", "CVE-2019-18276"]);
    assert_eq!(new_ids(&first), [("kept".into(), both.clone()), ("old".into(), both.clone())]);
    for (image, source) in images.iter().zip(["catalogue", "disk"]) {
        assert_eq!(image["inventorySource"], source, "{image:#}");
        assert_eq!((image["total"].as_u64(), image["fixable"].as_u64()), (Some(2), Some(1)), "{image:#}");
        assert_eq!(rows(image), expected(&case("trivy-debian-buster").join("expected.json")));
        let reason = image["needsRebuild"].as_str().expect("marked for a rebuild");
        assert!(reason.contains("CVE-2019-18224 (libidn2-0)"), "{reason}");
        assert_eq!(image["findings"][0]["imageBuildVersionArn"], image["arn"]);
    }

    // The same feed again: nothing new, and the old image's inventory is now kept.
    let second = json_out(&kiln(home.path(), &["scan", "--catalogue", "--format", "json"]));
    assert_eq!(new_ids(&second), [("kept".into(), vec![]), ("old".into(), vec![])]);
    assert_eq!(second["images"][1]["inventorySource"], "catalogue");

    // A newer feed with one more fixable vulnerability in bash: exactly that one is new.
    let mut feed: Value = serde_json::from_slice(&std::fs::read(tracker()).unwrap()).unwrap();
    feed["bash"]["CVE-2099-0001"] = serde_json::json!({
        "description": "made up for this test",
        "releases": { "buster": { "status": "resolved", "fixed_version": "5.0-4+deb10u1", "urgency": "high",
                                  "repositories": { "buster": "5.0-4" } } }
    });
    let newer = home.path().join("tracker-newer.json");
    std::fs::write(&newer, serde_json::to_vec(&feed).unwrap()).unwrap();
    let third =
        json_out(&kiln(home.path(), &["scan", "--catalogue", "--feed", s(&newer), "--format", "json"]));
    let one = strings(&["CVE-2099-0001"]);
    assert_eq!(new_ids(&third), [("kept".into(), one.clone()), ("old".into(), one)]);
    assert_eq!(third["feeds"].as_array().unwrap().len(), 2, "every stored feed answers the catalogue");
    assert_eq!(third["images"][0]["total"], 3);
    assert_eq!(third["images"][0]["fixable"], 2);
    assert_eq!(third["images"][0]["bySeverity"]["HIGH"], 1);

    // `kiln image show` has the latest scan and the mark.
    let show = json_out(&kiln(home.path(), &["image", "show", "kept/1.0.0", "--json"]));
    assert_eq!(show["scan"]["summary"]["total"], 3);
    assert_eq!(show["scan"]["trigger"], "rescan");
    assert_eq!(show["scan"]["newFindings"], serde_json::json!(["CVE-2099-0001"]));
    assert!(
        show["needsRebuild"]["reason"].as_str().unwrap().starts_with("2 finding(s) with a fix available")
    );
    let table = kiln(home.path(), &["image", "show", "kept/1.0.0"]);
    let table = text(&table.stdout);
    assert!(table.contains("scan:     3 finding(s), 2 fixable: 1 HIGH, 1 LOW, 1 UNTRIAGED"), "{table}");
    assert!(table.contains("rebuild:  needed since"), "{table}");

    // --fail-on applies to every image.
    let out = kiln(home.path(), &["scan", "--catalogue", "--fail-on", "HIGH"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("CVE-2099-0001 (bash, HIGH)"), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("kept/1.0.0/1") && table.contains("rebuild: 2 finding(s)"), "{table}");

    // Once no finding has a fix (here: accepted), the marks are cleared.
    let accepted = ["--ignore", "CVE-2019-18224:patched in place", "--ignore", "CVE-2099-0001:not reachable"];
    let mut args = vec!["scan", "--catalogue", "--format", "json"];
    args.extend(accepted);
    let cleared = json_out(&kiln(home.path(), &args));
    assert!(
        cleared["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["needsRebuild"].is_null() && i["fixable"] == 0)
    );
    let show = json_out(&kiln(home.path(), &["image", "show", "old/1.0.0", "--json"]));
    assert!(show["needsRebuild"].is_null(), "{show:#}");
}

#[test]
fn catalogue_and_target_are_exclusive_and_an_empty_catalogue_is_fine() {
    let home = tempfile::tempdir().unwrap();
    let root = case("trivy-debian-buster").join("rootfs");
    let out = kiln(home.path(), &["scan", "--catalogue", s(&root)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot be used with"), "{}", text(&out.stderr));
    let out = kiln(home.path(), &["scan", "--feed", s(&tracker())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("<TARGET|--catalogue>"), "{}", text(&out.stderr));
    let out = kiln(home.path(), &["scan", "--catalogue", "--format", "sarif"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--format sarif describes one target"), "{}", text(&out.stderr));
    // Without feeds the catalogue cannot be rescanned either.
    let out = kiln(home.path(), &["scan", "--catalogue"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("no vulnerability feeds"), "{}", text(&out.stderr));
    let empty =
        json_out(&kiln(home.path(), &["scan", "--catalogue", "--feed", s(&tracker()), "--format", "json"]));
    assert_eq!(empty["images"], serde_json::json!([]));
    let out = kiln(home.path(), &["scan", "--catalogue"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("no AVAILABLE images"), "{}", text(&out.stdout));
}
