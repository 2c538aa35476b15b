//! Validation: the node tree to a [`Document`], with every problem reported at
//! `FILE:LINE:COLUMN` together with what would be right.
//!
//! Strict where AWSTOE is strict (unknown fields, actions, phase names, step names, types,
//! references), lenient where AWS's own documents rely on leniency:
//! - `schemaVersion` may be written `1`, `1.0` or `"1.0"`;
//! - scalars are text: `permissions: 0755`, `document-s3-bucket-owner: 123456789012` and
//!   `phases: build,validate` reach the action modules as written, and only the modules judge
//!   their inputs;
//! - `{{ }}` placeholders may appear unquoted in plain scalars (`cd {{ test.X.inputs[0].destination }}`);
//! - an unclosed `{{` is literal text (see [`crate::expr`]);
//! - `allowedValues` on parameters is accepted, and `name`/`description` are optional.
//!
//! Rules decided where AWSTOE's documentation is silent:
//! - parameter and constant names follow the documented constant-name rules for both: 3 to 128
//!   characters from `A-Z a-z 0-9 - _`; `type` is required and must be `string`;
//! - phase names are exactly `build`, `validate`, `test` (lowercase); each at most once; a phase
//!   needs at least one step; step names are unique within a phase (the same name in another
//!   phase is fine);
//! - `onFailure` values are case-sensitive (`Abort`, `Continue`, `Ignore`); `timeoutSeconds` is a
//!   positive whole number or `-1` (no limit, as documented; 0 and other negatives are errors);
//!   `maxAttempts` is a positive whole number;
//! - chaining may refer to an earlier step of the same phase or to any step of a phase that comes
//!   earlier in the document (phases run in document order, and AWSTOE documents references
//!   "from other steps and phases in the same document"); a step never refers to itself or to a
//!   later step or phase. `inputs[N].field` must name an input that is written in the referred
//!   step. `outputs.NAME` must be an output of the referred step's action: the registered
//!   module's `output_names()`, or, before a module is registered, `stdout` for ExecuteBash and
//!   ExecuteBinary, `content` or `stdout` for ReadFile, and any name for other actions;
//! - loop variables (`loop.*`, `<loopName>.*`) are valid only in the inputs of the step whose
//!   loop they name (AWSTOE would leave them unreplaced elsewhere, which is never intended);
//!   loop names use `A-Z a-z 0-9 - _` and are unique within a phase;
//! - `for` bounds accept parameters and constants but not chaining expressions (documented) nor
//!   loop variables; `forEach` values and lists accept chaining; the delimiter is one of the
//!   documented characters `. , ; : \n \t space - _` and accepts no expressions;
//! - `if` operands accept parameters, constants and chaining, but not loop variables (the
//!   condition is evaluated once per step, not per iteration).

use std::collections::HashMap;

use crate::actions::{self, WINDOWS_ONLY};
use crate::condition::Condition;
use crate::diag::{Diagnostic, suggest};
use crate::document::Loop;
use crate::document::{
    Constant, DEFAULT_TIMEOUT_SECONDS, Document, LoopKind, MAX_LOOP_ITERATIONS, OnFailure, Parameter, Phase,
    PhaseName, Step, check_for_bounds,
};
use crate::expr::{self, ChainRef, Reference, Section};
use crate::node::{Node, NodeKind, ScalarStyle, Span};

/// AWSTOE's action modules for Linux. Validation recognises these even before kiln registers
/// a module for each (see [`actions::registry`]).
pub const LINUX_ACTIONS: &[&str] = &[
    "ExecuteBash",
    "ExecuteBinary",
    "ExecuteDocument",
    "CreateFile",
    "AppendFile",
    "CopyFile",
    "MoveFile",
    "DeleteFile",
    "CreateSymlink",
    "CreateFolder",
    "CopyFolder",
    "MoveFolder",
    "DeleteFolder",
    "ListFiles",
    "ReadFile",
    "SetFileEncoding",
    "SetFileOwner",
    "SetFolderOwner",
    "SetFilePermissions",
    "SetFolderPermissions",
    "WebDownload",
    "S3Download",
    "S3Upload",
    "UpdateOS",
    "Reboot",
    "Assert",
];

const TOP_FIELDS: &[&str] = &["name", "description", "schemaVersion", "parameters", "constants", "phases"];
const PARAMETER_FIELDS: &[&str] = &["type", "default", "description", "allowedValues"];
const CONSTANT_FIELDS: &[&str] = &["type", "value"];
const PHASE_FIELDS: &[&str] = &["name", "steps"];
const STEP_FIELDS: &[&str] =
    &["name", "action", "inputs", "timeoutSeconds", "onFailure", "maxAttempts", "loop", "if"];
const LOOP_FIELDS: &[&str] = &["name", "for", "forEach"];
const FOR_FIELDS: &[&str] = &["start", "end", "updateBy"];
const FOREACH_FIELDS: &[&str] = &["list", "delimiter"];
/// The documented delimiter characters of a delimited `forEach`.
const DELIMITERS: &[char] = &['.', ',', ';', ':', '\n', '\t', ' ', '-', '_'];

