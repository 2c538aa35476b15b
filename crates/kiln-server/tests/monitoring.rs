//! `kiln serve`'s monitoring on a real socket: a signed call is in the audit log (with the
//! client's address) and in the metrics, `GET /metrics` parses, a burst of bad signatures
//! raises a threat finding delivered to a webhook receiver with a valid signature, and
//! GetImageLogs is authorised as GetImage.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use common::*;
use kiln_api::webhook::Webhook;
use kiln_server::{ServeOptions, Server};
use kiln_store::{AuditFilter, ThreatFindingFilter};
use serde_json::Value;
use tokio::sync::mpsc;

const SECRET: &[u8] = b"webhook-secret-for-the-test-0123456789";
const GET_IMAGE_ONLY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"imagebuilder:GetImage","Resource":"*"}]}"#;

/// A webhook receiver: every delivery's headers and body.
async fn receiver() -> (String, mpsc::UnboundedReceiver<(HeaderMap, Bytes)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), rx)
}

/// A signed call: POST with `{}` for the list operations, GET otherwise.
async fn call(
    client: &reqwest::Client,
    addr: SocketAddr,
    key: &kiln_server::NewUserKey,
    path: &str,
) -> (u16, String) {
    let post = path.starts_with("/List");
    let body = if post { serde_json::json!({}) } else { Value::Null };
    let request = signed(key, &addr.to_string(), if post { "POST" } else { "GET" }, path, &body);
    let url = format!("http://{addr}{path}");
    let mut builder = if post { client.post(url).body(body.to_string()) } else { client.get(url) };
    for (name, value) in request.headers() {
        builder = builder.header(name.as_str(), value.as_bytes());
    }
    let response = builder.send().await.unwrap();
    let code = response
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (response.status().as_u16(), code)
}

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    for _ in 0..100 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_audited_measured_and_threats_notified() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::open(dir.path()).await.unwrap();
    let admin = kiln_server::create_user(&server, "admin", "111122223333", "admin", ADMIN).await.unwrap();
    let reader =
        kiln_server::create_user(&server, "reader", "111122223333", "reader", GET_IMAGE_ONLY).await.unwrap();
    let (hook, mut deliveries) = receiver().await;
    let mut options = ServeOptions::new("127.0.0.1:0");
    options.scheduler = None;
    options.monitor.webhooks = vec![Webhook::new(&hook, SECRET, Vec::new()).unwrap()];
    options.monitor.follow_interval = Duration::from_millis(100);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(kiln_server::serve(
        server.clone(),
        options,
        move |addr| {
            let _ = ready_tx.send(addr);
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let addr = ready_rx.await.unwrap();
    let client = reqwest::Client::new();

    // A signed call: answered, audited with the caller and address, counted.
    assert_eq!(call(&client, addr, &admin, "/ListImages").await, (200, String::new()));
    let store = server.store();
    let entry = eventually("the audit record", || async {
        let filter = AuditFilter { operation: Some("ListImages".into()), ..Default::default() };
        store.list_audit(&filter).await.unwrap().into_iter().next()
    })
    .await;
    assert_eq!(entry.record.result, "Success");
    assert_eq!(entry.record.principal.as_deref(), Some("arn:aws:iam::111122223333:user/admin"));
    assert_eq!(entry.record.access_key_id.as_deref(), Some(admin.access_key_id.as_str()));
    assert_eq!(entry.record.source_address.as_deref(), Some("127.0.0.1"));

    // GetImageLogs is authorised as GetImage: a user who may only GetImage gets past the
    // policy (to "no such image"), and is denied anything else.
    let missing = "arn:aws:imagebuilder:local:111122223333:image/none/1.0.0/1";
    let logs =
        call(&client, addr, &reader, &format!("/kiln/GetImageLogs?imageBuildVersionArn={}", enc(missing)))
            .await;
    assert_eq!(logs, (404, "ResourceNotFoundException".into()));
    assert_eq!(call(&client, addr, &reader, "/ListImages").await.1, "AccessDeniedException");

    // `GET /metrics`, unauthenticated, in the text format: every sample line is NAME{...} VALUE.
    let text = client.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
        value.parse::<f64>().unwrap_or_else(|_| panic!("not a value: {line}"));
        assert!(name.starts_with("kiln_"), "{line}");
        samples += 1;
    }
    assert!(samples > 0);
    assert!(
        text.contains(r#"kiln_api_requests_total{operation="ListImages",status="200",error=""} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"kiln_api_requests_total{operation="GetImageLogs",status="404""#), "{text}");

    // A burst of bad signatures with the admin's key id: a finding, stored and notified.
    let forged = kiln_server::NewUserKey { secret_access_key: "not-the-secret".into(), ..admin.clone() };
    for _ in 0..10 {
        assert_eq!(call(&client, addr, &forged, "/ListImages").await.1, "SignatureDoesNotMatch");
    }
    let finding = eventually("the threat finding", || async {
        store.list_threat_findings(&ThreatFindingFilter::default()).await.unwrap().into_iter().next()
    })
    .await;
    assert_eq!(finding.finding_type, "UnauthorizedAccess:AccessKey/RepeatedFailures");
    assert_eq!(finding.principal, admin.access_key_id);
    let (headers, body) = loop {
        let (headers, body) =
            tokio::time::timeout(Duration::from_secs(10), deliveries.recv()).await.unwrap().unwrap();
        if headers.get("x-kiln-topic").is_some_and(|t| t == "kiln-threat-finding") {
            break (headers, body);
        }
    };
    kiln_api::webhook::verify(SECRET, &headers, &body, chrono::Utc::now()).expect("a valid signature");
    let notification: Value = serde_json::from_slice(&body).unwrap();
    let message: Value = serde_json::from_str(notification["Message"].as_str().unwrap()).unwrap();
    assert_eq!(message["type"], "UnauthorizedAccess:AccessKey/RepeatedFailures");

    let text = client.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        text.contains(r#"kiln_threat_findings_total{type="UnauthorizedAccess:AccessKey/RepeatedFailures""#),
        "{text}"
    );
    assert!(text.contains("kiln_images{state=\"AVAILABLE\"} 0"), "{text}");

    stop_tx.send(()).unwrap();
    serving.await.unwrap().unwrap();
}

/// A scan with `high` HIGH findings and one CRITICAL, as the scan stage records it.
fn scan(arn: &str, high: usize) -> kiln_store::NewScan {
    let finding = |id: String, severity: &str| kiln_store::NewScanFinding {
        vulnerability_id: id.clone(),
        package: "openssl".into(),
        severity: severity.into(),
        fix_available: true,
        body: serde_json::json!({ "packageVulnerabilityDetails": { "vulnerabilityId": id } }),
    };
    let mut findings: Vec<_> = (0..high).map(|n| finding(format!("CVE-2026-{n:04}"), "HIGH")).collect();
    findings.push(finding("CVE-2026-9999".into(), "CRITICAL"));
    kiln_store::NewScan {
        image_arn: arn.into(),
        trigger: kiln_store::ScanTrigger::Build,
        feeds: serde_json::json!([]),
        summary: serde_json::json!({}),
        findings,
    }
}

#[tokio::test]
async fn the_findings_gauge_follows_the_latest_scans_of_images_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::open(dir.path()).await.unwrap();
    let store = server.store();
    let monitoring =
        kiln_server::monitor::Monitoring::start(store.clone(), &Default::default()).await.unwrap();
    let mut cursor = monitoring.cursors().await.unwrap();
    let web = store.create_image(&new_image("web", "111122223333")).await.unwrap().arn;
    let db = store.create_image(&new_image("db", "111122223333")).await.unwrap().arn;
    store.record_scan(&scan(&web, 3)).await.unwrap();
    store.record_scan(&scan(&db, 2)).await.unwrap();
    let gauge = |text: &str, severity: &str| -> f64 {
        let sample = format!("kiln_scan_findings{{severity=\"{severity}\"}}");
        sample_value(text, &sample).unwrap_or_else(|| panic!("{sample} in {text}"))
    };
    monitoring.follow_once(&mut cursor).await.unwrap();
    let text = monitoring.metrics.encode_text();
    assert_eq!((gauge(&text, "HIGH"), gauge(&text, "CRITICAL"), gauge(&text, "LOW")), (5.0, 2.0, 0.0));

    // A rescan replaces an image's findings; a deleted image's findings are no longer open.
    store.record_scan(&scan(&web, 1)).await.unwrap();
    monitoring.follow_once(&mut cursor).await.unwrap();
    let text = monitoring.metrics.encode_text();
    assert_eq!((gauge(&text, "HIGH"), gauge(&text, "CRITICAL")), (3.0, 2.0));
    store.transition(&db, kiln_store::ImageState::Failed, Some("test")).await.unwrap();
    store.transition(&db, kiln_store::ImageState::Deleted, Some("test")).await.unwrap();
    monitoring.follow_once(&mut cursor).await.unwrap();
    let text = monitoring.metrics.encode_text();
    assert_eq!((gauge(&text, "HIGH"), gauge(&text, "CRITICAL")), (1.0, 1.0));
}

#[tokio::test]
async fn a_restarted_follower_picks_up_what_happened_while_no_server_ran() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::open(dir.path()).await.unwrap();
    let store = server.store();
    let before_any_server = store.create_image(&new_image("web", "111122223333")).await.unwrap().arn;
    store.transition(&before_any_server, kiln_store::ImageState::Building, None).await.unwrap();
    let transitions = |m: &kiln_server::monitor::Monitoring, state: &str| -> f64 {
        let sample = format!("kiln_image_state_transitions_total{{state=\"{state}\"}}");
        sample_value(&m.metrics.encode_text(), &sample).unwrap_or(0.0)
    };

    // The first server ever starts at the newest event: history before it is not replayed.
    let first = kiln_server::monitor::Monitoring::start(store.clone(), &Default::default()).await.unwrap();
    let mut cursor = first.cursors().await.unwrap();
    first.follow_once(&mut cursor).await.unwrap();
    assert_eq!(transitions(&first, "BUILDING"), 0.0);
    first.save_cursors(cursor).await.unwrap();

    // While no server runs, a worker finishes the build.
    store.transition(&before_any_server, kiln_store::ImageState::Available, None).await.unwrap();

    // The next server starts where the first one stopped and sees it.
    let next = kiln_server::monitor::Monitoring::start(store.clone(), &Default::default()).await.unwrap();
    let mut cursor = next.cursors().await.unwrap();
    next.follow_once(&mut cursor).await.unwrap();
    assert_eq!(transitions(&next, "AVAILABLE"), 1.0);
    assert_eq!(transitions(&next, "BUILDING"), 0.0, "only what happened after the saved position");
}
