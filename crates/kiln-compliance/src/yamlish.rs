//! YAML node trees to typed values with positions, as kiln-model reads resource files: the
//! position-keeping tree from kiln-component, a JSON view for serde, and the span of the node
//! a serde path (or a semantic check) points at.

use kiln_component::diag::{Diagnostic, suggest};
use kiln_component::node::{Node, NodeKind, ScalarStyle, Span};
use serde::de::DeserializeOwned;

/// The tree as JSON for serde: plain `true`/`false` become booleans and plain whole numbers
/// numbers; everything else, and everything quoted, stays text (`maxMode: 0640` stays `0640`).
pub(crate) fn typed_json(node: &Node) -> serde_json::Value {
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
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// The span of the deepest node `path` reaches.
pub(crate) fn span_at(root: &Node, path: &[Seg<'_>]) -> Span {
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

/// Parses `text` (named `file`) into `T`, every error a diagnostic at the offending node, with
/// a near name suggested for a misspelt field or kind.
pub(crate) fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<(T, Node), Vec<Diagnostic>> {
    let root = kiln_component::yaml::parse(file, text)?;
    let json = typed_json(&root);
    match serde_path_to_error::deserialize::<_, T>(json) {
        Ok(v) => Ok((v, root)),
        Err(e) => {
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
            let mut span = span_at(&root, &segs);
            let mut hint = None;
            let unknown = message
                .strip_prefix("unknown field `")
                .or_else(|| message.strip_prefix("unknown variant `"))
                .and_then(|r| r.split_once('`'))
                .map(|(k, _)| k);
            if let Some(key) = unknown {
                // Point at the key itself (serde's path ends at the unknown field, or at the
                // enum whose variant is unknown), and suggest the near name from serde's list.
                let node_at = |path: &[Seg<'_>]| -> Option<&Node> {
                    let mut node = &root;
                    for seg in path {
                        node = match seg {
                            Seg::Key(k) => node.get(k)?,
                            Seg::Index(i) => node.as_seq()?.get(*i)?,
                        };
                    }
                    Some(node)
                };
                let key_span = node_at(&segs)
                    .and_then(|n| n.entry(key))
                    .or_else(|| segs.split_last().and_then(|(_, init)| node_at(init)?.entry(key)))
                    .map(|(k, _)| k.span);
                if let Some(s) = key_span {
                    span = s;
                }
                let expected = message.split_once("expected").map(|(_, list)| list).unwrap_or_default();
                let names = expected.split('`').skip(1).step_by(2);
                hint = suggest(key, names).map(|s| format!("did you mean `{s}`?"));
            }
            let path = e.path().to_string();
            let what = if path == "." { String::new() } else { format!("`{path}`: ") };
            let mut d = Diagnostic::new(file, span, format!("{what}{message}"));
            d.hint = hint;
            Err(vec![d])
        }
    }
}

/// Text written as a string, a number or a boolean (`value: 0` and `value: "0"` alike).
pub(crate) mod text {
    use serde::{Deserialize, Deserializer};

    pub(crate) fn one<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        scalar(serde_json::Value::deserialize(d)?)
    }

    pub(crate) fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => Ok(None),
            v => scalar(v).map(Some),
        }
    }

    /// One value or a list of them, as a list.
    pub(crate) fn many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => Ok(Vec::new()),
            serde_json::Value::Array(items) => items.into_iter().map(scalar).collect(),
            v => Ok(vec![scalar(v)?]),
        }
    }

    fn scalar<E: serde::de::Error>(v: serde_json::Value) -> Result<String, E> {
        match v {
            serde_json::Value::String(s) => Ok(s),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            serde_json::Value::Bool(b) => Ok(b.to_string()),
            other => Err(E::custom(format!("expected text, found {other}"))),
        }
    }
}