/// Build the document from `root`, collecting every problem. `text` is the source (without a
/// byte-order mark), used to place diagnostics inside multi-line scalars. The document is
/// `None` only when the root is not a map.
pub(crate) fn build(file: &str, text: &str, root: &Node) -> (Option<Document>, Vec<Diagnostic>) {
    let mut v = Validator::new(file, text);
    let doc = v.document(root);
    if let Some(doc) = &doc {
        v.semantics(doc);
    }
    (doc, v.diags)
}

/// The outputs an action defines, if known; `None` means any name is accepted.
pub fn action_outputs(action: &str) -> Option<&'static [&'static str]> {
    if let Some(module) = actions::lookup(action) {
        return Some(module.output_names());
    }
    match action {
        "ExecuteBash" | "ExecuteBinary" => Some(&["stdout"]),
        "ReadFile" => Some(&["content", "stdout"]),
        _ => None,
    }
}

/// Parameter and constant names: 3–128 characters from `A-Z a-z 0-9 - _`.
fn is_variable_name(name: &str) -> bool {
    (3..=128).contains(&name.chars().count())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn is_loop_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

struct Validator<'a> {
    file: &'a str,
    text: &'a str,
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
    diags: Vec<Diagnostic>,
}

/// Where a placeholder stands, which decides what it may refer to.
#[derive(Clone, Copy)]
struct Scope<'d> {
    /// Index of the phase and step in the document.
    phase: usize,
    step: usize,
    /// The step's loop name: `None` without a loop, `Some(None)` for an unnamed loop.
    loop_name: Option<Option<&'d str>>,
    /// Whether loop variables may be used here (step inputs only).
    allow_loop: bool,
    /// Whether chaining may be used here.
    allow_chain: bool,
    /// Where the placeholder stands, for messages ("in `for` bounds").
    place: &'static str,
}

impl<'a> Validator<'a> {
    fn new(file: &'a str, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Validator { file, text, line_starts, diags: Vec::new() }
    }

    fn error(&mut self, span: Span, message: impl Into<String>) {
        self.diags.push(Diagnostic::new(self.file, span, message));
    }

    fn error_hint(&mut self, span: Span, message: impl Into<String>, hint: impl Into<String>) {
        self.diags.push(Diagnostic::new(self.file, span, message).with_hint(hint));
    }

    /// Report keys of `map` that are not in `allowed`, suggesting the closest allowed one.
    fn check_keys(&mut self, map: &[(Node, Node)], allowed: &[&str], what: &str) {
        for (key, _) in map {
            let Some(name) = key.as_str() else {
                self.error(key.span, format!("{what} keys must be plain names"));
                continue;
            };
            if allowed.contains(&name) {
                continue;
            }
            let hint = match suggest(name, allowed.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("expected one of: {}", allowed.join(", ")),
            };
            self.error_hint(key.span, format!("unknown {what} field `{name}`"), hint);
        }
    }

