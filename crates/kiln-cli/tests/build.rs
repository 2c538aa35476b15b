//! `kiln build` end to end: real bootstraps, layers, assembly, the catalogue. Heavy: needs root,
//! the package mirror (mmdebstrap) and QEMU. Every test has its own KILN_HOME (catalogue and
//! outputs) and all share one layer and package cache, so the Debian base is bootstrapped once.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{shared_cache, text, workspace};

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home { dir: tempfile::Builder::new().prefix("kiln-home-").tempdir().expect("tempdir") }
    }

    fn kiln(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(args).env("KILN_HOME", self.dir.path()).env("KILN_CACHE_DIR", shared_cache());
        for (k, v) in env {
            cmd.env(k, v);
        }
        common::output_echoed(&mut cmd)
    }

    /// `kiln build --json`: the outcome object (or the error) from the last line.
    fn build(&self, file: &Path, extra: &[&str]) -> (Output, serde_json::Value) {
        let mut args = vec!["build", "-f", file.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let out = self.kiln(&args, &[]);
        let last = text(&out.stdout).lines().last().map(str::to_string).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&last).unwrap_or(serde_json::Value::Null);
        (out, v)
    }

    fn images(&self) -> Vec<serde_json::Value> {
        let out = self.kiln(&["image", "list", "--json"], &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("image list --json")
    }
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "kiln failed:\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn nonce() -> &'static str {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NONCE.get_or_init(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        format!("{}-{}", std::process::id(), t.as_nanos())
    })
}

/// A resource file with two quick components; `a` and `b` are their parameter values.
fn two_components(dir: &Path, name: &str, a: &str, b: &str, b_fails: bool) -> PathBuf {
    two_components_v(dir, name, a, b, b_fails, "1.0.0")
}

/// The same, with the second component at `b_version` (component versions are immutable: a
/// changed document needs a new version).
fn two_components_v(dir: &Path, name: &str, a: &str, b: &str, b_fails: bool, b_version: &str) -> PathBuf {
    let fail = if b_fails { "exit 3" } else { "true" };
    // The layer cache is shared and kept between runs: a value unique to this test process
    // makes its layers new, so "built" and "reused" counts mean the same on every run.
    let a = format!("{a}-{}", nonce());
    let file = dir.join(format!("{name}.yml"));
    std::fs::write(
        &file,
        format!(
            r#"components:
  - name: write-a
    semanticVersion: 1.0.0
    data: |
      name: write-a
      schemaVersion: 1.0
      parameters:
        - Value:
            type: string
      phases:
        - name: build
          steps:
            - name: Write
              action: CreateFile
              inputs:
                - path: /etc/kiln-a
                  content: "{{{{ Value }}}}"
  - name: write-b
    semanticVersion: {b_version}
    data: |
      name: write-b
      schemaVersion: 1.0
      parameters:
        - Value:
            type: string
      phases:
        - name: build
          steps:
            - name: Write
              action: ExecuteBash
              inputs:
                commands:
                  - echo "{{{{ Value }}}}" > /etc/kiln-b
                  - {fail}
        - name: validate
          steps:
            - name: Check
              action: ExecuteBash
              inputs:
                commands: ["test -s /etc/kiln-b"]
imageRecipe:
  name: {name}
  semanticVersion: 1.0.0
  parentImage: debian-12-x86
  components:
    - componentArn: write-a/1.x.x
      parameters: [{{ name: Value, value: ["{a}"] }}]
    - componentArn: arn:aws:imagebuilder:local:000000000000:component/write-b/x.x.x
      parameters: [{{ name: Value, value: ["{b}"] }}]
"#
        ),
    )
    .unwrap();
    file
}

/// A Debian Security Tracker feed with two made-up bookworm vulnerabilities in packages every
/// kiln image has: one in bash with a fix (at `bash_urgency`), one in sudo without.
fn bookworm_feed(dir: &Path, bash_urgency: &str) -> PathBuf {
    let feed = dir.join("feed.json");
    let body = serde_json::json!({
        "bash": { "CVE-2099-1001": { "description": "made up for kiln's tests", "releases": {
            "bookworm": { "status": "resolved", "fixed_version": "99.0-1", "urgency": bash_urgency,
                          "repositories": { "bookworm": "5.2.15-2" } } } } },
        "sudo": { "CVE-2099-1002": { "releases": {
            "bookworm": { "status": "open", "urgency": "unimportant", "repositories": { "bookworm": "1.9.13p3-1" } } } } },
    });
    std::fs::write(&feed, serde_json::to_vec(&body).unwrap()).unwrap();
    feed
}

