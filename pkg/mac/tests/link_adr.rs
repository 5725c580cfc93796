//! LinkADRReq/LinkADRAns exchanges (LoRaWAN L2 1.0.4 §5.3, RP002-1.0.3 §2.5.5 / §2.6.5 for
//! the US915 ChMask blocks). Expected bytes are computed by hand from the field layouts of
//! 1.0.4 §5.3 (DataRate_TXPower, ChMask LE, Redundancy = ChMaskCntl<<4 | NbTrans).

mod common;

use common::*;
use lorawan::MacCommand;
use lorawan::mac::LinkADRAns;
use tern_api::v3::{MacVersion, PhyVersion};
use tern_mac::{DeviceMac, Rejection};

fn ans(power_ack: bool, data_rate_ack: bool, channel_mask_ack: bool) -> MacCommand {
    MacCommand::LinkADRAns(LinkADRAns {
        power_ack,
        data_rate_ack,
        channel_mask_ack,
    })
}

/// OTAA EU868 session (CFList gives all 8 plan channels) after 20 strong uplinks at DR0:
/// ADR wants DR5 / TX power 2 (margin 16 + 20 − 15 = 21 dB = 7 steps).
fn eu868_after_adr(mac_version: MacVersion) -> DeviceMac {
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let mut mac = DeviceMac::new(&c, mac_version, PhyVersion::Rp002V103).unwrap();
    let ja = mac.join_accept(&c);
    assert!(ja.cf_list.is_some());
    assert_eq!(mac.current().mask().count(), 8);
    let g = gws(&[16.0, 3.0]);
    for f_cnt in 0..20 {
        let out = mac.handle_uplink(&c, &uplink(&[], &g, f_cnt, 0));
        if f_cnt < 19 {
            assert!(out.adr.is_none(), "no decision before 20 uplinks");
        } else {
            let d = out.adr.expect("decision at 20 uplinks");
            assert_eq!((d.data_rate, d.tx_power_index, d.nb_trans), (5, 2, 1));
        }
    }
    mac
}

#[test]
fn link_adr_accept_1_0_4_s5_3() {
    let mut mac = eu868_after_adr(MacVersion::MacV103);
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let cmds = mac.next_commands(&c, 15);
    // DR5 TXPower2, ChMask 0x00FF (channels 0-7), ChMaskCntl 0, NbTrans 1.
    assert_eq!(hex(&cmds), "0352FF0001");
    assert!(mac.is_pending(0x03));
    // Pending: not sent again.
    assert!(mac.next_commands(&c, 15).is_empty());

    let up = [ans(true, true, true)];
    let g = gws(&[10.0]);
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 20, 0));
    assert_eq!(out.events.len(), 1);
    assert!(out.events[0].rejected.is_empty());
    assert_eq!(out.events[0].name(), "ns.mac.link_adr.answer");
    let cur = mac.current();
    assert_eq!((cur.data_rate, cur.tx_power_index, cur.nb_trans), (5, 2, 1));
    assert!(!mac.is_pending(0x03));
    let api = mac.to_api();
    assert_eq!(api.adr_data_rate_index, 5);
    assert_eq!(api.adr_tx_power_index, 2);
    assert_eq!(api.channel_frequencies.len(), 8);
}

#[test]
fn link_adr_reject_keeps_state_1_0_4_s5_3() {
    // 1.0.4 §5.3: any NACK bit means the device kept its previous state entirely.
    let mut mac = eu868_after_adr(MacVersion::MacV103);
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    assert_eq!(hex(&mac.next_commands(&c, 15)), "0352FF0001");
    let before = mac.current().clone();
    let up = [ans(false, true, true)];
    let g = gws(&[16.0]);
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 20, 0));
    assert_eq!(out.events[0].rejected, vec![Rejection::Nack("tx_power")]);
    assert_eq!(
        mac.current(),
        &before,
        "no part of a rejected LinkADRReq is applied"
    );
    assert_eq!(mac.rejected_tx_powers, vec![2]);
    // ADR now avoids TX power 2: DR5 with power 1 (the next step is the rejected index).
    let cmds = mac.next_commands(&c, 15);
    assert_eq!(hex(&cmds), "0351FF0001");
}

