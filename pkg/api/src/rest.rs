//! The REST mapping of the public gRPC API, derived from the `google.api.http` bindings.
//!
//! Nothing here is written per method: [`RestApi`] reads every binding from
//! [`FILE_DESCRIPTOR_SET`](crate::FILE_DESCRIPTOR_SET), matches a request's verb and path to
//! one, builds the request message from the path variables, the query string and the JSON
//! body (proto3 JSON mapping, through `prost-reflect`), and renders the response the same way.
//! The caller (the HTTP server) sends the encoded request to the gRPC method in-process.
//!
//! JSON conventions: output uses the proto field names (`end_device_ids`), as The Things
//! Stack's REST API does; input accepts proto names and lowerCamelCase. Fields holding an EUI,
//! a DevAddr, a NetID or a clear key are hex on both sides, as on every Tern interface (see
//! [`is_hex_field`]); other `bytes` fields are base64, as the proto3 JSON mapping says.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor,
    SerializeOptions,
};
use serde_json::{Map, Value};

use crate::http::{HttpBinding, Method};

/// Why a REST request could not be turned into a gRPC request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    /// No binding has this path.
    #[error("no API route for {verb} {path}")]
    NotFound {
        /// The request's verb.
        verb: String,
        /// The request's path.
        path: String,
    },
    /// A binding has this path, but not with this verb.
    #[error("{verb} is not allowed on {path}; allowed: {}", allowed.join(", "))]
    MethodNotAllowed {
        /// The request's verb.
        verb: String,
        /// The request's path.
        path: String,
        /// The verbs the path has.
        allowed: Vec<String>,
    },
    /// The body, a query parameter or a path variable is not valid for the request message.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
}

/// The path variables a route captured: (dotted field path, percent-decoded value).
pub type PathVars = Vec<(String, String)>;

/// One REST route: a binding of one method.
#[derive(Debug, Clone)]
pub struct RestRoute {
    method: &'static Method,
    binding: HttpBinding,
    segments: Vec<Segment>,
    input: MessageDescriptor,
    output: MessageDescriptor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// A variable matching one segment (`{a.b}` or `{a.b=*}`).
    Var(String),
    /// A variable matching the rest of the path (`{a.b=**}`).
    Rest(String),
}

/// The REST routes of every public method.
#[derive(Debug, Clone)]
pub struct RestApi {
    routes: Vec<RestRoute>,
}

/// The descriptor pool of every compiled file, decoded once.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // Produced by protoc at build time: failing to decode it is a build defect.
        DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("FILE_DESCRIPTOR_SET decodes into a descriptor pool")
    })
}

impl RestApi {
    /// The routes of every method with a `google.api.http` binding.
    pub fn new() -> Self {
        let pool = descriptor_pool();
        let mut routes = Vec::new();
        for method in crate::http::methods() {
            if method.client_streaming {
                // REST has no client streams; such methods are gRPC only.
                continue;
            }
            let message = |name: &str| {
                pool.get_message_by_name(name)
                    .unwrap_or_else(|| panic!("message {name} is in the descriptor pool"))
            };
            for binding in &method.http {
                routes.push(RestRoute {
                    method,
                    segments: parse_template(&binding.path),
                    binding: binding.clone(),
                    input: message(&method.input_type),
                    output: message(&method.output_type),
                });
            }
        }
        Self { routes }
    }

    /// Every route, in declaration order.
    pub fn routes(&self) -> &[RestRoute] {
        &self.routes
    }

