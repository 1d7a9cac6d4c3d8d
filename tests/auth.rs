//! Authentication over real sockets: HTTP Basic, the legacy form fields and
//! janrain-signed requests; credentials never reach the upstream.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use common::*;

const ENTITY: &str = "/entity?type_name=user&id=7";

fn assert_invalid_credentials(r: &Resp) {
    let v = r.assert_error(401, 402, "invalid_client_credentials");
    assert!(!r.text().contains("Ada7"), "no record in a refusal: {v}");
}

/// A credential refusal that is not 402: 400 (bad argument) or 401.
fn assert_refused_4xx(r: &Resp) {
    assert!(
        r.status == 400 || r.status == 401,
        "{} {}",
        r.status,
        r.text()
    );
    let v = r.json();
    assert_eq!(v["stat"], "error", "{v}");
    assert!(!r.text().contains("Ada7"));
}

/// Asserts the upstream saw no caller credential in any form.
fn assert_no_credentials(rec: &Recorded, secret: &str) {
    assert!(
        !rec.has_header("authorization"),
        "Authorization forwarded: {rec:#?}"
    );
    assert!(
        rec.param("client_id").is_none(),
        "client_id forwarded: {rec:#?}"
    );
    assert!(
        rec.param("client_secret").is_none(),
        "client_secret forwarded: {rec:#?}"
    );
    let all = format!("{} {:?} {}", rec.target, rec.headers, rec.body_str());
    assert!(
        !all.contains(secret),
        "the secret reached the upstream: {all}"
    );
}

#[test]
fn basic_auth_with_the_right_secret_is_accepted() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.get(ENTITY, Some(("owner", "owner-secret")));
    let v = r.assert_ok();
    assert_eq!(v["result"]["givenName"], "Ada7");
    assert_no_credentials(&up.only(), "owner-secret");
}

#[test]
fn basic_auth_with_a_wrong_secret_is_refused_with_402() {
    let (up, gw) = gateway_with_default_upstream();
    assert_invalid_credentials(&gw.get(ENTITY, Some(("owner", "not-the-secret"))));
    // A prefix of the secret is not the secret either.
    assert_invalid_credentials(&gw.get(ENTITY, Some(("owner", "owner-secre"))));
    up.assert_untouched();
}

#[test]
fn basic_auth_with_an_unknown_client_is_refused_with_402() {
    let (up, gw) = gateway_with_default_upstream();
    assert_invalid_credentials(&gw.get(ENTITY, Some(("nobody", "owner-secret"))));
    up.assert_untouched();
}

#[test]
fn refusal_carries_www_authenticate() {
    let (_up, gw) = gateway_with_default_upstream();
    let r = gw.get(ENTITY, Some(("owner", "wrong")));
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic")),
        "{:?}",
        r.headers
    );
}

#[test]
fn basic_auth_without_a_colon_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let token = base64::engine::general_purpose::STANDARD.encode("ownerowner-secret");
    let r = gw.send(
        http_client()
            .get(gw.url(ENTITY))
            .header("authorization", format!("Basic {token}")),
    );
    assert_invalid_credentials(&r);
    up.assert_untouched();
}

#[test]
fn basic_auth_with_invalid_base64_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.send(
        http_client()
            .get(gw.url(ENTITY))
            .header("authorization", "Basic !!!notbase64"),
    );
    assert_invalid_credentials(&r);
    up.assert_untouched();
}

#[test]
fn missing_credentials_are_refused_and_not_forwarded() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.get(ENTITY, None);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["stat"], "error");
    up.assert_untouched();
}

#[test]
fn unsupported_authorization_scheme_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.send(
        http_client()
            .get(gw.url(ENTITY))
            .header("authorization", "Bearer abc"),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["stat"], "error");
    up.assert_untouched();
}

#[test]
fn legacy_form_fields_authenticate_and_are_not_forwarded() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.post_form(
        "/entity",
        None,
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("client_id", "owner"),
            ("client_secret", "owner-secret"),
        ],
    );
    let v = r.assert_ok();
    assert_eq!(v["result"]["givenName"], "Ada7");
    let rec = up.only();
    assert_no_credentials(&rec, "owner-secret");
    assert_eq!(rec.param("type_name").as_deref(), Some("user"));
    assert_eq!(rec.param("id").as_deref(), Some("7"));
}

#[test]
fn legacy_query_credentials_authenticate_and_are_not_forwarded() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.get(
        "/entity?type_name=user&id=7&client_id=owner&client_secret=owner-secret",
        None,
    );
    r.assert_ok();
    assert_no_credentials(&up.only(), "owner-secret");
}

