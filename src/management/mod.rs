//! The management API, answered by the gateway itself and never proxied:
//! Capture's client and access-schema endpoints ([`capture`]) and CONNECT's
//! Roles API ([`roles`]). Every call is decided by the same
//! [`decide::authorize`] as record routes. A change is decided again inside
//! the store's serialized write, against the very snapshot it is applied to,
//! so a caller whose `owner` feature was just removed cannot get one more
//! change in; it is then validated, persisted, audited and swapped in.

pub mod capture;
pub mod dry_run;
pub mod roles;

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use serde_json::Value;

use crate::decide::{self, Facts, Permit, Refusal, Rules, Target as Decided};
use crate::errors::{ApiError, Failure, RoleError};
use crate::ops::metrics;
use crate::params::{check_names, ParamNames, Params, UnknownParams};
use crate::policy::audit::{redacted_client, AuditEntry, AuditLog};
use crate::policy::model::PolicyFile;
use crate::policy::store::{ChangeError, Preview};
use crate::policy::{PolicyStore, Snapshot};
use capture::{Caller, Endpoint};
use roles::RolesPath;

/// The management endpoint a path names, if any.
pub enum Target<'a> {
    Capture(Endpoint),
    Roles(RolesPath<'a>),
}

impl Target<'_> {
    /// The parameters the call reads; any other is refused.
    pub fn params(&self) -> ParamNames {
        match self {
            Target::Capture(ep) => ParamNames::new(ep.params().iter().copied()),
            Target::Roles(_) => ParamNames::new(roles::PARAMS),
        }
    }
}

/// Every parameter name some management endpoint reads.
pub fn known_params() -> ParamNames {
    ParamNames::new(
        Endpoint::ALL
            .iter()
            .flat_map(|ep| ep.params().iter().copied())
            .chain(roles::PARAMS),
    )
}

pub fn classify(path: &str) -> Option<Target<'_>> {
    if let Some(ep) = Endpoint::from_path(path) {
        return Some(Target::Capture(ep));
    }
    roles::parse_path(path).map(Target::Roles)
}

/// What the management API works with, shared by every call.
pub(crate) struct Services {
    pub(crate) store: Arc<PolicyStore>,
    pub(crate) audit: Arc<AuditLog>,
    pub(crate) rules: Arc<Rules>,
    /// Every parameter name a route or endpoint takes (for look-alikes).
    pub(crate) known_params: Arc<ParamNames>,
}

/// One management call as the intake read it, owned: a change is decided
/// inside the store's write, off the async workers.
pub(crate) struct Call {
    pub(crate) method: http::Method,
    /// The parameters the endpoint takes.
    pub(crate) allowed: ParamNames,
    /// The headers the decision reads (`Authorization`, `Date`,
    /// `X-Forwarded-For`), and no others.
    pub(crate) headers: HeaderMap,
    pub(crate) peer: Option<IpAddr>,
    pub(crate) path: String,
    pub(crate) params: Params,
    /// The Roles API's JSON document (PUT).
    pub(crate) document: Vec<u8>,
    pub(crate) request_id: String,
    pub(crate) now_secs: i64,
    /// The verified client certificate's subject commonName (mutual TLS).
    pub(crate) tls_client_subject: Option<String>,
}

impl Call {
    /// The headers of `all` the decision reads.
    pub(crate) fn decision_headers(all: &HeaderMap) -> HeaderMap {
        let mut kept = HeaderMap::new();
        for name in [
            http::header::AUTHORIZATION,
            http::header::DATE,
            http::HeaderName::from_static("x-forwarded-for"),
        ] {
            for v in all.get_all(&name) {
                kept.append(name.clone(), v.clone());
            }
        }
        kept
    }

    /// A decided caller's parameters: only those the endpoint takes (the
    /// same rule as record routes, judged after the decision like theirs).
    fn check_names(&self, known: &ParamNames) -> Result<(), ApiError> {
        check_names(&self.params, &self.allowed, known, UnknownParams::Refuse)
    }

