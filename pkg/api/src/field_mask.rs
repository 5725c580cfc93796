//! `google.protobuf.FieldMask` with the proto3 JSON mapping of the specification.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

/// A set of field paths (`google.protobuf.FieldMask`): which fields a request reads or writes.
///
/// Paths use the proto field names (`"session.dev_addr"`). In JSON the mask is one string of
/// comma-separated lowerCamelCase paths (`"session.devAddr,name"`), as the proto3 JSON mapping
/// says; the object form `{"paths": [...]}` and proto names are accepted on input too.
#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct FieldMask {
    /// The field paths, in proto field names.
    #[prost(string, repeated, tag = "1")]
    pub paths: Vec<String>,
}

impl FieldMask {
    /// Builds a mask from paths.
    pub fn new<I, S>(paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            paths: paths.into_iter().map(Into::into).collect(),
        }
    }

    /// True when `path` or one of its parents is in the mask (`"session"` covers
    /// `"session.dev_addr"`).
    pub fn covers(&self, path: &str) -> bool {
        self.paths.iter().any(|p| {
            path == p
                || (path.starts_with(p.as_str()) && path.as_bytes().get(p.len()) == Some(&b'.'))
        })
    }
}

/// `dev_addr` → `devAddr`, per path segment.
fn to_camel(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper = false;
    for c in path.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `devAddr` → `dev_addr`; proto names pass through unchanged.
fn to_snake(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

impl Serialize for FieldMask {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let joined: Vec<String> = self.paths.iter().map(|p| to_camel(p)).collect();
        s.serialize_str(&joined.join(","))
    }
}

impl<'de> Deserialize<'de> for FieldMask {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldMask;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a comma-separated string of field paths or {\"paths\": [...]}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldMask, E> {
                Ok(FieldMask::new(
                    v.split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(to_snake),
                ))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FieldMask, A::Error> {
                let mut paths = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key != "paths" {
                        return Err(de::Error::unknown_field(&key, &["paths"]));
                    }
                    let v: Vec<String> = map.next_value()?;
                    paths.extend(v.iter().map(|p| to_snake(p)));
                }
                Ok(FieldMask { paths })
            }
        }
        d.deserialize_any(V)
    }
}