#[test]
fn minimal_example_builds_boots_and_is_catalogued() {
    let home = Home::new();
    let out_dir = home.dir.path().join("out");
    let example = workspace().join("examples/minimal/minimal.yml");
    // A feed in the store: the example has no scan policy, so the build scans against it.
    let feed = bookworm_feed(home.dir.path(), "low");
    ok(&home.kiln(&["scan", "--catalogue", "--feed", feed.to_str().unwrap()], &[]));
    let (out, outcome) = home.build(&example, &["--out", out_dir.to_str().unwrap()]);
    ok(&out);
    assert_eq!(outcome["outcome"]["state"], "AVAILABLE", "{outcome}");
    for f in [
        "minimal.qcow2",
        "minimal.raw",
        "manifest.json",
        "SHA256SUMS",
        "build-log.jsonl",
        "sbom.cdx.json",
        "sbom.spdx.json",
        "scan.json",
    ] {
        assert!(out_dir.join(f).is_file(), "{f} is missing");
    }
    let sums = Command::new("sha256sum").arg("-c").arg("SHA256SUMS").current_dir(&out_dir).output().unwrap();
    assert!(sums.status.success(), "{}", text(&sums.stdout));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
    // The test stage booted the image as a test instance and ran every built-in test and the
    // component's test phase inside it.
    let results: std::collections::BTreeMap<&str, &str> = manifest["tests"]["results"]
        .as_array()
        .expect("test results in the manifest")
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["status"].as_str().unwrap()))
        .collect();
    for passed in [
        "boots-to-multi-user",
        "no-failed-units",
        "survives-reboot",
        "machine-id-unique",
        "ssh-host-keys-unique",
        "component:motd-and-admins/1.1.0",
    ] {
        assert_eq!(results.get(passed), Some(&"passed"), "{passed}: {results:?}");
    }
    // The minimal image configures no sysctl values, firewall or auditd: not applicable.
    for skipped in ["sysctl-settings-in-force", "firewall-rules-loaded", "auditd-running"] {
        assert_eq!(results.get(skipped), Some(&"skipped"), "{skipped}: {results:?}");
    }
    let junit = std::fs::read_to_string(out_dir.join("test-report/junit.xml")).unwrap();
    assert!(junit.contains("tests=\"9\"") && junit.contains("failures=\"0\""), "{junit}");
    assert!(std::fs::read_to_string(out_dir.join("test-console.log")).unwrap().contains("login:"));
    let packages = manifest["packages"].as_array().unwrap();
    assert!(packages.iter().any(|p| p["name"] == "linux-image-amd64"), "the kernel is in the package list");
    assert_eq!(manifest["components"][0]["name"], "motd-and-admins");
    // The scan report is beside the image, listed in the manifest and summed.
    let arn = outcome["outcome"]["arn"].as_str().unwrap();
    let listed = manifest["artifacts"].as_array().unwrap().iter().find(|a| a["file"] == "scan.json").cloned();
    assert_eq!(
        listed.as_ref().map(|a| &a["format"]),
        Some(&serde_json::json!("scan-report")),
        "{manifest:#}"
    );
    assert_eq!(manifest["scan"]["status"], "COMPLETED");
    assert_eq!(
        (manifest["scan"]["total"].as_u64(), manifest["scan"]["fixable"].as_u64()),
        (Some(2), Some(1))
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("scan.json")).unwrap()).unwrap();
    assert_eq!(report["release"], "bookworm");
    let ids: Vec<(&str, &str)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["imageBuildVersionArn"], arn);
            let d = &f["packageVulnerabilityDetails"];
            (d["vulnerabilityId"].as_str().unwrap(), d["vulnerablePackages"][0]["name"].as_str().unwrap())
        })
        .collect();
    assert_eq!(ids, [("CVE-2099-1001", "bash"), ("CVE-2099-1002", "sudo")]);
    // Every line of the build log is JSON.
    let log = std::fs::read_to_string(out_dir.join("build-log.jsonl")).unwrap();
    assert!(
        log.lines().count() > 5 && log.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
    // The catalogue has it, with its state history.
    let images = home.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["state"], "AVAILABLE");
    let show = home.kiln(&["image", "show", "minimal/1.0.0", "--json"], &[]);
    ok(&show);
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let states: Vec<&str> =
        shown["history"].as_array().unwrap().iter().map(|h| h["to"].as_str().unwrap()).collect();
    assert_eq!(states, ["PENDING", "BUILDING", "TESTING", "AVAILABLE"]);
    assert_eq!(shown["scan"]["trigger"], "build");
    assert_eq!(shown["scan"]["summary"]["total"], 2);
    // The inventory was kept: a rescan needs no disk, finds nothing new, and asks for a
    // rebuild since bash has a fix.
    let rescan = home.kiln(&["scan", "--catalogue", "--format", "json"], &[]);
    ok(&rescan);
    let rescan: serde_json::Value = serde_json::from_slice(&rescan.stdout).unwrap();
    let image = &rescan["images"][0];
    assert_eq!(image["inventorySource"], "catalogue", "{rescan:#}");
    assert_eq!(image["newFindings"], serde_json::json!([]));
    assert!(image["needsRebuild"].as_str().unwrap().contains("CVE-2099-1001 (bash)"), "{image:#}");
    // The image leaves with no host keys and an empty machine id (checked in the disk).
    let raw = out_dir.join("minimal.raw");
    let listing = debugfs_root(&raw, "ls -l /etc/ssh");
    assert!(!listing.contains("ssh_host_"), "host keys were left in the image:\n{listing}");
    let machine_id = debugfs_root(&raw, "stat /etc/machine-id");
    assert!(machine_id.contains("Size: 0"), "the machine id is not empty:\n{machine_id}");
    // The test instance wrote to its own overlay only: the image has no trace of the agent.
    let wants = debugfs_root(&raw, "ls /etc/systemd/system/multi-user.target.wants");
    assert!(!wants.contains("kiln-guest-agent"), "the agent unit leaked into the image:\n{wants}");
}

/// Run a debugfs request against the root partition (the last one) of a raw disk.
fn debugfs_root(raw: &Path, request: &str) -> String {
    let dump = Command::new("sfdisk").arg("--json").arg(raw).output().unwrap();
    let table: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let root = parts.last().unwrap();
    let start = root["start"].as_u64().unwrap() * 512;
    let size = root["size"].as_u64().unwrap() * 512;
    let dir = tempfile::tempdir().unwrap();
    let fs = dir.path().join("root.ext4");
    let status = Command::new("dd")
        .args([format!("if={}", raw.display()), format!("of={}", fs.display())])
        .args(["bs=1M", "iflag=skip_bytes,count_bytes", "conv=sparse", "status=none"])
        .arg(format!("skip={start}"))
        .arg(format!("count={size}"))
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new("debugfs").arg("-R").arg(request).arg(&fs).output().unwrap();
    text(&out.stdout)
}

#[test]
fn rebuilds_reuse_layers_and_a_change_rebuilds_only_what_follows_it() {
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let first = two_components(dir.path(), "cached", "one", "two", false);
    let (out, o) = home.build(&first, &["--no-test"]);
    ok(&out);
    let (out, o2) = home.build(&first, &["--no-test"]);
    ok(&out);
    assert_eq!(
        (o2["outcome"]["layersReused"].as_u64(), o2["outcome"]["layersBuilt"].as_u64()),
        (Some(2), Some(0)),
        "{o2}"
    );
    assert_eq!(o2["outcome"]["build"], 2, "each build of a recipe version gets the next build number ({o})");
    // Changing the second component rebuilds it alone.
    let second = two_components(dir.path(), "cached", "one", "TWO", false);
    let (out, o3) = home.build(&second, &["--no-test"]);
    ok(&out);
    assert_eq!(
        (o3["outcome"]["layersReused"].as_u64(), o3["outcome"]["layersBuilt"].as_u64()),
        (Some(1), Some(1)),
        "{o3}"
    );
    // Changing the first rebuilds both.
    let third = two_components(dir.path(), "cached", "ONE", "TWO", false);
    let (out, o4) = home.build(&third, &["--no-test"]);
    ok(&out);
    assert_eq!(
        (o4["outcome"]["layersReused"].as_u64(), o4["outcome"]["layersBuilt"].as_u64()),
        (Some(0), Some(2)),
        "{o4}"
    );
    // --no-cache reuses nothing.
    let (out, o5) = home.build(&third, &["--no-test", "--no-cache"]);
    ok(&out);
    assert_eq!(o5["outcome"]["layersReused"].as_u64(), Some(0), "{o5}");
}

