//! The report as one self-contained HTML page: a summary (target, profiles, score, counts,
//! gate) and a table of every rule with its status, evidence and, behind a disclosure, its
//! rationale, remediation, references and exception.
//!
//! Every piece of text comes from the image (evidence quotes its files) or from profiles, so
//! everything is escaped on the way out by [`esc`]; the page has no script and loads nothing.

use std::fmt::Write;

use crate::report::{ComplianceReport, RuleResult, Status};

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters a hostile file may hold are shown, not interpreted.
            c if c.is_control() && c != '\n' && c != '\t' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#1d2330}
h1{font-size:1.5rem;margin-bottom:.2rem}.sub{color:#5b6372;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:.6rem;margin:1rem 0}.card{border:1px solid #d9dde5;border-radius:6px;padding:.5rem .9rem;min-width:7rem}
.card b{display:block;font-size:1.4rem}.gate-pass{border-color:#1f8a4c}.gate-fail{border-color:#c62828}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #e4e7ee;padding:.4rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f6fa;position:sticky;top:0}code,pre{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
pre{white-space:pre-wrap;word-break:break-word;margin:0}
.st{display:inline-block;border-radius:4px;padding:0 .45rem;font-weight:600;font-size:12px;color:#fff}
.pass{background:#1f8a4c}.fail{background:#c62828}.notapplicable{background:#8a93a3}.error{background:#b26a00}.exception{background:#5a4fcf}
.sev-critical,.sev-high{color:#c62828;font-weight:600}.sev-medium{color:#b26a00}details summary{cursor:pointer;color:#3452a4}
ul{margin:.2rem 0;padding-left:1.1rem}
";

/// The page for `report`.
pub fn render(report: &ComplianceReport) -> String {
    let mut h = String::new();
    let profiles: Vec<String> =
        report.profiles.iter().map(|p| format!("{} ({} rules)", p.id, p.rules)).collect();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Compliance of {}</title><style>{STYLE}</style></head><body>\n",
        esc(&report.target)
    );
    let _ = writeln!(
        h,
        "<h1>Compliance report</h1><p class=\"sub\">{} — {} — {}</p>",
        esc(&report.target),
        esc(&profiles.join(", ")),
        esc(&report.time)
    );
    let gate_class = if report.gate.passed { "gate-pass" } else { "gate-fail" };
    let _ = write!(
        h,
        "<div class=\"cards\"><div class=\"card {gate_class}\"><b>{:.1}%</b>score</div>\
         <div class=\"card {gate_class}\"><b>{}</b>gate</div>",
        report.score,
        if report.gate.passed { "passed" } else { "failed" }
    );
    for s in Status::ALL {
        let _ = write!(
            h,
            "<div class=\"card\"><b>{}</b><span class=\"st {s}\">{s}</span></div>",
            report.count(s)
        );
    }
    h.push_str("</div>\n");
    let mut gate_terms = Vec::new();
    if let Some(m) = report.gate.min_score {
        gate_terms.push(format!("minimum score {m}%"));
    }
    if let Some(s) = report.gate.fail_on_severity {
        gate_terms.push(format!("no failed rule of severity {s} or above"));
    }
    if !gate_terms.is_empty() {
        let _ = write!(h, "<p>Gate: {}.</p>", esc(&gate_terms.join(", ")));
    }
    if !report.gate.reasons.is_empty() {
        h.push_str("<ul>");
        for r in &report.gate.reasons {
            let _ = write!(h, "<li>{}</li>", esc(r));
        }
        h.push_str("</ul>\n");
    }
    if !report.notes.is_empty() {
        h.push_str("<details><summary>Notes</summary><ul>");
        for n in &report.notes {
            let _ = write!(h, "<li>{}</li>", esc(n));
        }
        h.push_str("</ul></details>\n");
    }
    h.push_str(
        "<table><thead><tr><th>Status</th><th>Severity</th><th>Rule</th><th>Evidence</th></tr></thead><tbody>\n",
    );
    // Failures first, then what needs a reader's eye, then the rest, each in profile order.
    let order = |s: Status| match s {
        Status::Fail => 0,
        Status::Error => 1,
        Status::Exception => 2,
        Status::Pass => 3,
        Status::NotApplicable => 4,
    };
    let mut rows: Vec<&RuleResult> = report.results.iter().collect();
    rows.sort_by_key(|r| order(r.status));
    for r in rows {
        row(&mut h, r);
    }
    h.push_str("</tbody></table>\n</body></html>\n");
    h
}

fn row(h: &mut String, r: &RuleResult) {
    let evaluated = r.evaluated.map(|e| format!(" <small>(found: {e})</small>")).unwrap_or_default();
    let _ = write!(
        h,
        "<tr id=\"{}\"><td><span class=\"st {}\">{}</span>{evaluated}</td><td class=\"sev-{}\">{}</td>",
        esc(&r.id),
        r.status,
        r.status,
        r.severity,
        r.severity
    );
    let _ = write!(h, "<td><b>{}</b><br><code>{}</code>", esc(&r.title), esc(&r.id));
    let mut refs = Vec::new();
    if !r.references.cis.is_empty() {
        refs.push(format!("CIS {}", r.references.cis.join(", ")));
    }
    if !r.references.anssi.is_empty() {
        refs.push(format!("ANSSI {}", r.references.anssi.join(", ")));
    }
    h.push_str("<details><summary>details</summary>");
    if let Some(j) = &r.justification {
        let _ = write!(h, "<p><b>Exception:</b> {}</p>", esc(j));
    }
    for (label, text) in [("Rationale", &r.rationale), ("Remediation", &r.remediation)] {
        if !text.is_empty() {
            let _ = write!(h, "<p><b>{label}:</b></p><pre>{}</pre>", esc(text));
        }
    }
    if !refs.is_empty() {
        let _ = write!(h, "<p><b>References:</b> {}</p>", esc(&refs.join("; ")));
    }
    let _ = write!(h, "<p><small>{} rule from {}</small></p></details></td>", esc(&r.kind), esc(&r.profile));
    h.push_str("<td><ul>");
    for e in &r.evidence {
        let _ = write!(h, "<li><code>{}</code></li>", esc(e));
    }
    h.push_str("</ul></td></tr>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Gate, apply_gate};
    use crate::profile::{References, Severity};
    use crate::report::{self, Source};

    fn result(id: &str, status: Status, evidence: &str) -> RuleResult {
        RuleResult {
            id: id.into(),
            title: "Title <b>bold</b>".into(),
            severity: Severity::High,
            status,
            evaluated: None,
            evidence: vec![evidence.into()],
            rationale: "because & so".into(),
            remediation: "echo \"x\" > /etc/y".into(),
            references: References { cis: vec!["1.1".into()], anssi: vec!["R12".into()] },
            justification: None,
            profile: "p".into(),
            source: Source::Kiln,
            kind: "fileContent".into(),
        }
    }

    #[test]
    fn everything_from_the_image_is_escaped() {
        let hostile = "/etc/issue:1: </code><script>alert('x')</script>\u{1b}[31m";
        let results =
            vec![result("a\"onmouseover=\"x", Status::Fail, hostile), result("b", Status::Pass, "ok")];
        let gate = apply_gate(&Gate { min_score: Some(90.0), fail_on_severity: None }, 50.0, &results);
        let report = ComplianceReport {
            target: "<img src=x>".into(),
            profiles: vec![],
            time: "2030-01-01T00:00:00Z".into(),
            score: 50.0,
            counts: report::counts(&results),
            gate,
            results,
            notes: vec!["<note>".into()],
        };
        let page = render(&report);
        assert!(!page.contains("<script>") && !page.contains("<img") && !page.contains("<note>"), "{page}");
        assert!(
            page.contains("&lt;/code&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;\\u{1b}[31m"),
            "{page}"
        );
        assert!(page.contains("id=\"a&quot;onmouseover=&quot;x\""), "{page}");
        assert!(page.contains("Title &lt;b&gt;bold&lt;/b&gt;") && page.contains("because &amp; so"));
        assert!(page.contains("<b>50.0%</b>score") && page.contains("<b>failed</b>gate"));
        assert!(page.contains("CIS 1.1; ANSSI R12"));
        // Failures come first.
        let table = &page[page.find("<tbody>").unwrap()..];
        assert!(table.find("class=\"st fail\"").unwrap() < table.find("class=\"st pass\"").unwrap());
    }

    #[test]
    fn escaping() {
        assert_eq!(esc("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
        assert_eq!(esc("line\nnext\ttab\u{7}"), "line\nnext\ttab\\u{7}");
    }
}
