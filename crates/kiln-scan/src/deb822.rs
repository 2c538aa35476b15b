//! The RFC 822-like control format of dpkg status files and DEP-5 copyright files.
//!
//! Tolerant by design: a broken stanza is reported with its line and skipped, the rest is kept,
//! because one corrupt record must not hide a whole image's packages.

/// One paragraph of fields.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stanza {
    /// 1-based line of the stanza's first field.
    pub line: usize,
    fields: Vec<(String, String)>,
}

impl Stanza {
    /// The value of `name` (case-insensitive, as dpkg), continuation lines joined with `\n`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub(crate) struct ParseError {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub stanzas: Vec<Stanza>,
    pub errors: Vec<ParseError>,
}

pub(crate) fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    let mut cur = Stanza::default();
    // Set when the current stanza had a malformed line: the whole stanza is dropped, since a
    // record with a lost field (say, a lost Status) could be misread.
    let mut broken = false;
    let finish = |cur: &mut Stanza, broken: &mut bool, out: &mut Parsed| {
        if !cur.fields.is_empty() && !*broken {
            out.stanzas.push(std::mem::take(cur));
        }
        *cur = Stanza::default();
        *broken = false;
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            finish(&mut cur, &mut broken, &mut out);
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            match cur.fields.last_mut() {
                Some((_, v)) => {
                    let t = line.trim();
                    v.push('\n');
                    // A lone "." is deb822's way of writing an empty line inside a value.
                    v.push_str(if t == "." { "" } else { t });
                }
                None => {
                    if !broken {
                        out.errors.push(ParseError {
                            line: n,
                            message: "continuation line with no field before it; stanza skipped".into(),
                        });
                    }
                    broken = true;
                }
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
                if cur.fields.is_empty() {
                    cur.line = n;
                }
                cur.fields.push((k.to_string(), v.trim().to_string()));
            }
            _ => {
                if !broken {
                    let shown: String = line.chars().take(60).collect();
                    out.errors.push(ParseError {
                        line: n,
                        message: format!(
                            "malformed line {shown:?}: expected `Field: value` or an indented continuation; \
                             stanza skipped"
                        ),
                    });
                }
                if cur.fields.is_empty() {
                    cur.line = n;
                }
                broken = true;
            }
        }
    }
    finish(&mut cur, &mut broken, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_stanza_is_skipped_with_its_line() {
        let p = parse(
            "Package: a\nVersion: 1\n\nPackage: b\ngarbage here\nVersion: 2\n\nPackage: c\nVersion: 3\n",
        );
        assert_eq!(p.stanzas.len(), 2);
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].line, 5);
        assert_eq!(p.stanzas[1].get("package"), Some("c"));
    }
}
