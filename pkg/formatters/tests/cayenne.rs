//! CayenneLPP vectors.
//!
//! Sources:
//! - [LPP] myDevices Cayenne LPP documentation, "Examples" section
//!   (developers.mydevices.com/cayenne/docs/lora/#lora-cayenne-low-power-payload-examples):
//!   device with 2 temperature sensors, temperature sensor, accelerometer, GPS.
//! - [TTS] The Things Stack documentation, "CayenneLPP" payload formatter page
//!   (thethingsindustries.com/docs/integrations/payload-formatters/cayenne/): the
//!   `03 67 01 10 05 67 00 FF` and `AHMnvwBnAN4=` (barometer + temperature) examples.

use serde_json::json;
use tern_formatters::cayenne::{self, CayenneError};
use tern_formatters::{
    DownlinkBytes, DownlinkInput, FormatterError, FormatterKind, Formatters, UplinkInput,
};

fn hex(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).expect("hex vector")
}

#[test]
fn lpp_doc_two_temperature_sensors() {
    // [LPP] / [TTS]: 03 67 01 10 05 67 00 FF.
    let bytes = hex("03 67 01 10 05 67 00 FF");
    let decoded = cayenne::decode(&bytes).unwrap();
    assert_eq!(
        decoded,
        json!({"temperature_3": 27.2, "temperature_5": 25.5})
    );
    assert_eq!(cayenne::encode(&decoded).unwrap(), bytes);
}

#[test]
fn lpp_doc_negative_temperature() {
    // [LPP]: 01 67 FF D7 -> -4.1 °C on channel 1.
    let bytes = hex("01 67 FF D7");
    assert_eq!(
        cayenne::decode(&bytes).unwrap(),
        json!({"temperature_1": -4.1})
    );
    assert_eq!(
        cayenne::encode(&json!({"temperature_1": -4.1})).unwrap(),
        bytes
    );
}

#[test]
fn lpp_doc_accelerometer() {
    // [LPP]: 06 71 04 D2 FB 2E 00 00 -> x +1.234 G, y -1.234 G, z 0 G on channel 6.
    let bytes = hex("06 71 04 D2 FB 2E 00 00");
    let decoded = cayenne::decode(&bytes).unwrap();
    assert_eq!(
        decoded,
        json!({"accelerometer_6": {"x": 1.234, "y": -1.234, "z": 0.0}})
    );
    assert_eq!(cayenne::encode(&decoded).unwrap(), bytes);
}

#[test]
fn lpp_doc_gps() {
    // [LPP]: 01 88 06 76 5F F2 96 0A 00 03 E8 -> 42.3519 N, 87.9094 W, 10 m.
    let bytes = hex("01 88 06 76 5F F2 96 0A 00 03 E8");
    let decoded = cayenne::decode(&bytes).unwrap();
    assert_eq!(
        decoded,
        json!({"gps_1": {"latitude": 42.3519, "longitude": -87.9094, "altitude": 10.0}})
    );
    assert_eq!(cayenne::encode(&decoded).unwrap(), bytes);
}

#[test]
fn tts_doc_barometer_and_temperature() {
    // [TTS]: frm_payload "AHMnvwBnAN4=" = 00 73 27 BF 00 67 00 DE.
    let bytes = hex("00 73 27 BF 00 67 00 DE");
    assert_eq!(
        cayenne::decode(&bytes).unwrap(),
        json!({"barometric_pressure_0": 1017.5, "temperature_0": 22.2})
    );
}

#[test]
fn truncated_and_unknown_records_are_precise_errors() {
    assert_eq!(
        cayenne::decode(&hex("03 67 01")),
        Err(CayenneError::Truncated {
            offset: 2,
            channel: 3,
            name: "temperature",
            need: 2,
            have: 1
        })
    );
    assert_eq!(
        cayenne::decode(&hex("03 67 01 10 05")),
        Err(CayenneError::TruncatedHeader { offset: 4 })
    );
    assert_eq!(
        cayenne::decode(&hex("03 67 01 10 04 FE 00")),
        Err(CayenneError::UnknownType {
            offset: 4,
            channel: 4,
            type_id: 0xfe
        })
    );
    assert_eq!(cayenne::decode(&[]).unwrap(), json!({}));
}

