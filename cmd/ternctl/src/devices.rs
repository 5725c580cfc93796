//! `ternctl end-devices ...`: one device spread over the registries that each hold a part of
//! it — the IS (registry fields), the JS (root keys), the NS (MAC settings, network session)
//! and the AS (AppSKey). Keys never go to the IS. A create that fails halfway is undone.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::Result;
use clap::{Args, Subcommand};
use lorawan::{Aes128Key, DevAddr, Eui64};
use tern_api::FieldMask;
use tern_api::v3::{
    ApplicationIdentifiers, CreateEndDeviceRequest, EndDevice, EndDeviceIdentifiers,
    GetEndDeviceRequest, KeyEnvelope, ListEndDevicesRequest, MacSettings, MacVersion, PhyVersion,
    RootKeys, Session, SessionKeys, UpdateEndDeviceRequest,
};
use tonic::{Code, Status};

use crate::Ctx;
use crate::client::{Api, RpcResult, rpc_error};
use crate::entities::{CommonFields, ListArgs, collect_pages};
use crate::output;

/// `ternctl end-devices` subcommands.
#[derive(Subcommand, Debug)]
pub enum DevicesCommand {
    /// Decode a payload with the device's uplink formatter (or one to try), without traffic.
    TestFormatter(crate::appserver::TestFormatterArgs),
    /// Create a device: registry in the IS, root keys in the JS, MAC settings and ABP network
    /// session in the NS, ABP AppSKey in the AS; undone everywhere if one step fails.
    Create(Box<CreateArgs>),
    /// Show a device, merged from the registries that hold its parts.
    Get {
        /// The application ID.
        application_id: String,
        /// The device ID.
        device_id: String,
        /// Also show root and session keys (needs application:devices:read-keys).
        #[arg(long)]
        show_keys: bool,
    },
    /// List an application's devices.
    List {
        /// The application ID.
        application_id: String,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Change a device's registry fields, class, or root keys.
    Update(Box<UpdateArgs>),
    /// Delete a device from every registry.
    Delete {
        /// The application ID.
        application_id: String,
        /// The device ID.
        device_id: String,
    },
    /// Create many devices from a CSV or JSON file.
    #[command(long_about = crate::import::IMPORT_HELP)]
    Import(crate::import::ImportArgs),
}

/// The flags of `end-devices create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The application ID.
    pub application_id: String,
    /// The device ID.
    pub device_id: String,
    /// DevEUI (16 hex digits).
    #[arg(long)]
    pub dev_eui: Option<String>,
    /// JoinEUI / AppEUI (16 hex digits); required for OTAA.
    #[arg(long, alias = "app-eui")]
    pub join_eui: Option<String>,
    /// Frequency plan ID, e.g. EU_863_870.
    #[arg(long)]
    pub frequency_plan: String,
    /// LoRaWAN MAC version: 1.0, 1.0.1, 1.0.2, 1.0.3, 1.0.4 or 1.1.
    #[arg(long)]
    pub lorawan_version: String,
    /// Regional Parameters version, e.g. RP002-1.0.3, RP001-1.0.2-b, 1.0.3-a.
    #[arg(long)]
    pub lorawan_phy_version: String,
    /// AppKey (OTAA).
    #[arg(long, conflicts_with = "abp")]
    pub app_key: Option<String>,
    /// NwkKey (OTAA, LoRaWAN 1.1).
    #[arg(long, conflicts_with = "abp")]
    pub nwk_key: Option<String>,
    /// Activation by personalization: give --dev-addr and the session keys.
    #[arg(long, requires_all = ["dev_addr", "nwk_s_key", "app_s_key"])]
    pub abp: bool,
    /// DevAddr (ABP, 8 hex digits).
    #[arg(long, requires = "abp")]
    pub dev_addr: Option<String>,
    /// NwkSKey (ABP 1.0.x), or FNwkSIntKey (ABP 1.1).
    #[arg(long, alias = "f-nwk-s-int-key", requires = "abp")]
    pub nwk_s_key: Option<String>,
    /// SNwkSIntKey (ABP 1.1).
    #[arg(long, requires = "abp")]
    pub s_nwk_s_int_key: Option<String>,
    /// NwkSEncKey (ABP 1.1).
    #[arg(long, requires = "abp")]
    pub nwk_s_enc_key: Option<String>,
    /// AppSKey (ABP).
    #[arg(long, requires = "abp")]
    pub app_s_key: Option<String>,
    /// The device supports class B.
    #[arg(long)]
    pub class_b: bool,
    /// The device supports class C (and uses it).
    #[arg(long)]
    pub class_c: bool,
    #[command(flatten)]
    pub fields: CommonFields,
    /// Network Server holding the device's MAC state (host:port); default: the server.
    #[arg(long)]
    pub network_server_address: Option<String>,
    /// Application Server holding the device's AppSKey; default: the server.
    #[arg(long)]
    pub application_server_address: Option<String>,
    /// Join Server holding the device's root keys; default: the server.
    #[arg(long)]
    pub join_server_address: Option<String>,
    /// Only create the IS registry entry (no keys; for deployments without JS/NS/AS here).
    #[arg(long, conflicts_with_all = ["app_key", "nwk_key", "abp"])]
    pub registry_only: bool,
}

/// The flags of `end-devices update`.
#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The application ID.
    pub application_id: String,
    /// The device ID.
    pub device_id: String,
    #[command(flatten)]
    pub fields: CommonFields,
    /// New frequency plan ID.
    #[arg(long)]
    pub frequency_plan: Option<String>,
    /// New LoRaWAN MAC version.
    #[arg(long)]
    pub lorawan_version: Option<String>,
    /// New Regional Parameters version.
    #[arg(long)]
    pub lorawan_phy_version: Option<String>,
    /// Class B support.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub class_b: Option<bool>,
    /// Class C support (and use).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub class_c: Option<bool>,
    /// New AppKey (JS).
    #[arg(long)]
    pub app_key: Option<String>,
    /// New NwkKey (JS, 1.1).
    #[arg(long)]
    pub nwk_key: Option<String>,
    /// Only update the IS registry entry.
    #[arg(long, conflicts_with_all = ["app_key", "nwk_key"])]
    pub registry_only: bool,
}

/// A field that is wrong, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field (CSV column / JSON key / flag name without dashes).
    pub field: String,
    /// Why it is wrong.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn field_err(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// How a device activates, with its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Over the air; root keys are optional (without them the JS part is not written).
    Otaa {
        /// AppKey.
        app_key: Option<Aes128Key>,
        /// NwkKey (1.1).
        nwk_key: Option<Aes128Key>,
    },
    /// By personalization, with its session.
    Abp {
        /// DevAddr.
        dev_addr: DevAddr,
        /// NwkSKey (1.0.x) or FNwkSIntKey (1.1).
        f_nwk_s_int_key: Aes128Key,
        /// SNwkSIntKey (1.1).
        s_nwk_s_int_key: Option<Aes128Key>,
        /// NwkSEncKey (1.1).
        nwk_s_enc_key: Option<Aes128Key>,
        /// AppSKey.
        app_s_key: Aes128Key,
    },
}

