//! `ternctl users|organizations|applications|gateways ...`: the Identity Server's registries,
//! their API keys and collaborators.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lorawan::Eui64;
use tern_api::FieldMask;
use tern_api::v3::{
    ApiKey, ApiKeyRequest, Application, ApplicationIdentifiers, Collaborator, CreateApiKeyRequest,
    CreateApplicationRequest, CreateGatewayRequest, CreateOrganizationRequest, CreateUserRequest,
    DeleteApplicationRequest, EntityIdentifiers, Gateway, GatewayAntenna, GatewayIdentifiers,
    GetApplicationRequest, GetGatewayRequest, GetOrganizationRequest, GetUserRequest,
    ListApplicationsRequest, ListEntityRequest, ListGatewaysRequest, ListOrganizationsRequest,
    ListUsersRequest, Location, Organization, OrganizationIdentifiers,
    OrganizationOrUserIdentifiers, SetCollaboratorRequest, UpdateApiKeyRequest,
    UpdateApplicationRequest, UpdateGatewayRequest, UpdateOrganizationRequest,
    UpdateUserPasswordRequest, UpdateUserRequest, User, UserIdentifiers, entity_identifiers,
    organization_or_user_identifiers,
};

use crate::Ctx;
use crate::client::RpcResult;
use crate::output::{self, OutputFormat};
use crate::rights::{self, EntityKind};

/// Name, description and attributes, which every entity has.
#[derive(Args, Clone, Debug, Default)]
pub struct CommonFields {
    /// Human-readable name.
    #[arg(long)]
    pub name: Option<String>,
    /// Description.
    #[arg(long)]
    pub description: Option<String>,
    /// Attribute `key=value`; repeat for more. On update, `key=` removes the attribute.
    #[arg(long = "attribute", value_name = "KEY=VALUE", value_parser = parse_attribute)]
    pub attributes: Vec<(String, String)>,
}

/// Parses `key=value`.
pub fn parse_attribute(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("attribute {s:?} is not key=value")),
    }
}

impl CommonFields {
    /// Writes the given fields into a message's fields and names them in `mask`. Attributes
    /// are merged into `attrs` (an empty value removes the key).
    fn apply(
        &self,
        name: &mut String,
        description: &mut String,
        attrs: &mut HashMap<String, String>,
        mask: &mut Vec<String>,
    ) {
        if let Some(n) = &self.name {
            *name = n.clone();
            mask.push("name".into());
        }
        if let Some(d) = &self.description {
            *description = d.clone();
            mask.push("description".into());
        }
        if !self.attributes.is_empty() {
            for (k, v) in &self.attributes {
                if v.is_empty() {
                    attrs.remove(k);
                } else {
                    attrs.insert(k.clone(), v.clone());
                }
            }
            mask.push("attributes".into());
        }
    }
}

/// The owner of a new application or gateway, or the filter of a list.
#[derive(Args, Clone, Debug, Default)]
#[group(multiple = false)]
pub struct OwnerArgs {
    /// A user (default: the caller's user).
    #[arg(long)]
    pub user_id: Option<String>,
    /// An organization.
    #[arg(long)]
    pub organization_id: Option<String>,
}

impl OwnerArgs {
    fn ids(&self) -> Option<OrganizationOrUserIdentifiers> {
        let ids = if let Some(u) = &self.user_id {
            organization_or_user_identifiers::Ids::UserIds(UserIdentifiers {
                user_id: u.clone(),
                ..Default::default()
            })
        } else {
            organization_or_user_identifiers::Ids::OrganizationIds(OrganizationIdentifiers {
                organization_id: self.organization_id.clone()?,
            })
        };
        Some(OrganizationOrUserIdentifiers { ids: Some(ids) })
    }
}

/// Paging of lists: without `--limit` or `--page`, every page is fetched.
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct ListArgs {
    /// Page size (one page only).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Page number, from 1 (one page only).
    #[arg(long)]
    pub page: Option<u32>,
}

/// Page size used when fetching every page.
const ALL_PAGE_SIZE: u32 = 500;

/// Fetches one page or all pages: `fetch(limit, page)` returns the items and the total.
pub async fn collect_pages<T, F, Fut>(args: ListArgs, mut fetch: F) -> Result<Vec<T>>
where
    F: FnMut(u32, u32) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, u64)>>,
{
    if args.limit.is_some() || args.page.is_some() {
        return Ok(fetch(args.limit.unwrap_or(0), args.page.unwrap_or(1))
            .await?
            .0);
    }
    let mut all = Vec::new();
    for page in 1.. {
        let (items, total) = fetch(ALL_PAGE_SIZE, page).await?;
        let n = items.len();
        all.extend(items);
        // Stop on an empty page too, so a server that ignores paging cannot loop us forever.
        if n == 0 || all.len() as u64 >= total {
            break;
        }
    }
    Ok(all)
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask::new(paths.iter().copied()))
}

fn require_mask(paths: Vec<String>, what: &str) -> Result<Option<FieldMask>> {
    if paths.is_empty() {
        bail!("nothing to update: give at least one field flag for the {what} (see --help)");
    }
    Ok(Some(FieldMask::new(paths)))
}

/// `user` IDs as a message.
fn user_ids(id: &str) -> UserIdentifiers {
    UserIdentifiers {
        user_id: id.to_owned(),
        ..Default::default()
    }
}

