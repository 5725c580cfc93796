//! The storage conformance suite: every case runs against both backends.
//!
//! Embedded cases use a fresh temporary data directory each. PostgreSQL cases need
//! `TERN_TEST_POSTGRES_URL` (e.g. from `scripts/test-postgres.sh start`) and use a fresh
//! schema each, dropped at the end, so they run in parallel. Without the URL they fail when
//! `CI` is set and are skipped loudly otherwise.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use tempfile::TempDir;
use tern_store::{Backend, Store, StoreConfig};

/// Where one test case keeps its data, so it can open the same store several times.
pub struct Harness {
    dir: TempDir,
    config: StoreConfig,
    /// PostgreSQL: the URL and the case's schema, to drop at the end.
    postgres: Option<(String, String)>,
}

impl Harness {
    fn embedded() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            config: StoreConfig::default(),
            postgres: None,
        }
    }

    async fn postgres(case: &str) -> Option<Self> {
        let url = match std::env::var("TERN_TEST_POSTGRES_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => {
                if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
                    panic!(
                        "TERN_TEST_POSTGRES_URL is not set but CI is: the PostgreSQL conformance \
                         suite must run in CI (export TERN_TEST_POSTGRES_URL=\"$(scripts/test-postgres.sh start)\")"
                    );
                }
                eprintln!(
                    "\n!!!!!!!! SKIPPED postgres::{case}: TERN_TEST_POSTGRES_URL is not set; \
                     run `export TERN_TEST_POSTGRES_URL=\"$(scripts/test-postgres.sh start)\"` !!!!!!!!\n"
                );
                return None;
            }
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let mut schema = format!(
            "t_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            case
        );
        schema.truncate(63);
        let mut config = StoreConfig {
            backend: Backend::Postgres,
            ..Default::default()
        };
        config.postgres.url = url.clone();
        config.postgres.schema = schema.clone();
        config.postgres.pool_size = 8;
        Some(Self {
            dir: tempfile::tempdir().expect("temp dir"),
            config,
            postgres: Some((url, schema)),
        })
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    async fn open(&self) -> Store {
        Store::open(&self.config, self.data_dir())
            .await
            .expect("open store")
    }

    async fn cleanup(self) {
        if let Some((url, schema)) = &self.postgres {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("connect for cleanup");
            let task = tokio::spawn(conn);
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .await
                .expect("drop test schema");
            drop(client);
            let _ = task.await;
        }
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::Harness::embedded();
                    super::cases::$name(&h).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(h) = super::Harness::postgres(stringify!($name)).await else {
                        return;
                    };
                    super::cases::$name(&h).await;
                    h.cleanup().await;
                }
            )*
        }
    };
}

conformance!(
    registry_crud_and_pages,
    registry_unique_constraints,
    api_keys_and_collaborators,
    ns_versions_and_conflicts,
    ns_dev_addr_candidates,
    ns_euis_and_delete_with_queue,
    dev_nonce_never_reused_survives_reopen,
    dev_nonce_strictly_increasing_survives_reopen,
    dev_nonce_atomic_between_processes,
    join_nonce_persists_and_overflows,
    join_nonce_atomic_between_processes,
    js_devices_and_session_keys,
    queue_operations,
    queue_atomic_between_processes,
    as_settings_and_devices,
    group_commit_many_writers_durable,
    group_commit_failed_write_is_isolated,
    failed_batch_changes_nothing,
    tracked_keys_read_as_untracked,
    scan_prefix_cursor_and_count,
    migrations_idempotent_and_concurrent,
    health_and_close,
);

mod cases {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use lorawan::{DevAddr, DevNonce, Eui64};
    use prost::Message;
    use tern_api::v3;
    use tern_store::kv::{Index, IndexEntry, Table};
    use tern_store::tables;
    use tern_store::*;

    use super::Harness;

    // ---- test data ----

    fn user(id: &str, email: &str) -> v3::User {
        v3::User {
            ids: Some(v3::UserIdentifiers {
                user_id: id.into(),
                ..Default::default()
            }),
            name: format!("User {id}"),
            primary_email_address: email.into(),
            ..Default::default()
        }
    }

    fn org(id: &str) -> v3::Organization {
        v3::Organization {
            ids: Some(v3::OrganizationIdentifiers {
                organization_id: id.into(),
            }),
            ..Default::default()
        }
    }

    fn app(id: &str) -> v3::Application {
        v3::Application {
            ids: Some(v3::ApplicationIdentifiers {
                application_id: id.into(),
            }),
            name: format!("App {id}"),
            ..Default::default()
        }
    }

    fn gateway(id: &str, eui: u64) -> v3::Gateway {
        v3::Gateway {
            ids: Some(v3::GatewayIdentifiers {
                gateway_id: id.into(),
                eui: Eui64::from_u64(eui).0.to_vec(),
            }),
            ..Default::default()
        }
    }

    fn ids(app: &str, dev: &str, join_eui: u64, dev_eui: u64) -> v3::EndDeviceIdentifiers {
        v3::EndDeviceIdentifiers {
            application_ids: Some(v3::ApplicationIdentifiers {
                application_id: app.into(),
            }),
            device_id: dev.into(),
            join_eui: if join_eui == 0 {
                vec![]
            } else {
                Eui64::from_u64(join_eui).0.to_vec()
            },
            dev_eui: if dev_eui == 0 {
                vec![]
            } else {
                Eui64::from_u64(dev_eui).0.to_vec()
            },
            dev_addr: vec![],
        }
    }

    fn device(app: &str, dev: &str, join_eui: u64, dev_eui: u64) -> v3::EndDevice {
        v3::EndDevice {
            ids: Some(ids(app, dev, join_eui, dev_eui)),
            name: dev.into(),
            ..Default::default()
        }
    }

    fn session(dev_addr: u32, f_cnt: u32) -> v3::Session {
        v3::Session {
            dev_addr: DevAddr::from_u32(dev_addr).0.to_vec(),
            last_f_cnt_up: f_cnt,
            ..Default::default()
        }
    }

    fn ns_device(
        app: &str,
        dev: &str,
        current: Option<u32>,
        pending: Option<u32>,
    ) -> NsDeviceRecord {
        NsDeviceRecord {
            device: Some(v3::EndDevice {
                session: current.map(|a| session(a, 0)),
                ..device(app, dev, 0, 0)
            }),
            pending_session: pending.map(|a| session(a, 0)),
            state: vec![],
        }
    }

    fn downlink(f_cnt: u32) -> v3::ApplicationDownlink {
        v3::ApplicationDownlink {
            f_port: 1,
            f_cnt,
            frm_payload: vec![f_cnt as u8],
            ..Default::default()
        }
    }

    fn f_cnt(r: &NsDeviceRecord) -> u32 {
        r.device
            .as_ref()
            .unwrap()
            .session
            .as_ref()
            .unwrap()
            .last_f_cnt_up
    }

