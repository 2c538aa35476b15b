//! ExecuteBash, ExecuteBinary and ExecuteDocument.
//!
//! ExecuteBash runs all `commands` as *one* bash script, as AWSTOE does (it writes them into a
//! script file and runs it with bash); the script's exit code is the step's. No `set -e` is
//! added: AWSTOE adds none, and published components rely on that (`cmd | grep ...` followed
//! by `if [[ $? == 0 ]]`). Scripts up to [`INLINE_SCRIPT_MAX`] bytes are passed as
//! `bash -c SCRIPT ExecuteBash` (nothing is left in the image and the target's /tmp need not be
//! writable); larger ones exceed what one exec argument may hold, so they are written to a
//! private file under the target's /tmp, run as `bash FILE`, and removed afterwards. Standard
//! input is never the script, so commands that read stdin do not swallow it.
//!
//! Output `stdout` is the process's standard output with trailing newlines removed: real
//! components chain `mktemp -d` or `echo s3` output into paths and `stringEquals`, which only
//! works if the newline `echo` adds is gone.
//!
//! Exit code 194 (ExecuteBash and ExecuteBinary) asks for a reboot after which the same step
//! runs again: the module succeeds with [`RebootRequest::ThenRerunStep`].

use std::sync::atomic::{AtomicU64, Ordering};

use kiln_host::{ExecRequest, ExitStatus, WriteMode};

use super::util::{Checker, Item, Ty, has_expr, map_item, opt, req, resolve};
use super::{ActionContext, ActionFailure, ActionModule, ActionOutcome, RebootRequest};
use crate::diag::Diagnostic;
use crate::node::{Node, NodeKind, Span};

/// The exit code that asks for a reboot and a re-run of the same step.
pub const REBOOT_EXIT_CODE: i32 = 194;

/// Largest script passed inline with `bash -c` (Linux caps one argument at 128 KiB).
pub const INLINE_SCRIPT_MAX: usize = 96 * 1024;

/// `stdout` as the module output: lossy UTF-8 with trailing newlines removed.
pub(crate) fn stdout_output(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim_end_matches(['\n', '\r']).to_string()
}

