//! HandleJoin and GetAppSKey through the in-process links, on an embedded store: published
//! vectors end to end, nonce rules across restarts, refusals, rejoins, key wrapping.

mod common;

use common::*;
use lorawan::crypto::{self, JOIN_REQ_TYPE_JOIN_REQUEST};
use lorawan::{DevNonce, JoinNonce, NetId};
use prost::Message;
use tern_api::v3::{self, MacVersion};
use tern_events::Filter;
use tonic::Code;

const V103: MacVersion = MacVersion::MacV103;
const V11: MacVersion = MacVersion::MacV11;

/// Vectors: ChirpStack `lrwn/src/phy_payload.rs` (join-request MIC and 1.0.x join-accept)
/// and lora-packet `__tests__/mic_test.ts` (join-request MIC), via /work/shared/vectors.md.
#[tokio::test]
async fn join_request_and_join_accept_vectors_1_0() {
    let dir = tempfile::tempdir().unwrap();
    let env = open(dir.path(), config("")).await;
    let ns = env.js.ns_link();

    // ChirpStack: the join-request verifies with the AppKey, and with JoinNonce 0x010101,
    // NetID 020202, DevAddr 01020304, DLSettings 0, RxDelay 0 the join-accept is the vector.
    let app_key = key("0102030405060708090A0B0C0D0E0F10");
    let (join_eui, dev_eui) = (eui("0101010101010101"), eui("0202020202020202"));
    provision(
        &env.js,
        "cs-dev",
        join_eui,
        dev_eui,
        V103,
        Some(app_key),
        None,
    )
    .await;
    seed_join_nonce(&env.store, join_eui, dev_eui, 0x010100).await;
    let raw = hex::decode("0001010101010101010202020202020202030309B97B32").unwrap();
    assert_eq!(raw, join_request(&app_key, join_eui, dev_eui, 771));
    let response = ns.handle_join(request(raw, [2, 2, 2], V103)).await.unwrap();
    assert_eq!(
        hex::encode_upper(&response.raw_payload),
        "2023CF335489AAE3183C0BE0BAA8DEE5F3"
    );

    // lora-packet: a join-request with its published MIC is accepted.
    let app_key = key("98929B92C49EDBA9676D646D3B612456");
    let raw = hex::decode("0039363463336913AA05693574323831330489C65B1304").unwrap();
    let (join_eui, dev_eui) = (eui("AA13693363343639"), eui("3331383274356905"));
    provision(
        &env.js,
        "lp-dev",
        join_eui,
        dev_eui,
        V103,
        Some(app_key),
        None,
    )
    .await;
    let response = ns
        .handle_join(request(raw, [0, 0, 0x13], V103))
        .await
        .unwrap();
    let plain = crypto::decrypt_join_accept(&app_key, &response.raw_payload).unwrap();
    let mic = crypto::join_accept_mic_1_0(&app_key, &plain[..plain.len() - 4]);
    assert_eq!(&plain[plain.len() - 4..], &mic);
    assert_eq!(join_nonce_of(&plain), 1);
}

