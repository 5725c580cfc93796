//! Frequency plans: the channel sets operators configure, by the IDs they know
//! (`EU_863_870`, `US_902_928_FSB_2`, …), and the gateway radio layout they need.

use serde::{Deserialize, Serialize};

use crate::chmask::ChannelMask;
use crate::error::BandError;
use crate::region::{Channel, ChannelLayout, Region, RegionParams, Rx2Params};

/// Largest distance between a channel's centre and its radio's centre frequency (IF offset).
pub const MAX_IF_OFFSET_HZ: u32 = 400_000;

/// Most LoRa multi-SF channels a concentrator (SX1301/SX1302) demodulates.
const MAX_MULTI_SF_CHANNELS: usize = 8;

/// A single-data-rate channel (LoRa standard channel or FSK channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlanChannel {
    /// Centre frequency in Hz.
    pub frequency: u32,
    /// Data rate index.
    pub dr: u8,
}

/// An operator-facing frequency plan on top of a region.
#[derive(Debug, Clone, PartialEq)]
pub struct FrequencyPlan {
    /// The ID operators know, e.g. `US_902_928_FSB_2`.
    pub id: &'static str,
    /// Human-readable description.
    pub name: &'static str,
    /// The region whose regional parameters apply.
    pub region: Region,
    /// LoRa multi-SF uplink channels (also the RX1 channels in dynamic regions).
    pub uplink_channels: &'static [Channel],
    /// Single-SF LoRa channel, e.g. SF7BW250 in EU868 or the 500 kHz channel of an FSB.
    pub lora_standard_channel: Option<PlanChannel>,
    /// FSK channel, if any.
    pub fsk_channel: Option<PlanChannel>,
    /// RX2 parameters the network uses.
    pub rx2: Rx2Params,
    /// Maximum EIRP in dBm.
    pub max_eirp_dbm: f32,
    /// Whether the 400 ms dwell time applies to uplinks.
    pub uplink_dwell_time: bool,
    /// Whether the 400 ms dwell time applies to downlinks.
    pub downlink_dwell_time: bool,
    /// Sub-band (1..=8) for US915/AU915 plans.
    pub fsb: Option<u8>,
}

/// One channel of a gateway radio layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RadioChannel {
    /// Centre frequency in Hz.
    pub frequency: u32,
    /// Bandwidth in Hz.
    pub bandwidth_hz: u32,
    /// Radio (0 or 1) the channel is received on.
    pub radio: u8,
    /// Offset from the radio centre frequency, Hz.
    pub if_offset_hz: i32,
}

/// How a frequency plan's channels map onto the two radios of an SX1301/SX1302 gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RadioLayout {
    /// Centre frequencies of radio 0 and radio 1, Hz.
    pub radio_centers: [u32; 2],
    /// Multi-SF LoRa channels, in plan order.
    pub multi_sf: Vec<RadioChannel>,
    /// The LoRa standard channel, if the plan has one.
    pub lora_standard: Option<RadioChannel>,
    /// The FSK channel, if the plan has one.
    pub fsk: Option<RadioChannel>,
}

const fn ch(frequency: u32, min_dr: u8, max_dr: u8) -> Channel {
    Channel {
        frequency,
        min_dr,
        max_dr,
    }
}

/// Eight consecutive 200 kHz channels of sub-band `fsb` (1-based).
const fn fsb_channels(first: u32, fsb: u32, min_dr: u8, max_dr: u8) -> [Channel; 8] {
    let mut out = [ch(0, 0, 0); 8];
    let mut i = 0;
    while i < 8 {
        out[i] = ch(first + ((fsb - 1) * 8 + i as u32) * 200_000, min_dr, max_dr);
        i += 1;
    }
    out
}

