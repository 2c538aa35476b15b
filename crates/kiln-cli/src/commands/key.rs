//! `kiln key`: the keyring.

use std::process::ExitCode;

use anyhow::Result;
use kiln_build::Kiln;

use crate::cli::KeyCommand;

pub fn run(home: &std::path::Path, cmd: KeyCommand) -> Result<ExitCode> {
    let kiln = Kiln::open(home)?;
    let keyring = kiln.keyring()?;
    match cmd {
        KeyCommand::Create { name } => {
            let v = keyring.create(&name)?;
            println!("created key {name} (version {v})");
        }
        KeyCommand::Rotate { name } => {
            let v = keyring.rotate(&name)?;
            println!("key {name} is now at version {v}; older versions stay readable");
        }
        KeyCommand::List => {
            let signing = keyring.signing_key()?.verifying_key();
            println!("signing key (ed25519): {}", kiln_dist::keys::public_key_text(&signing));
            for name in keyring.names()? {
                let versions = keyring.versions(&name)?;
                println!(
                    "{name}: versions {}",
                    versions.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
