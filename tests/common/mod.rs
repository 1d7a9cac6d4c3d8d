//! Shared harness for the integration tests: an in-process test upstream that
//! records what reaches it, a launcher for the real `recordgate` binary with
//! its own settings and policy in a temporary directory, and small HTTP
//! helpers (reqwest for ordinary calls, raw sockets for exact framing).
//!
//! Everything listens on loopback only and every wait is bounded.

#![allow(dead_code)]

/// A throw-away etcd cluster (real `etcd` processes) for tests that need one.
pub mod etcd;
pub mod fleet;
pub mod relay;
pub mod tokens;

/// Loading and checking the deployment files under deploy/.
pub mod deploy;

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::Mac;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Test upstream
// ---------------------------------------------------------------------------

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent on the request line.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }

    /// First value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// Query and form-body parameters, in order (query first).
    pub fn params(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = form_urlencoded::parse(self.query().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let form = self
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if form {
            out.extend(
                form_urlencoded::parse(&self.body).map(|(k, v)| (k.into_owned(), v.into_owned())),
            );
        }
        out
    }

    pub fn param(&self, name: &str) -> Option<String> {
        self.params()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// A parameter holding JSON, parsed.
    pub fn json_param(&self, name: &str) -> Option<Value> {
        self.param(name)
            .map(|v| serde_json::from_str(&v).expect("parameter is JSON"))
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the upstream answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Option<Duration>,
}

impl Reply {
    pub fn json(v: Value) -> Reply {
        Reply::bytes(
            "application/json;charset=UTF-8",
            serde_json::to_vec(&v).unwrap(),
        )
    }

    pub fn bytes(content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
            delay: None,
        }
    }

    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: None,
        }
    }

    pub fn status(mut self, s: u16) -> Reply {
        self.status = s;
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = Some(d);
        self
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;
type RawHandler = dyn Fn(&Recorded) -> Vec<u8> + Send + Sync;

/// An HTTP/1.1 upstream on 127.0.0.1:<random>, on its own tokio runtime.
pub struct TestUpstream {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl TestUpstream {
    /// A hyper 1 server whose answers come from `handler`.
    pub fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> TestUpstream {
        TestUpstream::start_at("127.0.0.1:0".parse().unwrap(), handler)
    }

    /// The same, listening on `addr`.
    pub fn start_at(
        addr: SocketAddr,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> TestUpstream {
        let handler: Arc<Handler> = Arc::new(handler);
        let log = Arc::new(Mutex::new(Vec::new()));
        let rt = runtime();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .expect("bind test upstream");
        let addr = listener.local_addr().unwrap();
        let log2 = log.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let log = log2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        let log = log.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let rec = Recorded {
                                method: parts.method.to_string(),
                                target: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect(),
                                body,
                            };
                            log.lock().unwrap().push(rec.clone());
                            let reply = handler(&rec);
                            if let Some(d) = reply.delay {
                                tokio::time::sleep(d).await;
                            }
                            let mut b = hyper::Response::builder().status(reply.status);
                            for (k, v) in &reply.headers {
                                b = b.header(k.as_str(), v.as_str());
                            }
                            Ok::<_, Infallible>(b.body(Full::new(Bytes::from(reply.body))).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestUpstream {
            addr,
            log,
            rt: Some(rt),
        }
    }

    /// A hand-rolled server: reads one request (headers + Content-Length
    /// body), records it, writes whatever bytes `handler` returns, closes.
    /// For resets mid-body, lying Content-Length and other broken framing.
    pub fn start_raw(
        handler: impl Fn(&Recorded) -> Vec<u8> + Send + Sync + 'static,
    ) -> TestUpstream {
        use tokio::io::AsyncWriteExt;
        let handler: Arc<RawHandler> = Arc::new(handler);
        let log = Arc::new(Mutex::new(Vec::new()));
        let rt = runtime();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind raw upstream");
        let addr = listener.local_addr().unwrap();
        let log2 = log.clone();
        rt.spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let log = log2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let Some((head, body)) = read_http_request(&mut stream, &mut buf).await else {
                        return;
                    };
                    let mut lines = head.split("\r\n");
                    let mut first = lines.next().unwrap_or("").split(' ');
                    let method = first.next().unwrap_or("").to_string();
                    let target = first.next().unwrap_or("").to_string();
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let rec = Recorded {
                        method,
                        target,
                        headers,
                        body,
                    };
                    log.lock().unwrap().push(rec.clone());
                    let out = handler(&rec);
                    let _ = stream.write_all(&out).await;
                    let _ = stream.flush().await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        TestUpstream {
            addr,
            log,
            rt: Some(rt),
        }
    }

    /// The Capture-like default upstream.
    pub fn capture_like() -> TestUpstream {
        TestUpstream::start(capture_handler)
    }

    pub fn server(&self) -> String {
        self.addr.to_string()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// The only request received; panics unless exactly one arrived.
    pub fn only(&self) -> Recorded {
        let r = self.requests();
        assert_eq!(
            r.len(),
            1,
            "expected exactly one upstream request, got {r:#?}"
        );
        r.into_iter().next().unwrap()
    }

    pub fn assert_untouched(&self) {
        let r = self.requests();
        assert!(
            r.is_empty(),
            "the upstream must not have been contacted, got {r:#?}"
        );
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    find(hay, needle.as_bytes()).is_some()
}

/// The record the default upstream serves, with nested objects and plurals.
/// Every value is distinctive so leaks can be searched for in bodies.
pub fn sample_record(id: u64) -> Value {
    json!({
        "id": id,
        "uuid": format!("uuid-{id}"),
        "created": "2020-01-01 00:00:00.000000 +0000",
        "lastUpdated": "2021-02-03 04:05:06.000000 +0000",
        "email": format!("hidden-email-{id}@example.com"),
        "givenName": format!("Ada{id}"),
        "familyName": "Lovelace",
        "displayName": "Countess",
        "mobileNumber": "555-HIDDEN",
        "birthday": "1815-12-10",
        "primaryAddress": {
            "address1": "12 HiddenStreet",
            "city": "London",
            "zip": "HIDDENZIP",
            "country": "UK"
        },
        "consents": {
            "marketing": {"granted": true, "updated": "2020-05-05 00:00:00"},
            "analytics": {"granted": false, "updated": "2020-06-06 00:00:00"}
        },
        "photos": [
            {"id": 101, "type": "hiddentype-large", "value": "http://photos/1.jpg"},
            {"id": 102, "type": "hiddentype-small", "value": "http://photos/2.jpg"}
        ],
        "internal": {"riskScore": 97, "notes": "hidden-note"}
    })
}

/// Values of `sample_record` that a client with the `reader` schema must
/// never see.
pub const HIDDEN_VALUES: [&str; 6] = [
    "hidden-email",
    "555-HIDDEN",
    "HiddenStreet",
    "HIDDENZIP",
    "hiddentype",
    "hidden-note",
];

/// A tiny Capture: `/entity` returns a record (or the value at
/// `attribute_name`), `/entity.find` a list of two, `/entity.count` a count,
/// writes answer `stat: ok`.
pub fn capture_handler(r: &Recorded) -> Reply {
    let params = r.params();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match r.path() {
        "/entity" => {
            let rec = sample_record(7);
            let result = match get("attribute_name") {
                Some(a) => {
                    let mut v = &rec;
                    for seg in a.split('.') {
                        v = &v[seg];
                    }
                    v.clone()
                }
                None => rec,
            };
            Reply::json(json!({"stat": "ok", "result": result}))
        }
        "/entity.find" => Reply::json(json!({
            "stat": "ok",
            "result_count": 2,
            "results": [sample_record(1), sample_record(2)]
        })),
        "/entity.count" => Reply::json(json!({"stat": "ok", "total_count": 2})),
        "/entity.create" => Reply::json(json!({"stat": "ok", "id": 9, "uuid": "uuid-9"})),
        "/entity.bulkCreate" => {
            Reply::json(json!({"stat": "ok", "uuid_results": ["uuid-10", "uuid-11"]}))
        }
        _ => Reply::json(json!({"stat": "ok"})),
    }
}

// ---------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------

/// The entity type used by the default policy (same shape as the demo's).
pub const ENTITY_TYPES: &str = r#"
entity_types:
  user:
    attr_defs:
      - {name: id, type: id}
      - {name: uuid, type: uuid}
      - {name: created, type: dateTime}
      - {name: lastUpdated, type: dateTime}
      - {name: email, type: string, length: 256}
      - {name: givenName, type: string, length: 1000}
      - {name: familyName, type: string, length: 1000}
      - {name: displayName, type: string, length: 1000}
      - {name: mobileNumber, type: string, length: 100}
      - {name: birthday, type: date}
      - name: primaryAddress
        type: object
        attr_defs:
          - {name: address1, type: string, length: 1000}
          - {name: city, type: string, length: 1000}
          - {name: zip, type: string, length: 100}
          - {name: country, type: string, length: 1000}
      - name: consents
        type: object
        attr_defs:
          - name: marketing
            type: object
            attr_defs:
              - {name: granted, type: boolean}
              - {name: updated, type: dateTime}
          - name: analytics
            type: object
            attr_defs:
              - {name: granted, type: boolean}
              - {name: updated, type: dateTime}
      - name: photos
        type: plural
        attr_defs:
          - {name: type, type: string, length: 100}
          - {name: value, type: string, length: 2000}
      - name: internal
        type: object
        attr_defs:
          - {name: riskScore, type: integer}
          - {name: notes, type: string, length: 4000}
"#;

/// Clients of the default policy. Secret of `<name>` is `<name>-secret`.
///
/// * `owner`: every endpoint, no schema.
/// * `reader`: direct_read_access; reads givenName, primaryAddress.city,
///   photos.value; read-only (`write: []`).
/// * `fullreader`: direct_read_access, no schema (full read).
/// * `direct`: direct_access only, no schema.
/// * `writer`: direct_access, strip; reads a few, writes givenName,
///   familyName, primaryAddress.city, photos.value.
/// * `rejecter`: same as writer with `on_write_violation: reject`.
/// * `login`: login_client only.
/// * `local`: direct_read_access from 127.0.0.0/8 only.
/// * `offsite`: direct_read_access from documentation networks only.
pub const CLIENTS: &str = r#"
clients:
  owner:
    secret: owner-secret
    features: [owner]
  reader:
    secret: reader-secret
    features: [direct_read_access]
    access_schemas:
      user:
        read: [givenName, primaryAddress.city, photos.value]
        write: []
  fullreader:
    secret: fullreader-secret
    features: [direct_read_access]
  direct:
    secret: direct-secret
    features: [direct_access]
  writer:
    secret: writer-secret
    features: [direct_access]
    access_schemas:
      user:
        read: [email, givenName, familyName, primaryAddress]
        write: [givenName, familyName, primaryAddress.city, photos.value]
  rejecter:
    secret: rejecter-secret
    features: [direct_access]
    on_write_violation: reject
    access_schemas:
      user:
        read: [email, givenName, familyName, primaryAddress]
        write: [givenName, familyName, primaryAddress.city, photos.value]
  login:
    secret: login-secret
    features: [login_client]
  local:
    secret: local-secret
    features: [direct_read_access]
    whitelist: ["127.0.0.0/8"]
  offsite:
    secret: offsite-secret
    features: [direct_read_access]
    whitelist: ["203.0.113.0/24", "2001:db8::/32"]
"#;

pub fn default_policy() -> String {
    format!("{ENTITY_TYPES}{CLIENTS}")
}

/// A policy with the default entity type and the given `clients:` block.
pub fn policy_with_clients(clients_yaml: &str) -> String {
    format!("{ENTITY_TYPES}\n{clients_yaml}")
}

// ---------------------------------------------------------------------------
// Gateway launcher
// ---------------------------------------------------------------------------

/// Picks a free loopback port (bind :0, read it, drop).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_port_v6() -> u16 {
    TcpListener::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct GatewayBuilder {
    upstream: String,
    policy: String,
    extra: serde_json::Map<String, Value>,
    ipv6: bool,
    files: Vec<(String, Vec<u8>)>,
    env: Vec<(String, String)>,
    /// Keys merged into the generated `server:` block (see `server_setting`).
    server: serde_json::Map<String, Value>,
    /// stdout goes to a pipe nobody reads (see `stdout_unread`).
    stdout_unread: bool,
}

/// A running `recordgate serve`, killed on drop.
pub struct Gateway {
    child: Child,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    /// `http://127.0.0.1:port` or `http://[::1]:port`.
    pub base: String,
    /// Environment given to the process (reused by `spawn_upgrade`).
    env: Vec<(String, String)>,
    /// The read end of an unread stdout pipe, held open so it stays full.
    _stdout_pipe: Option<std::process::ChildStdout>,
}

impl GatewayBuilder {
    pub fn new(upstream: &TestUpstream) -> GatewayBuilder {
        GatewayBuilder::to_server(&upstream.server())
    }

    /// A gateway whose upstream is `server` (`host:port`), which may be dead.
    pub fn to_server(server: &str) -> GatewayBuilder {
        GatewayBuilder {
            upstream: server.to_string(),
            policy: default_policy(),
            extra: serde_json::Map::new(),
            ipv6: false,
            files: Vec::new(),
            env: Vec::new(),
            server: serde_json::Map::new(),
            stdout_unread: false,
        }
    }

    /// Connects the gateway's stdout (where its log goes) to a pipe that is
    /// never read: after 64 KiB, every write to it would block.
    pub fn stdout_unread(mut self) -> Self {
        self.stdout_unread = true;
        self
    }

    pub fn policy(mut self, yaml: &str) -> Self {
        self.policy = yaml.to_string();
        self
    }

    /// Sets (or replaces) a top-level settings key.
    pub fn setting(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    /// Listen on `[::1]` instead of 127.0.0.1.
    pub fn ipv6(mut self) -> Self {
        self.ipv6 = true;
        self
    }

    /// Writes an extra file next to the policy before starting.
    pub fn file(mut self, name: &str, content: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.to_string(), content.into()));
        self
    }

    /// Sets an environment variable for the gateway process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn start(self) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, content) in &self.files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let (listen, addr): (String, SocketAddr) = if self.ipv6 {
            let p = free_port_v6();
            (format!("[::1]:{p}"), format!("[::1]:{p}").parse().unwrap())
        } else {
            let p = free_port();
            (
                format!("127.0.0.1:{p}"),
                format!("127.0.0.1:{p}").parse().unwrap(),
            )
        };
        let policy_path = dir.path().join("policy.yaml");
        std::fs::write(&policy_path, &self.policy).unwrap();
        let mut settings = json!({
            "listen": [listen],
            "upstream": {"servers": [self.upstream]},
            "policy": "policy.yaml",
            "timeouts": {"upstream_connect_ms": 1000, "upstream_read_ms": 5000},
            "server": {
                "threads": 2,
                "grace_period_secs": 0,
                "graceful_shutdown_timeout_secs": 0,
                "pid_file": dir.path().join("rg.pid").display().to_string(),
                "upgrade_sock": dir.path().join("rg_upgrade.sock").display().to_string()
            }
        });
        for (k, v) in self.extra {
            settings[k] = v;
        }
        for (k, v) in self.server {
            settings["server"][k] = v;
        }
        // JSON is YAML.
        let settings_path = dir.path().join("settings.yaml");
        std::fs::write(
            &settings_path,
            serde_json::to_vec_pretty(&settings).unwrap(),
        )
        .unwrap();
        let stdout = if self.stdout_unread {
            Stdio::piped()
        } else {
            Stdio::from(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
        };
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_recordgate"))
            .arg("serve")
            .arg("--config")
            .arg(&settings_path)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn recordgate");
        let base = if self.ipv6 {
            format!("http://[::1]:{}", addr.port())
        } else {
            format!("http://127.0.0.1:{}", addr.port())
        };
        let stdout_pipe = child.stdout.take();
        let mut gw = Gateway {
            child,
            dir,
            addr,
            base,
            env: self.env,
            _stdout_pipe: stdout_pipe,
        };
        gw.wait_ready();
        gw
    }
}

impl Gateway {
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("recordgate exited early ({status}):\n{}", self.stderr());
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "recordgate did not listen on {} within 10 s:\n{}",
                    self.addr,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base, path_and_query)
    }

    /// GET with optional Basic credentials.
    pub fn get(&self, path_and_query: &str, auth: Option<(&str, &str)>) -> Resp {
        let mut rb = http_client().get(self.url(path_and_query));
        if let Some((id, secret)) = auth {
            rb = rb.header("authorization", basic(id, secret));
        }
        Resp::from(rb.send().expect("GET"))
    }

    /// GET as `<client>` with secret `<client>-secret`.
    pub fn get_as(&self, client: &str, path_and_query: &str) -> Resp {
        let secret = format!("{client}-secret");
        self.get(path_and_query, Some((client, &secret)))
    }

    /// POST form fields with optional Basic credentials.
    pub fn post_form(
        &self,
        path: &str,
        auth: Option<(&str, &str)>,
        fields: &[(&str, &str)],
    ) -> Resp {
        let body = encode_form(fields);
        let mut rb = http_client()
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some((id, secret)) = auth {
            rb = rb.header("authorization", basic(id, secret));
        }
        Resp::from(rb.send().expect("POST"))
    }

    /// POST form fields as `<client>` with secret `<client>-secret`.
    pub fn post_as(&self, client: &str, path: &str, fields: &[(&str, &str)]) -> Resp {
        let secret = format!("{client}-secret");
        self.post_form(path, Some((client, &secret)), fields)
    }

    /// Any request, built by the caller.
    pub fn send(&self, rb: reqwest::blocking::RequestBuilder) -> Resp {
        Resp::from(rb.send().expect("request"))
    }

    /// Sends raw bytes on a fresh connection and reads one response.
    pub fn raw(&self, request: &[u8], head: bool) -> RawResponse {
        let mut s = self.connect();
        s.write_all(request).unwrap();
        read_raw_response(&mut s, head)
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .expect("connect to gateway");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `recordgate <args>` to completion (bounded by the command itself).
/// Runs `openssl` with `args` in `dir`; panics with its stderr if it fails.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_recordgate"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run recordgate")
}

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ---------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------

pub fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// HMAC-SHA1 over `endpoint\ndate\n` and the sorted `k=v\n` lines, computed
/// here independently of the gateway's code.
pub fn signature(secret: &str, endpoint: &str, date: &str, params: &[(&str, &str)]) -> String {
    let mut lines: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    lines.sort();
    let mut s = format!("{endpoint}\n{date}\n");
    for l in lines {
        s.push_str(&l);
        s.push('\n');
    }
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(s.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

pub fn encode_form(fields: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        s.append_pair(k, v);
    }
    s.finish()
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl From<reqwest::blocking::Response> for Resp {
    fn from(r: reqwest::blocking::Response) -> Resp {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.bytes().expect("read body").to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a gateway error: HTTP status, Capture code and error name,
    /// and the full envelope shape.
    pub fn assert_error(&self, http: u16, code: u64, error: &str) -> Value {
        let v = self.json();
        assert_eq!(self.status, http, "HTTP status; body: {v}");
        assert_eq!(v["stat"], "error", "{v}");
        assert_eq!(v["code"], code, "code; body: {v}");
        assert_eq!(v["error"], error, "error; body: {v}");
        assert!(
            v["error_description"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{v}"
        );
        assert!(
            v["request_id"].as_str().is_some_and(|s| !s.is_empty()),
            "{v}"
        );
        v
    }

    pub fn assert_ok(&self) -> Value {
        assert_eq!(self.status, 200, "body: {}", self.text());
        let v = self.json();
        assert_eq!(v["stat"], "ok", "{v}");
        v
    }

    /// Asserts none of `HIDDEN_VALUES` appears in the body.
    pub fn assert_no_hidden(&self) {
        for h in HIDDEN_VALUES {
            assert!(!contains(&self.body, h), "{h} leaked: {}", self.text());
        }
    }
}

/// A response read byte for byte off a socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn status(&self) -> u16 {
        self.status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// Reads one HTTP/1.1 response: the head, then exactly Content-Length bytes,
/// or a chunked body, or (neither) nothing when `head`/bodiless, else to EOF.
pub fn read_raw_response(s: &mut TcpStream, head: bool) -> RawResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).expect("read response head");
        assert!(
            n > 0,
            "connection closed before the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        assert!(buf.len() < 1 << 20, "response head too large");
    };
    let text = String::from_utf8_lossy(&buf[..head_end - 4]).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut rest = buf[head_end..].to_vec();
    let mut resp = RawResponse {
        status_line,
        headers,
        body: Vec::new(),
    };
    let status = resp.status();
    if head || status == 204 || status == 304 {
        resp.body = rest;
        return resp;
    }
    if let Some(len) = resp
        .header("content-length")
        .map(|v| v.parse::<usize>().expect("numeric Content-Length"))
    {
        while rest.len() < len {
            let n = s.read(&mut chunk).expect("read body");
            assert!(
                n > 0,
                "connection closed after {} of {len} body bytes",
                rest.len()
            );
            rest.extend_from_slice(&chunk[..n]);
        }
        resp.body = rest;
        return resp;
    }
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        // Read until the terminating chunk, then decode.
        while find(&rest, b"0\r\n\r\n").is_none() {
            let n = s.read(&mut chunk).expect("read chunked body");
            assert!(n > 0, "connection closed inside a chunked body");
            rest.extend_from_slice(&chunk[..n]);
        }
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            let line_end = i + find(&rest[i..], b"\r\n").expect("chunk size line");
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[i..line_end]).unwrap().trim(), 16)
                    .unwrap();
            i = line_end + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[i..i + size]);
            i += size + 2;
        }
        resp.body = out;
        return resp;
    }
    // Close-delimited.
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => rest.extend_from_slice(&chunk[..n]),
        }
        assert!(rest.len() < 64 << 20);
    }
    resp.body = rest;
    resp
}

