//! Diagnostics: what is wrong in a document, where, and what would be right.

use std::fmt;

use crate::node::Span;

/// One problem found in a document, printed as `FILE:LINE:COLUMN: message`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// The document's path as the user named it.
    pub file: String,
    /// 1-based line and column.
    pub line: u32,
    pub column: u32,
    /// What is wrong.
    pub message: String,
    /// What would be right, when we can tell ("did you mean `ExecuteBash`?").
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(file: &str, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_string(),
            line: span.line,
            column: span.col,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely misspelling.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names_only() {
        let names = ["ExecuteBash", "ExecuteBinary", "CreateFile"];
        assert_eq!(suggest("ExecuteBsh", names), Some("ExecuteBash"));
        assert_eq!(suggest("executebash", names), Some("ExecuteBash"));
        assert_eq!(suggest("Frobnicate", names), None);
    }
}
