//! YAML documents read into typed values with serde, every error at its node's position.
//!
//! Resource files (kiln-model) and compliance profiles (kiln-compliance) are YAML read into
//! Rust types. This is the one implementation of that: the position-keeping tree of
//! [`crate::yaml`], a JSON view of it for serde, and serde's error path mapped back to the node
//! (for a misspelt field or variant, to the key itself, with the nearest valid name suggested).

use serde::de::DeserializeOwned;

use crate::diag::{Diagnostic, suggest};
use crate::node::{Node, NodeKind, ScalarStyle, Span};

/// The tree as JSON for serde: plain `true`/`false` become booleans and plain whole numbers
/// numbers, so typed fields (`memoryMib: 2048`) read naturally; everything else, and everything
/// quoted, stays text (`semanticVersion: 1.0.0`, `maxMode: 0640`, `value: '5'`).
pub fn typed_json(node: &Node) -> serde_json::Value {
    match &node.kind {
        NodeKind::Null => serde_json::Value::Null,
        NodeKind::Scalar(s, ScalarStyle::Plain) => match s.as_str() {
            "true" => serde_json::Value::Bool(true),
            "false" => serde_json::Value::Bool(false),
            _ => match s.parse::<i64>() {
                Ok(n) if !(s.len() > 1 && s.starts_with('0')) => serde_json::Value::Number(n.into()),
                _ => serde_json::Value::String(s.clone()),
            },
        },
        NodeKind::Scalar(s, _) => serde_json::Value::String(s.clone()),
        NodeKind::Seq(items) => serde_json::Value::Array(items.iter().map(typed_json).collect()),
        NodeKind::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), typed_json(v)))
                .collect(),
        ),
    }
}

/// One step of a path into the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// The node `path` reaches, if it reaches one.
pub fn node_at<'a>(root: &'a Node, path: &[Seg<'_>]) -> Option<&'a Node> {
    let mut node = root;
    for seg in path {
        node = match seg {
            Seg::Key(k) => node.get(k)?,
            Seg::Index(i) => node.as_seq()?.get(*i)?,
        };
    }
    Some(node)
}

/// The span of the deepest node `path` reaches.
pub fn span_at(root: &Node, path: &[Seg<'_>]) -> Span {
    let mut node = root;
    for seg in path {
        let next = match seg {
            Seg::Key(k) => node.get(k),
            Seg::Index(i) => node.as_seq().and_then(|s| s.get(*i)),
        };
        match next {
            Some(n) => node = n,
            None => break,
        }
    }
    node.span
}

/// Reads `root` (from `file`) into `T`. A serde error becomes one diagnostic at the offending
/// node, its message prefixed with the field's path (or `whole` for the document itself, when
/// given), with a near name suggested for an unknown field or variant and `missing_hint` for a
/// missing field.
pub fn deserialize<T: DeserializeOwned>(
    file: &str,
    root: &Node,
    whole: Option<&str>,
    missing_hint: Option<&str>,
) -> Result<T, Vec<Diagnostic>> {
    serde_path_to_error::deserialize::<_, T>(typed_json(root)).map_err(|e| {
        let message = e.inner().to_string();
        let segs: Vec<Seg<'_>> = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.as_str())),
                serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                _ => None,
            })
            .collect();
        let mut span = span_at(root, &segs);
        let mut hint = None;
        let unknown = message
            .strip_prefix("unknown field `")
            .or_else(|| message.strip_prefix("unknown variant `"))
            .and_then(|r| r.split_once('`'))
            .map(|(k, _)| k);
        if let Some(key) = unknown {
            // serde's path ends at the unknown field (or at the enum whose variant is unknown):
            // point at the key itself, and suggest the near name from serde's list.
            let key_span = node_at(root, &segs)
                .and_then(|n| n.entry(key))
                .or_else(|| segs.split_last().and_then(|(_, init)| node_at(root, init)?.entry(key)))
                .map(|(k, _)| k.span);
            if let Some(s) = key_span {
                span = s;
            }
            let expected = message.split_once("expected").map(|(_, list)| list).unwrap_or_default();
            hint =
                suggest(key, expected.split('`').skip(1).step_by(2)).map(|s| format!("did you mean `{s}`?"));
        } else if message.starts_with("missing field") {
            hint = missing_hint.map(str::to_string);
        }
        let path = e.path().to_string();
        let what = match (path.as_str(), whole) {
            (".", Some(w)) => format!("{w}: "),
            (".", None) => String::new(),
            (p, _) => format!("`{p}`: "),
        };
        let mut d = Diagnostic::new(file, span, format!("{what}{message}"));
        d.hint = hint;
        vec![d]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Doc {
        #[allow(dead_code)]
        memory_mib: u32,
        #[allow(dead_code)]
        mode: String,
    }

    #[test]
    fn numbers_stay_text_when_quoted_or_octal_and_errors_point_at_the_key() {
        let root = crate::yaml::parse("f.yml", "memoryMib: 2048\nmode: 0640\n").unwrap();
        assert_eq!(typed_json(&root)["mode"], "0640");
        let doc: Doc = deserialize("f.yml", &root, None, None).unwrap();
        assert_eq!(doc.mode, "0640");
        let root = crate::yaml::parse("f.yml", "memoryMib: 1\nmode: x\nmemoyMib: 2\n").unwrap();
        let err = deserialize::<Doc>("f.yml", &root, None, None).unwrap_err();
        assert_eq!((err[0].line, err[0].column), (3, 1), "{err:?}");
        assert_eq!(err[0].hint.as_deref(), Some("did you mean `memoryMib`?"));
    }
}
