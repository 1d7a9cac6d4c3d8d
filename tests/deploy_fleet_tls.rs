//! deploy/kubernetes-etcd-tls, the overlay of deploy/kubernetes-etcd that
//! turns TLS on for etcd with cert-manager: its files patch objects that
//! exist, its gateway settings differ from the etcd overlay's only in the
//! TLS keys and pass the real `recordgate check`, every certificate's Secret
//! is mounted where the settings, etcdctl's environment and etcd's flags
//! read it, and etcd's flags, the etcd-auth script and the gateway's
//! settings work together against a real etcd (Debian's, on loopback) with
//! a CA and certificates made here with openssl. `kubectl kustomize` runs
//! only when kubectl is on PATH.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::deploy::*;
use common::*;
use serde_yaml::Value as Yaml;

const LAYERS: [&str; 3] = [BASE, ETCD_OVERLAY, TLS_OVERLAY];
/// The keys of `policy_store.etcd` that only the TLS overlay sets.
const TLS_KEYS: [&str; 3] = ["ca_file", "cert_file", "key_file"];

fn tls(kind: &str, name: &str) -> Yaml {
    find_object(TLS_OVERLAY, kind, name)
}

/// recordgate-config's settings.yaml as `layers` render it, parsed.
fn settings_of(layers: &[&str]) -> Yaml {
    serde_yaml::from_str(&configmap_data_in(layers, "recordgate-config")["settings.yaml"]).unwrap()
}

/// cert-manager Certificates of the overlay, by secretName.
fn certificates() -> BTreeMap<String, Yaml> {
    objects_in(TLS_OVERLAY)
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == "Certificate")
        .map(|d| (s(&d["spec"]["secretName"]).to_string(), d))
        .collect()
}

/// The value of `--FLAG=` in an argv.
fn flag(argv: &[String], f: &str) -> String {
    argv.iter()
        .find_map(|a| a.strip_prefix(&format!("--{f}=")))
        .unwrap_or_else(|| panic!("no --{f} in {argv:?}"))
        .to_string()
}

/// Asserts `path` is key `key` of the Secret of one of the Certificates,
/// mounted in the container; returns that Secret's name.
fn assert_certificate_file(pod: &Yaml, c: &Yaml, path: &str, key: &str, what: &str) -> String {
    let (kind, name, got) = volume_key(pod, c, path);
    assert_eq!(kind, "secret", "{what}: {path} is not on a Secret");
    assert_eq!(got, key, "{what}: {path}");
    assert!(
        certificates().contains_key(&name),
        "{what}: {path} is in Secret {name}, which no Certificate writes"
    );
    name
}

