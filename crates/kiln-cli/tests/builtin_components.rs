//! kiln's built-in components: the list the CLI prints, the reserved prefix, the examples that
//! use them, and (heavy: root, the Debian test root and the package mirror) their build and
//! validate phases run in a bookworm root with their effects checked file by file.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{debian_root, kiln, text, workspace};

/// The document of built-in `name`, as `kiln component builtin NAME` prints it, in `dir`.
fn builtin_doc(dir: &Path, name: &str) -> PathBuf {
    let out = kiln(&["component", "builtin", name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = dir.join(format!("{name}.yml"));
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

/// `kiln component run DOC --root ROOT --phases build,validate --network host` with params;
/// returns the report.
fn run_phases(doc: &Path, root: &Path, params: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut args = vec![
        "component",
        "run",
        doc.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--phases",
        "build,validate",
        "--network",
        "host",
        "--report",
        report.to_str().unwrap(),
    ];
    for p in params {
        args.extend(["--param", p]);
    }
    let out = kiln(&args);
    let json: serde_json::Value =
        std::fs::read(&report).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    assert!(out.status.success(), "{} failed:\n{}\n{}", doc.display(), text(&out.stdout), text(&out.stderr));
    assert_eq!(json["status"], "success", "{json}");
    json
}

/// A bookworm root with what a kiln Debian parent has and the test root lacks: systemd (for
/// `systemctl enable`) and the OpenSSH server; and a System.map as a kernel package leaves it.
fn bootable_like_root() -> tempfile::TempDir {
    let root = debian_root();
    let dir = tempfile::tempdir().unwrap();
    let setup = dir.path().join("setup.yml");
    std::fs::write(
        &setup,
        "name: setup\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Install\n        action: ExecuteBash\n        inputs:\n          commands:\n            - export DEBIAN_FRONTEND=noninteractive\n            - apt-get update -q\n            - apt-get install -y -q --no-install-recommends systemd systemd-sysv openssh-server\n",
    )
    .unwrap();
    let out = kiln(&[
        "component",
        "run",
        setup.to_str().unwrap(),
        "--root",
        root.path().to_str().unwrap(),
        "--network",
        "host",
    ]);
    assert!(out.status.success(), "setup: {}\n{}", text(&out.stdout), text(&out.stderr));
    let map = root.path().join("boot/System.map-6.1.0-test-amd64");
    std::fs::create_dir_all(map.parent().unwrap()).unwrap();
    std::fs::write(&map, "ffffffff81000000 T _text\n").unwrap();
    std::fs::set_permissions(&map, std::fs::Permissions::from_mode(0o644)).unwrap();
    root
}

/// `sshd -T` of the root, run in the sandbox with a throw-away host key.
fn sshd_effective(root: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("sshd-t.yml");
    std::fs::write(
        &doc,
        "name: sshd-t\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: T\n        action: ExecuteBash\n        inputs:\n          commands:\n            - mkdir -p /run/sshd && ssh-keygen -q -t ed25519 -N '' -f /tmp/k\n            - /usr/sbin/sshd -T -h /tmp/k\n",
    )
    .unwrap();
    let out = kiln(&[
        "component",
        "run",
        doc.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--phases",
        "build",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["documents"][0]["phases"][0]["steps"][0]["stdout"]["text"].as_str().unwrap().to_string()
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Whether the unit link `rel` exists (its target is absolute, so only inside the root).
fn enabled(root: &Path, rel: impl AsRef<Path>) -> bool {
    std::fs::symlink_metadata(root.join(rel)).is_ok_and(|m| m.file_type().is_symlink())
}

fn mode(root: &Path, rel: &str) -> u32 {
    std::fs::metadata(root.join(rel)).unwrap().permissions().mode() & 0o7777
}

#[test]
fn the_cli_lists_every_builtin_with_version_and_parameters() {
    let out = kiln(&["component", "builtin", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for want in [
        "kiln-update-linux",
        "kiln-hardening-cis",
        "kiln-hardening-anssi",
        "kiln-ssh-hardening",
        "kiln-firewall",
        "kiln-audit",
        "kiln-logging",
        "kiln-time-sync",
        "kiln-file-integrity",
        "kiln-unattended-upgrades",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let cis = list.as_array().unwrap().iter().find(|c| c["name"] == "kiln-hardening-cis").unwrap();
    assert_eq!(cis["version"], "1.0.1");
    assert_eq!(cis["phases"], serde_json::json!(["build", "validate", "test"]));
    let level = cis["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "Level").unwrap();
    assert_eq!(level["default"], "1");
    assert_eq!(level["allowedValues"], serde_json::json!(["1", "2"]));

    let human = text(&kiln(&["component", "builtin"]).stdout);
    assert!(human.contains("kiln-firewall 1.0.1") && human.contains("AllowedTcpPorts = \"22\""), "{human}");

    // Each printed document validates as a file, as a user would save and run it.
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<PathBuf> = names.iter().map(|n| builtin_doc(dir.path(), n)).collect();
    let mut args = vec!["component", "validate"];
    args.extend(docs.iter().map(|d| d.to_str().unwrap()));
    let out = kiln(&args);
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));

    let out = kiln(&["component", "builtin", "kiln-nonesuch"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("kiln-hardening-anssi"), "{}", text(&out.stderr));
}

#[test]
fn a_resource_file_may_not_define_a_kiln_component() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.yml");
    std::fs::write(
        &file,
        r#"components:
  - name: kiln-firewall
    semanticVersion: 9.0.0
    data: |
      name: kiln-firewall
      schemaVersion: 1.0
      phases:
        - name: build
          steps:
            - name: Open
              action: ExecuteBash
              inputs:
                commands: ["nft flush ruleset"]
imageRecipe:
  name: sneaky
  semanticVersion: 1.0.0
  parentImage: debian-12-x86
  components:
    - componentArn: kiln-firewall/9.0.0
infrastructureConfiguration:
  name: local
  instanceProfileName: kiln
distributionConfiguration:
  name: local
  distributions:
    - region: local
      formats: [qcow2]
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", "-f", file.to_str().unwrap(), "--no-test"])
        .env("KILN_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("`kiln-firewall`") && err.contains("reserved"), "{err}");
    // Nothing of it reached the catalogue: the name still resolves to kiln's own document.
    let kiln_home = kiln_build::Kiln::open(home.path()).unwrap();
    let versions = kiln_home.block_on(kiln_home.store().component_versions("kiln-firewall")).unwrap();
    assert!(versions.iter().all(|v| v.to_string() != "9.0.0"), "{versions:?}");
}

#[test]
fn the_examples_use_existing_builtins_and_their_own_public_key() {
    for (example, parent, hardening) in [
        ("bullseye-anssi", "debian-11-x86", "kiln-hardening-anssi"),
        ("bookworm-cis", "debian-12-x86", "kiln-hardening-cis"),
    ] {
        let dir = workspace().join("examples").join(example);
        let path = dir.join(format!("{example}.yml"));
        let file = kiln_model::load_resource_file(&path).unwrap_or_else(|d| panic!("{example}: {d:?}"));
        let recipe = &file.image_recipe;
        assert_eq!(recipe.parent_image, parent);
        assert_eq!(
            file.infrastructure_configuration.network,
            kiln_model::NetworkPolicy::Host,
            "{example} installs packages"
        );
        let names: Vec<&str> =
            recipe.components.iter().map(|c| c.component_arn.split('/').next().unwrap()).collect();
        assert!(names.contains(&hardening), "{example}: {names:?}");
        for n in names.iter().filter(|n| n.starts_with("kiln-")) {
            assert!(kiln_build::builtin::find(n).is_some(), "{example} names unknown built-in {n}");
        }
        assert_eq!(names.last(), Some(&"kiln-file-integrity"), "AIDE's baseline comes last");
        let key = std::fs::read_to_string(dir.join("admin.pub")).unwrap();
        let given = recipe
            .components
            .iter()
            .flat_map(|c| &c.parameters)
            .find(|p| p.name == "SshPublicKey")
            .map(|p| p.value.join(","))
            .unwrap();
        assert_eq!(given, key.trim(), "{example}: the recipe's key is admin.pub");
        let layout = recipe.disk_layout.as_ref().expect("separate partitions");
        for mp in ["/tmp", "/var/log", "/var/log/audit", "/home"] {
            let p = layout.partitions.iter().find(|p| p.mount_point == mp).unwrap_or_else(|| panic!("{mp}"));
            for o in ["nodev", "nosuid"] {
                assert!(p.mount_options.iter().any(|m| m == o), "{example} {mp} lacks {o}");
            }
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("BEGIN OPENSSH PRIVATE KEY"));
        assert!(!dir.join("admin").exists(), "no private key beside the example");
    }
}

#[test]
fn anssi_ssh_and_firewall_configure_a_bookworm_root() {
    let root = bootable_like_root();
    let r = root.path();
    let docs = tempfile::tempdir().unwrap();
    run_phases(&builtin_doc(docs.path(), "kiln-ssh-hardening"), r, &[]);
    let report = run_phases(&builtin_doc(docs.path(), "kiln-hardening-anssi"), r, &["Level=intermediary"]);
    let validate = &report["documents"][0]["phases"][1]["steps"];
    assert!(validate.as_array().unwrap().iter().all(|s| s["status"] == "success"), "{validate}");
    run_phases(&builtin_doc(docs.path(), "kiln-firewall"), r, &["AllowedTcpPorts=22,8080-8081"]);

    let sysctl = read(r, "etc/sysctl.d/90-kiln-hardening-anssi.conf");
    for line in [
        "kernel.randomize_va_space = 2",
        "fs.suid_dumpable = 0",
        "kernel.yama.ptrace_scope = 1",
        "net.ipv4.conf.all.accept_redirects = 0",
        "net.ipv4.ip_forward = 0",
    ] {
        assert!(sysctl.lines().any(|l| l == line), "{line} missing:\n{sysctl}");
    }
    // A package's contradicting value is shadowed by a copy in /etc with the line disabled.
    let links = read(r, "etc/sysctl.d/99-protect-links.conf");
    assert!(links.contains("# (kiln-hardening-anssi) fs.protected_fifos = 1"), "{links}");
    let modprobe = read(r, "etc/modprobe.d/kiln-hardening-anssi.conf");
    for m in ["cramfs", "freevxfs", "hfsplus", "udf"] {
        assert!(modprobe.contains(&format!("install {m} /bin/false\nblacklist {m}\n")), "{modprobe}");
    }
    assert!(!modprobe.contains("sctp"), "protocols only at the enhanced level");
    assert_eq!(mode(r, "boot/System.map-6.1.0-test-amd64"), 0o600);
    assert_eq!(mode(r, "etc/shadow"), 0o640);
    assert_eq!(mode(r, "etc/ssh/sshd_config"), 0o600);
    assert!(read(r, "etc/login.defs").lines().any(|l| l == "UMASK\t027"));
    assert_eq!(read(r, "etc/cron.allow"), "root\n");
    assert!(!r.join("etc/cron.deny").exists());
    assert!(read(r, "etc/issue.net").starts_with("Authorised use only."));
    assert!(read(r, "etc/pam.d/common-password").contains("pam_pwquality.so"));
    assert!(enabled(r, "etc/systemd/system/local-fs.target.wants/kiln-dev-shm-options.service"));

    let sshd = sshd_effective(r);
    for want in [
        "permitrootlogin no",
        "passwordauthentication no",
        "permitemptypasswords no",
        "clientaliveinterval 300",
        "clientalivecountmax 0",
        "loglevel VERBOSE",
        "x11forwarding no",
    ] {
        assert!(sshd.lines().any(|l| l == want), "sshd -T lacks {want}:\n{sshd}");
    }
    assert!(sshd.lines().any(|l| l.starts_with("ciphers chacha20-poly1305@openssh.com,")), "{sshd}");
    assert!(!sshd.contains("3des") && !sshd.contains("hmac-sha1"), "{sshd}");
    // OpenSCAP reads sshd_config itself: one active line per setting, in the main file.
    let config = read(r, "etc/ssh/sshd_config");
    assert_eq!(config.lines().filter(|l| l.starts_with("ClientAliveCountMax")).count(), 1, "{config}");

    let nft = read(r, "etc/nftables.conf");
    assert!(nft.contains("type filter hook input priority 0; policy drop;"), "{nft}");
    assert!(nft.contains("type filter hook forward priority 0; policy drop;"), "{nft}");
    assert!(nft.contains("tcp dport { 22, 8080-8081 } accept"), "{nft}");
    assert!(enabled(r, "etc/systemd/system/sysinit.target.wants/nftables.service"));

    // A second run changes nothing it should not: one managed block, the same sysctl file.
    run_phases(&builtin_doc(docs.path(), "kiln-hardening-anssi"), r, &["Level=intermediary"]);
    let again = read(r, "etc/ssh/sshd_config");
    assert_eq!(again.matches("# BEGIN kiln-hardening-anssi").count(), 1);
    assert_eq!(read(r, "etc/sysctl.d/90-kiln-hardening-anssi.conf"), sysctl);
}

#[test]
fn cis_audit_logging_and_time_sync_configure_a_bookworm_root() {
    let root = bootable_like_root();
    let r = root.path();
    let docs = tempfile::tempdir().unwrap();
    run_phases(&builtin_doc(docs.path(), "kiln-hardening-cis"), r, &["Level=2", "KeepModules=usb-storage"]);
    run_phases(&builtin_doc(docs.path(), "kiln-audit"), r, &["Profile=cis"]);
    run_phases(&builtin_doc(docs.path(), "kiln-logging"), r, &[]);
    run_phases(
        &builtin_doc(docs.path(), "kiln-time-sync"),
        r,
        &["Daemon=chrony", "Servers=ntp1.example,ntp2.example"],
    );

    let sysctl = read(r, "etc/sysctl.d/90-kiln-hardening-cis.conf");
    assert!(sysctl.lines().any(|l| l == "net.ipv4.conf.all.send_redirects = 0"), "{sysctl}");
    let modprobe = read(r, "etc/modprobe.d/kiln-hardening-cis.conf");
    assert!(
        modprobe.contains("install sctp /bin/false") && modprobe.contains("install squashfs /bin/false"),
        "Level 2"
    );
    assert!(!modprobe.contains("usb-storage"), "KeepModules keeps it loadable: {modprobe}");
    let pam_auth = read(r, "etc/pam.d/common-auth");
    assert!(
        pam_auth.contains("pam_faillock.so preauth") && pam_auth.contains("pam_faillock.so authfail"),
        "{pam_auth}"
    );
    assert!(read(r, "etc/pam.d/common-password").contains("pam_pwhistory.so remember=24"));
    assert!(read(r, "etc/pam.d/su").contains("pam_wheel.so use_uid group=sugroup"));
    assert!(read(r, "etc/profile.d/kiln-cis.sh").contains("readonly TMOUT"));
    assert_eq!(mode(r, "etc/crontab"), 0o600);
    assert_eq!(mode(r, "etc/cron.d"), 0o700);

    let rules = read(r, "etc/audit/audit.rules");
    for key in ["-k identity", "-k time-change", "-k perm_mod", "-k privileged", "-k scope"] {
        assert!(rules.contains(key), "{key} missing");
    }
    assert!(rules.contains("-F path=/usr/bin/sudo -F perm=x"), "setuid programs are audited");
    assert_eq!(rules.lines().rfind(|l| l.starts_with("-e")), Some("-e 2"));
    assert!(read(r, "etc/audit/auditd.conf").lines().any(|l| l == "max_log_file_action = ROTATE"));

    assert!(read(r, "etc/systemd/journald.conf.d/60-kiln.conf").contains("Storage=persistent"));
    let tmpfiles = read(r, "etc/tmpfiles.d/kiln-rsyslog.conf");
    assert!(tmpfiles.lines().any(|l| l == "f /var/log/auth.log 0640 root adm -"), "{tmpfiles}");
    let logrotate = read(r, "etc/logrotate.conf");
    assert!(logrotate.lines().any(|l| l == "daily") && !logrotate.lines().any(|l| l.trim() == "weekly"));

    let sources = read(r, "etc/chrony/sources.d/kiln.sources");
    assert_eq!(sources, "server ntp1.example iburst\nserver ntp2.example iburst\n");
    assert!(enabled(r, "etc/systemd/system/multi-user.target.wants/chrony.service"));
    for unit in ["auditd", "rsyslog", "cron"] {
        assert!(enabled(r, format!("etc/systemd/system/multi-user.target.wants/{unit}.service")), "{unit}");
    }
}
