//! The conformance of the monitoring tables: the audit log, threat findings, the state-change
//! feed and the image counts per state.

use kiln_store::{
    AUDIT_SUCCESS, AuditFilter, AuditRecord, AuditResult, ImageState, MAX_AUDIT_PAGE, NewThreatFinding,
    Store, StoreError, ThreatFindingFilter,
};
use serde_json::json;
use time::OffsetDateTime;
use time::macros::datetime;

use super::{available, image};

fn call(at: OffsetDateTime, key: &str, operation: &str, result: &str) -> AuditRecord {
    AuditRecord {
        at,
        request_id: format!("req-{}", at.unix_timestamp()),
        account: (result != "SignatureDoesNotMatch").then(|| "123456789012".into()),
        principal: (result != "SignatureDoesNotMatch")
            .then(|| format!("arn:aws:iam::123456789012:user/{key}")),
        access_key_id: Some(format!("AKIA{key}")),
        operation: operation.into(),
        resource: Some("arn:aws:imagebuilder:eu-west-3:123456789012:image/web/1.0.0/1".into()),
        result: result.into(),
        http_status: if result == AUDIT_SUCCESS { 200 } else { 403 },
        source_address: Some("192.0.2.10".into()),
        user_agent: Some("aws-cli/2.15.0".into()),
        duration_ms: 3,
    }
}

const T0: OffsetDateTime = datetime!(2024-03-31 00:00:00 UTC);

fn at(minutes: i64) -> OffsetDateTime {
    T0 + time::Duration::minutes(minutes)
}

/// Four calls: ana reads, bob is denied, ana's key is misused, ana deletes.
async fn four_calls(store: &Store) -> Vec<i64> {
    let mut ids = Vec::new();
    for record in [
        call(at(0), "ana", "GetImage", AUDIT_SUCCESS),
        call(at(1), "bob", "DeleteImage", "AccessDeniedException"),
        AuditRecord {
            source_address: Some("203.0.113.9".into()),
            ..call(at(2), "ana", "ListImages", "SignatureDoesNotMatch")
        },
        AuditRecord { resource: Some("*".into()), ..call(at(3), "ana", "CreateComponent", AUDIT_SUCCESS) },
    ] {
        ids.push(store.record_audit(&record).await.unwrap());
    }
    ids
}

pub async fn audit_records_round_trip_and_filter(store: &Store) {
    let ids = four_calls(store).await;
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow");
    let list = |f: AuditFilter| async move { store.list_audit(&f).await.unwrap() };
    let ops = |entries: &[kiln_store::AuditEntry]| {
        entries.iter().map(|e| e.record.operation.clone()).collect::<Vec<_>>()
    };

    let all = list(AuditFilter::default()).await;
    assert_eq!(ops(&all), ["GetImage", "DeleteImage", "ListImages", "CreateComponent"]);
    assert_eq!(all[0].record, call(at(0), "ana", "GetImage", AUDIT_SUCCESS), "every column round-trips");
    assert_eq!(all[2].record.principal, None);

    // A user is an access key id or a principal ARN.
    assert_eq!(
        ops(&list(AuditFilter { user: Some("AKIAana".into()), ..Default::default() }).await),
        ["GetImage", "ListImages", "CreateComponent"]
    );
    assert_eq!(
        ops(&list(AuditFilter {
            user: Some("arn:aws:iam::123456789012:user/bob".into()),
            ..Default::default()
        })
        .await),
        ["DeleteImage"]
    );
    assert_eq!(
        ops(&list(AuditFilter { operation: Some("GetImage".into()), ..Default::default() }).await),
        ["GetImage"]
    );
    assert_eq!(
        ops(&list(AuditFilter { resource: Some("*".into()), ..Default::default() }).await),
        ["CreateComponent"]
    );
    assert_eq!(
        ops(&list(AuditFilter { result: Some(AuditResult::Success), ..Default::default() }).await),
        ["GetImage", "CreateComponent"]
    );
    assert_eq!(
        ops(&list(AuditFilter { result: Some(AuditResult::Failure), ..Default::default() }).await),
        ["DeleteImage", "ListImages"]
    );
    assert_eq!(
        ops(&list(AuditFilter {
            result: Some(AuditResult::Code("AccessDeniedException".into())),
            ..Default::default()
        })
        .await),
        ["DeleteImage"]
    );
    assert_eq!(
        ops(&list(AuditFilter { source_address: Some("203.0.113.9".into()), ..Default::default() }).await),
        ["ListImages"]
    );
    assert_eq!(
        ops(&list(AuditFilter { account: Some("123456789012".into()), ..Default::default() }).await).len(),
        3
    );
    // Time range: since inclusive, until exclusive.
    assert_eq!(
        ops(&list(AuditFilter { since: Some(at(1)), until: Some(at(3)), ..Default::default() }).await),
        ["DeleteImage", "ListImages"]
    );
    let combined = AuditFilter {
        user: Some("AKIAana".into()),
        result: Some(AuditResult::Success),
        since: Some(at(1)),
        ..Default::default()
    };
    assert_eq!(ops(&list(combined).await), ["CreateComponent"]);
    assert!(list(AuditFilter { user: Some("nobody".into()), ..Default::default() }).await.is_empty());
    // Values are data, never SQL.
    assert!(
        list(AuditFilter { operation: Some("x' OR '1'='1".into()), ..Default::default() }).await.is_empty()
    );
}

