//! Generates the prost messages, tonic clients and servers, the file descriptor set and the
//! pbjson serde impls from the `.proto` files in the workspace's `api/` directory.

use std::path::PathBuf;

/// The `.proto` files to compile, relative to `api/`.
const PROTOS: &[&str] = &[
    "tern/v3/identifiers.proto",
    "tern/v3/lorawan.proto",
    "tern/v3/gatewayserver.proto",
    "tern/v3/joinserver.proto",
    "tern/v3/application.proto",
    "tern/v3/end_device.proto",
    "tern/v3/identityserver.proto",
    "tern/v3/events.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let api = manifest.join("../../api").canonicalize()?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("tern_descriptor.bin");

    // protoc ships google/protobuf/*.proto in its include directory; Debian puts them in
    // /usr/include, which protoc searches by itself.
    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| api.join(p)).collect();
    println!("cargo:rerun-if-changed={}", api.display());
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    // Messages implement `prost::Name` (full names for events and `Any`).
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(&descriptor_path)
        // Well-known types come from pbjson-types, whose serde impls follow the proto3 JSON
        // mapping (Timestamp as RFC 3339, Duration as "1.5s", Struct as a JSON object).
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        // pbjson-types maps FieldMask as an object; ours follows the spec (a string).
        .extern_path(".google.protobuf.FieldMask", "crate::FieldMask")
        // pbjson-types writes "+00:00"; the proto3 JSON mapping wants a Z-normalized string.
        .extern_path(".google.protobuf.Timestamp", "crate::Timestamp")
        .compile_with_config(config, &protos, std::slice::from_ref(&api))?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .extern_path(".google.protobuf.FieldMask", "crate::FieldMask")
        .extern_path(".google.protobuf.Timestamp", "crate::Timestamp")
        .build(&[".tern.v3"])?;
    Ok(())
}
