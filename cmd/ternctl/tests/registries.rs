//! `ternctl end-devices create|import|get` against the four device registries over real gRPC.
//! The registries here are recording fakes (the IS, JS, NS and AS are other crates): they show
//! which part of a device goes where — keys never to the IS, the AppSKey never to the NS,
//! network keys never to the AS — and that a failed step undoes the earlier ones.

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tern_api::v3::{
    self, EndDevice, EndDeviceIdentifiers, GetEndDeviceRequest, KeyEnvelope, RootKeys,
    UpdateEndDeviceRequest,
};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

type Reply<T> = Result<Response<T>, Status>;

/// Every call, as `"<registry>.<method> <device_id> <detail>"`.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<String>>>);

impl Calls {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn mask(req: &UpdateEndDeviceRequest) -> String {
    req.field_mask
        .as_ref()
        .map(|m| m.paths.join(","))
        .unwrap_or_default()
}

fn dev_id(d: &Option<EndDevice>) -> String {
    d.as_ref()
        .and_then(|d| d.ids.as_ref())
        .map(|i| i.device_id.clone())
        .unwrap_or_default()
}

/// Which keys a device message carries, e.g. `keys=app_key,nwk_key`.
fn keys(d: &Option<EndDevice>) -> String {
    let mut k = Vec::new();
    if let Some(d) = d {
        if let Some(r) = &d.root_keys {
            if r.app_key.is_some() {
                k.push("app_key");
            }
            if r.nwk_key.is_some() {
                k.push("nwk_key");
            }
        }
        if let Some(s) = d.session.as_ref().and_then(|s| s.keys.as_ref()) {
            for (present, name) in [
                (s.f_nwk_s_int_key.is_some(), "f_nwk_s_int_key"),
                (s.s_nwk_s_int_key.is_some(), "s_nwk_s_int_key"),
                (s.nwk_s_enc_key.is_some(), "nwk_s_enc_key"),
                (s.app_s_key.is_some(), "app_s_key"),
            ] {
                if present {
                    k.push(name);
                }
            }
        }
    }
    format!("keys={}", k.join(","))
}

#[derive(Clone)]
struct Is(Calls);

#[tonic::async_trait]
impl v3::end_device_registry_server::EndDeviceRegistry for Is {
    async fn create(&self, r: Request<v3::CreateEndDeviceRequest>) -> Reply<EndDevice> {
        let d = r.into_inner().end_device;
        self.0
            .push(format!("is.create {} {}", dev_id(&d), keys(&d)));
        Ok(Response::new(d.unwrap_or_default()))
    }
    async fn get(&self, r: Request<GetEndDeviceRequest>) -> Reply<EndDevice> {
        Ok(Response::new(EndDevice {
            ids: r.into_inner().end_device_ids,
            name: "from the IS".into(),
            ..Default::default()
        }))
    }
    async fn get_identifiers_for_euis(
        &self,
        _: Request<v3::GetEndDeviceIdentifiersForEuisRequest>,
    ) -> Reply<EndDeviceIdentifiers> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn list(&self, _: Request<v3::ListEndDevicesRequest>) -> Reply<v3::EndDevices> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn update(&self, _: Request<UpdateEndDeviceRequest>) -> Reply<EndDevice> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn delete(&self, r: Request<EndDeviceIdentifiers>) -> Reply<pbjson_types::Empty> {
        self.0
            .push(format!("is.delete {}", r.into_inner().device_id));
        Ok(Response::new(pbjson_types::Empty {}))
    }
}

/// A component registry (JS, NS or AS): `Set` fails for device `dev-fail` at the NS.
macro_rules! component {
    ($name:ident, $module:ident, $trait:ident, $label:literal) => {
        #[derive(Clone)]
        struct $name(Calls);

        #[tonic::async_trait]
        impl v3::$module::$trait for $name {
            async fn get(&self, r: Request<GetEndDeviceRequest>) -> Reply<EndDevice> {
                let r = r.into_inner();
                let paths = r.field_mask.map(|m| m.paths.join(",")).unwrap_or_default();
                if $label == "js" && paths.contains("root_keys") {
                    return Ok(Response::new(EndDevice {
                        root_keys: Some(RootKeys {
                            app_key: Some(KeyEnvelope {
                                key: vec![0xAB; 16],
                                ..Default::default()
                            }),
                            nwk_key: None,
                        }),
                        ..Default::default()
                    }));
                }
                Err(Status::not_found("no such device here"))
            }
            async fn set(&self, r: Request<UpdateEndDeviceRequest>) -> Reply<EndDevice> {
                let r = r.into_inner();
                let id = dev_id(&r.end_device);
                if $label == "ns" && id == "dev-fail" {
                    return Err(Status::invalid_argument(
                        "frequency_plan_id: unknown frequency plan NOPE",
                    ));
                }
                self.0.push(format!(
                    "{}.set {id} {} mask={}",
                    $label,
                    keys(&r.end_device),
                    mask(&r)
                ));
                Ok(Response::new(r.end_device.unwrap_or_default()))
            }
            async fn delete(&self, r: Request<EndDeviceIdentifiers>) -> Reply<pbjson_types::Empty> {
                self.0
                    .push(format!("{}.delete {}", $label, r.into_inner().device_id));
                Ok(Response::new(pbjson_types::Empty {}))
            }
        }
    };
}

component!(Js, js_end_device_registry_server, JsEndDeviceRegistry, "js");
component!(Ns, ns_end_device_registry_server, NsEndDeviceRegistry, "ns");
component!(As, as_end_device_registry_server, AsEndDeviceRegistry, "as");

/// Streams two events about the requested entities, then ends the stream.
#[derive(Clone)]
struct Events(Calls);

#[tonic::async_trait]
impl v3::events_server::Events for Events {
    type StreamStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<v3::Event, Status>> + Send>>;
    async fn stream(&self, r: Request<v3::StreamEventsRequest>) -> Reply<Self::StreamStream> {
        let r = r.into_inner();
        self.0.push(format!(
            "events.stream filters={} names={}",
            r.identifiers.len(),
            r.names.join(",")
        ));
        let events: Vec<Result<v3::Event, Status>> = ["ns.up.data.receive", "as.up.data.forward"]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                Ok(v3::Event {
                    name: (*name).to_owned(),
                    time: Some(tern_api::Timestamp {
                        seconds: 1_700_000_000 + i as i64,
                        nanos: 0,
                    }),
                    identifiers: r.identifiers.clone(),
                    ..Default::default()
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(events))))
    }
}

