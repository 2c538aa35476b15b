//! Monitoring of `kiln serve`: kiln-api's parts wired to the store. Every API call's record
//! goes through a bounded queue to a task that writes the audit log in batches and feeds the
//! threat detector (requests never wait on SQLite; a full queue drops the record and counts it
//! in `kiln_audit_records_dropped_total`). Findings are stored, counted and sent to webhooks.
//! A follower task reads what other processes record in the store (image state changes, image
//! usage) after a cursor: transitions and stage durations become metrics and webhook
//! notifications, usage feeds the detector, and the gauges (images per state, queue depth)
//! are set from the store.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kiln_api::metrics::Metrics;
use kiln_api::observe::{ApiCallRecord, CallSink};
use kiln_api::threat::{
    Detector, DetectorConfig, Finding, FindingType, FindingUpdate, Severity, UsageObservation,
};
use kiln_api::webhook::{DeliveryConfig, Dispatcher, ImageStateChange, Notification, Source, Webhook};
use kiln_store::{AuditRecord, ImageState, NewThreatFinding, Store, StoreError, ThreatFindingFilter};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::{REGION, ServerError};

/// Records waiting for the audit writer; beyond it records are dropped (and counted).
pub const AUDIT_QUEUE: usize = 4096;
/// Records written per transaction at most.
const AUDIT_BATCH: usize = 256;
/// How often the follower reads the store.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(2);
/// Changes read per follower query.
const FOLLOW_PAGE: u32 = 500;

/// What monitoring is configured with.
#[derive(Debug, Clone)]
pub struct MonitorOptions {
    /// Where notifications go (none: notifications are not made).
    pub webhooks: Vec<Webhook>,
    pub delivery: DeliveryConfig,
    pub detector: DetectorConfig,
    pub audit_queue: usize,
    pub follow_interval: Duration,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions {
            webhooks: Vec::new(),
            delivery: DeliveryConfig::default(),
            detector: DetectorConfig::default(),
            audit_queue: AUDIT_QUEUE,
            follow_interval: FOLLOW_INTERVAL,
        }
    }
}

/// The shared monitoring state: metrics, the detector, the webhook dispatcher.
#[derive(Debug)]
pub struct Monitoring {
    pub metrics: Arc<Metrics>,
    dispatcher: Option<Dispatcher>,
    source: Source,
    detector: Mutex<Detector>,
    store: Store,
}

/// The [`CallSink`] of the router: logs the call and queues its record, never waiting.
#[derive(Debug, Clone)]
pub struct AuditSink {
    queue: mpsc::Sender<ApiCallRecord>,
    metrics: Arc<Metrics>,
}

impl CallSink for AuditSink {
    async fn record(&self, call: ApiCallRecord) {
        log_call(&call);
        if self.queue.try_send(call).is_err() {
            // Full (the writer is behind a locked database) or closed (shutting down).
            self.metrics.record_audit_dropped();
        }
    }
}

/// One line per API call in the server's log (JSON with `--log-format json`). No secret is in
/// a record; the access key id identifies the key.
fn log_call(call: &ApiCallRecord) {
    tracing::info!(
        target: "kiln_server::api",
        request_id = %call.request_id,
        operation = %call.operation,
        status = call.status,
        error = call.error_code.as_deref().unwrap_or(""),
        latency_ms = u64::try_from(call.duration.as_millis()).unwrap_or(u64::MAX),
        principal = call.principal_arn.as_deref().unwrap_or(""),
        access_key_id = call.access_key_id.as_deref().unwrap_or(""),
        resource = call.resource.as_deref().unwrap_or(""),
        source_address = %call.source_address.map(|a| a.to_string()).unwrap_or_default(),
        "api call"
    );
}

fn to_time(t: DateTime<Utc>) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.timestamp_nanos_opt().unwrap_or_default()))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn to_chrono(t: OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()).unwrap_or_default()
}

