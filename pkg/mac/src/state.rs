//! The persisted per-device MAC state and its constructors.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use band::{ChannelLayout, ChannelMask, FrequencyPlan, RegionParams};
use lorawan::mac::MAX_EIRP_DBM;
use lorawan::{Direction, MacCommand};
use prost::Message;
use tern_api::v3::{self, DeviceClass, MacVersion, PhyVersion};

use crate::{MacContext, MacStateError};

/// The MAC parameters a device uses (current) or should use (desired).
#[derive(Clone, PartialEq, Message)]
pub struct MacParams {
    /// RX1 delay in seconds (1..=15).
    #[prost(uint32, tag = "1")]
    pub rx1_delay: u32,
    /// RX1 data rate offset.
    #[prost(uint32, tag = "2")]
    pub rx1_dr_offset: u32,
    /// RX2 data rate index.
    #[prost(uint32, tag = "3")]
    pub rx2_data_rate: u32,
    /// RX2 frequency in Hz.
    #[prost(uint32, tag = "4")]
    pub rx2_frequency: u32,
    /// Dynamic-channel regions: the channel definitions by index (frequency 0 = undefined).
    /// Empty in fixed-channel regions, whose channels the region defines.
    #[prost(message, repeated, tag = "5")]
    pub channels: Vec<ChannelParams>,
    /// Enabled uplink channels: a 128-bit little-endian bitmap (bit i = channel i).
    #[prost(bytes = "vec", tag = "6")]
    pub channel_mask: Vec<u8>,
    /// Uplink data rate index.
    #[prost(uint32, tag = "7")]
    pub data_rate: u32,
    /// TX power index (0 = max EIRP).
    #[prost(uint32, tag = "8")]
    pub tx_power_index: u32,
    /// Transmissions per uplink (NbTrans, 1..=15).
    #[prost(uint32, tag = "9")]
    pub nb_trans: u32,
    /// Maximum aggregated duty cycle exponent (1/2^n; 0 = no limit).
    #[prost(uint32, tag = "10")]
    pub max_duty_cycle: u32,
    /// ADR_ACK_LIMIT exponent (limit = 2^n).
    #[prost(uint32, tag = "11")]
    pub adr_ack_limit_exp: u32,
    /// ADR_ACK_DELAY exponent (delay = 2^n).
    #[prost(uint32, tag = "12")]
    pub adr_ack_delay_exp: u32,
    /// Class B ping slot periodicity exponent, if known.
    #[prost(uint32, optional, tag = "13")]
    pub ping_slot_periodicity: Option<u32>,
    /// Class B ping slot frequency in Hz (0 = regional default).
    #[prost(uint32, tag = "14")]
    pub ping_slot_frequency: u32,
    /// Class B ping slot data rate index.
    #[prost(uint32, tag = "15")]
    pub ping_slot_data_rate: u32,
    /// Rejoin type 0 time limit exponent (1.1 RejoinParamSetupReq), if set.
    #[prost(uint32, optional, tag = "16")]
    pub rejoin_max_time_n: Option<u32>,
    /// Rejoin type 0 count limit exponent (1.1 RejoinParamSetupReq), if set.
    #[prost(uint32, optional, tag = "17")]
    pub rejoin_max_count_n: Option<u32>,
    /// Device class.
    #[prost(enumeration = "tern_api::v3::DeviceClass", tag = "18")]
    pub device_class: i32,
    /// Uplink dwell time limited to 400 ms.
    #[prost(bool, tag = "19")]
    pub uplink_dwell_time: bool,
    /// Downlink dwell time limited to 400 ms.
    #[prost(bool, tag = "20")]
    pub downlink_dwell_time: bool,
    /// MaxEIRP index of TxParamSetupReq (into `lorawan::mac::MAX_EIRP_DBM`).
    #[prost(uint32, tag = "21")]
    pub max_eirp_index: u32,
}

/// One channel of a dynamic-channel region.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct ChannelParams {
    /// Uplink frequency in Hz (0 = undefined).
    #[prost(uint32, tag = "1")]
    pub frequency: u32,
    /// Lowest data rate.
    #[prost(uint32, tag = "2")]
    pub min_dr: u32,
    /// Highest data rate.
    #[prost(uint32, tag = "3")]
    pub max_dr: u32,
    /// RX1 downlink frequency in Hz set by DlChannelReq (0 = the uplink frequency).
    #[prost(uint32, tag = "4")]
    pub dl_frequency: u32,
}

