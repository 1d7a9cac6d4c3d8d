//! End-user tokens through the real gateway (issue 16): tokens issued by the
//! sample API through the gateway, bound to their client, then used on the
//! record routes and cut to the client's `*_with_token` schemas; refresh,
//! expiry, unknown and revoked tokens, selector stripping, the store's
//! bound, its durability across SIGKILL, and that no raw token is written
//! anywhere.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::tokens::*;
use common::*;
use serde_json::{json, Value};

fn demo_policy() -> String {
    std::fs::read_to_string(repo_path("config/policy.yaml")).unwrap()
}

fn gateway(up: &TestUpstream, extra: Value) -> Gateway {
    GatewayBuilder::new(up)
        .policy(&demo_policy())
        .setting("tokens", tokens_settings(extra))
        .start()
}

#[test]
fn a_token_issued_through_the_gateway_reads_and_writes_only_its_users_record() {
    let up = demo_upstream();
    let gw = gateway(&up, json!({}));
    let answer = sign_in(&gw, "7");
    // The sign-in answer's user record is not passed on: only the fields
    // the gateway knows.
    assert!(answer.get("capture_user").is_none(), "{answer}");
    let token = token_of(&answer, "access_token");
    assert!(answer["refresh_token"].is_string(), "{answer}");
    // The upstream saw the app's own credentials at /oauth/token.
    let exchange = up.requests().into_iter().last().unwrap();
    assert_eq!(exchange.path(), "/oauth/token");
    assert_eq!(
        exchange.header("authorization"),
        Some(basic("mobile-app", "mobile-secret").as_str())
    );

    let user7 = owner_view(&gw, "7");
    // Read, with a selector naming someone else: stripped, the token's own
    // user is read, cut to read_with_token.
    let r = with_token(
        &gw,
        &token,
        "/entity",
        &[("type_name", "user"), ("id", "9")],
    );
    let v = r.assert_ok();
    let rec = v["result"].as_object().unwrap();
    assert_eq!(v["result"]["uuid"], user7["uuid"], "{v}");
    for k in rec.keys() {
        assert!(READ_WITH_TOKEN.contains(&k.as_str()), "{k} leaked: {v}");
    }
    assert!(rec.contains_key("email"), "{v}");
    let addr = rec["primaryAddress"].as_object().unwrap();
    assert!(addr.keys().all(|k| k == "city"), "{v}");
    let sent = up.requests().into_iter().last().unwrap();
    assert_eq!(sent.path(), "/entity");
    assert_eq!(sent.param("id"), None, "selector forwarded");
    assert_eq!(
        sent.header("authorization"),
        Some(format!("OAuth {token}").as_str()),
        "the token goes on as it came"
    );

    // The same with the token as a parameter.
    let r = gw.post_form(
        "/entity",
        None,
        &[
            ("type_name", "user"),
            ("access_token", &token),
            ("uuid", "someone-else"),
        ],
    );
    assert_eq!(r.assert_ok()["result"]["uuid"], user7["uuid"]);
    let sent = up.requests().into_iter().last().unwrap();
    assert_eq!(sent.param("access_token").as_deref(), Some(token.as_str()));
    assert_eq!(sent.param("uuid"), None);
    assert_eq!(sent.header("authorization"), None);

    // Write: cut to write_with_token (email is readable, not writable).
    let r = with_token(
        &gw,
        &token,
        "/entity.update",
        &[
            ("type_name", "user"),
            ("key_attribute", "email"),
            ("key_value", "\"x@example.com\""),
            (
                "attributes",
                r#"{"givenName":"Tokened","email":"evil@example.com"}"#,
            ),
        ],
    );
    r.assert_ok();
    let sent = up.requests().into_iter().last().unwrap();
    assert_eq!(
        sent.json_param("attributes"),
        Some(json!({"givenName": "Tokened"}))
    );
    assert_eq!(sent.param("key_attribute"), None);
    let after = owner_view(&gw, "7");
    assert_eq!(after["givenName"], "Tokened");
    assert_eq!(after["email"], user7["email"]);
    assert_ne!(owner_view(&gw, "9")["givenName"], "Tokened");
}

