//! `ternctl simulate` against a real `tern start` (every role, embedded store): an OTAA
//! device created with ternctl joins through a simulated Semtech UDP gateway and sends two
//! uplinks, and the Network Server's session shows them; `simulate uplink` continues from
//! the state file with a confirmed uplink, acknowledged in RX1/RX2, then once more through
//! a Basics Station; a wrong AppKey gets no join-accept (exit 1); usage errors exit 2.
//!
//! The server is started by the end-to-end suite's harness (`tern_e2e`), from the `tern` next
//! to `ternctl` (`cargo build -p tern` with the same CARGO_TARGET_DIR, or
//! `cargo test --workspace`).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use tern_e2e::Server;
use tern_e2e::flow::{bootstrap_value, logged_addr};

const APP_KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
const GATEWAY: &str = "0102030405060708";
const STATION: &str = "0102030405060709";
const DEV_EUI: &str = "70B3D57ED0000201";

struct Cli {
    home: PathBuf,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ternctl"))
            .args(args)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join("xdg"))
            .env_remove("TERN_SERVER")
            .env_remove("TERN_API_KEY")
            .output()
            .expect("run ternctl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ternctl {args:?} failed with {}:\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until the Network Server's session of the device has `last_f_cnt_up == f_cnt`.
fn wait_f_cnt(cli: &Cli, tern: &Server, f_cnt: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let dev = cli.json(&["end-devices", "get", "app-sim", "dev-sim"]);
        if dev["session"]["last_f_cnt_up"].as_u64() == Some(f_cnt) {
            return dev;
        }
        assert!(
            Instant::now() < deadline,
            "the NS did not record FCnt {f_cnt}: {dev}\n{}",
            tern.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn simulate_joins_and_sends_uplinks_to_a_real_tern() {
    let dir = tempfile::tempdir().unwrap();
    // Every role; password hashing kept cheap, as a test needs no brute-force resistance.
    let tern = Server::start(
        "ternctl-simulate",
        &[],
        &[
            ("TERN_IDENTITY_SERVER__HASH_MEMORY_KIB", "1024"),
            ("TERN_IDENTITY_SERVER__HASH_ITERATIONS", "1"),
        ],
    );
    let udp = format!(
        "127.0.0.1:{}",
        logged_addr(&tern, "gateway listeners bound", "udp").port()
    );
    let key = bootstrap_value(&tern, "api-key");
    let cli = Cli {
        home: dir.path().join("home"),
    };
    cli.ok(&[
        "login",
        "--server",
        &format!("http://{}", tern.grpc),
        "--api-key",
        &key,
    ]);
    cli.ok(&["applications", "create", "app-sim"]);
    cli.ok(&[
        "gateways",
        "create",
        "gw-sim",
        "--eui",
        GATEWAY,
        "--frequency-plan",
        "EU_863_870",
    ]);
    cli.ok(&[
        "end-devices",
        "create",
        "app-sim",
        "dev-sim",
        "--dev-eui",
        DEV_EUI,
        "--join-eui",
        "70B3D57ED0000000",
        "--frequency-plan",
        "EU_863_870",
        "--lorawan-version",
        "1.0.3",
        "--lorawan-phy-version",
        "RP002-1.0.3",
        "--app-key",
        APP_KEY,
    ]);

    // Keys from the servers: join, then two uplinks one second apart.
    let state = dir.path().join("dev-sim.json");
    let state = state.to_str().unwrap();
    let radio = [
        "--gateway-eui",
        GATEWAY,
        "--udp",
        &udp,
        "--rssi",
        "-70",
        "--snr",
        "6",
    ];
    let mut args = vec!["simulate", "device", "app-sim", "dev-sim"];
    args.extend_from_slice(&radio);
    args.extend_from_slice(&[
        "--uplinks",
        "2",
        "--interval",
        "1s",
        "--payload",
        "07D0",
        "--port",
        "2",
        "--state",
        state,
    ]);
    let out = cli.run(&args);
    let printed = text(&out);
    // Shown with --nocapture, and when an assertion below fails.
    eprintln!("{printed}");
    assert!(out.status.success(), "{printed}\n{}", tern.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!("join-request sent: DevEUI {DEV_EUI}")),
        "{printed}"
    );
    let accepted = lines
        .iter()
        .find(|l| l.starts_with("join accepted: DevAddr "))
        .unwrap_or_else(|| panic!("{printed}"));
    assert!(
        accepted.contains(" in RX1 via gateway ") || accepted.contains(" in RX2 via gateway "),
        "{printed}"
    );
    let dev_addr = accepted["join accepted: DevAddr ".len()..][..8].to_owned();
    for f_cnt in 0..2 {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("uplink sent: FCnt {f_cnt}, FPort 2"))),
            "{printed}"
        );
    }
    // The Network Server saw both uplinks in the session the join started.
    let dev = wait_f_cnt(&cli, &tern, 1);
    assert!(
        dev["session"]["dev_addr"]
            .as_str()
            .is_some_and(|a| a.eq_ignore_ascii_case(&dev_addr)),
        "{dev}"
    );

    // `simulate uplink` continues from the state file, without asking the servers.
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(state).unwrap()).unwrap();
    assert_eq!(saved["session"]["f_cnt_up"], 2, "{saved}");
    let mut args = vec!["simulate", "uplink", "app-sim", "dev-sim"];
    args.extend_from_slice(&radio);
    args.extend_from_slice(&[
        "--payload",
        "0102",
        "--confirmed",
        "--state",
        state,
        "-o",
        "json",
    ]);
    let out = cli.run(&args);
    eprintln!("{}", text(&out));
    assert!(out.status.success(), "{}", text(&out));
    let steps: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(steps[0]["step"], "uplink_sent", "{steps:?}");
    assert_eq!(steps[0]["f_cnt"], 2, "{steps:?}");
    assert_eq!(steps[0]["confirmed"], true, "{steps:?}");
    // The Network Server acknowledges it in RX1 or RX2.
    let downlink = steps
        .iter()
        .find(|s| s["step"] == "downlink_received")
        .unwrap_or_else(|| panic!("{steps:?}"));
    assert_eq!(downlink["ack"], true, "{downlink}");
    assert!(
        downlink["window"] == "Rx1" || downlink["window"] == "Rx2",
        "{downlink}"
    );
    assert!(
        steps
            .iter()
            .any(|s| s["step"] == "acked" && s["f_cnt"] == 2),
        "{steps:?}"
    );
    wait_f_cnt(&cli, &tern, 2);

    // The same session through a Basics Station gateway.
    let station = format!(
        "ws://127.0.0.1:{}",
        logged_addr(&tern, "gateway listeners bound", "basic_station").port()
    );
    cli.ok(&[
        "gateways",
        "create",
        "gw-sim-bs",
        "--eui",
        STATION,
        "--frequency-plan",
        "EU_863_870",
    ]);
    let out = cli.run(&[
        "simulate",
        "uplink",
        "app-sim",
        "dev-sim",
        "--gateway-eui",
        STATION,
        "--station",
        &station,
        "--confirmed",
        "--link-check",
        "--state",
        state,
    ]);
    eprintln!("{}", text(&out));
    assert!(out.status.success(), "{}\n{}", text(&out), tern.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("uplink sent: FCnt 3, FPort 1, confirmed"),
        "{stdout}"
    );
    assert!(stdout.contains("uplink FCnt 3 acknowledged"), "{stdout}");
    assert!(
        stdout.contains("MAC commands: LinkCheckAns noted (margin "),
        "{stdout}"
    );
    wait_f_cnt(&cli, &tern, 3);

    // A wrong AppKey: the join-request is refused, no join-accept, exit code 1.
    let mut args = vec!["simulate", "join", "app-sim", "dev-sim"];
    args.extend_from_slice(&radio);
    args.extend_from_slice(&[
        "--dev-eui",
        DEV_EUI,
        "--join-eui",
        "70B3D57ED0000000",
        "--app-key",
        "000102030405060708090A0B0C0D0E0F",
    ]);
    let out = cli.run(&args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no join-accept"), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no downlink in the receive windows"),
        "{}",
        text(&out)
    );

    // Usage errors: exit code 2.
    let out = cli.run(&["simulate", "join", "app-sim", "dev-sim", "--udp", &udp]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let mut args = vec!["simulate", "uplink", "app-sim", "dev-sim"];
    args.extend_from_slice(&radio);
    args.extend_from_slice(&["--payload", "not-hex", "--state", state]);
    let out = cli.run(&args);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--payload"),
        "{}",
        text(&out)
    );
}
