//! The `{{ ... }}` expression language of component documents.
//!
//! A placeholder is `{{`, a reference, `}}`; whitespace inside the braces is optional and
//! trimmed (`{{MyConstant}}` and `{{ MyConstant }}` are the same). References are:
//! - `Name`: a parameter or constant (case-sensitive);
//! - `loop.index`, `loop.value`: the current iteration of the step's own loop;
//! - `<loopName>.index`, `<loopName>.value`: the same, through the loop's `name`;
//! - `phase.Step.outputs.NAME` (also `outputs[0].NAME`): an output of an earlier step;
//! - `phase.Step.inputs[N].field`: a field of the N-th (0-based) input of an earlier step whose
//!   inputs are a list, and `phase.Step.inputs.field` for one whose inputs are a map.
//!
//! Rules decided here, where AWSTOE's documentation is silent:
//! - **No escaping.** AWSTOE documents none. Text that cannot be a placeholder stays literal, so
//!   there is rarely a need for one (see the next rules).
//! - **Unclosed `{{` is literal text.** AWS's own managed component `aws-cli-version-2-linux`
//!   contains `'{{ build.InstallationType.outputs.stdout'` with no closing braces and validates
//!   in AWSTOE, so a `{{` with no `}}` after it is kept as written.
//! - **Nested braces: the innermost `{{` wins.** In `{{ a {{ b }}` the placeholder is `{{ b }}`
//!   and `{{ a ` is literal, which is what lets a later, well-formed placeholder in the same
//!   scalar still work after an unclosed one.
//! - **Only reference-shaped text is a placeholder.** The trimmed inside must consist of
//!   letters, digits, `_`, `-`, `.`, `[` and `]` and start with a letter, digit or `_`;
//!   anything else (`{{ .State.Running }}` for `docker inspect`, `{{ }}`, `{{ a b }}`) is
//!   literal text, so shell and Go-template snippets pass through untouched. Reference-shaped
//!   text that is not a valid reference (`{{ build.Step.stdout }}`) is an error.
//! - **Unknown references at run time are errors**: [`render`] stops at the first reference
//!   the resolver cannot resolve. (The validator rejects them before anything runs.)

use std::fmt;

/// The field of a loop iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopField {
    /// The 0-based position of the iteration.
    Index,
    /// The value of the iteration.
    Value,
}

impl LoopField {
    pub fn as_str(self) -> &'static str {
        match self {
            LoopField::Index => "index",
            LoopField::Value => "value",
        }
    }
}

/// Which side of a step a chaining expression reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Inputs,
    Outputs,
}

impl Section {
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Inputs => "inputs",
            Section::Outputs => "outputs",
        }
    }
}

/// A chaining reference to another step: `phase.Step.inputs[N].field`, `phase.Step.outputs.NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRef {
    /// The phase name as written (the validator checks it).
    pub phase: String,
    pub step: String,
    pub section: Section,
    /// The `[N]` after `inputs`/`outputs`, if written.
    pub index: Option<usize>,
    /// The input field or output name.
    pub field: String,
}

/// What a placeholder refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A parameter or constant.
    Variable(String),
    /// A loop iteration variable: `loop.*` (`name` is `None`) or `<name>.*`.
    Loop { name: Option<String>, field: LoopField },
    /// Another step's input or output.
    Chain(ChainRef),
}

impl fmt::Display for Reference {
    /// The canonical text of the reference, without braces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Variable(name) => f.write_str(name),
            Reference::Loop { name, field } => {
                write!(f, "{}.{}", name.as_deref().unwrap_or("loop"), field.as_str())
            }
            Reference::Chain(c) => {
                write!(f, "{}.{}.{}", c.phase, c.step, c.section.as_str())?;
                if let Some(i) = c.index {
                    write!(f, "[{i}]")?;
                }
                write!(f, ".{}", c.field)
            }
        }
    }
}

/// One placeholder found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    /// The reference, or why the text between the braces is not a valid one.
    pub reference: Result<Reference, String>,
    /// Byte offset of the opening `{{`.
    pub start: usize,
    /// Byte offset just past the closing `}}`.
    pub end: usize,
}

/// Every placeholder in `text`, in order. Literal text (including an unclosed `{{`) yields
/// nothing.
pub fn scan(text: &str) -> Vec<Placeholder> {
    let mut found = Vec::new();
    let mut pos = 0;
    while let Some(rel) = text[pos..].find("{{") {
        let start = pos + rel;
        let inner_start = start + 2;
        let Some(close_rel) = text[inner_start..].find("}}") else {
            // Unclosed: the rest is literal.
            break;
        };
        let close = inner_start + close_rel;
        let inner = &text[inner_start..close];
        // A later `{{` before the `}}` starts the real placeholder; this one is literal.
        if let Some(nested) = inner.rfind("{{") {
            pos = inner_start + nested;
            continue;
        }
        let trimmed = inner.trim();
        if is_reference_shaped(trimmed) {
            found.push(Placeholder { reference: parse_reference(trimmed), start, end: close + 2 });
            pos = close + 2;
        } else {
            pos = inner_start;
        }
    }
    found
}

