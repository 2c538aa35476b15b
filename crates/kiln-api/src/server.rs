//! The axum router of `kiln serve`: every request is read (within a size limit), its SigV4
//! signature verified against the caller's secret key, matched to an operation of the service
//! model by method and path, authorised as `imagebuilder:<Operation>` on the resource it
//! names, and handed to [`Operations`] with its input as one JSON object (body, query-string
//! and path members merged, as the model places them). Everything refused on the way gets an
//! AWS-shaped error; nothing reaches the operations unauthenticated or unauthorised.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::observe::CallInfo;
use crate::operations::{Location, OPERATIONS, Operation};
use crate::policy::{self, DecidingStatement, Decision, Policy};
use crate::sigv4::{self, SigV4Error, Verifier};

/// kiln's own operations, beside the model's: the Image Builder model has no such operation,
/// so each is authorised as the model's action named with it (what a policy already grants
/// for the same data). Paths are under `/kiln/` so they never collide with the model's.
pub const KILN_EXTENSIONS: &[(Operation, &str)] = &[(
    // A build's `build-log.jsonl`: as readable as the image itself.
    Operation {
        name: "GetImageLogs",
        method: "GET",
        path: "/kiln/GetImageLogs",
        members: &[
            ("imageBuildVersionArn", Location::Query),
            ("nextToken", Location::Query),
            ("maxResults", Location::Query),
        ],
        resource: Some("imageBuildVersionArn"),
    },
    "GetImage",
)];

/// The IAM action (`imagebuilder:<action>`) a call of `operation` is authorised as.
pub fn iam_action(operation: &Operation) -> &'static str {
    KILN_EXTENSIONS
        .iter()
        .find(|(extension, _)| extension.name == operation.name && extension.path == operation.path)
        .map_or(operation.name, |(_, action)| action)
}

/// The default limit on request bodies. Image Builder's largest inputs are component documents
/// (`data`, at most 16,000 characters) and policies; 1 MiB leaves room and bounds memory.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Who is calling, once their signature is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The access key id the request was signed with.
    pub access_key_id: String,
    /// The principal's ARN (`arn:aws:iam::123456789012:user/ana`), for messages and audit.
    pub principal_arn: String,
    /// The principal's account.
    pub account_id: String,
    /// The identity policies attached to the principal.
    pub policies: Vec<Policy>,
}

/// What the credential store knows of an access key.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The secret key the request must be signed with.
    pub secret_access_key: String,
    /// The principal it belongs to.
    pub caller: Caller,
}

/// The credential store: access key id → secret key and principal.
pub trait Credentials: Send + Sync + 'static {
    /// The credential of `access_key_id`, or `None` if unknown or disabled. `security_token`
    /// is the request's `X-Amz-Security-Token`; a store without temporary credentials must
    /// answer `None` when one is given.
    fn lookup(
        &self,
        access_key_id: &str,
        security_token: Option<&str>,
    ) -> impl Future<Output = Result<Option<Credential>, ApiError>> + Send;
}

/// One authenticated, authorised call of an operation.
#[derive(Debug, Clone)]
pub struct Call {
    /// The operation (name, HTTP binding).
    pub operation: &'static Operation,
    /// Who calls.
    pub caller: Caller,
    /// The resource the call was authorised on (`*` when it names none).
    pub resource: String,
    /// The statement that allowed it (for the audit log).
    pub authorized_by: DecidingStatement,
    /// The input: a JSON object with the model's member names.
    pub input: Value,
}

/// The operations themselves. An implementation answers the operations it does not
/// implement with [`ApiError::NotImplemented`] (see [`not_implemented`]), never a success.
pub trait Operations: Send + Sync + 'static {
    /// Runs one call and returns the output object.
    fn call(&self, call: Call) -> impl Future<Output = Result<Value, ApiError>> + Send;
}

/// The error for an operation kiln does not implement.
pub fn not_implemented(operation: &Operation) -> ApiError {
    ApiError::NotImplemented(format!("kiln does not implement {} yet.", operation.name))
}

/// Operations before any is implemented: every call is answered [`ApiError::NotImplemented`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoOperations;

