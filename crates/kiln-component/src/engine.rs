//! The step engine: runs the phases of validated documents against a [`Host`].
//!
//! Semantics follow AWSTOE:
//! - documents run in the order given, each its selected phases in document order; a document
//!   that fails stops the run (later documents are not started);
//! - steps run in order; a step whose `if` is false is *skipped*; a looped step runs once per
//!   iteration, and `if` is evaluated per iteration (so it may use the loop variables);
//! - each attempt has the step's `timeoutSeconds`; a failed attempt is retried up to
//!   `maxAttempts`;
//! - when every attempt failed: `onFailure: Abort` fails the phase and the document and skips
//!   what remains; `Continue` records the failure, runs the remaining steps and fails the
//!   document at the end; `Ignore` records the step as *ignored* and the document can succeed;
//! - a reboot request (the Reboot module, exit code 194) restarts the target through
//!   [`Host::reboot`], then continues with the next step (Reboot) or re-runs the same step
//!   (194), as AWSTOE does after a real reboot. More than `max_reboots` reboots in one
//!   document fail it, so a step that always exits 194 cannot loop for ever;
//! - `{{ phase.Step.outputs.X }}` of a looped step is the value from its last iteration.
//!
//! Cancellation ([`RunOptions::cancel`]) is kiln's: the engine checks the token before every
//! step, iteration, attempt and reboot. Whoever owns the target makes a running step end (the
//! sandbox's cancel hook kills the session); the engine then reports that step, its phase, its
//! document and the run as [`Status::Cancelled`] — not as a failure with whatever error the
//! killed target gave, not retried, not ignored by `onFailure` — and skips what remains.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use kiln_host::{Cancel, Host};
use time::OffsetDateTime;

use crate::actions::{self, ActionContext, ActionOutcome, DocumentRunner, RebootRequest};
use crate::condition::StepAction;
use crate::document::{Document, LoopIteration, OnFailure, PhaseName, Step};
use crate::expr::{self, Reference, Section};
use crate::report::{
    AttemptReport, Captured, DocumentReport, IterationInfo, PhaseReport, RunReport, Status, StepReport,
    Timing,
};

/// What to run and how.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Phases to run, in document order; empty means every phase of the document.
    pub phases: Vec<PhaseName>,
    /// Parameter values given by the caller (`--param NAME=VALUE`).
    pub parameters: Vec<(String, String)>,
    /// Working directory inside the target; relative paths in inputs resolve against it.
    pub working_dir: String,
    /// Environment for every process the steps start.
    pub env: Vec<(String, String)>,
    /// Where the full output of every step is written, one file per step run.
    pub log_dir: Option<PathBuf>,
    /// How much of stdout and stderr the report keeps per step.
    pub output_cap: usize,
    /// Reboots allowed per document.
    pub max_reboots: u32,
    /// Reports of earlier runs of the same documents (matched by document name), whose step
    /// inputs and outputs later phases may chain to: a build runs its build phase and its
    /// validate phase separately, and a cached build layer keeps the report of the run that
    /// made it.
    pub earlier: Vec<DocumentReport>,
    /// Stops the run between steps when cancelled; see the module documentation.
    pub cancel: Option<Cancel>,
}

/// The failure message of a cancelled step, document and run.
pub const CANCELLED: &str = "the run was cancelled";

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            phases: Vec::new(),
            parameters: Vec::new(),
            working_dir: "/".to_string(),
            env: Vec::new(),
            log_dir: None,
            output_cap: 64 * 1024,
            max_reboots: 10,
            earlier: Vec::new(),
            cancel: None,
        }
    }
}

