//! No oracles: query parameters that select, sort or address records by
//! attributes outside the caller's read schema are refused before the
//! upstream is contacted; the same parameters over allowed attributes pass.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

fn find(gw: &Gateway, client: &str, extra: &[(&str, &str)]) -> Resp {
    let mut fields = vec![("type_name", "user")];
    fields.extend_from_slice(extra);
    gw.post_as(client, "/entity.find", &fields)
}

fn assert_oracle_refused(r: &Resp, argument: &str, hidden: &str) {
    let v = r.assert_error(403, 403, "client_permission_error");
    assert_eq!(v["argument_name"], argument, "{v}");
    assert!(
        v["error_description"].as_str().unwrap().contains(hidden),
        "{v}"
    );
    r.assert_no_hidden();
}

#[test]
fn filter_naming_a_hidden_attribute_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    for (expr, hidden) in [
        ("email = 'hidden-email-1@example.com'", "email"),
        (
            "givenName = 'Ada1' and mobileNumber is not null",
            "mobileNumber",
        ),
        ("primaryAddress.zip = 'HIDDENZIP'", "primaryAddress.zip"),
        ("(internal.riskScore > 50)", "internal.riskScore"),
        ("photos.type = 'x'", "photos.type"),
    ] {
        assert_oracle_refused(&find(&gw, "reader", &[("filter", expr)]), "filter", hidden);
    }
    up.assert_untouched();
}

#[test]
fn filter_on_an_object_partially_granted_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let r = find(&gw, "reader", &[("filter", "primaryAddress is not null")]);
    r.assert_error(403, 403, "client_permission_error");
    up.assert_untouched();
}

#[test]
fn filter_naming_allowed_attributes_passes() {
    let (up, gw) = gateway_with_default_upstream();
    let expr = "givenName = 'Ada1' and primaryAddress.city = 'London' or id > 3";
    find(&gw, "reader", &[("filter", expr)]).assert_ok();
    assert_eq!(up.only().param("filter").as_deref(), Some(expr));
}

#[test]
fn attribute_names_inside_string_literals_are_not_attributes() {
    let (up, gw) = gateway_with_default_upstream();
    find(&gw, "reader", &[("filter", "givenName = 'email'")]).assert_ok();
    assert_eq!(up.count(), 1);
}

#[test]
fn sort_on_a_hidden_attribute_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    assert_oracle_refused(
        &find(&gw, "reader", &[("sort_on", r#"["email"]"#)]),
        "sort_on",
        "email",
    );
    assert_oracle_refused(
        &find(
            &gw,
            "reader",
            &[("sort_on", r#"["givenName","-birthday"]"#)],
        ),
        "sort_on",
        "birthday",
    );
    up.assert_untouched();
}

#[test]
fn sort_on_allowed_attributes_passes() {
    let (up, gw) = gateway_with_default_upstream();
    find(
        &gw,
        "reader",
        &[("sort_on", r#"["givenName","-primaryAddress.city"]"#)],
    )
    .assert_ok();
    assert_eq!(up.count(), 1);
}

#[test]
fn attributes_list_naming_a_hidden_attribute_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    assert_oracle_refused(
        &find(&gw, "reader", &[("attributes", r#"["givenName","email"]"#)]),
        "attributes",
        "email",
    );
    let r = gw.get_as(
        "reader",
        "/entity?type_name=user&id=7&attributes=%5B%22internal.notes%22%5D",
    );
    assert_oracle_refused(&r, "attributes", "internal.notes");
    up.assert_untouched();
}

#[test]
fn attributes_list_of_allowed_attributes_passes() {
    let (up, gw) = gateway_with_default_upstream();
    find(
        &gw,
        "reader",
        &[(
            "attributes",
            r#"["givenName","primaryAddress.city","photos"]"#,
        )],
    )
    .assert_ok();
    assert_eq!(up.count(), 1);
}

#[test]
fn key_attribute_naming_a_hidden_attribute_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.get_as(
        "reader",
        "/entity?type_name=user&key_attribute=email&key_value=%22hidden-email-7%40example.com%22",
    );
    assert_oracle_refused(&r, "key_attribute", "email");
    up.assert_untouched();
}

#[test]
fn key_attribute_naming_an_allowed_attribute_passes() {
    let (up, gw) = gateway_with_default_upstream();
    gw.get_as(
        "reader",
        "/entity?type_name=user&key_attribute=givenName&key_value=%22Ada7%22",
    )
    .assert_ok();
    assert_eq!(
        up.only().param("key_attribute").as_deref(),
        Some("givenName")
    );
}

#[test]
fn attribute_name_naming_a_hidden_attribute_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    for hidden in [
        "email",
        "internal",
        "internal.notes",
        "primaryAddress.zip",
        "mobileNumber",
    ] {
        let r = gw.get_as(
            "reader",
            &format!("/entity?type_name=user&id=7&attribute_name={hidden}"),
        );
        assert_oracle_refused(&r, "attribute_name", hidden);
    }
    up.assert_untouched();
}

#[test]
fn attribute_name_naming_an_allowed_attribute_passes() {
    let (up, gw) = gateway_with_default_upstream();
    gw.get_as(
        "reader",
        "/entity?type_name=user&id=7&attribute_name=givenName",
    )
    .assert_ok();
    assert_eq!(up.count(), 1);
}

#[test]
fn key_attribute_is_checked_on_write_routes_too() {
    let (up, gw) = gateway_with_default_upstream();
    // writer may write givenName but not read mobileNumber: it may not use
    // mobileNumber to address the record it updates.
    let r = gw.post_as(
        "writer",
        "/entity.update",
        &[
            ("type_name", "user"),
            ("key_attribute", "mobileNumber"),
            ("key_value", "\"555-HIDDEN\""),
            ("attributes", r#"{"givenName":"G"}"#),
        ],
    );
    r.assert_error(403, 403, "client_permission_error");
    up.assert_untouched();
}

#[test]
fn filter_on_count_is_checked() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.get_as(
        "reader",
        "/entity.count?type_name=user&filter=email%20%3D%20%27x%27",
    );
    r.assert_error(403, 403, "client_permission_error");
    up.assert_untouched();
}

#[test]
fn unparsable_filter_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let r = find(&gw, "reader", &[("filter", "givenName = 'unterminated")]);
    r.assert_error(400, 200, "invalid_argument");
    let r = find(&gw, "reader", &[("sort_on", "not json")]);
    r.assert_error(400, 200, "invalid_argument");
    up.assert_untouched();
}
