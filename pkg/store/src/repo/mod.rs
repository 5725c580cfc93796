//! The typed repositories of each role, implemented once on [`Store`] over the primitive
//! layer, so that both backends are complete by construction.

pub(crate) mod app;
pub(crate) mod join;
pub(crate) mod ns;
pub(crate) mod queue;
pub(crate) mod registry;

use lorawan::{DevAddr, Eui64};
use prost::Message;

use crate::error::{Result, StoreError};
use crate::kv::{Batch, Expect, Page, Record, Table};
use crate::store::Store;

/// A value with the version it was read at (pass it back as the expected version).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Its version: 1 after the first write, one more after each later write.
    pub version: u64,
}

/// Attempts of a read-modify-write that keeps racing other writers.
const MAX_ATTEMPTS: u32 = 64;

pub(crate) fn decode<M: Message + Default>(table: &Table, record: Record) -> Result<Versioned<M>> {
    let value = M::decode(record.value.as_slice()).map_err(|e| StoreError::Corrupt {
        what: table.what,
        key: record.key.clone(),
        reason: e.to_string(),
    })?;
    Ok(Versioned {
        value,
        version: record.version,
    })
}

pub(crate) async fn get<M: Message + Default>(
    store: &Store,
    table: &'static Table,
    key: &str,
) -> Result<Option<Versioned<M>>> {
    store
        .get(table, key)
        .await?
        .map(|r| decode(table, r))
        .transpose()
}

pub(crate) async fn list<M: Message + Default>(
    store: &Store,
    table: &'static Table,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Page<Versioned<M>>> {
    store
        .scan(table, prefix, after, limit)
        .await?
        .try_map(|r| decode(table, r))
}

/// Every record of `table` under `prefix`, page by page.
pub(crate) async fn list_all<M: Message + Default>(
    store: &Store,
    table: &'static Table,
    prefix: &str,
) -> Result<Vec<Versioned<M>>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = list(store, table, prefix, after.as_deref(), 500).await?;
        out.extend(page.items);
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// The expectation of an update: any existing version, or exactly this one.
pub(crate) fn expect_existing(expected_version: Option<u64>) -> Expect {
    expected_version.map_or(Expect::Exists, Expect::Version)
}

/// What a read-modify-write step decided.
pub(crate) enum Write<M> {
    /// Store this value.
    Put(M),
    /// Remove the record.
    Delete,
    /// Leave the record as it is.
    Nothing,
}

/// Reads a record, lets `f` decide, and writes the decision only if nobody wrote the record
/// in between; on a race, reads again and repeats. `f` may run several times. Records
/// changed this way have no index entries.
pub(crate) async fn modify<M, R>(
    store: &Store,
    table: &'static Table,
    key: &str,
    f: impl FnMut(Option<M>) -> Result<(Write<M>, R)>,
) -> Result<R>
where
    M: Message + Default,
{
    modify_with(store, table, key, false, f).await
}

/// [`modify`] with the write through the group commit: it shares one transaction (one
/// fsync) with other callers' writes, keeps its own version check, and is durable when
/// this returns.
pub(crate) async fn modify_grouped<M, R>(
    store: &Store,
    table: &'static Table,
    key: &str,
    f: impl FnMut(Option<M>) -> Result<(Write<M>, R)>,
) -> Result<R>
where
    M: Message + Default,
{
    modify_with(store, table, key, true, f).await
}