#[test]
fn tls_overlay_lists_existing_files_and_patches_existing_objects() {
    let k = objects_in(TLS_OVERLAY)
        .into_iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "Kustomization")
        .expect("a Kustomization");
    let resources = strings(&k["resources"]);
    assert!(resources.contains(&"../kubernetes-etcd".to_string()));
    let patches: Vec<String> = k["patches"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| s(&p["path"]).to_string())
        .collect();
    let dir = repo_path(TLS_OVERLAY);
    for p in yaml_files(TLS_OVERLAY) {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            name == "kustomization.yaml" || resources.contains(&name) || patches.contains(&name),
            "{name} is neither a resource nor a patch"
        );
    }
    // Every patch targets an object of the layers below, by kind and name.
    for p in &patches {
        for d in documents(&dir.join(p)) {
            let (kind, name) = (s(&d["kind"]), s(&d["metadata"]["name"]));
            let found = [BASE, ETCD_OVERLAY].iter().any(|l| {
                objects_in(l)
                    .iter()
                    .any(|(_, o)| o["kind"] == kind && o["metadata"]["name"].as_str() == Some(name))
            });
            assert!(found, "{p} patches {kind} {name}, which nothing below has");
        }
    }
    // The Issuer chain: self-signed -> the CA Certificate -> a CA Issuer
    // that signs every other Certificate.
    let ca = tls("Certificate", "etcd-ca");
    assert_eq!(ca["spec"]["isCA"].as_bool(), Some(true));
    let selfsigned = tls("Issuer", s(&ca["spec"]["issuerRef"]["name"]));
    assert!(selfsigned["spec"]["selfSigned"].is_mapping());
    let ca_issuer = objects_in(TLS_OVERLAY)
        .into_iter()
        .map(|(_, d)| d)
        .find(|d| {
            d["kind"] == "Issuer" && d["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
        })
        .expect("an Issuer from the CA's Secret");
    for (secret, cert) in certificates() {
        if secret != s(&ca["spec"]["secretName"]) {
            assert_eq!(
                cert["spec"]["issuerRef"]["name"],
                ca_issuer["metadata"]["name"]
            );
            assert_eq!(cert["spec"]["issuerRef"]["kind"], "Issuer");
        }
    }
    // The server certificate names every member, short and qualified, and
    // loopback.
    let server = tls("Certificate", "etcd-server");
    let names: BTreeSet<String> = strings(&server["spec"]["dnsNames"]).into_iter().collect();
    for n in [
        "etcd",
        "*.etcd",
        "*.etcd.recordgate.svc",
        "*.etcd.recordgate.svc.cluster.local",
        "localhost",
    ] {
        assert!(names.contains(n), "etcd-server lacks {n}: {names:?}");
    }
    assert_eq!(strings(&server["spec"]["ipAddresses"]), ["127.0.0.1"]);
    for ep in strings(&settings_of(&LAYERS)["policy_store"]["etcd"]["endpoints"]) {
        let host = ep.trim_start_matches("https://").split(':').next().unwrap();
        let wildcard = format!("*.{}", host.split_once('.').unwrap().1);
        assert!(
            names.contains(&wildcard),
            "{ep} is not covered by {names:?}"
        );
    }

    // With kubectl at hand, render it: the certificates are in it, the
    // TLS settings replace the etcd overlay's, the seed stays.
    let Some(docs) = kubectl_render(TLS_OVERLAY) else {
        return;
    };
    for kind in ["Issuer", "Certificate"] {
        assert!(docs.iter().any(|d| d["kind"] == kind), "no {kind} rendered");
    }
    assert!(
        docs.iter().all(|d| d["kind"] != "Secret"),
        "a Secret template was rendered"
    );
    let cm = rendered(&docs, "ConfigMap", "recordgate-config");
    assert_eq!(
        cm["data"]["settings.yaml"],
        tls("ConfigMap", "recordgate-config")["data"]["settings.yaml"]
    );
    assert!(cm["data"]["policy.yaml"].is_string(), "the seed is gone");
    assert_mounts_match(|kind, name| rendered(&docs, kind, name).clone());
    // The base overlay renders too.
    kubectl_render(ETCD_OVERLAY).unwrap();
}

#[test]
fn tls_settings_differ_from_the_etcd_overlay_only_in_the_tls_keys() {
    let plain = settings_of(&[BASE, ETCD_OVERLAY]);
    let mut with_tls = settings_of(&LAYERS);
    let etcd = with_tls["policy_store"]["etcd"].as_mapping_mut().unwrap();
    for k in TLS_KEYS {
        let v = etcd
            .remove(k)
            .unwrap_or_else(|| panic!("no policy_store.etcd.{k}"));
        assert!(s(&v).starts_with("/etc/recordgate-etcd-tls/"), "{k}: {v:?}");
    }
    let endpoints = strings(&etcd["endpoints"]);
    assert!(
        endpoints.iter().all(|e| e.starts_with("https://")),
        "{endpoints:?}"
    );
    etcd.insert(
        Yaml::from("endpoints"),
        Yaml::from(
            endpoints
                .iter()
                .map(|e| e.replacen("https://", "http://", 1))
                .collect::<Vec<_>>(),
        ),
    );
    assert_eq!(
        with_tls, plain,
        "the TLS overlay's settings.yaml differs from ../kubernetes-etcd's beyond TLS"
    );
}

