//! The built-in tests, run against a booted instance (and a second one, for what must differ
//! between instances of one image).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kiln_host::{ExecRequest, ExitStatus, Host};

use crate::instance::{Instance, InstanceConfig, KeptInstance};
use crate::report::{TestCase, TestReport, ms};

/// The built-in tests, in the order they run.
pub const BUILTIN_TESTS: &[&str] = &[
    "boots-to-multi-user",
    "no-failed-units",
    "sysctl-settings-in-force",
    "firewall-rules-loaded",
    "auditd-running",
    "survives-reboot",
    "machine-id-unique",
    "ssh-host-keys-unique",
];

/// Runs extra tests (the components' test phases) on the booted instance.
pub type ExtraTests<'a> = &'a mut dyn FnMut(&dyn Host) -> Vec<TestCase>;

/// How to test an image.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// The first instance; the second one uses the same settings in a sibling folder.
    pub instance: InstanceConfig,
    /// The image's name in the report.
    pub target: String,
    /// Boot a second instance to check that host keys and machine ids differ.
    pub second_instance: bool,
    /// Leave the first instance running when a test fails.
    pub keep_on_failure: bool,
    /// Stop at the first failed test, skipping the rest (a build's image is FAILED by then
    /// anyway; `kiln test` runs everything).
    pub fail_fast: bool,
}

/// The report, and the instance left running when asked to keep a failed one.
#[derive(Debug)]
pub struct SuiteOutcome {
    pub report: TestReport,
    pub kept: Option<KeptInstance>,
    /// The first instance's console, saved before the instance went away.
    pub console: String,
}

struct Out {
    stdout: String,
    stderr: String,
}

impl Out {
    fn text(&self) -> String {
        let mut s = self.stdout.clone();
        if !self.stderr.trim().is_empty() {
            s.push_str(&self.stderr);
        }
        s
    }
}

