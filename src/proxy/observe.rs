//! Shadow mode (`enforcement: shadow`), for putting the gateway inline in
//! front of an existing client: its calls are decided exactly as others'
//! (the decision, the parameter allow-list, the write schema), and the
//! decision is logged and counted as it would have been (`shadow="true"`),
//! but the call goes upstream as the client sent it and the answer comes
//! back as the upstream gave it. Nothing is added: the client's own
//! credentials go upstream, never the gateway's identity, so the call can
//! do no more than it could without the gateway. What the enforced schemas
//! would have removed is reported like a shadow schema's.

use bytes::Bytes;
use pingora::prelude::Session;

use crate::config::routes::Access;
use crate::config::settings::Limits;
use crate::decide::routes::Route;
use crate::decide::{Pass, Permit, Refusal};
use crate::errors::{ApiError, Failure};
use crate::filter::request::filter_write;
use crate::filter::shadow::write_records;
use crate::params::{check_names, ParamNames};
use crate::proxy::ctx::Ctx;
use crate::proxy::forward::Outgoing;
use crate::proxy::forward::Upstream;
use crate::proxy::intake::Intake;
use crate::proxy::relay::{self, Exchange};
use crate::proxy::respond::Answer;
use crate::proxy::shadow;
use std::net::IpAddr;

/// What shadow mode works with, from the gateway.
pub(crate) struct Observer<'g> {
    pub(crate) upstream: &'g Upstream,
    /// Every parameter name a route or endpoint takes (for look-alikes).
    pub(crate) known_params: &'g ParamNames,
    pub(crate) limits: &'g Limits,
}

pub(crate) async fn observe(
    gw: Observer<'_>,
    session: &mut Session,
    ctx: &mut Ctx,
    route: &Route,
    (pass, would_be): (Pass<'_>, Result<Permit<'_>, Refusal>),
    mut request: Intake,
    peer: Option<IpAddr>,
) -> Result<Answer, Failure> {
    ctx.shadow = true;
    ctx.client_id = Some(pass.client.id.clone());
    let permitted = match &would_be {
        Err(refusal) => {
            ctx.decision = refusal.error.reason.label();
            None
        }
        Ok(permit) => {
            ctx.client_ip = Some(permit.ip);
            match would_filter(&gw, ctx, route, permit, &request) {
                Ok(()) => permit.route.as_ref(),
                Err(e) => {
                    ctx.decision = e.reason.label();
                    None
                }
            }
        }
    };
    let req = session.req_header();
    let method = req.method.clone();
    let outgoing = Outgoing::as_sent(
        &method,
        req.raw_path(),
        &req.headers,
        Bytes::from(std::mem::take(&mut request.body)),
        &ctx.request_id,
        peer,
    )?;
    let idempotent = method == http::Method::GET || method == http::Method::HEAD;
    let exchange = Exchange::begin_as_sent(gw.upstream, &pass, &outgoing, idempotent, ctx).await?;
    Ok(relay::pass_through(session, ctx, exchange, permitted, gw.limits).await?)
}

/// The request filter stage as it would have run, on copies: the parameter
/// names, then the write schema (whose would-be removals are reported).
fn would_filter(
    gw: &Observer<'_>,
    ctx: &Ctx,
    route: &Route,
    permit: &Permit<'_>,
    request: &Intake,
) -> Result<(), ApiError> {
    let access = permit
        .route
        .as_ref()
        .ok_or_else(|| ApiError::internal("a route decision without its grants"))?;
    check_names(
        &request.params,
        &route.params,
        gw.known_params,
        route.unknown_params,
    )?;
    let max_depth = gw.limits.max_json_depth;
    let mut params = request.params.clone();
    params.retain_allowed(&route.params);
    let mut json = request.json.clone();
    filter_write(
        route,
        permit.client,
        &access.grants,
        access.attribute_name.as_ref(),
        &mut params,
        json.as_mut(),
        max_depth,
    )?;
    if route.access == Access::Write {
        if let Some(removed) = write_records(
            route,
            access.grants.write,
            access.attribute_name.as_ref(),
            &request.params,
            request.json.as_ref(),
            max_depth,
        ) {
            shadow::report(ctx, &permit.client.id, "request", &removed);
        }
    }
    Ok(())
}
