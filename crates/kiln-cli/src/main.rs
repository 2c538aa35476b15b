//! The `kiln` command: parses the command line, sets up logging, and hands each command to a
//! short function over the library crates. Errors get their context here (anyhow), and every
//! exit code is documented in `kiln --help`.

mod cli;
mod commands;
mod progress;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, LogFormat};

/// The work failed (invalid document, failed step).
pub const EXIT_FAILED: u8 = 1;
/// kiln could not do the work (environment, permissions, internal error).
pub const EXIT_ERROR: u8 = 3;
/// The work was cancelled by SIGINT or SIGTERM (128 + SIGINT, as shells report an
/// interrupted command).
pub const EXIT_CANCELLED: u8 = 130;

fn main() -> ExitCode {
    // The sandbox re-executes this binary as its namespace helper; that path never returns.
    kiln_sandbox::init_main_if_requested();
    // So is the helper that adds the guest agent to a test instance's overlay.
    kiln_instance::prepare_main_if_requested();

    let cli = Cli::parse();
    // The server and workers log each API call and build event at info level.
    let verbose = if matches!(cli.command, Command::Serve(_) | Command::Worker(_)) {
        cli.global.verbose.max(1)
    } else {
        cli.global.verbose
    };
    init_logging(verbose, cli.global.log_format);
    let home = kiln_home(cli.global.home.clone());
    let result = match cli.command {
        Command::Build(args) => commands::build::run(&home, args),
        Command::Component(cmd) => commands::component::run(cmd),
        Command::Image(cmd) => commands::image::run(&home, cmd),
        Command::Cache(cmd) => commands::cache::run(&home, cmd),
        Command::Scan(args) => commands::scan::run(&home, args),
        Command::Compliance(args) => commands::compliance::run(&home, args),
        Command::Test(args) => commands::test::run(&home, args),
        Command::Launch(args) => commands::launch::run(&home, args),
        Command::Key(cmd) => commands::key::run(&home, cmd),
        Command::Lifecycle(cmd) => commands::lifecycle::run(&home, cmd),
        Command::Serve(args) => commands::serve::run(&home, args),
        Command::Worker(args) => commands::serve::worker(&home, args),
        Command::Admin(cmd) => commands::serve::admin(&home, cmd),
        Command::Audit(args) => commands::audit::run(&home, args),
        Command::Threats(args) => commands::threats::run(&home, args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// `--home`/`KILN_HOME`, else `$XDG_DATA_HOME/kiln`, else `~/.local/share/kiln`.
fn kiln_home(given: Option<std::path::PathBuf>) -> std::path::PathBuf {
    if let Some(home) = given {
        return home;
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return std::path::PathBuf::from(data).join("kiln");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    std::path::PathBuf::from(home).join(".local/share/kiln")
}

fn init_logging(verbose: u8, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}
