//! IAM-style identity policies: the JSON documents AWS users already write, evaluated the way
//! IAM evaluates identity policies. An explicit `Deny` anywhere wins, then any `Allow`, else
//! the request is implicitly denied. The decision names the statement that made it, for the
//! audit log and for `AccessDeniedException` messages.
//!
//! Written by hand: the Rust IAM crates are either AWS's own SDK types (no evaluation) or
//! large engines (Cedar, scratchstack-aspen) with other document formats or conditions we do
//! not support. What kiln needs is small: actions and resources with `*`/`?` wildcards.
//! Elements kiln does not support (`Condition`, `Principal`, policy variables) are refused with
//! an error rather than ignored, because ignoring a condition would widen an `Allow`.

use serde_json::{Map, Value};

/// Why a policy document was refused, with the JSON path of the problem (`$.Statement[1]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PolicyError {
    /// Where in the document, as a JSON path.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

fn error(path: &str, message: impl Into<String>) -> PolicyError {
    PolicyError { path: path.to_owned(), message: message.into() }
}

/// `Allow` or `Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Grants the matching requests (unless denied elsewhere).
    Allow,
    /// Refuses the matching requests, whatever else allows them.
    Deny,
}

/// A list of patterns with the sense of `Action` (matches if one matches) or `NotAction`
/// (matches if none does); the same for resources.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Patterns {
    Listed(Vec<String>),
    AllBut(Vec<String>),
}

/// One statement of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// `Sid`, if given.
    pub sid: Option<String>,
    /// The statement's position in the policy (0-based).
    pub index: usize,
    /// Allow or Deny.
    pub effect: Effect,
    actions: Patterns,
    resources: Patterns,
}

/// A parsed policy document with the name it is stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The policy's name (for decisions and messages).
    pub name: String,
    /// The statements in document order.
    pub statements: Vec<Statement>,
}

/// The statement that decided a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidingStatement {
    /// The name of the policy holding it.
    pub policy: String,
    /// Its position in that policy.
    pub index: usize,
    /// Its `Sid`, if any.
    pub sid: Option<String>,
}

impl std::fmt::Display for DecidingStatement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sid {
            Some(sid) => write!(f, "policy {} statement {} ({sid})", self.policy, self.index),
            None => write!(f, "policy {} statement {}", self.policy, self.index),
        }
    }
}

/// The outcome of evaluating a request against a principal's policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A statement allows the request and none denies it.
    Allowed(DecidingStatement),
    /// A statement denies the request.
    ExplicitlyDenied(DecidingStatement),
    /// No statement allows the request.
    ImplicitlyDenied,
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed(_))
    }

    /// The message of the `AccessDeniedException`, worded as AWS words it.
    pub fn denial_message(&self, principal: &str, action: &str, resource: &str) -> String {
        let why = match self {
            Decision::Allowed(_) => return String::new(),
            Decision::ExplicitlyDenied(statement) => {
                format!("with an explicit deny in an identity-based policy ({statement})")
            }
            Decision::ImplicitlyDenied => {
                format!("because no identity-based policy allows the {action} action")
            }
        };
        format!("User: {principal} is not authorized to perform: {action} on resource: {resource} {why}")
    }
}

