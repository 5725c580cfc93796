//! Table tests for the four RP002-1.0.4 CN470 channel plans (§2.11, CN470-510):
//! 20 MHz antenna type A/B and 26 MHz antenna type A/B.
//!
//! Expected values were read from RP002-1.0.4 as laid out by LoRaMac-node
//! (RegionCN470A20/B20/A26/B26), LoRa Basics Modem (region_cn_470_defs.h), The Things Stack
//! (pkg/band cn_470_510_{20,26}_{a,b}) and ChirpStack (lrwn region cn470). Where they disagree
//! the test says which was followed. The older 96-channel CN470 layout (`Region::Cn470`,
//! `CN_470_510`) is tested in `regions.rs`, `chmask.rs` and `plans.rs` and must not change.

use band::{
    BandError, CfListType, ChMaskBlock, ChannelMask, DataRate, DwellTimeRule, FrequencyPlan,
    PayloadSize, Region, Rx1ChannelRule, Rx2Params,
};

const RP2: [Region; 4] = [
    Region::Cn470A20,
    Region::Cn470B20,
    Region::Cn470A26,
    Region::Cn470B26,
];

fn lora(sf: u8, khz: u32) -> DataRate {
    DataRate::Lora {
        sf,
        bw_hz: khz * 1000,
    }
}

fn ps(m: u8, n: u8) -> Option<PayloadSize> {
    Some(PayloadSize { m, n })
}

fn channels(mask: ChannelMask) -> Vec<usize> {
    mask.iter().collect()
}

/// `count` frequencies from `first_khz` in 200 kHz steps, in Hz.
fn grid(first_khz: u32, count: u32) -> Vec<u32> {
    (0..count).map(|i| (first_khz + 200 * i) * 1000).collect()
}

// ------------------------------------------------------------------ names

#[test]
fn names_serde_and_parsing() {
    let cases = [
        (Region::Cn470A20, "CN470_20A", "CN_470_510_20_A"),
        (Region::Cn470B20, "CN470_20B", "CN_470_510_20_B"),
        (Region::Cn470A26, "CN470_26A", "CN_470_510_26_A"),
        (Region::Cn470B26, "CN470_26B", "CN_470_510_26_B"),
    ];
    for (region, name, tts_band_id) in cases {
        assert_eq!(region.name(), name);
        assert_eq!(
            serde_json::to_string(&region).unwrap(),
            format!("\"{name}\"")
        );
        let alias: Region = serde_json::from_str(&format!("\"{tts_band_id}\"")).unwrap();
        assert_eq!(alias, region);
        assert_eq!(tts_band_id.parse::<Region>().unwrap(), region);
        assert_eq!(
            name.to_lowercase().replace('_', "-").parse::<Region>(),
            Ok(region)
        );
        assert!(region.is_cn470_rp2());
        assert!(Region::ALL.contains(&region));
        assert_eq!(region.params().region, region);
    }
    // The older layout keeps its name and is not an RP002 plan.
    assert_eq!(Region::Cn470.name(), "CN470");
    assert!(!Region::Cn470.is_cn470_rp2());
    assert_eq!("CN470".parse::<Region>().unwrap(), Region::Cn470);
}

// ------------------------------------------------------------------ data rates

#[test]
fn data_rate_table() {
    // RP002-1.0.4 CN470: DR0 SF12 is not used (no payload size), DR1–DR5 SF11–SF7/125 kHz,
    // DR6 SF7/500 kHz, DR7 FSK 50 kbit/s, DR8+ RFU.
    let expect = [
        (1, lora(11, 125), 440),
        (2, lora(10, 125), 980),
        (3, lora(9, 125), 1760),
        (4, lora(8, 125), 3125),
        (5, lora(7, 125), 5470),
        (6, lora(7, 500), 21900),
        (7, DataRate::Fsk { bitrate: 50_000 }, 50_000),
    ];
    for region in RP2 {
        let p = region.params();
        assert_eq!(p.data_rate(0), None, "{region} DR0");
        assert_eq!(p.dr_index(&lora(12, 125)), None, "{region}");
        for (dr, rate, bps) in expect {
            let e = p.data_rate_entry(dr).unwrap();
            assert_eq!(e.data_rate, rate, "{region} DR{dr}");
            assert_eq!(e.bit_rate, bps, "{region} DR{dr}");
            assert!(e.uplink && e.downlink, "{region} DR{dr}");
            assert_eq!(p.dr_index(&rate), Some(dr));
        }
        for dr in 8..16 {
            assert_eq!(p.data_rate(dr), None, "{region} DR{dr}");
        }
    }
}

