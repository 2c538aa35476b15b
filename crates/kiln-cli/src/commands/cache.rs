//! `kiln cache prune`.

use std::process::ExitCode;

use anyhow::Result;
use kiln_build::Kiln;

use crate::cli::CacheCommand;

pub fn run(home: &std::path::Path, cmd: CacheCommand) -> Result<ExitCode> {
    let kiln = Kiln::open(home)?;
    match cmd {
        CacheCommand::Prune { all } => {
            let freed = kiln.prune_layers(all)?;
            println!("freed {:.1} MiB", freed as f64 / (1024.0 * 1024.0));
        }
    }
    Ok(ExitCode::SUCCESS)
}
