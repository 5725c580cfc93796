//! PHYPayload codec: MHDR, join-request, join-accept, rejoin-request, data frames
//! (MACPayload) and proprietary frames, for LoRaWAN L2 1.0.0–1.0.4 and 1.1.
//!
//! The codec is purely structural: it neither checks nor computes MICs and does not
//! decrypt anything. In particular join-accepts travel encrypted, and [`PhyPayload::decode`]
//! parses the bytes it is given as they are; the fields of an encrypted join-accept only
//! mean something after the bytes have been decrypted (see the crypto module). For that
//! reason nothing inside a join-accept (DLSettings, RxDelay, CFList) can make decoding fail.
//!
//! Layout (LoRaWAN L2 1.0.4 §4, 1.1 §4):
//!
//! ```text
//! PHYPayload = MHDR(1) | MACPayload | MIC(4)        (all but proprietary)
//! PHYPayload = MHDR(1) | opaque bytes               (proprietary: no MIC is split off)
//! MHDR       = MType(7..5) | RFU(4..2) | Major(1..0)
//! MACPayload = FHDR | [FPort(1) | FRMPayload]
//! FHDR       = DevAddr(4) | FCtrl(1) | FCnt(2) | FOpts(0..15)
//! ```
//!
//! Decoding never panics and never reads past the input. Every byte string that decodes
//! successfully re-encodes to exactly the same bytes (MHDR RFU bits, FCtrl RFU bit,
//! DLSettings, RxDelay and every CFList included). The only heap allocation on the data
//! frame path is the FRMPayload `Vec`; FOpts are stored inline.

use std::fmt;

use serde::Serialize;

use crate::types::{DevAddr, DevNonce, Eui64, JoinNonce, NetId};

#[cfg(test)]
mod tests;

/// Largest PHYPayload a LoRa radio carries, in bytes.
pub const MAX_PHY_PAYLOAD_LEN: usize = 255;
/// Length of the MIC, in bytes.
pub const MIC_LEN: usize = 4;
/// Smallest data frame: MHDR(1) + DevAddr(4) + FCtrl(1) + FCnt(2) + MIC(4).
pub const DATA_MIN_LEN: usize = 12;
/// Length of a join-request PHYPayload.
pub const JOIN_REQUEST_LEN: usize = 23;
/// Length of a join-accept PHYPayload without CFList.
pub const JOIN_ACCEPT_LEN: usize = 17;
/// Length of a join-accept PHYPayload with CFList.
pub const JOIN_ACCEPT_CF_LIST_LEN: usize = 33;
/// Length of a rejoin-request type 0 or 2 PHYPayload.
pub const REJOIN_0_2_LEN: usize = 19;
/// Length of a rejoin-request type 1 PHYPayload.
pub const REJOIN_1_LEN: usize = 24;

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a byte string is not a valid PHYPayload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No bytes at all (not even an MHDR).
    #[error("empty PHYPayload")]
    Empty,
    /// Fewer bytes than the smallest frame of this message type.
    #[error("{msg_type} PHYPayload too short: need at least {min} bytes, got {got}")]
    TooShort {
        /// Message type from the MHDR.
        msg_type: MType,
        /// Smallest valid length for this message type.
        min: usize,
        /// Bytes received.
        got: usize,
    },
    /// More bytes than a LoRa PHY can carry.
    #[error("PHYPayload too long: at most {max} bytes, got {got}")]
    TooLong {
        /// Largest valid length ([`MAX_PHY_PAYLOAD_LEN`]).
        max: usize,
        /// Bytes received.
        got: usize,
    },
    /// MHDR Major is not 0 (LoRaWAN R1).
    #[error("unsupported MHDR major version {0} (only 0 = LoRaWAN R1)")]
    BadMajor(u8),
    /// FCtrl.FOptsLen claims more FOpts bytes than the frame holds before the MIC.
    #[error(
        "FOptsLen {f_opts_len} runs past the end of the frame ({available} bytes left before the MIC)"
    )]
    FOptsPastEnd {
        /// FOptsLen from FCtrl.
        f_opts_len: u8,
        /// Bytes between FCnt and the MIC.
        available: usize,
    },
    /// FPort 0 (MAC commands in FRMPayload) together with non-empty FOpts.
    #[error("FPort 0 with non-empty FOpts")]
    FPortZeroWithFOpts,
    /// A join-request that is not exactly [`JOIN_REQUEST_LEN`] bytes.
    #[error("join-request must be 23 bytes, got {0}")]
    BadJoinRequestLength(usize),
    /// A join-accept that is neither 17 nor 33 bytes.
    #[error("join-accept must be 17 or 33 bytes, got {0}")]
    BadJoinAcceptLength(usize),
    /// A rejoin-request whose RejoinType is not 0, 1 or 2.
    #[error("unknown RejoinType {0}")]
    BadRejoinType(u8),
    /// A rejoin-request of the wrong length for its RejoinType.
    #[error("rejoin-request type {rejoin_type} must be {expected} bytes, got {got}")]
    BadRejoinLength {
        /// RejoinType from the frame.
        rejoin_type: u8,
        /// Length this type requires.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
}

