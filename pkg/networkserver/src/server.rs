//! The Network Server's core: the uplink pipeline (dedup, session match, FCnt, durability,
//! forwarding), joins, and class A/C downlinks.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Instant, SystemTime};

use band::FrequencyPlan;
use lorawan::crypto;
use lorawan::phy::{FCtrl, FOpts, Fhdr, MacPayload, Mhdr, Payload};
use lorawan::{DevAddr, Direction, MType, MacCommand, PhyPayload};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use prost::Message;
use tern_api::{Timestamp, v3};
use tern_cluster::links::{LinkResult, NsJs};
use tern_events::{EventBus, definitions as defs};
use tern_store::{
    DownlinkQueueStore, NsDeviceRecord, NsDeviceStore, QueueOwner, Store, StoreError,
};
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{Instrument, debug, info_span, warn};

use crate::config::{DevAddrPrefix, NsConfig};
use crate::dedup::{Admit, Dedup};
use crate::devices::{Device, Devices, KeyVault, Mismatch, NsState, Slot, TxParams, Which};
use crate::link::{LinkHub, QueueHandler};
use crate::mac::{MacLayer, UplinkInfo};

#[path = "fopts.rs"]
mod fopts;
#[path = "gateways.rs"]
mod gateways;
#[path = "rejoin.rs"]
mod rejoin;

type Labels = [(&'static str, &'static str); 1];

/// The NS's pipeline metrics, registered under `tern_ns_`.
#[derive(Clone, Default)]
pub(crate) struct Metrics {
    pub received: Counter,
    pub dropped: Family<Labels, Counter>,
    pub forwarded: Counter,
    pub retransmissions: Counter,
    pub joins: Family<Labels, Counter>,
    pub downlinks: Family<Labels, Counter>,
    pub rejoins: Family<Labels, Counter>,
}

impl Metrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "uplinks_received",
            "Uplink frame copies received from Gateway Servers",
            self.received.clone(),
        );
        r.register(
            "uplinks_dropped",
            "Uplinks dropped, by reason",
            self.dropped.clone(),
        );
        r.register(
            "uplinks_forwarded",
            "Data uplinks forwarded to Application Servers",
            self.forwarded.clone(),
        );
        r.register(
            "uplinks_retransmitted",
            "Retransmissions of the last accepted uplink (answered, not delivered again)",
            self.retransmissions.clone(),
        );
        r.register("joins", "Join-requests, by outcome", self.joins.clone());
        r.register("downlinks", "Downlinks, by outcome", self.downlinks.clone());
        r.register(
            "rejoins",
            "Rejoin-requests (LoRaWAN 1.1), by outcome",
            self.rejoins.clone(),
        );
    }
}

/// A downlink handed to a GS, waiting for its TX acknowledgment.
struct PendingTx {
    application_id: String,
    app: Option<v3::ApplicationDownlink>,
    message: v3::DownlinkMessage,
    rx_window: u32,
}

/// The core, shared by the role, its link ends and its tasks.
pub(crate) struct Core {
    pub config: NsConfig,
    pub store: Store,
    pub events: EventBus,
    pub js: Arc<dyn NsJs>,
    /// The Gateway Server link, behind the router that picks a GS per path.
    pub gs: gateways::GsSlot,
    pub links: LinkHub,
    pub devices: Devices,
    pub dedup: Dedup,
    /// The dedup windows to close, in opening order (see [`spawn_closer`]).
    closer: OnceLock<mpsc::UnboundedSender<(tokio::time::Instant, Vec<u8>)>>,
    pub vault: KeyVault,
    pub metrics: Metrics,
    pub mac: MacLayer,
    /// Gateway connection states, for downlink path selection.
    pub(crate) gateways: gateways::Gateways,
    pending_tx: Mutex<HashMap<String, PendingTx>>,
    /// Woken whenever a downlink is added to `pending_tx`.
    tx_tracked: tokio::sync::Notify,
    prefixes: Vec<DevAddrPrefix>,
    random: RandomState,
    counter: AtomicU64,
    pub instance_id: String,
    /// Admission of join-requests (see `rejoin::JoinGate`).
    join_gate: rejoin::JoinGate,
}

/// Everything an uplink carries besides its frame.
/// The class A windows a (re)join-accept is sent in.
struct AcceptWindows {
    rx1_delay: u32,
    rx1_dr: u8,
    rx2_dr: u8,
    rx2_frequency: u32,
}

/// A (re)join-accept from the Join Server and the session it starts.
struct Accept {
    raw_payload: Vec<u8>,
    dev_addr: DevAddr,
    session_key_id: Vec<u8>,
    app_s_key: Option<v3::KeyEnvelope>,
}

impl Accept {
    fn new(
        response: &v3::JoinResponse,
        dev_addr: DevAddr,
        app_s_key: Option<v3::KeyEnvelope>,
    ) -> Self {
        Self {
            raw_payload: response.raw_payload.clone(),
            dev_addr,
            session_key_id: response
                .session_keys
                .as_ref()
                .map(|k| k.session_key_id.clone())
                .unwrap_or_default(),
            app_s_key,
        }
    }
}

struct UplinkCtx {
    msg: v3::UplinkMessage,
    frequency: u32,
    received_at: SystemTime,
    /// Set when recording the uplink found the device written by another instance: it was
    /// reloaded, and the uplink is verified again (see `shared`).
    stale: std::sync::atomic::AtomicBool,
}

fn error(code: tonic::Code, name: &str, message: impl Into<String>) -> v3::ErrorDetails {
    v3::ErrorDetails {
        code: code as u32,
        name: name.to_owned(),
        message: message.into(),
        ..Default::default()
    }
}

fn app_id(ids: &v3::EndDeviceIdentifiers) -> String {
    ids.application_ids
        .as_ref()
        .map(|a| a.application_id.clone())
        .unwrap_or_default()
}

/// Deduplicated frames processed at once at most; beyond, windows close later (the
/// backlog waits as payloads, not as half-run pipelines).
const MAX_PROCESSING: usize = 4096;

/// The task that closes dedup windows: every window lasts as long, so they close in the
/// order they opened, one timer for all instead of a task per frame. Each merged uplink is
/// processed in its own task.
fn spawn_closer(core: Weak<Core>) -> mpsc::UnboundedSender<(tokio::time::Instant, Vec<u8>)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_PROCESSING));
    tokio::spawn(async move {
        while let Some((deadline, raw)) = rx.recv().await {
            tokio::time::sleep_until(deadline).await;
            let Some(core) = core.upgrade() else { return };
            let until = Instant::now() + core.config.cooldown;
            let Some(merged) = core.dedup.close(&raw, until) else {
                continue;
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            tokio::spawn(async move {
                core.process(merged).await;
                drop(permit);
            });
        }
    });
    tx
}

/// A message for the AS about a device.
fn app_up(
    ids: &v3::EndDeviceIdentifiers,
    cids: &[String],
    up: v3::application_up::Up,
) -> v3::ApplicationUp {
    v3::ApplicationUp {
        end_device_ids: Some(ids.clone()),
        correlation_ids: cids.to_vec(),
        received_at: Some(Timestamp::now()),
        up: Some(up),
    }
}

/// The device's frequency plan, or the NS default.
pub(crate) fn plan_of(device: &v3::EndDevice, config: &NsConfig) -> &'static FrequencyPlan {
    FrequencyPlan::by_id(&device.frequency_plan_id)
        .or_else(|| FrequencyPlan::by_id(&config.default_frequency_plan))
        .unwrap_or_else(|| FrequencyPlan::all()[0])
}

/// Uplink data rate index from the rx settings.
fn uplink_dr(plan: &FrequencyPlan, settings: Option<&v3::TxSettings>) -> Option<u8> {
    let s = settings?;
    if let Some(i) = s.data_rate_index {
        return u8::try_from(i).ok();
    }
    let dr = band::DataRate::try_from(s.data_rate.as_ref()?).ok()?;
    plan.params().dr_index_for(&dr, band::Direction::Uplink)
}

/// Uplink channel index (for the 1.1 MIC's TxCh): fixed regions by frequency, dynamic
/// regions by position in the plan.
fn uplink_channel(plan: &FrequencyPlan, frequency: u32) -> u8 {
    plan.params()
        .uplink_channel_index(frequency)
        .or_else(|| {
            plan.uplink_channels
                .iter()
                .position(|c| c.frequency == frequency)
                .map(|i| i as u8)
        })
        .unwrap_or(0)
}

/// Rx metadata ordered best first (SNR, then RSSI).
fn best_first(md: &[v3::RxMetadata]) -> Vec<v3::RxMetadata> {
    let mut v = md.to_vec();
    v.sort_by(|a, b| {
        b.snr
            .partial_cmp(&a.snr)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(
                b.rssi
                    .partial_cmp(&a.rssi)
                    .unwrap_or(std::cmp::Ordering::Equal),
            )
    });
    v
}