/// Vectors: ChirpStack `lrwn/src/keys.rs` and lora-packet `__tests__/key_gen_test.ts`
/// (1.0.x session keys), via /work/shared/vectors.md.
#[tokio::test]
async fn session_key_vectors_1_0() {
    let dir = tempfile::tempdir().unwrap();
    let env = open(dir.path(), config("")).await;
    let ns = env.js.ns_link();
    for (i, (app_key, net_id, join_nonce, dev_nonce, nwk_s_key, app_s_key)) in [
        (
            "01020304050607080102030405060708",
            [0x01, 0x02, 0x03],
            65536u32,
            258u16,
            "DF53C35F3034CCCED0FF354C70DE04DF",
            "927B9C911183CFFE4CB2FF4B75545F6D",
        ),
        (
            "98929B92C49EDBA9676D646D3B612456",
            [0xAA, 0xBB, 0xCC],
            0x376338,
            0xF18E,
            "4E3D6E6AFBCC67AF2BA3C8E8EC4ACF4B",
            "610897AA6F1460623443B527D3AC6A9D",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let app_key = key(app_key);
        let (join_eui, dev_eui) = (
            eui("70B3D57ED0000001"),
            eui(&format!("00000000000000{i:02x}")),
        );
        provision(
            &env.js,
            &format!("dev-{i}"),
            join_eui,
            dev_eui,
            V103,
            Some(app_key),
            None,
        )
        .await;
        seed_join_nonce(&env.store, join_eui, dev_eui, join_nonce - 1).await;
        let raw = join_request(&app_key, join_eui, dev_eui, dev_nonce);
        let response = ns.handle_join(request(raw, net_id, V103)).await.unwrap();
        let keys = response.session_keys.unwrap();
        assert_eq!(
            hex::encode_upper(ns_key(&keys.f_nwk_s_int_key).0),
            nwk_s_key
        );
        assert_eq!(hex::encode_upper(as_key(&keys.app_s_key).0), app_s_key);
        assert!(keys.s_nwk_s_int_key.is_none() && keys.nwk_s_enc_key.is_none());
        let plain = crypto::decrypt_join_accept(&app_key, &response.raw_payload).unwrap();
        assert_eq!(join_nonce_of(&plain), join_nonce);
        assert_eq!(plain[11] & 0x80, 0, "no OptNeg for 1.0.x");
    }
}

/// Vector: The Things Stack `pkg/crypto/key_derivation_test.go` (1.1 session keys, JSIntKey,
/// JSEncKey), via /work/shared/vectors.md; then a rejoin-request type 1 on that device.
#[tokio::test]
async fn session_key_vectors_1_1_and_rejoin_type_1() {
    let dir = tempfile::tempdir().unwrap();
    let env = open(dir.path(), config("ns:test")).await;
    let ns = env.js.ns_link();
    let k = key("BEC499C69E9C939E413B663961636C61");
    let (join_eui, dev_eui) = (eui("0000001223224242"), eui("0042004213424341"));
    let js_int_key = key("CB8E9EE114C3FB5CE472A5AA13AB1855");
    let js_enc_key = key("BB711EEFB9829B4A75866F8616BACD6D");
    provision(&env.js, "tts-dev", join_eui, dev_eui, V11, Some(k), Some(k)).await;
    seed_join_nonce(&env.store, join_eui, dev_eui, 0xAE3B1B).await;

    let raw = join_request(&k, join_eui, dev_eui, 0x7369);
    let response = ns
        .handle_join(request(raw, [0, 0, 0x13], V11))
        .await
        .unwrap();
    let keys = response.session_keys.clone().unwrap();
    assert_eq!(keys.f_nwk_s_int_key.as_ref().unwrap().kek_label, "ns:test");
    assert_eq!(
        hex::encode_upper(ns_key(&keys.f_nwk_s_int_key).0),
        "379084E7CE22FF191BFF4B77536F2AA3"
    );
    assert_eq!(
        hex::encode_upper(ns_key(&keys.s_nwk_s_int_key).0),
        "63C59309D53485BC5164DBF71627AEB9"
    );
    assert_eq!(
        hex::encode_upper(ns_key(&keys.nwk_s_enc_key).0),
        "CE07A009A3970AC0519A099ED53E550B"
    );
    assert_eq!(
        hex::encode_upper(as_key(&keys.app_s_key).0),
        "B035CCE24E4A040EB5CECBF21724412D"
    );
    // The join-accept: encrypted with the NwkKey, OptNeg set, MIC with the JSIntKey.
    let plain = crypto::decrypt_join_accept(&k, &response.raw_payload).unwrap();
    assert_eq!(join_nonce_of(&plain), 0xAE3B1C);
    assert_eq!(plain[11] & 0x80, 0x80, "OptNeg");
    let (fields, mic) = plain.split_at(plain.len() - 4);
    let expected = crypto::join_accept_mic_1_1(
        &js_int_key,
        JOIN_REQ_TYPE_JOIN_REQUEST,
        join_eui,
        DevNonce(0x7369),
        fields,
    );
    assert_eq!(mic, expected);

    // Rejoin type 1: MIC with the JSIntKey; the answer is encrypted with the JSEncKey and
    // its MIC covers JoinReqType 1 and RJcount1; keys derive with RJcount1 as the nonce.
    let raw = rejoin_1(&js_int_key, join_eui, dev_eui, 1);
    let response = ns
        .handle_join(request(raw.clone(), [0, 0, 0x13], V11))
        .await
        .unwrap();
    let plain = crypto::decrypt_join_accept(&js_enc_key, &response.raw_payload).unwrap();
    let (fields, mic) = plain.split_at(plain.len() - 4);
    assert_eq!(
        mic,
        crypto::join_accept_mic_1_1(&js_int_key, 1, join_eui, DevNonce(1), fields)
    );
    let jn = JoinNonce::new(join_nonce_of(&plain)).unwrap();
    assert_eq!(jn.get(), 0xAE3B1D);
    let expected = crypto::derive_session_keys_1_1(&k, &k, jn, join_eui, DevNonce(1));
    let keys = response.session_keys.unwrap();
    assert_eq!(ns_key(&keys.s_nwk_s_int_key), expected.s_nwk_s_int_key);
    assert_eq!(as_key(&keys.app_s_key), expected.app_s_key);

    // The same RJcount1 again is a replay.
    let err = ns
        .handle_join(request(raw, [0, 0, 0x13], V11))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains("RJcount1 1"), "{}", err.message());
    // A higher one is accepted; a wrong key is a MIC mismatch.
    ns.handle_join(request(
        rejoin_1(&js_int_key, join_eui, dev_eui, 2),
        [0, 0, 0x13],
        V11,
    ))
    .await
    .unwrap();
    let err = ns
        .handle_join(request(
            rejoin_1(&k, join_eui, dev_eui, 3),
            [0, 0, 0x13],
            V11,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("MIC mismatch"), "{}", err.message());
}

#[tokio::test]
async fn device_1_1_on_a_1_0_network_joins_without_opt_neg() {
    let dir = tempfile::tempdir().unwrap();
    let env = open(dir.path(), config("")).await;
    let (nwk_key, app_key) = (
        key("000102030405060708090A0B0C0D0E0F"),
        key("0F0E0D0C0B0A09080706050403020100"),
    );
    let (join_eui, dev_eui) = (eui("70B3D57ED0000000"), eui("0004A30B001C0530"));
    provision(
        &env.js,
        "dev-11",
        join_eui,
        dev_eui,
        V11,
        Some(app_key),
        Some(nwk_key),
    )
    .await;
    let raw = join_request(&nwk_key, join_eui, dev_eui, 1);
    let response = env
        .js
        .ns_link()
        .handle_join(request(raw, [0, 0, 0x13], V103))
        .await
        .unwrap();
    // LoRaWAN 1.1 §6.2.3 without OptNeg: 1.0 derivation, MIC and encryption with the NwkKey.
    let plain = crypto::decrypt_join_accept(&nwk_key, &response.raw_payload).unwrap();
    assert_eq!(plain[11] & 0x80, 0);
    let (fields, mic) = plain.split_at(plain.len() - 4);
    assert_eq!(mic, crypto::join_accept_mic_1_0(&nwk_key, fields));
    let expected = crypto::derive_session_keys_1_0(
        &nwk_key,
        JoinNonce::new(1).unwrap(),
        NetId::from_u32(0x13),
        DevNonce(1),
    );
    let keys = response.session_keys.unwrap();
    assert_eq!(ns_key(&keys.f_nwk_s_int_key), expected.nwk_s_key);
    assert_eq!(as_key(&keys.app_s_key), expected.app_s_key);
}

#[tokio::test]
async fn dev_nonce_reuse_1_0_is_refused_across_restarts_and_join_nonce_persists() {
    let dir = tempfile::tempdir().unwrap();
    let app_key = key("2B7E151628AED2A6ABF7158809CF4F3C");
    let (join_eui, dev_eui) = (eui("70B3D57ED0000000"), eui("0004A30B001C0531"));
    let join = |nonce| {
        request(
            join_request(&app_key, join_eui, dev_eui, nonce),
            [0, 0, 0x13],
            V103,
        )
    };
    let accepted_nonce = |r: v3::JoinResponse| {
        join_nonce_of(&crypto::decrypt_join_accept(&app_key, &r.raw_payload).unwrap())
    };

    let env = open(dir.path(), config("")).await;
    provision(
        &env.js,
        "dev-10",
        join_eui,
        dev_eui,
        V103,
        Some(app_key),
        None,
    )
    .await;
    let ns = env.js.ns_link();
    assert_eq!(accepted_nonce(ns.handle_join(join(5)).await.unwrap()), 1);
    let err = ns.handle_join(join(5)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("DevNonce 5"), "{}", err.message());
    // 1.0.x nonces are random: a lower one is fine if unused.
    assert_eq!(accepted_nonce(ns.handle_join(join(3)).await.unwrap()), 2);
    env.close().await;

    let env = open(dir.path(), config("")).await;
    let ns = env.js.ns_link();
    for nonce in [5, 3] {
        let err = ns.handle_join(join(nonce)).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::AlreadyExists,
            "DevNonce {nonce} after restart"
        );
    }
    // Refused joins used no JoinNonce; the counter continues where it was.
    assert_eq!(accepted_nonce(ns.handle_join(join(7)).await.unwrap()), 3);
}

