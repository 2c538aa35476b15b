//! A YAML document as a tree of nodes that remember where they stand in the file.
//!
//! Component documents are read into this tree rather than straight into typed structs for two
//! reasons: every error must point at `LINE:COLUMN`, and AWSTOE reads scalars as *text*
//! (`permissions: 0755` is the string `0755`, not the YAML 1.1 octal integer 493), so the
//! tree keeps each scalar's original text and quoting style and lets each consumer decide the
//! type it needs.

/// A 1-based position in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Span {
    pub line: u32,
    pub col: u32,
}

/// How a scalar was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ScalarStyle {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    Literal,
    Folded,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// An empty value, `~` or `null` written plain.
    Null,
    /// A scalar: its text after YAML unescaping and folding, and its style.
    Scalar(String, ScalarStyle),
    Seq(Vec<Node>),
    /// Keys in document order. Duplicate keys are reported by the parser.
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub span: Span,
}

impl Node {
    pub fn new(kind: NodeKind, span: Span) -> Self {
        Node { kind, span }
    }

    pub fn scalar(text: impl Into<String>, span: Span) -> Self {
        Node { kind: NodeKind::Scalar(text.into(), ScalarStyle::Plain), span }
    }

    /// The text of a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    /// A boolean written as `true`/`false` (any case), quoted or not, as AWSTOE accepts.
    pub fn as_bool(&self) -> Option<bool> {
        match self.as_str()?.to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }

    /// A whole number written in decimal.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_str()?.trim().parse().ok()
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.kind {
            NodeKind::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.kind, NodeKind::Null)
    }

    /// The value under a scalar key of a map.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }

    /// The key node (for its span) and value under a scalar key of a map.
    pub fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        self.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(k, v)| (k, v))
    }

    /// A word for the node's type in error messages: "a string", "a list", "a map", "nothing".
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "nothing",
            NodeKind::Scalar(..) => "a scalar",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a map",
        }
    }

    /// Apply `f` to the text of every scalar in the tree (keys excluded), e.g. to render
    /// expressions. The first error stops the walk.
    pub fn try_map_scalars<E>(&self, f: &mut impl FnMut(&str, Span) -> Result<String, E>) -> Result<Node, E> {
        let kind = match &self.kind {
            NodeKind::Null => NodeKind::Null,
            NodeKind::Scalar(s, style) => NodeKind::Scalar(f(s, self.span)?, *style),
            NodeKind::Seq(items) => {
                NodeKind::Seq(items.iter().map(|n| n.try_map_scalars(f)).collect::<Result<_, _>>()?)
            }
            NodeKind::Map(entries) => NodeKind::Map(
                entries
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.try_map_scalars(f)?)))
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(Node { kind, span: self.span })
    }

    /// The tree as JSON, every scalar as a string (AWSTOE's view of inputs in reports and
    /// in `{{ phase.step.inputs... }}` chaining).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.kind {
            NodeKind::Null => serde_json::Value::Null,
            NodeKind::Scalar(s, _) => serde_json::Value::String(s.clone()),
            NodeKind::Seq(items) => serde_json::Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }
}