/// A request sent to the device and not answered yet.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct PendingRequest {
    /// The request, encoded as on the downlink (several LinkADRReq for a ChMask block).
    #[prost(bytes = "vec", tag = "1")]
    pub commands: Vec<u8>,
    /// Uplinks received since it was sent, without its answer.
    #[prost(uint32, tag = "2")]
    pub uplinks_since: u32,
    /// When it was sent, Unix milliseconds.
    #[prost(int64, tag = "3")]
    pub sent_at_ms: i64,
}

impl PendingRequest {
    /// The decoded request(s).
    pub fn decode_commands(&self) -> Vec<MacCommand> {
        MacCommand::decode_all(Direction::Downlink, &self.commands).unwrap_or_default()
    }

    /// The CID of the request.
    pub fn cid(&self) -> u8 {
        self.commands.first().copied().unwrap_or(0)
    }
}

/// How often requests with one CID were lost in a row.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct TimeoutCount {
    /// The command identifier.
    #[prost(uint32, tag = "1")]
    pub cid: u32,
    /// Consecutive lost attempts.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

/// One uplink of the ADR history.
#[derive(Clone, Copy, PartialEq, Message)]
pub struct AdrRecord {
    /// 32-bit FCnt.
    #[prost(uint32, tag = "1")]
    pub f_cnt: u32,
    /// Best SNR over the gateways, dB.
    #[prost(float, tag = "2")]
    pub max_snr: f32,
    /// Number of gateways.
    #[prost(uint32, tag = "3")]
    pub gateway_count: u32,
    /// Uplink data rate index.
    #[prost(uint32, tag = "4")]
    pub data_rate: u32,
    /// TX power index the device used (as the NS knows it).
    #[prost(uint32, tag = "5")]
    pub tx_power_index: u32,
}

/// The MAC state of one device session: persist it as bytes (`encode_to_vec`).
#[derive(Clone, PartialEq, Message)]
pub struct DeviceMac {
    /// Frequency plan ID.
    #[prost(string, tag = "1")]
    pub frequency_plan_id: String,
    /// LoRaWAN MAC version.
    #[prost(enumeration = "tern_api::v3::MacVersion", tag = "2")]
    pub mac_version: i32,
    /// Regional parameters version.
    #[prost(enumeration = "tern_api::v3::PhyVersion", tag = "3")]
    pub phy_version: i32,
    /// The session came from a join (OTAA); false for ABP.
    #[prost(bool, tag = "4")]
    pub otaa: bool,
    /// The parameters the device uses.
    #[prost(message, optional, tag = "5")]
    pub current: Option<MacParams>,
    /// The parameters the NS wants it to use.
    #[prost(message, optional, tag = "6")]
    pub desired: Option<MacParams>,
    /// Requests sent and not answered, oldest first.
    #[prost(message, repeated, tag = "7")]
    pub pending: Vec<PendingRequest>,
    /// Answers to the last uplink, encoded as on the downlink, for the next downlink.
    #[prost(bytes = "vec", tag = "8")]
    pub answers: Vec<u8>,
    /// The last uplinks (at most [`crate::adr::HISTORY_LEN`]), oldest first.
    #[prost(message, repeated, tag = "9")]
    pub adr_history: Vec<AdrRecord>,
    /// Uplinks since the last DevStatusAns (or the session start).
    #[prost(uint32, tag = "10")]
    pub uplinks_since_dev_status: u32,
    /// Last DevStatusAns (or the session start), Unix milliseconds.
    #[prost(int64, tag = "11")]
    pub last_dev_status_at_ms: i64,
    /// Last battery level (DevStatusAns: 0 external, 1..=254, 255 unknown).
    #[prost(uint32, optional, tag = "12")]
    pub battery: Option<u32>,
    /// Last demodulation margin of DevStatusAns, dB.
    #[prost(int32, optional, tag = "13")]
    pub margin: Option<i32>,
    /// Data rates the device rejected in LinkADRReq; ADR avoids them.
    #[prost(uint32, repeated, tag = "14")]
    pub rejected_data_rates: Vec<u32>,
    /// TX power indices the device rejected in LinkADRReq; ADR avoids them.
    #[prost(uint32, repeated, tag = "15")]
    pub rejected_tx_powers: Vec<u32>,
    /// Lost attempts per CID; at `MacConfig::max_attempts` the NS stops sending it.
    #[prost(message, repeated, tag = "16")]
    pub timeouts: Vec<TimeoutCount>,
    /// A ForceRejoinReq the NS was asked to send (1.1), encoded; sent once.
    #[prost(bytes = "vec", tag = "17")]
    pub force_rejoin: Vec<u8>,
    /// Session start, Unix milliseconds.
    #[prost(int64, tag = "18")]
    pub session_started_at_ms: i64,
    /// Requests the device rejected, encoded; not sent again until the settings change.
    #[prost(bytes = "vec", repeated, tag = "19")]
    pub rejected_requests: Vec<Vec<u8>>,
    /// Channel masks the device rejected in LinkADRReq (128-bit little-endian bitmaps).
    #[prost(bytes = "vec", repeated, tag = "20")]
    pub rejected_ch_masks: Vec<Vec<u8>>,
}

