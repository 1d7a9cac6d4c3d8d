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

use common::deploy::*;
use common::*;
use serde_yaml::Value as Yaml;

const OVERLAY: &str = ETCD_OVERLAY;
const COMPOSE: &str = "deploy/docker/compose-fleet.yaml";

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

fn overlay(kind: &str, name: &str) -> Yaml {
    find_object(OVERLAY, kind, name)
}

/// The overlay's recordgate settings (configmap-patch.yaml), parsed.
fn etcd_settings() -> Yaml {
    let cm = overlay("ConfigMap", "recordgate-config");
    serde_yaml::from_str(s(&cm["data"]["settings.yaml"])).unwrap()
}

/// The data of a ConfigMap as the overlay renders it.
fn configmap_data(name: &str) -> BTreeMap<String, String> {
    configmap_data_in(&[BASE, OVERLAY], name)
}

/// The compose file, YAML merge keys (`<<: *recordgate`) applied.
fn compose() -> Yaml {
    let mut y = documents(&repo_path(COMPOSE)).pop().unwrap();
    y.apply_merge().unwrap();
    y
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
            find_object(
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

    // With kubectl at hand, render it: no Secret in the output, the seed
    // (the base's policy.yaml) kept, ETCD_PASSWORD in the Deployment, the
    // import Job's seed an existing key.
    let Some(docs) = kubectl_render(OVERLAY) else {
        return;
    };
    let named = |kind: &str, name: &str| rendered(&docs, kind, name);
    assert!(
        docs.iter().all(|d| d["kind"] != "Secret"),
        "a Secret template was rendered"
    );
    assert!(docs
        .iter()
        .all(|d| d["metadata"]["namespace"] == "recordgate" || d["kind"] == "Namespace"));
    let cm = named("ConfigMap", "recordgate-config");
    assert_eq!(
        cm["data"]["policy.yaml"],
        find_object(BASE, "ConfigMap", "recordgate-config")["data"]["policy.yaml"],
        "the seed is the base's policy.yaml"
    );
    let job = named("Job", "recordgate-policy-import");
    let pod = &job["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let (seed_cm, seed_key) = configmap_key(pod, c, &strings(&c["args"])[2]);
    assert!(named("ConfigMap", &seed_cm)["data"][seed_key.as_str()].is_string());
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
    // The seed only (the import Job's): the gateway reads its cache.
    assert_ne!(s(&settings["policy"]), "policy.yaml");
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
    let seed = data["policy.yaml"].clone();
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
    assert_check_passes(
        &file,
        &seed_vars,
        "the seed (recordgate-config policy.yaml)",
    );

    // The gateway container gets every variable, from a Secret; the cache,
    // audit log, pid file and upgrade socket are on writable emptyDirs.
    let base = find_object("deploy/kubernetes", "Deployment", "recordgate");
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

    // Both paths are keys of mounted ConfigMaps: the seed (the base's
    // policy.yaml), and the gateway's own settings (the etcd store the
    // replicas use). A seed only: --if-empty.
    assert!(args.contains(&"--if-empty".to_string()), "{args:?}");
    let (seed_cm, seed_key) = configmap_key(pod, c, file);
    assert_eq!(
        (seed_cm.as_str(), seed_key.as_str()),
        ("recordgate-config", "policy.yaml")
    );
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
    assert!(argv.contains(&"--if-empty".to_string()), "{argv:?}");
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

// ---------------------------------------------------------------------------
// The etcd-auth Job: idempotent, the role restricted to the prefix
// ---------------------------------------------------------------------------

/// The etcd-auth Job's one container and its script.
fn auth_script() -> (Yaml, String) {
    let job = overlay("Job", "etcd-auth");
    let pod = &job["spec"]["template"]["spec"];
    assert!(pod["initContainers"].is_null(), "one container runs it all");
    let cs = pod["containers"].as_sequence().unwrap();
    assert_eq!(cs.len(), 1);
    let argv = strings(&cs[0]["command"]);
    assert_eq!(&argv[..2], ["/bin/sh", "-c"], "{argv:?}");
    assert_eq!(argv.len(), 3);
    (cs[0].clone(), argv[2].clone())
}

#[test]
fn etcd_auth_job_is_idempotent_and_restricted_to_the_prefix() {
    let settings = etcd_settings();
    let etcd = &settings["policy_store"]["etcd"];
    let (prefix, user) = (s(&etcd["prefix"]), s(&etcd["user"]));
    let password_var = s(&etcd["password"]["env"]);
    let (c, script) = auth_script();
    // A shell and etcdctl, the same etcd version as the members.
    let sts = overlay("StatefulSet", "etcd");
    let member_image = s(&sts["spec"]["template"]["spec"]["containers"][0]["image"]);
    let version = member_image.rsplit_once(":v").unwrap().1;
    assert_eq!(s(&c["image"]), format!("registry.k8s.io/etcd:{version}-0"));
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);

    let lines: Vec<&str> = script
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(lines[0], "set -eu", "stops at the first failed step");
    assert!(
        !script.contains("set -x"),
        "set -x would print the passwords"
    );
    // A bounded wait for etcd, then a failure the Job retries.
    assert!(script.contains("until etcdctl endpoint health") && script.contains("exit 1"));
    // Passwords: from the Secret, only on the `user add` lines.
    let env = container_env(&c);
    for v in ["ETCD_ROOT_PASSWORD", password_var, "ETCDCTL_PASSWORD"] {
        assert_eq!(
            env.get(v),
            Some(&Some("recordgate-etcd".to_string())),
            "{v}"
        );
    }
    for l in &lines {
        if l.contains("PASSWORD") {
            assert!(
                l.starts_with("etcdctl user add "),
                "a password outside `user add`: {l}"
            );
        }
    }
    // Every `user add` / `role add` runs only if `user get` / `role get`
    // finds nothing.
    for (i, l) in lines.iter().enumerate() {
        for what in ["user", "role"] {
            if let Some(rest) = l.strip_prefix(&format!("etcdctl {what} add ")) {
                let name = rest.split_whitespace().next().unwrap();
                assert_eq!(
                    lines[i - 1],
                    format!("if ! etcdctl {what} get {name} >/dev/null 2>&1; then"),
                    "`{l}` is not guarded"
                );
            }
        }
    }

    let steps = etcdctl_steps(&script);
    let pos = |want: &[&str]| {
        steps
            .iter()
            .position(|st| st.len() >= want.len() && st.iter().zip(want).all(|(a, b)| a == b))
            .unwrap_or_else(|| panic!("no step {want:?} in {steps:?}"))
    };
    let add_user = pos(&["user", "add", user]);
    assert!(steps[add_user].contains(&format!("--new-user-password=\"${password_var}\"")));
    let root = pos(&["user", "add", "root"]);
    assert!(steps[root].contains(&"--new-user-password=\"$ETCD_ROOT_PASSWORD\"".to_string()));
    // The gateway's user holds one role, allowed read-write on the prefix
    // and nothing else.
    let of = |a: &str, b: &str| -> Vec<&Vec<String>> {
        steps
            .iter()
            .filter(|st| st.len() > 1 && st[0] == a && st[1] == b)
            .collect()
    };
    let grants = of("user", "grant-role");
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0][2], user);
    let role = grants[0][3].clone();
    assert_ne!(role, "root");
    let perms = of("role", "grant-permission");
    assert_eq!(perms.len(), 1, "{perms:?}");
    assert_eq!(perms[0][2..5], [role.as_str(), "readwrite", prefix]);
    assert!(perms[0][5..]
        .iter()
        .any(|f| f == "--prefix" || f == "--prefix=true"));
    assert!(!perms[0].iter().any(|f| f.starts_with("--from-key")));
    // Root exists before auth is enabled, which comes last.
    let enable = pos(&["auth", "enable"]);
    assert_eq!(enable, steps.len() - 1, "auth enable runs last");
    assert!(root < enable && pos(&["role", "add", &role]) < enable && add_user < enable);
    assert_eq!(
        overlay("Job", "etcd-auth")["spec"]["template"]["spec"]["restartPolicy"],
        "OnFailure"
    );
    assert_eq!(
        s(&overlay("ConfigMap", "etcd-client")["data"]["ETCDCTL_USER"]),
        "root"
    );
}

