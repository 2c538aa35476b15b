//! S3Download and S3Upload, through the `object_store` crate.
//!
//! Where S3 is and who kiln is there come from environment variables, looked up first in the
//! step's environment (`ActionContext::env`) and then in kiln's own process environment:
//!
//! | variable | use |
//! | --- | --- |
//! | `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`) | an S3-compatible endpoint instead of AWS (`http://` is allowed) |
//! | `AWS_REGION`, `AWS_DEFAULT_REGION` | the region (default `us-east-1`) |
//! | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` | static credentials; without them object_store asks the instance metadata service, as on EC2 |
//!
//! Requests use path-style addressing. `expectedBucketOwner` is sent as the
//! `x-amz-expected-bucket-owner` header, so S3 itself refuses a bucket of another account.
//! The async client runs on a small current-thread tokio runtime inside the module.
//!
//! S3Download: `source` is one object (`s3://bucket/key`) or a key prefix ending in `/*`,
//! whose objects are written below `destination` keeping the key path after the prefix.
//! Missing folders are created (AWSTOE's documentation says they must exist, but published
//! components download into folders no step created); `overwrite` defaults to true. Each
//! object streams into `FILE.kiln-download` and is renamed into place when complete.
//!
//! S3Upload: `source` is a file, a folder (needs `recurse: true`; its content goes below the
//! destination prefix, as `aws s3 cp --recursive` does), or `folder/pattern*` (the matching
//! files, and with `recurse` the matching folders' trees). A `destination` ending with `/` is a
//! key prefix to which the file names are appended.

use std::time::Duration;

use futures_util::StreamExt;
use kiln_host::{FileKind, WriteMode};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use super::net::no_network;
use super::util::{
    Checker, Field, Item, Ty, file_name, glob_match, has_expr, host_fail, items, join, kind_of, names_folder,
    opt, parent, req, resolve, split_wildcard, walk,
};
use super::{ActionContext, ActionFailure, ActionModule, ActionOutcome};
use crate::diag::Diagnostic;
use crate::node::{Node, Span};

/// A variable from the step's environment, else from kiln's.
fn env_var(ctx: &ActionContext<'_>, name: &str) -> Option<String> {
    ctx.env
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var(name).ok())
        .filter(|v| !v.is_empty())
}

/// `s3://bucket/key` → (bucket, key).
pub(crate) fn parse_s3_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("s3://").or_else(|| uri.strip_prefix("S3://"))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then_some((bucket, key))
}

fn store(ctx: &ActionContext<'_>, bucket: &str, expected_owner: Option<&str>) -> Result<AmazonS3, String> {
    let region = env_var(ctx, "AWS_REGION")
        .or_else(|| env_var(ctx, "AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(region)
        .with_virtual_hosted_style_request(false)
        .with_retry(RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
            backoff: Default::default(),
        });
    let mut options = ClientOptions::new();
    if let Some(ep) = env_var(ctx, "AWS_ENDPOINT_URL_S3")
        .or_else(|| env_var(ctx, "AWS_ENDPOINT_URL"))
        .or_else(|| env_var(ctx, "AWS_ENDPOINT"))
    {
        if ep.starts_with("http://") {
            options = options.with_allow_http(true);
        }
        b = b.with_endpoint(ep);
    }
    if let (Some(id), Some(secret)) =
        (env_var(ctx, "AWS_ACCESS_KEY_ID"), env_var(ctx, "AWS_SECRET_ACCESS_KEY"))
    {
        b = b.with_access_key_id(id).with_secret_access_key(secret);
        if let Some(token) = env_var(ctx, "AWS_SESSION_TOKEN") {
            b = b.with_token(token);
        }
    }
    if let Some(owner) = expected_owner {
        let mut headers = object_store::HeaderMap::new();
        let value = object_store::HeaderValue::from_str(owner)
            .map_err(|_| format!("`expectedBucketOwner` {owner} is not a valid account id"))?;
        headers.insert("x-amz-expected-bucket-owner", value);
        options = options.with_default_headers(headers);
    }
    if let Some(t) = ctx.timeout {
        options = options.with_timeout(t);
    }
    b.with_client_options(options).build().map_err(|e| e.to_string())
}

/// Fetch one object, for ExecuteDocument's `s3://` document paths.
pub(crate) fn get_object(
    ctx: &ActionContext<'_>,
    uri: &str,
    expected_owner: Option<&str>,
) -> Result<Vec<u8>, String> {
    let (bucket, key) = parse_s3_uri(uri).ok_or_else(|| format!("`{uri}` is not an s3://bucket/key URI"))?;
    if key.is_empty() {
        return Err(format!("`{uri}` names a bucket but no object"));
    }
    let s3 = store(ctx, bucket, expected_owner)?;
    let rt = runtime("ExecuteDocument").map_err(|f| f.message)?;
    rt.block_on(async {
        let got = s3
            .get(&object_store::path::Path::from(key))
            .await
            .map_err(|e| format!("cannot download {uri}: {e}"))?;
        got.bytes().await.map(|b| b.to_vec()).map_err(|e| format!("cannot download {uri}: {e}"))
    })
}

fn runtime(who: &str) -> Result<tokio::runtime::Runtime, ActionFailure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ActionFailure::msg(format!("{who}: cannot start the S3 client runtime: {e}")))
}