#[test]
fn refresh_gives_a_new_token_and_a_refresh_token_is_only_its_clients() {
    let up = demo_upstream();
    let gw = gateway(&up, json!({}));
    let answer = sign_in(&gw, "3");
    let refresh = token_of(&answer, "refresh_token");

    // A refresh token is not an access token.
    with_token(&gw, &refresh, "/entity", &[("type_name", "user")]).assert_error(
        401,
        414,
        "access_token_expired",
    );

    // Another client cannot use the app's refresh token: refused before
    // the upstream.
    let before = up.count();
    gw.post_form(
        "/oauth/token",
        Some(("crm-writer", "writer-secret")),
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .assert_error(401, 414, "access_token_expired");
    assert_eq!(up.count(), before);

    let renewed = gw
        .post_form(
            "/oauth/token",
            Some(("mobile-app", "mobile-secret")),
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        )
        .assert_ok();
    let token = token_of(&renewed, "access_token");
    let user3 = owner_view(&gw, "3");
    let r = with_token(&gw, &token, "/entity", &[("type_name", "user")]);
    assert_eq!(r.assert_ok()["result"]["uuid"], user3["uuid"]);
    // The issuer made the refresh token single-use: its error passes on.
    let again = gw.post_form(
        "/oauth/token",
        Some(("mobile-app", "mobile-secret")),
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    );
    assert_eq!(again.json()["stat"], "error", "{}", again.text());
}

#[test]
fn unknown_and_expired_tokens_never_reach_the_upstream() {
    let up = demo_upstream();
    let gw = gateway(
        &up,
        json!({"default_lifetime_secs": 1, "max_lifetime_secs": 1}),
    );
    let before = up.count();
    with_token(&gw, "no-such-token", "/entity", &[("type_name", "user")]).assert_error(
        401,
        414,
        "access_token_expired",
    );
    gw.post_form(
        "/entity",
        None,
        &[("type_name", "user"), ("access_token", "no-such-token")],
    )
    .assert_error(401, 414, "access_token_expired");
    assert_eq!(up.count(), before);

    let token = token_of(&sign_in(&gw, "4"), "access_token");
    with_token(&gw, &token, "/entity", &[("type_name", "user")]).assert_ok();
    std::thread::sleep(Duration::from_millis(2100));
    let before = up.count();
    with_token(&gw, &token, "/entity", &[("type_name", "user")]).assert_error(
        401,
        414,
        "access_token_expired",
    );
    assert_eq!(up.count(), before);
}

#[test]
fn deleting_the_client_or_resetting_its_secret_revokes_its_tokens() {
    let up = demo_upstream();
    let gw = gateway(&up, json!({}));
    let first = token_of(&sign_in(&gw, "5"), "access_token");
    with_token(&gw, &first, "/entity", &[("type_name", "user")]).assert_ok();
    gw.post_form(
        "/clients/reset_secret",
        Some(("demo-owner", "owner-secret")),
        &[("for_client_id", "mobile-app"), ("hours_to_live", "1")],
    )
    .assert_ok();
    let before = up.count();
    with_token(&gw, &first, "/entity", &[("type_name", "user")]).assert_error(
        401,
        414,
        "access_token_expired",
    );
    assert_eq!(up.count(), before);

    // A token issued after the reset works, until the client is deleted.
    let second = gw
        .post_form(
            "/access/getAccessToken",
            Some(("demo-owner", "owner-secret")),
            &[
                ("type_name", "user"),
                ("id", "5"),
                ("for_client_id", "mobile-app"),
            ],
        )
        .assert_ok();
    let second = token_of(&second, "access_token");
    with_token(&gw, &second, "/entity", &[("type_name", "user")]).assert_ok();
    gw.post_form(
        "/clients/delete",
        Some(("demo-owner", "owner-secret")),
        &[("client_id_for_deletion", "mobile-app")],
    )
    .assert_ok();
    with_token(&gw, &second, "/entity", &[("type_name", "user")]).assert_error(
        401,
        414,
        "access_token_expired",
    );
}

#[test]
fn tokens_call_only_the_token_routes_and_never_with_client_credentials() {
    let up = demo_upstream();
    let gw = gateway(&up, json!({}));
    let token = token_of(&sign_in(&gw, "6"), "access_token");
    let before = up.count();
    with_token(&gw, &token, "/entity.find", &[("type_name", "user")]).assert_error(
        403,
        403,
        "client_permission_error",
    );
    with_token(&gw, &token, "/clients/list", &[]).assert_error(403, 403, "client_permission_error");
    with_token(
        &gw,
        &token,
        "/oauth/token",
        &[("grant_type", "refresh_token")],
    )
    .assert_error(403, 403, "client_permission_error");
    // A token and client credentials together: which one counts would be a
    // guess.
    let r = gw.post_form(
        "/entity",
        Some(("demo-owner", "owner-secret")),
        &[("type_name", "user"), ("id", "1"), ("access_token", &token)],
    );
    r.assert_error(400, 200, "invalid_argument");
    assert_eq!(up.count(), before);
}

#[test]
fn get_access_token_binds_to_an_existing_named_client_only() {
    let up = demo_upstream();
    let gw = gateway(&up, json!({}));
    let owner = Some(("demo-owner", "owner-secret"));
    let before = up.count();
    gw.post_form(
        "/access/getAccessToken",
        owner,
        &[
            ("type_name", "user"),
            ("id", "2"),
            ("for_client_id", "no-such-client"),
        ],
    )
    .assert_error(400, 200, "invalid_argument");
    // direct_access may get tokens for itself, not for another client.
    gw.post_form(
        "/access/getAccessToken",
        Some(("crm-writer", "writer-secret")),
        &[
            ("type_name", "user"),
            ("id", "2"),
            ("for_client_id", "mobile-app"),
        ],
    )
    .assert_error(403, 403, "client_permission_error");
    // login_client may not call it at all.
    gw.post_form(
        "/access/getAccessToken",
        Some(("mobile-app", "mobile-secret")),
        &[("type_name", "user"), ("id", "2")],
    )
    .assert_error(403, 403, "client_permission_error");
    assert_eq!(up.count(), before);

    let own = gw
        .post_form(
            "/access/getAccessToken",
            Some(("crm-writer", "writer-secret")),
            &[("type_name", "user"), ("id", "2")],
        )
        .assert_ok();
    // The gateway names the client the token is bound to, and presents no
    // caller credentials to the issuer.
    let sent = up.requests().into_iter().last().unwrap();
    assert_eq!(sent.param("for_client_id").as_deref(), Some("crm-writer"));
    assert_eq!(sent.param("client_secret"), None);
    assert_eq!(sent.header("authorization"), None);
    // crm-writer's token reads with crm-writer's read schema (it has no
    // read_with_token).
    let token = token_of(&own, "access_token");
    let v = with_token(&gw, &token, "/entity", &[("type_name", "user")]).assert_ok();
    let rec = v["result"].as_object().unwrap();
    assert!(
        rec.contains_key("email") && !rec.contains_key("internal"),
        "{v}"
    );
}

#[test]
fn the_binding_store_is_bounded_oldest_first() {
    let up = demo_upstream();
    let gw = gateway(&up, json!({"max_bindings": 3}));
    let tokens: Vec<String> = (1..=5)
        .map(|id| {
            let v = gw
                .post_form(
                    "/access/getAccessToken",
                    Some(("demo-owner", "owner-secret")),
                    &[
                        ("type_name", "user"),
                        ("id", &id.to_string()),
                        ("for_client_id", "mobile-app"),
                    ],
                )
                .assert_ok();
            token_of(&v, "access_token")
        })
        .collect();
    for (i, t) in tokens.iter().enumerate() {
        let r = with_token(&gw, t, "/entity", &[("type_name", "user")]);
        if i < 2 {
            r.assert_error(401, 414, "access_token_expired");
        } else {
            r.assert_ok();
        }
    }
}

fn file_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn bindings_survive_sigkill_and_no_raw_token_is_written_anywhere() {
    let up = demo_upstream();
    let state = tempfile::tempdir().unwrap();
    let bindings: PathBuf = state.path().join("bindings.jsonl");
    let audit: PathBuf = state.path().join("audit.jsonl");
    let start = || {
        GatewayBuilder::new(&up)
            .policy(&demo_policy())
            .setting(
                "tokens",
                tokens_settings(json!({"bindings_file": bindings.display().to_string()})),
            )
            .setting("audit_log", json!(audit.display().to_string()))
            .env("RUST_LOG", "debug")
            .start()
    };
    let gw = start();
    let answer = sign_in(&gw, "8");
    let token = token_of(&answer, "access_token");
    let refresh = token_of(&answer, "refresh_token");
    with_token(&gw, &token, "/entity", &[("type_name", "user")]).assert_ok();
    // A management change, so the audit log has something in it.
    gw.post_form(
        "/clients/set_description",
        Some(("demo-owner", "owner-secret")),
        &[("for_client_id", "login-app"), ("description", "changed")],
    )
    .assert_ok();
    let logs_before = gw.stderr();
    drop(gw); // SIGKILL

    let gw = start();
    let v = with_token(&gw, &token, "/entity", &[("type_name", "user")]).assert_ok();
    assert_eq!(v["result"]["uuid"], owner_view(&gw, "8")["uuid"]);
    let logs = logs_before + &gw.stderr();
    let on_disk = file_text(&bindings);
    assert!(!on_disk.is_empty());
    assert!(!file_text(&audit).is_empty());
    for secret in [&token, &refresh] {
        assert!(
            !on_disk.contains(secret.as_str()),
            "raw token in the bindings file"
        );
        assert!(
            !file_text(&audit).contains(secret.as_str()),
            "raw token in the audit log"
        );
        assert!(!logs.contains(secret.as_str()), "raw token in a log line");
    }
}

#[test]
fn without_token_settings_tokens_are_refused_as_before() {
    let up = demo_upstream();
    let gw = GatewayBuilder::new(&up).policy(&demo_policy()).start();
    with_token(&gw, "anything", "/entity", &[("type_name", "user")]).assert_error(
        401,
        205,
        "invalid_auth_method",
    );
    gw.post_form(
        "/entity",
        None,
        &[("type_name", "user"), ("access_token", "anything")],
    )
    .assert_error(401, 205, "invalid_auth_method");
    gw.post_form(
        "/oauth/token",
        Some(("mobile-app", "mobile-secret")),
        &[("grant_type", "refresh_token"), ("refresh_token", "x")],
    )
    .assert_error(404, 403, "client_permission_error");
    assert_eq!(up.count(), 0);
}
