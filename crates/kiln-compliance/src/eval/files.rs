//! File content, permissions and presence.

use kiln_scan::rootfs::FileKind;
use regex::Regex;

use super::{Ctx, Outcome, capped, glob_match, quote};
use crate::profile::{FileContent, FileExists, FilePermissions, Missing, Presence, parse_mode};
use crate::report::Status;

/// How deep, and how many entries, a walk under a directory goes: a planted tree of millions
/// of files must not stall the evaluation.
const WALK_DEPTH: usize = 32;
const WALK_ENTRIES: usize = 200_000;

fn missing_status(m: Missing) -> Status {
    match m {
        Missing::Pass => Status::Pass,
        Missing::Fail => Status::Fail,
        Missing::NotApplicable => Status::NotApplicable,
    }
}

pub(super) fn content(ctx: &Ctx<'_>, c: &FileContent) -> Outcome {
    // The profile check compiled these; a failure here is a bug in a caller-built rule.
    let must = match c.must_match.as_deref().map(Regex::new).transpose() {
        Ok(r) => r,
        Err(e) => return Outcome::error(format!("mustMatch is not a regular expression: {e}")),
    };
    let must_not = match c.must_not_match.as_deref().map(Regex::new).transpose() {
        Ok(r) => r,
        Err(e) => return Outcome::error(format!("mustNotMatch is not a regular expression: {e}")),
    };
    let mut files = Vec::new();
    for pattern in &c.path {
        match ctx.expand(pattern) {
            Ok(paths) => files.extend(paths),
            Err(e) => return Outcome::error(e),
        }
    }
    let mut texts = Vec::new();
    for path in &files {
        match ctx.read_text(path) {
            Ok(Some(t)) => texts.push((path.clone(), t)),
            Ok(None) => {}
            Err(e) => return Outcome::error(e),
        }
    }
    if texts.is_empty() {
        let default = if must.is_some() { Missing::Fail } else { Missing::Pass };
        return Outcome::new(
            missing_status(c.missing.unwrap_or(default)),
            [format!("{} not found", c.path.join(", "))],
        );
    }
    let lines = texts.iter().flat_map(|(path, text)| {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !(c.skip_comments && l.trim_start().starts_with('#')))
            .map(move |(i, l)| (path.as_str(), i + 1, l))
    });
    let mut evidence = Vec::new();
    let mut failed = false;
    if let Some(re) = &must_not {
        let hits: Vec<String> = lines
            .clone()
            .filter(|(_, _, l)| re.is_match(l))
            .map(|(p, n, l)| format!("{p}:{n}: {}", quote(l)))
            .collect();
        if !hits.is_empty() {
            failed = true;
            evidence.push(format!("lines matching `{re}` (not allowed):"));
            evidence.extend(capped(hits));
        }
    }
    if let Some(re) = &must {
        let last = lines.filter(|(_, _, l)| re.is_match(l)).last();
        match (last, c.compare) {
            (None, _) => {
                failed = true;
                let names: Vec<&str> = texts.iter().map(|(p, _)| p.as_str()).collect();
                evidence.push(format!("no line matches `{re}` in {}", names.join(", ")));
            }
            (Some((p, n, l)), None) => evidence.push(format!("{p}:{n}: {}", quote(l))),
            (Some((p, n, l)), Some(cmp)) => {
                let value = re.captures(l).and_then(|c| c.get(1)).map(|m| m.as_str().trim().to_string());
                match value.as_deref().map(str::parse::<i64>) {
                    Some(Ok(v)) if cmp.op.holds(v, cmp.value) => evidence.push(format!(
                        "{p}:{n}: {} ({v} {} {})",
                        quote(l),
                        cmp.op.symbol(),
                        cmp.value
                    )),
                    Some(Ok(v)) => {
                        failed = true;
                        evidence.push(format!(
                            "{p}:{n}: {} ({v} is not {} {})",
                            quote(l),
                            cmp.op.symbol(),
                            cmp.value
                        ));
                    }
                    _ => {
                        failed = true;
                        evidence.push(format!("{p}:{n}: {} (the value is not a whole number)", quote(l)));
                    }
                }
            }
        }
    }
    if !failed && must.is_none() {
        let names: Vec<&str> = texts.iter().map(|(p, _)| p.as_str()).collect();
        evidence.push(format!(
            "no line matches `{}` in {}",
            must_not.map(|r| r.to_string()).unwrap_or_default(),
            names.join(", ")
        ));
    }
    Outcome::new(if failed { Status::Fail } else { Status::Pass }, evidence)
}

