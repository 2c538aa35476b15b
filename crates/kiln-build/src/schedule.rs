//! The scheduler's decision for one image pipeline: whether to start a build now, and why.
//!
//! A pure function of the pipeline's schedule, what it did last and the time
//! ([`decide`]); `kiln serve` calls it on its clock and records what it returns. The rules:
//!
//! - The schedule is Image Builder's: a `cron(...)` expression read in an IANA time zone
//!   (`kiln_model::schedule`, with AWS's daylight-saving behaviour) and a start condition.
//!   `EXPRESSION_MATCH_ONLY` builds at every slot; `EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE`
//!   (Image Builder's default) builds at a slot only when [`crate::dependencies`] finds a
//!   change since the pipeline's latest image, or when there is no image yet.
//! - Slots missed while the server was down fire once, not once per missed slot: the slot
//!   consumed is the latest one not after now, and the next is counted from it.
//! - A check of the dependencies that fails builds anyway, with the error as the reason: not
//!   knowing must not leave an image without its updates.
//! - With the kiln extension [`REBUILD_ON_FIXES_TAG`] (a pipeline tag: Image Builder's model
//!   has no such field, and tags pass through the AWS API and tools unchanged), the pipeline
//!   is also due, between slots, when a rescan marked its latest image as needing a rebuild
//!   (fixes are available for its vulnerabilities) after the pipeline's last build started.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kiln_model::schedule::{Schedule, ScheduleError};
use serde::Serialize;
use time::OffsetDateTime;

use crate::dependencies::{self, DependencyChange, DependencyError};

/// The pipeline tag that asks for rebuilds when continuous scanning finds fixes available
/// (value `true`, any case).
pub const REBUILD_ON_FIXES_TAG: &str = "kiln:rebuildOnFixes";

/// Image Builder's `pipelineExecutionStartCondition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StartCondition {
    /// Build every time the expression matches.
    ExpressionMatchOnly,
    /// Build when the expression matches and a dependency changed (Image Builder's default).
    #[default]
    ExpressionMatchAndDependencyUpdatesAvailable,
}

impl StartCondition {
    pub const ALL: [StartCondition; 2] =
        [StartCondition::ExpressionMatchOnly, StartCondition::ExpressionMatchAndDependencyUpdatesAvailable];

    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StartCondition::ExpressionMatchOnly => "EXPRESSION_MATCH_ONLY",
            StartCondition::ExpressionMatchAndDependencyUpdatesAvailable => {
                "EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE"
            }
        }
    }
}

impl std::str::FromStr for StartCondition {
    type Err = PipelineScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StartCondition::ALL.into_iter().find(|c| c.as_str() == s.trim()).ok_or_else(|| {
            PipelineScheduleError::StartCondition(format!(
                "`{s}` is not a start condition; use {} or {}",
                StartCondition::ALL[0].as_str(),
                StartCondition::ALL[1].as_str()
            ))
        })
    }
}

/// A pipeline schedule that cannot be used; the field is named as in the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineScheduleError {
    #[error("schedule.scheduleExpression: {0}")]
    Expression(ScheduleError),
    #[error("schedule.pipelineExecutionStartCondition: {0}")]
    StartCondition(String),
}

/// What the scheduler needs to know about a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineSchedule {
    /// The cron expression in its time zone; `None`: the pipeline runs only when started
    /// (and on fixes, with `rebuild_on_fixes`).
    pub cron: Option<Schedule>,
    pub start_condition: StartCondition,
    /// [`REBUILD_ON_FIXES_TAG`].
    pub rebuild_on_fixes: bool,
}

