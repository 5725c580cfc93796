//! Frequency plan lookups and gateway radio layouts.

use band::{BandError, FrequencyPlan, MAX_IF_OFFSET_HZ, Region};

const IDS: [&str; 31] = [
    "EU_863_870",
    "US_902_928_FSB_1",
    "US_902_928_FSB_2",
    "US_902_928_FSB_3",
    "US_902_928_FSB_4",
    "US_902_928_FSB_5",
    "US_902_928_FSB_6",
    "US_902_928_FSB_7",
    "US_902_928_FSB_8",
    "AU_915_928_FSB_1",
    "AU_915_928_FSB_2",
    "AU_915_928_FSB_3",
    "AU_915_928_FSB_4",
    "AU_915_928_FSB_5",
    "AU_915_928_FSB_6",
    "AU_915_928_FSB_7",
    "AU_915_928_FSB_8",
    "AS_923",
    "AS_923_2",
    "AS_923_3",
    "AS_923_4",
    "KR_920_923",
    "IN_865_867",
    "RU_864_870",
    "CN_470_510",
    "CN_470_510_20_A",
    "CN_470_510_20_B",
    "CN_470_510_26_A",
    "CN_470_510_26_B",
    "EU_433",
    "CN_779_787",
];

#[test]
fn every_id_resolves() {
    assert_eq!(FrequencyPlan::ids(), IDS.to_vec());
    for id in IDS {
        let plan = FrequencyPlan::by_id(id).unwrap_or_else(|| panic!("{id}"));
        assert_eq!(plan.id, id);
        assert!(std::ptr::eq(plan, FrequencyPlan::lookup(id).unwrap()));
        let params = plan.params();
        // Every channel is an uplink channel of the region with valid data rates.
        for ch in plan.uplink_channels {
            assert!(
                (params.min_frequency..=params.max_frequency).contains(&ch.frequency),
                "{id} {}",
                ch.frequency
            );
            assert!(params.data_rate_entry(ch.min_dr).unwrap().uplink);
            assert!(params.data_rate_entry(ch.max_dr).unwrap().uplink);
            assert!(params.rx1_frequency(ch.frequency).is_ok(), "{id}");
            assert!(params.duty_cycle_for(ch.frequency).is_some(), "{id}");
        }
        for single in [plan.lora_standard_channel, plan.fsk_channel]
            .into_iter()
            .flatten()
        {
            assert!(params.data_rate_entry(single.dr).unwrap().uplink, "{id}");
        }
        // RX2 is the region default and a downlink rate.
        assert_eq!(plan.rx2, params.rx2_default(), "{id}");
        assert_eq!(plan.max_eirp_dbm, params.default_max_eirp_dbm, "{id}");
        // Plans with dynamic channels start with the region's default channels.
        for (d, c) in params.default_channels.iter().zip(plan.uplink_channels) {
            assert_eq!(d, c, "{id}");
        }
    }
}

#[test]
fn unknown_id() {
    assert!(FrequencyPlan::by_id("EU_868").is_none());
    assert!(FrequencyPlan::by_id("eu_863_870").is_none());
    let err = FrequencyPlan::lookup("US_902_928_FSB_9").unwrap_err();
    assert!(matches!(err, BandError::UnknownFrequencyPlan { .. }));
    let msg = err.to_string();
    assert!(msg.contains("US_902_928_FSB_9"));
    assert!(msg.contains("EU_863_870"));
    assert!(msg.contains("CN_779_787"));
}

#[test]
fn plan_regions() {
    let cases = [
        ("EU_863_870", Region::Eu868),
        ("US_902_928_FSB_2", Region::Us915),
        ("AU_915_928_FSB_2", Region::Au915),
        ("AS_923", Region::As923),
        ("AS_923_2", Region::As923Group2),
        ("AS_923_3", Region::As923Group3),
        ("AS_923_4", Region::As923Group4),
        ("KR_920_923", Region::Kr920),
        ("IN_865_867", Region::In865),
        ("RU_864_870", Region::Ru864),
        ("CN_470_510", Region::Cn470),
        ("CN_470_510_20_A", Region::Cn470A20),
        ("CN_470_510_20_B", Region::Cn470B20),
        ("CN_470_510_26_A", Region::Cn470A26),
        ("CN_470_510_26_B", Region::Cn470B26),
        ("EU_433", Region::Eu433),
        ("CN_779_787", Region::Cn779),
    ];
    for (id, region) in cases {
        assert_eq!(FrequencyPlan::by_id(id).unwrap().region, region, "{id}");
    }
}

