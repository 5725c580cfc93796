//! JavaScript formatters: codecs in the styles found in the wild, limits and error kinds.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;
use tern_formatters::{
    DownlinkBytes, DownlinkInput, FormatterError, FormatterKind, Formatters, Limits, UplinkInput,
};

fn js(src: &str) -> FormatterKind {
    FormatterKind::JavaScript(Arc::from(src))
}

fn uplink(bytes: &[u8], f_port: u32) -> UplinkInput {
    UplinkInput {
        bytes: bytes.to_vec(),
        f_port,
        recv_time: Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
        variables: None,
    }
}

/// Generous limits for functional tests on a busy machine; the limit tests use the defaults.
fn engine() -> Formatters {
    Formatters::new(Limits {
        timeout: Duration::from_secs(2),
        ..Limits::default()
    })
}

/// A codec written the way The Things Stack device repository codecs are: `var`, helper
/// functions, a switch on fPort, `String.fromCharCode`, typed arrays, `warnings`.
const TTS_REPOSITORY_STYLE: &str = r#"
// Example sensor: port 1 = measurements, port 2 = firmware version string.
function readInt16BE(bytes, i) {
  var v = (bytes[i] << 8) | bytes[i + 1];
  return v > 0x7fff ? v - 0x10000 : v;
}

function readUInt16BE(bytes, i) {
  return ((bytes[i] << 8) | bytes[i + 1]) >>> 0;
}

function toAscii(bytes) {
  var s = "";
  for (var i = 0; i < bytes.length; i++) {
    s += String.fromCharCode(bytes[i]);
  }
  return s;
}

function decodeUplink(input) {
  var data = {};
  var warnings = [];
  switch (input.fPort) {
    case 1:
      if (input.bytes.length < 5) {
        return { errors: ["payload too short: " + input.bytes.length + " bytes"] };
      }
      data.temperature = readInt16BE(input.bytes, 0) / 100;
      data.humidity = input.bytes[2] / 2;
      data.battery_mv = readUInt16BE(input.bytes, 3);
      var view = new DataView(new Uint8Array(input.bytes).buffer);
      data.raw_check = view.getInt16(0, false);
      if (data.battery_mv < 3000) {
        warnings.push("low battery");
      }
      data.received_year = input.recvTime.getUTCFullYear();
      data.summary = JSON.parse(JSON.stringify({ ok: true }));
      return { data: data, warnings: warnings };
    case 2:
      return { data: { firmware: toAscii(input.bytes) } };
    default:
      return { errors: ["unknown FPort " + input.fPort] };
  }
}

function encodeDownlink(input) {
  if (typeof input.data.interval !== "number") {
    return { errors: ["interval is required"] };
  }
  var minutes = input.data.interval;
  return { bytes: [0x01, (minutes >> 8) & 0xff, minutes & 0xff], fPort: 10, warnings: [] };
}

function decodeDownlink(input) {
  if (input.bytes[0] !== 0x01) {
    return { errors: ["unknown command"] };
  }
  return { data: { interval: (input.bytes[1] << 8) | input.bytes[2] }, warnings: [] };
}
"#;

#[test]
fn tts_repository_style_codec() {
    let engine = engine();
    let codec = js(TTS_REPOSITORY_STYLE);
    // 0x0A28 = 2600 -> 26.00 °C, 0x6B = 107 -> 53.5 %, 0x0B54 = 2900 mV.
    let decoded = engine
        .decode_uplink(&codec, &uplink(&[0x0a, 0x28, 0x6b, 0x0b, 0x54], 1))
        .unwrap();
    assert_eq!(
        decoded.data,
        json!({
            "temperature": 26, "humidity": 53.5, "battery_mv": 2900, "raw_check": 2600,
            "received_year": 2023, "summary": {"ok": true}
        })
    );
    assert_eq!(decoded.warnings, vec!["low battery".to_string()]);

    let decoded = engine.decode_uplink(&codec, &uplink(b"v1.2.3", 2)).unwrap();
    assert_eq!(decoded.data, json!({"firmware": "v1.2.3"}));

    let encoded = engine
        .encode_downlink(
            &codec,
            &DownlinkInput {
                data: json!({"interval": 300}),
                f_port: None,
                variables: None,
            },
        )
        .unwrap();
    assert_eq!(encoded.bytes, vec![0x01, 0x01, 0x2c]);
    assert_eq!(encoded.f_port, Some(10));

    let decoded = engine
        .decode_downlink(
            &codec,
            &DownlinkBytes {
                bytes: encoded.bytes,
                f_port: 10,
                variables: None,
            },
        )
        .unwrap();
    assert_eq!(decoded.data, json!({"interval": 300}));

    // The script was evaluated once; the later calls reused the cached instance.
    let (hits, misses) = engine.metrics().cache_counts("javascript");
    assert_eq!((hits, misses), (3, 1));
}

