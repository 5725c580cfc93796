//! Correlation IDs: strings like `gs:uplink:01J9Z3...` that follow one frame or request
//! through every role, its events and its logs.
//!
//! Each role adds its own ID when it takes over (`gs:uplink:...`, then `ns:uplink:...`,
//! ...), so that one search finds everything one uplink caused. Between processes they
//! travel in the messages themselves (`correlation_ids` fields) or in the gRPC metadata
//! entry [`METADATA_KEY`]; inside a task, [`CorrelationIds::scope`] carries them and
//! [`Event::new`](crate::Event::new) picks them up.

use std::future::Future;

use ulid::Ulid;

/// The gRPC metadata key that carries correlation IDs, comma-separated.
pub const METADATA_KEY: &str = "tern-correlation-ids";

tokio::task_local! {
    static CURRENT: CorrelationIds;
}

/// A new correlation ID: `"<prefix>:<ulid>"`, e.g. `new_id("gs:uplink")` gives
/// `gs:uplink:01J9Z3QK5E4Y7X8W2V1T0S9R8P`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}:{}", Ulid::new())
}

/// An ordered set of correlation IDs (no duplicates, first occurrence wins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CorrelationIds(Vec<String>);

impl CorrelationIds {
    /// No IDs.
    pub fn new() -> Self {
        Self::default()
    }

    /// One fresh ID with this prefix (see [`new_id`]).
    pub fn generate(prefix: &str) -> Self {
        Self(vec![new_id(prefix)])
    }

    /// Adds a fresh ID with this prefix and returns it.
    pub fn push_new(&mut self, prefix: &str) -> String {
        let id = new_id(prefix);
        self.0.push(id.clone());
        id
    }

    /// Adds an ID unless it is already there or empty.
    pub fn push(&mut self, id: impl Into<String>) {
        let id = id.into();
        if !id.is_empty() && !self.0.contains(&id) {
            self.0.push(id);
        }
    }

    /// The IDs, in order.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The IDs, in order.
    pub fn into_vec(self) -> Vec<String> {
        self.0
    }

    /// How many IDs there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The IDs of the innermost [`scope`](Self::scope) around the caller; none outside one.
    pub fn current() -> Self {
        CURRENT.try_with(Clone::clone).unwrap_or_default()
    }

    /// Runs `fut` with these IDs, added to those of any enclosing scope, as the current ones.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self.inherit(), fut).await
    }

    /// Runs `f` with these IDs, added to those of any enclosing scope, as the current ones.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.inherit(), f)
    }

    /// The enclosing scope's IDs followed by ours.
    fn inherit(self) -> Self {
        let mut all = Self::current();
        all.extend(self.0);
        all
    }

    /// The IDs as one metadata value: comma-separated.
    pub fn to_metadata_value(&self) -> String {
        self.0.join(",")
    }

    /// Reads a metadata value written by [`to_metadata_value`](Self::to_metadata_value);
    /// blanks around IDs and empty entries are ignored.
    pub fn from_metadata_value(value: &str) -> Self {
        value.split(',').map(str::trim).collect()
    }
}

impl Extend<String> for CorrelationIds {
    fn extend<I: IntoIterator<Item = String>>(&mut self, iter: I) {
        for id in iter {
            self.push(id);
        }
    }
}

impl<S: Into<String>> FromIterator<S> for CorrelationIds {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut ids = Self::new();
        ids.extend(iter.into_iter().map(Into::into));
        ids
    }
}

impl IntoIterator for CorrelationIds {
    type Item = String;
    type IntoIter = std::vec::IntoIter<String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl From<Vec<String>> for CorrelationIds {
    fn from(ids: Vec<String>) -> Self {
        ids.into_iter().collect()
    }
}

impl From<CorrelationIds> for Vec<String> {
    fn from(ids: CorrelationIds) -> Self {
        ids.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_id_is_prefix_and_ulid() {
        let id = new_id("gs:uplink");
        let (prefix, ulid) = id.rsplit_once(':').unwrap();
        assert_eq!(prefix, "gs:uplink");
        assert!(ulid.parse::<Ulid>().is_ok(), "{ulid} is not a ULID");
        assert_ne!(new_id("x"), new_id("x"));
    }

    #[test]
    fn dedups_and_keeps_order() {
        let ids: CorrelationIds = ["b", "a", "b", "", "c"].into_iter().collect();
        assert_eq!(ids.as_slice(), ["b", "a", "c"]);
        assert_eq!(ids.to_metadata_value(), "b,a,c");
        assert_eq!(CorrelationIds::from_metadata_value(" b, a,,c "), ids);
    }

    #[tokio::test]
    async fn scopes_nest_and_carry_across_awaits() {
        assert!(CorrelationIds::current().is_empty());
        let outer = CorrelationIds::from(vec!["gs:uplink:1".to_owned()]);
        outer
            .scope(async {
                tokio::task::yield_now().await;
                assert_eq!(CorrelationIds::current().as_slice(), ["gs:uplink:1"]);
                CorrelationIds::from(vec!["ns:uplink:2".to_owned()])
                    .scope(async {
                        assert_eq!(
                            CorrelationIds::current().as_slice(),
                            ["gs:uplink:1", "ns:uplink:2"]
                        );
                    })
                    .await;
                assert_eq!(CorrelationIds::current().len(), 1);
            })
            .await;
        let inner = CorrelationIds::generate("js:join").sync_scope(CorrelationIds::current);
        assert!(inner.as_slice()[0].starts_with("js:join:"));
    }
}
