//! kiln-api owns the Image Builder HTTP API of `kiln serve` up to the point where an operation
//! runs: AWS Signature Version 4 verification of every request (header and presigned forms),
//! IAM-style JSON policies and their evaluation (`imagebuilder:<Operation>` on a resource ARN),
//! the AWS error shapes of the restJson1 protocol, and the axum router that maps each
//! operation of the service model (method and path) to its name and hands authenticated,
//! authorised calls to an [`server::Operations`] implementation. It must not know how
//! operations are carried out or where state lives: no kiln-store, no builds, no files;
//! credentials, policies and operations all come in through traits.
//!
//! The monitoring side is here too, as parts the server wires in: Prometheus metrics and
//! `GET /metrics` ([`metrics`]), the layer that counts and records every call for the audit
//! log ([`observe`]), signed webhook notifications with retries ([`webhook`]) and threat
//! detection over calls and image usage ([`threat`]). Storage stays out: records and
//! findings leave through the [`observe::CallSink`] trait and the detector's return values.

pub mod error;
pub mod metrics;
pub mod observe;
pub mod operations;
pub mod policy;
pub mod server;
pub mod sigv4;
pub mod threat;
pub mod webhook;

pub use error::ApiError;