/// Standard gateway + default Capture-like upstream.
pub fn gateway_with_default_upstream() -> (TestUpstream, Gateway) {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up).start();
    (up, gw)
}

// ---------------------------------------------------------------------------
// Operator listener, signals and the socket hand-over upgrade
// (observability.rs, graceful.rs)
// ---------------------------------------------------------------------------

impl GatewayBuilder {
    /// Enables the operator listener (`metrics.listen`) on a free loopback
    /// port; the keys of `extra` (e.g. `{"client_label": "on"}`) are added to
    /// the `metrics:` block.
    pub fn metrics(self, extra: Value) -> Self {
        let mut m = json!({"listen": format!("127.0.0.1:{}", free_port())});
        if let Value::Object(e) = extra {
            for (k, v) in e {
                m[k] = v;
            }
        }
        self.setting("metrics", m)
    }

    /// Sets one key of the `server:` block (e.g. `grace_period_secs`) while
    /// keeping the per-test `pid_file` and `upgrade_sock`.
    pub fn server_setting(mut self, key: &str, value: Value) -> Self {
        self.server.insert(key.to_string(), value);
        self
    }
}

/// Sends `sig` (a name such as `TERM`, `QUIT`, `HUP`) to `pid` with kill(1).
pub fn signal_pid(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg("-s")
        .arg(sig)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -s {sig} {pid} failed: {st}");
}

