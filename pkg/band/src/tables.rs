//! The RP002-1.0.4 tables, one `RegionParams` per region.
//!
//! Numbers are from the LoRaWAN Regional Parameters RP002-1.0.4 specification and were
//! cross-checked against the tables of The Things Stack, ChirpStack and LoRaMac-node.
//! M is the maximum MACPayload size without repeater; repeater compatibility caps it at 230.

use crate::datarate::{DataRate, DataRateEntry, LrFhssCodingRate};
use crate::region::{
    BeaconParams, CfListType, Channel, ChannelLayout, CommonJoinChannel, DwellTimeRule,
    FixedChannelBlock, PingSlotParams, Region, RegionParams, Rx1ChannelRule, Rx2Params, SubBand,
};

const BW125: u32 = 125_000;
const BW250: u32 = 250_000;
const BW500: u32 = 500_000;

/// Row usable in both directions, same M with and without dwell time.
const fn lora(index: u8, sf: u8, bw_hz: u32, bit_rate: u32, m: u8) -> DataRateEntry {
    lora_dwell(index, sf, bw_hz, bit_rate, m, m)
}

/// Row usable in both directions with a dwell-time M column.
const fn lora_dwell(
    index: u8,
    sf: u8,
    bw_hz: u32,
    bit_rate: u32,
    m: u8,
    m_dwell: u8,
) -> DataRateEntry {
    DataRateEntry {
        index,
        data_rate: DataRate::Lora { sf, bw_hz },
        bit_rate,
        uplink: true,
        downlink: true,
        max_mac_payload: m,
        max_mac_payload_dwell: m_dwell,
    }
}

/// Restrict a row to uplink.
const fn up(mut e: DataRateEntry) -> DataRateEntry {
    e.downlink = false;
    e
}

/// Restrict a row to downlink.
const fn down(mut e: DataRateEntry) -> DataRateEntry {
    e.uplink = false;
    e
}

const fn fsk(index: u8, m: u8) -> DataRateEntry {
    DataRateEntry {
        index,
        data_rate: DataRate::Fsk { bitrate: 50_000 },
        bit_rate: 50_000,
        uplink: true,
        downlink: true,
        max_mac_payload: m,
        max_mac_payload_dwell: m,
    }
}

/// LR-FHSS row (always uplink only).
const fn lrfhss(index: u8, coding_rate: LrFhssCodingRate, ocw_hz: u32, m: u8) -> DataRateEntry {
    let bit_rate = match coding_rate {
        LrFhssCodingRate::Cr1_3 => 162,
        LrFhssCodingRate::Cr2_3 => 325,
    };
    DataRateEntry {
        index,
        data_rate: DataRate::LrFhss {
            coding_rate,
            ocw_hz,
        },
        bit_rate,
        uplink: true,
        downlink: false,
        max_mac_payload: m,
        max_mac_payload_dwell: m,
    }
}

const fn ch(frequency: u32, min_dr: u8, max_dr: u8) -> Channel {
    Channel {
        frequency,
        min_dr,
        max_dr,
    }
}

const fn sub_band(min: u32, max: u32, duty_cycle: f32, max_eirp_dbm: f32) -> SubBand {
    SubBand {
        min_frequency: min,
        max_frequency: max,
        duty_cycle,
        max_eirp_dbm,
    }
}

use LrFhssCodingRate::{Cr1_3, Cr2_3};

/// TXPower 0..=7: 0, −2 … −14 dB.
const TX_POWER_8: [i8; 8] = [0, -2, -4, -6, -8, -10, -12, -14];
/// TXPower 0..=5: 0, −2 … −10 dB.
const TX_POWER_6: [i8; 6] = [0, -2, -4, -6, -8, -10];
/// TXPower 0..=10: 0, −2 … −20 dB.
const TX_POWER_11: [i8; 11] = [0, -2, -4, -6, -8, -10, -12, -14, -16, -18, -20];
/// TXPower 0..=14: 0, −2 … −28 dB.
const TX_POWER_15: [i8; 15] = [
    0, -2, -4, -6, -8, -10, -12, -14, -16, -18, -20, -22, -24, -26, -28,
];

/// DR0..DR7 of the EU-like regions (EU868, RU864, EU433, CN779), RP002-1.0.4 M values.
macro_rules! eu_like_dr0_7 {
    () => {
        [
            lora(0, 12, BW125, 250, 59),
            lora(1, 11, BW125, 440, 59),
            lora(2, 10, BW125, 980, 59),
            lora(3, 9, BW125, 1760, 123),
            lora(4, 8, BW125, 3125, 250),
            lora(5, 7, BW125, 5470, 250),
            lora(6, 7, BW250, 11000, 250),
            fsk(7, 250),
        ]
    };
}

// ---------------------------------------------------------------- EU868

static EU868_DATA_RATES: [DataRateEntry; 12] = {
    let b = eu_like_dr0_7!();
    [
        b[0],
        b[1],
        b[2],
        b[3],
        b[4],
        b[5],
        b[6],
        b[7],
        lrfhss(8, Cr1_3, 137_000, 58),
        lrfhss(9, Cr2_3, 137_000, 123),
        lrfhss(10, Cr1_3, 336_000, 58),
        lrfhss(11, Cr2_3, 336_000, 123),
    ]
};

