//! sshd's effective configuration, read as sshd reads it.
//!
//! `/etc/ssh/sshd_config` line by line; `Include` (globs allowed, relative paths under
//! /etc/ssh) reads the named files in place, sorted; for each keyword the first value found
//! wins (sshd's rule, which is why Debian's `Include /etc/ssh/sshd_config.d/*.conf` sits at the
//! top). Lines inside a `Match` block apply only to some connections, so they set nothing
//! here; a `Match` block ends at the next `Match` or at the end of the file that holds it.
//! Keywords are case-insensitive; `Keyword value` and `Keyword=value` are both accepted.

use std::collections::HashMap;

use super::{Ctx, Outcome, quote};
use crate::profile::SshdCheck;

const MAIN: &str = "/etc/ssh/sshd_config";
/// Includes nested deeper than this are refused (sshd also caps the depth).
const MAX_DEPTH: usize = 16;

/// Where an option's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshdValue {
    pub value: String,
    pub file: String,
    pub line: usize,
    pub text: String,
}

/// The first value of each keyword (lower-cased), outside `Match` blocks.
#[derive(Debug, Clone, Default)]
pub struct SshdConfig {
    pub values: HashMap<String, SshdValue>,
    /// Files read, in order.
    pub files: Vec<String>,
}

impl SshdConfig {
    /// `Ok(None)` when there is no sshd_config.
    pub(crate) fn read(ctx: &Ctx<'_>) -> Result<Option<SshdConfig>, String> {
        let mut cfg = SshdConfig::default();
        match ctx.read_text(MAIN)? {
            None => Ok(None),
            Some(text) => {
                cfg.file(ctx, MAIN, &text, 0)?;
                Ok(Some(cfg))
            }
        }
    }

    pub fn get(&self, option: &str) -> Option<&SshdValue> {
        self.values.get(&option.to_ascii_lowercase())
    }

    fn file(&mut self, ctx: &Ctx<'_>, path: &str, text: &str, depth: usize) -> Result<(), String> {
        self.files.push(path.to_string());
        let mut in_match = false;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = split(line);
            let key = key.to_ascii_lowercase();
            if key == "match" {
                in_match = !value.eq_ignore_ascii_case("all");
                continue;
            }
            if in_match {
                // Conditional lines, and files included inside a Match block, set nothing
                // for every connection.
                continue;
            }
            if key == "include" {
                if depth >= MAX_DEPTH {
                    return Err(format!("{path}:{}: Include nested more than {MAX_DEPTH} deep", i + 1));
                }
                for pattern in value.split_whitespace() {
                    let pattern = unquote(pattern);
                    let abs = if pattern.starts_with('/') {
                        pattern.to_string()
                    } else {
                        format!("/etc/ssh/{pattern}")
                    };
                    for inc in ctx.expand(&abs)? {
                        if let Some(t) = ctx.read_text(&inc)? {
                            self.file(ctx, &inc, &t, depth + 1)?;
                        }
                    }
                }
                continue;
            }
            self.values.entry(key).or_insert_with(|| SshdValue {
                value: unquote(value).to_string(),
                file: path.to_string(),
                line: i + 1,
                text: quote(line),
            });
        }
        Ok(())
    }
}

fn split(line: &str) -> (&str, &str) {
    let end = line.find(|c: char| c.is_whitespace() || c == '=').unwrap_or(line.len());
    let (k, rest) = line.split_at(end);
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
    (k, rest)
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v)
}

/// A list option's effective items: `+x` appends to the default, `-x` removes from it, `^x`
/// puts first; anything else replaces it.
fn effective_list(value: &str, default: Option<&str>) -> Vec<String> {
    let items = |s: &str| {
        s.split(',').map(|x| x.trim().to_ascii_lowercase()).filter(|x| !x.is_empty()).collect::<Vec<_>>()
    };
    let base = default.map(items).unwrap_or_default();
    if let Some(add) = value.strip_prefix('+') {
        let mut v = base;
        v.extend(items(add));
        v
    } else if let Some(del) = value.strip_prefix('-') {
        let del = items(del);
        base.into_iter().filter(|x| !del.iter().any(|d| super::glob_match(d, x))).collect()
    } else if let Some(first) = value.strip_prefix('^') {
        let mut v = items(first);
        v.extend(base);
        v
    } else {
        items(value)
    }
}

