//! CONNECT's client-credential-client Roles API, answered by the gateway:
//! `GET|HEAD|PUT /api/v1/Tenants/{t}/(ClientCredentialClients|Clients)/{c}/Roles`
//! with the documented Role and ErrorResponse objects and real HTTP statuses.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ADMIN: &str = "2dc742ab-39ea-4fc0-a39e-2bcb71c26a5f";
const CONTRIBUTOR: &str = "f1439595-e5a2-487f-8a4f-0627fefe75df";
const DATA_STEWARD: &str = "45b66433-5f57-420b-bbdf-8bbd60c1cd9d";
const MEMBER: &str = "7ad2b9ef-5386-4ead-ac9f-ad99c5c5b977";
const VIEWER: &str = "e6cbf91e-0be8-4858-92b5-f88ecafd5574";
const COMMUNITY_MEMBER: &str = "f79a55da-7c76-4600-a809-0f62ca9971d9";

/// Secret of `<name>` is `<name>-secret`.
const CLIENTS: &str = r#"
clients:
  owner:
    secret: owner-secret
    features: [owner]
  admin1:
    secret: admin1-secret
    tenant: t1
    roles: [Tenant Member, Tenant Administrator]
  member1:
    secret: member1-secret
    tenant: t1
    roles: [Tenant Member]
  svc1:
    secret: svc1-secret
    tenant: t1
    roles: [Tenant Member, Tenant Viewer, Tenant Contributor, Tenant Data Steward]
  norole1:
    secret: norole1-secret
    tenant: t1
  far1:
    secret: far1-secret
    tenant: t1
    roles: [Tenant Member, Tenant Administrator]
    whitelist: ["203.0.113.0/24"]
  member2:
    secret: member2-secret
    tenant: t2
    roles: [Tenant Member]
  admin2:
    secret: admin2-secret
    tenant: t2
    roles: [Tenant Member, Tenant Administrator]
"#;

fn start() -> (TestUpstream, Gateway) {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .policy(&policy_with_clients(CLIENTS))
        .start();
    (up, gw)
}

fn paths(tenant: &str, client: &str) -> [String; 2] {
    [
        format!("/api/v1/Tenants/{tenant}/ClientCredentialClients/{client}/Roles"),
        format!("/api/v1/Tenants/{tenant}/Clients/{client}/Roles"),
    ]
}

fn role(type_id: &str, name: &str, tenant: &str) -> Value {
    let description = match name {
        "Tenant Administrator" => "Full administrative access to the tenant",
        "Tenant Contributor" => "Can create and modify tenant resources",
        "Tenant Data Steward" => "Manages data in the tenant",
        "Tenant Member" => "Member of the tenant; required for every client",
        "Tenant Viewer" => "Read-only access to the tenant",
        _ => unreachable!(),
    };
    json!({
        "Id": type_id,
        "Name": name,
        "Description": description,
        "RoleScope": 1,
        "TenantId": tenant,
        "CommunityId": null,
        "RoleTypeId": type_id,
    })
}

fn put(gw: &Gateway, caller: &str, path: &str, body: &str) -> Resp {
    let secret = format!("{caller}-secret");
    gw.send(
        http_client()
            .put(gw.url(path))
            .header("authorization", basic(caller, &secret))
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
}

fn head(gw: &Gateway, caller: Option<&str>, path: &str) -> Resp {
    let mut rb = http_client().head(gw.url(path));
    if let Some(c) = caller {
        rb = rb.header("authorization", basic(c, &format!("{c}-secret")));
    }
    gw.send(rb)
}

/// Asserts a CONNECT ErrorResponse with `status`; returns it.
fn assert_error_response(r: &Resp, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    let v = r.json();
    let obj = v.as_object().expect("ErrorResponse is an object");
    for k in ["OperationId", "Error", "Reason", "Resolution"] {
        assert!(
            obj.get(k)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty()),
            "{k} missing or empty: {v}"
        );
    }
    for k in obj.keys() {
        assert!(
            [
                "OperationId",
                "Error",
                "Reason",
                "Resolution",
                "DynamicProperties"
            ]
            .contains(&k.as_str()),
            "unexpected key {k}: {v}"
        );
    }
    assert!(v.get("stat").is_none(), "not Capture's envelope: {v}");
    v
}

fn assert_roles(r: &Resp, expected: &[Value]) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    assert_eq!(r.json(), Value::Array(expected.to_vec()));
}

