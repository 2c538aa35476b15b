use super::*;

const IMAGE: &str = "arn:aws:imagebuilder:eu-west-3:123456789012:image/web/1.0.0/4";
const PIPELINE: &str = "arn:aws:imagebuilder:eu-west-3:123456789012:image-pipeline/web";
const COMPONENT: &str = "arn:aws:imagebuilder:eu-west-3:123456789012:component/hello/1.0.0/1";
const OTHER_ACCOUNT_IMAGE: &str = "arn:aws:imagebuilder:eu-west-3:999999999999:image/web/1.0.0/4";

fn policy(text: &str) -> Policy {
    Policy::parse("p", text).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_error(text: &str) -> PolicyError {
    Policy::parse("p", text).unwrap_err()
}

fn example(name: &str) -> Policy {
    let path = format!("{}/../../examples/policies/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    Policy::parse(name, &text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn allowed(policies: &[Policy], action: &str, resource: &str) -> bool {
    evaluate(policies, action, resource).is_allowed()
}

#[test]
fn statement_as_object_or_array_action_as_string_or_array() {
    let single = policy(
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"imagebuilder:GetImage","Resource":"*"}}"#,
    );
    assert!(allowed(&[single], "imagebuilder:GetImage", IMAGE));
    let list = policy(
        r#"{"Statement":[{"Effect":"Allow","Action":["imagebuilder:GetImage","imagebuilder:ListImages"],"Resource":["*"]}]}"#,
    );
    assert!(allowed(std::slice::from_ref(&list), "imagebuilder:ListImages", "*"));
    assert!(!allowed(&[list], "imagebuilder:DeleteImage", IMAGE));
}

#[test]
fn explicit_deny_wins_over_allow_in_any_order_and_any_policy() {
    let allow = policy(r#"{"Statement":{"Sid":"All","Effect":"Allow","Action":"*","Resource":"*"}}"#);
    let deny = Policy::parse(
        "no-delete",
        r#"{"Statement":[{"Effect":"Allow","Action":"imagebuilder:Get*","Resource":"*"},
            {"Sid":"NoDelete","Effect":"Deny","Action":"imagebuilder:Delete*","Resource":"*"}]}"#,
    )
    .unwrap();
    for policies in [vec![allow.clone(), deny.clone()], vec![deny.clone(), allow.clone()]] {
        let decision = evaluate(&policies, "imagebuilder:DeleteImage", IMAGE);
        assert_eq!(
            decision,
            Decision::ExplicitlyDenied(DecidingStatement {
                policy: "no-delete".into(),
                index: 1,
                sid: Some("NoDelete".into())
            })
        );
    }
    let decision = evaluate(&[allow, deny], "imagebuilder:GetImage", IMAGE);
    assert_eq!(
        decision,
        Decision::Allowed(DecidingStatement { policy: "p".into(), index: 0, sid: Some("All".into()) })
    );
}

#[test]
fn nothing_allowed_is_an_implicit_deny() {
    assert_eq!(evaluate(&[], "imagebuilder:GetImage", IMAGE), Decision::ImplicitlyDenied);
    let p = policy(r#"{"Statement":{"Effect":"Deny","Action":"imagebuilder:Delete*","Resource":"*"}}"#);
    assert_eq!(evaluate(&[p], "imagebuilder:GetImage", IMAGE), Decision::ImplicitlyDenied);
}

#[test]
fn actions_match_case_insensitively_with_wildcards() {
    let p = policy(
        r#"{"Statement":{"Effect":"Allow","Action":["IMAGEBUILDER:get*","imagebuilder:List?mages"],"Resource":"*"}}"#,
    );
    let ps = [p];
    assert!(allowed(&ps, "imagebuilder:GetImage", IMAGE));
    assert!(allowed(&ps, "ImageBuilder:GETCOMPONENT", COMPONENT));
    assert!(allowed(&ps, "imagebuilder:ListImages", "*"));
    assert!(!allowed(&ps, "imagebuilder:ListImagesX", "*"));
    assert!(!allowed(&ps, "imagebuilder:ListComponents", "*"));
    assert!(!allowed(&ps, "ec2:GetImage", "*"));
}

#[test]
fn resources_match_case_sensitively_segment_by_segment() {
    let p = policy(
        r#"{"Statement":{"Effect":"Allow","Action":"imagebuilder:*","Resource":"arn:aws:imagebuilder:*:123456789012:image/web/*"}}"#,
    );
    let ps = [p];
    assert!(allowed(&ps, "imagebuilder:GetImage", IMAGE));
    assert!(!allowed(&ps, "imagebuilder:GetImage", OTHER_ACCOUNT_IMAGE));
    assert!(!allowed(&ps, "imagebuilder:GetImage", &IMAGE.replace("web", "Web")));
    assert!(!allowed(&ps, "imagebuilder:GetImage", PIPELINE));
    // An operation on no particular resource is checked against "*", which an ARN pattern
    // does not cover (as in IAM: such actions need "Resource": "*").
    assert!(!allowed(&ps, "imagebuilder:ListImages", "*"));

    // A wildcard in the region does not swallow the account (a whole-string match would).
    let p = policy(
        r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"arn:aws:imagebuilder:*:123456789012:*"}}"#,
    );
    let tricky = "arn:aws:imagebuilder:eu-west-3:999999999999:123456789012:x";
    assert!(!allowed(&[p], "imagebuilder:GetImage", tricky));
}

