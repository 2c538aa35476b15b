//! Notifications to webhook URLs: image state changes and threat findings, as SNS-shaped
//! JSON messages (`Type: Notification`, `MessageId`, `TopicArn`, `Subject`, `Message` (a JSON
//! string), `Timestamp`), so receivers written for Image Builder's SNS notifications need
//! little change.
//!
//! Each delivery is signed with HMAC-SHA256 under the webhook's own secret, over
//! `TIMESTAMP "." BODY` (the exact bytes sent), in two headers:
//!
//! ```text
//! X-Kiln-Timestamp: 1711845005
//! X-Kiln-Signature: sha256=5d41402abc4b2a76b9719d911017c592...
//! ```
//!
//! The timestamp is in the signed content so a captured delivery cannot be replayed later:
//! receivers check it with [`verify`], which also refuses timestamps more than
//! [`DEFAULT_TOLERANCE`] from their clock. `X-Kiln-Message-Id` repeats the `MessageId` so
//! receivers can drop the duplicates retries may cause.
//!
//! Delivery never blocks a build: [`Dispatcher::notify`] only spawns a task, and at most
//! `queue_capacity` notifications are outstanding (queued, in flight or waiting to retry);
//! beyond that new ones are dropped and counted. Failures (connection errors, timeouts, 5xx,
//! 408, 425, 429) are retried with exponential backoff (a `Retry-After` within the maximum
//! backoff is honoured) up to `max_attempts`; other 4xx answers are final, since the receiver
//! refused the message itself (a wrong secret, say).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// The header carrying `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-kiln-signature";
/// The header carrying the Unix time (seconds) the signature was made at.
pub const TIMESTAMP_HEADER: &str = "x-kiln-timestamp";
/// The header repeating the message's `MessageId`.
pub const MESSAGE_ID_HEADER: &str = "x-kiln-message-id";
/// The header naming the topic (`kiln-image-state-change`, `kiln-threat-finding`).
pub const TOPIC_HEADER: &str = "x-kiln-topic";
/// How far a delivery's timestamp may be from the receiver's clock, either way.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// SNS limits subjects to 100 characters; so do we.
const MAX_SUBJECT: usize = 100;

/// What went wrong configuring webhooks or verifying a delivery.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("webhook URL {url:?} is not valid: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the secret of webhook {url} is empty; give each webhook a random secret of 32 bytes or more")]
    EmptySecret { url: String },
    #[error("webhooks are delivered from a Tokio runtime, and none is running")]
    NoRuntime,
    #[error("the delivery has no {0} header")]
    MissingHeader(&'static str),
    #[error("the {TIMESTAMP_HEADER} header is not a Unix time in seconds")]
    BadTimestamp,
    #[error("the delivery was signed {age_seconds} s away from now, beyond the tolerance")]
    Stale { age_seconds: i64 },
    #[error("the {SIGNATURE_HEADER} header is not `sha256=` and 64 hex digits")]
    MalformedSignature,
    #[error("the signature does not match the body and timestamp")]
    BadSignature,
}

/// The topics a webhook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Topic {
    /// An image changed state (BUILDING, AVAILABLE, FAILED, DEPRECATED, ...).
    #[serde(rename = "kiln-image-state-change")]
    ImageStateChange,
    /// Threat detection raised a finding.
    #[serde(rename = "kiln-threat-finding")]
    ThreatFinding,
}

impl Topic {
    pub fn name(self) -> &'static str {
        match self {
            Topic::ImageStateChange => "kiln-image-state-change",
            Topic::ThreatFinding => "kiln-threat-finding",
        }
    }
}

/// Where notifications come from: the server's region and account, for the `TopicArn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub region: String,
    pub account: String,
}

impl Source {
    /// `arn:aws:sns:REGION:ACCOUNT:TOPIC`, the shape SNS topic ARNs have.
    pub fn topic_arn(&self, topic: Topic) -> String {
        format!("arn:aws:sns:{}:{}:{}", self.region, self.account, topic.name())
    }
}

/// One notification, shaped like an SNS HTTP delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Notification {
    /// Always `Notification`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Unique per notification, the same across the retries of its delivery.
    pub message_id: String,
    pub topic_arn: String,
    pub subject: String,
    /// The event itself, a JSON document in a string (as SNS carries it).
    pub message: String,
    /// When the notification was made, RFC 3339 with milliseconds.
    pub timestamp: String,
    #[serde(skip)]
    pub topic: Option<Topic>,
}

