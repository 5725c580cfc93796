//! HandleJoin: join-requests (1.0.x and 1.1) and rejoin-requests (1.1, types 0, 1, 2).

use lorawan::crypto::{
    self, JOIN_REQ_TYPE_JOIN_REQUEST, derive_js_enc_key, derive_js_int_key,
    derive_session_keys_1_0, derive_session_keys_1_1, encrypt_join_accept, mic_matches,
};
use lorawan::phy::{Payload, RejoinRequest};
use lorawan::{Aes128Key, DevAddr, DevNonce, Eui64, JoinNonce, NetId, PhyPayload};
use prost::Message;
use tern_api::convert;
use tern_api::v3;
use tern_events::{CorrelationIds, definitions};
use tern_store::kv::{Batch, Expect, Table};
use tern_store::{DevNonceMode, JoinStore, JsDeviceRecord, SessionKeysRecord, StoreError};
use tracing::Instrument;

use crate::Inner;
use crate::error::JoinError;
use crate::seal::{self, RootKeys, SessionKeys};

/// Rejoin state per DevEUI: the device's JoinEUI (rejoin types 0/2 do not carry it), its
/// latest sessions (whose SNwkSIntKey verifies rejoin types 0/2) and its rejoin counters.
pub static REJOIN_STATE: Table = Table {
    name: "js.rejoin-state",
    what: "JS rejoin state",
};

/// How many recent sessions a rejoin-request type 0/2 is checked against: the newest may
/// be a join-accept the device never received.
const RECENT_SESSIONS: usize = 2;

/// What the JS keeps per DevEUI for rejoins (LoRaWAN 1.1 sessions only).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct RejoinState {
    /// The JoinEUI of the device's sessions.
    #[prost(bytes = "vec", tag = "1")]
    pub join_eui: Vec<u8>,
    /// Newest first, at most [`RECENT_SESSIONS`].
    #[prost(message, repeated, tag = "2")]
    pub sessions: Vec<RecentSession>,
    /// The greatest accepted RJcount1 (never reset: JSIntKey does not change).
    #[prost(uint32, optional, tag = "3")]
    pub rj_count1: Option<u32>,
}

/// One recent session of a device.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct RecentSession {
    /// Its session key ID.
    #[prost(bytes = "vec", tag = "1")]
    pub session_key_id: Vec<u8>,
    /// The greatest RJcount0 accepted in it (reset with every session).
    #[prost(uint32, optional, tag = "2")]
    pub rj_count0: Option<u32>,
}

/// What kind of frame is being answered.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Join { dev_nonce: DevNonce },
    Rejoin { rejoin_type: u8, rj_count: u16 },
}

impl Kind {
    fn join_req_type(self) -> u8 {
        match self {
            Kind::Join { .. } => JOIN_REQ_TYPE_JOIN_REQUEST,
            Kind::Rejoin { rejoin_type, .. } => rejoin_type,
        }
    }

    /// The DevNonce of a join-request, or the RJcount standing in for it in a rejoin.
    fn nonce(self) -> DevNonce {
        match self {
            Kind::Join { dev_nonce } => dev_nonce,
            Kind::Rejoin { rj_count, .. } => DevNonce(rj_count),
        }
    }
}

