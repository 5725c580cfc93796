//! JavaScript formatters on QuickJS (rquickjs).
//!
//! A script is evaluated once per (SHA-256 of its source) into its own runtime and context, and
//! the ready instance is kept for reuse. Each runtime has a heap cap, a stack cap and an
//! interrupt handler that enforces the deadline. No module loader, no `std`/`os` modules, no
//! `require`: the context only has the ECMAScript built-ins and a silent `console`.
//!
//! An instance that hit the time or memory limit may have left its heap mid-update, so it is
//! dropped, never returned to the cache; the next call rebuilds it from the source.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use rquickjs::function::This;
use rquickjs::{Context, Ctx, Error as JsError, Function, Object, Runtime, Value as JsValue};
use serde_json::Value;

use crate::cache::Lru;
use crate::metrics::FormatterMetrics;
use crate::{FormatterError, Limits, Op, source_hash};

/// Every function name a script may be called through.
const ENTRY_POINTS: &[&str] = &[
    "decodeUplink",
    "encodeDownlink",
    "decodeDownlink",
    "Decoder",
    "Encoder",
    "Decode",
    "Encode",
];

/// Idle instances kept per script, so that concurrent calls of one codec do not serialise.
const MAX_IDLE_PER_SCRIPT: usize = 2;

/// Deadline shared with the interrupt handler; 0 means disarmed.
struct Clock {
    base: Instant,
    deadline_us: AtomicU64,
    fired: AtomicBool,
}

impl Clock {
    fn new() -> Self {
        Clock {
            base: Instant::now(),
            deadline_us: AtomicU64::new(0),
            fired: AtomicBool::new(false),
        }
    }

    fn arm(&self, limits: &Limits) {
        let deadline = self.base.elapsed() + limits.timeout;
        self.deadline_us
            .store((deadline.as_micros() as u64).max(1), Ordering::Relaxed);
    }

    fn disarm(&self) {
        self.deadline_us.store(0, Ordering::Relaxed);
    }

