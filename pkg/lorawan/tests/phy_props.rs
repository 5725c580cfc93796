//! Property tests for the PHYPayload codec: every valid frame round-trips through
//! encode/decode, and decoding arbitrary bytes never panics and is lossless when it succeeds.

use lorawan::phy::{
    CfList, DlSettings, FCtrl, FOpts, Fhdr, JoinAccept, JoinRequest, MType, MacPayload, Mhdr,
    Payload, PhyPayload, RejoinRequest,
};
use lorawan::{DevAddr, DevNonce, Eui64, JoinNonce, NetId};
use proptest::prelude::*;

fn eui() -> impl Strategy<Value = Eui64> {
    any::<u64>().prop_map(Eui64::from_u64)
}

fn net_id() -> impl Strategy<Value = NetId> {
    (0u32..=0xFF_FFFF).prop_map(NetId::from_u32)
}

fn mhdr(m_type: MType) -> impl Strategy<Value = Mhdr> {
    (0u8..8).prop_map(move |rfu| Mhdr {
        m_type,
        rfu,
        major: 0,
    })
}

fn cf_list() -> impl Strategy<Value = CfList> {
    prop_oneof![
        proptest::array::uniform5(0u32..=0xFF_FFFF)
            .prop_map(|f| CfList::Frequencies(f.map(|x| x * 100))),
        (proptest::array::uniform6(any::<u16>()), any::<[u8; 3]>())
            .prop_map(|(ch_masks, rfu)| CfList::ChannelMask { ch_masks, rfu }),
        (2u8..=255, any::<[u8; 15]>()).prop_map(|(cf_list_type, bytes)| CfList::Rfu {
            cf_list_type,
            bytes
        }),
    ]
}

fn join_request() -> impl Strategy<Value = PhyPayload> {
    (
        mhdr(MType::JoinRequest),
        eui(),
        eui(),
        any::<u16>(),
        any::<[u8; 4]>(),
    )
        .prop_map(|(mhdr, join_eui, dev_eui, n, mic)| PhyPayload {
            mhdr,
            payload: Payload::JoinRequest(JoinRequest {
                join_eui,
                dev_eui,
                dev_nonce: DevNonce(n),
            }),
            mic: Some(mic),
        })
}

fn join_accept() -> impl Strategy<Value = PhyPayload> {
    (
        mhdr(MType::JoinAccept),
        0u32..=JoinNonce::MAX,
        net_id(),
        any::<u32>(),
        any::<u8>(),
        any::<u8>(),
        proptest::option::of(cf_list()),
        any::<[u8; 4]>(),
    )
        .prop_map(
            |(mhdr, jn, home_net_id, addr, dl, rx_delay, cf_list, mic)| PhyPayload {
                mhdr,
                payload: Payload::JoinAccept(JoinAccept {
                    join_nonce: JoinNonce::new(jn).unwrap(),
                    home_net_id,
                    dev_addr: DevAddr::from_u32(addr),
                    dl_settings: DlSettings::from_byte(dl),
                    rx_delay,
                    cf_list,
                }),
                mic: Some(mic),
            },
        )
}

fn rejoin_request() -> impl Strategy<Value = PhyPayload> {
    let rj = prop_oneof![
        (
            prop_oneof![Just(0u8), Just(2u8)],
            net_id(),
            eui(),
            any::<u16>()
        )
            .prop_map(|(rejoin_type, net_id, dev_eui, rj_count0)| {
                RejoinRequest::Type0Or2 {
                    rejoin_type,
                    net_id,
                    dev_eui,
                    rj_count0,
                }
            }),
        (eui(), eui(), any::<u16>()).prop_map(|(join_eui, dev_eui, rj_count1)| {
            RejoinRequest::Type1 {
                join_eui,
                dev_eui,
                rj_count1,
            }
        }),
    ];
    (mhdr(MType::RejoinRequest), rj, any::<[u8; 4]>()).prop_map(|(mhdr, rj, mic)| PhyPayload {
        mhdr,
        payload: Payload::RejoinRequest(rj),
        mic: Some(mic),
    })
}

