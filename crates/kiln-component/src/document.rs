//! The typed model of a component document (AWSTOE schema 1.0) and its entry point,
//! [`parse_document`], which reads and validates a document in one go.
//!
//! Values that AWSTOE evaluates at run time (inputs, loop bounds, `if` operands) stay as text or
//! [`Node`]s holding their `{{ }}` expressions; the engine renders them with [`crate::expr`].

use std::fmt;

use crate::condition::Condition;
use crate::diag::{Diagnostic, suggest};
use crate::node::{Node, Span};
use crate::{validate, yaml};

/// The step timeout AWSTOE applies when `timeoutSeconds` is not given (120 minutes).
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 7200;

/// The most iterations one loop may produce (kiln's limit; AWSTOE documents none, but a loop
/// that runs a process per iteration beyond this is far more likely a mistake than a plan).
pub const MAX_LOOP_ITERATIONS: usize = 10_000;

/// A parsed, validated component document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The path the document was read from, as the user named it.
    pub file: String,
    pub name: Option<String>,
    pub description: Option<String>,
    /// Always `1.0` once validated (written `1`, `1.0` or `"1.0"`).
    pub schema_version: String,
    pub parameters: Vec<Parameter>,
    pub constants: Vec<Constant>,
    /// In document order, which is the order they run in.
    pub phases: Vec<Phase>,
}

/// A parameter declared under `parameters:`.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    pub name: String,
    /// Always `string`: the only type AWSTOE has.
    pub param_type: String,
    pub default: Option<String>,
    pub description: Option<String>,
    /// `allowedValues`, used by AWS's own documents though the schema reference omits it.
    pub allowed_values: Option<Vec<String>>,
    pub span: Span,
}

/// A constant declared under `constants:`.
#[derive(Debug, Clone, PartialEq)]
pub struct Constant {
    pub name: String,
    pub value: String,
    pub span: Span,
}

/// The phases AWSTOE (and kiln) run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PhaseName {
    Build,
    Validate,
    Test,
}

impl PhaseName {
    pub const ALL: [PhaseName; 3] = [PhaseName::Build, PhaseName::Validate, PhaseName::Test];

    pub fn as_str(self) -> &'static str {
        match self {
            PhaseName::Build => "build",
            PhaseName::Validate => "validate",
            PhaseName::Test => "test",
        }
    }

    /// Exact, lowercase, as AWSTOE spells the phases.
    pub fn from_name(name: &str) -> Option<PhaseName> {
        PhaseName::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for PhaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One phase and its steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub name: PhaseName,
    pub steps: Vec<Step>,
    pub span: Span,
}

/// What a step does when its action fails (after all attempts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Fail the step, the phase and the document; run nothing more.
    Abort,
    /// Fail the step and the document, but run the next step.
    Continue,
    /// Mark the step `IgnoredFailure` and carry on; the run still succeeds.
    Ignore,
}

impl OnFailure {
    pub const NAMES: &'static [&'static str] = &["Abort", "Continue", "Ignore"];

    /// Exact spelling, as documented (decided: `abort` is an error with a suggestion, since
    /// AWSTOE's documentation never shows another spelling).
    pub fn from_name(name: &str) -> Option<OnFailure> {
        match name {
            "Abort" => Some(OnFailure::Abort),
            "Continue" => Some(OnFailure::Continue),
            "Ignore" => Some(OnFailure::Ignore),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Abort => "Abort",
            OnFailure::Continue => "Continue",
            OnFailure::Ignore => "Ignore",
        }
    }
}

/// One step of a phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    /// The action module name, as written.
    pub action: String,
    /// The unrendered inputs; `None` when the step has no `inputs` key.
    pub inputs: Option<Node>,
    /// The time limit of each attempt (of each loop iteration) of the step. `None` means no
    /// limit (`timeoutSeconds: -1`); when the key is absent this is AWSTOE's default,
    /// [`DEFAULT_TIMEOUT_SECONDS`].
    pub timeout_seconds: Option<u64>,
    pub on_failure: OnFailure,
    /// Attempts before the step counts as failed (default 1).
    pub max_attempts: u32,
    pub loop_: Option<Loop>,
    pub condition: Option<Condition>,
    /// Where the step's map starts.
    pub span: Span,
    /// Where the `action` value is.
    pub action_span: Span,
}

