//! The `[gateway-server]` configuration section.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Configuration of the Gateway Server (`[gateway-server]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct GsConfig {
    /// Semtech UDP packet forwarder listener.
    pub udp: UdpConfig,
    /// LoRa Basics Station LNS listener.
    pub basic_station: BasicStationConfig,
    /// Drop traffic of gateways the registry does not know (false only for test networks).
    pub require_registered_gateways: bool,
    /// Frequency plan of unregistered gateways (when they are allowed) and of registered
    /// gateways without one.
    pub default_frequency_plan: String,
    /// Smallest time between sending a downlink to a gateway and its transmission; the
    /// measured round-trip time is added on top.
    #[serde(with = "humantime_serde")]
    pub schedule_ahead: Duration,
    /// Furthest ahead a downlink may be handed to a gateway.
    #[serde(with = "humantime_serde")]
    pub max_schedule_ahead: Duration,
    /// Label gateway metrics with the gateway ID (high cardinality).
    pub metrics_per_gateway: bool,
    /// How long registry answers (found or not found) are cached.
    #[serde(with = "humantime_serde")]
    pub registry_cache_ttl: Duration,
    /// Per-gateway rate limit of incoming messages.
    pub rate_limit: RateLimitConfig,
}

impl Default for GsConfig {
    fn default() -> Self {
        Self {
            udp: UdpConfig::default(),
            basic_station: BasicStationConfig::default(),
            require_registered_gateways: true,
            default_frequency_plan: "EU_863_870".to_owned(),
            schedule_ahead: Duration::from_millis(50),
            max_schedule_ahead: Duration::from_secs(30),
            metrics_per_gateway: false,
            registry_cache_ttl: Duration::from_secs(60),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

/// `[gateway-server.udp]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct UdpConfig {
    /// Address to listen on; empty string-free: a socket address.
    pub listen: SocketAddr,
    /// A gateway without PULL_DATA for this long has no downlink path.
    #[serde(with = "humantime_serde")]
    pub pull_expiry: Duration,
    /// A gateway without any datagram for this long is disconnected.
    #[serde(with = "humantime_serde")]
    pub connection_expiry: Duration,
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1700)),
            pull_expiry: Duration::from_secs(30),
            connection_expiry: Duration::from_secs(60),
        }
    }
}

/// `[gateway-server.basic-station]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct BasicStationConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls-key`, the listener speaks TLS (wss://).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls-cert`.
    pub tls_key: Option<PathBuf>,
    /// How often the LNS pings a station.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A station that does not answer a ping (or send anything) within this time is dropped.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// NetIDs (hex, 6 digits) whose data uplinks stations forward; empty for all.
    pub net_ids: Vec<String>,
    /// JoinEUI ranges (`"lo-hi"`, hex) whose join-requests stations forward; empty for all.
    pub join_eui_ranges: Vec<String>,
}

impl Default for BasicStationConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1887)),
            tls_cert: None,
            tls_key: None,
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(60),
            net_ids: Vec::new(),
            join_eui_ranges: Vec::new(),
        }
    }
}

/// `[gateway-server.rate-limit]`: a token bucket per gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained messages per second per gateway.
    pub messages_per_second: f64,
    /// Messages a gateway may send at once above the sustained rate.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            messages_per_second: 50.0,
            burst: 200,
        }
    }
}

impl GsConfig {
    /// Checks the values that serde cannot: names the key and says why.
    pub fn validate(&self) -> Result<(), String> {
        if band::FrequencyPlan::by_id(&self.default_frequency_plan).is_none() {
            return Err(format!(
                "gateway-server.default-frequency-plan: unknown frequency plan {:?}",
                self.default_frequency_plan
            ));
        }
        if self.basic_station.tls_cert.is_some() != self.basic_station.tls_key.is_some() {
            return Err(
                "gateway-server.basic-station: set both tls-cert and tls-key, or neither"
                    .to_owned(),
            );
        }
        if self.rate_limit.messages_per_second <= 0.0 || self.rate_limit.burst == 0 {
            return Err(
                "gateway-server.rate-limit: messages-per-second and burst must be positive"
                    .to_owned(),
            );
        }
        if self.udp.pull_expiry.is_zero() || self.basic_station.ping_timeout.is_zero() {
            return Err(
                "gateway-server: udp.pull-expiry and basic-station.ping-timeout must be positive"
                    .to_owned(),
            );
        }
        for id in &self.basic_station.net_ids {
            if id.len() != 6 || hex::decode(id).is_err() {
                return Err(format!(
                    "gateway-server.basic-station.net-ids: {id:?} is not 6 hex digits"
                ));
            }
        }
        for r in &self.basic_station.join_eui_ranges {
            crate::bs::parse_eui_range(r)
                .map_err(|e| format!("gateway-server.basic-station.join-eui-ranges: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_section_parses_with_defaults() {
        let c: GsConfig = toml::from_str(
            r#"
            require-registered-gateways = false
            schedule-ahead = "80ms"
            metrics-per-gateway = true
            [udp]
            listen = "127.0.0.1:1700"
            pull-expiry = "45s"
            [basic-station]
            ping-interval = "10s"
            net-ids = ["000013"]
            join-eui-ranges = ["70B3D57ED0000000-70B3D57ED000FFFF"]
            [rate-limit]
            burst = 20
            "#,
        )
        .unwrap();
        assert!(!c.require_registered_gateways);
        assert_eq!(c.schedule_ahead, Duration::from_millis(80));
        assert_eq!(c.udp.pull_expiry, Duration::from_secs(45));
        assert_eq!(
            c.udp.connection_expiry,
            UdpConfig::default().connection_expiry
        );
        assert_eq!(c.basic_station.listen.port(), 1887);
        assert_eq!(c.rate_limit.burst, 20);
        c.validate().unwrap();

        let err = toml::from_str::<GsConfig>("[udp]\npull-expiry = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("pull-expiry"), "{err}");
        let err = toml::from_str::<GsConfig>("udp-listen = 1").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let bad = GsConfig {
            default_frequency_plan: "EU_999".into(),
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("default-frequency-plan")
        );
        let mut bad = GsConfig::default();
        bad.basic_station.join_eui_ranges = vec!["1-2".into()];
        assert!(bad.validate().unwrap_err().contains("join-eui-ranges"));
    }
}
