//! The deployment files under deploy/ parse, and agree with the binary: its
//! real CLI and listeners, the ConfigMap's settings and policy (validated by
//! `recordgate check`), probes, ports, the systemd unit, the Dockerfile, the
//! Prometheus configuration and rules, and the Grafana dashboard.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::deploy::*;
use common::*;
use serde_yaml::Value as Yaml;

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Every Kubernetes object in deploy/kubernetes, with its file.
fn kube_objects() -> Vec<(PathBuf, Yaml)> {
    yaml_files("deploy/kubernetes")
        .into_iter()
        .flat_map(|p| documents(&p).into_iter().map(move |d| (p.clone(), d)))
        .collect()
}

fn object(kind: &str, name: Option<&str>) -> Yaml {
    let found: Vec<Yaml> = kube_objects()
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"].as_str() == Some(kind))
        .filter(|d| name.is_none() || d["metadata"]["name"].as_str() == name)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name:?} expected");
    found.into_iter().next().unwrap()
}

fn deployment() -> Yaml {
    object("Deployment", Some("recordgate"))
}

fn container() -> Yaml {
    let d = deployment();
    let cs = d["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(cs.len(), 1, "one container");
    cs[0].clone()
}

fn configmap() -> Yaml {
    object("ConfigMap", None)
}

/// The ConfigMap's `settings.yaml`, parsed.
fn cm_settings() -> Yaml {
    serde_yaml::from_str(s(&configmap()["data"]["settings.yaml"])).expect("settings.yaml parses")
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

#[test]
fn every_yaml_and_the_dashboard_parse() {
    for dir in [
        "deploy/kubernetes",
        "deploy/prometheus",
        "deploy/systemd",
        "deploy/docker",
    ] {
        for p in yaml_files(dir) {
            let docs = documents(&p);
            assert!(!docs.is_empty(), "{} is empty", p.display());
            if dir == "deploy/kubernetes" {
                for d in &docs {
                    assert!(d["apiVersion"].is_string(), "{}: apiVersion", p.display());
                    assert!(d["kind"].is_string(), "{}: kind", p.display());
                    if d["kind"] != "Kustomization" {
                        assert!(
                            d["metadata"]["name"].is_string(),
                            "{}: metadata.name",
                            p.display()
                        );
                    }
                }
            }
        }
    }
    let kinds: BTreeSet<String> = kube_objects()
        .iter()
        .map(|(_, d)| s(&d["kind"]).to_string())
        .collect();
    for k in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    ] {
        assert!(kinds.contains(k), "no {k} in deploy/kubernetes: {kinds:?}");
    }
    let d: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_path("deploy/grafana/recordgate-dashboard.json")).unwrap(),
    )
    .expect("dashboard JSON parses");
    assert!(d["title"].is_string() && d["panels"].is_array());
}

#[test]
fn kustomization_lists_existing_files_and_the_deployment_image() {
    let k = object("Kustomization", None);
    let listed: BTreeSet<String> = k["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| s(r).to_string())
        .collect();
    for r in &listed {
        assert!(
            repo_path("deploy/kubernetes").join(r).is_file(),
            "kustomization lists missing {r}"
        );
    }
    for p in yaml_files("deploy/kubernetes") {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            name == "kustomization.yaml" || listed.contains(&name),
            "{name} is not in kustomization.yaml resources"
        );
    }
    let image = s(&container()["image"]).to_string();
    let image_name = image.rsplit_once(':').map(|(n, _)| n).unwrap_or(&image);
    let images = k["images"].as_sequence().expect("images");
    assert!(
        images.iter().any(|i| s(&i["name"]) == image_name),
        "kustomization images do not name {image_name}"
    );
}

// ---------------------------------------------------------------------------
// Deployment against the binary and the ConfigMap
// ---------------------------------------------------------------------------

