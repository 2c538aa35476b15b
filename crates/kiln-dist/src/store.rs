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

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, OsRng, Payload, rand_core::RngCore};
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
                // nonce ‖ ciphertext ‖ tag, encrypted where it lies: one copy of the chunk.
                let mut out = Vec::with_capacity(12 + data.len() + 16);
                out.resize(12, 0);
                OsRng.fill_bytes(&mut out);
                out.extend_from_slice(data);
                let (nonce, msg) = out.split_at_mut(12);
                let tag = cipher
                    .encrypt_in_place_detached(Nonce::from_slice(nonce), id.as_bytes(), msg)
                    .map_err(|_| DistError::Key("sealing a chunk failed".into()))?;
                out.extend_from_slice(&tag);
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
    push_many(std::slice::from_ref(target), keyring, image, artifacts, manifest, parallel)
        .await
        .pop()
        .expect("one result per target")
}

/// [`push`] to several targets at once: each artifact is read, cut and hashed once and each
/// chunk goes to every target, rather than reading the whole image again per target. A target
/// that fails is left out from then on without stopping the others; the results are in the
/// order of `targets`.
pub async fn push_many(
    targets: &[Target],
    keyring: &Keyring,
    image: &ImageRef,
    artifacts: &[PathBuf],
    manifest: &[u8],
    parallel: usize,
) -> Vec<Result<PushReport, DistError>> {
    let mut live = Vec::new();
    let mut failed = Vec::new();
    for t in targets {
        match sealer(t, keyring, true).await {
            Ok(s) => {
                live.push(Some(Arc::new(s)));
                failed.push(None);
            }
            Err(e) => {
                live.push(None);
                failed.push(Some(e));
            }
        }
    }
    let mut reports: Vec<PushReport> =
        targets.iter().map(|t| PushReport { region: t.region.clone(), ..Default::default() }).collect();
    let mut indexes: Vec<Vec<ArtifactIndex>> = vec![Vec::new(); targets.len()];
    for path in artifacts {
        if failed.iter().all(Option::is_some) {
            break;
        }
        let pushed = push_artifact(targets, &live, &mut failed, &mut reports, path, parallel).await;
        match pushed {
            Ok((name, size, sha256, chunks)) => {
                for (i, t) in live.iter().enumerate() {
                    let Some(sealer) = t.as_ref().filter(|_| failed[i].is_none()) else { continue };
                    let chunks = chunks
                        .iter()
                        .map(|(sha, size)| ChunkRef { id: sealer.id(sha), sha256: sha.clone(), size: *size })
                        .collect::<Vec<_>>();
                    reports[i].total_bytes += size;
                    reports[i].chunks += chunks.len();
                    indexes[i].push(ArtifactIndex {
                        name: name.clone(),
                        size,
                        sha256: sha256.clone(),
                        chunks,
                    });
                }
            }
            // Reading the artifact failed: no target can have it.
            Err(e) => {
                for f in failed.iter_mut().filter(|f| f.is_none()) {
                    *f = Some(DistError::Io(e.to_string()));
                }
            }
        }
    }
    let mut out = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        out.push(match failed[i].take() {
            Some(e) => Err(e),
            None => publish(t, keyring, image, std::mem::take(&mut indexes[i]), manifest)
                .await
                .map(|()| std::mem::take(&mut reports[i])),
        });
    }
    out
}

/// One artifact's chunk digests and sizes in order, with its name, size and digest.
type Artifact = (String, u64, String, Vec<(String, u64)>);

