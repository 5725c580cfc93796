//! Login sessions: short-lived JWT access tokens (HS256) and rotated refresh tokens.
//!
//! A login creates a session record (`is.session`) holding the SHA-256 digest of the current
//! refresh token. Each refresh replaces that digest (rotation); presenting an older refresh
//! token again revokes the whole session, as it means the token was copied. Access tokens
//! name their session (`sid`), and are accepted only while it exists: revoking the refresh
//! token revokes them too.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use prost::Message;
use serde::{Deserialize, Serialize};
use tern_api::v3;
use tern_cluster::auth::{ApiKeyError, AuthInfo, Entity};
use tern_store::kv::{Batch, Expect, Index, IndexEntry, Table};
use tern_store::{RegistryStore, StoreError};

use crate::core::Core;
use crate::secrets::{self, REFRESH_TOKEN_PREFIX};

/// Login sessions, by session ID.
pub static SESSIONS: Table = Table {
    name: "is.session",
    what: "login session",
};
/// The user of a session.
pub static SESSION_USER: Index = Index {
    name: "is.session-user",
    what: "login session user",
    unique: false,
};
/// Secrets of the IS shared by its instances (the token signing key).
pub static SECRETS: Table = Table {
    name: "is.secret",
    what: "IS secret",
};
const SIGNING_KEY: &str = "token-signing-key";

/// A session as stored.
#[derive(Clone, PartialEq, Message)]
struct SessionRecord {
    #[prost(string, tag = "1")]
    user_id: String,
    /// SHA-256 of the current refresh token's secret, hex.
    #[prost(string, tag = "2")]
    refresh_sha256: String,
    /// Unix seconds.
    #[prost(int64, tag = "3")]
    expires_at: i64,
}

/// The keys signing and checking access tokens.
pub(crate) struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    sid: String,
    iat: u64,
    exp: u64,
}

/// Why a token request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("wrong user ID or password")]
    BadLogin,
    #[error("unknown, expired or revoked refresh token")]
    BadRefresh,
    #[error("this refresh token was already exchanged; the session is revoked, log in again")]
    Reused,
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<TokenError> for tonic::Status {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::BadLogin | TokenError::BadRefresh | TokenError::Reused => {
                tonic::Status::unauthenticated(e.to_string())
            }
            TokenError::Store(e) => crate::grpc::store_status(e),
            TokenError::Internal(m) => tonic::Status::internal(m),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn ts(unix: u64) -> tern_api::Timestamp {
    tern_api::Timestamp {
        seconds: unix as i64,
        nanos: 0,
    }
}

/// The signing key: from the configuration, else the one in the store (created by the
/// first IS that needs it; the unique key makes concurrent creators agree).
async fn keys(core: &Core) -> Result<&TokenKeys, TokenError> {
    core.token_keys
        .get_or_try_init(|| async {
            let secret = if core.config.token_signing_key.is_empty() {
                stored_signing_key(core).await?
            } else {
                core.config.token_signing_key.as_bytes().to_vec()
            };
            Ok(TokenKeys {
                encoding: EncodingKey::from_secret(&secret),
                decoding: DecodingKey::from_secret(&secret),
            })
        })
        .await
}

async fn stored_signing_key(core: &Core) -> Result<Vec<u8>, TokenError> {
    if let Some(r) = core.store.get(&SECRETS, SIGNING_KEY).await? {
        return Ok(r.value);
    }
    let mut key = vec![0u8; 32];
    secrets::fill_random(&mut key);
    let mut batch = Batch::new();
    batch.put(
        &SECRETS,
        SIGNING_KEY,
        key.clone(),
        Expect::Absent,
        Vec::new(),
    );
    match core.store.commit(batch).await {
        Ok(_) => Ok(key),
        // Another IS created it first: use theirs.
        Err(e) if e.is_already_exists() => core
            .store
            .get(&SECRETS, SIGNING_KEY)
            .await?
            .map(|r| r.value)
            .ok_or_else(|| TokenError::Internal("the token signing key vanished".into())),
        Err(e) => Err(e.into()),
    }
}

/// Checks a user's password and opens a session.
pub(crate) async fn login(
    core: &Core,
    user_id: &str,
    password: &str,
) -> Result<v3::Tokens, TokenError> {
    let user = if user_id.contains('@') {
        core.store.get_user_by_email(user_id).await?
    } else if user_id.is_empty() {
        None
    } else {
        core.store.get_user(user_id).await.unwrap_or(None)
    };
    let Some(user) = user else {
        // Spend the time of a real check, so that timing does not tell unknown users apart.
        let cost = core.config.hash_cost();
        let password = password.to_owned();
        let _ = tokio::task::spawn_blocking(move || {
            static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            let hash = DUMMY.get_or_init(|| cost.hash("not a password").unwrap_or_default());
            secrets::verify_hash(&password, hash)
        })
        .await;
        return Err(TokenError::BadLogin);
    };
    let hash = user.value.password.clone();
    let password = password.to_owned();
    let ok = !hash.is_empty()
        && tokio::task::spawn_blocking(move || secrets::verify_hash(&password, &hash))
            .await
            .unwrap_or(false);
    if !ok {
        return Err(TokenError::BadLogin);
    }
    let user_id = user.value.ids.unwrap_or_default().user_id;
    let session_id = secrets::random_id();
    issue(core, &user_id, &session_id, None).await
}

/// Writes the session with a new refresh token (`expect_version`: the version the rotated
/// one was read at) and signs an access token.
async fn issue(
    core: &Core,
    user_id: &str,
    session_id: &str,
    expect_version: Option<u64>,
) -> Result<v3::Tokens, TokenError> {
    let now = unix_now();
    let refresh_secret = secrets::random_token(32);
    let refresh_expires = now + core.config.refresh_token_ttl.as_secs();
    let record = SessionRecord {
        user_id: user_id.to_owned(),
        refresh_sha256: secrets::sha256_hex(&refresh_secret),
        expires_at: refresh_expires as i64,
    };
    let mut batch = Batch::new();
    batch.put(
        &SESSIONS,
        session_id,
        record.encode_to_vec(),
        expect_version.map_or(Expect::Absent, Expect::Version),
        vec![IndexEntry::new(&SESSION_USER, user_id)],
    );
    match core.store.commit(batch).await {
        Ok(_) => {}
        // Two refreshes with the same token raced: only one wins.
        Err(e) if e.is_conflict() || e.is_not_found() => return Err(TokenError::BadRefresh),
        Err(e) => return Err(e.into()),
    }
    let access_expires = now + core.config.access_token_ttl.as_secs().max(1);
    let claims = Claims {
        sub: user_id.to_owned(),
        sid: session_id.to_owned(),
        iat: now,
        exp: access_expires,
    };
    let access = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &keys(core).await?.encoding,
    )
    .map_err(|e| TokenError::Internal(format!("signing the access token: {e}")))?;
    Ok(v3::Tokens {
        access_token: access,
        access_token_expires_at: Some(ts(access_expires)),
        refresh_token: format!("{REFRESH_TOKEN_PREFIX}.{session_id}.{refresh_secret}"),
        refresh_token_expires_at: Some(ts(refresh_expires)),
    })
}