/// Runs a process on the target and turns its end into an outcome: 0 succeeds, 194 succeeds
/// with a reboot request, anything else fails.
pub(crate) fn run_process(
    ctx: &ActionContext<'_>,
    module: &str,
    argv: Vec<String>,
    what: &str,
) -> Result<ActionOutcome, ActionFailure> {
    let req = ExecRequest {
        argv,
        env: ctx.env.to_vec(),
        cwd: Some(ctx.working_dir.to_string()),
        stdin: None,
        timeout: ctx.timeout,
    };
    let out =
        ctx.host.exec(&req).map_err(|e| ActionFailure::msg(format!("{module}: cannot start {what}: {e}")))?;
    let fail = |message: String, exit_code: Option<i32>, timed_out: bool| ActionFailure {
        message,
        exit_code,
        stdout: out.stdout.clone(),
        stderr: out.stderr.clone(),
        timed_out,
    };
    match out.status {
        ExitStatus::Code(0) | ExitStatus::Code(REBOOT_EXIT_CODE) => {
            let mut outcome = ActionOutcome {
                exit_code: Some(out.status.code()),
                reboot: (out.status == ExitStatus::Code(REBOOT_EXIT_CODE))
                    .then_some(RebootRequest::ThenRerunStep),
                ..ActionOutcome::default()
            };
            outcome.outputs.insert("stdout".into(), stdout_output(&out.stdout).into());
            outcome.stdout = out.stdout;
            outcome.stderr = out.stderr;
            Ok(outcome)
        }
        ExitStatus::Code(c) => Err(fail(format!("{module}: {what} exited with code {c}"), Some(c), false)),
        ExitStatus::Signal(s) => {
            Err(fail(format!("{module}: {what} was killed by signal {s}"), Some(out.status.code()), false))
        }
        ExitStatus::TimedOut => {
            let after = ctx.timeout.map(|t| format!(" after {}s", t.as_secs())).unwrap_or_default();
            Err(fail(
                format!(
                    "{module}: {what} timed out{after} and was stopped (raise the step's timeoutSeconds if it needs longer)"
                ),
                Some(out.status.code()),
                true,
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct ExecuteBash;

const BASH_FIELDS: &[super::util::Field] = &[req("commands", Ty::StrList)];

impl ExecuteBash {
    fn script(inputs: Option<&Node>) -> Result<String, ActionFailure> {
        let item = map_item("ExecuteBash", inputs)?
            .ok_or_else(|| ActionFailure::msg("ExecuteBash: the step has no inputs; it needs `commands`"))?;
        let commands =
            item.list_opt("commands")?.ok_or_else(|| item.fail("the input `commands` is missing"))?;
        let mut script = commands.join("\n");
        script.push('\n');
        Ok(script)
    }
}

static SCRIPT_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ActionModule for ExecuteBash {
    fn name(&self) -> &'static str {
        "ExecuteBash"
    }

    fn output_names(&self) -> &'static [&'static str] {
        &["stdout"]
    }

    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        let mut c = Checker { file, module: self.name(), diags };
        c.map_inputs(step_span, inputs, BASH_FIELDS, true);
    }

    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        let script = Self::script(inputs)?;
        if script.len() <= INLINE_SCRIPT_MAX {
            return run_process(
                ctx,
                "ExecuteBash",
                vec!["bash".into(), "-c".into(), script, "ExecuteBash".into()],
                "the script",
            );
        }
        // Too long for one argument: a private script file in the target's /tmp.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = SCRIPT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = format!("/tmp/kiln-executebash-{}-{nanos}-{n}.sh", std::process::id());
        ctx.host
            .create_dir_all("/tmp", Some(0o1777))
            .and_then(|_| ctx.host.write_file(&path, script.as_bytes(), WriteMode::CreateNew, Some(0o700)))
            .map_err(|e| {
                ActionFailure::msg(format!(
                    "ExecuteBash: cannot write the script to {path} in the image: {e}"
                ))
            })?;
        let result = run_process(ctx, "ExecuteBash", vec!["bash".into(), path.clone()], "the script");
        let _ = ctx.host.remove_file(&path);
        result
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct ExecuteBinary;

const BINARY_FIELDS: &[super::util::Field] = &[req("path", Ty::Str), opt("arguments", Ty::StrList)];

impl ActionModule for ExecuteBinary {
    fn name(&self) -> &'static str {
        "ExecuteBinary"
    }

    fn output_names(&self) -> &'static [&'static str] {
        &["stdout"]
    }

    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        let mut c = Checker { file, module: self.name(), diags };
        c.map_inputs(step_span, inputs, BINARY_FIELDS, true);
    }

    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        let item = map_item("ExecuteBinary", inputs)?
            .ok_or_else(|| ActionFailure::msg("ExecuteBinary: the step has no inputs; it needs `path`"))?;
        let path = item.str_req("path")?;
        // A bare name is looked up in the target's PATH; a relative path with a slash is taken
        // from the working directory.
        let program = if path.contains('/') { resolve(ctx, path) } else { path.to_string() };
        let mut argv = vec![program.clone()];
        argv.extend(item.list_opt("arguments")?.unwrap_or_default());
        run_process(ctx, "ExecuteBinary", argv, &format!("`{program}`"))
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct ExecuteDocument;

/// Nesting AWSTOE allows: three levels below the top document.
pub const MAX_DOCUMENT_DEPTH: u32 = 3;

const DOCUMENT_FIELDS: &[super::util::Field] = &[
    req("document", Ty::Str),
    opt("document-s3-bucket-owner", Ty::Str),
    opt("phases", Ty::Any),
    opt("parameters", Ty::Any),
];

impl ExecuteDocument {
    /// `phases`: a comma-separated string (AWSTOE's form) or a list.
    fn phases(item: &Item<'_>) -> Result<Vec<String>, ActionFailure> {
        let Some(node) = item.get("phases") else { return Ok(Vec::new()) };
        let raw: Vec<String> = match &node.kind {
            NodeKind::Scalar(s, _) => s.split(',').map(str::to_string).collect(),
            NodeKind::Seq(_) => item.list_opt("phases")?.unwrap_or_default(),
            _ => return Err(item.fail("`phases` must be a comma-separated list of phase names")),
        };
        Ok(raw.into_iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect())
    }

    /// `parameters`: AWSTOE's list of `name`/`value` maps, or a plain map.
    fn parameters(item: &Item<'_>) -> Result<Vec<(String, String)>, ActionFailure> {
        let Some(node) = item.get("parameters") else { return Ok(Vec::new()) };
        let text = |n: Option<&Node>| n.and_then(Node::as_str).map(str::to_string);
        match &node.kind {
            NodeKind::Seq(list) => list
                .iter()
                .enumerate()
                .map(|(i, p)| match (text(p.get("name")), p.get("value")) {
                    (Some(name), Some(v)) => Ok((name, v.as_str().unwrap_or_default().to_string())),
                    (Some(name), None) => Ok((name, String::new())),
                    _ => Err(item.fail(format!("parameter {} needs a `name` and a `value`", i + 1))),
                })
                .collect(),
            NodeKind::Map(entries) => Ok(entries
                .iter()
                .map(|(k, v)| {
                    (k.as_str().unwrap_or_default().to_string(), v.as_str().unwrap_or_default().to_string())
                })
                .collect()),
            _ => Err(item.fail("`parameters` must be a list of `name`/`value` pairs")),
        }
    }
}

impl ActionModule for ExecuteDocument {
    fn name(&self) -> &'static str {
        "ExecuteDocument"
    }

    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }

    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        let mut c = Checker { file, module: self.name(), diags };
        let Some(map) = c.map_inputs(step_span, inputs, DOCUMENT_FIELDS, true) else { return };
        if let Some(phases) = map.get("phases") {
            match &phases.kind {
                NodeKind::Scalar(..) | NodeKind::Null => {}
                NodeKind::Seq(items) => {
                    for i in items.iter().filter(|i| i.as_str().is_none()) {
                        c.err(i.span, "each ExecuteDocument phase must be a name", None);
                    }
                }
                NodeKind::Map(_) => c.err(
                    phases.span,
                    "ExecuteDocument `phases` must be a comma-separated list of phase names, found a map",
                    Some("write e.g. `phases: build,validate`".into()),
                ),
            }
        }
        if let Some(params) = map.get("parameters") {
            match &params.kind {
                NodeKind::Seq(items) => {
                    let fields = [req("name", Ty::Str), req("value", Ty::Any)];
                    for p in items {
                        if p.as_map().is_some() {
                            c.fields(p, &fields);
                        } else if !p.as_str().is_some_and(has_expr) {
                            c.err(
                                p.span,
                                format!(
                                    "each ExecuteDocument parameter must be a map, found {}",
                                    p.type_name()
                                ),
                                Some("write `- name: NAME` and `value: VALUE`".into()),
                            );
                        }
                    }
                }
                NodeKind::Map(entries) => {
                    for (_, v) in entries.iter().filter(|(_, v)| v.as_str().is_none() && !v.is_null()) {
                        c.err(v.span, "ExecuteDocument parameter values must be single values", None);
                    }
                }
                NodeKind::Null => {}
                NodeKind::Scalar(s, _) if has_expr(s) => {}
                NodeKind::Scalar(..) => c.err(
                    params.span,
                    "ExecuteDocument `parameters` must be a list of `name`/`value` pairs",
                    Some("write `- name: NAME` and `value: VALUE` under `parameters:`".into()),
                ),
            }
        }
    }

    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        let item = map_item("ExecuteDocument", inputs)?.ok_or_else(|| {
            ActionFailure::msg("ExecuteDocument: the step has no inputs; it needs `document`")
        })?;
        let document = item.str_req("document")?;
        if ctx.depth >= MAX_DOCUMENT_DEPTH {
            return Err(item.fail(format!(
                "cannot run `{document}`: documents may nest only {MAX_DOCUMENT_DEPTH} levels deep, and this one is already at level {}",
                ctx.depth
            )));
        }
        let remote = document.starts_with("s3://") || document.starts_with("arn:");
        if remote && !ctx.host.network_allowed() {
            return Err(item.fail(format!(
                "cannot fetch `{document}`: this infrastructure configuration allows no network; copy the document into the image and name its path instead"
            )));
        }
        let path = if remote { document.to_string() } else { resolve(ctx, document) };
        let phases = Self::phases(&item)?;
        let parameters = Self::parameters(&item)?;
        ctx.documents
            .run_document(&path, &phases, &parameters, ctx)
            .map_err(|e| item.fail(format!("the document `{path}` failed: {e}")))?;
        Ok(ActionOutcome::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_loses_trailing_newlines_only() {
        assert_eq!(stdout_output(b"s3\n"), "s3");
        assert_eq!(stdout_output(b" a b \r\n\n"), " a b ");
        assert_eq!(stdout_output(b"x\ny\n"), "x\ny");
    }
}
