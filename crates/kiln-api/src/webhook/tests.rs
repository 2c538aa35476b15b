use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;

use super::*;

const SECRET: &[u8] = b"7c3f0b5e8a9d41f2b6e0c4a8d2f6b1e3";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn source() -> Source {
    Source { region: "eu-west-3".into(), account: "123456789012".into() }
}

fn change() -> ImageStateChange {
    ImageStateChange {
        image_arn: "arn:aws:imagebuilder:eu-west-3:123456789012:image/web/1.0.0/4".into(),
        previous_state: Some("TESTING".into()),
        state: "FAILED".into(),
        reason: Some("test stage: 2 of 9 tests failed".into()),
        time: at("2024-03-31T00:30:05Z"),
    }
}

/// A webhook receiver: records every delivery and answers the scripted statuses in turn
/// (200 once the script is exhausted), after an optional delay.
#[derive(Default)]
struct Receiver {
    deliveries: Mutex<Vec<(HeaderMap, Bytes)>>,
    script: Mutex<VecDeque<(u16, Option<&'static str>)>>,
    delay: Duration,
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    r.deliveries.lock().unwrap().push((headers, body));
    if !r.delay.is_zero() {
        tokio::time::sleep(r.delay).await;
    }
    let (status, retry_after) = r.script.lock().unwrap().pop_front().unwrap_or((200, None));
    let mut response = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(v) = retry_after {
        response.headers_mut().insert("retry-after", HeaderValue::from_static(v));
    }
    response
}

async fn start_receiver(script: &[(u16, Option<&'static str>)], delay: Duration) -> (String, Arc<Receiver>) {
    let receiver = Arc::new(Receiver {
        script: Mutex::new(script.iter().copied().collect()),
        delay,
        ..Default::default()
    });
    let app = Router::new().route("/hook", axum::routing::post(receive)).with_state(Arc::clone(&receiver));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, receiver)
}

fn fast(max_attempts: u32) -> DeliveryConfig {
    DeliveryConfig {
        max_attempts,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
        ..DeliveryConfig::default()
    }
}

fn signed_headers(timestamp: i64, signature: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(TIMESTAMP_HEADER, HeaderValue::from_str(&timestamp.to_string()).unwrap());
    h.insert(SIGNATURE_HEADER, HeaderValue::from_str(signature).unwrap());
    h
}

#[test]
fn the_notification_is_shaped_like_an_sns_message() {
    let n = Notification::image_state_change(&source(), &change(), at("2024-03-31T00:30:06.5Z"));
    let body: serde_json::Value = serde_json::from_slice(&n.body()).unwrap();
    assert_eq!(body["Type"], "Notification");
    assert_eq!(body["TopicArn"], "arn:aws:sns:eu-west-3:123456789012:kiln-image-state-change");
    assert_eq!(body["Subject"], "web/1.0.0/4 is now FAILED");
    assert_eq!(body["Timestamp"], "2024-03-31T00:30:06.500Z");
    let id = body["MessageId"].as_str().unwrap();
    assert_eq!((id.len(), id.matches('-').count()), (36, 4));
    // The Message is a JSON document in a string, as SNS carries it.
    let message: ImageStateChange = serde_json::from_str(body["Message"].as_str().unwrap()).unwrap();
    assert_eq!(message, change());
    let inner: serde_json::Value = serde_json::from_str(body["Message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["previousState"], "TESTING");
    assert_eq!(inner["imageArn"], change().image_arn);
    assert_eq!(body.as_object().unwrap().len(), 6, "only the SNS members: {body}");
    let again = Notification::image_state_change(&source(), &change(), at("2024-03-31T00:30:06.5Z"));
    assert_ne!(again.message_id, n.message_id, "message ids are unique");
}

#[test]
fn subjects_are_cut_to_100_characters() {
    let mut c = change();
    c.image_arn = format!("arn:aws:imagebuilder:eu-west-3:123456789012:image/{}/1.0.0/1", "é".repeat(300));
    let n = Notification::image_state_change(&source(), &c, Utc::now());
    assert_eq!(n.subject.chars().count(), 100);
}

#[test]
fn verify_accepts_the_signature_and_refuses_tampering() {
    let body = Notification::image_state_change(&source(), &change(), Utc::now()).body();
    let now = at("2024-03-31T00:30:05Z");
    let ts = now.timestamp();
    let good = signed_headers(ts, &sign(SECRET, ts, &body));
    assert_eq!(verify(SECRET, &good, &body, now), Ok(()));
    // Clock differences within the tolerance, either way.
    assert_eq!(verify(SECRET, &good, &body, now + chrono::Duration::seconds(299)), Ok(()));
    assert_eq!(verify(SECRET, &good, &body, now - chrono::Duration::seconds(299)), Ok(()));

    let mut tampered = body.clone();
    let i = tampered.iter().position(|b| *b == b'F').unwrap();
    tampered[i] = b'f';
    assert_eq!(verify(SECRET, &good, &tampered, now), Err(WebhookError::BadSignature));
    assert_eq!(verify(b"another secret", &good, &body, now), Err(WebhookError::BadSignature));
    // The timestamp is signed: moving it to pass the replay window breaks the signature.
    let moved = signed_headers(ts + 600, &sign(SECRET, ts, &body));
    assert_eq!(
        verify(SECRET, &moved, &body, now + chrono::Duration::seconds(600)),
        Err(WebhookError::BadSignature)
    );
    // A replay of a genuine delivery later is refused.
    assert_eq!(
        verify(SECRET, &good, &body, now + chrono::Duration::seconds(301)),
        Err(WebhookError::Stale { age_seconds: 301 })
    );
    assert_eq!(
        verify(SECRET, &good, &body, now - chrono::Duration::seconds(301)),
        Err(WebhookError::Stale { age_seconds: -301 })
    );
    assert!(
        verify_with_tolerance(
            SECRET,
            &good,
            &body,
            now + chrono::Duration::seconds(301),
            Duration::from_secs(600)
        )
        .is_ok()
    );
}

#[test]
fn verify_refuses_malformed_headers_without_panicking() {
    let body = b"{}";
    let now = Utc::now();
    let ts = now.timestamp();
    assert_eq!(
        verify(SECRET, &HeaderMap::new(), body, now),
        Err(WebhookError::MissingHeader(TIMESTAMP_HEADER))
    );
    let mut only_ts = HeaderMap::new();
    only_ts.insert(TIMESTAMP_HEADER, HeaderValue::from_str(&ts.to_string()).unwrap());
    assert_eq!(verify(SECRET, &only_ts, body, now), Err(WebhookError::MissingHeader(SIGNATURE_HEADER)));
    let good = sign(SECRET, ts, body);
    for bad_ts in ["", "yesterday", "1e9", "99999999999999999999999"] {
        let mut h = signed_headers(ts, &good);
        h.insert(TIMESTAMP_HEADER, HeaderValue::from_str(bad_ts).unwrap());
        assert_eq!(verify(SECRET, &h, body, now), Err(WebhookError::BadTimestamp), "{bad_ts:?}");
    }
    let extreme = signed_headers(i64::MIN, &sign(SECRET, i64::MIN, body));
    assert!(matches!(verify(SECRET, &extreme, body, now), Err(WebhookError::Stale { .. })));
    for bad_sig in [
        "",
        "sha256=",
        "sha1=abcd",
        &good[7..],
        &format!("{}zz", &good[..good.len() - 2]),
        &format!("{good}00"),
    ] {
        let h = signed_headers(ts, bad_sig);
        assert_eq!(verify(SECRET, &h, body, now), Err(WebhookError::MalformedSignature), "{bad_sig:?}");
    }
}

#[test]
fn webhooks_are_validated_and_keep_their_secret_out_of_debug() {
    assert!(matches!(
        Webhook::new("ftp://example.com/x", SECRET, vec![]),
        Err(WebhookError::InvalidUrl { .. })
    ));
    assert!(matches!(Webhook::new("not a url", SECRET, vec![]), Err(WebhookError::InvalidUrl { .. })));
    assert!(matches!(
        Webhook::new("https://user:pass@example.com/x", SECRET, vec![]),
        Err(WebhookError::InvalidUrl { .. })
    ));
    assert!(matches!(
        Webhook::new("https://example.com/x", b"", vec![]),
        Err(WebhookError::EmptySecret { .. })
    ));
    let w = Webhook::new("https://example.com/x", SECRET, vec![Topic::ThreatFinding]).unwrap();
    let shown = format!("{w:?}");
    assert!(!shown.contains(std::str::from_utf8(SECRET).unwrap()) && shown.contains("redacted"), "{shown}");
    assert!(w.wants(Some(Topic::ThreatFinding)));
    assert!(!w.wants(Some(Topic::ImageStateChange)));
    let all = Webhook::new("https://example.com/x", SECRET, vec![]).unwrap();
    assert!(all.wants(Some(Topic::ImageStateChange)) && all.wants(None));
}

#[test]
fn starting_outside_a_runtime_is_an_error_not_a_panic() {
    assert_eq!(
        Dispatcher::start(vec![], DeliveryConfig::default(), None).unwrap_err(),
        WebhookError::NoRuntime
    );
}

#[test]
fn backoff_doubles_and_is_capped() {
    let config = DeliveryConfig {
        initial_backoff: Duration::from_secs(2),
        max_backoff: Duration::from_secs(60),
        ..DeliveryConfig::default()
    };
    let waits: Vec<Duration> = (1..=10).map(|a| backoff(&config, a, "id")).collect();
    assert!(waits[0] >= Duration::from_secs(2) && waits[0] <= Duration::from_millis(2500), "{waits:?}");
    assert!(waits[1] >= Duration::from_secs(4) && waits[1] <= Duration::from_secs(5), "{waits:?}");
    assert!(waits.iter().all(|w| *w <= Duration::from_secs(60)), "{waits:?}");
    assert_eq!(waits[9], Duration::from_secs(60));
    assert!(backoff(&config, u32::MAX, "id") <= Duration::from_secs(60), "no overflow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_arrives_signed_and_verifiable() {
    let (url, receiver) = start_receiver(&[], Duration::ZERO).await;
    let metrics = Arc::new(Metrics::new());
    let hook = Webhook::new(&url, SECRET, vec![]).unwrap();
    let dispatcher = Dispatcher::start(vec![hook], fast(3), Some(Arc::clone(&metrics))).unwrap();
    let n = Notification::image_state_change(&source(), &change(), Utc::now());
    assert_eq!(dispatcher.notify(&n), Enqueued { queued: 1, dropped: 0 });
    dispatcher.flush().await;
    assert_eq!(dispatcher.stats(), DeliveryStats { delivered: 1, ..Default::default() });
    let deliveries = receiver.deliveries.lock().unwrap();
    let (headers, body) = &deliveries[0];
    assert_eq!(body.as_ref(), n.body().as_slice(), "the body is sent byte for byte");
    assert_eq!(verify(SECRET, headers, body, Utc::now()), Ok(()));
    assert_eq!(headers[MESSAGE_ID_HEADER], n.message_id.as_str());
    assert_eq!(headers[TOPIC_HEADER], "kiln-image-state-change");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers["user-agent"].to_str().unwrap().starts_with("kiln-webhook/"));
    assert!(metrics.encode().contains("kiln_webhook_deliveries_total{outcome=\"delivered\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_with_the_same_message_id() {
    let (url, receiver) =
        start_receiver(&[(500, None), (503, None), (429, Some("0")), (200, None)], Duration::ZERO).await;
    let dispatcher =
        Dispatcher::start(vec![Webhook::new(&url, SECRET, vec![]).unwrap()], fast(5), None).unwrap();
    let n = Notification::image_state_change(&source(), &change(), Utc::now());
    dispatcher.notify(&n);
    dispatcher.flush().await;
    assert_eq!(dispatcher.stats(), DeliveryStats { delivered: 1, retried: 3, failed: 0, dropped: 0 });
    let deliveries = receiver.deliveries.lock().unwrap();
    assert_eq!(deliveries.len(), 4);
    for (headers, body) in deliveries.iter() {
        assert_eq!(headers[MESSAGE_ID_HEADER], n.message_id.as_str());
        assert_eq!(verify(SECRET, headers, body, Utc::now()), Ok(()), "each attempt is signed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_gives_up_after_max_attempts() {
    let (url, receiver) = start_receiver(&[(500, None); 10], Duration::ZERO).await;
    let metrics = Arc::new(Metrics::new());
    let dispatcher = Dispatcher::start(
        vec![Webhook::new(&url, SECRET, vec![]).unwrap()],
        fast(3),
        Some(Arc::clone(&metrics)),
    )
    .unwrap();
    dispatcher.notify(&Notification::image_state_change(&source(), &change(), Utc::now()));
    dispatcher.flush().await;
    assert_eq!(receiver.deliveries.lock().unwrap().len(), 3);
    assert_eq!(dispatcher.stats(), DeliveryStats { delivered: 0, retried: 2, failed: 1, dropped: 0 });
    let text = metrics.encode();
    assert!(text.contains("kiln_webhook_deliveries_total{outcome=\"failed\"} 1"), "{text}");
    assert!(text.contains("kiln_webhook_deliveries_total{outcome=\"retried\"} 2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_by_the_receiver_is_final() {
    let (url, receiver) = start_receiver(&[(401, None)], Duration::ZERO).await;
    let dispatcher =
        Dispatcher::start(vec![Webhook::new(&url, SECRET, vec![]).unwrap()], fast(5), None).unwrap();
    dispatcher.notify(&Notification::image_state_change(&source(), &change(), Utc::now()));
    dispatcher.flush().await;
    assert_eq!(receiver.deliveries.lock().unwrap().len(), 1);
    assert_eq!(dispatcher.stats().failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_receiver_is_retried_then_given_up() {
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let hook = Webhook::new(&format!("http://127.0.0.1:{port}/hook"), SECRET, vec![]).unwrap();
    let dispatcher = Dispatcher::start(vec![hook], fast(2), None).unwrap();
    dispatcher.notify(&Notification::image_state_change(&source(), &change(), Utc::now()));
    dispatcher.flush().await;
    assert_eq!(dispatcher.stats(), DeliveryStats { delivered: 0, retried: 1, failed: 1, dropped: 0 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_never_blocks_the_notifier() {
    let (url, receiver) = start_receiver(&[], Duration::from_millis(500)).await;
    let config = DeliveryConfig { queue_capacity: 2, ..fast(1) };
    let dispatcher =
        Dispatcher::start(vec![Webhook::new(&url, SECRET, vec![]).unwrap()], config, None).unwrap();
    let started = Instant::now();
    let mut total = Enqueued::default();
    for _ in 0..50 {
        let e = dispatcher.notify(&Notification::image_state_change(&source(), &change(), Utc::now()));
        total.queued += e.queued;
        total.dropped += e.dropped;
    }
    assert!(started.elapsed() < Duration::from_millis(200), "notify waited: {:?}", started.elapsed());
    assert_eq!(total, Enqueued { queued: 2, dropped: 48 });
    dispatcher.flush().await;
    assert_eq!(dispatcher.stats(), DeliveryStats { delivered: 2, retried: 0, failed: 0, dropped: 48 });
    assert_eq!(receiver.deliveries.lock().unwrap().len(), 2);
    // Room again once delivered.
    assert_eq!(
        dispatcher.notify(&Notification::image_state_change(&source(), &change(), Utc::now())).queued,
        1
    );
    dispatcher.flush().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_webhooks_wanting_the_topic_get_it() {
    let (url_a, a) = start_receiver(&[], Duration::ZERO).await;
    let (url_b, b) = start_receiver(&[], Duration::ZERO).await;
    let hooks = vec![
        Webhook::new(&url_a, SECRET, vec![Topic::ImageStateChange]).unwrap(),
        Webhook::new(&url_b, b"secret-b", vec![Topic::ThreatFinding]).unwrap(),
    ];
    let dispatcher = Dispatcher::start(hooks, fast(1), None).unwrap();
    let n = Notification::new(
        &source(),
        Topic::ThreatFinding,
        "finding",
        &serde_json::json!({"x": 1}),
        Utc::now(),
    );
    assert_eq!(dispatcher.notify(&n).queued, 1);
    dispatcher.flush().await;
    assert!(a.deliveries.lock().unwrap().is_empty());
    let deliveries = b.deliveries.lock().unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(verify(b"secret-b", &deliveries[0].0, &deliveries[0].1, Utc::now()), Ok(()));
    assert_eq!(
        verify(SECRET, &deliveries[0].0, &deliveries[0].1, Utc::now()),
        Err(WebhookError::BadSignature)
    );
}