impl Policy {
    /// Parses a policy document.
    pub fn parse(name: impl Into<String>, text: &str) -> Result<Policy, PolicyError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| error("$", format!("not JSON: {e} (line {}, column {})", e.line(), e.column())))?;
        Policy::from_value(name, &value)
    }

    /// Reads a policy from parsed JSON.
    pub fn from_value(name: impl Into<String>, value: &Value) -> Result<Policy, PolicyError> {
        let object = value.as_object().ok_or_else(|| error("$", "a policy is a JSON object"))?;
        check_keys(object, "$", &["Version", "Id", "Statement"])?;
        match object.get("Version") {
            None => {}
            Some(Value::String(v)) if v == "2012-10-17" || v == "2008-10-17" => {}
            Some(other) => {
                return Err(error(
                    "$.Version",
                    format!("must be \"2012-10-17\" (or \"2008-10-17\"), not {other}"),
                ));
            }
        }
        if let Some(id) = object.get("Id")
            && !id.is_string()
        {
            return Err(error("$.Id", "must be a string"));
        }
        let statements = match object.get("Statement") {
            None => return Err(error("$", "the Statement element is required")),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| parse_statement(item, i, &format!("$.Statement[{i}]")))
                .collect::<Result<Vec<_>, _>>()?,
            Some(item @ Value::Object(_)) => vec![parse_statement(item, 0, "$.Statement")?],
            Some(_) => return Err(error("$.Statement", "must be an object or an array of objects")),
        };
        if statements.is_empty() {
            return Err(error("$.Statement", "must hold at least one statement"));
        }
        Ok(Policy { name: name.into(), statements })
    }
}

fn check_keys(object: &Map<String, Value>, path: &str, known: &[&str]) -> Result<(), PolicyError> {
    for key in object.keys() {
        if known.contains(&key.as_str()) {
            continue;
        }
        let message = match key.as_str() {
            "Condition" => "Condition is not supported by kiln; a policy with conditions would be \
                            evaluated wrongly, so it is refused"
                .to_owned(),
            "Principal" | "NotPrincipal" => format!(
                "{key} belongs in resource policies; an identity policy applies to the principal \
                 it is attached to"
            ),
            _ => match known.iter().find(|k| k.eq_ignore_ascii_case(key)) {
                Some(k) => format!("unknown element {key:?}; element names are case-sensitive: {k:?}"),
                None => format!("unknown element {key:?} (known: {})", known.join(", ")),
            },
        };
        return Err(error(&format!("{path}.{key}"), message));
    }
    Ok(())
}

fn parse_statement(value: &Value, index: usize, path: &str) -> Result<Statement, PolicyError> {
    let object = value.as_object().ok_or_else(|| error(path, "a statement is a JSON object"))?;
    check_keys(object, path, &["Sid", "Effect", "Action", "NotAction", "Resource", "NotResource"])?;
    let sid = match object.get("Sid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(error(&format!("{path}.Sid"), "must be a string")),
    };
    let effect = match object.get("Effect") {
        Some(Value::String(s)) if s == "Allow" => Effect::Allow,
        Some(Value::String(s)) if s == "Deny" => Effect::Deny,
        Some(other) => {
            return Err(error(
                &format!("{path}.Effect"),
                format!("must be \"Allow\" or \"Deny\" (case-sensitive), not {other}"),
            ));
        }
        None => return Err(error(path, "the Effect element is required")),
    };
    let actions = either(object, path, "Action", "NotAction", check_action)?;
    let resources = either(object, path, "Resource", "NotResource", check_resource)?;
    Ok(Statement { sid, index, effect, actions, resources })
}

/// Reads exactly one of `positive`/`negative` as a string or an array of strings.
fn either(
    object: &Map<String, Value>,
    path: &str,
    positive: &str,
    negative: &str,
    check: fn(&str) -> Result<(), String>,
) -> Result<Patterns, PolicyError> {
    let (key, value, listed) = match (object.get(positive), object.get(negative)) {
        (Some(_), Some(_)) => {
            return Err(error(path, format!("{positive} and {negative} cannot both be given")));
        }
        (None, None) => {
            return Err(error(path, format!("one of {positive} or {negative} is required")));
        }
        (Some(v), None) => (positive, v, true),
        (None, Some(v)) => (negative, v, false),
    };
    let key_path = format!("{path}.{key}");
    let items: Vec<(String, &Value)> = match value {
        Value::String(_) => vec![(key_path.clone(), value)],
        Value::Array(items) if !items.is_empty() => {
            items.iter().enumerate().map(|(i, v)| (format!("{key_path}[{i}]"), v)).collect()
        }
        Value::Array(_) => return Err(error(&key_path, "must not be an empty list")),
        _ => return Err(error(&key_path, "must be a string or an array of strings")),
    };
    let mut patterns = Vec::with_capacity(items.len());
    for (item_path, item) in items {
        let Value::String(pattern) = item else {
            return Err(error(&item_path, "must be a string"));
        };
        if pattern.contains("${") {
            return Err(error(&item_path, "policy variables (${...}) are not supported by kiln"));
        }
        check(pattern).map_err(|m| error(&item_path, m))?;
        patterns.push(pattern.clone());
    }
    Ok(if listed { Patterns::Listed(patterns) } else { Patterns::AllBut(patterns) })
}

