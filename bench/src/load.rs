//! The load generator and the observer: simulated Semtech UDP gateways (three hear every
//! uplink, up to 8 `rxpk` per PUSH_DATA) sending valid frames of ABP devices at a paced
//! rate, and a real MQTT client that records when each uplink arrives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tern_simulator::semtech;
use tern_simulator::{Device, DeviceConfig, Keys, MacResponder, Uplink, Version};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::provision;
use crate::search::StepResult;
use crate::stats;

/// The generator's clock: µs since it started; concentrator timestamps are its low 32 bits.
pub struct Clock {
    start: Instant,
    last: AtomicU64,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// µs since the start.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// A concentrator timestamp no other frame got: identifies the frame in the downlink
    /// that answers it (RX1 tmst = uplink tmst + RX1 delay).
    pub fn unique_tmst(&self) -> u32 {
        let now = self.now_us();
        let prev = self
            .last
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                Some(l.max(now.saturating_sub(1)) + 1)
            })
            .expect("closure always returns Some");
        (prev.max(now.saturating_sub(1)) + 1) as u32
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// One uplink's fate, by sequence number (seq = FCnt × devices + device index).
#[derive(Clone, Copy, Default)]
struct Fate {
    sent_us: u64,
    received_us: u64,
    undecoded: bool,
}

#[derive(Default)]
struct Uplinks {
    fates: Vec<Fate>,
    duplicates: u64,
}

/// A downlink a simulated gateway received.
#[derive(Debug, Clone)]
pub struct GotDownlink {
    /// Clock µs when it arrived.
    pub arrived_us: u64,
    /// Concentrator time when it arrived.
    pub arrived_tmst: u32,
    /// `txpk.tmst` (None for immediate or GPS-timed).
    pub tmst: Option<u32>,
    /// The PHYPayload.
    pub payload: Vec<u8>,
    /// For a data downlink to a bench device: that device's recent uplink tmsts when it
    /// arrived (read then: by the end of a long phase they would have moved on).
    pub recent_uplinks: Option<[u32; TMST_HISTORY]>,
}

