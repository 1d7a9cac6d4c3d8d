//! Helpers of the token tests (tests/tokens*.rs): the sample API as the
//! issuer, the token settings, and a user's sign-in through a gateway.

use serde_json::{json, Value};

use super::*;

pub const HASH_KEY: &str = "test-token-hash-key-0123456789abcdef";

/// The sample API as the upstream, recording what reaches it.
pub fn demo_upstream() -> TestUpstream {
    let demo = recordgate_demo::DemoUpstream::new(40);
    TestUpstream::start(move |r| {
        Reply::bytes(
            "application/json",
            demo.respond_with(
                r.path(),
                r.query(),
                r.header("content-type"),
                r.header("authorization"),
                &r.body,
            ),
        )
    })
}

pub fn tokens_settings(extra: Value) -> Value {
    let mut t = json!({"hash_key": HASH_KEY});
    if let Value::Object(e) = extra {
        for (k, v) in e {
            t[k] = v;
        }
    }
    t
}

pub fn with_token(gw: &Gateway, token: &str, path: &str, fields: &[(&str, &str)]) -> Resp {
    gw.send(
        http_client()
            .post(gw.url(path))
            .header("authorization", format!("OAuth {token}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode_form(fields)),
    )
}

/// A user's sign-in: the owner gets a code for the mobile app, the app
/// exchanges it with its own credentials. Returns the answer.
pub fn sign_in(gw: &Gateway, id: &str) -> Value {
    let code = authorization_code(gw, id);
    exchange_code(gw, &code)
}

/// The owner's authorization code for the mobile app, for user `id`.
pub fn authorization_code(gw: &Gateway, id: &str) -> String {
    let code = gw
        .post_form(
            "/access/getAuthorizationCode",
            Some(("demo-owner", "owner-secret")),
            &[
                ("type_name", "user"),
                ("id", id),
                ("redirect_uri", "https://app.example/cb"),
                ("for_client_id", "mobile-app"),
            ],
        )
        .assert_ok();
    code["authorizationCode"].as_str().unwrap().to_string()
}

/// The mobile app exchanges `code` for tokens; the answer.
pub fn exchange_code(gw: &Gateway, code: &str) -> Value {
    gw.post_form(
        "/oauth/token",
        Some(("mobile-app", "mobile-secret")),
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", "https://app.example/cb"),
        ],
    )
    .assert_ok()
}

pub fn token_of(answer: &Value, field: &str) -> String {
    answer[field].as_str().unwrap().to_string()
}

/// The record of user `id` as the owner sees it.
pub fn owner_view(gw: &Gateway, id: &str) -> Value {
    gw.get(
        &format!("/entity?type_name=user&id={id}"),
        Some(("demo-owner", "owner-secret")),
    )
    .assert_ok()["result"]
        .clone()
}

pub const READ_WITH_TOKEN: [&str; 9] = [
    "id",
    "uuid",
    "created",
    "lastUpdated",
    "givenName",
    "familyName",
    "displayName",
    "email",
    "primaryAddress",
];
