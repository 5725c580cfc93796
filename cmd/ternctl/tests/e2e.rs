//! End to end: a real `tern start is` driven through the `ternctl` binary only — login with
//! the bootstrap key, an organization, an application, a gateway, 1,000 devices by import,
//! an application API key, lists, permission errors, password login with token refresh,
//! deletes.
//!
//! The server binary is the `tern` next to `ternctl` (`cargo test --workspace` builds it;
//! alone: `cargo build -p tern`). The IS serves no Join/Network/Application Server registry,
//! so the import is `--registry-only` (OTAA devices without keys: keys need `tern start js`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `tern start is`, killed when dropped.
struct Tern {
    child: Child,
    grpc: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Tern {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tern {
    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

fn tern_binary() -> PathBuf {
    let ternctl = Path::new(env!("CARGO_BIN_EXE_ternctl"));
    let tern = ternctl.with_file_name("tern");
    assert!(
        tern.exists(),
        "{} does not exist: build the server first with `cargo build -p tern` (with the same \
         CARGO_TARGET_DIR), or run `cargo test --workspace`",
        tern.display()
    );
    tern
}

/// The gRPC address in the "tern started" log line (text or JSON logs).
fn started_grpc(line: &str) -> Option<String> {
    if !line.contains("tern started") {
        return None;
    }
    if let Ok(json) = serde_json::from_str::<Value>(line) {
        return json["fields"]["grpc"].as_str().map(str::to_owned);
    }
    line.split_whitespace()
        .find_map(|t| t.strip_prefix("grpc="))
        .map(|s| s.trim_matches('"').to_owned())
}

fn start_tern(dir: &Path) -> Tern {
    start_tern_with(dir, &["is"], "")
}

/// `tern start <roles>` with the test configuration plus `extra` TOML.
fn start_tern_with(dir: &Path, roles: &[&str], extra: &str) -> Tern {
    let data_dir = dir.join("data");
    let config = dir.join("tern.toml");
    // Cheap hashes keep 1,000 authenticated calls fast; short access tokens exercise refresh.
    std::fs::write(
        &config,
        format!(
            "data-dir = {:?}\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [grpc]\nlisten = \"127.0.0.1:0\"\n\
             [identity-server]\nhash-memory-kib = 1024\nhash-iterations = 1\naccess-token-ttl = \"20s\"\n\
             {extra}",
            data_dir.display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(tern_binary());
    cmd.current_dir(dir)
        .arg("start")
        .args(roles)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("TERN_") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    let mut child = cmd.spawn().expect("spawn tern");
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn({
        let log = log.clone();
        move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log.lock().unwrap().push(line);
            }
        }
    });
    let mut tern = Tern {
        child,
        grpc: String::new(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(grpc) = tern.log().lines().find_map(started_grpc) {
            tern.grpc = grpc;
            break;
        }
        if let Some(status) = tern.child.try_wait().unwrap() {
            panic!("tern exited early with {status}:\n{}", tern.log());
        }
        assert!(
            Instant::now() < deadline,
            "tern did not start:\n{}",
            tern.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    tern
}

/// The admin API key from `<data-dir>/bootstrap.txt` (`api-key = "..."`) and the password.
fn bootstrap(dir: &Path) -> (String, String) {
    let path = dir.join("data").join("bootstrap.txt");
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && text.contains("api-key =")
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "{} was not written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let doc: toml::Table = toml::from_str(&text).expect("bootstrap.txt is TOML");
    let get = |k: &str| {
        doc[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} in bootstrap.txt"))
            .to_owned()
    };
    (get("api-key"), get("password"))
}

struct Cli {
    home: PathBuf,
}

impl Cli {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ternctl"));
        cmd.args(args)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join("xdg"))
            .env_remove("TERN_SERVER")
            .env_remove("TERN_API_KEY");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run ternctl")
    }

    fn run_with(&self, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        check(&out, args)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    fn config_path(&self) -> PathBuf {
        self.home.join("xdg").join("ternctl").join("config.toml")
    }
}

fn check(out: &Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "ternctl {args:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn ternctl_drives_the_identity_server() {
    let dir = tempfile::tempdir().unwrap();
    let tern = start_tern(dir.path());
    let (admin_key, admin_password) = bootstrap(dir.path());
    let cli = Cli {
        home: dir.path().join("home"),
    };
    let server = format!("http://{}", tern.grpc);

    // No server configured yet: a clear error, exit 1.
    let out = cli.run(&["applications", "list"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ternctl login --server"),
        "{}",
        stderr(&out)
    );

    // Login with the bootstrap key; the config file is private.
    cli.ok(&["login", "--server", &server, "--api-key", &admin_key]);
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(cli.config_path()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    let org = cli.json(&["organizations", "create", "org-e2e", "--name", "E2E Org"]);
    assert_eq!(org["ids"]["organization_id"], "org-e2e");
    let app = cli.json(&[
        "applications",
        "create",
        "app-e2e",
        "--organization-id",
        "org-e2e",
        "--name",
        "E2E App",
        "--attribute",
        "site=north",
    ]);
    assert_eq!(app["ids"]["application_id"], "app-e2e");
    let gtw = cli.json(&[
        "gateways",
        "create",
        "gw-e2e",
        "--organization-id",
        "org-e2e",
        "--eui",
        "0102030405060708",
        "--frequency-plan",
        "EU_863_870",
    ]);
    assert_eq!(gtw["ids"]["eui"], "0102030405060708");

    // 1,000 devices by import.
    let mut csv = String::from("device_id,dev_eui,join_eui,name\n");
    for i in 0..1000 {
        csv.push_str(&format!(
            "dev-{i:04},70B3D57ED000{i:04X},0000000000000001,Device {i}\n"
        ));
    }
    let file = dir.path().join("devices.csv");
    std::fs::write(&file, csv).unwrap();
    let file = file.to_str().unwrap();
    let import = [
        "end-devices",
        "import",
        "app-e2e",
        "--file",
        file,
        "--frequency-plan",
        "EU_863_870",
        "--lorawan-version",
        "1.0.3",
        "--lorawan-phy-version",
        "RP002-1.0.3",
        "--registry-only",
        "--concurrency",
        "16",
    ];
    let out = cli.ok(&import);
    assert_eq!(out.trim(), "created 1000, failed 0 of 1000");

    // A file with a bad row and a row the server refuses: both named, exit 1, the good one in.
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "device_id,dev_eui,join_eui\n\
         dev-bad,70B3D57ED00000,0000000000000001\n\
         dev-0001,70B3D57EFFFF0001,0000000000000001\n\
         dev-good,70B3D57EFFFF0002,0000000000000001\n",
    )
    .unwrap();
    let mut bad_import = import;
    bad_import[4] = bad.to_str().unwrap();
    let out = cli.run(&bad_import);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("line 2 (dev-bad): dev_eui:"), "{err}");
    assert!(
        err.contains("line 3 (dev-0001): ") && err.contains("already exists"),
        "{err}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("created 1, failed 2 of 3"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let devices = cli.json(&["end-devices", "list", "app-e2e"]);
    assert_eq!(devices.as_array().unwrap().len(), 1001);
    let dev = cli.json(&["end-devices", "get", "app-e2e", "dev-0255"]);
    assert_eq!(dev["ids"]["dev_eui"], "70B3D57ED00000FF");
    assert_eq!(dev["name"], "Device 255");

    // An application API key; its secret is shown once.
    let key = cli.json(&[
        "applications",
        "api-keys",
        "create",
        "app-e2e",
        "--name",
        "ci",
        "--rights",
        "traffic:read,application:traffic:down:write",
    ]);
    let secret = key["key"].as_str().expect("the secret").to_owned();
    let key_id = key["id"].as_str().unwrap().to_owned();
    assert!(!secret.is_empty());
    let keys = cli.ok(&["applications", "api-keys", "list", "app-e2e"]);
    assert!(keys.contains(&key_id), "{keys}");
    assert!(
        keys.contains("application:traffic:read,application:traffic:down:write"),
        "{keys}"
    );
    let listed = cli.json(&["applications", "api-keys", "list", "app-e2e"]);
    assert!(
        listed.to_string().find(&secret).is_none(),
        "the secret is never listed"
    );

    // TERN_API_KEY overrides the stored key; the server's refusal is printed.
    let out = cli.run_with(
        &["end-devices", "list", "app-e2e"],
        &[("TERN_API_KEY", &secret)],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );

    // Usage errors exit 2.
    let out = cli.run(&[
        "applications",
        "api-keys",
        "create",
        "app-e2e",
        "--name",
        "x",
        "--rights",
        "traffic:rad",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("\"traffic:rad\""), "{}", stderr(&out));
    assert_eq!(cli.run(&["applications"]).status.code(), Some(2));

    // Lists.
    let apps = cli.ok(&["applications", "list"]);
    assert!(
        apps.lines().next().unwrap().starts_with("APPLICATION ID"),
        "{apps}"
    );
    assert!(
        apps.contains("app-e2e") && apps.contains("E2E App"),
        "{apps}"
    );
    assert!(cli.ok(&["gateways", "list"]).contains("0102030405060708"));
    assert!(cli.ok(&["organizations", "list"]).contains("org-e2e"));

    // Updates merge attributes; collaborators; the GS API is not served by `start is`.
    let app = cli.json(&[
        "applications",
        "update",
        "app-e2e",
        "--description",
        "updated",
        "--attribute",
        "site=",
        "--attribute",
        "floor=2",
    ]);
    assert_eq!(app["description"], "updated");
    let app = cli.json(&["applications", "get", "app-e2e"]);
    assert_eq!(app["attributes"], serde_json::json!({"floor": "2"}));
    cli.ok(&[
        "applications",
        "collaborators",
        "set",
        "app-e2e",
        "--user-id",
        "admin",
        "--rights",
        "info,devices:read",
    ]);
    let collaborators = cli.ok(&["applications", "collaborators", "list", "app-e2e"]);
    assert!(
        collaborators.contains("admin") && collaborators.contains("application:devices:read"),
        "{collaborators}"
    );
    let out = cli.run(&["gateways", "get-connection-stats", "gw-e2e"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("get connection stats of gateway gw-e2e"),
        "{}",
        stderr(&out)
    );

    // A user, created with its password on stdin.
    let out = cli.run_with(
        &[
            "users",
            "create",
            "op-e2e",
            "--name",
            "Operator",
            "--email",
            "op@example.com",
            "--password-stdin",
        ],
        &[],
        "correct-horse-battery-staple\n",
    );
    check(&out, &["users", "create"]);
    let users = cli.ok(&["users", "list"]);
    assert!(
        users.contains("op-e2e") && users.contains("op@example.com"),
        "{users}"
    );
    cli.ok(&["users", "delete", "op-e2e"]);

    // Password login; the short-lived access token is refreshed by the next command.
    let out = cli.run_with(
        &["login", "--username", "admin", "--password-stdin"],
        &[],
        &format!("{admin_password}\n"),
    );
    check(&out, &["login", "--username"]);
    let first = std::fs::read_to_string(cli.config_path()).unwrap();
    assert!(
        first.contains("refresh-token") && !first.contains("api-key"),
        "{first}"
    );
    let me = cli.json(&["users", "get", "admin"]);
    assert_eq!(me["ids"]["user_id"], "admin");
    let second = std::fs::read_to_string(cli.config_path()).unwrap();
    assert_ne!(first, second, "the tokens were refreshed and stored");

    // Deletes: the application with devices needs --purge.
    cli.ok(&["applications", "api-keys", "delete", "app-e2e", &key_id]);
    let out = cli.run(&["applications", "delete", "app-e2e"]);
    assert_eq!(out.status.code(), Some(1));
    cli.ok(&["applications", "delete", "app-e2e", "--purge"]);
    cli.ok(&["gateways", "delete", "gw-e2e"]);
    cli.ok(&["organizations", "delete", "org-e2e"]);
    assert!(!cli.ok(&["applications", "list"]).contains("app-e2e"));
    assert!(!cli.ok(&["gateways", "list"]).contains("gw-e2e"));

    cli.ok(&["logout"]);
    let after = std::fs::read_to_string(cli.config_path()).unwrap();
    assert!(
        !after.contains("token") && after.contains(&server),
        "{after}"
    );
    drop(tern);
}

#[test]
fn completion_scripts_are_printed() {
    let cli = Cli {
        home: std::env::temp_dir(),
    };
    for shell in ["bash", "zsh", "fish"] {
        let out = cli.ok(&["completion", shell]);
        assert!(out.contains("end-devices"), "{shell}");
    }
    assert_eq!(cli.run(&["completion", "tcsh"]).status.code(), Some(2));
}

/// Against every role of one `tern start`: a device created in the IS, JS and NS, read back
/// with its root key; the application's formatters set from a file and tried on a payload;
/// webhooks set, listed and deleted.
#[test]
fn ternctl_drives_the_application_server() {
    let dir = tempfile::tempdir().unwrap();
    let tern = start_tern_with(
        dir.path(),
        &[],
        "[gateway-server.udp]\nlisten = \"127.0.0.1:0\"\n\
         [gateway-server.basic-station]\nlisten = \"127.0.0.1:0\"\n\
         [application-server.mqtt]\nlisten = \"127.0.0.1:0\"\n",
    );
    let (admin_key, _) = bootstrap(dir.path());
    let cli = Cli {
        home: dir.path().join("home"),
    };
    cli.ok(&[
        "login",
        "--server",
        &format!("http://{}", tern.grpc),
        "--api-key",
        &admin_key,
    ]);
    cli.ok(&["applications", "create", "app-as"]);
    cli.ok(&[
        "end-devices",
        "create",
        "app-as",
        "dev-as",
        "--dev-eui",
        "70B3D57ED0000101",
        "--join-eui",
        "70B3D57ED0000000",
        "--frequency-plan",
        "EU_863_870",
        "--lorawan-version",
        "1.0.3",
        "--lorawan-phy-version",
        "RP002-1.0.3",
        "--app-key",
        "2B7E151628AED2A6ABF7158809CF4F3C",
    ]);
    let dev = cli.json(&["end-devices", "get", "app-as", "dev-as", "--show-keys"]);
    assert_eq!(
        dev["root_keys"]["app_key"]["key"], "2B7E151628AED2A6ABF7158809CF4F3C",
        "{dev}"
    );
    // ABP: the network session goes to the NS, the AppSKey to the AS (which takes the
    // session fields only).
    cli.ok(&[
        "end-devices",
        "create",
        "app-as",
        "dev-abp",
        "--dev-eui",
        "70B3D57ED0000102",
        "--frequency-plan",
        "EU_863_870",
        "--lorawan-version",
        "1.0.3",
        "--lorawan-phy-version",
        "RP002-1.0.3",
        "--abp",
        "--dev-addr",
        "26011BDA",
        "--nwk-s-key",
        "11111111111111111111111111111111",
        "--app-s-key",
        "22222222222222222222222222222222",
    ]);
    let dev = cli.json(&["end-devices", "get", "app-as", "dev-abp", "--show-keys"]);
    assert_eq!(dev["session"]["dev_addr"], "26011BDA", "{dev}");

    // A JavaScript formatter from a file, then a payload decoded by it.
    let script = dir.path().join("decoder.js");
    std::fs::write(
        &script,
        "function decodeUplink(input) {\n  return { data: { celsius: ((input.bytes[0] << 8) | \
         input.bytes[1]) / 100, port: input.fPort } };\n}\n",
    )
    .unwrap();
    let set = cli.json(&[
        "applications",
        "formatters",
        "set",
        "app-as",
        "--up-formatter",
        "javascript",
        "--up-formatter-parameter-file",
        script.to_str().unwrap(),
    ]);
    assert_eq!(
        set["formatters"]["up_formatter"], "FORMATTER_JAVASCRIPT",
        "{set}"
    );
    let decoded = cli.json(&[
        "end-devices",
        "test-formatter",
        "app-as",
        "dev-as",
        "--f-port",
        "2",
        "--bytes",
        "07D0",
    ]);
    assert_eq!(decoded["decoded_payload"]["celsius"], 20.0, "{decoded}");
    assert_eq!(
        decoded["decoded_payload"]["port"].as_f64(),
        Some(2.0),
        "{decoded}"
    );
    // Trying CayenneLPP without setting it (Cayenne LPP documentation: 03 67 01 10 is
    // temperature_3 = 27.2 °C).
    let lpp = cli.json(&[
        "end-devices",
        "test-formatter",
        "app-as",
        "dev-as",
        "--bytes",
        "03670110",
        "--formatter",
        "cayennelpp",
    ]);
    assert_eq!(lpp["decoded_payload"]["temperature_3"], 27.2, "{lpp}");
    // A script is required for JavaScript: a usage error, exit 2.
    let out = cli.run(&[
        "applications",
        "formatters",
        "set",
        "app-as",
        "--up-formatter",
        "javascript",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // Webhooks.
    let hook = cli.json(&[
        "applications",
        "webhooks",
        "set",
        "app-as",
        "my-hook",
        "--base-url",
        "http://127.0.0.1:9/hooks",
        "--header",
        "Authorization=Bearer receiver-secret",
        "--uplink-message-path",
        "/up",
        "--join-accept-path",
        "/join",
    ]);
    assert_eq!(hook["base_url"], "http://127.0.0.1:9/hooks", "{hook}");
    assert_eq!(hook["uplink_message"]["path"], "/up", "{hook}");
    let list = cli.json(&["applications", "webhooks", "list", "app-as"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let got = cli.json(&["applications", "webhooks", "get", "app-as", "my-hook"]);
    assert_eq!(got["join_accept"]["path"], "/join", "{got}");
    let out = cli.run(&[
        "applications",
        "webhooks",
        "set",
        "app-as",
        "bad-hook",
        "--base-url",
        "not a url",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("base_url"), "{}", stderr(&out));
    cli.ok(&["applications", "webhooks", "delete", "app-as", "my-hook"]);
    let list = cli.json(&["applications", "webhooks", "list", "app-as"]);
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
}