#[test]
fn payload_sizes() {
    // M / N per RP002-1.0.2+ (LoRaMac-node, LoRa Basics Modem and ChirpStack agree on DR3 =
    // 192/184; The Things Stack still has RP002-1.0.1's 172).
    let expect = [
        (0, None, None),
        (1, ps(31, 23), ps(31, 23)),
        (2, ps(94, 86), ps(94, 86)),
        (3, ps(192, 184), ps(192, 184)),
        (4, ps(250, 242), ps(230, 222)),
        (5, ps(250, 242), ps(230, 222)),
        (6, ps(250, 242), ps(230, 222)),
        (7, ps(250, 242), ps(230, 222)),
        (8, None, None),
    ];
    for region in RP2 {
        let p = region.params();
        for (dr, plain, repeater) in expect {
            assert_eq!(
                p.max_payload_size(dr, false, false),
                plain,
                "{region} DR{dr}"
            );
            // No dwell time in CN470: the flag changes nothing.
            assert_eq!(
                p.max_payload_size(dr, true, false),
                plain,
                "{region} DR{dr}"
            );
            assert_eq!(
                p.max_payload_size(dr, false, true),
                repeater,
                "{region} DR{dr}"
            );
        }
    }
}

#[test]
fn rx1_data_rate() {
    // RX1 DR = uplink DR − RX1DROffset, never below DR1 (rows DR1..DR7, offsets 0..5).
    let table: [(u8, [u8; 6]); 7] = [
        (1, [1, 1, 1, 1, 1, 1]),
        (2, [2, 1, 1, 1, 1, 1]),
        (3, [3, 2, 1, 1, 1, 1]),
        (4, [4, 3, 2, 1, 1, 1]),
        (5, [5, 4, 3, 2, 1, 1]),
        (6, [6, 5, 4, 3, 2, 1]),
        (7, [7, 6, 5, 4, 3, 2]),
    ];
    for region in RP2 {
        let p = region.params();
        assert_eq!(p.max_rx1_dr_offset, 5);
        for (up, row) in table {
            for (off, want) in row.into_iter().enumerate() {
                assert_eq!(
                    p.rx1_data_rate(up, off as u8, false).unwrap(),
                    want,
                    "{region} DR{up} offset {off}"
                );
            }
        }
        assert!(matches!(
            p.rx1_data_rate(3, 6, false),
            Err(BandError::InvalidRx1DrOffset { max: 5, .. })
        ));
        assert!(matches!(
            p.rx1_data_rate(0, 0, false),
            Err(BandError::UnknownDataRate { dr: 0, .. })
        ));
    }
}