    /// The route for `verb` and `path`, with the path variables it captured (field path,
    /// percent-decoded value). When several templates match, the one with the most literal
    /// segments wins (`/gateways/stats` before `/gateways/{id}`).
    pub fn find(&self, verb: &str, path: &str) -> Result<(&RestRoute, PathVars), RestError> {
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let mut best: Option<(usize, &RestRoute, PathVars)> = None;
        let mut allowed = Vec::new();
        for route in &self.routes {
            let Some(vars) = route.matches(&parts) else {
                continue;
            };
            if !route.binding.verb.eq_ignore_ascii_case(verb) {
                allowed.push(route.binding.verb.clone());
                continue;
            }
            let literals = route
                .segments
                .iter()
                .filter(|s| matches!(s, Segment::Literal(_)))
                .count();
            if best.as_ref().is_none_or(|(n, _, _)| literals > *n) {
                best = Some((literals, route, vars));
            }
        }
        match best {
            Some((_, route, vars)) => Ok((route, vars)),
            None if !allowed.is_empty() => {
                allowed.sort();
                allowed.dedup();
                Err(RestError::MethodNotAllowed {
                    verb: verb.to_owned(),
                    path: path.to_owned(),
                    allowed,
                })
            }
            None => Err(RestError::NotFound {
                verb: verb.to_owned(),
                path: path.to_owned(),
            }),
        }
    }
}

impl Default for RestApi {
    fn default() -> Self {
        Self::new()
    }
}

fn parse_template(path: &str) -> Vec<Segment> {
    path.trim_end_matches('/')
        .split('/')
        .skip(1)
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(var) => match var.split_once('=') {
                    Some((name, "**")) => Segment::Rest(name.to_owned()),
                    Some((name, _)) => Segment::Var(name.to_owned()),
                    None => Segment::Var(var.to_owned()),
                },
                None => Segment::Literal(s.to_owned()),
            },
        )
        .collect()
}

impl RestRoute {
    /// The method this route calls.
    pub fn method(&self) -> &Method {
        self.method
    }

    /// The URL template, e.g. `/api/v3/applications/{application_ids.application_id}`; use it
    /// as the route label in metrics.
    pub fn template(&self) -> &str {
        &self.binding.path
    }

    /// The HTTP verb.
    pub fn verb(&self) -> &str {
        &self.binding.verb
    }

    /// The gRPC path to call, `/tern.v3.Gs/GetGatewayConnectionStats`.
    pub fn grpc_path(&self) -> String {
        self.method.grpc_path()
    }

    /// Whether the method streams its responses.
    pub fn server_streaming(&self) -> bool {
        self.method.server_streaming
    }

    fn matches(&self, parts: &[&str]) -> Option<PathVars> {
        let mut vars = Vec::new();
        let mut i = 0;
        for segment in &self.segments {
            match segment {
                Segment::Literal(lit) => {
                    if parts.get(i) != Some(&lit.as_str()) {
                        return None;
                    }
                }
                Segment::Var(name) => {
                    let value = parts.get(i).filter(|p| !p.is_empty())?;
                    vars.push((name.clone(), percent_decode(value)?));
                }
                Segment::Rest(name) => {
                    let rest = parts.get(i..).filter(|r| !r.is_empty())?;
                    vars.push((name.clone(), percent_decode(&rest.join("/"))?));
                    return Some(vars);
                }
            }
            i += 1;
        }
        (i == parts.len()).then_some(vars)
    }

    /// Builds and encodes the request message from the path variables, the raw query string
    /// and the body (JSON; empty means none).
    pub fn build_request(
        &self,
        vars: &[(String, String)],
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Vec<u8>, RestError> {
        let mut json = match self.binding.body.as_str() {
            "" => Value::Object(Map::new()),
            field => {
                let parsed: Value = if body.iter().all(u8::is_ascii_whitespace) {
                    Value::Object(Map::new())
                } else {
                    serde_json::from_slice(body)
                        .map_err(|e| RestError::InvalidArgument(format!("body is not JSON: {e}")))?
                };
                if field == "*" {
                    if !parsed.is_object() {
                        return Err(RestError::InvalidArgument(
                            "body must be a JSON object".to_owned(),
                        ));
                    }
                    parsed
                } else {
                    let mut object = Map::new();
                    object.insert(field.to_owned(), parsed);
                    Value::Object(object)
                }
            }
        };
        // Query parameters fill what neither the path nor a whole-message body fills.
        if self.binding.body != "*" {
            for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
                self.set_path(&mut json, &key, &value, true)?;
            }
        }
        for (path, value) in vars {
            self.set_path(&mut json, path, value, false)?;
        }
        hex_to_base64(&self.input, &mut json)?;
        let message = DynamicMessage::deserialize_with_options(
            self.input.clone(),
            &json,
            &DeserializeOptions::new().deny_unknown_fields(true),
        )
        .map_err(|e| RestError::InvalidArgument(e.to_string()))?;
        Ok(prost::Message::encode_to_vec(&message))
    }