/// The script, run twice against a real etcd (with the image's shell: a
/// bash as `sh`, i.e. POSIX mode): both runs succeed, and the recordgate
/// user may write under the prefix only.
#[test]
fn etcd_auth_script_runs_twice_against_a_real_etcd() {
    let (c, script) = auth_script();
    let cluster = common::etcd::EtcdCluster::start(1);
    let endpoints = cluster.endpoints().join(",");
    let mut env: BTreeMap<String, String> = configmap_data("etcd-client").into_iter().collect();
    env.insert("ETCDCTL_ENDPOINTS".into(), endpoints.clone());
    for (k, from) in container_env(&c) {
        assert!(from.is_some(), "{k}");
    }
    env.insert("ETCDCTL_PASSWORD".into(), "root pw".into());
    env.insert("ETCD_ROOT_PASSWORD".into(), "root pw".into());
    env.insert("ETCD_PASSWORD".into(), "gateway pw".into());
    // Passwords never reach the script's output.
    let sh = |args: &[&str], env: &BTreeMap<String, String>| {
        let (ok, text) = run_clean(args, env);
        assert!(
            !text.contains("root pw") && !text.contains("gateway pw"),
            "{text}"
        );
        (ok, text)
    };
    for run in 1..=2 {
        let (ok, out) = sh(&["bash", "--posix", "-c", &script], &env);
        assert!(ok, "run {run} of the etcd-auth script failed:\n{out}");
    }
    let mut gw = BTreeMap::from([
        ("ETCDCTL_API".to_string(), "3".to_string()),
        ("ETCDCTL_ENDPOINTS".to_string(), endpoints),
        (
            "ETCDCTL_USER".to_string(),
            "recordgate:gateway pw".to_string(),
        ),
    ]);
    let (ok, out) = sh(&["etcdctl", "put", "/recordgate/x", "1"], &gw);
    assert!(ok, "{out}");
    let (ok, out) = sh(&["etcdctl", "put", "/other", "1"], &gw);
    assert!(!ok && out.contains("permission denied"), "{out}");
    gw.remove("ETCDCTL_USER");
    let (ok, out) = sh(&["etcdctl", "get", "/recordgate/x"], &gw);
    assert!(!ok, "auth is not on: {out}");
}
