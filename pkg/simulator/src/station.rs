//! A simulated LoRa Basics Station speaking the LNS protocol over a real WebSocket:
//! discovery on `/router-info`, `version` → `router_config`, `jreq`/`updf` uplinks with
//! `upinfo`, `dnmsg` → `dntxed`, and `timesync`.
//!
//! Field formats follow the LNS protocol: EUIs as `HH-HH-…` strings, DevAddr and MIC as
//! signed 32-bit numbers, FOpts and FRMPayload as hex, `xtime` as the session ID in the top
//! byte and a µs counter in the low 48 bits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use lorawan::phy::Payload;
use lorawan::{Eui64, PhyPayload};
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::SimError;

/// A simulated station's settings.
#[derive(Debug, Clone)]
pub struct StationConfig {
    /// The gateway EUI.
    pub eui: [u8; 8],
    /// The LNS base URL, e.g. `ws://127.0.0.1:1887`.
    pub lns: String,
    /// An API key sent as `Authorization: Bearer …` when set.
    pub api_key: Option<String>,
    /// How long to wait for an answer.
    pub timeout: Duration,
}

/// A downlink the station received (`dnmsg`), already confirmed with `dntxed`.
#[derive(Debug, Clone)]
pub struct StationDownlink {
    /// The `dnmsg` as received.
    pub message: Value,
    /// The PHYPayload from `pdu`.
    pub payload: Vec<u8>,
    /// The station's `xtime` counter when the message arrived.
    pub arrived_at_xtime: i64,
}

impl StationDownlink {
    /// How far ahead of its RX1 transmission time a class A downlink arrived, in µs
    /// (negative: too late). `None` for class C (`dC` 2) or messages without `xtime`.
    pub fn rx1_margin_us(&self) -> Option<i64> {
        if self.message["dC"].as_i64() == Some(2) {
            return None;
        }
        let xtime = self.message["xtime"].as_i64()?;
        let delay = self.message["RxDelay"].as_i64().unwrap_or(1).max(1);
        Some(xtime + delay * 1_000_000 - self.arrived_at_xtime)
    }
}

type Sink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

/// A simulated Basics Station connected to an LNS.
pub struct Station {
    config: StationConfig,
    sink: Arc<Mutex<Sink>>,
    router_config: Value,
    started: Instant,
    session: i64,
    downlinks: Mutex<mpsc::Receiver<StationDownlink>>,
    others: Mutex<mpsc::Receiver<Value>>,
    reader: JoinHandle<()>,
}

/// The EUI in the `HH-HH-…` form of the LNS protocol.
pub fn eui_string(eui: [u8; 8]) -> String {
    eui.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join("-")
}

/// The EUI in the ID6 form (`hhhh:hhhh:hhhh:hhhh`, zero groups kept).
pub fn id6_string(eui: [u8; 8]) -> String {
    eui.chunks(2)
        .map(|g| format!("{:x}", u16::from_be_bytes([g[0], g[1]])))
        .collect::<Vec<_>>()
        .join(":")
}

impl Station {
    /// Runs discovery, connects to the traffic endpoint it names, sends `version` and waits
    /// for `router_config`.
    pub async fn connect(config: StationConfig) -> Result<Self, SimError> {
        let uri = discover(&config).await?;
        let mut request = uri
            .as_str()
            .into_client_request()
            .map_err(|e| SimError::Protocol(format!("traffic URI `{uri}`: {e}")))?;
        if let Some(key) = &config.api_key {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {key}")
                    .parse()
                    .map_err(|_| SimError::Protocol("API key is not a header value".into()))?,
            );
        }
        let (ws, _) =
            tokio::time::timeout(config.timeout, tokio_tungstenite::connect_async(request))
                .await
                .map_err(|_| SimError::Timeout("traffic connection"))?
                .map_err(ws_error)?;
        let (mut sink, mut stream) = ws.split();
        let version = json!({
            "msgtype": "version", "station": "2.0.6(tern-simulator)", "firmware": null,
            "package": null, "model": "tern-simulator", "protocol": 2, "features": ""
        });
        sink.send(Message::Text(version.to_string().into()))
            .await
            .map_err(ws_error)?;
        let router_config = tokio::time::timeout(config.timeout, async {
            while let Some(message) = stream.next().await {
                if let Message::Text(text) = message.map_err(ws_error)? {
                    let value: Value = serde_json::from_str(&text)
                        .map_err(|e| SimError::Protocol(format!("LNS sent bad JSON: {e}")))?;
                    if value["msgtype"] == "router_config" {
                        return Ok(value);
                    }
                }
            }
            Err(SimError::Closed)
        })
        .await
        .map_err(|_| SimError::Timeout("router_config"))??;