/// Why a [`PhyPayload`] (or one of its parts) cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded frame would exceed [`MAX_PHY_PAYLOAD_LEN`].
    #[error("PHYPayload too long: at most {max} bytes, would be {got}")]
    TooLong {
        /// Largest valid length.
        max: usize,
        /// Length the frame would have.
        got: usize,
    },
    /// MHDR Major is not 0.
    #[error("unsupported MHDR major version {0} (only 0 = LoRaWAN R1)")]
    BadMajor(u8),
    /// A numeric field does not fit its bit width.
    #[error("{field} = {value} out of range (max {max})")]
    FieldOutOfRange {
        /// Name of the field.
        field: &'static str,
        /// The value given.
        value: u32,
        /// Largest value the field holds.
        max: u32,
    },
    /// The payload variant does not belong to the MHDR message type.
    #[error("{m_type} MHDR with a {payload} payload")]
    PayloadMismatch {
        /// Message type from the MHDR.
        m_type: MType,
        /// Name of the payload variant given.
        payload: &'static str,
    },
    /// A non-proprietary frame without MIC.
    #[error("{0} frame needs a MIC")]
    MissingMic(MType),
    /// A proprietary frame with a MIC (proprietary frames are MHDR + opaque bytes).
    #[error("proprietary frame must not carry a separate MIC")]
    UnexpectedMic,
    /// More than 15 bytes of FOpts.
    #[error("FOpts too long: at most 15 bytes, got {0}")]
    FOptsTooLong(usize),
    /// FPort 0 together with non-empty FOpts.
    #[error("FPort 0 with non-empty FOpts")]
    FPortZeroWithFOpts,
    /// A non-empty FRMPayload without FPort.
    #[error("FRMPayload of {0} bytes without FPort")]
    FrmPayloadWithoutFPort(usize),
    /// An FCtrl flag that only exists in the other direction (FPending on an uplink,
    /// ClassB on a downlink).
    #[error("FCtrl.{flag} set on a {m_type} frame")]
    FCtrlWrongDirection {
        /// `"f_pending"` or `"class_b"`.
        flag: &'static str,
        /// Message type of the frame.
        m_type: MType,
    },
    /// RejoinType other than 0 or 2 in [`RejoinRequest::Type0Or2`].
    #[error("RejoinType {0} in a type 0/2 rejoin-request")]
    BadRejoinType(u8),
    /// A CFList type 0 frequency that is not a multiple of 100 Hz below 2^24 × 100 Hz.
    #[error("CFList frequency {0} Hz is not a multiple of 100 Hz below 1677.7216 MHz")]
    BadCfListFrequency(u32),
    /// [`CfList::Rfu`] with CFListType 0 or 1, which have their own variants.
    #[error("CFListType {0} must use its own CfList variant")]
    RfuCfListType(u8),
}

// ---------------------------------------------------------------------------------------
// MHDR
// ---------------------------------------------------------------------------------------

/// MHDR message type (bits 7..5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MType {
    /// 000: join-request (uplink).
    JoinRequest,
    /// 001: join-accept (downlink).
    JoinAccept,
    /// 010: unconfirmed data uplink.
    UnconfirmedDataUp,
    /// 011: unconfirmed data downlink.
    UnconfirmedDataDown,
    /// 100: confirmed data uplink.
    ConfirmedDataUp,
    /// 101: confirmed data downlink.
    ConfirmedDataDown,
    /// 110: rejoin-request (uplink, LoRaWAN 1.1; RFU in 1.0).
    RejoinRequest,
    /// 111: proprietary.
    Proprietary,
}

impl MType {
    /// All message types in MHDR order.
    pub const ALL: [MType; 8] = [
        MType::JoinRequest,
        MType::JoinAccept,
        MType::UnconfirmedDataUp,
        MType::UnconfirmedDataDown,
        MType::ConfirmedDataUp,
        MType::ConfirmedDataDown,
        MType::RejoinRequest,
        MType::Proprietary,
    ];

    /// Message type from its 3-bit code (higher bits ignored).
    pub const fn from_bits(bits: u8) -> Self {
        Self::ALL[(bits & 0x07) as usize]
    }

    /// The 3-bit code.
    pub const fn bits(self) -> u8 {
        self as u8
    }

    /// True for messages sent by end devices (join-, rejoin-request, data up). Proprietary
    /// frames have no defined direction and return false.
    pub const fn is_uplink(self) -> bool {
        matches!(
            self,
            MType::JoinRequest
                | MType::UnconfirmedDataUp
                | MType::ConfirmedDataUp
                | MType::RejoinRequest
        )
    }

    /// True for data frames (those carrying a MACPayload with FHDR).
    pub const fn is_data(self) -> bool {
        matches!(
            self,
            MType::UnconfirmedDataUp
                | MType::UnconfirmedDataDown
                | MType::ConfirmedDataUp
                | MType::ConfirmedDataDown
        )
    }

    /// True for confirmed data frames.
    pub const fn is_confirmed(self) -> bool {
        matches!(self, MType::ConfirmedDataUp | MType::ConfirmedDataDown)
    }

