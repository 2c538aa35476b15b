use std::net::IpAddr;
use std::time::Duration;

use super::*;

const KEY: &str = "AKIAKILNEXAMPLE00001";
const IMAGE: &str = "arn:aws:imagebuilder:eu-west-3:123456789012:image/web/1.0.0/1";

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-03-31T00:00:00Z").unwrap().with_timezone(&Utc)
}

fn secs(n: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(n)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An authenticated, successful call of `KEY` from `addr` at `time`.
fn ok_call(time: DateTime<Utc>, addr: &str) -> ApiCallRecord {
    ApiCallRecord {
        time,
        request_id: "r".into(),
        account_id: Some("123456789012".into()),
        principal_arn: Some("arn:aws:iam::123456789012:user/ana".into()),
        access_key_id: Some(KEY.into()),
        operation: "GetImage".into(),
        resource: Some(IMAGE.into()),
        error_code: None,
        status: 200,
        source_address: Some(ip(addr)),
        user_agent: Some("aws-cli/2".into()),
        duration: Duration::from_millis(3),
    }
}

/// A call refused with `code`; a wrong signature leaves the caller unknown.
fn failed_call(time: DateTime<Utc>, key: &str, code: &str) -> ApiCallRecord {
    let authenticated = code == "AccessDeniedException";
    ApiCallRecord {
        access_key_id: Some(key.into()),
        error_code: Some(code.into()),
        status: 403,
        account_id: authenticated.then(|| "123456789012".into()),
        principal_arn: authenticated.then(|| "arn:aws:iam::123456789012:user/ana".into()),
        ..ok_call(time, "198.51.100.7")
    }
}

fn usage(kind: &str, account: &str, permitted: bool, refused: bool, state: &str) -> UsageObservation {
    UsageObservation {
        time: t0(),
        image_arn: IMAGE.into(),
        kind: kind.into(),
        account: account.into(),
        permitted,
        refused,
        image_state: state.into(),
    }
}

fn detector(threshold: usize) -> Detector {
    Detector::new(DetectorConfig { auth_failure_threshold: threshold, ..DetectorConfig::default() })
}

#[test]
fn a_burst_of_failed_signatures_raises_one_finding() {
    let mut d = detector(5);
    for i in 0..4 {
        assert!(
            d.observe_call(&failed_call(secs(i * 10), KEY, "SignatureDoesNotMatch")).is_empty(),
            "below threshold"
        );
    }
    let updates = d.observe_call(&failed_call(secs(40), KEY, "InvalidClientTokenId"));
    assert_eq!(updates.len(), 1);
    let u = &updates[0];
    assert!(u.is_new && u.notify);
    assert_eq!(u.new_occurrences, 5);
    let f = &u.finding;
    assert_eq!(f.finding_type, FindingType::RepeatedAuthFailures);
    assert_eq!(f.finding_type.as_str(), "UnauthorizedAccess:AccessKey/RepeatedFailures");
    assert_eq!(f.severity, Severity::Medium, "no valid signature among them");
    assert_eq!((f.principal.as_str(), f.resource.as_str()), (KEY, "*"));
    assert_eq!((f.first_seen, f.last_seen, f.count), (secs(0), secs(40), 5));
    assert_eq!(f.details["lastErrorCode"], "InvalidClientTokenId");

    // More failures in the burst update the same finding, one each, without notifying again.
    let more = d.observe_call(&failed_call(secs(45), KEY, "SignatureDoesNotMatch"));
    assert_eq!(more.len(), 1);
    assert!(!more[0].is_new && !more[0].notify);
    assert_eq!((more[0].new_occurrences, more[0].finding.count), (1, 6));
    assert_eq!(more[0].finding.first_seen, secs(0));
    assert_eq!(d.findings().count(), 1);
}

#[test]
fn failures_spread_beyond_the_window_raise_nothing() {
    let mut d = detector(5);
    // One failure a minute and a half: never five within five minutes.
    for i in 0..50 {
        assert!(
            d.observe_call(&failed_call(secs(i * 90), KEY, "SignatureDoesNotMatch")).is_empty(),
            "at {i}"
        );
    }
}

#[test]
fn failures_of_different_keys_are_counted_apart() {
    let mut d = detector(3);
    for i in 0..10 {
        let key = format!("AKIAKILNRANDOM{i:06}");
        assert!(d.observe_call(&failed_call(secs(i), &key, "InvalidClientTokenId")).is_empty());
    }
}

#[test]
fn denied_calls_of_a_valid_key_make_the_burst_high() {
    let mut d = detector(3);
    d.observe_call(&failed_call(secs(0), KEY, "SignatureDoesNotMatch"));
    d.observe_call(&failed_call(secs(1), KEY, "AccessDeniedException"));
    let u = d.observe_call(&failed_call(secs(2), KEY, "AccessDeniedException"));
    assert_eq!(u[0].finding.severity, Severity::High);
    assert_eq!(u[0].finding.details["principalArn"], "arn:aws:iam::123456789012:user/ana");
}

#[test]
fn other_errors_are_not_authentication_failures() {
    let mut d = detector(2);
    for (i, code) in
        ["RequestExpired", "ResourceNotFoundException", "InvalidParameterValueException", "ServiceException"]
            .iter()
            .cycle()
            .take(20)
            .enumerate()
    {
        let call = failed_call(secs(i as i64), KEY, code);
        assert!(d.observe_call(&call).is_empty(), "{code}");
    }
}

#[test]
fn a_second_burst_after_quiet_adds_to_the_same_finding_and_notifies_again() {
    let mut d = Detector::new(DetectorConfig {
        auth_failure_threshold: 3,
        renotify_after: Duration::from_secs(3600),
        ..DetectorConfig::default()
    });
    for i in 0..3 {
        d.observe_call(&failed_call(secs(i), KEY, "SignatureDoesNotMatch"));
    }
    let later = 2 * 3600;
    assert!(d.observe_call(&failed_call(secs(later), KEY, "SignatureDoesNotMatch")).is_empty());
    d.observe_call(&failed_call(secs(later + 1), KEY, "SignatureDoesNotMatch"));
    let u = d.observe_call(&failed_call(secs(later + 2), KEY, "SignatureDoesNotMatch"));
    assert_eq!(u.len(), 1);
    assert!(!u[0].is_new && u[0].notify, "recurring after a quiet hour notifies");
    assert_eq!((u[0].new_occurrences, u[0].finding.count), (3, 6));
    assert_eq!((u[0].finding.first_seen, u[0].finding.last_seen), (secs(0), secs(later + 2)));
}

#[test]
fn a_new_source_address_is_reported_once_and_the_first_is_the_baseline() {
    let mut d = Detector::default();
    assert!(d.observe_call(&ok_call(secs(0), "192.0.2.10")).is_empty(), "the first address is learnt");
    assert!(d.observe_call(&ok_call(secs(1), "192.0.2.10")).is_empty());
    let u = d.observe_call(&ok_call(secs(2), "203.0.113.99"));
    assert_eq!(u.len(), 1);
    let f = &u[0].finding;
    assert!(u[0].is_new && u[0].notify);
    assert_eq!(f.finding_type, FindingType::NewSourceAddress);
    assert_eq!(f.severity, Severity::Low);
    assert_eq!((f.principal.as_str(), f.resource.as_str()), (KEY, "203.0.113.99"));
    assert_eq!(f.details["knownAddresses"], serde_json::json!(["192.0.2.10"]));
    // Now known: using it again is normal traffic.
    assert!(d.observe_call(&ok_call(secs(3), "203.0.113.99")).is_empty());
    assert!(d.observe_call(&ok_call(secs(4), "192.0.2.10")).is_empty());
}

#[test]
fn unauthenticated_calls_teach_no_address() {
    let mut d = Detector::default();
    d.learn_source(KEY, ip("192.0.2.10"));
    // Anyone can claim a key id: a refused signature from elsewhere is not "the key used from
    // a new address", and does not make that address known either.
    let mut forged = failed_call(secs(0), KEY, "SignatureDoesNotMatch");
    forged.source_address = Some(ip("203.0.113.50"));
    assert!(d.observe_call(&forged).is_empty());
    let u = d.observe_call(&ok_call(secs(1), "203.0.113.50"));
    assert_eq!(u.len(), 1, "the first genuine use from there is still new");
}

#[test]
fn seeded_addresses_are_not_new_after_a_restart() {
    let mut d = Detector::default();
    d.learn_source(KEY, ip("192.0.2.10"));
    assert!(d.observe_call(&ok_call(secs(0), "192.0.2.10")).is_empty());
    assert_eq!(d.observe_call(&ok_call(secs(1), "192.0.2.11")).len(), 1);
}

#[test]
fn an_unshared_account_using_an_image_is_reported() {
    let mut d = Detector::default();
    let refused = d.observe_usage(&usage("pull", "999999999999", false, true, "AVAILABLE"));
    assert_eq!(refused.len(), 1);
    let f = &refused[0].finding;
    assert_eq!(f.finding_type, FindingType::UnsharedImageUse);
    assert_eq!(f.severity, Severity::Medium);
    assert_eq!((f.principal.as_str(), f.resource.as_str()), ("999999999999", IMAGE));
    assert!(f.description.contains("was refused"));
    // Carried out despite no permission: worse, and the same finding gets more serious.
    let done = d.observe_usage(&usage("launch", "999999999999", false, false, "AVAILABLE"));
    assert_eq!(done.len(), 1);
    assert!(!done[0].is_new && done[0].notify, "an escalation notifies");
    assert_eq!((done[0].finding.severity, done[0].finding.count), (Severity::High, 2));
}

#[test]
fn retired_images_launched_are_reported_by_state() {
    let mut d = Detector::default();
    let deprecated = d.observe_usage(&usage("launch", "123456789012", true, false, "DEPRECATED"));
    assert_eq!(deprecated.len(), 1);
    assert_eq!(deprecated[0].finding.finding_type, FindingType::RetiredImageLaunch);
    assert_eq!(deprecated[0].finding.severity, Severity::Low);
    let mut d = Detector::default();
    let disabled = d.observe_usage(&usage("launch", "123456789012", true, false, "DISABLED"));
    assert_eq!(disabled[0].finding.severity, Severity::High);
    // A refused launch launched nothing; a pull is not a launch.
    assert!(d.observe_usage(&usage("launch", "123456789013", true, true, "DISABLED")).is_empty());
    assert!(d.observe_usage(&usage("pull", "123456789014", true, false, "DEPRECATED")).is_empty());
}

#[test]
fn an_unshared_launch_of_a_disabled_image_raises_both() {
    let mut d = Detector::default();
    let updates = d.observe_usage(&usage("launch", "999999999999", false, false, "DISABLED"));
    let types: Vec<FindingType> = updates.iter().map(|u| u.finding.finding_type).collect();
    assert_eq!(types, [FindingType::UnsharedImageUse, FindingType::RetiredImageLaunch]);
}

#[test]
fn repeated_usage_findings_are_deduplicated() {
    let mut d = Detector::default();
    for i in 0..5 {
        let mut u = usage("launch", "123456789012", true, false, "DEPRECATED");
        u.time = secs(i);
        let updates = d.observe_usage(&u);
        assert_eq!(updates[0].is_new, i == 0);
        assert_eq!(updates[0].notify, i == 0);
        assert_eq!(updates[0].finding.count, i as u64 + 1);
        assert_eq!(updates[0].finding.last_seen, secs(i));
    }
    assert_eq!(d.findings().count(), 1);
}

#[test]
fn normal_traffic_raises_nothing() {
    let mut d = detector(5);
    // A day of a busy CI key from two addresses, with the odd mistake (an expired request,
    // a missing image, a denied call now and then), plus permitted launches and pulls of
    // current images.
    d.learn_source(KEY, ip("192.0.2.10"));
    d.learn_source(KEY, ip("192.0.2.11"));
    for i in 0..5000 {
        let addr = if i % 2 == 0 { "192.0.2.10" } else { "192.0.2.11" };
        let call = match i % 97 {
            0 => failed_call(secs(i * 17), KEY, "AccessDeniedException"),
            1 => failed_call(secs(i * 17), KEY, "RequestExpired"),
            2 => ApiCallRecord {
                error_code: Some("ResourceNotFoundException".into()),
                status: 404,
                ..ok_call(secs(i * 17), addr)
            },
            _ => ok_call(secs(i * 17), addr),
        };
        let call = ApiCallRecord { source_address: Some(ip(addr)), ..call };
        assert!(d.observe_call(&call).is_empty(), "call {i}: {call:?}");
        for u in [
            usage("launch", "123456789012", true, false, "AVAILABLE"),
            usage("pull", "210987654321", true, false, "AVAILABLE"),
            usage("pull", "210987654321", true, false, "DEPRECATED"),
        ] {
            assert!(d.observe_usage(&u).is_empty(), "{u:?}");
        }
    }
    assert_eq!(d.findings().count(), 0);
}

#[test]
fn calls_without_a_key_are_ignored() {
    let mut d = detector(1);
    let mut call = failed_call(secs(0), KEY, "SignatureDoesNotMatch");
    call.access_key_id = None;
    assert!(d.observe_call(&call).is_empty());
    call.access_key_id = Some(String::new());
    assert!(d.observe_call(&call).is_empty());
}

#[test]
fn state_stays_bounded_under_a_flood_of_made_up_keys() {
    let mut d = Detector::new(DetectorConfig {
        auth_failure_threshold: 2,
        max_tracked_keys: 100,
        max_findings: 50,
        ..DetectorConfig::default()
    });
    for i in 0..10_000 {
        let key = format!("AKIAFLOOD{i:011}");
        d.observe_call(&failed_call(secs(i / 100), &key, "InvalidClientTokenId"));
        d.observe_call(&failed_call(secs(i / 100), &key, "InvalidClientTokenId"));
    }
    assert!(d.failures.len() <= 100, "{}", d.failures.len());
    assert!(d.findings.len() <= 50, "{}", d.findings.len());
    for i in 0..1000 {
        d.learn_source(&format!("AKIAFLOOD{i:011}"), ip("192.0.2.1"));
    }
    assert!(d.sources.len() <= 100);
}

#[test]
fn restored_findings_are_updated_not_raised_again() {
    let mut first = Detector::default();
    let raised = first.observe_usage(&usage("launch", "123456789012", true, false, "DEPRECATED"));
    let mut restarted = Detector::default();
    restarted.restore(raised[0].finding.clone());
    let again = restarted.observe_usage(&usage("launch", "123456789012", true, false, "DEPRECATED"));
    assert!(!again[0].is_new && !again[0].notify);
    assert_eq!(again[0].new_occurrences, 1);
}

#[test]
fn a_finding_notification_carries_the_finding() {
    let mut d = Detector::default();
    let f = d.observe_usage(&usage("launch", "123456789012", true, false, "DISABLED"))[0].finding.clone();
    let source = Source { region: "eu-west-3".into(), account: "123456789012".into() };
    let n = f.notification(&source, secs(5));
    assert_eq!(n.topic, Some(Topic::ThreatFinding));
    assert_eq!(n.topic_arn, "arn:aws:sns:eu-west-3:123456789012:kiln-threat-finding");
    assert!(n.subject.starts_with("HIGH finding: "), "{}", n.subject);
    let message: serde_json::Value = serde_json::from_str(&n.message).unwrap();
    assert_eq!(message["type"], "Policy:Image/RetiredImageLaunch");
    assert_eq!(message["severity"], "HIGH");
    assert_eq!(message["resource"], IMAGE);
    assert_eq!(message["count"], 1);
}

#[test]
fn types_and_severities_round_trip_their_names() {
    for t in FindingType::ALL {
        assert_eq!(FindingType::parse(t.as_str()), Some(t));
        assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
    }
    assert_eq!(FindingType::parse("Nope"), None);
    assert!(Severity::High > Severity::Medium && Severity::Medium > Severity::Low);
    assert_eq!(serde_json::to_value(Severity::Medium).unwrap(), "MEDIUM");
    for s in [Severity::Low, Severity::Medium, Severity::High] {
        assert_eq!(Severity::parse(s.as_str()), Some(s));
    }
    assert_eq!(Severity::parse("low"), None);
}
