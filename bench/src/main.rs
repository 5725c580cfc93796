//! `tern-bench` (`make bench`): starts `tern start` (every role, one process, embedded
//! store, default configuration apart from the dedup window and loopback listeners),
//! provisions it over gRPC, drives it with simulated Semtech UDP gateways and reads the
//! result with a real MQTT client. Reports the highest sustained uplink rate, latency at
//! half of it, OTAA joins/s, class A downlink timing, memory and the CPU split, each the
//! median of several runs; writes `bench/results/<date>-<commit>.json`, an SVG plot of
//! delivered against offered rate and, with `--profile`, a flame graph of tern under load.

#![warn(missing_docs)]

mod load;
mod profile;
mod provision;
mod report;
mod search;
mod server;
mod stats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use serde::Serialize;

use load::{DownlinkTiming, Generator, JoinResult, Subscriber};
use report::{Figure, Target};
use search::{RateSearch, StepResult, Verdict};
use server::{CpuSample, Tern};

/// End-to-end benchmark of `tern start`.
#[derive(Parser, Debug, Clone)]
#[command(name = "tern-bench", version)]
struct Args {
    /// Runs; each figure is the median over them.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A short smoke run: 1 run, 1,000 devices, short steps (unless given explicitly).
    #[arg(long)]
    quick: bool,
    /// Record a flame graph of tern under load (perf) and its per-thread CPU split.
    #[arg(long)]
    profile: bool,
    /// ABP devices sending uplinks.
    #[arg(long)]
    devices: Option<usize>,
    /// ABP devices with sessions provisioned for the memory figure (in the last run).
    #[arg(long)]
    memory_devices: Option<usize>,
    /// OTAA devices joining in the joins figure.
    #[arg(long)]
    joins: Option<usize>,
    /// Offered join-requests per second.
    #[arg(long)]
    join_rate: Option<f64>,
    /// Class A downlinks queued for the downlink timing figure.
    #[arg(long)]
    downlinks: Option<usize>,
    /// Seconds of each rate-search step.
    #[arg(long)]
    step_secs: Option<u64>,
    /// Seconds of the latency phase at 50% of the sustained rate.
    #[arg(long)]
    latency_secs: Option<u64>,
    /// First offered rate of the search, uplinks/s.
    #[arg(long)]
    start_rate: Option<f64>,
    /// Highest offered rate of the search, uplinks/s.
    #[arg(long)]
    max_rate: Option<f64>,
    /// The NS dedup window, ms (the only configuration changed from the defaults).
    #[arg(long, default_value_t = 50)]
    dedup_ms: u64,
    /// Provisioning requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Where results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The `tern` binary (default: next to this one).
    #[arg(long)]
    tern: Option<PathBuf>,
}

/// The effective settings of a bench invocation.
#[derive(Debug, Clone, Serialize)]
struct Settings {
    runs: usize,
    quick: bool,
    profile: bool,
    devices: usize,
    memory_devices: usize,
    joins: usize,
    join_rate: f64,
    downlinks: usize,
    step_secs: u64,
    latency_secs: u64,
    start_rate: f64,
    max_rate: f64,
    dedup_ms: u64,
    gateways: usize,
    concurrency: usize,
}

impl Settings {
    fn from(a: &Args) -> Self {
        let q = a.quick;
        let devices = a.devices.unwrap_or(if q { 1_000 } else { 10_000 });
        let max_rate = a.max_rate.unwrap_or(if q { 8_000.0 } else { 40_000.0 });
        let join_rate = a.join_rate.unwrap_or(if q { 500.0 } else { 2_500.0 });
        Self {
            runs: if q && a.runs == 3 { 1 } else { a.runs.max(1) },
            quick: q,
            profile: a.profile,
            devices,
            memory_devices: a
                .memory_devices
                .unwrap_or(if q { devices } else { 1_000_000 }),
            joins: a.joins.unwrap_or(if q { 300 } else { 5_000 }),
            join_rate,
            downlinks: a
                .downlinks
                .unwrap_or(if q { 50 } else { 500 })
                .min(devices / 8),
            step_secs: a.step_secs.unwrap_or(if q { 3 } else { 10 }),
            latency_secs: a.latency_secs.unwrap_or(if q { 5 } else { 20 }),
            start_rate: a.start_rate.unwrap_or(if q { 250.0 } else { 500.0 }),
            max_rate,
            dedup_ms: a.dedup_ms,
            // Join-requests go one per PUSH_DATA to a group of 3 gateways (see
            // `send_joins`). A join-accept at SF7 is on air 72 ms, so one transmitter sends
            // at most ~13/s: 10 requests/s per group keeps each under a quarter busy and
            // the radios out of the joins figure (at 40/s per group they capped it at
            // ~1,500/s, with the GS refusing overlapping transmissions).
            gateways: gateway_count(max_rate).max(3 * (join_rate / 10.0).ceil() as usize),
            concurrency: a.concurrency.max(1),
        }
    }
}

