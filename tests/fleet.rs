//! A fleet sharing one policy through a real etcd (issue 19): Debian's etcd
//! started by the test (3 members on loopback, temporary data directories)
//! and real gateway processes with `policy_store.kind: etcd`.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::etcd::EtcdCluster;
use common::fleet::*;
use common::*;
use serde_json::{json, Value};

#[test]
fn a_change_through_one_replica_is_in_force_at_the_others_within_a_second() {
    let cluster = EtcdCluster::start(3);
    import(&cluster, &demo_policy());
    let up = TestUpstream::capture_like();
    let a = replica(&up, &cluster, &demo_policy());
    let c = replica(&up, &cluster, &demo_policy());
    let mut seen = Vec::new();
    for i in 0..20 {
        let value = format!("propagated {i}");
        a.post_form(
            "/clients/set_description",
            OWNER,
            &[("for_client_id", "login-app"), ("description", &value)],
        )
        .assert_ok();
        // In force at A when acknowledged; at C within a second.
        assert_eq!(
            description(&a, "login-app").as_deref(),
            Some(value.as_str())
        );
        seen.push(wait_for("propagation to C", Duration::from_secs(1), || {
            description(&c, "login-app").as_deref() == Some(value.as_str())
        }));
    }
    seen.sort();
    println!(
        "propagation A -> C over 20 changes: p50 {:?}, p99 {:?}",
        seen[seen.len() / 2],
        seen[seen.len() - 1]
    );
    let (sa, sc) = (status(&a), status(&c));
    assert_eq!(sa["policy"]["hash"], sc["policy"]["hash"]);
    // Each replica's last-good copy follows, written off the commit path.
    for gw in [&a, &c] {
        wait_for("the cache to follow", Duration::from_secs(3), || {
            std::fs::read_to_string(gw.dir.path().join("policy.yaml"))
                .is_ok_and(|t| t.contains("\"propagated 19\""))
        });
    }
    assert_eq!(sc["store"]["kind"], "etcd");
    assert_eq!(sc["store"]["connected"], true);
    let metrics = c.admin_get("/metrics").text();
    for line in [
        "recordgate_policy_store_connected 1",
        "recordgate_policy_store_behind 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in /metrics"
        );
    }
    assert!(metrics.contains("recordgate_policy_store_applied_revision "));
    assert!(metrics.contains("recordgate_policy_store_seconds_since_sync "));
}

/// Every client's description (`None`: the client is gone), as `gw` lists
/// them with `owner`'s credentials.
fn descriptions(gw: &Gateway, owner: (&str, &str)) -> Option<BTreeMap<String, String>> {
    let r = gw.post_form("/clients/list", Some(owner), &[]);
    if r.status != 200 {
        return None;
    }
    Some(
        r.json()["results"]
            .as_array()?
            .iter()
            .map(|c| {
                (
                    c["client_id"].as_str().unwrap().to_string(),
                    text_of(&c["description"]),
                )
            })
            .collect(),
    )
}

/// A description as text (the list shows none as "", the audit as null).
fn text_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn owners(gw: &Gateway, owner: (&str, &str)) -> usize {
    let v = gw.post_form("/clients/list", Some(owner), &[]).json();
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["features"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "owner"))
        })
        .count()
}

