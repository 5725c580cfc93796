//! Table tests for every region against RP002-1.0.4 (spot checks of the key rows).
//!
//! Expected values were read from RP002-1.0.4 and cross-checked against the tables of
//! The Things Stack (pkg/band, RP002 v1.0.4), ChirpStack (lrwn/src/region) and
//! LoRaMac-node (src/mac/region). Where those disagree the test says which was followed.

use std::time::Duration;

use band::{
    ADR_ACK_DELAY, ADR_ACK_LIMIT, BandError, CfListType, Channel, ChannelLayout, DataRate,
    Direction, DwellTimeRule, JOIN_ACCEPT_DELAY1, JOIN_ACCEPT_DELAY2, LrFhssCodingRate,
    PayloadSize, RECEIVE_DELAY1, RECEIVE_DELAY2, Region, Rx2Params,
};

const MHZ: u32 = 1_000_000;

fn lora(sf: u8, khz: u32) -> DataRate {
    DataRate::Lora {
        sf,
        bw_hz: khz * 1000,
    }
}

fn ps(m: u8, n: u8) -> Option<PayloadSize> {
    Some(PayloadSize { m, n })
}

// ------------------------------------------------------------------ shared

#[test]
fn timing_defaults() {
    assert_eq!(RECEIVE_DELAY1, Duration::from_secs(1));
    assert_eq!(RECEIVE_DELAY2, Duration::from_secs(2));
    assert_eq!(JOIN_ACCEPT_DELAY1, Duration::from_secs(5));
    assert_eq!(JOIN_ACCEPT_DELAY2, Duration::from_secs(6));
    assert_eq!(ADR_ACK_LIMIT, 64);
    assert_eq!(ADR_ACK_DELAY, 32);
}

#[test]
fn region_names_and_serde() {
    assert_eq!(serde_json::to_string(&Region::Eu868).unwrap(), "\"EU868\"");
    assert_eq!(
        serde_json::to_string(&Region::As923Group2).unwrap(),
        "\"AS923_2\""
    );
    let r: Region = serde_json::from_str("\"US915\"").unwrap();
    assert_eq!(r, Region::Us915);
    let r: Region = serde_json::from_str("\"AS923-1\"").unwrap();
    assert_eq!(r, Region::As923);
    for region in Region::ALL {
        let json = serde_json::to_string(&region).unwrap();
        assert_eq!(json, format!("\"{region}\""));
        let back: Region = serde_json::from_str(&json).unwrap();
        assert_eq!(back, region);
        assert_eq!(region.name().parse::<Region>().unwrap(), region);
        assert_eq!(region.params().region, region);
    }
    assert_eq!("eu868".parse::<Region>().unwrap(), Region::Eu868);
    assert_eq!("AS923-4".parse::<Region>().unwrap(), Region::As923Group4);
    assert_eq!("AS923_1".parse::<Region>().unwrap(), Region::As923);
    let err = "XX123".parse::<Region>().unwrap_err();
    assert!(matches!(err, BandError::UnknownRegion { .. }));
    assert!(err.to_string().contains("EU868"));
}

/// Invariants every region table must satisfy.
#[test]
fn table_invariants() {
    for region in Region::ALL {
        let p = region.params();
        // DR indices strictly increasing, each usable in some direction.
        let mut last = None;
        for e in p.data_rates {
            assert!(last < Some(e.index), "{region}: DR order");
            last = Some(e.index);
            assert!(e.uplink || e.downlink, "{region} DR{}", e.index);
            assert!(e.max_mac_payload <= 250 && e.max_mac_payload_dwell <= e.max_mac_payload);
            assert!(p.dr_index(&e.data_rate).is_some());
        }
        // RX2 data rate exists and is a downlink rate; RX2 frequency in band.
        let rx2 = p.rx2_default();
        assert!(
            p.data_rate_entry(rx2.dr).unwrap().downlink,
            "{region} RX2 DR"
        );
        assert!((p.min_frequency..=p.max_frequency).contains(&rx2.frequency));
        // Beacon and ping slot use defined downlink rates and in-band frequencies.
        for (dr, freqs) in [
            (p.beacon.dr, p.beacon.frequencies),
            (p.ping_slot.dr, p.ping_slot.frequencies),
        ] {
            assert!(
                p.data_rate_entry(dr).unwrap().downlink,
                "{region} beacon DR"
            );
            assert!(!freqs.is_empty());
            for f in freqs {
                assert!(
                    (p.min_frequency..=p.max_frequency).contains(f),
                    "{region} {f}"
                );
            }
        }
        // Default/join channels in band with valid DR ranges.
        for ch in p.uplink_channels().iter().chain(p.join_channels().iter()) {
            assert!((p.min_frequency..=p.max_frequency).contains(&ch.frequency));
            assert!(ch.min_dr <= ch.max_dr);
            assert!(p.data_rate_entry(ch.min_dr).unwrap().uplink);
            assert!(p.data_rate_entry(ch.max_dr).unwrap().uplink);
            // RX1 frequency exists for every uplink channel.
            assert!(p.rx1_frequency(ch.frequency).is_ok());
            // Every default channel has a duty-cycle sub-band.
            assert!(
                p.duty_cycle_for(ch.frequency).is_some(),
                "{region} {}",
                ch.frequency
            );
        }
        // TX power table: index 0 is max EIRP, 2 dB steps.
        for (i, o) in p.tx_power_offsets_db.iter().enumerate() {
            assert_eq!(i32::from(*o), -2 * i as i32);
        }
        // Every uplink DR × offset gives a defined downlink DR.
        for e in p.data_rates.iter().filter(|e| e.uplink) {
            for off in 0..=p.max_rx1_dr_offset {
                for dwell in [false, true] {
                    let dr = p.rx1_data_rate(e.index, off, dwell).unwrap();
                    assert!(
                        p.data_rate_entry(dr).is_some_and(|d| d.downlink),
                        "{region} DR{} off {off} → DR{dr}",
                        e.index
                    );
                }
            }
        }
        // Sub-bands inside the band, duty cycle in (0, 1].
        for b in p.sub_bands {
            assert!(b.min_frequency < b.max_frequency);
            assert!(b.duty_cycle > 0.0 && b.duty_cycle <= 1.0);
        }
    }
}

