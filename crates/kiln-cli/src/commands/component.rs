//! `kiln component validate|run|builtin`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use kiln_component::diag::Diagnostic;
use kiln_component::document::{Document, PhaseName, parse_document};
use kiln_component::engine::{Engine, RunOptions};
use kiln_sandbox::{Network, RootSpec, Sandbox, SandboxConfig};

use crate::cli::{BuiltinArgs, ComponentCommand, NetworkArg, RunArgs, ValidateArgs};
use crate::progress;

pub fn run(cmd: ComponentCommand) -> Result<ExitCode> {
    match cmd {
        ComponentCommand::Validate(args) => validate(args),
        ComponentCommand::Run(args) => run_documents(args),
        ComponentCommand::Builtin(args) => builtin(args),
    }
}

fn builtin(args: BuiltinArgs) -> Result<ExitCode> {
    use kiln_build::builtin::{BUILTINS, find};
    if let Some(name) = &args.name {
        let Some(b) = find(name) else {
            let names: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
            bail!("no built-in component `{name}`; there are: {}", names.join(", "));
        };
        print!("{}", b.document);
        return Ok(ExitCode::SUCCESS);
    }
    let mut list = Vec::new();
    for b in BUILTINS {
        let doc = parse_document(b.name, b.document).map_err(|d| {
            let problems: Vec<String> = d.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("built-in {} is invalid: {}", b.name, problems.join("; "))
        })?;
        list.push((b, doc));
    }
    if args.json {
        let json: Vec<_> = list
            .iter()
            .map(|(b, doc)| {
                serde_json::json!({
                    "name": b.name,
                    "version": b.version,
                    "description": doc.description,
                    "phases": doc.phases.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
                    "parameters": doc.parameters.iter().map(|p| serde_json::json!({
                        "name": p.name,
                        "default": p.default,
                        "allowedValues": p.allowed_values,
                        "description": p.description,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (b, doc) in &list {
        println!("{} {}", b.name, b.version);
        if let Some(d) = &doc.description {
            println!("  {d}");
        }
        for p in &doc.parameters {
            let mut line = format!("    {} = {:?}", p.name, p.default.as_deref().unwrap_or(""));
            if let Some(allowed) = &p.allowed_values {
                line.push_str(&format!(" (one of {})", allowed.join(", ")));
            }
            if let Some(d) = &p.description {
                line.push_str(&format!(": {d}"));
            }
            println!("{line}");
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

/// Read and validate one document; a file that cannot be read is a diagnostic too, so that
/// `validate` reports every problem of every file in one go.
fn load(path: &Path) -> Result<Document, Vec<Diagnostic>> {
    let name = path.display().to_string();
    let text = std::fs::read(path).map_err(|e| {
        vec![Diagnostic {
            file: name.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read the document: {e}"),
            hint: None,
        }]
    })?;
    let text = String::from_utf8(text).map_err(|e| {
        vec![Diagnostic {
            file: name.clone(),
            line: 0,
            column: 0,
            message: format!(
                "the document is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
            hint: Some("save the file as UTF-8".into()),
        }]
    })?;
    parse_document(&name, &text)
}

fn validate(args: ValidateArgs) -> Result<ExitCode> {
    let mut all = Vec::new();
    for path in &args.documents {
        if let Err(diags) = load(path) {
            all.extend(diags);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for d in &all {
            println!("{d}");
        }
        if all.is_empty() {
            eprintln!("{} document(s) valid", args.documents.len());
        }
    }
    Ok(if all.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(crate::EXIT_FAILED) })
}

fn run_documents(args: RunArgs) -> Result<ExitCode> {
    let mut documents = Vec::new();
    let mut diags = Vec::new();
    for path in &args.documents {
        match load(path) {
            Ok(doc) => documents.push(doc),
            Err(d) => diags.extend(d),
        }
    }
    if !diags.is_empty() {
        for d in &diags {
            eprintln!("{d}");
        }
        eprintln!("error: nothing was run: fix the documents above first");
        return Ok(ExitCode::from(crate::EXIT_FAILED));
    }
    let mut phases = Vec::new();
    for p in &args.phases {
        match PhaseName::from_name(p.trim()) {
            Some(name) => phases.push(name),
            None => bail!("unknown phase `{p}` in --phases: use build, validate or test"),
        }
    }
    if !args.root.is_dir() {
        bail!(
            "--root {}: not a directory; give the unpacked root file system to run the documents in",
            args.root.display()
        );
    }
    let root =
        args.root.canonicalize().with_context(|| format!("cannot resolve --root {}", args.root.display()))?;
    let log_dir = args
        .log_dir
        .clone()
        .or_else(|| args.report.as_ref().map(|r| r.parent().unwrap_or(Path::new(".")).join("logs")));

    let mut config = SandboxConfig::new(RootSpec::Dir(root));
    config.network = match args.network {
        NetworkArg::None => Network::None,
        NetworkArg::Host => Network::Host,
    };
    let session = Sandbox::start(config).context("cannot start the build sandbox")?;
    let options = RunOptions {
        phases,
        parameters: args.params.clone(),
        working_dir: args.working_dir.clone(),
        log_dir,
        ..RunOptions::default()
    };
    let observer = progress::Lines;
    let report = Engine::new(&session, options, &observer).run(&documents);
    drop(session);

    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_text());
    }
    Ok(if report.success() { ExitCode::SUCCESS } else { ExitCode::from(crate::EXIT_FAILED) })
}
