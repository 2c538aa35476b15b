//! `kiln launch`: boot an image to try it by hand.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use kiln_build::Kiln;
use kiln_instance::{LaunchOptions, Launched};

use crate::cli::LaunchArgs;

pub fn run(home: &Path, args: LaunchArgs) -> Result<ExitCode> {
    let kiln = Kiln::open(home)?;
    let (disk, image) = if Path::new(&args.target).is_file() {
        (Path::new(&args.target).to_path_buf(), None)
    } else {
        let image = kiln.find_image(&args.target)?;
        match kiln.check_access(&image, args.account.as_deref(), "launch") {
            Ok(Some(warning)) => eprintln!("warning: {warning}"),
            Ok(None) => {}
            Err(kiln_build::BuildError::Access(e)) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(crate::EXIT_FAILED));
            }
            Err(e) => return Err(e.into()),
        }
        (kiln.image_disk(&image, &["qcow2", "raw"])?, Some(image))
    };
    let infra: kiln_model::InfrastructureConfiguration = image
        .as_ref()
        .and_then(|i| i.manifest.as_ref())
        .and_then(|m| serde_json::from_value(m["infrastructureConfiguration"].clone()).ok())
        .unwrap_or_default();
    let id = format!("{}-{}", time::OffsetDateTime::now_utc().unix_timestamp(), std::process::id());
    let work_dir = home.join("instances").join(&id);
    let opts = LaunchOptions {
        image: disk.clone(),
        work_dir: work_dir.clone(),
        cpus: args.cpus.unwrap_or(infra.cpus),
        memory_mib: args.memory_mib.unwrap_or(infra.memory_mib),
        ssh_port: args.ssh_port,
        detach: args.detach,
        user_data: args.user_data.clone(),
        meta_data: args.meta_data.clone(),
    };
    if let Some(image) = &image {
        let details = serde_json::json!({
            "instance": id,
            "detached": args.detach,
            "sshPort": args.ssh_port,
            "cloudInitSeed": args.user_data.is_some() || args.meta_data.is_some(),
        });
        let account = args.account.as_deref().unwrap_or(&image.account);
        kiln.block_on(kiln.store().record_usage(&image.arn, "launch", account, &details))
            .with_context(|| format!("cannot record the launch of {}", image.arn))?;
    }
    if !args.detach {
        eprintln!("booting {} (quit with Ctrl-A X)", disk.display());
    }
    match kiln_instance::launch(&opts)? {
        Launched::Ended { status } => {
            eprintln!("the instance ended ({status}); its overlay is removed");
        }
        Launched::Detached { pid, console, work_dir, ssh_port } => {
            println!("instance {id} running (QEMU pid {pid})");
            println!("  console:  tail -f {}", console.display());
            if let Some(p) = ssh_port {
                println!("  ssh:      ssh -p {p} USER@127.0.0.1");
            }
            println!("  stop:     kill {pid} && rm -r {}", work_dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
