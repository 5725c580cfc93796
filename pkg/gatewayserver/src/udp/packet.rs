//! The Semtech UDP packet forwarder protocol, version 2: datagram framing and JSON payloads.
//! Pure: no I/O.
//!
//! Every datagram starts with `version (2) | token (2 bytes) | type`; upstream messages then
//! carry the gateway EUI (8 bytes) and, for PUSH_DATA and TX_ACK, a JSON object.

use serde::{Deserialize, Serialize};

/// The protocol version this module speaks.
pub const PROTOCOL_VERSION: u8 = 2;
/// PUSH_DATA: uplinks and status, gateway → server.
pub const PUSH_DATA: u8 = 0;
/// PUSH_ACK: server → gateway.
pub const PUSH_ACK: u8 = 1;
/// PULL_DATA: keep-alive opening the downlink path, gateway → server.
pub const PULL_DATA: u8 = 2;
/// PULL_RESP: a downlink, server → gateway.
pub const PULL_RESP: u8 = 3;
/// PULL_ACK: server → gateway.
pub const PULL_ACK: u8 = 4;
/// TX_ACK: the gateway's answer to PULL_RESP.
pub const TX_ACK: u8 = 5;

/// Why a datagram (or a frame in it) was dropped; the label of the drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than its header.
    Short,
    /// Not protocol version 2.
    Version,
    /// A type a gateway does not send.
    UnknownType,
    /// The JSON payload does not parse.
    BadJson,
    /// `data` is not base64, or its length differs from `size`.
    BadBase64,
    /// A field has a value out of range (frequency, data rate, ...).
    BadField,
    /// The gateway EUI is not registered.
    UnknownEui,
    /// The gateway exceeded its rate limit.
    RateLimited,
    /// The frame failed its CRC (`stat` -1).
    CrcFailed,
    /// The frame had no CRC (`stat` 0).
    NoCrc,
    /// The Network Server did not take the frame.
    NsUnavailable,
    /// The registry could not be asked.
    RegistryUnavailable,
}

impl DropReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Short => "short",
            Self::Version => "version",
            Self::UnknownType => "unknown_type",
            Self::BadJson => "bad_json",
            Self::BadBase64 => "bad_base64",
            Self::BadField => "bad_field",
            Self::UnknownEui => "unknown_eui",
            Self::RateLimited => "rate_limited",
            Self::CrcFailed => "crc_failed",
            Self::NoCrc => "no_crc",
            Self::NsUnavailable => "ns_unavailable",
            Self::RegistryUnavailable => "registry_unavailable",
        }
    }
}

/// One upstream datagram, its payload borrowed from the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// The random token to echo.
    pub token: [u8; 2],
    /// The gateway EUI.
    pub eui: [u8; 8],
    /// What it is.
    pub kind: Upstream<'a>,
}

/// The upstream message types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream<'a> {
    /// PUSH_DATA with its JSON.
    PushData(&'a [u8]),
    /// PULL_DATA.
    PullData,
    /// TX_ACK with its JSON (possibly empty).
    TxAck(&'a [u8]),
}

/// Splits a datagram into header and payload.
pub fn parse_datagram(b: &[u8]) -> Result<Datagram<'_>, DropReason> {
    if b.len() < 4 {
        return Err(DropReason::Short);
    }
    if b[0] != PROTOCOL_VERSION {
        return Err(DropReason::Version);
    }
    let token = [b[1], b[2]];
    if !matches!(b[3], PUSH_DATA | PULL_DATA | TX_ACK) {
        return Err(DropReason::UnknownType);
    }
    if b.len() < 12 {
        return Err(DropReason::Short);
    }
    let eui: [u8; 8] = b[4..12].try_into().expect("8 bytes");
    let rest = &b[12..];
    let kind = match b[3] {
        PUSH_DATA => Upstream::PushData(rest),
        PULL_DATA => Upstream::PullData,
        _ => Upstream::TxAck(rest),
    };
    Ok(Datagram { token, eui, kind })
}

/// PUSH_ACK for `token`.
pub fn push_ack(token: [u8; 2]) -> [u8; 4] {
    [PROTOCOL_VERSION, token[0], token[1], PUSH_ACK]
}

/// PULL_ACK for `token`.
pub fn pull_ack(token: [u8; 2]) -> [u8; 4] {
    [PROTOCOL_VERSION, token[0], token[1], PULL_ACK]
}

/// PULL_RESP carrying `txpk`, with the token the gateway will echo in its TX_ACK.
pub fn pull_resp(token: [u8; 2], txpk: &Txpk) -> Vec<u8> {
    let mut b = vec![PROTOCOL_VERSION, token[0], token[1], PULL_RESP];
    serde_json::to_writer(&mut b, &PullResp { txpk }).expect("txpk serializes");
    b
}

/// The JSON of PUSH_DATA.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PushData {
    /// Received frames.
    #[serde(default)]
    pub rxpk: Vec<Rxpk>,
    /// A status report.
    #[serde(default)]
    pub stat: Option<Stat>,
}