#[test]
fn rx2_defaults_all_regions() {
    let cases = [
        (Region::Eu868, 869_525_000, 0),
        (Region::Us915, 923_300_000, 8),
        (Region::Au915, 923_300_000, 8),
        (Region::As923, 923_200_000, 2),
        (Region::As923Group2, 921_400_000, 2),
        (Region::As923Group3, 916_600_000, 2),
        (Region::As923Group4, 917_300_000, 2),
        (Region::Kr920, 921_900_000, 0),
        (Region::In865, 866_550_000, 2),
        (Region::Ru864, 869_100_000, 0),
        (Region::Cn470, 505_300_000, 0),
        (Region::Eu433, 434_665_000, 0),
        (Region::Cn779, 786_000_000, 0),
    ];
    for (region, frequency, dr) in cases {
        assert_eq!(
            region.params().rx2_default(),
            Rx2Params { frequency, dr },
            "{region}"
        );
    }
}

#[test]
fn default_channels_all_regions() {
    let cases: [(Region, &[u32]); 13] = [
        (Region::Eu868, &[868_100_000, 868_300_000, 868_500_000]),
        (Region::Us915, &[]),
        (Region::Au915, &[]),
        (Region::As923, &[923_200_000, 923_400_000]),
        (Region::As923Group2, &[921_400_000, 921_600_000]),
        (Region::As923Group3, &[916_600_000, 916_800_000]),
        (Region::As923Group4, &[917_300_000, 917_500_000]),
        (Region::Kr920, &[922_100_000, 922_300_000, 922_500_000]),
        (Region::In865, &[865_062_500, 865_402_500, 865_985_000]),
        (Region::Ru864, &[868_900_000, 869_100_000]),
        (Region::Cn470, &[]),
        (Region::Eu433, &[433_175_000, 433_375_000, 433_575_000]),
        (Region::Cn779, &[779_500_000, 779_700_000, 779_900_000]),
    ];
    for (region, freqs) in cases {
        let p = region.params();
        let got: Vec<u32> = p.default_channels.iter().map(|c| c.frequency).collect();
        assert_eq!(got, freqs, "{region}");
        for c in p.default_channels {
            assert_eq!((c.min_dr, c.max_dr), (0, 5), "{region}");
        }
        if !freqs.is_empty() {
            let join: Vec<u32> = p.join_channels().iter().map(|c| c.frequency).collect();
            assert_eq!(join, freqs, "{region} join channels");
        }
    }
}

#[test]
fn max_eirp_and_tx_power_tables() {
    let cases = [
        (Region::Eu868, 16.0, 8),
        (Region::Us915, 30.0, 15),
        (Region::Au915, 30.0, 15),
        (Region::As923, 16.0, 8),
        (Region::As923Group4, 16.0, 8),
        (Region::Kr920, 14.0, 8),
        (Region::In865, 30.0, 11),
        (Region::Ru864, 16.0, 8),
        (Region::Cn470, 19.15, 8),
        (Region::Eu433, 12.15, 6),
        (Region::Cn779, 12.15, 6),
    ];
    for (region, eirp, n) in cases {
        let p = region.params();
        assert_eq!(p.default_max_eirp_dbm, eirp, "{region}");
        assert_eq!(p.tx_power_offsets_db.len(), n, "{region}");
        assert_eq!(p.tx_power_offset_db(0), Some(0));
        assert_eq!(p.tx_power_offset_db(n as u8), None, "{region}");
    }
    let eu = Region::Eu868.params();
    assert_eq!(eu.tx_power_offset_db(7), Some(-14));
    assert_eq!(eu.tx_power_eirp_dbm(1, 16.0), Some(14.0));
    let us = Region::Us915.params();
    assert_eq!(us.tx_power_offset_db(14), Some(-28));
    assert_eq!(us.tx_power_eirp_dbm(10, 30.0), Some(10.0));
    assert_eq!(Region::In865.params().tx_power_offset_db(10), Some(-20));
    assert_eq!(Region::Eu433.params().tx_power_offset_db(5), Some(-10));
}

