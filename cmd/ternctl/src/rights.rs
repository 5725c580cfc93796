//! Rights as operators write them: `application:traffic:read`, or `traffic:read` relative to
//! the kind of entity a key or collaborator belongs to.

use tern_api::v3::Right;

/// The kinds of entity that have API keys and rights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntityKind {
    /// A user.
    User,
    /// An organization.
    Organization,
    /// An application.
    Application,
    /// A gateway.
    Gateway,
}

impl EntityKind {
    /// The prefix of this kind's rights, e.g. `application`.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Organization => "organization",
            Self::Application => "application",
            Self::Gateway => "gateway",
        }
    }

    /// The kind in prose, with its article.
    pub fn noun(self) -> &'static str {
        match self {
            Self::User => "a user",
            Self::Organization => "an organization",
            Self::Application => "an application",
            Self::Gateway => "a gateway",
        }
    }
}

/// Longer spellings operators also write, by the name the server uses.
const ALIASES: &[(&str, &str)] = &[
    ("user:settings:basic", "user:settings"),
    ("organization:settings:basic", "organization:settings"),
    ("organization:members", "organization:settings:members"),
    ("application:settings:basic", "application:settings"),
    ("gateway:settings:basic", "gateway:settings"),
    ("gateway:status:read", "gateway:status"),
    ("gateway:location", "gateway:location:read"),
];

/// The canonical name of a right (`application:traffic:read`).
pub fn name(right: Right) -> String {
    tern_api::rights::name(right)
        .map(str::to_owned)
        .unwrap_or_else(|| right.as_str_name().to_owned())
}

fn lookup(full: &str) -> Option<Right> {
    let full = ALIASES
        .iter()
        .find(|(alias, _)| *alias == full)
        .map_or(full, |(_, canonical)| canonical);
    tern_api::rights::from_str(full)
}

/// Parses one right: a name relative to `kind` (`traffic:read`, `all` is `<kind>:all`), a full
/// name (`application:traffic:read`), or the proto enum name (`RIGHT_ALL` for the global right).
pub fn parse_one(kind: EntityKind, text: &str) -> Result<Right, String> {
    let t = text.trim().to_ascii_lowercase();
    if t.is_empty() {
        return Err("empty right".to_owned());
    }
    if let Some(r) = Right::from_str_name(&t.to_ascii_uppercase()).filter(|r| *r != Right::Invalid)
    {
        return Ok(r);
    }
    // Relative first, so `all` on an application key is `application:all`.
    if let Some(r) = lookup(&format!("{}:{t}", kind.prefix())).or_else(|| lookup(&t)) {
        return Ok(r);
    }
    let prefix = format!("{}:", kind.prefix());
    let valid: Vec<&str> = tern_api::rights::RIGHTS
        .iter()
        .filter_map(|(_, n)| n.strip_prefix(&prefix))
        .collect();
    Err(format!(
        "unknown right {text:?} for {}: expected one of {} (or a full name such as {}info)",
        kind.noun(),
        valid.join(", "),
        prefix
    ))
}

/// Parses a comma-separated list of rights (repeated flags are joined by the caller).
pub fn parse_list(kind: EntityKind, texts: &[String]) -> Result<Vec<Right>, String> {
    let mut out = Vec::new();
    for part in texts.iter().flat_map(|t| t.split(',')) {
        if part.trim().is_empty() {
            continue;
        }
        let r = parse_one(kind, part)?;
        if !out.contains(&r) {
            out.push(r);
        }
    }
    if out.is_empty() {
        return Err("no rights given: use --rights, e.g. --rights info,traffic:read".to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_forms_are_relative_to_the_kind() {
        let k = EntityKind::Application;
        assert_eq!(
            parse_one(k, "traffic:read"),
            Ok(Right::ApplicationTrafficRead)
        );
        assert_eq!(
            parse_one(k, "traffic:down:write"),
            Ok(Right::ApplicationTrafficDownWrite)
        );
        assert_eq!(parse_one(k, "all"), Ok(Right::ApplicationAll));
        assert_eq!(
            parse_one(k, "settings"),
            Ok(Right::ApplicationSettingsBasic)
        );
        assert_eq!(
            parse_one(EntityKind::Gateway, "status"),
            Ok(Right::GatewayStatusRead)
        );
        assert_eq!(
            parse_one(EntityKind::Gateway, "link"),
            Ok(Right::GatewayLink)
        );
        assert_eq!(parse_one(EntityKind::User, "all"), Ok(Right::UserAll));
        assert_eq!(
            parse_one(EntityKind::Organization, "members"),
            Ok(Right::OrganizationSettingsMembers)
        );
    }

    #[test]
    fn full_and_enum_names() {
        let k = EntityKind::User;
        assert_eq!(
            parse_one(k, "application:traffic:read"),
            Ok(Right::ApplicationTrafficRead)
        );
        assert_eq!(
            parse_one(k, " Application:Devices:Read-Keys "),
            Ok(Right::ApplicationDevicesReadKeys)
        );
        assert_eq!(parse_one(k, "RIGHT_ALL"), Ok(Right::All));
        assert_eq!(parse_one(k, "right_gateway_link"), Ok(Right::GatewayLink));
        assert!(parse_one(k, "RIGHT_INVALID").is_err());
    }

    #[test]
    fn unknown_right_lists_the_valid_ones() {
        let err = parse_one(EntityKind::Application, "traffic:rad").unwrap_err();
        assert!(err.contains("\"traffic:rad\" for an application"), "{err}");
        assert!(err.contains("traffic:read"), "{err}");
        assert!(err.contains("devices:read-keys"), "{err}");
        assert!(!err.contains("gateway"), "{err}");
    }

    #[test]
    fn lists_split_on_commas_and_drop_duplicates() {
        let got = parse_list(
            EntityKind::Application,
            &[
                "traffic:read,traffic:down:write".into(),
                "application:traffic:read".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Right::ApplicationTrafficRead,
                Right::ApplicationTrafficDownWrite
            ]
        );
        assert!(parse_list(EntityKind::Application, &[",".into()]).is_err());
        let err = parse_list(EntityKind::Gateway, &["info,nope".into()]).unwrap_err();
        assert!(err.contains("\"nope\""), "{err}");
    }

    #[test]
    fn every_right_has_a_name_that_parses_back() {
        for (right, n) in tern_api::rights::RIGHTS {
            assert_eq!(name(*right), *n);
            if *right == Right::All {
                // `all` is relative: the global right is written RIGHT_ALL.
                continue;
            }
            assert_eq!(parse_one(EntityKind::User, n), Ok(*right), "{n}");
        }
    }
}