static EU868_DEFAULT_CHANNELS: [Channel; 3] = [
    ch(868_100_000, 0, 5),
    ch(868_300_000, 0, 5),
    ch(868_500_000, 0, 5),
];

/// ETSI EN 300 220 sub-bands as RP002 uses them (g, g1, g2, g3 and neighbours).
/// EIRP: 14 dBm ERP = 16.15 dBm EIRP; 869.4–869.65 MHz allows 27 dBm ERP = 29.15 dBm EIRP.
static EU868_SUB_BANDS: [SubBand; 6] = [
    sub_band(863_000_000, 865_000_000, 0.001, 16.15),
    sub_band(865_000_000, 868_000_000, 0.01, 16.15),
    sub_band(868_000_000, 868_600_000, 0.01, 16.15),
    sub_band(868_700_000, 869_200_000, 0.001, 16.15),
    sub_band(869_400_000, 869_650_000, 0.1, 29.15),
    sub_band(869_700_000, 870_000_000, 0.01, 16.15),
];

pub(crate) static EU868: RegionParams = RegionParams {
    region: Region::Eu868,
    min_frequency: 863_000_000,
    max_frequency: 870_000_000,
    data_rates: &EU868_DATA_RATES,
    max_rx1_dr_offset: 5,
    channel_layout: ChannelLayout::Dynamic { max_channels: 16 },
    default_channels: &EU868_DEFAULT_CHANNELS,
    rx1_channel_rule: Rx1ChannelRule::SameAsUplink,
    rx2: Rx2Params {
        frequency: 869_525_000,
        dr: 0,
    },
    tx_power_offsets_db: &TX_POWER_8,
    default_max_eirp_dbm: 16.0,
    sub_bands: &EU868_SUB_BANDS,
    uplink_dwell_time: DwellTimeRule::NotApplicable,
    downlink_dwell_time: DwellTimeRule::NotApplicable,
    tx_param_setup_req: false,
    cf_list_type: CfListType::Frequencies,
    beacon: BeaconParams {
        frequencies: &[869_525_000],
        dr: 3,
    },
    ping_slot: PingSlotParams {
        frequencies: &[869_525_000],
        dr: 3,
    },
};

// ---------------------------------------------------------------- US915 / AU915

/// Downlink DR8..DR13 shared by US915 and AU915.
macro_rules! us_au_downlink {
    () => {
        [
            down(lora(8, 12, BW500, 980, 61)),
            down(lora(9, 11, BW500, 1760, 137)),
            down(lora(10, 10, BW500, 3900, 250)),
            down(lora(11, 9, BW500, 7000, 250)),
            down(lora(12, 8, BW500, 12500, 250)),
            down(lora(13, 7, BW500, 21900, 250)),
        ]
    };
}

/// The eight 500 kHz downlink channels, 923.3 MHz + n × 600 kHz.
const US_AU_DOWNLINK: FixedChannelBlock = FixedChannelBlock {
    first_frequency: 923_300_000,
    step: 600_000,
    count: 8,
    min_dr: 8,
    max_dr: 13,
};

static US_AU_BEACON_FREQUENCIES: [u32; 8] = [
    923_300_000,
    923_900_000,
    924_500_000,
    925_100_000,
    925_700_000,
    926_300_000,
    926_900_000,
    927_500_000,
];

/// US915: uplink M already reflects the FCC 400 ms dwell time, which always applies.
static US915_DATA_RATES: [DataRateEntry; 13] = {
    let d = us_au_downlink!();
    [
        up(lora(0, 10, BW125, 980, 19)),
        up(lora(1, 9, BW125, 1760, 61)),
        up(lora(2, 8, BW125, 3125, 133)),
        up(lora(3, 7, BW125, 5470, 250)),
        up(lora(4, 8, BW500, 12500, 250)),
        lrfhss(5, Cr1_3, 1_523_000, 58),
        lrfhss(6, Cr2_3, 1_523_000, 133),
        d[0],
        d[1],
        d[2],
        d[3],
        d[4],
        d[5],
    ]
};

static US915_SUB_BANDS: [SubBand; 1] = [sub_band(902_000_000, 928_000_000, 1.0, 30.0)];

