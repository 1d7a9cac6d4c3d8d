//! What a caller may read and write on one entity type: its access schemas,
//! or the whole type where it has none, borrowed from the snapshot.

use crate::errors::ApiError;
use crate::params::Params;
use crate::policy::{Client, Snapshot};
use crate::schema::AccessTree;

/// The grants that apply to one call, borrowed from the snapshot.
pub struct Grants<'s> {
    pub entity_type: &'s str,
    pub read: &'s AccessTree,
    pub write: &'s AccessTree,
    /// The client has an explicit empty write schema: it may not write at all.
    pub read_only: bool,
    /// Shadow schemas, evaluated next to `read` and `write` and never
    /// enforced (`filter::shadow`).
    pub shadow_read: Option<&'s AccessTree>,
    pub shadow_write: Option<&'s AccessTree>,
}

pub fn grants<'s>(
    snap: &'s Snapshot,
    client: &'s Client,
    params: &Params,
) -> Result<Grants<'s>, ApiError> {
    let type_name = params
        .get("type_name")
        .ok_or_else(|| ApiError::missing_argument("type_name"))?;
    let (name, et) = snap
        .entity_types
        .get_key_value(type_name)
        .ok_or_else(|| ApiError::unknown_entity_type(type_name))?;
    let schemas = client.schemas.get(type_name);
    let read = schemas.and_then(|s| s.read.as_deref()).unwrap_or(&et.full);
    let write = schemas.and_then(|s| s.write.as_deref()).unwrap_or(&et.full);
    let read_only = schemas.is_some_and(|s| s.read_only);
    Ok(Grants {
        entity_type: name,
        read,
        write,
        read_only,
        shadow_read: schemas.and_then(|s| s.shadow_read.as_deref()),
        shadow_write: schemas.and_then(|s| s.shadow_write.as_deref()),
    })
}
