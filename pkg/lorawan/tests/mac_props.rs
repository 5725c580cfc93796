//! Property tests for `lorawan::mac`: every command round-trips through its bytes, and
//! decoding arbitrary bytes never panics.

use lorawan::Direction;
use lorawan::mac::*;
use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Union};

fn freq() -> impl Strategy<Value = u32> {
    (0u32..=0xFF_FFFF).prop_map(|v| v * 100)
}

fn class() -> impl Strategy<Value = DeviceModeClass> {
    prop_oneof![Just(DeviceModeClass::A), Just(DeviceModeClass::C)]
}

/// Every command with valid field values.
fn any_command() -> impl Strategy<Value = MacCommand> {
    use MacCommand as M;
    let b = any::<bool>;
    let arms: Vec<BoxedStrategy<MacCommand>> = vec![
        (0u8..16)
            .prop_map(|v| M::ResetInd(ResetInd { minor_version: v }))
            .boxed(),
        (0u8..16)
            .prop_map(|v| M::ResetConf(ResetConf { minor_version: v }))
            .boxed(),
        Just(M::LinkCheckReq).boxed(),
        (any::<u8>(), any::<u8>())
            .prop_map(|(margin, gw_cnt)| M::LinkCheckAns(LinkCheckAns { margin, gw_cnt }))
            .boxed(),
        (0u8..16, 0u8..16, any::<u16>(), 0u8..8, 0u8..16)
            .prop_map(|(data_rate, tx_power, ch_mask, ch_mask_cntl, nb_trans)| {
                M::LinkADRReq(LinkADRReq {
                    data_rate,
                    tx_power,
                    ch_mask,
                    ch_mask_cntl,
                    nb_trans,
                })
            })
            .boxed(),
        (b(), b(), b())
            .prop_map(|(power_ack, data_rate_ack, channel_mask_ack)| {
                M::LinkADRAns(LinkADRAns {
                    power_ack,
                    data_rate_ack,
                    channel_mask_ack,
                })
            })
            .boxed(),
        (0u8..16)
            .prop_map(|v| M::DutyCycleReq(DutyCycleReq { max_duty_cycle: v }))
            .boxed(),
        Just(M::DutyCycleAns).boxed(),
        (0u8..8, 0u8..16, freq())
            .prop_map(|(rx1_dr_offset, rx2_data_rate, frequency)| {
                M::RXParamSetupReq(RXParamSetupReq {
                    rx1_dr_offset,
                    rx2_data_rate,
                    frequency,
                })
            })
            .boxed(),
        (b(), b(), b())
            .prop_map(|(a, d, c)| {
                M::RXParamSetupAns(RXParamSetupAns {
                    rx1_dr_offset_ack: a,
                    rx2_data_rate_ack: d,
                    channel_ack: c,
                })
            })
            .boxed(),
        Just(M::DevStatusReq).boxed(),
        (any::<u8>(), -32i8..=31)
            .prop_map(|(battery, margin)| M::DevStatusAns(DevStatusAns { battery, margin }))
            .boxed(),
        (any::<u8>(), freq(), 0u8..16, 0u8..16)
            .prop_map(|(ch_index, frequency, min_dr, max_dr)| {
                M::NewChannelReq(NewChannelReq {
                    ch_index,
                    frequency,
                    min_dr,
                    max_dr,
                })
            })
            .boxed(),
        (b(), b())
            .prop_map(|(d, c)| {
                M::NewChannelAns(NewChannelAns {
                    data_rate_range_ok: d,
                    channel_frequency_ok: c,
                })
            })
            .boxed(),
        (0u8..16)
            .prop_map(|delay| M::RXTimingSetupReq(RXTimingSetupReq { delay }))
            .boxed(),
        Just(M::RXTimingSetupAns).boxed(),
        (b(), b(), 0u8..16)
            .prop_map(|(d, u, max_eirp)| {
                M::TxParamSetupReq(TxParamSetupReq {
                    downlink_dwell_time: d,
                    uplink_dwell_time: u,
                    max_eirp,
                })
            })
            .boxed(),
        Just(M::TxParamSetupAns).boxed(),
        (any::<u8>(), freq())
            .prop_map(|(ch_index, frequency)| {
                M::DlChannelReq(DlChannelReq {
                    ch_index,
                    frequency,
                })
            })
            .boxed(),
        (b(), b())
            .prop_map(|(u, c)| {
                M::DlChannelAns(DlChannelAns {
                    uplink_frequency_exists: u,
                    channel_frequency_ok: c,
                })
            })
            .boxed(),
        (0u8..16)
            .prop_map(|v| M::RekeyInd(RekeyInd { minor_version: v }))
            .boxed(),
        (0u8..16)
            .prop_map(|v| M::RekeyConf(RekeyConf { minor_version: v }))
            .boxed(),
        (0u8..16, 0u8..16)
            .prop_map(|(limit_exp, delay_exp)| {
                M::ADRParamSetupReq(ADRParamSetupReq {
                    limit_exp,
                    delay_exp,
                })
            })
            .boxed(),
        Just(M::ADRParamSetupAns).boxed(),
        Just(M::DeviceTimeReq).boxed(),
        (any::<u32>(), any::<u8>())
            .prop_map(|(gps_seconds, fractional)| {
                M::DeviceTimeAns(DeviceTimeAns {
                    gps_seconds,
                    fractional,
                })
            })
            .boxed(),
        (0u8..8, 0u8..8, 0u8..8, 0u8..16)
            .prop_map(|(period, max_retries, rejoin_type, data_rate)| {
                M::ForceRejoinReq(ForceRejoinReq {
                    period,
                    max_retries,
                    rejoin_type,
                    data_rate,
                })
            })
            .boxed(),
        (0u8..16, 0u8..16)
            .prop_map(|(max_time_n, max_count_n)| {
                M::RejoinParamSetupReq(RejoinParamSetupReq {
                    max_time_n,
                    max_count_n,
                })
            })
            .boxed(),
        b().prop_map(|time_ok| M::RejoinParamSetupAns(RejoinParamSetupAns { time_ok }))
            .boxed(),
        (0u8..8)
            .prop_map(|periodicity| M::PingSlotInfoReq(PingSlotInfoReq { periodicity }))
            .boxed(),
        Just(M::PingSlotInfoAns).boxed(),
        (freq(), 0u8..16)
            .prop_map(|(frequency, data_rate)| {
                M::PingSlotChannelReq(PingSlotChannelReq {
                    frequency,
                    data_rate,
                })
            })
            .boxed(),
        (b(), b())
            .prop_map(|(d, c)| {
                M::PingSlotChannelAns(PingSlotChannelAns {
                    data_rate_ok: d,
                    channel_frequency_ok: c,
                })
            })
            .boxed(),
        Just(M::BeaconTimingReq).boxed(),
        (any::<u16>(), any::<u8>())
            .prop_map(|(delay, channel)| M::BeaconTimingAns(BeaconTimingAns { delay, channel }))
            .boxed(),
        freq()
            .prop_map(|frequency| M::BeaconFreqReq(BeaconFreqReq { frequency }))
            .boxed(),
        b().prop_map(|ok| {
            M::BeaconFreqAns(BeaconFreqAns {
                beacon_frequency_ok: ok,
            })
        })
        .boxed(),
        class()
            .prop_map(|class| M::DeviceModeInd(DeviceModeInd { class }))
            .boxed(),
        class()
            .prop_map(|class| M::DeviceModeConf(DeviceModeConf { class }))
            .boxed(),
    ];
    Union::new(arms)
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::Uplink), Just(Direction::Downlink)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn one_command_round_trips(cmd in any_command()) {
        let mut bytes = Vec::new();
        cmd.encode(&mut bytes).unwrap();
        prop_assert_eq!(bytes.len(), cmd.encoded_len());
        prop_assert_eq!(bytes[0], cmd.cid());
        prop_assert_eq!(payload_len(cmd.direction(), cmd.cid()), Some(bytes.len() - 1));
        let decoded = MacCommand::decode_all(cmd.direction(), &bytes).unwrap();
        prop_assert_eq!(decoded, vec![cmd]);
        // JSON round trip as well (what ternctl prints).
        let json = serde_json::to_string(&cmd).unwrap();
        let back: MacCommand = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, cmd);
        let prefix = format!("{{\"cid\":\"{}\"", cmd.name());
        prop_assert!(json.starts_with(&prefix), "{} lacks {}", json, prefix);
    }

    #[test]
    fn sequences_round_trip_per_direction(
        cmds in proptest::collection::vec(any_command(), 0..12),
        dir in direction(),
    ) {
        let cmds: Vec<MacCommand> = cmds.into_iter().filter(|c| c.direction() == dir).collect();
        let mut bytes = Vec::new();
        MacCommand::encode_all(&cmds, &mut bytes).unwrap();
        prop_assert_eq!(bytes.len(), MacCommand::encoded_len_all(&cmds));
        prop_assert_eq!(MacCommand::decode_all(dir, &bytes).unwrap(), cmds);
    }

    #[test]
    fn decoding_random_bytes_never_panics(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            // Mostly-valid CIDs with random payload bytes of random length, to get deep.
            proptest::collection::vec(
                (prop_oneof![1u8..=0x13, Just(0x20u8)], proptest::collection::vec(any::<u8>(), 0..6)),
                0..10,
            )
            .prop_map(|parts| parts.into_iter().flat_map(|(c, p)| std::iter::once(c).chain(p)).collect()),
        ],
        dir in direction(),
    ) {
        match MacCommand::decode_all(dir, &bytes) {
            Ok(cmds) => {
                // Whatever decodes re-encodes to the same length (RFU bits may differ).
                let mut out = Vec::new();
                MacCommand::encode_all(&cmds, &mut out).unwrap();
                prop_assert_eq!(out.len(), bytes.len());
                // And re-decodes to the same commands.
                prop_assert_eq!(MacCommand::decode_all(dir, &out).unwrap(), cmds);
            }
            Err(MacError::UnknownCid { cid, direction, offset }) => {
                prop_assert_eq!(direction, dir);
                prop_assert_eq!(bytes[offset], cid);
                prop_assert_eq!(payload_len(dir, cid), None);
            }
            Err(MacError::Truncated { cid, needed, available }) => {
                prop_assert!(available < needed);
                prop_assert_eq!(payload_len(dir, cid), Some(needed));
            }
            Err(MacError::InvalidField { .. }) => {}
        }
    }

    #[test]
    fn off_grid_frequencies_are_rejected(hz in any::<u32>()) {
        let cmd = MacCommand::BeaconFreqReq(BeaconFreqReq { frequency: hz });
        let ok = hz % 100 == 0 && hz <= MAX_FREQUENCY_HZ;
        prop_assert_eq!(cmd.encode(&mut Vec::new()).is_ok(), ok);
    }

    #[test]
    fn margin_range_enforced(margin in any::<i8>()) {
        let cmd = MacCommand::DevStatusAns(DevStatusAns { battery: 1, margin });
        prop_assert_eq!(cmd.encode(&mut Vec::new()).is_ok(), (-32..=31).contains(&margin));
    }
}

/// Every CID with a command in some direction is covered by the generator.
#[test]
fn every_known_cid_is_generated() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::HashSet;
    let mut runner = TestRunner::deterministic();
    let strat = any_command();
    let mut seen = HashSet::new();
    for _ in 0..5000 {
        let c = strat.new_tree(&mut runner).unwrap().current();
        seen.insert((c.direction() == Direction::Uplink, c.cid()));
    }
    for dir in [Direction::Uplink, Direction::Downlink] {
        for cid in 0..=255u8 {
            if payload_len(dir, cid).is_some() {
                assert!(
                    seen.contains(&(dir == Direction::Uplink, cid)),
                    "{dir} CID 0x{cid:02X} not generated"
                );
            }
        }
    }
    assert_eq!(seen.len(), 39);
}