#[test]
fn script_errors_are_their_own_kind() {
    let engine = engine();
    let codec = js(TTS_REPOSITORY_STYLE);
    assert_eq!(
        engine.decode_uplink(&codec, &uplink(&[1, 2], 1)),
        Err(FormatterError::Script {
            errors: vec!["payload too short: 2 bytes".into()]
        })
    );
    assert_eq!(
        engine.encode_downlink(
            &codec,
            &DownlinkInput {
                data: json!({}),
                ..Default::default()
            }
        ),
        Err(FormatterError::Script {
            errors: vec!["interval is required".into()]
        })
    );
    assert_eq!(
        engine
            .metrics()
            .runs("javascript", "decode_uplink", "script_error"),
        1
    );
}

/// A ChirpStack v4 codec: modern syntax, `variables`, `recvTime` as a Date, Uint8Array output.
const CHIRPSTACK_V4_STYLE: &str = r#"
const SCALE = { temp: 0.1 };

function decodeUplink(input) {
  const [hi, lo, ...rest] = input.bytes;
  const raw = (hi << 8) | lo;
  const offset = Number(input.variables?.offset ?? 0);
  return {
    data: {
      temp: Math.round((raw * SCALE.temp + offset) * 10) / 10,
      extra: rest.length,
      at: input.recvTime.toISOString(),
      port: input.fPort,
      tags: Object.entries({ a: 1 }).map(([k, v]) => `${k}=${v}`),
    },
  };
}

function encodeDownlink(input) {
  const out = new Uint8Array(2);
  out[0] = input.data.led ? 1 : 0;
  out[1] = input.data.level ?? 0;
  return { bytes: out };
}
"#;

#[test]
fn chirpstack_v4_style_codec() {
    let engine = engine();
    let codec = js(CHIRPSTACK_V4_STYLE);
    let mut input = uplink(&[0x00, 0xfa, 9, 9], 3);
    input.variables = Some(
        json!({"offset": "1.5"})
            .as_object()
            .cloned()
            .expect("object"),
    );
    let decoded = engine.decode_uplink(&codec, &input).unwrap();
    assert_eq!(
        decoded.data,
        json!({"temp": 26.5, "extra": 2, "at": "2023-11-14T22:13:20.123Z", "port": 3, "tags": ["a=1"]})
    );
    let encoded = engine
        .encode_downlink(
            &codec,
            &DownlinkInput {
                data: json!({"led": true, "level": 7}),
                f_port: Some(4),
                variables: None,
            },
        )
        .unwrap();
    assert_eq!(encoded.bytes, vec![1, 7]);
    assert_eq!(encoded.f_port, Some(4), "the requested port is kept");
    assert_eq!(
        engine.decode_downlink(&codec, &DownlinkBytes::default()),
        Err(FormatterError::MissingFunction {
            function: "decodeDownlink"
        })
    );
}