        let started = Instant::now();
        let session = 1;
        let sink = Arc::new(Mutex::new(sink));
        let (down_tx, down_rx) = mpsc::channel(64);
        let (other_tx, other_rx) = mpsc::channel(64);
        let reader = tokio::spawn({
            let sink = sink.clone();
            async move {
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let Ok(value) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if value["msgtype"] == "dnmsg" {
                        let arrived = xtime(started, session);
                        let payload = value["pdu"]
                            .as_str()
                            .and_then(|p| hex::decode(p).ok())
                            .unwrap_or_default();
                        let dntxed = json!({
                            "msgtype": "dntxed", "diid": value["diid"], "DevEui": value["DevEui"],
                            "rctx": value["rctx"], "xtime": value["xtime"].as_i64().unwrap_or(arrived),
                            "txtime": 0.0, "gpstime": 0
                        });
                        let _ = sink
                            .lock()
                            .await
                            .send(Message::Text(dntxed.to_string().into()))
                            .await;
                        let _ = down_tx
                            .send(StationDownlink {
                                message: value,
                                payload,
                                arrived_at_xtime: arrived,
                            })
                            .await;
                    } else {
                        let _ = other_tx.send(value).await;
                    }
                }
            }
        });
        Ok(Self {
            config,
            sink,
            router_config,
            started,
            session,
            downlinks: Mutex::new(down_rx),
            others: Mutex::new(other_rx),
            reader,
        })
    }

    /// The `router_config` the LNS sent.
    pub fn router_config(&self) -> &Value {
        &self.router_config
    }

    /// The station's `xtime` now.
    pub fn xtime(&self) -> i64 {
        xtime(self.started, self.session)
    }

    /// Sends a received frame as `jreq` or `updf` at data rate index `dr` on `freq` Hz;
    /// returns the `xtime` it was stamped with.
    pub async fn send_uplink(
        &self,
        phy: &[u8],
        dr: u8,
        freq: u64,
        rssi: f64,
        snr: f64,
    ) -> Result<i64, SimError> {
        let xtime = self.xtime();
        let upinfo = json!({
            "rctx": 0, "xtime": xtime, "gpstime": 0, "fts": -1, "rssi": rssi, "snr": snr,
            "rxtime": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        });
        let message = uplink_message(phy, dr, freq, upinfo)?;
        self.send(message).await?;
        Ok(xtime)
    }

    /// Sends any message (e.g. a malformed one, for tests).
    pub async fn send(&self, message: Value) -> Result<(), SimError> {
        self.sink
            .lock()
            .await
            .send(Message::Text(message.to_string().into()))
            .await
            .map_err(ws_error)
    }

    /// Asks for the GPS time and returns the LNS's answer (`gpstime`, µs).
    pub async fn timesync(&self) -> Result<i64, SimError> {
        let txtime = self.xtime();
        self.send(json!({"msgtype": "timesync", "txtime": txtime}))
            .await?;
        loop {
            let message = self.next_message(self.config.timeout).await?;
            if message["msgtype"] == "timesync" {
                return message["gpstime"]
                    .as_i64()
                    .ok_or_else(|| SimError::Protocol("timesync without gpstime".into()));
            }
        }
    }

    /// Waits for the next downlink.
    pub async fn next_downlink(&self, timeout: Duration) -> Result<StationDownlink, SimError> {
        let mut rx = self.downlinks.lock().await;
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(d)) => Ok(d),
            Ok(None) => Err(SimError::Closed),
            Err(_) => Err(SimError::Timeout("dnmsg")),
        }
    }

    /// Waits for the next message that is not a downlink.
    pub async fn next_message(&self, timeout: Duration) -> Result<Value, SimError> {
        let mut rx = self.others.lock().await;
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(SimError::Closed),
            Err(_) => Err(SimError::Timeout("LNS message")),
        }
    }
}

