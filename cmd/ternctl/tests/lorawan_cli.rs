//! Runs the `ternctl` binary on published LoRaWAN vectors (see `../shared/vectors.md` for the
//! sources) and checks its JSON output, hex output and exit codes.

use std::process::{Command, Output};

use serde_json::Value;

fn ternctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ternctl"))
        .args(args)
        .output()
        .expect("run ternctl")
}

/// Runs ternctl, expects success, returns stdout.
fn ok(args: &[&str]) -> String {
    let out = ternctl(args);
    assert!(
        out.status.success(),
        "ternctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).unwrap()
}

// lora-packet `__tests__/mic_test.ts` and `decrypt_test.ts`: the issue's acceptance command.
#[test]
fn decode_data_uplink_with_keys() {
    let out = ok(&[
        "lorawan",
        "decode",
        "40F17DBE4900020001954378762B11FF0D",
        "--nwk-s-key",
        "44024241ED4CE9A68C6A8BC055233FD3",
        "--app-s-key",
        "EC925802AE430CA77FD3DD73CB2CC588",
    ]);
    assert!(out.contains(r#""frm_payload":"74657374""#), "{out}");
    assert!(out.contains(r#""mic_valid":true"#), "{out}");
    assert_eq!(out.lines().count(), 1, "one JSON object on one line");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["m_type"], "UNCONFIRMED_UP");
    assert_eq!(v["major"], 0);
    assert_eq!(v["dev_addr"], "49be7df1");
    assert_eq!(v["f_cnt"], 2);
    assert_eq!(v["f_port"], 1);
    assert_eq!(v["mic"], "2b11ff0d");
    assert_eq!(v["f_ctrl"]["f_opts_len"], 0);
}

#[test]
fn decode_accepts_base64_and_reports_wrong_key() {
    // Same frame as above, base64; a wrong NwkSKey gives mic_valid false, not an error.
    let v = json(&[
        "lorawan",
        "decode",
        "QPF9vkkAAgABlUN4disR/w0=",
        "--nwk-s-key",
        "00000000000000000000000000000000",
    ]);
    assert_eq!(v["mic_valid"], false);
    assert_eq!(
        v["frm_payload"], "95437876",
        "still encrypted without AppSKey"
    );
    // Without any key there is no verdict on the MIC.
    let v = json(&["lorawan", "decode", "40F17DBE4900020001954378762B11FF0D"]);
    assert!(v.get("mic_valid").is_none());
}

// ChirpStack `lrwn/src/phy_payload.rs` doc example: confirmed uplink with FOpts.
#[test]
fn decode_confirmed_uplink_with_mac_commands() {
    let v = json(&[
        "lorawan",
        "decode",
        "80040302010300000673070AE264D4F7E117D2C0",
        "--nwk-s-key",
        "0102030405060708090A0B0C0D0E0F10",
        "--app-s-key",
        "100F0E0D0C0B0A090807060504030201",
    ]);
    assert_eq!(v["m_type"], "CONFIRMED_UP");
    assert_eq!(v["f_opts"], "067307");
    assert_eq!(v["f_port"], 10);
    assert_eq!(v["frm_payload"], "01020304");
    assert_eq!(v["mic_valid"], true);
    let cmds = v["mac_commands"].as_array().unwrap();
    assert_eq!(cmds.len(), 1);
    assert_eq!(cmds[0]["cid"], "DevStatusAns");
    assert_eq!(cmds[0]["battery"], 115);
    assert_eq!(cmds[0]["margin"], 7);
}

// Join-request MIC: ChirpStack `lrwn/src/phy_payload.rs`.
#[test]
fn decode_join_request() {
    let v = json(&[
        "lorawan",
        "decode",
        "0001010101010101010202020202020202030309B97B32",
        "--app-key",
        "0102030405060708090A0B0C0D0E0F10",
    ]);
    assert_eq!(v["m_type"], "JOIN_REQUEST");
    assert_eq!(v["join_eui"], "0101010101010101");
    assert_eq!(v["dev_eui"], "0202020202020202");
    assert_eq!(v["dev_nonce"], 771);
    assert_eq!(v["mic_valid"], true);
}

// 1.0 join-accept: ChirpStack `lrwn/src/phy_payload.rs` (encrypted form, AppKey 01..10).
#[test]
fn decode_encrypted_join_accept_1_0() {
    let key = "0102030405060708090A0B0C0D0E0F10";
    let v = json(&[
        "lorawan",
        "decode",
        "2023CF335489AAE3183C0BE0BAA8DEE5F3",
        "--app-key",
        key,
    ]);
    assert_eq!(v["m_type"], "JOIN_ACCEPT");
    assert_eq!(v["join_nonce"], 0x010101);
    assert_eq!(v["net_id"], "020202");
    assert_eq!(v["dev_addr"], "01020304");
    assert_eq!(v["dl_settings"]["opt_neg"], false);
    assert_eq!(v["rx_delay"], 0);
    assert_eq!(v["mic"], "3449f212");
    assert_eq!(v["mic_valid"], true);
    // Without a key it stays encrypted and no fields are guessed.
    let v = json(&["lorawan", "decode", "2023CF335489AAE3183C0BE0BAA8DEE5F3"]);
    assert_eq!(v["encrypted"], true);
    assert!(v.get("dev_addr").is_none());
}

// 1.1 join-accept: ChirpStack `lrwn/src/phy_payload.rs` (OptNeg, JSIntKey 01..10).
#[test]
fn decode_encrypted_join_accept_1_1() {
    let key = "0102030405060708090A0B0C0D0E0F10";
    let v = json(&[
        "lorawan",
        "decode",
        "207ABEEA06B02920F11C02D0348FCF1815",
        "--nwk-key",
        key,
        "--js-int-key",
        key,
        "--join-eui",
        "0807060504030201",
        "--dev-nonce",
        "258",
    ]);
    assert_eq!(v["dl_settings"]["opt_neg"], true);
    assert_eq!(v["mic"], "93ff9a3a");
    assert_eq!(v["mic_valid"], true);
}

// 1.1 two-key uplink MIC: lora-packet `__tests__/mic_test.ts`.
#[test]
fn decode_1_1_uplink_mic() {
    let v = json(&[
        "lorawan",
        "decode",
        "40736310E080000000C86C36165131",
        "--f-nwk-s-int-key",
        "E163635133105CC690CB2D57BA9C31B9",
        "--s-nwk-s-int-key",
        "05EC7C795B2F0B5BCDFA710DB52B9D8F",
        "--tx-ch",
        "1",
    ]);
    assert_eq!(v["f_ctrl"]["adr"], true);
    assert_eq!(v["mic_valid"], true);
    // TxCh is part of the 1.1 MIC: the wrong channel fails it.
    let v = json(&[
        "lorawan",
        "decode",
        "40736310E080000000C86C36165131",
        "--f-nwk-s-int-key",
        "E163635133105CC690CB2D57BA9C31B9",
        "--s-nwk-s-int-key",
        "05EC7C795B2F0B5BCDFA710DB52B9D8F",
    ]);
    assert_eq!(v["mic_valid"], false);
}

#[test]
fn encode_reproduces_published_frames() {
    // ChirpStack's confirmed uplink with FOpts, rebuilt from its fields.
    let hex = ok(&[
        "lorawan",
        "encode",
        "--m-type",
        "CONFIRMED_UP",
        "--dev-addr",
        "01020304",
        "--f-cnt",
        "0",
        "--f-opts",
        "067307",
        "--f-port",
        "10",
        "--frm-payload",
        "01020304",
        "--nwk-s-key",
        "0102030405060708090A0B0C0D0E0F10",
        "--app-s-key",
        "100F0E0D0C0B0A090807060504030201",
    ]);
    assert_eq!(hex, "80040302010300000673070ae264d4f7e117d2c0");
    // lora-packet's uplink: "test" on FPort 1, FCnt 2.
    let hex = ok(&[
        "lorawan",
        "encode",
        "--m-type",
        "unconfirmed_up",
        "--dev-addr",
        "49BE7DF1",
        "--f-cnt",
        "2",
        "--f-port",
        "1",
        "--frm-payload",
        "74657374",
        "--nwk-s-key",
        "44024241ED4CE9A68C6A8BC055233FD3",
        "--app-s-key",
        "EC925802AE430CA77FD3DD73CB2CC588",
    ]);
    assert_eq!(hex, "40f17dbe4900020001954378762b11ff0d");
    // ChirpStack's join-request.
    let hex = ok(&[
        "lorawan",
        "encode",
        "--m-type",
        "JOIN_REQUEST",
        "--join-eui",
        "0101010101010101",
        "--dev-eui",
        "0202020202020202",
        "--dev-nonce",
        "771",
        "--app-key",
        "0102030405060708090A0B0C0D0E0F10",
    ]);
    assert_eq!(hex, "0001010101010101010202020202020202030309b97b32");
}

#[test]
fn encode_then_decode_1_1_frame_with_encrypted_f_opts() {
    let keys = [
        "--f-nwk-s-int-key",
        "E163635133105CC690CB2D57BA9C31B9",
        "--s-nwk-s-int-key",
        "05EC7C795B2F0B5BCDFA710DB52B9D8F",
        "--nwk-s-enc-key",
        "0A0B0C0D0E0F00010203040506070809",
        "--app-s-key",
        "EC925802AE430CA77FD3DD73CB2CC588",
    ];
    let mut args = vec![
        "lorawan",
        "encode",
        "--m-type",
        "UNCONFIRMED_DOWN",
        "--dev-addr",
        "E0106373",
        "--f-cnt",
        "70000",
        "--f-opts",
        "020203", // LinkCheckAns: margin 2 dB, 3 gateways
        "--f-port",
        "5",
        "--frm-payload",
        "cafe",
    ];
    args.extend(keys);
    let hex = ok(&args);
    let mut args = vec!["lorawan", "decode", &hex, "--f-cnt", "65536"];
    args.extend(keys);
    let v = json(&args);
    assert_eq!(v["m_type"], "UNCONFIRMED_DOWN");
    assert_eq!(v["f_cnt"], 70000 & 0xFFFF);
    assert_eq!(v["f_opts"], "020203");
    assert_eq!(v["mac_commands"][0]["cid"], "LinkCheckAns");
    assert_eq!(v["mac_commands"][0]["gw_cnt"], 3);
    assert_eq!(v["frm_payload"], "cafe");
    assert_eq!(v["mic_valid"], true);
}

// Key derivation vectors: ChirpStack `lrwn/src/keys.rs` (1.0) and The Things Stack
// `pkg/crypto/key_derivation_test.go` (1.1).
#[test]
fn derive_keys_1_0_and_1_1() {
    let v = json(&[
        "lorawan",
        "derive-keys",
        "--app-key",
        "01020304050607080102030405060708",
        "--net-id",
        "010203",
        "--join-nonce",
        "65536",
        "--dev-nonce",
        "258",
    ]);
    assert_eq!(v["nwk_s_key"], "df53c35f3034ccced0ff354c70de04df");
    assert_eq!(v["app_s_key"], "927b9c911183cffe4cb2ff4b75545f6d");
    let v = json(&[
        "lorawan",
        "derive-keys",
        "--version",
        "1.1",
        "--nwk-key",
        "BEC499C69E9C939E413B663961636C61",
        "--app-key",
        "BEC499C69E9C939E413B663961636C61",
        "--join-nonce",
        "0xAE3B1C",
        "--join-eui",
        "0000001223224242",
        "--dev-nonce",
        "0x7369",
        "--dev-eui",
        "0042004213424341",
    ]);
    assert_eq!(v["app_s_key"], "b035cce24e4a040eb5cecbf21724412d");
    assert_eq!(v["f_nwk_s_int_key"], "379084e7ce22ff191bff4b77536f2aa3");
    assert_eq!(v["s_nwk_s_int_key"], "63c59309d53485bc5164dbf71627aeb9");
    assert_eq!(v["nwk_s_enc_key"], "ce07a009a3970ac0519a099ed53e550b");
    assert_eq!(v["js_int_key"], "cb8e9ee114c3fb5ce472a5aa13ab1855");
    assert_eq!(v["js_enc_key"], "bb711eefb9829b4a75866f8616bacd6d");
}

#[test]
fn invalid_mac_commands_are_reported_not_fatal() {
    // FOpts 0x02 0x02: a LinkCheckAns cut short (its GwCnt byte is missing).
    let v = json(&["lorawan", "decode", "6004030201020000020200000000"]);
    assert!(v.get("mac_commands").is_none());
    let err = v["mac_commands_error"].as_str().unwrap();
    assert!(
        err.contains("LinkCheckAns") || err.contains("0x02"),
        "{err}"
    );
}

#[test]
fn errors_exit_1_with_one_line() {
    for (args, needle) in [
        (vec!["lorawan", "decode", "40F17D"], "too short"),
        (
            vec!["lorawan", "decode", "not hex!"],
            "neither hex nor base64",
        ),
        (
            vec!["lorawan", "decode", "E0F17DBE4900020001954378762B11FF0D"],
            "proprietary",
        ),
        (
            vec!["lorawan", "decode", "41F17DBE4900020001954378762B11FF0D"],
            "major",
        ),
        (
            vec![
                "lorawan",
                "encode",
                "--m-type",
                "UNCONFIRMED_UP",
                "--dev-addr",
                "01020304",
                "--f-port",
                "1",
                "--frm-payload",
                "00",
            ],
            "--app-s-key",
        ),
    ] {
        let out = ternctl(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if needle == "proprietary" {
            // A proprietary frame decodes fine: opaque payload, no MIC.
            assert!(out.status.success(), "{args:?}: {stderr}");
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = ternctl(&["lorawan", "decode", "00", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    let out = ternctl(&["lorawan", "decode", "00", "--app-key", "xyz"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid hex character"));
}