pub(super) fn exists(ctx: &Ctx<'_>, c: &FileExists) -> Outcome {
    match (ctx.fs.metadata(&c.path, false), c.expect) {
        (Err(e), _) => Outcome::error(format!("cannot look at {}: {e}", c.path)),
        (Ok(Some(_)), Presence::Present) => Outcome::pass(format!("{} exists", c.path)),
        (Ok(None), Presence::Present) => Outcome::fail(format!("{} does not exist", c.path)),
        (Ok(Some(_)), Presence::Absent) => Outcome::fail(format!("{} exists", c.path)),
        (Ok(None), Presence::Absent) => Outcome::pass(format!("{} does not exist", c.path)),
    }
}

pub(super) fn permissions(ctx: &Ctx<'_>, c: &FilePermissions) -> Outcome {
    let max = c.max_mode.as_deref().and_then(parse_mode);
    // (path, metadata) of every file the rule covers.
    let mut targets = Vec::new();
    if let Some(dir) = &c.under {
        if let Err(e) = walk(ctx, dir, c.pattern.as_deref().unwrap_or("*"), 0, &mut targets) {
            return Outcome::error(e);
        }
    }
    for pattern in &c.path {
        let paths = match ctx.expand(pattern) {
            Ok(p) => p,
            Err(e) => return Outcome::error(e),
        };
        for p in paths {
            // Followed inside the root: the mode that matters is the file's, not a link's.
            match ctx.fs.metadata(&p, true) {
                Ok(Some(m)) => targets.push((p, m)),
                Ok(None) => {}
                Err(e) => return Outcome::error(format!("cannot look at {p}: {e}")),
            }
        }
    }
    if targets.is_empty() {
        let what = c.under.clone().map(|d| format!("no file under {d}")).unwrap_or_else(|| c.path.join(", "));
        return Outcome::new(
            missing_status(c.missing.unwrap_or(Missing::NotApplicable)),
            [format!("{what} not found")],
        );
    }
    let name_of = |id: u32, names: Option<&str>| names.map(str::to_string).unwrap_or_else(|| id.to_string());
    let mut bad = Vec::new();
    let mut good = Vec::new();
    for (path, m) in &targets {
        let owner = name_of(m.uid, ctx.user_name(m.uid));
        let group = name_of(m.gid, ctx.group_name(m.gid));
        let found = format!("{path}: {:04o} {owner}:{group}", m.mode);
        let mut why = Vec::new();
        if let Some(max) = max
            && m.mode & !max != 0
        {
            why.push(format!("mode allows more than {max:04o}"));
        }
        if !c.owner.is_empty() && !c.owner.iter().any(|o| *o == owner || *o == m.uid.to_string()) {
            why.push(format!("owner is not {}", c.owner.join(" or ")));
        }
        if !c.group.is_empty() && !c.group.iter().any(|g| *g == group || *g == m.gid.to_string()) {
            why.push(format!("group is not {}", c.group.join(" or ")));
        }
        if why.is_empty() {
            good.push(found);
        } else {
            bad.push(format!("{found} ({})", why.join("; ")));
        }
    }
    if bad.is_empty() {
        if good.len() > 3 {
            let n = good.len();
            good.truncate(3);
            good.push(format!("{n} files checked"));
        }
        Outcome::new(Status::Pass, good)
    } else {
        Outcome::new(Status::Fail, capped(bad))
    }
}

