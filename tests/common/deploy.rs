//! Helpers shared by the tests of the deployment files (tests/deploy_files.rs,
//! tests/deploy_fleet_files.rs): loading YAML, `{env: VAR}` references, and
//! `recordgate check` run with the built binary.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_yaml::Value as Yaml;

use super::repo_path;

pub fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo_path(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no YAML in {dir}");
    v
}

/// Every document of a (possibly multi-document) YAML file.
pub fn documents(path: &Path) -> Vec<Yaml> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Yaml::deserialize(doc)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        if !v.is_null() {
            out.push(v);
        }
    }
    out
}

pub fn s(v: &Yaml) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// Names of `{env: VAR}` references anywhere in a YAML tree.
pub fn env_refs(v: &Yaml, out: &mut BTreeSet<String>) {
    match v {
        Yaml::Mapping(m) => {
            if m.len() == 1 {
                if let Some(Yaml::String(var)) = m.get("env") {
                    out.insert(var.clone());
                }
            }
            m.values().for_each(|c| env_refs(c, out));
        }
        Yaml::Sequence(a) => a.iter().for_each(|c| env_refs(c, out)),
        _ => {}
    }
}

/// Runs `recordgate check --config <settings>` with `env`; asserts success.
pub fn assert_check_passes(settings: &Path, env: &BTreeSet<String>, what: &str) {
    // `check` resolves the upstream names, as `serve` does; the examples'
    // `*.example.internal` names resolve only where they are deployed, so
    // the copy checked here names `localhost` on the same port (TLS and SNI
    // settings unchanged). Every other key is checked as written.
    let mut y: Yaml = serde_yaml::from_str(&std::fs::read_to_string(settings).unwrap()).unwrap();
    if let Some(servers) = y["upstream"]["servers"].as_sequence_mut() {
        for server in servers.iter_mut() {
            let port = s(server).rsplit_once(':').unwrap().1.to_string();
            *server = Yaml::from(format!("localhost:{port}"));
        }
    }
    let checked = settings.with_file_name("settings.checked.yaml");
    std::fs::write(&checked, serde_yaml::to_string(&y).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_recordgate"))
        .arg("check")
        .arg("--config")
        .arg(&checked)
        .envs(
            env.iter()
                .map(|v| (v.as_str(), "placeholder-value-for-check")),
        )
        .stdin(Stdio::null())
        .output()
        .expect("run recordgate check");
    assert!(
        out.status.success(),
        "{what}: recordgate check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of `--config` / `-c` in an argv.
pub fn config_arg(argv: &[String]) -> String {
    let i = argv
        .iter()
        .position(|a| a == "--config" || a == "-c")
        .unwrap_or_else(|| panic!("no --config in {argv:?}"));
    argv[i + 1].clone()
}

/// A YAML sequence of strings (empty when absent).
pub fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|a| a.iter().map(|x| s(x).to_string()).collect())
        .unwrap_or_default()
}

/// The image's ENTRYPOINT (exec form), for containers that set only args.
pub fn entrypoint() -> Vec<String> {
    let text = std::fs::read_to_string(repo_path("deploy/Dockerfile")).unwrap();
    let line = text
        .lines()
        .rfind(|l| l.starts_with("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    serde_json::from_str(line.trim_start_matches("ENTRYPOINT ")).unwrap()
}

/// Runs the real binary; returns (success, stdout + stderr).
pub fn run(args: &[String], env: &BTreeSet<String>) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_recordgate"))
        .args(args)
        .envs(
            env.iter()
                .map(|v| (v.as_str(), "placeholder-value-for-check")),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
