//! `kiln serve` end to end with the real AWS CLI and boto3: users made by `kiln admin`, every
//! resource created through `aws imagebuilder --endpoint-url`, a pipeline execution built for
//! real (a one-step component over the shared Debian base; tests disabled), build versions,
//! tags, a restricted key refused, deletions, and a SIGTERM shutdown. Heavy: needs root (the
//! build sandbox), the package mirror on a cold cache, the `aws` command and Python's boto3
//! (`scripts/install-deps.sh --test` installs them); skipped with a message otherwise.

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::shared_cache;
use serde_json::{Value, json};

fn available(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The server process, stopped (SIGKILL) if the test ends early.
struct Serve {
    child: Child,
    port: u16,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Key {
    id: String,
    secret: String,
}

struct Env {
    home: tempfile::TempDir,
    serve: Serve,
}

impl Env {
    /// `kiln serve ARGS` on a free port of loopback, over `home`.
    fn serve(home: tempfile::TempDir, args: &[&str]) -> Env {
        let serve_args = [&["serve", "--listen", "127.0.0.1:0"][..], args].concat();
        let (child, line) = start_kiln(home.path(), &serve_args);
        let port: u16 = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("kiln serve printed {line:?}"));
        Env { home, serve: Serve { child, port } }
    }

    fn kiln(home: &Path, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .env("KILN_HOME", home)
            .env("KILN_CACHE_DIR", shared_cache())
            .output()
            .expect("run kiln")
    }

    fn user(home: &Path, name: &str, policy: &Value) -> Key {
        let file = home.join(format!("{name}-policy.json"));
        std::fs::write(&file, policy.to_string()).unwrap();
        let out =
            Env::kiln(home, &["admin", "create-user", name, "--policy", file.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("create-user --json");
        Key {
            id: v["accessKeyId"].as_str().unwrap().into(),
            secret: v["secretAccessKey"].as_str().unwrap().into(),
        }
    }

    fn aws_env<'a>(&self, cmd: &'a mut Command, key: &Key) -> &'a mut Command {
        let none = self.home.path().join("no-aws-config");
        cmd.env("AWS_ACCESS_KEY_ID", &key.id)
            .env("AWS_SECRET_ACCESS_KEY", &key.secret)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", &none)
            .env("AWS_SHARED_CREDENTIALS_FILE", &none)
            .env("AWS_PAGER", "")
            .env("AWS_MAX_ATTEMPTS", "1")
    }

    /// `aws imagebuilder ARGS`: Ok(output JSON) or Err(stderr).
    fn aws(&self, key: &Key, args: &[&str]) -> Result<Value, String> {
        let endpoint = format!("http://127.0.0.1:{}", self.serve.port);
        let mut cmd = Command::new("aws");
        self.aws_env(&mut cmd, key)
            .args(["imagebuilder", "--endpoint-url", &endpoint, "--region", "local", "--output", "json"])
            .args(args);
        let out = cmd.output().expect("run aws");
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).expect("aws JSON")
            })
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn ok(&self, key: &Key, args: &[&str]) -> Value {
        self.aws(key, args).unwrap_or_else(|e| panic!("aws imagebuilder {args:?} failed: {e}"))
    }

    /// `create-component` of the YAML document `data` as NAME 1.0.0; its build version ARN.
    fn component(&self, key: &Key, name: &str, data: &str) -> String {
        let doc = self.home.path().join(format!("{name}.yml"));
        std::fs::write(&doc, data).unwrap();
        let data = format!("file://{}", doc.display());
        let args = ["--name", name, "--semantic-version", "1.0.0", "--platform", "Linux", "--data", &data];
        let out = self.ok(key, &[&["create-component"][..], &args].concat());
        out["componentBuildVersionArn"].as_str().unwrap().to_owned()
    }
}

const COMPONENT: &str = r#"name: api-hello
description: One file, so the build stays small.
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: Write
        action: CreateFile
        inputs:
          - path: /etc/kiln-api-hello
            content: built through the Image Builder API