/// Addresses of the servers holding a device's parts; empty means the default server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Servers {
    /// The Join Server.
    pub js: String,
    /// The Network Server.
    pub ns: String,
    /// The Application Server.
    pub as_: String,
}

impl Servers {
    /// The addresses a device's registry entry names.
    pub fn of_device(d: &EndDevice) -> Self {
        Self {
            js: d.join_server_address.clone(),
            ns: d.network_server_address.clone(),
            as_: d.application_server_address.clone(),
        }
    }

    fn of(&self, part: Part) -> &str {
        match part {
            Part::Is => "",
            Part::Js => &self.js,
            Part::Ns => &self.ns,
            Part::As => &self.as_,
        }
    }
}

/// A validated device, ready to be created.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSpec {
    /// The application ID.
    pub application_id: String,
    /// The device ID.
    pub device_id: String,
    /// DevEUI.
    pub dev_eui: Option<Eui64>,
    /// JoinEUI.
    pub join_eui: Option<Eui64>,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Attributes.
    pub attributes: HashMap<String, String>,
    /// Frequency plan ID.
    pub frequency_plan_id: String,
    /// MAC version.
    pub mac_version: MacVersion,
    /// PHY version.
    pub phy_version: PhyVersion,
    /// Class B support.
    pub class_b: bool,
    /// Class C support.
    pub class_c: bool,
    /// Activation and keys.
    pub activation: Activation,
    /// Where its JS, NS and AS parts live.
    pub servers: Servers,
}

/// The raw text of a device's fields, by column name, as flags or a file row give them.
pub type RawDevice = HashMap<String, String>;

/// Every field a device can be given, in the order the docs list them.
pub const COLUMNS: &[&str] = &[
    "device_id",
    "dev_eui",
    "join_eui",
    "name",
    "description",
    "frequency_plan_id",
    "lorawan_version",
    "lorawan_phy_version",
    "app_key",
    "nwk_key",
    "dev_addr",
    "nwk_s_key",
    "s_nwk_s_int_key",
    "nwk_s_enc_key",
    "app_s_key",
    "supports_class_b",
    "supports_class_c",
    "attributes",
    "network_server_address",
    "application_server_address",
    "join_server_address",
];

/// Other spellings accepted for columns.
pub fn canonical_column(name: &str) -> Option<&'static str> {
    let n = name.trim().to_ascii_lowercase().replace('-', "_");
    let n = match n.as_str() {
        "app_eui" => "join_eui",
        "f_nwk_s_int_key" => "nwk_s_key",
        "frequency_plan" => "frequency_plan_id",
        "mac_version" => "lorawan_version",
        "phy_version" => "lorawan_phy_version",
        "class_b" => "supports_class_b",
        "class_c" => "supports_class_c",
        other => other,
    };
    COLUMNS.iter().copied().find(|c| *c == n)
}

/// Parses `1.0.3` (or `MAC_V1_0_3`).
pub fn parse_mac_version(s: &str) -> Result<MacVersion, String> {
    let t = s.trim();
    let name = match t.trim_start_matches(['v', 'V']) {
        "1.0" | "1.0.0" => "MAC_V1_0",
        "1.0.1" => "MAC_V1_0_1",
        "1.0.2" => "MAC_V1_0_2",
        "1.0.3" => "MAC_V1_0_3",
        "1.0.4" => "MAC_V1_0_4",
        "1.1" | "1.1.0" => "MAC_V1_1",
        _ => t,
    };
    MacVersion::from_str_name(&name.to_ascii_uppercase())
        .filter(|v| *v as i32 != 0)
        .ok_or_else(|| {
            format!("unknown LoRaWAN version {s:?}: use 1.0, 1.0.1, 1.0.2, 1.0.3, 1.0.4 or 1.1")
        })
}

/// Parses a Regional Parameters version: `RP002-1.0.3`, `RP001-1.0.2-b`, `TS001-1.0.1`,
/// the short `1.0.2-b`, or the proto name `RP002_V1_0_3`.
pub fn parse_phy_version(s: &str) -> Result<PhyVersion, String> {
    let t = s.trim().to_ascii_lowercase();
    let short = t
        .strip_prefix("rp001-")
        .or_else(|| t.strip_prefix("ts001-"))
        .map(|r| ("rp001", r))
        .or_else(|| t.strip_prefix("rp002-").map(|r| ("rp002", r)));
    let name = match short.unwrap_or(("", t.as_str())) {
        ("" | "rp001", "1.0" | "1.0.0") => "TS001_V1_0",
        ("" | "rp001", "1.0.1") => "TS001_V1_0_1",
        ("" | "rp001", "1.0.2" | "1.0.2-a") => "RP001_V1_0_2",
        ("" | "rp001", "1.0.2-b") => "RP001_V1_0_2_REV_B",
        ("" | "rp001", "1.0.3" | "1.0.3-a") => "RP001_V1_0_3_REV_A",
        ("" | "rp001", "1.1" | "1.1-a" | "1.1.0-a") => "RP001_V1_1_REV_A",
        ("" | "rp001", "1.1-b" | "1.1.0-b") => "RP001_V1_1_REV_B",
        ("rp002", "1.0.0") => "RP002_V1_0_0",
        ("rp002", "1.0.1") => "RP002_V1_0_1",
        ("rp002", "1.0.2") => "RP002_V1_0_2",
        ("rp002", "1.0.3") => "RP002_V1_0_3",
        ("rp002", "1.0.4") => "RP002_V1_0_4",
        _ => "",
    };
    let name = if name.is_empty() {
        t.to_ascii_uppercase()
    } else {
        name.to_owned()
    };
    PhyVersion::from_str_name(&name)
        .filter(|v| *v as i32 != 0)
        .ok_or_else(|| {
            format!(
                "unknown Regional Parameters version {s:?}: use e.g. RP002-1.0.3, RP002-1.0.4, RP001-1.0.3-a, RP001-1.0.2-b, TS001-1.0.1"
            )
        })
}

/// Whether an ID follows the ID rules (`[a-z0-9](?:[-]?[a-z0-9]){2,}`, at most 36).
pub fn check_id(id: &str) -> Result<(), String> {
    let b = id.as_bytes();
    let ok_char = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if id.len() < 3 || id.len() > 36 {
        return Err(format!("{id:?} must be 3 to 36 characters"));
    }
    if !ok_char(&b[0]) || !ok_char(&b[b.len() - 1]) {
        return Err(format!(
            "{id:?} must start and end with a lowercase letter or digit"
        ));
    }
    if b.iter().any(|c| !ok_char(c) && *c != b'-') {
        return Err(format!(
            "{id:?} may only hold lowercase letters, digits and dashes"
        ));
    }
    if id.contains("--") {
        return Err(format!("{id:?} must not hold two dashes in a row"));
    }
    Ok(())
}

