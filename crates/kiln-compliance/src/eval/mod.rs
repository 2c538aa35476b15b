//! Evaluating kiln's rules against an unpacked root.
//!
//! Every file is read through [`RootFs`] (paths resolved inside the root, symlinks never
//! followed out of it). Nothing about the image's content makes evaluation fail: a file that
//! cannot be read makes the rule that needed it an `error` with the reason, and every other
//! rule is still evaluated.

mod files;
mod mounts;
mod sshd;
mod sysctl;
mod system;

use std::cell::OnceCell;
use std::collections::HashMap;

use kiln_scan::Inventory;
use kiln_scan::rootfs::RootFs;

use crate::profile::{Check, Profile, Rule};
use crate::report::{RuleResult, Source, Status};

pub use sshd::SshdConfig;
pub use sysctl::effective_sysctl;

/// The longest line quoted as evidence.
const EVIDENCE_LINE: usize = 160;
/// How many offending files one rule lists before "and N more".
const EVIDENCE_ITEMS: usize = 10;

/// A check's verdict and what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    pub evidence: Vec<String>,
}

impl Outcome {
    fn new(status: Status, evidence: impl IntoIterator<Item = String>) -> Outcome {
        Outcome { status, evidence: evidence.into_iter().collect() }
    }
    fn pass(e: impl Into<String>) -> Outcome {
        Outcome::new(Status::Pass, [e.into()])
    }
    fn fail(e: impl Into<String>) -> Outcome {
        Outcome::new(Status::Fail, [e.into()])
    }
    fn na(e: impl Into<String>) -> Outcome {
        Outcome::new(Status::NotApplicable, [e.into()])
    }
    fn error(e: impl Into<String>) -> Outcome {
        Outcome::new(Status::Error, [e.into()])
    }
}

/// What the rules read, read once per evaluation.
pub(crate) struct Ctx<'a> {
    pub fs: &'a RootFs,
    inventory: OnceCell<Inventory>,
    users: OnceCell<HashMap<u32, String>>,
    groups: OnceCell<HashMap<u32, String>>,
}

impl<'a> Ctx<'a> {
    pub fn new(fs: &'a RootFs) -> Ctx<'a> {
        Ctx { fs, inventory: OnceCell::new(), users: OnceCell::new(), groups: OnceCell::new() }
    }

    pub fn inventory(&self) -> &Inventory {
        self.inventory.get_or_init(|| Inventory::from_rootfs(self.fs))
    }

    /// Whether the dpkg database was found at all.
    pub fn has_package_db(&self) -> bool {
        !self.inventory().packages.is_empty()
            || !self.inventory().problems.iter().any(|p| p.message.starts_with("no package database"))
    }

    /// The installed version of a package, if installed.
    pub fn installed(&self, name: &str) -> Option<&str> {
        self.inventory().packages.iter().find(|p| p.name == name).map(|p| p.version.as_str())
    }

    /// A user id's name from the image's /etc/passwd.
    pub fn user_name(&self, uid: u32) -> Option<&str> {
        self.users.get_or_init(|| id_names(self.fs, "etc/passwd")).get(&uid).map(String::as_str)
    }

    pub fn group_name(&self, gid: u32) -> Option<&str> {
        self.groups.get_or_init(|| id_names(self.fs, "etc/group")).get(&gid).map(String::as_str)
    }

    /// A file's text; `Ok(None)` when absent.
    pub fn read_text(&self, path: &str) -> Result<Option<String>, String> {
        match self.fs.read(path) {
            Ok(Some(b)) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("cannot read {path}: {e}")),
        }
    }

    /// The paths a pattern names: itself, or for a glob in the last component the matching
    /// names of its directory, sorted. Errors name the directory.
    pub fn expand(&self, pattern: &str) -> Result<Vec<String>, String> {
        let Some((dir, name)) = pattern.rsplit_once('/') else { return Ok(vec![pattern.to_string()]) };
        if !name.contains(['*', '?', '[']) {
            return Ok(vec![pattern.to_string()]);
        }
        let dir = if dir.is_empty() { "/" } else { dir };
        match self.fs.read_dir(dir) {
            Ok(None) => Ok(Vec::new()),
            Ok(Some(names)) => Ok(names
                .into_iter()
                .filter(|n| glob_match(name, n))
                .map(|n| format!("{}/{n}", dir.trim_end_matches('/')))
                .collect()),
            Err(e) => Err(format!("cannot list {dir}: {e}")),
        }
    }
}

/// `name:x:id:...` lines to an id → name map; unreadable or odd lines are skipped (names are
/// only for evidence and for comparing with allowed owners).
fn id_names(fs: &RootFs, path: &str) -> HashMap<u32, String> {
    let text =
        fs.read(path).ok().flatten().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let mut map = HashMap::new();
    for line in text.lines() {
        let mut f = line.split(':');
        if let (Some(name), Some(_), Some(id)) = (f.next(), f.next(), f.next())
            && let Ok(id) = id.parse::<u32>()
        {
            map.entry(id).or_insert_with(|| name.to_string());
        }
    }
    map
}

/// Shell-style matching of one file name: `*`, `?` and `[...]` classes (`[!...]` negated).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn rec(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| rec(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && rec(&p[1..], &n[1..]),
            Some('[') => {
                let Some(end) = p.iter().skip(1).position(|c| *c == ']').map(|i| i + 1) else {
                    return n.first() == Some(&'[') && rec(&p[1..], &n[1..]);
                };
                let Some(c) = n.first() else { return false };
                let class = &p[1..end];
                let (neg, class) = match class.first() {
                    Some('!' | '^') => (true, &class[1..]),
                    _ => (false, class),
                };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        hit |= class[i] <= *c && *c <= class[i + 2];
                        i += 3;
                    } else {
                        hit |= class[i] == *c;
                        i += 1;
                    }
                }
                hit != neg && rec(&p[end + 1..], &n[1..])
            }
            Some(x) => n.first() == Some(x) && rec(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    rec(&p, &n)
}