#[test]
fn a_failing_step_fails_the_image_and_the_fixed_rerun_resumes_from_the_last_good_layer() {
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let broken = two_components(dir.path(), "resume", "alpha", "beta", true);
    let (out, o) = home.build(&broken, &["--no-test", "--on-error", "keep"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(o["error"].as_str().unwrap().contains("write-b"), "the failure names the component: {o}");
    let images = home.images();
    assert_eq!(images[0]["state"], "FAILED");
    assert!(
        images[0]["reason"].as_str().unwrap().contains("Write"),
        "the reason names the step: {}",
        images[0]
    );
    assert!(!images.iter().any(|i| i["state"] == "AVAILABLE"));
    let kept: Vec<_> = std::fs::read_dir(shared_cache().join("layers"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("failed-"))
        .collect();
    assert!(!kept.is_empty(), "--on-error keep keeps the failed layer");
    // The same document again is refused (component versions are immutable)...
    let same_version = two_components(dir.path(), "resume", "alpha", "beta", false);
    let (out, o) = home.build(&same_version, &["--no-test"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(o["error"].as_str().unwrap().contains("immutable"), "{o}");
    // ...and the fixed document as a new version resumes after the last good layer.
    let fixed = two_components_v(dir.path(), "resume", "alpha", "beta", false, "1.0.1");
    let (out, o) = home.build(&fixed, &["--no-test"]);
    ok(&out);
    assert_eq!(o["outcome"]["layersReused"].as_u64(), Some(1), "the good layer is reused: {o}");
    assert_eq!(o["outcome"]["layersBuilt"].as_u64(), Some(1));
}

#[test]
fn bad_inputs_fail_clearly_before_any_work() {
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(two_components(dir.path(), "bad", "a", "b", false)).unwrap();
    let cases = [
        (good.replace("parentImage: debian-12-x86", "parentImage: ubuntu-99-arm"), "ubuntu-99-arm"),
        (good.replace("componentArn: write-a/1.x.x", "componentArn: write-a/7.x.x"), "write-a"),
        (
            good.replace(
                "parentImage: debian-12-x86",
                "parentImage: debian-12-x86\n  diskLayout:\n    rootSizeMib: 16",
            ),
            "too small",
        ),
        (
            format!("{good}imageScanningConfiguration:\n  failOn: SEVERE\n"),
            "failOn: unknown severity \"SEVERE\"",
        ),
        (format!("{good}imageScanningConfiguration:\n  failOn: LOW\n"), "a gate with no data cannot pass"),
        (
            format!("{good}compliance:\n  profiles: [cis-levl1]\n"),
            "compliance.profiles[0]: unknown profile `cis-levl1`",
        ),
        (
            format!(
                "{good}compliance:\n  profiles: [cis-level1]\n  exceptions:\n    - ruleId: cis-9-x\n      justification: because\n"
            ),
            "compliance.exceptions[0].ruleId: `cis-9-x` is not a rule of the profiles evaluated (cis-level1)",
        ),
    ];
    for (i, (text_, expect)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case{i}.yml"));
        std::fs::write(&file, text_).unwrap();
        let started = std::time::Instant::now();
        let (out, o) = home.build(&file, &["--no-test"]);
        assert_eq!(out.status.code(), Some(1), "case {i}: {}", text(&out.stderr));
        // Positioned diagnostics (the compliance policy's) go to stderr, the rest to the JSON.
        let err = format!("{} {}", o["error"].as_str().unwrap_or_default(), text(&out.stderr));
        assert!(err.contains(expect), "case {i}: {err}");
        if i != 2 {
            assert!(started.elapsed().as_secs() < 20, "case {i} did work before failing");
        }
    }
    // Every failed build is recorded as FAILED with its reason; none is AVAILABLE.
    let images = home.images();
    assert_eq!(images.len(), cases.len());
    assert!(
        images.iter().all(|i| i["state"] == "FAILED" && i["reason"].as_str().is_some_and(|r| !r.is_empty()))
    );
    // A resource-file error is reported with its position and builds nothing.
    let file = dir.path().join("overlap.yml");
    std::fs::write(
        &file,
        good.replace(
            "parentImage: debian-12-x86",
            "parentImage: debian-12-x86\n  diskLayout:\n    partitions:\n      - mountPoint: /var\n      - mountPoint: /var/",
        ),
    )
    .unwrap();
    let out = home.kiln(&["build", "-f", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("overlap.yml:") && text(&out.stderr).contains("given twice"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_scan_gate_fails_the_build_and_an_ignore_rule_with_a_reason_lets_it_pass() {
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    bookworm_feed(dir.path(), "high");
    let base = std::fs::read_to_string(two_components(dir.path(), "gated", "a", "b", false)).unwrap();
    // The feed path is relative to the resource file.
    let policy = "imageScanningConfiguration:\n  failOn: HIGH\n  feeds: [feed.json]\n";
    let file = dir.path().join("gated.yml");
    std::fs::write(&file, format!("{base}{policy}")).unwrap();
    let out_dir = dir.path().join("out");
    let (out, o) = home.build(&file, &["--no-test", "--out", out_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = o["error"].as_str().unwrap();
    assert!(
        err.contains(
            "vulnerability scan gate failed: 1 finding(s) at or above HIGH: CVE-2099-1001 (bash, HIGH)"
        ),
        "{err}"
    );
    let images = home.images();
    assert_eq!(images[0]["state"], "FAILED");
    assert!(images[0]["reason"].as_str().unwrap().contains("CVE-2099-1001"), "{}", images[0]);
    // The report was written and recorded all the same, and no disk was made.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("scan.json")).unwrap()).unwrap();
    assert_eq!(report["gate"]["passed"], false);
    assert!(!out_dir.join("gated.qcow2").exists());
    let show = home.kiln(&["image", "show", "gated/1.0.0", "--json"], &[]);
    ok(&show);
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["scan"]["summary"]["gate"]["passed"], false, "{shown:#}");

    // Accepting the finding, with a reason and an expiry date, passes the gate.
    let accepted = format!(
        "{base}{policy}  ignore:\n    - vulnerabilityId: CVE-2099-1001\n      package: bash\n      reason: bash is not \
         reachable by users\n      expires: 2999-12-31\n"
    );
    std::fs::write(&file, accepted).unwrap();
    let (out, o) = home.build(&file, &["--no-test", "--out", out_dir.to_str().unwrap()]);
    ok(&out);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(o["outcome"]["manifest"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(
        manifest["scan"]["gate"],
        serde_json::json!({ "failOn": "HIGH", "passed": true, "failing": 0 })
    );
    assert_eq!(manifest["scan"]["ignored"], 1);
    let sums = std::fs::read_to_string(out_dir.join("SHA256SUMS")).unwrap();
    assert!(sums.lines().any(|l| l.ends_with("  scan.json")), "{sums}");
}

#[test]
fn a_compliance_gate_fails_the_build_and_an_exception_lets_it_pass() {
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(two_components(dir.path(), "complied", "a", "b", false)).unwrap();
    // A profile file beside the resource file, on top of CIS Level 1: one high rule this image
    // fails (no marker file), so the gate's outcome does not depend on the bootstrap's details.
    std::fs::write(
        dir.path().join("site.yml"),
        "id: site\ntitle: Site\nextends: cis-level1\nrules:\n  - id: site-marker\n    title: The site marker exists\n    \
         severity: critical\n    rationale: r\n    remediation: m\n    references: { cis: [x] }\n    check: { fileExists: { path: \
         /etc/site-marker } }\n",
    )
    .unwrap();
    let policy = "compliance:\n  profiles: [site.yml]\n  failOnSeverity: critical\n";
    let file = dir.path().join("complied.yml");
    std::fs::write(&file, format!("{base}{policy}")).unwrap();
    let out_dir = dir.path().join("out");
    let (out, o) = home.build(&file, &["--no-test", "--out", out_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = o["error"].as_str().unwrap();
    assert!(err.starts_with("compliance gate failed: score "), "{err}");
    assert!(
        err.contains("rule(s) of severity critical or above failed or could not be evaluated: site-marker"),
        "{err}"
    );
    assert!(home.images()[0]["reason"].as_str().unwrap().contains("site-marker"));
    // Both reports were written before the build failed, and no disk was made.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("compliance.json")).unwrap()).unwrap();
    assert_eq!(report["gate"]["failingRules"], serde_json::json!(["site-marker"]));
    assert!(report["results"].as_array().unwrap().len() > 40, "Level 1 came with the site profile");
    assert!(out_dir.join("compliance.html").is_file());
    assert!(!out_dir.join("complied.qcow2").exists());

    let excepted = format!(
        "{base}{policy}  exceptions:\n    - ruleId: site-marker\n      justification: the marker is written at first boot\n"
    );
    std::fs::write(&file, excepted).unwrap();
    let (out, o) = home.build(&file, &["--no-test", "--out", out_dir.to_str().unwrap()]);
    ok(&out);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(o["outcome"]["manifest"].as_str().unwrap()).unwrap()).unwrap();
    let c = &manifest["compliance"];
    assert_eq!(c["status"], "COMPLETED");
    assert_eq!(c["gate"]["passed"], true);
    assert_eq!(c["counts"]["exception"], 1);
    assert_eq!(c["profiles"][0]["id"], "site");
    let formats: Vec<&str> =
        manifest["artifacts"].as_array().unwrap().iter().filter_map(|a| a["format"].as_str()).collect();
    assert!(
        formats.contains(&"compliance-report") && formats.contains(&"compliance-report-html"),
        "{formats:?}"
    );
    let sums = std::fs::read_to_string(out_dir.join("SHA256SUMS")).unwrap();
    assert!(sums.lines().any(|l| l.ends_with("  compliance.json")), "{sums}");
    assert!(sums.lines().any(|l| l.ends_with("  compliance.html")), "{sums}");
    // The staged tree has kiln's fstab: the root is there, /tmp is not separate.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("compliance.json")).unwrap()).unwrap();
    let tmp =
        report["results"].as_array().unwrap().iter().find(|r| r["id"] == "cis-1.1.2.1-tmp-separate").unwrap();
    assert_eq!(tmp["status"], "fail", "{tmp}");
}

#[test]
fn images_chain_onto_kiln_images_and_import_disks() {
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let base = two_components(dir.path(), "chain-base", "base-a", "base-b", false);
    let base_out = dir.path().join("base-out");
    let (out, _) = home.build(&base, &["--no-test", "--out", base_out.to_str().unwrap()]);
    ok(&out);
    let child_text = |parent: &str| {
        format!(
            r#"components:
  - name: child-mark
    semanticVersion: 1.0.0
    data: |
      name: child-mark
      schemaVersion: 1.0
      phases:
        - name: build
          steps:
            - name: Mark
              action: ExecuteBash
              inputs:
                commands: ["test -s /etc/kiln-a && echo child > /etc/kiln-child"]
imageRecipe:
  name: chain-child
  semanticVersion: 1.0.0
  parentImage: {parent}
  components:
    - componentArn: child-mark/1.0.0
"#
        )
    };
    // Chaining onto the catalogued image reuses its layers.
    let chained = dir.path().join("chained.yml");
    std::fs::write(&chained, child_text("chain-base/1.0.x")).unwrap();
    let (out, o) = home.build(&chained, &["--no-test"]);
    ok(&out);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(o["outcome"]["manifest"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(manifest["parent"]["info"]["kind"], "kiln-image");
    assert!(manifest["parent"]["layers"].as_array().unwrap().len() >= 3, "the parent's layers are the base");
    // Importing the parent's disk gives a base with the parent's content.
    let imported = dir.path().join("imported.yml");
    let disk = base_out.join("chain-base.qcow2");
    std::fs::write(&imported, child_text(disk.to_str().unwrap()).replace("chain-child", "import-child"))
        .unwrap();
    let (out, o) = home.build(&imported, &["--no-test"]);
    ok(&out);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(o["outcome"]["manifest"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(manifest["parent"]["info"]["kind"], "import");
}

#[test]
fn two_no_cache_builds_with_one_source_date_epoch_give_identical_raw_disks() {
    let example = workspace().join("examples/minimal/minimal.yml");
    let mut digests = Vec::new();
    for _ in 0..2 {
        let home = Home::new();
        let out_dir = home.dir.path().join("out");
        let out = home.kiln(
            &[
                "build",
                "-f",
                example.to_str().unwrap(),
                "--no-cache",
                "--no-test",
                "--out",
                out_dir.to_str().unwrap(),
            ],
            &[("SOURCE_DATE_EPOCH", "1700000000")],
        );
        ok(&out);
        let sums = std::fs::read_to_string(out_dir.join("SHA256SUMS")).unwrap();
        let raw = sums.lines().find(|l| l.ends_with("minimal.raw")).unwrap().to_string();
        digests.push(raw);
    }
    assert_eq!(digests[0], digests[1], "the raw disks differ");
}

#[test]
fn a_killed_build_leaves_nothing_running_or_mounted_and_the_next_build_works() {
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let text_ =
        std::fs::read_to_string(two_components(dir.path(), "killed", "a", "b", false)).unwrap().replace(
            r#"echo "{{ Value }}" > /etc/kiln-b"#,
            r#"echo "{{ Value }}" > /etc/kiln-b; touch /etc/kiln-started; sleep 61.7"#,
        );
    let file = dir.path().join("killed.yml");
    std::fs::write(&file, text_).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", "-f", file.to_str().unwrap(), "--no-test"])
        .env("KILN_HOME", home.dir.path())
        .env("KILN_CACHE_DIR", shared_cache())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the slow step runs (its marker appears in a scratch layer), then kill kiln.
    let layers = shared_cache().join("layers");
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let started = || {
        std::fs::read_dir(&layers).into_iter().flatten().flatten().any(|e| {
            e.file_name().to_string_lossy().ends_with(&format!("-{pid}"))
                && e.path().join("upper/etc/kiln-started").exists()
        })
    };
    while !started() {
        assert!(std::time::Instant::now() < deadline, "the step never started");
        assert!(child.try_wait().unwrap().is_none(), "kiln ended before the step ran");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let procs = Command::new("pgrep").args(["-f", "sleep 61.7"]).output().unwrap();
    assert!(procs.stdout.is_empty(), "the step's processes outlived kiln: {}", text(&procs.stdout));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let cache = shared_cache().display().to_string();
    assert!(!mounts.lines().any(|l| l.contains(&cache)), "mounts were left behind");
    // The next build works, and clears the killed build's scratch layer.
    let fixed = two_components_v(dir.path(), "killed", "a", "b", false, "1.0.1");
    let (out, _) = home.build(&fixed, &["--no-test"]);
    ok(&out);
    let left = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(&format!("-{pid}")));
    assert!(!left, "the killed build's scratch layer is still there");
}

/// Host PIDs of live processes whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .filter(|pid| is_alive(*pid))
        .collect()
}

/// Running, not a zombie waiting to be reaped.
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

/// The children of `parent` that are sandbox helpers (kiln re-executed with the hidden
/// argument).
fn sandbox_helpers_of(parent: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"__kiln-sandbox-init"))
        })
        .collect()
}

/// Every file or folder under `dir` whose name starts with one of `prefixes`.
fn named_under(dir: &Path, prefixes: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|x| name.starts_with(x)) {
            out.push(e.path());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(named_under(&e.path(), prefixes));
        }
    }
    out
}

/// A `kiln build --json` in the background, its output lines read as they come.
struct Background {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Background {
    fn build(home: &Home, file: &Path, args: &[&str]) -> Background {
        use std::io::{BufRead, Read};
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["build", "-f", file.to_str().unwrap(), "--json"])
            .args(args)
            .env("KILN_HOME", home.dir.path())
            .env("KILN_CACHE_DIR", shared_cache())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let stdout = std::thread::spawn(move || {
            let mut all = String::new();
            for line in out.lines().map_while(Result::ok) {
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send(line);
            }
            all
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = err.read_to_end(&mut all);
            text(&all)
        });
        Background { child, lines, stdout, stderr }
    }

    /// Polls `ready` (given the output lines so far) until it answers, for at most 10
    /// minutes (the base may be bootstrapped first); kiln must still be running.
    fn wait_for<T>(&mut self, what: &str, mut ready: impl FnMut(&[String]) -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        let mut seen = Vec::new();
        loop {
            seen.extend(self.lines.try_iter());
            if let Some(v) = ready(&seen) {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "kiln ended before {what}:\n{}",
                seen.join("\n")
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// SIGINT, then waits (at most 20 s) for kiln to exit: its status, output, and how long
    /// it took.
    fn interrupt(mut self) -> (std::process::ExitStatus, String, String, std::time::Duration) {
        let kill = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().unwrap();
        assert!(kill.success());
        let sent = std::time::Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                sent.elapsed() < std::time::Duration::from_secs(20),
                "kiln did not exit within 20 s of SIGINT"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let took = sent.elapsed();
        (status, self.stdout.join().unwrap(), self.stderr.join().unwrap(), took)
    }
}

#[test]
fn ctrl_c_cancels_a_running_step_cleans_up_and_the_image_is_cancelled() {
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    // The mark is new for every test process, so this component's layer is never cached.
    let sleeping = touch_phase(
        r#"            - name: Sleep
              action: ExecuteBash
              inputs:
                commands: ["sleep 3217"]
"#,
    );
    let file = one_component(dir.path(), "cancelled", &sleeping, "");
    let mut build = Background::build(&home, &file, &["--no-test"]);
    let kiln = build.child.id();
    // The step has started once its `sleep 3217` runs (the base may be bootstrapped first).
    let helpers = build.wait_for("the sleeping step to start", |_| {
        let helpers = sandbox_helpers_of(kiln);
        (!pids_running(&["sleep", "3217"]).is_empty() && !helpers.is_empty()).then_some(helpers)
    });
    let (status, stdout, stderr, took) = build.interrupt();
    eprintln!("kiln exited {took:?} after SIGINT");
    assert_eq!(status.code(), Some(130), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("cancelling the build"), "{stderr}");
    assert!(stderr.contains("the build was cancelled"), "{stderr}");
    assert!(stdout.lines().last().unwrap_or_default().contains(r#""error":"cancelled""#), "{stdout}");

    // Nothing of the sandbox runs: neither the step nor the helper it ran under.
    assert_eq!(pids_running(&["sleep", "3217"]), Vec::<u32>::new(), "the step outlived the cancel");
    for helper in helpers {
        assert!(!is_alive(helper), "the sandbox helper {helper} outlived the cancel");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let cache = shared_cache().display().to_string();
    assert!(!mounts.lines().any(|l| l.contains(&cache)), "mounts were left behind");
    // No scratch layer of this kiln, and no layer holding the cancelled step's work.
    let layers = shared_cache().join("layers");
    for entry in std::fs::read_dir(&layers).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(&format!("-{kiln}")), "scratch layer {name} was left behind");
        let mark = entry.path().join("etc/kiln-test-mark");
        let ours = std::fs::read_to_string(&mark).is_ok_and(|m| m.trim() == nonce());
        assert!(!ours, "the cancelled step's layer was published as {name}");
    }
    // No temporary work folder under KILN_HOME (staging, test VMs, tmp).
    let left = named_under(home.dir.path(), &[".kiln-assemble-", ".test-vm", ".build-vm", "tmp-"]);
    assert_eq!(left, Vec::<PathBuf>::new(), "temporary folders were left behind");
    let tmp = home.dir.path().join("tmp");
    assert!(
        std::fs::read_dir(&tmp).map_or(true, |mut d| d.next().is_none()),
        "{} is not empty",
        tmp.display()
    );

    let images = home.images();
    let image = images.iter().find(|i| i["name"] == "cancelled").expect("the image is catalogued");
    assert_eq!(image["state"], "CANCELLED", "{image}");
    assert_eq!(image["reason"], "cancelled", "{image}");
    // The build log says the step was cancelled, not that it failed.
    let log =
        std::fs::read_to_string(Path::new(image["outputLocation"].as_str().unwrap()).join("build-log.jsonl"))
            .unwrap();
    let step = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["event"] == "step" && l["step"] == "Sleep")
        .unwrap_or_else(|| panic!("no line for the Sleep step in the build log:\n{log}"));
    assert_eq!(step["status"], "cancelled", "{step}");

    // The same recipe without the sleeping step (a new component version: versions are
    // immutable) builds from the same cache.
    let fixed = std::fs::read_to_string(one_component(dir.path(), "cancelled", &touch_phase(""), ""))
        .unwrap()
        .replace("semanticVersion: 1.0.0\n    data", "semanticVersion: 1.0.1\n    data")
        .replace("componentArn: cancelled/1.0.0", "componentArn: cancelled/1.0.1");
    std::fs::write(&file, fixed).unwrap();
    let (out, v) = home.build(&file, &["--no-test"]);
    ok(&out);
    assert_eq!(v["outcome"]["state"], "AVAILABLE", "{v}");
}

/// Cancelled while the test stage's guest runs a test step: QEMU and its work folder go, the
/// image is CANCELLED (not FAILED by a test), within seconds.
#[test]
fn ctrl_c_during_the_test_stage_stops_the_guest() {
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let phases = touch_phase(
        r#"        - name: test
          steps:
            - name: Waits
              action: ExecuteBash
              inputs:
                commands: ["sleep 3218"]"#,
    );
    let file = one_component(dir.path(), "cancelled-in-test", &phases, "");
    let mut build = Background::build(&home, &file, &[]);
    build.wait_for("the guest to run the test step", |lines| {
        lines
            .iter()
            .any(|l| l.contains(r#""event":"stepStarted""#) && l.contains(r#""step":"Waits""#))
            .then_some(())
    });
    assert_eq!(qemu_processes_of(&home), 1, "one test instance runs the step");
    let (status, stdout, stderr, took) = build.interrupt();
    eprintln!("kiln exited {took:?} after SIGINT in the test stage");
    assert_eq!(status.code(), Some(130), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(qemu_processes_of(&home), 0, "the test instance outlived the cancel");
    let left = named_under(home.dir.path(), &[".kiln-assemble-", ".test-vm", ".build-vm", "tmp-"]);
    assert_eq!(left, Vec::<PathBuf>::new(), "temporary folders were left behind");
    let images = home.images();
    let image = images.iter().find(|i| i["name"] == "cancelled-in-test").expect("the image is catalogued");
    assert_eq!(
        (image["state"].as_str(), image["reason"].as_str()),
        (Some("CANCELLED"), Some("cancelled")),
        "{image}"
    );
}

#[test]
fn on_error_shell_opens_a_shell_in_the_failed_step_state() {
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let broken = two_components(dir.path(), "shell", "a", "written-before-failing", true);
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", "-f", broken.to_str().unwrap(), "--no-test", "--on-error", "shell"])
        .env("KILN_HOME", home.dir.path())
        .env("KILN_CACHE_DIR", shared_cache())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"echo \"in-shell: $(cat /etc/kiln-b)\"\nexit\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "the build still fails: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("in-shell: written-before-failing"),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A resource file: one component with the given phases (YAML, indented for `phases:`) on
/// the bookworm parent, and optional extra recipe lines.
fn one_component(dir: &Path, name: &str, phases: &str, recipe_extra: &str) -> PathBuf {
    let file = dir.join(format!("{name}.yml"));
    std::fs::write(
        &file,
        format!(
            r#"components:
  - name: {name}
    semanticVersion: 1.0.0
    data: |
      name: {name}
      schemaVersion: 1.0
      phases:
{phases}
imageRecipe:
  name: {name}
  semanticVersion: 1.0.0
  parentImage: debian-12-x86
  components:
    - componentArn: {name}/1.0.0
{recipe_extra}
infrastructureConfiguration:
  cpus: 2
  memoryMib: 1024
  testTimeoutSeconds: 240
"#
        ),
    )
    .unwrap();
    file
}

/// The build phase (new for every test process, so its layer is new) and nothing else.
fn touch_phase(extra: &str) -> String {
    format!(
        r#"        - name: build
          steps:
            - name: Mark
              action: ExecuteBash
              inputs:
                commands:
                  - echo {} > /etc/kiln-test-mark
{extra}"#,
        nonce()
    )
}

fn qemu_processes_of(home: &Home) -> usize {
    let out = Command::new("pgrep").args(["-f", "qemu-system"]).output().unwrap();
    text(&out.stdout)
        .lines()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{}/cmdline", pid.trim())).ok())
        .filter(|cmd| cmd.contains(home.dir.path().to_str().unwrap()))
        .count()
}

#[test]
fn a_failing_component_test_phase_or_a_missing_root_fails_the_image_with_the_test_named() {
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    // A test phase with a hung step (killed by its timeout) and a failing check.
    let phases = touch_phase(
        r#"        - name: test
          steps:
            - name: Hangs
              action: ExecuteBash
              timeoutSeconds: 5
              onFailure: Continue
              inputs:
                commands: ["sleep 600"]
            - name: MarkIsThere
              action: ExecuteBash
              inputs:
                commands: ["test -s /etc/kiln-test-mark"]
            - name: WrongBanner
              action: ExecuteBash
              inputs:
                commands: ["grep -q 'no such banner' /etc/issue"]"#,
    );
    let file = one_component(dir.path(), "failing-test-phase", &phases, "");
    let (out, o) = home.build(&file, &[]);
    assert_eq!(out.status.code(), Some(1), "{o}\n{}", text(&out.stderr));
    let images = home.images();
    assert_eq!(images[0]["state"], "FAILED", "{}", images[0]);
    let reason = images[0]["reason"].as_str().unwrap();
    assert!(reason.contains("component:failing-test-phase/1.0.0"), "the reason names the test: {reason}");
    assert!(reason.contains("Hangs") && reason.contains("timed out"), "and the hung step: {reason}");
    assert!(!reason.contains("no-failed-units"), "nothing else failed: {reason}");
    let out_dir = PathBuf::from(images[0]["outputLocation"].as_str().unwrap());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("test-report/tests.json")).unwrap()).unwrap();
    let tests = report["tests"].as_array().unwrap();
    let case = tests.iter().find(|t| t["name"] == "component:failing-test-phase/1.0.0").unwrap();
    let output = case["output"].as_str().unwrap();
    // onFailure: Continue carried on after the timeout; the next steps ran in the guest.
    assert!(
        output.contains("test MarkIsThere success") && output.contains("test WrongBanner failed"),
        "{case}"
    );
    assert!(tests.iter().filter(|t| t["status"] == "failed").count() == 1, "{tests:?}");
    assert_eq!(qemu_processes_of(&home), 0, "no test instance is left running");

    // A kernel command line that points at a root that does not exist: the initramfs gives up
    // (after rootdelay) and the image fails on boots-to-multi-user, long before the timeout.
    let started = std::time::Instant::now();
    let file = one_component(
        dir.path(),
        "missing-root",
        &touch_phase(""),
        "  kernelCommandLine: root=PARTUUID=00000000-0000-4000-8000-000000000000 rootdelay=3",
    );
    let (out, o) = home.build(&file, &[]);
    assert_eq!(out.status.code(), Some(1), "{o}\n{}", text(&out.stderr));
    let image = home.images().into_iter().find(|i| i["name"] == "missing-root").unwrap();
    assert_eq!(image["state"], "FAILED");
    let reason = image["reason"].as_str().unwrap();
    assert!(reason.contains("boots-to-multi-user"), "{reason}");
    assert!(reason.contains("root file system") || reason.contains("shell"), "the reason says why: {reason}");
    assert!(started.elapsed() < std::time::Duration::from_secs(240), "it failed fast, not at the timeout");
    assert_eq!(qemu_processes_of(&home), 0);
}

#[test]
fn a_unit_failing_at_boot_or_a_qemu_that_cannot_start_fails_kiln_test() {
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let phases = touch_phase(
        r#"            - name: BrokenUnit
              action: ExecuteBash
              inputs:
                commands:
                  - printf '[Unit]\nDescription=broken on purpose\n[Service]\nType=oneshot\nExecStart=/bin/false\n[Install]\nWantedBy=multi-user.target\n' > /etc/systemd/system/kiln-broken.service
                  - systemctl enable kiln-broken.service
                  - printf 'kernel.kptr_restrict = 2\nkernel.kiln_no_such_key = 1\n' > /etc/sysctl.d/90-kiln-test.conf"#,
    );
    let file = one_component(dir.path(), "broken-unit", &phases, "");
    let out_dir = home.dir.path().join("broken");
    let (out, o) = home.build(&file, &["--no-test", "--out", out_dir.to_str().unwrap()]);
    ok(&out);
    assert_eq!(o["outcome"]["state"], "AVAILABLE");
    let disk = out_dir.join("broken-unit.qcow2");
    let report_dir = home.dir.path().join("report");
    let out = home.kiln(
        &[
            "test",
            disk.to_str().unwrap(),
            "--single-instance",
            "--report",
            report_dir.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_name =
        |n: &str| report["tests"].as_array().unwrap().iter().find(|t| t["name"] == n).cloned().unwrap();
    assert_eq!(by_name("boots-to-multi-user")["status"], "passed", "a degraded system is still up");
    let units = by_name("no-failed-units");
    assert_eq!(units["status"], "failed");
    assert!(units["reason"].as_str().unwrap().contains("kiln-broken.service"), "{units}");
    assert_eq!(by_name("machine-id-unique")["status"], "skipped", "one instance only");
    // The configured sysctl value the kernel took passes; the one it could not take is named.
    let sysctl = by_name("sysctl-settings-in-force");
    assert_eq!(sysctl["status"], "failed", "{sysctl}");
    let why = sysctl["reason"].as_str().unwrap();
    assert!(why.contains("kernel.kiln_no_such_key") && !why.contains("kptr_restrict"), "{sysctl}");
    assert!(
        sysctl["output"].as_str().unwrap().contains("kernel.kptr_restrict: want 2, kernel 2"),
        "{sysctl}"
    );
    let junit = std::fs::read_to_string(report_dir.join("junit.xml")).unwrap();
    assert!(junit.contains("failures=\"2\""), "{junit}");
    assert_eq!(qemu_processes_of(&home), 0);

    // A guest that is not ready within the timeout: the wait ends then, with the reason.
    let started = std::time::Instant::now();
    let out =
        home.kiln(&["test", disk.to_str().unwrap(), "--single-instance", "--timeout", "3", "--json"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let boots = &report["tests"][0];
    assert_eq!(
        (boots["name"].as_str(), boots["status"].as_str()),
        (Some("boots-to-multi-user"), Some("failed"))
    );
    assert!(boots["reason"].as_str().unwrap().contains("within 3 s"), "{boots}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(qemu_processes_of(&home), 0);

    // Firmware QEMU cannot load: a clear reason within seconds, nothing left behind.
    let bogus = dir.path().join("not-firmware.fd");
    std::fs::write(&bogus, b"not firmware").unwrap();
    let vars = ["/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS.fd"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("OVMF is installed");
    let started = std::time::Instant::now();
    let out = home.kiln(
        &[
            "test",
            disk.to_str().unwrap(),
            "--single-instance",
            "--report",
            report_dir.to_str().unwrap(),
            "--json",
        ],
        &[("KILN_OVMF_CODE", bogus.to_str().unwrap()), ("KILN_OVMF_VARS", vars)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let boots = &report["tests"][0];
    assert_eq!(boots["status"], "failed");
    assert!(boots["reason"].as_str().unwrap().contains("QEMU"), "{boots}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(qemu_processes_of(&home), 0);
    let leftovers: Vec<_> =
        std::fs::read_dir(home.dir.path().join("tmp")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "overlays were removed: {leftovers:?}");
}

#[test]
fn the_vm_builder_runs_the_build_phase_in_a_booted_system_with_real_reboots() {
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vm-built.yml");
    std::fs::write(
        &file,
        format!(
            r#"components:
  - name: needs-a-running-system
    semanticVersion: 1.0.0
    data: |
      name: needs-a-running-system
      schemaVersion: 1.0
      phases:
        - name: build
          steps:
            - name: Services
              action: ExecuteBash
              inputs:
                commands:
                  - echo {nonce}
                  - cat /proc/sys/kernel/random/boot_id > /var/tmp/kiln-first-boot
                  - systemctl start systemd-hostnamed
                  - systemctl is-active systemd-hostnamed > /etc/kiln-vm-built
            - name: Restart
              action: Reboot
            - name: AfterReboot
              action: ExecuteBash
              inputs:
                commands:
                  - test "$(cat /proc/sys/kernel/random/boot_id)" != "$(cat /var/tmp/kiln-first-boot)"
                  - cat /proc/sys/kernel/random/boot_id > /etc/kiln-second-boot
        - name: validate
          steps:
            - name: Check
              action: ExecuteBash
              inputs:
                commands:
                  - grep -qx active /etc/kiln-vm-built
                  - test -s /etc/kiln-second-boot
imageRecipe:
  name: vm-built
  semanticVersion: 1.0.0
  parentImage: debian-12-x86
  components:
    - componentArn: needs-a-running-system/1.0.0
infrastructureConfiguration:
  builder: vm
  cpus: 2
  memoryMib: 1024
  testTimeoutSeconds: 240
distributionConfiguration:
  distributions:
    - region: local
      formats: [raw, qcow2]
"#,
            nonce = nonce()
        ),
    )
    .unwrap();
    let out_dir = home.dir.path().join("out");
    let (out, o) = home.build(&file, &["--no-test", "--out", out_dir.to_str().unwrap()]);
    ok(&out);
    assert_eq!(o["outcome"]["state"], "AVAILABLE", "{o}");
    let raw = out_dir.join("vm-built.raw");
    // A service was started and queried in the running system, and the step after the Reboot
    // action ran in a new boot.
    assert_eq!(debugfs_root(&raw, "cat /etc/kiln-vm-built").trim(), "active");
    assert!(!debugfs_root(&raw, "cat /etc/kiln-second-boot").trim().is_empty());
    // Nothing of the build VM is left: no agent unit, an empty machine id.
    let wants = debugfs_root(&raw, "ls /etc/systemd/system/multi-user.target.wants");
    assert!(!wants.contains("kiln-guest-agent"), "{wants}");
    assert!(!debugfs_root(&raw, "ls /etc/systemd/system").contains("kiln-guest-agent"));
    assert!(debugfs_root(&raw, "stat /etc/machine-id").contains("Size: 0"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["components"][0]["builder"], "vm");
    // The same recipe again reuses the VM-built layer.
    let (out, o) = home.build(&file, &["--no-test"]);
    ok(&out);
    assert_eq!(o["outcome"]["layersBuilt"].as_u64(), Some(0), "{o}");
}

#[test]
fn kiln_launch_boots_a_catalogued_image_detached_with_ssh_forwarded_and_records_it() {
    let home = Home::new();
    let example = workspace().join("examples/minimal/minimal.yml");
    let (out, o) = home.build(&example, &["--no-test"]);
    ok(&out);
    assert_eq!(o["outcome"]["state"], "AVAILABLE");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let user_data = dir.path().join("user-data");
    std::fs::write(&user_data, "#cloud-config\nhostname: tried-by-hand\n").unwrap();
    let port_s = port.to_string();
    let out = home.kiln(
        &[
            "launch",
            "minimal/1.0.0",
            "--detach",
            "--ssh-port",
            &port_s,
            "--user-data",
            user_data.to_str().unwrap(),
        ],
        &[],
    );
    ok(&out);
    let stdout = text(&out.stdout);
    let pid: u32 = stdout
        .split("QEMU pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stdout}"));
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg(self.0.to_string()).status();
        }
    }
    let _kill = Kill(pid);
    let console = PathBuf::from(
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("console:  tail -f "))
            .expect("console path")
            .trim(),
    );
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap().replace('\0', " ");
    assert!(cmdline.contains(&format!("hostfwd=tcp:127.0.0.1:{port}-:22")), "{cmdline}");
    assert!(cmdline.contains("seed.img"), "the NoCloud seed is attached: {cmdline}");
    // It keeps running after kiln has exited, boots to a login prompt, and its sshd answers on
    // the forwarded port.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    let mut key = String::new();
    while std::time::Instant::now() < deadline {
        if std::fs::read_to_string(&console).unwrap_or_default().contains("login:") {
            let scan =
                Command::new("ssh-keyscan").args(["-T", "5", "-p", &port_s, "127.0.0.1"]).output().unwrap();
            key = text(&scan.stdout);
            if key.contains("ssh-") {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    assert!(
        key.contains("ssh-ed25519") || key.contains("ssh-rsa"),
        "sshd answered on 127.0.0.1:{port}: {key:?}"
    );
    // The launch is recorded as usage of the image.
    let show = home.kiln(&["image", "show", "minimal/1.0.0", "--json"], &[]);
    ok(&show);
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let usage = shown["usage"].as_array().expect("usage in image show");
    assert_eq!(usage.len(), 1, "{shown}");
    assert_eq!(usage[0]["kind"], "launch");
    assert_eq!(usage[0]["details"]["sshPort"], port);
}

#[test]
fn multi_region_distribution_recovers_verifies_encrypts_and_refuses_tampering() {
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    let (eu, us) = (dir.path().join("eu"), dir.path().join("us"));
    // The example, with its stores moved into this test's folder.
    let example =
        std::fs::read_to_string(workspace().join("examples/multi-region/multi-region.yml")).unwrap();
    let file = dir.path().join("multi-region.yml");
    let component = workspace().join("examples/components/motd-and-admins.yml");
    std::fs::write(
        &file,
        example
            .replace("uri: ../components/motd-and-admins.yml", &format!("uri: {}", component.display()))
            .replace("file:///var/tmp/kiln-stores/eu-store", &format!("file://{}", eu.display()))
            .replace("file:///var/tmp/kiln-stores/us-secure", &format!("file://{}", us.display())),
    )
    .unwrap();
    // The us store is blocked by a file where its folder should be: that region fails, the
    // other completes, and the build says so.
    std::fs::write(&us, b"in the way").unwrap();
    let (out, o) = home.build(&file, &["--no-test"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("distribution failed in us-secure"), "{}", text(&out.stderr));
    let regions = o["outcome"]["regions"].as_array().unwrap();
    assert_eq!(regions[0]["region"], "eu-store");
    assert_eq!(regions[0]["state"], "AVAILABLE");
    assert_eq!(regions[1]["state"], "FAILED");
    assert!(regions[1]["reason"].as_str().unwrap().contains("us"), "{o}");
    let eu_uploaded = regions[0]["uploadedBytes"].as_u64().unwrap();
    assert!(eu_uploaded > 0);

    // Unblocked, `kiln image distribute` completes the failed region only.
    std::fs::remove_file(&us).unwrap();
    let out = home.kiln(&["image", "distribute", "multi-region/1.0.0"], &[]);
    ok(&out);
    let said = text(&out.stdout);
    assert!(said.contains("us-secure AVAILABLE") && !said.contains("eu-store"), "{said}");
    let shown: serde_json::Value =
        serde_json::from_slice(&home.kiln(&["image", "show", "multi-region/1.0.0", "--json"], &[]).stdout)
            .unwrap();
    let states: Vec<(&str, &str)> = shown["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["region"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("eu-store", "AVAILABLE"), ("us-secure", "AVAILABLE")]);

    // Plain chunks carry the image's bytes; encrypted ones do not.
    let banner = b"Authorised use only. Built by kiln.";
    let holds = |store: &Path| {
        walk(&store.join("chunks"))
            .iter()
            .any(|f| std::fs::read(f).unwrap().windows(banner.len()).any(|w| w == banner))
    };
    assert!(holds(&eu), "the banner is in some plaintext chunk");
    assert!(!holds(&us), "an encrypted store holds no plaintext");

    ok(&home.kiln(&["image", "verify", "multi-region/1.0.0"], &[]));
    let pulled = dir.path().join("pulled");
    ok(&home.kiln(
        &["image", "pull", "multi-region/1.0.0", "--region", "us-secure", "--out", pulled.to_str().unwrap()],
        &[],
    ));
    let image_dir = PathBuf::from(shown["image"]["outputLocation"].as_str().unwrap());
    assert_eq!(
        std::fs::read(pulled.join("multi-region.qcow2")).unwrap(),
        std::fs::read(image_dir.join("multi-region.qcow2")).unwrap()
    );

    // One flipped byte in the eu store: verify and pull refuse, naming the chunk.
    let chunk = walk(&eu.join("chunks")).into_iter().next().unwrap();
    let mut data = std::fs::read(&chunk).unwrap();
    data[10] ^= 0x55;
    std::fs::write(&chunk, &data).unwrap();
    let out = home.kiln(&["image", "verify", "multi-region/1.0.0", "--region", "eu-store"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("was altered"), "{}", text(&out.stdout));
    let out = home.kiln(
        &[
            "image",
            "pull",
            "multi-region/1.0.0",
            "--region",
            "eu-store",
            "--out",
            dir.path().join("p2").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!dir.path().join("p2/multi-region.qcow2").exists());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// The rules of an OpenSCAP report with a given status.
fn scap_rules(report: &serde_json::Value, status: &str) -> Vec<String> {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["source"] == "openscap" && r["status"] == status)
        .map(|r| {
            r["id"].as_str().unwrap().trim_start_matches("xccdf_org.ssgproject.content_rule_").to_string()
        })
        .collect()
}

#[test]
fn openscap_runs_inside_a_test_instance_where_offline_probes_cannot_answer() {
    let home = Home::new();
    let dir = tempfile::tempdir().unwrap();
    // A plain bullseye (the release the installed SCAP Security Guide content covers) with a
    // separate /tmp, which only a running system shows as a mounted partition.
    let layout = "  diskLayout:\n    partitions:\n      - mountPoint: /tmp\n        sizeMib: 256\n";
    let file = one_component(dir.path(), "plain-bullseye", &touch_phase(""), layout);
    let text_of = std::fs::read_to_string(&file).unwrap().replace("debian-12-x86", "debian-11-x86");
    std::fs::write(&file, text_of).unwrap();
    let out_dir = dir.path().join("out");
    let (out, o) = home.build(&file, &["--no-test", "--out", out_dir.to_str().unwrap()]);
    ok(&out);
    assert_eq!(o["outcome"]["state"], "AVAILABLE", "{o}");
    let disk = std::fs::read_dir(&out_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "qcow2" || x == "raw"))
        .expect("the image's disk");
    let before = std::fs::read(&disk).unwrap();

    let evaluate = |extra: &[&str]| {
        let mut args =
            vec!["compliance", "plain-bullseye/1.0.0", "--profile", "standard", "--format", "json"];
        args.extend_from_slice(extra);
        let out = home.kiln(&args, &[]);
        ok(&out);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let offline = evaluate(&[]);
    let guest = evaluate(&["--in-guest"]);
    assert!(
        guest["profiles"][0]["datastream"].as_str().unwrap().ends_with("(in a booted test instance)"),
        "{}",
        guest["profiles"]
    );
    // Offline, OpenSCAP sees a tree with nothing mounted; in the running guest /tmp is its own
    // partition. Every rule has a result there.
    let tmp = "partition_for_tmp".to_string();
    assert!(scap_rules(&offline, "fail").contains(&tmp), "{:?}", scap_rules(&offline, "fail"));
    assert!(scap_rules(&guest, "pass").contains(&tmp), "{:?}", scap_rules(&guest, "fail"));
    assert_eq!(scap_rules(&guest, "error"), Vec::<String>::new());
    // The same rules were evaluated both ways, and a plain image fails some of them.
    assert_eq!(offline["results"].as_array().unwrap().len(), guest["results"].as_array().unwrap().len());
    assert!(!scap_rules(&guest, "fail").is_empty());
    assert!(!scap_rules(&guest, "pass").is_empty());
    // The guest wrote only to its overlay: the image is unchanged and no VM is left.
    assert!(std::fs::read(&disk).unwrap() == before, "the image was changed");
    assert_eq!(qemu_processes_of(&home), 0);
}