/// `datr`: a LoRa data rate string (`SF7BW125`) or an FSK bit rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Datr {
    /// LoRa: `SF<sf>BW<kHz>`.
    Lora(String),
    /// FSK: bit rate in bit/s.
    Fsk(u32),
}

/// One received frame (`rxpk`), including the sx1302 fields.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Rxpk {
    /// UTC time of reception (ISO 8601), when the gateway has it.
    #[serde(default)]
    pub time: Option<String>,
    /// GPS time of reception in milliseconds since the GPS epoch.
    #[serde(default)]
    pub tmms: Option<u64>,
    /// Concentrator counter (µs) at the end of reception.
    pub tmst: u32,
    /// Fine timestamp, ns within the GPS second.
    #[serde(default)]
    pub ftime: Option<u64>,
    /// Centre frequency in MHz.
    pub freq: f64,
    /// IF channel.
    #[serde(default)]
    pub chan: u32,
    /// RF chain (antenna).
    #[serde(default)]
    pub rfch: u32,
    /// Modem ID (sx1302).
    #[serde(default)]
    pub mid: Option<u32>,
    /// CRC status: 1 OK, -1 failed, 0 no CRC.
    #[serde(default = "crc_ok")]
    pub stat: i8,
    /// `LORA` or `FSK`.
    pub modu: String,
    /// Data rate.
    pub datr: Datr,
    /// LoRa coding rate, e.g. `4/5`.
    #[serde(default)]
    pub codr: Option<String>,
    /// RSSI of the channel (dBm).
    #[serde(default)]
    pub rssi: Option<f32>,
    /// RSSI of the signal (dBm, sx1302).
    #[serde(default)]
    pub rssis: Option<f32>,
    /// Channel RSSI (dBm, some forwarders).
    #[serde(default)]
    pub rssic: Option<f32>,
    /// LoRa SNR (dB).
    #[serde(default)]
    pub lsnr: Option<f32>,
    /// Frequency offset (Hz, sx1302).
    #[serde(default)]
    pub foff: Option<i32>,
    /// Payload size in bytes.
    pub size: u16,
    /// Base64 PHYPayload.
    pub data: String,
}

fn crc_ok() -> i8 {
    1
}

/// A status report (`stat`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Stat {
    /// The gateway's time, `2014-01-12 08:59:28 GMT`.
    #[serde(default)]
    pub time: Option<String>,
    /// Latitude.
    #[serde(default)]
    pub lati: Option<f64>,
    /// Longitude.
    #[serde(default)]
    pub long: Option<f64>,
    /// Altitude in metres.
    #[serde(default)]
    pub alti: Option<f64>,
    /// Frames received.
    #[serde(default)]
    pub rxnb: Option<f64>,
    /// Frames received with a good CRC.
    #[serde(default)]
    pub rxok: Option<f64>,
    /// Frames forwarded.
    #[serde(default)]
    pub rxfw: Option<f64>,
    /// Percentage of acknowledged upstream datagrams.
    #[serde(default)]
    pub ackr: Option<f64>,
    /// Downlinks received.
    #[serde(default)]
    pub dwnb: Option<f64>,
    /// Frames transmitted.
    #[serde(default)]
    pub txnb: Option<f64>,
    /// Temperature (sx1302).
    #[serde(default)]
    pub temp: Option<f64>,
    /// Free-text description, platform or e-mail some forwarders add.
    #[serde(default)]
    pub desc: Option<String>,
}

impl Stat {
    /// The numeric counters, by name.
    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        [
            ("rxnb", self.rxnb),
            ("rxok", self.rxok),
            ("rxfw", self.rxfw),
            ("ackr", self.ackr),
            ("dwnb", self.dwnb),
            ("txnb", self.txnb),
            ("temp", self.temp),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.filter(|v| v.is_finite()).map(|v| (k, v)))
        .collect()
    }
}

/// A downlink to transmit (`txpk`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Txpk {
    /// Send at once, ignoring `tmst`/`tmms`.
    pub imme: bool,
    /// Concentrator counter at which to send.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tmst: Option<u32>,
    /// GPS time (ms) at which to send.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tmms: Option<u64>,
    /// Frequency in MHz.
    pub freq: f64,
    /// RF chain.
    pub rfch: u32,
    /// TX power in dBm (conducted).
    pub powe: i32,
    /// `LORA` or `FSK`.
    pub modu: String,
    /// Data rate.
    pub datr: Datr,
    /// LoRa coding rate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub codr: Option<String>,
    /// FSK frequency deviation in Hz.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fdev: Option<u32>,
    /// Invert polarity (LoRaWAN downlinks: true).
    pub ipol: bool,
    /// Preamble length.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub prea: Option<u32>,
    /// Payload size.
    pub size: u16,
    /// Base64 payload.
    pub data: String,
    /// No CRC (LoRaWAN downlinks: true).
    pub ncrc: bool,
}