pub(crate) static US915: RegionParams = RegionParams {
    region: Region::Us915,
    min_frequency: 902_000_000,
    max_frequency: 928_000_000,
    data_rates: &US915_DATA_RATES,
    max_rx1_dr_offset: 3,
    channel_layout: ChannelLayout::Fixed {
        uplink: FixedChannelBlock {
            first_frequency: 902_300_000,
            step: 200_000,
            count: 64,
            min_dr: 0,
            max_dr: 3,
        },
        uplink_group2: None,
        uplink_wide: Some(FixedChannelBlock {
            first_frequency: 903_000_000,
            step: 1_600_000,
            count: 8,
            min_dr: 4,
            max_dr: 6,
        }),
        downlink: US_AU_DOWNLINK,
        downlink_group2: None,
    },
    default_channels: &[],
    rx1_channel_rule: Rx1ChannelRule::UplinkChannelModulo,
    rx2: Rx2Params {
        frequency: 923_300_000,
        dr: 8,
    },
    tx_power_offsets_db: &TX_POWER_15,
    default_max_eirp_dbm: 30.0,
    sub_bands: &US915_SUB_BANDS,
    uplink_dwell_time: DwellTimeRule::Always,
    downlink_dwell_time: DwellTimeRule::NotApplicable,
    tx_param_setup_req: false,
    cf_list_type: CfListType::ChannelMask,
    beacon: BeaconParams {
        frequencies: &US_AU_BEACON_FREQUENCIES,
        dr: 8,
    },
    ping_slot: PingSlotParams {
        frequencies: &US_AU_BEACON_FREQUENCIES,
        dr: 8,
    },
};

static AU915_DATA_RATES: [DataRateEntry; 14] = {
    let d = us_au_downlink!();
    [
        up(lora_dwell(0, 12, BW125, 250, 59, 0)),
        up(lora_dwell(1, 11, BW125, 440, 59, 0)),
        up(lora_dwell(2, 10, BW125, 980, 59, 19)),
        up(lora_dwell(3, 9, BW125, 1760, 123, 61)),
        up(lora_dwell(4, 8, BW125, 3125, 250, 133)),
        up(lora(5, 7, BW125, 5470, 250)),
        up(lora(6, 8, BW500, 12500, 250)),
        lrfhss(7, Cr1_3, 1_523_000, 58),
        d[0],
        d[1],
        d[2],
        d[3],
        d[4],
        d[5],
    ]
};

static AU915_SUB_BANDS: [SubBand; 1] = [sub_band(915_000_000, 928_000_000, 1.0, 30.0)];

pub(crate) static AU915: RegionParams = RegionParams {
    region: Region::Au915,
    min_frequency: 915_000_000,
    max_frequency: 928_000_000,
    data_rates: &AU915_DATA_RATES,
    max_rx1_dr_offset: 5,
    channel_layout: ChannelLayout::Fixed {
        uplink: FixedChannelBlock {
            first_frequency: 915_200_000,
            step: 200_000,
            count: 64,
            min_dr: 0,
            max_dr: 5,
        },
        uplink_group2: None,
        uplink_wide: Some(FixedChannelBlock {
            first_frequency: 915_900_000,
            step: 1_600_000,
            count: 8,
            min_dr: 6,
            max_dr: 7,
        }),
        downlink: US_AU_DOWNLINK,
        downlink_group2: None,
    },
    default_channels: &[],
    rx1_channel_rule: Rx1ChannelRule::UplinkChannelModulo,
    rx2: Rx2Params {
        frequency: 923_300_000,
        dr: 8,
    },
    tx_power_offsets_db: &TX_POWER_15,
    default_max_eirp_dbm: 30.0,
    sub_bands: &AU915_SUB_BANDS,
    uplink_dwell_time: DwellTimeRule::Configurable { default_on: true },
    downlink_dwell_time: DwellTimeRule::Configurable { default_on: false },
    tx_param_setup_req: true,
    cf_list_type: CfListType::ChannelMask,
    beacon: BeaconParams {
        frequencies: &US_AU_BEACON_FREQUENCIES,
        dr: 8,
    },
    ping_slot: PingSlotParams {
        frequencies: &US_AU_BEACON_FREQUENCIES,
        dr: 8,
    },
};

// ---------------------------------------------------------------- AS923 groups 1–4

static AS923_DATA_RATES: [DataRateEntry; 8] = [
    lora_dwell(0, 12, BW125, 250, 59, 0),
    lora_dwell(1, 11, BW125, 440, 59, 0),
    lora_dwell(2, 10, BW125, 980, 123, 19),
    lora_dwell(3, 9, BW125, 1760, 123, 61),
    lora_dwell(4, 8, BW125, 3125, 250, 133),
    lora(5, 7, BW125, 5470, 250),
    lora(6, 7, BW250, 11000, 250),
    fsk(7, 250),
];