    /// Upper-case name as used in events and APIs, e.g. `UNCONFIRMED_UP`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MType::JoinRequest => "JOIN_REQUEST",
            MType::JoinAccept => "JOIN_ACCEPT",
            MType::UnconfirmedDataUp => "UNCONFIRMED_UP",
            MType::UnconfirmedDataDown => "UNCONFIRMED_DOWN",
            MType::ConfirmedDataUp => "CONFIRMED_UP",
            MType::ConfirmedDataDown => "CONFIRMED_DOWN",
            MType::RejoinRequest => "REJOIN_REQUEST",
            MType::Proprietary => "PROPRIETARY",
        }
    }

    /// Smallest PHYPayload length of this message type.
    pub const fn min_len(self) -> usize {
        match self {
            MType::JoinRequest => JOIN_REQUEST_LEN,
            MType::JoinAccept => JOIN_ACCEPT_LEN,
            MType::RejoinRequest => REJOIN_0_2_LEN,
            MType::Proprietary => 1,
            _ => DATA_MIN_LEN,
        }
    }
}

impl fmt::Display for MType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for MType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The MAC header: message type, RFU bits and major version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Mhdr {
    /// Message type.
    pub m_type: MType,
    /// The three RFU bits (4..2), kept so that frames re-encode byte for byte; 0 when sending.
    pub rfu: u8,
    /// Major version (bits 1..0); must be 0 (LoRaWAN R1).
    pub major: u8,
}

impl Mhdr {
    /// An MHDR of this type with RFU bits and Major 0.
    pub const fn new(m_type: MType) -> Self {
        Self {
            m_type,
            rfu: 0,
            major: 0,
        }
    }

    /// Splits an MHDR byte into its fields (never fails; Major is checked by the decoder).
    pub const fn from_byte(b: u8) -> Self {
        Self {
            m_type: MType::from_bits(b >> 5),
            rfu: (b >> 2) & 0x07,
            major: b & 0x03,
        }
    }

    /// The MHDR byte; fails if Major is not 0 or RFU does not fit in 3 bits.
    pub fn to_byte(self) -> Result<u8, EncodeError> {
        if self.major != 0 {
            return Err(EncodeError::BadMajor(self.major));
        }
        check_range("mhdr.rfu", self.rfu.into(), 0x07)?;
        Ok((self.m_type.bits() << 5) | (self.rfu << 2) | self.major)
    }
}

// ---------------------------------------------------------------------------------------
// Join-request, join-accept, rejoin-request
// ---------------------------------------------------------------------------------------

/// Join-request MACPayload (L2 1.0.4 §6.2.4, 1.1 §6.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct JoinRequest {
    /// JoinEUI (AppEUI in 1.0).
    pub join_eui: Eui64,
    /// DevEUI.
    pub dev_eui: Eui64,
    /// DevNonce.
    pub dev_nonce: DevNonce,
}

/// Join-accept DLSettings byte: OptNeg (bit 7, RFU in 1.0), RX1DRoffset (6..4),
/// RX2DataRate (3..0). Covers all eight bits, so every byte round-trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct DlSettings {
    /// OptNeg: the network runs LoRaWAN 1.1 or later (bit 7).
    pub opt_neg: bool,
    /// RX1 data-rate offset (3 bits).
    pub rx1_dr_offset: u8,
    /// RX2 data rate (4 bits).
    pub rx2_data_rate: u8,
}

impl DlSettings {
    /// Splits a DLSettings byte.
    pub const fn from_byte(b: u8) -> Self {
        Self {
            opt_neg: b & 0x80 != 0,
            rx1_dr_offset: (b >> 4) & 0x07,
            rx2_data_rate: b & 0x0F,
        }
    }

    /// The DLSettings byte; fails if a field does not fit its bits.
    pub fn to_byte(self) -> Result<u8, EncodeError> {
        check_range("dl_settings.rx1_dr_offset", self.rx1_dr_offset.into(), 0x07)?;
        check_range("dl_settings.rx2_data_rate", self.rx2_data_rate.into(), 0x0F)?;
        Ok(((self.opt_neg as u8) << 7) | (self.rx1_dr_offset << 4) | self.rx2_data_rate)
    }
}

/// The optional 16-byte CFList of a join-accept (RP002 "CFList"). Every 16-byte value
/// decodes to exactly one variant and re-encodes to the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CfList {
    /// CFListType 0: five extra channel frequencies in Hz (channels 3..=7 in EU868-like
    /// regions); on the air 24-bit little-endian multiples of 100 Hz, 0 = no channel.
    Frequencies([u32; 5]),
    /// CFListType 1: channel masks (US915/AU915 use ChMask0..=4, and the bytes of
    /// `ch_masks[5]` are RFU there; CN470 in RP 1.1rA uses ChMask0..=5), then RFU.
    ChannelMask {
        /// ChMask0.. as 16-bit little-endian words; bit n of mask m enables channel 16m+n.
        ch_masks: [u16; 6],
        /// The RFU bytes 12..15.
        #[serde(serialize_with = "ser_hex")]
        rfu: [u8; 3],
    },
    /// Any other CFListType (RFU): the raw 15 content bytes.
    Rfu {
        /// CFListType byte (2..=255).
        cf_list_type: u8,
        /// Bytes 0..15 of the CFList.
        #[serde(serialize_with = "ser_hex")]
        bytes: [u8; 15],
    },
}

