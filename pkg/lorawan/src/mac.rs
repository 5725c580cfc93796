//! MAC commands of LoRaWAN 1.0.4 and 1.1 (including the class B commands), with typed
//! fields, in both directions.
//!
//! The same CID means different commands in the two directions (0x03 is LinkADRReq on the
//! downlink and LinkADRAns on the uplink), so decoding takes the [`Direction`] the bytes
//! travelled in. Each command is `CID | payload`, payload length fixed by CID and direction.
//!
//! Wire conventions: multi-byte fields little-endian; frequencies are 24-bit multiples of
//! 100 Hz on the air and plain Hz (`u32`) here; RFU bits are written as 0 and ignored when
//! decoding. Encoding checks every field against its bit width (and frequencies against the
//! 100 Hz grid), so what encodes also decodes back to the same value.
//!
//! JSON (serde) is internally tagged by the spec name:
//! `{"cid":"LinkADRReq","data_rate":5,"tx_power":1,"ch_mask":255,"ch_mask_cntl":0,"nb_trans":1}`,
//! `{"cid":"LinkCheckReq"}`.

use serde::{Deserialize, Serialize};

use crate::crypto::Direction;

/// Errors decoding or encoding MAC commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// A CID that has no command in this direction (or a proprietary one); parsing stops.
    #[error("unknown {direction} MAC command CID 0x{cid:02X} at offset {offset}")]
    UnknownCid {
        /// The command identifier.
        cid: u8,
        /// The direction the bytes were decoded for.
        direction: Direction,
        /// Byte offset of the CID in the input.
        offset: usize,
    },
    /// The input ends inside a command's payload.
    #[error(
        "MAC command CID 0x{cid:02X} truncated: payload needs {needed} bytes, {available} left"
    )]
    Truncated {
        /// The command identifier.
        cid: u8,
        /// Payload bytes the command needs.
        needed: usize,
        /// Payload bytes left in the input.
        available: usize,
    },
    /// A field value that cannot be put on the wire (or an RFU value found on the wire).
    #[error("{command}.{field}: invalid value {value}: {reason}")]
    InvalidField {
        /// Command name.
        command: &'static str,
        /// Field name.
        field: &'static str,
        /// The offending value.
        value: i64,
        /// What is allowed.
        reason: &'static str,
    },
}

/// The highest frequency a 24-bit × 100 Hz field can carry, in Hz.
pub const MAX_FREQUENCY_HZ: u32 = 0xFF_FFFF * 100;

/// MaxEIRP in dBm for each TxParamSetupReq `max_eirp` index (LoRaWAN 1.0.4 §5.9).
pub const MAX_EIRP_DBM: [u8; 16] = [
    8, 10, 12, 13, 14, 16, 18, 20, 21, 24, 26, 27, 29, 30, 33, 36,
];

/// ResetInd (0x01, uplink, 1.1): the device's LoRaWAN 1.x minor version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResetInd {
    /// LoRaWAN minor version (4 bits; 1 for LoRaWAN 1.1).
    pub minor_version: u8,
}

/// ResetConf (0x01, downlink, 1.1): the server's LoRaWAN 1.x minor version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResetConf {
    /// LoRaWAN minor version (4 bits).
    pub minor_version: u8,
}

/// LinkCheckAns (0x02, downlink): demodulation margin and gateway count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LinkCheckAns {
    /// Link margin in dB above the demodulation floor (0..=254; 255 reserved).
    pub margin: u8,
    /// Number of gateways that received the LinkCheckReq.
    pub gw_cnt: u8,
}

/// LinkADRReq (0x03, downlink): data rate, TX power, channel mask and repetitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LinkADRReq {
    /// Data rate index (4 bits; 15 = keep current in 1.0.4/1.1).
    pub data_rate: u8,
    /// TX power index (4 bits; 15 = keep current in 1.0.4/1.1).
    pub tx_power: u8,
    /// Channel mask: bit n enables channel n of the block chosen by `ch_mask_cntl`.
    pub ch_mask: u16,
    /// How to read `ch_mask` (3 bits, region specific).
    pub ch_mask_cntl: u8,
    /// Transmissions per uplink (4 bits; 0 = keep current / 1).
    pub nb_trans: u8,
}

/// LinkADRAns (0x03, uplink): which parts of a LinkADRReq the device accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LinkADRAns {
    /// TX power accepted.
    pub power_ack: bool,
    /// Data rate accepted.
    pub data_rate_ack: bool,
    /// Channel mask accepted.
    pub channel_mask_ack: bool,
}

/// DutyCycleReq (0x04, downlink): maximum aggregated duty cycle 1/2^n.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DutyCycleReq {
    /// Exponent n (4 bits); 0 means no limit beyond the regional one.
    pub max_duty_cycle: u8,
}

/// RXParamSetupReq (0x05, downlink): RX1 data-rate offset, RX2 data rate and frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RXParamSetupReq {
    /// RX1 data-rate offset (3 bits).
    pub rx1_dr_offset: u8,
    /// RX2 data rate index (4 bits).
    pub rx2_data_rate: u8,
    /// RX2 frequency in Hz (multiple of 100).
    pub frequency: u32,
}

/// RXParamSetupAns (0x05, uplink): which RXParamSetupReq settings the device accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RXParamSetupAns {
    /// RX1 data-rate offset accepted.
    pub rx1_dr_offset_ack: bool,
    /// RX2 data rate accepted.
    pub rx2_data_rate_ack: bool,
    /// RX2 frequency accepted.
    pub channel_ack: bool,
}

/// DevStatusAns (0x06, uplink): battery level and downlink SNR margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DevStatusAns {
    /// 0 = external power, 1..=254 = level, 255 = unable to measure.
    pub battery: u8,
    /// SNR margin of the last DevStatusReq in dB, -32..=31 (6-bit signed on the wire).
    pub margin: i8,
}

/// NewChannelReq (0x07, downlink): create or modify (frequency 0: disable) a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NewChannelReq {
    /// Channel index.
    pub ch_index: u8,
    /// Frequency in Hz (multiple of 100; 0 disables the channel).
    pub frequency: u32,
    /// Lowest data rate allowed on the channel (4 bits).
    pub min_dr: u8,
    /// Highest data rate allowed on the channel (4 bits).
    pub max_dr: u8,
}

/// NewChannelAns (0x07, uplink).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NewChannelAns {
    /// The data-rate range is usable.
    pub data_rate_range_ok: bool,
    /// The frequency is usable.
    pub channel_frequency_ok: bool,
}

/// RXTimingSetupReq (0x08, downlink): RX1 delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RXTimingSetupReq {
    /// Delay in seconds (4 bits; 0 also means 1 s).
    pub delay: u8,
}