/// One AS923 group: AS923-1 frequencies minus the group offset.
macro_rules! as923_group {
    ($name:ident, $channels:ident, $beacon:ident, $sub:ident, $region:expr,
     $offset:expr, $min:expr, $max:expr) => {
        static $channels: [Channel; 2] = [
            ch(923_200_000 - $offset, 0, 5),
            ch(923_400_000 - $offset, 0, 5),
        ];
        static $beacon: [u32; 1] = [923_400_000 - $offset];
        static $sub: [SubBand; 1] = [sub_band($min, $max, 1.0, 16.0)];
        pub(crate) static $name: RegionParams = RegionParams {
            region: $region,
            min_frequency: $min,
            max_frequency: $max,
            data_rates: &AS923_DATA_RATES,
            max_rx1_dr_offset: 7,
            channel_layout: ChannelLayout::Dynamic { max_channels: 16 },
            default_channels: &$channels,
            rx1_channel_rule: Rx1ChannelRule::SameAsUplink,
            rx2: Rx2Params {
                frequency: 923_200_000 - $offset,
                dr: 2,
            },
            tx_power_offsets_db: &TX_POWER_8,
            default_max_eirp_dbm: 16.0,
            sub_bands: &$sub,
            uplink_dwell_time: DwellTimeRule::Configurable { default_on: true },
            downlink_dwell_time: DwellTimeRule::Configurable { default_on: false },
            tx_param_setup_req: true,
            cf_list_type: CfListType::Frequencies,
            beacon: BeaconParams {
                frequencies: &$beacon,
                dr: 3,
            },
            ping_slot: PingSlotParams {
                frequencies: &$beacon,
                dr: 3,
            },
        };
    };
}

as923_group!(
    AS923_1,
    AS923_1_CHANNELS,
    AS923_1_BEACON,
    AS923_1_SUB_BANDS,
    Region::As923,
    0,
    915_000_000,
    928_000_000
);
as923_group!(
    AS923_2,
    AS923_2_CHANNELS,
    AS923_2_BEACON,
    AS923_2_SUB_BANDS,
    Region::As923Group2,
    1_800_000,
    920_000_000,
    923_000_000
);
as923_group!(
    AS923_3,
    AS923_3_CHANNELS,
    AS923_3_BEACON,
    AS923_3_SUB_BANDS,
    Region::As923Group3,
    6_600_000,
    915_000_000,
    921_000_000
);
as923_group!(
    AS923_4,
    AS923_4_CHANNELS,
    AS923_4_BEACON,
    AS923_4_SUB_BANDS,
    Region::As923Group4,
    5_900_000,
    917_000_000,
    920_000_000
);

// ---------------------------------------------------------------- KR920

static KR920_DATA_RATES: [DataRateEntry; 6] = [
    lora(0, 12, BW125, 250, 59),
    lora(1, 11, BW125, 440, 59),
    lora(2, 10, BW125, 980, 59),
    lora(3, 9, BW125, 1760, 123),
    lora(4, 8, BW125, 3125, 250),
    lora(5, 7, BW125, 5470, 250),
];

static KR920_DEFAULT_CHANNELS: [Channel; 3] = [
    ch(922_100_000, 0, 5),
    ch(922_300_000, 0, 5),
    ch(922_500_000, 0, 5),
];

/// KR920 uses listen-before-talk, no duty cycle; 10 dBm EIRP below 922 MHz, 14 dBm above.
static KR920_SUB_BANDS: [SubBand; 2] = [
    sub_band(920_900_000, 921_900_000, 1.0, 10.0),
    sub_band(922_000_000, 923_300_000, 1.0, 14.0),
];

pub(crate) static KR920: RegionParams = RegionParams {
    region: Region::Kr920,
    min_frequency: 920_900_000,
    max_frequency: 923_300_000,
    data_rates: &KR920_DATA_RATES,
    max_rx1_dr_offset: 5,
    channel_layout: ChannelLayout::Dynamic { max_channels: 16 },
    default_channels: &KR920_DEFAULT_CHANNELS,
    rx1_channel_rule: Rx1ChannelRule::SameAsUplink,
    rx2: Rx2Params {
        frequency: 921_900_000,
        dr: 0,
    },
    tx_power_offsets_db: &TX_POWER_8,
    default_max_eirp_dbm: 14.0,
    sub_bands: &KR920_SUB_BANDS,
    uplink_dwell_time: DwellTimeRule::NotApplicable,
    downlink_dwell_time: DwellTimeRule::NotApplicable,
    tx_param_setup_req: false,
    cf_list_type: CfListType::Frequencies,
    beacon: BeaconParams {
        frequencies: &[923_100_000],
        dr: 3,
    },
    ping_slot: PingSlotParams {
        frequencies: &[923_100_000],
        dr: 3,
    },
};

// ---------------------------------------------------------------- IN865

/// IN865: DR6 is RFU.
static IN865_DATA_RATES: [DataRateEntry; 7] = [
    lora(0, 12, BW125, 250, 59),
    lora(1, 11, BW125, 440, 59),
    lora(2, 10, BW125, 980, 59),
    lora(3, 9, BW125, 1760, 123),
    lora(4, 8, BW125, 3125, 250),
    lora(5, 7, BW125, 5470, 250),
    fsk(7, 250),
];

static IN865_DEFAULT_CHANNELS: [Channel; 3] = [
    ch(865_062_500, 0, 5),
    ch(865_402_500, 0, 5),
    ch(865_985_000, 0, 5),
];

static IN865_SUB_BANDS: [SubBand; 1] = [sub_band(865_000_000, 867_000_000, 1.0, 30.0)];