#[tokio::test]
async fn dev_nonce_1_1_must_increase_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (nwk_key, app_key) = (
        key("11111111111111111111111111111111"),
        key("22222222222222222222222222222222"),
    );
    let (join_eui, dev_eui) = (eui("70B3D57ED0000000"), eui("0004A30B001C0532"));
    let join = |nonce| {
        request(
            join_request(&nwk_key, join_eui, dev_eui, nonce),
            [0, 0, 0x13],
            V11,
        )
    };

    let env = open(dir.path(), config("")).await;
    provision(
        &env.js,
        "dev-11",
        join_eui,
        dev_eui,
        V11,
        Some(app_key),
        Some(nwk_key),
    )
    .await;
    let ns = env.js.ns_link();
    ns.handle_join(join(10)).await.unwrap();
    for nonce in [10, 9] {
        let err = ns.handle_join(join(nonce)).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        assert!(
            err.message().contains(&format!("DevNonce {nonce}"))
                && err.message().contains("last accepted DevNonce 10"),
            "{}",
            err.message()
        );
    }
    ns.handle_join(join(11)).await.unwrap();
    env.close().await;

    let env = open(dir.path(), config("")).await;
    let ns = env.js.ns_link();
    assert_eq!(
        ns.handle_join(join(11)).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    let plain = crypto::decrypt_join_accept(
        &nwk_key,
        &ns.handle_join(join(12)).await.unwrap().raw_payload,
    )
    .unwrap();
    assert_eq!(join_nonce_of(&plain), 3);
}

