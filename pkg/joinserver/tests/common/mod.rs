//! Shared test setup: a Join Server on an embedded store in a temporary directory, devices,
//! and device-side frame building.

#![allow(dead_code)]

use std::path::Path;

use lorawan::crypto;
use lorawan::{Aes128Key, DevNonce, Eui64};
use prost::Message;
use tern_api::FieldMask;
use tern_api::v3;
use tern_cluster::auth::{Authenticator, ClusterKeys};
use tern_cluster::role::{MetricsRegistry, ReadinessSignal, RoleContext, RoleService, Shutdown};
use tern_events::EventBus;
use tern_joinserver::{JoinServer, JsConfig, JsDeps, Kek, KeySource};
use tern_store::kv::{Batch, Expect};
use tern_store::{Store, StoreConfig};

pub const CLUSTER_KEY: &str = "js-test-cluster-key-0123456789";
pub const ROOT_KEK: &str = "8f2c1b4a9d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";
pub const AS_KEK: &str = "00112233445566778899aabbccddeeff0011223344556677";
pub const NS_KEK: &str = "ffeeddccbbaa99887766554433221100";

/// A Join Server with its store and bus.
pub struct Env {
    pub js: JoinServer,
    pub store: Store,
    pub events: EventBus,
    pub metrics: MetricsRegistry,
}

/// The test configuration; `ns_label` "" sends network keys in clear.
pub fn config(ns_label: &str) -> JsConfig {
    let mut config = JsConfig {
        root_key_kek: Some(ROOT_KEK.into()),
        ns_kek_label: ns_label.into(),
        as_kek_label: "as:test".into(),
        ..Default::default()
    };
    config
        .keks
        .insert("as:test".into(), KeySource::Hex(AS_KEK.into()));
    config
        .keks
        .insert("ns:test".into(), KeySource::Hex(NS_KEK.into()));
    config
}

pub fn as_kek() -> Kek {
    Kek::new(&hex::decode(AS_KEK).unwrap()).unwrap()
}

pub fn ns_kek() -> Kek {
    Kek::new(&hex::decode(NS_KEK).unwrap()).unwrap()
}

pub fn authenticator() -> Authenticator {
    Authenticator::new(ClusterKeys::new(&[CLUSTER_KEY]).unwrap())
}

/// Opens the store in `dir` and starts a Join Server on it.
pub async fn open(dir: &Path, config: JsConfig) -> Env {
    open_with_auth(dir, config, authenticator()).await
}

pub async fn open_with_auth(dir: &Path, config: JsConfig, auth: Authenticator) -> Env {
    let store = Store::open(&StoreConfig::default(), dir).await.unwrap();
    let events = EventBus::in_process(256);
    let js = JoinServer::new(JsDeps {
        config,
        store: store.clone(),
        events: events.clone(),
        auth,
    })
    .unwrap();
    let metrics = MetricsRegistry::new();
    let ctx = RoleContext {
        data_dir: dir.to_owned(),
        metrics: metrics.clone(),
        shutdown: Shutdown::new(),
        readiness: ReadinessSignal::new(),
    };
    js.start(&ctx).await.unwrap();
    Env {
        js,
        store,
        events,
        metrics,
    }
}

impl Env {
    /// Stops the role and closes the store (a restart opens them again).
    pub async fn close(self) {
        self.js.shutdown().await.unwrap();
        self.store.close().await.unwrap();
    }
}

pub fn key(hex: &str) -> Aes128Key {
    Aes128Key(hex::decode(hex).unwrap().try_into().unwrap())
}

pub fn eui(hex: &str) -> Eui64 {
    hex.parse().unwrap()
}

/// Registers a device's root keys.
pub async fn provision(
    js: &JoinServer,
    device_id: &str,
    join_eui: Eui64,
    dev_eui: Eui64,
    version: v3::MacVersion,
    app_key: Option<Aes128Key>,
    nwk_key: Option<Aes128Key>,
) {
    let device = v3::EndDevice {
        ids: Some(
            v3::EndDeviceIdentifiers::new("app-1", device_id)
                .with_join_eui(join_eui)
                .with_dev_eui(dev_eui),
        ),
        lorawan_version: version as i32,
        root_keys: Some(v3::RootKeys {
            app_key: app_key.map(v3::KeyEnvelope::clear),
            nwk_key: nwk_key.map(v3::KeyEnvelope::clear),
        }),
        ..Default::default()
    };
    js.set_device(device, FieldMask::new(["root_keys", "lorawan_version"]))
        .await
        .unwrap();
}

