//! Images in a store ("region"): content-addressed chunks, an index per image, a signed release.
//!
//! Layout under the target's prefix:
//!
//! ```text
//! chunks/AB/ABCDEF…            one object per distinct chunk (plaintext, or sealed)
//! keys/data-key.json           encrypted targets: the target's data key, wrapped by the keyring
//! images/NAME/VERSION/BUILD/index.json     artifacts: size, sha256, their chunks in order
//! images/NAME/VERSION/BUILD/manifest.json  the build's manifest, byte for byte
//! images/NAME/VERSION/BUILD/release.json   image, sha256 of index and manifest, store facts
//! images/NAME/VERSION/BUILD/release.sig    ed25519 over release.json: written last
//! ```
//!
//! Artifacts are cut with content-defined chunking (FastCDC), so a new version of a disk that
//! changed a few packages shares most chunks with the previous one and uploads only the rest;
//! an existing chunk is never uploaded again, which is also what makes an interrupted upload
//! resume. An image is visible only once `release.sig` exists, and that is written after every
//! other object, so a reader never sees a partial image. Reads check the signature, then every
//! digest (index, manifest, each chunk, each artifact): an altered or missing object is a
//! [`DistError::Tampered`] naming it.
//!
//! Encrypted targets use one data key per target (AES-256-GCM), wrapped by a named keyring key
//! and kept in the store; each chunk is sealed with a random nonce and its object name is an
//! HMAC of its digest under the data key, so neither content nor plaintext digests are in the
//! store, and chunks still deduplicate within the target.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use hmac::{Hmac, Mac};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::DistError;
use crate::keys::{Keyring, Signature, WrappedKey};

/// FastCDC sizes: chunks of 256 KiB to 4 MiB, 1 MiB on average.
const MIN_CHUNK: u32 = 256 * 1024;
const AVG_CHUNK: u32 = 1024 * 1024;
const MAX_CHUNK: u32 = 4 * 1024 * 1024;
/// Attempts for each store operation; the waits between them grow 4x from 200 ms.
const ATTEMPTS: u32 = 4;

/// One store ("region") images are distributed to.
#[derive(Debug, Clone)]
pub struct Target {
    pub region: String,
    pub url: String,
    store: Arc<dyn ObjectStore>,
    /// The keyring key that wraps this target's data key; `None`: plaintext.
    pub key_name: Option<String>,
}

/// S3 settings for `s3://` targets; unset fields come from the `AWS_*` environment.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl Target {
    /// A target from its URL: `file:///DIR` (created when missing) or `s3://BUCKET[/PREFIX]`.
    pub fn open(
        region: &str,
        url: &str,
        key_name: Option<String>,
        s3: &S3Options,
    ) -> Result<Target, DistError> {
        let bad = |why: String| DistError::Store(format!("store URL `{url}` for region {region}: {why}"));
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|_| bad("not an absolute local path".into()))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(&dir)
                        .map_err(|e| bad(e.to_string()))?,
                )
            }
            "s3" => {
                let bucket = parsed.host_str().ok_or_else(|| bad("no bucket".into()))?;
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(e) = &s3.endpoint {
                    b = b
                        .with_endpoint(e)
                        .with_allow_http(e.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                if let Some(r) = &s3.region {
                    b = b.with_region(r);
                }
                if let (Some(k), Some(s)) = (&s3.access_key_id, &s3.secret_access_key) {
                    b = b.with_access_key_id(k).with_secret_access_key(s);
                }
                let s3 = b.build().map_err(|e| bad(e.to_string()))?;
                let prefix = parsed.path().trim_matches('/');
                if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
                }
            }
            other => return Err(bad(format!("unknown scheme `{other}` (use file:// or s3://)"))),
        };
        Ok(Target { region: region.into(), url: url.into(), store, key_name })
    }
}

/// Which image in a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    pub name: String,
    pub version: String,
    pub build: u32,
}

