//! The pipeline's use of `tern-mac`: the MAC state lives in `NsState.mac`, uplink commands go
//! in, answers and requests come out for the next downlink. No MAC or ADR logic here.

use std::time::SystemTime;

use band::FrequencyPlan;
use lorawan::MacCommand;
use prost::Message;
use tern_api::v3;
use tern_events::{Event, EventBus, Fields, definitions as defs};
use tern_mac::{DeviceMac, GatewayRx, MacConfig, MacContext, UplinkMac};
use tracing::warn;

use crate::config::NsConfig;
use crate::devices::Device;

/// What the pipeline knows of an accepted uplink, for the MAC layer.
pub(crate) struct UplinkInfo<'a> {
    pub commands: &'a [MacCommand],
    pub adr: bool,
    pub adr_ack_req: bool,
    pub f_cnt: u32,
    pub dr: u8,
    pub frequency: u32,
    pub rx: &'a [v3::RxMetadata],
    pub received_at: SystemTime,
}

/// The Regional Parameters version to assume when a device does not name one.
fn default_phy(mac: v3::MacVersion) -> v3::PhyVersion {
    match mac {
        v3::MacVersion::MacV10 => v3::PhyVersion::Ts001V10,
        v3::MacVersion::MacV101 => v3::PhyVersion::Ts001V101,
        v3::MacVersion::MacV102 => v3::PhyVersion::Rp001V102RevB,
        v3::MacVersion::MacV103 => v3::PhyVersion::Rp001V103RevA,
        v3::MacVersion::MacV104 => v3::PhyVersion::Rp002V101,
        _ => v3::PhyVersion::Rp001V11RevB,
    }
}

/// The MAC layer of the NS: `tern-mac` with the NS's defaults.
pub(crate) struct MacLayer {
    config: MacConfig,
}

impl MacLayer {
    pub fn new(config: &NsConfig) -> Self {
        let mut mac = MacConfig {
            adr_margin: config.adr_margin,
            ..MacConfig::default()
        };
        if config.rx1_delay != 1 {
            mac.rx1_delay = Some(config.rx1_delay);
        }
        Self { config: mac }
    }

