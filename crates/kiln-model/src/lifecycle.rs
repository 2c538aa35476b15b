//! Lifecycle policies: which images to deprecate, disable or delete, with the shape of Image
//! Builder's `CreateLifecyclePolicy` request (`policyDetails` with an action, a filter by age or
//! count and exclusion rules; `resourceSelection` by recipe or tag). Read from YAML or JSON with
//! every error at `FILE:LINE:COLUMN`. What a policy does to a catalogue is planned elsewhere
//! (kiln-build); this module only describes and checks it.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_component::diag::Diagnostic;
use kiln_component::node::Span;
use kiln_component::typed::{Seg, span_at};
use serde::{Deserialize, Serialize};

use crate::version::VersionFilter;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LifecyclePolicy {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A DISABLED policy plans nothing.
    #[serde(default)]
    pub status: PolicyStatus,
    /// Accepted for the API's shape; kiln acts as itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_role: Option<String>,
    #[serde(default)]
    pub resource_type: ResourceType,
    pub policy_details: Vec<PolicyDetail>,
    pub resource_selection: ResourceSelection,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PolicyStatus {
    #[default]
    Enabled,
    Disabled,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResourceType {
    #[default]
    AmiImage,
    /// Refused by the checks: kiln makes VM images only.
    ContainerImage,
}

/// One rule: an action on the images its filter matches, unless an exclusion rule keeps them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyDetail {
    pub action: Action,
    pub filter: Filter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusion_rules: Option<ExclusionRules>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Action {
    #[serde(rename = "type")]
    pub kind: ActionType,
    /// Accepted for the API's shape (AMIs, snapshots, containers): kiln always acts on the
    /// whole image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_resources: Option<serde_json::Value>,
}

/// The actions, mildest first: an image only ever moves forward through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActionType {
    Deprecate,
    Disable,
    Delete,
}

impl ActionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionType::Deprecate => "DEPRECATE",
            ActionType::Disable => "DISABLE",
            ActionType::Delete => "DELETE",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filter {
    #[serde(rename = "type")]
    pub kind: FilterType,
    /// AGE: how old (in `unit`s) an image must be; COUNT: how many of the newest images of a
    /// name are kept.
    pub value: u32,
    /// AGE only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<TimeUnit>,
    /// AGE only: the newest images of a name kept whatever their age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_at_least: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FilterType {
    Age,
    Count,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TimeUnit {
    Days,
    Weeks,
    Months,
    Years,
}

impl TimeUnit {
    /// The unit in days: a month is 30 days and a year 365 (calendar-free, so ages compare
    /// the same whatever the date).
    pub fn days(self) -> i64 {
        match self {
            TimeUnit::Days => 1,
            TimeUnit::Weeks => 7,
            TimeUnit::Months => 30,
            TimeUnit::Years => 365,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TimeUnit::Days => "DAYS",
            TimeUnit::Weeks => "WEEKS",
            TimeUnit::Months => "MONTHS",
            TimeUnit::Years => "YEARS",
        }
    }
}

/// Images a rule leaves alone.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExclusionRules {
    /// Images with any of these tags (key and value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_map: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amis: Option<AmiExclusionRules>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AmiExclusionRules {
    /// Public images (launch permission `all`).
    #[serde(default)]
    pub is_public: bool,
    /// Images distributed to any of these regions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Images shared with any of these accounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_accounts: Vec<String>,
    /// Images launched within this period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_launched: Option<Period>,
    /// Images with any of these tags (key and value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_map: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Period {
    pub value: u32,
    pub unit: TimeUnit,
}

/// Which images the policy looks at: those of the recipes named, and those with any of the
/// tags.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceSelection {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipes: Vec<RecipeSelection>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_map: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecipeSelection {
    pub name: String,
    /// An exact version or a filter with `x` wildcards (`1.x.x`).
    pub semantic_version: String,
}

/// Read and check a lifecycle policy file (YAML or JSON).
pub fn load_lifecycle_policy(path: &Path) -> Result<LifecyclePolicy, Vec<Diagnostic>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic::new(&name, Span::default(), format!("cannot read the lifecycle policy: {e}"))]
    })?;
    parse_lifecycle_policy(&name, &text)
}

/// Parse and check lifecycle policy text named `file`.
pub fn parse_lifecycle_policy(file: &str, text: &str) -> Result<LifecyclePolicy, Vec<Diagnostic>> {
    let root = kiln_component::yaml::parse(file, text)?;
    if root.as_map().is_none() {
        return Err(vec![Diagnostic::new(
            file,
            root.span,
            "a lifecycle policy is a map with `name`, `policyDetails` and `resourceSelection`",
        )]);
    }
    let policy: LifecyclePolicy = kiln_component::typed::deserialize(
        file,
        &root,
        Some("the lifecycle policy"),
        Some("see examples/lifecycle/ for a complete policy"),
    )?;
    let mut diags: Vec<Diagnostic> = policy
        .problems()
        .into_iter()
        .map(|p| {
            let segs: Vec<Seg<'_>> = p
                .path
                .iter()
                .map(|m| match m {
                    Member::Key(k) => Seg::Key(k.as_str()),
                    Member::Index(i) => Seg::Index(*i),
                })
                .collect();
            let mut d = Diagnostic::new(file, span_at(&root, &segs), p.message);
            d.hint = p.hint;
            d
        })
        .collect();
    diags.sort_by_key(|d| (d.line, d.column));
    if diags.is_empty() { Ok(policy) } else { Err(diags) }
}