impl ImageRef {
    fn dir(&self) -> String {
        format!("images/{}/{}/{}", self.name, self.version, self.build)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkRef {
    /// The object name under `chunks/`.
    pub id: String,
    /// sha256 of the plaintext.
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactIndex {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub chunks: Vec<ChunkRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub format: String,
    /// The key name of an encrypted target.
    pub encrypted_with: Option<String>,
    pub artifacts: Vec<ArtifactIndex>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    pub image: ImageRef,
    pub region: String,
    pub index_sha256: String,
    pub manifest_sha256: String,
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushReport {
    pub region: String,
    pub chunks: usize,
    pub uploaded_chunks: usize,
    /// Plaintext bytes of the chunks uploaded now.
    pub uploaded_bytes: u64,
    /// Plaintext bytes of the artifacts.
    pub total_bytes: u64,
}

/// What a verification or a pull checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub region: String,
    pub artifacts: usize,
    pub chunks: usize,
    pub bytes: u64,
    /// The public key that signed the release (base64).
    pub signed_by: String,
}

fn obj(s: &str) -> ObjPath {
    ObjPath::from(s)
}

fn chunk_path(id: &str) -> ObjPath {
    obj(&format!("chunks/{}/{id}", &id[..2.min(id.len())]))
}

async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T, DistError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = object_store::Result<T>>,
{
    let mut wait = Duration::from_millis(200);
    for attempt in 1..=ATTEMPTS {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e @ object_store::Error::NotFound { .. }) => {
                return Err(DistError::NotFound(format!("{what}: {e}")));
            }
            Err(e) if attempt == ATTEMPTS => {
                return Err(DistError::Store(format!("{what}: {e} (after {ATTEMPTS} attempts)")));
            }
            Err(e) => {
                tracing::warn!("{what}: {e}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait *= 4;
            }
        }
    }
    unreachable!("the loop returns on its last attempt")
}

async fn get(store: &dyn ObjectStore, path: &ObjPath) -> Result<Bytes, DistError> {
    retry(&format!("reading {path}"), || async { store.get(path).await?.bytes().await }).await
}

async fn put(store: &dyn ObjectStore, path: &ObjPath, data: Bytes) -> Result<(), DistError> {
    retry(&format!("writing {path}"), || {
        let data = data.clone();
        async move { store.put(path, PutPayload::from_bytes(data)).await.map(|_| ()) }
    })
    .await
}

async fn exists(store: &dyn ObjectStore, path: &ObjPath) -> Result<bool, DistError> {
    match retry(&format!("looking for {path}"), || store.head(path)).await {
        Ok(_) => Ok(true),
        Err(DistError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// How chunks are named and sealed in one target.
#[derive(Clone)]
enum Sealer {
    Plain,
    Sealed { cipher: Box<Aes256Gcm>, mac_key: [u8; 32] },
}

impl Sealer {
    fn id(&self, sha256: &str) -> String {
        match self {
            Sealer::Plain => sha256.to_string(),
            Sealer::Sealed { mac_key, .. } => {
                let mut mac =
                    <Hmac<Sha256> as Mac>::new_from_slice(mac_key).expect("HMAC takes any key length");
                mac.update(sha256.as_bytes());
                hex::encode(mac.finalize().into_bytes())
            }
        }
    }

    fn seal(&self, id: &str, data: &[u8]) -> Result<Bytes, DistError> {
        match self {
            Sealer::Plain => Ok(Bytes::copy_from_slice(data)),
            Sealer::Sealed { cipher, .. } => {
                let mut nonce = [0u8; 12];
                OsRng.fill_bytes(&mut nonce);
                let sealed = cipher
                    .encrypt(Nonce::from_slice(&nonce), Payload { msg: data, aad: id.as_bytes() })
                    .map_err(|_| DistError::Key("sealing a chunk failed".into()))?;
                let mut out = nonce.to_vec();
                out.extend_from_slice(&sealed);
                Ok(Bytes::from(out))
            }
        }
    }

    fn open(&self, id: &str, data: &[u8]) -> Result<Vec<u8>, DistError> {
        match self {
            Sealer::Plain => Ok(data.to_vec()),
            Sealer::Sealed { cipher, .. } => {
                if data.len() < 12 {
                    return Err(DistError::Tampered(format!("chunk {id} is truncated")));
                }
                cipher
                    .decrypt(Nonce::from_slice(&data[..12]), Payload { msg: &data[12..], aad: id.as_bytes() })
                    .map_err(|_| {
                        DistError::Tampered(format!("chunk {id} does not decrypt: altered, or another key"))
                    })
            }
        }
    }
}

/// The target's sealer: for an encrypted target its data key, made and stored (wrapped) on
/// first use.
async fn sealer(target: &Target, keyring: &Keyring, create: bool) -> Result<Sealer, DistError> {
    let Some(name) = &target.key_name else { return Ok(Sealer::Plain) };
    let path = obj("keys/data-key.json");
    let data_key = match get(target.store.as_ref(), &path).await {
        Ok(bytes) => {
            let wrapped: WrappedKey = serde_json::from_slice(&bytes)
                .map_err(|e| DistError::Tampered(format!("keys/data-key.json does not read: {e}")))?;
            keyring.unwrap(&wrapped)?
        }
        Err(DistError::NotFound(_)) if create => {
            let mut dk = [0u8; 32];
            OsRng.fill_bytes(&mut dk);
            let wrapped = keyring.wrap(name, &dk)?;
            put(target.store.as_ref(), &path, Bytes::from(serde_json::to_vec(&wrapped).unwrap_or_default()))
                .await?;
            dk
        }
        Err(e) => return Err(e),
    };
    // Two keys from one: the cipher's, and the one that names chunks.
    let mut mac_key = [0u8; 32];
    mac_key.copy_from_slice(&Sha256::digest([b"kiln chunk names".as_slice(), &data_key].concat()));
    let cipher = Aes256Gcm::new_from_slice(&data_key)
        .map_err(|_| DistError::Key("a data key is not 32 bytes".into()))?;
    Ok(Sealer::Sealed { cipher: Box::new(cipher), mac_key })
}

/// Uploads the artifacts and the manifest of `image` to `target` and publishes them, signed.
/// Chunks already in the target are not uploaded again (that is also how a re-run resumes).
pub async fn push(
    target: &Target,
    keyring: &Keyring,
    image: &ImageRef,
    artifacts: &[PathBuf],
    manifest: &[u8],
    parallel: usize,
) -> Result<PushReport, DistError> {
    let store = target.store.as_ref();
    let sealer = sealer(target, keyring, true).await?;
    let mut report = PushReport { region: target.region.clone(), ..Default::default() };
    let mut index = Index {
        format: "kiln-index/1".into(),
        encrypted_with: target.key_name.clone(),
        artifacts: Vec::new(),
    };
    for path in artifacts {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| DistError::Io(format!("{} has no file name", path.display())))?;
        let file = std::fs::File::open(path)
            .map_err(|e| DistError::Io(format!("reading {}: {e}", path.display())))?;
        let mut whole = Sha256::new();
        let mut chunks = Vec::new();
        let mut size = 0u64;
        // Chunks are cut (and hashed) in order on this thread; uploads run `parallel` at once.
        let cut = fastcdc::v2020::StreamCDC::new(file, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK);
        let mut pending = Vec::new();
        for c in cut {
            let c = c.map_err(|e| DistError::Io(format!("reading {}: {e}", path.display())))?;
            whole.update(&c.data);
            size += c.length as u64;
            let sha = sha256_hex(&c.data);
            let id = sealer.id(&sha);
            chunks.push(ChunkRef { id: id.clone(), sha256: sha, size: c.length as u64 });
            pending.push((id, c.data));
            if pending.len() >= parallel.max(1) * 4 {
                upload(store, &sealer, std::mem::take(&mut pending), parallel, &mut report).await?;
            }
        }
        upload(store, &sealer, pending, parallel, &mut report).await?;
        report.total_bytes += size;
        report.chunks += chunks.len();
        index.artifacts.push(ArtifactIndex { name, size, sha256: hex::encode(whole.finalize()), chunks });
    }
    let dir = image.dir();
    let index_bytes = serde_json::to_vec_pretty(&index).unwrap_or_default();
    let release = Release {
        image: image.clone(),
        region: target.region.clone(),
        index_sha256: sha256_hex(&index_bytes),
        manifest_sha256: sha256_hex(manifest),
    };
    let release_bytes = serde_json::to_vec_pretty(&release).unwrap_or_default();
    let sig = crate::keys::sign(&keyring.signing_key()?, &release_bytes);
    put(store, &obj(&format!("{dir}/index.json")), Bytes::from(index_bytes)).await?;
    put(store, &obj(&format!("{dir}/manifest.json")), Bytes::copy_from_slice(manifest)).await?;
    put(store, &obj(&format!("{dir}/release.json")), Bytes::from(release_bytes)).await?;
    // Last: its presence is what makes the image visible.
    put(
        store,
        &obj(&format!("{dir}/release.sig")),
        Bytes::from(serde_json::to_vec_pretty(&sig).unwrap_or_default()),
    )
    .await?;
    Ok(report)
}

async fn upload(
    store: &dyn ObjectStore,
    sealer: &Sealer,
    batch: Vec<(String, Vec<u8>)>,
    parallel: usize,
    report: &mut PushReport,
) -> Result<(), DistError> {
    let done: Vec<Option<u64>> = stream::iter(batch)
        .map(|(id, data)| async move {
            let path = chunk_path(&id);
            if exists(store, &path).await? {
                return Ok::<_, DistError>(None);
            }
            let body = sealer.seal(&id, &data)?;
            put(store, &path, body).await?;
            Ok(Some(data.len() as u64))
        })
        .buffer_unordered(parallel.max(1))
        .try_collect()
        .await?;
    for d in done.into_iter().flatten() {
        report.uploaded_chunks += 1;
        report.uploaded_bytes += d;
    }
    Ok(())
}

/// Whether `image` is published (complete) in `target`.
pub async fn is_published(target: &Target, image: &ImageRef) -> Result<bool, DistError> {
    exists(target.store.as_ref(), &obj(&format!("{}/release.sig", image.dir()))).await
}

/// The release and index of `image`, with the signature and both digests checked.
async fn checked_release(
    target: &Target,
    image: &ImageRef,
    trusted: Option<&ed25519_dalek::VerifyingKey>,
) -> Result<(Index, Bytes, Signature), DistError> {
    let store = target.store.as_ref();
    let dir = image.dir();
    let missing = |e: DistError| match e {
        DistError::NotFound(_) => DistError::NotFound(format!(
            "image {}/{}/{} is not published in region {}",
            image.name, image.version, image.build, target.region
        )),
        e => e,
    };
    let sig_bytes = get(store, &obj(&format!("{dir}/release.sig"))).await.map_err(missing)?;
    let sig: Signature = serde_json::from_slice(&sig_bytes)
        .map_err(|e| DistError::Tampered(format!("{dir}/release.sig does not read: {e}")))?;
    let release_bytes =
        get(store, &obj(&format!("{dir}/release.json"))).await.map_err(tampered_if_missing)?;
    crate::keys::verify(&release_bytes, &sig, trusted)?;
    let release: Release = serde_json::from_slice(&release_bytes)
        .map_err(|e| DistError::Tampered(format!("{dir}/release.json does not read: {e}")))?;
    if release.image != *image {
        return Err(DistError::Tampered(format!("{dir}/release.json names another image")));
    }
    let index_bytes = get(store, &obj(&format!("{dir}/index.json"))).await.map_err(tampered_if_missing)?;
    if sha256_hex(&index_bytes) != release.index_sha256 {
        return Err(DistError::Tampered(format!(
            "{dir}/index.json was altered (its digest is not the signed one)"
        )));
    }
    let manifest = get(store, &obj(&format!("{dir}/manifest.json"))).await.map_err(tampered_if_missing)?;
    if sha256_hex(&manifest) != release.manifest_sha256 {
        return Err(DistError::Tampered(format!(
            "{dir}/manifest.json was altered (its digest is not the signed one)"
        )));
    }
    let index: Index = serde_json::from_slice(&index_bytes)
        .map_err(|e| DistError::Tampered(format!("{dir}/index.json does not read: {e}")))?;
    Ok((index, manifest, sig))
}

fn tampered_if_missing(e: DistError) -> DistError {
    match e {
        DistError::NotFound(what) => {
            DistError::Tampered(format!("{what} (an object of a published image is missing)"))
        }
        e => e,
    }
}

/// Reads every chunk of every artifact of `image` and checks every digest; with `out`, writes
/// the artifacts and the manifest there (each file appears only once complete and checked).
pub async fn verify(
    target: &Target,
    keyring: &Keyring,
    image: &ImageRef,
    trusted: Option<&ed25519_dalek::VerifyingKey>,
    out: Option<&Path>,
) -> Result<VerifyReport, DistError> {
    let (index, manifest, sig) = checked_release(target, image, trusted).await?;
    let sealer = sealer(target, keyring, false).await?;
    let store = target.store.as_ref();
    let mut report =
        VerifyReport { region: target.region.clone(), signed_by: sig.public_key, ..Default::default() };
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)
            .map_err(|e| DistError::Io(format!("creating {}: {e}", dir.display())))?;
    }
    for a in &index.artifacts {
        if a.name.contains('/') || a.name.starts_with('.') {
            return Err(DistError::Tampered(format!(
                "the index names an artifact `{}` outside the image",
                a.name
            )));
        }
        let mut whole = Sha256::new();
        let mut writer = match out {
            Some(dir) => {
                let part = dir.join(format!(".{}.partial", a.name));
                Some((
                    std::fs::File::create(&part)
                        .map_err(|e| DistError::Io(format!("creating {}: {e}", part.display())))?,
                    Partial(part),
                ))
            }
            None => None,
        };
        for c in &a.chunks {
            let body = get(store, &chunk_path(&c.id)).await.map_err(|e| match e {
                DistError::NotFound(_) => {
                    DistError::Tampered(format!("chunk {} of {} is missing from the store", c.id, a.name))
                }
                e => e,
            })?;
            let plain = sealer.open(&c.id, &body)?;
            if sha256_hex(&plain) != c.sha256 || plain.len() as u64 != c.size {
                return Err(DistError::Tampered(format!("chunk {} of {} was altered", c.id, a.name)));
            }
            whole.update(&plain);
            if let Some((f, part)) = writer.as_mut() {
                std::io::Write::write_all(f, &plain)
                    .map_err(|e| DistError::Io(format!("writing {}: {e}", part.0.display())))?;
            }
            report.chunks += 1;
            report.bytes += c.size;
        }
        if hex::encode(whole.finalize()) != a.sha256 {
            return Err(DistError::Tampered(format!("{} does not have its recorded digest", a.name)));
        }
        if let (Some((f, part)), Some(dir)) = (writer, out) {
            f.sync_all().map_err(|e| DistError::Io(format!("writing {}: {e}", part.0.display())))?;
            std::fs::rename(&part.0, dir.join(&a.name))
                .map_err(|e| DistError::Io(format!("renaming {}: {e}", part.0.display())))?;
            // Renamed: nothing is left to remove.
            std::mem::forget(part);
        }
        report.artifacts += 1;
    }
    if let Some(dir) = out {
        std::fs::write(dir.join("manifest.json"), &manifest)
            .map_err(|e| DistError::Io(format!("writing the manifest: {e}")))?;
    }
    Ok(report)
}

/// A partly written artifact, removed unless it was completed and renamed.
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Removes `image` from `target`: the release first (so it stops being visible), then its
/// other objects. Chunks are shared between images and stay (a store-wide sweep removes the
/// ones no index names).
pub async fn remove(target: &Target, image: &ImageRef) -> Result<(), DistError> {
    let store = target.store.as_ref();
    let dir = image.dir();
    for f in ["release.sig", "release.json", "manifest.json", "index.json"] {
        let path = obj(&format!("{dir}/{f}"));
        match retry(&format!("removing {path}"), || store.delete(&path)).await {
            Ok(()) | Err(DistError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
