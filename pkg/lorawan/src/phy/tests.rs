//! Unit tests for the PHYPayload codec. Published vectors come from /work/shared/vectors.md;
//! each test names the source the vector was taken from.

use super::*;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// Decodes, checks the round trip byte for byte, and returns the frame.
fn roundtrip(s: &str) -> PhyPayload {
    let raw = h(s);
    let phy = PhyPayload::decode(&raw).unwrap();
    assert_eq!(phy.encode().unwrap(), raw, "re-encode of {s}");
    assert_eq!(phy.encoded_len(), raw.len());
    phy
}

fn data(m_type: MType, mp: MacPayload) -> PhyPayload {
    PhyPayload {
        mhdr: Mhdr::new(m_type),
        payload: Payload::MacPayload(mp),
        mic: Some([1, 2, 3, 4]),
    }
}

fn join_accept(cf_list: Option<CfList>) -> PhyPayload {
    PhyPayload {
        mhdr: Mhdr::new(MType::JoinAccept),
        payload: Payload::JoinAccept(JoinAccept {
            join_nonce: JoinNonce::new(0x010101).unwrap(),
            home_net_id: NetId::from_u32(0x020202),
            dev_addr: DevAddr::from_u32(0x01020304),
            dl_settings: DlSettings::default(),
            rx_delay: 0,
            cf_list,
        }),
        mic: Some([0; 4]),
    }
}

// Source: npm lora-packet `__tests__/mic_test.ts` / `decrypt_test.ts`.
#[test]
fn lora_packet_unconfirmed_up() {
    let phy = roundtrip("40F17DBE4900020001954378762B11FF0D");
    assert_eq!(phy.m_type(), MType::UnconfirmedDataUp);
    assert!(phy.is_uplink());
    assert_eq!(phy.dev_addr(), Some(DevAddr::from_u32(0x49BE7DF1)));
    assert_eq!(phy.f_cnt(), Some(2));
    let mp = phy.mac_payload().unwrap();
    assert_eq!(mp.fhdr.f_ctrl, FCtrl::default());
    assert!(mp.fhdr.f_opts.is_empty());
    assert_eq!(mp.f_port, Some(1));
    assert_eq!(mp.frm_payload, h("95437876"));
    assert_eq!(phy.mic, Some([0x2B, 0x11, 0xFF, 0x0D]));
    let raw = h("40F17DBE4900020001954378762B11FF0D");
    assert_eq!(PhyPayload::mic_input(&raw), &raw[..13]);
    assert_eq!(phy.encode_mic_input().unwrap(), &raw[..13]);
}

// Source: ChirpStack `lrwn/src/phy_payload.rs` (doc example): confirmed up with FOpts
// DevStatusAns(battery 115, margin 7).
#[test]
fn chirpstack_confirmed_up_with_fopts() {
    let phy = roundtrip("80040302010300000673070AE264D4F7E117D2C0");
    assert_eq!(phy.m_type(), MType::ConfirmedDataUp);
    let mp = phy.mac_payload().unwrap();
    assert_eq!(mp.fhdr.dev_addr, DevAddr::from_u32(0x01020304));
    assert_eq!(mp.fhdr.f_cnt, 0);
    assert_eq!(mp.fhdr.f_ctrl, FCtrl::default());
    assert_eq!(mp.fhdr.f_opts.as_slice(), &[0x06, 0x73, 0x07]);
    assert_eq!(mp.f_port, Some(10));
    assert_eq!(mp.frm_payload.len(), 4);
    assert_eq!(phy.mic, Some([0xE1, 0x17, 0xD2, 0xC0]));
}

// Source: ChirpStack `lrwn/src/phy_payload.rs` (join-request MIC test).
#[test]
fn chirpstack_join_request() {
    let phy = roundtrip("0001010101010101010202020202020202030309B97B32");
    assert!(phy.is_uplink());
    assert_eq!(phy.dev_addr(), None);
    assert_eq!(
        phy.payload,
        Payload::JoinRequest(JoinRequest {
            join_eui: "0101010101010101".parse().unwrap(),
            dev_eui: "0202020202020202".parse().unwrap(),
            dev_nonce: DevNonce(771),
        })
    );
    assert_eq!(phy.mic, Some([0x09, 0xB9, 0x7B, 0x32]));
}

