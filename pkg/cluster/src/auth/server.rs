//! Server side: resolving a call's `authorization` metadata to a [`Caller`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tower::{Layer, Service};

use super::caller::Authenticated;
use super::{AUTHORIZATION, ApiKeyVerifier, AuthError, Caller, ClusterKeys};

/// Checks the credentials of incoming calls: cluster keys, and API keys through an
/// [`ApiKeyVerifier`] when one is set.
///
/// Either call [`Authenticator::authenticate`] in a handler, or put [`Authenticator::layer`]
/// in front of services and read [`Caller::of`] in their handlers.
#[derive(Clone, Debug)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keys: ClusterKeys,
    verifier: Option<Arc<dyn ApiKeyVerifier>>,
}

/// The layer's API key verifier, in the request extensions, so that handlers can ask it for
/// rights on other entities (see [`super::require`]).
#[derive(Clone, Debug)]
pub(super) struct VerifierHandle(pub(super) Option<Arc<dyn ApiKeyVerifier>>);

/// The credentials read from the metadata, borrowed from it.
enum Credentials<'a> {
    ClusterKey(&'a str),
    Bearer(&'a str),
}

impl Authenticator {
    /// Accepts the cluster's keys only; API keys are refused until
    /// [`Authenticator::with_api_key_verifier`] is called.
    pub fn new(keys: ClusterKeys) -> Self {
        Self {
            inner: Arc::new(Inner {
                keys,
                verifier: None,
            }),
        }
    }

    /// Also accepts API keys, verified by `verifier`.
    pub fn with_api_key_verifier(self, verifier: Arc<dyn ApiKeyVerifier>) -> Self {
        Self {
            inner: Arc::new(Inner {
                keys: self.inner.keys.clone(),
                verifier: Some(verifier),
            }),
        }
    }

    /// Resolves the `authorization` metadata of a call to its caller.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, AuthError> {
        let values = metadata
            .get_all(AUTHORIZATION)
            .iter()
            .map(|v| v.as_encoded_bytes());
        self.authenticate_values(values).await
    }

    /// Resolves the `authorization` header of an HTTP/2 request to its caller.
    pub async fn authenticate_headers(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Caller, AuthError> {
        let values = headers.get_all(AUTHORIZATION).iter().map(|v| v.as_bytes());
        self.authenticate_values(values).await
    }

    async fn authenticate_values<'a>(
        &self,
        values: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Caller, AuthError> {
        match parse(values)? {
            Credentials::ClusterKey(key) => {
                if self.inner.keys.accepts(key) {
                    Ok(Caller::Cluster)
                } else {
                    Err(AuthError::ClusterKeyRejected)
                }
            }
            Credentials::Bearer(key) => {
                let verifier = self
                    .inner
                    .verifier
                    .as_ref()
                    .ok_or(AuthError::ApiKeysNotAccepted)?;
                Ok(Caller::ApiKey(verifier.verify(key).await?))
            }
        }
    }

    /// A tower layer refusing every call without valid credentials, with `UNAUTHENTICATED`;
    /// handlers read the caller with [`Caller::of`].
    pub fn layer(&self) -> AuthLayer {
        AuthLayer {
            auth: self.clone(),
            required: true,
        }
    }

    /// A tower layer that lets calls without credentials through (for public methods such as
    /// login) but still refuses wrong credentials; [`Caller::of`] then fails with
    /// [`AuthError::MissingCredentials`].
    pub fn optional_layer(&self) -> AuthLayer {
        AuthLayer {
            auth: self.clone(),
            required: false,
        }
    }
}

/// Reads the one `authorization` value as `<scheme> <secret>`, the scheme case-insensitive.
/// Errors never quote the secret.
fn parse<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Result<Credentials<'a>, AuthError> {
    let value = values.next().ok_or(AuthError::MissingCredentials)?;
    if values.next().is_some() {
        return Err(AuthError::MalformedCredentials(
            "more than one `authorization` value",
        ));
    }
    let value = std::str::from_utf8(value)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or(AuthError::MalformedCredentials("the value is not ASCII"))?
        .trim();
    if value.is_empty() {
        return Err(AuthError::MalformedCredentials("the value is empty"));
    }
    // A value without a space may be a bare secret: do not echo it back as a scheme.
    let Some((scheme, secret)) = value.split_once([' ', '\t']) else {
        return Err(AuthError::MalformedCredentials(
            "expected `<scheme> <credentials>`, e.g. `ClusterKey …` or `Bearer …`",
        ));
    };
    let secret = secret.trim_start();
    if secret.contains([' ', '\t']) {
        return Err(AuthError::MalformedCredentials(
            "the credentials contain whitespace",
        ));
    }
    if scheme.eq_ignore_ascii_case("ClusterKey") {
        Ok(Credentials::ClusterKey(secret))
    } else if scheme.eq_ignore_ascii_case("Bearer") {
        Ok(Credentials::Bearer(secret))
    } else {
        const MAX_SCHEME: usize = 32;
        if scheme.len() > MAX_SCHEME || !scheme.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(AuthError::MalformedCredentials(
                "unreadable scheme: expected `ClusterKey …` or `Bearer …`",
            ));
        }
        Err(AuthError::UnsupportedScheme(scheme.to_owned()))
    }
}

/// A tower layer authenticating every request, made by [`Authenticator::layer`] or
/// [`Authenticator::optional_layer`].
///
/// Put it on the whole server (`Server::builder().layer(auth.layer())`) or on one service
/// (`add_service(auth.layer().layer(svc))`: the wrapped service keeps its gRPC name).
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Authenticator,
    required: bool,
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
            required: self.required,
        }
    }
}

/// The service made by [`AuthLayer`]: answers refused calls with a gRPC status, and passes
/// the others on with their [`Caller`] in the request extensions.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    auth: Authenticator,
    required: bool,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The service that was polled ready handles this call; the clone stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let required = self.required;
        Box::pin(async move {
            let caller = match auth.authenticate_headers(request.headers()).await {
                Ok(caller) => Some(caller),
                Err(AuthError::MissingCredentials) if !required => None,
                Err(e) => return Ok(tonic::Status::from(e).into_http()),
            };
            request.extensions_mut().insert(Authenticated(caller));
            request
                .extensions_mut()
                .insert(VerifierHandle(auth.inner.verifier.clone()));
            inner.call(request).await
        })
    }
}

impl<S: NamedService> NamedService for AuthService<S> {
    const NAME: &'static str = S::NAME;
}