fn check_s3_items(
    module: &'static str,
    fields: &[Field],
    s3_key: &str,
    file: &str,
    step_span: Span,
    inputs: Option<&Node>,
    diags: &mut Vec<Diagnostic>,
) {
    let mut c = Checker { file, module, diags };
    for item in c.list_of_items(step_span, inputs, fields) {
        if let Some(n) = item.get(s3_key)
            && let Some(s) = n.as_str().filter(|s| !has_expr(s))
            && parse_s3_uri(s).is_none()
        {
            c.err(
                n.span,
                format!("{module} `{s3_key}` must be an S3 URI like s3://bucket/key, found `{s}`"),
                None,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct S3Download;

const DOWNLOAD_FIELDS: &[Field] = &[
    req("source", Ty::Str),
    req("destination", Ty::Str),
    opt("expectedBucketOwner", Ty::Str),
    opt("overwrite", Ty::Bool),
];

async fn download_object(
    ctx: &ActionContext<'_>,
    item: &Item<'_>,
    s3: &AmazonS3,
    key: &ObjectPath,
    uri: &str,
    dest: &str,
    overwrite: bool,
) -> Result<(), ActionFailure> {
    match kind_of(ctx.host, dest).map_err(|e| host_fail(&item.who(), "inspect", dest, &e))? {
        Some(FileKind::Dir) => {
            return Err(item.fail(format!("a folder exists at {dest}; cannot download {uri} over it")));
        }
        Some(_) if !overwrite => {
            return Err(item.fail(format!(
                "{dest} already exists and `overwrite` is false for this destination; cannot download {uri}"
            )));
        }
        _ => {}
    }
    if let Some(p) = parent(dest) {
        ctx.host.create_dir_all(p, None).map_err(|e| host_fail(&item.who(), "create the folder", p, &e))?;
    }
    let part = format!("{dest}.kiln-download");
    let result = async {
        let got = s3.get(key).await.map_err(|e| item.fail(format!("cannot download {uri}: {e}")))?;
        ctx.host
            .write_file(&part, b"", WriteMode::Truncate, None)
            .map_err(|e| host_fail(&item.who(), "write", &part, &e))?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| item.fail(format!("downloading {uri} broke off: {e}")))?;
            ctx.host
                .write_file(&part, &chunk, WriteMode::Append, None)
                .map_err(|e| host_fail(&item.who(), "write", &part, &e))?;
        }
        ctx.host
            .rename(&part, dest)
            .map_err(|e| host_fail(&item.who(), "move the download into place at", dest, &e))
    }
    .await;
    if result.is_err() {
        let _ = ctx.host.remove_file(&part);
    }
    result
}

impl ActionModule for S3Download {
    fn name(&self) -> &'static str {
        "S3Download"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check_s3_items(self.name(), DOWNLOAD_FIELDS, "source", file, step_span, inputs, diags);
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        let items = items(self.name(), inputs)?;
        if !ctx.host.network_allowed() {
            let src = items.first().and_then(|i| i.str_opt("source").ok().flatten()).unwrap_or("from S3");
            return Err(no_network(self.name(), &format!("download {src}")));
        }
        let rt = runtime(self.name())?;
        for item in &items {
            let source = item.str_req("source")?;
            let dest_raw = item.str_req("destination")?;
            let overwrite = item.bool_or("overwrite", true)?;
            let (bucket, key) = parse_s3_uri(source).ok_or_else(|| {
                item.fail(format!("`source` must be an S3 URI like s3://bucket/key, found `{source}`"))
            })?;
            let s3 = store(ctx, bucket, item.str_opt("expectedBucketOwner")?.filter(|s| !s.is_empty()))
                .map_err(|e| item.fail(format!("cannot set up the S3 client: {e}")))?;
            rt.block_on(async {
                if let Some(prefix) = key.strip_suffix('*') {
                    let prefix = prefix.trim_end_matches('/');
                    let dest_dir = resolve(ctx, dest_raw);
                    let list_prefix = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
                    let mut listing = s3.list(list_prefix.as_ref());
                    let mut keys = Vec::new();
                    while let Some(meta) = listing.next().await {
                        let meta = meta.map_err(|e| item.fail(format!("cannot list {source}: {e}")))?;
                        keys.push(meta.location);
                    }
                    if keys.is_empty() {
                        return Err(item.fail(format!("no objects under {source}; check the bucket and prefix")));
                    }
                    for k in keys {
                        let rel = k.as_ref().strip_prefix(prefix).unwrap_or(k.as_ref()).trim_start_matches('/').to_string();
                        let dest = if rel.is_empty() { join(&dest_dir, file_name(k.as_ref())) } else { join(&dest_dir, &rel) };
                        let uri = format!("s3://{bucket}/{}", k.as_ref());
                        download_object(ctx, item, &s3, &k, &uri, &dest, overwrite).await?;
                    }
                    Ok(())
                } else {
                    if key.is_empty() || key.ends_with('/') {
                        return Err(item.fail(format!(
                            "`source` {source} names no object; end a key prefix with `/*` to download everything under it"
                        )));
                    }
                    let dest = if names_folder(dest_raw) { join(&resolve(ctx, dest_raw), file_name(key)) } else { resolve(ctx, dest_raw) };
                    download_object(ctx, item, &s3, &ObjectPath::from(key), source, &dest, overwrite).await
                }
            })?;
        }
        Ok(ActionOutcome::default())
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct S3Upload;

const UPLOAD_FIELDS: &[Field] = &[
    req("source", Ty::Str),
    req("destination", Ty::Str),
    opt("recurse", Ty::Bool),
    opt("expectedBucketOwner", Ty::Str),
];

/// (file in the image, key) pairs for one S3Upload item.
fn upload_plan(
    ctx: &ActionContext<'_>,
    item: &Item<'_>,
    source: &str,
    dest_key: &str,
    recurse: bool,
) -> Result<Vec<(String, String)>, ActionFailure> {
    let prefix_of = |k: &str| if k.is_empty() || k.ends_with('/') { k.to_string() } else { format!("{k}/") };
    let tree = |dir: &str, key_prefix: &str| -> Result<Vec<(String, String)>, ActionFailure> {
        let mut all = Vec::new();
        walk(ctx.host, dir, &mut all).map_err(|e| host_fail(&item.who(), "list", dir, &e))?;
        Ok(all
            .into_iter()
            .filter(|(_, k)| *k == FileKind::File)
            .map(|(p, _)| {
                let rel = p.strip_prefix(dir).unwrap_or(&p).trim_start_matches('/').to_string();
                (p, format!("{key_prefix}{rel}"))
            })
            .collect())
    };
    if let Some((dir, pattern)) = split_wildcard(source) {
        let dir = resolve(ctx, if dir.is_empty() { "." } else { dir });
        let prefix = prefix_of(dest_key);
        let mut entries = ctx.host.list_dir(&dir).map_err(|e| host_fail(&item.who(), "list", &dir, &e))?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = Vec::new();
        for e in entries.into_iter().filter(|e| glob_match(pattern, &e.name)) {
            let p = join(&dir, &e.name);
            match e.kind {
                FileKind::File => out.push((p, format!("{prefix}{}", e.name))),
                FileKind::Dir if recurse => out.extend(tree(&p, &format!("{prefix}{}/", e.name))?),
                _ => {}
            }
        }
        if out.is_empty() {
            return Err(item.fail(format!("no file in {dir} matches `{pattern}`")));
        }
        return Ok(out);
    }
    let path = resolve(ctx, source);
    match kind_of(ctx.host, &path).map_err(|e| host_fail(&item.who(), "inspect", &path, &e))? {
        None => Err(item.fail(format!("{path} does not exist"))),
        Some(FileKind::Dir) if !recurse => {
            Err(item.fail(format!("{path} is a folder; set recurse: true to upload it with its content")))
        }
        Some(FileKind::Dir) => tree(&path, &prefix_of(dest_key)),
        Some(_) => {
            let key = if dest_key.is_empty() || dest_key.ends_with('/') {
                format!("{dest_key}{}", file_name(&path))
            } else {
                dest_key.to_string()
            };
            Ok(vec![(path, key)])
        }
    }
}

impl ActionModule for S3Upload {
    fn name(&self) -> &'static str {
        "S3Upload"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check_s3_items(self.name(), UPLOAD_FIELDS, "destination", file, step_span, inputs, diags);
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        let items = items(self.name(), inputs)?;
        if !ctx.host.network_allowed() {
            let dest = items.first().and_then(|i| i.str_opt("destination").ok().flatten()).unwrap_or("to S3");
            return Err(no_network(self.name(), &format!("upload to {dest}")));
        }
        let rt = runtime(self.name())?;
        for item in &items {
            let source = item.str_req("source")?;
            let destination = item.str_req("destination")?;
            let recurse = item.bool_or("recurse", false)?;
            let (bucket, key) = parse_s3_uri(destination).ok_or_else(|| {
                item.fail(format!(
                    "`destination` must be an S3 URI like s3://bucket/prefix/, found `{destination}`"
                ))
            })?;
            let plan = upload_plan(ctx, item, source, key, recurse)?;
            let s3 = store(ctx, bucket, item.str_opt("expectedBucketOwner")?.filter(|s| !s.is_empty()))
                .map_err(|e| item.fail(format!("cannot set up the S3 client: {e}")))?;
            rt.block_on(async {
                for (file, key) in plan {
                    let data =
                        ctx.host.read_file(&file).map_err(|e| host_fail(&item.who(), "read", &file, &e))?;
                    s3.put(&ObjectPath::from(key.as_str()), data.into()).await.map_err(|e| {
                        item.fail(format!("cannot upload {file} to s3://{bucket}/{key}: {e}"))
                    })?;
                }
                Ok::<_, ActionFailure>(())
            })?;
        }
        Ok(ActionOutcome::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_uris() {
        assert_eq!(parse_s3_uri("s3://b/k/x.zip"), Some(("b", "k/x.zip")));
        assert_eq!(parse_s3_uri("s3://b"), Some(("b", "")));
        assert_eq!(parse_s3_uri("s3://b/p/*"), Some(("b", "p/*")));
        assert_eq!(parse_s3_uri("https://b/k"), None);
        assert_eq!(parse_s3_uri("s3:///k"), None);
    }
}