fn check_action(pattern: &str) -> Result<(), String> {
    if pattern == "*" {
        return Ok(());
    }
    let Some((service, action)) = pattern.split_once(':') else {
        return Err(format!("action {pattern:?} must be \"*\" or \"service:Action\""));
    };
    let valid_service = !service.is_empty()
        && service.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*' || b == b'?');
    let valid_action =
        !action.is_empty() && action.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'?');
    if !valid_service || !valid_action {
        return Err(format!(
            "action {pattern:?} must be \"*\" or \"service:Action\" (letters, digits, * and ?)"
        ));
    }
    Ok(())
}

fn check_resource(pattern: &str) -> Result<(), String> {
    if pattern == "*" {
        return Ok(());
    }
    if !pattern.starts_with("arn:") || pattern.splitn(6, ':').count() < 6 {
        return Err(format!(
            "resource {pattern:?} must be \"*\" or an ARN (arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE)"
        ));
    }
    Ok(())
}

/// Wildcard matching: `*` any run of characters, `?` exactly one. Greedy with one backtrack
/// point, so time is linear in practice and quadratic at worst, never exponential.
fn glob(pattern: &str, text: &str, case_insensitive: bool) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let eq = |a: char, b: char| {
        if case_insensitive { a.to_lowercase().eq(b.to_lowercase()) } else { a == b }
    };
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && eq(p[pi], t[ti]))) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Actions match case-insensitively, as in IAM.
fn action_matches(pattern: &str, action: &str) -> bool {
    glob(pattern, action, true)
}

/// ARNs match segment by segment (a wildcard does not cross the first five colons) and
/// case-sensitively; `*` alone matches every resource.
fn resource_matches(pattern: &str, resource: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let ps: Vec<&str> = pattern.splitn(6, ':').collect();
    let rs: Vec<&str> = resource.splitn(6, ':').collect();
    ps.len() == 6 && rs.len() == 6 && ps.iter().zip(&rs).all(|(p, r)| glob(p, r, false))
}

impl Patterns {
    fn matches(&self, value: &str, matches: fn(&str, &str) -> bool) -> bool {
        match self {
            Patterns::Listed(ps) => ps.iter().any(|p| matches(p, value)),
            Patterns::AllBut(ps) => !ps.iter().any(|p| matches(p, value)),
        }
    }
}

impl Statement {
    /// Whether this statement applies to `action` on `resource`.
    pub fn applies(&self, action: &str, resource: &str) -> bool {
        self.actions.matches(action, action_matches) && self.resources.matches(resource, resource_matches)
    }
}

/// Evaluates `action` (`imagebuilder:GetImage`) on `resource` (an ARN, or `*` for operations
/// on no particular resource) against every policy of a principal.
pub fn evaluate(policies: &[Policy], action: &str, resource: &str) -> Decision {
    let mut allowed = None;
    for policy in policies {
        for statement in &policy.statements {
            if !statement.applies(action, resource) {
                continue;
            }
            let deciding = || DecidingStatement {
                policy: policy.name.clone(),
                index: statement.index,
                sid: statement.sid.clone(),
            };
            match statement.effect {
                Effect::Deny => return Decision::ExplicitlyDenied(deciding()),
                Effect::Allow if allowed.is_none() => allowed = Some(deciding()),
                Effect::Allow => {}
            }
        }
    }
    allowed.map_or(Decision::ImplicitlyDenied, Decision::Allowed)
}

#[cfg(test)]
mod tests;