pub(crate) static IN865: RegionParams = RegionParams {
    region: Region::In865,
    min_frequency: 865_000_000,
    max_frequency: 867_000_000,
    data_rates: &IN865_DATA_RATES,
    max_rx1_dr_offset: 7,
    channel_layout: ChannelLayout::Dynamic { max_channels: 16 },
    default_channels: &IN865_DEFAULT_CHANNELS,
    rx1_channel_rule: Rx1ChannelRule::SameAsUplink,
    rx2: Rx2Params {
        frequency: 866_550_000,
        dr: 2,
    },
    tx_power_offsets_db: &TX_POWER_11,
    default_max_eirp_dbm: 30.0,
    sub_bands: &IN865_SUB_BANDS,
    uplink_dwell_time: DwellTimeRule::NotApplicable,
    downlink_dwell_time: DwellTimeRule::NotApplicable,
    tx_param_setup_req: false,
    cf_list_type: CfListType::Frequencies,
    beacon: BeaconParams {
        frequencies: &[866_550_000],
        dr: 4,
    },
    ping_slot: PingSlotParams {
        frequencies: &[866_550_000],
        dr: 4,
    },
};

// ---------------------------------------------------------------- RU864

static RU864_DATA_RATES: [DataRateEntry; 8] = eu_like_dr0_7!();

static RU864_DEFAULT_CHANNELS: [Channel; 2] = [ch(868_900_000, 0, 5), ch(869_100_000, 0, 5)];

static RU864_SUB_BANDS: [SubBand; 1] = [sub_band(864_000_000, 870_000_000, 0.01, 16.0)];

pub(crate) static RU864: RegionParams = RegionParams {
    region: Region::Ru864,
    min_frequency: 864_000_000,
    max_frequency: 870_000_000,
    data_rates: &RU864_DATA_RATES,
    max_rx1_dr_offset: 5,
    channel_layout: ChannelLayout::Dynamic { max_channels: 16 },
    default_channels: &RU864_DEFAULT_CHANNELS,
    rx1_channel_rule: Rx1ChannelRule::SameAsUplink,
    rx2: Rx2Params {
        frequency: 869_100_000,
        dr: 0,
    },
    tx_power_offsets_db: &TX_POWER_8,
    default_max_eirp_dbm: 16.0,
    sub_bands: &RU864_SUB_BANDS,
    uplink_dwell_time: DwellTimeRule::NotApplicable,
    downlink_dwell_time: DwellTimeRule::NotApplicable,
    tx_param_setup_req: false,
    cf_list_type: CfListType::Frequencies,
    beacon: BeaconParams {
        frequencies: &[869_100_000],
        dr: 3,
    },
    ping_slot: PingSlotParams {
        frequencies: &[868_900_000],
        dr: 3,
    },
};

// ---------------------------------------------------------------- CN470

/// CN470 in the 96-uplink / 48-downlink layout that `CN_470_510` gateways and network
/// servers use (DR0–DR5, M as in the LoRaWAN 1.0.x/1.1 regional parameters).
static CN470_DATA_RATES: [DataRateEntry; 6] = [
    lora(0, 12, BW125, 250, 59),
    lora(1, 11, BW125, 440, 59),
    lora(2, 10, BW125, 980, 59),
    lora(3, 9, BW125, 1760, 123),
    lora(4, 8, BW125, 3125, 250),
    lora(5, 7, BW125, 5470, 250),
];

static CN470_SUB_BANDS: [SubBand; 1] = [sub_band(470_000_000, 510_000_000, 1.0, 19.15)];

static CN470_BEACON_FREQUENCIES: [u32; 8] = [
    508_300_000,
    508_500_000,
    508_700_000,
    508_900_000,
    509_100_000,
    509_300_000,
    509_500_000,
    509_700_000,
];

pub(crate) static CN470: RegionParams = RegionParams {
    region: Region::Cn470,
    min_frequency: 470_000_000,
    max_frequency: 510_000_000,
    data_rates: &CN470_DATA_RATES,
    max_rx1_dr_offset: 5,
    channel_layout: ChannelLayout::Fixed {
        uplink: FixedChannelBlock {
            first_frequency: 470_300_000,
            step: 200_000,
            count: 96,
            min_dr: 0,
            max_dr: 5,
        },
        uplink_group2: None,
        uplink_wide: None,
        downlink: FixedChannelBlock {
            first_frequency: 500_300_000,
            step: 200_000,
            count: 48,
            min_dr: 0,
            max_dr: 5,
        },
        downlink_group2: None,
    },
    default_channels: &[],
    rx1_channel_rule: Rx1ChannelRule::UplinkChannelModulo,
    rx2: Rx2Params {
        frequency: 505_300_000,
        dr: 0,
    },
    tx_power_offsets_db: &TX_POWER_8,
    default_max_eirp_dbm: 19.15,
    sub_bands: &CN470_SUB_BANDS,
    uplink_dwell_time: DwellTimeRule::NotApplicable,
    downlink_dwell_time: DwellTimeRule::NotApplicable,
    tx_param_setup_req: false,
    cf_list_type: CfListType::ChannelMask,
    beacon: BeaconParams {
        frequencies: &CN470_BEACON_FREQUENCIES,
        dr: 2,
    },
    ping_slot: PingSlotParams {
        frequencies: &CN470_BEACON_FREQUENCIES,
        dr: 2,
    },
};

