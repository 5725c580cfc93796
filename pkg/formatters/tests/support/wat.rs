//! A WAT formatter module implementing the ABI of README.md, shared by tests and benches.

/// A `(data (i32.const offset) "...")` segment for `text`, and its length in bytes.
fn segment(offset: u32, text: &str) -> (String, usize) {
    (
        format!(
            "(data (i32.const {offset}) \"{}\")",
            text.replace('"', "\\\"")
        ),
        text.len(),
    )
}

/// A decoder that parses `bytes` and `fPort` out of the JSON input and writes
/// `{"data":{"count":N,"sum":S,"port":P},"warnings":["decoded by wasm"]}`; an encoder that
/// turns `{"data":{"value":V}}` into two big-endian bytes on FPort 7; and a downlink decoder
/// that reports an error.
pub fn codec_wat() -> String {
    let (s_count, l_count) = segment(0, "{\"data\":{\"count\":");
    let (s_sum, l_sum) = segment(32, ",\"sum\":");
    let (s_port, l_port) = segment(48, ",\"port\":");
    let (s_tail, l_tail) = segment(64, "},\"warnings\":[\"decoded by wasm\"]}");
    let (s_bytes, l_bytes) = segment(128, "{\"bytes\":[");
    let (s_comma, l_comma) = segment(144, ",");
    let (s_eport, l_eport) = segment(160, "],\"fPort\":7}");
    let (s_err, l_err) = segment(192, "{\"errors\":[\"downlink decoding is not supported\"]}");
    format!(
        r#"(module
  (memory (export "memory") 1)
  {s_count} {s_sum} {s_port} {s_tail} {s_bytes} {s_comma} {s_eport} {s_err}
  (global $heap (mut i32) (i32.const 1024))
  (global $out (mut i32) (i32.const 0))

  ;; Bump allocator; grows memory when needed.
  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $p i32) (local $need i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $len)))
    (local.set $need (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then
        (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get $need) (i32.const 16)) (i32.const 1)))
                    (i32.const -1))
          (then unreachable))))
    (local.get $p))

  (func $put (param $b i32)
    (i32.store8 (global.get $out) (local.get $b))
    (global.set $out (i32.add (global.get $out) (i32.const 1))))

  (func $copy (param $src i32) (param $len i32)
    (memory.copy (global.get $out) (local.get $src) (local.get $len))
    (global.set $out (i32.add (global.get $out) (local.get $len))))

  ;; Writes an unsigned decimal, digits reversed into scratch space at 512 first.
  (func $put_u32 (param $v i32)
    (local $i i32)
    (if (i32.eqz (local.get $v)) (then (call $put (i32.const 48)) (return)))
    (block $done (loop $l
      (br_if $done (i32.eqz (local.get $v)))
      (i32.store8 (i32.add (i32.const 512) (local.get $i))
                  (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (block $d2 (loop $l2
      (br_if $d2 (i32.eqz (local.get $i)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (call $put (i32.load8_u (i32.add (i32.const 512) (local.get $i))))
      (br $l2))))

  ;; Parses the first unsigned integer at or after $i; returns it (position in global $out
  ;; is not touched).
  (func $first_number (param $i i32) (param $end i32) (result i32)
    (local $c i32) (local $acc i32) (local $seen i32)
    (block $stop (loop $l
      (br_if $stop (i32.ge_u (local.get $i) (local.get $end)))
      (local.set $c (i32.load8_u (local.get $i)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (if (i32.and (i32.ge_u (local.get $c) (i32.const 48)) (i32.le_u (local.get $c) (i32.const 57)))
        (then
          (local.set $acc (i32.add (i32.mul (local.get $acc) (i32.const 10))
                                   (i32.sub (local.get $c) (i32.const 48))))
          (local.set $seen (i32.const 1)))
        (else (br_if $stop (local.get $seen))))
      (br $l)))
    (local.get $acc))

  (func $packed (param $start i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $start)) (i64.const 32))
            (i64.extend_i32_u (i32.sub (global.get $out) (local.get $start)))))

  (func (export "decode_uplink") (param $ptr i32) (param $len i32) (result i64)
    (local $i i32) (local $end i32) (local $c i32) (local $acc i32) (local $have i32)
    (local $count i32) (local $sum i32) (local $start i32)
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (local.set $i (local.get $ptr))
    ;; "bytes" is the first key: skip to its '['.
    (block $found (loop $seek
      (br_if $found (i32.ge_u (local.get $i) (local.get $end)))
      (br_if $found (i32.eq (i32.load8_u (local.get $i)) (i32.const 91)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $seek)))
    (local.set $i (i32.add (local.get $i) (i32.const 1)))
    (block $closed (loop $scan
      (br_if $closed (i32.ge_u (local.get $i) (local.get $end)))
      (local.set $c (i32.load8_u (local.get $i)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (if (i32.and (i32.ge_u (local.get $c) (i32.const 48)) (i32.le_u (local.get $c) (i32.const 57)))
        (then
          (local.set $acc (i32.add (i32.mul (local.get $acc) (i32.const 10))
                                   (i32.sub (local.get $c) (i32.const 48))))
          (local.set $have (i32.const 1)))
        (else
          (if (local.get $have)
            (then
              (local.set $count (i32.add (local.get $count) (i32.const 1)))
              (local.set $sum (i32.add (local.get $sum) (local.get $acc)))
              (local.set $acc (i32.const 0))
              (local.set $have (i32.const 0))))
          (br_if $closed (i32.eq (local.get $c) (i32.const 93)))))
      (br $scan)))
    (local.set $start (call $alloc (i32.const 256)))
    (global.set $out (local.get $start))
    (call $copy (i32.const 0) (i32.const {l_count}))
    (call $put_u32 (local.get $count))
    (call $copy (i32.const 32) (i32.const {l_sum}))
    (call $put_u32 (local.get $sum))
    (call $copy (i32.const 48) (i32.const {l_port}))
    ;; "fPort" follows the array.
    (call $put_u32 (call $first_number (local.get $i) (local.get $end)))
    (call $copy (i32.const 64) (i32.const {l_tail}))
    (call $packed (local.get $start)))

  (func (export "encode_downlink") (param $ptr i32) (param $len i32) (result i64)
    (local $v i32) (local $start i32)
    (local.set $v (call $first_number (local.get $ptr) (i32.add (local.get $ptr) (local.get $len))))
    (local.set $start (call $alloc (i32.const 64)))
    (global.set $out (local.get $start))
    (call $copy (i32.const 128) (i32.const {l_bytes}))
    (call $put_u32 (i32.and (i32.shr_u (local.get $v) (i32.const 8)) (i32.const 255)))
    (call $copy (i32.const 144) (i32.const {l_comma}))
    (call $put_u32 (i32.and (local.get $v) (i32.const 255)))
    (call $copy (i32.const 160) (i32.const {l_eport}))
    (call $packed (local.get $start)))

  (func (export "decode_downlink") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.const 192) (i64.const 32)) (i64.const {l_err})))
)"#
    )
}
