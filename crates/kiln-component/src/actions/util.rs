//! Helpers shared by the action modules: input shapes for `check`, typed access to rendered
//! inputs for `run`, target paths, wildcards, accounts and host-error wording.

use kiln_host::{FileKind, Host, HostError, HostErrorKind};

use super::{ActionContext, ActionFailure};
use crate::diag::{Diagnostic, suggest};
use crate::node::{Node, NodeKind, Span};

// ---------------------------------------------------------------------------------------------
// Input shapes (check)
// ---------------------------------------------------------------------------------------------

/// The type an input must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    /// A scalar (any text).
    Str,
    /// `true` or `false`, any case, quoted or not.
    Bool,
    /// A whole number >= 0 written in decimal.
    Int,
    /// Octal permission bits as text: `755`, `0755`, `4755`.
    Perm,
    /// A list of scalars.
    StrList,
    /// One of the text encodings AWSTOE accepts.
    Encoding,
    /// Anything; the module checks it itself.
    Any,
}

/// One input a module takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
}

pub(crate) const fn req(name: &'static str, ty: Ty) -> Field {
    Field { name, ty, required: true }
}

pub(crate) const fn opt(name: &'static str, ty: Ty) -> Field {
    Field { name, ty, required: false }
}

/// True when a scalar still holds a `{{ }}` expression, so its type is only known after
/// rendering.
pub(crate) fn has_expr(text: &str) -> bool {
    text.contains("{{")
}

/// Collects diagnostics for one step's inputs.
pub(crate) struct Checker<'a> {
    pub file: &'a str,
    pub module: &'static str,
    pub diags: &'a mut Vec<Diagnostic>,
}

