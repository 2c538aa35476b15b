//! Access keys as the router needs them on every request, kept in memory for a short while.
//!
//! Without this, each request reads the key and its user from the database, decrypts the
//! secret and parses the policy: under load, most of a Get's cost (issue 8). An entry lives
//! for [`CREDENTIAL_TTL`]: `kiln admin` changes users from another process, which this one
//! cannot hear about, so a user deleted there keeps working here for at most that long (as
//! IAM's own changes take a moment to apply). Deletions through this process's
//! [`crate::Server`] drop the user's entries at once. Unknown keys are not remembered, so a
//! user created elsewhere works at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_api::server::Credential;

/// How long a credential read from the database is used without reading it again.
pub const CREDENTIAL_TTL: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Entry {
    read_at: Instant,
    user: String,
    credential: Credential,
}

/// Credentials by access key id.
#[derive(Debug, Default)]
pub(crate) struct CredentialCache {
    entries: Mutex<HashMap<String, Entry>>,
}

impl CredentialCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The credential of `access_key_id` if it was read less than [`CREDENTIAL_TTL`] ago.
    pub fn get(&self, access_key_id: &str) -> Option<Credential> {
        let entries = self.entries();
        let entry = entries.get(access_key_id)?;
        (entry.read_at.elapsed() < CREDENTIAL_TTL).then(|| entry.credential.clone())
    }

    /// Remembers the credential of `access_key_id`, which belongs to user `user`.
    pub fn insert(&self, access_key_id: &str, user: &str, credential: Credential) {
        let mut entries = self.entries();
        // Expired entries go when one is added, so the map only holds keys in recent use.
        entries.retain(|_, e| e.read_at.elapsed() < CREDENTIAL_TTL);
        entries.insert(
            access_key_id.to_owned(),
            Entry { read_at: Instant::now(), user: user.to_owned(), credential },
        );
    }

    /// Forgets the keys of user `user` (deleted).
    pub fn forget_user(&self, user: &str) {
        self.entries().retain(|_, e| e.user != user);
    }
}
