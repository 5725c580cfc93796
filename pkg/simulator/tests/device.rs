//! The simulated device against published LoRaWAN vectors (sources cited per test, from
//! ../shared/vectors.md), and a downlink round trip built with the network's primitives.

use lorawan::crypto::{self, Direction, SessionKeys10};
use lorawan::mac::DevStatusAns;
use lorawan::phy::{FCtrl, FOpts, Fhdr, MacPayload, Mhdr, Payload};
use lorawan::{Aes128Key, DevAddr, Eui64, MType, MacCommand, PhyPayload};
use tern_simulator::{Device, DeviceConfig, Keys, SimError, Uplink, Version};

fn key(h: &str) -> Aes128Key {
    Aes128Key(hex::decode(h).unwrap().try_into().unwrap())
}

fn eui(h: &str) -> Eui64 {
    h.parse().unwrap()
}

fn abp_1_0(dev_addr: &str, nwk: &str, app: &str) -> Device {
    let config = DeviceConfig::otaa(
        eui("0000000000000001"),
        eui("0000000000000002"),
        Version::V1_0,
        key("00000000000000000000000000000000"),
    );
    Device::abp(
        config,
        dev_addr.parse().unwrap(),
        Keys::V1_0(SessionKeys10 {
            nwk_s_key: key(nwk),
            app_s_key: key(app),
        }),
    )
}

/// ChirpStack `lrwn/src/phy_payload.rs`: AppKey 0102…10, JoinEUI 0101…, DevEUI 0202…,
/// DevNonce 771.
#[test]
fn join_request_matches_the_published_frame() {
    let mut config = DeviceConfig::otaa(
        eui("0202020202020202"),
        eui("0101010101010101"),
        Version::V1_0,
        key("0102030405060708090A0B0C0D0E0F10"),
    );
    config.first_dev_nonce = 771;
    let mut device = Device::new(config);
    let frame = device.join_request().unwrap();
    assert_eq!(
        hex::encode_upper(frame),
        "0001010101010101010202020202020202030309B97B32"
    );
}

/// ChirpStack `lrwn/src/phy_payload.rs`: the 1.0.x join-accept encrypted with AppKey 0102…10
/// (JoinNonce 0x010101, NetID 020202, DevAddr 01020304).
#[test]
fn join_accept_is_decrypted_and_checked() {
    let mut device = Device::new(DeviceConfig::otaa(
        eui("0202020202020202"),
        eui("0101010101010101"),
        Version::V1_0,
        key("0102030405060708090A0B0C0D0E0F10"),
    ));
    let accept = hex::decode("2023CF335489AAE3183C0BE0BAA8DEE5F3").unwrap();
    assert!(matches!(
        device.accept_join(&accept),
        Err(SimError::NoJoinRequest)
    ));
    device.join_request().unwrap();
    let mut corrupted = accept.clone();
    corrupted[5] ^= 1;
    assert!(device.accept_join(&corrupted).is_err());
    let session = device.accept_join(&accept).unwrap();
    assert_eq!(session.dev_addr, "01020304".parse::<DevAddr>().unwrap());
    assert_eq!(session.rx1_delay, 1);
    assert_eq!(session.f_cnt_up, 0);
}

