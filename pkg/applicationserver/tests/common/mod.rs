//! Test-side parts the AS does not own: a Network Server end of the link that streams what
//! the test gives it and answers queue operations like an NS that owns the downlink counter,
//! and an API key verifier with fixed keys.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use lorawan::Aes128Key;
use tern_api::v3;
use tern_applicationserver::{ApplicationServer, AsConfig, AsDeps};
use tern_cluster::auth::{
    ApiKeyError, ApiKeyVerifier, AuthInfo, Authenticator, Caller, ClusterKeys, Entity,
};
use tern_cluster::links::{AsNs, BoxStream, LinkResult};
use tern_cluster::role::{MetricsRegistry, ReadinessSignal, RoleContext, RoleService, Shutdown};
use tern_events::EventBus;
use tern_store::{Store, StoreConfig};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// The AppSKey of the lora-packet 1.0.x data uplink vector (/work/shared/vectors.md, source:
/// npm package lora-packet, `__tests__/decrypt_test.ts`).
pub const APP_S_KEY: &str = "EC925802AE430CA77FD3DD73CB2CC588";
/// Its DevAddr, display order.
pub const DEV_ADDR: [u8; 4] = [0x49, 0xBE, 0x7D, 0xF1];
/// Its FCnt.
pub const F_CNT: u32 = 2;
/// Its encrypted FRMPayload (FPort 1), from PHYPayload `40F17DBE4900020001954378762B11FF0D`.
pub const ENCRYPTED: [u8; 4] = [0x95, 0x43, 0x78, 0x76];
/// The KEK of the AS under test.
pub const KEK: [u8; 16] = [0x11; 16];

/// What the fake NS saw from the AS.
#[derive(Debug, Default)]
pub struct Seen {
    /// Queue operations accepted, in order.
    pub accepted: Vec<v3::DownlinkQueueOperation>,
    /// Queue operations refused (wrong counter or session), in order.
    pub refused: Vec<v3::DownlinkQueueOperation>,
    /// Acknowledged sequence numbers.
    pub acks: Vec<u64>,
}

/// The NS end of the link.
pub struct FakeNs {
    to_as: Mutex<Option<mpsc::UnboundedReceiver<LinkResult<v3::LinkResponse>>>>,
    sender: mpsc::UnboundedSender<LinkResult<v3::LinkResponse>>,
    /// The (session, next counter) the NS requires.
    pub expect: Arc<Mutex<(Vec<u8>, u32)>>,
    pub seen: Arc<Mutex<Seen>>,
    seq: Mutex<u64>,
    /// Wakes the test when the AS sent something.
    pub changed: Arc<tokio::sync::Notify>,
}

impl FakeNs {
    pub fn new() -> Arc<Self> {
        let (sender, rx) = mpsc::unbounded_channel();
        Arc::new(Self {
            to_as: Mutex::new(Some(rx)),
            sender,
            expect: Arc::new(Mutex::new((Vec::new(), 0))),
            seen: Arc::default(),
            seq: Mutex::new(0),
            changed: Arc::default(),
        })
    }

    /// Streams one message to the AS.
    pub fn send(&self, up: v3::ApplicationUp) {
        let mut seq = self.seq.lock().unwrap();
        *seq += 1;
        let _ = self.sender.send(Ok(v3::LinkResponse {
            frame: Some(v3::link_response::Frame::Up(v3::SequencedApplicationUp {
                sequence: *seq,
                up: Some(up),
                ..Default::default()
            })),
        }));
    }

    /// Waits until `check` holds on what the NS saw.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let notified = self.changed.notified();
            if check(&self.seen.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "timed out waiting for {what}: {:?}",
                    self.seen.lock().unwrap()
                );
            }
        }
    }
}