/// The next counter the Application Server may use on air for the device (1.0.x shares it
/// with the network counter).
fn air_next_a(state: &NsState, v1_1: bool) -> u32 {
    if v1_1 {
        state.next_a_f_cnt_down_air
    } else {
        state.next_n_f_cnt_down
    }
}

impl Core {
    pub fn new(
        config: NsConfig,
        store: Store,
        events: EventBus,
        js: Arc<dyn NsJs>,
        links: LinkHub,
        instance_id: String,
    ) -> Self {
        let vault = KeyVault::new(config.keks().unwrap_or_default());
        let prefixes = config.prefixes();
        let mac = MacLayer::new(&config);
        let gateways = gateways::Gateways::default();
        let join_gate = rejoin::JoinGate::new(config.join_concurrency);
        Self {
            config,
            store,
            events,
            js,
            gs: gateways::GsSlot::new(gateways.routes()),
            links,
            devices: Devices::new(),
            dedup: Dedup::new(),
            closer: OnceLock::new(),
            vault,
            metrics: Metrics::default(),
            mac,
            gateways,
            pending_tx: Mutex::default(),
            tx_tracked: tokio::sync::Notify::new(),
            prefixes,
            random: RandomState::new(),
            counter: AtomicU64::new(0),
            instance_id,
            join_gate,
        }
    }

    pub fn register_metrics(&self, r: &mut Registry) {
        self.metrics.register(r);
        self.devices.register_metrics(r);
        self.gateways.register(r);
    }

    /// Loads every stored device into the in-memory table.
    pub async fn load(&self) -> Result<usize, StoreError> {
        // Most devices have nothing queued: the embedded store then answers a queue read
        // from memory instead of a database read per uplink.
        self.store
            .track_keys(&tern_store::tables::NS_QUEUES)
            .await?;
        let table = &tern_store::tables::NS_DEVICES;
        let mut after: Option<String> = None;
        let mut n = 0;
        loop {
            let page = self.store.scan(table, "", after.as_deref(), 1000).await?;
            for r in &page.items {
                match NsDeviceRecord::decode(r.value.as_slice())
                    .map_err(|e| e.to_string())
                    .and_then(|rec| Device::load(rec, r.version, &self.vault))
                {
                    Ok(d) => {
                        self.devices.insert(d);
                        n += 1;
                    }
                    Err(e) => warn!(key = %r.key, error = %e, "NS device not loaded"),
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(n),
            }
        }
    }

    fn random_u32(&self) -> u32 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.random.hash_one((n, nanos)) as u32
    }

    fn drop_uplink(
        &self,
        reason: &'static str,
        message: impl Into<String>,
        ids: Option<&v3::EndDeviceIdentifiers>,
        correlation_ids: &[String],
    ) {
        let message = message.into();
        self.metrics
            .dropped
            .get_or_create(&[("reason", reason)])
            .inc();
        debug!(reason, %message, "uplink dropped");
        let details = error(tonic::Code::InvalidArgument, reason, message);
        self.events.publish_with(&defs::NS_UP_DATA_DROP, |e| {
            e.with_data(&details)
                .with_correlation_ids(correlation_ids.iter().cloned())
                .with_identifiers(ids)
        });
    }

    // ---- uplinks ----

    /// Takes one copy of a frame from a GS.
    pub fn handle_uplink(self: &Arc<Self>, uplink: v3::UplinkMessage) -> LinkResult<()> {
        self.metrics.received.inc();
        if uplink.raw_payload.is_empty() {
            self.drop_uplink(
                "invalid_payload",
                "raw_payload is empty",
                None,
                &uplink.correlation_ids,
            );
            return Err(Status::invalid_argument("raw_payload: empty"));
        }
        match self.dedup.admit(uplink) {
            Admit::Merged => Ok(()),
            Admit::Late => {
                self.drop_uplink(
                    "duplicate",
                    "a copy arrived after the frame was processed",
                    None,
                    &[],
                );
                Ok(())
            }
            Admit::Opened(raw) => {
                let closer = self
                    .closer
                    .get_or_init(|| spawn_closer(Arc::downgrade(self)));
                let deadline = tokio::time::Instant::now() + self.config.dedup_window;
                // Fails only when the closer ended, i.e. the NS is gone.
                let _ = closer.send((deadline, raw));
                Ok(())
            }
        }
    }

    /// Processes one deduplicated uplink.
    pub async fn process(self: &Arc<Self>, msg: v3::UplinkMessage) {
        let phy = match PhyPayload::decode(&msg.raw_payload) {
            Ok(p) => p,
            Err(e) => {
                self.drop_uplink(
                    "invalid_payload",
                    format!("raw_payload: {e}"),
                    None,
                    &msg.correlation_ids,
                );
                return;
            }
        };
        let frequency = msg.settings.as_ref().map_or(0, |s| s.frequency as u32);
        let received_at = msg
            .received_at
            .and_then(|t| t.to_datetime())
            .map_or_else(SystemTime::now, SystemTime::from);
        let ctx = UplinkCtx {
            msg,
            frequency,
            received_at,
            stale: Default::default(),
        };
        match phy.m_type() {
            MType::JoinRequest => {
                let span = info_span!("ns.join", m_type = "join_request");
                self.handle_join(ctx, phy).instrument(span).await
            }
            MType::UnconfirmedDataUp | MType::ConfirmedDataUp => {
                let span = info_span!(
                    "ns.uplink",
                    dev_addr = %phy.dev_addr().unwrap_or_default(),
                    f_cnt = phy.f_cnt().unwrap_or_default()
                );
                self.handle_data(ctx, phy).instrument(span).await
            }
            MType::RejoinRequest => {
                let span = info_span!("ns.join", m_type = "rejoin_request");
                self.handle_rejoin(ctx, phy).instrument(span).await
            }
            m => self.drop_uplink(
                "unsupported_m_type",
                format!("message type {m} is not handled by the Network Server"),
                None,
                &ctx.msg.correlation_ids,
            ),
        }
    }