/// Every regular file below `dir` whose name matches `pattern`, without following symlinks.
fn walk(
    ctx: &Ctx<'_>,
    dir: &str,
    pattern: &str,
    depth: usize,
    out: &mut Vec<(String, kiln_scan::rootfs::Metadata)>,
) -> Result<(), String> {
    if depth > WALK_DEPTH || out.len() > WALK_ENTRIES {
        return Ok(());
    }
    // A symlinked directory is not walked: its target may be anywhere in the tree.
    match ctx.fs.metadata(dir, false) {
        Ok(Some(m)) if m.kind == FileKind::Dir => {}
        Ok(_) => return Ok(()),
        Err(e) => return Err(format!("cannot look at {dir}: {e}")),
    }
    let names = match ctx.fs.read_dir(dir) {
        Ok(Some(n)) => n,
        Ok(None) => return Ok(()),
        Err(e) => return Err(format!("cannot list {dir}: {e}")),
    };
    for name in names {
        let path = format!("{}/{name}", dir.trim_end_matches('/'));
        match ctx.fs.metadata(&path, false) {
            Ok(Some(m)) if m.kind == FileKind::Dir => walk(ctx, &path, pattern, depth + 1, out)?,
            Ok(Some(m)) if m.kind == FileKind::File && glob_match(pattern, &name) => out.push((path, m)),
            Ok(_) => {}
            Err(e) => return Err(format!("cannot look at {path}: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::super::testing::*;
    use crate::report::Status;

    fn chmod(root: &std::path::Path, path: &str, mode: u32) {
        std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn content_must_match_with_a_comparison() {
        let check = r#"{ fileContent: { path: /etc/login.defs, mustMatch: '^\s*PASS_MAX_DAYS\s+(\d+)', compare: { op: le, value: 365 } } }"#;
        let root = tree(&[("etc/login.defs", "# PASS_MAX_DAYS 1\nPASS_MAX_DAYS 99999\nPASS_MAX_DAYS 365\n")]);
        let o = run(root.path(), check);
        assert_eq!(o.status, Status::Pass, "{o:?}");
        assert_eq!(o.evidence, ["/etc/login.defs:3: PASS_MAX_DAYS 365 (365 ≤ 365)"]);
        put(root.path(), "etc/login.defs", "PASS_MAX_DAYS 99999\n# PASS_MAX_DAYS 90\n");
        let o = run(root.path(), check);
        assert_eq!(o.status, Status::Fail);
        assert_eq!(o.evidence, ["/etc/login.defs:1: PASS_MAX_DAYS 99999 (99999 is not ≤ 365)"]);
        put(root.path(), "etc/login.defs", "UMASK 022\n");
        let o = run(root.path(), check);
        assert_eq!(o.status, Status::Fail);
        assert!(o.evidence[0].starts_with("no line matches"), "{o:?}");
        std::fs::remove_file(root.path().join("etc/login.defs")).unwrap();
        assert_eq!(run(root.path(), check).status, Status::Fail, "missing file fails a mustMatch");
    }

    #[test]
    fn content_must_not_match_across_a_glob() {
        let check = r#"{ fileContent: { path: [/etc/issue, /etc/issue.d/*.issue], mustNotMatch: '\\[mrsv]|(?i)debian' } }"#;
        let root = tree(&[("etc/issue", "Authorised use only.\n"), ("etc/issue.d/a.issue", "hello\n")]);
        let o = run(root.path(), check);
        assert_eq!(o.status, Status::Pass, "{o:?}");
        put(root.path(), "etc/issue.d/b.issue", "Debian GNU/Linux 12 \\n \\l\n");
        let o = run(root.path(), check);
        assert_eq!(o.status, Status::Fail);
        assert_eq!(o.evidence[1], "/etc/issue.d/b.issue:1: Debian GNU/Linux 12 \\n \\l");
        let empty = tree(&[]);
        assert_eq!(run(empty.path(), check).status, Status::Pass, "no file, nothing forbidden");
    }

    #[test]
    fn permissions_and_owners() {
        let check =
            "{ filePermissions: { path: /etc/shadow, maxMode: '0640', owner: root, group: [root, shadow] } }";
        let root = tree(&[("etc/shadow", "root:*:1::::::\n")]);
        chmod(root.path(), "etc/shadow", 0o640);
        // Whoever runs the test owns the file; the image's own passwd and group name them.
        let meta = std::fs::metadata(root.path().join("etc/shadow")).unwrap();
        put(root.path(), "etc/passwd", &format!("root:x:{}:0::/:/bin/sh\n", meta.uid()));
        put(root.path(), "etc/group", &format!("root:x:{}:\n", meta.gid()));
        let o = run(root.path(), check);
        assert_eq!(o.status, Status::Pass, "{o:?}");
        assert_eq!(o.evidence, ["/etc/shadow: 0640 root:root"]);
        chmod(root.path(), "etc/shadow", 0o644);
        let o = run(root.path(), check);
        assert_eq!(o.status, Status::Fail);
        assert!(
            o.evidence[0].starts_with("/etc/shadow: 0644")
                && o.evidence[0].contains("mode allows more than 0640"),
            "{o:?}"
        );
        let nobody = "{ filePermissions: { path: /etc/shadow, owner: nobody } }";
        let o = run(root.path(), nobody);
        assert_eq!(o.status, Status::Fail);
        assert!(o.evidence[0].contains("owner is not nobody"), "{o:?}");
        let absent = "{ filePermissions: { path: /etc/gshadow, maxMode: '0640' } }";
        assert_eq!(run(root.path(), absent).status, Status::NotApplicable);
    }

    #[test]
    fn permissions_under_a_directory_skip_symlinks() {
        let check = "{ filePermissions: { under: /var/log, pattern: '*.log', maxMode: '0640' } }";
        let root = tree(&[("var/log/a.log", ""), ("var/log/sub/b.log", ""), ("var/log/c.txt", "")]);
        chmod(root.path(), "var/log/a.log", 0o640);
        chmod(root.path(), "var/log/sub/b.log", 0o600);
        chmod(root.path(), "var/log/c.txt", 0o666);
        let o = run(root.path(), check);
        assert_eq!(o.status, Status::Pass, "{o:?}");
        chmod(root.path(), "var/log/sub/b.log", 0o644);
        // A link to a wide-open host file is neither followed nor reported.
        let host = tempfile::NamedTempFile::new().unwrap();
        std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
        link(root.path(), "var/log/evil.log", host.path().to_str().unwrap());
        link(root.path(), "var/log/up", "/");
        let o = run(root.path(), check);
        assert_eq!(o.status, Status::Fail);
        assert_eq!(o.evidence.len(), 1, "{o:?}");
        assert!(o.evidence[0].starts_with("/var/log/sub/b.log: 0644"), "{o:?}");
    }

    #[test]
    fn a_symlink_to_a_host_file_is_resolved_inside_the_root() {
        // The image's /etc/shadow points at the host's /etc/shadow: inside the root that is
        // itself, a loop, so the rule errors instead of reading the host.
        let root = tree(&[]);
        link(root.path(), "etc/shadow", "/etc/shadow");
        let o = run(root.path(), "{ filePermissions: { path: /etc/shadow, maxMode: '0640' } }");
        assert_eq!(o.status, Status::Error, "{o:?}");
        let secret = tempfile::tempdir().unwrap();
        put(secret.path(), "issue", "Debian GNU/Linux\n");
        link(root.path(), "etc/issue", secret.path().join("issue").to_str().unwrap());
        let o = run(root.path(), r#"{ fileContent: { path: /etc/issue, mustNotMatch: '(?i)debian' } }"#);
        assert_eq!(o.status, Status::Pass, "the host file must not be read: {o:?}");
        assert_eq!(o.evidence, ["/etc/issue not found"]);
    }

    #[test]
    fn presence_and_absence() {
        let root = tree(&[("etc/cron.allow", "root\n")]);
        let present = "{ fileExists: { path: /etc/cron.allow } }";
        let absent = "{ fileExists: { path: /etc/cron.deny, expect: absent } }";
        assert_eq!(run(root.path(), present).status, Status::Pass);
        assert_eq!(run(root.path(), absent).status, Status::Pass);
        put(root.path(), "etc/cron.deny", "");
        std::fs::remove_file(root.path().join("etc/cron.allow")).unwrap();
        assert_eq!(run(root.path(), present).evidence, ["/etc/cron.allow does not exist"]);
        assert_eq!(run(root.path(), absent).status, Status::Fail);
    }
}
