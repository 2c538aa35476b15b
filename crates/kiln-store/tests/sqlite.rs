//! The conformance suite on SQLite (a temporary database file per test), and what is
//! particular to the embedded backend: locations, re-opening, several processes' pools on
//! one file.

mod conformance;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use kiln_store::{
    ComponentSource, ImageState, NewComponent, NewImage, Store, StoreError, Tags, default_database_path,
};
use serde_json::json;
use tempfile::TempDir;

async fn sqlite_store() -> (Store, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let store = Store::open(path.to_str().unwrap()).await.unwrap();
    (store, dir)
}

conformance_tests! {
    sqlite_store;
    usage_is_recorded_per_image_in_order,
    launch_permissions_and_region_names_are_kept_per_image,
    list_images_matches_every_tag_and_can_include_deleted,
    image_regions_record_the_last_outcome_per_region,
    image_output_location_is_recorded_before_the_manifest,
    migrations_applied_on_open,
    executions_with_and_without_a_pipeline,
    api_resource_conditional_update_refuses_a_changed_resource,
    lifecycle_executions_start_finish_once_list_and_delete,
    a_role_has_one_holder_until_released_or_its_term_runs_out,
    component_create_get_list_delete,
    component_digest_is_sha256_of_document,
    component_duplicate_version_refused,
    component_ensure_is_idempotent_for_same_document,
    component_resolve_picks_highest_match,
    component_resolve_no_match_lists_versions,
    recipe_create_get_list_delete,
    image_builds_are_numbered_per_version,
    allocate_build_concurrent_never_repeats,
    create_image_concurrent_never_repeats,
    image_transitions_follow_the_lifecycle,
    image_invalid_transitions_refused,
    image_fails_or_cancels_from_every_in_progress_state,
    image_concurrent_transitions_one_wins,
    image_get_latest_and_by_build,
    image_list_filters,
    image_manifest_and_tags,
    fail_in_progress_recovers_interrupted_builds,
    job_enqueue_claim_complete,
    job_fail_records_error,
    job_claims_oldest_first,
    job_bad_requests_refused,
    job_concurrent_claims_never_share,
    job_expired_lease_is_reclaimed,
    job_heartbeat_extends_lease,
    job_exhausted_attempts_fail,
    job_cancel_queued_and_running,
    layer_index_touch_prune_remove,
    scan_inventory_is_kept_and_replaced,
    scan_findings_are_new_only_against_the_previous_scan,
    scan_findings_list_filters_and_pages,
    scan_rebuild_marks_set_replace_clear_and_list,
    audit_records_round_trip_and_filter,
    audit_pages_oldest_or_newest_first,
    audit_keeps_odd_values_and_cuts_huge_ones,
    audit_sources_and_retention,
    threat_findings_are_deduplicated_and_keep_the_worst_severity,
    threat_findings_filter_and_archive,
    state_changes_are_followed_in_order,
}

#[tokio::test]
async fn open_default_creates_state_dir_under_kiln_home() {
    let home = tempfile::tempdir().unwrap();
    let kiln_home = home.path().join("not").join("yet");
    let store = Store::open_default(&kiln_home).await.unwrap();
    let path = default_database_path(&kiln_home);
    assert_eq!(path, kiln_home.join("state/kiln.db"));
    assert!(path.is_file());
    assert_eq!(store.backend_name(), "sqlite");
    assert_eq!(store.location(), path.to_str().unwrap());
    // WAL mode: a write leaves the write-ahead log next to the database.
    store.enqueue("k", &json!({})).await.unwrap();
    assert!(kiln_home.join("state/kiln.db-wal").exists());
    store.close().await;
}

#[tokio::test]
async fn open_accepts_sqlite_urls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/state.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let store = Store::open(&url).await.unwrap();
    store.allocate_build("x", &"1.0.0".parse().unwrap()).await.unwrap();
    store.close().await;
    assert!(path.is_file());

    let mem = Store::open("sqlite::memory:").await.unwrap();
    assert!(mem.schema_version().await.unwrap() >= 1);
    mem.enqueue("k", &json!({})).await.unwrap();
    assert_eq!(mem.queue_depth().await.unwrap(), 1);
    mem.close().await;
}

