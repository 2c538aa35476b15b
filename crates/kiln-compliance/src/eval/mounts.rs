//! Mount points: /etc/fstab, or a systemd mount unit (such as tmp.mount) when fstab has none.

use super::system::{UNIT_DIRS, unit_state};
use super::{Ctx, Outcome, quote};
use crate::profile::MountCheck;

/// One fstab entry: where it was, its mount point and options.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    whence: String,
    options: Vec<String>,
}

/// `\040` and friends, as fstab escapes spaces in paths.
fn unescape(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(v) = s.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn normalize(mp: &str) -> String {
    let t = mp.trim_end_matches('/');
    if t.is_empty() { "/".into() } else { t.to_string() }
}

fn from_fstab(ctx: &Ctx<'_>, mount_point: &str) -> Result<Option<Entry>, String> {
    let Some(text) = ctx.read_text("/etc/fstab")? else { return Ok(None) };
    let want = normalize(mount_point);
    let mut found = None;
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 2 && normalize(&unescape(f[1])) == want {
            // The last entry for a mount point is the one mounted on top.
            found = Some(Entry {
                whence: format!("/etc/fstab:{}: {}", i + 1, quote(l)),
                options: f.get(3).unwrap_or(&"defaults").split(',').map(str::to_string).collect(),
            });
        }
    }
    Ok(found)
}

/// systemd's name for a mount point's unit: `/var/tmp` → `var-tmp.mount`.
fn unit_name(mount_point: &str) -> String {
    let t = mount_point.trim_matches('/');
    if t.is_empty() {
        return "-.mount".into();
    }
    let mut s = String::new();
    for (i, c) in t.chars().enumerate() {
        match c {
            '/' => s.push('-'),
            c if c.is_ascii_alphanumeric() || c == '_' || (c == '.' && i > 0) => s.push(c),
            c => s.push_str(&format!("\\x{:02x}", c as u32)),
        }
    }
    format!("{s}.mount")
}

fn from_unit(ctx: &Ctx<'_>, mount_point: &str) -> Result<Option<Entry>, String> {
    let unit = unit_name(mount_point);
    let state = unit_state(ctx, &unit)?;
    if !state.enabled || state.masked {
        return Ok(None);
    }
    for dir in UNIT_DIRS {
        let path = format!("{dir}/{unit}");
        let Some(text) = ctx.read_text(&path)? else { continue };
        let mut options = vec!["defaults".to_string()];
        let mut whence = format!("{path} (enabled)");
        for (i, line) in text.lines().enumerate() {
            if let Some(v) = line.trim().strip_prefix("Options=") {
                options = v.split(',').map(|o| o.trim().to_string()).collect();
                whence = format!("{path}:{}: {} (enabled)", i + 1, quote(line));
            }
        }
        return Ok(Some(Entry { whence, options }));
    }
    Ok(None)
}

pub(super) fn check(ctx: &Ctx<'_>, c: &MountCheck) -> Outcome {
    let entry = match from_fstab(ctx, &c.mount_point).and_then(|e| match e {
        Some(e) => Ok(Some(e)),
        None => from_unit(ctx, &c.mount_point),
    }) {
        Ok(e) => e,
        Err(e) => return Outcome::error(e),
    };
    let Some(entry) = entry else {
        let why = format!(
            "{} is not a separate file system (not in /etc/fstab, no enabled mount unit)",
            c.mount_point
        );
        return if c.separate { Outcome::fail(why) } else { Outcome::na(why) };
    };
    let missing: Vec<&String> = c.options.iter().filter(|o| !entry.options.contains(o)).collect();
    if missing.is_empty() {
        Outcome::pass(entry.whence)
    } else {
        let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        Outcome::fail(format!("{} (missing {})", entry.whence, names.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::report::Status;

    const TMP: &str = "{ mount: { mountPoint: /tmp, options: [nodev, nosuid, noexec] } }";
    const VAR: &str = "{ mount: { mountPoint: /var/log, separate: true } }";

    #[test]
    fn fstab_entries_and_options() {
        let root = tree(&[("etc/fstab", "UUID=1 / ext4 errors=remount-ro 0 1\n")]);
        let o = run(root.path(), TMP);
        assert_eq!(o.status, Status::NotApplicable, "{o:?}");
        assert_eq!(run(root.path(), VAR).status, Status::Fail);
        put(
            root.path(),
            "etc/fstab",
            "UUID=1 / ext4 defaults 0 1\nUUID=2 /var/log ext4 nodev,nosuid 0 2\ntmpfs /tmp/ tmpfs nodev,nosuid 0 0\n",
        );
        let o = run(root.path(), VAR);
        assert_eq!(o.status, Status::Pass);
        assert_eq!(o.evidence, ["/etc/fstab:2: UUID=2 /var/log ext4 nodev,nosuid 0 2"]);
        let o = run(root.path(), TMP);
        assert_eq!(o.status, Status::Fail);
        assert!(o.evidence[0].ends_with("(missing noexec)"), "{o:?}");
    }

    #[test]
    fn an_enabled_mount_unit_counts() {
        let root = tree(&[
            ("etc/fstab", "UUID=1 / ext4 defaults 0 1\n"),
            (
                "usr/lib/systemd/system/tmp.mount",
                "[Mount]\nWhat=tmpfs\nWhere=/tmp\nOptions=mode=1777,strictatime,nosuid,nodev,noexec\n",
            ),
        ]);
        assert_eq!(run(root.path(), TMP).status, Status::NotApplicable, "not enabled");
        link(
            root.path(),
            "etc/systemd/system/local-fs.target.wants/tmp.mount",
            "/usr/lib/systemd/system/tmp.mount",
        );
        let o = run(root.path(), TMP);
        assert_eq!(o.status, Status::Pass, "{o:?}");
        assert!(o.evidence[0].starts_with("/usr/lib/systemd/system/tmp.mount:4:"), "{o:?}");
    }

    #[test]
    fn unit_names_and_escapes() {
        assert_eq!(unit_name("/var/tmp"), "var-tmp.mount");
        assert_eq!(unit_name("/"), "-.mount");
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
    }
}
