//! Tern's wire contracts, generated from the `.proto` files in the workspace's `api/`.
//!
//! - [`v3`]: every message (prost), every service's client and server (tonic), and the
//!   proto3 JSON mapping of every message (serde, through pbjson): field names in
//!   lowerCamelCase on output (both lowerCamelCase and the proto names accepted on input),
//!   `bytes` as base64, enums by name, 64-bit integers as strings, `Timestamp` as RFC 3339,
//!   `Duration` as `"1.5s"`, `Struct` as a plain JSON object, `FieldMask` as `"a,b.c"`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of every file, with source comments
//!   and the `google.api.http` options, for gRPC reflection and the REST mapping.
//! - [`http`]: the REST bindings read from those options.
//! - [`rest`]: the REST mapping of the public API, derived from those bindings.
//! - [`convert`]: conversions between the `bytes` fields and the `lorawan`/`band` types.
//!
//! Byte conventions: EUIs, DevAddr, NetID and keys are `bytes` in display (big-endian) order.

mod field_mask;
mod timestamp;

pub mod convert;
pub mod events;
pub mod http;
pub mod rest;
pub mod rights;

pub use field_mask::FieldMask;
pub use timestamp::Timestamp;

/// Generated code of package `tern.v3`: messages, enums, clients, servers, serde impls.
// Generated code: prost/tonic/pbjson output is not written to this crate's lint standards
// (doc comments come from the .proto comments, some of which clippy's markdown lints flag;
// large oneof variants are intended), so lints are relaxed for this module only.
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    rustdoc::all,
    unreachable_pub
)]
pub mod v3 {
    include!(concat!(env!("OUT_DIR"), "/tern.v3.rs"));
    include!(concat!(env!("OUT_DIR"), "/tern.v3.serde.rs"));
}

/// Generated code of package `google.api`: the `HttpRule` of the REST bindings.
// Generated code: see the comment on `v3`.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod google {
    /// Package `google.api`.
    pub mod api {
        include!(concat!(env!("OUT_DIR"), "/google.api.rs"));
    }
}

/// The encoded `google.protobuf.FileDescriptorSet` of every compiled file and its imports,
/// with source info and custom options: serve it with tonic-reflection, or read the REST
/// bindings from it (see [`http`]).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tern_descriptor.bin"));
