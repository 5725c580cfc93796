//! Time-on-air vectors.
//!
//! Every expected value is worked out by hand from the SX1276 datasheet §4.1.1.7 /
//! Semtech AN1200.13 formula (see `band::toa`), showing the symbol counts:
//!   n_payload = 8 + max(ceil((8·PL − 4·SF + 28 + 16·CRC − 20·IH) / (4·(SF − 2·DE))) · (CR+4), 0)
//!   ToA = (8 + 4.25 + n_payload) · 2^SF / BW
//! and was cross-checked with an independent floating-point evaluation of the same formula.
//! The SF7/13-byte uplink value (46.3 ms) is also the well-known figure of The Things
//! Network's airtime calculator for a 0-byte application payload.

use std::time::Duration;

use band::toa::{CodingRate, LoraParams, fsk_time_on_air, lora_time_on_air, time_on_air};
use band::{BandError, DataRate, Direction, MAX_DWELL_TIME, Region};
use proptest::prelude::*;

fn up(sf: u8, bw: u32, pl: usize) -> Duration {
    lora_time_on_air(pl, &LoraParams::uplink(sf, bw)).unwrap()
}

fn down(sf: u8, bw: u32, pl: usize) -> Duration {
    lora_time_on_air(pl, &LoraParams::downlink(sf, bw)).unwrap()
}

#[test]
fn sf7_bw125_13_bytes_uplink() {
    // Tsym = 128/125 kHz = 1.024 ms, DE = 0.
    // (104 − 28 + 28 + 16) / 28 = 120/28 → 5 blocks → 8 + 5·5 = 33 symbols.
    // (12.25 + 33) · 1.024 ms = 45.25 · 1.024 = 46.336 ms.
    assert_eq!(up(7, 125_000, 13), Duration::from_micros(46_336));
}

#[test]
fn sf7_bw125_13_bytes_downlink_without_crc() {
    // CRC off: (104 − 28 + 28) / 28 = 104/28 → 4 blocks → 8 + 20 = 28 symbols.
    // 40.25 · 1.024 ms = 41.216 ms. (41.216 ms is the CRC-off value; with CRC it is 46.336.)
    assert_eq!(down(7, 125_000, 13), Duration::from_micros(41_216));
}

#[test]
fn sf12_bw125_13_bytes_uplink() {
    // Tsym = 4096/125 kHz = 32.768 ms ≥ 16 ms → DE = 1.
    // (104 − 48 + 28 + 16) / (4·(12 − 2)) = 100/40 → 3 blocks → 8 + 15 = 23 symbols.
    // 35.25 · 32.768 ms = 1155.072 ms.
    assert_eq!(up(12, 125_000, 13), Duration::from_micros(1_155_072));
}

#[test]
fn sf7_bw125_51_bytes_uplink() {
    // (408 − 28 + 28 + 16) / 28 = 424/28 = 15.14 → 16 blocks → 8 + 80 = 88 symbols.
    // 100.25 · 1.024 ms = 102.656 ms.
    assert_eq!(up(7, 125_000, 51), Duration::from_micros(102_656));
}

#[test]
fn sf10_bw125_13_bytes_uplink() {
    // Tsym = 8.192 ms, DE = 0. (104 − 40 + 44) / 40 = 108/40 → 3 → 23 symbols.
    // 35.25 · 8.192 = 288.768 ms.
    assert_eq!(up(10, 125_000, 13), Duration::from_micros(288_768));
}

#[test]
fn sf11_bw125_13_bytes_uplink_uses_ldro() {
    // Tsym = 16.384 ms → DE = 1. (104 − 44 + 44) / (4·9) = 104/36 → 3 → 23 symbols.
    // 35.25 · 16.384 = 577.536 ms.
    assert_eq!(up(11, 125_000, 13), Duration::from_micros(577_536));
}

#[test]
fn sf12_bw500_33_bytes_downlink() {
    // US915 DR8. Tsym = 4096/500 kHz = 8.192 ms → DE = 0, CRC off.
    // (264 − 48 + 28) / 48 = 244/48 → 6 → 8 + 30 = 38 symbols. 50.25 · 8.192 = 411.648 ms.
    assert_eq!(down(12, 500_000, 33), Duration::from_micros(411_648));
}

#[test]
fn sf12_bw125_64_bytes_uplink() {
    // (512 − 48 + 44) / 40 = 508/40 = 12.7 → 13 → 8 + 65 = 73. 85.25 · 32.768 = 2793.472 ms.
    assert_eq!(up(12, 125_000, 64), Duration::from_micros(2_793_472));
}

#[test]
fn sf9_cr4_8() {
    // CR 4/8: (104 − 36 + 44) / 36 = 112/36 → 4 blocks · 8 = 32 → 40 symbols.
    // 52.25 · 4.096 = 214.016 ms.
    let p = LoraParams {
        coding_rate: CodingRate::Cr4_8,
        ..LoraParams::uplink(9, 125_000)
    };
    assert_eq!(p.payload_symbols(13), 40);
    assert_eq!(
        lora_time_on_air(13, &p).unwrap(),
        Duration::from_micros(214_016)
    );
}

#[test]
fn symbol_counts() {
    assert_eq!(LoraParams::uplink(7, 125_000).payload_symbols(13), 33);
    assert_eq!(LoraParams::downlink(7, 125_000).payload_symbols(13), 28);
    assert_eq!(LoraParams::uplink(12, 125_000).payload_symbols(13), 23);
    assert!(LoraParams::uplink(12, 125_000).ldro());
    assert!(LoraParams::uplink(11, 125_000).ldro());
    assert!(!LoraParams::uplink(10, 125_000).ldro());
    assert!(!LoraParams::uplink(12, 500_000).ldro());
    assert!(LoraParams::uplink(12, 250_000).ldro());
}

