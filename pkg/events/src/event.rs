//! The event builder.

use std::marker::PhantomData;
use std::sync::OnceLock;

use serde::Serialize;
use tern_api::Timestamp;
use tern_api::v3;
use tern_api::v3::entity_identifiers::Ids;
use ulid::Ulid;

use crate::correlation::CorrelationIds;
use crate::definitions::{Definition, EventData, NoData};

/// Field names removed from event data wherever they occur: secret keys (`KeyEnvelope.key`,
/// `ApiKey.key`), wrapped keys and passwords. Events are shown to people and cross the
/// cluster; secrets never belong in them.
const SECRET_FIELDS: &[&str] = &["key", "encryptedKey", "password"];

/// The host name of this process, the `origin` of its events.
pub fn origin() -> &'static str {
    static ORIGIN: OnceLock<String> = OnceLock::new();
    ORIGIN.get_or_init(|| gethostname::gethostname().to_string_lossy().into_owned())
}

/// Anything that names one entity: the five identifier messages, or `EntityIdentifiers`.
pub trait IntoEntityIdentifiers {
    /// The entity, wrapped as `EntityIdentifiers`.
    fn into_entity_identifiers(self) -> v3::EntityIdentifiers;
}

impl IntoEntityIdentifiers for v3::EntityIdentifiers {
    fn into_entity_identifiers(self) -> v3::EntityIdentifiers {
        self
    }
}

macro_rules! into_entity {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl IntoEntityIdentifiers for $ty {
            fn into_entity_identifiers(self) -> v3::EntityIdentifiers {
                v3::EntityIdentifiers { ids: Some(Ids::$variant(self)) }
            }
        }
    )*};
}

into_entity! {
    v3::ApplicationIdentifiers => ApplicationIds,
    v3::EndDeviceIdentifiers => DeviceIds,
    v3::GatewayIdentifiers => GatewayIds,
    v3::OrganizationIdentifiers => OrganizationIds,
    v3::UserIdentifiers => UserIds,
}

impl<T: IntoEntityIdentifiers + Clone> IntoEntityIdentifiers for &T {
    fn into_entity_identifiers(self) -> v3::EntityIdentifiers {
        self.clone().into_entity_identifiers()
    }
}

/// An event being built from its [`Definition`]; `M` is its data type.
///
/// ```
/// use tern_api::v3;
/// use tern_events::{Event, definitions};
///
/// let device = v3::EndDeviceIdentifiers::new("my-app", "my-device");
/// let reason = v3::ErrorDetails { name: "f_cnt_too_low".into(), ..Default::default() };
/// let event: v3::Event = Event::new(&definitions::NS_UP_DATA_DROP)
///     .with_identifiers([&device])
///     .with_data(&reason)
///     .with_correlation_ids(["gs:uplink:01J9Z3QK5E4Y7X8W2V1T0S9R8P"])
///     .into();
/// assert_eq!(event.name, "ns.up.data.drop");
/// assert_eq!(event.data_type, "tern.v3.ErrorDetails");
/// ```
#[derive(Debug, Clone)]
pub struct Event<M = NoData> {
    event: v3::Event,
    data: PhantomData<fn(&M)>,
}

impl<M: EventData> Event<M> {
    /// A new event of this kind, now, from this host, with a fresh ULID and the current
    /// [`CorrelationIds`].
    pub fn new(definition: &Definition<M>) -> Self {
        Self {
            event: v3::Event {
                name: definition.name().to_owned(),
                time: Some(Timestamp::now()),
                correlation_ids: CorrelationIds::current().into_vec(),
                origin: origin().to_owned(),
                unique_id: Ulid::new().to_string(),
                ..Default::default()
            },
            data: PhantomData,
        }
    }
}

impl<M> Event<M> {
    /// Adds the entities the event is about (filters match on these).
    pub fn with_identifiers<I: IntoEntityIdentifiers>(
        mut self,
        ids: impl IntoIterator<Item = I>,
    ) -> Self {
        self.event.identifiers.extend(
            ids.into_iter()
                .map(IntoEntityIdentifiers::into_entity_identifiers),
        );
        self
    }