/// Progress events, for a terminal display or JSON event stream.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    DocumentStarted { document: &'a str },
    PhaseStarted { document: &'a str, phase: &'a str },
    StepStarted { document: &'a str, phase: &'a str, step: &'a str, attempt: u32 },
    StepFinished { document: &'a str, phase: &'a str, step: &'a str, status: Status, duration_ms: u64 },
    Rebooting { document: &'a str, step: &'a str },
}

/// Receives [`Event`]s.
pub trait Observer {
    fn event(&self, event: &Event<'_>);
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &Event<'_>) {}
}

/// Inputs and outputs of a finished step, for chaining.
#[derive(Debug, Clone, Default)]
struct StepRecord {
    inputs: serde_json::Value,
    outputs: serde_json::Map<String, serde_json::Value>,
}

/// Runs documents against one host.
pub struct Engine<'h> {
    host: &'h dyn Host,
    options: RunOptions,
    observer: &'h dyn Observer,
    /// Reports of documents run by ExecuteDocument, appended to the run report.
    nested: RefCell<Vec<DocumentReport>>,
    log_seq: RefCell<u32>,
}

impl std::fmt::Debug for Engine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("host", &self.host.describe()).field("options", &self.options).finish()
    }
}

/// The values an expression can see while one step runs.
struct Scope<'a> {
    parameters: &'a HashMap<String, String>,
    constants: &'a HashMap<String, String>,
    records: &'a HashMap<(PhaseName, String), StepRecord>,
    loop_name: Option<&'a str>,
    iteration: Option<&'a LoopIteration>,
}

impl Scope<'_> {
    fn resolve(&self, reference: &Reference) -> Result<String, String> {
        match reference {
            Reference::Variable(name) => self
                .parameters
                .get(name)
                .or_else(|| self.constants.get(name))
                .cloned()
                .ok_or_else(|| format!("`{name}` is neither a parameter nor a constant of this document")),
            Reference::Loop { name, field } => {
                let Some(iteration) = self.iteration else {
                    return Err("a loop variable is used in a step that has no loop".to_string());
                };
                if let Some(name) = name
                    && Some(name.as_str()) != self.loop_name
                {
                    return Err(format!("`{name}` is not the name of this step's loop"));
                }
                Ok(match field {
                    expr::LoopField::Index => iteration.index.to_string(),
                    expr::LoopField::Value => iteration.value.clone(),
                })
            }
            Reference::Chain(chain) => {
                let phase = PhaseName::from_name(&chain.phase).ok_or_else(|| {
                    format!("`{}` is not a phase: use build, validate or test", chain.phase)
                })?;
                let record = self
                    .records
                    .get(&(phase, chain.step.clone()))
                    .ok_or_else(|| format!("step `{}.{}` has not run (yet)", chain.phase, chain.step))?;
                let value = match chain.section {
                    Section::Outputs => record.outputs.get(&chain.field),
                    Section::Inputs => {
                        // `inputs[N].field` on list inputs, `inputs.field` on map inputs; a
                        // list without an index means its first item, as AWSTOE's examples use.
                        let item = match (&record.inputs, chain.index) {
                            (serde_json::Value::Array(items), i) => items.get(i.unwrap_or(0)),
                            (v @ serde_json::Value::Object(_), None | Some(0)) => Some(v),
                            _ => None,
                        };
                        item.and_then(|i| i.get(&chain.field))
                    }
                }
                .ok_or_else(|| format!("step `{}.{}` has no {reference}", chain.phase, chain.step))?;
                Ok(match value {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                })
            }
        }
    }

    fn render(&self, text: &str) -> Result<String, String> {
        expr::render(text, &mut |r| self.resolve(r))
    }
}

/// What happened to one step run (one iteration of a loop).
struct StepRun {
    report: StepReport,
    record: StepRecord,
    reboot: Option<RebootRequest>,
}

impl<'h> Engine<'h> {
    pub fn new(host: &'h dyn Host, options: RunOptions, observer: &'h dyn Observer) -> Self {
        Engine { host, options, observer, nested: RefCell::new(Vec::new()), log_seq: RefCell::new(0) }
    }

    fn cancelled(&self) -> bool {
        self.options.cancel.as_ref().is_some_and(Cancel::is_cancelled)
    }

