//! Directory configuration and the static directory.

use std::time::Duration;

use tern_cluster::directory::{
    self, DirectoryConfig, EtcdConfig, PeerDirectory, PeerRole, StaticDirectory,
};

fn parse(toml_text: &str) -> Result<DirectoryConfig, toml::de::Error> {
    toml::from_str(toml_text)
}

#[test]
fn empty_config_is_static_and_empty() {
    let config = parse("").unwrap();
    assert_eq!(config, DirectoryConfig::default());
    config.validate().unwrap();
    assert!(config.static_peers().unwrap().is_empty());
}

#[test]
fn etcd_defaults() {
    let config = parse(
        r#"
        [etcd]
        endpoints = ["127.0.0.1:2379"]
        "#,
    )
    .unwrap();
    let etcd = config.etcd.as_ref().unwrap();
    assert_eq!(etcd.prefix, "/tern");
    assert_eq!(etcd.lease_ttl, Duration::from_secs(10));
    assert_eq!(etcd.username, None);
    assert_eq!(
        etcd.endpoint_urls().unwrap(),
        vec!["http://127.0.0.1:2379".to_owned()]
    );
    config.validate().unwrap();
}

#[test]
fn etcd_options_in_kebab_case() {
    let config = parse(
        r#"
        [etcd]
        endpoints = ["http://10.0.0.5:2379", "http://10.0.0.6:2379"]
        prefix = "/prod/tern"
        lease-ttl = "30s"
        username = "tern"
        password = "hunter2-but-longer"
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    let etcd = config.etcd.as_ref().unwrap();
    assert_eq!(etcd.lease_ttl, Duration::from_secs(30));
    // The password never prints.
    assert!(!format!("{etcd:?}").contains("hunter2"));
    let printed = toml::to_string(&config).unwrap();
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("password = \"<redacted>\""), "{printed}");
    assert!(printed.contains("lease-ttl = \"30s\""), "{printed}");
}

#[test]
fn unknown_keys_are_refused() {
    let err = parse("network-sever = \"10.0.0.2:1884\"").unwrap_err();
    assert!(
        err.to_string().contains("unknown field `network-sever`"),
        "{err}"
    );
    let err = parse("[etcd]\nendpoints = []\nlease_ttl = \"5s\"").unwrap_err();
    assert!(
        err.to_string().contains("unknown field `lease_ttl`"),
        "{err}"
    );
    let err = parse("[etcd]\nendpoints = []\nlease-ttl = \"ten seconds\"").unwrap_err();
    assert!(
        err.to_string().contains("invalid duration \"ten seconds\""),
        "{err}"
    );
}

fn etcd(f: impl FnOnce(&mut EtcdConfig)) -> DirectoryConfig {
    let mut etcd = EtcdConfig {
        endpoints: vec!["127.0.0.1:2379".into()],
        ..EtcdConfig::default()
    };
    f(&mut etcd);
    DirectoryConfig {
        etcd: Some(etcd),
        ..DirectoryConfig::default()
    }
}

fn error(config: &DirectoryConfig) -> String {
    config.validate().unwrap_err().to_string()
}

#[test]
fn bad_etcd_options_name_key_value_and_reason() {
    assert_eq!(
        error(&etcd(|e| e.endpoints.clear())),
        "cluster.etcd.endpoints = []: at least one etcd client URL is needed, e.g. [\"http://127.0.0.1:2379\"]"
    );
    assert_eq!(
        error(&etcd(|e| e.endpoints = vec!["https://10.0.0.5:2379".into()])),
        "cluster.etcd.endpoints = \"https://10.0.0.5:2379\": TLS to etcd is not supported yet: use http://"
    );
    assert_eq!(
        error(&etcd(|e| e.endpoints = vec!["etcd://10.0.0.5:2379".into()])),
        "cluster.etcd.endpoints = \"etcd://10.0.0.5:2379\": the scheme must be http:// or https://"
    );
    assert_eq!(
        error(&etcd(|e| e.prefix = "tern/".into())),
        "cluster.etcd.prefix = \"tern/\": must start with `/` and not end with `/`, e.g. \"/tern\""
    );
    assert_eq!(
        error(&etcd(|e| e.lease_ttl = Duration::from_millis(1500))),
        "cluster.etcd.lease-ttl = \"1s 500ms\": must be whole seconds, at least 2s (etcd leases count in seconds)"
    );
    assert_eq!(
        error(&etcd(|e| e.username = Some("tern".into()))),
        "cluster.etcd.password = (not set): required when `cluster.etcd.username` is set"
    );
}

