//! Threat detection in the spirit of GuardDuty, as pure logic: a [`Detector`] is fed the API
//! calls of the audit log ([`ApiCallRecord`]) and image usage ([`UsageObservation`]) and
//! answers the findings they raise or update. It keeps a small state (recent failures per
//! access key, the addresses each key was used from, the findings so far), bounded in size so
//! a flood of made-up access key ids cannot grow it without limit. Time is the records' own,
//! so the same records always give the same findings.
//!
//! | finding type | raised when | severity |
//! |---|---|---|
//! | `UnauthorizedAccess:AccessKey/RepeatedFailures` | `auth_failure_threshold` failed authentications or authorisations (`InvalidClientTokenId`, `SignatureDoesNotMatch`, `AccessDeniedException`, `ForbiddenException`) for one access key within `auth_failure_window` | MEDIUM, HIGH when they include denied calls of a valid key |
//! | `InitialAccess:AccessKey/NewSourceAddress` | an authenticated call from an address the key was never used from (the key's first address is learnt silently) | LOW |
//! | `UnauthorizedAccess:Image/UnsharedAccountUse` | an account the image is not shared with pulled or launched it (refused: MEDIUM; carried out: HIGH) | MEDIUM / HIGH |
//! | `Policy:Image/RetiredImageLaunch` | a DEPRECATED (LOW) or DISABLED or DELETED (HIGH) image was launched | LOW / HIGH |
//!
//! Findings are deduplicated on (type, principal, resource): a repeat raises `count` and
//! `last_seen` of the same finding. The server stores each [`FindingUpdate`] (kiln-store's
//! `upsert_threat_finding`, which adds `new_occurrences` to the stored count) and sends a
//! webhook notification ([`Finding::notification`]) when `notify` is set: on a new finding,
//! and on one recurring after `renotify_after` of quiet.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::observe::ApiCallRecord;
use crate::webhook::{Notification, Source, Topic};

/// The error codes counted as failed authentication or authorisation.
pub const AUTH_FAILURE_CODES: &[&str] =
    &["InvalidClientTokenId", "SignatureDoesNotMatch", "AccessDeniedException", "ForbiddenException"];

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FindingType {
    #[serde(rename = "UnauthorizedAccess:AccessKey/RepeatedFailures")]
    RepeatedAuthFailures,
    #[serde(rename = "InitialAccess:AccessKey/NewSourceAddress")]
    NewSourceAddress,
    #[serde(rename = "UnauthorizedAccess:Image/UnsharedAccountUse")]
    UnsharedImageUse,
    #[serde(rename = "Policy:Image/RetiredImageLaunch")]
    RetiredImageLaunch,
}

impl FindingType {
    pub const ALL: [FindingType; 4] = [
        FindingType::RepeatedAuthFailures,
        FindingType::NewSourceAddress,
        FindingType::UnsharedImageUse,
        FindingType::RetiredImageLaunch,
    ];

    /// The GuardDuty-style name: `ThreatPurpose:ResourceType/ThreatName`.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingType::RepeatedAuthFailures => "UnauthorizedAccess:AccessKey/RepeatedFailures",
            FindingType::NewSourceAddress => "InitialAccess:AccessKey/NewSourceAddress",
            FindingType::UnsharedImageUse => "UnauthorizedAccess:Image/UnsharedAccountUse",
            FindingType::RetiredImageLaunch => "Policy:Image/RetiredImageLaunch",
        }
    }

    /// The type named `name` ([`FindingType::as_str`]).
    pub fn parse(name: &str) -> Option<FindingType> {
        FindingType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// How serious a finding is, in GuardDuty's three bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
        }
    }

    /// The severity named `name` ([`Severity::as_str`]), as stored.
    pub fn parse(name: &str) -> Option<Severity> {
        [Severity::Low, Severity::Medium, Severity::High].into_iter().find(|s| s.as_str() == name)
    }

    /// GuardDuty's numeric severity for the band (its ranges are 1-3.9, 4-6.9, 7-8.9).
    pub fn score(self) -> f64 {
        match self {
            Severity::Low => 2.0,
            Severity::Medium => 5.0,
            Severity::High => 8.0,
        }
    }
}

