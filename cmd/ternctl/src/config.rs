//! The CLI's stored configuration (`ternctl login`) and the precedence of its sources.
//!
//! The file is `$XDG_CONFIG_HOME/ternctl/config.toml`, or `~/.config/ternctl/config.toml`
//! when `XDG_CONFIG_HOME` is unset; it holds secrets, so it is written with mode 0600.
//! Precedence, highest first: command-line flag, environment (`TERN_SERVER`,
//! `TERN_API_KEY`), the file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Environment variable that overrides the server address.
pub const ENV_SERVER: &str = "TERN_SERVER";
/// Environment variable that overrides the stored credentials with an API key.
pub const ENV_API_KEY: &str = "TERN_API_KEY";

/// What `ternctl login` stores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StoredConfig {
    /// The server's gRPC address, e.g. `http://localhost:1884`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// An API key (login with `--api-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The user that logged in with a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The short-lived access token of a password login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// When the access token expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_expires_at: Option<String>,
    /// The refresh token of a password login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// The credentials a call is made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// An API key (from `TERN_API_KEY` or the file).
    ApiKey(String),
    /// Tokens of a password login.
    Tokens {
        /// The access token.
        access_token: String,
        /// When it expires, if known.
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
        /// The refresh token, if any.
        refresh_token: Option<String>,
    },
    /// Nothing: only calls that need no credentials work.
    None,
}

/// The resolved settings of one invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The server's address.
    pub server: String,
    /// The credentials.
    pub credentials: Credentials,
}

/// The config file's path: `$XDG_CONFIG_HOME/ternctl/config.toml`, else
/// `$HOME/.config/ternctl/config.toml`.
pub fn config_path(xdg_config_home: Option<&str>, home: Option<&str>) -> Result<PathBuf> {
    // The XDG spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
    if let Some(xdg) = xdg_config_home.filter(|x| Path::new(x).is_absolute()) {
        return Ok(Path::new(xdg).join("ternctl").join("config.toml"));
    }
    match home.filter(|h| !h.is_empty()) {
        Some(home) => Ok(Path::new(home)
            .join(".config")
            .join("ternctl")
            .join("config.toml")),
        None => bail!("cannot find the config directory: neither XDG_CONFIG_HOME nor HOME is set"),
    }
}

/// The config file's path from the process environment.
pub fn default_path() -> Result<PathBuf> {
    config_path(
        std::env::var("XDG_CONFIG_HOME").ok().as_deref(),
        std::env::var("HOME").ok().as_deref(),
    )
}