    async fn handle_data(self: &Arc<Self>, ctx: UplinkCtx, phy: PhyPayload) {
        let cids = ctx.msg.correlation_ids.clone();
        let Some(dev_addr) = phy.dev_addr() else {
            return;
        };
        let mut candidates = self.candidates(dev_addr).await;
        if candidates.is_empty() {
            self.drop_uplink(
                "unknown_dev_addr",
                format!("no session has DevAddr {dev_addr}"),
                None,
                &cids,
            );
            return;
        }
        let mic_input = PhyPayload::mic_input(&ctx.msg.raw_payload);
        let mut worst: Option<(Mismatch, v3::EndDeviceIdentifiers)> = None;
        let mut refreshed = false;
        loop {
            'slots: for slot in std::mem::take(&mut candidates) {
                let mut dev = slot.lock().await;
                // A second round only when the first write found the device moved on.
                for attempt in 0..2 {
                    let Some(device) = dev.record.device.clone() else {
                        continue 'slots;
                    };
                    let plan = plan_of(&device, &self.config);
                    let tx = TxParams {
                        dr: uplink_dr(plan, ctx.msg.settings.as_ref()).unwrap_or(0),
                        ch: uplink_channel(plan, ctx.frequency),
                    };
                    match dev.verify(&phy, mic_input, tx) {
                        Ok(v) => {
                            self.accept_data(&slot, &mut dev, &ctx, &phy, v, tx.dr, plan)
                                .await;
                            if !ctx.stale.swap(false, Ordering::Relaxed) {
                                return;
                            }
                            if attempt == 1 {
                                self.drop_uplink(
                                    "store_conflict",
                                    "the device kept changing through another Network Server instance",
                                    Some(&dev.ids()),
                                    &cids,
                                );
                                return;
                            }
                        }
                        Err(m) => {
                            let rank = |m: &Mismatch| match m {
                                Mismatch::Mic => 0,
                                Mismatch::Gap => 1,
                                Mismatch::Replay => 2,
                            };
                            if worst.as_ref().is_none_or(|(w, _)| rank(&m) > rank(w)) {
                                worst = Some((m, dev.ids()));
                            }
                            break;
                        }
                    }
                }
            }
            // No cached session verified: another instance may have changed one.
            if !refreshed
                && worst.as_ref().is_some_and(|(m, _)| *m != Mismatch::Replay)
                && self.refresh_dev_addr(dev_addr).await
            {
                refreshed = true;
                worst = None;
                candidates = self.devices.by_dev_addr(dev_addr);
                continue;
            }
            break;
        }
        if let Some((m, ids)) = worst {
            let message = match m {
                Mismatch::Mic => format!("no session of DevAddr {dev_addr} verifies the MIC"),
                Mismatch::Replay => format!(
                    "FCnt {} is at or below the last accepted frame counter",
                    phy.f_cnt().unwrap_or_default()
                ),
                Mismatch::Gap => format!(
                    "FCnt {} is more than MAX_FCNT_GAP ({}) ahead",
                    phy.f_cnt().unwrap_or_default(),
                    band::MAX_FCNT_GAP
                ),
            };
            let ids = (m != Mismatch::Mic).then_some(ids);
            self.drop_uplink(m.reason(), message, ids.as_ref(), &cids);
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn accept_data(
        self: &Arc<Self>,
        slot: &Slot,
        dev: &mut Device,
        ctx: &UplinkCtx,
        phy: &PhyPayload,
        v: crate::devices::Verified,
        dr: u8,
        plan: &'static FrequencyPlan,
    ) {
        let ids = dev.ids();
        let app = app_id(&ids);
        let cids = &ctx.msg.correlation_ids;
        let Some(mp) = phy.mac_payload() else {
            return;
        };
        let confirmed = phy.m_type() == MType::ConfirmedDataUp;
        // Frame size against the region's limit at this data rate.
        if let Some(max) = plan
            .params()
            .max_payload_size(dr, plan.uplink_dwell_time, false)
            && mp.encoded_len() > usize::from(max.m)
        {
            self.drop_uplink(
                "too_big",
                format!(
                    "MACPayload of {} bytes exceeds {} bytes at DR{dr}",
                    mp.encoded_len(),
                    max.m
                ),
                Some(&ids),
                cids,
            );
            return;
        }
        if v.retransmission {
            self.metrics.retransmissions.inc();
            debug!(
                f_cnt = v.f_cnt,
                "retransmission: answered, not delivered again"
            );
            if confirmed {
                self.class_a_downlink(slot, dev, ctx, phy, v.f_cnt, dr, plan, true, false)
                    .await;
            }
            return;
        }
        let session = match v.which {
            Which::Current => dev.current.clone(),
            Which::Pending => dev.pending.clone(),
        };
        let Some(session) = session else {
            return;
        };
        // MAC commands: FOpts, or the FRMPayload of FPort 0.
        let mac_bytes = if mp.f_port == Some(0) {
            dev.uplink_port0(&session, phy, v.f_cnt)
        } else {
            let variant = fopts::variant_of(dev.record.device.as_ref(), &self.config);
            fopts::uplink_f_opts(&session, phy, v.f_cnt, variant)
        };
        let commands = MacCommand::decode_all(Direction::Uplink, &mac_bytes).unwrap_or_else(|e| {
            warn!(error = %e, "uplink MAC commands do not decode; ignored");
            Vec::new()
        });
        let old_addrs = dev.dev_addrs();
        let mut next = dev.clone();
        let mut invalidated = Vec::new();
        if v.which == Which::Pending {
            if session.v1_1
                && !commands
                    .iter()
                    .any(|c| matches!(c, MacCommand::RekeyInd(_)))
            {
                self.drop_uplink(
                    "rekey_ind_missing",
                    "the first uplink of a LoRaWAN 1.1 session must carry RekeyInd",
                    Some(&ids),
                    cids,
                );
                return;
            }
            // The pending session becomes current; the old session's queue is void.
            let Some(device) = next.record.device.as_mut() else {
                return;
            };
            device.session = next.record.pending_session.take();
            next.current = next.pending.take();
            next.state = NsState {
                mac: std::mem::take(&mut next.state.pending_mac),
                ..NsState::default()
            };
            invalidated = self
                .store
                .list_downlinks(QueueOwner::NetworkServer, &ids_app(&ids), &ids.device_id)
                .await
                .unwrap_or_default();
        }
        let Some(device) = next.record.device.as_mut() else {
            return;
        };
        if let Some(s) = device.session.as_mut() {
            s.last_f_cnt_up = v.f_cnt;
        }
        device.last_seen_at = Some(ctx.received_at.into());
        next.state.f_cnt_up_seen = true;
        let md = best_first(&ctx.msg.rx_metadata);
        next.state.last_uplink_tokens = md.iter().map(|m| m.uplink_token.clone()).collect();
        next.state.last_gateways = md.iter().filter_map(|m| m.gateway_ids.clone()).collect();
        next.state.last_uplink_frequency = u64::from(ctx.frequency);
        next.state.last_uplink_dr = u32::from(dr);
        // A confirmed downlink is acknowledged by the ACK bit of the next uplink.
        let mut ack_event = None;
        if mp.fhdr.f_ctrl.ack
            && let Some(c) = next.state.confirmed.take()
        {
            next.state.confirmed_phy.clear();
            next.state.confirmed_attempts = 0;
            ack_event = Some(c);
        }
        let info = UplinkInfo {
            commands: &commands,
            adr: mp.fhdr.f_ctrl.adr,
            adr_ack_req: mp.fhdr.f_ctrl.adr_ack_req,
            f_cnt: v.f_cnt,
            dr,
            frequency: ctx.frequency,
            rx: &ctx.msg.rx_metadata,
            received_at: ctx.received_at,
        };
        let mac_outcome = self
            .mac
            .handle_uplink(&mut next, plan, &info, &ids, cids, &self.events);
        if !invalidated.is_empty() {
            // Cleared in the store below, together with the device.
            if let Err(e) = self
                .store
                .replace_downlinks(
                    QueueOwner::NetworkServer,
                    &ids_app(&ids),
                    &ids.device_id,
                    &[],
                )
                .await
            {
                warn!(error = %e, "cannot clear the queue of the previous session");
            }
        }
        // What this uplink hands to the AS, in order: the old session's invalidated queue,
        // the ACK of a confirmed downlink, the uplink itself.
        let mut out = Vec::new();
        if !invalidated.is_empty() {
            out.push(app_up(
                &ids,
                &[],
                v3::application_up::Up::DownlinkQueueInvalidated(
                    v3::ApplicationInvalidatedDownlinks {
                        downlinks: invalidated,
                        next_a_f_cnt_down: 0,
                        session_key_id: session.session_key_id.clone(),
                    },
                ),
            ));
        }
        if let Some(c) = ack_event {
            out.push(app_up(&ids, cids, v3::application_up::Up::DownlinkAck(c)));
        }
        let forward = mp.f_port.filter(|p| *p > 0).map(|f_port| {
            let settings = ctx.msg.settings.clone().map(|mut s| {
                s.data_rate_index = Some(u32::from(dr));
                s
            });
            let airtime = plan
                .params()
                .data_rate(dr)
                .and_then(|d| {
                    band::toa::time_on_air(&d, ctx.msg.raw_payload.len(), band::Direction::Uplink)
                        .ok()
                })
                .map(|d| pbjson_types::Duration {
                    seconds: d.as_secs() as i64,
                    nanos: d.subsec_nanos() as i32,
                });
            app_up(
                &ids,
                cids,
                v3::application_up::Up::UplinkMessage(v3::ApplicationUplink {
                    session_key_id: session.session_key_id.clone(),
                    f_port: u32::from(f_port),
                    f_cnt: v.f_cnt,
                    frm_payload: mp.frm_payload.clone(),
                    rx_metadata: ctx.msg.rx_metadata.clone(),
                    settings,
                    received_at: Some(ctx.received_at.into()),
                    confirmed,
                    consumed_airtime: airtime,
                    ..Default::default()
                }),
            )
        });
        let forwarded = forward.is_some();
        // Built now (the message moves into the batch), only when someone can receive it.
        let forward_event = forward.as_ref().and_then(|forward| {
            self.events.prepare(&defs::NS_UP_DATA_FORWARD, |e| {
                e.with_identifiers([&ids])
                    .with_correlation_ids(cids.iter().cloned())
                    .with_data(forward)
            })
        });
        out.extend(forward);
        // Durability: the new FCnt and the messages for the AS reach the store in one
        // batch, before anything is sent: after a crash, a frame whose FCnt was taken is
        // still delivered, and its replay is still rejected.
        let mut staged = Vec::with_capacity(out.len());
        let mut also = tern_store::Batch::new();
        for up in out {
            let s = self.links.stage(&app, up).await;
            s.add_to(&mut also);
            staged.push(s);
        }
        next.record.state = next.state.encode_to_vec();
        match self
            .store
            .record_uplink_with(&next.record, dev.version, also)
            .await
        {
            Ok(version) => next.version = version,
            Err(e) if e.is_conflict() => {
                // Another instance wrote the device: never overwrite it; verify again
                // against the stored device (once, see `handle_data`).
                match self.reload_locked(slot, dev).await {
                    crate::shared::Reloaded::Changed => ctx.stale.store(true, Ordering::Relaxed),
                    _ => self.drop_uplink(
                        "store_conflict",
                        format!("cannot record the uplink: {e}"),
                        Some(&ids),
                        cids,
                    ),
                }
                return;
            }
            Err(e) => {
                self.drop_uplink(
                    "store_error",
                    format!("cannot record the uplink: {e}"),
                    Some(&ids),
                    cids,
                );
                return;
            }
        }
        *dev = next;
        let new_addrs = dev.dev_addrs();
        if new_addrs != old_addrs {
            self.devices
                .reindex(&dev.key(), &old_addrs, &new_addrs, slot);
        }
        self.events.publish_with(&defs::NS_UP_DATA_RECEIVE, |e| {
            e.with_identifiers([&ids])
                .with_correlation_ids(cids.iter().cloned())
                .with_data(&ctx.msg)
        });
        if forwarded {
            self.metrics.forwarded.inc();
        }
        if let Some(event) = forward_event {
            self.events.publish(event);
        }
        for s in staged {
            s.committed().await;
        }
        let required = confirmed || mac_outcome || mp.fhdr.f_ctrl.adr_ack_req;
        self.class_a_downlink(slot, dev, ctx, phy, v.f_cnt, dr, plan, confirmed, required)
            .await;
    }

    async fn deliver(
        &self,
        ids: &v3::EndDeviceIdentifiers,
        cids: &[String],
        up: v3::application_up::Up,
    ) {
        self.links
            .deliver(&app_id(ids), app_up(ids, cids, up))
            .await;
    }

    async fn invalidate(
        &self,
        ids: &v3::EndDeviceIdentifiers,
        downlinks: Vec<v3::ApplicationDownlink>,
        next_a_f_cnt_down: u32,
        session_key_id: Vec<u8>,
    ) {
        self.deliver(
            ids,
            &[],
            v3::application_up::Up::DownlinkQueueInvalidated(v3::ApplicationInvalidatedDownlinks {
                downlinks,
                next_a_f_cnt_down,
                session_key_id,
            }),
        )
        .await;
    }

    // ---- downlinks ----

    /// Decides and schedules the downlink in the receive windows of an uplink: MAC, ACK,
    /// application data, or a confirmed downlink's retry.
    #[allow(clippy::too_many_arguments)]
    async fn class_a_downlink(
        self: &Arc<Self>,
        slot: &Slot,
        dev: &mut Device,
        ctx: &UplinkCtx,
        phy: &PhyPayload,
        up_f_cnt: u32,
        dr: u8,
        plan: &'static FrequencyPlan,
        ack: bool,
        required: bool,
    ) {
        let _ = slot;
        let Some(device) = dev.record.device.clone() else {
            return;
        };
        let params = plan.params();
        let (rx1_delay, rx1_offset, rx2_freq, rx2_dr) = self.mac.rx_params(dev, plan, &self.config);
        let rx1_dr = params
            .rx1_data_rate(dr, rx1_offset, plan.downlink_dwell_time)
            .unwrap_or(dr);
        let rx1_freq = params.rx1_frequency(ctx.frequency).unwrap_or(ctx.frequency);
        let max_m = [rx1_dr, rx2_dr]
            .iter()
            .filter_map(|d| params.max_payload_size(*d, plan.downlink_dwell_time, false))
            .map(|p| usize::from(p.m))
            .min()
            .unwrap_or(51);
        let request = v3::TxRequest {
            class: v3::DeviceClass::ClassA as i32,
            downlink_paths: self.gateways.class_a_paths(&ctx.msg.rx_metadata),
            rx1_delay: u32::from(rx1_delay),
            rx1_data_rate: params.data_rate(rx1_dr).map(Into::into),
            rx1_frequency: u64::from(rx1_freq),
            rx2_data_rate: params.data_rate(rx2_dr).map(Into::into),
            rx2_frequency: u64::from(rx2_freq),
            priority: v3::TxSchedulePriority::Normal as i32,
            frequency_plan_id: plan.id.to_owned(),
            ..Default::default()
        };
        let _ = device;
        let conf_f_cnt = if ack { up_f_cnt as u16 } else { 0 };
        let _ = phy;
        self.build_and_schedule(
            dev,
            request,
            max_m,
            ack,
            conf_f_cnt,
            required,
            &ctx.msg.correlation_ids,
        )
        .await;
    }

    /// Builds the next downlink of a device for one transmission opportunity and schedules
    /// it; commits counters, queue and MAC state only when a GS took it.
    #[allow(clippy::too_many_arguments)]
    async fn build_and_schedule(
        self: &Arc<Self>,
        dev: &mut Device,
        mut request: v3::TxRequest,
        max_m: usize,
        ack: bool,
        conf_f_cnt: u16,
        required: bool,
        cids: &[String],
    ) -> bool {
        let ids = dev.ids();
        let app = app_id(&ids);
        let Some(session) = dev.current.clone() else {
            return false;
        };
        let Some(device) = dev.record.device.as_ref() else {
            return false;
        };
        let plan = plan_of(device, &self.config);
        let max_retries = dev
            .record
            .device
            .as_ref()
            .and_then(|d| d.mac_settings.as_ref())
            .and_then(|s| s.max_confirmed_downlink_retries)
            .unwrap_or(self.config.max_downlink_retries);
        let mut next = dev.clone();
        // A confirmed downlink without ACK: retransmit it (same counter), or give up.
        let mut nack = None;
        if let Some(c) = next.state.confirmed.clone() {
            if next.state.confirmed_attempts <= max_retries && !next.state.confirmed_phy.is_empty()
            {
                next.state.confirmed_attempts += 1;
                let raw = next.state.confirmed_phy.clone();
                request.priority = v3::TxSchedulePriority::High as i32;
                return self
                    .schedule(dev, next, raw, request, Some(c), &app, cids, "retry")
                    .await;
            }
            next.state.confirmed = None;
            next.state.confirmed_phy.clear();
            next.state.confirmed_attempts = 0;
            nack = Some(c);
        }
        if let Some(c) = nack {
            self.deliver(&ids, cids, v3::application_up::Up::DownlinkNack(c))
                .await;
        }
        let queue = self
            .store
            .list_downlinks(QueueOwner::NetworkServer, &app, &ids.device_id)
            .await
            .unwrap_or_default();
        let air_next = air_next_a(&next.state, session.v1_1);
        // Items encrypted with a counter already used can never be sent: back to the AS.
        if queue.first().is_some_and(|d| d.f_cnt < air_next) {
            let _ = self
                .store
                .replace_downlinks(QueueOwner::NetworkServer, &app, &ids.device_id, &[])
                .await;
            next.state.next_a_f_cnt_down = air_next;
            self.invalidate(&ids, queue, air_next, session.session_key_id.clone())
                .await;
            return self
                .mac_only(
                    dev,
                    next,
                    request,
                    max_m,
                    ack,
                    conf_f_cnt,
                    required,
                    &[],
                    &app,
                    cids,
                )
                .await;
        }
        let head = queue.first().cloned();
        let mac_budget_fopts = 15usize;
        if let Some(item) = head.clone() {
            let base = 8 + item.frm_payload.len();
            if base <= max_m {
                let budget = mac_budget_fopts.min(max_m - base);
                let mac_cmds = self.mac.next_commands(&mut next, plan, budget);
                let mut f_opts = Vec::new();
                let _ = MacCommand::encode_all(&mac_cmds, &mut f_opts);
                let f_cnt = item.f_cnt;
                let m_type = if item.confirmed {
                    MType::ConfirmedDataDown
                } else {
                    MType::UnconfirmedDataDown
                };
                let f_pending = queue.len() > 1;
                let Some(raw) = encode_downlink(
                    &session,
                    fopts::variant_of(next.record.device.as_ref(), &self.config),
                    m_type,
                    FCtrl {
                        adr: true,
                        ack,
                        f_pending,
                        ..Default::default()
                    },
                    f_cnt,
                    f_opts,
                    Some(item.f_port as u8),
                    item.frm_payload.clone(),
                    conf_f_cnt,
                ) else {
                    return false;
                };
                if session.v1_1 {
                    next.state.next_a_f_cnt_down_air = f_cnt + 1;
                } else {
                    next.state.next_n_f_cnt_down = f_cnt + 1;
                }
                next.state.next_a_f_cnt_down = next.state.next_a_f_cnt_down.max(f_cnt + 1);
                if item.confirmed {
                    next.state.confirmed = Some(item.clone());
                    next.state.confirmed_phy = raw.clone();
                    next.state.confirmed_attempts = 1;
                    next.state.last_conf_f_cnt_down = f_cnt;
                }
                let priority = v3::TxSchedulePriority::try_from(item.priority)
                    .ok()
                    .filter(|p| *p != v3::TxSchedulePriority::Default)
                    .unwrap_or(v3::TxSchedulePriority::Normal);
                request.priority = priority as i32;
                return self
                    .schedule(dev, next, raw, request, Some(item), &app, cids, "data")
                    .await;
            }
            debug!(
                len = item.frm_payload.len(),
                max_m, "queued downlink does not fit this window; kept for the next"
            );
        }
        self.mac_only(
            dev,
            next,
            request,
            max_m,
            ack,
            conf_f_cnt,
            required || head.is_some(),
            &queue,
            &app,
            cids,
        )
        .await
    }

    /// A downlink without application data: MAC commands and/or ACK.
    #[allow(clippy::too_many_arguments)]
    async fn mac_only(
        self: &Arc<Self>,
        dev: &mut Device,
        mut next: Device,
        mut request: v3::TxRequest,
        max_m: usize,
        ack: bool,
        conf_f_cnt: u16,
        required: bool,
        queue: &[v3::ApplicationDownlink],
        app: &str,
        cids: &[String],
    ) -> bool {
        let Some(session) = next.current.clone() else {
            return false;
        };
        let Some(device) = next.record.device.as_ref() else {
            return false;
        };
        let plan = plan_of(device, &self.config);
        let budget = max_m.saturating_sub(8).min(242);
        let cmds = self.mac.next_commands(&mut next, plan, budget);
        if cmds.is_empty() && !ack && !required {
            return false;
        }
        let mut mac = Vec::new();
        let _ = MacCommand::encode_all(&cmds, &mut mac);
        let f_cnt = next.state.next_n_f_cnt_down;
        let (f_opts, f_port, frm) = if mac.len() <= 15 {
            (mac, None, Vec::new())
        } else {
            let mut p = mac;
            crypto::encrypt_frm_payload(
                &session.nwk_s_enc_key,
                Direction::Downlink,
                session.dev_addr,
                f_cnt,
                &mut p,
            );
            (Vec::new(), Some(0), p)
        };
        let Some(raw) = encode_downlink(
            &session,
            fopts::variant_of(next.record.device.as_ref(), &self.config),
            MType::UnconfirmedDataDown,
            FCtrl {
                adr: true,
                ack,
                f_pending: !queue.is_empty(),
                ..Default::default()
            },
            f_cnt,
            f_opts,
            f_port,
            frm,
            conf_f_cnt,
        ) else {
            return false;
        };
        next.state.next_n_f_cnt_down = f_cnt + 1;
        request.priority = v3::TxSchedulePriority::Highest as i32;
        let took_app_counter = !session.v1_1 && queue.first().is_some_and(|d| d.f_cnt <= f_cnt);
        let scheduled = self
            .schedule(dev, next, raw, request, None, app, cids, "mac")
            .await;
        if scheduled && took_app_counter {
            // 1.0.x: the network took a counter the AS encrypted a queued item with.
            let ids = dev.ids();
            let _ = self
                .store
                .replace_downlinks(QueueOwner::NetworkServer, app, &ids.device_id, &[])
                .await;
            dev.state.next_a_f_cnt_down = dev.state.next_n_f_cnt_down;
            self.persist(dev).await;
            self.invalidate(
                &ids,
                queue.to_vec(),
                dev.state.next_n_f_cnt_down,
                session.session_key_id.clone(),
            )
            .await;
        }
        scheduled
    }

    async fn persist(&self, dev: &mut Device) {
        dev.record.state = dev.state.encode_to_vec();
        match self.store.record_uplink(&dev.record, dev.version).await {
            Ok(v) => dev.version = v,
            Err(e) => {
                warn!(error = %e, device = %dev.key(), "cannot store the device after a downlink")
            }
        }
    }

    /// Hands a downlink to the GS; on success commits `next` (and pops an app item).
    #[allow(clippy::too_many_arguments)]
    async fn schedule(
        self: &Arc<Self>,
        dev: &mut Device,
        mut next: Device,
        raw: Vec<u8>,
        request: v3::TxRequest,
        app_item: Option<v3::ApplicationDownlink>,
        app: &str,
        cids: &[String],
        kind: &'static str,
    ) -> bool {
        let ids = dev.ids();
        let Some(gs) = self.gs.get() else {
            self.metrics
                .downlinks
                .get_or_create(&[("outcome", "no_gateway_server")])
                .inc();
            warn!("no Gateway Server link is set: the downlink cannot be scheduled");
            return false;
        };
        if request.downlink_paths.is_empty() {
            // Nothing is committed: a queued item stays for the next opportunity.
            self.metrics
                .downlinks
                .get_or_create(&[("outcome", "no_gateway_path")])
                .inc();
            self.events
                .publish_with(&defs::NS_DOWN_DATA_SCHEDULE_FAIL, |e| {
                    e.with_identifiers([&ids])
                        .with_correlation_ids(cids.iter().cloned())
                        .with_data(&self.gateways.no_path_failure(&dev.state.last_gateways))
                });
            return false;
        }
        // The counters this downlink uses reach the store before it can go on air: after a
        // crash the NS must not hand the same FCntDown out again. A downlink that is then not
        // sent leaves a gap, which devices accept.
        let mut reserved = dev.state.clone();
        reserved.next_n_f_cnt_down = reserved.next_n_f_cnt_down.max(next.state.next_n_f_cnt_down);
        reserved.next_a_f_cnt_down_air = reserved
            .next_a_f_cnt_down_air
            .max(next.state.next_a_f_cnt_down_air);
        if reserved != dev.state {
            let mut record = dev.record.clone();
            record.state = reserved.encode_to_vec();
            match self.store.record_uplink(&record, dev.version).await {
                Ok(version) => {
                    dev.record = record;
                    dev.state = reserved;
                    dev.version = version;
                }
                Err(e) => {
                    self.metrics
                        .downlinks
                        .get_or_create(&[("outcome", "store_error")])
                        .inc();
                    warn!(error = %e, "cannot reserve the downlink counter: the downlink is not sent");
                    return false;
                }
            }
        }
        // `<instance>/…`: a cluster routes the TX acknowledgment back to this instance.
        let downlink_id = format!("{}/{:08x}", self.instance_id, self.random_u32());
        let message = v3::DownlinkMessage {
            raw_payload: raw,
            correlation_ids: cids.to_vec(),
            request: Some(request),
            downlink_id: downlink_id.clone(),
            end_device_ids: Some(ids.clone()),
            // Set per Gateway Server by the link (see `gateways::GsRouter`).
            gateway_server_id: String::new(),
        };
        match gs.schedule_downlink(message.clone()).await {
            Ok(v3::ScheduleDownlinkResponse {
                result: Some(v3::schedule_downlink_response::Result::Scheduled(s)),
            }) => {
                self.metrics
                    .downlinks
                    .get_or_create(&[("outcome", kind)])
                    .inc();
                self.events.publish_with(&defs::NS_DOWN_DATA_SCHEDULE, |e| {
                    e.with_identifiers([&ids])
                        .with_correlation_ids(cids.iter().cloned())
                        .with_data(&message)
                });
                if kind == "data" {
                    let _ = self
                        .store
                        .pop_downlink(QueueOwner::NetworkServer, app, &ids.device_id)
                        .await;
                }
                let retry = kind == "retry";
                next.record.state = next.state.encode_to_vec();
                match self.store.record_uplink(&next.record, dev.version).await {
                    Ok(v) => next.version = v,
                    Err(e) => {
                        warn!(error = %e, "cannot store the device after scheduling a downlink")
                    }
                }
                *dev = next;
                self.pending_tx.lock().expect("pending tx lock").insert(
                    downlink_id,
                    PendingTx {
                        application_id: app.to_owned(),
                        app: app_item.filter(|_| !retry),
                        message,
                        rx_window: s.rx_window,
                    },
                );
                self.tx_tracked.notify_waiters();
                true
            }
            Ok(v3::ScheduleDownlinkResponse {
                result: Some(v3::schedule_downlink_response::Result::Failed(f)),
            }) => {
                self.metrics
                    .downlinks
                    .get_or_create(&[("outcome", "schedule_failed")])
                    .inc();
                self.events
                    .publish_with(&defs::NS_DOWN_DATA_SCHEDULE_FAIL, |e| {
                        e.with_identifiers([&ids])
                            .with_correlation_ids(cids.iter().cloned())
                            .with_data(&f)
                    });
                false
            }
            Ok(_) | Err(_) => {
                self.metrics
                    .downlinks
                    .get_or_create(&[("outcome", "schedule_error")])
                    .inc();
                false
            }
        }
    }

    /// The in-flight downlink `id`. A gateway can answer before the GS's answer to the
    /// scheduling call is processed here, so an acknowledgment of one of this instance's
    /// downlinks waits a moment for it to be tracked.
    async fn take_pending(&self, id: &str) -> Option<PendingTx> {
        let ours = id
            .strip_prefix(self.instance_id.as_str())
            .is_some_and(|rest| rest.starts_with('/') && !rest.starts_with("/join/"));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            // Registered before the check, so an insert between the two is not missed.
            let tracked = self.tx_tracked.notified();
            if let Some(p) = self.pending_tx.lock().expect("pending tx lock").remove(id) {
                return Some(p);
            }
            if !ours || tokio::time::timeout_at(deadline, tracked).await.is_err() {
                return None;
            }
        }
    }

