//! AWSTOE's comparison and logical operators, for the Assert module.
//!
//! NOTE for the lead: the `if` construct uses the same operators (condition.rs, written
//! separately); this is a self-contained implementation so Assert works now. The two should
//! be unified later; everything here is `pub(crate)` and takes only a node and a host.
//!
//! Semantics, from AWSTOE's "comparison operators" documentation:
//! - a two-value operator compares the step's `value` with the operator's own operand:
//!   `numberGreaterThan: 2.0` + `value: X` is true when X > 2.0;
//! - string comparisons ignore case and do not trim; `patternMatches` is a regular
//!   expression search (RE2 syntax, which the `regex` crate follows) and is case-sensitive;
//! - number comparisons convert both sides; when either is not a number the result is false;
//! - `stringIsEmpty`/`stringIsWhitespace`, `fileExists`/`folderExists`/`binaryExists` test
//!   their own operand; `fileMD5Equals`/`fileSHA1Equals`/`fileSHA256Equals`/`fileSHA512Equals`
//!   compare the hash of the file at `path` with the operand;
//! - `and`/`or` take a list of conditions and stop at the first that decides; `not` takes one.

use kiln_host::{FileKind, Host};

use super::net::Hasher;
use super::util::{Checker, has_expr, normalize};
use crate::diag::suggest;
use crate::node::{Node, NodeKind};

pub(crate) const STRING_BINARY: &[&str] = &[
    "stringEquals",
    "stringLessThan",
    "stringLessThanEquals",
    "stringGreaterThan",
    "stringGreaterThanEquals",
    "patternMatches",
];
pub(crate) const NUMBER_BINARY: &[&str] = &[
    "numberEquals",
    "numberLessThan",
    "numberLessThanEquals",
    "numberGreaterThan",
    "numberGreaterThanEquals",
];
pub(crate) const UNARY: &[&str] =
    &["stringIsEmpty", "stringIsWhitespace", "binaryExists", "fileExists", "folderExists"];
pub(crate) const FILE_HASH: &[&str] =
    &["fileMD5Equals", "fileSHA1Equals", "fileSHA256Equals", "fileSHA512Equals"];
pub(crate) const LOGICAL: &[&str] = &["and", "or", "not"];

fn all_operators() -> impl Iterator<Item = &'static str> {
    STRING_BINARY.iter().chain(NUMBER_BINARY).chain(UNARY).chain(FILE_HASH).chain(LOGICAL).copied()
}

/// The operator key of a condition map, if it has exactly one known operator.
fn operator_of(node: &Node) -> Option<&str> {
    let mut ops =
        node.as_map()?.iter().filter_map(|(k, _)| k.as_str()).filter(|k| all_operators().any(|o| o == *k));
    let first = ops.next()?;
    ops.next().is_none().then_some(first)
}

/// Checks the shape of a condition (unrendered).
pub(crate) fn check_condition(c: &mut Checker<'_>, node: &Node) {
    let module = c.module;
    let Some(entries) = node.as_map() else {
        if !node.as_str().is_some_and(has_expr) {
            c.err(
                node.span,
                format!("{module}: a condition must be a map, found {}", node.type_name()),
                None,
            );
        }
        return;
    };
    let ops: Vec<&(Node, Node)> =
        entries.iter().filter(|(k, _)| k.as_str().is_some_and(|k| all_operators().any(|o| o == k))).collect();
    if ops.is_empty() {
        c.err(
            node.span,
            format!("{module}: the condition has no comparison or logical operator"),
            Some("use e.g. `stringEquals: TEXT` with `value: ...`, or `and:`/`or:`/`not:`".into()),
        );
    } else if ops.len() > 1 {
        c.err(
            ops[1].0.span,
            format!("{module}: one condition may hold only one operator"),
            Some("combine several with `and:` or `or:`".into()),
        );
    }
    let op = ops.first().and_then(|(k, _)| k.as_str()).unwrap_or_default();
    let needs_value = STRING_BINARY.contains(&op) || NUMBER_BINARY.contains(&op);
    let needs_path = FILE_HASH.contains(&op);
    for (k, v) in entries {
        let Some(key) = k.as_str() else { continue };
        if all_operators().any(|o| o == key) {
            continue;
        }
        let allowed = (key == "value" && needs_value) || (key == "path" && needs_path);
        if !allowed {
            let hint = match suggest(key, all_operators().chain(["value", "path"])) {
                Some(s) => format!("did you mean `{s}`?"),
                None if key == "value" => format!("`{op}` takes no `value`"),
                None => "see AWSTOE's comparison operators".to_string(),
            };
            c.err(k.span, format!("{module}: unknown key `{key}` in a condition"), Some(hint));
        }
        let _ = v;
    }
    let Some((key, operand)) = ops.first().map(|(k, v)| (k, v)) else { return };
    if needs_value && node.get("value").is_none() {
        c.err(
            key.span,
            format!("{module}: `{op}` needs a `value` to compare with"),
            Some("add `value: ...`".into()),
        );
    }
    if needs_path && node.get("path").is_none() {
        c.err(
            key.span,
            format!("{module}: `{op}` needs the `path` of the file to hash"),
            Some("add `path: ...`".into()),
        );
    }
    match op {
        "and" | "or" => match operand.as_seq() {
            Some(list) if !list.is_empty() => list.iter().for_each(|n| check_condition(c, n)),
            _ => c.err(operand.span, format!("{module}: `{op}` takes a list of conditions"), None),
        },
        "not" => check_condition(c, operand),
        _ => match operand.as_str() {
            None if !operand.is_null() => c.err(
                operand.span,
                format!("{module}: `{op}` takes a single value, found {}", operand.type_name()),
                None,
            ),
            Some(text) if !has_expr(text) => {
                if NUMBER_BINARY.contains(&op) && parse_number(text).is_none() {
                    c.err(operand.span, format!("{module}: `{op}` needs a number, found `{text}`"), None);
                }
                if op == "patternMatches"
                    && let Err(e) = regex::Regex::new(text)
                {
                    c.err(
                        operand.span,
                        format!("{module}: `patternMatches` is not a valid regular expression: {e}"),
                        None,
                    );
                }
            }
            _ => {}
        },
    }
}