/// Reads the session of a refresh token and checks the token; a stale token revokes it.
async fn session_of(
    core: &Core,
    refresh_token: &str,
) -> Result<(String, u64, SessionRecord), TokenError> {
    let (session_id, secret) =
        secrets::split_token(REFRESH_TOKEN_PREFIX, refresh_token).ok_or(TokenError::BadRefresh)?;
    let record = core
        .store
        .get(&SESSIONS, session_id)
        .await?
        .ok_or(TokenError::BadRefresh)?;
    let version = record.version;
    let session = SessionRecord::decode(record.value.as_slice())
        .map_err(|e| TokenError::Internal(format!("session {session_id}: {e}")))?;
    if session.expires_at <= unix_now() as i64 {
        revoke_session(core, session_id).await?;
        return Err(TokenError::BadRefresh);
    }
    let presented = secrets::sha256_hex(secret);
    if !secrets::ct_eq(presented.as_bytes(), session.refresh_sha256.as_bytes()) {
        revoke_session(core, session_id).await?;
        return Err(TokenError::Reused);
    }
    Ok((session_id.to_owned(), version, session))
}

/// Exchanges a refresh token for new tokens (rotation).
pub(crate) async fn refresh(core: &Core, refresh_token: &str) -> Result<v3::Tokens, TokenError> {
    let (session_id, version, session) = session_of(core, refresh_token).await?;
    if core.store.get_user(&session.user_id).await?.is_none() {
        revoke_session(core, &session_id).await?;
        return Err(TokenError::BadRefresh);
    }
    issue(core, &session.user_id, &session_id, Some(version)).await
}

/// Revokes the session of a refresh token, and with it its access tokens.
pub(crate) async fn revoke(core: &Core, refresh_token: &str) -> Result<(), TokenError> {
    let (session_id, _, _) = session_of(core, refresh_token).await?;
    revoke_session(core, &session_id).await
}

async fn revoke_session(core: &Core, session_id: &str) -> Result<(), TokenError> {
    let mut batch = Batch::new();
    batch.delete(&SESSIONS, session_id, Expect::Any);
    core.store.commit(batch).await?;
    Ok(())
}

/// Revokes every session of a user (password change with `revoke_all_tokens`, deletion).
pub(crate) async fn revoke_user_sessions(core: &Core, user_id: &str) -> Result<usize, StoreError> {
    let records = core.store.lookup(&SESSIONS, &SESSION_USER, user_id).await?;
    let n = records.len();
    if n > 0 {
        let mut batch = Batch::new();
        for r in records {
            batch.delete(&SESSIONS, r.key, Expect::Any);
        }
        core.store.commit(batch).await?;
    }
    Ok(n)
}

/// Verifies an access token: signature, expiry, and that its session still exists.
pub(crate) async fn verify_access_token(core: &Core, token: &str) -> Result<AuthInfo, ApiKeyError> {
    let keys = keys(core)
        .await
        .map_err(|e| ApiKeyError::Unavailable(e.to_string()))?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let claims = match jsonwebtoken::decode::<Claims>(token, &keys.decoding, &validation) {
        Ok(data) => data.claims,
        Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
            return Err(ApiKeyError::Expired);
        }
        Err(_) => return Err(ApiKeyError::Unknown),
    };
    let unavailable = |e: StoreError| ApiKeyError::Unavailable(e.to_string());
    let session = core
        .store
        .get(&SESSIONS, &claims.sid)
        .await
        .map_err(unavailable)?
        .ok_or(ApiKeyError::Unknown)?;
    let session =
        SessionRecord::decode(session.value.as_slice()).map_err(|_| ApiKeyError::Unknown)?;
    if session.user_id != claims.sub {
        return Err(ApiKeyError::Unknown);
    }
    let user = core
        .store
        .get_user(&claims.sub)
        .await
        .map_err(unavailable)?
        .ok_or(ApiKeyError::Unknown)?;
    let mut info = AuthInfo::new(Entity::User(claims.sub), ["all"]).with_credential_id(claims.sid);
    info.is_admin = user.value.admin;
    Ok(info)
}