// Source: lora-packet `__tests__/mic_test.ts` (join-request MIC).
#[test]
fn lora_packet_join_request() {
    let phy = roundtrip("0039363463336913AA05693574323831330489C65B1304");
    let Payload::JoinRequest(jr) = phy.payload else {
        panic!("not a join-request")
    };
    assert_eq!(jr.join_eui, "AA13693363343639".parse().unwrap());
    assert_eq!(jr.dev_eui, "3331383274356905".parse().unwrap());
    assert_eq!(jr.dev_nonce, DevNonce(0x8904));
    assert_eq!(phy.mic, Some([0xC6, 0x5B, 0x13, 0x04]));
}

// Source: ChirpStack `lrwn/src/phy_payload.rs` (1.0.x join-accept, plain and encrypted).
#[test]
fn chirpstack_join_accept_1_0() {
    let phy = roundtrip("200101010202020403020100003449F212");
    assert!(!phy.is_uplink());
    assert_eq!(phy, {
        let mut p = join_accept(None);
        p.mic = Some([0x34, 0x49, 0xF2, 0x12]);
        p
    });
    let Payload::JoinAccept(ja) = phy.payload else {
        panic!()
    };
    assert_eq!(ja.rx1_delay_secs(), 1);
    // The encrypted form is parsed as it is: structurally valid, fields meaningless.
    roundtrip("2023CF335489AAE3183C0BE0BAA8DEE5F3");
}

// Source: ChirpStack `lrwn/src/phy_payload.rs` (1.1 join-accept, DLSettings 0x80 = OptNeg).
#[test]
fn chirpstack_join_accept_1_1() {
    let phy = roundtrip("2001010102020204030201800093FF9A3A");
    let Payload::JoinAccept(ja) = phy.payload else {
        panic!()
    };
    assert_eq!(
        ja.dl_settings,
        DlSettings {
            opt_neg: true,
            rx1_dr_offset: 0,
            rx2_data_rate: 0
        }
    );
    assert_eq!(phy.mic, Some([0x93, 0xFF, 0x9A, 0x3A]));
    roundtrip("207ABEEA06B02920F11C02D0348FCF1815");
}

// Source: lora-packet `__tests__/join_accept_encrypt.ts` (all-zero join-accept).
#[test]
fn lora_packet_join_accept_zero() {
    let phy = roundtrip("20000000000000000000000000F86F0A91");
    assert_eq!(phy.mic, Some([0xF8, 0x6F, 0x0A, 0x91]));
    roundtrip("20E3DE108795F776B8037610EF7869B5B3");
}

// Source: lora-packet `__tests__/mic_test.ts` (1.1 uplink MIC): FPort 0 is present and is
// followed by a 2-byte FRMPayload.
#[test]
fn lora_packet_1_1_uplink_fport_zero() {
    let phy = roundtrip("40736310E080000000C86C36165131");
    let mp = phy.mac_payload().unwrap();
    assert_eq!(mp.fhdr.dev_addr, DevAddr::from_u32(0xE0106373));
    assert_eq!(
        mp.fhdr.f_ctrl,
        FCtrl {
            adr: true,
            ..FCtrl::default()
        }
    );
    assert_eq!(mp.fhdr.f_cnt, 0);
    assert_eq!(mp.f_port, Some(0));
    assert_eq!(mp.frm_payload, h("C86C"));
    assert_eq!(phy.mic, Some([0x36, 0x16, 0x51, 0x31]));
}

