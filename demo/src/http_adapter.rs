//! The HTTP side: a thin Pingora adapter over [`Store::handle`].

use std::sync::Mutex;

use async_trait::async_trait;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use serde_json::Value;

use crate::{ApiError, Params, Store, MAX_BODY_BYTES};

/// The sample user-record API as a Pingora [`ServeHttp`] application.
pub struct DemoUpstream {
    store: Mutex<Store>,
    /// Serialised answers to read calls, dropped on any write: the load test
    /// should measure the gateway, not this sample API's JSON encoding.
    read_cache: Mutex<std::collections::HashMap<String, Vec<u8>>>,
}

const READ_CACHE_ENTRIES: usize = 4096;

impl DemoUpstream {
    pub fn new(records: usize) -> Self {
        DemoUpstream {
            store: Mutex::new(Store::generate(records)),
            read_cache: Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn cached(&self, path: &str, query: &str, body: &[u8], params: &Params) -> Vec<u8> {
        // A token call's answer depends on the token: never cached.
        let read = matches!(
            path.trim_matches('/'),
            "entity" | "entity.find" | "entity.count"
        ) && params.get("access_token").is_none();
        let mut cache = self
            .read_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !read {
            cache.clear();
            drop(cache);
            return encode(&self.handle(path, params));
        }
        let key = format!("{path}?{query}\n{}", String::from_utf8_lossy(body));
        if let Some(hit) = cache.get(&key) {
            return hit.clone();
        }
        drop(cache);
        let bytes = encode(&self.handle(path, params));
        let mut cache = self
            .read_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= READ_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, bytes.clone());
        bytes
    }

    /// Runs one call against the store; exposed for tests that skip HTTP.
    pub fn handle(&self, endpoint: &str, params: &Params) -> Value {
        // A panic elsewhere cannot leave a half-applied write (updates are made
        // on a copy), so a poisoned store is still consistent.
        let mut store = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        store.handle(endpoint, params)
    }
}

fn encode(body: &Value) -> Vec<u8> {
    serde_json::to_vec(body).unwrap_or_else(|_| {
        br#"{"stat":"error","code":500,"error":"unexpected_error","error_description":"response serialisation failed"}"#
            .to_vec()
    })
}

pub(crate) fn json_response(body: &Value) -> http::Response<Vec<u8>> {
    bytes_response(encode(body))
}

fn bytes_response(bytes: Vec<u8>) -> http::Response<Vec<u8>> {
    let len = bytes.len();
    let mut resp = http::Response::new(bytes);
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Explicit length keeps the HTTP/1.1 connection reusable for the gateway's pool.
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

pub(crate) fn is_form(content_type: Option<&str>) -> bool {
    match content_type {
        None => true,
        Some(ct) => ct.split(';').next().is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        }),
    }
}

impl DemoUpstream {
    /// One request as bytes in, JSON bytes out: what the HTTP adapter does,
    /// without a socket (the gateway's tests serve it from their own server).
    pub fn respond(
        &self,
        path: &str,
        query: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Vec<u8> {
        self.respond_with(path, query, content_type, None, body)
    }

    /// [`respond`](Self::respond) with the request's `Authorization`: a
    /// user token (`OAuth <token>`) is taken as the `access_token`
    /// parameter.
    pub fn respond_with(
        &self,
        path: &str,
        query: &str,
        content_type: Option<&str>,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Vec<u8> {
        let mut params = Params::new();
        params.extend_urlencoded(query.as_bytes());
        if let Some(token) = authorization.and_then(|a| a.strip_prefix("OAuth ")) {
            params.insert("access_token", token.trim());
        }
        if !body.is_empty() {
            if !is_form(content_type) {
                return encode(
                    &ApiError::new(
                        200,
                        "invalid_argument",
                        "request body must be application/x-www-form-urlencoded".to_string(),
                        None,
                    )
                    .to_json(),
                );
            }
            params.extend_urlencoded(body);
        }
        self.cached(path, query, body, &params)
    }
}

#[async_trait]
impl ServeHttp for DemoUpstream {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let header = session.req_header();
        let path = header.uri.path().to_string();
        let query = header.uri.query().unwrap_or("").to_string();
        let content_type = session
            .get_header(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let authorization = session
            .get_header(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY_BYTES {
                        return json_response(
                            &ApiError::invalid("body", "request body too large").to_json(),
                        );
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "demo upstream failed to read request body");
                    return json_response(
                        &ApiError::new(
                            500,
                            "unexpected_error",
                            "failed to read the request body".to_string(),
                            None,
                        )
                        .to_json(),
                    );
                }
            }
        }
        bytes_response(self.respond_with(
            &path,
            &query,
            content_type.as_deref(),
            authorization.as_deref(),
            &body,
        ))
    }
}

/// The Pingora service to add to a `Server`: the demo API listening on `addr`
/// (e.g. `"127.0.0.1:8090"`) with `records` generated users.
pub fn service(addr: &str, records: usize) -> Service<HttpServer<DemoUpstream>> {
    let mut service = Service::new(
        "recordgate demo upstream".to_string(),
        HttpServer::new_app(DemoUpstream::new(records)),
    );
    service.add_tcp(addr);
    // One thread is plenty for an in-memory store behind a single mutex and
    // leaves the remaining cores to the gateway under load.
    service.threads = Some(1);
    service
}

/// Runs the demo API as its own process until it is signalled to stop.
pub fn serve(listen: &str, records: usize) {
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        pid_file: format!("/tmp/recordgate-demo-upstream-{}.pid", std::process::id()),
        upgrade_sock: format!("/tmp/recordgate-demo-upstream-{}.sock", std::process::id()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server.add_service(service(listen, records));
    server.run(pingora::server::RunArgs::default());
}
