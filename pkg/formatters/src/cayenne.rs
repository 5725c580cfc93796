//! Cayenne Low Power Payload: `channel, type, value` records, big-endian.
//!
//! JSON keys follow The Things Stack: the lower-case sensor name and the channel, e.g.
//! `temperature_3`, `accelerometer_6: {x, y, z}`, `gps_1: {latitude, longitude, altitude}`.
//! The same shape is accepted by [`encode`] (downlinks), so that `decode(encode(v)) == v` for
//! values on the type's resolution.

use serde_json::{Map, Number, Value};

/// Why a CayenneLPP payload or object was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CayenneError {
    /// A record header (channel, type) is cut short at the end of the payload.
    #[error("truncated record header at byte {offset}: need channel and type, have 1 byte")]
    TruncatedHeader {
        /// Offset of the record.
        offset: usize,
    },
    /// The value of a record is cut short.
    #[error(
        "truncated {name} value on channel {channel} at byte {offset}: need {need} bytes, have {have}"
    )]
    Truncated {
        /// Offset of the value.
        offset: usize,
        /// The record's channel.
        channel: u8,
        /// The sensor name of the record's type.
        name: &'static str,
        /// Bytes the type needs.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// The record's type is not a CayenneLPP type.
    #[error("unknown type {type_id} (0x{type_id:02x}) on channel {channel} at byte {offset}")]
    UnknownType {
        /// Offset of the record.
        offset: usize,
        /// The record's channel.
        channel: u8,
        /// The unknown type.
        type_id: u8,
    },
    /// The object to encode is not a JSON object.
    #[error("the object to encode must be a JSON object of `<sensor>_<channel>` fields")]
    NotAnObject,
    /// A key is not `<sensor>_<channel>` with a known sensor and a channel 0..=255.
    #[error("field `{key}`: {reason}")]
    BadKey {
        /// The key.
        key: String,
        /// Why it is refused.
        reason: String,
    },
    /// A value does not fit the sensor type.
    #[error("field `{key}`: {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// Why it is refused.
        reason: String,
    },
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// One big-endian number; `integer` types are emitted as JSON integers.
    Scalar {
        size: usize,
        signed: bool,
        divisor: f64,
        integer: bool,
    },
    /// Three signed 16-bit axes (`x`, `y`, `z`).
    Xyz { divisor: f64 },
    /// Latitude and longitude (signed 24-bit, 0.0001°), altitude (signed 24-bit, 0.01 m).
    Gps,
    /// Red, green, blue (one byte each).
    Colour,
}