#[test]
fn mtype_names_and_bits() {
    let names = [
        "JOIN_REQUEST",
        "JOIN_ACCEPT",
        "UNCONFIRMED_UP",
        "UNCONFIRMED_DOWN",
        "CONFIRMED_UP",
        "CONFIRMED_DOWN",
        "REJOIN_REQUEST",
        "PROPRIETARY",
    ];
    for (i, m) in MType::ALL.into_iter().enumerate() {
        assert_eq!(m.bits() as usize, i);
        assert_eq!(MType::from_bits(i as u8), m);
        assert_eq!(m.as_str(), names[i]);
        assert_eq!(m.to_string(), names[i]);
    }
    let up: Vec<_> = MType::ALL.into_iter().filter(|m| m.is_uplink()).collect();
    assert_eq!(
        up,
        [
            MType::JoinRequest,
            MType::UnconfirmedDataUp,
            MType::ConfirmedDataUp,
            MType::RejoinRequest
        ]
    );
}

#[test]
fn mhdr_rfu_bits_roundtrip() {
    // 0x40 | RFU 0b101 << 2 = 0x54.
    let phy = roundtrip("54F17DBE4900020001954378762B11FF0D");
    assert_eq!(phy.mhdr.rfu, 0b101);
}

// FCtrl bit 4 is ClassB up, FPending down; bit 6 is ADRACKReq up, RFU down (L2 1.0.4 §4.3.1).
#[test]
fn fctrl_direction() {
    let (up, n) = FCtrl::from_byte(0xF5, true);
    assert_eq!(n, 5);
    assert!(up.adr && up.adr_ack_req && up.ack && up.class_b && !up.f_pending);
    assert_eq!(up.to_byte(MType::ConfirmedDataUp, 5).unwrap(), 0xF5);
    let (down, _) = FCtrl::from_byte(0xF0, false);
    assert!(down.f_pending && !down.class_b && down.adr_ack_req);
    assert_eq!(down.to_byte(MType::UnconfirmedDataDown, 0).unwrap(), 0xF0);
    // Downlink with FPending and the RFU bit 6 round-trips.
    roundtrip("60040302015001000102A1B2C3D4");
}

#[test]
fn dl_settings_and_rx_delay() {
    for b in 0..=255u8 {
        assert_eq!(DlSettings::from_byte(b).to_byte().unwrap(), b);
    }
    let mut ja = match join_accept(None).payload {
        Payload::JoinAccept(ja) => ja,
        _ => unreachable!(),
    };
    ja.rx_delay = 0xF5;
    assert_eq!(ja.rx1_delay_secs(), 5);
    ja.rx_delay = 0x10;
    assert_eq!(ja.rx1_delay_secs(), 1);
}

// CFList layouts: RP002-1.0.x "CFList" (type 0: five 24-bit frequencies ×100 Hz; type 1:
// ChMask words then RFU then CFListType).
#[test]
fn cf_list_kinds() {
    // EU868 867.1, 867.3, 867.5, 867.7, 867.9 MHz: 8671000 = 0x844F18 → 18 4F 84.
    let mut b = [0u8; 16];
    for (i, f) in [8_671_000u32, 8_673_000, 8_675_000, 8_677_000, 8_679_000]
        .iter()
        .enumerate()
    {
        b[3 * i..3 * i + 3].copy_from_slice(&f.to_le_bytes()[..3]);
    }
    assert_eq!(&b[..3], &[0x18, 0x4F, 0x84]);
    let cf = CfList::from_bytes(&b);
    assert_eq!(
        cf,
        CfList::Frequencies([
            867_100_000,
            867_300_000,
            867_500_000,
            867_700_000,
            867_900_000
        ])
    );
    assert_eq!(cf.to_bytes().unwrap(), b);

    // US915 sub-band 2 (channels 8..=15 and 65): ChMask0 = 0xFF00, ChMask4 = 0x0002.
    let mut b = [0u8; 16];
    b[0..2].copy_from_slice(&0xFF00u16.to_le_bytes());
    b[8..10].copy_from_slice(&0x0002u16.to_le_bytes());
    b[15] = 1;
    let cf = CfList::from_bytes(&b);
    assert_eq!(
        cf,
        CfList::ChannelMask {
            ch_masks: [0xFF00, 0, 0, 0, 0x0002, 0],
            rfu: [0; 3]
        }
    );
    assert_eq!(cf.cf_list_type(), 1);
    assert_eq!(cf.to_bytes().unwrap(), b);

    let mut b = [0xAB; 16];
    b[15] = 7;
    let cf = CfList::from_bytes(&b);
    assert_eq!(
        cf,
        CfList::Rfu {
            cf_list_type: 7,
            bytes: [0xAB; 15]
        }
    );
    assert_eq!(cf.to_bytes().unwrap(), b);

    // Every CFList round-trips, whatever its bytes (encrypted join-accepts included).
    for t in 0..=255u8 {
        let mut b = [t.wrapping_mul(37); 16];
        b[15] = t;
        assert_eq!(CfList::from_bytes(&b).to_bytes().unwrap(), b);
    }

    let phy = join_accept(Some(CfList::Frequencies([867_100_000, 0, 0, 0, 0])));
    let raw = phy.encode().unwrap();
    assert_eq!(raw.len(), JOIN_ACCEPT_CF_LIST_LEN);
    assert_eq!(PhyPayload::decode(&raw).unwrap(), phy);
}

