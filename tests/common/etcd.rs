//! A throw-away etcd cluster for the integration tests: 1 or 3 real `etcd`
//! members on 127.0.0.1 with free ports, data directories in a temporary
//! directory, each member's log in `<tempdir>/member<i>.log` (not the test's
//! output). Members can be killed (SIGKILL, data kept) and restarted with the
//! same name, ports and data; everything is killed on drop.
//!
//! Every wait is bounded, and so is every `etcdctl` call (its dial and
//! command timeouts).

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long `start` and `restart` wait for `etcdctl endpoint health`.
const HEALTHY_WITHIN: Duration = Duration::from_secs(20);
/// How long `leader` waits for a leader all running members agree on.
const LEADER_WITHIN: Duration = Duration::from_secs(10);
/// Lines of a member's log quoted when it fails to come up.
const LOG_TAIL: usize = 30;

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// `None` while killed.
    child: Option<Child>,
}

/// A running etcd cluster; every member is killed (SIGKILL) on drop.
pub struct EtcdCluster {
    members: Vec<Member>,
    /// `m0=http://127.0.0.1:P0,m1=…`: the same for every (re)start.
    initial_cluster: String,
    /// Data directories and logs; removed after the members are killed.
    dir: tempfile::TempDir,
    /// Bumped by `replace`: part of the cluster token, so a replaced
    /// cluster has another cluster id.
    generation: u32,
}