    /// A TX acknowledgment from a GS.
    pub async fn report_tx_ack(self: &Arc<Self>, ack: v3::TxAcknowledgment) -> LinkResult<()> {
        let pending = self.take_pending(&ack.downlink_id).await;
        let Some(p) = pending else {
            // Join-accepts are not tracked: the device answers a lost one by joining again.
            if ack.downlink_id.contains("/join/") {
                let outcome = if ack.result == v3::tx_acknowledgment::Result::Success as i32 {
                    "join_accept_sent"
                } else {
                    "join_accept_tx_failed"
                };
                self.metrics
                    .downlinks
                    .get_or_create(&[("outcome", outcome)])
                    .inc();
                return Ok(());
            }
            return Err(Status::not_found(format!(
                "downlink_id: {:?} is not a downlink of this Network Server in flight",
                ack.downlink_id
            )));
        };
        let ids = p.message.end_device_ids.clone().unwrap_or_default();
        if ack.result == v3::tx_acknowledgment::Result::Success as i32 {
            if let Some(item) = p.app {
                self.deliver(
                    &ids,
                    &ack.correlation_ids,
                    v3::application_up::Up::DownlinkSent(item),
                )
                .await;
            }
            return Ok(());
        }
        // RX1 failed at the gateway: try RX2 of the same uplink once.
        let mut retry = p.message.clone();
        if p.rx_window == 1
            && let Some(req) = retry.request.as_mut()
            && req.rx2_data_rate.is_some()
            && req.rx1_data_rate.is_some()
            && let Some(gs) = self.gs.get()
        {
            req.rx1_data_rate = None;
            req.rx1_frequency = 0;
            if let Ok(v3::ScheduleDownlinkResponse {
                result: Some(v3::schedule_downlink_response::Result::Scheduled(s)),
            }) = gs.schedule_downlink(retry.clone()).await
            {
                self.pending_tx.lock().expect("pending tx lock").insert(
                    retry.downlink_id.clone(),
                    PendingTx {
                        application_id: p.application_id,
                        app: p.app,
                        message: retry,
                        rx_window: s.rx_window,
                    },
                );
                self.tx_tracked.notify_waiters();
                return Ok(());
            }
        }
        self.metrics
            .downlinks
            .get_or_create(&[("outcome", "tx_failed")])
            .inc();
        if let Some(item) = p.app {
            let result = v3::tx_acknowledgment::Result::try_from(ack.result)
                .map(|r| r.as_str_name())
                .unwrap_or("UNKNOWN");
            self.deliver(
                &ids,
                &ack.correlation_ids,
                v3::application_up::Up::DownlinkFailed(v3::ApplicationDownlinkFailed {
                    downlink: Some(item),
                    error: Some(error(
                        tonic::Code::Unavailable,
                        "tx_failed",
                        format!("the gateway did not transmit: {result}"),
                    )),
                }),
            )
            .await;
        }
        Ok(())
    }

