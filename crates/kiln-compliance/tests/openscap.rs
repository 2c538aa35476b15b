//! OpenSCAP for real: `oscap-chroot` with the SCAP Security Guide's `standard` profile on a
//! small bullseye-like tree, merged with kiln's own rules, and a symlink planted in the image
//! that must not let OpenSCAP read the host. Needs root (OpenSCAP runs in a private mount
//! namespace) and `scripts/install-deps.sh --test` (openscap-scanner, openscap-utils,
//! ssg-debian with Debian 11 content).

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use kiln_compliance::policy::PlanOptions;
use kiln_compliance::scap::{CONTENT_DIR, INSTALL};
use kiln_compliance::{ComplianceError, Gate, Plan, Source, Status, evaluate};

fn put(root: &Path, path: &str, content: &str, mode: u32) {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A minimal tree OpenSCAP takes for Debian 11.
fn bullseye_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    put(
        r,
        "etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 11 (bullseye)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"11\"\nVERSION=\"11 (bullseye)\"\nVERSION_CODENAME=bullseye\nID=debian\n",
        0o644,
    );
    put(r, "etc/debian_version", "11.9\n", 0o644);
    put(r, "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n", 0o644);
    put(r, "etc/group", "root:x:0:\nshadow:x:42:\n", 0o644);
    put(r, "etc/shadow", "root:*:19000:0:99999:7:::\n", 0o640);
    put(r, "etc/gshadow", "root:*::\n", 0o640);
    put(r, "var/lib/dpkg/status", "Package: bash\nStatus: install ok installed\nVersion: 5.1-2\n\n", 0o644);
    dir
}

fn content_dir() -> PathBuf {
    let dir = PathBuf::from(CONTENT_DIR);
    assert!(
        dir.join("ssg-debian11-ds.xml").is_file(),
        "the SCAP Security Guide's Debian 11 content is missing: run scripts/install-deps.sh --test ({INSTALL})"
    );
    dir
}

fn plan(profiles: &[&str]) -> Plan {
    let opts = PlanOptions { base_dir: PathBuf::from("."), scap_content: content_dir() };
    let names: Vec<String> = profiles.iter().map(|s| s.to_string()).collect();
    Plan::new(&names, &[], Gate::default(), &opts).unwrap_or_else(|e| panic!("{e}"))
}

const ASLR: &str = "xccdf_org.ssgproject.content_rule_sysctl_kernel_randomize_va_space";

#[test]
fn the_standard_profile_runs_offline_and_merges_with_kiln_rules() {
    let tree = bullseye_tree();
    put(tree.path(), "etc/sysctl.d/60-hardening.conf", "kernel.randomize_va_space = 2\n", 0o644);
    let report = evaluate(tree.path(), "bullseye-tree", &plan(&["cis-level1", "standard"])).unwrap();
    let scap: Vec<_> = report.results.iter().filter(|r| r.source == Source::Openscap).collect();
    let kiln: Vec<_> = report.results.iter().filter(|r| r.source == Source::Kiln).collect();
    assert!(scap.len() > 20, "OpenSCAP's standard profile gave {} results", scap.len());
    assert!(kiln.len() >= 40);
    assert_eq!(report.profiles.len(), 2);
    assert_eq!(report.profiles[1].id, "xccdf_org.ssgproject.content_profile_standard");
    assert!(report.profiles[1].datastream.as_deref().unwrap().ends_with("ssg-debian11-ds.xml"));
    // The same setting, read by both: OpenSCAP from the tree, kiln with its own reader.
    let aslr = scap.iter().find(|r| r.id == ASLR).expect("the ASLR rule");
    assert_eq!(aslr.status, Status::Pass, "{aslr:?}");
    let kiln_aslr = kiln.iter().find(|r| r.id == "cis-1.5.3-aslr-enabled").unwrap();
    assert_eq!(kiln_aslr.status, Status::Pass);
    assert!(scap.iter().any(|r| r.status == Status::Fail), "a bare tree fails some of `standard`");
    assert!(scap.iter().all(|r| !r.title.is_empty() && !r.title.starts_with("xccdf_")));
}

#[test]
fn a_planted_symlink_does_not_let_openscap_read_the_host() {
    // The image's /etc/sysctl.d points at a host directory that sets ASLR. oscap-chroot alone
    // follows it (it prefixes paths, it does not chroot); in kiln's namespace it finds nothing.
    let host = tempfile::tempdir().unwrap();
    put(host.path(), "60-host.conf", "kernel.randomize_va_space = 2\n", 0o644);
    let tree = bullseye_tree();
    symlink(host.path(), tree.path().join("etc/sysctl.d")).unwrap();
    let report = evaluate(tree.path(), "hostile", &plan(&["standard"])).unwrap();
    let aslr = report.results.iter().find(|r| r.id == ASLR).unwrap();
    assert_eq!(aslr.status, Status::Fail, "the host's sysctl.d was read: {aslr:?}");
}

#[test]
fn a_release_without_content_is_a_clear_error() {
    let tree = bullseye_tree();
    put(tree.path(), "etc/os-release", "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n", 0o644);
    let e = evaluate(tree.path(), "bookworm", &plan(&["standard"])).unwrap_err();
    assert!(matches!(e, ComplianceError::Scap(_)));
    let e = e.to_string();
    assert!(e.contains("no SCAP Security Guide content for Debian 12 (bookworm)"), "{e}");
    assert!(e.contains("Debian 11") && e.contains("apt-get install -y ssg-debian"), "{e}");
}