    /// Sets the field at a dotted path to a value given as text, typed by the descriptor.
    fn set_path(
        &self,
        json: &mut Value,
        path: &str,
        value: &str,
        from_query: bool,
    ) -> Result<(), RestError> {
        let names: Vec<&str> = path.split('.').collect();
        let mut desc = self.input.clone();
        let mut node = json;
        for (i, name) in names.iter().enumerate() {
            let field = find_field(&desc, name).ok_or_else(|| {
                let origin = if from_query {
                    "query parameter"
                } else {
                    "path variable"
                };
                RestError::InvalidArgument(format!(
                    "{origin} {path:?}: {} has no field {name:?}",
                    desc.full_name()
                ))
            })?;
            let Value::Object(object) = node else {
                return Err(RestError::InvalidArgument(format!(
                    "{path:?}: {} is not an object",
                    names[..i].join(".")
                )));
            };
            let key = field.name().to_owned();
            // The body may already use the JSON name: write where it already is.
            let key = if object.contains_key(&key) {
                key
            } else if object.contains_key(field.json_name()) {
                field.json_name().to_owned()
            } else {
                key
            };
            if i + 1 == names.len() {
                let typed = scalar_from_text(&field, value).map_err(|why| {
                    RestError::InvalidArgument(format!("{path:?} = {value:?}: {why}"))
                })?;
                if field.is_list() {
                    match object
                        .entry(key)
                        .or_insert_with(|| Value::Array(Vec::new()))
                    {
                        Value::Array(items) => items.push(typed),
                        other => *other = Value::Array(vec![typed]),
                    }
                } else {
                    object.insert(key, typed);
                }
                return Ok(());
            }
            let Kind::Message(child) = field.kind() else {
                return Err(RestError::InvalidArgument(format!(
                    "{path:?}: {name:?} is not a message"
                )));
            };
            desc = child;
            node = object
                .entry(key)
                .or_insert_with(|| Value::Object(Map::new()));
        }
        Ok(())
    }

    /// Renders an encoded response message as JSON.
    pub fn render_response(&self, encoded: &[u8]) -> Result<Value, RestError> {
        render(&self.output, encoded, &self.binding.response_body)
    }
}

/// Renders an encoded message of type `desc` as JSON (proto field names, defaults omitted,
/// hex EUIs and keys); `response_body` selects one field, empty for the whole message.
pub fn render(
    desc: &MessageDescriptor,
    encoded: &[u8],
    response_body: &str,
) -> Result<Value, RestError> {
    let message = DynamicMessage::decode(desc.clone(), encoded)
        .map_err(|e| RestError::InvalidArgument(format!("response does not decode: {e}")))?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    let mut json = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| RestError::InvalidArgument(format!("response does not render: {e}")))?;
    base64_to_hex(desc, &mut json);
    if response_body.is_empty() {
        return Ok(json);
    }
    Ok(json
        .get_mut(response_body)
        .map(Value::take)
        .unwrap_or(Value::Null))
}

fn find_field(desc: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_name(name)
        .or_else(|| desc.get_field_by_json_name(name))
}

