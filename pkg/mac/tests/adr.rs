//! ADR over scripted uplink histories (LoRaWAN L2 1.0.4 §4.3.1.1 for ADR/ADRACKReq, the
//! LoRa Alliance recommended network-side algorithm for the steps, RP002-1.0.3 §2.1.5 /
//! §2.5.5 for the EU868 and US915 data rates and LinkADRReq). Each test states the margin
//! arithmetic; LinkADRReq bytes follow 1.0.4 §5.3.

mod common;

use common::*;
use lorawan::MacCommand;
use lorawan::mac::LinkADRAns;
use tern_api::v3::{self, MacVersion, PhyVersion};
use tern_mac::adr::{self, AdrRecord};
use tern_mac::{DeviceMac, GatewayRx, MacContext};

const ACK: MacCommand = MacCommand::LinkADRAns(LinkADRAns {
    power_ack: true,
    data_rate_ack: true,
    channel_mask_ack: true,
});

fn otaa(c: &MacContext<'_>, mac_version: MacVersion) -> DeviceMac {
    let mut mac = DeviceMac::new(c, mac_version, PhyVersion::Rp002V103).unwrap();
    mac.join_accept(c);
    mac
}

/// Feed uplinks with these FCnts at `dr` and one gateway at `snr`; the last outcome's ADR.
fn feed(
    mac: &mut DeviceMac,
    c: &MacContext<'_>,
    f_cnts: impl IntoIterator<Item = u32>,
    dr: u8,
    snr: f32,
) -> Option<adr::AdrDecision> {
    let g: Vec<GatewayRx> = gws(&[snr]);
    let mut last = None;
    for f in f_cnts {
        last = mac.handle_uplink(c, &uplink(&[], &g, f, dr)).adr;
    }
    last
}

#[test]
fn helpers() {
    let eu = band::Region::Eu868.params();
    let snr = |dr| adr::required_snr_db(&eu.data_rate(dr).unwrap());
    assert_eq!(snr(0), Some(-20.0));
    assert_eq!(snr(5), Some(-7.5));
    assert_eq!(snr(7), None, "FSK has no LoRa demodulation floor");
    let h = |f: &[u32]| -> Vec<AdrRecord> {
        f.iter()
            .map(|&f_cnt| AdrRecord {
                f_cnt,
                ..Default::default()
            })
            .collect()
    };
    assert_eq!(adr::packet_loss(&h(&[0, 1, 2, 3])), 0.0);
    assert!((adr::packet_loss(&h(&[0, 2, 4, 6])) - 3.0 / 7.0).abs() < 1e-6);
    assert_eq!(adr::nb_trans_for_loss(0.049), 1);
    assert_eq!(adr::nb_trans_for_loss(0.05), 2);
    assert_eq!(adr::nb_trans_for_loss(0.099), 2);
    assert_eq!(adr::nb_trans_for_loss(0.10), 3);
    assert_eq!(adr::nb_trans_for_loss(0.9), 3);
    let us = band::Region::Us915.params();
    assert_eq!(adr::max_adr_data_rate(us, us.uplink_channels()), Some(3));
    assert_eq!(adr::max_adr_data_rate(eu, eu.uplink_channels()), Some(5));
}

