//! Helpers shared by the tests of the deployment files (tests/deploy_files.rs,
//! tests/deploy_fleet_files.rs, tests/deploy_fleet_tls.rs): loading YAML and
//! kustomize layers, `{env: VAR}` references, pod mounts, and the built
//! binary (`recordgate check`, `policy import`).

use std::collections::{BTreeMap, BTreeSet};
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

// ---------------------------------------------------------------------------
// Kustomize layers (deploy/kubernetes, its overlays)
// ---------------------------------------------------------------------------

pub const BASE: &str = "deploy/kubernetes";
pub const ETCD_OVERLAY: &str = "deploy/kubernetes-etcd";
pub const TLS_OVERLAY: &str = "deploy/kubernetes-etcd-tls";

/// Every object in `dir`, with its file.
pub fn objects_in(dir: &str) -> Vec<(PathBuf, Yaml)> {
    yaml_files(dir)
        .into_iter()
        .flat_map(|p| documents(&p).into_iter().map(move |d| (p.clone(), d)))
        .collect()
}

/// The one object of `kind` and `name` in `dir` (a resource or a patch).
pub fn find_object(dir: &str, kind: &str, name: &str) -> Yaml {
    let found: Vec<Yaml> = objects_in(dir)
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| {
            d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
        })
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name} in {dir}");
    found.into_iter().next().unwrap()
}

/// Keys of a Secret template.
pub fn secret_keys(dir: &str, name: &str) -> BTreeSet<String> {
    let secret = find_object(dir, "Secret", name);
    assert_eq!(
        secret["metadata"]["annotations"]["config.kubernetes.io/local-config"].as_str(),
        Some("true"),
        "Secret {name} is a template kustomize never applies"
    );
    secret["stringData"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| s(k).to_string())
        .collect()
}

/// Environment variables a container gets, each with the Secret it comes
/// from (`None`: a literal value or a ConfigMap).
pub fn container_env(c: &Yaml) -> BTreeMap<String, Option<String>> {
    let secret_dir = |name: &str| {
        if name == "recordgate-secrets" {
            BASE
        } else {
            ETCD_OVERLAY
        }
    };
    let mut out = BTreeMap::new();
    for e in c["envFrom"].as_sequence().into_iter().flatten() {
        if let Some(name) = e["secretRef"]["name"].as_str() {
            for k in secret_keys(secret_dir(name), name) {
                out.insert(k, Some(name.to_string()));
            }
        }
    }
    for e in c["env"].as_sequence().into_iter().flatten() {
        let r = &e["valueFrom"]["secretKeyRef"];
        let from = r["name"].as_str().map(|n| {
            assert!(
                secret_keys(secret_dir(n), n).contains(s(&r["key"])),
                "Secret {n} has no key {:?}",
                r["key"]
            );
            n.to_string()
        });
        out.insert(s(&e["name"]).to_string(), from);
    }
    out
}

/// `(mount path, volume)` of a container in a pod spec.
pub fn mounts(pod: &Yaml, c: &Yaml) -> Vec<(PathBuf, Yaml)> {
    let volumes = pod["volumes"].as_sequence().unwrap();
    c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            let v = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap_or_else(|| panic!("no volume {:?}", m["name"]));
            (PathBuf::from(s(&m["mountPath"])), v.clone())
        })
        .collect()
}

/// The volume source (`configMap`, `secret`) a path is read from, with the
/// source's name and the key the path is (`items` mapped back to keys).
/// Mounts of volumes the pod spec does not list (a StatefulSet's claims)
/// are not sources.
pub fn volume_key(pod: &Yaml, c: &Yaml, path: &str) -> (&'static str, String, String) {
    let volumes = pod["volumes"].as_sequence().unwrap();
    for m in c["volumeMounts"].as_sequence().unwrap() {
        let Some(v) = volumes.iter().find(|v| v["name"] == m["name"]) else {
            continue;
        };
        let Ok(rest) = Path::new(path).strip_prefix(s(&m["mountPath"])) else {
            continue;
        };
        let rest = rest.to_str().unwrap();
        for (kind, name_key) in [("configMap", "name"), ("secret", "secretName")] {
            let src = &v[kind];
            let Some(name) = src[name_key].as_str() else {
                continue;
            };
            let key = match src["items"].as_sequence() {
                Some(items) => items
                    .iter()
                    .find(|i| i["path"].as_str() == Some(rest))
                    .map(|i| s(&i["key"]).to_string())
                    .unwrap_or_else(|| panic!("{path}: no item of {name} has path {rest}")),
                None => rest.to_string(),
            };
            return (kind, name.to_string(), key);
        }
    }
    panic!("{path} is on no ConfigMap or Secret mount");
}

