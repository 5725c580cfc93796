//! Data rates: modulation and indicative bit rate.

use serde::{Deserialize, Serialize};

/// Coding rate of an LR-FHSS data rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LrFhssCodingRate {
    /// Coding rate 1/3 (written 2/6 by some implementations).
    #[serde(rename = "1/3")]
    Cr1_3,
    /// Coding rate 2/3 (written 4/6 by some implementations).
    #[serde(rename = "2/3")]
    Cr2_3,
}

/// The modulation parameters a data rate index stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataRate {
    /// LoRa chirp spread spectrum.
    Lora {
        /// Spreading factor (7..=12).
        sf: u8,
        /// Bandwidth in Hz (125 000, 250 000 or 500 000).
        bw_hz: u32,
    },
    /// GFSK.
    Fsk {
        /// Bit rate in bit/s.
        bitrate: u32,
    },
    /// Long Range Frequency Hopping Spread Spectrum (uplink only).
    LrFhss {
        /// Coding rate.
        coding_rate: LrFhssCodingRate,
        /// Occupied channel width in Hz (137 000, 336 000 or 1 523 000).
        ocw_hz: u32,
    },
}

impl DataRate {
    /// LoRa data rate shorthand.
    pub const fn lora(sf: u8, bw_hz: u32) -> Self {
        DataRate::Lora { sf, bw_hz }
    }

    /// The bandwidth the signal occupies, in Hz (FSK 50 kbps: 125 kHz for radio planning).
    pub const fn bandwidth_hz(&self) -> u32 {
        match self {
            DataRate::Lora { bw_hz, .. } => *bw_hz,
            DataRate::Fsk { .. } => 125_000,
            DataRate::LrFhss { ocw_hz, .. } => *ocw_hz,
        }
    }

    /// True for LoRa data rates.
    pub const fn is_lora(&self) -> bool {
        matches!(self, DataRate::Lora { .. })
    }
}

impl std::fmt::Display for DataRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataRate::Lora { sf, bw_hz } => write!(f, "SF{sf}BW{}", bw_hz / 1000),
            DataRate::Fsk { bitrate } => write!(f, "FSK{}kbps", bitrate / 1000),
            DataRate::LrFhss {
                coding_rate,
                ocw_hz,
            } => {
                let cr = match coding_rate {
                    LrFhssCodingRate::Cr1_3 => "1/3",
                    LrFhssCodingRate::Cr2_3 => "2/3",
                };
                write!(f, "LR-FHSS CR{cr} OCW{}kHz", ocw_hz / 1000)
            }
        }
    }
}

/// Transmission direction: the one LoRaWAN-wide type, so callers never convert.
pub use lorawan::Direction;

/// One row of a region's data rate table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataRateEntry {
    /// Data rate index (DR0..DR15).
    pub index: u8,
    /// Modulation parameters.
    pub data_rate: DataRate,
    /// Indicative physical bit rate in bit/s, as printed in RP002.
    pub bit_rate: u32,
    /// May be used for uplinks.
    pub uplink: bool,
    /// May be used for downlinks.
    pub downlink: bool,
    /// Maximum MACPayload size M without dwell time limit, repeater not required (0 = not allowed).
    pub max_mac_payload: u8,
    /// Maximum MACPayload size M when the 400 ms dwell time limit applies (0 = not allowed).
    pub max_mac_payload_dwell: u8,
}

impl DataRateEntry {
    /// True if the entry may be used in `direction`.
    pub const fn allows(&self, direction: Direction) -> bool {
        match direction {
            Direction::Uplink => self.uplink,
            Direction::Downlink => self.downlink,
        }
    }
}