fn parse_number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

fn text(node: Option<&Node>) -> String {
    node.and_then(Node::as_str).unwrap_or_default().to_string()
}

/// Evaluates a rendered condition; an error means the condition itself is malformed.
pub(crate) fn evaluate(node: &Node, host: &dyn Host, working_dir: &str) -> Result<bool, String> {
    let op = operator_of(node)
        .ok_or_else(|| "a condition needs exactly one comparison or logical operator".to_string())?;
    let operand = node.get(op).expect("operator present");
    let value = text(node.get("value"));
    let base = text(Some(operand));
    let abs =
        |p: &str| if p.starts_with('/') { normalize(p) } else { normalize(&format!("{working_dir}/{p}")) };
    Ok(match op {
        "and" | "or" => {
            let list = operand.as_seq().ok_or_else(|| format!("`{op}` takes a list of conditions"))?;
            let mut result = op == "and";
            for c in list {
                let r = evaluate(c, host, working_dir)?;
                if op == "and" && !r {
                    result = false;
                    break;
                }
                if op == "or" && r {
                    result = true;
                    break;
                }
            }
            result
        }
        "not" => !evaluate(operand, host, working_dir)?,
        "stringIsEmpty" => base.is_empty(),
        "stringIsWhitespace" => !base.is_empty() && base.chars().all(char::is_whitespace),
        "stringEquals" => value.to_lowercase() == base.to_lowercase(),
        "stringLessThan" => value.to_lowercase() < base.to_lowercase(),
        "stringLessThanEquals" => value.to_lowercase() <= base.to_lowercase(),
        "stringGreaterThan" => value.to_lowercase() > base.to_lowercase(),
        "stringGreaterThanEquals" => value.to_lowercase() >= base.to_lowercase(),
        "patternMatches" => regex::Regex::new(&base)
            .map_err(|e| format!("`patternMatches` is not a valid regular expression: {e}"))?
            .is_match(&value),
        "numberEquals"
        | "numberLessThan"
        | "numberLessThanEquals"
        | "numberGreaterThan"
        | "numberGreaterThanEquals" => match (parse_number(&value), parse_number(&base)) {
            (Some(v), Some(b)) => match op {
                "numberEquals" => v == b,
                "numberLessThan" => v < b,
                "numberLessThanEquals" => v <= b,
                "numberGreaterThan" => v > b,
                _ => v >= b,
            },
            _ => false,
        },
        "fileExists" => host.metadata(&abs(&base)).is_ok_and(|m| m.kind != FileKind::Dir),
        "folderExists" => host.metadata(&abs(&base)).is_ok_and(|m| m.kind == FileKind::Dir),
        "binaryExists" => binary_exists(host, &base, working_dir),
        _ => {
            // File hashes.
            let alg = op.trim_start_matches("file").trim_end_matches("Equals");
            let path = abs(&text(node.get("path")));
            match host.read_file(&path) {
                Ok(data) => Hasher::digest(alg, &data).is_some_and(|h| h.eq_ignore_ascii_case(base.trim())),
                Err(_) => false,
            }
        }
    })
}

/// Whether a program can be found: a path with a slash, or a name in the usual PATH folders
/// of the image.
fn binary_exists(host: &dyn Host, name: &str, working_dir: &str) -> bool {
    let executable = |p: &str| {
        super::util::follow_links(host, p)
            .ok()
            .and_then(|real| host.metadata(&real).ok())
            .is_some_and(|m| m.kind == FileKind::File && m.mode & 0o111 != 0)
    };
    if name.is_empty() {
        return false;
    }
    if name.contains('/') {
        let p =
            if name.starts_with('/') { normalize(name) } else { normalize(&format!("{working_dir}/{name}")) };
        return executable(&p);
    }
    ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| executable(&format!("{d}/{name}")))
}

/// A short description of a condition for failure messages.
pub(crate) fn describe(node: &Node) -> String {
    let Some(op) = operator_of(node) else { return "a malformed condition".into() };
    let operand = node.get(op).expect("operator present");
    match op {
        "and" | "or" => {
            let parts: Vec<String> = operand.as_seq().unwrap_or_default().iter().map(describe).collect();
            format!("{op}({})", parts.join(", "))
        }
        "not" => format!("not({})", describe(operand)),
        _ => {
            let base = match &operand.kind {
                NodeKind::Scalar(s, _) => s.clone(),
                _ => String::new(),
            };
            let mut s = format!("{op} '{base}'");
            if let Some(v) = node.get("value") {
                s.push_str(&format!(" with value '{}'", text(Some(v))));
            }
            if let Some(p) = node.get("path") {
                s.push_str(&format!(" for path '{}'", text(Some(p))));
            }
            s
        }
    }
}