    /// Called by QuickJS every few thousand instructions: `true` interrupts the script.
    fn expired(&self) -> bool {
        let deadline = self.deadline_us.load(Ordering::Relaxed);
        if deadline != 0 && self.base.elapsed().as_micros() as u64 >= deadline {
            self.fired.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

struct JsInstance {
    // Field order: the context is dropped before its runtime.
    context: Context,
    runtime: Runtime,
    clock: Arc<Clock>,
    /// Whether the script defines any of [`ENTRY_POINTS`] once evaluated.
    has_entry_point: bool,
}

pub(crate) struct JsEngine {
    limits: Limits,
    cache: Mutex<Lru<[u8; 32], Vec<JsInstance>>>,
}

impl JsEngine {
    pub(crate) fn new(limits: Limits) -> Self {
        JsEngine {
            cache: Mutex::new(Lru::new(limits.cache_entries)),
            limits,
        }
    }

    /// Evaluates the script (or finds it cached) and returns the instance to the cache.
    pub(crate) fn prepare(
        &self,
        src: &str,
        metrics: &FormatterMetrics,
    ) -> Result<(), FormatterError> {
        let key = source_hash(src.as_bytes());
        let instance = self.checkout(key, src, metrics)?;
        let has_entry = instance.has_entry_point;
        self.checkin(key, instance);
        if has_entry {
            Ok(())
        } else {
            Err(FormatterError::MissingFunction {
                function: "decodeUplink",
            })
        }
    }

    /// Runs one operation with `input` (the JSON documented in README.md) and returns the
    /// script's result as JSON, in the `{data|bytes, fPort, warnings, errors}` shape.
    pub(crate) fn run(
        &self,
        src: &str,
        op: Op,
        input: &Value,
        metrics: &FormatterMetrics,
    ) -> Result<Value, FormatterError> {
        let key = source_hash(src.as_bytes());
        let instance = self.checkout(key, src, metrics)?;
        let result = instance.call(op, input, &self.limits);
        match &result {
            // The heap may be inconsistent: drop it and rebuild on the next call.
            Err(FormatterError::Timeout { .. } | FormatterError::MemoryLimit { .. }) => {
                drop(instance)
            }
            _ => self.checkin(key, instance),
        }
        result
    }

    fn checkout(
        &self,
        key: [u8; 32],
        src: &str,
        metrics: &FormatterMetrics,
    ) -> Result<JsInstance, FormatterError> {
        if src.len() > self.limits.max_source_bytes {
            return Err(FormatterError::SourceTooLarge {
                size: src.len(),
                limit: self.limits.max_source_bytes,
            });
        }
        let cached = self
            .cache
            .lock()
            .expect("js cache lock")
            .get_mut(&key)
            .and_then(Vec::pop);
        if let Some(instance) = cached {
            metrics.cache_hit("javascript");
            return Ok(instance);
        }
        metrics.cache_miss("javascript");
        JsInstance::build(src, &self.limits)
    }

    fn checkin(&self, key: [u8; 32], instance: JsInstance) {
        // Evicted instances and surplus ones are dropped after the lock is released.
        let mut surplus = None;
        let mut evicted = Vec::new();
        {
            let mut cache = self.cache.lock().expect("js cache lock");
            match cache.get_mut(&key) {
                Some(idle) if idle.len() < MAX_IDLE_PER_SCRIPT => idle.push(instance),
                Some(_) => surplus = Some(instance),
                None => evicted = cache.insert(key, vec![instance]),
            }
        }
        drop(surplus);
        drop(evicted);
    }
}

impl JsInstance {
    fn build(src: &str, limits: &Limits) -> Result<Self, FormatterError> {
        let runtime = Runtime::new().map_err(|e| FormatterError::Engine(e.to_string()))?;
        runtime.set_memory_limit(limits.memory_bytes);
        runtime.set_max_stack_size(limits.stack_bytes);
        let clock = Arc::new(Clock::new());
        let handler_clock = clock.clone();
        runtime.set_interrupt_handler(Some(Box::new(move || handler_clock.expired())));
        let context = Context::full(&runtime).map_err(|e| match e {
            JsError::Allocation => FormatterError::MemoryLimit {
                limit_bytes: limits.memory_bytes,
            },
            other => FormatterError::Engine(other.to_string()),
        })?;
        let instance = JsInstance {
            context,
            runtime,
            clock,
            has_entry_point: false,
        };
        instance.clock.arm(limits);
        let result: Result<bool, FormatterError> = instance.context.with(|ctx| {
            install_console(&ctx).map_err(|e| FormatterError::Engine(e.to_string()))?;
            let mut options = rquickjs::context::EvalOptions::default();
            // Device-repository codecs are sloppy-mode scripts (implicit globals, `with`...).
            options.strict = false;
            options.filename = Some("formatter.js".into());
            ctx.eval_with_options::<(), _>(src, options)
                .map_err(|e| instance.failure(&ctx, e, limits, true))?;
            // Still under the deadline: a global getter can run script code.
            let globals = ctx.globals();
            Ok(ENTRY_POINTS
                .iter()
                .any(|name| matches!(function(&globals, name), Ok(Some(_)))))
        });
        instance.clock.disarm();
        if instance.clock.fired.load(Ordering::Relaxed) {
            return Err(FormatterError::Timeout {
                limit: limits.timeout,
            });
        }
        let has_entry_point = result?;
        Ok(JsInstance {
            has_entry_point,
            ..instance
        })
    }

    fn call(&self, op: Op, input: &Value, limits: &Limits) -> Result<Value, FormatterError> {
        self.clock.arm(limits);
        let result = self.context.with(|ctx| {
            self.call_in(&ctx, op, input)
                .map_err(|e| self.failure(&ctx, e, limits, false))
                .and_then(|r| r)
        });
        self.clock.disarm();
        // Keep the heap small between calls; garbage from this call is not needed any more.
        self.runtime.run_gc();
        result
    }

    /// Dispatches to the modern entry point or its legacy equivalent. The outer `Result`
    /// carries engine errors (exceptions), the inner one shape errors found on the way.
    fn call_in<'js>(
        &self,
        ctx: &Ctx<'js>,
        op: Op,
        input: &Value,
    ) -> rquickjs::Result<Result<Value, FormatterError>> {
        let globals = ctx.globals();
        let js_input = ctx.json_parse(input.to_string())?;
        let input_obj = js_input
            .as_object()
            .cloned()
            .expect("formatter input is a JSON object");
        if let Some(iso) = input.get("recvTime").and_then(Value::as_str) {
            // TTS and ChirpStack hand `recvTime` to scripts as a Date.
            let date: rquickjs::function::Constructor = globals.get("Date")?;
            let value: JsValue = date.construct((iso,))?;
            input_obj.set("recvTime", value)?;
        }
        let port = input.get("fPort").cloned().unwrap_or(Value::Null);
        let port = ctx.json_parse(port.to_string())?;
        let variables: JsValue = input_obj.get("variables")?;
        let (modern, legacy_tts, legacy_cs) = match op {
            Op::DecodeUplink => ("decodeUplink", "Decoder", "Decode"),
            Op::EncodeDownlink => ("encodeDownlink", "Encoder", "Encode"),
            Op::DecodeDownlink => ("decodeDownlink", "", ""),
        };
        let out: JsValue = if let Some(f) = function(&globals, modern)? {
            f.call((js_input,))?
        } else {
            let arg: JsValue = match op {
                Op::EncodeDownlink => input_obj.get("data")?,
                _ => input_obj.get("bytes")?,
            };
            // Legacy codecs return the bare data object (decoders) or byte array (encoders).
            let bare: JsValue = if let Some(f) = function(&globals, legacy_tts)? {
                f.call((arg, port))?
            } else if let Some(f) = function(&globals, legacy_cs)? {
                f.call((port, arg, variables))?
            } else {
                return Ok(Err(FormatterError::MissingFunction { function: modern }));
            };
            let wrapped = Object::new(ctx.clone())?;
            let field = if op == Op::EncodeDownlink {
                "bytes"
            } else {
                "data"
            };
            wrapped.set(field, bare)?;
            wrapped.into_value()
        };
        if op == Op::EncodeDownlink {
            normalize_bytes(ctx, &globals, &out)?;
        }
        let Some(text) = ctx.json_stringify(out)? else {
            return Ok(Err(FormatterError::BadOutput {
                reason: format!("{modern} returned undefined"),
            }));
        };
        let text = text.to_string()?;
        Ok(
            serde_json::from_str(&text).map_err(|e| FormatterError::BadOutput {
                reason: format!("{modern} returned a value that is not JSON: {e}"),
            }),
        )
    }

    /// Classifies an engine error: timeout, memory limit, syntax error or exception.
    fn failure(
        &self,
        ctx: &Ctx<'_>,
        err: JsError,
        limits: &Limits,
        compiling: bool,
    ) -> FormatterError {
        if self.clock.fired.load(Ordering::Relaxed) {
            return FormatterError::Timeout {
                limit: limits.timeout,
            };
        }
        let memory_limit = FormatterError::MemoryLimit {
            limit_bytes: limits.memory_bytes,
        };
        match err {
            JsError::Allocation => memory_limit,
            JsError::Exception => {
                let (name, message) = exception_text(ctx);
                if message.contains("out of memory") {
                    memory_limit
                } else if compiling && name == "SyntaxError" {
                    FormatterError::Compile { message }
                } else {
                    FormatterError::Exception { message }
                }
            }
            other => FormatterError::Exception {
                message: other.to_string(),
            },
        }
    }
}

/// A global function, if the script defines one by that name.
fn function<'js>(globals: &Object<'js>, name: &str) -> rquickjs::Result<Option<Function<'js>>> {
    if name.is_empty() {
        return Ok(None);
    }
    let value: JsValue = globals.get(name)?;
    Ok(value.into_function())
}