#[test]
fn shared_parameters() {
    for region in RP2 {
        let p = region.params();
        assert_eq!(
            (p.min_frequency, p.max_frequency),
            (470_000_000, 510_000_000)
        );
        assert_eq!(p.default_max_eirp_dbm, 19.15);
        assert_eq!(p.tx_power_offsets_db, &[0, -2, -4, -6, -8, -10, -12, -14]);
        assert_eq!(p.tx_power_offset_db(8), None);
        assert_eq!(p.uplink_dwell_time, DwellTimeRule::NotApplicable);
        assert_eq!(p.downlink_dwell_time, DwellTimeRule::NotApplicable);
        assert!(!p.tx_param_setup_req);
        assert_eq!(p.cf_list_type, CfListType::ChannelMask);
        assert_eq!(p.rx1_channel_rule, Rx1ChannelRule::UplinkChannelModulo);
        assert!(p.default_channels.is_empty());
        let band = p.duty_cycle_for(480_000_000).unwrap();
        assert_eq!(band.duty_cycle, 1.0);
        assert_eq!(p.beacon.dr, 2);
        assert_eq!(p.ping_slot.dr, 2);
        // Every uplink channel is usable at DR1..DR5.
        for ch in p.uplink_channels() {
            assert_eq!((ch.min_dr, ch.max_dr), (1, 5), "{region} {}", ch.frequency);
        }
    }
}

// ------------------------------------------------------------------ channels, RX1, RX2

#[test]
fn rx2_defaults() {
    // RX2 defaults (ABP; OTAA devices use the RX2 of their join channel, see below), DR1.
    let cases = [
        (Region::Cn470A20, 486_900_000),
        (Region::Cn470B20, 498_300_000),
        (Region::Cn470A26, 492_500_000),
        (Region::Cn470B26, 502_500_000),
    ];
    for (region, frequency) in cases {
        assert_eq!(
            region.params().rx2_default(),
            Rx2Params { frequency, dr: 1 },
            "{region}"
        );
    }
}

#[test]
fn a20_channels_and_rx1() {
    let p = Region::Cn470A20.params();
    assert_eq!(p.max_uplink_channels(), 64);
    assert_eq!(p.max_downlink_channels(), 64);
    let up: Vec<u32> = p.uplink_channels().iter().map(|c| c.frequency).collect();
    let mut want = grid(470_300, 32); // group 1: 470.3–476.5 MHz
    want.extend(grid(503_500, 32)); // group 2: 503.5–509.7 MHz
    assert_eq!(up, want);
    let down: Vec<u32> = (0..64)
        .map(|i| p.downlink_channel(i).unwrap().frequency)
        .collect();
    let mut want = grid(483_900, 32); // 483.9–490.1 MHz
    want.extend(grid(490_300, 32)); // 490.3–496.5 MHz
    assert_eq!(down, want);
    assert_eq!(p.downlink_channel(64), None);
    // RX1 on the downlink channel with the uplink's index.
    for (ul, dl) in [
        (470_300_000, 483_900_000), // ch 0
        (470_900_000, 484_500_000), // ch 3 (join channel 0)
        (476_500_000, 490_100_000), // ch 31
        (503_500_000, 490_300_000), // ch 32
        (504_100_000, 490_900_000), // ch 35 (join channel 4)
        (509_700_000, 496_500_000), // ch 63
    ] {
        assert_eq!(p.rx1_frequency(ul).unwrap(), dl, "{ul}");
    }
    assert_eq!(p.uplink_channel_index(503_500_000), Some(32));
    // Between the groups and off-grid: no channel.
    for f in [
        476_700_000,
        490_000_000,
        503_300_000,
        509_900_000,
        470_400_000,
    ] {
        assert_eq!(p.uplink_channel_index(f), None, "{f}");
        assert!(p.rx1_frequency(f).is_err(), "{f}");
    }
}

#[test]
fn b20_channels_and_rx1() {
    let p = Region::Cn470B20.params();
    assert_eq!(p.max_uplink_channels(), 64);
    assert_eq!(p.max_downlink_channels(), 64);
    let up: Vec<u32> = p.uplink_channels().iter().map(|c| c.frequency).collect();
    let mut want = grid(476_900, 32); // group 1: 476.9–483.1 MHz
    want.extend(grid(496_900, 32)); // group 2: 496.9–503.1 MHz
    assert_eq!(up, want);
    // Downlink channels are the uplink channels; RX1 uses the uplink frequency.
    for i in 0..64 {
        assert_eq!(p.downlink_channel(i).unwrap().frequency, want[i as usize]);
        assert_eq!(p.rx1_frequency(want[i as usize]).unwrap(), want[i as usize]);
    }
    assert_eq!(p.uplink_channel(31).unwrap().frequency, 483_100_000);
    assert_eq!(p.uplink_channel(32).unwrap().frequency, 496_900_000);
    assert_eq!(p.uplink_channel(64), None);
    for f in [483_300_000, 490_000_000, 496_700_000, 503_300_000] {
        assert!(p.rx1_frequency(f).is_err(), "{f}");
    }
}

