//! Every public method of the IS × credentials without the right it needs → PERMISSION_DENIED
//! naming that right; with exactly that right → allowed. On both storage backends.

mod common;

use common::{Cred, Running, with};
use tern_api::FieldMask;
use tern_api::v3;
use tern_events::EventBus;
use tonic::{Code, Status};

const JOIN_EUI: [u8; 8] = [0x70, 0xb3, 0xd5, 0x7e, 0xd0, 0, 0, 0];
const GW_EUI: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

fn dev_eui(n: u8) -> Vec<u8> {
    vec![0, 0x04, 0xa3, 0x0b, 0, 0x1c, 0x05, n]
}

fn app(id: &str) -> v3::ApplicationIdentifiers {
    v3::ApplicationIdentifiers {
        application_id: id.into(),
    }
}
fn gw(id: &str) -> v3::GatewayIdentifiers {
    v3::GatewayIdentifiers {
        gateway_id: id.into(),
        ..Default::default()
    }
}
fn org(id: &str) -> v3::OrganizationIdentifiers {
    v3::OrganizationIdentifiers {
        organization_id: id.into(),
    }
}
fn user(id: &str) -> v3::UserIdentifiers {
    v3::UserIdentifiers {
        user_id: id.into(),
        ..Default::default()
    }
}
fn dev(app_id: &str, id: &str, n: u8) -> v3::EndDeviceIdentifiers {
    v3::EndDeviceIdentifiers {
        application_ids: Some(app(app_id)),
        device_id: id.into(),
        join_eui: JOIN_EUI.to_vec(),
        dev_eui: dev_eui(n),
        ..Default::default()
    }
}
fn account_user(id: &str) -> v3::OrganizationOrUserIdentifiers {
    v3::OrganizationOrUserIdentifiers {
        ids: Some(v3::organization_or_user_identifiers::Ids::UserIds(user(id))),
    }
}
fn entity(kind: &str, id: &str) -> v3::EntityIdentifiers {
    use v3::entity_identifiers::Ids;
    v3::EntityIdentifiers {
        ids: Some(match kind {
            "application" => Ids::ApplicationIds(app(id)),
            "gateway" => Ids::GatewayIds(gw(id)),
            "organization" => Ids::OrganizationIds(org(id)),
            "user" => Ids::UserIds(user(id)),
            _ => unreachable!(),
        }),
    }
}

fn right(s: &str) -> i32 {
    tern_identityserver::rights::from_str(s).unwrap_or_else(|| panic!("{s}")) as i32
}

/// The fixture every row works on, created with the bootstrap admin key.
struct Fixture {
    is: Running,
    admin: Cred,
    /// A key of app-1 for GetApiKey/UpdateApiKey, and one to delete.
    spare_key: String,
    doomed_key: String,
}

async fn create_key(
    is: &Running,
    admin: &Cred,
    kind: &str,
    id: &str,
    rights: &[&str],
) -> (String, String) {
    let mut c = v3::entity_access_client::EntityAccessClient::new(with(&is.channel, admin));
    let key = c
        .create_api_key(v3::CreateApiKeyRequest {
            entity_ids: Some(entity(kind, id)),
            name: "test".into(),
            rights: rights.iter().map(|r| right(r)).collect(),
            expires_at: None,
        })
        .await
        .unwrap_or_else(|e| panic!("key of {kind} {id} with {rights:?}: {e}"))
        .into_inner();
    (key.id, key.key)
}

