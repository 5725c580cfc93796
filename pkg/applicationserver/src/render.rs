//! Renders application messages as the JSON existing LoRaWAN integrations consume: the field
//! names and encodings of The Things Stack v3 (snake_case names, EUIs and DevAddr in hex,
//! payloads in base64, times in RFC 3339).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};
use tern_api::{Timestamp, v3};

fn b64(bytes: &[u8]) -> Value {
    Value::String(BASE64.encode(bytes))
}

fn hex_upper(bytes: &[u8]) -> String {
    hex::encode_upper(bytes)
}

fn time(ts: Option<&Timestamp>) -> Option<Value> {
    ts.and_then(|t| serde_json::to_value(t).ok())
}

fn insert_opt(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), v);
    }
}

/// `end_device_ids` of a device.
pub fn end_device_ids(ids: &v3::EndDeviceIdentifiers) -> Value {
    let mut m = Map::new();
    m.insert("device_id".into(), json!(ids.device_id));
    m.insert(
        "application_ids".into(),
        json!({"application_id": ids.application_ids.as_ref().map(|a| a.application_id.as_str()).unwrap_or("")}),
    );
    if !ids.dev_eui.is_empty() {
        m.insert("dev_eui".into(), json!(hex_upper(&ids.dev_eui)));
    }
    if !ids.join_eui.is_empty() {
        m.insert("join_eui".into(), json!(hex_upper(&ids.join_eui)));
    }
    if !ids.dev_addr.is_empty() {
        m.insert("dev_addr".into(), json!(hex_upper(&ids.dev_addr)));
    }
    Value::Object(m)
}

fn rx_metadata(md: &v3::RxMetadata) -> Value {
    let mut m = Map::new();
    if let Some(gw) = &md.gateway_ids {
        let mut g = Map::new();
        g.insert("gateway_id".into(), json!(gw.gateway_id));
        if !gw.eui.is_empty() {
            g.insert("eui".into(), json!(hex_upper(&gw.eui)));
        }
        m.insert("gateway_ids".into(), Value::Object(g));
    }
    insert_opt(&mut m, "time", time(md.time.as_ref()));
    m.insert("timestamp".into(), json!(md.timestamp));
    m.insert("rssi".into(), json!(md.rssi));
    m.insert("channel_rssi".into(), json!(md.channel_rssi));
    m.insert("snr".into(), json!(md.snr));
    if md.antenna_index != 0 {
        m.insert("antenna_index".into(), json!(md.antenna_index));
    }
    m.insert("channel_index".into(), json!(md.channel_index));
    insert_opt(&mut m, "gps_time", time(md.gps_time.as_ref()));
    insert_opt(&mut m, "received_at", time(md.received_at.as_ref()));
    Value::Object(m)
}

fn settings(s: &v3::TxSettings) -> Value {
    let mut m = Map::new();
    if let Some(dr) = &s.data_rate {
        let rate = match &dr.modulation {
            Some(v3::data_rate::Modulation::Lora(l)) => json!({"lora": {
                "bandwidth": l.bandwidth,
                "spreading_factor": l.spreading_factor,
                "coding_rate": if l.coding_rate.is_empty() { "4/5" } else { l.coding_rate.as_str() },
            }}),
            Some(v3::data_rate::Modulation::Fsk(f)) => json!({"fsk": {"bit_rate": f.bit_rate}}),
            Some(v3::data_rate::Modulation::Lrfhss(l)) => json!({"lrfhss": {
                "modulation_type": l.modulation_type,
                "operating_channel_width": l.operating_channel_width,
                "coding_rate": l.coding_rate,
            }}),
            None => json!({}),
        };
        m.insert("data_rate".into(), rate);
    }
    if let Some(i) = s.data_rate_index {
        m.insert("data_rate_index".into(), json!(i));
    }
    // The Things Stack writes frequencies as strings (64-bit integers in proto3 JSON).
    m.insert("frequency".into(), json!(s.frequency.to_string()));
    m.insert("timestamp".into(), json!(s.timestamp));
    insert_opt(&mut m, "time", time(s.time.as_ref()));
    Value::Object(m)
}