#[test]
fn a26_channels_and_rx1() {
    let p = Region::Cn470A26.params();
    assert_eq!(p.max_uplink_channels(), 48);
    assert_eq!(p.max_downlink_channels(), 24);
    let up: Vec<u32> = p.uplink_channels().iter().map(|c| c.frequency).collect();
    assert_eq!(up, grid(470_300, 48)); // 470.3–479.7 MHz
    let down: Vec<u32> = (0..24)
        .map(|i| p.downlink_channel(i).unwrap().frequency)
        .collect();
    assert_eq!(down, grid(490_100, 24)); // 490.1–494.7 MHz
    // RX1 = downlink channel (uplink channel mod 24).
    for (ul, dl) in [
        (470_300_000, 490_100_000), // ch 0
        (474_900_000, 494_700_000), // ch 23
        (475_100_000, 490_100_000), // ch 24
        (477_300_000, 492_300_000), // ch 35
        (479_700_000, 494_700_000), // ch 47
    ] {
        assert_eq!(p.rx1_frequency(ul).unwrap(), dl, "{ul}");
    }
    for f in [470_100_000, 479_900_000, 490_100_000] {
        assert!(p.rx1_frequency(f).is_err(), "{f}");
    }
}

#[test]
fn b26_channels_and_rx1() {
    let p = Region::Cn470B26.params();
    assert_eq!(p.max_uplink_channels(), 48);
    assert_eq!(p.max_downlink_channels(), 24);
    let up: Vec<u32> = p.uplink_channels().iter().map(|c| c.frequency).collect();
    assert_eq!(up, grid(480_300, 48)); // 480.3–489.7 MHz
    let down: Vec<u32> = (0..24)
        .map(|i| p.downlink_channel(i).unwrap().frequency)
        .collect();
    assert_eq!(down, grid(500_100, 24)); // 500.1–504.7 MHz
    for (ul, dl) in [
        (480_300_000, 500_100_000), // ch 0
        (484_900_000, 504_700_000), // ch 23
        (485_100_000, 500_100_000), // ch 24
        (489_700_000, 504_700_000), // ch 47
    ] {
        assert_eq!(p.rx1_frequency(ul).unwrap(), dl, "{ul}");
    }
    for f in [480_100_000, 489_900_000, 470_300_000] {
        assert!(p.rx1_frequency(f).is_err(), "{f}");
    }
}

// ------------------------------------------------------------------ common join channels