/// One finding, as aggregated so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    #[serde(rename = "type")]
    pub finding_type: FindingType,
    pub severity: Severity,
    pub title: String,
    pub description: String,
    /// Who: an access key id, or an account id for image usage.
    pub principal: String,
    /// What: an image ARN, a source address, or `*`.
    pub resource: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// How many events the finding stands for.
    pub count: u64,
    /// Facts that support it (addresses, error codes, the image's state...).
    pub details: serde_json::Value,
}

impl Finding {
    /// The webhook notification of this finding ([`Topic::ThreatFinding`]).
    pub fn notification(&self, source: &Source, now: DateTime<Utc>) -> Notification {
        let subject = format!("{} finding: {}", self.severity.as_str(), self.title);
        let message = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        Notification::new(source, Topic::ThreatFinding, &subject, &message, now)
    }

    fn key(&self) -> FindingKey {
        (self.finding_type, self.principal.clone(), self.resource.clone())
    }
}

type FindingKey = (FindingType, String, String);

/// A finding raised or updated by one observation.
#[derive(Debug, Clone, PartialEq)]
pub struct FindingUpdate {
    /// The finding with this observation included.
    pub finding: Finding,
    /// Events this update adds to the finding's count (what a store adds to its own).
    pub new_occurrences: u64,
    /// Whether the finding was raised by this observation (not known to this detector before).
    pub is_new: bool,
    /// Whether to notify: new, or recurring after a quiet `renotify_after`.
    pub notify: bool,
}

/// One use of an image, with what the server knew when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageObservation {
    pub time: DateTime<Utc>,
    pub image_arn: String,
    /// `launch`, `pull`, ...
    pub kind: String,
    /// The account that used it (or tried to).
    pub account: String,
    /// Whether the account may use the image (its owner, shared with, or public).
    pub permitted: bool,
    /// Whether the use was refused (nothing was pulled or launched).
    pub refused: bool,
    /// The image's state when used (`AVAILABLE`, `DEPRECATED`, `DISABLED`, ...).
    pub image_state: String,
}

/// The thresholds and bounds of detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Failures for one access key within `auth_failure_window` that raise a finding.
    pub auth_failure_threshold: usize,
    pub auth_failure_window: Duration,
    /// A finding seen again after this long without events notifies again.
    pub renotify_after: Duration,
    /// Access keys whose recent failures are tracked; the stalest are forgotten beyond it.
    pub max_tracked_keys: usize,
    /// Addresses remembered per access key; beyond it the key's new addresses are still
    /// reported but no longer learnt.
    pub max_sources_per_key: usize,
    /// Findings kept in memory for deduplication; the stalest are forgotten beyond it (the
    /// store still deduplicates them).
    pub max_findings: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            auth_failure_threshold: 10,
            auth_failure_window: Duration::from_secs(300),
            renotify_after: Duration::from_secs(6 * 3600),
            max_tracked_keys: 10_000,
            max_sources_per_key: 256,
            max_findings: 10_000,
        }
    }
}

/// The detector's state. Feed it every call and usage in time order.
#[derive(Debug, Default)]
pub struct Detector {
    config: DetectorConfig,
    /// Recent failures per access key: (time, denied with a valid key).
    failures: HashMap<String, VecDeque<(DateTime<Utc>, bool)>>,
    /// The addresses each access key was used from (authenticated calls only).
    sources: HashMap<String, HashSet<IpAddr>>,
    findings: HashMap<FindingKey, Finding>,
}