#[test]
fn not_action_and_not_resource() {
    let p = policy(
        r#"{"Statement":[
            {"Effect":"Allow","NotAction":"imagebuilder:Delete*","Resource":"*"},
            {"Effect":"Deny","Action":"*","NotResource":"arn:aws:imagebuilder:*:123456789012:*"}]}"#,
    );
    let ps = [p];
    assert!(allowed(&ps, "imagebuilder:GetImage", IMAGE));
    assert!(!allowed(&ps, "imagebuilder:DeleteImage", IMAGE));
    assert_eq!(
        evaluate(&ps, "imagebuilder:GetImage", OTHER_ACCOUNT_IMAGE),
        Decision::ExplicitlyDenied(DecidingStatement { policy: "p".into(), index: 1, sid: None })
    );
}

#[test]
fn glob_edge_cases() {
    assert!(glob("*", "", false));
    assert!(glob("", "", false));
    assert!(!glob("", "a", false));
    assert!(glob("a*b*c", "aXbYbZc", false));
    assert!(!glob("a*b*c", "aXbYbZ", false));
    assert!(glob("?*", "é", false));
    assert!(!glob("??", "é", false));
    assert!(glob("*a", "aaaa", false));
    // No exponential blow-up on pathological patterns.
    let text = "a".repeat(5000);
    assert!(!glob(&format!("{}b", "*a".repeat(50)), &text, false));
}

