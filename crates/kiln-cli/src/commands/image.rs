//! `kiln image list|show`.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use kiln_build::Kiln;

use crate::cli::ImageCommand;

pub fn run(home: &std::path::Path, cmd: ImageCommand) -> Result<ExitCode> {
    let kiln = Kiln::open(home)?;
    let store = kiln.store();
    match cmd {
        ImageCommand::List { name, json } => {
            let filter = kiln_store::ImageFilter { name, ..Default::default() };
            let images = kiln.block_on(store.list_images(&filter))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else if images.is_empty() {
                eprintln!("no images yet: `kiln build -f FILE` makes one");
            } else {
                println!("{:<24} {:<10} {:>5}  {:<10} CREATED", "NAME", "VERSION", "BUILD", "STATE");
                for i in &images {
                    println!(
                        "{:<24} {:<10} {:>5}  {:<10} {}",
                        i.name,
                        i.version.to_string(),
                        i.build,
                        i.state.as_str(),
                        i.created_at
                    );
                }
            }
        }
        ImageCommand::Show { image, json } => {
            let found = if image.starts_with("arn:") {
                kiln.block_on(store.get_image_by_arn(&image))
            } else {
                let parts: Vec<&str> = image.split('/').collect();
                let (name, version, build) = match parts.as_slice() {
                    [n, v] => (*n, *v, None),
                    [n, v, b] => (
                        *n,
                        *v,
                        Some(b.parse::<u32>().with_context(|| format!("`{b}` is not a build number"))?),
                    ),
                    _ => bail!("`{image}` is not NAME/VERSION[/BUILD] or an image ARN"),
                };
                let version: kiln_store::Version = version.parse()?;
                kiln.block_on(store.get_image(name, &version, build))
            }?;
            let history = kiln.block_on(store.image_history(&found.arn))?;
            let usage = kiln.block_on(store.list_usage(Some(&found.arn)))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "image": found, "history": history, "usage": usage })
                    )?
                );
            } else {
                println!("{}", found.arn);
                println!(
                    "  state:    {}{}",
                    found.state.as_str(),
                    found.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
                );
                println!("  created:  {}", found.created_at);
                if let Some(dir) = &found.output_location {
                    println!("  output:   {dir}");
                }
                for h in &history {
                    println!("  {}  {:<10} {}", h.at, h.to.as_str(), h.reason.as_deref().unwrap_or_default());
                }
                for u in &usage {
                    println!("  {}  {:<10} {}", u.at, u.kind, u.details);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
