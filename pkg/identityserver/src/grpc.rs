//! The public gRPC services (and so the REST routes under `/api/v3`): the registries,
//! `EntityAccess` and `Auth`. Every method checks its right first; see the crate README for
//! the table.

use std::collections::BTreeSet;
use std::sync::Arc;

use pbjson_types::Empty;
use tern_api::v3::entity_identifiers::Ids as EntityIds;
use tern_api::{Timestamp, v3};
use tern_cluster::auth::{self, AuthError, Caller, Entity};
use tern_cluster::role::RunState;
use tern_events::{Event, definitions as ev};
use tern_store::{AccountRef, EntityRef, RegistryStore, StoreError, Versioned};
use tonic::{Request, Response, Status};

use crate::core::{Core, to_entity, to_ref};
use crate::rights;
use crate::secrets;
use crate::{mask, tokens};

type Reply<T> = Result<Response<T>, Status>;

/// The gRPC status of a store error.
pub(crate) fn store_status(e: StoreError) -> Status {
    match &e {
        StoreError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::Conflict { .. } | StoreError::Contention { .. } => {
            Status::aborted(e.to_string())
        }
        StoreError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
        StoreError::Closed | StoreError::Backend { .. } => Status::unavailable(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// Checks an ID against the rule of DESIGN.md: lowercase letters, digits and single dashes
/// between them, 3 to 36 characters.
pub fn check_id(field: &str, id: &str) -> Result<(), Status> {
    let why = if id.is_empty() {
        Some("required".to_owned())
    } else if id.len() > 36 {
        Some(format!(
            "{id:?} has {} characters, at most 36 are allowed",
            id.len()
        ))
    } else if id.len() < 3 {
        Some(format!("{id:?} is shorter than 3 characters"))
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some(format!(
            "{id:?} may contain only lowercase letters, digits and dashes"
        ))
    } else if id.starts_with('-') || id.ends_with('-') || id.contains("--") {
        Some(format!(
            "{id:?} must start and end with a letter or digit, without double dashes"
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(Status::invalid_argument(format!("{field}: {why}"))),
        None => Ok(()),
    }
}

fn eui_field(field: &str, bytes: &[u8], required: bool) -> Result<Option<[u8; 8]>, Status> {
    match bytes.len() {
        0 if !required => Ok(None),
        0 => Err(Status::invalid_argument(format!("{field}: required"))),
        8 => Ok(Some(bytes.try_into().expect("8 bytes"))),
        n => Err(Status::invalid_argument(format!(
            "{field}: an EUI is 8 bytes, got {n}"
        ))),
    }
}

/// A gateway as the API shows it (nothing to strip today; kept as the one place to do so).
pub(crate) fn strip_gateway(g: v3::Gateway) -> v3::Gateway {
    g
}

fn strip_user(mut u: v3::User) -> v3::User {
    u.password.clear();
    u
}

fn strip_key(mut k: v3::ApiKey) -> v3::ApiKey {
    k.key.clear();
    k
}

/// What every service holds.
#[derive(Clone)]
pub(crate) struct Svc {
    pub core: Arc<Core>,
    pub state: Arc<RunState>,
}

impl Svc {
    /// The caller of a started IS.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        if !self.state.readiness().is_ready() {
            return Err(Status::unavailable("the Identity Server is not started"));
        }
        Caller::of(request).cloned().map_err(Status::from)
    }

    fn deny(&self, e: AuthError) -> Status {
        self.core.metrics.reject("permission_denied");
        Status::from(e)
    }

    /// Requires `right` on `entity`.
    async fn need<T>(
        &self,
        request: &Request<T>,
        entity: &Entity,
        right: &str,
    ) -> Result<(), Status> {
        self.caller(request)?;
        auth::require(request, entity, right)
            .await
            .map_err(|e| self.deny(e))
    }

    /// Requires a cluster caller or an administrator.
    fn need_admin<T>(&self, request: &Request<T>, what: &str) -> Result<Caller, Status> {
        let caller = self.caller(request)?;
        match &caller {
            Caller::Cluster => Ok(caller),
            Caller::ApiKey(info) if info.is_admin => Ok(caller),
            Caller::ApiKey(info) => {
                self.core.metrics.reject("permission_denied");
                Err(Status::permission_denied(format!(
                    "credentials of {} lack the right `admin`: only administrators may {what}",
                    info.entity
                )))
            }
        }
    }

    /// The rights of the caller on `entity`.
    async fn rights_of(
        &self,
        caller: &Caller,
        entity: &Entity,
    ) -> Result<BTreeSet<String>, Status> {
        match caller {
            Caller::Cluster => Ok(["all".to_owned()].into()),
            Caller::ApiKey(info) if info.is_admin => Ok(["all".to_owned()].into()),
            Caller::ApiKey(info) if &info.entity == entity => Ok(info.rights.clone()),
            Caller::ApiKey(info) => self
                .core
                .rights_on(&info.entity, &info.rights, entity)
                .await
                .map_err(store_status),
        }
    }

    /// Requires that the caller holds every right of `wanted` on `entity` (it may not give
    /// more than it has).
    async fn need_all(
        &self,
        caller: &Caller,
        entity: &Entity,
        wanted: &BTreeSet<String>,
    ) -> Result<(), Status> {
        let held = self.rights_of(caller, entity).await?;
        if let Some(missing) = rights::first_missing(&held, wanted) {
            self.core.metrics.reject("rights_exceed_caller");
            return Err(Status::permission_denied(format!(
                "cannot grant the right `{missing}` on {entity}: the caller does not have it"
            )));
        }
        Ok(())
    }

    fn publish<M: tern_events::EventData + serde::Serialize>(
        &self,
        def: &tern_events::Definition<M>,
        ids: v3::EntityIdentifiers,
        data: &M,
    ) {
        let event = Event::new(def).with_identifiers([ids]).with_data(data);
        self.core.publish(event.into_proto());
    }

    fn page_size(&self, limit: u32) -> usize {
        if limit == 0 {
            self.core.config.default_page_size as usize
        } else {
            limit.min(1000) as usize
        }
    }

    /// The owner of a new entity: the given account, else the caller's own user or
    /// organization.
    fn owner(
        &self,
        caller: &Caller,
        given: Option<&v3::OrganizationOrUserIdentifiers>,
    ) -> Result<AccountRef, Status> {
        if let Some(ids) = given.filter(|i| i.ids.is_some()) {
            let account = AccountRef::try_from(ids).map_err(store_status)?;
            let (field, id) = match &account {
                AccountRef::User(id) => ("collaborator.user_ids.user_id", id),
                AccountRef::Organization(id) => {
                    ("collaborator.organization_ids.organization_id", id)
                }
            };
            check_id(field, id)?;
            return Ok(account);
        }
        match caller {
            Caller::ApiKey(info) => match &info.entity {
                Entity::User(u) => Ok(AccountRef::User(u.clone())),
                Entity::Organization(o) => Ok(AccountRef::Organization(o.clone())),
                other => Err(Status::invalid_argument(format!(
                    "collaborator: required, the caller ({other}) cannot own entities"
                ))),
            },
            Caller::Cluster => Err(Status::invalid_argument(
                "collaborator: required for cluster callers",
            )),
        }
    }

    /// Requires the right to create on behalf of `owner`, and that the owner exists.
    async fn need_create<T>(
        &self,
        request: &Request<T>,
        owner: &AccountRef,
        user_right: &str,
        org_right: &str,
    ) -> Result<(), Status> {
        let (entity, right) = match owner {
            AccountRef::User(u) => (Entity::User(u.clone()), user_right),
            AccountRef::Organization(o) => (Entity::Organization(o.clone()), org_right),
        };
        self.need(request, &entity, right).await?;
        let exists = match owner {
            AccountRef::User(u) => self
                .core
                .store
                .get_user(u)
                .await
                .map_err(store_status)?
                .is_some(),
            AccountRef::Organization(o) => self
                .core
                .store
                .get_organization(o)
                .await
                .map_err(store_status)?
                .is_some(),
        };
        if !exists {
            return Err(Status::not_found(format!(
                "collaborator: {entity} not found"
            )));
        }
        Ok(())
    }

    /// Gives `owner` `right` on the new `entity`; undoes the entity's creation on failure.
    async fn add_owner(
        &self,
        entity: &EntityRef,
        owner: &AccountRef,
        right: v3::Right,
    ) -> Result<(), Status> {
        let collaborator = v3::Collaborator {
            ids: Some(owner.to_ids()),
            rights: vec![right as i32],
        };
        self.core
            .store
            .set_collaborator(entity, &collaborator)
            .await
            .map_err(store_status)
    }

    /// The entities of `kind` the caller may list: everything for cluster callers and
    /// administrators (`None`), else those it (or its organizations) collaborates on.
    async fn visible(
        &self,
        caller: &Caller,
        account: Option<AccountRef>,
        keep: fn(&EntityRef) -> Option<String>,
    ) -> Result<Option<BTreeSet<String>>, Status> {
        let account = match (account, caller) {
            (Some(a), _) => a,
            (None, Caller::Cluster) => return Ok(None),
            (None, Caller::ApiKey(info)) if info.is_admin => return Ok(None),
            (None, Caller::ApiKey(info)) => match &info.entity {
                Entity::User(u) => AccountRef::User(u.clone()),
                Entity::Organization(o) => AccountRef::Organization(o.clone()),
                own => {
                    return Ok(Some(
                        keep(&to_ref(own)).into_iter().collect::<BTreeSet<_>>(),
                    ));
                }
            },
        };
        let store = &self.core.store;
        let memberships = store
            .list_memberships(&account)
            .await
            .map_err(store_status)?;
        let mut out = BTreeSet::new();
        for m in &memberships {
            if let Some(id) = keep(&m.entity) {
                out.insert(id);
            }
            if let (AccountRef::User(_), EntityRef::Organization(o)) = (&account, &m.entity) {
                let via = store
                    .list_memberships(&AccountRef::Organization(o.clone()))
                    .await
                    .map_err(store_status)?;
                out.extend(via.iter().filter_map(|m| keep(&m.entity)));
            }
        }
        Ok(Some(out))
    }
}

/// A page (from 1) of `items`.
fn paginate<T>(items: Vec<T>, limit: usize, page: u32) -> Vec<T> {
    let skip = (page.max(1) as usize - 1).saturating_mul(limit);
    items.into_iter().skip(skip).take(limit).collect()
}

fn account_entity(a: &AccountRef) -> Entity {
    match a {
        AccountRef::User(u) => Entity::User(u.clone()),
        AccountRef::Organization(o) => Entity::Organization(o.clone()),
    }
}

fn account_of(
    ids: Option<&v3::OrganizationOrUserIdentifiers>,
) -> Result<Option<AccountRef>, Status> {
    match ids.filter(|i| i.ids.is_some()) {
        Some(ids) => Ok(Some(AccountRef::try_from(ids).map_err(store_status)?)),
        None => Ok(None),
    }
}

/// Lists every record through the store's cursor.
async fn all_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, Status>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = tern_store::Result<tern_store::Page<Versioned<T>>>>,
{
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = fetch(after).await.map_err(store_status)?;
        out.extend(page.items.into_iter().map(|v| v.value));
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

fn app_id(ids: Option<&v3::ApplicationIdentifiers>, field: &str) -> Result<String, Status> {
    let id = ids.map(|i| i.application_id.clone()).unwrap_or_default();
    check_id(field, &id)?;
    Ok(id)
}

fn touch_new<M>(created: &mut Option<Timestamp>, updated: &mut Option<Timestamp>, _m: &M) {
    let now = Timestamp::now();
    *created = Some(now);
    *updated = Some(now);
}

// ---- applications ----

/// `tern.v3.ApplicationRegistry`.
pub(crate) struct Applications(pub Svc);

#[tonic::async_trait]
impl v3::application_registry_server::ApplicationRegistry for Applications {
    async fn create(
        &self,
        request: Request<v3::CreateApplicationRequest>,
    ) -> Reply<v3::Application> {
        let s = &self.0;
        let caller = s.caller(&request)?;
        let req = request.get_ref();
        let mut app = req.application.clone().unwrap_or_default();
        let id = app_id(app.ids.as_ref(), "application.ids.application_id")?;
        let owner = s.owner(&caller, req.collaborator.as_ref())?;
        s.need_create(
            &request,
            &owner,
            "user:applications:create",
            "organization:applications:create",
        )
        .await?;
        app.end_device_count = 0;
        let (mut c, mut u) = (None, None);
        touch_new(&mut c, &mut u, &app);
        (app.created_at, app.updated_at) = (c, u);
        s.core
            .store
            .create_application(&app)
            .await
            .map_err(store_status)?;
        let entity = EntityRef::Application(id.clone());
        if let Err(e) = s
            .add_owner(&entity, &owner, v3::Right::ApplicationAll)
            .await
        {
            let _ = s.core.store.delete_application(&id, None).await;
            return Err(e);
        }
        s.publish(&ev::IS_APPLICATION_CREATE, entity.to_ids(), &app);
        Ok(Response::new(app))
    }

    async fn get(&self, request: Request<v3::GetApplicationRequest>) -> Reply<v3::Application> {
        let s = &self.0;
        let id = app_id(
            request.get_ref().application_ids.as_ref(),
            "application_ids.application_id",
        )?;
        s.need(
            &request,
            &Entity::Application(id.clone()),
            "application:info",
        )
        .await?;
        let mut app = s
            .core
            .store
            .get_application(&id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("application `{id}` not found")))?
            .value;
        let mask = request.get_ref().field_mask.as_ref();
        if mask.is_some_and(|m| m.covers("end_device_count")) {
            app.end_device_count = s
                .core
                .store
                .count_end_devices(&id)
                .await
                .map_err(store_status)?;
        }
        Ok(Response::new(mask::select(app, mask)?))
    }

    async fn list(&self, request: Request<v3::ListApplicationsRequest>) -> Reply<v3::Applications> {
        let s = &self.0;
        let caller = s.caller(&request)?;
        let req = request.get_ref();
        let account = account_of(req.collaborator.as_ref())?;
        if let Some(a) = &account {
            let right = match a {
                AccountRef::User(_) => "user:applications:list",
                AccountRef::Organization(_) => "organization:applications:list",
            };
            s.need(&request, &account_entity(a), right).await?;
        }
        let keep = |e: &EntityRef| match e {
            EntityRef::Application(id) => Some(id.clone()),
            _ => None,
        };
        let visible = s.visible(&caller, account, keep).await?;
        let store = &s.core.store;
        let mut apps = match visible {
            None => {
                all_pages(
                    |after| async move { store.list_applications(after.as_deref(), 500).await },
                )
                .await?
            }
            Some(ids) => {
                let mut out = Vec::new();
                for id in ids {
                    if let Some(v) = store.get_application(&id).await.map_err(store_status)? {
                        out.push(v.value);
                    }
                }
                out
            }
        };
        if req.order.trim_start_matches('-') == "created_at" {
            apps.sort_by_key(|a| a.created_at);
        }
        if req.order.starts_with('-') {
            apps.reverse();
        }
        let total = apps.len() as u64;
        let limit = s.page_size(req.limit);
        let applications = paginate(apps, limit, req.page)
            .into_iter()
            .map(|a| mask::select(a, req.field_mask.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(v3::Applications {
            applications,
            total,
        }))
    }

    async fn update(
        &self,
        request: Request<v3::UpdateApplicationRequest>,
    ) -> Reply<v3::Application> {
        let s = &self.0;
        let req = request.get_ref();
        let update = req.application.clone().unwrap_or_default();
        let id = app_id(update.ids.as_ref(), "application.ids.application_id")?;
        s.need(
            &request,
            &Entity::Application(id.clone()),
            "application:settings",
        )
        .await?;
        let current = s
            .core
            .store
            .get_application(&id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("application `{id}` not found")))?;
        let mut app = mask::merge(
            current.value,
            &update,
            req.field_mask.as_ref(),
            &["end_device_count"],
        )?;
        app.updated_at = Some(Timestamp::now());
        s.core
            .store
            .update_application(&app, Some(current.version))
            .await
            .map_err(store_status)?;
        s.publish(
            &ev::IS_APPLICATION_UPDATE,
            EntityRef::Application(id).to_ids(),
            &app,
        );
        Ok(Response::new(app))
    }

    async fn delete(&self, request: Request<v3::DeleteApplicationRequest>) -> Reply<Empty> {
        let s = &self.0;
        let req = request.get_ref();
        let id = app_id(
            req.application_ids.as_ref(),
            "application_ids.application_id",
        )?;
        let entity = Entity::Application(id.clone());
        s.need(&request, &entity, "application:delete").await?;
        let store = &s.core.store;
        if store
            .get_application(&id)
            .await
            .map_err(store_status)?
            .is_none()
        {
            return Err(Status::not_found(format!("application `{id}` not found")));
        }
        let devices = store.count_end_devices(&id).await.map_err(store_status)?;
        if devices > 0 {
            if !req.purge {
                s.core.metrics.reject("application_has_devices");
                return Err(Status::failed_precondition(format!(
                    "application `{id}` has {devices} end devices: delete them first, or set `purge` (ternctl: --purge)"
                )));
            }
            s.need(&request, &entity, "application:devices:write")
                .await?;
            let app = id.clone();
            let all = all_pages(|after| {
                let app = app.clone();
                async move { store.list_end_devices(&app, after.as_deref(), 500).await }
            })
            .await?;
            for d in all {
                let ids = d.ids.unwrap_or_default();
                store
                    .delete_end_device(&id, &ids.device_id, None)
                    .await
                    .or_else(|e| if e.is_not_found() { Ok(()) } else { Err(e) })
                    .map_err(store_status)?;
                s.publish(
                    &ev::IS_END_DEVICE_DELETE,
                    EntityRef::EndDevice {
                        application_id: id.clone(),
                        device_id: ids.device_id.clone(),
                    }
                    .to_ids(),
                    &ids,
                );
            }
        }
        let eref = EntityRef::Application(id.clone());
        store
            .delete_entity_access(&eref)
            .await
            .map_err(store_status)?;
        store
            .delete_application(&id, None)
            .await
            .map_err(store_status)?;
        s.publish(
            &ev::IS_APPLICATION_DELETE,
            eref.to_ids(),
            &v3::ApplicationIdentifiers { application_id: id },
        );
        Ok(Response::new(Empty {}))
    }
}

// ---- gateways ----

/// `tern.v3.GatewayRegistry`.
pub(crate) struct Gateways(pub Svc);

fn gw_id(ids: Option<&v3::GatewayIdentifiers>, field: &str) -> Result<String, Status> {
    let id = ids.map(|i| i.gateway_id.clone()).unwrap_or_default();
    check_id(field, &id)?;
    Ok(id)
}

#[tonic::async_trait]
impl v3::gateway_registry_server::GatewayRegistry for Gateways {
    async fn create(&self, request: Request<v3::CreateGatewayRequest>) -> Reply<v3::Gateway> {
        let s = &self.0;
        let caller = s.caller(&request)?;
        let req = request.get_ref();
        let mut gw = req.gateway.clone().unwrap_or_default();
        let id = gw_id(gw.ids.as_ref(), "gateway.ids.gateway_id")?;
        eui_field(
            "gateway.ids.eui",
            gw.ids.as_ref().map(|i| i.eui.as_slice()).unwrap_or(&[]),
            false,
        )?;
        let owner = s.owner(&caller, req.collaborator.as_ref())?;
        s.need_create(
            &request,
            &owner,
            "user:gateways:create",
            "organization:gateways:create",
        )
        .await?;
        let (mut c, mut u) = (None, None);
        touch_new(&mut c, &mut u, &gw);
        (gw.created_at, gw.updated_at) = (c, u);
        s.core
            .store
            .create_gateway(&gw)
            .await
            .map_err(store_status)?;
        let entity = EntityRef::Gateway(id.clone());
        if let Err(e) = s.add_owner(&entity, &owner, v3::Right::GatewayAll).await {
            let _ = s.core.store.delete_gateway(&id, None).await;
            return Err(e);
        }
        s.publish(&ev::IS_GATEWAY_CREATE, entity.to_ids(), &gw);
        Ok(Response::new(gw))
    }

    async fn get(&self, request: Request<v3::GetGatewayRequest>) -> Reply<v3::Gateway> {
        let s = &self.0;
        let id = gw_id(
            request.get_ref().gateway_ids.as_ref(),
            "gateway_ids.gateway_id",
        )?;
        s.need(&request, &Entity::Gateway(id.clone()), "gateway:info")
            .await?;
        let gw = s
            .core
            .store
            .get_gateway(&id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("gateway `{id}` not found")))?
            .value;
        Ok(Response::new(mask::select(
            strip_gateway(gw),
            request.get_ref().field_mask.as_ref(),
        )?))
    }

    async fn get_identifiers_for_eui(
        &self,
        request: Request<v3::GetGatewayIdentifiersForEuiRequest>,
    ) -> Reply<v3::GatewayIdentifiers> {
        let s = &self.0;
        s.caller(&request)?;
        let eui = eui_field("eui", &request.get_ref().eui, true)?.expect("required");
        let gw = s.core.gateway_by_eui(eui).await.map_err(store_status)?;
        let not_found = || Status::not_found(format!("no gateway with EUI {}", hex::encode(eui)));
        let ids = gw.and_then(|g| g.ids).ok_or_else(not_found)?;
        s.need(
            &request,
            &Entity::Gateway(ids.gateway_id.clone()),
            "gateway:info",
        )
        .await?;
        Ok(Response::new(ids))
    }

    async fn list(&self, request: Request<v3::ListGatewaysRequest>) -> Reply<v3::Gateways> {
        let s = &self.0;
        let caller = s.caller(&request)?;
        let req = request.get_ref();
        let account = account_of(req.collaborator.as_ref())?;
        if let Some(a) = &account {
            let right = match a {
                AccountRef::User(_) => "user:gateways:list",
                AccountRef::Organization(_) => "organization:gateways:list",
            };
            s.need(&request, &account_entity(a), right).await?;
        }
        let keep = |e: &EntityRef| match e {
            EntityRef::Gateway(id) => Some(id.clone()),
            _ => None,
        };
        let visible = s.visible(&caller, account, keep).await?;
        let store = &s.core.store;
        let mut gws = match visible {
            None => {
                all_pages(|after| async move { store.list_gateways(after.as_deref(), 500).await })
                    .await?
            }
            Some(ids) => {
                let mut out = Vec::new();
                for id in ids {
                    if let Some(v) = store.get_gateway(&id).await.map_err(store_status)? {
                        out.push(v.value);
                    }
                }
                out
            }
        };
        if req.order.trim_start_matches('-') == "created_at" {
            gws.sort_by_key(|a| a.created_at);
        }
        if req.order.starts_with('-') {
            gws.reverse();
        }
        let total = gws.len() as u64;
        let gateways = paginate(gws, s.page_size(req.limit), req.page)
            .into_iter()
            .map(|g| mask::select(strip_gateway(g), req.field_mask.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(v3::Gateways { gateways, total }))
    }

    async fn update(&self, request: Request<v3::UpdateGatewayRequest>) -> Reply<v3::Gateway> {
        let s = &self.0;
        let req = request.get_ref();
        let update = req.gateway.clone().unwrap_or_default();
        let id = gw_id(update.ids.as_ref(), "gateway.ids.gateway_id")?;
        s.need(&request, &Entity::Gateway(id.clone()), "gateway:settings")
            .await?;
        let current = s
            .core
            .store
            .get_gateway(&id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("gateway `{id}` not found")))?;
        let mut gw = mask::merge(current.value, &update, req.field_mask.as_ref(), &[])?;
        gw.updated_at = Some(Timestamp::now());
        s.core
            .store
            .update_gateway(&gw, Some(current.version))
            .await
            .map_err(store_status)?;
        s.publish(&ev::IS_GATEWAY_UPDATE, EntityRef::Gateway(id).to_ids(), &gw);
        Ok(Response::new(gw))
    }

    async fn delete(&self, request: Request<v3::GatewayIdentifiers>) -> Reply<Empty> {
        let s = &self.0;
        let id = gw_id(Some(request.get_ref()), "gateway_id")?;
        s.need(&request, &Entity::Gateway(id.clone()), "gateway:delete")
            .await?;
        let store = &s.core.store;
        if store
            .get_gateway(&id)
            .await
            .map_err(store_status)?
            .is_none()
        {
            return Err(Status::not_found(format!("gateway `{id}` not found")));
        }
        let eref = EntityRef::Gateway(id.clone());
        store
            .delete_entity_access(&eref)
            .await
            .map_err(store_status)?;
        store
            .delete_gateway(&id, None)
            .await
            .map_err(store_status)?;
        s.publish(
            &ev::IS_GATEWAY_DELETE,
            eref.to_ids(),
            &v3::GatewayIdentifiers {
                gateway_id: id,
                ..Default::default()
            },
        );
        Ok(Response::new(Empty {}))
    }
}

// ---- organizations ----

/// `tern.v3.OrganizationRegistry`.
pub(crate) struct Organizations(pub Svc);

fn org_id(ids: Option<&v3::OrganizationIdentifiers>, field: &str) -> Result<String, Status> {
    let id = ids.map(|i| i.organization_id.clone()).unwrap_or_default();
    check_id(field, &id)?;
    Ok(id)
}

#[tonic::async_trait]
impl v3::organization_registry_server::OrganizationRegistry for Organizations {
    async fn create(
        &self,
        request: Request<v3::CreateOrganizationRequest>,
    ) -> Reply<v3::Organization> {
        let s = &self.0;
        let caller = s.caller(&request)?;
        let req = request.get_ref();
        let mut org = req.organization.clone().unwrap_or_default();
        let id = org_id(org.ids.as_ref(), "organization.ids.organization_id")?;
        let owner = match req.owner.as_ref().filter(|o| !o.user_id.is_empty()) {
            Some(u) => {
                check_id("owner.user_id", &u.user_id)?;
                AccountRef::User(u.user_id.clone())
            }
            None => match &caller {
                Caller::ApiKey(info) => match &info.entity {
                    Entity::User(u) => AccountRef::User(u.clone()),
                    other => {
                        return Err(Status::invalid_argument(format!(
                            "owner: required, the caller ({other}) is not a user"
                        )));
                    }
                },
                Caller::Cluster => {
                    return Err(Status::invalid_argument(
                        "owner: required for cluster callers",
                    ));
                }
            },
        };
        s.need_create(
            &request,
            &owner,
            "user:organizations:create",
            "user:organizations:create",
        )
        .await?;
        let (mut c, mut u) = (None, None);
        touch_new(&mut c, &mut u, &org);
        (org.created_at, org.updated_at) = (c, u);
        s.core
            .store
            .create_organization(&org)
            .await
            .map_err(store_status)?;
        let entity = EntityRef::Organization(id.clone());
        // The first member may do everything the organization may.
        if let Err(e) = s.add_owner(&entity, &owner, v3::Right::All).await {
            let _ = s.core.store.delete_organization(&id, None).await;
            return Err(e);
        }
        s.publish(&ev::IS_ORGANIZATION_CREATE, entity.to_ids(), &org);
        Ok(Response::new(org))
    }

    async fn get(&self, request: Request<v3::GetOrganizationRequest>) -> Reply<v3::Organization> {
        let s = &self.0;
        let id = org_id(
            request.get_ref().organization_ids.as_ref(),
            "organization_ids.organization_id",
        )?;
        s.need(
            &request,
            &Entity::Organization(id.clone()),
            "organization:info",
        )
        .await?;
        let org = s
            .core
            .store
            .get_organization(&id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("organization `{id}` not found")))?
            .value;
        Ok(Response::new(mask::select(
            org,
            request.get_ref().field_mask.as_ref(),
        )?))
    }

    async fn list(
        &self,
        request: Request<v3::ListOrganizationsRequest>,
    ) -> Reply<v3::Organizations> {
        let s = &self.0;
        let caller = s.caller(&request)?;
        let req = request.get_ref();
        let account = match req.member.as_ref().filter(|m| !m.user_id.is_empty()) {
            Some(m) => {
                check_id("member.user_id", &m.user_id)?;
                s.need(
                    &request,
                    &Entity::User(m.user_id.clone()),
                    "user:organizations:list",
                )
                .await?;
                Some(AccountRef::User(m.user_id.clone()))
            }
            None => None,
        };
        let keep = |e: &EntityRef| match e {
            EntityRef::Organization(id) => Some(id.clone()),
            _ => None,
        };
        let visible = s.visible(&caller, account, keep).await?;
        let store = &s.core.store;
        let orgs = match visible {
            None => {
                all_pages(
                    |after| async move { store.list_organizations(after.as_deref(), 500).await },
                )
                .await?
            }
            Some(ids) => {
                let mut out = Vec::new();
                for id in ids {
                    if let Some(v) = store.get_organization(&id).await.map_err(store_status)? {
                        out.push(v.value);
                    }
                }
                out
            }
        };
        let total = orgs.len() as u64;
        let organizations = paginate(orgs, s.page_size(req.limit), req.page)
            .into_iter()
            .map(|o| mask::select(o, req.field_mask.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(v3::Organizations {
            organizations,
            total,
        }))
    }

    async fn update(
        &self,
        request: Request<v3::UpdateOrganizationRequest>,
    ) -> Reply<v3::Organization> {
        let s = &self.0;
        let req = request.get_ref();
        let update = req.organization.clone().unwrap_or_default();
        let id = org_id(update.ids.as_ref(), "organization.ids.organization_id")?;
        s.need(
            &request,
            &Entity::Organization(id.clone()),
            "organization:settings",
        )
        .await?;
        let current = s
            .core
            .store
            .get_organization(&id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("organization `{id}` not found")))?;
        let mut org = mask::merge(current.value, &update, req.field_mask.as_ref(), &[])?;
        org.updated_at = Some(Timestamp::now());
        s.core
            .store
            .update_organization(&org, Some(current.version))
            .await
            .map_err(store_status)?;
        s.publish(
            &ev::IS_ORGANIZATION_UPDATE,
            EntityRef::Organization(id).to_ids(),
            &org,
        );
        Ok(Response::new(org))
    }

    async fn delete(&self, request: Request<v3::OrganizationIdentifiers>) -> Reply<Empty> {
        let s = &self.0;
        let id = org_id(Some(request.get_ref()), "organization_id")?;
        s.need(
            &request,
            &Entity::Organization(id.clone()),
            "organization:delete",
        )
        .await?;
        let store = &s.core.store;
        if store
            .get_organization(&id)
            .await
            .map_err(store_status)?
            .is_none()
        {
            return Err(Status::not_found(format!("organization `{id}` not found")));
        }
        let owned = store
            .list_memberships(&AccountRef::Organization(id.clone()))
            .await
            .map_err(store_status)?;
        if let Some(m) = owned.first() {
            s.core.metrics.reject("organization_owns_entities");
            return Err(Status::failed_precondition(format!(
                "organization `{id}` still has rights on {} entities (e.g. {}): delete or hand them over first",
                owned.len(),
                m.entity.key().unwrap_or_default()
            )));
        }
        let eref = EntityRef::Organization(id.clone());
        store
            .delete_entity_access(&eref)
            .await
            .map_err(store_status)?;
        store
            .delete_organization(&id, None)
            .await
            .map_err(store_status)?;
        s.publish(
            &ev::IS_ORGANIZATION_DELETE,
            eref.to_ids(),
            &v3::OrganizationIdentifiers {
                organization_id: id,
            },
        );
        Ok(Response::new(Empty {}))
    }
}

// ---- users ----

/// `tern.v3.UserRegistry`.
pub(crate) struct Users(pub Svc);

fn user_id(ids: Option<&v3::UserIdentifiers>, field: &str) -> Result<String, Status> {
    let id = ids.map(|i| i.user_id.clone()).unwrap_or_default();
    check_id(field, &id)?;
    Ok(id)
}

/// Checks a new password: at least 8 characters.
pub fn check_password(field: &str, password: &str) -> Result<(), Status> {
    if password.chars().count() < 8 {
        return Err(Status::invalid_argument(format!(
            "{field}: at least 8 characters are needed"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl v3::user_registry_server::UserRegistry for Users {
    async fn create(&self, request: Request<v3::CreateUserRequest>) -> Reply<v3::User> {
        let s = &self.0;
        s.need_admin(&request, "create users")?;
        let user = request.into_inner().user.unwrap_or_default();
        let created = crate::admin::create_user_record(&s.core, user).await?;
        s.publish(
            &ev::IS_USER_CREATE,
            EntityRef::User(created.ids.clone().unwrap_or_default().user_id).to_ids(),
            &created,
        );
        Ok(Response::new(created))
    }

    async fn get(&self, request: Request<v3::GetUserRequest>) -> Reply<v3::User> {
        let s = &self.0;
        let id = user_id(request.get_ref().user_ids.as_ref(), "user_ids.user_id")?;
        s.need(&request, &Entity::User(id.clone()), "user:info")
            .await?;
        let user = s
            .core
            .store
            .get_user(&id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("user `{id}` not found")))?
            .value;
        Ok(Response::new(mask::select(
            strip_user(user),
            request.get_ref().field_mask.as_ref(),
        )?))
    }

    async fn list(&self, request: Request<v3::ListUsersRequest>) -> Reply<v3::Users> {
        let s = &self.0;
        s.need_admin(&request, "list users")?;
        let req = request.get_ref();
        let store = &s.core.store;
        let users =
            all_pages(|after| async move { store.list_users(after.as_deref(), 500).await }).await?;
        let total = users.len() as u64;
        let users = paginate(users, s.page_size(req.limit), req.page)
            .into_iter()
            .map(|u| mask::select(strip_user(u), req.field_mask.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(v3::Users { users, total }))
    }

    async fn update(&self, request: Request<v3::UpdateUserRequest>) -> Reply<v3::User> {
        let s = &self.0;
        let caller = s.caller(&request)?;
        let req = request.get_ref();
        let update = req.user.clone().unwrap_or_default();
        let id = user_id(update.ids.as_ref(), "user.ids.user_id")?;
        s.need(&request, &Entity::User(id.clone()), "user:settings")
            .await?;
        let is_admin = matches!(&caller, Caller::Cluster)
            || matches!(&caller, Caller::ApiKey(i) if i.is_admin);
        if req.field_mask.as_ref().is_some_and(|m| m.covers("admin")) && !is_admin {
            s.core.metrics.reject("permission_denied");
            return Err(Status::permission_denied(
                "field_mask: only administrators may change `admin` (the right `admin` is missing)",
            ));
        }
        let current = s
            .core
            .store
            .get_user(&id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("user `{id}` not found")))?;
        let mut user = mask::merge(
            current.value,
            &update,
            req.field_mask.as_ref(),
            &["password", "password_updated_at"],
        )?;
        user.updated_at = Some(Timestamp::now());
        s.core
            .store
            .update_user(&user, Some(current.version))
            .await
            .map_err(store_status)?;
        let user = strip_user(user);
        s.publish(&ev::IS_USER_UPDATE, EntityRef::User(id).to_ids(), &user);
        Ok(Response::new(user))
    }

    async fn update_password(
        &self,
        request: Request<v3::UpdateUserPasswordRequest>,
    ) -> Reply<Empty> {
        let s = &self.0;
        let caller = s.caller(&request)?;
        let req = request.get_ref();
        let id = user_id(req.user_ids.as_ref(), "user_ids.user_id")?;
        s.need(&request, &Entity::User(id.clone()), "user:settings")
            .await?;
        let is_admin = matches!(&caller, Caller::Cluster)
            || matches!(&caller, Caller::ApiKey(i) if i.is_admin);
        check_password("new", &req.new)?;
        let current = s
            .core
            .store
            .get_user(&id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("user `{id}` not found")))?;
        if !is_admin {
            let (old, hash) = (req.old.clone(), current.value.password.clone());
            let ok = tokio::task::spawn_blocking(move || secrets::verify_hash(&old, &hash))
                .await
                .unwrap_or(false);
            if !ok {
                s.core.metrics.reject("wrong_password");
                return Err(Status::permission_denied("old: not the current password"));
            }
        }
        crate::admin::set_password_record(&s.core, current, &req.new).await?;
        if req.revoke_all_tokens {
            tokens::revoke_user_sessions(&s.core, &id)
                .await
                .map_err(store_status)?;
        }
        Ok(Response::new(Empty {}))
    }

    async fn delete(&self, request: Request<v3::UserIdentifiers>) -> Reply<Empty> {
        let s = &self.0;
        let id = user_id(Some(request.get_ref()), "user_id")?;
        s.need(&request, &Entity::User(id.clone()), "user:delete")
            .await?;
        let store = &s.core.store;
        if store.get_user(&id).await.map_err(store_status)?.is_none() {
            return Err(Status::not_found(format!("user `{id}` not found")));
        }
        let account = AccountRef::User(id.clone());
        let memberships = store
            .list_memberships(&account)
            .await
            .map_err(store_status)?;
        for m in &memberships {
            let collaborators = store
                .list_collaborators(&m.entity)
                .await
                .map_err(store_status)?;
            if collaborators.len() <= 1 {
                return Err(Status::failed_precondition(format!(
                    "user `{id}` is the only collaborator of {}: delete it or add another first",
                    m.entity.key().unwrap_or_default()
                )));
            }
        }
        for m in &memberships {
            store
                .set_collaborator(
                    &m.entity,
                    &v3::Collaborator {
                        ids: Some(account.to_ids()),
                        rights: vec![],
                    },
                )
                .await
                .map_err(store_status)?;
        }
        let eref = EntityRef::User(id.clone());
        store
            .delete_entity_access(&eref)
            .await
            .map_err(store_status)?;
        tokens::revoke_user_sessions(&s.core, &id)
            .await
            .map_err(store_status)?;
        store.delete_user(&id, None).await.map_err(store_status)?;
        s.publish(
            &ev::IS_USER_DELETE,
            eref.to_ids(),
            &v3::UserIdentifiers {
                user_id: id,
                ..Default::default()
            },
        );
        Ok(Response::new(Empty {}))
    }
}

// ---- end devices ----

/// `tern.v3.EndDeviceRegistry`.
pub(crate) struct EndDevices(pub Svc);

/// Fields of `EndDevice` other roles own: never stored by the IS.
const NOT_REGISTRY: &[&str] = &[
    "root_keys",
    "session",
    "mac_settings",
    "formatters",
    "mac_state",
    "battery_level",
    "last_seen_at",
];

fn device_ids(
    ids: Option<&v3::EndDeviceIdentifiers>,
    prefix: &str,
) -> Result<(String, String), Status> {
    let ids = ids.ok_or_else(|| Status::invalid_argument(format!("{prefix}: required")))?;
    let app = app_id(
        ids.application_ids.as_ref(),
        &format!("{prefix}.application_ids.application_id"),
    )?;
    check_id(&format!("{prefix}.device_id"), &ids.device_id)?;
    Ok((app, ids.device_id.clone()))
}

/// Only the registry part of a device: key material is refused, other roles' state dropped.
fn registry_part(mut d: v3::EndDevice) -> Result<v3::EndDevice, Status> {
    if d.root_keys.is_some() {
        return Err(Status::invalid_argument(
            "end_device.root_keys: the Identity Server never stores keys; set them on the Join Server",
        ));
    }
    if d.session.as_ref().is_some_and(|s| s.keys.is_some()) {
        return Err(Status::invalid_argument(
            "end_device.session.keys: the Identity Server never stores keys; set the session on the Network and Application Servers",
        ));
    }
    d.session = None;
    d.mac_settings = None;
    d.formatters = None;
    d.mac_state = None;
    d.battery_level = None;
    d.last_seen_at = None;
    Ok(d)
}

#[tonic::async_trait]
impl v3::end_device_registry_server::EndDeviceRegistry for EndDevices {
    async fn create(&self, request: Request<v3::CreateEndDeviceRequest>) -> Reply<v3::EndDevice> {
        let s = &self.0;
        let device = request.get_ref().end_device.clone().unwrap_or_default();
        let (app, dev) = device_ids(device.ids.as_ref(), "end_device.ids")?;
        s.need(
            &request,
            &Entity::Application(app.clone()),
            "application:devices:write",
        )
        .await?;
        let mut device = registry_part(device)?;
        let ids = device.ids.clone().unwrap_or_default();
        let join = eui_field("end_device.ids.join_eui", &ids.join_eui, false)?;
        let deveui = eui_field("end_device.ids.dev_eui", &ids.dev_eui, false)?;
        if device.supports_join && (join.is_none() || deveui.is_none()) {
            return Err(Status::invalid_argument(
                "end_device.ids: an OTAA device (supports_join) needs join_eui and dev_eui",
            ));
        }
        if s.core
            .store
            .get_application(&app)
            .await
            .map_err(store_status)?
            .is_none()
        {
            return Err(Status::not_found(format!("application `{app}` not found")));
        }
        let (mut c, mut u) = (None, None);
        touch_new(&mut c, &mut u, &device);
        (device.created_at, device.updated_at) = (c, u);
        s.core
            .store
            .create_end_device(&device)
            .await
            .map_err(store_status)?;
        s.publish(
            &ev::IS_END_DEVICE_CREATE,
            EntityRef::EndDevice {
                application_id: app,
                device_id: dev,
            }
            .to_ids(),
            &device,
        );
        Ok(Response::new(device))
    }

    async fn get(&self, request: Request<v3::GetEndDeviceRequest>) -> Reply<v3::EndDevice> {
        let s = &self.0;
        let (app, dev) = device_ids(request.get_ref().end_device_ids.as_ref(), "end_device_ids")?;
        s.need(
            &request,
            &Entity::Application(app.clone()),
            "application:devices:read",
        )
        .await?;
        let device = s
            .core
            .store
            .get_end_device(&app, &dev)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("end device `{app}/{dev}` not found")))?
            .value;
        Ok(Response::new(mask::select(
            device,
            request.get_ref().field_mask.as_ref(),
        )?))
    }

    async fn get_identifiers_for_euis(
        &self,
        request: Request<v3::GetEndDeviceIdentifiersForEuisRequest>,
    ) -> Reply<v3::EndDeviceIdentifiers> {
        let s = &self.0;
        s.caller(&request)?;
        let req = request.get_ref();
        let join = eui_field("join_eui", &req.join_eui, true)?.expect("required");
        let dev = eui_field("dev_eui", &req.dev_eui, true)?.expect("required");
        let not_found = || {
            Status::not_found(format!(
                "no end device with JoinEUI {} and DevEUI {}",
                hex::encode(join),
                hex::encode(dev)
            ))
        };
        let ids = s
            .core
            .device_by_euis(join, dev)
            .await
            .map_err(store_status)?
            .ok_or_else(not_found)?;
        let app = ids
            .application_ids
            .clone()
            .unwrap_or_default()
            .application_id;
        s.need(
            &request,
            &Entity::Application(app),
            "application:devices:read",
        )
        .await?;
        Ok(Response::new(ids))
    }

    async fn list(&self, request: Request<v3::ListEndDevicesRequest>) -> Reply<v3::EndDevices> {
        let s = &self.0;
        let req = request.get_ref();
        let app = app_id(
            req.application_ids.as_ref(),
            "application_ids.application_id",
        )?;
        s.need(
            &request,
            &Entity::Application(app.clone()),
            "application:devices:read",
        )
        .await?;
        let store = &s.core.store;
        let total = store.count_end_devices(&app).await.map_err(store_status)?;
        let limit = s.page_size(req.limit);
        // Walk the cursor to the requested page.
        let mut skip = (req.page.max(1) as usize - 1).saturating_mul(limit);
        let mut after: Option<String> = None;
        let mut end_devices = Vec::new();
        loop {
            let page = store
                .list_end_devices(&app, after.as_deref(), limit.max(1))
                .await
                .map_err(store_status)?;
            for d in page.items {
                if skip > 0 {
                    skip -= 1;
                } else if end_devices.len() < limit {
                    end_devices.push(mask::select(d.value, req.field_mask.as_ref())?);
                }
            }
            match page.next {
                Some(n) if end_devices.len() < limit => after = Some(n),
                _ => break,
            }
        }
        Ok(Response::new(v3::EndDevices { end_devices, total }))
    }

    async fn update(&self, request: Request<v3::UpdateEndDeviceRequest>) -> Reply<v3::EndDevice> {
        let s = &self.0;
        let req = request.get_ref();
        let update = req.end_device.clone().unwrap_or_default();
        let (app, dev) = device_ids(update.ids.as_ref(), "end_device.ids")?;
        s.need(
            &request,
            &Entity::Application(app.clone()),
            "application:devices:write",
        )
        .await?;
        let update = registry_part(update)?;
        let current = s
            .core
            .store
            .get_end_device(&app, &dev)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("end device `{app}/{dev}` not found")))?;
        let mut device = mask::merge(
            current.value,
            &update,
            req.field_mask.as_ref(),
            NOT_REGISTRY,
        )?;
        device.updated_at = Some(Timestamp::now());
        s.core
            .store
            .update_end_device(&device, Some(current.version))
            .await
            .map_err(store_status)?;
        s.publish(
            &ev::IS_END_DEVICE_UPDATE,
            EntityRef::EndDevice {
                application_id: app,
                device_id: dev,
            }
            .to_ids(),
            &device,
        );
        Ok(Response::new(device))
    }

    async fn delete(&self, request: Request<v3::EndDeviceIdentifiers>) -> Reply<Empty> {
        let s = &self.0;
        let (app, dev) = device_ids(Some(request.get_ref()), "end_device_ids")?;
        s.need(
            &request,
            &Entity::Application(app.clone()),
            "application:devices:write",
        )
        .await?;
        let current = s
            .core
            .store
            .get_end_device(&app, &dev)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("end device `{app}/{dev}` not found")))?;
        s.core
            .store
            .delete_end_device(&app, &dev, Some(current.version))
            .await
            .map_err(store_status)?;
        let ids = current.value.ids.unwrap_or_default();
        s.publish(
            &ev::IS_END_DEVICE_DELETE,
            EntityRef::EndDevice {
                application_id: app,
                device_id: dev,
            }
            .to_ids(),
            &ids,
        );
        Ok(Response::new(Empty {}))
    }
}

