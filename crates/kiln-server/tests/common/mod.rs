//! What the server's integration tests share: a server over a temporary home with an admin
//! user, and requests signed as the SDKs sign them.
#![allow(dead_code)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::BodyExt;
use kiln_api::server::{ServerConfig, router};
use kiln_api::sigv4::{SigningParams, sign};
use kiln_server::{NewUserKey, Server};
use serde_json::{Value, json};
use tower::ServiceExt;

pub const ADMIN: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"imagebuilder:*","Resource":"*"}]}"#;
pub const NO_RECIPES: &str = r#"{"Version":"2012-10-17","Statement":[
  {"Effect":"Allow","Action":"imagebuilder:*","Resource":"*"},
  {"Sid":"NoRecipes","Effect":"Deny","Action":"imagebuilder:CreateImageRecipe","Resource":"*"}]}"#;

pub const DOC: &str = "name: hello\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Write\n        action: CreateFile\n        inputs:\n          - path: /etc/hello\n            content: hi\n";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub server: Server,
    pub app: Router,
    pub admin: NewUserKey,
}

impl Env {
    pub async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::open(dir.path()).await.unwrap();
        let admin = kiln_server::create_user(&server, "admin", "111122223333", "admin", ADMIN).await.unwrap();
        let app = router(ServerConfig::default(), Arc::new(server.clone()), Arc::new(server.clone()));
        Env { dir, server, app, admin }
    }

    pub async fn user(&self, name: &str, account: &str, policy: &str) -> NewUserKey {
        kiln_server::create_user(&self.server, name, account, name, policy).await.unwrap()
    }

    /// `(status, x-amzn-ErrorType, body)`.
    pub async fn send(
        &self,
        key: &NewUserKey,
        method: &str,
        path: &str,
        body: Value,
    ) -> (u16, String, Value) {
        let request = signed(key, "localhost", method, path, &body);
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let code = response
            .headers()
            .get("x-amzn-errortype")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub async fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, code, out) = self.send(&self.admin, method, path, body).await;
        assert_eq!(status, 200, "{method} {path}: {code} {out}");
        out
    }

    pub async fn err(&self, method: &str, path: &str, body: Value) -> String {
        let (status, code, out) = self.send(&self.admin, method, path, body).await;
        assert_ne!(status, 200, "{method} {path} succeeded: {out}");
        assert!(out["message"].as_str().is_some_and(|m| !m.is_empty()), "{out}");
        code
    }

    pub async fn component(&self, name: &str, version: &str) -> String {
        let out = self
            .ok("PUT", "/CreateComponent", json!({"name": name, "semanticVersion": version, "platform": "Linux", "data": DOC, "clientToken": format!("{name}-{version}")}))
            .await;
        out["componentBuildVersionArn"].as_str().unwrap().to_owned()
    }

    /// A recipe, configurations and a pipeline; returns the pipeline's ARN.
    pub async fn pipeline(&self, name: &str) -> String {
        self.pipeline_with(name, json!({})).await
    }

    /// [`Env::pipeline`] with more members of CreateImagePipeline (`schedule`, `tags`...).
    pub async fn pipeline_with(&self, name: &str, extra: Value) -> String {
        let component = self.component(&format!("{name}-c"), "1.0.0").await;
        let recipe = self
            .ok(
                "PUT",
                "/CreateImageRecipe",
                json!({"name": name, "semanticVersion": "1.0.0", "parentImage": "debian-12-x86",
                "components": [{"componentArn": component}], "clientToken": format!("r-{name}")}),
            )
            .await["imageRecipeArn"]
            .clone();
        let infra = self
            .ok(
                "PUT",
                "/CreateInfrastructureConfiguration",
                json!({"name": name, "instanceProfileName": "none", "clientToken": format!("i-{name}")}),
            )
            .await["infrastructureConfigurationArn"]
            .clone();
        let dist = self
            .ok("PUT", "/CreateDistributionConfiguration", json!({"name": name, "distributions": [{"region": "local"}], "clientToken": format!("d-{name}")}))
            .await["distributionConfigurationArn"]
            .clone();
        let mut input = json!({"name": name, "imageRecipeArn": recipe, "infrastructureConfigurationArn": infra,
            "distributionConfigurationArn": dist, "imageTestsConfiguration": {"imageTestsEnabled": false}, "clientToken": format!("p-{name}")});
        if let (Some(i), Value::Object(more)) = (input.as_object_mut(), extra) {
            i.extend(more);
        }
        let out = self.ok("PUT", "/CreateImagePipeline", input).await;
        out["imagePipelineArn"].as_str().unwrap().to_owned()
    }
}

pub fn enc(arn: &str) -> String {
    arn.replace(':', "%3A").replace('/', "%2F")
}

/// A request to `path` signed with `key` for `host`, as the SDKs sign (an empty body for a
/// null one).
pub fn signed(key: &NewUserKey, host: &str, method: &str, path: &str, body: &Value) -> Request<Body> {
    let body = if body.is_null() { String::new() } else { body.to_string() };
    let method: Method = method.parse().unwrap();
    let uri: Uri = path.parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_str(host).unwrap());
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let params = SigningParams {
        access_key_id: &key.access_key_id,
        secret_access_key: &key.secret_access_key,
        region: "local",
        service: "imagebuilder",
        time: chrono::Utc::now(),
    };
    sign(&method, &uri, &mut headers, body.as_bytes(), &params).unwrap();
    let mut request = Request::builder().method(method).uri(uri).body(Body::from(body)).unwrap();
    *request.headers_mut() = headers;
    request
}

/// A new image `name`/1.0.0 of `account` with an empty recipe, as the store records it (PENDING).
pub fn new_image(name: &str, account: &str) -> kiln_store::NewImage {
    kiln_store::NewImage {
        name: name.into(),
        version: "1.0.0".parse().unwrap(),
        region: "local".into(),
        account: account.into(),
        recipe: json!({}),
        tags: Default::default(),
    }
}

/// The value of the sample `sample` (name and labels, as in `kiln_images{state="BUILDING"}`)
/// in a Prometheus text page, if it is there.
pub fn sample_value(text: &str, sample: &str) -> Option<f64> {
    let prefix = format!("{sample} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.parse().unwrap())
}
