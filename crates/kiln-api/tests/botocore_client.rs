//! The router on a real socket, called by botocore (the library under the AWS CLI and boto3):
//! what a user of `aws imagebuilder --endpoint-url` gets. Skipped, with a message, when
//! Python's botocore is not installed (`pip install botocore`).

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;

use kiln_api::ApiError;
use kiln_api::policy::Policy;
use kiln_api::server::{Call, Caller, Credential, Credentials, Operations, ServerConfig, router};
use serde_json::{Value, json};

const AKID: &str = "AKIAKILNEXAMPLE00001";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

struct Keys(HashMap<String, Credential>);

impl Credentials for Keys {
    async fn lookup(&self, key: &str, token: Option<&str>) -> Result<Option<Credential>, ApiError> {
        Ok(if token.is_some() { None } else { self.0.get(key).cloned() })
    }
}

/// Answers in the shapes of the model, so botocore's parser keeps the members.
struct Shaped;

impl Operations for Shaped {
    async fn call(&self, call: Call) -> Result<Value, ApiError> {
        match call.operation.name {
            "GetImage" => Ok(json!({
                "requestId": "r-1",
                "image": { "arn": call.input["imageBuildVersionArn"], "state": { "status": "AVAILABLE" } }
            })),
            "ListImages" => Ok(json!({ "requestId": "r-2", "imageVersionList": [] })),
            "TagResource" => {
                if call.input["tags"]["team"] != "platform" {
                    return Err(ApiError::InvalidParameter(format!("unexpected input {}", call.input)));
                }
                Ok(json!({}))
            }
            "UntagResource" => Err(ApiError::ResourceNotFound(format!(
                "no tags {} on {}",
                call.input["tagKeys"], call.resource
            ))),
            _ => Err(kiln_api::server::not_implemented(call.operation)),
        }
    }
}

const SCRIPT: &str = r#"
import json, sys
import botocore.session
from botocore.exceptions import ClientError

port, secret = sys.argv[1], sys.argv[2]
session = botocore.session.get_session()
client = session.create_client(
    "imagebuilder", region_name="eu-west-3", endpoint_url="http://127.0.0.1:" + port,
    aws_access_key_id="AKIAKILNEXAMPLE00001", aws_secret_access_key=secret,
    config=botocore.config.Config(retries={"max_attempts": 1}),
)
arn = "arn:aws:imagebuilder:eu-west-3:123456789012:image/web server/1.0.0/1"
calls = [
    ("get_image", lambda: client.get_image(imageBuildVersionArn=arn)),
    ("list_images", lambda: client.list_images(owner="Self")),
    ("tag_resource", lambda: client.tag_resource(resourceArn=arn, tags={"team": "platform"})),
    ("untag_resource", lambda: client.untag_resource(resourceArn=arn, tagKeys=["a b", "c"])),
    ("delete_image", lambda: client.delete_image(imageBuildVersionArn=arn)),
    ("get_workflow", lambda: client.get_workflow(workflowBuildVersionArn=arn)),
]
for name, call in calls:
    try:
        out = call()
        out.pop("ResponseMetadata", None)
        print(json.dumps({"call": name, "ok": out}))
    except ClientError as e:
        print(json.dumps({"call": name, "error": e.response["Error"]["Code"], "message": e.response["Error"]["Message"],
                          "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}))
"#;

fn botocore_available() -> bool {
    Command::new("python3")
        .args(["-c", "import botocore"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

async fn run_client(port: u16, secret: &str) -> HashMap<String, Value> {
    let secret = secret.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3").args(["-c", SCRIPT, &port.to_string(), &secret]).output().unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            (value["call"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn botocore_talks_to_the_router() {
    if !botocore_available() {
        // CI (scripts/test.sh) sets this: there a missing client is a failure, not a skip.
        assert!(
            !std::env::var("KILN_REQUIRE_S3_TESTS").is_ok_and(|v| v == "1"),
            "python3 with botocore is required (scripts/install-deps.sh --test installs it)"
        );
        eprintln!("skipped: python3 with botocore is not installed");
        return;
    }
    let policy = Policy::parse(
        "operator",
        r#"{"Statement":[{"Effect":"Allow","Action":"imagebuilder:*","Resource":"*"},
            {"Sid":"KeepImages","Effect":"Deny","Action":"imagebuilder:Delete*","Resource":"*"}]}"#,
    )
    .unwrap();
    let caller = Caller {
        access_key_id: AKID.into(),
        principal_arn: "arn:aws:iam::123456789012:user/ana".into(),
        account_id: "123456789012".into(),
        policies: vec![policy],
    };
    let keys =
        Keys(HashMap::from([(AKID.to_owned(), Credential { secret_access_key: SECRET.into(), caller })]));
    let app = router(ServerConfig::default(), Arc::new(keys), Arc::new(Shaped));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let results = run_client(port, SECRET).await;
    let arn = "arn:aws:imagebuilder:eu-west-3:123456789012:image/web server/1.0.0/1";
    assert_eq!(results["get_image"]["ok"]["image"]["arn"], arn, "{results:?}");
    assert_eq!(results["get_image"]["ok"]["image"]["state"]["status"], "AVAILABLE");
    assert_eq!(results["list_images"]["ok"]["imageVersionList"], json!([]));
    assert!(results["tag_resource"]["ok"].is_object(), "{:?}", results["tag_resource"]);
    assert_eq!(results["untag_resource"]["error"], "ResourceNotFoundException");
    assert_eq!(results["untag_resource"]["status"], 404);
    assert!(results["untag_resource"]["message"].as_str().unwrap().contains(r#"["a b","c"]"#));
    assert_eq!(results["delete_image"]["error"], "AccessDeniedException");
    assert!(results["delete_image"]["message"].as_str().unwrap().contains("explicit deny"));
    assert_eq!(results["get_workflow"]["error"], "NotImplementedException");

    let results = run_client(port, "not-the-secret").await;
    for call in ["get_image", "list_images", "tag_resource", "delete_image"] {
        assert_eq!(results[call]["error"], "SignatureDoesNotMatch", "{call}: {:?}", results[call]);
        assert_eq!(results[call]["status"], 403);
    }
    server.abort();
}
