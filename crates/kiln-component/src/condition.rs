//! `if` conditions: logical and comparison operators, as AWSTOE defines them.
//!
//! A step's `if` is a map holding exactly one operator, plus `value` for the comparisons that
//! take a second operand, plus optional `then`/`else` step actions:
//!
//! ```yaml
//! if:
//!   stringEquals: 's3'
//!   value: '{{ build.CheckRecipeType.outputs.stdout }}'
//!   else: Skip          # optional; Execute | Skip | Abort
//! ```
//!
//! AWSTOE's syntax section also shows the expression wrapped in a one-item list; that form is
//! accepted too. Logical operators: `and`/`or` take a list of expressions, `not` takes one
//! expression (a map). Logical operators nest at most [`MAX_DEPTH`] levels, as documented.
//!
//! Comparison operators (AWSTOE's comparison-operator reference), the same for `if` and for
//! the Assert action module:
//! - one operand, no second key: `stringIsEmpty`, `stringIsWhitespace`, `fileExists`,
//!   `folderExists`, `binaryExists`;
//! - operand and `value`: `stringEquals`, `stringLessThan`, `stringLessThanEquals`,
//!   `stringGreaterThan`, `stringGreaterThanEquals`, `patternMatches` (operand is the regular
//!   expression, `value` the text), `numberEquals`, `numberLessThan`, `numberLessThanEquals`,
//!   `numberGreaterThan`, `numberGreaterThanEquals`, and `booleanEquals`;
//! - operand and `path`: `fileMD5Equals`, `fileSHA1Equals`, `fileSHA256Equals`,
//!   `fileSHA512Equals` (operand is the hex digest, `path` the file).
//!
//! Semantics, from the documented examples:
//! - ordering operators test `value OP operand`: `numberLessThan: 2` with `value: 1` is true,
//!   `stringLessThan: 'b'` with `value: 'a'` is true;
//! - string comparisons are not case sensitive and do not trim, as the documentation states.
//!   One documented example (`stringLessThan: 'A'`, `value: 'a'` is true) contradicts that
//!   statement and its neighbours (`stringGreaterThan: 'a'`, `value: 'A'` is false "since 'A'
//!   is equal to 'a'"); kiln follows the statement, so that example is false here;
//! - a number is an integer, a float, or text matching `^[-+]?([0-9]+[.])?[0-9]+$`; a side
//!   that is not a number makes the comparison `false`, as documented ("a10");
//! - `booleanEquals` is not in AWSTOE's operator list as far as its documentation shows; kiln
//!   accepts it (both sides `true`/`false`, any case; anything else compares `false`);
//! - `patternMatches` uses RE2 syntax (Rust `regex` follows it, as Go's `regexp` does) and
//!   matches anywhere in the value unless anchored; an invalid pattern is an error, not `false`;
//! - file checks run on the target through [`Host`]; relative paths resolve against the
//!   working directory. `fileExists` is true for a regular file, `folderExists` for a
//!   directory, each also through one symlink; `binaryExists` looks for an executable regular
//!   file on the target's standard `PATH` (or at the path, if it has a `/`), like `type NAME`;
//! - a hash that cannot be read (missing file) compares `false`; digests compare case-insensitively.

use std::fmt;

use kiln_host::{FileKind, Host, HostErrorKind};

use crate::diag::{Diagnostic, suggest};
use crate::node::{Node, NodeKind, Span};

/// How deep logical operators may nest.
pub const MAX_DEPTH: usize = 4;

/// The directories `binaryExists` searches on the target.
const TARGET_PATH: &[&str] = &["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    StringIsEmpty,
    StringIsWhitespace,
    StringEquals,
    StringLessThan,
    StringLessThanEquals,
    StringGreaterThan,
    StringGreaterThanEquals,
    PatternMatches,
    NumberEquals,
    NumberLessThan,
    NumberLessThanEquals,
    NumberGreaterThan,
    NumberGreaterThanEquals,
    BooleanEquals,
    FileExists,
    FolderExists,
    BinaryExists,
    FileMd5Equals,
    FileSha1Equals,
    FileSha256Equals,
    FileSha512Equals,
}

