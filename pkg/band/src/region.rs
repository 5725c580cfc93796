//! Regions and their parameters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::chmask::ChannelMask;
use crate::datarate::{DataRate, DataRateEntry, Direction};
use crate::error::BandError;
use crate::tables;

/// A LoRaWAN region as named by RP002-1.0.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Region {
    /// Europe 863–870 MHz.
    #[serde(rename = "EU868")]
    Eu868,
    /// United States 902–928 MHz.
    #[serde(rename = "US915")]
    Us915,
    /// Australia 915–928 MHz.
    #[serde(rename = "AU915")]
    Au915,
    /// Asia 923 MHz, group 1 (AS923-1, no frequency offset).
    #[serde(rename = "AS923", alias = "AS923_1", alias = "AS923-1")]
    As923,
    /// Asia 923 MHz, group 2 (AS923-2, −1.8 MHz).
    #[serde(rename = "AS923_2", alias = "AS923-2")]
    As923Group2,
    /// Asia 923 MHz, group 3 (AS923-3, −6.6 MHz).
    #[serde(rename = "AS923_3", alias = "AS923-3")]
    As923Group3,
    /// Asia 923 MHz, group 4 (AS923-4, −5.9 MHz).
    #[serde(rename = "AS923_4", alias = "AS923-4")]
    As923Group4,
    /// South Korea 920–923 MHz.
    #[serde(rename = "KR920")]
    Kr920,
    /// India 865–867 MHz.
    #[serde(rename = "IN865")]
    In865,
    /// Russia 864–870 MHz.
    #[serde(rename = "RU864")]
    Ru864,
    /// China 470–510 MHz in the older (LoRaWAN 1.0.x / RP001) layout: 96 uplink channels,
    /// 48 downlink channels, plan `CN_470_510`. Kept for the devices that still use it; new
    /// devices use one of the four RP002-1.0.4 plans below ([`Region::Cn470A20`] …).
    #[serde(rename = "CN470")]
    Cn470,
    /// China 470–510 MHz, RP002-1.0.4 channel plan for 20 MHz antennas, type A
    /// (64 uplink channels in two groups, 64 downlink channels 483.9–496.5 MHz).
    #[serde(rename = "CN470_20A", alias = "CN_470_510_20_A")]
    Cn470A20,
    /// China 470–510 MHz, RP002-1.0.4 channel plan for 20 MHz antennas, type B
    /// (64 channels in two groups, downlink on the uplink frequency).
    #[serde(rename = "CN470_20B", alias = "CN_470_510_20_B")]
    Cn470B20,
    /// China 470–510 MHz, RP002-1.0.4 channel plan for 26 MHz antennas, type A
    /// (48 uplink channels 470.3–479.7 MHz, 24 downlink channels 490.1–494.7 MHz).
    #[serde(rename = "CN470_26A", alias = "CN_470_510_26_A")]
    Cn470A26,
    /// China 470–510 MHz, RP002-1.0.4 channel plan for 26 MHz antennas, type B
    /// (48 uplink channels 480.3–489.7 MHz, 24 downlink channels 500.1–504.7 MHz).
    #[serde(rename = "CN470_26B", alias = "CN_470_510_26_B")]
    Cn470B26,
    /// Europe 433 MHz.
    #[serde(rename = "EU433")]
    Eu433,
    /// China 779–787 MHz.
    #[serde(rename = "CN779")]
    Cn779,
}

impl Region {
    /// Every region, in a stable order.
    pub const ALL: [Region; 17] = [
        Region::Eu868,
        Region::Us915,
        Region::Au915,
        Region::As923,
        Region::As923Group2,
        Region::As923Group3,
        Region::As923Group4,
        Region::Kr920,
        Region::In865,
        Region::Ru864,
        Region::Cn470,
        Region::Cn470A20,
        Region::Cn470B20,
        Region::Cn470A26,
        Region::Cn470B26,
        Region::Eu433,
        Region::Cn779,
    ];