impl CfList {
    /// CFList length in bytes.
    pub const LEN: usize = 16;

    /// Parses a CFList; never fails (unknown types become [`CfList::Rfu`]).
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        let (content, ty) = b.split_at(15);
        match ty[0] {
            0 => {
                let mut freqs = [0u32; 5];
                for (f, c) in freqs.iter_mut().zip(content.chunks_exact(3)) {
                    *f = u32::from_le_bytes([c[0], c[1], c[2], 0]) * 100;
                }
                CfList::Frequencies(freqs)
            }
            1 => {
                let mut ch_masks = [0u16; 6];
                for (m, c) in ch_masks.iter_mut().zip(content.chunks_exact(2)) {
                    *m = u16::from_le_bytes([c[0], c[1]]);
                }
                CfList::ChannelMask {
                    ch_masks,
                    rfu: [content[12], content[13], content[14]],
                }
            }
            t => {
                let mut bytes = [0u8; 15];
                bytes.copy_from_slice(content);
                CfList::Rfu {
                    cf_list_type: t,
                    bytes,
                }
            }
        }
    }

    /// The 16 CFList bytes.
    pub fn to_bytes(&self) -> Result<[u8; 16], EncodeError> {
        let mut out = [0u8; 16];
        match self {
            CfList::Frequencies(freqs) => {
                for (f, c) in freqs.iter().zip(out.chunks_exact_mut(3)) {
                    if f % 100 != 0 || f / 100 > 0xFF_FFFF {
                        return Err(EncodeError::BadCfListFrequency(*f));
                    }
                    c.copy_from_slice(&(f / 100).to_le_bytes()[..3]);
                }
                out[15] = 0;
            }
            CfList::ChannelMask { ch_masks, rfu } => {
                for (m, c) in ch_masks.iter().zip(out.chunks_exact_mut(2)) {
                    c.copy_from_slice(&m.to_le_bytes());
                }
                out[12..15].copy_from_slice(rfu);
                out[15] = 1;
            }
            CfList::Rfu {
                cf_list_type,
                bytes,
            } => {
                if *cf_list_type <= 1 {
                    return Err(EncodeError::RfuCfListType(*cf_list_type));
                }
                out[..15].copy_from_slice(bytes);
                out[15] = *cf_list_type;
            }
        }
        Ok(out)
    }

    /// The CFListType byte.
    pub const fn cf_list_type(&self) -> u8 {
        match self {
            CfList::Frequencies(_) => 0,
            CfList::ChannelMask { .. } => 1,
            CfList::Rfu { cf_list_type, .. } => *cf_list_type,
        }
    }
}

/// Join-accept MACPayload (L2 1.0.4 §6.2.5, 1.1 §6.2.3), as carried (see module docs:
/// fields of an encrypted join-accept are meaningless until it is decrypted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct JoinAccept {
    /// JoinNonce (AppNonce in 1.0).
    pub join_nonce: JoinNonce,
    /// Home NetID.
    pub home_net_id: NetId,
    /// DevAddr assigned to the device.
    pub dev_addr: DevAddr,
    /// DLSettings.
    pub dl_settings: DlSettings,
    /// RxDelay byte as sent: bits 3..0 Del (seconds, 0 means 1), bits 7..4 RFU.
    pub rx_delay: u8,
    /// Optional CFList.
    pub cf_list: Option<CfList>,
}

impl JoinAccept {
    /// RX1 delay in seconds from RxDelay (Del 0 means 1 s).
    pub const fn rx1_delay_secs(&self) -> u8 {
        match self.rx_delay & 0x0F {
            0 => 1,
            d => d,
        }
    }
}

/// Rejoin-request MACPayload (L2 1.1 §6.2.4.1–2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejoinRequest {
    /// RejoinType 0 or 2: NetID and DevEUI (19-byte PHYPayload).
    Type0Or2 {
        /// RejoinType, 0 or 2.
        rejoin_type: u8,
        /// NetID of the network the device is in.
        net_id: NetId,
        /// DevEUI.
        dev_eui: Eui64,
        /// RJcount0.
        rj_count0: u16,
    },
    /// RejoinType 1: JoinEUI and DevEUI (24-byte PHYPayload).
    Type1 {
        /// JoinEUI.
        join_eui: Eui64,
        /// DevEUI.
        dev_eui: Eui64,
        /// RJcount1.
        rj_count1: u16,
    },
}

impl RejoinRequest {
    /// The RejoinType byte.
    pub const fn rejoin_type(&self) -> u8 {
        match self {
            RejoinRequest::Type0Or2 { rejoin_type, .. } => *rejoin_type,
            RejoinRequest::Type1 { .. } => 1,
        }
    }

    /// The DevEUI.
    pub const fn dev_eui(&self) -> Eui64 {
        match self {
            RejoinRequest::Type0Or2 { dev_eui, .. } | RejoinRequest::Type1 { dev_eui, .. } => {
                *dev_eui
            }
        }
    }

