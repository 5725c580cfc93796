//! Helpers for [`Event`](crate::v3::Event) payloads.
//!
//! An event's `data` is the proto3 JSON form of a message, as a `google.protobuf.Struct`, and
//! `data_type` names that message. Any consumer can show it as JSON; one that knows the type
//! reads it back with [`v3::Event::data_as`].

use crate::v3;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why an event payload could not be set or read.
#[derive(Debug, thiserror::Error)]
pub enum EventDataError {
    /// The message does not serialize to a JSON object.
    #[error("event data must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// `data_type` is not the requested type.
    #[error("event data is {found:?}, not {expected:?}")]
    WrongType {
        /// The type asked for.
        expected: String,
        /// The event's `data_type`.
        found: String,
    },
    /// The JSON mapping failed.
    #[error("event data: {0}")]
    Json(#[from] serde_json::Error),
}

impl v3::Event {
    /// Sets `data` to the JSON form of `msg` and `data_type` to its full name.
    pub fn set_data<M: prost::Name + Serialize>(&mut self, msg: &M) -> Result<(), EventDataError> {
        let value = serde_json::to_value(msg)?;
        let kind = match &value {
            serde_json::Value::Object(_) => None,
            serde_json::Value::Null => Some("null"),
            serde_json::Value::Bool(_) => Some("a boolean"),
            serde_json::Value::Number(_) => Some("a number"),
            serde_json::Value::String(_) => Some("a string"),
            serde_json::Value::Array(_) => Some("an array"),
        };
        if let Some(kind) = kind {
            return Err(EventDataError::NotAnObject(kind));
        }
        self.data = Some(serde_json::from_value(value)?);
        self.data_type = M::full_name();
        Ok(())
    }

    /// Reads `data` as message `M`; `None` when the event has no data.
    pub fn data_as<M: prost::Name + DeserializeOwned>(&self) -> Result<Option<M>, EventDataError> {
        let Some(data) = &self.data else {
            return Ok(None);
        };
        if self.data_type != M::full_name() {
            return Err(EventDataError::WrongType {
                expected: M::full_name(),
                found: self.data_type.clone(),
            });
        }
        let value = integral_numbers(serde_json::to_value(data)?);
        Ok(Some(serde_json::from_value(value)?))
    }
}

/// `Struct` keeps every JSON number as a double; integer fields only accept integers, so
/// whole doubles become integers again (float fields accept both).
fn integral_numbers(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                Value::from(f as i64)
            }
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(integral_numbers).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, integral_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}