/// Codecs may return `bytes` as a Uint8Array or another array-like: make it a plain array so
/// that it serialises as JSON numbers.
fn normalize_bytes<'js>(
    ctx: &Ctx<'js>,
    globals: &Object<'js>,
    out: &JsValue<'js>,
) -> rquickjs::Result<()> {
    let Some(obj) = out.as_object() else {
        return Ok(());
    };
    let bytes: JsValue = obj.get("bytes")?;
    if bytes.is_object() && !bytes.is_array() {
        let array: Object = globals.get("Array")?;
        let from: Function = array.get("from")?;
        let plain: JsValue = from.call((This(array), bytes))?;
        obj.set("bytes", plain)?;
    }
    let _ = ctx;
    Ok(())
}

/// `(name, "name: message\n stack")` of the pending exception.
fn exception_text(ctx: &Ctx<'_>) -> (String, String) {
    let value = ctx.catch();
    if let Some(exception) = value.as_exception() {
        let name: String = exception
            .get::<_, Option<rquickjs::convert::Coerced<String>>>("name")
            .ok()
            .flatten()
            .map(|c| c.0)
            .unwrap_or_else(|| "Error".into());
        let message = exception.message().unwrap_or_default();
        let mut text = format!("{name}: {message}");
        if let Some(stack) = exception.stack().filter(|s| !s.trim().is_empty()) {
            text.push('\n');
            text.push_str(stack.trim_end());
        }
        return (name, text);
    }
    // `throw "text"` or `throw {..}`: report the thrown value itself.
    let text = if let Some(s) = value.as_string() {
        s.to_string().unwrap_or_default()
    } else {
        ctx.json_stringify(value.clone())
            .ok()
            .flatten()
            .and_then(|s| s.to_string().ok())
            .unwrap_or_else(|| format!("{value:?}"))
    };
    ("Error".into(), format!("uncaught {text}"))
}

/// A `console` whose methods do nothing: codecs log while decoding, and a formatter has no
/// output channel.
fn install_console(ctx: &Ctx<'_>) -> rquickjs::Result<()> {
    ctx.eval::<(), _>(
        "var console = (function () { function noop() {} \
         return { log: noop, info: noop, warn: noop, error: noop, debug: noop }; })();",
    )
}