"#;

const BOTO3: &str = r#"
import json, sys
import boto3
from botocore.exceptions import ClientError
port, image, pipeline = sys.argv[1], sys.argv[2], sys.argv[3]
client = boto3.client("imagebuilder", region_name="local", endpoint_url="http://127.0.0.1:" + port)
out = {}
client.tag_resource(resourceArn=image, tags={"team": "platform", "stage": "dev"})
client.tag_resource(resourceArn=pipeline, tags={"owner": "ana"})
out["imageTags"] = client.list_tags_for_resource(resourceArn=image)["tags"]
client.untag_resource(resourceArn=image, tagKeys=["stage"])
out["imageTagsAfter"] = client.list_tags_for_resource(resourceArn=image)["tags"]
out["pipelineTags"] = client.list_tags_for_resource(resourceArn=pipeline)["tags"]
out["state"] = client.get_image(imageBuildVersionArn=image)["image"]["state"]["status"]
pages = client.get_paginator("list_image_pipeline_images").paginate(imagePipelineArn=pipeline, PaginationConfig={"PageSize": 1})
out["pipelineImages"] = [i["arn"] for p in pages for i in p["imageSummaryList"]]
try:
    client.get_image(imageBuildVersionArn=image.rsplit("/", 1)[0] + "/99")
except ClientError as e:
    out["missing"] = e.response["Error"]["Code"]
print(json.dumps(out))
"#;

fn admin_policy() -> Value {
    json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "imagebuilder:*", "Resource": "*"}]})
}

/// Whether this test can run here: root (the build sandbox), the AWS CLI and boto3. In CI
/// (scripts/test.sh sets KILN_REQUIRE_S3_TESTS) missing clients are a failure, not a skip.
fn can_run() -> bool {
    let uid =
        Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.ok().as_deref() != Some("0") {
        eprintln!("skipped: building needs root");
        return false;
    }
    if !available("aws", &["--version"]) || !available("python3", &["-c", "import boto3"]) {
        assert!(
            !std::env::var("KILN_REQUIRE_S3_TESTS").is_ok_and(|v| v == "1"),
            "the AWS CLI and boto3 are required (scripts/install-deps.sh --test installs them)"
        );
        eprintln!("skipped: the AWS CLI and boto3 are needed (scripts/install-deps.sh --test)");
        return false;
    }
    true
}

