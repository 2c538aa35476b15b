//! The rule model and kiln's profiles.
//!
//! A profile is a YAML document: an `id`, a `title`, optionally `extends` (profiles whose rules
//! come first, such as Level 1 below Level 2) and `rules`. Each rule has an `id`, a `title`, a
//! `severity`, a `rationale`, a `remediation`, `references` (CIS and ANSSI), optionally
//! `onlyIf` (packages that make it applicable) and one typed `check`:
//!
//! ```yaml
//! - id: cis-3.3.1-ip-forwarding-disabled
//!   title: IP forwarding is disabled
//!   severity: medium
//!   rationale: ...
//!   remediation: ...
//!   references: { cis: ["3.1.1"], anssi: ["R12"] }
//!   check:
//!     sysctl: { key: net.ipv4.ip_forward, value: 0 }
//! ```
//!
//! kiln's own profiles are embedded with `include_str!`; a profile may also be a file given by
//! path. Both are read by the same code, so an embedded profile has the same checks as a
//! user's, and every mistake is a `FILE:LINE:COLUMN` diagnostic.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use kiln_component::diag::Diagnostic;
use kiln_component::node::Node;
use serde::{Deserialize, Serialize};

use crate::ComplianceError;
use crate::yamlish::{self, Seg, text};

/// kiln's built-in profiles: `(name, YAML)`.
pub const BUILTIN: &[(&str, &str)] = &[
    ("cis-level1", include_str!("../profiles/cis-level1.yml")),
    ("cis-level2", include_str!("../profiles/cis-level2.yml")),
    ("anssi-minimal", include_str!("../profiles/anssi-minimal.yml")),
    ("anssi-intermediary", include_str!("../profiles/anssi-intermediary.yml")),
    ("anssi-enhanced", include_str!("../profiles/anssi-enhanced.yml")),
];

/// The names of kiln's built-in profiles.
pub fn profile_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, _)| *n)
}

/// How much a failed rule matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("`{s}` is not a severity: use low, medium, high or critical"))
    }
}

/// A rule's references in the benchmarks it comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct References {
    /// CIS Debian Linux Benchmark recommendation numbers (`1.1.1.1`).
    #[serde(default, deserialize_with = "text::many", skip_serializing_if = "Vec::is_empty")]
    pub cis: Vec<String>,
    /// ANSSI GNU/Linux configuration recommendations (`R12`).
    #[serde(default, deserialize_with = "text::many", skip_serializing_if = "Vec::is_empty")]
    pub anssi: Vec<String>,
}

/// When a rule applies at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnlyIf {
    /// The rule applies when at least one of these packages is installed.
    #[serde(default, deserialize_with = "text::many")]
    pub installed: Vec<String>,
}

/// One rule of a profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    pub title: String,
    pub severity: Severity,
    pub rationale: String,
    pub remediation: String,
    #[serde(default)]
    pub references: References,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_if: Option<OnlyIf>,
    pub check: Check,
}

/// What a check does when the file it reads is not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    Pass,
    Fail,
    NotApplicable,
}

/// A numeric comparison on the first capture group of a matched line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    pub fn holds(self, a: i64, b: i64) -> bool {
        match self {
            Op::Eq => a == b,
            Op::Ne => a != b,
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "≠",
            Op::Lt => "<",
            Op::Le => "≤",
            Op::Gt => ">",
            Op::Ge => "≥",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Compare {
    pub op: Op,
    pub value: i64,
}

/// The typed check of a rule; the YAML key names the kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Check {
    FileContent(FileContent),
    FilePermissions(FilePermissions),
    FileExists(FileExists),
    Package(PackageCheck),
    Service(ServiceCheck),
    Sysctl(SysctlCheck),
    Mount(MountCheck),
    Sshd(SshdCheck),
    KernelModule(KernelModuleCheck),
}

