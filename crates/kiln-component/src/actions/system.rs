//! UpdateOS, Reboot and Assert.
//!
//! UpdateOS finds the image's package manager by which program exists in it (apt-get, dnf,
//! yum, zypper, apk, in that order) and runs one bash script through the host:
//! - apt-get: `apt-get update`, then with `include` `apt-get install --only-upgrade` of those
//!   packages, otherwise `apt-get upgrade`; `exclude`d packages that are installed are put on
//!   hold for the upgrade and released afterwards (also when the upgrade fails);
//! - dnf/yum: `upgrade`/`update` with the include list and `--exclude=` for each exclusion;
//! - zypper: `refresh`, then `update` with excluded packages locked for the update;
//! - apk: `update` then `upgrade` (with `include`: `add --upgrade` of those); `exclude` is
//!   refused, apk has no way to leave one package out of an upgrade.
//!
//! A package in both lists is left out, as AWSTOE documents. Package names are checked to be
//! plain names (letters, digits and `.+-_:@*`), so they can go into the script safely.
//!
//! Reboot asks the engine for a reboot after `delaySeconds`, then the *next* step runs.
//! Assert evaluates its condition with the same operators and semantics as a step's `if`
//! (`crate::condition`) and fails the step when it is false.

use kiln_host::FileKind;

use super::exec::run_process;
use super::net::no_network;
use super::util::{Checker, Field, Ty, has_expr, map_item, opt};
use super::{ActionContext, ActionFailure, ActionModule, ActionOutcome, RebootRequest};
use crate::diag::Diagnostic;
use crate::node::{Node, Span};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Apt,
    Dnf,
    Yum,
    Zypper,
    Apk,
}

impl PackageManager {
    /// The package manager of the image, by which program it has.
    pub fn detect(host: &dyn kiln_host::Host) -> Option<PackageManager> {
        let has = |name: &str| {
            ["/usr/bin", "/bin", "/usr/sbin", "/sbin"].iter().any(|d| {
                super::util::follow_links(host, &format!("{d}/{name}"))
                    .ok()
                    .and_then(|p| host.metadata(&p).ok())
                    .is_some_and(|m| m.kind == FileKind::File)
            })
        };
        [
            ("apt-get", PackageManager::Apt),
            ("dnf", PackageManager::Dnf),
            ("yum", PackageManager::Yum),
            ("zypper", PackageManager::Zypper),
            ("apk", PackageManager::Apk),
        ]
        .into_iter()
        .find(|(name, _)| has(name))
        .map(|(_, pm)| pm)
    }

    /// The bash script that updates the image with this package manager.
    pub fn script(self, include: &[String], exclude: &[String]) -> Result<String, String> {
        let include: Vec<&String> = include.iter().filter(|p| !exclude.contains(p)).collect();
        let inc = include.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ");
        let exc = exclude.join(" ");
        let mut s = String::from("set -e\n");
        match self {
            PackageManager::Apt => {
                s.push_str("export DEBIAN_FRONTEND=noninteractive\napt-get update\n");
                let opts = "-y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold";
                if !include.is_empty() {
                    s.push_str(&format!("apt-get install --only-upgrade {opts} {inc}\n"));
                } else {
                    if !exclude.is_empty() {
                        s.push_str(&format!(
                            "held=()\nfor p in {exc}; do\n  if dpkg-query -W -f='${{Status}}' \"$p\" 2>/dev/null | grep -q 'install ok installed'; then held+=(\"$p\"); fi\ndone\n\
                             if [ ${{#held[@]}} -gt 0 ]; then apt-mark hold \"${{held[@]}}\"; trap 'apt-mark unhold \"${{held[@]}}\"' EXIT; fi\n"
                        ));
                    }
                    s.push_str(&format!("apt-get upgrade {opts}\n"));
                }
            }
            PackageManager::Dnf | PackageManager::Yum => {
                let (cmd, verb) =
                    if self == PackageManager::Dnf { ("dnf", "upgrade") } else { ("yum", "update") };
                let excl: String = exclude.iter().map(|e| format!(" --exclude={e}")).collect();
                s.push_str(&format!("{cmd} -y {verb}{excl} {inc}\n"));
            }
            PackageManager::Zypper => {
                s.push_str("zypper --non-interactive refresh\n");
                if !exclude.is_empty() {
                    s.push_str(&format!("zypper --non-interactive addlock {exc}\ntrap 'zypper --non-interactive removelock {exc}' EXIT\n"));
                }
                s.push_str(&format!("zypper --non-interactive update {inc}\n"));
            }
            PackageManager::Apk => {
                if !exclude.is_empty() {
                    return Err(
                        "apk cannot leave packages out of an upgrade; remove `exclude` or use `include`"
                            .into(),
                    );
                }
                s.push_str("apk update\n");
                if include.is_empty() {
                    s.push_str("apk upgrade\n");
                } else {
                    s.push_str(&format!("apk add --upgrade {inc}\n"));
                }
            }
        }
        Ok(s)
    }
}

fn valid_package(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || ".+-_:@*".contains(c))
}

#[derive(Debug)]
pub struct UpdateOS;

const UPDATE_FIELDS: &[Field] = &[opt("include", Ty::StrList), opt("exclude", Ty::StrList)];

