//! Shadow schemas: evaluated on every call next to the enforced schema,
//! never changing what is forwarded or answered; what they would have
//! removed is counted per client and direction and logged by path, never
//! by value. Set, shown and promoted through the management API.

// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The record the test's upstream answers for every read, and echoes the
/// parameters it got for every write.
fn record() -> Value {
    json!({
        "id": 7, "uuid": "u-7", "givenName": "Ada", "email": "ada@example.com",
        "birthday": "1815-12-10",
        "primaryAddress": {"city": "London", "zip": "W1"},
        "photos": [{"type": "a", "value": "x"}, {"type": "b", "value": "y"}]
    })
}

fn upstream() -> TestUpstream {
    TestUpstream::start(|r| {
        if r.path() == "/entity" {
            Reply::json(json!({"stat": "ok", "result": record()}))
        } else {
            Reply::json(json!({"stat": "ok"}))
        }
    })
}

/// `shadowed` and `plain` have the same enforced schemas; only `shadowed`
/// carries shadow schemas.
fn policy() -> String {
    policy_with_clients(
        r#"
clients:
  owner:
    secret: owner-secret
    features: [owner]
  shadowed:
    secret: shadowed-secret
    features: [direct_access]
    access_schemas:
      user:
        read: [givenName, email, birthday, primaryAddress, photos]
        write: [givenName, email, primaryAddress]
        shadow:
          read: [givenName, primaryAddress.city, photos.type]
          write: [givenName]
  plain:
    secret: plain-secret
    features: [direct_access]
    access_schemas:
      user:
        read: [givenName, email, birthday, primaryAddress, photos]
        write: [givenName, email, primaryAddress]
"#,
    )
}

fn shadow_count(gw: &Gateway, client: &str, direction: &str) -> f64 {
    metric(
        &gw.scrape(),
        "recordgate_shadow_removed_attributes_total",
        &[("client", client), ("direction", direction)],
    )
}