    fn ctx<'a>(
        &'a self,
        device: &'a v3::EndDevice,
        plan: &'static FrequencyPlan,
    ) -> MacContext<'a> {
        MacContext {
            plan,
            settings: device.mac_settings.as_ref(),
            config: &self.config,
            now: SystemTime::now(),
        }
    }

    /// A fresh MAC state for a session of `device` (OTAA: with the join-accept applied).
    pub fn fresh(
        &self,
        device: &v3::EndDevice,
        plan: &'static FrequencyPlan,
        otaa: bool,
    ) -> Result<(DeviceMac, Option<tern_mac::JoinAcceptMac>), String> {
        let ctx = self.ctx(device, plan);
        let version = v3::MacVersion::try_from(device.lorawan_version)
            .ok()
            .filter(|v| *v != v3::MacVersion::Unknown)
            .unwrap_or(v3::MacVersion::MacV103);
        let phy = v3::PhyVersion::try_from(device.lorawan_phy_version)
            .ok()
            .filter(|v| *v != v3::PhyVersion::Unknown)
            .unwrap_or_else(|| default_phy(version));
        let mut mac = DeviceMac::new(&ctx, version, phy).map_err(|e| e.to_string())?;
        let ja = otaa.then(|| mac.join_accept(&ctx));
        Ok((mac, ja))
    }

    /// The device's MAC state (a fresh ABP one when none is stored yet).
    fn state(&self, dev: &Device, plan: &'static FrequencyPlan) -> Option<DeviceMac> {
        if !dev.state.mac.is_empty()
            && let Ok(m) = DeviceMac::decode_state(&dev.state.mac)
        {
            return Some(m);
        }
        let device = dev.record.device.as_ref()?;
        match self.fresh(device, plan, false) {
            Ok((m, _)) => Some(m),
            Err(e) => {
                warn!(error = %e, device = %dev.key(), "no MAC state for the device");
                None
            }
        }
    }

    fn store(dev: &mut Device, mac: &DeviceMac) {
        dev.state.mac = mac.encode_to_vec();
        if let Some(d) = dev.record.device.as_mut() {
            d.mac_state = Some(mac.to_api());
        }
    }

    /// Handles the MAC side of an accepted uplink; true when a downlink is required.
    pub fn handle_uplink(
        &self,
        dev: &mut Device,
        plan: &'static FrequencyPlan,
        up: &UplinkInfo<'_>,
        ids: &v3::EndDeviceIdentifiers,
        cids: &[String],
        events: &EventBus,
    ) -> bool {
        let Some(mut mac) = self.state(dev, plan) else {
            return false;
        };
        let Some(device) = dev.record.device.clone() else {
            return false;
        };
        let gateways: Vec<GatewayRx> = up
            .rx
            .iter()
            .map(|m| GatewayRx {
                snr: m.snr,
                rssi: m.rssi,
            })
            .collect();
        let gps_time = up.rx.iter().find_map(|m| m.gps_time).and_then(|t| {
            t.to_datetime()
                .map(SystemTime::from)
                .map(tern_mac::gps_time)
        });
        let input = UplinkMac {
            commands: up.commands,
            adr: up.adr,
            adr_ack_req: up.adr_ack_req,
            f_cnt: up.f_cnt,
            data_rate: up.dr,
            frequency: up.frequency,
            gateways: &gateways,
            received_at: up.received_at,
            gps_time,
        };
        let out = mac.handle_uplink(&self.ctx(&device, plan), &input);
        for e in &out.events {
            publish_mac(
                events,
                ids,
                cids,
                &e.command,
                e.request.as_ref(),
                &e.rejected,
            );
        }
        if let Some(status) = out.dev_status
            && let Some(d) = dev.record.device.as_mut()
        {
            d.battery_level = Some(u32::from(status.battery));
        }
        Self::store(dev, &mac);
        out.downlink_required
    }

    /// The MAC commands of the next downlink, at most `budget` bytes; they are recorded as
    /// sent in the device's state (the caller drops the state if the downlink is not sent).
    pub fn next_commands(
        &self,
        dev: &mut Device,
        plan: &'static FrequencyPlan,
        budget: usize,
    ) -> Vec<MacCommand> {
        let Some(device) = dev.record.device.clone() else {
            return Vec::new();
        };
        let Some(mut mac) = self.state(dev, plan) else {
            return Vec::new();
        };
        let cmds = mac.next_commands(&self.ctx(&device, plan), budget);
        Self::store(dev, &mac);
        cmds
    }

    /// RX1 delay (s), RX1 data rate offset, RX2 frequency and RX2 data rate in use.
    pub fn rx_params(
        &self,
        dev: &Device,
        plan: &'static FrequencyPlan,
        config: &NsConfig,
    ) -> (u8, u8, u32, u8) {
        if let Some(mac) = self.state(dev, plan) {
            let c = mac.current();
            let (f, dr) = mac.rx2();
            return (c.rx1_delay.clamp(1, 15) as u8, c.rx1_dr_offset as u8, f, dr);
        }
        let rx2 = plan.params().rx2_default();
        (config.rx1_delay, 0, rx2.frequency, rx2.dr)
    }
}

/// Publishes one MAC exchange as its catalogue event.
fn publish_mac(
    events: &EventBus,
    ids: &v3::EndDeviceIdentifiers,
    cids: &[String],
    command: &MacCommand,
    request: Option<&MacCommand>,
    rejected: &[tern_mac::Rejection],
) {
    let name = tern_mac::event_name(command);
    let Some(info) = defs::lookup(name) else {
        return;
    };
    let def = defs::Definition::<Fields>::new(info.name, info.description);
    let mut fields = Fields::new().with("command", format!("{command:?}"));
    if let Some(r) = request {
        fields = fields.with("request", format!("{r:?}"));
    }
    if !rejected.is_empty() {
        fields = fields.with(
            "rejected",
            rejected
                .iter()
                .map(|r| format!("{r:?}"))
                .collect::<Vec<_>>(),
        );
    }
    events.publish(
        Event::new(&def)
            .with_identifiers([ids])
            .with_correlation_ids(cids.iter().cloned())
            .with_data(&fields),
    );
}
