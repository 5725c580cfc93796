//! Command-line interface: subcommands and the global flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::roles::RoleArg;

/// Tern's LoRaWAN server: runs any subset of the five roles.
#[derive(Debug, Parser)]
#[command(name = "tern", version = crate::VERSION, about, long_about = None)]
pub struct Cli {
    /// Flags accepted by every subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted by every subcommand.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file [default: config/tern.toml if it exists, else built-in defaults]
    #[arg(long, global = true, value_name = "FILE", env = "TERN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for local state: embedded store, bootstrap credentials [default: ./data]
    #[arg(long, global = true, value_name = "DIR", env = "TERN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the named roles (all five when none is named) and serve until SIGTERM or SIGINT.
    Start {
        /// Roles to start: is, gs, ns, js, as, or all (the default).
        #[arg(value_enum, value_name = "ROLE")]
        roles: Vec<RoleArg>,
    },
    /// Print the effective configuration as TOML, with secrets masked.
    Config,
    /// Run the store's schema migrations and exit (the server also runs them at start).
    Migrate,
    /// Print the version.
    Version,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from(["tern", "start", "gs", "--data-dir", "/tmp/x"]).unwrap();
        assert_eq!(cli.global.data_dir, Some(PathBuf::from("/tmp/x")));
        assert!(matches!(cli.command, Command::Start { roles } if roles == vec![RoleArg::Gs]));
    }

    #[test]
    fn unknown_role_is_a_usage_error_listing_the_valid_ones() {
        let err = Cli::try_parse_from(["tern", "start", "xx"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        for name in ["is", "gs", "ns", "js", "as", "all"] {
            assert!(text.contains(name), "{text}");
        }
    }
}
