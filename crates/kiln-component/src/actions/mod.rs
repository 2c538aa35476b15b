//! The action modules: what each `action:` of a step does, with AWSTOE's inputs and outputs.
//!
//! Each module checks the *shape* of its inputs before anything runs ([`ActionModule::check`],
//! used by the validator, on the unrendered inputs, where scalars may still hold `{{ }}`
//! expressions) and runs on rendered inputs against a [`kiln_host::Host`]. Modules never touch
//! the machine kiln runs on directly: every file operation goes through the host, whose paths
//! stay inside the target's root.

use std::time::Duration;

use kiln_host::Host;

mod encoding;
pub mod exec;
pub mod files;
pub mod folders;
pub mod net;
pub mod owners;
pub mod s3;
pub mod system;
mod util;

pub use exec::{ExecuteBash, ExecuteBinary, ExecuteDocument, MAX_DOCUMENT_DEPTH, REBOOT_EXIT_CODE};
pub use files::{
    AppendFile, CopyFile, CreateFile, CreateSymlink, DeleteFile, ListFiles, MoveFile, ReadFile,
    SetFileEncoding,
};
pub use folders::{CopyFolder, CreateFolder, DeleteFolder, MoveFolder};
pub use net::WebDownload;
pub use owners::{SetFileOwner, SetFilePermissions, SetFolderOwner, SetFolderPermissions};
pub use s3::{S3Download, S3Upload};
pub use system::{Assert, Reboot, UpdateOS};

use crate::diag::Diagnostic;
use crate::node::Node;

/// Runs another component document for the ExecuteDocument module; the engine implements it.
pub trait DocumentRunner {
    /// Run the document at `path` (inside the target, or `s3://` when the network is allowed)
    /// with `phases` and `parameters`; returns an error message on failure.
    fn run_document(
        &self,
        path: &str,
        phases: &[String],
        parameters: &[(String, String)],
        ctx: &ActionContext<'_>,
    ) -> Result<(), String>;
}

/// Everything an action module may use while it runs.
pub struct ActionContext<'a> {
    pub host: &'a dyn Host,
    /// The working directory inside the target that relative paths are resolved against.
    pub working_dir: &'a str,
    /// The step's timeout, if any; modules that start processes pass it on.
    pub timeout: Option<Duration>,
    /// Environment variables every process of the step gets.
    pub env: &'a [(String, String)],
    pub documents: &'a dyn DocumentRunner,
    /// Nesting depth of ExecuteDocument, to refuse runaway recursion.
    pub depth: u32,
}

impl std::fmt::Debug for ActionContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionContext")
            .field("host", &self.host.describe())
            .field("working_dir", &self.working_dir)
            .finish()
    }
}

/// What a successful action produced.
#[derive(Debug, Clone, Default)]
pub struct ActionOutcome {
    /// The module's outputs, for `{{ phase.Step.outputs.NAME }}` chaining and the report.
    pub outputs: serde_json::Map<String, serde_json::Value>,
    /// Exit code of the process the module ran, if it ran one.
    pub exit_code: Option<i32>,
    /// Full standard output and error of processes the module ran (the report caps them).
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Set when the step asks for a reboot (the Reboot module, or exit code 194 from
    /// ExecuteBash/ExecuteBinary).
    pub reboot: Option<RebootRequest>,
}

/// A reboot asked for by a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootRequest {
    /// The Reboot module: reboot, then continue with the *next* step.
    ThenContinue { delay_seconds: u64 },
    /// Exit code 194: reboot, then run the *same* step again.
    ThenRerunStep,
}

/// Why an action failed.
#[derive(Debug, Clone)]
pub struct ActionFailure {
    pub message: String,
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// True when the failure came from the step's timeout.
    pub timed_out: bool,
}

impl ActionFailure {
    pub fn msg(message: impl Into<String>) -> Self {
        ActionFailure {
            message: message.into(),
            exit_code: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            timed_out: false,
        }
    }
}

/// One action module.
pub trait ActionModule: Sync {
    /// The name used in `action:`.
    fn name(&self) -> &'static str;

    /// The outputs the module defines, for validating `{{ phase.Step.outputs.X }}` references.
    fn output_names(&self) -> &'static [&'static str];

    /// Check the inputs' shape (required and unknown fields, types of literal values).
    /// `inputs` is `None` when the step has no `inputs` key. Scalars may still contain
    /// `{{ ... }}` expressions; a type check applies only to values without one.
    fn check(
        &self,
        file: &str,
        step_span: crate::node::Span,
        inputs: Option<&Node>,
        diags: &mut Vec<Diagnostic>,
    );

    /// Run with rendered inputs (all expressions replaced).
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure>;
}

/// Action names AWSTOE defines only for Windows; kiln recognises and rejects them.
pub const WINDOWS_ONLY: &[&str] =
    &["ExecutePowerShell", "InstallMSI", "UninstallMSI", "SetRegistry", "UpdateOS_Windows"];

/// The module registered under `name` (exact, case-sensitive as AWSTOE is).
pub fn lookup(name: &str) -> Option<&'static dyn ActionModule> {
    registry().iter().copied().find(|m| m.name() == name)
}

/// Every module kiln implements, for suggestions and documentation.
pub fn registry() -> &'static [&'static dyn ActionModule] {
    &[
        &ExecuteBash,
        &ExecuteBinary,
        &ExecuteDocument,
        &CreateFile,
        &AppendFile,
        &CopyFile,
        &MoveFile,
        &DeleteFile,
        &CreateSymlink,
        &ReadFile,
        &SetFileEncoding,
        &ListFiles,
        &CreateFolder,
        &CopyFolder,
        &MoveFolder,
        &DeleteFolder,
        &SetFileOwner,
        &SetFolderOwner,
        &SetFilePermissions,
        &SetFolderPermissions,
        &WebDownload,
        &S3Download,
        &S3Upload,
        &UpdateOS,
        &Reboot,
        &Assert,
    ]
}