#[test]
fn cf_list_types_and_layouts() {
    for region in Region::ALL {
        let p = region.params();
        let fixed = matches!(region, Region::Us915 | Region::Au915 | Region::Cn470)
            || region.is_cn470_rp2();
        assert_eq!(
            p.cf_list_type,
            if fixed {
                CfListType::ChannelMask
            } else {
                CfListType::Frequencies
            },
            "{region}"
        );
        assert_eq!(
            matches!(p.channel_layout, ChannelLayout::Fixed { .. }),
            fixed
        );
        let n = match region {
            Region::Us915 | Region::Au915 => 72,
            Region::Cn470 => 96,
            Region::Cn470A20 | Region::Cn470B20 => 64,
            Region::Cn470A26 | Region::Cn470B26 => 48,
            _ => 16,
        };
        assert_eq!(p.max_uplink_channels(), n, "{region}");
    }
    assert_eq!(CfListType::Frequencies as u8, 0);
    assert_eq!(CfListType::ChannelMask as u8, 1);
}

#[test]
fn dwell_time_rules() {
    use DwellTimeRule::*;
    let p = Region::Us915.params();
    assert_eq!(p.uplink_dwell_time, Always);
    assert_eq!(p.downlink_dwell_time, NotApplicable);
    let p = Region::Au915.params();
    assert_eq!(p.uplink_dwell_time, Configurable { default_on: true });
    assert!(p.tx_param_setup_req);
    for r in [
        Region::As923,
        Region::As923Group2,
        Region::As923Group3,
        Region::As923Group4,
    ] {
        let p = r.params();
        assert_eq!(p.uplink_dwell_time, Configurable { default_on: true });
        // Downlink dwell time is off at boot (LoRaMac-node; TTN's AS_923 plans agree).
        assert_eq!(p.downlink_dwell_time, Configurable { default_on: false });
        assert!(p.tx_param_setup_req);
    }
    for r in [Region::Eu868, Region::Kr920, Region::In865, Region::Cn470] {
        assert_eq!(r.params().uplink_dwell_time, NotApplicable);
        assert!(!r.params().tx_param_setup_req);
        assert!(!r.params().uplink_dwell_time.default_on());
    }
}

// ------------------------------------------------------------------ EU868

#[test]
fn eu868_data_rates() {
    let p = Region::Eu868.params();
    let expect = [
        (0, lora(12, 125), 250),
        (1, lora(11, 125), 440),
        (2, lora(10, 125), 980),
        (3, lora(9, 125), 1760),
        (4, lora(8, 125), 3125),
        (5, lora(7, 125), 5470),
        (6, lora(7, 250), 11000),
        (7, DataRate::Fsk { bitrate: 50_000 }, 50_000),
    ];
    for (dr, rate, bps) in expect {
        let e = p.data_rate_entry(dr).unwrap();
        assert_eq!(e.data_rate, rate, "DR{dr}");
        assert_eq!(e.bit_rate, bps, "DR{dr}");
        assert!(e.uplink && e.downlink);
        assert_eq!(p.dr_index(&rate), Some(dr));
    }
    let lr = [
        (8, LrFhssCodingRate::Cr1_3, 137_000),
        (9, LrFhssCodingRate::Cr2_3, 137_000),
        (10, LrFhssCodingRate::Cr1_3, 336_000),
        (11, LrFhssCodingRate::Cr2_3, 336_000),
    ];
    for (dr, coding_rate, ocw_hz) in lr {
        let e = p.data_rate_entry(dr).unwrap();
        assert_eq!(
            e.data_rate,
            DataRate::LrFhss {
                coding_rate,
                ocw_hz
            }
        );
        assert!(e.uplink && !e.downlink);
    }
    assert_eq!(p.data_rate(12), None);
    assert_eq!(p.data_rate(15), None);
    assert_eq!(p.dr_index(&lora(12, 500)), None);
}

#[test]
fn eu868_payload_sizes() {
    let p = Region::Eu868.params();
    // (DR, M/N not repeater, M/N repeater)
    let rows = [
        (0, ps(59, 51), ps(59, 51)),
        (1, ps(59, 51), ps(59, 51)),
        (2, ps(59, 51), ps(59, 51)),
        (3, ps(123, 115), ps(123, 115)),
        (4, ps(250, 242), ps(230, 222)),
        (5, ps(250, 242), ps(230, 222)),
        (6, ps(250, 242), ps(230, 222)),
        (7, ps(250, 242), ps(230, 222)),
        (8, ps(58, 50), ps(58, 50)),
        (9, ps(123, 115), ps(123, 115)),
        (10, ps(58, 50), ps(58, 50)),
        (11, ps(123, 115), ps(123, 115)),
        (12, None, None),
    ];
    for (dr, plain, rep) in rows {
        assert_eq!(p.max_payload_size(dr, false, false), plain, "DR{dr}");
        assert_eq!(p.max_payload_size(dr, false, true), rep, "DR{dr}");
        // No dwell time in EU868: the flag changes nothing.
        assert_eq!(p.max_payload_size(dr, true, false), plain, "DR{dr}");
    }
}

