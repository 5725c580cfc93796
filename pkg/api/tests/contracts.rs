//! Encoding, JSON mapping, conversions and descriptors of the generated contracts.

use lorawan::{Aes128Key, DevAddr, Eui64};
use pbjson_types::Duration;
use prost::Message;
use serde_json::json;
use tern_api::convert::ConvertError;
use tern_api::v3::{self, data_rate::Modulation};
use tern_api::{FieldMask, Timestamp, http};

fn ts(seconds: i64, nanos: i32) -> Timestamp {
    Timestamp { seconds, nanos }
}

fn uplink() -> v3::UplinkMessage {
    v3::UplinkMessage {
        raw_payload: vec![0x40, 0x01, 0x02, 0x03, 0x04],
        settings: Some(v3::TxSettings {
            data_rate: Some(band::DataRate::lora(7, 125_000).into()),
            frequency: 868_100_000,
            timestamp: 4_000_000_000,
            enable_crc: true,
            ..Default::default()
        }),
        rx_metadata: vec![v3::RxMetadata {
            gateway_ids: Some(v3::GatewayIdentifiers::new(
                "gw-1",
                Some(Eui64::from_u64(0x0102_0304_0506_0708)),
            )),
            channel_index: 2,
            timestamp: 4_000_000_000,
            rssi: -42.0,
            snr: 9.5,
            uplink_token: vec![0xff, 0xfe],
            ..Default::default()
        }],
        received_at: Some(ts(1_700_000_000, 500_000_000)),
        correlation_ids: vec!["gs:uplink:01".into()],
    }
}

