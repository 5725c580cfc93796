//! The `[application-server]` section of the configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::link::LinkConfig;

/// The `[application-server]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AsConfig {
    /// The link to the Network Server.
    pub link: LinkConfig,
    /// An application API key with `application:link`, for an AS outside the cluster: the
    /// link then authenticates with it instead of a cluster key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_server_api_key: Option<Secret>,
    /// The label of this AS's key-encryption key: the Join Server wraps AppSKeys for it.
    pub kek_label: String,
    /// Key-encryption keys by label, 16 bytes hex each; AppSKeys wrapped under any of them
    /// can be unwrapped (keep old labels while sessions wrapped under them are alive).
    pub keks: BTreeMap<String, Secret>,
    /// The MQTT server.
    pub mqtt: MqttConfig,
    /// Limits of the payload formatters.
    pub formatters: tern_formatters::Limits,
    /// The URL applications reach this process's HTTP server at, for the downlink URLs
    /// sent with webhook requests (`X-Downlink-Push`, `X-Downlink-Replace`).
    pub public_url: String,
    /// Webhook delivery and pub/sub settings.
    pub integrations: tern_integrations::IntegrationsConfig,
    /// The in-memory cache of the uplink path.
    pub cache: crate::cache::CacheConfig,
}

impl Default for AsConfig {
    fn default() -> Self {
        Self {
            link: LinkConfig::default(),
            network_server_api_key: None,
            // The Join Server's default AS label, so one process needs no configuration.
            kek_label: "as:local".to_owned(),
            keks: BTreeMap::new(),
            mqtt: MqttConfig::default(),
            formatters: tern_formatters::Limits::default(),
            public_url: "http://localhost:1885".to_owned(),
            integrations: tern_integrations::IntegrationsConfig::default(),
            cache: crate::cache::CacheConfig::default(),
        }
    }
}

/// The MQTT server the AS hosts for applications.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct MqttConfig {
    /// Plain TCP listen address; empty disables it.
    pub listen: String,
    /// TLS listen address, used when `cert` and `key` are set; empty disables it.
    pub tls_listen: String,
    /// PEM certificate chain for TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Messages queued for one client before it is disconnected as too slow.
    pub max_queued_messages_per_client: usize,
    /// Largest MQTT packet accepted from a client, in bytes.
    pub max_packet_size: usize,
    /// Time a client has to send CONNECT after opening the connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: std::time::Duration,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:1883".to_owned(),
            tls_listen: "0.0.0.0:8883".to_owned(),
            cert: None,
            key: None,
            max_queued_messages_per_client: 1024,
            max_packet_size: 256 * 1024,
            connect_timeout: std::time::Duration::from_secs(10),
        }
    }
}

impl MqttConfig {
    /// The plain listen address, `None` when disabled.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        parse_addr("application-server.mqtt.listen", &self.listen)
    }

    /// The TLS listen address, `None` when disabled or without certificate.
    pub fn tls_listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        if self.cert.is_none() && self.key.is_none() {
            return Ok(None);
        }
        if self.cert.is_none() || self.key.is_none() {
            return Err(
                "application-server.mqtt: `cert` and `key` must be set together for TLS".into(),
            );
        }
        parse_addr("application-server.mqtt.tls-listen", &self.tls_listen)
    }
}

fn parse_addr(field: &str, value: &str) -> Result<Option<SocketAddr>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|e| {
        format!(
            "{field}: invalid address {value:?}: {e}; expected IP:PORT such as \"0.0.0.0:1883\""
        )
    })
}

pub use tern_cluster::secret::Secret;