/// The gateway's log lines about shadow removals, as JSON.
fn shadow_lines(gw: &Gateway, expect: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<Value> = gw
            .stderr()
            .lines()
            .filter(|l| l.contains("shadow schema would have removed"))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= expect || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_shadow_read_schema_counts_and_names_what_it_would_remove_and_changes_nothing() {
    let up = upstream();
    let gw = GatewayBuilder::new(&up)
        .policy(&policy())
        .metrics(json!({}))
        .setting("log", json!({"format": "json"}))
        .start();
    let shadowed = gw.get(
        "/entity?type_name=user&id=7",
        Some(("shadowed", "shadowed-secret")),
    );
    let plain = gw.get(
        "/entity?type_name=user&id=7",
        Some(("plain", "plain-secret")),
    );
    assert_eq!(shadowed.status, 200);
    // The response is the enforced schema's, byte for byte.
    assert_eq!(shadowed.text(), plain.text());
    assert_eq!(shadowed.json()["result"]["email"], "ada@example.com");

    // Reference: the shadow keeps givenName, primaryAddress.city,
    // photos[].type and the reserved id/uuid; it would remove email,
    // birthday, primaryAddress.zip and each photo's value.
    let expected_paths = ["birthday", "email", "photos.value", "primaryAddress.zip"];
    assert_eq!(shadow_count(&gw, "shadowed", "response"), 5.0);
    assert_eq!(shadow_count(&gw, "plain", "response"), 0.0);
    let lines = shadow_lines(&gw, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    let fields = line.get("fields").unwrap_or(line);
    assert_eq!(fields["client"], "shadowed", "{line}");
    assert_eq!(fields["direction"], "response", "{line}");
    assert_eq!(fields["removed"], 5, "{line}");
    assert_eq!(fields["paths"], expected_paths.join(","), "{line}");
    // Paths, never values.
    let text = gw.stderr();
    for value in ["ada@example.com", "1815-12-10", "W1"] {
        assert!(!text.contains(value), "a value reached the log: {value}");
    }
}

#[test]
fn a_shadow_write_schema_counts_what_it_would_strip_and_forwards_the_enforced_write() {
    let up = upstream();
    let gw = GatewayBuilder::new(&up)
        .policy(&policy())
        .metrics(json!({}))
        .setting("log", json!({"format": "json"}))
        .start();
    let attrs = r#"{"givenName":"Grace","email":"g@example.com","primaryAddress":{"city":"NYC"}}"#;
    for client in ["shadowed", "plain"] {
        let r = gw.post_as(
            client,
            "/entity.update",
            &[("type_name", "user"), ("id", "7"), ("attributes", attrs)],
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The upstream got the enforced write from both, unchanged by the shadow.
    let got: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.param("attributes").unwrap())
        .collect();
    assert_eq!(got[0], got[1]);
    let sent: Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(sent["email"], "g@example.com");
    // The shadow write [givenName] would strip email and primaryAddress.
    assert_eq!(shadow_count(&gw, "shadowed", "request"), 2.0);
    let lines = shadow_lines(&gw, 1);
    let fields = lines[0].get("fields").unwrap_or(&lines[0]).clone();
    assert_eq!(fields["direction"], "request");
    assert_eq!(fields["paths"], "email,primaryAddress");
    assert!(!gw.stderr().contains("g@example.com"));
}

#[test]
fn shadow_schemas_are_set_shown_and_promoted_through_the_management_api() {
    let up = upstream();
    let gw = GatewayBuilder::new(&up)
        .policy(&policy())
        .metrics(json!({}))
        .start();
    let get = |access: &str| {
        gw.post_as(
            "owner",
            "/entityType.getAccessSchema",
            &[
                ("type_name", "user"),
                ("for_client_id", "plain"),
                ("access_type", access),
            ],
        )
        .assert_ok()
    };
    assert_eq!(get("shadow_read")["schema"], Value::Null);
    gw.post_as(
        "owner",
        "/entityType.setAccessSchema",
        &[
            ("type_name", "user"),
            ("for_client_id", "plain"),
            ("access_type", "shadow_read"),
            ("attributes", r#"["givenName"]"#),
        ],
    )
    .assert_ok();
    let names: Vec<String> = get("shadow_read")["schema"]["attr_defs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&"givenName".to_string()) && !names.contains(&"email".to_string()));
    // Still not enforced: the read answers email.
    let r = gw.get(
        "/entity?type_name=user&id=7",
        Some(("plain", "plain-secret")),
    );
    assert_eq!(r.json()["result"]["email"], "ada@example.com");
    assert!(shadow_count(&gw, "plain", "response") > 0.0);

    // Promoted with one call: now enforced, and no longer a shadow.
    gw.post_as(
        "owner",
        "/entityType.promoteAccessSchema",
        &[
            ("type_name", "user"),
            ("for_client_id", "plain"),
            ("access_type", "shadow_read"),
        ],
    )
    .assert_ok();
    let r = gw.get(
        "/entity?type_name=user&id=7",
        Some(("plain", "plain-secret")),
    );
    assert_eq!(r.json()["result"].get("email"), None, "{}", r.text());
    assert_eq!(r.json()["result"]["givenName"], "Ada");
    assert_eq!(get("shadow_read")["schema"], Value::Null);
    // Nothing to promote: an error naming access_type.
    let r = gw.post_as(
        "owner",
        "/entityType.promoteAccessSchema",
        &[
            ("type_name", "user"),
            ("for_client_id", "plain"),
            ("access_type", "shadow_read"),
        ],
    );
    let v = r.assert_error(400, 200, "invalid_argument");
    assert_eq!(v["argument_name"], "access_type");
    // Only owners may promote.
    let r = gw.post_as(
        "shadowed",
        "/entityType.promoteAccessSchema",
        &[
            ("type_name", "user"),
            ("for_client_id", "shadowed"),
            ("access_type", "shadow_read"),
        ],
    );
    r.assert_error(403, 403, "client_permission_error");
}