/// An image's state change, the `Message` of [`Topic::ImageStateChange`] notifications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStateChange {
    pub image_arn: String,
    /// The state before (absent for a new image).
    pub previous_state: Option<String>,
    pub state: String,
    pub reason: Option<String>,
    pub time: DateTime<Utc>,
}

impl Notification {
    /// A notification on `topic` with `message` (serialised to a string) and `subject`
    /// (truncated to 100 characters).
    pub fn new(
        source: &Source,
        topic: Topic,
        subject: &str,
        message: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Notification {
        let message = message.to_string();
        Notification {
            kind: "Notification".into(),
            message_id: message_id(&message, now),
            topic_arn: source.topic_arn(topic),
            subject: truncate(subject, MAX_SUBJECT),
            message,
            timestamp: now.to_rfc3339_opts(SecondsFormat::Millis, true),
            topic: Some(topic),
        }
    }

    /// The notification of an image's state change.
    pub fn image_state_change(
        source: &Source,
        change: &ImageStateChange,
        now: DateTime<Utc>,
    ) -> Notification {
        let subject = format!("{} is now {}", short_image_name(&change.image_arn), change.state);
        let message = serde_json::to_value(change).unwrap_or(serde_json::Value::Null);
        Notification::new(source, Topic::ImageStateChange, &subject, &message, now)
    }

    /// The exact body sent (and signed).
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// `name/1.0.0/3` out of an image ARN, for subjects.
fn short_image_name(arn: &str) -> &str {
    arn.split_once(":image/").map_or(arn, |(_, rest)| rest)
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// A UUID-shaped id: the digest of the message, the time, the process and a counter, so two
/// notifications never share one, across processes too.
fn message_id(message: &str, now: DateTime<Utc>) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = Sha256::new();
    hasher.update(message.as_bytes());
    hasher.update(now.timestamp_nanos_opt().unwrap_or_default().to_be_bytes());
    hasher.update(std::process::id().to_be_bytes());
    hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    let hex = hex::encode(&hasher.finalize()[..16]);
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// The signature of `body` sent at `timestamp`: `sha256=` and the hex HMAC-SHA256 of
/// `TIMESTAMP "." BODY` under `secret`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("sha256={}", hex::encode(mac(secret, timestamp, body).finalize().into_bytes()))
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// For receivers: whether a delivery (its headers and exact body bytes) was signed with
/// `secret` within [`DEFAULT_TOLERANCE`] of `now`. Check this before parsing the body, and
/// drop messages whose `MessageId` you have already handled (retries may repeat one).
///
/// ```
/// # use kiln_api::webhook::{sign, verify, SIGNATURE_HEADER, TIMESTAMP_HEADER};
/// let body = br#"{"Type":"Notification"}"#;
/// let now = chrono::Utc::now();
/// let mut headers = axum::http::HeaderMap::new();
/// headers.insert(TIMESTAMP_HEADER, now.timestamp().to_string().parse().unwrap());
/// headers.insert(SIGNATURE_HEADER, sign(b"secret", now.timestamp(), body).parse().unwrap());
/// assert!(verify(b"secret", &headers, body, now).is_ok());
/// assert!(verify(b"other", &headers, body, now).is_err());
/// ```
pub fn verify(
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), WebhookError> {
    verify_with_tolerance(secret, headers, body, now, DEFAULT_TOLERANCE)
}

/// [`verify`] with another tolerance.
pub fn verify_with_tolerance(
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), WebhookError> {
    let header = |name: &'static str| {
        headers.get(name).and_then(|v| v.to_str().ok()).ok_or(WebhookError::MissingHeader(name))
    };
    let timestamp: i64 = header(TIMESTAMP_HEADER)?.trim().parse().map_err(|_| WebhookError::BadTimestamp)?;
    let signature = header(SIGNATURE_HEADER)?.trim();
    let digest = signature
        .strip_prefix("sha256=")
        .filter(|hex| hex.len() == 64)
        .and_then(|hex| hex::decode(hex).ok())
        .ok_or(WebhookError::MalformedSignature)?;
    let age = now.timestamp().saturating_sub(timestamp);
    if age.unsigned_abs() > tolerance.as_secs() {
        return Err(WebhookError::Stale { age_seconds: age });
    }
    // verify_slice compares in constant time.
    mac(secret, timestamp, body).verify_slice(&digest).map_err(|_| WebhookError::BadSignature)
}

/// One webhook: where to send, the secret to sign with, and the topics it wants (all when
/// empty). `Debug` does not show the secret.
#[derive(Clone)]
pub struct Webhook {
    url: reqwest::Url,
    secret: Arc<[u8]>,
    topics: Vec<Topic>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url.as_str())
            .field("secret", &"<redacted>")
            .field("topics", &self.topics)
            .finish()
    }
}

