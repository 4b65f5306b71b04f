//! A real etcd cluster on 127.0.0.1 for the cluster tests
//! (tests/tests/cluster.rs, docs/SCALE.md): members with their own ports
//! and data dirs in a temporary directory, started by the test and killed
//! when it ends (also when it fails).

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Whether Debian's `etcd-server` and `etcd-client` are installed; a test
/// is reported skipped when not (and fails under `CI=true`).
pub fn etcd_available() -> bool {
    let ok = |bin: &str, arg: &str| {
        Command::new(bin)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    blink_sdk::testing::require(
        ok("etcd", "--version") && ok("etcdctl", "version"),
        "etcd is not installed (apt-get install etcd-server etcd-client)",
    )
}

struct Member {
    name: String,
    client_port: u16,
    child: Option<Child>,
}

/// An etcd cluster of loopback members.
pub struct Etcd {
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Start `n` members and wait (bounded) until every one is healthy. A
    /// member that finds its port taken after all (another program bound
    /// it between the check and etcd's bind) makes a new attempt on new
    /// ports, at most three.
    pub fn start(n: usize) -> Self {
        let mut taken = String::new();
        for _ in 0..3 {
            match Self::try_start(n) {
                Ok(etcd) => return etcd,
                Err(logs) => taken = logs,
            }
        }
        panic!("etcd found its ports taken three times:\n{taken}");
    }

    /// One attempt; `Err` with the logs when a member's port was taken.
    fn try_start(n: usize) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("blink-etcd-")
            .tempdir()
            .expect("tempdir");
        let mut distinct = std::collections::BTreeSet::new();
        while distinct.len() < 2 * n {
            distinct.insert(crate::free_port());
        }
        let distinct: Vec<u16> = distinct.into_iter().collect();
        let ports: Vec<(u16, u16)> = distinct.chunks(2).map(|p| (p[0], p[1])).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.into_iter().enumerate() {
            let name = format!("m{i}");
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("log");
            let child = Command::new("etcd")
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "blink-test",
                    // Fast elections: a killed member's loss is noticed soon.
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "500",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn etcd");
            members.push(Member {
                name,
                client_port: client,
                child: Some(child),
            });
        }
        let mut etcd = Self { members, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = etcd.etcdctl(&["endpoint", "health"]);
            if out.status.success() {
                break;
            }
            let exited = etcd.members.iter_mut().any(|m| {
                m.child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_some())
            });
            if exited {
                let logs = etcd.logs();
                assert!(
                    logs.contains("address already in use"),
                    "an etcd member exited:\n{logs}"
                );
                return Err(logs);
            }
            assert!(
                Instant::now() < deadline,
                "etcd never became healthy: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                etcd.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(etcd)
    }

    /// The client URLs of the members still running.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// `etcd_endpoints = [...]` of every member, for a `[cluster]` table.
    pub fn endpoints_toml(&self) -> String {
        let list: Vec<String> = self.endpoints().iter().map(|e| format!("{e:?}")).collect();
        format!("[{}]", list.join(", "))
    }

    /// `etcdctl` against the running members.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .args(["--dial-timeout", "2s", "--command-timeout", "5s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl")
    }

    /// The keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.etcdctl(&["get", "--prefix", "--keys-only", prefix]);
        assert!(out.status.success(), "etcdctl get: {:?}", out);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The value at `key`, if any.
    pub fn value(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["get", "--print-value-only", key]);
        assert!(out.status.success(), "etcdctl get: {:?}", out);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (!text.is_empty()).then_some(text)
    }

    /// The index of the member that leads now.
    pub fn leader(&self) -> usize {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        assert!(out.status.success(), "etcdctl endpoint status: {out:?}");
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        let list = list.as_array().expect("a list");
        let running: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].child.is_some())
            .collect();
        let position = list
            .iter()
            .position(|s| s["Status"]["header"]["member_id"] == s["Status"]["leader"])
            .expect("a leader");
        running[position]
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every member's log, for a failure message.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let path: PathBuf = self.dir.path().join(format!("{}.log", m.name));
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                format!(
                    "--- {}\n{}",
                    m.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// The API token of every node and router of a [`Cluster`].
pub const TOKEN: &str = "cluster-test-token";
/// The key prefix of a [`Cluster`]'s records.
pub const PREFIX: &str = "/blink-test";

/// A cluster under test: a 3-member etcd, nodes `node-0`.., routers, and
/// the keys they share: the routers' SSH host key (one for all) and the
/// router key the nodes trust for relayed logins.
pub struct Cluster {
    pub etcd: Etcd,
    pub nodes: Vec<(crate::Blink, crate::Server)>,
    pub routers: Vec<(crate::Blink, crate::Server)>,
    /// `router_key`, `router_key.pub`, `host_key` (the routers').
    pub keys: tempfile::TempDir,
    /// What `start_with` asked for beyond the defaults.
    setup: Setup,
}

/// How a cluster's servers are configured beyond the defaults.
#[derive(Debug, Default)]
pub struct Setup {
    /// Lines every node's `[cluster]` table gains (sub-tables may follow).
    pub node_extra: String,
    /// A router's export settings, in place of `export_dir = <shared dir>`
    /// (sub-tables may follow).
    pub router_exports: Option<String>,
    /// Environment of every node and router.
    pub env: Vec<(String, String)>,
    /// Tables every router's config ends with (e.g. `[ssh.limits]`).
    pub router_tables: String,
    /// Routers' `RUST_LOG` (default `warn`).
    pub router_log: Option<String>,
    /// Nodes' `RUST_LOG` (default `warn`).
    pub node_log: Option<String>,
}

impl Cluster {
    /// 3 etcd members, a node per capacity (lease TTL `ttl` seconds) and
    /// `routers` routers; `None` (reported skipped) without etcd or
    /// sandboxes.
    pub fn start(capacities: &[u64], routers: usize, ttl: u64) -> Option<Self> {
        Self::start_with(capacities, routers, ttl, |_| Setup::default())
    }

    /// As [`Cluster::start`], set up as `setup` says given the shared
    /// export directory (e.g. `export_on_stop` on nodes).
    pub fn start_with(
        capacities: &[u64],
        routers: usize,
        ttl: u64,
        setup: impl FnOnce(&std::path::Path) -> Setup,
    ) -> Option<Self> {
        if !etcd_available() || !crate::local_runtime_available() {
            return None;
        }
        let keys = tempfile::Builder::new()
            .prefix("blink-cluster-keys-")
            .tempdir()
            .expect("tempdir");
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "router", "-f"])
            .arg(keys.path().join("router_key"))
            .status()
            .expect("ssh-keygen");
        assert!(status.success());
        let etcd = Etcd::start(3);
        let mut cluster = Self {
            etcd,
            nodes: Vec::new(),
            routers: Vec::new(),
            keys,
            setup: Setup::default(),
        };
        cluster.setup = setup(&cluster.export_dir());
        for (i, cap) in capacities.iter().enumerate() {
            let node = cluster.start_node(&format!("node-{i}"), *cap, ttl);
            cluster.nodes.push(node);
        }
        for _ in 0..routers {
            let router = cluster.start_router();
            cluster.routers.push(router);
        }
        Some(cluster)
    }

    fn table(&self, extra: &str, ttl: u64) -> String {
        format!(
            "[cluster]\netcd_endpoints = {}\nprefix = {PREFIX:?}\nlease_ttl_secs = {ttl}\n{extra}",
            self.etcd.endpoints_toml()
        )
    }

    /// A node named `name` taking `sessions` sessions, trusting the
    /// router key.
    pub fn start_node(&self, name: &str, sessions: u64, ttl: u64) -> (crate::Blink, crate::Server) {
        let blink = crate::Blink::new();
        let extra = format!(
            "node_name = {name:?}\nrouter_keys = {:?}\n{}[cluster.capacity]\nsessions = {sessions}\n",
            self.keys.path().join("router_key.pub"),
            self.setup.node_extra
        );
        let mut builder = blink.server().config(&self.table(&extra, ttl)).token(TOKEN);
        for (k, v) in &self.setup.env {
            builder = builder.env(k, v);
        }
        if let Some(filter) = &self.setup.node_log {
            builder = builder.log_filter(filter);
        }
        (blink, builder.start())
    }

    /// A router with the shared host key, the router key and the shared
    /// export directory.
    pub fn start_router(&self) -> (crate::Blink, crate::Server) {
        self.start_router_with(10, &[])
    }

    /// A router whose moves hold their lock under a lease of `ttl`
    /// seconds, with `env` (e.g. the test-only `BLINK_TEST_CRASH_AT`).
    pub fn start_router_with(
        &self,
        ttl: u64,
        env: &[(&str, &str)],
    ) -> (crate::Blink, crate::Server) {
        self.start_router_wrapped(ttl, env, &[])
    }

    /// As [`Cluster::start_router_with`], started through `wrapper` (see
    /// [`crate::ServerBuilder::wrapped`]).
    pub fn start_router_wrapped(
        &self,
        ttl: u64,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> (crate::Blink, crate::Server) {
        let blink = crate::Blink::new();
        let exports = self
            .setup
            .router_exports
            .clone()
            .unwrap_or_else(|| format!("export_dir = {:?}\n", self.export_dir()));
        let extra = format!(
            "router_key = {:?}\n{exports}[ssh]\nhost_key = {:?}\n{}",
            self.keys.path().join("router_key"),
            self.keys.path().join("host_key"),
            self.setup.router_tables
        );
        let mut builder = blink
            .server()
            .router()
            .config(&self.table(&extra, ttl))
            .token(TOKEN);
        for (k, v) in env {
            builder = builder.env(k, v);
        }
        for (k, v) in &self.setup.env {
            builder = builder.env(k, v);
        }
        if let Some(filter) = &self.setup.router_log {
            builder = builder.log_filter(filter);
        }
        if !wrapper.is_empty() {
            builder = builder.wrapped(wrapper);
        }
        (blink, builder.start())
    }

    /// The routers' shared export directory.
    pub fn export_dir(&self) -> std::path::PathBuf {
        let dir = self.keys.path().join("exports");
        std::fs::create_dir_all(&dir).expect("mkdir exports");
        dir
    }

    /// Router `i` (round robin).
    pub fn router(&self, i: usize) -> &crate::Server {
        &self.routers[i % self.routers.len()].1
    }

    /// The node named `node-N`.
    pub fn node(&self, name: &str) -> &crate::Server {
        let i: usize = name.trim_start_matches("node-").parse().expect("node name");
        &self.nodes[i].1
    }

    /// The node a session's routing record names.
    pub fn route(&self, session: &str) -> Option<String> {
        let value = self.etcd.value(&format!("{PREFIX}/sessions/{session}"))?;
        let route: serde_json::Value = serde_json::from_str(&value).expect("route JSON");
        Some(route["node"].as_str().expect("node").to_owned())
    }

    /// Live nodes as a router reports them: name → sessions routed there.
    pub fn live(&self, router: usize) -> std::collections::BTreeMap<String, u64> {
        let a = self.router(router).get("/api/cluster/nodes");
        assert_eq!(a.status, 200, "{:?}", a.body);
        a.body["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().expect("name").to_owned(),
                    n["sessions"].as_u64().expect("sessions"),
                )
            })
            .collect()
    }

    /// Names of the sessions a node itself holds (asked directly).
    pub fn held_by(&self, node: &str) -> Vec<String> {
        let a = self.node(node).get("/api/sessions");
        assert_eq!(a.status, 200, "{:?}", a.body);
        a.body["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(|s| s["name"].as_str().expect("name").to_owned())
            .collect()
    }
}

/// Wait (bounded) until `f` holds; fails naming `what` otherwise.
pub fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
