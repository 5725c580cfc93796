//! `ternctl`, Tern's admin command-line tool.
//!
//! Exit codes: 0 success, 1 error (one line on stderr), 2 usage error (from clap).

mod lorawan_cmd;

use clap::{Parser, Subcommand};

/// Tern's admin command-line tool.
#[derive(Parser)]
#[command(name = "ternctl", version, about = "Tern's admin command-line tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode, encode and derive keys for LoRaWAN frames, offline.
    #[command(subcommand)]
    Lorawan(lorawan_cmd::LorawanCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lorawan(cmd) => lorawan_cmd::run(cmd),
    };
    match result {
        Ok(out) => println!("{out}"),
        Err(e) => {
            // One line: the error and its causes, joined.
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
