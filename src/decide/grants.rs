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

/// The grants of a call authorized by a user token: the client's
/// `read_with_token` / `write_with_token` schemas, each falling back to the
/// client's `read` / `write` schema where it has none.
pub fn token_grants<'s>(
    snap: &'s Snapshot,
    client: &'s Client,
    params: &Params,
) -> Result<Grants<'s>, ApiError> {
    let mut g = grants(snap, client, params)?;
    if let Some(s) = client.schemas.get(g.entity_type) {
        if let Some(read) = s.read_with_token.as_deref() {
            g.read = read;
        }
        if let Some(write) = s.write_with_token.as_deref() {
            g.write = write;
        }
        g.read_only = s.read_only_with_token;
    }
    Ok(g)
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
