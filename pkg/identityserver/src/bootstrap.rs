//! The first start on an empty store: user `admin` and an admin API key, written to
//! `<data-dir>/bootstrap.txt` (mode 0600).

use std::io::Write;
use std::path::{Path, PathBuf};

use tern_api::v3;
use tern_store::{EntityRef, RegistryStore};
use tonic::Code;
use tracing::info;

use crate::core::Core;
use crate::secrets;

/// The file name in the data directory.
pub const BOOTSTRAP_FILE: &str = "bootstrap.txt";

/// The bootstrap user's ID.
pub const ADMIN_USER: &str = "admin";

/// Creates the admin user and key when the store has no user yet. Several processes may
/// race on one store: the unique user ID lets exactly one of them win, the others return
/// `None`. Returns the path of the written file.
pub(crate) async fn bootstrap(core: &Core, data_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    if !core.config.bootstrap {
        return Ok(None);
    }
    if !core.store.list_users(None, 1).await?.items.is_empty() {
        return Ok(None);
    }
    let password = secrets::random_password();
    let user = v3::User {
        ids: Some(v3::UserIdentifiers {
            user_id: ADMIN_USER.to_owned(),
            ..Default::default()
        }),
        name: "Administrator".to_owned(),
        admin: true,
        password: password.clone(),
        ..Default::default()
    };
    match crate::admin::create_user_record(core, user).await {
        Ok(_) => {}
        Err(s) if s.code() == Code::AlreadyExists => return Ok(None),
        Err(s) => anyhow::bail!("creating the bootstrap user: {}", s.message()),
    }
    let (key, token) = crate::admin::new_api_key(
        core,
        &EntityRef::User(ADMIN_USER.to_owned()),
        "bootstrap admin key",
        &[v3::Right::All as i32],
        None,
    )
    .await
    .map_err(|s| anyhow::anyhow!("creating the bootstrap API key: {}", s.message()))?;
    let path = data_dir.join(BOOTSTRAP_FILE);
    let text = format!(
        "# Tern bootstrap credentials, written once at the first start on an empty store.\n\
         # Keep them somewhere safe, then delete this file.\n\
         user-id = \"{ADMIN_USER}\"\n\
         password = \"{password}\"\n\
         api-key-id = \"{}\"\n\
         api-key = \"{token}\"\n",
        key.id
    );
    write_private(&path, &text)?;
    info!(path = %path.display(), "bootstrap: created user `admin` and an admin API key; the credentials are in this file");
    Ok(Some(path))
}

/// Writes `text` to a file only the owner can read.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    // An existing file keeps its mode on open: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}