#[test]
fn link_adr_partial_reject_bits_1_0_4_s5_3() {
    let mut mac = eu868_after_adr(MacVersion::MacV103);
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    mac.next_commands(&c, 15);
    let before = mac.current().clone();
    let up = [ans(true, false, false)];
    let g = gws(&[16.0]);
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 20, 0));
    assert_eq!(
        out.events[0].rejected,
        vec![
            Rejection::Nack("data_rate"),
            Rejection::Nack("channel_mask")
        ]
    );
    assert_eq!(mac.current(), &before);
    assert_eq!(mac.rejected_data_rates, vec![5]);
    // ADR stops below the rejected DR5: DR4, and the remaining 3 steps lower the power.
    let cmds = mac.next_commands(&c, 15);
    assert_eq!(hex(&cmds), "0343FF0001");
}

#[test]
fn link_adr_1_0_4_keeps_unchanged_fields_with_0xf() {
    // 1.0.4 §5.3: DataRate or TXPower 0xF = keep the current value.
    let mut mac = eu868_after_adr(MacVersion::MacV104);
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    mac.desired.as_mut().unwrap().tx_power_index = 0;
    let cmds = mac.next_commands(&c, 15);
    assert_eq!(hex(&cmds), "035FFF0001");
    let up = [ans(true, true, true)];
    let g = gws(&[16.0]);
    mac.handle_uplink(&c, &uplink(&up, &g, 20, 0));
    assert_eq!(mac.current().data_rate, 5);
    assert_eq!(mac.current().tx_power_index, 0);
}

#[test]
fn link_adr_unexpected_answer_changes_nothing() {
    let mut mac = session("EU_863_870", MacVersion::MacV103);
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let before = mac.clone();
    let up = [ans(true, true, true)];
    let g = gws(&[0.0]);
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 0, 0));
    assert_eq!(out.events[0].rejected, vec![Rejection::Unexpected]);
    assert_eq!(mac.current(), before.current());
}

#[test]
fn us915_fsb2_ch_mask_block_cntl_7_then_0_rp002_s2_5_5() {
    // An ABP US915 device boots with all 72 channels; the FSB 2 plan wants 8-15 and 65:
    // ChMaskCntl 7 (all 125 kHz off, ChMask for 64-71 = 0x0002) then ChMaskCntl 0 with 0xFF00.
    let c = ctx("US_902_928_FSB_2", None, &CONFIG, t0());
    let mut mac = DeviceMac::new(&c, MacVersion::MacV103, PhyVersion::Rp002V103).unwrap();
    assert_eq!(mac.current().mask().count(), 72);
    let cmds = mac.next_commands(&c, 15);
    assert_eq!(hex(&cmds), "0300020071030000FF01");
    // Block answered with two identical LinkADRAns (1.0.4 §5.3).
    let up = [ans(true, true, true), ans(true, true, true)];
    let g = gws(&[5.0]);
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 0, 0));
    assert_eq!(out.events.len(), 1, "one event for the block");
    let mask = mac.current().mask();
    assert_eq!(mask.count(), 9);
    assert!((8..16).all(|i| mask.is_enabled(i)) && mask.is_enabled(65));
    let api = mac.to_api();
    assert_eq!(api.channel_frequencies.len(), 72);
    assert_eq!(api.channel_frequencies[8], 903_900_000);
    assert_eq!(api.channel_frequencies[65], 904_600_000);
    assert_eq!(api.channel_frequencies[0], 0);
}