impl CompareOp {
    pub const ALL: &'static [CompareOp] = &[
        CompareOp::StringIsEmpty,
        CompareOp::StringIsWhitespace,
        CompareOp::StringEquals,
        CompareOp::StringLessThan,
        CompareOp::StringLessThanEquals,
        CompareOp::StringGreaterThan,
        CompareOp::StringGreaterThanEquals,
        CompareOp::PatternMatches,
        CompareOp::NumberEquals,
        CompareOp::NumberLessThan,
        CompareOp::NumberLessThanEquals,
        CompareOp::NumberGreaterThan,
        CompareOp::NumberGreaterThanEquals,
        CompareOp::BooleanEquals,
        CompareOp::FileExists,
        CompareOp::FolderExists,
        CompareOp::BinaryExists,
        CompareOp::FileMd5Equals,
        CompareOp::FileSha1Equals,
        CompareOp::FileSha256Equals,
        CompareOp::FileSha512Equals,
    ];

    /// The key as written in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::StringIsEmpty => "stringIsEmpty",
            CompareOp::StringIsWhitespace => "stringIsWhitespace",
            CompareOp::StringEquals => "stringEquals",
            CompareOp::StringLessThan => "stringLessThan",
            CompareOp::StringLessThanEquals => "stringLessThanEquals",
            CompareOp::StringGreaterThan => "stringGreaterThan",
            CompareOp::StringGreaterThanEquals => "stringGreaterThanEquals",
            CompareOp::PatternMatches => "patternMatches",
            CompareOp::NumberEquals => "numberEquals",
            CompareOp::NumberLessThan => "numberLessThan",
            CompareOp::NumberLessThanEquals => "numberLessThanEquals",
            CompareOp::NumberGreaterThan => "numberGreaterThan",
            CompareOp::NumberGreaterThanEquals => "numberGreaterThanEquals",
            CompareOp::BooleanEquals => "booleanEquals",
            CompareOp::FileExists => "fileExists",
            CompareOp::FolderExists => "folderExists",
            CompareOp::BinaryExists => "binaryExists",
            CompareOp::FileMd5Equals => "fileMD5Equals",
            CompareOp::FileSha1Equals => "fileSHA1Equals",
            CompareOp::FileSha256Equals => "fileSHA256Equals",
            CompareOp::FileSha512Equals => "fileSHA512Equals",
        }
    }

    pub fn from_name(name: &str) -> Option<CompareOp> {
        CompareOp::ALL.iter().copied().find(|op| op.as_str() == name)
    }

    /// Whether the operator compares numbers.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            CompareOp::NumberEquals
                | CompareOp::NumberLessThan
                | CompareOp::NumberLessThanEquals
                | CompareOp::NumberGreaterThan
                | CompareOp::NumberGreaterThanEquals
        )
    }

    /// The key of the operator's second operand: `value` for comparisons, `path` for the
    /// file-hash operators, none for the one-operand tests.
    pub fn second_key(self) -> Option<&'static str> {
        match self {
            CompareOp::StringIsEmpty
            | CompareOp::StringIsWhitespace
            | CompareOp::FileExists
            | CompareOp::FolderExists
            | CompareOp::BinaryExists => None,
            CompareOp::FileMd5Equals
            | CompareOp::FileSha1Equals
            | CompareOp::FileSha256Equals
            | CompareOp::FileSha512Equals => Some("path"),
            _ => Some("value"),
        }
    }
}

impl fmt::Display for CompareOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A conditional expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Compare {
        op: CompareOp,
        /// The operator's own operand (may hold `{{ }}` expressions).
        operand: String,
        /// The `value` operand, for operators that take one.
        value: Option<String>,
        span: Span,
    },
}

/// What to do with the step after the condition is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepAction {
    /// Run the step.
    Execute,
    /// Skip the step; it counts as successful.
    Skip,
    /// Mark the step as failed.
    Abort,
}

impl StepAction {
    pub const NAMES: &'static [&'static str] = &["Execute", "Skip", "Abort"];

    pub fn from_name(name: &str) -> Option<StepAction> {
        match name {
            "Execute" => Some(StepAction::Execute),
            "Skip" => Some(StepAction::Skip),
            "Abort" => Some(StepAction::Abort),
            _ => None,
        }
    }
}

/// A step's `if`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub expr: Expr,
    /// `then:`; when absent a true condition runs the step.
    pub then_action: Option<StepAction>,
    /// `else:`; when absent a false condition skips the step.
    pub else_action: Option<StepAction>,
    pub span: Span,
}

const LOGICAL: &[&str] = &["and", "or", "not"];

impl Condition {
    /// Parse a step's `if` value; problems go to `diags`, and `None` is returned when the
    /// condition cannot be used.
    pub fn parse(file: &str, node: &Node, diags: &mut Vec<Diagnostic>) -> Option<Condition> {
        // The documented syntax wraps the expression in a one-item list.
        let node = match &node.kind {
            NodeKind::Seq(items) if items.len() == 1 => &items[0],
            NodeKind::Seq(_) => {
                diags.push(
                    Diagnostic::new(file, node.span, "`if` must hold exactly one conditional expression")
                        .with_hint("combine conditions with `and` or `or`"),
                );
                return None;
            }
            _ => node,
        };
        let mut then_action = None;
        let mut else_action = None;
        let mut rest = Vec::new();
        if let Some(entries) = node.as_map() {
            for (key, value) in entries {
                let slot = match key.as_str() {
                    Some("then") => &mut then_action,
                    Some("else") => &mut else_action,
                    _ => {
                        rest.push((key.clone(), value.clone()));
                        continue;
                    }
                };
                match value.as_str().and_then(StepAction::from_name) {
                    Some(action) => *slot = Some(action),
                    None => {
                        let written = value.as_str().unwrap_or_default();
                        let mut d = Diagnostic::new(
                            file,
                            value.span,
                            format!("`{}` must be Execute, Skip or Abort", key.as_str().unwrap_or_default()),
                        );
                        if let Some(s) = suggest(written, StepAction::NAMES.iter().copied()) {
                            d = d.with_hint(format!("did you mean `{s}`?"));
                        }
                        diags.push(d);
                    }
                }
            }
        }
        let expr_node = Node::new(NodeKind::Map(rest), node.span);
        let expr = if node.as_map().is_some() {
            parse_expr_at(file, &expr_node, 0, diags)?
        } else {
            parse_expr_at(file, node, 0, diags)?
        };
        Some(Condition { expr, then_action, else_action, span: node.span })
    }

