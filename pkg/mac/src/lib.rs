//! The Network Server's MAC layer: per-device MAC state, MAC command exchanges and ADR.
//!
//! Pure and synchronous: no I/O, no clock (every time comes in through the inputs), no
//! async. The NS calls it from its uplink and downlink pipeline:
//!
//! 1. a session starts: [`DeviceMac::new`] (ABP, or OTAA before the join-accept), then for
//!    OTAA [`DeviceMac::join_accept`] gives the RxDelay, DLSettings and CFList the
//!    join-accept carries and records them as the device's current parameters;
//! 2. every accepted uplink: [`DeviceMac::handle_uplink`] with the decoded uplink MAC
//!    commands ([`UplinkMac`]); it answers device requests, applies answers to pending
//!    requests, runs ADR, and says whether a downlink is required ([`UplinkMacOutcome`]);
//! 3. every downlink the NS builds: [`DeviceMac::next_commands`] with the bytes left for MAC
//!    commands (15 in FOpts, or what fits in FPort 0 at the chosen DR); the requests it
//!    returns are marked pending. If the downlink is then not transmitted, restore the clone
//!    of the state taken before the call (the state is a small value, `Clone`).
//!
//! The state ([`DeviceMac`]) is a prost message: persist it with
//! [`prost::Message::encode_to_vec`] (e.g. in `NsDeviceRecord.state`) and read it back with
//! [`DeviceMac::decode_state`]. [`DeviceMac::to_api`] gives the API's `v3::MacState`.
//!
//! Spec references in comments: "1.0.4 §x" is LoRaWAN L2 1.0.4, "1.1 §x" is LoRaWAN 1.1,
//! "RP002 §x" is the Regional Parameters RP002-1.0.3/1.0.4.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod adr;
mod chmask;
mod downlink;
mod state;
mod uplink;

use std::time::{Duration, SystemTime};

use band::FrequencyPlan;
use lorawan::MacCommand;
use serde::{Deserialize, Serialize};
use tern_api::v3;

pub use chmask::ch_mask_blocks;
pub use state::{
    AdrRecord, ChannelParams, DeviceMac, JoinAcceptMac, MacParams, PendingRequest, TimeoutCount,
    gps_time, validate_settings,
};

/// NS-wide MAC defaults; a device's `v3::MacSettings` override them field by field.
///
/// TOML section `[ns.mac]` (every field optional):
/// ```toml
/// adr_enabled = true
/// adr_margin = 15.0
/// status_count_periodicity = 200
/// status_time_periodicity = 86400
/// pending_timeout_uplinks = 2
/// max_attempts = 5
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MacConfig {
    /// Run ADR for devices that do not say otherwise.
    pub adr_enabled: bool,
    /// ADR installation margin in dB (LoRaWAN ADR recommendation: 15 dB; higher is safer).
    pub adr_margin: f32,
    /// Request DevStatus every this many uplinks (0 disables the count trigger).
    pub status_count_periodicity: u32,
    /// Request DevStatus at least this often, in seconds (0 disables the time trigger).
    pub status_time_periodicity: u32,
    /// Desired RX1 delay in seconds (1..=15); `None` keeps the regional default (1 s).
    pub rx1_delay: Option<u8>,
    /// Desired RX1 data rate offset; `None` keeps 0.
    pub rx1_data_rate_offset: Option<u8>,
    /// Desired maximum aggregated duty cycle exponent (DutyCycleReq, 1/2^n); `None`: no request.
    pub max_duty_cycle: Option<u8>,
    /// Desired ADR_ACK_LIMIT exponent (1.1 ADRParamSetupReq, limit 2^n); `None`: no request.
    pub adr_ack_limit_exp: Option<u8>,
    /// Desired ADR_ACK_DELAY exponent (1.1 ADRParamSetupReq, delay 2^n); `None`: no request.
    pub adr_ack_delay_exp: Option<u8>,
    /// A request is considered lost after this many uplinks arrived without its answer.
    pub pending_timeout_uplinks: u32,
    /// After this many lost attempts of one command the NS stops sending it (until the
    /// session or the desired setting changes); 0 never gives up.
    pub max_attempts: u32,
}

impl Default for MacConfig {
    fn default() -> Self {
        Self {
            adr_enabled: true,
            adr_margin: adr::DEFAULT_MARGIN_DB,
            status_count_periodicity: 200,
            status_time_periodicity: 86_400,
            rx1_delay: None,
            rx1_data_rate_offset: None,
            max_duty_cycle: None,
            adr_ack_limit_exp: None,
            adr_ack_delay_exp: None,
            pending_timeout_uplinks: 2,
            max_attempts: 5,
        }
    }
}