/// ChirpStack `lrwn/src/phy_payload.rs` (doc example): confirmed uplink, FCnt 0, FOpts
/// DevStatusAns(115, 7), FPort 10, payload 01020304.
#[test]
fn confirmed_uplink_with_f_opts_matches_the_published_frame() {
    let mut device = abp_1_0(
        "01020304",
        "0102030405060708090A0B0C0D0E0F10",
        "100F0E0D0C0B0A090807060504030201",
    );
    let frame = device
        .uplink(&Uplink {
            f_port: Some(10),
            payload: vec![1, 2, 3, 4],
            confirmed: true,
            f_opts: vec![MacCommand::DevStatusAns(DevStatusAns {
                battery: 115,
                margin: 7,
            })],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        hex::encode_upper(frame),
        "80040302010300000673070AE264D4F7E117D2C0"
    );
    assert_eq!(device.session().unwrap().f_cnt_up, 1);
}

/// npm lora-packet `__tests__/mic_test.ts` / `decrypt_test.ts`: unconfirmed uplink, DevAddr
/// 49BE7DF1, FCnt 2, FPort 1, "test".
#[test]
fn unconfirmed_uplink_matches_the_published_frame() {
    let mut device = abp_1_0(
        "49BE7DF1",
        "44024241ED4CE9A68C6A8BC055233FD3",
        "EC925802AE430CA77FD3DD73CB2CC588",
    );
    device.set_f_cnt_up(2).unwrap();
    let frame = device
        .uplink(&Uplink {
            f_port: Some(1),
            payload: b"test".to_vec(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        hex::encode_upper(frame),
        "40F17DBE4900020001954378762B11FF0D"
    );
}

/// A confirmed downlink as the network builds it: accepted once, refused as a replay, the
/// next uplink acknowledges it, and a frame with a broken MIC changes nothing.
#[test]
fn downlink_round_trip_replay_and_ack() {
    let nwk = key("0102030405060708090A0B0C0D0E0F10");
    let app = key("100F0E0D0C0B0A090807060504030201");
    let dev_addr: DevAddr = "01020304".parse().unwrap();
    let mut device = abp_1_0(
        "01020304",
        "0102030405060708090A0B0C0D0E0F10",
        "100F0E0D0C0B0A090807060504030201",
    );
    let build = |f_cnt: u32, payload: &[u8]| {
        let mut frm = payload.to_vec();
        crypto::encrypt_frm_payload(&app, Direction::Downlink, dev_addr, f_cnt, &mut frm);
        let phy = PhyPayload {
            mhdr: Mhdr::new(MType::ConfirmedDataDown),
            payload: Payload::MacPayload(MacPayload {
                fhdr: Fhdr {
                    dev_addr,
                    f_ctrl: FCtrl::default(),
                    f_cnt: f_cnt as u16,
                    f_opts: FOpts::new(&[0x02, 0x0A, 0x03]).unwrap(), // LinkCheckAns(10, 3)
                },
                f_port: Some(5),
                frm_payload: frm,
            }),
            mic: Some([0; 4]),
        };
        let mut bytes = phy.encode_mic_input().unwrap();
        let mic = crypto::downlink_mic(&nwk, 0, dev_addr, f_cnt, &bytes);
        bytes.extend_from_slice(&mic);
        bytes
    };

    let frame = build(7, b"hello");
    let mut broken = frame.clone();
    *broken.last_mut().unwrap() ^= 0xFF;
    assert!(matches!(
        device.downlink(&broken),
        Err(SimError::MicMismatch(_))
    ));

    let down = device.downlink(&frame).unwrap();
    assert_eq!(down.payload, b"hello");
    assert_eq!(down.f_port, Some(5));
    assert_eq!(down.f_cnt, 7);
    assert!(down.confirmed);
    assert_eq!(down.commands.len(), 1);
    assert_eq!(down.commands[0].name(), "LinkCheckAns");
    assert!(matches!(
        device.downlink(&frame),
        Err(SimError::Replay { f_cnt: 7 })
    ));

    let up = device.uplink(&Uplink::default()).unwrap();
    let parsed = PhyPayload::decode(&up).unwrap();
    assert!(parsed.mac_payload().unwrap().fhdr.f_ctrl.ack);
    let next = device.uplink(&Uplink::default()).unwrap();
    let parsed = PhyPayload::decode(&next).unwrap();
    assert!(!parsed.mac_payload().unwrap().fhdr.f_ctrl.ack);
}

/// A 1.1 device joined with OptNeg: the session keys come from the 1.1 derivation, and
/// RekeyInd rides in the uplinks (encrypted FOpts) until RekeyConf.
#[test]
fn one_one_join_derives_one_one_keys_and_sends_rekey_ind() {
    let nwk_key = key("01020304050607080102030405060708");
    let app_key = key("00000000000000000000000000000000");
    let join_eui = eui("0807060504030201");
    let dev_eui = eui("0102030405060708");
    let mut config = DeviceConfig::otaa(dev_eui, join_eui, Version::V1_1, app_key);
    config.nwk_key = Some(nwk_key);
    config.first_dev_nonce = 258;
    let mut device = Device::new(config);
    device.join_request().unwrap();

    // The join-accept a 1.1 network sends: JoinNonce 65536, OptNeg, MIC with the JSIntKey.
    let dev_nonce = lorawan::DevNonce(258);
    let join_nonce = lorawan::JoinNonce::new(65536).unwrap();
    let phy = PhyPayload {
        mhdr: Mhdr::new(MType::JoinAccept),
        payload: Payload::JoinAccept(lorawan::phy::JoinAccept {
            join_nonce,
            home_net_id: "000013".parse().unwrap(),
            dev_addr: "26011234".parse().unwrap(),
            dl_settings: lorawan::phy::DlSettings {
                opt_neg: true,
                rx1_dr_offset: 0,
                rx2_data_rate: 0,
            },
            rx_delay: 5,
            cf_list: None,
        }),
        mic: Some([0; 4]),
    };
    let mut plain = phy.encode_mic_input().unwrap();
    let js_int = crypto::derive_js_int_key(&nwk_key, dev_eui);
    let mic = crypto::join_accept_mic_1_1(&js_int, 0xFF, join_eui, dev_nonce, &plain);
    plain.extend_from_slice(&mic);
    let encrypted = crypto::encrypt_join_accept(&nwk_key, &plain).unwrap();

    let session = device.accept_join(&encrypted).unwrap().clone();
    assert_eq!(session.rx1_delay, 5);
    // ChirpStack `lrwn/src/keys.rs` 1.1 derivation (vectors.md): the same root keys,
    // JoinEUI, JoinNonce and DevNonce give this AppSKey and FNwkSIntKey.
    let Keys::V1_1(keys) = session.keys else {
        panic!("a 1.1 session")
    };
    assert_eq!(
        hex::encode_upper(keys.app_s_key.0),
        "01621215D1CA08FEBF0C602CC2AD90FA"
    );
    assert_eq!(
        hex::encode_upper(keys.f_nwk_s_int_key.0),
        "537F8AAE896C79E015D102D06286354E"
    );

    let up = device.uplink(&Uplink::default()).unwrap();
    let parsed = PhyPayload::decode(&up).unwrap();
    let mut f_opts = parsed
        .mac_payload()
        .unwrap()
        .fhdr
        .f_opts
        .as_slice()
        .to_vec();
    crypto::encrypt_f_opts(
        &keys.nwk_s_enc_key,
        Direction::Uplink,
        session.dev_addr,
        0,
        &mut f_opts,
        crypto::FOptsCounterVariant::Original,
    )
    .unwrap();
    let commands = MacCommand::decode_all(Direction::Uplink, &f_opts).unwrap();
    assert_eq!(commands[0].name(), "RekeyInd");
    let mic = crypto::uplink_mic_1_1(
        &keys.f_nwk_s_int_key,
        &keys.s_nwk_s_int_key,
        0,
        0,
        0,
        session.dev_addr,
        0,
        PhyPayload::mic_input(&up),
    );
    assert_eq!(&up[up.len() - 4..], &mic);
}