impl ActionModule for UpdateOS {
    fn name(&self) -> &'static str {
        "UpdateOS"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        let mut c = Checker { file, module: self.name(), diags };
        let Some(map) = c.map_inputs(step_span, inputs, UPDATE_FIELDS, false) else { return };
        for key in ["include", "exclude"] {
            for item in map.get(key).and_then(Node::as_seq).unwrap_or_default() {
                if let Some(name) = item.as_str().filter(|s| !has_expr(s))
                    && !valid_package(name)
                {
                    c.err(item.span, format!("UpdateOS: `{name}` is not a package name"), None);
                }
            }
        }
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        let item = map_item(self.name(), inputs)?;
        let (include, exclude) = match &item {
            Some(i) => {
                (i.list_opt("include")?.unwrap_or_default(), i.list_opt("exclude")?.unwrap_or_default())
            }
            None => (Vec::new(), Vec::new()),
        };
        if let Some(bad) = include.iter().chain(&exclude).find(|p| !valid_package(p)) {
            return Err(ActionFailure::msg(format!("UpdateOS: `{bad}` is not a package name")));
        }
        if !ctx.host.network_allowed() {
            return Err(no_network(self.name(), "reach the package mirrors to update the operating system"));
        }
        let pm = PackageManager::detect(ctx.host).ok_or_else(|| {
            ActionFailure::msg(
                "UpdateOS: the image has no supported package manager (apt-get, dnf, yum, zypper or apk)",
            )
        })?;
        let script =
            pm.script(&include, &exclude).map_err(|e| ActionFailure::msg(format!("UpdateOS: {e}")))?;
        let mut outcome = run_process(
            ctx,
            self.name(),
            vec!["bash".into(), "-c".into(), script, "UpdateOS".into()],
            &format!("the {pm:?} update"),
        )?;
        // UpdateOS defines no outputs, and a package manager's 194 is not a reboot request.
        outcome.outputs.clear();
        outcome.reboot = None;
        Ok(outcome)
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct Reboot;

const REBOOT_FIELDS: &[Field] = &[opt("delaySeconds", Ty::Int)];

impl ActionModule for Reboot {
    fn name(&self) -> &'static str {
        "Reboot"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        Checker { file, module: self.name(), diags }.map_inputs(step_span, inputs, REBOOT_FIELDS, false);
    }
    fn run(&self, inputs: Option<&Node>, _ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        let delay_seconds = match map_item(self.name(), inputs)? {
            Some(item) => item.u64_or("delaySeconds", 0)?,
            None => 0,
        };
        Ok(ActionOutcome {
            reboot: Some(RebootRequest::ThenContinue { delay_seconds }),
            ..ActionOutcome::default()
        })
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct Assert;

impl ActionModule for Assert {
    fn name(&self) -> &'static str {
        "Assert"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        match inputs.filter(|n| !n.is_null()) {
            None => diags.push(Diagnostic::new(
                file,
                step_span,
                "Assert needs `inputs`: one comparison (e.g. `stringEquals: TEXT` with `value: ...`) or a logical operator",
            )),
            Some(node) if node.as_seq().is_some() => diags.push(
                Diagnostic::new(file, node.span, "Assert `inputs` must be a map holding one condition, found a list")
                    .with_hint("remove the dash; combine several comparisons with `and:`"),
            ),
            Some(node) => {
                let _ = crate::condition::parse_expr(file, node, diags);
            }
        }
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        let node = inputs
            .filter(|n| !n.is_null())
            .ok_or_else(|| ActionFailure::msg("Assert: the step has no inputs"))?;
        let mut diags = Vec::new();
        let expr = crate::condition::parse_expr("inputs", node, &mut diags).ok_or_else(|| {
            let problems: Vec<String> = diags.iter().map(|d| d.message.clone()).collect();
            ActionFailure::msg(format!("Assert: the condition is malformed: {}", problems.join("; ")))
        })?;
        // The engine has rendered the inputs already.
        match expr.evaluate(&|text| Ok(text.to_string()), ctx.host, ctx.working_dir) {
            Ok(true) => Ok(ActionOutcome::default()),
            Ok(false) => Err(ActionFailure::msg(format!("Assert: the assertion is false: {expr}"))),
            Err(e) => Err(ActionFailure::msg(format!("Assert: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_script_holds_exclusions_and_releases_them() {
        let s = PackageManager::Apt.script(&[], &["ec2-hibinit-agent".into()]).unwrap();
        assert!(s.contains("apt-get update"));
        assert!(s.contains("apt-mark hold"));
        assert!(s.contains("trap 'apt-mark unhold"));
        assert!(s.contains("apt-get upgrade -y"));
        let s = PackageManager::Apt.script(&["curl".into(), "vim".into()], &["vim".into()]).unwrap();
        assert!(s.contains("apt-get install --only-upgrade") && s.contains(" curl\n") && !s.contains("vim"));
    }

    #[test]
    fn dnf_yum_zypper_apk() {
        assert!(
            PackageManager::Dnf.script(&[], &["a".into()]).unwrap().contains("dnf -y upgrade --exclude=a")
        );
        assert!(PackageManager::Yum.script(&["b".into()], &[]).unwrap().contains("yum -y update b"));
        assert!(PackageManager::Zypper.script(&[], &["c".into()]).unwrap().contains("addlock c"));
        assert!(PackageManager::Apk.script(&[], &["d".into()]).is_err());
    }

    #[test]
    fn package_names() {
        assert!(valid_package("libc6:amd64"));
        assert!(valid_package("kernel*"));
        assert!(!valid_package("a;rm -rf /"));
        assert!(!valid_package("--force"));
    }
}