#[test]
fn eu868_good_snr_dr_up_then_power_down() {
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let mut mac = otaa(&c, MacVersion::MacV103);
    // 19 uplinks: no decision yet.
    assert_eq!(feed(&mut mac, &c, 0..19, 0, 10.0), None);
    assert!(mac.next_commands(&c, 15).is_empty());
    // 20th: DR0 needs −20 dB: margin 10 + 20 − 15 = 15 dB → 5 steps → DR5, power 0.
    let d = feed(&mut mac, &c, 19..20, 0, 10.0).unwrap();
    assert_eq!((d.data_rate, d.tx_power_index, d.nb_trans), (5, 0, 1));
    assert_eq!(hex(&mac.next_commands(&c, 15)), "0350FF0001");
    let g = gws(&[10.0]);
    mac.handle_uplink(&c, &uplink(&[ACK], &g, 20, 5));
    assert_eq!(mac.current().data_rate, 5);
    // The history restarted with the answer's uplink (FCnt 20, already at DR5).
    // At DR5 (−7.5 dB) with 16 dB: margin 8.5 → 2 steps; DR5 is the top → power 0 → 2.
    assert_eq!(feed(&mut mac, &c, 21..39, 5, 16.0), None);
    let d = feed(&mut mac, &c, 39..40, 5, 16.0).unwrap();
    assert_eq!((d.data_rate, d.tx_power_index, d.nb_trans), (5, 2, 1));
    assert_eq!(hex(&mac.next_commands(&c, 15)), "0352FF0001");
}

#[test]
fn eu868_bad_snr_power_up() {
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let mut mac = otaa(&c, MacVersion::MacV103);
    {
        let cur = mac.current.as_mut().unwrap();
        cur.data_rate = 5;
        cur.tx_power_index = 4;
    }
    mac.desired.as_mut().unwrap().data_rate = 5;
    mac.desired.as_mut().unwrap().tx_power_index = 4;
    // DR5 with −5 dB: margin −5 + 7.5 − 15 = −12.5 → ⌊−4.17⌋ = −5 steps → power 4 → 0.
    let d = feed(&mut mac, &c, 0..20, 5, -5.0).unwrap();
    assert_eq!((d.data_rate, d.tx_power_index, d.nb_trans), (5, 0, 1));
    assert_eq!(hex(&mac.next_commands(&c, 15)), "0350FF0001");
    // Never a lower data rate from ADR.
    assert!(d.data_rate >= 5);
}

#[test]
fn eu868_margin_setting_per_device() {
    // adr_margin 25 dB: DR0 with 10 dB → margin 5 → 1 step → DR1.
    let s = v3::MacSettings {
        adr_margin: Some(25.0),
        ..Default::default()
    };
    let c = ctx("EU_863_870", Some(&s), &CONFIG, t0());
    let mut mac = otaa(&c, MacVersion::MacV103);
    let d = feed(&mut mac, &c, 0..20, 0, 10.0).unwrap();
    assert_eq!((d.data_rate, d.tx_power_index), (1, 0));
}

#[test]
fn loss_raises_nb_trans() {
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    // 20 received of 22 (FCnt 0..=21 without 5 and 11): 9.1 % loss → NbTrans 2.
    let mut mac = otaa(&c, MacVersion::MacV103);
    let f: Vec<u32> = (0..22).filter(|f| *f != 5 && *f != 11).collect();
    let d = feed(&mut mac, &c, f, 5, -2.0).unwrap();
    assert_eq!((d.data_rate, d.tx_power_index, d.nb_trans), (5, 0, 2));
    assert_eq!(hex(&mac.next_commands(&c, 15)), "0350FF0002");
    // 20 of 24: 16.7 % → 3.
    let mut mac = otaa(&c, MacVersion::MacV103);
    let f: Vec<u32> = (0..24).filter(|f| f % 6 != 3).collect();
    assert_eq!(feed(&mut mac, &c, f, 5, -2.0).unwrap().nb_trans, 3);
    // 20 of 21: 4.8 % → 1, nothing to change.
    let mut mac = otaa(&c, MacVersion::MacV103);
    let f: Vec<u32> = (0..21).filter(|f| *f != 7).collect();
    assert_eq!(feed(&mut mac, &c, f, 5, -2.0), None);
    assert!(mac.next_commands(&c, 15).is_empty());
}

#[test]
fn adr_ack_req_decides_early_and_needs_downlink() {
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let mut mac = otaa(&c, MacVersion::MacV103);
    feed(&mut mac, &c, 0..2, 0, 10.0);
    let g = gws(&[10.0]);
    let mut up = uplink(&[], &g, 2, 0);
    up.adr_ack_req = true;
    let out = mac.handle_uplink(&c, &up);
    assert!(out.downlink_required);
    let d = out.adr.expect("ADRACKReq: decide with 3 uplinks");
    assert_eq!((d.data_rate, d.tx_power_index), (5, 0));
}

