use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::error::ApiError;
use crate::policy::Policy;
use crate::server::{Call, Caller, Credential, Credentials, Operations, ServerConfig, router};
use crate::sigv4::{SigningParams, sign};

const AKID: &str = "AKIAKILNEXAMPLE00001";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const IMAGE: &str = "arn:aws:imagebuilder:eu-west-3:123456789012:image/web/1.0.0/1";

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-03-31T00:30:05Z").unwrap().with_timezone(&Utc)
}

struct Keys(HashMap<String, Credential>);

impl Credentials for Keys {
    async fn lookup(
        &self,
        access_key_id: &str,
        _token: Option<&str>,
    ) -> Result<Option<Credential>, ApiError> {
        Ok(self.0.get(access_key_id).cloned())
    }
}

struct Echo;

impl Operations for Echo {
    async fn call(&self, call: Call) -> Result<Value, ApiError> {
        Ok(serde_json::json!({ "operation": call.operation.name }))
    }
}

#[derive(Default)]
struct Collect(Mutex<Vec<ApiCallRecord>>);

impl CallSink for Collect {
    async fn record(&self, call: ApiCallRecord) {
        self.0.lock().unwrap().push(call);
    }
}

impl Collect {
    fn take(&self) -> Vec<ApiCallRecord> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn keys() -> Arc<Keys> {
    let policy = Policy::parse(
        "images",
        r#"{"Statement":[{"Effect":"Allow","Action":"imagebuilder:*","Resource":"*"},
           {"Effect":"Deny","Action":"imagebuilder:DeleteImage","Resource":"*"}]}"#,
    )
    .unwrap();
    let caller = Caller {
        access_key_id: AKID.into(),
        principal_arn: "arn:aws:iam::123456789012:user/ana".into(),
        account_id: "123456789012".into(),
        policies: vec![policy],
    };
    Arc::new(Keys(HashMap::from([(
        AKID.to_owned(),
        Credential { secret_access_key: SECRET.into(), caller },
    )])))
}

fn app(trust_forwarded_for: bool) -> (Router, Arc<Collect>, Arc<Metrics>) {
    let config = ServerConfig { clock: Arc::new(now), ..ServerConfig::default() };
    let api = router(config, keys(), Arc::new(Echo));
    let sink = Arc::new(Collect::default());
    let metrics = Arc::new(Metrics::new());
    let monitor = Monitor {
        metrics: Arc::clone(&metrics),
        sink: Arc::clone(&sink),
        trust_forwarded_for,
        clock: Arc::new(now),
    };
    (with_monitoring(api, Arc::new(monitor)), sink, metrics)
}

fn signed(method: &str, path_and_query: &str, secret: &str) -> Request<Body> {
    let method: Method = method.parse().unwrap();
    let uri: axum::http::Uri = path_and_query.parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
    headers.insert("user-agent", HeaderValue::from_static("aws-cli/2.15.0 Python/3.11"));
    let params = SigningParams {
        access_key_id: AKID,
        secret_access_key: secret,
        region: "eu-west-3",
        service: "imagebuilder",
        time: now(),
    };
    sign(&method, &uri, &mut headers, b"", &params).unwrap();
    let mut request = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
    *request.headers_mut() = headers;
    request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 10], 40000))));
    request
}

fn get_image() -> String {
    format!(
        "/GetImage?imageBuildVersionArn={}",
        percent_encoding::utf8_percent_encode(IMAGE, percent_encoding::NON_ALPHANUMERIC)
    )
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_successful_call_is_recorded_with_who_what_and_where() {
    let (app, sink, metrics) = app(false);
    let (status, _) = send(&app, signed("GET", &get_image(), SECRET)).await;
    assert_eq!(status, StatusCode::OK);
    let records = sink.take();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.time, now());
    assert_eq!(r.operation, "GetImage");
    assert_eq!(r.resource.as_deref(), Some(IMAGE));
    assert_eq!(r.access_key_id.as_deref(), Some(AKID));
    assert_eq!(r.account_id.as_deref(), Some("123456789012"));
    assert_eq!(r.principal_arn.as_deref(), Some("arn:aws:iam::123456789012:user/ana"));
    assert_eq!((r.status, r.result()), (200, "Success"));
    assert!(r.authenticated());
    assert_eq!(r.source_address, Some(IpAddr::from([192, 0, 2, 10])));
    assert_eq!(r.user_agent.as_deref(), Some("aws-cli/2.15.0 Python/3.11"));
    assert_eq!(r.request_id.len(), 36, "the x-amzn-RequestId: {}", r.request_id);
    let text = metrics.encode();
    assert!(
        text.contains("kiln_api_requests_total{operation=\"GetImage\",status=\"200\",error=\"\"} 1"),
        "{text}"
    );
    assert!(text.contains("kiln_api_request_duration_seconds_count{operation=\"GetImage\"} 1"), "{text}");
    // The record never carries the secret, whatever it is serialised to.
    assert!(!serde_json::to_string(r).unwrap().contains(SECRET));
}