impl EtcdCluster {
    /// Starts `n` (1 or 3) members on 127.0.0.1 with free client and peer
    /// ports, fast elections (heartbeat 100 ms, election timeout 1 s), watch
    /// progress notifications every second, and waits (20 s at most) until
    /// `etcdctl endpoint health` passes on all of them.
    pub fn start(n: usize) -> EtcdCluster {
        assert!(
            n == 1 || n == 3,
            "an etcd test cluster has 1 or 3 members, not {n}"
        );
        let dir = tempfile::tempdir().expect("tempdir for etcd");
        let ports = distinct_free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            dir,
            generation: 0,
        };
        for i in 0..n {
            cluster.spawn(i, "new");
        }
        let all: Vec<usize> = (0..n).collect();
        cluster.wait_healthy(&all);
        cluster
    }

    /// Client URLs (`http://127.0.0.1:PORT`) of all members, running or
    /// not, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Kills member `i` with SIGKILL and reaps it; its data directory stays.
    pub fn kill(&mut self, i: usize) {
        let mut child = self.members[i]
            .child
            .take()
            .unwrap_or_else(|| panic!("etcd member {i} is not running"));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Restarts the killed member `i` with the same name, ports and data
    /// directory (`--initial-cluster-state existing`), and waits (20 s at
    /// most) until it is healthy.
    pub fn restart(&mut self, i: usize) {
        assert!(
            self.members[i].child.is_none(),
            "etcd member {i} is still running; kill it first"
        );
        self.spawn(i, "existing");
        self.wait_healthy(&[i]);
    }

    /// Restarts several killed members at once, then waits until all are
    /// healthy: a member alone cannot be healthy while the cluster has no
    /// quorum.
    pub fn restart_together(&mut self, which: &[usize]) {
        for &i in which {
            assert!(
                self.members[i].child.is_none(),
                "etcd member {i} is still running; kill it first"
            );
            self.spawn(i, "existing");
        }
        self.wait_healthy(which);
    }

    /// Replaces the cluster with a new, empty one on the same ports (as an
    /// operator restoring or rebuilding etcd would): every member killed,
    /// its data removed, and started again with another cluster token, so
    /// the cluster id changes and revisions start over. Waits until healthy.
    pub fn replace(&mut self) {
        for i in self.running() {
            self.kill(i);
        }
        for i in 0..self.members.len() {
            let data = self.dir.path().join(format!("member{i}.etcd"));
            std::fs::remove_dir_all(&data).expect("remove etcd data directory");
        }
        self.generation += 1;
        for i in 0..self.members.len() {
            self.spawn(i, "new");
        }
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.wait_healthy(&all);
    }

    /// The index of the current leader among the running members: the
    /// member whose own id (`header.member_id` of `endpoint status`) is the
    /// `leader` every running member that knows a leader reports. Waits up
    /// to 10 s for one.
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + LEADER_WITHIN;
        loop {
            let statuses = self.statuses();
            let known: Vec<&Status> = statuses.iter().filter(|s| s.leader != 0).collect();
            if let Some(first) = known.first() {
                let agreed = known.iter().all(|s| s.leader == first.leader);
                let leader = statuses.iter().find(|s| s.member_id == first.leader);
                if let (true, Some(l)) = (agreed, leader) {
                    return l.index;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "no etcd leader among running members {:?} within {LEADER_WITHIN:?}; \
                     last statuses: {statuses:?}",
                    self.running()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `etcdctl` (API v3) against the running members' client URLs
    /// with `args`; panics if no member is running.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let running = self.running();
        assert!(!running.is_empty(), "no etcd member is running");
        let eps: Vec<String> = running.iter().map(|&i| self.endpoint(i)).collect();
        run_etcdctl(&eps, args)
    }

    /// Runs `etcdctl` (API v3) against member `i` alone (running or not).
    pub fn etcdctl_on(&self, i: usize, args: &[&str]) -> Output {
        run_etcdctl(&[self.endpoint(i)], args)
    }

    /// The cluster's current revision (`header.revision` of
    /// `etcdctl endpoint status`, the highest among the running members).
    pub fn revision(&self) -> i64 {
        self.statuses()
            .iter()
            .map(|s| s.revision)
            .max()
            .expect("no running etcd member answered endpoint status")
    }

    /// Compacts the key space to the current revision (`etcdctl compact
    /// <revision>`); panics if etcdctl fails.
    pub fn compact_now(&self) {
        let rev = self.revision().to_string();
        let out = self.etcdctl(&["compact", &rev]);
        assert!(
            out.status.success(),
            "etcdctl compact {rev} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The log file of member `i` (`<tempdir>/member<i>.log`).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("member{i}.log"))
    }

    /// The last `LOG_TAIL` lines of member `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }

    // -- internals -----------------------------------------------------------

    fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .collect()
    }

    /// Spawns member `i` with `--initial-cluster-state <state>`; its output
    /// is appended to its log file.
    fn spawn(&mut self, i: usize, state: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("open etcd log");
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("member{i}.etcd")))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!(
                "--initial-cluster-token=recordgate-test-{}",
                self.generation
            ))
            .arg("--heartbeat-interval=100")
            .arg("--election-timeout=1000")
            .arg("--experimental-watch-progress-notify-interval=1s")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        clear_etcd_env(&mut cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone etcd log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd (is /usr/bin/etcd installed?)");
        self.members[i].child = Some(child);
    }

    /// Waits until `etcdctl endpoint health` passes on all of `which`;
    /// panics (with the members' log tails) if one exits or time runs out.
    fn wait_healthy(&mut self, which: &[usize]) {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        let eps: Vec<String> = which.iter().map(|&i| self.endpoint(i)).collect();
        loop {
            for &i in which {
                let exited = self.members[i]
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    self.members[i].child = None;
                    panic!(
                        "etcd member {i} exited during startup ({status}); last lines of {}:\n{}",
                        self.log_path(i).display(),
                        self.log_tail(i)
                    );
                }
            }
            let out = run_etcdctl(&eps, &["endpoint", "health"]);
            if out.status.success() {
                return;
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = which
                    .iter()
                    .map(|&i| {
                        format!(
                            "--- member {i} ({}):\n{}",
                            self.endpoint(i),
                            self.log_tail(i)
                        )
                    })
                    .collect();
                panic!(
                    "etcd members {which:?} not healthy within {HEALTHY_WITHIN:?}: {}{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `etcdctl endpoint status -w json` of the running members, one entry
    /// per member that answered.
    fn statuses(&self) -> Vec<Status> {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        // Members that did not answer are left out (stderr, exit code 1);
        // stdout holds the ones that did.
        let Ok(Value::Array(entries)) = serde_json::from_slice::<Value>(&out.stdout) else {
            return Vec::new();
        };
        let eps = self.endpoints();
        entries
            .iter()
            .filter_map(|e| {
                let index = eps
                    .iter()
                    .position(|ep| Some(ep.as_str()) == e["Endpoint"].as_str())?;
                let st = &e["Status"];
                Some(Status {
                    index,
                    member_id: st["header"]["member_id"].as_u64()?,
                    leader: st["leader"].as_u64().unwrap_or(0),
                    revision: st["header"]["revision"].as_i64()?,
                })
            })
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// One member's answer to `endpoint status`.
#[derive(Debug)]
struct Status {
    /// The member's index in the cluster.
    index: usize,
    member_id: u64,
    /// The leader's member id as this member sees it (0: none known).
    leader: u64,
    revision: i64,
}

/// `etcdctl --endpoints=<eps> <args>` (API v3) with short dial and command
/// timeouts, so that a dead member cannot stall a call for long.
fn run_etcdctl(eps: &[String], args: &[&str]) -> Output {
    let mut cmd = Command::new("etcdctl");
    clear_etcd_env(&mut cmd);
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", eps.join(",")))
        .arg("--dial-timeout=1s")
        .arg("--command-timeout=3s")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl (is /usr/bin/etcdctl installed?)")
}

/// Removes inherited `ETCD_*` / `ETCDCTL_*` variables, which etcd and
/// etcdctl read as flags.
fn clear_etcd_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(k);
        }
    }
}

/// `n` distinct free loopback ports.
fn distinct_free_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    while ports.len() < n {
        let p = super::free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports
}