macro_rules! fsb_plan {
    ($plan:ident, $chans:ident, $id:literal, $name:literal, us, $fsb:literal) => {
        static $chans: [Channel; 8] = fsb_channels(902_300_000, $fsb, 0, 3);
        static $plan: FrequencyPlan = FrequencyPlan {
            id: $id,
            name: $name,
            region: Region::Us915,
            uplink_channels: &$chans,
            lora_standard_channel: Some(PlanChannel {
                frequency: 903_000_000 + ($fsb - 1) * 1_600_000,
                dr: 4,
            }),
            fsk_channel: None,
            rx2: Rx2Params {
                frequency: 923_300_000,
                dr: 8,
            },
            max_eirp_dbm: 30.0,
            uplink_dwell_time: true,
            downlink_dwell_time: false,
            fsb: Some($fsb),
        };
    };
    ($plan:ident, $chans:ident, $id:literal, $name:literal, au, $fsb:literal) => {
        static $chans: [Channel; 8] = fsb_channels(915_200_000, $fsb, 0, 5);
        static $plan: FrequencyPlan = FrequencyPlan {
            id: $id,
            name: $name,
            region: Region::Au915,
            uplink_channels: &$chans,
            lora_standard_channel: Some(PlanChannel {
                frequency: 915_900_000 + ($fsb - 1) * 1_600_000,
                dr: 6,
            }),
            fsk_channel: None,
            rx2: Rx2Params {
                frequency: 923_300_000,
                dr: 8,
            },
            max_eirp_dbm: 30.0,
            uplink_dwell_time: true,
            downlink_dwell_time: false,
            fsb: Some($fsb),
        };
    };
}

fsb_plan!(
    US_FSB_1,
    US_FSB_1_CH,
    "US_902_928_FSB_1",
    "United States 902-928 MHz, FSB 1 (channels 0-7, 64)",
    us,
    1
);
fsb_plan!(
    US_FSB_2,
    US_FSB_2_CH,
    "US_902_928_FSB_2",
    "United States 902-928 MHz, FSB 2 (channels 8-15, 65)",
    us,
    2
);
fsb_plan!(
    US_FSB_3,
    US_FSB_3_CH,
    "US_902_928_FSB_3",
    "United States 902-928 MHz, FSB 3 (channels 16-23, 66)",
    us,
    3
);
fsb_plan!(
    US_FSB_4,
    US_FSB_4_CH,
    "US_902_928_FSB_4",
    "United States 902-928 MHz, FSB 4 (channels 24-31, 67)",
    us,
    4
);
fsb_plan!(
    US_FSB_5,
    US_FSB_5_CH,
    "US_902_928_FSB_5",
    "United States 902-928 MHz, FSB 5 (channels 32-39, 68)",
    us,
    5
);
fsb_plan!(
    US_FSB_6,
    US_FSB_6_CH,
    "US_902_928_FSB_6",
    "United States 902-928 MHz, FSB 6 (channels 40-47, 69)",
    us,
    6
);
fsb_plan!(
    US_FSB_7,
    US_FSB_7_CH,
    "US_902_928_FSB_7",
    "United States 902-928 MHz, FSB 7 (channels 48-55, 70)",
    us,
    7
);
fsb_plan!(
    US_FSB_8,
    US_FSB_8_CH,
    "US_902_928_FSB_8",
    "United States 902-928 MHz, FSB 8 (channels 56-63, 71)",
    us,
    8
);
fsb_plan!(
    AU_FSB_1,
    AU_FSB_1_CH,
    "AU_915_928_FSB_1",
    "Australia 915-928 MHz, FSB 1 (channels 0-7, 64)",
    au,
    1
);
fsb_plan!(
    AU_FSB_2,
    AU_FSB_2_CH,
    "AU_915_928_FSB_2",
    "Australia 915-928 MHz, FSB 2 (channels 8-15, 65)",
    au,
    2
);
fsb_plan!(
    AU_FSB_3,
    AU_FSB_3_CH,
    "AU_915_928_FSB_3",
    "Australia 915-928 MHz, FSB 3 (channels 16-23, 66)",
    au,
    3
);
fsb_plan!(
    AU_FSB_4,
    AU_FSB_4_CH,
    "AU_915_928_FSB_4",
    "Australia 915-928 MHz, FSB 4 (channels 24-31, 67)",
    au,
    4
);
fsb_plan!(
    AU_FSB_5,
    AU_FSB_5_CH,
    "AU_915_928_FSB_5",
    "Australia 915-928 MHz, FSB 5 (channels 32-39, 68)",
    au,
    5
);
fsb_plan!(
    AU_FSB_6,
    AU_FSB_6_CH,
    "AU_915_928_FSB_6",
    "Australia 915-928 MHz, FSB 6 (channels 40-47, 69)",
    au,
    6
);
fsb_plan!(
    AU_FSB_7,
    AU_FSB_7_CH,
    "AU_915_928_FSB_7",
    "Australia 915-928 MHz, FSB 7 (channels 48-55, 70)",
    au,
    7
);
fsb_plan!(
    AU_FSB_8,
    AU_FSB_8_CH,
    "AU_915_928_FSB_8",
    "Australia 915-928 MHz, FSB 8 (channels 56-63, 71)",
    au,
    8
);

