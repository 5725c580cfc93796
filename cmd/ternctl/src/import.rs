//! `ternctl end-devices import`: many devices from a CSV or JSON file, created concurrently,
//! each one whole or not at all, with an error per failed row.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::Ctx;
use crate::devices::{self, COLUMNS, DeviceSpec, FieldError, RawDevice, canonical_column};
use crate::output::OutputFormat;

/// The long help of `end-devices import`, documenting the file formats and columns.
pub const IMPORT_HELP: &str = "\
Create many devices from a CSV or JSON file.

Each device is created like `end-devices create` does it: the registry entry in the Identity
Server, root keys in the Join Server, MAC settings and the ABP network session in the Network
Server, the ABP AppSKey in the Application Server. A device whose creation fails anywhere is
undone everywhere, so it is either fully created or not at all; the other rows go on.

CSV: a header line names the columns, in any order; lines starting with # are comments.
JSON: an array of objects, or one object per line (.jsonl / .ndjson), keyed by the same names.

Columns (empty cells are unset):
  device_id            required; lowercase letters, digits, dashes, 3 to 36 characters
  dev_eui              DevEUI, 16 hex digits; required for OTAA
  join_eui             JoinEUI (alias app_eui), 16 hex digits; required for OTAA
  name, description    free text
  frequency_plan_id    e.g. EU_863_870 (or --frequency-plan for every row)
  lorawan_version      1.0, 1.0.1, 1.0.2, 1.0.3, 1.0.4 or 1.1 (or --lorawan-version)
  lorawan_phy_version  e.g. RP002-1.0.3, RP001-1.0.2-b (or --lorawan-phy-version)
  app_key              OTAA AppKey, 32 hex digits (stored in the Join Server only)
  nwk_key              OTAA NwkKey, LoRaWAN 1.1 only
  dev_addr             ABP DevAddr, 8 hex digits; a row with dev_addr is an ABP device
  nwk_s_key            ABP NwkSKey (1.0.x) or FNwkSIntKey (1.1; alias f_nwk_s_int_key)
  s_nwk_s_int_key      ABP SNwkSIntKey, 1.1 only
  nwk_s_enc_key        ABP NwkSEncKey, 1.1 only
  app_s_key            ABP AppSKey (stored in the Application Server only)
  supports_class_b     true or false
  supports_class_c     true or false
  attributes           key=value;key2=value2 (in JSON also an object)
  network_server_address, application_server_address, join_server_address
                       host:port of the server holding that part; empty: the server

Example CSV:
  device_id,dev_eui,join_eui,app_key
  sensor-1,70B3D57ED0000001,0000000000000000,2B7E151628AED2A6ABF7158809CF4F3C

Errors name the row (CSV and JSON lines: the line number; JSON arrays: the item number,
from 1) and the field. The exit status is 1 when any row failed.

Without a Join Server at the server address, OTAA devices can be imported without keys using
--registry-only (the keys then have to be set later with `end-devices update --app-key`).";

/// The format of an import file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImportFormat {
    /// Comma-separated values with a header line.
    Csv,
    /// A JSON array of objects, or one object per line.
    Json,
}

/// The flags of `end-devices import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The application ID.
    pub application_id: String,
    /// The file: .csv, .json, .jsonl or .ndjson.
    #[arg(long, short)]
    pub file: PathBuf,
    /// The file's format, when its extension does not say.
    #[arg(long, value_enum)]
    pub format: Option<ImportFormat>,
    /// Frequency plan for rows that leave frequency_plan_id empty.
    #[arg(long)]
    pub frequency_plan: Option<String>,
    /// LoRaWAN version for rows that leave lorawan_version empty.
    #[arg(long)]
    pub lorawan_version: Option<String>,
    /// Regional Parameters version for rows that leave lorawan_phy_version empty.
    #[arg(long)]
    pub lorawan_phy_version: Option<String>,
    /// JoinEUI for OTAA rows that leave join_eui empty.
    #[arg(long)]
    pub join_eui: Option<String>,
    /// How many devices are created at the same time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Only create IS registry entries; rows must not hold keys.
    #[arg(long)]
    pub registry_only: bool,
}

/// One row of a file: where it is (`line 3`, `item 2`) and its fields or why it is unusable.
#[derive(Debug)]
pub struct Row {
    /// Where the row is, for error messages.
    pub at: String,
    /// The fields, or the first thing wrong with them.
    pub fields: Result<RawDevice, FieldError>,
}

fn unknown_column(name: &str) -> String {
    format!(
        "unknown column {name:?}; known columns: {}",
        COLUMNS.join(", ")
    )
}

