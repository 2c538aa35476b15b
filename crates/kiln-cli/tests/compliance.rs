//! `kiln compliance` from the command line on directory targets: exit codes, the JSON report,
//! the HTML page, exceptions, the gate and bad input refused before any work.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::text;

use serde_json::Value;

fn kiln(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .env("KILN_HOME", home)
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .expect("run kiln")
}

fn put(root: &Path, path: &str, content: &str, mode: u32) {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree that passes the SSH rules of cis-level1 it is asked about and fails others.
fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    put(
        r,
        "var/lib/dpkg/status",
        "Package: openssh-server\nStatus: install ok installed\nVersion: 1:9.2p1-2\n\n",
        0o644,
    );
    put(r, "etc/ssh/sshd_config", "Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin yes\n", 0o600);
    put(r, "etc/ssh/sshd_config.d/50-hardening.conf", "PermitRootLogin no\nMaxAuthTries 3\n", 0o644);
    put(r, "etc/shadow", "root:*:19000:0:99999:7:::\n", 0o640);
    dir
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

#[test]
fn json_report_with_evidence_and_exit_codes() {
    let home = tempfile::tempdir().unwrap();
    let t = tree();
    let root = t.path().to_str().unwrap();
    let out = kiln(home.path(), &["compliance", root, "--profile", "cis-level1", "--format", "json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(r["target"], root);
    assert_eq!(r["profiles"][0]["id"], "cis-level1");
    assert_eq!(r["gate"]["passed"], true);
    let rule = |id: &str| r["results"].as_array().unwrap().iter().find(|x| x["id"] == id).cloned().unwrap();
    let root_login = rule("cis-5.2.7-ssh-root-login-disabled");
    assert_eq!(root_login["status"], "pass");
    assert_eq!(root_login["evidence"][0], "/etc/ssh/sshd_config.d/50-hardening.conf:1: PermitRootLogin no");
    assert_eq!(root_login["severity"], "high");
    assert!(root_login["rationale"].as_str().unwrap().len() > 20);
    assert_eq!(root_login["references"]["cis"][0], "5.2.7");
    assert_eq!(rule("cis-1.1.1.1-cramfs-disabled")["status"], "fail");
    let counts = &r["counts"];
    let pass = counts["pass"].as_f64().unwrap();
    let fail = counts["fail"].as_f64().unwrap();
    let score = r["score"].as_f64().unwrap();
    assert!((score - (pass * 100.0 / (pass + fail))).abs() < 0.06, "score {score} from {counts}");

    // The same evaluation with a gate it cannot pass: exit 1, the reason on stderr.
    let out = kiln(
        home.path(),
        &["compliance", root, "--profile", "cis-level1", "--min-score", "95", "--fail-on", "high"],
    );
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("compliance gate failed: score") && stderr.contains("below the minimum 95%"),
        "{stderr}"
    );
    let table = text(&out.stdout);
    assert!(table.contains("fail          low      cis-1.1.1.1-cramfs-disabled"), "{table}");
    assert!(table.contains("gate failed"), "{table}");
}

#[test]
fn exceptions_are_reported_with_their_justification() {
    let home = tempfile::tempdir().unwrap();
    let t = tree();
    let out = kiln(
        home.path(),
        &[
            "compliance",
            t.path().to_str().unwrap(),
            "--profile",
            "cis-level1",
            "--exception",
            "cis-1.1.1.1-cramfs-disabled:the kernel is built without cramfs",
            "--format",
            "json",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let x =
        r["results"].as_array().unwrap().iter().find(|x| x["id"] == "cis-1.1.1.1-cramfs-disabled").unwrap();
    assert_eq!(x["status"], "exception");
    assert_eq!(x["evaluated"], "fail");
    assert_eq!(x["justification"], "the kernel is built without cramfs");
    assert_eq!(r["counts"]["exception"], 1);
}

#[test]
fn html_is_written_to_the_output_file() {
    let home = tempfile::tempdir().unwrap();
    let t = tree();
    put(t.path(), "etc/issue", "Debian <script>alert(1)</script> \\r\n", 0o644);
    let page = home.path().join("report.html");
    let out = kiln(
        home.path(),
        &[
            "compliance",
            t.path().to_str().unwrap(),
            "--profile",
            "cis-level1",
            "--format",
            "html",
            "--output",
            page.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("score "), "a summary line: {}", text(&out.stdout));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("cis-1.7.2-issue-no-os-info"));
    assert!(html.contains("Debian &lt;script&gt;alert(1)&lt;/script&gt;") && !html.contains("<script>"));
}

#[test]
fn bad_input_is_refused_before_any_work() {
    let home = tempfile::tempdir().unwrap();
    // The target does not exist: had the options been accepted, that would be exit 3.
    let missing = "/nonexistent/kiln-compliance-target";
    let cases: &[(&[&str], &str)] = &[
        (
            &["--profile", "cis-levl1"],
            "error: --profile cis-levl1: unknown profile `cis-levl1`: kiln's profiles are",
        ),
        (
            &["--profile", "cis-level1", "--exception", "cis-1.1.1.1-cramfs-disabled"],
            "expected RULE:JUSTIFICATION",
        ),
        (
            &["--profile", "cis-level1", "--exception", "cis-1.1.1.1-cramfs-disabled: "],
            "the exception for `cis-1.1.1.1-cramfs-disabled` has no justification",
        ),
        (
            &["--profile", "cis-level1", "--exception", "cis-1.1.1.1-cramfs-disabld:because"],
            "`cis-1.1.1.1-cramfs-disabld` is not a rule of the profiles evaluated (cis-level1) (did you mean `cis-1.1.1.1-cramfs-disabled`?)",
        ),
        (&["--profile", "cis-level1", "--fail-on", "severe"], "--fail-on: `severe` is not a severity"),
        (&["--profile", "cis-level1", "--min-score", "150"], "--min-score: 150 is not a percentage"),
        (&["--profile", "./missing-profile.yml"], "cannot read the profile file"),
    ];
    for (args, want) in cases {
        let mut all = vec!["compliance", missing];
        all.extend_from_slice(args);
        let out = kiln(home.path(), &all);
        assert_eq!(code(&out), 2, "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(want), "{args:?}: {}", text(&out.stderr));
    }
    let out = kiln(home.path(), &["compliance", missing, "--profile", "cis-level1"]);
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("{missing} does not exist: give a root directory")),
        "{}",
        text(&out.stderr)
    );
    let out = kiln(home.path(), &["compliance", "--profile", "cis-level1"]);
    assert_eq!(code(&out), 2, "no target: {}", text(&out.stderr));
}

#[test]
fn a_profile_file_with_a_mistake_is_positioned() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("mine.yml");
    std::fs::write(
        &file,
        "id: mine\ntitle: Mine\nextends: cis-level1\nrules:\n  - id: m1\n    title: T\n    severity: hgh\n    rationale: r\n    remediation: m\n    check: { fileExists: { path: /etc/motd } }\n",
    )
    .unwrap();
    let out = kiln(home.path(), &["compliance", "/", "--profile", file.to_str().unwrap()]);
    assert_eq!(code(&out), 2);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("mine.yml:7:15: `rules[0].severity`: unknown variant `hgh`")
            && stderr.contains("did you mean `high`?"),
        "{stderr}"
    );
}

#[test]
fn a_disk_file_is_imported_and_evaluated() {
    // Needs root to import the disk (as the scan tests do).
    let home = tempfile::tempdir().unwrap();
    let t = tree();
    // kiln-parent's import looks for the root file system by its os-release.
    put(t.path(), "etc/os-release", "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n", 0o644);
    let disk = common::disk_from_root(home.path(), t.path(), "tree");
    let out = kiln(
        home.path(),
        &["compliance", disk.to_str().unwrap(), "--profile", "cis-level1", "--format", "json"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["target"], disk.to_str().unwrap());
    let x = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "cis-5.2.7-ssh-root-login-disabled")
        .unwrap();
    assert_eq!(x["status"], "pass", "{x}");
    // The temporary root is gone afterwards.
    let left: Vec<_> = std::fs::read_dir(home.path().join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn profiles_are_listed() {
    let home = tempfile::tempdir().unwrap();
    let out = kiln(home.path(), &["compliance", "--list-profiles"]);
    assert_eq!(code(&out), 0);
    let s = text(&out.stdout);
    for name in ["cis-level1", "cis-level2", "anssi-minimal", "anssi-intermediary", "anssi-enhanced"] {
        assert!(s.contains(name), "{s}");
    }
    assert!(s.contains("SCAP Security Guide profiles"), "{s}");
}