impl Checker<'_> {
    pub fn err(&mut self, span: Span, message: impl Into<String>, hint: Option<String>) {
        let mut d = Diagnostic::new(self.file, span, message);
        d.hint = hint;
        self.diags.push(d);
    }

    fn names(fields: &[Field]) -> String {
        fields.iter().map(|f| format!("`{}`", f.name)).collect::<Vec<_>>().join(", ")
    }

    /// Inputs that must be a list of maps (`- path: ...`), each checked against `fields`.
    /// Returns the item maps so the module can add its own checks.
    pub fn list_of_items<'n>(
        &mut self,
        step_span: Span,
        inputs: Option<&'n Node>,
        fields: &[Field],
    ) -> Vec<&'n Node> {
        let module = self.module;
        let Some(inputs) = inputs.filter(|n| !n.is_null()) else {
            self.err(
                step_span,
                format!("{module} needs `inputs`: a list of items"),
                Some(format!("write `inputs:` followed by `- {}: ...`", fields[0].name)),
            );
            return Vec::new();
        };
        match &inputs.kind {
            NodeKind::Seq(items) => {
                if items.is_empty() {
                    self.err(inputs.span, format!("{module} `inputs` is an empty list"), None);
                }
                let mut out = Vec::new();
                for item in items {
                    match &item.kind {
                        NodeKind::Map(_) => {
                            self.fields(item, fields);
                            out.push(item);
                        }
                        NodeKind::Scalar(s, _) if has_expr(s) => {}
                        _ => self.err(
                            item.span,
                            format!(
                                "each item of {module} `inputs` must be a map, found {}",
                                item.type_name()
                            ),
                            Some(format!("takes {}", Self::names(fields))),
                        ),
                    }
                }
                out
            }
            NodeKind::Map(_) => {
                self.err(
                    inputs.span,
                    format!("{module} `inputs` must be a list of items, found a map"),
                    Some(format!("put a dash before the first key: `- {}: ...`", fields[0].name)),
                );
                Vec::new()
            }
            NodeKind::Scalar(s, _) if has_expr(s) => Vec::new(),
            _ => {
                self.err(
                    inputs.span,
                    format!("{module} `inputs` must be a list of items, found {}", inputs.type_name()),
                    None,
                );
                Vec::new()
            }
        }
    }

    /// Inputs that must be one map checked against `fields`. `needed`: whether `inputs` may
    /// be left out.
    pub fn map_inputs<'n>(
        &mut self,
        step_span: Span,
        inputs: Option<&'n Node>,
        fields: &[Field],
        needed: bool,
    ) -> Option<&'n Node> {
        let module = self.module;
        let Some(inputs) = inputs.filter(|n| !n.is_null()) else {
            if needed {
                self.err(
                    step_span,
                    format!("{module} needs `inputs`"),
                    Some(format!("takes {}", Self::names(fields))),
                );
            }
            return None;
        };
        match &inputs.kind {
            NodeKind::Map(_) => {
                self.fields(inputs, fields);
                Some(inputs)
            }
            NodeKind::Seq(_) => {
                self.err(
                    inputs.span,
                    format!("{module} `inputs` must be a map, found a list"),
                    Some("remove the dash before the first key".to_string()),
                );
                None
            }
            NodeKind::Scalar(s, _) if has_expr(s) => None,
            _ => {
                self.err(
                    inputs.span,
                    format!("{module} `inputs` must be a map, found {}", inputs.type_name()),
                    Some(format!("takes {}", Self::names(fields))),
                );
                None
            }
        }
    }

    /// Unknown keys (with a suggestion), missing required keys, and value types of one map.
    pub fn fields(&mut self, map: &Node, fields: &[Field]) {
        let module = self.module;
        let Some(entries) = map.as_map() else { return };
        for (key, value) in entries {
            let Some(name) = key.as_str() else {
                self.err(key.span, format!("{module} input names must be text"), None);
                continue;
            };
            match fields.iter().find(|f| f.name == name) {
                Some(field) => self.value(field, value),
                None => {
                    let hint = match suggest(name, fields.iter().map(|f| f.name)) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("{module} takes {}", Self::names(fields)),
                    };
                    self.err(key.span, format!("unknown input `{name}` for {module}"), Some(hint));
                }
            }
        }
        for field in fields.iter().filter(|f| f.required) {
            match map.entry(field.name) {
                None => self.err(
                    map.span,
                    format!("{module} needs the input `{}`", field.name),
                    Some(format!("add `{}: ...`", field.name)),
                ),
                Some((k, v)) if v.is_null() => {
                    self.err(k.span, format!("{module} input `{}` needs a value", field.name), None)
                }
                _ => {}
            }
        }
    }

    /// The type check of one value.
    pub fn value(&mut self, field: &Field, value: &Node) {
        let module = self.module;
        let name = field.name;
        if value.is_null() || field.ty == Ty::Any {
            return;
        }
        if field.ty == Ty::StrList {
            match &value.kind {
                NodeKind::Seq(items) => {
                    for item in items {
                        if item.as_str().is_none() && !item.is_null() {
                            self.err(
                                item.span,
                                format!(
                                    "each item of {module} `{name}` must be text, found {}",
                                    item.type_name()
                                ),
                                None,
                            );
                        }
                    }
                }
                NodeKind::Scalar(s, _) if has_expr(s) => {}
                _ => self.err(
                    value.span,
                    format!("{module} input `{name}` must be a list, found {}", value.type_name()),
                    Some(format!("write each entry on its own line as `- ...` under `{name}:`")),
                ),
            }
            return;
        }
        let Some(text) = value.as_str() else {
            self.err(
                value.span,
                format!("{module} input `{name}` must be a single value, found {}", value.type_name()),
                None,
            );
            return;
        };
        if has_expr(text) {
            return;
        }
        match field.ty {
            Ty::Bool if value.as_bool().is_none() => self.err(
                value.span,
                format!("{module} input `{name}` must be true or false, found `{text}`"),
                None,
            ),
            Ty::Int if text.trim().parse::<u64>().is_err() => self.err(
                value.span,
                format!("{module} input `{name}` must be a whole number, found `{text}`"),
                None,
            ),
            Ty::Perm if parse_permissions(text).is_none() => self.err(
                value.span,
                format!("{module} input `{name}` must be octal permission bits, found `{text}`"),
                Some("write three or four octal digits, such as 0755, 755 or 0644".to_string()),
            ),
            Ty::Encoding if super::encoding::TextEncoding::parse(text).is_none() => {
                let hint = match suggest(text, super::encoding::ENCODING_NAMES.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("use one of {}", super::encoding::ENCODING_NAMES.join(", ")),
                };
                self.err(
                    value.span,
                    format!("{module} input `{name}`: unknown encoding `{text}`"),
                    Some(hint),
                )
            }
            _ => {}
        }
    }
}

