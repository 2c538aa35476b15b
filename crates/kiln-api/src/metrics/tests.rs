use std::io::Write;
use std::process::{Command, Stdio};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::*;

/// A registry with a sample of every metric, label values that need escaping included.
fn populated() -> Metrics {
    let m = Metrics::new();
    m.set_images_in_state("AVAILABLE", 3);
    m.set_images_in_state("BUILDING", 1);
    m.record_image_transition("AVAILABLE");
    m.record_image_transition("AVAILABLE");
    m.record_image_transition("FAILED");
    m.observe_stage("build", Duration::from_secs(42));
    m.observe_stage("test", Duration::from_millis(95_500));
    m.set_queue_depth(7);
    m.set_scan_findings("HIGH", 9);
    // A gauge: the latest value counts, not the sum.
    m.set_scan_findings("HIGH", 4);
    m.set_scan_findings("CRITICAL", 1);
    m.record_threat_finding("UnauthorizedAccess:AccessKey/RepeatedFailures", "HIGH");
    m.record_request("GetImage", 200, "", Duration::from_millis(3));
    m.record_request("GetImage", 403, "AccessDeniedException", Duration::from_millis(1));
    m.record_request("unknown", 400, "InvalidAction", Duration::from_micros(200));
    // Quotes, backslashes and newlines in a label value must be escaped, not break the page.
    m.record_request("we\"ird\\op\nname", 500, "ServiceException", Duration::from_secs(20));
    m.record_webhook("delivered");
    m
}

#[test]
fn every_metric_is_exposed_with_its_type() {
    let text = populated().encode();
    for (name, kind) in [
        ("kiln_images", "gauge"),
        ("kiln_image_state_transitions", "counter"),
        ("kiln_build_stage_duration_seconds", "histogram"),
        ("kiln_job_queue_depth", "gauge"),
        ("kiln_scan_findings", "gauge"),
        ("kiln_threat_findings", "counter"),
        ("kiln_api_requests", "counter"),
        ("kiln_api_request_duration_seconds", "histogram"),
        ("kiln_webhook_deliveries", "counter"),
    ] {
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name} {kind} missing from:\n{text}");
    }
    assert!(text.contains("kiln_images{state=\"AVAILABLE\"} 3\n"), "{text}");
    assert!(text.contains("kiln_image_state_transitions_total{state=\"AVAILABLE\"} 2\n"), "{text}");
    assert!(text.contains("kiln_job_queue_depth 7\n"), "{text}");
    assert!(
        text.contains(
            "kiln_api_requests_total{operation=\"GetImage\",status=\"403\",error=\"AccessDeniedException\"} 1"
        ),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "OpenMetrics pages end with # EOF");
    // encode_text renames counters from a list; a counter registered without joining the
    // list would come out wrong in the 0.0.4 format.
    let counters: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    assert_eq!(counters, COUNTERS);
}

#[test]
fn label_values_are_bounded_and_printable() {
    let m = Metrics::new();
    let long = "x".repeat(10_000);
    m.record_image_transition(&long);
    m.record_image_transition("A\u{0}B\u{7}C");
    let text = m.encode();
    assert!(!text.contains(&"x".repeat(129)), "label values are truncated to 128 characters");
    assert!(text.contains("state=\"ABC\""), "control characters are dropped: {text}");
}

#[test]
fn huge_counts_saturate_instead_of_wrapping() {
    let m = Metrics::new();
    m.set_queue_depth(u64::MAX);
    assert!(m.encode().contains(&format!("kiln_job_queue_depth {}\n", i64::MAX)));
}

#[tokio::test]
async fn the_handler_serves_openmetrics_to_those_who_ask_and_text_otherwise() {
    let metrics = Arc::new(populated());
    let app = axum::Router::new().route("/metrics", axum::routing::get(handler)).with_state(metrics);
    // What Prometheus 2.x sends.
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                  text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let request = Request::get("/metrics").header(header::ACCEPT, accept).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = std::str::from_utf8(&body).unwrap();
    assert!(body.contains("# TYPE kiln_api_requests counter\n") && body.ends_with("# EOF\n"));

    let response = app.oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.headers()[header::CONTENT_TYPE], TEXT_CONTENT_TYPE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = std::str::from_utf8(&body).unwrap();
    assert!(body.contains("# TYPE kiln_api_requests_total counter\n"), "{body}");
    assert!(!body.contains("# EOF") && !body.contains("# UNIT"));
}