#[test]
fn aws_cli_drives_a_pipeline_to_an_available_image() {
    if !can_run() {
        return;
    }
    let started = Instant::now();
    let home = tempfile::Builder::new().prefix("kiln-serve-").tempdir().unwrap();
    let admin = Env::user(home.path(), "admin", &admin_policy());
    let restricted = Env::user(
        home.path(),
        "reader",
        &json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["imagebuilder:Get*", "imagebuilder:List*"], "Resource": "*"}]}),
    );
    let listed = Env::kiln(home.path(), &["admin", "list-users", "--json"]);
    let users: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(users.as_array().map(Vec::len), Some(2));
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&admin.secret));

    let env = Env::serve(home, &["--workers", "1"]);
    let account = "000000000000";

    let component_arn = env.component(&admin, "api-hello", COMPONENT);
    assert_eq!(component_arn, format!("arn:aws:imagebuilder:local:{account}:component/api-hello/1.0.0/1"));
    let got = env.ok(&admin, &["get-component", "--component-build-version-arn", &component_arn]);
    assert_eq!(got["component"]["data"], COMPONENT);

    // The restricted key may read but not create, and changes nothing.
    let components = format!("componentArn={component_arn}");
    let recipe_args = [
        "create-image-recipe",
        "--name",
        "api-web",
        "--semantic-version",
        "1.0.0",
        "--parent-image",
        "debian-12-x86",
        "--components",
        &components,
    ];
    let denied = env.aws(&restricted, &recipe_args).unwrap_err();
    assert!(denied.contains("AccessDeniedException"), "{denied}");
    assert_eq!(env.ok(&restricted, &["list-image-recipes"])["imageRecipeSummaryList"], json!([]));

    let recipe = env.ok(&admin, &recipe_args);
    let recipe_arn = recipe["imageRecipeArn"].as_str().unwrap().to_owned();
    let infra = env.ok(
        &admin,
        &["create-infrastructure-configuration", "--name", "api-infra", "--instance-profile-name", "kiln"],
    );
    let infra_arn = infra["infrastructureConfigurationArn"].as_str().unwrap().to_owned();
    let dist = env.ok(&admin, &[
        "create-distribution-configuration", "--name", "api-dist", "--distributions",
        r#"[{"region": "local", "amiDistributionConfiguration": {"name": "api-web-{{imagebuilder:buildDate}}", "amiTags": {"built-by": "kiln"}}}]"#,
    ]);
    let dist_arn = dist["distributionConfigurationArn"].as_str().unwrap().to_owned();
    let pipeline = env.ok(
        &admin,
        &[
            "create-image-pipeline",
            "--name",
            "api-pipeline",
            "--image-recipe-arn",
            &recipe_arn,
            "--infrastructure-configuration-arn",
            &infra_arn,
            "--distribution-configuration-arn",
            &dist_arn,
            "--image-tests-configuration",
            "imageTestsEnabled=false",
            "--image-scanning-configuration",
            "imageScanningEnabled=false",
            "--image-tags",
            "origin=api-pipeline",
        ],
    );
    let pipeline_arn = pipeline["imagePipelineArn"].as_str().unwrap().to_owned();
    let in_use = env.aws(&admin, &["delete-image-recipe", "--image-recipe-arn", &recipe_arn]).unwrap_err();
    assert!(in_use.contains("ResourceInUseException"), "{in_use}");

    let build_started = Instant::now();
    let start = env.ok(&admin, &["start-image-pipeline-execution", "--image-pipeline-arn", &pipeline_arn]);
    let image_arn = start["imageBuildVersionArn"].as_str().unwrap().to_owned();
    assert_eq!(image_arn, format!("arn:aws:imagebuilder:local:{account}:image/api-web/1.0.0/1"));
    let mut state = String::new();
    while build_started.elapsed() < Duration::from_secs(900) {
        let image = env.ok(&admin, &["get-image", "--image-build-version-arn", &image_arn]);
        state = image["image"]["state"]["status"].as_str().unwrap_or_default().to_owned();
        match state.as_str() {
            "AVAILABLE" => break,
            "FAILED" | "CANCELLED" => panic!("the execution ended {state}: {}", image["image"]["state"]),
            _ => std::thread::sleep(Duration::from_secs(3)),
        }
    }
    assert_eq!(state, "AVAILABLE");
    let build_secs = build_started.elapsed().as_secs_f64();
    let image = env.ok(&admin, &["get-image", "--image-build-version-arn", &image_arn])["image"].clone();
    assert_eq!(image["sourcePipelineArn"], pipeline_arn.as_str());
    // The pipeline's imageTags and the distribution's amiTags are both on the image.
    assert_eq!(image["tags"]["origin"], "api-pipeline", "{image}");
    assert_eq!(image["tags"]["built-by"], "kiln", "{image}");
    assert_eq!(image["imageTestsConfiguration"]["imageTestsEnabled"], false);
    let folder = image["outputResources"]["amis"][0]["image"].as_str().unwrap().to_owned();
    assert!(Path::new(&folder).join("manifest.json").is_file(), "{folder}");
    assert!(Path::new(&folder).join("api-web.qcow2").is_file(), "{folder}");

    let versions = env.ok(
        &admin,
        &[
            "list-image-build-versions",
            "--image-version-arn",
            &format!("arn:aws:imagebuilder:local:{account}:image/api-web/1.0.0"),
        ],
    );
    assert_eq!(versions["imageSummaryList"][0]["arn"], image_arn.as_str());
    assert_eq!(versions["imageSummaryList"][0]["state"]["status"], "AVAILABLE");
    let images = env.ok(&admin, &["list-images"]);
    assert_eq!(
        images["imageVersionList"][0]["arn"],
        format!("arn:aws:imagebuilder:local:{account}:image/api-web/1.0.0").as_str()
    );

    // boto3: tags on the image and the pipeline, a paginator, an error code.
    let mut cmd = Command::new("python3");
    env.aws_env(&mut cmd, &admin).args(["-c", BOTO3, &env.serve.port.to_string(), &image_arn, &pipeline_arn]);
    let out = cmd.output().expect("run python3");
    assert!(out.status.success(), "boto3: {}", String::from_utf8_lossy(&out.stderr));
    let boto: Value = serde_json::from_slice(&out.stdout).expect("boto3 JSON");
    assert_eq!(boto["imageTags"]["team"], "platform");
    assert_eq!(boto["imageTags"]["stage"], "dev");
    assert!(boto["imageTagsAfter"].get("stage").is_none());
    assert_eq!(boto["pipelineTags"], json!({"owner": "ana"}));
    assert_eq!(boto["state"], "AVAILABLE");
    assert_eq!(boto["pipelineImages"], json!([image_arn]));
    assert_eq!(boto["missing"], "ResourceNotFoundException");
    // The AWS CLI sees the same tags; the restricted key cannot untag.
    let tags = env.ok(&admin, &["list-tags-for-resource", "--resource-arn", &image_arn]);
    assert_eq!(tags["tags"]["team"], "platform");
    let denied = env
        .aws(&restricted, &["untag-resource", "--resource-arn", &image_arn, "--tag-keys", "team"])
        .unwrap_err();
    assert!(denied.contains("AccessDeniedException"), "{denied}");
    let denied =
        env.aws(&restricted, &["delete-image", "--image-build-version-arn", &image_arn]).unwrap_err();
    assert!(denied.contains("AccessDeniedException"), "{denied}");
    assert_eq!(
        env.ok(&restricted, &["list-tags-for-resource", "--resource-arn", &image_arn])["tags"]["team"],
        "platform"
    );
    env.ok(&admin, &["untag-resource", "--resource-arn", &image_arn, "--tag-keys", "team"]);

    // CreateImage (no pipeline) from the same recipe, cancelled before a worker takes it.
    let created = env.ok(
        &admin,
        &[
            "create-image",
            "--image-recipe-arn",
            &recipe_arn,
            "--infrastructure-configuration-arn",
            &infra_arn,
            "--image-tests-configuration",
            "imageTestsEnabled=false",
            "--tags",
            "made-by=create-image",
        ],
    );
    let created_arn = created["imageBuildVersionArn"].as_str().unwrap().to_owned();
    assert_eq!(created_arn, format!("arn:aws:imagebuilder:local:{account}:image/api-web/1.0.0/2"));
    env.ok(&admin, &["cancel-image-creation", "--image-build-version-arn", &created_arn]);
    let got = env.ok(&admin, &["get-image", "--image-build-version-arn", &created_arn])["image"].clone();
    assert_eq!(got["state"]["status"], "CANCELLED");
    assert!(got.get("sourcePipelineArn").is_none(), "{got}");
    assert_eq!(got["tags"]["made-by"], "create-image");

    // A lifecycle policy, in the AWS CLI's shapes (DISABLED: the scheduler must not act on it).
    let rules = r#"[{"action": {"type": "DELETE"}, "filter": {"type": "COUNT", "value": 5}}]"#;
    let selection = r#"{"recipes": [{"name": "api-web", "semanticVersion": "1.0.0"}]}"#;
    let policy = env.ok(
        &admin,
        &[
            "create-lifecycle-policy",
            "--name",
            "api-retention",
            "--status",
            "DISABLED",
            "--execution-role",
            "arn:aws:iam::000000000000:role/kiln-lifecycle",
            "--resource-type",
            "AMI_IMAGE",
            "--policy-details",
            rules,
            "--resource-selection",
            selection,
        ],
    );
    let policy_arn = policy["lifecyclePolicyArn"].as_str().unwrap().to_owned();
    assert_eq!(policy_arn, format!("arn:aws:imagebuilder:local:{account}:lifecycle-policy/api-retention"));
    let got = env.ok(&admin, &["get-lifecycle-policy", "--lifecycle-policy-arn", &policy_arn]);
    assert_eq!(got["lifecyclePolicy"]["policyDetails"][0]["filter"]["value"], 5);
    let listed = env.ok(&admin, &["list-lifecycle-policies"]);
    assert_eq!(listed["lifecyclePolicySummaryList"][0]["arn"], policy_arn.as_str());
    let denied = env
        .aws(&restricted, &["delete-lifecycle-policy", "--lifecycle-policy-arn", &policy_arn])
        .unwrap_err();
    assert!(denied.contains("AccessDeniedException"), "{denied}");
    env.ok(&admin, &["delete-lifecycle-policy", "--lifecycle-policy-arn", &policy_arn]);
    // The worker may have claimed the image before the cancel: it is deleted once the worker
    // has let go of it (its execution folder is gone).
    let executions = env.home.path().join("api").join("executions");
    wait_for("the cancelled execution to end", Duration::from_secs(60), || {
        std::fs::read_dir(&executions).map(|d| d.count() == 0).unwrap_or(true)
    });
    env.ok(&admin, &["delete-image", "--image-build-version-arn", &created_arn]);

    // Deletions, in dependency order.
    env.ok(&admin, &["delete-image", "--image-build-version-arn", &image_arn]);
    assert!(!Path::new(&folder).exists(), "{folder} should be removed");
    assert_eq!(env.ok(&admin, &["list-images"])["imageVersionList"], json!([]));
    env.ok(&admin, &["delete-image-pipeline", "--image-pipeline-arn", &pipeline_arn]);
    env.ok(&admin, &["delete-image-recipe", "--image-recipe-arn", &recipe_arn]);
    env.ok(
        &admin,
        &["delete-infrastructure-configuration", "--infrastructure-configuration-arn", &infra_arn],
    );
    env.ok(&admin, &["delete-distribution-configuration", "--distribution-configuration-arn", &dist_arn]);
    env.ok(&admin, &["delete-component", "--component-build-version-arn", &component_arn]);
    assert_eq!(env.ok(&admin, &["list-components"])["componentVersionList"], json!([]));

    // SIGTERM: a clean exit.
    let pid = env.serve.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut env = env;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = env.serve.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "kiln serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "kiln serve exited with {status}");
    eprintln!(
        "serve_awscli: build {build_secs:.1} s (start to AVAILABLE), whole test {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

const SLOW_COMPONENT: &str = r#"name: api-slow
description: A build step that waits until it is stopped.
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: Wait
        action: ExecuteBash
        inputs:
          commands:
            - sleep 3217
"#;

/// The pids of processes running `sleep 3217` (the slow component's step).
fn slow_steps() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x003217\x00"))
        .collect()
}

