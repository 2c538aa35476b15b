//! Lifecycle policies on the catalogue: [`plan`] is pure (images, the facts about them, a
//! policy and the time in; the changes and the reasons out), so `--dry-run` and the real run
//! show the same thing and ages are tested without a clock; [`Kiln::apply_lifecycle`] carries a
//! plan out (DELETE also removes the image from every region and its local files).
//!
//! Rules, per image name: a COUNT rule matches the images after the newest `value`; an AGE rule
//! matches images at least `value` `unit`s old, except the newest `retainAtLeast`. An image
//! gets the strongest action (DEPRECATE < DISABLE < DELETE) of the rules that match and do
//! not exclude it, and only ever moves forward, so running a policy again changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_model::VersionFilter;
use kiln_model::lifecycle::{ActionType, FilterType, LifecyclePolicy, PolicyDetail, PolicyStatus};
use kiln_store::{Image, ImageState};
use time::OffsetDateTime;

use crate::{BuildError, Kiln};

/// What the planner knows about one image besides its row.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    pub image: Image,
    /// Launch permissions (account ids, `all`).
    pub launch_permissions: Vec<String>,
    /// Regions the image is AVAILABLE in.
    pub regions: Vec<String>,
    /// The last launch by any account.
    pub last_launched: Option<OffsetDateTime>,
}

/// One image's change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub arn: String,
    pub name: String,
    pub version: String,
    pub build: u32,
    pub current_state: ImageState,
    pub new_state: ImageState,
    /// The rule, 1-based in `policyDetails` order.
    pub rule: usize,
    pub action: ActionType,
    pub why: String,
}

/// A rule that matched an image but was not applied because an exclusion rule keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Exclusion {
    pub arn: String,
    pub rule: usize,
    pub action: ActionType,
    pub why: String,
}

/// What a policy does to the catalogue now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub policy: String,
    /// False for a DISABLED policy (which plans nothing).
    pub enabled: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Images the policy selected.
    pub selected: usize,
    pub changes: Vec<Change>,
    pub exclusions: Vec<Exclusion>,
}

/// The state an action leads to.
pub fn state_of(action: ActionType) -> ImageState {
    match action {
        ActionType::Deprecate => ImageState::Deprecated,
        ActionType::Disable => ImageState::Disabled,
        ActionType::Delete => ImageState::Deleted,
    }
}

/// How far along retirement a state is: AVAILABLE 0 … DELETED 3 (None: not for a policy).
fn retirement(state: ImageState) -> Option<u8> {
    match state {
        ImageState::Available => Some(0),
        ImageState::Deprecated => Some(1),
        ImageState::Disabled => Some(2),
        ImageState::Deleted => Some(3),
        _ => None,
    }
}

fn has_any_tag(image: &Image, tags: &BTreeMap<String, String>) -> Option<String> {
    tags.iter().find(|(k, v)| image.tags.get(*k) == Some(*v)).map(|(k, v)| format!("{k}={v}"))
}

fn selected(policy: &LifecyclePolicy, image: &Image) -> bool {
    let sel = &policy.resource_selection;
    let by_recipe = sel.recipes.iter().any(|r| {
        r.name == image.name
            && VersionFilter::parse(&r.semantic_version).is_ok_and(|f| f.matches(&image.version))
    });
    by_recipe || has_any_tag(image, &sel.tag_map).is_some()
}