impl Check {
    /// The YAML name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Check::FileContent(_) => "fileContent",
            Check::FilePermissions(_) => "filePermissions",
            Check::FileExists(_) => "fileExists",
            Check::Package(_) => "package",
            Check::Service(_) => "service",
            Check::Sysctl(_) => "sysctl",
            Check::Mount(_) => "mount",
            Check::Sshd(_) => "sshd",
            Check::KernelModule(_) => "kernelModule",
        }
    }
}

/// Lines of files (comment lines skipped) must, or must not, match a regular expression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileContent {
    /// Absolute paths; the last component may be a glob (`/etc/sysctl.d/*.conf`).
    #[serde(deserialize_with = "text::many")]
    pub path: Vec<String>,
    /// Some line must match; with `compare`, the last matching line's first group decides.
    #[serde(default, deserialize_with = "text::opt")]
    pub must_match: Option<String>,
    /// No line may match.
    #[serde(default, deserialize_with = "text::opt")]
    pub must_not_match: Option<String>,
    #[serde(default)]
    pub compare: Option<Compare>,
    /// When none of the files exists: default `fail` with `mustMatch`, `pass` otherwise.
    #[serde(default)]
    pub missing: Option<Missing>,
    /// Lines whose first non-blank character is `#` are skipped (default true).
    #[serde(default = "yes")]
    pub skip_comments: bool,
}

fn yes() -> bool {
    true
}

/// Mode, owner and group of files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilePermissions {
    /// Absolute paths; the last component may be a glob.
    #[serde(default, deserialize_with = "text::many")]
    pub path: Vec<String>,
    /// Every file below this directory (recursively, symlinks not followed) whose name
    /// matches `pattern`.
    #[serde(default, deserialize_with = "text::opt")]
    pub under: Option<String>,
    #[serde(default, deserialize_with = "text::opt")]
    pub pattern: Option<String>,
    /// No permission bit beyond these (octal, such as `0640`).
    #[serde(default, deserialize_with = "text::opt")]
    pub max_mode: Option<String>,
    /// Allowed owners (user names, or numeric ids).
    #[serde(default, deserialize_with = "text::many")]
    pub owner: Vec<String>,
    /// Allowed groups.
    #[serde(default, deserialize_with = "text::many")]
    pub group: Vec<String>,
    /// When nothing is found: default `notapplicable`.
    #[serde(default)]
    pub missing: Option<Missing>,
}

/// A file must be present, or absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileExists {
    #[serde(deserialize_with = "text::one")]
    pub path: String,
    #[serde(default = "present")]
    pub expect: Presence,
}

fn present() -> Presence {
    Presence::Present
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Present,
    Absent,
}

/// Packages installed (at least one of `name`) or absent (none of them), from the dpkg database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackageCheck {
    #[serde(deserialize_with = "text::many")]
    pub name: Vec<String>,
    pub state: PackageState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageState {
    Installed,
    Absent,
}

/// systemd units enabled (at least one of `unit`), disabled (none enabled) or masked (each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceCheck {
    #[serde(deserialize_with = "text::many")]
    pub unit: Vec<String>,
    pub state: ServiceState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Enabled,
    Disabled,
    Masked,
}

/// The value a kernel parameter gets at boot from the sysctl configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SysctlCheck {
    #[serde(deserialize_with = "text::one")]
    pub key: String,
    #[serde(deserialize_with = "text::one")]
    pub value: String,
    /// The kernel's value when no file sets the key (the rule passes if it is `value`).
    #[serde(default, deserialize_with = "text::opt")]
    pub default: Option<String>,
}

/// A mount point in /etc/fstab (or a mount unit): a separate file system, with options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MountCheck {
    #[serde(deserialize_with = "text::one")]
    pub mount_point: String,
    /// The mount point must be a separate file system (else the rule is not applicable when
    /// it is not one).
    #[serde(default)]
    pub separate: bool,
    #[serde(default, deserialize_with = "text::many")]
    pub options: Vec<String>,
}

