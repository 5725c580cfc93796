//! The server configuration: its shape, its defaults, and how it is layered.
//!
//! Layers, later ones winning: built-in defaults, the TOML file, environment variables
//! `TERN_<SECTION>__<KEY>` (`__` nests, `_` inside a key stands for `-`), then flags.
//! Every section rejects unknown keys, and every bad value is reported with its key, the
//! value and the reason.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The configuration file used when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "config/tern.toml";

/// Prefix of the environment variables that override the configuration.
pub const ENV_PREFIX: &str = "TERN_";

/// The complete server configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Directory for the embedded store, bootstrap credentials and other local state.
    pub data_dir: PathBuf,
    /// The HTTP server (health, readiness, metrics, later the REST API).
    pub http: HttpConfig,
    /// The gRPC server (health service, later the role APIs and links).
    pub grpc: GrpcConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
    /// Cluster membership and authentication between roles.
    pub cluster: ClusterConfig,
    /// Storage: embedded (default) or PostgreSQL.
    pub store: tern_store::StoreConfig,
    /// The event bus: in-process (default) or NATS.
    pub events: tern_events::EventsConfig,
    /// The Identity Server.
    pub identity_server: tern_identityserver::IsConfig,
    /// The Gateway Server.
    pub gateway_server: tern_gatewayserver::GsConfig,
    /// The Network Server.
    pub network_server: tern_networkserver::NsConfig,
    /// The Join Server.
    pub join_server: tern_joinserver::JsConfig,
    /// The Application Server.
    pub application_server: tern_applicationserver::AsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            http: HttpConfig::default(),
            grpc: GrpcConfig::default(),
            shutdown: ShutdownConfig::default(),
            log: LogConfig::default(),
            cluster: ClusterConfig::default(),
            store: tern_store::StoreConfig::default(),
            events: tern_events::EventsConfig::default(),
            gateway_server: tern_gatewayserver::GsConfig::default(),
            network_server: tern_networkserver::NsConfig::default(),
            join_server: tern_joinserver::JsConfig::default(),
            application_server: tern_applicationserver::AsConfig::default(),
            identity_server: tern_identityserver::IsConfig::default(),
        }
    }
}

/// The `[http]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpConfig {
    /// Address the HTTP server listens on.
    #[serde(with = "socket_addr")]
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1885)),
        }
    }
}

/// The `[grpc]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct GrpcConfig {
    /// Address the gRPC server listens on.
    #[serde(with = "socket_addr")]
    pub listen: SocketAddr,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1884)),
        }
    }
}

/// The `[shutdown]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ShutdownConfig {
    /// How long a graceful shutdown may take before the process exits non-zero anyway.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
        }
    }
}

/// The `[log]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogConfig {
    /// Level or filter directives; `RUST_LOG`, when set, replaces it.
    pub level: LogLevel,
    /// Output format of log lines.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: LogLevel("info".to_owned()),
            format: LogFormat::Text,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A validated log filter: a level (`info`) or directives (`info,tern=debug`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct LogLevel(String);

impl LogLevel {
    /// The filter as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Checks every comma-separated directive is `LEVEL` or `TARGET=LEVEL`.
    fn parse(value: &str) -> Result<Self, String> {
        use tracing_subscriber::filter::LevelFilter;
        let levels = "off, error, warn, info, debug, trace";
        if value.trim().is_empty() {
            return Err(format!("must not be empty; expected one of {levels}"));
        }
        for directive in value.split(',').map(str::trim) {
            let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
            if level.parse::<LevelFilter>().is_err() {
                return Err(format!(
                    "invalid value {value:?}: {level:?} is not a level; expected one of {levels}, \
                     or directives like \"info,tern=debug\""
                ));
            }
        }
        tracing_subscriber::EnvFilter::builder()
            .parse(value)
            .map_err(|e| format!("invalid value {value:?}: {e}"))?;
        Ok(Self(value.to_owned()))
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        LogLevel::parse(&value).map_err(serde::de::Error::custom)
    }
}

/// The `[cluster]` section: authentication between roles, and where the other roles are.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterConfig {
    /// Shared cluster keys that authenticate calls between roles; the first one signs.
    pub keys: Vec<Secret>,
    /// This process's name in the cluster; empty means `<hostname>:<gRPC port>`.
    pub instance_id: String,
    /// The gRPC address other processes reach this one at (`http://host:1884`); empty means
    /// `http://<hostname>:<gRPC port>`.
    pub advertise_address: String,
    /// The etcd peer directory; when unset, the static addresses below are used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<tern_cluster::directory::EtcdConfig>,
    /// Static address of the Identity Server, when it runs in another process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_server: Option<String>,
    /// Static address of the Gateway Server, when it runs in another process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_server: Option<String>,
    /// Static address of the Network Server, when it runs in another process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_server: Option<String>,
    /// Static address of the Join Server, when it runs in another process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_server: Option<String>,
    /// Static address of the Application Server, when it runs in another process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_server: Option<String>,
}