/// Why `rule` keeps `facts`' image, if an exclusion rule does.
fn excluded(rule: &PolicyDetail, facts: &ImageFacts, now: OffsetDateTime) -> Option<String> {
    let ex = rule.exclusion_rules.as_ref()?;
    if let Some(t) = has_any_tag(&facts.image, &ex.tag_map) {
        return Some(format!("tagged {t}"));
    }
    let amis = ex.amis.as_ref()?;
    if let Some(t) = has_any_tag(&facts.image, &amis.tag_map) {
        return Some(format!("tagged {t}"));
    }
    if amis.is_public && facts.launch_permissions.iter().any(|p| p == kiln_store::ALL_ACCOUNTS) {
        return Some("public".into());
    }
    if let Some(r) = facts.regions.iter().find(|r| amis.regions.contains(r)) {
        return Some(format!("distributed to {r}"));
    }
    if let Some(a) = facts.launch_permissions.iter().find(|a| amis.shared_accounts.contains(a)) {
        return Some(format!("shared with {a}"));
    }
    if let (Some(period), Some(last)) = (amis.last_launched, facts.last_launched) {
        let window = time::Duration::days(i64::from(period.value) * period.unit.days());
        if now - last < window {
            return Some(format!(
                "launched {} ago, within {} {}",
                days_text(now - last),
                period.value,
                period.unit.as_str()
            ));
        }
    }
    None
}

fn days_text(d: time::Duration) -> String {
    match d.whole_days() {
        0 => "less than a day".into(),
        1 => "1 day".into(),
        n => format!("{n} days"),
    }
}

/// Why `rule` matches the image at `position` (0 = newest) of its name, if it does.
fn matches(rule: &PolicyDetail, image: &Image, position: usize, now: OffsetDateTime) -> Option<String> {
    let f = &rule.filter;
    let value = f.value as usize;
    match f.kind {
        FilterType::Count => (position >= value).then(|| {
            format!(
                "number {} from the newest of {}; the newest {} are kept (COUNT {})",
                position + 1,
                image.name,
                f.value,
                f.value
            )
        }),
        FilterType::Age => {
            let unit = f.unit?;
            let age = now - image.created_at;
            let limit = time::Duration::days(i64::from(f.value) * unit.days());
            let retained = f.retain_at_least.unwrap_or(0) as usize;
            (age >= limit && position >= retained).then(|| {
                let mut why =
                    format!("created {} ago, at least {} {}", days_text(age), f.value, unit.as_str());
                if retained > 0 {
                    why.push_str(&format!(
                        "; not among the newest {retained} of {} (retainAtLeast)",
                        image.name
                    ));
                }
                why
            })
        }
    }
}

/// What `policy` does to `images` at `now`.
pub fn plan(policy: &LifecyclePolicy, images: &[ImageFacts], now: OffsetDateTime) -> Plan {
    let mut out = Plan {
        policy: policy.name.clone(),
        enabled: policy.status == PolicyStatus::Enabled,
        at: now,
        selected: 0,
        changes: Vec::new(),
        exclusions: Vec::new(),
    };
    // Newest first within each name; DELETED images are records, not images any more.
    let mut groups: BTreeMap<&str, Vec<&ImageFacts>> = BTreeMap::new();
    for f in images {
        if retirement(f.image.state).is_some_and(|r| r < 3) && selected(policy, &f.image) {
            groups.entry(f.image.name.as_str()).or_default().push(f);
        }
    }
    for group in groups.values_mut() {
        group.sort_by(|a, b| {
            (b.image.created_at, b.image.version, b.image.build).cmp(&(
                a.image.created_at,
                a.image.version,
                a.image.build,
            ))
        });
        out.selected += group.len();
    }
    if !out.enabled {
        return out;
    }
    for group in groups.values() {
        for (position, facts) in group.iter().enumerate() {
            let image = &facts.image;
            let mut strongest: Option<(usize, ActionType, String)> = None;
            for (i, rule) in policy.policy_details.iter().enumerate() {
                let Some(why) = matches(rule, image, position, now) else { continue };
                if let Some(kept) = excluded(rule, facts, now) {
                    out.exclusions.push(Exclusion {
                        arn: image.arn.clone(),
                        rule: i + 1,
                        action: rule.action.kind,
                        why: format!("{why}, but excluded: {kept}"),
                    });
                    continue;
                }
                if strongest.as_ref().is_none_or(|(_, a, _)| rule.action.kind > *a) {
                    strongest = Some((i + 1, rule.action.kind, why));
                }
            }
            let Some((rule, action, why)) = strongest else { continue };
            let new_state = state_of(action);
            if retirement(new_state) > retirement(image.state) {
                out.changes.push(Change {
                    arn: image.arn.clone(),
                    name: image.name.clone(),
                    version: image.version.to_string(),
                    build: image.build,
                    current_state: image.state,
                    new_state,
                    rule,
                    action,
                    why,
                });
            }
        }
    }
    out.changes.sort_by(|a, b| (&a.name, &a.version, a.build).cmp(&(&b.name, &b.version, b.build)));
    out
}