/// What the join-accept carries for the MAC layer (1.0.4 §6.2.3 / 1.1 §6.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinAcceptMac {
    /// RxDelay byte (RX1 delay in seconds, 1..=15).
    pub rx_delay: u8,
    /// DLSettings.RX1DRoffset.
    pub rx1_dr_offset: u8,
    /// DLSettings.RX2DataRate.
    pub rx2_data_rate: u8,
    /// The CFList (type 0 frequencies or type 1 channel mask), if the region and PHY
    /// version carry one for this plan.
    pub cf_list: Option<[u8; 16]>,
}

pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// Seconds between the Unix epoch and the GPS epoch (1980-01-06T00:00:00Z).
const GPS_EPOCH_UNIX_SECS: u64 = 315_964_800;
/// GPS − UTC in seconds (leap seconds since 1980; unchanged since 2017-01-01).
const GPS_LEAP_SECONDS: u64 = 18;

/// GPS time (since the GPS epoch) of a wall-clock time, with the current 18 leap seconds.
pub fn gps_time(t: SystemTime) -> Duration {
    let unix = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (unix + Duration::from_secs(GPS_LEAP_SECONDS))
        .saturating_sub(Duration::from_secs(GPS_EPOCH_UNIX_SECS))
}

pub(crate) fn mask_to_bytes(m: ChannelMask) -> Vec<u8> {
    m.0.to_le_bytes().to_vec()
}

pub(crate) fn mask_from_bytes(b: &[u8]) -> ChannelMask {
    let mut buf = [0u8; 16];
    let n = b.len().min(16);
    buf[..n].copy_from_slice(&b[..n]);
    ChannelMask(u128::from_le_bytes(buf))
}

/// Largest MaxEIRP index whose value does not exceed `dbm`.
pub(crate) fn max_eirp_index(dbm: f32) -> u32 {
    MAX_EIRP_DBM
        .iter()
        .rposition(|&v| f32::from(v) <= dbm)
        .unwrap_or(0) as u32
}

impl MacParams {
    /// The enabled uplink channels.
    pub fn mask(&self) -> ChannelMask {
        mask_from_bytes(&self.channel_mask)
    }

    /// Replace the enabled uplink channels.
    pub fn set_mask(&mut self, m: ChannelMask) {
        self.channel_mask.clear();
        self.channel_mask.extend_from_slice(&m.0.to_le_bytes());
    }

    /// Channels defined for the device: dynamic regions from `channels`, fixed regions all
    /// of the region's channels.
    pub fn defined(&self, params: &RegionParams) -> ChannelMask {
        match params.channel_layout {
            ChannelLayout::Dynamic { .. } => {
                let mut m = ChannelMask::empty();
                for (i, c) in self.channels.iter().enumerate() {
                    m.set(i, c.frequency != 0);
                }
                m
            }
            ChannelLayout::Fixed { .. } => params.default_channel_mask(),
        }
    }

    /// Uplink channel `i` (frequency and DR range), if defined.
    pub fn channel(&self, params: &RegionParams, i: usize) -> Option<band::Channel> {
        match params.channel_layout {
            ChannelLayout::Dynamic { .. } => {
                self.channels
                    .get(i)
                    .filter(|c| c.frequency != 0)
                    .map(|c| band::Channel {
                        frequency: c.frequency,
                        min_dr: c.min_dr as u8,
                        max_dr: c.max_dr as u8,
                    })
            }
            ChannelLayout::Fixed { .. } => params.uplink_channel(u8::try_from(i).ok()?),
        }
    }