#[test]
fn adr_off_per_device_or_by_the_device() {
    let s = v3::MacSettings {
        adr_enabled: Some(false),
        ..Default::default()
    };
    let c = ctx("EU_863_870", Some(&s), &CONFIG, t0());
    let mut mac = otaa(&c, MacVersion::MacV103);
    assert_eq!(feed(&mut mac, &c, 0..25, 0, 10.0), None);
    assert!(mac.next_commands(&c, 15).is_empty());
    // The device's ADR bit off.
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let mut mac = otaa(&c, MacVersion::MacV103);
    let g = gws(&[10.0]);
    for f in 0..25 {
        let mut up = uplink(&[], &g, f, 0);
        up.adr = false;
        assert!(mac.handle_uplink(&c, &up).adr.is_none());
    }
}

#[test]
fn us915_fsb2_otaa_dr3_power3() {
    // US915 DR0 = SF10BW125 needs −15 dB; 20 dB → margin 20 → 6 steps: DR0 → DR3 (the
    // highest 125 kHz DR), then power 0 → 3. Mask already FSB 2 (CFList): one block that
    // keeps it, ChMaskCntl 0 = 0xFF00.
    let c = ctx("US_902_928_FSB_2", None, &CONFIG, t0());
    let mut mac = otaa(&c, MacVersion::MacV103);
    let d = feed(&mut mac, &c, 0..20, 0, 20.0).unwrap();
    assert_eq!((d.data_rate, d.tx_power_index, d.nb_trans), (3, 3, 1));
    assert_eq!(hex(&mac.next_commands(&c, 15)), "033300FF01");
    let g = gws(&[20.0]);
    mac.handle_uplink(&c, &uplink(&[ACK], &g, 20, 3));
    let cur = mac.current();
    assert_eq!((cur.data_rate, cur.tx_power_index), (3, 3));
    assert_eq!(cur.mask().count(), 9);
}

#[test]
fn us915_abp_72_channels_block_with_adr() {
    // ABP: the device uses all 72 channels. ADR and the FSB 2 mask travel together in a
    // ChMaskCntl 7 + ChMaskCntl 0 block, both with DR3 / power 3.
    let c = ctx("US_902_928_FSB_2", None, &CONFIG, t0());
    let mut mac = DeviceMac::new(&c, MacVersion::MacV103, PhyVersion::Rp002V103).unwrap();
    let d = feed(&mut mac, &c, 0..20, 0, 20.0).unwrap();
    assert_eq!((d.data_rate, d.tx_power_index), (3, 3));
    assert_eq!(hex(&mac.next_commands(&c, 15)), "0333020071033300FF01");
    let g = gws(&[20.0]);
    mac.handle_uplink(&c, &uplink(&[ACK, ACK], &g, 20, 3));
    let cur = mac.current();
    assert_eq!(
        (cur.data_rate, cur.tx_power_index, cur.mask().count()),
        (3, 3, 9)
    );
}

#[test]
fn device_backoff_is_followed() {
    // The device lowered its DR on its own (ADR back-off): TX power back to 0 and history
    // restarts at the new DR.
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let mut mac = otaa(&c, MacVersion::MacV103);
    {
        let cur = mac.current.as_mut().unwrap();
        cur.data_rate = 5;
        cur.tx_power_index = 3;
    }
    feed(&mut mac, &c, 0..5, 5, 0.0);
    feed(&mut mac, &c, 5..6, 4, 0.0);
    assert_eq!(mac.current().data_rate, 4);
    assert_eq!(mac.current().tx_power_index, 0);
    assert_eq!(mac.adr_history.len(), 1);
    assert!(mac.next_commands(&c, 15).is_empty());
}
