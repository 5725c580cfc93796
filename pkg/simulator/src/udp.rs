//! A simulated gateway speaking the Semtech UDP packet forwarder protocol to a real server
//! over a real UDP socket, with a concentrator clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::SimError;
use crate::semtech::{self, PushData, RxPk, Stat, TxPk};

/// How a simulated gateway answers downlinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxAckMode {
    /// An empty TX_ACK: transmitted.
    Success,
    /// A TX_ACK with `txpk_ack.error` set to this value (e.g. "TOO_LATE").
    Error(String),
}

/// A simulated UDP gateway's settings.
#[derive(Debug, Clone)]
pub struct UdpGatewayConfig {
    /// The gateway EUI.
    pub eui: [u8; 8],
    /// The Gateway Server's UDP address.
    pub server: SocketAddr,
    /// How often PULL_DATA keeps the downlink path open.
    pub pull_interval: Duration,
    /// How long to wait for PUSH_ACK/PULL_ACK.
    pub ack_timeout: Duration,
    /// How downlinks are answered.
    pub tx_ack: TxAckMode,
}

impl UdpGatewayConfig {
    /// A gateway with EUI `eui` talking to `server`, pulling every 5 s.
    pub fn new(eui: [u8; 8], server: SocketAddr) -> Self {
        Self {
            eui,
            server,
            pull_interval: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(2),
            tx_ack: TxAckMode::Success,
        }
    }
}

/// How a frame was received, for its `rxpk`.
#[derive(Debug, Clone)]
pub struct RxInfo {
    /// Frequency in Hz.
    pub frequency: u64,
    /// LoRa data rate, e.g. "SF7BW125".
    pub data_rate: String,
    /// RSSI in dBm.
    pub rssi: i32,
    /// SNR in dB.
    pub snr: f64,
    /// IF channel.
    pub channel: u32,
}

impl RxInfo {
    /// EU868 channel 0 (868.1 MHz) at SF7BW125 with a good signal.
    pub fn eu868_default() -> Self {
        Self {
            frequency: 868_100_000,
            data_rate: "SF7BW125".to_owned(),
            rssi: -60,
            snr: 9.5,
            channel: 0,
        }
    }
}

/// A downlink the gateway received in a PULL_RESP.
#[derive(Debug, Clone)]
pub struct ReceivedDownlink {
    /// The `txpk` as sent by the server.
    pub txpk: TxPk,
    /// The PHYPayload.
    pub payload: Vec<u8>,
    /// The concentrator counter when the PULL_RESP arrived; a timed downlink is in time
    /// when its `tmst` is still ahead of it.
    pub arrived_at_tmst: u32,
}

impl ReceivedDownlink {
    /// How far ahead of its transmission time the downlink arrived, in µs; negative when it
    /// arrived too late. `None` for immediate (class C) or GPS-timed downlinks.
    pub fn margin_us(&self) -> Option<i64> {
        let tmst = self.txpk.tmst.filter(|_| !self.txpk.imme)?;
        Some(i64::from(tmst.wrapping_sub(self.arrived_at_tmst) as i32))
    }
}

type Waiters = Arc<Mutex<HashMap<(u8, u16), oneshot::Sender<()>>>>;

/// A simulated Semtech UDP gateway.
pub struct UdpGateway {
    config: UdpGatewayConfig,
    socket: Arc<UdpSocket>,
    started: Instant,
    tokens: AtomicU16,
    waiters: Waiters,
    downlinks: tokio::sync::Mutex<mpsc::Receiver<ReceivedDownlink>>,
    tasks: Vec<JoinHandle<()>>,
}