    /// The device class.
    pub fn class(&self) -> DeviceClass {
        DeviceClass::try_from(self.device_class).unwrap_or(DeviceClass::ClassA)
    }

    /// The parameters a device uses after boot in `params`' region (RP002 defaults).
    pub(crate) fn boot(params: &RegionParams) -> Self {
        let mut p = MacParams {
            rx1_delay: 1,
            rx1_dr_offset: 0,
            rx2_data_rate: params.rx2_default().dr.into(),
            rx2_frequency: params.rx2_default().frequency,
            channels: Vec::new(),
            channel_mask: Vec::new(),
            data_rate: 0,
            tx_power_index: 0,
            nb_trans: 1,
            max_duty_cycle: 0,
            // ADR_ACK_LIMIT 64 = 2^6, ADR_ACK_DELAY 32 = 2^5 (RP002 §2.x defaults).
            adr_ack_limit_exp: 6,
            adr_ack_delay_exp: 5,
            ping_slot_periodicity: None,
            ping_slot_frequency: 0,
            ping_slot_data_rate: params.ping_slot().dr.into(),
            rejoin_max_time_n: None,
            rejoin_max_count_n: None,
            device_class: DeviceClass::ClassA as i32,
            uplink_dwell_time: params.uplink_dwell_time.default_on(),
            downlink_dwell_time: params.downlink_dwell_time.default_on(),
            max_eirp_index: max_eirp_index(params.default_max_eirp_dbm),
        };
        if let ChannelLayout::Dynamic { .. } = params.channel_layout {
            p.channels = params
                .default_channels
                .iter()
                .map(|c| ChannelParams {
                    frequency: c.frequency,
                    min_dr: c.min_dr.into(),
                    max_dr: c.max_dr.into(),
                    dl_frequency: 0,
                })
                .collect();
        }
        p.set_mask(params.default_channel_mask());
        p.data_rate = params
            .uplink_channels()
            .first()
            .map_or(0, |c| c.min_dr.into());
        p
    }
}

/// Check a device's MAC settings against its frequency plan: every field in range.
pub fn validate_settings(
    plan: &FrequencyPlan,
    settings: &v3::MacSettings,
) -> Result<(), MacStateError> {
    let params = plan.params();
    let bad = |field: &'static str, reason: String| MacStateError::InvalidSetting { field, reason };
    if let Some(c) = settings.class
        && DeviceClass::try_from(c).is_err()
    {
        return Err(bad("class", format!("{c} is not a device class")));
    }
    if let Some(d) = settings.rx1_delay
        && !(1..=15).contains(&d)
    {
        return Err(bad("rx1_delay", format!("{d} s is outside 1..=15")));
    }
    if let Some(o) = settings.rx1_data_rate_offset
        && o > params.max_rx1_dr_offset.into()
    {
        return Err(bad(
            "rx1_data_rate_offset",
            format!(
                "{o} is above the maximum {} of {}",
                params.max_rx1_dr_offset, params.region
            ),
        ));
    }
    if let Some(dr) = settings.rx2_data_rate_index {
        let ok = u8::try_from(dr)
            .ok()
            .and_then(|d| params.data_rate_entry(d))
            .is_some_and(|e| e.downlink);
        if !ok {
            return Err(bad(
                "rx2_data_rate_index",
                format!("DR{dr} is not a downlink data rate of {}", params.region),
            ));
        }
    }
    if let Some(f) = settings.rx2_frequency
        && (f % 100 != 0
            || f < u64::from(params.min_frequency)
            || f > u64::from(params.max_frequency))
    {
        return Err(bad(
            "rx2_frequency",
            format!(
                "{f} Hz is not a multiple of 100 Hz within {}..={} Hz",
                params.min_frequency, params.max_frequency
            ),
        ));
    }
    if let Some(m) = settings.adr_margin
        && !(m.is_finite() && (-30.0..=60.0).contains(&m))
    {
        return Err(bad("adr_margin", format!("{m} dB is outside -30..=60")));
    }
    if let Some(p) = settings.ping_slot_periodicity
        && p > 7
    {
        return Err(bad("ping_slot_periodicity", format!("{p} is above 7")));
    }
    Ok(())
}