/// TxParamSetupReq (0x09, downlink): dwell-time limits and maximum EIRP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TxParamSetupReq {
    /// Downlink dwell time limited to 400 ms.
    pub downlink_dwell_time: bool,
    /// Uplink dwell time limited to 400 ms.
    pub uplink_dwell_time: bool,
    /// MaxEIRP index (4 bits) into [`MAX_EIRP_DBM`].
    pub max_eirp: u8,
}

impl TxParamSetupReq {
    /// The MaxEIRP in dBm, if the index is valid.
    pub fn max_eirp_dbm(&self) -> Option<u8> {
        MAX_EIRP_DBM.get(self.max_eirp as usize).copied()
    }
}

/// DlChannelReq (0x0A, downlink): a separate RX1 downlink frequency for a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DlChannelReq {
    /// Channel index.
    pub ch_index: u8,
    /// Downlink frequency in Hz (multiple of 100).
    pub frequency: u32,
}

/// DlChannelAns (0x0A, uplink).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DlChannelAns {
    /// The uplink frequency of the channel exists.
    pub uplink_frequency_exists: bool,
    /// The downlink frequency is usable.
    pub channel_frequency_ok: bool,
}

/// RekeyInd (0x0B, uplink, 1.1): the device's LoRaWAN 1.x minor version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RekeyInd {
    /// LoRaWAN minor version (4 bits).
    pub minor_version: u8,
}

/// RekeyConf (0x0B, downlink, 1.1): the server's LoRaWAN 1.x minor version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RekeyConf {
    /// LoRaWAN minor version (4 bits).
    pub minor_version: u8,
}

/// ADRParamSetupReq (0x0C, downlink, 1.1): ADR_ACK_LIMIT = 2^limit_exp, ADR_ACK_DELAY = 2^delay_exp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ADRParamSetupReq {
    /// ADR_ACK_LIMIT exponent (4 bits).
    pub limit_exp: u8,
    /// ADR_ACK_DELAY exponent (4 bits).
    pub delay_exp: u8,
}

/// DeviceTimeAns (0x0D, downlink): GPS time at the end of the uplink that carried the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceTimeAns {
    /// Whole seconds since the GPS epoch (1980-01-06T00:00:00Z), modulo 2^32.
    pub gps_seconds: u32,
    /// Fractional second in units of 1/256 s.
    pub fractional: u8,
}

impl DeviceTimeAns {
    /// The time since the GPS epoch as a duration.
    pub fn to_duration(&self) -> std::time::Duration {
        std::time::Duration::new(
            u64::from(self.gps_seconds),
            u32::from(self.fractional) * 3_906_250,
        )
    }

    /// From a time since the GPS epoch, truncated to 1/256 s; `None` past 2^32 seconds.
    pub fn from_duration(d: std::time::Duration) -> Option<Self> {
        Some(Self {
            gps_seconds: u32::try_from(d.as_secs()).ok()?,
            fractional: (d.subsec_nanos() / 3_906_250) as u8,
        })
    }
}

/// ForceRejoinReq (0x0E, downlink, 1.1): ask the device to send rejoin-requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ForceRejoinReq {
    /// Delay between retransmissions: 32 s × 2^period + random (3 bits).
    pub period: u8,
    /// Retransmissions after the first (3 bits).
    pub max_retries: u8,
    /// Rejoin type to send (3 bits: 0 or 1 → type 0, 2 → type 2).
    pub rejoin_type: u8,
    /// Data rate for the rejoin-requests (4 bits).
    pub data_rate: u8,
}

/// RejoinParamSetupReq (0x0F, downlink, 1.1): periodic type 0 rejoin limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RejoinParamSetupReq {
    /// Maximum time between rejoins: 2^(max_time_n + 10) seconds (4 bits).
    pub max_time_n: u8,
    /// Maximum uplinks between rejoins: 2^(max_count_n + 4) (4 bits).
    pub max_count_n: u8,
}

/// RejoinParamSetupAns (0x0F, uplink, 1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RejoinParamSetupAns {
    /// The device accepted the time limit as well as the count limit.
    pub time_ok: bool,
}

/// PingSlotInfoReq (0x10, uplink, class B): ping-slot periodicity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PingSlotInfoReq {
    /// A ping slot every 2^periodicity seconds (3 bits).
    pub periodicity: u8,
}

/// PingSlotChannelReq (0x11, downlink, class B): ping-slot frequency and data rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PingSlotChannelReq {
    /// Frequency in Hz (multiple of 100; 0 = regional default).
    pub frequency: u32,
    /// Data rate index (4 bits).
    pub data_rate: u8,
}

/// PingSlotChannelAns (0x11, uplink, class B).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PingSlotChannelAns {
    /// The data rate is usable.
    pub data_rate_ok: bool,
    /// The frequency is usable.
    pub channel_frequency_ok: bool,
}

/// BeaconTimingAns (0x12, downlink, class B; deprecated since 1.0.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BeaconTimingAns {
    /// Time to the next beacon in units of 30 ms.
    pub delay: u16,
    /// Beacon channel index.
    pub channel: u8,
}

/// BeaconFreqReq (0x13, downlink, class B): beacon frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BeaconFreqReq {
    /// Frequency in Hz (multiple of 100; 0 = regional default).
    pub frequency: u32,
}

/// BeaconFreqAns (0x13, uplink, class B).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BeaconFreqAns {
    /// The beacon frequency is usable.
    pub beacon_frequency_ok: bool,
}

/// Device class of DeviceModeInd / DeviceModeConf (value 0x01 and above 0x02 are RFU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeviceModeClass {
    /// Class A (0x00).
    A,
    /// Class C (0x02).
    C,
}

impl DeviceModeClass {
    fn to_wire(self) -> u8 {
        match self {
            Self::A => 0x00,
            Self::C => 0x02,
        }
    }

    fn from_wire(cmd: &'static str, b: u8) -> Result<Self, MacError> {
        match b {
            0x00 => Ok(Self::A),
            0x02 => Ok(Self::C),
            v => Err(MacError::InvalidField {
                command: cmd,
                field: "class",
                value: v.into(),
                reason: "0x00 (class A) or 0x02 (class C); other values are RFU",
            }),
        }
    }
}

/// DeviceModeInd (0x20, uplink, 1.1): the class the device switches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceModeInd {
    /// Requested class.
    pub class: DeviceModeClass,
}

/// DeviceModeConf (0x20, downlink, 1.1): the class the network confirms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceModeConf {
    /// Confirmed class.
    pub class: DeviceModeClass,
}

