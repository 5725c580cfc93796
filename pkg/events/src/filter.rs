//! Subscription filters: which entities, which event names.

use std::borrow::Cow;

use tern_api::v3;
use tern_api::v3::entity_identifiers::Ids;

use crate::error::EventsError;
use crate::event::IntoEntityIdentifiers;

/// Which events a subscription receives: those about at least one of its entities (all
/// when it names none) whose name matches at least one of its patterns (all when none).
///
/// An application matches its own events and those of its devices; a device matches its
/// own. Name patterns are dotted names where `*` stands for any run of characters, dots
/// included: `ns.up.*` matches `ns.up.data.receive`, `*.drop` matches every drop.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    identifiers: Vec<v3::EntityIdentifiers>,
    names: Vec<String>,
}

impl Filter {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// The filter of a `StreamEvents` request.
    pub fn from_request(request: &v3::StreamEventsRequest) -> Self {
        Self {
            identifiers: request.identifiers.clone(),
            names: request.names.clone(),
        }
    }

    /// Adds an entity.
    pub fn entity(mut self, ids: impl IntoEntityIdentifiers) -> Self {
        self.identifiers.push(ids.into_entity_identifiers());
        self
    }

    /// Adds an application: its events and its devices'.
    pub fn application(self, application_id: impl Into<String>) -> Self {
        self.entity(v3::ApplicationIdentifiers {
            application_id: application_id.into(),
        })
    }

    /// Adds an end device.
    pub fn device(self, application_id: impl Into<String>, device_id: impl Into<String>) -> Self {
        self.entity(v3::EndDeviceIdentifiers::new(application_id, device_id))
    }

    /// Adds a gateway.
    pub fn gateway(self, gateway_id: impl Into<String>) -> Self {
        self.entity(v3::GatewayIdentifiers {
            gateway_id: gateway_id.into(),
            eui: Vec::new(),
        })
    }

    /// Adds an organization.
    pub fn organization(self, organization_id: impl Into<String>) -> Self {
        self.entity(v3::OrganizationIdentifiers {
            organization_id: organization_id.into(),
        })
    }

    /// Adds a user.
    pub fn user(self, user_id: impl Into<String>) -> Self {
        self.entity(v3::UserIdentifiers {
            user_id: user_id.into(),
            email: String::new(),
        })
    }

    /// Adds a name pattern, e.g. `ns.up.*`.
    pub fn name(mut self, pattern: impl Into<String>) -> Self {
        self.names.push(pattern.into());
        self
    }

    /// Adds name patterns.
    pub fn names<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.names.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// The entities.
    pub fn identifiers(&self) -> &[v3::EntityIdentifiers] {
        &self.identifiers
    }

    /// The name patterns.
    pub fn name_patterns(&self) -> &[String] {
        &self.names
    }

    /// Checks every entity and pattern; the error names the first bad one and why.
    pub fn validate(&self) -> Result<(), EventsError> {
        self.compile().map(drop)
    }

    /// Whether `event` passes the filter (an invalid entity or pattern matches nothing).
    pub fn matches(&self, event: &v3::Event) -> bool {
        let names_ok =
            self.names.is_empty() || self.names.iter().any(|p| glob_match(p, &event.name));
        if !names_ok {
            return false;
        }
        if self.identifiers.is_empty() {
            return true;
        }
        let wanted: Vec<EntityKey<'_>> = self.identifiers.iter().filter_map(entity_key).collect();
        event
            .identifiers
            .iter()
            .filter_map(entity_key)
            .any(|k| wanted.iter().any(|w| w.covers(&k)))
    }

