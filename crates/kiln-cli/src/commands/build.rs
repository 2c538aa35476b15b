//! `kiln build`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use kiln_build::{BuildError, BuildRequest, Kiln, OnError};
use kiln_host::Cancel;

use crate::cli::{BuildArgs, OnErrorArg};
use crate::progress::BuildLines;

pub fn run(home: &std::path::Path, args: BuildArgs) -> Result<ExitCode> {
    let kiln = Kiln::open(home)?;
    let cancel = Cancel::new();
    cancel_on_signals(cancel.clone()).context("cannot watch for SIGINT and SIGTERM")?;
    let req = BuildRequest {
        resource_file: args.file.clone(),
        out_dir: args.out.clone(),
        no_cache: args.no_cache,
        no_test: args.no_test,
        on_error: match args.on_error {
            OnErrorArg::Abort => OnError::Abort,
            OnErrorArg::Keep => OnError::Keep,
            OnErrorArg::Shell => OnError::Shell,
        },
        source_date_epoch: match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => Some(v.trim().parse().map_err(|_| {
                anyhow::anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds; set it to an integer such as `date +%s`")
            })?),
            Err(_) => None,
        },
        image_arn: None,
        cancel: Some(cancel),
    };
    let progress = BuildLines::new(args.json);
    match kiln.build(&req, &progress) {
        Ok(outcome) => {
            progress.finish();
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&serde_json::json!({ "event": "outcome", "outcome": outcome }))?
                );
            } else {
                println!("{} {}", outcome.state, outcome.arn);
                println!("  output:  {}", outcome.out_dir.display());
                println!("  layers:  {} reused, {} built", outcome.layers_reused, outcome.layers_built);
                println!("  took:    {:.1}s", outcome.duration_ms as f64 / 1000.0);
                for r in &outcome.regions {
                    match &r.reason {
                        None => println!(
                            "  region:  {} {} ({} of {} bytes uploaded)",
                            r.region, r.state, r.uploaded_bytes, r.total_bytes
                        ),
                        Some(why) => println!("  region:  {} {}: {why}", r.region, r.state),
                    }
                }
            }
            let failed: Vec<&str> = outcome
                .regions
                .iter()
                .filter(|r| r.state != "AVAILABLE")
                .map(|r| r.region.as_str())
                .collect();
            if !failed.is_empty() {
                eprintln!(
                    "error: distribution failed in {}; complete it with `kiln image distribute {}`",
                    failed.join(", "),
                    outcome.arn
                );
                return Ok(ExitCode::from(crate::EXIT_FAILED));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(BuildError::Invalid(diags)) => {
            progress.finish();
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!("error: nothing was built: fix the problems above first");
            Ok(ExitCode::from(crate::EXIT_FAILED))
        }
        Err(BuildError::Cancelled) => {
            progress.finish();
            if args.json {
                println!("{}", serde_json::json!({ "event": "outcome", "error": "cancelled" }));
            }
            eprintln!(
                "error: the build was cancelled; the image is CANCELLED and nothing it made was cached"
            );
            Ok(ExitCode::from(crate::EXIT_CANCELLED))
        }
        Err(e) => {
            progress.finish();
            if args.json {
                println!("{}", serde_json::json!({ "event": "outcome", "error": e.to_string() }));
            }
            eprintln!("error: the build failed: {e}");
            Ok(ExitCode::from(crate::EXIT_FAILED))
        }
    }
}

/// From now on, the first SIGINT or SIGTERM cancels `cancel` (the build stops what runs and
/// cleans up, which takes seconds); a second one exits at once, leaving the clean-up to the
/// next kiln (stale scratch layers and staging folders are removed when KILN_HOME is opened;
/// sandboxes and instances die with kiln).
fn cancel_on_signals(cancel: Cancel) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    // Registered before returning, so no signal between here and the watcher's start kills
    // kiln the default way; the runtime queues them until the watcher runs.
    let (mut int, mut term) = {
        let _entered = rt.enter();
        (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?)
    };
    std::thread::Builder::new().name("kiln-signals".into()).spawn(move || {
        rt.block_on(async move {
            let mut first = true;
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if !first {
                    eprintln!("kiln: exiting without cleaning up");
                    std::process::exit(i32::from(crate::EXIT_CANCELLED));
                }
                first = false;
                eprintln!("kiln: cancelling the build: stopping what runs and cleaning up (signal again to exit at once)");
                // The token's hooks (killing the sandbox or a test instance) run here.
                cancel.cancel();
            }
        })
    })?;
    Ok(())
}