/// One MAC command with its typed payload; JSON is tagged by `"cid"` (the spec name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "cid")]
pub enum MacCommand {
    /// 0x01 uplink (1.1).
    ResetInd(ResetInd),
    /// 0x01 downlink (1.1).
    ResetConf(ResetConf),
    /// 0x02 uplink.
    LinkCheckReq,
    /// 0x02 downlink.
    LinkCheckAns(LinkCheckAns),
    /// 0x03 downlink.
    LinkADRReq(LinkADRReq),
    /// 0x03 uplink.
    LinkADRAns(LinkADRAns),
    /// 0x04 downlink.
    DutyCycleReq(DutyCycleReq),
    /// 0x04 uplink.
    DutyCycleAns,
    /// 0x05 downlink.
    RXParamSetupReq(RXParamSetupReq),
    /// 0x05 uplink.
    RXParamSetupAns(RXParamSetupAns),
    /// 0x06 downlink.
    DevStatusReq,
    /// 0x06 uplink.
    DevStatusAns(DevStatusAns),
    /// 0x07 downlink.
    NewChannelReq(NewChannelReq),
    /// 0x07 uplink.
    NewChannelAns(NewChannelAns),
    /// 0x08 downlink.
    RXTimingSetupReq(RXTimingSetupReq),
    /// 0x08 uplink.
    RXTimingSetupAns,
    /// 0x09 downlink.
    TxParamSetupReq(TxParamSetupReq),
    /// 0x09 uplink.
    TxParamSetupAns,
    /// 0x0A downlink.
    DlChannelReq(DlChannelReq),
    /// 0x0A uplink.
    DlChannelAns(DlChannelAns),
    /// 0x0B uplink (1.1).
    RekeyInd(RekeyInd),
    /// 0x0B downlink (1.1).
    RekeyConf(RekeyConf),
    /// 0x0C downlink (1.1).
    ADRParamSetupReq(ADRParamSetupReq),
    /// 0x0C uplink (1.1).
    ADRParamSetupAns,
    /// 0x0D uplink.
    DeviceTimeReq,
    /// 0x0D downlink.
    DeviceTimeAns(DeviceTimeAns),
    /// 0x0E downlink (1.1).
    ForceRejoinReq(ForceRejoinReq),
    /// 0x0F downlink (1.1).
    RejoinParamSetupReq(RejoinParamSetupReq),
    /// 0x0F uplink (1.1).
    RejoinParamSetupAns(RejoinParamSetupAns),
    /// 0x10 uplink (class B).
    PingSlotInfoReq(PingSlotInfoReq),
    /// 0x10 downlink (class B).
    PingSlotInfoAns,
    /// 0x11 downlink (class B).
    PingSlotChannelReq(PingSlotChannelReq),
    /// 0x11 uplink (class B).
    PingSlotChannelAns(PingSlotChannelAns),
    /// 0x12 uplink (class B, deprecated since 1.0.3).
    BeaconTimingReq,
    /// 0x12 downlink (class B, deprecated since 1.0.3).
    BeaconTimingAns(BeaconTimingAns),
    /// 0x13 downlink (class B).
    BeaconFreqReq(BeaconFreqReq),
    /// 0x13 uplink (class B).
    BeaconFreqAns(BeaconFreqAns),
    /// 0x20 uplink (1.1).
    DeviceModeInd(DeviceModeInd),
    /// 0x20 downlink (1.1).
    DeviceModeConf(DeviceModeConf),
}

/// Payload length (without the CID byte) of command `cid` sent in `direction`, or `None`
/// if no command has that CID in that direction.
pub fn payload_len(direction: Direction, cid: u8) -> Option<usize> {
    use Direction::{Downlink as D, Uplink as U};
    Some(match (direction, cid) {
        (U, 0x01) | (D, 0x01) => 1,
        (U, 0x02) => 0,
        (D, 0x02) => 2,
        (D, 0x03) => 4,
        (U, 0x03) => 1,
        (D, 0x04) => 1,
        (U, 0x04) => 0,
        (D, 0x05) => 4,
        (U, 0x05) => 1,
        (D, 0x06) => 0,
        (U, 0x06) => 2,
        (D, 0x07) => 5,
        (U, 0x07) => 1,
        (D, 0x08) => 1,
        (U, 0x08) => 0,
        (D, 0x09) => 1,
        (U, 0x09) => 0,
        (D, 0x0A) => 4,
        (U, 0x0A) => 1,
        (U, 0x0B) | (D, 0x0B) => 1,
        (D, 0x0C) => 1,
        (U, 0x0C) => 0,
        (U, 0x0D) => 0,
        (D, 0x0D) => 5,
        (D, 0x0E) => 2,
        (D, 0x0F) => 1,
        (U, 0x0F) => 1,
        (U, 0x10) => 1,
        (D, 0x10) => 0,
        (D, 0x11) => 4,
        (U, 0x11) => 1,
        (U, 0x12) => 0,
        (D, 0x12) => 3,
        (D, 0x13) => 3,
        (U, 0x13) => 1,
        (U, 0x20) | (D, 0x20) => 1,
        _ => return None,
    })
}

fn check_bits(
    command: &'static str,
    field: &'static str,
    v: u8,
    bits: u32,
) -> Result<u8, MacError> {
    if u32::from(v) >> bits == 0 {
        Ok(v)
    } else {
        Err(MacError::InvalidField {
            command,
            field,
            value: v.into(),
            reason: match bits {
                3 => "must fit in 3 bits (0..=7)",
                4 => "must fit in 4 bits (0..=15)",
                _ => "too many bits",
            },
        })
    }
}

fn freq_to_wire(command: &'static str, field: &'static str, hz: u32) -> Result<[u8; 3], MacError> {
    if !hz.is_multiple_of(100) || hz > MAX_FREQUENCY_HZ {
        return Err(MacError::InvalidField {
            command,
            field,
            value: hz.into(),
            reason: "frequency must be a multiple of 100 Hz and at most 1677721500 Hz",
        });
    }
    let b = (hz / 100).to_le_bytes();
    Ok([b[0], b[1], b[2]])
}

fn freq_from_wire(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], 0]) * 100
}

fn flag(b: u8, bit: u32) -> bool {
    b & (1 << bit) != 0
}

fn flags(bits: &[bool]) -> u8 {
    // bits[0] is bit 0.
    bits.iter()
        .enumerate()
        .fold(0, |acc, (i, &b)| acc | (u8::from(b) << i))
}

impl MacCommand {
    /// The command identifier.
    pub fn cid(&self) -> u8 {
        use MacCommand::*;
        match self {
            ResetInd(_) | ResetConf(_) => 0x01,
            LinkCheckReq | LinkCheckAns(_) => 0x02,
            LinkADRReq(_) | LinkADRAns(_) => 0x03,
            DutyCycleReq(_) | DutyCycleAns => 0x04,
            RXParamSetupReq(_) | RXParamSetupAns(_) => 0x05,
            DevStatusReq | DevStatusAns(_) => 0x06,
            NewChannelReq(_) | NewChannelAns(_) => 0x07,
            RXTimingSetupReq(_) | RXTimingSetupAns => 0x08,
            TxParamSetupReq(_) | TxParamSetupAns => 0x09,
            DlChannelReq(_) | DlChannelAns(_) => 0x0A,
            RekeyInd(_) | RekeyConf(_) => 0x0B,
            ADRParamSetupReq(_) | ADRParamSetupAns => 0x0C,
            DeviceTimeReq | DeviceTimeAns(_) => 0x0D,
            ForceRejoinReq(_) => 0x0E,
            RejoinParamSetupReq(_) | RejoinParamSetupAns(_) => 0x0F,
            PingSlotInfoReq(_) | PingSlotInfoAns => 0x10,
            PingSlotChannelReq(_) | PingSlotChannelAns(_) => 0x11,
            BeaconTimingReq | BeaconTimingAns(_) => 0x12,
            BeaconFreqReq(_) | BeaconFreqAns(_) => 0x13,
            DeviceModeInd(_) | DeviceModeConf(_) => 0x20,
        }
    }