#[test]
fn eu868_rx1_data_rate() {
    let p = Region::Eu868.params();
    let table: [(u8, [u8; 6]); 8] = [
        (0, [0, 0, 0, 0, 0, 0]),
        (1, [1, 0, 0, 0, 0, 0]),
        (2, [2, 1, 0, 0, 0, 0]),
        (3, [3, 2, 1, 0, 0, 0]),
        (4, [4, 3, 2, 1, 0, 0]),
        (5, [5, 4, 3, 2, 1, 0]),
        (6, [6, 5, 4, 3, 2, 1]),
        (7, [7, 6, 5, 4, 3, 2]),
    ];
    for (up, row) in table {
        for (off, want) in row.into_iter().enumerate() {
            assert_eq!(p.rx1_data_rate(up, off as u8, false).unwrap(), want);
        }
    }
    // LR-FHSS uplinks answer like DR1 (CR1/3) and DR2 (CR2/3).
    assert_eq!(p.rx1_data_rate(8, 0, false).unwrap(), 1);
    assert_eq!(p.rx1_data_rate(9, 0, false).unwrap(), 2);
    assert_eq!(p.rx1_data_rate(10, 1, false).unwrap(), 0);
    assert_eq!(p.rx1_data_rate(11, 1, false).unwrap(), 1);
    assert!(matches!(
        p.rx1_data_rate(5, 6, false),
        Err(BandError::InvalidRx1DrOffset {
            offset: 6,
            max: 5,
            ..
        })
    ));
    assert!(matches!(
        p.rx1_data_rate(12, 0, false),
        Err(BandError::UnknownDataRate { dr: 12, .. })
    ));
}

#[test]
fn eu868_duty_cycle() {
    let p = Region::Eu868.params();
    let duty = |f: u32| p.duty_cycle_for(f).map(|b| b.duty_cycle);
    assert_eq!(duty(863_500_000), Some(0.001));
    assert_eq!(duty(867_100_000), Some(0.01));
    assert_eq!(duty(868_100_000), Some(0.01));
    assert_eq!(duty(868_500_000), Some(0.01));
    assert_eq!(duty(868_800_000), Some(0.001));
    assert_eq!(duty(869_525_000), Some(0.1));
    assert_eq!(duty(869_850_000), Some(0.01));
    assert_eq!(duty(868_650_000), None);
    assert_eq!(duty(869_300_000), None);
    assert_eq!(duty(870_500_000), None);
    let rx2_band = p.duty_cycle_for(869_525_000).unwrap();
    assert_eq!(
        (rx2_band.min_frequency, rx2_band.max_frequency),
        (869_400_000, 869_650_000)
    );
    assert_eq!(rx2_band.max_eirp_dbm, 29.15);
    assert_eq!(p.sub_bands.len(), 6);
}

#[test]
fn eu868_rx1_frequency_and_beacon() {
    let p = Region::Eu868.params();
    assert_eq!(p.rx1_frequency(868_100_000).unwrap(), 868_100_000);
    assert_eq!(p.rx1_frequency(867_500_000).unwrap(), 867_500_000);
    assert!(p.rx1_frequency(902_300_000).is_err());
    assert_eq!(p.beacon().frequencies, &[869_525_000]);
    assert_eq!(p.beacon().dr, 3);
    assert_eq!(p.ping_slot().frequencies, &[869_525_000]);
    assert_eq!(p.ping_slot().dr, 3);
    assert_eq!(
        p.ping_slot().frequency_for(0x0102_0304, 1_000_000),
        869_525_000
    );
}

// ------------------------------------------------------------------ US915

#[test]
fn us915_data_rates() {
    let p = Region::Us915.params();
    let rows = [
        (0, lora(10, 125), true, false),
        (1, lora(9, 125), true, false),
        (2, lora(8, 125), true, false),
        (3, lora(7, 125), true, false),
        (4, lora(8, 500), true, false),
        (8, lora(12, 500), false, true),
        (9, lora(11, 500), false, true),
        (10, lora(10, 500), false, true),
        (11, lora(9, 500), false, true),
        (12, lora(8, 500), false, true),
        (13, lora(7, 500), false, true),
    ];
    for (dr, rate, up, down) in rows {
        let e = p.data_rate_entry(dr).unwrap();
        assert_eq!(e.data_rate, rate, "DR{dr}");
        assert_eq!((e.uplink, e.downlink), (up, down), "DR{dr}");
    }
    assert_eq!(
        p.data_rate(5),
        Some(DataRate::LrFhss {
            coding_rate: LrFhssCodingRate::Cr1_3,
            ocw_hz: 1_523_000
        })
    );
    assert_eq!(
        p.data_rate(6),
        Some(DataRate::LrFhss {
            coding_rate: LrFhssCodingRate::Cr2_3,
            ocw_hz: 1_523_000
        })
    );
    assert_eq!(p.data_rate(7), None);
    assert_eq!(p.data_rate(14), None);
    // SF8BW500 is DR4 up, DR12 down.
    assert_eq!(p.dr_index(&lora(8, 500)), Some(4));
    assert_eq!(p.dr_index_for(&lora(8, 500), Direction::Uplink), Some(4));
    assert_eq!(p.dr_index_for(&lora(8, 500), Direction::Downlink), Some(12));
    assert_eq!(p.dr_index_for(&lora(10, 125), Direction::Downlink), None);
}

