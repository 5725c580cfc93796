//! The NS registry's checks: precise errors that change nothing.

mod common;

use std::sync::Arc;

use common::*;
use lorawan::Aes128Key;
use tern_api::v3;

fn abp_device() -> v3::EndDevice {
    v3::EndDevice {
        ids: Some(v3::EndDeviceIdentifiers::new("app-1", "dev-1")),
        frequency_plan_id: "EU_863_870".into(),
        lorawan_version: v3::MacVersion::MacV103 as i32,
        session: Some(v3::Session {
            dev_addr: vec![0x26, 0, 0, 1],
            keys: Some(v3::SessionKeys {
                f_nwk_s_int_key: Some(v3::KeyEnvelope::clear(Aes128Key([1; 16]))),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

const PATHS: &[&str] = &["ids", "frequency_plan_id", "lorawan_version", "session"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_devices_are_refused_precisely_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    let ids = v3::EndDeviceIdentifiers::new("app-1", "dev-1");

    let mut d = abp_device();
    d.frequency_plan_id = "MARS_1".into();
    let e = h.ns.set_device(d, PATHS).await.unwrap_err();
    assert!(
        e.message()
            .starts_with("frequency_plan_id: unknown frequency plan"),
        "{e}"
    );

    let mut d = abp_device();
    d.session = None;
    let e = h.ns.set_device(d, PATHS).await.unwrap_err();
    assert!(e.message().starts_with("session: required"), "{e}");

    let mut d = abp_device();
    d.session.as_mut().unwrap().keys.as_mut().unwrap().app_s_key =
        Some(v3::KeyEnvelope::clear(Aes128Key([2; 16])));
    let e = h.ns.set_device(d, PATHS).await.unwrap_err();
    assert!(e.message().starts_with("session.keys.app_s_key"), "{e}");

    let mut d = abp_device();
    d.session.as_mut().unwrap().dev_addr = vec![1, 2];
    let e = h.ns.set_device(d, PATHS).await.unwrap_err();
    assert!(e.message().contains("dev_addr"), "{e}");

    let e =
        h.ns.set_device(abp_device(), &["root_keys"])
            .await
            .unwrap_err();
    assert!(
        e.message().contains("not a field the Network Server keeps"),
        "{e}"
    );

    // Nothing was stored.
    assert_eq!(
        h.ns.get_device(&ids).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    // A good one is.
    h.ns.set_device(abp_device(), PATHS).await.unwrap();
    assert_eq!(
        h.ns.get_device(&ids).await.unwrap().frequency_plan_id,
        "EU_863_870"
    );
}