impl Detector {
    pub fn new(config: DetectorConfig) -> Detector {
        Detector { config, ..Detector::default() }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Learn that `access_key_id` was used from `address` before (seeding from the audit log
    /// at start, so a restart does not report every key's usual address as new).
    pub fn learn_source(&mut self, access_key_id: &str, address: IpAddr) {
        if !self.sources.contains_key(access_key_id) && self.sources.len() >= self.config.max_tracked_keys {
            return;
        }
        let known = self.sources.entry(access_key_id.to_owned()).or_default();
        if known.len() < self.config.max_sources_per_key {
            known.insert(address);
        }
    }

    /// Restore a finding known from the store, so its repeats update it instead of raising it
    /// anew after a restart.
    pub fn restore(&mut self, finding: Finding) {
        self.make_room_for_finding();
        self.findings.insert(finding.key(), finding);
    }

    /// The findings known to this detector, in no particular order.
    pub fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.findings.values()
    }

    /// The findings one API call raises or updates.
    pub fn observe_call(&mut self, call: &ApiCallRecord) -> Vec<FindingUpdate> {
        let mut updates = Vec::new();
        let Some(key) = call.access_key_id.as_deref().filter(|k| !k.is_empty()) else {
            return updates;
        };
        let failed = call.error_code.as_deref().is_some_and(|code| AUTH_FAILURE_CODES.contains(&code));
        if failed {
            updates.extend(self.auth_failure(key, call));
        }
        if call.authenticated() {
            if let Some(address) = call.source_address {
                updates.extend(self.source_address(key, address, call));
            }
        }
        updates
    }

    /// The findings one use of an image raises or updates.
    pub fn observe_usage(&mut self, usage: &UsageObservation) -> Vec<FindingUpdate> {
        let mut updates = Vec::new();
        if !usage.permitted {
            let (severity, outcome) = if usage.refused {
                (Severity::Medium, "was refused")
            } else {
                (Severity::High, "was carried out")
            };
            let finding = Finding {
                finding_type: FindingType::UnsharedImageUse,
                severity,
                title: format!(
                    "Account {} tried to {} an image not shared with it",
                    usage.account, usage.kind
                ),
                description: format!(
                    "Account {} tried to {} {}, which is not shared with it; the {} {outcome}.",
                    usage.account, usage.kind, usage.image_arn, usage.kind
                ),
                principal: usage.account.clone(),
                resource: usage.image_arn.clone(),
                first_seen: usage.time,
                last_seen: usage.time,
                count: 1,
                details: json!({ "kind": usage.kind, "refused": usage.refused, "imageState": usage.image_state }),
            };
            updates.push(self.upsert(finding, 1));
        }
        let retired = match usage.image_state.as_str() {
            "DEPRECATED" => Some(Severity::Low),
            "DISABLED" | "DELETED" => Some(Severity::High),
            _ => None,
        };
        if let (Some(severity), "launch", false) = (retired, usage.kind.as_str(), usage.refused) {
            let finding = Finding {
                finding_type: FindingType::RetiredImageLaunch,
                severity,
                title: format!("A {} image was launched", usage.image_state),
                description: format!(
                    "Account {} launched {}, which is {}; instances should come from current images.",
                    usage.account, usage.image_arn, usage.image_state
                ),
                principal: usage.account.clone(),
                resource: usage.image_arn.clone(),
                first_seen: usage.time,
                last_seen: usage.time,
                count: 1,
                details: json!({ "imageState": usage.image_state }),
            };
            updates.push(self.upsert(finding, 1));
        }
        updates
    }

    fn auth_failure(&mut self, key: &str, call: &ApiCallRecord) -> Option<FindingUpdate> {
        let window =
            chrono::Duration::from_std(self.config.auth_failure_window).unwrap_or(chrono::Duration::MAX);
        let threshold = self.config.auth_failure_threshold.max(1);
        if !self.failures.contains_key(key) && self.failures.len() >= self.config.max_tracked_keys {
            self.forget_stale_failures(call.time, window);
        }
        let denied = call.authenticated();
        let recent = self.failures.entry(key.to_owned()).or_default();
        recent.push_back((call.time, denied));
        while recent.front().is_some_and(|(t, _)| call.time.signed_duration_since(*t) > window) {
            recent.pop_front();
        }
        // Only the last `threshold` failures matter for the decision.
        while recent.len() > threshold {
            recent.pop_front();
        }
        if recent.len() < threshold {
            return None;
        }
        let first = recent.front().map_or(call.time, |(t, _)| *t);
        let any_denied = recent.iter().any(|(_, d)| *d);
        let in_window = recent.len() as u64;
        let finding_key = (FindingType::RepeatedAuthFailures, key.to_owned(), "*".to_owned());
        // A burst already reported: this failure is one more of it. A new burst of a known
        // finding brings all its failures.
        let ongoing = self
            .findings
            .get(&finding_key)
            .is_some_and(|f| call.time.signed_duration_since(f.last_seen) <= window);
        let new_occurrences = if ongoing { 1 } else { in_window };
        let severity = if any_denied { Severity::High } else { Severity::Medium };
        let mut details = json!({
            "threshold": threshold,
            "windowSeconds": self.config.auth_failure_window.as_secs(),
            "lastErrorCode": call.error_code,
            "lastOperation": call.operation,
            "lastSourceAddress": call.source_address.map(|a| a.to_string()),
        });
        if let Some(arn) = &call.principal_arn {
            details["principalArn"] = json!(arn);
        }
        let finding = Finding {
            finding_type: FindingType::RepeatedAuthFailures,
            severity,
            title: format!("Repeated failed requests with access key {key}"),
            description: format!(
                "{in_window} requests signed with access key {key} were refused (bad signature, unknown key or \
                 access denied) within {} s; someone may be guessing its secret or probing its permissions.",
                self.config.auth_failure_window.as_secs()
            ),
            principal: key.to_owned(),
            resource: "*".into(),
            first_seen: first,
            last_seen: call.time,
            count: new_occurrences,
            details,
        };
        Some(self.upsert(finding, new_occurrences))
    }

    fn source_address(&mut self, key: &str, address: IpAddr, call: &ApiCallRecord) -> Option<FindingUpdate> {
        match self.sources.get_mut(key) {
            None => {
                // The key's first address is its baseline, not a finding.
                self.learn_source(key, address);
                None
            }
            Some(known) if known.contains(&address) => None,
            Some(known) => {
                let previous: Vec<String> = {
                    let mut v: Vec<String> = known.iter().map(ToString::to_string).collect();
                    v.sort();
                    v.truncate(10);
                    v
                };
                if known.len() < self.config.max_sources_per_key {
                    known.insert(address);
                }
                let finding = Finding {
                    finding_type: FindingType::NewSourceAddress,
                    severity: Severity::Low,
                    title: format!("Access key {key} used from a new address {address}"),
                    description: format!(
                        "Access key {key}{} called {} from {address}, an address it was never used from before.",
                        call.principal_arn.as_deref().map(|a| format!(" ({a})")).unwrap_or_default(),
                        call.operation
                    ),
                    principal: key.to_owned(),
                    resource: address.to_string(),
                    first_seen: call.time,
                    last_seen: call.time,
                    count: 1,
                    details: json!({
                        "principalArn": call.principal_arn,
                        "operation": call.operation,
                        "userAgent": call.user_agent,
                        "knownAddresses": previous,
                    }),
                };
                Some(self.upsert(finding, 1))
            }
        }
    }

    /// Merge `finding` (one observation's worth, `new_occurrences` events) into the known one.
    fn upsert(&mut self, finding: Finding, new_occurrences: u64) -> FindingUpdate {
        let renotify =
            chrono::Duration::from_std(self.config.renotify_after).unwrap_or(chrono::Duration::MAX);
        let key = finding.key();
        if let Some(known) = self.findings.get_mut(&key) {
            let quiet = finding.last_seen.signed_duration_since(known.last_seen) > renotify;
            known.count = known.count.saturating_add(new_occurrences);
            known.last_seen = known.last_seen.max(finding.last_seen);
            known.first_seen = known.first_seen.min(finding.first_seen);
            // The most serious observation so far sets the severity.
            let escalated = finding.severity > known.severity;
            known.severity = known.severity.max(finding.severity);
            known.title = finding.title;
            known.description = finding.description;
            known.details = finding.details;
            return FindingUpdate {
                finding: known.clone(),
                new_occurrences,
                is_new: false,
                notify: quiet || escalated,
            };
        }
        self.make_room_for_finding();
        let mut finding = finding;
        finding.count = new_occurrences;
        self.findings.insert(key, finding.clone());
        FindingUpdate { finding, new_occurrences, is_new: true, notify: true }
    }

    fn make_room_for_finding(&mut self) {
        if self.findings.len() < self.config.max_findings.max(1) {
            return;
        }
        if let Some(stalest) = self.findings.iter().min_by_key(|(_, f)| f.last_seen).map(|(k, _)| k.clone()) {
            self.findings.remove(&stalest);
        }
    }

    /// Forget keys whose failures are all out of the window; if none are, the stalest key.
    fn forget_stale_failures(&mut self, now: DateTime<Utc>, window: chrono::Duration) {
        self.failures
            .retain(|_, recent| recent.back().is_some_and(|(t, _)| now.signed_duration_since(*t) <= window));
        if self.failures.len() >= self.config.max_tracked_keys {
            let stalest = self
                .failures
                .iter()
                .min_by_key(|(_, recent)| recent.back().map(|(t, _)| *t))
                .map(|(k, _)| k.clone());
            if let Some(k) = stalest {
                self.failures.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests;