#[derive(Clone)]
struct Gs;

#[tonic::async_trait]
impl v3::gs_server::Gs for Gs {
    async fn get_gateway_connection_stats(
        &self,
        r: Request<v3::GatewayIdentifiers>,
    ) -> Reply<v3::GatewayConnectionStats> {
        let ids = r.into_inner();
        if ids.gateway_id != "gw-1" {
            return Err(Status::not_found(format!(
                "gateway {} is not connected",
                ids.gateway_id
            )));
        }
        Ok(Response::new(v3::GatewayConnectionStats {
            gateway_ids: Some(ids),
            protocol: "semtech-udp".into(),
            uplink_count: 42,
            ..Default::default()
        }))
    }
}

/// Serves the four registries on a free loopback port in a thread of its own.
fn serve(calls: Calls) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let calls2 = calls.clone();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            tonic::transport::Server::builder()
                .add_service(
                    v3::end_device_registry_server::EndDeviceRegistryServer::new(Is(calls.clone())),
                )
                .add_service(
                    v3::js_end_device_registry_server::JsEndDeviceRegistryServer::new(Js(
                        calls.clone()
                    )),
                )
                .add_service(
                    v3::ns_end_device_registry_server::NsEndDeviceRegistryServer::new(Ns(
                        calls.clone()
                    )),
                )
                .add_service(
                    v3::as_end_device_registry_server::AsEndDeviceRegistryServer::new(As(calls)),
                )
                .add_service(v3::events_server::EventsServer::new(Events(calls2)))
                .add_service(v3::gs_server::GsServer::new(Gs))
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
                .unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

fn ternctl(server: &str, home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ternctl"))
        .args(args)
        .env("TERN_SERVER", server)
        .env("TERN_API_KEY", "test-key")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .output()
        .unwrap()
}

const COMMON: &[&str] = &[
    "--frequency-plan",
    "EU_863_870",
    "--lorawan-phy-version",
    "RP002-1.0.3",
];