#[test]
fn common_join_channels() {
    // (index, plan, join-request uplink, join-accept RX1, RX2 after joining), all in kHz.
    // LoRa Basics Modem's table; LoRaMac-node agrees except a typo (494.0 for 494.9 MHz).
    let table: [(u8, Region, u32, u32, u32); 20] = [
        (0, Region::Cn470A20, 470_900, 484_500, 485_300),
        (1, Region::Cn470A20, 472_500, 486_100, 486_900),
        (2, Region::Cn470A20, 474_100, 487_700, 488_500),
        (3, Region::Cn470A20, 475_700, 489_300, 490_100),
        (4, Region::Cn470A20, 504_100, 490_900, 491_700),
        (5, Region::Cn470A20, 505_700, 492_500, 493_300),
        (6, Region::Cn470A20, 507_300, 494_100, 494_900),
        (7, Region::Cn470A20, 508_900, 495_700, 496_500),
        (8, Region::Cn470B20, 479_900, 479_900, 478_300),
        (9, Region::Cn470B20, 499_900, 499_900, 498_300),
        (10, Region::Cn470A26, 470_300, 492_500, 492_500),
        (11, Region::Cn470A26, 472_300, 492_500, 492_500),
        (12, Region::Cn470A26, 474_300, 492_500, 492_500),
        (13, Region::Cn470A26, 476_300, 492_500, 492_500),
        (14, Region::Cn470A26, 478_300, 492_500, 492_500),
        (15, Region::Cn470B26, 480_300, 502_500, 502_500),
        (16, Region::Cn470B26, 482_300, 502_500, 502_500),
        (17, Region::Cn470B26, 484_300, 502_500, 502_500),
        (18, Region::Cn470B26, 486_300, 502_500, 502_500),
        (19, Region::Cn470B26, 488_300, 502_500, 502_500),
    ];
    for (index, region, up, rx1, rx2) in table {
        let (up, rx1, rx2) = (up * 1000, rx1 * 1000, rx2 * 1000);
        let p = region.params();
        let j = p.common_join_channel(up).unwrap();
        assert_eq!(j.index, index);
        assert_eq!(j.join_accept_rx1_frequency, rx1, "join channel {index}");
        assert_eq!(
            j.rx2,
            Rx2Params {
                frequency: rx2,
                dr: 1
            },
            "join channel {index}"
        );
        assert_eq!(p.rx2_after_join(up), Some(j.rx2));
        assert_eq!(Region::cn470_plan_for_join_frequency(up), Some(region));
        // The join channel is an uplink channel of its plan.
        assert!(p.uplink_channel_index(up).is_some(), "join channel {index}");
        // 20 MHz: the join-accept follows the normal RX1 rule; 26 MHz: it comes on the RX2
        // frequency instead of the channel-mod-24 downlink.
        if matches!(region, Region::Cn470A20 | Region::Cn470B20) {
            assert_eq!(p.rx1_frequency(up).unwrap(), rx1, "join channel {index}");
        } else {
            assert_ne!(p.rx1_frequency(up).unwrap(), rx1, "join channel {index}");
        }
    }
    // Counts per plan and the join channels as `join_channels()` reports them.
    for (region, n) in [
        (Region::Cn470A20, 8),
        (Region::Cn470B20, 2),
        (Region::Cn470A26, 5),
        (Region::Cn470B26, 5),
    ] {
        let p = region.params();
        assert_eq!(p.common_join_channels().len(), n, "{region}");
        let join: Vec<u32> = p.join_channels().iter().map(|c| c.frequency).collect();
        let common: Vec<u32> = p
            .common_join_channels()
            .iter()
            .map(|j| j.frequency)
            .collect();
        assert_eq!(join, common, "{region}");
        for c in p.join_channels() {
            assert_eq!((c.min_dr, c.max_dr), (1, 5));
        }
    }
    // Not a join channel anywhere / other regions.
    assert_eq!(Region::cn470_plan_for_join_frequency(471_100_000), None);
    let a20 = Region::Cn470A20.params();
    assert_eq!(a20.common_join_channel(470_300_000), None);
    assert_eq!(a20.rx2_after_join(470_300_000), None);
    for region in [Region::Cn470, Region::Eu868, Region::Us915] {
        let p = region.params();
        assert!(p.common_join_channels().is_empty());
        assert_eq!(p.rx2_after_join(470_300_000), Some(p.rx2));
    }
    // The older layout still lets devices join on all 96 channels.
    assert_eq!(Region::Cn470.params().join_channels().len(), 96);
}

// ------------------------------------------------------------------ Class B

