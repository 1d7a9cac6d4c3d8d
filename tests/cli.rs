//! The command line: `check` validates settings and policy, naming the file
//! and key of every problem; `--version`.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Checked {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Writes settings (with `settings_extra` appended) and a policy into a temp
/// dir and runs `recordgate check --config`.
fn check(policy: &str, settings_extra: &str) -> (tempfile::TempDir, Checked) {
    let dir = tempfile::tempdir().unwrap();
    let settings = format!(
        "listen: [\"127.0.0.1:18080\"]\nupstream:\n  servers: [\"127.0.0.1:18090\"]\npolicy: policy.yaml\n{settings_extra}"
    );
    run_check(dir, &settings, policy)
}

/// Writes `settings.yaml` and `policy.yaml` into `dir` and runs
/// `recordgate check --config` on them.
fn run_check(dir: tempfile::TempDir, settings: &str, policy: &str) -> (tempfile::TempDir, Checked) {
    std::fs::write(dir.path().join("settings.yaml"), settings).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
    let out = run_cli(&[
        "check",
        "--config",
        dir.path().join("settings.yaml").to_str().unwrap(),
    ]);
    let c = Checked {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (dir, c)
}

fn policy_file(dir: &Path) -> String {
    dir.join("policy.yaml").display().to_string()
}

fn settings_file(dir: &Path) -> String {
    dir.join("settings.yaml").display().to_string()
}

/// Asserts a failing check whose error output names `file`, `key` and `text`
/// on one line.
fn assert_fails(c: &Checked, file: &str, key: &str, text: &str) {
    assert!(
        !c.ok,
        "check should fail; stdout: {}\nstderr: {}",
        c.stdout, c.stderr
    );
    let line = c
        .stderr
        .lines()
        .find(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no error mentions {text:?}:\n{}", c.stderr));
    assert!(
        line.contains(file),
        "{line:?} does not name the file {file}"
    );
    assert!(line.contains(key), "{line:?} does not name the key {key}");
}

#[test]
fn check_passes_on_the_demo_config() {
    let out = run_cli(&[
        "check",
        "--config",
        repo_path("config/demo.yaml").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_passes_on_the_test_policy() {
    let (_d, c) = check(&default_policy(), "");
    assert!(c.ok, "{}\n{}", c.stdout, c.stderr);
}

#[test]
fn check_rejects_an_unknown_feature() {
    let policy = policy_with_clients(
        "clients:\n  a:\n    secret: s\n    features: [direct_access, ninja_superuser]\n",
    );
    let (d, c) = check(&policy, "");
    assert_fails(
        &c,
        &policy_file(d.path()),
        "clients.a.features[1]",
        "ninja_superuser is not a valid feature name",
    );
}

#[test]
fn check_rejects_an_invalid_cidr() {
    let policy = policy_with_clients(
        "clients:\n  a:\n    secret: s\n    whitelist: [\"10.0.0.0/8\", \"1.2.3.4/33\"]\n",
    );
    let (d, c) = check(&policy, "");
    assert_fails(
        &c,
        &policy_file(d.path()),
        "clients.a.whitelist[1]",
        "invalid cidr address: 1.2.3.4/33",
    );
    let policy =
        policy_with_clients("clients:\n  a:\n    secret: s\n    whitelist: [\"not-a-cidr\"]\n");
    let (d, c) = check(&policy, "");
    assert_fails(
        &c,
        &policy_file(d.path()),
        "clients.a.whitelist[0]",
        "invalid cidr address",
    );
}

#[test]
fn check_rejects_a_path_that_names_no_attribute() {
    let policy = policy_with_clients(
        "clients:\n  a:\n    secret: s\n    access_schemas:\n      user:\n        read: [givenName, primaryAddress.nosuch]\n",
    );
    let (d, c) = check(&policy, "");
    assert_fails(
        &c,
        &policy_file(d.path()),
        "clients.a.access_schemas.user.read",
        "primaryAddress.nosuch",
    );
    let policy = policy_with_clients(
        "clients:\n  a:\n    secret: s\n    access_schemas:\n      user:\n        write: [notAnAttribute]\n",
    );
    let (d, c) = check(&policy, "");
    assert_fails(
        &c,
        &policy_file(d.path()),
        "clients.a.access_schemas.user.write",
        "notAnAttribute",
    );
}

#[test]
fn check_rejects_a_schema_for_an_undefined_entity_type() {
    let policy = policy_with_clients(
        "clients:\n  a:\n    secret: s\n    access_schemas:\n      widget:\n        read: [x]\n",
    );
    let (d, c) = check(&policy, "");
    assert_fails(
        &c,
        &policy_file(d.path()),
        "clients.a.access_schemas.widget",
        "widget",
    );
}

#[test]
fn check_rejects_an_unknown_policy_key() {
    let policy = policy_with_clients("clients:\n  a:\n    secret: s\n    feautres: [owner]\n");
    let (d, c) = check(&policy, "");
    assert_fails(&c, &policy_file(d.path()), "clients.a", "feautres");
    let (d, c) = check(&format!("{}\nversion: 2\n", default_policy()), "");
    assert_fails(&c, &policy_file(d.path()), "version", "version");
}

#[test]

fn check_rejects_a_duplicate_client_id() {
    let policy = policy_with_clients(
        "clients:\n  a:\n    secret: first\n    features: [direct_read_access]\n  a:\n    secret: second\n    features: [owner]\n",
    );
    let (d, c) = check(&policy, "");
    assert!(!c.ok, "duplicate client accepted: {}", c.stdout);
    assert!(c.stderr.contains(&policy_file(d.path())), "{}", c.stderr);
    assert!(
        c.stderr.contains("clients") && c.stderr.contains('a'),
        "{}",
        c.stderr
    );
    assert!(
        c.stderr.to_lowercase().contains("duplicate"),
        "{}",
        c.stderr
    );
}

#[test]
fn check_rejects_client_ids_that_basic_auth_cannot_carry() {
    for id in ["\"part:ner\"", "\"tab\\tid\""] {
        let policy = policy_with_clients(&format!(
            "clients:\n  {id}:\n    secret: s\n    features: [direct_read_access]\n"
        ));
        let (d, c) = check(&policy, "");
        assert!(!c.ok, "{id} accepted: {}", c.stdout);
        assert!(c.stderr.contains(&policy_file(d.path())), "{}", c.stderr);
        assert!(c.stderr.contains("control characters"), "{}", c.stderr);
    }
}

#[test]
fn check_rejects_an_unknown_settings_key() {
    let (d, c) = check(&default_policy(), "listn: [\"127.0.0.1:1\"]\n");
    assert_fails(&c, &settings_file(d.path()), "listn", "unknown field");
    let (d, c) = check(&default_policy(), "limits:\n  max_request_body: 10\n");
    assert_fails(&c, &settings_file(d.path()), "limits", "max_request_body");
}

#[test]
fn check_rejects_invalid_settings_values() {
    let (d, c) = check(&default_policy(), "trusted_proxies: [\"10.0.0.0/40\"]\n");
    assert_fails(
        &c,
        &settings_file(d.path()),
        "trusted_proxies[0]",
        "invalid cidr address",
    );
    let (d, c) = check(&default_policy(), "limits:\n  max_json_depth: 0\n");
    assert_fails(
        &c,
        &settings_file(d.path()),
        "limits.max_json_depth",
        "between",
    );
    let (d, c) = check(
        &default_policy(),
        "limits:\n  stream_responses_over_bytes: 4096\n  max_streamed_response_bytes: 4096\n",
    );
    assert_fails(
        &c,
        &settings_file(d.path()),
        "limits.max_streamed_response_bytes",
        "stream_responses_over_bytes (4096)",
    );
    // Streaming out of reach (the buffered limit is lower): no conflict.
    let (_d, c) = check(
        &default_policy(),
        "limits:\n  max_response_body_bytes: 256\n  max_streamed_response_bytes: 100\n",
    );
    assert!(c.ok, "{}", c.stderr);
}

#[test]
fn check_reports_every_error_at_once() {
    let policy = policy_with_clients(
        "clients:\n  a:\n    secret: s\n    features: [bogus_feature]\n  b:\n    secret: s\n    whitelist: [\"300.1.1.1/8\"]\n",
    );
    let (_d, c) = check(&policy, "");
    assert!(!c.ok);
    assert!(
        c.stderr
            .contains("bogus_feature is not a valid feature name"),
        "{}",
        c.stderr
    );
    assert!(c.stderr.contains("invalid cidr address"), "{}", c.stderr);
}

#[test]
fn check_reports_a_missing_policy_file() {
    let dir = tempfile::tempdir().unwrap();
    let settings = "listen: [\"127.0.0.1:1\"]\nupstream:\n  servers: [\"127.0.0.1:2\"]\npolicy: missing.yaml\n";
    std::fs::write(dir.path().join("s.yaml"), settings).unwrap();
    let out = run_cli(&[
        "check",
        "--config",
        dir.path().join("s.yaml").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));
}

#[test]
fn serve_refuses_to_start_on_a_bad_policy() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let settings = format!(
        "listen: [\"127.0.0.1:{port}\"]\nupstream:\n  servers: [\"127.0.0.1:2\"]\npolicy: policy.yaml\nserver:\n  pid_file: {0}/pid\n  upgrade_sock: {0}/sock\n",
        dir.path().display()
    );
    std::fs::write(dir.path().join("s.yaml"), settings).unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        "clients:\n  a:\n    secret: s\n    features: [nope]\n",
    )
    .unwrap();
    let err_path = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_recordgate"))
        .args([
            "serve",
            "--config",
            dir.path().join("s.yaml").to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = status.expect("serve kept running on an invalid policy");
    assert!(!status.success());
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(
        stderr.contains("nope is not a valid feature name"),
        "{stderr}"
    );
}

#[test]
fn version_prints_the_version() {
    let out = run_cli(&["--version"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        format!("recordgate {}", env!("CARGO_PKG_VERSION"))
    );
}

// ---------------------------------------------------------------------------
// What `serve` would refuse at start, found by `check`
// ---------------------------------------------------------------------------

/// Runs `check` on complete settings (`{dir}` replaced by the temp dir) with
/// the default policy.
fn check_settings(settings: &str) -> (tempfile::TempDir, Checked) {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings.replace("{dir}", &dir.path().display().to_string());
    run_check(dir, &settings, &default_policy())
}

#[test]
fn check_rejects_an_unknown_route_feature() {
    let (d, c) = check(
        &default_policy(),
        "routes:\n  - path: /entity.find\n    access: read\n    response_records: results\n    features: [direct_read_access, ninja_superuser]\n",
    );
    assert_fails(
        &c,
        &settings_file(d.path()),
        "routes[0].features",
        "ninja_superuser",
    );
}

#[test]
fn check_rejects_an_upstream_name_that_does_not_resolve() {
    // `.invalid` never resolves (RFC 6761).
    let (d, c) = check_settings(
        "listen: [\"127.0.0.1:0\"]\nupstream:\n  servers: [\"127.0.0.1:18090\", \"no-such-upstream.invalid:443\"]\npolicy: policy.yaml\n",
    );
    assert_fails(
        &c,
        &settings_file(d.path()),
        "upstream.servers[1]",
        "cannot resolve no-such-upstream.invalid:443",
    );
}

#[test]
fn check_rejects_a_ca_file_that_cannot_be_read_or_parsed() {
    let base = "listen: [\"127.0.0.1:0\"]\npolicy: policy.yaml\nupstream:\n  servers: [\"127.0.0.1:18090\"]\n  tls: true\n";
    let (d, c) = check_settings(&format!("{base}  ca_file: missing-ca.pem\n"));
    assert_fails(
        &c,
        &settings_file(d.path()),
        "upstream.ca_file",
        "cannot read",
    );
    assert!(c.stderr.contains("missing-ca.pem"), "{}", c.stderr);

    let (d, c) = check_settings(&format!("{base}  ca_file: {{dir}}/settings.yaml\n"));
    assert_fails(
        &c,
        &settings_file(d.path()),
        "upstream.ca_file",
        "PEM certificate bundle",
    );
    // A CA file without TLS is a mistake, not a no-op.
    let (d, c) = check_settings(
        "listen: [\"127.0.0.1:0\"]\npolicy: policy.yaml\nupstream:\n  servers: [\"127.0.0.1:18090\"]\n  ca_file: ca.pem\n",
    );
    assert_fails(
        &c,
        &settings_file(d.path()),
        "upstream.ca_file",
        "upstream.tls is false",
    );
}

#[test]
fn check_rejects_a_resolve_interval_out_of_range() {
    for bad in ["0", "86401"] {
        let (d, c) = check_settings(&format!(
            "listen: [\"127.0.0.1:0\"]\npolicy: policy.yaml\nupstream:\n  servers: [\"127.0.0.1:18090\"]\n  resolve_interval_secs: {bad}\n"
        ));
        assert_fails(
            &c,
            &settings_file(d.path()),
            "upstream.resolve_interval_secs",
            "must be between 1 and 86400",
        );
    }
    let (_d, c) = check_settings(
        "listen: [\"127.0.0.1:0\"]\npolicy: policy.yaml\nupstream:\n  servers: [\"127.0.0.1:18090\"]\n  resolve_interval_secs: 5\n",
    );
    assert!(c.ok, "{}", c.stderr);
}

#[test]
fn check_rejects_an_empty_sni() {
    // Pingora's connector verifies nothing when the SNI is empty.
    let (d, c) = check_settings(
        "listen: [\"127.0.0.1:0\"]\npolicy: policy.yaml\nupstream:\n  servers: [\"127.0.0.1:18090\"]\n  tls: true\n  sni: \"\"\n",
    );
    assert_fails(
        &c,
        &settings_file(d.path()),
        "upstream.sni",
        "must not be empty",
    );
}

#[test]
fn check_rejects_listens_that_cannot_be_bound_together() {
    let port = free_port();
    // The same address twice, and the operator listener on a gateway port.
    let (d, c) = check_settings(&format!(
        "listen: [\"127.0.0.1:{port}\", \"127.0.0.1:{port}\"]\npolicy: policy.yaml\nupstream:\n  servers: [\"127.0.0.1:18090\"]\nmetrics:\n  listen: \"127.0.0.1:{port}\"\n"
    ));
    assert_fails(
        &c,
        &settings_file(d.path()),
        "listen[1]",
        &format!("listen[1]: 127.0.0.1:{port} cannot be bound together with listen[0]"),
    );
    assert_fails(
        &c,
        &settings_file(d.path()),
        "metrics.listen",
        &format!("metrics.listen: 127.0.0.1:{port} cannot be bound together with listen[0]"),
    );
    // Nothing stays bound after the check.
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();

    // 0.0.0.0:P and [::]:P conflict where IPv6 sockets are dual-stack.
    let dual_stack = std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only")
        .is_ok_and(|v| v.trim() == "0")
        && std::net::TcpListener::bind("[::]:0").is_ok();
    if dual_stack {
        let port = free_port();
        let (d, c) = check_settings(&format!(
            "listen: [\"0.0.0.0:{port}\", \"[::]:{port}\"]\npolicy: policy.yaml\nupstream:\n  servers: [\"127.0.0.1:18090\"]\n"
        ));
        assert_fails(
            &c,
            &settings_file(d.path()),
            "listen[1]",
            "cannot be bound together with listen[0]",
        );
    } else {
        println!("IPv6 sockets are not dual-stack here: the 0.0.0.0 + [::] case is not checked");
    }
}

#[test]
fn check_warns_but_passes_when_a_port_is_taken_by_another_process() {
    // As when checking the settings of the gateway that runs on them.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (_d, c) = check_settings(&format!(
        "listen: [\"127.0.0.1:{port}\"]\npolicy: policy.yaml\nupstream:\n  servers: [\"127.0.0.1:18090\"]\n"
    ));
    assert!(c.ok, "{}", c.stderr);
    assert!(
        c.stderr.contains("warning:") && c.stderr.contains("listen[0]"),
        "{}",
        c.stderr
    );
}

// ---------------------------------------------------------------------------
// `health`
// ---------------------------------------------------------------------------

#[test]
fn health_exits_0_when_ready_and_non_zero_otherwise() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .metrics(serde_json::json!({}))
        .start();
    assert_eq!(gw.admin_get("/readyz").status, 200);
    let url = format!("{}/readyz", gw.metrics_base());
    let out = run_cli(&["health", "--url", &url]);
    assert!(out.status.success(), "{:?}", out);
    // The same URL from the settings' `metrics.listen`.
    let settings = gw.dir.path().join("settings.yaml");
    let out = run_cli(&["health", "--config", settings.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", out);
    // Not ready: a 404 path, then nobody listening.
    let out = run_cli(&["health", "--url", &format!("{}/nope", gw.metrics_base())]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    let dead = format!("http://127.0.0.1:{}/readyz", free_port());
    let out = run_cli(&["health", "--url", &dead]);
    assert!(!out.status.success());
}

#[test]
fn health_gives_up_after_its_time_out() {
    // Accepts, never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/readyz", silent.local_addr().unwrap());
    let started = Instant::now();
    let out = run_cli(&["health", "--url", &url, "--timeout-ms", "300"]);
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not ready"),
        "{:?}",
        out
    );
    drop(silent);
}