    /// Evaluate the expression; `render` replaces `{{ }}` expressions in operands.
    pub fn evaluate(
        &self,
        render: &dyn Fn(&str) -> Result<String, String>,
        host: &dyn Host,
        working_dir: &str,
    ) -> Result<bool, String> {
        self.expr.evaluate(render, host, working_dir)
    }

    /// Evaluate and decide what to do with the step (`then` / `else`, defaulting to
    /// Execute / Skip).
    pub fn decide(
        &self,
        render: &dyn Fn(&str) -> Result<String, String>,
        host: &dyn Host,
        working_dir: &str,
    ) -> Result<StepAction, String> {
        Ok(if self.evaluate(render, host, working_dir)? {
            self.then_action.unwrap_or(StepAction::Execute)
        } else {
            self.else_action.unwrap_or(StepAction::Skip)
        })
    }
}

/// Parse a conditional expression (a map with one operator), as used by `if` and by the Assert
/// action.
pub fn parse_expr(file: &str, node: &Node, diags: &mut Vec<Diagnostic>) -> Option<Expr> {
    parse_expr_at(file, node, 0, diags)
}

/// Text of an operand scalar; a plain empty value counts as the empty string.
fn operand_text(file: &str, key: &str, node: &Node, diags: &mut Vec<Diagnostic>) -> Option<String> {
    match &node.kind {
        NodeKind::Scalar(text, _) => Some(text.clone()),
        NodeKind::Null => Some(String::new()),
        _ => {
            diags.push(Diagnostic::new(
                file,
                node.span,
                format!("`{key}` takes a single value (a string), not {}", node.type_name()),
            ));
            None
        }
    }
}

fn parse_expr_at(file: &str, node: &Node, depth: usize, diags: &mut Vec<Diagnostic>) -> Option<Expr> {
    let Some(entries) = node.as_map() else {
        diags.push(Diagnostic::new(
            file,
            node.span,
            format!("a conditional expression must be a map with one operator, not {}", node.type_name()),
        ));
        return None;
    };
    let mut operator: Option<(&Node, &Node)> = None;
    // The second operand, under `value` (comparisons) or `path` (file hashes).
    let mut second: Option<(&str, &Node)> = None;
    let mut ok = true;
    for (key, val) in entries {
        let name = key.as_str().unwrap_or_default();
        if name == "value" || name == "path" {
            if let Some((first, _)) = second {
                diags.push(Diagnostic::new(
                    file,
                    key.span,
                    format!(
                        "a conditional expression holds one second operand, but `{name}` follows `{first}`"
                    ),
                ));
                ok = false;
            } else {
                second = Some((name, val));
            }
        } else if CompareOp::from_name(name).is_some() || LOGICAL.contains(&name) {
            if let Some((first, _)) = operator {
                diags.push(
                    Diagnostic::new(
                        file,
                        key.span,
                        format!(
                            "a conditional expression holds exactly one operator, but `{name}` follows `{}`",
                            first.as_str().unwrap_or_default()
                        ),
                    )
                    .with_hint("combine conditions with `and` or `or`"),
                );
                ok = false;
            } else {
                operator = Some((key, val));
            }
        } else {
            let candidates = CompareOp::ALL
                .iter()
                .map(|op| op.as_str())
                .chain(LOGICAL.iter().copied())
                .chain(["value", "path"]);
            let mut d = Diagnostic::new(file, key.span, format!("unknown operator `{name}`"));
            if let Some(s) = suggest(name, candidates) {
                d = d.with_hint(format!("did you mean `{s}`?"));
            }
            diags.push(d);
            ok = false;
        }
    }
    let Some((key, operand)) = operator else {
        if ok {
            diags.push(Diagnostic::new(
                file,
                node.span,
                "a conditional expression needs an operator (`and`, `or`, `not` or a comparison such as `stringEquals`)",
            ));
        }
        return None;
    };
    let name = key.as_str().unwrap_or_default();
    let expr = match name {
        "and" | "or" | "not" => {
            if depth >= MAX_DEPTH {
                diags.push(Diagnostic::new(
                    file,
                    key.span,
                    format!("logical operators nest at most {MAX_DEPTH} levels deep"),
                ));
                return None;
            }
            if let Some((key, v)) = second {
                diags.push(Diagnostic::new(file, v.span, format!("`{name}` takes no `{key}`")));
                ok = false;
            }
            if name == "not" {
                Expr::Not(Box::new(parse_expr_at(file, operand, depth + 1, diags)?))
            } else {
                let Some(items) = operand.as_seq().filter(|items| !items.is_empty()) else {
                    diags.push(Diagnostic::new(
                        file,
                        operand.span,
                        format!("`{name}` takes a list of one or more conditional expressions"),
                    ));
                    return None;
                };
                let mut parsed = Vec::with_capacity(items.len());
                for item in items {
                    match parse_expr_at(file, item, depth + 1, diags) {
                        Some(e) => parsed.push(e),
                        None => ok = false,
                    }
                }
                if name == "and" { Expr::And(parsed) } else { Expr::Or(parsed) }
            }
        }
        _ => {
            let op = CompareOp::from_name(name)?;
            let operand = operand_text(file, name, operand, diags)?;
            let value = match (op.second_key(), second) {
                (Some(want), Some((got, v))) if want == got => Some(operand_text(file, want, v, diags)?),
                (Some(want), Some((got, v))) => {
                    diags.push(
                        Diagnostic::new(file, v.span, format!("`{name}` takes `{want}`, not `{got}`"))
                            .with_hint(format!("rename `{got}` to `{want}`")),
                    );
                    return None;
                }
                (Some(want), None) => {
                    let message = if want == "path" {
                        format!("`{name}` needs a `path`: the file whose digest is compared")
                    } else {
                        format!("`{name}` needs a `value` to compare with")
                    };
                    diags.push(Diagnostic::new(file, key.span, message));
                    return None;
                }
                (None, Some((got, v))) => {
                    diags.push(Diagnostic::new(file, v.span, format!("`{name}` takes no `{got}`")));
                    return None;
                }
                (None, None) => None,
            };
            // Literal operands are checked now; ones with `{{ }}` only when they are rendered.
            let literal = !crate::expr::has_placeholder(&operand);
            if literal && op.is_numeric() && number(&operand).is_none() {
                diags.push(
                    Diagnostic::new(file, key.span, format!("`{name}` needs a number, found `{operand}`"))
                        .with_hint("write an integer or a decimal such as 1 or 2.5"),
                );
                ok = false;
            }
            if literal
                && op == CompareOp::PatternMatches
                && let Err(e) = regex::Regex::new(&operand)
            {
                diags.push(Diagnostic::new(
                    file,
                    key.span,
                    format!(
                        "`patternMatches`: `{operand}` is not a valid regular expression (RE2 syntax): {e}"
                    ),
                ));
                ok = false;
            }
            Expr::Compare { op, operand, value, span: key.span }
        }
    };
    ok.then_some(expr)
}