// Rejoin-request layouts: L2 1.1 §6.2.4 (type 0/2: NetID + DevEUI + RJcount0; type 1:
// JoinEUI + DevEUI + RJcount1).
#[test]
fn rejoin_requests() {
    for t in [0u8, 2] {
        let raw = h(&format!("C0{t:02x}030201080706050403020134120A0B0C0D"));
        let phy = PhyPayload::decode(&raw).unwrap();
        assert_eq!(
            phy.payload,
            Payload::RejoinRequest(RejoinRequest::Type0Or2 {
                rejoin_type: t,
                net_id: NetId::from_u32(0x010203),
                dev_eui: Eui64::from_u64(0x0102030405060708),
                rj_count0: 0x1234,
            })
        );
        assert_eq!(phy.encode().unwrap(), raw);
    }
    let raw = h("C001080706050403020111121314151617183412AABBCCDD");
    let phy = PhyPayload::decode(&raw).unwrap();
    let Payload::RejoinRequest(rj) = &phy.payload else {
        panic!()
    };
    assert_eq!(rj.rejoin_type(), 1);
    assert_eq!(rj.dev_eui(), Eui64::from_u64(0x1817161514131211));
    assert_eq!(
        *rj,
        RejoinRequest::Type1 {
            join_eui: Eui64::from_u64(0x0102030405060708),
            dev_eui: Eui64::from_u64(0x1817161514131211),
            rj_count1: 0x1234,
        }
    );
    assert_eq!(phy.encode().unwrap(), raw);
}

#[test]
fn proprietary_is_opaque() {
    let phy = roundtrip("E0");
    assert_eq!(phy.payload, Payload::Proprietary(vec![]));
    assert_eq!(phy.mic, None);
    let phy = roundtrip("E0AABB");
    assert_eq!(phy.payload, Payload::Proprietary(h("AABB")));
    let phy = roundtrip("FC0102030405");
    assert_eq!(phy.mhdr.rfu, 0b111);
    assert_eq!(phy.payload, Payload::Proprietary(h("0102030405")));
}

#[test]
fn data_without_fport() {
    // FHDR only: FPort absent, empty FRMPayload.
    let phy = roundtrip("A004030201040000010203040A0B0C0D");
    let mp = phy.mac_payload().unwrap();
    assert_eq!(mp.f_port, None);
    assert!(mp.frm_payload.is_empty());
    assert_eq!(mp.fhdr.f_opts.len(), 4);
    // FPort present with an empty FRMPayload is kept as such.
    let phy = roundtrip("A004030201000000050A0B0C0D");
    assert_eq!(phy.mac_payload().unwrap().f_port, Some(5));
}

