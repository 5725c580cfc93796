//! Payload formatters for the Application Server: CayenneLPP, JavaScript (QuickJS through
//! rquickjs) and WebAssembly (wasmtime, no WASI).
//!
//! The API is blocking and does no I/O: the AS calls [`Formatters`] from `spawn_blocking` or a
//! small worker pool. Every script or module runs under a time limit, a memory cap and a stack
//! limit ([`Limits`]); compiled scripts and modules are cached by a SHA-256 of their source.
//! See `README.md` for the JavaScript signatures and the WebAssembly ABI.
#![warn(missing_docs)]

mod cache;
pub mod cayenne;
mod js;
mod metrics;
mod wasm;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use cayenne::CayenneError;
pub use metrics::FormatterMetrics;

/// Which formatter an application or device uses, in one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FormatterKind {
    /// No formatter: the payload is passed on as bytes only.
    #[default]
    None,
    /// Cayenne Low Power Payload.
    CayenneLpp,
    /// A JavaScript codec (TTS v3 / ChirpStack v4 / legacy TTS v2 / ChirpStack v3 signatures).
    JavaScript(Arc<str>),
    /// A WebAssembly module (binary or WAT text) implementing the ABI in `README.md`.
    Wasm(Arc<[u8]>),
}

impl FormatterKind {
    /// The label used in metrics and logs: `none`, `cayennelpp`, `javascript`, `wasm`.
    pub fn label(&self) -> &'static str {
        match self {
            FormatterKind::None => "none",
            FormatterKind::CayenneLpp => "cayennelpp",
            FormatterKind::JavaScript(_) => "javascript",
            FormatterKind::Wasm(_) => "wasm",
        }
    }
}

/// Resource limits for one script or module run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock limit of one call, including the first evaluation of a script.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Heap cap of one JavaScript runtime, and linear-memory cap of one WebAssembly instance.
    pub memory_bytes: usize,
    /// Native stack a script or module may use.
    pub stack_bytes: usize,
    /// How many compiled scripts and how many compiled modules are kept (each, LRU).
    pub cache_entries: usize,
    /// Largest script or module accepted, in bytes.
    pub max_source_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(100),
            memory_bytes: 16 << 20,
            stack_bytes: 256 << 10,
            cache_entries: 128,
            max_source_bytes: 4 << 20,
        }
    }
}

/// The input of an uplink decoder.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UplinkInput {
    /// The decrypted FRMPayload.
    pub bytes: Vec<u8>,
    /// The FPort (1..=223 for application payloads).
    pub f_port: u32,
    /// When the uplink was received; passed to scripts as `recvTime`.
    pub recv_time: Option<SystemTime>,
    /// Device or application variables (ChirpStack `variables`), passed as-is.
    pub variables: Option<Map<String, Value>>,
}

/// The input of a downlink encoder.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DownlinkInput {
    /// The object to encode (`decoded_payload` of a downlink push).
    pub data: Value,
    /// The FPort requested by the caller, if any.
    pub f_port: Option<u32>,
    /// Device or application variables, passed as-is.
    pub variables: Option<Map<String, Value>>,
}

/// The input of a downlink decoder.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DownlinkBytes {
    /// The FRMPayload of the downlink, in clear.
    pub bytes: Vec<u8>,
    /// The FPort of the downlink.
    pub f_port: u32,
    /// Device or application variables, passed as-is.
    pub variables: Option<Map<String, Value>>,
}

/// A decoded payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// The decoded object (`decoded_payload`).
    pub data: Value,
    /// Warnings reported by the formatter (`decoded_payload_warnings`).
    pub warnings: Vec<String>,
}

/// An encoded downlink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// The FRMPayload to encrypt and queue.
    pub bytes: Vec<u8>,
    /// The FPort chosen by the formatter, or the one requested by the caller.
    pub f_port: Option<u32>,
    /// Warnings reported by the formatter.
    pub warnings: Vec<String>,
}