    /// The common name (the serde name), e.g. `EU868`, `AS923_2`.
    pub const fn name(self) -> &'static str {
        match self {
            Region::Eu868 => "EU868",
            Region::Us915 => "US915",
            Region::Au915 => "AU915",
            Region::As923 => "AS923",
            Region::As923Group2 => "AS923_2",
            Region::As923Group3 => "AS923_3",
            Region::As923Group4 => "AS923_4",
            Region::Kr920 => "KR920",
            Region::In865 => "IN865",
            Region::Ru864 => "RU864",
            Region::Cn470 => "CN470",
            Region::Cn470A20 => "CN470_20A",
            Region::Cn470B20 => "CN470_20B",
            Region::Cn470A26 => "CN470_26A",
            Region::Cn470B26 => "CN470_26B",
            Region::Eu433 => "EU433",
            Region::Cn779 => "CN779",
        }
    }

    /// The regional parameters of this region.
    pub fn params(self) -> &'static RegionParams {
        match self {
            Region::Eu868 => &tables::EU868,
            Region::Us915 => &tables::US915,
            Region::Au915 => &tables::AU915,
            Region::As923 => &tables::AS923_1,
            Region::As923Group2 => &tables::AS923_2,
            Region::As923Group3 => &tables::AS923_3,
            Region::As923Group4 => &tables::AS923_4,
            Region::Kr920 => &tables::KR920,
            Region::In865 => &tables::IN865,
            Region::Ru864 => &tables::RU864,
            Region::Cn470 => &tables::CN470,
            Region::Cn470A20 => &tables::CN470_A20,
            Region::Cn470B20 => &tables::CN470_B20,
            Region::Cn470A26 => &tables::CN470_A26,
            Region::Cn470B26 => &tables::CN470_B26,
            Region::Eu433 => &tables::EU433,
            Region::Cn779 => &tables::CN779,
        }
    }

    /// AS923 group frequency offset in Hz (subtracted from the AS923-1 frequencies), 0 elsewhere.
    pub const fn as923_frequency_offset_hz(self) -> u32 {
        match self {
            Region::As923Group2 => 1_800_000,
            Region::As923Group3 => 6_600_000,
            Region::As923Group4 => 5_900_000,
            _ => 0,
        }
    }

    /// True for the four RP002-1.0.4 CN470 channel plans (not the older [`Region::Cn470`]).
    pub const fn is_cn470_rp2(self) -> bool {
        matches!(
            self,
            Region::Cn470A20 | Region::Cn470B20 | Region::Cn470A26 | Region::Cn470B26
        )
    }

    /// The RP002-1.0.4 CN470 plan a device uses after joining on the common join channel at
    /// `frequency` (RP002 lets the join channel select the plan); `None` if it is not one.
    pub fn cn470_plan_for_join_frequency(frequency: u32) -> Option<Region> {
        [
            Region::Cn470A20,
            Region::Cn470B20,
            Region::Cn470A26,
            Region::Cn470B26,
        ]
        .into_iter()
        .find(|r| r.params().common_join_channel(frequency).is_some())
    }

    /// True for the four AS923 groups.
    pub const fn is_as923(self) -> bool {
        matches!(
            self,
            Region::As923 | Region::As923Group2 | Region::As923Group3 | Region::As923Group4
        )
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Region {
    type Err = BandError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase().replace('-', "_");
        let found = match upper.as_str() {
            "AS923_1" => Some(Region::As923),
            "CN_470_510_20_A" => Some(Region::Cn470A20),
            "CN_470_510_20_B" => Some(Region::Cn470B20),
            "CN_470_510_26_A" => Some(Region::Cn470A26),
            "CN_470_510_26_B" => Some(Region::Cn470B26),
            other => Region::ALL.iter().copied().find(|r| r.name() == other),
        };
        found.ok_or_else(|| BandError::UnknownRegion {
            name: s.to_string(),
            valid: Region::ALL.map(Region::name).join(", "),
        })
    }
}