fn check_version(mac: MacVersion, phy: PhyVersion) -> Result<(), MacStateError> {
    if mac == MacVersion::Unknown {
        return Err(MacStateError::InvalidVersion {
            field: "lorawan_version",
            reason: "not set",
        });
    }
    if phy == PhyVersion::Unknown {
        return Err(MacStateError::InvalidVersion {
            field: "lorawan_phy_version",
            reason: "not set",
        });
    }
    Ok(())
}

impl DeviceMac {
    /// A fresh session (ABP, or OTAA before [`DeviceMac::join_accept`]): current parameters
    /// are the region's boot defaults; desired ones follow the plan, the device's settings
    /// and the NS defaults.
    pub fn new(
        ctx: &MacContext<'_>,
        mac_version: MacVersion,
        phy_version: PhyVersion,
    ) -> Result<Self, MacStateError> {
        check_version(mac_version, phy_version)?;
        if let Some(s) = ctx.settings {
            validate_settings(ctx.plan, s)?;
        }
        let boot = MacParams::boot(ctx.plan.params());
        let now = unix_ms(ctx.now);
        let mut mac = DeviceMac {
            frequency_plan_id: ctx.plan.id.to_string(),
            mac_version: mac_version as i32,
            phy_version: phy_version as i32,
            otaa: false,
            desired: Some(boot.clone()),
            current: Some(boot),
            pending: Vec::new(),
            answers: Vec::new(),
            adr_history: Vec::new(),
            uplinks_since_dev_status: 0,
            last_dev_status_at_ms: now,
            battery: None,
            margin: None,
            rejected_data_rates: Vec::new(),
            rejected_tx_powers: Vec::new(),
            timeouts: Vec::new(),
            force_rejoin: Vec::new(),
            session_started_at_ms: now,
            rejected_requests: Vec::new(),
            rejected_ch_masks: Vec::new(),
        };
        mac.refresh_desired(ctx);
        // No MAC command switches class in 1.0.x: the device is in the configured class.
        let class = mac.desired().device_class;
        mac.current_mut().device_class = class;
        Ok(mac)
    }

    /// Read a persisted state.
    pub fn decode_state(bytes: &[u8]) -> Result<Self, MacStateError> {
        let mac = DeviceMac::decode(bytes).map_err(|e| MacStateError::Decode(e.to_string()))?;
        if FrequencyPlan::by_id(&mac.frequency_plan_id).is_none() {
            return Err(MacStateError::UnknownFrequencyPlan(mac.frequency_plan_id));
        }
        Ok(mac)
    }

    /// OTAA: the RxDelay, DLSettings and CFList for the join-accept; the device uses them
    /// (and the CFList channels) from the join-accept on, so they become current.
    pub fn join_accept(&mut self, ctx: &MacContext<'_>) -> JoinAcceptMac {
        self.refresh_desired(ctx);
        let params = ctx.plan.params();
        let d = self.desired().clone();
        self.otaa = true;
        let phy = self.phy();
        let cur = self.current_mut();
        cur.rx1_delay = d.rx1_delay;
        cur.rx1_dr_offset = d.rx1_dr_offset;
        cur.rx2_data_rate = d.rx2_data_rate;
        let cf_list = match params.channel_layout {
            ChannelLayout::Dynamic { max_channels } => {
                let freqs = ctx.plan.cf_list_frequencies();
                if freqs.is_empty() {
                    None
                } else {
                    let mut out = [0u8; 16];
                    let first = params.default_channels.len();
                    for (i, f) in freqs.iter().enumerate() {
                        let idx = first + i;
                        if idx >= usize::from(max_channels) {
                            break;
                        }
                        let b = (f / 100).to_le_bytes();
                        out[3 * i..3 * i + 3].copy_from_slice(&b[..3]);
                        // CFList channels use the plan's DR range (RP002 §2.x: DR0–DR5).
                        let (min_dr, max_dr) = d
                            .channels
                            .iter()
                            .find(|c| c.frequency == *f)
                            .map_or((0, 5), |c| (c.min_dr, c.max_dr));
                        if cur.channels.len() <= idx {
                            cur.channels.resize(idx + 1, ChannelParams::default());
                        }
                        cur.channels[idx] = ChannelParams {
                            frequency: *f,
                            min_dr,
                            max_dr,
                            dl_frequency: 0,
                        };
                        let mut m = cur.mask();
                        m.set(idx, true);
                        cur.set_mask(m);
                    }
                    Some(out)
                }
            }
            // CFList type 1 (channel mask) for fixed-channel regions exists from RP001
            // 1.0.3revA / 1.1revA on; older devices ignore a CFList.
            ChannelLayout::Fixed { .. } if phy as i32 >= PhyVersion::Rp001V103RevA as i32 => {
                let mask = ctx.plan.channel_mask();
                let cf = params.cf_list_ch_masks(mask);
                if cf.is_some() {
                    cur.set_mask(mask);
                }
                cf
            }
            ChannelLayout::Fixed { .. } => None,
        };
        let cur = self.current().clone();
        JoinAcceptMac {
            rx_delay: cur.rx1_delay as u8,
            rx1_dr_offset: cur.rx1_dr_offset as u8,
            rx2_data_rate: cur.rx2_data_rate as u8,
            cf_list,
        }
    }

