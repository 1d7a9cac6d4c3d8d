//! `dry_run=true` on a management write: the change is decided, applied to
//! a copy of the running policy and compiled exactly as it would be, and the
//! answer says what would change; nothing is persisted, audited or swapped.

use serde_json::{json, Map, Value};

use crate::errors::ApiError;
use crate::params::Params;
use crate::policy::audit::redacted_client;
use crate::policy::store::Preview;

/// The parameter, on every write endpoint.
pub const PARAM: &str = "dry_run";

/// Whether the call asks for a dry run. A value other than `true` or
/// `false` is an error, reported once the caller is decided; until then the
/// call is treated as a dry run, so a bad value can never change anything.
pub(crate) fn requested(params: &Params) -> (bool, Result<(), ApiError>) {
    match params.get(PARAM) {
        None | Some("false") => (false, Ok(())),
        Some("true") => (true, Ok(())),
        Some(_) => (
            true,
            Err(ApiError::invalid_argument(PARAM, "must be true or false")),
        ),
    }
}

/// A generated secret in what the change answered is shown as redacted:
/// the dry run made it and threw it away.
fn redact_secrets(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if k == "client_secret" || k == "secret" {
                    *v = Value::String(crate::policy::audit::REDACTED.into());
                } else {
                    redact_secrets(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

/// The dry run's answer: the client entry the change targets before and
/// after (secrets redacted), every client and entity type whose entry
/// would differ, whether the whole policy would be accepted and, if not,
/// why, and what the call itself would have answered.
pub(crate) fn answer(preview: Preview<Value>, target: &str) -> Value {
    let Preview {
        mut out,
        before,
        after,
        errors,
    } = preview;
    let old = &before.source;
    let mut clients: Vec<&str> = old
        .clients
        .iter()
        .filter(|(id, c)| after.clients.get(*id) != Some(*c))
        .map(|(id, _)| id.as_str())
        .chain(
            after
                .clients
                .keys()
                .filter(|id| !old.clients.contains_key(*id))
                .map(String::as_str),
        )
        .collect();
    clients.sort_unstable();
    let mut entity_types: Vec<&str> = old
        .entity_types
        .iter()
        .filter(|(name, e)| after.entity_types.get(*name) != Some(*e))
        .map(|(name, _)| name.as_str())
        .chain(
            after
                .entity_types
                .keys()
                .filter(|name| !old.entity_types.contains_key(*name))
                .map(String::as_str),
        )
        .collect();
    entity_types.sort_unstable();
    redact_secrets(&mut out);
    let errors: Vec<Value> = errors
        .iter()
        .map(|e| json!({"key": e.key, "message": e.message}))
        .collect();
    let mut m = Map::new();
    m.insert("stat".into(), json!("ok"));
    m.insert("dry_run".into(), json!(true));
    m.insert("valid".into(), json!(errors.is_empty()));
    m.insert("errors".into(), Value::Array(errors));
    m.insert("target".into(), json!(target));
    m.insert("before".into(), redacted_client(old.clients.get(target)));
    m.insert("after".into(), redacted_client(after.clients.get(target)));
    m.insert("clients_affected".into(), json!(clients));
    m.insert("entity_types_affected".into(), json!(entity_types));
    m.insert("result".into(), out);
    Value::Object(m)
}
