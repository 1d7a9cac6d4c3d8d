//! CONNECT's client-credential-client Roles API:
//! `GET|HEAD|PUT /api/v1/Tenants/{tenantId}/(ClientCredentialClients|Clients)/{clientId}/Roles`.
//! Real HTTP statuses and CONNECT's `ErrorResponse`, not Capture's envelope.

use serde_json::{json, Value};

use crate::params::Params;
use crate::policy::model::PolicyFile;
use crate::policy::Snapshot;

pub struct RoleType {
    pub name: &'static str,
    pub type_id: &'static str,
    /// CONNECT's RoleScope: 1 = Tenant, 2 = Community.
    pub scope: u8,
    pub description: &'static str,
}

pub const TENANT_MEMBER: &str = "Tenant Member";
pub const TENANT_ADMINISTRATOR: &str = "Tenant Administrator";

/// Built-in role types with their well-known `RoleTypeId`s.
pub const BUILTIN_ROLES: [RoleType; 8] = [
    RoleType {
        name: TENANT_ADMINISTRATOR,
        type_id: "2dc742ab-39ea-4fc0-a39e-2bcb71c26a5f",
        scope: 1,
        description: "Full administrative access to the tenant",
    },
    RoleType {
        name: "Tenant Contributor",
        type_id: "f1439595-e5a2-487f-8a4f-0627fefe75df",
        scope: 1,
        description: "Can create and modify tenant resources",
    },
    RoleType {
        name: "Tenant Data Steward",
        type_id: "45b66433-5f57-420b-bbdf-8bbd60c1cd9d",
        scope: 1,
        description: "Manages data in the tenant",
    },
    RoleType {
        name: TENANT_MEMBER,
        type_id: "7ad2b9ef-5386-4ead-ac9f-ad99c5c5b977",
        scope: 1,
        description: "Member of the tenant; required for every client",
    },
    RoleType {
        name: "Tenant Viewer",
        type_id: "e6cbf91e-0be8-4858-92b5-f88ecafd5574",
        scope: 1,
        description: "Read-only access to the tenant",
    },
    RoleType {
        name: "Community Administrator",
        type_id: "b50b3349-fa9e-4a03-9220-cf99184b4645",
        scope: 2,
        description: "Administers a community",
    },
    RoleType {
        name: "Community Moderator",
        type_id: "f49f69a6-61b2-423e-8ad5-d58841be441c",
        scope: 2,
        description: "Moderates a community",
    },
    RoleType {
        name: "Community Member",
        type_id: "f79a55da-7c76-4600-a809-0f62ca9971d9",
        scope: 2,
        description: "Member of a community",
    },
];

pub fn role_by_name(name: &str) -> Option<&'static RoleType> {
    BUILTIN_ROLES.iter().find(|r| r.name == name)
}

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

/// A CONNECT `ErrorResponse` with its HTTP status.
#[derive(Debug)]
pub struct RoleError {
    pub status: u16,
    pub error: String,
    pub reason: String,
    pub resolution: String,
}

impl RoleError {
    pub fn new(status: u16, error: &str, reason: impl Into<String>, resolution: &str) -> Self {
        RoleError {
            status,
            error: error.into(),
            reason: reason.into(),
            resolution: resolution.into(),
        }
    }

    pub fn body(&self, operation_id: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "OperationId": operation_id,
            "Error": self.error,
            "Reason": self.reason,
            "Resolution": self.resolution,
        }))
        .unwrap_or_default()
    }

    fn not_found() -> Self {
        RoleError::new(
            404,
            "Client or tenant not found.",
            "No client with this id exists in this tenant.",
            "Check the tenant and client identifiers.",
        )
    }

    fn forbidden(needed: &str) -> Self {
        RoleError::new(
            403,
            "Forbidden.",
            format!("This operation requires {needed}."),
            "Call with a client that holds the required role.",
        )
    }

    pub fn bad_request(reason: impl Into<String>) -> Self {
        RoleError::new(
            400,
            "Missing or invalid inputs.",
            reason,
            "Correct the request and try again.",
        )
    }
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