/// Gateways needed so that none exceeds 40 PUSH_DATA/s (the GS's default per-gateway
/// limit is 50/s) at `rate` uplinks/s, 100 ticks/s, up to 8 rxpk each: a multiple of 3.
fn gateway_count(rate: f64) -> usize {
    let per_tick = (rate / 100.0).ceil();
    let batches = (per_tick / 8.0).ceil();
    let groups = (batches * 100.0 / 40.0).ceil().max(1.0) as usize;
    groups * 3
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize)]
struct RunResult {
    steps: Vec<StepResult>,
    max_sustained: Option<f64>,
    generator_bound: bool,
    /// The warm-up: the first uplink of every device (cold path).
    warm_up: Option<StepResult>,
    /// First uplinks per second over the warm-up, until the last one arrived.
    cold_uplinks_per_sec: Option<f64>,
    latency: Option<StepResult>,
    downlinks: DownlinkTiming,
    joins: JoinResult,
    join_attempts: Vec<JoinResult>,
    provisioning_devices_per_sec: f64,
    rss_empty_bytes: Option<u64>,
    rss_idle_bytes: Option<u64>,
    rss_load_bytes: Option<u64>,
    memory: Option<Memory>,
    mqtt_disconnects: u64,
    mqtt_unknown: u64,
    /// MAC commands the bench devices received in downlinks and answered.
    mac_commands: u64,
    /// Warm-up rounds (one uplink per device each) after the first, until no device
    /// received a MAC command in a round.
    mac_warm_up_rounds: u32,
    /// Data downlinks the bench devices refused (replayed counter, wrong MIC...), by reason.
    refused_downlinks: std::collections::BTreeMap<String, u64>,
    thread_split: Vec<(String, f64)>,
    hot_leaves: Vec<(String, f64)>,
    profile_note: Option<String>,
    warnings: Vec<String>,
    /// tern's counters of drops, refusals and failures at the end of the run (non-zero
    /// ones): where uplinks, downlinks and link messages were given up, and why.
    counters: std::collections::BTreeMap<String, f64>,
}

/// The memory figure with many provisioned devices.
#[derive(Debug, Clone, Default, Serialize)]
struct Memory {
    devices: usize,
    provisioning_secs: f64,
    rss_empty_bytes: u64,
    rss_idle_bytes: u64,
    rss_load_bytes: u64,
    bytes_per_device: f64,
}

