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