pub(super) fn check(ctx: &Ctx<'_>, c: &SshdCheck) -> Outcome {
    if ctx.has_package_db() && ctx.installed("openssh-server").is_none() {
        return Outcome::na("openssh-server is not installed");
    }
    let cfg = match SshdConfig::read(ctx) {
        Err(e) => return Outcome::error(e),
        Ok(None) => return Outcome::na(format!("{MAIN} does not exist")),
        Ok(Some(cfg)) => cfg,
    };
    let (value, whence) = match cfg.get(&c.option) {
        Some(v) => (v.value.clone(), format!("{}:{}: {}", v.file, v.line, v.text)),
        None => match &c.default {
            Some(d) => (d.clone(), format!("{} is set in no file; sshd's default `{d}` applies", c.option)),
            None => {
                return Outcome::fail(format!("{} is set in none of {}", c.option, cfg.files.join(", ")));
            }
        },
    };
    let mut why = Vec::new();
    if !c.one_of.is_empty() && !c.one_of.iter().any(|x| x.eq_ignore_ascii_case(&value)) {
        why.push(format!("must be {}", c.one_of.join(" or ")));
    }
    if c.max.is_some() || c.min.is_some() {
        // Time options may carry a unit (`5m`); sshd reads a bare number as seconds.
        match parse_number(&value) {
            Some(n) => {
                if let Some(max) = c.max
                    && n > max
                {
                    why.push(format!("must be at most {max}"));
                }
                if let Some(min) = c.min
                    && n < min
                {
                    why.push(format!("must be at least {min}"));
                }
            }
            None => why.push("is not a number".into()),
        }
    }
    if !c.none_of.is_empty() {
        let items = effective_list(&value, c.default.as_deref());
        let weak: Vec<&String> =
            items.iter().filter(|x| c.none_of.iter().any(|w| w.eq_ignore_ascii_case(x))).collect();
        if !weak.is_empty() {
            why.push(format!("allows {}", weak.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")));
        }
    }
    if why.is_empty() {
        Outcome::pass(whence)
    } else {
        Outcome::fail(format!("{whence} ({})", why.join("; ")))
    }
}

/// `300`, `5m`, `1h30m` → seconds.
fn parse_number(v: &str) -> Option<i64> {
    let v = v.trim();
    if let Ok(n) = v.parse() {
        return Some(n);
    }
    let mut total = 0i64;
    let mut num = String::new();
    for ch in v.chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let n: i64 = num.parse().ok()?;
        num.clear();
        total += n * match ch.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 604800,
            _ => return None,
        };
    }
    if !num.is_empty() {
        total += num.parse::<i64>().ok()?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::report::Status;

    const ROOT_LOGIN: &str =
        "{ sshd: { option: PermitRootLogin, default: prohibit-password, oneOf: ['no'] } }";

    fn ssh_tree(config: &str) -> tempfile::TempDir {
        tree(&[("var/lib/dpkg/status", &dpkg(&["openssh-server"])), ("etc/ssh/sshd_config", config)])
    }

    #[test]
    fn first_value_wins_and_includes_come_in_place() {
        let root = ssh_tree("Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin yes\n");
        put(root.path(), "etc/ssh/sshd_config.d/50-kiln.conf", "permitrootlogin=no\n");
        put(root.path(), "etc/ssh/sshd_config.d/10-first.conf", "# nothing\n");
        let o = run(root.path(), ROOT_LOGIN);
        assert_eq!(o.status, Status::Pass, "{o:?}");
        assert_eq!(o.evidence, ["/etc/ssh/sshd_config.d/50-kiln.conf:1: permitrootlogin=no"]);
        // An earlier file name in the include wins over a later one.
        put(root.path(), "etc/ssh/sshd_config.d/10-first.conf", "PermitRootLogin yes\n");
        let o = run(root.path(), ROOT_LOGIN);
        assert_eq!(o.status, Status::Fail);
        assert_eq!(o.evidence, ["/etc/ssh/sshd_config.d/10-first.conf:1: PermitRootLogin yes (must be no)"]);
    }

    #[test]
    fn match_blocks_and_defaults() {
        let root = ssh_tree("Match User backup\n  PermitRootLogin no\n");
        let o = run(root.path(), ROOT_LOGIN);
        assert_eq!(o.status, Status::Fail, "a Match block sets nothing globally: {o:?}");
        assert!(o.evidence[0].contains("sshd's default `prohibit-password` applies"), "{o:?}");
        put(root.path(), "etc/ssh/sshd_config", "Match User backup\nX 1\nMatch all\nPermitRootLogin no\n");
        assert_eq!(run(root.path(), ROOT_LOGIN).status, Status::Pass);
        let tries = "{ sshd: { option: MaxAuthTries, default: 6, max: 4 } }";
        assert_eq!(run(root.path(), tries).status, Status::Fail);
        put(root.path(), "etc/ssh/sshd_config", "MaxAuthTries 3\nClientAliveInterval 5m\n");
        assert_eq!(run(root.path(), tries).status, Status::Pass);
        let alive = "{ sshd: { option: ClientAliveInterval, default: 0, min: 1, max: 300 } }";
        assert_eq!(run(root.path(), alive).status, Status::Pass);
    }

    #[test]
    fn weak_algorithms_in_lists() {
        let ciphers = "{ sshd: { option: Ciphers, default: 'chacha20-poly1305@openssh.com,aes256-ctr', noneOf: [3des-cbc, aes128-cbc] } }";
        let root = ssh_tree("# defaults\n");
        assert_eq!(run(root.path(), ciphers).status, Status::Pass);
        put(root.path(), "etc/ssh/sshd_config", "Ciphers +aes128-cbc\n");
        let o = run(root.path(), ciphers);
        assert_eq!(o.status, Status::Fail);
        assert!(o.evidence[0].ends_with("(allows aes128-cbc)"), "{o:?}");
        put(root.path(), "etc/ssh/sshd_config", "Ciphers aes256-gcm@openssh.com,aes256-ctr\n");
        assert_eq!(run(root.path(), ciphers).status, Status::Pass);
    }

    #[test]
    fn not_applicable_without_openssh_server() {
        let root = tree(&[
            ("var/lib/dpkg/status", &dpkg(&["bash"])),
            ("etc/ssh/sshd_config", "PermitRootLogin yes\n"),
        ]);
        let o = run(root.path(), ROOT_LOGIN);
        assert_eq!(o.status, Status::NotApplicable);
        assert_eq!(o.evidence, ["openssh-server is not installed"]);
    }

    #[test]
    fn include_loops_are_an_error_not_a_hang() {
        let root = ssh_tree("Include /etc/ssh/sshd_config\n");
        let o = run(root.path(), ROOT_LOGIN);
        assert_eq!(o.status, Status::Error);
        assert!(o.evidence[0].contains("Include nested more than"), "{o:?}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_number("300"), Some(300));
        assert_eq!(parse_number("5m"), Some(300));
        assert_eq!(parse_number("1h30m"), Some(5400));
        assert_eq!(parse_number("x"), None);
    }
}
