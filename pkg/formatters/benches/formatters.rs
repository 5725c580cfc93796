//! Per-call cost of each formatter on a warm cache (the steady state of the AS).

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tern_formatters::{FormatterKind, Formatters, UplinkInput};

#[path = "../tests/support/wat.rs"]
mod wat;

/// A device-repository style decoder: helpers, a switch on FPort, warnings.
const JS_CODEC: &str = r#"
function int16(b, i) { var v = (b[i] << 8) | b[i + 1]; return v > 0x7fff ? v - 0x10000 : v; }
function decodeUplink(input) {
  switch (input.fPort) {
    case 1:
      var w = [];
      var battery = (input.bytes[3] << 8) | input.bytes[4];
      if (battery < 3000) w.push("low battery");
      return { data: { temperature: int16(input.bytes, 0) / 100, humidity: input.bytes[2] / 2,
                       battery_mv: battery }, warnings: w };
    default:
      return { errors: ["unknown FPort " + input.fPort] };
  }
}
"#;

fn bench(c: &mut Criterion) {
    let engine = Formatters::default();
    let input = UplinkInput {
        bytes: vec![0x0a, 0x28, 0x6b, 0x0b, 0x54],
        f_port: 1,
        recv_time: Some(std::time::SystemTime::now()),
        variables: None,
    };
    let lpp = UplinkInput {
        bytes: hex::decode("03670110056700FF").expect("hex"),
        ..input.clone()
    };
    let js = FormatterKind::JavaScript(Arc::from(JS_CODEC));
    let wasm = FormatterKind::Wasm(Arc::from(wat::codec_wat().into_bytes()));
    // Warm the caches: the benchmark measures calls, not compilation.
    engine.decode_uplink(&js, &input).expect("js warm-up");
    engine.decode_uplink(&wasm, &input).expect("wasm warm-up");

    c.bench_function("cayennelpp_decode_uplink", |b| {
        b.iter(|| {
            engine
                .decode_uplink(&FormatterKind::CayenneLpp, &lpp)
                .expect("lpp")
        })
    });
    c.bench_function("javascript_decode_uplink", |b| {
        b.iter(|| engine.decode_uplink(&js, &input).expect("js"))
    });
    c.bench_function("wasm_decode_uplink", |b| {
        b.iter(|| engine.decode_uplink(&wasm, &input).expect("wasm"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