#[test]
fn beacon_and_ping_slots() {
    const T: u64 = 128; // beacon period in seconds
    let a20 = Region::Cn470A20.params();
    // Join channel k: beacon hops over downlink channels 8k..8k+7 by beacon period.
    let j0 = a20.common_join_channel(470_900_000).unwrap();
    assert_eq!(j0.beacon.frequencies, grid(483_900, 8).as_slice());
    assert_eq!(j0.beacon.frequency_at(0), 483_900_000);
    assert_eq!(j0.beacon.frequency_at(7 * T), 485_300_000);
    assert_eq!(j0.beacon.frequency_at(8 * T), 483_900_000);
    let j5 = a20.common_join_channel(505_700_000).unwrap();
    assert_eq!(j5.beacon.frequency_at(0), 491_900_000); // downlink ch 40
    assert_eq!(j5.beacon.frequency_at(3 * T + 5), 492_500_000); // ch 43
    // Ping slots: (DevAddr + beacon period) mod 8 within the same 8 channels.
    assert_eq!(j5.ping_slot.frequency_for(3, 0), 492_500_000);
    assert_eq!(j5.ping_slot.frequency_for(3, 6 * T), 492_100_000); // (3 + 6) mod 8 = 1: ch 41
    // Region-level default = join channel 1 (whose RX2 is the ABP default 486.9 MHz).
    assert_eq!(a20.beacon.frequencies, grid(485_500, 8).as_slice());
    assert_eq!(a20.beacon.frequencies[7], a20.rx2.frequency);

    let b20 = Region::Cn470B20.params();
    let g1 = b20.common_join_channel(479_900_000).unwrap();
    let g2 = b20.common_join_channel(499_900_000).unwrap();
    assert_eq!(g1.beacon.frequencies, &[481_500_000]); // channel 23
    assert_eq!(g2.beacon.frequencies, &[501_500_000]); // channel 55
    assert_eq!(g1.ping_slot.frequencies, grid(476_900, 32).as_slice());
    assert_eq!(g2.ping_slot.frequencies, grid(496_900, 32).as_slice());
    assert_eq!(g1.ping_slot.frequency_for(0, 0), 476_900_000);
    assert_eq!(g1.ping_slot.frequency_for(31, 0), 483_100_000);
    assert_eq!(g1.ping_slot.frequency_for(30, 3 * T), 477_100_000); // 33 mod 32 = 1
    assert_eq!(b20.beacon.frequencies, &[501_500_000]);
    assert_eq!(b20.ping_slot.frequencies, grid(496_900, 32).as_slice());

    for (region, f) in [
        (Region::Cn470A26, 494_900_000),
        (Region::Cn470B26, 504_900_000),
    ] {
        let p = region.params();
        assert_eq!(p.beacon.frequencies, &[f], "{region}");
        assert_eq!(p.ping_slot.frequencies, &[f], "{region}");
        for j in p.common_join_channels() {
            assert_eq!(j.beacon.frequencies, &[f]);
            assert_eq!(j.ping_slot.frequency_for(0x1234, 99 * T), f);
            assert_eq!((j.beacon.dr, j.ping_slot.dr), (2, 2));
        }
    }
}

// ------------------------------------------------------------------ LinkADRReq ChMask

#[test]
fn ch_mask_20mhz_plans() {
    for region in [Region::Cn470A20, Region::Cn470B20] {
        let p = region.params();
        let all = p.default_channel_mask();
        assert_eq!(channels(all), (0..64).collect::<Vec<_>>());
        // ChMaskCntl 0..3: ChMask applies to channels 16n..16n+15.
        for cntl in 0..4u8 {
            let got = p
                .apply_ch_mask(ChannelMask::empty(), all, &[ChMaskBlock::new(0x8001, cntl)])
                .unwrap();
            let base = 16 * cntl as usize;
            assert_eq!(channels(got), vec![base, base + 15], "{region} cntl {cntl}");
        }
        // 7 = all off, then re-enable channels 32..39 (one 8-channel block of group 2).
        let got = p
            .apply_ch_mask(
                all,
                all,
                &[ChMaskBlock::new(0, 7), ChMaskBlock::new(0x00FF, 2)],
            )
            .unwrap();
        assert_eq!(channels(got), (32..40).collect::<Vec<_>>());
        // 6 = all on (ChMask ignored).
        let got = p
            .apply_ch_mask(ChannelMask::empty(), all, &[ChMaskBlock::new(0x0001, 6)])
            .unwrap();
        assert_eq!(got, all);
        // 4 and 5 are RFU.
        for cntl in [4, 5] {
            assert!(matches!(
                p.apply_ch_mask(all, all, &[ChMaskBlock::new(0xFFFF, cntl)]),
                Err(BandError::InvalidChMaskCntl { cntl: c, .. }) if c == cntl
            ));
        }
        // All off and nothing re-enabled: rejected.
        assert!(matches!(
            p.apply_ch_mask(all, all, &[ChMaskBlock::new(0, 7)]),
            Err(BandError::NoChannelEnabled { .. })
        ));
    }
}