    /// Run `documents` in order and report. Never panics on document content: every problem
    /// becomes a failed step, phase or document in the report.
    pub fn run(&self, documents: &[Document]) -> RunReport {
        let start = OffsetDateTime::now_utc();
        let mut reports = Vec::new();
        let mut failure = None;
        let mut cancelled = false;
        for doc in documents {
            let report = self.run_one(doc, &self.options.phases, &self.options.parameters, 0);
            cancelled = report.status == Status::Cancelled;
            let failed = report.status == Status::Failed || cancelled;
            if cancelled {
                failure = Some(CANCELLED.to_string());
            } else if failed {
                failure = Some(format!(
                    "document {} failed: {}",
                    report.name,
                    report.failure_message.clone().unwrap_or_default()
                ));
            }
            reports.push(report);
            reports.append(&mut self.nested.borrow_mut());
            if failed {
                break;
            }
        }
        RunReport {
            execution_id: execution_id(start),
            status: match (cancelled, &failure) {
                (true, _) => Status::Cancelled,
                (false, Some(_)) => Status::Failed,
                (false, None) => Status::Success,
            },
            timing: Timing::since(start),
            failure_message: failure,
            target: self.host.describe(),
            documents: reports,
        }
    }

    fn run_one(
        &self,
        doc: &Document,
        phases: &[PhaseName],
        given: &[(String, String)],
        depth: u32,
    ) -> DocumentReport {
        let start = OffsetDateTime::now_utc();
        let name = doc.name.clone().unwrap_or_else(|| doc.file.clone());
        self.observer.event(&Event::DocumentStarted { document: &name });
        let fail = |message: String| DocumentReport {
            name: name.clone(),
            file: doc.file.clone(),
            status: Status::Failed,
            timing: Timing::since(start),
            failure_message: Some(message),
            phases: Vec::new(),
        };
        let parameters: HashMap<String, String> = match doc.resolve_parameters(given) {
            Ok(p) => p.into_iter().collect(),
            Err(e) => return fail(e),
        };
        let constants: HashMap<String, String> =
            doc.constants.iter().map(|c| (c.name.clone(), c.value.clone())).collect();
        let mut records: HashMap<(PhaseName, String), StepRecord> = HashMap::new();
        for earlier in self.options.earlier.iter().filter(|r| r.name == name) {
            for phase in &earlier.phases {
                let Some(phase_name) = PhaseName::from_name(&phase.name) else { continue };
                // In run order, so a looped step's last iteration wins, as in a live run.
                for step in
                    phase.steps.iter().filter(|s| s.status == Status::Success || s.status == Status::Ignored)
                {
                    records.insert(
                        (phase_name, step.name.clone()),
                        StepRecord { inputs: step.inputs.clone(), outputs: step.outputs.clone() },
                    );
                }
            }
        }
        let mut phase_reports = Vec::new();
        let mut failure: Option<String> = None;
        let mut reboots = 0u32;
        let mut cancelled = false;

        for phase in doc.phases.iter().filter(|p| phases.is_empty() || phases.contains(&p.name)) {
            let phase_start = OffsetDateTime::now_utc();
            self.observer.event(&Event::PhaseStarted { document: &name, phase: phase.name.as_str() });
            let mut steps = Vec::new();
            let mut aborted = false;
            let mut phase_failed = false;
            for step in &phase.steps {
                cancelled = cancelled || self.cancelled();
                if cancelled {
                    steps.push(skipped(step, None, CANCELLED));
                    continue;
                }
                if aborted {
                    steps.push(skipped(step, None, "an earlier step failed with onFailure: Abort"));
                    continue;
                }
                let scope_base = Scope {
                    parameters: &parameters,
                    constants: &constants,
                    records: &records,
                    loop_name: None,
                    iteration: None,
                };
                let iterations = match &step.loop_ {
                    None => vec![None],
                    Some(l) => match l.iterations(&|t| scope_base.render(t)) {
                        Ok(list) => list.into_iter().map(Some).collect(),
                        Err(e) => {
                            let mut report = skipped(step, None, "");
                            report.status = Status::Failed;
                            report.skip_reason = None;
                            report.failure_message = Some(format!("loop: {e}"));
                            steps.push(report);
                            phase_failed = true;
                            aborted = step.on_failure == OnFailure::Abort;
                            failure.get_or_insert_with(|| format!("step {}: loop: {e}", step.name));
                            continue;
                        }
                    },
                };
                let mut last_record = None;
                let mut step_failed = false;
                for iteration in &iterations {
                    let mut rerun = true;
                    while rerun {
                        rerun = false;
                        // Before each iteration and each re-run after a reboot; the first
                        // one was checked above.
                        if self.cancelled() {
                            cancelled = true;
                            break;
                        }
                        let scope = Scope {
                            parameters: &parameters,
                            constants: &constants,
                            records: &records,
                            loop_name: step.loop_.as_ref().and_then(|l| l.name.as_deref()),
                            iteration: iteration.as_ref(),
                        };
                        let run = self.run_step(&name, phase.name, step, &scope, depth);
                        let StepRun { mut report, record, reboot } = run;
                        // A step can also fail of the cancel outside its attempts (its `if`
                        // condition asked a target that was just killed).
                        if report.status == Status::Failed && self.cancelled() {
                            report.status = Status::Cancelled;
                            report.failure_message = Some(CANCELLED.to_string());
                        }
                        let status = report.status;
                        steps.push(report);
                        if status == Status::Skipped {
                            continue;
                        }
                        if status == Status::Cancelled {
                            cancelled = true;
                            break;
                        }
                        last_record = Some(record);
                        if status == Status::Failed {
                            step_failed = true;
                            break;
                        }
                        if let Some(request) = reboot {
                            reboots += 1;
                            if reboots > self.options.max_reboots {
                                step_failed = true;
                                let msg = format!(
                                    "more than {} reboots in one document; a step that always asks for a reboot \
                                     (exit code 194) would loop for ever",
                                    self.options.max_reboots
                                );
                                if let Some(last) = steps.last_mut() {
                                    last.status = Status::Failed;
                                    last.failure_message = Some(msg);
                                }
                                break;
                            }
                            if self.cancelled() {
                                cancelled = true;
                                break;
                            }
                            self.observer.event(&Event::Rebooting { document: &name, step: &step.name });
                            if let Err(e) = self.host.reboot() {
                                step_failed = true;
                                if let Some(last) = steps.last_mut() {
                                    last.status = Status::Failed;
                                    last.failure_message = Some(format!("reboot failed: {e}"));
                                }
                                break;
                            }
                            rerun = request == RebootRequest::ThenRerunStep;
                        }
                    }
                    if step_failed || cancelled {
                        break;
                    }
                }
                if cancelled {
                    // What the step did is incomplete: no record to chain to, no onFailure.
                    continue;
                }
                if let Some(record) = last_record {
                    records.insert((phase.name, step.name.clone()), record);
                }
                if step_failed {
                    match step.on_failure {
                        OnFailure::Ignore => {
                            if let Some(last) = steps.last_mut() {
                                last.status = Status::Ignored;
                            }
                        }
                        OnFailure::Continue | OnFailure::Abort => {
                            phase_failed = true;
                            let message = steps
                                .last()
                                .and_then(|s| s.failure_message.clone())
                                .unwrap_or_else(|| "failed".to_string());
                            failure.get_or_insert_with(|| {
                                format!("{} step {}: {message}", phase.name.as_str(), step.name)
                            });
                            aborted = step.on_failure == OnFailure::Abort;
                        }
                    }
                }
            }
            phase_reports.push(PhaseReport {
                name: phase.name.as_str().to_string(),
                status: match (cancelled, phase_failed) {
                    (true, _) => Status::Cancelled,
                    (false, true) => Status::Failed,
                    (false, false) => Status::Success,
                },
                timing: Timing::since(phase_start),
                steps,
            });
            if phase_failed || cancelled {
                break;
            }
        }
        let status = match (cancelled, &failure) {
            (true, _) => Status::Cancelled,
            (false, Some(_)) => Status::Failed,
            (false, None) => Status::Success,
        };
        DocumentReport {
            name,
            file: doc.file.clone(),
            status,
            timing: Timing::since(start),
            failure_message: if cancelled { Some(CANCELLED.to_string()) } else { failure },
            phases: phase_reports,
        }
    }