#[derive(Serialize)]
struct PullResp<'a> {
    txpk: &'a Txpk,
}

/// The outcome a TX_ACK reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxAckOutcome {
    /// Sent (empty TX_ACK or `NONE`), maybe with a warning (sx1302 `warn`).
    Ok {
        /// The warning, e.g. `TX_POWER (20)`.
        warning: Option<String>,
    },
    /// Not sent: the error name.
    Error(String),
}

#[derive(Deserialize)]
struct TxAckJson {
    #[serde(default)]
    txpk_ack: Option<TxpkAck>,
}

#[derive(Deserialize)]
struct TxpkAck {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warn: Option<String>,
    #[serde(default)]
    value: Option<serde_json::Value>,
}

/// Reads a TX_ACK payload: empty (or whitespace/NUL) is success.
pub fn parse_tx_ack(json: &[u8]) -> Result<TxAckOutcome, DropReason> {
    let trimmed = trim(json);
    if trimmed.is_empty() {
        return Ok(TxAckOutcome::Ok { warning: None });
    }
    let ack: TxAckJson = serde_json::from_slice(trimmed).map_err(|_| DropReason::BadJson)?;
    let Some(ack) = ack.txpk_ack else {
        return Ok(TxAckOutcome::Ok { warning: None });
    };
    match (ack.error.as_deref(), ack.warn) {
        (Some(e), _) if e != "NONE" && !e.is_empty() => Ok(TxAckOutcome::Error(e.to_owned())),
        (_, Some(w)) if w != "NONE" => Ok(TxAckOutcome::Ok {
            warning: Some(match ack.value {
                Some(v) => format!("{w} ({v})"),
                None => w,
            }),
        }),
        _ => Ok(TxAckOutcome::Ok { warning: None }),
    }
}

/// Reads a PUSH_DATA payload.
pub fn parse_push_data(json: &[u8]) -> Result<PushData, DropReason> {
    serde_json::from_slice(trim(json)).map_err(|_| DropReason::BadJson)
}

fn trim(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| !matches!(c, 0 | b' ' | b'\n' | b'\r' | b'\t'))
        .map_or(0, |i| i + 1);
    &b[..end]
}

/// Parses a LoRa `datr` string, `SF7BW125` → (7, 125 000 Hz).
pub fn parse_lora_datr(s: &str) -> Option<(u8, u32)> {
    let rest = s.strip_prefix("SF")?;
    let (sf, bw) = rest.split_once("BW")?;
    let sf: u8 = sf.parse().ok()?;
    let bw: u32 = bw.parse().ok()?;
    if !(5..=12).contains(&sf) || !matches!(bw, 125 | 250 | 500) {
        return None;
    }
    Some((sf, bw * 1000))
}

/// Formats a LoRa data rate as `datr`.
pub fn lora_datr(sf: u8, bw_hz: u32) -> String {
    format!("SF{sf}BW{}", bw_hz / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_errors() {
        assert_eq!(parse_datagram(&[2, 0]), Err(DropReason::Short));
        assert_eq!(parse_datagram(&[1, 0, 0, 0]), Err(DropReason::Version));
        assert_eq!(parse_datagram(&[2, 0, 0, 9]), Err(DropReason::UnknownType));
        assert_eq!(parse_datagram(&[2, 0, 0, 2, 1]), Err(DropReason::Short));
        let d = parse_datagram(&[2, 0xAB, 0xCD, 2, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(d.token, [0xAB, 0xCD]);
        assert_eq!(d.eui, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(d.kind, Upstream::PullData);
    }

    #[test]
    fn tx_ack_forms() {
        assert_eq!(
            parse_tx_ack(b"").unwrap(),
            TxAckOutcome::Ok { warning: None }
        );
        assert_eq!(
            parse_tx_ack(b"{\"txpk_ack\":{\"error\":\"NONE\"}}\0").unwrap(),
            TxAckOutcome::Ok { warning: None }
        );
        assert_eq!(
            parse_tx_ack(br#"{"txpk_ack":{"error":"TOO_LATE"}}"#).unwrap(),
            TxAckOutcome::Error("TOO_LATE".into())
        );
        assert_eq!(
            parse_tx_ack(br#"{"txpk_ack":{"warn":"TX_POWER","value":20}}"#).unwrap(),
            TxAckOutcome::Ok {
                warning: Some("TX_POWER (20)".into())
            }
        );
        assert_eq!(parse_tx_ack(b"{nope"), Err(DropReason::BadJson));
    }

    #[test]
    fn datr() {
        assert_eq!(parse_lora_datr("SF7BW125"), Some((7, 125_000)));
        assert_eq!(parse_lora_datr("SF12BW500"), Some((12, 500_000)));
        assert_eq!(parse_lora_datr("SF13BW125"), None);
        assert_eq!(parse_lora_datr("SF7BW100"), None);
        let d: Datr = serde_json::from_str("50000").unwrap();
        assert_eq!(d, Datr::Fsk(50_000));
    }
}
