//! The catalogue from the command line without building anything: images are seeded through
//! kiln-store (and kiln-build's registration and distribution, on small fake artifacts), then
//! `kiln image tag|untag|list|show|share|unshare|usage|pull`, `kiln launch`'s refusals and
//! `kiln lifecycle apply` are run as a user would. Runs in seconds.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::text;
use kiln_build::Kiln;
use kiln_store::{Image, ImageState, NewImage, Tags};
use serde_json::json;

const OWNER: &str = "000000000000";
const OTHER: &str = "111111111111";

/// Run kiln with KILN_HOME `home` and no KILN_ACCOUNT from the caller's environment.
fn kiln_in(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_HOME", home)
        .env("KILN_CACHE_DIR", home.join("cache"))
        .env_remove("KILN_ACCOUNT")
        .output()
        .expect("run kiln")
}

fn kiln_as(home: &Path, account: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_HOME", home)
        .env("KILN_CACHE_DIR", home.join("cache"))
        .env("KILN_ACCOUNT", account)
        .output()
        .expect("run kiln")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "kiln failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// An AVAILABLE image `name/1.0.0/N` with a fake qcow2 disk and manifest in its output folder
/// (under KILN_HOME/images, as a build makes it), distributed to `store` when given.
fn seed(kiln: &Kiln, name: &str, tags: &[(&str, &str)], store: Option<&Path>) -> Image {
    let s = kiln.store();
    let tags: Tags = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let image = kiln
        .block_on(s.create_image(&NewImage {
            name: name.into(),
            version: "1.0.0".parse().unwrap(),
            region: "local".into(),
            account: OWNER.into(),
            recipe: json!({ "name": name }),
            tags,
        }))
        .unwrap();
    let dir = kiln.home.join("images").join(name).join("1.0.0").join(image.build.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.qcow2")), format!("disk of {}", image.arn)).unwrap();
    let distributions = match store {
        Some(st) => {
            json!([{ "region": "eu", "storeUrl": format!("file://{}", st.display()), "formats": ["qcow2"] }])
        }
        None => json!([{ "region": "local", "formats": ["qcow2"] }]),
    };
    let manifest = json!({
        "image": { "arn": image.arn },
        "distributionConfiguration": { "distributions": distributions },
        "artifacts": [{ "file": format!("{name}.qcow2"), "format": "qcow2" }],
    });
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    kiln.block_on(s.set_manifest(&image.arn, &dir.display().to_string(), &manifest)).unwrap();
    kiln.block_on(s.transition(&image.arn, ImageState::Building, None)).unwrap();
    let image = kiln.block_on(s.transition(&image.arn, ImageState::Available, Some("built"))).unwrap();
    if store.is_some() {
        let outcomes =
            kiln.distribute(&kiln.block_on(s.get_image_by_arn(&image.arn)).unwrap(), true).unwrap();
        assert!(outcomes.iter().all(|o| o.state == "AVAILABLE"), "{outcomes:?}");
    }
    kiln.block_on(s.get_image_by_arn(&image.arn)).unwrap()
}

fn reference(image: &Image) -> String {
    format!("{}/{}/{}", image.name, image.version, image.build)
}

#[test]
fn tags_are_added_removed_filtered_and_shown() {
    let home = tempfile::tempdir().unwrap();
    let (a, b) = {
        let kiln = Kiln::open(home.path()).unwrap();
        (seed(&kiln, "web", &[("env", "prod")], None), seed(&kiln, "web", &[("env", "dev")], None))
    };
    let h = home.path();
    ok(&kiln_in(h, &["image", "tag", &reference(&a), "team=web", "tier=front"]));
    ok(&kiln_in(h, &["image", "untag", &reference(&a), "tier", "absent"]));
    let show = ok(&kiln_in(h, &["image", "show", &reference(&a)]));
    assert!(show.contains("tags:     env=prod, team=web"), "{show}");
    let list = |filters: &[&str]| -> Vec<String> {
        let mut args = vec!["image", "list", "--json"];
        for f in filters {
            args.extend(["--tag", f]);
        }
        let v: serde_json::Value = serde_json::from_str(&ok(&kiln_in(h, &args))).unwrap();
        v.as_array().unwrap().iter().map(|i| i["arn"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(list(&["env"]), [a.arn.clone(), b.arn.clone()]);
    assert_eq!(list(&["env=prod", "team"]), std::slice::from_ref(&a.arn));
    assert_eq!(list(&["env=dev", "team"]), Vec::<String>::new());
    let bad = kiln_in(h, &["image", "tag", &reference(&a), "novalue"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
}

#[test]
fn sharing_decides_who_may_pull_and_launch() {
    let home = tempfile::tempdir().unwrap();
    let stores = tempfile::tempdir().unwrap();
    let image = {
        let kiln = Kiln::open(home.path()).unwrap();
        seed(&kiln, "app", &[], Some(&stores.path().join("eu")))
    };
    let h = home.path();
    let r = reference(&image);
    let out_dir = home.path().join("pulled");
    let pull = |account: Option<&str>| {
        let mut args = vec!["image", "pull", &r, "--region", "eu", "--out", out_dir.to_str().unwrap()];
        if let Some(a) = account {
            args.extend(["--account", a]);
        }
        kiln_in(h, &args)
    };
    // The owner (the default account) may; another account may not until shared.
    ok(&pull(None));
    let refused = pull(Some(OTHER));
    assert_eq!(refused.status.code(), Some(1));
    let err = text(&refused.stderr);
    assert!(err.contains(&image.arn) && err.contains(OTHER) && err.contains("kiln image share"), "{err}");
    let launch = kiln_as(h, OTHER, &["launch", &r]);
    assert_eq!(launch.status.code(), Some(1), "{}", text(&launch.stderr));
    assert!(
        text(&launch.stderr).contains(&format!("account {OTHER} may not launch")),
        "{}",
        text(&launch.stderr)
    );

    // Only the owner may share.
    let stranger = kiln_as(h, OTHER, &["image", "share", &r, "--account", OTHER]);
    assert_eq!(stranger.status.code(), Some(1));
    assert!(text(&stranger.stderr).contains("only its owner"), "{}", text(&stranger.stderr));
    assert_eq!(kiln_in(h, &["image", "share", &r, "--account", "42"]).status.code(), Some(2));

    ok(&kiln_in(h, &["image", "share", &r, "--account", OTHER]));
    ok(&pull(Some(OTHER)));
    assert!(out_dir.join("app.qcow2").is_file());
    let show = ok(&kiln_in(h, &["image", "show", &r]));
    assert!(show.contains(&format!("shared:   {OTHER}")), "{show}");
    ok(&kiln_in(h, &["image", "unshare", &r, "--account", OTHER]));
    assert_eq!(pull(Some(OTHER)).status.code(), Some(1));

    // Public: any account.
    ok(&kiln_in(h, &["image", "share", &r, "--all"]));
    ok(&kiln_as(
        h,
        "222222222222",
        &["image", "pull", &r, "--region", "eu", "--out", out_dir.to_str().unwrap()],
    ));
    ok(&kiln_in(h, &["image", "unshare", &r, "--all"]));
    assert_eq!(pull(Some("222222222222")).status.code(), Some(1));

    // Pulls are usage, by account; so are refusals (threat detection reads them).
    let usage: serde_json::Value =
        serde_json::from_str(&ok(&kiln_in(h, &["image", "show", &r, "--json"]))).unwrap();
    let by_kind = |kind: &str| -> Vec<String> {
        usage["usage"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["kind"] == kind)
            .map(|u| u["account"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(by_kind("pull"), [OWNER, OTHER, "222222222222"]);
    let refused = by_kind("pull-refused");
    assert!(refused.iter().all(|a| a != OWNER), "{refused:?}");
    assert!(
        refused.contains(&OTHER.to_string()) && refused.contains(&"222222222222".to_string()),
        "{refused:?}"
    );
}

#[test]
fn the_distribution_configuration_sets_tags_permissions_and_names() {
    let home = tempfile::tempdir().unwrap();
    let file = r#"
imageRecipe:
  name: web
  semanticVersion: 1.0.0
  parentImage: debian-12-x86
  components: [{ componentArn: hello/1.x.x }]
  tags: { team: web }
distributionConfiguration:
  distributions:
    - region: eu
      name: "web-{{imagebuilder:buildDate}}-{{imagebuilder:buildVersion}}"
      launchPermission: { userIds: ["111111111111"] }
      amiDistributionConfiguration:
        amiTags: { build: "{{imagebuilder:buildVersion}}" }
"#;
    let image = {
        let kiln = Kiln::open(home.path()).unwrap();
        let image = seed(&kiln, "web", &[], None);
        let parsed = kiln_model::parse_resource_file("r.yml", file).unwrap();
        kiln.register_distribution(&image, &parsed).unwrap();
        image
    };
    let show = ok(&kiln_in(home.path(), &["image", "show", &reference(&image)]));
    let date = kiln_model::template::build_date(image.created_at);
    assert!(show.contains(&format!("name:     web-{date}-1 (region eu)")), "{show}");
    assert!(show.contains("tags:     build=1, team=web"), "{show}");
    assert!(show.contains(&format!("shared:   {OTHER}")), "{show}");

    // An unknown variable is refused with the file's line and column.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.yml");
    std::fs::write(&path, file.replace("buildDate", "buildDay")).unwrap();
    let e = kiln_model::load_resource_file(&path).unwrap_err();
    assert!(e[0].to_string().starts_with(&format!("{}:11:13: unknown variable", path.display())), "{}", e[0]);
}

#[test]
fn usage_reports_launches_per_image_and_account() {
    let home = tempfile::tempdir().unwrap();
    let (a, b) = {
        let kiln = Kiln::open(home.path()).unwrap();
        let a = seed(&kiln, "web", &[], None);
        let b = seed(&kiln, "db", &[], None);
        let s = kiln.store();
        for account in [OWNER, OTHER, OTHER] {
            kiln.block_on(s.record_usage(&a.arn, "launch", account, &json!({}))).unwrap();
        }
        kiln.block_on(s.record_usage(&b.arn, "launch", OTHER, &json!({}))).unwrap();
        kiln.block_on(s.record_usage(&b.arn, "pull", OTHER, &json!({}))).unwrap();
        (a, b)
    };
    let h = home.path();
    let all: serde_json::Value =
        serde_json::from_str(&ok(&kiln_in(h, &["image", "usage", "--json"]))).unwrap();
    let rows: Vec<(String, String, u64)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["imageArn"].as_str().unwrap().into(),
                u["account"].as_str().unwrap().into(),
                u["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (b.arn.clone(), OTHER.into(), 1),
            (a.arn.clone(), OWNER.into(), 1),
            (a.arn.clone(), OTHER.into(), 2)
        ]
    );
    assert!(all[0]["lastAt"].as_str().is_some());
    let one = ok(&kiln_in(h, &["image", "usage", &reference(&a)]));
    assert_eq!(one.lines().count(), 3, "{one}");
    assert!(
        one.lines().nth(2).unwrap().contains(OTHER) && one.lines().nth(2).unwrap().contains(" 2 "),
        "{one}"
    );
}

const POLICY: &str = r#"
name: web-retention
policyDetails:
  - action: { type: DEPRECATE }
    filter: { type: COUNT, value: 1 }
  - action: { type: DISABLE }
    filter: { type: COUNT, value: 2 }
  - action: { type: DELETE }
    filter: { type: COUNT, value: 3 }
    exclusionRules:
      amis:
        tagMap: { keep: "yes" }
resourceSelection:
  recipes: [{ name: web, semanticVersion: 1.x.x }]
"#;

#[test]
fn lifecycle_policies_retire_images_once_and_delete_their_artifacts() {
    let home = tempfile::tempdir().unwrap();
    let stores = tempfile::tempdir().unwrap();
    let store_dir = stores.path().join("eu");
    let images: Vec<Image> = {
        let kiln = Kiln::open(home.path()).unwrap();
        vec![
            seed(&kiln, "web", &[], Some(&store_dir)),
            seed(&kiln, "web", &[("keep", "yes")], None),
            seed(&kiln, "web", &[], None),
            seed(&kiln, "web", &[], None),
            seed(&kiln, "web", &[], None),
            seed(&kiln, "db", &[], None),
        ]
    };
    let h = home.path();
    let policy = home.path().join("policy.yml");
    std::fs::write(&policy, POLICY).unwrap();
    let p = policy.to_str().unwrap();
    let release = store_dir.join("images/web/1.0.0/1/release.json");
    assert!(release.is_file(), "the seeded image is in its store");
    let states = || -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(&ok(&kiln_in(h, &["image", "list", "--all", "--json", "--name", "web"])))
                .unwrap();
        v.as_array().unwrap().iter().map(|i| i["state"].as_str().unwrap().to_string()).collect()
    };

    let dry = ok(&kiln_in(h, &["lifecycle", "apply", p, "--dry-run"]));
    assert!(dry.contains("5 image(s) selected, 4 would change (dry run: nothing changed)"), "{dry}");
    assert!(dry.contains("web/1.0.0/1  AVAILABLE -> DELETED  rule 3 (DELETE)"), "{dry}");
    assert!(dry.contains("web/1.0.0/2  AVAILABLE -> DISABLED  rule 2 (DISABLE)"), "{dry}");
    assert!(dry.contains("web/1.0.0/3  AVAILABLE -> DISABLED  rule 2 (DISABLE)"), "{dry}");
    assert!(dry.contains("web/1.0.0/4  AVAILABLE -> DEPRECATED  rule 1 (DEPRECATE)"), "{dry}");
    assert!(dry.contains("excluded: tagged keep=yes"), "{dry}");
    assert_eq!(states(), ["AVAILABLE"; 5]);

    let json: serde_json::Value =
        serde_json::from_str(&ok(&kiln_in(h, &["lifecycle", "apply", p, "--dry-run", "--json"]))).unwrap();
    assert_eq!(json["plan"]["changes"].as_array().unwrap().len(), 4);
    assert_eq!(json["plan"]["changes"][0]["newState"], "DELETED");

    let applied = ok(&kiln_in(h, &["lifecycle", "apply", p]));
    assert!(applied.contains("4 changes"), "{applied}");
    assert_eq!(states(), ["DELETED", "DISABLED", "DISABLED", "DEPRECATED", "AVAILABLE"]);
    assert!(!release.exists(), "DELETE removes the image from its regions");
    let first_dir = PathBuf::from(images[0].output_location.clone().unwrap());
    assert!(!first_dir.exists(), "DELETE removes the local output folder");
    assert!(PathBuf::from(images[1].output_location.clone().unwrap()).is_dir());
    let show = ok(&kiln_in(h, &["image", "show", &images[0].arn]));
    assert!(
        show.contains("DELETED") && show.contains("lifecycle policy web-retention: rule 3 (DELETE)"),
        "{show}"
    );
    assert!(show.contains("region:   eu DELETED"), "{show}");
    let listed = ok(&kiln_in(h, &["image", "list", "--name", "web"]));
    assert_eq!(listed.lines().count(), 5, "DELETED images only with --all:\n{listed}");

    // Again: nothing changes.
    let again = ok(&kiln_in(h, &["lifecycle", "apply", p]));
    assert!(again.contains("4 image(s) selected, 0 changes"), "{again}");
    assert_eq!(states(), ["DELETED", "DISABLED", "DISABLED", "DEPRECATED", "AVAILABLE"]);

    // Retired images: DISABLED is refused, DEPRECATED warns.
    let out_dir = home.path().join("pulled");
    let disabled = kiln_in(h, &["launch", &reference(&images[2])]);
    assert_eq!(disabled.status.code(), Some(1));
    assert!(text(&disabled.stderr).contains("is DISABLED"), "{}", text(&disabled.stderr));
    let deleted = kiln_in(
        h,
        &["image", "pull", &reference(&images[0]), "--region", "eu", "--out", out_dir.to_str().unwrap()],
    );
    assert_eq!(deleted.status.code(), Some(1), "{}", text(&deleted.stderr));
    assert!(text(&deleted.stderr).contains("is DELETED"), "{}", text(&deleted.stderr));
    let db = ok(&kiln_in(h, &["image", "show", &images[5].arn, "--json"]));
    assert!(db.contains("\"state\": \"AVAILABLE\""), "db is not selected: {db}");
}

#[test]
fn age_rules_use_the_given_time_and_deprecated_images_warn() {
    let home = tempfile::tempdir().unwrap();
    let stores = tempfile::tempdir().unwrap();
    let image = {
        let kiln = Kiln::open(home.path()).unwrap();
        seed(&kiln, "old", &[], Some(&stores.path().join("eu")))
    };
    let h = home.path();
    let policy = home.path().join("age.json");
    std::fs::write(
        &policy,
        r#"{"name": "age", "policyDetails": [{"action": {"type": "DEPRECATE"},
            "filter": {"type": "AGE", "value": 2, "unit": "WEEKS"}}],
            "resourceSelection": {"recipes": [{"name": "old", "semanticVersion": "1.0.0"}]}}"#,
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let now = ok(&kiln_in(h, &["lifecycle", "apply", p]));
    assert!(now.contains("0 changes"), "too young today: {now}");
    let later = (image.created_at + time::Duration::days(15))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let out = ok(&kiln_in(h, &["lifecycle", "apply", p, "--as-of", &later]));
    assert!(
        out.contains(
            "old/1.0.0/1  AVAILABLE -> DEPRECATED  rule 1 (DEPRECATE): created 15 days ago, at least 2 WEEKS"
        ),
        "{out}"
    );
    let out_dir = home.path().join("pulled");
    let pulled = kiln_in(
        h,
        &["image", "pull", &reference(&image), "--region", "eu", "--out", out_dir.to_str().unwrap()],
    );
    assert!(pulled.status.success(), "{}", text(&pulled.stderr));
    assert!(text(&pulled.stderr).contains("warning: image") && text(&pulled.stderr).contains("DEPRECATED"));

    let bad = home.path().join("bad.yml");
    std::fs::write(&bad, POLICY.replace("type: COUNT, value: 3", "type: COUNT, value: 3, unit: DAYS"))
        .unwrap();
    let refused = kiln_in(h, &["lifecycle", "apply", bad.to_str().unwrap(), "--dry-run"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains(&format!("{}:9:44: a COUNT filter has no unit", bad.display())),
        "{}",
        text(&refused.stderr)
    );
}