// ---------------------------------------------------------------- CN470, RP002-1.0.4 plans

// RP002-1.0.4 §2.11 (CN470-510) defines four channel plans: 20 MHz and 26 MHz antennas, each
// type A or B. They share the data rate table, TX power table and band; they differ in their
// channels, RX1 rule, RX2/beacon/ping-slot frequencies and LinkADRReq ChMaskCntl meanings.
// Sources, cross-checked: LoRaMac-node (RegionCN470*.c/h, RegionCN470A20/B20/A26/B26),
// LoRa Basics Modem (region_cn_470*), The Things Stack (cn_470_510_{20,26}_{a,b}*.go),
// ChirpStack (lrwn region cn470, RP002 payload sizes).

/// DR1..DR7 of the RP002 CN470 plans. DR0 (SF12/125 kHz) is listed by RP002 but has no payload
/// size ("not defined") and end-devices do not use it, so it is left out like an RFU index.
/// M: RP002-1.0.2 and later (DR3 = 192; RP002-1.0.1 had 172, which The Things Stack kept).
static CN470_RP2_DATA_RATES: [DataRateEntry; 7] = [
    lora(1, 11, BW125, 440, 31),
    lora(2, 10, BW125, 980, 94),
    lora(3, 9, BW125, 1760, 192),
    lora(4, 8, BW125, 3125, 250),
    lora(5, 7, BW125, 5470, 250),
    lora(6, 7, BW500, 21900, 250),
    fsk(7, 250),
];

/// A 200 kHz-spaced block of RP002 CN470 channels usable at DR1..DR5.
const fn cn470_block(first_frequency: u32, count: u8) -> FixedChannelBlock {
    FixedChannelBlock {
        first_frequency,
        step: 200_000,
        count,
        min_dr: 1,
        max_dr: 5,
    }
}

/// `N` frequencies `first + i × 200 kHz`.
const fn spaced<const N: usize>(first: u32) -> [u32; N] {
    let mut out = [0u32; N];
    let mut i = 0;
    while i < N {
        out[i] = first + i as u32 * 200_000;
        i += 1;
    }
    out
}

/// RX2 of the RP002 CN470 plans (always DR1).
const fn rx2_dr1(frequency: u32) -> Rx2Params {
    Rx2Params { frequency, dr: 1 }
}

/// A common join channel of the RP002 CN470 plans (beacon and ping slots at DR2).
const fn join_channel(
    index: u8,
    frequency: u32,
    join_accept_rx1_frequency: u32,
    rx2_frequency: u32,
    beacon: &'static [u32],
    ping_slot: &'static [u32],
) -> CommonJoinChannel {
    CommonJoinChannel {
        index,
        frequency,
        join_accept_rx1_frequency,
        rx2: rx2_dr1(rx2_frequency),
        beacon: BeaconParams {
            frequencies: beacon,
            dr: 2,
        },
        ping_slot: PingSlotParams {
            frequencies: ping_slot,
            dr: 2,
        },
    }
}

/// The RP002 CN470 region parameters with the given channels and defaults.
const fn cn470_rp2(
    region: Region,
    channel_layout: ChannelLayout,
    rx2_frequency: u32,
    beacon: &'static [u32],
    ping_slot: &'static [u32],
) -> RegionParams {
    RegionParams {
        region,
        min_frequency: 470_000_000,
        max_frequency: 510_000_000,
        data_rates: &CN470_RP2_DATA_RATES,
        max_rx1_dr_offset: 5,
        channel_layout,
        default_channels: &[],
        rx1_channel_rule: Rx1ChannelRule::UplinkChannelModulo,
        rx2: rx2_dr1(rx2_frequency),
        tx_power_offsets_db: &TX_POWER_8,
        default_max_eirp_dbm: 19.15,
        sub_bands: &CN470_SUB_BANDS,
        uplink_dwell_time: DwellTimeRule::NotApplicable,
        downlink_dwell_time: DwellTimeRule::NotApplicable,
        tx_param_setup_req: false,
        cf_list_type: CfListType::ChannelMask,
        beacon: BeaconParams {
            frequencies: beacon,
            dr: 2,
        },
        ping_slot: PingSlotParams {
            frequencies: ping_slot,
            dr: 2,
        },
    }
}

// 20 MHz type A: uplink group 1 470.3–476.5 MHz (channels 0–31), group 2 503.5–509.7 MHz
// (32–63); downlink 483.9–490.1 MHz (0–31) and 490.3–496.5 MHz (32–63); RX1 on the downlink
// channel with the uplink's index. Join channel k (0–7) is uplink channel 8k + 3; a device
// that joined there uses RX2 485.3 + 1.6k MHz and beacons/ping slots hopping over downlink
// channels 8k..8k+7. ABP devices use RX2 486.9 MHz (= join channel 1), so the region-level
// beacon/ping-slot defaults are those of join channel 1 as well.

