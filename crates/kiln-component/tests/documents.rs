//! Component documents end to end: the real AWSTOE examples validate, every invalid fixture
//! gives exactly its expected diagnostics, and the typed model carries what the engine needs.
//!
//! Invalid fixtures live in `tests/fixtures/invalid/NAME.yml`, each with `NAME.expected`
//! holding the exact `FILE:LINE:COLUMN: message (hint)` lines. Run with `KILN_BLESS=1` to
//! rewrite the `.expected` files from the current output (then review the diff).

use std::fs;
use std::path::{Path, PathBuf};

use kiln_component::condition::{CompareOp, Expr, StepAction};
use kiln_component::document::{
    DEFAULT_TIMEOUT_SECONDS, Document, LoopKind, OnFailure, PhaseName, parse_document,
};
use kiln_component::expr::{self, LoopField, Reference};

/// The AWSTOE examples in the shared folder, which sits beside the repository
/// (`/work/main` and `/work/shared` here; CI clones the repo with `shared/` beside it).
fn examples_dir() -> PathBuf {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/examples/awstoe"));
    assert!(
        dir.is_dir(),
        "the AWSTOE examples are missing: expected {} (shared/ beside the repository)",
        dir.display()
    );
    dir.to_path_buf()
}

fn fixtures_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/invalid")).to_path_buf()
}

fn sorted_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

fn load_example(name: &str) -> Document {
    let path = examples_dir().join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_document(name, &text).unwrap_or_else(|diags| {
        panic!(
            "{name} should validate:\n{}",
            diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")
        )
    })
}

#[test]
fn every_awstoe_example_validates() {
    let files = sorted_files(&examples_dir(), "yml");
    assert!(files.len() >= 30, "expected the whole example set, found {}", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let text = fs::read_to_string(path).expect("readable example");
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Err(diags) = parse_document(name, &text) {
            failures.extend(diags.iter().map(|d| d.to_string()));
        }
    }
    assert!(failures.is_empty(), "examples that should validate did not:\n{}", failures.join("\n"));
}