    /// One step, or one iteration of a looped step, with its attempts.
    fn run_step(&self, doc: &str, phase: PhaseName, step: &Step, scope: &Scope<'_>, depth: u32) -> StepRun {
        let iteration = scope.iteration.map(|i| IterationInfo { index: i.index, value: i.value.clone() });
        if let Some(condition) = &step.condition {
            match condition.decide(&|t| scope.render(t), self.host, &self.options.working_dir) {
                Ok(StepAction::Execute) => {}
                Ok(StepAction::Skip) => {
                    let report = skipped(step, iteration, "its `if` condition decided to skip it");
                    return StepRun { report, record: StepRecord::default(), reboot: None };
                }
                Ok(StepAction::Abort) => {
                    let mut report = skipped(step, iteration, "");
                    report.skip_reason = None;
                    report.status = Status::Failed;
                    report.failure_message = Some("its `if` condition decided to abort".to_string());
                    return StepRun { report, record: StepRecord::default(), reboot: None };
                }
                Err(e) => {
                    let mut report = skipped(step, iteration, "");
                    report.skip_reason = None;
                    report.status = Status::Failed;
                    report.failure_message = Some(format!("if condition: {e}"));
                    return StepRun { report, record: StepRecord::default(), reboot: None };
                }
            }
        }
        let start = OffsetDateTime::now_utc();
        let mut report = skipped(step, iteration, "");
        report.skip_reason = None;

        let rendered = match &step.inputs {
            None => Ok(None),
            Some(node) => node.try_map_scalars(&mut |text, _| scope.render(text)).map(Some),
        };
        let inputs = match rendered {
            Ok(inputs) => inputs,
            Err(e) => {
                report.status = Status::Failed;
                report.failure_message = Some(format!("inputs: {e}"));
                report.timing = Some(Timing::since(start));
                return StepRun { report, record: StepRecord::default(), reboot: None };
            }
        };
        report.inputs = inputs.as_ref().map(|n| n.to_json()).unwrap_or(serde_json::Value::Null);
        let record_inputs = report.inputs.clone();

        let Some(module) = actions::lookup(&step.action) else {
            // The validator rejects unknown actions; this guards documents built in code.
            report.status = Status::Failed;
            report.failure_message = Some(format!("action `{}` is not implemented by kiln", step.action));
            report.timing = Some(Timing::since(start));
            return StepRun { report, record: StepRecord::default(), reboot: None };
        };

        let mut env = self.options.env.clone();
        env.push(("WORKING_DIRECTORY".to_string(), self.options.working_dir.clone()));
        let ctx = ActionContext {
            host: self.host,
            working_dir: &self.options.working_dir,
            timeout: step.timeout_seconds.map(Duration::from_secs),
            env: &env,
            documents: self,
            depth,
        };
        let attempts = step.max_attempts.max(1);
        let mut outcome: Option<ActionOutcome> = None;
        let mut last_failure = None;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        for attempt in 1..=attempts {
            // A failed attempt of a cancelled run is the cancel's doing: never retried.
            if attempt > 1 && self.cancelled() {
                break;
            }
            self.observer.event(&Event::StepStarted {
                document: doc,
                phase: phase.as_str(),
                step: &step.name,
                attempt,
            });
            let attempt_start = OffsetDateTime::now_utc();
            let result = module.run(inputs.as_ref(), &ctx);
            match result {
                Ok(done) => {
                    report.attempts.push(AttemptReport {
                        attempt,
                        status: Status::Success,
                        timing: Timing::since(attempt_start),
                        exit_code: done.exit_code,
                        failure_message: None,
                        timed_out: false,
                    });
                    stdout = done.stdout.clone();
                    stderr = done.stderr.clone();
                    outcome = Some(done);
                    break;
                }
                Err(failure) => {
                    report.attempts.push(AttemptReport {
                        attempt,
                        status: Status::Failed,
                        timing: Timing::since(attempt_start),
                        exit_code: failure.exit_code,
                        failure_message: Some(failure.message.clone()),
                        timed_out: failure.timed_out,
                    });
                    stdout = failure.stdout.clone();
                    stderr = failure.stderr.clone();
                    last_failure = Some(failure);
                }
            }
        }
        report.log_file = self.write_log(doc, phase, &step.name, &stdout, &stderr);
        report.stdout = Captured::capped(&stdout, self.options.output_cap);
        report.stderr = Captured::capped(&stderr, self.options.output_cap);
        report.timing = Some(Timing::since(start));
        let mut reboot = None;
        match outcome {
            Some(done) => {
                report.status = Status::Success;
                report.exit_code = done.exit_code;
                report.outputs = done.outputs;
                if done.reboot.is_some() {
                    report.reboots = 1;
                }
                reboot = done.reboot;
            }
            None if self.cancelled() => {
                // The target was killed under the step: its error says nothing about the step.
                report.status = Status::Cancelled;
                report.exit_code = last_failure.and_then(|f| f.exit_code);
                report.failure_message = Some(CANCELLED.to_string());
            }
            None => {
                report.status = Status::Failed;
                if let Some(f) = last_failure {
                    report.exit_code = f.exit_code;
                    report.failure_message = Some(if f.timed_out {
                        format!(
                            "{} (timed out after {}s)",
                            f.message,
                            step.timeout_seconds.unwrap_or_default()
                        )
                    } else {
                        f.message
                    });
                }
            }
        }
        let status = report.status;
        let duration_ms = report.timing.as_ref().map(|t| t.duration_ms).unwrap_or(0);
        self.observer.event(&Event::StepFinished {
            document: doc,
            phase: phase.as_str(),
            step: &step.name,
            status,
            duration_ms,
        });
        let record = StepRecord { inputs: record_inputs, outputs: report.outputs.clone() };
        StepRun { report, record, reboot }
    }

