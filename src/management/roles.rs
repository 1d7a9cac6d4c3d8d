//! CONNECT's client-credential-client Roles API:
//! `GET|HEAD|PUT /api/v1/Tenants/{tenantId}/(ClientCredentialClients|Clients)/{clientId}/Roles`.
//! Real HTTP statuses and CONNECT's `ErrorResponse`, not Capture's envelope.

use serde_json::{json, Value};

use crate::errors::RoleError;
use crate::params::Params;
use crate::policy::model::PolicyFile;
use crate::policy::roles::{
    role_by_name, RoleType, BUILTIN_ROLES, TENANT_ADMINISTRATOR, TENANT_MEMBER,
};
use crate::policy::Snapshot;

/// The parameters the Roles API takes (its query; credentials included).
/// `query` is documented but not supported: accepted and ignored.
pub const PARAMS: [&str; 6] = [
    "client_id",
    "client_secret",
    "skip",
    "count",
    "query",
    "dry_run",
];

/// A parsed Roles path.
pub struct RolesPath<'a> {
    pub tenant: &'a str,
    pub client: &'a str,
}

pub fn parse_path(path: &str) -> Option<RolesPath<'_>> {
    let rest = path.strip_prefix("/api/v1/Tenants/")?;
    let mut parts = rest.split('/');
    let tenant = parts.next()?;
    let kind = parts.next()?;
    let client = parts.next()?;
    let roles = parts.next()?;
    if parts.next().is_some()
        || tenant.is_empty()
        || client.is_empty()
        || roles != "Roles"
        || !(kind == "ClientCredentialClients" || kind == "Clients")
    {
        return None;
    }
    Some(RolesPath { tenant, client })
}

fn role_json(r: &RoleType, tenant: &str) -> Value {
    json!({
        "Id": r.type_id,
        "Name": r.name,
        "Description": r.description,
        "RoleScope": r.scope,
        "TenantId": tenant,
        "CommunityId": null,
        "RoleTypeId": r.type_id,
    })
}

fn has_role(snap: &Snapshot, client: &str, tenant: &str, role: &str) -> bool {
    snap.source
        .clients
        .get(client)
        .is_some_and(|c| c.tenant.as_deref() == Some(tenant) && c.roles.iter().any(|r| r == role))
}

/// The client named by the path, if it belongs to that tenant.
fn find<'s>(
    snap: &'s Snapshot,
    path: &RolesPath<'_>,
) -> Result<&'s crate::policy::model::ClientDef, RoleError> {
    snap.source
        .clients
        .get(path.client)
        .filter(|c| c.tenant.as_deref() == Some(path.tenant))
        .map(|c| &**c)
        .ok_or_else(RoleError::not_found)
}

fn page(params: &Params, name: &str, default: usize) -> Result<usize, RoleError> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| RoleError::bad_request(format!("{name} must be a non-negative integer"))),
    }
}

/// GET and HEAD: Self, or a Tenant Member of that tenant.
pub fn list(
    snap: &Snapshot,
    path: &RolesPath<'_>,
    caller: &str,
    params: &Params,
) -> Result<Value, RoleError> {
    let skip = page(params, "skip", 0)?;
    let count = page(params, "count", 100)?;
    let client = find(snap, path)?;
    if caller != path.client && !has_role(snap, caller, path.tenant, TENANT_MEMBER) {
        return Err(RoleError::forbidden("Self or the Tenant Member role"));
    }
    let roles: Vec<Value> = client
        .roles
        .iter()
        .filter_map(|n| role_by_name(n))
        .skip(skip)
        .take(count)
        .map(|r| role_json(r, path.tenant))
        .collect();
    Ok(Value::Array(roles))
}

/// Checks a PUT before anything changes: the caller must administer the tenant.
pub fn authorize_put(snap: &Snapshot, path: &RolesPath<'_>, caller: &str) -> Result<(), RoleError> {
    find(snap, path)?;
    if !has_role(snap, caller, path.tenant, TENANT_ADMINISTRATOR) {
        return Err(RoleError::forbidden("the Tenant Administrator role"));
    }
    Ok(())
}

/// PUT: replaces the whole list, which must keep the Tenant Member role.
pub fn replace(
    policy: &mut PolicyFile,
    path: &RolesPath<'_>,
    body: &[u8],
) -> Result<Value, RoleError> {
    let items: Vec<Value> = serde_json::from_slice(body)
        .map_err(|_| RoleError::bad_request("The body must be a JSON array of Role objects."))?;
    let mut names: Vec<&'static str> = Vec::new();
    for item in &items {
        let field = |k: &str| item.get(k).and_then(Value::as_str);
        let role = BUILTIN_ROLES
            .iter()
            .find(|r| {
                field("RoleTypeId") == Some(r.type_id)
                    || field("Id") == Some(r.type_id)
                    || field("Name") == Some(r.name)
            })
            .ok_or_else(|| RoleError::bad_request(format!("Unknown role: {item}")))?;
        if role.scope != 1 {
            return Err(RoleError::bad_request(format!(
                "{} is not a tenant role",
                role.name
            )));
        }
        if !names.contains(&role.name) {
            names.push(role.name);
        }
    }
    if !names.contains(&TENANT_MEMBER) {
        return Err(RoleError::bad_request(
            "The Tenant Member role is always required.",
        ));
    }
    let client = policy
        .clients
        .get_mut(path.client)
        .filter(|c| c.tenant.as_deref() == Some(path.tenant))
        .map(std::sync::Arc::make_mut)
        .ok_or_else(RoleError::not_found)?;
    client.roles = names.iter().map(|n| n.to_string()).collect();
    Ok(Value::Array(
        names
            .iter()
            .filter_map(|n| role_by_name(n))
            .map(|r| role_json(r, path.tenant))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_paths() {
        let p = parse_path("/api/v1/Tenants/t1/ClientCredentialClients/c1/Roles").unwrap();
        assert_eq!((p.tenant, p.client), ("t1", "c1"));
        assert!(parse_path("/api/v1/Tenants/t1/Clients/c1/Roles").is_some());
        assert!(parse_path("/api/v1/Tenants/t1/Users/c1/Roles").is_none());
        assert!(parse_path("/api/v1/Tenants/t1/Clients/c1/Roles/x").is_none());
        assert!(parse_path("/api/v1/Tenants//Clients/c1/Roles").is_none());
    }
}