/// Reads the file; a missing file is an empty configuration.
pub fn load(path: &Path) -> Result<StoredConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoredConfig::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the file with mode 0600 (it holds secrets), replacing it atomically.
pub fn save(path: &Path, config: &StoredConfig) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path
        .parent()
        .context("the config path has no parent directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let text = toml::to_string(config).context("encoding the config")?;
    let tmp = dir.join(".config.toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Combines flag, environment and file: the flag wins over the environment, which wins over
/// the file. An API key from the environment replaces stored tokens too.
pub fn resolve(
    flag_server: Option<&str>,
    env_server: Option<&str>,
    env_api_key: Option<&str>,
    file: &StoredConfig,
) -> Result<Resolved> {
    let server = flag_server
        .filter(|s| !s.is_empty())
        .or(env_server.filter(|s| !s.is_empty()))
        .or(file.server.as_deref())
        .context(
            "no server: run `ternctl login --server URL ...`, or set TERN_SERVER or --server",
        )?;
    let credentials = if let Some(key) = env_api_key.filter(|k| !k.is_empty()) {
        Credentials::ApiKey(key.to_owned())
    } else if let Some(key) = &file.api_key {
        Credentials::ApiKey(key.clone())
    } else if let Some(token) = &file.access_token {
        let expires_at = match &file.access_token_expires_at {
            Some(t) => Some(
                chrono::DateTime::parse_from_rfc3339(t)
                    .with_context(|| {
                        format!("config: access-token-expires-at {t:?} is not RFC 3339")
                    })?
                    .to_utc(),
            ),
            None => None,
        };
        Credentials::Tokens {
            access_token: token.clone(),
            expires_at,
            refresh_token: file.refresh_token.clone(),
        }
    } else {
        Credentials::None
    };
    Ok(Resolved {
        server: normalize_server(server)?,
        credentials,
    })
}

/// Adds `http://` to a bare `host:port`; refuses schemes other than http.
pub fn normalize_server(server: &str) -> Result<String> {
    let server = server.trim().trim_end_matches('/');
    if server.is_empty() {
        bail!("the server address is empty");
    }
    if let Some((scheme, _)) = server.split_once("://") {
        match scheme {
            "http" => Ok(server.to_owned()),
            "https" => bail!(
                "server {server:?}: TLS (https) is not supported by this ternctl yet; use http:// behind a trusted network or a local TLS terminator"
            ),
            other => bail!("server {server:?}: unknown scheme {other:?}, expected http"),
        }
    } else {
        Ok(format!("http://{server}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> StoredConfig {
        StoredConfig {
            server: Some("http://file:1884".into()),
            api_key: Some("file-key".into()),
            ..Default::default()
        }
    }

    #[test]
    fn path_prefers_absolute_xdg_config_home() {
        assert_eq!(
            config_path(Some("/x/cfg"), Some("/home/u")).unwrap(),
            PathBuf::from("/x/cfg/ternctl/config.toml")
        );
        // Relative XDG_CONFIG_HOME is ignored, as the XDG spec says.
        assert_eq!(
            config_path(Some("rel"), Some("/home/u")).unwrap(),
            PathBuf::from("/home/u/.config/ternctl/config.toml")
        );
        assert_eq!(
            config_path(None, Some("/home/u")).unwrap(),
            PathBuf::from("/home/u/.config/ternctl/config.toml")
        );
        assert!(config_path(None, None).is_err());
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let r = resolve(Some("flag:1"), Some("env:2"), None, &file()).unwrap();
        assert_eq!(r.server, "http://flag:1");
        let r = resolve(None, Some("env:2"), None, &file()).unwrap();
        assert_eq!(r.server, "http://env:2");
        let r = resolve(None, None, None, &file()).unwrap();
        assert_eq!(r.server, "http://file:1884");
        assert_eq!(r.credentials, Credentials::ApiKey("file-key".into()));
    }

    #[test]
    fn env_api_key_overrides_file_key_and_tokens() {
        let r = resolve(None, None, Some("env-key"), &file()).unwrap();
        assert_eq!(r.credentials, Credentials::ApiKey("env-key".into()));
        let tokens = StoredConfig {
            server: Some("s:1".into()),
            access_token: Some("jwt".into()),
            refresh_token: Some("rt".into()),
            access_token_expires_at: Some("2030-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        let r = resolve(None, None, Some("env-key"), &tokens).unwrap();
        assert_eq!(r.credentials, Credentials::ApiKey("env-key".into()));
        // Empty variables count as unset.
        let r = resolve(None, Some(""), Some(""), &tokens).unwrap();
        assert_eq!(r.server, "http://s:1");
        match r.credentials {
            Credentials::Tokens {
                access_token,
                expires_at,
                refresh_token,
            } => {
                assert_eq!(access_token, "jwt");
                assert_eq!(refresh_token.as_deref(), Some("rt"));
                assert_eq!(
                    expires_at.unwrap().to_rfc3339(),
                    "2030-01-01T00:00:00+00:00"
                );
            }
            other => panic!("expected tokens, got {other:?}"),
        }
    }

    #[test]
    fn missing_server_says_what_to_do() {
        let err = resolve(None, None, None, &StoredConfig::default()).unwrap_err();
        assert!(err.to_string().contains("ternctl login --server"), "{err}");
    }

    #[test]
    fn server_normalization() {
        assert_eq!(
            normalize_server("localhost:1884").unwrap(),
            "http://localhost:1884"
        );
        assert_eq!(normalize_server("http://h:1/").unwrap(), "http://h:1");
        assert!(
            normalize_server("https://h:1")
                .unwrap_err()
                .to_string()
                .contains("TLS")
        );
        assert!(normalize_server("ftp://h").is_err());
        assert!(normalize_server(" ").is_err());
    }

    #[test]
    fn save_is_private_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("ternctl").join("config.toml");
        let cfg = StoredConfig {
            server: Some("http://a:1".into()),
            username: Some("admin".into()),
            access_token: Some("t".into()),
            refresh_token: Some("r".into()),
            ..Default::default()
        };
        save(&path, &cfg).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap(), cfg);
        // Saving again replaces the file.
        save(&path, &StoredConfig::default()).unwrap();
        assert_eq!(load(&path).unwrap(), StoredConfig::default());
        assert_eq!(
            load(&dir.path().join("none.toml")).unwrap(),
            StoredConfig::default()
        );
    }
}