    /// PHYPayload length of this rejoin-request.
    pub const fn phy_len(&self) -> usize {
        match self {
            RejoinRequest::Type0Or2 { .. } => REJOIN_0_2_LEN,
            RejoinRequest::Type1 { .. } => REJOIN_1_LEN,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Data frames
// ---------------------------------------------------------------------------------------

/// FCtrl flags (FOptsLen, its low nibble, is derived from [`Fhdr::f_opts`]).
///
/// Bit 4 is ClassB on uplinks and FPending on downlinks; decoding fills the field of the
/// frame's direction, and encoding rejects the other one. Bit 6 is ADRACKReq on uplinks and
/// RFU on downlinks, where `adr_ack_req` carries the RFU bit so that it round-trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct FCtrl {
    /// ADR (bit 7).
    pub adr: bool,
    /// ADRACKReq (bit 6; RFU on downlinks).
    pub adr_ack_req: bool,
    /// ACK (bit 5).
    pub ack: bool,
    /// FPending (bit 4, downlinks only).
    pub f_pending: bool,
    /// ClassB (bit 4, uplinks only; RFU in 1.0.0/1.0.1).
    pub class_b: bool,
}

impl FCtrl {
    /// Splits an FCtrl byte of a frame in the given direction into flags and FOptsLen.
    pub const fn from_byte(b: u8, uplink: bool) -> (Self, u8) {
        let bit4 = b & 0x10 != 0;
        (
            Self {
                adr: b & 0x80 != 0,
                adr_ack_req: b & 0x40 != 0,
                ack: b & 0x20 != 0,
                f_pending: bit4 && !uplink,
                class_b: bit4 && uplink,
            },
            b & 0x0F,
        )
    }

    /// The FCtrl byte for a frame of type `m_type` carrying `f_opts_len` FOpts bytes.
    pub fn to_byte(self, m_type: MType, f_opts_len: usize) -> Result<u8, EncodeError> {
        let uplink = m_type.is_uplink();
        if uplink && self.f_pending {
            return Err(EncodeError::FCtrlWrongDirection {
                flag: "f_pending",
                m_type,
            });
        }
        if !uplink && self.class_b {
            return Err(EncodeError::FCtrlWrongDirection {
                flag: "class_b",
                m_type,
            });
        }
        if f_opts_len > FOpts::MAX_LEN {
            return Err(EncodeError::FOptsTooLong(f_opts_len));
        }
        let bit4 = if uplink { self.class_b } else { self.f_pending };
        Ok(((self.adr as u8) << 7)
            | ((self.adr_ack_req as u8) << 6)
            | ((self.ack as u8) << 5)
            | ((bit4 as u8) << 4)
            | f_opts_len as u8)
    }
}

/// FOpts: up to 15 bytes of MAC commands in the FHDR, stored inline (no heap).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FOpts {
    len: u8,
    // Invariant: bytes at and after `len` are zero, so derived equality is by content.
    buf: [u8; 15],
}

impl FOpts {
    /// Largest FOpts length.
    pub const MAX_LEN: usize = 15;
    /// No FOpts.
    pub const EMPTY: Self = Self {
        len: 0,
        buf: [0; 15],
    };

    /// FOpts holding `bytes`; fails with [`EncodeError::FOptsTooLong`] beyond 15 bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, EncodeError> {
        let mut buf = [0u8; 15];
        buf.get_mut(..bytes.len())
            .ok_or(EncodeError::FOptsTooLong(bytes.len()))?
            .copy_from_slice(bytes);
        Ok(Self {
            len: bytes.len() as u8,
            buf,
        })
    }

    /// The FOpts bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// Number of FOpts bytes (FOptsLen).
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// True when there are no FOpts.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsRef<[u8]> for FOpts {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl TryFrom<&[u8]> for FOpts {
    type Error = EncodeError;
    fn try_from(bytes: &[u8]) -> Result<Self, EncodeError> {
        Self::new(bytes)
    }
}

impl fmt::Debug for FOpts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FOpts({})", Hex(self.as_slice()))
    }
}

impl Serialize for FOpts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&Hex(self.as_slice()))
    }
}

/// Frame header of a data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Fhdr {
    /// DevAddr.
    pub dev_addr: DevAddr,
    /// FCtrl flags.
    pub f_ctrl: FCtrl,
    /// The 16 low bits of the frame counter.
    pub f_cnt: u16,
    /// FOpts (MAC commands; encrypted with NwkSEncKey in 1.1).
    pub f_opts: FOpts,
}

/// MACPayload of a data frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize)]
pub struct MacPayload {
    /// Frame header.
    pub fhdr: Fhdr,
    /// FPort: present iff bytes follow the FHDR.
    pub f_port: Option<u8>,
    /// FRMPayload as carried (encrypted).
    #[serde(serialize_with = "ser_hex")]
    pub frm_payload: Vec<u8>,
}

impl MacPayload {
    /// Length in bytes of this MACPayload on the air (FHDR, FPort, FRMPayload).
    pub fn encoded_len(&self) -> usize {
        7 + self.fhdr.f_opts.len() + self.f_port.map_or(0, |_| 1) + self.frm_payload.len()
    }
}

// ---------------------------------------------------------------------------------------
// PHYPayload
// ---------------------------------------------------------------------------------------

