//! Two Identity Servers with their own store connections and event bus connections, sharing
//! one PostgreSQL database and a real `nats-server`: a change made through one reaches the
//! caches of the other within a second. And the cluster's `RemoteVerifier` against an IS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Cred, StoreSpec, with};
use pbjson_types::Empty;
use tern_api::{FieldMask, v3};
use tern_cluster::auth::{ApiKeyVerifier, Entity, IsAddress, RemoteVerifier};
use tern_events::EventBus;
use tonic::Code;

const EUI: [u8; 8] = [0xaa, 0x55, 0, 0, 0, 0, 0, 1];
const WITHIN: Duration = Duration::from_secs(1);

fn user_entity(id: &str) -> v3::EntityIdentifiers {
    v3::EntityIdentifiers {
        ids: Some(v3::entity_identifiers::Ids::UserIds(v3::UserIdentifiers {
            user_id: id.into(),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_the_other_process_within_a_second() {
    let Some(spec) = StoreSpec::postgres("two_is") else {
        return;
    };
    let nats = common::NatsServer::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let events_a = EventBus::connect(&nats.events_config()).await.unwrap();
    let events_b = EventBus::connect(&nats.events_config()).await.unwrap();
    let a = common::start(spec.open().await, events_a, dir_a.path(), common::config()).await;
    let b = common::start(spec.open().await, events_b, dir_b.path(), common::config()).await;
    let (_, admin_key) = common::bootstrap_credentials(dir_a.path());
    let admin = Cred::Bearer(admin_key);

    // A gateway registered through A is found by B's GS link, and B caches it.
    let mut gws = v3::gateway_registry_client::GatewayRegistryClient::new(with(&a.channel, &admin));
    gws.create(v3::CreateGatewayRequest {
        gateway: Some(v3::Gateway {
            ids: Some(v3::GatewayIdentifiers {
                gateway_id: "gw-x".into(),
                eui: EUI.to_vec(),
            }),
            name: "before".into(),
            ..Default::default()
        }),
        collaborator: Some(v3::OrganizationOrUserIdentifiers {
            ids: Some(v3::organization_or_user_identifiers::Ids::UserIds(
                v3::UserIdentifiers {
                    user_id: "admin".into(),
                    ..Default::default()
                },
            )),
        }),
    })
    .await
    .unwrap();
    let link_b = b.is.gs_link();
    let found = link_b.gateway_by_eui(EUI).await.unwrap().unwrap();
    assert_eq!(found.name, "before");

    gws.update(v3::UpdateGatewayRequest {
        gateway: Some(v3::Gateway {
            ids: Some(v3::GatewayIdentifiers {
                gateway_id: "gw-x".into(),
                eui: EUI.to_vec(),
            }),
            name: "after".into(),
            ..Default::default()
        }),
        field_mask: Some(FieldMask::new(["name"])),
    })
    .await
    .unwrap();
    let updated = common::eventually(WITHIN, || {
        let link = link_b.clone();
        async move { link.gateway_by_eui(EUI).await.unwrap().unwrap().name == "after" }
    })
    .await;
    assert!(updated, "B still serves the old gateway after 1 s");

    gws.delete(v3::GatewayIdentifiers {
        gateway_id: "gw-x".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let gone = common::eventually(WITHIN, || {
        let link = link_b.clone();
        async move { link.gateway_by_eui(EUI).await.unwrap().is_none() }
    })
    .await;
    assert!(gone, "B still serves the deleted gateway after 1 s");

    // A key created through A is verified (and cached) by B; revoking it through A reaches B.
    let mut access = v3::entity_access_client::EntityAccessClient::new(with(&a.channel, &admin));
    let key = access
        .create_api_key(v3::CreateApiKeyRequest {
            entity_ids: Some(user_entity("admin")),
            name: "k".into(),
            rights: vec![v3::Right::UserInfo as i32],
            expires_at: None,
        })
        .await
        .unwrap()
        .into_inner();
    let on_b = |token: String| {
        let channel = b.channel.clone();
        async move {
            v3::auth_client::AuthClient::new(with(&channel, &Cred::Bearer(token)))
                .get_auth_info(Empty {})
                .await
        }
    };
    // A's creation event may reach B after B cached the key, and invalidation drops it:
    // verify until it stays cached.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        on_b(key.key.clone()).await.unwrap();
        if b.is.cached_keys() >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B does not keep the verified key cached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    access
        .delete_api_key(v3::ApiKeyRequest {
            entity_ids: Some(user_entity("admin")),
            key_id: key.id.clone(),
        })
        .await
        .unwrap();
    let revoked = common::eventually(WITHIN, || {
        let token = key.key.clone();
        let on_b = &on_b;
        async move { matches!(on_b(token).await, Err(s) if s.code() == Code::Unauthenticated) }
    })
    .await;
    assert!(revoked, "B still accepts the revoked key after 1 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_verifier_asks_the_identity_server() {
    let spec = StoreSpec::embedded();
    let is = common::start(
        spec.open().await,
        EventBus::in_process(64),
        spec.dir.path(),
        common::config(),
    )
    .await;
    let (_, admin_key) = common::bootstrap_credentials(spec.dir.path());
    let admin = Cred::Bearer(admin_key.clone());
    let remote = Arc::new(
        RemoteVerifier::new(
            IsAddress::Static(is.url.clone()),
            common::keys().credentials(),
        )
        .with_cache_ttl(Duration::ZERO),
    );

    let info = remote.verify(&admin_key).await.unwrap();
    assert_eq!(info.entity, Entity::User("admin".into()));
    assert!(info.is_admin);
    assert!(info.rights.contains("all"));
    assert!(remote.verify("TERN.nope.nope").await.is_err());

    // Alice owns app-r; her user key with application:info carries it there, not more.
    let mut users = v3::user_registry_client::UserRegistryClient::new(with(&is.channel, &admin));
    users
        .create(v3::CreateUserRequest {
            user: Some(v3::User {
                ids: Some(v3::UserIdentifiers {
                    user_id: "alice".into(),
                    ..Default::default()
                }),
                password: "alice-password".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut apps =
        v3::application_registry_client::ApplicationRegistryClient::new(with(&is.channel, &admin));
    apps.create(v3::CreateApplicationRequest {
        application: Some(v3::Application {
            ids: Some(v3::ApplicationIdentifiers {
                application_id: "app-r".into(),
            }),
            ..Default::default()
        }),
        collaborator: Some(v3::OrganizationOrUserIdentifiers {
            ids: Some(v3::organization_or_user_identifiers::Ids::UserIds(
                v3::UserIdentifiers {
                    user_id: "alice".into(),
                    ..Default::default()
                },
            )),
        }),
    })
    .await
    .unwrap();
    let mut access = v3::entity_access_client::EntityAccessClient::new(with(&is.channel, &admin));
    let key = access
        .create_api_key(v3::CreateApiKeyRequest {
            entity_ids: Some(user_entity("alice")),
            name: "k".into(),
            rights: vec![v3::Right::ApplicationInfo as i32],
            expires_at: None,
        })
        .await
        .unwrap()
        .into_inner();
    let alice = remote.verify(&key.key).await.unwrap();
    assert!(!alice.is_admin);
    let rights = remote
        .rights_on(&alice, &Entity::Application("app-r".into()))
        .await
        .unwrap();
    assert_eq!(rights.into_iter().collect::<Vec<_>>(), ["application:info"]);
    let none = remote
        .rights_on(&alice, &Entity::Application("other".into()))
        .await
        .unwrap();
    assert!(none.is_empty());

    // Without the cluster key, GetRightsOn is refused.
    let outsider = RemoteVerifier::new(
        IsAddress::Static(is.url.clone()),
        tern_cluster::auth::CallCredentials::api_key(&admin_key).unwrap(),
    );
    assert!(
        outsider
            .rights_on(&alice, &Entity::Application("app-r".into()))
            .await
            .is_err()
    );
}
