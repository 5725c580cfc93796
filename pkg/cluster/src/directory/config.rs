//! The `[cluster]` options of the directory: etcd, or a static address per role.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Peer, PeerRole, PeerSet};

/// Where the options live in the configuration file, for error messages.
const SECTION: &str = "cluster";

/// A bad option: which key, which value and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value}: {reason}")]
pub struct ConfigError {
    /// The full key, e.g. `cluster.etcd.prefix`.
    pub key: String,
    /// The value as written (quoted), or `(not set)`.
    pub value: String,
    /// Why it is refused.
    pub reason: String,
}

impl ConfigError {
    fn new(key: &str, value: impl fmt::Debug, reason: impl Into<String>) -> Self {
        Self {
            key: format!("{SECTION}.{key}"),
            value: format!("{value:?}"),
            reason: reason.into(),
        }
    }

    fn missing(key: &str, reason: impl Into<String>) -> Self {
        Self {
            key: format!("{SECTION}.{key}"),
            value: "(not set)".to_owned(),
            reason: reason.into(),
        }
    }
}

/// The directory options, embedded in `[cluster]`.
///
/// Either `etcd` (dynamic membership) or static addresses, one per role, given as a gRPC URL
/// (`http://host:port`, `https://host:port`) or as `host:port` (meaning `http://`). Roles
/// started in this process need no address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DirectoryConfig {
    /// etcd membership; default none (static addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdConfig>,
    /// Address of the Identity Server; default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_server: Option<String>,
    /// Address of the Gateway Server; default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_server: Option<String>,
    /// Address of the Network Server; default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_server: Option<String>,
    /// Address of the Join Server; default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_server: Option<String>,
    /// Address of the Application Server; default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_server: Option<String>,
}

impl DirectoryConfig {
    /// The static address configured for `role`, as written.
    pub fn address(&self, role: PeerRole) -> Option<&str> {
        match role {
            PeerRole::IdentityServer => self.identity_server.as_deref(),
            PeerRole::GatewayServer => self.gateway_server.as_deref(),
            PeerRole::NetworkServer => self.network_server.as_deref(),
            PeerRole::JoinServer => self.join_server.as_deref(),
            PeerRole::ApplicationServer => self.application_server.as_deref(),
        }
    }

    /// Checks every option; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(etcd) = &self.etcd {
            etcd.validate()?;
            if let Some(role) = PeerRole::ALL
                .into_iter()
                .find(|r| self.address(*r).is_some())
            {
                return Err(ConfigError::new(
                    role.config_name(),
                    self.address(role).unwrap_or_default(),
                    "static addresses and `cluster.etcd` are exclusive: with etcd, every \
                     process registers its own address",
                ));
            }
        }
        self.static_peers().map(|_| ())
    }

    /// The peers given by the static addresses; roles at the same address form one peer,
    /// whose instance ID is that address.
    pub fn static_peers(&self) -> Result<PeerSet, ConfigError> {
        let mut set = PeerSet::default();
        for role in PeerRole::ALL {
            let Some(value) = self.address(role) else {
                continue;
            };
            let address = grpc_address(role.config_name(), value)?;
            let mut peer = set.remove(&address).unwrap_or_else(|| Peer {
                instance_id: address.clone(),
                address: address.clone(),
                roles: Default::default(),
            });
            peer.roles.insert(role);
            set.insert(peer);
        }
        Ok(set)
    }
}

/// etcd membership options, `[cluster.etcd]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members, e.g. `["http://10.0.0.5:2379"]`; `host:port` means
    /// `http://`. Required.
    pub endpoints: Vec<String>,
    /// Prefix of every key Tern writes; peers live under `<prefix>/peers/`. Default `/tern`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Time to live of the registration: a process that stops without deregistering
    /// disappears after it. Whole seconds, at least 2s. Default `10s`.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// User name, when etcd authentication is enabled. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password of `username`. Default none. Printed as `<redacted>`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted"
    )]
    pub password: Option<String>,
}

fn default_prefix() -> String {
    "/tern".to_owned()
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            prefix: default_prefix(),
            lease_ttl: default_lease_ttl(),
            username: None,
            password: None,
        }
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("lease_ttl", &self.lease_ttl)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl EtcdConfig {
    /// Checks every option; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.endpoint_urls()?;
        let prefix = &self.prefix;
        if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.len() < 2 {
            return Err(ConfigError::new(
                "etcd.prefix",
                prefix,
                "must start with `/` and not end with `/`, e.g. \"/tern\"",
            ));
        }
        if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::new(
                "etcd.prefix",
                prefix,
                "must not contain whitespace or control characters",
            ));
        }
        let ttl = self.lease_ttl;
        if ttl.subsec_nanos() != 0 || ttl < Duration::from_secs(2) {
            return Err(ConfigError::new(
                "etcd.lease-ttl",
                humantime::format_duration(ttl).to_string(),
                "must be whole seconds, at least 2s (etcd leases count in seconds)",
            ));
        }
        match (&self.username, &self.password) {
            (Some(_), None) => Err(ConfigError::missing(
                "etcd.password",
                "required when `cluster.etcd.username` is set",
            )),
            (None, Some(_)) => Err(ConfigError::missing(
                "etcd.username",
                "required when `cluster.etcd.password` is set",
            )),
            _ => Ok(()),
        }
    }

    /// The endpoints as `http://host:port` URLs.
    pub fn endpoint_urls(&self) -> Result<Vec<String>, ConfigError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError::new(
                "etcd.endpoints",
                &self.endpoints,
                "at least one etcd client URL is needed, e.g. [\"http://127.0.0.1:2379\"]",
            ));
        }
        self.endpoints
            .iter()
            .map(|e| {
                let url = grpc_address("etcd.endpoints", e)?;
                if url.starts_with("https://") {
                    // etcd-client is built without TLS support.
                    return Err(ConfigError::new(
                        "etcd.endpoints",
                        e,
                        "TLS to etcd is not supported yet: use http://",
                    ));
                }
                Ok(url)
            })
            .collect()
    }

    pub(super) fn request_timeout(&self) -> Duration {
        (self.lease_ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(5))
    }
}

/// Normalizes a gRPC address option: `host:port` becomes `http://host:port`; the scheme must
/// be `http` or `https`, with a host and no path.
pub(crate) fn grpc_address(key: &str, value: &str) -> Result<String, ConfigError> {
    let with_scheme = if value.contains("://") {
        value.to_owned()
    } else {
        format!("http://{value}")
    };
    let uri: http::Uri = with_scheme.parse().map_err(|e| {
        ConfigError::new(
            key,
            value,
            format!("not an address ({e}): expected http://host:port or host:port"),
        )
    })?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(ConfigError::new(
                key,
                value,
                "the scheme must be http:// or https://",
            ));
        }
    }
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(ConfigError::new(key, value, "no host"));
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(ConfigError::new(
            key,
            value,
            "a gRPC address has no path: expected http://host:port",
        ));
    }
    if authority.as_str().contains('@') {
        return Err(ConfigError::new(
            key,
            value,
            "credentials in the address are not supported",
        ));
    }
    Ok(format!(
        "{}://{authority}",
        uri.scheme_str().unwrap_or("http")
    ))
}

fn redacted<S: serde::Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

/// `Duration` as a humantime string (`"10s"`, `"1m 30s"`).
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}): expected e.g. \"10s\" or \"1m 30s\""
            ))
        })
    }
}