/// The results file.
#[derive(Debug, Serialize)]
struct Results {
    date: String,
    commit: String,
    cores: usize,
    settings: Settings,
    figures: Vec<Figure>,
    runs: Vec<RunResult>,
    notes: Vec<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let settings = Settings::from(&args);
    let tern_bin = match &args.tern {
        // Absolute: tern runs in its own temp directory, where a relative path would not
        // resolve.
        Some(p) => std::path::absolute(p)?,
        None => std::env::current_exe()?
            .parent()
            .context("no directory of tern-bench")?
            .join("tern"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(settings, tern_bin, args.out))
}

async fn bench(settings: Settings, tern_bin: PathBuf, out: PathBuf) -> Result<()> {
    eprintln!(
        "tern-bench: {} run(s), {} devices, {} gateways, {} cores; tern = {}",
        settings.runs,
        settings.devices,
        settings.gateways,
        server::cores(),
        tern_bin.display()
    );
    let mut runs = Vec::new();
    for r in 0..settings.runs {
        let last = r + 1 == settings.runs;
        eprintln!("== run {}/{}", r + 1, settings.runs);
        let result = one_run(&settings, &tern_bin, &out, r, last).await;
        match result {
            Ok(res) => runs.push(res),
            Err(e) => {
                eprintln!("run {} failed: {e:#}", r + 1);
                runs.push(RunResult {
                    warnings: vec![format!("run failed: {e:#}")],
                    ..Default::default()
                });
            }
        }
    }
    let figures = figures(&runs);
    let commit = git_commit();
    let date = utc_date();
    let results = Results {
        date: date.clone(),
        commit: commit.clone(),
        cores: server::cores(),
        settings: settings.clone(),
        figures: figures.clone(),
        runs: runs.clone(),
        notes: vec![
            "The load generator runs on the same machine as tern; see the CPU split.".into(),
            "Memory is measured in the last run only (provisioning is the slow part).".into(),
        ],
    };
    std::fs::create_dir_all(&out)?;
    let stem = format!(
        "{date}-{commit}{}",
        if settings.quick { "-quick" } else { "" }
    );
    let json_path = out.join(format!("{stem}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
    let steps: Vec<Vec<StepResult>> = runs.iter().map(|r| r.steps.clone()).collect();
    let svg_path = out.join(format!("{stem}-rate.svg"));
    std::fs::write(&svg_path, report::plot_svg(&steps))?;
    println!();
    println!(
        "tern end-to-end benchmark, {} run(s), {} cores (generator included), commit {commit}",
        settings.runs,
        server::cores()
    );
    print!("{}", report::table(&figures));
    for (i, r) in runs.iter().enumerate() {
        for w in r.warnings.iter().take(5) {
            println!("run {}: {w}", i + 1);
        }
    }
    println!("results: {}", json_path.display());
    println!("plot:    {}", svg_path.display());
    Ok(())
}

fn figures(runs: &[RunResult]) -> Vec<Figure> {
    let per = |f: &dyn Fn(&RunResult) -> Option<f64>| runs.iter().map(f).collect::<Vec<_>>();
    let lat = |f: fn(&StepResult) -> f64| {
        per(&|r: &RunResult| r.latency.as_ref().map(f).filter(|v| v.is_finite()))
    };
    let mib = |b: Option<u64>| b.map(|b| b as f64 / (1024.0 * 1024.0));
    vec![
        Figure::new(
            "max sustained uplinks/s",
            "1/s",
            per(&|r| r.max_sustained),
            Target::AtLeast(10_000.0),
        ),
        Figure::new(
            "  gateway frames/s at max",
            "1/s",
            per(&|r| r.max_sustained.map(|m| 3.0 * m)),
            Target::AtLeast(30_000.0),
        ),
        Figure::new(
            "cold first uplinks/s",
            "1/s",
            per(&|r| r.cold_uplinks_per_sec),
            Target::None,
        ),
        Figure::new("latency p50 @50%", "ms", lat(|s| s.p50_ms), Target::None),
        Figure::new(
            "latency p99 @50%",
            "ms",
            lat(|s| s.p99_ms),
            Target::AtMost(20.0),
        ),
        Figure::new("latency max @50%", "ms", lat(|s| s.max_ms), Target::None),
        Figure::new(
            "lost uplinks @50%",
            "",
            per(&|r| r.latency.as_ref().map(|s| (s.sent - s.delivered) as f64)),
            Target::AtMost(0.0),
        ),
        Figure::new(
            "joins/s (RX1 in time)",
            "1/s",
            per(&|r| (r.joins.requested > 0).then_some(r.joins.joins_per_sec)),
            Target::AtLeast(2_000.0),
        ),
        Figure::new(
            "joins answered in RX1",
            "%",
            per(&|r| {
                (r.joins.requested > 0)
                    .then(|| 100.0 * r.joins.rx1_in_time as f64 / r.joins.requested as f64)
            }),
            Target::AtLeast(100.0),
        ),
        Figure::new(
            "downlinks in time for RX1",
            "%",
            per(&|r| r.downlinks.rx1_share()),
            Target::AtLeast(100.0),
        ),
        Figure::new(
            "TOO_LATE downlinks",
            "",
            per(&|r| (r.downlinks.queued > 0).then_some(r.downlinks.rx1_late as f64)),
            Target::AtMost(0.0),
        ),
        Figure::new(
            "RSS idle, bench devices",
            "MiB",
            per(&|r| mib(r.rss_idle_bytes)),
            Target::None,
        ),
        Figure::new(
            "RSS under load @50%",
            "MiB",
            per(&|r| mib(r.rss_load_bytes)),
            Target::None,
        ),
        Figure::new(
            "memory: devices",
            "",
            per(&|r| r.memory.as_ref().map(|m| m.devices as f64)),
            Target::None,
        ),
        Figure::new(
            "memory: RSS idle",
            "MiB",
            per(&|r| {
                r.memory
                    .as_ref()
                    .map(|m| m.rss_idle_bytes as f64 / 1048576.0)
            }),
            Target::None,
        ),
        Figure::new(
            "memory: RSS under load",
            "MiB",
            per(&|r| {
                r.memory
                    .as_ref()
                    .map(|m| m.rss_load_bytes as f64 / 1048576.0)
            }),
            Target::None,
        ),
        Figure::new(
            "memory: bytes/device",
            "B",
            per(&|r| r.memory.as_ref().map(|m| m.bytes_per_device)),
            Target::AtMost(1024.0),
        ),
        Figure::new(
            "CPU tern @50%",
            "% mach",
            per(&|r| r.latency.as_ref().map(|s| 100.0 * s.tern_cpu)),
            Target::None,
        ),
        Figure::new(
            "CPU generator @50%",
            "% mach",
            per(&|r| r.latency.as_ref().map(|s| 100.0 * s.generator_cpu)),
            Target::None,
        ),
        Figure::new(
            "CPU tern @max",
            "% mach",
            per(&|r| max_step(r).map(|s| 100.0 * s.tern_cpu)),
            Target::None,
        ),
        Figure::new(
            "CPU generator @max",
            "% mach",
            per(&|r| max_step(r).map(|s| 100.0 * s.generator_cpu)),
            Target::None,
        ),
        Figure::new(
            "provisioning devices/s",
            "1/s",
            per(&|r| {
                (r.provisioning_devices_per_sec > 0.0).then_some(r.provisioning_devices_per_sec)
            }),
            Target::None,
        ),
    ]
}

/// The step at the sustained maximum.
fn max_step(r: &RunResult) -> Option<&StepResult> {
    let m = r.max_sustained?;
    r.steps
        .iter()
        .find(|s| s.offered == m && s.verdict == Verdict::Sustained)
}

async fn one_run(
    s: &Settings,
    tern_bin: &Path,
    out: &Path,
    run: usize,
    last: bool,
) -> Result<RunResult> {
    let mut res = RunResult::default();
    let dir = std::env::temp_dir().join(format!("tern-bench-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dedup = Duration::from_millis(s.dedup_ms);
    let mut tern = Tern::start(tern_bin, &dir, dedup)?;
    let outcome = drive(s, &mut tern, out, run, last, &mut res).await;
    match server::failure_counters(tern.http).await {
        Ok(counters) => {
            for (name, value) in &counters {
                eprintln!("  counter {name} = {value}");
            }
            res.counters = counters;
        }
        Err(e) => res.warnings.push(format!("metrics: {e:#}")),
    }
    res.warnings
        .extend(tern.warnings().into_iter().rev().take(20));
    // The server's log, for a closer look at a run (not part of the results).
    let log_path = std::env::temp_dir().join(format!(
        "tern-bench-{}-run{}.log",
        std::process::id(),
        run + 1
    ));
    if std::fs::write(&log_path, tern.log()).is_ok() {
        eprintln!("tern's log: {}", log_path.display());
    }
    if !tern.alive() {
        res.warnings.push("tern exited during the run".into());
    }
    drop(tern);
    let _ = std::fs::remove_dir_all(&dir);
    outcome?;
    Ok(res)
}

/// Steps through the phases of one run on a started tern.
async fn drive(
    s: &Settings,
    tern: &mut Tern,
    out: &Path,
    run: usize,
    last: bool,
    res: &mut RunResult,
) -> Result<()> {
    tern.wait_ready().await?;
    let pid = tern.pid;
    let dedup = Duration::from_millis(s.dedup_ms);
    let drain = dedup + Duration::from_secs(3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    res.rss_empty_bytes = server::rss_bytes(pid);

    // Provisioning.
    let api = provision::Api::new(tern.grpc, &tern.admin_key()?)?;
    let app_key = provision::application(&api).await?;
    provision::gateways(&api, s.gateways).await?;
    eprintln!("provisioning {} ABP devices…", s.devices);
    let p = provision::devices(
        &api,
        "bench",
        provision::Kind::Abp {
            base: provision::BENCH_DEV_ADDR,
        },
        0..s.devices,
        s.concurrency,
        (s.devices / 5).max(1),
    )
    .await?;
    res.provisioning_devices_per_sec = p.rate();
    eprintln!(
        "  {} ABP devices in {:.1} s ({:.0}/s)",
        p.devices,
        p.secs,
        p.rate()
    );
    let j = provision::devices(
        &api,
        "join",
        provision::Kind::Otaa { base: JOIN_DEV_EUI },
        0..s.joins,
        s.concurrency,
        0,
    )
    .await?;
    eprintln!("  {} OTAA devices in {:.1} s", j.devices, j.secs);
    tokio::time::sleep(Duration::from_secs(1)).await;
    res.rss_idle_bytes = server::rss_bytes(pid);

    let mut generator = Generator::start(tern.udp, s.gateways, s.devices).await?;
    let _subscriber = Subscriber::start(
        tern.mqtt,
        &app_key,
        generator.tracker.clone(),
        generator.clock.clone(),
    )?;

    // The first uplink may wait for the AS to link the new application: probe until one
    // arrives end to end before measuring anything.
    let probe_started = Instant::now();
    loop {
        let probe = generator
            .step(
                2.0,
                Duration::from_millis(500),
                Duration::from_millis(500),
                dedup,
            )
            .await?;
        if probe.delivered > 0 {
            break;
        }
        if probe_started.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("no uplink reached the MQTT subscriber in 60 s");
        }
    }
    eprintln!(
        "first uplink end to end after {:.1} s",
        probe_started.elapsed().as_secs_f64()
    );

    // Warm-up: one uplink per device, so that caches hold every session as in a running
    // network; not counted.
    let warm_rate = (s.start_rate * 2.0).min(s.max_rate);
    // Each device's first uplink takes the cold path (session from the store): wait until
    // all arrived, and report how long that took.
    let warm_started = Instant::now();
    let mut warm = generator
        .step(
            warm_rate,
            Duration::from_secs_f64((s.devices as f64 / warm_rate).max(1.0)),
            Duration::from_secs(180),
            dedup,
        )
        .await?;
    warm.verdict = search::verdict(&warm);
    let warm_secs = warm_started.elapsed().as_secs_f64();
    res.cold_uplinks_per_sec = Some(warm.delivered as f64 / warm_secs);
    eprintln!(
        "warm-up: {} of {} first uplinks delivered at {:.0}/s offered, all in {warm_secs:.1} s, p50 {:.1} max {:.1} ms",
        warm.delivered, warm.sent, warm_rate, warm.p50_ms, warm.max_ms
    );
    res.warm_up = Some(warm);
    // Then rounds until the NS has no more MAC commands to send: an ABP session starts
    // from the region's boot settings, so the NS first sends every device the plan's
    // extra channels (NewChannelReq), which the devices answer. That is a one-off: the
    // steps below measure the steady state. Downlinks that lose their radio slot retry
    // with later uplinks, so this may take a few rounds.
    let mut rounds = 0;
    loop {
        let before = generator
            .tracker
            .mac_commands
            .load(std::sync::atomic::Ordering::Relaxed);
        generator
            .step(
                warm_rate,
                Duration::from_secs_f64((s.devices as f64 / warm_rate).max(1.0)),
                drain,
                dedup,
            )
            .await?;
        rounds += 1;
        // A downlink answers an uplink a second later.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let got = generator
            .tracker
            .mac_commands
            .load(std::sync::atomic::Ordering::Relaxed)
            - before;
        if got == 0 || rounds == 10 {
            eprintln!("MAC settled after {rounds} more warm-up round(s)");
            res.mac_warm_up_rounds = rounds;
            break;
        }
    }

    // Rate search.
    let mut search = RateSearch::new(
        s.start_rate,
        if s.quick { 2.0 } else { 1.5 },
        s.max_rate,
        if s.quick { 1 } else { 3 },
    );
    while let Some(rate) = search.next_rate() {
        let cpu = CpuSample::now(pid);
        let mut step = generator
            .step(rate, Duration::from_secs(s.step_secs), drain, dedup)
            .await?;
        (step.tern_cpu, step.generator_cpu) = cpu.shares_since(pid);
        step.verdict = search::verdict(&step);
        eprintln!(
            "step {:>6.0}/s: sent {} delivered {} ({:.0}/s) p50 {:.1} p99 {:.1} max {:.1} ms, first/last quarter {:.1}/{:.1} ms, cpu tern {:.0}% gen {:.0}% -> {:?}",
            rate,
            step.sent,
            step.delivered,
            step.delivered_rate,
            step.p50_ms,
            step.p99_ms,
            step.max_ms,
            step.latency_first_ms,
            step.latency_last_ms,
            100.0 * step.tern_cpu,
            100.0 * step.generator_cpu,
            step.verdict
        );
        search.record(step.verdict);
        res.steps.push(step);
        // Let any queue drain before the next step.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    res.max_sustained = search.best();
    res.generator_bound = search.generator_bound;
    let half = res.max_sustained.unwrap_or(s.start_rate / 4.0) / 2.0;
    eprintln!(
        "max sustained: {:?} uplinks/s; latency phase at {half:.0}/s",
        res.max_sustained
    );

    // Latency and downlink timing at 50%.
    // Queue for devices that send soon, one per PUSH_DATA batch of 8: the answers to frames
    // of one batch would compete for the same gateway's transmitter at the same instant.
    let next = generator.next_seq();
    let queued: Vec<String> = (0..s.downlinks as u64)
        .map(|k| format!("bench-{}", (next + 8 * k) % s.devices as u64))
        .collect();
    provision::queue_downlinks(&api, queued).await?;
    generator.tracker.take_downlinks();
    let rss_peak = RssPeak::start(pid);
    let cpu = CpuSample::now(pid);
    let mut lat = generator
        .step(half, Duration::from_secs(s.latency_secs), drain, dedup)
        .await?;
    (lat.tern_cpu, lat.generator_cpu) = cpu.shares_since(pid);
    lat.verdict = search::verdict(&lat);
    res.rss_load_bytes = rss_peak.stop().await;
    // The last downlinks answer uplinks of the last second: wait out RX1.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let downlinks = generator.tracker.take_downlinks();
    res.downlinks = load::downlink_timing(&downlinks, s.downlinks as u64);
    eprintln!(
        "latency @{half:.0}/s: p50 {:.1} p99 {:.1} max {:.1} ms, {}/{} delivered; downlinks {:?}",
        lat.p50_ms, lat.p99_ms, lat.max_ms, lat.delivered, lat.sent, res.downlinks
    );
    res.latency = Some(lat);

    // Profile under the same load.
    if s.profile && run == 0 {
        profile_phase(s, tern, &mut generator, half, out, res).await;
    }

    // Joins.
    if s.joins > 0 {
        let mut devices: Vec<tern_simulator::Device> = (0..s.joins)
            .map(|i| {
                let eui = JOIN_DEV_EUI + i as u64;
                tern_simulator::Device::new(tern_simulator::DeviceConfig::otaa(
                    provision::eui(eui),
                    provision::eui(provision::JOIN_EUI),
                    tern_simulator::Version::V1_0,
                    provision::app_key(eui),
                ))
            })
            .collect();
        // Offer the join rate; when not every join is answered in RX1, halve it, up to 3
        // times, each attempt with fresh devices (slices of 1/2, 1/4, 1/8, 1/8 of them):
        // the figure is the best attempt that answered >= 99% in RX1 (else the best
        // attempt), every attempt in the JSON.
        let mut rate = s.join_rate;
        let n = devices.len();
        let bounds = [0, n / 2, n * 3 / 4, n * 7 / 8, n];
        for k in 0..4 {
            let slice = &mut devices[bounds[k]..bounds[k + 1]];
            if slice.is_empty() {
                break;
            }
            generator.tracker.take_downlinks();
            let sent = generator.send_joins(slice, rate).await?;
            // Join-accepts are due 5 s (RX1) or 6 s (RX2) after each request; late ones are
            // collected too (up to 30 s, until none came for 3 s) to tell "late" from "never".
            let waited = Instant::now();
            let mut downlinks = Vec::new();
            let mut last_seen = Instant::now();
            while waited.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let got = generator.tracker.take_downlinks();
                if !got.is_empty() {
                    last_seen = Instant::now();
                }
                downlinks.extend(got);
                if waited.elapsed() > Duration::from_secs(7)
                    && last_seen.elapsed() > Duration::from_secs(3)
                {
                    break;
                }
            }
            let mut attempt = load::join_result(slice, &sent, &downlinks);
            attempt.downlinks_seen = downlinks.len() as u64;
            attempt.offered_rate = rate;
            eprintln!("joins at {rate:.0}/s offered: {attempt:?}");
            let complete = |j: &JoinResult| j.rx1_in_time as f64 >= 0.99 * j.requested as f64;
            let better = res.join_attempts.is_empty()
                || match (complete(&attempt), complete(&res.joins)) {
                    (true, false) => true,
                    (false, true) => false,
                    _ => attempt.joins_per_sec > res.joins.joins_per_sec,
                };
            if better {
                res.joins = attempt.clone();
            }
            res.join_attempts.push(attempt.clone());
            if complete(&attempt) {
                break;
            }
            rate /= 2.0;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        eprintln!("joins: {:?}", res.joins);
    }

    // Memory with many provisioned devices (last run only).
    if last && s.memory_devices > s.devices {
        let extra = s.memory_devices - s.devices;
        eprintln!("memory: provisioning {extra} more ABP devices…");
        let started = Instant::now();
        provision::devices(
            &api,
            "mem",
            provision::Kind::Abp {
                base: provision::MEMORY_DEV_ADDR,
            },
            0..extra,
            s.concurrency,
            (extra / 20).max(1),
        )
        .await?;
        let provisioning_secs = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = stats::median_of([0, 1, 2].map(|_| {
            std::thread::sleep(Duration::from_millis(500));
            server::rss_bytes(pid).map(|b| b as f64)
        }))
        .unwrap_or(0.0) as u64;
        let rss_peak = RssPeak::start(pid);
        generator
            .step(half, Duration::from_secs(s.step_secs), drain, dedup)
            .await?;
        let load_rss = rss_peak.stop().await.unwrap_or(0);
        let empty = res.rss_empty_bytes.unwrap_or(0);
        res.memory = Some(Memory {
            devices: s.memory_devices,
            provisioning_secs,
            rss_empty_bytes: empty,
            rss_idle_bytes: idle,
            rss_load_bytes: load_rss,
            bytes_per_device: idle.saturating_sub(empty) as f64 / s.memory_devices as f64,
        });
        eprintln!("memory: {:?}", res.memory);
    } else if last {
        // Without extra devices the bench devices are the memory figure.
        let empty = res.rss_empty_bytes.unwrap_or(0);
        let idle = res.rss_idle_bytes.unwrap_or(0);
        res.memory = Some(Memory {
            devices: s.devices,
            provisioning_secs: 0.0,
            rss_empty_bytes: empty,
            rss_idle_bytes: idle,
            rss_load_bytes: res.rss_load_bytes.unwrap_or(0),
            bytes_per_device: idle.saturating_sub(empty) as f64 / s.devices.max(1) as f64,
        });
    }
    res.mqtt_disconnects = generator
        .tracker
        .mqtt_disconnects
        .load(std::sync::atomic::Ordering::Relaxed);
    res.mqtt_unknown = generator
        .tracker
        .mqtt_unknown
        .load(std::sync::atomic::Ordering::Relaxed);
    res.mac_commands = generator
        .tracker
        .mac_commands
        .load(std::sync::atomic::Ordering::Relaxed);
    res.refused_downlinks = generator
        .tracker
        .refused_downlinks
        .lock()
        .expect("refusals lock")
        .clone();
    eprintln!(
        "MAC commands answered by the bench devices: {}; downlinks they refused: {:?}",
        res.mac_commands, res.refused_downlinks
    );
    Ok(())
}

/// DevEUI of OTAA bench device 0.
const JOIN_DEV_EUI: u64 = 0x70B3_D57E_D100_0000;

/// Records a flame graph (perf) and the per-thread CPU split of tern at `rate`.
async fn profile_phase(
    s: &Settings,
    tern: &Tern,
    generator: &mut Generator,
    rate: f64,
    out: &Path,
    res: &mut RunResult,
) {
    let pid = tern.pid;
    let secs = s.step_secs.max(5);
    let data = out.join("perf.data");
    let recording = if profile::perf_available() {
        match profile::PerfRecording::start(pid, &data, secs) {
            Ok(r) => Some(r),
            Err(e) => {
                res.profile_note = Some(format!("perf record failed to start: {e:#}"));
                None
            }
        }
    } else {
        res.profile_note = Some("perf is not installed: per-thread CPU split only".into());
        None
    };
    let before = profile::thread_ticks(pid);
    let started = Instant::now();
    let dedup = Duration::from_millis(s.dedup_ms);
    if let Err(e) = generator
        .step(
            rate,
            Duration::from_secs(secs),
            dedup + Duration::from_secs(3),
            dedup,
        )
        .await
    {
        res.profile_note = Some(format!("load during the profile failed: {e:#}"));
    }
    let after = profile::thread_ticks(pid);
    res.thread_split = profile::thread_split(&before, &after, started.elapsed().as_secs_f64());
    eprintln!(
        "tern threads (share of the machine): {:?}",
        res.thread_split
    );
    let Some(recording) = recording else { return };
    let folded = tokio::task::spawn_blocking(move || -> Result<_> {
        recording.finish()?;
        profile::fold_perf(&data)
    })
    .await;
    match folded {
        Ok(Ok(folded)) => {
            let stem = format!("{}-{}", utc_date(), git_commit());
            let text: String = folded.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
            let _ = std::fs::write(out.join(format!("{stem}-flame.folded")), text);
            let _ = std::fs::write(
                out.join(format!("{stem}-flame.svg")),
                profile::flame_svg(&folded, &format!("tern under {rate:.0} uplinks/s")),
            );
            res.hot_leaves = profile::hot_leaves(&folded, 15);
            eprintln!("hottest functions (self): {:?}", res.hot_leaves);
            let _ = std::fs::remove_file(out.join("perf.data"));
            let _ = std::fs::remove_file(out.join("perf.data.old"));
        }
        Ok(Err(e)) => res.profile_note = Some(format!("perf: {e:#}")),
        Err(e) => res.profile_note = Some(format!("perf task: {e}")),
    }
}

/// Samples tern's RSS every 250 ms and keeps the highest.
struct RssPeak {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Option<u64>>,
}

impl RssPeak {
    fn start(pid: u32) -> Self {
        let (stop, mut rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak = None;
            loop {
                peak = peak.max(server::rss_bytes(pid));
                tokio::select! {
                    _ = &mut rx => return peak,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        });
        Self { stop, task }
    }

    async fn stop(self) -> Option<u64> {
        let _ = self.stop.send(());
        self.task.await.ok().flatten()
    }
}

/// The short commit hash of the checkout, or "unknown".
fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Today's date (UTC), YYYY-MM-DD.
fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_413), (2025, 11, 21));
    }

    #[test]
    fn gateways_keep_under_the_rate_limit() {
        assert_eq!(gateway_count(100.0), 9);
        // 40,000/s: 400 per tick, 50 batches, 125 groups.
        assert_eq!(gateway_count(40_000.0), 375);
    }

    #[test]
    fn quick_settings() {
        let a = Args::parse_from(["tern-bench", "--quick"]);
        let s = Settings::from(&a);
        assert_eq!((s.runs, s.devices, s.memory_devices), (1, 1_000, 1_000));
        let a = Args::parse_from(["tern-bench", "--devices", "20", "--runs", "5"]);
        let s = Settings::from(&a);
        assert_eq!(
            (s.runs, s.devices, s.memory_devices, s.downlinks),
            (5, 20, 1_000_000, 2)
        );
    }
}