/// The effective value of an sshd option (first value wins, `Include`s followed, defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshdCheck {
    #[serde(deserialize_with = "text::one")]
    pub option: String,
    /// sshd's built-in value when no file sets the option.
    #[serde(default, deserialize_with = "text::opt")]
    pub default: Option<String>,
    /// The value must be one of these (case-insensitive).
    #[serde(default, deserialize_with = "text::many")]
    pub one_of: Vec<String>,
    /// A number at most / at least this.
    #[serde(default)]
    pub max: Option<i64>,
    #[serde(default)]
    pub min: Option<i64>,
    /// A comma-separated list (Ciphers, MACs, KexAlgorithms) must hold none of these.
    #[serde(default, deserialize_with = "text::many")]
    pub none_of: Vec<String>,
}

/// A kernel module that must not load: `install MODULE /bin/false` (or `true`) or
/// `blacklist MODULE` in modprobe.d.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelModuleCheck {
    #[serde(deserialize_with = "text::one")]
    pub module: String,
}

/// The document of a profile file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileDoc {
    id: String,
    title: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, deserialize_with = "text::many")]
    extends: Vec<String>,
    #[serde(default)]
    rules: Vec<Rule>,
}

/// A profile with the rules of the profiles it extends, in order (theirs first).
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub id: String,
    pub title: String,
    pub description: Option<String>,
    pub extends: Vec<String>,
    pub rules: Vec<Arc<Rule>>,
}

impl Profile {
    /// One of kiln's built-in profiles by name.
    pub fn builtin(name: &str) -> Option<Result<Profile, ComplianceError>> {
        let (n, text) = BUILTIN.iter().find(|(n, _)| *n == name)?;
        Some(load(&format!("<built-in profile {n}>"), text, &mut Vec::new()))
    }

    /// A profile file given by path (`extends` may name built-in profiles).
    pub fn from_file(path: &Path) -> Result<Profile, ComplianceError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ComplianceError::InvalidProfile(vec![Diagnostic::new(
                &name,
                Default::default(),
                format!("cannot read the profile file: {e}"),
            )])
        })?;
        load(&name, &text, &mut Vec::new())
    }

    /// Parses profile text named `file` (for tests and tools).
    pub fn parse(file: &str, text: &str) -> Result<Profile, ComplianceError> {
        load(file, text, &mut Vec::new())
    }

    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id).map(|r| &**r)
    }
}

/// `chain` holds the profiles being loaded, to refuse `extends` cycles.
fn load(file: &str, text: &str, chain: &mut Vec<String>) -> Result<Profile, ComplianceError> {
    let (doc, root) = yamlish::parse::<ProfileDoc>(file, text).map_err(ComplianceError::InvalidProfile)?;
    let mut diags = check_doc(file, &root, &doc);
    let mut rules: Vec<Arc<Rule>> = Vec::new();
    chain.push(doc.id.clone());
    for (i, parent) in doc.extends.iter().enumerate() {
        let span = yamlish::span_at(&root, &[Seg::Key("extends"), Seg::Index(i)]);
        if chain.contains(parent) {
            diags.push(Diagnostic::new(
                file,
                span,
                format!("profile `{}` extends `{parent}`, which extends it back", doc.id),
            ));
            continue;
        }
        let Some((n, text)) = BUILTIN.iter().find(|(n, _)| n == parent) else {
            let mut d = Diagnostic::new(
                file,
                span,
                format!(
                    "`extends` names `{parent}`, which is not a kiln profile; kiln's profiles are {}",
                    profile_names().collect::<Vec<_>>().join(", ")
                ),
            );
            if let Some(s) = kiln_component::diag::suggest(parent, profile_names()) {
                d = d.with_hint(format!("did you mean `{s}`?"));
            }
            diags.push(d);
            continue;
        };
        match load(&format!("<built-in profile {n}>"), text, chain) {
            Ok(p) => {
                for r in p.rules {
                    if !rules.iter().any(|x| x.id == r.id) {
                        rules.push(r);
                    }
                }
            }
            Err(ComplianceError::InvalidProfile(d)) => diags.extend(d),
            Err(e) => return Err(e),
        }
    }
    chain.pop();
    for (i, r) in doc.rules.iter().enumerate() {
        if rules.iter().any(|x| x.id == r.id) {
            diags.push(Diagnostic::new(
                file,
                yamlish::span_at(&root, &[Seg::Key("rules"), Seg::Index(i), Seg::Key("id")]),
                format!("rule `{}` is already defined by a profile this one extends", r.id),
            ));
        }
    }
    if !diags.is_empty() {
        diags.sort_by_key(|d| (d.line, d.column));
        return Err(ComplianceError::InvalidProfile(diags));
    }
    rules.extend(doc.rules.into_iter().map(Arc::new));
    Ok(Profile { id: doc.id, title: doc.title, description: doc.description, extends: doc.extends, rules })
}