impl Shape {
    fn size(self) -> usize {
        match self {
            Shape::Scalar { size, .. } => size,
            Shape::Xyz { .. } => 6,
            Shape::Gps => 9,
            Shape::Colour => 3,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct SensorType {
    id: u8,
    name: &'static str,
    shape: Shape,
}

const fn scalar(size: usize, signed: bool, divisor: f64) -> Shape {
    Shape::Scalar {
        size,
        signed,
        divisor,
        integer: divisor == 1.0,
    }
}

/// LPP type = IPSO object ID - 3200. Sizes and resolutions are those of the Cayenne LPP
/// reference and its extended-types Arduino library; load, pressure and loudness have no
/// published LPP encoding and use the resolution documented in README.md.
#[rustfmt::skip]
const TYPES: &[SensorType] = &[
    SensorType { id: 0, name: "digital_in", shape: scalar(1, false, 1.0) },
    SensorType { id: 1, name: "digital_out", shape: scalar(1, false, 1.0) },
    SensorType { id: 2, name: "analog_in", shape: scalar(2, true, 100.0) },
    SensorType { id: 3, name: "analog_out", shape: scalar(2, true, 100.0) },
    SensorType { id: 100, name: "generic_sensor", shape: scalar(4, false, 1.0) },
    SensorType { id: 101, name: "luminosity", shape: scalar(2, false, 1.0) },
    SensorType { id: 102, name: "presence", shape: scalar(1, false, 1.0) },
    SensorType { id: 103, name: "temperature", shape: scalar(2, true, 10.0) },
    SensorType { id: 104, name: "relative_humidity", shape: scalar(1, false, 2.0) },
    SensorType { id: 113, name: "accelerometer", shape: Shape::Xyz { divisor: 1000.0 } },
    SensorType { id: 115, name: "barometric_pressure", shape: scalar(2, false, 10.0) },
    SensorType { id: 116, name: "voltage", shape: scalar(2, false, 100.0) },
    SensorType { id: 117, name: "current", shape: scalar(2, false, 1000.0) },
    SensorType { id: 118, name: "frequency", shape: scalar(4, false, 1.0) },
    SensorType { id: 120, name: "percentage", shape: scalar(1, false, 1.0) },
    SensorType { id: 121, name: "altitude", shape: scalar(2, true, 1.0) },
    SensorType { id: 122, name: "load", shape: scalar(3, true, 1000.0) },
    SensorType { id: 123, name: "pressure", shape: scalar(2, false, 10.0) },
    SensorType { id: 124, name: "loudness", shape: scalar(2, false, 10.0) },
    SensorType { id: 125, name: "concentration", shape: scalar(2, false, 1.0) },
    SensorType { id: 128, name: "power", shape: scalar(2, false, 1.0) },
    SensorType { id: 130, name: "distance", shape: scalar(4, false, 1000.0) },
    SensorType { id: 131, name: "energy", shape: scalar(4, false, 1000.0) },
    SensorType { id: 132, name: "direction", shape: scalar(2, false, 1.0) },
    SensorType { id: 133, name: "unixtime", shape: scalar(4, false, 1.0) },
    SensorType { id: 134, name: "gyrometer", shape: Shape::Xyz { divisor: 100.0 } },
    SensorType { id: 135, name: "colour", shape: Shape::Colour },
    SensorType { id: 136, name: "gps", shape: Shape::Gps },
    SensorType { id: 142, name: "switch", shape: scalar(1, false, 1.0) },
];

fn by_id(id: u8) -> Option<&'static SensorType> {
    TYPES.iter().find(|t| t.id == id)
}

fn by_name(name: &str) -> Option<&'static SensorType> {
    TYPES.iter().find(|t| t.name == name)
}

/// Reads a big-endian integer of `bytes.len()` bytes (1..=4), sign-extended when `signed`.
fn read_int(bytes: &[u8], signed: bool) -> i64 {
    let raw = bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let bits = 8 * bytes.len() as u32;
    if signed && raw & (1 << (bits - 1)) != 0 {
        raw as i64 - (1i64 << bits)
    } else {
        raw as i64
    }
}

fn number(raw: i64, divisor: f64, integer: bool) -> Value {
    if integer {
        Value::from(raw)
    } else {
        Number::from_f64(raw as f64 / divisor)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

/// Decodes a CayenneLPP payload into a JSON object keyed `<sensor>_<channel>`.
pub fn decode(bytes: &[u8]) -> Result<Value, CayenneError> {
    let mut out = Map::new();
    let mut offset = 0;
    while offset < bytes.len() {
        if offset + 2 > bytes.len() {
            return Err(CayenneError::TruncatedHeader { offset });
        }
        let (channel, type_id) = (bytes[offset], bytes[offset + 1]);
        let sensor = by_id(type_id).ok_or(CayenneError::UnknownType {
            offset,
            channel,
            type_id,
        })?;
        let start = offset + 2;
        let need = sensor.shape.size();
        let have = bytes.len() - start;
        if have < need {
            return Err(CayenneError::Truncated {
                offset: start,
                channel,
                name: sensor.name,
                need,
                have,
            });
        }
        let v = &bytes[start..start + need];
        let value = match sensor.shape {
            Shape::Scalar {
                signed,
                divisor,
                integer,
                ..
            } => number(read_int(v, signed), divisor, integer),
            Shape::Xyz { divisor } => {
                let axis = |i: usize| number(read_int(&v[i..i + 2], true), divisor, false);
                serde_json::json!({ "x": axis(0), "y": axis(2), "z": axis(4) })
            }
            Shape::Gps => serde_json::json!({
                "latitude": number(read_int(&v[0..3], true), 10_000.0, false),
                "longitude": number(read_int(&v[3..6], true), 10_000.0, false),
                "altitude": number(read_int(&v[6..9], true), 100.0, false),
            }),
            Shape::Colour => serde_json::json!({ "r": v[0], "g": v[1], "b": v[2] }),
        };
        out.insert(format!("{}_{}", sensor.name, channel), value);
        offset = start + need;
    }
    Ok(Value::Object(out))
}

/// Encodes a JSON object keyed `<sensor>_<channel>` (the shape [`decode`] produces) into a
/// CayenneLPP payload, records ordered by channel then type.
pub fn encode(data: &Value) -> Result<Vec<u8>, CayenneError> {
    let Value::Object(fields) = data else {
        return Err(CayenneError::NotAnObject);
    };
    let mut records = Vec::with_capacity(fields.len());
    for (key, value) in fields {
        let bad_key = |reason: String| CayenneError::BadKey {
            key: key.clone(),
            reason,
        };
        let (name, channel) = key
            .rsplit_once('_')
            .ok_or_else(|| bad_key("expected `<sensor>_<channel>`".into()))?;
        let channel: u8 = channel
            .parse()
            .map_err(|_| bad_key(format!("channel `{channel}` is not an integer in 0..=255")))?;
        let sensor = by_name(name).ok_or_else(|| bad_key(format!("unknown sensor `{name}`")))?;
        let mut record = vec![channel, sensor.id];
        encode_value(key, sensor, value, &mut record)?;
        records.push((channel, sensor.id, record));
    }
    records.sort_by_key(|(channel, id, _)| (*channel, *id));
    Ok(records.into_iter().flat_map(|(_, _, r)| r).collect())
}

fn encode_value(
    key: &str,
    sensor: &SensorType,
    value: &Value,
    out: &mut Vec<u8>,
) -> Result<(), CayenneError> {
    let bad = |reason: String| CayenneError::BadValue {
        key: key.to_string(),
        reason,
    };
    let field = |obj: &Map<String, Value>, name: &str| -> Result<f64, CayenneError> {
        obj.get(name)
            .and_then(Value::as_f64)
            .ok_or_else(|| bad(format!("`{name}` must be a number")))
    };
    let object = || {
        value
            .as_object()
            .ok_or_else(|| bad(format!("{} needs an object, got {value}", sensor.name)))
    };
    match sensor.shape {
        Shape::Scalar {
            size,
            signed,
            divisor,
            ..
        } => {
            let v = match value {
                Value::Bool(b) => f64::from(u8::from(*b)),
                other => other
                    .as_f64()
                    .ok_or_else(|| bad(format!("{} needs a number, got {other}", sensor.name)))?,
            };
            push_int(v, size, signed, divisor, out).map_err(bad)?;
        }
        Shape::Xyz { divisor } => {
            let obj = object()?;
            for axis in ["x", "y", "z"] {
                push_int(field(obj, axis)?, 2, true, divisor, out)
                    .map_err(|r| bad(format!("`{axis}`: {r}")))?;
            }
        }
        Shape::Gps => {
            let obj = object()?;
            for (name, divisor) in [
                ("latitude", 10_000.0),
                ("longitude", 10_000.0),
                ("altitude", 100.0),
            ] {
                push_int(field(obj, name)?, 3, true, divisor, out)
                    .map_err(|r| bad(format!("`{name}`: {r}")))?;
            }
        }
        Shape::Colour => {
            let obj = object()?;
            for name in ["r", "g", "b"] {
                push_int(field(obj, name)?, 1, false, 1.0, out)
                    .map_err(|r| bad(format!("`{name}`: {r}")))?;
            }
        }
    }
    Ok(())
}

/// Scales `v` to the type's resolution and appends it big-endian in `size` bytes.
fn push_int(
    v: f64,
    size: usize,
    signed: bool,
    divisor: f64,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let bits = 8 * size as u32;
    let (min, max) = if signed {
        (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
    } else {
        (0, (1i64 << bits) - 1)
    };
    let raw = (v * divisor).round();
    if !raw.is_finite() || raw < min as f64 || raw > max as f64 {
        return Err(format!(
            "{v} is out of range {}..={}",
            min as f64 / divisor,
            max as f64 / divisor
        ));
    }
    let raw = raw as i64 as u64;
    out.extend((0..size).rev().map(|i| (raw >> (8 * i)) as u8));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips() {
        for t in TYPES {
            let value = match t.shape {
                Shape::Scalar {
                    signed, integer, ..
                } => match (signed, integer) {
                    (true, true) => Value::from(-12),
                    (false, true) => Value::from(42),
                    (true, false) => Value::from(-1.5),
                    (false, false) => Value::from(12.5),
                },
                Shape::Xyz { .. } => serde_json::json!({"x": 1.5, "y": -0.25, "z": 0.0}),
                Shape::Gps => {
                    serde_json::json!({"latitude": 52.3655, "longitude": 4.8885, "altitude": -21.5})
                }
                Shape::Colour => serde_json::json!({"r": 255, "g": 0, "b": 128}),
            };
            let obj = serde_json::json!({ format!("{}_7", t.name): value });
            let bytes = encode(&obj).unwrap_or_else(|e| panic!("{}: {e}", t.name));
            assert_eq!(bytes.len(), 2 + t.shape.size(), "{}", t.name);
            assert_eq!(decode(&bytes).unwrap(), obj, "{}", t.name);
        }
    }
}