#[test]
fn ch_mask_26mhz_plans() {
    for region in [Region::Cn470A26, Region::Cn470B26] {
        let p = region.params();
        let all = p.default_channel_mask();
        assert_eq!(channels(all), (0..48).collect::<Vec<_>>());
        for cntl in 0..3u8 {
            let got = p
                .apply_ch_mask(ChannelMask::empty(), all, &[ChMaskBlock::new(0x0003, cntl)])
                .unwrap();
            let base = 16 * cntl as usize;
            assert_eq!(channels(got), vec![base, base + 1], "{region} cntl {cntl}");
        }
        // 4 = all off, then channels 40..47; 3 = all on.
        let got = p
            .apply_ch_mask(
                all,
                all,
                &[ChMaskBlock::new(0, 4), ChMaskBlock::new(0xFF00, 2)],
            )
            .unwrap();
        assert_eq!(channels(got), (40..48).collect::<Vec<_>>());
        let got = p
            .apply_ch_mask(ChannelMask::empty(), all, &[ChMaskBlock::new(0, 3)])
            .unwrap();
        assert_eq!(got, all);
        // 5, 6 and 7 are RFU (6 means "all on" only in the 20 MHz and older plans).
        for cntl in [5, 6, 7] {
            assert!(matches!(
                p.apply_ch_mask(all, all, &[ChMaskBlock::new(0xFFFF, cntl)]),
                Err(BandError::InvalidChMaskCntl { cntl: c, .. }) if c == cntl
            ));
        }
        assert!(matches!(
            p.apply_ch_mask(all, all, &[ChMaskBlock::new(0, 4)]),
            Err(BandError::NoChannelEnabled { .. })
        ));
    }
}

#[test]
fn ch_mask_older_cn470_unchanged() {
    // The older layout keeps 0..5 = blocks of 16, 6 = all on, 7 = RFU.
    let p = Region::Cn470.params();
    let all = p.default_channel_mask();
    assert_eq!(all.count(), 96);
    assert!(p.apply_ch_mask(all, all, &[ChMaskBlock::new(1, 5)]).is_ok());
    assert!(matches!(
        p.apply_ch_mask(all, all, &[ChMaskBlock::new(0, 7)]),
        Err(BandError::InvalidChMaskCntl { cntl: 7, .. })
    ));
}

// ------------------------------------------------------------------ CFList type 1