/// The Dockerfile's instructions `(KEYWORD, rest)` (line continuations joined).
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_path("deploy/Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') && cur.is_empty() {
            continue;
        }
        if let Some(x) = t.strip_suffix('\\') {
            cur.push_str(x);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        if !cur.trim().is_empty() {
            let (k, rest) = cur.trim().split_once(' ').unwrap_or((cur.trim(), ""));
            out.push((k.to_ascii_uppercase(), rest.trim().to_string()));
        }
        cur.clear();
    }
    out
}

/// Exec-form (`["a", "b"]`) of the last `kw` instruction.
fn dockerfile_exec(kw: &str) -> Vec<String> {
    let (_, rest) = dockerfile()
        .into_iter()
        .rfind(|(k, _)| k == kw)
        .unwrap_or_else(|| panic!("no {kw} in the Dockerfile"));
    serde_json::from_str(&rest).unwrap_or_else(|e| panic!("{kw} is not exec form ({e}): {rest}"))
}

/// The argv the container runs: command (or ENTRYPOINT) + args (or CMD).
fn container_argv() -> Vec<String> {
    let c = container();
    let strings = |v: &Yaml| -> Option<Vec<String>> {
        v.as_sequence()
            .map(|a| a.iter().map(|x| s(x).to_string()).collect())
    };
    let mut argv = strings(&c["command"]).unwrap_or_else(|| dockerfile_exec("ENTRYPOINT"));
    argv.extend(strings(&c["args"]).unwrap_or_else(|| dockerfile_exec("CMD")));
    argv
}

#[test]
fn deployment_runs_the_real_cli_on_the_mounted_configmap() {
    let argv = container_argv();
    assert!(
        Path::new(&argv[0])
            .file_name()
            .is_some_and(|n| n == "recordgate"),
        "the container runs {argv:?}"
    );
    assert_eq!(argv[1], "serve", "{argv:?}");
    let config = config_arg(&argv);
    let config = Path::new(&config);

    // The real binary accepts exactly these flags: run them with the config
    // path moved to a directory that does not exist, so it stops at reading
    // the settings (not at argument parsing).
    let missing = tempfile::tempdir()
        .unwrap()
        .path()
        .join("missing/settings.yaml");
    let mut args: Vec<String> = argv[1..].to_vec();
    let ci = args
        .iter()
        .position(|a| a == "--config" || a == "-c")
        .unwrap();
    args[ci + 1] = missing.display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_recordgate"))
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        !err.contains("Usage:") && err.contains("settings.yaml"),
        "the binary rejected the Deployment's arguments {args:?}:\n{err}"
    );

    // --config points into the ConfigMap volume, at one of its keys.
    let c = container();
    let d = deployment();
    let cm = configmap();
    let cm_name = s(&cm["metadata"]["name"]);
    let volumes = d["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap();
    let cm_volume = volumes
        .iter()
        .find(|v| v["configMap"]["name"].as_str() == Some(cm_name))
        .unwrap_or_else(|| panic!("no volume from ConfigMap {cm_name}"));
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == cm_volume["name"])
        .expect("the ConfigMap volume is mounted");
    assert!(
        mount["subPath"].is_null(),
        "a subPath mount never sees ConfigMap updates (live policy reload)"
    );
    let mount_path = Path::new(s(&mount["mountPath"]));
    let key = config
        .strip_prefix(mount_path)
        .unwrap_or_else(|_| {
            panic!(
                "--config {} is not under the ConfigMap mount {}",
                config.display(),
                mount_path.display()
            )
        })
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cm["data"][key.as_str()].is_string(),
        "ConfigMap has no key {key}"
    );
    // The policy path (relative to the settings file) is in the ConfigMap too.
    let settings = cm_settings();
    let policy = s(&settings["policy"]);
    let policy_abs = if Path::new(policy).is_absolute() {
        PathBuf::from(policy)
    } else {
        config.parent().unwrap().join(policy)
    };
    let pkey = policy_abs
        .strip_prefix(mount_path)
        .expect("the policy is in the ConfigMap mount")
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cm["data"][pkey.as_str()].is_string(),
        "ConfigMap has no key {pkey}"
    );

    // The Dockerfile's default command is the same.
    let mut docker = dockerfile_exec("ENTRYPOINT");
    docker.extend(dockerfile_exec("CMD"));
    assert_eq!(docker, argv, "Dockerfile ENTRYPOINT+CMD vs the Deployment");
}