impl Operations for NoOperations {
    async fn call(&self, call: Call) -> Result<Value, ApiError> {
        Err(not_implemented(call.operation))
    }
}

/// The clock the signature's date is checked against (injectable for tests).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// How the router checks requests.
#[derive(Clone)]
pub struct ServerConfig {
    /// The SigV4 verifier (service `imagebuilder`, optionally one region).
    pub verifier: Verifier,
    /// The largest request body accepted, in bytes.
    pub body_limit: usize,
    /// The current time.
    pub clock: Clock,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("verifier", &self.verifier)
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            verifier: Verifier::new("imagebuilder"),
            body_limit: DEFAULT_BODY_LIMIT,
            clock: Arc::new(Utc::now),
        }
    }
}

struct Inner<C, O> {
    config: ServerConfig,
    credentials: Arc<C>,
    operations: Arc<O>,
}

/// The router answering the Image Builder API.
pub fn router<C: Credentials, O: Operations>(
    config: ServerConfig,
    credentials: Arc<C>,
    operations: Arc<O>,
) -> Router {
    let inner = Arc::new(Inner { config, credentials, operations });
    // One fallback handler: the operation table is matched by hand, because the model's paths
    // (`/tags/{resourceArn}` with an encoded ARN) and AWS's error for unknown paths are not
    // what axum's router would give.
    Router::new().fallback(handle::<C, O>).with_state(inner)
}

/// A request id for the `x-amzn-RequestId` header (SDKs report it as `RequestId`) and the
/// audit log: unique within a process, and across restarts thanks to the start time.
fn request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static START: OnceLock<u128> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hex = format!("{:020x}{n:012x}", start & ((1u128 << 80) - 1));
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