/// Turns a path or query value into the JSON the proto3 mapping expects for the field.
fn scalar_from_text(field: &FieldDescriptor, text: &str) -> Result<Value, String> {
    Ok(match field.kind() {
        Kind::Bool => Value::Bool(match text {
            "true" => true,
            "false" => false,
            _ => return Err("expected true or false".to_owned()),
        }),
        Kind::Message(m) if !is_text_message(m.full_name()) => {
            return Err(format!(
                "{} cannot be given as text; send it in the body",
                m.full_name()
            ));
        }
        // Numbers as strings, enums by name, strings, bytes (hex or base64 as the field
        // wants) and the well-known types written as text: the JSON parser takes them as is.
        _ => Value::String(text.to_owned()),
    })
}

/// Well-known message types whose proto3 JSON form is a string.
fn is_text_message(name: &str) -> bool {
    matches!(
        name,
        "google.protobuf.FieldMask" | "google.protobuf.Timestamp" | "google.protobuf.Duration"
    )
}

/// Whether a `bytes` field holds an identifier or a clear key, written in hex on every
/// Tern interface: EUIs, DevAddr, NetID and keys.
pub fn is_hex_field(field: &FieldDescriptor) -> bool {
    matches!(field.kind(), Kind::Bytes) && {
        let name = field.name();
        matches!(name, "eui" | "dev_addr" | "net_id" | "key") || name.ends_with("_eui")
    }
}

/// Calls `f` on each value of a field of `desc` found in `json`, recursing into messages.
fn walk(
    desc: &MessageDescriptor,
    json: &mut Value,
    f: &mut dyn FnMut(&FieldDescriptor, &mut Value) -> Result<(), RestError>,
) -> Result<(), RestError> {
    let Value::Object(object) = json else {
        return Ok(());
    };
    if desc.full_name().starts_with("google.protobuf.") {
        return Ok(());
    }
    for (key, value) in object.iter_mut() {
        let Some(field) = find_field(desc, key) else {
            continue;
        };
        let items: Vec<&mut Value> = match value {
            Value::Array(items) if field.is_list() => items.iter_mut().collect(),
            Value::Object(map) if field.is_map() => map.values_mut().collect(),
            other => vec![other],
        };
        let child = if field.is_map() {
            match field.kind() {
                Kind::Message(entry) => match entry.map_entry_value_field().kind() {
                    Kind::Message(m) => Some(m),
                    _ => None,
                },
                _ => None,
            }
        } else {
            match field.kind() {
                Kind::Message(m) => Some(m),
                _ => None,
            }
        };
        for item in items {
            match &child {
                Some(m) => walk(m, item, f)?,
                None => f(&field, item)?,
            }
        }
    }
    Ok(())
}

fn hex_to_base64(desc: &MessageDescriptor, json: &mut Value) -> Result<(), RestError> {
    walk(desc, json, &mut |field, value| {
        if let (true, Value::String(text)) = (is_hex_field(field), &*value) {
            let bytes = hex::decode(text).map_err(|_| {
                RestError::InvalidArgument(format!("field {:?}: {text:?} is not hex", field.name()))
            })?;
            *value = Value::String(BASE64.encode(bytes));
        }
        Ok(())
    })
}

