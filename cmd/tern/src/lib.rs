//! The `tern` server: command line, configuration, servers, role lifecycle and shutdown.
//!
//! The binary in `main.rs` only parses the command line and calls [`run`].

#![warn(missing_docs)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod grpc;
pub mod http;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod readiness;
pub mod remote;
pub mod rest;
pub mod roles;
pub mod shutdown;
pub mod start;
pub mod wiring;

use crate::cli::{Cli, Command};

/// Version of this binary.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Git commit this binary was built from, when the build set `TERN_GIT_COMMIT`.
pub const COMMIT: Option<&str> = option_env!("TERN_GIT_COMMIT");

/// Runs one subcommand to completion.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let load = || config::load(cli.global.config.as_deref(), cli.global.data_dir.as_deref());
    match &cli.command {
        Command::Version => {
            match COMMIT {
                Some(commit) => println!("tern {VERSION} (commit {commit})"),
                None => println!("tern {VERSION}"),
            }
            Ok(())
        }
        Command::Config => {
            let (config, origin) = load()?;
            println!("# Effective tern configuration (from {origin}); secrets are masked.");
            print!("{}", config::to_toml(&config));
            Ok(())
        }
        Command::Migrate => {
            let (config, _) = load()?;
            logging::init(&config.log)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let applied = runtime.block_on(tern_store::Store::migrate_only(
                &config.store,
                &config.data_dir,
            ))?;
            if applied.is_empty() {
                println!("the {} store schema is up to date", config.store.backend);
            } else {
                println!(
                    "applied to the {} store: {}",
                    config.store.backend,
                    applied.join(", ")
                );
            }
            Ok(())
        }
        Command::Admin { command } => {
            let (config, _) = load()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(admin::run(&config, command))
        }
        Command::Start { roles } => {
            let (config, origin) = load()?;
            logging::init(&config.log)?;
            let roles = roles::select(roles);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("tern")
                .build()?;
            runtime.block_on(start::run(config, origin, roles))
        }
    }
}