/// Checks serde cannot make: unique ids, regular expressions, paths, modes, comparisons.
fn check_doc(file: &str, root: &Node, doc: &ProfileDoc) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, r) in doc.rules.iter().enumerate() {
        let at = |field: &[&str]| {
            let mut path = vec![Seg::Key("rules"), Seg::Index(i)];
            path.extend(field.iter().map(|f| Seg::Key(f)));
            yamlish::span_at(root, &path)
        };
        let mut bad = |field: &[&str], message: String| diags.push(Diagnostic::new(file, at(field), message));
        if r.id.trim().is_empty() || r.id.contains(char::is_whitespace) {
            bad(&["id"], format!("rule id `{}` must be one word (letters, digits, `.`, `-`)", r.id));
        }
        if !seen.insert(r.id.clone()) {
            bad(&["id"], format!("rule id `{}` is used twice in this profile", r.id));
        }
        for (field, value) in
            [("title", &r.title), ("rationale", &r.rationale), ("remediation", &r.remediation)]
        {
            if value.trim().is_empty() {
                bad(&[field], format!("rule `{}` has an empty {field}", r.id));
            }
        }
        let kind = r.check.kind();
        let check = |f: &'static str| vec!["check", kind, f];
        let abs = |p: &str| p.starts_with('/') && !p.split('/').any(|c| c == "..");
        let glob_ok = |p: &str| {
            let dir = p.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            !dir.contains(['*', '?', '['])
        };
        let path_problem = |field: &'static str, p: &str, diags_field: &mut dyn FnMut(&[&str], String)| {
            if !abs(p) {
                diags_field(&check(field), format!("`{p}` must be an absolute path without `..`"));
            } else if !glob_ok(p) {
                diags_field(&check(field), format!("`{p}`: only the last component of a path may be a glob"));
            }
        };
        match &r.check {
            Check::FileContent(c) => {
                for p in &c.path {
                    path_problem("path", p, &mut bad);
                }
                if c.must_match.is_none() && c.must_not_match.is_none() {
                    bad(&check("path"), "a fileContent check needs `mustMatch` or `mustNotMatch`".into());
                }
                for (field, re) in [("mustMatch", &c.must_match), ("mustNotMatch", &c.must_not_match)] {
                    if let Some(re) = re
                        && let Err(e) = regex::Regex::new(re)
                    {
                        bad(&check(field), format!("not a regular expression: {e}"));
                    }
                }
                if c.compare.is_some() {
                    let groups = c.must_match.as_deref().and_then(|re| regex::Regex::new(re).ok());
                    if groups.is_none_or(|g| g.captures_len() < 2) {
                        bad(&check("compare"), "`compare` needs a `mustMatch` with a capture group".into());
                    }
                }
            }
            Check::FilePermissions(c) => {
                for p in &c.path {
                    path_problem("path", p, &mut bad);
                }
                if let Some(u) = &c.under
                    && (!abs(u) || u.contains(['*', '?', '[']))
                {
                    bad(&check("under"), format!("`{u}` must be an absolute directory path without globs"));
                }
                if c.path.is_empty() == c.under.is_none() {
                    bad(
                        &check("path"),
                        "a filePermissions check needs exactly one of `path` and `under`".into(),
                    );
                }
                if let Some(m) = &c.max_mode
                    && parse_mode(m).is_none()
                {
                    bad(&check("maxMode"), format!("`{m}` is not an octal mode such as 0640"));
                }
                if c.max_mode.is_none() && c.owner.is_empty() && c.group.is_empty() {
                    bad(&check("path"), "a filePermissions check needs `maxMode`, `owner` or `group`".into());
                }
            }
            Check::FileExists(c) => path_problem("path", &c.path, &mut bad),
            Check::Package(c) if c.name.is_empty() => bad(&check("name"), "name at least one package".into()),
            Check::Service(c) if c.unit.is_empty() => bad(&check("unit"), "name at least one unit".into()),
            Check::Service(c) => {
                for u in &c.unit {
                    if !u.contains('.') || u.contains('/') {
                        bad(&check("unit"), format!("`{u}` is not a unit name such as auditd.service"));
                    }
                }
            }
            Check::Sysctl(c) if c.key.trim().is_empty() => bad(&check("key"), "the key is empty".into()),
            Check::Mount(c) if !abs(&c.mount_point) => {
                bad(&check("mountPoint"), format!("`{}` must be an absolute path", c.mount_point))
            }
            Check::Mount(c) if !c.separate && c.options.is_empty() => {
                bad(&check("mountPoint"), "a mount check needs `separate: true` or `options`".into())
            }
            Check::Sshd(c) => {
                if c.option.trim().is_empty() || c.option.contains(char::is_whitespace) {
                    bad(&check("option"), format!("`{}` is not an sshd option name", c.option));
                }
                if c.one_of.is_empty() && c.max.is_none() && c.min.is_none() && c.none_of.is_empty() {
                    bad(&check("option"), "an sshd check needs `oneOf`, `max`, `min` or `noneOf`".into());
                }
            }
            Check::KernelModule(c) if c.module.trim().is_empty() => {
                bad(&check("module"), "the module name is empty".into())
            }
            _ => {}
        }
    }
    diags
}