#[test]
fn configmap_settings_and_policy_pass_recordgate_check() {
    let cm = configmap();
    let dir = tempfile::tempdir().unwrap();
    let data = cm["data"].as_mapping().unwrap();
    let mut vars = BTreeSet::new();
    for (k, v) in data {
        std::fs::write(dir.path().join(s(k)), s(v)).unwrap();
        let parsed: Yaml = serde_yaml::from_str(s(v)).unwrap();
        env_refs(&parsed, &mut vars);
    }
    assert!(!vars.is_empty(), "secrets are referenced as {{env: VAR}}");
    assert_check_passes(&dir.path().join("settings.yaml"), &vars, "ConfigMap");

    // Every variable is provided by the Secret, which the container loads.
    let secret = object("Secret", None);
    let keys: BTreeSet<String> = secret["stringData"]
        .as_mapping()
        .or(secret["data"].as_mapping())
        .unwrap()
        .keys()
        .map(|k| s(k).to_string())
        .collect();
    for v in &vars {
        assert!(keys.contains(v), "{v} is referenced but not in the Secret");
    }
    let secret_name = s(&secret["metadata"]["name"]);
    let env_from = container()["envFrom"].clone();
    assert!(
        env_from
            .as_sequence()
            .unwrap()
            .iter()
            .any(|e| e["secretRef"]["name"].as_str() == Some(secret_name)),
        "the container does not load Secret {secret_name}"
    );
    // Nothing secret-looking in the ConfigMap itself.
    for (k, v) in data {
        let text = s(v);
        for sk in &keys {
            let val = s(&secret["stringData"][sk.as_str()]);
            assert!(!text.contains(val), "ConfigMap {} holds {sk}'s value", s(k));
        }
    }
}

#[test]
fn container_ports_probes_and_service_match_the_listeners() {
    let settings = cm_settings();
    let listen: BTreeSet<u16> = settings["listen"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| port_of(s(a)))
        .collect();
    let metrics = port_of(s(&settings["metrics"]["listen"]));
    for a in settings["listen"].as_sequence().unwrap() {
        assert!(
            !s(a).starts_with("127.") && !s(a).starts_with("[::1]"),
            "a pod must listen beyond loopback: {a:?}"
        );
    }
    assert!(!s(&settings["metrics"]["listen"]).starts_with("127."));

    let c = container();
    let ports: BTreeMap<String, u16> = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                s(&p["name"]).to_string(),
                p["containerPort"].as_u64().unwrap() as u16,
            )
        })
        .collect();
    let declared: BTreeSet<u16> = ports.values().copied().collect();
    let mut expected = listen.clone();
    expected.insert(metrics);
    assert_eq!(
        declared, expected,
        "containerPorts vs listen + metrics.listen"
    );
    assert_eq!(ports.get("metrics"), Some(&metrics), "{ports:?}");
    assert!(listen.contains(ports.get("http").expect("an http port")));

    // Probes: /readyz and /healthz on the metrics port.
    let resolve = |p: &Yaml| -> u16 {
        match p {
            Yaml::Number(n) => n.as_u64().unwrap() as u16,
            Yaml::String(name) => *ports.get(name).unwrap_or_else(|| panic!("no port {name}")),
            other => panic!("bad probe port {other:?}"),
        }
    };
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        let g = &c[probe]["httpGet"];
        if probe == "startupProbe" && c[probe].is_null() {
            continue;
        }
        assert_eq!(g["path"].as_str(), Some(path), "{probe}");
        assert_eq!(resolve(&g["port"]), metrics, "{probe} port");
    }

    // Scrape annotations.
    let d = deployment();
    let ann = &d["spec"]["template"]["metadata"]["annotations"];
    if !ann.is_null() {
        if let Some(p) = ann["prometheus.io/port"].as_str() {
            assert_eq!(p.parse::<u16>().unwrap(), metrics);
        }
        if let Some(p) = ann["prometheus.io/path"].as_str() {
            assert_eq!(p, "/metrics");
        }
    }

    // Services select the pods and target declared ports.
    let pod_labels = d["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap()
        .clone();
    for (_, svc) in kube_objects()
        .into_iter()
        .filter(|(_, o)| o["kind"] == "Service")
    {
        for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
            assert_eq!(pod_labels.get(k), Some(v), "Service selector {k:?}");
        }
        for p in svc["spec"]["ports"].as_sequence().unwrap() {
            let t = resolve(&p["targetPort"]);
            assert!(declared.contains(&t), "Service targets port {t}");
        }
    }
    // PDB selects the pods; the HPA scales this Deployment.
    let pdb = object("PodDisruptionBudget", None);
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(pod_labels.get(k), Some(v), "PDB selector {k:?}");
    }
    let hpa = object("HorizontalPodAutoscaler", None);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], d["metadata"]["name"]);
}

