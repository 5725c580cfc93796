//! LoRaWAN 1.1 rejoin-requests (L2 1.1 §6.2.4, §6.2.5).
//!
//! Types 0 and 2 carry NetID and DevEUI and are signed with the SNwkSIntKey of the device's
//! session: the NS finds the device by DevEUI, verifies the MIC and that RJcount0 (shared by
//! types 0 and 2, per session) increases, then asks the Join Server. Type 1 carries JoinEUI
//! and DevEUI and is signed with the JSIntKey, which only the JS holds: the JS verifies it
//! and RJcount1. The answer is a join-accept sent in the data receive windows (RX1 delay and
//! RX parameters of the current session, not the join-accept delays); the new session is
//! pending until the device's first uplink with it, like after a join. Type 0 and 1 get a
//! new DevAddr and a fresh MAC state; type 2 keeps the DevAddr and the radio parameters.

use lorawan::phy::RejoinRequest;
use lorawan::{Eui64, crypto};
use tern_store::{Batch, Expect, Table};

use super::*;

/// Rejoin state per DevEUI: which device it is (types 0/2 carry no JoinEUI) and the last
/// RJcount0 accepted, with the session it belongs to.
pub(crate) static REJOIN_DEVICES: Table = Table {
    name: "ns.rejoin",
    what: "NS rejoin state",
};

/// A [`REJOIN_DEVICES`] record.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RejoinRecord {
    /// The device's application.
    #[prost(string, tag = "1")]
    pub application_id: String,
    /// The device.
    #[prost(string, tag = "2")]
    pub device_id: String,
    /// The session `rj_count0` belongs to (its session key ID, or DevAddr without one).
    #[prost(bytes = "vec", tag = "3")]
    pub session: Vec<u8>,
    /// The greatest RJcount0 accepted in that session.
    #[prost(uint32, optional, tag = "4")]
    pub rj_count0: Option<u32>,
}

/// Admission of join-requests under load: at most `join-concurrency` in progress, the others
/// waiting in arrival order (tokio's semaphore is fair), each only as long as it could still
/// be answered; and a moving average of how long one takes once admitted. Without it a
/// burst starts every request at once, all progress together and all finish too late.
pub(super) struct JoinGate {
    permits: tokio::sync::Semaphore,
    /// Moving average (weight 1/8) of the time from admission to a ready accept, in µs.
    cost_us: AtomicU64,
}

/// A join-request's turn; dropping it lets the next one in.
pub(super) struct JoinTurn<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    started: Instant,
    gate: &'a JoinGate,
}

impl JoinTurn<'_> {
    /// Records that the accept is ready: the time since admission feeds the estimate.
    pub(super) fn ready(&self) {
        let took = self.started.elapsed().as_micros() as u64;
        let _ = self
            .gate
            .cost_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    took
                } else {
                    old - old / 8 + took / 8
                })
            });
    }
}

impl JoinGate {
    pub(super) fn new(permits: usize) -> Self {
        Self {
            permits: tokio::sync::Semaphore::new(permits.max(1)),
            cost_us: AtomicU64::new(0),
        }
    }

    /// How long an admitted join-request currently takes until its accept is ready.
    pub(super) fn cost(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.cost_us.load(Ordering::Relaxed))
    }

    /// Waits for a turn, in arrival order; gives up (returning how long it waited) once
    /// starting could no longer have the accept ready `margin` before `last_window` after
    /// `received_at`, given the current cost estimate.
    pub(super) async fn admit(
        &self,
        received_at: SystemTime,
        last_window: std::time::Duration,
        margin: std::time::Duration,
    ) -> Result<JoinTurn<'_>, std::time::Duration> {
        let waiting = Instant::now();
        let latest_start = (received_at + last_window)
            .checked_sub(margin + self.cost())
            .unwrap_or(received_at);
        let budget = latest_start
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if budget.is_zero() {
            return Err(waiting.elapsed());
        }
        match tokio::time::timeout(budget, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(JoinTurn {
                _permit: permit,
                started: Instant::now(),
                gate: self,
            }),
            // Timed out in the queue (or the semaphore closed, which it never is).
            _ => Err(waiting.elapsed()),
        }
    }
}