#[test]
fn cf_list_channel_masks() {
    // 20 MHz: ChMask0..ChMask3 (64 channels); 26 MHz: ChMask0..ChMask2 (48 channels); the
    // remaining ChMask fields and RFU bytes are zero; byte 15 is CFListType 1.
    let a20 = Region::Cn470A20.params();
    let mut want = [0u8; 16];
    want[..8].fill(0xFF);
    want[15] = 1;
    assert_eq!(a20.cf_list_ch_masks(a20.default_channel_mask()), Some(want));

    let b26 = Region::Cn470B26.params();
    let mut want = [0u8; 16];
    want[..6].fill(0xFF);
    want[15] = 1;
    assert_eq!(b26.cf_list_ch_masks(b26.default_channel_mask()), Some(want));

    // Channels 8..15 → ChMask0 = 0xFF00, little-endian.
    let plan = FrequencyPlan::by_id("CN_470_510_20_A").unwrap();
    let cf = a20.cf_list_ch_masks(plan.channel_mask()).unwrap();
    assert_eq!(cf[..4], [0x00, 0xFF, 0x00, 0x00]);
    assert_eq!(cf[15], 1);

    // The older CN470 uses all six ChMask fields; US915 five; dynamic regions have none.
    let cn = Region::Cn470.params();
    let cf = cn.cf_list_ch_masks(cn.default_channel_mask()).unwrap();
    assert_eq!(cf[..12], [0xFF; 12]);
    assert_eq!(cf[12..], [0, 0, 0, 1]);
    let us = Region::Us915.params();
    let fsb2 = FrequencyPlan::by_id("US_902_928_FSB_2").unwrap();
    let cf = us.cf_list_ch_masks(fsb2.channel_mask()).unwrap();
    assert_eq!(
        cf,
        [0x00, 0xFF, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 1]
    );
    assert_eq!(
        Region::Eu868
            .params()
            .cf_list_ch_masks(ChannelMask::first_n(3)),
        None
    );
}

// ------------------------------------------------------------------ frequency plans

#[test]
fn frequency_plans() {
    // (ID, region, first channel index, first frequency kHz, join channel kHz, RX2 kHz)
    let cases = [
        (
            "CN_470_510_20_A",
            Region::Cn470A20,
            8,
            471_900,
            472_500,
            486_900,
        ),
        (
            "CN_470_510_20_B",
            Region::Cn470B20,
            40,
            498_500,
            499_900,
            498_300,
        ),
        (
            "CN_470_510_26_A",
            Region::Cn470A26,
            0,
            470_300,
            470_300,
            492_500,
        ),
        (
            "CN_470_510_26_B",
            Region::Cn470B26,
            0,
            480_300,
            480_300,
            502_500,
        ),
    ];
    for (id, region, first_index, first_khz, join_khz, rx2_khz) in cases {
        let plan = FrequencyPlan::lookup(id).unwrap();
        assert_eq!(plan.region, region, "{id}");
        let freqs: Vec<u32> = plan.uplink_channels.iter().map(|c| c.frequency).collect();
        assert_eq!(freqs, grid(first_khz, 8), "{id}");
        for c in plan.uplink_channels {
            assert_eq!((c.min_dr, c.max_dr), (1, 5), "{id}");
        }
        assert!(freqs.contains(&(join_khz * 1000)), "{id}: join channel");
        assert_eq!(
            plan.rx2,
            Rx2Params {
                frequency: rx2_khz * 1000,
                dr: 1
            },
            "{id}"
        );
        // The plan's RX2 is also what a device that joined on its join channel uses.
        assert_eq!(
            plan.params().rx2_after_join(join_khz * 1000),
            Some(plan.rx2)
        );
        assert_eq!(
            channels(plan.channel_mask()),
            (first_index..first_index + 8).collect::<Vec<_>>(),
            "{id}"
        );
        assert!(plan.cf_list_frequencies().is_empty());
        assert_eq!(plan.fsb, None);
        assert_eq!(plan.max_eirp_dbm, 19.15);
        assert!(!plan.uplink_dwell_time && !plan.downlink_dwell_time);
        let layout = plan.radio_layout().unwrap();
        assert_eq!(layout.multi_sf.len(), 8);
    }
    // The older plan is still there and unchanged.
    let old = FrequencyPlan::by_id("CN_470_510").unwrap();
    assert_eq!(old.region, Region::Cn470);
    assert_eq!(
        old.rx2,
        Rx2Params {
            frequency: 505_300_000,
            dr: 0
        }
    );
    assert_eq!(old.uplink_channels[0].frequency, 470_300_000);
}