/// The audit log's row of a call.
pub fn audit_record(call: &ApiCallRecord) -> AuditRecord {
    AuditRecord {
        at: to_time(call.time),
        request_id: call.request_id.clone(),
        account: call.account_id.clone(),
        principal: call.principal_arn.clone(),
        access_key_id: call.access_key_id.clone(),
        operation: call.operation.clone(),
        resource: call.resource.clone(),
        result: call.result().to_owned(),
        http_status: call.status,
        source_address: call.source_address.map(|a| a.to_string()),
        user_agent: call.user_agent.clone(),
        duration_ms: u64::try_from(call.duration.as_millis()).unwrap_or(u64::MAX),
    }
}

/// A stored finding as the detector knows findings (`None` for a type or severity this
/// version does not know).
fn finding_of(stored: &kiln_store::ThreatFinding) -> Option<Finding> {
    Some(Finding {
        finding_type: FindingType::parse(&stored.finding_type)?,
        severity: Severity::parse(&stored.severity)?,
        title: stored.title.clone(),
        description: stored.description.clone(),
        principal: stored.principal.clone(),
        resource: stored.resource.clone(),
        first_seen: to_chrono(stored.first_seen),
        last_seen: to_chrono(stored.last_seen),
        count: stored.count,
        details: stored.details.clone(),
    })
}

impl Monitoring {
    /// Monitoring over `store`, its detector seeded from the store: each access key's known
    /// source addresses (from the audit log) and the open findings, so a restart neither
    /// reports usual addresses as new nor raises known findings again. Webhook deliveries run
    /// on the current Tokio runtime.
    pub async fn start(store: Store, options: &MonitorOptions) -> Result<Arc<Monitoring>, ServerError> {
        let metrics = Arc::new(Metrics::new());
        let dispatcher = if options.webhooks.is_empty() {
            None
        } else {
            Some(
                Dispatcher::start(options.webhooks.clone(), options.delivery.clone(), Some(metrics.clone()))
                    .map_err(|e| ServerError::Invalid(e.to_string()))?,
            )
        };
        let mut detector = Detector::new(options.detector.clone());
        for (key, address) in store.audit_sources().await? {
            if let Ok(address) = address.parse::<IpAddr>() {
                detector.learn_source(&key, address);
            }
        }
        for stored in store.list_threat_findings(&ThreatFindingFilter::default()).await? {
            if let Some(finding) = finding_of(&stored) {
                detector.restore(finding);
            }
        }
        Ok(Arc::new(Monitoring {
            metrics,
            dispatcher,
            source: Source { region: REGION.to_owned(), account: kiln_model::LOCAL_ACCOUNT.to_owned() },
            detector: Mutex::new(detector),
            store,
        }))
    }

    /// The sink for the router and the task that drains it (ends when every sink is dropped,
    /// after writing what was queued).
    pub fn audit_sink(self: &Arc<Self>, capacity: usize) -> (AuditSink, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let writer = tokio::spawn(Arc::clone(self).write_audit(rx));
        (AuditSink { queue: tx, metrics: self.metrics.clone() }, writer)
    }

    async fn write_audit(self: Arc<Self>, mut rx: mpsc::Receiver<ApiCallRecord>) {
        let mut batch = Vec::with_capacity(AUDIT_BATCH);
        while rx.recv_many(&mut batch, AUDIT_BATCH).await > 0 {
            let records: Vec<AuditRecord> = batch.iter().map(audit_record).collect();
            if let Err(e) = self.store.record_audits(&records).await {
                tracing::warn!("writing {} audit record(s): {e}", records.len());
            }
            let updates: Vec<FindingUpdate> = {
                let mut detector = self.detector();
                batch.iter().flat_map(|call| detector.observe_call(call)).collect()
            };
            self.findings(updates).await;
            batch.clear();
        }
    }

