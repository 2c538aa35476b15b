//! The backend conformance suite: one function per behaviour, each taking a fresh, empty
//! `&Store`. Every backend runs all of them (see `sqlite.rs`; a PostgreSQL test file
//! invokes `conformance_tests!` with its own store factory).

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use kiln_store::{
    ComponentSource, FindingFilter, ImageFilter, ImageState, JobState, NewComponent, NewImage, NewJob,
    NewRecipe, NewScan, NewScanFinding, ScanFinding, ScanTrigger, Store, StoreError, Tags, Version,
    VersionFilter,
};
use serde_json::json;

mod monitoring;
pub use monitoring::*;

/// Generate one `#[tokio::test]` per conformance function, each on a fresh store from
/// `$make` (an async fn returning `(Store, guard)`; the guard lives as long as the test).
#[macro_export]
macro_rules! conformance_tests {
    ($make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (store, _guard) = $make().await;
                conformance::$name(&store).await;
                store.close().await;
            }
        )*
    };
}

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn component(name: &str, version: &str, document: &str) -> NewComponent {
    NewComponent {
        name: name.into(),
        version: v(version),
        platform: "Linux".into(),
        description: format!("{name} {version}"),
        document: document.into(),
        source: ComponentSource::File,
        tags: Tags::new(),
    }
}

fn image(name: &str, version: &str) -> NewImage {
    NewImage {
        name: name.into(),
        version: v(version),
        region: "local".into(),
        account: "000000000000".into(),
        recipe: json!({"name": name, "semanticVersion": version}),
        tags: Tags::new(),
    }
}

// ---- open / schema -----------------------------------------------------------------

pub async fn migrations_applied_on_open(store: &Store) {
    assert!(store.schema_version().await.unwrap() >= 1);
    assert!(store.list_components(None).await.unwrap().is_empty());
    assert!(store.list_recipes(None).await.unwrap().is_empty());
    assert!(store.list_images(&ImageFilter::default()).await.unwrap().is_empty());
    assert!(store.list_jobs(None).await.unwrap().is_empty());
    assert!(store.list_layers().await.unwrap().is_empty());
    assert_eq!(store.queue_depth().await.unwrap(), 0);
}

// ---- components --------------------------------------------------------------------

pub async fn component_create_get_list_delete(store: &Store) {
    let mut new = component("hello", "1.0.0", "name: hello\nschemaVersion: 1.0\n");
    new.tags = tags(&[("team", "platform")]);
    new.source = ComponentSource::Api;
    let created = store.create_component(&new).await.unwrap();
    assert_eq!(created.sha256.len(), 64);
    let got = store.get_component("hello", &v("1.0.0")).await.unwrap();
    assert_eq!(got, created);
    assert_eq!(got.document, new.document);
    assert_eq!(got.source, ComponentSource::Api);
    assert_eq!(got.tags, new.tags);

    store.create_component(&component("hello", "1.1.0", "b")).await.unwrap();
    store.create_component(&component("abc", "0.0.1", "c")).await.unwrap();
    let all = store.list_components(None).await.unwrap();
    let names: Vec<String> = all.iter().map(|c| format!("{}/{}", c.name, c.version)).collect();
    assert_eq!(names, ["abc/0.0.1", "hello/1.0.0", "hello/1.1.0"]);
    assert_eq!(store.list_components(Some("hello")).await.unwrap().len(), 2);
    assert_eq!(store.component_versions("hello").await.unwrap(), [v("1.0.0"), v("1.1.0")]);

    store.delete_component("hello", &v("1.0.0")).await.unwrap();
    let err = store.get_component("hello", &v("1.0.0")).await.unwrap_err();
    match err {
        StoreError::ComponentNotFound { available, .. } => assert_eq!(available, [v("1.1.0")]),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        store.delete_component("hello", &v("1.0.0")).await,
        Err(StoreError::ComponentNotFound { .. })
    ));
}

pub async fn component_digest_is_sha256_of_document(store: &Store) {
    let c = store.create_component(&component("d", "1.0.0", "abc")).await.unwrap();
    // sha256("abc")
    assert_eq!(c.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

pub async fn component_duplicate_version_refused(store: &Store) {
    store.create_component(&component("dup", "1.0.0", "a")).await.unwrap();
    let err = store.create_component(&component("dup", "1.0.0", "a")).await.unwrap_err();
    assert!(matches!(&err, StoreError::ComponentExists { name, .. } if name == "dup"), "{err:?}");
    assert!(err.to_string().contains("create a new version"), "{err}");
    // The first one is unchanged.
    assert_eq!(store.list_components(Some("dup")).await.unwrap().len(), 1);
}

pub async fn component_ensure_is_idempotent_for_same_document(store: &Store) {
    let mut new = component("builtin/update", "1.0.0", "doc");
    new.source = ComponentSource::Builtin;
    let a = store.ensure_component(&new).await.unwrap();
    let b = store.ensure_component(&new).await.unwrap();
    assert_eq!(a, b);
    new.document = "changed".into();
    assert!(matches!(store.ensure_component(&new).await, Err(StoreError::ComponentExists { .. })));
}

pub async fn component_resolve_picks_highest_match(store: &Store) {
    for ver in ["1.0.0", "1.2.0", "1.2.5", "1.10.0", "2.0.1", "1.9.9"] {
        store.create_component(&component("web", ver, ver)).await.unwrap();
    }
    for (filter, want) in [
        ("x.x.x", "2.0.1"),
        ("1.x.x", "1.10.0"),
        ("1.2.x", "1.2.5"),
        ("1.9.x", "1.9.9"),
        ("1.2.0", "1.2.0"),
        ("2.x.x", "2.0.1"),
    ] {
        let f: VersionFilter = filter.parse().unwrap();
        let c = store.resolve_component("web", &f).await.unwrap();
        assert_eq!(c.version, v(want), "{filter}");
        assert_eq!(c.document, want);
    }
}

pub async fn component_resolve_no_match_lists_versions(store: &Store) {
    store.create_component(&component("web", "1.0.0", "a")).await.unwrap();
    store.create_component(&component("web", "1.2.0", "b")).await.unwrap();
    for filter in ["3.x.x", "1.1.x", "1.2.1"] {
        let err = store.resolve_component("web", &filter.parse().unwrap()).await.unwrap_err();
        match &err {
            StoreError::ComponentNotFound { name, filter: f, available } => {
                assert_eq!(name, "web");
                assert_eq!(f, filter);
                assert_eq!(available, &[v("1.0.0"), v("1.2.0")]);
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("1.0.0, 1.2.0") && msg.contains(filter), "{msg}");
    }
    let err = store.resolve_component("nope", &VersionFilter::ANY).await.unwrap_err();
    assert!(matches!(&err, StoreError::ComponentNotFound { available, .. } if available.is_empty()));
    assert!(err.to_string().contains("no version of it exists"), "{err}");
}

// ---- recipes -----------------------------------------------------------------------

pub async fn recipe_create_get_list_delete(store: &Store) {
    let body = json!({"name": "web", "components": [{"componentArn": "hello/1.x.x"}]});
    let new = NewRecipe {
        name: "web".into(),
        version: v("1.0.0"),
        parent_image: "debian-12-x86".into(),
        body: body.clone(),
        tags: tags(&[("env", "prod")]),
    };
    let created = store.create_recipe(&new).await.unwrap();
    let got = store.get_recipe("web", &v("1.0.0")).await.unwrap();
    assert_eq!(got, created);
    assert_eq!(got.body, body);
    assert_eq!(got.parent_image, "debian-12-x86");
    assert_eq!(got.tags, new.tags);

    let err = store.create_recipe(&new).await.unwrap_err();
    assert!(matches!(err, StoreError::RecipeExists { .. }), "{err:?}");

    let mut second = new.clone();
    second.version = v("1.10.0");
    store.create_recipe(&second).await.unwrap();
    let mut third = new.clone();
    third.version = v("1.9.0");
    store.create_recipe(&third).await.unwrap();
    let versions: Vec<Version> =
        store.list_recipes(Some("web")).await.unwrap().into_iter().map(|r| r.version).collect();
    assert_eq!(versions, [v("1.0.0"), v("1.9.0"), v("1.10.0")]);

    store.delete_recipe("web", &v("1.0.0")).await.unwrap();
    assert!(matches!(store.get_recipe("web", &v("1.0.0")).await, Err(StoreError::RecipeNotFound { .. })));
    assert!(matches!(store.delete_recipe("web", &v("1.0.0")).await, Err(StoreError::RecipeNotFound { .. })));
}

// ---- images ------------------------------------------------------------------------

pub async fn image_builds_are_numbered_per_version(store: &Store) {
    let a1 = store.create_image(&image("web", "1.0.0")).await.unwrap();
    let a2 = store.create_image(&image("web", "1.0.0")).await.unwrap();
    let b1 = store.create_image(&image("web", "1.1.0")).await.unwrap();
    let c1 = store.create_image(&image("db", "1.0.0")).await.unwrap();
    assert_eq!((a1.build, a2.build, b1.build, c1.build), (1, 2, 1, 1));
    assert_eq!(a2.arn, "arn:aws:imagebuilder:local:000000000000:image/web/1.0.0/2");
    assert_eq!(a1.state, ImageState::Pending);
    // allocate_build shares the counter, and numbers are never reused.
    assert_eq!(store.allocate_build("web", &v("1.0.0")).await.unwrap(), 3);
    assert_eq!(store.create_image(&image("web", "1.0.0")).await.unwrap().build, 4);
    assert_eq!(store.allocate_build("new", &v("0.0.1")).await.unwrap(), 1);

    let got = store.get_image_by_arn(&a1.arn).await.unwrap();
    assert_eq!(got, a1);
    let history = store.image_history(&a1.arn).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].from, None);
    assert_eq!(history[0].to, ImageState::Pending);
}

pub async fn allocate_build_concurrent_never_repeats(store: &Store) {
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.allocate_build("race", &"1.0.0".parse().unwrap()).await.unwrap()
        }));
    }
    let mut got = BTreeSet::new();
    for t in tasks {
        assert!(got.insert(t.await.unwrap()), "duplicate build number");
    }
    assert_eq!(got, (1..=40).collect());
}

