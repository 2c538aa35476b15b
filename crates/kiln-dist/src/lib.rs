//! Distribution of images to stores ("regions").
//!
//! kiln-dist owns how an image's artifacts live in a store reached through `object_store`
//! (a local directory, or any S3-compatible service): content-addressed chunks cut with FastCDC
//! so a new version uploads only what changed, parallel uploads that resume by skipping chunks
//! already there, an index per image and a release signed with ed25519 and written last so a
//! reader never sees a partial image, envelope encryption per target (AES-256-GCM data key
//! wrapped by a named, versioned key of kiln's keyring), and reads (verify, pull) that check
//! the signature and every digest. It must not know about recipes, builds or the catalogue:
//! callers hand it files, a manifest, a target and the keyring, and record what it reports.

pub mod keys;
pub mod store;

pub use keys::{Keyring, Signature, WrappedKey};
pub use store::{
    ImageRef, Index, PushReport, Release, S3Options, Target, VerifyReport, is_published, push, push_many,
    remove, verify,
};

/// What can go wrong distributing or reading an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistError {
    #[error("{0}")]
    Io(String),
    #[error("keyring: {0}")]
    Key(String),
    #[error("store: {0}")]
    Store(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// Data in a store is not what was signed: altered, missing, or signed by a stranger.
    #[error("refused: {0}")]
    Tampered(String),
}
