//! LoRaWAN Regional Parameters (RP002-1.0.4).
//!
//! A pure library: no I/O, no async. It describes, for every LoRaWAN region, the data rate
//! table, payload limits, RX1/RX2 rules, transmit power table, duty-cycle sub-bands, dwell
//! time, CFList type, beacon and ping-slot defaults and the LinkADRReq channel mask rules
//! ([`Region`], [`RegionParams`]); the operator-facing frequency plans built on top of them
//! ([`FrequencyPlan`]); and the LoRa/FSK time-on-air formula ([`toa`]).
//!
//! China 470–510 MHz comes in two generations: [`Region::Cn470`] (plan `CN_470_510`) is the
//! older 96-uplink/48-downlink layout, kept for the devices that still use it; the four
//! RP002-1.0.4 channel plans are [`Region::Cn470A20`], [`Region::Cn470B20`],
//! [`Region::Cn470A26`] and [`Region::Cn470B26`] (plans `CN_470_510_20_A`, `CN_470_510_20_B`,
//! `CN_470_510_26_A`, `CN_470_510_26_B`), with their common join channels in
//! [`RegionParams::common_join_channels`].
//!
//! All frequencies are in Hz, all powers in dBm (EIRP) or dB, all durations are
//! [`std::time::Duration`].
//!
//! ```
//! use band::{ChMaskBlock, Direction, FrequencyPlan, Region};
//!
//! let us = Region::Us915.params();
//! // Uplink on channel 9 (904.1 MHz) at DR0 → RX1 on 923.9 MHz at DR10.
//! assert_eq!(us.rx1_frequency(904_100_000).unwrap(), 923_900_000);
//! assert_eq!(us.rx1_data_rate(0, 0, false).unwrap(), 10);
//!
//! // Restrict a device to FSB 2: all 125 kHz off (+ channel 65), then channels 8–15 on.
//! let all = us.default_channel_mask();
//! let mask = us
//!     .apply_ch_mask(all, all, &[ChMaskBlock::new(0x0002, 7), ChMaskBlock::new(0xFF00, 0)])
//!     .unwrap();
//! assert_eq!(mask.count(), 9);
//!
//! let plan = FrequencyPlan::by_id("US_902_928_FSB_2").unwrap();
//! assert_eq!(plan.channel_mask(), mask);
//!
//! let dr = Region::Eu868.params().data_rate(5).unwrap();
//! let toa = band::toa::time_on_air(&dr, 13, Direction::Uplink).unwrap();
//! assert_eq!(toa.as_micros(), 46_336);
//! ```

#![warn(missing_docs)]

mod chmask;
mod datarate;
mod error;
mod plan;
mod region;
mod tables;
pub mod toa;

pub use chmask::{ChMaskBlock, ChannelMask};
pub use datarate::{DataRate, DataRateEntry, Direction, LrFhssCodingRate};
pub use error::BandError;
pub use plan::{FrequencyPlan, MAX_IF_OFFSET_HZ, PlanChannel, RadioChannel, RadioLayout};
pub use region::{
    BeaconParams, CfListType, Channel, ChannelLayout, CommonJoinChannel, DwellTimeRule,
    FixedChannelBlock, PayloadSize, PingSlotParams, Region, RegionParams, Rx1ChannelRule,
    Rx2Params, SubBand,
};

use std::time::Duration;

/// Delay between the end of an uplink and the opening of RX1 (RECEIVE_DELAY1).
pub const RECEIVE_DELAY1: Duration = Duration::from_secs(1);
/// Delay between the end of an uplink and the opening of RX2 (RECEIVE_DELAY2).
pub const RECEIVE_DELAY2: Duration = Duration::from_secs(2);
/// Delay between the end of a join-request and the opening of RX1 (JOIN_ACCEPT_DELAY1).
pub const JOIN_ACCEPT_DELAY1: Duration = Duration::from_secs(5);
/// Delay between the end of a join-request and the opening of RX2 (JOIN_ACCEPT_DELAY2).
pub const JOIN_ACCEPT_DELAY2: Duration = Duration::from_secs(6);
/// Uplinks without a downlink before the device sets ADRACKReq (ADR_ACK_LIMIT).
pub const ADR_ACK_LIMIT: u16 = 64;
/// Further uplinks the device waits for an answer to ADRACKReq (ADR_ACK_DELAY).
pub const ADR_ACK_DELAY: u16 = 32;
/// Largest accepted gap between the last and the received frame counter (MAX_FCNT_GAP, 1.0.x).
pub const MAX_FCNT_GAP: u32 = 16384;
/// Lower bound of the random retransmission timeout (RETRANSMIT_TIMEOUT = 2 s ± 1 s).
pub const RETRANSMIT_TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// Upper bound of the random retransmission timeout (RETRANSMIT_TIMEOUT = 2 s ± 1 s).
pub const RETRANSMIT_TIMEOUT_MAX: Duration = Duration::from_secs(3);
/// Maximum dwell time (time on air of one transmission) where a region limits it.
pub const MAX_DWELL_TIME: Duration = Duration::from_millis(400);
/// Class B beacon period.
pub const BEACON_PERIOD: Duration = Duration::from_secs(128);
/// Class B ping slot length (30 ms).
pub const PING_SLOT_LENGTH: Duration = Duration::from_millis(30);
