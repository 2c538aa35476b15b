//! Compliance evaluation of image trees.
//!
//! kiln-compliance owns what it means for an image to comply: the rule model (declarative
//! rules with an id, a severity, a rationale, a remediation, CIS and ANSSI references and a
//! typed check, [`profile`]), kiln's own profiles embedded in the binary (CIS Debian Level 1
//! and 2, ANSSI minimal, intermediary and enhanced, under `profiles/`), the evaluation of every
//! check kind against an unpacked root ([`eval`]), OpenSCAP runs of SCAP Security Guide
//! profiles against the same root and the parsing of their XCCDF results ([`scap`]),
//! exceptions with their justifications, the score and the gate ([`policy`]), and the report
//! in JSON and as a self-contained HTML page ([`report`], [`html`]).
//!
//! It must not know about recipes, the catalogue or the build sandbox: callers hand it profile
//! names, exceptions, a gate and a root directory, and store what it returns. Every file of
//! the image is read through [`kiln_scan::rootfs::RootFs`], which resolves paths inside the
//! root and never follows a symlink out of it: the image is hostile input.
//!
//! Layering wart: that in-root reader, and the dpkg inventory the package rules use, live in
//! kiln-scan, so this crate depends on the vulnerability scanner for two modules it does not
//! otherwise need. They belong in a small crate of their own below both; moving them is left
//! for when a third reader of image trees appears. Profiles are parsed with kiln-component's
//! position-keeping YAML reader, so their errors name `FILE:LINE:COLUMN` like every other
//! document kiln reads.

pub mod eval;
pub mod html;
pub mod policy;
pub mod profile;
pub mod report;
pub mod scap;
mod yamlish;

pub use eval::evaluate_profile;
pub use policy::{Exception, Gate, Plan, PlanProblem, ProfileChoice, ScapRunner, evaluate, evaluate_with};
pub use profile::{BUILTIN, Profile, Rule, Severity, profile_names};
pub use report::{ComplianceReport, GateOutcome, RuleResult, Source, Status};

use kiln_component::diag::Diagnostic;

/// Why compliance could not be evaluated. Problems with the *plan* (profile names,
/// exceptions, gate) are [`PlanProblem`]s, reported all at once before any work.
#[derive(Debug, thiserror::Error)]
pub enum ComplianceError {
    /// A profile file does not read as a profile.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    InvalidProfile(Vec<Diagnostic>),
    /// The plan is wrong: unknown profiles, exceptions without justification, a bad gate.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Plan(Vec<PlanProblem>),
    /// The root could not be opened at all.
    #[error("cannot open the image root {path}: {source}; give a directory holding an unpacked image")]
    Root { path: std::path::PathBuf, source: std::io::Error },
    /// OpenSCAP could not be run or its results could not be read.
    #[error("OpenSCAP: {0}")]
    Scap(String),
}