async fn fixture(spec: &common::StoreSpec) -> Fixture {
    let store = spec.open().await;
    let is = common::start(
        store,
        EventBus::in_process(64),
        spec.dir.path(),
        common::config(),
    )
    .await;
    let (_, admin_key) = common::bootstrap_credentials(spec.dir.path());
    let admin = Cred::Bearer(admin_key);
    let ch = |c: &Cred| with(&is.channel, c);

    let mut users = v3::user_registry_client::UserRegistryClient::new(ch(&admin));
    for id in ["alice", "bob-del", "carol"] {
        users
            .create(v3::CreateUserRequest {
                user: Some(v3::User {
                    ids: Some(user(id)),
                    password: format!("{id}-password"),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    let mut orgs = v3::organization_registry_client::OrganizationRegistryClient::new(ch(&admin));
    for id in ["org-1", "org-del"] {
        orgs.create(v3::CreateOrganizationRequest {
            organization: Some(v3::Organization {
                ids: Some(org(id)),
                ..Default::default()
            }),
            owner: Some(user("alice")),
        })
        .await
        .unwrap();
    }
    let mut apps = v3::application_registry_client::ApplicationRegistryClient::new(ch(&admin));
    for id in ["app-1", "app-del"] {
        apps.create(v3::CreateApplicationRequest {
            application: Some(v3::Application {
                ids: Some(app(id)),
                ..Default::default()
            }),
            collaborator: Some(account_user("alice")),
        })
        .await
        .unwrap();
    }
    let mut gws = v3::gateway_registry_client::GatewayRegistryClient::new(ch(&admin));
    for (id, eui) in [("gw-1", GW_EUI.to_vec()), ("gw-del", vec![])] {
        gws.create(v3::CreateGatewayRequest {
            gateway: Some(v3::Gateway {
                ids: Some(v3::GatewayIdentifiers {
                    gateway_id: id.into(),
                    eui,
                }),
                frequency_plan_ids: vec!["EU_863_870".into()],
                ..Default::default()
            }),
            collaborator: Some(account_user("alice")),
        })
        .await
        .unwrap();
    }
    let mut devs = v3::end_device_registry_client::EndDeviceRegistryClient::new(ch(&admin));
    for (id, n) in [("dev-1", 1), ("dev-del", 2)] {
        devs.create(v3::CreateEndDeviceRequest {
            end_device: Some(v3::EndDevice {
                ids: Some(dev("app-1", id, n)),
                supports_join: true,
                frequency_plan_id: "EU_863_870".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    }
    let (spare_key, _) =
        create_key(&is, &admin, "application", "app-1", &["application:info"]).await;
    let (doomed_key, _) =
        create_key(&is, &admin, "application", "app-1", &["application:info"]).await;
    Fixture {
        is,
        admin,
        spare_key,
        doomed_key,
    }
}

/// Calls `method` with `cred`; only the outcome matters.
async fn call(f: &Fixture, method: &str, cred: &Cred) -> Result<(), Status> {
    let ch = with(&f.is.channel, cred);
    let mut apps = v3::application_registry_client::ApplicationRegistryClient::new(ch.clone());
    let mut gws = v3::gateway_registry_client::GatewayRegistryClient::new(ch.clone());
    let mut orgs = v3::organization_registry_client::OrganizationRegistryClient::new(ch.clone());
    let mut users = v3::user_registry_client::UserRegistryClient::new(ch.clone());
    let mut devs = v3::end_device_registry_client::EndDeviceRegistryClient::new(ch.clone());
    let mut access = v3::entity_access_client::EntityAccessClient::new(ch.clone());
    let mask = |p: &str| Some(FieldMask::new([p]));
    let app1 = || Some(entity("application", "app-1"));
    match method {
        "ApplicationRegistry.Create" => apps
            .create(v3::CreateApplicationRequest {
                application: Some(v3::Application {
                    ids: Some(app("app-new")),
                    ..Default::default()
                }),
                collaborator: None,
            })
            .await
            .map(drop),
        "ApplicationRegistry.Get" => apps
            .get(v3::GetApplicationRequest {
                application_ids: Some(app("app-1")),
                field_mask: None,
            })
            .await
            .map(drop),
        "ApplicationRegistry.List" => apps
            .list(v3::ListApplicationsRequest {
                collaborator: Some(account_user("alice")),
                ..Default::default()
            })
            .await
            .map(drop),
        "ApplicationRegistry.Update" => apps
            .update(v3::UpdateApplicationRequest {
                application: Some(v3::Application {
                    ids: Some(app("app-1")),
                    name: "App 1".into(),
                    ..Default::default()
                }),
                field_mask: mask("name"),
            })
            .await
            .map(drop),
        "ApplicationRegistry.Delete" => apps
            .delete(v3::DeleteApplicationRequest {
                application_ids: Some(app("app-del")),
                purge: false,
            })
            .await
            .map(drop),
        "GatewayRegistry.Create" => gws
            .create(v3::CreateGatewayRequest {
                gateway: Some(v3::Gateway {
                    ids: Some(gw("gw-new")),
                    ..Default::default()
                }),
                collaborator: None,
            })
            .await
            .map(drop),
        "GatewayRegistry.Get" => gws
            .get(v3::GetGatewayRequest {
                gateway_ids: Some(gw("gw-1")),
                field_mask: None,
            })
            .await
            .map(drop),
        "GatewayRegistry.GetIdentifiersForEui" => gws
            .get_identifiers_for_eui(v3::GetGatewayIdentifiersForEuiRequest {
                eui: GW_EUI.to_vec(),
            })
            .await
            .map(drop),
        "GatewayRegistry.List" => gws
            .list(v3::ListGatewaysRequest {
                collaborator: Some(account_user("alice")),
                ..Default::default()
            })
            .await
            .map(drop),
        "GatewayRegistry.Update" => gws
            .update(v3::UpdateGatewayRequest {
                gateway: Some(v3::Gateway {
                    ids: Some(gw("gw-1")),
                    name: "GW 1".into(),
                    ..Default::default()
                }),
                field_mask: mask("name"),
            })
            .await
            .map(drop),
        "GatewayRegistry.Delete" => gws.delete(gw("gw-del")).await.map(drop),
        "OrganizationRegistry.Create" => orgs
            .create(v3::CreateOrganizationRequest {
                organization: Some(v3::Organization {
                    ids: Some(org("org-new")),
                    ..Default::default()
                }),
                owner: None,
            })
            .await
            .map(drop),
        "OrganizationRegistry.Get" => orgs
            .get(v3::GetOrganizationRequest {
                organization_ids: Some(org("org-1")),
                field_mask: None,
            })
            .await
            .map(drop),
        "OrganizationRegistry.List" => orgs
            .list(v3::ListOrganizationsRequest {
                member: Some(user("alice")),
                ..Default::default()
            })
            .await
            .map(drop),
        "OrganizationRegistry.Update" => orgs
            .update(v3::UpdateOrganizationRequest {
                organization: Some(v3::Organization {
                    ids: Some(org("org-1")),
                    name: "Org 1".into(),
                    ..Default::default()
                }),
                field_mask: mask("name"),
            })
            .await
            .map(drop),
        "OrganizationRegistry.Delete" => orgs.delete(org("org-del")).await.map(drop),
        "UserRegistry.Create" => users
            .create(v3::CreateUserRequest {
                user: Some(v3::User {
                    ids: Some(user("dave")),
                    password: "dave-password".into(),
                    ..Default::default()
                }),
            })
            .await
            .map(drop),
        "UserRegistry.Get" => users
            .get(v3::GetUserRequest {
                user_ids: Some(user("alice")),
                field_mask: None,
            })
            .await
            .map(drop),
        "UserRegistry.List" => users.list(v3::ListUsersRequest::default()).await.map(drop),
        "UserRegistry.Update" => users
            .update(v3::UpdateUserRequest {
                user: Some(v3::User {
                    ids: Some(user("alice")),
                    name: "Alice".into(),
                    ..Default::default()
                }),
                field_mask: mask("name"),
            })
            .await
            .map(drop),
        "UserRegistry.UpdatePassword" => users
            .update_password(v3::UpdateUserPasswordRequest {
                user_ids: Some(user("alice")),
                new: "alice-password".into(),
                old: "alice-password".into(),
                revoke_all_tokens: false,
            })
            .await
            .map(drop),
        "UserRegistry.Delete" => users.delete(user("bob-del")).await.map(drop),
        "EndDeviceRegistry.Create" => devs
            .create(v3::CreateEndDeviceRequest {
                end_device: Some(v3::EndDevice {
                    ids: Some(dev("app-1", "dev-new", 3)),
                    ..Default::default()
                }),
            })
            .await
            .map(drop),
        "EndDeviceRegistry.Get" => devs
            .get(v3::GetEndDeviceRequest {
                end_device_ids: Some(dev("app-1", "dev-1", 1)),
                field_mask: None,
            })
            .await
            .map(drop),
        "EndDeviceRegistry.GetIdentifiersForEuis" => devs
            .get_identifiers_for_euis(v3::GetEndDeviceIdentifiersForEuisRequest {
                join_eui: JOIN_EUI.to_vec(),
                dev_eui: dev_eui(1),
            })
            .await
            .map(drop),
        "EndDeviceRegistry.List" => devs
            .list(v3::ListEndDevicesRequest {
                application_ids: Some(app("app-1")),
                ..Default::default()
            })
            .await
            .map(drop),
        "EndDeviceRegistry.Update" => devs
            .update(v3::UpdateEndDeviceRequest {
                end_device: Some(v3::EndDevice {
                    ids: Some(dev("app-1", "dev-1", 1)),
                    name: "Dev 1".into(),
                    ..Default::default()
                }),
                field_mask: mask("name"),
            })
            .await
            .map(drop),
        "EndDeviceRegistry.Delete" => devs.delete(dev("app-1", "dev-del", 2)).await.map(drop),
        "EntityAccess.ListRights" => access
            .list_rights(entity("application", "app-1"))
            .await
            .map(drop),
        "EntityAccess.CreateApiKey" => access
            .create_api_key(v3::CreateApiKeyRequest {
                entity_ids: app1(),
                name: "new".into(),
                rights: vec![right("application:settings:api-keys")],
                expires_at: None,
            })
            .await
            .map(drop),
        "EntityAccess.ListApiKeys" => access
            .list_api_keys(v3::ListEntityRequest {
                entity_ids: app1(),
                ..Default::default()
            })
            .await
            .map(drop),
        "EntityAccess.GetApiKey" => access
            .get_api_key(v3::ApiKeyRequest {
                entity_ids: app1(),
                key_id: f.spare_key.clone(),
            })
            .await
            .map(drop),
        "EntityAccess.UpdateApiKey" => access
            .update_api_key(v3::UpdateApiKeyRequest {
                entity_ids: app1(),
                api_key: Some(v3::ApiKey {
                    id: f.spare_key.clone(),
                    name: "renamed".into(),
                    ..Default::default()
                }),
                field_mask: mask("name"),
            })
            .await
            .map(drop),
        "EntityAccess.DeleteApiKey" => access
            .delete_api_key(v3::ApiKeyRequest {
                entity_ids: app1(),
                key_id: f.doomed_key.clone(),
            })
            .await
            .map(drop),
        "EntityAccess.SetCollaborator" => access
            .set_collaborator(v3::SetCollaboratorRequest {
                entity_ids: app1(),
                collaborator: Some(v3::Collaborator {
                    ids: Some(account_user("carol")),
                    rights: vec![right("application:settings:collaborators")],
                }),
            })
            .await
            .map(drop),
        "EntityAccess.ListCollaborators" => access
            .list_collaborators(v3::ListEntityRequest {
                entity_ids: app1(),
                ..Default::default()
            })
            .await
            .map(drop),
        "EntityAccess.GetRightsOn" => access
            .get_rights_on(v3::GetRightsOnRequest {
                holder_ids: Some(entity("user", "alice")),
                holder_rights: vec!["all".into()],
                entity_ids: app1(),
            })
            .await
            .map(drop),
        other => panic!("no call for {other}"),
    }
}

/// (method, the right it needs, the entity whose key holds it). `admin` rows need the admin
/// flag; `cluster` rows a cluster key.
const TABLE: &[(&str, &str, &str)] = &[
    (
        "ApplicationRegistry.Create",
        "user:applications:create",
        "user:alice",
    ),
    (
        "ApplicationRegistry.Get",
        "application:info",
        "application:app-1",
    ),
    (
        "ApplicationRegistry.List",
        "user:applications:list",
        "user:alice",
    ),
    (
        "ApplicationRegistry.Update",
        "application:settings",
        "application:app-1",
    ),
    (
        "ApplicationRegistry.Delete",
        "application:delete",
        "application:app-del",
    ),
    (
        "GatewayRegistry.Create",
        "user:gateways:create",
        "user:alice",
    ),
    ("GatewayRegistry.Get", "gateway:info", "gateway:gw-1"),
    (
        "GatewayRegistry.GetIdentifiersForEui",
        "gateway:info",
        "gateway:gw-1",
    ),
    ("GatewayRegistry.List", "user:gateways:list", "user:alice"),
    ("GatewayRegistry.Update", "gateway:settings", "gateway:gw-1"),
    ("GatewayRegistry.Delete", "gateway:delete", "gateway:gw-del"),
    (
        "OrganizationRegistry.Create",
        "user:organizations:create",
        "user:alice",
    ),
    (
        "OrganizationRegistry.Get",
        "organization:info",
        "organization:org-1",
    ),
    (
        "OrganizationRegistry.List",
        "user:organizations:list",
        "user:alice",
    ),
    (
        "OrganizationRegistry.Update",
        "organization:settings",
        "organization:org-1",
    ),
    (
        "OrganizationRegistry.Delete",
        "organization:delete",
        "organization:org-del",
    ),
    ("UserRegistry.Create", "admin", "user:alice"),
    ("UserRegistry.Get", "user:info", "user:alice"),
    ("UserRegistry.List", "admin", "user:alice"),
    ("UserRegistry.Update", "user:settings", "user:alice"),
    ("UserRegistry.UpdatePassword", "user:settings", "user:alice"),
    ("UserRegistry.Delete", "user:delete", "user:bob-del"),
    (
        "EndDeviceRegistry.Create",
        "application:devices:write",
        "application:app-1",
    ),
    (
        "EndDeviceRegistry.Get",
        "application:devices:read",
        "application:app-1",
    ),
    (
        "EndDeviceRegistry.GetIdentifiersForEuis",
        "application:devices:read",
        "application:app-1",
    ),
    (
        "EndDeviceRegistry.List",
        "application:devices:read",
        "application:app-1",
    ),
    (
        "EndDeviceRegistry.Update",
        "application:devices:write",
        "application:app-1",
    ),
    (
        "EndDeviceRegistry.Delete",
        "application:devices:write",
        "application:app-1",
    ),
    (
        "EntityAccess.ListRights",
        "application:info",
        "application:app-1",
    ),
    (
        "EntityAccess.CreateApiKey",
        "application:settings:api-keys",
        "application:app-1",
    ),
    (
        "EntityAccess.ListApiKeys",
        "application:settings:api-keys",
        "application:app-1",
    ),
    (
        "EntityAccess.GetApiKey",
        "application:settings:api-keys",
        "application:app-1",
    ),
    (
        "EntityAccess.UpdateApiKey",
        "application:settings:api-keys",
        "application:app-1",
    ),
    (
        "EntityAccess.DeleteApiKey",
        "application:settings:api-keys",
        "application:app-1",
    ),
    (
        "EntityAccess.SetCollaborator",
        "application:settings:collaborators",
        "application:app-1",
    ),
    (
        "EntityAccess.ListCollaborators",
        "application:info",
        "application:app-1",
    ),
    (
        "EntityAccess.GetRightsOn",
        "tern.v3.EntityAccess/GetRightsOn",
        "cluster",
    ),
];

/// A right of the same kind that no row needs with it.
fn decoy(kind: &str, needed: &str) -> &'static str {
    let pick = |a: &'static str, b: &'static str| if a == needed { b } else { a };
    match kind {
        "application" => pick("application:link", "application:traffic:read"),
        "gateway" => pick("gateway:link", "gateway:status"),
        "organization" => pick("organization:settings:api-keys", "organization:info"),
        _ => pick("user:settings:api-keys", "user:info"),
    }
}

async fn table(spec: common::StoreSpec) {
    let f = fixture(&spec).await;
    // Every public method of every IS service is in the table, except Auth's (login,
    // refresh and revoke take no credentials; GetAuthInfo needs only valid ones).
    let public: Vec<&str> = tern_api::http::methods()
        .iter()
        .map(|m| m.grpc_path())
        .filter_map(|p| {
            let p = p.trim_start_matches("/tern.v3.").to_owned();
            let service = p.split('/').next().unwrap_or_default().to_owned();
            [
                "ApplicationRegistry",
                "GatewayRegistry",
                "OrganizationRegistry",
                "UserRegistry",
                "EndDeviceRegistry",
                "EntityAccess",
            ]
            .contains(&service.as_str())
            .then(|| Box::leak(p.replace('/', ".").into_boxed_str()) as &str)
        })
        .collect();
    for m in &public {
        assert!(
            TABLE.iter().any(|(t, _, _)| t == m),
            "{m} is not in the table"
        );
    }

    for &(method, needed, holder) in TABLE {
        let (without, with_right) = match (needed, holder) {
            ("admin", _) => {
                // Alice has every right on herself but is no administrator.
                let (_, all) = create_key(&f.is, &f.admin, "user", "alice", &["all"]).await;
                (Cred::Bearer(all), f.admin.clone())
            }
            (_, "cluster") => {
                let (_, all) = create_key(&f.is, &f.admin, "application", "app-1", &["all"]).await;
                (Cred::Bearer(all), Cred::Cluster)
            }
            _ => {
                let (kind, id) = holder.split_once(':').unwrap();
                let (_, no) = create_key(&f.is, &f.admin, kind, id, &[decoy(kind, needed)]).await;
                let (_, yes) = create_key(&f.is, &f.admin, kind, id, &[needed]).await;
                (Cred::Bearer(no), Cred::Bearer(yes))
            }
        };
        let denied = call(&f, method, &without)
            .await
            .expect_err(&format!("{method} without {needed} must be refused"));
        assert_eq!(
            denied.code(),
            Code::PermissionDenied,
            "{method}: {denied:?}"
        );
        assert!(
            denied.message().contains(needed),
            "{method}: the refusal must name `{needed}`: {}",
            denied.message()
        );
        if let Err(e) = call(&f, method, &with_right).await {
            panic!("{method} with {needed} must be allowed: {e:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_needs_its_right_embedded() {
    table(common::StoreSpec::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_needs_its_right_postgres() {
    if let Some(spec) = common::StoreSpec::postgres("rights") {
        table(spec).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_flow_through_organizations_and_are_capped_by_the_key() {
    let spec = common::StoreSpec::embedded();
    let f = fixture(&spec).await;
    let ch = |c: &Cred| with(&f.is.channel, c);
    // org-1 owns app-org; alice is a member of org-1 with every right.
    let mut apps = v3::application_registry_client::ApplicationRegistryClient::new(ch(&f.admin));
    apps.create(v3::CreateApplicationRequest {
        application: Some(v3::Application {
            ids: Some(app("app-org")),
            ..Default::default()
        }),
        collaborator: Some(v3::OrganizationOrUserIdentifiers {
            ids: Some(v3::organization_or_user_identifiers::Ids::OrganizationIds(
                org("org-1"),
            )),
        }),
    })
    .await
    .unwrap();
    let get = |cred: Cred| {
        let mut c = v3::application_registry_client::ApplicationRegistryClient::new(ch(&cred));
        async move {
            c.get(v3::GetApplicationRequest {
                application_ids: Some(app("app-org")),
                field_mask: None,
            })
            .await
        }
    };
    let (_, info) = create_key(&f.is, &f.admin, "user", "alice", &["application:info"]).await;
    get(Cred::Bearer(info)).await.unwrap();
    let (_, user_only) = create_key(&f.is, &f.admin, "user", "alice", &["user:all"]).await;
    let err = get(Cred::Bearer(user_only)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("application:info"), "{err:?}");
    // Carol is no member: nothing.
    let (_, carol) = create_key(&f.is, &f.admin, "user", "carol", &["all"]).await;
    assert_eq!(
        get(Cred::Bearer(carol.clone())).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // A key never grants more than its creator has.
    let (_, small) = create_key(
        &f.is,
        &f.admin,
        "application",
        "app-1",
        &["application:settings:api-keys"],
    )
    .await;
    let mut access = v3::entity_access_client::EntityAccessClient::new(ch(&Cred::Bearer(small)));
    let err = access
        .create_api_key(v3::CreateApiKeyRequest {
            entity_ids: Some(entity("application", "app-1")),
            name: "bigger".into(),
            rights: vec![right("application:devices:write")],
            expires_at: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("application:devices:write"),
        "{err:?}"
    );

    // Lists show only what the caller may see.
    let mut carol_apps =
        v3::application_registry_client::ApplicationRegistryClient::new(ch(&Cred::Bearer(carol)));
    let listed = carol_apps
        .list(v3::ListApplicationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total, 0);
    let (_, alice_all) = create_key(&f.is, &f.admin, "user", "alice", &["all"]).await;
    let mut alice_apps = v3::application_registry_client::ApplicationRegistryClient::new(ch(
        &Cred::Bearer(alice_all),
    ));
    let listed = alice_apps
        .list(v3::ListApplicationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = listed
        .applications
        .iter()
        .map(|a| a.ids.clone().unwrap().application_id)
        .collect();
    assert_eq!(ids, ["app-1", "app-del", "app-org"]);

    // Deleting an application with devices needs purge.
    let err = apps
        .delete(v3::DeleteApplicationRequest {
            application_ids: Some(app("app-1")),
            purge: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("purge"), "{err:?}");
    // The EUI pair is unique across the deployment.
    let mut devs = v3::end_device_registry_client::EndDeviceRegistryClient::new(ch(&f.admin));
    let err = devs
        .create(v3::CreateEndDeviceRequest {
            end_device: Some(v3::EndDevice {
                ids: Some(dev("app-org", "dup", 1)),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    // Bad IDs are named.
    let err = apps
        .create(v3::CreateApplicationRequest {
            application: Some(v3::Application {
                ids: Some(app("Bad_ID")),
                ..Default::default()
            }),
            collaborator: Some(account_user("alice")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("application.ids.application_id"),
        "{err:?}"
    );
    apps.delete(v3::DeleteApplicationRequest {
        application_ids: Some(app("app-1")),
        purge: true,
    })
    .await
    .unwrap();
    assert!(f.is.is.rejected("application_has_devices") >= 1);
    assert!(f.is.is.failed(Code::InvalidArgument) >= 1);
    assert!(f.is.is.failed(Code::AlreadyExists) >= 1);
    assert!(f.is.is.failed(Code::PermissionDenied) >= 3);
}