/// The NS's settings for the join-accept, checked.
struct AcceptSettings {
    dev_addr: DevAddr,
    net_id: NetId,
    rx1_dr_offset: u8,
    rx2_dr: u8,
    rx_delay: u8,
    cf_list: Option<[u8; 16]>,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> JoinError {
    JoinError::InvalidRequest {
        field,
        reason: reason.into(),
    }
}

fn settings(req: &v3::JoinRequest) -> Result<AcceptSettings, JoinError> {
    let conv = |e: convert::ConvertError| invalid("join request", e.to_string());
    let dev_addr = convert::required(
        "dev_addr",
        convert::dev_addr("dev_addr", &req.dev_addr).map_err(conv)?,
    )
    .map_err(conv)?;
    let net_id = convert::required(
        "net_id",
        convert::net_id("net_id", &req.net_id).map_err(conv)?,
    )
    .map_err(conv)?;
    let dl = req.downlink_settings.unwrap_or_default();
    if dl.rx1_dr_offset > 7 {
        return Err(invalid(
            "downlink_settings.rx1_dr_offset",
            format!("{} is out of range 0..=7", dl.rx1_dr_offset),
        ));
    }
    if dl.rx2_dr > 15 {
        return Err(invalid(
            "downlink_settings.rx2_dr",
            format!("{} is out of range 0..=15", dl.rx2_dr),
        ));
    }
    if req.rx_delay > 15 {
        return Err(invalid(
            "rx_delay",
            format!("{} is out of range 0..=15", req.rx_delay),
        ));
    }
    let cf_list = match req.cf_list.len() {
        0 => None,
        16 => {
            let mut c = [0u8; 16];
            c.copy_from_slice(&req.cf_list);
            Some(c)
        }
        n => {
            return Err(invalid(
                "cf_list",
                format!("expected 0 or 16 bytes, got {n}"),
            ));
        }
    };
    Ok(AcceptSettings {
        dev_addr,
        net_id,
        rx1_dr_offset: dl.rx1_dr_offset as u8,
        rx2_dr: dl.rx2_dr as u8,
        rx_delay: req.rx_delay as u8,
        cf_list,
    })
}

/// Whether a device registered with `version` (and these keys) speaks LoRaWAN 1.1.
pub(crate) fn is_1_1(version: i32, keys: &RootKeys) -> bool {
    match v3::MacVersion::try_from(version).unwrap_or(v3::MacVersion::Unknown) {
        v3::MacVersion::MacV11 => true,
        v3::MacVersion::Unknown => keys.nwk_key.is_some(),
        _ => false,
    }
}

/// The plain join-accept without MIC: MHDR | JoinNonce | NetID | DevAddr | DLSettings |
/// RxDelay | CFList, fields in wire order.
fn accept_fields(s: &AcceptSettings, join_nonce: JoinNonce, opt_neg: bool) -> Vec<u8> {
    let mut msg = Vec::with_capacity(33);
    msg.push(0x20); // MHDR: join-accept, LoRaWAN R1
    msg.extend_from_slice(&join_nonce.to_le_bytes());
    msg.extend_from_slice(&s.net_id.to_le_bytes());
    msg.extend_from_slice(&s.dev_addr.to_le_bytes());
    msg.push(((opt_neg as u8) << 7) | (s.rx1_dr_offset << 4) | s.rx2_dr);
    msg.push(s.rx_delay);
    if let Some(c) = &s.cf_list {
        msg.extend_from_slice(c);
    }
    msg
}

/// The outcome of a join, for the response and the event.
pub(crate) struct Accepted {
    pub response: v3::JoinResponse,
    pub ids: Option<v3::EndDeviceIdentifiers>,
}

/// A refusal, with the device when it was found.
pub(crate) struct Refused {
    pub error: JoinError,
    pub ids: Option<v3::EndDeviceIdentifiers>,
}

impl From<JoinError> for Refused {
    fn from(error: JoinError) -> Self {
        Self { error, ids: None }
    }
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        JoinError::from(e).into()
    }
}

impl Inner {
    /// HandleJoin with metrics and events.
    pub(crate) async fn handle_join(
        &self,
        req: v3::JoinRequest,
    ) -> Result<v3::JoinResponse, tonic::Status> {
        let mut cids = CorrelationIds::from(req.correlation_ids.clone());
        cids.push_new("js:join");
        let span = tracing::debug_span!("js.join", correlation_id = %cids.as_slice().last().map_or("", String::as_str));
        let result = cids
            .clone()
            .scope(self.join(&req, &cids).instrument(span))
            .await;
        match result {
            Ok(accepted) => {
                self.metrics.join("accepted");
                tracing::debug!(correlation_ids = ?cids.as_slice(), "join accepted");
                // Built (JSON of the request) only when someone may receive it.
                self.events
                    .publish_with(&definitions::JS_JOIN_ACCEPT, |event| {
                        event
                            .with_data(&req)
                            .with_correlation_ids(cids.as_slice().iter().cloned())
                            .with_identifiers(accepted.ids.as_ref())
                    });
                Ok(accepted.response)
            }
            Err(refused) => {
                let e = refused.error;
                self.metrics.join(e.reason());
                tracing::debug!(correlation_ids = ?cids.as_slice(), reason = e.reason(), error = %e, "join refused");
                let details = v3::ErrorDetails {
                    code: e.code() as u32,
                    name: e.reason().to_owned(),
                    message: e.to_string(),
                    attributes: Default::default(),
                    correlation_ids: cids.as_slice().to_vec(),
                };
                self.events
                    .publish_with(&definitions::JS_JOIN_REJECT, |event| {
                        event
                            .with_data(&details)
                            .with_correlation_ids(cids.as_slice().iter().cloned())
                            .with_identifiers(refused.ids.as_ref())
                    });
                Err(e.into())
            }
        }
    }