/// The ConfigMap (`configMap.name`) and key a path is read from.
pub fn configmap_key(pod: &Yaml, c: &Yaml, path: &str) -> (String, String) {
    let (kind, name, key) = volume_key(pod, c, path);
    assert_eq!(kind, "configMap", "{path} is not on a ConfigMap");
    (name, key)
}

/// The data of a ConfigMap as the last of `layers` renders it: each
/// layer's version over the previous ones (a patch: its keys win, `null`
/// deletes).
pub fn configmap_data_in(layers: &[&str], name: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut found = Vec::new();
    for dir in layers {
        found.extend(
            objects_in(dir).into_iter().map(|(_, d)| d).filter(|d| {
                d["kind"] == "ConfigMap" && d["metadata"]["name"].as_str() == Some(name)
            }),
        );
    }
    assert!(!found.is_empty(), "no ConfigMap {name} in {layers:?}");
    for cm in found {
        for (k, v) in cm["data"].as_mapping().unwrap() {
            match v.as_str() {
                Some(text) => out.insert(s(k).to_string(), text.to_string()),
                None => out.remove(s(k)),
            };
        }
    }
    out
}

/// `kubectl kustomize DIR`, parsed; `None` (with a note) when kubectl is
/// not on PATH. Panics when kubectl is there and the render fails.
pub fn kubectl_render(dir: &str) -> Option<Vec<Yaml>> {
    let ok = Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("NOTE: kubectl not on PATH; `kubectl kustomize {dir}` skipped");
        return None;
    }
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_path(dir))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("rendered.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    Some(documents(&file))
}

/// The one rendered object of `kind` and `name`.
pub fn rendered<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("rendered output has no {kind} {name}"))
}

/// Runs `policy import FILE --config SETTINGS` as `argv` spells it, with
/// the settings' etcd pointed at a closed loopback port (same scheme):
/// the binary must accept the arguments, read both files (and the etcd
/// TLS files the settings name), validate the policy (every `{env: VAR}`
/// set) and fail only at reaching etcd.
pub fn assert_import_reaches_etcd(argv: &[String], settings: &str, policy: &str, what: &str) {
    assert_eq!(&argv[..2], ["policy", "import"], "{what}: {argv:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut y: Yaml = serde_yaml::from_str(settings).unwrap();
    let closed = super::free_port();
    let scheme = if strings(&y["policy_store"]["etcd"]["endpoints"])[0].starts_with("https://") {
        "https"
    } else {
        "http"
    };
    y["policy_store"]["etcd"]["endpoints"] =
        Yaml::from(vec![format!("{scheme}://127.0.0.1:{closed}")]);
    y["policy_store"]["etcd"]["connect_timeout_ms"] = Yaml::from(300);
    y["policy_store"]["etcd"]["request_timeout_ms"] = Yaml::from(500);
    let mut vars = BTreeSet::new();
    env_refs(&y, &mut vars);
    env_refs(&serde_yaml::from_str(policy).unwrap(), &mut vars);
    std::fs::write(
        dir.path().join("settings.yaml"),
        serde_yaml::to_string(&y).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
    let mut args = argv.to_vec();
    let file = argv
        .iter()
        .skip(2)
        .position(|a| !a.starts_with('-'))
        .unwrap()
        + 2;
    args[file] = dir.path().join("policy.yaml").display().to_string();
    let ci = args
        .iter()
        .position(|a| a == "--config" || a == "-c")
        .unwrap();
    args[ci + 1] = dir.path().join("settings.yaml").display().to_string();
    let (ok, out) = run(&args, &vars);
    assert!(!ok, "{what}: imported into a closed port?\n{out}");
    assert!(
        !out.contains("Usage:")
            && !out.contains("policy.yaml:")
            && !out.contains("cannot read")
            && out.contains("connect"),
        "{what}: `recordgate {}` failed before reaching etcd:\n{out}",
        args.join(" ")
    );
}

/// The `etcdctl` steps of a shell script, one per line that runs it (its
/// arguments after `etcdctl`, shell words split on spaces).
pub fn etcdctl_steps(script: &str) -> Vec<Vec<String>> {
    script
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let at = l.find("etcdctl ")?;
            Some(
                l[at + "etcdctl ".len()..]
                    .split_whitespace()
                    .take_while(|w| !w.starts_with('>') && *w != ";" && *w != "2>&1")
                    .map(|w| w.trim_end_matches(';').to_string())
                    .collect(),
            )
        })
        .collect()
}

/// A command without the inherited ETCD*/ETCDCTL* variables (flags to
/// etcd and etcdctl), with `env`; returns (success, stdout + stderr).
pub fn run_clean(argv: &[&str], env: &BTreeMap<String, String>) -> (bool, String) {
    let mut cmd = Command::new(argv[0]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(&argv[1..])
        .envs(env)
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
