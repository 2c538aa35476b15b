//! kiln-api owns the Image Builder HTTP API of `kiln serve` up to the point where an operation
//! runs: AWS Signature Version 4 verification of every request (header and presigned forms),
//! IAM-style JSON policies and their evaluation (`imagebuilder:<Operation>` on a resource ARN),
//! the AWS error shapes of the restJson1 protocol, and the axum router that maps each
//! operation of the service model (method and path) to its name and hands authenticated,
//! authorised calls to an [`server::Operations`] implementation. It must not know how
//! operations are carried out or where state lives: no kiln-store, no builds, no files;
//! credentials, policies and operations all come in through traits.

pub mod error;
pub mod operations;
pub mod policy;
pub mod server;
pub mod sigv4;

pub use error::ApiError;