pub async fn create_image_concurrent_never_repeats(store: &Store) {
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move { s.create_image(&image("race", "2.0.0")).await.unwrap() }));
    }
    let mut builds = BTreeSet::new();
    for t in tasks {
        assert!(builds.insert(t.await.unwrap().build));
    }
    assert_eq!(builds, (1..=20).collect());
    let listed =
        store.list_images(&ImageFilter { name: Some("race".into()), ..Default::default() }).await.unwrap();
    assert_eq!(listed.len(), 20);
    let order: Vec<u32> = listed.iter().map(|i| i.build).collect();
    assert_eq!(order, (1..=20).collect::<Vec<_>>());
}

pub async fn image_transitions_follow_the_lifecycle(store: &Store) {
    let img = store.create_image(&image("web", "1.0.0")).await.unwrap();
    let path = [
        (ImageState::Building, None),
        (ImageState::Testing, None),
        (ImageState::Distributing, None),
        (ImageState::Available, None),
        (ImageState::Deprecated, Some("superseded by 1.1.0")),
        (ImageState::Disabled, None),
        (ImageState::Deleted, Some("lifecycle policy")),
    ];
    for (to, reason) in path {
        let after = store.transition(&img.arn, to, reason).await.unwrap();
        assert_eq!(after.state, to);
        let stored = store.get_image_by_arn(&img.arn).await.unwrap();
        assert_eq!(stored.state, to);
        assert_eq!(stored, after);
        assert!(stored.updated_at >= img.created_at);
    }
    let history = store.image_history(&img.arn).await.unwrap();
    let steps: Vec<(Option<ImageState>, ImageState)> = history.iter().map(|h| (h.from, h.to)).collect();
    use ImageState::*;
    assert_eq!(
        steps,
        [
            (None, Pending),
            (Some(Pending), Building),
            (Some(Building), Testing),
            (Some(Testing), Distributing),
            (Some(Distributing), Available),
            (Some(Available), Deprecated),
            (Some(Deprecated), Disabled),
            (Some(Disabled), Deleted),
        ]
    );
    assert_eq!(history[5].reason.as_deref(), Some("superseded by 1.1.0"));
    assert!(history.windows(2).all(|w| w[0].at <= w[1].at));
    // A reason is kept until a later transition gives another.
    let last = store.get_image_by_arn(&img.arn).await.unwrap();
    assert_eq!(last.reason.as_deref(), Some("lifecycle policy"));

    // Stages a build does not have are skipped: BUILDING straight to AVAILABLE.
    let quick = store.create_image(&image("web", "1.0.0")).await.unwrap();
    store.transition(&quick.arn, Building, None).await.unwrap();
    store.transition(&quick.arn, Available, None).await.unwrap();
}