    fn facts(&self) -> Facts<'_> {
        Facts {
            headers: &self.headers,
            peer: self.peer,
            path: &self.path,
            params: &self.params,
            now_secs: self.now_secs,
            tls_client_subject: self.tls_client_subject.as_deref(),
        }
    }
}

/// How a management call ended: its JSON answer or its failure, and the
/// caller if the decision identified it.
pub(crate) struct Outcome {
    pub(crate) result: Result<Value, Failure>,
    pub(crate) client_id: Option<String>,
    /// The address the decision used (the permit's), for the access log.
    pub(crate) client_ip: Option<IpAddr>,
}

impl Outcome {
    fn refused(r: Refusal) -> Outcome {
        Outcome {
            result: Err(Failure::Capture(*r.error)),
            client_id: r.client_id,
            client_ip: None,
        }
    }
}

/// Answers one management call.
pub(crate) async fn serve(services: &Services, target: Target<'_>, call: Call) -> Outcome {
    match target {
        Target::Capture(ep) => capture_call(services, ep, call).await,
        Target::Roles(rp) => {
            let (tenant, client) = (rp.tenant.to_string(), rp.client.to_string());
            roles_call(services, tenant, client, call).await
        }
    }
}

fn capture_target(ep: Endpoint) -> Decided<'static> {
    Decided::Management {
        endpoint: ep.path(),
        needs_any: ep.needs_any(),
    }
}

fn caller<'p>(permit: &'p Permit<'_>, now_secs: i64) -> Caller<'p> {
    Caller::of(permit, now_secs)
}

async fn capture_call(services: &Services, ep: Endpoint, call: Call) -> Outcome {
    if !(call.method == http::Method::POST
        || (call.method == http::Method::GET && ep.is_read_only()))
    {
        return Outcome {
            result: Err(ApiError::method_not_allowed(call.method.as_str()).into()),
            client_id: None,
            client_ip: None,
        };
    }
    if ep.is_read_only() {
        let snap = services.store.load();
        let permit =
            match decide::authorize(&snap, &services.rules, &call.facts(), capture_target(ep)) {
                Ok(p) => p,
                Err(r) => return Outcome::refused(r),
            };
        let result = call
            .check_names(&services.known_params)
            .and_then(|()| capture::read(ep, &snap, &call.params, &caller(&permit, call.now_secs)));
        return Outcome {
            result: result.map_err(Failure::Capture),
            client_id: Some(permit.client.id.clone()),
            client_ip: Some(permit.ip),
        };
    }
    let rules = services.rules.clone();
    let known = services.known_params.clone();
    let request_id = call.request_id.clone();
    let (dry, dry_run_valid) = dry_run::requested(&call.params);
    let change = move |policy: &mut PolicyFile, snap: &Snapshot| {
        let permit = decide::authorize(snap, &rules, &call.facts(), capture_target(ep))?;
        let caller_id = permit.client.id.clone();
        let change = call
            .check_names(&known)
            .and(dry_run_valid.clone())
            .and_then(|()| {
                capture::apply(
                    ep,
                    policy,
                    snap,
                    &call.params,
                    &caller(&permit, call.now_secs),
                )
            })
            .map_err(|error| Refusal {
                client_id: Some(caller_id.clone()),
                error: Box::new(error),
            })?;
        Ok(Committed {
            target: change.target,
            out: change.response,
            caller: caller_id,
            ip: permit.ip,
        })
    };
    let committed = if dry {
        preview(services, change).await
    } else {
        write(services, &request_id, ep.path(), change).await
    };
    answer(
        committed,
        Outcome::refused,
        |message| ApiError::invalid_argument("policy", message).into(),
        || ApiError::internal("the change could not be saved; the policy is unchanged").into(),
        Failure::from,
    )
}

/// A Roles API refusal: the caller if known, and the CONNECT error.
struct RolesRefusal(Option<String>, RoleError);

impl From<Refusal> for RolesRefusal {
    fn from(r: Refusal) -> Self {
        RolesRefusal(r.client_id, RoleError::from_decision(*r.error))
    }
}