#[test]
fn legacy_form_fields_with_a_wrong_secret_are_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.post_form(
        "/entity",
        None,
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("client_id", "owner"),
            ("client_secret", "bad"),
        ],
    );
    assert_invalid_credentials(&r);
    let r = gw.post_form(
        "/entity",
        None,
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("client_id", "ghost"),
            ("client_secret", "owner-secret"),
        ],
    );
    assert_invalid_credentials(&r);
    up.assert_untouched();
}

// --- janrain-signed --------------------------------------------------------

fn now_date(offset_secs: i64) -> String {
    let t = chrono::Utc::now() + chrono::Duration::seconds(offset_secs);
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn signed_get(gw: &Gateway, client: &str, sig: &str, date: &str) -> Resp {
    gw.send(
        http_client()
            .get(gw.url(ENTITY))
            .header("authorization", format!("Signature {client}:{sig}"))
            .header("date", date),
    )
}

const SIGNED_PARAMS: [(&str, &str); 2] = [("type_name", "user"), ("id", "7")];

#[test]
fn signed_request_with_a_correct_signature_is_accepted() {
    let (up, gw) = gateway_with_default_upstream();
    let date = now_date(0);
    let sig = signature("owner-secret", "/entity", &date, &SIGNED_PARAMS);
    let r = signed_get(&gw, "owner", &sig, &date);
    let v = r.assert_ok();
    assert_eq!(v["result"]["givenName"], "Ada7");
    let rec = up.only();
    assert!(!rec.has_header("authorization"), "{rec:#?}");
    assert!(
        !format!("{:?}", rec.headers).contains(&sig),
        "signature forwarded"
    );
}

#[test]
fn signed_post_with_form_parameters_is_accepted() {
    let (up, gw) = gateway_with_default_upstream();
    let date = now_date(0);
    let fields = [
        ("type_name", "user"),
        ("id", "7"),
        ("attribute_name", "givenName"),
    ];
    let sig = signature("owner-secret", "/entity", &date, &fields);
    let r = gw.send(
        http_client()
            .post(gw.url("/entity"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", format!("Signature owner:{sig}"))
            .header("date", &date)
            .body(encode_form(&fields)),
    );
    let v = r.assert_ok();
    assert_eq!(v["result"], "Ada7");
    up.only();
}

#[test]
fn signed_request_signed_with_the_wrong_secret_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let date = now_date(0);
    let sig = signature("other-secret", "/entity", &date, &SIGNED_PARAMS);
    assert_invalid_credentials(&signed_get(&gw, "owner", &sig, &date));
    up.assert_untouched();
}

#[test]
fn signed_request_for_other_parameters_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let date = now_date(0);
    // Signed for id=8, sent with id=7.
    let sig = signature(
        "owner-secret",
        "/entity",
        &date,
        &[("type_name", "user"), ("id", "8")],
    );
    assert_invalid_credentials(&signed_get(&gw, "owner", &sig, &date));
    // Signed for another endpoint.
    let sig = signature("owner-secret", "/entity.find", &date, &SIGNED_PARAMS);
    assert_invalid_credentials(&signed_get(&gw, "owner", &sig, &date));
    up.assert_untouched();
}

#[test]
fn signed_request_by_an_unknown_client_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let date = now_date(0);
    let sig = signature("owner-secret", "/entity", &date, &SIGNED_PARAMS);
    assert_invalid_credentials(&signed_get(&gw, "ghost", &sig, &date));
    up.assert_untouched();
}

#[test]
fn signed_request_outside_the_skew_window_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    for offset in [-400, 400, -3600] {
        let date = now_date(offset);
        let sig = signature("owner-secret", "/entity", &date, &SIGNED_PARAMS);
        let r = signed_get(&gw, "owner", &sig, &date);
        assert_eq!(r.status, 401, "offset {offset}: {}", r.text());
        assert_eq!(r.json()["stat"], "error");
    }
    up.assert_untouched();
    // Inside the window (default 300 s) the same construction passes.
    let date = now_date(-120);
    let sig = signature("owner-secret", "/entity", &date, &SIGNED_PARAMS);
    signed_get(&gw, "owner", &sig, &date).assert_ok();
}

#[test]
fn signature_skew_is_a_setting() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .setting("auth", serde_json::json!({"signature_max_skew_secs": 10}))
        .start();
    let date = now_date(-60);
    let sig = signature("owner-secret", "/entity", &date, &SIGNED_PARAMS);
    assert_eq!(signed_get(&gw, "owner", &sig, &date).status, 401);
    up.assert_untouched();
}