#[test]
fn us915_payload_sizes() {
    let p = Region::Us915.params();
    let rows = [
        (0, ps(19, 11), ps(19, 11)),
        (1, ps(61, 53), ps(61, 53)),
        (2, ps(133, 125), ps(133, 125)),
        (3, ps(250, 242), ps(230, 222)),
        (4, ps(250, 242), ps(230, 222)),
        (5, ps(58, 50), ps(58, 50)),
        (6, ps(133, 125), ps(133, 125)),
        (7, None, None),
        (8, ps(61, 53), ps(61, 53)),
        (9, ps(137, 129), ps(137, 129)),
        (10, ps(250, 242), ps(230, 222)),
        (11, ps(250, 242), ps(230, 222)),
        (12, ps(250, 242), ps(230, 222)),
        (13, ps(250, 242), ps(230, 222)),
    ];
    for (dr, plain, rep) in rows {
        assert_eq!(p.max_payload_size(dr, true, false), plain, "DR{dr}");
        assert_eq!(p.max_payload_size(dr, false, false), plain, "DR{dr}");
        assert_eq!(p.max_payload_size(dr, true, true), rep, "DR{dr}");
    }
}

#[test]
fn us915_rx1_data_rate() {
    let p = Region::Us915.params();
    // Uplink DR0..DR6 × RX1DROffset 0..3 (RP002-1.0.4 US915 table).
    let table: [(u8, [u8; 4]); 7] = [
        (0, [10, 9, 8, 8]),
        (1, [11, 10, 9, 8]),
        (2, [12, 11, 10, 9]),
        (3, [13, 12, 11, 10]),
        (4, [13, 13, 12, 11]),
        (5, [10, 9, 8, 8]),
        (6, [11, 10, 9, 8]),
    ];
    for (up, row) in table {
        for (off, want) in row.into_iter().enumerate() {
            assert_eq!(
                p.rx1_data_rate(up, off as u8, false).unwrap(),
                want,
                "DR{up} offset {off}"
            );
        }
    }
    assert!(matches!(
        p.rx1_data_rate(0, 4, false),
        Err(BandError::InvalidRx1DrOffset { max: 3, .. })
    ));
    assert!(matches!(
        p.rx1_data_rate(8, 0, false),
        Err(BandError::DataRateNotAllowed { dr: 8, .. })
    ));
}

#[test]
fn us915_rx1_frequency() {
    let p = Region::Us915.params();
    // Downlink channel = uplink channel mod 8 → 923.3 MHz + n × 600 kHz.
    assert_eq!(p.rx1_frequency(902_300_000).unwrap(), 923_300_000); // ch 0
    assert_eq!(p.rx1_frequency(903_900_000).unwrap(), 923_300_000); // ch 8
    assert_eq!(p.rx1_frequency(904_100_000).unwrap(), 923_900_000); // ch 9
    assert_eq!(p.rx1_frequency(903_700_000).unwrap(), 927_500_000); // ch 7
    assert_eq!(p.rx1_frequency(914_900_000).unwrap(), 927_500_000); // ch 63
    assert_eq!(p.rx1_frequency(903_000_000).unwrap(), 923_300_000); // ch 64 (500 kHz)
    assert_eq!(p.rx1_frequency(904_600_000).unwrap(), 923_900_000); // ch 65
    assert_eq!(p.rx1_frequency(914_200_000).unwrap(), 927_500_000); // ch 71
    for bad in [902_400_000, 902_100_000, 915_100_000, 923_300_000] {
        assert!(matches!(
            p.rx1_frequency(bad),
            Err(BandError::UnknownUplinkFrequency { .. })
        ));
    }
    assert_eq!(p.uplink_channel_index(903_900_000), Some(8));
    assert_eq!(p.uplink_channel_index(903_000_000), Some(64));
    assert_eq!(p.uplink_channel_index(914_200_000), Some(71));
    assert_eq!(
        p.uplink_channel(65),
        Some(Channel {
            frequency: 904_600_000,
            min_dr: 4,
            max_dr: 6
        })
    );
    assert_eq!(p.uplink_channel(72), None);
}