async fn handle<C: Credentials, O: Operations>(
    State(inner): State<Arc<Inner<C, O>>>,
    request: Request<Body>,
) -> Response {
    let id = request_id();
    // What the monitoring layer (`crate::observe`) reads back from the response: filled in as
    // the request gets through each check, so refusals are attributed as far as known.
    let mut info = CallInfo { request_id: id.clone(), ..CallInfo::default() };
    let mut response = match serve(&inner, request, &id, &mut info).await {
        Ok(output) => {
            let mut response = (StatusCode::OK, output.to_string()).into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(error) => {
            tracing::debug!(request_id = %id, code = error.code(), message = error.message(), "refused");
            // The body may be unread: the connection cannot be reused, and saying so keeps
            // clients from sending their next request on a socket the server closes.
            let close = matches!(error, ApiError::RequestTooLarge(_));
            let mut response = error.into_response();
            if close {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-amzn-RequestId", value);
    }
    response.extensions_mut().insert(info);
    response
}

async fn serve<C: Credentials, O: Operations>(
    inner: &Inner<C, O>,
    request: Request<Body>,
    request_id: &str,
    info: &mut CallInfo,
) -> Result<Value, ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, inner.config.body_limit).await?;

    let verifier = &inner.config.verifier;
    let auth = verifier.parse(&parts.uri, &parts.headers)?;
    info.access_key_id = Some(auth.access_key_id.clone());
    let credential = inner
        .credentials
        .lookup(&auth.access_key_id, auth.security_token.as_deref())
        .await?
        .ok_or_else(SigV4Error::unknown_access_key)?;
    let now = (inner.config.clock)();
    let signed =
        sigv4::Request { method: &parts.method, uri: &parts.uri, headers: &parts.headers, body: &body };
    verifier.verify(&auth, &signed, &credential.secret_access_key, now)?;
    info.account_id = Some(credential.caller.account_id.clone());
    info.principal_arn = Some(credential.caller.principal_arn.clone());

    let (operation, label) = route(&parts.method, parts.uri.path())?;
    let input = build_input(operation, parts.uri.query().unwrap_or(""), label, &body)?;
    let resource = operation
        .resource
        .and_then(|member| input.get(member))
        .and_then(Value::as_str)
        .unwrap_or("*")
        .to_owned();
    info.operation = Some(operation.name);
    info.resource = Some(resource.clone());
    let caller = credential.caller;
    let action = format!("imagebuilder:{}", iam_action(operation));
    let decision = policy::evaluate(&caller.policies, &action, &resource);
    tracing::info!(
        target: "kiln_api::audit",
        request_id = %request_id,
        principal = %caller.principal_arn,
        access_key_id = %caller.access_key_id,
        action = %action,
        resource = %resource,
        decision = ?decision,
        "authorization"
    );
    let authorized_by = match decision {
        Decision::Allowed(statement) => statement,
        denied => {
            return Err(ApiError::AccessDenied(denied.denial_message(
                &caller.principal_arn,
                &action,
                &resource,
            )));
        }
    };
    inner.operations.call(Call { operation, caller, resource, authorized_by, input }).await
}

/// How much of an oversized body is read and thrown away before answering: a client still
/// sending when the server closes gets a reset instead of the 413, so bodies up to this size
/// are drained first; beyond it the connection is closed at once (issue 8's load test).
pub const DRAIN_LIMIT: u64 = 8 * 1024 * 1024;

async fn read_body(headers: &axum::http::HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt;
    let too_large = || ApiError::RequestTooLarge(format!("The request body is larger than {limit} bytes."));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(too_large());
    }
    let mut over = declared.is_some_and(|n| n > limit as u64);
    let mut out = Vec::with_capacity(if over { 0 } else { declared.unwrap_or(0) as usize });
    let mut seen = 0u64;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::InvalidRequest(format!("The request body could not be read: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen += data.len() as u64;
        if seen > DRAIN_LIMIT {
            return Err(too_large());
        }
        if !over && seen > limit as u64 {
            over = true;
            out = Vec::new();
        }
        if !over {
            out.extend_from_slice(&data);
        }
    }
    if over { Err(too_large()) } else { Ok(out) }
}

/// The operation at `method` and `path`, and the decoded path label if it has one.
pub(crate) fn route(method: &Method, path: &str) -> Result<(&'static Operation, Option<String>), ApiError> {
    let mut at_path: Vec<&'static Operation> = Vec::new();
    let mut label = None;
    for operation in OPERATIONS.iter().chain(KILN_EXTENSIONS.iter().map(|(o, _)| o)) {
        let matched = match operation.path.split_once('{') {
            Some((prefix, _)) => match path.strip_prefix(prefix) {
                Some(rest) if !rest.is_empty() => {
                    let decoded = percent_decode_str(rest).decode_utf8().map_err(|_| {
                        ApiError::InvalidRequest("The path is not UTF-8 once decoded.".into())
                    })?;
                    label = Some(decoded.into_owned());
                    true
                }
                _ => false,
            },
            None => operation.path == path,
        };
        if matched {
            if operation.method == method.as_str() {
                return Ok((operation, label));
            }
            at_path.push(operation);
        }
    }
    let message = match at_path.as_slice() {
        [] => format!("No Image Builder operation at {method} {}.", truncate(path)),
        found => format!(
            "No Image Builder operation at {method} {}; this path takes {}.",
            truncate(path),
            found.iter().map(|o| format!("{} ({})", o.method, o.name)).collect::<Vec<_>>().join(", ")
        ),
    };
    Err(ApiError::InvalidAction(message))
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The body's JSON object with the query-string and path members added.
fn build_input(
    operation: &Operation,
    query: &str,
    label: Option<String>,
    body: &[u8],
) -> Result<Value, ApiError> {
    let mut input: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err(ApiError::InvalidRequest("The request body must be a JSON object.".into()));
            }
            Err(e) => {
                return Err(ApiError::InvalidRequest(format!("The request body is not valid JSON: {e}.")));
            }
        }
    };
    let pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
            (decode(k), decode(v))
        })
        .collect();
    for (name, location) in operation.members {
        let mut values = pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone());
        let value = match location {
            Location::Label => label.clone().map(Value::String),
            Location::Query => values.next().map(Value::String),
            Location::QueryList => {
                let list: Vec<Value> = values.map(Value::String).collect();
                (!list.is_empty()).then_some(Value::Array(list))
            }
        };
        if let Some(value) = value {
            input.insert((*name).to_owned(), value);
        }
    }
    Ok(Value::Object(input))
}

#[cfg(test)]
mod tests;