#[test]
fn prost_round_trip() {
    let up = uplink();
    let bytes = up.encode_to_vec();
    assert_eq!(v3::UplinkMessage::decode(bytes.as_slice()).unwrap(), up);

    let resp = v3::LinkResponse {
        frame: Some(v3::link_response::Frame::Up(v3::SequencedApplicationUp {
            sequence: 7,
            up: Some(v3::ApplicationUp {
                end_device_ids: Some(v3::EndDeviceIdentifiers::new("app-1", "dev-1")),
                up: Some(v3::application_up::Up::JoinAccept(
                    v3::ApplicationJoinAccept {
                        session_key_id: vec![1, 2, 3],
                        app_s_key: Some(v3::KeyEnvelope::wrapped("as:default", vec![0xaa; 24])),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            ns_instance_id: "ns-1~0123456789abcdef".into(),
        })),
    };
    let bytes = resp.encode_to_vec();
    assert_eq!(v3::LinkResponse::decode(bytes.as_slice()).unwrap(), resp);
}

#[test]
fn uplink_exact_json() {
    let got = serde_json::to_value(uplink()).unwrap();
    let want = json!({
        "rawPayload": "QAECAwQ=",
        "settings": {
            "dataRate": {"lora": {"bandwidth": 125000, "spreadingFactor": 7, "codingRate": "4/5"}},
            "frequency": "868100000",
            "timestamp": 4000000000u32,
            "enableCrc": true
        },
        "rxMetadata": [{
            "gatewayIds": {"gatewayId": "gw-1", "eui": "AQIDBAUGBwg="},
            "channelIndex": 2,
            "timestamp": 4000000000u32,
            "rssi": -42.0,
            "snr": 9.5,
            "uplinkToken": "//4="
        }],
        "receivedAt": "2023-11-14T22:13:20.500Z",
        "correlationIds": ["gs:uplink:01"]
    });
    assert_eq!(got, want);
    let back: v3::UplinkMessage = serde_json::from_value(want).unwrap();
    assert_eq!(back, uplink());
}

#[test]
fn json_accepts_proto_names_and_enum_names() {
    let ack: v3::TxAcknowledgment = serde_json::from_value(json!({
        "downlink_id": "d1",
        "result": "TOO_LATE",
        "correlation_ids": ["x"]
    }))
    .unwrap();
    assert_eq!(ack.downlink_id, "d1");
    assert_eq!(ack.result(), v3::tx_acknowledgment::Result::TooLate);
    assert_eq!(
        serde_json::to_value(&ack).unwrap(),
        json!({"correlationIds": ["x"], "downlinkId": "d1", "result": "TOO_LATE"})
    );
    // Unknown fields are errors that name the field.
    let err = serde_json::from_value::<v3::TxAcknowledgment>(json!({"bogus": 1})).unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
}

#[test]
fn event_json_round_trip() {
    let up = v3::ApplicationUp {
        end_device_ids: Some(
            v3::EndDeviceIdentifiers::new("app-1", "dev-1")
                .with_dev_eui(Eui64::from_u64(0x70B3_D57E_D000_0001)),
        ),
        received_at: Some(ts(1_700_000_000, 0)),
        up: Some(v3::application_up::Up::UplinkMessage(
            v3::ApplicationUplink {
                f_port: 1,
                f_cnt: 42,
                frm_payload: vec![1, 2, 3],
                rx_metadata: uplink().rx_metadata,
                consumed_airtime: Some(Duration {
                    seconds: 0,
                    nanos: 46_336_000,
                }),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let mut ev = v3::Event {
        name: "as.up.data.forward".into(),
        time: Some(ts(1_700_000_001, 0)),
        identifiers: vec![v3::EntityIdentifiers {
            ids: Some(v3::entity_identifiers::Ids::DeviceIds(
                up.end_device_ids.clone().unwrap(),
            )),
        }],
        correlation_ids: vec!["as:up:01".into()],
        origin: "host-1".into(),
        context: [("tenant".to_owned(), b"t1".to_vec())].into(),
        ..Default::default()
    };
    ev.set_data(&up).unwrap();
    assert_eq!(ev.data_type, "tern.v3.ApplicationUp");

    let text = serde_json::to_string(&ev).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Struct holds JSON numbers as doubles.
    assert_eq!(value["data"]["uplinkMessage"]["fCnt"], 42.0);
    assert_eq!(
        value["data"]["uplinkMessage"]["consumedAirtime"],
        "0.046336s"
    );
    assert_eq!(value["data"]["endDeviceIds"]["devEui"], "cLPVftAAAAE=");
    assert_eq!(value["context"]["tenant"], "dDE=");

    let back: v3::Event = serde_json::from_str(&text).unwrap();
    assert_eq!(back, ev);
    assert_eq!(back.data_as::<v3::ApplicationUp>().unwrap(), Some(up));
    assert!(back.data_as::<v3::UplinkMessage>().is_err());
}

#[test]
fn end_device_json_round_trip_and_field_mask() {
    let dev = v3::EndDevice {
        ids: Some(
            v3::EndDeviceIdentifiers::new("app-1", "dev-1")
                .with_dev_eui(Eui64::from_u64(1))
                .with_join_eui(Eui64::from_u64(2)),
        ),
        created_at: Some(ts(0, 0)),
        frequency_plan_id: "EU_863_870".into(),
        lorawan_version: v3::MacVersion::MacV103.into(),
        lorawan_phy_version: v3::PhyVersion::Rp002V103.into(),
        supports_join: true,
        supports_class_c: true,
        root_keys: Some(v3::RootKeys {
            app_key: Some(v3::KeyEnvelope::clear(Aes128Key::from_be_bytes([7; 16]))),
            nwk_key: None,
        }),
        mac_settings: Some(v3::MacSettings {
            rx1_delay: Some(5),
            adr_enabled: Some(false),
            ..Default::default()
        }),
        attributes: [("site".to_owned(), "north".to_owned())].into(),
        ..Default::default()
    };
    let value = serde_json::to_value(&dev).unwrap();
    assert_eq!(value["lorawanVersion"], "MAC_V1_0_3");
    assert_eq!(value["lorawanPhyVersion"], "RP002_V1_0_3");
    assert_eq!(value["createdAt"], "1970-01-01T00:00:00Z");
    assert_eq!(
        value["macSettings"],
        json!({"rx1Delay": 5, "adrEnabled": false})
    );
    let back: v3::EndDevice = serde_json::from_value(value).unwrap();
    assert_eq!(back, dev);

    let req = v3::UpdateEndDeviceRequest {
        end_device: Some(dev),
        field_mask: Some(FieldMask::new([
            "root_keys.app_key",
            "mac_settings.rx1_delay",
        ])),
    };
    let value = serde_json::to_value(&req).unwrap();
    assert_eq!(value["fieldMask"], "rootKeys.appKey,macSettings.rx1Delay");
    let back: v3::UpdateEndDeviceRequest = serde_json::from_value(value).unwrap();
    assert_eq!(back, req);

    // The object form and proto names are accepted too.
    let m: FieldMask = serde_json::from_value(json!({"paths": ["session.dev_addr"]})).unwrap();
    assert!(m.covers("session.dev_addr") && !m.covers("session"));
    assert!(FieldMask::new(["session"]).covers("session.keys.app_s_key"));
    assert!(!FieldMask::new(["session"]).covers("sessions"));
}

#[test]
fn conversions_check_lengths() {
    let mut ids = v3::EndDeviceIdentifiers::new("app-1", "dev-1");
    assert_eq!(ids.dev_eui(), Ok(None));
    ids.dev_eui = vec![1; 7];
    assert_eq!(
        ids.dev_eui(),
        Err(ConvertError::WrongLength {
            field: "dev_eui",
            expected: 8,
            got: 7
        })
    );
    ids.dev_addr = vec![1, 2, 3, 4, 5];
    assert_eq!(
        ids.dev_addr().unwrap_err().to_string(),
        "dev_addr: expected 4 bytes, got 5"
    );
    let ids = ids.with_dev_addr(DevAddr::from_u32(0x2601_1234));
    assert_eq!(ids.dev_addr, vec![0x26, 0x01, 0x12, 0x34]);
    assert_eq!(ids.dev_addr(), Ok(Some(DevAddr::from_u32(0x2601_1234))));

    let env = v3::KeyEnvelope {
        key: vec![0; 15],
        ..Default::default()
    };
    assert!(matches!(
        env.clear_key(),
        Err(ConvertError::WrongLength {
            field: "key",
            expected: 16,
            got: 15
        })
    ));
    let key = Aes128Key::from_be_bytes([9; 16]);
    assert_eq!(v3::KeyEnvelope::clear(key).clear_key(), Ok(Some(key)));
    assert!(!v3::KeyEnvelope::clear(key).is_wrapped());
    assert!(
        v3::KeyEnvelope::wrapped("as:x", vec![0; 23])
            .wrapped_key()
            .is_err()
    );

    let gw = v3::GatewayIdentifiers {
        gateway_id: "gw".into(),
        eui: vec![0; 9],
    };
    assert!(gw.eui().is_err());
    assert!(tern_api::convert::net_id("net_id", &[0; 2]).is_err());
    assert!(tern_api::convert::required("dev_eui", None::<Eui64>).is_err());
}

#[test]
fn mtype_and_data_rate_conversions() {
    for m in lorawan::MType::ALL {
        let v: v3::MType = m.into();
        assert_eq!(lorawan::MType::from(v), m);
    }
    for dr in [
        band::DataRate::lora(12, 125_000),
        band::DataRate::Fsk { bitrate: 50_000 },
        band::DataRate::LrFhss {
            coding_rate: band::LrFhssCodingRate::Cr2_3,
            ocw_hz: 137_000,
        },
    ] {
        let v: v3::DataRate = dr.into();
        assert_eq!(band::DataRate::try_from(&v).unwrap(), dr);
    }
    let bad = v3::DataRate {
        modulation: Some(Modulation::Lora(v3::LoRaDataRate {
            spreading_factor: 13,
            bandwidth: 125_000,
            coding_rate: String::new(),
        })),
    };
    assert!(band::DataRate::try_from(&bad).is_err());
    assert!(band::DataRate::try_from(&v3::DataRate::default()).is_err());
}

/// Every service of the contracts, as `package.Service`.
const SERVICES: &[&str] = &[
    "tern.v3.GsNs",
    "tern.v3.NsGs",
    "tern.v3.Gs",
    "tern.v3.NsJs",
    "tern.v3.AsJs",
    "tern.v3.AsNs",
    "tern.v3.AppAs",
    "tern.v3.EndDeviceRegistry",
    "tern.v3.JsEndDeviceRegistry",
    "tern.v3.NsEndDeviceRegistry",
    "tern.v3.AsEndDeviceRegistry",
    "tern.v3.ApplicationRegistry",
    "tern.v3.GatewayRegistry",
    "tern.v3.OrganizationRegistry",
    "tern.v3.UserRegistry",
    "tern.v3.EntityAccess",
    "tern.v3.Auth",
    "tern.v3.Events",
    "tern.v3.AsFormatters",
    "tern.v3.ApplicationWebhookRegistry",
    "tern.v3.ApplicationPubSubRegistry",
];

#[test]
fn every_service_is_in_the_descriptor_set() {
    let mut found = http::services();
    found.sort_unstable();
    let mut want = SERVICES.to_vec();
    want.sort_unstable();
    assert_eq!(found, want);

    // The generated server names agree with the descriptors.
    use tonic::server::NamedService;
    type GsNsServer = v3::gs_ns_server::GsNsServer<NoopGsNs>;
    assert_eq!(<GsNsServer as NamedService>::NAME, "tern.v3.GsNs");

    let link = http::methods()
        .iter()
        .find(|m| m.name == "LinkApplication")
        .unwrap();
    assert!(link.client_streaming && link.server_streaming);
    assert_eq!(link.grpc_path(), "/tern.v3.AsNs/LinkApplication");
    assert!(link.http.is_empty(), "internal links have no REST binding");
}

#[test]
fn rest_bindings_are_in_the_descriptor_set() {
    let push = http::methods()
        .iter()
        .find(|m| m.service == "tern.v3.AppAs" && m.name == "DownlinkQueuePush")
        .unwrap();
    assert_eq!(push.http.len(), 1);
    assert_eq!(push.http[0].verb, "POST");
    assert_eq!(push.http[0].body, "*");
    assert_eq!(
        push.http[0].path_variables(),
        vec![
            "end_device_ids.application_ids.application_id",
            "end_device_ids.device_id"
        ]
    );

    let keys = http::methods()
        .iter()
        .find(|m| m.name == "CreateApiKey")
        .unwrap();
    assert_eq!(keys.http.len(), 4, "one binding per kind of entity");

    // Every public service has a REST binding on every method; internal ones have none.
    for m in http::methods() {
        let internal = matches!(
            m.service.as_str(),
            "tern.v3.GsNs" | "tern.v3.NsGs" | "tern.v3.NsJs" | "tern.v3.AsJs" | "tern.v3.AsNs"
        ) || m.name.starts_with("GetIdentifiersFor")
            // Cluster-only: another role asks the IS for a caller's rights.
            || m.grpc_path() == "/tern.v3.EntityAccess/GetRightsOn";
        assert_eq!(m.http.is_empty(), internal, "{}", m.grpc_path());
        for b in &m.http {
            assert!(
                b.path.starts_with("/api/v3/"),
                "{}: {}",
                m.grpc_path(),
                b.path
            );
        }
    }
}

/// A GsNs server that accepts everything, for the round trip over a socket.
#[derive(Default)]
struct NoopGsNs;

#[tonic::async_trait]
impl v3::gs_ns_server::GsNs for NoopGsNs {
    async fn handle_uplink(
        &self,
        req: tonic::Request<v3::UplinkMessage>,
    ) -> Result<tonic::Response<pbjson_types::Empty>, tonic::Status> {
        if req.get_ref().raw_payload.is_empty() {
            return Err(tonic::Status::invalid_argument("raw_payload: required"));
        }
        Ok(tonic::Response::new(pbjson_types::Empty {}))
    }

    async fn report_tx_ack(
        &self,
        _: tonic::Request<v3::TxAcknowledgment>,
    ) -> Result<tonic::Response<pbjson_types::Empty>, tonic::Status> {
        Ok(tonic::Response::new(pbjson_types::Empty {}))
    }

    async fn report_gateway_connection(
        &self,
        _: tonic::Request<v3::GatewayConnectionEvent>,
    ) -> Result<tonic::Response<pbjson_types::Empty>, tonic::Status> {
        Ok(tonic::Response::new(pbjson_types::Empty {}))
    }
}
