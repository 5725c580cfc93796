//! `ternctl simulate join|uplink|device`: a simulated end device heard by simulated
//! gateways (Semtech UDP or Basics Station) talking to a real Gateway Server, for operators
//! checking a deployment. The device's keys come from the servers (like `end-devices get
//! --show-keys`, which needs application:devices:read-keys), from flags, or from a state
//! file written by an earlier run; each step is printed as it happens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use lorawan::crypto::{FOptsCounterVariant, SessionKeys10, SessionKeys11};
use lorawan::{Aes128Key, DevAddr, Eui64};
use tern_api::FieldMask;
use tern_api::v3::{DeviceClass as ProtoClass, EndDevice, GetEndDeviceRequest, KeyEnvelope};
use tern_simulator::station::{Station, StationConfig};
use tern_simulator::{
    Device, DeviceClass, DeviceConfig, Keys, SavedDevice, SimGateway, SimulatedDevice, Step,
    UdpGateway, UdpGatewayConfig, Version,
};
use tonic::Code;

use crate::UsageError;
use crate::client::{Api, RpcResult, rpc_error};
use crate::output::OutputFormat;

/// `ternctl simulate` subcommands.
#[derive(Subcommand, Debug)]
pub enum SimulateCommand {
    /// One OTAA join: a join-request through every gateway, the join-accept in RX1 or RX2.
    Join(Box<JoinArgs>),
    /// One data uplink from an ABP device or a saved session (`--state`), listening in its
    /// receive windows.
    Uplink(Box<UplinkArgs>),
    /// A device: join (OTAA), then uplinks at an interval; class C listens in between.
    Device(Box<DeviceArgs>),
}

/// Which device, its keys, and the gateways that hear it.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("link").required(true).args(["udp", "station"])))]
pub struct CommonArgs {
    /// The application ID.
    pub application_id: String,
    /// The device ID.
    pub device_id: String,
    /// A gateway hearing the device (EUI, 16 hex digits); repeat for several.
    #[arg(long = "gateway-eui", value_name = "EUI", required = true)]
    pub gateway_eui: Vec<String>,
    /// RSSI (dBm) at each gateway, in the order of --gateway-eui; one value applies to all.
    #[arg(long, allow_negative_numbers = true, value_name = "DBM")]
    pub rssi: Vec<i32>,
    /// SNR (dB) at each gateway, in the order of --gateway-eui; one value applies to all.
    #[arg(long, allow_negative_numbers = true, value_name = "DB")]
    pub snr: Vec<f64>,
    /// The Gateway Server's Semtech UDP address (host:port, e.g. localhost:1700).
    #[arg(long, value_name = "HOST:PORT")]
    pub udp: Option<String>,
    /// The Gateway Server's Basics Station URL (ws://host:1887) instead of --udp.
    #[arg(long, value_name = "URL")]
    pub station: Option<String>,
    /// API key of the gateways for Basics Station (sent as a bearer token).
    #[arg(long, requires = "station", value_name = "KEY")]
    pub gateway_api_key: Option<String>,
    /// Device class (default: the class the Network Server has for the device, else A).
    #[arg(long, value_enum)]
    pub class: Option<ClassArg>,
    /// Save the session (keys, FCnt, DevNonce, radio settings) here and continue from it
    /// next time. The file holds session keys: it is written readable by its owner only.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Keys and settings from flags instead of the servers.
    #[command(flatten)]
    pub keys: KeyArgs,
}

