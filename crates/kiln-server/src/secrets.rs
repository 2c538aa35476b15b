//! Access key secrets sealed at rest. SigV4 verification needs the secret in clear at verify
//! time (it keys the HMAC), so secrets cannot be hashed like passwords; they are encrypted
//! with AES-256-GCM under a key kept in a file of its own (0600), with the access key id as
//! associated data so that a sealed secret cannot be moved to another key id.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand_core::{OsRng, RngCore};

use crate::ServerError;

const NONCE_LEN: usize = 12;

/// Seals and opens secrets with the server's key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

/// `KILN_HOME/state/api-secrets.key`: the key sealing access key secrets.
pub fn key_path(home: &Path) -> PathBuf {
    home.join("state").join("api-secrets.key")
}

impl SecretBox {
    /// The key at `path`, created (32 random bytes, mode 0600) when missing. A key file that
    /// other users may read is refused rather than used.
    pub fn open_or_create(path: &Path) -> Result<SecretBox, ServerError> {
        let io = |what: &'static str| move |source| ServerError::Io { what, path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
        }
        let key = match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(ServerError::Secret(format!(
                        "{} has permissions {mode:o}; it must be readable by its owner only: chmod 600 {}",
                        path.display(),
                        path.display()
                    )));
                }
                std::fs::read(path).map_err(io("reading"))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; 32];
                OsRng.fill_bytes(&mut key);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io("creating"))?;
                file.write_all(&key).and_then(|()| file.sync_all()).map_err(io("writing"))?;
                key
            }
            Err(e) => return Err(io("reading")(e)),
        };
        let cipher = Aes256Gcm::new_from_slice(&key)
            .map_err(|_| ServerError::Secret(format!("{} does not hold a 32-byte key", path.display())))?;
        Ok(SecretBox { cipher })
    }

    /// `base64(nonce || ciphertext)` of `secret`, bound to `key_id`.
    pub fn seal(&self, key_id: &str, secret: &str) -> Result<String, ServerError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: secret.as_bytes(), aad: key_id.as_bytes() })
            .map_err(|_| ServerError::Secret("cannot encrypt the secret".into()))?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(STANDARD.encode(out))
    }

    /// The secret sealed for `key_id`.
    pub fn open(&self, key_id: &str, sealed: &str) -> Result<String, ServerError> {
        let bad = || {
            ServerError::Secret(format!(
                "the secret of access key {key_id} does not decrypt with this server's key (was the key file replaced?)"
            ))
        };
        let bytes = STANDARD.decode(sealed).map_err(|_| bad())?;
        if bytes.len() <= NONCE_LEN {
            return Err(bad());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let clear = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: key_id.as_bytes() })
            .map_err(|_| bad())?;
        String::from_utf8(clear).map_err(|_| bad())
    }
}

/// Random text from `alphabet`, `len` characters (rejection sampling keeps it uniform).
pub fn random_text(alphabet: &[u8], len: usize) -> String {
    let limit = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        OsRng.fill_bytes(&mut buf);
        for b in buf {
            if (b as usize) < limit && out.len() < len {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_binds_to_the_key_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(dir.path());
        let sb = SecretBox::open_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let sealed = sb.seal("AKIA1", "s3cret/+x").unwrap();
        assert!(!sealed.contains("s3cret"));
        assert_eq!(sb.open("AKIA1", &sealed).unwrap(), "s3cret/+x");
        assert!(sb.open("AKIA2", &sealed).is_err());
        assert!(sb.open("AKIA1", "garbage!").is_err());
        // The same key on the next start.
        let again = SecretBox::open_or_create(&path).unwrap();
        assert_eq!(again.open("AKIA1", &sealed).unwrap(), "s3cret/+x");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretBox::open_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn random_text_uses_the_alphabet() {
        let t = random_text(b"AB", 100);
        assert_eq!(t.len(), 100);
        assert!(t.chars().all(|c| c == 'A' || c == 'B'));
    }
}