pub async fn audit_pages_oldest_or_newest_first(store: &Store) {
    let ids = four_calls(store).await;
    let page = |after, before, newest_first| async move {
        store
            .list_audit(&AuditFilter { after, before, newest_first, limit: Some(3), ..Default::default() })
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    };
    let first = page(None, None, false).await;
    assert_eq!(first, ids[..3]);
    assert_eq!(page(first.last().copied(), None, false).await, ids[3..]);
    let newest = page(None, None, true).await;
    assert_eq!(newest, [ids[3], ids[2], ids[1]]);
    assert_eq!(page(None, newest.last().copied(), true).await, [ids[0]]);
    assert!(page(Some(ids[3]), None, false).await.is_empty());
    // An unbounded limit is capped.
    let capped =
        store.list_audit(&AuditFilter { limit: Some(u32::MAX), ..Default::default() }).await.unwrap();
    assert_eq!(capped.len(), 4);
    const { assert!(MAX_AUDIT_PAGE >= 1000) };
}

pub async fn audit_keeps_odd_values_and_cuts_huge_ones(store: &Store) {
    let record = AuditRecord {
        user_agent: Some("é".repeat(5000)),
        resource: Some("r".repeat(100_000)),
        request_id: "quote ' and \"double\" and \\ and \u{0}".into(),
        account: None,
        principal: None,
        access_key_id: None,
        source_address: None,
        duration_ms: u64::MAX,
        ..call(at(0), "x", "unknown", "InvalidAction")
    };
    let id = store.record_audit(&record).await.unwrap();
    let stored = store.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(stored[0].id, id);
    let got = &stored[0].record;
    assert_eq!(got.user_agent.as_ref().unwrap().chars().count(), 512);
    assert_eq!(got.resource.as_ref().unwrap().len(), 2048);
    assert_eq!(got.request_id, record.request_id);
    assert_eq!(got.duration_ms, i64::MAX as u64);
    assert_eq!((got.account.as_ref(), got.access_key_id.as_ref()), (None, None));
}

pub async fn audit_sources_and_retention(store: &Store) {
    four_calls(store).await;
    // Only authenticated calls teach addresses: ana's misused key from 203.0.113.9 is not one.
    let sources = store.audit_sources().await.unwrap();
    assert_eq!(
        sources,
        [
            ("AKIAana".to_string(), "192.0.2.10".to_string()),
            ("AKIAbob".to_string(), "192.0.2.10".to_string())
        ]
    );
    assert_eq!(store.prune_audit(at(2)).await.unwrap(), 2);
    let left = store.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(left.iter().map(|e| e.record.at).collect::<Vec<_>>(), [at(2), at(3)]);
}

fn threat(kind: &str, severity: &str, principal: &str, minute: i64, occurrences: u64) -> NewThreatFinding {
    NewThreatFinding {
        finding_type: kind.into(),
        severity: severity.into(),
        title: format!("{kind} by {principal} at {minute}"),
        description: "details".into(),
        principal: principal.into(),
        resource: "*".into(),
        first_seen: at(minute),
        last_seen: at(minute),
        occurrences,
        details: json!({"minute": minute}),
    }
}

const BURST: &str = "UnauthorizedAccess:AccessKey/RepeatedFailures";
const NEW_ADDRESS: &str = "InitialAccess:AccessKey/NewSourceAddress";

pub async fn threat_findings_are_deduplicated_and_keep_the_worst_severity(store: &Store) {
    let first = store.upsert_threat_finding(&threat(BURST, "HIGH", "AKIAana", 5, 10)).await.unwrap();
    assert_eq!((first.count, first.severity.as_str()), (10, "HIGH"));
    // A later, milder occurrence: counted, last seen moved, severity kept.
    let again = store.upsert_threat_finding(&threat(BURST, "MEDIUM", "AKIAana", 9, 1)).await.unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!((again.count, again.severity.as_str()), (11, "HIGH"));
    assert_eq!((again.first_seen, again.last_seen), (at(5), at(9)));
    assert_eq!(again.title, "UnauthorizedAccess:AccessKey/RepeatedFailures by AKIAana at 9");
    assert_eq!(again.details, json!({"minute": 9}));
    // An older one arriving late widens first seen and leaves last seen.
    let late = store.upsert_threat_finding(&threat(BURST, "LOW", "AKIAana", 1, 0)).await.unwrap();
    assert_eq!((late.count, late.first_seen, late.last_seen), (12, at(1), at(9)), "0 occurrences count as 1");
    // Another principal or type is another finding.
    let other = store.upsert_threat_finding(&threat(BURST, "MEDIUM", "AKIAbob", 2, 3)).await.unwrap();
    assert_ne!(other.id, first.id);
    let low = store.upsert_threat_finding(&threat(NEW_ADDRESS, "LOW", "AKIAana", 3, 1)).await.unwrap();
    let escalated =
        store.upsert_threat_finding(&threat(NEW_ADDRESS, "MEDIUM", "AKIAana", 4, 1)).await.unwrap();
    assert_eq!((escalated.id, escalated.severity.as_str()), (low.id, "MEDIUM"));
    assert_eq!(store.list_threat_findings(&ThreatFindingFilter::default()).await.unwrap().len(), 3);

    let bad = store.upsert_threat_finding(&threat(BURST, "critical", "AKIAana", 1, 1)).await;
    assert!(matches!(bad, Err(StoreError::InvalidInput { .. })), "{bad:?}");
    let empty = store.upsert_threat_finding(&threat(" ", "LOW", "AKIAana", 1, 1)).await;
    assert!(matches!(empty, Err(StoreError::InvalidInput { .. })));
}

