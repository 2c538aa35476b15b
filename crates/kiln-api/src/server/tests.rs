use std::collections::HashMap;

use axum::http::HeaderMap;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::sigv4::{SigningParams, presign, sign};

const AKID: &str = "AKIAKILNEXAMPLE00001";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const AUDITOR_KEY: &str = "AKIAKILNAUDITOR00001";
const IMAGE: &str = "arn:aws:imagebuilder:eu-west-3:123456789012:image/web server/1.0.0/1";

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-03-31T00:30:05Z").unwrap().with_timezone(&Utc)
}

struct Keys(HashMap<String, Credential>);

impl Credentials for Keys {
    async fn lookup(
        &self,
        access_key_id: &str,
        security_token: Option<&str>,
    ) -> Result<Option<Credential>, ApiError> {
        if security_token.is_some() {
            return Ok(None);
        }
        Ok(self.0.get(access_key_id).cloned())
    }
}

/// Echoes what it was called with; GetMarketplaceResource is "not implemented".
struct Echo;

impl Operations for Echo {
    async fn call(&self, call: Call) -> Result<Value, ApiError> {
        if call.operation.name == "GetMarketplaceResource" {
            return Err(not_implemented(call.operation));
        }
        Ok(serde_json::json!({
            "operation": call.operation.name,
            "resource": call.resource,
            "input": call.input,
            "sid": call.authorized_by.sid,
        }))
    }
}

fn keys() -> Arc<Keys> {
    let admin = Policy::parse(
        "admin",
        r#"{"Statement":[{"Sid":"All","Effect":"Allow","Action":"imagebuilder:*","Resource":"*"},
           {"Sid":"KeepImages","Effect":"Deny","Action":"imagebuilder:DeleteImage","Resource":"*"}]}"#,
    )
    .unwrap();
    let auditor = Policy::parse(
        "read-only-auditor",
        include_str!("../../../../examples/policies/read-only-auditor.json"),
    )
    .unwrap();
    let caller = |akid: &str, user: &str, policies| Caller {
        access_key_id: akid.into(),
        principal_arn: format!("arn:aws:iam::123456789012:user/{user}"),
        account_id: "123456789012".into(),
        policies,
    };
    Arc::new(Keys(HashMap::from([
        (
            AKID.to_owned(),
            Credential { secret_access_key: SECRET.into(), caller: caller(AKID, "admin", vec![admin]) },
        ),
        (
            AUDITOR_KEY.to_owned(),
            Credential {
                secret_access_key: SECRET.into(),
                caller: caller(AUDITOR_KEY, "auditor", vec![auditor]),
            },
        ),
    ])))
}

fn config(at: DateTime<Utc>) -> ServerConfig {
    ServerConfig { body_limit: 4096, clock: Arc::new(move || at), ..ServerConfig::default() }
}

fn app() -> Router {
    router(config(now()), keys(), Arc::new(Echo))
}

fn signed(method: &str, path_and_query: &str, body: &str, akid: &str, secret: &str) -> Request<Body> {
    let method: Method = method.parse().unwrap();
    let uri: axum::http::Uri = path_and_query.parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
    if !body.is_empty() {
        headers.insert("content-type", HeaderValue::from_static("application/json"));
    }
    let params = SigningParams {
        access_key_id: akid,
        secret_access_key: secret,
        region: "eu-west-3",
        service: "imagebuilder",
        time: now(),
    };
    sign(&method, &uri, &mut headers, body.as_bytes(), &params).unwrap();
    let mut request = Request::builder().method(method).uri(uri).body(Body::from(body.to_owned())).unwrap();
    *request.headers_mut() = headers;
    request
}

async fn send(app: Router, request: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let code = response.headers().get("x-amzn-errortype").map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, code, json)
}

fn enc(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test]
async fn get_with_query_member() {
    let path = format!("/GetImage?imageBuildVersionArn={}", enc(IMAGE));
    let (status, code, json) = send(app(), signed("GET", &path, "", AKID, SECRET)).await;
    assert_eq!((status, code), (StatusCode::OK, None), "{json}");
    assert_eq!(json["operation"], "GetImage");
    assert_eq!(json["resource"], IMAGE);
    assert_eq!(json["input"], serde_json::json!({ "imageBuildVersionArn": IMAGE }));
    assert_eq!(json["sid"], "All");
}