    fn detector(&self) -> std::sync::MutexGuard<'_, Detector> {
        self.detector.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Store, count, log and notify findings raised or updated.
    async fn findings(&self, updates: Vec<FindingUpdate>) {
        for update in updates {
            let f = &update.finding;
            self.metrics.record_threat_finding(f.finding_type.as_str(), f.severity.as_str());
            tracing::warn!(
                target: "kiln_server::threat",
                finding_type = f.finding_type.as_str(),
                severity = f.severity.as_str(),
                principal = %f.principal,
                resource = %f.resource,
                count = f.count,
                new = update.is_new,
                "{}",
                f.title
            );
            let stored = NewThreatFinding {
                finding_type: f.finding_type.as_str().to_owned(),
                severity: f.severity.as_str().to_owned(),
                title: f.title.clone(),
                description: f.description.clone(),
                principal: f.principal.clone(),
                resource: f.resource.clone(),
                first_seen: to_time(f.first_seen),
                last_seen: to_time(f.last_seen),
                occurrences: update.new_occurrences,
                details: f.details.clone(),
            };
            if let Err(e) = self.store.upsert_threat_finding(&stored).await {
                tracing::warn!("storing a threat finding: {e}");
            }
            if update.notify {
                self.notify(&f.notification(&self.source, Utc::now()));
            }
        }
    }

    fn notify(&self, notification: &Notification) {
        if let Some(d) = &self.dispatcher {
            d.notify(notification);
        }
    }

    /// Wait for queued webhook deliveries (graceful shutdown).
    pub async fn flush(&self) {
        if let Some(d) = &self.dispatcher {
            d.flush().await;
        }
    }