// ---- entity access ----

/// `tern.v3.EntityAccess`.
pub(crate) struct Access(pub Svc);

/// The entity of a request, and the name of the kind for rights (`application`, ...).
fn entity_of(ids: Option<&v3::EntityIdentifiers>) -> Result<(Entity, &'static str), Status> {
    let ids = ids
        .and_then(|i| i.ids.as_ref())
        .ok_or_else(|| Status::invalid_argument("entity_ids: required"))?;
    Ok(match ids {
        EntityIds::ApplicationIds(a) => {
            check_id(
                "entity_ids.application_ids.application_id",
                &a.application_id,
            )?;
            (Entity::Application(a.application_id.clone()), "application")
        }
        EntityIds::GatewayIds(g) => {
            check_id("entity_ids.gateway_ids.gateway_id", &g.gateway_id)?;
            (Entity::Gateway(g.gateway_id.clone()), "gateway")
        }
        EntityIds::OrganizationIds(o) => {
            check_id(
                "entity_ids.organization_ids.organization_id",
                &o.organization_id,
            )?;
            (
                Entity::Organization(o.organization_id.clone()),
                "organization",
            )
        }
        EntityIds::UserIds(u) => {
            check_id("entity_ids.user_ids.user_id", &u.user_id)?;
            (Entity::User(u.user_id.clone()), "user")
        }
        EntityIds::DeviceIds(_) => {
            return Err(Status::invalid_argument(
                "entity_ids: end devices have no API keys or collaborators; use their application",
            ));
        }
    })
}