/// Reads a policy from the JSON of an API request (the members of `CreateLifecyclePolicy`
/// that a policy has, and no other) and checks it as [`parse_lifecycle_policy`] does. There
/// are no positions in a request, so each problem names its member instead.
pub fn lifecycle_policy_from_json(value: serde_json::Value) -> Result<LifecyclePolicy, Vec<Problem>> {
    let policy: LifecyclePolicy = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(Member::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(Member::Index(*index)),
                _ => None,
            })
            .collect();
        vec![Problem { path, message: e.into_inner().to_string(), hint: None }]
    })?;
    let problems = policy.problems();
    if problems.is_empty() { Ok(policy) } else { Err(problems) }
}

/// One step of the path to a member of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Key(String),
    Index(usize),
}

/// A mistake in a policy, at the member it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: Vec<Member>,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    fn at(path: &[Member], message: impl Into<String>) -> Problem {
        Problem { path: path.to_vec(), message: message.into(), hint: None }
    }

    fn with_hint(mut self, hint: &str) -> Problem {
        self.hint = Some(hint.to_owned());
        self
    }

    /// The member as the API names it: `policyDetails[0].filter.value` (`.` for the policy
    /// itself).
    pub fn member(&self) -> String {
        let mut out = String::new();
        for m in &self.path {
            match m {
                Member::Key(k) if out.is_empty() => out.push_str(k),
                Member::Key(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Member::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        if out.is_empty() { ".".into() } else { out }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.member(), self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

fn key(k: &str) -> Member {
    Member::Key(k.to_owned())
}

/// `value` within Image Builder's limits `min..=max` for the member at `path`.
fn check_range(out: &mut Vec<Problem>, path: &[Member], value: u32, min: u32, max: u32) {
    if value < min {
        out.push(Problem::at(path, format!("the value must be at least {min}")));
    } else if value > max {
        out.push(Problem::at(path, format!("the value must be at most {max} (Image Builder's limit)")));
    }
}

impl LifecyclePolicy {
    /// What serde does not check: rules that conflict, values out of Image Builder's ranges,
    /// a policy that selects nothing. Empty when the policy is good.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.name.trim().is_empty() {
            out.push(Problem::at(&[key("name")], "the policy name is empty"));
        }
        if self.resource_type == ResourceType::ContainerImage {
            out.push(Problem::at(&[key("resourceType")], "kiln makes VM images only: use `AMI_IMAGE`"));
        }
        if self.policy_details.is_empty() {
            out.push(Problem::at(&[key("policyDetails")], "the policy has no rule"));
        }
        for (i, d) in self.policy_details.iter().enumerate() {
            let rule = |fields: &[&str]| {
                let mut p = vec![key("policyDetails"), Member::Index(i)];
                p.extend(fields.iter().map(|f| key(f)));
                p
            };
            if self.policy_details[..i].iter().any(|o| o.action.kind == d.action.kind) {
                out.push(
                    Problem::at(
                        &rule(&["action", "type"]),
                        format!("a second {} rule: each action has one rule", d.action.kind.as_str()),
                    )
                    .with_hint("merge the two rules"),
                );
            }
            let f = &d.filter;
            check_range(&mut out, &rule(&["filter", "value"]), f.value, 1, 1000);
            if let Some(n) = f.retain_at_least {
                check_range(&mut out, &rule(&["filter", "retainAtLeast"]), n, 1, 10);
            }
            match f.kind {
                FilterType::Age if f.unit.is_none() => out.push(
                    Problem::at(&rule(&["filter"]), "an AGE filter needs a `unit`")
                        .with_hint("DAYS, WEEKS, MONTHS or YEARS"),
                ),
                FilterType::Count if f.unit.is_some() => out.push(Problem::at(
                    &rule(&["filter", "unit"]),
                    "a COUNT filter has no unit: `value` is how many of the newest images are kept",
                )),
                FilterType::Count if f.retain_at_least.is_some() => out.push(Problem::at(
                    &rule(&["filter", "retainAtLeast"]),
                    "`retainAtLeast` goes with an AGE filter: a COUNT filter keeps `value` images already",
                )),
                _ => {}
            }
            if let Some(amis) = d.exclusion_rules.as_ref().and_then(|e| e.amis.as_ref()) {
                if let Some(bad) = amis.shared_accounts.iter().find(|a| !crate::is_account_id(a)) {
                    out.push(Problem::at(
                        &rule(&["exclusionRules", "amis", "sharedAccounts"]),
                        format!("`{bad}` is not an account id (twelve digits)"),
                    ));
                }
                if let Some(period) = amis.last_launched {
                    check_range(
                        &mut out,
                        &rule(&["exclusionRules", "amis", "lastLaunched", "value"]),
                        period.value,
                        1,
                        365,
                    );
                }
            }
        }
        let sel = &self.resource_selection;
        if sel.recipes.is_empty() && sel.tag_map.is_empty() {
            out.push(
                Problem::at(&[key("resourceSelection")], "the policy selects no image")
                    .with_hint("name `recipes` (name and semanticVersion) or a `tagMap`"),
            );
        }
        if sel.recipes.len() > 50 {
            out.push(Problem::at(
                &[key("resourceSelection"), key("recipes")],
                "at most 50 recipes (Image Builder's limit)",
            ));
        }
        for (i, r) in sel.recipes.iter().enumerate() {
            if let Err(e) = VersionFilter::parse(&r.semantic_version) {
                out.push(Problem::at(
                    &[key("resourceSelection"), key("recipes"), Member::Index(i), key("semanticVersion")],
                    e.to_string(),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
name: web-retention
policyDetails:
  - action: { type: DEPRECATE }
    filter: { type: COUNT, value: 3 }
  - action: { type: DELETE }
    filter: { type: AGE, value: 90, unit: DAYS, retainAtLeast: 2 }
    exclusionRules:
      amis:
        tagMap: { keep: "true" }
        lastLaunched: { value: 2, unit: WEEKS }
resourceSelection:
  recipes:
    - { name: web, semanticVersion: 1.x.x }
"#;

    fn errors(text: &str) -> Vec<String> {
        parse_lifecycle_policy("p.yml", text).unwrap_err().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn reads_yaml_and_json() {
        let p = parse_lifecycle_policy("p.yml", POLICY).unwrap();
        assert_eq!(p.policy_details.len(), 2);
        assert_eq!(p.policy_details[1].filter.retain_at_least, Some(2));
        assert_eq!(p.status, PolicyStatus::Enabled);
        let json = r#"{"name": "j", "policyDetails": [{"action": {"type": "DISABLE"},
            "filter": {"type": "AGE", "value": 2, "unit": "MONTHS"}}],
            "resourceSelection": {"tagMap": {"env": "dev"}}}"#;
        let p = parse_lifecycle_policy("p.json", json).unwrap();
        assert_eq!(p.policy_details[0].filter.unit.map(TimeUnit::days), Some(30));
    }

    #[test]
    fn mistakes_point_at_the_field() {
        let e = errors(&POLICY.replace("type: DELETE", "type: DELET"));
        assert!(e[0].starts_with("p.yml:6:21: "), "{e:?}");
        assert!(e[0].contains("DELETE"), "{e:?}");
        let e = errors(&POLICY.replace("unit: DAYS, ", ""));
        assert!(e[0].starts_with("p.yml:7:13: ") && e[0].contains("needs a `unit`"), "{e:?}");
        let e = errors(&POLICY.replace("type: COUNT, value: 3", "type: COUNT, value: 3, unit: DAYS"));
        assert!(e[0].contains("COUNT filter has no unit"), "{e:?}");
        let e = errors(&POLICY.replace("1.x.x", "1.x.2"));
        assert!(e[0].starts_with("p.yml:14:"), "{e:?}");
        let e = errors(&POLICY.replace("type: DEPRECATE", "type: DELETE"));
        assert!(e.iter().any(|m| m.contains("a second DELETE rule")), "{e:?}");
        let e = errors("name: x\npolicyDetails: []\nresourceSelection: {}\n");
        assert_eq!(e.len(), 2, "{e:?}");
        let e = errors(&POLICY.replace("value: 90", "value: 1001"));
        assert!(e[0].starts_with("p.yml:7:33: ") && e[0].contains("at most 1000"), "{e:?}");
    }

    #[test]
    fn api_json_problems_name_their_member() {
        let good = serde_json::json!({"name": "j", "policyDetails": [{"action": {"type": "DISABLE"},
            "filter": {"type": "AGE", "value": 2, "unit": "MONTHS"}}],
            "resourceSelection": {"tagMap": {"env": "dev"}}});
        assert_eq!(lifecycle_policy_from_json(good.clone()).unwrap().policy_details.len(), 1);
        let problems = |v: serde_json::Value| -> Vec<String> {
            lifecycle_policy_from_json(v).unwrap_err().iter().map(ToString::to_string).collect()
        };
        let mut bad = good.clone();
        bad["policyDetails"][0]["filter"]["type"] = "SIZE".into();
        let e = problems(bad);
        assert!(e[0].starts_with("`policyDetails[0].filter.type`: unknown variant `SIZE`"), "{e:?}");
        let mut bad = good.clone();
        bad["policyDetails"][0]["filter"] = serde_json::json!({"type": "COUNT", "value": 0});
        assert_eq!(problems(bad), ["`policyDetails[0].filter.value`: the value must be at least 1"]);
        let mut bad = good;
        bad["policyDetails"][0].as_object_mut().unwrap().remove("action");
        let e = problems(bad);
        assert!(e[0].contains("`policyDetails[0]`: missing field `action`"), "{e:?}");
    }
}
