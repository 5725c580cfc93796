//! WebAssembly formatters, written in WAT: a real decoder/encoder implementing the ABI, a
//! module that loops forever, one that grows memory without bound, and refused modules.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
#[path = "support/wat.rs"]
mod wat;

use tern_formatters::{
    DownlinkBytes, DownlinkInput, FormatterError, FormatterKind, Formatters, Limits, UplinkInput,
};

fn wasm(wat: &str) -> FormatterKind {
    FormatterKind::Wasm(Arc::from(wat.as_bytes()))
}

fn uplink(bytes: &[u8], f_port: u32) -> UplinkInput {
    UplinkInput {
        bytes: bytes.to_vec(),
        f_port,
        ..Default::default()
    }
}

const LOOP_FOREVER: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "decode_uplink") (param i32 i32) (result i64)
    (loop $l (br $l))
    (i64.const 0)))"#;

const GROW_FOREVER: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "decode_uplink") (param i32 i32) (result i64)
    (loop $l (drop (memory.grow (i32.const 16))) (br $l))
    (i64.const 0)))"#;

fn engine() -> Formatters {
    Formatters::new(Limits::default())
}

#[test]
fn wat_codec_decodes_and_encodes() {
    let engine = engine();
    let codec = wasm(&wat::codec_wat());
    let decoded = engine
        .decode_uplink(&codec, &uplink(&[3, 103, 1, 16], 12))
        .unwrap();
    assert_eq!(decoded.data, json!({"count": 4, "sum": 123, "port": 12}));
    assert_eq!(decoded.warnings, vec!["decoded by wasm".to_string()]);
    let decoded = engine.decode_uplink(&codec, &uplink(&[], 1)).unwrap();
    assert_eq!(decoded.data, json!({"count": 0, "sum": 0, "port": 1}));

    let encoded = engine
        .encode_downlink(
            &codec,
            &DownlinkInput {
                data: json!({"value": 300}),
                f_port: Some(2),
                variables: None,
            },
        )
        .unwrap();
    assert_eq!(encoded.bytes, vec![1, 44]);
    assert_eq!(encoded.f_port, Some(7), "the module's FPort wins");

    assert_eq!(
        engine.decode_downlink(
            &codec,
            &DownlinkBytes {
                bytes: vec![1],
                f_port: 7,
                variables: None
            }
        ),
        Err(FormatterError::Script {
            errors: vec!["downlink decoding is not supported".into()]
        })
    );
    // Compiled once, instantiated per call.
    assert_eq!(engine.metrics().cache_counts("wasm"), (3, 1));
}

#[test]
fn endless_loop_is_interrupted() {
    let engine = engine();
    assert_eq!(
        engine.decode_uplink(&wasm(LOOP_FOREVER), &uplink(&[1], 1)),
        Err(FormatterError::Timeout {
            limit: Duration::from_millis(100)
        })
    );
    // Again, from the cached module: a fresh instance is interrupted the same way.
    assert!(matches!(
        engine.decode_uplink(&wasm(LOOP_FOREVER), &uplink(&[1], 1)),
        Err(FormatterError::Timeout { .. })
    ));
    // Other modules are unaffected.
    let decoded = engine
        .decode_uplink(&wasm(&wat::codec_wat()), &uplink(&[7], 1))
        .unwrap();
    assert_eq!(decoded.data["sum"], 7);
    assert_eq!(engine.metrics().runs("wasm", "decode_uplink", "timeout"), 2);
}

#[test]
fn unbounded_memory_growth_is_stopped() {
    let engine = engine();
    assert_eq!(
        engine.decode_uplink(&wasm(GROW_FOREVER), &uplink(&[1], 1)),
        Err(FormatterError::MemoryLimit {
            limit_bytes: 16 << 20
        })
    );
    // A module whose initial memory is above the cap cannot even be instantiated.
    let huge = LOOP_FOREVER.replace(
        "(memory (export \"memory\") 1)",
        "(memory (export \"memory\") 1024)",
    );
    assert!(matches!(
        engine.decode_uplink(&wasm(&huge), &uplink(&[1], 1)),
        Err(FormatterError::MemoryLimit { .. })
    ));
    assert_eq!(
        engine
            .metrics()
            .runs("wasm", "decode_uplink", "memory_limit"),
        2
    );
}

#[test]
fn modules_that_import_anything_are_refused() {
    let engine = engine();
    let wasi = r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 0))
      (func (export "decode_uplink") (param i32 i32) (result i64) (i64.const 0)))"#;
    match engine.validate(&wasm(wasi)) {
        Err(FormatterError::InvalidModule { reason }) => {
            assert!(
                reason.contains("`wasi_snapshot_preview1.fd_write`"),
                "{reason}"
            )
        }
        other => panic!("expected an invalid module, got {other:?}"),
    }
    let no_alloc = r#"(module (memory (export "memory") 1)
      (func (export "decode_uplink") (param i32 i32) (result i64) (i64.const 0)))"#;
    assert!(matches!(
        engine.validate(&wasm(no_alloc)),
        Err(FormatterError::InvalidModule { reason }) if reason.contains("alloc")
    ));
    let wrong_signature = r#"(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 0))
      (func (export "decode_uplink") (param i32) (result i32) (i32.const 0)))"#;
    assert!(matches!(
        engine.validate(&wasm(wrong_signature)),
        Err(FormatterError::InvalidModule { reason }) if reason.contains("decode_uplink")
    ));
    assert!(matches!(
        engine.validate(&wasm("not a module")),
        Err(FormatterError::InvalidModule { .. })
    ));
    assert_eq!(engine.validate(&wasm(&wat::codec_wat())), Ok(()));
}

#[test]
fn traps_and_bad_pointers() {
    let engine = engine();
    let traps = r#"(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 0))
      (func (export "decode_uplink") (param i32 i32) (result i64) unreachable))"#;
    match engine.decode_uplink(&wasm(traps), &uplink(&[1], 1)) {
        Err(FormatterError::Exception { message }) => {
            assert!(message.contains("unreachable"), "{message}")
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    let out_of_bounds = r#"(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 0))
      (func (export "decode_uplink") (param i32 i32) (result i64)
        (i64.const 0x00100000_00000010)))"#;
    assert!(matches!(
        engine.decode_uplink(&wasm(out_of_bounds), &uplink(&[1], 1)),
        Err(FormatterError::BadOutput { reason }) if reason.contains("outside linear memory")
    ));
    assert_eq!(
        engine.encode_downlink(&wasm(out_of_bounds), &DownlinkInput::default()),
        Err(FormatterError::MissingFunction {
            function: "encode_downlink"
        })
    );
}

#[test]
fn concurrent_calls_share_the_compiled_module() {
    let engine = Arc::new(engine());
    let codec = wasm(&wat::codec_wat());
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let engine = engine.clone();
            let codec = codec.clone();
            std::thread::spawn(move || {
                for i in 0..10u8 {
                    let decoded = engine.decode_uplink(&codec, &uplink(&[t, i], 2)).unwrap();
                    assert_eq!(decoded.data["sum"], u32::from(t) + u32::from(i));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(engine.metrics().runs("wasm", "decode_uplink", "ok"), 40);
}