#[async_trait]
impl AsNs for FakeNs {
    async fn link_application(
        &self,
        _caller: Caller,
        mut requests: BoxStream<LinkResult<v3::LinkRequest>>,
    ) -> LinkResult<BoxStream<LinkResult<v3::LinkResponse>>> {
        let rx = self
            .to_as
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| tonic::Status::failed_precondition("already linked"))?;
        let first = requests.next().await;
        assert!(matches!(
            first,
            Some(Ok(v3::LinkRequest {
                frame: Some(v3::link_request::Frame::Start(_))
            }))
        ));
        let _ = self.sender.send(Ok(v3::LinkResponse {
            frame: Some(v3::link_response::Frame::Established(v3::LinkEstablished {
                application_ids: Vec::new(),
                ..Default::default()
            })),
        }));
        let (expect, seen, sender, changed) = (
            self.expect.clone(),
            self.seen.clone(),
            self.sender.clone(),
            self.changed.clone(),
        );
        tokio::spawn(async move {
            while let Some(Ok(request)) = requests.next().await {
                match request.frame {
                    Some(v3::link_request::Frame::QueueOperation(op)) => {
                        let mut expect = expect.lock().unwrap();
                        let mut counter = expect.1;
                        let ok = op.downlinks.iter().all(|d| {
                            let ok = d.f_cnt == counter && d.session_key_id == expect.0;
                            counter += 1;
                            ok
                        });
                        let result = if ok {
                            expect.1 = counter;
                            seen.lock().unwrap().accepted.push(op.clone());
                            v3::DownlinkQueueOperationResult {
                                operation_id: op.operation_id,
                                error: None,
                                next_a_f_cnt_down: expect.1,
                                session_key_id: expect.0.clone(),
                            }
                        } else {
                            seen.lock().unwrap().refused.push(op.clone());
                            v3::DownlinkQueueOperationResult {
                                operation_id: op.operation_id,
                                error: Some(v3::ErrorDetails {
                                    code: 9,
                                    name: "f_cnt_too_low".into(),
                                    message: "wrong counter".into(),
                                    ..Default::default()
                                }),
                                next_a_f_cnt_down: expect.1,
                                session_key_id: expect.0.clone(),
                            }
                        };
                        let _ = sender.send(Ok(v3::LinkResponse {
                            frame: Some(v3::link_response::Frame::QueueResult(result)),
                        }));
                    }
                    Some(v3::link_request::Frame::Ack(ack)) => {
                        seen.lock().unwrap().acks.push(ack.sequence);
                    }
                    _ => {}
                }
                changed.notify_waiters();
            }
        });
        Ok(Box::pin(UnboundedReceiverStream::new(rx)))
    }

    async fn downlink_queue_list(
        &self,
        _caller: Caller,
        _device: v3::EndDeviceIdentifiers,
    ) -> LinkResult<v3::ApplicationDownlinks> {
        let seen = self.seen.lock().unwrap();
        Ok(v3::ApplicationDownlinks {
            downlinks: seen
                .accepted
                .iter()
                .flat_map(|op| op.downlinks.clone())
                .collect(),
        })
    }
}

/// Fixed API keys: key → (application, rights).
#[derive(Debug, Default)]
pub struct Keys(pub HashMap<String, (String, Vec<String>)>);

#[async_trait]
impl ApiKeyVerifier for Keys {
    async fn verify(&self, api_key: &str) -> Result<AuthInfo, ApiKeyError> {
        let (app, rights) = self.0.get(api_key).ok_or(ApiKeyError::Unknown)?;
        Ok(AuthInfo::new(
            Entity::Application(app.clone()),
            rights.clone(),
        ))
    }

    async fn rights_on(
        &self,
        _info: &AuthInfo,
        _entity: &Entity,
    ) -> Result<BTreeSet<String>, ApiKeyError> {
        Ok(BTreeSet::new())
    }
}

pub fn ids(app: &str, dev: &str) -> v3::EndDeviceIdentifiers {
    v3::EndDeviceIdentifiers {
        application_ids: Some(v3::ApplicationIdentifiers {
            application_id: app.into(),
        }),
        device_id: dev.into(),
        dev_eui: vec![0x70, 0xB3, 0xD5, 0x7E, 0xD0, 0, 0, 1],
        join_eui: vec![0; 8],
        dev_addr: DEV_ADDR.to_vec(),
    }
}

pub fn app_s_key() -> Aes128Key {
    APP_S_KEY.parse().unwrap()
}

/// A join-accept whose AppSKey is wrapped under the AS's KEK.
pub fn join_accept(app: &str, dev: &str, session_key_id: &[u8]) -> v3::ApplicationUp {
    v3::ApplicationUp {
        end_device_ids: Some(ids(app, dev)),
        correlation_ids: vec!["ns:join:1".into()],
        received_at: None,
        up: Some(v3::application_up::Up::JoinAccept(
            v3::ApplicationJoinAccept {
                session_key_id: session_key_id.to_vec(),
                app_s_key: Some(v3::KeyEnvelope {
                    kek_label: "as:test".into(),
                    encrypted_key: lorawan::crypto::wrap_key(&Aes128Key(KEK), &app_s_key())
                        .to_vec(),
                    key: Vec::new(),
                }),
                ..Default::default()
            },
        )),
    }
}