impl Access {
    async fn entity_exists(&self, entity: &Entity) -> Result<(), Status> {
        let store = &self.0.core.store;
        let found = match entity {
            Entity::Application(id) => store
                .get_application(id)
                .await
                .map_err(store_status)?
                .is_some(),
            Entity::Gateway(id) => store.get_gateway(id).await.map_err(store_status)?.is_some(),
            Entity::Organization(id) => store
                .get_organization(id)
                .await
                .map_err(store_status)?
                .is_some(),
            Entity::User(id) => store.get_user(id).await.map_err(store_status)?.is_some(),
        };
        if found {
            Ok(())
        } else {
            Err(Status::not_found(format!("{entity} not found")))
        }
    }

    fn key_event(
        &self,
        def: &tern_events::Definition<v3::ApiKey>,
        entity: &Entity,
        key: &v3::ApiKey,
    ) {
        self.0
            .publish(def, to_ref(entity).to_ids(), &strip_key(key.clone()));
    }
}

fn requested_rights(field: &str, rights: &[i32]) -> Result<BTreeSet<String>, Status> {
    if rights.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: at least one right is needed"
        )));
    }
    rights::strings(field, rights).map_err(Status::invalid_argument)
}

#[tonic::async_trait]
impl v3::entity_access_server::EntityAccess for Access {
    async fn list_rights(&self, request: Request<v3::EntityIdentifiers>) -> Reply<v3::Rights> {
        let s = &self.0;
        let caller = s.caller(&request)?;
        let (entity, kind) = entity_of(Some(request.get_ref()))?;
        s.need(&request, &entity, &format!("{kind}:info")).await?;
        let rights = s.rights_of(&caller, &entity).await?;
        Ok(Response::new(v3::Rights {
            rights: rights::enums(&rights),
        }))
    }