/// A step's `loop`.
#[derive(Debug, Clone, PartialEq)]
pub struct Loop {
    pub name: Option<String>,
    pub kind: LoopKind,
    pub span: Span,
}

/// The two kinds of loop. Values are kept as text because they may hold `{{ }}` expressions
/// that are rendered when the step runs.
#[derive(Debug, Clone, PartialEq)]
pub enum LoopKind {
    /// Integers from `start` to `end` inclusive, stepping by `update_by`.
    For { start: String, end: String, update_by: String },
    /// An explicit list of values.
    ForEach(Vec<String>),
    /// A string split on a one-character delimiter (default `,`).
    ForEachDelimited { list: String, delimiter: String },
}

/// One iteration of a loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopIteration {
    /// 0-based position.
    pub index: i64,
    pub value: String,
}

impl Loop {
    /// The iterations, with `{{ }}` expressions in the loop's values rendered by `render`.
    ///
    /// AWSTOE semantics: a `for` loop covers `[start, end]` including both ends, adding
    /// `updateBy` each time; `updateBy` must not be 0 and must move `start` towards `end` (a
    /// combination that would never end is an error, as AWSTOE "verifies that the combination
    /// does not result in an infinite loop"); `start == end` gives one iteration. The value of
    /// a `for` iteration is the integer as text. A delimited `forEach` splits the rendered list
    /// on the delimiter and skips empty items (decided: a trailing delimiter, as in command
    /// output ending in a newline, adds no iteration); items are not trimmed. More than
    /// [`MAX_LOOP_ITERATIONS`] iterations is an error.
    pub fn iterations(
        &self,
        render: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Vec<LoopIteration>, String> {
        let values: Vec<String> = match &self.kind {
            LoopKind::For { start, end, update_by } => {
                let int = |field: &str, text: &str| -> Result<i64, String> {
                    let rendered = render(text)?;
                    rendered
                        .trim()
                        .parse::<i64>()
                        .map_err(|_| format!("loop `{field}` must be a whole number, got `{rendered}`"))
                };
                let (start, end, step) =
                    (int("start", start)?, int("end", end)?, int("updateBy", update_by)?);
                check_for_bounds(start, end, step)?;
                let count = (i128::from(end) - i128::from(start)) / i128::from(step) + 1;
                if count > MAX_LOOP_ITERATIONS as i128 {
                    return Err(too_many(count));
                }
                let mut values = Vec::new();
                let mut current = i128::from(start);
                while (step > 0 && current <= i128::from(end)) || (step < 0 && current >= i128::from(end)) {
                    values.push(current.to_string());
                    current += i128::from(step);
                }
                values
            }
            LoopKind::ForEach(items) => items.iter().map(|item| render(item)).collect::<Result<_, _>>()?,
            LoopKind::ForEachDelimited { list, delimiter } => {
                let rendered = render(list)?;
                rendered.split(delimiter.as_str()).filter(|s| !s.is_empty()).map(str::to_string).collect()
            }
        };
        if values.len() > MAX_LOOP_ITERATIONS {
            return Err(too_many(values.len() as i128));
        }
        Ok(values
            .into_iter()
            .enumerate()
            .map(|(i, value)| LoopIteration { index: i64::try_from(i).unwrap_or(i64::MAX), value })
            .collect())
    }
}

fn too_many(count: i128) -> String {
    format!("the loop would run {count} iterations; the limit is {MAX_LOOP_ITERATIONS}")
}

/// Check a `for` loop's bounds; shared by the validator (literal values) and [`Loop::iterations`].
pub(crate) fn check_for_bounds(start: i64, end: i64, update_by: i64) -> Result<(), String> {
    if update_by == 0 {
        return Err("loop `updateBy` must not be 0".to_string());
    }
    if (start < end && update_by < 0) || (start > end && update_by > 0) {
        return Err(format!(
            "the loop from {start} to {end} by {update_by} never reaches its end: `updateBy` must be {} for this range",
            if start < end { "positive" } else { "negative" }
        ));
    }
    Ok(())
}

impl Document {
    /// The phase named `name`, if the document has it.
    pub fn phase(&self, name: PhaseName) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// Match the parameters given for a run against the declared ones: the result holds every
    /// declared parameter, in declaration order, with its given value or its default.
    ///
    /// Errors (all reported together): a name the document does not declare (with a
    /// suggestion), a parameter given twice, a parameter with neither a value nor a default,
    /// and a value outside `allowedValues`. Names are case-sensitive, as references are.
    pub fn resolve_parameters(&self, given: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
        let mut errors = Vec::new();
        for (i, (name, _)) in given.iter().enumerate() {
            if !self.parameters.iter().any(|p| &p.name == name) {
                let mut msg = format!("unknown parameter `{name}`");
                match suggest(name, self.parameters.iter().map(|p| p.name.as_str())) {
                    Some(s) => msg.push_str(&format!(" (did you mean `{s}`?)")),
                    None if self.parameters.is_empty() => {
                        msg.push_str(" (the document declares no parameters)")
                    }
                    None => {
                        let names: Vec<_> = self.parameters.iter().map(|p| p.name.as_str()).collect();
                        msg.push_str(&format!(" (declared: {})", names.join(", ")));
                    }
                }
                errors.push(msg);
            } else if given[..i].iter().any(|(n, _)| n == name) {
                errors.push(format!("parameter `{name}` is given more than once"));
            }
        }
        let mut resolved = Vec::with_capacity(self.parameters.len());
        for p in &self.parameters {
            let value =
                given.iter().find(|(n, _)| n == &p.name).map(|(_, v)| v.clone()).or(p.default.clone());
            let Some(value) = value else {
                errors.push(format!("parameter `{}` has no default, so a value must be given", p.name));
                continue;
            };
            if let Some(allowed) = &p.allowed_values {
                if !allowed.contains(&value) {
                    errors.push(format!(
                        "parameter `{}` must be one of {}, not `{value}`",
                        p.name,
                        allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")
                    ));
                    continue;
                }
            }
            resolved.push((p.name.clone(), value));
        }
        if errors.is_empty() { Ok(resolved) } else { Err(errors.join("; ")) }
    }
}

/// Read and validate a component document. `file` names it in diagnostics.
///
/// On failure every problem found is returned, sorted by position; YAML that cannot be parsed
/// stops at the parser's error.
pub fn parse_document(file: &str, text: &str) -> Result<Document, Vec<Diagnostic>> {
    let root = yaml::parse(file, text)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (document, mut diags) = validate::build(file, text, &root);
    diags.sort_by_key(|d| (d.line, d.column));
    match document {
        Some(doc) if diags.is_empty() => Ok(doc),
        _ => Err(diags),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn for_loop(start: &str, end: &str, by: &str) -> Loop {
        Loop {
            name: None,
            kind: LoopKind::For { start: start.into(), end: end.into(), update_by: by.into() },
            span: Span::default(),
        }
    }

    fn ident(s: &str) -> Result<String, String> {
        Ok(s.to_string())
    }

    fn values(l: &Loop) -> Result<Vec<String>, String> {
        l.iterations(&ident).map(|its| its.into_iter().map(|i| i.value).collect())
    }

    #[test]
    fn for_loop_is_inclusive() {
        let its = for_loop("1", "3", "1").iterations(&ident).unwrap();
        assert_eq!(
            its,
            [
                LoopIteration { index: 0, value: "1".into() },
                LoopIteration { index: 1, value: "2".into() },
                LoopIteration { index: 2, value: "3".into() }
            ]
        );
        assert_eq!(values(&for_loop("100000", "1000000", "100000")).unwrap().len(), 10);
        assert_eq!(values(&for_loop("0", "5", "2")).unwrap(), ["0", "2", "4"]);
        assert_eq!(values(&for_loop("7", "7", "-3")).unwrap(), ["7"]);
    }

    #[test]
    fn for_loop_counts_down_with_negative_update() {
        assert_eq!(values(&for_loop("3", "-1", "-2")).unwrap(), ["3", "1", "-1"]);
    }

    #[test]
    fn for_loop_rejects_zero_and_wrong_direction_and_huge() {
        assert!(values(&for_loop("1", "3", "0")).unwrap_err().contains("must not be 0"));
        assert!(values(&for_loop("1", "3", "-1")).unwrap_err().contains("must be positive"));
        assert!(values(&for_loop("3", "1", "1")).unwrap_err().contains("must be negative"));
        assert!(values(&for_loop("0", "10000000", "1")).unwrap_err().contains("the limit is"));
        assert!(values(&for_loop("a", "1", "1")).unwrap_err().contains("whole number"));
    }

    #[test]
    fn for_loop_values_are_rendered() {
        let l = for_loop("{{ Start }}", "2", "1");
        let render = |s: &str| Ok(s.replace("{{ Start }}", "1"));
        assert_eq!(l.iterations(&render).unwrap().len(), 2);
    }

    #[test]
    fn foreach_list_and_delimited() {
        let l = Loop {
            name: Some("L".into()),
            kind: LoopKind::ForEach(vec!["a.yaml".into(), "{{ X }}".into()]),
            span: Span::default(),
        };
        let render = |s: &str| Ok(s.replace("{{ X }}", "b.yaml"));
        let its = l.iterations(&render).unwrap();
        assert_eq!(its[1], LoopIteration { index: 1, value: "b.yaml".into() });

        let d = Loop {
            name: None,
            kind: LoopKind::ForEachDelimited { list: "{{ Hosts }}".into(), delimiter: ",".into() },
            span: Span::default(),
        };
        let render = |s: &str| Ok(s.replace("{{ Hosts }}", "127.0.0.1,amazon.com,"));
        assert_eq!(
            d.iterations(&render).unwrap().into_iter().map(|i| i.value).collect::<Vec<_>>(),
            ["127.0.0.1", "amazon.com"]
        );
        let nl = Loop {
            name: None,
            kind: LoopKind::ForEachDelimited { list: "a\nb c\n".into(), delimiter: "\n".into() },
            span: Span::default(),
        };
        assert_eq!(values(&nl).unwrap(), ["a", "b c"]);
    }

    fn doc_with_params(text: &str) -> Document {
        parse_document("p.yml", text).unwrap_or_else(|d| panic!("{d:?}"))
    }

    const PARAMS: &str = "schemaVersion: 1.0
parameters:
  - Source:
      type: string
  - Level:
      type: string
      default: 'no'
      allowedValues: ['no', 'yes']
phases:
  - name: build
    steps:
      - name: Echo
        action: ExecuteBash
        inputs:
          commands: ['echo {{ Source }} {{ Level }}']
";

    #[test]
    fn resolve_parameters_uses_defaults_and_checks_values() {
        let doc = doc_with_params(PARAMS);
        assert_eq!(
            doc.resolve_parameters(&[("Source".into(), "s3://b".into())]).unwrap(),
            [("Source".to_string(), "s3://b".to_string()), ("Level".to_string(), "no".to_string())]
        );
        let err = doc.resolve_parameters(&[]).unwrap_err();
        assert_eq!(err, "parameter `Source` has no default, so a value must be given");
        let err = doc
            .resolve_parameters(&[("Source".into(), "x".into()), ("Levl".into(), "yes".into())])
            .unwrap_err();
        assert_eq!(err, "unknown parameter `Levl` (did you mean `Level`?)");
        let err = doc
            .resolve_parameters(&[("Source".into(), "x".into()), ("Level".into(), "maybe".into())])
            .unwrap_err();
        assert_eq!(err, "parameter `Level` must be one of `no`, `yes`, not `maybe`");
        let err = doc
            .resolve_parameters(&[("Source".into(), "x".into()), ("Source".into(), "y".into())])
            .unwrap_err();
        assert_eq!(err, "parameter `Source` is given more than once");
    }
}