#[test]
fn us915_join_channels_beacon_duty() {
    let p = Region::Us915.params();
    let join = p.join_channels();
    assert_eq!(join.len(), 72);
    assert_eq!(
        join[0],
        Channel {
            frequency: 902_300_000,
            min_dr: 0,
            max_dr: 0
        }
    );
    assert_eq!(
        join[64],
        Channel {
            frequency: 903_000_000,
            min_dr: 4,
            max_dr: 4
        }
    );
    assert_eq!(p.uplink_channels()[0].max_dr, 3);
    let b = p.beacon();
    assert_eq!(b.dr, 8);
    assert_eq!(b.frequencies.len(), 8);
    assert_eq!(b.frequencies[0], 923_300_000);
    assert_eq!(b.frequencies[7], 927_500_000);
    // Beacon channel = ⌊t / 128 s⌋ mod 8.
    assert_eq!(b.frequency_at(0), 923_300_000);
    assert_eq!(b.frequency_at(128), 923_900_000);
    assert_eq!(b.frequency_at(128 * 9), 923_900_000);
    // Ping slot channel = (DevAddr + ⌊t / 128 s⌋) mod 8.
    assert_eq!(p.ping_slot().frequency_for(3, 128), 925_700_000);
    assert_eq!(p.ping_slot().dr, 8);
    assert_eq!(p.duty_cycle_for(902_300_000).unwrap().duty_cycle, 1.0);
    assert_eq!(p.default_channel_mask().count(), 72);
}

// ------------------------------------------------------------------ AU915

#[test]
fn au915_tables() {
    let p = Region::Au915.params();
    assert_eq!(p.data_rate(0), Some(lora(12, 125)));
    assert_eq!(p.data_rate(5), Some(lora(7, 125)));
    assert_eq!(p.data_rate(6), Some(lora(8, 500)));
    assert_eq!(
        p.data_rate(7),
        Some(DataRate::LrFhss {
            coding_rate: LrFhssCodingRate::Cr1_3,
            ocw_hz: 1_523_000
        })
    );
    assert_eq!(p.data_rate(8), Some(lora(12, 500)));
    assert_eq!(p.data_rate(13), Some(lora(7, 500)));
    // Payload sizes, uplink dwell time off / on (RP002-1.0.4 AU915).
    let rows = [
        (0, ps(59, 51), None),
        (1, ps(59, 51), None),
        (2, ps(59, 51), ps(19, 11)),
        (3, ps(123, 115), ps(61, 53)),
        (4, ps(250, 242), ps(133, 125)),
        (5, ps(250, 242), ps(250, 242)),
        (6, ps(250, 242), ps(250, 242)),
        (7, ps(58, 50), ps(58, 50)),
        (8, ps(61, 53), ps(61, 53)),
        (9, ps(137, 129), ps(137, 129)),
        (10, ps(250, 242), ps(250, 242)),
        (13, ps(250, 242), ps(250, 242)),
    ];
    for (dr, off, on) in rows {
        assert_eq!(p.max_payload_size(dr, false, false), off, "DR{dr} no dwell");
        assert_eq!(p.max_payload_size(dr, true, false), on, "DR{dr} dwell");
    }
    assert_eq!(p.max_payload_size(5, true, true), ps(230, 222));
    // RX1: uplink DR0..DR6 map to DR8..DR13; LR-FHSS DR7 like DR1.
    let table: [(u8, [u8; 6]); 8] = [
        (0, [8, 8, 8, 8, 8, 8]),
        (1, [9, 8, 8, 8, 8, 8]),
        (2, [10, 9, 8, 8, 8, 8]),
        (3, [11, 10, 9, 8, 8, 8]),
        (4, [12, 11, 10, 9, 8, 8]),
        (5, [13, 12, 11, 10, 9, 8]),
        (6, [13, 13, 12, 11, 10, 9]),
        (7, [9, 8, 8, 8, 8, 8]),
    ];
    for (up, row) in table {
        for (off, want) in row.into_iter().enumerate() {
            assert_eq!(p.rx1_data_rate(up, off as u8, false).unwrap(), want);
        }
    }
    // RX1 frequency.
    assert_eq!(p.rx1_frequency(915_200_000).unwrap(), 923_300_000); // ch 0
    assert_eq!(p.rx1_frequency(916_800_000).unwrap(), 923_300_000); // ch 8
    assert_eq!(p.rx1_frequency(917_000_000).unwrap(), 923_900_000); // ch 9
    assert_eq!(p.rx1_frequency(915_900_000).unwrap(), 923_300_000); // ch 64
    assert_eq!(p.rx1_frequency(927_100_000).unwrap(), 927_500_000); // ch 71
    assert_eq!(p.uplink_channel_index(927_800_000), Some(63));
    // Join: 125 kHz at DR2 (dwell time on by default), 500 kHz at DR6.
    let join = p.join_channels();
    assert_eq!((join[0].min_dr, join[0].max_dr), (2, 2));
    assert_eq!((join[71].min_dr, join[71].max_dr), (6, 6));
    assert_eq!(
        p.rx2_default(),
        Rx2Params {
            frequency: 923_300_000,
            dr: 8
        }
    );
    assert_eq!(p.beacon().dr, 8);
}

// ------------------------------------------------------------------ AS923

