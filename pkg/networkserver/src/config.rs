//! `[network-server]`: the Network Server's configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use lorawan::{Aes128Key, DevAddr, NetId};
use serde::{Deserialize, Serialize};

/// The Network Server's configuration (`[network-server]` in `tern.toml`).
///
/// ```toml
/// [network-server]
/// net-id = "000013"
/// dev-addr-prefixes = ["26000000/7"]
/// dedup-window = "200ms"
/// cooldown = "60s"
/// rx1-delay = 1
/// default-frequency-plan = "EU_863_870"
/// adr-margin = 15.0
/// max-downlink-retries = 3
/// f-opts-counter-variant = "original-1-1"
/// join-concurrency = 64
/// join-accept-margin = "200ms"
/// [network-server.link]
/// outbox-limit = 10000
/// [network-server.key-encryption-keys]
/// "ns:default" = "000102030405060708090a0b0c0d0e0f"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NsConfig {
    /// The NetID of the network; DevAddrs are assigned inside it.
    pub net_id: NetId,
    /// DevAddr prefixes (`"26000000/7"`) to assign from; empty: the NetID's whole range.
    pub dev_addr_prefixes: Vec<String>,
    /// How long copies of one frame are collected before it is processed.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// How long after its window a frame is remembered, so that late copies count as
    /// duplicates instead of being processed again.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// RX1 delay in seconds (1..=15) of devices whose MAC settings do not set one.
    pub rx1_delay: u8,
    /// Frequency plan of devices that have none.
    pub default_frequency_plan: String,
    /// ADR margin in dB of devices whose MAC settings do not set one.
    pub adr_margin: f32,
    /// Retransmissions of an unacknowledged confirmed downlink before it is given up
    /// (`downlink_nack`), unless the device's MAC settings say otherwise.
    pub max_downlink_retries: u32,
    /// `[network-server.link]`: the AS↔NS link.
    pub link: NsLinkConfig,
    /// Key-encryption keys of this NS, by label (`"ns:default"` → 32 hex digits), to unwrap
    /// the network session keys the Join Server wraps for it.
    pub key_encryption_keys: BTreeMap<String, String>,
    /// How LoRaWAN 1.1 devices whose MAC settings do not say encrypt FOpts: `"errata"` or
    /// `"original-1-1"` (the default, what this NS always did, so that registered devices
    /// keep working).
    pub f_opts_counter_variant: FOptsVariant,
    /// Join-requests processed at once (Join Server call and store writes); the others wait
    /// their turn in arrival order, so that under a burst the first are answered in time
    /// instead of all of them late.
    pub join_concurrency: usize,
    /// How long before its receive window opens a join-accept must be ready to go to the
    /// Gateway Server. A join-request that cannot make RX2 with this margin is dropped
    /// (`too_late`); one that cannot make RX1 is answered in RX2 only.
    #[serde(with = "humantime_serde")]
    pub join_accept_margin: Duration,
}

/// The FOpts encryption block layout of a LoRaWAN 1.1 device (the 1.1 errata changed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum FOptsVariant {
    /// The errata: FCntUp/NFCntDown with `a[4] = 1`, AFCntDown with `a[4] = 2` for downlinks
    /// with FPort > 0, `a[15] = 1`.
    #[serde(rename = "errata")]
    Errata,
    /// LoRaWAN 1.1 as first published: `a[4] = a[15] = 0`.
    #[default]
    #[serde(rename = "original-1-1")]
    Original11,
}

impl Default for NsConfig {
    fn default() -> Self {
        Self {
            net_id: NetId([0, 0, 0x13]),
            dev_addr_prefixes: Vec::new(),
            dedup_window: Duration::from_millis(200),
            cooldown: Duration::from_secs(60),
            rx1_delay: 1,
            default_frequency_plan: "EU_863_870".to_owned(),
            adr_margin: 15.0,
            max_downlink_retries: 3,
            link: NsLinkConfig::default(),
            key_encryption_keys: BTreeMap::new(),
            f_opts_counter_variant: FOptsVariant::default(),
            join_concurrency: 64,
            join_accept_margin: Duration::from_millis(200),
        }
    }
}

/// `[network-server.link]`: the outbox of the AS↔NS link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NsLinkConfig {
    /// Messages per application kept in the persisted outbox until an Application Server
    /// acknowledges them (sent or not, linked or not); beyond this, the oldest are dropped
    /// with an `ns.link.drop` event and `tern_ns_link_dropped_total{reason="outbox_full"}`.
    pub outbox_limit: usize,
}

impl Default for NsLinkConfig {
    fn default() -> Self {
        Self {
            outbox_limit: 10_000,
        }
    }
}

/// A DevAddr prefix: the first `len` bits of `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevAddrPrefix {
    /// The address bits (bits after `len` are zero).
    pub addr: DevAddr,
    /// Prefix length in bits, 1..=32.
    pub len: u8,
}