/// An octal mode (`0640`, `640`, `0o640`).
pub fn parse_mode(s: &str) -> Option<u32> {
    let s = s.trim();
    let s = s.strip_prefix("0o").unwrap_or(s);
    if s.is_empty() || s.len() > 5 {
        return None;
    }
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_loads_with_its_parents() {
        let mut counts = std::collections::BTreeMap::new();
        for name in profile_names() {
            let p = Profile::builtin(name).unwrap().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(p.id, name);
            counts.insert(name, p.rules.len());
            let ids: BTreeSet<&str> = p.rules.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids.len(), p.rules.len(), "{name}: duplicate rule ids");
            for r in &p.rules {
                assert!(
                    !r.references.cis.is_empty() || !r.references.anssi.is_empty(),
                    "{name}: rule {} has no reference",
                    r.id
                );
            }
        }
        assert!(counts["cis-level1"] >= 40, "{counts:?}");
        assert!(counts["cis-level2"] > counts["cis-level1"], "{counts:?}");
        assert!(counts["anssi-intermediary"] > counts["anssi-minimal"], "{counts:?}");
        assert!(counts["anssi-enhanced"] > counts["anssi-intermediary"], "{counts:?}");
        let l2 = Profile::builtin("cis-level2").unwrap().unwrap();
        assert_eq!(l2.rules[0].id, Profile::builtin("cis-level1").unwrap().unwrap().rules[0].id);
        // Every kind of check is used by kiln's own profiles.
        let kinds: BTreeSet<&str> = profile_names()
            .flat_map(|n| Profile::builtin(n).unwrap().unwrap().rules)
            .map(|r| r.check.kind())
            .collect();
        assert_eq!(kinds.len(), 9, "{kinds:?}");
    }

    fn err(text: &str) -> String {
        Profile::parse("p.yml", text).unwrap_err().to_string()
    }

    const ONE: &str = "id: mine
