//! `ternctl`, Tern's admin command-line tool.
//!
//! Exit codes: 0 success, 1 error (one line on stderr with the server's message), 2 usage
//! error (from clap, or a flag value the server never saw).

#![warn(missing_docs)]

mod appserver;
mod client;
mod config;
mod devices;
mod entities;
mod events;
mod import;
mod lorawan_cmd;
mod output;
mod rights;
mod simulate;

use anyhow::{Context, Result};
use clap::{ArgGroup, CommandFactory, Parser, Subcommand};

use crate::client::{Api, RpcResult};
use crate::output::OutputFormat;

/// Tern's admin command-line tool.
#[derive(Parser)]
#[command(name = "ternctl", version, about = "Tern's admin command-line tool")]
struct Cli {
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    /// The server's gRPC address (http://host:1884); overrides TERN_SERVER and the config.
    #[arg(long, global = true, value_name = "URL")]
    server: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Store the server and credentials in ~/.config/ternctl/config.toml.
    #[command(group(ArgGroup::new("credentials").required(true).args(["api_key", "username"])))]
    Login {
        /// Log in with an API key (checked against the server first).
        #[arg(long)]
        api_key: Option<String>,
        /// Log in as this user with a password (asked for, or read with --password-stdin).
        #[arg(long)]
        username: Option<String>,
        /// Read the password from the first line of stdin.
        #[arg(long, requires = "username")]
        password_stdin: bool,
    },
    /// Forget the stored credentials (and revoke a password login's tokens).
    Logout,
    /// Users.
    #[command(subcommand, visible_alias = "user")]
    Users(entities::UsersCommand),
    /// Organizations.
    #[command(subcommand, visible_aliases = ["organization", "orgs"])]
    Organizations(entities::OrganizationsCommand),
    /// Applications.
    #[command(subcommand, visible_aliases = ["application", "apps"])]
    Applications(entities::ApplicationsCommand),
    /// Gateways.
    #[command(subcommand, visible_aliases = ["gateway", "gtw"])]
    Gateways(entities::GatewaysCommand),
    /// End devices.
    #[command(subcommand, visible_aliases = ["end-device", "devices", "dev"])]
    EndDevices(devices::DevicesCommand),
    /// Events.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Print a shell completion script: `source <(ternctl completion bash)`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Decode, encode and derive keys for LoRaWAN frames, offline.
    #[command(subcommand)]
    Lorawan(lorawan_cmd::LorawanCommand),
    /// Simulate a device and its gateways against a real Gateway Server.
    #[command(subcommand)]
    Simulate(simulate::SimulateCommand),
}

/// What a command runs with: the connections and the output format.
pub struct Ctx {
    /// The server connections.
    pub api: Api,
    /// How to print results.
    pub out: OutputFormat,
}

/// A mistake in the command line found after parsing: exit code 2, like clap's own.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn resolve(flag_server: Option<&str>) -> Result<(config::Resolved, config::StoredConfig)> {
    let path = config::default_path()?;
    let stored = config::load(&path)?;
    let env = |k: &str| std::env::var(k).ok();
    let resolved = config::resolve(
        flag_server,
        env(config::ENV_SERVER).as_deref(),
        env(config::ENV_API_KEY).as_deref(),
        &stored,
    )?;
    Ok((resolved, stored))
}

async fn login(
    server: Option<&str>,
    api_key: Option<String>,
    username: Option<String>,
    password_stdin: bool,
) -> Result<()> {
    let path = config::default_path()?;
    let mut stored = config::load(&path)?;
    // The server comes from the flag, TERN_SERVER or the file; the credentials are new.
    let env_server = std::env::var(config::ENV_SERVER).ok();
    let server = config::resolve(server, env_server.as_deref(), None, &stored)?.server;
    if let Some(key) = api_key {
        let resolved = config::Resolved {
            server: server.clone(),
            credentials: config::Credentials::ApiKey(key.clone()),
        };
        let info = Api::connect(&resolved)
            .await?
            .auth()
            .get_auth_info(tonic::Request::new(Default::default()))
            .await
            .ctx(|| format!("check the API key with {server}"))?;
        stored = config::StoredConfig {
            server: Some(server.clone()),
            api_key: Some(key),
            ..Default::default()
        };
        config::save(&path, &stored)?;
        let who = output::flatten(&output::to_json(&info.entity_ids.unwrap_or_default()))
            .into_iter()
            .map(|(_, v)| v)
            .collect::<Vec<_>>()
            .join("/");
        let key_id = info.api_key.map(|k| k.id).unwrap_or_default();
        eprintln!(
            "Logged in to {server} with API key {key_id} of {who}{}; saved in {}",
            if info.is_admin { " (admin)" } else { "" },
            path.display()
        );
    } else if let Some(user) = username {
        let password = entities::read_password(password_stdin, "Password: ")?;
        let resolved = config::Resolved {
            server: server.clone(),
            credentials: config::Credentials::None,
        };
        let tokens = Api::connect(&resolved)
            .await?
            .auth()
            .login(tern_api::v3::LoginRequest {
                user_id: user.clone(),
                password,
            })
            .await
            .ctx(|| format!("log in to {server} as {user}"))?;
        stored = config::StoredConfig {
            server: Some(server.clone()),
            username: Some(user.clone()),
            ..Default::default()
        };
        client::store_tokens(&mut stored, &tokens);
        config::save(&path, &stored)?;
        eprintln!(
            "Logged in to {server} as {user}; saved in {}",
            path.display()
        );
    }
    Ok(())
}