/// `uplink_message` of a decrypted, decoded uplink.
pub fn uplink(up: &v3::ApplicationUplink) -> Value {
    let mut m = Map::new();
    if !up.session_key_id.is_empty() {
        m.insert("session_key_id".into(), b64(&up.session_key_id));
    }
    m.insert("f_port".into(), json!(up.f_port));
    m.insert("f_cnt".into(), json!(up.f_cnt));
    m.insert("frm_payload".into(), b64(&up.frm_payload));
    if let Some(decoded) = &up.decoded_payload {
        m.insert(
            "decoded_payload".into(),
            serde_json::to_value(decoded).unwrap_or(Value::Null),
        );
    }
    if !up.decoded_payload_warnings.is_empty() {
        m.insert(
            "decoded_payload_warnings".into(),
            json!(up.decoded_payload_warnings),
        );
    }
    m.insert(
        "rx_metadata".into(),
        Value::Array(up.rx_metadata.iter().map(rx_metadata).collect()),
    );
    if let Some(s) = &up.settings {
        m.insert("settings".into(), settings(s));
    }
    insert_opt(&mut m, "received_at", time(up.received_at.as_ref()));
    if let Some(d) = &up.consumed_airtime {
        insert_opt(&mut m, "consumed_airtime", serde_json::to_value(d).ok());
    }
    if up.confirmed {
        m.insert("confirmed".into(), json!(true));
    }
    Value::Object(m)
}

/// A downlink, with its payload in clear.
pub fn downlink(down: &v3::ApplicationDownlink) -> Value {
    let mut m = Map::new();
    if !down.session_key_id.is_empty() {
        m.insert("session_key_id".into(), b64(&down.session_key_id));
    }
    m.insert("f_port".into(), json!(down.f_port));
    m.insert("f_cnt".into(), json!(down.f_cnt));
    m.insert("frm_payload".into(), b64(&down.frm_payload));
    if let Some(decoded) = &down.decoded_payload {
        m.insert(
            "decoded_payload".into(),
            serde_json::to_value(decoded).unwrap_or(Value::Null),
        );
    }
    if down.confirmed {
        m.insert("confirmed".into(), json!(true));
    }
    let priority = v3::TxSchedulePriority::try_from(down.priority)
        .map(|p| p.as_str_name())
        .unwrap_or("NORMAL");
    m.insert("priority".into(), json!(priority));
    if !down.correlation_ids.is_empty() {
        m.insert("correlation_ids".into(), json!(down.correlation_ids));
    }
    Value::Object(m)
}

/// `join_accept` of a new session (never with the key).
pub fn join_accept(join: &v3::ApplicationJoinAccept) -> Value {
    let mut m = Map::new();
    m.insert("session_key_id".into(), b64(&join.session_key_id));
    if join.pending_session {
        m.insert("pending_session".into(), json!(true));
    }
    insert_opt(&mut m, "received_at", time(join.received_at.as_ref()));
    Value::Object(m)
}

/// The whole message: identifiers, correlation IDs, time, and one body under `key`.
pub fn envelope(up: &v3::ApplicationUp, key: &str, body: Value) -> Vec<u8> {
    let mut m = Map::new();
    if let Some(ids) = &up.end_device_ids {
        m.insert("end_device_ids".into(), end_device_ids(ids));
    }
    m.insert("correlation_ids".into(), json!(up.correlation_ids));
    let received_at = up.received_at.unwrap_or_else(Timestamp::now);
    insert_opt(&mut m, "received_at", time(Some(&received_at)));
    m.insert(key.to_owned(), body);
    serde_json::to_vec(&Value::Object(m)).expect("JSON values always serialize")
}