#[test]
fn eu_863_870_channels() {
    let plan = FrequencyPlan::by_id("EU_863_870").unwrap();
    let freqs: Vec<u32> = plan.uplink_channels.iter().map(|c| c.frequency).collect();
    assert_eq!(
        freqs,
        [
            868_100_000,
            868_300_000,
            868_500_000,
            867_100_000,
            867_300_000,
            867_500_000,
            867_700_000,
            867_900_000
        ]
    );
    let std = plan.lora_standard_channel.unwrap();
    assert_eq!((std.frequency, std.dr), (868_300_000, 6));
    let fsk = plan.fsk_channel.unwrap();
    assert_eq!((fsk.frequency, fsk.dr), (868_800_000, 7));
    assert_eq!(
        plan.cf_list_frequencies(),
        [
            867_100_000,
            867_300_000,
            867_500_000,
            867_700_000,
            867_900_000
        ]
    );
    assert_eq!(plan.channel_mask().count(), 8);
    assert_eq!((plan.rx2.frequency, plan.rx2.dr), (869_525_000, 0));
}

#[test]
fn us_fsb_plans() {
    for fsb in 1..=8u32 {
        let id = format!("US_902_928_FSB_{fsb}");
        let plan = FrequencyPlan::by_id(&id).unwrap();
        assert_eq!(plan.fsb, Some(fsb as u8));
        let first = 902_300_000 + (fsb - 1) * 1_600_000;
        let freqs: Vec<u32> = plan.uplink_channels.iter().map(|c| c.frequency).collect();
        let want: Vec<u32> = (0..8).map(|i| first + i * 200_000).collect();
        assert_eq!(freqs, want, "{id}");
        for c in plan.uplink_channels {
            assert_eq!((c.min_dr, c.max_dr), (0, 3));
        }
        // 500 kHz channel 64 + (FSB − 1).
        let wide = plan.lora_standard_channel.unwrap();
        assert_eq!(wide.frequency, 903_000_000 + (fsb - 1) * 1_600_000, "{id}");
        assert_eq!(wide.dr, 4);
        assert_eq!(
            plan.params().uplink_channel_index(wide.frequency),
            Some(63 + fsb as u8)
        );
        let mask: Vec<usize> = plan.channel_mask().iter().collect();
        let mut want_mask: Vec<usize> = (0..8).map(|i| (fsb as usize - 1) * 8 + i).collect();
        want_mask.push(63 + fsb as usize);
        assert_eq!(mask, want_mask, "{id}");
        assert!(plan.cf_list_frequencies().is_empty());
        assert!(plan.uplink_dwell_time);
    }
    let fsb2 = FrequencyPlan::by_id("US_902_928_FSB_2").unwrap();
    assert_eq!(fsb2.uplink_channels[0].frequency, 903_900_000);
    assert_eq!(fsb2.uplink_channels[7].frequency, 905_300_000);
    assert_eq!(fsb2.lora_standard_channel.unwrap().frequency, 904_600_000);
}

#[test]
fn au_fsb_plans() {
    for fsb in 1..=8u32 {
        let id = format!("AU_915_928_FSB_{fsb}");
        let plan = FrequencyPlan::by_id(&id).unwrap();
        let first = 915_200_000 + (fsb - 1) * 1_600_000;
        assert_eq!(plan.uplink_channels[0].frequency, first, "{id}");
        assert_eq!(plan.uplink_channels[7].frequency, first + 1_400_000, "{id}");
        let wide = plan.lora_standard_channel.unwrap();
        assert_eq!(wide.frequency, 915_900_000 + (fsb - 1) * 1_600_000, "{id}");
        assert_eq!(wide.dr, 6);
        assert_eq!(plan.channel_mask().count(), 9);
    }
    let fsb2 = FrequencyPlan::by_id("AU_915_928_FSB_2").unwrap();
    assert_eq!(fsb2.uplink_channels[0].frequency, 916_800_000);
    assert_eq!(fsb2.lora_standard_channel.unwrap().frequency, 917_500_000);
}