impl PipelineSchedule {
    /// From the API's `schedule` fields (`scheduleExpression`, `timezone`,
    /// `pipelineExecutionStartCondition`) and the pipeline's tags.
    pub fn parse(
        expression: Option<&str>,
        timezone: Option<&str>,
        start_condition: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<PipelineSchedule, PipelineScheduleError> {
        let cron = expression
            .map(|e| Schedule::parse(e, timezone))
            .transpose()
            .map_err(PipelineScheduleError::Expression)?;
        let start_condition = start_condition.map(str::parse).transpose()?.unwrap_or_default();
        Ok(PipelineSchedule { cron, start_condition, rebuild_on_fixes: rebuild_on_fixes(tags) })
    }

    /// The first slot strictly after `after`.
    pub fn next_after(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        let cron = self.cron.as_ref()?;
        cron.next_after(to_chrono(after)?).and_then(from_chrono)
    }
}

/// Whether `tags` ask for rebuilds on fixes ([`REBUILD_ON_FIXES_TAG`] = `true`).
pub fn rebuild_on_fixes(tags: &BTreeMap<String, String>) -> bool {
    tags.get(REBUILD_ON_FIXES_TAG).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// What the pipeline did last, as the server recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineState<'a> {
    /// When the pipeline was created (or its schedule last changed): slots before are not
    /// owed.
    pub created_at: OffsetDateTime,
    /// The last slot [`decide`] consumed (built or skipped); `None`: never.
    pub last_slot: Option<OffsetDateTime>,
    /// When the pipeline's latest build started, whatever started it.
    pub last_build_started: Option<OffsetDateTime>,
    /// Whether the pipeline has an image to compare with (its latest AVAILABLE one).
    pub has_image: bool,
    /// That image's rebuild mark (`Store::needs_rebuild`), if it has one.
    pub rebuild_mark: Option<&'a kiln_store::RebuildMark>,
}

/// What started a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Trigger {
    /// The cron expression matched.
    Schedule,
    /// A rescan found fixes for the latest image's vulnerabilities.
    FixesAvailable,
}

/// The scheduler's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "camelCase")]
pub enum Decision {
    /// Start a build now.
    Due {
        trigger: Trigger,
        /// For the log and the image's reason.
        reason: String,
        /// The slot this consumes (record it as `last_slot`); `None` for a build on fixes
        /// between slots.
        #[serde(with = "time::serde::rfc3339::option")]
        slot: Option<OffsetDateTime>,
        /// The dependency changes found, when they were looked at.
        changes: Vec<DependencyChange>,
    },
    /// Nothing to do before `next` (`None`: no slot ever again).
    NotDue {
        #[serde(with = "time::serde::rfc3339::option")]
        next: Option<OffsetDateTime>,
    },
    /// A slot came, but no dependency changed since the latest image: no build.
    SkippedNoUpdates {
        /// The slot consumed (record it as `last_slot`).
        #[serde(with = "time::serde::rfc3339")]
        slot: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339::option")]
        next: Option<OffsetDateTime>,
    },
}

impl Decision {
    /// The slot to record as the pipeline's `last_slot`, when this decision consumed one.
    pub fn slot(&self) -> Option<OffsetDateTime> {
        match self {
            Decision::Due { slot, .. } => *slot,
            Decision::SkippedNoUpdates { slot, .. } => Some(*slot),
            Decision::NotDue { .. } => None,
        }
    }
}

/// Whether `pipeline` should build at `now` (see the module documentation).
/// `dependencies` is called only when a slot is due under
/// `EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE` with an image to compare with: it is
/// the slow part (`Kiln::dependency_changes`).
pub fn decide(
    pipeline: &PipelineSchedule,
    state: &PipelineState<'_>,
    now: OffsetDateTime,
    dependencies: impl FnOnce() -> Result<Vec<DependencyChange>, DependencyError>,
) -> Decision {
    let since = state.last_slot.unwrap_or(state.created_at);
    let slot = latest_slot(pipeline, since, now);
    let fixes = pipeline
        .rebuild_on_fixes
        .then_some(state.rebuild_mark)
        .flatten()
        .filter(|m| state.last_build_started.is_none_or(|t| m.marked_at > t));
    let fixes_due = |slot: Option<OffsetDateTime>| {
        fixes.map(|m| Decision::Due {
            trigger: Trigger::FixesAvailable,
            reason: format!("fixes are available for the latest image's vulnerabilities: {}", m.reason),
            slot,
            changes: Vec::new(),
        })
    };
    let Some(slot) = slot else {
        return fixes_due(None).unwrap_or(Decision::NotDue { next: pipeline.next_after(since.max(now)) });
    };
    let expression = pipeline.cron.as_ref().map(|c| c.expression.to_string()).unwrap_or_default();
    let at = slot.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let next = pipeline.next_after(slot.max(now));
    match pipeline.start_condition {
        StartCondition::ExpressionMatchOnly => Decision::Due {
            trigger: Trigger::Schedule,
            reason: format!("{expression} matched at {at}"),
            slot: Some(slot),
            changes: Vec::new(),
        },
        StartCondition::ExpressionMatchAndDependencyUpdatesAvailable => {
            if let Some(d) = fixes_due(Some(slot)) {
                return d;
            }
            if !state.has_image {
                return Decision::Due {
                    trigger: Trigger::Schedule,
                    reason: format!("{expression} matched at {at} and the pipeline has no image yet"),
                    slot: Some(slot),
                    changes: Vec::new(),
                };
            }
            match dependencies() {
                Ok(changes) if changes.is_empty() => Decision::SkippedNoUpdates { slot, next },
                Ok(changes) => Decision::Due {
                    trigger: Trigger::Schedule,
                    reason: format!(
                        "{expression} matched at {at} and dependencies changed: {}",
                        dependencies::summary(&changes)
                    ),
                    slot: Some(slot),
                    changes,
                },
                Err(e) => Decision::Due {
                    trigger: Trigger::Schedule,
                    reason: format!(
                        "{expression} matched at {at}; building because the dependency check failed: {e}"
                    ),
                    slot: Some(slot),
                    changes: Vec::new(),
                },
            }
        }
    }
}