/// Keys and identifiers given on the command line (no server is asked then).
#[derive(Args, Debug, Default)]
pub struct KeyArgs {
    /// LoRaWAN version of the device: 1.0, 1.0.x or 1.1 (default 1.0.3).
    #[arg(long, value_name = "VERSION")]
    pub lorawan_version: Option<String>,
    /// DevEUI (OTAA).
    #[arg(long, value_name = "EUI")]
    pub dev_eui: Option<String>,
    /// JoinEUI (OTAA; default 0000000000000000).
    #[arg(long, value_name = "EUI")]
    pub join_eui: Option<String>,
    /// AppKey: an OTAA device from flags (needs --dev-eui).
    #[arg(long, value_name = "HEX", requires = "dev_eui")]
    pub app_key: Option<String>,
    /// NwkKey (OTAA, LoRaWAN 1.1).
    #[arg(long, value_name = "HEX", requires = "app_key")]
    pub nwk_key: Option<String>,
    /// DevAddr: an ABP device from flags (needs --nwk-s-key and --app-s-key).
    #[arg(long, value_name = "HEX", requires_all = ["nwk_s_key", "app_s_key"], conflicts_with = "app_key")]
    pub dev_addr: Option<String>,
    /// NwkSKey (1.0.x) or FNwkSIntKey (1.1), ABP.
    #[arg(long, value_name = "HEX", requires = "dev_addr")]
    pub nwk_s_key: Option<String>,
    /// SNwkSIntKey (ABP, 1.1).
    #[arg(long, value_name = "HEX", requires = "dev_addr")]
    pub s_nwk_s_int_key: Option<String>,
    /// NwkSEncKey (ABP, 1.1).
    #[arg(long, value_name = "HEX", requires = "dev_addr")]
    pub nwk_s_enc_key: Option<String>,
    /// AppSKey, ABP.
    #[arg(long, value_name = "HEX", requires = "dev_addr")]
    pub app_s_key: Option<String>,
    /// The DevNonce of the first join-request (default: from --state, else from the clock).
    #[arg(long, value_name = "N")]
    pub dev_nonce: Option<u16>,
    /// The FCnt of the first uplink (default: from --state or the server's session).
    #[arg(long, value_name = "N")]
    pub f_cnt: Option<u32>,
}

/// The uplink to send.
#[derive(Args, Debug)]
pub struct PayloadArgs {
    /// Application payload, hex.
    #[arg(long, default_value = "", value_name = "HEX")]
    pub payload: String,
    /// FPort (1..=223).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=223))]
    pub port: u8,
    /// Send confirmed uplinks.
    #[arg(long)]
    pub confirmed: bool,
    /// Set the ADR bit (the Network Server may then change data rate, power, channels).
    #[arg(long)]
    pub adr: bool,
    /// Ask for a LinkCheckAns (LinkCheckReq in the first uplink).
    #[arg(long)]
    pub link_check: bool,
    /// Ask for the network time (DeviceTimeReq in the first uplink).
    #[arg(long)]
    pub device_time: bool,
}

/// `ternctl simulate join`.
#[derive(Args, Debug)]
pub struct JoinArgs {
    #[command(flatten)]
    common: CommonArgs,
}

/// `ternctl simulate uplink`.
#[derive(Args, Debug)]
pub struct UplinkArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    payload: PayloadArgs,
}

/// `ternctl simulate device`.
#[derive(Args, Debug)]
pub struct DeviceArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    payload: PayloadArgs,
    /// Number of uplinks after the join.
    #[arg(long, default_value_t = 1)]
    uplinks: u32,
    /// Time between uplinks (class C listens meanwhile), e.g. 5s, 1m.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

/// The `--class` values.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassArg {
    /// Class A.
    A,
    /// Class C.
    C,
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

fn parse<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e| usage(format!("--{flag}: {e}")))
}

fn parse_key(flag: &str, v: &str) -> Result<Aes128Key> {
    parse(flag, v)
}

/// The device as it starts: an OTAA device to join or a ready session.
struct Source {
    config: DeviceConfig,
    session: Option<(DevAddr, Keys, u32)>,
    class: Option<DeviceClass>,
    /// The root keys are known: the device can join.
    can_join: bool,
}

fn version_of(s: &str) -> Result<Version> {
    match s {
        "1.0" | "1.0.0" | "1.0.1" | "1.0.2" | "1.0.3" | "1.0.4" => Ok(Version::V1_0),
        "1.1" | "1.1.0" => Ok(Version::V1_1),
        other => Err(usage(format!(
            "--lorawan-version: {other:?} is not 1.0.x or 1.1"
        ))),
    }
}

