//! kiln's keyring: named AES-256 key-encryption keys with versions, and the ed25519 key that
//! signs image manifests.
//!
//! Keys live in files under one directory (`KILN_HOME/keys`), created with mode 0600 inside a
//! 0700 directory: `kek/NAME/vN.key` (32 random bytes each) and `signing.key` (the ed25519
//! secret). Rotation adds a version; old versions are never removed, so whatever they wrapped
//! stays readable. Key material is never logged and never leaves this module except to wrap or
//! unwrap a data key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, OsRng, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::DistError;

/// A data key wrapped by a keyring key: what a store keeps next to what the data key encrypts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WrappedKey {
    /// The keyring key's name (the target's `kmsKeyId`).
    pub key_name: String,
    pub key_version: u32,
    /// Base64 of nonce (12 bytes) followed by the AES-256-GCM ciphertext of the 32-byte key.
    pub wrapped: String,
}

/// The keyring directory.
#[derive(Debug, Clone)]
pub struct Keyring {
    dir: PathBuf,
}

fn valid_name(name: &str) -> Result<(), DistError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(DistError::Key(format!(
            "`{name}` is not a key name: use 1 to 64 letters, digits, `-`, `_` or `.`, not starting with `.`"
        )))
    }
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), DistError> {
    let io = |e: std::io::Error| DistError::Io(format!("writing the key {}: {e}", path.display()));
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

impl Keyring {
    /// Opens (creating, mode 0700) the keyring at `dir`.
    pub fn open(dir: &Path) -> Result<Keyring, DistError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("kek"))
            .map_err(|e| DistError::Io(format!("creating the keyring {}: {e}", dir.display())))?;
        Ok(Keyring { dir: dir.to_path_buf() })
    }

    fn kek_dir(&self, name: &str) -> PathBuf {
        self.dir.join("kek").join(name)
    }

    /// The versions of key `name`, oldest first (empty when it does not exist).
    pub fn versions(&self, name: &str) -> Result<Vec<u32>, DistError> {
        valid_name(name)?;
        let mut v: Vec<u32> = match fs::read_dir(self.kek_dir(name)) {
            Ok(rd) => rd
                .flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix('v')?.strip_suffix(".key")?.parse().ok()
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(DistError::Io(format!("reading the keyring: {e}"))),
        };
        v.sort_unstable();
        Ok(v)
    }

    /// The names of the keys in the keyring, sorted.
    pub fn names(&self) -> Result<Vec<String>, DistError> {
        let mut names: Vec<String> = fs::read_dir(self.dir.join("kek"))
            .map_err(|e| DistError::Io(format!("reading the keyring: {e}")))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| valid_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Creates key `name` (version 1); an existing name is an error.
    pub fn create(&self, name: &str) -> Result<u32, DistError> {
        if !self.versions(name)?.is_empty() {
            return Err(DistError::Key(format!("the key `{name}` exists already; rotate it instead")));
        }
        self.add_version(name, 1)
    }

    /// Adds the next version of key `name`; new data keys are wrapped with it, and data keys
    /// wrapped with older versions still unwrap.
    pub fn rotate(&self, name: &str) -> Result<u32, DistError> {
        let next = self
            .versions(name)?
            .last()
            .copied()
            .ok_or_else(|| DistError::Key(format!("no key `{name}` to rotate: create it first")))?
            + 1;
        self.add_version(name, next)
    }

    fn add_version(&self, name: &str, version: u32) -> Result<u32, DistError> {
        let dir = self.kek_dir(name);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| DistError::Io(format!("creating {}: {e}", dir.display())))?;
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        write_secret(&dir.join(format!("v{version}.key")), &key)?;
        Ok(version)
    }

    fn kek(&self, name: &str, version: u32) -> Result<Aes256Gcm, DistError> {
        valid_name(name)?;
        let path = self.kek_dir(name).join(format!("v{version}.key"));
        let bytes = fs::read(&path).map_err(|e| {
            DistError::Key(format!(
                "key `{name}` version {version} is not in the keyring ({}): {e}",
                path.display()
            ))
        })?;
        Aes256Gcm::new_from_slice(&bytes)
            .map_err(|_| DistError::Key(format!("key `{name}` version {version} is not 32 bytes")))
    }

    /// Wraps `data_key` with the newest version of key `name`.
    pub fn wrap(&self, name: &str, data_key: &[u8; 32]) -> Result<WrappedKey, DistError> {
        let version = self.versions(name)?.last().copied().ok_or_else(|| {
            DistError::Key(format!("no key `{name}` in the keyring: create it with `kiln key create {name}`"))
        })?;
        let kek = self.kek(name, version)?;
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let sealed = kek
            .encrypt(Nonce::from_slice(&nonce), data_key.as_slice())
            .map_err(|_| DistError::Key("wrapping a data key failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(WrappedKey { key_name: name.into(), key_version: version, wrapped: b64(&out) })
    }

    /// Unwraps a data key (any version of its key still in the keyring).
    pub fn unwrap(&self, w: &WrappedKey) -> Result<[u8; 32], DistError> {
        let kek = self.kek(&w.key_name, w.key_version)?;
        let raw =
            unb64(&w.wrapped).ok_or_else(|| DistError::Key("a wrapped data key is not base64".into()))?;
        if raw.len() < 12 {
            return Err(DistError::Key("a wrapped data key is truncated".into()));
        }
        let plain = kek.decrypt(Nonce::from_slice(&raw[..12]), &raw[12..]).map_err(|_| {
            DistError::Key(format!(
                "the data key wrapped by `{}` version {} does not unwrap: wrong key or altered data",
                w.key_name, w.key_version
            ))
        })?;
        plain.try_into().map_err(|_| DistError::Key("an unwrapped data key is not 32 bytes".into()))
    }

    /// The manifest signing key, made on first use.
    pub fn signing_key(&self) -> Result<SigningKey, DistError> {
        let path = self.dir.join("signing.key");
        match fs::read(&path) {
            Ok(bytes) => {
                let arr: [u8; 32] = bytes.try_into().map_err(|_| {
                    DistError::Key(format!("{} is not a 32-byte ed25519 secret", path.display()))
                })?;
                Ok(SigningKey::from_bytes(&arr))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate(&mut OsRng);
                write_secret(&path, &key.to_bytes())?;
                Ok(key)
            }
            Err(e) => Err(DistError::Io(format!("reading {}: {e}", path.display()))),
        }
    }
}

/// A detached signature of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Signature {
    pub algorithm: String,
    /// Base64 of the 32-byte ed25519 public key.
    pub public_key: String,
    /// Base64 of the 64-byte signature over the manifest's exact bytes.
    pub signature: String,
}