pub async fn image_invalid_transitions_refused(store: &Store) {
    use ImageState::*;
    let img = store.create_image(&image("web", "1.0.0")).await.unwrap();
    let err = store.transition(&img.arn, Available, None).await.unwrap_err();
    match &err {
        StoreError::InvalidTransition { from, to, allowed, .. } => {
            assert_eq!((*from, *to), (Pending, Available));
            assert_eq!(allowed, &[Building, Failed, Cancelled]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("BUILDING, FAILED, CANCELLED"), "{err}");
    // Nothing changed, nothing recorded.
    assert_eq!(store.get_image_by_arn(&img.arn).await.unwrap().state, Pending);
    assert_eq!(store.image_history(&img.arn).await.unwrap().len(), 1);

    // Same state again, and backwards, are refused.
    store.transition(&img.arn, Building, None).await.unwrap();
    for bad in [Building, Pending, Deprecated, Deleted] {
        assert!(
            matches!(store.transition(&img.arn, bad, None).await, Err(StoreError::InvalidTransition { .. })),
            "BUILDING -> {bad}"
        );
    }
    store.transition(&img.arn, Available, None).await.unwrap();
    for bad in [Building, Failed, Cancelled, Pending, Available] {
        assert!(
            matches!(store.transition(&img.arn, bad, None).await, Err(StoreError::InvalidTransition { .. })),
            "AVAILABLE -> {bad}"
        );
    }
    store.transition(&img.arn, Deleted, None).await.unwrap();
    for bad in ImageState::ALL {
        let err = store.transition(&img.arn, bad, None).await.unwrap_err();
        assert!(matches!(&err, StoreError::InvalidTransition { allowed, .. } if allowed.is_empty()));
        assert!(err.to_string().contains("final state"), "{err}");
    }

    // Unknown ARN.
    assert!(matches!(
        store.transition("arn:aws:imagebuilder:local:0:image/x/1.0.0/1", Building, None).await,
        Err(StoreError::ImageNotFound { .. })
    ));
}

pub async fn image_fails_or_cancels_from_every_in_progress_state(store: &Store) {
    use ImageState::*;
    let reach: [&[ImageState]; 5] =
        [&[], &[Building], &[Building, Testing], &[Building, Distributing], &[Building, Integrating]];
    for end in [Failed, Cancelled] {
        for path in reach {
            let img = store.create_image(&image("f", "1.0.0")).await.unwrap();
            for s in path {
                store.transition(&img.arn, *s, None).await.unwrap();
            }
            let out = store.transition(&img.arn, end, Some("step 3 exited with 1")).await.unwrap();
            assert_eq!(out.state, end);
            assert_eq!(out.reason.as_deref(), Some("step 3 exited with 1"));
            // From FAILED/CANCELLED only DELETED.
            assert!(store.transition(&img.arn, Available, None).await.is_err());
            store.transition(&img.arn, Deleted, None).await.unwrap();
        }
    }
}

pub async fn image_concurrent_transitions_one_wins(store: &Store) {
    use ImageState::*;
    for _ in 0..5 {
        let img = store.create_image(&image("c", "1.0.0")).await.unwrap();
        store.transition(&img.arn, Building, None).await.unwrap();
        let (a, b) = (store.clone(), store.clone());
        let (arn_a, arn_b) = (img.arn.clone(), img.arn.clone());
        let ta = tokio::spawn(async move { a.transition(&arn_a, Available, None).await });
        let tb = tokio::spawn(async move { b.transition(&arn_b, Failed, Some("boom")).await });
        let (ra, rb) = (ta.await.unwrap(), tb.await.unwrap());
        assert!(ra.is_ok() != rb.is_ok(), "exactly one wins: {ra:?} {rb:?}");
        let loser = if ra.is_ok() { rb } else { ra };
        assert!(matches!(loser, Err(StoreError::InvalidTransition { .. })));
        assert_eq!(store.image_history(&img.arn).await.unwrap().len(), 3);
    }
}

pub async fn image_get_latest_and_by_build(store: &Store) {
    use ImageState::*;
    let b1 = store.create_image(&image("web", "1.0.0")).await.unwrap();
    let b2 = store.create_image(&image("web", "1.0.0")).await.unwrap();
    let b3 = store.create_image(&image("web", "1.0.0")).await.unwrap();
    let ver = v("1.0.0");
    assert_eq!(store.get_image("web", &ver, None).await.unwrap().arn, b3.arn);
    assert_eq!(store.get_image("web", &ver, Some(1)).await.unwrap().arn, b1.arn);
    // A DELETED build is not "the latest", but can still be read by number.
    store.transition(&b3.arn, Failed, Some("x")).await.unwrap();
    store.transition(&b3.arn, Deleted, None).await.unwrap();
    assert_eq!(store.get_image("web", &ver, None).await.unwrap().arn, b2.arn);
    assert_eq!(store.get_image("web", &ver, Some(3)).await.unwrap().state, Deleted);
    for (name, build) in [("web", Some(9)), ("other", None)] {
        let err = store.get_image(name, &ver, build).await.unwrap_err();
        assert!(matches!(err, StoreError::ImageNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("kiln image list"));
    }
}

pub async fn image_list_filters(store: &Store) {
    use ImageState::*;
    let mut tagged = image("web", "1.0.0");
    tagged.tags = tags(&[("env", "prod"), ("team", "a")]);
    let w1 = store.create_image(&tagged).await.unwrap();
    let w2 = store.create_image(&image("web", "1.0.0")).await.unwrap();
    let w3 = store.create_image(&image("web", "1.1.0")).await.unwrap();
    let mut staging = image("db", "1.0.0");
    staging.tags = tags(&[("env", "staging")]);
    let d1 = store.create_image(&staging).await.unwrap();
    store.transition(&w2.arn, Building, None).await.unwrap();
    store.transition(&w2.arn, Available, None).await.unwrap();
    store.transition(&w3.arn, Cancelled, None).await.unwrap();
    store.transition(&w3.arn, Deleted, None).await.unwrap();

    let arns = |images: Vec<kiln_store::Image>| images.into_iter().map(|i| i.arn).collect::<Vec<_>>();
    let all = store.list_images(&ImageFilter::default()).await.unwrap();
    assert_eq!(arns(all), [d1.arn.clone(), w1.arn.clone(), w2.arn.clone()]);
    let f =
        |name: Option<&str>, version: Option<&str>, state, tag: Option<(&str, Option<&str>)>| ImageFilter {
            name: name.map(Into::into),
            version: version.map(v),
            state,
            tags: tag.map(|(k, v)| (k.to_string(), v.map(Into::into))).into_iter().collect(),
            include_deleted: false,
        };
    let cases = [
        (f(Some("web"), None, None, None), vec![&w1, &w2]),
        (f(Some("web"), Some("1.1.0"), None, None), vec![]),
        (f(Some("web"), Some("1.1.0"), Some(Deleted), None), vec![&w3]),
        (f(None, None, Some(Available), None), vec![&w2]),
        (f(None, None, Some(Pending), None), vec![&d1, &w1]),
        (f(None, None, None, Some(("env", None))), vec![&d1, &w1]),
        (f(None, None, None, Some(("env", Some("prod")))), vec![&w1]),
        (f(Some("db"), None, None, Some(("env", Some("prod")))), vec![]),
        (f(None, None, None, Some(("missing", None))), vec![]),
    ];
    for (filter, want) in cases {
        let got = arns(store.list_images(&filter).await.unwrap());
        let want: Vec<String> = want.into_iter().map(|i| i.arn.clone()).collect();
        assert_eq!(got, want, "{filter:?}");
    }
}

pub async fn image_manifest_and_tags(store: &Store) {
    let img = store.create_image(&image("web", "1.0.0")).await.unwrap();
    assert_eq!(img.manifest, None);
    let manifest = json!({"kilnVersion": "0.1.0", "artifacts": [{"sha256": "00"}]});
    store.set_manifest(&img.arn, "/var/lib/kiln/out/web/1.0.0/1", &manifest).await.unwrap();
    let got = store.get_image_by_arn(&img.arn).await.unwrap();
    assert_eq!(got.manifest, Some(manifest.clone()));
    assert_eq!(got.output_location.as_deref(), Some("/var/lib/kiln/out/web/1.0.0/1"));
    assert_eq!(got.recipe, img.recipe);

    let t = tags(&[("a", "1")]);
    store.set_image_tags(&img.arn, &t).await.unwrap();
    assert_eq!(store.get_image_by_arn(&img.arn).await.unwrap().tags, t);

    let missing = "arn:aws:imagebuilder:local:0:image/none/1.0.0/1";
    assert!(matches!(
        store.set_manifest(missing, "x", &manifest).await,
        Err(StoreError::ImageNotFound { .. })
    ));
    assert!(matches!(store.set_image_tags(missing, &t).await, Err(StoreError::ImageNotFound { .. })));
    assert!(matches!(store.image_history(missing).await, Err(StoreError::ImageNotFound { .. })));
}

pub async fn fail_in_progress_recovers_interrupted_builds(store: &Store) {
    use ImageState::*;
    let mut by_state = Vec::new();
    for path in [
        &[][..],
        &[Building],
        &[Building, Testing],
        &[Building, Distributing],
        &[Building, Integrating],
        &[Building, Available],
        &[Failed],
        &[Cancelled],
    ] {
        let img = store.create_image(&image("r", "1.0.0")).await.unwrap();
        for s in path {
            store.transition(&img.arn, *s, None).await.unwrap();
        }
        let state = store.get_image_by_arn(&img.arn).await.unwrap().state;
        by_state.push((img.arn, state));
    }
    let failed = store.fail_in_progress("kiln restarted while the build was running").await.unwrap();
    let failed: HashSet<String> = failed.into_iter().collect();
    assert_eq!(failed.len(), 5);
    for (arn, before) in &by_state {
        let now = store.get_image_by_arn(arn).await.unwrap();
        if before.is_in_progress() {
            assert!(failed.contains(arn));
            assert_eq!(now.state, Failed);
            assert_eq!(now.reason.as_deref(), Some("kiln restarted while the build was running"));
            let last = store.image_history(arn).await.unwrap().pop().unwrap();
            assert_eq!((last.from, last.to), (Some(*before), Failed));
        } else {
            assert!(!failed.contains(arn));
            assert_eq!(now.state, *before);
        }
    }
    assert!(store.fail_in_progress("again").await.unwrap().is_empty());
}

// ---- jobs --------------------------------------------------------------------------

const LEASE: Duration = Duration::from_secs(60);

pub async fn job_enqueue_claim_complete(store: &Store) {
    let payload = json!({"pipeline": "web", "execution": 7});
    let id = store.enqueue("pipeline-execution", &payload).await.unwrap();
    assert_eq!(store.queue_depth().await.unwrap(), 1);
    let queued = store.get_job(id).await.unwrap();
    assert_eq!(queued.state, JobState::Queued);
    assert_eq!(queued.attempts, 0);

    let job = store.claim("w1", LEASE).await.unwrap().expect("a job");
    assert_eq!(job.id, id);
    assert_eq!(job.kind, "pipeline-execution");
    assert_eq!(job.payload, payload);
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.worker_id.as_deref(), Some("w1"));
    assert!(job.lease_expires_at.unwrap() > job.updated_at);
    assert_eq!(store.queue_depth().await.unwrap(), 0);
    assert!(store.claim("w2", LEASE).await.unwrap().is_none());

    assert!(!store.heartbeat(id, "w1", LEASE).await.unwrap());
    // Another worker cannot finish or renew it.
    assert!(matches!(store.complete(id, "w2").await, Err(StoreError::LeaseLost { .. })));
    assert!(matches!(store.heartbeat(id, "w2", LEASE).await, Err(StoreError::LeaseLost { .. })));
    store.complete(id, "w1").await.unwrap();
    let done = store.get_job(id).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.lease_expires_at, None);
    // Finished jobs cannot be finished again.
    assert!(matches!(store.complete(id, "w1").await, Err(StoreError::LeaseLost { .. })));
    assert!(matches!(store.complete(9999, "w1").await, Err(StoreError::JobNotFound { id: 9999 })));
    assert!(matches!(store.heartbeat(9999, "w1", LEASE).await, Err(StoreError::JobNotFound { .. })));
}

pub async fn job_fail_records_error(store: &Store) {
    let id = store.enqueue("k", &json!(null)).await.unwrap();
    let job = store.claim("w", LEASE).await.unwrap().unwrap();
    store.fail(job.id, "w", "disk full").await.unwrap();
    let j = store.get_job(id).await.unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.error.as_deref(), Some("disk full"));
    assert!(store.claim("w", LEASE).await.unwrap().is_none());
    assert_eq!(store.list_jobs(Some(JobState::Failed)).await.unwrap().len(), 1);
    assert!(store.list_jobs(Some(JobState::Queued)).await.unwrap().is_empty());
}

