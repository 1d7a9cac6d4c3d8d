//! The management API, answered by the gateway itself and never proxied.
//! Every call is authenticated, allow-listed and feature-checked like any
//! other; every change is validated, persisted, audited, then swapped in.

pub mod capture;
pub mod roles;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::Session;
use serde_json::Value;

use crate::enforce::{self, AuthInput};
use crate::errors::ApiError;
use crate::gateway::{header_str, now_secs, Ctx, Gateway, Reply};
use crate::metrics;
use crate::params::Params;
use crate::policy::audit::{redacted_client, AuditEntry, AuditLog};
use crate::policy::store::ChangeError;
use crate::policy::{Feature, PolicyStore};
use capture::{Caller, Endpoint};
use roles::{RoleError, RolesPath};

pub enum Target<'a> {
    Capture(Endpoint),
    Roles(RolesPath<'a>),
}

pub fn classify(path: &str) -> Option<Target<'_>> {
    if let Some(ep) = Endpoint::from_path(path) {
        return Some(Target::Capture(ep));
    }
    roles::parse_path(path).map(Target::Roles)
}

fn json_reply(status: u16, body: Vec<u8>, head: bool) -> Result<Reply, ApiError> {
    let mut header =
        ResponseHeader::build(status, Some(3)).map_err(|e| ApiError::internal(e.to_string()))?;
    let set = |h: &mut ResponseHeader, k: &'static str, v: String| {
        h.insert_header(k, v)
            .map_err(|e| ApiError::internal(e.to_string()))
    };
    set(&mut header, "content-type", "application/json".into())?;
    set(&mut header, "content-length", body.len().to_string())?;
    set(&mut header, "cache-control", "no-store".into())?;
    Ok(Reply {
        header,
        body: (!head).then(|| Bytes::from(body)),
    })
}

/// Everything a policy write needs, owned, so it can run off the async workers.
struct WriteJob {
    store: Arc<PolicyStore>,
    audit: Arc<AuditLog>,
    request_id: String,
    caller: String,
    ip: IpAddr,
    endpoint: &'static str,
}

impl WriteJob {
    /// Runs the change under the store's write lock, audits it once it is on
    /// disk, and reports the outcome in metrics.
    async fn run<R, E>(
        self,
        change: impl FnOnce(&mut crate::policy::model::PolicyFile, &crate::policy::Snapshot) -> Result<R, E>
            + Send
            + 'static,
        target_of: impl Fn(&R) -> String + Send + 'static,
    ) -> Result<R, ChangeError<E>>
    where
        R: Send + 'static,
        E: Send + 'static,
    {
        let task = tokio::task::spawn_blocking(move || {
            let WriteJob {
                store,
                audit,
                request_id,
                caller,
                ip,
                endpoint,
            } = self;
            store.apply(change, |before, after, out| {
                let target = target_of(out);
                let entry = AuditEntry {
                    ts: chrono::Utc::now().to_rfc3339(),
                    request_id: &request_id,
                    caller: &caller,
                    ip: ip.to_string(),
                    endpoint,
                    target: Some(&target),
                    before: redacted_client(before.clients.get(&target)),
                    after: redacted_client(after.clients.get(&target)),
                };
                if let Err(e) = audit.append(&entry) {
                    tracing::error!(error = %e, path = %audit.path().display(), "audit log append failed");
                }
            })
        });
        let result = match task.await {
            Ok(r) => r,
            Err(e) => Err(ChangeError::Persist(std::io::Error::other(e.to_string()))),
        };
        match &result {
            Ok((_, snap)) => {
                metrics::POLICY_RELOADS
                    .with_label_values(&["api", "success"])
                    .inc();
                metrics::policy_activated(snap.version, snap.clients.len());
            }
            Err(ChangeError::Refused(_)) => {}
            Err(_) => metrics::POLICY_RELOADS
                .with_label_values(&["api", "failure"])
                .inc(),
        }
        result.map(|(r, _)| r)
    }
}

fn change_error(e: ChangeError<ApiError>) -> ApiError {
    match e {
        ChangeError::Refused(e) => e,
        ChangeError::Invalid(errors) => ApiError::invalid_argument(
            "policy",
            errors
                .first()
                .map(|e| e.message.clone())
                .unwrap_or_default(),
        ),
        ChangeError::Persist(io) => {
            tracing::error!(error = %io, "policy change could not be persisted; nothing changed");
            ApiError::internal("the change could not be saved; the policy is unchanged")
        }
    }
}