fn parse_bool(field: &str, s: &str) -> Result<bool, FieldError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "false" | "0" | "no" => Ok(false),
        "true" | "1" | "yes" => Ok(true),
        _ => Err(field_err(field, format!("{s:?} is not true or false"))),
    }
}

/// Parses `k=v;k2=v2`.
fn parse_attributes(s: &str) -> Result<HashMap<String, String>, FieldError> {
    let mut out = HashMap::new();
    for part in s.split(';').filter(|p| !p.trim().is_empty()) {
        let (k, v) = crate::entities::parse_attribute(part)
            .map_err(|e| field_err("attributes", format!("{e} (write key=value;key2=value2)")))?;
        out.insert(k, v);
    }
    Ok(out)
}

/// Checks and converts the raw fields of one device of `application_id`.
pub fn build_spec(application_id: &str, raw: &RawDevice) -> Result<DeviceSpec, FieldError> {
    let get = |k: &str| raw.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
    let hex = |k: &str| -> Result<Option<String>, FieldError> { Ok(get(k).map(str::to_owned)) };
    fn parsed<T: FromStr>(field: &str, v: Option<String>) -> Result<Option<T>, FieldError>
    where
        T::Err: std::fmt::Display,
    {
        v.map(|s| s.parse::<T>().map_err(|e| field_err(field, e.to_string())))
            .transpose()
    }
    let device_id = get("device_id").ok_or_else(|| field_err("device_id", "is required"))?;
    check_id(device_id).map_err(|e| field_err("device_id", e))?;
    let dev_eui: Option<Eui64> = parsed("dev_eui", hex("dev_eui")?)?;
    let join_eui: Option<Eui64> = parsed("join_eui", hex("join_eui")?)?;
    let frequency_plan_id = get("frequency_plan_id")
        .ok_or_else(|| field_err("frequency_plan_id", "is required (e.g. EU_863_870)"))?;
    let mac_version = parse_mac_version(
        get("lorawan_version")
            .ok_or_else(|| field_err("lorawan_version", "is required (e.g. 1.0.3)"))?,
    )
    .map_err(|e| field_err("lorawan_version", e))?;
    let phy_version = parse_phy_version(
        get("lorawan_phy_version")
            .ok_or_else(|| field_err("lorawan_phy_version", "is required (e.g. RP002-1.0.3)"))?,
    )
    .map_err(|e| field_err("lorawan_phy_version", e))?;
    let is_1_1 = mac_version == MacVersion::MacV11;
    let key = |k: &str| parsed::<Aes128Key>(k, hex(k)?);
    let activation = if let Some(addr) = get("dev_addr") {
        for k in ["app_key", "nwk_key"] {
            if get(k).is_some() {
                return Err(field_err(
                    k,
                    "ABP devices (with dev_addr) have no root keys",
                ));
            }
        }
        let dev_addr: DevAddr = addr
            .parse()
            .map_err(|e: lorawan::ParseError| field_err("dev_addr", e.to_string()))?;
        let need = |k: &str, what: &str| -> Result<Aes128Key, FieldError> {
            key(k)?.ok_or_else(|| field_err(k, format!("is required for ABP {what}")))
        };
        let (s_nwk, enc) = if is_1_1 {
            (
                Some(need("s_nwk_s_int_key", "LoRaWAN 1.1 devices")?),
                Some(need("nwk_s_enc_key", "LoRaWAN 1.1 devices")?),
            )
        } else {
            for k in ["s_nwk_s_int_key", "nwk_s_enc_key"] {
                if get(k).is_some() {
                    return Err(field_err(k, "only LoRaWAN 1.1 sessions have this key"));
                }
            }
            (None, None)
        };
        Activation::Abp {
            dev_addr,
            f_nwk_s_int_key: need("nwk_s_key", "devices")?,
            s_nwk_s_int_key: s_nwk,
            nwk_s_enc_key: enc,
            app_s_key: need("app_s_key", "devices")?,
        }
    } else {
        for k in ["nwk_s_key", "s_nwk_s_int_key", "nwk_s_enc_key", "app_s_key"] {
            if get(k).is_some() {
                return Err(field_err(k, "session keys need dev_addr (ABP)"));
            }
        }
        if dev_eui.is_none() {
            return Err(field_err("dev_eui", "is required for OTAA devices"));
        }
        if join_eui.is_none() {
            return Err(field_err("join_eui", "is required for OTAA devices"));
        }
        let app_key = key("app_key")?;
        let nwk_key = key("nwk_key")?;
        if nwk_key.is_some() && !is_1_1 {
            return Err(field_err(
                "nwk_key",
                "only LoRaWAN 1.1 devices have a NwkKey",
            ));
        }
        if is_1_1 && app_key.is_some() != nwk_key.is_some() {
            let missing = if app_key.is_none() {
                "app_key"
            } else {
                "nwk_key"
            };
            return Err(field_err(
                missing,
                "LoRaWAN 1.1 devices need both AppKey and NwkKey",
            ));
        }
        Activation::Otaa { app_key, nwk_key }
    };
    Ok(DeviceSpec {
        application_id: application_id.to_owned(),
        device_id: device_id.to_owned(),
        dev_eui,
        join_eui,
        name: get("name").unwrap_or_default().to_owned(),
        description: get("description").unwrap_or_default().to_owned(),
        attributes: parse_attributes(get("attributes").unwrap_or_default())?,
        frequency_plan_id: frequency_plan_id.to_owned(),
        mac_version,
        phy_version,
        class_b: parse_bool(
            "supports_class_b",
            get("supports_class_b").unwrap_or_default(),
        )?,
        class_c: parse_bool(
            "supports_class_c",
            get("supports_class_c").unwrap_or_default(),
        )?,
        activation,
        servers: Servers {
            js: get("join_server_address").unwrap_or_default().to_owned(),
            ns: get("network_server_address").unwrap_or_default().to_owned(),
            as_: get("application_server_address")
                .unwrap_or_default()
                .to_owned(),
        },
    })
}