impl Webhook {
    /// A webhook at `url` (http or https, no user and password in it) signing with `secret`.
    pub fn new(url: &str, secret: &[u8], topics: Vec<Topic>) -> Result<Webhook, WebhookError> {
        let invalid =
            |reason: &str| WebhookError::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
        let parsed = reqwest::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("only http and https URLs are supported"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            // Credentials in the URL would end up in logs and error messages.
            return Err(invalid("put no credentials in the URL; the signature authenticates kiln"));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(invalid("the URL has no host"));
        }
        if secret.is_empty() {
            return Err(WebhookError::EmptySecret { url: url.to_owned() });
        }
        Ok(Webhook { url: parsed, secret: secret.into(), topics })
    }

    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Whether this webhook wants notifications of `topic`.
    pub fn wants(&self, topic: Option<Topic>) -> bool {
        self.topics.is_empty() || topic.is_some_and(|t| self.topics.contains(&t))
    }
}

/// How deliveries are made.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Notifications outstanding at once (queued, in flight, waiting to retry), over all
    /// webhooks; beyond it new ones are dropped.
    pub queue_capacity: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// The wait before the first retry; doubled each time.
    pub initial_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// The timeout of one attempt (connection, request and response).
    pub timeout: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            queue_capacity: 1024,
            concurrency: 8,
            max_attempts: 6,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Counts of delivery outcomes since the dispatcher started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Deliveries a webhook accepted (2xx).
    pub delivered: u64,
    /// Attempts that failed and were retried.
    pub retried: u64,
    /// Deliveries given up (attempts exhausted or a final 4xx).
    pub failed: u64,
    /// Notifications not queued because the queue was full.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// Sends notifications to the configured webhooks in the background. Clone freely.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    inner: Arc<DispatcherInner>,
}

#[derive(Debug)]
struct DispatcherInner {
    webhooks: Vec<Webhook>,
    config: DeliveryConfig,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    slots: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
    counters: Counters,
    metrics: Option<Arc<Metrics>>,
}

/// What [`Dispatcher::notify`] did with a notification.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// Deliveries started (one per webhook wanting the topic).
    pub queued: usize,
    /// Deliveries dropped because the queue was full.
    pub dropped: usize,
}