#[tokio::test]
async fn put_with_json_body() {
    let body = r#"{"name":"hello","semanticVersion":"1.0.0","platform":"Linux","clientToken":"t"}"#;
    let (status, _, json) = send(app(), signed("PUT", "/CreateComponent", body, AKID, SECRET)).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["operation"], "CreateComponent");
    assert_eq!(json["resource"], "*");
    assert_eq!(json["input"]["semanticVersion"], "1.0.0");
}

#[tokio::test]
async fn path_label_and_repeated_query_members() {
    let path = format!("/tags/{}?tagKeys=b%20key&tagKeys=a", enc(IMAGE));
    let (status, _, json) = send(app(), signed("DELETE", &path, "", AKID, SECRET)).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["operation"], "UntagResource");
    assert_eq!(json["resource"], IMAGE);
    assert_eq!(json["input"], serde_json::json!({ "resourceArn": IMAGE, "tagKeys": ["b key", "a"] }));
    let path = format!("/tags/{}", enc(IMAGE));
    let (_, _, json) = send(app(), signed("POST", &path, r#"{"tags":{"a":"b"}}"#, AKID, SECRET)).await;
    assert_eq!(json["operation"], "TagResource");
    let (_, _, json) = send(app(), signed("GET", &path, "", AKID, SECRET)).await;
    assert_eq!(json["operation"], "ListTagsForResource");
}

/// The request the AWS CLI sends, byte for byte (captured from botocore), gets through.
#[tokio::test]
async fn botocore_request_end_to_end() {
    let fixtures: Value = serde_json::from_str(include_str!("../../tests/data/sigv4_botocore.json")).unwrap();
    for case in fixtures["cases"].as_array().unwrap() {
        let url = case["url"].as_str().unwrap().strip_prefix("http://127.0.0.1:8080").unwrap();
        let mut builder = Request::builder()
            .method(case["method"].as_str().unwrap())
            .uri(url)
            .header("host", "127.0.0.1:8080");
        for pair in case["headers"].as_array().unwrap() {
            builder = builder.header(pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        }
        let request = builder.body(Body::from(case["body"].as_str().unwrap().to_owned())).unwrap();
        let name = case["name"].as_str().unwrap();
        let (status, code, json) = send(app(), request).await;
        if name.contains("session token") {
            // kiln has no temporary credentials: a session token is refused.
            assert_eq!(code.as_deref(), Some("InvalidClientTokenId"), "{name}");
        } else if OPERATIONS.iter().any(|o| name.starts_with(o.name)) {
            assert_eq!(status, StatusCode::OK, "{name}: {json}");
            assert!(name.starts_with(json["operation"].as_str().unwrap()), "{name}: {json}");
        } else {
            // Canonicalisation cases at paths that are no operation: routing comes after the
            // signature, so InvalidAction shows the signature was accepted.
            assert_eq!(code.as_deref(), Some("InvalidAction"), "{name}: {json}");
        }
    }
}

#[tokio::test]
async fn presigned_get() {
    let path = format!("/GetImage?imageBuildVersionArn={}", enc(IMAGE));
    let params = SigningParams {
        access_key_id: AKID,
        secret_access_key: SECRET,
        region: "eu-west-3",
        service: "imagebuilder",
        time: now(),
    };
    let uri = presign(&Method::GET, &path.parse().unwrap(), "127.0.0.1:8080", 60, &params).unwrap();
    let request = Request::builder().uri(uri).header("host", "127.0.0.1:8080").body(Body::empty()).unwrap();
    let (status, _, json) = send(app(), request).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["resource"], IMAGE);
}

#[tokio::test]
async fn authentication_failures() {
    let unsigned = Request::builder().uri("/ListImages").method("POST").body(Body::empty()).unwrap();
    let (status, code, json) = send(app(), unsigned).await;
    assert_eq!((status, code.as_deref()), (StatusCode::FORBIDDEN, Some("MissingAuthenticationToken")));
    assert_eq!(json["message"], "Missing Authentication Token");

    let (status, code, _) = send(app(), signed("POST", "/ListImages", "", "AKIAUNKNOWN", SECRET)).await;
    assert_eq!((status, code.as_deref()), (StatusCode::FORBIDDEN, Some("InvalidClientTokenId")));

    let (status, code, _) = send(app(), signed("POST", "/ListImages", "", AKID, "wrong")).await;
    assert_eq!((status, code.as_deref()), (StatusCode::FORBIDDEN, Some("SignatureDoesNotMatch")));

    let late = router(config(now() + chrono::TimeDelta::minutes(20)), keys(), Arc::new(Echo));
    let (status, code, json) = send(late, signed("POST", "/ListImages", "", AKID, SECRET)).await;
    assert_eq!((status, code.as_deref()), (StatusCode::BAD_REQUEST, Some("RequestExpired")));
    assert!(json["message"].as_str().unwrap().starts_with("Signature expired"));

    // A body swapped after signing.
    let mut request = signed("PUT", "/CreateComponent", r#"{"name":"a"}"#, AKID, SECRET);
    *request.body_mut() = Body::from(r#"{"name":"b"}"#);
    let (_, code, _) = send(app(), request).await;
    assert_eq!(code.as_deref(), Some("SignatureDoesNotMatch"));
}

#[tokio::test]
async fn authorization_by_policy() {
    // The admin's explicit deny.
    let path = format!("/DeleteImage?imageBuildVersionArn={}", enc(IMAGE));
    let (status, code, json) = send(app(), signed("DELETE", &path, "", AKID, SECRET)).await;
    assert_eq!((status, code.as_deref()), (StatusCode::FORBIDDEN, Some("AccessDeniedException")));
    let message = json["message"].as_str().unwrap();
    assert!(message.contains("imagebuilder:DeleteImage on resource: arn:aws:imagebuilder"), "{message}");
    assert!(message.contains("explicit deny"), "{message}");

    // The auditor reads but does not write.
    let (status, _, _) = send(app(), signed("POST", "/ListImages", "{}", AUDITOR_KEY, SECRET)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, code, _) = send(app(), signed("PUT", "/CreateComponent", "{}", AUDITOR_KEY, SECRET)).await;
    assert_eq!((status, code.as_deref()), (StatusCode::FORBIDDEN, Some("AccessDeniedException")));
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let (status, code, json) = send(app(), signed("GET", "/StealSecrets", "", AKID, SECRET)).await;
    assert_eq!((status, code.as_deref()), (StatusCode::BAD_REQUEST, Some("InvalidAction")));
    assert!(json["message"].as_str().unwrap().contains("GET /StealSecrets"));
    let (_, code, json) = send(app(), signed("GET", "/CreateComponent", "", AKID, SECRET)).await;
    assert_eq!(code.as_deref(), Some("InvalidAction"));
    assert!(json["message"].as_str().unwrap().contains("PUT (CreateComponent)"), "{json}");
    // The model says POST /ListImages, not GET.
    let (_, code, _) = send(app(), signed("GET", "/ListImages", "", AKID, SECRET)).await;
    assert_eq!(code.as_deref(), Some("InvalidAction"));
}

#[tokio::test]
async fn operations_not_implemented_are_errors() {
    let body = format!(r#"{{"resourceType":"COMPONENT_DATA","resourceArn":"{IMAGE}"}}"#);
    let (status, code, json) =
        send(app(), signed("POST", "/GetMarketplaceResource", &body, AKID, SECRET)).await;
    assert_eq!((status, code.as_deref()), (StatusCode::NOT_IMPLEMENTED, Some("NotImplementedException")));
    assert!(json["message"].as_str().unwrap().contains("GetMarketplaceResource"));

    let nothing = router(config(now()), keys(), Arc::new(NoOperations));
    let (status, code, _) = send(nothing, signed("POST", "/ListImages", "", AKID, SECRET)).await;
    assert_eq!((status, code.as_deref()), (StatusCode::NOT_IMPLEMENTED, Some("NotImplementedException")));
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    let big = format!(r#"{{"description":"{}"}}"#, "x".repeat(5000));
    let (status, code, _) = send(app(), signed("PUT", "/CreateComponent", &big, AKID, SECRET)).await;
    assert_eq!((status, code.as_deref()), (StatusCode::PAYLOAD_TOO_LARGE, Some("RequestTooLargeException")));
    // Without a Content-Length (a stream), the limit still holds.
    let mut request = signed("PUT", "/CreateComponent", "{}", AKID, SECRET);
    request.headers_mut().remove("content-length");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..10).map(|_| Ok(vec![b' '; 1000])).collect();
    *request.body_mut() = Body::from_stream(futures_util::stream::iter(chunks));
    let (status, code, _) = send(app(), request).await;
    assert_eq!((status, code.as_deref()), (StatusCode::PAYLOAD_TOO_LARGE, Some("RequestTooLargeException")));
    // The connection is not kept for another request after an oversized body.
    let response = app().oneshot(signed("PUT", "/CreateComponent", &big, AKID, SECRET)).await.unwrap();
    assert_eq!(response.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    // Beyond what is worth draining, the declared length alone refuses it.
    let mut request = signed("PUT", "/CreateComponent", "{}", AKID, SECRET);
    request.headers_mut().insert("content-length", HeaderValue::from(DRAIN_LIMIT + 1));
    let (status, code, _) = send(app(), request).await;
    assert_eq!((status, code.as_deref()), (StatusCode::PAYLOAD_TOO_LARGE, Some("RequestTooLargeException")));
}

#[tokio::test]
async fn malformed_json_bodies() {
    for body in ["{", "[1,2]", "\"text\""] {
        let (status, code, _) = send(app(), signed("PUT", "/CreateComponent", body, AKID, SECRET)).await;
        assert_eq!(
            (status, code.as_deref()),
            (StatusCode::BAD_REQUEST, Some("InvalidRequestException")),
            "{body}"
        );
    }
}

/// Garbage requests get 4xx AWS errors, never a panic or a 5xx.
#[tokio::test]
async fn garbage_requests_get_client_errors() {
    let values = [
        "",
        "AWS4-HMAC-SHA256",
        "AWS4-HMAC-SHA256 Credential=a/20240331/r/imagebuilder/aws4_request, SignedHeaders=host, Signature=00",
        "Basic Zm9vOmJhcg==",
        "AWS4-HMAC-SHA256 Credential=AKIAKILNEXAMPLE00001/20240331/eu-west-3/imagebuilder/aws4_request, SignedHeaders=host;x-amz-date, Signature=zz",
        "20240331T003005Z",
        "garbage",
        "\u{7f}",
    ];
    let paths = [
        "/",
        "/tags/",
        "/tags/%ff",
        "/GetImage?%zz=%",
        "/ListImages?X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "/../ListImages",
    ];
    for (i, path) in paths.iter().enumerate() {
        for (j, auth) in values.iter().enumerate() {
            let mut builder =
                Request::builder().method(if (i + j) % 2 == 0 { "GET" } else { "POST" }).uri(*path);
            if let Ok(v) = HeaderValue::from_str(auth) {
                builder = builder.header("authorization", v);
            }
            if let Ok(v) = HeaderValue::from_str(values[(i + j) % values.len()]) {
                builder = builder.header("x-amz-date", v);
            }
            let request = builder.body(Body::from("{")).unwrap();
            let (status, code, _) = send(app(), request).await;
            assert!(status.is_client_error(), "{path} {auth}: {status}");
            assert!(code.is_some(), "{path} {auth}");
        }
    }
}

#[tokio::test]
async fn responses_carry_a_request_id() {
    let mut ids = std::collections::HashSet::new();
    for _ in 0..3 {
        let response = app().oneshot(signed("POST", "/ListImages", "", AKID, SECRET)).await.unwrap();
        let id = response.headers()["x-amzn-requestid"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "{id}");
        assert!(ids.insert(id));
    }
    let response = app().oneshot(Request::builder().uri("/").body(Body::empty()).unwrap()).await.unwrap();
    assert!(response.headers().contains_key("x-amzn-requestid"));
}

#[test]
fn every_model_operation_routes_to_itself() {
    assert_eq!(OPERATIONS.len(), 77);
    for operation in OPERATIONS {
        let path = operation.path.replace("{resourceArn}", "arn%3Aaws%3Aimagebuilder%3Ax");
        let method: Method = operation.method.parse().unwrap();
        let (found, _) = route(&method, &path).unwrap();
        assert_eq!(found.name, operation.name);
    }
}