/// The identifiers of an entity of `kind`.
pub fn entity_ids(kind: EntityKind, id: &str) -> EntityIdentifiers {
    use entity_identifiers::Ids;
    let ids = match kind {
        EntityKind::User => Ids::UserIds(user_ids(id)),
        EntityKind::Organization => Ids::OrganizationIds(OrganizationIdentifiers {
            organization_id: id.to_owned(),
        }),
        EntityKind::Application => Ids::ApplicationIds(ApplicationIdentifiers {
            application_id: id.to_owned(),
        }),
        EntityKind::Gateway => Ids::GatewayIds(GatewayIdentifiers {
            gateway_id: id.to_owned(),
            eui: Vec::new(),
        }),
    };
    EntityIdentifiers { ids: Some(ids) }
}

/// Reads a password: one line from stdin with `--password-stdin`, else asked for on the
/// terminal without echo.
pub fn read_password(from_stdin: bool, prompt: &str) -> Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let tty = !from_stdin && stdin.is_terminal();
    if !from_stdin && !tty {
        bail!("no terminal to ask for the password: pass it on stdin with --password-stdin");
    }
    if tty {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    let _echo = tty.then(EchoOff::new);
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the password")?;
    if tty {
        eprintln!();
    }
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

/// Turns terminal echo off on stdin while alive.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> Self {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a zeroed, then kernel-filled, termios.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return Self(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            Self(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the attributes read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
}