static CN470_A20_BEACON: [[u32; 8]; 8] = [
    spaced(483_900_000),
    spaced(485_500_000),
    spaced(487_100_000),
    spaced(488_700_000),
    spaced(490_300_000),
    spaced(491_900_000),
    spaced(493_500_000),
    spaced(495_100_000),
];

static CN470_A20_JOIN: [CommonJoinChannel; 8] = {
    let b = &CN470_A20_BEACON;
    [
        join_channel(0, 470_900_000, 484_500_000, 485_300_000, &b[0], &b[0]),
        join_channel(1, 472_500_000, 486_100_000, 486_900_000, &b[1], &b[1]),
        join_channel(2, 474_100_000, 487_700_000, 488_500_000, &b[2], &b[2]),
        join_channel(3, 475_700_000, 489_300_000, 490_100_000, &b[3], &b[3]),
        join_channel(4, 504_100_000, 490_900_000, 491_700_000, &b[4], &b[4]),
        join_channel(5, 505_700_000, 492_500_000, 493_300_000, &b[5], &b[5]),
        join_channel(6, 507_300_000, 494_100_000, 494_900_000, &b[6], &b[6]),
        join_channel(7, 508_900_000, 495_700_000, 496_500_000, &b[7], &b[7]),
    ]
};

pub(crate) static CN470_A20: RegionParams = cn470_rp2(
    Region::Cn470A20,
    ChannelLayout::Fixed {
        uplink: cn470_block(470_300_000, 32),
        uplink_group2: Some(cn470_block(503_500_000, 32)),
        uplink_wide: None,
        downlink: cn470_block(483_900_000, 32),
        downlink_group2: Some(cn470_block(490_300_000, 32)),
    },
    486_900_000,
    &CN470_A20_BEACON[1],
    &CN470_A20_BEACON[1],
);

// 20 MHz type B: group 1 476.9–483.1 MHz (channels 0–31), group 2 496.9–503.1 MHz (32–63),
// downlink on the uplink frequency. Join channels 479.9 MHz (channel 15, group 1) and
// 499.9 MHz (channel 47, group 2); RX2 478.3 / 498.3 MHz; beacon on channel 23 / 55
// (481.5 / 501.5 MHz); ping slots hop over the 32 channels of the group. ABP devices use RX2
// 498.3 MHz (= join channel 9), so the region-level Class B defaults are those of group 2.

static CN470_B20_PING_SLOT: [[u32; 32]; 2] = [spaced(476_900_000), spaced(496_900_000)];

static CN470_B20_JOIN: [CommonJoinChannel; 2] = [
    join_channel(
        8,
        479_900_000,
        479_900_000,
        478_300_000,
        &[481_500_000],
        &CN470_B20_PING_SLOT[0],
    ),
    join_channel(
        9,
        499_900_000,
        499_900_000,
        498_300_000,
        &[501_500_000],
        &CN470_B20_PING_SLOT[1],
    ),
];

pub(crate) static CN470_B20: RegionParams = cn470_rp2(
    Region::Cn470B20,
    ChannelLayout::Fixed {
        uplink: cn470_block(476_900_000, 32),
        uplink_group2: Some(cn470_block(496_900_000, 32)),
        uplink_wide: None,
        downlink: cn470_block(476_900_000, 32),
        downlink_group2: Some(cn470_block(496_900_000, 32)),
    },
    498_300_000,
    &[501_500_000],
    &CN470_B20_PING_SLOT[1],
);

// 26 MHz type A: uplink 470.3–479.7 MHz (48 channels), downlink 490.1–494.7 MHz (24),
// RX1 = downlink channel (uplink channel mod 24). Join channels 470.3 + 2n MHz (n = 0–4), whose
// join-accepts come on 492.5 MHz; RX2 492.5 MHz; beacon and ping slots 494.9 MHz.

static CN470_A26_CLASS_B: [u32; 1] = [494_900_000];

static CN470_A26_JOIN: [CommonJoinChannel; 5] = {
    let f = &CN470_A26_CLASS_B;
    [
        join_channel(10, 470_300_000, 492_500_000, 492_500_000, f, f),
        join_channel(11, 472_300_000, 492_500_000, 492_500_000, f, f),
        join_channel(12, 474_300_000, 492_500_000, 492_500_000, f, f),
        join_channel(13, 476_300_000, 492_500_000, 492_500_000, f, f),
        join_channel(14, 478_300_000, 492_500_000, 492_500_000, f, f),
    ]
};

pub(crate) static CN470_A26: RegionParams = cn470_rp2(
    Region::Cn470A26,
    ChannelLayout::Fixed {
        uplink: cn470_block(470_300_000, 48),
        uplink_group2: None,
        uplink_wide: None,
        downlink: cn470_block(490_100_000, 24),
        downlink_group2: None,
    },
    492_500_000,
    &CN470_A26_CLASS_B,
    &CN470_A26_CLASS_B,
);

// 26 MHz type B: uplink 480.3–489.7 MHz (48 channels), downlink 500.1–504.7 MHz (24),
// RX1 = downlink channel (uplink channel mod 24). Join channels 480.3 + 2n MHz (n = 0–4), whose
// join-accepts come on 502.5 MHz; RX2 502.5 MHz; beacon and ping slots 504.9 MHz.