/// Octal permission bits written as text (`755`, `0755`, `4755`), as AWSTOE takes them.
pub(crate) fn parse_permissions(text: &str) -> Option<u32> {
    let t = text.trim();
    if !(3..=4).contains(&t.len()) || !t.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(t, 8).ok()
}

// ---------------------------------------------------------------------------------------------
// Rendered inputs (run)
// ---------------------------------------------------------------------------------------------

/// One map of rendered inputs (a list item, or the whole `inputs` of a map-shaped module).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item<'a> {
    pub node: &'a Node,
    pub module: &'static str,
    /// 1-based position in the inputs list, when there is a list.
    pub index: Option<usize>,
}

/// The items of list-shaped inputs. A single map is taken as a one-item list.
pub(crate) fn items<'a>(
    module: &'static str,
    inputs: Option<&'a Node>,
) -> Result<Vec<Item<'a>>, ActionFailure> {
    let Some(inputs) = inputs.filter(|n| !n.is_null()) else {
        return Err(ActionFailure::msg(format!(
            "{module}: the step has no inputs; it needs a list of items"
        )));
    };
    match &inputs.kind {
        NodeKind::Seq(list) => list
            .iter()
            .enumerate()
            .map(|(i, node)| {
                if node.as_map().is_some() {
                    Ok(Item { node, module, index: Some(i + 1) })
                } else {
                    Err(ActionFailure::msg(format!(
                        "{module}: input item {} must be a map, found {}",
                        i + 1,
                        node.type_name()
                    )))
                }
            })
            .collect(),
        NodeKind::Map(_) => Ok(vec![Item { node: inputs, module, index: None }]),
        _ => Err(ActionFailure::msg(format!(
            "{module}: inputs must be a list of items, found {}",
            inputs.type_name()
        ))),
    }
}

/// The map of map-shaped inputs; an absent `inputs` gives an empty map.
pub(crate) fn map_item<'a>(
    module: &'static str,
    inputs: Option<&'a Node>,
) -> Result<Option<Item<'a>>, ActionFailure> {
    match inputs.filter(|n| !n.is_null()) {
        None => Ok(None),
        Some(node) if node.as_map().is_some() => Ok(Some(Item { node, module, index: None })),
        Some(node) => {
            Err(ActionFailure::msg(format!("{module}: inputs must be a map, found {}", node.type_name())))
        }
    }
}

impl<'a> Item<'a> {
    /// "CopyFile input 2" or "CopyFile", for messages.
    pub fn who(&self) -> String {
        match self.index {
            Some(i) => format!("{} (input {i})", self.module),
            None => self.module.to_string(),
        }
    }

