//! The build pipeline: from a resource file to a catalogued, bootable image.
//!
//! This crate owns the order of a build and nothing below it: resolve the recipe's components
//! (by name and version, from the resource file, kiln's built-ins ([`builtin`]) or the
//! catalogue), make the parent's base layer, run each component's build phase in the sandbox
//! on an overlay over the layers below
//! (each result a cached, content-addressed layer), run the validate phases, add the
//! golden-image cleanup layer, stage the merged tree, take its inventory and SBOMs, scan it
//! against the stored vulnerability feeds under the recipe's policy ([`scan`]), evaluate its
//! compliance profiles ([`compliance`]), assemble
//! the disk in every format asked for, boot it once as the test stage, and write the output
//! folder (disks, `manifest.json`, `SHA256SUMS`, `build-log.jsonl`, SBOMs, `scan.json`, `compliance.json` and `.html`) while the catalogue
//! records every state transition. It knows recipes and stages, not how any one stage works:
//! that belongs to kiln-parent, kiln-sandbox, kiln-component, kiln-image, kiln-scan and
//! kiln-store.
//!
//! It also decides when an image pipeline builds ([`schedule`]: its cron slot and start
//! condition, rebuilds on fixes), from what changed since its latest image ([`dependencies`]).

pub mod builtin;
pub mod catalogue;
pub mod cleanup;
pub mod compliance;
pub mod dependencies;
pub mod distribute;
pub mod guest_compliance;
pub mod layers;
pub mod lifecycle;
mod pipeline;
pub mod run;
pub mod scan;
pub mod schedule;
pub mod test_stage;
mod vm_build;

use std::path::PathBuf;

pub use pipeline::{BuildEvent, BuildOutcome, BuildProgress, BuildRequest, Kiln, OnError};

/// Why a build could not be done. Each says what went wrong and, where it can, what to do.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The resource file or a component document is invalid; nothing was built.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<kiln_component::diag::Diagnostic>),
    #[error("{0}")]
    Component(String),
    #[error("parent image: {0}")]
    Parent(String),
    #[error("sandbox: {0}")]
    Sandbox(String),
    #[error("{phase} phase of component {component} failed: {message}")]
    StepFailed { phase: String, component: String, message: String },
    #[error("golden-image cleanup: {0}")]
    Cleanup(String),
    #[error("disk assembly: {0}")]
    Image(String),
    /// The resource file's scan policy is wrong; nothing was built.
    #[error("imageScanningConfiguration: {0}")]
    ScanPolicy(String),
    /// The image could not be scanned (a feed failed to import, no feeds for a gate).
    #[error("scan stage: {0}")]
    Scan(String),
    /// The scan found what the policy's `failOn` does not allow.
    #[error("vulnerability scan gate failed: {0}")]
    ScanGate(String),
    /// The compliance profiles could not be evaluated (OpenSCAP missing or failing).
    #[error("compliance stage: {0}")]
    Compliance(String),
    /// The compliance evaluation did not pass the recipe's gate.
    #[error("compliance gate failed: {0}")]
    ComplianceGate(String),
    #[error("test stage: {0}")]
    Test(String),
    #[error("catalogue: {0}")]
    Store(String),
    /// An account may not use an image, or the image is retired.
    #[error(transparent)]
    Access(catalogue::AccessError),
    /// The build was cancelled (its request's cancel flag was set).
    #[error("the build was cancelled")]
    Cancelled,
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

impl BuildError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BuildError::Io { what, path: path.into(), source }
    }
}
