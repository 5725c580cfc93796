//! The `tern` command line as a user meets it: usage errors, `config`, `version`, bad config.

mod common;

use common::{run, temp_dir};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn unknown_role_is_a_usage_error_listing_valid_roles() {
    let dir = temp_dir("unknown-role");
    let out = run(&dir, &["start", "gs", "xx"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("'xx'"), "{err}");
    assert!(err.contains("is, gs, ns, js, as, all"), "{err}");
    assert!(
        !dir.join("data").exists(),
        "nothing is created on a usage error"
    );
}

#[test]
fn version_prints_the_version() {
    let out = run(&temp_dir("version"), &["version"], &[]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("tern {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn config_prints_valid_toml_with_secrets_masked() {
    let dir = temp_dir("config-mask");
    let out = run(
        &dir,
        &["config", "--data-dir", "/srv/tern"],
        &[
            ("TERN_CLUSTER__KEYS", r#"["top-secret-1","top-secret-2"]"#),
            ("TERN_HTTP__LISTEN", "127.0.0.1:9999"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("top-secret"), "{stdout}");
    let parsed: toml::Table = toml::from_str(&stdout).unwrap();
    assert_eq!(
        parsed["cluster"]["keys"],
        toml::Value::Array(vec!["********".into(), "********".into()])
    );
    assert_eq!(parsed["http"]["listen"].as_str(), Some("127.0.0.1:9999"));
    assert_eq!(parsed["data-dir"].as_str(), Some("/srv/tern"));
    assert_eq!(parsed["grpc"]["listen"].as_str(), Some("0.0.0.0:1884"));
    assert_eq!(parsed["shutdown"]["timeout"].as_str(), Some("10s"));
}

#[test]
fn config_reads_the_default_file_then_env_then_flags() {
    let dir = temp_dir("layers");
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(
        dir.join("config/tern.toml"),
        "data-dir = \"/from/file\"\n[log]\nlevel = \"debug\"\nformat = \"json\"\n",
    )
    .unwrap();
    let out = run(
        &dir,
        &["config"],
        &[("TERN_LOG__LEVEL", "warn"), ("TERN_DATA_DIR", "/from/env")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let parsed: toml::Table = toml::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(parsed["log"]["format"].as_str(), Some("json"));
    assert_eq!(parsed["log"]["level"].as_str(), Some("warn"));
    assert_eq!(parsed["data-dir"].as_str(), Some("/from/env"));

    let out = run(
        &dir,
        &["config", "--data-dir", "/from/flag"],
        &[("TERN_DATA_DIR", "/from/env")],
    );
    let parsed: toml::Table = toml::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(parsed["data-dir"].as_str(), Some("/from/flag"));
}

#[test]
fn the_shipped_config_file_loads() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/tern.toml");
    let out = run(&temp_dir("shipped"), &["config", "--config", file], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn bad_env_value_fails_start_naming_key_value_and_reason() {
    let dir = temp_dir("bad-env");
    let out = run(
        &dir,
        &["start", "gs"],
        &[("TERN_SHUTDOWN__TIMEOUT", "soonish")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("shutdown.timeout"), "{err}");
    assert!(err.contains("\"soonish\""), "{err}");
    assert!(err.contains("TERN_SHUTDOWN__TIMEOUT"), "{err}");
    assert!(err.contains("expected a duration"), "{err}");
    assert!(
        !dir.join("data").exists(),
        "nothing is created when the config is bad"
    );
}

#[test]
fn bad_file_value_and_unknown_key_fail_naming_the_key_and_file() {
    let dir = temp_dir("bad-file");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[http]\nlisten = \"localhost\"\n").unwrap();
    let out = run(&dir, &["start", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("http.listen") && err.contains("\"localhost\""),
        "{err}"
    );
    assert!(err.contains("bad.toml"), "{err}");

    std::fs::write(&file, "[grpc]\nlisten = \"0.0.0.0:1884\"\nport = 1\n").unwrap();
    let out = run(&dir, &["config", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("grpc.port") && err.contains("unknown field"),
        "{err}"
    );
}

#[test]
fn a_missing_config_file_is_an_error() {
    let dir = temp_dir("missing");
    let out = run(&dir, &["config", "--config", "nope.toml"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("nope.toml"));
}

#[test]
fn an_unknown_env_key_is_an_error() {
    let out = run(
        &temp_dir("env-key"),
        &["config"],
        &[("TERN_HTTP__PORT", "1")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("http.port") && err.contains("TERN_HTTP__PORT"),
        "{err}"
    );
}

#[test]
fn migrate_creates_the_embedded_schema_once() {
    let dir = temp_dir("migrate");
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let first = run(&dir, &["migrate", "--data-dir", data], &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&first.stdout),
        "applied to the embedded store: 0001_kv\n"
    );
    assert!(dir.join("data/tern.db").is_file());
    let again = run(&dir, &["migrate", "--data-dir", data], &[]);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        "the embedded store schema is up to date\n"
    );
}

#[test]
fn migrate_reports_an_unreachable_postgres_with_the_key() {
    let dir = temp_dir("migrate-pg");
    let out = run(
        &dir,
        &["migrate"],
        &[
            ("TERN_STORE__BACKEND", "postgres"),
            (
                "TERN_STORE__POSTGRES__URL",
                "postgres://tern:secret@127.0.0.1:1/tern",
            ),
            ("TERN_STORE__POSTGRES__CONNECT_TIMEOUT", "1s"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("secret"), "the password leaks: {stderr}");
}