#[test]
fn fsk_50kbps() {
    // (5 + 3 + 1 + 13 + 2) bytes · 8 = 192 bits / 50 000 bit/s = 3.84 ms.
    assert_eq!(
        fsk_time_on_air(13, 50_000).unwrap(),
        Duration::from_micros(3_840)
    );
    // 255 bytes: 266 · 8 = 2128 bits → 42.56 ms.
    assert_eq!(
        fsk_time_on_air(255, 50_000).unwrap(),
        Duration::from_micros(42_560)
    );
}

#[test]
fn by_data_rate() {
    let eu = Region::Eu868.params();
    let dr5 = eu.data_rate(5).unwrap();
    assert_eq!(
        time_on_air(&dr5, 13, Direction::Uplink).unwrap(),
        Duration::from_micros(46_336)
    );
    assert_eq!(
        time_on_air(&dr5, 13, Direction::Downlink).unwrap(),
        Duration::from_micros(41_216)
    );
    let fsk = eu.data_rate(7).unwrap();
    assert_eq!(
        time_on_air(&fsk, 13, Direction::Uplink).unwrap(),
        Duration::from_micros(3_840)
    );
    let lr = eu.data_rate(8).unwrap();
    assert!(matches!(
        time_on_air(&lr, 13, Direction::Uplink),
        Err(BandError::InvalidModulation(_))
    ));
}

#[test]
fn invalid_parameters() {
    assert!(lora_time_on_air(13, &LoraParams::uplink(6, 125_000)).is_err());
    assert!(lora_time_on_air(13, &LoraParams::uplink(13, 125_000)).is_err());
    assert!(lora_time_on_air(13, &LoraParams::uplink(7, 0)).is_err());
    assert!(lora_time_on_air(256, &LoraParams::uplink(7, 125_000)).is_err());
    assert!(fsk_time_on_air(13, 0).is_err());
}

/// AS923 DR2 with dwell time: M = 19 → PHYPayload 19 + 5 = 24 bytes:
/// (192 − 40 + 44)/40 = 4.9 → 5 → 33 symbols → 45.25 · 8.192 = 370.688 ms ≤ 400 ms;
/// one byte more: (200 − 40 + 44)/40 = 5.1 → 6 → 38 symbols → 411.648 ms > 400 ms.
#[test]
fn dwell_time_payload_limit_is_tight_for_sf10() {
    assert_eq!(up(10, 125_000, 24), Duration::from_micros(370_688));
    assert_eq!(up(10, 125_000, 25), Duration::from_micros(411_648));
    assert!(up(10, 125_000, 24) <= MAX_DWELL_TIME);
    assert!(up(10, 125_000, 25) > MAX_DWELL_TIME);
}

/// Every M the tables give for dwell-time operation keeps a maximum-size uplink
/// (MHDR 1 + MACPayload M + MIC 4 bytes) within 400 ms.
#[test]
fn dwell_time_payload_sizes_fit_400ms() {
    for region in [
        Region::Us915,
        Region::Au915,
        Region::As923,
        Region::As923Group2,
        Region::As923Group3,
        Region::As923Group4,
    ] {
        let params = region.params();
        for e in params.data_rates.iter().filter(|e| e.uplink) {
            let Some(size) = params.max_payload_size(e.index, true, false) else {
                continue;
            };
            let DataRate::Lora { .. } = e.data_rate else {
                continue;
            };
            let toa =
                time_on_air(&e.data_rate, usize::from(size.m) + 5, Direction::Uplink).unwrap();
            assert!(
                toa <= MAX_DWELL_TIME,
                "{region} DR{} M={} takes {toa:?}",
                e.index,
                size.m
            );
        }
    }
}

proptest! {
    #[test]
    fn lora_toa_grows_with_payload(sf in 7u8..=12, bw_i in 0usize..3, pl in 0usize..255) {
        let bw = [125_000, 250_000, 500_000][bw_i];
        prop_assert!(up(sf, bw, pl) <= up(sf, bw, pl + 1));
        prop_assert!(down(sf, bw, pl) <= up(sf, bw, pl));
    }

    #[test]
    fn lora_toa_grows_with_sf(sf in 7u8..12, pl in 0usize..=255) {
        prop_assert!(up(sf, 125_000, pl) < up(sf + 1, 125_000, pl));
    }

    #[test]
    fn lora_toa_matches_float_formula(sf in 7u8..=12, bw_i in 0usize..3, pl in 0usize..=255, crc: bool) {
        let bw = [125_000u32, 250_000, 500_000][bw_i];
        let tsym = f64::from(1u32 << sf) / f64::from(bw);
        let de = if tsym >= 0.016 { 1.0 } else { 0.0 };
        let crc_f = if crc { 1.0 } else { 0.0 };
        let num = 8.0 * pl as f64 - 4.0 * f64::from(sf) + 28.0 + 16.0 * crc_f;
        let blocks = (num / (4.0 * (f64::from(sf) - 2.0 * de))).ceil().max(0.0);
        let n = 8.0 + blocks * 5.0;
        let expected_us = ((12.25 + n) * tsym * 1e6).round() as u64;
        let p = LoraParams { crc, ..LoraParams::uplink(sf, bw) };
        let got = lora_time_on_air(pl, &p).unwrap();
        prop_assert_eq!(got.as_micros() as u64, expected_us);
    }
}