#[test]
fn signed_request_with_an_rfc1123_date_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let sig = signature("owner-secret", "/entity", &date, &SIGNED_PARAMS);
    let r = signed_get(&gw, "owner", &sig, &date);
    assert_refused_4xx(&r);
    up.assert_untouched();
}

#[test]
fn signed_request_without_a_date_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let date = now_date(0);
    let sig = signature("owner-secret", "/entity", &date, &SIGNED_PARAMS);
    let r = gw.send(
        http_client()
            .get(gw.url(ENTITY))
            .header("authorization", format!("Signature owner:{sig}")),
    );
    assert_refused_4xx(&r);
    assert_eq!(r.json()["argument_name"], "Date");
    up.assert_untouched();
}

#[test]
fn published_signing_vector_through_the_library() {
    let sts = recordgate::decide::credentials::string_to_sign(
        "/entity",
        "2000-01-01 01:01:01",
        &[
            ("param1", "this is a string"),
            ("param2", "10"),
            ("param3", "one=1\ntwo=2,three=3"),
        ],
        false,
    );
    assert_eq!(
        recordgate::decide::credentials::sign(b"bar", &sts),
        "G3N5RxCVc0d6rDLmBRGvcg2hCVY="
    );
    // And the test's own signer agrees with the vector.
    assert_eq!(
        signature(
            "bar",
            "/entity",
            "2000-01-01 01:01:01",
            &[
                ("param1", "this is a string"),
                ("param2", "10"),
                ("param3", "one=1\ntwo=2,three=3")
            ]
        ),
        "G3N5RxCVc0d6rDLmBRGvcg2hCVY="
    );
}

#[test]
fn caller_headers_outside_the_allow_list_are_not_forwarded() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.send(
        http_client()
            .get(gw.url(ENTITY))
            .header("authorization", basic("owner", "owner-secret"))
            .header("cookie", "session=caller-cookie")
            .header("x-secret-header", "caller-private"),
    );
    r.assert_ok();
    let rec = up.only();
    assert!(!rec.has_header("cookie"), "{rec:#?}");
    assert!(!rec.has_header("x-secret-header"), "{rec:#?}");
    assert!(!rec.has_header("authorization"), "{rec:#?}");
}

#[test]
fn gateway_presents_its_own_upstream_credentials() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .setting(
            "upstream",
            serde_json::json!({
                "servers": [up.server()],
                "credentials": {"client_id": "gw-id", "secret": "gw-secret"}
            }),
        )
        .start();
    gw.get_as("owner", ENTITY).assert_ok();
    let rec = up.only();
    assert_eq!(
        rec.header("authorization"),
        Some(basic("gw-id", "gw-secret").as_str())
    );
    assert!(!format!("{rec:?}").contains("owner-secret"));
}

#[test]
fn secrets_by_file_and_environment_reference_authenticate() {
    let up = TestUpstream::capture_like();
    let clients = r#"
clients:
  byfile:
    secret: {file: byfile.secret}
    features: [direct_read_access]
  byenv:
    secret: {env: RG_TEST_BYENV_SECRET}
    features: [direct_read_access]
"#;
    let gw = GatewayBuilder::new(&up)
        .policy(&policy_with_clients(clients))
        .file("byfile.secret", "file-secret-value\n")
        .env("RG_TEST_BYENV_SECRET", "env-secret-value")
        .start();
    gw.get(ENTITY, Some(("byfile", "file-secret-value")))
        .assert_ok();
    gw.get(ENTITY, Some(("byenv", "env-secret-value")))
        .assert_ok();
    assert_invalid_credentials(&gw.get(ENTITY, Some(("byfile", "file-secret-value\n"))));
    assert_invalid_credentials(&gw.get(ENTITY, Some(("byenv", "RG_TEST_BYENV_SECRET"))));
    assert_eq!(up.count(), 2);
}

#[test]
fn secret_may_contain_a_colon() {
    let up = TestUpstream::capture_like();
    let clients = "clients:\n  colon:\n    secret: \"a:b:c\"\n    features: [direct_read_access]\n";
    let gw = GatewayBuilder::new(&up)
        .policy(&policy_with_clients(clients))
        .start();
    gw.get(ENTITY, Some(("colon", "a:b:c"))).assert_ok();
    assert_invalid_credentials(&gw.get(ENTITY, Some(("colon", "a:b"))));
}