static EU_863_870_CH: [Channel; 8] = [
    ch(868_100_000, 0, 5),
    ch(868_300_000, 0, 5),
    ch(868_500_000, 0, 5),
    ch(867_100_000, 0, 5),
    ch(867_300_000, 0, 5),
    ch(867_500_000, 0, 5),
    ch(867_700_000, 0, 5),
    ch(867_900_000, 0, 5),
];

static EU_863_870: FrequencyPlan = FrequencyPlan {
    id: "EU_863_870",
    name: "Europe 863-870 MHz: 868.1/868.3/868.5 + 867.1-867.9 MHz, SF7BW250 at 868.3, FSK at 868.8",
    region: Region::Eu868,
    uplink_channels: &EU_863_870_CH,
    lora_standard_channel: Some(PlanChannel {
        frequency: 868_300_000,
        dr: 6,
    }),
    fsk_channel: Some(PlanChannel {
        frequency: 868_800_000,
        dr: 7,
    }),
    rx2: Rx2Params {
        frequency: 869_525_000,
        dr: 0,
    },
    max_eirp_dbm: 16.0,
    uplink_dwell_time: false,
    downlink_dwell_time: false,
    fsb: None,
};

macro_rules! as923_plan {
    ($plan:ident, $chans:ident, $id:literal, $name:literal, $region:expr, $offset:expr) => {
        static $chans: [Channel; 2] = [
            ch(923_200_000 - $offset, 0, 5),
            ch(923_400_000 - $offset, 0, 5),
        ];
        static $plan: FrequencyPlan = FrequencyPlan {
            id: $id,
            name: $name,
            region: $region,
            uplink_channels: &$chans,
            lora_standard_channel: None,
            fsk_channel: None,
            rx2: Rx2Params {
                frequency: 923_200_000 - $offset,
                dr: 2,
            },
            max_eirp_dbm: 16.0,
            uplink_dwell_time: true,
            downlink_dwell_time: false,
            fsb: None,
        };
    };
}

as923_plan!(
    AS_923,
    AS_923_CH,
    "AS_923",
    "Asia 923 MHz group 1: 923.2/923.4 MHz",
    Region::As923,
    0
);
as923_plan!(
    AS_923_2,
    AS_923_2_CH,
    "AS_923_2",
    "Asia 923 MHz group 2: 921.4/921.6 MHz",
    Region::As923Group2,
    1_800_000
);
as923_plan!(
    AS_923_3,
    AS_923_3_CH,
    "AS_923_3",
    "Asia 923 MHz group 3: 916.6/916.8 MHz",
    Region::As923Group3,
    6_600_000
);
as923_plan!(
    AS_923_4,
    AS_923_4_CH,
    "AS_923_4",
    "Asia 923 MHz group 4: 917.3/917.5 MHz",
    Region::As923Group4,
    5_900_000
);

static KR_920_923_CH: [Channel; 7] = [
    ch(922_100_000, 0, 5),
    ch(922_300_000, 0, 5),
    ch(922_500_000, 0, 5),
    ch(922_700_000, 0, 5),
    ch(922_900_000, 0, 5),
    ch(923_100_000, 0, 5),
    ch(923_300_000, 0, 5),
];

static KR_920_923: FrequencyPlan = FrequencyPlan {
    id: "KR_920_923",
    name: "South Korea 920-923 MHz: 922.1-923.3 MHz",
    region: Region::Kr920,
    uplink_channels: &KR_920_923_CH,
    lora_standard_channel: None,
    fsk_channel: None,
    rx2: Rx2Params {
        frequency: 921_900_000,
        dr: 0,
    },
    max_eirp_dbm: 14.0,
    uplink_dwell_time: false,
    downlink_dwell_time: false,
    fsb: None,
};

static IN_865_867_CH: [Channel; 8] = [
    ch(865_062_500, 0, 5),
    ch(865_402_500, 0, 5),
    ch(865_985_000, 0, 5),
    ch(865_232_500, 0, 5),
    ch(866_185_000, 0, 5),
    ch(866_385_000, 0, 5),
    ch(866_585_000, 0, 5),
    ch(866_785_000, 0, 5),
];