#[test]
fn deployment_security_writable_paths_and_termination_budget() {
    let d = deployment();
    let c = container();
    let pod = &d["spec"]["template"]["spec"];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert!(c["resources"]["requests"].is_mapping() && c["resources"]["limits"].is_mapping());

    // With a read-only root, Pingora's pid file / upgrade socket and the
    // audit log must be under writable (non-ConfigMap) mounts.
    let settings = cm_settings();
    let volumes = pod["volumes"].as_sequence().unwrap();
    let writable: Vec<String> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|m| m["readOnly"].as_bool() != Some(true))
        .filter(|m| {
            volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .is_some_and(|v| v["configMap"].is_null() && v["secret"].is_null())
        })
        .map(|m| s(&m["mountPath"]).to_string())
        .collect();
    for key in [
        settings["server"]["pid_file"].as_str(),
        settings["server"]["upgrade_sock"].as_str(),
        settings["audit_log"].as_str(),
    ] {
        let p = key.expect("pid_file, upgrade_sock and audit_log are set explicitly");
        assert!(
            writable.iter().any(|w| Path::new(p).starts_with(w)),
            "{p} is not on a writable mount ({writable:?})"
        );
    }

    // terminationGracePeriodSeconds covers preStop + grace + shutdown timeout.
    let pre_stop: u64 = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .and_then(|cmd| cmd.last())
        .and_then(|x| x.as_str())
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let grace = settings["server"]["grace_period_secs"]
        .as_u64()
        .unwrap_or(5);
    let shutdown = settings["server"]["graceful_shutdown_timeout_secs"]
        .as_u64()
        .unwrap_or(5);
    let tgps = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    assert!(
        tgps > pre_stop + grace + shutdown,
        "terminationGracePeriodSeconds {tgps} <= preStop {pre_stop} + grace {grace} + shutdown {shutdown}"
    );
}

// ---------------------------------------------------------------------------
// Dockerfile, systemd, docker demo settings
// ---------------------------------------------------------------------------

