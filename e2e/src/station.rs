//! Helpers of the Basics Station and class C scenario: a gateway API key for the station's
//! `Authorization` header, connecting a simulated station to the GS's LNS listener, and
//! switching the device to class C in the Network Server's registry.

use std::time::Duration;

use tern_api::FieldMask;
use tern_api::v3;
use tern_simulator::station::{Station, StationConfig};
use tonic::service::interceptor::InterceptedService;

use crate::Server;
use crate::flow::{APP, DEV, channel, logged_addr};

/// A gateway API key with `gateway:link` on `gateway_id`, created with the admin key.
pub async fn gateway_link_key(server: &Server, admin_key: &str, gateway_id: &str) -> String {
    let (ch, creds) = channel(server, admin_key);
    v3::entity_access_client::EntityAccessClient::new(InterceptedService::new(ch, creds))
        .create_api_key(v3::CreateApiKeyRequest {
            entity_ids: Some(v3::EntityIdentifiers {
                ids: Some(v3::entity_identifiers::Ids::GatewayIds(
                    v3::GatewayIdentifiers {
                        gateway_id: gateway_id.into(),
                        eui: Vec::new(),
                    },
                )),
            }),
            name: "station".into(),
            rights: vec![v3::Right::GatewayLink as i32],
            expires_at: None,
        })
        .await
        .unwrap_or_else(|e| panic!("creating a key for gateway {gateway_id}: {e}"))
        .into_inner()
        .key
}

/// Connects a simulated Basics Station with EUI `eui` to the LNS listener of the GS of `gs`
/// (the `basic_station=` address of its "gateway listeners bound" log line): discovery,
/// `version`, `router_config`.
pub async fn connect_station(gs: &Server, eui: [u8; 8], api_key: &str) -> Station {
    let addr = logged_addr(gs, "gateway listeners bound", "basic_station");
    Station::connect(StationConfig {
        eui,
        lns: format!("ws://127.0.0.1:{}", addr.port()),
        api_key: Some(api_key.to_owned()),
        timeout: Duration::from_secs(10),
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "the station did not connect: {e}\n--- tern's log:\n{}",
            gs.log()
        )
    })
}

/// Marks the device as class C capable in the Network Server's registry
/// (`supports_class_c`), so that the NS sends its queued downlinks at once on RX2 parameters.
pub async fn set_class_c(server: &Server, admin_key: &str) {
    let (ch, creds) = channel(server, admin_key);
    v3::ns_end_device_registry_client::NsEndDeviceRegistryClient::new(InterceptedService::new(
        ch, creds,
    ))
    .set(v3::UpdateEndDeviceRequest {
        end_device: Some(v3::EndDevice {
            ids: Some(v3::EndDeviceIdentifiers::new(APP, DEV)),
            supports_class_c: true,
            ..Default::default()
        }),
        field_mask: Some(FieldMask::new(["supports_class_c"])),
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "setting supports_class_c: {e}\n--- tern's log:\n{}",
            server.log()
        )
    });
}