    /// Class C: sends the device's next downlink now, on RX2 parameters.
    pub async fn class_c_downlink(self: &Arc<Self>, key: String) {
        let Some(slot) = self.devices.get(&key) else {
            return;
        };
        let mut dev = slot.lock().await;
        let Some(device) = dev.record.device.clone() else {
            return;
        };
        let class_c = device
            .mac_settings
            .as_ref()
            .and_then(|s| s.class)
            .map_or(device.supports_class_c, |c| {
                c == v3::DeviceClass::ClassC as i32
            });
        if !class_c || dev.current.is_none() {
            return;
        }
        let plan = plan_of(&device, &self.config);
        let params = plan.params();
        let (_, _, rx2_freq, rx2_dr) = self.mac.rx_params(&dev, plan, &self.config);
        let max_m = params
            .max_payload_size(rx2_dr, plan.downlink_dwell_time, false)
            .map_or(51, |p| usize::from(p.m));
        let queue = self
            .store
            .list_downlinks(
                QueueOwner::NetworkServer,
                &app_id(&dev.ids()),
                &dev.ids().device_id,
            )
            .await
            .unwrap_or_default();
        let fixed: Vec<v3::GatewayIdentifiers> = queue
            .first()
            .and_then(|d| d.class_b_c.as_ref())
            .map(|c| {
                c.gateways
                    .iter()
                    .filter_map(|g| g.gateway_ids.clone())
                    .collect::<Vec<_>>()
            })
            .filter(|g| !g.is_empty())
            .unwrap_or_else(|| dev.state.last_gateways.clone());
        let request = v3::TxRequest {
            class: v3::DeviceClass::ClassC as i32,
            downlink_paths: self.gateways.fixed_paths(fixed),
            rx2_data_rate: params.data_rate(rx2_dr).map(Into::into),
            rx2_frequency: u64::from(rx2_freq),
            priority: v3::TxSchedulePriority::Normal as i32,
            frequency_plan_id: plan.id.to_owned(),
            ..Default::default()
        };
        if dev.state.confirmed.is_some() {
            // Wait for the ACK (next uplink) before sending more.
            return;
        }
        let cids = queue
            .first()
            .map(|d| d.correlation_ids.clone())
            .unwrap_or_default();
        self.build_and_schedule(&mut dev, request, max_m, false, 0, false, &cids)
            .await;
    }