#[tokio::test]
async fn a_wrong_signature_is_attributed_to_the_key_it_claimed() {
    let (app, sink, metrics) = app(false);
    let (status, _) = send(&app, signed("GET", &get_image(), "not-the-secret")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let r = &sink.take()[0];
    assert_eq!(r.error_code.as_deref(), Some("SignatureDoesNotMatch"));
    assert_eq!(r.result(), "SignatureDoesNotMatch");
    assert_eq!(r.access_key_id.as_deref(), Some(AKID));
    assert!(!r.authenticated());
    assert_eq!(r.account_id, None);
    assert_eq!(r.operation, "GetImage", "the operation comes from the path even when refused before routing");
    assert_eq!(r.resource, None);
    assert!(
        metrics.encode().contains("operation=\"GetImage\",status=\"403\",error=\"SignatureDoesNotMatch\"")
    );
}

#[tokio::test]
async fn a_denied_call_names_the_caller_and_resource() {
    let (app, sink, _) = app(false);
    let path = format!(
        "/DeleteImage?imageBuildVersionArn={}",
        percent_encoding::utf8_percent_encode(IMAGE, percent_encoding::NON_ALPHANUMERIC)
    );
    let (status, _) = send(&app, signed("DELETE", &path, SECRET)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let r = &sink.take()[0];
    assert_eq!(r.error_code.as_deref(), Some("AccessDeniedException"));
    assert_eq!(r.operation, "DeleteImage");
    assert_eq!(r.resource.as_deref(), Some(IMAGE));
    assert!(r.authenticated());
}

#[tokio::test]
async fn unknown_paths_and_anonymous_calls_are_recorded_without_inventing_names() {
    let (app, sink, metrics) = app(false);
    let mut request = Request::get("/wp-admin/login.php").body(Body::empty()).unwrap();
    request.headers_mut().insert("user-agent", HeaderValue::from_str(&"A".repeat(5000)).unwrap());
    let (status, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "nothing is looked at before the signature");
    let (status, _) = send(&app, signed("GET", "/NoSuchOperation", SECRET)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let records = sink.take();
    assert_eq!(records[0].operation, UNKNOWN_OPERATION);
    assert_eq!(records[0].error_code.as_deref(), Some("MissingAuthenticationToken"));
    assert_eq!(records[0].access_key_id, None);
    assert_eq!(records[0].source_address, None, "no connection info, no address");
    assert_eq!(records[0].user_agent.as_ref().map(String::len), Some(MAX_USER_AGENT));
    assert_eq!(records[1].operation, UNKNOWN_OPERATION);
    assert_eq!(records[1].error_code.as_deref(), Some("InvalidAction"));
    let text = metrics.encode();
    assert!(!text.contains("wp-admin") && !text.contains("NoSuchOperation"), "raw paths never become labels");
}

#[tokio::test]
async fn metrics_are_served_unauthenticated_and_not_audited() {
    let (app, sink, _) = app(false);
    send(&app, signed("GET", &get_image(), SECRET)).await;
    let (status, body) = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("kiln_api_requests_total{operation=\"GetImage\",status=\"200\",error=\"\"} 1"),
        "{body}"
    );
    assert_eq!(sink.take().len(), 1, "the scrape itself is not an API call");
}

#[tokio::test]
async fn forwarded_for_is_used_only_when_trusted_and_only_its_last_entry() {
    for (trusted, expected) in [(false, [192, 0, 2, 10]), (true, [203, 0, 113, 7])] {
        let (app, sink, _) = app(trusted);
        let mut request = signed("GET", &get_image(), SECRET);
        // The client wrote the first entry itself; the proxy appended the second.
        request.headers_mut().insert("x-forwarded-for", HeaderValue::from_static("10.9.9.9, 203.0.113.7"));
        send(&app, request).await;
        assert_eq!(sink.take()[0].source_address, Some(IpAddr::from(expected)), "trusted: {trusted}");
    }
    let headers = |v: &'static str| {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static(v));
        h
    };
    let peer = Some(IpAddr::from([192, 0, 2, 1]));
    assert_eq!(
        source_address(&headers("10.0.0.1, garbage"), peer, true),
        peer,
        "a malformed last entry is not skipped"
    );
    assert_eq!(source_address(&headers("2001:db8::1"), peer, true), Some("2001:db8::1".parse().unwrap()));
}

#[tokio::test]
async fn over_tcp_the_peer_address_is_recorded() {
    let (app, sink, _) = app(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    let response = reqwest::Client::new().get(format!("http://{addr}/GetImage")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let metrics = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("error=\"MissingAuthenticationToken\""), "{metrics}");
    server.abort();
    let records = sink.take();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].source_address, Some(IpAddr::from([127, 0, 0, 1])));
    assert_eq!(records[0].operation, "GetImage");
}
