//! `tern`, the server binary: starts any subset of the five LoRaWAN roles.

use std::process::ExitCode;

use clap::Parser;
use tern::cli::Cli;

fn main() -> ExitCode {
    // Usage errors (unknown subcommand, flag or role) exit with status 2 here.
    let cli = Cli::parse();
    match tern::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