    // ---- joins ----

    async fn handle_join(self: &Arc<Self>, ctx: UplinkCtx, phy: PhyPayload) {
        let cids = ctx.msg.correlation_ids.clone();
        let Payload::JoinRequest(jr) = &phy.payload else {
            return;
        };
        self.events.publish_with(&defs::NS_UP_JOIN_RECEIVE, |e| {
            e.with_correlation_ids(cids.iter().cloned())
                .with_data(&ctx.msg)
        });
        let reject =
            |reason: &'static str, message: String, ids: Option<&v3::EndDeviceIdentifiers>| {
                self.metrics
                    .joins
                    .get_or_create(&[("outcome", reason)])
                    .inc();
                self.metrics
                    .dropped
                    .get_or_create(&[("reason", reason)])
                    .inc();
                let details = error(tonic::Code::InvalidArgument, reason, message);
                self.events.publish_with(&defs::NS_UP_JOIN_REJECT, |e| {
                    e.with_identifiers(ids)
                        .with_correlation_ids(cids.iter().cloned())
                        .with_data(&details)
                });
            };
        // Wait for a turn; a request that can no longer make RX2 goes before costing anything.
        let margin = self.config.join_accept_margin;
        let turn = match self
            .join_gate
            .admit(ctx.received_at, band::JOIN_ACCEPT_DELAY2, margin)
            .await
        {
            Ok(turn) => turn,
            Err(waited) => {
                let age = SystemTime::now()
                    .duration_since(ctx.received_at)
                    .unwrap_or_default();
                reject(
                    "too_late",
                    format!(
                        "join-request of DevEUI {} received {age:?} ago (waited {waited:?} for a turn): \
                         with ~{:?} to process it and a {margin:?} margin it cannot be answered \
                         before RX2 ({} s after it)",
                        jr.dev_eui,
                        self.join_gate.cost(),
                        band::JOIN_ACCEPT_DELAY2.as_secs()
                    ),
                    None,
                );
                return;
            }
        };
        let found = match self.store.ns_device_by_euis(jr.join_eui, jr.dev_eui).await {
            Ok(Some(v)) => v,
            Ok(None) => {
                reject(
                    "unknown_device",
                    format!(
                        "no device with JoinEUI {} and DevEUI {} on this Network Server",
                        jr.join_eui, jr.dev_eui
                    ),
                    None,
                );
                return;
            }
            Err(e) => {
                reject("store_error", e.to_string(), None);
                return;
            }
        };
        let key = {
            let ids = found
                .value
                .device
                .as_ref()
                .and_then(|d| d.ids.clone())
                .unwrap_or_default();
            format!("{}/{}", app_id(&ids), ids.device_id)
        };
        // The stored device wins over a cached copy another instance may have moved on.
        let slot = match self.adopt(found).await {
            Some((s, _)) => s,
            None => {
                reject(
                    "invalid_device",
                    "the stored device does not load".to_owned(),
                    None,
                );
                return;
            }
        };
        let mut dev = slot.lock().await;
        let ids = dev.ids();
        let Some(device) = dev.record.device.clone() else {
            return;
        };
        if !device.supports_join {
            reject(
                "not_otaa",
                "the device does not support join (supports_join is false)".to_owned(),
                Some(&ids),
            );
            return;
        }
        let plan = plan_of(&device, &self.config);
        let params = plan.params();
        let version = v3::MacVersion::try_from(device.lorawan_version)
            .ok()
            .filter(|v| *v != v3::MacVersion::Unknown)
            .unwrap_or(v3::MacVersion::MacV103);
        let v1_1 = version == v3::MacVersion::MacV11;
        let prefix = self.prefixes[self.random_u32() as usize % self.prefixes.len()];
        let dev_addr: DevAddr = prefix.address(self.random_u32());
        let rx2 = params
            .rx2_after_join(ctx.frequency)
            .unwrap_or_else(|| params.rx2_default());
        let (session_mac, ja) = match self.mac.fresh(&device, plan, true) {
            Ok((m, Some(ja))) => (m, ja),
            Ok((_, None)) => return,
            Err(e) => {
                reject("invalid_mac_settings", e, Some(&ids));
                return;
            }
        };
        let rx1_offset = u32::from(ja.rx1_dr_offset);
        let rx2_dr = u32::from(ja.rx2_data_rate);
        let rx_delay = u32::from(ja.rx_delay);
        let cf_list = ja.cf_list.map(|c| c.to_vec()).unwrap_or_default();
        let request = v3::JoinRequest {
            raw_payload: ctx.msg.raw_payload.clone(),
            dev_addr: dev_addr.to_be_bytes().to_vec(),
            selected_mac_version: version as i32,
            net_id: self.config.net_id.to_be_bytes().to_vec(),
            downlink_settings: Some(v3::DownlinkSettings {
                rx1_dr_offset: rx1_offset,
                rx2_dr,
                opt_neg: v1_1,
            }),
            rx_delay,
            cf_list,
            correlation_ids: cids.clone(),
        };
        let response = match self.js.handle_join(request.clone()).await {
            Ok(r) => r,
            Err(status) => {
                let reason = match status.code() {
                    tonic::Code::AlreadyExists => "dev_nonce_reused",
                    tonic::Code::NotFound => "unknown_device",
                    tonic::Code::InvalidArgument => "join_mic_mismatch",
                    _ => "join_server_error",
                };
                reject(
                    reason,
                    format!("Join Server: {}", status.message()),
                    Some(&ids),
                );
                return;
            }
        };
        let mut keys = response.session_keys.clone().unwrap_or_default();
        let app_s_key = keys.app_s_key.take();
        if app_s_key.as_ref().is_some_and(|k| !k.is_wrapped()) {
            warn!(
                "the Join Server returned the AppSKey in clear: not stored by the Network Server"
            );
        }
        // The NS keeps the AppSKey only wrapped; it cannot read it.
        keys.app_s_key = app_s_key.clone().filter(|k| k.is_wrapped());
        let session = v3::Session {
            dev_addr: dev_addr.to_be_bytes().to_vec(),
            keys: Some(keys),
            started_at: Some(Timestamp::now()),
            ..Default::default()
        };
        let ctx_keys = match self.vault.session(&session, v1_1) {
            Ok(k) => k,
            Err(e) => {
                reject("unusable_session_keys", e, Some(&ids));
                return;
            }
        };
        let build = |base: &Device| {
            let mut next = base.clone();
            next.record.pending_session = Some(session.clone());
            next.pending = Some(ctx_keys.clone());
            next.state.pending_mac = session_mac.encode_to_vec();
            if let Some(d) = next.record.device.as_mut() {
                d.lorawan_version = version as i32;
            }
            next.record.state = next.state.encode_to_vec();
            next
        };
        let mut old_addrs = dev.dev_addrs();
        let mut next = build(&dev);
        // Grouped with other joins' writes (one fsync for many); durable when it returns,
        // with the same version check as a commit of its own.
        let mut written = self.store.record_uplink(&next.record, dev.version).await;
        if written.as_ref().is_err_and(|e| e.is_conflict())
            && self.reload_locked(&slot, &mut dev).await == crate::shared::Reloaded::Changed
        {
            // Another instance wrote the device meanwhile: the new session goes onto the
            // stored version (the JS used the DevNonce already, so the join is not redone).
            old_addrs = dev.dev_addrs();
            next = build(&dev);
            written = self.store.record_uplink(&next.record, dev.version).await;
        }
        match written {
            Ok(v) => next.version = v,
            Err(e) => {
                reject("store_error", e.to_string(), Some(&ids));
                return;
            }
        }
        *dev = next;
        let new_addrs = dev.dev_addrs();
        self.devices.reindex(&key, &old_addrs, &new_addrs, &slot);
        turn.ready();
        self.metrics
            .joins
            .get_or_create(&[("outcome", "accepted")])
            .inc();
        self.events.publish_with(&defs::NS_UP_JOIN_ACCEPT, |e| {
            e.with_identifiers([&ids])
                .with_correlation_ids(cids.iter().cloned())
                .with_data(&request)
        });
        // The join-accept, in the join-accept windows of the best gateways.
        let up_dr = uplink_dr(plan, ctx.msg.settings.as_ref()).unwrap_or(0);
        let rx1_dr = params
            .rx1_data_rate(up_dr, 0, plan.downlink_dwell_time)
            .unwrap_or(up_dr);
        let windows = AcceptWindows {
            rx1_delay: band::JOIN_ACCEPT_DELAY1.as_secs() as u32,
            rx1_dr,
            rx2_dr: rx2.dr,
            rx2_frequency: rx2.frequency,
        };
        let accept = Accept::new(&response, dev_addr, app_s_key);
        self.answer_join(&ctx, &ids, &cids, plan, windows, accept, "join_accept")
            .await;
        // The next request's turn: what is left does not delay any accept.
        drop(turn);
        // For rejoin-requests later: not needed by the accept, so not before it.
        self.remember_dev_eui(jr.dev_eui, &ids).await;
    }

    /// Schedules a (re)join-accept (`kind`: the metric's outcome) in `windows` after the
    /// request of `ctx`, through the best gateways, and tells the AS about the new session.
    #[allow(clippy::too_many_arguments)]
    async fn answer_join(
        &self,
        ctx: &UplinkCtx,
        ids: &v3::EndDeviceIdentifiers,
        cids: &[String],
        plan: &FrequencyPlan,
        windows: AcceptWindows,
        accept: Accept,
        kind: &'static str,
    ) {
        let params = plan.params();
        // RX1 when the accept can still make it, else RX2 only, else not at all.
        let margin = self.config.join_accept_margin;
        let (rx1, rx2) = rejoin::reachable_windows(
            ctx.received_at,
            windows.rx1_delay,
            margin,
            SystemTime::now(),
        );
        if !rx2 {
            let age = SystemTime::now()
                .duration_since(ctx.received_at)
                .unwrap_or_default();
            self.drop_late_accept(
                ids,
                cids,
                kind,
                format!(
                    "the accept was ready {age:?} after the request: too late for RX2 ({} s after it, {margin:?} margin)",
                    windows.rx1_delay + 1
                ),
            );
            return;
        }
        let message = v3::DownlinkMessage {
            raw_payload: accept.raw_payload,
            correlation_ids: cids.to_vec(),
            request: Some(v3::TxRequest {
                class: v3::DeviceClass::ClassA as i32,
                downlink_paths: self.gateways.class_a_paths(&ctx.msg.rx_metadata),
                rx1_delay: windows.rx1_delay,
                rx1_data_rate: params
                    .data_rate(windows.rx1_dr)
                    .filter(|_| rx1)
                    .map(Into::into),
                rx1_frequency: if rx1 {
                    u64::from(params.rx1_frequency(ctx.frequency).unwrap_or(ctx.frequency))
                } else {
                    0
                },
                rx2_data_rate: params.data_rate(windows.rx2_dr).map(Into::into),
                rx2_frequency: u64::from(windows.rx2_frequency),
                priority: v3::TxSchedulePriority::Highest as i32,
                frequency_plan_id: plan.id.to_owned(),
                ..Default::default()
            }),
            downlink_id: format!("{}/join/{:08x}", self.instance_id, self.random_u32()),
            end_device_ids: Some(ids.clone()),
            // Set per Gateway Server by the link (see `gateways::GsRouter`).
            gateway_server_id: String::new(),
        };
        self.schedule_accept(ids, cids, message, &ctx.msg.rx_metadata, kind)
            .await;
        // The AS keys the new session by this DevAddr, not the registry's (empty) one.
        let accepted_ids = v3::EndDeviceIdentifiers {
            dev_addr: accept.dev_addr.to_be_bytes().to_vec(),
            ..ids.clone()
        };
        self.deliver(
            &accepted_ids,
            cids,
            v3::application_up::Up::JoinAccept(v3::ApplicationJoinAccept {
                session_key_id: accept.session_key_id,
                app_s_key: accept.app_s_key,
                invalidated_downlinks: Vec::new(),
                pending_session: true,
                received_at: Some(ctx.received_at.into()),
            }),
        )
        .await;
    }

    /// Drops a (re)join-accept (`kind`) that would reach the device after its windows.
    fn drop_late_accept(
        &self,
        ids: &v3::EndDeviceIdentifiers,
        cids: &[String],
        kind: &'static str,
        message: String,
    ) {
        let outcomes = if kind == "rejoin_accept" {
            &self.metrics.rejoins
        } else {
            &self.metrics.joins
        };
        outcomes.get_or_create(&[("outcome", "too_late")]).inc();
        self.metrics
            .dropped
            .get_or_create(&[("reason", "too_late")])
            .inc();
        debug!(kind, %message, "accept dropped");
        let details = error(tonic::Code::DeadlineExceeded, "too_late", message);
        self.events.publish_with(&defs::NS_UP_JOIN_REJECT, |e| {
            e.with_identifiers([ids])
                .with_correlation_ids(cids.iter().cloned())
                .with_data(&details)
        });
    }

    // ---- queue ----

    async fn queue_op(
        &self,
        op: v3::DownlinkQueueOperation,
    ) -> Result<(u32, Vec<u8>, String), v3::ErrorDetails> {
        use tonic::Code;
        let ids = op.end_device_ids.clone().ok_or_else(|| {
            error(
                Code::InvalidArgument,
                "invalid_argument",
                "end_device_ids: required",
            )
        })?;
        let app = app_id(&ids);
        let key = format!("{app}/{}", ids.device_id);
        let slot = self
            .device_by_key(&app, &ids.device_id)
            .await
            .ok_or_else(|| {
                error(
                    Code::NotFound,
                    "unknown_device",
                    format!(
                        "device {:?} of application {app:?} is not on this Network Server",
                        ids.device_id
                    ),
                )
            })?;
        let mut dev = slot.lock().await;
        let session = dev.current.clone().ok_or_else(|| {
            error(
                Code::FailedPrecondition,
                "unknown_session",
                format!("device {:?} has no session yet", ids.device_id),
            )
        })?;
        let replace = op.operation == v3::downlink_queue_operation::Operation::Replace as i32;
        // Never below what went on air (1.0.x: the network's own downlinks take counters too).
        let air = air_next_a(&dev.state, session.v1_1);
        let first_allowed = if replace {
            air
        } else {
            dev.state.next_a_f_cnt_down.max(air)
        };
        let mut expected = first_allowed;
        for (i, d) in op.downlinks.iter().enumerate() {
            if !(1..=223).contains(&d.f_port) {
                return Err(error(
                    Code::InvalidArgument,
                    "invalid_f_port",
                    format!("downlinks[{i}].f_port: {} is not in 1..=223", d.f_port),
                ));
            }
            if d.session_key_id != session.session_key_id {
                return Err(error(
                    Code::FailedPrecondition,
                    "session_mismatch",
                    format!("downlinks[{i}].session_key_id: not the device's current session"),
                ));
            }
            if d.frm_payload.len() > 242 {
                return Err(error(
                    Code::InvalidArgument,
                    "payload_too_long",
                    format!(
                        "downlinks[{i}].frm_payload: {} bytes is more than any data rate carries",
                        d.frm_payload.len()
                    ),
                ));
            }
            if d.f_cnt < expected {
                return Err(error(
                    Code::FailedPrecondition,
                    "f_cnt_too_low",
                    format!(
                        "downlinks[{i}].f_cnt: {} is below the next usable counter {expected}",
                        d.f_cnt
                    ),
                ));
            }
            expected = d.f_cnt + 1;
        }
        let dev_id = ids.device_id.clone();
        if replace {
            self.store
                .replace_downlinks(QueueOwner::NetworkServer, &app, &dev_id, &op.downlinks)
                .await
        } else {
            self.store
                .push_downlinks(QueueOwner::NetworkServer, &app, &dev_id, &op.downlinks)
                .await
                .map(drop)
        }
        .map_err(|e| error(Code::Unavailable, "store_error", e.to_string()))?;
        dev.state.next_a_f_cnt_down = expected;
        if replace && op.downlinks.is_empty() {
            dev.state.next_a_f_cnt_down = first_allowed;
        }
        self.persist(&mut dev).await;
        Ok((dev.state.next_a_f_cnt_down, session.session_key_id, key))
    }
}