/// Parses a CSV file with a header line. Errors in the header fail the whole file; errors in
/// a row fail that row.
pub fn parse_csv(text: &str) -> Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let headers = reader.headers().context("reading the CSV header")?.clone();
    let mut columns = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        let c = canonical_column(h)
            .ok_or_else(|| anyhow!("CSV header, column {}: {}", i + 1, unknown_column(h)))?;
        if columns.contains(&c) {
            bail!("CSV header, column {}: {c:?} appears twice", i + 1);
        }
        columns.push(c);
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let row = match record {
            Ok(record) => {
                let line = record.position().map_or(0, |p| p.line());
                let fields = if record.len() != columns.len() {
                    Err(FieldError {
                        field: "row".into(),
                        message: format!(
                            "has {} fields, the header has {}",
                            record.len(),
                            columns.len()
                        ),
                    })
                } else {
                    Ok(columns
                        .iter()
                        .zip(record.iter())
                        .filter(|(_, v)| !v.is_empty())
                        .map(|(c, v)| ((*c).to_owned(), v.to_owned()))
                        .collect())
                };
                Row {
                    at: format!("line {line}"),
                    fields,
                }
            }
            Err(e) => Row {
                at: e
                    .position()
                    .map_or_else(|| "a line".to_owned(), |p| format!("line {}", p.line())),
                fields: Err(FieldError {
                    field: "row".into(),
                    message: e.to_string(),
                }),
            },
        };
        rows.push(row);
    }
    Ok(rows)
}

/// The text of one JSON value of a device field.
fn json_field(key: &str, v: &Value) -> Result<Option<String>, FieldError> {
    let err = |m: String| FieldError {
        field: key.to_owned(),
        message: m,
    };
    Ok(match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(map) if key == "attributes" => {
            let mut parts = Vec::new();
            for (k, v) in map {
                let v = v
                    .as_str()
                    .ok_or_else(|| err(format!("attribute {k:?} must be a string")))?;
                if k.contains(['=', ';']) || v.contains(';') {
                    return Err(err(format!(
                        "attribute {k:?} must not contain ';' or '=' in its key or ';' in its value"
                    )));
                }
                parts.push(format!("{k}={v}"));
            }
            Some(parts.join(";"))
        }
        other => return Err(err(format!("expected a string, got {other}"))),
    })
}

fn json_row(at: String, v: &Value) -> Row {
    let fields = (|| {
        let Value::Object(map) = v else {
            return Err(FieldError {
                field: "row".into(),
                message: "expected a JSON object".into(),
            });
        };
        let mut raw = RawDevice::new();
        for (k, v) in map {
            let c = canonical_column(k).ok_or_else(|| FieldError {
                field: k.clone(),
                message: unknown_column(k),
            })?;
            if let Some(text) = json_field(c, v)? {
                raw.insert(c.to_owned(), text);
            }
        }
        Ok(raw)
    })();
    Row { at, fields }
}

/// Parses a JSON array of objects (`item N`), or one object per line (`line N`).
pub fn parse_json(text: &str) -> Result<Vec<Row>> {
    if text.trim_start().starts_with('[') {
        let items: Vec<Value> =
            serde_json::from_str(text).context("the file is not a JSON array")?;
        return Ok(items
            .iter()
            .enumerate()
            .map(|(i, v)| json_row(format!("item {}", i + 1), v))
            .collect());
    }
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("line {}", i + 1);
        rows.push(match serde_json::from_str::<Value>(line) {
            Ok(v) => json_row(at, &v),
            Err(e) => Row {
                at,
                fields: Err(FieldError {
                    field: "row".into(),
                    message: format!("not JSON: {e}"),
                }),
            },
        });
    }
    Ok(rows)
}