impl ClusterConfig {
    /// The peer directory part of this section.
    pub fn directory(&self) -> tern_cluster::directory::DirectoryConfig {
        tern_cluster::directory::DirectoryConfig {
            etcd: self.etcd.clone(),
            identity_server: self.identity_server.clone(),
            gateway_server: self.gateway_server.clone(),
            network_server: self.network_server.clone(),
            join_server: self.join_server.clone(),
            application_server: self.application_server.clone(),
        }
    }
}

pub use tern_cluster::secret::Secret;

/// Serde for listen addresses, with errors that show the value.
mod socket_addr {
    use super::*;

    pub(super) fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(addr)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let value = String::deserialize(d)?;
        value.parse().map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid value {value:?}: {e}; expected IP:PORT such as \"0.0.0.0:1885\" or \"[::]:1885\""
            ))
        })
    }
}

/// Serde for durations written like `10s`, `1m30s` or `500ms`.
mod duration {
    use super::*;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    /// A duration as written: text, or a bare number, which is refused with a hint.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Number(f64),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let value = match Written::deserialize(d)? {
            Written::Text(text) => text,
            Written::Number(n) => {
                return Err(serde::de::Error::custom(format!(
                    "invalid value {n}: a duration needs a unit, such as \"{n}s\" or \"{n}ms\""
                )));
            }
        };
        let parsed = humantime::parse_duration(&value).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid value {value:?}: {e}; expected a duration such as \"10s\", \"1m30s\" or \"500ms\""
            ))
        })?;
        if parsed.is_zero() {
            return Err(serde::de::Error::custom(format!(
                "invalid value {value:?}: must be greater than zero"
            )));
        }
        Ok(parsed)
    }
}

/// Where the configuration came from, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Only built-in defaults (plus environment and flags).
    Defaults,
    /// This TOML file (plus environment and flags).
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Defaults => f.write_str("built-in defaults"),
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A configuration that could not be loaded; its message names every bad key.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Loads the configuration: defaults, then `file` (or [`DEFAULT_CONFIG_FILE`] if present), then
/// the environment, then the `--data-dir` flag.
pub fn load(file: Option<&Path>, data_dir: Option<&Path>) -> Result<(Config, Origin), ConfigError> {
    let origin = match file {
        Some(path) if !path.is_file() => {
            return Err(ConfigError(format!(
                "configuration file {}: not found or not a file",
                path.display()
            )));
        }
        Some(path) => Origin::File(path.to_owned()),
        None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
            Origin::File(PathBuf::from(DEFAULT_CONFIG_FILE))
        }
        None => Origin::Defaults,
    };
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Origin::File(path) = &origin {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(env_provider());
    if let Some(dir) = data_dir {
        figment = figment.merge(Serialized::default("data-dir", dir));
    }
    let config = figment.extract::<Config>().map_err(describe)?;
    config.validate()?;
    Ok((config, origin))
}

impl Config {
    /// Checks what the types alone cannot: values that depend on each other, URLs, sizes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |e: &dyn fmt::Display| ConfigError(format!("invalid configuration: {e}"));
        self.store.validate().map_err(|e| invalid(&e))?;
        self.events.validate().map_err(|e| invalid(&e))?;
        self.identity_server.validate().map_err(|e| invalid(&e))?;
        self.cluster
            .directory()
            .validate()
            .map_err(|e| invalid(&e))?;
        Ok(())
    }
}

/// Environment variables `TERN_A__B_C` become key `a.b-c`; `TERN_CONFIG` is the flag's.
fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX)
        .ignore(&["CONFIG"])
        .split("__")
        .map(|key| key.as_str().replace('_', "-").into())
}

/// The environment variable that sets `key` (`http.listen` → `TERN_HTTP__LISTEN`).
pub fn env_var_for(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.to_ascii_uppercase()
            .replace('.', "__")
            .replace('-', "_")
    )
}

/// Turns figment's errors into one line per problem: key, what is wrong, and where it was set.
fn describe(errors: figment::Error) -> ConfigError {
    let mut lines = Vec::new();
    for error in errors {
        let mut path = error.path.clone();
        if let figment::error::Kind::UnknownField(field, _) = &error.kind {
            path.push(field.clone());
        }
        let key = if path.is_empty() {
            "(top level)".to_owned()
        } else {
            path.join(".")
        };
        let source = match &error.metadata {
            Some(md) if md.name.contains("environment") => {
                format!(" (set by {})", env_var_for(&key))
            }
            Some(md) => match &md.source {
                Some(figment::Source::File(file)) => format!(" (in {})", file.display()),
                _ if md.name.contains("Serialized") => " (set by a flag)".to_owned(),
                _ => String::new(),
            },
            None => String::new(),
        };
        lines.push(format!(
            "invalid configuration: {key}: {}{source}",
            error.kind
        ));
    }
    ConfigError(lines.join("\n"))
}