    /// Write a step's full output to the log directory; returns the file's path.
    fn write_log(
        &self,
        doc: &str,
        phase: PhaseName,
        step: &str,
        stdout: &[u8],
        stderr: &[u8],
    ) -> Option<String> {
        let dir = self.options.log_dir.as_ref()?;
        let seq = {
            let mut seq = self.log_seq.borrow_mut();
            *seq += 1;
            *seq
        };
        let safe = |s: &str| {
            s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect::<String>()
        };
        let path = dir.join(format!("{seq:04}-{}-{}-{}.log", safe(doc), phase.as_str(), safe(step)));
        let mut text = Vec::with_capacity(stdout.len() + stderr.len() + 64);
        text.extend_from_slice(b"=== stdout\n");
        text.extend_from_slice(stdout);
        text.extend_from_slice(b"\n=== stderr\n");
        text.extend_from_slice(stderr);
        let written = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, text));
        match written {
            Ok(()) => Some(path.display().to_string()),
            Err(e) => {
                tracing::warn!("cannot write step log {}: {e}", path.display());
                None
            }
        }
    }
}

impl DocumentRunner for Engine<'_> {
    fn run_document(
        &self,
        path: &str,
        phases: &[String],
        parameters: &[(String, String)],
        ctx: &ActionContext<'_>,
    ) -> Result<(), String> {
        // The ExecuteDocument module enforces AWSTOE's nesting limit before calling this.
        if path.starts_with("arn:") {
            return Err(format!(
                "document {path}: component ARNs are not resolved here yet (they need kiln's catalogue); \
                 give a path inside the target or an s3:// URI"
            ));
        }
        let (full, bytes) = if path.starts_with("s3://") || path.starts_with("S3://") {
            (path.to_string(), actions::s3::get_object(ctx, path, None)?)
        } else {
            let full = if path.starts_with('/') { path.to_string() } else { join(ctx.working_dir, path) };
            let bytes = ctx.host.read_file(&full).map_err(|e| format!("cannot read document {full}: {e}"))?;
            (full, bytes)
        };
        let text = String::from_utf8(bytes).map_err(|_| format!("document {full} is not UTF-8 text"))?;
        let doc = crate::document::parse_document(&full, &text).map_err(|diags| {
            let lines: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            format!("document {full} is invalid:\n{}", lines.join("\n"))
        })?;
        let mut selected = Vec::new();
        for p in phases {
            let name = PhaseName::from_name(p.trim())
                .ok_or_else(|| format!("unknown phase `{p}`: use build, validate or test"))?;
            selected.push(name);
        }
        let report = self.run_one(&doc, &selected, parameters, ctx.depth + 1);
        let status = report.status;
        let message = report.failure_message.clone();
        self.nested.borrow_mut().push(report);
        if status == Status::Failed {
            return Err(format!("document {full} failed: {}", message.unwrap_or_default()));
        }
        Ok(())
    }
}