async fn roles_call(services: &Services, tenant: String, client: String, call: Call) -> Outcome {
    if call.method != http::Method::PUT {
        let snap = services.store.load();
        let permit = match decide::authorize(&snap, &services.rules, &call.facts(), Decided::Roles)
        {
            Ok(p) => p,
            Err(r) => {
                let RolesRefusal(client_id, e) = r.into();
                return Outcome {
                    result: Err(e.into()),
                    client_id,
                    client_ip: None,
                };
            }
        };
        if call.method != http::Method::GET && call.method != http::Method::HEAD {
            return Outcome {
                result: Err(RoleError::new(
                    405,
                    "Method not allowed.",
                    format!("{} is not supported here.", call.method),
                    "Use GET, HEAD or PUT.",
                )
                .into()),
                client_id: Some(permit.client.id.clone()),
                client_ip: Some(permit.ip),
            };
        }
        let rp = RolesPath {
            tenant: &tenant,
            client: &client,
        };
        let result = match call.check_names(&services.known_params) {
            Ok(()) => {
                roles::list(&snap, &rp, &permit.client.id, &call.params).map_err(Failure::from)
            }
            Err(e) => Err(RoleError::from_decision(e).into()),
        };
        return Outcome {
            result,
            client_id: Some(permit.client.id.clone()),
            client_ip: Some(permit.ip),
        };
    }
    let rules = services.rules.clone();
    let known = services.known_params.clone();
    let request_id = call.request_id.clone();
    let (dry, dry_run_valid) = dry_run::requested(&call.params);
    let change = move |policy: &mut PolicyFile, snap: &Snapshot| {
        let permit = decide::authorize(snap, &rules, &call.facts(), Decided::Roles)
            .map_err(RolesRefusal::from)?;
        let caller_id = permit.client.id.clone();
        let refused = |e: RoleError| RolesRefusal(Some(caller_id.clone()), e);
        call.check_names(&known)
            .and(dry_run_valid.clone())
            .map_err(|e| refused(RoleError::from_decision(e)))?;
        let rp = RolesPath {
            tenant: &tenant,
            client: &client,
        };
        roles::authorize_put(snap, &rp, &caller_id).map_err(refused)?;
        let out = roles::replace(policy, &rp, &call.document).map_err(refused)?;
        Ok(Committed {
            target: client.clone(),
            out,
            caller: caller_id,
            ip: permit.ip,
        })
    };
    let committed = if dry {
        preview(services, change).await
    } else {
        write(
            services,
            &request_id,
            "/api/v1/Tenants/{tenantId}/ClientCredentialClients/{clientId}/Roles",
            change,
        )
        .await
    };
    answer(
        committed,
        |RolesRefusal(client_id, e)| Outcome {
            result: Err(e.into()),
            client_id,
            client_ip: None,
        },
        |message| RoleError::bad_request(message).into(),
        || {
            RoleError::new(
                500,
                "Internal server error.",
                "The change could not be saved; nothing changed.",
                "Retry later.",
            )
            .into()
        },
        |e| {
            let error = if e.http_status == 409 {
                "Conflict."
            } else {
                "Service unavailable."
            };
            RoleError::new(e.http_status, error, e.description, "Retry later.").into()
        },
    )
}

/// How a change ended, in the shape of the API that was called: refused
/// (by the decision or the change itself), invalid as a whole policy, or
/// not saved.
fn answer<E>(
    committed: Result<Committed<Value>, ChangeError<E>>,
    refused: impl FnOnce(E) -> Outcome,
    invalid: impl FnOnce(String) -> Failure,
    unsaved: impl FnOnce() -> Failure,
    unavailable: impl FnOnce(ApiError) -> Failure,
) -> Outcome {
    match committed {
        Ok(c) => Outcome {
            result: Ok(c.out),
            client_id: Some(c.caller),
            client_ip: Some(c.ip),
        },
        Err(ChangeError::Refused(e)) => refused(e),
        Err(ChangeError::Invalid(errors)) => Outcome {
            result: Err(invalid(
                errors
                    .first()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
            )),
            client_id: None,
            client_ip: None,
        },
        Err(ChangeError::Persist(io)) => {
            tracing::error!(error = %io, "policy change could not be persisted; nothing changed");
            Outcome {
                result: Err(unsaved()),
                client_id: None,
                client_ip: None,
            }
        }
        Err(ChangeError::Unavailable(why)) => {
            tracing::error!(reason = %why, "policy change not made: the policy store is unavailable");
            Outcome {
                result: Err(unavailable(ApiError::store_unavailable(&why))),
                client_id: None,
                client_ip: None,
            }
        }
        Err(ChangeError::Conflict) => Outcome {
            result: Err(unavailable(ApiError::changed_concurrently())),
            client_id: None,
            client_ip: None,
        },
    }
}