/// A radio channel: centre frequency and the data rate range allowed on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Channel {
    /// Centre frequency in Hz.
    pub frequency: u32,
    /// Lowest data rate index allowed.
    pub min_dr: u8,
    /// Highest data rate index allowed.
    pub max_dr: u8,
}

/// Maximum payload sizes for one data rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PayloadSize {
    /// Maximum MACPayload size (M) in bytes.
    pub m: u8,
    /// Maximum application payload (FRMPayload) size without FOpts (N = M − 8) in bytes.
    pub n: u8,
}

/// Default RX2 window parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rx2Params {
    /// Frequency in Hz.
    pub frequency: u32,
    /// Data rate index.
    pub dr: u8,
}

/// A duty-cycle sub-band.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SubBand {
    /// Lowest frequency in Hz (inclusive).
    pub min_frequency: u32,
    /// Highest frequency in Hz (inclusive).
    pub max_frequency: u32,
    /// Maximum duty cycle as a fraction (0.01 = 1 %; 1.0 = no limit).
    pub duty_cycle: f32,
    /// Maximum radiated power in the sub-band, dBm EIRP.
    pub max_eirp_dbm: f32,
}

impl SubBand {
    /// True if `frequency` lies in this sub-band.
    pub const fn contains(&self, frequency: u32) -> bool {
        frequency >= self.min_frequency && frequency <= self.max_frequency
    }
}

/// How a region limits the dwell time (time on air) of one transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DwellTimeRule {
    /// No dwell time limit.
    NotApplicable,
    /// The 400 ms limit always applies (e.g. US915 uplinks).
    Always,
    /// The 400 ms limit is set by TxParamSetupReq; `default_on` is its value at boot.
    Configurable {
        /// Whether the limit applies before any TxParamSetupReq.
        default_on: bool,
    },
}

impl DwellTimeRule {
    /// Whether the limit applies at boot.
    pub const fn default_on(&self) -> bool {
        match self {
            DwellTimeRule::NotApplicable => false,
            DwellTimeRule::Always => true,
            DwellTimeRule::Configurable { default_on } => *default_on,
        }
    }
}

/// What the optional CFList of a join-accept carries in this region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CfListType {
    /// CFListType 0: up to five extra channel frequencies.
    Frequencies = 0,
    /// CFListType 1: channel masks.
    ChannelMask = 1,
}

/// A regular block of fixed channels: `first_frequency + i × step` for `i < count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FixedChannelBlock {
    /// Frequency of the first channel, in Hz.
    pub first_frequency: u32,
    /// Spacing between channels, in Hz.
    pub step: u32,
    /// Number of channels.
    pub count: u8,
    /// Lowest data rate allowed on these channels.
    pub min_dr: u8,
    /// Highest data rate allowed on these channels.
    pub max_dr: u8,
}

impl FixedChannelBlock {
    /// Channel `i` of the block, if it exists.
    pub const fn channel(&self, i: u8) -> Option<Channel> {
        if i >= self.count {
            return None;
        }
        Some(Channel {
            frequency: self.first_frequency + i as u32 * self.step,
            min_dr: self.min_dr,
            max_dr: self.max_dr,
        })
    }

    /// Index of the channel at `frequency`, if it is one of this block.
    pub const fn index_of(&self, frequency: u32) -> Option<u8> {
        if frequency < self.first_frequency {
            return None;
        }
        let delta = frequency - self.first_frequency;
        let i = delta / self.step;
        if i * self.step == delta && i < self.count as u32 {
            Some(i as u8)
        } else {
            None
        }
    }
}

