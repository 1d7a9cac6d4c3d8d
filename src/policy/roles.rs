//! CONNECT's built-in tenant and community role types: part of the policy
//! model (a client's `roles` must name one), served by the Roles API.

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