/// A change that was decided and applied: what to answer, and what the
/// audit entry says.
struct Committed<R> {
    out: R,
    caller: String,
    ip: IpAddr,
    target: String,
}

/// Runs a change under the store's write lock, off the async workers: the
/// change decides the call against the snapshot it is applied to. Audits it
/// once it is on disk, and reports the outcome in metrics.
async fn write<R, E>(
    services: &Services,
    request_id: &str,
    endpoint: &'static str,
    change: impl FnMut(&mut PolicyFile, &Snapshot) -> Result<Committed<R>, E> + Send + 'static,
) -> Result<Committed<R>, ChangeError<E>>
where
    R: Send + 'static,
    E: Send + 'static,
{
    let store = services.store.clone();
    let audit = services.audit.clone();
    let request_id = request_id.to_string();
    let task = tokio::task::spawn_blocking(move || {
        let entry = |before: &PolicyFile, after: &PolicyFile, c: &Committed<R>| {
            let entry = AuditEntry {
                ts: chrono::Utc::now().to_rfc3339(),
                request_id: &request_id,
                caller: &c.caller,
                ip: c.ip.to_string(),
                endpoint,
                target: Some(&c.target),
                before: redacted_client(before.clients.get(&c.target)),
                after: redacted_client(after.clients.get(&c.target)),
            };
            serde_json::to_string(&entry).unwrap_or_default()
        };
        let logged = |line: &str| {
            if let Err(e) = audit.append_line(line.as_bytes()) {
                tracing::error!(error = %e, path = %audit.path().display(), "audit log append failed");
            }
        };
        store.apply(&request_id, change, entry, logged)
    });
    let result = match task.await {
        Ok(r) => r,
        Err(e) => Err(ChangeError::Persist(std::io::Error::other(e.to_string()))),
    };
    match &result {
        Ok((_, snap)) => {
            metrics::POLICY_RELOADS.inc(&["api", "success"]);
            metrics::policy_activated(
                snap.version,
                snap.clients.len(),
                &snap.hash,
                snap.shadow_clients,
            );
        }
        Err(ChangeError::Refused(_)) => {}
        Err(_) => metrics::POLICY_RELOADS.inc(&["api", "failure"]),
    }
    result.map(|(c, _)| c)
}

/// A change's dry run: decided and applied to a copy of the running policy
/// under the store's write lock, off the async workers; the answer is what
/// would change. Nothing is persisted, audited, swapped or counted as a
/// reload.
async fn preview<E>(
    services: &Services,
    change: impl FnOnce(&mut PolicyFile, &Snapshot) -> Result<Committed<Value>, E> + Send + 'static,
) -> Result<Committed<Value>, ChangeError<E>>
where
    E: Send + 'static,
{
    let store = services.store.clone();
    match tokio::task::spawn_blocking(move || store.preview(change)).await {
        Ok(Ok(p)) => {
            let Committed {
                out,
                caller,
                ip,
                target,
            } = p.out;
            let shown = Preview {
                out,
                before: p.before,
                after: p.after,
                errors: p.errors,
            };
            Ok(Committed {
                out: dry_run::answer(shown, &target),
                caller,
                ip,
                target,
            })
        }
        Ok(Err(e)) => Err(ChangeError::Refused(e)),
        Err(e) => Err(ChangeError::Persist(std::io::Error::other(e.to_string()))),
    }
}
