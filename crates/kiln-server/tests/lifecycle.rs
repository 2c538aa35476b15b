//! Lifecycle policies through kiln-api's router, and their runs over images made directly in
//! the store (nothing is built): which images a run acts on, what it records, and who sees it.

mod common;

use common::*;
use kiln_store::{ImageState, LifecycleExecutionState};
use serde_json::{Value, json};
use time::OffsetDateTime;

const ACCOUNT: &str = "111122223333";
const OTHER: &str = "444455556666";

fn policy_arn(name: &str) -> String {
    format!("arn:aws:imagebuilder:local:{ACCOUNT}:lifecycle-policy/{name}")
}

/// A CreateLifecyclePolicy request for `name` with these rules, selecting recipe `recipe`.
fn create(name: &str, recipe: &str, rules: Value) -> Value {
    json!({
        "name": name,
        "executionRole": "arn:aws:iam::111122223333:role/kiln-lifecycle",
        "resourceType": "AMI_IMAGE",
        "policyDetails": rules,
        "resourceSelection": {"recipes": [{"name": recipe, "semanticVersion": "1.x.x"}]},
        "clientToken": format!("create-{name}"),
    })
}

fn delete_after(count: u32) -> Value {
    json!([{"action": {"type": "DELETE"}, "filter": {"type": "COUNT", "value": count}}])
}

/// `(error code, message)` of a call that must fail.
async fn failure(
    env: &Env,
    key: &kiln_server::NewUserKey,
    method: &str,
    path: &str,
    body: Value,
) -> (String, String) {
    let (status, code, out) = env.send(key, method, path, body).await;
    assert_ne!(status, 200, "{method} {path} succeeded: {out}");
    (code, out["message"].as_str().unwrap_or_default().to_owned())
}

/// An AVAILABLE image of `account`, as a finished build leaves it.
async fn available(env: &Env, name: &str, account: &str) -> String {
    let store = env.server.store();
    let image = store.create_image(&new_image(name, account)).await.unwrap();
    for state in [ImageState::Building, ImageState::Available] {
        store.transition(&image.arn, state, None).await.unwrap();
    }
    image.arn
}

async fn state_of(env: &Env, arn: &str) -> ImageState {
    env.server.store().get_image_by_arn(arn).await.unwrap().state
}