/// What follows the MHDR (the MACPayload in the broad sense).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// Join-request.
    JoinRequest(JoinRequest),
    /// Join-accept (possibly still encrypted).
    JoinAccept(JoinAccept),
    /// Rejoin-request.
    RejoinRequest(RejoinRequest),
    /// Data frame up or down, confirmed or not.
    MacPayload(MacPayload),
    /// Proprietary frame: every byte after the MHDR, MIC included if there is one.
    Proprietary(#[serde(serialize_with = "ser_hex")] Vec<u8>),
}

impl Payload {
    /// Name of the variant, for errors.
    pub const fn kind(&self) -> &'static str {
        match self {
            Payload::JoinRequest(_) => "join_request",
            Payload::JoinAccept(_) => "join_accept",
            Payload::RejoinRequest(_) => "rejoin_request",
            Payload::MacPayload(_) => "mac_payload",
            Payload::Proprietary(_) => "proprietary",
        }
    }

    /// True when this payload variant belongs to message type `m_type`.
    pub const fn matches(&self, m_type: MType) -> bool {
        matches!(
            (self, m_type),
            (Payload::JoinRequest(_), MType::JoinRequest)
                | (Payload::JoinAccept(_), MType::JoinAccept)
                | (Payload::RejoinRequest(_), MType::RejoinRequest)
                | (Payload::Proprietary(_), MType::Proprietary)
        ) || (matches!(self, Payload::MacPayload(_)) && m_type.is_data())
    }
}

/// A complete LoRaWAN PHYPayload.
///
/// Invariants checked by [`PhyPayload::encode`] (and always true after
/// [`PhyPayload::decode`]): `payload` matches `mhdr.m_type`, and `mic` is `None` exactly for
/// proprietary frames.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct PhyPayload {
    /// MAC header.
    pub mhdr: Mhdr,
    /// Payload after the MHDR.
    pub payload: Payload,
    /// MIC (last four bytes), `None` for proprietary frames.
    #[serde(serialize_with = "ser_opt_hex")]
    pub mic: Option<[u8; 4]>,
}

