//! The IS's metrics: refused requests and credentials, by reason.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The `reason` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Reason {
    reason: &'static str,
}

/// The counters, registered under `tern_is_` when the role starts.
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    rejected: Family<Reason, Counter>,
    /// Failed calls by gRPC code, counted by a layer around every service.
    pub failures: Failures,
}

impl Metrics {
    /// Counts a refused request or credential.
    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&Reason { reason }).inc();
    }

    /// How many were refused for `reason` (for tests).
    pub fn rejected(&self, reason: &'static str) -> u64 {
        self.rejected.get_or_create(&Reason { reason }).get()
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests_rejected",
            "Requests and credentials the Identity Server refused, by reason",
            self.rejected.clone(),
        );
        self.failures.register(registry);
    }
}

/// The `code` label: the gRPC status code of a refused call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CodeLabel {
    code: String,
}

/// Counts the calls the IS services refused, by gRPC code (invalid argument, not found,
/// already exists, ...): bad input changes nothing, and is counted.
#[derive(Debug, Clone, Default)]
pub(crate) struct Failures(Family<CodeLabel, Counter>);

impl Failures {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests_failed",
            "Calls of the Identity Server's services that failed, by gRPC status code",
            self.0.clone(),
        );
    }

    /// How many calls failed with `code` (for tests).
    pub fn count(&self, code: tonic::Code) -> u64 {
        self.0
            .get_or_create(&CodeLabel {
                code: format!("{code:?}"),
            })
            .get()
    }
}

impl<S> tower::Layer<S> for Failures {
    type Service = CountFailures<S>;

    fn layer(&self, inner: S) -> CountFailures<S> {
        CountFailures {
            inner,
            failures: self.clone(),
        }
    }
}

/// The service made by [`Failures`] as a layer.
#[derive(Debug, Clone)]
pub(crate) struct CountFailures<S> {
    inner: S,
    failures: Failures,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for CountFailures<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let future = self.inner.call(request);
        let failures = self.failures.clone();
        Box::pin(async move {
            let response = future.await?;
            // Unary errors are trailers-only: the status is in the headers.
            if let Some(status) = tonic::Status::from_header_map(response.headers())
                && status.code() != tonic::Code::Ok
            {
                failures
                    .0
                    .get_or_create(&CodeLabel {
                        code: format!("{:?}", status.code()),
                    })
                    .inc();
            }
            Ok(response)
        })
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for CountFailures<S> {
    const NAME: &'static str = S::NAME;
}