#[test]
fn etcd_and_static_addresses_are_exclusive() {
    let mut config = etcd(|_| {});
    config.join_server = Some("10.0.0.3:1884".into());
    assert_eq!(
        error(&config),
        "cluster.join-server = \"10.0.0.3:1884\": static addresses and `cluster.etcd` are \
         exclusive: with etcd, every process registers its own address"
    );
}

#[test]
fn bad_static_addresses() {
    let config = parse(r#"network-server = "http://10.0.0.2:1884/api""#).unwrap();
    assert_eq!(
        error(&config),
        "cluster.network-server = \"http://10.0.0.2:1884/api\": a gRPC address has no path: expected http://host:port"
    );
    let config = parse(r#"application-server = "not an address""#).unwrap();
    let err = error(&config);
    assert!(
        err.starts_with("cluster.application-server = \"not an address\": not an address ("),
        "{err}"
    );
}

#[tokio::test]
async fn static_directory_groups_roles_by_address() {
    let config = parse(
        r#"
        network-server = "10.0.0.2:1884"
        join-server = "http://10.0.0.2:1884"
        application-server = "https://as.example.com"
        "#,
    )
    .unwrap();
    let dir = directory::open(&config, local()).await.unwrap();
    assert!(dir.health().ok);
    assert_eq!(dir.health().reason, None);

    let ns = dir.peers(PeerRole::NetworkServer);
    assert_eq!(ns.len(), 1);
    assert_eq!(ns[0].address, "http://10.0.0.2:1884");
    assert_eq!(
        ns[0].roles,
        [PeerRole::NetworkServer, PeerRole::JoinServer].into()
    );
    assert_eq!(dir.peers(PeerRole::JoinServer), ns);
    assert_eq!(
        dir.peers(PeerRole::ApplicationServer)[0].address,
        "https://as.example.com"
    );
    assert!(dir.peers(PeerRole::IdentityServer).is_empty());
    // The local process is not part of a static directory.
    assert!(dir.subscribe().borrow().get("gs-1").is_none());
    dir.shutdown().await;
}

#[tokio::test]
async fn static_directory_never_changes() {
    let dir = StaticDirectory::new([local()]);
    let mut changes = dir.subscribe();
    assert_eq!(changes.borrow().len(), 1);
    let waited = tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
    assert!(
        waited.is_err(),
        "a static directory has no change to report"
    );
}

#[test]
fn role_names() {
    assert_eq!("ns".parse::<PeerRole>().unwrap(), PeerRole::NetworkServer);
    assert_eq!(
        "nss".parse::<PeerRole>().unwrap_err().to_string(),
        "unknown role `nss`: expected one of is, gs, ns, js, as"
    );
    for role in PeerRole::ALL {
        assert_eq!(role.to_string().parse::<PeerRole>().unwrap(), role);
    }
    assert_eq!(
        PeerRole::ApplicationServer.config_name(),
        "application-server"
    );
}

#[test]
fn peer_json_is_kebab_case_and_tolerant() {
    let peer = local();
    let json = serde_json::to_string(&peer).unwrap();
    assert_eq!(
        json,
        r#"{"instance-id":"gs-1","address":"http://127.0.0.1:1884","roles":["gs"]}"#
    );
    // A newer version may add fields.
    let newer =
        r#"{"instance-id":"gs-1","address":"http://127.0.0.1:1884","roles":["gs"],"zone":"b"}"#;
    assert_eq!(
        serde_json::from_str::<directory::Peer>(newer).unwrap(),
        peer
    );
}

fn local() -> directory::Peer {
    directory::Peer {
        instance_id: "gs-1".into(),
        address: "http://127.0.0.1:1884".into(),
        roles: [PeerRole::GatewayServer].into(),
    }
}

#[test]
fn roles_convert_from_the_runtime_roles() {
    for role in tern_cluster::role::Role::ALL {
        assert_eq!(PeerRole::from(role).as_str(), role.as_str());
    }
}
