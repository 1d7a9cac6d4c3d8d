//! The fleet deployment files (the etcd policy store) parse and agree with
//! the binary: deploy/kubernetes-etcd (a kustomize overlay of
//! deploy/kubernetes with a 3-member etcd, its auth Job and a policy import
//! Job) and deploy/docker/compose-fleet.yaml with its fleet-settings.yaml.
//! Settings are validated by the real `recordgate check`, the Jobs' and
//! services' command lines by the real CLI. No network, no docker, no
//! cluster: `kubectl kustomize` runs only when kubectl is on PATH.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::deploy::*;
use common::*;
use serde_yaml::Value as Yaml;

const OVERLAY: &str = "deploy/kubernetes-etcd";
const COMPOSE: &str = "deploy/docker/compose-fleet.yaml";

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Every object in `dir`, with its file.
fn objects_in(dir: &str) -> Vec<(PathBuf, Yaml)> {
    yaml_files(dir)
        .into_iter()
        .flat_map(|p| documents(&p).into_iter().map(move |d| (p.clone(), d)))
        .collect()
}

fn find(dir: &str, kind: &str, name: &str) -> Yaml {
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

fn overlay(kind: &str, name: &str) -> Yaml {
    find(OVERLAY, kind, name)
}

/// The overlay's recordgate settings (configmap-patch.yaml), parsed.
fn etcd_settings() -> Yaml {
    let cm = overlay("ConfigMap", "recordgate-config");
    serde_yaml::from_str(s(&cm["data"]["settings.yaml"])).unwrap()
}

/// Keys of a Secret template.
fn secret_keys(dir: &str, name: &str) -> BTreeSet<String> {
    let secret = find(dir, "Secret", name);
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
/// from (`None`: a literal value).
fn container_env(c: &Yaml) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for e in c["envFrom"].as_sequence().into_iter().flatten() {
        if let Some(name) = e["secretRef"]["name"].as_str() {
            let dir = if name == "recordgate-secrets" {
                "deploy/kubernetes"
            } else {
                OVERLAY
            };
            for k in secret_keys(dir, name) {
                out.insert(k, Some(name.to_string()));
            }
        }
    }
    for e in c["env"].as_sequence().into_iter().flatten() {
        let r = &e["valueFrom"]["secretKeyRef"];
        let from = r["name"].as_str().map(|n| {
            assert!(
                secret_keys(OVERLAY, n).contains(s(&r["key"])),
                "Secret {n} has no key {:?}",
                r["key"]
            );
            n.to_string()
        });
        out.insert(s(&e["name"]).to_string(), from);
    }
    out
}

/// The compose file, YAML merge keys (`<<: *recordgate`) applied.
fn compose() -> Yaml {
    let mut y = documents(&repo_path(COMPOSE)).pop().unwrap();
    y.apply_merge().unwrap();
    y
}

/// `(mount path, volume)` of a container in a pod spec.
fn mounts(pod: &Yaml, c: &Yaml) -> Vec<(PathBuf, Yaml)> {
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

/// The ConfigMap (`configMap.name`) and key a path is read from.
fn configmap_key(pod: &Yaml, c: &Yaml, path: &str) -> (String, String) {
    for (at, v) in mounts(pod, c) {
        if let (Ok(rest), Some(cm)) = (
            Path::new(path).strip_prefix(&at),
            v["configMap"]["name"].as_str(),
        ) {
            return (cm.to_string(), rest.to_str().unwrap().to_string());
        }
    }
    panic!("{path} is on no ConfigMap mount");
}

/// The data of a ConfigMap as the overlay renders it: the overlay's
/// version if it has one (a patch: its keys win, `null` deletes), over
/// the base's.
fn configmap_data(name: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut layers = Vec::new();
    for dir in ["deploy/kubernetes", OVERLAY] {
        layers.extend(
            objects_in(dir).into_iter().map(|(_, d)| d).filter(|d| {
                d["kind"] == "ConfigMap" && d["metadata"]["name"].as_str() == Some(name)
            }),
        );
    }
    assert!(!layers.is_empty(), "no ConfigMap {name}");
    for cm in layers {
        for (k, v) in cm["data"].as_mapping().unwrap() {
            match v.as_str() {
                Some(text) => out.insert(s(k).to_string(), text.to_string()),
                None => out.remove(s(k)),
            };
        }
    }
    out
}

/// Runs `policy import FILE --config SETTINGS` as `argv` spells it, with
/// the settings' etcd pointed at a closed loopback port: the binary must
/// accept the arguments, read both files, validate the policy (every
/// `{env: VAR}` set) and fail only at reaching etcd.
fn assert_import_reaches_etcd(argv: &[String], settings: &str, policy: &str, what: &str) {
    assert_eq!(&argv[..2], ["policy", "import"], "{what}: {argv:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut y: Yaml = serde_yaml::from_str(settings).unwrap();
    let closed = free_port();
    y["policy_store"]["etcd"]["endpoints"] = Yaml::from(vec![format!("http://127.0.0.1:{closed}")]);
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
        !out.contains("Usage:") && !out.contains("policy.yaml:") && out.contains("connect"),
        "{what}: `recordgate {}` failed before reaching etcd:\n{out}",
        args.join(" ")
    );
}

// ---------------------------------------------------------------------------
// Parsing and the kustomization
// ---------------------------------------------------------------------------

#[test]
fn every_fleet_yaml_parses() {
    let mut kinds = BTreeMap::<String, usize>::new();
    for (p, d) in objects_in(OVERLAY) {
        assert!(d["apiVersion"].is_string(), "{}: apiVersion", p.display());
        let kind = s(&d["kind"]).to_string();
        if kind != "Kustomization" {
            assert!(
                d["metadata"]["name"].is_string(),
                "{}: metadata.name",
                p.display()
            );
        }
        *kinds.entry(kind).or_default() += 1;
    }
    for (k, n) in [
        ("Kustomization", 1),
        ("StatefulSet", 1),
        ("Service", 1),
        ("Secret", 1),
        ("Job", 2),
        ("Deployment", 1),
        ("PodDisruptionBudget", 1),
    ] {
        assert_eq!(
            kinds.get(k).copied(),
            Some(n),
            "{k} in {OVERLAY}: {kinds:?}"
        );
    }
    let c = compose();
    let services = c["services"].as_mapping().expect("services");
    for name in ["etcd", "import", "demo"] {
        assert!(services.contains_key(name), "compose: no service {name}");
    }
    for (name, svc) in services {
        assert!(
            svc["image"].is_string() || svc["build"].is_mapping(),
            "compose service {name:?}: no image or build"
        );
    }
    documents(&repo_path("deploy/docker/fleet-settings.yaml"));
}

#[test]
fn kustomization_lists_only_existing_files_and_patches_base_objects() {
    let k = objects_in(OVERLAY)
        .into_iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "Kustomization")
        .expect("a Kustomization");
    let dir = repo_path(OVERLAY);
    let resources = strings(&k["resources"]);
    let patches: Vec<String> = k["patches"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| s(&p["path"]).to_string())
        .collect();
    assert!(
        resources.contains(&"../kubernetes".to_string()),
        "the base is reused: {resources:?}"
    );
    for r in &resources {
        let p = dir.join(r);
        assert!(
            p.is_file() || p.join("kustomization.yaml").is_file(),
            "kustomization lists missing {r}"
        );
    }
    for p in &patches {
        assert!(
            dir.join(p).is_file(),
            "kustomization patches with missing {p}"
        );
    }
    for p in yaml_files(OVERLAY) {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            name == "kustomization.yaml" || resources.contains(&name) || patches.contains(&name),
            "{name} is neither a resource nor a patch"
        );
    }
    // Every patch targets an object of the base, by kind and name.
    for p in &patches {
        for d in documents(&dir.join(p)) {
            find(
                "deploy/kubernetes",
                s(&d["kind"]),
                s(&d["metadata"]["name"]),
            );
        }
    }
    // The import Job's image is the one the kustomization sets.
    let job = overlay("Job", "recordgate-policy-import");
    let image = s(&job["spec"]["template"]["spec"]["containers"][0]["image"]).to_string();
    let image_name = image.rsplit_once(':').map(|(n, _)| n).unwrap();
    assert!(
        k["images"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|i| s(&i["name"]) == image_name),
        "kustomization images do not name {image_name}"
    );

    // With kubectl at hand, render it: no Secret in the output, policy.yaml
    // gone from the gateway's ConfigMap, ETCD_PASSWORD in the Deployment.
    let ok = Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("NOTE: kubectl not on PATH; `kubectl kustomize {OVERLAY}` skipped");
        return;
    }
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {OVERLAY}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let docs = documents(&file);
    let named = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("rendered output has no {kind} {name}"))
    };
    assert!(
        docs.iter().all(|d| d["kind"] != "Secret"),
        "a Secret template was rendered"
    );
    assert!(docs
        .iter()
        .all(|d| d["metadata"]["namespace"] == "recordgate" || d["kind"] == "Namespace"));
    let cm = named("ConfigMap", "recordgate-config");
    assert!(
        cm["data"]["policy.yaml"].is_null(),
        "policy.yaml is still in recordgate-config"
    );
    assert_eq!(
        cm["data"]["settings.yaml"],
        overlay("ConfigMap", "recordgate-config")["data"]["settings.yaml"]
    );
    let d = named("Deployment", "recordgate");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert!(container_env(c).contains_key("ETCD_PASSWORD"));
    assert!(
        c["readinessProbe"].is_mapping(),
        "the base Deployment was replaced, not patched"
    );
    for kind in ["StatefulSet", "Job"] {
        assert!(docs.iter().any(|d| d["kind"] == kind), "no {kind} rendered");
    }
}