/// Cuts `path` into chunks and uploads each new one to every target not failed yet. Three
/// stages overlap: a blocking thread reads, cuts and hashes the whole file in order; chunks are
/// hashed `parallel` at once on the blocking pool; `parallel` chunks are uploaded at once, each
/// to all targets together.
async fn push_artifact(
    targets: &[Target],
    sealers: &[Option<Arc<Sealer>>],
    failed: &mut [Option<DistError>],
    reports: &mut [PushReport],
    path: &Path,
    parallel: usize,
) -> Result<Artifact, DistError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| DistError::Io(format!("{} has no file name", path.display())))?;
    let file =
        std::fs::File::open(path).map_err(|e| DistError::Io(format!("reading {}: {e}", path.display())))?;
    let parallel = parallel.max(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(parallel * 2);
    let reader = tokio::task::spawn_blocking(move || cut(file, &tx));
    let chunks = stream::poll_fn(|cx| rx.poll_recv(cx));

    // Whether a target is still pushed to: read when an upload starts, cleared on its error.
    let live: Vec<AtomicBool> =
        sealers.iter().zip(failed.iter()).map(|(s, f)| AtomicBool::new(s.is_some() && f.is_none())).collect();
    let mut order = Vec::new();
    // A chunk that occurs twice (zeros) is uploaded once.
    let mut seen = HashSet::new();
    let uploads = chunks
        .map(|data| async move {
            tokio::task::spawn_blocking(move || (sha256_hex(&data), data))
                .await
                .map_err(|e| DistError::Io(format!("hashing a chunk: {e}")))
        })
        .buffered(parallel)
        .map_ok(|(sha, data)| {
            order.push((sha.clone(), data.len() as u64));
            let new = seen.insert(sha.clone());
            let live = &live;
            async move {
                if !new {
                    return Ok(Vec::new());
                }
                let each =
                    sealers.iter().enumerate().filter(|(i, _)| live[*i].load(Ordering::Relaxed)).filter_map(
                        |(i, s)| {
                            let (sealer, store) = (s.clone()?, targets[i].store.clone());
                            let (sha, data) = (sha.clone(), data.clone());
                            Some(async move { (i, upload_chunk(store.as_ref(), sealer, &sha, data).await) })
                        },
                    );
                Ok(futures_util::future::join_all(each).await)
            }
        })
        .try_buffer_unordered(parallel);
    let mut uploads = Box::pin(uploads);
    while let Some(done) = uploads.next().await {
        for (i, r) in done? {
            match r {
                Ok(Some(n)) => {
                    reports[i].uploaded_chunks += 1;
                    reports[i].uploaded_bytes += n;
                }
                Ok(None) => {}
                Err(e) => {
                    live[i].store(false, Ordering::Relaxed);
                    failed[i].get_or_insert(e);
                }
            }
        }
    }
    drop(uploads);
    let (size, sha256) = reader
        .await
        .map_err(|e| DistError::Io(format!("reading {}: {e}", path.display())))?
        .map_err(|e| DistError::Io(format!("reading {}: {e}", path.display())))?;
    Ok((name, size, sha256, order))
}

/// Reads `file` and sends its FastCDC chunks in order; its size and sha256. Same cut points as
/// `fastcdc::v2020::StreamCDC`, whose buffer handling copies each chunk several times: this
/// reads blocks of 16 MiB and sends chunks as slices of them, copying only the tail of a block
/// (under a largest chunk) into the next.
fn cut(mut file: std::fs::File, tx: &tokio::sync::mpsc::Sender<Bytes>) -> std::io::Result<(u64, String)> {
    use std::io::Read;
    const BLOCK: usize = 16 << 20;
    let cdc_max = MAX_CHUNK as usize;
    let mut block = Bytes::new();
    let mut eof = false;
    let mut whole = Sha256::new();
    let mut size = 0u64;
    loop {
        // Refill once less than a largest chunk is left, so a cut sees what StreamCDC's would.
        if !eof && block.len() < cdc_max {
            let mut next = Vec::with_capacity(BLOCK);
            next.extend_from_slice(&block);
            // read_to_end reads into the spare capacity without zeroing it first.
            let want = (BLOCK - next.len()) as u64;
            let got = (&mut file).take(want).read_to_end(&mut next)?;
            eof = (got as u64) < want;
            block = Bytes::from(next);
        }
        if block.is_empty() {
            return Ok((size, hex::encode(whole.finalize())));
        }
        let (_, len) =
            fastcdc::v2020::FastCDC::new(&block, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK).cut(0, block.len());
        let chunk = block.split_to(len);
        whole.update(&chunk);
        size += len as u64;
        if tx.blocking_send(chunk).is_err() {
            // The uploads stopped (every target failed): nothing wants the rest.
            return Err(std::io::Error::other("the upload stopped"));
        }
    }
}

/// Uploads one chunk unless the store has it; the plaintext bytes uploaded.
async fn upload_chunk(
    store: &dyn ObjectStore,
    sealer: Arc<Sealer>,
    sha256: &str,
    data: Bytes,
) -> Result<Option<u64>, DistError> {
    let id = sealer.id(sha256);
    let path = chunk_path(&id);
    if exists(store, &path).await? {
        return Ok(None);
    }
    let len = data.len() as u64;
    let body = match sealer.as_ref() {
        Sealer::Plain => data,
        // AES-GCM of a chunk is a millisecond of CPU: off the runtime's threads.
        Sealer::Sealed { .. } => tokio::task::spawn_blocking(move || sealer.seal(&id, &data))
            .await
            .map_err(|e| DistError::Key(format!("sealing a chunk: {e}")))??,
    };
    put(store, &path, body).await?;
    Ok(Some(len))
}

/// Writes the index, the manifest and the release, then the signature that makes it visible.
async fn publish(
    target: &Target,
    keyring: &Keyring,
    image: &ImageRef,
    artifacts: Vec<ArtifactIndex>,
    manifest: &[u8],
) -> Result<(), DistError> {
    let store = target.store.as_ref();
    let index = Index { format: "kiln-index/1".into(), encrypted_with: target.key_name.clone(), artifacts };
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
    .await
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