    async fn create_api_key(&self, request: Request<v3::CreateApiKeyRequest>) -> Reply<v3::ApiKey> {
        let s = &self.0;
        let caller = s.caller(&request)?;
        let req = request.get_ref();
        let (entity, kind) = entity_of(req.entity_ids.as_ref())?;
        s.need(&request, &entity, &format!("{kind}:settings:api-keys"))
            .await?;
        let wanted = requested_rights("rights", &req.rights)?;
        s.need_all(&caller, &entity, &wanted).await?;
        self.entity_exists(&entity).await?;
        if let Some(t) = req.expires_at
            && t <= Timestamp::now()
        {
            return Err(Status::invalid_argument("expires_at: in the past"));
        }
        let (key, token) = crate::admin::new_api_key(
            &s.core,
            &to_ref(&entity),
            &req.name,
            &req.rights,
            req.expires_at,
        )
        .await?;
        self.key_event(&ev::IS_API_KEY_CREATE, &entity, &key);
        let mut shown = strip_key(key);
        shown.key = token;
        Ok(Response::new(shown))
    }

    async fn list_api_keys(&self, request: Request<v3::ListEntityRequest>) -> Reply<v3::ApiKeys> {
        let s = &self.0;
        let req = request.get_ref();
        let (entity, kind) = entity_of(req.entity_ids.as_ref())?;
        s.need(&request, &entity, &format!("{kind}:settings:api-keys"))
            .await?;
        let keys = s
            .core
            .store
            .list_api_keys(&to_ref(&entity))
            .await
            .map_err(store_status)?;
        let total = keys.len() as u64;
        let api_keys = paginate(keys, s.page_size(req.limit), req.page)
            .into_iter()
            .map(|k| strip_key(k.value))
            .collect();
        Ok(Response::new(v3::ApiKeys { api_keys, total }))
    }