/// One applied change, or why it could not be.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    #[serde(flatten)]
    pub change: Change,
    /// `None` when done.
    pub error: Option<String>,
}

impl Kiln {
    /// The images (not DELETED) with their launch permissions, regions and last launch.
    pub fn lifecycle_facts(&self) -> Result<Vec<ImageFacts>, BuildError> {
        let store = self.store();
        let err = |e: kiln_store::StoreError| BuildError::Store(e.to_string());
        let images = self.block_on(store.list_images(&kiln_store::ImageFilter::default())).map_err(err)?;
        let mut last: BTreeMap<String, OffsetDateTime> = BTreeMap::new();
        for u in self.block_on(store.usage_summary(None, "launch")).map_err(err)? {
            let e = last.entry(u.image_arn).or_insert(u.last_at);
            *e = (*e).max(u.last_at);
        }
        images
            .into_iter()
            .map(|image| {
                let launch_permissions = self.block_on(store.launch_permissions(&image.arn)).map_err(err)?;
                let regions = self
                    .block_on(store.image_regions(&image.arn))
                    .map_err(err)?
                    .into_iter()
                    .filter(|r| r.state == "AVAILABLE")
                    .map(|r| r.region)
                    .collect();
                let last_launched = last.get(&image.arn).copied();
                Ok(ImageFacts { image, launch_permissions, regions, last_launched })
            })
            .collect()
    }

    /// Carry out `plan`. A DELETE first removes the image from every region it was
    /// distributed to and its files from the output folder; if that fails the image keeps its
    /// state (with the error reported), so running the policy again retries it.
    pub fn apply_lifecycle(&self, plan: &Plan) -> Vec<Applied> {
        plan.changes
            .iter()
            .map(|change| {
                let reason = format!(
                    "lifecycle policy {}: rule {} ({}): {}",
                    plan.policy,
                    change.rule,
                    change.action.as_str(),
                    change.why
                );
                let result = (|| {
                    if change.new_state == ImageState::Deleted {
                        self.remove_image_artifacts(&change.arn)?;
                    }
                    self.block_on(self.store().transition(&change.arn, change.new_state, Some(&reason)))
                        .map_err(|e| BuildError::Store(e.to_string()))?;
                    Ok::<_, BuildError>(())
                })();
                Applied { change: change.clone(), error: result.err().map(|e| e.to_string()) }
            })
            .collect()
    }

    /// Remove an image's copies from every region with a store, and its local files.
    pub fn remove_image_artifacts(&self, arn: &str) -> Result<(), BuildError> {
        let store = self.store();
        let err = |e: kiln_store::StoreError| BuildError::Store(e.to_string());
        let image = self.block_on(store.get_image_by_arn(arn)).map_err(err)?;
        let reference = kiln_dist::ImageRef {
            name: image.name.clone(),
            version: image.version.to_string(),
            build: image.build,
        };
        for r in self.block_on(store.image_regions(arn)).map_err(err)? {
            if r.state == "DELETED" {
                continue;
            }
            let removed =
                kiln_dist::Target::open(&r.region, &r.store_url, None, &crate::distribute::s3_options())
                    .and_then(|target| self.block_on(kiln_dist::remove(&target, &reference)));
            removed
                .map_err(|e| BuildError::Store(format!("removing {arn} from region {}: {e}", r.region)))?;
            self.block_on(store.set_image_region(
                arn,
                &r.region,
                &r.store_url,
                "DELETED",
                Some("deleted by a lifecycle policy"),
                0,
                r.total_bytes,
            ))
            .map_err(err)?;
        }
        if let Some(dir) = &image.output_location {
            remove_output(&self.home, Path::new(dir), image.manifest.as_ref())?;
        }
        Ok(())
    }
}