#[test]
fn other_plans() {
    let as2 = FrequencyPlan::by_id("AS_923_2").unwrap();
    assert_eq!(as2.uplink_channels[0].frequency, 921_400_000);
    assert_eq!(as2.uplink_channels[1].frequency, 921_600_000);
    assert_eq!(as2.rx2.frequency, 921_400_000);
    assert!(as2.uplink_dwell_time && !as2.downlink_dwell_time);
    let kr = FrequencyPlan::by_id("KR_920_923").unwrap();
    assert_eq!(kr.uplink_channels.len(), 7);
    assert_eq!(
        kr.cf_list_frequencies(),
        [922_700_000, 922_900_000, 923_100_000, 923_300_000]
    );
    let cn = FrequencyPlan::by_id("CN_470_510").unwrap();
    assert_eq!(cn.uplink_channels[0].frequency, 470_300_000);
    assert_eq!(cn.uplink_channels[7].frequency, 471_700_000);
    assert_eq!(
        cn.channel_mask().iter().collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    let ru = FrequencyPlan::by_id("RU_864_870").unwrap();
    assert_eq!(ru.cf_list_frequencies().len(), 5);
    let eu433 = FrequencyPlan::by_id("EU_433").unwrap();
    assert_eq!(eu433.lora_standard_channel.unwrap().frequency, 434_075_000);
}

#[test]
fn radio_layouts_keep_channels_within_if_range() {
    for plan in FrequencyPlan::all() {
        let layout = plan
            .radio_layout()
            .unwrap_or_else(|e| panic!("{}: {e}", plan.id));
        let all = layout
            .multi_sf
            .iter()
            .chain(layout.lora_standard.iter())
            .chain(layout.fsk.iter());
        for ch in all {
            assert!(ch.radio <= 1);
            assert!(
                ch.if_offset_hz.unsigned_abs() <= MAX_IF_OFFSET_HZ,
                "{}: {} Hz on radio {} at {} Hz",
                plan.id,
                ch.frequency,
                ch.radio,
                layout.radio_centers[ch.radio as usize]
            );
            assert_eq!(
                ch.frequency as i64,
                layout.radio_centers[ch.radio as usize] as i64 + ch.if_offset_hz as i64
            );
        }
        assert_eq!(layout.multi_sf.len(), plan.uplink_channels.len());
    }
}

#[test]
fn radio_layout_examples() {
    let eu = FrequencyPlan::by_id("EU_863_870")
        .unwrap()
        .radio_layout()
        .unwrap();
    assert_eq!(eu.radio_centers, [867_500_000, 868_450_000]);
    assert_eq!(eu.multi_sf[0].radio, 1);
    assert_eq!(eu.multi_sf[0].if_offset_hz, -350_000);
    assert_eq!(eu.multi_sf[3].radio, 0);
    assert_eq!(eu.multi_sf[3].if_offset_hz, -400_000);
    assert_eq!(eu.fsk.unwrap().if_offset_hz, 350_000);
    assert_eq!(eu.lora_standard.unwrap().bandwidth_hz, 250_000);

    let us = FrequencyPlan::by_id("US_902_928_FSB_2")
        .unwrap()
        .radio_layout()
        .unwrap();
    assert_eq!(us.radio_centers, [904_300_000, 905_100_000]);
    let wide = us.lora_standard.unwrap();
    assert_eq!(
        (wide.radio, wide.if_offset_hz, wide.bandwidth_hz),
        (0, 300_000, 500_000)
    );

    let as1 = FrequencyPlan::by_id("AS_923")
        .unwrap()
        .radio_layout()
        .unwrap();
    assert_eq!(as1.radio_centers, [923_300_000, 923_300_000]);
    assert_eq!(as1.multi_sf[0].if_offset_hz, -100_000);
}