/// Replace every placeholder in `text` with what `resolve` gives for it.
///
/// Fails on the first malformed placeholder or resolver error; the error names the reference.
pub fn render(
    text: &str,
    resolve: &mut dyn FnMut(&Reference) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for placeholder in scan(text) {
        out.push_str(&text[last..placeholder.start]);
        let reference = placeholder.reference?;
        let value =
            resolve(&reference).map_err(|e| format!("cannot resolve `{{{{ {reference} }}}}`: {e}"))?;
        out.push_str(&value);
        last = placeholder.end;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

/// Whether `text` contains at least one placeholder.
pub fn has_placeholder(text: &str) -> bool {
    !scan(text).is_empty()
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_reference_shaped(inner: &str) -> bool {
    let mut chars = inner.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| is_ident_char(c) || matches!(c, '.' | '[' | ']'))
}

/// One dot-separated part of a reference: a name and an optional `[N]`.
struct Segment<'a> {
    name: &'a str,
    index: Option<usize>,
}

fn segment(part: &str) -> Result<Segment<'_>, String> {
    let (name, index) = match part.find('[') {
        None => (part, None),
        Some(open) => {
            let rest = &part[open + 1..];
            let digits = rest.strip_suffix(']').ok_or_else(|| format!("`{part}` has an unclosed `[`"))?;
            let index = digits.parse::<usize>().map_err(|_| format!("`[{digits}]` is not a list index"))?;
            (&part[..open], Some(index))
        }
    };
    if name.is_empty() || !name.chars().all(is_ident_char) {
        return Err(format!("`{part}` is not a name"));
    }
    Ok(Segment { name, index })
}

const SHAPES: &str = "expected a parameter or constant name, `loop.index`, `loop.value`, \
                      `<loopName>.index`, `<loopName>.value`, `phase.Step.outputs.NAME` or \
                      `phase.Step.inputs[N].field`";