#[test]
fn encode_into_appends_and_keeps_buffer_on_error() {
    let phy = PhyPayload::decode(&h("40F17DBE4900020001954378762B11FF0D")).unwrap();
    let mut buf = vec![0xEE];
    phy.encode_into(&mut buf).unwrap();
    assert_eq!(buf[0], 0xEE);
    assert_eq!(&buf[1..], h("40F17DBE4900020001954378762B11FF0D"));
    let mut bad = phy.clone();
    bad.mac_payload_mut().unwrap().f_port = None;
    let before = buf.clone();
    assert_eq!(
        bad.encode_into(&mut buf),
        Err(EncodeError::FrmPayloadWithoutFPort(4))
    );
    assert_eq!(buf, before);
}

#[test]
fn serde_shape() {
    let phy = PhyPayload::decode(&h("80040302010300000673070AE264D4F7E117D2C0")).unwrap();
    let v = serde_json::to_value(&phy).unwrap();
    assert_eq!(v["mhdr"]["m_type"], "CONFIRMED_UP");
    assert_eq!(v["mic"], "e117d2c0");
    let mp = &v["payload"]["mac_payload"];
    assert_eq!(mp["fhdr"]["dev_addr"], "01020304");
    assert_eq!(mp["fhdr"]["f_opts"], "067307");
    assert_eq!(mp["f_port"], 10);
    assert_eq!(mp["frm_payload"], "e264d4f7");
    let v = serde_json::to_value(roundtrip("E0AA")).unwrap();
    assert_eq!(v["payload"]["proprietary"], "aa");
    assert!(v["mic"].is_null());
}

// ---- one test per DecodeError variant ----

#[test]
fn decode_error_empty() {
    assert_eq!(PhyPayload::decode(&[]), Err(DecodeError::Empty));
}

#[test]
fn decode_error_too_short() {
    assert_eq!(
        PhyPayload::decode(&h("40F17DBE490002002B11FF")),
        Err(DecodeError::TooShort {
            msg_type: MType::UnconfirmedDataUp,
            min: 12,
            got: 11
        })
    );
    assert_eq!(
        PhyPayload::decode(&h("00010203")),
        Err(DecodeError::TooShort {
            msg_type: MType::JoinRequest,
            min: 23,
            got: 4
        })
    );
    assert_eq!(
        PhyPayload::decode(&[0x20; 16]),
        Err(DecodeError::TooShort {
            msg_type: MType::JoinAccept,
            min: 17,
            got: 16
        })
    );
    assert_eq!(
        PhyPayload::decode(&h("C000")),
        Err(DecodeError::TooShort {
            msg_type: MType::RejoinRequest,
            min: 19,
            got: 2
        })
    );
}

#[test]
fn decode_error_too_long() {
    let mut raw = vec![0xE0];
    raw.resize(256, 0);
    assert_eq!(
        PhyPayload::decode(&raw),
        Err(DecodeError::TooLong { max: 255, got: 256 })
    );
    raw.pop();
    assert!(PhyPayload::decode(&raw).is_ok());
}

#[test]
fn decode_error_bad_major() {
    assert_eq!(
        PhyPayload::decode(&h("41F17DBE4900020001954378762B11FF0D")),
        Err(DecodeError::BadMajor(1))
    );
    assert_eq!(PhyPayload::decode(&[0xE3]), Err(DecodeError::BadMajor(3)));
}

#[test]
fn decode_error_fopts_past_end() {
    // FOptsLen 5 but only 4 bytes between FCnt and MIC.
    assert_eq!(
        PhyPayload::decode(&h("4004030201050000010203040A0B0C0D")),
        Err(DecodeError::FOptsPastEnd {
            f_opts_len: 5,
            available: 4
        })
    );
}

#[test]
fn decode_error_fport_zero_with_fopts() {
    assert_eq!(
        PhyPayload::decode(&h("40040302010100000200AA0A0B0C0D")),
        Err(DecodeError::FPortZeroWithFOpts)
    );
}

#[test]
fn decode_error_bad_join_request_length() {
    assert_eq!(
        PhyPayload::decode(&h("0001010101010101010202020202020202030309B97B32FF")),
        Err(DecodeError::BadJoinRequestLength(24))
    );
}