impl DevAddrPrefix {
    /// Parses `"26000000/7"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("dev-addr-prefixes: {s:?} is not ADDR/LEN"))?;
        let addr: DevAddr = addr
            .parse()
            .map_err(|e| format!("dev-addr-prefixes: {s:?}: {e}"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| (1..=32).contains(l))
            .ok_or_else(|| format!("dev-addr-prefixes: {s:?}: length must be 1..=32"))?;
        let mask = u32::MAX << (32 - u32::from(len));
        Ok(Self {
            addr: DevAddr::from_u32(addr.to_u32() & mask),
            len,
        })
    }

    /// An address of this prefix with the free bits taken from `random`.
    pub fn address(&self, random: u32) -> DevAddr {
        let mask = u32::MAX << (32 - u32::from(self.len));
        DevAddr::from_u32((self.addr.to_u32() & mask) | (random & !mask))
    }
}

impl NsConfig {
    /// Checks every field; the error names the field and says why.
    pub fn validate(&self) -> Result<(), String> {
        for p in &self.dev_addr_prefixes {
            DevAddrPrefix::parse(p)?;
        }
        if !(1..=15).contains(&self.rx1_delay) {
            return Err(format!("rx1-delay: {} is not in 1..=15", self.rx1_delay));
        }
        if band::FrequencyPlan::by_id(&self.default_frequency_plan).is_none() {
            return Err(format!(
                "default-frequency-plan: unknown frequency plan {:?}",
                self.default_frequency_plan
            ));
        }
        if self.dedup_window.is_zero() {
            return Err("dedup-window: must be above zero".to_owned());
        }
        if self.join_concurrency == 0 {
            return Err("join-concurrency: must be at least 1".to_owned());
        }
        if self.join_accept_margin >= band::JOIN_ACCEPT_DELAY1 {
            return Err(format!(
                "join-accept-margin: {:?} leaves no time to answer before RX1 ({} s)",
                self.join_accept_margin,
                band::JOIN_ACCEPT_DELAY1.as_secs()
            ));
        }
        if self.link.outbox_limit == 0 {
            return Err("link.outbox-limit: must be at least 1".to_owned());
        }
        self.keks()?;
        Ok(())
    }

    /// The DevAddr prefixes to assign from (the NetID's range when none is configured).
    pub fn prefixes(&self) -> Vec<DevAddrPrefix> {
        let parsed: Vec<_> = self
            .dev_addr_prefixes
            .iter()
            .filter_map(|p| DevAddrPrefix::parse(p).ok())
            .collect();
        if !parsed.is_empty() {
            return parsed;
        }
        let t = u32::from(self.net_id.net_type());
        let nwk_id_bits = DevAddr::prefix_for(self.net_id).nwk_id_bits().unwrap_or(6);
        vec![DevAddrPrefix {
            addr: DevAddr::prefix_for(self.net_id),
            len: (t + 1 + nwk_id_bits) as u8,
        }]
    }

    /// The parsed key-encryption keys.
    pub fn keks(&self) -> Result<BTreeMap<String, Aes128Key>, String> {
        self.key_encryption_keys
            .iter()
            .map(|(label, hex)| {
                hex.parse::<Aes128Key>()
                    .map(|k| (label.clone(), k))
                    .map_err(|e| format!("key-encryption-keys.{label}: {e}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_prefixes_parse() {
        let c = NsConfig::default();
        c.validate().unwrap();
        let p = DevAddrPrefix::parse("26000000/7").unwrap();
        assert_eq!(p.address(0xFFFF_FFFF).to_u32() >> 25, 0x26 >> 1);
        assert!(DevAddrPrefix::parse("26000000").is_err());
        let prefixes = c.prefixes();
        assert_eq!(prefixes.len(), 1);
        // NetID 000013 (type 0): DevAddrs 26xxxxxx/27xxxxxx.
        assert_eq!(prefixes[0].address(0).0[0] & 0xFE, 0x26);
    }

    #[test]
    fn toml_is_kebab_case_and_strict() {
        let c: NsConfig = toml::from_str("net-id = \"000013\"\ndedup-window = \"50ms\"\n").unwrap();
        assert_eq!(c.dedup_window, Duration::from_millis(50));
        assert!(toml::from_str::<NsConfig>("nope = 1").is_err());
        let c: NsConfig = toml::from_str("f-opts-counter-variant = \"errata\"\n").unwrap();
        assert_eq!(c.f_opts_counter_variant, FOptsVariant::Errata);
        assert!(toml::from_str::<NsConfig>("f-opts-counter-variant = \"1.1\"").is_err());
    }

    #[test]
    fn link_outbox_limit_parses_and_must_be_positive() {
        let c: NsConfig = toml::from_str("[link]\noutbox-limit = 10000\n").unwrap();
        assert_eq!(c, NsConfig::default());
        let c: NsConfig = toml::from_str("[link]\noutbox-limit = 0\n").unwrap();
        assert_eq!(
            c.validate().unwrap_err(),
            "link.outbox-limit: must be at least 1"
        );
    }
}