    /// The MAC version.
    pub fn mac(&self) -> MacVersion {
        MacVersion::try_from(self.mac_version).unwrap_or(MacVersion::MacV103)
    }

    /// The PHY version.
    pub fn phy(&self) -> PhyVersion {
        PhyVersion::try_from(self.phy_version).unwrap_or(PhyVersion::Rp002V104)
    }

    /// True for LoRaWAN 1.1 sessions.
    pub fn is_1_1(&self) -> bool {
        self.mac() == MacVersion::MacV11
    }

    pub(crate) fn at_least(&self, v: MacVersion) -> bool {
        self.mac_version >= v as i32
    }

    /// The parameters the device uses.
    pub fn current(&self) -> &MacParams {
        self.current
            .as_ref()
            .expect("constructors always set current")
    }

    /// The parameters the NS wants the device to use.
    pub fn desired(&self) -> &MacParams {
        self.desired
            .as_ref()
            .expect("constructors always set desired")
    }

    pub(crate) fn current_mut(&mut self) -> &mut MacParams {
        self.current.get_or_insert_with(Default::default)
    }

    pub(crate) fn desired_mut(&mut self) -> &mut MacParams {
        self.desired.get_or_insert_with(Default::default)
    }

    /// RX1 delay for class A downlinks.
    pub fn rx1_delay(&self) -> Duration {
        Duration::from_secs(u64::from(self.current().rx1_delay.max(1)))
    }

    /// RX2 (and class C) frequency in Hz and data rate index.
    pub fn rx2(&self) -> (u32, u8) {
        let c = self.current();
        (c.rx2_frequency, c.rx2_data_rate as u8)
    }

    /// The RX1 data rate for an uplink at `uplink_dr`, with the current RX1 offset and
    /// downlink dwell time.
    pub fn rx1_data_rate(
        &self,
        params: &RegionParams,
        uplink_dr: u8,
    ) -> Result<u8, band::BandError> {
        let c = self.current();
        params.rx1_data_rate(uplink_dr, c.rx1_dr_offset as u8, c.downlink_dwell_time)
    }

    /// The RX1 frequency for an uplink at `uplink_frequency` (honours DlChannelReq).
    pub fn rx1_frequency(
        &self,
        params: &RegionParams,
        uplink_frequency: u32,
    ) -> Result<u32, band::BandError> {
        if let Some(c) = self
            .current()
            .channels
            .iter()
            .find(|c| c.frequency == uplink_frequency && c.dl_frequency != 0)
        {
            return Ok(c.dl_frequency);
        }
        params.rx1_frequency(uplink_frequency)
    }

    /// The device class in use.
    pub fn device_class(&self) -> DeviceClass {
        self.current().class()
    }

    /// Ask for a ForceRejoinReq (1.1) in the next downlink; ignored for 1.0.x sessions.
    pub fn request_force_rejoin(&mut self, req: lorawan::mac::ForceRejoinReq) {
        if !self.is_1_1() {
            return;
        }
        let mut out = Vec::new();
        if MacCommand::ForceRejoinReq(req).encode(&mut out).is_ok() {
            self.force_rejoin = out;
        }
    }

    /// Set the desired periodic rejoin limits (1.1 RejoinParamSetupReq): 2^(time_n+10) s
    /// and 2^(count_n+4) uplinks.
    pub fn set_desired_rejoin_params(&mut self, max_time_n: u8, max_count_n: u8) {
        let d = self.desired_mut();
        d.rejoin_max_time_n = Some(u32::from(max_time_n.min(15)));
        d.rejoin_max_count_n = Some(u32::from(max_count_n.min(15)));
    }

