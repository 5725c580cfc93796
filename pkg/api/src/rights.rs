//! The one mapping between the API's [`Right`] enum and the rights strings every role checks
//! (`application:info`, `application:devices:read-keys`, ...): the Identity Server grants by
//! it, the roles require by it, `ternctl` reads and prints by it.

use crate::v3::Right;

/// Every right with its string form, the one the auth layer checks. `<kind>:all` and `all`
/// imply others (see `tern_cluster::auth::grants`).
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

/// The string form of a right.
pub fn name(right: Right) -> Option<&'static str> {
    to_str(right as i32)
}