/// Sends a raw request with `Connection: close` and returns everything the
/// gateway wrote until it closed (bounded by the read time-out).
fn raw_all(gw: &Gateway, request: String) -> Vec<u8> {
    let mut s = gw.connect();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

#[test]
fn get_on_both_path_forms_answers_role_objects_with_well_known_ids() {
    let (up, gw) = start();
    for p in paths("t1", "svc1") {
        let r = gw.get_as("svc1", &p);
        assert_roles(
            &r,
            &[
                role(MEMBER, "Tenant Member", "t1"),
                role(VIEWER, "Tenant Viewer", "t1"),
                role(CONTRIBUTOR, "Tenant Contributor", "t1"),
                role(DATA_STEWARD, "Tenant Data Steward", "t1"),
            ],
        );
    }
    for p in paths("t1", "admin1") {
        assert_roles(
            &gw.get_as("admin1", &p),
            &[
                role(MEMBER, "Tenant Member", "t1"),
                role(ADMIN, "Tenant Administrator", "t1"),
            ],
        );
    }
    for p in paths("t2", "member2") {
        assert_roles(
            &gw.get_as("member2", &p),
            &[role(MEMBER, "Tenant Member", "t2")],
        );
    }
    // The documented (unsupported) query parameter is accepted and ignored.
    let r = gw.get_as("member1", &format!("{}?query=x", paths("t1", "member1")[0]));
    assert_roles(&r, &[role(MEMBER, "Tenant Member", "t1")]);
    up.assert_untouched();
}

#[test]
fn skip_and_count_page_with_defaults_and_bad_values_are_400() {
    let (up, gw) = start();
    let all = [
        role(MEMBER, "Tenant Member", "t1"),
        role(VIEWER, "Tenant Viewer", "t1"),
        role(CONTRIBUTOR, "Tenant Contributor", "t1"),
        role(DATA_STEWARD, "Tenant Data Steward", "t1"),
    ];
    for p in paths("t1", "svc1") {
        let page = |q: &str| gw.get_as("svc1", &format!("{p}?{q}"));
        assert_roles(&page("skip=1&count=2"), &all[1..3]);
        assert_roles(&page("skip=0&count=100"), &all);
        assert_roles(&page("skip=2"), &all[2..]);
        assert_roles(&page("count=1"), &all[..1]);
        assert_roles(&page("count=0"), &[]);
        assert_roles(&page("skip=4"), &[]);
        assert_roles(&page("skip=1000&count=5"), &[]);
        for bad in [
            "skip=-1",
            "skip=abc",
            "skip=1.5",
            "skip=",
            "count=-3",
            "count=ten",
            "count=99999999999999999999999",
        ] {
            assert_error_response(&page(bad), 400);
        }
    }
    up.assert_untouched();
}

#[test]
fn head_sends_headers_only() {
    let (up, gw) = start();
    for p in paths("t1", "svc1") {
        let g = gw.get_as("svc1", &p);
        assert_eq!(g.status, 200);
        let h = head(&gw, Some("svc1"), &p);
        assert_eq!(h.status, 200);
        assert!(h.body.is_empty());
        assert!(h
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")));
        assert_eq!(
            h.header("content-length"),
            Some(g.body.len().to_string().as_str()),
            "HEAD announces the GET body's length"
        );

        // On the wire: nothing after the head, also for errors.
        for (who, path, status) in [
            ("svc1", p.clone(), 200),
            ("svc1", p.replace("/t1/", "/nosuch/"), 404),
            ("member2", p.clone(), 403),
        ] {
            let req = format!(
                "HEAD {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
                basic(who, &format!("{who}-secret"))
            );
            let out = raw_all(&gw, req);
            let end = find(&out, b"\r\n\r\n").expect("a response head") + 4;
            let head_text = String::from_utf8_lossy(&out[..end]).to_string();
            assert!(
                head_text.starts_with(&format!("HTTP/1.1 {status}")),
                "{head_text}"
            );
            assert!(
                out[end..].is_empty(),
                "HEAD {path} sent a body: {:?}",
                String::from_utf8_lossy(&out[end..])
            );
        }
    }
    let r = head(&gw, None, &paths("t1", "svc1")[0]);
    assert_eq!(r.status, 401);
    assert!(r.body.is_empty());
    up.assert_untouched();
}

#[test]
fn unknown_tenant_or_client_is_404_error_response() {
    let (up, gw) = start();
    for (tenant, client) in [
        ("nosuch", "member1"),
        ("t1", "nosuch"),
        ("t2", "member1"),
        ("t1", "owner"),
    ] {
        for p in paths(tenant, client) {
            let v = assert_error_response(&gw.get_as("member1", &p), 404);
            assert!(v["Error"].as_str().unwrap().contains("not found"), "{v}");
            assert_error_response(
                &put(
                    &gw,
                    "admin1",
                    &p,
                    &json!([{"RoleTypeId": MEMBER}]).to_string(),
                ),
                404,
            );
        }
    }
    up.assert_untouched();
}

#[test]
fn self_and_tenant_members_may_read_others_may_not() {
    let (up, gw) = start();
    // Self, even without the Tenant Member role.
    for p in paths("t1", "norole1") {
        assert_roles(&gw.get_as("norole1", &p), &[]);
    }
    // A Tenant Member reads others of its tenant.
    for p in paths("t1", "svc1") {
        assert_eq!(gw.get_as("member1", &p).status, 200);
        assert_eq!(gw.get_as("admin1", &p).status, 200);
        // Not a member: refused.
        let v = assert_error_response(&gw.get_as("norole1", &p), 403);
        assert_eq!(v["Error"], "Forbidden.");
        // Members (even administrators) of another tenant: refused.
        assert_error_response(&gw.get_as("member2", &p), 403);
        assert_error_response(&gw.get_as("admin2", &p), 403);
        // A client without a tenant (an owner) is no member either.
        assert_error_response(&gw.get_as("owner", &p), 403);
        assert_eq!(head(&gw, Some("member2"), &p).status, 403);
    }
    // The refusal reveals no roles.
    let r = gw.get_as("member2", &paths("t1", "admin1")[0]);
    assert!(!r.text().contains(ADMIN), "{}", r.text());
    up.assert_untouched();
}

#[test]
fn put_needs_a_tenant_administrator_keeps_member_and_replaces_the_list() {
    let (up, gw) = start();
    let [p1, p2] = paths("t1", "svc1");
    let body = json!([
        {"RoleTypeId": MEMBER},
        {"Name": "Tenant Viewer"},
    ])
    .to_string();
    // Not administrators of t1.
    for caller in ["member1", "svc1", "norole1", "admin2", "member2", "owner"] {
        let v = assert_error_response(&put(&gw, caller, &p1, &body), 403);
        assert_eq!(v["Error"], "Forbidden.");
    }
    // Without the Tenant Member role: 400, nothing changes.
    for bad in [
        json!([{"RoleTypeId": VIEWER}]).to_string(),
        "[]".to_string(),
    ] {
        assert_error_response(&put(&gw, "admin1", &p1, &bad), 400);
    }
    // Other invalid inputs.
    for bad in [
        "not json".to_string(),
        json!({"RoleTypeId": MEMBER}).to_string(),
        json!([{"RoleTypeId": MEMBER}, {"Name": "Ninja"}]).to_string(),
        json!([{"RoleTypeId": MEMBER}, {"RoleTypeId": COMMUNITY_MEMBER}]).to_string(),
    ] {
        assert_error_response(&put(&gw, "admin1", &p2, &bad), 400);
    }
    let before = [
        role(MEMBER, "Tenant Member", "t1"),
        role(VIEWER, "Tenant Viewer", "t1"),
        role(CONTRIBUTOR, "Tenant Contributor", "t1"),
        role(DATA_STEWARD, "Tenant Data Steward", "t1"),
    ];
    assert_roles(&gw.get_as("svc1", &p1), &before);

    // The whole list is replaced and the new list answered.
    let after = [
        role(MEMBER, "Tenant Member", "t1"),
        role(VIEWER, "Tenant Viewer", "t1"),
    ];
    assert_roles(&put(&gw, "admin1", &p1, &body), &after);
    assert_roles(&gw.get_as("svc1", &p1), &after);
    assert_roles(&gw.get_as("svc1", &p2), &after);
    // Full Role objects, as GET answers them, round-trip (Clients path);
    // duplicates collapse.
    let full = Value::Array(vec![
        role(MEMBER, "Tenant Member", "t1"),
        role(CONTRIBUTOR, "Tenant Contributor", "t1"),
        role(MEMBER, "Tenant Member", "t1"),
    ])
    .to_string();
    let expect = [
        role(MEMBER, "Tenant Member", "t1"),
        role(CONTRIBUTOR, "Tenant Contributor", "t1"),
    ];
    assert_roles(&put(&gw, "admin1", &p2, &full), &expect);
    assert_roles(&gw.get_as("member1", &p1), &expect);

    // It is durable (in the policy file) and audited.
    let text = std::fs::read_to_string(gw.policy_path()).unwrap();
    let policy: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        policy["clients"]["svc1"]["roles"],
        json!(["Tenant Member", "Tenant Contributor"])
    );
    let audit = std::fs::read_to_string(gw.audit_path()).unwrap();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{audit}");
    assert_eq!(lines[0]["caller"], "admin1");
    assert_eq!(lines[0]["target"], "svc1");
    assert_eq!(
        lines[0]["before"]["roles"],
        json!([
            "Tenant Member",
            "Tenant Viewer",
            "Tenant Contributor",
            "Tenant Data Steward"
        ])
    );
    assert_eq!(
        lines[0]["after"]["roles"],
        json!(["Tenant Member", "Tenant Viewer"])
    );
    assert!(!audit.contains("svc1-secret"));
    up.assert_untouched();
}

#[test]
fn a_put_applies_to_the_very_next_request() {
    let (up, gw) = start();
    let body = json!([{"RoleTypeId": MEMBER}]).to_string();
    // member1 is not an administrator yet.
    assert_error_response(&put(&gw, "member1", &paths("t1", "svc1")[0], &body), 403);
    let admin_body = json!([{"RoleTypeId": MEMBER}, {"RoleTypeId": ADMIN}]).to_string();
    assert_eq!(
        put(&gw, "admin1", &paths("t1", "member1")[1], &admin_body).status,
        200
    );
    assert_roles(
        &put(&gw, "member1", &paths("t1", "svc1")[0], &body),
        &[role(MEMBER, "Tenant Member", "t1")],
    );
    // And an administrator may take the role away from another at once.
    assert_eq!(
        put(&gw, "member1", &paths("t1", "admin1")[0], &body).status,
        200
    );
    assert_error_response(&put(&gw, "admin1", &paths("t1", "svc1")[0], &body), 403);
    up.assert_untouched();
}

#[test]
fn bad_credentials_and_allow_list_answer_error_responses() {
    let (up, gw) = start();
    for p in paths("t1", "member1") {
        let v = assert_error_response(&gw.get(&p, Some(("member1", "wrong"))), 401);
        assert_eq!(v["Error"], "Unauthorized.");
        assert_error_response(&gw.get(&p, Some(("nosuch", "member1-secret"))), 401);
        assert_error_response(&gw.get(&p, None), 401);
        let r = gw.send(
            http_client()
                .put(gw.url(&p))
                .header("authorization", basic("admin1", "wrong"))
                .body("[]"),
        );
        assert_error_response(&r, 401);
        // An administrator outside its allow-list is refused.
        assert_error_response(
            &put(
                &gw,
                "far1",
                &p,
                &json!([{"RoleTypeId": MEMBER}]).to_string(),
            ),
            403,
        );
        assert_error_response(&gw.get_as("far1", &p), 403);
    }
    // Unsupported methods.
    let r = gw.send(
        http_client()
            .delete(gw.url(&paths("t1", "member1")[0]))
            .header("authorization", basic("admin1", "admin1-secret")),
    );
    assert_error_response(&r, 405);
    assert_roles(
        &gw.get_as("member1", &paths("t1", "member1")[0]),
        &[role(MEMBER, "Tenant Member", "t1")],
    );
    up.assert_untouched();
}

#[test]
fn a_dry_run_of_a_put_answers_the_change_and_changes_nothing() {
    let (_up, gw) = start();
    let [p1, _] = paths("t1", "svc1");
    let file_before = std::fs::read(gw.policy_path()).unwrap();
    let body = json!([{"RoleTypeId": MEMBER}]).to_string();
    let r = put(&gw, "admin1", &format!("{p1}?dry_run=true"), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(v["dry_run"], true, "{v}");
    assert_eq!(v["target"], "svc1", "{v}");
    assert_eq!(v["clients_affected"], json!(["svc1"]), "{v}");
    assert_eq!(v["after"]["roles"], json!(["Tenant Member"]), "{v}");
    assert_eq!(std::fs::read(gw.policy_path()).unwrap(), file_before);
    assert!(
        !gw.audit_path().exists() || std::fs::read_to_string(gw.audit_path()).unwrap().is_empty()
    );
    assert_roles(
        &gw.get_as("svc1", &p1),
        &[
            role(MEMBER, "Tenant Member", "t1"),
            role(VIEWER, "Tenant Viewer", "t1"),
            role(CONTRIBUTOR, "Tenant Contributor", "t1"),
            role(DATA_STEWARD, "Tenant Data Steward", "t1"),
        ],
    );
    // Not an administrator of t1: refused as without dry_run.
    assert_error_response(
        &put(&gw, "member1", &format!("{p1}?dry_run=true"), &body),
        403,
    );
}
