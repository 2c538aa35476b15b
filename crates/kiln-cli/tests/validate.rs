//! `kiln component validate` from the command line.

mod common;

use common::{kiln, shared, text};

#[test]
fn every_real_awstoe_example_validates() {
    let dir = shared().join("examples/awstoe");
    let mut docs: Vec<String> = std::fs::read_dir(&dir)
        .expect("read examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .map(|p| p.display().to_string())
        .collect();
    docs.sort();
    assert!(docs.len() >= 33, "expected the 33 real documents, found {}", docs.len());
    let mut args = vec!["component", "validate"];
    args.extend(docs.iter().map(String::as_str));
    let out = kiln(&args);
    assert!(out.status.success(), "validation failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(text(&out.stdout), "", "a valid set prints no diagnostics");
}

#[test]
fn errors_name_file_line_and_column_and_exit_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = dir.path().join("bad.yml");
    std::fs::write(
        &doc,
        "name: bad\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: One\n        action: ExecuteBsh\n        inputs:\n          commands: [\"true\"]\n",
    )
    .expect("write");
    let good = dir.path().join("good.yml");
    std::fs::write(
        &good,
        "name: good\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: One\n        action: ExecuteBash\n        inputs:\n          commands: [\"true\"]\n",
    )
    .expect("write");
    let out = kiln(&["component", "validate", good.to_str().unwrap(), doc.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let expected_prefix = format!("{}:7:17: ", doc.display());
    assert!(stdout.starts_with(&expected_prefix), "got: {stdout}");
    assert!(stdout.contains("ExecuteBash"), "the nearest action name is suggested: {stdout}");
    assert_eq!(stdout.lines().count(), 1, "only the bad document reports: {stdout}");
}

#[test]
fn unreadable_and_non_utf8_documents_are_reported_not_panicked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = dir.path().join("binary.yml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x41]).expect("write");
    let missing = dir.path().join("missing.yml");
    let out = kiln(&["component", "validate", binary.to_str().unwrap(), missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("not UTF-8"), "{stdout}");
    assert!(stdout.contains("cannot read the document"), "{stdout}");
}
