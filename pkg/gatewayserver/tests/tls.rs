//! The Basics Station listener with TLS (wss://): a station that trusts the LNS certificate
//! connects, and discovery answers with wss:// URIs. The certificate in tests/fixtures is a
//! self-signed P-256 certificate for localhost/127.0.0.1, made with
//! `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 36500`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[tokio::test]
async fn router_info_over_tls() {
    let mut c = config();
    c.basic_station.tls_cert = Some(fixture("lns-cert.pem"));
    c.basic_station.tls_key = Some(fixture("lns-key.pem"));
    let h = start(c).await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(fixture("lns-cert.pem")).unwrap())
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = TcpStream::connect(h.ws).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/router-info", stream)
        .await
        .unwrap();
    ws.send(Message::text(r#"{"router":"0202020202020202"}"#))
        .await
        .unwrap();
    let Some(Ok(Message::Text(t))) = ws.next().await else {
        panic!("no answer")
    };
    let a: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
    assert_eq!(
        a["uri"], "wss://localhost/traffic/eui-0202020202020202",
        "{a}"
    );

    // A plain-text client gets no WebSocket from a TLS listener.
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}/router-info", h.ws))
            .await
            .is_err()
    );
}

#[test]
fn tls_needs_cert_and_key() {
    let mut c = config();
    c.basic_station.tls_cert = Some(fixture("lns-cert.pem"));
    let err = c.validate().unwrap_err();
    assert!(err.contains("tls-cert and tls-key"), "{err}");
}