impl UdpGateway {
    /// Binds a socket on loopback or the unspecified address matching the server, sends
    /// PULL_DATA, waits for its PULL_ACK, and keeps pulling in the background.
    pub async fn connect(config: UdpGatewayConfig) -> Result<Self, SimError> {
        let bind: SocketAddr = if config.server.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal address")
        } else {
            "[::]:0".parse().expect("literal address")
        };
        let socket = Arc::new(UdpSocket::bind(bind).await?);
        socket.connect(config.server).await?;
        let started = Instant::now();
        let waiters: Waiters = Arc::default();
        let (tx, rx) = mpsc::channel(64);
        let receiver = tokio::spawn(receive_loop(
            socket.clone(),
            config.clone(),
            started,
            waiters.clone(),
            tx,
        ));
        let mut gateway = Self {
            config,
            socket,
            started,
            tokens: AtomicU16::new(1),
            waiters,
            downlinks: tokio::sync::Mutex::new(rx),
            tasks: vec![receiver],
        };
        gateway.pull().await?;
        let keepalive = {
            let socket = gateway.socket.clone();
            let eui = gateway.config.eui;
            let interval = gateway.config.pull_interval;
            tokio::spawn(async move {
                let mut token: u16 = 0x8000;
                loop {
                    tokio::time::sleep(interval).await;
                    token = token.wrapping_add(1);
                    let datagram = semtech::encode_with_eui(token, semtech::PULL_DATA, eui, None);
                    if socket.send(&datagram).await.is_err() {
                        return;
                    }
                }
            })
        };
        gateway.tasks.push(keepalive);
        Ok(gateway)
    }

    /// The gateway EUI.
    pub fn eui(&self) -> [u8; 8] {
        self.config.eui
    }

    /// The concentrator counter now: µs since the gateway started, wrapping at 32 bits.
    pub fn concentrator_time(&self) -> u32 {
        concentrator_time(self.started)
    }

    /// Sends PULL_DATA and waits for PULL_ACK.
    pub async fn pull(&self) -> Result<(), SimError> {
        let token = self.next_token();
        let datagram = semtech::encode_with_eui(token, semtech::PULL_DATA, self.config.eui, None);
        self.send_and_wait(datagram, semtech::PULL_ACK, token).await
    }

    /// Sends one frame in a PUSH_DATA and waits for PUSH_ACK; returns the concentrator
    /// timestamp it was stamped with.
    pub async fn send_uplink(&self, phy: &[u8], rx: &RxInfo) -> Result<u32, SimError> {
        let tmst = self.concentrator_time();
        let mut rxpk = RxPk::lora(phy, tmst, rx.frequency, &rx.data_rate, rx.rssi, rx.snr);
        rxpk.chan = rx.channel;
        self.push(PushData {
            rxpk: vec![rxpk],
            stat: None,
        })
        .await?;
        Ok(tmst)
    }

    /// Sends a PUSH_DATA with these frames (a real concentrator batches up to 8 or more).
    pub async fn send_rxpks(&self, rxpk: Vec<RxPk>) -> Result<(), SimError> {
        self.push(PushData { rxpk, stat: None }).await
    }

    /// Sends a status report.
    pub async fn send_stat(&self, stat: Stat) -> Result<(), SimError> {
        self.push(PushData {
            rxpk: Vec::new(),
            stat: Some(stat),
        })
        .await
    }

    async fn push(&self, body: PushData) -> Result<(), SimError> {
        let json = serde_json::to_vec(&body).map_err(|e| SimError::Protocol(e.to_string()))?;
        let token = self.next_token();
        let datagram =
            semtech::encode_with_eui(token, semtech::PUSH_DATA, self.config.eui, Some(&json));
        self.send_and_wait(datagram, semtech::PUSH_ACK, token).await
    }

    /// Waits up to `timeout` for the next downlink (already answered with TX_ACK).
    pub async fn next_downlink(&self, timeout: Duration) -> Result<ReceivedDownlink, SimError> {
        let mut rx = self.downlinks.lock().await;
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(downlink)) => Ok(downlink),
            Ok(None) => Err(SimError::Closed),
            Err(_) => Err(SimError::Timeout("downlink")),
        }
    }

    fn next_token(&self) -> u16 {
        self.tokens.fetch_add(1, Ordering::Relaxed)
    }

    async fn send_and_wait(&self, datagram: Vec<u8>, ack: u8, token: u16) -> Result<(), SimError> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters lock")
            .insert((ack, token), tx);
        self.socket.send(&datagram).await?;
        let result = tokio::time::timeout(self.config.ack_timeout, rx).await;
        self.waiters
            .lock()
            .expect("waiters lock")
            .remove(&(ack, token));
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SimError::Closed),
            Err(_) => Err(SimError::Timeout(if ack == semtech::PUSH_ACK {
                "PUSH_ACK"
            } else {
                "PULL_ACK"
            })),
        }
    }
}

impl Drop for UdpGateway {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn concentrator_time(started: Instant) -> u32 {
    started.elapsed().as_micros() as u32
}

async fn receive_loop(
    socket: Arc<UdpSocket>,
    config: UdpGatewayConfig,
    started: Instant,
    waiters: Waiters,
    downlinks: mpsc::Sender<ReceivedDownlink>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = match socket.recv(&mut buf).await {
            Ok(n) => n,
            // An ICMP "port unreachable" while the server starts: keep listening.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(_) => return,
        };
        let arrived_at_tmst = concentrator_time(started);
        let datagram = match semtech::decode_server(&buf[..n]) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("simulated gateway: {e}");
                continue;
            }
        };
        match datagram.kind {
            semtech::PUSH_ACK | semtech::PULL_ACK => {
                if let Some(waiter) = waiters
                    .lock()
                    .expect("waiters lock")
                    .remove(&(datagram.kind, datagram.token))
                {
                    let _ = waiter.send(());
                }
            }
            semtech::PULL_RESP => {
                let parsed = serde_json::from_slice::<semtech::PullResp>(datagram.body)
                    .map_err(|e| SimError::Protocol(format!("PULL_RESP: {e}")))
                    .and_then(|r| r.txpk.payload().map(|p| (r.txpk, p)));
                let ack_json = match (&parsed, &config.tx_ack) {
                    (Err(_), _) => Some(br#"{"txpk_ack":{"error":"UNKNOWN"}}"#.to_vec()),
                    (Ok(_), TxAckMode::Success) => None,
                    (Ok(_), TxAckMode::Error(e)) => Some(
                        serde_json::json!({"txpk_ack": {"error": e}})
                            .to_string()
                            .into_bytes(),
                    ),
                };
                let ack = semtech::encode_with_eui(
                    datagram.token,
                    semtech::TX_ACK,
                    config.eui,
                    ack_json.as_deref(),
                );
                let _ = socket.send(&ack).await;
                match parsed {
                    Ok((txpk, payload)) => {
                        let _ = downlinks
                            .send(ReceivedDownlink {
                                txpk,
                                payload,
                                arrived_at_tmst,
                            })
                            .await;
                    }
                    Err(e) => tracing::warn!("simulated gateway: {e}"),
                }
            }
            other => tracing::warn!("simulated gateway: unexpected packet type {other:#04x}"),
        }
    }
}
