//! Every dpkg comparison vector and parse case from `shared/vuln/`, loaded at test time.

mod common;

use std::cmp::Ordering;

use kiln_scan::version::{Version, VersionError};

#[test]
fn every_comparison_vector_agrees_with_dpkg() {
    let text = common::read(&common::vuln_dir().join("dpkg-version-vectors.tsv"));
    let mut rows = 0;
    let mut failures = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert!(cols.len() >= 3, "line {}: expected `a op b source`, got {line:?}", n + 1);
        let want = match cols[1] {
            "<" => Ordering::Less,
            "=" => Ordering::Equal,
            ">" => Ordering::Greater,
            op => panic!("line {}: unknown op {op:?}", n + 1),
        };
        let a = Version::parse(cols[0]).unwrap_or_else(|e| panic!("line {}: {e}", n + 1));
        let b = Version::parse(cols[2]).unwrap_or_else(|e| panic!("line {}: {e}", n + 1));
        rows += 1;
        // Both orientations: the comparison must be antisymmetric as dpkg's is.
        if a.cmp(&b) != want || b.cmp(&a) != want.reverse() {
            failures.push(format!(
                "line {}: {} {} {} (got {:?})",
                n + 1,
                cols[0],
                cols[1],
                cols[2],
                a.cmp(&b)
            ));
        }
    }
    assert_eq!(rows, 147, "expected 147 vectors in dpkg-version-vectors.tsv");
    assert!(failures.is_empty(), "disagreements with dpkg:\n{}", failures.join("\n"));
}

#[test]
fn every_parse_case_agrees_with_dpkg() {
    let text = common::read(&common::vuln_dir().join("dpkg-version-parse.tsv"));
    let mut rows = 0;
    let mut failures = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 2 {
            continue;
        }
        rows += 1;
        let (input, expect) = (cols[0], cols[1]);
        let parsed: Result<Version, VersionError> = Version::parse(input);
        let ok = match (expect, &parsed) {
            ("error", Err(_)) => true,
            ("warn", Ok(v)) => v.warning().is_some(),
            ("ok", Ok(v)) => {
                let epoch: u32 = cols[2].parse().unwrap();
                v.warning().is_none()
                    && v.epoch() == epoch
                    && v.upstream() == cols[3]
                    && v.revision().unwrap_or("") == cols[4]
            }
            _ => false,
        };
        if !ok {
            failures.push(format!("line {}: {input:?} expected {expect}, got {parsed:?}", n + 1));
        }
    }
    assert_eq!(rows, 99, "expected 99 parse cases in dpkg-version-parse.tsv");
    assert!(failures.is_empty(), "disagreements with dpkg:\n{}", failures.join("\n"));
}

#[test]
fn errors_say_what_is_wrong() {
    let e = Version::parse("1.0-").unwrap_err();
    assert!(e.to_string().contains("revision"), "{e}");
    let e = Version::parse("a:1").unwrap_err();
    assert!(e.to_string().contains("epoch"), "{e}");
}
