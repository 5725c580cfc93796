//! MAC command exchanges other than LinkADR. Spec sections are LoRaWAN L2 1.0.4 and 1.1;
//! expected bytes are built by hand from the command layouts of 1.0.4 §5 (frequencies as
//! 24-bit little-endian multiples of 100 Hz).

mod common;

use std::time::Duration;

use common::*;
use lorawan::MacCommand;
use lorawan::mac::{
    DevStatusAns, DeviceModeClass, DeviceModeInd, DlChannelAns, NewChannelAns, RXParamSetupAns,
    RekeyInd, ResetInd,
};
use prost::Message;
use tern_api::v3::{self, DeviceClass, MacVersion, PhyVersion};
use tern_mac::{DeviceMac, MacConfig, MacStateError, Rejection};

fn status_settings(count: u32, secs: u32) -> v3::MacSettings {
    v3::MacSettings {
        status_count_periodicity: Some(count),
        status_time_periodicity: Some(secs),
        ..Default::default()
    }
}

#[test]
fn dev_status_periodic_by_count_and_answer_1_0_4_s5_5() {
    let s = status_settings(3, 0);
    let mut mac = session("EU_863_870", MacVersion::MacV103);
    let g = gws(&[5.0]);
    let c = ctx("EU_863_870", Some(&s), &CONFIG, t0());
    for f_cnt in 0..2 {
        mac.handle_uplink(&c, &uplink(&[], &g, f_cnt, 5));
        assert!(!mac.dev_status_due(&c));
    }
    mac.handle_uplink(&c, &uplink(&[], &g, 2, 5));
    assert!(mac.dev_status_due(&c));
    // Budget 1 leaves room for DevStatusReq only (the NewChannelReqs need 6 bytes each).
    assert_eq!(hex(&mac.next_commands(&c, 1)), "06");
    // Pending: not requested again.
    mac.handle_uplink(&c, &uplink(&[], &g, 3, 5));
    assert!(!hex(&mac.next_commands(&c, 1)).contains("06"));
    // Battery 115, margin 7: the DevStatusAns `067307` of ChirpStack lrwn/src/phy_payload.rs
    // (vectors.md, 1.0.x confirmed uplink FOpts).
    let up = [MacCommand::DevStatusAns(DevStatusAns {
        battery: 115,
        margin: 7,
    })];
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 4, 5));
    assert_eq!(
        out.dev_status,
        Some(DevStatusAns {
            battery: 115,
            margin: 7
        })
    );
    assert_eq!(out.events[0].name(), "ns.mac.dev_status.answer");
    assert_eq!((mac.battery, mac.margin), (Some(115), Some(7)));
    assert_eq!(mac.uplinks_since_dev_status, 0);
    assert!(!mac.dev_status_due(&c));
}

#[test]
fn dev_status_periodic_by_time_1_0_4_s5_5() {
    let s = status_settings(0, 3600);
    let mut mac = session("EU_863_870", MacVersion::MacV103);
    let c = ctx(
        "EU_863_870",
        Some(&s),
        &CONFIG,
        t0() + Duration::from_secs(1800),
    );
    assert!(!mac.dev_status_due(&c));
    let c = ctx(
        "EU_863_870",
        Some(&s),
        &CONFIG,
        t0() + Duration::from_secs(3600),
    );
    assert!(mac.dev_status_due(&c));
    assert_eq!(hex(&mac.next_commands(&c, 1)), "06");
}

#[test]
fn unexpected_dev_status_changes_nothing() {
    let mut mac = session("EU_863_870", MacVersion::MacV103);
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let up = [MacCommand::DevStatusAns(DevStatusAns {
        battery: 1,
        margin: 0,
    })];
    let g = gws(&[5.0]);
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 0, 5));
    assert_eq!(out.events[0].rejected, vec![Rejection::Unexpected]);
    assert_eq!(mac.battery, None);
}