/// What every call needs besides the state: the plan, the device's settings, the NS
/// defaults and the current time.
#[derive(Debug, Clone, Copy)]
pub struct MacContext<'a> {
    /// The device's frequency plan.
    pub plan: &'static FrequencyPlan,
    /// The device's MAC settings (overrides of `config`), if any.
    pub settings: Option<&'a v3::MacSettings>,
    /// The NS defaults.
    pub config: &'a MacConfig,
    /// Now (for DevStatus time periodicity and pending request bookkeeping).
    pub now: SystemTime,
}

/// One gateway's reception of the uplink.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GatewayRx {
    /// SNR in dB.
    pub snr: f32,
    /// RSSI in dBm.
    pub rssi: f32,
}

/// The MAC view of one accepted (MIC-verified, not replayed) data uplink.
#[derive(Debug, Clone, Copy)]
pub struct UplinkMac<'a> {
    /// The uplink MAC commands, decoded (FOpts, or FRMPayload of FPort 0), in order.
    /// Decrypting 1.1 FOpts is the NS's job.
    pub commands: &'a [MacCommand],
    /// FCtrl.ADR: the device runs ADR.
    pub adr: bool,
    /// FCtrl.ADRACKReq: the device asks for a downlink (1.0.4 §4.3.1.1).
    pub adr_ack_req: bool,
    /// The full 32-bit FCnt of the uplink.
    pub f_cnt: u32,
    /// Data rate index of the uplink.
    pub data_rate: u8,
    /// Uplink frequency in Hz.
    pub frequency: u32,
    /// One entry per gateway that received it (after dedup).
    pub gateways: &'a [GatewayRx],
    /// When the NS received it.
    pub received_at: SystemTime,
    /// GPS time of the end of the uplink (for DeviceTimeAns), if a gateway gave one;
    /// `None` derives it from `received_at`.
    pub gps_time: Option<Duration>,
}

impl UplinkMac<'_> {
    /// Best SNR over the gateways (`None` without gateways).
    pub fn max_snr(&self) -> Option<f32> {
        self.gateways.iter().map(|g| g.snr).reduce(f32::max)
    }
}

/// Why a device answer or indication was not (fully) applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The device rejected a field of the request; the field name (e.g. `data_rate`).
    Nack(&'static str),
    /// An answer arrived with no request pending for it; it changed nothing.
    Unexpected,
    /// The command is not valid for the device's MAC version or activation (e.g. ResetInd
    /// from an OTAA device); it changed nothing.
    NotAllowed(&'static str),
}

impl Rejection {
    /// A short label for metrics (`reason` label).
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Nack(_) => "nack",
            Rejection::Unexpected => "unexpected_answer",
            Rejection::NotAllowed(_) => "not_allowed",
        }
    }
}

/// A MAC exchange the NS should publish as an event (`ns.mac.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct MacEvent {
    /// The command: an uplink answer/indication/request as received, or a downlink answer
    /// queued for the device.
    pub command: MacCommand,
    /// For an answer: the request it answered.
    pub request: Option<MacCommand>,
    /// What was not applied, and why (empty: fully applied).
    pub rejected: Vec<Rejection>,
}

impl MacEvent {
    /// The event name in the catalogue (`ns.mac.link_adr.answer`, …).
    pub fn name(&self) -> &'static str {
        event_name(&self.command)
    }
}