/// When the windows of a (re)join-accept open, which of them it can still make.
pub(super) fn reachable_windows(
    received_at: SystemTime,
    rx1_delay: u32,
    margin: std::time::Duration,
    now: SystemTime,
) -> (bool, bool) {
    let rx1 = received_at + std::time::Duration::from_secs(u64::from(rx1_delay));
    let rx2 = rx1 + std::time::Duration::from_secs(1);
    (now + margin <= rx1, now + margin <= rx2)
}

/// The identity of a session for RJcount0.
fn session_id(s: &crate::devices::SessionCtx) -> Vec<u8> {
    if s.session_key_id.is_empty() {
        s.dev_addr.to_be_bytes().to_vec()
    } else {
        s.session_key_id.clone()
    }
}

impl Core {
    async fn rejoin_record(&self, dev_eui: Eui64) -> Result<Option<(RejoinRecord, u64)>, String> {
        let Some(r) = self
            .store
            .get(&REJOIN_DEVICES, &dev_eui.to_string())
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let rec = RejoinRecord::decode(r.value.as_slice())
            .map_err(|e| format!("rejoin state of DevEUI {dev_eui}: {e}"))?;
        Ok(Some((rec, r.version)))
    }

    async fn put_rejoin_record(
        &self,
        dev_eui: Eui64,
        rec: &RejoinRecord,
        version: Option<u64>,
    ) -> Result<(), String> {
        let mut batch = Batch::new();
        batch.put(
            &REJOIN_DEVICES,
            dev_eui.to_string(),
            rec.encode_to_vec(),
            version.map_or(Expect::Absent, Expect::Version),
            Vec::new(),
        );
        // Grouped: durable when it returns, but sharing its transaction with other joins.
        self.store
            .commit_grouped(batch)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Remembers which device a DevEUI is, for its later rejoin-requests of type 0 and 2
    /// (called on every accepted join; the caller holds the device's lock).
    pub(super) async fn remember_dev_eui(&self, dev_eui: Eui64, ids: &v3::EndDeviceIdentifiers) {
        let app = app_id(ids);
        let result = match self.rejoin_record(dev_eui).await {
            Ok(Some((rec, _))) if rec.application_id == app && rec.device_id == ids.device_id => {
                return;
            }
            Ok(existing) => {
                let rec = RejoinRecord {
                    application_id: app,
                    device_id: ids.device_id.clone(),
                    ..Default::default()
                };
                self.put_rejoin_record(dev_eui, &rec, existing.map(|(_, v)| v))
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            warn!(%dev_eui, error = %e, "cannot record the DevEUI for rejoin-requests");
        }
    }

    /// The device slot of `application_id/device_id`, loaded from the store if needed.
    async fn rejoin_slot(&self, app: &str, dev: &str) -> Result<Option<Slot>, String> {
        let key = format!("{app}/{dev}");
        if let Some(s) = self.devices.get(&key) {
            return Ok(Some(s));
        }
        let Some(found) = self
            .store
            .get_ns_device(app, dev)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let d = Device::load(found.value, found.version, &self.vault)?;
        Ok(Some(self.devices.insert(d)))
    }

    /// Handles a deduplicated rejoin-request.
    pub(super) async fn handle_rejoin(self: &Arc<Self>, ctx: UplinkCtx, phy: PhyPayload) {
        let cids = ctx.msg.correlation_ids.clone();
        let Payload::RejoinRequest(rr) = &phy.payload else {
            return;
        };
        let rejoin_type = rr.rejoin_type();
        let dev_eui = rr.dev_eui();
        self.events.publish_with(&defs::NS_UP_JOIN_RECEIVE, |e| {
            e.with_correlation_ids(cids.iter().cloned())
                .with_data(&ctx.msg)
        });
        let what = format!("rejoin-request type {rejoin_type} of DevEUI {dev_eui}");
        let reject =
            |reason: &'static str, message: String, ids: Option<&v3::EndDeviceIdentifiers>| {
                self.metrics
                    .rejoins
                    .get_or_create(&[("outcome", reason)])
                    .inc();
                self.metrics
                    .dropped
                    .get_or_create(&[("reason", reason)])
                    .inc();
                debug!(reason, %message, "rejoin-request dropped");
                let details = error(tonic::Code::InvalidArgument, reason, message);
                self.events.publish_with(&defs::NS_UP_JOIN_REJECT, |e| {
                    e.with_identifiers(ids)
                        .with_correlation_ids(cids.iter().cloned())
                        .with_data(&details)
                });
            };

        // Which device: by JoinEUI and DevEUI (type 1), or by DevEUI in our NetID (0/2).
        let slot = match *rr {
            RejoinRequest::Type1 { join_eui, .. } => {
                match self.store.ns_device_by_euis(join_eui, dev_eui).await {
                    Ok(Some(found)) => {
                        let ids = found
                            .value
                            .device
                            .as_ref()
                            .and_then(|d| d.ids.clone())
                            .unwrap_or_default();
                        self.rejoin_slot(&app_id(&ids), &ids.device_id).await
                    }
                    Ok(None) => Ok(None),
                    Err(e) => Err(e.to_string()),
                }
            }
            RejoinRequest::Type0Or2 { net_id, .. } => {
                if net_id != self.config.net_id {
                    reject(
                        "net_id_mismatch",
                        format!(
                            "{what}: NetID {net_id} is not this network's {} (roaming is not supported)",
                            self.config.net_id
                        ),
                        None,
                    );
                    return;
                }
                match self.rejoin_record(dev_eui).await {
                    Ok(Some((rec, _))) => {
                        self.rejoin_slot(&rec.application_id, &rec.device_id).await
                    }
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        };
        let slot = match slot {
            Ok(Some(s)) => s,
            Ok(None) => {
                reject(
                    "unknown_device",
                    format!("{what}: no device on this Network Server has joined with this DevEUI"),
                    None,
                );
                return;
            }
            Err(e) => {
                reject("store_error", format!("{what}: {e}"), None);
                return;
            }
        };
        let mut dev = slot.lock().await;
        let ids = dev.ids();
        let Some(device) = dev.record.device.clone() else {
            return;
        };
        let version =
            v3::MacVersion::try_from(device.lorawan_version).unwrap_or(v3::MacVersion::Unknown);
        if version != v3::MacVersion::MacV11 {
            reject(
                "rejoin_not_supported",
                format!(
                    "{what}: the device is registered as LoRaWAN {}; rejoin-requests exist only in LoRaWAN 1.1",
                    version.as_str_name()
                ),
                Some(&ids),
            );
            return;
        }
        if !device.supports_join {
            reject(
                "not_otaa",
                format!("{what}: the device does not support join (supports_join is false)"),
                Some(&ids),
            );
            return;
        }

        // Types 0/2: the MIC of a session of the device, and RJcount0 above the last one.
        let mut verified = None;
        if let RejoinRequest::Type0Or2 { rj_count0, .. } = *rr {
            let sessions: Vec<_> = [
                (&dev.current, Which::Current),
                (&dev.pending, Which::Pending),
            ]
            .into_iter()
            .filter_map(|(s, w)| s.clone().filter(|s| s.v1_1).map(|s| (s, w)))
            .collect();
            if sessions.is_empty() {
                reject(
                    "rejoin_not_supported",
                    format!(
                        "{what}: the device has no LoRaWAN 1.1 session (joined without OptNeg, or not at all)"
                    ),
                    Some(&ids),
                );
                return;
            }
            let mic_input = PhyPayload::mic_input(&ctx.msg.raw_payload);
            let mic = phy.mic.unwrap_or_default();
            let Some((session, which)) = sessions.into_iter().find(|(s, _)| {
                crypto::mic_matches(
                    &crypto::rejoin_request_mic(&s.s_nwk_s_int_key, mic_input),
                    &mic,
                )
            }) else {
                reject(
                    "rejoin_mic_mismatch",
                    format!(
                        "{what}: the MIC does not verify with the SNwkSIntKey of the device's sessions"
                    ),
                    Some(&ids),
                );
                return;
            };
            let rj = u32::from(rj_count0);
            let sid = session_id(&session);
            let existing = match self.rejoin_record(dev_eui).await {
                Ok(r) => r,
                Err(e) => {
                    reject("store_error", format!("{what}: {e}"), Some(&ids));
                    return;
                }
            };
            if let Some((rec, _)) = &existing
                && rec.session == sid
                && let Some(last) = rec.rj_count0.filter(|l| rj <= *l)
            {
                reject(
                    "rj_count_replay",
                    format!(
                        "{what}: RJcount0 {rj} is not above {last}, the last accepted in this session"
                    ),
                    Some(&ids),
                );
                return;
            }
            // Recorded before the JS sees it: a crash cannot make this counter usable again.
            let rec = RejoinRecord {
                application_id: app_id(&ids),
                device_id: ids.device_id.clone(),
                session: sid,
                rj_count0: Some(rj),
            };
            if let Err(e) = self
                .put_rejoin_record(dev_eui, &rec, existing.map(|(_, v)| v))
                .await
            {
                reject("store_error", format!("{what}: {e}"), Some(&ids));
                return;
            }
            verified = Some((session, which));
        }

        let plan = plan_of(&device, &self.config);
        let params = plan.params();
        // Type 2 keeps the DevAddr; 0 and 1 get a new one.
        let dev_addr = match (&verified, rejoin_type) {
            (Some((s, _)), 2) => s.dev_addr,
            _ => {
                let prefix = self.prefixes[self.random_u32() as usize % self.prefixes.len()];
                prefix.address(self.random_u32())
            }
        };
        // The current RX parameters: the rejoin-accept goes out with them.
        let (rx1_delay, rx1_offset_now, rx2_freq, rx2_dr_now) =
            self.mac.rx_params(&dev, plan, &self.config);
        let (session_mac, rx1_offset, rx2_dr, rx_delay, cf_list) = if rejoin_type == 2 {
            // Radio parameters unchanged: the accept repeats them, the MAC state carries over.
            let mac = match &verified {
                Some((_, Which::Pending)) => dev.state.pending_mac.clone(),
                _ => dev.state.mac.clone(),
            };
            (mac, rx1_offset_now, rx2_dr_now, rx1_delay, Vec::new())
        } else {
            match self.mac.fresh(&device, plan, true) {
                Ok((m, Some(ja))) => (
                    m.encode_to_vec(),
                    ja.rx1_dr_offset,
                    ja.rx2_data_rate,
                    ja.rx_delay,
                    ja.cf_list.map(|c| c.to_vec()).unwrap_or_default(),
                ),
                Ok((_, None)) => return,
                Err(e) => {
                    reject("invalid_mac_settings", format!("{what}: {e}"), Some(&ids));
                    return;
                }
            }
        };
        let request = v3::JoinRequest {
            raw_payload: ctx.msg.raw_payload.clone(),
            dev_addr: dev_addr.to_be_bytes().to_vec(),
            selected_mac_version: v3::MacVersion::MacV11 as i32,
            net_id: self.config.net_id.to_be_bytes().to_vec(),
            downlink_settings: Some(v3::DownlinkSettings {
                rx1_dr_offset: u32::from(rx1_offset),
                rx2_dr: u32::from(rx2_dr),
                opt_neg: true,
            }),
            rx_delay: u32::from(rx_delay),
            cf_list,
            correlation_ids: cids.clone(),
        };
        let response = match self.js.handle_join(request.clone()).await {
            Ok(r) => r,
            Err(status) => {
                let reason = match status.code() {
                    tonic::Code::AlreadyExists => "rj_count_replay",
                    tonic::Code::NotFound => "unknown_device",
                    tonic::Code::InvalidArgument => "rejoin_mic_mismatch",
                    tonic::Code::FailedPrecondition => "rejoin_not_supported",
                    _ => "join_server_error",
                };
                reject(
                    reason,
                    format!("{what}: Join Server: {}", status.message()),
                    Some(&ids),
                );
                return;
            }
        };
        let mut keys = response.session_keys.clone().unwrap_or_default();
        let app_s_key = keys.app_s_key.take();
        // The NS keeps the AppSKey only wrapped; it cannot read it.
        keys.app_s_key = app_s_key.clone().filter(|k| k.is_wrapped());
        let session = v3::Session {
            dev_addr: dev_addr.to_be_bytes().to_vec(),
            keys: Some(keys),
            started_at: Some(Timestamp::now()),
            ..Default::default()
        };
        let ctx_keys = match self.vault.session(&session, true) {
            Ok(k) => k,
            Err(e) => {
                reject("unusable_session_keys", format!("{what}: {e}"), Some(&ids));
                return;
            }
        };
        let old_addrs = dev.dev_addrs();
        let mut next = dev.clone();
        next.record.pending_session = Some(session);
        next.pending = Some(ctx_keys);
        next.state.pending_mac = session_mac;
        next.record.state = next.state.encode_to_vec();
        match self.store.record_uplink(&next.record, dev.version).await {
            Ok(v) => next.version = v,
            Err(e) => {
                reject("store_error", format!("{what}: {e}"), Some(&ids));
                return;
            }
        }
        *dev = next;
        let new_addrs = dev.dev_addrs();
        self.devices
            .reindex(&dev.key(), &old_addrs, &new_addrs, &slot);
        self.metrics
            .rejoins
            .get_or_create(&[("outcome", "accepted")])
            .inc();
        self.events.publish_with(&defs::NS_UP_JOIN_ACCEPT, |e| {
            e.with_identifiers([&ids])
                .with_correlation_ids(cids.iter().cloned())
                .with_data(&request)
        });

        // The rejoin-accept: data receive windows of the current session.
        let up_dr = uplink_dr(plan, ctx.msg.settings.as_ref()).unwrap_or(0);
        let rx1_dr = params
            .rx1_data_rate(up_dr, rx1_offset_now, plan.downlink_dwell_time)
            .unwrap_or(up_dr);
        let windows = AcceptWindows {
            rx1_delay: u32::from(rx1_delay),
            rx1_dr,
            rx2_dr: rx2_dr_now,
            rx2_frequency: rx2_freq,
        };
        let accept = Accept::new(&response, dev_addr, app_s_key);
        self.answer_join(&ctx, &ids, &cids, plan, windows, accept, "rejoin_accept")
            .await;
    }

    /// Hands a join- or rejoin-accept (`kind`, the metric's outcome) to the GS; events and
    /// metrics say how it went. Without a usable gateway it fails with `no_gateway_path`.
    pub(super) async fn schedule_accept(
        &self,
        ids: &v3::EndDeviceIdentifiers,
        cids: &[String],
        message: v3::DownlinkMessage,
        rx: &[v3::RxMetadata],
        kind: &'static str,
    ) {
        let fail = |f: v3::ScheduleDownlinkFailure| {
            self.events
                .publish_with(&defs::NS_DOWN_JOIN_SCHEDULE_FAIL, |e| {
                    e.with_identifiers([ids])
                        .with_correlation_ids(cids.iter().cloned())
                        .with_data(&f)
                });
        };
        let Some(gs) = self.gs.get() else {
            warn!(
                kind,
                "no Gateway Server link is set: the accept cannot be scheduled"
            );
            return;
        };
        if message
            .request
            .as_ref()
            .is_none_or(|r| r.downlink_paths.is_empty())
        {
            self.metrics
                .downlinks
                .get_or_create(&[("outcome", "no_gateway_path")])
                .inc();
            let heard: Vec<_> = rx.iter().filter_map(|m| m.gateway_ids.clone()).collect();
            fail(self.gateways.no_path_failure(&heard));
            return;
        }
        match gs.schedule_downlink(message.clone()).await {
            Ok(v3::ScheduleDownlinkResponse {
                result: Some(v3::schedule_downlink_response::Result::Scheduled(_)),
            }) => {
                self.metrics
                    .downlinks
                    .get_or_create(&[("outcome", kind)])
                    .inc();
                self.events.publish_with(&defs::NS_DOWN_JOIN_SCHEDULE, |e| {
                    e.with_identifiers([ids])
                        .with_correlation_ids(cids.iter().cloned())
                        .with_data(&message)
                });
            }
            Ok(v3::ScheduleDownlinkResponse {
                result: Some(v3::schedule_downlink_response::Result::Failed(f)),
            }) => fail(f),
            Ok(_) | Err(_) => {
                self.metrics
                    .downlinks
                    .get_or_create(&[("outcome", "schedule_error")])
                    .inc();
            }
        }
    }
}
