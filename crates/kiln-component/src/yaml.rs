//! YAML text to a [`Node`] tree with 1-based line/column spans.
//!
//! Built on `saphyr-parser`'s event API, which reports a position for every event, so that
//! every node (and every error) can point at `LINE:COLUMN`. Scalars keep their exact text and
//! style: nothing is resolved to YAML 1.1 integers or floats (`permissions: 0755` stays the text
//! `0755`, `schemaVersion: 1.0` stays `1.0`).
//!
//! Rules decided here (YAML itself and AWSTOE are silent or permissive):
//! - a plain `~`, `null` (`Null`, `NULL`) or empty value is [`NodeKind::Null`]; quoted, it is text;
//! - tags (`!!str`, `!foo`) are ignored: the scalar keeps its text;
//! - anchors and aliases are resolved by cloning the anchored node, as YAML loaders do; the
//!   expansion is capped at [`MAX_ALIAS_EXPANSION`] nodes so that a "billion laughs" document
//!   is an error instead of an out-of-memory;
//! - a duplicate key in one mapping is an error at the second key (YAML 1.2 forbids it; most
//!   loaders keep the last value silently, which hides typos such as two `inputs:`);
//! - a stream holds exactly one document: a second one is an error at its start;
//! - a UTF-8 byte-order mark at the start is skipped.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle as YamlStyle, ScanError, StrInput};

use crate::diag::Diagnostic;
use crate::node::{Node, NodeKind, ScalarStyle, Span};

/// How many nodes alias expansion may create in one document before it is refused.
pub const MAX_ALIAS_EXPANSION: usize = 100_000;

/// Parse `text` (named `file` in diagnostics) into a node tree.
///
/// An empty document (nothing but comments) gives a [`NodeKind::Null`] root; the document layer
/// decides whether that is acceptable. Malformed YAML stops parsing at the first error; duplicate
/// keys are collected and all reported.
pub fn parse(file: &str, text: &str) -> Result<Node, Vec<Diagnostic>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut loader = Loader {
        file,
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        diags: Vec::new(),
        expanded: 0,
    };
    match loader.stream() {
        Ok(root) if loader.diags.is_empty() => Ok(root),
        Ok(_) => Err(loader.diags),
        Err(fatal) => {
            let mut diags = loader.diags;
            diags.push(fatal);
            diags.sort_by_key(|d| (d.line, d.column));
            Err(diags)
        }
    }
}

/// Convert a parser position (1-based line, 0-based column in characters) to a [`Span`].
fn span_of(marker: &saphyr_parser::Marker) -> Span {
    Span { line: to_u32(marker.line()), col: to_u32(marker.col() + 1) }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

struct Loader<'a> {
    file: &'a str,
    parser: Parser<'a, StrInput<'a>>,
    /// Anchored nodes by the parser's anchor id, for aliases.
    anchors: HashMap<usize, Node>,
    /// Non-fatal problems (duplicate keys).
    diags: Vec<Diagnostic>,
    /// Nodes created by alias expansion so far.
    expanded: usize,
}