    fn dev_ids(r: &Versioned<NsDeviceRecord>) -> String {
        r.value
            .device
            .as_ref()
            .unwrap()
            .ids
            .as_ref()
            .unwrap()
            .device_id
            .clone()
    }

    const JOIN_EUI: u64 = 0x70b3_d57e_d000_0000;

    // ---- registry ----

    pub async fn registry_crud_and_pages(h: &Harness) {
        let s = h.open().await;
        assert_eq!(
            s.create_user(&user("alice", "Alice@Example.com"))
                .await
                .unwrap(),
            1
        );
        let got = s.get_user("alice").await.unwrap().unwrap();
        assert_eq!(got.version, 1);
        assert_eq!(got.value.name, "User alice");
        let by_mail = s
            .get_user_by_email("alice@example.COM")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(by_mail.value, got.value);

        let mut changed = got.value.clone();
        changed.name = "Alice".into();
        assert_eq!(s.update_user(&changed, Some(1)).await.unwrap(), 2);
        let err = s.update_user(&changed, Some(1)).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Conflict {
                    what: "user",
                    expected: 1,
                    actual: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(s.update_user(&changed, None).await.unwrap(), 3);
        let err = s.update_user(&user("bob", ""), None).await.unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound { what: "user", .. }),
            "{err}"
        );

        s.create_organization(&org("acme")).await.unwrap();
        s.create_application(&app("app1")).await.unwrap();
        s.create_gateway(&gateway("gw1", 1)).await.unwrap();
        assert_eq!(
            s.get_gateway_by_eui(Eui64::from_u64(1))
                .await
                .unwrap()
                .unwrap()
                .value
                .ids
                .unwrap()
                .gateway_id,
            "gw1"
        );
        assert!(
            s.get_gateway_by_eui(Eui64::from_u64(2))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            s.get_organization("acme").await.unwrap().unwrap().version,
            1
        );