impl PhyPayload {
    /// Parses a PHYPayload. Never panics; every failure is a precise [`DecodeError`].
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let (&first, rest) = b.split_first().ok_or(DecodeError::Empty)?;
        let got = b.len();
        if got > MAX_PHY_PAYLOAD_LEN {
            return Err(DecodeError::TooLong {
                max: MAX_PHY_PAYLOAD_LEN,
                got,
            });
        }
        let mhdr = Mhdr::from_byte(first);
        if mhdr.major != 0 {
            return Err(DecodeError::BadMajor(mhdr.major));
        }
        let m_type = mhdr.m_type;
        let too_short = DecodeError::TooShort {
            msg_type: m_type,
            min: m_type.min_len(),
            got,
        };
        if got < m_type.min_len() {
            return Err(too_short);
        }
        if m_type == MType::Proprietary {
            return Ok(Self {
                mhdr,
                payload: Payload::Proprietary(rest.to_vec()),
                mic: None,
            });
        }
        let (body, mic) = rest
            .split_last_chunk::<MIC_LEN>()
            .ok_or(too_short.clone())?;
        let mut r = Reader(body);
        let payload = match m_type {
            MType::JoinRequest => {
                if got != JOIN_REQUEST_LEN {
                    return Err(DecodeError::BadJoinRequestLength(got));
                }
                Payload::JoinRequest(JoinRequest {
                    join_eui: Eui64::from_le_bytes(r.array().ok_or(too_short.clone())?),
                    dev_eui: Eui64::from_le_bytes(r.array().ok_or(too_short.clone())?),
                    dev_nonce: DevNonce::from_le_bytes(r.array().ok_or(too_short)?),
                })
            }
            MType::JoinAccept => {
                if got != JOIN_ACCEPT_LEN && got != JOIN_ACCEPT_CF_LIST_LEN {
                    return Err(DecodeError::BadJoinAcceptLength(got));
                }
                let join_nonce = JoinNonce::from_le_bytes(r.array().ok_or(too_short.clone())?);
                let home_net_id = NetId::from_le_bytes(r.array().ok_or(too_short.clone())?);
                let dev_addr = DevAddr::from_le_bytes(r.array().ok_or(too_short.clone())?);
                let dl_settings = DlSettings::from_byte(r.u8().ok_or(too_short.clone())?);
                let rx_delay = r.u8().ok_or(too_short)?;
                let cf_list = r.array::<16>().map(|c| CfList::from_bytes(&c));
                Payload::JoinAccept(JoinAccept {
                    join_nonce,
                    home_net_id,
                    dev_addr,
                    dl_settings,
                    rx_delay,
                    cf_list,
                })
            }
            MType::RejoinRequest => {
                let rejoin_type = r.u8().ok_or(too_short.clone())?;
                let expected = match rejoin_type {
                    0 | 2 => REJOIN_0_2_LEN,
                    1 => REJOIN_1_LEN,
                    t => return Err(DecodeError::BadRejoinType(t)),
                };
                if got != expected {
                    return Err(DecodeError::BadRejoinLength {
                        rejoin_type,
                        expected,
                        got,
                    });
                }
                Payload::RejoinRequest(if rejoin_type == 1 {
                    RejoinRequest::Type1 {
                        join_eui: Eui64::from_le_bytes(r.array().ok_or(too_short.clone())?),
                        dev_eui: Eui64::from_le_bytes(r.array().ok_or(too_short.clone())?),
                        rj_count1: u16::from_le_bytes(r.array().ok_or(too_short)?),
                    }
                } else {
                    RejoinRequest::Type0Or2 {
                        rejoin_type,
                        net_id: NetId::from_le_bytes(r.array().ok_or(too_short.clone())?),
                        dev_eui: Eui64::from_le_bytes(r.array().ok_or(too_short.clone())?),
                        rj_count0: u16::from_le_bytes(r.array().ok_or(too_short)?),
                    }
                })
            }
            // The four data types (Proprietary returned above).
            _ => Payload::MacPayload(decode_mac_payload(m_type, r).ok_or(too_short)??),
        };
        Ok(Self {
            mhdr,
            payload,
            mic: Some(*mic),
        })
    }

    /// Number of bytes [`PhyPayload::encode`] produces (without validating anything).
    pub fn encoded_len(&self) -> usize {
        1 + match &self.payload {
            Payload::JoinRequest(_) => JOIN_REQUEST_LEN - 1 - MIC_LEN,
            Payload::JoinAccept(ja) => {
                JOIN_ACCEPT_LEN - 1 - MIC_LEN + ja.cf_list.map_or(0, |_| CfList::LEN)
            }
            Payload::RejoinRequest(rj) => rj.phy_len() - 1 - MIC_LEN,
            Payload::MacPayload(mp) => mp.encoded_len(),
            Payload::Proprietary(p) => p.len(),
        } + self.mic.map_or(0, |_| MIC_LEN)
    }

    /// Encodes the frame into a new `Vec` of exactly [`PhyPayload::encoded_len`] bytes.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Appends the encoded frame to `buf`, reserving exactly the bytes it needs. On error
    /// `buf` is left as it was.
    pub fn encode_into(&self, buf: &mut Vec<u8>) -> Result<(), EncodeError> {
        let len = self.encoded_len();
        if len > MAX_PHY_PAYLOAD_LEN {
            return Err(EncodeError::TooLong {
                max: MAX_PHY_PAYLOAD_LEN,
                got: len,
            });
        }
        let m_type = self.mhdr.m_type;
        if !self.payload.matches(m_type) {
            return Err(EncodeError::PayloadMismatch {
                m_type,
                payload: self.payload.kind(),
            });
        }
        match (m_type, self.mic) {
            (MType::Proprietary, Some(_)) => return Err(EncodeError::UnexpectedMic),
            (MType::Proprietary, None) => {}
            (_, None) => return Err(EncodeError::MissingMic(m_type)),
            (_, Some(_)) => {}
        }
        let start = buf.len();
        buf.reserve(len);
        let res = self.write(buf);
        if res.is_err() {
            buf.truncate(start);
        }
        debug_assert!(res.is_err() || buf.len() - start == len);
        res
    }

    /// The encoded frame without its MIC: the bytes a MIC is computed over (after the
    /// B0/B1 block for data frames).
    pub fn encode_mic_input(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = self.encode()?;
        if self.mic.is_some() {
            out.truncate(out.len() - MIC_LEN);
        }
        Ok(out)
    }

    /// The bytes of a raw frame that its MIC covers: all but the last four (empty if the
    /// frame is shorter than a MIC).
    pub fn mic_input(raw: &[u8]) -> &[u8] {
        &raw[..raw.len().saturating_sub(MIC_LEN)]
    }

    /// Message type from the MHDR.
    pub const fn m_type(&self) -> MType {
        self.mhdr.m_type
    }

    /// True for uplink message types (see [`MType::is_uplink`]).
    pub const fn is_uplink(&self) -> bool {
        self.mhdr.m_type.is_uplink()
    }

    /// DevAddr of a data frame; `None` for every other kind (a join-accept's DevAddr is
    /// in [`JoinAccept::dev_addr`], meaningful once decrypted).
    pub fn dev_addr(&self) -> Option<DevAddr> {
        self.mac_payload().map(|m| m.fhdr.dev_addr)
    }

    /// The 16-bit FCnt of a data frame.
    pub fn f_cnt(&self) -> Option<u16> {
        self.mac_payload().map(|m| m.fhdr.f_cnt)
    }

    /// The MACPayload of a data frame.
    pub fn mac_payload(&self) -> Option<&MacPayload> {
        match &self.payload {
            Payload::MacPayload(m) => Some(m),
            _ => None,
        }
    }

    /// The MACPayload of a data frame, mutably.
    pub fn mac_payload_mut(&mut self) -> Option<&mut MacPayload> {
        match &mut self.payload {
            Payload::MacPayload(m) => Some(m),
            _ => None,
        }
    }

    fn write(&self, buf: &mut Vec<u8>) -> Result<(), EncodeError> {
        buf.push(self.mhdr.to_byte()?);
        match &self.payload {
            Payload::JoinRequest(jr) => {
                buf.extend_from_slice(&jr.join_eui.to_le_bytes());
                buf.extend_from_slice(&jr.dev_eui.to_le_bytes());
                buf.extend_from_slice(&jr.dev_nonce.to_le_bytes());
            }
            Payload::JoinAccept(ja) => {
                buf.extend_from_slice(&ja.join_nonce.to_le_bytes());
                buf.extend_from_slice(&ja.home_net_id.to_le_bytes());
                buf.extend_from_slice(&ja.dev_addr.to_le_bytes());
                buf.push(ja.dl_settings.to_byte()?);
                buf.push(ja.rx_delay);
                if let Some(cf) = &ja.cf_list {
                    buf.extend_from_slice(&cf.to_bytes()?);
                }
            }
            Payload::RejoinRequest(rj) => match rj {
                RejoinRequest::Type0Or2 {
                    rejoin_type,
                    net_id,
                    dev_eui,
                    rj_count0,
                } => {
                    if *rejoin_type != 0 && *rejoin_type != 2 {
                        return Err(EncodeError::BadRejoinType(*rejoin_type));
                    }
                    buf.push(*rejoin_type);
                    buf.extend_from_slice(&net_id.to_le_bytes());
                    buf.extend_from_slice(&dev_eui.to_le_bytes());
                    buf.extend_from_slice(&rj_count0.to_le_bytes());
                }
                RejoinRequest::Type1 {
                    join_eui,
                    dev_eui,
                    rj_count1,
                } => {
                    buf.push(1);
                    buf.extend_from_slice(&join_eui.to_le_bytes());
                    buf.extend_from_slice(&dev_eui.to_le_bytes());
                    buf.extend_from_slice(&rj_count1.to_le_bytes());
                }
            },
            Payload::MacPayload(mp) => {
                let f_opts = mp.fhdr.f_opts.as_slice();
                match mp.f_port {
                    Some(0) if !f_opts.is_empty() => return Err(EncodeError::FPortZeroWithFOpts),
                    None if !mp.frm_payload.is_empty() => {
                        return Err(EncodeError::FrmPayloadWithoutFPort(mp.frm_payload.len()));
                    }
                    _ => {}
                }
                buf.extend_from_slice(&mp.fhdr.dev_addr.to_le_bytes());
                buf.push(mp.fhdr.f_ctrl.to_byte(self.mhdr.m_type, f_opts.len())?);
                buf.extend_from_slice(&mp.fhdr.f_cnt.to_le_bytes());
                buf.extend_from_slice(f_opts);
                if let Some(port) = mp.f_port {
                    buf.push(port);
                    buf.extend_from_slice(&mp.frm_payload);
                }
            }
            Payload::Proprietary(p) => buf.extend_from_slice(p),
        }
        if let Some(mic) = &self.mic {
            buf.extend_from_slice(mic);
        }
        Ok(())
    }
}