/// The defaults for empty fields, from the command's flags.
fn defaults(args: &ImportArgs) -> Vec<(&'static str, String)> {
    [
        ("frequency_plan_id", &args.frequency_plan),
        ("lorawan_version", &args.lorawan_version),
        ("lorawan_phy_version", &args.lorawan_phy_version),
        ("join_eui", &args.join_eui),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
    .collect()
}

/// A row checked into a device, or its error.
#[derive(Debug)]
pub struct Checked {
    /// Where the row is.
    pub at: String,
    /// The device ID, when the row has one.
    pub device_id: String,
    /// The device, or the error.
    pub spec: Result<DeviceSpec, String>,
}

/// Fills defaults, validates each row, and refuses device IDs and EUIs that appear twice in
/// the file (the second row fails, naming the first).
pub fn check_rows(
    application_id: &str,
    rows: Vec<Row>,
    defaults: &[(&'static str, String)],
    registry_only: bool,
) -> Vec<Checked> {
    let mut seen_ids: HashMap<String, String> = HashMap::new();
    let mut seen_euis: HashMap<String, String> = HashMap::new();
    rows.into_iter()
        .map(|row| {
            let device_id = row
                .fields
                .as_ref()
                .ok()
                .and_then(|f| f.get("device_id").cloned())
                .unwrap_or_default();
            let spec = row.fields.and_then(|mut raw| {
                for (k, v) in defaults {
                    let abp = raw.contains_key("dev_addr");
                    if *k == "join_eui" && abp {
                        continue;
                    }
                    raw.entry((*k).to_owned()).or_insert_with(|| v.clone());
                }
                devices::build_spec(application_id, &raw)
            });
            let spec = spec.map_err(|e| e.to_string()).and_then(|spec| {
                if registry_only
                    && (devices::js_part(&spec).is_some()
                        || matches!(spec.activation, devices::Activation::Abp { .. }))
                {
                    return Err(
                        "keys: --registry-only imports no keys (and no ABP devices); remove the key columns".to_owned(),
                    );
                }
                if let Some(first) = seen_ids.insert(spec.device_id.clone(), row.at.clone()) {
                    return Err(format!("device_id: {} is also on {first}", spec.device_id));
                }
                if let (Some(join), Some(dev)) = (spec.join_eui, spec.dev_eui) {
                    let key = format!("{join}/{dev}");
                    if let Some(first) = seen_euis.insert(key, row.at.clone()) {
                        return Err(format!("dev_eui: {dev} under JoinEUI {join} is also on {first}"));
                    }
                }
                Ok(spec)
            });
            Checked {
                at: row.at,
                device_id,
                spec,
            }
        })
        .collect()
}

/// Runs the import.
pub async fn run(ctx: &Ctx, args: ImportArgs) -> Result<()> {
    let format = match args.format {
        Some(f) => f,
        None => match args.file.extension().and_then(|e| e.to_str()) {
            Some("csv") => ImportFormat::Csv,
            Some("json" | "jsonl" | "ndjson") => ImportFormat::Json,
            _ => {
                return Err(anyhow::Error::new(crate::UsageError(format!(
                    "--file {}: cannot tell the format from the extension; use --format csv|json",
                    args.file.display()
                ))));
            }
        },
    };
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let rows = match format {
        ImportFormat::Csv => parse_csv(&text),
        ImportFormat::Json => parse_json(&text),
    }
    .with_context(|| format!("{}", args.file.display()))?;
    let checked = check_rows(
        &args.application_id,
        rows,
        &defaults(&args),
        args.registry_only,
    );
    let total = checked.len();
    let progress = ProgressBar::new(total as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} devices, {per_sec}, eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut failures: Vec<(usize, String, String, String)> = Vec::new();
    let mut work = Vec::new();
    for (i, c) in checked.into_iter().enumerate() {
        match c.spec {
            Ok(spec) => work.push((i, c.at, spec)),
            Err(e) => {
                progress.inc(1);
                failures.push((i, c.at, c.device_id, e));
            }
        }
    }
    let api = &ctx.api;
    let registry_only = args.registry_only;
    let mut results = futures_util::stream::iter(work)
        .map(|(i, at, spec)| async move {
            let r = devices::create_device(api, &spec, registry_only).await;
            (i, at, spec.device_id, r)
        })
        .buffer_unordered(usize::from(args.concurrency));
    let mut created = 0usize;
    while let Some((i, at, device_id, r)) = results.next().await {
        progress.inc(1);
        match r {
            Ok(_) => created += 1,
            Err(e) => failures.push((i, at, device_id, format!("{e:#}"))),
        }
    }
    progress.finish_and_clear();
    failures.sort_by_key(|f| f.0);
    match ctx.out {
        OutputFormat::Json => {
            let errors: Vec<Value> = failures
                .iter()
                .map(|(_, at, id, e)| json!({"row": at, "device_id": id, "error": e}))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "created": created, "failed": failures.len(), "errors": errors,
                }))?
            );
        }
        OutputFormat::Table => {
            for (_, at, id, e) in &failures {
                let who = if id.is_empty() {
                    String::new()
                } else {
                    format!(" ({id})")
                };
                eprintln!("{at}{who}: {e}");
            }
            println!("created {created}, failed {} of {total}", failures.len());
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "{} of {total} devices were not created (see the errors above)",
            failures.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";

    #[test]
    fn csv_rows_with_per_row_errors() {
        let text = format!(
            "# devices\n\
             device_id,dev_eui,app_eui,app_key,name\n\
             dev-1,70B3D57ED0000001,0000000000000001,{KEY},first\n\
             dev-2,70B3D57ED000002,0000000000000001,{KEY},bad eui\n\
             dev-3,70B3D57ED0000003\n\
             dev-1,70B3D57ED0000004,0000000000000001,{KEY},dup id\n\
             dev-5,70B3D57ED0000001,0000000000000001,{KEY},dup eui\n"
        );
        let rows = parse_csv(&text).unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[0].at, "line 3");
        assert!(
            rows[2]
                .fields
                .as_ref()
                .unwrap_err()
                .message
                .contains("has 2 fields")
        );
        let defaults = vec![
            ("frequency_plan_id", "EU_863_870".to_owned()),
            ("lorawan_version", "1.0.3".to_owned()),
            ("lorawan_phy_version", "RP002-1.0.3".to_owned()),
        ];
        let checked = check_rows("app-1", rows, &defaults, false);
        let ok = checked[0].spec.as_ref().unwrap();
        assert_eq!(ok.name, "first");
        assert_eq!(ok.frequency_plan_id, "EU_863_870");
        assert_eq!(
            ok.join_eui.unwrap().to_string().to_uppercase(),
            "0000000000000001"
        );
        let errs: Vec<(String, String)> = checked[1..]
            .iter()
            .map(|c| (c.at.clone(), c.spec.as_ref().unwrap_err().clone()))
            .collect();
        assert_eq!(errs[0].0, "line 4");
        assert!(errs[0].1.starts_with("dev_eui: "), "{}", errs[0].1);
        assert!(errs[1].1.starts_with("row: has 2 fields"), "{}", errs[1].1);
        assert_eq!(errs[2].1, "device_id: dev-1 is also on line 3");
        assert!(
            errs[3].1.starts_with("dev_eui: ") && errs[3].1.contains("also on line 3"),
            "{}",
            errs[3].1
        );
    }

    #[test]
    fn csv_header_errors_fail_the_file() {
        let err = parse_csv("device_id,colour\n").unwrap_err().to_string();
        assert!(
            err.contains("column 2") && err.contains("\"colour\""),
            "{err}"
        );
        let err = parse_csv("device_id,app-eui,join_eui\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("appears twice"), "{err}");
    }

    #[test]
    fn json_array_and_lines() {
        let text = format!(
            r#"[{{"device_id":"dev-1","dev_eui":"70B3D57ED0000001","join_eui":"0000000000000001","app_key":"{KEY}","supports_class_c":true,"attributes":{{"site":"north"}}}},
               {{"device_id":"dev-2","colour":"red"}},
               "nope"]"#
        );
        let rows = parse_json(&text).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].at, "item 2");
        assert_eq!(rows[1].fields.as_ref().unwrap_err().field, "colour");
        assert!(rows[2].fields.is_err());
        let defaults = vec![
            ("frequency_plan_id", "EU_863_870".to_owned()),
            ("lorawan_version", "1.0.3".to_owned()),
            ("lorawan_phy_version", "RP002-1.0.3".to_owned()),
        ];
        let checked = check_rows("app-1", rows, &defaults, false);
        let spec = checked[0].spec.as_ref().unwrap();
        assert!(spec.class_c);
        assert_eq!(spec.attributes["site"], "north");

        let lines = "{\"device_id\":\"dev-1\",\"dev_eui\":\"70B3D57ED0000001\",\"join_eui\":\"0000000000000001\"}\n\n{broken\n";
        let rows = parse_json(lines).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].at, "line 3");
        assert!(
            rows[1]
                .fields
                .as_ref()
                .unwrap_err()
                .message
                .starts_with("not JSON")
        );
        let checked = check_rows("app-1", rows, &defaults, true);
        assert!(
            checked[0].spec.is_ok(),
            "OTAA without keys is fine registry-only"
        );
    }

    #[test]
    fn registry_only_refuses_keys() {
        let text = format!(
            "device_id,dev_eui,join_eui,app_key,frequency_plan_id,lorawan_version,lorawan_phy_version\ndev-1,70B3D57ED0000001,0000000000000001,{KEY},EU_863_870,1.0.3,RP002-1.0.3\n"
        );
        let checked = check_rows("app-1", parse_csv(&text).unwrap(), &[], true);
        assert!(
            checked[0]
                .spec
                .as_ref()
                .unwrap_err()
                .contains("--registry-only")
        );
    }
}