impl Dispatcher {
    /// A dispatcher for `webhooks`, delivering on the current Tokio runtime.
    pub fn start(
        webhooks: Vec<Webhook>,
        config: DeliveryConfig,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Dispatcher, WebhookError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WebhookError::NoRuntime)?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            // A redirect would send the signed message somewhere the operator did not name.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kiln-webhook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError::InvalidUrl { url: String::new(), reason: e.to_string() })?;
        let slots = Arc::new(Semaphore::new(config.queue_capacity.max(1)));
        let in_flight = Arc::new(Semaphore::new(config.concurrency.max(1)));
        Ok(Dispatcher {
            inner: Arc::new(DispatcherInner {
                webhooks,
                config,
                client,
                runtime,
                slots,
                in_flight,
                counters: Counters::default(),
                metrics,
            }),
        })
    }

    /// Queue `notification` for every webhook that wants its topic. Never waits.
    pub fn notify(&self, notification: &Notification) -> Enqueued {
        let mut result = Enqueued::default();
        let body: Arc<[u8]> = notification.body().into();
        for webhook in self.inner.webhooks.iter().filter(|w| w.wants(notification.topic)) {
            let Ok(slot) = Arc::clone(&self.inner.slots).try_acquire_owned() else {
                result.dropped += 1;
                self.inner.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.inner.metric("dropped");
                tracing::warn!(url = webhook.url(), message_id = %notification.message_id, "webhook queue full; notification dropped");
                continue;
            };
            result.queued += 1;
            let inner = Arc::clone(&self.inner);
            let webhook = webhook.clone();
            let body = Arc::clone(&body);
            let message_id = notification.message_id.clone();
            let topic = notification.topic;
            self.inner.runtime.spawn(async move {
                inner.deliver(&webhook, &body, &message_id, topic).await;
                drop(slot);
            });
        }
        result
    }

    /// Outcomes so far.
    pub fn stats(&self) -> DeliveryStats {
        let c = &self.inner.counters;
        DeliveryStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }

    /// Wait until every queued delivery has finished (delivered or given up), for a graceful
    /// shutdown.
    pub async fn flush(&self) {
        let all = u32::try_from(self.inner.config.queue_capacity.max(1)).unwrap_or(u32::MAX);
        if let Ok(permits) = self.inner.slots.acquire_many(all).await {
            drop(permits);
        }
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// Try again (after the server's `Retry-After`, when it gave one).
    Retry(Option<Duration>),
    /// The receiver refused the message; retrying would not help.
    Refused,
}

impl DispatcherInner {
    fn metric(&self, outcome: &str) {
        if let Some(m) = &self.metrics {
            m.record_webhook(outcome);
        }
    }

    async fn deliver(&self, webhook: &Webhook, body: &[u8], message_id: &str, topic: Option<Topic>) {
        let attempts = self.config.max_attempts.max(1);
        for attempt in 1..=attempts {
            let outcome = self.attempt(webhook, body, message_id, topic).await;
            match outcome {
                Attempt::Delivered => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    self.metric("delivered");
                    return;
                }
                Attempt::Refused => break,
                Attempt::Retry(_) if attempt == attempts => break,
                Attempt::Retry(retry_after) => {
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                    self.metric("retried");
                    let wait = retry_after
                        .filter(|d| *d <= self.config.max_backoff)
                        .unwrap_or_else(|| backoff(&self.config, attempt, message_id));
                    tokio::time::sleep(wait).await;
                }
            }
        }
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        self.metric("failed");
        tracing::warn!(url = webhook.url(), message_id, "webhook delivery given up");
    }

    async fn attempt(
        &self,
        webhook: &Webhook,
        body: &[u8],
        message_id: &str,
        topic: Option<Topic>,
    ) -> Attempt {
        let Ok(_permit) = self.in_flight.acquire().await else {
            return Attempt::Refused;
        };
        // Signed afresh each attempt: a retry hours later must still pass the receiver's
        // replay window.
        let timestamp = Utc::now().timestamp();
        let mut request = self
            .client
            .post(webhook.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, sign(&webhook.secret, timestamp, body))
            .header(MESSAGE_ID_HEADER, message_id)
            .body(body.to_vec());
        if let Some(topic) = topic {
            request = request.header(TOPIC_HEADER, topic.name());
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    Attempt::Delivered
                } else if status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429) {
                    tracing::debug!(url = webhook.url(), %status, message_id, "webhook delivery failed; will retry");
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    Attempt::Retry(retry_after)
                } else {
                    tracing::warn!(url = webhook.url(), %status, message_id, "webhook refused the notification");
                    Attempt::Refused
                }
            }
            Err(error) => {
                tracing::debug!(url = webhook.url(), %error, message_id, "webhook delivery failed; will retry");
                Attempt::Retry(None)
            }
        }
    }
}

/// The wait after failed attempt `attempt` (1-based): `initial × 2^(attempt-1)`, at most
/// `max_backoff`, plus up to a quarter more spread by the message id so that many messages
/// failing together do not retry together.
fn backoff(config: &DeliveryConfig, attempt: u32, message_id: &str) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    let base = config.initial_backoff.saturating_mul(factor).min(config.max_backoff);
    let spread =
        message_id.bytes().fold(u64::from(attempt), |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let jitter = base.mul_f64((spread % 1000) as f64 / 4000.0);
    base.saturating_add(jitter).min(config.max_backoff)
}

#[cfg(test)]
mod tests;