/// A readable form for failure messages: `stringEquals 's3' with value 'local'`.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::And(items) | Expr::Or(items) => {
                let name = if matches!(self, Expr::And(_)) { "and" } else { "or" };
                write!(f, "{name}(")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str(")")
            }
            Expr::Not(inner) => write!(f, "not({inner})"),
            Expr::Compare { op, operand, value, .. } => {
                write!(f, "{op} '{operand}'")?;
                match (op.second_key(), value) {
                    (Some(key), Some(v)) => write!(f, " with {key} '{v}'"),
                    _ => Ok(()),
                }
            }
        }
    }
}

impl Expr {
    /// Every operand text of the expression with the span of its operator, for validation of
    /// the `{{ }}` expressions inside.
    pub fn operands(&self) -> Vec<(&str, Span)> {
        let mut out = Vec::new();
        self.collect_operands(&mut out);
        out
    }

    fn collect_operands<'a>(&'a self, out: &mut Vec<(&'a str, Span)>) {
        match self {
            Expr::And(items) | Expr::Or(items) => items.iter().for_each(|e| e.collect_operands(out)),
            Expr::Not(inner) => inner.collect_operands(out),
            Expr::Compare { operand, value, span, .. } => {
                out.push((operand, *span));
                if let Some(v) = value {
                    out.push((v, *span));
                }
            }
        }
    }