#[test]
fn decode_error_bad_join_accept_length() {
    assert_eq!(
        PhyPayload::decode(&[0x20; 18]),
        Err(DecodeError::BadJoinAcceptLength(18))
    );
    assert_eq!(
        PhyPayload::decode(&[0x20; 34]),
        Err(DecodeError::BadJoinAcceptLength(34))
    );
}

#[test]
fn decode_error_bad_rejoin_type() {
    let mut raw = vec![0xC0, 3];
    raw.resize(19, 0);
    assert_eq!(PhyPayload::decode(&raw), Err(DecodeError::BadRejoinType(3)));
}

#[test]
fn decode_error_bad_rejoin_length() {
    let mut raw = vec![0xC0, 1];
    raw.resize(19, 0);
    assert_eq!(
        PhyPayload::decode(&raw),
        Err(DecodeError::BadRejoinLength {
            rejoin_type: 1,
            expected: 24,
            got: 19
        })
    );
    let mut raw = vec![0xC0, 2];
    raw.resize(24, 0);
    assert_eq!(
        PhyPayload::decode(&raw),
        Err(DecodeError::BadRejoinLength {
            rejoin_type: 2,
            expected: 19,
            got: 24
        })
    );
}

// ---- one test per EncodeError variant ----

#[test]
fn encode_error_too_long() {
    let mp = MacPayload {
        f_port: Some(1),
        frm_payload: vec![0; 243],
        ..MacPayload::default()
    };
    let phy = data(MType::UnconfirmedDataUp, mp);
    assert_eq!(
        phy.encode(),
        Err(EncodeError::TooLong { max: 255, got: 256 })
    );
    let phy = PhyPayload {
        mhdr: Mhdr::new(MType::Proprietary),
        payload: Payload::Proprietary(vec![0; 255]),
        mic: None,
    };
    assert_eq!(
        phy.encode(),
        Err(EncodeError::TooLong { max: 255, got: 256 })
    );
}

#[test]
fn encode_error_bad_major() {
    let mut phy = join_accept(None);
    phy.mhdr.major = 1;
    assert_eq!(phy.encode(), Err(EncodeError::BadMajor(1)));
}

#[test]
fn encode_error_field_out_of_range() {
    let mut phy = join_accept(None);
    phy.mhdr.rfu = 8;
    assert_eq!(
        phy.encode(),
        Err(EncodeError::FieldOutOfRange {
            field: "mhdr.rfu",
            value: 8,
            max: 7
        })
    );
    let mut phy = join_accept(None);
    if let Payload::JoinAccept(ja) = &mut phy.payload {
        ja.dl_settings.rx2_data_rate = 16;
    }
    assert_eq!(
        phy.encode(),
        Err(EncodeError::FieldOutOfRange {
            field: "dl_settings.rx2_data_rate",
            value: 16,
            max: 15
        })
    );
    assert_eq!(
        DlSettings {
            opt_neg: false,
            rx1_dr_offset: 8,
            rx2_data_rate: 0
        }
        .to_byte(),
        Err(EncodeError::FieldOutOfRange {
            field: "dl_settings.rx1_dr_offset",
            value: 8,
            max: 7
        })
    );
}

#[test]
fn encode_error_payload_mismatch() {
    let mut phy = join_accept(None);
    phy.mhdr.m_type = MType::UnconfirmedDataDown;
    assert_eq!(
        phy.encode(),
        Err(EncodeError::PayloadMismatch {
            m_type: MType::UnconfirmedDataDown,
            payload: "join_accept"
        })
    );
}

#[test]
fn encode_error_missing_mic() {
    let mut phy = join_accept(None);
    phy.mic = None;
    assert_eq!(
        phy.encode(),
        Err(EncodeError::MissingMic(MType::JoinAccept))
    );
}

#[test]
fn encode_error_unexpected_mic() {
    let phy = PhyPayload {
        mhdr: Mhdr::new(MType::Proprietary),
        payload: Payload::Proprietary(vec![1]),
        mic: Some([0; 4]),
    };
    assert_eq!(phy.encode(), Err(EncodeError::UnexpectedMic));
}

