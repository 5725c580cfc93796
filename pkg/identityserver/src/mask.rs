//! Field masks on registry messages: which fields a Get returns and an Update writes.
//!
//! Paths are proto field names; a nested path (`ids.eui`, `antennas.gain`) selects its
//! top-level field as a whole.

use prost::{Message, Name};
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage};
use tern_api::FieldMask;
use tonic::Status;

/// Fields every Get returns whatever the mask says.
const ALWAYS: &[&str] = &["ids", "created_at", "updated_at"];
/// Fields an Update never writes.
const READ_ONLY: &[&str] = &["ids", "created_at", "updated_at"];

fn descriptor<M: Name>() -> MessageDescriptor {
    tern_api::rest::descriptor_pool()
        .get_message_by_name(&M::full_name())
        .expect("every API message is in the descriptor pool")
}

fn dynamic<M: Message + Name>(m: &M) -> DynamicMessage {
    DynamicMessage::decode(descriptor::<M>(), m.encode_to_vec().as_slice())
        .expect("a message decodes as its own descriptor")
}

fn top(path: &str) -> &str {
    path.split('.').next().unwrap_or(path)
}

/// Checks that every path of `mask` names a field of `M`; `field` names the mask in errors.
pub fn check<M: Name>(field: &str, mask: &FieldMask) -> Result<(), Status> {
    let desc = descriptor::<M>();
    for path in &mask.paths {
        if desc.get_field_by_name(top(path)).is_none() {
            return Err(Status::invalid_argument(format!(
                "{field}: {path:?} is not a field of {}",
                M::NAME
            )));
        }
    }
    Ok(())
}

/// Keeps the fields of `mask` (and the identifiers and timestamps); an empty or absent mask
/// keeps everything.
pub fn select<M: Message + Name + Default>(m: M, mask: Option<&FieldMask>) -> Result<M, Status> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        return Ok(m);
    };
    check::<M>("field_mask", mask)?;
    let mut d = dynamic(&m);
    for f in d.descriptor().fields() {
        let keep = ALWAYS.contains(&f.name()) || mask.paths.iter().any(|p| top(p) == f.name());
        if !keep {
            d.clear_field(&f);
        }
    }
    d.transcode_to::<M>()
        .map_err(|e| Status::internal(format!("field mask: {e}")))
}

/// Writes the fields of `mask` from `update` into `current`. `extra_read_only` names fields
/// of this message that are not writable either.
pub fn merge<M: Message + Name + Default>(
    current: M,
    update: &M,
    mask: Option<&FieldMask>,
    extra_read_only: &[&str],
) -> Result<M, Status> {
    let mask = mask.filter(|m| !m.paths.is_empty()).ok_or_else(|| {
        Status::invalid_argument("field_mask: required, name the fields to write")
    })?;
    check::<M>("field_mask", mask)?;
    let mut cur = dynamic(&current);
    let upd = dynamic(update);
    for path in &mask.paths {
        let name = top(path);
        if READ_ONLY.contains(&name) || extra_read_only.contains(&name) {
            return Err(Status::invalid_argument(format!(
                "field_mask: {path:?} cannot be written by Update"
            )));
        }
        let f = cur
            .descriptor()
            .get_field_by_name(name)
            .expect("checked above");
        if upd.has_field(&f) {
            cur.set_field(&f, upd.get_field(&f).into_owned());
        } else {
            cur.clear_field(&f);
        }
    }
    cur.transcode_to::<M>()
        .map_err(|e| Status::internal(format!("field mask: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_api::v3;

    #[test]
    fn select_and_merge_follow_the_mask() {
        let app = v3::Application {
            ids: Some(v3::ApplicationIdentifiers {
                application_id: "app-1".into(),
            }),
            name: "Name".into(),
            description: "Desc".into(),
            ..Default::default()
        };
        let only_name = select(app.clone(), Some(&FieldMask::new(["name"]))).unwrap();
        assert_eq!(only_name.name, "Name");
        assert_eq!(only_name.description, "");
        assert_eq!(only_name.ids, app.ids);
        assert!(select(app.clone(), Some(&FieldMask::new(["nope"]))).is_err());

        let update = v3::Application {
            description: "New".into(),
            ..Default::default()
        };
        let merged = merge(
            app.clone(),
            &update,
            Some(&FieldMask::new(["description", "name"])),
            &[],
        )
        .unwrap();
        assert_eq!(merged.description, "New");
        assert_eq!(
            merged.name, "",
            "a masked field absent in the update is cleared"
        );
        assert_eq!(merged.ids, app.ids);
        let err = merge(app.clone(), &update, Some(&FieldMask::new(["ids"])), &[]).unwrap_err();
        assert!(err.message().contains("ids"));
        assert!(merge(app, &update, None, &[]).is_err());
    }
}
