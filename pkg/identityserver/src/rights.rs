//! The one mapping between the API's [`v3::Right`] enum and the rights strings the cluster's
//! auth layer checks (`application:info`, ...), and set operations on rights.

use std::collections::BTreeSet;

use tern_api::v3::Right;
use tern_cluster::auth::grants;

/// Every right with its string form. `<kind>:all` and `all` imply others (see
/// [`tern_cluster::auth::grants`]).
pub const RIGHTS: &[(Right, &str)] = &[
    (Right::UserInfo, "user:info"),
    (Right::UserSettingsBasic, "user:settings"),
    (Right::UserSettingsApiKeys, "user:settings:api-keys"),
    (Right::UserDelete, "user:delete"),
    (Right::UserApplicationsCreate, "user:applications:create"),
    (Right::UserApplicationsList, "user:applications:list"),
    (Right::UserGatewaysCreate, "user:gateways:create"),
    (Right::UserGatewaysList, "user:gateways:list"),
    (Right::UserOrganizationsCreate, "user:organizations:create"),
    (Right::UserOrganizationsList, "user:organizations:list"),
    (Right::UserAll, "user:all"),
    (Right::OrganizationInfo, "organization:info"),
    (Right::OrganizationSettingsBasic, "organization:settings"),
    (
        Right::OrganizationSettingsApiKeys,
        "organization:settings:api-keys",
    ),
    (
        Right::OrganizationSettingsMembers,
        "organization:settings:members",
    ),
    (Right::OrganizationDelete, "organization:delete"),
    (
        Right::OrganizationApplicationsCreate,
        "organization:applications:create",
    ),
    (
        Right::OrganizationApplicationsList,
        "organization:applications:list",
    ),
    (
        Right::OrganizationGatewaysCreate,
        "organization:gateways:create",
    ),
    (
        Right::OrganizationGatewaysList,
        "organization:gateways:list",
    ),
    (Right::OrganizationAll, "organization:all"),
    (Right::ApplicationInfo, "application:info"),
    (Right::ApplicationSettingsBasic, "application:settings"),
    (
        Right::ApplicationSettingsApiKeys,
        "application:settings:api-keys",
    ),
    (
        Right::ApplicationSettingsCollaborators,
        "application:settings:collaborators",
    ),
    (
        Right::ApplicationSettingsPackages,
        "application:settings:packages",
    ),
    (Right::ApplicationDelete, "application:delete"),
    (Right::ApplicationDevicesRead, "application:devices:read"),
    (Right::ApplicationDevicesWrite, "application:devices:write"),
    (
        Right::ApplicationDevicesReadKeys,
        "application:devices:read-keys",
    ),
    (
        Right::ApplicationDevicesWriteKeys,
        "application:devices:write-keys",
    ),
    (Right::ApplicationTrafficRead, "application:traffic:read"),
    (
        Right::ApplicationTrafficDownWrite,
        "application:traffic:down:write",
    ),
    (Right::ApplicationLink, "application:link"),
    (Right::ApplicationAll, "application:all"),
    (Right::GatewayInfo, "gateway:info"),
    (Right::GatewaySettingsBasic, "gateway:settings"),
    (Right::GatewaySettingsApiKeys, "gateway:settings:api-keys"),
    (
        Right::GatewaySettingsCollaborators,
        "gateway:settings:collaborators",
    ),
    (Right::GatewayDelete, "gateway:delete"),
    (Right::GatewayTrafficRead, "gateway:traffic:read"),
    (Right::GatewayLink, "gateway:link"),
    (Right::GatewayStatusRead, "gateway:status"),
    (Right::GatewayLocationRead, "gateway:location:read"),
    (Right::GatewayAll, "gateway:all"),
    (Right::All, "all"),
];

/// The string form of a right; `None` for `RIGHT_INVALID` and unknown numbers.
pub fn to_str(right: i32) -> Option<&'static str> {
    RIGHTS
        .iter()
        .find(|(r, _)| *r as i32 == right)
        .map(|(_, s)| *s)
}

/// The enum value of a rights string; `None` for strings that name no right.
pub fn from_str(right: &str) -> Option<Right> {
    RIGHTS.iter().find(|(_, s)| *s == right).map(|(r, _)| *r)
}

/// The strings of API rights; `field` names the request field in the error for an invalid one.
pub fn strings(field: &str, rights: &[i32]) -> Result<BTreeSet<String>, String> {
    rights
        .iter()
        .map(|&r| {
            to_str(r)
                .map(str::to_owned)
                .ok_or_else(|| format!("{field}: {r} is not a right"))
        })
        .collect()
}

/// The API form of rights strings, in enum order; strings that name no right are left out.
pub fn enums(rights: &BTreeSet<String>) -> Vec<i32> {
    let mut out: Vec<i32> = rights
        .iter()
        .filter_map(|s| from_str(s))
        .map(|r| r as i32)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// What both sets grant: each right of one side that the other side grants (`all` ∩
/// `application:info` is `application:info`; `application:all` ∩ `all` is `application:all`).
pub fn intersect(a: &BTreeSet<String>, b: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in a {
        if grants(b, r) {
            out.insert(r.clone());
        }
    }
    for r in b {
        if grants(a, r) {
            out.insert(r.clone());
        }
    }
    out
}

/// The first right of `wanted` that `held` does not grant.
pub fn first_missing<'a>(held: &BTreeSet<String>, wanted: &'a BTreeSet<String>) -> Option<&'a str> {
    wanted.iter().find(|r| !grants(held, r)).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(r: &[&str]) -> BTreeSet<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_enum_value_has_one_string_and_back() {
        let mut seen = BTreeSet::new();
        for (right, s) in RIGHTS {
            assert!(seen.insert(*s), "{s} twice");
            assert_eq!(from_str(s), Some(*right));
            assert_eq!(to_str(*right as i32), Some(*s));
        }
        // Every enum value but RIGHT_INVALID is mapped.
        for n in 1..=99 {
            if Right::try_from(n).is_ok() {
                assert!(to_str(n).is_some(), "right {n} unmapped");
            }
        }
        assert_eq!(to_str(0), None);
        assert!(strings("rights", &[0]).unwrap_err().contains("rights"));
    }

    #[test]
    fn intersection_respects_implied_rights() {
        assert_eq!(
            intersect(&set(&["all"]), &set(&["application:info"])),
            set(&["application:info"])
        );
        assert_eq!(
            intersect(&set(&["application:all"]), &set(&["all"])),
            set(&["application:all"])
        );
        assert!(intersect(&set(&["gateway:all"]), &set(&["application:info"])).is_empty());
        assert_eq!(
            first_missing(&set(&["application:info"]), &set(&["application:link"])),
            Some("application:link")
        );
    }
}