impl Core {
    /// The counter and session the next pushed downlink of a device must use, if it has a
    /// session on this Network Server.
    async fn queue_hint(&self, ids: &v3::EndDeviceIdentifiers) -> Option<(u32, Vec<u8>)> {
        let key = format!("{}/{}", app_id(ids), ids.device_id);
        let slot = self.devices.get(&key)?;
        let dev = slot.lock().await;
        let session = dev.current.as_ref()?;
        let next = dev
            .state
            .next_a_f_cnt_down
            .max(air_next_a(&dev.state, session.v1_1));
        Some((next, session.session_key_id.clone()))
    }
}

fn ids_app(ids: &v3::EndDeviceIdentifiers) -> String {
    app_id(ids)
}

/// Encodes and signs a data downlink (1.1: FOpts encrypted with the NwkSEncKey).
#[allow(clippy::too_many_arguments)]
fn encode_downlink(
    s: &crate::devices::SessionCtx,
    variant: crate::config::FOptsVariant,
    m_type: MType,
    f_ctrl: FCtrl,
    f_cnt: u32,
    mut f_opts: Vec<u8>,
    f_port: Option<u8>,
    frm_payload: Vec<u8>,
    conf_f_cnt: u16,
) -> Option<Vec<u8>> {
    if s.v1_1 && !f_opts.is_empty() {
        crypto::encrypt_f_opts(
            &s.nwk_s_enc_key,
            Direction::Downlink,
            s.dev_addr,
            f_cnt,
            &mut f_opts,
            fopts::block(variant, Direction::Downlink, f_port),
        )
        .ok()?;
    }
    let mut phy = PhyPayload {
        mhdr: Mhdr::new(m_type),
        payload: Payload::MacPayload(MacPayload {
            fhdr: Fhdr {
                dev_addr: s.dev_addr,
                f_ctrl,
                f_cnt: f_cnt as u16,
                f_opts: FOpts::new(&f_opts).ok()?,
            },
            f_port,
            frm_payload,
        }),
        mic: Some([0; 4]),
    };
    let msg = phy.encode_mic_input().ok()?;
    let conf = if s.v1_1 { conf_f_cnt } else { 0 };
    phy.mic = Some(crypto::downlink_mic(
        &s.s_nwk_s_int_key,
        conf,
        s.dev_addr,
        f_cnt,
        &msg,
    ));
    phy.encode().ok()
}