fn base64_to_hex(desc: &MessageDescriptor, json: &mut Value) {
    let _ = walk(desc, json, &mut |field, value| {
        if let (true, Value::String(text)) = (is_hex_field(field), &*value)
            && let Ok(bytes) = BASE64.decode(text)
        {
            *value = Value::String(hex::encode_upper(bytes));
        }
        Ok(())
    });
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v3;
    use prost::Message;

    fn api() -> RestApi {
        RestApi::new()
    }

    #[test]
    fn every_binding_becomes_a_route() {
        let api = api();
        let bound: usize = crate::http::methods()
            .iter()
            .filter(|m| !m.client_streaming)
            .map(|m| m.http.len())
            .sum();
        assert!(bound > 20, "{bound}");
        assert_eq!(api.routes().len(), bound);
    }

    #[test]
    fn finds_route_and_decodes_path_variables() {
        let api = api();
        let (route, vars) = api
            .find("GET", "/api/v3/applications/my-app/devices/dev%2D1")
            .unwrap();
        assert_eq!(route.grpc_path(), "/tern.v3.EndDeviceRegistry/Get");
        assert_eq!(
            vars,
            vec![
                (
                    "end_device_ids.application_ids.application_id".to_owned(),
                    "my-app".to_owned()
                ),
                ("end_device_ids.device_id".to_owned(), "dev-1".to_owned()),
            ]
        );
    }

    #[test]
    fn unknown_path_and_wrong_verb_are_told_apart() {
        let api = api();
        assert!(matches!(
            api.find("GET", "/api/v3/nothing-here"),
            Err(RestError::NotFound { .. })
        ));
        let err = api
            .find("PATCH", "/api/v3/applications/my-app")
            .unwrap_err();
        let RestError::MethodNotAllowed { allowed, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(allowed.contains(&"GET".to_owned()), "{allowed:?}");
        assert!(
            err.to_string().starts_with("PATCH is not allowed on"),
            "{err}"
        );
    }

    #[test]
    fn request_from_path_query_and_body() {
        let api = api();
        let (route, vars) = api
            .find("GET", "/api/v3/applications/my-app/devices/dev-1")
            .unwrap();
        let encoded = route
            .build_request(&vars, Some("field_mask=name,description"), b"")
            .unwrap();
        let request = v3::GetEndDeviceRequest::decode(encoded.as_slice()).unwrap();
        let ids = request.end_device_ids.unwrap();
        assert_eq!(ids.device_id, "dev-1");
        assert_eq!(ids.application_ids.unwrap().application_id, "my-app");
        assert_eq!(
            request.field_mask.unwrap().paths,
            vec!["name".to_owned(), "description".to_owned()]
        );
    }

    #[test]
    fn hex_euis_in_and_out() {
        let api = api();
        let (route, vars) = api
            .find("POST", "/api/v3/applications/my-app/devices")
            .unwrap();
        let body = br#"{"end_device":{"ids":{"device_id":"dev-1","dev_eui":"70B3D57ED0000001",
            "join_eui":"0000000000000000"},"name":"Dev"}}"#;
        let encoded = route.build_request(&vars, None, body).unwrap();
        let request = v3::CreateEndDeviceRequest::decode(encoded.as_slice()).unwrap();
        let device = request.end_device.unwrap();
        let ids = device.ids.clone().unwrap();
        assert_eq!(
            ids.dev_eui,
            vec![0x70, 0xB3, 0xD5, 0x7E, 0xD0, 0x00, 0x00, 0x01]
        );
        assert_eq!(
            ids.application_ids.unwrap().application_id,
            "my-app",
            "path variable fills the body's message"
        );
        let json = route.render_response(&device.encode_to_vec()).unwrap();
        assert_eq!(json["ids"]["dev_eui"], "70B3D57ED0000001");
        assert_eq!(json["name"], "Dev");
        assert!(json.get("description").is_none(), "defaults are omitted");

        let bad = br#"{"end_device":{"ids":{"device_id":"d","dev_eui":"zz"}}}"#;
        let err = route.build_request(&vars, None, bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid request: field \"dev_eui\": \"zz\" is not hex"
        );
    }

    #[test]
    fn bad_bodies_are_invalid_arguments() {
        let api = api();
        let (route, vars) = api
            .find("POST", "/api/v3/applications/my-app/devices")
            .unwrap();
        for body in [&b"not json"[..], b"[1]", br#"{"no_such_field":1}"#] {
            let err = route.build_request(&vars, None, body).unwrap_err();
            assert!(matches!(err, RestError::InvalidArgument(_)), "{err:?}");
        }
    }
}