pub async fn job_claims_oldest_first(store: &Store) {
    assert!(store.claim("w", LEASE).await.unwrap().is_none());
    let ids: Vec<i64> = {
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(store.enqueue("k", &json!({"i": i})).await.unwrap());
        }
        ids
    };
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    for (i, want) in ids.iter().enumerate() {
        let job = store.claim("w", LEASE).await.unwrap().unwrap();
        assert_eq!(job.id, *want);
        assert_eq!(job.payload, json!({"i": i}));
    }
    assert!(store.claim("w", LEASE).await.unwrap().is_none());
    assert_eq!(store.list_jobs(None).await.unwrap().len(), 5);
}

pub async fn job_bad_requests_refused(store: &Store) {
    assert!(matches!(store.enqueue(" ", &json!({})).await, Err(StoreError::InvalidJob { .. })));
    let zero = NewJob { kind: "k".into(), payload: json!({}), max_attempts: 0 };
    assert!(matches!(store.enqueue_job(&zero).await, Err(StoreError::InvalidJob { .. })));
    assert!(matches!(store.get_job(42).await, Err(StoreError::JobNotFound { id: 42 })));
    assert!(store.list_jobs(None).await.unwrap().is_empty());
}

pub async fn job_concurrent_claims_never_share(store: &Store) {
    const JOBS: usize = 60;
    for i in 0..JOBS {
        store.enqueue("k", &json!(i)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..6 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut mine = Vec::new();
            while let Some(job) = s.claim(&worker, LEASE).await.unwrap() {
                assert_eq!(job.worker_id.as_deref(), Some(worker.as_str()));
                mine.push(job.id);
                tokio::task::yield_now().await;
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(seen.insert(id), "job {id} claimed twice");
        }
    }
    assert_eq!(seen.len(), JOBS);
    assert_eq!(store.list_jobs(Some(JobState::Running)).await.unwrap().len(), JOBS);
}

pub async fn job_expired_lease_is_reclaimed(store: &Store) {
    let id = store.enqueue("k", &json!({})).await.unwrap();
    let first = store.claim("dead", Duration::from_millis(100)).await.unwrap().unwrap();
    assert!(store.claim("live", LEASE).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = store.claim("live", LEASE).await.unwrap().unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(second.attempts, 2);
    assert_eq!(second.worker_id.as_deref(), Some("live"));
    // The worker that lost its lease learns it, and cannot finish the job.
    let err = store.heartbeat(id, "dead", LEASE).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }));
    assert!(err.to_string().contains("stop working on it"), "{err}");
    assert!(matches!(store.fail(id, "dead", "x").await, Err(StoreError::LeaseLost { .. })));
    store.complete(id, "live").await.unwrap();
}