/// A seed for the DevNonce when none is saved or given: LoRaWAN 1.1 Join Servers want it
/// to grow, so it follows the clock (seconds); 1.0.x ones only refuse repeats.
fn clock_dev_nonce() -> u16 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs() as u16
}

/// The device from flags only, or `None` when the flags do not define one.
fn from_flags(k: &KeyArgs) -> Result<Option<Source>> {
    let version = version_of(k.lorawan_version.as_deref().unwrap_or("1.0.3"))?;
    let dev_eui: Eui64 = match &k.dev_eui {
        Some(e) => parse("dev-eui", e)?,
        None => Eui64::default(),
    };
    let join_eui: Eui64 = match &k.join_eui {
        Some(e) => parse("join-eui", e)?,
        None => Eui64::default(),
    };
    if let Some(app_key) = &k.app_key {
        let mut config =
            DeviceConfig::otaa(dev_eui, join_eui, version, parse_key("app-key", app_key)?);
        config.nwk_key = k
            .nwk_key
            .as_deref()
            .map(|v| parse_key("nwk-key", v))
            .transpose()?;
        if version == Version::V1_1 && config.nwk_key.is_none() {
            return Err(usage("--nwk-key: a LoRaWAN 1.1 device needs its NwkKey"));
        }
        config.f_opts_variant = FOptsCounterVariant::Original;
        return Ok(Some(Source {
            config,
            session: None,
            class: None,
            can_join: true,
        }));
    }
    let Some(dev_addr) = &k.dev_addr else {
        return Ok(None);
    };
    let dev_addr: DevAddr = parse("dev-addr", dev_addr)?;
    let nwk = parse_key("nwk-s-key", k.nwk_s_key.as_deref().unwrap_or_default())?;
    let app = parse_key("app-s-key", k.app_s_key.as_deref().unwrap_or_default())?;
    let keys = match version {
        Version::V1_0 => Keys::V1_0(SessionKeys10 {
            nwk_s_key: nwk,
            app_s_key: app,
        }),
        Version::V1_1 => {
            let need = |flag: &str, v: &Option<String>| match v {
                Some(v) => parse_key(flag, v),
                None => Err(usage(format!(
                    "--{flag}: a LoRaWAN 1.1 ABP device needs it"
                ))),
            };
            Keys::V1_1(SessionKeys11 {
                f_nwk_s_int_key: nwk,
                s_nwk_s_int_key: need("s-nwk-s-int-key", &k.s_nwk_s_int_key)?,
                nwk_s_enc_key: need("nwk-s-enc-key", &k.nwk_s_enc_key)?,
                app_s_key: app,
            })
        }
    };
    Ok(Some(Source {
        config: DeviceConfig::otaa(dev_eui, join_eui, version, Aes128Key::default()),
        session: Some((dev_addr, keys, 0)),
        class: None,
        can_join: false,
    }))
}

/// The clear key of an envelope; a wrapped one cannot be used here.
fn clear_key(what: &str, env: Option<&KeyEnvelope>) -> Result<Option<Aes128Key>> {
    let Some(env) = env else { return Ok(None) };
    if env.key.is_empty() {
        if env.encrypted_key.is_empty() {
            return Ok(None);
        }
        bail!(
            "the server returned {what} wrapped with KEK {:?}; pass the key with a flag instead",
            env.kek_label
        );
    }
    let bytes: [u8; 16] = env
        .key
        .as_slice()
        .try_into()
        .map_err(|_| anyhow!("the server returned a {what} of {} bytes", env.key.len()))?;
    Ok(Some(Aes128Key(bytes)))
}

