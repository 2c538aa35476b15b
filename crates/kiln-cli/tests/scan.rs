//! `kiln scan` from the command line: the peer cases in `shared/vuln/peer-cases/`, the output
//! formats, the gate's exit codes, and the feed store's atomic updates.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{shared, text};
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