#[tokio::test]
async fn policies_are_created_read_listed_updated_and_deleted_by_their_account_only() {
    let env = Env::new().await;
    let request = create("keep-two", "web", delete_after(2));
    let mut tagged = request.clone();
    tagged["tags"] = json!({"team": "platform"});
    let out = env.ok("PUT", "/CreateLifecyclePolicy", tagged.clone()).await;
    let arn = policy_arn("keep-two");
    assert_eq!(out["lifecyclePolicyArn"], arn.as_str());
    // The same token and request: the same answer, no error for the existing name.
    assert_eq!(env.ok("PUT", "/CreateLifecyclePolicy", tagged).await["lifecyclePolicyArn"], arn.as_str());
    let mut again = request.clone();
    again["clientToken"] = json!("another");
    assert_eq!(env.err("PUT", "/CreateLifecyclePolicy", again).await, "ResourceAlreadyExistsException");

    let got =
        env.ok("GET", &format!("/GetLifecyclePolicy?lifecyclePolicyArn={}", enc(&arn)), Value::Null).await;
    let policy = &got["lifecyclePolicy"];
    assert_eq!(policy["arn"], arn.as_str());
    assert_eq!(policy["name"], "keep-two");
    assert_eq!(policy["status"], "ENABLED", "the model's default");
    assert_eq!(policy["resourceType"], "AMI_IMAGE");
    assert_eq!(policy["executionRole"], "arn:aws:iam::111122223333:role/kiln-lifecycle");
    assert_eq!(policy["policyDetails"], delete_after(2));
    assert_eq!(policy["resourceSelection"]["recipes"][0]["name"], "web");
    assert_eq!(policy["tags"], json!({"team": "platform"}));
    assert!(policy["dateCreated"].is_string());
    assert!(policy.get("dateLastRun").is_none(), "{policy}");

    // Invalid policies name the member at fault.
    let cases = [
        (json!([{"filter": {"type": "COUNT", "value": 2}}]), "policyDetails[0]", "missing field `action`"),
        (
            json!([{"action": {"type": "DELETE"}, "filter": {"type": "SIZE", "value": 2}}]),
            "policyDetails[0].filter.type",
            "unknown variant `SIZE`",
        ),
        (delete_after(0), "policyDetails[0].filter.value", "at least 1"),
        (
            json!([{"action": {"type": "DELETE"}, "filter": {"type": "AGE", "value": 2}}]),
            "policyDetails[0].filter",
            "needs a `unit`",
        ),
    ];
    for (i, (rules, member, what)) in cases.into_iter().enumerate() {
        let mut bad = create(&format!("bad-{i}"), "web", rules);
        bad["clientToken"] = json!(format!("bad-{i}"));
        let (code, message) = failure(&env, &env.admin, "PUT", "/CreateLifecyclePolicy", bad).await;
        assert_eq!(code, "InvalidParameterValueException", "{message}");
        assert!(message.contains(&format!("`{member}`")) && message.contains(what), "{message}");
    }
    let mut no_role = create("no-role", "web", delete_after(2));
    no_role.as_object_mut().unwrap().remove("executionRole");
    let (code, message) = failure(&env, &env.admin, "PUT", "/CreateLifecyclePolicy", no_role).await;
    assert_eq!(code, "InvalidRequestException");
    assert!(message.contains("executionRole"), "{message}");
    let mut container = create("containers", "web", delete_after(2));
    container["resourceType"] = json!("CONTAINER_IMAGE");
    let (code, message) = failure(&env, &env.admin, "PUT", "/CreateLifecyclePolicy", container).await;
    assert_eq!(code, "InvalidParameterValueException");
    assert!(message.contains("`resourceType`"), "{message}");
    let listed = env.ok("POST", "/ListLifecyclePolicies", json!({})).await;
    assert_eq!(
        listed["lifecyclePolicySummaryList"].as_array().unwrap().len(),
        1,
        "nothing invalid was stored"
    );

    // Pages of two, and filters.
    for name in ["alpha", "omega"] {
        env.ok("PUT", "/CreateLifecyclePolicy", create(name, "web", delete_after(5))).await;
    }
    let first = env.ok("POST", "/ListLifecyclePolicies", json!({"maxResults": 2})).await;
    let names: Vec<&str> = first["lifecyclePolicySummaryList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "keep-two"]);
    assert_eq!(first["lifecyclePolicySummaryList"][1]["tags"], json!({"team": "platform"}));
    assert_eq!(first["lifecyclePolicySummaryList"][1]["status"], "ENABLED");
    assert!(first["lifecyclePolicySummaryList"][1].get("policyDetails").is_none(), "a summary");
    let token = first["nextToken"].as_str().unwrap();
    let second = env.ok("POST", "/ListLifecyclePolicies", json!({"maxResults": 2, "nextToken": token})).await;
    assert_eq!(second["lifecyclePolicySummaryList"][0]["name"], "omega");
    assert!(second.get("nextToken").is_none());

    // An update replaces the policy, keeps its name and creation date, and keeps a status it
    // does not mention.
    let update = json!({"lifecyclePolicyArn": arn, "description": "fewer", "status": "DISABLED",
        "executionRole": "kiln-lifecycle", "resourceType": "AMI_IMAGE", "policyDetails": delete_after(1),
        "resourceSelection": {"tagMap": {"env": "dev"}}, "clientToken": "u1"});
    assert_eq!(
        env.ok("PUT", "/UpdateLifecyclePolicy", update.clone()).await["lifecyclePolicyArn"],
        arn.as_str()
    );
    let got =
        env.ok("GET", &format!("/GetLifecyclePolicy?lifecyclePolicyArn={}", enc(&arn)), Value::Null).await;
    let updated = &got["lifecyclePolicy"];
    assert_eq!((updated["name"].as_str(), updated["status"].as_str()), (Some("keep-two"), Some("DISABLED")));
    assert_eq!(updated["description"], "fewer");
    assert_eq!(updated["policyDetails"], delete_after(1));
    assert_eq!(updated["resourceSelection"], json!({"tagMap": {"env": "dev"}}));
    assert_eq!(updated["dateCreated"], policy["dateCreated"]);
    assert!(updated["dateUpdated"].is_string());
    let mut unstated = update.clone();
    unstated.as_object_mut().unwrap().remove("status");
    unstated["clientToken"] = json!("u2");
    env.ok("PUT", "/UpdateLifecyclePolicy", unstated).await;
    let filtered = env
        .ok(
            "POST",
            "/ListLifecyclePolicies",
            json!({"filters": [{"name": "status", "values": ["DISABLED"]}]}),
        )
        .await;
    assert_eq!(filtered["lifecyclePolicySummaryList"][0]["arn"], arn.as_str());
    assert_eq!(filtered["lifecyclePolicySummaryList"].as_array().unwrap().len(), 1);
    let mut bad_update = update.clone();
    bad_update["policyDetails"] = delete_after(1001);
    bad_update["clientToken"] = json!("u3");
    let (code, message) = failure(&env, &env.admin, "PUT", "/UpdateLifecyclePolicy", bad_update).await;
    assert_eq!(code, "InvalidParameterValueException");
    assert!(message.contains("`policyDetails[0].filter.value`"), "{message}");

    // Another account sees none of it.
    let other = env.user("other", OTHER, ADMIN).await;
    let get = format!("/GetLifecyclePolicy?lifecyclePolicyArn={}", enc(&arn));
    assert_eq!(failure(&env, &other, "GET", &get, Value::Null).await.0, "ResourceNotFoundException");
    let (_, _, list) = env.send(&other, "POST", "/ListLifecyclePolicies", json!({})).await;
    assert_eq!(list["lifecyclePolicySummaryList"], json!([]));
    let mut theirs = update.clone();
    theirs["clientToken"] = json!("o1");
    assert_eq!(
        failure(&env, &other, "PUT", "/UpdateLifecyclePolicy", theirs).await.0,
        "ResourceNotFoundException"
    );
    let delete = format!("/DeleteLifecyclePolicy?lifecyclePolicyArn={}", enc(&arn));
    assert_eq!(failure(&env, &other, "DELETE", &delete, Value::Null).await.0, "ResourceNotFoundException");

    // Tags, then deletion.
    env.ok("POST", &format!("/tags/{}", enc(&arn)), json!({"tags": {"env": "dev"}})).await;
    let tags = env.ok("GET", &format!("/tags/{}", enc(&arn)), Value::Null).await;
    assert_eq!(tags["tags"], json!({"team": "platform", "env": "dev"}));
    assert_eq!(env.ok("DELETE", &delete, Value::Null).await["lifecyclePolicyArn"], arn.as_str());
    assert_eq!(env.err("GET", &get, Value::Null).await, "ResourceNotFoundException");
}

#[tokio::test]
async fn a_run_acts_on_the_policys_own_images_and_records_an_execution() {
    let env = Env::new().await;
    let web: Vec<String> = {
        let mut arns = Vec::new();
        for _ in 0..4 {
            arns.push(available(&env, "web", ACCOUNT).await);
        }
        arns
    };
    let db = [available(&env, "db", ACCOUNT).await, available(&env, "db", ACCOUNT).await];
    // Another account's images of the same name, older and newer than ours.
    let theirs = [available(&env, "web", OTHER).await, available(&env, "web", OTHER).await];
    // Keep the newest web; deprecate the next two; delete the rest.
    let rules = json!([
        {"action": {"type": "DEPRECATE"}, "filter": {"type": "COUNT", "value": 1}},
        {"action": {"type": "DELETE"}, "filter": {"type": "COUNT", "value": 3}},
    ]);
    env.ok("PUT", "/CreateLifecyclePolicy", create("retention", "web", rules)).await;
    let mut off = create("off", "db", delete_after(1));
    off["status"] = json!("DISABLED");
    env.ok("PUT", "/CreateLifecyclePolicy", off).await;

    let now = OffsetDateTime::now_utc();
    let runs = kiln_server::run_lifecycle_policies(&env.server, now).await.unwrap();
    assert_eq!(runs.len(), 1, "the DISABLED policy does not run: {runs:?}");
    let run = &runs[0];
    assert_eq!(run.policy_arn, policy_arn("retention"));
    assert_eq!(run.state, LifecycleExecutionState::Success, "{:?}", run.reason);
    let mut changed = run.changed.clone();
    changed.sort();
    assert_eq!(changed, [web[0].clone(), web[1].clone(), web[2].clone()]);
    assert_eq!(state_of(&env, &web[0]).await, ImageState::Deleted);
    assert_eq!(state_of(&env, &web[1]).await, ImageState::Deprecated);
    assert_eq!(state_of(&env, &web[2]).await, ImageState::Deprecated);
    assert_eq!(state_of(&env, &web[3]).await, ImageState::Available);
    for arn in db.iter().chain(&theirs) {
        assert_eq!(state_of(&env, arn).await, ImageState::Available, "{arn} untouched");
    }

    // The execution, as the API answers it.
    let id = run.execution_id.clone();
    let shape = |s: &str| {
        let parts: Vec<usize> = s.strip_prefix("lce-").unwrap_or_default().split('-').map(str::len).collect();
        parts == [8, 4, 4, 4, 12] && s[4..].chars().all(|c| c == '-' || c.is_ascii_hexdigit())
    };
    assert!(shape(&id), "{id}");
    let got = env.ok("GET", &format!("/GetLifecycleExecution?lifecycleExecutionId={id}"), Value::Null).await;
    let execution = &got["lifecycleExecution"];
    assert_eq!(execution["lifecycleExecutionId"], id.as_str());
    assert_eq!(execution["lifecyclePolicyArn"], policy_arn("retention").as_str());
    assert_eq!(execution["state"], json!({"status": "SUCCESS"}));
    assert_eq!(execution["resourcesImpactedSummary"], json!({"hasImpactedResources": true}));
    assert!(execution["startTime"].is_string() && execution["endTime"].is_string());
    let listed =
        env.ok("POST", "/ListLifecycleExecutions", json!({"resourceArn": policy_arn("retention")})).await;
    assert_eq!(listed["lifecycleExecutions"].as_array().unwrap().len(), 1);
    assert_eq!(listed["lifecycleExecutions"][0], *execution);
    let disabled =
        env.ok("POST", "/ListLifecycleExecutions", json!({"resourceArn": policy_arn("off")})).await;
    assert_eq!(disabled["lifecycleExecutions"], json!([]));

    let resources =
        env.ok("POST", "/ListLifecycleExecutionResources", json!({"lifecycleExecutionId": id})).await;
    assert_eq!(resources["lifecycleExecutionId"], id.as_str());
    assert_eq!(resources["lifecycleExecutionState"]["status"], "SUCCESS");
    let mut acted: Vec<(String, String, String)> = resources["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["accountId"], ACCOUNT);
            assert!(r["action"]["reason"].as_str().is_some_and(|w| w.contains("newest")), "{r}");
            (
                r["resourceId"].as_str().unwrap().to_owned(),
                r["action"]["name"].as_str().unwrap().to_owned(),
                r["state"]["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    acted.sort();
    let expected = [(&web[0], "DELETE"), (&web[1], "DEPRECATE"), (&web[2], "DEPRECATE")]
        .map(|(a, action)| (a.clone(), action.to_owned(), "SUCCESS".to_owned()));
    assert_eq!(acted, expected);
    let page = env
        .ok("POST", "/ListLifecycleExecutionResources", json!({"lifecycleExecutionId": id, "maxResults": 2}))
        .await;
    assert_eq!(page["resources"].as_array().unwrap().len(), 2);
    assert!(page["nextToken"].is_string());

    // The policy says when it last ran.
    let arn = policy_arn("retention");
    let got =
        env.ok("GET", &format!("/GetLifecyclePolicy?lifecyclePolicyArn={}", enc(&arn)), Value::Null).await;
    assert!(got["lifecyclePolicy"]["dateLastRun"].is_string(), "{got}");

    // Runs are synchronous: nothing to cancel.
    let cancel = json!({"lifecycleExecutionId": id, "clientToken": "c1"});
    assert_eq!(env.err("PUT", "/CancelLifecycleExecution", cancel).await, "ResourceInUseException");

    // Another account sees no execution.
    let other = env.user("other", OTHER, ADMIN).await;
    let get = format!("/GetLifecycleExecution?lifecycleExecutionId={id}");
    assert_eq!(failure(&env, &other, "GET", &get, Value::Null).await.0, "ResourceNotFoundException");
    let list = json!({"lifecycleExecutionId": id});
    let code = failure(&env, &other, "POST", "/ListLifecycleExecutionResources", list).await.0;
    assert_eq!(code, "ResourceNotFoundException");
    let list = json!({"resourceArn": arn});
    assert_eq!(
        failure(&env, &other, "POST", "/ListLifecycleExecutions", list).await.0,
        "ResourceNotFoundException"
    );

    // Due again only once the interval has passed since dateLastRun; a second run changes
    // nothing more.
    let day = std::time::Duration::from_secs(24 * 3600);
    let early =
        kiln_server::run_due_lifecycle_policies(&env.server, now + time::Duration::hours(1), day).await;
    assert!(early.unwrap().is_empty());
    let late = kiln_server::run_due_lifecycle_policies(&env.server, now + time::Duration::hours(25), day)
        .await
        .unwrap();
    assert_eq!(late.len(), 1);
    assert_eq!((late[0].state, late[0].changed.len()), (LifecycleExecutionState::Success, 0));
    let listed = env.ok("POST", "/ListLifecycleExecutions", json!({"resourceArn": arn})).await;
    let ids: Vec<&str> = listed["lifecycleExecutions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["lifecycleExecutionId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [late[0].execution_id.as_str(), id.as_str()], "newest first");
    assert_eq!(listed["lifecycleExecutions"][0]["resourcesImpactedSummary"]["hasImpactedResources"], false);
    assert_eq!(state_of(&env, &web[3]).await, ImageState::Available);
}