#[test]
fn us915_all_channels_uses_cntl_6_rp002_s2_5_5() {
    // From FSB 2 back to all 72 channels: one block, ChMaskCntl 6 with ChMask 0x00FF.
    let params = band::Region::Us915.params();
    let fsb2 = band::FrequencyPlan::by_id("US_902_928_FSB_2")
        .unwrap()
        .channel_mask();
    let all = params.default_channel_mask();
    let blocks = tern_mac::ch_mask_blocks(params, fsb2, all, all).unwrap();
    assert_eq!(blocks, vec![band::ChMaskBlock::new(0x00FF, 6)]);
}

#[test]
fn us915_block_rejected_keeps_all_channels() {
    let c = ctx("US_902_928_FSB_2", None, &CONFIG, t0());
    let mut mac = DeviceMac::new(&c, MacVersion::MacV103, PhyVersion::Rp002V103).unwrap();
    mac.next_commands(&c, 15);
    // An older device answers the block once.
    let up = [ans(true, true, false)];
    let g = gws(&[5.0]);
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 0, 0));
    assert_eq!(
        out.events[0].rejected,
        vec![Rejection::Nack("channel_mask")]
    );
    assert_eq!(mac.current().mask().count(), 72);
    // The NS stops asking for the mask it cannot get.
    assert!(mac.next_commands(&c, 15).is_empty());
}

#[test]
fn us915_otaa_cf_list_sets_fsb2_rp002_s2_5_4() {
    let c = ctx("US_902_928_FSB_2", None, &CONFIG, t0());
    let mut mac = DeviceMac::new(&c, MacVersion::MacV103, PhyVersion::Rp002V103).unwrap();
    let ja = mac.join_accept(&c);
    // CFList type 1: ChMask0 = 0xFF00, ChMask4 = 0x0002, type 1 in the last byte.
    assert_eq!(
        hex::encode_upper(ja.cf_list.unwrap()),
        "00FF0000000000000200000000000001"
    );
    assert_eq!(mac.current().mask().count(), 9);
    assert!(mac.next_commands(&c, 15).is_empty());
}

#[test]
fn fixed_region_blocks_au915_and_cn470_rp002_s2_6_5_s2_11_5() {
    use band::{ChMaskBlock, FrequencyPlan, Region};
    // AU915 FSB 2 from all channels: like US915, ChMaskCntl 7 then 0.
    let au = Region::Au915.params();
    let all = au.default_channel_mask();
    let fsb2 = FrequencyPlan::by_id("AU_915_928_FSB_2")
        .unwrap()
        .channel_mask();
    assert_eq!(
        tern_mac::ch_mask_blocks(au, all, fsb2, all).unwrap(),
        vec![ChMaskBlock::new(0x0002, 7), ChMaskBlock::new(0xFF00, 0)]
    );
    // RP002 CN470 20 MHz type A, plan channels 8-15 of 64: ChMaskCntl 7 (all off) then 0.
    let cn = Region::Cn470A20.params();
    let all = cn.default_channel_mask();
    let plan = FrequencyPlan::by_id("CN_470_510_20_A")
        .unwrap()
        .channel_mask();
    assert_eq!(plan.count(), 8);
    let blocks = tern_mac::ch_mask_blocks(cn, all, plan, all).unwrap();
    assert_eq!(cn.apply_ch_mask(all, all, &blocks).unwrap(), plan);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0], ChMaskBlock::new(0, 7));
    // And back to all channels: ChMaskCntl 6.
    assert_eq!(
        tern_mac::ch_mask_blocks(cn, plan, all, all).unwrap(),
        vec![ChMaskBlock::new(0, 6)]
    );
    // Old CN470 (96 channels): only ChMaskCntl 0-5 and 6; channels 0-7 from all on takes
    // the six 16-channel blocks that change.
    let old = Region::Cn470.params();
    let all = old.default_channel_mask();
    let first8 = band::ChannelMask::first_n(8);
    let blocks = tern_mac::ch_mask_blocks(old, all, first8, all).unwrap();
    assert_eq!(blocks.len(), 6);
    assert_eq!(old.apply_ch_mask(all, all, &blocks).unwrap(), first8);
}