impl CreateArgs {
    /// The flags as raw fields, checked like an import row.
    fn raw(&self) -> RawDevice {
        let mut raw = RawDevice::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                raw.insert(k.to_owned(), v.clone());
            }
        };
        put("dev_eui", &self.dev_eui);
        put("join_eui", &self.join_eui);
        put("app_key", &self.app_key);
        put("nwk_key", &self.nwk_key);
        put("dev_addr", &self.dev_addr);
        put("nwk_s_key", &self.nwk_s_key);
        put("s_nwk_s_int_key", &self.s_nwk_s_int_key);
        put("nwk_s_enc_key", &self.nwk_s_enc_key);
        put("app_s_key", &self.app_s_key);
        put("name", &self.fields.name);
        put("description", &self.fields.description);
        put("network_server_address", &self.network_server_address);
        put(
            "application_server_address",
            &self.application_server_address,
        );
        put("join_server_address", &self.join_server_address);
        raw.insert("device_id".into(), self.device_id.clone());
        raw.insert("frequency_plan_id".into(), self.frequency_plan.clone());
        raw.insert("lorawan_version".into(), self.lorawan_version.clone());
        raw.insert(
            "lorawan_phy_version".into(),
            self.lorawan_phy_version.clone(),
        );
        raw.insert("supports_class_b".into(), self.class_b.to_string());
        raw.insert("supports_class_c".into(), self.class_c.to_string());
        raw
    }
}

/// Converts a flag name in an error (`dev_eui`) to how it is typed (`--dev-eui`).
fn flag_error(e: FieldError) -> anyhow::Error {
    let flag = match e.field.as_str() {
        "frequency_plan_id" => "frequency-plan".to_owned(),
        "supports_class_b" => "class-b".to_owned(),
        "supports_class_c" => "class-c".to_owned(),
        f => f.replace('_', "-"),
    };
    anyhow::Error::new(crate::UsageError(format!("--{flag}: {}", e.message)))
}

fn device_ids(spec: &DeviceSpec) -> EndDeviceIdentifiers {
    EndDeviceIdentifiers {
        application_ids: Some(ApplicationIdentifiers {
            application_id: spec.application_id.clone(),
        }),
        device_id: spec.device_id.clone(),
        dev_eui: spec.dev_eui.map(|e| e.0.to_vec()).unwrap_or_default(),
        join_eui: spec.join_eui.map(|e| e.0.to_vec()).unwrap_or_default(),
        dev_addr: match &spec.activation {
            Activation::Abp { dev_addr, .. } => dev_addr.0.to_vec(),
            Activation::Otaa { .. } => Vec::new(),
        },
    }
}

fn ids_of(application_id: &str, device_id: &str) -> EndDeviceIdentifiers {
    EndDeviceIdentifiers {
        application_ids: Some(ApplicationIdentifiers {
            application_id: application_id.to_owned(),
        }),
        device_id: device_id.to_owned(),
        ..Default::default()
    }
}

fn clear(k: Aes128Key) -> Option<KeyEnvelope> {
    Some(KeyEnvelope {
        key: k.0.to_vec(),
        ..Default::default()
    })
}

/// The IS part of a device: registry fields only, never keys.
pub fn registry_part(spec: &DeviceSpec) -> EndDevice {
    EndDevice {
        ids: Some(device_ids(spec)),
        name: spec.name.clone(),
        description: spec.description.clone(),
        attributes: spec.attributes.clone(),
        frequency_plan_id: spec.frequency_plan_id.clone(),
        lorawan_version: spec.mac_version as i32,
        lorawan_phy_version: spec.phy_version as i32,
        supports_join: matches!(spec.activation, Activation::Otaa { .. }),
        supports_class_b: spec.class_b,
        supports_class_c: spec.class_c,
        network_server_address: spec.servers.ns.clone(),
        application_server_address: spec.servers.as_.clone(),
        join_server_address: spec.servers.js.clone(),
        ..Default::default()
    }
}

/// The JS part (root keys) and its mask; `None` when there are no root keys.
pub fn js_part(spec: &DeviceSpec) -> Option<(EndDevice, Vec<String>)> {
    let Activation::Otaa {
        app_key: Some(app_key),
        nwk_key,
    } = &spec.activation
    else {
        return None;
    };
    let mut paths = vec!["root_keys.app_key".to_owned()];
    if nwk_key.is_some() {
        paths.push("root_keys.nwk_key".to_owned());
    }
    Some((
        EndDevice {
            ids: Some(device_ids(spec)),
            root_keys: Some(RootKeys {
                app_key: clear(*app_key),
                nwk_key: nwk_key.and_then(clear),
            }),
            ..Default::default()
        },
        paths,
    ))
}

/// The NS part: what the NS needs to serve the device (plan, versions, class), and the
/// network session keys of an ABP device. Never the AppSKey.
pub fn ns_part(spec: &DeviceSpec) -> (EndDevice, Vec<String>) {
    let mut dev = EndDevice {
        ids: Some(device_ids(spec)),
        frequency_plan_id: spec.frequency_plan_id.clone(),
        lorawan_version: spec.mac_version as i32,
        lorawan_phy_version: spec.phy_version as i32,
        supports_join: matches!(spec.activation, Activation::Otaa { .. }),
        supports_class_b: spec.class_b,
        supports_class_c: spec.class_c,
        ..Default::default()
    };
    let mut paths: Vec<String> = [
        "frequency_plan_id",
        "lorawan_version",
        "lorawan_phy_version",
        "supports_join",
        "supports_class_b",
        "supports_class_c",
    ]
    .map(str::to_owned)
    .to_vec();
    if spec.class_c {
        dev.mac_settings = Some(MacSettings {
            class: Some(tern_api::v3::DeviceClass::ClassC as i32),
            ..Default::default()
        });
        paths.push("mac_settings.class".into());
    }
    if let Activation::Abp {
        dev_addr,
        f_nwk_s_int_key,
        s_nwk_s_int_key,
        nwk_s_enc_key,
        ..
    } = &spec.activation
    {
        dev.session = Some(Session {
            dev_addr: dev_addr.0.to_vec(),
            keys: Some(SessionKeys {
                f_nwk_s_int_key: clear(*f_nwk_s_int_key),
                s_nwk_s_int_key: s_nwk_s_int_key.and_then(clear),
                nwk_s_enc_key: nwk_s_enc_key.and_then(clear),
                ..Default::default()
            }),
            ..Default::default()
        });
        paths.push("session.dev_addr".into());
        paths.push("session.keys.f_nwk_s_int_key".into());
        if s_nwk_s_int_key.is_some() {
            paths.push("session.keys.s_nwk_s_int_key".into());
            paths.push("session.keys.nwk_s_enc_key".into());
        }
    }
    (dev, paths)
}