static CN470_B26_CLASS_B: [u32; 1] = [504_900_000];

static CN470_B26_JOIN: [CommonJoinChannel; 5] = {
    let f = &CN470_B26_CLASS_B;
    [
        join_channel(15, 480_300_000, 502_500_000, 502_500_000, f, f),
        join_channel(16, 482_300_000, 502_500_000, 502_500_000, f, f),
        join_channel(17, 484_300_000, 502_500_000, 502_500_000, f, f),
        join_channel(18, 486_300_000, 502_500_000, 502_500_000, f, f),
        join_channel(19, 488_300_000, 502_500_000, 502_500_000, f, f),
    ]
};

pub(crate) static CN470_B26: RegionParams = cn470_rp2(
    Region::Cn470B26,
    ChannelLayout::Fixed {
        uplink: cn470_block(480_300_000, 48),
        uplink_group2: None,
        uplink_wide: None,
        downlink: cn470_block(500_100_000, 24),
        downlink_group2: None,
    },
    502_500_000,
    &CN470_B26_CLASS_B,
    &CN470_B26_CLASS_B,
);

/// The common join channels of an RP002 CN470 plan; empty for every other region.
pub(crate) fn common_join_channels(region: Region) -> &'static [CommonJoinChannel] {
    match region {
        Region::Cn470A20 => &CN470_A20_JOIN,
        Region::Cn470B20 => &CN470_B20_JOIN,
        Region::Cn470A26 => &CN470_A26_JOIN,
        Region::Cn470B26 => &CN470_B26_JOIN,
        _ => &[],
    }
}

// ---------------------------------------------------------------- EU433

static EU433_DATA_RATES: [DataRateEntry; 8] = eu_like_dr0_7!();

static EU433_DEFAULT_CHANNELS: [Channel; 3] = [
    ch(433_175_000, 0, 5),
    ch(433_375_000, 0, 5),
    ch(433_575_000, 0, 5),
];

static EU433_SUB_BANDS: [SubBand; 1] = [sub_band(433_175_000, 434_665_000, 0.01, 12.15)];

pub(crate) static EU433: RegionParams = RegionParams {
    region: Region::Eu433,
    min_frequency: 433_175_000,
    max_frequency: 434_665_000,
    data_rates: &EU433_DATA_RATES,
    max_rx1_dr_offset: 5,
    channel_layout: ChannelLayout::Dynamic { max_channels: 16 },
    default_channels: &EU433_DEFAULT_CHANNELS,
    rx1_channel_rule: Rx1ChannelRule::SameAsUplink,
    rx2: Rx2Params {
        frequency: 434_665_000,
        dr: 0,
    },
    tx_power_offsets_db: &TX_POWER_6,
    default_max_eirp_dbm: 12.15,
    sub_bands: &EU433_SUB_BANDS,
    uplink_dwell_time: DwellTimeRule::NotApplicable,
    downlink_dwell_time: DwellTimeRule::NotApplicable,
    tx_param_setup_req: false,
    cf_list_type: CfListType::Frequencies,
    beacon: BeaconParams {
        frequencies: &[434_665_000],
        dr: 3,
    },
    ping_slot: PingSlotParams {
        frequencies: &[434_665_000],
        dr: 3,
    },
};

// ---------------------------------------------------------------- CN779

static CN779_DATA_RATES: [DataRateEntry; 8] = eu_like_dr0_7!();

static CN779_DEFAULT_CHANNELS: [Channel; 3] = [
    ch(779_500_000, 0, 5),
    ch(779_700_000, 0, 5),
    ch(779_900_000, 0, 5),
];

static CN779_SUB_BANDS: [SubBand; 1] = [sub_band(779_000_000, 787_000_000, 0.01, 12.15)];

pub(crate) static CN779: RegionParams = RegionParams {
    region: Region::Cn779,
    min_frequency: 779_000_000,
    max_frequency: 787_000_000,
    data_rates: &CN779_DATA_RATES,
    max_rx1_dr_offset: 5,
    channel_layout: ChannelLayout::Dynamic { max_channels: 16 },
    default_channels: &CN779_DEFAULT_CHANNELS,
    rx1_channel_rule: Rx1ChannelRule::SameAsUplink,
    rx2: Rx2Params {
        frequency: 786_000_000,
        dr: 0,
    },
    tx_power_offsets_db: &TX_POWER_6,
    default_max_eirp_dbm: 12.15,
    sub_bands: &CN779_SUB_BANDS,
    uplink_dwell_time: DwellTimeRule::NotApplicable,
    downlink_dwell_time: DwellTimeRule::NotApplicable,
    tx_param_setup_req: false,
    cf_list_type: CfListType::Frequencies,
    beacon: BeaconParams {
        frequencies: &[785_000_000],
        dr: 3,
    },
    ping_slot: PingSlotParams {
        frequencies: &[785_000_000],
        dr: 3,
    },
};
