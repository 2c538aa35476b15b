//! Packages (the dpkg database), systemd units (unit files and `.wants` links, read without
//! systemctl) and kernel modules (modprobe.d).

use kiln_scan::rootfs::FileKind;

use super::{Ctx, Outcome, quote};
use crate::profile::{KernelModuleCheck, PackageCheck, PackageState, ServiceCheck, ServiceState};
use crate::report::Status;

pub(super) fn package(ctx: &Ctx<'_>, c: &PackageCheck) -> Outcome {
    if !ctx.has_package_db() {
        return Outcome::error(
            "the image has no dpkg database (var/lib/dpkg/status), so packages cannot be checked",
        );
    }
    let found: Vec<String> =
        c.name.iter().filter_map(|n| ctx.installed(n).map(|v| format!("{n} {v} is installed"))).collect();
    let names = c.name.join(", ");
    match c.state {
        PackageState::Installed if found.is_empty() => Outcome::fail(format!("not installed: {names}")),
        PackageState::Installed => Outcome::new(Status::Pass, found),
        PackageState::Absent if found.is_empty() => Outcome::pass(format!("not installed: {names}")),
        PackageState::Absent => Outcome::new(Status::Fail, found),
    }
}

/// Where systemd looks for units, in precedence order (/run is empty in an image).
pub(super) const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];

/// What the tree says about one unit.
#[derive(Debug, Default)]
pub(super) struct UnitState {
    /// A unit file exists (not masked).
    pub installed: bool,
    pub masked: bool,
    pub enabled: bool,
    pub evidence: Vec<String>,
}

fn base_name(target: &str) -> &str {
    target.trim_end_matches('/').rsplit('/').next().unwrap_or(target)
}

/// Reads the unit files and the `.wants`/`.requires` links of every unit directory.
pub(super) fn unit_state(ctx: &Ctx<'_>, unit: &str) -> Result<UnitState, String> {
    let mut st = UnitState::default();
    for dir in UNIT_DIRS {
        let path = format!("{dir}/{unit}");
        // A mask is a link to /dev/null (only /etc and /run masks count, but a vendor one
        // would disable it just the same).
        match ctx.fs.read_link(&path) {
            Ok(Some(t)) if t == "/dev/null" => {
                st.masked = true;
                st.evidence.push(format!("{path} -> /dev/null (masked)"));
                continue;
            }
            Ok(_) => {}
            Err(e) => return Err(format!("cannot read {path}: {e}")),
        }
        match ctx.fs.metadata(&path, true) {
            Ok(Some(m)) if m.kind == FileKind::File => st.installed = true,
            Ok(_) => {}
            Err(e) => return Err(format!("cannot look at {path}: {e}")),
        }
        let names = match ctx.fs.read_dir(dir) {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) => return Err(format!("cannot list {dir}: {e}")),
        };
        for wants in names.iter().filter(|n| n.ends_with(".wants") || n.ends_with(".requires")) {
            let wdir = format!("{dir}/{wants}");
            let entries = match ctx.fs.read_dir(&wdir) {
                Ok(Some(e)) => e,
                Ok(None) => continue,
                Err(e) => return Err(format!("cannot list {wdir}: {e}")),
            };
            for e in entries {
                let link = format!("{wdir}/{e}");
                let target = ctx.fs.read_link(&link).map_err(|err| format!("cannot read {link}: {err}"))?;
                // The link's own name, or (for an alias) the name of the file it points at.
                let hit = e == unit || target.as_deref().is_some_and(|t| base_name(t) == unit);
                if hit {
                    st.enabled = true;
                    match target {
                        Some(t) => st.evidence.push(format!("{link} -> {t}")),
                        None => st.evidence.push(link),
                    }
                }
            }
        }
    }
    Ok(st)
}

pub(super) fn service(ctx: &Ctx<'_>, c: &ServiceCheck) -> Outcome {
    let mut states = Vec::new();
    for u in &c.unit {
        match unit_state(ctx, u) {
            Ok(s) => states.push((u, s)),
            Err(e) => return Outcome::error(e),
        }
    }
    let describe = |u: &str, s: &UnitState| -> Vec<String> {
        if !s.evidence.is_empty() {
            return s.evidence.clone();
        }
        vec![if s.installed {
            format!("{u} is installed but not enabled")
        } else {
            format!("{u}: no unit file")
        }]
    };
    let all = |f: &dyn Fn(&UnitState) -> bool| states.iter().all(|(_, s)| f(s));
    let evidence: Vec<String> = states.iter().flat_map(|(u, s)| describe(u, s)).collect();
    let ok = match c.state {
        ServiceState::Enabled => states.iter().any(|(_, s)| s.enabled && !s.masked && s.installed),
        ServiceState::Disabled => all(&|s| !s.enabled || s.masked || !s.installed),
        ServiceState::Masked => all(&|s| s.masked || !s.installed),
    };
    Outcome::new(if ok { Status::Pass } else { Status::Fail }, evidence)
}

const MODPROBE_DIRS: &[&str] = &[
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/local/lib/modprobe.d",
    "/lib/modprobe.d",
    "/usr/lib/modprobe.d",
];

fn module_name(s: &str) -> String {
    s.trim().replace('-', "_")
}