#[test]
fn invalid_fixtures_give_exactly_the_expected_diagnostics() {
    let dir = fixtures_dir();
    let files = sorted_files(&dir, "yml");
    assert!(files.len() >= 10, "expected the invalid fixtures, found {}", files.len());
    let bless = std::env::var_os("KILN_BLESS").is_some();
    let mut mismatches = Vec::new();
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let text = fs::read_to_string(path).expect("readable fixture");
        let actual: Vec<String> = match parse_document(&name, &text) {
            Ok(_) => vec!["(validated without errors)".to_string()],
            Err(diags) => diags.iter().map(|d| d.to_string()).collect(),
        };
        let expected_path = path.with_extension("expected");
        if bless {
            fs::write(&expected_path, actual.join("\n") + "\n").expect("write .expected");
            continue;
        }
        let expected = fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{} needs {}: {e}", name, expected_path.display()));
        let expected: Vec<&str> = expected.lines().filter(|l| !l.is_empty()).collect();
        if actual != expected {
            mismatches.push(format!(
                "{name}:\n  expected:\n    {}\n  actual:\n    {}",
                expected.join("\n    "),
                actual.join("\n    ")
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn model_carries_steps_and_defaults() {
    let doc = load_example("aws-ia-linux-build.yml");
    let build = doc.phase(PhaseName::Build).expect("build phase");
    let first = &build.steps[0];
    assert_eq!(first.action, "CreateFolder");
    let with_retry = build.steps.iter().find(|s| s.max_attempts == 3).expect("a step with maxAttempts 3");
    assert!(with_retry.timeout_seconds.is_some());
    let update = build.steps.iter().find(|s| s.action == "UpdateOS").expect("UpdateOS step");
    assert!(update.inputs.is_none(), "UpdateOS is written without inputs");
    assert_eq!(update.timeout_seconds, Some(DEFAULT_TIMEOUT_SECONDS));
    assert_eq!(update.on_failure, OnFailure::Abort);

    let hello = load_example("hello-world-linux.yml");
    assert_eq!(hello.schema_version, "1.0");
    assert_eq!(
        hello.phases.iter().map(|p| p.name).collect::<Vec<_>>(),
        [PhaseName::Build, PhaseName::Validate, PhaseName::Test]
    );

    let update_os = load_example("update-linux-os.yml");
    assert_eq!(update_os.schema_version, "1.0", "`schemaVersion: 1` is read as 1.0");

    let stig = load_example("stig-build-linux-low.yml");
    assert!(stig.phases.iter().flat_map(|p| &p.steps).any(|s| s.on_failure == OnFailure::Continue));
}

#[test]
fn scalars_reach_inputs_as_written() {
    let doc = load_example("file-folder-permissions.yml");
    let perms: Vec<String> = doc
        .phases
        .iter()
        .flat_map(|p| &p.steps)
        .filter_map(|s| s.inputs.as_ref())
        .flat_map(|i| i.as_seq().unwrap_or_default().iter())
        .filter_map(|item| item.get("permissions").and_then(|p| p.as_str()).map(str::to_string))
        .collect();
    assert!(perms.contains(&"0777".to_string()), "leading zero kept: {perms:?}");
    assert!(perms.contains(&"766".to_string()), "{perms:?}");

    let s3 = load_example("execute-document-s3.yml");
    let inputs = s3.phases[0].steps[0].inputs.as_ref().expect("inputs");
    assert_eq!(inputs.get("document-s3-bucket-owner").and_then(|n| n.as_str()), Some("123456789012"));
    assert_eq!(inputs.get("phases").and_then(|n| n.as_str()), Some("build,validate"));
}

#[test]
fn loops_from_real_documents_iterate() {
    let doc = load_example("execute-document-for-loop.yml");
    let lp = doc.phases[0].steps[0].loop_.as_ref().expect("loop");
    assert_eq!(lp.name.as_deref(), Some("myForLoop"));
    let its = lp.iterations(&|s| Ok(s.to_string())).expect("iterations");
    assert_eq!(its.iter().map(|i| (i.index, i.value.as_str())).collect::<Vec<_>>(), [(0, "1"), (1, "2")]);

    let doc = load_example("ping-hosts-parameter.yml");
    let params = doc.resolve_parameters(&[]).expect("default applies");
    assert_eq!(params, [("Hosts".to_string(), "127.0.0.1,amazon.com".to_string())]);
    let step = &doc.phases[0].steps[0];
    let lp = step.loop_.as_ref().expect("loop");
    assert!(matches!(&lp.kind, LoopKind::ForEachDelimited { delimiter, .. } if delimiter == ","));
    let render = |text: &str| {
        expr::render(text, &mut |r| match r {
            Reference::Variable(name) => params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| format!("no {name}")),
            other => Err(format!("unexpected {other}")),
        })
    };
    let values: Vec<String> =
        lp.iterations(&render).expect("iterations").into_iter().map(|i| i.value).collect();
    assert_eq!(values, ["127.0.0.1", "amazon.com"]);

    // The step's command renders with the loop value.
    let command =
        step.inputs.as_ref().and_then(|i| i.get("commands")).and_then(|c| c.as_seq()).expect("commands")[0]
            .as_str()
            .expect("text")
            .to_string();
    let rendered = expr::render(&command, &mut |r| match r {
        Reference::Loop { name: None, field: LoopField::Value } => Ok(values[1].clone()),
        other => Err(format!("unexpected {other}")),
    });
    assert_eq!(rendered.as_deref(), Ok("ping -c 4 amazon.com"));
}

#[test]
fn conditions_from_real_documents_parse() {
    let doc = load_example("kiwi-ng-attestable.yml");
    let build = doc.phase(PhaseName::Build).expect("build");
    let assert_step = build.steps.iter().find(|s| s.name == "AssertS3Source").expect("AssertS3Source");
    let cond = assert_step.condition.as_ref().expect("if");
    let Expr::Compare { op, operand, value, .. } = &cond.expr else { panic!("{:?}", cond.expr) };
    assert_eq!(*op, CompareOp::StringEquals);
    assert_eq!(operand, "s3");
    assert_eq!(value.as_deref(), Some("{{ build.CheckRecipeType.outputs.stdout }}"));
    assert_eq!(cond.then_action, None);
    assert_eq!(cond.else_action.unwrap_or(StepAction::Skip), StepAction::Skip);

    let err = doc.resolve_parameters(&[]).expect_err("RecipeSource has no default");
    assert!(err.contains("`RecipeSource` has no default"), "{err}");
    let err = doc
        .resolve_parameters(&[
            ("RecipeSource".into(), "s3://b/r".into()),
            ("IncludePcrMeasurements".into(), "maybe".into()),
        ])
        .expect_err("allowedValues enforced");
    assert!(err.contains("must be one of `no`, `yes`"), "{err}");
}

#[test]
fn broken_expression_in_aws_document_stays_literal() {
    let doc = load_example("aws-cli-v2-linux.yml");
    let install = doc
        .phase(PhaseName::Build)
        .and_then(|p| p.steps.iter().find(|s| s.name == "Install"))
        .expect("Install");
    let script =
        install.inputs.as_ref().and_then(|i| i.get("commands")).and_then(|c| c.as_seq()).expect("commands")
            [0]
        .as_str()
        .expect("script")
        .to_string();
    let rendered = expr::render(&script, &mut |r| match r {
        Reference::Chain(c) if c.step == "ExtractPath" => Ok("/tmp/x".to_string()),
        other => Err(format!("unexpected {other}")),
    })
    .expect("renders");
    assert!(rendered.contains("EXTRACT_DIR='/tmp/x'"), "{rendered}");
    assert!(rendered.contains("'{{ build.InstallationType.outputs.stdout' == 'install'"), "{rendered}");
}

#[test]
fn one_space_indented_top_level_and_utf8_validate() {
    let eni = load_example("eni-attachment-test-linux.yml");
    assert_eq!(eni.name.as_deref(), Some("eni-attachment-test-linux"));
    let ami = load_example("ami-lifecycle-patch.yml");
    assert!(!ami.phases.is_empty());
    // A byte-order mark in front changes nothing.
    let text = fs::read_to_string(examples_dir().join("hello-world-linux.yml")).expect("example");
    let with_bom = format!("\u{feff}{text}");
    assert_eq!(
        parse_document("hello-world-linux.yml", &with_bom).ok(),
        parse_document("hello-world-linux.yml", &text).ok()
    );
}
