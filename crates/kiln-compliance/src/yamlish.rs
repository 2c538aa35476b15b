//! Profiles read from YAML with positions (kiln-component's typed reader, shared with
//! kiln-model's resource files), and the scalar helpers profiles use.

use kiln_component::diag::Diagnostic;
use kiln_component::node::Node;
use serde::de::DeserializeOwned;

pub(crate) use kiln_component::typed::{Seg, span_at};

/// Parses `text` (named `file`) into `T`, every error a diagnostic at the offending node, with
/// a near name suggested for a misspelt field or kind.
pub(crate) fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<(T, Node), Vec<Diagnostic>> {
    let root = kiln_component::yaml::parse(file, text)?;
    let value = kiln_component::typed::deserialize(file, &root, None, None)?;
    Ok((value, root))
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
