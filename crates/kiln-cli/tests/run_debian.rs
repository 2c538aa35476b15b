//! `kiln component run` end to end: real documents run in a real Debian root inside the
//! sandbox. Heavy: needs root and the cached Debian bootstrap (see tests/common).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{debian_root, kiln, shared, text, workspace};

fn run(doc: &Path, root: &Path, extra: &[&str]) -> (std::process::Output, serde_json::Value) {
    let report_dir = tempfile::tempdir().expect("tempdir");
    let report = report_dir.path().join("report.json");
    let mut args = vec![
        "component",
        "run",
        doc.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = kiln(&args);
    let json = std::fs::read(&report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    (out, json)
}

/// The documents SOURCES.md marks as able to run offline in a Debian 12 root.
fn offline_examples() -> Vec<String> {
    let sources = std::fs::read_to_string(shared().join("examples/awstoe/SOURCES.md")).expect("SOURCES.md");
    let mut names = Vec::new();
    for line in sources.lines().filter(|l| l.starts_with("| ") && l.contains(".yml")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | file | repo | path | commit | licence | actions | runs-offline | notes |
        if cells.len() > 7 && cells[7].starts_with("yes") {
            names.push(cells[1].to_string());
        }
    }
    names
}

#[test]
fn every_offline_example_runs_in_debian() {
    let names = offline_examples();
    assert!(names.len() >= 6, "SOURCES.md lists fewer offline documents than expected: {names:?}");
    let root = debian_root();
    for name in &names {
        let doc = shared().join("examples/awstoe").join(name);
        let (out, report) = run(&doc, root.path(), &["--phases", "build,validate,test"]);
        assert!(out.status.success(), "{name} failed:\n{}\n{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(report["status"], "success", "{name}: {report}");
        let steps: usize = report["documents"][0]["phases"]
            .as_array()
            .expect("phases")
            .iter()
            .map(|p| p["steps"].as_array().map_or(0, Vec::len))
            .sum();
        assert!(steps > 0, "{name} ran no step");
    }
}

#[test]
fn reboot_exit_194_reruns_the_step_after_a_fresh_session() {
    let root = debian_root();
    let doc = shared().join("examples/awstoe/reboot-exit-194.yml");
    let (out, report) = run(&doc, root.path(), &["--phases", "build"]);
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let steps = report["documents"][0]["phases"][0]["steps"].as_array().expect("steps").clone();
    // The step ran twice: once exiting 194, once after the "reboot".
    assert_eq!(steps.len(), 2, "{steps:#?}");
    assert_eq!(steps[0]["reboots"], 1);
    assert_eq!(steps[1]["status"], "success");
}

#[test]
fn main_job_example_changes_the_root_as_documented() {
    let root = debian_root();
    let doc = workspace().join("examples/components/motd-and-admins.yml");
    let (out, report) =
        run(&doc, root.path(), &["--param", "Admins=carol,dave", "--param", "Banner=Keep out"]);
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(report["status"], "success");
    let r = root.path();
    assert_eq!(std::fs::read_to_string(r.join("etc/issue.net")).unwrap(), "Keep out");
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("carol:")) && passwd.lines().any(|l| l.starts_with("dave:"))
    );
    let group = std::fs::read_to_string(r.join("etc/group")).unwrap();
    let admins = group.lines().find(|l| l.starts_with("kiln-admins:")).expect("group created");
    assert!(admins.ends_with("carol,dave"), "{admins}");
    let sudoers = std::fs::metadata(r.join("etc/sudoers.d/kiln-admins")).unwrap();
    assert_eq!(sudoers.permissions().mode() & 0o7777, 0o440);
    assert_eq!(sudoers.uid(), 0);
}

#[test]
fn a_failing_step_fails_the_run_with_exit_1_and_names_the_step() {
    let root = debian_root();
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("fails.yml");
    std::fs::write(
        &doc,
        r#"name: fails
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: Works
        action: ExecuteBash
        inputs:
          commands: ["echo fine"]
      - name: Breaks
        action: ExecuteBash
        inputs:
          commands: ["echo about to fail >&2", "exit 7"]
      - name: NeverRuns
        action: ExecuteBash
        inputs:
          commands: ["touch /never"]
"#,
    )
    .unwrap();
    let (out, report) = run(&doc, root.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(report["status"], "failed");
    let steps = &report["documents"][0]["phases"][0]["steps"];
    assert_eq!(steps[1]["status"], "failed");
    assert_eq!(steps[1]["exitCode"], 7);
    assert!(steps[1]["stderr"]["text"].as_str().unwrap().contains("about to fail"));
    assert_eq!(steps[2]["status"], "skipped");
    assert!(!root.path().join("never").exists());
    assert!(report["failureMessage"].as_str().unwrap().contains("Breaks"));
}

#[test]
fn planted_symlinks_never_lead_a_write_out_of_the_root() {
    let root = debian_root();
    let host =
        tempfile::Builder::new().prefix("kiln-host-side-").tempdir_in(workspace().join("target")).unwrap();
    let r = root.path();
    std::os::unix::fs::symlink(host.path(), r.join("etc/escape-abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../..", r.join("etc/escape-rel")).unwrap();
    let host_rel = host.path().strip_prefix("/").unwrap().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("escape.yml");
    std::fs::write(
        &doc,
        format!(
            r#"name: escape
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: ThroughAbsolute
        action: CreateFile
        onFailure: Continue
        inputs:
          - path: /etc/escape-abs/pwned-abs
            content: x
      - name: ThroughRelative
        action: CreateFile
        onFailure: Continue
        inputs:
          - path: /etc/escape-rel/{host_rel}/pwned-rel
            content: x
      - name: FolderThroughAbsolute
        action: CreateFolder
        onFailure: Continue
        inputs:
          - path: /etc/escape-abs/pwned-dir
      - name: ShellThroughAbsolute
        action: ExecuteBash
        onFailure: Continue
        inputs:
          commands: ["mkdir -p /etc/escape-abs && echo x > /etc/escape-abs/pwned-sh"]
"#
        ),
    )
    .unwrap();
    let _ = run(&doc, r, &[]);
    let left: Vec<_> = std::fs::read_dir(host.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "files escaped the root onto the host: {left:?}");
}

#[test]
fn engine_semantics_hold_in_the_real_sandbox() {
    let root = debian_root();
    let r = root.path();
    std::fs::create_dir_all(r.join("opt/docs")).unwrap();
    std::fs::write(
        r.join("opt/docs/child.yml"),
        r#"name: child
schemaVersion: 1.0
parameters:
  - Word:
      type: string
phases:
  - name: build
    steps:
      - name: Write
        action: ExecuteBash
        inputs:
          commands: ["echo {{ Word }} > /opt/child-ran"]
"#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("semantics.yml");
    std::fs::write(
        &doc,
        r#"name: semantics
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: Flaky
        action: ExecuteBash
        maxAttempts: 3
        inputs:
          commands:
            - n=$(cat /opt/count 2>/dev/null || echo 0); echo $((n+1)) > /opt/count
            - test "$(cat /opt/count)" -ge 3
      - name: Ignored
        action: ExecuteBash
        onFailure: Ignore
        inputs:
          commands: ["exit 3"]
      - name: NotThisTime
        action: ExecuteBash
        if:
          stringEquals: "yes"
          value: "no"
        inputs:
          commands: ["touch /opt/should-not-exist"]
      - name: Odd
        action: ExecuteBash
        loop:
          name: odd
          for:
            start: 1
            end: 5
            updateBy: 2
        inputs:
          commands: ["echo {{ odd.value }} >> /opt/odd"]
      - name: Child
        action: ExecuteDocument
        inputs:
          document: docs/child.yml
          parameters:
            - name: Word
              value: nested
      - name: TooSlow
        action: ExecuteBash
        timeoutSeconds: 2
        onFailure: Continue
        inputs:
          commands: ["sleep 60"]
      - name: StillRuns
        action: ExecuteBash
        inputs:
          commands: ["touch /opt/still-ran"]
"#,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (out, report) = run(&doc, r, &["--working-dir", "/opt"]);
    assert!(started.elapsed().as_secs() < 40, "the 2 s timeout did not stop `sleep 60`");
    assert_eq!(out.status.code(), Some(1), "Continue after a failure still fails the run");
    let steps = report["documents"][0]["phases"][0]["steps"].as_array().expect("steps").clone();
    let by_name = |n: &str| steps.iter().filter(|s| s["name"] == n).cloned().collect::<Vec<_>>();
    assert_eq!(by_name("Flaky")[0]["status"], "success");
    assert_eq!(by_name("Flaky")[0]["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(by_name("Ignored")[0]["status"], "ignored");
    assert_eq!(by_name("NotThisTime")[0]["status"], "skipped");
    assert!(!r.join("opt/should-not-exist").exists());
    assert_eq!(by_name("Odd").len(), 3);
    assert_eq!(std::fs::read_to_string(r.join("opt/odd")).unwrap(), "1\n3\n5\n");
    assert_eq!(std::fs::read_to_string(r.join("opt/child-ran")).unwrap(), "nested\n");
    let slow = &by_name("TooSlow")[0];
    assert_eq!(slow["status"], "failed");
    assert_eq!(slow["attempts"][0]["timedOut"], true);
    assert_eq!(by_name("StillRuns")[0]["status"], "success");
    assert!(r.join("opt/still-ran").exists());
    // The nested document's report follows its parent's.
    assert_eq!(report["documents"][1]["name"], "child");
    assert_eq!(report["documents"][1]["status"], "success");
}
