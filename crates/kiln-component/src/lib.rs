//! AWSTOE-compatible component documents.
//!
//! This crate owns the component document format (schema 1.0) end to end: reading YAML into a
//! position-keeping tree ([`node`]), the typed document model and its validator with
//! `FILE:LINE:COLUMN` diagnostics, the `{{ }}` expression language, `if` conditions and loops,
//! the step engine that runs phases with AWSTOE's onFailure/maxAttempts/timeout semantics, the
//! action modules, and the AWSTOE-like run report. It runs steps only through
//! [`kiln_host::Host`], so it knows nothing of namespaces, VMs, recipes, images or storage.

pub mod actions;
pub mod condition;
pub mod diag;
pub mod document;
pub mod engine;
pub mod expr;
pub mod node;
pub mod report;
pub mod typed;
pub mod validate;
pub mod yaml;