static IN_865_867: FrequencyPlan = FrequencyPlan {
    id: "IN_865_867",
    name: "India 865-867 MHz: three default channels + five more",
    region: Region::In865,
    uplink_channels: &IN_865_867_CH,
    lora_standard_channel: None,
    fsk_channel: None,
    rx2: Rx2Params {
        frequency: 866_550_000,
        dr: 2,
    },
    max_eirp_dbm: 30.0,
    uplink_dwell_time: false,
    downlink_dwell_time: false,
    fsb: None,
};

static RU_864_870_CH: [Channel; 7] = [
    ch(868_900_000, 0, 5),
    ch(869_100_000, 0, 5),
    ch(864_100_000, 0, 5),
    ch(864_300_000, 0, 5),
    ch(864_500_000, 0, 5),
    ch(864_700_000, 0, 5),
    ch(864_900_000, 0, 5),
];

static RU_864_870: FrequencyPlan = FrequencyPlan {
    id: "RU_864_870",
    name: "Russia 864-870 MHz: 868.9/869.1 + 864.1-864.9 MHz",
    region: Region::Ru864,
    uplink_channels: &RU_864_870_CH,
    lora_standard_channel: None,
    fsk_channel: None,
    rx2: Rx2Params {
        frequency: 869_100_000,
        dr: 0,
    },
    max_eirp_dbm: 16.0,
    uplink_dwell_time: false,
    downlink_dwell_time: false,
    fsb: None,
};

// `CN_470_510` is the older 96-uplink/48-downlink CN470 layout; it stays unchanged for the
// devices that use it. The RP002-1.0.4 plans follow below as `CN_470_510_{20,26}_{A,B}`.
static CN_470_510_CH: [Channel; 8] = fsb_channels(470_300_000, 1, 0, 5);

static CN_470_510: FrequencyPlan = FrequencyPlan {
    id: "CN_470_510",
    name: "China 470-510 MHz: channels 0-7 (470.3-471.7 MHz)",
    region: Region::Cn470,
    uplink_channels: &CN_470_510_CH,
    lora_standard_channel: None,
    fsk_channel: None,
    rx2: Rx2Params {
        frequency: 505_300_000,
        dr: 0,
    },
    max_eirp_dbm: 19.15,
    uplink_dwell_time: false,
    downlink_dwell_time: false,
    fsb: None,
};

// RP002-1.0.4 CN470 plans: eight 200 kHz channels (DR1–DR5) of one channel group, chosen
// so that they contain the common join channel whose RX2 is the plan's default RX2
// (20 MHz type A: join channel 1; type B: join channel 9; 26 MHz: the first join channel).

macro_rules! cn470_rp2_plan {
    ($plan:ident, $chans:ident, $id:literal, $name:literal, $region:expr,
     $group_first:expr, $block:literal, $rx2:expr) => {
        static $chans: [Channel; 8] = fsb_channels($group_first, $block, 1, 5);
        static $plan: FrequencyPlan = FrequencyPlan {
            id: $id,
            name: $name,
            region: $region,
            uplink_channels: &$chans,
            lora_standard_channel: None,
            fsk_channel: None,
            rx2: Rx2Params {
                frequency: $rx2,
                dr: 1,
            },
            max_eirp_dbm: 19.15,
            uplink_dwell_time: false,
            downlink_dwell_time: false,
            fsb: None,
        };
    };
}

cn470_rp2_plan!(
    CN_470_510_20_A,
    CN_470_510_20_A_CH,
    "CN_470_510_20_A",
    "China 470-510 MHz RP002 20 MHz antenna type A: channels 8-15 (471.9-473.3 MHz, join 472.5)",
    Region::Cn470A20,
    470_300_000,
    2,
    486_900_000
);
cn470_rp2_plan!(
    CN_470_510_20_B,
    CN_470_510_20_B_CH,
    "CN_470_510_20_B",
    "China 470-510 MHz RP002 20 MHz antenna type B: channels 40-47 (498.5-499.9 MHz, join 499.9)",
    Region::Cn470B20,
    496_900_000,
    2,
    498_300_000
);
cn470_rp2_plan!(
    CN_470_510_26_A,
    CN_470_510_26_A_CH,
    "CN_470_510_26_A",
    "China 470-510 MHz RP002 26 MHz antenna type A: channels 0-7 (470.3-471.7 MHz, join 470.3)",
    Region::Cn470A26,
    470_300_000,
    1,
    492_500_000
);
cn470_rp2_plan!(
    CN_470_510_26_B,
    CN_470_510_26_B_CH,
    "CN_470_510_26_B",
    "China 470-510 MHz RP002 26 MHz antenna type B: channels 0-7 (480.3-481.7 MHz, join 480.3)",
    Region::Cn470B26,
    480_300_000,
    1,
    502_500_000
);