#[test]
fn legacy_signatures() {
    let engine = engine();
    // The Things Network v2 console codecs.
    let v2 = js(r#"
        function Decoder(bytes, port) {
          var decoded = {};
          if (port === 1) decoded.led = bytes[0];
          decoded.port = port;
          return decoded;
        }
        function Encoder(object, port) {
          var bytes = [];
          if (port === 1) bytes[0] = object.led ? 1 : 0;
          return bytes;
        }
    "#);
    let decoded = engine.decode_uplink(&v2, &uplink(&[1], 1)).unwrap();
    assert_eq!(decoded.data, json!({"led": 1, "port": 1}));
    let encoded = engine
        .encode_downlink(
            &v2,
            &DownlinkInput {
                data: json!({"led": true}),
                f_port: Some(1),
                variables: None,
            },
        )
        .unwrap();
    assert_eq!((encoded.bytes, encoded.f_port), (vec![1], Some(1)));

    // ChirpStack v3 codecs: Decode(fPort, bytes, variables).
    let v3 = js(r#"
        function Decode(fPort, bytes, variables) {
          return { count: bytes.length, port: fPort, unit: variables.unit };
        }
    "#);
    let mut input = uplink(&[1, 2, 3], 9);
    input.variables = json!({"unit": "C"}).as_object().cloned();
    let decoded = engine.decode_uplink(&v3, &input).unwrap();
    assert_eq!(decoded.data, json!({"count": 3, "port": 9, "unit": "C"}));
}

#[test]
fn endless_loop_times_out_and_the_cached_script_still_works() {
    // Default limits: 100 ms.
    let engine = Formatters::new(Limits::default());
    let codec = js(r#"
        function decodeUplink(input) {
          if (input.bytes[0] === 0xff) {
            try { while (true) {} } catch (e) { /* the interrupt is not catchable */ }
          }
          return { data: { first: input.bytes[0] } };
        }
    "#);
    assert_eq!(
        engine.decode_uplink(&codec, &uplink(&[1], 1)).unwrap().data,
        json!({"first": 1})
    );
    assert_eq!(
        engine.decode_uplink(&codec, &uplink(&[0xff], 1)),
        Err(FormatterError::Timeout {
            limit: Duration::from_millis(100)
        })
    );
    assert_eq!(
        engine.decode_uplink(&codec, &uplink(&[2], 1)).unwrap().data,
        json!({"first": 2})
    );
    assert_eq!(
        engine
            .metrics()
            .runs("javascript", "decode_uplink", "timeout"),
        1
    );

    // A loop at the top level of the script is stopped while the script is evaluated.
    let top_level = js("while (true) {}\nfunction decodeUplink(i) { return { data: {} }; }");
    assert!(matches!(
        engine.decode_uplink(&top_level, &uplink(&[1], 1)),
        Err(FormatterError::Timeout { .. })
    ));
}

#[test]
fn unbounded_allocation_hits_the_memory_limit() {
    let engine = Formatters::new(Limits {
        timeout: Duration::from_secs(5),
        ..Limits::default()
    });
    let codec = js(r#"
        var keep = [];
        function decodeUplink(input) {
          if (input.bytes[0] === 0xff) {
            while (true) { keep.push(new Array(65536).fill(input.bytes[0])); }
          }
          return { data: { held: keep.length } };
        }
    "#);
    assert_eq!(
        engine.decode_uplink(&codec, &uplink(&[0xff], 1)),
        Err(FormatterError::MemoryLimit {
            limit_bytes: 16 << 20
        })
    );
    // The instance that ran out of memory was dropped: the next call starts from a fresh heap.
    assert_eq!(
        engine.decode_uplink(&codec, &uplink(&[1], 1)).unwrap().data,
        json!({"held": 0})
    );
    // Buffers local to the call: freed when the exception unwinds, still reported as OOM.
    let strings = js(
        "function decodeUplink(i) { var a = []; while (true) { a.push(new Uint8Array(1 << 20)); } }",
    );
    assert!(matches!(
        engine.decode_uplink(&strings, &uplink(&[1], 1)),
        Err(FormatterError::MemoryLimit { .. })
    ));
}

#[test]
fn exceptions_syntax_errors_and_bad_output() {
    let engine = engine();
    let throws = js("function decodeUplink(input) { return { data: input.nope.deeper } }");
    match engine.decode_uplink(&throws, &uplink(&[1], 1)) {
        Err(FormatterError::Exception { message }) => {
            assert!(message.starts_with("TypeError"), "{message}");
            assert!(
                message.contains("decodeUplink"),
                "stack names the function: {message}"
            );
        }
        other => panic!("expected an exception, got {other:?}"),
    }
    let throws_string = js("function decodeUplink(input) { throw 'boom'; }");
    assert_eq!(
        engine.decode_uplink(&throws_string, &uplink(&[1], 1)),
        Err(FormatterError::Exception {
            message: "uncaught boom".into()
        })
    );
    let syntax = js("function decodeUplink(input) { return { data: }");
    assert!(matches!(
        engine.decode_uplink(&syntax, &uplink(&[1], 1)),
        Err(FormatterError::Compile { .. })
    ));
    assert!(matches!(
        engine.validate(&syntax),
        Err(FormatterError::Compile { .. })
    ));
    assert_eq!(engine.validate(&js(TTS_REPOSITORY_STYLE)), Ok(()));

    let not_object = js("function decodeUplink(input) { return 42; }");
    assert!(matches!(
        engine.decode_uplink(&not_object, &uplink(&[1], 1)),
        Err(FormatterError::BadOutput { reason }) if reason.contains("got a number")
    ));
    let bad_bytes = js("function encodeDownlink(input) { return { bytes: [1, 'x'] }; }");
    assert!(matches!(
        engine.encode_downlink(&bad_bytes, &DownlinkInput::default()),
        Err(FormatterError::BadOutput { reason }) if reason.contains("bytes[1]")
    ));
    let none = js("var x = 1;");
    assert_eq!(
        engine.validate(&none),
        Err(FormatterError::MissingFunction {
            function: "decodeUplink"
        })
    );
    assert_eq!(
        engine.decode_uplink(&none, &uplink(&[1], 1)),
        Err(FormatterError::MissingFunction {
            function: "decodeUplink"
        })
    );
    let recursion = js(
        "function f(n) { return f(n + 1) + 1; } function decodeUplink(i) { return { data: f(0) }; }",
    );
    match engine.decode_uplink(&recursion, &uplink(&[1], 1)) {
        Err(FormatterError::Exception { message }) => {
            assert!(message.contains("stack"), "{message}")
        }
        other => panic!("expected a stack overflow exception, got {other:?}"),
    }
}

#[test]
fn no_io_is_reachable() {
    let engine = engine();
    let probe = js(r#"
        function decodeUplink(input) {
          var names = ["require", "std", "os", "fetch", "XMLHttpRequest", "process"];
          var found = {};
          for (var i = 0; i < names.length; i++) {
            found[names[i]] = typeof globalThis[names[i]];
          }
          return { data: { found: found, console: typeof console.log } };
        }
    "#);
    let data = engine.decode_uplink(&probe, &uplink(&[], 1)).unwrap().data;
    for name in ["require", "std", "os", "fetch", "XMLHttpRequest", "process"] {
        assert_eq!(data["found"][name], "undefined", "{name} must not exist");
    }
    assert_eq!(data["console"], "function");
}

#[test]
fn shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Formatters>();
    let engine = Arc::new(engine());
    let codec = js(TTS_REPOSITORY_STYLE);
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let engine = engine.clone();
            let codec = codec.clone();
            std::thread::spawn(move || {
                for i in 0..25u8 {
                    let bytes = [0, t, 2 * i, 0x0b, 0xb8];
                    let decoded = engine.decode_uplink(&codec, &uplink(&bytes, 1)).unwrap();
                    assert_eq!(decoded.data["humidity"].as_f64(), Some(f64::from(i)));
                    assert_eq!(
                        decoded.data["temperature"].as_f64(),
                        Some(f64::from(t) / 100.0)
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(
        engine.metrics().runs("javascript", "decode_uplink", "ok"),
        100
    );
}