/// The AS part: the AppSKey of an ABP session; `None` for OTAA (the AS gets it at join).
pub fn as_part(spec: &DeviceSpec) -> Option<(EndDevice, Vec<String>)> {
    let Activation::Abp {
        dev_addr,
        app_s_key,
        ..
    } = &spec.activation
    else {
        return None;
    };
    Some((
        // The AS keeps the session only: its payload crypto is the same for every version.
        EndDevice {
            ids: Some(device_ids(spec)),
            session: Some(Session {
                dev_addr: dev_addr.0.to_vec(),
                keys: Some(SessionKeys {
                    app_s_key: clear(*app_s_key),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        ["session.dev_addr", "session.keys.app_s_key"]
            .map(str::to_owned)
            .to_vec(),
    ))
}

fn set_request(dev: EndDevice, paths: Vec<String>) -> UpdateEndDeviceRequest {
    UpdateEndDeviceRequest {
        end_device: Some(dev),
        field_mask: Some(FieldMask::new(paths)),
    }
}

/// The registries a device is spread over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Is,
    Js,
    Ns,
    As,
}

impl Part {
    fn server(self) -> &'static str {
        match self {
            Self::Is => "Identity Server",
            Self::Js => "Join Server",
            Self::Ns => "Network Server",
            Self::As => "Application Server",
        }
    }
}

async fn delete_part(
    api: &Api,
    part: Part,
    servers: &Servers,
    ids: EndDeviceIdentifiers,
) -> Result<(), Status> {
    let address = servers.of(part);
    match part {
        Part::Is => api.devices().delete(ids).await.map(drop),
        Part::Js => {
            let mut c = api
                .js_devices(address)
                .map_err(|e| Status::internal(e.to_string()))?;
            c.delete(ids).await.map(drop)
        }
        Part::Ns => {
            let mut c = api
                .ns_devices(address)
                .map_err(|e| Status::internal(e.to_string()))?;
            c.delete(ids).await.map(drop)
        }
        Part::As => {
            let mut c = api
                .as_devices(address)
                .map_err(|e| Status::internal(e.to_string()))?;
            c.delete(ids).await.map(drop)
        }
    }
}

/// Creates a device in every registry that holds a part of it, in the order IS, JS, NS, AS;
/// when a step fails, the parts already written are deleted again (last first), so nothing
/// is left half-created. With `registry_only`, only the IS part is written.
pub async fn create_device(api: &Api, spec: &DeviceSpec, registry_only: bool) -> Result<EndDevice> {
    let dev_name = format!("device {}/{}", spec.application_id, spec.device_id);
    let created = api
        .devices()
        .create(CreateEndDeviceRequest {
            end_device: Some(registry_part(spec)),
        })
        .await
        .ctx(|| format!("create {dev_name} in the Identity Server"))?;
    if registry_only {
        return Ok(created);
    }
    let mut done = vec![Part::Is];
    let mut steps: Vec<(Part, UpdateEndDeviceRequest)> = Vec::new();
    if let Some((d, p)) = js_part(spec) {
        steps.push((Part::Js, set_request(d, p)));
    }
    let (d, p) = ns_part(spec);
    steps.push((Part::Ns, set_request(d, p)));
    if let Some((d, p)) = as_part(spec) {
        steps.push((Part::As, set_request(d, p)));
    }
    for (part, req) in steps {
        let result = match part {
            Part::Js => match api.js_devices(spec.servers.of(part)) {
                Ok(mut c) => c.set(req).await.map(drop),
                Err(e) => Err(Status::internal(e.to_string())),
            },
            Part::Ns => match api.ns_devices(spec.servers.of(part)) {
                Ok(mut c) => c.set(req).await.map(drop),
                Err(e) => Err(Status::internal(e.to_string())),
            },
            Part::As => match api.as_devices(spec.servers.of(part)) {
                Ok(mut c) => c.set(req).await.map(drop),
                Err(e) => Err(Status::internal(e.to_string())),
            },
            Part::Is => Ok(()),
        };
        if let Err(status) = result {
            let err = rpc_error(&format!("set {dev_name} in the {}", part.server()), status);
            let mut undo_failures = Vec::new();
            for undone in done.iter().rev() {
                if let Err(s) = delete_part(api, *undone, &spec.servers, device_ids(spec)).await {
                    undo_failures.push(format!("{}: {}", undone.server(), s.message()));
                }
            }
            if undo_failures.is_empty() {
                return Err(err.context(format!("{dev_name} was not created (undone)")));
            }
            return Err(err.context(format!(
                "{dev_name} was only partly undone, delete it by hand: {}",
                undo_failures.join("; ")
            )));
        }
        done.push(part);
    }
    Ok(created)
}

/// Deletes a device from every registry: AS, NS, JS, then IS. Parts that are not there
/// (NOT_FOUND), or registries not served at the address (UNIMPLEMENTED), are skipped.
pub async fn delete_device(api: &Api, ids: EndDeviceIdentifiers) -> Result<()> {
    let name = format!(
        "device {}/{}",
        ids.application_ids
            .as_ref()
            .map(|a| a.application_id.as_str())
            .unwrap_or_default(),
        ids.device_id
    );
    let servers = match api
        .devices()
        .get(GetEndDeviceRequest {
            end_device_ids: Some(ids.clone()),
            field_mask: Some(FieldMask::new(SERVER_FIELDS.iter().copied())),
        })
        .await
    {
        Ok(d) => Servers::of_device(&d.into_inner()),
        Err(s) => {
            return Err(rpc_error(
                &format!("get {name} from the Identity Server"),
                s,
            ));
        }
    };
    for part in [Part::As, Part::Ns, Part::Js] {
        match delete_part(api, part, &servers, ids.clone()).await {
            Ok(()) => {}
            Err(s) if matches!(s.code(), Code::NotFound | Code::Unimplemented) => {}
            Err(s) => {
                return Err(rpc_error(
                    &format!("delete {name} from the {}", part.server()),
                    s,
                ));
            }
        }
    }
    api.devices()
        .delete(ids)
        .await
        .ctx(|| format!("delete {name} from the Identity Server"))?;
    Ok(())
}

/// Before `applications delete --purge`: deletes the JS, NS and AS parts of every device of
/// the application (the IS deletes its own part with the application).
pub async fn purge_application_devices(ctx: &Ctx, application_id: &str) -> Result<()> {
    let mut fields = vec!["ids"];
    fields.extend_from_slice(SERVER_FIELDS);
    let devices = list_devices(&ctx.api, application_id, ListArgs::default(), &fields).await?;
    let mut skip: Vec<(Part, String)> = Vec::new();
    for dev in devices {
        let servers = Servers::of_device(&dev);
        let Some(ids) = dev.ids else { continue };
        for part in [Part::As, Part::Ns, Part::Js] {
            let at = (part, servers.of(part).to_owned());
            if skip.contains(&at) {
                continue;
            }
            match delete_part(&ctx.api, part, &servers, ids.clone()).await {
                Ok(()) => {}
                Err(s) if s.code() == Code::NotFound => {}
                // Not served here: nothing of this application is stored there.
                Err(s) if s.code() == Code::Unimplemented => skip.push(at),
                Err(s) => {
                    return Err(rpc_error(
                        &format!(
                            "purge device {application_id}/{} from the {}",
                            ids.device_id,
                            part.server()
                        ),
                        s,
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The registry fields naming the servers of a device's parts.
const SERVER_FIELDS: &[&str] = &[
    "network_server_address",
    "application_server_address",
    "join_server_address",
];

const DEVICE_FIELDS: &[&str] = &[
    "ids",
    "created_at",
    "updated_at",
    "name",
    "description",
    "attributes",
    "frequency_plan_id",
    "lorawan_version",
    "lorawan_phy_version",
    "supports_join",
    "supports_class_b",
    "supports_class_c",
    "network_server_address",
    "application_server_address",
    "join_server_address",
];

async fn list_devices(
    api: &Api,
    application_id: &str,
    list: ListArgs,
    fields: &[&str],
) -> Result<Vec<EndDevice>> {
    let reg = api.devices();
    collect_pages(list, |limit, page| {
        let mut reg = reg.clone();
        async move {
            let r = reg
                .list(ListEndDevicesRequest {
                    application_ids: Some(ApplicationIdentifiers {
                        application_id: application_id.to_owned(),
                    }),
                    field_mask: Some(FieldMask::new(fields.iter().copied())),
                    order: "device_id".into(),
                    limit,
                    page,
                })
                .await
                .ctx(|| format!("list devices of application {application_id}"))?;
            Ok((r.end_devices, r.total))
        }
    })
    .await
}

/// Merges the fields a component registry returned into the device (only those it holds).
fn merge(into: &mut EndDevice, from: EndDevice) {
    if from.root_keys.is_some() {
        into.root_keys = from.root_keys;
    }
    if from.mac_settings.is_some() {
        into.mac_settings = from.mac_settings;
    }
    if from.mac_state.is_some() {
        into.mac_state = from.mac_state;
    }
    if from.formatters.is_some() {
        into.formatters = from.formatters;
    }
    if from.battery_level.is_some() {
        into.battery_level = from.battery_level;
    }
    if from.last_seen_at.is_some() {
        into.last_seen_at = from.last_seen_at;
    }
    if let Some(s) = from.session {
        let target = into.session.get_or_insert_with(Default::default);
        if !s.dev_addr.is_empty() {
            target.dev_addr = s.dev_addr;
        }
        target.last_f_cnt_up = target.last_f_cnt_up.max(s.last_f_cnt_up);
        target.last_n_f_cnt_down = target.last_n_f_cnt_down.max(s.last_n_f_cnt_down);
        target.last_a_f_cnt_down = target.last_a_f_cnt_down.max(s.last_a_f_cnt_down);
        if s.started_at.is_some() {
            target.started_at = s.started_at;
        }
        if let Some(k) = s.keys {
            let tk = target.keys.get_or_insert_with(Default::default);
            if !k.session_key_id.is_empty() {
                tk.session_key_id = k.session_key_id;
            }
            for (src, dst) in [
                (k.f_nwk_s_int_key, &mut tk.f_nwk_s_int_key),
                (k.s_nwk_s_int_key, &mut tk.s_nwk_s_int_key),
                (k.nwk_s_enc_key, &mut tk.nwk_s_enc_key),
                (k.app_s_key, &mut tk.app_s_key),
            ] {
                if src.is_some() {
                    *dst = src;
                }
            }
        }
    }
}

async fn get_device(
    ctx: &Ctx,
    application_id: &str,
    device_id: &str,
    show_keys: bool,
) -> Result<EndDevice> {
    let ids = ids_of(application_id, device_id);
    let name = format!("device {application_id}/{device_id}");
    let mut dev = ctx
        .api
        .devices()
        .get(GetEndDeviceRequest {
            end_device_ids: Some(ids.clone()),
            field_mask: Some(FieldMask::new(DEVICE_FIELDS.iter().copied())),
        })
        .await
        .ctx(|| format!("get {name} from the Identity Server"))?;
    let ids = dev.ids.clone().unwrap_or(ids);
    let servers = Servers::of_device(&dev);
    let req = |paths: &[&str]| GetEndDeviceRequest {
        end_device_ids: Some(ids.clone()),
        field_mask: Some(FieldMask::new(paths.iter().copied())),
    };
    let mut ns_paths = vec![
        "mac_settings",
        "mac_state",
        "session.dev_addr",
        "session.last_f_cnt_up",
        "session.last_n_f_cnt_down",
        "session.started_at",
        "battery_level",
        "last_seen_at",
    ];
    let mut as_paths = vec![
        "formatters",
        "session.dev_addr",
        "session.last_a_f_cnt_down",
    ];
    if show_keys {
        ns_paths.extend([
            "session.keys.f_nwk_s_int_key",
            "session.keys.s_nwk_s_int_key",
            "session.keys.nwk_s_enc_key",
        ]);
        as_paths.push("session.keys.app_s_key");
    }
    let results = [
        (Part::Js, show_keys.then(|| req(&["root_keys"]))),
        (Part::Ns, Some(req(&ns_paths))),
        (Part::As, Some(req(&as_paths))),
    ];
    for (part, request) in results {
        let Some(request) = request else { continue };
        let result = match part {
            Part::Js => ctx.api.js_devices(&servers.js)?.get(request).await,
            Part::Ns => ctx.api.ns_devices(&servers.ns)?.get(request).await,
            Part::As => ctx.api.as_devices(&servers.as_)?.get(request).await,
            Part::Is => continue,
        };
        match result {
            Ok(r) => merge(&mut dev, r.into_inner()),
            // Not stored there, or the role does not run at this address: nothing to merge.
            Err(s) if matches!(s.code(), Code::NotFound | Code::Unimplemented) => {}
            Err(s) => {
                return Err(rpc_error(
                    &format!("get {name} from the {}", part.server()),
                    s,
                ));
            }
        }
    }
    Ok(dev)
}

/// Runs an `end-devices` subcommand.
pub async fn run(ctx: &Ctx, cmd: DevicesCommand) -> Result<()> {
    match cmd {
        DevicesCommand::TestFormatter(args) => crate::appserver::test_formatter(ctx, args).await?,
        DevicesCommand::Create(args) => {
            let mut spec = build_spec(&args.application_id, &args.raw()).map_err(flag_error)?;
            check_id(&args.application_id)
                .map_err(|e| anyhow::Error::new(crate::UsageError(format!("APP_ID: {e}"))))?;
            spec.attributes = args.fields.attributes.iter().cloned().collect();
            let dev = create_device(&ctx.api, &spec, args.registry_only).await?;
            output::print_one(ctx.out, &dev);
        }
        DevicesCommand::Get {
            application_id,
            device_id,
            show_keys,
        } => {
            let dev = get_device(ctx, &application_id, &device_id, show_keys).await?;
            output::print_one(ctx.out, &dev);
        }
        DevicesCommand::List {
            application_id,
            list,
        } => {
            let fields = [
                "ids",
                "name",
                "frequency_plan_id",
                "lorawan_version",
                "created_at",
            ];
            let devices = list_devices(&ctx.api, &application_id, list, &fields).await?;
            output::print_list(
                ctx.out,
                &devices,
                &[
                    ("DEVICE ID", "ids.device_id"),
                    ("DEV EUI", "ids.dev_eui"),
                    ("JOIN EUI", "ids.join_eui"),
                    ("NAME", "name"),
                    ("FREQUENCY PLAN", "frequency_plan_id"),
                    ("VERSION", "lorawan_version"),
                    ("CREATED", "created_at"),
                ],
            );
        }
        DevicesCommand::Update(args) => update(ctx, *args).await?,
        DevicesCommand::Delete {
            application_id,
            device_id,
        } => delete_device(&ctx.api, ids_of(&application_id, &device_id)).await?,
        DevicesCommand::Import(args) => crate::import::run(ctx, args).await?,
    }
    Ok(())
}

async fn update(ctx: &Ctx, args: UpdateArgs) -> Result<()> {
    let usage =
        |flag: &str, e: String| anyhow::Error::new(crate::UsageError(format!("--{flag}: {e}")));
    let name = format!("device {}/{}", args.application_id, args.device_id);
    let ids = ids_of(&args.application_id, &args.device_id);
    let mut dev = EndDevice {
        ids: Some(ids.clone()),
        ..Default::default()
    };
    let mut paths = Vec::new();
    if !args.fields.attributes.is_empty() {
        dev.attributes = ctx
            .api
            .devices()
            .get(GetEndDeviceRequest {
                end_device_ids: Some(ids.clone()),
                field_mask: Some(FieldMask::new(["attributes"])),
            })
            .await
            .ctx(|| format!("get {name}"))?
            .attributes;
    }
    args.fields.apply_device(&mut dev, &mut paths);
    // Fields the NS needs too.
    let mut ns_paths = Vec::new();
    if let Some(fp) = &args.frequency_plan {
        dev.frequency_plan_id = fp.clone();
        ns_paths.push("frequency_plan_id");
    }
    if let Some(v) = &args.lorawan_version {
        dev.lorawan_version = parse_mac_version(v).map_err(|e| usage("lorawan-version", e))? as i32;
        ns_paths.push("lorawan_version");
    }
    if let Some(v) = &args.lorawan_phy_version {
        dev.lorawan_phy_version =
            parse_phy_version(v).map_err(|e| usage("lorawan-phy-version", e))? as i32;
        ns_paths.push("lorawan_phy_version");
    }
    if let Some(b) = args.class_b {
        dev.supports_class_b = b;
        ns_paths.push("supports_class_b");
    }
    if let Some(c) = args.class_c {
        dev.supports_class_c = c;
        ns_paths.push("supports_class_c");
    }
    paths.extend(ns_paths.iter().map(|p| p.to_string()));
    let mut root_keys = RootKeys::default();
    let mut js_paths = Vec::new();
    for (flag, value, slot, path) in [
        (
            "app-key",
            &args.app_key,
            &mut root_keys.app_key,
            "root_keys.app_key",
        ),
        (
            "nwk-key",
            &args.nwk_key,
            &mut root_keys.nwk_key,
            "root_keys.nwk_key",
        ),
    ] {
        if let Some(v) = value {
            let k: Aes128Key = v
                .parse()
                .map_err(|e: lorawan::ParseError| usage(flag, e.to_string()))?;
            *slot = clear(k);
            js_paths.push(path.to_owned());
        }
    }
    if paths.is_empty() && js_paths.is_empty() {
        return Err(anyhow::Error::new(crate::UsageError(
            "nothing to update: give at least one field flag (see --help)".into(),
        )));
    }
    let mut updated = dev.clone();
    if !paths.is_empty() {
        updated = ctx
            .api
            .devices()
            .update(UpdateEndDeviceRequest {
                end_device: Some(dev.clone()),
                field_mask: Some(FieldMask::new(paths)),
            })
            .await
            .ctx(|| format!("update {name} in the Identity Server"))?;
    }
    let component_changes = !ns_paths.is_empty() || !js_paths.is_empty();
    if !args.registry_only && component_changes {
        let servers = ctx
            .api
            .devices()
            .get(GetEndDeviceRequest {
                end_device_ids: Some(ids.clone()),
                field_mask: Some(FieldMask::new(SERVER_FIELDS.iter().copied())),
            })
            .await
            .map(|d| Servers::of_device(&d.into_inner()))
            .map_err(|s| rpc_error(&format!("get {name} from the Identity Server"), s))?;
        if !ns_paths.is_empty() {
            let mut ns_dev = dev.clone();
            let mut ns_mask: Vec<String> = ns_paths.iter().map(|p| p.to_string()).collect();
            if let Some(c) = args.class_c {
                ns_dev.mac_settings = Some(MacSettings {
                    class: Some(if c {
                        tern_api::v3::DeviceClass::ClassC
                    } else {
                        tern_api::v3::DeviceClass::ClassA
                    } as i32),
                    ..Default::default()
                });
                ns_mask.push("mac_settings.class".into());
            }
            ctx.api
                .ns_devices(&servers.ns)?
                .set(set_request(ns_dev, ns_mask))
                .await
                .ctx(|| format!("update {name} in the Network Server"))?;
        }
        if !js_paths.is_empty() {
            let js_dev = EndDevice {
                ids: updated.ids.clone().or(Some(ids)),
                root_keys: Some(root_keys),
                ..Default::default()
            };
            ctx.api
                .js_devices(&servers.js)?
                .set(set_request(js_dev, js_paths))
                .await
                .ctx(|| format!("update the root keys of {name} in the Join Server"))?;
        }
    }
    output::print_one(ctx.out, &updated);
    Ok(())
}

impl CommonFields {
    /// Writes the given fields into a device and names them in `mask`.
    fn apply_device(&self, d: &mut EndDevice, mask: &mut Vec<String>) {
        if let Some(n) = &self.name {
            d.name = n.clone();
            mask.push("name".into());
        }
        if let Some(desc) = &self.description {
            d.description = desc.clone();
            mask.push("description".into());
        }
        if !self.attributes.is_empty() {
            for (k, v) in &self.attributes {
                if v.is_empty() {
                    d.attributes.remove(k);
                } else {
                    d.attributes.insert(k.clone(), v.clone());
                }
            }
            mask.push("attributes".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> RawDevice {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn otaa() -> RawDevice {
        raw(&[
            ("device_id", "dev-1"),
            ("dev_eui", "70B3D57ED0000001"),
            ("join_eui", "0000000000000000"),
            ("frequency_plan_id", "EU_863_870"),
            ("lorawan_version", "1.0.3"),
            ("lorawan_phy_version", "RP002-1.0.3"),
            ("app_key", "2B7E151628AED2A6ABF7158809CF4F3C"),
        ])
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_mac_version("1.0.3"), Ok(MacVersion::MacV103));
        assert_eq!(parse_mac_version("1.1"), Ok(MacVersion::MacV11));
        assert_eq!(parse_mac_version("MAC_V1_0_2"), Ok(MacVersion::MacV102));
        assert!(parse_mac_version("1.2").is_err());
        assert_eq!(parse_phy_version("RP002-1.0.3"), Ok(PhyVersion::Rp002V103));
        assert_eq!(
            parse_phy_version("rp001-1.0.2-b"),
            Ok(PhyVersion::Rp001V102RevB)
        );
        assert_eq!(parse_phy_version("1.0.3-a"), Ok(PhyVersion::Rp001V103RevA));
        assert_eq!(parse_phy_version("TS001-1.0.1"), Ok(PhyVersion::Ts001V101));
        assert_eq!(parse_phy_version("RP002_V1_0_4"), Ok(PhyVersion::Rp002V104));
        assert!(
            parse_phy_version("RP003-1.0.0")
                .unwrap_err()
                .contains("RP002-1.0.3")
        );
    }

    #[test]
    fn ids_follow_the_rules() {
        assert!(check_id("dev-1").is_ok());
        assert!(check_id("ab").is_err());
        assert!(check_id("Dev1").is_err());
        assert!(check_id("a--b").is_err());
        assert!(check_id("-ab").is_err());
        assert!(check_id(&"a".repeat(37)).is_err());
    }

    #[test]
    fn otaa_spec_and_its_parts() {
        let spec = build_spec("app-1", &otaa()).unwrap();
        assert_eq!(spec.mac_version, MacVersion::MacV103);
        let is = registry_part(&spec);
        assert!(
            is.root_keys.is_none() && is.session.is_none(),
            "no keys in the IS"
        );
        assert!(is.supports_join);
        let (js, paths) = js_part(&spec).unwrap();
        assert_eq!(paths, vec!["root_keys.app_key"]);
        assert_eq!(
            js.root_keys.unwrap().app_key.unwrap().key,
            hex::decode("2B7E151628AED2A6ABF7158809CF4F3C").unwrap()
        );
        let (ns, _) = ns_part(&spec);
        assert!(ns.root_keys.is_none() && ns.session.is_none());
        assert!(as_part(&spec).is_none());
    }

    #[test]
    fn abp_keys_go_to_ns_and_as_only() {
        let mut r = otaa();
        r.remove("app_key");
        r.insert("dev_addr".into(), "26011BDA".into());
        r.insert(
            "nwk_s_key".into(),
            "11111111111111111111111111111111".into(),
        );
        r.insert(
            "app_s_key".into(),
            "22222222222222222222222222222222".into(),
        );
        r.insert("supports_class_c".into(), "true".into());
        let spec = build_spec("app-1", &r).unwrap();
        assert!(js_part(&spec).is_none());
        let (ns, paths) = ns_part(&spec);
        let keys = ns.session.unwrap().keys.unwrap();
        assert!(keys.app_s_key.is_none(), "the NS never gets the AppSKey");
        assert_eq!(keys.f_nwk_s_int_key.unwrap().key, vec![0x11; 16]);
        assert!(paths.contains(&"mac_settings.class".to_owned()));
        let (asd, _) = as_part(&spec).unwrap();
        let keys = asd.session.unwrap().keys.unwrap();
        assert!(
            keys.f_nwk_s_int_key.is_none(),
            "the AS never gets network keys"
        );
        assert_eq!(keys.app_s_key.unwrap().key, vec![0x22; 16]);
        assert_eq!(
            registry_part(&spec).ids.unwrap().dev_addr,
            vec![0x26, 0x01, 0x1B, 0xDA]
        );
    }

    #[test]
    fn precise_field_errors() {
        let check = |edit: &dyn Fn(&mut RawDevice), field: &str, needle: &str| {
            let mut r = otaa();
            edit(&mut r);
            let e = build_spec("app", &r).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(needle), "{e}");
        };
        check(
            &|r| {
                r.insert("dev_eui".into(), "70B3D57ED000001".into());
            },
            "dev_eui",
            "",
        );
        check(
            &|r| {
                r.remove("join_eui");
            },
            "join_eui",
            "required for OTAA",
        );
        check(
            &|r| {
                r.remove("frequency_plan_id");
            },
            "frequency_plan_id",
            "required",
        );
        check(
            &|r| {
                r.insert("lorawan_version".into(), "2.0".into());
            },
            "lorawan_version",
            "unknown",
        );
        check(
            &|r| {
                r.insert("nwk_key".into(), "00".repeat(16));
            },
            "nwk_key",
            "1.1",
        );
        check(
            &|r| {
                r.insert("lorawan_version".into(), "1.1".into());
            },
            "nwk_key",
            "both",
        );
        check(
            &|r| {
                r.insert("app_s_key".into(), "00".repeat(16));
            },
            "app_s_key",
            "dev_addr",
        );
        check(
            &|r| {
                r.insert("device_id".into(), "Bad_ID".into());
            },
            "device_id",
            "lowercase",
        );
        check(
            &|r| {
                r.insert("supports_class_c".into(), "maybe".into());
            },
            "supports_class_c",
            "true or false",
        );
        check(
            &|r| {
                r.insert("attributes".into(), "a=1;b".into());
            },
            "attributes",
            "key=value",
        );
        check(
            &|r| {
                r.insert("dev_addr".into(), "26011BDA".into());
            },
            "app_key",
            "no root keys",
        );
        check(
            &|r| {
                r.remove("app_key");
                r.insert("dev_addr".into(), "26011BDA".into());
                r.insert("nwk_s_key".into(), "00".repeat(16));
            },
            "app_s_key",
            "required for ABP",
        );
    }

    #[test]
    fn merge_keeps_registry_fields_and_adds_parts() {
        let mut dev = EndDevice {
            name: "n".into(),
            ..Default::default()
        };
        merge(
            &mut dev,
            EndDevice {
                session: Some(Session {
                    dev_addr: vec![1, 2, 3, 4],
                    last_f_cnt_up: 7,
                    keys: Some(SessionKeys {
                        f_nwk_s_int_key: clear(Aes128Key([1; 16])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        merge(
            &mut dev,
            EndDevice {
                session: Some(Session {
                    keys: Some(SessionKeys {
                        app_s_key: clear(Aes128Key([2; 16])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let s = dev.session.unwrap();
        assert_eq!(dev.name, "n");
        assert_eq!((s.dev_addr, s.last_f_cnt_up), (vec![1, 2, 3, 4], 7));
        let k = s.keys.unwrap();
        assert!(k.f_nwk_s_int_key.is_some() && k.app_s_key.is_some());
    }
}