#[tokio::test]
async fn wrong_mic_unknown_device_and_bad_input_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("");
    cfg.join_euis = vec!["70B3D57ED0000000/40".into()];
    let env = open(dir.path(), cfg).await;
    let ns = env.js.ns_link();
    let mut events = env
        .events
        .subscribe(Filter::all().name("js.join.*"))
        .await
        .unwrap();
    let app_key = key("2B7E151628AED2A6ABF7158809CF4F3C");
    let (join_eui, dev_eui) = (eui("70B3D57ED0000000"), eui("0004A30B001C0533"));
    provision(
        &env.js,
        "dev-x",
        join_eui,
        dev_eui,
        V103,
        Some(app_key),
        None,
    )
    .await;

    let wrong = key("00000000000000000000000000000001");
    let err = ns
        .handle_join(request(
            join_request(&wrong, join_eui, dev_eui, 1),
            [0, 0, 0x13],
            V103,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("MIC mismatch"), "{}", err.message());
    let event = events.recv().await.unwrap();
    assert_eq!(event.name, "js.join.reject");
    assert!(event.correlation_ids.iter().any(|c| c == "ns:uplink:test"));
    assert!(
        event
            .correlation_ids
            .iter()
            .any(|c| c.starts_with("js:join:"))
    );
    assert_eq!(event.identifiers.len(), 1, "the device is named");

    let err = ns
        .handle_join(request(
            join_request(&app_key, join_eui, eui("0004A30B001C0599"), 1),
            [0, 0, 0x13],
            V103,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("70b3d57ed0000000") && err.message().contains("0004a30b001c0599"),
        "{}",
        err.message()
    );
    let err = ns
        .handle_join(request(
            join_request(&app_key, eui("70B3D57ED1000000"), dev_eui, 1),
            [0, 0, 0x13],
            V103,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("not served"), "{}", err.message());

    let mut bad = request(
        join_request(&app_key, join_eui, dev_eui, 1),
        [0, 0, 0x13],
        V103,
    );
    bad.dev_addr = vec![1, 2, 3];
    let err = ns.handle_join(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("dev_addr"), "{}", err.message());
    let mut bad = request(
        join_request(&app_key, join_eui, dev_eui, 1),
        [0, 0, 0x13],
        V103,
    );
    bad.raw_payload.truncate(20);
    let err = ns.handle_join(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("raw_payload"),
        "{}",
        err.message()
    );

    // None of that used DevNonce 1 or a JoinNonce.
    let response = ns
        .handle_join(request(
            join_request(&app_key, join_eui, dev_eui, 1),
            [0, 0, 0x13],
            V103,
        ))
        .await
        .unwrap();
    let plain = crypto::decrypt_join_accept(&app_key, &response.raw_payload).unwrap();
    assert_eq!(join_nonce_of(&plain), 1);
    loop {
        let event = events.recv().await.unwrap();
        if event.name == "js.join.accept" {
            assert_eq!(event.data_type, "tern.v3.JoinRequest");
            break;
        }
    }
}

#[tokio::test]
async fn app_s_key_never_reaches_the_ns_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    for ns_label in ["ns:test", ""] {
        let env = open(
            &dir.path().join(format!("s{}", ns_label.len())),
            config(ns_label),
        )
        .await;
        let (nwk_key, app_key) = (
            key("0A0B0C0D0E0F00010203040506070809"),
            key("A0B0C0D0E0F000102030405060708090"),
        );
        let (join_eui, dev_eui) = (eui("70B3D57ED0000000"), eui("0004A30B001C0534"));
        provision(
            &env.js,
            "dev-k",
            join_eui,
            dev_eui,
            V11,
            Some(app_key),
            Some(nwk_key),
        )
        .await;
        let response = env
            .js
            .ns_link()
            .handle_join(request(
                join_request(&nwk_key, join_eui, dev_eui, 1),
                [0, 0, 0x13],
                V11,
            ))
            .await
            .unwrap();
        let keys = response.session_keys.clone().unwrap();

        // The AS fetches the AppSKey by session key ID, wrapped for it.
        let fetched = env
            .js
            .as_link()
            .get_app_s_key(v3::SessionKeyRequest {
                session_key_id: keys.session_key_id.clone(),
                dev_eui: dev_eui.0.to_vec(),
                join_eui: join_eui.0.to_vec(),
            })
            .await
            .unwrap();
        let app_s_key = as_key(&fetched.app_s_key);
        assert_eq!(app_s_key, as_key(&keys.app_s_key));

        let encoded = response.encode_to_vec();
        assert!(
            !encoded.windows(16).any(|w| w == app_s_key.0),
            "clear AppSKey in the NsJs response (ns label {ns_label:?})"
        );
        let network = [
            &keys.f_nwk_s_int_key,
            &keys.s_nwk_s_int_key,
            &keys.nwk_s_enc_key,
        ];
        for k in network {
            let clear = ns_key(k);
            assert_eq!(
                encoded.windows(16).any(|w| w == clear.0),
                ns_label.is_empty(),
                "network keys clear exactly when the NS has no KEK"
            );
        }

        // Another device's EUIs, or an unknown session: not found.
        let err = env
            .js
            .as_link()
            .get_app_s_key(v3::SessionKeyRequest {
                session_key_id: keys.session_key_id.clone(),
                dev_eui: eui("0004A30B001C0535").0.to_vec(),
                join_eui: join_eui.0.to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = env
            .js
            .as_link()
            .get_app_s_key(v3::SessionKeyRequest {
                session_key_id: vec![1; 16],
                dev_eui: dev_eui.0.to_vec(),
                join_eui: join_eui.0.to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        env.close().await;
    }
}

#[tokio::test]
async fn rejoin_types_0_and_2() {
    let dir = tempfile::tempdir().unwrap();
    let env = open(dir.path(), config("")).await;
    let ns = env.js.ns_link();
    let (nwk_key, app_key) = (
        key("0123456789ABCDEF0123456789ABCDEF"),
        key("FEDCBA9876543210FEDCBA9876543210"),
    );
    let (join_eui, dev_eui) = (eui("70B3D57ED0000000"), eui("0004A30B001C0536"));
    let js_enc_key = crypto::derive_js_enc_key(&nwk_key, dev_eui);
    let js_int_key = crypto::derive_js_int_key(&nwk_key, dev_eui);
    let net_id = [0, 0, 0x13];

    // Unknown before any session.
    let err = ns
        .handle_join(request(
            rejoin_0_2(&nwk_key, 0, net_id, dev_eui, 1),
            net_id,
            V11,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    provision(
        &env.js,
        "dev-r",
        join_eui,
        dev_eui,
        V11,
        Some(app_key),
        Some(nwk_key),
    )
    .await;
    let first = ns
        .handle_join(request(
            join_request(&nwk_key, join_eui, dev_eui, 1),
            net_id,
            V11,
        ))
        .await
        .unwrap();
    let s1 = ns_key(&first.session_keys.unwrap().s_nwk_s_int_key);

    // Type 0 signed with the session's SNwkSIntKey.
    let raw = rejoin_0_2(&s1, 0, net_id, dev_eui, 1);
    let response = ns
        .handle_join(request(raw.clone(), net_id, V11))
        .await
        .unwrap();
    let plain = crypto::decrypt_join_accept(&js_enc_key, &response.raw_payload).unwrap();
    let (fields, mic) = plain.split_at(plain.len() - 4);
    assert_eq!(
        mic,
        crypto::join_accept_mic_1_1(&js_int_key, 0, join_eui, DevNonce(1), fields)
    );
    let s2 = ns_key(&response.session_keys.unwrap().s_nwk_s_int_key);
    assert_ne!(s1, s2);

    // The same RJcount0 in the same session is a replay; type 2 with a higher one is not.
    let err = ns.handle_join(request(raw, net_id, V11)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("RJcount0 1"), "{}", err.message());
    let response = ns
        .handle_join(request(rejoin_0_2(&s1, 2, net_id, dev_eui, 2), net_id, V11))
        .await
        .unwrap();
    let plain = crypto::decrypt_join_accept(&js_enc_key, &response.raw_payload).unwrap();
    let (fields, mic) = plain.split_at(plain.len() - 4);
    assert_eq!(
        mic,
        crypto::join_accept_mic_1_1(&js_int_key, 2, join_eui, DevNonce(2), fields)
    );
    let s3 = ns_key(&response.session_keys.unwrap().s_nwk_s_int_key);

    // A new session starts its RJcount0 afresh; a wrong key is a MIC mismatch.
    ns.handle_join(request(rejoin_0_2(&s3, 0, net_id, dev_eui, 1), net_id, V11))
        .await
        .unwrap();
    let err = ns
        .handle_join(request(
            rejoin_0_2(&nwk_key, 0, net_id, dev_eui, 9),
            net_id,
            V11,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A 1.0.x device has no rejoins.
    let (je, de) = (eui("70B3D57ED0000000"), eui("0004A30B001C0537"));
    provision(&env.js, "dev-10", je, de, V103, Some(app_key), None).await;
    let err = ns
        .handle_join(request(rejoin_1(&app_key, je, de, 1), net_id, V11))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn the_store_holds_no_clear_keys() {
    let dir = tempfile::tempdir().unwrap();
    let env = open(dir.path(), config("")).await;
    let (nwk_key, app_key) = (
        key("5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A"),
        key("A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5"),
    );
    let (join_eui, dev_eui) = (eui("70B3D57ED0000000"), eui("0004A30B001C0538"));
    provision(
        &env.js,
        "dev-s",
        join_eui,
        dev_eui,
        V11,
        Some(app_key),
        Some(nwk_key),
    )
    .await;
    let response = env
        .js
        .ns_link()
        .handle_join(request(
            join_request(&nwk_key, join_eui, dev_eui, 1),
            [0, 0, 0x13],
            V11,
        ))
        .await
        .unwrap();
    let keys = response.session_keys.unwrap();
    let mut secrets = vec![nwk_key, app_key, as_key(&keys.app_s_key)];
    for k in [
        &keys.f_nwk_s_int_key,
        &keys.s_nwk_s_int_key,
        &keys.nwk_s_enc_key,
    ] {
        secrets.push(ns_key(k));
    }
    let mut records = 0;
    for table in [
        &tern_store::tables::JS_DEVICES,
        &tern_store::tables::SESSION_KEYS,
        &tern_store::tables::DEV_NONCES,
        &tern_store::tables::JOIN_NONCES,
        &tern_joinserver::REJOIN_STATE,
    ] {
        for record in env.store.scan(table, "", None, 100).await.unwrap().items {
            records += 1;
            for secret in &secrets {
                assert!(
                    !record.value.windows(16).any(|w| w == secret.0),
                    "clear key in {} {}",
                    table.name,
                    record.key
                );
            }
        }
    }
    assert_eq!(records, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_with_one_dev_nonce_accept_exactly_one() {
    let dir = tempfile::tempdir().unwrap();
    let env = open(dir.path(), config("")).await;
    let app_key = key("2B7E151628AED2A6ABF7158809CF4F3C");
    let (join_eui, dev_eui) = (eui("70B3D57ED0000000"), eui("0004A30B001C0539"));
    provision(
        &env.js,
        "dev-c",
        join_eui,
        dev_eui,
        V103,
        Some(app_key),
        None,
    )
    .await;
    let ns = env.js.ns_link();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let ns = ns.clone();
            let req = request(
                join_request(&app_key, join_eui, dev_eui, 42),
                [0, 0, 0x13],
                V103,
            );
            tokio::spawn(async move { ns.handle_join(req).await })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(e) => assert_eq!(e.code(), Code::AlreadyExists, "{e:?}"),
        }
    }
    assert_eq!(accepted, 1);
}