#[test]
fn dockerfile_exposes_the_configured_ports_and_runs_as_non_root() {
    let instr = dockerfile();
    let froms = instr.iter().filter(|(k, _)| k == "FROM").count();
    assert!(froms >= 2, "multi-stage build expected");
    let exposed: BTreeSet<u16> = instr
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, r)| {
            r.split_whitespace()
                .map(|p| p.split('/').next().unwrap().parse::<u16>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let settings = cm_settings();
    let mut ports: BTreeSet<u16> = settings["listen"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| port_of(s(a)))
        .collect();
    ports.insert(port_of(s(&settings["metrics"]["listen"])));
    assert_eq!(exposed, ports, "EXPOSE vs the ConfigMap's listeners");
    // The docker demo settings use the same ports.
    let demo: Yaml = documents(&repo_path("deploy/docker/demo-settings.yaml"))
        .pop()
        .unwrap();
    let mut demo_ports: BTreeSet<u16> = demo["listen"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| port_of(s(a)))
        .collect();
    demo_ports.insert(port_of(s(&demo["metrics"]["listen"])));
    assert_eq!(
        exposed, demo_ports,
        "EXPOSE vs deploy/docker/demo-settings.yaml"
    );

    // The health check is the binary's own probe of the operator
    // listener's /readyz (no HTTP client in the image), on the port the
    // ConfigMap's `metrics.listen` uses.
    let health = instr
        .iter()
        .rfind(|(k, _)| k == "HEALTHCHECK")
        .map(|(_, r)| r.clone())
        .expect("HEALTHCHECK");
    let (options, cmd) = health
        .split_once("CMD ")
        .expect("HEALTHCHECK ... CMD [...]");
    assert!(options.contains("--timeout="), "{health}");
    let argv: Vec<String> = serde_json::from_str(cmd.trim())
        .unwrap_or_else(|e| panic!("HEALTHCHECK CMD is not exec form ({e}): {cmd}"));
    let metrics_port = port_of(s(&settings["metrics"]["listen"]));
    assert_eq!(
        argv,
        [
            "recordgate".to_string(),
            "health".into(),
            "--url".into(),
            format!("http://127.0.0.1:{metrics_port}/readyz"),
        ],
        "{health}"
    );

    let user = instr
        .iter()
        .rfind(|(k, _)| k == "USER")
        .map(|(_, u)| u.clone())
        .expect("USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "0" && uid != "root", "USER {user}");
}

/// `settings` with `policy` pointed at `policy_file`, written to a temp dir.
fn with_policy(
    settings: &Path,
    policy_file: &Path,
) -> (tempfile::TempDir, PathBuf, BTreeSet<String>) {
    let mut y: Yaml = serde_yaml::from_str(&std::fs::read_to_string(settings).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(policy_file, dir.path().join("policy.yaml")).unwrap();
    y["policy"] = Yaml::from("policy.yaml");
    let mut vars = BTreeSet::new();
    env_refs(&y, &mut vars);
    let policy: Yaml =
        serde_yaml::from_str(&std::fs::read_to_string(policy_file).unwrap()).unwrap();
    env_refs(&policy, &mut vars);
    let p = dir.path().join("settings.yaml");
    std::fs::write(&p, serde_yaml::to_string(&y).unwrap()).unwrap();
    (dir, p, vars)
}

#[test]
fn docker_demo_settings_pass_check() {
    let (_d, p, vars) = with_policy(
        &repo_path("deploy/docker/demo-settings.yaml"),
        &repo_path("config/policy.yaml"),
    );
    assert_check_passes(&p, &vars, "deploy/docker/demo-settings.yaml");
}

fn unit_values(key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_path("deploy/systemd/recordgate.service")).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

#[test]
fn systemd_unit_runs_serve_config_and_its_settings_pass_check() {
    let exec = unit_values("ExecStart");
    assert_eq!(exec.len(), 1, "{exec:?}");
    let argv: Vec<String> = exec[0].split_whitespace().map(str::to_string).collect();
    assert!(argv[0].ends_with("/recordgate"), "{argv:?}");
    assert_eq!(argv[1], "serve", "{argv:?}");
    let config = config_arg(&argv);
    assert_eq!(config, "/etc/recordgate/settings.yaml");
    // ExecStartPre validates the same file with the real `check` command.
    let pre = unit_values("ExecStartPre");
    assert!(
        pre.iter()
            .any(|p| p.contains(" check ") && p.ends_with(&format!("--config {config}"))),
        "{pre:?}"
    );
    // The unit's settings file (installed at that path) passes check with a
    // policy (the demo's) in place of /var/lib/recordgate/policy.yaml.
    let settings_file = repo_path("deploy/systemd/settings.yaml");
    let (_d, p, vars) = with_policy(&settings_file, &repo_path("config/policy.yaml"));
    assert_check_passes(&p, &vars, "deploy/systemd/settings.yaml");

    // Pid file and upgrade socket in RuntimeDirectory; stop timeout above the
    // drain budget.
    let y: Yaml = documents(&settings_file).pop().unwrap();
    let runtime = unit_values("RuntimeDirectory");
    for key in ["pid_file", "upgrade_sock"] {
        let path = s(&y["server"][key]);
        assert!(
            runtime
                .iter()
                .any(|r| Path::new(path).starts_with(Path::new("/run").join(r))),
            "{key} {path} not in RuntimeDirectory {runtime:?}"
        );
    }
    let grace = y["server"]["grace_period_secs"].as_u64().unwrap();
    let shutdown = y["server"]["graceful_shutdown_timeout_secs"]
        .as_u64()
        .unwrap();
    let stop: u64 = unit_values("TimeoutStopSec")[0]
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(stop > grace + shutdown, "TimeoutStopSec {stop}");
    assert_eq!(unit_values("KillSignal"), vec!["SIGTERM".to_string()]);
    assert!(unit_values("User").iter().all(|u| u != "root"));
}

// ---------------------------------------------------------------------------
// Prometheus and Grafana
// ---------------------------------------------------------------------------

fn promtool(args: &[&str]) -> Option<std::process::Output> {
    let ok = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!(
            "NOTE: promtool not on PATH; `promtool {}` skipped",
            args.join(" ")
        );
        return None;
    }
    Some(
        Command::new("promtool")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    )
}

/// Metric names the gateway exports (README table), with histogram series.
fn exported_names() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let section = readme.split("\n## Metrics").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    let mut out = BTreeSet::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cell = line.split('|').nth(1).unwrap();
        for name in cell.split('`').skip(1).step_by(2) {
            if cell.contains("histogram") {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{suffix}"));
                }
            }
            out.insert(name.to_string());
        }
    }
    out
}