impl Gateway {
    pub(crate) async fn handle_management(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        path: &str,
    ) -> Result<Reply, ApiError> {
        ctx.route = "management";
        let Some(target) = classify(path) else {
            return Err(ApiError::unknown_endpoint(path));
        };
        let method = session.req_header().method.clone();
        let head = method == http::Method::HEAD;
        let body = self.read_body(session).await?;
        let query = session.req_header().uri.query().map(str::to_string);
        match target {
            Target::Capture(ep) => {
                if !(method == http::Method::POST
                    || (method == http::Method::GET && ep.is_read_only()))
                {
                    return Err(ApiError::method_not_allowed(method.as_str()));
                }
                let form = (!body.is_empty()).then_some(&body[..]);
                let params = Params::parse(query.as_deref(), form)?;
                let (caller_id, ip, is_owner) =
                    self.authorize_management(session, ctx, &params, path, Some(ep))?;
                let caller = Caller {
                    client_id: &caller_id,
                    ip,
                    is_owner,
                    now_secs: now_secs(),
                };
                let response = if ep.is_read_only() {
                    capture::read(ep, &self.policy.load(), &params, &caller)?
                } else {
                    self.capture_write(ep, params, &caller, ctx).await?
                };
                json_reply(
                    200,
                    serde_json::to_vec(&response).unwrap_or_default(),
                    false,
                )
            }
            Target::Roles(rp) => {
                let result = self
                    .roles(session, ctx, &method, &rp, query.as_deref(), &body, path)
                    .await;
                match result {
                    Ok(v) => json_reply(200, serde_json::to_vec(&v).unwrap_or_default(), head),
                    Err(e) => {
                        ctx.decision = match e.status {
                            401 => "credentials",
                            403 => "feature",
                            _ => "bad_request",
                        };
                        json_reply(e.status, e.body(&ctx.request_id), head)
                    }
                }
            }
        }
    }

    /// Authentication, allow-list and (for Capture endpoints) features.
    fn authorize_management(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        params: &Params,
        path: &str,
        ep: Option<Endpoint>,
    ) -> Result<(String, IpAddr, bool), ApiError> {
        let snap = self.policy.load();
        let req = session.req_header();
        let input = AuthInput {
            authorization: req.headers.get("authorization").map(|v| v.as_bytes()),
            date: header_str(req, "date"),
            endpoint: path,
            now_secs: now_secs(),
            max_skew_secs: self.settings.auth.signature_max_skew_secs,
        };
        let client = enforce::authenticate(&snap, &input, params)?;
        ctx.client_id = Some(client.id.clone());
        let ip = self.client_ip(session)?;
        enforce::check_ip(client, ip)?;
        if let Some(ep) = ep {
            if !client.features.intersects(ep.needs_any()) {
                return Err(ApiError::feature_denied(ep.path()));
            }
        }
        Ok((
            client.id.clone(),
            ip,
            client.features.contains(Feature::Owner),
        ))
    }

    async fn capture_write(
        &self,
        ep: Endpoint,
        params: Params,
        caller: &Caller<'_>,
        ctx: &Ctx,
    ) -> Result<Value, ApiError> {
        let job = WriteJob {
            store: self.policy.clone(),
            audit: self.audit.clone(),
            request_id: ctx.request_id.clone(),
            caller: caller.client_id.to_string(),
            ip: caller.ip,
            endpoint: ep.path(),
        };
        let (caller_id, ip, is_owner, now) = (
            caller.client_id.to_string(),
            caller.ip,
            caller.is_owner,
            caller.now_secs,
        );
        let change = job
            .run(
                move |policy, snap| {
                    let caller = Caller {
                        client_id: &caller_id,
                        ip,
                        is_owner,
                        now_secs: now,
                    };
                    capture::apply(ep, policy, snap, &params, &caller)
                },
                |c: &capture::Change| c.target.clone(),
            )
            .await
            .map_err(change_error)?;
        Ok(change.response)
    }

    #[allow(clippy::too_many_arguments)]
    async fn roles(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        method: &http::Method,
        rp: &RolesPath<'_>,
        query: Option<&str>,
        body: &[u8],
        path: &str,
    ) -> Result<Value, RoleError> {
        let params =
            Params::parse(query, None).map_err(|e| RoleError::bad_request(e.description))?;
        let (caller, ip, _) = self
            .authorize_management(session, ctx, &params, path, None)
            .map_err(|e| match e.http_status {
                401 => RoleError::new(
                    401,
                    "Unauthorized.",
                    "Valid client credentials are required.",
                    "Authenticate with the client id and secret.",
                ),
                403 => RoleError::new(
                    403,
                    "Forbidden.",
                    "The call is not allowed from this address.",
                    "Call from an allowed address.",
                ),
                _ => RoleError::bad_request(e.description),
            })?;
        let snap = self.policy.load();
        if *method == http::Method::GET || *method == http::Method::HEAD {
            return roles::list(&snap, rp, &caller, &params);
        }
        if *method != http::Method::PUT {
            return Err(RoleError::new(
                405,
                "Method not allowed.",
                format!("{method} is not supported here."),
                "Use GET, HEAD or PUT.",
            ));
        }
        roles::authorize_put(&snap, rp, &caller)?;
        drop(snap);
        let job = WriteJob {
            store: self.policy.clone(),
            audit: self.audit.clone(),
            request_id: ctx.request_id.clone(),
            caller,
            ip,
            endpoint: "/api/v1/Tenants/{tenantId}/ClientCredentialClients/{clientId}/Roles",
        };
        let (tenant, client, body) = (rp.tenant.to_string(), rp.client.to_string(), body.to_vec());
        let target = client.clone();
        job.run(
            move |policy, _| {
                roles::replace(
                    policy,
                    &RolesPath {
                        tenant: &tenant,
                        client: &client,
                    },
                    &body,
                )
            },
            move |_| target.clone(),
        )
        .await
        .map_err(|e| match e {
            ChangeError::Refused(e) => e,
            ChangeError::Invalid(errors) => RoleError::bad_request(
                errors
                    .first()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
            ),
            ChangeError::Persist(_) => RoleError::new(
                500,
                "Internal server error.",
                "The change could not be saved; nothing changed.",
                "Retry later.",
            ),
        })
    }
}