/// Why a formatter did not produce a result.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FormatterError {
    /// `FormatterKind::None`: there is nothing to run.
    #[error("no payload formatter configured")]
    NoFormatter,
    /// The CayenneLPP codec refused the input.
    #[error("cayennelpp: {0}")]
    Cayenne(#[from] CayenneError),
    /// The script or module ran and returned a non-empty `errors` list.
    #[error("formatter reported errors: {}", errors.join("; "))]
    Script {
        /// The errors, as returned by the script.
        errors: Vec<String>,
    },
    /// The script threw (JavaScript) or the module trapped (WebAssembly).
    #[error("formatter raised an exception: {message}")]
    Exception {
        /// The exception message (with its name and, for scripts, the stack when known).
        message: String,
    },
    /// The script does not compile.
    #[error("script does not compile: {message}")]
    Compile {
        /// The syntax error.
        message: String,
    },
    /// The module is not a valid formatter module.
    #[error("invalid WebAssembly formatter module: {reason}")]
    InvalidModule {
        /// What is wrong with it.
        reason: String,
    },
    /// The script or module defines none of the functions this operation needs.
    #[error("formatter defines no {function} function")]
    MissingFunction {
        /// The function looked for (e.g. `decodeUplink`, `decode_uplink`).
        function: &'static str,
    },
    /// The run was stopped at the time limit.
    #[error("formatter stopped after the {limit:?} time limit")]
    Timeout {
        /// The limit in force.
        limit: Duration,
    },
    /// The run was stopped at the memory cap.
    #[error("formatter stopped at the {limit_bytes} byte memory limit")]
    MemoryLimit {
        /// The cap in force.
        limit_bytes: usize,
    },
    /// The formatter returned something that is not of the expected shape.
    #[error("formatter output is invalid: {reason}")]
    BadOutput {
        /// Which field and why.
        reason: String,
    },
    /// The source is larger than [`Limits::max_source_bytes`].
    #[error("formatter source is {size} bytes, above the {limit} byte limit")]
    SourceTooLarge {
        /// The size of the source.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// An internal failure of the engine (not caused by the script).
    #[error("formatter engine failure: {0}")]
    Engine(String),
}

impl FormatterError {
    /// A short, stable label for metrics (`reason` label).
    pub fn reason(&self) -> &'static str {
        match self {
            FormatterError::NoFormatter => "none",
            FormatterError::Cayenne(_) => "invalid_payload",
            FormatterError::Script { .. } => "script_error",
            FormatterError::Exception { .. } => "exception",
            FormatterError::Compile { .. } => "compile",
            FormatterError::InvalidModule { .. } => "invalid_module",
            FormatterError::MissingFunction { .. } => "missing_function",
            FormatterError::Timeout { .. } => "timeout",
            FormatterError::MemoryLimit { .. } => "memory_limit",
            FormatterError::BadOutput { .. } => "bad_output",
            FormatterError::SourceTooLarge { .. } => "source_too_large",
            FormatterError::Engine(_) => "engine",
        }
    }
}

/// The operation being run, which selects the entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    DecodeUplink,
    EncodeDownlink,
    DecodeDownlink,
}

impl Op {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Op::DecodeUplink => "decode_uplink",
            Op::EncodeDownlink => "encode_downlink",
            Op::DecodeDownlink => "decode_downlink",
        }
    }
}

/// The formatter engine: runs any [`FormatterKind`] and keeps the compiled-script and
/// compiled-module caches. `Send + Sync`; share it in an `Arc`.
pub struct Formatters {
    limits: Limits,
    js: js::JsEngine,
    // Created on first WebAssembly use, so that deployments without WASM formatters never
    // start the epoch ticker.
    wasm: OnceLock<Result<wasm::WasmEngine, String>>,
    metrics: FormatterMetrics,
}

impl std::fmt::Debug for Formatters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Formatters")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for Formatters {
    fn default() -> Self {
        Formatters::new(Limits::default())
    }
}