/// `recordgate_*` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("recordgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn dashboard_exprs() -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                let title = m.get("title").and_then(|t| t.as_str()).unwrap_or(title);
                if let Some(serde_json::Value::Array(ts)) = m.get("targets") {
                    for t in ts {
                        if let Some(e) = t.get("expr").and_then(|e| e.as_str()) {
                            out.push((title.to_string(), e.to_string()));
                        }
                    }
                }
                for (k, c) in m {
                    if k != "targets" {
                        walk(c, title, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| walk(c, title, out)),
            _ => {}
        }
    }
    let d: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_path("deploy/grafana/recordgate-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    walk(&d, "", &mut out);
    out
}

fn alert_rules() -> Vec<Yaml> {
    let y = documents(&repo_path("deploy/prometheus/recordgate-alerts.yaml"))
        .pop()
        .unwrap();
    y["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().clone())
        .collect()
}

#[test]
fn alert_rules_are_valid_and_use_exported_metrics() {
    let exported = exported_names();
    let rules = alert_rules();
    let mut names = BTreeSet::new();
    for r in &rules {
        let name = s(&r["alert"]).to_string();
        let expr = s(&r["expr"]);
        for m in metric_names(expr) {
            assert!(
                exported.contains(&m),
                "alert {name} uses unknown metric {m}"
            );
        }
        let sev = r["labels"]["severity"].as_str();
        assert!(
            matches!(sev, Some("warning") | Some("critical")),
            "alert {name} severity {sev:?}"
        );
        assert!(
            r["annotations"]["summary"].is_string(),
            "alert {name} summary"
        );
        assert!(names.insert(name.clone()), "duplicate alert {name}");
    }
    // What the issue asks for: reload failures, a denial spike, upstream
    // errors, added latency over an SLO.
    let uses = |metric: &str, extra: &str| {
        rules.iter().any(|r| {
            let e = s(&r["expr"]);
            e.contains(metric) && e.contains(extra)
        })
    };
    assert!(uses("recordgate_policy_reloads_total", "failure"));
    assert!(uses("recordgate_requests_total", "decision"));
    assert!(uses("recordgate_upstream_errors_total", ""));
    // Added latency: the gateway's own work, client waits excluded.
    assert!(uses("recordgate_gateway_duration_seconds_bucket", ""));
    assert!(uses("recordgate_policy_info", "hash"));

    if let Some(out) = promtool(&[
        "check",
        "rules",
        repo_path("deploy/prometheus/recordgate-alerts.yaml")
            .to_str()
            .unwrap(),
    ]) {
        assert!(
            out.status.success(),
            "promtool check rules:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn prometheus_config_scrapes_the_metrics_port_and_loads_the_rules() {
    let y = documents(&repo_path("deploy/prometheus/prometheus.yml"))
        .pop()
        .unwrap();
    let rule_files: Vec<String> = y["rule_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| s(r).to_string())
        .collect();
    assert!(
        rule_files
            .iter()
            .any(|r| r.ends_with("recordgate-alerts.yaml")),
        "{rule_files:?}"
    );
    for r in &rule_files {
        assert!(
            repo_path("deploy/prometheus").join(r).is_file(),
            "{r} missing"
        );
    }
    let metrics = port_of(s(&cm_settings()["metrics"]["listen"]));
    let jobs = y["scrape_configs"].as_sequence().unwrap();
    assert!(!jobs.is_empty());
    let mut saw_recordgate_job = false;
    for j in jobs {
        assert_eq!(j["metrics_path"].as_str().unwrap_or("/metrics"), "/metrics");
        for sc in j["static_configs"].as_sequence().into_iter().flatten() {
            for t in sc["targets"].as_sequence().unwrap() {
                assert_eq!(port_of(s(t)), metrics, "static target {t:?}");
            }
        }
        for dc in j["dns_sd_configs"].as_sequence().into_iter().flatten() {
            assert_eq!(dc["port"].as_u64(), Some(metrics as u64));
        }
        // The alert rules select job="recordgate".
        let relabelled = j["relabel_configs"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|r| r["target_label"] == "job" && r["replacement"] == "recordgate");
        saw_recordgate_job |= j["job_name"] == "recordgate" || relabelled;
        assert!(
            j["job_name"] == "recordgate" || relabelled,
            "job {:?}",
            j["job_name"]
        );
    }
    assert!(saw_recordgate_job);
    // The headless Service used for DNS discovery exists.
    for j in jobs {
        for dc in j["dns_sd_configs"].as_sequence().into_iter().flatten() {
            for n in dc["names"].as_sequence().unwrap() {
                let svc = s(n).split('.').next().unwrap().to_string();
                let o = object("Service", Some(&svc));
                assert_eq!(
                    o["spec"]["clusterIP"].as_str(),
                    Some("None"),
                    "{svc} headless"
                );
            }
        }
    }
    if let Some(out) = promtool(&[
        "check",
        "config",
        "--syntax-only",
        repo_path("deploy/prometheus/prometheus.yml")
            .to_str()
            .unwrap(),
    ]) {
        assert!(
            out.status.success(),
            "promtool check config:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn dashboard_queries_use_exported_metrics_and_the_datasource_variable() {
    let exported = exported_names();
    let exprs = dashboard_exprs();
    assert!(!exprs.is_empty());
    for (title, e) in &exprs {
        let names = metric_names(e);
        assert!(
            !names.is_empty(),
            "panel {title:?} queries no recordgate metric: {e}"
        );
        for m in names {
            assert!(
                exported.contains(&m),
                "panel {title:?} uses unknown metric {m}"
            );
        }
    }
    // Panels use the ${datasource} variable, which is defined.
    let d: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_path("deploy/grafana/recordgate-dashboard.json")).unwrap(),
    )
    .unwrap();
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(vars.contains(&"datasource"), "{vars:?}");
    let text = serde_json::to_string(&d).unwrap();
    assert!(text.contains("${datasource}"));
}

/// The panels the issue lists, each found by the query behind it.
#[test]
fn dashboard_has_every_panel_the_issue_asks_for() {
    let exprs: Vec<String> = dashboard_exprs().into_iter().map(|(_, e)| e).collect();
    let has = |needles: &[&str]| exprs.iter().any(|e| needles.iter().all(|n| e.contains(n)));
    let mut missing = Vec::new();
    for (what, needles) in [
        (
            "traffic by decision",
            &["recordgate_requests_total", "by (decision)"][..],
        ),
        (
            "denials by reason",
            &["recordgate_requests_total", "by (decision)", "allowed"],
        ),
        (
            "denials by client",
            &["recordgate_client_requests_total", "client"],
        ),
        (
            "p50 total latency",
            &[
                "histogram_quantile(0.5",
                "recordgate_request_duration_seconds_bucket",
            ],
        ),
        (
            "p99 total latency",
            &[
                "histogram_quantile(0.99",
                "recordgate_request_duration_seconds_bucket",
            ],
        ),
        (
            "p50 added latency",
            &[
                "histogram_quantile(0.5",
                "recordgate_gateway_duration_seconds_bucket",
            ],
        ),
        (
            "p99 added latency",
            &[
                "histogram_quantile(0.99",
                "recordgate_gateway_duration_seconds_bucket",
            ],
        ),
        (
            "error ratio",
            &["recordgate_requests_total", "status=~\"5..\"", "/"],
        ),
        (
            "p99 gateway latency per route",
            &[
                "histogram_quantile(0.99",
                "by (route, le)",
                "recordgate_gateway_duration_seconds_bucket",
            ],
        ),
        (
            "p99 total latency per route",
            &[
                "histogram_quantile(0.99",
                "by (route, le)",
                "recordgate_request_duration_seconds_bucket",
            ],
        ),
        ("client time-outs", &["recordgate_client_timeouts_total"]),
        ("dropped log lines", &["recordgate_log_lines_dropped_total"]),
        ("policy drift", &["recordgate_policy_info", "hash"]),
        (
            "filtered attributes",
            &["recordgate_filtered_attributes_total"],
        ),
        ("upstream errors", &["recordgate_upstream_errors_total"]),
        ("policy version", &["recordgate_policy_version"]),
        (
            "reload failures",
            &["recordgate_policy_reloads_total", "failure"],
        ),
    ] {
        if !has(needles) {
            missing.push(what);
        }
    }
    assert!(missing.is_empty(), "dashboard lacks: {missing:?}");
}

/// `recordgate check` (the unit's ExecStartPre, the README's validation
/// step) must fail when `serve` would: here the settings' upstream
/// credential names an environment variable that is not set. `check` only
/// resolves the policy's client secrets, so it prints "ok" and `serve` then
/// exits with "upstream.credentials.secret: environment variable ... is not
/// set" (the ConfigMap's RECORDGATE_UPSTREAM_SECRET case).
#[test]

fn check_fails_when_the_upstream_credential_is_unresolvable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), default_policy()).unwrap();
    let settings = dir.path().join("settings.yaml");
    std::fs::write(
        &settings,
        "listen: [\"127.0.0.1:1\"]\n\
         upstream:\n  servers: [\"127.0.0.1:2\"]\n  credentials:\n    client_id: gw\n    secret: {env: RECORDGATE_TEST_SURELY_UNSET_VAR}\n\
         policy: policy.yaml\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_recordgate"))
        .arg("check")
        .arg("--config")
        .arg(&settings)
        .env_remove("RECORDGATE_TEST_SURELY_UNSET_VAR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("RECORDGATE_TEST_SURELY_UNSET_VAR"),
        "check passed although serve cannot start:\n{}{err}",
        String::from_utf8_lossy(&out.stdout)
    );
}
