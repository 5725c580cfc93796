//! Rendering of API messages: a readable table by default, JSON for scripts.
//!
//! JSON is the REST API's mapping (proto field names, defaults omitted, EUIs and keys in hex),
//! so a script sees the same document from `ternctl -o json` and from `curl`.

use clap::ValueEnum;
use comfy_table::{ContentArrangement, Table, presets};
use serde_json::Value;
use tern_api::v3::Right;

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A readable table.
    #[default]
    Table,
    /// JSON (one document; one line per event when streaming).
    Json,
}

/// The JSON of a message, as the REST API renders it.
pub fn to_json<M: prost::Message + prost::Name>(msg: &M) -> Value {
    let pool = tern_api::rest::descriptor_pool();
    let Some(desc) = pool.get_message_by_name(&M::full_name()) else {
        // Every generated message is in the pool; this only guards a build mismatch.
        return Value::String(format!("<{} not in the descriptor pool>", M::full_name()));
    };
    tern_api::rest::render(&desc, &msg.encode_to_vec(), "")
        .unwrap_or_else(|e| Value::String(format!("<cannot render {}: {e}>", M::full_name())))
}

/// One cell's text: scalars as they are, right names as operators write them, lists joined.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => {
            if let Some(r) = Right::from_str_name(s) {
                crate::rights::name(r)
            } else if let Some(v) = version_text(s) {
                v
            } else {
                s.clone()
            }
        }
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            items.iter().map(cell).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

/// LoRaWAN and Regional Parameters versions as operators write them (`1.0.3`, `RP002-1.0.3`).
fn version_text(s: &str) -> Option<String> {
    if let Some(v) = s.strip_prefix("MAC_V") {
        return Some(v.replace('_', "."));
    }
    let (spec, rest) = s
        .strip_prefix("RP001_V")
        .map(|r| ("RP001", r))
        .or_else(|| s.strip_prefix("RP002_V").map(|r| ("RP002", r)))
        .or_else(|| s.strip_prefix("TS001_V").map(|r| ("TS001", r)))?;
    let (num, rev) = match rest.split_once("_REV_") {
        Some((n, r)) => (n, format!("-{}", r.to_ascii_lowercase())),
        None => (rest, String::new()),
    };
    Some(format!("{spec}-{}{rev}", num.replace('_', ".")))
}

/// Flattens a JSON object into `(path, text)` rows: `ids.application_id`, `attributes.k`.
pub fn flatten(v: &Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, child, out);
                }
            }
            Value::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
                for (i, child) in items.iter().enumerate() {
                    walk(&format!("{prefix}.{i}"), child, out);
                }
            }
            scalar => out.push((prefix.to_owned(), cell(scalar))),
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out
}

/// The value at a dotted path of a JSON object.
pub fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

fn new_table() -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    t
}

/// A two-column table of one object's fields.
pub fn render_object(v: &Value) -> String {
    let mut t = new_table();
    for (k, v) in flatten(v) {
        t.add_row(vec![k, v]);
    }
    trim_lines(&t.to_string())
}

/// A table with one row per object and the given `(header, path)` columns.
pub fn render_rows(items: &[Value], columns: &[(&str, &str)]) -> String {
    let mut t = new_table();
    t.set_header(columns.iter().map(|(h, _)| h.to_string()));
    for item in items {
        t.add_row(
            columns
                .iter()
                .map(|(_, path)| at(item, path).map(cell).unwrap_or_default()),
        );
    }
    trim_lines(&t.to_string())
}

// The borderless preset pads every line to the table's width.
fn trim_lines(s: &str) -> String {
    s.lines()
        .map(|l| l.trim_end().strip_prefix(' ').unwrap_or(l.trim_end()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints one message.
pub fn print_one<M: prost::Message + prost::Name>(format: OutputFormat, msg: &M) {
    print_value(format, &to_json(msg));
}

/// Prints one JSON document, as a key/value table or as JSON.
pub fn print_value(format: OutputFormat, v: &Value) {
    match format {
        OutputFormat::Json => println!("{}", pretty(v)),
        OutputFormat::Table => println!("{}", render_object(v)),
    }
}

/// Prints a list: a table with `columns`, or a JSON array.
pub fn print_list<M: prost::Message + prost::Name>(
    format: OutputFormat,
    items: &[M],
    columns: &[(&str, &str)],
) {
    let values: Vec<Value> = items.iter().map(to_json).collect();
    match format {
        OutputFormat::Json => println!("{}", pretty(&Value::Array(values))),
        OutputFormat::Table => println!("{}", render_rows(&values, columns)),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tern_api::v3::{Application, ApplicationIdentifiers, GatewayIdentifiers};

    #[test]
    fn json_uses_proto_names_and_hex_euis() {
        let app = Application {
            ids: Some(ApplicationIdentifiers {
                application_id: "app-1".into(),
            }),
            name: "Demo".into(),
            ..Default::default()
        };
        assert_eq!(
            to_json(&app),
            json!({"ids": {"application_id": "app-1"}, "name": "Demo"})
        );
        let gtw = GatewayIdentifiers {
            gateway_id: "gw-1".into(),
            eui: vec![0x70, 0xB3, 0xD5, 0x7E, 0xD0, 0, 0, 1],
        };
        assert_eq!(to_json(&gtw)["eui"], json!("70B3D57ED0000001"));
    }

    #[test]
    fn object_table_flattens_nested_fields() {
        let v = json!({
            "ids": {"application_id": "app-1"},
            "attributes": {"site": "north"},
            "rights": ["RIGHT_APPLICATION_INFO", "RIGHT_APPLICATION_TRAFFIC_READ"],
            "antennas": [{"gain": 3.0}],
        });
        let rows = flatten(&v);
        assert_eq!(
            rows,
            vec![
                ("ids.application_id".into(), "app-1".into()),
                ("attributes.site".into(), "north".into()),
                (
                    "rights".into(),
                    "application:info,application:traffic:read".into()
                ),
                ("antennas.0.gain".into(), "3.0".into()),
            ]
        );
        let text = render_object(&v);
        let first = text.lines().next().unwrap();
        assert!(first.starts_with("ids.application_id"), "{text}");
        assert!(first.ends_with("app-1"), "{text}");
    }

    #[test]
    fn versions_read_as_operators_write_them() {
        assert_eq!(cell(&json!("MAC_V1_0_3")), "1.0.3");
        assert_eq!(cell(&json!("RP002_V1_0_3")), "RP002-1.0.3");
        assert_eq!(cell(&json!("RP001_V1_0_2_REV_B")), "RP001-1.0.2-b");
        assert_eq!(cell(&json!("TS001_V1_0_1")), "TS001-1.0.1");
        assert_eq!(cell(&json!("EU_863_870")), "EU_863_870");
    }

    #[test]
    fn row_table_has_a_header_and_one_line_per_item() {
        let items = vec![
            json!({"ids": {"application_id": "a1"}, "name": "One"}),
            json!({"ids": {"application_id": "a-two"}}),
        ];
        let text = render_rows(&items, &[("ID", "ids.application_id"), ("NAME", "name")]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("ID") && lines[0].ends_with("NAME"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("a1") && lines[1].ends_with("One"),
            "{text}"
        );
        assert_eq!(lines[2], "a-two");
        // Columns line up.
        assert_eq!(lines[0].find("NAME"), lines[1].find("One"));
    }
}