    pub fn fail(&self, message: impl std::fmt::Display) -> ActionFailure {
        ActionFailure::msg(format!("{}: {message}", self.who()))
    }

    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.node.get(key).filter(|n| !n.is_null())
    }

    pub fn str_opt(&self, key: &str) -> Result<Option<&'a str>, ActionFailure> {
        match self.get(key) {
            None => Ok(None),
            Some(n) => n
                .as_str()
                .map(Some)
                .ok_or_else(|| self.fail(format!("`{key}` must be a single value, found {}", n.type_name()))),
        }
    }

    pub fn str_req(&self, key: &str) -> Result<&'a str, ActionFailure> {
        match self.str_opt(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            Some(_) => Err(self.fail(format!("`{key}` is empty"))),
            None => Err(self.fail(format!("the input `{key}` is missing"))),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ActionFailure> {
        match self.str_opt(key)? {
            None => Ok(default),
            Some(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                "" => Ok(default),
                _ => Err(self.fail(format!("`{key}` must be true or false, found `{s}`"))),
            },
        }
    }

    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64, ActionFailure> {
        match self.str_opt(key)? {
            None => Ok(default),
            Some(s) => s
                .trim()
                .parse()
                .map_err(|_| self.fail(format!("`{key}` must be a whole number, found `{s}`"))),
        }
    }

    pub fn perm_opt(&self, key: &str) -> Result<Option<u32>, ActionFailure> {
        match self.str_opt(key)? {
            None => Ok(None),
            Some(s) => parse_permissions(s).map(Some).ok_or_else(|| {
                self.fail(format!(
                    "`{key}` must be octal permission bits such as 0755, 755 or 0644, found `{s}`"
                ))
            }),
        }
    }

    pub fn list_opt(&self, key: &str) -> Result<Option<Vec<String>>, ActionFailure> {
        match self.get(key) {
            None => Ok(None),
            Some(n) => {
                match n.as_seq() {
                    Some(items) => items
                        .iter()
                        .map(|i| match &i.kind {
                            NodeKind::Scalar(s, _) => Ok(s.clone()),
                            NodeKind::Null => Ok(String::new()),
                            _ => Err(self
                                .fail(format!("each item of `{key}` must be text, found {}", i.type_name()))),
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(Some),
                    None => Err(self.fail(format!("`{key}` must be a list, found {}", n.type_name()))),
                }
            }
        }
    }

    pub fn encoding(&self) -> Result<super::encoding::TextEncoding, ActionFailure> {
        match self.str_opt("encoding")? {
            None => Ok(super::encoding::TextEncoding::Utf8),
            Some(s) => super::encoding::TextEncoding::parse(s).ok_or_else(|| {
                self.fail(format!(
                    "unknown encoding `{s}`; use one of {}",
                    super::encoding::ENCODING_NAMES.join(", ")
                ))
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Target paths
// ---------------------------------------------------------------------------------------------

/// An absolute, lexically normalised path inside the target: relative paths are taken from
/// the step's working directory; `.`, `..` and repeated slashes are folded (`..` never climbs
/// above `/`). A trailing slash is dropped; see [`names_folder`].
pub(crate) fn resolve(ctx: &ActionContext<'_>, path: &str) -> String {
    let joined =
        if path.starts_with('/') { path.to_string() } else { format!("{}/{}", ctx.working_dir, path) };
    normalize(&joined)
}

pub(crate) fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// True when the path as written ends with a separator, which AWSTOE reads as "a folder".
pub(crate) fn names_folder(path: &str) -> bool {
    path.ends_with('/') || path.ends_with('\\')
}

pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') { format!("{dir}{name}") } else { format!("{dir}/{name}") }
}

/// The parent of a normalised absolute path (`/` has none).
pub(crate) fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

pub(crate) fn file_name(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// Splits a path whose last component holds a `*` wildcard into (folder, pattern).
pub(crate) fn split_wildcard(path: &str) -> Option<(&str, &str)> {
    let (dir, last) = match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    };
    if last.contains('*') { Some((dir, last)) } else { None }
}

/// Shell-style match of a file name against a pattern with `*` (any run) and `?` (one char).
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Where a symlink at `path` finally points (inside the target), following up to 40 links.
pub(crate) fn follow_links(host: &dyn Host, path: &str) -> Result<String, HostError> {
    let mut current = path.to_string();
    for _ in 0..40 {
        let meta = host.metadata(&current)?;
        if meta.kind != FileKind::Symlink {
            return Ok(current);
        }
        let target = host.read_link(&current)?;
        current = if target.starts_with('/') {
            normalize(&target)
        } else {
            normalize(&join(parent(&current).unwrap_or("/"), &target))
        };
    }
    Err(HostError::new(HostErrorKind::Other, format!("{path}: too many levels of symbolic links")))
}

/// Every entry under `dir` (not `dir` itself), parents before children; symlinks are listed,
/// never followed.
pub(crate) fn walk(host: &dyn Host, dir: &str, out: &mut Vec<(String, FileKind)>) -> Result<(), HostError> {
    let mut entries = host.list_dir(dir)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        let p = join(dir, &e.name);
        out.push((p.clone(), e.kind));
        if e.kind == FileKind::Dir {
            walk(host, &p, out)?;
        }
    }
    Ok(())
}

/// The kind of what is at `path`, or `None` when nothing is.
pub(crate) fn kind_of(host: &dyn Host, path: &str) -> Result<Option<FileKind>, HostError> {
    match host.metadata(path) {
        Ok(m) => Ok(Some(m.kind)),
        Err(e) if e.kind == HostErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------------

/// Resolves `owner` (`user`, `user:group`, or numeric ids) and an optional separate `group`
/// through the target's own account databases. When no group is given, the user's primary
/// group from the target's /etc/passwd is used, as AWSTOE does ("the group that the user
/// belongs to"); if that cannot be found the group is left alone.
pub(crate) fn resolve_owner(
    host: &dyn Host,
    who: &Item<'_>,
    owner: Option<&str>,
    group: Option<&str>,
) -> Result<(Option<u32>, Option<u32>), ActionFailure> {
    let (user, group_in_owner) = match owner {
        Some(o) => match o.split_once(':') {
            Some((u, g)) => (Some(u), Some(g).filter(|g| !g.is_empty())),
            None => (Some(o), None),
        },
        None => (None, None),
    };
    if group_in_owner.is_some() && group.is_some() {
        return Err(who.fail("the group is given twice: in `owner` (user:group) and in `group`; keep one"));
    }
    let group = group.or(group_in_owner);
    let uid = match user.filter(|u| !u.is_empty()) {
        Some(u) => Some(host.lookup_user(u).map_err(|e| {
            who.fail(format!("unknown user `{u}` in the image: {e} (create the user first, e.g. with useradd in an ExecuteBash step)"))
        })?),
        None => None,
    };
    let gid = match group {
        Some(g) => Some(host.lookup_group(g).map_err(|e| {
            who.fail(format!(
                "unknown group `{g}` in the image: {e} (create the group first, e.g. with groupadd)"
            ))
        })?),
        None => match (user, uid) {
            (Some(u), Some(uid)) => primary_gid(host, u, uid),
            _ => None,
        },
    };
    Ok((uid, gid))
}

/// The primary group id of a user, from the target's /etc/passwd.
pub(crate) fn primary_gid(host: &dyn Host, name: &str, uid: u32) -> Option<u32> {
    let passwd = host.read_file("/etc/passwd").ok()?;
    let text = String::from_utf8_lossy(&passwd);
    let by_name = text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| f[3].parse().ok()).flatten()
    });
    by_name.or_else(|| {
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[3].parse().ok()).flatten()
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Host errors
// ---------------------------------------------------------------------------------------------

/// A host error as a module failure: what was being done, to which path, why, and a hint.
pub(crate) fn host_fail(who: &str, doing: &str, path: &str, e: &HostError) -> ActionFailure {
    let hint = match e.kind {
        HostErrorKind::NotFound => " (check the path; a folder on the way may be missing)",
        HostErrorKind::PermissionDenied => " (the target refused the operation)",
        HostErrorKind::InvalidPath => " (paths must stay inside the image)",
        HostErrorKind::DirectoryNotEmpty => " (the folder is not empty)",
        _ => "",
    };
    ActionFailure::msg(format!("{who}: cannot {doing} {path}: {e}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_are_octal_text() {
        assert_eq!(parse_permissions("0755"), Some(0o755));
        assert_eq!(parse_permissions("755"), Some(0o755));
        assert_eq!(parse_permissions("4755"), Some(0o4755));
        assert_eq!(parse_permissions("0777"), Some(0o777));
        for bad in ["75", "0o755", "rwx", "999", "07555", "", "-755"] {
            assert_eq!(parse_permissions(bad), None, "{bad}");
        }
    }

    #[test]
    fn paths_normalise_inside_root() {
        assert_eq!(normalize("/a/./b//c/"), "/a/b/c");
        assert_eq!(normalize("/a/../../etc"), "/etc");
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(file_name("/a/b/"), "b");
        assert_eq!(split_wildcard("/x/y/*.log"), Some(("/x/y", "*.log")));
        assert_eq!(split_wildcard("/x/y*/z"), None);
    }

    #[test]
    fn globs() {
        assert!(glob_match("*log", "syslog"));
        assert!(glob_match("Sample*", "Sample.txt"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("*log", "log.txt"));
        assert!(glob_match("*.t*t", "a.txt"));
        assert!(!glob_match("a", "ab"));
    }
}