/// How a region organises its channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChannelLayout {
    /// A few default channels plus channels the network adds (NewChannelReq, CFList type 0).
    Dynamic {
        /// Maximum number of uplink channels a device supports.
        max_channels: u8,
    },
    /// Fixed channel numbering (US915, AU915, CN470).
    Fixed {
        /// Narrow-band uplink channels, numbered from 0.
        uplink: FixedChannelBlock,
        /// A second group of narrow-band uplink channels, numbered right after `uplink`
        /// (RP002 CN470 20 MHz plans: uplink group 2).
        uplink_group2: Option<FixedChannelBlock>,
        /// Wide (500 kHz) uplink channels, numbered after the narrow-band ones.
        uplink_wide: Option<FixedChannelBlock>,
        /// Downlink channels, numbered from 0.
        downlink: FixedChannelBlock,
        /// A second group of downlink channels, numbered right after `downlink`
        /// (RP002 CN470 20 MHz plans: downlink group 2).
        downlink_group2: Option<FixedChannelBlock>,
    },
}

/// Channel `index` of the blocks taken in order, numbered consecutively across them.
fn block_channel(blocks: &[Option<FixedChannelBlock>], index: u8) -> Option<Channel> {
    let mut i = index;
    for block in blocks.iter().flatten() {
        if i < block.count {
            return block.channel(i);
        }
        i -= block.count;
    }
    None
}

/// Index of `frequency` among the blocks taken in order (see [`block_channel`]).
fn block_index_of(blocks: &[Option<FixedChannelBlock>], frequency: u32) -> Option<u8> {
    let mut offset = 0u8;
    for block in blocks.iter().flatten() {
        if let Some(i) = block.index_of(frequency) {
            return Some(offset + i);
        }
        offset += block.count;
    }
    None
}

/// Total number of channels of the blocks.
fn block_count(blocks: &[Option<FixedChannelBlock>]) -> u8 {
    blocks.iter().flatten().map(|b| b.count).sum()
}

/// An RP002-1.0.4 CN470 common join channel and the defaults of a device that joined on it.
///
/// RP002 CN470 devices do not know their channel plan before joining: they send join-requests
/// on the 20 common join channels, and the channel the join-accept arrives for selects the plan
/// and, in the 20 MHz plans, the channel group whose RX2, beacon and ping-slot frequencies the
/// device then uses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CommonJoinChannel {
    /// Common join channel number (0–19) as RP002 numbers them.
    pub index: u8,
    /// Uplink frequency of the join-request, Hz.
    pub frequency: u32,
    /// RX1 frequency of the join-accept, Hz.
    pub join_accept_rx1_frequency: u32,
    /// RX2 parameters the device uses after joining here (OTAA).
    pub rx2: Rx2Params,
    /// Class B beacon of a device that joined here.
    pub beacon: BeaconParams,
    /// Class B default ping slot of a device that joined here.
    pub ping_slot: PingSlotParams,
}

/// How the RX1 frequency follows from the uplink frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Rx1ChannelRule {
    /// RX1 uses the uplink frequency.
    SameAsUplink,
    /// RX1 uses downlink channel (uplink channel index mod number of downlink channels).
    UplinkChannelModulo,
}

/// Class B beacon defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BeaconParams {
    /// Beacon frequencies in Hz; more than one means the beacon hops between them.
    pub frequencies: &'static [u32],
    /// Beacon data rate index.
    pub dr: u8,
}

impl BeaconParams {
    /// The beacon frequency for the beacon sent at GPS time `beacon_time_secs`.
    pub fn frequency_at(&self, beacon_time_secs: u64) -> u32 {
        let n = self.frequencies.len() as u64;
        let i = (beacon_time_secs / crate::BEACON_PERIOD.as_secs()) % n;
        self.frequencies[i as usize]
    }
}

/// Class B ping slot defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PingSlotParams {
    /// Default ping slot frequencies in Hz; more than one means the slot hops between them.
    pub frequencies: &'static [u32],
    /// Default ping slot data rate index.
    pub dr: u8,
}

impl PingSlotParams {
    /// The default ping slot frequency for a device address in the beacon period of
    /// GPS time `beacon_time_secs` (hopping regions: (DevAddr + ⌊t/128⌋) mod channels).
    pub fn frequency_for(&self, dev_addr: u32, beacon_time_secs: u64) -> u32 {
        let n = self.frequencies.len() as u64;
        let period = beacon_time_secs / crate::BEACON_PERIOD.as_secs();
        let i = (u64::from(dev_addr) + period) % n;
        self.frequencies[i as usize]
    }
}