#[test]
fn device_time_answer_1_0_4_s5_9() {
    let mut mac = session("EU_863_870", MacVersion::MacV103);
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let up_cmds = [MacCommand::DeviceTimeReq];
    let g = gws(&[5.0]);
    let mut up = uplink(&up_cmds, &g, 0, 5);
    // GPS time from the gateway: 1 400 000 000.5 s → seconds LE 004E7253, fraction 0x80.
    up.gps_time = Some(Duration::from_millis(1_400_000_000_500));
    let out = mac.handle_uplink(&c, &up);
    assert!(out.downlink_required);
    assert_eq!(out.downlink_reasons, vec!["answer"]);
    assert_eq!(hex(&mac.next_commands(&c, 6)), "0D004E725380");
    // Without a gateway GPS time: from the reception time. 2026-01-01T00:00:00Z is GPS
    // 1 451 260 818 s (Unix − 315 964 800 + 18 leap seconds) = 0x56807B92.
    let mut up = uplink(&up_cmds, &g, 1, 5);
    up.received_at = t0();
    mac.handle_uplink(&c, &up);
    assert_eq!(hex(&mac.next_commands(&c, 6)), "0D927B805600");
}

#[test]
fn link_check_answer_1_0_4_s5_2() {
    let mut mac = session("EU_863_870", MacVersion::MacV103);
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let up_cmds = [MacCommand::LinkCheckReq];
    // DR5 = SF7 needs −7.5 dB; best SNR 7.2 → margin ⌊14.7⌋ = 14, 3 gateways.
    let g = gws(&[3.0, 7.2, -2.0]);
    let out = mac.handle_uplink(&c, &uplink(&up_cmds, &g, 0, 5));
    assert_eq!(out.events.len(), 2);
    assert_eq!(out.events[0].name(), "ns.mac.link_check.request");
    assert_eq!(out.events[1].name(), "ns.mac.link_check.answer");
    assert_eq!(hex(&mac.next_commands(&c, 3)), "020E03");
}

#[test]
fn rx_param_setup_accept_is_sticky_1_0_4_s5_4() {
    let s = v3::MacSettings {
        rx2_data_rate_index: Some(3),
        ..Default::default()
    };
    let mut mac = session("EU_863_870", MacVersion::MacV103);
    let c = ctx("EU_863_870", Some(&s), &CONFIG, t0());
    // RX1DROffset 0, RX2 DR3 → 0x03; 869.525 MHz → D2AD84.
    assert_eq!(hex(&mac.next_commands(&c, 5)), "0503D2AD84");
    let up = [MacCommand::RXParamSetupAns(RXParamSetupAns {
        rx1_dr_offset_ack: true,
        rx2_data_rate_ack: true,
        channel_ack: true,
    })];
    let g = gws(&[5.0]);
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 0, 5));
    assert!(out.events[0].rejected.is_empty());
    assert_eq!(mac.rx2(), (869_525_000, 3));
    assert!(out.downlink_required, "RXParamSetupAns needs a downlink");
    // The device repeats it until it gets a downlink: still a downlink, no state change.
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 1, 5));
    assert!(out.downlink_required);
    assert_eq!(out.downlink_reasons, vec!["sticky_answer"]);
    assert!(mac.next_commands(&c, 5).is_empty());
}

#[test]
fn rx_param_setup_reject_keeps_state_1_0_4_s5_4() {
    let s = v3::MacSettings {
        rx2_data_rate_index: Some(3),
        rx2_frequency: Some(869_100_000),
        ..Default::default()
    };
    let mut mac = session("EU_863_870", MacVersion::MacV103);
    let c = ctx("EU_863_870", Some(&s), &CONFIG, t0());
    assert_eq!(mac.next_commands(&c, 5).len(), 1);
    let up = [MacCommand::RXParamSetupAns(RXParamSetupAns {
        rx1_dr_offset_ack: true,
        rx2_data_rate_ack: true,
        channel_ack: false,
    })];
    let g = gws(&[5.0]);
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 0, 5));
    assert_eq!(out.events[0].rejected, vec![Rejection::Nack("frequency")]);
    // Any NACK: the device kept all of its RX parameters.
    assert_eq!(mac.rx2(), (869_525_000, 0));
    // The same request is not sent again; a new setting is.
    assert!(mac.next_commands(&c, 5).is_empty());
    let s2 = v3::MacSettings {
        rx2_data_rate_index: Some(3),
        ..Default::default()
    };
    let c2 = ctx("EU_863_870", Some(&s2), &CONFIG, t0());
    mac.apply_settings(&c2).unwrap();
    assert_eq!(hex(&mac.next_commands(&c2, 5)), "0503D2AD84");
}