/// What the gateways and the MQTT subscriber observed.
pub struct Tracker {
    devices: u64,
    uplinks: Mutex<Uplinks>,
    /// The tmst of each device's last [`TMST_HISTORY`] uplinks, by FCnt modulo.
    last_tmst: Mutex<Vec<[u32; TMST_HISTORY]>>,
    downlinks: Mutex<Vec<GotDownlink>>,
    /// PUSH_ACKs received.
    pub push_acks: AtomicU64,
    /// PULL_ACKs received.
    pub pull_acks: AtomicU64,
    /// MQTT messages that named no bench uplink.
    pub mqtt_unknown: AtomicU64,
    /// MQTT connection losses.
    pub mqtt_disconnects: AtomicU64,
    /// MAC commands the bench devices received in data downlinks (and answered).
    pub mac_commands: AtomicU64,
    /// Data downlinks the bench devices refused, by reason.
    pub refused_downlinks: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Tracker {
    /// A tracker for `devices` ABP devices.
    pub fn new(devices: usize) -> Self {
        Self {
            devices: devices as u64,
            uplinks: Mutex::default(),
            last_tmst: Mutex::new(vec![[0; TMST_HISTORY]; devices]),
            downlinks: Mutex::default(),
            push_acks: AtomicU64::new(0),
            pull_acks: AtomicU64::new(0),
            mqtt_unknown: AtomicU64::new(0),
            mqtt_disconnects: AtomicU64::new(0),
            mac_commands: AtomicU64::new(0),
            refused_downlinks: Mutex::default(),
        }
    }

    fn record_sent(&self, batch: &[Frame], now_us: u64) {
        let mut u = self.uplinks.lock().expect("uplinks lock");
        let mut last = self.last_tmst.lock().expect("tmst lock");
        for f in batch {
            let Some(seq) = f.seq else { continue };
            let seq = seq as usize;
            if u.fates.len() <= seq {
                u.fates.resize(seq + 1, Fate::default());
            }
            u.fates[seq].sent_us = now_us;
            let (device, f_cnt) = (seq as u64 % self.devices, seq as u64 / self.devices);
            last[device as usize][f_cnt as usize % TMST_HISTORY] = f.tmst;
        }
    }

    /// Records an MQTT uplink message of bench device `device` with `f_cnt`.
    pub fn record_received(&self, device: u64, f_cnt: u64, decoded: bool, now_us: u64) {
        if device >= self.devices {
            self.mqtt_unknown.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let seq = (f_cnt * self.devices + device) as usize;
        let mut u = self.uplinks.lock().expect("uplinks lock");
        match u.fates.get_mut(seq) {
            Some(f) if f.sent_us != 0 && f.received_us == 0 => {
                f.received_us = now_us.max(f.sent_us);
                f.undecoded = !decoded;
            }
            Some(f) if f.received_us != 0 => u.duplicates += 1,
            _ => {
                self.mqtt_unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The downlinks received so far, taken out.
    pub fn take_downlinks(&self) -> Vec<GotDownlink> {
        std::mem::take(&mut *self.downlinks.lock().expect("downlinks lock"))
    }

    /// Device `i`'s recent uplink tmsts.
    pub fn recent_tmsts(&self, i: usize) -> Option<[u32; TMST_HISTORY]> {
        self.last_tmst.lock().expect("tmst lock").get(i).copied()
    }

    /// Uplinks in `seqs` received so far.
    pub fn delivered(&self, seqs: std::ops::Range<u64>) -> u64 {
        let u = self.uplinks.lock().expect("uplinks lock");
        u.fates
            .get(seqs.start as usize..(seqs.end as usize).min(u.fates.len()))
            .map_or(0, |f| {
                f.iter().filter(|f| f.received_us != 0).count() as u64
            })
    }

    /// Fills the delivery and latency fields of `step` for uplinks `seqs`, sending having
    /// ended at `end_us`; latency is receipt − send − `dedup_us`.
    pub fn fill_step(
        &self,
        step: &mut StepResult,
        seqs: std::ops::Range<u64>,
        send_secs: f64,
        end_us: u64,
        dedup_us: u64,
    ) {
        let u = self.uplinks.lock().expect("uplinks lock");
        let fates = u
            .fates
            .get(seqs.start as usize..(seqs.end as usize).min(u.fates.len()))
            .unwrap_or(&[]);
        step.sent = fates.len() as u64;
        step.delivered = fates.iter().filter(|f| f.received_us != 0).count() as u64;
        step.undecoded = fates.iter().filter(|f| f.undecoded).count() as u64;
        step.duplicates = u.duplicates;
        let in_time = fates
            .iter()
            .filter(|f| f.received_us != 0 && f.received_us <= end_us + dedup_us + 200_000)
            .count();
        step.delivered_rate = in_time as f64 / send_secs.max(1e-3);
        let latency = |f: &Fate| {
            (f.received_us != 0).then(|| {
                f.received_us.saturating_sub(f.sent_us) as f64 / 1000.0 - dedup_us as f64 / 1000.0
            })
        };
        let all: Vec<f64> = fates.iter().filter_map(latency).collect();
        let q = fates.len() / 4;
        let first: Vec<f64> = fates[..q].iter().filter_map(latency).collect();
        let last: Vec<f64> = fates[fates.len() - q..]
            .iter()
            .filter_map(latency)
            .collect();
        let all = stats::sorted(all);
        step.p50_ms = stats::percentile(&all, 50.0).unwrap_or(f64::NAN);
        step.p99_ms = stats::percentile(&all, 99.0).unwrap_or(f64::NAN);
        step.max_ms = all.last().copied().unwrap_or(f64::NAN);
        step.latency_first_ms = stats::median(&first).unwrap_or(0.0);
        step.latency_last_ms = stats::median(&last).unwrap_or(0.0);
    }
}

/// How many recent uplink tmsts per device are kept to match downlinks to.
pub const TMST_HISTORY: usize = 8;

/// A frame in a PUSH_DATA.
struct Frame {
    /// The bench uplink's sequence number (None for join-requests).
    seq: Option<u64>,
    tmst: u32,
    chan: usize,
    phy: Vec<u8>,
}

/// EU868's three default channels, Hz.
const CHANNELS: [f64; 3] = [868.1, 868.3, 868.5];

/// The PUSH_DATA JSON body of `frames` as heard by a gateway at `rssi`/`snr`.
fn push_json(frames: &[Frame], rssi: i32, snr: f64) -> String {
    let mut s = String::with_capacity(64 + frames.len() * 220);
    s.push_str(r#"{"rxpk":["#);
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"tmst":{},"freq":{},"chan":{},"rfch":0,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":{rssi},"lsnr":{snr:.1},"size":{},"data":"{}"}}"#,
            f.tmst,
            CHANNELS[f.chan],
            f.chan,
            f.phy.len(),
            STANDARD.encode(&f.phy)
        ));
    }
    s.push_str("]}");
    s
}

/// A CayenneLPP payload: temperature (channel 1) and relative humidity (channel 2).
pub fn lpp_payload(seq: u64) -> Vec<u8> {
    let tenths = 200 + (seq % 100) as i16;
    let t = tenths.to_be_bytes();
    vec![0x01, 0x67, t[0], t[1], 0x02, 0x68, 80 + (seq % 40) as u8]
}

/// One simulated gateway: its socket and EUI.
struct Gateway {
    eui: [u8; 8],
    socket: Arc<UdpSocket>,
}

/// Most FOpts bytes of an uplink (LoRaWAN: FOptsLen is 4 bits).
const MAX_F_OPTS: usize = 15;

/// The simulated gateways and ABP devices, and the tasks that listen on their sockets.
pub struct Generator {
    gateways: Vec<Gateway>,
    /// What was observed.
    pub tracker: Arc<Tracker>,
    /// The shared clock.
    pub clock: Arc<Clock>,
    devices: Vec<Device>,
    /// Each device's MAC layer: it answers what the network asks, as a real device does
    /// (a deaf device would have the NS repeat its requests in downlink after downlink).
    responders: Vec<MacResponder>,
    /// Data downlinks the gateways received, for the devices to read.
    heard: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    next_seq: u64,
    cursor: usize,
    /// Clock µs of each gateway group's last PUSH_DATA of uplinks.
    last_push_us: Vec<u64>,
    token: u16,
    tasks: Vec<JoinHandle<()>>,
}

impl Generator {
    /// Connects `gateways` simulated gateways (a multiple of 3) to the GS at `server` (each
    /// sends PULL_DATA, then every 5 s) and prepares `devices` ABP devices.
    pub async fn start(server: SocketAddr, gateways: usize, devices: usize) -> Result<Self> {
        let clock = Arc::new(Clock::new());
        let tracker = Arc::new(Tracker::new(devices));
        let mut gws = Vec::new();
        let mut tasks = Vec::new();
        let (hear, heard) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..gateways {
            let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
            socket.connect(server).await?;
            let eui = provision::gateway_eui(i);
            tasks.push(tokio::spawn(receive(
                eui,
                socket.clone(),
                tracker.clone(),
                clock.clone(),
                hear.clone(),
            )));
            tasks.push(tokio::spawn({
                let socket = socket.clone();
                async move {
                    let mut token: u16 = 0x8000;
                    loop {
                        token = token.wrapping_add(1);
                        let d = semtech::encode_with_eui(token, semtech::PULL_DATA, eui, None);
                        if socket.send(&d).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }));
            gws.push(Gateway { eui, socket });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while tracker.pull_acks.load(Ordering::Relaxed) < gateways as u64 {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {gateways} gateways got a PULL_ACK",
                    tracker.pull_acks.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let devices: Vec<Device> = (0..devices)
            .map(|i| {
                let addr = provision::BENCH_DEV_ADDR + i as u32;
                Device::abp(
                    DeviceConfig::otaa(
                        provision::eui(0),
                        provision::eui(provision::JOIN_EUI),
                        Version::V1_0,
                        lorawan::Aes128Key([0; 16]),
                    ),
                    lorawan::DevAddr(addr.to_be_bytes()),
                    Keys::V1_0(provision::abp_keys(addr)),
                )
            })
            .collect();
        Ok(Self {
            gateways: gws,
            tracker,
            clock,
            responders: vec![MacResponder::default(); devices.len()],
            devices,
            heard,
            next_seq: 0,
            cursor: 0,
            last_push_us: vec![0; (gateways / 3).max(1)],
            token: 0,
            tasks,
        })
    }

    /// The number of gateway groups (three gateways each).
    fn groups(&self) -> usize {
        (self.gateways.len() / 3).max(1)
    }

    /// Sends `frames` in one PUSH_DATA from each gateway of the next group; the best signal
    /// rotates among the three so downlinks spread over every gateway.
    async fn push(&mut self, frames: &[Frame]) -> Result<()> {
        let group = self.cursor % self.groups();
        self.cursor += 1;
        for k in 0..3 {
            let rank = (k + self.cursor) % 3;
            let gw = &self.gateways[(group * 3 + k) % self.gateways.len()];
            let json = push_json(frames, -50 - 12 * rank as i32, 9.5 - 3.0 * rank as f64);
            self.token = self.token.wrapping_add(1);
            let d = semtech::encode_with_eui(
                self.token,
                semtech::PUSH_DATA,
                gw.eui,
                Some(json.as_bytes()),
            );
            gw.socket.send(&d).await.context("send PUSH_DATA")?;
        }
        Ok(())
    }

    /// Sends the next `count` bench uplinks, 8 per PUSH_DATA.
    async fn send_uplinks(&mut self, count: u64) -> Result<()> {
        self.read_downlinks();
        let mut batch = Vec::with_capacity(8);
        for _ in 0..count {
            let seq = self.next_seq;
            self.next_seq += 1;
            let n = self.devices.len() as u64;
            let i = (seq % n) as usize;
            let phy = self.devices[i].uplink(&Uplink {
                f_port: Some(1),
                payload: lpp_payload(seq),
                f_opts: self.responders[i].take_for_uplink(MAX_F_OPTS),
                ..Default::default()
            })?;
            batch.push(Frame {
                seq: Some(seq),
                tmst: 0,
                chan: (seq % 3) as usize,
                phy,
            });
            if batch.len() == 8 {
                self.send_batch(&mut batch).await?;
            }
        }
        if !batch.is_empty() {
            self.send_batch(&mut batch).await?;
        }
        Ok(())
    }

    /// Stamps `batch` with receive times and sends it to the next group. A packet forwarder
    /// reports the frames its concentrator heard since its last PUSH_DATA, so the frames'
    /// `tmst` spread evenly over that time (at most a second), the newest now; frames stamped
    /// a microsecond apart would all want the same gateway's transmitter at the same RX1
    /// instant, which no real radio traffic does.
    async fn send_batch(&mut self, batch: &mut Vec<Frame>) -> Result<()> {
        let group = self.cursor % self.groups();
        let now = self.clock.now_us();
        let since = now
            .saturating_sub(self.last_push_us[group])
            .clamp(batch.len() as u64, 1_000_000);
        self.last_push_us[group] = now;
        let n = batch.len() as u64;
        for (k, f) in batch.iter_mut().enumerate() {
            f.tmst = (now - since * (n - 1 - k as u64) / n) as u32;
        }
        self.tracker.record_sent(batch, now);
        self.push(batch).await?;
        batch.clear();
        Ok(())
    }

    /// Hands the data downlinks heard so far to their devices: each verifies and decrypts
    /// its own, and its MAC layer queues the answers for its next uplink.
    fn read_downlinks(&mut self) {
        while let Ok(raw) = self.heard.try_recv() {
            let Some((addr, _)) = downlink_addr_port(&raw) else {
                continue;
            };
            let i = addr.wrapping_sub(provision::BENCH_DEV_ADDR) as usize;
            let (Some(device), Some(mac)) = (self.devices.get_mut(i), self.responders.get_mut(i))
            else {
                continue;
            };
            // Not this device's (a join-accept, another phase's device) or a replay: ignored.
            match device.downlink(&raw) {
                Ok(down) => {
                    let outcomes = mac.handle(&down.commands, 9.5);
                    self.tracker
                        .mac_commands
                        .fetch_add(outcomes.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    // The reason without its numbers, so that like refusals count together.
                    let reason: String = e
                        .to_string()
                        .chars()
                        .filter(|c| !c.is_ascii_digit())
                        .collect();
                    *self
                        .tracker
                        .refused_downlinks
                        .lock()
                        .expect("refusals lock")
                        .entry(reason)
                        .or_default() += 1;
                }
            }
        }
    }

    /// The sequence number of the next uplink (its device is `seq % devices`).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Offers uplinks at `rate`/s for `duration` (paced every 10 ms), then waits up to
    /// `drain` for them to arrive; returns the step's figures (CPU filled by the caller).
    pub async fn step(
        &mut self,
        rate: f64,
        duration: Duration,
        drain: Duration,
        dedup: Duration,
    ) -> Result<StepResult> {
        let first = self.next_seq;
        let started = Instant::now();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while started.elapsed() < duration {
            tick.tick().await;
            let due = (rate * started.elapsed().as_secs_f64().min(duration.as_secs_f64())) as u64;
            let now = due.saturating_sub(sent);
            self.send_uplinks(now).await?;
            sent += now;
        }
        let send_secs = started.elapsed().as_secs_f64();
        let end_us = self.clock.now_us();
        let seqs = first..self.next_seq;
        let deadline = Instant::now() + drain;
        while Instant::now() < deadline
            && self.tracker.delivered(seqs.clone()) < seqs.end - seqs.start
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut step = StepResult {
            offered: rate,
            achieved: sent as f64 / send_secs,
            ..Default::default()
        };
        self.tracker
            .fill_step(&mut step, seqs, send_secs, end_us, dedup.as_micros() as u64);
        Ok(step)
    }

    /// Sends the join-requests of `devices` at `rate`/s; returns each request's tmst and
    /// send time (clock µs), in device order.
    pub async fn send_joins(
        &mut self,
        devices: &mut [Device],
        rate: f64,
    ) -> Result<Vec<(u32, u64)>> {
        let started = Instant::now();
        let mut sent = 0usize;
        let mut out = Vec::with_capacity(devices.len());
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while sent < devices.len() {
            tick.tick().await;
            let due = ((rate * started.elapsed().as_secs_f64()) as usize).min(devices.len());
            let mut batch = Vec::with_capacity(8);
            for d in &mut devices[sent..due] {
                let phy = d.join_request()?;
                let tmst = self.clock.unique_tmst();
                out.push((tmst, self.clock.now_us()));
                // One join-request per PUSH_DATA, each to the next gateway group: the
                // accepts of simultaneous requests would otherwise compete for the same
                // gateway's transmitter at the same instant (a radio limit, not tern's).
                batch.push(Frame {
                    seq: None,
                    tmst,
                    chan: out.len() % 3,
                    phy,
                });
                self.push(&batch).await?;
                batch.clear();
            }
            if !batch.is_empty() {
                self.push(&batch).await?;
            }
            sent = due;
        }
        Ok(out)
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Listens on a gateway's socket: counts acks, answers PULL_RESP with TX_ACK and records
/// the downlink with its arrival time.
async fn receive(
    eui: [u8; 8],
    socket: Arc<UdpSocket>,
    tracker: Arc<Tracker>,
    clock: Arc<Clock>,
    hear: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = match socket.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(_) => return,
        };
        let arrived_us = clock.now_us();
        let Ok(d) = semtech::decode_server(&buf[..n]) else {
            continue;
        };
        match d.kind {
            semtech::PUSH_ACK => {
                tracker.push_acks.fetch_add(1, Ordering::Relaxed);
            }
            semtech::PULL_ACK => {
                tracker.pull_acks.fetch_add(1, Ordering::Relaxed);
            }
            semtech::PULL_RESP => {
                let parsed = serde_json::from_slice::<semtech::PullResp>(d.body)
                    .ok()
                    .and_then(|r| r.txpk.payload().ok().map(|p| (r.txpk, p)));
                let ack = semtech::encode_with_eui(d.token, semtech::TX_ACK, eui, None);
                let _ = socket.send(&ack).await;
                if let Some((txpk, payload)) = parsed {
                    let data = downlink_addr_port(&payload);
                    // Data downlinks go to the devices too.
                    if data.is_some() {
                        let _ = hear.send(payload.clone());
                    }
                    tracker
                        .downlinks
                        .lock()
                        .expect("downlinks lock")
                        .push(GotDownlink {
                            arrived_us,
                            arrived_tmst: arrived_us as u32,
                            tmst: txpk.tmst.filter(|_| !txpk.imme),
                            recent_uplinks: data
                                .and_then(|(addr, _)| addr.checked_sub(provision::BENCH_DEV_ADDR))
                                .and_then(|i| tracker.recent_tmsts(i as usize)),
                            payload,
                        });
                }
            }
            _ => {}
        }
    }
}

/// How the class A downlinks of a phase went.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DownlinkTiming {
    /// Downlinks queued through the AS.
    pub queued: u64,
    /// Queued downlinks (FPort 10) that reached a gateway.
    pub received: u64,
    /// ... timed for RX1 (uplink tmst + 1 s) and arrived before that time.
    pub rx1_in_time: u64,
    /// ... timed for RX1 but arrived after it.
    pub rx1_late: u64,
    /// ... timed for RX2 (uplink tmst + 2 s).
    pub rx2: u64,
    /// Smallest margin before RX1 of those in time, ms.
    pub min_margin_ms: Option<f64>,
    /// Other downlinks (MAC-only answers) to bench devices.
    pub other: u64,
}

impl DownlinkTiming {
    /// The share of queued downlinks that reached the gateway in time for RX1, %.
    pub fn rx1_share(&self) -> Option<f64> {
        (self.queued > 0).then(|| 100.0 * self.rx1_in_time as f64 / self.queued as f64)
    }
}

/// DevAddr, FPort of a data downlink PHYPayload (FPort None without payload).
pub fn downlink_addr_port(phy: &[u8]) -> Option<(u32, Option<u8>)> {
    let mtype = phy.first()? >> 5;
    if mtype != 0b011 && mtype != 0b101 {
        return None;
    }
    let addr = u32::from_le_bytes(phy.get(1..5)?.try_into().ok()?);
    let f_opts_len = usize::from(phy.get(5)? & 0x0F);
    let port_at = 8 + f_opts_len;
    // MHDR FHDR [FPort FRMPayload] MIC.
    let port = (phy.len() > port_at + 4).then(|| phy[port_at]);
    Some((addr, port))
}

/// Classifies the downlinks to bench devices against their devices' uplink tmsts.
pub fn downlink_timing(downlinks: &[GotDownlink], queued: u64) -> DownlinkTiming {
    let mut t = DownlinkTiming {
        queued,
        ..Default::default()
    };
    for dl in downlinks {
        let Some((addr, port)) = downlink_addr_port(&dl.payload) else {
            continue;
        };
        if addr.checked_sub(provision::BENCH_DEV_ADDR).is_none() {
            continue;
        }
        let Some(ups) = dl.recent_uplinks else {
            continue;
        };
        if port != Some(provision::DOWNLINK_F_PORT) {
            t.other += 1;
            continue;
        }
        t.received += 1;
        let Some(tmst) = dl.tmst else { continue };
        let margin = i64::from(tmst.wrapping_sub(dl.arrived_tmst) as i32);
        let answers = |delay: u32| ups.iter().any(|u| tmst == u.wrapping_add(delay));
        if answers(1_000_000) {
            if margin > 0 {
                t.rx1_in_time += 1;
                let ms = margin as f64 / 1000.0;
                t.min_margin_ms = Some(t.min_margin_ms.map_or(ms, |m: f64| m.min(ms)));
            } else {
                t.rx1_late += 1;
            }
        } else if answers(2_000_000) {
            t.rx2 += 1;
        }
    }
    t
}

/// How a burst of OTAA joins went.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct JoinResult {
    /// Offered join-requests per second.
    pub offered_rate: f64,
    /// Join-requests sent.
    pub requested: u64,
    /// Join-accepts that decrypted with the device's AppKey, timed for RX1 (request + 5 s)
    /// and arrived before it.
    pub rx1_in_time: u64,
    /// Join-accepts for RX1 that arrived too late.
    pub rx1_late: u64,
    /// Join-accepts for RX2 (request + 6 s).
    pub rx2: u64,
    /// Accepts that failed the device's checks.
    pub invalid: u64,
    /// Downlinks of any kind the gateways received while waiting for the accepts.
    pub downlinks_seen: u64,
    /// Joins per second: accepted in time for RX1 over the time from the first request to
    /// the last such accept.
    pub joins_per_sec: f64,
}

/// Matches join-accepts to the requests (`sent`: tmst, send µs per device).
pub fn join_result(
    devices: &mut [Device],
    sent: &[(u32, u64)],
    downlinks: &[GotDownlink],
) -> JoinResult {
    let by_tmst: HashMap<u32, usize> = sent.iter().enumerate().map(|(i, (t, _))| (*t, i)).collect();
    let mut r = JoinResult {
        requested: sent.len() as u64,
        ..Default::default()
    };
    let first_us = sent.iter().map(|s| s.1).min().unwrap_or(0);
    let mut last_us = first_us;
    for dl in downlinks {
        let Some(tmst) = dl.tmst else { continue };
        if dl.payload.first().map(|m| m >> 5) != Some(0b001) {
            continue;
        }
        // The request 5 s (RX1) or 6 s (RX2) before: both can exist (another request sent
        // exactly 1 s after this one's), so the one whose device verifies the accept wins.
        let candidates = [(5_000_000, true), (6_000_000, false)]
            .into_iter()
            .filter_map(|(delay, rx1)| by_tmst.get(&tmst.wrapping_sub(delay)).map(|i| (*i, rx1)))
            .collect::<Vec<_>>();
        if candidates.is_empty() {
            continue;
        }
        let Some((_, rx1)) = candidates
            .into_iter()
            .find(|(i, _)| devices[*i].accept_join(&dl.payload).is_ok())
        else {
            r.invalid += 1;
            continue;
        };
        let margin = i64::from(tmst.wrapping_sub(dl.arrived_tmst) as i32);
        match (rx1, margin > 0) {
            (true, true) => {
                r.rx1_in_time += 1;
                last_us = last_us.max(dl.arrived_us);
            }
            (true, false) => r.rx1_late += 1,
            (false, _) => r.rx2 += 1,
        }
    }
    let secs = (last_us.saturating_sub(first_us)) as f64 / 1e6;
    r.joins_per_sec = if secs > 0.0 {
        r.rx1_in_time as f64 / secs
    } else {
        0.0
    };
    r
}

/// The MQTT subscriber thread: a real MQTT client on the AS's MQTT server, subscribed to
/// every uplink of the bench application.
pub struct Subscriber {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(serde::Deserialize)]
struct UpMessage {
    end_device_ids: UpIds,
    #[serde(default)]
    uplink_message: Option<UpBody>,
}

#[derive(serde::Deserialize)]
struct UpIds {
    device_id: String,
}

#[derive(serde::Deserialize)]
struct UpBody {
    #[serde(default)]
    f_cnt: u64,
    #[serde(default)]
    decoded_payload: Option<serde::de::IgnoredAny>,
}

impl Subscriber {
    /// Connects to `addr` as the bench application with `api_key`, subscribes to
    /// `v3/bench/devices/+/up`, and returns once the subscription is granted.
    pub fn start(
        addr: SocketAddr,
        api_key: &str,
        tracker: Arc<Tracker>,
        clock: Arc<Clock>,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let key = api_key.to_owned();
        let thread = std::thread::Builder::new().name("mqtt-sub".into()).spawn({
            let stop = stop.clone();
            move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("MQTT runtime");
                rt.block_on(mqtt_loop(addr, key, tracker, clock, stop, ready_tx));
            }
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .context("the MQTT subscription was not granted in 20 s")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn mqtt_loop(
    addr: SocketAddr,
    key: String,
    tracker: Arc<Tracker>,
    clock: Arc<Clock>,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<()>,
) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let topic = format!("v3/{}/devices/+/up", provision::APP);
    let mut options = MqttOptions::new("tern-bench", addr.ip().to_string(), addr.port());
    options.set_credentials(provision::APP, key);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_clean_session(true);
    let (client, mut events) = AsyncClient::new(options, 16);
    let prefix = format!("{}-", "bench");
    while !stop.load(Ordering::Relaxed) {
        let event = match tokio::time::timeout(Duration::from_millis(200), events.poll()).await {
            Err(_) => continue,
            Ok(Ok(e)) => e,
            Ok(Err(_)) => {
                tracker.mqtt_disconnects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                // A clean session forgets the subscription: (re)subscribe on every connect.
                let _ = client.try_subscribe(topic.clone(), QoS::AtMostOnce);
            }
            Event::Incoming(Packet::SubAck(_)) => {
                let _ = ready.send(());
            }
            Event::Incoming(Packet::Publish(p)) => {
                let now = clock.now_us();
                let parsed = serde_json::from_slice::<UpMessage>(&p.payload).ok();
                let found = parsed.and_then(|m| {
                    let i: u64 = m
                        .end_device_ids
                        .device_id
                        .strip_prefix(&prefix)?
                        .parse()
                        .ok()?;
                    let up = m.uplink_message?;
                    Some((i, up.f_cnt, up.decoded_payload.is_some()))
                });
                match found {
                    Some((i, f_cnt, decoded)) => tracker.record_received(i, f_cnt, decoded, now),
                    None => {
                        tracker.mqtt_unknown.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_tmsts_increase() {
        let c = Clock::new();
        let a = c.unique_tmst();
        let b = c.unique_tmst();
        let d = c.unique_tmst();
        assert!(b > a && d > b);
    }

    #[test]
    fn tracker_counts_delivery_duplicates_and_latency() {
        let t = Tracker::new(2);
        let frames: Vec<Frame> = (0..4)
            .map(|seq| Frame {
                seq: Some(seq),
                tmst: seq as u32,
                chan: 0,
                phy: Vec::new(),
            })
            .collect();
        t.record_sent(&frames, 1_000);
        // seq = fcnt * 2 + device: device 1 fcnt 1 is seq 3.
        t.record_received(0, 0, true, 61_000);
        t.record_received(1, 0, true, 62_000);
        t.record_received(0, 1, true, 63_000);
        t.record_received(0, 1, true, 64_000);
        t.record_received(7, 0, true, 64_000);
        let mut s = StepResult::default();
        t.fill_step(&mut s, 0..4, 1.0, 1_000, 50_000);
        assert_eq!((s.sent, s.delivered, s.duplicates), (4, 3, 1));
        assert_eq!(t.mqtt_unknown.load(Ordering::Relaxed), 1);
        // Latencies beyond the 50 ms window: 10, 11, 12 ms.
        assert_eq!(s.p50_ms, 11.0);
        assert_eq!(s.max_ms, 12.0);
        // Device 1's FCnt 1 (seq 3) is in slot 1 of its history.
        assert_eq!(t.recent_tmsts(1).unwrap()[1], 3);
    }

    #[test]
    fn downlink_headers() {
        // Unconfirmed data down, DevAddr 27F00005 (LE), FCtrl with 1 byte of FOpts, FCnt,
        // FOpts, FPort 10, 3 bytes, MIC.
        let phy = [
            0x60, 0x05, 0x00, 0xF0, 0x27, 0x01, 0x00, 0x00, 0x06, 10, 1, 2, 3, 9, 9, 9, 9,
        ];
        assert_eq!(downlink_addr_port(&phy), Some((0x27F0_0005, Some(10))));
        // No FPort: MAC commands only in FOpts.
        let phy = [
            0x60, 0x05, 0x00, 0xF0, 0x27, 0x01, 0x00, 0x00, 0x06, 9, 9, 9, 9,
        ];
        assert_eq!(downlink_addr_port(&phy), Some((0x27F0_0005, None)));
        // A join-accept is not a data downlink.
        assert_eq!(downlink_addr_port(&[0x20; 17]), None);
    }

    #[test]
    fn push_data_body_is_valid_json() {
        let frames = [Frame {
            seq: Some(0),
            tmst: 42,
            chan: 1,
            phy: vec![1, 2, 3],
        }];
        let v: serde_json::Value = serde_json::from_str(&push_json(&frames, -60, 9.5)).unwrap();
        let rxpk = &v["rxpk"][0];
        assert_eq!(rxpk["tmst"], 42);
        assert_eq!(rxpk["freq"], 868.3);
        assert_eq!(rxpk["size"], 3);
        assert_eq!(rxpk["data"], "AQID");
    }

    #[test]
    fn cayenne_payload() {
        // 20.0 °C + 5 tenths, 80 % + 5 /2: channel 1 temperature, channel 2 humidity.
        assert_eq!(lpp_payload(5), vec![0x01, 0x67, 0x00, 205, 0x02, 0x68, 85]);
    }
}