impl Formatters {
    /// Creates an engine with these limits and empty caches.
    pub fn new(limits: Limits) -> Self {
        Formatters {
            js: js::JsEngine::new(limits.clone()),
            wasm: OnceLock::new(),
            metrics: FormatterMetrics::default(),
            limits,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The metrics of this engine (runs by formatter, operation and result; cache hits).
    pub fn metrics(&self) -> &FormatterMetrics {
        &self.metrics
    }

    /// Registers the metrics in `registry` (call from `RoleService::start` through
    /// `ctx.metrics.register_role`).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
    }

    /// Decodes an uplink FRMPayload.
    pub fn decode_uplink(
        &self,
        kind: &FormatterKind,
        input: &UplinkInput,
    ) -> Result<Decoded, FormatterError> {
        let result = match kind {
            FormatterKind::None => return Err(FormatterError::NoFormatter),
            FormatterKind::CayenneLpp => cayenne::decode(&input.bytes)
                .map(|data| Decoded {
                    data,
                    warnings: Vec::new(),
                })
                .map_err(FormatterError::from),
            FormatterKind::JavaScript(src) => self
                .js
                .run(src, Op::DecodeUplink, &uplink_json(input), &self.metrics)
                .and_then(|out| parse_decoded(out, Op::DecodeUplink)),
            FormatterKind::Wasm(module) => self.wasm_engine().and_then(|engine| {
                engine
                    .run(module, Op::DecodeUplink, &uplink_json(input), &self.metrics)
                    .and_then(|out| parse_decoded(out, Op::DecodeUplink))
            }),
        };
        self.metrics.observe(kind, Op::DecodeUplink, &result);
        result
    }

    /// Encodes a downlink object into an FRMPayload.
    pub fn encode_downlink(
        &self,
        kind: &FormatterKind,
        input: &DownlinkInput,
    ) -> Result<Encoded, FormatterError> {
        let result = match kind {
            FormatterKind::None => return Err(FormatterError::NoFormatter),
            FormatterKind::CayenneLpp => cayenne::encode(&input.data)
                .map(|bytes| Encoded {
                    bytes,
                    f_port: input.f_port,
                    warnings: Vec::new(),
                })
                .map_err(FormatterError::from),
            FormatterKind::JavaScript(src) => self
                .js
                .run(
                    src,
                    Op::EncodeDownlink,
                    &downlink_json(input),
                    &self.metrics,
                )
                .and_then(|out| parse_encoded(out, input.f_port)),
            FormatterKind::Wasm(module) => self.wasm_engine().and_then(|engine| {
                engine
                    .run(
                        module,
                        Op::EncodeDownlink,
                        &downlink_json(input),
                        &self.metrics,
                    )
                    .and_then(|out| parse_encoded(out, input.f_port))
            }),
        };
        self.metrics.observe(kind, Op::EncodeDownlink, &result);
        result
    }

    /// Decodes a downlink FRMPayload (to show what a queued downlink means).
    pub fn decode_downlink(
        &self,
        kind: &FormatterKind,
        input: &DownlinkBytes,
    ) -> Result<Decoded, FormatterError> {
        let result = match kind {
            FormatterKind::None => return Err(FormatterError::NoFormatter),
            FormatterKind::CayenneLpp => cayenne::decode(&input.bytes)
                .map(|data| Decoded {
                    data,
                    warnings: Vec::new(),
                })
                .map_err(FormatterError::from),
            FormatterKind::JavaScript(src) => self
                .js
                .run(
                    src,
                    Op::DecodeDownlink,
                    &downlink_bytes_json(input),
                    &self.metrics,
                )
                .and_then(|out| parse_decoded(out, Op::DecodeDownlink)),
            FormatterKind::Wasm(module) => self.wasm_engine().and_then(|engine| {
                engine
                    .run(
                        module,
                        Op::DecodeDownlink,
                        &downlink_bytes_json(input),
                        &self.metrics,
                    )
                    .and_then(|out| parse_decoded(out, Op::DecodeDownlink))
            }),
        };
        self.metrics.observe(kind, Op::DecodeDownlink, &result);
        result
    }

    /// Compiles (and caches) a formatter without running it, to validate it when it is set.
    pub fn validate(&self, kind: &FormatterKind) -> Result<(), FormatterError> {
        match kind {
            FormatterKind::None | FormatterKind::CayenneLpp => Ok(()),
            FormatterKind::JavaScript(src) => self.js.prepare(src, &self.metrics),
            FormatterKind::Wasm(module) => self
                .wasm_engine()
                .and_then(|engine| engine.module(module, &self.metrics).map(|_| ())),
        }
    }

    fn wasm_engine(&self) -> Result<&wasm::WasmEngine, FormatterError> {
        self.wasm
            .get_or_init(|| wasm::WasmEngine::new(self.limits.clone()))
            .as_ref()
            .map_err(|e| FormatterError::Engine(e.clone()))
    }
}

fn variables_json(variables: &Option<Map<String, Value>>) -> Value {
    variables
        .as_ref()
        .map(|v| Value::Object(v.clone()))
        .unwrap_or_else(|| Value::Object(Map::new()))
}

/// The JSON input of `decodeUplink`: `{bytes, fPort, recvTime, variables}`.
pub(crate) fn uplink_json(input: &UplinkInput) -> Value {
    let mut obj = Map::new();
    obj.insert("bytes".into(), Value::from(input.bytes.clone()));
    obj.insert("fPort".into(), Value::from(input.f_port));
    if let Some(t) = input.recv_time {
        let t: chrono::DateTime<chrono::Utc> = t.into();
        obj.insert(
            "recvTime".into(),
            Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
    }
    obj.insert("variables".into(), variables_json(&input.variables));
    Value::Object(obj)
}

/// The JSON input of `encodeDownlink`: `{data, fPort?, variables}`.
pub(crate) fn downlink_json(input: &DownlinkInput) -> Value {
    let mut obj = Map::new();
    obj.insert("data".into(), input.data.clone());
    if let Some(port) = input.f_port {
        obj.insert("fPort".into(), Value::from(port));
    }
    obj.insert("variables".into(), variables_json(&input.variables));
    Value::Object(obj)
}

/// The JSON input of `decodeDownlink`: `{bytes, fPort, variables}`.
pub(crate) fn downlink_bytes_json(input: &DownlinkBytes) -> Value {
    let mut obj = Map::new();
    obj.insert("bytes".into(), Value::from(input.bytes.clone()));
    obj.insert("fPort".into(), Value::from(input.f_port));
    obj.insert("variables".into(), variables_json(&input.variables));
    Value::Object(obj)
}

/// Reads an optional list of messages (`errors`, `warnings`); non-string entries are kept as
/// their JSON text so nothing the script said is lost.
fn string_list(obj: &Map<String, Value>, field: &str) -> Result<Vec<String>, FormatterError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(other) => Err(FormatterError::BadOutput {
            reason: format!(
                "`{field}` must be an array of strings, got {}",
                kind_of(other)
            ),
        }),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Validates `{data, warnings, errors}`.
pub(crate) fn parse_decoded(out: Value, op: Op) -> Result<Decoded, FormatterError> {
    let Value::Object(obj) = out else {
        return Err(FormatterError::BadOutput {
            reason: format!(
                "{} must return an object, got {}",
                op.label(),
                kind_of(&out)
            ),
        });
    };
    let errors = string_list(&obj, "errors")?;
    if !errors.is_empty() {
        return Err(FormatterError::Script { errors });
    }
    let warnings = string_list(&obj, "warnings")?;
    match obj.get("data") {
        Some(data) if !data.is_null() => Ok(Decoded {
            data: data.clone(),
            warnings,
        }),
        _ => Err(FormatterError::BadOutput {
            reason: format!("{} returned no `data` and no `errors`", op.label()),
        }),
    }
}

/// Validates `{bytes, fPort, warnings, errors}`.
pub(crate) fn parse_encoded(
    out: Value,
    requested_port: Option<u32>,
) -> Result<Encoded, FormatterError> {
    let Value::Object(obj) = out else {
        return Err(FormatterError::BadOutput {
            reason: format!(
                "encode_downlink must return an object, got {}",
                kind_of(&out)
            ),
        });
    };
    let errors = string_list(&obj, "errors")?;
    if !errors.is_empty() {
        return Err(FormatterError::Script { errors });
    }
    let warnings = string_list(&obj, "warnings")?;
    let bytes = match obj.get("bytes") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_u64()
                    .filter(|b| *b <= 255)
                    .map(|b| b as u8)
                    .ok_or_else(|| FormatterError::BadOutput {
                        reason: format!("`bytes[{i}]` is {item}, not an integer in 0..=255"),
                    })
            })
            .collect::<Result<Vec<u8>, _>>()?,
        Some(other) => {
            return Err(FormatterError::BadOutput {
                reason: format!("`bytes` must be an array of bytes, got {}", kind_of(other)),
            });
        }
        None => {
            return Err(FormatterError::BadOutput {
                reason: "encode_downlink returned no `bytes` and no `errors`".into(),
            });
        }
    };
    let f_port = match obj.get("fPort") {
        None | Some(Value::Null) => requested_port,
        Some(v) => match v.as_u64() {
            Some(p) if (1..=223).contains(&p) => Some(p as u32),
            _ => {
                return Err(FormatterError::BadOutput {
                    reason: format!("`fPort` is {v}, not an integer in 1..=223"),
                });
            }
        },
    };
    Ok(Encoded {
        bytes,
        f_port,
        warnings,
    })
}

