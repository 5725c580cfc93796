//! `tern`, the server binary: starts any subset of the five LoRaWAN roles.

use std::process::ExitCode;

use clap::Parser;
use tern::cli::Cli;

// mimalloc rather than glibc's malloc: the uplink path allocates small buffers on many
// threads, where glibc spent a quarter of the profile and kept freed arenas resident.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