impl Drop for Station {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn xtime(started: Instant, session: i64) -> i64 {
    (session << 56) | (started.elapsed().as_micros() as i64 & ((1 << 48) - 1))
}

fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> SimError {
    SimError::Protocol(format!("WebSocket: {e}"))
}

/// Discovery: asks `/router-info` where this station's traffic endpoint is.
async fn discover(config: &StationConfig) -> Result<String, SimError> {
    let url = format!("{}/router-info", config.lns.trim_end_matches('/'));
    let (mut ws, _) = tokio::time::timeout(config.timeout, tokio_tungstenite::connect_async(&url))
        .await
        .map_err(|_| SimError::Timeout("router-info connection"))?
        .map_err(ws_error)?;
    ws.send(Message::Text(
        json!({"router": id6_string(config.eui)}).to_string().into(),
    ))
    .await
    .map_err(ws_error)?;
    let answer = tokio::time::timeout(config.timeout, async {
        while let Some(message) = ws.next().await {
            if let Message::Text(text) = message.map_err(ws_error)? {
                return serde_json::from_str::<Value>(&text)
                    .map_err(|e| SimError::Protocol(format!("router-info: bad JSON: {e}")));
            }
        }
        Err(SimError::Closed)
    })
    .await
    .map_err(|_| SimError::Timeout("router-info answer"))??;
    let _ = ws.close(None).await;
    if let Some(error) = answer["error"].as_str() {
        return Err(SimError::Protocol(format!("router-info refused: {error}")));
    }
    answer["uri"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| SimError::Protocol(format!("router-info answer without uri: {answer}")))
}

/// The `jreq` or `updf` message of a received frame.
pub fn uplink_message(phy: &[u8], dr: u8, freq: u64, upinfo: Value) -> Result<Value, SimError> {
    let frame = PhyPayload::decode(phy)?;
    let mhdr = phy[0];
    let mic = i32::from_le_bytes(phy[phy.len() - 4..].try_into().expect("4 bytes"));
    let eui = |e: Eui64| eui_string(e.0);
    Ok(match frame.payload {
        Payload::JoinRequest(jr) => json!({
            "msgtype": "jreq", "MHdr": mhdr, "JoinEui": eui(jr.join_eui), "DevEui": eui(jr.dev_eui),
            "DevNonce": jr.dev_nonce.0, "MIC": mic, "DR": dr, "Freq": freq, "upinfo": upinfo
        }),
        Payload::MacPayload(mac) => json!({
            "msgtype": "updf", "MHdr": mhdr,
            "DevAddr": i32::from_be_bytes(mac.fhdr.dev_addr.0),
            "FCtrl": phy[5], "FCnt": mac.fhdr.f_cnt,
            "FOpts": hex::encode_upper(mac.fhdr.f_opts.as_slice()),
            "FPort": mac.f_port.map_or(-1, i32::from),
            "FRMPayload": hex::encode_upper(&mac.frm_payload),
            "MIC": mic, "RefTime": 0.0, "DR": dr, "Freq": freq, "upinfo": upinfo
        }),
        _ => {
            return Err(SimError::Unexpected(
                "only join-requests and data uplinks have station messages",
            ));
        }
    })
}