static EU_433_CH: [Channel; 8] = [
    ch(433_175_000, 0, 5),
    ch(433_375_000, 0, 5),
    ch(433_575_000, 0, 5),
    ch(433_775_000, 0, 5),
    ch(433_975_000, 0, 5),
    ch(434_175_000, 0, 5),
    ch(434_375_000, 0, 5),
    ch(434_575_000, 0, 5),
];

static EU_433: FrequencyPlan = FrequencyPlan {
    id: "EU_433",
    name: "Europe 433 MHz: 433.175-434.575 MHz, SF7BW250 at 434.075",
    region: Region::Eu433,
    uplink_channels: &EU_433_CH,
    lora_standard_channel: Some(PlanChannel {
        frequency: 434_075_000,
        dr: 6,
    }),
    fsk_channel: None,
    rx2: Rx2Params {
        frequency: 434_665_000,
        dr: 0,
    },
    max_eirp_dbm: 12.15,
    uplink_dwell_time: false,
    downlink_dwell_time: false,
    fsb: None,
};

static CN_779_787_CH: [Channel; 3] = [
    ch(779_500_000, 0, 5),
    ch(779_700_000, 0, 5),
    ch(779_900_000, 0, 5),
];

static CN_779_787: FrequencyPlan = FrequencyPlan {
    id: "CN_779_787",
    name: "China 779-787 MHz: default channels 779.5/779.7/779.9 MHz",
    region: Region::Cn779,
    uplink_channels: &CN_779_787_CH,
    lora_standard_channel: None,
    fsk_channel: None,
    rx2: Rx2Params {
        frequency: 786_000_000,
        dr: 0,
    },
    max_eirp_dbm: 12.15,
    uplink_dwell_time: false,
    downlink_dwell_time: false,
    fsb: None,
};

static ALL_PLANS: [&FrequencyPlan; 31] = [
    &EU_863_870,
    &US_FSB_1,
    &US_FSB_2,
    &US_FSB_3,
    &US_FSB_4,
    &US_FSB_5,
    &US_FSB_6,
    &US_FSB_7,
    &US_FSB_8,
    &AU_FSB_1,
    &AU_FSB_2,
    &AU_FSB_3,
    &AU_FSB_4,
    &AU_FSB_5,
    &AU_FSB_6,
    &AU_FSB_7,
    &AU_FSB_8,
    &AS_923,
    &AS_923_2,
    &AS_923_3,
    &AS_923_4,
    &KR_920_923,
    &IN_865_867,
    &RU_864_870,
    &CN_470_510,
    &CN_470_510_20_A,
    &CN_470_510_20_B,
    &CN_470_510_26_A,
    &CN_470_510_26_B,
    &EU_433,
    &CN_779_787,
];