/// Parses `text` (0.0.4) and `open_metrics` with the official Python client's parsers and
/// returns `{"text": [...families], "openmetrics": [...]}`. `None` when the parser is not
/// installed, unless KILN_REQUIRE_S3_TESTS=1 (then it fails).
fn python_parse(text: &str, open_metrics: &str) -> Option<Value> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
page = json.load(sys.stdin)
def dump(families):
    return [{"name": f.name, "type": f.type,
             "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
            for f in families]
print(json.dumps({"text": dump(text_string_to_metric_families(page["text"])),
                  "openmetrics": dump(om_families(page["openmetrics"]))}))
"#;
    let missing = |why: String| {
        let msg = format!(
            "the metrics parsing test needs Python's prometheus_client (pip install prometheus-client): {why}"
        );
        if std::env::var("KILN_REQUIRE_S3_TESTS").is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        None
    };
    let probe = Command::new("python3").args(["-c", "import prometheus_client"]).output();
    match probe {
        Err(e) => return missing(e.to_string()),
        Ok(out) if !out.status.success() => {
            return missing(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(_) => {}
    }
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let page = serde_json::json!({ "text": text, "openmetrics": open_metrics }).to_string();
    child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Python parsers refused the exposition:\n{}\n{text}\n{open_metrics}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

fn family<'a>(families: &'a Value, name: &str) -> &'a Value {
    families
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no family {name}"))
}

fn sample_value(family: &Value, sample: &str, labels: &[(&str, &str)]) -> f64 {
    family["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == sample && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .unwrap_or_else(|| panic!("no sample {sample} {labels:?} in {family}"))["value"]
        .as_f64()
        .unwrap()
}

#[test]
fn the_exposition_parses_with_the_official_python_parsers() {
    let metrics = populated();
    let Some(parsed) = python_parse(&metrics.encode_text(), &metrics.encode()) else { return };
    for parser in ["text", "openmetrics"] {
        let families = &parsed[parser];
        for f in families.as_array().unwrap() {
            assert_ne!(f["type"], "unknown", "{parser}: a family lost its type: {f}");
            assert!(!f["samples"].as_array().unwrap().is_empty(), "{parser}: a family lost its samples: {f}");
        }
        let requests = family(families, "kiln_api_requests");
        assert_eq!(requests["type"], "counter", "{parser}");
        assert_eq!(
            sample_value(
                requests,
                "kiln_api_requests_total",
                &[("operation", "GetImage"), ("status", "403"), ("error", "AccessDeniedException")]
            ),
            1.0
        );
        // The escaped label value comes back as it was given (control characters dropped).
        assert_eq!(
            sample_value(requests, "kiln_api_requests_total", &[("operation", "we\"ird\\opname")]),
            1.0,
            "{parser}"
        );
        let latency = family(families, "kiln_api_request_duration_seconds");
        assert_eq!(latency["type"], "histogram");
        assert_eq!(
            sample_value(latency, "kiln_api_request_duration_seconds_count", &[("operation", "GetImage")]),
            2.0
        );
        assert_eq!(
            sample_value(
                latency,
                "kiln_api_request_duration_seconds_bucket",
                &[("operation", "GetImage"), ("le", "+Inf")]
            ),
            2.0
        );
        let stages = family(families, "kiln_build_stage_duration_seconds");
        assert_eq!(sample_value(stages, "kiln_build_stage_duration_seconds_sum", &[("stage", "test")]), 95.5);
        assert_eq!(sample_value(family(families, "kiln_job_queue_depth"), "kiln_job_queue_depth", &[]), 7.0);
        assert_eq!(
            sample_value(family(families, "kiln_images"), "kiln_images", &[("state", "BUILDING")]),
            1.0
        );
        assert_eq!(
            sample_value(
                family(families, "kiln_scan_findings"),
                "kiln_scan_findings",
                &[("severity", "HIGH")]
            ),
            4.0
        );
    }
}

#[test]
fn an_empty_registry_parses_too() {
    let metrics = Metrics::new();
    let Some(parsed) = python_parse(&metrics.encode_text(), &metrics.encode()) else { return };
    assert!(parsed["openmetrics"].as_array().is_some());
    assert!(parsed["text"].as_array().is_some());
}