/// The device's identifiers, version, root keys and session from the IS, JS, NS and AS.
async fn from_servers(api: &Api, app: &str, dev: &str) -> Result<Source> {
    let ids = tern_api::v3::EndDeviceIdentifiers::new(app, dev);
    let name = format!("device {app}/{dev}");
    let req = |paths: &[&str]| GetEndDeviceRequest {
        end_device_ids: Some(ids.clone()),
        field_mask: Some(FieldMask::new(paths.iter().copied())),
    };
    let reg = api
        .devices()
        .get(req(&[
            "ids",
            "lorawan_version",
            "supports_join",
            "supports_class_c",
            "network_server_address",
            "application_server_address",
            "join_server_address",
        ]))
        .await
        .ctx(|| format!("get {name} from the Identity Server"))?;
    let got = |r: Result<tonic::Response<EndDevice>, tonic::Status>, server: &str| match r {
        Ok(d) => Ok(Some(d.into_inner())),
        Err(s) if matches!(s.code(), Code::NotFound | Code::Unimplemented) => Ok(None),
        Err(s) => Err(rpc_error(&format!("get {name} from the {server}"), s)),
    };
    let ids = reg.ids.clone().unwrap_or_default();
    let eui = |b: &[u8]| -> Eui64 { b.try_into().map(Eui64).unwrap_or_default() };
    let version = if reg.lorawan_version == tern_api::v3::MacVersion::MacV11 as i32 {
        Version::V1_1
    } else {
        Version::V1_0
    };
    let ns = got(
        api.ns_devices(&reg.network_server_address)?
            .get(req(&[
                "mac_settings",
                "session.dev_addr",
                "session.last_f_cnt_up",
                "session.keys.f_nwk_s_int_key",
                "session.keys.s_nwk_s_int_key",
                "session.keys.nwk_s_enc_key",
                "last_seen_at",
            ]))
            .await,
        "Network Server",
    )?
    .unwrap_or_default();
    let class = ns
        .mac_settings
        .as_ref()
        .and_then(|m| m.class)
        .map(|c| {
            if c == ProtoClass::ClassC as i32 {
                DeviceClass::C
            } else {
                DeviceClass::A
            }
        })
        .or(reg.supports_class_c.then_some(DeviceClass::C));
    let mut config = DeviceConfig::otaa(
        eui(&ids.dev_eui),
        eui(&ids.join_eui),
        version,
        Aes128Key::default(),
    );
    config.f_opts_variant = FOptsCounterVariant::Original;
    if reg.supports_join {
        let js = got(
            api.js_devices(&reg.join_server_address)?
                .get(req(&["root_keys"]))
                .await,
            "Join Server",
        )?
        .ok_or_else(|| anyhow!("{name}: the Join Server has no root keys for it"))?;
        let root = js.root_keys.unwrap_or_default();
        config.app_key = clear_key("AppKey", root.app_key.as_ref())?
            .ok_or_else(|| anyhow!("{name}: the Join Server returned no AppKey"))?;
        config.nwk_key = clear_key("NwkKey", root.nwk_key.as_ref())?;
        if version == Version::V1_1 && config.nwk_key.is_none() {
            // A 1.1 device registered with one root key uses it as NwkKey too.
            config.nwk_key = Some(config.app_key);
        }
    }
    // The current session, if the device has one (ABP, or OTAA joined before).
    let mut session = None;
    if let Some(s) = &ns.session
        && let Ok(addr) = <[u8; 4]>::try_from(s.dev_addr.as_slice())
    {
        let as_dev = got(
            api.as_devices(&reg.application_server_address)?
                .get(req(&["session.dev_addr", "session.keys.app_s_key"]))
                .await,
            "Application Server",
        )?
        .unwrap_or_default();
        let nk = s.keys.clone().unwrap_or_default();
        let app_s_key = as_dev
            .session
            .as_ref()
            .and_then(|s| s.keys.as_ref())
            .map(|k| clear_key("AppSKey", k.app_s_key.as_ref()))
            .transpose()?
            .flatten();
        let f_nwk = clear_key("FNwkSIntKey", nk.f_nwk_s_int_key.as_ref())?;
        if let (Some(f_nwk), Some(app_s_key)) = (f_nwk, app_s_key) {
            let keys = match (
                clear_key("SNwkSIntKey", nk.s_nwk_s_int_key.as_ref())?,
                clear_key("NwkSEncKey", nk.nwk_s_enc_key.as_ref())?,
            ) {
                (Some(s_nwk), Some(enc)) => Keys::V1_1(SessionKeys11 {
                    f_nwk_s_int_key: f_nwk,
                    s_nwk_s_int_key: s_nwk,
                    nwk_s_enc_key: enc,
                    app_s_key,
                }),
                _ => Keys::V1_0(SessionKeys10 {
                    nwk_s_key: f_nwk,
                    app_s_key,
                }),
            };
            // FCnt 0 may have been received or not; once the device was seen, go past it.
            let next = if ns.last_seen_at.is_some() {
                s.last_f_cnt_up.wrapping_add(1)
            } else {
                0
            };
            session = Some((DevAddr(addr), keys, next));
        }
    }
    if !reg.supports_join && session.is_none() {
        bail!("{name} is an ABP device but its session keys could not be read");
    }
    Ok(Source {
        config,
        session,
        class,
        can_join: reg.supports_join,
    })
}