        // Devices: pages of an application, not of its neighbours.
        for i in 0..7 {
            s.create_end_device(&device("app1", &format!("dev{i}"), JOIN_EUI, 100 + i))
                .await
                .unwrap();
        }
        s.create_end_device(&device("app10", "other", JOIN_EUI, 99))
            .await
            .unwrap();
        assert_eq!(s.count_end_devices("app1").await.unwrap(), 7);
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = s
                .list_end_devices("app1", after.as_deref(), 3)
                .await
                .unwrap();
            assert!(page.items.len() <= 3);
            seen.extend(
                page.items
                    .into_iter()
                    .map(|d| d.value.ids.unwrap().device_id),
            );
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, (0..7).map(|i| format!("dev{i}")).collect::<Vec<_>>());
        let found = s
            .get_end_device_by_euis(Eui64::from_u64(JOIN_EUI), Eui64::from_u64(103))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.value.ids.unwrap().device_id, "dev3");

        // Deletes: with a stale version, then for real, then again.
        let err = s
            .delete_end_device("app1", "dev3", Some(9))
            .await
            .unwrap_err();
        assert!(err.is_conflict(), "{err}");
        s.delete_end_device("app1", "dev3", Some(1)).await.unwrap();
        assert!(s.get_end_device("app1", "dev3").await.unwrap().is_none());
        assert!(
            s.get_end_device_by_euis(Eui64::from_u64(JOIN_EUI), Eui64::from_u64(103))
                .await
                .unwrap()
                .is_none()
        );
        let err = s.delete_end_device("app1", "dev3", None).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        s.delete_user("alice", None).await.unwrap();
        assert!(
            s.get_user_by_email("alice@example.com")
                .await
                .unwrap()
                .is_none()
        );

        let apps = s.list_applications(None, 10).await.unwrap();
        assert_eq!(apps.items.len(), 1);
        assert_eq!(apps.next, None);
        assert_eq!(s.list_gateways(None, 10).await.unwrap().items.len(), 1);
        assert_eq!(s.list_organizations(None, 10).await.unwrap().items.len(), 1);
        assert_eq!(s.list_users(None, 10).await.unwrap().items.len(), 0);

        // Bad IDs are refused with the field named.
        let err = s.create_application(&app("")).await.unwrap_err();
        assert!(err.to_string().contains("ids.application_id"), "{err}");
        s.close().await.unwrap();
    }

    pub async fn registry_unique_constraints(h: &Harness) {
        let s = h.open().await;
        s.create_application(&app("app1")).await.unwrap();
        let err = s.create_application(&app("app1")).await.unwrap_err();
        assert_eq!(
            err,
            StoreError::AlreadyExists {
                what: "application",
                key: "app1".into()
            }
        );

        // Users and organizations share IDs.
        s.create_user(&user("acme", "a@x")).await.unwrap();
        let err = s.create_organization(&org("acme")).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::AlreadyExists {
                    what: "user or organization ID",
                    ..
                }
            ),
            "{err}"
        );
        let err = s.create_user(&user("bob", "A@X")).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::AlreadyExists {
                    what: "e-mail address",
                    ..
                }
            ),
            "{err}"
        );

        // Gateway EUIs.
        s.create_gateway(&gateway("gw1", 0xaa)).await.unwrap();
        let err = s.create_gateway(&gateway("gw2", 0xaa)).await.unwrap_err();
        assert_eq!(
            err,
            StoreError::AlreadyExists {
                what: "gateway EUI",
                key: "00000000000000aa".into()
            }
        );
        assert!(
            s.get_gateway("gw2").await.unwrap().is_none(),
            "failed create left a record"
        );
        // Changing the EUI frees the old one.
        s.update_gateway(&gateway("gw1", 0xbb), Some(1))
            .await
            .unwrap();
        s.create_gateway(&gateway("gw2", 0xaa)).await.unwrap();

        // (JoinEUI, DevEUI) is unique across applications; ABP devices without EUIs are not.
        s.create_end_device(&device("app1", "d1", JOIN_EUI, 1))
            .await
            .unwrap();
        let err = s
            .create_end_device(&device("app2", "d9", JOIN_EUI, 1))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::AlreadyExists {
                    what: "end device JoinEUI/DevEUI",
                    ..
                }
            ),
            "{err}"
        );
        s.create_end_device(&device("app2", "d9", JOIN_EUI + 1, 1))
            .await
            .unwrap();
        s.create_end_device(&device("app1", "abp1", 0, 0))
            .await
            .unwrap();
        s.create_end_device(&device("app1", "abp2", 0, 0))
            .await
            .unwrap();
        let err = s
            .create_end_device(&device("app1", "d1", JOIN_EUI, 2))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::AlreadyExists {
                    what: "end device",
                    ..
                }
            ),
            "{err}"
        );
        // An update that would steal another device's EUIs fails and changes nothing.
        let err = s
            .update_end_device(&device("app2", "d9", JOIN_EUI, 1), None)
            .await
            .unwrap_err();
        assert!(err.is_already_exists(), "{err}");
        let d9 = s.get_end_device("app2", "d9").await.unwrap().unwrap();
        assert_eq!(d9.version, 1);
        assert_eq!(
            d9.value.ids.unwrap().join_eui,
            Eui64::from_u64(JOIN_EUI + 1).0.to_vec()
        );
        // Deleting frees them.
        s.delete_end_device("app1", "d1", None).await.unwrap();
        s.update_end_device(&device("app2", "d9", JOIN_EUI, 1), None)
            .await
            .unwrap();
        // Bad EUI lengths are refused with the field named.
        let mut bad = device("app1", "bad", JOIN_EUI, 5);
        bad.ids.as_mut().unwrap().dev_eui = vec![1, 2, 3];
        let err = s.create_end_device(&bad).await.unwrap_err();
        assert!(err.to_string().contains("ids.dev_eui"), "{err}");
        s.close().await.unwrap();
    }

    pub async fn api_keys_and_collaborators(h: &Harness) {
        let s = h.open().await;
        let app1 = EntityRef::Application("app1".into());
        let app2 = EntityRef::Application("app2".into());
        let key = |id: &str| v3::ApiKey {
            id: id.into(),
            key: format!("hash-of-{id}"),
            name: id.into(),
            rights: vec![v3::Right::ApplicationInfo as i32],
            ..Default::default()
        };
        s.create_api_key(&app1, &key("K1")).await.unwrap();
        s.create_api_key(&app1, &key("K2")).await.unwrap();
        s.create_api_key(&app2, &key("K3")).await.unwrap();
        let err = s.create_api_key(&app2, &key("K1")).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::AlreadyExists {
                    what: "API key",
                    ..
                }
            ),
            "{err}"
        );

        let got = s.get_api_key("K1").await.unwrap().unwrap();
        assert_eq!(got.value.entity, app1);
        assert_eq!(got.value.api_key.key, "hash-of-K1");
        let ids: Vec<String> = s
            .list_api_keys(&app1)
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.value.id)
            .collect();
        assert_eq!(ids, vec!["K1", "K2"]);

        let mut renamed = key("K1");
        renamed.name = "renamed".into();
        let err = s.update_api_key(&app2, &renamed, None).await.unwrap_err();
        assert!(
            err.is_not_found(),
            "another entity's key must look absent: {err}"
        );
        assert_eq!(s.update_api_key(&app1, &renamed, Some(1)).await.unwrap(), 2);
        assert!(
            s.update_api_key(&app1, &renamed, Some(1))
                .await
                .unwrap_err()
                .is_conflict()
        );
        assert!(
            s.delete_api_key(&app2, "K1")
                .await
                .unwrap_err()
                .is_not_found()
        );
        s.delete_api_key(&app1, "K1").await.unwrap();
        assert!(s.get_api_key("K1").await.unwrap().is_none());

        // Collaborators.
        let alice = AccountRef::User("alice".into());
        let acme = AccountRef::Organization("acme".into());
        let collab = |a: &AccountRef, rights: Vec<i32>| v3::Collaborator {
            ids: Some(a.to_ids()),
            rights,
        };
        let all = v3::Right::ApplicationAll as i32;
        let info = v3::Right::ApplicationInfo as i32;
        s.set_collaborator(&app1, &collab(&alice, vec![all]))
            .await
            .unwrap();
        s.set_collaborator(&app1, &collab(&acme, vec![info]))
            .await
            .unwrap();
        s.set_collaborator(&app2, &collab(&alice, vec![info]))
            .await
            .unwrap();
        s.set_collaborator(&app1, &collab(&alice, vec![all, info]))
            .await
            .unwrap();
        assert_eq!(
            s.get_collaborator(&app1, &alice)
                .await
                .unwrap()
                .unwrap()
                .rights,
            vec![all, info]
        );
        assert_eq!(s.list_collaborators(&app1).await.unwrap().len(), 2);
        let mut memberships = s.list_memberships(&alice).await.unwrap();
        memberships.sort_by_key(|m| format!("{:?}", m.entity));
        assert_eq!(
            memberships,
            vec![
                Membership {
                    entity: app1.clone(),
                    rights: vec![all, info]
                },
                Membership {
                    entity: app2.clone(),
                    rights: vec![info]
                },
            ]
        );
        // No rights: removed.
        s.set_collaborator(&app1, &collab(&acme, vec![]))
            .await
            .unwrap();
        assert!(s.get_collaborator(&app1, &acme).await.unwrap().is_none());
        assert!(s.list_memberships(&acme).await.unwrap().is_empty());

        // Deleting an entity's access removes its keys and collaborators only.
        assert_eq!(s.delete_entity_access(&app1).await.unwrap(), 2);
        assert!(s.list_api_keys(&app1).await.unwrap().is_empty());
        assert!(s.list_collaborators(&app1).await.unwrap().is_empty());
        assert_eq!(s.list_api_keys(&app2).await.unwrap().len(), 1);
        assert_eq!(s.list_memberships(&alice).await.unwrap().len(), 1);
        s.close().await.unwrap();
    }

    // ---- network server ----

    pub async fn ns_versions_and_conflicts(h: &Harness) {
        let s = h.open().await;
        let mut rec = ns_device("app1", "d1", Some(0x2600_0001), None);
        assert_eq!(s.set_ns_device(&rec, Expect::Absent).await.unwrap(), 1);
        let err = s.set_ns_device(&rec, Expect::Absent).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::AlreadyExists {
                    what: "NS end device",
                    ..
                }
            ),
            "{err}"
        );
        rec.device
            .as_mut()
            .unwrap()
            .session
            .as_mut()
            .unwrap()
            .last_f_cnt_up = 10;
        assert_eq!(s.set_ns_device(&rec, Expect::Version(1)).await.unwrap(), 2);
        let err = s.set_ns_device(&rec, Expect::Version(1)).await.unwrap_err();
        assert_eq!(
            err,
            StoreError::Conflict {
                what: "NS end device",
                key: "app1/d1".into(),
                expected: 1,
                actual: 2
            }
        );
        // The hot path has the same check.
        let err = s.record_uplink(&rec, 1).await.unwrap_err();
        assert!(err.is_conflict(), "{err}");
        assert_eq!(s.record_uplink(&rec, 2).await.unwrap(), 3);
        let got = s.get_ns_device("app1", "d1").await.unwrap().unwrap();
        assert_eq!((got.version, f_cnt(&got.value)), (3, 10));
        let err = s
            .set_ns_device(&ns_device("app1", "nope", None, None), Expect::Exists)
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err}");
        let page = s.list_ns_devices("app1", None, 10).await.unwrap();
        assert_eq!(page.items.len(), 1);
        s.close().await.unwrap();
    }

    pub async fn ns_dev_addr_candidates(h: &Harness) {
        let s = h.open().await;
        let x = 0x2600_00aa;
        let y = 0x2600_00bb;
        let z = 0x2600_00cc;
        s.set_ns_device(&ns_device("app1", "a", Some(x), None), Expect::Absent)
            .await
            .unwrap();
        s.set_ns_device(&ns_device("app1", "b", Some(y), Some(x)), Expect::Absent)
            .await
            .unwrap();
        s.set_ns_device(&ns_device("app2", "c", Some(y), None), Expect::Absent)
            .await
            .unwrap();
        // Current and pending on the same address: one candidate, not two.
        s.set_ns_device(&ns_device("app2", "d", Some(z), Some(z)), Expect::Absent)
            .await
            .unwrap();

        let names = |v: Vec<Versioned<NsDeviceRecord>>| v.iter().map(dev_ids).collect::<Vec<_>>();
        assert_eq!(
            names(
                s.ns_devices_by_dev_addr(DevAddr::from_u32(x))
                    .await
                    .unwrap()
            ),
            ["a", "b"]
        );
        assert_eq!(
            names(
                s.ns_devices_by_dev_addr(DevAddr::from_u32(y))
                    .await
                    .unwrap()
            ),
            ["b", "c"]
        );
        assert_eq!(
            names(
                s.ns_devices_by_dev_addr(DevAddr::from_u32(z))
                    .await
                    .unwrap()
            ),
            ["d"]
        );
        assert!(
            s.ns_devices_by_dev_addr(DevAddr::from_u32(1))
                .await
                .unwrap()
                .is_empty()
        );

        // b's pending session becomes current: x no longer finds it.
        let b = s.get_ns_device("app1", "b").await.unwrap().unwrap();
        let mut next = b.value.clone();
        next.device.as_mut().unwrap().session = next.pending_session.take();
        s.record_uplink(&next, b.version).await.unwrap();
        assert_eq!(
            names(
                s.ns_devices_by_dev_addr(DevAddr::from_u32(x))
                    .await
                    .unwrap()
            ),
            ["a", "b"]
        );
        assert_eq!(
            names(
                s.ns_devices_by_dev_addr(DevAddr::from_u32(y))
                    .await
                    .unwrap()
            ),
            ["c"]
        );
        // a moves to z.
        let a = s.get_ns_device("app1", "a").await.unwrap().unwrap();
        let mut next = a.value.clone();
        next.device.as_mut().unwrap().session = Some(session(z, 0));
        s.set_ns_device(&next, Expect::Version(a.version))
            .await
            .unwrap();
        assert_eq!(
            names(
                s.ns_devices_by_dev_addr(DevAddr::from_u32(x))
                    .await
                    .unwrap()
            ),
            ["b"]
        );
        assert_eq!(
            names(
                s.ns_devices_by_dev_addr(DevAddr::from_u32(z))
                    .await
                    .unwrap()
            ),
            ["a", "d"]
        );
        s.close().await.unwrap();
    }

    pub async fn ns_euis_and_delete_with_queue(h: &Harness) {
        let s = h.open().await;
        let mut rec = ns_device("app1", "otaa", None, None);
        rec.device.as_mut().unwrap().ids = Some(ids("app1", "otaa", JOIN_EUI, 7));
        s.set_ns_device(&rec, Expect::Absent).await.unwrap();
        let mut twin = ns_device("app1", "twin", None, None);
        twin.device.as_mut().unwrap().ids = Some(ids("app1", "twin", JOIN_EUI, 7));
        assert!(
            s.set_ns_device(&twin, Expect::Absent)
                .await
                .unwrap_err()
                .is_already_exists()
        );
        let found = s
            .ns_device_by_euis(Eui64::from_u64(JOIN_EUI), Eui64::from_u64(7))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(dev_ids(&found), "otaa");

        s.push_downlinks(QueueOwner::NetworkServer, "app1", "otaa", &[downlink(1)])
            .await
            .unwrap();
        s.push_downlinks(
            QueueOwner::ApplicationServer,
            "app1",
            "otaa",
            &[downlink(9)],
        )
        .await
        .unwrap();
        let err = s
            .delete_ns_device("app1", "otaa", Expect::Version(5))
            .await
            .unwrap_err();
        assert!(err.is_conflict(), "{err}");
        assert_eq!(
            s.list_downlinks(QueueOwner::NetworkServer, "app1", "otaa")
                .await
                .unwrap()
                .len(),
            1
        );
        s.delete_ns_device("app1", "otaa", Expect::Exists)
            .await
            .unwrap();
        assert!(s.get_ns_device("app1", "otaa").await.unwrap().is_none());
        assert!(
            s.list_downlinks(QueueOwner::NetworkServer, "app1", "otaa")
                .await
                .unwrap()
                .is_empty()
        );
        // The AS's queue is the AS's.
        assert_eq!(
            s.list_downlinks(QueueOwner::ApplicationServer, "app1", "otaa")
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(
            s.ns_device_by_euis(Eui64::from_u64(JOIN_EUI), Eui64::from_u64(7))
                .await
                .unwrap()
                .is_none()
        );
        s.close().await.unwrap();
    }

    // ---- join server ----

    pub async fn dev_nonce_never_reused_survives_reopen(h: &Harness) {
        let (j, d) = (Eui64::from_u64(JOIN_EUI), Eui64::from_u64(1));
        let mode = DevNonceMode::NeverReused;
        let s = h.open().await;
        for n in [5, 3, 7, 0, 65535] {
            s.check_and_record_dev_nonce(j, d, DevNonce(n), mode)
                .await
                .unwrap();
        }
        let err = s
            .check_and_record_dev_nonce(j, d, DevNonce(5), mode)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            StoreError::DevNonce {
                join_eui: j,
                dev_eui: d,
                nonce: DevNonce(5),
                reason: DevNonceRejection::Reused
            }
        );
        assert!(err.to_string().contains("already used"), "{err}");
        // Another device has its own history.
        s.check_and_record_dev_nonce(j, Eui64::from_u64(2), DevNonce(5), mode)
            .await
            .unwrap();
        s.close().await.unwrap();

        let s = h.open().await;
        for n in [3, 7, 0, 65535] {
            let err = s
                .check_and_record_dev_nonce(j, d, DevNonce(n), mode)
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::DevNonce {
                        reason: DevNonceRejection::Reused,
                        ..
                    }
                ),
                "{err}"
            );
        }
        s.check_and_record_dev_nonce(j, d, DevNonce(4), mode)
            .await
            .unwrap();
        // Deleting the JS device forgets the history.
        s.delete_js_device(j, d).await.unwrap();
        s.check_and_record_dev_nonce(j, d, DevNonce(5), mode)
            .await
            .unwrap();
        s.close().await.unwrap();
    }

    pub async fn dev_nonce_strictly_increasing_survives_reopen(h: &Harness) {
        let (j, d) = (Eui64::from_u64(JOIN_EUI), Eui64::from_u64(1));
        let mode = DevNonceMode::StrictlyIncreasing;
        let s = h.open().await;
        s.check_and_record_dev_nonce(j, d, DevNonce(0), mode)
            .await
            .unwrap();
        s.check_and_record_dev_nonce(j, d, DevNonce(1), mode)
            .await
            .unwrap();
        s.check_and_record_dev_nonce(j, d, DevNonce(10), mode)
            .await
            .unwrap();
        for n in [10, 9, 0] {
            let err = s
                .check_and_record_dev_nonce(j, d, DevNonce(n), mode)
                .await
                .unwrap_err();
            assert_eq!(
                err,
                StoreError::DevNonce {
                    join_eui: j,
                    dev_eui: d,
                    nonce: DevNonce(n),
                    reason: DevNonceRejection::NotIncreasing { last: DevNonce(10) }
                }
            );
        }
        s.close().await.unwrap();
        let s = h.open().await;
        let err = s
            .check_and_record_dev_nonce(j, d, DevNonce(10), mode)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("last accepted DevNonce 10"),
            "{err}"
        );
        s.check_and_record_dev_nonce(j, d, DevNonce(11), mode)
            .await
            .unwrap();
        s.close().await.unwrap();
    }

    pub async fn dev_nonce_atomic_between_processes(h: &Harness) {
        // Two stores on the same database stand for two processes.
        let (a, b) = (h.open().await, h.open().await);
        let (j, d) = (Eui64::from_u64(JOIN_EUI), Eui64::from_u64(1));
        for mode in [DevNonceMode::NeverReused, DevNonceMode::StrictlyIncreasing] {
            let nonce = if mode == DevNonceMode::NeverReused {
                100
            } else {
                200
            };
            let mut tasks = Vec::new();
            for i in 0..16 {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                tasks.push(tokio::spawn(async move {
                    s.check_and_record_dev_nonce(j, d, DevNonce(nonce), mode)
                        .await
                }));
            }
            let mut accepted = 0;
            for t in tasks {
                match t.await.unwrap() {
                    Ok(()) => accepted += 1,
                    Err(StoreError::DevNonce { .. }) => {}
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            assert_eq!(
                accepted, 1,
                "exactly one join with the same DevNonce wins ({mode:?})"
            );
        }
        a.close().await.unwrap();
        b.close().await.unwrap();
    }

    /// The JS's JoinNonce record, encoded by hand: field 1, the last nonce handed out.
    #[derive(Clone, PartialEq, Message)]
    struct JoinNonceRecord {
        #[prost(uint32, tag = "1")]
        last: u32,
    }

    pub async fn join_nonce_persists_and_overflows(h: &Harness) {
        let (j, d) = (Eui64::from_u64(JOIN_EUI), Eui64::from_u64(1));
        let s = h.open().await;
        for want in 1..=3 {
            assert_eq!(s.next_join_nonce(j, d).await.unwrap().get(), want);
        }
        assert_eq!(
            s.next_join_nonce(j, Eui64::from_u64(2))
                .await
                .unwrap()
                .get(),
            1
        );
        s.close().await.unwrap();
        let s = h.open().await;
        assert_eq!(s.next_join_nonce(j, d).await.unwrap().get(), 4);
        // Deleting the device keeps the counter.
        s.delete_js_device(j, d).await.unwrap();
        assert_eq!(s.next_join_nonce(j, d).await.unwrap().get(), 5);

        // Near the 24-bit end.
        let key = format!("{j}/{d}");
        let current = s.get(&tables::JOIN_NONCES, &key).await.unwrap().unwrap();
        let mut batch = Batch::new();
        batch.put(
            &tables::JOIN_NONCES,
            key,
            JoinNonceRecord { last: 0xFF_FFFE }.encode_to_vec(),
            Expect::Version(current.version),
            vec![],
        );
        s.commit(batch).await.unwrap();
        assert_eq!(s.next_join_nonce(j, d).await.unwrap().get(), 0xFF_FFFF);
        let err = s.next_join_nonce(j, d).await.unwrap_err();
        assert_eq!(
            err,
            StoreError::JoinNonceExhausted {
                join_eui: j,
                dev_eui: d
            }
        );
        assert!(err.to_string().contains("24-bit"), "{err}");
        s.close().await.unwrap();
    }

    pub async fn join_nonce_atomic_between_processes(h: &Harness) {
        let (a, b) = (h.open().await, h.open().await);
        let (j, d) = (Eui64::from_u64(JOIN_EUI), Eui64::from_u64(1));
        let mut tasks = Vec::new();
        for i in 0..40 {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move { s.next_join_nonce(j, d).await }));
        }
        let mut got = BTreeSet::new();
        for t in tasks {
            assert!(
                got.insert(t.await.unwrap().unwrap().get()),
                "a JoinNonce was handed out twice"
            );
        }
        assert_eq!(got, (1..=40).collect::<BTreeSet<u32>>());
        a.close().await.unwrap();
        b.close().await.unwrap();
    }

    pub async fn js_devices_and_session_keys(h: &Harness) {
        let s = h.open().await;
        let (j, d) = (Eui64::from_u64(JOIN_EUI), Eui64::from_u64(1));
        let rec = JsDeviceRecord {
            ids: Some(ids("app1", "dev1", JOIN_EUI, 1)),
            encrypted_root_keys: vec![0xde, 0xad],
            lorawan_version: v3::MacVersion::MacV11 as i32,
        };
        assert_eq!(s.set_js_device(&rec, Expect::Absent).await.unwrap(), 1);
        assert_eq!(s.get_js_device(j, d).await.unwrap().unwrap().value, rec);
        assert_eq!(
            s.get_js_device_by_id("app1", "dev1")
                .await
                .unwrap()
                .unwrap()
                .value,
            rec
        );
        // One application/device ID for one pair of EUIs.
        let other = JsDeviceRecord {
            ids: Some(ids("app1", "dev1", JOIN_EUI, 2)),
            ..rec.clone()
        };
        let err = s.set_js_device(&other, Expect::Absent).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::AlreadyExists {
                    what: "JS end device ID",
                    ..
                }
            ),
            "{err}"
        );
        let err = s
            .set_js_device(
                &JsDeviceRecord {
                    ids: Some(ids("app1", "x", 0, 1)),
                    ..rec.clone()
                },
                Expect::Any,
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("ids.join_eui"), "{err}");

        let keys = |id: u8, dev: u64| SessionKeysRecord {
            session_key_id: vec![id; 16],
            join_eui: Eui64::from_u64(JOIN_EUI).0.to_vec(),
            dev_eui: Eui64::from_u64(dev).0.to_vec(),
            wrapped_keys: vec![id, id],
        };
        s.set_session_keys(&keys(1, 1)).await.unwrap();
        s.set_session_keys(&keys(2, 1)).await.unwrap();
        s.set_session_keys(&keys(3, 2)).await.unwrap();
        assert_eq!(
            s.get_session_keys(&[1; 16]).await.unwrap().unwrap(),
            keys(1, 1)
        );
        assert!(s.get_session_keys(&[9; 16]).await.unwrap().is_none());
        s.delete_session_keys(&[2; 16]).await.unwrap();
        assert!(s.get_session_keys(&[2; 16]).await.unwrap().is_none());
        assert!(
            s.get_session_keys(&[])
                .await
                .unwrap_err()
                .to_string()
                .contains("session_key_id")
        );

        s.delete_js_device(j, d).await.unwrap();
        assert!(s.get_js_device(j, d).await.unwrap().is_none());
        assert!(
            s.get_js_device_by_id("app1", "dev1")
                .await
                .unwrap()
                .is_none()
        );
        assert!(s.get_session_keys(&[1; 16]).await.unwrap().is_none());
        assert!(
            s.get_session_keys(&[3; 16]).await.unwrap().is_some(),
            "another device's keys stay"
        );
        s.close().await.unwrap();
    }

    // ---- downlink queues ----

    pub async fn queue_operations(h: &Harness) {
        let s = h.open().await;
        let ns = QueueOwner::NetworkServer;
        assert!(s.pop_downlink(ns, "app1", "d1").await.unwrap().is_none());
        assert_eq!(
            s.push_downlinks(ns, "app1", "d1", &[downlink(1), downlink(2)])
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            s.push_downlinks(ns, "app1", "d1", &[downlink(3)])
                .await
                .unwrap(),
            3
        );
        assert_eq!(s.push_downlinks(ns, "app1", "d1", &[]).await.unwrap(), 3);
        let fcnts = |v: Vec<v3::ApplicationDownlink>| v.iter().map(|d| d.f_cnt).collect::<Vec<_>>();
        assert_eq!(
            fcnts(s.list_downlinks(ns, "app1", "d1").await.unwrap()),
            [1, 2, 3]
        );
        assert!(s.list_downlinks(ns, "app1", "d2").await.unwrap().is_empty());
        assert_eq!(
            s.pop_downlink(ns, "app1", "d1")
                .await
                .unwrap()
                .unwrap()
                .f_cnt,
            1
        );
        s.replace_downlinks(ns, "app1", "d1", &[downlink(7), downlink(8)])
            .await
            .unwrap();
        assert_eq!(
            fcnts(s.list_downlinks(ns, "app1", "d1").await.unwrap()),
            [7, 8]
        );
        assert_eq!(
            s.pop_downlink(ns, "app1", "d1")
                .await
                .unwrap()
                .unwrap()
                .f_cnt,
            7
        );
        assert_eq!(
            s.pop_downlink(ns, "app1", "d1")
                .await
                .unwrap()
                .unwrap()
                .f_cnt,
            8
        );
        assert!(s.pop_downlink(ns, "app1", "d1").await.unwrap().is_none());
        s.push_downlinks(ns, "app1", "d1", &[downlink(9)])
            .await
            .unwrap();
        s.replace_downlinks(ns, "app1", "d1", &[]).await.unwrap();
        assert!(s.list_downlinks(ns, "app1", "d1").await.unwrap().is_empty());
        s.close().await.unwrap();
    }

    pub async fn queue_atomic_between_processes(h: &Harness) {
        let (a, b) = (h.open().await, h.open().await);
        let ns = QueueOwner::NetworkServer;
        let mut tasks = Vec::new();
        for i in 0..30u32 {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                s.push_downlinks(ns, "app1", "d1", &[downlink(i)]).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let queued: BTreeSet<u32> = a
            .list_downlinks(ns, "app1", "d1")
            .await
            .unwrap()
            .iter()
            .map(|d| d.f_cnt)
            .collect();
        assert_eq!(
            queued,
            (0..30).collect::<BTreeSet<u32>>(),
            "a concurrent push was lost"
        );
        // Concurrent pops hand out each downlink once.
        let mut tasks = Vec::new();
        for i in 0..40 {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                s.pop_downlink(ns, "app1", "d1").await
            }));
        }
        let mut popped = Vec::new();
        for t in tasks {
            if let Some(d) = t.await.unwrap().unwrap() {
                popped.push(d.f_cnt);
            }
        }
        popped.sort_unstable();
        assert_eq!(
            popped,
            (0..30).collect::<Vec<u32>>(),
            "a downlink was popped twice or lost"
        );
        a.close().await.unwrap();
        b.close().await.unwrap();
    }

    // ---- application server ----

    pub async fn as_settings_and_devices(h: &Harness) {
        let s = h.open().await;
        assert_eq!(
            s.set_as_application("app1", b"{}", Expect::Absent)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            s.get_as_application("app1").await.unwrap().unwrap().value,
            b"{}"
        );
        assert!(
            s.set_as_application("app1", b"x", Expect::Version(7))
                .await
                .unwrap_err()
                .is_conflict()
        );
        s.delete_as_application("app1").await.unwrap();
        assert!(s.get_as_application("app1").await.unwrap().is_none());

        let rec = AsDeviceRecord {
            ids: Some(ids("app1", "d1", 0, 0)),
            session: Some(AsSession {
                session_key_id: vec![1; 16],
                app_s_key: Some(v3::KeyEnvelope {
                    kek_label: "as:default".into(),
                    encrypted_key: vec![2; 24],
                    key: vec![],
                }),
                last_a_f_cnt_down: 41,
                dev_addr: DevAddr::from_u32(0x2600_0001).0.to_vec(),
            }),
            ..Default::default()
        };
        s.set_as_device(&rec, Expect::Absent).await.unwrap();
        let mut next = rec.clone();
        next.session.as_mut().unwrap().last_a_f_cnt_down = 42;
        assert_eq!(s.set_as_device(&next, Expect::Version(1)).await.unwrap(), 2);
        assert!(
            s.set_as_device(&next, Expect::Version(1))
                .await
                .unwrap_err()
                .is_conflict()
        );
        let got = s.get_as_device("app1", "d1").await.unwrap().unwrap();
        assert_eq!(got.value, next);
        assert_eq!(
            s.list_as_devices("app1", None, 10)
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        s.push_downlinks(QueueOwner::ApplicationServer, "app1", "d1", &[downlink(1)])
            .await
            .unwrap();
        s.delete_as_device("app1", "d1").await.unwrap();
        assert!(s.get_as_device("app1", "d1").await.unwrap().is_none());
        assert!(
            s.list_downlinks(QueueOwner::ApplicationServer, "app1", "d1")
                .await
                .unwrap()
                .is_empty()
        );
        s.close().await.unwrap();
    }

    // ---- group commit ----

    pub async fn group_commit_many_writers_durable(h: &Harness) {
        const DEVICES: u32 = 64;
        const UPLINKS: u32 = 8;
        let s = h.open().await;
        for i in 0..DEVICES {
            let rec = ns_device("app1", &format!("d{i}"), Some(0x2600_0000 + i), None);
            s.set_ns_device(&rec, Expect::Absent).await.unwrap();
        }
        // One writer per device (as with DevAddr sharding), all devices at once.
        let mut tasks = Vec::new();
        for i in 0..DEVICES {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut cur = s
                    .get_ns_device("app1", &format!("d{i}"))
                    .await
                    .unwrap()
                    .unwrap();
                for fcnt in 1..=UPLINKS {
                    cur.value
                        .device
                        .as_mut()
                        .unwrap()
                        .session
                        .as_mut()
                        .unwrap()
                        .last_f_cnt_up = fcnt;
                    cur.version = s.record_uplink(&cur.value, cur.version).await.unwrap();
                }
                cur.version
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 1 + u64::from(UPLINKS));
        }
        let stats = s.group_commit_stats();
        assert_eq!(stats.writes, u64::from(DEVICES * UPLINKS));
        assert!(
            stats.groups < stats.writes,
            "no write was grouped: {stats:?}"
        );
        // Acknowledged writes survive close and reopen.
        s.close().await.unwrap();
        let s = h.open().await;
        for i in 0..DEVICES {
            let got = s
                .get_ns_device("app1", &format!("d{i}"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (got.version, f_cnt(&got.value)),
                (1 + u64::from(UPLINKS), UPLINKS),
                "device d{i}"
            );
        }
        s.close().await.unwrap();

        // Writes still queued when close is called are committed, not dropped.
        let s = Arc::new(h.open().await);
        let mut tasks = Vec::new();
        for i in 0..DEVICES {
            let s = Arc::clone(&s);
            tasks.push(tokio::spawn(async move {
                let mut rec = ns_device("app1", &format!("d{i}"), Some(0x2600_0000 + i), None);
                rec.device
                    .as_mut()
                    .unwrap()
                    .session
                    .as_mut()
                    .unwrap()
                    .last_f_cnt_up = 100;
                s.record_uplink(&rec, 1 + u64::from(UPLINKS)).await
            }));
        }
        tokio::task::yield_now().await;
        s.close().await.unwrap();
        let mut acked = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(_) => acked.push(i),
                Err(StoreError::Closed) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        let s = h.open().await;
        for i in acked {
            let got = s
                .get_ns_device("app1", &format!("d{i}"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(f_cnt(&got.value), 100, "acknowledged write of d{i} lost");
        }
        s.close().await.unwrap();
    }

    pub async fn group_commit_failed_write_is_isolated(h: &Harness) {
        let s = h.open().await;
        for i in 0..20 {
            s.set_ns_device(
                &ns_device("app1", &format!("d{i}"), Some(i), None),
                Expect::Absent,
            )
            .await
            .unwrap();
        }
        // Half the writes carry a stale version; they land in the same groups as the rest.
        let mut tasks = Vec::new();
        for i in 0..20u32 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut rec = ns_device("app1", &format!("d{i}"), Some(i), None);
                rec.device
                    .as_mut()
                    .unwrap()
                    .session
                    .as_mut()
                    .unwrap()
                    .last_f_cnt_up = 5;
                let expected = if i % 2 == 0 { 1 } else { 7 };
                (i, s.record_uplink(&rec, expected).await)
            }));
        }
        for t in tasks {
            let (i, r) = t.await.unwrap();
            if i % 2 == 0 {
                assert_eq!(r.unwrap(), 2, "d{i}");
            } else {
                assert!(r.unwrap_err().is_conflict(), "d{i}");
            }
        }
        for i in 0..20u32 {
            let got = s
                .get_ns_device("app1", &format!("d{i}"))
                .await
                .unwrap()
                .unwrap();
            let want = if i % 2 == 0 { (2, 5) } else { (1, 0) };
            assert_eq!((got.version, f_cnt(&got.value)), want, "d{i}");
        }
        s.close().await.unwrap();
    }

    // ---- primitive layer ----

    static T: Table = Table {
        name: "test.things",
        what: "thing",
    };
    static UNIQ: Index = Index {
        name: "test.uniq",
        what: "unique attribute",
        unique: true,
    };

    /// A table whose keys are tracked in memory answers reads exactly as before: through
    /// puts, deletes, failed batches, group commits and a reopen.
    pub async fn tracked_keys_read_as_untracked(h: &Harness) {
        let s = h.open().await;
        let put = |key: &str, expect: Expect| {
            let mut b = Batch::new();
            b.put(&T, key, key.as_bytes().to_vec(), expect, vec![]);
            b
        };
        s.commit(put("before", Expect::Absent)).await.unwrap();
        s.track_keys(&T).await.unwrap();
        // Stored before the tracking began.
        assert_eq!(s.get(&T, "before").await.unwrap().unwrap().value, b"before");
        assert!(s.get(&T, "never").await.unwrap().is_none());
        s.commit(put("after", Expect::Absent)).await.unwrap();
        s.commit_grouped(put("grouped", Expect::Absent))
            .await
            .unwrap();
        assert_eq!(s.get(&T, "after").await.unwrap().unwrap().version, 1);
        assert_eq!(s.get(&T, "grouped").await.unwrap().unwrap().version, 1);
        // A failed batch writes nothing, tracked or not.
        let mut failed = put("failed", Expect::Absent);
        failed.check(&T, "before", Expect::Absent);
        assert!(s.commit(failed).await.is_err());
        assert!(s.get(&T, "failed").await.unwrap().is_none());
        // Deleted, and put again.
        let mut del = Batch::new();
        del.delete(&T, "after", Expect::Any);
        s.commit(del).await.unwrap();
        assert!(s.get(&T, "after").await.unwrap().is_none());
        s.commit(put("after", Expect::Absent)).await.unwrap();
        assert_eq!(s.get(&T, "after").await.unwrap().unwrap().value, b"after");
        // Deleted and put again in one batch, and in two batches of one group commit.
        let mut again = Batch::new();
        again.delete(&T, "after", Expect::Any);
        again.put(&T, "after", b"again".to_vec(), Expect::Absent, vec![]);
        s.commit(again).await.unwrap();
        assert_eq!(s.get(&T, "after").await.unwrap().unwrap().value, b"again");
        let mut del = Batch::new();
        del.delete(&T, "grouped", Expect::Any);
        let (a, b) = tokio::join!(
            s.commit_grouped(del),
            s.commit_grouped(put("grouped", Expect::Any))
        );
        a.unwrap();
        b.unwrap();
        // Whichever committed last decides; tracked reads must agree with the store's.
        let stored = s.scan(&T, "grouped", None, 10).await.unwrap().items.len();
        assert_eq!(s.get(&T, "grouped").await.unwrap().is_some(), stored == 1);
        s.commit_grouped(put("grouped", Expect::Any)).await.unwrap();
        // Tracking twice changes nothing.
        s.track_keys(&T).await.unwrap();
        assert!(s.get(&T, "before").await.unwrap().is_some());
        s.close().await.unwrap();
        // A reopened store tracks again from what is stored.
        let s = h.open().await;
        s.track_keys(&T).await.unwrap();
        for key in ["before", "after", "grouped"] {
            assert!(s.get(&T, key).await.unwrap().is_some(), "{key}");
        }
        assert!(s.get(&T, "failed").await.unwrap().is_none());
        s.close().await.unwrap();
    }

    pub async fn failed_batch_changes_nothing(h: &Harness) {
        let s = h.open().await;
        let mut batch = Batch::new();
        batch.put(
            &T,
            "held",
            b"1".to_vec(),
            Expect::Absent,
            vec![IndexEntry::new(&UNIQ, "u1")],
        );
        s.commit(batch).await.unwrap();

        // Check failure in the last operation.
        let mut batch = Batch::new();
        batch.put(
            &T,
            "a",
            b"a".to_vec(),
            Expect::Absent,
            vec![IndexEntry::new(&UNIQ, "u2")],
        );
        batch.delete(&T, "held", Expect::Any);
        batch.put(&T, "b", b"b".to_vec(), Expect::Version(3), vec![]);
        let err = s.commit(batch).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        // Unique index failure in the last operation.
        let mut batch = Batch::new();
        batch.put(
            &T,
            "a",
            b"a".to_vec(),
            Expect::Absent,
            vec![IndexEntry::new(&UNIQ, "u2")],
        );
        batch.put(
            &T,
            "c",
            b"c".to_vec(),
            Expect::Any,
            vec![IndexEntry::new(&UNIQ, "u1")],
        );
        let err = s.commit(batch).await.unwrap_err();
        assert_eq!(
            err,
            StoreError::AlreadyExists {
                what: "unique attribute",
                key: "u1".into()
            }
        );
        // The same through group commit.
        let mut batch = Batch::new();
        batch.put(&T, "a", b"a".to_vec(), Expect::Absent, vec![]);
        batch.check(&T, "held", Expect::Version(2));
        assert!(s.commit_grouped(batch).await.unwrap_err().is_conflict());

        assert!(s.get(&T, "a").await.unwrap().is_none());
        assert!(s.get(&T, "b").await.unwrap().is_none());
        assert!(s.get(&T, "c").await.unwrap().is_none());
        assert_eq!(s.get(&T, "held").await.unwrap().unwrap().version, 1);
        assert_eq!(s.lookup(&T, &UNIQ, "u1").await.unwrap().len(), 1);
        assert!(s.lookup(&T, &UNIQ, "u2").await.unwrap().is_empty());

        // A batch sees its own earlier writes; versions are reported per operation.
        let mut batch = Batch::new();
        batch.put(&T, "x", b"1".to_vec(), Expect::Absent, vec![]);
        batch.put(&T, "x", b"2".to_vec(), Expect::Version(1), vec![]);
        batch.check(&T, "x", Expect::Version(2));
        batch.delete(&T, "held", Expect::Version(1));
        batch.check(&T, "held", Expect::Absent);
        assert_eq!(s.commit(batch).await.unwrap(), vec![1, 2, 2, 1, 0]);
        assert!(
            s.lookup(&T, &UNIQ, "u1").await.unwrap().is_empty(),
            "index entry of deleted record"
        );
        // Empty keys are refused.
        let mut batch = Batch::new();
        batch.put(&T, "", b"1".to_vec(), Expect::Any, vec![]);
        assert!(matches!(
            s.commit(batch).await.unwrap_err(),
            StoreError::InvalidArgument { .. }
        ));
        s.close().await.unwrap();
    }

    pub async fn scan_prefix_cursor_and_count(h: &Harness) {
        let s = h.open().await;
        let keys = [
            "app1/a", "app1/b", "app1/c", "app1/é", "app10/a", "app0/z", "app1", "b",
        ];
        let mut batch = Batch::new();
        for k in keys {
            batch.put(&T, k, k.as_bytes().to_vec(), Expect::Absent, vec![]);
        }
        s.commit(batch).await.unwrap();
        let page = s.scan(&T, "app1/", None, 2).await.unwrap();
        let got: Vec<_> = page.items.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(got, ["app1/a", "app1/b"]);
        let page = s.scan(&T, "app1/", page.next.as_deref(), 2).await.unwrap();
        let got: Vec<_> = page.items.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(got, ["app1/c", "app1/é"]);
        assert_eq!(page.next, None);
        assert_eq!(s.count(&T, "app1/").await.unwrap(), 4);
        assert_eq!(s.count(&T, "").await.unwrap(), keys.len() as u64);
        let all = s.scan(&T, "", None, 100).await.unwrap();
        let got: Vec<_> = all.items.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            got,
            [
                "app0/z", "app1", "app1/a", "app1/b", "app1/c", "app1/é", "app10/a", "b"
            ]
        );
        assert_eq!(all.items[0].value, b"app0/z");
        s.close().await.unwrap();
    }

    pub async fn migrations_idempotent_and_concurrent(h: &Harness) {
        // Two processes migrating a fresh database at once: both succeed, one applies.
        let (a, b) = tokio::join!(
            Store::migrate_only(&h.config, h.data_dir()),
            Store::migrate_only(&h.config, h.data_dir())
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let names: Vec<&str> = migrations::SQLITE.iter().map(|m| m.name).collect();
        assert!(
            (a == names && b.is_empty()) || (b == names && a.is_empty()),
            "applied {a:?} and {b:?}"
        );
        assert!(
            Store::migrate_only(&h.config, h.data_dir())
                .await
                .unwrap()
                .is_empty()
        );
        let s = h.open().await;
        s.create_application(&app("app1")).await.unwrap();
        s.close().await.unwrap();
        assert!(
            Store::migrate_only(&h.config, h.data_dir())
                .await
                .unwrap()
                .is_empty()
        );
        let s = h.open().await;
        assert!(s.get_application("app1").await.unwrap().is_some());
        s.close().await.unwrap();
    }

    pub async fn health_and_close(h: &Harness) {
        let s = h.open().await;
        s.health().await.unwrap();
        let clone = s.clone();
        s.close().await.unwrap();
        s.close().await.unwrap();
        assert_eq!(clone.health().await.unwrap_err(), StoreError::Closed);
        assert_eq!(
            clone.get_application("x").await.unwrap_err(),
            StoreError::Closed
        );
        let err = clone
            .record_uplink(&ns_device("a1", "d1", None, None), 1)
            .await
            .unwrap_err();
        assert_eq!(err, StoreError::Closed);
    }
}