    fn check_served(&self, join_eui: Eui64) -> Result<(), JoinError> {
        let prefixes = &self.config.join_euis;
        if prefixes.is_empty() || prefixes.iter().any(|p| p.matches(join_eui)) {
            Ok(())
        } else {
            Err(JoinError::JoinEuiNotServed(join_eui))
        }
    }

    async fn join(
        &self,
        req: &v3::JoinRequest,
        cids: &CorrelationIds,
    ) -> Result<Accepted, Refused> {
        let settings = settings(req)?;
        let phy = PhyPayload::decode(&req.raw_payload)
            .map_err(|e| JoinError::InvalidPayload(e.to_string()))?;
        let received_mic = phy.mic.unwrap_or_default();
        let mic_input = PhyPayload::mic_input(&req.raw_payload);

        // Who is it, and which frame?
        let (join_eui, dev_eui, kind, rejoin02) = match phy.payload {
            Payload::JoinRequest(jr) => (
                jr.join_eui,
                jr.dev_eui,
                Kind::Join {
                    dev_nonce: jr.dev_nonce,
                },
                None,
            ),
            Payload::RejoinRequest(RejoinRequest::Type1 {
                join_eui,
                dev_eui,
                rj_count1,
            }) => (
                join_eui,
                dev_eui,
                Kind::Rejoin {
                    rejoin_type: 1,
                    rj_count: rj_count1,
                },
                None,
            ),
            Payload::RejoinRequest(RejoinRequest::Type0Or2 {
                rejoin_type,
                dev_eui,
                rj_count0,
                ..
            }) => {
                let state = self.rejoin_state(dev_eui).await?;
                let state = state.filter(|s| !s.value.sessions.is_empty()).ok_or(
                    JoinError::UnknownSession {
                        rejoin_type,
                        dev_eui,
                    },
                )?;
                let join_eui = convert::eui64("join_eui", &state.value.join_eui)
                    .ok()
                    .flatten()
                    .ok_or_else(|| JoinError::Keys("rejoin state without JoinEUI".into()))?;
                (
                    join_eui,
                    dev_eui,
                    Kind::Rejoin {
                        rejoin_type,
                        rj_count: rj_count0,
                    },
                    Some(state.value),
                )
            }
            other => {
                return Err(JoinError::InvalidPayload(format!(
                    "a {} is not a join-request or rejoin-request",
                    other.kind()
                ))
                .into());
            }
        };
        self.check_served(join_eui)?;

        let record = self
            .store
            .get_js_device(join_eui, dev_eui)
            .await?
            .ok_or(JoinError::UnknownDevice { join_eui, dev_eui })?
            .value;
        let ids = record.ids.clone();
        let refuse = |error: JoinError| Refused {
            error,
            ids: ids.clone(),
        };
        let result = self
            .join_device(
                req,
                cids,
                &settings,
                &record,
                join_eui,
                dev_eui,
                kind,
                rejoin02,
                mic_input,
                received_mic,
            )
            .await;
        match result {
            Ok(response) => Ok(Accepted {
                response,
                ids: ids.clone(),
            }),
            Err(e) => Err(refuse(e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn join_device(
        &self,
        req: &v3::JoinRequest,
        cids: &CorrelationIds,
        settings: &AcceptSettings,
        record: &JsDeviceRecord,
        join_eui: Eui64,
        dev_eui: Eui64,
        kind: Kind,
        rejoin02: Option<RejoinState>,
        mic_input: &[u8],
        received_mic: [u8; 4],
    ) -> Result<v3::JoinResponse, JoinError> {
        let root = seal::open_root_keys(
            &self.config.root_kek,
            &record.encrypted_root_keys,
            join_eui,
            dev_eui,
        )?;
        let device_1_1 = is_1_1(record.lorawan_version, &root);
        let missing = |key| JoinError::MissingRootKey {
            key,
            join_eui,
            dev_eui,
        };
        // OptNeg: the session runs 1.1 when both the device and the NS's choice do.
        let selected =
            v3::MacVersion::try_from(req.selected_mac_version).unwrap_or(v3::MacVersion::Unknown);
        // A rejoin-request only exists inside a 1.1 session, so its answer is always 1.1.
        let opt_neg = device_1_1
            && (matches!(kind, Kind::Rejoin { .. })
                || matches!(selected, v3::MacVersion::MacV11 | v3::MacVersion::Unknown));

        // 1. The MIC of the request.
        let join_nonce = match kind {
            Kind::Join { dev_nonce } => {
                let (key, name) = if device_1_1 {
                    (root.nwk_key.ok_or_else(|| missing("NwkKey"))?, "NwkKey")
                } else {
                    (root.app_key.ok_or_else(|| missing("AppKey"))?, "AppKey")
                };
                if !mic_matches(&crypto::join_request_mic(&key, mic_input), &received_mic) {
                    return Err(JoinError::MicMismatch {
                        what: "join-request".into(),
                        key: name,
                    });
                }
                // 2-3. The DevNonce, checked and recorded, and a fresh JoinNonce: one
                // atomic write, durable before either is used.
                let mode = if device_1_1 {
                    DevNonceMode::StrictlyIncreasing
                } else {
                    DevNonceMode::NeverReused
                };
                Some(
                    self.store
                        .accept_dev_nonce(join_eui, dev_eui, dev_nonce, mode)
                        .await?,
                )
            }
            Kind::Rejoin {
                rejoin_type,
                rj_count,
            } => {
                if !device_1_1 {
                    return Err(JoinError::RejoinNotSupported(dev_eui));
                }
                let nwk_key = root.nwk_key.ok_or_else(|| missing("NwkKey"))?;
                let what = format!("rejoin-request type {rejoin_type}");
                let session = if rejoin_type == 1 {
                    let key = derive_js_int_key(&nwk_key, dev_eui);
                    if !mic_matches(&crypto::rejoin_request_mic(&key, mic_input), &received_mic) {
                        return Err(JoinError::MicMismatch {
                            what,
                            key: "JSIntKey",
                        });
                    }
                    None
                } else {
                    let state = rejoin02.unwrap_or_default();
                    let mut matched = None;
                    for s in state.sessions.iter().take(RECENT_SESSIONS) {
                        let Some(rec) = self.store.get_session_keys(&s.session_key_id).await?
                        else {
                            continue;
                        };
                        let keys = seal::open_session_keys(
                            &self.config.root_kek,
                            &rec.wrapped_keys,
                            join_eui,
                            dev_eui,
                        )?;
                        if let Some(k) = keys.s_nwk_s_int_key
                            && mic_matches(
                                &crypto::rejoin_request_mic(&k, mic_input),
                                &received_mic,
                            )
                        {
                            matched = Some(s.session_key_id.clone());
                            break;
                        }
                    }
                    Some(matched.ok_or(JoinError::MicMismatch {
                        what,
                        key: "SNwkSIntKey of the device's recent sessions",
                    })?)
                };
                self.check_rejoin_count(dev_eui, rejoin_type, rj_count, session.as_deref())
                    .await?;
                None
            }
        };
        // 3. A fresh JoinNonce, persisted before it is used.
        let join_nonce = match join_nonce {
            Some(n) => n,
            None => self.store.next_join_nonce(join_eui, dev_eui).await?,
        };
        let nonce = kind.nonce();

        // 4. Session keys, and the join-accept's MIC and encryption keys.
        let (keys, mic_key, enc_key) = if opt_neg {
            let nwk_key = root.nwk_key.ok_or_else(|| missing("NwkKey"))?;
            let app_key = root.app_key.ok_or_else(|| missing("AppKey"))?;
            let k = derive_session_keys_1_1(&nwk_key, &app_key, join_nonce, join_eui, nonce);
            let js_int_key = derive_js_int_key(&nwk_key, dev_eui);
            let enc_key = match kind {
                Kind::Join { .. } => nwk_key,
                Kind::Rejoin { .. } => derive_js_enc_key(&nwk_key, dev_eui),
            };
            (
                SessionKeys {
                    f_nwk_s_int_key: k.f_nwk_s_int_key,
                    s_nwk_s_int_key: Some(k.s_nwk_s_int_key),
                    nwk_s_enc_key: Some(k.nwk_s_enc_key),
                    app_s_key: k.app_s_key,
                },
                MicKey::V1_1(js_int_key),
                enc_key,
            )
        } else {
            // 1.0.x, or a 1.1 device on a 1.0 network: its NwkKey plays the AppKey.
            let key = if device_1_1 {
                root.nwk_key.ok_or_else(|| missing("NwkKey"))?
            } else {
                root.app_key.ok_or_else(|| missing("AppKey"))?
            };
            let k = derive_session_keys_1_0(&key, join_nonce, settings.net_id, nonce);
            (
                SessionKeys {
                    f_nwk_s_int_key: k.nwk_s_key,
                    s_nwk_s_int_key: None,
                    nwk_s_enc_key: None,
                    app_s_key: k.app_s_key,
                },
                MicKey::V1_0(key),
                key,
            )
        };

        // 5. The join-accept.
        let raw_payload = finish_join_accept(
            accept_fields(settings, join_nonce, opt_neg),
            mic_key,
            kind.join_req_type(),
            join_eui,
            nonce,
            &enc_key,
        )
        .map_err(|e| JoinError::Keys(format!("join-accept encryption: {e}")))?;

        // 6. The session's keys, sealed, under a fresh session key ID.
        let session_key_id = ulid::Ulid::new().to_bytes().to_vec();
        let sealed = SessionKeysRecord {
            session_key_id: session_key_id.clone(),
            join_eui: join_eui.to_be_bytes().to_vec(),
            dev_eui: dev_eui.to_be_bytes().to_vec(),
            wrapped_keys: seal::seal_session_keys(&self.config.root_kek, &keys, join_eui, dev_eui),
        };
        let store_keys = self.store.set_session_keys(&sealed);
        if opt_neg {
            // Independent writes: together they can share one group commit.
            let (stored, recorded) = tokio::join!(
                store_keys,
                self.record_session(join_eui, dev_eui, &session_key_id)
            );
            stored?;
            recorded?;
        } else {
            store_keys.await?;
        }

        Ok(v3::JoinResponse {
            raw_payload,
            session_keys: Some(self.session_keys_for_ns(&keys, session_key_id)),
            lifetime: self.config.lifetime.map(|d| pbjson_types::Duration {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            }),
            correlation_ids: cids.as_slice().to_vec(),
        })
    }

    /// The network keys for the NS (wrapped under its KEK when it has one) and the AppSKey
    /// wrapped for the AS, never in clear.
    fn session_keys_for_ns(&self, keys: &SessionKeys, session_key_id: Vec<u8>) -> v3::SessionKeys {
        let ns = |k: &Aes128Key| match self.config.keks.get(&self.config.ns_kek_label) {
            Some(kek) if !self.config.ns_kek_label.is_empty() => {
                v3::KeyEnvelope::wrapped(self.config.ns_kek_label.clone(), kek.wrap_key(k))
            }
            _ => v3::KeyEnvelope::clear(*k),
        };
        v3::SessionKeys {
            session_key_id,
            f_nwk_s_int_key: Some(ns(&keys.f_nwk_s_int_key)),
            s_nwk_s_int_key: keys.s_nwk_s_int_key.as_ref().map(ns),
            nwk_s_enc_key: keys.nwk_s_enc_key.as_ref().map(ns),
            app_s_key: Some(self.app_s_key_for_as(&keys.app_s_key)),
        }
    }

    /// The AppSKey wrapped under the AS KEK (configuration guarantees it exists).
    pub(crate) fn app_s_key_for_as(&self, key: &Aes128Key) -> v3::KeyEnvelope {
        let label = &self.config.as_kek_label;
        let kek = &self.config.keks[label];
        v3::KeyEnvelope::wrapped(label.clone(), kek.wrap_key(key))
    }

    async fn rejoin_state(
        &self,
        dev_eui: Eui64,
    ) -> Result<Option<tern_store::Versioned<RejoinState>>, JoinError> {
        let Some(record) = self.store.get(&REJOIN_STATE, &dev_eui.to_string()).await? else {
            return Ok(None);
        };
        let value = RejoinState::decode(record.value.as_slice())
            .map_err(|e| JoinError::Keys(format!("rejoin state of DevEUI {dev_eui}: {e}")))?;
        Ok(Some(tern_store::Versioned {
            value,
            version: record.version,
        }))
    }

    /// Reads the rejoin state, lets `f` change it, and writes it unless another writer got
    /// there first; then tries again.
    async fn modify_rejoin_state(
        &self,
        dev_eui: Eui64,
        mut f: impl FnMut(&mut RejoinState) -> Result<(), JoinError>,
    ) -> Result<(), JoinError> {
        for _ in 0..32 {
            let current = self.rejoin_state(dev_eui).await?;
            let expect = current
                .as_ref()
                .map_or(Expect::Absent, |v| Expect::Version(v.version));
            let mut state = current.map(|v| v.value).unwrap_or_default();
            f(&mut state)?;
            let mut batch = Batch::new();
            batch.put(
                &REJOIN_STATE,
                dev_eui.to_string(),
                state.encode_to_vec(),
                expect,
                Vec::new(),
            );
            // Grouped with other joins' writes; durable when it returns.
            match self.store.commit_grouped(batch).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() || e.is_already_exists() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(JoinError::Store(format!(
            "rejoin state of DevEUI {dev_eui}: too many concurrent writers"
        )))
    }

    /// Accepts a rejoin counter only when greater than the last accepted one of its kind
    /// (RJcount1 per device, RJcount0 per session), and records it.
    async fn check_rejoin_count(
        &self,
        dev_eui: Eui64,
        rejoin_type: u8,
        rj_count: u16,
        session: Option<&[u8]>,
    ) -> Result<(), JoinError> {
        let value = u32::from(rj_count);
        self.modify_rejoin_state(dev_eui, |state| {
            let (counter, slot) = match session {
                None => (1, &mut state.rj_count1),
                Some(id) => {
                    let s = state
                        .sessions
                        .iter_mut()
                        .find(|s| s.session_key_id == id)
                        .ok_or(JoinError::UnknownSession {
                            rejoin_type,
                            dev_eui,
                        })?;
                    (0, &mut s.rj_count0)
                }
            };
            if let Some(last) = *slot
                && value <= last
            {
                return Err(JoinError::RejoinCount {
                    counter,
                    value: rj_count,
                    last,
                    dev_eui,
                });
            }
            *slot = Some(value);
            Ok(())
        })
        .await
    }

    /// Makes `session_key_id` the device's newest session for rejoins.
    async fn record_session(
        &self,
        join_eui: Eui64,
        dev_eui: Eui64,
        session_key_id: &[u8],
    ) -> Result<(), JoinError> {
        self.modify_rejoin_state(dev_eui, |state| {
            let join_eui = join_eui.to_be_bytes().to_vec();
            if state.join_eui != join_eui {
                // Another device with this DevEUI before: its counters do not apply.
                *state = RejoinState {
                    join_eui,
                    ..Default::default()
                };
            }
            state.sessions.insert(
                0,
                RecentSession {
                    session_key_id: session_key_id.to_vec(),
                    rj_count0: None,
                },
            );
            state.sessions.truncate(RECENT_SESSIONS);
            Ok(())
        })
        .await
    }
}

/// Appends the MIC to the plain join-accept fields and encrypts the result.
fn finish_join_accept(
    mut accept: Vec<u8>,
    mic_key: MicKey,
    join_req_type: u8,
    join_eui: Eui64,
    nonce: DevNonce,
    enc_key: &Aes128Key,
) -> Result<Vec<u8>, lorawan::CryptoError> {
    let mic = match mic_key {
        MicKey::V1_0(k) => crypto::join_accept_mic_1_0(&k, &accept),
        MicKey::V1_1(k) => crypto::join_accept_mic_1_1(&k, join_req_type, join_eui, nonce, &accept),
    };
    accept.extend_from_slice(&mic);
    encrypt_join_accept(enc_key, &accept)
}

/// Which MIC the join-accept gets.
enum MicKey {
    /// 1.0.x style with the AppKey (NwkKey of a 1.1 device without OptNeg).
    V1_0(Aes128Key),
    /// 1.1 style with the JSIntKey.
    V1_1(Aes128Key),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hex: &str) -> Aes128Key {
        Aes128Key(hex::decode(hex).unwrap().try_into().unwrap())
    }

    fn settings(dev_addr: u32, net_id: u32) -> AcceptSettings {
        AcceptSettings {
            dev_addr: DevAddr::from_u32(dev_addr),
            net_id: NetId::from_u32(net_id),
            rx1_dr_offset: 0,
            rx2_dr: 0,
            rx_delay: 0,
            cf_list: None,
        }
    }

    /// Vector: ChirpStack `lrwn/src/phy_payload.rs`, 1.0.x join-accept (via
    /// /work/shared/vectors.md).
    #[test]
    fn join_accept_1_0_vector() {
        let app_key = key("0102030405060708090A0B0C0D0E0F10");
        let jn = JoinNonce::new(0x010101).unwrap();
        let fields = accept_fields(&settings(0x01020304, 0x020202), jn, false);
        let mut plain = fields.clone();
        plain.extend_from_slice(&crypto::join_accept_mic_1_0(&app_key, &fields));
        assert_eq!(
            hex::encode_upper(&plain),
            "200101010202020403020100003449F212"
        );
        let out = finish_join_accept(
            fields,
            MicKey::V1_0(app_key),
            JOIN_REQ_TYPE_JOIN_REQUEST,
            Eui64::default(),
            DevNonce(0),
            &app_key,
        )
        .unwrap();
        assert_eq!(hex::encode_upper(out), "2023CF335489AAE3183C0BE0BAA8DEE5F3");
    }

    /// Vector: ChirpStack `lrwn/src/phy_payload.rs`, 1.1 join-accept with OptNeg (via
    /// /work/shared/vectors.md); the same key is the JSIntKey and the encryption key.
    #[test]
    fn join_accept_1_1_vector() {
        let k = key("0102030405060708090A0B0C0D0E0F10");
        let jn = JoinNonce::new(0x010101).unwrap();
        let fields = accept_fields(&settings(0x01020304, 0x020202), jn, true);
        let join_eui: Eui64 = "0807060504030201".parse().unwrap();
        let out = finish_join_accept(
            fields,
            MicKey::V1_1(k),
            JOIN_REQ_TYPE_JOIN_REQUEST,
            join_eui,
            DevNonce(258),
            &k,
        )
        .unwrap();
        assert_eq!(
            hex::encode_upper(crypto::decrypt_join_accept(&k, &out).unwrap()),
            "2001010102020204030201800093FF9A3A"
        );
        assert_eq!(hex::encode_upper(out), "207ABEEA06B02920F11C02D0348FCF1815");
    }

    #[test]
    fn accept_fields_carry_the_ns_settings() {
        let mut s = settings(0x26011234, 0x000013);
        s.rx1_dr_offset = 3;
        s.rx2_dr = 8;
        s.rx_delay = 5;
        s.cf_list = Some([0xAA; 16]);
        let f = accept_fields(&s, JoinNonce::new(7).unwrap(), true);
        assert_eq!(f.len(), 29);
        assert_eq!(f[11], 0x80 | 0x30 | 0x08);
        assert_eq!(f[12], 5);
        assert_eq!(&f[7..11], &[0x34, 0x12, 0x01, 0x26]);
        assert_eq!(&f[13..], &[0xAA; 16]);
    }
}