#[tokio::test]
async fn open_refuses_unsupported_locations() {
    for loc in ["postgres://kiln@db/kiln", "mysql://x/y", ""] {
        let err = Store::open(loc).await.unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedLocation { .. }), "{loc}: {err:?}");
    }
    // A directory where the database file should be.
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(dir.path().to_str().unwrap()).await.unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("writable"), "{err}");
    // A file that is not a database.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    let err = Store::open(junk.to_str().unwrap()).await.unwrap_err();
    assert!(matches!(err, StoreError::Open { .. } | StoreError::Migrate { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_data_and_does_not_rerun_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let path = path.to_str().unwrap();
    let arn;
    {
        let store = Store::open(path).await.unwrap();
        store
            .create_component(&NewComponent {
                name: "hello".into(),
                version: "1.0.0".parse().unwrap(),
                platform: "Linux".into(),
                description: String::new(),
                document: "doc".into(),
                source: ComponentSource::Builtin,
                tags: Tags::new(),
            })
            .await
            .unwrap();
        let img = store
            .create_image(&NewImage {
                name: "web".into(),
                version: "1.0.0".parse().unwrap(),
                region: "local".into(),
                account: "000000000000".into(),
                recipe: json!({}),
                tags: Tags::new(),
            })
            .await
            .unwrap();
        store.transition(&img.arn, ImageState::Building, None).await.unwrap();
        store.put_layer("k", "/p", 1).await.unwrap();
        store.enqueue("k", &json!({"a": 1})).await.unwrap();
        arn = img.arn;
        store.close().await;
    }
    let store = Store::open(path).await.unwrap();
    // The newest migration file's number: every migration ran once, none is pending.
    let newest = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.split('_').next()?.parse::<i64>().ok())
        .max()
        .unwrap();
    assert_eq!(store.schema_version().await.unwrap(), newest);
    let c = store.get_component("hello", &"1.0.0".parse().unwrap()).await.unwrap();
    assert_eq!(c.source, ComponentSource::Builtin);
    assert_eq!(store.get_image_by_arn(&arn).await.unwrap().state, ImageState::Building);
    assert_eq!(store.image_history(&arn).await.unwrap().len(), 2);
    assert!(store.get_layer("k").await.unwrap().is_some());
    assert_eq!(store.queue_depth().await.unwrap(), 1);
    // Build numbers continue after a restart.
    assert_eq!(store.allocate_build("web", &"1.0.0".parse().unwrap()).await.unwrap(), 2);
    // Start-up recovery.
    assert_eq!(store.fail_in_progress("restart").await.unwrap(), [arn]);
    store.close().await;
}

/// Separate pools on one file stand in for separate `kiln worker` processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_pools_share_queue_and_build_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let path = path.to_str().unwrap().to_owned();
    let stores = [
        Store::open(&path).await.unwrap(),
        Store::open(&path).await.unwrap(),
        Store::open(&path).await.unwrap(),
    ];
    for i in 0..45 {
        stores[i % 3].enqueue("k", &json!(i)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for (n, s) in stores.iter().enumerate() {
        for w in 0..2 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let worker = format!("p{n}w{w}");
                let mut claimed = Vec::new();
                let mut builds = Vec::new();
                while let Some(job) = s.claim(&worker, Duration::from_secs(60)).await.unwrap() {
                    claimed.push(job.id);
                    builds.push(s.allocate_build("shared", &"1.0.0".parse().unwrap()).await.unwrap());
                    s.complete(job.id, &worker).await.unwrap();
                }
                (claimed, builds)
            }));
        }
    }
    let mut jobs = HashSet::new();
    let mut builds = BTreeSet::new();
    for t in tasks {
        let (claimed, b) = t.await.unwrap();
        for id in claimed {
            assert!(jobs.insert(id), "job {id} claimed twice");
        }
        for n in b {
            assert!(builds.insert(n), "build {n} handed out twice");
        }
    }
    assert_eq!(jobs.len(), 45);
    assert_eq!(builds, (1..=45).collect());
    for s in &stores {
        s.close().await;
    }
}