    /// The direction this command is sent in (uplink: device to network).
    pub fn direction(&self) -> Direction {
        use MacCommand::*;
        match self {
            ResetInd(_)
            | LinkCheckReq
            | LinkADRAns(_)
            | DutyCycleAns
            | RXParamSetupAns(_)
            | DevStatusAns(_)
            | NewChannelAns(_)
            | RXTimingSetupAns
            | TxParamSetupAns
            | DlChannelAns(_)
            | RekeyInd(_)
            | ADRParamSetupAns
            | DeviceTimeReq
            | RejoinParamSetupAns(_)
            | PingSlotInfoReq(_)
            | PingSlotChannelAns(_)
            | BeaconTimingReq
            | BeaconFreqAns(_)
            | DeviceModeInd(_) => Direction::Uplink,
            ResetConf(_)
            | LinkCheckAns(_)
            | LinkADRReq(_)
            | DutyCycleReq(_)
            | RXParamSetupReq(_)
            | DevStatusReq
            | NewChannelReq(_)
            | RXTimingSetupReq(_)
            | TxParamSetupReq(_)
            | DlChannelReq(_)
            | RekeyConf(_)
            | ADRParamSetupReq(_)
            | DeviceTimeAns(_)
            | ForceRejoinReq(_)
            | RejoinParamSetupReq(_)
            | PingSlotInfoAns
            | PingSlotChannelReq(_)
            | BeaconTimingAns(_)
            | BeaconFreqReq(_)
            | DeviceModeConf(_) => Direction::Downlink,
        }
    }

