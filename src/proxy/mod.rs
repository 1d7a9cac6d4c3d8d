//! The Pingora proxy. The `ProxyHttp` implementation only drives the stages,
//! one file each, in the order data flows:
//!
//! | stage | file | what it does |
//! |---|---|---|
//! | intake | `intake.rs` | header size, codings, body, parameters |
//! | decide | `crate::decide` | one `authorize` for record routes and management |
//! | request filter | `crate::filter::request` | the write schema on the records sent |
//! | forward | `forward.rs` | the upstream request, connector, retries |
//! | relay | `relay.rs` | the read schema on the response, buffered or streamed |
//! | respond | `respond.rs` | the one exit: answer or failure, labels, counters |
//!
//! Before the stages, `downstream.rs` takes each connection: HTTP/1.1 goes
//! to Pingora's loop, HTTP/2 (h2c or ALPN `h2`) to the gateway's own accept
//! loop with its per-connection bounds; either way each request, or stream,
//! comes through the same stages.
//!
//! Every request is answered from `request_filter`. Pingora's own forwarding
//! path is not used because it sends the upstream request header before the
//! body can be checked, and the client response header before the body can
//! be filtered; both would break "decide first, fail closed".

pub mod ctx;
pub mod downstream;
pub mod forward;
pub mod header_deadline;
mod intake;
mod issue;
mod observe;
mod relay;
pub(crate) mod resolve;
mod respond;
mod shadow;

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorType, Result};

use crate::config::settings::{ClientLabel, Settings};
use crate::decide::authenticate::CREDENTIAL_PARAMS;
use crate::decide::routes::{Issuer, Route, RouteTable, TOKEN_STRIPPED};
use crate::decide::{self, Facts, Rules, Target};
use crate::errors::{ApiError, DenyReason, Failure};
use crate::management::{self, Call, Services};
use crate::ops::{log_format, metrics};
use crate::params::{check_names, ParamNames, Params};
use crate::policy::{PolicyStore, Snapshot};
use ctx::Ctx;
use forward::{Outgoing, Upstream};
use intake::BodyUse;
use relay::Exchange;
use respond::{Answer, X_REQUEST_ID};

pub struct Gateway {
    pub(crate) policy: Arc<PolicyStore>,
    pub(crate) routes: RouteTable,
    /// The token endpoints, when `tokens:` is set.
    pub(crate) issuers: Vec<(Route, Issuer)>,
    pub(crate) upstream: Upstream,
    pub(crate) rules: Arc<Rules>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) management: Services,
    /// Every parameter name a route or management endpoint takes: a name
    /// that could be read as one of these is refused as ambiguous.
    pub(crate) known_params: ParamNames,
}

fn route_label(route: &Route) -> &'static str {
    // Metric labels must stay bounded: built-in paths map to static names,
    // overridden routes to one shared label.
    metrics::ROUTE_LABELS
        .iter()
        .find(|l| **l == route.path)
        .copied()
        .unwrap_or("custom")
}

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The request's facts for the decision, as the intake read them.
fn facts<'r>(session: &'r Session, path: &'r str, params: &'r Params) -> Facts<'r> {
    Facts {
        headers: &session.req_header().headers,
        peer: peer_ip(session),
        path,
        params,
        now_secs: now_secs(),
        tls_client_subject: intake::tls_client_subject(session),
    }
}

/// The decision's permit, with the caller and address recorded for the
/// access log; a refusal records the caller it identified.
fn permitted<'s>(
    ctx: &mut Ctx,
    decided: Result<decide::Permit<'s>, decide::Refusal>,
) -> Result<decide::Permit<'s>, Failure> {
    match decided {
        Ok(permit) => {
            ctx.client_id = Some(permit.client.id.clone());
            ctx.client_ip = Some(permit.ip);
            Ok(permit)
        }
        Err(refusal) => {
            ctx.client_id = refusal.client_id;
            Err(Failure::Capture(*refusal.error))
        }
    }
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