#[test]
fn encode_error_fopts_too_long() {
    assert_eq!(FOpts::new(&[0; 16]), Err(EncodeError::FOptsTooLong(16)));
    assert_eq!(FOpts::new(&[7; 15]).unwrap().len(), 15);
    assert_eq!(
        FCtrl::default().to_byte(MType::UnconfirmedDataUp, 16),
        Err(EncodeError::FOptsTooLong(16))
    );
}

#[test]
fn encode_error_fport_zero_with_fopts() {
    let mp = MacPayload {
        fhdr: Fhdr {
            f_opts: FOpts::new(&[2]).unwrap(),
            ..Fhdr::default()
        },
        f_port: Some(0),
        frm_payload: vec![],
    };
    assert_eq!(
        data(MType::UnconfirmedDataUp, mp).encode(),
        Err(EncodeError::FPortZeroWithFOpts)
    );
}

#[test]
fn encode_error_frm_payload_without_fport() {
    let mp = MacPayload {
        frm_payload: vec![1, 2],
        ..MacPayload::default()
    };
    assert_eq!(
        data(MType::ConfirmedDataDown, mp).encode(),
        Err(EncodeError::FrmPayloadWithoutFPort(2))
    );
}

#[test]
fn encode_error_fctrl_wrong_direction() {
    let mut mp = MacPayload::default();
    mp.fhdr.f_ctrl.f_pending = true;
    assert_eq!(
        data(MType::UnconfirmedDataUp, mp.clone()).encode(),
        Err(EncodeError::FCtrlWrongDirection {
            flag: "f_pending",
            m_type: MType::UnconfirmedDataUp
        })
    );
    assert!(data(MType::UnconfirmedDataDown, mp).encode().is_ok());
    let mut mp = MacPayload::default();
    mp.fhdr.f_ctrl.class_b = true;
    assert_eq!(
        data(MType::ConfirmedDataDown, mp.clone()).encode(),
        Err(EncodeError::FCtrlWrongDirection {
            flag: "class_b",
            m_type: MType::ConfirmedDataDown
        })
    );
    assert!(data(MType::ConfirmedDataUp, mp).encode().is_ok());
}

#[test]
fn encode_error_bad_rejoin_type() {
    let phy = PhyPayload {
        mhdr: Mhdr::new(MType::RejoinRequest),
        payload: Payload::RejoinRequest(RejoinRequest::Type0Or2 {
            rejoin_type: 1,
            net_id: NetId::default(),
            dev_eui: Eui64::default(),
            rj_count0: 0,
        }),
        mic: Some([0; 4]),
    };
    assert_eq!(phy.encode(), Err(EncodeError::BadRejoinType(1)));
}

#[test]
fn encode_error_bad_cf_list_frequency() {
    assert_eq!(
        join_accept(Some(CfList::Frequencies([867_100_050, 0, 0, 0, 0]))).encode(),
        Err(EncodeError::BadCfListFrequency(867_100_050))
    );
    assert_eq!(
        CfList::Frequencies([0, 0, 0, 0, 1_677_721_600]).to_bytes(),
        Err(EncodeError::BadCfListFrequency(1_677_721_600))
    );
    assert!(CfList::Frequencies([1_677_721_500; 5]).to_bytes().is_ok());
}

#[test]
fn encode_error_rfu_cf_list_type() {
    assert_eq!(
        CfList::Rfu {
            cf_list_type: 1,
            bytes: [0; 15]
        }
        .to_bytes(),
        Err(EncodeError::RfuCfListType(1))
    );
}

#[test]
fn errors_display() {
    assert_eq!(
        DecodeError::TooShort {
            msg_type: MType::JoinRequest,
            min: 23,
            got: 4
        }
        .to_string(),
        "JOIN_REQUEST PHYPayload too short: need at least 23 bytes, got 4"
    );
    assert_eq!(
        EncodeError::FCtrlWrongDirection {
            flag: "class_b",
            m_type: MType::ConfirmedDataDown
        }
        .to_string(),
        "FCtrl.class_b set on a CONFIRMED_DOWN frame"
    );
}