#[test]
fn concurrent_writers_never_lose_a_change_and_one_owner_always_remains() {
    let cluster = EtcdCluster::start(3);
    let policy = demo_policy().replace(
        "  # A login client",
        "  second-owner:\n    secret: second-secret\n    features: [owner]\n\n  # A login client",
    );
    import(&cluster, &policy);
    let up = TestUpstream::capture_like();
    let a = replica(&up, &cluster, &policy);
    let b = replica(&up, &cluster, &policy);
    let c = replica(&up, &cluster, &policy);
    let initial = descriptions(&a, ("demo-owner", "owner-secret")).unwrap();
    // Two writers through A and B on the same client (every change races
    // the other's), a third through C on another client: 200 changes.
    const N: usize = 80;
    let writer = |gw: &Gateway, client: &'static str, tag: &'static str, n: usize| {
        let mut acked = Vec::new();
        for i in 0..n {
            let value = format!("{tag}-{i}");
            let r = gw.post_form(
                "/clients/set_description",
                OWNER,
                &[("for_client_id", client), ("description", &value)],
            );
            match r.status {
                200 => acked.push(value),
                // Lost the race more than `conflict_retries` times: nothing
                // changed, so it must have no audit entry.
                409 => {}
                other => panic!("unexpected {other}: {}", r.text()),
            }
        }
        acked
    };
    let acked: Vec<String> = std::thread::scope(|s| {
        let ta = s.spawn(|| writer(&a, "partner-readonly", "a", N));
        let tb = s.spawn(|| writer(&b, "partner-readonly", "b", N));
        let tc = s.spawn(|| writer(&c, "crm-writer", "c", N / 2));
        [ta, tb, tc]
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    // Then two owners delete each other through two replicas at once: the
    // last-owner rule holds across the fleet.
    let deletions = std::thread::scope(|s| {
        let da = s.spawn(|| {
            a.post_form(
                "/clients/delete",
                Some(("second-owner", "second-secret")),
                &[("client_id_for_deletion", "demo-owner")],
            )
            .status
        });
        let db = s.spawn(|| {
            b.post_form(
                "/clients/delete",
                OWNER,
                &[("client_id_for_deletion", "second-owner")],
            )
            .status
        });
        [da.join().unwrap(), db.join().unwrap()]
    });
    assert_eq!(
        deletions.iter().filter(|s| **s == 200).count(),
        1,
        "exactly one of two owners deleting each other succeeds: {deletions:?}"
    );
    assert!(
        acked.len() > N,
        "only {} of {} changes acknowledged",
        acked.len(),
        5 * N / 2
    );

    // The audit entries in commit order are the history: each acknowledged
    // change exactly once, nothing else, and each applied to the state the
    // one before it left (a change is never compiled against an older
    // policy, never merged). Replayed, they give the final policy.
    let entries: Vec<(i64, Value)> = audit_entries(&cluster)
        .into_iter()
        .filter(|(_, e)| e["endpoint"] != "policy import")
        .collect();
    let mut described: Vec<String> = entries
        .iter()
        .filter(|(_, e)| e["endpoint"] == "/clients/set_description")
        .map(|(_, e)| e["after"]["description"].as_str().unwrap().to_string())
        .collect();
    described.sort();
    let mut expected = acked.clone();
    expected.sort();
    assert_eq!(
        described, expected,
        "audit entries against acknowledged changes"
    );
    assert_eq!(
        entries.len(),
        acked.len() + 1,
        "the changes and one deletion"
    );
    let mut model: BTreeMap<String, String> = initial;
    for (revision, e) in &entries {
        let target = e["target"].as_str().unwrap();
        let before = text_of(&e["before"]["description"]);
        assert_eq!(
            model.get(target),
            Some(&before),
            "revision {revision}: a change to {target} was made on a state other than the one committed before it: {e}"
        );
        if e["after"].is_null() {
            model.remove(target);
        } else {
            model.insert(target.to_string(), text_of(&e["after"]["description"]));
        }
    }
    let survivor = if model.contains_key("demo-owner") {
        ("demo-owner", "owner-secret")
    } else {
        ("second-owner", "second-secret")
    };
    // Every replica holds exactly the replayed policy, with one owner.
    for gw in [&a, &b, &c] {
        wait_for(
            "convergence on the replayed policy",
            Duration::from_secs(3),
            || descriptions(gw, survivor).as_ref() == Some(&model),
        );
        assert_eq!(owners(gw, survivor), 1);
    }
    let hashes: Vec<Value> = [&a, &b, &c]
        .iter()
        .map(|g| status(g)["policy"]["hash"].clone())
        .collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    // Each replica's own audit log is the fleet's trail: every change made
    // through any replica, once (the import came before they started).
    for gw in [&a, &b, &c] {
        let path = gw.dir.path().join("policy.audit.jsonl");
        let complete = wait_until(Duration::from_secs(3), || {
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .count()
                == entries.len()
        });
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            complete,
            "{} lines in {}",
            text.lines().count(),
            path.display()
        );
        let ids: std::collections::BTreeSet<String> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["request_id"].to_string())
            .collect();
        assert_eq!(ids.len(), entries.len(), "an entry logged twice");
    }
}

#[test]
fn a_hand_edit_that_is_not_whole_is_never_served() {
    let cluster = EtcdCluster::start(1);
    import(&cluster, &demo_policy());
    let up = TestUpstream::capture_like();
    let a = replica(&up, &cluster, &demo_policy());
    let before = status(&a)["policy"]["hash"].clone();
    let out = cluster.etcdctl(&["put", "/recordgate/clients/demo-owner", "{not json"]);
    assert!(out.status.success());
    wait_for("the replica to notice", Duration::from_secs(3), || {
        status(&a)["store"]["pending"].is_string()
    });
    assert_eq!(status(&a)["policy"]["hash"], before);
    a.post_form("/clients/list", OWNER, &[]).assert_ok();
    // A valid import puts a whole policy back.
    import(&cluster, &demo_policy());
    wait_for("recovery", Duration::from_secs(3), || {
        status(&a)["store"]["pending"].is_null()
    });
}