title: Mine
rules:
  - id: r1
    title: IP forwarding is off
    severity: high
    rationale: Routers route, servers serve.
    remediation: Set it to 0.
    references: { cis: [3.1.1] }
    check:
      sysctl: { key: net.ipv4.ip_forward, value: 0 }
";

    #[test]
    fn mistakes_are_positioned_with_a_hint() {
        let p = Profile::parse("p.yml", ONE).unwrap();
        assert_eq!(p.rules[0].references.cis, ["3.1.1"]);
        let Check::Sysctl(c) = &p.rules[0].check else { panic!() };
        assert_eq!(c.value, "0", "numbers are read as text");

        let e = err(&ONE.replace("severity: high", "severity: hihg"));
        assert!(e.starts_with("p.yml:6:15: `rules[0].severity`: unknown variant `hihg`"), "{e}");
        assert!(e.contains("did you mean `high`?"), "{e}");
        let e = err(&ONE.replace("sysctl:", "sysctll:"));
        assert!(e.starts_with("p.yml:11:7:") && e.contains("did you mean `sysctl`?"), "{e}");
        let e = err(&ONE.replace("    rationale:", "    rationle:"));
        assert!(e.starts_with("p.yml:7:5:") && e.contains("did you mean `rationale`?"), "{e}");
        let e = err(&ONE
            .replace("title: IP", "title: ''\n    x: IP")
            .replace("    x: IP forwarding is off\n", ""));
        assert!(e.contains("rule `r1` has an empty title"), "{e}");
        let e = err(&format!("{ONE}{}", &ONE[ONE.find("  - id").unwrap()..]));
        assert!(e.starts_with("p.yml:12:9: rule id `r1` is used twice"), "{e}");
        let e = err(&ONE.replace(
            "sysctl: { key: net.ipv4.ip_forward, value: 0 }",
            "fileContent: { path: etc/x, mustMatch: '(' }",
        ));
        assert!(e.contains("`etc/x` must be an absolute path"), "{e}");
        assert!(e.contains("not a regular expression"), "{e}");
        let e = err(&ONE.replace(
            "sysctl: { key: net.ipv4.ip_forward, value: 0 }",
            "filePermissions: { path: /etc/*/x, maxMode: 0999 }",
        ));
        assert!(e.contains("only the last component") && e.contains("`0999` is not an octal mode"), "{e}");
        let e = err(&ONE.replace("rules:", "extends: [cis-levl1]\nrules:"));
        assert!(e.contains("not a kiln profile") && e.contains("did you mean `cis-level1`?"), "{e}");
    }

    #[test]
    fn extends_brings_the_parents_rules_first_and_refuses_duplicates() {
        let p = Profile::parse("p.yml", &ONE.replace("rules:", "extends: cis-level1\nrules:")).unwrap();
        let l1 = Profile::builtin("cis-level1").unwrap().unwrap();
        assert_eq!(p.rules.len(), l1.rules.len() + 1);
        assert_eq!(p.rules.last().unwrap().id, "r1");
        let first = &l1.rules[0].id;
        let e = err(&ONE
            .replace("rules:", "extends: cis-level1\nrules:")
            .replace("- id: r1", &format!("- id: {first}")));
        assert!(e.contains("is already defined by a profile this one extends"), "{e}");
    }

    #[test]
    fn modes_parse_as_octal() {
        assert_eq!(parse_mode("0640"), Some(0o640));
        assert_eq!(parse_mode("600"), Some(0o600));
        assert_eq!(parse_mode("0o4755"), Some(0o4755));
        assert_eq!(parse_mode("0800"), None);
        assert_eq!(parse_mode(""), None);
    }
}