// ---------------------------------------------------------------------------
// Settings against `recordgate check`
// ---------------------------------------------------------------------------

#[test]
fn overlay_settings_and_seed_policy_pass_recordgate_check() {
    let settings = etcd_settings();
    assert_eq!(settings["policy_store"]["kind"], "etcd");
    let data = configmap_data("recordgate-config");
    assert!(
        !data.contains_key("policy.yaml"),
        "the policy is in etcd, not the ConfigMap"
    );
    let mut vars = BTreeSet::new();
    env_refs(&settings, &mut vars);
    assert!(vars.contains("ETCD_PASSWORD"), "{vars:?}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("settings.yaml");
    std::fs::write(&file, &data["settings.yaml"]).unwrap();
    // The cache (policy:) does not exist yet: check validates the settings.
    assert!(!Path::new(s(&settings["policy"])).exists());
    assert_check_passes(&file, &vars, "deploy/kubernetes-etcd settings.yaml");

    // The seed policy, placed where the cache would be, passes too.
    let seed =
        s(&overlay("ConfigMap", "recordgate-policy-seed")["data"]["policy.yaml"]).to_string();
    let mut y = settings.clone();
    y["policy"] = Yaml::from("policy-cache.yaml");
    std::fs::write(dir.path().join("policy-cache.yaml"), &seed).unwrap();
    std::fs::write(&file, serde_yaml::to_string(&y).unwrap()).unwrap();
    let mut seed_vars = vars.clone();
    env_refs(&serde_yaml::from_str(&seed).unwrap(), &mut seed_vars);
    assert!(
        seed_vars.len() > vars.len(),
        "the seed's client secrets are {{env: VAR}}"
    );
    assert_check_passes(&file, &seed_vars, "policy-seed.yaml");

    // The gateway container gets every variable, from a Secret; the cache,
    // audit log, pid file and upgrade socket are on writable emptyDirs.
    let base = find("deploy/kubernetes", "Deployment", "recordgate");
    let patch = overlay("Deployment", "recordgate");
    let mut env = container_env(&base["spec"]["template"]["spec"]["containers"][0]);
    env.extend(container_env(
        &patch["spec"]["template"]["spec"]["containers"][0],
    ));
    for v in &seed_vars {
        assert!(
            matches!(env.get(v), Some(Some(_))),
            "{v} is not given to the gateway from a Secret: {env:?}"
        );
    }
    let pod = &base["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    for path in [
        s(&settings["policy"]),
        s(&settings["audit_log"]),
        s(&settings["server"]["pid_file"]),
        s(&settings["server"]["upgrade_sock"]),
    ] {
        assert!(
            mounts(pod, c)
                .iter()
                .any(|(at, v)| Path::new(path).starts_with(at) && v["emptyDir"].is_mapping()),
            "{path} is not on a writable emptyDir"
        );
    }
}

#[test]
fn fleet_settings_pass_recordgate_check() {
    let file = repo_path("deploy/docker/fleet-settings.yaml");
    let y = documents(&file).pop().unwrap();
    assert_eq!(y["policy_store"]["kind"], "etcd");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("fleet-settings.yaml");
    std::fs::copy(&file, &copy).unwrap();
    let mut vars = BTreeSet::new();
    env_refs(&y, &mut vars);
    assert_check_passes(&copy, &vars, "deploy/docker/fleet-settings.yaml");
}

// ---------------------------------------------------------------------------
// The import Job and the compose file run the real CLI
// ---------------------------------------------------------------------------

#[test]
fn import_job_runs_the_real_cli_on_its_mounts() {
    let job = overlay("Job", "recordgate-policy-import");
    let pod = &job["spec"]["template"]["spec"];
    let cs = pod["containers"].as_sequence().unwrap();
    assert_eq!(cs.len(), 1);
    let c = &cs[0];
    let mut argv = strings(&c["command"]);
    if argv.is_empty() {
        argv = entrypoint();
    }
    assert!(argv[0].ends_with("recordgate"), "{argv:?}");
    let args: Vec<String> = argv[1..]
        .iter()
        .cloned()
        .chain(strings(&c["args"]))
        .collect();
    let file = &args[2];
    let config = &args[args.iter().position(|a| a == "--config").unwrap() + 1];

    // Both paths are keys of mounted ConfigMaps: the seed, and the
    // gateway's own settings (the etcd store the replicas use).
    let (seed_cm, seed_key) = configmap_key(pod, c, file);
    assert_eq!(seed_cm, "recordgate-policy-seed");
    let (cfg_cm, cfg_key) = configmap_key(pod, c, config);
    assert_eq!(cfg_cm, "recordgate-config");
    let seed = configmap_data(&seed_cm)
        .remove(&seed_key)
        .unwrap_or_else(|| panic!("ConfigMap {seed_cm} has no key {seed_key}"));
    let settings = configmap_data(&cfg_cm)
        .remove(&cfg_key)
        .unwrap_or_else(|| panic!("ConfigMap {cfg_cm} has no key {cfg_key}"));

    // Every variable the settings and the seed name is set from a Secret.
    let mut vars = BTreeSet::new();
    env_refs(&serde_yaml::from_str(&settings).unwrap(), &mut vars);
    env_refs(&serde_yaml::from_str(&seed).unwrap(), &mut vars);
    let env = container_env(c);
    for v in &vars {
        assert!(
            matches!(env.get(v), Some(Some(_))),
            "the import Job lacks {v}"
        );
    }
    assert_import_reaches_etcd(&args, &settings, &seed, "policy-import-job.yaml");
}

#[test]
fn compose_fleet_wires_etcd_import_replicas_and_demo() {
    let y = compose();
    let services = y["services"].as_mapping().unwrap();
    let settings_file = repo_path("deploy/docker/fleet-settings.yaml");
    let settings = documents(&settings_file).pop().unwrap();

    // Host files bind-mounted into a service, by container path.
    let binds = |svc: &Yaml| -> BTreeMap<String, PathBuf> {
        strings(&svc["volumes"])
            .iter()
            .filter(|v| v.starts_with('.'))
            .map(|v| {
                let mut parts = v.split(':');
                let host = repo_path("deploy/docker").join(parts.next().unwrap());
                assert!(host.exists(), "compose mounts missing {}", host.display());
                (parts.next().unwrap().to_string(), host)
            })
            .collect()
    };
    let settings_in = |svc: &Yaml, argv: &[String]| {
        let config = &argv[argv.iter().position(|a| a == "--config").unwrap() + 1];
        let host = binds(svc)
            .remove(config)
            .unwrap_or_else(|| panic!("{config} is not mounted"));
        assert_eq!(
            host.canonicalize().unwrap(),
            settings_file.canonicalize().unwrap()
        );
    };

    // Three (or more) replicas of the image, on the fleet settings, after
    // the import, each on its own host ports.
    let image = s(&services["import"]["image"]).to_string();
    let mut replicas = 0;
    let mut host_ports = BTreeSet::new();
    for (name, svc) in services {
        let argv = strings(&svc["command"]);
        if svc["image"].as_str() != Some(image.as_str())
            || argv.first().map(String::as_str) != Some("serve")
        {
            continue;
        }
        replicas += 1;
        settings_in(svc, &argv);
        assert_eq!(
            svc["depends_on"]["import"]["condition"], "service_completed_successfully",
            "{name:?} starts before the import"
        );
        for p in strings(&svc["ports"]) {
            assert!(
                host_ports.insert(p.split(':').next().unwrap().to_string()),
                "{name:?}: {p}"
            );
        }
    }
    assert!(replicas >= 3, "{replicas} replicas");
    // The serve arguments are the real binary's.
    let missing = tempfile::tempdir().unwrap().path().join("missing.yaml");
    let (ok, out) = run(
        &[
            "serve".into(),
            "--config".into(),
            missing.display().to_string(),
        ],
        &BTreeSet::new(),
    );
    assert!(!ok && !out.contains("Usage:"), "{out}");

    // The import: the real CLI, the demo policy, after etcd is healthy.
    let import = &services["import"];
    let argv = strings(&import["command"]);
    settings_in(import, &argv);
    let seed = binds(import)
        .remove(&argv[2])
        .expect("the import's policy file is mounted");
    assert_eq!(import["depends_on"]["etcd"]["condition"], "service_healthy");
    assert_import_reaches_etcd(
        &argv,
        &std::fs::read_to_string(&settings_file).unwrap(),
        &std::fs::read_to_string(seed).unwrap(),
        "compose import",
    );

    // The settings name the compose services: etcd on its client port,
    // the demo on the port it listens on.
    let etcd = &services["etcd"];
    assert_eq!(s(&etcd["image"]), "quay.io/coreos/etcd:v3.5.17");
    let etcd_args = strings(&etcd["command"]);
    let listen = etcd_args
        .iter()
        .find_map(|a| a.strip_prefix("--listen-client-urls="))
        .unwrap();
    for ep in strings(&settings["policy_store"]["etcd"]["endpoints"]) {
        let hostport = ep.trim_start_matches("http://");
        let (host, port) = hostport.split_once(':').unwrap();
        assert!(
            services.contains_key(host),
            "endpoint {ep}: no service {host}"
        );
        assert!(listen.ends_with(&format!(":{port}")), "{ep} vs {listen}");
    }
    for server in strings(&settings["upstream"]["servers"]) {
        let (host, port) = server.split_once(':').unwrap();
        let demo = &services[host];
        let cmd = strings(&demo["command"]).join(" ");
        assert!(cmd.contains("recordgate-demo"), "{host} runs {cmd}");
        assert!(
            cmd.contains(&format!("--listen 0.0.0.0:{port}")),
            "{host} runs {cmd}"
        );
    }
}

// ---------------------------------------------------------------------------
// etcd: the members the settings name, auth restricted to the prefix
// ---------------------------------------------------------------------------

#[test]
fn etcd_statefulset_serves_the_endpoints_the_settings_name() {
    let sts = overlay("StatefulSet", "etcd");
    let svc_name = s(&sts["spec"]["serviceName"]);
    let svc = overlay("Service", svc_name);
    assert_eq!(svc["spec"]["clusterIP"], "None", "headless");
    assert_eq!(
        svc["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
    let labels = sts["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap();
    for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(labels.get(k), Some(v), "Service selector {k:?}");
    }
    let n = sts["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(n, 3);
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(s(&c["image"]), "quay.io/coreos/etcd:v3.5.17");
    let args = strings(&c["command"]);
    let flag = |f: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{f}=")))
            .unwrap_or_else(|| panic!("etcd has no --{f}"))
            .to_string()
    };
    let name = s(&sts["metadata"]["name"]);
    let members: Vec<String> = (0..n)
        .map(|i| format!("{name}-{i}=http://{name}-{i}.{svc_name}:2380"))
        .collect();
    assert_eq!(flag("initial-cluster"), members.join(","));
    assert_eq!(flag("name"), "$(POD_NAME)");
    let endpoints: Vec<String> = (0..n)
        .map(|i| format!("http://{name}-{i}.{svc_name}:2379"))
        .collect();
    assert_eq!(
        strings(&etcd_settings()["policy_store"]["etcd"]["endpoints"]),
        endpoints
    );
    assert_eq!(
        flag("advertise-client-urls"),
        format!("http://$(POD_NAME).{svc_name}:2379")
    );
    let client = overlay("ConfigMap", "etcd-client");
    assert_eq!(s(&client["data"]["ETCDCTL_ENDPOINTS"]), endpoints.join(","));
    // The data directory is on the claim.
    let data = flag("data-dir");
    assert!(c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|m| Path::new(&data).starts_with(s(&m["mountPath"]))
            && sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == m["name"]));
}

#[test]
fn etcd_role_is_restricted_to_the_configured_prefix() {
    let settings = etcd_settings();
    let etcd = &settings["policy_store"]["etcd"];
    let prefix = s(&etcd["prefix"]);
    let user = s(&etcd["user"]);
    let password_var = s(&etcd["password"]["env"]);

    // The Job's etcdctl commands, in the order they run.
    let job = overlay("Job", "etcd-auth");
    let pod = &job["spec"]["template"]["spec"];
    let containers: Vec<Yaml> = pod["initContainers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .chain(pod["containers"].as_sequence().unwrap())
        .cloned()
        .collect();
    let mut steps: Vec<Vec<String>> = Vec::new();
    for c in &containers {
        assert_eq!(s(&c["image"]), "quay.io/coreos/etcd:v3.5.17");
        let argv = strings(&c["command"]);
        assert!(argv[0].ends_with("/etcdctl"), "{argv:?}");
        let env = container_env(c);
        // Root's password and the gateway's come from the Secret the
        // gateway's ETCD_PASSWORD comes from.
        for v in ["ETCD_ROOT_PASSWORD", password_var, "ETCDCTL_PASSWORD"] {
            assert_eq!(
                env.get(v),
                Some(&Some("recordgate-etcd".to_string())),
                "{v} in {argv:?}"
            );
        }
        steps.push(argv[1..].to_vec());
    }
    let pos = |want: &[&str]| {
        steps
            .iter()
            .position(|st| st.len() >= want.len() && st.iter().zip(want).all(|(a, b)| a == b))
            .unwrap_or_else(|| panic!("no step {want:?} in {steps:?}"))
    };
    // The gateway's user holds one role, allowed read-write on the prefix
    // and nothing else.
    let add_user = pos(&["user", "add", user]);
    assert!(steps[add_user].contains(&format!("--new-user-password=$({password_var})")));
    let grants: Vec<&Vec<String>> = steps
        .iter()
        .filter(|st| st.len() > 1 && st[0] == "user" && st[1] == "grant-role")
        .collect();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0][2], user);
    let role = grants[0][3].clone();
    assert_ne!(role, "root");
    let perms: Vec<&Vec<String>> = steps
        .iter()
        .filter(|st| st.len() > 1 && st[0] == "role" && st[1] == "grant-permission")
        .collect();
    assert_eq!(perms.len(), 1, "{perms:?}");
    let perm = perms[0];
    assert_eq!(perm[2], role);
    assert_eq!(perm[3], "readwrite");
    assert_eq!(
        perm[4], prefix,
        "the role is granted another key than the prefix"
    );
    assert!(
        perm[5..]
            .iter()
            .any(|f| f == "--prefix" || f == "--prefix=true"),
        "{perm:?} grants one key, not the prefix"
    );
    assert!(
        !perm.iter().any(|f| f.starts_with("--from-key")),
        "{perm:?} grants a range beyond the prefix"
    );
    // Root exists before auth is enabled, which comes last.
    let root = pos(&["user", "add", "root"]);
    assert!(steps[root].contains(&"--new-user-password=$(ETCD_ROOT_PASSWORD)".to_string()));
    let enable = pos(&["auth", "enable"]);
    assert_eq!(enable, steps.len() - 1, "auth enable runs last");
    assert!(root < enable && pos(&["role", "add", &role]) < enable && add_user < enable);
    assert_eq!(
        pod["restartPolicy"], "OnFailure",
        "a failed step is retried in place"
    );
    assert_eq!(
        s(&overlay("ConfigMap", "etcd-client")["data"]["ETCDCTL_USER"]),
        "root"
    );
}
