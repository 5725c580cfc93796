//! Tern's cluster runtime: what lets the five roles run in one process or many.
//!
//! - [`auth`]: cluster keys and API keys on gRPC calls between roles.
//! - [`directory`]: where the other roles are (static configuration or etcd).
//! - [`shard`]: which instance owns a device or application (rendezvous hashing).
//! - [`role`]: the lifecycle every role implements.
//! - [`links`]: one trait per link between roles, in-process or over gRPC.
//! - [`secret`]: secrets in configuration, masked wherever they are shown.

#![warn(missing_docs)]

pub mod auth;
pub mod directory;
pub mod links;
pub mod role;
pub mod secret;
pub mod shard;
