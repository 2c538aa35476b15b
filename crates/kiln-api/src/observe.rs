//! The monitoring layer around the API router: for every request it measures the latency,
//! counts operation, status and error code in [`Metrics`], and hands one [`ApiCallRecord`]
//! (who, what, on which resource, with which result, from where) to a [`CallSink`], which the
//! server implements to write the audit log and feed threat detection. [`with_monitoring`]
//! puts the layer around [`crate::server::router`] and mounts `GET /metrics` beside it,
//! outside the layer and without authentication.
//!
//! What the router learnt about a request travels back on the response as a [`CallInfo`]
//! extension, so a refused request is still attributed as far as it got: the access key it
//! claimed (even when the signature was wrong), the caller once the signature held, the
//! operation and resource once routed.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Request, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::metrics::{self, Metrics, UNKNOWN_OPERATION};
use crate::server::Clock;

/// How far the router got with a request; set by the router as a response extension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallInfo {
    /// The `x-amzn-RequestId` of the response.
    pub request_id: String,
    /// The access key id the request claimed, once its signature parameters parsed (also when
    /// the key is unknown or the signature wrong: that is what failed-authentication alerts
    /// are about).
    pub access_key_id: Option<String>,
    /// The caller's account, once the signature was verified.
    pub account_id: Option<String>,
    /// The caller's principal ARN, once the signature was verified.
    pub principal_arn: Option<String>,
    /// The operation, once the signature was verified and the path matched one.
    pub operation: Option<&'static str>,
    /// The resource the call was authorised on (`*` when it names none).
    pub resource: Option<String>,
}

/// The longest user agent kept; SDK agents are ~200 characters, and anything longer is noise
/// a caller chose to send into our log.
pub const MAX_USER_AGENT: usize = 512;

/// One API call as the audit log and threat detection see it. Never holds a secret: the
/// access key id identifies a key, the secret key is never read here.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiCallRecord {
    /// When the request arrived.
    pub time: DateTime<Utc>,
    pub request_id: String,
    /// The caller's account (when authenticated).
    pub account_id: Option<String>,
    /// The caller's principal ARN (when authenticated).
    pub principal_arn: Option<String>,
    /// The access key id the request was signed with, or claimed to be.
    pub access_key_id: Option<String>,
    /// The operation's name, or [`UNKNOWN_OPERATION`] when the path matches none.
    pub operation: String,
    /// The resource ARN the call was authorised on (`*` when it names none).
    pub resource: Option<String>,
    /// The error code (`x-amzn-ErrorType`), `None` on success.
    pub error_code: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// The client's address (the connection's peer, or the proxy's `X-Forwarded-For` entry
    /// when the proxy is trusted).
    pub source_address: Option<IpAddr>,
    /// The `User-Agent` header, truncated to [`MAX_USER_AGENT`] characters.
    pub user_agent: Option<String>,
    /// How long the server took to answer.
    #[serde(with = "duration_millis")]
    pub duration: Duration,
}

impl ApiCallRecord {
    /// `Success`, or the error code: the audit log's `result` column.
    pub fn result(&self) -> &str {
        self.error_code.as_deref().unwrap_or("Success")
    }

    /// Whether the signature was verified (the caller is known).
    pub fn authenticated(&self) -> bool {
        self.principal_arn.is_some()
    }
}

mod duration_millis {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Where each call's record goes: the server writes it to the audit log (kiln-store's
/// `record_audit`) and feeds it to [`crate::threat::Detector`]. Awaited before the response
/// is sent, so every answered call is on record; keep it to a single insert.
pub trait CallSink: Send + Sync + 'static {
    fn record(&self, call: ApiCallRecord) -> impl Future<Output = ()> + Send;
}

/// A sink that keeps nothing (metrics only).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSink;

impl CallSink for NoSink {
    async fn record(&self, _call: ApiCallRecord) {}
}

/// The monitoring layer's state.
pub struct Monitor<S> {
    pub metrics: Arc<Metrics>,
    pub sink: Arc<S>,
    /// Take the client address from the last `X-Forwarded-For` entry (set only behind a
    /// reverse proxy that appends it; otherwise any client could choose its address).
    pub trust_forwarded_for: bool,
    /// The time recorded for each call.
    pub clock: Clock,
}

impl<S> std::fmt::Debug for Monitor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("trust_forwarded_for", &self.trust_forwarded_for)
            .finish_non_exhaustive()
    }
}

impl<S: CallSink> Monitor<S> {
    /// A monitor with the system clock that ignores `X-Forwarded-For`.
    pub fn new(metrics: Arc<Metrics>, sink: Arc<S>) -> Monitor<S> {
        Monitor { metrics, sink, trust_forwarded_for: false, clock: Arc::new(Utc::now) }
    }
}

/// `api` (the router of [`crate::server::router`]) inside the monitoring layer, with
/// `GET /metrics` beside it. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so that records carry the client's
/// address.
pub fn with_monitoring<S: CallSink>(api: Router, monitor: Arc<Monitor<S>>) -> Router {
    let metrics = Arc::clone(&monitor.metrics);
    let api = api.layer(axum::middleware::from_fn_with_state(monitor, track::<S>));
    Router::new().route("/metrics", get(metrics::handler)).with_state(metrics).merge(api)
}

/// The middleware: time the call, then count it and hand its record to the sink.
pub async fn track<S: CallSink>(
    State(monitor): State<Arc<Monitor<S>>>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let time = (monitor.clock)();
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let source_address = source_address(request.headers(), peer, monitor.trust_forwarded_for);
    let user_agent = request
        .headers()
        .get(header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).chars().take(MAX_USER_AGENT).collect());

    let response = next.run(request).await;
    let duration = started.elapsed();

    let info = response.extensions().get::<CallInfo>().cloned().unwrap_or_default();
    // Refused before routing (bad signature): name the operation the path would have been,
    // so per-operation dashboards also show the refusals.
    let operation = info
        .operation
        .or_else(|| crate::server::route(&method, &path).ok().map(|(op, _)| op.name))
        .unwrap_or(UNKNOWN_OPERATION);
    let error_code = response
        .headers()
        .get("x-amzn-errortype")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let status = response.status().as_u16();
    monitor.metrics.record_request(operation, status, error_code.as_deref().unwrap_or(""), duration);
    let request_id = if info.request_id.is_empty() {
        response
            .headers()
            .get("x-amzn-requestid")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    } else {
        info.request_id
    };
    let record = ApiCallRecord {
        time,
        request_id,
        account_id: info.account_id,
        principal_arn: info.principal_arn,
        access_key_id: info.access_key_id,
        operation: operation.to_owned(),
        resource: info.resource,
        error_code,
        status,
        source_address,
        user_agent,
        duration,
    };
    monitor.sink.record(record).await;
    response
}

/// The client's address: the peer's, or with a trusted proxy the last `X-Forwarded-For`
/// entry (the one the proxy appended; entries before it are the client's own claims).
fn source_address(headers: &HeaderMap, peer: Option<IpAddr>, trust_forwarded_for: bool) -> Option<IpAddr> {
    if trust_forwarded_for {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .last()
            // Only the last entry: skipping a malformed one would let the client's own claim
            // before it win.
            .and_then(|entry| entry.trim().parse::<IpAddr>().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    peer
}

#[cfg(test)]
mod tests;