/// Remove a build's output folder: wholly when kiln made it (under KILN_HOME/images), else
/// only the files the build wrote there (a folder given with `--out` may hold other things).
fn remove_output(home: &Path, dir: &Path, manifest: Option<&serde_json::Value>) -> Result<(), BuildError> {
    if !dir.exists() {
        return Ok(());
    }
    if dir.starts_with(home.join("images")) {
        return std::fs::remove_dir_all(dir).map_err(|e| BuildError::io("removing the image folder", dir, e));
    }
    let mut files: Vec<PathBuf> =
        ["manifest.json", "SHA256SUMS", "build-log.jsonl"].iter().map(|f| dir.join(f)).collect();
    let listed = manifest.and_then(|m| m["artifacts"].as_array()).into_iter().flatten();
    files
        .extend(listed.filter_map(|a| a["file"].as_str()).filter(|f| !f.contains("..")).map(|f| dir.join(f)));
    for f in &files {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BuildError::io("removing an image file", f, e)),
        }
        // Sub-folders of reports (test-report/) go when they are empty.
        if let Some(parent) = f.parent().filter(|p| *p != dir) {
            let _ = std::fs::remove_dir(parent);
        }
    }
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_model::lifecycle::parse_lifecycle_policy;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2024-06-30 12:00 UTC);

    fn facts(name: &str, build: u32, age_days: i64, state: ImageState) -> ImageFacts {
        let created = NOW - time::Duration::days(age_days);
        ImageFacts {
            image: Image {
                arn: format!("arn:aws:imagebuilder:local:000000000000:image/{name}/1.0.0/{build}"),
                name: name.into(),
                version: "1.0.0".parse().unwrap(),
                build,
                state,
                reason: None,
                recipe: serde_json::Value::Null,
                output_location: None,
                manifest: None,
                region: "local".into(),
                account: "000000000000".into(),
                tags: BTreeMap::new(),
                created_at: created,
                updated_at: created,
            },
            launch_permissions: vec![],
            regions: vec![],
            last_launched: None,
        }
    }

    fn policy(text: &str) -> LifecyclePolicy {
        parse_lifecycle_policy("p.yml", text).unwrap()
    }

    const RETENTION: &str = r#"
name: retention
policyDetails:
  - action: { type: DEPRECATE }
    filter: { type: COUNT, value: 1 }
  - action: { type: DISABLE }
    filter: { type: AGE, value: 30, unit: DAYS }
  - action: { type: DELETE }
    filter: { type: AGE, value: 3, unit: MONTHS, retainAtLeast: 1 }
    exclusionRules:
      amis:
        tagMap: { keep: "yes" }
        lastLaunched: { value: 1, unit: WEEKS }
resourceSelection:
  recipes: [{ name: web, semanticVersion: 1.x.x }]