#[test]
fn new_channel_accept_and_reject_1_0_4_s5_6() {
    // An ABP EU868 device knows the 3 default channels; the plan has 8.
    let mut mac = session("EU_863_870", MacVersion::MacV103);
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let cmds = mac.next_commands(&c, 15);
    // Channel 3 867.1 MHz, channel 4 867.3 MHz, DR0..DR5 (0x50); a third does not fit.
    assert_eq!(hex(&cmds), "0703184F84500704E8568450");
    let up = [
        MacCommand::NewChannelAns(NewChannelAns {
            data_rate_range_ok: true,
            channel_frequency_ok: true,
        }),
        MacCommand::NewChannelAns(NewChannelAns {
            data_rate_range_ok: true,
            channel_frequency_ok: false,
        }),
    ];
    let g = gws(&[5.0]);
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 0, 5));
    assert!(out.events[0].rejected.is_empty());
    assert_eq!(out.events[1].rejected, vec![Rejection::Nack("frequency")]);
    let cur = mac.current();
    assert_eq!(cur.channels[3].frequency, 867_100_000);
    assert!(cur.mask().is_enabled(3));
    assert!(cur.channels.get(4).is_none_or(|c| c.frequency == 0));
    assert!(!cur.mask().is_enabled(4));
    // Channel 4 is not asked again; channels 5 and 6 come next.
    assert_eq!(
        hex(&mac.next_commands(&c, 15)),
        "0705B85E84500706886684 50".replace(' ', "")
    );
}

#[test]
fn reset_ind_resets_abp_1_1_s5_1() {
    let mut mac = session("EU_863_870", MacVersion::MacV11);
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    mac.next_commands(&c, 15); // two NewChannelReq pending
    mac.current.as_mut().unwrap().rx1_delay = 5;
    let up = [ResetInd { minor_version: 1 }].map(MacCommand::ResetInd);
    let g = gws(&[5.0]);
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 0, 5));
    assert!(out.reset);
    assert!(out.downlink_required);
    assert!(mac.pending.is_empty());
    assert_eq!(mac.current().rx1_delay, 1);
    assert_eq!(mac.current().channels.len(), 3);
    let cmds = mac.next_commands(&c, 2);
    assert_eq!(
        hex(&cmds),
        "0101",
        "ResetConf with the server's minor version 1"
    );
}

#[test]
fn reset_ind_not_allowed_for_otaa_or_1_0() {
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let up = [ResetInd { minor_version: 1 }].map(MacCommand::ResetInd);
    let g = gws(&[5.0]);
    let mut otaa = DeviceMac::new(&c, MacVersion::MacV11, PhyVersion::Rp002V103).unwrap();
    otaa.join_accept(&c);
    let out = otaa.handle_uplink(&c, &uplink(&up, &g, 0, 5));
    assert!(!out.reset);
    assert!(matches!(
        out.events[0].rejected[0],
        Rejection::NotAllowed(_)
    ));
    let mut old = session("EU_863_870", MacVersion::MacV103);
    let out = old.handle_uplink(&c, &uplink(&up, &g, 0, 5));
    assert!(!out.reset && !out.downlink_required);
}

#[test]
fn rekey_and_device_mode_1_1_s5_10_s5_14() {
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let mut mac = DeviceMac::new(&c, MacVersion::MacV11, PhyVersion::Rp002V103).unwrap();
    mac.join_accept(&c);
    let up = [
        MacCommand::RekeyInd(RekeyInd { minor_version: 1 }),
        MacCommand::DeviceModeInd(DeviceModeInd {
            class: DeviceModeClass::C,
        }),
    ];
    let g = gws(&[5.0]);
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 0, 5));
    assert!(out.rekey);
    assert_eq!(out.class_changed, Some(DeviceClass::ClassC));
    assert_eq!(mac.device_class(), DeviceClass::ClassC);
    assert_eq!(hex(&mac.next_commands(&c, 15)), "0B012002");
}

