//! Tern's events: typed definitions of what happens in the stack, and the bus that carries
//! them to whoever listens.
//!
//! - [`definitions`]: the catalogue. Each [`Definition`] names an event (`gs.up.receive`,
//!   `ns.up.data.drop`, `is.end_device.create`, ...), says what it means and which message
//!   its data holds, checked at compile time by [`Event::with_data`].
//! - [`Event`]: the builder. `Event::new(&definitions::NS_UP_DATA_DROP)` fills the time, the
//!   origin (host name), a ULID and the correlation IDs of the current
//!   [`CorrelationIds::scope`]; `.with_identifiers(..)`, `.with_data(&msg)` and
//!   `.with_correlation_ids(..)` add the rest. The wire type is [`tern_api::v3::Event`].
//! - [`EventBus`]: `publish` never waits; `subscribe(Filter)` gives a [`Subscription`] that
//!   yields matching events, or tells how many it missed when it fell behind. In-process by
//!   default; through NATS when `events.nats.url` is set, so that every process of a
//!   cluster sees every event (see the crate's README for subjects and delivery semantics).
//! - [`service::EventsService`]: the public `Events.Stream` gRPC service over the bus.
#![warn(missing_docs)]

mod bus;
mod config;
pub mod correlation;
pub mod definitions;
mod error;
mod event;
mod filter;
mod nats;
mod raw;
pub mod service;

pub use bus::{EventBus, RecvError, Stats, Subscription};
pub use config::{DEFAULT_BUFFER, DEFAULT_SUBJECT_PREFIX, Encoding, EventsConfig, NatsConfig};
pub use correlation::CorrelationIds;
pub use definitions::{Definition, DefinitionInfo, EventData, Fields, NoData};
pub use error::EventsError;
pub use event::{Event, IntoEntityIdentifiers, origin};
pub use filter::Filter;
pub use raw::{RawMessage, RawSubscription, subject_token};