#[test]
fn with_etcd_down_calls_are_decided_and_writes_refused_then_a_restart_serves_the_cache() {
    let mut cluster = EtcdCluster::start(3);
    import(&cluster, &demo_policy());
    let up = TestUpstream::capture_like();
    let a = replica(&up, &cluster, &demo_policy());
    // Two of three members gone: no quorum.
    cluster.kill(1);
    cluster.kill(2);
    let r = a.get(
        "/entity?type_name=user&id=1",
        Some(("partner-readonly", "partner-secret")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A write is refused within seconds: either nothing was changed (etcd
    // refused it), or, when it got no answer at all (a member may still
    // hold it in its log), the caller is told it was not confirmed. Which
    // one depends on when the members notice they have no leader.
    let started = Instant::now();
    let w = a.post_form(
        "/clients/set_description",
        OWNER,
        &[
            ("for_client_id", "login-app"),
            ("description", "while down"),
        ],
    );
    assert_eq!(w.status, 503, "{}", w.text());
    let confirmed_nothing = w.text().contains("nothing was changed");
    assert!(
        confirmed_nothing || w.text().contains("not confirmed"),
        "{}",
        w.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_ne!(description(&a, "login-app").as_deref(), Some("while down"));

    // A replica that starts now serves its cache, marked stale.
    cluster.kill(0);
    let cache = std::fs::read_to_string(a.dir.path().join("policy.yaml")).unwrap();
    let b = replica(&up, &cluster, &cache);
    let r = b.get(
        "/entity?type_name=user&id=1",
        Some(("partner-readonly", "partner-secret")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(status(&b)["store"]["stale"], true);

    // Back up: writes work again and both replicas converge.
    cluster.restart_together(&[0, 1, 2]);
    wait_for("writes to resume", Duration::from_secs(15), || {
        a.post_form(
            "/clients/set_description",
            OWNER,
            &[("for_client_id", "login-app"), ("description", "after")],
        )
        .status
            == 200
    });
    let converged = wait_until(Duration::from_secs(15), || {
        description(&b, "login-app").as_deref() == Some("after")
    });
    assert!(
        converged,
        "the started-stale replica did not converge: {}\n{}",
        status(&b),
        b.stderr()
            .lines()
            .filter(|l| l.contains("etcd") || l.contains("policy"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(wait_until(Duration::from_secs(2), || status(&b)["store"]
        ["stale"]
        == false));
    // The refused write is nowhere, or, if etcd carried it out after all
    // (only possible when it was not confirmed), it is in the history once
    // and in A's own audit log: never in force without a trace.
    let traces = audit_entries(&cluster)
        .iter()
        .filter(|(_, e)| e["after"]["description"] == "while down")
        .count();
    if confirmed_nothing {
        assert_eq!(
            traces, 0,
            "a write answered 'nothing was changed' committed"
        );
    } else {
        assert!(traces <= 1);
        let logged = wait_until(Duration::from_secs(3), || {
            std::fs::read_to_string(a.dir.path().join("policy.audit.jsonl"))
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["after"]["description"]
                        == "while down"
                })
                .count()
                == traces
        });
        assert!(
            logged,
            "A's audit log and etcd's history ({traces}) disagree: {}\n{}",
            std::fs::read_to_string(a.dir.path().join("policy.audit.jsonl")).unwrap_or_default(),
            a.stderr()
                .lines()
                .filter(|l| l.contains("etcd"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn writes_resume_after_the_leader_is_killed() {
    let mut cluster = EtcdCluster::start(3);
    import(&cluster, &demo_policy());
    let up = TestUpstream::capture_like();
    let a = replica(&up, &cluster, &demo_policy());
    let b = replica(&up, &cluster, &demo_policy());
    let leader = cluster.leader();
    cluster.kill(leader);
    wait_for(
        "writes after the leader's death",
        Duration::from_secs(15),
        || {
            a.post_form(
                "/clients/set_description",
                OWNER,
                &[
                    ("for_client_id", "login-app"),
                    ("description", "new leader"),
                ],
            )
            .status
                == 200
        },
    );
    wait_for("B to see it", Duration::from_secs(15), || {
        description(&b, "login-app").as_deref() == Some("new leader")
    });
    assert_eq!(status(&a)["policy"]["hash"], status(&b)["policy"]["hash"]);
}

#[test]
fn a_replica_paused_across_a_compaction_reads_everything_again_and_converges() {
    let mut cluster = EtcdCluster::start(1);
    import(&cluster, &demo_policy());
    let up = TestUpstream::capture_like();
    let a = replica(&up, &cluster, &demo_policy());
    let b = replica(&up, &cluster, &demo_policy());
    signal_pid(b.pid(), "STOP");
    // B's watch connection breaks while it is paused, before the changes:
    // it comes back asking for revisions etcd has compacted away.
    cluster.kill(0);
    cluster.restart(0);
    for i in 0..5 {
        let value = format!("while paused {i}");
        wait_for("a write through A", Duration::from_secs(10), || {
            a.post_form(
                "/clients/set_description",
                OWNER,
                &[("for_client_id", "login-app"), ("description", &value)],
            )
            .status
                == 200
        });
    }
    cluster.compact_now();
    signal_pid(b.pid(), "CONT");
    let converged = wait_until(Duration::from_secs(15), || {
        description(&b, "login-app").as_deref() == Some("while paused 4")
    });
    assert!(converged, "B did not converge: {}", status(&b));
    assert_eq!(status(&a)["policy"]["hash"], status(&b)["policy"]["hash"]);
    assert!(
        b.stderr().contains("fell behind a compaction"),
        "B never met the compaction: {}",
        b.stderr()
    );
}

#[test]
fn a_replica_killed_right_after_a_commit_has_the_change_on_restart() {
    let cluster = EtcdCluster::start(1);
    import(&cluster, &demo_policy());
    let up = TestUpstream::capture_like();
    let a = replica(&up, &cluster, &demo_policy());
    a.post_form(
        "/clients/set_description",
        OWNER,
        &[("for_client_id", "login-app"), ("description", "committed")],
    )
    .assert_ok();
    drop(a); // SIGKILL right after the acknowledgement
    let a = replica(&up, &cluster, &demo_policy());
    assert_eq!(description(&a, "login-app").as_deref(), Some("committed"));
}

/// Propagation (commit through A to in force at B) and write
/// acknowledgement latency, for the demo policy and one of 100,000
/// clients. A measurement, not a check: run with
/// `cargo test --release --test fleet -- --ignored --nocapture measure`.
#[test]
#[ignore]
fn measure_propagation_and_write_latency() {
    for extra in [0usize, 100_000] {
        let cluster = EtcdCluster::start(3);
        let mut policy = demo_policy();
        for i in 0..extra {
            policy.push_str(&format!(
                "\n  bulk-{i:06}:\n    secret: s{i}\n    features: [direct_read_access]\n    whitelist: [\"10.{}.{}.0/24\"]\n",
                (i >> 8) & 255,
                i & 255
            ));
        }
        let started = Instant::now();
        import(&cluster, &policy);
        let import_time = started.elapsed();
        let up = TestUpstream::capture_like();
        let a = replica(&up, &cluster, &policy);
        let b = replica(&up, &cluster, &policy);
        let (mut acks, mut seen) = (Vec::new(), Vec::new());
        for i in 0..20 {
            let value = format!("measured {i}");
            let sent = Instant::now();
            a.post_form(
                "/clients/set_description",
                OWNER,
                &[("for_client_id", "login-app"), ("description", &value)],
            )
            .assert_ok();
            acks.push(sent.elapsed());
            let hash = a.admin_get("/status").json()["policy"]["hash"].clone();
            wait_for("propagation", Duration::from_secs(60), || {
                b.admin_get("/status").json()["policy"]["hash"] == hash
            });
            seen.push(sent.elapsed());
        }
        acks.sort();
        seen.sort();
        if extra == 0 {
            // Requests never touch etcd: the same calls through a replica
            // with the file store and one with the etcd store, alternating.
            let file_store = GatewayBuilder::new(&up).policy(&policy).start();
            let rate = |gw: &Gateway| {
                let until = Instant::now() + Duration::from_secs(2);
                let done = std::sync::atomic::AtomicUsize::new(0);
                std::thread::scope(|s| {
                    for _ in 0..4 {
                        s.spawn(|| {
                            let client = http_client();
                            while Instant::now() < until {
                                let r = client
                                    .get(gw.url("/entity?type_name=user&id=1"))
                                    .header(
                                        "authorization",
                                        basic("partner-readonly", "partner-secret"),
                                    )
                                    .send()
                                    .unwrap();
                                assert_eq!(r.status(), 200);
                                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        });
                    }
                });
                done.into_inner() as f64 / 2.0
            };
            for round in 0..3 {
                let (f, e) = (rate(&file_store), rate(&a));
                println!(
                    "round {round}: file store {f:.0} req/s, etcd store {e:.0} req/s, ratio {:.2}",
                    e / f
                );
            }
        }
        println!(
            "clients {}: import {:?}; write ack p50 {:?} p99 {:?}; in force at B p50 {:?} p99 {:?}",
            extra + 6,
            import_time,
            acks[10],
            acks[19],
            seen[10],
            seen[19]
        );
    }
}

/// A CA made here, and a certificate it signed for 127.0.0.1.
fn test_ca(dir: &std::path::Path, name: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-days",
        "2",
        "-subj",
        "/CN=recordgate test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(dir, &args);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let cert = format!("{name}.pem");
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-subj", "/CN=etcd", "-keyout", &key, "-out", &csr]);
    openssl(dir, &args);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            &cert,
        ],
    );
}

#[test]
fn the_store_speaks_tls_to_etcd_and_refuses_a_certificate_of_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    test_ca(d, "etcd");
    test_ca(d, "other");
    let (client, peer) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client}");
    let mut etcd = std::process::Command::new("etcd")
        .args([
            "--name=t0",
            &format!("--data-dir={}", d.join("data").display()),
            &format!("--listen-client-urls={url}"),
            &format!("--advertise-client-urls={url}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            &format!("--initial-cluster=t0=http://127.0.0.1:{peer}"),
            &format!("--cert-file={}", d.join("etcd.pem").display()),
            &format!("--key-file={}", d.join("etcd.key").display()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(d.join("etcd.log")).unwrap())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _etcd = Kill(&mut etcd);
    let store = |ca: &str| {
        json!({"kind": "etcd", "etcd": {
            "endpoints": [url.clone()],
            "ca_file": d.join(ca).display().to_string(),
            "request_timeout_ms": 1000,
            "connect_timeout_ms": 500
        }})
    };
    // Up within a few seconds; the import is the check.
    let imported = wait_until(Duration::from_secs(10), || {
        import_with(store("etcd-ca.pem"), &demo_policy())
            .status
            .success()
    });
    assert!(
        imported,
        "import over TLS failed: {}\n{}",
        String::from_utf8_lossy(&import_with(store("etcd-ca.pem"), &demo_policy()).stderr),
        std::fs::read_to_string(d.join("etcd.log")).unwrap_or_default()
    );
    // A server certificate of a CA the store does not trust: refused.
    let out = import_with(store("other-ca.pem"), &demo_policy());
    assert!(!out.status.success());
    // A replica over TLS: in force, and its writes commit.
    let up = TestUpstream::capture_like();
    let a = GatewayBuilder::new(&up)
        .policy(&demo_policy())
        .setting("policy_store", store("etcd-ca.pem"))
        .metrics(json!({}))
        .start();
    assert_eq!(status(&a)["store"]["connected"], true);
    a.post_form(
        "/clients/set_description",
        OWNER,
        &[("for_client_id", "login-app"), ("description", "over tls")],
    )
    .assert_ok();
    assert_eq!(description(&a, "login-app").as_deref(), Some("over tls"));
}

#[test]
fn import_replaces_the_policy_unless_if_empty_finds_one_and_export_reads_it_back() {
    let cluster = EtcdCluster::start(1);
    // --if-empty on an empty etcd imports.
    let out = policy_cli(
        store_setting(&cluster),
        Some(&demo_policy()),
        &["--if-empty"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.starts_with("imported "), "{stdout}");
    let first = exported_hash(&cluster);
    assert!(stdout.contains(&first), "{stdout} / {first}");
    // The export is a policy `check` accepts, with the same hash.
    let exported =
        String::from_utf8(policy_cli(store_setting(&cluster), None, &[]).stdout).unwrap();
    let changed = exported.replace(
        "Read-only partner limited",
        "Read-only partner (edited), limited",
    );
    assert_ne!(
        changed, exported,
        "the demo policy's partner description moved"
    );
    // Run again with another policy: --if-empty writes nothing.
    let out = policy_cli(store_setting(&cluster), Some(&changed), &["--if-empty"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("holds a policy already"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(exported_hash(&cluster), first);
    // Without it the import replaces the policy; an invalid file changes nothing.
    import(&cluster, &changed);
    let second = exported_hash(&cluster);
    assert_ne!(second, first);
    let out = import_with(
        store_setting(&cluster),
        "clients: {nobody: {features: [fly]}}\n",
    );
    assert!(!out.status.success());
    assert_eq!(exported_hash(&cluster), second);
}