/// A tokio runtime of `workers` threads and a listener on an ephemeral
/// 127.0.0.1 port, for the hand-written upstreams of single tests.
pub fn upstream_runtime(
    workers: usize,
) -> (tokio::runtime::Runtime, tokio::net::TcpListener, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    (rt, listener, addr)
}

/// Reads one request from `stream` for a hand-written upstream: the header
/// block (at most 1 MiB) and a `Content-Length` body, as far as it comes
/// before the peer closes. Bytes read past the request stay in `buf`, for
/// the next request on the connection. `None` when the connection ends
/// before a complete header block.
pub async fn read_http_request(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let end = buf.len().min(head_end + len);
    let body = buf[head_end..end].to_vec();
    buf.drain(..end);
    Some((head, body))
}

/// A complete `200 OK` HTTP/1.1 response carrying `v` as JSON.
pub fn json_ok_response(v: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Polls `child` until it exits or `timeout` passes.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Gateway {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `QUIT`, `HUP`, ...) to the gateway process.
    pub fn signal(&self, sig: &str) {
        signal_pid(self.pid(), sig);
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_child(&mut self.child, timeout)
    }

    pub fn settings_path(&self) -> PathBuf {
        self.dir.path().join("settings.yaml")
    }

    /// The settings file as written by `GatewayBuilder::start`.
    pub fn settings(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.settings_path()).unwrap()).unwrap()
    }

    /// `http://<metrics.listen>`; panics when the listener is not enabled.
    pub fn metrics_base(&self) -> String {
        let listen = self.settings()["metrics"]["listen"]
            .as_str()
            .expect("metrics.listen is not set; use GatewayBuilder::metrics")
            .to_string();
        format!("http://{listen}")
    }

    /// GET on the operator listener, retried (bounded, 10 s) only while the
    /// listener does not accept connections yet.
    pub fn admin_get(&self, path: &str) -> Resp {
        let url = format!("{}{}", self.metrics_base(), path);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match http_client().get(&url).send() {
                Ok(r) => return Resp::from(r),
                Err(e) if e.is_connect() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("GET {url}: {e}"),
            }
        }
    }

    /// The `/metrics` exposition.
    pub fn scrape(&self) -> String {
        let r = self.admin_get("/metrics");
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }

    /// Starts `recordgate serve -u --config <same settings>` with the same
    /// environment: it waits on `server.upgrade_sock` for the listening
    /// sockets, which this process hands over on SIGQUIT. Its output goes to
    /// `<dir>/<name>.stdout.log` / `.stderr.log`.
    pub fn spawn_upgrade(&self, name: &str) -> Spawned {
        let out = self.dir.path().join(format!("{name}.stdout.log"));
        let err = self.dir.path().join(format!("{name}.stderr.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_recordgate"))
            .arg("serve")
            .arg("-u")
            .arg("--config")
            .arg(self.settings_path())
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn recordgate -u");
        Spawned { child, out, err }
    }
}