#[test]
fn as923_payload_sizes_with_and_without_dwell() {
    for region in [
        Region::As923,
        Region::As923Group2,
        Region::As923Group3,
        Region::As923Group4,
    ] {
        let p = region.params();
        // (DR, no dwell, dwell) — RP002-1.0.4 AS923, not repeater compatible.
        let rows = [
            (0, ps(59, 51), None),
            (1, ps(59, 51), None),
            (2, ps(123, 115), ps(19, 11)),
            (3, ps(123, 115), ps(61, 53)),
            (4, ps(250, 242), ps(133, 125)),
            (5, ps(250, 242), ps(250, 242)),
            (6, ps(250, 242), ps(250, 242)),
            (7, ps(250, 242), ps(250, 242)),
            (8, None, None),
        ];
        for (dr, off, on) in rows {
            assert_eq!(p.max_payload_size(dr, false, false), off, "{region} DR{dr}");
            assert_eq!(p.max_payload_size(dr, true, false), on, "{region} DR{dr}");
        }
        // Repeater compatible: 230 caps the large sizes.
        assert_eq!(p.max_payload_size(4, false, true), ps(230, 222));
        assert_eq!(p.max_payload_size(4, true, true), ps(133, 125));
        assert_eq!(p.max_payload_size(7, true, true), ps(230, 222));
        assert_eq!(p.data_rate(6), Some(lora(7, 250)));
        assert_eq!(p.data_rate(7), Some(DataRate::Fsk { bitrate: 50_000 }));
    }
}

#[test]
fn as923_rx1_data_rate_offsets() {
    let p = Region::As923.params();
    // Downlink dwell time off: offsets 6 and 7 raise the data rate (effective −1, −2).
    let no_dwell: [(u8, [u8; 8]); 8] = [
        (0, [0, 0, 0, 0, 0, 0, 1, 2]),
        (1, [1, 0, 0, 0, 0, 0, 2, 3]),
        (2, [2, 1, 0, 0, 0, 0, 3, 4]),
        (3, [3, 2, 1, 0, 0, 0, 4, 5]),
        (4, [4, 3, 2, 1, 0, 0, 5, 6]),
        (5, [5, 4, 3, 2, 1, 0, 6, 7]),
        (6, [6, 5, 4, 3, 2, 1, 7, 7]),
        (7, [7, 6, 5, 4, 3, 2, 7, 7]),
    ];
    // Downlink dwell time on: never below DR2.
    let dwell: [(u8, [u8; 8]); 8] = [
        (0, [2, 2, 2, 2, 2, 2, 2, 2]),
        (1, [2, 2, 2, 2, 2, 2, 2, 3]),
        (2, [2, 2, 2, 2, 2, 2, 3, 4]),
        (3, [3, 2, 2, 2, 2, 2, 4, 5]),
        (4, [4, 3, 2, 2, 2, 2, 5, 6]),
        (5, [5, 4, 3, 2, 2, 2, 6, 7]),
        (6, [6, 5, 4, 3, 2, 2, 7, 7]),
        (7, [7, 6, 5, 4, 3, 2, 7, 7]),
    ];
    for (table, on) in [(no_dwell, false), (dwell, true)] {
        for (up, row) in table {
            for (off, want) in row.into_iter().enumerate() {
                assert_eq!(
                    p.rx1_data_rate(up, off as u8, on).unwrap(),
                    want,
                    "DR{up} offset {off} dwell {on}"
                );
            }
        }
    }
    assert!(p.rx1_data_rate(0, 8, false).is_err());
}

#[test]
fn as923_group_frequencies() {
    let cases = [
        (Region::As923, 0, 923_200_000, 923_400_000),
        (Region::As923Group2, 1_800_000, 921_400_000, 921_600_000),
        (Region::As923Group3, 6_600_000, 916_600_000, 916_800_000),
        (Region::As923Group4, 5_900_000, 917_300_000, 917_500_000),
    ];
    for (region, offset, f0, f1) in cases {
        let p = region.params();
        assert_eq!(region.as923_frequency_offset_hz(), offset);
        assert_eq!(p.default_channels[0].frequency, f0);
        assert_eq!(p.default_channels[1].frequency, f1);
        assert_eq!(p.rx2.frequency, f0);
        assert_eq!(p.beacon.frequencies, &[f1]);
        assert_eq!(p.ping_slot.frequencies, &[f1]);
        assert_eq!(p.beacon.dr, 3);
        assert_eq!(p.rx1_frequency(f1).unwrap(), f1);
        assert_eq!(p.max_rx1_dr_offset, 7);
    }
}

// ------------------------------------------------------------------ others

#[test]
fn kr920_tables() {
    let p = Region::Kr920.params();
    assert_eq!(p.data_rates.len(), 6);
    assert_eq!(p.data_rate(0), Some(lora(12, 125)));
    assert_eq!(p.data_rate(5), Some(lora(7, 125)));
    assert_eq!(p.data_rate(6), None);
    assert_eq!(p.max_payload_size(0, false, false), ps(59, 51));
    assert_eq!(p.max_payload_size(3, false, false), ps(123, 115));
    assert_eq!(p.max_payload_size(5, false, false), ps(250, 242));
    assert_eq!(p.max_payload_size(5, false, true), ps(230, 222));
    assert_eq!(p.rx1_data_rate(5, 5, false).unwrap(), 0);
    assert_eq!(p.rx1_data_rate(5, 2, false).unwrap(), 3);
    assert_eq!(p.beacon.frequencies, &[923_100_000]);
    assert_eq!(p.duty_cycle_for(922_100_000).unwrap().duty_cycle, 1.0);
    assert_eq!(p.duty_cycle_for(922_100_000).unwrap().max_eirp_dbm, 14.0);
    assert_eq!(p.duty_cycle_for(921_900_000).unwrap().max_eirp_dbm, 10.0);
}