/// A line shortened for evidence.
pub(crate) fn quote(line: &str) -> String {
    let line = line.trim();
    if line.chars().count() <= EVIDENCE_LINE {
        return line.to_string();
    }
    let cut: String = line.chars().take(EVIDENCE_LINE).collect();
    format!("{cut}…")
}

/// At most [`EVIDENCE_ITEMS`] items, then "and N more".
pub(crate) fn capped(mut items: Vec<String>) -> Vec<String> {
    if items.len() > EVIDENCE_ITEMS {
        let more = items.len() - EVIDENCE_ITEMS;
        items.truncate(EVIDENCE_ITEMS);
        items.push(format!("and {more} more"));
    }
    items
}

/// Evaluates one rule.
pub(crate) fn evaluate_rule(ctx: &Ctx<'_>, rule: &Rule) -> Outcome {
    if let Some(only) = &rule.only_if
        && !only.installed.is_empty()
        && ctx.has_package_db()
        && !only.installed.iter().any(|p| ctx.installed(p).is_some())
    {
        return Outcome::na(format!("{} is not installed", only.installed.join(" or ")));
    }
    match &rule.check {
        Check::FileContent(c) => files::content(ctx, c),
        Check::FilePermissions(c) => files::permissions(ctx, c),
        Check::FileExists(c) => files::exists(ctx, c),
        Check::Package(c) => system::package(ctx, c),
        Check::Service(c) => system::service(ctx, c),
        Check::Sysctl(c) => sysctl::check(ctx, c),
        Check::Mount(c) => mounts::check(ctx, c),
        Check::Sshd(c) => sshd::check(ctx, c),
        Check::KernelModule(c) => system::kernel_module(ctx, c),
    }
}

/// Evaluates every rule of `profile` against the root `fs`.
pub fn evaluate_profile(fs: &RootFs, profile: &Profile) -> Vec<RuleResult> {
    let ctx = Ctx::new(fs);
    profile
        .rules
        .iter()
        .map(|rule| {
            let outcome = evaluate_rule(&ctx, rule);
            RuleResult::from_rule(rule, &profile.id, Source::Kiln, outcome.status, outcome.evidence)
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod testing {
    //! Small trees made to pass and to fail, and a one-rule evaluator.

    use std::path::Path;

    use super::*;

    /// Writes `files` (path, content) under a fresh temporary root.
    pub fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            put(dir.path(), path, content);
        }
        dir
    }

    pub fn put(root: &Path, path: &str, content: &str) {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn link(root: &Path, path: &str, target: &str) {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    /// A dpkg status file listing `packages` as installed.
    pub fn dpkg(packages: &[&str]) -> String {
        packages
            .iter()
            .map(|p| {
                format!("Package: {p}\nStatus: install ok installed\nVersion: 1.0-1\nArchitecture: amd64\n\n")
            })
            .collect()
    }

    /// The outcome of a rule whose check is the YAML `check` (a flow mapping or block text).
    pub fn run(root: &Path, check: &str) -> Outcome {
        let text = format!(
            "id: t\ntitle: T\nrules:\n  - id: r\n    title: R\n    severity: low\n    rationale: x\n    remediation: x\n    references: {{ cis: [x] }}\n    check: {check}\n"
        );
        let profile = Profile::parse("t.yml", &text).unwrap_or_else(|e| panic!("{e}"));
        let fs = RootFs::open(root).unwrap();
        evaluate_rule(&Ctx::new(&fs), &profile.rules[0])
    }

    /// As [`run`], with `onlyIf`.
    pub fn run_only_if(root: &Path, only_if: &str, check: &str) -> Outcome {
        let text = format!(
            "id: t\ntitle: T\nrules:\n  - id: r\n    title: R\n    severity: low\n    rationale: x\n    remediation: x\n    references: {{ cis: [x] }}\n    onlyIf: {only_if}\n    check: {check}\n"
        );
        let profile = Profile::parse("t.yml", &text).unwrap_or_else(|e| panic!("{e}"));
        let fs = RootFs::open(root).unwrap();
        evaluate_rule(&Ctx::new(&fs), &profile.rules[0])
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn globs_match_like_the_shell() {
        assert!(glob_match("*.conf", "99-sysctl.conf"));
        assert!(!glob_match("*.conf", "99-sysctl.conf.dpkg-old"));
        assert!(glob_match("?0-*.conf", "10-x.conf"));
        assert!(glob_match("[0-9]*", "5x"));
        assert!(!glob_match("[!0-9]*", "5x"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn only_if_makes_a_rule_not_applicable() {
        let root = tree(&[("var/lib/dpkg/status", &dpkg(&["bash"]))]);
        let check = "{ fileExists: { path: /etc/ssh/sshd_config } }";
        let o = run_only_if(root.path(), "{ installed: openssh-server }", check);
        assert_eq!(o.status, Status::NotApplicable);
        assert_eq!(o.evidence, ["openssh-server is not installed"]);
        put(root.path(), "var/lib/dpkg/status", &dpkg(&["openssh-server"]));
        assert_eq!(run_only_if(root.path(), "{ installed: openssh-server }", check).status, Status::Fail);
    }
}