#[test]
fn parse_errors_name_the_path() {
    let cases = [
        ("[]", "$", "JSON object"),
        ("{", "$", "not JSON"),
        (r#"{"Version":"2012-10-17"}"#, "$", "Statement element is required"),
        (r#"{"Version":"2020-01-01","Statement":[]}"#, "$.Version", "2012-10-17"),
        (r#"{"Statement":[]}"#, "$.Statement", "at least one"),
        (r#"{"Statement":"x"}"#, "$.Statement", "object or an array"),
        (r#"{"statement":[]}"#, "$.statement", "case-sensitive"),
        (
            r#"{"Statement":[{"Effect":"allow","Action":"*","Resource":"*"}]}"#,
            "$.Statement[0].Effect",
            "case-sensitive",
        ),
        (r#"{"Statement":[{"Action":"*","Resource":"*"}]}"#, "$.Statement[0]", "Effect element is required"),
        (r#"{"Statement":[{"Effect":"Allow","Resource":"*"}]}"#, "$.Statement[0]", "Action or NotAction"),
        (
            r#"{"Statement":[{"Effect":"Allow","Action":"*","NotAction":"*","Resource":"*"}]}"#,
            "$.Statement[0]",
            "cannot both",
        ),
        (r#"{"Statement":[{"Effect":"Allow","Action":"*"}]}"#, "$.Statement[0]", "Resource or NotResource"),
        (
            r#"{"Statement":[{"Effect":"Allow","Action":["imagebuilder:Get*",3],"Resource":"*"}]}"#,
            "$.Statement[0].Action[1]",
            "must be a string",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Action":[],"Resource":"*"}]}"#,
            "$.Statement[0].Action",
            "empty",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Action":"GetImage","Resource":"*"}]}"#,
            "$.Statement[0].Action",
            "service:Action",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Action":"imagebuilder:Get Image","Resource":"*"}]}"#,
            "$.Statement[0].Action",
            "service:Action",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Action":"*","Resource":"image/*"}]}"#,
            "$.Statement[0].Resource",
            "ARN",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Action":"*","Resource":"*"},{"Effect":"Allow","Action":"*","Resource":"*","Condition":{}}]}"#,
            "$.Statement[1].Condition",
            "not supported",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}]}"#,
            "$.Statement[0].Principal",
            "resource policies",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Action":"*","Resource":"arn:aws:imagebuilder:*:*:image/${aws:username}"}]}"#,
            "$.Statement[0].Resource",
            "policy variables",
        ),
        (
            r#"{"Statement":[{"Sid":1,"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
            "$.Statement[0].Sid",
            "string",
        ),
    ];
    for (text, path, message) in cases {
        let err = parse_error(text);
        assert_eq!(err.path, path, "{text}: {err}");
        assert!(err.message.contains(message), "{text}: {err}");
    }
}

#[test]
fn denial_messages_read_like_aws() {
    let user = "arn:aws:iam::123456789012:user/ana";
    let implicit = Decision::ImplicitlyDenied.denial_message(user, "imagebuilder:DeleteImage", IMAGE);
    assert_eq!(
        implicit,
        format!(
            "User: {user} is not authorized to perform: imagebuilder:DeleteImage on resource: \
             {IMAGE} because no identity-based policy allows the imagebuilder:DeleteImage action"
        )
    );
    let explicit = Decision::ExplicitlyDenied(DecidingStatement {
        policy: "operator".into(),
        index: 3,
        sid: Some("NeverDelete".into()),
    })
    .denial_message(user, "imagebuilder:DeleteImage", IMAGE);
    assert!(explicit.ends_with(
        "with an explicit deny in an identity-based policy (policy operator statement 3 (NeverDelete))"
    ));
}

#[test]
fn garbage_never_panics() {
    let pieces = [
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"Statement\"",
        "\"Effect\"",
        "\"Allow\"",
        "\"Deny\"",
        "\"Action\"",
        "\"*\"",
        "\"Resource\"",
        "\"arn:aws:x:::*\"",
        "1",
        "null",
        "\"\"",
        "\"NotAction\"",
        "\"a:b\"",
        "\"Version\"",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..5000 {
        let text: String = (0..12)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                pieces[(seed % pieces.len() as u64) as usize]
            })
            .collect();
        if let Ok(p) = Policy::parse("g", &text) {
            let _ = evaluate(&[p], "imagebuilder:GetImage", IMAGE);
        }
    }
}

#[test]
fn example_pipeline_operator() {
    let ps = [example("pipeline-operator")];
    assert!(allowed(&ps, "imagebuilder:GetImage", IMAGE));
    assert!(allowed(&ps, "imagebuilder:ListImagePipelines", "*"));
    assert!(allowed(&ps, "imagebuilder:StartImagePipelineExecution", PIPELINE));
    assert!(allowed(&ps, "imagebuilder:CancelImageCreation", IMAGE));
    assert!(allowed(&ps, "imagebuilder:RetryImage", IMAGE));
    // Not in another account, not on another resource type.
    assert!(!allowed(
        &ps,
        "imagebuilder:StartImagePipelineExecution",
        &PIPELINE.replace("123456789012", "999999999999")
    ));
    assert!(!allowed(&ps, "imagebuilder:CancelImageCreation", PIPELINE));
    // Never delete or share, never create what pipelines consume.
    assert!(matches!(
        evaluate(&ps, "imagebuilder:DeleteImage", IMAGE),
        Decision::ExplicitlyDenied(DecidingStatement { index: 3, .. })
    ));
    assert!(!allowed(&ps, "imagebuilder:PutImagePolicy", IMAGE));
    assert!(!allowed(&ps, "imagebuilder:CreateComponent", "*"));
    assert!(!allowed(&ps, "imagebuilder:CreateImagePipeline", "*"));
}

#[test]
fn example_read_only_auditor() {
    let auditor = example("read-only-auditor");
    let ps = [auditor.clone()];
    for action in ["GetImage", "GetComponent", "GetImagePolicy", "GetLifecycleExecution"] {
        assert!(allowed(&ps, &format!("imagebuilder:{action}"), IMAGE), "{action}");
    }
    for action in ["ListImages", "ListImageScanFindings", "ListTagsForResource"] {
        assert!(allowed(&ps, &format!("imagebuilder:{action}"), "*"), "{action}");
    }
    for action in ["CreateImage", "TagResource", "DeleteComponent", "StartImagePipelineExecution"] {
        assert!(!allowed(&ps, &format!("imagebuilder:{action}"), IMAGE), "{action}");
    }
    // The NotAction deny keeps the auditor read-only even with an admin policy attached.
    let admin = policy(r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}"#);
    assert!(matches!(
        evaluate(&[admin, auditor], "imagebuilder:DeleteImage", IMAGE),
        Decision::ExplicitlyDenied(DecidingStatement { index: 1, .. })
    ));
}

#[test]
fn example_build_worker() {
    let ps = [example("build-worker")];
    assert!(allowed(&ps, "imagebuilder:GetComponent", COMPONENT));
    assert!(allowed(
        &ps,
        "imagebuilder:GetImageRecipe",
        "arn:aws:imagebuilder:eu-west-3:123456789012:image-recipe/web/1.0.0"
    ));
    assert!(allowed(&ps, "imagebuilder:ListComponentBuildVersions", "*"));
    assert!(allowed(&ps, "imagebuilder:SendWorkflowStepAction", IMAGE));
    assert!(!allowed(&ps, "imagebuilder:GetComponent", &COMPONENT.replace("123456789012", "999999999999")));
    for action in
        ["CreateComponent", "DeleteImage", "UpdateImagePipeline", "PutComponentPolicy", "ListImages"]
    {
        assert!(!allowed(&ps, &format!("imagebuilder:{action}"), IMAGE), "{action}");
    }
}