#[test]
fn byte_budget_never_exceeded_and_answers_first() {
    let s = v3::MacSettings {
        rx1_delay: Some(5),
        rx2_data_rate_index: Some(3),
        status_count_periodicity: Some(1),
        ..Default::default()
    };
    let c = ctx("EU_863_870", Some(&s), &CONFIG, t0());
    for budget in [0usize, 1, 2, 4, 5, 9, 15, 40, 242] {
        let mut mac = session("EU_863_870", MacVersion::MacV103);
        let up = [MacCommand::LinkCheckReq, MacCommand::DeviceTimeReq];
        let g = gws(&[5.0]);
        mac.handle_uplink(&c, &uplink(&up, &g, 0, 5));
        let cmds = mac.next_commands(&c, budget);
        let len = MacCommand::encoded_len_all(&cmds);
        assert!(len <= budget, "budget {budget}: {len} bytes");
        // Answers (3 + 6 bytes) come first when they fit (SNR 5 at SF7: margin 12).
        if budget >= 9 {
            assert_eq!(&hex(&cmds)[..6], "020C01");
            assert_eq!(&hex(&cmds)[6..8], "0D");
        }
        if budget == 242 {
            // Everything: 2 answers, 5 NewChannelReq, RXParamSetup, RXTimingSetup, DevStatus.
            assert_eq!(cmds.len(), 10);
        }
    }
}

#[test]
fn pending_request_times_out_and_is_given_up() {
    let config = MacConfig {
        pending_timeout_uplinks: 2,
        max_attempts: 2,
        status_count_periodicity: 0,
        status_time_periodicity: 0,
        ..MacConfig::default()
    };
    let s = v3::MacSettings {
        rx1_delay: Some(3),
        ..Default::default()
    };
    let c = ctx("AS_923", Some(&s), &config, t0());
    let mut mac = DeviceMac::new(&c, MacVersion::MacV103, PhyVersion::Rp002V103).unwrap();
    let g = gws(&[5.0]);
    assert_eq!(hex(&mac.next_commands(&c, 2)), "0803");
    // One uplink without the answer: still pending.
    mac.handle_uplink(&c, &uplink(&[], &g, 0, 2));
    assert!(mac.next_commands(&c, 2).is_empty());
    // Second: lost; sent again.
    let out = mac.handle_uplink(&c, &uplink(&[], &g, 1, 2));
    assert!(out.timed_out.is_empty());
    assert_eq!(hex(&mac.next_commands(&c, 2)), "0803");
    mac.handle_uplink(&c, &uplink(&[], &g, 2, 2));
    let out = mac.handle_uplink(&c, &uplink(&[], &g, 3, 2));
    assert_eq!(out.timed_out, vec!["RX_TIMING_SETUP"]);
    assert!(
        mac.next_commands(&c, 2).is_empty(),
        "given up after 2 attempts"
    );
    assert_eq!(mac.current().rx1_delay, 1);
}

#[test]
fn adr_ack_req_requires_downlink_1_0_4_s4_3_1_1() {
    let mut mac = session("EU_863_870", MacVersion::MacV103);
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let g = gws(&[5.0]);
    let mut up = uplink(&[], &g, 0, 5);
    up.adr_ack_req = true;
    let out = mac.handle_uplink(&c, &up);
    assert!(out.downlink_required);
    assert!(out.downlink_reasons.contains(&"adr_ack_req"));
}

#[test]
fn state_round_trips_and_api_view() {
    let mut mac = session("US_902_928_FSB_2", MacVersion::MacV104);
    let c = ctx("US_902_928_FSB_2", None, &CONFIG, t0());
    mac.next_commands(&c, 15);
    let bytes = mac.encode_to_vec();
    let back = DeviceMac::decode_state(&bytes).unwrap();
    assert_eq!(back, mac);
    let api = back.to_api();
    assert_eq!(api.pending_requests, vec!["LINK_ADR".to_string()]);
    assert_eq!(api.lorawan_version, MacVersion::MacV104 as i32);
    assert_eq!(api.rx2_frequency, 923_300_000);
    assert_eq!(api.rx2_data_rate_index, 8);
    assert!(matches!(
        DeviceMac::decode_state(&[0xFF, 0xFF]),
        Err(MacStateError::Decode(_))
    ));
}

