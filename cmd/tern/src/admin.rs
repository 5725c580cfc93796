//! `tern admin ...`: offline administration of the Identity Server's registry, directly on
//! the configured store.

use std::time::SystemTime;

use anyhow::Context;
use tern_identityserver::Admin;
use tern_store::Store;

use crate::cli::AdminCommand;
use crate::config::Config;

/// Runs one admin command against the configured store, then closes it.
pub async fn run(config: &Config, command: &AdminCommand) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("data directory {}", config.data_dir.display()))?;
    let store = Store::open(&config.store, &config.data_dir)
        .await
        .with_context(|| format!("opening the {} store", config.store.backend))?;
    let admin = Admin::new(store.clone(), config.identity_server.clone());
    let result = execute(&admin, command).await;
    store.close().await.context("closing the store")?;
    result
}

async fn execute(admin: &Admin, command: &AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::CreateUser {
            user_id,
            password,
            email,
            admin: is_admin,
        } => {
            let generated = password.is_none();
            let password = admin
                .create_user(user_id, password.clone(), email, *is_admin)
                .await?;
            println!(
                "created user `{user_id}`{}",
                if *is_admin { " (administrator)" } else { "" }
            );
            if generated {
                println!("password: {password}");
            }
        }
        AdminCommand::CreateApiKey {
            entity,
            name,
            rights,
            expires_in,
        } => {
            let expires = expires_in.map(|d| SystemTime::now() + d);
            let (id, token) = admin.create_api_key(entity, name, rights, expires).await?;
            println!("created API key {id} of {entity}; it is shown only now:");
            println!("{token}");
        }
        AdminCommand::SetPassword { user_id, password } => {
            let generated = password.is_none();
            let password = password
                .clone()
                .unwrap_or_else(tern_identityserver::secrets::random_password);
            admin.set_password(user_id, &password).await?;
            println!("password of user `{user_id}` set");
            if generated {
                println!("password: {password}");
            }
        }
    }
    Ok(())
}