/// A public key as text (base64), as signatures carry it.
pub fn public_key_text(key: &VerifyingKey) -> String {
    b64(key.as_bytes())
}

pub fn sign(key: &SigningKey, manifest: &[u8]) -> Signature {
    Signature {
        algorithm: "ed25519".into(),
        public_key: b64(key.verifying_key().as_bytes()),
        signature: b64(&key.sign(manifest).to_bytes()),
    }
}

/// Checks `sig` over `manifest`; when `trusted` is given, the signer must be that key.
pub fn verify(manifest: &[u8], sig: &Signature, trusted: Option<&VerifyingKey>) -> Result<(), DistError> {
    if sig.algorithm != "ed25519" {
        return Err(DistError::Tampered(format!(
            "the manifest is signed with unknown algorithm `{}`",
            sig.algorithm
        )));
    }
    let pk: [u8; 32] = unb64(&sig.public_key)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| DistError::Tampered("the signature's public key is malformed".into()))?;
    let pk = VerifyingKey::from_bytes(&pk)
        .map_err(|_| DistError::Tampered("the signature's public key is invalid".into()))?;
    if let Some(t) = trusted
        && t != &pk
    {
        return Err(DistError::Tampered("the manifest is signed by a key this kiln does not trust".into()));
    }
    let s: [u8; 64] = unb64(&sig.signature)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| DistError::Tampered("the signature is malformed".into()))?;
    pk.verify(manifest, &ed25519_dalek::Signature::from_bytes(&s))
        .map_err(|_| DistError::Tampered("the manifest's signature does not match its content".into()))
}

pub(crate) fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

pub(crate) fn unb64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_keys_survive_rotation_and_refuse_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path()).unwrap();
        assert!(ring.wrap("eu", &[7; 32]).is_err(), "no key yet");
        assert_eq!(ring.create("eu").unwrap(), 1);
        assert!(ring.create("eu").is_err());
        let old = ring.wrap("eu", &[7; 32]).unwrap();
        assert_eq!(ring.rotate("eu").unwrap(), 2);
        let new = ring.wrap("eu", &[9; 32]).unwrap();
        assert_eq!((old.key_version, new.key_version), (1, 2));
        assert_eq!(ring.unwrap(&old).unwrap(), [7; 32], "old versions stay readable");
        assert_eq!(ring.unwrap(&new).unwrap(), [9; 32]);
        let mut bad = new.clone();
        let mut raw = unb64(&bad.wrapped).unwrap();
        raw[20] ^= 1;
        bad.wrapped = b64(&raw);
        assert!(ring.unwrap(&bad).is_err());
        assert!(ring.create("../x").is_err(), "names cannot leave the keyring");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(dir.path().join("kek/eu/v1.key")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn signatures_verify_and_detect_changes_and_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path()).unwrap();
        let key = ring.signing_key().unwrap();
        assert_eq!(ring.signing_key().unwrap().to_bytes(), key.to_bytes(), "made once, then kept");
        let sig = sign(&key, b"{\"a\":1}");
        verify(b"{\"a\":1}", &sig, Some(&key.verifying_key())).unwrap();
        assert!(verify(b"{\"a\":2}", &sig, None).is_err());
        let stranger = SigningKey::generate(&mut OsRng);
        let theirs = sign(&stranger, b"{\"a\":1}");
        assert!(verify(b"{\"a\":1}", &theirs, Some(&key.verifying_key())).is_err());
    }
}
