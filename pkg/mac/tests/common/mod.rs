//! Shared test helpers: contexts, uplinks and hex.
#![allow(dead_code)]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use band::FrequencyPlan;
use lorawan::MacCommand;
use tern_api::v3::{self, MacVersion, PhyVersion};
use tern_mac::{DeviceMac, GatewayRx, MacConfig, MacContext, UplinkMac};

pub static CONFIG: LazyLock<MacConfig> = LazyLock::new(MacConfig::default);

/// 2026-01-01T00:00:00Z.
pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

pub fn ctx<'a>(
    plan: &str,
    settings: Option<&'a v3::MacSettings>,
    config: &'a MacConfig,
    now: SystemTime,
) -> MacContext<'a> {
    MacContext {
        plan: FrequencyPlan::by_id(plan).unwrap(),
        settings,
        config,
        now,
    }
}

/// A fresh ABP session.
pub fn session(plan: &str, mac: MacVersion) -> DeviceMac {
    DeviceMac::new(&ctx(plan, None, &CONFIG, t0()), mac, PhyVersion::Rp002V103).unwrap()
}

pub fn gws(snrs: &[f32]) -> Vec<GatewayRx> {
    snrs.iter()
        .map(|&snr| GatewayRx { snr, rssi: -100.0 })
        .collect()
}

pub fn uplink<'a>(
    commands: &'a [MacCommand],
    gateways: &'a [GatewayRx],
    f_cnt: u32,
    data_rate: u8,
) -> UplinkMac<'a> {
    UplinkMac {
        commands,
        adr: true,
        adr_ack_req: false,
        f_cnt,
        data_rate,
        frequency: 868_100_000,
        gateways,
        received_at: t0() + Duration::from_secs(u64::from(f_cnt) * 60),
        gps_time: None,
    }
}

pub fn hex(cmds: &[MacCommand]) -> String {
    let mut v = Vec::new();
    MacCommand::encode_all(cmds, &mut v).unwrap();
    hex::encode_upper(v)
}
