//! Capture's client-management endpoints, answered by the gateway itself:
//! each endpoint's success and each documented error, with the examples and
//! the wording of `../shared/api-docs/`, the effect of a change on the very
//! next request, authentication and allow-listing of the management calls
//! themselves, that they are never proxied, and the audit log.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

/// The `user` entity type of the docs' examples: the reserved attributes with
/// their documented descriptions, `familyName` and `givenName` exactly as in
/// setAccessSchema example 2 (in that order), then the attributes of
/// `sample_record` so reads can be checked through the test upstream.
const DOC_ENTITY_TYPES: &str = r#"
entity_types:
  user:
    attr_defs:
      - {name: id, description: "simple identifier for this entity", type: id}
      - {name: uuid, description: "globally unique identifier for this entity", type: uuid}
      - {name: created, description: "when this entity was created", type: dateTime}
      - {name: lastUpdated, description: "when this entity was last updated", type: dateTime}
      - {length: 1000, constraints: [unicode-printable], name: familyName, type: string, case-sensitive: false}
      - {length: 1000, constraints: [unicode-printable], name: givenName, type: string, case-sensitive: false}
      - {name: email, type: string, length: 256}
      - {name: displayName, type: string, length: 1000}
      - {name: mobileNumber, type: string, length: 100}
      - {name: birthday, type: date}
      - name: primaryAddress
        type: object
        attr_defs:
          - {name: address1, type: string, length: 1000}
          - {name: city, type: string, length: 1000}
          - {name: zip, type: string, length: 100}
          - {name: country, type: string, length: 1000}
      - name: consents
        type: object
        attr_defs:
          - name: marketing
            type: object
            attr_defs:
              - {name: granted, type: boolean}
              - {name: updated, type: dateTime}
          - name: analytics
            type: object
            attr_defs:
              - {name: granted, type: boolean}
              - {name: updated, type: dateTime}
      - name: photos
        type: plural
        attr_defs:
          - {name: type, type: string, length: 100}
          - {name: value, type: string, length: 2000}
      - name: internal
        type: object
        attr_defs:
          - {name: riskScore, type: integer}
          - {name: notes, type: string, length: 4000}
"#;

/// Secret of `<name>` is `<name>-secret`.
const CLIENTS: &str = r#"
clients:
  owner:
    secret: owner-secret
    description: first owner
    features: [owner]
  owner2:
    secret: owner2-secret
    description: second owner
    features: [owner]
  direct:
    secret: direct-secret
    description: direct access
    features: [direct_access]
  fullreader:
    secret: fullreader-secret
    features: [direct_read_access]
  partner:
    secret: partner-secret
    features: [direct_read_access]
  issuer:
    secret: issuer-secret
    features: [access_issuer]
  login:
    secret: login-secret
    features: [login_client]
  farowner:
    secret: farowner-secret
    features: [owner]
    whitelist: ["203.0.113.0/24"]
"#;

const ALL_SECRETS: [&str; 8] = [
    "owner-secret",
    "owner2-secret",
    "direct-secret",
    "fullreader-secret",
    "partner-secret",
    "issuer-secret",
    "login-secret",
    "farowner-secret",
];

const ENTITY: &str = "/entity?type_name=user&id=7";
const NOTICE: &str = "reserved attributes (id, uuid, created, lastUpdated) are automatically included in the access schema";

fn start() -> (TestUpstream, Gateway) {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .policy(&format!("{DOC_ENTITY_TYPES}{CLIENTS}"))
        .start();
    (up, gw)
}

/// The four reserved attr_defs of the docs' example responses.
fn reserved_defs() -> Vec<Value> {
    vec![
        json!({"name": "id", "description": "simple identifier for this entity", "type": "id"}),
        json!({"name": "uuid", "description": "globally unique identifier for this entity", "type": "uuid"}),
        json!({"name": "created", "description": "when this entity was created", "type": "dateTime"}),
        json!({"name": "lastUpdated", "description": "when this entity was last updated", "type": "dateTime"}),
    ]
}

fn set_schema(gw: &Gateway, client: &str, access: &str, attributes: &str) -> Resp {
    gw.post_as(
        "owner",
        "/entityType.setAccessSchema",
        &[
            ("type_name", "user"),
            ("for_client_id", client),
            ("access_type", access),
            ("attributes", attributes),
        ],
    )
}

fn list(gw: &Gateway) -> Vec<Value> {
    let v = gw.post_as("owner", "/clients/list", &[]).assert_ok();
    v["results"].as_array().unwrap().clone()
}

fn listed(gw: &Gateway, id: &str) -> Value {
    list(gw)
        .into_iter()
        .find(|c| c["client_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in /clients/list"))
}