/// Every file etcd, etcdctl (the etcd-auth Job) and the gateway (pods and
/// the import Job) read for TLS is a key of a Certificate's Secret, mounted
/// in that container; `object(kind, name)` gives the (patched) objects.
fn assert_mounts_match(object: impl Fn(&str, &str) -> Yaml) {
    let settings = settings_of(&LAYERS);
    let etcd = &settings["policy_store"]["etcd"];
    let mut used = BTreeSet::new();
    // The gateway and the import Job: the settings' files.
    for (kind, name) in [
        ("Deployment", "recordgate"),
        ("Job", "recordgate-policy-import"),
    ] {
        let o = object(kind, name);
        let pod = &o["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let mut secrets = BTreeSet::new();
        for (k, key) in TLS_KEYS.iter().zip(["ca.crt", "tls.crt", "tls.key"]) {
            secrets.insert(assert_certificate_file(pod, c, s(&etcd[*k]), key, name));
        }
        assert_eq!(secrets.len(), 1, "{name}: one client certificate");
        used.extend(secrets);
    }
    // etcdctl in the etcd-auth Job: the etcd-client ConfigMap's files.
    let client = configmap_data_in(&LAYERS, "etcd-client");
    let job = object("Job", "etcd-auth");
    let pod = &job["spec"]["template"]["spec"];
    for (var, key) in [
        ("ETCDCTL_CACERT", "ca.crt"),
        ("ETCDCTL_CERT", "tls.crt"),
        ("ETCDCTL_KEY", "tls.key"),
    ] {
        used.insert(assert_certificate_file(
            pod,
            &pod["containers"][0],
            &client[var],
            key,
            var,
        ));
    }
    assert!(client["ETCDCTL_ENDPOINTS"]
        .split(',')
        .all(|e| e.starts_with("https://")));
    // etcd: its flags' files.
    let sts = object("StatefulSet", "etcd");
    let pod = &sts["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let argv = strings(&c["command"]);
    for prefix in ["", "peer-"] {
        for (f, key) in [
            ("cert-file", "tls.crt"),
            ("key-file", "tls.key"),
            ("trusted-ca-file", "ca.crt"),
        ] {
            let f = format!("{prefix}{f}");
            used.insert(assert_certificate_file(pod, c, &flag(&argv, &f), key, &f));
        }
        assert_eq!(flag(&argv, &format!("{prefix}client-cert-auth")), "true");
    }
    for f in [
        "listen-client-urls",
        "advertise-client-urls",
        "listen-peer-urls",
        "initial-advertise-peer-urls",
    ] {
        assert!(flag(&argv, f).starts_with("https://"), "--{f}");
    }
    // Every Certificate but the CA's is used (the CA reaches everyone as
    // ca.crt).
    let mut issued: BTreeSet<String> = certificates().into_keys().collect();
    issued.remove(s(&tls("Certificate", "etcd-ca")["spec"]["secretName"]));
    assert_eq!(
        used, issued,
        "Certificates nobody mounts, or mounts of no Certificate"
    );
}

#[test]
fn every_certificate_is_mounted_where_settings_and_flags_read_it() {
    // The patches alone add both the mounts and their volumes.
    assert_mounts_match(tls);
}

#[test]
fn tls_settings_pass_recordgate_check() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let mut settings = settings_of(&LAYERS);
    // The certificates where the pod has them: here, files made by openssl.
    for (k, file) in TLS_KEYS.iter().zip(["ca.crt", "tls.crt", "tls.key"]) {
        settings["policy_store"]["etcd"][*k] =
            Yaml::from(pki.join("client").join(file).display().to_string());
    }
    let file = dir.path().join("settings.yaml");
    std::fs::write(&file, serde_yaml::to_string(&settings).unwrap()).unwrap();
    let mut vars = BTreeSet::new();
    env_refs(&settings, &mut vars);
    assert_check_passes(&file, &vars, "deploy/kubernetes-etcd-tls settings.yaml");
}

/// A CA and, signed by it, `server/` (127.0.0.1, localhost; server and
/// client use, as etcd's own gateway needs) and `client/` (CN recordgate)
/// certificates, each directory laid out as cert-manager's Secrets are:
/// ca.crt, tls.crt, tls.key. Returns the directory holding both.
fn make_pki(dir: &Path) -> PathBuf {
    let openssl = |args: &[&str]| openssl(dir, args);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-days",
        "2",
        "-subj",
        "/CN=recordgate test etcd CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&args);
    for (name, cn, ext) in [
        (
            "server",
            "etcd",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        ("client", "recordgate", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::create_dir(dir.join(name)).unwrap();
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let key = format!("{name}/tls.key");
        let csr = format!("{name}.csr");
        let subj = format!("/CN={cn}");
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-subj", &subj, "-keyout", &key, "-out", &csr]);
        openssl(&args);
        let ext = format!("{name}.ext");
        let crt = format!("{name}/tls.crt");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ]);
        std::fs::copy(dir.join("ca.crt"), dir.join(name).join("ca.crt")).unwrap();
    }
    dir.to_path_buf()
}

/// An etcd process killed on drop.
struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// etcd with the StatefulSet patch's flags (loopback ports, files made
/// here), the etcd-auth script with the etcd-client ConfigMap's TLS
/// environment (run twice), then the gateway's TLS settings: `policy
/// import --if-empty` seeds it, a second one writes nothing, `policy
/// export` reads it back. A client without a certificate is refused.
#[test]
fn tls_flags_auth_script_and_gateway_settings_work_against_a_real_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (client_port, peer_port, metrics_port) = (free_port(), free_port(), free_port());
    let endpoint = format!("https://127.0.0.1:{client_port}");

    // etcd: the patch's flags, with loopback URLs and the files made here.
    let sts = tls("StatefulSet", "etcd");
    let argv = strings(&sts["spec"]["template"]["spec"]["containers"][0]["command"]);
    let mut args: Vec<String> = Vec::new();
    for a in &argv[1..] {
        let (f, v) = a.split_once('=').unwrap();
        let v = match f {
            "--name" => "etcd-0".to_string(),
            "--data-dir" => dir.path().join("data").display().to_string(),
            "--listen-client-urls" | "--advertise-client-urls" => endpoint.clone(),
            "--listen-peer-urls" | "--initial-advertise-peer-urls" => {
                format!("https://127.0.0.1:{peer_port}")
            }
            "--initial-cluster" => format!("etcd-0=https://127.0.0.1:{peer_port}"),
            "--listen-metrics-urls" => format!("http://127.0.0.1:{metrics_port}"),
            _ if v.starts_with("/etc/etcd/tls/") => {
                // server/ and peer/ both get the server files (127.0.0.1).
                let file = Path::new(v).file_name().unwrap();
                pki.join("server").join(file).display().to_string()
            }
            _ => v.to_string(),
        };
        args.push(format!("{f}={v}"));
    }
    let mut cmd = Command::new("etcd");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(k);
        }
    }
    let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
    let _etcd = Etcd(
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run etcd (is /usr/bin/etcd installed?)"),
    );

    // etcdctl's environment: the etcd-client ConfigMap, files and endpoint
    // mapped to here.
    let mut env: BTreeMap<String, String> = configmap_data_in(&LAYERS, "etcd-client")
        .into_iter()
        .collect();
    for v in ["ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY"] {
        let file = Path::new(&env[v]).file_name().unwrap().to_owned();
        env.insert(
            v.into(),
            pki.join("client").join(file).display().to_string(),
        );
    }
    env.insert("ETCDCTL_ENDPOINTS".into(), endpoint.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut probe = env.clone();
        probe.remove("ETCDCTL_USER");
        let (ok, out) = run_clean(&["etcdctl", "endpoint", "health"], &probe);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "etcd with the overlay's flags is not healthy:\n{out}\n{}",
            std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Without a client certificate etcd refuses.
    let mut no_cert = env.clone();
    no_cert.remove("ETCDCTL_CERT");
    no_cert.remove("ETCDCTL_KEY");
    no_cert.remove("ETCDCTL_USER");
    no_cert.insert("ETCDCTL_COMMAND_TIMEOUT".into(), "2s".into());
    let (ok, out) = run_clean(&["etcdctl", "get", "/recordgate/x"], &no_cert);
    assert!(!ok, "etcd answered a client without a certificate: {out}");

    // The etcd-auth script, twice.
    let job = tls("Job", "etcd-auth");
    assert!(
        job["spec"]["template"]["spec"]["containers"][0]["command"].is_null(),
        "the script is the base's"
    );
    let base_job = find_object(ETCD_OVERLAY, "Job", "etcd-auth");
    let script =
        strings(&base_job["spec"]["template"]["spec"]["containers"][0]["command"])[2].clone();
    env.insert("ETCDCTL_PASSWORD".into(), "root-pw".into());
    env.insert("ETCD_ROOT_PASSWORD".into(), "root-pw".into());
    env.insert("ETCD_PASSWORD".into(), "gateway-pw".into());
    for run in 1..=2 {
        let (ok, out) = run_clean(&["bash", "--posix", "-c", &script], &env);
        assert!(ok, "etcd-auth run {run} over TLS:\n{out}");
    }

    // The gateway's settings: endpoint, files and cache mapped to here.
    let mut settings = settings_of(&LAYERS);
    let etcd = &mut settings["policy_store"]["etcd"];
    etcd["endpoints"] = Yaml::from(vec![endpoint.clone()]);
    for (k, file) in TLS_KEYS.iter().zip(["ca.crt", "tls.crt", "tls.key"]) {
        etcd[*k] = Yaml::from(pki.join("client").join(file).display().to_string());
    }
    settings["policy"] = Yaml::from("policy-cache.yaml");
    let file = dir.path().join("settings.yaml");
    std::fs::write(&file, serde_yaml::to_string(&settings).unwrap()).unwrap();
    let seed = dir.path().join("seed.yaml");
    std::fs::write(
        &seed,
        &configmap_data_in(&LAYERS, "recordgate-config")["policy.yaml"],
    )
    .unwrap();
    let mut vars = BTreeMap::from([("ETCD_PASSWORD".to_string(), "gateway-pw".to_string())]);
    let mut names = BTreeSet::new();
    env_refs(
        &serde_yaml::from_str(&std::fs::read_to_string(&seed).unwrap()).unwrap(),
        &mut names,
    );
    for n in names {
        vars.insert(n, "placeholder-value-for-check".into());
    }
    let import = find_object(ETCD_OVERLAY, "Job", "recordgate-policy-import");
    let mut import_args = strings(&import["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(import_args.contains(&"--if-empty".to_string()));
    import_args[2] = seed.display().to_string();
    let ci = import_args.iter().position(|a| a == "--config").unwrap();
    import_args[ci + 1] = file.display().to_string();
    let bin = env!("CARGO_BIN_EXE_recordgate");
    let mut argv: Vec<&str> = vec![bin];
    argv.extend(import_args.iter().map(String::as_str));
    let (ok, out) = run_clean(&argv, &vars);
    assert!(ok, "the import Job's command over TLS:\n{out}");
    let (ok, out) = run_clean(&argv, &vars);
    assert!(
        ok && out.contains("etcd holds a policy already"),
        "a second seed:\n{out}"
    );
    let config = file.display().to_string();
    let (ok, out) = run_clean(&[bin, "policy", "export", "--config", &config], &vars);
    assert!(ok && out.contains("ops-owner"), "export over TLS:\n{out}");
}