/// Parses FHDR, FPort and FRMPayload of a data frame (`body` = bytes between MHDR and MIC).
/// The outer `None` means the body is shorter than an FHDR.
fn decode_mac_payload(m_type: MType, mut r: Reader<'_>) -> Option<Result<MacPayload, DecodeError>> {
    let dev_addr = DevAddr::from_le_bytes(r.array()?);
    let (f_ctrl, f_opts_len) = FCtrl::from_byte(r.u8()?, m_type.is_uplink());
    let f_cnt = u16::from_le_bytes(r.array()?);
    let Some(f_opts) = r.bytes(f_opts_len.into()) else {
        return Some(Err(DecodeError::FOptsPastEnd {
            f_opts_len,
            available: r.0.len(),
        }));
    };
    let mut buf = [0u8; 15];
    buf[..f_opts.len()].copy_from_slice(f_opts);
    let f_opts = FOpts {
        len: f_opts_len,
        buf,
    };
    let (f_port, frm_payload) = match r.0.split_first() {
        None => (None, Vec::new()),
        Some((&port, frm)) => {
            if port == 0 && !f_opts.is_empty() {
                return Some(Err(DecodeError::FPortZeroWithFOpts));
            }
            (Some(port), frm.to_vec())
        }
    };
    Some(Ok(MacPayload {
        fhdr: Fhdr {
            dev_addr,
            f_ctrl,
            f_cnt,
            f_opts,
        },
        f_port,
        frm_payload,
    }))
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A cursor over a byte slice whose reads return `None` instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.0.split_first_chunk::<N>()?;
        self.0 = tail;
        Some(*head)
    }

    fn u8(&mut self) -> Option<u8> {
        let (&b, tail) = self.0.split_first()?;
        self.0 = tail;
        Some(b)
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
}

fn check_range(field: &'static str, value: u32, max: u32) -> Result<(), EncodeError> {
    if value > max {
        return Err(EncodeError::FieldOutOfRange { field, value, max });
    }
    Ok(())
}

/// Lower-case hex display of bytes.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

fn ser_hex<S: serde::Serializer, T: AsRef<[u8]>>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Hex(v.as_ref()))
}

fn ser_opt_hex<S: serde::Serializer>(v: &Option<[u8; 4]>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.collect_str(&Hex(b)),
        None => s.serialize_none(),
    }
}