/// Renders the configuration as TOML, with every [`Secret`] masked.
pub fn to_toml(config: &Config) -> String {
    let mut shown = config.clone();
    shown.store = shown.store.masked();
    // Key-encryption keys given in clear: show that they are set, not what they are.
    for key in shown.network_server.key_encryption_keys.values_mut() {
        *key = Secret::MASK.to_owned();
    }
    if let Some(key) = &mut shown.join_server.root_key_kek {
        *key = Secret::MASK.to_owned();
    }
    for source in shown.join_server.keks.values_mut() {
        if let tern_joinserver::KeySource::Hex(key) = source {
            *key = Secret::MASK.to_owned();
        }
    }
    toml::to_string_pretty(&shown).expect("the configuration always serializes to TOML")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract::<Config>()
            .map_err(describe)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.http.listen.to_string(), "0.0.0.0:1885");
        assert_eq!(c.grpc.listen.to_string(), "0.0.0.0:1884");
        assert_eq!(c.shutdown.timeout, Duration::from_secs(10));
        assert_eq!(c.log.level.as_str(), "info");
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert!(c.cluster.keys.is_empty());
    }

    #[test]
    fn shipped_tern_toml_is_valid_and_equals_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/tern.toml");
        let text = std::fs::read_to_string(&path).expect("config/tern.toml exists");
        assert_eq!(from_toml(&text).unwrap(), Config::default());
    }

    #[test]
    fn shipped_tern_toml_examples_parse_when_uncommented() {
        // Every commented `key = value` line, uncommented, must still be a valid configuration.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/tern.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| {
                let t = l.trim_start();
                match t.strip_prefix("# ") {
                    Some(rest) if rest.contains(" = ") || rest.starts_with('[') => rest,
                    _ => l,
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = from_toml(&uncommented).unwrap_or_else(|e| panic!("{e}\n---\n{uncommented}"));
        assert_eq!(c, Config::default());
    }

    #[test]
    fn values_parse() {
        let c = from_toml(
            "data-dir = \"/var/lib/tern\"\n[http]\nlisten = \"127.0.0.1:8080\"\n[shutdown]\ntimeout = \"1m30s\"\n\
             [log]\nlevel = \"warn,tern=debug\"\nformat = \"json\"\n[cluster]\nkeys = [\"k1\", \"k2\"]\n",
        )
        .unwrap();
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.shutdown.timeout, Duration::from_secs(90));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level.as_str(), "warn,tern=debug");
        assert_eq!(c.cluster.keys[1].expose(), "k2");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/tern"));
    }

    #[test]
    fn bad_listen_names_key_value_and_reason() {
        let e = from_toml("[http]\nlisten = \"localhost:80:80\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.listen"), "{e}");
        assert!(e.contains("\"localhost:80:80\""), "{e}");
        assert!(e.contains("invalid socket address"), "{e}");
    }

    #[test]
    fn bad_duration_names_key_value_and_reason() {
        let e = from_toml("[shutdown]\ntimeout = \"ten seconds\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shutdown.timeout"), "{e}");
        assert!(e.contains("\"ten seconds\""), "{e}");
        let e = from_toml("[shutdown]\ntimeout = 10")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shutdown.timeout") && e.contains("\"10s\""),
            "{e}"
        );
        let e = from_toml("[shutdown]\ntimeout = \"0s\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("greater than zero"), "{e}");
    }

    #[test]
    fn bad_log_settings_are_rejected() {
        let e = from_toml("[log]\nlevel = \"loud\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.level") && e.contains("\"loud\""), "{e}");
        let e = from_toml("[log]\nformat = \"xml\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.format") && e.contains("xml"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let e = from_toml("[http]\nlisen = \"0.0.0.0:1\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.lisen"), "{e}");
        let e = from_toml("[nope]\nx = 1").unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn empty_cluster_key_is_rejected() {
        let e = from_toml("[cluster]\nkeys = [\"\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.keys"), "{e}");
    }

    #[test]
    fn secrets_are_masked_in_toml_and_debug() {
        let mut c = Config::default();
        c.cluster.keys = vec![Secret::try_from("hunter2".to_owned()).unwrap()];
        let text = to_toml(&c);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains(Secret::MASK), "{text}");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn printed_config_round_trips_apart_from_secrets() {
        let c = Config::default();
        assert_eq!(from_toml(&to_toml(&c)).unwrap(), c);
    }

    #[test]
    fn env_var_names() {
        assert_eq!(env_var_for("http.listen"), "TERN_HTTP__LISTEN");
        assert_eq!(env_var_for("data-dir"), "TERN_DATA_DIR");
    }
}