    async fn get_api_key(&self, request: Request<v3::ApiKeyRequest>) -> Reply<v3::ApiKey> {
        let s = &self.0;
        let req = request.get_ref();
        let (entity, kind) = entity_of(req.entity_ids.as_ref())?;
        s.need(&request, &entity, &format!("{kind}:settings:api-keys"))
            .await?;
        let key = s
            .core
            .store
            .get_api_key(&req.key_id)
            .await
            .map_err(store_status)?
            .filter(|k| k.value.entity == to_ref(&entity))
            .ok_or_else(|| {
                Status::not_found(format!("API key {:?} of {entity} not found", req.key_id))
            })?;
        Ok(Response::new(strip_key(key.value.api_key)))
    }

    async fn update_api_key(&self, request: Request<v3::UpdateApiKeyRequest>) -> Reply<v3::ApiKey> {
        let s = &self.0;
        let caller = s.caller(&request)?;
        let req = request.get_ref();
        let (entity, kind) = entity_of(req.entity_ids.as_ref())?;
        s.need(&request, &entity, &format!("{kind}:settings:api-keys"))
            .await?;
        let update = req.api_key.clone().unwrap_or_default();
        let mask = req.field_mask.clone().unwrap_or_default();
        for p in &mask.paths {
            if !["name", "rights", "expires_at"].contains(&p.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "field_mask: {p:?} cannot be written; use name, rights, expires_at"
                )));
            }
        }
        if mask.paths.is_empty() {
            return Err(Status::invalid_argument(
                "field_mask: required, name the fields to write",
            ));
        }
        if mask.covers("rights") {
            let wanted = requested_rights("api_key.rights", &update.rights)?;
            s.need_all(&caller, &entity, &wanted).await?;
        }
        let current = s
            .core
            .store
            .get_api_key(&update.id)
            .await
            .map_err(store_status)?
            .filter(|k| k.value.entity == to_ref(&entity))
            .ok_or_else(|| {
                Status::not_found(format!("API key {:?} of {entity} not found", update.id))
            })?;
        let mut key = current.value.api_key;
        if mask.covers("name") {
            key.name = update.name.clone();
        }
        if mask.covers("rights") {
            key.rights = update.rights.clone();
        }
        if mask.covers("expires_at") {
            key.expires_at = update.expires_at;
        }
        key.updated_at = Some(Timestamp::now());
        s.core
            .store
            .update_api_key(&to_ref(&entity), &key, Some(current.version))
            .await
            .map_err(store_status)?;
        self.key_event(&ev::IS_API_KEY_UPDATE, &entity, &key);
        Ok(Response::new(strip_key(key)))
    }

    async fn delete_api_key(&self, request: Request<v3::ApiKeyRequest>) -> Reply<Empty> {
        let s = &self.0;
        let req = request.get_ref();
        let (entity, kind) = entity_of(req.entity_ids.as_ref())?;
        s.need(&request, &entity, &format!("{kind}:settings:api-keys"))
            .await?;
        s.core
            .store
            .delete_api_key(&to_ref(&entity), &req.key_id)
            .await
            .map_err(store_status)?;
        let key = v3::ApiKey {
            id: req.key_id.clone(),
            ..Default::default()
        };
        self.key_event(&ev::IS_API_KEY_DELETE, &entity, &key);
        Ok(Response::new(Empty {}))
    }

    async fn set_collaborator(&self, request: Request<v3::SetCollaboratorRequest>) -> Reply<Empty> {
        let s = &self.0;
        let caller = s.caller(&request)?;
        let req = request.get_ref();
        let (entity, _) = entity_of(req.entity_ids.as_ref())?;
        let right = match &entity {
            Entity::Application(_) => "application:settings:collaborators",
            Entity::Gateway(_) => "gateway:settings:collaborators",
            Entity::Organization(_) => "organization:settings:members",
            Entity::User(_) => {
                return Err(Status::invalid_argument(
                    "entity_ids: users have no collaborators",
                ));
            }
        };
        s.need(&request, &entity, right).await?;
        let collaborator = req
            .collaborator
            .clone()
            .ok_or_else(|| Status::invalid_argument("collaborator: required"))?;
        let account = account_of(collaborator.ids.as_ref())?
            .ok_or_else(|| Status::invalid_argument("collaborator.ids: required"))?;
        if matches!(
            (&entity, &account),
            (Entity::Organization(_), AccountRef::Organization(_))
        ) {
            return Err(Status::invalid_argument(
                "collaborator.ids: members of an organization are users",
            ));
        }
        if !collaborator.rights.is_empty() {
            let wanted = requested_rights("collaborator.rights", &collaborator.rights)?;
            s.need_all(&caller, &entity, &wanted).await?;
        }
        self.entity_exists(&entity).await?;
        self.entity_exists(&account_entity(&account))
            .await
            .map_err(|e| Status::not_found(format!("collaborator.ids: {}", e.message())))?;
        s.core
            .store
            .set_collaborator(
                &to_ref(&entity),
                &v3::Collaborator {
                    ids: Some(account.to_ids()),
                    rights: collaborator.rights,
                },
            )
            .await
            .map_err(store_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn list_collaborators(
        &self,
        request: Request<v3::ListEntityRequest>,
    ) -> Reply<v3::Collaborators> {
        let s = &self.0;
        let req = request.get_ref();
        let (entity, kind) = entity_of(req.entity_ids.as_ref())?;
        if matches!(entity, Entity::User(_)) {
            return Err(Status::invalid_argument(
                "entity_ids: users have no collaborators",
            ));
        }
        s.need(&request, &entity, &format!("{kind}:info")).await?;
        let all = s
            .core
            .store
            .list_collaborators(&to_ref(&entity))
            .await
            .map_err(store_status)?;
        let total = all.len() as u64;
        let collaborators = paginate(all, s.page_size(req.limit), req.page);
        Ok(Response::new(v3::Collaborators {
            collaborators,
            total,
        }))
    }

    async fn get_rights_on(
        &self,
        request: Request<v3::GetRightsOnRequest>,
    ) -> Reply<v3::GetRightsOnResponse> {
        let s = &self.0;
        let caller = s.caller(&request)?;
        caller
            .require_cluster("tern.v3.EntityAccess/GetRightsOn")
            .map_err(|e| s.deny(e))?;
        let req = request.get_ref();
        let holder = req
            .holder_ids
            .as_ref()
            .map(EntityRef::try_from)
            .transpose()
            .map_err(store_status)?
            .and_then(|e| to_entity(&e))
            .ok_or_else(|| Status::invalid_argument("holder_ids: required (not an end device)"))?;
        let target = req
            .entity_ids
            .as_ref()
            .map(EntityRef::try_from)
            .transpose()
            .map_err(store_status)?
            .and_then(|e| to_entity(&e))
            .ok_or_else(|| Status::invalid_argument("entity_ids: required (not an end device)"))?;
        let held: BTreeSet<String> = req.holder_rights.iter().cloned().collect();
        let rights = s
            .core
            .rights_on(&holder, &held, &target)
            .await
            .map_err(store_status)?;
        Ok(Response::new(v3::GetRightsOnResponse {
            rights: rights.into_iter().collect(),
        }))
    }
}

// ---- auth ----

/// `tern.v3.Auth`.
pub(crate) struct AuthSvc(pub Svc);

#[tonic::async_trait]
impl v3::auth_server::Auth for AuthSvc {
    async fn login(&self, request: Request<v3::LoginRequest>) -> Reply<v3::Tokens> {
        let s = &self.0;
        if !s.state.readiness().is_ready() {
            return Err(Status::unavailable("the Identity Server is not started"));
        }
        let req = request.get_ref();
        tokens::login(&s.core, &req.user_id, &req.password)
            .await
            .map(Response::new)
            .map_err(|e| {
                s.core.metrics.reject("login_failed");
                e.into()
            })
    }

    async fn refresh_token(&self, request: Request<v3::RefreshTokenRequest>) -> Reply<v3::Tokens> {
        let s = &self.0;
        if !s.state.readiness().is_ready() {
            return Err(Status::unavailable("the Identity Server is not started"));
        }
        tokens::refresh(&s.core, &request.get_ref().refresh_token)
            .await
            .map(Response::new)
            .map_err(|e| {
                s.core.metrics.reject("refresh_failed");
                e.into()
            })
    }

    async fn revoke_token(&self, request: Request<v3::RevokeTokenRequest>) -> Reply<Empty> {
        let s = &self.0;
        if !s.state.readiness().is_ready() {
            return Err(Status::unavailable("the Identity Server is not started"));
        }
        tokens::revoke(&s.core, &request.get_ref().refresh_token)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(Empty {}))
    }

    async fn get_auth_info(&self, request: Request<Empty>) -> Reply<v3::AuthInfo> {
        let s = &self.0;
        let caller = s.caller(&request)?;
        let Caller::ApiKey(info) = caller else {
            return Ok(Response::new(v3::AuthInfo {
                rights: vec![v3::Right::All as i32],
                is_admin: true,
                credential_id: "cluster".into(),
                right_names: vec!["all".into()],
                ..Default::default()
            }));
        };
        let api_key = if info.credential_id.is_empty() {
            None
        } else {
            s.core
                .store
                .get_api_key(&info.credential_id)
                .await
                .map_err(store_status)?
                .map(|k| strip_key(k.value.api_key))
        };
        Ok(Response::new(v3::AuthInfo {
            entity_ids: Some(to_ref(&info.entity).to_ids()),
            api_key,
            rights: rights::enums(&info.rights),
            is_admin: info.is_admin,
            credential_id: info.credential_id.clone(),
            right_names: info.rights.iter().cloned().collect(),
        }))
    }
}