/// The regional parameters of one region (RP002-1.0.4).
#[derive(Debug, Clone, PartialEq)]
pub struct RegionParams {
    /// Which region these are.
    pub region: Region,
    /// Lowest frequency of the band, Hz.
    pub min_frequency: u32,
    /// Highest frequency of the band, Hz.
    pub max_frequency: u32,
    /// Data rate table, sorted by index; missing indices are RFU.
    pub data_rates: &'static [DataRateEntry],
    /// Largest valid RX1DROffset.
    pub max_rx1_dr_offset: u8,
    /// Channel organisation.
    pub channel_layout: ChannelLayout,
    /// Default channels every device knows (the join channels of dynamic regions).
    pub default_channels: &'static [Channel],
    /// RX1 channel rule.
    pub rx1_channel_rule: Rx1ChannelRule,
    /// Default RX2 parameters.
    pub rx2: Rx2Params,
    /// TXPower index → dB offset from the maximum EIRP (index 0 = max EIRP).
    pub tx_power_offsets_db: &'static [i8],
    /// Default maximum EIRP in dBm.
    pub default_max_eirp_dbm: f32,
    /// Duty-cycle sub-bands (duty_cycle 1.0 where the region sets no limit).
    pub sub_bands: &'static [SubBand],
    /// Uplink dwell time rule.
    pub uplink_dwell_time: DwellTimeRule,
    /// Downlink dwell time rule.
    pub downlink_dwell_time: DwellTimeRule,
    /// Whether the region supports TxParamSetupReq.
    pub tx_param_setup_req: bool,
    /// CFList type of the join-accept.
    pub cf_list_type: CfListType,
    /// Class B beacon.
    pub beacon: BeaconParams,
    /// Class B ping slot.
    pub ping_slot: PingSlotParams,
}

/// Largest M when the device must be repeater compatible.
const REPEATER_MAX_M: u8 = 230;