fn names(defs: &Value) -> Vec<String> {
    defs.as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect()
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn sorted(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn assert_feature_denied(r: &Resp) {
    r.assert_error(403, 403, "client_permission_error");
}

fn assert_invalid(r: &Resp, argument: &str, description: &str) {
    let v = r.assert_error(400, 200, "invalid_argument");
    assert_eq!(v["argument_name"], argument, "{v}");
    assert_eq!(v["error_description"], description, "{v}");
}

fn update_given_name(gw: &Gateway, client: &str) -> Resp {
    gw.post_as(
        client,
        "/entity.update",
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("attributes", r#"{"givenName":"Grace"}"#),
        ],
    )
}

fn audit_lines(gw: &Gateway) -> Vec<Value> {
    let text = std::fs::read_to_string(gw.audit_path()).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
        .collect()
}

// ---------------------------------------------------------------------------
// /clients/set_features
// ---------------------------------------------------------------------------

#[test]
fn set_features_doc_example_applies_to_the_very_next_request() {
    let (up, gw) = start();
    assert_feature_denied(&update_given_name(&gw, "fullreader"));
    up.assert_untouched();
    let r = gw.post_as(
        "owner",
        "/clients/set_features",
        &[
            ("for_client_id", "fullreader"),
            ("features", r#"["direct_access"]"#),
        ],
    );
    assert_eq!(r.assert_ok(), json!({"stat": "ok"}));
    up.assert_untouched();
    update_given_name(&gw, "fullreader").assert_ok();
    let rec = up.only();
    assert_eq!(rec.path(), "/entity.update");
    assert_eq!(
        rec.json_param("attributes").unwrap(),
        json!({"givenName": "Grace"})
    );
    assert_eq!(
        listed(&gw, "fullreader")["features"],
        json!(["direct_access"])
    );

    // And taking it away again applies just as fast.
    gw.post_as(
        "owner",
        "/clients/set_features",
        &[
            ("for_client_id", "fullreader"),
            ("features", r#"["login_client"]"#),
        ],
    )
    .assert_ok();
    assert_feature_denied(&gw.get_as("fullreader", ENTITY));
    assert_eq!(up.count(), 1);
}

#[test]
fn set_features_unknown_feature_has_the_doc_wording_and_changes_nothing() {
    let (up, gw) = start();
    let before = std::fs::read(gw.policy_path()).unwrap();
    let r = gw.post_as(
        "owner",
        "/clients/set_features",
        &[
            ("for_client_id", "direct"),
            ("features", r#"["direct_access", "ninja_superuser"]"#),
        ],
    );
    assert_invalid(
        &r,
        "features",
        "features was not valid for the following reason: ninja_superuser is not a valid feature name",
    );
    // Malformed JSON is an invalid argument too.
    let r = gw.post_as(
        "owner",
        "/clients/set_features",
        &[("for_client_id", "direct"), ("features", "[direct_access")],
    );
    r.assert_error(400, 200, "invalid_argument");
    // Missing argument.
    let r = gw.post_as(
        "owner",
        "/clients/set_features",
        &[("for_client_id", "direct")],
    );
    r.assert_error(400, 100, "missing_argument");
    // Unknown client: Capture's (sic) wording.
    let r = gw.post_as(
        "owner",
        "/clients/set_features",
        &[("for_client_id", "nosuch"), ("features", "[]")],
    );
    assert_invalid(
        &r,
        "for_client_id",
        "for_client_id was not valid for the following reason: for_client_id isnot avalid id",
    );
    assert_eq!(std::fs::read(gw.policy_path()).unwrap(), before);
    assert_eq!(listed(&gw, "direct")["features"], json!(["direct_access"]));
    gw.get_as("direct", ENTITY).assert_ok();
    assert!(
        audit_lines(&gw).is_empty(),
        "refused changes are not audited"
    );
    assert_eq!(up.count(), 1);
}

#[test]
fn an_owner_cannot_remove_owner_from_itself_but_several_owners_are_allowed() {
    let (up, gw) = start();
    // Without for_client_id the caller is the target.
    let r = gw.post_as(
        "owner",
        "/clients/set_features",
        &[("features", r#"["direct_access"]"#)],
    );
    let v = r.assert_error(400, 200, "invalid_argument");
    assert_eq!(v["argument_name"], "features");
    let r = gw.post_as(
        "owner",
        "/clients/set_features",
        &[("for_client_id", "owner"), ("features", "[]")],
    );
    r.assert_error(400, 200, "invalid_argument");
    assert_eq!(listed(&gw, "owner")["features"], json!(["owner"]));
    // Keeping owner while adding more is fine.
    gw.post_as(
        "owner",
        "/clients/set_features",
        &[("features", r#"["owner", "direct_access"]"#)],
    )
    .assert_ok();
    assert_eq!(
        sorted(
            &listed(&gw, "owner")["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect::<Vec<_>>()
        ),
        sorted(&["owner", "direct_access"])
    );

    // A third owner; it may manage the others, including removing owner from
    // another owner.
    gw.post_as(
        "owner",
        "/clients/set_features",
        &[("for_client_id", "direct"), ("features", r#"["owner"]"#)],
    )
    .assert_ok();
    let v = gw
        .post_as(
            "owner",
            "/clients/list",
            &[("has_features", r#"["owner"]"#)],
        )
        .assert_ok();
    let mut owners: Vec<String> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap().to_string())
        .collect();
    owners.sort();
    assert_eq!(owners, sorted(&["direct", "farowner", "owner", "owner2"]));
    gw.post_as("direct", "/clients/list", &[]).assert_ok();
    gw.post_as(
        "direct",
        "/clients/set_features",
        &[
            ("for_client_id", "owner2"),
            ("features", r#"["direct_access"]"#),
        ],
    )
    .assert_ok();
    assert_feature_denied(&gw.post_as("owner2", "/clients/list", &[]));
    up.assert_untouched();
}

#[test]
fn non_owners_may_call_no_owner_endpoint() {
    let (up, gw) = start();
    let before = std::fs::read(gw.policy_path()).unwrap();
    let calls: [(&str, Vec<(&str, &str)>); 9] = [
        (
            "/clients/set_features",
            vec![("for_client_id", "direct"), ("features", r#"["owner"]"#)],
        ),
        (
            "/clients/set_whitelist",
            vec![
                ("for_client_id", "direct"),
                ("whitelist", r#"["127.0.0.0/8"]"#),
            ],
        ),
        (
            "/clients/clear_whitelist",
            vec![("for_client_id", "farowner")],
        ),
        (
            "/entityType.setAccessSchema",
            vec![
                ("type_name", "user"),
                ("for_client_id", "direct"),
                ("access_type", "read"),
                ("attributes", "[]"),
            ],
        ),
        ("/clients/list", vec![]),
        ("/clients/add", vec![("description", "mine")]),
        ("/clients/delete", vec![("client_id_for_deletion", "owner")]),
        (
            "/clients/set_description",
            vec![("for_client_id", "owner"), ("description", "x")],
        ),
        ("/clients/reset_secret", vec![("for_client_id", "owner")]),
    ];
    for client in ["direct", "fullreader", "issuer", "login"] {
        for (path, fields) in &calls {
            let r = gw.post_as(client, path, fields);
            assert_eq!(r.status, 403, "{client} {path}: {}", r.text());
            assert_feature_denied(&r);
        }
    }
    assert_eq!(std::fs::read(gw.policy_path()).unwrap(), before);
    assert!(audit_lines(&gw).is_empty());
    up.assert_untouched();
}

// ---------------------------------------------------------------------------
// /clients/set_whitelist, /clients/clear_whitelist
// ---------------------------------------------------------------------------

#[test]
fn set_whitelist_doc_example_refuses_the_next_call_and_clear_restores_it() {
    let (up, gw) = start();
    gw.get_as("direct", ENTITY).assert_ok();
    let r = gw.post_as(
        "owner",
        "/clients/set_whitelist",
        &[
            ("for_client_id", "direct"),
            ("whitelist", r#"["192.168.0.0/30"]"#),
        ],
    );
    assert_eq!(r.assert_ok(), json!({"stat": "ok"}));
    assert_eq!(
        listed(&gw, "direct")["whitelist"],
        json!(["192.168.0.0/30"])
    );
    let r = gw.get_as("direct", ENTITY);
    r.assert_error(403, 403, "client_permission_error");
    assert!(!r.text().contains("Ada"));
    assert_eq!(up.count(), 1, "the refused call is not forwarded");

    let r = gw.post_as(
        "owner",
        "/clients/clear_whitelist",
        &[("for_client_id", "direct")],
    );
    assert_eq!(r.assert_ok(), json!({"stat": "ok"}));
    assert_eq!(
        listed(&gw, "direct")["whitelist"],
        json!(["0.0.0.0/0", "::/0"])
    );
    gw.get_as("direct", ENTITY).assert_ok();
    assert_eq!(up.count(), 2);

    // clear_whitelist lets an owner in from anywhere again.
    gw.post_as(
        "owner",
        "/clients/clear_whitelist",
        &[("for_client_id", "farowner")],
    )
    .assert_ok();
    gw.post_as("farowner", "/clients/list", &[]).assert_ok();
}

#[test]
fn set_whitelist_bad_cidr_has_the_doc_wording() {
    let (up, gw) = start();
    let before = std::fs::read(gw.policy_path()).unwrap();
    let r = gw.post_as(
        "owner",
        "/clients/set_whitelist",
        &[
            ("for_client_id", "direct"),
            ("whitelist", r#"["123.4.5.6/7890"]"#),
        ],
    );
    assert_invalid(
        &r,
        "whitelist",
        "whitelist was not valid for the following reason: invalid cidr address: 123.4.5.6/7890; value after slash must be 32or less",
    );
    for bad in [
        r#"["192.168.0.0/33"]"#,
        r#"["not-an-ip/8"]"#,
        r#"["10.0.0.0/8", "1.2.3/8"]"#,
        r#""10.0.0.0/8""#,
    ] {
        let r = gw.post_as(
            "owner",
            "/clients/set_whitelist",
            &[("for_client_id", "direct"), ("whitelist", bad)],
        );
        let v = r.assert_error(400, 200, "invalid_argument");
        assert_eq!(v["argument_name"], "whitelist", "{bad}: {v}");
    }
    assert_eq!(std::fs::read(gw.policy_path()).unwrap(), before);
    gw.get_as("direct", ENTITY).assert_ok();
    assert_eq!(up.count(), 1);
}

#[test]
fn set_whitelist_accepts_ipv6() {
    let (up, gw) = start();
    gw.post_as(
        "owner",
        "/clients/set_whitelist",
        &[
            ("for_client_id", "direct"),
            ("whitelist", r#"["2001:db8::/32", "192.168.0.0/30"]"#),
        ],
    )
    .assert_ok();
    assert_eq!(
        listed(&gw, "direct")["whitelist"],
        json!(["2001:db8::/32", "192.168.0.0/30"])
    );
    assert_feature_denied(&gw.get_as("direct", ENTITY));
    up.assert_untouched();

    // On an IPv6 listener, a client limited to ::1 gets in, one limited to
    // the documentation prefix does not.
    let up6 = TestUpstream::capture_like();
    let gw6 = GatewayBuilder::new(&up6)
        .policy(&format!("{DOC_ENTITY_TYPES}{CLIENTS}"))
        .ipv6()
        .start();
    gw6.post_as(
        "owner",
        "/clients/set_whitelist",
        &[("for_client_id", "direct"), ("whitelist", r#"["::1/128"]"#)],
    )
    .assert_ok();
    gw6.get_as("direct", ENTITY).assert_ok();
    gw6.post_as(
        "owner",
        "/clients/set_whitelist",
        &[
            ("for_client_id", "direct"),
            ("whitelist", r#"["2001:db8::/32"]"#),
        ],
    )
    .assert_ok();
    assert_feature_denied(&gw6.get_as("direct", ENTITY));
    assert_eq!(up6.count(), 1);
}

#[test]
fn an_owner_cannot_lock_itself_out_with_its_own_whitelist() {
    let (up, gw) = start();
    for fields in [
        vec![("whitelist", r#"["192.168.0.0/30"]"#)],
        vec![
            ("for_client_id", "owner"),
            ("whitelist", r#"["192.168.0.0/30"]"#),
        ],
        vec![("for_client_id", "owner"), ("whitelist", "[]")],
    ] {
        let r = gw.post_as("owner", "/clients/set_whitelist", &fields);
        let v = r.assert_error(400, 200, "invalid_argument");
        assert_eq!(v["argument_name"], "whitelist");
        assert!(
            v["error_description"]
                .as_str()
                .unwrap()
                .contains("127.0.0.1"),
            "the refusal names the caller's address: {v}"
        );
    }
    assert_eq!(
        listed(&gw, "owner")["whitelist"],
        json!(["0.0.0.0/0", "::/0"])
    );
    // A list that keeps 127.0.0.1 is fine, and the owner keeps working.
    gw.post_as(
        "owner",
        "/clients/set_whitelist",
        &[("whitelist", r#"["192.168.0.0/30", "127.0.0.0/8"]"#)],
    )
    .assert_ok();
    gw.post_as("owner", "/clients/list", &[]).assert_ok();
    // Another owner may still move it out of range (it is not the caller).
    gw.post_as(
        "owner2",
        "/clients/set_whitelist",
        &[
            ("for_client_id", "owner"),
            ("whitelist", r#"["192.168.0.0/30"]"#),
        ],
    )
    .assert_ok();
    assert_feature_denied(&gw.post_as("owner", "/clients/list", &[]));
    up.assert_untouched();
}

// ---------------------------------------------------------------------------
// /entityType.setAccessSchema
// ---------------------------------------------------------------------------

#[test]
fn set_access_schema_doc_example_1_read_only() {
    let (up, gw) = start();
    let v = set_schema(&gw, "direct", "write", "[]").assert_ok();
    let expected = json!({
        "schema": {"attr_defs": reserved_defs(), "name": "user"},
        "notice": NOTICE,
        "stat": "ok"
    });
    assert_eq!(v, expected);
    // The client is now read-only: a write is refused before the upstream.
    let r = update_given_name(&gw, "direct");
    assert_eq!(r.status, 403, "{}", r.text());
    up.assert_untouched();
    // Reads are unaffected.
    let v = gw.get_as("direct", ENTITY).assert_ok();
    assert_eq!(v["result"]["email"], "hidden-email-7@example.com");
}

#[test]
fn set_access_schema_doc_example_2_write_given_and_family_name() {
    let (up, gw) = start();
    let v = set_schema(&gw, "direct", "write", r#"["givenName", "familyName"]"#).assert_ok();
    let mut defs = reserved_defs();
    defs.push(json!({
        "length": 1000, "constraints": ["unicode-printable"], "name": "familyName",
        "type": "string", "case-sensitive": false
    }));
    defs.push(json!({
        "length": 1000, "constraints": ["unicode-printable"], "name": "givenName",
        "type": "string", "case-sensitive": false
    }));
    let expected = json!({
        "schema": {"attr_defs": defs, "name": "user"},
        "notice": NOTICE,
        "stat": "ok"
    });
    assert_eq!(v, expected);
    // getAccessSchema answers the same schema.
    let g = gw
        .get_as(
            "owner",
            "/entityType.getAccessSchema?type_name=user&for_client_id=direct&access_type=write",
        )
        .assert_ok();
    assert_eq!(g["schema"], expected["schema"]);
    // The next write is held to it.
    update_given_name(&gw, "direct").assert_ok();
    let r = gw.post_as(
        "direct",
        "/entity.update",
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("attributes", r#"{"givenName":"G","email":"x@example.com"}"#),
        ],
    );
    // Default mode strips what is outside the schema.
    if r.status == 200 {
        let last = up.requests().pop().unwrap();
        assert_eq!(
            last.json_param("attributes").unwrap(),
            json!({"givenName": "G"})
        );
    } else {
        assert_eq!(r.status, 403, "{}", r.text());
    }
}

#[test]
fn set_access_schema_accepts_dot_and_slash_paths_and_filters_the_next_read() {
    let (up, gw) = start();
    // Before: no schema, full read.
    let v = gw.get_as("partner", ENTITY).assert_ok();
    assert_eq!(v["result"]["email"], "hidden-email-7@example.com");
    let v = set_schema(
        &gw,
        "partner",
        "read",
        r#"["givenName", "primaryAddress.city", "primaryAddress/country", "/consents/marketing/granted"]"#,
    )
    .assert_ok();
    assert_eq!(v["notice"], NOTICE);
    let defs = &v["schema"]["attr_defs"];
    assert_eq!(
        names(defs),
        [
            "id",
            "uuid",
            "created",
            "lastUpdated",
            "givenName",
            "primaryAddress",
            "consents"
        ]
    );
    let pa = defs
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "primaryAddress")
        .unwrap();
    assert_eq!(names(&pa["attr_defs"]), ["city", "country"]);
    let co = defs
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "consents")
        .unwrap();
    assert_eq!(names(&co["attr_defs"]), ["marketing"]);
    assert_eq!(names(&co["attr_defs"][0]["attr_defs"]), ["granted"]);

    let r = gw.get_as("partner", ENTITY);
    let v = r.assert_ok();
    r.assert_no_hidden();
    let rec = &v["result"];
    assert_eq!(
        keys(rec),
        sorted(&[
            "id",
            "uuid",
            "created",
            "lastUpdated",
            "givenName",
            "primaryAddress",
            "consents"
        ])
    );
    assert_eq!(
        rec["primaryAddress"],
        json!({"city": "London", "country": "UK"})
    );
    assert_eq!(rec["consents"], json!({"marketing": {"granted": true}}));
    assert_eq!(up.count(), 2);
}

#[test]
fn set_access_schema_unknown_attribute_is_223_and_changes_nothing() {
    let (up, gw) = start();
    set_schema(&gw, "partner", "read", r#"["givenName"]"#).assert_ok();
    let before = std::fs::read(gw.policy_path()).unwrap();
    for attrs in [
        r#"["givenName", "nosuch"]"#,
        r#"["primaryAddress.nosuch"]"#,
        r#"["givenName/city"]"#,
        r#"["photos.value.deeper"]"#,
    ] {
        let r = set_schema(&gw, "partner", "read", attrs);
        let v = r.assert_error(400, 223, "unknown_attribute");
        assert_eq!(v["argument_name"], "attributes", "{attrs}: {v}");
    }
    // Other documented argument errors.
    set_schema(&gw, "partner", "readwrite", "[]").assert_error(400, 200, "invalid_argument");
    set_schema(&gw, "partner", "read", "givenName").assert_error(400, 200, "invalid_argument");
    set_schema(&gw, "nosuch", "read", "[]").assert_error(400, 200, "invalid_argument");
    gw.post_as(
        "owner",
        "/entityType.setAccessSchema",
        &[
            ("type_name", "nosuchtype"),
            ("for_client_id", "partner"),
            ("access_type", "read"),
            ("attributes", "[]"),
        ],
    )
    .assert_error(400, 222, "unknown_entity_type");
    gw.post_as(
        "owner",
        "/entityType.setAccessSchema",
        &[
            ("type_name", "user"),
            ("for_client_id", "partner"),
            ("access_type", "read"),
        ],
    )
    .assert_error(400, 100, "missing_argument");
    assert_eq!(std::fs::read(gw.policy_path()).unwrap(), before);
    let v = gw.get_as("partner", ENTITY).assert_ok();
    assert_eq!(
        keys(&v["result"]),
        sorted(&["id", "uuid", "created", "lastUpdated", "givenName"])
    );
    assert_eq!(up.count(), 1);
}

#[test]
fn set_access_schema_includes_reserved_attributes_with_the_notice() {
    let (_up, gw) = start();
    let v = set_schema(
        &gw,
        "partner",
        "read",
        r#"["id", "givenName", "created", "/uuid"]"#,
    )
    .assert_ok();
    assert_eq!(v["notice"], NOTICE);
    assert_eq!(
        names(&v["schema"]["attr_defs"]),
        ["id", "uuid", "created", "lastUpdated", "givenName"]
    );
    // Listed or not, every reserved attribute is readable.
    let v = set_schema(&gw, "partner", "read", r#"["email"]"#).assert_ok();
    assert_eq!(
        names(&v["schema"]["attr_defs"]),
        ["id", "uuid", "created", "lastUpdated", "email"]
    );
    let v = gw.get_as("partner", ENTITY).assert_ok();
    assert_eq!(
        keys(&v["result"]),
        sorted(&["id", "uuid", "created", "lastUpdated", "email"])
    );
}

#[test]
fn set_access_schema_replaces_the_whole_list() {
    let (_up, gw) = start();
    set_schema(
        &gw,
        "partner",
        "read",
        r#"["givenName", "email", "primaryAddress"]"#,
    )
    .assert_ok();
    let v = gw.get_as("partner", ENTITY).assert_ok();
    assert_eq!(v["result"]["email"], "hidden-email-7@example.com");
    assert_eq!(v["result"]["primaryAddress"]["zip"], "HIDDENZIP");

    let v = set_schema(&gw, "partner", "read", r#"["familyName"]"#).assert_ok();
    assert_eq!(
        names(&v["schema"]["attr_defs"]),
        ["id", "uuid", "created", "lastUpdated", "familyName"]
    );
    let g = gw
        .get_as(
            "partner",
            "/entityType.getAccessSchema?type_name=user&access_type=read",
        )
        .assert_ok();
    assert_eq!(g["schema"], v["schema"]);
    let r = gw.get_as("partner", ENTITY);
    let v = r.assert_ok();
    r.assert_no_hidden();
    assert_eq!(
        keys(&v["result"]),
        sorted(&["id", "uuid", "created", "lastUpdated", "familyName"])
    );
    // The other access types of the client are untouched.
    let g = gw
        .get_as(
            "partner",
            "/entityType.getAccessSchema?type_name=user&access_type=write",
        )
        .assert_ok();
    assert_eq!(names(&g["schema"]["attr_defs"]).len(), 14, "{g}");
}

// ---------------------------------------------------------------------------
// /entityType.getAccessSchema
// ---------------------------------------------------------------------------

#[test]
fn get_access_schema_all_five_features_get_and_post_full_type_without_schema() {
    let (up, gw) = start();
    let full_names = [
        "id",
        "uuid",
        "created",
        "lastUpdated",
        "familyName",
        "givenName",
        "email",
        "displayName",
        "mobileNumber",
        "birthday",
        "primaryAddress",
        "consents",
        "photos",
        "internal",
    ];
    for client in ["owner", "issuer", "direct", "fullreader", "login"] {
        for access in ["read", "write", "read_with_token", "write_with_token"] {
            let v = gw
                .get_as(
                    client,
                    &format!("/entityType.getAccessSchema?type_name=user&access_type={access}"),
                )
                .assert_ok();
            assert_eq!(keys(&v), sorted(&["schema", "stat"]), "{v}");
            assert_eq!(v["schema"]["name"], "user");
            assert_eq!(
                names(&v["schema"]["attr_defs"]),
                full_names,
                "{client} {access}"
            );
        }
        let v = gw
            .post_as(
                client,
                "/entityType.getAccessSchema",
                &[
                    ("type_name", "user"),
                    ("for_client_id", client),
                    ("access_type", "read"),
                ],
            )
            .assert_ok();
        assert_eq!(names(&v["schema"]["attr_defs"]), full_names);
    }
    // The full type keeps the definitions verbatim (nested, with extras).
    let v = gw
        .get_as(
            "login",
            "/entityType.getAccessSchema?type_name=user&access_type=read",
        )
        .assert_ok();
    let defs = v["schema"]["attr_defs"].as_array().unwrap();
    assert_eq!(defs[0], reserved_defs()[0]);
    assert_eq!(defs[5]["constraints"], json!(["unicode-printable"]));
    let consents = defs.iter().find(|d| d["name"] == "consents").unwrap();
    assert_eq!(names(&consents["attr_defs"]), ["marketing", "analytics"]);

    // With a schema, the client sees its own.
    set_schema(&gw, "fullreader", "read", r#"["givenName"]"#).assert_ok();
    let v = gw
        .get_as(
            "fullreader",
            "/entityType.getAccessSchema?type_name=user&access_type=read",
        )
        .assert_ok();
    assert_eq!(
        names(&v["schema"]["attr_defs"]),
        ["id", "uuid", "created", "lastUpdated", "givenName"]
    );

    // Errors: non-owners only for themselves; bad arguments.
    assert_feature_denied(&gw.get_as(
        "login",
        "/entityType.getAccessSchema?type_name=user&for_client_id=fullreader&access_type=read",
    ));
    gw.get_as(
        "owner",
        "/entityType.getAccessSchema?type_name=user&for_client_id=fullreader&access_type=read",
    )
    .assert_ok();
    gw.get_as(
        "login",
        "/entityType.getAccessSchema?type_name=nosuch&access_type=read",
    )
    .assert_error(400, 222, "unknown_entity_type");
    gw.get_as("login", "/entityType.getAccessSchema?type_name=user")
        .assert_error(400, 100, "missing_argument");
    gw.get_as(
        "login",
        "/entityType.getAccessSchema?type_name=user&access_type=all",
    )
    .assert_error(400, 200, "invalid_argument");
    up.assert_untouched();
}

// ---------------------------------------------------------------------------
// /clients/list, add, delete, set_description, reset_secret
// ---------------------------------------------------------------------------

#[test]
fn clients_list_filters_by_features_and_never_lists_secrets() {
    let (up, gw) = start();
    let r = gw.post_as("owner", "/clients/list", &[]);
    let v = r.assert_ok();
    for s in ALL_SECRETS {
        assert!(!r.text().contains(s), "{s} listed: {}", r.text());
    }
    let results = v["results"].as_array().unwrap();
    let mut ids: Vec<&str> = results
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "direct",
            "farowner",
            "fullreader",
            "issuer",
            "login",
            "owner",
            "owner2",
            "partner"
        ]
    );
    for c in results {
        assert!(
            c.get("client_secret").is_none() && c.get("secret").is_none(),
            "{c}"
        );
    }
    let owner = results.iter().find(|c| c["client_id"] == "owner").unwrap();
    assert_eq!(owner["description"], "first owner");
    assert_eq!(owner["features"], json!(["owner"]));
    let far = results
        .iter()
        .find(|c| c["client_id"] == "farowner")
        .unwrap();
    assert_eq!(far["whitelist"], json!(["203.0.113.0/24"]));

    // has_features: clients having at least one of them.
    let v = gw
        .post_as(
            "owner",
            "/clients/list",
            &[("has_features", r#"["direct_read_access", "login_client"]"#)],
        )
        .assert_ok();
    let mut ids: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["fullreader", "login", "partner"]);
    // GET with a query works too.
    let v = gw
        .get_as(
            "owner",
            "/clients/list?has_features=%5B%22access_issuer%22%5D",
        )
        .assert_ok();
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert_eq!(v["results"][0]["client_id"], "issuer");
    // Documented errors.
    let r = gw.post_as("owner", "/clients/list", &[("has_features", "[owner")]);
    assert_invalid(
        &r,
        "has_features",
        "has_features was not valid for the following reason: the JSON is not syntactically valid",
    );
    gw.post_as(
        "owner",
        "/clients/list",
        &[("has_features", r#"["ninja_superuser"]"#)],
    )
    .assert_error(400, 200, "invalid_argument");
    up.assert_untouched();
}

#[test]
fn clients_add_returns_credentials_that_work_at_once() {
    let (up, gw) = start();
    let r = gw.post_as(
        "owner",
        "/clients/add",
        &[
            ("description", "new partner"),
            ("features", r#"["direct_read_access"]"#),
        ],
    );
    let v = r.assert_ok();
    let id = v["client_id"].as_str().unwrap().to_string();
    let secret = v["client_secret"].as_str().unwrap().to_string();
    assert!(!id.is_empty() && !secret.is_empty() && id != secret, "{v}");
    assert_eq!(v["description"], "new partner");
    assert_eq!(v["features"], json!(["direct_read_access"]));
    assert!(
        v["whitelist"]
            .as_array()
            .unwrap()
            .contains(&json!("0.0.0.0/0")),
        "{v}"
    );

    let r = gw.get(ENTITY, Some((&id, &secret)));
    let rv = r.assert_ok();
    assert_eq!(rv["result"]["givenName"], "Ada7");
    assert_eq!(up.count(), 1);
    gw.get(ENTITY, Some((&id, "wrong")))
        .assert_error(401, 402, "invalid_client_credentials");
    // Secret as form parameters, too.
    gw.get(
        &format!("{ENTITY}&client_id={id}&client_secret={secret}"),
        None,
    )
    .assert_ok();

    let r = gw.post_as("owner", "/clients/list", &[]);
    assert!(!r.text().contains(&secret), "secret listed");
    let c = listed(&gw, &id);
    assert_eq!(c["description"], "new partner");

    // Without features the client may do nothing but read its own schema.
    let v = gw
        .post_as("owner", "/clients/add", &[("description", "bare")])
        .assert_ok();
    assert_eq!(v["features"], json!([]));
    let (bid, bsec) = (
        v["client_id"].as_str().unwrap(),
        v["client_secret"].as_str().unwrap(),
    );
    assert_ne!(bid, id);
    assert_ne!(bsec, secret);
    assert_feature_denied(&gw.get(ENTITY, Some((bid, bsec))));
    // Description is required; features must be valid.
    gw.post_as("owner", "/clients/add", &[])
        .assert_error(400, 100, "missing_argument");
    gw.post_as(
        "owner",
        "/clients/add",
        &[("description", "x"), ("features", r#"["ninja_superuser"]"#)],
    )
    .assert_error(400, 200, "invalid_argument");
    assert_eq!(up.count(), 2);
    // The new clients are in the policy file (durable).
    let text = std::fs::read_to_string(gw.policy_path()).unwrap();
    assert!(text.contains(&id) && text.contains(bid));
}

#[test]
fn clients_delete_refuses_the_deleted_client_and_keeps_the_last_owner() {
    let (up, gw) = start();
    gw.get_as("direct", ENTITY).assert_ok();
    let r = gw.post_as(
        "owner",
        "/clients/delete",
        &[("client_id_for_deletion", "direct")],
    );
    assert_eq!(r.assert_ok(), json!({"stat": "ok"}));
    gw.get_as("direct", ENTITY)
        .assert_error(401, 402, "invalid_client_credentials");
    assert_eq!(up.count(), 1);
    assert!(list(&gw).iter().all(|c| c["client_id"] != "direct"));

    // Invalid id: Capture's wording.
    let r = gw.post_as(
        "owner",
        "/clients/delete",
        &[("client_id_for_deletion", "direct")],
    );
    assert_invalid(
        &r,
        "client_id_for_deletion",
        "client_id_for_deletion was not valid for the following reason: client_id_for_deletion is not a valid id",
    );
    gw.post_as("owner", "/clients/delete", &[])
        .assert_error(400, 100, "missing_argument");

    // Owners may be deleted while another remains, the last one never.
    for other in ["owner2", "farowner"] {
        gw.post_as(
            "owner",
            "/clients/delete",
            &[("client_id_for_deletion", other)],
        )
        .assert_ok();
    }
    let r = gw.post_as(
        "owner",
        "/clients/delete",
        &[("client_id_for_deletion", "owner")],
    );
    let v = r.assert_error(400, 200, "invalid_argument");
    assert_eq!(v["argument_name"], "client_id_for_deletion");
    gw.post_as("owner", "/clients/list", &[]).assert_ok();
    // An owner may delete itself when it is not the last.
    gw.post_as(
        "owner",
        "/clients/set_features",
        &[("for_client_id", "partner"), ("features", r#"["owner"]"#)],
    )
    .assert_ok();
    gw.post_as(
        "owner",
        "/clients/delete",
        &[("client_id_for_deletion", "owner")],
    )
    .assert_ok();
    gw.post_as("owner", "/clients/list", &[])
        .assert_error(401, 402, "invalid_client_credentials");
    gw.post_as("partner", "/clients/list", &[]).assert_ok();
    assert_eq!(up.count(), 1);
}

#[test]
fn clients_set_description() {
    let (up, gw) = start();
    let r = gw.post_as(
        "owner",
        "/clients/set_description",
        &[
            ("for_client_id", "partner"),
            ("description", "ACME partner, EU"),
        ],
    );
    assert_eq!(r.assert_ok(), json!({"stat": "ok"}));
    assert_eq!(listed(&gw, "partner")["description"], "ACME partner, EU");
    // Omitted for_client_id: the caller.
    gw.post_as(
        "owner",
        "/clients/set_description",
        &[("description", "me")],
    )
    .assert_ok();
    assert_eq!(listed(&gw, "owner")["description"], "me");
    gw.post_as(
        "owner",
        "/clients/set_description",
        &[("for_client_id", "partner")],
    )
    .assert_error(400, 100, "missing_argument");
    assert_invalid(
        &gw.post_as(
            "owner",
            "/clients/set_description",
            &[("for_client_id", "nosuch"), ("description", "x")],
        ),
        "for_client_id",
        "for_client_id was not valid for the following reason: for_client_id isnot avalid id",
    );
    up.assert_untouched();
}

#[test]
fn clients_reset_secret_with_and_without_grace_period() {
    let (up, gw) = start();
    let r = gw.post_as(
        "owner",
        "/clients/reset_secret",
        &[("for_client_id", "partner"), ("hours_to_live", "1")],
    );
    let v = r.assert_ok();
    assert_eq!(keys(&v), sorted(&["new_secret", "stat"]));
    let s1 = v["new_secret"].as_str().unwrap().to_string();
    assert_ne!(s1, "partner-secret");
    // New works; old still works during the grace period.
    gw.get(ENTITY, Some(("partner", &s1))).assert_ok();
    gw.get(ENTITY, Some(("partner", "partner-secret")))
        .assert_ok();

    // hours_to_live=0: only the newest works.
    let v = gw
        .post_as(
            "owner",
            "/clients/reset_secret",
            &[("for_client_id", "partner"), ("hours_to_live", "0")],
        )
        .assert_ok();
    let s2 = v["new_secret"].as_str().unwrap().to_string();
    assert!(s2 != s1 && s2 != "partner-secret");
    gw.get(ENTITY, Some(("partner", &s2))).assert_ok();
    gw.get(ENTITY, Some(("partner", &s1)))
        .assert_error(401, 402, "invalid_client_credentials");
    gw.get(ENTITY, Some(("partner", "partner-secret")))
        .assert_error(401, 402, "invalid_client_credentials");
    assert_eq!(up.count(), 3);

    // Default (no hours_to_live) is no grace.
    let v = gw
        .post_as(
            "owner",
            "/clients/reset_secret",
            &[("for_client_id", "partner")],
        )
        .assert_ok();
    let s3 = v["new_secret"].as_str().unwrap().to_string();
    gw.get(ENTITY, Some(("partner", &s2)))
        .assert_error(401, 402, "invalid_client_credentials");
    gw.get(ENTITY, Some(("partner", &s3))).assert_ok();

    for bad in ["-1", "169", "abc", "1.5"] {
        gw.post_as(
            "owner",
            "/clients/reset_secret",
            &[("for_client_id", "partner"), ("hours_to_live", bad)],
        )
        .assert_error(400, 200, "invalid_argument");
    }
    gw.get(ENTITY, Some(("partner", &s3))).assert_ok();
    // Not listed anywhere.
    let r = gw.post_as("owner", "/clients/list", &[]);
    for s in [&s1, &s2, &s3] {
        assert!(!r.text().contains(s.as_str()));
    }
}

// ---------------------------------------------------------------------------
// Authentication, allow-list, never proxied
// ---------------------------------------------------------------------------

#[test]
fn management_calls_are_authenticated_allow_listed_and_never_proxied() {
    let (up, gw) = start();
    let paths = [
        "/clients/set_features",
        "/clients/set_whitelist",
        "/clients/clear_whitelist",
        "/entityType.setAccessSchema",
        "/entityType.getAccessSchema",
        "/clients/list",
        "/clients/add",
        "/clients/delete",
        "/clients/set_description",
        "/clients/reset_secret",
    ];
    for path in paths {
        gw.post_form(path, Some(("owner", "wrong")), &[("description", "x")])
            .assert_error(401, 402, "invalid_client_credentials");
        gw.post_form(path, Some(("nosuch", "owner-secret")), &[])
            .assert_error(401, 402, "invalid_client_credentials");
        let r = gw.post_form(path, None, &[]);
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        // An owner outside its allow-list is refused like any caller.
        assert_feature_denied(&gw.post_as("farowner", path, &[("description", "x")]));
    }
    // Form credentials are accepted as for any call.
    gw.post_form(
        "/clients/list",
        None,
        &[("client_id", "owner"), ("client_secret", "owner-secret")],
    )
    .assert_ok();
    // Method: writes are POST only.
    let r = gw.get_as("owner", "/clients/set_description?description=x");
    assert!(
        r.status == 405 || r.status == 400,
        "{} {}",
        r.status,
        r.text()
    );
    assert_eq!(listed(&gw, "owner")["description"], "first owner");
    up.assert_untouched();
    assert!(audit_lines(&gw).is_empty());
}

// ---------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------

#[test]
fn every_change_is_audited_with_secrets_redacted() {
    let (up, gw) = start();
    let mut responses: Vec<(String, Resp)> = Vec::new();
    let mut call = |path: &str, fields: &[(&str, &str)]| {
        let r = gw.post_as("owner", path, fields);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        responses.push((path.to_string(), r));
    };
    call(
        "/clients/set_description",
        &[("for_client_id", "partner"), ("description", "audited")],
    );
    call(
        "/clients/set_features",
        &[
            ("for_client_id", "partner"),
            ("features", r#"["direct_access"]"#),
        ],
    );
    call(
        "/clients/set_whitelist",
        &[
            ("for_client_id", "partner"),
            ("whitelist", r#"["127.0.0.0/8"]"#),
        ],
    );
    call("/clients/clear_whitelist", &[("for_client_id", "partner")]);
    call(
        "/entityType.setAccessSchema",
        &[
            ("type_name", "user"),
            ("for_client_id", "partner"),
            ("access_type", "read"),
            ("attributes", r#"["givenName"]"#),
        ],
    );
    call(
        "/clients/add",
        &[
            ("description", "added"),
            ("features", r#"["login_client"]"#),
        ],
    );
    call(
        "/clients/reset_secret",
        &[("for_client_id", "partner"), ("hours_to_live", "2")],
    );
    call("/clients/delete", &[("client_id_for_deletion", "login")]);
    // Reads are not changes.
    call("/clients/list", &[]);
    call(
        "/entityType.getAccessSchema",
        &[("type_name", "user"), ("access_type", "read")],
    );

    let added = responses[5].1.json();
    let new_id = added["client_id"].as_str().unwrap().to_string();
    let new_secret = added["client_secret"].as_str().unwrap().to_string();
    let reset = responses[6].1.json()["new_secret"]
        .as_str()
        .unwrap()
        .to_string();

    let lines = audit_lines(&gw);
    let endpoints: Vec<&str> = lines
        .iter()
        .map(|l| l["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(
        endpoints,
        [
            "/clients/set_description",
            "/clients/set_features",
            "/clients/set_whitelist",
            "/clients/clear_whitelist",
            "/entityType.setAccessSchema",
            "/clients/add",
            "/clients/reset_secret",
            "/clients/delete",
        ]
    );
    for l in &lines {
        assert_eq!(l["caller"], "owner", "{l}");
        assert_eq!(l["ip"], "127.0.0.1", "{l}");
        assert!(l["ts"].as_str().is_some_and(|s| !s.is_empty()), "{l}");
        assert!(l.get("before").is_some() && l.get("after").is_some(), "{l}");
    }
    let targets: Vec<&str> = lines
        .iter()
        .map(|l| l["target"].as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        [
            "partner",
            "partner",
            "partner",
            "partner",
            "partner",
            new_id.as_str(),
            "partner",
            "login"
        ]
    );
    // before/after carry the change.
    assert_eq!(lines[0]["before"]["description"], Value::Null);
    assert_eq!(lines[0]["after"]["description"], "audited");
    assert_eq!(
        lines[1]["before"]["features"],
        json!(["direct_read_access"])
    );
    assert_eq!(lines[1]["after"]["features"], json!(["direct_access"]));
    assert_eq!(lines[2]["after"]["whitelist"], json!(["127.0.0.0/8"]));
    assert_eq!(lines[3]["before"]["whitelist"], json!(["127.0.0.0/8"]));
    assert_eq!(lines[3]["after"]["whitelist"], Value::Null);
    assert_eq!(
        lines[4]["after"]["access_schemas"]["user"]["read"],
        json!(["givenName"])
    );
    assert_eq!(lines[5]["before"], Value::Null);
    assert_eq!(lines[5]["after"]["description"], "added");
    assert_eq!(lines[7]["after"], Value::Null);
    assert_eq!(lines[7]["before"]["features"], json!(["login_client"]));
    // Each line's request id matches the answer's... (responses carry none on
    // success, so check they are distinct and non-empty).
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), lines.len());

    // No secret value in the audit log, and none in any response but the
    // add and reset_secret answers.
    let audit = std::fs::read_to_string(gw.audit_path()).unwrap();
    let mut secrets: Vec<&str> = ALL_SECRETS.to_vec();
    secrets.push(&new_secret);
    secrets.push(&reset);
    for s in &secrets {
        assert!(!audit.contains(s), "secret {s} in the audit log:\n{audit}");
    }
    assert!(audit.contains("[redacted]"));
    for (i, (path, r)) in responses.iter().enumerate() {
        for s in &secrets {
            let allowed = (i == 5 && *s == new_secret) || (i == 6 && *s == reset);
            assert!(
                allowed || !r.text().contains(s),
                "secret {s} in the {path} response"
            );
        }
    }
    // Refusals are not audited.
    gw.post_as(
        "owner",
        "/clients/delete",
        &[("client_id_for_deletion", "nosuch")],
    )
    .assert_error(400, 200, "invalid_argument");
    assert_eq!(audit_lines(&gw).len(), 8);
    up.assert_untouched();
}

// ---------------------------------------------------------------------------
// dry_run=true on every management write
// ---------------------------------------------------------------------------

/// A dry run answers what the change would do and changes nothing: not the
/// policy in force, not the file, not the audit log.
#[test]
fn a_dry_run_answers_what_would_change_and_changes_nothing() {
    let (_up, gw) = start();
    let file_before = std::fs::read(gw.policy_path()).unwrap();
    let schema_before = gw
        .post_as(
            "owner",
            "/entityType.getAccessSchema",
            &[
                ("type_name", "user"),
                ("for_client_id", "partner"),
                ("access_type", "read"),
            ],
        )
        .assert_ok();

    let v = gw
        .post_as(
            "owner",
            "/entityType.setAccessSchema",
            &[
                ("type_name", "user"),
                ("for_client_id", "partner"),
                ("access_type", "read"),
                ("attributes", r#"["givenName"]"#),
                ("dry_run", "true"),
            ],
        )
        .assert_ok();
    assert_eq!(v["dry_run"], true, "{v}");
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["errors"], json!([]), "{v}");
    assert_eq!(v["target"], "partner", "{v}");
    assert_eq!(v["clients_affected"], json!(["partner"]), "{v}");
    assert_eq!(v["entity_types_affected"], json!([]), "{v}");
    assert_eq!(v["before"]["secret"], "[redacted]", "{v}");
    assert_eq!(
        v["after"]["access_schemas"]["user"]["read"],
        json!(["givenName"]),
        "{v}"
    );
    assert_ne!(
        v["before"]["access_schemas"], v["after"]["access_schemas"],
        "{v}"
    );
    assert_eq!(v["result"]["stat"], "ok", "{v}");

    // Nothing changed.
    let schema_after = gw
        .post_as(
            "owner",
            "/entityType.getAccessSchema",
            &[
                ("type_name", "user"),
                ("for_client_id", "partner"),
                ("access_type", "read"),
            ],
        )
        .assert_ok();
    assert_eq!(schema_before, schema_after);
    assert_eq!(std::fs::read(gw.policy_path()).unwrap(), file_before);
    assert!(audit_lines(&gw).is_empty(), "a dry run was audited");

    // A client that would be added is not, and its secret is not shown.
    let v = gw
        .post_as(
            "owner",
            "/clients/add",
            &[
                ("description", "would-be"),
                ("features", "[]"),
                ("dry_run", "true"),
            ],
        )
        .assert_ok();
    let id = v["target"].as_str().unwrap().to_string();
    assert_eq!(v["result"]["client_secret"], "[redacted]", "{v}");
    assert_eq!(v["before"], Value::Null, "{v}");
    assert_eq!(v["after"]["description"], "would-be", "{v}");
    assert_eq!(v["clients_affected"], json!([id.clone()]), "{v}");
    assert!(list(&gw).iter().all(|c| c["client_id"] != id.as_str()));

    // A change the real call would refuse is refused the same way.
    let r = gw.post_as(
        "owner",
        "/clients/set_features",
        &[
            ("for_client_id", "owner"),
            ("features", "[]"),
            ("dry_run", "true"),
        ],
    );
    assert!(r.status >= 400, "{}", r.text());

    // A client that would be deleted is not.
    let r = gw.post_as(
        "owner",
        "/clients/delete",
        &[("client_id_for_deletion", "partner"), ("dry_run", "true")],
    );
    let v = r.assert_ok();
    assert_eq!(v["after"], Value::Null, "{v}");
    assert!(list(&gw).iter().any(|c| c["client_id"] == "partner"));
    assert_eq!(std::fs::read(gw.policy_path()).unwrap(), file_before);
    assert!(audit_lines(&gw).is_empty());

    // The same call without dry_run does change it, and is audited.
    set_schema(&gw, "partner", "read", r#"["givenName"]"#).assert_ok();
    assert_ne!(std::fs::read(gw.policy_path()).unwrap(), file_before);
    assert_eq!(audit_lines(&gw).len(), 1);
}

#[test]
fn dry_run_must_be_true_or_false_and_never_lets_a_refused_caller_in() {
    let (_up, gw) = start();
    let file_before = std::fs::read(gw.policy_path()).unwrap();
    let r = gw.post_as(
        "owner",
        "/clients/set_description",
        &[
            ("for_client_id", "partner"),
            ("description", "x"),
            ("dry_run", "yes"),
        ],
    );
    assert_invalid(
        &r,
        "dry_run",
        "dry_run was not valid for the following reason: must be true or false",
    );
    // A caller that may not make the change is refused as without dry_run.
    let r = gw.post_as(
        "partner",
        "/clients/set_description",
        &[
            ("for_client_id", "partner"),
            ("description", "x"),
            ("dry_run", "true"),
        ],
    );
    assert_feature_denied(&r);
    assert_eq!(std::fs::read(gw.policy_path()).unwrap(), file_before);
    assert!(audit_lines(&gw).is_empty());
}