impl<'a> Loader<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), Diagnostic> {
        match self.parser.next_event() {
            Some(Ok((event, span))) => Ok((event, span_of(&span.start))),
            Some(Err(err)) => Err(self.scan_error(&err)),
            // The parser stops after StreamEnd; asking again is a bug in this loader, but user
            // input must not panic, so report it as an unexpected end.
            None => Err(Diagnostic::new(self.file, Span { line: 1, col: 1 }, "unexpected end of YAML")),
        }
    }

    fn scan_error(&self, err: &ScanError) -> Diagnostic {
        Diagnostic::new(self.file, span_of(err.marker()), format!("invalid YAML: {}", err.info()))
    }

    fn stream(&mut self) -> Result<Node, Diagnostic> {
        let (event, _) = self.next()?;
        if event != Event::StreamStart {
            return Err(Diagnostic::new(self.file, Span { line: 1, col: 1 }, "invalid YAML stream"));
        }
        let (event, span) = self.next()?;
        let root = match event {
            Event::StreamEnd => return Ok(Node::new(NodeKind::Null, Span { line: 1, col: 1 })),
            Event::DocumentStart(_) => {
                let (event, span) = self.next()?;
                self.node(event, span)?
            }
            _ => return Err(Diagnostic::new(self.file, span, "invalid YAML: expected a document")),
        };
        // DocumentEnd (explicit `...` or implicit), then the end of the stream.
        let (event, span) = self.next()?;
        if event != Event::DocumentEnd {
            return Err(Diagnostic::new(self.file, span, "invalid YAML: expected the end of the document"));
        }
        let (event, span) = self.next()?;
        match event {
            Event::StreamEnd => Ok(root),
            Event::DocumentStart(_) => Err(Diagnostic::new(
                self.file,
                span,
                "a component document must be a single YAML document, but a second one starts here",
            )
            .with_hint("remove the `---` separator and everything after it, or split the file")),
            _ => Err(Diagnostic::new(self.file, span, "invalid YAML: expected the end of the stream")),
        }
    }

    /// Build the node that starts with `event`.
    fn node(&mut self, event: Event<'a>, span: Span) -> Result<Node, Diagnostic> {
        let (node, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                let style = match style {
                    YamlStyle::Plain => ScalarStyle::Plain,
                    YamlStyle::SingleQuoted => ScalarStyle::SingleQuoted,
                    YamlStyle::DoubleQuoted => ScalarStyle::DoubleQuoted,
                    YamlStyle::Literal => ScalarStyle::Literal,
                    YamlStyle::Folded => ScalarStyle::Folded,
                };
                let is_null = style == ScalarStyle::Plain
                    && tag.is_none()
                    && matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL");
                let kind = if is_null { NodeKind::Null } else { NodeKind::Scalar(text.into_owned(), style) };
                (Node::new(kind, span), anchor)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (event, item_span) = self.next()?;
                    if event == Event::SequenceEnd {
                        break;
                    }
                    items.push(self.node(event, item_span)?);
                }
                (Node::new(NodeKind::Seq(items), span), anchor)
            }
            Event::MappingStart(anchor, _) => {
                let mut entries: Vec<(Node, Node)> = Vec::new();
                loop {
                    let (event, key_span) = self.next()?;
                    if event == Event::MappingEnd {
                        break;
                    }
                    let key = self.node(event, key_span)?;
                    let (event, value_span) = self.next()?;
                    let value = self.node(event, value_span)?;
                    if let Some(text) = key.as_str() {
                        if let Some((first, _)) = entries.iter().find(|(k, _)| k.as_str() == Some(text)) {
                            self.diags.push(
                                Diagnostic::new(self.file, key.span, format!("duplicate key `{text}`"))
                                    .with_hint(format!(
                                        "`{text}` is already set at line {}; keep only one",
                                        first.span.line
                                    )),
                            );
                        }
                    }
                    entries.push((key, value));
                }
                (Node::new(NodeKind::Map(entries), span), anchor)
            }
            Event::Alias(id) => {
                let Some(target) = self.anchors.get(&id) else {
                    return Err(Diagnostic::new(self.file, span, "invalid YAML: alias to an unknown anchor"));
                };
                self.expanded += count_nodes(target);
                if self.expanded > MAX_ALIAS_EXPANSION {
                    return Err(Diagnostic::new(
                        self.file,
                        span,
                        format!("YAML aliases expand to more than {MAX_ALIAS_EXPANSION} nodes"),
                    ));
                }
                // The copy stands where the alias is written, so errors inside it point at the
                // anchored original, which is where the text to fix is.
                return Ok(target.clone());
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd
            | Event::SequenceEnd
            | Event::MappingEnd => {
                return Err(Diagnostic::new(self.file, span, "invalid YAML: unexpected structure"));
            }
        };
        // saphyr numbers anchors from 1; 0 means "no anchor".
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }
}