/// The SHA-256 of a script or module, the cache key.
pub(crate) fn source_hash(src: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(src).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_toml_kebab_case_with_defaults() {
        let limits: Limits =
            toml::from_str("timeout = \"250ms\"\nmemory-bytes = 1048576\n").expect("limits parse");
        assert_eq!(limits.timeout, Duration::from_millis(250));
        assert_eq!(limits.memory_bytes, 1 << 20);
        assert_eq!(limits.cache_entries, Limits::default().cache_entries);
        assert!(toml::from_str::<Limits>("timeoutt = \"1s\"").is_err());
    }

    #[test]
    fn encoded_output_validation_names_the_field() {
        let err = parse_encoded(serde_json::json!({"bytes": [1, 256]}), None).unwrap_err();
        assert_eq!(
            err,
            FormatterError::BadOutput {
                reason: "`bytes[1]` is 256, not an integer in 0..=255".into()
            }
        );
        let err = parse_encoded(serde_json::json!({"bytes": [1], "fPort": 0}), None).unwrap_err();
        assert!(matches!(err, FormatterError::BadOutput { reason } if reason.contains("fPort")));
        let ok = parse_encoded(serde_json::json!({"bytes": [1, 2]}), Some(5)).unwrap();
        assert_eq!(ok.f_port, Some(5));
    }
}
