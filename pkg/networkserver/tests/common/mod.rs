//! The harness of the pipeline tests: a real NS on an embedded store, a test-side GS that
//! records and accepts downlinks (the edge the NS does not own), a linked test AS, and a
//! device simulator built on `lorawan`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lorawan::crypto;
use lorawan::phy::{FCtrl, FOpts, Fhdr, MacPayload, Mhdr, Payload};
use lorawan::{Aes128Key, DevAddr, Direction, MType, PhyPayload};
use tern_api::v3;
use tern_cluster::auth::{Authenticator, Caller, ClusterKeys};
use tern_cluster::links::{BoxStream, LinkResult, NsGs, NsJs};
use tern_events::{EventBus, Filter, Subscription};
use tern_joinserver::{JoinServer, JsConfig, JsDeps, KeySource};
use tern_networkserver::{NetworkServer, NsConfig, NsDeps};
use tern_store::{Store, StoreConfig};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// A GS that accepts every downlink in RX1 and records it.
#[derive(Default)]
pub struct RecordingGs {
    pub downlinks: Mutex<Vec<v3::DownlinkMessage>>,
    pub fail: Mutex<bool>,
    /// When set, each schedule also records the device's NFCntDown as stored at that moment.
    pub store: Mutex<Option<Store>>,
    pub stored_n_f_cnt_down: Mutex<Vec<u32>>,
}

#[async_trait]
impl NsGs for RecordingGs {
    async fn schedule_downlink(
        &self,
        downlink: v3::DownlinkMessage,
    ) -> LinkResult<v3::ScheduleDownlinkResponse> {
        let store = self.store.lock().unwrap().clone();
        if let (Some(store), Some(ids)) = (store, &downlink.end_device_ids) {
            use prost::Message;
            use tern_store::NsDeviceStore;
            let app = ids.application_ids.as_ref().unwrap().application_id.clone();
            let record = store
                .get_ns_device(&app, &ids.device_id)
                .await
                .unwrap()
                .unwrap()
                .value;
            let state =
                tern_networkserver::devices::NsState::decode(record.state.as_slice()).unwrap();
            self.stored_n_f_cnt_down
                .lock()
                .unwrap()
                .push(state.next_n_f_cnt_down);
        }
        self.downlinks.lock().unwrap().push(downlink);
        if *self.fail.lock().unwrap() {
            return Ok(v3::ScheduleDownlinkResponse {
                result: Some(v3::schedule_downlink_response::Result::Failed(
                    v3::ScheduleDownlinkFailure::default(),
                )),
            });
        }
        Ok(v3::ScheduleDownlinkResponse {
            result: Some(v3::schedule_downlink_response::Result::Scheduled(
                v3::ScheduledDownlink {
                    rx_window: 1,
                    ..Default::default()
                },
            )),
        })
    }
}

impl RecordingGs {
    pub fn take(&self) -> Vec<v3::DownlinkMessage> {
        std::mem::take(&mut *self.downlinks.lock().unwrap())
    }
}

/// A JS that refuses everything, for tests without joins.
pub struct NoJs;

#[async_trait]
impl NsJs for NoJs {
    async fn handle_join(&self, _: v3::JoinRequest) -> LinkResult<v3::JoinResponse> {
        Err(tonic::Status::not_found("no Join Server in this test"))
    }
}

pub struct Harness {
    pub ns: NetworkServer,
    pub gs: Arc<RecordingGs>,
    pub store: Store,
    pub events: EventBus,
}

pub fn config() -> NsConfig {
    NsConfig {
        dedup_window: Duration::from_millis(100),
        cooldown: Duration::from_secs(5),
        ..NsConfig::default()
    }
}