    /// Ask the device to receive RX1 of uplink channel `ch_index` on `frequency` Hz
    /// (DlChannelReq, dynamic-channel regions, 1.0.2 and later); 0 = the uplink frequency.
    pub fn set_desired_dl_channel(&mut self, ch_index: u8, frequency: u32) {
        if let Some(c) = self.desired_mut().channels.get_mut(usize::from(ch_index)) {
            c.dl_frequency = frequency;
        }
    }

    /// Recompute the desired parameters the plan, settings and NS defaults determine (ADR
    /// owns the data rate, TX power and NbTrans; rejoin parameters are set on request).
    pub(crate) fn refresh_desired(&mut self, ctx: &MacContext<'_>) {
        let params = ctx.plan.params();
        let s = ctx.settings.cloned().unwrap_or_default();
        let cfg = ctx.config;
        let supports_tx_param = params.tx_param_setup_req && self.at_least(MacVersion::MacV102);
        let is_1_1 = self.is_1_1();
        // Disjoint borrows of the two parameter sets; no copies on the uplink path.
        let cur = self.current.get_or_insert_with(Default::default);
        let d = self.desired.get_or_insert_with(Default::default);
        d.rx1_delay = s
            .rx1_delay
            .or(cfg.rx1_delay.map(u32::from))
            .unwrap_or(1)
            .clamp(1, 15);
        d.rx1_dr_offset = s
            .rx1_data_rate_offset
            .or(cfg.rx1_data_rate_offset.map(u32::from))
            .unwrap_or(0)
            .min(params.max_rx1_dr_offset.into());
        d.rx2_data_rate = s.rx2_data_rate_index.unwrap_or(ctx.plan.rx2.dr.into());
        d.rx2_frequency = s
            .rx2_frequency
            .and_then(|f| u32::try_from(f).ok())
            .unwrap_or(ctx.plan.rx2.frequency);
        match params.channel_layout {
            ChannelLayout::Dynamic { max_channels } => {
                let plan_channels = &ctx.plan.uplink_channels
                    [..ctx.plan.uplink_channels.len().min(max_channels.into())];
                d.channels
                    .resize(plan_channels.len(), ChannelParams::default());
                for (w, c) in d.channels.iter_mut().zip(plan_channels) {
                    // The downlink frequency is not part of a plan: keep what was asked
                    // for (DeviceMac::set_desired_dl_channel).
                    *w = ChannelParams {
                        frequency: c.frequency,
                        min_dr: c.min_dr.into(),
                        max_dr: c.max_dr.into(),
                        dl_frequency: w.dl_frequency,
                    };
                }
                d.set_mask(ChannelMask::first_n(plan_channels.len()));
            }
            ChannelLayout::Fixed { .. } => {
                d.channels.clear();
                d.set_mask(ctx.plan.channel_mask());
            }
        }
        d.max_duty_cycle = cfg
            .max_duty_cycle
            .map_or(cur.max_duty_cycle, |v| u32::from(v.min(15)));
        if is_1_1 {
            d.adr_ack_limit_exp = cfg
                .adr_ack_limit_exp
                .map_or(cur.adr_ack_limit_exp, |v| u32::from(v.min(15)));
            d.adr_ack_delay_exp = cfg
                .adr_ack_delay_exp
                .map_or(cur.adr_ack_delay_exp, |v| u32::from(v.min(15)));
        } else {
            d.adr_ack_limit_exp = cur.adr_ack_limit_exp;
            d.adr_ack_delay_exp = cur.adr_ack_delay_exp;
        }
        d.device_class = s.class.unwrap_or(DeviceClass::ClassA as i32);
        d.ping_slot_periodicity = s.ping_slot_periodicity.or(cur.ping_slot_periodicity);
        if supports_tx_param {
            d.uplink_dwell_time = ctx.plan.uplink_dwell_time;
            d.downlink_dwell_time = ctx.plan.downlink_dwell_time;
            d.max_eirp_index = max_eirp_index(ctx.plan.max_eirp_dbm);
        } else {
            d.uplink_dwell_time = cur.uplink_dwell_time;
            d.downlink_dwell_time = cur.downlink_dwell_time;
            d.max_eirp_index = cur.max_eirp_index;
        }
        if !is_1_1 {
            // The class of a 1.0.x device is configured, not negotiated.
            cur.device_class = d.device_class;
        }
    }