    /// Adds correlation IDs, skipping those already there.
    pub fn with_correlation_ids<S: Into<String>>(
        mut self,
        ids: impl IntoIterator<Item = S>,
    ) -> Self {
        let mut all = CorrelationIds::from(std::mem::take(&mut self.event.correlation_ids));
        all.extend(ids.into_iter().map(Into::into));
        self.event.correlation_ids = all.into_vec();
        self
    }

    /// Sets one request context entry (e.g. a tenant, tracing headers).
    pub fn with_context(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.event.context.insert(key.into(), value.into());
        self
    }

    /// Sets when it happened, for events reported after the fact.
    pub fn with_time(mut self, time: impl Into<Timestamp>) -> Self {
        self.event.time = Some(time.into());
        self
    }

    /// The event so far.
    pub fn as_proto(&self) -> &v3::Event {
        &self.event
    }

    /// The finished event.
    pub fn into_proto(self) -> v3::Event {
        self.event
    }
}

impl<M: EventData + Serialize> Event<M> {
    /// Sets the data: the proto3 JSON form of `data`, without secret fields (`key`,
    /// `encryptedKey`, `password`).
    pub fn with_data(mut self, data: &M) -> Self {
        self.event.data_type = M::data_type();
        match to_struct(data) {
            Ok(s) => self.event.data = Some(s),
            // Generated messages always map to JSON objects, so this is a programming error
            // in a hand-written `Serialize`; the event still goes out, without its data.
            Err(reason) => {
                self.event.data = None;
                tracing::warn!(event = %self.event.name, data_type = %self.event.data_type,
                    "event data not set: {reason}");
            }
        }
        self
    }
}

impl<M> From<Event<M>> for v3::Event {
    fn from(event: Event<M>) -> Self {
        event.event
    }
}

fn to_struct<M: Serialize>(data: &M) -> Result<pbjson_types::Struct, String> {
    let mut value = serde_json::to_value(data).map_err(|e| e.to_string())?;
    if !value.is_object() {
        return Err(format!("it maps to JSON {value}, not to an object"));
    }
    remove_secrets(&mut value);
    serde_json::from_value(value).map_err(|e| e.to_string())
}

fn remove_secrets(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|k, _| !SECRET_FIELDS.contains(&k.as_str()));
            map.values_mut().for_each(remove_secrets);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(remove_secrets),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions;

    #[test]
    fn secrets_never_reach_the_data() {
        let key = v3::ApiKey {
            id: "KEYID".into(),
            key: "NNSXS.SECRET".into(),
            name: "ci".into(),
            ..Default::default()
        };
        let event = Event::new(&definitions::IS_API_KEY_CREATE)
            .with_data(&key)
            .into_proto();
        let json = serde_json::to_string(&event).unwrap();
        assert!(!json.contains("SECRET"), "{json}");
        assert!(json.contains("KEYID"), "{json}");

        let device = v3::EndDevice {
            ids: Some(v3::EndDeviceIdentifiers::new("app", "dev")),
            root_keys: Some(v3::RootKeys {
                app_key: Some(v3::KeyEnvelope {
                    key: vec![0x2b; 16],
                    ..Default::default()
                }),
                nwk_key: None,
            }),
            ..Default::default()
        };
        let event = Event::new(&definitions::IS_END_DEVICE_CREATE)
            .with_data(&device)
            .into_proto();
        let back: v3::EndDevice = event.data_as().unwrap().unwrap();
        assert_eq!(back.ids, device.ids);
        assert!(back.root_keys.unwrap().app_key.unwrap().key.is_empty());

        let user = v3::User {
            password: "hunter2hunter2".into(),
            ..Default::default()
        };
        let event = Event::new(&definitions::IS_USER_CREATE).with_data(&user);
        assert!(
            !serde_json::to_string(event.as_proto())
                .unwrap()
                .contains("hunter2")
        );
    }
}