fn read_state(path: &Path) -> Result<Option<SavedDevice>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{}: not a simulator state file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

fn write_state(path: &Path, saved: &SavedDevice) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let json = serde_json::to_vec_pretty(saved)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    file.write_all(&json)
        .with_context(|| format!("write {}", path.display()))
}

async fn resolve_udp(addr: &str) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| usage(format!("--udp: cannot resolve {addr:?}: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| usage(format!("--udp: {addr:?} resolves to no address")))
}

/// Connects the gateways the flags name.
async fn gateways(c: &CommonArgs) -> Result<Vec<SimGateway>> {
    let n = c.gateway_eui.len();
    let pick = |flag: &str, len: usize| -> Result<()> {
        if len > 1 && len != n {
            return Err(usage(format!(
                "--{flag}: {len} values for {n} gateways (give one, or one per gateway)"
            )));
        }
        Ok(())
    };
    pick("rssi", c.rssi.len())?;
    pick("snr", c.snr.len())?;
    let udp = match &c.udp {
        Some(a) => Some(resolve_udp(a).await?),
        None => None,
    };
    let mut out = Vec::with_capacity(n);
    for (i, eui) in c.gateway_eui.iter().enumerate() {
        let eui: Eui64 = parse("gateway-eui", eui)?;
        let rssi = c.rssi.get(i).or(c.rssi.first()).copied().unwrap_or(-60);
        let snr = c.snr.get(i).or(c.snr.first()).copied().unwrap_or(9.5);
        let gw = if let Some(server) = udp {
            let g = UdpGateway::connect(UdpGatewayConfig::new(eui.0, server))
                .await
                .with_context(|| {
                    format!("gateway {eui}: no PULL_ACK from {server} (is the Gateway Server listening?)")
                })?;
            SimGateway::udp(g, rssi, snr)
        } else {
            let lns = c.station.clone().unwrap_or_default();
            let s = Station::connect(StationConfig {
                eui: eui.0,
                lns: lns.clone(),
                api_key: c.gateway_api_key.clone(),
                timeout: Duration::from_secs(10),
            })
            .await
            .with_context(|| format!("gateway {eui}: connect to {lns}"))?;
            SimGateway::station(s, eui.0, rssi, snr)
        };
        out.push(gw);
    }
    Ok(out)
}

/// Prints steps as they happen: one line each, or one JSON object per line.
fn print(out: OutputFormat, steps: Vec<Step>) {
    for step in steps {
        match out {
            OutputFormat::Json => match serde_json::to_string(&step) {
                Ok(j) => println!("{j}"),
                Err(_) => println!("{step}"),
            },
            OutputFormat::Table => println!("{step}"),
        }
    }
}

/// Builds the simulated device: flags, then the state file, then the servers. Also
/// returns whether it can join (root keys known).
async fn build(
    server: Option<&str>,
    c: &CommonArgs,
    need_session: bool,
) -> Result<(SimulatedDevice, bool)> {
    let mut saved = match &c.state {
        Some(p) => read_state(p)?,
        None => None,
    };
    if let (Some(s), Some(n)) = (saved.as_mut(), c.keys.dev_nonce) {
        s.next_dev_nonce = n;
    }
    let flags = from_flags(&c.keys)?;
    let source = match flags {
        Some(s) => s,
        // A saved session needs no server for an uplink.
        None if need_session && saved.as_ref().is_some_and(|s| s.session.is_some()) => {
            let s = saved.as_ref().expect("checked");
            let version = version_of(&s.version)?;
            Source {
                config: DeviceConfig::otaa(s.dev_eui, s.join_eui, version, Aes128Key::default()),
                session: None,
                class: Some(s.class),
                can_join: false,
            }
        }
        None => {
            let (resolved, _) = crate::resolve(server)?;
            let api = Api::connect(&resolved)
                .await
                .with_context(|| format!("connecting to {}", resolved.server))?;
            from_servers(&api, &c.application_id, &c.device_id).await?
        }
    };
    let mut config = source.config;
    config.first_dev_nonce = c
        .keys
        .dev_nonce
        .or(saved.as_ref().map(|s| s.next_dev_nonce))
        .unwrap_or_else(clock_dev_nonce);
    let class = c
        .class
        .map(|c| match c {
            ClassArg::A => DeviceClass::A,
            ClassArg::C => DeviceClass::C,
        })
        .or(source.class)
        .or(saved.as_ref().map(|s| s.class))
        .unwrap_or_default();
    let gws = gateways(c).await?;
    // A saved session of the same device continues (its FCnt, radio settings); flags with
    // a session (ABP) start over unless the state file has one for the same DevAddr.
    let mut sim = match (&saved, &source.session) {
        (Some(s), session)
            if s.session.is_some()
                && (session.is_none()
                    || session.as_ref().map(|x| x.0) == s.session.as_ref().map(|x| x.dev_addr)) =>
        {
            SimulatedDevice::restore(s, config, gws)?
        }
        (_, Some((dev_addr, keys, f_cnt))) => {
            let mut d = Device::abp(config, *dev_addr, *keys);
            d.set_f_cnt_up(*f_cnt)?;
            SimulatedDevice::new(d, gws, class)?
        }
        (_, None) => SimulatedDevice::new(Device::new(config), gws, class)?,
    };
    sim.set_class(class);
    if let Some(f) = c.keys.f_cnt {
        sim.set_f_cnt_up(f)
            .map_err(|_| usage("--f-cnt: the device has no session yet"))?;
    }
    Ok((sim, source.can_join))
}

fn save(c: &CommonArgs, sim: &SimulatedDevice) -> Result<()> {
    match &c.state {
        Some(p) => write_state(p, &sim.save()),
        None => Ok(()),
    }
}

async fn join(out: OutputFormat, c: &CommonArgs, sim: &mut SimulatedDevice) -> Result<()> {
    let result = sim.join().await;
    print(out, sim.take_log());
    save(c, sim)?;
    result.map(|_| ()).map_err(|e| {
        anyhow!(
            "{e}: check the device's keys and DevNonce, and that the gateways are registered \
             and connected to this Gateway Server"
        )
    })
}

/// Queues the device-initiated MAC requests the flags ask for.
fn request_mac(p: &PayloadArgs, sim: &mut SimulatedDevice) {
    if p.link_check {
        sim.mac.request(lorawan::MacCommand::LinkCheckReq);
    }
    if p.device_time {
        sim.mac.request(lorawan::MacCommand::DeviceTimeReq);
    }
}

fn payload_of(p: &PayloadArgs) -> Result<Vec<u8>> {
    hex::decode(&p.payload).map_err(|e| usage(format!("--payload: not hex: {e}")))
}

async fn uplink(
    out: OutputFormat,
    c: &CommonArgs,
    p: &PayloadArgs,
    payload: &[u8],
    sim: &mut SimulatedDevice,
) -> Result<()> {
    sim.adr = p.adr;
    let result = sim.uplink(payload, p.port, p.confirmed).await;
    print(out, sim.take_log());
    save(c, sim)?;
    let result = result?;
    if p.confirmed && !result.acked {
        bail!(
            "confirmed uplink FCnt {} was not acknowledged",
            result.f_cnt
        );
    }
    Ok(())
}

/// Runs a `simulate` subcommand; `server` is the --server flag (used only when the device
/// comes from the servers).
pub async fn run(server: Option<&str>, out: OutputFormat, cmd: SimulateCommand) -> Result<()> {
    match cmd {
        SimulateCommand::Join(a) => {
            let (mut sim, can_join) = build(server, &a.common, false).await?;
            if !can_join {
                return Err(usage(
                    "the device has no root keys (ABP): it cannot join; give --app-key for OTAA",
                ));
            }
            join(out, &a.common, &mut sim).await
        }
        SimulateCommand::Uplink(a) => {
            let payload = payload_of(&a.payload)?;
            let (mut sim, _) = build(server, &a.common, true).await?;
            request_mac(&a.payload, &mut sim);
            if sim.device().session().is_none() {
                bail!(
                    "the device has no session: run `ternctl simulate join ... --state FILE` \
                     first, or give an ABP session with --dev-addr/--nwk-s-key/--app-s-key"
                );
            }
            uplink(out, &a.common, &a.payload, &payload, &mut sim).await
        }
        SimulateCommand::Device(a) => {
            let payload = payload_of(&a.payload)?;
            let (mut sim, can_join) = build(server, &a.common, false).await?;
            if can_join {
                join(out, &a.common, &mut sim).await?;
            } else if sim.device().session().is_none() {
                bail!("the device has neither root keys nor a session");
            }
            request_mac(&a.payload, &mut sim);
            let mut failed = None;
            for i in 0..a.uplinks {
                if let Err(e) = uplink(out, &a.common, &a.payload, &payload, &mut sim).await {
                    // An unacknowledged confirmed uplink fails the run but not the next ones.
                    eprintln!("error: {e:#}");
                    failed = Some(e);
                }
                if i + 1 < a.uplinks {
                    if sim.class() == DeviceClass::C {
                        sim.listen(a.interval).await;
                        print(out, sim.take_log());
                        save(&a.common, &sim)?;
                    } else {
                        tokio::time::sleep(a.interval).await;
                    }
                }
            }
            match failed {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abp_and_otaa_from_flags() {
        let k = KeyArgs {
            dev_addr: Some("26011234".into()),
            nwk_s_key: Some("11".repeat(16)),
            app_s_key: Some("22".repeat(16)),
            ..Default::default()
        };
        let s = from_flags(&k).unwrap().unwrap();
        let (addr, keys, f_cnt) = s.session.unwrap();
        assert_eq!(addr.to_string(), "26011234");
        assert!(matches!(keys, Keys::V1_0(_)));
        assert_eq!(f_cnt, 0);
        // 1.1 ABP needs all its keys: a usage error.
        let k = KeyArgs {
            lorawan_version: Some("1.1".into()),
            ..k
        };
        let e = from_flags(&k).err().unwrap();
        assert!(e.is::<UsageError>(), "{e}");
        let k = KeyArgs {
            dev_eui: Some("70B3D57ED0000001".into()),
            app_key: Some("2B7E151628AED2A6ABF7158809CF4F3C".into()),
            ..Default::default()
        };
        let s = from_flags(&k).unwrap().unwrap();
        assert!(s.session.is_none());
        assert_eq!(s.config.version, Version::V1_0);
        assert!(from_flags(&KeyArgs::default()).unwrap().is_none());
        let bad = KeyArgs {
            dev_eui: Some("70B3D57ED0000001".into()),
            app_key: Some("2B7E".into()),
            ..Default::default()
        };
        assert!(
            from_flags(&bad)
                .err()
                .unwrap()
                .to_string()
                .contains("--app-key")
        );
    }

    #[test]
    fn keys_in_envelopes() {
        let clear = KeyEnvelope {
            key: vec![7; 16],
            ..Default::default()
        };
        assert_eq!(
            clear_key("AppKey", Some(&clear)).unwrap(),
            Some(Aes128Key([7; 16]))
        );
        let wrapped = KeyEnvelope {
            kek_label: "as:default".into(),
            encrypted_key: vec![1; 24],
            key: Vec::new(),
        };
        let e = clear_key("AppSKey", Some(&wrapped))
            .unwrap_err()
            .to_string();
        assert!(e.contains("as:default"), "{e}");
        assert_eq!(clear_key("AppKey", None).unwrap(), None);
    }
}