/// Waits up to `limit` for `done`, returning how long it took.
fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
    t.elapsed()
}

/// `kiln ARGS` (a long-running command) over `home`, and the first line it printed.
fn start_kiln(home: &Path, args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_HOME", home)
        .env("KILN_CACHE_DIR", shared_cache())
        .env("RUST_LOG", "warn,kiln_server=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kiln");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line)
}

/// `kiln worker` over `home`, killed (SIGKILL) when dropped.
fn start_worker(home: &Path) -> Serve {
    let (child, line) = start_kiln(home, &["worker", "--lease-seconds", "6"]);
    assert!(line.starts_with("worker ready"), "kiln worker printed {line:?}");
    Serve { child, port: 0 }
}

/// Builds in a separate `kiln worker` process (the server only serves and reaps): a build
/// cancelled through the API while its step runs stops at once with nothing left running; a
/// worker killed in the middle of a build takes its step with it, and the next worker fails
/// the build with a reason once the lease has run out.
#[test]
fn a_worker_process_builds_and_cancel_or_a_killed_worker_leave_nothing_running() {
    if !can_run() {
        return;
    }
    assert!(slow_steps().is_empty(), "a `sleep 3217` from an earlier run is still running");
    let home = tempfile::Builder::new().prefix("kiln-serve-").tempdir().unwrap();
    let admin = Env::user(home.path(), "admin", &admin_policy());
    let env = Env::serve(home, &["--workers", "0", "--lease-seconds", "6", "--no-scheduler"]);
    let mut worker = start_worker(env.home.path());

    let component = env.component(&admin, "api-slow", SLOW_COMPONENT);
    let components = format!("componentArn={component}");
    let recipe = env.ok(
        &admin,
        &[
            "create-image-recipe",
            "--name",
            "api-slow",
            "--semantic-version",
            "1.0.0",
            "--parent-image",
            "debian-12-x86",
            "--components",
            &components,
        ],
    )["imageRecipeArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let infra = env.ok(
        &admin,
        &["create-infrastructure-configuration", "--name", "api-slow", "--instance-profile-name", "kiln"],
    )["infrastructureConfigurationArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let pipeline = env.ok(
        &admin,
        &[
            "create-image-pipeline",
            "--name",
            "api-slow",
            "--image-recipe-arn",
            &recipe,
            "--infrastructure-configuration-arn",
            &infra,
            "--image-tests-configuration",
            "imageTestsEnabled=false",
        ],
    )["imagePipelineArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let state = |arn: &str| -> Value {
        env.ok(&admin, &["get-image", "--image-build-version-arn", arn])["image"]["state"].clone()
    };
    let start = || -> String {
        env.ok(&admin, &["start-image-pipeline-execution", "--image-pipeline-arn", &pipeline])
            ["imageBuildVersionArn"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Cancelled while the step runs: CANCELLED at once, the step gone within seconds.
    let first = start();
    wait_for("the worker to start the slow step", Duration::from_secs(600), || !slow_steps().is_empty());
    assert_eq!(state(&first)["status"], "BUILDING");
    env.ok(&admin, &["cancel-image-creation", "--image-build-version-arn", &first]);
    assert_eq!(state(&first)["status"], "CANCELLED");
    let stopped = wait_for("the cancelled step to stop", Duration::from_secs(30), || slow_steps().is_empty());
    assert_eq!(state(&first)["status"], "CANCELLED", "a cancelled build must stay CANCELLED");
    let executions = env.home.path().join("api").join("executions");
    wait_for("the execution's work folder to go", Duration::from_secs(10), || {
        std::fs::read_dir(&executions).map(|d| d.count() == 0).unwrap_or(true)
    });

    // The worker dies in the middle of the next build: its step dies with it.
    let second = start();
    wait_for("the worker to start the slow step again", Duration::from_secs(300), || {
        !slow_steps().is_empty()
    });
    let _ = worker.child.kill();
    let _ = worker.child.wait();
    wait_for("the killed worker's step to die", Duration::from_secs(15), || slow_steps().is_empty());
    assert_eq!(state(&second)["status"], "BUILDING", "the lease still holds");
    // The next worker (or the server's reaper) fails it once the 6 s lease has run out.
    let _worker = start_worker(env.home.path());
    let failed = wait_for("the dead worker's build to fail", Duration::from_secs(40), || {
        state(&second)["status"] == "FAILED"
    });
    assert_eq!(state(&second)["reason"], kiln_server::INTERRUPTED_REASON);
    eprintln!(
        "serve_awscli: cancel to step gone {:.1} s; killed worker's build failed {:.1} s after restart",
        stopped.as_secs_f64(),
        failed.as_secs_f64()
    );
}