    /// A scalar's text, or an error naming `what` and the expected type.
    fn text(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.error(node.span, format!("`{what}` must be a string, not {}", node.type_name()));
                None
            }
        }
    }

    /// An optional scalar: `Null` is absent.
    fn optional_text(&mut self, node: Option<&Node>, what: &str) -> Option<String> {
        match node {
            None => None,
            Some(n) if n.is_null() => None,
            Some(n) => self.text(n, what),
        }
    }

    fn require<'n>(&mut self, map: &'n Node, key: &str, what: &str, hint: &str) -> Option<&'n Node> {
        let found = map.get(key);
        if found.is_none() {
            self.error_hint(map.span, format!("{what} has no `{key}`"), hint.to_string());
        }
        found
    }

    // ---- structure ------------------------------------------------------------------------

    fn document(&mut self, root: &Node) -> Option<Document> {
        let Some(entries) = root.as_map() else {
            if root.is_null() {
                self.error_hint(
                    root.span,
                    "the document is empty",
                    "a component document needs at least `schemaVersion: 1.0` and `phases`",
                );
            } else {
                self.error(
                    root.span,
                    format!(
                        "a component document must be a map with `schemaVersion` and `phases`, not {}",
                        root.type_name()
                    ),
                );
            }
            return None;
        };
        self.check_keys(entries, TOP_FIELDS, "document");
        let name = self.optional_text(root.get("name"), "name");
        let description = self.optional_text(root.get("description"), "description");
        let schema_version =
            match self.require(root, "schemaVersion", "the document", "add `schemaVersion: 1.0`") {
                Some(node) => match node.as_str() {
                    Some("1.0" | "1") => "1.0".to_string(),
                    _ => {
                        let written =
                            node.as_str().map_or_else(|| node.type_name().to_string(), |s| format!("`{s}`"));
                        self.error_hint(
                            node.span,
                            format!("unsupported schemaVersion {written}"),
                            "AWSTOE has only schema version 1.0: write `schemaVersion: 1.0`",
                        );
                        String::new()
                    }
                },
                None => String::new(),
            };
        let parameters = root.get("parameters").map(|n| self.parameters(n)).unwrap_or_default();
        let constants = root.get("constants").map(|n| self.constants(n)).unwrap_or_default();
        for c in &constants {
            if let Some(p) = parameters.iter().find(|p| p.name == c.name) {
                self.error_hint(
                    c.span,
                    format!("constant `{}` has the same name as a parameter", c.name),
                    format!("the parameter is declared at line {}; rename one of them", p.span.line),
                );
            }
        }
        let phases =
            match self.require(root, "phases", "the document", "add `phases:` with at least one phase") {
                Some(node) => self.phases(node),
                None => Vec::new(),
            };
        Some(Document {
            file: self.file.to_string(),
            name,
            description,
            schema_version,
            parameters,
            constants,
            phases,
        })
    }

    /// A `parameters:`/`constants:` list item: a map with one key, the name, over a map of
    /// fields. Returns the name, its key node and the fields.
    fn named_item<'n>(&mut self, item: &'n Node, what: &str) -> Option<(String, &'n Node, &'n Node)> {
        let shape_hint = format!("write each {what} as `- Name:` followed by its indented fields");
        let Some(entries) = item.as_map().filter(|e| e.len() == 1) else {
            self.error_hint(
                item.span,
                format!("a {what} must be a map with exactly one key, its name"),
                shape_hint,
            );
            return None;
        };
        let (key, fields) = (&entries[0].0, &entries[0].1);
        let Some(name) = key.as_str() else {
            self.error(key.span, format!("a {what} name must be a string"));
            return None;
        };
        if !is_variable_name(name) {
            self.error_hint(
                key.span,
                format!("invalid {what} name `{name}`"),
                "names have 3 to 128 characters from A-Z, a-z, 0-9, `-` and `_`",
            );
        }
        if fields.as_map().is_none() {
            self.error_hint(
                key.span,
                format!("{what} `{name}` must have fields such as `type: string`"),
                shape_hint,
            );
            return None;
        }
        Some((name.to_string(), key, fields))
    }

    fn check_type(&mut self, key: &Node, fields: &Node, name: &str, what: &str) -> String {
        match fields.get("type") {
            None => {
                self.error_hint(key.span, format!("{what} `{name}` has no `type`"), "add `type: string`");
                String::new()
            }
            Some(t) if t.as_str() == Some("string") => "string".to_string(),
            Some(t) => {
                self.error_hint(
                    t.span,
                    format!("unsupported {what} type {}", t.as_str().map_or("".into(), |s| format!("`{s}`"))),
                    "the only type is `string`",
                );
                String::new()
            }
        }
    }

    fn parameters(&mut self, node: &Node) -> Vec<Parameter> {
        if node.is_null() {
            return Vec::new();
        }
        let Some(items) = node.as_seq() else {
            self.error(node.span, format!("`parameters` must be a list, not {}", node.type_name()));
            return Vec::new();
        };
        let mut out: Vec<Parameter> = Vec::new();
        for item in items {
            let Some((name, key, fields)) = self.named_item(item, "parameter") else { continue };
            self.check_keys(fields.as_map().unwrap_or_default(), PARAMETER_FIELDS, "parameter");
            let param_type = self.check_type(key, fields, &name, "parameter");
            let default = self.optional_scalar_value(fields.get("default"), "default");
            let description = self.optional_text(fields.get("description"), "description");
            let allowed_values = fields.get("allowedValues").and_then(|n| self.allowed_values(n));
            if let (Some(d), Some(allowed), Some(dnode)) = (&default, &allowed_values, fields.get("default"))
            {
                if !allowed.contains(d) {
                    self.error_hint(
                        dnode.span,
                        format!("the default `{d}` of parameter `{name}` is not one of its allowedValues"),
                        format!("allowed: {}", allowed.join(", ")),
                    );
                }
            }
            if let Some(first) = out.iter().find(|p| p.name == name) {
                let line = first.span.line;
                self.error_hint(
                    key.span,
                    format!("parameter `{name}` is declared twice"),
                    format!("first at line {line}"),
                );
                continue;
            }
            out.push(Parameter { name, param_type, default, description, allowed_values, span: key.span });
        }
        out
    }

    /// A scalar value that may be empty (`default: ''`, `default:`).
    fn optional_scalar_value(&mut self, node: Option<&Node>, what: &str) -> Option<String> {
        match node {
            None => None,
            Some(n) if n.is_null() => Some(String::new()),
            Some(n) => self.text(n, what),
        }
    }

    fn allowed_values(&mut self, node: &Node) -> Option<Vec<String>> {
        let Some(items) = node.as_seq().filter(|i| !i.is_empty()) else {
            self.error(node.span, "`allowedValues` must be a non-empty list of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(if item.is_null() { String::new() } else { self.text(item, "allowedValues")? });
        }
        Some(out)
    }

    fn constants(&mut self, node: &Node) -> Vec<Constant> {
        if node.is_null() {
            return Vec::new();
        }
        let Some(items) = node.as_seq() else {
            self.error(node.span, format!("`constants` must be a list, not {}", node.type_name()));
            return Vec::new();
        };
        let mut out: Vec<Constant> = Vec::new();
        for item in items {
            let Some((name, key, fields)) = self.named_item(item, "constant") else { continue };
            self.check_keys(fields.as_map().unwrap_or_default(), CONSTANT_FIELDS, "constant");
            self.check_type(key, fields, &name, "constant");
            let value = match fields.get("value") {
                None => {
                    self.error_hint(
                        key.span,
                        format!("constant `{name}` has no `value`"),
                        "add `value: ...`",
                    );
                    continue;
                }
                Some(v) => match self.optional_scalar_value(Some(v), "value") {
                    Some(v) => v,
                    None => continue,
                },
            };
            if let Some(first) = out.iter().find(|c| c.name == name) {
                let line = first.span.line;
                self.error_hint(
                    key.span,
                    format!("constant `{name}` is declared twice"),
                    format!("first at line {line}"),
                );
                continue;
            }
            out.push(Constant { name, value, span: key.span });
        }
        out
    }

    fn phases(&mut self, node: &Node) -> Vec<Phase> {
        let Some(items) = node.as_seq().filter(|i| !i.is_empty()) else {
            self.error_hint(
                node.span,
                format!("`phases` must be a list of at least one phase, not {}", shape(node)),
                "add `- name: build` with its `steps`",
            );
            return Vec::new();
        };
        let mut out: Vec<Phase> = Vec::new();
        for item in items {
            let Some(entries) = item.as_map() else {
                self.error(
                    item.span,
                    format!("a phase must be a map with `name` and `steps`, not {}", item.type_name()),
                );
                continue;
            };
            self.check_keys(entries, PHASE_FIELDS, "phase");
            let name_node =
                self.require(item, "name", "this phase", "add `name: build`, `validate` or `test`");
            let name = name_node.and_then(|n| {
                let written = n.as_str().unwrap_or_default();
                let phase = PhaseName::from_name(written);
                if phase.is_none() {
                    let mut d = Diagnostic::new(self.file, n.span, format!("unknown phase `{written}`"));
                    d = match suggest(written, PhaseName::ALL.iter().map(|p| p.as_str())) {
                        Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                        None => d.with_hint("phases are `build`, `validate` and `test`"),
                    };
                    self.diags.push(d);
                }
                phase
            });
            if let (Some(name), Some(n)) = (name, name_node) {
                if let Some(first) = out.iter().find(|p| p.name == name) {
                    let line = first.span.line;
                    self.error_hint(
                        n.span,
                        format!("phase `{name}` is defined twice"),
                        format!("first at line {line}; merge the steps into one phase"),
                    );
                    continue;
                }
            }
            let steps = match self.require(item, "steps", "this phase", "add `steps:` with at least one step")
            {
                Some(steps) => self.steps(steps),
                None => Vec::new(),
            };
            if let Some(name) = name {
                out.push(Phase { name, steps, span: item.span });
            }
        }
        out
    }

    fn steps(&mut self, node: &Node) -> Vec<Step> {
        let Some(items) = node.as_seq().filter(|i| !i.is_empty()) else {
            self.error(
                node.span,
                format!("`steps` must be a list of at least one step, not {}", shape(node)),
            );
            return Vec::new();
        };
        items.iter().filter_map(|item| self.step(item)).collect()
    }

    fn step(&mut self, item: &Node) -> Option<Step> {
        let Some(entries) = item.as_map() else {
            self.error(
                item.span,
                format!("a step must be a map with `name` and `action`, not {}", item.type_name()),
            );
            return None;
        };
        self.check_keys(entries, STEP_FIELDS, "step");
        let name = self
            .require(item, "name", "this step", "add `name:` with a name unique in the phase")
            .and_then(|n| self.text(n, "name"))
            .filter(|n| !n.is_empty());
        let action_node =
            self.require(item, "action", "this step", "add `action:`, for example `action: ExecuteBash`");
        let action = action_node.and_then(|n| self.text(n, "action"));
        let timeout_seconds = match item.get("timeoutSeconds") {
            None => Some(DEFAULT_TIMEOUT_SECONDS),
            Some(n) => match n.as_i64() {
                Some(-1) => None,
                Some(secs) if secs > 0 => Some(secs.unsigned_abs()),
                _ => {
                    self.error_hint(
                        n.span,
                        format!("`timeoutSeconds` must be a positive whole number, not {}", shown(n)),
                        "give seconds, such as `timeoutSeconds: 300`, or -1 for no limit",
                    );
                    Some(DEFAULT_TIMEOUT_SECONDS)
                }
            },
        };
        let max_attempts = match item.get("maxAttempts") {
            None => 1,
            Some(n) => match n.as_i64().and_then(|a| u32::try_from(a).ok()).filter(|a| *a > 0) {
                Some(a) => a,
                None => {
                    self.error_hint(
                        n.span,
                        format!("`maxAttempts` must be a positive whole number, not {}", shown(n)),
                        "for example `maxAttempts: 3`",
                    );
                    1
                }
            },
        };
        let on_failure = match item.get("onFailure") {
            None => OnFailure::Abort,
            Some(n) => match n.as_str().and_then(OnFailure::from_name) {
                Some(f) => f,
                None => {
                    let written = n.as_str().unwrap_or_default();
                    let hint = match suggest(written, OnFailure::NAMES.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => "use Abort, Continue or Ignore".to_string(),
                    };
                    self.error_hint(
                        n.span,
                        format!("`onFailure` must be Abort, Continue or Ignore, not {}", shown(n)),
                        hint,
                    );
                    OnFailure::Abort
                }
            },
        };
        let loop_ = item.get("loop").and_then(|n| self.loop_(n));
        let condition = item.get("if").and_then(|n| Condition::parse(self.file, n, &mut self.diags));
        Some(Step {
            name: name?,
            action: action?,
            inputs: item.get("inputs").cloned(),
            timeout_seconds,
            on_failure,
            max_attempts,
            loop_,
            condition,
            span: item.span,
            action_span: action_node.map_or(item.span, |n| n.span),
        })
    }

    fn loop_(&mut self, node: &Node) -> Option<Loop> {
        let Some(entries) = node.as_map() else {
            self.error(
                node.span,
                format!("`loop` must be a map with `for` or `forEach`, not {}", node.type_name()),
            );
            return None;
        };
        self.check_keys(entries, LOOP_FIELDS, "loop");
        let name = self.optional_text(node.get("name"), "name");
        if let Some(n) = &name {
            if !is_loop_name(n) {
                let span = node.get("name").map_or(node.span, |n| n.span);
                self.error_hint(
                    span,
                    format!("invalid loop name `{n}`"),
                    "loop names use A-Z, a-z, 0-9, `-` and `_`",
                );
            }
        }
        let kind = match (node.entry("for"), node.entry("forEach")) {
            (Some(_), Some((key, _))) => {
                self.error(key.span, "a loop has either `for` or `forEach`, not both");
                return None;
            }
            (None, None) => {
                self.error_hint(
                    node.span,
                    "the loop has neither `for` nor `forEach`",
                    "add `for:` with start, end and updateBy, or `forEach:` with a list",
                );
                return None;
            }
            (Some((_, f)), None) => self.for_loop(f)?,
            (None, Some((_, e))) => self.foreach_loop(e)?,
        };
        Some(Loop { name, kind, span: node.span })
    }

    fn for_loop(&mut self, node: &Node) -> Option<LoopKind> {
        let Some(entries) = node.as_map() else {
            self.error(
                node.span,
                format!("`for` must be a map with start, end and updateBy, not {}", node.type_name()),
            );
            return None;
        };
        self.check_keys(entries, FOR_FIELDS, "for loop");
        let mut texts = Vec::with_capacity(3);
        let mut literal = Vec::with_capacity(3);
        for key in FOR_FIELDS {
            let value =
                self.require(node, key, "the `for` loop", "give start, end and updateBy as whole numbers")?;
            let text = self.text(value, key)?;
            if !expr::has_placeholder(&text) {
                match text.trim().parse::<i64>() {
                    Ok(n) => literal.push((n, value.span)),
                    Err(_) => {
                        self.error(value.span, format!("loop `{key}` must be a whole number, not `{text}`"));
                        return None;
                    }
                }
            }
            texts.push(text);
        }
        // `updateBy: 0` is wrong whatever the bounds are, even when they are expressions.
        let by_is_literal = texts.get(2).is_some_and(|t| !expr::has_placeholder(t));
        if literal.len() < 3 && by_is_literal {
            if let Some(&(0, by_span)) = literal.last() {
                self.error(by_span, "loop `updateBy` must not be 0");
            }
        }
        if let [(start, _), (end, _), (by, by_span)] = literal[..] {
            if let Err(e) = check_for_bounds(start, end, by) {
                self.error(by_span, e);
            } else {
                let count = (i128::from(end) - i128::from(start)) / i128::from(by) + 1;
                if count > MAX_LOOP_ITERATIONS as i128 {
                    self.error(
                        by_span,
                        format!("the loop would run {count} iterations; the limit is {MAX_LOOP_ITERATIONS}"),
                    );
                }
            }
        }
        let mut texts = texts.into_iter();
        Some(LoopKind::For { start: texts.next()?, end: texts.next()?, update_by: texts.next()? })
    }

    fn foreach_loop(&mut self, node: &Node) -> Option<LoopKind> {
        match &node.kind {
            NodeKind::Seq(items) if !items.is_empty() => {
                let mut values = Vec::with_capacity(items.len());
                for item in items {
                    values.push(self.text(item, "forEach")?);
                }
                Some(LoopKind::ForEach(values))
            }
            NodeKind::Map(entries) => {
                self.check_keys(entries, FOREACH_FIELDS, "forEach");
                let list =
                    self.require(node, "list", "the `forEach` map", "add `list:` with the delimited values")?;
                let list = self.text(list, "list")?;
                let delimiter = match node.get("delimiter") {
                    None => ",".to_string(),
                    Some(d) => {
                        let text = self.text(d, "delimiter")?;
                        let mut chars = text.chars();
                        match (chars.next(), chars.next()) {
                            (Some(c), None) if DELIMITERS.contains(&c) => text,
                            _ => {
                                self.error_hint(
                                    d.span,
                                    format!("invalid delimiter {:?}", text),
                                    "the delimiter is one character of `.` `,` `;` `:` `\\n` `\\t` space `-` `_`",
                                );
                                return None;
                            }
                        }
                    }
                };
                Some(LoopKind::ForEachDelimited { list, delimiter })
            }
            _ => {
                self.error_hint(
                    node.span,
                    "`forEach` must be a non-empty list of values or a map with `list` and `delimiter`",
                    "for example `forEach: [a, b]` or `forEach: {list: 'a,b', delimiter: ','}`",
                );
                None
            }
        }
    }

    // ---- semantics ------------------------------------------------------------------------

    fn semantics(&mut self, doc: &Document) {
        for (pi, phase) in doc.phases.iter().enumerate() {
            let mut names: HashMap<&str, u32> = HashMap::new();
            let mut loops: HashMap<&str, u32> = HashMap::new();
            for (si, step) in phase.steps.iter().enumerate() {
                if let Some(line) = names.insert(&step.name, step.span.line) {
                    let span = self.step_name_span(step);
                    self.error_hint(
                        span,
                        format!("step `{}` is defined twice in phase `{}`", step.name, phase.name),
                        format!("first at line {line}; step names are unique within a phase"),
                    );
                }
                if let Some(Some(loop_name)) = step.loop_.as_ref().map(|l| l.name.as_deref()) {
                    if let Some(line) = loops.insert(loop_name, step.span.line) {
                        let span = step.loop_.as_ref().map_or(step.span, |l| l.span);
                        self.error_hint(
                            span,
                            format!("loop name `{loop_name}` is used twice in phase `{}`", phase.name),
                            format!("first at line {line}; loop names are unique within a phase"),
                        );
                    }
                }
                self.action(step);
                self.step_references(doc, pi, si, step);
            }
        }
    }

    fn step_name_span(&self, step: &Step) -> Span {
        // The step map starts at its first key; the name's exact place is not kept, so point at
        // the step.
        step.span
    }

    fn action(&mut self, step: &Step) {
        let action = step.action.as_str();
        if let Some(module) = actions::lookup(action) {
            module.check(self.file, step.span, step.inputs.as_ref(), &mut self.diags);
            return;
        }
        if LINUX_ACTIONS.contains(&action) {
            return;
        }
        if WINDOWS_ONLY.contains(&action) {
            let hint = match action {
                "ExecutePowerShell" => "kiln builds Linux images; use ExecuteBash",
                "UpdateOS_Windows" => "kiln builds Linux images; use UpdateOS",
                _ => "kiln builds Linux images; this action has no Linux counterpart",
            };
            self.error_hint(step.action_span, format!("action `{action}` is Windows-only"), hint);
            return;
        }
        let known = LINUX_ACTIONS.iter().copied().chain(actions::registry().iter().map(|m| m.name()));
        let hint = match suggest(action, known) {
            Some(s) => format!("did you mean `{s}`?"),
            None => "see the AWSTOE action modules for Linux, such as ExecuteBash or CreateFile".to_string(),
        };
        self.error_hint(step.action_span, format!("unknown action `{action}`"), hint);
    }

    fn step_references(&mut self, doc: &Document, pi: usize, si: usize, step: &Step) {
        let loop_name = step.loop_.as_ref().map(|l| l.name.as_deref());
        let base =
            Scope { phase: pi, step: si, loop_name, allow_loop: true, allow_chain: true, place: "inputs" };
        if let Some(inputs) = &step.inputs {
            self.node_references(doc, inputs, base);
        }
        if let Some(lp) = &step.loop_ {
            match &lp.kind {
                LoopKind::For { start, end, update_by } => {
                    let scope =
                        Scope { allow_loop: false, allow_chain: false, place: "`for` bounds", ..base };
                    for text in [start, end, update_by] {
                        self.text_references(doc, text, lp.span, None, scope);
                    }
                }
                LoopKind::ForEach(values) => {
                    let scope = Scope { allow_loop: false, place: "`forEach` values", ..base };
                    for text in values {
                        self.text_references(doc, text, lp.span, None, scope);
                    }
                }
                LoopKind::ForEachDelimited { list, delimiter } => {
                    let scope = Scope { allow_loop: false, place: "`forEach` lists", ..base };
                    self.text_references(doc, list, lp.span, None, scope);
                    if expr::has_placeholder(delimiter) {
                        self.error(lp.span, "the `forEach` delimiter cannot hold expressions");
                    }
                }
            }
        }
        if let Some(cond) = &step.condition {
            let scope = Scope { allow_loop: false, place: "`if` conditions", ..base };
            for (text, span) in cond.expr.operands() {
                self.text_references(doc, text, span, None, scope);
            }
        }
    }

    fn node_references(&mut self, doc: &Document, node: &Node, scope: Scope<'_>) {
        match &node.kind {
            NodeKind::Null => {}
            NodeKind::Scalar(text, _) => self.text_references(doc, text, node.span, Some(node), scope),
            NodeKind::Seq(items) => items.iter().for_each(|n| self.node_references(doc, n, scope)),
            NodeKind::Map(entries) => entries.iter().for_each(|(_, v)| self.node_references(doc, v, scope)),
        }
    }

    /// Check every placeholder of `text`. `node` is the scalar the text comes from, when it is
    /// one, to place each placeholder exactly; otherwise diagnostics point at `span`.
    fn text_references(
        &mut self,
        doc: &Document,
        text: &str,
        span: Span,
        node: Option<&Node>,
        scope: Scope<'_>,
    ) {
        for placeholder in expr::scan(text) {
            let at = node.map_or(span, |n| self.locate(n, text, placeholder.start, placeholder.end));
            let written = &text[placeholder.start..placeholder.end];
            match &placeholder.reference {
                Err(e) => self.error(at, format!("invalid expression `{written}`: {e}")),
                Ok(reference) => self.reference(doc, reference, written, at, scope),
            }
        }
    }

    fn reference(
        &mut self,
        doc: &Document,
        reference: &Reference,
        written: &str,
        at: Span,
        scope: Scope<'_>,
    ) {
        match reference {
            Reference::Variable(name) => {
                if doc.parameters.iter().any(|p| &p.name == name)
                    || doc.constants.iter().any(|c| &c.name == name)
                {
                    return;
                }
                let known = doc
                    .parameters
                    .iter()
                    .map(|p| p.name.as_str())
                    .chain(doc.constants.iter().map(|c| c.name.as_str()));
                let hint = match suggest(name, known) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "declare it under `parameters:` or `constants:`".to_string(),
                };
                self.error_hint(
                    at,
                    format!("`{written}` refers to an undefined parameter or constant `{name}`"),
                    hint,
                );
            }
            Reference::Loop { name, .. } => {
                if !scope.allow_loop {
                    self.error(
                        at,
                        format!("loop variables such as `{written}` cannot be used in {}", scope.place),
                    );
                    return;
                }
                match (scope.loop_name, name) {
                    (None, _) => self.error_hint(
                        at,
                        format!("`{written}` is used in a step without a loop"),
                        "loop variables exist only in the inputs of a step with `loop:`",
                    ),
                    (Some(_), None) => {}
                    (Some(Some(own)), Some(n)) if own == n => {}
                    (Some(own), Some(n)) => {
                        let hint = match own {
                            Some(own) => format!("this step's loop is named `{own}`; or use `loop.*`"),
                            None => format!("name this step's loop with `name: {n}`, or use `loop.*`"),
                        };
                        self.error_hint(
                            at,
                            format!("`{written}` refers to a loop `{n}` that is not this step's loop"),
                            hint,
                        );
                    }
                }
            }
            Reference::Chain(chain) => {
                if !scope.allow_chain {
                    self.error(
                        at,
                        format!(
                            "{} do not accept chaining expressions such as `{written}`",
                            capitalize(scope.place)
                        ),
                    );
                    return;
                }
                if let Err((message, hint)) = check_chain(doc, chain, scope.phase, scope.step) {
                    let message = format!("`{written}`: {message}");
                    match hint {
                        Some(h) => self.error_hint(at, message, h),
                        None => self.error(at, message),
                    }
                }
            }
        }
    }

    /// The position of bytes `start..end` of `text`, the value of scalar `node`: found by
    /// searching the source from the scalar's start for the same placeholder text (the right
    /// occurrence of it), which works across quoting and block scalars. Falls back to the
    /// scalar's own position.
    fn locate(&self, node: &Node, text: &str, start: usize, end: usize) -> Span {
        let needle = &text[start..end];
        let nth = text[..start].matches(needle).count();
        let Some(from) = self.offset_of(node.span) else { return node.span };
        // A plain or quoted scalar that spans one line cannot reach past that line.
        let single_line = matches!(
            node.kind,
            NodeKind::Scalar(_, ScalarStyle::Plain | ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted)
        ) && !text.contains('\n');
        let limit = if single_line {
            self.text[from..].find('\n').map_or(self.text.len(), |i| from + i)
        } else {
            self.text.len()
        };
        match self.text[from..limit].match_indices(needle).nth(nth) {
            Some((i, _)) => self.span_at(from + i),
            None => node.span,
        }
    }

    /// Byte offset of a 1-based line/column (columns count characters).
    fn offset_of(&self, span: Span) -> Option<usize> {
        let line_start = *self.line_starts.get(usize::try_from(span.line).ok()?.checked_sub(1)?)?;
        let line = &self.text[line_start..];
        let col = usize::try_from(span.col).ok()?.checked_sub(1)?;
        let offset = line.char_indices().nth(col).map_or(line.len(), |(i, _)| i);
        Some(line_start + offset)
    }

    fn span_at(&self, offset: usize) -> Span {
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let line_start = self.line_starts[line.saturating_sub(1)];
        let col = self.text[line_start..offset].chars().count() + 1;
        Span { line: u32::try_from(line).unwrap_or(u32::MAX), col: u32::try_from(col).unwrap_or(u32::MAX) }
    }
}