impl Harness {
    pub async fn start(dir: &Path, js: Arc<dyn NsJs>, config: NsConfig) -> Harness {
        let store = Store::open(&StoreConfig::default(), dir).await.unwrap();
        let events = EventBus::in_process(4096);
        let auth = Authenticator::new(ClusterKeys::new(&["cluster-key-0123456789"]).unwrap());
        let ns = NetworkServer::with_deps(NsDeps {
            config,
            store: store.clone(),
            events: events.clone(),
            auth,
            js,
            instance_id: "ns-test".into(),
        })
        .unwrap();
        let gs = Arc::new(RecordingGs::default());
        ns.set_gateway_server(gs.clone()).unwrap();
        ns.load().await.unwrap();
        Harness {
            ns,
            gs,
            store,
            events,
        }
    }

    pub async fn drops(&self) -> Subscription {
        self.events
            .subscribe(Filter::all().name("ns.up.data.drop"))
            .await
            .unwrap()
    }

    /// Links a test AS for every application.
    pub async fn link(&self) -> TestAs {
        let (tx, rx) = mpsc::channel(64);
        tx.send(Ok(v3::LinkRequest {
            frame: Some(v3::link_request::Frame::Start(v3::LinkStart {
                all_applications: true,
                instance_id: "test-as".into(),
                ..Default::default()
            })),
        }))
        .await
        .unwrap();
        let mut responses = self
            .ns
            .as_link()
            .link_application(Caller::Cluster, Box::pin(ReceiverStream::new(rx)))
            .await
            .unwrap();
        let first = responses.next().await.unwrap().unwrap();
        assert!(matches!(
            first.frame,
            Some(v3::link_response::Frame::Established(_))
        ));
        TestAs { tx, responses }
    }

