//! The Prometheus metrics of `kiln serve`: one [`Metrics`] registry per server, updated by the
//! API's monitoring layer ([`crate::observe`]) for every request and by the server for builds,
//! the job queue and findings, and exposed unauthenticated on `GET /metrics` in the OpenMetrics
//! text format ([`handler`]). Built on `prometheus-client`, the official Rust client, so the
//! exposition's escaping, histogram buckets and `# EOF` are the client's, not ours.
//!
//! Label values are bounded by construction: operations are the model's names (or
//! `unknown`), states, stages and severities come from the server, and no label ever carries a
//! raw path, an ARN or an access key (a scanner must not be able to grow the registry).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::encode`]'s output (Prometheus 2.5+ asks for it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of [`Metrics::encode_text`]'s output, for scrapers that do not ask for
/// OpenMetrics.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The counter families, whose names differ between the two formats (see
/// [`Metrics::encode_text`]).
const COUNTERS: &[&str] = &[
    "kiln_image_state_transitions",
    "kiln_threat_findings",
    "kiln_api_requests",
    "kiln_webhook_deliveries",
    "kiln_audit_records_dropped",
];

/// The operation label of requests that match no operation of the model.
pub const UNKNOWN_OPERATION: &str = "unknown";

type Labels = Vec<(&'static str, String)>;

/// Request latency buckets: 1 ms to ~16 s (API calls are database reads and writes; the slow
/// tail is a locked SQLite writer or a large `ListImages`).
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

/// Build stage buckets: 1 s to ~9 h (a cached component layer takes seconds, a bootstrap or a
/// TCG-emulated test boot can take an hour).
fn stage_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1.0, 2.0, 16)
}

fn new_latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

fn new_stage_histogram() -> Histogram {
    Histogram::new(stage_buckets())
}

