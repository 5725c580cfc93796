//! The integration tests' process helpers are the end-to-end suite's (`tern_e2e::process`):
//! spawn the real `tern` binary on free loopback ports, talk to it over real sockets, signal
//! it and wait for its exit.

pub use tern_e2e::process::*;