/// Parse the trimmed text between the braces.
pub fn parse_reference(inner: &str) -> Result<Reference, String> {
    let parts: Vec<&str> = inner.split('.').collect();
    let segments = parts.iter().map(|p| segment(p)).collect::<Result<Vec<_>, _>>()?;
    let no_index = |s: &Segment<'_>| {
        if s.index.is_some() { Err(format!("`{inner}`: only `inputs`/`outputs` take `[N]`")) } else { Ok(()) }
    };
    match segments.as_slice() {
        [var] => {
            no_index(var)?;
            Ok(Reference::Variable(var.name.to_string()))
        }
        [owner, field] => {
            no_index(owner)?;
            no_index(field)?;
            let field = match field.name {
                "index" => LoopField::Index,
                "value" => LoopField::Value,
                other if owner.name == "loop" => {
                    return Err(format!("`loop.{other}`: a loop has only `index` and `value`"));
                }
                _ => return Err(format!("`{inner}` is not a reference: {SHAPES}")),
            };
            let name = (owner.name != "loop").then(|| owner.name.to_string());
            Ok(Reference::Loop { name, field })
        }
        [phase, step, section, field] => {
            no_index(phase)?;
            no_index(step)?;
            no_index(field)?;
            let kind = match section.name {
                "inputs" => Section::Inputs,
                "outputs" => Section::Outputs,
                other => {
                    return Err(format!(
                        "`{inner}`: expected `inputs` or `outputs` after the step name, not `{other}`"
                    ));
                }
            };
            Ok(Reference::Chain(ChainRef {
                phase: phase.name.to_string(),
                step: step.name.to_string(),
                section: kind,
                index: section.index,
                field: field.name.to_string(),
            }))
        }
        [_, _, section] if matches!(section.name, "inputs" | "outputs") => {
            Err(format!("`{inner}` names no field: add `.field` after `{}`", section.name))
        }
        [_, _, _] => Err(format!(
            "`{inner}` is not a reference: a chaining expression is `phase.Step.outputs.NAME` or \
             `phase.Step.inputs[N].field`"
        )),
        _ => Err(format!("`{inner}` is not a reference: {SHAPES}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str) -> Reference {
        Reference::Variable(name.to_string())
    }

    fn refs(text: &str) -> Vec<Result<Reference, String>> {
        scan(text).into_iter().map(|p| p.reference).collect()
    }

    #[test]
    fn whitespace_inside_braces_is_optional() {
        for text in ["{{ A }}", "{{A}}", "{{A }}", "{{ A}}", "{{\tA  }}"] {
            assert_eq!(refs(text), [Ok(var("A"))], "{text}");
        }
    }

    #[test]
    fn scan_reports_byte_offsets() {
        let text = "ü {{ a }} b {{c}}";
        let found = scan(text);
        assert_eq!(found.len(), 2);
        assert_eq!(&text[found[0].start..found[0].end], "{{ a }}");
        assert_eq!(&text[found[1].start..found[1].end], "{{c}}");
    }

    #[test]
    fn loop_references() {
        assert_eq!(refs("{{ loop.index }}"), [Ok(Reference::Loop { name: None, field: LoopField::Index })]);
        assert_eq!(
            refs("{{myForEachLoop.value}}"),
            [Ok(Reference::Loop { name: Some("myForEachLoop".into()), field: LoopField::Value })]
        );
        assert!(refs("{{ loop.count }}")[0].as_ref().unwrap_err().contains("only `index` and `value`"));
    }

    #[test]
    fn chaining_paths() {
        assert_eq!(
            refs("cd {{ test.DownloadFiles.inputs[0].destination }}"),
            [Ok(Reference::Chain(ChainRef {
                phase: "test".into(),
                step: "DownloadFiles".into(),
                section: Section::Inputs,
                index: Some(0),
                field: "destination".into(),
            }))]
        );
        let out = refs("{{ build.Fail.outputs.stdout }}");
        let Ok(Reference::Chain(c)) = &out[0] else { panic!("{out:?}") };
        assert_eq!((c.section, c.index, c.field.as_str()), (Section::Outputs, None, "stdout"));
        let map_input = refs("{{ build.Run.inputs.path }}");
        let Ok(Reference::Chain(c)) = &map_input[0] else { panic!("{map_input:?}") };
        assert_eq!((c.section, c.index, c.field.as_str()), (Section::Inputs, None, "path"));
        assert_eq!(
            map_input[0].as_ref().unwrap().to_string(),
            "build.Run.inputs.path",
            "Display gives the canonical text"
        );
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(
            refs("{{ build.Step.stdout }}")[0].as_ref().unwrap_err().contains("a chaining expression is")
        );
        assert!(
            refs("{{ build.Step.result.x }}")[0]
                .as_ref()
                .unwrap_err()
                .contains("expected `inputs` or `outputs`")
        );
        assert!(refs("{{ build.Step.outputs }}")[0].as_ref().unwrap_err().contains("names no field"));
        assert!(refs("{{ a.b.c.d.e }}")[0].is_err());
        assert!(refs("{{ build.S.inputs[x].f }}")[0].as_ref().unwrap_err().contains("not a list index"));
        assert!(refs("{{ A[0] }}")[0].is_err());
    }

    #[test]
    fn unclosed_braces_are_literal() {
        let text = "if [ '{{ build.InstallationType.outputs.stdout' == 'install' ]; then";
        assert!(scan(text).is_empty());
        let mut calls = 0;
        let out = render(text, &mut |_| {
            calls += 1;
            Ok(String::new())
        });
        assert_eq!(out.as_deref(), Ok(text));
        assert_eq!(calls, 0);
    }

    #[test]
    fn nested_braces_use_the_innermost() {
        let text = "x='{{ broken' y={{ B }}";
        let found = scan(text);
        assert_eq!(found.len(), 1);
        assert_eq!(&text[found[0].start..found[0].end], "{{ B }}");
        assert_eq!(found[0].reference, Ok(var("B")));
    }

    #[test]
    fn non_reference_text_in_braces_is_literal() {
        for text in ["docker inspect -f '{{ .State.Running }}'", "{{}}", "{{ a b }}", "{{ 'x' }}"] {
            assert!(scan(text).is_empty(), "{text}");
        }
    }

    #[test]
    fn render_replaces_every_placeholder() {
        let mut resolve = |r: &Reference| match r {
            Reference::Variable(n) if n == "Hosts" => Ok("a,b".to_string()),
            Reference::Loop { field: LoopField::Value, .. } => Ok("v".to_string()),
            Reference::Loop { field: LoopField::Index, .. } => Ok("3".to_string()),
            other => Err(format!("unknown {other}")),
        };
        assert_eq!(
            render("ping {{ loop.value }} #{{loop.index}} of {{Hosts}}}", &mut resolve).as_deref(),
            Ok("ping v #3 of a,b}")
        );
        let err = render("x {{ Missing }}", &mut resolve).unwrap_err();
        assert!(err.contains("`{{ Missing }}`") && err.contains("unknown Missing"), "{err}");
        let err = render("{{ build.X.y }}", &mut resolve).unwrap_err();
        assert!(err.contains("not a reference"), "{err}");
    }
}