    /// Follows the store from where the last server left off (see [`Monitoring::cursors`])
    /// until aborted, saving its position after each pass that moved it — while
    /// `coordinating()` says this server is the coordinator, so that of several servers only
    /// one notifies and examines each event. The others keep their gauges current.
    pub async fn follow(self: Arc<Self>, interval: Duration, coordinating: impl Fn() -> bool + Send) {
        let mut cursor: Option<Cursor> = None;
        loop {
            if coordinating() {
                if cursor.is_none() {
                    // Read afresh on taking over: another coordinator may have moved it.
                    cursor = self
                        .cursors()
                        .await
                        .map_err(|e| tracing::warn!("monitoring cannot follow the store: {e}"))
                        .ok();
                }
                if let Some(c) = cursor.as_mut() {
                    let before = *c;
                    if let Err(e) = self.follow_once(c).await {
                        tracing::warn!("following the store: {e}");
                    }
                    if *c != before {
                        if let Err(e) = self.save_cursors(*c).await {
                            tracing::warn!("saving where monitoring is in the store: {e}");
                        }
                    }
                }
            } else {
                cursor = None;
                if let Err(e) = self.update_gauges().await {
                    tracing::warn!("reading the store for the metrics: {e}");
                }
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Where following starts: where the last server saved it was, so state changes and
    /// launches while no server ran (builds by `kiln worker`, `kiln launch`) are still
    /// notified and examined; on the very first start, the latest state change and usage
    /// event (the past before kiln serve ever ran is not replayed).
    pub async fn cursors(&self) -> Result<Cursor, StoreError> {
        let state_change = match self.store.cursor(STATE_CHANGE_CURSOR).await? {
            Some(p) => p,
            None => self.store.latest_state_change_id().await?,
        };
        let usage = match self.store.cursor(USAGE_CURSOR).await? {
            Some(p) => p,
            None => self.store.latest_usage_id().await?,
        };
        Ok(Cursor { state_change, usage })
    }

    /// Saves the position for the next server's [`Monitoring::cursors`].
    pub async fn save_cursors(&self, cursor: Cursor) -> Result<(), StoreError> {
        self.store.save_cursor(STATE_CHANGE_CURSOR, cursor.state_change).await?;
        self.store.save_cursor(USAGE_CURSOR, cursor.usage).await
    }

    /// One pass: state changes and usage after `cursor` (moved past them), then the gauges.
    pub async fn follow_once(&self, cursor: &mut Cursor) -> Result<(), StoreError> {
        loop {
            let changes = self.store.state_changes_after(cursor.state_change, FOLLOW_PAGE).await?;
            let full = changes.len() == FOLLOW_PAGE as usize;
            for change in changes {
                cursor.state_change = change.id;
                self.metrics.record_image_transition(change.to.as_str());
                if matches!(change.to, ImageState::Available | ImageState::Failed) {
                    self.stage_durations(&change.image_arn).await;
                }
                let message = ImageStateChange {
                    image_arn: change.image_arn,
                    previous_state: change.from.map(|s| s.as_str().to_owned()),
                    state: change.to.as_str().to_owned(),
                    reason: change.reason,
                    time: to_chrono(change.at),
                };
                self.notify(&Notification::image_state_change(&self.source, &message, Utc::now()));
            }
            if !full {
                break;
            }
        }
        loop {
            let events = self.store.usage_after(cursor.usage, FOLLOW_PAGE).await?;
            let full = events.len() == FOLLOW_PAGE as usize;
            let mut observations = Vec::new();
            for event in events {
                cursor.usage = event.id;
                if let Some(o) = self.usage_observation(&event).await? {
                    observations.push(o);
                }
            }
            let updates: Vec<FindingUpdate> = {
                let mut detector = self.detector();
                observations.iter().flat_map(|o| detector.observe_usage(o)).collect()
            };
            self.findings(updates).await;
            if !full {
                break;
            }
        }
        self.update_gauges().await
    }

    /// The gauges read from the store: images per state, queue depth, open findings.
    pub async fn update_gauges(&self) -> Result<(), StoreError> {
        let counts = self.store.image_counts_by_state().await?;
        for state in ImageState::ALL {
            let n = counts.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
            self.metrics.set_images_in_state(state.as_str(), n);
        }
        self.metrics.set_queue_depth(self.store.queue_depth().await?);
        let findings = self.store.open_finding_counts().await?;
        // Every severity is set, so one whose last finding was fixed falls to 0.
        let severities = SEVERITIES.iter().copied().chain(findings.iter().map(|(s, _)| s.as_str()));
        for severity in severities {
            let n = findings.iter().find(|(s, _)| s == severity).map_or(0, |(_, n)| *n);
            self.metrics.set_scan_findings(severity, n);
        }
        Ok(())
    }

    /// A usage event as the detector sees it: `pull`/`launch` (carried out) or
    /// `pull-refused`/`launch-refused`; other kinds are not about access. Whether the account
    /// was permitted and the image's state are what the event recorded, else the current ones.
    async fn usage_observation(
        &self,
        event: &kiln_store::UsageEvent,
    ) -> Result<Option<UsageObservation>, StoreError> {
        let (kind, refused) = match event.kind.as_str() {
            "pull" | "launch" => (event.kind.clone(), false),
            "pull-refused" => ("pull".to_owned(), true),
            "launch-refused" => ("launch".to_owned(), true),
            _ => return Ok(None),
        };
        let image = match self.store.get_image_by_arn(&event.image_arn).await {
            Ok(i) => Some(i),
            Err(StoreError::ImageNotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let permitted = match (event.details["permitted"].as_bool(), &image) {
            (Some(p), _) => p,
            (None, Some(image)) => {
                let shared = self.store.launch_permissions(&image.arn).await?;
                kiln_store::may_use(&image.account, &shared, &event.account)
            }
            (None, None) => false,
        };
        let image_state = event.details["imageState"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| image.as_ref().map(|i| i.state.as_str().to_owned()))
            .unwrap_or_else(|| "DELETED".to_owned());
        Ok(Some(UsageObservation {
            time: to_chrono(event.at),
            image_arn: event.image_arn.clone(),
            kind,
            account: event.account.clone(),
            permitted,
            refused,
            image_state,
        }))
    }

    /// The stage durations of a finished build, from the `stageDone` lines of its log.
    async fn stage_durations(&self, arn: &str) {
        let Ok(image) = self.store.get_image_by_arn(arn).await else { return };
        let Some(dir) = image.output_location else { return };
        let Ok(text) = tokio::fs::read_to_string(std::path::Path::new(&dir).join("build-log.jsonl")).await
        else {
            return;
        };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if v["event"] == "stageDone" {
                if let (Some(stage), Some(ms)) = (v["stage"].as_str(), v["millis"].as_u64()) {
                    self.metrics.observe_stage(stage, Duration::from_millis(ms));
                }
            }
        }
    }
}

/// The names the follower's positions are saved under.
const STATE_CHANGE_CURSOR: &str = "monitor.image-state-changes";
const USAGE_CURSOR: &str = "monitor.usage-events";

/// Inspector's severity names, as kiln's scanner records them.
const SEVERITIES: [&str; 6] = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNTRIAGED"];

/// Where the follower is in the store's feeds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    pub state_change: i64,
    pub usage: i64,
}