    /// The filter in the form subscriptions use, or why it is invalid.
    pub(crate) fn compile(&self) -> Result<Compiled, EventsError> {
        let mut entities: Vec<EntityKey<'static>> = Vec::new();
        for (i, ids) in self.identifiers.iter().enumerate() {
            let key = checked_entity_key(ids)
                .map_err(|reason| EventsError::Filter(format!("identifiers[{i}]: {reason}")))?;
            if !entities.contains(&key) {
                entities.push(key);
            }
        }
        for (i, pattern) in self.names.iter().enumerate() {
            check_pattern(pattern).map_err(|reason| {
                EventsError::Filter(format!("names[{i}] {pattern:?}: {reason}"))
            })?;
        }
        Ok(Compiled {
            entities,
            names: self.names.clone(),
        })
    }
}

/// A validated filter.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    /// Distinct entities, in filter order.
    pub(crate) entities: Vec<EntityKey<'static>>,
    pub(crate) names: Vec<String>,
}

impl Compiled {
    /// Whether an event called `name` can pass (entities aside).
    pub(crate) fn names_match(&self, name: &str) -> bool {
        self.names.is_empty() || self.names.iter().any(|p| glob_match(p, name))
    }

    /// Whether `event` passes.
    pub(crate) fn matches(&self, event: &v3::Event) -> bool {
        self.names_match(&event.name)
            && (self.entities.is_empty()
                || event
                    .identifiers
                    .iter()
                    .filter_map(entity_key)
                    .any(|k| self.covers(&k)))
    }

    /// Whether one of the filter's entities covers `key`.
    pub(crate) fn covers(&self, key: &EntityKey<'_>) -> bool {
        self.entities.iter().any(|e| e.covers(key))
    }

    /// Whether the copy of `event` that was published for its `index`-th distinct entity is
    /// the one this filter takes: the copy of the first entity it covers (index 0 when the
    /// filter names no entity). Every event thus reaches a subscription exactly once, however
    /// many of its entities the filter covers.
    pub(crate) fn takes_copy(&self, event: &v3::Event, index: usize) -> bool {
        if !self.names_match(&event.name) {
            return false;
        }
        if self.entities.is_empty() {
            return index == 0;
        }
        event_keys(event).iter().position(|k| self.covers(k)) == Some(index)
    }
}

/// One entity, as filters compare them: by ID, a device by application and device ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntityKey<'a> {
    Application(Cow<'a, str>),
    Device(Cow<'a, str>, Cow<'a, str>),
    Gateway(Cow<'a, str>),
    Organization(Cow<'a, str>),
    User(Cow<'a, str>),
}

impl EntityKey<'_> {
    /// Whether a filter on `self` matches an event about `other`.
    fn covers(&self, other: &EntityKey<'_>) -> bool {
        match (self, other) {
            (EntityKey::Application(a), EntityKey::Device(b, _)) => a == b,
            _ => self == other,
        }
    }

    fn into_owned(self) -> EntityKey<'static> {
        fn own(s: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(s.into_owned())
        }
        match self {
            Self::Application(a) => EntityKey::Application(own(a)),
            Self::Device(a, d) => EntityKey::Device(own(a), own(d)),
            Self::Gateway(g) => EntityKey::Gateway(own(g)),
            Self::Organization(o) => EntityKey::Organization(own(o)),
            Self::User(u) => EntityKey::User(own(u)),
        }
    }
}

/// The key of one entity; `None` when no entity is set. A gateway without ID is keyed by
/// its EUI as `eui-<hex>` (the GS reports frames of unregistered gateways that way).
pub(crate) fn entity_key(ids: &v3::EntityIdentifiers) -> Option<EntityKey<'_>> {
    Some(match ids.ids.as_ref()? {
        Ids::ApplicationIds(a) => EntityKey::Application(Cow::Borrowed(&a.application_id)),
        Ids::DeviceIds(d) => EntityKey::Device(
            Cow::Borrowed(
                d.application_ids
                    .as_ref()
                    .map_or("", |a| a.application_id.as_str()),
            ),
            Cow::Borrowed(&d.device_id),
        ),
        Ids::GatewayIds(g) if g.gateway_id.is_empty() && !g.eui.is_empty() => {
            let hex: String = g.eui.iter().map(|b| format!("{b:02x}")).collect();
            EntityKey::Gateway(Cow::Owned(format!("eui-{hex}")))
        }
        Ids::GatewayIds(g) => EntityKey::Gateway(Cow::Borrowed(&g.gateway_id)),
        Ids::OrganizationIds(o) => EntityKey::Organization(Cow::Borrowed(&o.organization_id)),
        Ids::UserIds(u) => EntityKey::User(Cow::Borrowed(&u.user_id)),
    })
}

