//! Time on air of LoRa and FSK frames.
//!
//! LoRa uses the formula of the Semtech SX1276 datasheet (§4.1.1.7) and application note
//! AN1200.13 "LoRa Modem Designer's Guide":
//!
//! ```text
//! Tsym       = 2^SF / BW
//! Tpreamble  = (n_preamble + 4.25) · Tsym
//! n_payload  = 8 + max(ceil((8·PL − 4·SF + 28 + 16·CRC − 20·IH) / (4·(SF − 2·DE))) · (CR + 4), 0)
//! ToA        = Tpreamble + n_payload · Tsym
//! ```
//!
//! with PL the PHYPayload length in bytes, IH = 1 for implicit header, DE = 1 when low data
//! rate optimisation is on (automatically when Tsym ≥ 16 ms) and CR = 1..4 for 4/5..4/8.
//!
//! FSK: (preamble 5 + sync word 3 + length 1 + PL + CRC 2) bytes × 8 / bit rate.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::datarate::{DataRate, Direction};
use crate::error::BandError;

/// LoRa forward error correction coding rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum CodingRate {
    /// 4/5 (what LoRaWAN uses).
    #[default]
    #[serde(rename = "4/5")]
    Cr4_5,
    /// 4/6.
    #[serde(rename = "4/6")]
    Cr4_6,
    /// 4/7.
    #[serde(rename = "4/7")]
    Cr4_7,
    /// 4/8.
    #[serde(rename = "4/8")]
    Cr4_8,
}

impl CodingRate {
    /// The CR term of the formula (1 for 4/5 … 4 for 4/8).
    pub const fn cr(self) -> u32 {
        match self {
            CodingRate::Cr4_5 => 1,
            CodingRate::Cr4_6 => 2,
            CodingRate::Cr4_7 => 3,
            CodingRate::Cr4_8 => 4,
        }
    }
}

/// Radio settings that determine LoRa time on air.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LoraParams {
    /// Spreading factor, 7..=12.
    pub sf: u8,
    /// Bandwidth in Hz.
    pub bw_hz: u32,
    /// Coding rate.
    pub coding_rate: CodingRate,
    /// Programmed preamble length in symbols (LoRaWAN: 8).
    pub preamble_symbols: u16,
    /// Explicit header (LoRaWAN: always).
    pub explicit_header: bool,
    /// Payload CRC present (LoRaWAN: uplink yes, downlink no).
    pub crc: bool,
    /// Low data rate optimisation; `None` = on when the symbol time is ≥ 16 ms.
    pub low_data_rate_optimize: Option<bool>,
}

impl LoraParams {
    /// LoRaWAN uplink settings: CR 4/5, preamble 8, explicit header, CRC on, LDRO auto.
    pub const fn uplink(sf: u8, bw_hz: u32) -> Self {
        LoraParams {
            sf,
            bw_hz,
            coding_rate: CodingRate::Cr4_5,
            preamble_symbols: 8,
            explicit_header: true,
            crc: true,
            low_data_rate_optimize: None,
        }
    }

    /// LoRaWAN downlink settings: as uplink but without payload CRC.
    pub const fn downlink(sf: u8, bw_hz: u32) -> Self {
        let mut p = Self::uplink(sf, bw_hz);
        p.crc = false;
        p
    }

    /// Symbol time in nanoseconds (exact for 125/250/500 kHz).
    pub fn symbol_time_ns(&self) -> u64 {
        ((1u64 << self.sf) * 1_000_000_000) / u64::from(self.bw_hz)
    }

    /// Whether low data rate optimisation is in effect.
    pub fn ldro(&self) -> bool {
        self.low_data_rate_optimize
            .unwrap_or(self.symbol_time_ns() >= 16_000_000)
    }

    /// Number of payload symbols (the `n_payload` term of the formula).
    pub fn payload_symbols(&self, payload_len: usize) -> u32 {
        let sf = i64::from(self.sf);
        let pl = payload_len as i64;
        let crc = i64::from(self.crc);
        let ih = i64::from(!self.explicit_header);
        let de = i64::from(self.ldro());
        let numerator = 8 * pl - 4 * sf + 28 + 16 * crc - 20 * ih;
        let denominator = 4 * (sf - 2 * de);
        let blocks = if numerator > 0 {
            (numerator + denominator - 1) / denominator
        } else {
            0
        };
        8 + blocks as u32 * (self.coding_rate.cr() + 4)
    }
}

/// LoRa time on air of a PHYPayload of `payload_len` bytes.
pub fn lora_time_on_air(payload_len: usize, params: &LoraParams) -> Result<Duration, BandError> {
    if !(7..=12).contains(&params.sf) {
        return Err(BandError::InvalidModulation(
            "spreading factor must be 7..=12",
        ));
    }
    if params.bw_hz == 0 {
        return Err(BandError::InvalidModulation("bandwidth must not be zero"));
    }
    if payload_len > 255 {
        return Err(BandError::InvalidModulation(
            "payload longer than 255 bytes",
        ));
    }
    // Work in quarter symbols so that the 4.25-symbol preamble tail stays an integer.
    let quarter_symbols = 4 * u128::from(params.preamble_symbols)
        + 17
        + 4 * u128::from(params.payload_symbols(payload_len));
    let ns =
        quarter_symbols * (1u128 << params.sf) * 1_000_000_000 / (4 * u128::from(params.bw_hz));
    Ok(Duration::from_nanos(ns as u64))
}

/// FSK time on air of a PHYPayload of `payload_len` bytes at `bitrate` bit/s.
pub fn fsk_time_on_air(payload_len: usize, bitrate: u32) -> Result<Duration, BandError> {
    if bitrate == 0 {
        return Err(BandError::InvalidModulation("bit rate must not be zero"));
    }
    if payload_len > 255 {
        return Err(BandError::InvalidModulation(
            "payload longer than 255 bytes",
        ));
    }
    let bytes = 5 + 3 + 1 + payload_len as u128 + 2;
    let ns = bytes * 8 * 1_000_000_000 / u128::from(bitrate);
    Ok(Duration::from_nanos(ns as u64))
}

/// Time on air of a LoRaWAN frame (PHYPayload of `payload_len` bytes) sent at `data_rate`:
/// CR 4/5, preamble 8, explicit header, CRC on uplink only. LR-FHSS is not supported.
pub fn time_on_air(
    data_rate: &DataRate,
    payload_len: usize,
    direction: Direction,
) -> Result<Duration, BandError> {
    match *data_rate {
        DataRate::Lora { sf, bw_hz } => {
            let params = match direction {
                Direction::Uplink => LoraParams::uplink(sf, bw_hz),
                Direction::Downlink => LoraParams::downlink(sf, bw_hz),
            };
            lora_time_on_air(payload_len, &params)
        }
        DataRate::Fsk { bitrate } => fsk_time_on_air(payload_len, bitrate),
        DataRate::LrFhss { .. } => Err(BandError::InvalidModulation(
            "LR-FHSS time on air is not supported",
        )),
    }
}