#[test]
fn encode_refuses_bad_keys_and_values() {
    let err = cayenne::encode(&json!({"temperature": 1})).unwrap_err();
    assert!(matches!(err, CayenneError::BadKey { ref key, .. } if key == "temperature"));
    let err = cayenne::encode(&json!({"temperature_256": 1})).unwrap_err();
    assert!(err.to_string().contains("0..=255"), "{err}");
    let err = cayenne::encode(&json!({"wind_1": 1})).unwrap_err();
    assert!(err.to_string().contains("unknown sensor `wind`"), "{err}");
    let err = cayenne::encode(&json!({"temperature_1": 5000})).unwrap_err();
    assert_eq!(
        err.to_string(),
        "field `temperature_1`: 5000 is out of range -3276.8..=3276.7"
    );
    let err = cayenne::encode(&json!({"gps_1": {"latitude": 1.0}})).unwrap_err();
    assert!(
        err.to_string().contains("`longitude` must be a number"),
        "{err}"
    );
    assert_eq!(cayenne::encode(&json!([1])), Err(CayenneError::NotAnObject));
}

#[test]
fn extended_types_and_digital_outputs() {
    let data = json!({
        "digital_out_2": 1,
        "switch_3": 0,
        "colour_4": {"r": 255, "g": 128, "b": 0},
        "unixtime_5": 1_700_000_000u32,
        "voltage_6": 3.3,
        "luminosity_7": 20304,
        "relative_humidity_8": 86.5,
    });
    let bytes = cayenne::encode(&data).unwrap();
    assert_eq!(&bytes[..3], &[2, 1, 1], "records are ordered by channel");
    assert_eq!(cayenne::decode(&bytes).unwrap(), data);
    // Booleans encode as 0/1.
    assert_eq!(
        cayenne::encode(&json!({"digital_out_1": true})).unwrap(),
        vec![1, 1, 1]
    );
}

#[test]
fn through_the_engine() {
    let engine = Formatters::default();
    let decoded = engine
        .decode_uplink(
            &FormatterKind::CayenneLpp,
            &UplinkInput {
                bytes: hex("03 67 01 10 05 67 00 FF"),
                f_port: 1,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        decoded.data,
        json!({"temperature_3": 27.2, "temperature_5": 25.5})
    );
    let encoded = engine
        .encode_downlink(
            &FormatterKind::CayenneLpp,
            &DownlinkInput {
                data: json!({"digital_out_4": 1}),
                f_port: Some(3),
                variables: None,
            },
        )
        .unwrap();
    assert_eq!(
        (encoded.bytes.as_slice(), encoded.f_port),
        (&[4, 1, 1][..], Some(3))
    );
    let back = engine
        .decode_downlink(
            &FormatterKind::CayenneLpp,
            &DownlinkBytes {
                bytes: encoded.bytes,
                f_port: 3,
                variables: None,
            },
        )
        .unwrap();
    assert_eq!(back.data, json!({"digital_out_4": 1}));
    let err = engine
        .decode_uplink(
            &FormatterKind::CayenneLpp,
            &UplinkInput {
                bytes: vec![1, 0x67, 0],
                f_port: 1,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(
        err,
        FormatterError::Cayenne(CayenneError::Truncated { .. })
    ));
    assert_eq!(
        engine
            .metrics()
            .runs("cayennelpp", "decode_uplink", "invalid_payload"),
        1
    );
    assert_eq!(
        engine.metrics().runs("cayennelpp", "decode_uplink", "ok"),
        1
    );
    assert_eq!(
        engine.decode_uplink(&FormatterKind::None, &UplinkInput::default()),
        Err(FormatterError::NoFormatter)
    );
}
