//! WebAssembly formatters on wasmtime (Cranelift, no WASI, no imports).
//!
//! Modules are compiled once per SHA-256 of their bytes and cached; each call instantiates a
//! fresh instance in a fresh store, so no state survives a call and a trapped instance is
//! simply dropped. The time limit uses epoch interruption driven by one ticker thread that only
//! ticks while a call is in flight; the memory cap is a `ResourceLimiter` on linear memories
//! and tables. The ABI is documented in README.md.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;
use wasmtime::{Config, Engine, ExternType, Instance, Module, ResourceLimiter, Store, Trap};

use crate::cache::Lru;
use crate::metrics::FormatterMetrics;
use crate::{FormatterError, Limits, Op, source_hash};

/// Epoch tick: the time limit is enforced to within one tick.
const TICK: Duration = Duration::from_millis(2);
/// Largest JSON output a module may return.
const MAX_OUTPUT_BYTES: usize = 1 << 20;

fn export_name(op: Op) -> &'static str {
    match op {
        Op::DecodeUplink => "decode_uplink",
        Op::EncodeDownlink => "encode_downlink",
        Op::DecodeDownlink => "decode_downlink",
    }
}

/// Memory and table caps of one store; records whether a cap was hit so the trap that follows
/// is reported as a memory-limit error, not as an exception.
struct Limiter {
    memory_bytes: usize,
    hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit = true;
            return Err(wasmtime::format_err!(
                "linear memory of {desired} bytes exceeds the {} byte limit",
                self.memory_bytes
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // A table element is a pointer; count tables against the same budget.
        if desired.saturating_mul(8) > self.memory_bytes {
            self.hit = true;
            return Err(wasmtime::format_err!(
                "table of {desired} elements exceeds the memory limit"
            ));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }
}

/// Counts calls in flight; the ticker thread sleeps on the condvar while there are none.
struct Ticker {
    state: Mutex<TickerState>,
    wake: Condvar,
}

struct TickerState {
    active: usize,
    stop: bool,
}

struct ActiveCall<'a>(&'a Ticker);

impl Drop for ActiveCall<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("ticker lock").active -= 1;
    }
}

impl Ticker {
    fn enter(&self) -> ActiveCall<'_> {
        self.state.lock().expect("ticker lock").active += 1;
        self.wake.notify_all();
        ActiveCall(self)
    }
}

pub(crate) struct WasmEngine {
    engine: Engine,
    limits: Limits,
    modules: Mutex<Lru<[u8; 32], Module>>,
    ticker: Arc<Ticker>,
}

impl Drop for WasmEngine {
    fn drop(&mut self) {
        self.ticker.state.lock().expect("ticker lock").stop = true;
        self.ticker.wake.notify_all();
    }
}