"#;

    fn summary(p: &Plan) -> Vec<(u32, ImageState, ImageState, usize)> {
        p.changes.iter().map(|c| (c.build, c.current_state, c.new_state, c.rule)).collect()
    }

    #[test]
    fn count_and_age_rules_take_the_strongest_action_per_image() {
        use ImageState::*;
        let images = vec![
            facts("web", 1, 200, Available),
            facts("web", 2, 100, Deprecated),
            facts("web", 3, 40, Available),
            facts("web", 4, 10, Available),
            facts("web", 5, 1, Available),
            facts("db", 1, 400, Available),
        ];
        let p = plan(&policy(RETENTION), &images, NOW);
        assert_eq!(p.selected, 5, "db is not selected");
        assert_eq!(
            summary(&p),
            [
                (1, Available, Deleted, 3),
                (2, Deprecated, Deleted, 3),
                (3, Available, Disabled, 2),
                (4, Available, Deprecated, 1)
            ]
        );
        assert!(p.changes[0].why.contains("created 200 days ago, at least 3 MONTHS"), "{}", p.changes[0].why);
        assert!(p.changes[3].why.contains("number 2 from the newest"), "{}", p.changes[3].why);
    }

    #[test]
    fn retain_at_least_keeps_the_newest_whatever_their_age() {
        let images =
            vec![facts("web", 1, 400, ImageState::Available), facts("web", 2, 300, ImageState::Available)];
        let p = plan(&policy(RETENTION), &images, NOW);
        // Both are old enough to delete; the newest is retained (and only disabled by age).
        assert_eq!(
            summary(&p),
            [
                (1, ImageState::Available, ImageState::Deleted, 3),
                (2, ImageState::Available, ImageState::Disabled, 2)
            ]
        );
    }

    #[test]
    fn exclusions_by_tag_and_recent_launch_are_reported() {
        let mut tagged = facts("web", 1, 200, ImageState::Available);
        tagged.image.tags.insert("keep".into(), "yes".into());
        let mut launched = facts("web", 2, 150, ImageState::Available);
        launched.last_launched = Some(NOW - time::Duration::days(3));
        let mut launched_long_ago = facts("web", 3, 120, ImageState::Available);
        launched_long_ago.last_launched = Some(NOW - time::Duration::days(20));
        let newest = facts("web", 4, 1, ImageState::Available);
        let p = plan(&policy(RETENTION), &[tagged, launched, launched_long_ago, newest], NOW);
        use ImageState::*;
        assert_eq!(
            summary(&p),
            [(1, Available, Disabled, 2), (2, Available, Disabled, 2), (3, Available, Deleted, 3)]
        );
        let why: Vec<&str> = p.exclusions.iter().map(|e| e.why.as_str()).collect();
        assert_eq!(p.exclusions.len(), 2, "{why:?}");
        // Newest first, as the images of a name are ranked.
        assert!(why[0].ends_with("excluded: launched 3 days ago, within 1 WEEKS"), "{why:?}");
        assert!(why[1].ends_with("excluded: tagged keep=yes"), "{why:?}");
    }

    #[test]
    fn a_second_run_changes_nothing() {
        let mut images = vec![
            facts("web", 1, 200, ImageState::Available),
            facts("web", 2, 45, ImageState::Available),
            facts("web", 3, 10, ImageState::Available),
            facts("web", 4, 1, ImageState::Available),
        ];
        let first = plan(&policy(RETENTION), &images, NOW);
        assert_eq!(first.changes.len(), 3);
        for c in &first.changes {
            let f = images.iter_mut().find(|f| f.image.arn == c.arn).unwrap();
            f.image.state = c.new_state;
        }
        let second = plan(&policy(RETENTION), &images, NOW);
        assert!(second.changes.is_empty(), "{:?}", second.changes);
    }

    #[test]
    fn selection_by_tag_and_disabled_policies() {
        let mut dev = facts("api", 1, 100, ImageState::Available);
        dev.image.tags.insert("env".into(), "dev".into());
        let text = "name: dev\npolicyDetails:\n  - action: { type: DELETE }\n    filter: { type: AGE, value: 2, unit: WEEKS }\nresourceSelection:\n  tagMap: { env: dev }\n";
        let p = plan(&policy(text), &[dev.clone(), facts("api", 2, 100, ImageState::Available)], NOW);
        assert_eq!(summary(&p), [(1, ImageState::Available, ImageState::Deleted, 1)]);
        let off = policy(&format!("{text}status: DISABLED\n"));
        let p = plan(&off, &[dev], NOW);
        assert!(!p.enabled && p.changes.is_empty() && p.selected == 1);
    }
}