fn data_frame() -> impl Strategy<Value = PhyPayload> {
    let m_type = prop_oneof![
        Just(MType::UnconfirmedDataUp),
        Just(MType::UnconfirmedDataDown),
        Just(MType::ConfirmedDataUp),
        Just(MType::ConfirmedDataDown),
    ];
    (
        m_type,
        0u8..8,
        any::<u32>(),
        any::<[bool; 4]>(),
        any::<u16>(),
        proptest::collection::vec(any::<u8>(), 0..=15),
        // FPort: None, Some(0) or Some(1..=255); FRMPayload up to 200 bytes.
        prop_oneof![Just(None), Just(Some(0u8)), (1u8..=255).prop_map(Some)],
        proptest::collection::vec(any::<u8>(), 0..=200),
        any::<[u8; 4]>(),
    )
        .prop_map(
            |(m_type, rfu, addr, [adr, adr_ack_req, ack, bit4], f_cnt, fopts, f_port, frm, mic)| {
                let uplink = m_type.is_uplink();
                // FPort 0 only with empty FOpts; no FRMPayload without FPort.
                let fopts = if f_port == Some(0) { vec![] } else { fopts };
                let frm_payload = if f_port.is_none() { vec![] } else { frm };
                PhyPayload {
                    mhdr: Mhdr {
                        m_type,
                        rfu,
                        major: 0,
                    },
                    payload: Payload::MacPayload(MacPayload {
                        fhdr: Fhdr {
                            dev_addr: DevAddr::from_u32(addr),
                            f_ctrl: FCtrl {
                                adr,
                                adr_ack_req,
                                ack,
                                f_pending: bit4 && !uplink,
                                class_b: bit4 && uplink,
                            },
                            f_cnt,
                            f_opts: FOpts::new(&fopts).unwrap(),
                        },
                        f_port,
                        frm_payload,
                    }),
                    mic: Some(mic),
                }
            },
        )
}

fn proprietary() -> impl Strategy<Value = PhyPayload> {
    (
        mhdr(MType::Proprietary),
        proptest::collection::vec(any::<u8>(), 0..=254),
    )
        .prop_map(|(mhdr, bytes)| PhyPayload {
            mhdr,
            payload: Payload::Proprietary(bytes),
            mic: None,
        })
}

fn any_frame() -> impl Strategy<Value = PhyPayload> {
    prop_oneof![
        1 => join_request(),
        1 => join_accept(),
        1 => rejoin_request(),
        3 => data_frame(),
        1 => proprietary(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encode_then_decode_is_identity(phy in any_frame()) {
        let raw = phy.encode().unwrap();
        prop_assert_eq!(raw.len(), phy.encoded_len());
        prop_assert_eq!(PhyPayload::decode(&raw).unwrap(), phy.clone());
        let mut buf = vec![0xAA, 0xBB];
        phy.encode_into(&mut buf).unwrap();
        prop_assert_eq!(&buf[2..], &raw[..]);
        if phy.mic.is_some() {
            prop_assert_eq!(PhyPayload::mic_input(&raw), &phy.encode_mic_input().unwrap()[..]);
        } else {
            prop_assert_eq!(phy.encode_mic_input().unwrap(), raw);
        }
    }

    #[test]
    fn decode_random_bytes_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(phy) = PhyPayload::decode(&raw) {
            prop_assert_eq!(phy.encode().unwrap(), raw);
        }
    }

    // Random bodies behind every MHDR value (so each message type gets exercised far more
    // often than with fully random bytes), at lengths around the interesting boundaries.
    #[test]
    fn decode_random_body_per_mhdr(
        mhdr in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut raw = vec![mhdr];
        raw.extend_from_slice(&body);
        if let Ok(phy) = PhyPayload::decode(&raw) {
            prop_assert_eq!(phy.encode().unwrap(), raw);
        }
    }

    // Flipping any byte of a valid frame never makes decoding panic.
    #[test]
    fn decode_mutated_frames(phy in any_frame(), pos in any::<prop::sample::Index>(), val in any::<u8>()) {
        let mut raw = phy.encode().unwrap();
        if !raw.is_empty() {
            let i = pos.index(raw.len());
            raw[i] = val;
        }
        if let Ok(phy) = PhyPayload::decode(&raw) {
            prop_assert_eq!(phy.encode().unwrap(), raw);
        }
    }
}