#[test]
fn in865_tables() {
    let p = Region::In865.params();
    assert_eq!(p.data_rate(5), Some(lora(7, 125)));
    assert_eq!(p.data_rate(6), None, "IN865 DR6 is RFU");
    assert_eq!(p.data_rate(7), Some(DataRate::Fsk { bitrate: 50_000 }));
    assert_eq!(p.max_payload_size(2, false, false), ps(59, 51));
    assert_eq!(p.max_payload_size(7, false, false), ps(250, 242));
    // Offsets 6/7 raise the data rate; RFU DR6 steps down to DR5 (as LoRaMac-node does).
    assert_eq!(p.rx1_data_rate(0, 6, false).unwrap(), 1);
    assert_eq!(p.rx1_data_rate(0, 7, false).unwrap(), 2);
    assert_eq!(p.rx1_data_rate(3, 7, false).unwrap(), 5);
    assert_eq!(p.rx1_data_rate(4, 7, false).unwrap(), 5);
    assert_eq!(p.rx1_data_rate(5, 6, false).unwrap(), 5);
    assert_eq!(p.rx1_data_rate(5, 7, false).unwrap(), 7);
    assert_eq!(p.rx1_data_rate(7, 1, false).unwrap(), 5);
    assert_eq!(p.rx1_data_rate(7, 2, false).unwrap(), 5);
    assert_eq!(p.rx1_data_rate(7, 0, false).unwrap(), 7);
    assert_eq!(p.beacon.frequencies, &[866_550_000]);
    assert_eq!(p.beacon.dr, 4);
    assert_eq!(p.ping_slot.dr, 4);
}

#[test]
fn ru864_tables() {
    let p = Region::Ru864.params();
    assert_eq!(p.data_rate(6), Some(lora(7, 250)));
    assert_eq!(p.data_rate(7), Some(DataRate::Fsk { bitrate: 50_000 }));
    assert_eq!(p.data_rate(8), None);
    assert_eq!(p.max_payload_size(4, false, false), ps(250, 242));
    assert_eq!(p.beacon.frequencies, &[869_100_000]);
    assert_eq!(p.ping_slot.frequencies, &[868_900_000]);
    assert_eq!(p.duty_cycle_for(868_900_000).unwrap().duty_cycle, 0.01);
}

#[test]
fn cn470_tables() {
    let p = Region::Cn470.params();
    assert_eq!(p.data_rate(0), Some(lora(12, 125)));
    assert_eq!(p.data_rate(5), Some(lora(7, 125)));
    assert_eq!(p.data_rate(6), None);
    assert_eq!(p.max_payload_size(0, false, false), ps(59, 51));
    assert_eq!(p.max_payload_size(3, false, false), ps(123, 115));
    // 96 uplink channels 470.3 + 0.2 n MHz; RX1 = downlink channel (n mod 48) at 500.3 + 0.2 k.
    assert_eq!(p.uplink_channel(0).unwrap().frequency, 470_300_000);
    assert_eq!(p.uplink_channel(95).unwrap().frequency, 489_300_000);
    assert_eq!(p.rx1_frequency(470_300_000).unwrap(), 500_300_000);
    assert_eq!(p.rx1_frequency(470_500_000).unwrap(), 500_500_000);
    assert_eq!(p.rx1_frequency(479_900_000).unwrap(), 500_300_000); // ch 48
    assert_eq!(p.rx1_frequency(489_300_000).unwrap(), 509_700_000); // ch 95
    assert!(p.rx1_frequency(489_500_000).is_err());
    assert_eq!(p.beacon.dr, 2);
    assert_eq!(p.beacon.frequencies.len(), 8);
    assert_eq!(p.beacon.frequencies[0], 508_300_000);
    assert_eq!(p.join_channels().len(), 96);
}

#[test]
fn eu433_and_cn779_tables() {
    for (region, rx2, beacon) in [
        (Region::Eu433, 434_665_000, 434_665_000),
        (Region::Cn779, 786_000_000, 785_000_000),
    ] {
        let p = region.params();
        assert_eq!(p.data_rate(6), Some(lora(7, 250)));
        assert_eq!(p.data_rate(7), Some(DataRate::Fsk { bitrate: 50_000 }));
        assert_eq!(p.max_payload_size(3, false, false), ps(123, 115));
        assert_eq!(p.rx2.frequency, rx2);
        assert_eq!(p.beacon.frequencies, &[beacon]);
        assert_eq!(p.default_max_eirp_dbm, 12.15);
        assert_eq!(
            p.duty_cycle_for(p.default_channels[0].frequency)
                .unwrap()
                .duty_cycle,
            0.01
        );
    }
    assert_eq!(
        Region::Cn779.params().default_channels[0].frequency,
        779 * MHZ + 500_000
    );
}