    /// Back to the boot defaults (1.1 ResetInd): current parameters, pending requests,
    /// ADR history and rejection memory; the session's identity is kept.
    pub(crate) fn reset_to_boot(&mut self, ctx: &MacContext<'_>) {
        let boot = MacParams::boot(ctx.plan.params());
        self.current = Some(boot.clone());
        self.desired = Some(boot);
        self.pending.clear();
        self.adr_history.clear();
        self.rejected_data_rates.clear();
        self.rejected_tx_powers.clear();
        self.timeouts.clear();
        self.force_rejoin.clear();
        self.rejected_requests.clear();
        self.rejected_ch_masks.clear();
        self.uplinks_since_dev_status = 0;
        self.last_dev_status_at_ms = unix_ms(ctx.now);
        self.refresh_desired(ctx);
        let class = self.desired().device_class;
        self.current_mut().device_class = class;
    }

    /// Remember a request the device rejected (at most 32, oldest dropped first).
    pub(crate) fn remember_rejected(&mut self, req: &MacCommand) {
        let mut b = Vec::new();
        if req.encode(&mut b).is_ok() && !self.rejected_requests.contains(&b) {
            if self.rejected_requests.len() >= 32 {
                self.rejected_requests.remove(0);
            }
            self.rejected_requests.push(b);
        }
    }

    /// Whether the device rejected exactly this request before.
    pub(crate) fn rejected_before(&self, req: &MacCommand) -> bool {
        let mut b = Vec::new();
        req.encode(&mut b).is_ok() && self.rejected_requests.contains(&b)
    }

    /// Whether a request with this CID is pending.
    pub fn is_pending(&self, cid: u8) -> bool {
        self.pending.iter().any(|p| p.cid() == cid)
    }

    /// The API view of the state.
    pub fn to_api(&self) -> v3::MacState {
        let c = self.current();
        let channel_frequencies =
            match FrequencyPlan::by_id(&self.frequency_plan_id).map(|p| p.params()) {
                Some(params) => {
                    let mask = c.mask();
                    let n = match params.channel_layout {
                        ChannelLayout::Dynamic { .. } => c.channels.len(),
                        ChannelLayout::Fixed { .. } => params.max_uplink_channels().into(),
                    };
                    (0..n)
                        .map(|i| {
                            if mask.is_enabled(i) {
                                c.channel(params, i).map_or(0, |ch| u64::from(ch.frequency))
                            } else {
                                0
                            }
                        })
                        .collect()
                }
                None => Vec::new(),
            };
        v3::MacState {
            lorawan_version: self.mac_version,
            device_class: c.device_class,
            rx1_delay: c.rx1_delay,
            rx1_data_rate_offset: c.rx1_dr_offset,
            rx2_data_rate_index: c.rx2_data_rate,
            rx2_frequency: c.rx2_frequency.into(),
            adr_data_rate_index: c.data_rate,
            adr_tx_power_index: c.tx_power_index,
            adr_nb_trans: c.nb_trans,
            channel_frequencies,
            pending_requests: self
                .pending
                .iter()
                .map(|p| pending_name(p.cid()).to_string())
                .collect(),
        }
    }
}

/// The API name of a request (`LINK_ADR`, `DEV_STATUS`, …) by CID.
pub(crate) fn pending_name(cid: u8) -> &'static str {
    match cid {
        0x01 => "RESET",
        0x02 => "LINK_CHECK",
        0x03 => "LINK_ADR",
        0x04 => "DUTY_CYCLE",
        0x05 => "RX_PARAM_SETUP",
        0x06 => "DEV_STATUS",
        0x07 => "NEW_CHANNEL",
        0x08 => "RX_TIMING_SETUP",
        0x09 => "TX_PARAM_SETUP",
        0x0A => "DL_CHANNEL",
        0x0B => "REKEY",
        0x0C => "ADR_PARAM_SETUP",
        0x0D => "DEVICE_TIME",
        0x0E => "FORCE_REJOIN",
        0x0F => "REJOIN_PARAM_SETUP",
        0x10 => "PING_SLOT_INFO",
        0x11 => "PING_SLOT_CHANNEL",
        0x12 => "BEACON_TIMING",
        0x13 => "BEACON_FREQ",
        0x20 => "DEVICE_MODE",
        _ => "UNKNOWN",
    }
}