/// Join a relative path onto an absolute directory inside the target.
pub fn join(dir: &str, rel: &str) -> String {
    if dir.ends_with('/') { format!("{dir}{rel}") } else { format!("{dir}/{rel}") }
}

fn skipped(step: &Step, iteration: Option<IterationInfo>, reason: &str) -> StepReport {
    StepReport {
        name: step.name.clone(),
        action: step.action.clone(),
        status: Status::Skipped,
        iteration,
        on_failure: format!("{:?}", step.on_failure),
        max_attempts: step.max_attempts,
        attempts: Vec::new(),
        timing: None,
        inputs: serde_json::Value::Null,
        outputs: serde_json::Map::new(),
        exit_code: None,
        stdout: Captured::default(),
        stderr: Captured::default(),
        log_file: None,
        failure_message: None,
        skip_reason: if reason.is_empty() { None } else { Some(reason.to_string()) },
        reboots: 0,
    }
}

fn execution_id(start: OffsetDateTime) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(start.unix_timestamp_nanos().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    let digest = hex::encode(h.finalize());
    format!(
        "{}-{}-{}-{}-{}",
        &digest[0..8],
        &digest[8..12],
        &digest[12..16],
        &digest[16..20],
        &digest[20..32]
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use kiln_host::{
        DirEntry, ExecOutput, ExecRequest, ExitStatus, HostError, HostErrorKind, HostResult, Metadata,
        WriteMode,
    };

    use super::*;
    use crate::document::parse_document;

    /// Runs every exec successfully, except a script containing `block`: that one stands for a
    /// step running when the build is cancelled — the token is cancelled and the target dies
    /// under the step, as the sandbox's cancel hook makes it.
    struct CancelledUnderStep {
        cancel: Cancel,
        execs: Mutex<Vec<String>>,
    }

    impl Host for CancelledUnderStep {
        fn describe(&self) -> String {
            "a target cancelled under a step".into()
        }
        fn network_allowed(&self) -> bool {
            false
        }
        fn exec(&self, req: &ExecRequest) -> HostResult<ExecOutput> {
            let script = req.argv.join(" ");
            self.execs.lock().unwrap_or_else(|p| p.into_inner()).push(script.clone());
            if script.contains("block") {
                self.cancel.cancel();
                return Err(HostError::new(HostErrorKind::Target, "sandbox agent unreachable: EOF"));
            }
            Ok(ExecOutput {
                status: ExitStatus::Code(0),
                stdout: Vec::new(),
                stderr: Vec::new(),
                duration: Duration::ZERO,
            })
        }
        fn read_file(&self, p: &str) -> HostResult<Vec<u8>> {
            Err(HostError::new(HostErrorKind::NotFound, p))
        }
        fn write_file(&self, _: &str, _: &[u8], _: WriteMode, _: Option<u32>) -> HostResult<()> {
            Ok(())
        }
        fn create_dir_all(&self, _: &str, _: Option<u32>) -> HostResult<()> {
            Ok(())
        }
        fn metadata(&self, p: &str) -> HostResult<Metadata> {
            Err(HostError::new(HostErrorKind::NotFound, p))
        }
        fn list_dir(&self, _: &str) -> HostResult<Vec<DirEntry>> {
            Ok(Vec::new())
        }
        fn remove_file(&self, _: &str) -> HostResult<()> {
            Ok(())
        }
        fn remove_dir(&self, _: &str, _: bool) -> HostResult<()> {
            Ok(())
        }
        fn rename(&self, _: &str, _: &str) -> HostResult<()> {
            Ok(())
        }
        fn copy_file(&self, _: &str, _: &str) -> HostResult<()> {
            Ok(())
        }
        fn symlink(&self, _: &str, _: &str) -> HostResult<()> {
            Ok(())
        }
        fn read_link(&self, p: &str) -> HostResult<String> {
            Err(HostError::new(HostErrorKind::NotFound, p))
        }
        fn set_permissions(&self, _: &str, _: u32) -> HostResult<()> {
            Ok(())
        }
        fn set_owner(&self, _: &str, _: Option<u32>, _: Option<u32>) -> HostResult<()> {
            Ok(())
        }
        fn lookup_user(&self, _: &str) -> HostResult<u32> {
            Ok(0)
        }
        fn lookup_group(&self, _: &str) -> HostResult<u32> {
            Ok(0)
        }
        fn reboot(&self) -> HostResult<()> {
            Ok(())
        }
    }

    const DOC: &str = "name: cancelled
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: First
        action: ExecuteBash
        inputs:
          commands: [\"echo first\"]
      - name: Slow
        action: ExecuteBash
        maxAttempts: 3
        onFailure: Ignore
        inputs:
          commands: [\"echo block\"]
      - name: Never
        action: ExecuteBash
        inputs:
          commands: [\"echo never\"]
  - name: validate
    steps:
      - name: NeverEither
        action: ExecuteBash
        inputs:
          commands: [\"echo never-either\"]
";

    #[test]
    fn a_cancel_during_a_step_cancels_it_without_retry_or_ignore_and_skips_the_rest() {
        let doc = parse_document("cancelled.yml", DOC).expect("the document is valid");
        let second = parse_document("second.yml", &DOC.replace("name: cancelled", "name: second"))
            .expect("the document is valid");
        let cancel = Cancel::new();
        let host = CancelledUnderStep { cancel: cancel.clone(), execs: Mutex::default() };
        let options = RunOptions { cancel: Some(cancel), ..RunOptions::default() };
        let report = Engine::new(&host, options, &Quiet).run(&[doc, second]);

        let execs = host.execs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(execs.len(), 2, "one attempt of the cancelled step, nothing after it: {execs:?}");
        assert_eq!(report.status, Status::Cancelled);
        assert!(!report.success());
        assert_eq!(report.failure_message.as_deref(), Some(CANCELLED));
        assert_eq!(report.documents.len(), 1, "the second document never starts");
        let doc = &report.documents[0];
        assert_eq!(doc.status, Status::Cancelled);
        assert_eq!(doc.phases.len(), 1, "the validate phase never starts");
        assert_eq!(doc.phases[0].status, Status::Cancelled);
        let steps: Vec<(&str, Status)> =
            doc.phases[0].steps.iter().map(|s| (s.name.as_str(), s.status)).collect();
        assert_eq!(
            steps,
            [("First", Status::Success), ("Slow", Status::Cancelled), ("Never", Status::Skipped)]
        );
        let slow = &doc.phases[0].steps[1];
        assert_eq!(slow.attempts.len(), 1, "a cancelled step is not retried");
        assert_eq!(slow.failure_message.as_deref(), Some(CANCELLED), "not the dead target's error");
        assert_eq!(doc.phases[0].steps[2].skip_reason.as_deref(), Some(CANCELLED));
    }

    #[test]
    fn a_run_cancelled_before_it_starts_runs_nothing() {
        let doc = parse_document("cancelled.yml", DOC).expect("the document is valid");
        let cancel = Cancel::new();
        cancel.cancel();
        let host = CancelledUnderStep { cancel: cancel.clone(), execs: Mutex::default() };
        let options = RunOptions { cancel: Some(cancel), ..RunOptions::default() };
        let report = Engine::new(&host, options, &Quiet).run(&[doc]);
        assert!(host.execs.lock().unwrap_or_else(|p| p.into_inner()).is_empty());
        assert_eq!(report.status, Status::Cancelled);
        assert!(report.documents[0].phases[0].steps.iter().all(|s| s.status == Status::Skipped));
    }
}