    /// The spec name of the command (also its JSON `"cid"` tag), e.g. `"LinkADRReq"`.
    pub fn name(&self) -> &'static str {
        use MacCommand::*;
        match self {
            ResetInd(_) => "ResetInd",
            ResetConf(_) => "ResetConf",
            LinkCheckReq => "LinkCheckReq",
            LinkCheckAns(_) => "LinkCheckAns",
            LinkADRReq(_) => "LinkADRReq",
            LinkADRAns(_) => "LinkADRAns",
            DutyCycleReq(_) => "DutyCycleReq",
            DutyCycleAns => "DutyCycleAns",
            RXParamSetupReq(_) => "RXParamSetupReq",
            RXParamSetupAns(_) => "RXParamSetupAns",
            DevStatusReq => "DevStatusReq",
            DevStatusAns(_) => "DevStatusAns",
            NewChannelReq(_) => "NewChannelReq",
            NewChannelAns(_) => "NewChannelAns",
            RXTimingSetupReq(_) => "RXTimingSetupReq",
            RXTimingSetupAns => "RXTimingSetupAns",
            TxParamSetupReq(_) => "TxParamSetupReq",
            TxParamSetupAns => "TxParamSetupAns",
            DlChannelReq(_) => "DlChannelReq",
            DlChannelAns(_) => "DlChannelAns",
            RekeyInd(_) => "RekeyInd",
            RekeyConf(_) => "RekeyConf",
            ADRParamSetupReq(_) => "ADRParamSetupReq",
            ADRParamSetupAns => "ADRParamSetupAns",
            DeviceTimeReq => "DeviceTimeReq",
            DeviceTimeAns(_) => "DeviceTimeAns",
            ForceRejoinReq(_) => "ForceRejoinReq",
            RejoinParamSetupReq(_) => "RejoinParamSetupReq",
            RejoinParamSetupAns(_) => "RejoinParamSetupAns",
            PingSlotInfoReq(_) => "PingSlotInfoReq",
            PingSlotInfoAns => "PingSlotInfoAns",
            PingSlotChannelReq(_) => "PingSlotChannelReq",
            PingSlotChannelAns(_) => "PingSlotChannelAns",
            BeaconTimingReq => "BeaconTimingReq",
            BeaconTimingAns(_) => "BeaconTimingAns",
            BeaconFreqReq(_) => "BeaconFreqReq",
            BeaconFreqAns(_) => "BeaconFreqAns",
            DeviceModeInd(_) => "DeviceModeInd",
            DeviceModeConf(_) => "DeviceModeConf",
        }
    }

    /// Encoded size in bytes, CID included.
    pub fn encoded_len(&self) -> usize {
        1 + payload_len(self.direction(), self.cid())
            .expect("every MacCommand variant has a payload length")
    }

    /// Appends `CID | payload` to `out`. On error nothing is appended.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), MacError> {
        let mut buf = [0u8; 6];
        let n = self.encode_into(&mut buf)?;
        out.extend_from_slice(&buf[..n]);
        Ok(())
    }

    /// Writes `CID | payload` into `buf` (at least 6 bytes); returns the length written.
    fn encode_into(&self, buf: &mut [u8; 6]) -> Result<usize, MacError> {
        use MacCommand as M;
        let name = self.name();
        buf[0] = self.cid();
        let p = &mut buf[1..];
        match self {
            M::LinkCheckReq
            | M::DutyCycleAns
            | M::DevStatusReq
            | M::RXTimingSetupAns
            | M::TxParamSetupAns
            | M::ADRParamSetupAns
            | M::DeviceTimeReq
            | M::PingSlotInfoAns
            | M::BeaconTimingReq => {}
            M::ResetInd(c) => p[0] = check_bits(name, "minor_version", c.minor_version, 4)?,
            M::ResetConf(c) => p[0] = check_bits(name, "minor_version", c.minor_version, 4)?,
            M::RekeyInd(c) => p[0] = check_bits(name, "minor_version", c.minor_version, 4)?,
            M::RekeyConf(c) => p[0] = check_bits(name, "minor_version", c.minor_version, 4)?,
            M::LinkCheckAns(c) => {
                p[0] = c.margin;
                p[1] = c.gw_cnt;
            }
            M::LinkADRReq(c) => {
                p[0] = check_bits(name, "data_rate", c.data_rate, 4)? << 4
                    | check_bits(name, "tx_power", c.tx_power, 4)?;
                p[1..3].copy_from_slice(&c.ch_mask.to_le_bytes());
                p[3] = check_bits(name, "ch_mask_cntl", c.ch_mask_cntl, 3)? << 4
                    | check_bits(name, "nb_trans", c.nb_trans, 4)?;
            }
            M::LinkADRAns(c) => {
                p[0] = flags(&[c.channel_mask_ack, c.data_rate_ack, c.power_ack]);
            }
            M::DutyCycleReq(c) => {
                p[0] = check_bits(name, "max_duty_cycle", c.max_duty_cycle, 4)?;
            }
            M::RXParamSetupReq(c) => {
                p[0] = check_bits(name, "rx1_dr_offset", c.rx1_dr_offset, 3)? << 4
                    | check_bits(name, "rx2_data_rate", c.rx2_data_rate, 4)?;
                p[1..4].copy_from_slice(&freq_to_wire(name, "frequency", c.frequency)?);
            }
            M::RXParamSetupAns(c) => {
                p[0] = flags(&[c.channel_ack, c.rx2_data_rate_ack, c.rx1_dr_offset_ack]);
            }
            M::DevStatusAns(c) => {
                if !(-32..=31).contains(&c.margin) {
                    return Err(MacError::InvalidField {
                        command: name,
                        field: "margin",
                        value: c.margin.into(),
                        reason: "must be within -32..=31 (6-bit signed)",
                    });
                }
                p[0] = c.battery;
                p[1] = (c.margin as u8) & 0x3F;
            }
            M::NewChannelReq(c) => {
                p[0] = c.ch_index;
                p[1..4].copy_from_slice(&freq_to_wire(name, "frequency", c.frequency)?);
                p[4] = check_bits(name, "max_dr", c.max_dr, 4)? << 4
                    | check_bits(name, "min_dr", c.min_dr, 4)?;
            }
            M::NewChannelAns(c) => {
                p[0] = flags(&[c.channel_frequency_ok, c.data_rate_range_ok]);
            }
            M::RXTimingSetupReq(c) => p[0] = check_bits(name, "delay", c.delay, 4)?,
            M::TxParamSetupReq(c) => {
                p[0] = u8::from(c.downlink_dwell_time) << 5
                    | u8::from(c.uplink_dwell_time) << 4
                    | check_bits(name, "max_eirp", c.max_eirp, 4)?;
            }
            M::DlChannelReq(c) => {
                p[0] = c.ch_index;
                p[1..4].copy_from_slice(&freq_to_wire(name, "frequency", c.frequency)?);
            }
            M::DlChannelAns(c) => {
                p[0] = flags(&[c.channel_frequency_ok, c.uplink_frequency_exists]);
            }
            M::ADRParamSetupReq(c) => {
                p[0] = check_bits(name, "limit_exp", c.limit_exp, 4)? << 4
                    | check_bits(name, "delay_exp", c.delay_exp, 4)?;
            }
            M::DeviceTimeAns(c) => {
                p[0..4].copy_from_slice(&c.gps_seconds.to_le_bytes());
                p[4] = c.fractional;
            }
            M::ForceRejoinReq(c) => {
                let v: u16 = u16::from(check_bits(name, "period", c.period, 3)?) << 11
                    | u16::from(check_bits(name, "max_retries", c.max_retries, 3)?) << 8
                    | u16::from(check_bits(name, "rejoin_type", c.rejoin_type, 3)?) << 4
                    | u16::from(check_bits(name, "data_rate", c.data_rate, 4)?);
                p[0..2].copy_from_slice(&v.to_le_bytes());
            }
            M::RejoinParamSetupReq(c) => {
                p[0] = check_bits(name, "max_time_n", c.max_time_n, 4)? << 4
                    | check_bits(name, "max_count_n", c.max_count_n, 4)?;
            }
            M::RejoinParamSetupAns(c) => p[0] = u8::from(c.time_ok),
            M::PingSlotInfoReq(c) => p[0] = check_bits(name, "periodicity", c.periodicity, 3)?,
            M::PingSlotChannelReq(c) => {
                p[0..3].copy_from_slice(&freq_to_wire(name, "frequency", c.frequency)?);
                p[3] = check_bits(name, "data_rate", c.data_rate, 4)?;
            }
            M::PingSlotChannelAns(c) => {
                p[0] = flags(&[c.channel_frequency_ok, c.data_rate_ok]);
            }
            M::BeaconTimingAns(c) => {
                p[0..2].copy_from_slice(&c.delay.to_le_bytes());
                p[2] = c.channel;
            }
            M::BeaconFreqReq(c) => {
                p[0..3].copy_from_slice(&freq_to_wire(name, "frequency", c.frequency)?);
            }
            M::BeaconFreqAns(c) => p[0] = u8::from(c.beacon_frequency_ok),
            M::DeviceModeInd(c) => p[0] = c.class.to_wire(),
            M::DeviceModeConf(c) => p[0] = c.class.to_wire(),
        }
        Ok(self.encoded_len())
    }

    /// Decodes one command sent in `direction` from the start of `bytes` (`offset` is only
    /// used in errors); returns it and the number of bytes it took.
    pub fn decode(
        direction: Direction,
        bytes: &[u8],
        offset: usize,
    ) -> Result<(MacCommand, usize), MacError> {
        let Some(&cid) = bytes.first() else {
            return Err(MacError::Truncated {
                cid: 0,
                needed: 1,
                available: 0,
            });
        };
        let needed = payload_len(direction, cid).ok_or(MacError::UnknownCid {
            cid,
            direction,
            offset,
        })?;
        let rest = &bytes[1..];
        if rest.len() < needed {
            return Err(MacError::Truncated {
                cid,
                needed,
                available: rest.len(),
            });
        }
        let p = &rest[..needed];
        Ok((decode_payload(direction, cid, p)?, 1 + needed))
    }

    /// Decodes a whole FOpts field or FPort 0 FRMPayload sent in `direction`. Parsing stops
    /// at the first unknown CID (there is no way to find the next command after it).
    pub fn decode_all(direction: Direction, bytes: &[u8]) -> Result<Vec<MacCommand>, MacError> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let (cmd, n) = Self::decode(direction, &bytes[pos..], pos)?;
            out.push(cmd);
            pos += n;
        }
        Ok(out)
    }

    /// Appends every command to `out`. On error `out` is left as it was.
    pub fn encode_all(cmds: &[MacCommand], out: &mut Vec<u8>) -> Result<(), MacError> {
        let start = out.len();
        for c in cmds {
            if let Err(e) = c.encode(out) {
                out.truncate(start);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Total encoded size of `cmds` in bytes.
    pub fn encoded_len_all(cmds: &[MacCommand]) -> usize {
        cmds.iter().map(MacCommand::encoded_len).sum()
    }
}

/// Decodes the payload `p` (exactly the command's length) of CID `cid` sent in `direction`.
fn decode_payload(direction: Direction, cid: u8, p: &[u8]) -> Result<MacCommand, MacError> {
    use Direction::{Downlink as D, Uplink as U};
    use MacCommand as M;
    Ok(match (direction, cid) {
        (U, 0x01) => M::ResetInd(ResetInd {
            minor_version: p[0] & 0x0F,
        }),
        (D, 0x01) => M::ResetConf(ResetConf {
            minor_version: p[0] & 0x0F,
        }),
        (U, 0x02) => M::LinkCheckReq,
        (D, 0x02) => M::LinkCheckAns(LinkCheckAns {
            margin: p[0],
            gw_cnt: p[1],
        }),
        (D, 0x03) => M::LinkADRReq(LinkADRReq {
            data_rate: p[0] >> 4,
            tx_power: p[0] & 0x0F,
            ch_mask: u16::from_le_bytes([p[1], p[2]]),
            ch_mask_cntl: (p[3] >> 4) & 0x07,
            nb_trans: p[3] & 0x0F,
        }),
        (U, 0x03) => M::LinkADRAns(LinkADRAns {
            power_ack: flag(p[0], 2),
            data_rate_ack: flag(p[0], 1),
            channel_mask_ack: flag(p[0], 0),
        }),
        (D, 0x04) => M::DutyCycleReq(DutyCycleReq {
            max_duty_cycle: p[0] & 0x0F,
        }),
        (U, 0x04) => M::DutyCycleAns,
        (D, 0x05) => M::RXParamSetupReq(RXParamSetupReq {
            rx1_dr_offset: (p[0] >> 4) & 0x07,
            rx2_data_rate: p[0] & 0x0F,
            frequency: freq_from_wire(&p[1..4]),
        }),
        (U, 0x05) => M::RXParamSetupAns(RXParamSetupAns {
            rx1_dr_offset_ack: flag(p[0], 2),
            rx2_data_rate_ack: flag(p[0], 1),
            channel_ack: flag(p[0], 0),
        }),
        (D, 0x06) => M::DevStatusReq,
        (U, 0x06) => M::DevStatusAns(DevStatusAns {
            battery: p[0],
            // Sign-extend the 6-bit two's-complement margin.
            margin: ((p[1] << 2) as i8) >> 2,
        }),
        (D, 0x07) => M::NewChannelReq(NewChannelReq {
            ch_index: p[0],
            frequency: freq_from_wire(&p[1..4]),
            max_dr: p[4] >> 4,
            min_dr: p[4] & 0x0F,
        }),
        (U, 0x07) => M::NewChannelAns(NewChannelAns {
            data_rate_range_ok: flag(p[0], 1),
            channel_frequency_ok: flag(p[0], 0),
        }),
        (D, 0x08) => M::RXTimingSetupReq(RXTimingSetupReq { delay: p[0] & 0x0F }),
        (U, 0x08) => M::RXTimingSetupAns,
        (D, 0x09) => M::TxParamSetupReq(TxParamSetupReq {
            downlink_dwell_time: flag(p[0], 5),
            uplink_dwell_time: flag(p[0], 4),
            max_eirp: p[0] & 0x0F,
        }),
        (U, 0x09) => M::TxParamSetupAns,
        (D, 0x0A) => M::DlChannelReq(DlChannelReq {
            ch_index: p[0],
            frequency: freq_from_wire(&p[1..4]),
        }),
        (U, 0x0A) => M::DlChannelAns(DlChannelAns {
            uplink_frequency_exists: flag(p[0], 1),
            channel_frequency_ok: flag(p[0], 0),
        }),
        (U, 0x0B) => M::RekeyInd(RekeyInd {
            minor_version: p[0] & 0x0F,
        }),
        (D, 0x0B) => M::RekeyConf(RekeyConf {
            minor_version: p[0] & 0x0F,
        }),
        (D, 0x0C) => M::ADRParamSetupReq(ADRParamSetupReq {
            limit_exp: p[0] >> 4,
            delay_exp: p[0] & 0x0F,
        }),
        (U, 0x0C) => M::ADRParamSetupAns,
        (U, 0x0D) => M::DeviceTimeReq,
        (D, 0x0D) => M::DeviceTimeAns(DeviceTimeAns {
            gps_seconds: u32::from_le_bytes([p[0], p[1], p[2], p[3]]),
            fractional: p[4],
        }),
        (D, 0x0E) => {
            let v = u16::from_le_bytes([p[0], p[1]]);
            M::ForceRejoinReq(ForceRejoinReq {
                period: ((v >> 11) & 0x07) as u8,
                max_retries: ((v >> 8) & 0x07) as u8,
                rejoin_type: ((v >> 4) & 0x07) as u8,
                data_rate: (v & 0x0F) as u8,
            })
        }
        (D, 0x0F) => M::RejoinParamSetupReq(RejoinParamSetupReq {
            max_time_n: p[0] >> 4,
            max_count_n: p[0] & 0x0F,
        }),
        (U, 0x0F) => M::RejoinParamSetupAns(RejoinParamSetupAns {
            time_ok: flag(p[0], 0),
        }),
        (U, 0x10) => M::PingSlotInfoReq(PingSlotInfoReq {
            periodicity: p[0] & 0x07,
        }),
        (D, 0x10) => M::PingSlotInfoAns,
        (D, 0x11) => M::PingSlotChannelReq(PingSlotChannelReq {
            frequency: freq_from_wire(&p[0..3]),
            data_rate: p[3] & 0x0F,
        }),
        (U, 0x11) => M::PingSlotChannelAns(PingSlotChannelAns {
            data_rate_ok: flag(p[0], 1),
            channel_frequency_ok: flag(p[0], 0),
        }),
        (U, 0x12) => M::BeaconTimingReq,
        (D, 0x12) => M::BeaconTimingAns(BeaconTimingAns {
            delay: u16::from_le_bytes([p[0], p[1]]),
            channel: p[2],
        }),
        (D, 0x13) => M::BeaconFreqReq(BeaconFreqReq {
            frequency: freq_from_wire(&p[0..3]),
        }),
        (U, 0x13) => M::BeaconFreqAns(BeaconFreqAns {
            beacon_frequency_ok: flag(p[0], 0),
        }),
        (U, 0x20) => M::DeviceModeInd(DeviceModeInd {
            class: DeviceModeClass::from_wire("DeviceModeInd", p[0])?,
        }),
        (D, 0x20) => M::DeviceModeConf(DeviceModeConf {
            class: DeviceModeClass::from_wire("DeviceModeConf", p[0])?,
        }),
        // `payload_len` already rejected every other CID.
        _ => unreachable!("payload_len and decode_payload disagree on CID 0x{cid:02X}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Downlink, Uplink};

    fn enc(c: MacCommand) -> Vec<u8> {
        let mut v = Vec::new();
        c.encode(&mut v).unwrap();
        assert_eq!(v.len(), c.encoded_len());
        assert_eq!(
            MacCommand::decode_all(c.direction(), &v).unwrap(),
            vec![c],
            "round trip of {c:?}"
        );
        v
    }

    fn hx(v: &[u8]) -> String {
        v.iter().map(|b| format!("{b:02X}")).collect()
    }

    // DevStatusAns from ChirpStack `lrwn/src/phy_payload.rs` (FOpts of the 1.0.x confirmed
    // uplink example in vectors.md): battery 115, margin 7 = 067307.
    #[test]
    fn dev_status_ans_chirpstack_vector() {
        let c = MacCommand::decode_all(Uplink, &[0x06, 0x73, 0x07]).unwrap();
        assert_eq!(
            c,
            vec![MacCommand::DevStatusAns(DevStatusAns {
                battery: 115,
                margin: 7
            })]
        );
        assert_eq!(hx(&enc(c[0])), "067307");
    }

    #[test]
    fn dev_status_margin_sign() {
        let c = MacCommand::DevStatusAns(DevStatusAns {
            battery: 0,
            margin: -32,
        });
        assert_eq!(hx(&enc(c)), "060020");
        let c = MacCommand::DevStatusAns(DevStatusAns {
            battery: 255,
            margin: -1,
        });
        assert_eq!(hx(&enc(c)), "06FF3F");
        // RFU bits are ignored on decode.
        assert_eq!(
            MacCommand::decode_all(Uplink, &[0x06, 0x01, 0xC5]).unwrap(),
            vec![MacCommand::DevStatusAns(DevStatusAns {
                battery: 1,
                margin: 5
            })]
        );
        for bad in [-33i8, 32, i8::MIN, i8::MAX] {
            let c = MacCommand::DevStatusAns(DevStatusAns {
                battery: 0,
                margin: bad,
            });
            assert!(matches!(
                c.encode(&mut Vec::new()),
                Err(MacError::InvalidField {
                    field: "margin",
                    ..
                })
            ));
        }
    }

    #[test]
    fn link_adr() {
        // DR5, TXPower 1, channels 0-2, ChMaskCntl 0, NbTrans 1.
        let req = MacCommand::LinkADRReq(LinkADRReq {
            data_rate: 5,
            tx_power: 1,
            ch_mask: 0x0007,
            ch_mask_cntl: 0,
            nb_trans: 1,
        });
        assert_eq!(hx(&enc(req)), "0351070001");
        let req = MacCommand::LinkADRReq(LinkADRReq {
            data_rate: 15,
            tx_power: 15,
            ch_mask: 0xFF00,
            ch_mask_cntl: 7,
            nb_trans: 15,
        });
        assert_eq!(hx(&enc(req)), "03FF00FF7F");
        let ans = MacCommand::LinkADRAns(LinkADRAns {
            power_ack: true,
            data_rate_ack: false,
            channel_mask_ack: true,
        });
        assert_eq!(hx(&enc(ans)), "0305");
        let bad = MacCommand::LinkADRReq(LinkADRReq {
            data_rate: 16,
            tx_power: 0,
            ch_mask: 0,
            ch_mask_cntl: 0,
            nb_trans: 0,
        });
        assert_eq!(
            bad.encode(&mut Vec::new()),
            Err(MacError::InvalidField {
                command: "LinkADRReq",
                field: "data_rate",
                value: 16,
                reason: "must fit in 4 bits (0..=15)"
            })
        );
    }

    #[test]
    fn channels_and_frequencies() {
        // 868.1 MHz = 8681000 × 100 Hz = 0x847628 → LE 28 76 84.
        let c = MacCommand::NewChannelReq(NewChannelReq {
            ch_index: 3,
            frequency: 868_100_000,
            min_dr: 0,
            max_dr: 5,
        });
        assert_eq!(hx(&enc(c)), "070328768450");
        let c = MacCommand::DlChannelReq(DlChannelReq {
            ch_index: 3,
            frequency: 868_100_000,
        });
        assert_eq!(hx(&enc(c)), "0A03287684");
        // RX2 869.525 MHz DR0, RX1DROffset 1: 8695250 = 0x84ADD2.
        let c = MacCommand::RXParamSetupReq(RXParamSetupReq {
            rx1_dr_offset: 1,
            rx2_data_rate: 0,
            frequency: 869_525_000,
        });
        assert_eq!(hx(&enc(c)), "0510D2AD84");
        let c = MacCommand::RXParamSetupAns(RXParamSetupAns {
            rx1_dr_offset_ack: true,
            rx2_data_rate_ack: true,
            channel_ack: true,
        });
        assert_eq!(hx(&enc(c)), "0507");
        let c = MacCommand::NewChannelAns(NewChannelAns {
            data_rate_range_ok: true,
            channel_frequency_ok: false,
        });
        assert_eq!(hx(&enc(c)), "0702");
        let c = MacCommand::DlChannelAns(DlChannelAns {
            uplink_frequency_exists: false,
            channel_frequency_ok: true,
        });
        assert_eq!(hx(&enc(c)), "0A01");
        for bad in [868_100_050, MAX_FREQUENCY_HZ + 100] {
            let c = MacCommand::DlChannelReq(DlChannelReq {
                ch_index: 0,
                frequency: bad,
            });
            assert!(matches!(
                c.encode(&mut Vec::new()),
                Err(MacError::InvalidField {
                    field: "frequency",
                    ..
                })
            ));
        }
        let top = MacCommand::BeaconFreqReq(BeaconFreqReq {
            frequency: MAX_FREQUENCY_HZ,
        });
        assert_eq!(hx(&enc(top)), "13FFFFFF");
    }

    #[test]
    fn small_settings() {
        let c = MacCommand::DutyCycleReq(DutyCycleReq { max_duty_cycle: 7 });
        assert_eq!(hx(&enc(c)), "0407");
        let c = MacCommand::RXTimingSetupReq(RXTimingSetupReq { delay: 1 });
        assert_eq!(hx(&enc(c)), "0801");
        let c = MacCommand::TxParamSetupReq(TxParamSetupReq {
            downlink_dwell_time: true,
            uplink_dwell_time: false,
            max_eirp: 5,
        });
        assert_eq!(hx(&enc(c)), "0925");
        assert_eq!(
            TxParamSetupReq {
                downlink_dwell_time: false,
                uplink_dwell_time: false,
                max_eirp: 5
            }
            .max_eirp_dbm(),
            Some(16)
        );
        let c = MacCommand::LinkCheckAns(LinkCheckAns {
            margin: 20,
            gw_cnt: 3,
        });
        assert_eq!(hx(&enc(c)), "021403");
        for (c, b) in [
            (MacCommand::LinkCheckReq, "02"),
            (MacCommand::DutyCycleAns, "04"),
            (MacCommand::DevStatusReq, "06"),
            (MacCommand::RXTimingSetupAns, "08"),
            (MacCommand::TxParamSetupAns, "09"),
            (MacCommand::ADRParamSetupAns, "0C"),
            (MacCommand::DeviceTimeReq, "0D"),
            (MacCommand::PingSlotInfoAns, "10"),
            (MacCommand::BeaconTimingReq, "12"),
        ] {
            assert_eq!(hx(&enc(c)), b);
        }
    }

    #[test]
    fn lorawan_1_1_commands() {
        let c = MacCommand::ResetInd(ResetInd { minor_version: 1 });
        assert_eq!(hx(&enc(c)), "0101");
        let c = MacCommand::ResetConf(ResetConf { minor_version: 1 });
        assert_eq!(hx(&enc(c)), "0101");
        let c = MacCommand::RekeyInd(RekeyInd { minor_version: 1 });
        assert_eq!(hx(&enc(c)), "0B01");
        let c = MacCommand::RekeyConf(RekeyConf { minor_version: 1 });
        assert_eq!(hx(&enc(c)), "0B01");
        let c = MacCommand::ADRParamSetupReq(ADRParamSetupReq {
            limit_exp: 6,
            delay_exp: 5,
        });
        assert_eq!(hx(&enc(c)), "0C65");
        // Period 2, MaxRetries 3, RejoinType 2, DR 5: 0b00_010_011_0_010_0101 = 0x1325.
        let c = MacCommand::ForceRejoinReq(ForceRejoinReq {
            period: 2,
            max_retries: 3,
            rejoin_type: 2,
            data_rate: 5,
        });
        assert_eq!(hx(&enc(c)), "0E2513");
        let c = MacCommand::RejoinParamSetupReq(RejoinParamSetupReq {
            max_time_n: 10,
            max_count_n: 4,
        });
        assert_eq!(hx(&enc(c)), "0FA4");
        let c = MacCommand::RejoinParamSetupAns(RejoinParamSetupAns { time_ok: true });
        assert_eq!(hx(&enc(c)), "0F01");
        let c = MacCommand::DeviceModeInd(DeviceModeInd {
            class: DeviceModeClass::C,
        });
        assert_eq!(hx(&enc(c)), "2002");
        let c = MacCommand::DeviceModeConf(DeviceModeConf {
            class: DeviceModeClass::A,
        });
        assert_eq!(hx(&enc(c)), "2000");
        assert!(matches!(
            MacCommand::decode_all(Uplink, &[0x20, 0x01]),
            Err(MacError::InvalidField { field: "class", .. })
        ));
        // ForceRejoinReq exists only on the downlink.
        assert_eq!(
            MacCommand::decode_all(Uplink, &[0x0E, 0x00, 0x00]),
            Err(MacError::UnknownCid {
                cid: 0x0E,
                direction: Uplink,
                offset: 0
            })
        );
    }

    #[test]
    fn device_time_and_class_b() {
        let c = MacCommand::DeviceTimeAns(DeviceTimeAns {
            gps_seconds: 0x1234_5678,
            fractional: 128,
        });
        assert_eq!(hx(&enc(c)), "0D7856341280");
        let t = DeviceTimeAns {
            gps_seconds: 10,
            fractional: 64,
        };
        assert_eq!(t.to_duration(), std::time::Duration::from_millis(10_250));
        assert_eq!(DeviceTimeAns::from_duration(t.to_duration()), Some(t));
        let c = MacCommand::PingSlotInfoReq(PingSlotInfoReq { periodicity: 7 });
        assert_eq!(hx(&enc(c)), "1007");
        let c = MacCommand::PingSlotChannelReq(PingSlotChannelReq {
            frequency: 869_525_000,
            data_rate: 3,
        });
        assert_eq!(hx(&enc(c)), "11D2AD8403");
        let c = MacCommand::PingSlotChannelAns(PingSlotChannelAns {
            data_rate_ok: true,
            channel_frequency_ok: true,
        });
        assert_eq!(hx(&enc(c)), "1103");
        let c = MacCommand::BeaconTimingAns(BeaconTimingAns {
            delay: 0x0102,
            channel: 4,
        });
        assert_eq!(hx(&enc(c)), "12020104");
        let c = MacCommand::BeaconFreqAns(BeaconFreqAns {
            beacon_frequency_ok: true,
        });
        assert_eq!(hx(&enc(c)), "1301");
    }

    #[test]
    fn direction_matters_and_errors() {
        // 0x03 0x07 on the uplink is a LinkADRAns with all three ACKs.
        assert_eq!(
            MacCommand::decode_all(Uplink, &[0x03, 0x07, 0x02]).unwrap(),
            vec![
                MacCommand::LinkADRAns(LinkADRAns {
                    power_ack: true,
                    data_rate_ack: true,
                    channel_mask_ack: true
                }),
                MacCommand::LinkCheckReq
            ]
        );
        // The same bytes on the downlink: a LinkADRReq that needs 4 payload bytes.
        assert_eq!(
            MacCommand::decode_all(Downlink, &[0x03, 0x07, 0x02]),
            Err(MacError::Truncated {
                cid: 0x03,
                needed: 4,
                available: 2
            })
        );
        let e = MacCommand::decode_all(Downlink, &[0x06, 0x80, 0x01]).unwrap_err();
        assert_eq!(
            e,
            MacError::UnknownCid {
                cid: 0x80,
                direction: Downlink,
                offset: 1
            }
        );
        assert_eq!(
            e.to_string(),
            "unknown downlink MAC command CID 0x80 at offset 1"
        );
        assert_eq!(MacCommand::decode_all(Uplink, &[]).unwrap(), vec![]);
    }

    #[test]
    fn encode_all_is_atomic() {
        let mut out = vec![0xAA];
        let cmds = [
            MacCommand::DevStatusReq,
            MacCommand::DutyCycleReq(DutyCycleReq { max_duty_cycle: 99 }),
        ];
        assert!(MacCommand::encode_all(&cmds, &mut out).is_err());
        assert_eq!(out, vec![0xAA]);
        let cmds = [
            MacCommand::DevStatusReq,
            MacCommand::LinkCheckAns(LinkCheckAns {
                margin: 1,
                gw_cnt: 2,
            }),
        ];
        MacCommand::encode_all(&cmds, &mut out).unwrap();
        assert_eq!(out, vec![0xAA, 0x06, 0x02, 0x01, 0x02]);
        assert_eq!(MacCommand::encoded_len_all(&cmds), 4);
    }

    #[test]
    fn json_shape() {
        let c = MacCommand::LinkADRReq(LinkADRReq {
            data_rate: 5,
            tx_power: 1,
            ch_mask: 255,
            ch_mask_cntl: 0,
            nb_trans: 1,
        });
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(
            j,
            r#"{"cid":"LinkADRReq","data_rate":5,"tx_power":1,"ch_mask":255,"ch_mask_cntl":0,"nb_trans":1}"#
        );
        assert_eq!(serde_json::from_str::<MacCommand>(&j).unwrap(), c);
        assert_eq!(
            serde_json::to_string(&MacCommand::LinkCheckReq).unwrap(),
            r#"{"cid":"LinkCheckReq"}"#
        );
        let d = MacCommand::DeviceModeInd(DeviceModeInd {
            class: DeviceModeClass::C,
        });
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"cid":"DeviceModeInd","class":"C"}"#
        );
        assert_eq!(c.name(), "LinkADRReq");
    }
}