fn sh(host: &dyn Host, script: &str, timeout: Duration) -> Result<Out, String> {
    let req = ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        timeout: Some(timeout),
        ..Default::default()
    };
    let out = host.exec(&req).map_err(|e| e.to_string())?;
    if out.status == ExitStatus::TimedOut {
        return Err(format!("`{script}` did not finish within {} s", timeout.as_secs()));
    }
    Ok(Out {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

const QUICK: Duration = Duration::from_secs(60);

/// Boots the image and runs every built-in test, with `extra` after the run-time checks.
pub fn run_suite(opts: &SuiteOptions, extra: ExtraTests<'_>) -> SuiteOutcome {
    let t0 = Instant::now();
    let mut tests = Vec::new();
    let mut report = TestReport {
        target: opts.target.clone(),
        accelerator: kiln_image::qemu::detect_accel().to_string(),
        agent_ready_ms: None,
        system_ready_ms: None,
        total_ms: 0,
        tests: Vec::new(),
    };
    let skip_rest = |tests: &mut Vec<TestCase>, why: &str| {
        for name in BUILTIN_TESTS {
            if !tests.iter().any(|t: &TestCase| t.name == *name) {
                tests.push(TestCase::skipped(name, why));
            }
        }
    };
    let finish = |mut report: TestReport, tests: Vec<TestCase>, kept, console| {
        report.tests = tests;
        report.total_ms = ms(t0.elapsed());
        SuiteOutcome { report, kept, console }
    };

    // 1. Boot.
    let cfg = &opts.instance;
    // Checked between tests: a cancel makes every request to the guest fail within a tick,
    // and ending here spares a tick per remaining request. A cancelled suite keeps no instance.
    let cancelled = || cfg.cancel.as_ref().is_some_and(kiln_host::Cancel::is_cancelled);
    const CANCELLED: &str = "not run: the test stage was cancelled";
    let a = match Instance::launch(cfg) {
        Ok(a) => a,
        Err(e) => {
            let console = e.console().unwrap_or_default().to_string();
            tests.push(TestCase::failed("boots-to-multi-user", t0.elapsed(), e.reason(), console.clone()));
            skip_rest(&mut tests, "not run: the instance did not boot");
            return finish(report, tests, None, console);
        }
    };
    report.agent_ready_ms = Some(ms(a.agent_after));
    if cancelled() {
        skip_rest(&mut tests, CANCELLED);
        let console = a.console();
        return finish(report, tests, None, console);
    }
    let left = cfg.ready_timeout.saturating_sub(t0.elapsed()).max(Duration::from_secs(10));
    let boots = (|| {
        let ready = a.wait_ready(left).map_err(|e| e.reason())?;
        report.system_ready_ms = Some(ms(ready.after));
        let target = sh(a.host(), "systemctl is-active multi-user.target", QUICK)
            .map_err(|e| format!("systemctl: {e}"))?;
        let output =
            format!("is-system-running: {}\nmulti-user.target: {}", ready.state, target.stdout.trim());
        if !matches!(ready.state.as_str(), "running" | "degraded") || target.stdout.trim() != "active" {
            return Err(format!(
                "systemd says {:?}, multi-user.target is {:?}",
                ready.state,
                target.stdout.trim()
            ));
        }
        Ok(output)
    })();
    match boots {
        Ok(output) => tests.push(TestCase::passed("boots-to-multi-user", t0.elapsed(), output)),
        Err(reason) if cancelled() => {
            tests.push(TestCase::failed("boots-to-multi-user", t0.elapsed(), reason, String::new()));
            skip_rest(&mut tests, CANCELLED);
            let console = a.console();
            return finish(report, tests, None, console);
        }
        Err(reason) => {
            let console = a.console();
            tests.push(TestCase::failed(
                "boots-to-multi-user",
                t0.elapsed(),
                reason,
                kiln_image::qemu::tail(&console, 40),
            ));
            skip_rest(&mut tests, "not run: the instance did not reach multi-user");
            return finish(report, tests, keep(a, opts), console);
        }
    }

    // The second instance boots while the first one is tested when the machine has the cores
    // for both; otherwise after the first one's tests, since two emulated guests sharing too
    // few cores make both slower than one after the other.
    let second_cfg = opts.second_instance.then(|| {
        let mut cfg = cfg.clone();
        cfg.work_dir = sibling(&cfg.work_dir, "second");
        cfg.outlive_kiln = false;
        cfg
    });
    let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let overlap = cores >= 2 * cfg.cpus.max(1);
    let start_second = |cfg: InstanceConfig| {
        std::thread::spawn(move || -> Result<Identity, String> {
            let b = Instance::launch(&cfg).map_err(|e| format!("the second instance: {}", e.reason()))?;
            b.wait_ready(cfg.ready_timeout).map_err(|e| format!("the second instance: {}", e.reason()))?;
            identity(b.host())
        })
    };
    let mut second = if overlap { second_cfg.clone().map(start_second) } else { None };

    let host = a.host();
    tests.push(timed("no-failed-units", || {
        let out = sh(host, "systemctl list-units --state=failed --no-legend --plain --no-pager", QUICK)?;
        let failed: Vec<&str> = out.stdout.lines().filter_map(|l| l.split_whitespace().next()).collect();
        if failed.is_empty() {
            return Ok(Verdict::Pass("no failed units".into()));
        }
        let status = sh(host, &format!("systemctl status --no-pager --lines=20 {}", failed.join(" ")), QUICK)
            .map(|o| o.text())
            .unwrap_or_default();
        Ok(Verdict::Fail(format!("{} failed unit(s): {}", failed.len(), failed.join(", ")), status))
    }));
    tests.push(timed("sysctl-settings-in-force", || sysctl_in_force(host)));
    tests.push(timed("firewall-rules-loaded", || {
        if !enabled(host, "nftables.service") {
            return Ok(Verdict::Skip("nftables.service is not enabled in the image".into()));
        }
        let active = sh(host, "systemctl is-active nftables.service", QUICK)?;
        let rules = sh(host, "nft list ruleset", QUICK)?;
        let chains = rules.stdout.matches("chain ").count();
        if active.stdout.trim() != "active" || chains == 0 {
            return Ok(Verdict::Fail(
                format!("nftables.service is {}, {chains} chain(s) loaded", active.stdout.trim()),
                rules.text(),
            ));
        }
        Ok(Verdict::Pass(format!("{chains} chain(s) loaded\n{}", rules.stdout)))
    }));
    tests.push(timed("auditd-running", || {
        if !enabled(host, "auditd.service") {
            return Ok(Verdict::Skip("auditd.service is not enabled in the image".into()));
        }
        let active = sh(host, "systemctl is-active auditd.service", QUICK)?;
        let rules = sh(host, "auditctl -l", QUICK)?;
        let loaded = rules.stdout.lines().filter(|l| l.starts_with('-')).count();
        if active.stdout.trim() != "active" {
            return Ok(Verdict::Fail(format!("auditd.service is {}", active.stdout.trim()), rules.text()));
        }
        Ok(Verdict::Pass(format!("auditd active, {loaded} rule(s) loaded\n{}", rules.stdout)))
    }));

    if !cancelled() {
        tests.extend(extra(host));
    }
    if cancelled() {
        // The second instance, if booting, ends at its next tick: waited for, so its QEMU is
        // gone before the caller cleans up.
        let _ = second.take().map(std::thread::JoinHandle::join);
        skip_rest(&mut tests, CANCELLED);
        let console = a.console();
        return finish(report, tests, None, console);
    }
    if opts.fail_fast && tests.iter().any(|t| t.status == crate::TestStatus::Failed) {
        skip_rest(&mut tests, "not run: an earlier test failed (builds stop at the first failure)");
        let console = a.console();
        return finish(report, tests, keep(a, opts), console);
    }

    // Identity now, then a reboot must keep it and come back to multi-user.
    let first = identity(host);
    tests.push(timed("survives-reboot", || {
        let before = host.boot_id();
        host.reboot().map_err(|e| e.to_string())?;
        let ready = a.wait_ready(cfg.ready_timeout).map_err(|e| e.reason())?;
        let after = identity(host)?;
        let same_id = first.as_ref().map(|f| f.machine_id == after.machine_id).unwrap_or(false);
        let out = format!("boot {before} -> {}; systemd: {}", host.boot_id(), ready.state);
        if !matches!(ready.state.as_str(), "running" | "degraded") {
            return Ok(Verdict::Fail(format!("after the reboot systemd says {:?}", ready.state), out));
        }
        if !same_id {
            return Ok(Verdict::Fail("the machine-id changed across the reboot".into(), out));
        }
        Ok(Verdict::Pass(out))
    }));

    if cancelled() {
        // A second instance booting already sees the cancel at its next tick and ends.
        let _ = second.map(std::thread::JoinHandle::join);
        skip_rest(&mut tests, CANCELLED);
        let console = a.console();
        return finish(report, tests, None, console);
    }
    if second.is_none() {
        second = second_cfg.map(start_second);
    }
    let second =
        second.map(|h| h.join().unwrap_or_else(|_| Err("the second instance's thread panicked".into())));
    match (&first, &second) {
        (Err(e), _) => {
            tests.push(TestCase::failed(
                "machine-id-unique",
                Duration::ZERO,
                format!("reading the first instance: {e}"),
                String::new(),
            ));
            tests.push(TestCase::skipped(
                "ssh-host-keys-unique",
                "not run: the first instance's identity is unknown",
            ));
        }
        (_, None) => {
            tests.push(TestCase::skipped("machine-id-unique", "not run: no second instance was asked for"));
            tests
                .push(TestCase::skipped("ssh-host-keys-unique", "not run: no second instance was asked for"));
        }
        (_, Some(Err(e))) => {
            tests.push(TestCase::failed("machine-id-unique", Duration::ZERO, e.clone(), String::new()));
            tests.push(TestCase::failed("ssh-host-keys-unique", Duration::ZERO, e.clone(), String::new()));
        }
        (Ok(x), Some(Ok(y))) => {
            tests.push(compare_machine_ids(x, y));
            tests.push(compare_host_keys(x, y));
        }
    }

    let console = a.console();
    let failed = tests.iter().any(|t| t.status == crate::TestStatus::Failed);
    let kept = if failed { keep(a, opts) } else { None };
    finish(report, tests, kept, console)
}

fn keep(a: Instance, opts: &SuiteOptions) -> Option<KeptInstance> {
    opts.keep_on_failure.then(|| a.keep())
}

fn sibling(dir: &std::path::Path, suffix: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!("{name}-{suffix}"))
}

enum Verdict {
    Pass(String),
    Fail(String, String),
    Skip(String),
}

fn timed(name: &str, f: impl FnOnce() -> Result<Verdict, String>) -> TestCase {
    let t = Instant::now();
    match f() {
        Ok(Verdict::Pass(out)) => TestCase::passed(name, t.elapsed(), out),
        Ok(Verdict::Fail(reason, out)) => TestCase::failed(name, t.elapsed(), reason, out),
        Ok(Verdict::Skip(reason)) => TestCase::skipped(name, reason),
        Err(e) => TestCase::failed(name, t.elapsed(), e, String::new()),
    }
}

fn enabled(host: &dyn Host, unit: &str) -> bool {
    sh(host, &format!("systemctl is-enabled {unit}"), QUICK).is_ok_and(|o| o.stdout.trim() == "enabled")
}

/// Every `key = value` the image configures in /etc/sysctl.conf and /etc/sysctl.d must be the
/// kernel's value at run time.
fn sysctl_in_force(host: &dyn Host) -> Result<Verdict, String> {
    let files = sh(
        host,
        "for f in /etc/sysctl.conf /etc/sysctl.d/*.conf; do [ -f \"$f\" ] && printf '### %s\\n' \"$f\" && cat \"$f\"; done; true",
        QUICK,
    )?;
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    for line in files.stdout.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        // A leading `-` means "ignore errors setting this"; the value still applies.
        if let Some((k, v)) = line.trim_start_matches('-').split_once('=') {
            let key = k.trim().replace('/', ".");
            // systemd-sysctl expands globs (`net.ipv4.conf.*.rp_filter`); `sysctl -n` cannot
            // read one, and the concrete keys it expands to are configured per interface.
            if key.contains('*') {
                continue;
            }
            wanted.insert(key, v.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    if wanted.is_empty() {
        return Ok(Verdict::Skip("the image sets no sysctl values in /etc".into()));
    }
    let mut out = String::new();
    let mut wrong = Vec::new();
    for (k, v) in &wanted {
        let got = sh(host, &format!("sysctl -n '{}'", k.replace('\'', "")), QUICK)?;
        let got_v = got.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
        out.push_str(&format!("{k}: want {v}, kernel {got_v}\n"));
        if got_v != *v {
            wrong.push(format!("{k} is {got_v:?}, configured {v:?}"));
        }
    }
    if wrong.is_empty() {
        Ok(Verdict::Pass(out))
    } else {
        Ok(Verdict::Fail(format!("{} setting(s) not in force: {}", wrong.len(), wrong.join(", ")), out))
    }
}

/// What must differ between two instances of one image.
#[derive(Debug, Clone)]
struct Identity {
    machine_id: String,
    /// `None` when sshd is not installed.
    host_keys: Option<BTreeMap<String, String>>,
}

fn identity(host: &dyn Host) -> Result<Identity, String> {
    let id = host.read_file("/etc/machine-id").map_err(|e| format!("reading /etc/machine-id: {e}"))?;
    let machine_id = String::from_utf8_lossy(&id).trim().to_string();
    let host_keys = if host.metadata("/usr/sbin/sshd").is_ok() {
        let mut keys = BTreeMap::new();
        for e in host.list_dir("/etc/ssh").map_err(|e| format!("listing /etc/ssh: {e}"))? {
            if e.name.starts_with("ssh_host_") && e.name.ends_with("_key.pub") {
                let k = host.read_file(&format!("/etc/ssh/{}", e.name)).map_err(|e| e.to_string())?;
                keys.insert(e.name.clone(), String::from_utf8_lossy(&k).trim().to_string());
            }
        }
        Some(keys)
    } else {
        None
    };
    Ok(Identity { machine_id, host_keys })
}

fn compare_machine_ids(a: &Identity, b: &Identity) -> TestCase {
    let out = format!("first: {}\nsecond: {}", a.machine_id, b.machine_id);
    let valid = |s: &str| s.len() == 32 && s.bytes().all(|c| c.is_ascii_hexdigit());
    if !valid(&a.machine_id) || !valid(&b.machine_id) {
        return TestCase::failed(
            "machine-id-unique",
            Duration::ZERO,
            "an instance has no valid machine-id",
            out,
        );
    }
    if a.machine_id == b.machine_id {
        return TestCase::failed(
            "machine-id-unique",
            Duration::ZERO,
            "two instances share one machine-id: the image must ship an empty /etc/machine-id",
            out,
        );
    }
    TestCase::passed("machine-id-unique", Duration::ZERO, out)
}

fn compare_host_keys(a: &Identity, b: &Identity) -> TestCase {
    let name = "ssh-host-keys-unique";
    let (Some(x), Some(y)) = (&a.host_keys, &b.host_keys) else {
        return TestCase::skipped(name, "openssh-server is not installed in the image");
    };
    let out = x.keys().map(|k| format!("{k}\n")).collect::<String>();
    if x.is_empty() || y.is_empty() {
        return TestCase::failed(
            name,
            Duration::ZERO,
            "sshd is installed but no host key was generated at first boot",
            out,
        );
    }
    let shared: Vec<&String> = x.iter().filter(|(k, v)| y.get(*k) == Some(*v)).map(|(k, _)| k).collect();
    if !shared.is_empty() {
        return TestCase::failed(
            name,
            Duration::ZERO,
            format!(
                "two instances share host keys ({}): the image ships its keys",
                shared.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
            out,
        );
    }
    TestCase::passed(name, Duration::ZERO, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(m: &str, keys: Option<&[(&str, &str)]>) -> Identity {
        Identity {
            machine_id: m.into(),
            host_keys: keys.map(|k| k.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()),
        }
    }

    #[test]
    fn machine_ids_must_be_valid_and_differ() {
        let a = id("0123456789abcdef0123456789abcdef", None);
        let b = id("fedcba9876543210fedcba9876543210", None);
        assert_eq!(compare_machine_ids(&a, &b).status, crate::TestStatus::Passed);
        assert_eq!(compare_machine_ids(&a, &a).status, crate::TestStatus::Failed);
        assert_eq!(compare_machine_ids(&a, &id("uninitialized", None)).status, crate::TestStatus::Failed);
    }

    #[test]
    fn host_keys_skip_without_sshd_and_fail_when_shared_or_missing() {
        let none = id("x", None);
        assert_eq!(compare_host_keys(&none, &none).status, crate::TestStatus::Skipped);
        let a = id("x", Some(&[("ssh_host_ed25519_key.pub", "ssh-ed25519 AAA1")]));
        let b = id("y", Some(&[("ssh_host_ed25519_key.pub", "ssh-ed25519 AAA2")]));
        assert_eq!(compare_host_keys(&a, &b).status, crate::TestStatus::Passed);
        assert_eq!(compare_host_keys(&a, &a).status, crate::TestStatus::Failed);
        assert_eq!(compare_host_keys(&a, &id("y", Some(&[]))).status, crate::TestStatus::Failed);
    }
}