/// The lora-packet vector's uplink, still encrypted.
pub fn uplink(app: &str, dev: &str, session_key_id: &[u8], f_port: u32) -> v3::ApplicationUp {
    v3::ApplicationUp {
        end_device_ids: Some(ids(app, dev)),
        correlation_ids: vec!["ns:uplink:1".into()],
        received_at: None,
        up: Some(v3::application_up::Up::UplinkMessage(
            v3::ApplicationUplink {
                session_key_id: session_key_id.to_vec(),
                f_port,
                f_cnt: F_CNT,
                frm_payload: ENCRYPTED.to_vec(),
                rx_metadata: vec![v3::RxMetadata {
                    gateway_ids: Some(v3::GatewayIdentifiers {
                        gateway_id: "gw-1".into(),
                        eui: vec![0xAA; 8],
                    }),
                    rssi: -42.0,
                    snr: 9.5,
                    timestamp: 123,
                    ..Default::default()
                }],
                settings: Some(v3::TxSettings {
                    data_rate: Some(v3::DataRate {
                        modulation: Some(v3::data_rate::Modulation::Lora(v3::LoRaDataRate {
                            bandwidth: 125_000,
                            spreading_factor: 7,
                            coding_rate: "4/5".into(),
                        })),
                    }),
                    frequency: 868_100_000,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }
}

pub struct Harness {
    pub asrv: Arc<ApplicationServer>,
    pub ns: Arc<FakeNs>,
    pub ctx: RoleContext,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.ctx.shutdown.trigger();
    }
}

/// A started full AS with the fake NS, an embedded store and the MQTT server on a free port.
pub async fn start(keys: Keys) -> Harness {
    start_with(keys, |_| {}).await
}

/// Like [`start`], with configuration changes.
pub async fn start_with(keys: Keys, configure: impl FnOnce(&mut AsConfig)) -> Harness {
    start_full(keys, None, configure).await
}

/// Like [`start`], with a Join Server and configuration changes.
pub async fn start_full(
    keys: Keys,
    js: Option<Arc<dyn tern_cluster::links::AsJs>>,
    configure: impl FnOnce(&mut AsConfig),
) -> Harness {
    start_on(keys, js, EventBus::in_process(64), "as-test", configure).await
}

/// Like [`start`], on event bus `events` as AS instance `instance_id` (one of a cluster).
pub async fn start_cluster(keys: Keys, events: EventBus, instance_id: &str) -> Harness {
    start_on(keys, None, events, instance_id, |_| {}).await
}

async fn start_on(
    keys: Keys,
    js: Option<Arc<dyn tern_cluster::links::AsJs>>,
    events: EventBus,
    instance_id: &str,
    configure: impl FnOnce(&mut AsConfig),
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig::default(), dir.path())
        .await
        .unwrap();
    let ns = FakeNs::new();
    let mut config = AsConfig {
        kek_label: "as:test".into(),
        ..Default::default()
    };
    config.keks.insert(
        "as:test".into(),
        serde_json::from_value(serde_json::json!(hex::encode(KEK))).unwrap(),
    );
    config.mqtt.listen = "127.0.0.1:0".into();
    config.mqtt.tls_listen = String::new();
    config.mqtt.max_queued_messages_per_client = 8;
    configure(&mut config);
    let keys: Arc<dyn ApiKeyVerifier> = Arc::new(keys);
    let auth = Authenticator::new(ClusterKeys::new(&["0123456789abcdef0123"]).unwrap())
        .with_api_key_verifier(keys.clone());
    let asrv = Arc::new(
        ApplicationServer::with_deps(AsDeps {
            config,
            store,
            events,
            auth,
            ns: ns.clone(),
            js,
            api_keys: keys,
            instance_id: instance_id.into(),
        })
        .unwrap(),
    );
    let ctx = RoleContext {
        data_dir: dir.path().to_path_buf(),
        metrics: MetricsRegistry::new(),
        shutdown: Shutdown::new(),
        readiness: ReadinessSignal::new(),
    };
    asrv.start(&ctx).await.unwrap();
    // The fake streams in one channel: link first, so Established precedes every message.
    for _ in 0..800 {
        if matches!(
            asrv.link_state(),
            tern_applicationserver::link::LinkState::Linked(_)
        ) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(matches!(
        asrv.link_state(),
        tern_applicationserver::link::LinkState::Linked(_)
    ));
    Harness {
        asrv,
        ns,
        ctx,
        _dir: dir,
    }
}

/// A Join Server end that knows one session's AppSKey, wrapped under the AS's KEK.
pub struct FakeJs {
    pub session_key_id: Vec<u8>,
}

#[async_trait]
impl tern_cluster::links::AsJs for FakeJs {
    async fn get_app_s_key(
        &self,
        request: v3::SessionKeyRequest,
    ) -> LinkResult<v3::AppSKeyResponse> {
        if request.session_key_id != self.session_key_id {
            return Err(tonic::Status::not_found("unknown session"));
        }
        Ok(v3::AppSKeyResponse {
            app_s_key: Some(v3::KeyEnvelope {
                kek_label: "as:test".into(),
                encrypted_key: lorawan::crypto::wrap_key(&Aes128Key(KEK), &app_s_key()).to_vec(),
                key: Vec::new(),
            }),
        })
    }
}