#[async_trait::async_trait]
impl QueueHandler for Arc<Core> {
    async fn queue_operation(
        &self,
        op: v3::DownlinkQueueOperation,
    ) -> v3::DownlinkQueueOperationResult {
        let operation_id = op.operation_id;
        let pushed = !op.downlinks.is_empty();
        let ids = op.end_device_ids.clone();
        match self.queue_op(op).await {
            Ok((next, session_key_id, key)) => {
                if pushed {
                    let core = self.clone();
                    tokio::spawn(async move { core.class_c_downlink(key).await });
                }
                v3::DownlinkQueueOperationResult {
                    operation_id,
                    error: None,
                    next_a_f_cnt_down: next,
                    session_key_id,
                }
            }
            Err(e) => {
                // Say which counter and session would have been right, so that the AS can
                // re-encrypt and try again instead of guessing.
                let (next_a_f_cnt_down, session_key_id) = match &ids {
                    Some(ids) => self.queue_hint(ids).await.unwrap_or_default(),
                    None => Default::default(),
                };
                v3::DownlinkQueueOperationResult {
                    operation_id,
                    error: Some(e),
                    next_a_f_cnt_down,
                    session_key_id,
                }
            }
        }
    }

    async fn queue_list(
        &self,
        device: &v3::EndDeviceIdentifiers,
    ) -> Result<v3::ApplicationDownlinks, Status> {
        let app = app_id(device);
        self.store
            .list_downlinks(QueueOwner::NetworkServer, &app, &device.device_id)
            .await
            .map(|downlinks| v3::ApplicationDownlinks { downlinks })
            .map_err(|e| Status::unavailable(e.to_string()))
    }
}

/// The GS's end of the GS↔NS link.
pub(crate) struct GsEnd(pub Arc<Core>);

#[async_trait::async_trait]
impl tern_cluster::links::GsNs for GsEnd {
    async fn handle_uplink(&self, uplink: v3::UplinkMessage) -> LinkResult<()> {
        // The GS of each copy: where class B/C downlinks for its gateway go.
        self.0.gateways.heard(&uplink.rx_metadata);
        self.0.handle_uplink(uplink)
    }

    async fn report_tx_ack(&self, ack: v3::TxAcknowledgment) -> LinkResult<()> {
        self.0.report_tx_ack(ack).await
    }

    async fn report_gateway_connection(&self, event: v3::GatewayConnectionEvent) -> LinkResult<()> {
        debug!(state = event.state, "gateway connection change");
        self.0.gateways.report(&event)
    }
}