impl FrequencyPlan {
    /// Every frequency plan, in a stable order.
    pub fn all() -> &'static [&'static FrequencyPlan] {
        &ALL_PLANS
    }

    /// Every frequency plan ID, in the order of [`FrequencyPlan::all`].
    pub fn ids() -> Vec<&'static str> {
        Self::all().iter().map(|p| p.id).collect()
    }

    /// The plan with this ID (exact match).
    pub fn by_id(id: &str) -> Option<&'static FrequencyPlan> {
        Self::all().iter().copied().find(|p| p.id == id)
    }

    /// The plan with this ID, or an error listing the valid IDs.
    pub fn lookup(id: &str) -> Result<&'static FrequencyPlan, BandError> {
        Self::by_id(id).ok_or_else(|| BandError::UnknownFrequencyPlan {
            id: id.to_string(),
            valid: Self::ids().join(", "),
        })
    }

    /// The regional parameters of the plan's region.
    pub fn params(&self) -> &'static RegionParams {
        self.region.params()
    }

    /// Uplink channel bitmap the network enables for this plan (fixed regions: channel
    /// indices of the FSB including its 500 kHz channel; dynamic regions: channels 0..n in
    /// plan order, defaults first).
    pub fn channel_mask(&self) -> ChannelMask {
        let params = self.params();
        match params.channel_layout {
            ChannelLayout::Dynamic { .. } => ChannelMask::first_n(self.uplink_channels.len()),
            ChannelLayout::Fixed { .. } => {
                let mut mask = ChannelMask::empty();
                let freqs = self
                    .uplink_channels
                    .iter()
                    .map(|c| c.frequency)
                    .chain(self.lora_standard_channel.map(|c| c.frequency));
                for f in freqs {
                    if let Some(i) = params.uplink_channel_index(f) {
                        mask.set(i.into(), true);
                    }
                }
                mask
            }
        }
    }

    /// Channels beyond the region's default channels, for a type-0 CFList (at most five).
    /// Empty for fixed-channel regions.
    pub fn cf_list_frequencies(&self) -> Vec<u32> {
        let params = self.params();
        if !matches!(params.channel_layout, ChannelLayout::Dynamic { .. }) {
            return Vec::new();
        }
        self.uplink_channels
            .iter()
            .map(|c| c.frequency)
            .filter(|f| !params.default_channels.iter().any(|d| d.frequency == *f))
            .take(5)
            .collect()
    }

    /// Bandwidth of the LoRa standard channel, from its data rate.
    fn lora_standard_bandwidth(&self) -> u32 {
        self.lora_standard_channel
            .and_then(|c| self.params().data_rate(c.dr))
            .map_or(125_000, |dr| dr.bandwidth_hz())
    }

    /// Place every channel on one of two radios so that each channel lies within
    /// ±[`MAX_IF_OFFSET_HZ`] of its radio's centre; returns the centres and IF offsets.
    pub fn radio_layout(&self) -> Result<RadioLayout, BandError> {
        if self.uplink_channels.len() > MAX_MULTI_SF_CHANNELS {
            return Err(BandError::RadioLayout(format!(
                "{} has {} multi-SF channels, a concentrator has {MAX_MULTI_SF_CHANNELS}",
                self.id,
                self.uplink_channels.len()
            )));
        }
        let mut freqs: Vec<u32> = self
            .uplink_channels
            .iter()
            .map(|c| c.frequency)
            .chain(self.lora_standard_channel.map(|c| c.frequency))
            .chain(self.fsk_channel.map(|c| c.frequency))
            .collect();
        freqs.sort_unstable();
        freqs.dedup();

        // Greedy: open a new radio whenever the next channel would stretch the current
        // group beyond twice the IF limit.
        let mut groups: Vec<(u32, u32)> = Vec::new();
        for f in freqs {
            match groups.last_mut() {
                Some((lo, hi)) if f - *lo <= 2 * MAX_IF_OFFSET_HZ => *hi = f,
                _ => groups.push((f, f)),
            }
        }
        if groups.len() > 2 {
            return Err(BandError::RadioLayout(format!(
                "{} spans {} radio windows of {} kHz",
                self.id,
                groups.len(),
                2 * MAX_IF_OFFSET_HZ / 1000
            )));
        }
        let center = |(lo, hi): (u32, u32)| lo + (hi - lo) / 2;
        let c0 = center(groups[0]);
        let c1 = groups.get(1).map_or(c0, |&g| center(g));
        let radio_centers = [c0, c1];

        let place = |frequency: u32, bandwidth_hz: u32| {
            let radio = if groups.len() > 1 && frequency >= groups[1].0 {
                1
            } else {
                0
            };
            RadioChannel {
                frequency,
                bandwidth_hz,
                radio,
                if_offset_hz: frequency as i32 - radio_centers[radio as usize] as i32,
            }
        };
        Ok(RadioLayout {
            radio_centers,
            multi_sf: self
                .uplink_channels
                .iter()
                .map(|c| place(c.frequency, 125_000))
                .collect(),
            lora_standard: self
                .lora_standard_channel
                .map(|c| place(c.frequency, self.lora_standard_bandwidth())),
            fsk: self.fsk_channel.map(|c| place(c.frequency, 125_000)),
        })
    }
}