/// The registry and the handles the server updates. Cheap to share behind an [`Arc`]; every
/// update is a few atomic operations.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    images: Family<Labels, Gauge>,
    image_transitions: Family<Labels, Counter>,
    stage_duration: Family<Labels, Histogram, fn() -> Histogram>,
    queue_depth: Gauge,
    scan_findings: Family<Labels, Gauge>,
    threat_findings: Family<Labels, Counter>,
    api_requests: Family<Labels, Counter>,
    api_latency: Family<Labels, Histogram, fn() -> Histogram>,
    webhook_deliveries: Family<Labels, Counter>,
    audit_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every kiln metric registered (and no samples until they are updated).
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let images = Family::<Labels, Gauge>::default();
        registry.register(
            "kiln_images",
            "Images in the catalogue per state (set by the server)",
            images.clone(),
        );
        let image_transitions = Family::<Labels, Counter>::default();
        registry.register(
            "kiln_image_state_transitions",
            "Image state changes, by the state entered",
            image_transitions.clone(),
        );
        let stage_duration =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(new_stage_histogram);
        registry.register_with_unit(
            "kiln_build_stage_duration",
            "How long each build stage took",
            Unit::Seconds,
            stage_duration.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "kiln_job_queue_depth",
            "Jobs waiting for a worker (set by the server)",
            queue_depth.clone(),
        );
        let scan_findings = Family::<Labels, Gauge>::default();
        registry.register(
            "kiln_scan_findings",
            "Open vulnerability findings (latest scan of each image not deleted), by severity",
            scan_findings.clone(),
        );
        let threat_findings = Family::<Labels, Counter>::default();
        registry.register(
            "kiln_threat_findings",
            "Threat detection findings raised or updated, by type and severity",
            threat_findings.clone(),
        );
        let api_requests = Family::<Labels, Counter>::default();
        registry.register(
            "kiln_api_requests",
            "Image Builder API requests by operation, HTTP status and error code",
            api_requests.clone(),
        );
        let api_latency =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(new_latency_histogram);
        registry.register_with_unit(
            "kiln_api_request_duration",
            "Image Builder API request latency by operation",
            Unit::Seconds,
            api_latency.clone(),
        );
        let webhook_deliveries = Family::<Labels, Counter>::default();
        registry.register(
            "kiln_webhook_deliveries",
            "Webhook notifications by outcome (delivered, retried, failed, dropped)",
            webhook_deliveries.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "kiln_audit_records_dropped",
            "API call records not written to the audit log because its queue was full",
            audit_dropped.clone(),
        );
        Metrics {
            audit_dropped,
            registry,
            images,
            image_transitions,
            stage_duration,
            queue_depth,
            scan_findings,
            threat_findings,
            api_requests,
            api_latency,
            webhook_deliveries,
        }
    }

    /// Set how many images are in `state` (`AVAILABLE`, `BUILDING`, ...), from the catalogue.
    pub fn set_images_in_state(&self, state: &str, count: u64) {
        self.images.get_or_create(&vec![("state", label(state))]).set(clamp_i64(count));
    }

    /// Count one image entering `state`.
    pub fn record_image_transition(&self, state: &str) {
        self.image_transitions.get_or_create(&vec![("state", label(state))]).inc();
    }

    /// Record how long one build stage (`build`, `test`, `scan`, `distribute`, ...) took.
    pub fn observe_stage(&self, stage: &str, duration: Duration) {
        self.stage_duration.get_or_create(&vec![("stage", label(stage))]).observe(duration.as_secs_f64());
    }

    /// Set the number of queued jobs.
    pub fn set_queue_depth(&self, depth: u64) {
        self.queue_depth.set(clamp_i64(depth));
    }

    /// Set how many open vulnerability findings of `severity` the catalogue's images have
    /// (from their latest scans; a rescan or a deletion lowers it).
    pub fn set_scan_findings(&self, severity: &str, count: u64) {
        self.scan_findings.get_or_create(&vec![("severity", label(severity))]).set(clamp_i64(count));
    }

    /// Count a threat finding raised (or seen again) of `finding_type` and `severity`.
    pub fn record_threat_finding(&self, finding_type: &str, severity: &str) {
        self.threat_findings
            .get_or_create(&vec![("type", label(finding_type)), ("severity", label(severity))])
            .inc();
    }

    /// Count one API request and its latency. `operation` is the model's name or
    /// [`UNKNOWN_OPERATION`]; `error` the `x-amzn-ErrorType` (empty on success).
    pub fn record_request(&self, operation: &str, status: u16, error: &str, latency: Duration) {
        let operation = label(operation);
        self.api_requests
            .get_or_create(&vec![
                ("operation", operation.clone()),
                ("status", status.to_string()),
                ("error", label(error)),
            ])
            .inc();
        self.api_latency.get_or_create(&vec![("operation", operation)]).observe(latency.as_secs_f64());
    }

    /// Count one webhook delivery outcome: `delivered`, `retried`, `failed` or `dropped`.
    pub fn record_webhook(&self, outcome: &str) {
        self.webhook_deliveries.get_or_create(&vec![("outcome", label(outcome))]).inc();
    }

    /// Count one API call record the audit log could not take (its queue was full).
    pub fn record_audit_dropped(&self) {
        self.audit_dropped.inc();
    }

    /// The exposition in the OpenMetrics text format (which Prometheus' text parsers read too).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in the client, and
        // a partial page is better than a panic in the server.
        if let Err(error) = encode(&mut out, &self.registry) {
            tracing::warn!(%error, "encoding the metrics failed");
        }
        out
    }

    /// The exposition in the Prometheus text format 0.0.4. prometheus-client only writes
    /// OpenMetrics; the two differ, for what is registered here, in three ways: in 0.0.4 a
    /// counter's HELP and TYPE name the sample (`kiln_api_requests_total`), there are no UNIT
    /// lines and no `# EOF`. Samples, labels and histograms are written the same.
    pub fn encode_text(&self) -> String {
        let open_metrics = self.encode();
        let mut out = String::with_capacity(open_metrics.len());
        for line in open_metrics.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ')?;
                COUNTERS.contains(&name).then(|| format!("{prefix}{name}_total {tail}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }
}

/// Label values are kept short and printable (they come from the server, but a bug there must
/// not put a megabyte into every scrape), and escaped here because prometheus-client 0.24
/// writes label values verbatim: a `"` would otherwise end the value early and break the page
/// (caught by the Python parser test).
fn label(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars().filter(|c| !c.is_control()).take(128) {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `GET /metrics`: the exposition, unauthenticated (mount it outside the SigV4 router, see
/// [`crate::observe::with_monitoring`]): OpenMetrics when the scraper accepts it (Prometheus
/// does), the text format 0.0.4 otherwise.
pub async fn handler(State(metrics): State<Arc<Metrics>>, headers: HeaderMap) -> Response {
    let open_metrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = if open_metrics {
        (metrics.encode(), CONTENT_TYPE)
    } else {
        (metrics.encode_text(), TEXT_CONTENT_TYPE)
    };
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests;
