//! The services and methods of [`FILE_DESCRIPTOR_SET`](crate::FILE_DESCRIPTOR_SET), with
//! their REST bindings (`google.api.http` options).
//!
//! `prost-types` drops custom options when it decodes descriptors, so this module decodes
//! just the parts it needs with its own small descriptor messages, whose `MethodOptions`
//! knows the `google.api.http` extension field (72295728). The REST layer builds its routes
//! from [`methods`]: for each [`HttpBinding`], fill the request message from the path
//! variables (dotted field paths), the body (`*` for the whole message) and the query string,
//! then call the gRPC method [`Method::grpc_path`].

use crate::google::api::{HttpRule, http_rule::Pattern};
use prost::Message;
use std::sync::OnceLock;

#[derive(Clone, PartialEq, Message)]
struct FileDescriptorSet {
    #[prost(message, repeated, tag = "1")]
    file: Vec<FileDescriptorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct FileDescriptorProto {
    #[prost(string, tag = "2")]
    package: String,
    #[prost(message, repeated, tag = "6")]
    service: Vec<ServiceDescriptorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceDescriptorProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    method: Vec<MethodDescriptorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct MethodDescriptorProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    input_type: String,
    #[prost(string, tag = "3")]
    output_type: String,
    #[prost(message, optional, tag = "4")]
    options: Option<MethodOptions>,
    #[prost(bool, tag = "5")]
    client_streaming: bool,
    #[prost(bool, tag = "6")]
    server_streaming: bool,
}

#[derive(Clone, PartialEq, Message)]
struct MethodOptions {
    #[prost(message, optional, tag = "72295728")]
    http: Option<HttpRule>,
}

/// One RPC of a Tern service.
#[derive(Debug, Clone, PartialEq)]
pub struct Method {
    /// Full service name, e.g. `tern.v3.Gs`.
    pub service: String,
    /// Method name, e.g. `GetGatewayConnectionStats`.
    pub name: String,
    /// Full request message name, e.g. `tern.v3.GatewayIdentifiers`.
    pub input_type: String,
    /// Full response message name.
    pub output_type: String,
    /// True when the client sends a stream.
    pub client_streaming: bool,
    /// True when the server sends a stream.
    pub server_streaming: bool,
    /// The REST bindings: the main one first, then the additional ones; empty for internal RPCs.
    pub http: Vec<HttpBinding>,
}

impl Method {
    /// The gRPC request path, `/tern.v3.Gs/GetGatewayConnectionStats`.
    pub fn grpc_path(&self) -> String {
        format!("/{}/{}", self.service, self.name)
    }
}

/// One REST binding of a method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpBinding {
    /// The HTTP verb: `GET`, `POST`, `PUT`, `PATCH`, `DELETE` or a custom one.
    pub verb: String,
    /// The URL template, e.g. `/api/v3/applications/{application_ids.application_id}`.
    pub path: String,
    /// The request field the body fills: `*` for the whole message, empty for no body.
    pub body: String,
    /// The response field written as the body; empty for the whole message.
    pub response_body: String,
}

impl HttpBinding {
    /// Reads one rule (without its additional bindings); `None` when it has no pattern.
    fn from_rule(rule: &HttpRule) -> Option<Self> {
        let (verb, path) = match rule.pattern.as_ref()? {
            Pattern::Get(p) => ("GET".to_owned(), p.clone()),
            Pattern::Put(p) => ("PUT".to_owned(), p.clone()),
            Pattern::Post(p) => ("POST".to_owned(), p.clone()),
            Pattern::Delete(p) => ("DELETE".to_owned(), p.clone()),
            Pattern::Patch(p) => ("PATCH".to_owned(), p.clone()),
            Pattern::Custom(c) => (c.kind.clone(), c.path.clone()),
        };
        Some(Self {
            verb,
            path,
            body: rule.body.clone(),
            response_body: rule.response_body.clone(),
        })
    }

    /// The path variables of the URL template, as dotted field paths.
    pub fn path_variables(&self) -> Vec<&str> {
        self.path
            .split('{')
            .skip(1)
            .filter_map(|s| s.split('}').next())
            .map(|v| v.split('=').next().unwrap_or(v))
            .collect()
    }
}

/// Every method of every service in package `tern.v3`, in declaration order.
pub fn methods() -> &'static [Method] {
    static METHODS: OnceLock<Vec<Method>> = OnceLock::new();
    METHODS.get_or_init(|| {
        // The descriptor set is produced by protoc at build time; failing to decode it is a
        // build defect, not a runtime condition.
        let set = FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("FILE_DESCRIPTOR_SET is a valid FileDescriptorSet");
        let mut out = Vec::new();
        for file in set.file.iter().filter(|f| f.package == "tern.v3") {
            for svc in &file.service {
                for m in &svc.method {
                    let mut http = Vec::new();
                    if let Some(rule) = m.options.as_ref().and_then(|o| o.http.as_ref()) {
                        http.extend(HttpBinding::from_rule(rule));
                        http.extend(
                            rule.additional_bindings
                                .iter()
                                .filter_map(HttpBinding::from_rule),
                        );
                    }
                    out.push(Method {
                        service: format!("{}.{}", file.package, svc.name),
                        name: m.name.clone(),
                        input_type: m.input_type.trim_start_matches('.').to_owned(),
                        output_type: m.output_type.trim_start_matches('.').to_owned(),
                        client_streaming: m.client_streaming,
                        server_streaming: m.server_streaming,
                        http,
                    });
                }
            }
        }
        out
    })
}

/// The full names of the services in package `tern.v3`, e.g. `tern.v3.GsNs`.
pub fn services() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for m in methods() {
        if names.last() != Some(&m.service.as_str()) {
            names.push(&m.service);
        }
    }
    names
}
