//! Passwords, API keys and login tokens: hashing, expiry, revocation, refresh rotation, and
//! the bootstrap file. On both storage backends where the store matters.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Cred, StoreSpec, with};
use pbjson_types::Empty;
use tern_api::{Timestamp, v3};
use tern_events::EventBus;
use tern_identityserver::IsConfig;
use tern_store::RegistryStore;
use tonic::Code;

fn auth(is: &common::Running) -> v3::auth_client::AuthClient<tonic::transport::Channel> {
    v3::auth_client::AuthClient::new(is.channel.clone())
}

async fn auth_info(is: &common::Running, token: &str) -> Result<v3::AuthInfo, tonic::Status> {
    v3::auth_client::AuthClient::new(with(&is.channel, &Cred::Bearer(token.to_owned())))
        .get_auth_info(Empty {})
        .await
        .map(|r| r.into_inner())
}

async fn login(
    is: &common::Running,
    user: &str,
    password: &str,
) -> Result<v3::Tokens, tonic::Status> {
    auth(is)
        .login(v3::LoginRequest {
            user_id: user.into(),
            password: password.into(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn tokens_rotate_and_revoke(spec: StoreSpec) {
    let is = common::start(
        spec.open().await,
        EventBus::in_process(64),
        spec.dir.path(),
        common::config(),
    )
    .await;
    let (password, _) = common::bootstrap_credentials(spec.dir.path());

    for (user, pw) in [("admin", "wrong-password"), ("nobody", "whatever")] {
        let err = login(&is, user, pw).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert_eq!(err.message(), "wrong user ID or password");
    }
    let first = login(&is, "admin", &password).await.unwrap();
    let info = auth_info(&is, &first.access_token).await.unwrap();
    assert!(info.is_admin);
    assert_eq!(info.right_names, ["all"]);

    // Refresh rotates the refresh token; the old one is then a stolen copy.
    let second = auth(&is)
        .refresh_token(v3::RefreshTokenRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(second.refresh_token, first.refresh_token);
    auth_info(&is, &second.access_token).await.unwrap();
    let err = auth(&is)
        .refresh_token(v3::RefreshTokenRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("already exchanged"), "{err:?}");
    // ...which revoked the whole session: its newest tokens too.
    let err = auth(&is)
        .refresh_token(v3::RefreshTokenRequest {
            refresh_token: second.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(
        auth_info(&is, &second.access_token)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    // Revoking a refresh token ends its access tokens.
    let third = login(&is, "admin", &password).await.unwrap();
    auth_info(&is, &third.access_token).await.unwrap();
    auth(&is)
        .revoke_token(v3::RevokeTokenRequest {
            refresh_token: third.refresh_token.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        auth_info(&is, &third.access_token)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert!(is.is.rejected("login_failed") >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rotate_and_revoke_embedded() {
    tokens_rotate_and_revoke(StoreSpec::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rotate_and_revoke_postgres() {
    if let Some(spec) = StoreSpec::postgres("tokens") {
        tokens_rotate_and_revoke(spec).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_expire() {
    let spec = StoreSpec::embedded();
    let config = IsConfig {
        access_token_ttl: Duration::from_secs(1),
        ..common::config()
    };
    let is = common::start(
        spec.open().await,
        EventBus::in_process(64),
        spec.dir.path(),
        config,
    )
    .await;
    let (password, _) = common::bootstrap_credentials(spec.dir.path());
    let tokens = login(&is, "admin", &password).await.unwrap();
    auth_info(&is, &tokens.access_token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = auth_info(&is, &tokens.access_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{err:?}");
    // A forged token is refused.
    let forged = format!("{}x", tokens.access_token);
    assert_eq!(
        auth_info(&is, &forged).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

async fn keys_are_hashed_expire_and_revoke(spec: StoreSpec) {
    let store = spec.open().await;
    let is = common::start(
        store.clone(),
        EventBus::in_process(64),
        spec.dir.path(),
        common::config(),
    )
    .await;
    let (password, admin_key) = common::bootstrap_credentials(spec.dir.path());
    let admin = Cred::Bearer(admin_key.clone());

    // Only slow hashes are stored.
    let user = store.get_user("admin").await.unwrap().unwrap().value;
    assert!(user.password.starts_with("$argon2id$"), "{}", user.password);
    assert!(!user.password.contains(&password));
    let key_id = admin_key.split('.').nth(1).unwrap();
    let stored = store.get_api_key(key_id).await.unwrap().unwrap().value;
    assert!(stored.api_key.key.starts_with("$argon2id$"));
    let secret = admin_key.split('.').nth(2).unwrap();
    assert!(!stored.api_key.key.contains(secret));

    let mut access = v3::entity_access_client::EntityAccessClient::new(with(&is.channel, &admin));
    let entity = v3::EntityIdentifiers {
        ids: Some(v3::entity_identifiers::Ids::UserIds(v3::UserIdentifiers {
            user_id: "admin".into(),
            ..Default::default()
        })),
    };
    let key = access
        .create_api_key(v3::CreateApiKeyRequest {
            entity_ids: Some(entity.clone()),
            name: "short".into(),
            rights: vec![v3::Right::UserInfo as i32],
            expires_at: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(key.key.starts_with(&format!("TERN.{}.", key.id)));
    let info = auth_info(&is, &key.key).await.unwrap();
    assert_eq!(info.right_names, ["user:info"]);
    assert!(!info.is_admin, "only keys with `all` carry the admin flag");
    assert_eq!(
        info.api_key.unwrap().key,
        "",
        "the secret is never returned again"
    );
    // Listing never shows secrets or hashes.
    let listed = access
        .list_api_keys(v3::ListEntityRequest {
            entity_ids: Some(entity.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total, 2);
    assert!(listed.api_keys.iter().all(|k| k.key.is_empty()));

    // A wrong secret with a right ID is refused, even with the key cached.
    assert!(is.is.cached_keys() >= 1);
    let wrong = format!("TERN.{}.{}", key.id, "A".repeat(43));
    assert_eq!(
        auth_info(&is, &wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // Revocation reaches the cache at once.
    access
        .delete_api_key(v3::ApiKeyRequest {
            entity_ids: Some(entity.clone()),
            key_id: key.id.clone(),
        })
        .await
        .unwrap();
    let err = auth_info(&is, &key.key).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // Expiry.
    let soon = Timestamp {
        seconds: Timestamp::now().seconds + 2,
        nanos: 0,
    };
    let expiring = access
        .create_api_key(v3::CreateApiKeyRequest {
            entity_ids: Some(entity.clone()),
            name: "expiring".into(),
            rights: vec![v3::Right::UserInfo as i32],
            expires_at: Some(soon),
        })
        .await
        .unwrap()
        .into_inner();
    auth_info(&is, &expiring.key).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let err = auth_info(&is, &expiring.key).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{err:?}");
    assert!(is.is.rejected("expired_credentials") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_hashed_expire_and_revoke_embedded() {
    keys_are_hashed_expire_and_revoke(StoreSpec::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_hashed_expire_and_revoke_postgres() {
    if let Some(spec) = StoreSpec::postgres("keys") {
        keys_are_hashed_expire_and_revoke(spec).await;
    }
}

async fn bootstrap_once(spec: StoreSpec) {
    // Two processes' worth of IS start at once on one empty store: one bootstraps.
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (store_a, store_b) = (spec.open().await, spec.open().await);
    let (a, b) = tokio::join!(
        common::start(
            store_a,
            EventBus::in_process(64),
            dir_a.path(),
            common::config()
        ),
        common::start(
            store_b,
            EventBus::in_process(64),
            dir_b.path(),
            common::config()
        ),
    );
    let written: Vec<_> = [&a, &b]
        .iter()
        .filter_map(|r| r.is.bootstrap_file())
        .collect();
    assert_eq!(written.len(), 1, "exactly one IS bootstraps: {written:?}");
    let file = &written[0];
    let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "bootstrap.txt must be private");
    let dir = file.parent().unwrap();
    let (password, key) = common::bootstrap_credentials(dir);
    let before = std::fs::read_to_string(file).unwrap();
    assert!(login(&a, "admin", &password).await.is_ok());
    assert!(auth_info(&b, &key).await.unwrap().is_admin);

    // A later start on the same store changes nothing.
    let c = common::start(
        spec.open().await,
        EventBus::in_process(64),
        dir,
        common::config(),
    )
    .await;
    assert_eq!(c.is.bootstrap_file(), None);
    assert_eq!(std::fs::read_to_string(file).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_is_private_and_happens_once_embedded() {
    bootstrap_once(StoreSpec::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_is_private_and_happens_once_postgres() {
    if let Some(spec) = StoreSpec::postgres("bootstrap") {
        bootstrap_once(spec).await;
    }
}
