//! gRPC connections to the server, with the caller's credentials on every call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use tern_api::v3::application_registry_client::ApplicationRegistryClient;
use tern_api::v3::application_webhook_registry_client::ApplicationWebhookRegistryClient;
use tern_api::v3::as_end_device_registry_client::AsEndDeviceRegistryClient;
use tern_api::v3::as_formatters_client::AsFormattersClient;
use tern_api::v3::auth_client::AuthClient;
use tern_api::v3::end_device_registry_client::EndDeviceRegistryClient;
use tern_api::v3::entity_access_client::EntityAccessClient;
use tern_api::v3::events_client::EventsClient;
use tern_api::v3::gateway_registry_client::GatewayRegistryClient;
use tern_api::v3::gs_client::GsClient;
use tern_api::v3::js_end_device_registry_client::JsEndDeviceRegistryClient;
use tern_api::v3::ns_end_device_registry_client::NsEndDeviceRegistryClient;
use tern_api::v3::organization_registry_client::OrganizationRegistryClient;
use tern_api::v3::user_registry_client::UserRegistryClient;

use crate::config::{self, Credentials, Resolved};

/// A gRPC channel with the `authorization` header added to every call.
pub type Authed = InterceptedService<Channel, BearerAuth>;

/// Adds `authorization: Bearer <secret>` to each call (nothing without credentials).
#[derive(Clone)]
pub struct BearerAuth(Option<AsciiMetadataValue>);

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Connections to the server (and to other servers a device names), authenticated.
#[derive(Clone)]
pub struct Api {
    server: String,
    auth: BearerAuth,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

/// Opens a lazy channel: the first call connects, so an unreachable server fails the call
/// with the address in the error.
fn channel(server: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(server.to_owned())
        .with_context(|| format!("server address {server:?} is not a valid URL"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy())
}

impl Api {
    /// Connects to the resolved server with its credentials, refreshing an expired access
    /// token first (and storing the new tokens).
    pub async fn connect(resolved: &Resolved) -> Result<Self> {
        let secret = match &resolved.credentials {
            Credentials::ApiKey(key) => Some(key.clone()),
            Credentials::Tokens {
                access_token,
                expires_at,
                refresh_token,
            } => {
                // A margin so the token does not expire between this check and the call.
                let stale = expires_at
                    .is_some_and(|t| t <= chrono::Utc::now() + chrono::Duration::seconds(30));
                match (stale, refresh_token) {
                    (true, Some(rt)) => Some(refresh(&resolved.server, rt).await?),
                    (true, None) => {
                        return Err(anyhow!(
                            "the stored access token expired and there is no refresh token: run `ternctl login` again"
                        ));
                    }
                    (false, _) => Some(access_token.clone()),
                }
            }
            Credentials::None => None,
        };
        let header = match secret {
            Some(s) => Some(MetadataValue::try_from(format!("Bearer {s}")).map_err(|_| {
                anyhow!("the credentials contain characters not allowed in a header")
            })?),
            None => None,
        };
        let api = Self {
            server: resolved.server.clone(),
            auth: BearerAuth(header),
            channels: Arc::default(),
        };
        api.channel_for("")?;
        Ok(api)
    }

    /// The server address calls go to by default.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The channel for `address` (`host:port` or URL); empty means the default server.
    fn channel_for(&self, address: &str) -> Result<Authed> {
        let url = if address.is_empty() {
            self.server.clone()
        } else {
            config::normalize_server(address)?
        };
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let ch = match channels.get(&url) {
            Some(ch) => ch.clone(),
            None => {
                let ch = channel(&url)?;
                channels.insert(url, ch.clone());
                ch
            }
        };
        Ok(InterceptedService::new(ch, self.auth.clone()))
    }

    fn default_channel(&self) -> Authed {
        // The default channel is opened in `connect`, so this cannot fail.
        self.channel_for("").expect("default channel")
    }

    /// Users.
    pub fn users(&self) -> UserRegistryClient<Authed> {
        UserRegistryClient::new(self.default_channel())
    }
    /// Organizations.
    pub fn organizations(&self) -> OrganizationRegistryClient<Authed> {
        OrganizationRegistryClient::new(self.default_channel())
    }
    /// Applications.
    pub fn applications(&self) -> ApplicationRegistryClient<Authed> {
        ApplicationRegistryClient::new(self.default_channel())
    }
    /// Gateways.
    pub fn gateways(&self) -> GatewayRegistryClient<Authed> {
        GatewayRegistryClient::new(self.default_channel())
    }
    /// API keys, collaborators and rights.
    pub fn access(&self) -> EntityAccessClient<Authed> {
        EntityAccessClient::new(self.default_channel())
    }
    /// Login and tokens.
    pub fn auth(&self) -> AuthClient<Authed> {
        AuthClient::new(self.default_channel())
    }
    /// The event stream.
    pub fn events(&self) -> EventsClient<Authed> {
        EventsClient::new(self.default_channel())
    }
    /// The Gateway Server's public API.
    pub fn gs(&self) -> GsClient<Authed> {
        GsClient::new(self.default_channel())
    }
    /// The IS device registry.
    pub fn devices(&self) -> EndDeviceRegistryClient<Authed> {
        EndDeviceRegistryClient::new(self.default_channel())
    }
    /// The JS device registry at `address` (empty for the default server).
    pub fn js_devices(&self, address: &str) -> Result<JsEndDeviceRegistryClient<Authed>> {
        Ok(JsEndDeviceRegistryClient::new(self.channel_for(address)?))
    }
    /// The NS device registry at `address` (empty for the default server).
    pub fn ns_devices(&self, address: &str) -> Result<NsEndDeviceRegistryClient<Authed>> {
        Ok(NsEndDeviceRegistryClient::new(self.channel_for(address)?))
    }
    /// The Application Server's payload formatters.
    pub fn formatters(&self) -> AsFormattersClient<Authed> {
        AsFormattersClient::new(self.default_channel())
    }
    /// The Application Server's webhooks.
    pub fn webhooks(&self) -> ApplicationWebhookRegistryClient<Authed> {
        ApplicationWebhookRegistryClient::new(self.default_channel())
    }
    /// The AS device registry at `address` (empty for the default server).
    pub fn as_devices(&self, address: &str) -> Result<AsEndDeviceRegistryClient<Authed>> {
        Ok(AsEndDeviceRegistryClient::new(self.channel_for(address)?))
    }
}

/// Exchanges the refresh token for new tokens and stores them; returns the access token.
async fn refresh(server: &str, refresh_token: &str) -> Result<String> {
    let mut client = AuthClient::new(channel(server)?);
    let tokens = client
        .refresh_token(tern_api::v3::RefreshTokenRequest {
            refresh_token: refresh_token.to_owned(),
        })
        .await
        .map_err(|s| {
            rpc_error("refresh the access token", s)
                .context("the login expired: run `ternctl login` again")
        })?
        .into_inner();
    let path = config::default_path()?;
    let mut stored = config::load(&path)?;
    store_tokens(&mut stored, &tokens);
    config::save(&path, &stored)?;
    Ok(tokens.access_token)
}

/// Puts a login's tokens into the stored configuration (replacing any API key).
pub fn store_tokens(stored: &mut config::StoredConfig, tokens: &tern_api::v3::Tokens) {
    stored.api_key = None;
    stored.access_token = Some(tokens.access_token.clone());
    stored.access_token_expires_at = tokens
        .access_token_expires_at
        .and_then(|t| t.to_datetime())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    stored.refresh_token = Some(tokens.refresh_token.clone()).filter(|t| !t.is_empty());
}

/// A failed call as an error that says what was being done and what the server answered.
pub fn rpc_error(what: &str, status: Status) -> anyhow::Error {
    let code = match status.code() {
        Code::Unavailable => {
            return anyhow!(
                "{what}: server unavailable: {}",
                source_chain(&status).unwrap_or_else(|| status.message().to_owned())
            );
        }
        Code::Unimplemented => {
            let detail = if status.message().is_empty() {
                String::new()
            } else {
                format!(": {}", status.message())
            };
            return anyhow!(
                "{what}: the server does not serve this API (is the role that serves it running there?){detail}"
            );
        }
        c => code_name(c),
    };
    anyhow!("{what}: {code}: {}", status.message())
}

fn source_chain(status: &Status) -> Option<String> {
    let mut parts = vec![status.message().to_owned()];
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    (parts.len() > 1).then(|| parts.join(": "))
}

/// The snake-case name of a gRPC code, as operators see it in docs and logs.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// `Result<tonic::Response<T>, Status>` → `Result<T>` with a message naming the action.
pub trait RpcResult<T> {
    /// Unwraps the response, or describes the failure of `what`.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> RpcResult<T> for Result<tonic::Response<T>, Status> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map(tonic::Response::into_inner)
            .map_err(|s| rpc_error(&what(), s))
    }
}