/// A join-request PHYPayload signed with `key` (AppKey for 1.0.x, NwkKey for 1.1).
pub fn join_request(key: &Aes128Key, join_eui: Eui64, dev_eui: Eui64, dev_nonce: u16) -> Vec<u8> {
    let mut msg = vec![0x00];
    msg.extend_from_slice(&join_eui.to_le_bytes());
    msg.extend_from_slice(&dev_eui.to_le_bytes());
    msg.extend_from_slice(&DevNonce(dev_nonce).to_le_bytes());
    let mic = crypto::join_request_mic(key, &msg);
    msg.extend_from_slice(&mic);
    msg
}

/// A rejoin-request type 0 or 2 signed with the session's SNwkSIntKey.
pub fn rejoin_0_2(
    s_nwk_s_int_key: &Aes128Key,
    rejoin_type: u8,
    net_id: [u8; 3],
    dev_eui: Eui64,
    rj_count0: u16,
) -> Vec<u8> {
    let mut msg = vec![0xC0, rejoin_type];
    let mut n = net_id;
    n.reverse();
    msg.extend_from_slice(&n);
    msg.extend_from_slice(&dev_eui.to_le_bytes());
    msg.extend_from_slice(&rj_count0.to_le_bytes());
    let mic = crypto::rejoin_request_mic(s_nwk_s_int_key, &msg);
    msg.extend_from_slice(&mic);
    msg
}

/// A rejoin-request type 1 signed with the JSIntKey.
pub fn rejoin_1(
    js_int_key: &Aes128Key,
    join_eui: Eui64,
    dev_eui: Eui64,
    rj_count1: u16,
) -> Vec<u8> {
    let mut msg = vec![0xC0, 1];
    msg.extend_from_slice(&join_eui.to_le_bytes());
    msg.extend_from_slice(&dev_eui.to_le_bytes());
    msg.extend_from_slice(&rj_count1.to_le_bytes());
    let mic = crypto::rejoin_request_mic(js_int_key, &msg);
    msg.extend_from_slice(&mic);
    msg
}

/// What the NS sends with a frame: DevAddr 01020304, NetID `net_id`, RX1 offset 0, RX2 DR 0,
/// RxDelay 0, no CFList.
pub fn request(raw: Vec<u8>, net_id: [u8; 3], version: v3::MacVersion) -> v3::JoinRequest {
    v3::JoinRequest {
        raw_payload: raw,
        dev_addr: vec![1, 2, 3, 4],
        selected_mac_version: version as i32,
        net_id: net_id.to_vec(),
        downlink_settings: Some(v3::DownlinkSettings::default()),
        rx_delay: 0,
        cf_list: Vec::new(),
        correlation_ids: vec!["ns:uplink:test".into()],
    }
}

/// The store's JoinNonce counter record (field 1: the last JoinNonce handed out).
#[derive(Clone, PartialEq, Message)]
struct JoinNonceRecord {
    #[prost(uint32, tag = "1")]
    last: u32,
}

/// Sets the device's JoinNonce counter so that the next join gets `last + 1` (to reach the
/// JoinNonce of a published vector).
pub async fn seed_join_nonce(store: &Store, join_eui: Eui64, dev_eui: Eui64, last: u32) {
    let mut batch = Batch::new();
    batch.put(
        &tern_store::tables::JOIN_NONCES,
        format!("{join_eui}/{dev_eui}"),
        JoinNonceRecord { last }.encode_to_vec(),
        Expect::Any,
        Vec::new(),
    );
    store.commit(batch).await.unwrap();
}

/// The clear key of an envelope the NS can open: clear, or wrapped under the NS test KEK.
pub fn ns_key(env: &Option<v3::KeyEnvelope>) -> Aes128Key {
    let env = env.as_ref().expect("key envelope");
    if env.is_wrapped() {
        assert_eq!(env.kek_label, "ns:test");
        ns_kek().unwrap_key(&env.encrypted_key).unwrap()
    } else {
        env.clear_key().unwrap().expect("clear key")
    }
}

/// The AppSKey of an envelope wrapped for the AS.
pub fn as_key(env: &Option<v3::KeyEnvelope>) -> Aes128Key {
    let env = env.as_ref().expect("AppSKey envelope");
    assert_eq!(env.kek_label, "as:test");
    assert!(env.key.is_empty(), "AppSKey in clear");
    as_kek().unwrap_key(&env.encrypted_key).unwrap()
}

/// The JoinNonce of a decrypted join-accept.
pub fn join_nonce_of(plain_accept: &[u8]) -> u32 {
    u32::from_le_bytes([plain_accept[1], plain_accept[2], plain_accept[3], 0])
}