impl WasmEngine {
    pub(crate) fn new(limits: Limits) -> Result<Self, String> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(limits.stack_bytes.max(64 << 10));
        let engine = Engine::new(&config).map_err(|e| format!("wasmtime engine: {e}"))?;
        let ticker = Arc::new(Ticker {
            state: Mutex::new(TickerState {
                active: 0,
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let thread_ticker = ticker.clone();
        let thread_engine = engine.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || tick(&thread_ticker, &thread_engine))
            .map_err(|e| format!("epoch ticker thread: {e}"))?;
        Ok(WasmEngine {
            engine,
            modules: Mutex::new(Lru::new(limits.cache_entries)),
            limits,
            ticker,
        })
    }

    /// Compiles (or finds cached) and validates a formatter module.
    pub(crate) fn module(
        &self,
        bytes: &[u8],
        metrics: &FormatterMetrics,
    ) -> Result<Module, FormatterError> {
        if bytes.len() > self.limits.max_source_bytes {
            return Err(FormatterError::SourceTooLarge {
                size: bytes.len(),
                limit: self.limits.max_source_bytes,
            });
        }
        let key = source_hash(bytes);
        if let Some(module) = self.modules.lock().expect("wasm cache lock").get_mut(&key) {
            metrics.cache_hit("wasm");
            return Ok(module.clone());
        }
        metrics.cache_miss("wasm");
        // Compiled outside the lock: Cranelift may take a while on a large module.
        let module =
            Module::new(&self.engine, bytes).map_err(|e| FormatterError::InvalidModule {
                reason: format!("{e:#}"),
            })?;
        check_module(&module)?;
        let evicted = self
            .modules
            .lock()
            .expect("wasm cache lock")
            .insert(key, module.clone());
        drop(evicted);
        Ok(module)
    }

    pub(crate) fn run(
        &self,
        bytes: &[u8],
        op: Op,
        input: &Value,
        metrics: &FormatterMetrics,
    ) -> Result<Value, FormatterError> {
        let module = self.module(bytes, metrics)?;
        let function = export_name(op);
        if module.get_export(function).is_none() {
            return Err(FormatterError::MissingFunction { function });
        }
        let mut store = Store::new(
            &self.engine,
            Limiter {
                memory_bytes: self.limits.memory_bytes,
                hit: false,
            },
        );
        store.limiter(|limiter| limiter);
        let ticks = self.limits.timeout.as_micros().div_ceil(TICK.as_micros()) as u64;
        // One extra tick: the first may come right after arming.
        store.set_epoch_deadline(ticks + 1);
        store.epoch_deadline_trap();
        let _active = self.ticker.enter();
        let result = call(&mut store, &module, function, input);
        result.map_err(|e| self.classify(&store, e))?
    }

    fn classify(&self, store: &Store<Limiter>, err: wasmtime::Error) -> FormatterError {
        if store.data().hit {
            return FormatterError::MemoryLimit {
                limit_bytes: self.limits.memory_bytes,
            };
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => FormatterError::Timeout {
                limit: self.limits.timeout,
            },
            Some(trap) => FormatterError::Exception {
                message: format!("trap: {trap}"),
            },
            None => FormatterError::Exception {
                message: format!("{err:#}"),
            },
        }
    }
}

/// The epoch ticker: advances the engine epoch every `TICK` while calls are in flight.
fn tick(ticker: &Ticker, engine: &Engine) {
    loop {
        {
            let mut state = ticker.state.lock().expect("ticker lock");
            while state.active == 0 && !state.stop {
                state = ticker.wake.wait(state).expect("ticker lock");
            }
            if state.stop {
                return;
            }
        }
        std::thread::sleep(TICK);
        engine.increment_epoch();
    }
}

/// Refuses modules that import anything or lack the ABI exports.
fn check_module(module: &Module) -> Result<(), FormatterError> {
    if let Some(import) = module.imports().next() {
        return Err(FormatterError::InvalidModule {
            reason: format!(
                "module imports `{}.{}`; formatter modules may not import anything (no WASI, no host functions)",
                import.module(),
                import.name()
            ),
        });
    }
    let invalid = |reason: String| FormatterError::InvalidModule { reason };
    match module.get_export("memory") {
        Some(ExternType::Memory(m)) if !m.is_64() => {}
        Some(ExternType::Memory(_)) => {
            return Err(invalid("`memory` must be a 32-bit memory".into()));
        }
        _ => return Err(invalid("module does not export `memory`".into())),
    }
    let signature = |name: &str, params: usize, results: &str| -> Result<bool, FormatterError> {
        match module.get_export(name) {
            None => Ok(false),
            Some(ExternType::Func(f)) => {
                let p: Vec<String> = f.params().map(|t| t.to_string()).collect();
                let r: Vec<String> = f.results().map(|t| t.to_string()).collect();
                if p.len() == params && p.iter().all(|t| t == "i32") && r == [results] {
                    Ok(true)
                } else {
                    Err(invalid(format!(
                        "`{name}` has signature ({}) -> ({}), expected {params} i32 parameter(s) and one {results} result",
                        p.join(", "),
                        r.join(", ")
                    )))
                }
            }
            Some(_) => Err(invalid(format!("export `{name}` is not a function"))),
        }
    };
    if !signature("alloc", 1, "i32")? {
        return Err(invalid(
            "module does not export `alloc(len: i32) -> i32`".into(),
        ));
    }
    let mut any = false;
    for op in [Op::DecodeUplink, Op::EncodeDownlink, Op::DecodeDownlink] {
        any |= signature(export_name(op), 2, "i64")?;
    }
    if !any {
        return Err(invalid(
            "module exports none of `decode_uplink`, `encode_downlink`, `decode_downlink`".into(),
        ));
    }
    Ok(())
}

/// Instantiates the module, copies the JSON input in through `alloc`, calls the entry point
/// and reads the JSON output it points at.
fn call(
    store: &mut Store<Limiter>,
    module: &Module,
    function: &'static str,
    input: &Value,
) -> wasmtime::Result<Result<Value, FormatterError>> {
    let instance = Instance::new(&mut *store, module, &[])?;
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| wasmtime::format_err!("module does not export `memory`"))?;
    let alloc = instance.get_typed_func::<i32, i32>(&mut *store, "alloc")?;
    let entry = instance.get_typed_func::<(i32, i32), i64>(&mut *store, function)?;
    let json = input.to_string().into_bytes();
    let len = i32::try_from(json.len())
        .map_err(|_| wasmtime::format_err!("input of {} bytes is too large", json.len()))?;
    let ptr = alloc.call(&mut *store, len)?;
    if memory
        .write(&mut *store, ptr as u32 as usize, &json)
        .is_err()
    {
        return Ok(Err(FormatterError::BadOutput {
            reason: format!("alloc({len}) returned {ptr}, outside linear memory"),
        }));
    }
    let packed = entry.call(&mut *store, (ptr, len))? as u64;
    let (out_ptr, out_len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
    if out_len > MAX_OUTPUT_BYTES {
        return Ok(Err(FormatterError::BadOutput {
            reason: format!(
                "{function} returned {out_len} bytes, above the {MAX_OUTPUT_BYTES} byte limit"
            ),
        }));
    }
    let mut out = vec![0; out_len];
    if memory.read(&*store, out_ptr, &mut out).is_err() {
        return Ok(Err(FormatterError::BadOutput {
            reason: format!(
                "{function} returned {out_len} bytes at {out_ptr}, outside linear memory"
            ),
        }));
    }
    Ok(
        serde_json::from_slice(&out).map_err(|e| FormatterError::BadOutput {
            reason: format!("{function} output is not JSON: {e}"),
        }),
    )
}