/// Parses an expiry: RFC 3339 (`2027-01-01T00:00:00Z`) or a duration from now (`30d`).
pub fn parse_expiry(s: &str) -> Result<tern_api::Timestamp, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(std::time::SystemTime::from(t).into());
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok((std::time::SystemTime::now() + d).into()),
        Err(_) => Err(format!(
            "{s:?} is neither an RFC 3339 time (2027-01-01T00:00:00Z) nor a duration (30d, 12h)"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// API keys and collaborators, shared by every kind.

/// `... api-keys` subcommands.
#[derive(Subcommand, Debug)]
pub enum ApiKeysCommand {
    /// Create an API key; its secret is printed once.
    Create {
        /// The entity's ID.
        #[arg(value_name = "ID")]
        entity_id: String,
        /// The key's name.
        #[arg(long)]
        name: String,
        /// Rights, comma-separated: relative to the entity (traffic:read) or full
        /// (application:traffic:read); `all` is every right of the entity.
        #[arg(long, required = true, value_delimiter = ',')]
        rights: Vec<String>,
        /// Expiry: RFC 3339 time or duration from now (30d); never when unset.
        #[arg(long, value_parser = parse_expiry)]
        expires_at: Option<tern_api::Timestamp>,
    },
    /// List API keys (without secrets).
    List {
        /// The entity's ID.
        #[arg(value_name = "ID")]
        entity_id: String,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show one API key (without secret).
    Get {
        /// The entity's ID.
        #[arg(value_name = "ID")]
        entity_id: String,
        /// The key's ID.
        key_id: String,
    },
    /// Change a key's name, rights or expiry.
    Update {
        /// The entity's ID.
        #[arg(value_name = "ID")]
        entity_id: String,
        /// The key's ID.
        key_id: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New rights (replace the old ones).
        #[arg(long, value_delimiter = ',')]
        rights: Vec<String>,
        /// New expiry.
        #[arg(long, value_parser = parse_expiry)]
        expires_at: Option<tern_api::Timestamp>,
    },
    /// Revoke an API key.
    Delete {
        /// The entity's ID.
        #[arg(value_name = "ID")]
        entity_id: String,
        /// The key's ID.
        key_id: String,
    },
}

const API_KEY_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("RIGHTS", "rights"),
    ("EXPIRES", "expires_at"),
    ("CREATED", "created_at"),
];

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(crate::UsageError(msg))
}

/// Runs an `api-keys` subcommand for an entity of `kind`.
pub async fn api_keys(ctx: &Ctx, kind: EntityKind, cmd: ApiKeysCommand) -> Result<()> {
    let mut access = ctx.api.access();
    match cmd {
        ApiKeysCommand::Create {
            entity_id,
            name,
            rights,
            expires_at,
        } => {
            let rights = rights::parse_list(kind, &rights).map_err(usage)?;
            let key = access
                .create_api_key(CreateApiKeyRequest {
                    entity_ids: Some(entity_ids(kind, &entity_id)),
                    name,
                    rights: rights.iter().map(|r| *r as i32).collect(),
                    expires_at,
                })
                .await
                .ctx(|| format!("create API key of {} {entity_id}", kind.prefix()))?;
            output::print_one(ctx.out, &key);
            if ctx.out == OutputFormat::Table {
                eprintln!("The secret (`key`) is shown only now: store it.");
            }
        }
        ApiKeysCommand::List { entity_id, list } => {
            let ids = entity_ids(kind, &entity_id);
            let keys = collect_pages(list, |limit, page| {
                let mut access = access.clone();
                let ids = ids.clone();
                let entity_id = entity_id.clone();
                async move {
                    let r = access
                        .list_api_keys(ListEntityRequest {
                            entity_ids: Some(ids),
                            limit,
                            page,
                        })
                        .await
                        .ctx(|| format!("list API keys of {} {entity_id}", kind.prefix()))?;
                    Ok((r.api_keys, r.total))
                }
            })
            .await?;
            output::print_list(ctx.out, &keys, API_KEY_COLUMNS);
        }
        ApiKeysCommand::Get { entity_id, key_id } => {
            let key = access
                .get_api_key(ApiKeyRequest {
                    entity_ids: Some(entity_ids(kind, &entity_id)),
                    key_id: key_id.clone(),
                })
                .await
                .ctx(|| format!("get API key {key_id} of {} {entity_id}", kind.prefix()))?;
            output::print_one(ctx.out, &key);
        }
        ApiKeysCommand::Update {
            entity_id,
            key_id,
            name,
            rights,
            expires_at,
        } => {
            let mut key = ApiKey {
                id: key_id.clone(),
                ..Default::default()
            };
            let mut paths = Vec::new();
            if let Some(n) = name {
                key.name = n;
                paths.push("name".to_owned());
            }
            if !rights.is_empty() {
                key.rights = rights::parse_list(kind, &rights)
                    .map_err(usage)?
                    .iter()
                    .map(|r| *r as i32)
                    .collect();
                paths.push("rights".to_owned());
            }
            if let Some(t) = expires_at {
                key.expires_at = Some(t);
                paths.push("expires_at".to_owned());
            }
            let key = access
                .update_api_key(UpdateApiKeyRequest {
                    entity_ids: Some(entity_ids(kind, &entity_id)),
                    api_key: Some(key),
                    field_mask: require_mask(paths, "API key")?,
                })
                .await
                .ctx(|| format!("update API key {key_id} of {} {entity_id}", kind.prefix()))?;
            output::print_one(ctx.out, &key);
        }
        ApiKeysCommand::Delete { entity_id, key_id } => {
            access
                .delete_api_key(ApiKeyRequest {
                    entity_ids: Some(entity_ids(kind, &entity_id)),
                    key_id: key_id.clone(),
                })
                .await
                .ctx(|| format!("delete API key {key_id} of {} {entity_id}", kind.prefix()))?;
        }
    }
    Ok(())
}

/// Who a collaborator is.
#[derive(Args, Clone, Debug)]
#[group(required = true, multiple = false)]
pub struct CollaboratorWho {
    /// A user.
    #[arg(long)]
    pub user_id: Option<String>,
    /// An organization.
    #[arg(long)]
    pub organization_id: Option<String>,
}

/// `... collaborators` subcommands (members, for organizations).
#[derive(Subcommand, Debug)]
pub enum CollaboratorsCommand {
    /// Give a user or organization these rights (replacing its old ones).
    Set {
        /// The entity's ID.
        #[arg(value_name = "ID")]
        entity_id: String,
        #[command(flatten)]
        who: CollaboratorWho,
        /// Rights, comma-separated, as for API keys.
        #[arg(long, required = true, value_delimiter = ',')]
        rights: Vec<String>,
    },
    /// List collaborators and their rights.
    List {
        /// The entity's ID.
        #[arg(value_name = "ID")]
        entity_id: String,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Remove a collaborator.
    Delete {
        /// The entity's ID.
        #[arg(value_name = "ID")]
        entity_id: String,
        #[command(flatten)]
        who: CollaboratorWho,
    },
}

impl CollaboratorWho {
    fn ids(&self) -> OrganizationOrUserIdentifiers {
        OwnerArgs {
            user_id: self.user_id.clone(),
            organization_id: self.organization_id.clone(),
        }
        .ids()
        .unwrap_or_default()
    }
}

/// Runs a `collaborators` subcommand for an entity of `kind`.
pub async fn collaborators(ctx: &Ctx, kind: EntityKind, cmd: CollaboratorsCommand) -> Result<()> {
    let mut access = ctx.api.access();
    let (entity_id, who, rights) = match cmd {
        CollaboratorsCommand::List { entity_id, list } => {
            let ids = entity_ids(kind, &entity_id);
            let items = collect_pages(list, |limit, page| {
                let mut access = access.clone();
                let ids = ids.clone();
                let entity_id = entity_id.clone();
                async move {
                    let r = access
                        .list_collaborators(ListEntityRequest {
                            entity_ids: Some(ids),
                            limit,
                            page,
                        })
                        .await
                        .ctx(|| format!("list collaborators of {} {entity_id}", kind.prefix()))?;
                    Ok((r.collaborators, r.total))
                }
            })
            .await?;
            output::print_list(
                ctx.out,
                &items,
                &[
                    ("USER", "ids.user_ids.user_id"),
                    ("ORGANIZATION", "ids.organization_ids.organization_id"),
                    ("RIGHTS", "rights"),
                ],
            );
            return Ok(());
        }
        CollaboratorsCommand::Set {
            entity_id,
            who,
            rights,
        } => {
            let rights = rights::parse_list(kind, &rights).map_err(usage)?;
            (entity_id, who, rights)
        }
        CollaboratorsCommand::Delete { entity_id, who } => (entity_id, who, Vec::new()),
    };
    access
        .set_collaborator(SetCollaboratorRequest {
            entity_ids: Some(entity_ids(kind, &entity_id)),
            collaborator: Some(Collaborator {
                ids: Some(who.ids()),
                rights: rights.iter().map(|r| *r as i32).collect(),
            }),
        })
        .await
        .ctx(|| format!("set collaborator of {} {entity_id}", kind.prefix()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Users.

/// `ternctl users` subcommands.
#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Create a user (admins only); the password is asked for, or read with --password-stdin.
    Create {
        /// The user ID.
        user_id: String,
        #[command(flatten)]
        fields: UserFields,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Show a user.
    Get {
        /// The user ID.
        user_id: String,
    },
    /// List users (admins only).
    List(ListArgs),
    /// Change a user's fields.
    Update {
        /// The user ID.
        user_id: String,
        #[command(flatten)]
        fields: UserFields,
    },
    /// Change a user's password (admins need not give the old one).
    SetPassword {
        /// The user ID.
        user_id: String,
        /// Read the new password (and then the old one, if --old) from stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Also ask for the current password (needed when changing one's own as non-admin).
        #[arg(long)]
        old: bool,
        /// Also revoke every login of the user.
        #[arg(long)]
        revoke_all_tokens: bool,
    },
    /// Delete a user.
    Delete {
        /// The user ID.
        user_id: String,
    },
    /// The user's API keys.
    #[command(subcommand)]
    ApiKeys(ApiKeysCommand),
}

/// A user's writable fields.
#[derive(Args, Clone, Debug, Default)]
pub struct UserFields {
    #[command(flatten)]
    common: CommonFields,
    /// Primary e-mail address.
    #[arg(long)]
    email: Option<String>,
    /// Administrator (every right on every entity).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    admin: Option<bool>,
}

const USER_FIELDS: &[&str] = &[
    "ids",
    "created_at",
    "updated_at",
    "name",
    "description",
    "attributes",
    "primary_email_address",
    "admin",
    "password_updated_at",
];

impl UserFields {
    fn apply(&self, u: &mut User, mask: &mut Vec<String>) {
        self.common
            .apply(&mut u.name, &mut u.description, &mut u.attributes, mask);
        if let Some(e) = &self.email {
            u.primary_email_address = e.clone();
            mask.push("primary_email_address".into());
        }
        if let Some(a) = self.admin {
            u.admin = a;
            mask.push("admin".into());
        }
    }
}

/// Runs a `users` subcommand.
pub async fn users(ctx: &Ctx, cmd: UsersCommand) -> Result<()> {
    let mut reg = ctx.api.users();
    match cmd {
        UsersCommand::Create {
            user_id,
            fields,
            password_stdin,
        } => {
            let mut user = User {
                ids: Some(user_ids(&user_id)),
                ..Default::default()
            };
            fields.apply(&mut user, &mut Vec::new());
            user.password = read_password(password_stdin, "Password: ")?;
            let user = reg
                .create(CreateUserRequest { user: Some(user) })
                .await
                .ctx(|| format!("create user {user_id}"))?;
            output::print_one(ctx.out, &user);
        }
        UsersCommand::Get { user_id } => {
            let user = reg
                .get(GetUserRequest {
                    user_ids: Some(user_ids(&user_id)),
                    field_mask: mask(USER_FIELDS),
                })
                .await
                .ctx(|| format!("get user {user_id}"))?;
            output::print_one(ctx.out, &user);
        }
        UsersCommand::List(list) => {
            let items = collect_pages(list, |limit, page| {
                let mut reg = reg.clone();
                async move {
                    let r = reg
                        .list(ListUsersRequest {
                            field_mask: mask(USER_FIELDS),
                            order: "user_id".into(),
                            limit,
                            page,
                        })
                        .await
                        .ctx(|| "list users".into())?;
                    Ok((r.users, r.total))
                }
            })
            .await?;
            output::print_list(
                ctx.out,
                &items,
                &[
                    ("USER ID", "ids.user_id"),
                    ("NAME", "name"),
                    ("EMAIL", "primary_email_address"),
                    ("ADMIN", "admin"),
                    ("CREATED", "created_at"),
                ],
            );
        }
        UsersCommand::Update { user_id, fields } => {
            let mut user = User {
                ids: Some(user_ids(&user_id)),
                ..Default::default()
            };
            if !fields.common.attributes.is_empty() {
                user.attributes = reg
                    .get(GetUserRequest {
                        user_ids: Some(user_ids(&user_id)),
                        field_mask: mask(&["attributes"]),
                    })
                    .await
                    .ctx(|| format!("get user {user_id}"))?
                    .attributes;
            }
            let mut paths = Vec::new();
            fields.apply(&mut user, &mut paths);
            let user = reg
                .update(UpdateUserRequest {
                    user: Some(user),
                    field_mask: require_mask(paths, "user")?,
                })
                .await
                .ctx(|| format!("update user {user_id}"))?;
            output::print_one(ctx.out, &user);
        }
        UsersCommand::SetPassword {
            user_id,
            password_stdin,
            old,
            revoke_all_tokens,
        } => {
            let new = read_password(password_stdin, "New password: ")?;
            let old = if old {
                read_password(password_stdin, "Current password: ")?
            } else {
                String::new()
            };
            reg.update_password(UpdateUserPasswordRequest {
                user_ids: Some(user_ids(&user_id)),
                new,
                old,
                revoke_all_tokens,
            })
            .await
            .ctx(|| format!("set the password of user {user_id}"))?;
        }
        UsersCommand::Delete { user_id } => {
            reg.delete(user_ids(&user_id))
                .await
                .ctx(|| format!("delete user {user_id}"))?;
        }
        UsersCommand::ApiKeys(cmd) => api_keys(ctx, EntityKind::User, cmd).await?,
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Organizations.

/// `ternctl organizations` subcommands.
#[derive(Subcommand, Debug)]
pub enum OrganizationsCommand {
    /// Create an organization.
    Create {
        /// The organization ID.
        organization_id: String,
        #[command(flatten)]
        fields: CommonFields,
        /// The first member, with all rights (default: the caller's user).
        #[arg(long)]
        user_id: Option<String>,
    },
    /// Show an organization.
    Get {
        /// The organization ID.
        organization_id: String,
    },
    /// List organizations.
    List {
        /// Only those this user is a member of.
        #[arg(long)]
        user_id: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Change an organization's fields.
    Update {
        /// The organization ID.
        organization_id: String,
        #[command(flatten)]
        fields: CommonFields,
    },
    /// Delete an organization (refused while it owns applications or gateways).
    Delete {
        /// The organization ID.
        organization_id: String,
    },
    /// The organization's members and their rights.
    #[command(subcommand, alias = "members")]
    Collaborators(CollaboratorsCommand),
    /// The organization's API keys.
    #[command(subcommand)]
    ApiKeys(ApiKeysCommand),
}

const ORG_FIELDS: &[&str] = &[
    "ids",
    "created_at",
    "updated_at",
    "name",
    "description",
    "attributes",
];

fn org_ids(id: &str) -> OrganizationIdentifiers {
    OrganizationIdentifiers {
        organization_id: id.to_owned(),
    }
}

/// Runs an `organizations` subcommand.
pub async fn organizations(ctx: &Ctx, cmd: OrganizationsCommand) -> Result<()> {
    let mut reg = ctx.api.organizations();
    match cmd {
        OrganizationsCommand::Create {
            organization_id,
            fields,
            user_id,
        } => {
            let mut org = Organization {
                ids: Some(org_ids(&organization_id)),
                ..Default::default()
            };
            fields.apply(
                &mut org.name,
                &mut org.description,
                &mut org.attributes,
                &mut Vec::new(),
            );
            let org = reg
                .create(CreateOrganizationRequest {
                    organization: Some(org),
                    owner: user_id.as_deref().map(user_ids),
                })
                .await
                .ctx(|| format!("create organization {organization_id}"))?;
            output::print_one(ctx.out, &org);
        }
        OrganizationsCommand::Get { organization_id } => {
            let org = reg
                .get(GetOrganizationRequest {
                    organization_ids: Some(org_ids(&organization_id)),
                    field_mask: mask(ORG_FIELDS),
                })
                .await
                .ctx(|| format!("get organization {organization_id}"))?;
            output::print_one(ctx.out, &org);
        }
        OrganizationsCommand::List { user_id, list } => {
            let items = collect_pages(list, |limit, page| {
                let mut reg = reg.clone();
                let member = user_id.as_deref().map(user_ids);
                async move {
                    let r = reg
                        .list(ListOrganizationsRequest {
                            member,
                            field_mask: mask(ORG_FIELDS),
                            order: "organization_id".into(),
                            limit,
                            page,
                        })
                        .await
                        .ctx(|| "list organizations".into())?;
                    Ok((r.organizations, r.total))
                }
            })
            .await?;
            output::print_list(
                ctx.out,
                &items,
                &[
                    ("ORGANIZATION ID", "ids.organization_id"),
                    ("NAME", "name"),
                    ("DESCRIPTION", "description"),
                    ("CREATED", "created_at"),
                ],
            );
        }
        OrganizationsCommand::Update {
            organization_id,
            fields,
        } => {
            let mut org = Organization {
                ids: Some(org_ids(&organization_id)),
                ..Default::default()
            };
            if !fields.attributes.is_empty() {
                org.attributes = reg
                    .get(GetOrganizationRequest {
                        organization_ids: Some(org_ids(&organization_id)),
                        field_mask: mask(&["attributes"]),
                    })
                    .await
                    .ctx(|| format!("get organization {organization_id}"))?
                    .attributes;
            }
            let mut paths = Vec::new();
            fields.apply(
                &mut org.name,
                &mut org.description,
                &mut org.attributes,
                &mut paths,
            );
            let org = reg
                .update(UpdateOrganizationRequest {
                    organization: Some(org),
                    field_mask: require_mask(paths, "organization")?,
                })
                .await
                .ctx(|| format!("update organization {organization_id}"))?;
            output::print_one(ctx.out, &org);
        }
        OrganizationsCommand::Delete { organization_id } => {
            reg.delete(org_ids(&organization_id))
                .await
                .ctx(|| format!("delete organization {organization_id}"))?;
        }
        OrganizationsCommand::Collaborators(cmd) => {
            collaborators(ctx, EntityKind::Organization, cmd).await?;
        }
        OrganizationsCommand::ApiKeys(cmd) => {
            api_keys(ctx, EntityKind::Organization, cmd).await?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Applications.

/// `ternctl applications` subcommands.
#[derive(Subcommand, Debug)]
pub enum ApplicationsCommand {
    /// Create an application.
    Create {
        /// The application ID.
        application_id: String,
        #[command(flatten)]
        fields: ApplicationFields,
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Show an application.
    Get {
        /// The application ID.
        application_id: String,
    },
    /// List applications.
    List {
        #[command(flatten)]
        owner: OwnerArgs,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Change an application's fields.
    Update {
        /// The application ID.
        application_id: String,
        #[command(flatten)]
        fields: ApplicationFields,
    },
    /// Delete an application (refused while it has devices, unless --purge).
    Delete {
        /// The application ID.
        application_id: String,
        /// Also delete its devices (and their keys and sessions in the JS, NS and AS).
        #[arg(long)]
        purge: bool,
    },
    /// The application's collaborators and their rights.
    #[command(subcommand)]
    Collaborators(CollaboratorsCommand),
    /// The application's API keys.
    #[command(subcommand)]
    ApiKeys(ApiKeysCommand),
    /// The application's default payload formatters (Application Server).
    #[command(subcommand)]
    Formatters(crate::appserver::FormattersCommand),
    /// The application's webhooks (Application Server).
    #[command(subcommand)]
    Webhooks(crate::appserver::WebhooksCommand),
}

/// An application's writable fields.
#[derive(Args, Clone, Debug, Default)]
pub struct ApplicationFields {
    #[command(flatten)]
    common: CommonFields,
    /// Default Network Server address of new devices (host:port).
    #[arg(long)]
    network_server_address: Option<String>,
    /// Default Application Server address of new devices.
    #[arg(long)]
    application_server_address: Option<String>,
    /// Default Join Server address of new devices.
    #[arg(long)]
    join_server_address: Option<String>,
}

impl ApplicationFields {
    fn apply(&self, a: &mut Application, mask: &mut Vec<String>) {
        self.common
            .apply(&mut a.name, &mut a.description, &mut a.attributes, mask);
        for (v, field, path) in [
            (
                &self.network_server_address,
                &mut a.network_server_address,
                "network_server_address",
            ),
            (
                &self.application_server_address,
                &mut a.application_server_address,
                "application_server_address",
            ),
            (
                &self.join_server_address,
                &mut a.join_server_address,
                "join_server_address",
            ),
        ] {
            if let Some(v) = v {
                *field = v.clone();
                mask.push(path.into());
            }
        }
    }
}

const APP_FIELDS: &[&str] = &[
    "ids",
    "created_at",
    "updated_at",
    "name",
    "description",
    "attributes",
    "network_server_address",
    "application_server_address",
    "join_server_address",
];

fn app_ids(id: &str) -> ApplicationIdentifiers {
    ApplicationIdentifiers {
        application_id: id.to_owned(),
    }
}

/// Runs an `applications` subcommand.
pub async fn applications(ctx: &Ctx, cmd: ApplicationsCommand) -> Result<()> {
    let mut reg = ctx.api.applications();
    match cmd {
        ApplicationsCommand::Create {
            application_id,
            fields,
            owner,
        } => {
            let mut app = Application {
                ids: Some(app_ids(&application_id)),
                ..Default::default()
            };
            fields.apply(&mut app, &mut Vec::new());
            let app = reg
                .create(CreateApplicationRequest {
                    application: Some(app),
                    collaborator: owner.ids(),
                })
                .await
                .ctx(|| format!("create application {application_id}"))?;
            output::print_one(ctx.out, &app);
        }
        ApplicationsCommand::Get { application_id } => {
            let mut fields = APP_FIELDS.to_vec();
            fields.push("end_device_count");
            let app = reg
                .get(GetApplicationRequest {
                    application_ids: Some(app_ids(&application_id)),
                    field_mask: mask(&fields),
                })
                .await
                .ctx(|| format!("get application {application_id}"))?;
            output::print_one(ctx.out, &app);
        }
        ApplicationsCommand::List { owner, list } => {
            let items = collect_pages(list, |limit, page| {
                let mut reg = reg.clone();
                let collaborator = owner.ids();
                async move {
                    let r = reg
                        .list(ListApplicationsRequest {
                            collaborator,
                            field_mask: mask(APP_FIELDS),
                            order: "application_id".into(),
                            limit,
                            page,
                        })
                        .await
                        .ctx(|| "list applications".into())?;
                    Ok((r.applications, r.total))
                }
            })
            .await?;
            output::print_list(
                ctx.out,
                &items,
                &[
                    ("APPLICATION ID", "ids.application_id"),
                    ("NAME", "name"),
                    ("DESCRIPTION", "description"),
                    ("CREATED", "created_at"),
                ],
            );
        }
        ApplicationsCommand::Update {
            application_id,
            fields,
        } => {
            let mut app = Application {
                ids: Some(app_ids(&application_id)),
                ..Default::default()
            };
            if !fields.common.attributes.is_empty() {
                app.attributes = reg
                    .get(GetApplicationRequest {
                        application_ids: Some(app_ids(&application_id)),
                        field_mask: mask(&["attributes"]),
                    })
                    .await
                    .ctx(|| format!("get application {application_id}"))?
                    .attributes;
            }
            let mut paths = Vec::new();
            fields.apply(&mut app, &mut paths);
            let app = reg
                .update(UpdateApplicationRequest {
                    application: Some(app),
                    field_mask: require_mask(paths, "application")?,
                })
                .await
                .ctx(|| format!("update application {application_id}"))?;
            output::print_one(ctx.out, &app);
        }
        ApplicationsCommand::Delete {
            application_id,
            purge,
        } => {
            if purge {
                crate::devices::purge_application_devices(ctx, &application_id).await?;
            }
            reg.delete(DeleteApplicationRequest {
                application_ids: Some(app_ids(&application_id)),
                purge,
            })
            .await
            .ctx(|| format!("delete application {application_id}"))?;
        }
        ApplicationsCommand::Collaborators(cmd) => {
            collaborators(ctx, EntityKind::Application, cmd).await?;
        }
        ApplicationsCommand::ApiKeys(cmd) => api_keys(ctx, EntityKind::Application, cmd).await?,
        ApplicationsCommand::Formatters(cmd) => crate::appserver::formatters(ctx, cmd).await?,
        ApplicationsCommand::Webhooks(cmd) => crate::appserver::webhooks(ctx, cmd).await?,
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Gateways.

/// `ternctl gateways` subcommands.
#[derive(Subcommand, Debug)]
pub enum GatewaysCommand {
    /// Create a gateway.
    Create {
        /// The gateway ID.
        gateway_id: String,
        #[command(flatten)]
        fields: GatewayFields,
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Show a gateway.
    Get {
        /// The gateway ID.
        gateway_id: String,
    },
    /// List gateways.
    List {
        #[command(flatten)]
        owner: OwnerArgs,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Change a gateway's fields.
    Update {
        /// The gateway ID.
        gateway_id: String,
        #[command(flatten)]
        fields: GatewayFields,
    },
    /// Delete a gateway.
    Delete {
        /// The gateway ID.
        gateway_id: String,
    },
    /// Show the connection statistics of a connected gateway (Gateway Server).
    GetConnectionStats {
        /// The gateway ID.
        gateway_id: String,
    },
    /// The gateway's collaborators and their rights.
    #[command(subcommand)]
    Collaborators(CollaboratorsCommand),
    /// The gateway's API keys.
    #[command(subcommand)]
    ApiKeys(ApiKeysCommand),
}

/// A gateway's writable fields.
#[derive(Args, Clone, Debug, Default)]
pub struct GatewayFields {
    #[command(flatten)]
    common: CommonFields,
    /// Gateway EUI (16 hex digits).
    #[arg(long)]
    eui: Option<Eui64>,
    /// Frequency plan ID, e.g. EU_863_870; repeat for one per concentrator.
    #[arg(long = "frequency-plan", value_name = "ID")]
    frequency_plans: Vec<String>,
    /// Gateway Server address (empty for this cluster's).
    #[arg(long)]
    gateway_server_address: Option<String>,
    /// Enforce duty cycle (default true on create).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    enforce_duty_cycle: Option<bool>,
    /// Refuse connections that do not authenticate.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    require_authenticated_connection: Option<bool>,
    /// Show the status to everyone.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    status_public: Option<bool>,
    /// Show the location to everyone.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    location_public: Option<bool>,
    /// Update the antenna location from the gateway's GPS reports.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    update_location_from_status: Option<bool>,
    /// Antenna location `LAT,LON[,ALT]` (degrees, metres); replaces the antennas.
    #[arg(long, value_parser = parse_location)]
    location: Option<Location>,
    /// Antenna gain in dBi; replaces the antennas (with --location).
    #[arg(long, allow_negative_numbers = true)]
    antenna_gain: Option<f32>,
}

/// Parses `lat,lon[,alt]`.
pub fn parse_location(s: &str) -> Result<Location, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let bad = || format!("location {s:?} is not LAT,LON[,ALT]");
    if !(2..=3).contains(&parts.len()) {
        return Err(bad());
    }
    let latitude: f64 = parts[0].parse().map_err(|_| bad())?;
    let longitude: f64 = parts[1].parse().map_err(|_| bad())?;
    let altitude: i32 = match parts.get(2) {
        Some(a) => a.parse().map_err(|_| bad())?,
        None => 0,
    };
    if !(-90.0..=90.0).contains(&latitude) {
        return Err(format!("latitude {latitude} is outside -90..90"));
    }
    if !(-180.0..=180.0).contains(&longitude) {
        return Err(format!("longitude {longitude} is outside -180..180"));
    }
    Ok(Location {
        latitude,
        longitude,
        altitude,
        ..Default::default()
    })
}

impl GatewayFields {
    fn apply(&self, g: &mut Gateway, mask: &mut Vec<String>) {
        self.common
            .apply(&mut g.name, &mut g.description, &mut g.attributes, mask);
        if let Some(eui) = self.eui {
            if let Some(ids) = g.ids.as_mut() {
                ids.eui = eui.0.to_vec();
            }
            mask.push("ids.eui".into());
        }
        if !self.frequency_plans.is_empty() {
            g.frequency_plan_ids = self.frequency_plans.clone();
            mask.push("frequency_plan_ids".into());
        }
        if let Some(a) = &self.gateway_server_address {
            g.gateway_server_address = a.clone();
            mask.push("gateway_server_address".into());
        }
        for (v, field, path) in [
            (
                self.enforce_duty_cycle,
                &mut g.enforce_duty_cycle,
                "enforce_duty_cycle",
            ),
            (
                self.require_authenticated_connection,
                &mut g.require_authenticated_connection,
                "require_authenticated_connection",
            ),
            (self.status_public, &mut g.status_public, "status_public"),
            (
                self.location_public,
                &mut g.location_public,
                "location_public",
            ),
            (
                self.update_location_from_status,
                &mut g.update_location_from_status,
                "update_location_from_status",
            ),
        ] {
            if let Some(v) = v {
                *field = v;
                mask.push(path.into());
            }
        }
        if self.location.is_some() || self.antenna_gain.is_some() {
            g.antennas = vec![GatewayAntenna {
                gain: self.antenna_gain.unwrap_or_default(),
                location: self.location,
            }];
            mask.push("antennas".into());
        }
    }
}

const GATEWAY_FIELDS: &[&str] = &[
    "ids",
    "created_at",
    "updated_at",
    "name",
    "description",
    "attributes",
    "frequency_plan_ids",
    "gateway_server_address",
    "antennas",
    "enforce_duty_cycle",
    "require_authenticated_connection",
    "status_public",
    "location_public",
    "update_location_from_status",
];

fn gtw_ids(id: &str) -> GatewayIdentifiers {
    GatewayIdentifiers {
        gateway_id: id.to_owned(),
        eui: Vec::new(),
    }
}

/// Runs a `gateways` subcommand.
pub async fn gateways(ctx: &Ctx, cmd: GatewaysCommand) -> Result<()> {
    let mut reg = ctx.api.gateways();
    match cmd {
        GatewaysCommand::Create {
            gateway_id,
            fields,
            owner,
        } => {
            let mut gtw = Gateway {
                ids: Some(gtw_ids(&gateway_id)),
                enforce_duty_cycle: true,
                ..Default::default()
            };
            fields.apply(&mut gtw, &mut Vec::new());
            let gtw = reg
                .create(CreateGatewayRequest {
                    gateway: Some(gtw),
                    collaborator: owner.ids(),
                })
                .await
                .ctx(|| format!("create gateway {gateway_id}"))?;
            output::print_one(ctx.out, &gtw);
        }
        GatewaysCommand::Get { gateway_id } => {
            let gtw = reg
                .get(GetGatewayRequest {
                    gateway_ids: Some(gtw_ids(&gateway_id)),
                    field_mask: mask(GATEWAY_FIELDS),
                })
                .await
                .ctx(|| format!("get gateway {gateway_id}"))?;
            output::print_one(ctx.out, &gtw);
        }
        GatewaysCommand::List { owner, list } => {
            let items = collect_pages(list, |limit, page| {
                let mut reg = reg.clone();
                let collaborator = owner.ids();
                async move {
                    let r = reg
                        .list(ListGatewaysRequest {
                            collaborator,
                            field_mask: mask(GATEWAY_FIELDS),
                            order: "gateway_id".into(),
                            limit,
                            page,
                        })
                        .await
                        .ctx(|| "list gateways".into())?;
                    Ok((r.gateways, r.total))
                }
            })
            .await?;
            output::print_list(
                ctx.out,
                &items,
                &[
                    ("GATEWAY ID", "ids.gateway_id"),
                    ("EUI", "ids.eui"),
                    ("NAME", "name"),
                    ("FREQUENCY PLAN", "frequency_plan_ids"),
                    ("CREATED", "created_at"),
                ],
            );
        }
        GatewaysCommand::Update { gateway_id, fields } => {
            let mut gtw = Gateway {
                ids: Some(gtw_ids(&gateway_id)),
                ..Default::default()
            };
            if !fields.common.attributes.is_empty() {
                gtw.attributes = reg
                    .get(GetGatewayRequest {
                        gateway_ids: Some(gtw_ids(&gateway_id)),
                        field_mask: mask(&["attributes"]),
                    })
                    .await
                    .ctx(|| format!("get gateway {gateway_id}"))?
                    .attributes;
            }
            let mut paths = Vec::new();
            fields.apply(&mut gtw, &mut paths);
            let gtw = reg
                .update(UpdateGatewayRequest {
                    gateway: Some(gtw),
                    field_mask: require_mask(paths, "gateway")?,
                })
                .await
                .ctx(|| format!("update gateway {gateway_id}"))?;
            output::print_one(ctx.out, &gtw);
        }
        GatewaysCommand::Delete { gateway_id } => {
            reg.delete(gtw_ids(&gateway_id))
                .await
                .ctx(|| format!("delete gateway {gateway_id}"))?;
        }
        GatewaysCommand::GetConnectionStats { gateway_id } => {
            let stats = ctx
                .api
                .gs()
                .get_gateway_connection_stats(gtw_ids(&gateway_id))
                .await
                .ctx(|| format!("get connection stats of gateway {gateway_id}"))?;
            output::print_one(ctx.out, &stats);
        }
        GatewaysCommand::Collaborators(cmd) => {
            collaborators(ctx, EntityKind::Gateway, cmd).await?;
        }
        GatewaysCommand::ApiKeys(cmd) => api_keys(ctx, EntityKind::Gateway, cmd).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_and_locations_parse() {
        assert_eq!(
            parse_attribute("site=north=1"),
            Ok(("site".into(), "north=1".into()))
        );
        assert_eq!(parse_attribute("k="), Ok(("k".into(), String::new())));
        assert!(parse_attribute("=v").is_err());
        assert!(parse_attribute("novalue").is_err());
        let l = parse_location("52.1, 4.3, 12").unwrap();
        assert_eq!((l.latitude, l.longitude, l.altitude), (52.1, 4.3, 12));
        assert!(parse_location("91,0").unwrap_err().contains("latitude"));
        assert!(parse_location("1").is_err());
    }

    #[test]
    fn common_fields_merge_attributes_and_name_the_mask() {
        let f = CommonFields {
            name: Some("N".into()),
            description: None,
            attributes: vec![("a".into(), "1".into()), ("old".into(), String::new())],
        };
        let (mut name, mut desc) = (String::new(), String::new());
        let mut attrs = HashMap::from([
            ("old".to_owned(), "x".to_owned()),
            ("keep".to_owned(), "y".to_owned()),
        ]);
        let mut paths = Vec::new();
        f.apply(&mut name, &mut desc, &mut attrs, &mut paths);
        assert_eq!(name, "N");
        assert_eq!(paths, vec!["name", "attributes"]);
        assert_eq!(
            attrs,
            HashMap::from([
                ("a".to_owned(), "1".to_owned()),
                ("keep".to_owned(), "y".to_owned())
            ])
        );
        assert!(require_mask(Vec::new(), "user").is_err());
    }

    #[test]
    fn expiry_accepts_times_and_durations() {
        let t = parse_expiry("2030-01-02T03:04:05Z").unwrap();
        assert_eq!(t.seconds, 1_893_553_445);
        let soon = parse_expiry("1h").unwrap();
        let now = tern_api::Timestamp::now();
        assert!((soon.seconds - now.seconds - 3600).abs() <= 1);
        assert!(parse_expiry("tomorrow").unwrap_err().contains("RFC 3339"));
    }

    #[tokio::test]
    async fn all_pages_are_collected_until_the_total() {
        let data: Vec<u32> = (0..1203).collect();
        let got = collect_pages(ListArgs::default(), |limit, page| {
            let data = data.clone();
            async move {
                let start = ((page - 1) * limit) as usize;
                let end = (start + limit as usize).min(data.len());
                Ok((data[start.min(end)..end].to_vec(), data.len() as u64))
            }
        })
        .await
        .unwrap();
        assert_eq!(got, data);
        let one = collect_pages(
            ListArgs {
                limit: Some(10),
                page: Some(2),
            },
            |limit, page| async move { Ok(((0..limit).map(|i| i + 100 * page).collect(), 99)) },
        )
        .await
        .unwrap();
        assert_eq!(one, (200..210).collect::<Vec<_>>());
    }
}