async fn modify_with<M, R>(
    store: &Store,
    table: &'static Table,
    key: &str,
    grouped: bool,
    mut f: impl FnMut(Option<M>) -> Result<(Write<M>, R)>,
) -> Result<R>
where
    M: Message + Default,
{
    for _ in 0..MAX_ATTEMPTS {
        let current = get::<M>(store, table, key).await?;
        let expect = current
            .as_ref()
            .map_or(Expect::Absent, |v| Expect::Version(v.version));
        let (write, result) = f(current.map(|v| v.value))?;
        let mut batch = Batch::new();
        match write {
            Write::Put(m) => batch.put(table, key, m.encode_to_vec(), expect, Vec::new()),
            Write::Delete => batch.delete(table, key, expect),
            Write::Nothing => return Ok(result),
        };
        let committed = if grouped {
            store.commit_grouped(batch).await
        } else {
            store.commit(batch).await
        };
        match committed {
            Ok(_) => return Ok(result),
            Err(e) if is_race_on(&e, table, key) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contention {
        what: table.what,
        key: key.to_owned(),
        attempts: MAX_ATTEMPTS,
    })
}

/// True when `e` says that the record `table`/`key` changed between read and write.
fn is_race_on(e: &StoreError, table: &Table, key: &str) -> bool {
    match e {
        StoreError::Conflict { what, key: k, .. }
        | StoreError::AlreadyExists { what, key: k }
        | StoreError::NotFound { what, key: k } => *what == table.what && k == key,
        _ => false,
    }
}

/// Rejects IDs that are empty or contain the characters keys are built with.
pub(crate) fn check_id(field: &'static str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(StoreError::InvalidArgument {
            field,
            reason: "must not be empty".into(),
        });
    }
    if let Some(c) = id
        .chars()
        .find(|c| matches!(c, '/' | '#' | ':') || c.is_control())
    {
        return Err(StoreError::InvalidArgument {
            field,
            reason: format!("{id:?} contains {c:?}, which IDs cannot contain"),
        });
    }
    Ok(())
}

/// An EUI from a `bytes` field: empty is "not set".
pub(crate) fn opt_eui(field: &'static str, bytes: &[u8]) -> Result<Option<Eui64>> {
    match bytes.len() {
        0 => Ok(None),
        8 => Ok(Some(Eui64(bytes.try_into().unwrap_or_default()))),
        n => Err(StoreError::InvalidArgument {
            field,
            reason: format!("an EUI-64 is 8 bytes, got {n}"),
        }),
    }
}

/// A required EUI from a `bytes` field.
pub(crate) fn eui(field: &'static str, bytes: &[u8]) -> Result<Eui64> {
    opt_eui(field, bytes)?.ok_or_else(|| StoreError::InvalidArgument {
        field,
        reason: "required".into(),
    })
}

/// A DevAddr from a `bytes` field: empty is "not set".
pub(crate) fn opt_dev_addr(field: &'static str, bytes: &[u8]) -> Result<Option<DevAddr>> {
    match bytes.len() {
        0 => Ok(None),
        4 => Ok(Some(DevAddr(bytes.try_into().unwrap_or_default()))),
        n => Err(StoreError::InvalidArgument {
            field,
            reason: format!("a DevAddr is 4 bytes, got {n}"),
        }),
    }
}

/// The key of a device: `application_id/device_id`.
pub(crate) fn device_key(application_id: &str, device_id: &str) -> Result<String> {
    check_id("application_id", application_id)?;
    check_id("device_id", device_id)?;
    Ok(format!("{application_id}/{device_id}"))
}

/// The key prefix of an application's devices.
pub(crate) fn application_prefix(application_id: &str) -> Result<String> {
    check_id("application_id", application_id)?;
    Ok(format!("{application_id}/"))
}

/// The key of a device's EUIs: `joineui/deveui` in lowercase hex.
pub(crate) fn euis_key(join_eui: Eui64, dev_eui: Eui64) -> String {
    format!("{join_eui}/{dev_eui}")
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_euis_are_checked() {
        assert!(check_id("x", "app-1").is_ok());
        assert!(check_id("x", "").is_err());
        let err = check_id("ids.application_id", "a/b").unwrap_err();
        assert!(err.to_string().contains("ids.application_id"), "{err}");
        assert_eq!(opt_eui("f", &[]).unwrap(), None);
        assert!(opt_eui("f", &[1, 2, 3]).is_err());
        assert_eq!(
            euis_key(Eui64::from_u64(1), Eui64::from_u64(0x70b3d57ed0000001)),
            "0000000000000001/70b3d57ed0000001"
        );
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
    }
}