impl Gateway {
    /// Drives one request through the stages up to the respond stage.
    async fn handle(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Answer, Failure> {
        intake::check_head(session, self.settings.limits.max_header_bytes)?;
        let path = session.req_header().uri.path().to_string();
        if let Some(target) = management::classify(&path) {
            ctx.route = "management";
            return self.manage(session, ctx, target, &path).await;
        }
        if let Some((route, issuer)) = self.issuers.iter().find(|(r, _)| r.path == path) {
            ctx.route = issuer.path();
            return self.issue(session, ctx, route, *issuer).await;
        }
        let route = self
            .routes
            .find(&path)
            .ok_or_else(|| ApiError::unknown_endpoint(&path))?;
        ctx.route = route_label(route);
        let method = session.req_header().method.clone();
        if !(method == http::Method::GET
            || method == http::Method::POST
            || method == http::Method::HEAD)
        {
            return Err(ApiError::method_not_allowed(method.as_str()).into());
        }
        let limits = &self.settings.limits;

        // One snapshot for the whole decision, from the body's admission on.
        let snap = self.policy.load();

        // Intake.
        let admit = self.admission(&snap);
        let mut request = intake::read(
            session,
            &self.settings,
            BodyUse::Route(route.request_records),
            admit,
            ctx,
        )
        .await?;

        // Decide.
        let facts = facts(session, &path, &request.params);
        let decided = match decide::decide_route(&snap, &self.rules, &facts, route) {
            decide::Verdict::Enforced(decided) => decided,
            decide::Verdict::Observed { pass, would_be } => {
                let peer = peer_ip(session);
                let observer = observe::Observer {
                    upstream: &self.upstream,
                    known_params: &self.known_params,
                    limits,
                };
                let decided = (pass, would_be);
                return observe::observe(observer, session, ctx, route, decided, request, peer)
                    .await;
            }
        };
        let permit = permitted(ctx, decided)?;
        let Some(access) = &permit.route else {
            return Err(ApiError::internal("a route decision without its grants").into());
        };

        // Request filter: the parameter names (one the route does not name
        // is refused, or dropped where the route says so; a look-alike of a
        // checked one is always refused), then the write schema.
        check_names(
            &request.params,
            &route.params,
            &self.known_params,
            route.unknown_params,
        )?;
        let mut dropped = request.params.retain_allowed(&route.params);
        // A token reaches only its own user's record: the issuer finds it
        // from the token, never from a selector.
        if permit.token.is_some() {
            dropped += TOKEN_STRIPPED
                .iter()
                .filter(|p| request.params.remove(p).is_some())
                .count();
        }
        if dropped > 0 {
            metrics::DROPPED_PARAMETERS.inc_by(&[ctx.route], dropped as u64);
        }
        // The write shadow sees the records as sent, before the enforced
        // schema strips them.
        if let Some(tree) = access.grants.shadow_write {
            if let Some(removed) = crate::filter::shadow::write_records(
                route,
                tree,
                access.attribute_name.as_ref(),
                &request.params,
                request.json.as_ref(),
                limits.max_json_depth,
            ) {
                shadow::report(ctx, &permit.client.id, "request", &removed);
            }
        }
        let removed = crate::filter::request::filter_write(
            route,
            permit.client,
            &access.grants,
            access.attribute_name.as_ref(),
            &mut request.params,
            request.json.as_mut(),
            limits.max_json_depth,
        )?
        .removed;
        if removed > 0 {
            metrics::FILTERED_REQUEST.inc_by(removed as u64);
        }
        for p in CREDENTIAL_PARAMS {
            request.params.remove(p);
        }

        // Forward, then relay.
        let outgoing = Outgoing::new(
            &method,
            route,
            &request.params,
            request.json.take(),
            &session.req_header().headers,
            &ctx.request_id,
            &permit,
        )?;
        let exchange = Exchange::begin(&self.upstream, &permit, &outgoing, ctx).await?;
        Ok(relay::relay(
            session,
            ctx,
            exchange,
            access,
            limits,
            &self.settings.response_headers.allow,
        )
        .await?)
    }

    /// A token endpoint: the same intake and decision, then the issuance
    /// stage forwards it and binds the tokens its answer carries.
    async fn issue(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Route,
        issuer: Issuer,
    ) -> Result<Answer, Failure> {
        // POST only: a code or a refresh token in a URL ends up in the
        // logs of whatever sits between the caller and the gateway.
        let method = &session.req_header().method;
        if method != http::Method::POST {
            return Err(ApiError::method_not_allowed(method.as_str()).into());
        }
        let Some(store) = self.rules.tokens.clone() else {
            return Err(ApiError::unknown_endpoint(issuer.path()).into());
        };
        let snap = self.policy.load();
        let admit = self.admission(&snap);
        let body_use = BodyUse::Route(route.request_records);
        let request = intake::read(session, &self.settings, body_use, admit, ctx).await?;
        let facts = facts(session, issuer.path(), &request.params);
        let target = Target::Issue { route, issuer };
        let permit = permitted(ctx, decide::authorize(&snap, &self.rules, &facts, target))?;
        let issuing = issue::Issuing {
            upstream: &self.upstream,
            store,
            known_params: &self.known_params,
            limits: &self.settings.limits,
            allow: &self.settings.response_headers.allow,
        };
        issue::issue(issuing, session, ctx, route, permit, request).await
    }

    /// The management API: the same intake and decision, answered here.
    async fn manage(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        target: management::Target<'_>,
        path: &str,
    ) -> Result<Answer, Failure> {
        let body_use = match target {
            management::Target::Capture(_) => BodyUse::Form,
            management::Target::Roles(_) => BodyUse::Document,
        };
        let connect = matches!(body_use, BodyUse::Document);
        let snap = self.policy.load();
        let admit = self.admission(&snap);
        let read = intake::read(session, &self.settings, body_use, admit, ctx).await;
        drop(snap);
        let request = match read {
            Ok(r) => r,
            Err(e) if connect => return Err(crate::errors::RoleError::from_decision(e).into()),
            Err(e) => return Err(e.into()),
        };
        let req = session.req_header();
        let head = req.method == http::Method::HEAD;
        let call = Call {
            method: req.method.clone(),
            allowed: target.params(),
            headers: Call::decision_headers(&req.headers),
            peer: peer_ip(session),
            path: path.to_string(),
            params: request.params,
            document: request.body,
            request_id: ctx.request_id.clone(),
            now_secs: now_secs(),
            tls_client_subject: intake::tls_client_subject(session).map(str::to_string),
        };
        let outcome = management::serve(&self.management, target, call).await;
        ctx.client_id = outcome.client_id;
        ctx.client_ip = outcome.client_ip;
        let value = outcome.result?;
        // A `Value`'s Display cannot fail, unlike `to_vec`'s general case.
        let reply = respond::json_reply(200, value.to_string().into_bytes(), head && connect)?;
        Ok(Answer::Reply(reply))
    }

    /// Whether an `Expect: 100-continue` caller may be asked for its body.
    fn admission<'a>(
        &'a self,
        snap: &'a Snapshot,
    ) -> impl FnOnce(&Session) -> Result<(), ApiError> + 'a {
        move |s: &Session| {
            decide::admit_body(
                snap,
                &self.rules,
                &s.req_header().headers,
                peer_ip(s),
                intake::tls_client_subject(s),
                now_secs(),
            )
        }
    }

    fn client_label_enabled(&self) -> bool {
        let m = &self.settings.metrics;
        match m.client_label {
            ClientLabel::On => true,
            ClientLabel::Off => false,
            ClientLabel::Auto => self.policy.client_count() <= m.client_label_max_clients,
        }
    }

    fn peer_is_trusted(&self, session: &Session) -> bool {
        peer_ip(session).is_some_and(|ip| self.rules.trusted_proxies.contains(ip))
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    async fn early_request_filter(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        header_deadline::mark_header_read();
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.request_id = session
            .req_header()
            .headers
            .get(X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| ctx::acceptable_request_id(v))
            .filter(|_| self.peer_is_trusted(session))
            .map(str::to_string)
            .unwrap_or_else(ctx::new_request_id);
        let outcome = self.handle(session, ctx).await;
        respond::respond(session, ctx, outcome, self.settings.capture_compat_status).await?;
        Ok(true)
    }

    /// After a streamed response has started, nothing more may be written:
    /// the connection is dropped so the client sees a broken response.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => 502,
        };
        if session.response_written().is_none() {
            if let Err(e) = session.respond_error(code).await {
                tracing::debug!(error = %e, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // Unreachable: request_filter answers every request itself.
        Err(Error::explain(
            ErrorType::HTTPStatus(500),
            "no forwarding path",
        ))
    }

    async fn logging(&self, session: &mut Session, e: Option<&pingora::Error>, ctx: &mut Ctx) {
        let total = ctx.start.elapsed();
        let status = if ctx.status == 0 { 499 } else { ctx.status };
        metrics::count_request(ctx.route, ctx.decision, status, ctx.shadow);
        if let Some(client) = ctx.client_id.as_deref() {
            if self.client_label_enabled() {
                metrics::CLIENT_REQUESTS.inc(&[client, ctx.decision]);
                // A shadow-mode client's would-be refusal was not answered
                // 429: it shows under `shadow="true"` only.
                if ctx.decision == DenyReason::RateLimited.label() && !ctx.shadow {
                    metrics::RATE_LIMITED.inc(&[client]);
                }
            }
        }
        let gateway = ctx.gateway_time(total);
        metrics::observe_durations(
            ctx.route,
            total,
            (!ctx.upstream_time.is_zero()).then_some(ctx.upstream_time),
            gateway,
        );
        let req = session.req_header();
        // The address the decision used; a call refused before the decision
        // has only the peer's.
        let client_ip = ctx.client_ip.or_else(|| peer_ip(session));
        // Bounded and escaped: the user agent is the caller's free text.
        let user_agent = req
            .headers
            .get(http::header::USER_AGENT)
            .map(|v| log_format::bounded_text(v.as_bytes(), log_format::USER_AGENT_MAX));
        tracing::info!(
            target: "access",
            request_id = %ctx.request_id,
            client_id = ctx.client_id.as_deref().unwrap_or("-"),
            client_ip = %log_format::OrDash(client_ip),
            method = req.method.as_str(),
            // The path only: a query string can carry credentials.
            path = req.uri.path(),
            route = ctx.route,
            decision = ctx.decision,
            shadow = ctx.shadow,
            status,
            bytes_in = ctx.bytes_in,
            bytes_out = ctx.bytes_out,
            upstream = %log_format::OrDash(ctx.upstream_addr),
            user_agent = user_agent.as_deref().unwrap_or("-"),
            total_ms = log_format::millis(total),
            upstream_ms = log_format::millis(ctx.upstream_time),
            gateway_ms = log_format::millis(gateway),
            client_wait_ms = log_format::millis(ctx.client_wait),
            error = e.map(|e| e.etype().as_str()).unwrap_or(""),
        );
    }
}