/// Parses a downlink request as applications publish it:
/// `{"downlinks":[{"f_port":1,"frm_payload":"base64"|"decoded_payload":{..},"confirmed":false,"priority":"NORMAL"}]}`.
pub fn parse_downlinks(json: &[u8]) -> Result<Vec<v3::ApplicationDownlink>, String> {
    let value: Value =
        serde_json::from_slice(json).map_err(|e| format!("the body is not JSON: {e}"))?;
    let list = value
        .get("downlinks")
        .and_then(Value::as_array)
        .ok_or_else(|| "`downlinks` must be an array".to_owned())?;
    let mut out = Vec::with_capacity(list.len());
    for (i, d) in list.iter().enumerate() {
        let obj = d
            .as_object()
            .ok_or_else(|| format!("downlinks[{i}] must be an object"))?;
        let mut down = v3::ApplicationDownlink::default();
        if let Some(port) = obj.get("f_port") {
            down.f_port = port
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(|| format!("downlinks[{i}].f_port must be an integer"))?;
        }
        if let Some(p) = obj.get("frm_payload") {
            let s = p
                .as_str()
                .ok_or_else(|| format!("downlinks[{i}].frm_payload must be a base64 string"))?;
            down.frm_payload = BASE64
                .decode(s)
                .map_err(|e| format!("downlinks[{i}].frm_payload is not base64: {e}"))?;
        }
        if let Some(p) = obj.get("decoded_payload") {
            if !p.is_object() {
                return Err(format!("downlinks[{i}].decoded_payload must be an object"));
            }
            down.decoded_payload = Some(
                serde_json::from_value(p.clone())
                    .map_err(|e| format!("downlinks[{i}].decoded_payload: {e}"))?,
            );
        }
        if down.frm_payload.is_empty() && down.decoded_payload.is_none() {
            return Err(format!(
                "downlinks[{i}]: one of frm_payload or decoded_payload is required"
            ));
        }
        if let Some(c) = obj.get("confirmed") {
            down.confirmed = c
                .as_bool()
                .ok_or_else(|| format!("downlinks[{i}].confirmed must be a boolean"))?;
        }
        if let Some(p) = obj.get("priority") {
            down.priority = match p {
                Value::String(name) => v3::TxSchedulePriority::from_str_name(name)
                    .ok_or_else(|| format!("downlinks[{i}].priority: unknown priority {name:?}"))?
                    as i32,
                Value::Number(n) => n
                    .as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .filter(|n| v3::TxSchedulePriority::try_from(*n).is_ok())
                    .ok_or_else(|| format!("downlinks[{i}].priority: unknown priority {n}"))?,
                _ => return Err(format!("downlinks[{i}].priority must be a name or number")),
            };
        }
        if let Some(ids) = obj.get("correlation_ids").and_then(Value::as_array) {
            down.correlation_ids = ids
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
        }
        out.push(down);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downlink_requests_parse_and_bad_ones_name_the_field() {
        let ok = parse_downlinks(
            br#"{"downlinks":[{"f_port":3,"frm_payload":"AQI=","confirmed":true,"priority":"HIGH"},
                 {"f_port":4,"decoded_payload":{"led":1},"priority":2}]}"#,
        )
        .unwrap();
        assert_eq!(ok[0].frm_payload, [1, 2]);
        assert!(ok[0].confirmed);
        assert_eq!(ok[0].priority, v3::TxSchedulePriority::High as i32);
        assert!(ok[1].decoded_payload.is_some());
        assert_eq!(ok[1].priority, v3::TxSchedulePriority::Low as i32);
        for (body, needle) in [
            (&br#"{"downlinks":{}}"#[..], "`downlinks` must be an array"),
            (br#"{"downlinks":[{"f_port":1}]}"#, "downlinks[0]: one of"),
            (
                br#"{"downlinks":[{"f_port":1,"frm_payload":"%%"}]}"#,
                "downlinks[0].frm_payload",
            ),
            (
                br#"{"downlinks":[{"f_port":"x","frm_payload":"AQ=="}]}"#,
                "downlinks[0].f_port",
            ),
            (
                br#"{"downlinks":[{"frm_payload":"AQ==","priority":"URGENT"}]}"#,
                "downlinks[0].priority",
            ),
            (b"not json", "not JSON"),
        ] {
            let err = parse_downlinks(body).unwrap_err();
            assert!(err.contains(needle), "{err} should name {needle}");
        }
    }

    #[test]
    fn identifiers_render_in_hex_like_the_things_stack() {
        let ids = v3::EndDeviceIdentifiers {
            application_ids: Some(v3::ApplicationIdentifiers {
                application_id: "app".into(),
            }),
            device_id: "dev".into(),
            dev_eui: vec![0x70, 0xB3, 0xD5, 0x7E, 0xD0, 0, 0, 1],
            join_eui: Vec::new(),
            dev_addr: vec![0x26, 0x0B, 0x12, 0x34],
        };
        let v = end_device_ids(&ids);
        assert_eq!(v["dev_eui"], "70B3D57ED0000001");
        assert_eq!(v["dev_addr"], "260B1234");
        assert!(v.get("join_eui").is_none());
        assert_eq!(v["application_ids"]["application_id"], "app");
    }
}