    pub async fn abp(
        &self,
        app: &str,
        dev: &str,
        dev_addr: DevAddr,
        nwk: Aes128Key,
        version: v3::MacVersion,
        last_f_cnt_up: u32,
    ) {
        let keys = v3::SessionKeys {
            f_nwk_s_int_key: Some(v3::KeyEnvelope::clear(nwk)),
            s_nwk_s_int_key: Some(v3::KeyEnvelope::clear(nwk)),
            nwk_s_enc_key: Some(v3::KeyEnvelope::clear(nwk)),
            ..Default::default()
        };
        let device = v3::EndDevice {
            ids: Some(v3::EndDeviceIdentifiers::new(app, dev)),
            frequency_plan_id: "EU_863_870".into(),
            lorawan_version: version as i32,
            supports_join: false,
            session: Some(v3::Session {
                dev_addr: dev_addr.to_be_bytes().to_vec(),
                keys: Some(keys),
                last_f_cnt_up,
                ..Default::default()
            }),
            mac_settings: Some(v3::MacSettings {
                adr_enabled: Some(false),
                status_count_periodicity: Some(0),
                status_time_periodicity: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.ns
            .set_device(
                device,
                &[
                    "ids",
                    "frequency_plan_id",
                    "lorawan_version",
                    "supports_join",
                    "session",
                    "mac_settings",
                ],
            )
            .await
            .unwrap();
    }
}

pub struct TestAs {
    pub tx: mpsc::Sender<LinkResult<v3::LinkRequest>>,
    pub responses: BoxStream<LinkResult<v3::LinkResponse>>,
}

impl TestAs {
    /// The next `up` message, or None within `wait`.
    pub async fn next_up(&mut self, wait: Duration) -> Option<v3::SequencedApplicationUp> {
        loop {
            let r = tokio::time::timeout(wait, self.responses.next())
                .await
                .ok()??;
            if let Ok(v3::LinkResponse {
                frame: Some(v3::link_response::Frame::Up(up)),
            }) = r
            {
                return Some(up);
            }
        }
    }

    /// The next queue operation result.
    pub async fn next_queue_result(&mut self) -> v3::DownlinkQueueOperationResult {
        loop {
            let r = tokio::time::timeout(Duration::from_secs(5), self.responses.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Some(v3::link_response::Frame::QueueResult(q)) = r.frame {
                return q;
            }
        }
    }

    pub async fn queue(
        &mut self,
        app: &str,
        dev: &str,
        replace: bool,
        downlinks: Vec<v3::ApplicationDownlink>,
    ) -> v3::DownlinkQueueOperationResult {
        self.tx
            .send(Ok(v3::LinkRequest {
                frame: Some(v3::link_request::Frame::QueueOperation(
                    v3::DownlinkQueueOperation {
                        operation_id: 7,
                        end_device_ids: Some(v3::EndDeviceIdentifiers::new(app, dev)),
                        operation: if replace { 1 } else { 0 },
                        downlinks,
                    },
                )),
            }))
            .await
            .unwrap();
        self.next_queue_result().await
    }
}

/// Builds a data uplink of a 1.0.x device, FRMPayload encrypted with `app_s_key`.
#[allow(clippy::too_many_arguments)]
pub fn data_up(
    dev_addr: DevAddr,
    nwk: &Aes128Key,
    app_s_key: &Aes128Key,
    f_cnt: u32,
    confirmed: bool,
    f_ctrl: FCtrl,
    f_opts: &[u8],
    f_port: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut frm = payload.to_vec();
    crypto::encrypt_frm_payload(app_s_key, Direction::Uplink, dev_addr, f_cnt, &mut frm);
    let mut phy = PhyPayload {
        mhdr: Mhdr::new(if confirmed {
            MType::ConfirmedDataUp
        } else {
            MType::UnconfirmedDataUp
        }),
        payload: Payload::MacPayload(MacPayload {
            fhdr: Fhdr {
                dev_addr,
                f_ctrl,
                f_cnt: f_cnt as u16,
                f_opts: FOpts::new(f_opts).unwrap(),
            },
            f_port: Some(f_port),
            frm_payload: frm,
        }),
        mic: Some([0; 4]),
    };
    let msg = phy.encode_mic_input().unwrap();
    phy.mic = Some(crypto::uplink_mic_1_0(nwk, dev_addr, f_cnt, &msg));
    phy.encode().unwrap()
}

/// One gateway's copy of an uplink, EU868 868.1 MHz SF7BW125 (DR5).
pub fn copy(raw: &[u8], gateway: &str, snr: f32, rssi: f32) -> v3::UplinkMessage {
    v3::UplinkMessage {
        raw_payload: raw.to_vec(),
        settings: Some(v3::TxSettings {
            data_rate: Some(band::DataRate::lora(7, 125_000).into()),
            frequency: 868_100_000,
            ..Default::default()
        }),
        rx_metadata: vec![v3::RxMetadata {
            gateway_ids: Some(v3::GatewayIdentifiers::new(gateway, None)),
            snr,
            rssi,
            uplink_token: format!("token-{gateway}").into_bytes(),
            ..Default::default()
        }],
        received_at: Some(tern_api::Timestamp::now()),
        correlation_ids: vec![format!("gs:uplink:{gateway}")],
    }
}

/// Verifies a 1.0.x downlink's MIC and returns it decoded.
pub fn check_downlink(raw: &[u8], nwk: &Aes128Key, f_cnt: u32) -> PhyPayload {
    let phy = PhyPayload::decode(raw).unwrap();
    let mp = phy.mac_payload().unwrap();
    let mic = crypto::downlink_mic(nwk, 0, mp.fhdr.dev_addr, f_cnt, PhyPayload::mic_input(raw));
    assert_eq!(Some(mic), phy.mic, "downlink MIC");
    phy
}

/// The MAC commands of a 1.0.x downlink (FOpts, or FPort 0 decrypted with the NwkSKey).
pub fn downlink_commands(raw: &[u8], nwk: &Aes128Key, f_cnt: u32) -> Vec<lorawan::MacCommand> {
    let phy = check_downlink(raw, nwk, f_cnt);
    let mp = phy.mac_payload().unwrap();
    let bytes = if mp.f_port == Some(0) {
        let mut p = mp.frm_payload.clone();
        crypto::decrypt_frm_payload(nwk, Direction::Downlink, mp.fhdr.dev_addr, f_cnt, &mut p);
        p
    } else {
        mp.fhdr.f_opts.as_slice().to_vec()
    };
    lorawan::MacCommand::decode_all(Direction::Downlink, &bytes).unwrap()
}

/// Encodes uplink MAC commands.
pub fn encode_cmds(cmds: &[lorawan::MacCommand]) -> Vec<u8> {
    let mut out = Vec::new();
    lorawan::MacCommand::encode_all(cmds, &mut out).unwrap();
    out
}

/// A copy received at a LoRa spreading factor (125 kHz) instead of SF7.
pub fn copy_sf(raw: &[u8], gateway: &str, snr: f32, sf: u8) -> v3::UplinkMessage {
    let mut c = copy(raw, gateway, snr, -100.0);
    if let Some(s) = c.settings.as_mut() {
        s.data_rate = Some(band::DataRate::lora(sf, 125_000).into());
    }
    c
}

/// The KEK the Join Server wraps network session keys under (`ns:local`).
pub const NS_KEK: &str = "000102030405060708090a0b0c0d0e0f";
/// The KEK the Join Server wraps AppSKeys under (`as:local`).
pub const AS_KEK: &str = "f0e0d0c0b0a090807060504030201000";

/// The real Join Server on the embedded store in `dir`, wrapping session keys for the NS
/// (`ns:local`) and the AS (`as:local`).
pub async fn join_server(dir: &Path) -> JoinServer {
    let store = Store::open(&StoreConfig::default(), dir).await.unwrap();
    let mut keks = BTreeMap::new();
    keks.insert("ns:local".to_owned(), KeySource::Hex(NS_KEK.into()));
    keks.insert("as:local".to_owned(), KeySource::Hex(AS_KEK.into()));
    JoinServer::new(JsDeps {
        config: JsConfig {
            root_key_kek: Some("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf".into()),
            keks,
            ..JsConfig::default()
        },
        store,
        events: EventBus::in_process(64),
        auth: Authenticator::new(ClusterKeys::new(&["cluster-key-0123456789"]).unwrap()),
    })
    .unwrap()
}

/// The test configuration with the KEK the Join Server wraps network keys under.
pub fn ns_config() -> NsConfig {
    let mut c = config();
    c.key_encryption_keys
        .insert("ns:local".into(), NS_KEK.into());
    c
}

/// MAC settings that keep the NS from asking anything of its own: no ADR, no DevStatusReq.
pub fn quiet_mac() -> v3::MacSettings {
    v3::MacSettings {
        adr_enabled: Some(false),
        status_count_periodicity: Some(0),
        status_time_periodicity: Some(0),
        ..Default::default()
    }
}

/// Registers the OTAA device `ids` on the JS (AppKey, and NwkKey when given) and on the NS
/// (EU868, `version`, with `mac_settings` when given).
pub async fn register_otaa(
    js: &JoinServer,
    ns: &NetworkServer,
    ids: v3::EndDeviceIdentifiers,
    version: v3::MacVersion,
    (app_key, nwk_key): (Aes128Key, Option<Aes128Key>),
    mac_settings: Option<v3::MacSettings>,
) {
    js.set_device(
        v3::EndDevice {
            ids: Some(ids.clone()),
            lorawan_version: version as i32,
            root_keys: Some(v3::RootKeys {
                app_key: Some(v3::KeyEnvelope::clear(app_key)),
                nwk_key: nwk_key.map(v3::KeyEnvelope::clear),
            }),
            ..Default::default()
        },
        tern_api::FieldMask::new(["root_keys", "lorawan_version"]),
    )
    .await
    .unwrap();
    let mut paths = vec![
        "ids",
        "frequency_plan_id",
        "lorawan_version",
        "supports_join",
    ];
    if mac_settings.is_some() {
        paths.push("mac_settings");
    }
    ns.set_device(
        v3::EndDevice {
            ids: Some(ids),
            frequency_plan_id: "EU_863_870".into(),
            lorawan_version: version as i32,
            supports_join: true,
            mac_settings,
            ..Default::default()
        },
        &paths,
    )
    .await
    .unwrap();
}