fn shown(node: &Node) -> String {
    match node.as_str() {
        Some(s) => format!("`{s}`"),
        None => node.type_name().to_string(),
    }
}

/// A node's type for messages, telling an empty list apart.
fn shape(node: &Node) -> &'static str {
    match node.as_seq() {
        Some([]) => "an empty list",
        _ => node.type_name(),
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

type ChainError = (String, Option<String>);

/// Check a chaining reference made from step `si` of phase `pi`.
fn check_chain(doc: &Document, chain: &ChainRef, pi: usize, si: usize) -> Result<(), ChainError> {
    let Some(phase_name) = PhaseName::from_name(&chain.phase) else {
        let hint = suggest(&chain.phase, PhaseName::ALL.iter().map(|p| p.as_str())).map_or_else(
            || "phases are `build`, `validate` and `test`".to_string(),
            |s| format!("did you mean `{s}`?"),
        );
        return Err((format!("unknown phase `{}`", chain.phase), Some(hint)));
    };
    let Some(ref_pi) = doc.phases.iter().position(|p| p.name == phase_name) else {
        return Err((format!("the document has no `{phase_name}` phase"), None));
    };
    if ref_pi > pi {
        return Err((
            format!("the `{phase_name}` phase runs after this one"),
            Some("a step can only use inputs and outputs of steps that ran before it".to_string()),
        ));
    }
    let phase = &doc.phases[ref_pi];
    let Some(ref_si) = phase.steps.iter().position(|s| s.name == chain.step) else {
        let hint = suggest(&chain.step, phase.steps.iter().map(|s| s.name.as_str()))
            .map(|s| format!("did you mean `{s}`?"));
        return Err((format!("phase `{phase_name}` has no step `{}`", chain.step), hint));
    };
    if ref_pi == pi && ref_si == si {
        return Err(("a step cannot refer to its own inputs or outputs".to_string(), None));
    }
    if ref_pi == pi && ref_si > si {
        return Err((
            format!("step `{}` runs after this one", chain.step),
            Some("a step can only use inputs and outputs of steps that ran before it".to_string()),
        ));
    }
    let target = &phase.steps[ref_si];
    match chain.section {
        Section::Outputs => {
            let Some(outputs) = action_outputs(&target.action) else { return Ok(()) };
            if outputs.contains(&chain.field.as_str()) {
                return Ok(());
            }
            let hint = match suggest(&chain.field, outputs.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None if outputs.is_empty() => format!("`{}` defines no outputs", target.action),
                None => format!("its outputs: {}", outputs.join(", ")),
            };
            Err((
                format!("step `{}` ({}) has no output `{}`", target.name, target.action, chain.field),
                Some(hint),
            ))
        }
        Section::Inputs => check_input_path(target, chain),
    }
}

fn check_input_path(target: &Step, chain: &ChainRef) -> Result<(), ChainError> {
    let name = &target.name;
    let Some(inputs) = target.inputs.as_ref().filter(|n| !n.is_null()) else {
        return Err((format!("step `{name}` has no inputs"), None));
    };
    let item = match (&inputs.kind, chain.index) {
        (NodeKind::Seq(items), Some(i)) => match items.get(i) {
            Some(item) => item,
            None => {
                return Err((
                    format!("step `{name}` has {} input(s); index {i} is out of range", items.len()),
                    Some("indexes start at 0".to_string()),
                ));
            }
        },
        (NodeKind::Seq(_), None) => {
            return Err((
                format!("the inputs of step `{name}` are a list"),
                Some(format!("use `inputs[N].{}` with the index of the input", chain.field)),
            ));
        }
        (NodeKind::Map(_), Some(_)) => {
            return Err((
                format!("the inputs of step `{name}` are a map, not a list"),
                Some(format!("use `inputs.{}`", chain.field)),
            ));
        }
        (NodeKind::Map(_), None) => inputs,
        _ => return Err((format!("the inputs of step `{name}` have no fields"), None)),
    };
    let Some(entries) = item.as_map() else {
        return Err((format!("the input of step `{name}` has no fields"), None));
    };
    if item.get(&chain.field).is_some() {
        return Ok(());
    }
    let hint = suggest(&chain.field, entries.iter().filter_map(|(k, _)| k.as_str()))
        .map(|s| format!("did you mean `{s}`?"));
    Err((format!("the input of step `{name}` has no field `{}`", chain.field), hint))
}

#[cfg(test)]
mod tests {
    use crate::document::parse_document;

    fn errors(text: &str) -> Vec<String> {
        match parse_document("v.yml", text) {
            Ok(_) => Vec::new(),
            Err(diags) => diags.iter().map(ToString::to_string).collect(),
        }
    }

    fn doc(commands: &str) -> String {
        format!(
            "schemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: A\n        action: ExecuteBash\n        inputs:\n          commands:\n{commands}"
        )
    }

    #[test]
    fn placeholders_are_located_inside_quoted_and_block_scalars() {
        // Escapes before the placeholder shift the text; the source search still finds it.
        let errs = errors(&doc("            - \"echo \\\"x\\\" {{ Nope }}\"\n"));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("v.yml:9:27: `{{ Nope }}`"), "{errs:?}");
        // The same placeholder twice in a literal block: one error at each place.
        let errs = errors(&doc(
            "            - |\n              echo {{ Nope }}\n              echo {{ Nope }} again\n",
        ));
        let places: Vec<&str> = errs.iter().map(|e| e.split(": ").next().unwrap_or_default()).collect();
        assert_eq!(places, ["v.yml:10:20", "v.yml:11:20"]);
        // A folded block points at the right line too.
        let errs = errors(&doc("            - >\n              echo a\n              {{ Nope }}\n"));
        assert!(errs[0].starts_with("v.yml:11:15:"), "{errs:?}");
    }

    #[test]
    fn documents_without_name_and_with_unquoted_placeholders_validate() {
        let text = "schemaVersion: 1.0\nconstants:\n  - Dir:\n      type: string\n      value: /tmp/x\nphases:\n  - name: build\n    steps:\n      - name: Make\n        action: CreateFolder\n        inputs:\n          - path: '{{ Dir }}'\n      - name: Use\n        action: ExecuteBash\n        inputs:\n          commands:\n            - cd {{ build.Make.inputs[0].path }} && ls {{Dir}}\n";
        assert_eq!(errors(text), Vec::<String>::new());
    }

    #[test]
    fn later_phases_may_use_earlier_phases_but_not_the_reverse() {
        let text = "schemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Make\n        action: ExecuteBash\n        inputs:\n          commands: [echo hi]\n  - name: test\n    steps:\n      - name: Check\n        action: ExecuteBash\n        inputs:\n          commands:\n            - echo {{ build.Make.outputs.stdout }}\n";
        assert_eq!(errors(text), Vec::<String>::new());
    }
}