    /// Evaluate on `host`, rendering operands with `render` first; relative paths resolve
    /// against `working_dir`.
    pub fn evaluate(
        &self,
        render: &dyn Fn(&str) -> Result<String, String>,
        host: &dyn Host,
        working_dir: &str,
    ) -> Result<bool, String> {
        match self {
            Expr::And(items) => {
                for item in items {
                    if !item.evaluate(render, host, working_dir)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Expr::Or(items) => {
                for item in items {
                    if item.evaluate(render, host, working_dir)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Expr::Not(inner) => Ok(!inner.evaluate(render, host, working_dir)?),
            Expr::Compare { op, operand, value, .. } => {
                let a = render(operand)?;
                let b = match value {
                    Some(v) => render(v)?,
                    None => String::new(),
                };
                compare(*op, &a, &b, host, working_dir)
            }
        }
    }
}

/// A number as AWSTOE reads one: an integer or float, written as YAML or as text matching
/// `^[-+]?([0-9]+[.])?[0-9]+$` (so no exponents, `inf` or `nan`).
fn number(text: &str) -> Option<f64> {
    static NUMBER: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"^[-+]?([0-9]+[.])?[0-9]+$").expect("valid pattern"));
    NUMBER.is_match(text).then(|| text.parse::<f64>().ok()).flatten()
}

fn boolean(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Apply one comparison to rendered operands: `operand` is the text under the operator's own
/// key, `second` the text under `value` (or `path`). Ordering operators test
/// `second OP operand`, as the documented examples do.
pub fn compare(
    op: CompareOp,
    operand: &str,
    second: &str,
    host: &dyn Host,
    working_dir: &str,
) -> Result<bool, String> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    // Not case sensitive, not trimmed.
    let strings = || second.to_lowercase().cmp(&operand.to_lowercase());
    let numbers = |accept: &[std::cmp::Ordering]| {
        Ok(match (number(second), number(operand)) {
            (Some(v), Some(o)) => v.partial_cmp(&o).is_some_and(|ord| accept.contains(&ord)),
            _ => false,
        })
    };
    let path = |p: &str| if p.starts_with('/') { p.to_string() } else { crate::engine::join(working_dir, p) };
    match op {
        CompareOp::StringIsEmpty => Ok(operand.is_empty()),
        CompareOp::StringIsWhitespace => Ok(!operand.is_empty() && operand.chars().all(char::is_whitespace)),
        CompareOp::StringEquals => Ok(strings() == Equal),
        CompareOp::StringLessThan => Ok(strings() == Less),
        CompareOp::StringLessThanEquals => Ok(strings() != Greater),
        CompareOp::StringGreaterThan => Ok(strings() == Greater),
        CompareOp::StringGreaterThanEquals => Ok(strings() != Less),
        CompareOp::PatternMatches => {
            let re = regex::Regex::new(operand)
                .map_err(|e| format!("`patternMatches`: invalid pattern `{operand}`: {e}"))?;
            Ok(re.is_match(second))
        }
        CompareOp::NumberEquals => numbers(&[Equal]),
        CompareOp::NumberLessThan => numbers(&[Less]),
        CompareOp::NumberLessThanEquals => numbers(&[Less, Equal]),
        CompareOp::NumberGreaterThan => numbers(&[Greater]),
        CompareOp::NumberGreaterThanEquals => numbers(&[Greater, Equal]),
        CompareOp::BooleanEquals => {
            Ok(matches!((boolean(operand), boolean(second)), (Some(x), Some(y)) if x == y))
        }
        CompareOp::FileExists => Ok(kind_through_link(host, &path(operand))? == Some(FileKind::File)),
        CompareOp::FolderExists => Ok(kind_through_link(host, &path(operand))? == Some(FileKind::Dir)),
        CompareOp::BinaryExists => binary_exists(host, operand),
        CompareOp::FileMd5Equals => digest_equals::<md5::Md5>(host, &path(second), operand),
        CompareOp::FileSha1Equals => digest_equals::<sha1::Sha1>(host, &path(second), operand),
        CompareOp::FileSha256Equals => digest_equals::<sha2::Sha256>(host, &path(second), operand),
        CompareOp::FileSha512Equals => digest_equals::<sha2::Sha512>(host, &path(second), operand),
    }
}

/// The kind of `path`, looking through one symlink; `None` when nothing is there.
fn kind_through_link(host: &dyn Host, path: &str) -> Result<Option<FileKind>, String> {
    let meta = match host.metadata(path) {
        Ok(m) => m,
        Err(e) if is_absent(e.kind) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if meta.kind != FileKind::Symlink {
        return Ok(Some(meta.kind));
    }
    let target = host.read_link(path).map_err(|e| e.to_string())?;
    let resolved = if target.starts_with('/') {
        target
    } else {
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        format!("{parent}/{target}")
    };
    match host.metadata(&resolved) {
        Ok(m) => Ok(Some(m.kind)),
        Err(e) if is_absent(e.kind) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Errors that mean "there is nothing (usable) at this path" rather than a broken target.
fn is_absent(kind: HostErrorKind) -> bool {
    matches!(kind, HostErrorKind::NotFound | HostErrorKind::NotADirectory | HostErrorKind::InvalidPath)
}

fn binary_exists(host: &dyn Host, name: &str) -> Result<bool, String> {
    if name.is_empty() {
        return Ok(false);
    }
    let is_executable = |path: &str| -> Result<bool, String> {
        if kind_through_link(host, path)? != Some(FileKind::File) {
            return Ok(false);
        }
        // Permission bits of the link itself are meaningless; a link to a regular file counts.
        match host.metadata(path) {
            Ok(m) => Ok(m.kind == FileKind::Symlink || m.mode & 0o111 != 0),
            Err(e) if is_absent(e.kind) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    };
    if name.contains('/') {
        return is_executable(name);
    }
    for dir in TARGET_PATH {
        if is_executable(&format!("{dir}/{name}"))? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn digest_equals<D: sha2::Digest>(host: &dyn Host, path: &str, expected: &str) -> Result<bool, String> {
    let data = match host.read_file(path) {
        Ok(d) => d,
        Err(e) if is_absent(e.kind) || e.kind == HostErrorKind::IsADirectory => return Ok(false),
        Err(e) => return Err(e.to_string()),
    };
    let actual = hex::encode(D::digest(&data));
    Ok(actual.eq_ignore_ascii_case(expected.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    fn parse(text: &str) -> Result<Condition, Vec<String>> {
        let node = yaml::parse("c.yml", text).expect("valid yaml");
        let mut diags = Vec::new();
        let cond = Condition::parse("c.yml", &node, &mut diags);
        match cond {
            Some(c) if diags.is_empty() => Ok(c),
            _ => Err(diags.iter().map(ToString::to_string).collect()),
        }
    }

    #[test]
    fn parses_comparison_with_value_and_then_else() {
        let c = parse("stringEquals: 's3'\nvalue: '{{ build.T.outputs.stdout }}'\nelse: Abort\n").unwrap();
        assert_eq!(c.else_action, Some(StepAction::Abort));
        assert_eq!(c.then_action, None);
        let Expr::Compare { op, operand, value, .. } = &c.expr else { panic!() };
        assert_eq!((*op, operand.as_str()), (CompareOp::StringEquals, "s3"));
        assert_eq!(value.as_deref(), Some("{{ build.T.outputs.stdout }}"));
    }

    #[test]
    fn parses_documented_list_form_and_logical_nesting() {
        let c = parse("- and:\n    - binaryExists: 'apt-get'\n    - not:\n        binaryExists: unzip\n")
            .unwrap();
        let Expr::And(items) = &c.expr else { panic!("{:?}", c.expr) };
        assert_eq!(items.len(), 2);
        assert!(
            matches!(&items[1], Expr::Not(inner) if matches!(**inner, Expr::Compare { op: CompareOp::BinaryExists, .. }))
        );
    }

    #[test]
    fn rejects_bad_shapes_with_positions() {
        assert_eq!(
            parse("stringEquals: a\n").unwrap_err(),
            ["c.yml:1:1: `stringEquals` needs a `value` to compare with"]
        );
        assert_eq!(
            parse("stringIsEmpty: ''\nvalue: x\n").unwrap_err(),
            ["c.yml:2:8: `stringIsEmpty` takes no `value`"]
        );
        assert_eq!(
            parse("fileMD5Equals: abc\nvalue: /etc/hello\n").unwrap_err(),
            ["c.yml:2:8: `fileMD5Equals` takes `path`, not `value` (rename `value` to `path`)"]
        );
        assert_eq!(
            parse("numberLessThan: ten\nvalue: 1\n").unwrap_err(),
            [
                "c.yml:1:1: `numberLessThan` needs a number, found `ten` (write an integer or a decimal such as 1 or 2.5)"
            ]
        );
        assert!(parse("numberLessThan: '{{ Limit }}'\nvalue: 1\n").is_ok(), "checked once rendered");
        assert!(
            parse("patternMatches: '([a-z'\nvalue: a\n").unwrap_err()[0]
                .contains("not a valid regular expression")
        );
        assert_eq!(
            parse("fileMD5Equals: abc\n").unwrap_err(),
            ["c.yml:1:1: `fileMD5Equals` needs a `path`: the file whose digest is compared"]
        );
        assert_eq!(
            parse("stringEqual: a\nvalue: b\n").unwrap_err(),
            ["c.yml:1:1: unknown operator `stringEqual` (did you mean `stringEquals`?)"]
        );
        assert_eq!(
            parse("fileExists: /a\nfolderExists: /b\n").unwrap_err(),
            [
                "c.yml:2:1: a conditional expression holds exactly one operator, but `folderExists` follows `fileExists` (combine conditions with `and` or `or`)"
            ]
        );
        assert_eq!(
            parse("then: Run\nfileExists: /a\n").unwrap_err(),
            ["c.yml:1:7: `then` must be Execute, Skip or Abort"]
        );
        assert_eq!(
            parse("and: []\n").unwrap_err(),
            ["c.yml:1:6: `and` takes a list of one or more conditional expressions"]
        );
    }

    #[test]
    fn depth_is_limited_to_four() {
        let ok = "not:\n not:\n  not:\n   not:\n    fileExists: /a\n";
        assert!(parse(ok).is_ok());
        let too_deep = "not:\n not:\n  not:\n   not:\n    not:\n     fileExists: /a\n";
        assert_eq!(parse(too_deep).unwrap_err(), ["c.yml:5:5: logical operators nest at most 4 levels deep"]);
    }

    struct NoHost;
    impl Host for NoHost {
        fn describe(&self) -> String {
            "none".into()
        }
        fn network_allowed(&self) -> bool {
            false
        }
        fn exec(&self, _: &kiln_host::ExecRequest) -> kiln_host::HostResult<kiln_host::ExecOutput> {
            Err(kiln_host::HostError::new(HostErrorKind::Unsupported, "no"))
        }
        fn read_file(&self, path: &str) -> kiln_host::HostResult<Vec<u8>> {
            if path == "/etc/hello" {
                Ok(b"hello\n".to_vec())
            } else {
                Err(kiln_host::HostError::new(HostErrorKind::NotFound, path))
            }
        }
        fn write_file(
            &self,
            _: &str,
            _: &[u8],
            _: kiln_host::WriteMode,
            _: Option<u32>,
        ) -> kiln_host::HostResult<()> {
            unimplemented!()
        }
        fn create_dir_all(&self, _: &str, _: Option<u32>) -> kiln_host::HostResult<()> {
            unimplemented!()
        }
        fn metadata(&self, path: &str) -> kiln_host::HostResult<kiln_host::Metadata> {
            let (kind, mode) = match path {
                "/etc/hello" => (FileKind::File, 0o644),
                "/usr/bin/apt-get" => (FileKind::File, 0o755),
                "/etc" => (FileKind::Dir, 0o755),
                "/lnk" => (FileKind::Symlink, 0o777),
                _ => return Err(kiln_host::HostError::new(HostErrorKind::NotFound, path)),
            };
            Ok(kiln_host::Metadata { kind, mode, uid: 0, gid: 0, size: 0 })
        }
        fn list_dir(&self, _: &str) -> kiln_host::HostResult<Vec<kiln_host::DirEntry>> {
            unimplemented!()
        }
        fn remove_file(&self, _: &str) -> kiln_host::HostResult<()> {
            unimplemented!()
        }
        fn remove_dir(&self, _: &str, _: bool) -> kiln_host::HostResult<()> {
            unimplemented!()
        }
        fn rename(&self, _: &str, _: &str) -> kiln_host::HostResult<()> {
            unimplemented!()
        }
        fn copy_file(&self, _: &str, _: &str) -> kiln_host::HostResult<()> {
            unimplemented!()
        }
        fn symlink(&self, _: &str, _: &str) -> kiln_host::HostResult<()> {
            unimplemented!()
        }
        fn read_link(&self, _: &str) -> kiln_host::HostResult<String> {
            Ok("etc".into())
        }
        fn set_permissions(&self, _: &str, _: u32) -> kiln_host::HostResult<()> {
            unimplemented!()
        }
        fn set_owner(&self, _: &str, _: Option<u32>, _: Option<u32>) -> kiln_host::HostResult<()> {
            unimplemented!()
        }
        fn lookup_user(&self, _: &str) -> kiln_host::HostResult<u32> {
            unimplemented!()
        }
        fn lookup_group(&self, _: &str) -> kiln_host::HostResult<u32> {
            unimplemented!()
        }
        fn reboot(&self) -> kiln_host::HostResult<()> {
            unimplemented!()
        }
    }

    fn eval(text: &str) -> Result<bool, String> {
        let c = parse(text).map_err(|e| e.join("\n"))?;
        let render = |s: &str| -> Result<String, String> { Ok(s.replace("{{ X }}", "42")) };
        c.evaluate(&render, &NoHost, "/etc")
    }

    /// Every example of AWSTOE's comparison-operator page, with its documented result.
    #[test]
    fn string_comparisons_follow_the_documented_examples() {
        assert_eq!(eval("stringIsEmpty: ''\n"), Ok(true));
        assert_eq!(eval("stringIsEmpty: ' '\n"), Ok(false));
        assert_eq!(eval("stringIsEmpty: 'Hello.'\n"), Ok(false));
        assert_eq!(eval("stringIsWhitespace: '   '\n"), Ok(true));
        assert_eq!(eval("stringIsWhitespace: ''\n"), Ok(false));
        assert_eq!(eval("stringIsWhitespace: ' Hello?'\n"), Ok(false));
        let t = "'Testing, testing...'";
        assert_eq!(eval(&format!("stringEquals: {t}\nvalue: {t}\n")), Ok(true));
        assert_eq!(eval(&format!("stringEquals: {t}\nvalue: 'Hello again.'\n")), Ok(false));
        assert_eq!(eval(&format!("stringEquals: {t}\nvalue: 'TESTING, TESTING....'\n")), Ok(false));
        assert_eq!(eval(&format!("stringEquals: {t}\nvalue: '   Testing, testing...'\n")), Ok(false));
        assert_eq!(eval(&format!("stringEquals: {t}\nvalue: 'Testing, testing...   '\n")), Ok(false));
        // "String comparisons are not case sensitive".
        assert_eq!(eval("stringEquals: 'Testing'\nvalue: 'TESTING'\n"), Ok(true));
        // The documented example `stringLessThan: 'A'` / `value: 'a'` -> true contradicts that
        // statement and the stringGreaterThan example below; kiln follows the statement.
        assert_eq!(eval("stringLessThan: 'A'\nvalue: 'a'\n"), Ok(false));
        assert_eq!(eval("stringLessThan: 'b'\nvalue: 'a'\n"), Ok(true));
        assert_eq!(eval("stringLessThan: 'a'\nvalue: '0'\n"), Ok(true));
        assert_eq!(eval("stringLessThan: '0'\nvalue: 'a'\n"), Ok(false));
        assert_eq!(eval("stringLessThanEquals: 'a'\nvalue: 'a'\n"), Ok(true));
        assert_eq!(eval("stringLessThanEquals: 'A'\nvalue: 'a'\n"), Ok(true));
        assert_eq!(eval("stringLessThanEquals: 'b'\nvalue: 'a'\n"), Ok(true));
        assert_eq!(eval("stringLessThanEquals: 'a'\nvalue: '0'\n"), Ok(true));
        assert_eq!(eval("stringLessThanEquals: '0'\nvalue: 'a'\n"), Ok(false));
        assert_eq!(eval("stringGreaterThan: 'a'\nvalue: 'A'\n"), Ok(false));
        assert_eq!(eval("stringGreaterThan: 'a'\nvalue: 'b'\n"), Ok(true));
        assert_eq!(eval("stringGreaterThan: '0'\nvalue: 'a'\n"), Ok(true));
        assert_eq!(eval("stringGreaterThan: 'a'\nvalue: '0'\n"), Ok(false));
        assert_eq!(eval("stringGreaterThanEquals: 'A'\nvalue: 'a'\n"), Ok(true));
        assert_eq!(eval("stringGreaterThanEquals: 'a'\nvalue: 'b'\n"), Ok(true));
        assert_eq!(eval("stringGreaterThanEquals: '0'\nvalue: 'a'\n"), Ok(true));
        assert_eq!(eval("stringGreaterThanEquals: 'a'\nvalue: '0'\n"), Ok(false));
    }

    #[test]
    fn number_comparisons_follow_the_documented_examples() {
        for (operand, value) in [("1", "1"), ("'1'", "1"), ("1", "'1'"), ("5.0", "5.0"), ("-1", "-1")] {
            assert_eq!(
                eval(&format!("numberEquals: {operand}\nvalue: {value}\n")),
                Ok(true),
                "{operand} {value}"
            );
        }
        assert_eq!(eval("numberLessThan: 2\nvalue: 1\n"), Ok(true));
        assert_eq!(eval("numberLessThan: 2\nvalue: 1.9\n"), Ok(true));
        assert_eq!(eval("numberLessThan: 2\nvalue: '2'\n"), Ok(false));
        assert_eq!(eval("numberLessThanEquals: 2\nvalue: 1\n"), Ok(true));
        assert_eq!(eval("numberLessThanEquals: 2\nvalue: 1.9\n"), Ok(true));
        assert_eq!(eval("numberLessThanEquals: 2\nvalue: '2'\n"), Ok(true));
        assert_eq!(eval("numberLessThanEquals: 2\nvalue: 2.1\n"), Ok(false));
        assert_eq!(eval("numberGreaterThan: 1\nvalue: 2\n"), Ok(true));
        assert_eq!(eval("numberGreaterThan: 1\nvalue: 1.1\n"), Ok(true));
        assert_eq!(eval("numberGreaterThan: 1\nvalue: '1'\n"), Ok(false));
        assert_eq!(eval("numberGreaterThanEquals: 1\nvalue: 2\n"), Ok(true));
        assert_eq!(eval("numberGreaterThanEquals: 1\nvalue: 1.1\n"), Ok(true));
        assert_eq!(eval("numberGreaterThanEquals: 1\nvalue: '1'\n"), Ok(true));
        assert_eq!(eval("numberGreaterThanEquals: 1\nvalue: 0.8\n"), Ok(false));
        // Not a number: false, as documented ("a10"); exponents are not numbers either.
        assert_eq!(eval("numberLessThan: 10\nvalue: 'a10'\n"), Ok(false));
        assert_eq!(eval("numberEquals: 100\nvalue: 1e2\n"), Ok(false));
        assert_eq!(eval("numberEquals: 42\nvalue: '{{ X }}'\n"), Ok(true), "operands are rendered");
        assert_eq!(eval("not:\n  numberLessThanEquals: 2\n  value: 3\n"), Ok(true));
    }

    #[test]
    fn pattern_boolean_and_logic() {
        assert_eq!(eval("patternMatches: '^s3:\\/\\/.*\\/.*$'\nvalue: 's3://b/k'\n"), Ok(true));
        assert_eq!(eval("patternMatches: '^s3:'\nvalue: 'local:/x'\n"), Ok(false));
        // A literal bad pattern is refused when parsed; one made by rendering, when evaluated.
        assert!(
            eval("patternMatches: '('\nvalue: x\n").unwrap_err().contains("not a valid regular expression")
        );
        assert!(eval("patternMatches: '{{ X }}('\nvalue: x\n").unwrap_err().contains("invalid pattern"));
        assert_eq!(eval("booleanEquals: 'TRUE'\nvalue: true\n"), Ok(true));
        assert_eq!(eval("booleanEquals: yes\nvalue: true\n"), Ok(false));
        assert_eq!(eval("or:\n  - stringIsEmpty: x\n  - stringEquals: a\n    value: a\n"), Ok(true));
        assert_eq!(eval("and:\n  - stringIsEmpty: ''\n  - stringEquals: a\n    value: b\n"), Ok(false));
    }

    #[test]
    fn file_checks_use_the_host() {
        assert_eq!(eval("fileExists: /etc/hello\n"), Ok(true));
        assert_eq!(eval("fileExists: /etc\n"), Ok(false));
        assert_eq!(eval("folderExists: /etc\n"), Ok(true));
        assert_eq!(eval("folderExists: /lnk\n"), Ok(true), "through a relative symlink");
        assert_eq!(eval("folderExists: /nope\n"), Ok(false));
        assert_eq!(eval("binaryExists: apt-get\n"), Ok(true));
        assert_eq!(eval("binaryExists: yum\n"), Ok(false));
        assert_eq!(eval("fileExists: hello\n"), Ok(true), "relative to the working directory");
        assert_eq!(
            eval(
                "fileSHA256Equals: '5891B5B522D5DF086D0FF0B110FBD9D21BB4FC7163AF34D08286A2E846F6BE03'\npath: /etc/hello\n"
            ),
            Ok(true)
        );
        assert_eq!(eval("fileMD5Equals: b1946ac92492d2347c6235b4d2611184\npath: hello\n"), Ok(true));
        assert_eq!(eval("fileMD5Equals: 00000000000000000000000000000000\npath: /etc/hello\n"), Ok(false));
        assert_eq!(eval("fileSHA1Equals: abc\npath: /missing\n"), Ok(false));
    }

    #[test]
    fn decide_defaults_to_execute_and_skip() {
        let render = |s: &str| -> Result<String, String> { Ok(s.to_string()) };
        let t = parse("stringIsEmpty: ''\n").unwrap();
        assert_eq!(t.decide(&render, &NoHost, "/"), Ok(StepAction::Execute));
        let f = parse("stringIsEmpty: 'x'\n").unwrap();
        assert_eq!(f.decide(&render, &NoHost, "/"), Ok(StepAction::Skip));
        let f = parse("stringIsEmpty: 'x'\nelse: Abort\nthen: Skip\n").unwrap();
        assert_eq!(f.decide(&render, &NoHost, "/"), Ok(StepAction::Abort));
    }
}