#[test]
fn device_parts_go_to_their_registries_and_failures_are_undone() {
    let calls = Calls::default();
    let server = serve(calls.clone());
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| ternctl(&server, home.path(), args);

    // OTAA 1.1: root keys to the JS only.
    let mut args = vec![
        "end-devices",
        "create",
        "app-1",
        "dev-otaa",
        "--dev-eui",
        "70B3D57ED0000001",
        "--join-eui",
        "0000000000000001",
        "--lorawan-version",
        "1.1",
        "--app-key",
        "2B7E151628AED2A6ABF7158809CF4F3C",
        "--nwk-key",
        "000102030405060708090A0B0C0D0E0F",
    ];
    args.extend_from_slice(COMMON);
    // The JS named by its bare host:port (here the same fake), stored in the IS entry.
    let js_address = server.trim_start_matches("http://").to_owned();
    args.extend_from_slice(&["--join-server-address", &js_address]);
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        calls.take(),
        vec![
            "is.create dev-otaa keys=",
            "js.set dev-otaa keys=app_key,nwk_key mask=root_keys.app_key,root_keys.nwk_key",
            "ns.set dev-otaa keys= mask=frequency_plan_id,lorawan_version,lorawan_phy_version,supports_join,supports_class_b,supports_class_c",
        ]
    );

    // ABP 1.0.3 class C: network session to the NS, AppSKey to the AS.
    let mut args = vec![
        "end-devices",
        "create",
        "app-1",
        "dev-abp",
        "--lorawan-version",
        "1.0.3",
        "--abp",
        "--dev-addr",
        "26011BDA",
        "--nwk-s-key",
        "11111111111111111111111111111111",
        "--app-s-key",
        "22222222222222222222222222222222",
        "--class-c",
    ];
    args.extend_from_slice(COMMON);
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = calls.take();
    assert_eq!(got[0], "is.create dev-abp keys=");
    assert_eq!(
        got[1],
        "ns.set dev-abp keys=f_nwk_s_int_key mask=frequency_plan_id,lorawan_version,lorawan_phy_version,supports_join,supports_class_b,supports_class_c,mac_settings.class,session.dev_addr,session.keys.f_nwk_s_int_key"
    );
    assert_eq!(
        got[2],
        "as.set dev-abp keys=app_s_key mask=session.dev_addr,session.keys.app_s_key"
    );
    assert_eq!(got.len(), 3);

    // The NS refuses: the JS and IS parts are deleted again, last first; exit 1 with the
    // server's message.
    let mut args = vec![
        "end-devices",
        "create",
        "app-1",
        "dev-fail",
        "--dev-eui",
        "70B3D57ED0000002",
        "--join-eui",
        "0000000000000001",
        "--lorawan-version",
        "1.0.3",
        "--app-key",
        "2B7E151628AED2A6ABF7158809CF4F3C",
    ];
    args.extend_from_slice(COMMON);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("was not created (undone)"), "{err}");
    assert!(
        err.contains("invalid argument: frequency_plan_id: unknown frequency plan NOPE"),
        "{err}"
    );
    assert_eq!(
        calls.take(),
        vec![
            "is.create dev-fail keys=",
            "js.set dev-fail keys=app_key mask=root_keys.app_key",
            "js.delete dev-fail",
            "is.delete dev-fail",
        ]
    );

    // Import: the failing row is undone and reported, the others are created.
    let file = home.path().join("devices.json");
    std::fs::write(
        &file,
        r#"[{"device_id":"dev-a","dev_eui":"70B3D57ED000000A","app_key":"2B7E151628AED2A6ABF7158809CF4F3C"},
            {"device_id":"dev-fail","dev_eui":"70B3D57ED000000B","app_key":"2B7E151628AED2A6ABF7158809CF4F3C"},
            {"device_id":"dev-c","dev_eui":"70B3D57ED000000C"}]"#,
    )
    .unwrap();
    let out = run(&[
        "end-devices",
        "import",
        "app-1",
        "--file",
        file.to_str().unwrap(),
        "--join-eui",
        "0000000000000001",
        "--frequency-plan",
        "EU_863_870",
        "--lorawan-version",
        "1.0.3",
        "--lorawan-phy-version",
        "RP002-1.0.3",
        "--concurrency",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "created 2, failed 1 of 3"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("item 2 (dev-fail): "), "{err}");
    let got = calls.take();
    assert!(got.contains(&"is.delete dev-fail".to_owned()), "{got:?}");
    assert!(got.contains(&"js.delete dev-fail".to_owned()), "{got:?}");
    assert!(
        !got.iter()
            .any(|c| c.contains("delete dev-a") || c.contains("delete dev-c"))
    );
    assert!(got.contains(&"ns.set dev-c keys= mask=frequency_plan_id,lorawan_version,lorawan_phy_version,supports_join,supports_class_b,supports_class_c".to_owned()));

    // Get merges the JS's root keys (hex) into the IS's registry fields.
    let out = run(&[
        "-o",
        "json",
        "end-devices",
        "get",
        "app-1",
        "dev-a",
        "--show-keys",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dev["name"], "from the IS");
    assert_eq!(dev["root_keys"]["app_key"]["key"], "AB".repeat(16));
}

#[test]
fn events_stream_one_line_each_and_gateway_stats() {
    let calls = Calls::default();
    let server = serve(calls.clone());
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| ternctl(&server, home.path(), args);

    let out = run(&[
        "events",
        "subscribe",
        "--application",
        "app-1",
        "--device",
        "dev-1",
        "--name",
        "ns.*",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2023-11-14T22:13:20Z ns.up.data.receive app-1/dev-1\n\
         2023-11-14T22:13:21Z as.up.data.forward app-1/dev-1\n"
    );
    assert_eq!(calls.take(), vec!["events.stream filters=1 names=ns.*"]);

    let out = run(&["-o", "json", "events", "subscribe", "--gateway", "gw-1"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["name"], "as.up.data.forward");
    assert_eq!(
        lines[0]["identifiers"][0]["gateway_ids"]["gateway_id"],
        "gw-1"
    );

    // No filter is a usage error.
    assert_eq!(run(&["events", "subscribe"]).status.code(), Some(2));

    let out = run(&["-o", "json", "gateways", "get-connection-stats", "gw-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["protocol"], "semtech-udp");
    assert_eq!(stats["uplink_count"], "42");
    let out = run(&["gateways", "get-connection-stats", "gw-2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found: gateway gw-2 is not connected"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