impl RegionParams {
    /// Table row of data rate `dr`.
    pub fn data_rate_entry(&self, dr: u8) -> Option<&'static DataRateEntry> {
        self.data_rates.iter().find(|e| e.index == dr)
    }

    /// Modulation of data rate `dr`.
    pub fn data_rate(&self, dr: u8) -> Option<DataRate> {
        self.data_rate_entry(dr).map(|e| e.data_rate)
    }

    /// Lowest data rate index with these modulation parameters (either direction).
    pub fn dr_index(&self, data_rate: &DataRate) -> Option<u8> {
        self.data_rates
            .iter()
            .find(|e| e.data_rate == *data_rate)
            .map(|e| e.index)
    }

    /// Data rate index with these modulation parameters usable in `direction`
    /// (US915 SF8BW500 is DR4 uplink, DR12 downlink).
    pub fn dr_index_for(&self, data_rate: &DataRate, direction: Direction) -> Option<u8> {
        self.data_rates
            .iter()
            .find(|e| e.data_rate == *data_rate && e.allows(direction))
            .map(|e| e.index)
    }

    /// Maximum payload sizes M and N for `dr`; `None` if the data rate is undefined or not
    /// allowed under these conditions (e.g. AS923 DR0 with dwell time).
    ///
    /// `dwell_time_on` selects the 400 ms dwell-time column where the region has one
    /// (AS923, AU915); regions without it ignore the flag. `repeater_compatible` caps M at 230.
    pub fn max_payload_size(
        &self,
        dr: u8,
        dwell_time_on: bool,
        repeater_compatible: bool,
    ) -> Option<PayloadSize> {
        let e = self.data_rate_entry(dr)?;
        let mut m = if dwell_time_on {
            e.max_mac_payload_dwell
        } else {
            e.max_mac_payload
        };
        if m == 0 {
            return None;
        }
        if repeater_compatible {
            m = m.min(REPEATER_MAX_M);
        }
        Some(PayloadSize { m, n: m - 8 })
    }

    /// RX1 data rate for an uplink at `uplink_dr` and the device's RX1DROffset.
    /// `downlink_dwell_time` is the DownlinkDwellTime setting (AS923 only: RX1 DR ≥ DR2).
    pub fn rx1_data_rate(
        &self,
        uplink_dr: u8,
        rx1_dr_offset: u8,
        downlink_dwell_time: bool,
    ) -> Result<u8, BandError> {
        let region = self.region;
        let entry = self
            .data_rate_entry(uplink_dr)
            .ok_or(BandError::UnknownDataRate {
                region,
                dr: uplink_dr,
            })?;
        if !entry.uplink {
            return Err(BandError::DataRateNotAllowed {
                region,
                dr: uplink_dr,
                reason: "for uplink",
            });
        }
        if rx1_dr_offset > self.max_rx1_dr_offset {
            return Err(BandError::InvalidRx1DrOffset {
                region,
                offset: rx1_dr_offset,
                max: self.max_rx1_dr_offset,
            });
        }
        let off = i16::from(rx1_dr_offset);
        let dr = match region {
            Region::Us915 => {
                // Uplink DR0..DR4 map to DR10..DR13 (DR4 → DR13), LR-FHSS DR5/DR6 as DR0/DR1.
                let base = match uplink_dr {
                    5 => 0,
                    6 => 1,
                    d => i16::from(d),
                };
                (10 + base - off).clamp(8, 13)
            }
            Region::Au915 => {
                // Uplink DR0..DR6 map to DR8..DR13, LR-FHSS DR7 as DR1.
                let base = match uplink_dr {
                    7 => 1,
                    d => i16::from(d),
                };
                (8 + base - off).clamp(8, 13)
            }
            Region::As923
            | Region::As923Group2
            | Region::As923Group3
            | Region::As923Group4
            | Region::In865 => {
                // Offsets 6 and 7 mean −1 and −2: RX1 faster than the uplink.
                let effective = if off <= 5 { off } else { 5 - off };
                let min = if region.is_as923() && downlink_dwell_time {
                    2
                } else {
                    0
                };
                let mut dr = (i16::from(uplink_dr) - effective).clamp(min, 7);
                // Step down over RFU indices (IN865 DR6).
                while dr > min && self.data_rate_entry(dr as u8).is_none() {
                    dr -= 1;
                }
                dr
            }
            Region::Cn470A20 | Region::Cn470B20 | Region::Cn470A26 | Region::Cn470B26 => {
                // RP002 CN470: RX1 = uplink − offset, floor DR1 (DR0 is not used).
                (i16::from(uplink_dr) - off).max(1)
            }
            _ => {
                // EU-like: RX1 = uplink − offset, floor DR0; LR-FHSS rates count as the
                // LoRa rate with the same sensitivity class (EU868 DR8/10 → DR1, DR9/11 → DR2).
                let base = match (region, uplink_dr) {
                    (Region::Eu868, 8 | 10) => 1,
                    (Region::Eu868, 9 | 11) => 2,
                    (_, d) => i16::from(d),
                };
                (base - off).max(0)
            }
        };
        Ok(dr as u8)
    }

    /// Index of the fixed uplink channel at `frequency` (US915/AU915: 0..=71, CN470: 0..=95,
    /// RP002 CN470: 0..=63 or 0..=47). `None` in dynamic regions or if the frequency is not a
    /// channel.
    pub fn uplink_channel_index(&self, frequency: u32) -> Option<u8> {
        match self.channel_layout {
            ChannelLayout::Dynamic { .. } => None,
            ChannelLayout::Fixed {
                uplink,
                uplink_group2,
                uplink_wide,
                ..
            } => block_index_of(&[Some(uplink), uplink_group2, uplink_wide], frequency),
        }
    }

    /// Fixed uplink channel `index`, or a default channel in dynamic regions.
    pub fn uplink_channel(&self, index: u8) -> Option<Channel> {
        match self.channel_layout {
            ChannelLayout::Dynamic { .. } => self.default_channels.get(index as usize).copied(),
            ChannelLayout::Fixed {
                uplink,
                uplink_group2,
                uplink_wide,
                ..
            } => block_channel(&[Some(uplink), uplink_group2, uplink_wide], index),
        }
    }

    /// Number of uplink channels (fixed regions) or maximum channels (dynamic regions).
    pub fn max_uplink_channels(&self) -> u8 {
        match self.channel_layout {
            ChannelLayout::Dynamic { max_channels } => max_channels,
            ChannelLayout::Fixed {
                uplink,
                uplink_group2,
                uplink_wide,
                ..
            } => block_count(&[Some(uplink), uplink_group2, uplink_wide]),
        }
    }

    /// Fixed downlink channel `index` (RX1 channels of fixed regions); `None` in dynamic
    /// regions, where RX1 uses the uplink frequency.
    pub fn downlink_channel(&self, index: u8) -> Option<Channel> {
        match self.channel_layout {
            ChannelLayout::Dynamic { .. } => None,
            ChannelLayout::Fixed {
                downlink,
                downlink_group2,
                ..
            } => block_channel(&[Some(downlink), downlink_group2], index),
        }
    }

    /// Number of fixed downlink channels (0 in dynamic regions).
    pub fn max_downlink_channels(&self) -> u8 {
        match self.channel_layout {
            ChannelLayout::Dynamic { .. } => 0,
            ChannelLayout::Fixed {
                downlink,
                downlink_group2,
                ..
            } => block_count(&[Some(downlink), downlink_group2]),
        }
    }

    /// All uplink channels a device knows at boot (dynamic: defaults; fixed: all of them).
    pub fn uplink_channels(&self) -> Vec<Channel> {
        match self.channel_layout {
            ChannelLayout::Dynamic { .. } => self.default_channels.to_vec(),
            ChannelLayout::Fixed { .. } => (0..self.max_uplink_channels())
                .filter_map(|i| self.uplink_channel(i))
                .collect(),
        }
    }

    /// Channels (with their allowed DR range) a device may send a join-request on.
    /// Dynamic regions: the default channels. US915/AU915: every 125 kHz channel at its
    /// lowest DR (DR0 / DR2 in AU915 with dwell time) and every 500 kHz channel at DR4 / DR6.
    /// RP002 CN470 plans: the plan's common join channels (DR1–DR5).
    pub fn join_channels(&self) -> Vec<Channel> {
        if self.region.is_cn470_rp2() {
            return self
                .common_join_channels()
                .iter()
                .filter_map(|j| {
                    let i = self.uplink_channel_index(j.frequency)?;
                    self.uplink_channel(i)
                })
                .collect();
        }
        let mut channels = self.uplink_channels();
        let (narrow_dr, wide_dr) = match self.region {
            Region::Us915 => (0, 4),
            Region::Au915 => (2, 6),
            _ => return channels,
        };
        for (i, ch) in channels.iter_mut().enumerate() {
            let dr = if i < 64 { narrow_dr } else { wide_dr };
            ch.min_dr = dr;
            ch.max_dr = dr;
        }
        channels
    }

    /// Bitmap of the channels enabled at boot.
    pub fn default_channel_mask(&self) -> ChannelMask {
        match self.channel_layout {
            ChannelLayout::Dynamic { .. } => ChannelMask::first_n(self.default_channels.len()),
            ChannelLayout::Fixed { .. } => ChannelMask::first_n(self.max_uplink_channels().into()),
        }
    }

    /// RX1 frequency for an uplink at `uplink_frequency`.
    pub fn rx1_frequency(&self, uplink_frequency: u32) -> Result<u32, BandError> {
        let unknown = BandError::UnknownUplinkFrequency {
            region: self.region,
            frequency: uplink_frequency,
        };
        match (self.rx1_channel_rule, self.channel_layout) {
            (Rx1ChannelRule::SameAsUplink, _) => {
                if uplink_frequency < self.min_frequency || uplink_frequency > self.max_frequency {
                    return Err(unknown);
                }
                Ok(uplink_frequency)
            }
            (Rx1ChannelRule::UplinkChannelModulo, ChannelLayout::Fixed { .. }) => {
                let index = self.uplink_channel_index(uplink_frequency).ok_or(unknown)?;
                let ch = self
                    .downlink_channel(index % self.max_downlink_channels())
                    .expect("index is reduced modulo the downlink channel count");
                Ok(ch.frequency)
            }
            (Rx1ChannelRule::UplinkChannelModulo, ChannelLayout::Dynamic { .. }) => Err(unknown),
        }
    }

    /// Default RX2 frequency and data rate (RP002 CN470 20 MHz plans: the ABP default; an
    /// OTAA device uses the RX2 of its join channel, see [`RegionParams::rx2_after_join`]).
    pub fn rx2_default(&self) -> Rx2Params {
        self.rx2
    }

    /// RX2 parameters of a device that joined (OTAA) with a join-request on `join_frequency`:
    /// the RX2 of that common join channel in the RP002 CN470 plans, the region default
    /// elsewhere. `None` if an RP002 CN470 join frequency is not a common join channel.
    pub fn rx2_after_join(&self, join_frequency: u32) -> Option<Rx2Params> {
        if self.region.is_cn470_rp2() {
            self.common_join_channel(join_frequency).map(|j| j.rx2)
        } else {
            Some(self.rx2)
        }
    }

    /// The RP002 CN470 common join channels of this plan (empty for every other region).
    pub fn common_join_channels(&self) -> &'static [CommonJoinChannel] {
        tables::common_join_channels(self.region)
    }

    /// The common join channel at uplink `frequency`, if this plan has one there.
    pub fn common_join_channel(&self, frequency: u32) -> Option<&'static CommonJoinChannel> {
        self.common_join_channels()
            .iter()
            .find(|j| j.frequency == frequency)
    }

    /// The 16-byte CFList of type 1 (channel masks) that enables the channels of `mask`:
    /// ChMask0, ChMask1, … little-endian for as many 16-channel blocks as the region has
    /// channels (US915/AU915: 5, CN470: 6, RP002 CN470 20 MHz: 4, 26 MHz: 3), zero up to byte
    /// 14, CFListType 1 in byte 15. `None` in regions whose CFList carries frequencies.
    pub fn cf_list_ch_masks(&self, mask: ChannelMask) -> Option<[u8; 16]> {
        if self.cf_list_type != CfListType::ChannelMask {
            return None;
        }
        let blocks = usize::from(self.max_uplink_channels()).div_ceil(16);
        let mut out = [0u8; 16];
        for (i, pair) in out.chunks_exact_mut(2).take(blocks).enumerate() {
            let word = (mask.0 >> (16 * i)) as u16;
            pair.copy_from_slice(&word.to_le_bytes());
        }
        out[15] = CfListType::ChannelMask as u8;
        Some(out)
    }

    /// dB offset from the maximum EIRP for TXPower `index`; `None` if the index is RFU.
    pub fn tx_power_offset_db(&self, index: u8) -> Option<i8> {
        self.tx_power_offsets_db.get(index as usize).copied()
    }

    /// EIRP in dBm for TXPower `index` given the device's maximum EIRP.
    pub fn tx_power_eirp_dbm(&self, index: u8, max_eirp_dbm: f32) -> Option<f32> {
        self.tx_power_offset_db(index)
            .map(|o| max_eirp_dbm + f32::from(o))
    }

    /// The duty-cycle sub-band `frequency` falls into, if any.
    pub fn duty_cycle_for(&self, frequency: u32) -> Option<SubBand> {
        self.sub_bands
            .iter()
            .find(|b| b.contains(frequency))
            .copied()
    }

    /// Class B beacon defaults.
    pub fn beacon(&self) -> BeaconParams {
        self.beacon
    }

    /// Class B ping slot defaults.
    pub fn ping_slot(&self) -> PingSlotParams {
        self.ping_slot
    }
}
