//! A real HTTP webhook receiver: a hyper server on `127.0.0.1:0` that answers `204` to every
//! request and records its method, path, headers and JSON body, so that a scenario can check
//! what the Application Server delivered.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use crate::Server;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The HTTP method.
    pub method: String,
    /// The request path (without the query).
    pub path: String,
    /// The headers, names lowercase, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Value::Null` when it is not JSON).
    pub body: serde_json::Value,
}

impl Recorded {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running webhook receiver; stops accepting when dropped.
pub struct WebhookReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    acceptor: JoinHandle<()>,
}

impl WebhookReceiver {
    /// Binds `127.0.0.1:0` and serves HTTP/1.1 until dropped.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tokio::spawn({
            let requests = requests.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let requests = requests.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| record(req, requests.clone()));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        Self {
            addr,
            requests,
            acceptor,
        }
    }

    /// The base URL a webhook registers, e.g. `http://127.0.0.1:40123/hook`.
    pub fn url(&self, base_path: &str) -> String {
        format!("http://{}{base_path}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits up to `limit` until `count` requests on `path` arrived and returns them; panics
    /// with what did arrive and the servers' logs otherwise.
    pub async fn wait_for(
        &self,
        path: &str,
        count: usize,
        limit: Duration,
        servers: &[&Server],
    ) -> Vec<Recorded> {
        let deadline = Instant::now() + limit;
        loop {
            let on_path: Vec<Recorded> = self
                .requests()
                .into_iter()
                .filter(|r| r.path == path)
                .collect();
            if on_path.len() >= count {
                return on_path;
            }
            if Instant::now() >= deadline {
                let got: Vec<String> = self
                    .requests()
                    .iter()
                    .map(|r| format!("{} {} {}", r.method, r.path, r.body))
                    .collect();
                panic!(
                    "the webhook receiver got {} of {count} requests on {path} within {limit:?}; \
                     all requests:\n{}\n--- tern's logs:\n{}",
                    on_path.len(),
                    got.join("\n"),
                    servers
                        .iter()
                        .map(|s| s.log())
                        .collect::<Vec<_>>()
                        .join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn record(
    req: Request<Incoming>,
    requests: Arc<Mutex<Vec<Recorded>>>,
) -> Result<Response<Empty<Bytes>>, hyper::Error> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let bytes = req.into_body().collect().await?.to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    requests.lock().unwrap().push(Recorded {
        method,
        path,
        headers,
        body,
    });
    let mut response = Response::new(Empty::new());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}