/// A further `recordgate` process (e.g. the upgrade), killed on drop.
pub struct Spawned {
    pub child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        signal_pid(self.pid(), sig);
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_child(&mut self.child, timeout)
    }

    pub fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// stderr then stdout.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
            + &std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Policy files, crash and restart (management_api.rs, roles_api.rs,
// live_policy.rs)
// ---------------------------------------------------------------------------

impl Gateway {
    /// The policy file the gateway was started with.
    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }

    /// The default audit log beside the policy file (`<policy>.audit.jsonl`).
    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("policy.audit.jsonl")
    }

    /// Kills the gateway with SIGKILL (no clean-up at all) and reaps it.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new process on the same directory, settings file and ports;
    /// a process still running is killed with SIGKILL first. Its output is
    /// appended to the same `stderr.log` / `stdout.log`.
    pub fn restart(&mut self) {
        self.kill_hard();
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join(name))
                .unwrap()
        };
        self.child = Command::new(env!("CARGO_BIN_EXE_recordgate"))
            .arg("serve")
            .arg("--config")
            .arg(self.settings_path())
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(open("stdout.log"))
            .stderr(open("stderr.log"))
            .spawn()
            .expect("respawn recordgate");
        self.wait_ready();
    }
}

/// The sum of the samples of `name` (in a `/metrics` text) whose labels
/// include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