#[test]
fn invalid_settings_are_rejected_precisely() {
    let plan = band::FrequencyPlan::by_id("EU_863_870").unwrap();
    let s = v3::MacSettings {
        rx1_delay: Some(16),
        ..Default::default()
    };
    let e = tern_mac::validate_settings(plan, &s).unwrap_err();
    assert_eq!(
        e.to_string(),
        "mac_settings.rx1_delay: 16 s is outside 1..=15"
    );
    let s = v3::MacSettings {
        rx2_data_rate_index: Some(8),
        ..Default::default()
    };
    let e = tern_mac::validate_settings(plan, &s).unwrap_err();
    assert!(matches!(
        e,
        MacStateError::InvalidSetting {
            field: "rx2_data_rate_index",
            ..
        }
    ));
    let c = ctx("EU_863_870", Some(&s), &CONFIG, t0());
    assert!(DeviceMac::new(&c, MacVersion::MacV103, PhyVersion::Rp002V103).is_err());
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    assert!(matches!(
        DeviceMac::new(&c, MacVersion::Unknown, PhyVersion::Rp002V103),
        Err(MacStateError::InvalidVersion { .. })
    ));
}

#[test]
fn dl_channel_accept_reject_and_sticky_1_0_4_s5_10() {
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let mut mac = DeviceMac::new(&c, MacVersion::MacV103, PhyVersion::Rp002V103).unwrap();
    mac.join_accept(&c);
    mac.set_desired_dl_channel(3, 869_525_000);
    mac.set_desired_dl_channel(4, 869_525_000);
    // Channel 3 → 869.525 MHz (D2AD84), channel 4 likewise.
    assert_eq!(hex(&mac.next_commands(&c, 15)), "0A03D2AD840A04D2AD84");
    let up = [
        MacCommand::DlChannelAns(DlChannelAns {
            uplink_frequency_exists: true,
            channel_frequency_ok: true,
        }),
        MacCommand::DlChannelAns(DlChannelAns {
            uplink_frequency_exists: true,
            channel_frequency_ok: false,
        }),
    ];
    let g = gws(&[5.0]);
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 0, 5));
    assert!(out.downlink_required, "DlChannelAns is sticky");
    assert!(out.events[0].rejected.is_empty());
    assert_eq!(out.events[1].rejected, vec![Rejection::Nack("frequency")]);
    let params = band::Region::Eu868.params();
    assert_eq!(mac.rx1_frequency(params, 867_100_000).unwrap(), 869_525_000);
    assert_eq!(mac.rx1_frequency(params, 867_300_000).unwrap(), 867_300_000);
    assert!(
        mac.next_commands(&c, 15).is_empty(),
        "the rejected one is not repeated"
    );
}

#[test]
fn tx_param_setup_where_the_region_has_it_1_0_4_s5_8() {
    // An AS923 plan with the downlink dwell time on: TxParamSetupReq with DownlinkDwellTime
    // 1 (bit 5), UplinkDwellTime 1 (bit 4), MaxEIRP index 5 (16 dBm) = 0x35.
    let mut plan = band::FrequencyPlan::by_id("AS_923").unwrap().clone();
    plan.downlink_dwell_time = true;
    let plan: &'static band::FrequencyPlan = Box::leak(Box::new(plan));
    let c = tern_mac::MacContext {
        plan,
        settings: None,
        config: &CONFIG,
        now: t0(),
    };
    let mut mac = DeviceMac::new(&c, MacVersion::MacV103, PhyVersion::Rp002V103).unwrap();
    mac.join_accept(&c);
    assert_eq!(hex(&mac.next_commands(&c, 15)), "0935");
    let g = gws(&[5.0]);
    mac.handle_uplink(&c, &uplink(&[MacCommand::TxParamSetupAns], &g, 0, 2));
    assert!(mac.current().downlink_dwell_time);
    assert!(mac.next_commands(&c, 15).is_empty());
    // EU868 has no TxParamSetupReq (RP002): never sent there.
    let c = ctx("EU_863_870", None, &CONFIG, t0());
    let mut mac = DeviceMac::new(&c, MacVersion::MacV103, PhyVersion::Rp002V103).unwrap();
    mac.join_accept(&c);
    mac.desired.as_mut().unwrap().downlink_dwell_time = true;
    assert!(mac.next_commands(&c, 15).is_empty());
}