async fn logout() -> Result<()> {
    let path = config::default_path()?;
    let stored = config::load(&path)?;
    if let (Some(server), Some(rt)) = (&stored.server, &stored.refresh_token) {
        let resolved = config::Resolved {
            server: config::normalize_server(server)?,
            credentials: config::Credentials::None,
        };
        let revoked = match Api::connect(&resolved).await {
            Ok(api) => api
                .auth()
                .revoke_token(tern_api::v3::RevokeTokenRequest {
                    refresh_token: rt.clone(),
                })
                .await
                .ctx(|| "revoke the refresh token".into()),
            Err(e) => Err(e),
        };
        if let Err(e) = revoked {
            // The credentials are forgotten anyway; the token expires on its own.
            eprintln!("warning: {e:#}");
        }
    }
    let kept = config::StoredConfig {
        server: stored.server,
        ..Default::default()
    };
    config::save(&path, &kept)?;
    eprintln!("Logged out; the server address stays in {}", path.display());
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    let server = cli.server.as_deref();
    let command = match cli.command {
        Command::Lorawan(cmd) => {
            println!("{}", lorawan_cmd::run(cmd)?);
            return Ok(());
        }
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "ternctl",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        Command::Login {
            api_key,
            username,
            password_stdin,
        } => return login(server, api_key, username, password_stdin).await,
        Command::Logout => return logout().await,
        // Connects to the servers itself, and only when the device's keys come from them.
        Command::Simulate(cmd) => return simulate::run(server, cli.output, cmd).await,
        other => other,
    };
    let (resolved, _) = resolve(server)?;
    let ctx = Ctx {
        api: Api::connect(&resolved)
            .await
            .with_context(|| format!("connecting to {}", resolved.server))?,
        out: cli.output,
    };
    match command {
        Command::Users(cmd) => entities::users(&ctx, cmd).await,
        Command::Organizations(cmd) => entities::organizations(&ctx, cmd).await,
        Command::Applications(cmd) => entities::applications(&ctx, cmd).await,
        Command::Gateways(cmd) => entities::gateways(&ctx, cmd).await,
        Command::EndDevices(cmd) => devices::run(&ctx, cmd).await,
        Command::Events(cmd) => events::run(&ctx, cmd).await,
        Command::Lorawan(_)
        | Command::Completion { .. }
        | Command::Login { .. }
        | Command::Logout
        | Command::Simulate(_) => Ok(()),
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        // One line: the error and its causes, joined.
        eprintln!("error: {e:#}");
        let usage = e.chain().any(|c| c.is::<UsageError>());
        std::process::exit(if usage { 2 } else { 1 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_and_flags_parse() {
        let cli = Cli::try_parse_from([
            "ternctl",
            "end-devices",
            "create",
            "app-1",
            "dev-1",
            "--dev-eui",
            "70B3D57ED0000001",
            "--join-eui",
            "0000000000000000",
            "--frequency-plan",
            "EU_863_870",
            "--lorawan-version",
            "1.0.3",
            "--lorawan-phy-version",
            "RP002-1.0.3",
            "--app-key",
            "2B7E151628AED2A6ABF7158809CF4F3C",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
        // ABP without its keys, and root keys with ABP, are usage errors (exit code 2).
        let err = Cli::try_parse_from([
            "ternctl",
            "end-devices",
            "create",
            "a-1",
            "d-1",
            "--frequency-plan",
            "EU_863_870",
            "--lorawan-version",
            "1.0.3",
            "--lorawan-phy-version",
            "RP002-1.0.3",
            "--abp",
        ])
        .err()
        .unwrap();
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["ternctl", "login", "--server", "x:1"])
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), 2);
    }
}