pub async fn job_heartbeat_extends_lease(store: &Store) {
    store.enqueue("k", &json!({})).await.unwrap();
    let job = store.claim("w1", Duration::from_millis(300)).await.unwrap().unwrap();
    store.heartbeat(job.id, "w1", LEASE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(store.claim("w2", LEASE).await.unwrap().is_none());
    let j = store.get_job(job.id).await.unwrap();
    assert!(j.lease_expires_at.unwrap() > job.lease_expires_at.unwrap());
}

pub async fn job_exhausted_attempts_fail(store: &Store) {
    let id =
        store.enqueue_job(&NewJob { kind: "k".into(), payload: json!({}), max_attempts: 2 }).await.unwrap();
    let short = Duration::from_millis(50);
    assert_eq!(store.claim("a", short).await.unwrap().unwrap().attempts, 1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(store.claim("b", short).await.unwrap().unwrap().attempts, 2);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(store.claim("c", short).await.unwrap().is_none());
    let j = store.get_job(id).await.unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert!(j.error.unwrap().contains("lease"));
}

pub async fn job_cancel_queued_and_running(store: &Store) {
    let queued = store.enqueue("k", &json!(1)).await.unwrap();
    let running = store.enqueue("k", &json!(2)).await.unwrap();
    assert_eq!(store.cancel_job(queued).await.unwrap(), JobState::Cancelled);
    let job = store.claim("w", LEASE).await.unwrap().unwrap();
    assert_eq!(job.id, running, "a cancelled job is never claimed");
    assert!(!store.heartbeat(running, "w", LEASE).await.unwrap());
    assert_eq!(store.cancel_job(running).await.unwrap(), JobState::Running);
    assert!(store.get_job(running).await.unwrap().cancel_requested);
    assert!(store.heartbeat(running, "w", LEASE).await.unwrap());
    store.mark_cancelled(running, "w").await.unwrap();
    assert_eq!(store.get_job(running).await.unwrap().state, JobState::Cancelled);
    // Finished jobs stay as they are.
    assert_eq!(store.cancel_job(running).await.unwrap(), JobState::Cancelled);
    assert!(matches!(store.cancel_job(777).await, Err(StoreError::JobNotFound { .. })));

    // A running job whose worker died after a cancel request ends CANCELLED, not re-run.
    let orphan = store.enqueue("k", &json!(3)).await.unwrap();
    store.claim("dead", Duration::from_millis(50)).await.unwrap().unwrap();
    store.cancel_job(orphan).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(store.claim("w", LEASE).await.unwrap().is_none());
    assert_eq!(store.get_job(orphan).await.unwrap().state, JobState::Cancelled);
}

// ---- layers ------------------------------------------------------------------------

pub async fn layer_index_touch_prune_remove(store: &Store) {
    let a = store.put_layer("sha256:aaa", "/cache/layers/aaa", 1000).await.unwrap();
    assert_eq!(a.created_at, a.last_used_at);
    store.put_layer("sha256:bbb", "/cache/layers/bbb", 2000).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.touch_layer("sha256:bbb").await.unwrap();

    let unused = store.list_layers_unused_since(cutoff).await.unwrap();
    assert_eq!(unused.len(), 1);
    assert_eq!(unused[0].key, "sha256:aaa");
    assert_eq!(unused[0].size, 1000);
    assert_eq!(unused[0].path, "/cache/layers/aaa");

    let all = store.list_layers().await.unwrap();
    let keys: Vec<&str> = all.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(keys, ["sha256:aaa", "sha256:bbb"], "least recently used first");
    let b = store.get_layer("sha256:bbb").await.unwrap().unwrap();
    assert!(b.last_used_at > b.created_at);

    // Re-recording a key updates it and keeps its creation time.
    let a2 = store.put_layer("sha256:aaa", "/cache/layers/aaa2", 1500).await.unwrap();
    assert_eq!(a2.created_at, a.created_at);
    assert_eq!((a2.path.as_str(), a2.size), ("/cache/layers/aaa2", 1500));
    assert!(store.list_layers_unused_since(cutoff).await.unwrap().is_empty());

    assert!(store.remove_layer("sha256:aaa").await.unwrap());
    assert!(!store.remove_layer("sha256:aaa").await.unwrap());
    assert_eq!(store.get_layer("sha256:aaa").await.unwrap(), None);
    assert!(matches!(store.touch_layer("sha256:aaa").await, Err(StoreError::LayerNotFound { .. })));
    assert_eq!(store.list_layers().await.unwrap().len(), 1);
}

pub async fn usage_is_recorded_per_image_in_order(store: &Store) {
    let a = "arn:aws:imagebuilder:local:000000000000:image/a/1.0.0/1";
    let b = "arn:aws:imagebuilder:local:000000000000:image/b/1.0.0/1";
    let first = store.record_usage(a, "launch", "000000000000", &json!({ "sshPort": 2222 })).await.unwrap();
    let second = store.record_usage(b, "launch", "111111111111", &json!({})).await.unwrap();
    let third = store.record_usage(a, "launch", "111111111111", &json!({ "detached": true })).await.unwrap();
    assert!(first < second && second < third);
    let of_a = store.list_usage(Some(a)).await.unwrap();
    assert_eq!(of_a.iter().map(|e| e.id).collect::<Vec<_>>(), [first, third]);
    assert_eq!(of_a[0].details["sshPort"], 2222);
    assert!(of_a.iter().all(|e| e.kind == "launch" && e.image_arn == a));
    assert_eq!(store.list_usage(None).await.unwrap().len(), 3);
    assert!(store.list_usage(Some("arn:none")).await.unwrap().is_empty());
    assert_eq!(of_a[1].account, "111111111111");

    // The summary: one row per image and account, with the count and the last time.
    store.record_usage(a, "launch", "111111111111", &json!({})).await.unwrap();
    store.record_usage(a, "pull", "111111111111", &json!({})).await.unwrap();
    let summary = store.usage_summary(Some(a), "launch").await.unwrap();
    let rows: Vec<(&str, u64)> = summary.iter().map(|s| (s.account.as_str(), s.count)).collect();
    assert_eq!(rows, [("000000000000", 1), ("111111111111", 2)]);
    let last_of_111 = store.list_usage(Some(a)).await.unwrap().into_iter().rfind(|e| e.kind == "launch");
    assert_eq!(Some(summary[1].last_at), last_of_111.map(|e| e.at));
    assert_eq!(store.usage_summary(None, "launch").await.unwrap().len(), 3);
}

pub async fn launch_permissions_and_region_names_are_kept_per_image(store: &Store) {
    let img = store.create_image(&image("shared", "1.0.0")).await.unwrap();
    assert!(store.launch_permissions(&img.arn).await.unwrap().is_empty());
    let grant = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    store.add_launch_permissions(&img.arn, &grant(&["222222222222", "111111111111"])).await.unwrap();
    // Granting again is not an error and adds nothing.
    store.add_launch_permissions(&img.arn, &grant(&["111111111111", "all"])).await.unwrap();
    assert_eq!(store.launch_permissions(&img.arn).await.unwrap(), ["111111111111", "222222222222", "all"]);
    assert_eq!(store.remove_launch_permissions(&img.arn, &grant(&["all", "333333333333"])).await.unwrap(), 1);
    assert_eq!(store.launch_permissions(&img.arn).await.unwrap(), ["111111111111", "222222222222"]);
    assert!(matches!(
        store.add_launch_permissions(&img.arn, &grant(&["everyone"])).await,
        Err(StoreError::InvalidInput { .. })
    ));
    assert!(matches!(
        store.add_launch_permissions("arn:none", &grant(&["all"])).await,
        Err(StoreError::ImageNotFound { .. })
    ));

    store.set_image_region_name(&img.arn, "eu", "web-1").await.unwrap();
    store.set_image_region_name(&img.arn, "eu", "web-2").await.unwrap();
    store.set_image_region_name(&img.arn, "ca", "web-ca").await.unwrap();
    assert_eq!(
        store.image_region_names(&img.arn).await.unwrap(),
        [("ca".to_string(), "web-ca".to_string()), ("eu".to_string(), "web-2".to_string())]
    );
    assert!(matches!(
        store.set_image_region_name("arn:none", "eu", "x").await,
        Err(StoreError::ImageNotFound { .. })
    ));
}

pub async fn list_images_matches_every_tag_and_can_include_deleted(store: &Store) {
    let mut a = image("t", "1.0.0");
    a.tags = tags(&[("env", "prod"), ("team", "web")]);
    let a = store.create_image(&a).await.unwrap();
    let mut b = image("t", "1.0.0");
    b.tags = tags(&[("env", "prod")]);
    let b = store.create_image(&b).await.unwrap();
    let f = |t: &[(&str, Option<&str>)]| ImageFilter {
        tags: t.iter().map(|(k, v)| (k.to_string(), v.map(String::from))).collect(),
        ..Default::default()
    };
    let arns = |images: Vec<kiln_store::Image>| images.into_iter().map(|i| i.arn).collect::<Vec<_>>();
    assert_eq!(
        arns(store.list_images(&f(&[("env", Some("prod"))])).await.unwrap()),
        [a.arn.clone(), b.arn.clone()]
    );
    assert_eq!(
        arns(store.list_images(&f(&[("env", Some("prod")), ("team", None)])).await.unwrap()),
        std::slice::from_ref(&a.arn)
    );
    assert!(store.list_images(&f(&[("env", Some("dev"))])).await.unwrap().is_empty());
    store.transition(&b.arn, ImageState::Cancelled, None).await.unwrap();
    store.transition(&b.arn, ImageState::Deleted, Some("lifecycle policy p")).await.unwrap();
    assert_eq!(arns(store.list_images(&ImageFilter::default()).await.unwrap()), std::slice::from_ref(&a.arn));
    let all = ImageFilter { include_deleted: true, ..Default::default() };
    assert_eq!(arns(store.list_images(&all).await.unwrap()), [a.arn.clone(), b.arn.clone()]);
}

pub async fn image_output_location_is_recorded_before_the_manifest(store: &Store) {
    let img = store
        .create_image(&NewImage {
            name: "early".into(),
            version: v("1.0.0"),
            region: "local".into(),
            account: "000000000000".into(),
            recipe: json!({}),
            tags: Tags::new(),
        })
        .await
        .unwrap();
    assert_eq!(img.output_location, None);
    store.set_output_location(&img.arn, "/var/lib/kiln/images/early/1.0.0/1").await.unwrap();
    let got = store.get_image_by_arn(&img.arn).await.unwrap();
    assert_eq!(got.output_location.as_deref(), Some("/var/lib/kiln/images/early/1.0.0/1"));
    assert_eq!(got.manifest, None);
    assert!(matches!(
        store.set_output_location("arn:aws:imagebuilder:local:000000000000:image/none/1.0.0/1", "/x").await,
        Err(StoreError::ImageNotFound { .. })
    ));
}

// ---- scans -------------------------------------------------------------------------

/// An AVAILABLE image (built, so its inventory and scans can be kept).
async fn available(store: &Store, name: &str) -> String {
    let img = store.create_image(&image(name, "1.0.0")).await.unwrap();
    store.transition(&img.arn, ImageState::Building, None).await.unwrap();
    store.transition(&img.arn, ImageState::Available, None).await.unwrap();
    img.arn
}

fn finding(id: &str, package: &str, severity: &str, fixed: bool) -> NewScanFinding {
    NewScanFinding {
        vulnerability_id: id.into(),
        package: package.into(),
        severity: severity.into(),
        fix_available: fixed,
        body: json!({"title": format!("{id} - {package}"), "severity": severity}),
    }
}

fn scan_of(arn: &str, trigger: ScanTrigger, findings: Vec<NewScanFinding>) -> NewScan {
    NewScan {
        image_arn: arn.into(),
        trigger,
        feeds: json!([{"name": "debian-tracker"}]),
        summary: json!({"total": findings.len()}),
        findings,
    }
}

fn keys(findings: &[ScanFinding]) -> Vec<(String, String)> {
    findings.iter().map(|f| (f.vulnerability_id.clone(), f.package.clone())).collect()
}

fn pair(id: &str, package: &str) -> (String, String) {
    (id.to_string(), package.to_string())
}

pub async fn scan_inventory_is_kept_and_replaced(store: &Store) {
    let arn = available(store, "inv").await;
    assert_eq!(store.get_inventory(&arn).await.unwrap(), None);
    let first = json!({"os": {"id": "debian"}, "packages": [{"name": "bash", "version": "5.2.15-2+b2"}]});
    store.put_inventory(&arn, &first).await.unwrap();
    assert_eq!(store.get_inventory(&arn).await.unwrap(), Some(first));
    let second = json!({"os": {"id": "debian"}, "packages": []});
    store.put_inventory(&arn, &second).await.unwrap();
    assert_eq!(store.get_inventory(&arn).await.unwrap(), Some(second));
    let missing = "arn:aws:imagebuilder:local:000000000000:image/none/1.0.0/1";
    let err = store.put_inventory(missing, &json!({})).await.unwrap_err();
    assert!(matches!(err, StoreError::ImageNotFound { .. }), "{err:?}");
    assert_eq!(store.get_inventory(missing).await.unwrap(), None);
}

pub async fn scan_findings_are_new_only_against_the_previous_scan(store: &Store) {
    let arn = available(store, "scanned").await;
    assert_eq!(store.latest_scan(&arn).await.unwrap(), None);
    let first = store
        .record_scan(&scan_of(
            &arn,
            ScanTrigger::Build,
            vec![finding("CVE-1", "bash", "LOW", false), finding("CVE-2", "libc6", "HIGH", true)],
        ))
        .await
        .unwrap();
    assert_eq!(first.trigger, ScanTrigger::Build);
    assert!(first.findings.iter().all(|f| f.is_new), "an image's first scan has only new findings");
    assert!(first.findings.iter().all(|f| f.first_seen_at == first.scanned_at));
    tokio::time::sleep(Duration::from_millis(5)).await;

    // CVE-1 stays, CVE-2 is gone, CVE-3 appears, and CVE-1 in another package is new too.
    let second = store
        .record_scan(&scan_of(
            &arn,
            ScanTrigger::Rescan,
            vec![
                finding("CVE-1", "bash", "LOW", false),
                finding("CVE-3", "openssl", "CRITICAL", true),
                finding("CVE-1", "bash-static", "LOW", false),
            ],
        ))
        .await
        .unwrap();
    assert!(second.id > first.id);
    assert!(second.scanned_at > first.scanned_at);
    assert_eq!(
        keys(&second.new_findings().cloned().collect::<Vec<_>>()),
        [pair("CVE-3", "openssl"), pair("CVE-1", "bash-static")]
    );
    let kept = &second.findings[0];
    assert!(!kept.is_new);
    assert_eq!(kept.first_seen_at, first.scanned_at, "first seen carries forward");
    assert_eq!(second.findings[1].first_seen_at, second.scanned_at);

    // What was recorded reads back the same, bodies included.
    let latest = store.latest_scan(&arn).await.unwrap().unwrap();
    assert_eq!(latest, second);
    assert_eq!(latest.findings[1].body["title"], "CVE-3 - openssl");
    assert_eq!(latest.feeds, json!([{"name": "debian-tracker"}]));
    assert_eq!(latest.trigger, ScanTrigger::Rescan);

    // Compared with the previous scan only: CVE-2 came back after one scan without it.
    let third = store
        .record_scan(&scan_of(&arn, ScanTrigger::Rescan, vec![finding("CVE-2", "libc6", "HIGH", true)]))
        .await
        .unwrap();
    assert!(third.findings[0].is_new);
    // An empty scan is a scan: it has no findings, and the next one compares with it.
    let empty = store.record_scan(&scan_of(&arn, ScanTrigger::Rescan, vec![])).await.unwrap();
    assert!(empty.findings.is_empty());
    assert_eq!(store.latest_scan(&arn).await.unwrap().unwrap().id, empty.id);

    // Scans of another image do not count as this image's previous scan.
    let other = available(store, "other").await;
    let o = store
        .record_scan(&scan_of(&other, ScanTrigger::Build, vec![finding("CVE-1", "bash", "LOW", false)]))
        .await
        .unwrap();
    assert!(o.findings[0].is_new);

    let missing = "arn:aws:imagebuilder:local:000000000000:image/none/1.0.0/1";
    let err = store.record_scan(&scan_of(missing, ScanTrigger::Build, vec![])).await.unwrap_err();
    assert!(matches!(err, StoreError::ImageNotFound { .. }), "{err:?}");
    assert_eq!(store.latest_scan(missing).await.unwrap(), None);
}

pub async fn scan_findings_list_filters_and_pages(store: &Store) {
    let a = available(store, "a").await;
    let b = available(store, "b").await;
    // a's first scan is superseded: only the latest scan of each image is listed.
    store
        .record_scan(&scan_of(&a, ScanTrigger::Build, vec![finding("CVE-OLD", "zlib1g", "HIGH", true)]))
        .await
        .unwrap();
    store
        .record_scan(&scan_of(
            &a,
            ScanTrigger::Rescan,
            vec![finding("CVE-1", "bash", "LOW", false), finding("CVE-2", "libc6", "HIGH", true)],
        ))
        .await
        .unwrap();
    store
        .record_scan(&scan_of(
            &b,
            ScanTrigger::Build,
            vec![finding("CVE-2", "libc6", "HIGH", true), finding("CVE-3", "curl", "MEDIUM", true)],
        ))
        .await
        .unwrap();
    let list = |f: FindingFilter| async move { store.list_scan_findings(&f).await.unwrap() };
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let all = list(FindingFilter::default()).await;
    assert_eq!(
        keys(&all),
        [pair("CVE-1", "bash"), pair("CVE-2", "libc6"), pair("CVE-2", "libc6"), pair("CVE-3", "curl")]
    );
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ordered by id");
    assert_eq!(all[0].image_arn, a);
    assert_eq!(all[3].image_arn, b);

    let by_image = list(FindingFilter { image_arns: vec![b.clone()], ..Default::default() }).await;
    assert_eq!(keys(&by_image), [pair("CVE-2", "libc6"), pair("CVE-3", "curl")]);
    let by_id = list(FindingFilter { vulnerability_ids: strings(&["CVE-2"]), ..Default::default() }).await;
    let arns: Vec<&str> = by_id.iter().map(|f| f.image_arn.as_str()).collect();
    assert_eq!(arns, [a.as_str(), b.as_str()]);
    let old = list(FindingFilter { vulnerability_ids: strings(&["CVE-OLD"]), ..Default::default() }).await;
    assert!(old.is_empty(), "findings of a superseded scan are not listed");
    let by_sev = list(FindingFilter { severities: strings(&["MEDIUM", "LOW"]), ..Default::default() }).await;
    assert_eq!(keys(&by_sev), [pair("CVE-1", "bash"), pair("CVE-3", "curl")]);
    let combined = list(FindingFilter {
        image_arns: vec![a.clone()],
        severities: strings(&["HIGH"]),
        vulnerability_ids: strings(&["CVE-2", "CVE-3"]),
        ..Default::default()
    })
    .await;
    assert_eq!(keys(&combined), [pair("CVE-2", "libc6")]);
    assert_eq!(combined[0].image_arn, a);
    let none = list(FindingFilter { severities: strings(&["high"]), ..Default::default() }).await;
    assert!(none.is_empty(), "filter values are case-sensitive, as Image Builder's are");

    // Pages of two, continuing after the last id of the previous page.
    let page1 = list(FindingFilter { limit: Some(2), ..Default::default() }).await;
    let page2 =
        list(FindingFilter { limit: Some(2), after: page1.last().map(|f| f.id), ..Default::default() }).await;
    let page3 =
        list(FindingFilter { limit: Some(2), after: page2.last().map(|f| f.id), ..Default::default() }).await;
    assert_eq!(page1.len(), 2);
    assert_eq!(page2.len(), 2);
    assert!(page3.is_empty());
    let paged: Vec<i64> = page1.iter().chain(&page2).map(|f| f.id).collect();
    assert_eq!(paged, all.iter().map(|f| f.id).collect::<Vec<_>>());
    let filtered_page = list(FindingFilter {
        severities: strings(&["HIGH"]),
        after: Some(all[1].id),
        limit: Some(5),
        ..Default::default()
    })
    .await;
    assert_eq!(filtered_page.len(), 1);
    assert_eq!(filtered_page[0].image_arn, b);
}

pub async fn scan_rebuild_marks_set_replace_clear_and_list(store: &Store) {
    let a = available(store, "a").await;
    let b = available(store, "b").await;
    assert_eq!(store.needs_rebuild(&a).await.unwrap(), None);
    assert!(store.list_needing_rebuild().await.unwrap().is_empty());

    store.mark_needs_rebuild(&a, "1 fixable finding: CVE-1").await.unwrap();
    store.mark_needs_rebuild(&b, "2 fixable findings").await.unwrap();
    let mark = store.needs_rebuild(&a).await.unwrap().unwrap();
    assert_eq!(mark.reason, "1 fixable finding: CVE-1");
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.mark_needs_rebuild(&a, "3 fixable findings").await.unwrap();
    let again = store.needs_rebuild(&a).await.unwrap().unwrap();
    assert_eq!(again.reason, "3 fixable findings");
    assert!(again.marked_at > mark.marked_at);

    let listed: Vec<(String, String)> =
        store.list_needing_rebuild().await.unwrap().into_iter().map(|m| (m.image_arn, m.reason)).collect();
    let mut want =
        vec![(a.clone(), "3 fixable findings".to_string()), (b.clone(), "2 fixable findings".to_string())];
    want.sort();
    assert_eq!(listed, want);

    // Only AVAILABLE images are listed: a deprecated one is not rebuilt by the scheduler.
    store.transition(&b, ImageState::Deprecated, None).await.unwrap();
    let listed: Vec<String> =
        store.list_needing_rebuild().await.unwrap().into_iter().map(|m| m.image_arn).collect();
    assert_eq!(listed, [a.as_str()]);
    assert!(store.needs_rebuild(&b).await.unwrap().is_some(), "the mark itself stays");

    assert!(store.clear_needs_rebuild(&a).await.unwrap());
    assert!(!store.clear_needs_rebuild(&a).await.unwrap());
    assert_eq!(store.needs_rebuild(&a).await.unwrap(), None);
    assert!(store.list_needing_rebuild().await.unwrap().is_empty());

    let missing = "arn:aws:imagebuilder:local:000000000000:image/none/1.0.0/1";
    let err = store.mark_needs_rebuild(missing, "x").await.unwrap_err();
    assert!(matches!(err, StoreError::ImageNotFound { .. }), "{err:?}");
}

pub async fn image_regions_record_the_last_outcome_per_region(store: &Store) {
    let img = store.create_image(&image("dist", "1.0.0")).await.unwrap();
    assert!(store.image_regions(&img.arn).await.unwrap().is_empty());
    store
        .set_image_region(&img.arn, "eu", "file:///s/eu", "FAILED", Some("store gone"), 0, 100)
        .await
        .unwrap();
    store.set_image_region(&img.arn, "us", "file:///s/us", "AVAILABLE", None, 100, 100).await.unwrap();
    store.set_image_region(&img.arn, "eu", "file:///s/eu", "AVAILABLE", None, 40, 100).await.unwrap();
    let regions = store.image_regions(&img.arn).await.unwrap();
    assert_eq!(
        regions.iter().map(|r| (r.region.as_str(), r.state.as_str())).collect::<Vec<_>>(),
        [("eu", "AVAILABLE"), ("us", "AVAILABLE")]
    );
    assert_eq!(
        (regions[0].uploaded_bytes, regions[0].reason.clone()),
        (40, None),
        "the rerun replaced the failure"
    );
    assert!(store.set_image_region(&img.arn, "eu", "x", "HALF", None, 0, 0).await.is_err());
    let missing = "arn:aws:imagebuilder:local:000000000000:image/none/1.0.0/1";
    assert!(matches!(
        store.set_image_region(missing, "eu", "x", "AVAILABLE", None, 0, 0).await,
        Err(StoreError::ImageNotFound { .. })
    ));
}

pub async fn executions_with_and_without_a_pipeline(store: &Store) {
    let a = store.create_image(&image("a", "1.0.0")).await.unwrap();
    let b = store.create_image(&image("b", "1.0.0")).await.unwrap();
    let pipeline = "arn:aws:imagebuilder:local:000000000000:image-pipeline/p";
    store.record_execution(&a.arn, Some(pipeline), 1, &json!({"x": 1})).await.unwrap();
    store.record_execution(&b.arn, None, 2, &json!({})).await.unwrap();
    let of_a = store.execution_of(&a.arn).await.unwrap().unwrap();
    assert_eq!((of_a.pipeline_arn.as_deref(), of_a.job_id), (Some(pipeline), 1));
    assert_eq!(of_a.snapshot, json!({"x": 1}));
    let of_b = store.execution_of(&b.arn).await.unwrap().unwrap();
    assert_eq!((of_b.pipeline_arn, of_b.job_id), (None, 2));
    let listed = store.pipeline_executions(pipeline).await.unwrap();
    assert_eq!(listed.iter().map(|e| e.image_arn.as_str()).collect::<Vec<_>>(), [a.arn.as_str()]);
}

pub async fn a_role_has_one_holder_until_released_or_its_term_runs_out(store: &Store) {
    use std::time::Duration;
    let long = Duration::from_secs(60);
    assert!(store.hold_role("scheduler", "serve-a", long).await.unwrap(), "a free role is taken");
    assert!(!store.hold_role("scheduler", "serve-b", long).await.unwrap(), "one holder at a time");
    assert!(store.hold_role("scheduler", "serve-a", long).await.unwrap(), "the holder renews");
    assert!(store.hold_role("follower", "serve-b", long).await.unwrap(), "roles are separate");
    // Released: the other process takes it at once.
    store.release_role("scheduler", "serve-b").await.unwrap();
    assert!(!store.hold_role("scheduler", "serve-b", long).await.unwrap(), "only the holder releases");
    store.release_role("scheduler", "serve-a").await.unwrap();
    assert!(store.hold_role("scheduler", "serve-b", Duration::from_millis(50)).await.unwrap());
    // A holder that stops renewing loses the role once its term has run out.
    assert!(!store.hold_role("scheduler", "serve-a", long).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(store.hold_role("scheduler", "serve-a", long).await.unwrap(), "the dead holder's term ran out");
    assert!(!store.hold_role("scheduler", "serve-b", long).await.unwrap());
}

pub async fn lifecycle_executions_start_finish_once_list_and_delete(store: &Store) {
    use kiln_store::LifecycleExecutionState::{Failed, Running, Success};
    let policy = "arn:aws:imagebuilder:local:000000000000:lifecycle-policy/p";
    let t0 = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    let t1 = t0 + time::Duration::hours(1);
    store.start_lifecycle_execution("lce-1", policy, "000000000000", t0).await.unwrap();
    store.start_lifecycle_execution("lce-2", policy, "000000000000", t1).await.unwrap();
    store.start_lifecycle_execution("lce-3", "other", "111122223333", t1).await.unwrap();
    let running = store.lifecycle_execution("lce-1").await.unwrap().unwrap();
    assert_eq!((running.state, running.ended_at, running.resources.clone()), (Running, None, json!([])));
    let resources = json!([{"resourceId": "arn:x"}]);
    assert!(store.finish_lifecycle_execution("lce-1", Success, None, &resources, t1).await.unwrap());
    // An execution ends once.
    assert!(!store.finish_lifecycle_execution("lce-1", Failed, Some("late"), &json!([]), t1).await.unwrap());
    let done = store.lifecycle_execution("lce-1").await.unwrap().unwrap();
    assert_eq!(
        (done.state, done.reason, done.ended_at, done.resources),
        (Success, None, Some(t1), resources)
    );
    assert_eq!(done.started_at, t0);
    let listed: Vec<String> =
        store.lifecycle_executions(policy).await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(listed, ["lce-2", "lce-1"], "newest first, only the policy's");
    // A restarted server fails what its predecessor left running, and only that.
    assert_eq!(store.fail_running_lifecycle_executions("stopped", t1).await.unwrap(), 2);
    let interrupted = store.lifecycle_execution("lce-2").await.unwrap().unwrap();
    assert_eq!((interrupted.state, interrupted.reason.as_deref()), (Failed, Some("stopped")));
    assert_eq!(store.lifecycle_execution("lce-1").await.unwrap().unwrap().state, Success);
    assert_eq!(store.delete_lifecycle_executions(policy).await.unwrap(), 2);
    assert!(store.lifecycle_execution("lce-1").await.unwrap().is_none());
    assert!(store.lifecycle_execution("lce-3").await.unwrap().is_some());
}

pub async fn api_resource_conditional_update_refuses_a_changed_resource(store: &Store) {
    let at = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    let r = kiln_store::ApiResource {
        arn: "arn:aws:imagebuilder:local:000000000000:lifecycle-policy/p".into(),
        kind: "lifecycle-policy".into(),
        name: "p".into(),
        version: None,
        account: "000000000000".into(),
        body: json!({"v": 1}),
        tags: Tags::new(),
        created_at: at,
        updated_at: at,
    };
    store.create_api_resource(&r).await.unwrap();
    let read = store.get_api_resource(&r.arn).await.unwrap().unwrap();
    assert!(
        store
            .update_api_resource_if_unchanged(&r.arn, read.updated_at, &json!({"v": 2}), &r.tags)
            .await
            .unwrap()
    );
    // The same stale read again: refused, the newer body stays.
    assert!(
        !store
            .update_api_resource_if_unchanged(&r.arn, read.updated_at, &json!({"v": 3}), &r.tags)
            .await
            .unwrap()
    );
    assert_eq!(store.get_api_resource(&r.arn).await.unwrap().unwrap().body, json!({"v": 2}));
    assert!(!store.update_api_resource_if_unchanged("arn:none", at, &json!({}), &r.tags).await.unwrap());
}
