//! The simulated Semtech UDP gateway over a real loopback socket; the test plays the server
//! side of protocol version 2 byte by byte.

use std::time::Duration;

use base64::Engine as _;
use tern_simulator::semtech::{PULL_ACK, PULL_DATA, PULL_RESP, PUSH_ACK, PUSH_DATA, TX_ACK};
use tern_simulator::{RxInfo, TxAckMode, UdpGateway, UdpGatewayConfig};
use tokio::net::UdpSocket;

const EUI: [u8; 8] = [0xB8, 0x27, 0xEB, 0xFF, 0xFE, 0x61, 0x12, 0x34];

async fn recv(server: &UdpSocket) -> (Vec<u8>, std::net::SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), server.recv_from(&mut buf))
        .await
        .expect("a datagram in time")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

/// Answers the gateway's first PULL_DATA; returns the gateway's address.
async fn accept_pull(server: &UdpSocket) -> std::net::SocketAddr {
    let (pull, from) = recv(server).await;
    assert_eq!(pull.len(), 12, "PULL_DATA is a 12-byte header");
    assert_eq!(pull[0], 2, "protocol version 2");
    assert_eq!(pull[3], PULL_DATA);
    assert_eq!(&pull[4..12], &EUI);
    server
        .send_to(&[2, pull[1], pull[2], PULL_ACK], from)
        .await
        .unwrap();
    from
}

#[tokio::test]
async fn uplink_downlink_and_tx_ack() {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server_addr = server.local_addr().unwrap();
    let connect = tokio::spawn(UdpGateway::connect(UdpGatewayConfig::new(EUI, server_addr)));
    let gateway_addr = accept_pull(&server).await;
    let gateway = connect.await.unwrap().unwrap();

    // PUSH_DATA with one rxpk carrying the frame, answered by PUSH_ACK with its token.
    let frame = vec![0x40, 1, 2, 3, 4, 0, 1, 0, 9, 9, 9, 9];
    let send = {
        let frame = frame.clone();
        let gateway = std::sync::Arc::new(gateway);
        let g = gateway.clone();
        (
            tokio::spawn(async move { g.send_uplink(&frame, &RxInfo::eu868_default()).await }),
            gateway,
        )
    };
    let (push, _) = recv(&server).await;
    assert_eq!(push[3], PUSH_DATA);
    assert_eq!(&push[4..12], &EUI);
    let body: serde_json::Value = serde_json::from_slice(&push[12..]).unwrap();
    let rxpk = &body["rxpk"][0];
    assert_eq!(rxpk["stat"], 1);
    assert_eq!(rxpk["freq"], 868.1);
    assert_eq!(rxpk["datr"], "SF7BW125");
    assert_eq!(rxpk["size"], frame.len());
    let data = base64::engine::general_purpose::STANDARD
        .decode(rxpk["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, frame);
    server
        .send_to(&[2, push[1], push[2], PUSH_ACK], gateway_addr)
        .await
        .unwrap();
    let (task, gateway) = send;
    let tmst = task.await.unwrap().unwrap();
    assert_eq!(rxpk["tmst"], tmst);

    // PULL_RESP for RX1 one second after the uplink: the gateway answers an empty TX_ACK
    // with the PULL_RESP's token and hands the downlink on, in time.
    let txpk = serde_json::json!({"txpk": {
        "imme": false, "tmst": tmst.wrapping_add(1_000_000), "freq": 868.1, "rfch": 0,
        "powe": 14, "modu": "LORA", "datr": "SF7BW125", "codr": "4/5", "ipol": true,
        "size": 3, "data": "AQID"
    }});
    let mut resp = vec![2, 0x12, 0x34, PULL_RESP];
    resp.extend_from_slice(txpk.to_string().as_bytes());
    server.send_to(&resp, gateway_addr).await.unwrap();
    let (ack, _) = recv(&server).await;
    assert_eq!(&ack[..4], &[2, 0x12, 0x34, TX_ACK]);
    assert_eq!(&ack[4..12], &EUI);
    assert_eq!(ack.len(), 12, "success is an empty TX_ACK");
    let downlink = gateway.next_downlink(Duration::from_secs(2)).await.unwrap();
    assert_eq!(downlink.payload, vec![1, 2, 3]);
    let margin = downlink.margin_us().unwrap();
    assert!(margin > 0 && margin <= 1_000_000, "margin {margin} µs");

    // A PULL_RESP whose data does not match its size gets an error TX_ACK.
    let bad = serde_json::json!({"txpk": {"imme": true, "freq": 869.525, "modu": "LORA",
        "datr": "SF9BW125", "size": 5, "data": "AQID"}});
    let mut resp = vec![2, 0x00, 0x07, PULL_RESP];
    resp.extend_from_slice(bad.to_string().as_bytes());
    server.send_to(&resp, gateway_addr).await.unwrap();
    let (ack, _) = recv(&server).await;
    assert_eq!(&ack[..4], &[2, 0x00, 0x07, TX_ACK]);
    let body: serde_json::Value = serde_json::from_slice(&ack[12..]).unwrap();
    assert_eq!(body["txpk_ack"]["error"], "UNKNOWN");
}

#[tokio::test]
async fn configured_tx_ack_error_and_missing_acks() {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut config = UdpGatewayConfig::new(EUI, server.local_addr().unwrap());
    config.tx_ack = TxAckMode::Error("TOO_LATE".to_owned());
    config.ack_timeout = Duration::from_millis(200);
    let connect = tokio::spawn(UdpGateway::connect(config));
    let gateway_addr = accept_pull(&server).await;
    let gateway = connect.await.unwrap().unwrap();

    let mut resp = vec![2, 0xAB, 0xCD, PULL_RESP];
    resp.extend_from_slice(
        br#"{"txpk":{"imme":true,"freq":869.525,"modu":"LORA","datr":"SF9BW125","codr":"4/5","ipol":true,"size":1,"data":"AA=="}}"#,
    );
    server.send_to(&resp, gateway_addr).await.unwrap();
    let (ack, _) = recv(&server).await;
    let body: serde_json::Value = serde_json::from_slice(&ack[12..]).unwrap();
    assert_eq!(body["txpk_ack"]["error"], "TOO_LATE");
    let downlink = gateway.next_downlink(Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        downlink.margin_us(),
        None,
        "immediate downlinks have no margin"
    );

    // No PUSH_ACK: the uplink reports the missing acknowledgment.
    let err = gateway
        .send_uplink(&[0x40, 0, 0, 0, 0], &RxInfo::eu868_default())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no PUSH_ACK in time");
}