pub async fn threat_findings_filter_and_archive(store: &Store) {
    let burst = store.upsert_threat_finding(&threat(BURST, "HIGH", "AKIAana", 5, 10)).await.unwrap();
    store.upsert_threat_finding(&threat(NEW_ADDRESS, "LOW", "AKIAbob", 7, 1)).await.unwrap();
    let list = |f: ThreatFindingFilter| async move {
        store.list_threat_findings(&f).await.unwrap().into_iter().map(|t| t.principal).collect::<Vec<_>>()
    };
    assert_eq!(
        list(ThreatFindingFilter::default()).await,
        ["AKIAbob", "AKIAana"],
        "most recently seen first"
    );
    assert_eq!(
        list(ThreatFindingFilter { min_severity: Some("MEDIUM".into()), ..Default::default() }).await,
        ["AKIAana"]
    );
    assert_eq!(
        list(ThreatFindingFilter { finding_type: Some(NEW_ADDRESS.into()), ..Default::default() }).await,
        ["AKIAbob"]
    );
    assert_eq!(
        list(ThreatFindingFilter { principal: Some("AKIAana".into()), ..Default::default() }).await,
        ["AKIAana"]
    );
    assert_eq!(list(ThreatFindingFilter { since: Some(at(6)), ..Default::default() }).await, ["AKIAbob"]);
    assert!(matches!(
        store
            .list_threat_findings(&ThreatFindingFilter {
                min_severity: Some("SEVERE".into()),
                ..Default::default()
            })
            .await,
        Err(StoreError::InvalidInput { .. })
    ));

    assert!(store.archive_threat_finding(burst.id).await.unwrap());
    assert!(!store.archive_threat_finding(9999).await.unwrap());
    assert_eq!(list(ThreatFindingFilter::default()).await, ["AKIAbob"]);
    let archived = store
        .list_threat_findings(&ThreatFindingFilter { include_archived: true, ..Default::default() })
        .await
        .unwrap();
    assert!(archived.iter().any(|t| t.id == burst.id && t.archived_at.is_some()));
    // It recurs: back in the list, unarchived.
    let back = store.upsert_threat_finding(&threat(BURST, "MEDIUM", "AKIAana", 8, 1)).await.unwrap();
    assert_eq!((back.archived_at, back.count), (None, 11));
    assert_eq!(list(ThreatFindingFilter::default()).await, ["AKIAana", "AKIAbob"]);
}

pub async fn state_changes_are_followed_in_order(store: &Store) {
    let before = store.latest_state_change_id().await.unwrap();
    assert_eq!(before, 0);
    let a = available(store, "a").await;
    let b = store.create_image(&image("b", "1.0.0")).await.unwrap();
    store.transition(&b.arn, ImageState::Failed, Some("boom")).await.unwrap();

    let all = store.state_changes_after(0, 100).await.unwrap();
    let seen: Vec<(&str, Option<ImageState>, ImageState)> =
        all.iter().map(|e| (e.image_arn.as_str(), e.from, e.to)).collect();
    assert_eq!(
        seen,
        [
            (a.as_str(), None, ImageState::Pending),
            (a.as_str(), Some(ImageState::Pending), ImageState::Building),
            (a.as_str(), Some(ImageState::Building), ImageState::Available),
            (b.arn.as_str(), None, ImageState::Pending),
            (b.arn.as_str(), Some(ImageState::Pending), ImageState::Failed),
        ]
    );
    assert_eq!(all[4].reason.as_deref(), Some("boom"));
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    // Following from the last id seen, a page at a time.
    let page = store.state_changes_after(all[1].id, 2).await.unwrap();
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), [all[2].id, all[3].id]);
    assert_eq!(store.latest_state_change_id().await.unwrap(), all[4].id);
    assert!(store.state_changes_after(all[4].id, 10).await.unwrap().is_empty());

    let counts = store.image_counts_by_state().await.unwrap();
    assert_eq!(counts, [(ImageState::Available, 1), (ImageState::Failed, 1)]);
}
