//! The end-to-end harness: real `tern` processes on free loopback ports, the real MQTT
//! clients, and the provisioning and traffic flows the scenarios in `tests/` share.
//!
//! The binaries under test are the workspace's own `tern` and `ternctl`, found next to the
//! test executable (`target/<profile>/`); `make e2e` builds them first, and so does
//! `cargo test --workspace` (`TERN_BIN`/`TERNCTL_BIN` override the paths).

#![warn(missing_docs)]

pub mod flow;
pub mod mqtt;
pub mod process;
pub mod services;
pub mod station;
pub mod webhook;

pub use process::{Server, get, temp_dir, try_get};