fn count_nodes(node: &Node) -> usize {
    1 + match &node.kind {
        NodeKind::Null | NodeKind::Scalar(..) => 0,
        NodeKind::Seq(items) => items.iter().map(count_nodes).sum(),
        NodeKind::Map(entries) => entries.iter().map(|(k, v)| count_nodes(k) + count_nodes(v)).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Node {
        match parse("t.yml", text) {
            Ok(node) => node,
            Err(diags) => panic!("unexpected errors: {diags:?}"),
        }
    }

    fn errors(text: &str) -> Vec<String> {
        match parse("t.yml", text) {
            Ok(node) => panic!("expected an error, got {node:?}"),
            Err(diags) => diags.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn scalars_keep_text_and_style() {
        let root = parse_ok("permissions: 0755\nschemaVersion: 1.0\nq: '1.0'\nd: \"a\\tb\"\n");
        let perm = root.get("permissions").unwrap();
        assert_eq!(perm.kind, NodeKind::Scalar("0755".into(), ScalarStyle::Plain));
        assert_eq!(root.get("schemaVersion").unwrap().as_str(), Some("1.0"));
        assert_eq!(root.get("q").unwrap().kind, NodeKind::Scalar("1.0".into(), ScalarStyle::SingleQuoted));
        assert_eq!(root.get("d").unwrap().kind, NodeKind::Scalar("a\tb".into(), ScalarStyle::DoubleQuoted));
    }

    #[test]
    fn nulls_only_when_plain() {
        let root = parse_ok("a: ~\nb: null\nc:\nd: 'null'\ne: ''\n");
        for key in ["a", "b", "c"] {
            assert!(root.get(key).unwrap().is_null(), "{key}");
        }
        assert_eq!(root.get("d").unwrap().as_str(), Some("null"));
        assert_eq!(root.get("e").unwrap().as_str(), Some(""));
    }

    #[test]
    fn spans_are_one_based() {
        let root = parse_ok("# comment\nphases:\n  - name: build\n");
        assert_eq!(root.span, Span { line: 2, col: 1 });
        let (key, value) = root.entry("phases").unwrap();
        assert_eq!(key.span, Span { line: 2, col: 1 });
        let item = &value.as_seq().unwrap()[0];
        assert_eq!(item.span, Span { line: 3, col: 5 });
        let (k, v) = item.entry("name").unwrap();
        assert_eq!((k.span, v.span), (Span { line: 3, col: 5 }, Span { line: 3, col: 11 }));
    }

    #[test]
    fn accepts_bom_indented_top_level_no_newline_and_utf8() {
        let root = parse_ok("\u{feff} name: 'x'\n description: “quoted” ü\n schemaVersion: 1.0");
        assert_eq!(root.get("description").unwrap().as_str(), Some("“quoted” ü"));
        assert_eq!(root.get("name").unwrap().span, Span { line: 1, col: 8 });
        assert_eq!(root.get("schemaVersion").unwrap().as_str(), Some("1.0"));
    }

    #[test]
    fn literal_block_keeps_lines() {
        let root = parse_ok("c: |\n  echo a\n  echo b\n");
        let c = root.get("c").unwrap();
        assert_eq!(c.kind, NodeKind::Scalar("echo a\necho b\n".into(), ScalarStyle::Literal));
    }

    #[test]
    fn empty_document_is_null() {
        assert!(parse_ok("# nothing here\n").is_null());
        assert!(parse_ok("").is_null());
    }

    #[test]
    fn malformed_yaml_is_reported_at_the_parser_position() {
        let errs = errors("a: [1, 2\nb: 3\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("t.yml:"), "{errs:?}");
        assert!(errs[0].contains("invalid YAML"), "{errs:?}");
        let errs = errors("a: b: c\n");
        assert!(errs[0].starts_with("t.yml:1:"), "{errs:?}");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let errs = errors("a: 1\nb: 2\na: 3\n");
        assert_eq!(
            errs,
            ["t.yml:3:1: duplicate key `a` (`a` is already set at line 1; keep only one)".to_string()]
        );
    }

    #[test]
    fn second_document_is_rejected() {
        let errs = errors("a: 1\n---\nb: 2\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("t.yml:2:1: a component document must be a single YAML document"));
        // An explicit single document is fine.
        assert_eq!(parse_ok("---\na: 1\n...\n").get("a").unwrap().as_str(), Some("1"));
    }

    #[test]
    fn aliases_are_resolved_by_cloning() {
        let root = parse_ok("base: &b\n  x: 1\ncopy: *b\n");
        assert_eq!(root.get("copy").unwrap().get("x").unwrap().as_str(), Some("1"));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let errs = errors(&text);
        assert!(errs[0].contains("expand to more than"), "{errs:?}");
    }
}
