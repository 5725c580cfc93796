//! The Semtech UDP packet forwarder protocol (version 2), gateway side: the datagrams a
//! packet forwarder sends and the JSON objects they carry.
//!
//! Header: protocol version (2), a random 16-bit token, the packet type, and for
//! PUSH_DATA/PULL_DATA/TX_ACK the gateway EUI (8 bytes, big-endian as printed).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// The protocol version this simulator speaks.
pub const PROTOCOL_VERSION: u8 = 2;

/// Packet type: gateway → server, uplinks and status.
pub const PUSH_DATA: u8 = 0x00;
/// Packet type: server → gateway, acknowledges a PUSH_DATA.
pub const PUSH_ACK: u8 = 0x01;
/// Packet type: gateway → server, keeps the downlink path open.
pub const PULL_DATA: u8 = 0x02;
/// Packet type: server → gateway, a downlink to transmit.
pub const PULL_RESP: u8 = 0x03;
/// Packet type: server → gateway, acknowledges a PULL_DATA.
pub const PULL_ACK: u8 = 0x04;
/// Packet type: gateway → server, the outcome of a PULL_RESP.
pub const TX_ACK: u8 = 0x05;

/// One received frame in a PUSH_DATA (`rxpk`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RxPk {
    /// UTC time of reception, ISO 8601 (when the gateway has a clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Concentrator timestamp in µs (32-bit, wraps).
    pub tmst: u32,
    /// Frequency in MHz.
    pub freq: f64,
    /// Concentrator IF channel.
    pub chan: u32,
    /// Concentrator RF chain.
    pub rfch: u32,
    /// CRC status: 1 OK, -1 failed, 0 no CRC.
    pub stat: i32,
    /// Modulation, "LORA" or "FSK".
    pub modu: String,
    /// LoRa data rate, e.g. "SF7BW125".
    pub datr: String,
    /// Coding rate, e.g. "4/5".
    pub codr: String,
    /// RSSI in dBm.
    pub rssi: i32,
    /// SNR in dB.
    pub lsnr: f64,
    /// Payload size in bytes.
    pub size: usize,
    /// Payload, base64.
    pub data: String,
}

impl RxPk {
    /// A CRC-OK LoRa frame.
    pub fn lora(phy: &[u8], tmst: u32, freq_hz: u64, datr: &str, rssi: i32, lsnr: f64) -> Self {
        Self {
            time: None,
            tmst,
            freq: freq_hz as f64 / 1e6,
            chan: 0,
            rfch: 0,
            stat: 1,
            modu: "LORA".to_owned(),
            datr: datr.to_owned(),
            codr: "4/5".to_owned(),
            rssi,
            lsnr,
            size: phy.len(),
            data: STANDARD.encode(phy),
        }
    }
}

/// A downlink in a PULL_RESP (`txpk`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TxPk {
    /// Send at once, ignoring `tmst` (class C).
    #[serde(default)]
    pub imme: bool,
    /// Send when the concentrator counter reaches this value (µs).
    #[serde(default)]
    pub tmst: Option<u32>,
    /// Send at this GPS time in ms.
    #[serde(default)]
    pub tmms: Option<u64>,
    /// Frequency in MHz.
    pub freq: f64,
    /// RF chain.
    #[serde(default)]
    pub rfch: u32,
    /// TX power in dBm.
    #[serde(default)]
    pub powe: Option<i32>,
    /// Modulation.
    pub modu: String,
    /// Data rate: "SF7BW125" for LoRa, bits per second for FSK.
    pub datr: serde_json::Value,
    /// Coding rate (LoRa).
    #[serde(default)]
    pub codr: Option<String>,
    /// Inverted polarity (true for downlinks to devices).
    #[serde(default)]
    pub ipol: bool,
    /// Payload size.
    pub size: usize,
    /// Payload, base64.
    pub data: String,
    /// No CRC.
    #[serde(default)]
    pub ncrc: Option<bool>,
}

impl TxPk {
    /// The decoded payload; checks `size`.
    pub fn payload(&self) -> Result<Vec<u8>, crate::SimError> {
        let data = STANDARD
            .decode(&self.data)
            .map_err(|e| crate::SimError::Protocol(format!("txpk.data is not base64: {e}")))?;
        if data.len() != self.size {
            return Err(crate::SimError::Protocol(format!(
                "txpk.size is {} but data has {} bytes",
                self.size,
                data.len()
            )));
        }
        Ok(data)
    }
}

/// Gateway status in a PUSH_DATA (`stat`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Stat {
    /// UTC time, "YYYY-MM-DD hh:mm:ss GMT".
    pub time: String,
    /// Radio packets received.
    pub rxnb: u32,
    /// Radio packets received with a valid CRC.
    pub rxok: u32,
    /// Packets forwarded.
    pub rxfw: u32,
    /// Percentage of upstream datagrams acknowledged.
    pub ackr: f64,
    /// Downlinks received.
    pub dwnb: u32,
    /// Packets emitted.
    pub txnb: u32,
}

/// The JSON body of a PUSH_DATA.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PushData {
    /// Received frames.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rxpk: Vec<RxPk>,
    /// Gateway status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stat: Option<Stat>,
}

/// The JSON body of a PULL_RESP.
#[derive(Debug, Clone, Deserialize)]
pub struct PullResp {
    /// The downlink.
    pub txpk: TxPk,
}

/// Encodes a datagram with the gateway EUI (PUSH_DATA, PULL_DATA, TX_ACK).
pub fn encode_with_eui(token: u16, kind: u8, eui: [u8; 8], json: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + json.map_or(0, <[u8]>::len));
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(&token.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&eui);
    if let Some(json) = json {
        out.extend_from_slice(json);
    }
    out
}

/// A datagram from the server, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerDatagram<'a> {
    /// The token.
    pub token: u16,
    /// The packet type.
    pub kind: u8,
    /// The JSON body (PULL_RESP only).
    pub body: &'a [u8],
}

/// Splits a datagram from the server; refuses other versions and short datagrams.
pub fn decode_server(datagram: &[u8]) -> Result<ServerDatagram<'_>, crate::SimError> {
    if datagram.len() < 4 {
        return Err(crate::SimError::Protocol(format!(
            "datagram of {} bytes is shorter than the 4-byte header",
            datagram.len()
        )));
    }
    if datagram[0] != PROTOCOL_VERSION {
        return Err(crate::SimError::Protocol(format!(
            "protocol version {} (expected {PROTOCOL_VERSION})",
            datagram[0]
        )));
    }
    Ok(ServerDatagram {
        token: u16::from_be_bytes([datagram[1], datagram[2]]),
        kind: datagram[3],
        body: &datagram[4..],
    })
}