#[test]
fn duty_cycle_adr_param_rejoin_and_force_rejoin_1_1_s5_5_s5_11_to_s5_13() {
    let config = MacConfig {
        max_duty_cycle: Some(7),
        adr_ack_limit_exp: Some(7),
        ..MacConfig::default()
    };
    let c = ctx("EU_863_870", None, &config, t0());
    let mut mac = DeviceMac::new(&c, MacVersion::MacV11, PhyVersion::Rp002V103).unwrap();
    mac.join_accept(&c);
    mac.set_desired_rejoin_params(10, 4);
    mac.request_force_rejoin(lorawan::mac::ForceRejoinReq {
        period: 2,
        max_retries: 3,
        rejoin_type: 2,
        data_rate: 5,
    });
    // DutyCycleReq 1/2^7, ADRParamSetupReq limit 2^7 delay 2^5, RejoinParamSetupReq
    // MaxTimeN 10 MaxCountN 4, ForceRejoinReq (bytes as in lorawan's 1.1 command tests).
    assert_eq!(hex(&mac.next_commands(&c, 15)), "04070C750FA40E2513");
    assert!(mac.force_rejoin.is_empty(), "ForceRejoinReq is sent once");
    let up = [
        MacCommand::DutyCycleAns,
        MacCommand::ADRParamSetupAns,
        MacCommand::RejoinParamSetupAns(lorawan::mac::RejoinParamSetupAns { time_ok: false }),
    ];
    let g = gws(&[5.0]);
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 0, 5));
    assert_eq!(out.events[2].rejected, vec![Rejection::Nack("max_time_n")]);
    let cur = mac.current();
    assert_eq!(
        (
            cur.max_duty_cycle,
            cur.adr_ack_limit_exp,
            cur.adr_ack_delay_exp
        ),
        (7, 7, 5)
    );
    assert_eq!(
        (cur.rejoin_max_count_n, cur.rejoin_max_time_n),
        (Some(4), None)
    );
    assert!(mac.next_commands(&c, 15).is_empty());
    // 1.0.x sessions get none of the 1.1 commands.
    let mut old = DeviceMac::new(&c, MacVersion::MacV103, PhyVersion::Rp002V103).unwrap();
    old.join_accept(&c);
    old.set_desired_rejoin_params(10, 4);
    old.request_force_rejoin(lorawan::mac::ForceRejoinReq {
        period: 0,
        max_retries: 0,
        rejoin_type: 0,
        data_rate: 0,
    });
    assert_eq!(hex(&old.next_commands(&c, 15)), "0407");
}

#[test]
fn retransmission_does_not_count_or_reapply() {
    let s = status_settings(2, 0);
    let mut mac = session("EU_863_870", MacVersion::MacV103);
    let c = ctx("EU_863_870", Some(&s), &CONFIG, t0());
    let g = gws(&[5.0]);
    mac.handle_uplink(&c, &uplink(&[], &g, 0, 5));
    mac.handle_uplink(&c, &uplink(&[], &g, 1, 5));
    assert_eq!(hex(&mac.next_commands(&c, 1)), "06");
    let up = [MacCommand::DevStatusAns(DevStatusAns {
        battery: 200,
        margin: 3,
    })];
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 2, 5));
    assert_eq!(out.events.len(), 1);
    // The same frame again (NbTrans 2): nothing new, no "unexpected answer".
    let out = mac.handle_uplink(&c, &uplink(&up, &g, 2, 5));
    assert!(out.events.is_empty());
    assert_eq!(mac.uplinks_since_dev_status, 0);
    assert_eq!(mac.adr_history.len(), 3);
}
