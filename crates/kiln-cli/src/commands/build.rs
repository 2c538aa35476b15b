//! `kiln build`.

use std::process::ExitCode;

use anyhow::Result;
use kiln_build::{BuildError, BuildRequest, Kiln, OnError};

use crate::cli::{BuildArgs, OnErrorArg};
use crate::progress::BuildLines;

pub fn run(home: &std::path::Path, args: BuildArgs) -> Result<ExitCode> {
    let kiln = Kiln::open(home)?;
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
        cancel: None,
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