/// The latest slot in `(since, now]`, or `None`. Looks back from `now` over growing windows
/// first, so a minute schedule missed for months does not walk every missed minute.
fn latest_slot(
    pipeline: &PipelineSchedule,
    since: OffsetDateTime,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    let first = pipeline.next_after(since).filter(|s| *s <= now)?;
    let windows = [
        time::Duration::hours(1),
        time::Duration::days(1),
        time::Duration::days(32),
        time::Duration::days(367),
    ];
    let start = windows
        .iter()
        .map(|w| (now - *w).max(since))
        .find(|from| pipeline.next_after(*from).is_some_and(|s| s <= now))
        .unwrap_or(since);
    let mut slot = pipeline.next_after(start).filter(|s| *s <= now).unwrap_or(first);
    while let Some(next) = pipeline.next_after(slot).filter(|s| *s <= now) {
        slot = next;
    }
    Some(slot)
}

fn to_chrono(t: OffsetDateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())
}

fn from_chrono(t: DateTime<Utc>) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(t.timestamp()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dependencies::ChangeKind;
    use std::cell::Cell;
    use time::macros::datetime;

    fn pipeline(expr: &str, tz: &str, condition: &str) -> PipelineSchedule {
        PipelineSchedule::parse(Some(expr), Some(tz), Some(condition), &BTreeMap::new()).unwrap()
    }

    fn state(last_slot: Option<OffsetDateTime>) -> PipelineState<'static> {
        PipelineState {
            created_at: datetime!(2026-01-01 00:00 UTC),
            last_slot,
            last_build_started: last_slot,
            has_image: true,
            rebuild_mark: None,
        }
    }

    fn change() -> DependencyChange {
        DependencyChange {
            kind: ChangeKind::Packages,
            subject: "openssl".into(),
            from: Some("3.0.11-1~deb12u1".into()),
            to: Some("3.0.11-1~deb12u2".into()),
            reason: "openssl 3.0.11-1~deb12u1 → 3.0.11-1~deb12u2 available".into(),
        }
    }

    const ONLY: &str = "EXPRESSION_MATCH_ONLY";
    const DEPS: &str = "EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE";

    /// A dependency check that must not run.
    fn unused() -> Result<Vec<DependencyChange>, DependencyError> {
        Err(DependencyError::Sandbox("the dependency check ran".into()))
    }

    #[test]
    fn daily_in_paris_across_both_daylight_saving_changes() {
        // 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer; clocks go forward on
        // 2026-03-29 and back on 2026-10-25.
        let p = pipeline("cron(0 9 * * ? *)", "Europe/Paris", ONLY);
        let last = Some(datetime!(2026-03-28 08:00 UTC));
        assert_eq!(
            decide(&p, &state(last), datetime!(2026-03-29 06:59 UTC), unused),
            Decision::NotDue { next: Some(datetime!(2026-03-29 07:00 UTC)) }
        );
        let d = decide(&p, &state(last), datetime!(2026-03-29 07:00 UTC), unused);
        assert_eq!(d.slot(), Some(datetime!(2026-03-29 07:00 UTC)), "{d:?}");
        assert!(
            matches!(&d, Decision::Due { trigger: Trigger::Schedule, reason, .. } if reason.contains("cron(0 9 * * ? *) matched at 2026-03-29T07:00:00Z")),
            "{d:?}"
        );
        assert_eq!(
            decide(&p, &state(d.slot()), datetime!(2026-03-29 12:00 UTC), unused),
            Decision::NotDue { next: Some(datetime!(2026-03-30 07:00 UTC)) }
        );
        let last = Some(datetime!(2026-10-24 07:00 UTC));
        assert_eq!(
            decide(&p, &state(last), datetime!(2026-10-25 07:30 UTC), unused),
            Decision::NotDue { next: Some(datetime!(2026-10-25 08:00 UTC)) }
        );

        // 02:30 does not exist on the spring day (no run), and happens twice in autumn (one run).
        let p = pipeline("cron(30 2 * * ? *)", "Europe/Paris", ONLY);
        let last = Some(datetime!(2026-03-28 01:30 UTC));
        assert_eq!(
            decide(&p, &state(last), datetime!(2026-03-29 12:00 UTC), unused),
            Decision::NotDue { next: Some(datetime!(2026-03-30 00:30 UTC)) }
        );
        let last = Some(datetime!(2026-10-24 00:30 UTC));
        let d = decide(&p, &state(last), datetime!(2026-10-25 01:45 UTC), unused);
        assert_eq!(d.slot(), Some(datetime!(2026-10-25 00:30 UTC)), "the first 02:30 only: {d:?}");
        assert_eq!(
            decide(&p, &state(d.slot()), datetime!(2026-10-25 01:45 UTC), unused),
            Decision::NotDue { next: Some(datetime!(2026-10-26 01:30 UTC)) }
        );
    }

    #[test]
    fn expression_match_only_always_builds_when_due() {
        let p = pipeline("cron(0 3 * * ? *)", "UTC", ONLY);
        let ran = Cell::new(false);
        let d = decide(
            &p,
            &state(Some(datetime!(2026-05-01 03:00 UTC))),
            datetime!(2026-05-02 03:00:30 UTC),
            || {
                ran.set(true);
                Ok(Vec::new())
            },
        );
        assert!(matches!(d, Decision::Due { trigger: Trigger::Schedule, .. }), "{d:?}");
        assert!(!ran.get(), "no dependency check under EXPRESSION_MATCH_ONLY");
    }

    #[test]
    fn dependency_updates_skip_without_changes_and_build_with_one() {
        let p = pipeline("cron(0 3 * * ? *)", "UTC", DEPS);
        let s = state(Some(datetime!(2026-05-01 03:00 UTC)));
        let now = datetime!(2026-05-02 03:01 UTC);
        assert_eq!(
            decide(&p, &s, now, || Ok(Vec::new())),
            Decision::SkippedNoUpdates {
                slot: datetime!(2026-05-02 03:00 UTC),
                next: Some(datetime!(2026-05-03 03:00 UTC))
            }
        );
        let d = decide(&p, &s, now, || Ok(vec![change()]));
        match &d {
            Decision::Due { trigger: Trigger::Schedule, reason, slot, changes } => {
                assert_eq!(*slot, Some(datetime!(2026-05-02 03:00 UTC)));
                assert_eq!(changes, &[change()]);
                assert!(
                    reason.ends_with("packages (1): openssl 3.0.11-1~deb12u1 → 3.0.11-1~deb12u2 available"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Not due: the check does not run.
        assert!(matches!(decide(&p, &s, datetime!(2026-05-02 02:59 UTC), unused), Decision::NotDue { .. }));
        // No image yet: build without looking.
        let first = PipelineState { has_image: false, ..s.clone() };
        assert!(matches!(decide(&p, &first, now, unused), Decision::Due { .. }));
        // A failed check builds, and says why.
        match decide(&p, &s, now, unused) {
            Decision::Due { reason, .. } => {
                assert!(reason.contains("building because the dependency check failed: sandbox:"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // The default condition is this one, as in Image Builder.
        let default =
            PipelineSchedule::parse(Some("cron(0 3 * * ? *)"), None, None, &BTreeMap::new()).unwrap();
        assert_eq!(default.start_condition, StartCondition::ExpressionMatchAndDependencyUpdatesAvailable);
    }

    #[test]
    fn missed_runs_fire_once() {
        let p = pipeline("cron(0 * * * ? *)", "UTC", ONLY);
        // The server was down for three days: 72 hourly slots passed.
        let s = state(Some(datetime!(2026-06-01 10:00 UTC)));
        let now = datetime!(2026-06-04 10:20 UTC);
        let d = decide(&p, &s, now, unused);
        assert_eq!(d.slot(), Some(datetime!(2026-06-04 10:00 UTC)), "the latest slot, once: {d:?}");
        let after = state(d.slot());
        assert_eq!(
            decide(&p, &after, now, unused),
            Decision::NotDue { next: Some(datetime!(2026-06-04 11:00 UTC)) }
        );
        // Every minute, missed for over a year: still one run, found without walking each minute.
        let p = pipeline("cron(* * * * ? *)", "UTC", ONLY);
        let s = state(Some(datetime!(2025-01-01 00:00 UTC)));
        let d = decide(&p, &s, datetime!(2026-06-04 10:20:30 UTC), unused);
        assert_eq!(d.slot(), Some(datetime!(2026-06-04 10:20 UTC)));
        // A pipeline that never ran counts from its creation: nothing owed before.
        let p = pipeline("cron(0 3 * * ? *)", "UTC", ONLY);
        let new = PipelineState { created_at: datetime!(2026-06-04 04:00 UTC), ..state(None) };
        assert_eq!(
            decide(&p, &new, datetime!(2026-06-04 10:00 UTC), unused),
            Decision::NotDue { next: Some(datetime!(2026-06-05 03:00 UTC)) }
        );
    }

    #[test]
    fn fixes_trigger_a_rebuild_once_per_mark_when_asked() {
        let tags: BTreeMap<String, String> = [(REBUILD_ON_FIXES_TAG.to_string(), "True".to_string())].into();
        let p = PipelineSchedule::parse(Some("cron(0 3 ? * MON *)"), None, None, &tags).unwrap();
        assert!(p.rebuild_on_fixes);
        let mark = kiln_store::RebuildMark {
            image_arn: "arn:aws:imagebuilder:local:000000000000:image/web/1.0.0/1".into(),
            reason: "1 finding(s) with a fix available: CVE-2019-18224 (libidn2-0)".into(),
            marked_at: datetime!(2026-06-03 12:00 UTC),
        };
        let s = PipelineState {
            last_build_started: Some(datetime!(2026-06-01 03:00 UTC)),
            rebuild_mark: Some(&mark),
            ..state(Some(datetime!(2026-06-01 03:00 UTC)))
        };
        let now = datetime!(2026-06-03 12:05 UTC);
        match decide(&p, &s, now, unused) {
            Decision::Due { trigger: Trigger::FixesAvailable, reason, slot: None, .. } => {
                assert!(reason.contains("CVE-2019-18224"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // Once that build started, the same mark does not start another.
        let later = PipelineState { last_build_started: Some(datetime!(2026-06-03 12:05 UTC)), ..s.clone() };
        assert_eq!(
            decide(&p, &later, now, unused),
            Decision::NotDue { next: Some(datetime!(2026-06-08 03:00 UTC)) }
        );
        // Without the tag, the mark is only information.
        let off = PipelineSchedule { rebuild_on_fixes: false, ..p.clone() };
        assert!(matches!(decide(&off, &s, now, unused), Decision::NotDue { .. }));
        // At a slot, the fixes are the reason and the check is not needed.
        let d = decide(&p, &s, datetime!(2026-06-08 03:00 UTC), unused);
        assert!(matches!(d, Decision::Due { trigger: Trigger::FixesAvailable, slot: Some(_), .. }), "{d:?}");
        // A pipeline without a schedule still rebuilds on fixes.
        let manual = PipelineSchedule { cron: None, ..p };
        assert!(matches!(
            decide(&manual, &s, now, unused),
            Decision::Due { trigger: Trigger::FixesAvailable, .. }
        ));
        assert_eq!(decide(&manual, &later, now, unused), Decision::NotDue { next: None });
    }

    #[test]
    fn schedules_that_cannot_be_used_name_the_field() {
        let none = BTreeMap::new();
        let e = PipelineSchedule::parse(Some("cron(0 3 * * ? *)"), None, Some("ALWAYS"), &none).unwrap_err();
        assert!(e.to_string().starts_with("schedule.pipelineExecutionStartCondition: `ALWAYS`"), "{e}");
        let e = PipelineSchedule::parse(Some("rate(1 day)"), None, None, &none).unwrap_err();
        assert!(e.to_string().starts_with("schedule.scheduleExpression: column 1"), "{e}");
        let e = PipelineSchedule::parse(Some("cron(0 3 * * ? *)"), Some("Mars/Olympus"), None, &none)
            .unwrap_err();
        assert!(e.to_string().contains("unknown time zone"), "{e}");
        assert!(!rebuild_on_fixes(&[(REBUILD_ON_FIXES_TAG.to_string(), "no".to_string())].into()));
        let json =
            serde_json::to_value(Decision::NotDue { next: Some(datetime!(2026-06-08 03:00 UTC)) }).unwrap();
        assert_eq!(json, serde_json::json!({"decision": "notDue", "next": "2026-06-08T03:00:00Z"}));
    }
}
