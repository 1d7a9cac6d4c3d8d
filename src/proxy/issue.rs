//! The token endpoints (`/oauth/token`, `/access/getAccessToken`,
//! `/access/getAuthorizationCode`), through the same stages as a record
//! route: intake, the one decision (`Target::Issue`), the parameter
//! allow-list, forward; then the issuer's answer is read whole, the tokens
//! in it are bound to the client the decision named (on disk before the
//! answer leaves), and the answer is passed on cut to the fields the
//! gateway knows.

use std::sync::Arc;

use bytes::Bytes;
use pingora::prelude::Session;
use serde_json::{Map, Value};

use crate::config::settings::Limits;
use crate::decide::authenticate::CREDENTIAL_PARAMS;
use crate::decide::routes::{Issuer, Route};
use crate::decide::Permit;
use crate::errors::{ApiError, Failure};
use crate::ops::metrics;
use crate::params::{check_names, ParamNames, UnknownParams};
use crate::proxy::ctx::Ctx;
use crate::proxy::forward::{Outgoing, Upstream};
use crate::proxy::intake::Intake;
use crate::proxy::relay::{self, Exchange};
use crate::proxy::respond::{with_length, Answer};
use crate::tokens::{Issued, TokenStore};

/// The fields of a token endpoint's answer that are passed on: the
/// tokens, their life, the user, and Capture's error envelope. Anything
/// else (a user record, a transaction state) is dropped and counted.
const ANSWER_FIELDS: [&str; 14] = [
    "stat",
    "code",
    "error",
    "error_description",
    "sub_error",
    "argument_name",
    "request_id",
    "access_token",
    "refresh_token",
    "expires_in",
    "token_type",
    "uuid",
    "authorization_code",
    "authorizationCode",
];

/// What the issuance stage uses of the gateway.
pub(super) struct Issuing<'g> {
    pub(super) upstream: &'g Upstream,
    pub(super) store: Arc<TokenStore>,
    pub(super) known_params: &'g ParamNames,
    pub(super) limits: &'g Limits,
    pub(super) allow: &'g [String],
}

/// Forwards a decided token endpoint call and binds what its answer
/// issues.
pub(super) async fn issue(
    gw: Issuing<'_>,
    session: &mut Session,
    ctx: &mut Ctx,
    route: &Route,
    permit: Permit<'_>,
    mut request: Intake,
) -> Result<Answer, Failure> {
    let method = session.req_header().method.clone();
    let store = gw.store;
    let Some(issuance) = &permit.issuance else {
        return Err(ApiError::internal("a token endpoint decision without its holder").into());
    };
    let issuer = issuance.issuer;
    check_names(
        &request.params,
        &route.params,
        gw.known_params,
        UnknownParams::Refuse,
    )?;
    let holder = store.holder(issuance.holder);
    let request_uuid = issuance.uuid.clone();

    // At /oauth/token the client itself exchanges its code: its own
    // credentials go on. The other endpoints are the gateway's calls for a
    // named client: its identity, and the client the decision bound.
    let own_credentials = issuer == Issuer::OAuthToken;
    if !own_credentials {
        for p in CREDENTIAL_PARAMS {
            request.params.remove(p);
        }
        request
            .params
            .set("for_client_id", issuance.holder.id.clone());
    }
    let headers = &session.req_header().headers;
    let mut outgoing = Outgoing::new(
        &method,
        route,
        &request.params,
        None,
        headers,
        &ctx.request_id,
        &permit,
    )?;
    if own_credentials {
        outgoing = outgoing.with_caller_credential(headers);
    }
    let exchange = Exchange::begin(gw.upstream, &permit, &outgoing, ctx).await?;
    drop(permit);
    let (header, body) = relay::read_answer(exchange, ctx, gw.limits, gw.allow).await?;
    let mut answer = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Err(
                ApiError::bad_gateway("the token endpoint's answer is not a JSON object")
                    .filter_failure("response", "malformed")
                    .into(),
            )
        }
    };
    let dropped = keep_known_fields(&mut answer);
    if dropped > 0 {
        metrics::FILTERED_RESPONSE.inc_by(dropped as u64);
    }
    let ok =
        header.status.is_success() && answer.get("stat").and_then(Value::as_str) != Some("error");
    if let Some(issued) = ok.then(|| issued(&answer, request_uuid)).flatten() {
        let now = crate::tokens::now_secs();
        let bound = tokio::task::spawn_blocking(move || store.bind(&issued, &holder, now)).await;
        match bound {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "a token could not be recorded; it was not handed out");
                return Err(unbound().into());
            }
            Err(e) => {
                tracing::error!(error = %e, "a token could not be recorded; it was not handed out");
                return Err(unbound().into());
            }
        }
    }
    let body = Value::Object(answer).to_string();
    Ok(Answer::Reply(with_length(header, Bytes::from(body))?))
}

/// A token the gateway could not record is not handed out: it would not
/// be honoured.
fn unbound() -> ApiError {
    ApiError::internal("the token could not be recorded; nothing was issued")
}

/// Drops every field not in [`ANSWER_FIELDS`]; returns how many.
fn keep_known_fields(answer: &mut Map<String, Value>) -> usize {
    let before = answer.len();
    answer.retain(|k, _| ANSWER_FIELDS.contains(&k.as_str()));
    before - answer.len()
}

/// The tokens of a successful answer, if it carries an access token.
fn issued(
    answer: &Map<String, Value>,
    request_uuid: Option<std::sync::Arc<str>>,
) -> Option<Issued> {
    let access_token = answer.get("access_token")?.as_str()?.to_string();
    let refresh_token = answer
        .get("refresh_token")
        .and_then(Value::as_str)
        .map(str::to_string);
    let expires_in = answer.get("expires_in").and_then(|v| match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    });
    let uuid = answer
        .get("uuid")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| request_uuid.map(|u| u.to_string()));
    Some(Issued {
        access_token,
        refresh_token,
        expires_in,
        uuid,
    })
}
