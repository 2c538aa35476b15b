//! The value a kernel parameter gets at boot, as systemd-sysctl (and `sysctl --system`)
//! computes it from the configuration files.
//!
//! Files `*.conf` in /etc/sysctl.d, /run/sysctl.d, /usr/local/lib/sysctl.d, /usr/lib/sysctl.d
//! and /lib/sysctl.d are taken together, a file name in an earlier directory hiding the same
//! name in later ones (/etc overrides /usr/lib), and read in the order of their file names;
//! /etc/sysctl.conf comes last (Debian also links it as /etc/sysctl.d/99-sysctl.conf). A later
//! assignment wins. Keys may be written with `/` or `.`, and may be globs
//! (`net.ipv4.conf.*.rp_filter`); a leading `-` only means "ignore errors".

use std::collections::BTreeMap;

use super::{Ctx, Outcome, glob_match, quote};
use crate::profile::SysctlCheck;

const DIRS: &[&str] =
    &["/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d", "/lib/sysctl.d"];

/// Where a value was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    pub file: String,
    pub line: usize,
    pub text: String,
}

fn normalize_key(k: &str) -> String {
    k.trim().trim_start_matches('-').replace('/', ".")
}

fn normalize_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The files in the order they are applied.
fn config_files(ctx: &Ctx<'_>) -> Result<Vec<String>, String> {
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for dir in DIRS {
        let names = match ctx.fs.read_dir(dir) {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) => return Err(format!("cannot list {dir}: {e}")),
        };
        for n in names.into_iter().filter(|n| n.ends_with(".conf")) {
            // The first directory that has a name wins (DIRS is in precedence order).
            by_name.entry(n.clone()).or_insert_with(|| format!("{dir}/{n}"));
        }
    }
    let mut files: Vec<String> = by_name.into_values().collect();
    let linked = ctx.fs.read_link("/etc/sysctl.d/99-sysctl.conf").ok().flatten();
    let sysctl_conf_linked = linked.is_some_and(|t| t.trim_end_matches('/').ends_with("sysctl.conf"));
    if !sysctl_conf_linked {
        files.push("/etc/sysctl.conf".into());
    }
    Ok(files)
}

/// The effective value of `key`, or `None` when no file sets it.
pub fn effective_sysctl(ctx_fs: &kiln_scan::rootfs::RootFs, key: &str) -> Result<Option<Setting>, String> {
    effective(&Ctx::new(ctx_fs), key)
}

fn effective(ctx: &Ctx<'_>, key: &str) -> Result<Option<Setting>, String> {
    let want = normalize_key(key);
    let mut found = None;
    for file in config_files(ctx)? {
        let Some(text) = ctx.read_text(&file)? else { continue };
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
                continue;
            }
            let Some((k, v)) = l.split_once('=') else { continue };
            let k = normalize_key(k);
            if k == want || (k.contains('*') && glob_match(&k, &want)) {
                found = Some(Setting {
                    value: normalize_value(v),
                    file: file.clone(),
                    line: i + 1,
                    text: quote(l),
                });
            }
        }
    }
    Ok(found)
}

pub(super) fn check(ctx: &Ctx<'_>, c: &SysctlCheck) -> Outcome {
    let want = normalize_value(&c.value);
    match effective(ctx, &c.key) {
        Err(e) => Outcome::error(e),
        Ok(Some(s)) if s.value == want => Outcome::pass(format!("{}:{}: {}", s.file, s.line, s.text)),
        Ok(Some(s)) => Outcome::fail(format!("{}:{}: {} (must be {want})", s.file, s.line, s.text)),
        Ok(None) => match &c.default {
            Some(d) if normalize_value(d) == want => {
                Outcome::pass(format!("{} is set in no file; the kernel's default {d} applies", c.key))
            }
            Some(d) => Outcome::fail(format!(
                "{} is set in no file, so the kernel's default {d} applies (must be {want})",
                c.key
            )),
            None => Outcome::fail(format!("{} is set in no sysctl file (must be {want})", c.key)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::report::Status;

    const FWD: &str = "{ sysctl: { key: net.ipv4.ip_forward, value: 0 } }";

    #[test]
    fn later_file_names_win_and_etc_overrides_usr_lib() {
        let root = tree(&[
            ("usr/lib/sysctl.d/50-default.conf", "net.ipv4.ip_forward = 0\n"),
            ("usr/lib/sysctl.d/60-vendor.conf", "net.ipv4.ip_forward = 1\n"),
        ]);
        let o = run(root.path(), FWD);
        assert_eq!(o.status, Status::Fail);
        assert_eq!(o.evidence, ["/usr/lib/sysctl.d/60-vendor.conf:1: net.ipv4.ip_forward = 1 (must be 0)"]);
        // An earlier name in /etc does not beat a later name in /usr/lib...
        put(root.path(), "etc/sysctl.d/10-hardening.conf", "net/ipv4/ip_forward=0\n");
        assert_eq!(run(root.path(), FWD).status, Status::Fail);
        // ...but the same name in /etc hides the vendor file.
        put(root.path(), "etc/sysctl.d/60-vendor.conf", "# hardened\n");
        let o = run(root.path(), FWD);
        assert_eq!(o.status, Status::Pass, "{o:?}");
        assert_eq!(o.evidence, ["/usr/lib/sysctl.d/50-default.conf:1: net.ipv4.ip_forward = 0"]);
        // /etc/sysctl.conf comes last.
        put(root.path(), "etc/sysctl.conf", "net.ipv4.ip_forward = 1\n");
        assert_eq!(run(root.path(), FWD).status, Status::Fail);
        // Linked in as 99-sysctl.conf it is read once, in its place; a later name still wins.
        link(root.path(), "etc/sysctl.d/99-sysctl.conf", "../sysctl.conf");
        put(root.path(), "etc/sysctl.d/99-zz.conf", "-net.ipv4.ip_forward = 0\n");
        assert_eq!(run(root.path(), FWD).status, Status::Pass);
    }

    #[test]
    fn globs_and_defaults() {
        let root = tree(&[("etc/sysctl.d/90.conf", "net.ipv4.conf.*.rp_filter = 1\n")]);
        let o = run(root.path(), "{ sysctl: { key: net.ipv4.conf.all.rp_filter, value: 1 } }");
        assert_eq!(o.status, Status::Pass, "{o:?}");
        let aslr = "{ sysctl: { key: kernel.randomize_va_space, value: 2, default: 2 } }";
        let o = run(root.path(), aslr);
        assert_eq!(o.status, Status::Pass);
        assert!(o.evidence[0].contains("the kernel's default 2 applies"), "{o:?}");
        assert_eq!(run(root.path(), FWD).status, Status::Fail, "no default: not set fails");
        put(root.path(), "etc/sysctl.d/90.conf", "kernel.randomize_va_space = 0\n");
        assert_eq!(run(root.path(), aslr).status, Status::Fail);
    }

    #[test]
    fn a_config_directory_linked_to_the_host_is_not_read() {
        let host = tempfile::tempdir().unwrap();
        put(host.path(), "evil.conf", "net.ipv4.ip_forward = 0\n");
        let root = tree(&[("usr/lib/sysctl.d/50.conf", "net.ipv4.ip_forward = 1\n")]);
        link(root.path(), "etc/sysctl.d", host.path().to_str().unwrap());
        let o = run(root.path(), FWD);
        assert_eq!(o.status, Status::Fail, "{o:?}");
    }
}