/// The catalogue event name for a MAC command (`ns.mac.<command>.<request|answer|…>`),
/// for requests sent by [`DeviceMac::next_commands`] as well as for received commands.
pub fn event_name(command: &MacCommand) -> &'static str {
    use MacCommand as M;
    match command {
        M::ResetInd(_) => "ns.mac.reset.indication",
        M::ResetConf(_) => "ns.mac.reset.confirmation",
        M::LinkCheckReq => "ns.mac.link_check.request",
        M::LinkCheckAns(_) => "ns.mac.link_check.answer",
        M::LinkADRReq(_) => "ns.mac.link_adr.request",
        M::LinkADRAns(_) => "ns.mac.link_adr.answer",
        M::DutyCycleReq(_) => "ns.mac.duty_cycle.request",
        M::DutyCycleAns => "ns.mac.duty_cycle.answer",
        M::RXParamSetupReq(_) => "ns.mac.rx_param_setup.request",
        M::RXParamSetupAns(_) => "ns.mac.rx_param_setup.answer",
        M::DevStatusReq => "ns.mac.dev_status.request",
        M::DevStatusAns(_) => "ns.mac.dev_status.answer",
        M::NewChannelReq(_) => "ns.mac.new_channel.request",
        M::NewChannelAns(_) => "ns.mac.new_channel.answer",
        M::RXTimingSetupReq(_) => "ns.mac.rx_timing_setup.request",
        M::RXTimingSetupAns => "ns.mac.rx_timing_setup.answer",
        M::TxParamSetupReq(_) => "ns.mac.tx_param_setup.request",
        M::TxParamSetupAns => "ns.mac.tx_param_setup.answer",
        M::DlChannelReq(_) => "ns.mac.dl_channel.request",
        M::DlChannelAns(_) => "ns.mac.dl_channel.answer",
        M::RekeyInd(_) => "ns.mac.rekey.indication",
        M::RekeyConf(_) => "ns.mac.rekey.confirmation",
        M::ADRParamSetupReq(_) => "ns.mac.adr_param_setup.request",
        M::ADRParamSetupAns => "ns.mac.adr_param_setup.answer",
        M::DeviceTimeReq => "ns.mac.device_time.request",
        M::DeviceTimeAns(_) => "ns.mac.device_time.answer",
        M::ForceRejoinReq(_) => "ns.mac.force_rejoin.request",
        M::RejoinParamSetupReq(_) => "ns.mac.rejoin_param_setup.request",
        M::RejoinParamSetupAns(_) => "ns.mac.rejoin_param_setup.answer",
        M::PingSlotInfoReq(_) => "ns.mac.ping_slot_info.request",
        M::PingSlotInfoAns => "ns.mac.ping_slot_info.answer",
        M::PingSlotChannelReq(_) => "ns.mac.ping_slot_channel.request",
        M::PingSlotChannelAns(_) => "ns.mac.ping_slot_channel.answer",
        M::BeaconTimingReq => "ns.mac.beacon_timing.request",
        M::BeaconTimingAns(_) => "ns.mac.beacon_timing.answer",
        M::BeaconFreqReq(_) => "ns.mac.beacon_freq.request",
        M::BeaconFreqAns(_) => "ns.mac.beacon_freq.answer",
        M::DeviceModeInd(_) => "ns.mac.device_mode.indication",
        M::DeviceModeConf(_) => "ns.mac.device_mode.confirmation",
    }
}

/// What [`DeviceMac::handle_uplink`] decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UplinkMacOutcome {
    /// A downlink must be sent in this uplink's receive windows even without application
    /// data: answers are queued, ADRACKReq was set, or a 1.0.x sticky answer
    /// (RXParamSetupAns, RXTimingSetupAns, DlChannelAns) must be acknowledged by a downlink.
    pub downlink_required: bool,
    /// Why a downlink is required (labels such as `answer`, `adr_ack_req`, `sticky_answer`).
    pub downlink_reasons: Vec<&'static str>,
    /// Exchanges to publish as events, in the order of the uplink's commands.
    pub events: Vec<MacEvent>,
    /// An ABP 1.1 device sent ResetInd: the MAC state was reset to the boot defaults.
    pub reset: bool,
    /// An OTAA 1.1 device sent RekeyInd: the NS must switch to the session this uplink
    /// verified with (the pending session becomes the current one).
    pub rekey: bool,
    /// The device switched class (DeviceModeInd, 1.1).
    pub class_changed: Option<v3::DeviceClass>,
    /// The DevStatusAns of this uplink, if any.
    pub dev_status: Option<lorawan::mac::DevStatusAns>,
    /// The ADR decision of this uplink, if ADR ran and changed the desired parameters.
    pub adr: Option<adr::AdrDecision>,
    /// Pending requests given up on this uplink (lost too many times), by command name.
    pub timed_out: Vec<&'static str>,
}

/// Errors building or reading a MAC state; no state is changed when one is returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MacStateError {
    /// A MAC setting is out of range for the device's region or version.
    #[error("mac_settings.{field}: {reason}")]
    InvalidSetting {
        /// The `v3::MacSettings` field.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// The MAC or PHY version is not set or not supported.
    #[error("{field}: {reason}")]
    InvalidVersion {
        /// `lorawan_version` or `lorawan_phy_version`.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The stored state names a frequency plan this build does not know.
    #[error("frequency_plan_id: unknown frequency plan {0:?}")]
    UnknownFrequencyPlan(String),
    /// The stored state does not decode.
    #[error("MAC state does not decode: {0}")]
    Decode(String),
}