pub(super) fn kernel_module(ctx: &Ctx<'_>, c: &KernelModuleCheck) -> Outcome {
    let want = module_name(&c.module);
    // Same file name: the earlier directory wins, as in kmod.
    let mut files = std::collections::BTreeMap::new();
    for dir in MODPROBE_DIRS {
        match ctx.fs.read_dir(dir) {
            Ok(Some(names)) => {
                for n in names.into_iter().filter(|n| n.ends_with(".conf")) {
                    files.entry(n.clone()).or_insert_with(|| format!("{dir}/{n}"));
                }
            }
            Ok(None) => {}
            Err(e) => return Outcome::error(format!("cannot list {dir}: {e}")),
        }
    }
    let mut install = None;
    let mut blacklist = None;
    for path in files.values() {
        let text = match ctx.read_text(path) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => return Outcome::error(e),
        };
        for (i, line) in text.lines().enumerate() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["install", m, cmd, ..] if module_name(m) == want => {
                    let inert = matches!(base_name(cmd), "false" | "true");
                    install = Some((inert, format!("{path}:{}: {}", i + 1, quote(line))));
                }
                ["blacklist", m, ..] if module_name(m) == want => {
                    blacklist = Some(format!("{path}:{}: {}", i + 1, quote(line)));
                }
                _ => {}
            }
        }
    }
    let mut evidence: Vec<String> = install.iter().map(|(_, e)| e.clone()).chain(blacklist.clone()).collect();
    let disabled = install.as_ref().is_some_and(|(inert, _)| *inert) || blacklist.is_some();
    if evidence.is_empty() {
        evidence.push(format!("no `install {want} /bin/false` or `blacklist {want}` in modprobe.d"));
    }
    Outcome::new(if disabled { Status::Pass } else { Status::Fail }, evidence)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::report::Status;

    #[test]
    fn packages_present_and_absent() {
        let root = tree(&[("var/lib/dpkg/status", &dpkg(&["aide", "telnet"]))]);
        let telnet = "{ package: { name: [telnet, inetutils-telnet], state: absent } }";
        let o = run(root.path(), telnet);
        assert_eq!(o.status, Status::Fail);
        assert_eq!(o.evidence, ["telnet 1.0-1 is installed"]);
        let aide = "{ package: { name: aide, state: installed } }";
        assert_eq!(run(root.path(), aide).status, Status::Pass);
        put(root.path(), "var/lib/dpkg/status", &dpkg(&["bash"]));
        assert_eq!(run(root.path(), telnet).status, Status::Pass);
        let o = run(root.path(), aide);
        assert_eq!((o.status, o.evidence), (Status::Fail, vec!["not installed: aide".to_string()]));
        let empty = tree(&[]);
        assert_eq!(run(empty.path(), aide).status, Status::Error, "no database: cannot tell");
    }

    #[test]
    fn services_from_wants_links_and_masks() {
        let enabled = "{ service: { unit: [chrony.service, systemd-timesyncd.service], state: enabled } }";
        let root = tree(&[("lib/systemd/system/systemd-timesyncd.service", "[Unit]\n")]);
        let o = run(root.path(), enabled);
        assert_eq!(o.status, Status::Fail);
        assert!(
            o.evidence.contains(&"systemd-timesyncd.service is installed but not enabled".to_string()),
            "{o:?}"
        );
        link(
            root.path(),
            "etc/systemd/system/sysinit.target.wants/systemd-timesyncd.service",
            "/lib/systemd/system/systemd-timesyncd.service",
        );
        let o = run(root.path(), enabled);
        assert_eq!(o.status, Status::Pass, "{o:?}");
        let disabled = "{ service: { unit: systemd-timesyncd.service, state: disabled } }";
        assert_eq!(run(root.path(), disabled).status, Status::Fail);
        link(root.path(), "etc/systemd/system/systemd-timesyncd.service", "/dev/null");
        assert_eq!(run(root.path(), enabled).status, Status::Fail, "masked is not enabled");
        assert_eq!(run(root.path(), disabled).status, Status::Pass);
        let masked = "{ service: { unit: [systemd-timesyncd.service, rsync.service], state: masked } }";
        let o = run(root.path(), masked);
        assert_eq!(o.status, Status::Pass, "an absent unit cannot start: {o:?}");
    }

    #[test]
    fn an_alias_link_counts_as_enabled() {
        let root = tree(&[("lib/systemd/system/ssh.service", "[Unit]\n")]);
        link(
            root.path(),
            "etc/systemd/system/multi-user.target.wants/sshd.service",
            "/lib/systemd/system/ssh.service",
        );
        assert_eq!(
            run(root.path(), "{ service: { unit: ssh.service, state: enabled } }").status,
            Status::Pass
        );
    }

    #[test]
    fn kernel_modules() {
        let check = "{ kernelModule: { module: cramfs } }";
        let root = tree(&[("etc/modprobe.d/x.conf", "install usb-storage /bin/false\n")]);
        let o = run(root.path(), check);
        assert_eq!(o.status, Status::Fail);
        assert_eq!(o.evidence, ["no `install cramfs /bin/false` or `blacklist cramfs` in modprobe.d"]);
        put(root.path(), "etc/modprobe.d/cramfs.conf", "install cramfs /bin/false\n");
        assert_eq!(run(root.path(), check).status, Status::Pass);
        put(
            root.path(),
            "etc/modprobe.d/cramfs.conf",
            "install cramfs /sbin/modprobe --ignore-install cramfs\n",
        );
        assert_eq!(run(root.path(), check).status, Status::Fail, "an install that loads it anyway");
        put(root.path(), "lib/modprobe.d/cramfs.conf", "blacklist cramfs\n");
        assert_eq!(run(root.path(), check).status, Status::Fail, "/etc's file of the same name hides it");
        put(root.path(), "lib/modprobe.d/other.conf", "blacklist cramfs\n");
        let o = run(root.path(), check);
        assert_eq!(o.status, Status::Pass, "{o:?}");
        let usb = "{ kernelModule: { module: usb_storage } }";
        assert_eq!(run(root.path(), usb).status, Status::Pass, "- and _ are the same in module names");
    }
}