/// The distinct entity keys of an event, in order of first occurrence.
pub(crate) fn event_keys(event: &v3::Event) -> Vec<EntityKey<'_>> {
    let mut keys: Vec<EntityKey<'_>> = Vec::with_capacity(event.identifiers.len());
    for key in event.identifiers.iter().filter_map(entity_key) {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

fn checked_entity_key(ids: &v3::EntityIdentifiers) -> Result<EntityKey<'static>, String> {
    let key = entity_key(ids).ok_or("no entity is set")?;
    let empty = match &key {
        EntityKey::Application(a) => a.is_empty().then_some("application_ids.application_id"),
        EntityKey::Device(a, _) if a.is_empty() => {
            Some("device_ids.application_ids.application_id")
        }
        EntityKey::Device(_, d) => d.is_empty().then_some("device_ids.device_id"),
        EntityKey::Gateway(g) => g
            .is_empty()
            .then_some("gateway_ids.gateway_id (and gateway_ids.eui)"),
        EntityKey::Organization(o) => o.is_empty().then_some("organization_ids.organization_id"),
        EntityKey::User(u) => u.is_empty().then_some("user_ids.user_id"),
    };
    match empty {
        Some(field) => Err(format!("{field} is empty")),
        None => Ok(key.into_owned()),
    }
}

fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("is empty".to_owned());
    }
    if let Some(c) = pattern
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '*')))
    {
        return Err(format!(
            "contains {c:?}; only a-z, 0-9, '_', '.' and the wildcard '*' are allowed"
        ));
    }
    if pattern.split('.').any(str::is_empty) {
        return Err("has an empty segment (leading, trailing or double '.')".to_owned());
    }
    Ok(())
}

/// Matches `name` against `pattern`, where `*` matches any run of characters.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and where in `name` its match currently ends.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            // Let the last `*` swallow one more character and retry.
            star = Some((sp, sn + 1));
            pi = sp + 1;
            ni = sn + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        assert!(glob_match("ns.up.*", "ns.up.data.receive"));
        assert!(glob_match("*.drop", "gs.up.drop"));
        assert!(glob_match("*.drop", "ns.up.data.drop"));
        assert!(glob_match("ns.*.receive", "ns.up.join.receive"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("gs.up.receive", "gs.up.receive"));
        assert!(!glob_match("gs.up.receive", "gs.up.receive.more"));
        assert!(!glob_match("ns.up.*", "ns.down.data.schedule"));
        assert!(!glob_match("ns.up.*", "ns.up"));
        assert!(!glob_match("*.drop", "gs.up.dropped"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
    }

    #[test]
    fn validation_names_the_bad_element() {
        let err = Filter::all().application("").validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "events filter: identifiers[0]: application_ids.application_id is empty"
        );
        let err = Filter::all()
            .application("app")
            .entity(v3::EntityIdentifiers::default())
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "events filter: identifiers[1]: no entity is set"
        );
        let err = Filter::all().device("app", "").validate().unwrap_err();
        assert!(err.to_string().contains("device_ids.device_id is empty"));
        let err = Filter::all().name("ns..up").validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("names[0] \"ns..up\": has an empty segment")
        );
        let err = Filter::all()
            .names(["ns.*", "NS.UP"])
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("names[1] \"NS.UP\": contains 'N'"));
        Filter::all()
            .name("*.drop")
            .gateway("gw-1")
            .validate()
            .unwrap();
    }
}
