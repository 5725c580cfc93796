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
    /// Administer the Identity Server's registry offline, directly on the configured store
    /// (no running server needed): for recovery and scripts.
    Admin {
        /// What to do.
        #[command(subcommand)]
        command: AdminCommand,
    },
}

/// `tern admin ...`: secrets are printed once, on stdout.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a user; prints the password (a random one unless --password is given).
    CreateUser {
        /// The user ID: lowercase letters, digits and dashes, 3 to 36 characters.
        user_id: String,
        /// The password (at least 8 characters) [default: a random one, printed]
        #[arg(long, env = "TERN_ADMIN_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Primary e-mail address.
        #[arg(long, default_value = "")]
        email: String,
        /// Make the user an administrator.
        #[arg(long)]
        admin: bool,
    },
    /// Create an API key and print it (the only time it is shown).
    CreateApiKey {
        /// Whose key: user:ID, organization:ID, application:ID or gateway:ID (a bare ID is a user).
        #[arg(long, default_value = "user:admin")]
        entity: String,
        /// Name of the key.
        #[arg(long, default_value = "")]
        name: String,
        /// Comma-separated rights, e.g. all or application:info,application:devices:read.
        #[arg(long, value_delimiter = ',', default_value = "all")]
        rights: Vec<String>,
        /// Expiry after now, e.g. 30d or 12h [default: never]
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// Set a user's password; prints it (a random one unless --password is given).
    SetPassword {
        /// The user ID.
        user_id: String,
        /// The new password (at least 8 characters) [default: a random one, printed]
        #[arg(long, env = "TERN_ADMIN_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
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
