//! Helpers for end-to-end tests: spawn the real `datanode` and `manager`
//! binaries on loopback ports chosen by the system, wait for their readiness
//! line in their log files, signal them, and talk to them over HTTP.
//!
//! The binaries are the ones `cargo test --workspace` builds next to the test
//! executables (the manager and datanode packages have integration tests, so
//! cargo builds their binaries before running any test).

pub mod linearizability;
pub mod resp;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for anything a test polls for.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Path of a workspace binary built alongside this test executable.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` (cargo test --workspace does it)",
        path.display()
    );
    path
}

/// A spawned server process, killed when dropped. Its stderr goes to a log
/// file whose path is printed if a test fails.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    pub addr: SocketAddr,
    args: Vec<String>,
    bin: PathBuf,
}

fn log_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringcache-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create log dir");
    dir
}

/// Polls `f` every 20 ms until it returns `Some`, or panics with `what`
/// after `DEADLINE`.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async version of [`wait_for`].
pub async fn wait_until<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_until_for(what, DEADLINE, f).await
}

/// Longest wait for a hand-off under load on a slow machine.
pub const LONG_DEADLINE: Duration = Duration::from_secs(90);

/// [`wait_until`] with its own deadline.
pub async fn wait_until_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Extracts `addr=HOST:PORT` from the first log line containing `marker`.
fn ready_addr(log: &Path, marker: &str) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains(marker))?;
    let at = line.find(" addr=")? + " addr=".len();
    line[at..].split_whitespace().next()?.parse().ok()
}

impl Proc {
    fn spawn(name: &str, bin: &str, marker: &str, args: Vec<String>) -> Proc {
        let bin = bin_path(bin);
        let log = log_dir().join(format!("{name}-{}.log", unique()));
        let child = start(&bin, &args, &log);
        let mut p = Proc {
            name: name.to_string(),
            child,
            log: log.clone(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            args,
            bin,
        };
        p.addr = p.await_ready(marker);
        p
    }

    fn await_ready(&mut self, marker: &str) -> SocketAddr {
        let log = self.log.clone();
        let start = Instant::now();
        loop {
            if let Some(a) = ready_addr(&log, marker) {
                return a;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{} not ready; log:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A data node on 127.0.0.1 with a system-chosen port.
    pub fn datanode(name: &str, extra: &[&str]) -> Proc {
        let mut args = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--id".into(),
            name.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Proc::spawn(name, "datanode", "data node serving gRPC", args)
    }

    /// A single-member etcd (Debian's `etcd-server`) on loopback ports,
    /// with its data in a fresh temporary directory.
    pub fn etcd(name: &str) -> Proc {
        Proc::etcd_with(name, None)
    }

    /// As [`Proc::etcd`], serving clients over TLS with `(cert, key, ca)`
    /// and requiring client certificates from `ca`.
    pub fn etcd_tls(name: &str, cert: &Path, key: &Path, ca: &Path) -> Proc {
        Proc::etcd_with(name, Some((cert, key, ca)))
    }

    fn etcd_with(name: &str, tls: Option<(&Path, &Path, &Path)>) -> Proc {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
        };
        let (client, peer) = (free(), free());
        let dir = log_dir().join(format!("{name}-{}.etcd", unique()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut args: Vec<String> = [
            "--name",
            name,
            "--data-dir",
            &dir.to_string_lossy(),
            "--listen-client-urls",
            &format!("{scheme}://{client}"),
            "--advertise-client-urls",
            &format!("{scheme}://{client}"),
            "--listen-peer-urls",
            &format!("http://{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://{peer}"),
            "--initial-cluster",
            &format!("{name}=http://{peer}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some((cert, key, ca)) = tls {
            for (flag, path) in [
                ("--cert-file", cert),
                ("--key-file", key),
                ("--trusted-ca-file", ca),
            ] {
                args.push(flag.to_string());
                args.push(path.display().to_string());
            }
            args.push("--client-cert-auth".to_string());
        }
        let bin = etcd_path();
        let log = log_dir().join(format!("{name}-{}.log", unique()));
        let mut p = Proc {
            name: name.to_string(),
            child: start(&bin, &args, &log),
            log,
            addr: client,
            args,
            bin,
        };
        let log = p.log.clone();
        let child = &mut p.child;
        wait_for("etcd to serve clients", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("etcd exited with {status}");
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("ready to serve client requests")
                .then_some(())
        });
        p
    }

    /// A manager over `nodes`, with its HTTP API on a system-chosen port.
    pub fn manager(name: &str, nodes: &[&Proc], extra: &[&str]) -> Proc {
        let list: Vec<String> = nodes.iter().map(|n| n.grpc_uri()).collect();
        Proc::manager_at(name, &list, extra)
    }

    /// A manager over the nodes at `list` (addresses as given to `--nodes`).
    pub fn manager_at(name: &str, list: &[String], extra: &[&str]) -> Proc {
        let mut args = vec!["--listen".into(), "127.0.0.1:0".into()];
        if !list.is_empty() {
            args.push("--nodes".into());
            args.push(list.join(","));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Proc::spawn(name, "manager", "manager serving HTTP", args)
    }

    /// A manager over the nodes at `list` following placement `cluster` in
    /// `etcd`, with the short timeouts and lease the fault tests use
    /// (node timeout 500 ms, heartbeat timeout 2 s, lease 1 s).
    pub fn etcd_manager(name: &str, etcd: &Proc, cluster: &str, list: &[String]) -> Proc {
        let url = etcd.grpc_uri();
        Proc::manager_at(
            name,
            list,
            &[
                "--etcd",
                &url,
                "--cluster-name",
                cluster,
                "--heartbeat-timeout",
                "2s",
                "--node-timeout",
                "500ms",
                "--lease",
                "1s",
            ],
        )
    }

    pub fn grpc_uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A manager's RESP address (started with `--resp-listen 127.0.0.1:0`).
    pub fn resp_addr(&self) -> SocketAddr {
        ready_addr(&self.log, "manager serving RESP")
            .unwrap_or_else(|| panic!("{} serves no RESP; log:\n{}", self.name, self.log_text()))
    }

    /// The same address spelled with the host name `localhost`.
    pub fn grpc_uri_by_name(&self) -> String {
        format!("http://localhost:{}", self.addr.port())
    }

    pub fn http_url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child process this test started and still owns.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let child = &mut self.child;
        wait_for("process exit after SIGTERM", || {
            child.try_wait().ok().flatten()
        })
    }

    /// Starts the same binary again with the same arguments, on the same
    /// address (a restarted process: a new instance).
    pub fn restart(&mut self, marker: &str) {
        self.kill();
        let mut args = self.args.clone();
        if let Some(i) = args.iter().position(|a| a == "--listen") {
            args[i + 1] = self.addr.to_string();
        }
        self.log = log_dir().join(format!("{}-{}.log", self.name, unique()));
        self.child = start(&self.bin, &args, &self.log);
        let addr = self.await_ready(marker);
        assert_eq!(addr, self.addr);
    }
}

/// The etcd server binary: `ETCD` if set, else `etcd` on the PATH or in
/// /usr/bin (Debian's etcd-server).
/// `etcdctl` (Debian's etcd-client) against `url`; its standard output.
pub fn etcdctl(url: &str, args: &[&str]) -> String {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={url}"))
        .args(args)
        .output()
        .expect("etcdctl runs (Debian's etcd-client; .ci/run installs it)");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn etcd_path() -> PathBuf {
    if let Some(p) = std::env::var_os("ETCD").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("etcd"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

fn start(bin: &Path, args: &[String], log: &Path) -> Child {
    let file = File::create(log).expect("create log file");
    Command::new(bin)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RINGCACHE_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone log handle"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process must be continued to die cleanly.
        // SAFETY: signals to our own child.
        unsafe {
            libc::kill(self.pid(), libc::SIGCONT);
        }
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- log of {} ({}) ---\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// A small HTTP client for the manager's API.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

/// Status and body of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: bytes::Bytes,
    pub retry_after: Option<String>,
    pub etag: Option<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Api {
    pub fn new(manager: &Proc) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            base: format!("http://{}", manager.addr),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let req = req.build().expect("a valid request");
        // A pooled keep-alive connection that the manager closes (idle
        // timeout) just as a request goes out fails with a reset before
        // any answer: a GET is sent once more, on a new connection. Writes
        // are not (they may have taken effect).
        let again = (req.method() == reqwest::Method::GET)
            .then(|| req.try_clone())
            .flatten();
        let resp = match (self.http.execute(req).await, again) {
            (Ok(resp), _) => resp,
            (Err(e), Some(again)) if e.is_request() || e.is_connect() => {
                self.http.execute(again).await.expect("manager answers")
            }
            (Err(e), _) => panic!("manager answers: {e:?}"),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Reply {
            status,
            retry_after,
            etag,
            body: resp.bytes().await.expect("response body"),
        }
    }

    /// `method` on key `key` (with `value` in the query, if any) and extra
    /// request headers (conditions).
    pub async fn request(
        &self,
        method: reqwest::Method,
        key: &str,
        value: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let url = match value {
            Some(v) => format!("{}/?key={key}&value={v}", self.base),
            None => format!("{}/?key={key}", self.base),
        };
        let mut req = self.http.request(method, url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.send(req).await
    }

    pub async fn get(&self, key: &str) -> Reply {
        self.send(self.http.get(format!("{}/?key={key}", self.base)))
            .await
    }

    pub async fn set(&self, key: &str, value: &str) -> Reply {
        self.send(
            self.http
                .post(format!("{}/?key={key}&value={value}", self.base)),
        )
        .await
    }

    /// `POST /?key=K` with the value as the body.
    pub async fn set_body(&self, key: &str, value: Vec<u8>) -> Reply {
        self.send(
            self.http
                .post(format!("{}/?key={key}", self.base))
                .body(value),
        )
        .await
    }

    pub async fn delete(&self, key: &str) -> Reply {
        self.send(self.http.delete(format!("{}/?key={key}", self.base)))
            .await
    }

    /// `POST /cluster/nodes?addr=...`: adds a data node.
    pub async fn add_node(&self, addr: &str) -> Reply {
        self.send(
            self.http
                .post(format!("{}/cluster/nodes?addr={addr}", self.base)),
        )
        .await
    }

    /// `DELETE /cluster/nodes?id=...`: removes a data node.
    pub async fn remove_node(&self, id: &str) -> Reply {
        self.send(
            self.http
                .delete(format!("{}/cluster/nodes?id={id}", self.base)),
        )
        .await
    }

    /// `/cluster`'s placement version and members as (id, state).
    pub async fn placement(&self) -> (u64, Vec<(String, String)>) {
        let c = self.cluster().await;
        let members = c["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| {
                        (
                            m["id"].as_str().unwrap_or_default().to_string(),
                            m["state"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        (c["placement_version"].as_u64().unwrap_or(0), members)
    }

    /// Waits until the placement's members are exactly `ids`, all up.
    pub async fn await_members(&self, ids: &[&str]) -> u64 {
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        wait_until_for(
            &format!("placement of {want:?}, all up"),
            LONG_DEADLINE,
            || async {
                let (version, members) = self.placement().await;
                let mut got: Vec<String> = members.iter().map(|m| m.0.clone()).collect();
                got.sort();
                (got == want && members.iter().all(|m| m.1 == "up")).then_some(version)
            },
        )
        .await
    }

    /// `GET` of a path (with its query) other than a key's.
    pub async fn get_path(&self, path_and_query: &str) -> Reply {
        self.send(self.http.get(format!("{}{path_and_query}", self.base)))
            .await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.send(self.http.get(format!("{}/metrics", self.base)))
            .await
            .text()
    }

    pub async fn cluster(&self) -> serde_json::Value {
        let r = self
            .send(self.http.get(format!("{}/cluster", self.base)))
            .await;
        serde_json::from_slice(&r.body).expect("/cluster is JSON")
    }

    /// States of the nodes in `/cluster`, keyed by address.
    pub async fn node_states(&self) -> Vec<(String, String)> {
        let c = self.cluster().await;
        c["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|n| {
                        (
                            n["address"].as_str().unwrap_or_default().to_string(),
                            n["state"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until the node at `addr` has `state` in `/cluster`.
    pub async fn await_state(&self, addr: &str, state: &str) {
        wait_until(&format!("{addr} to be {state}"), || async {
            self.node_states()
                .await
                .iter()
                .any(|(a, s)| a == addr && s == state)
                .then_some(())
        })
        .await
    }

    /// Waits until every node is up.
    pub async fn await_all_up(&self) {
        wait_until("all nodes up", || async {
            let s = self.node_states().await;
            (!s.is_empty() && s.iter().all(|(_, st)| st == "up")).then_some(())
        })
        .await
    }
}

/// Three data node processes and a manager over them, all up.
pub struct TestCluster {
    pub nodes: Vec<Proc>,
    pub manager: Proc,
    pub api: Api,
}

impl TestCluster {
    pub async fn start(node_args: &[&str], manager_args: &[&str]) -> Self {
        let nodes: Vec<Proc> = (1..=3)
            .map(|i| Proc::datanode(&format!("node{i}"), node_args))
            .collect();
        let refs: Vec<&Proc> = nodes.iter().collect();
        let manager = Proc::manager("manager", &refs, manager_args);
        let api = Api::new(&manager);
        api.await_all_up().await;
        Self {
            nodes,
            manager,
            api,
        }
    }
}

/// Two managers sharing an etcd over three data nodes, manager1 reaching
/// each node only through a relay of its own (the partitions to come),
/// manager2 reaching every node directly; all up, and every node holding both
/// managers' leases.
pub struct CutCluster {
    pub etcd: Proc,
    pub nodes: Vec<Proc>,
    /// Manager1's way to each node.
    pub relays: Vec<Relay>,
    pub m1: Proc,
    pub m2: Proc,
    /// Through manager1 and manager2.
    pub a: Api,
    pub b: Api,
}

impl CutCluster {
    pub async fn start(cluster: &str, node_args: &[&str]) -> Self {
        let etcd = Proc::etcd("etcd");
        let nodes: Vec<Proc> = (1..=3)
            .map(|i| Proc::datanode(&format!("node{i}"), node_args))
            .collect();
        let mut relays = Vec::new();
        for n in &nodes {
            relays.push(Relay::start(n.addr).await);
        }
        let list1: Vec<String> = relays.iter().map(Relay::uri).collect();
        let m1 = Proc::etcd_manager("manager1", &etcd, cluster, &list1);
        let a = Api::new(&m1);
        let three = ["node1", "node2", "node3"];
        a.await_members(&three).await;
        let list2: Vec<String> = nodes.iter().map(Proc::grpc_uri).collect();
        let m2 = Proc::etcd_manager("manager2", &etcd, cluster, &list2);
        let b = Api::new(&m2);
        b.await_members(&three).await;
        a.await_all_up().await;
        b.await_all_up().await;
        // Every node, not only the one the partitions cut: until a node
        // holds both leases, reads skip it while writes still reach it.
        for node in &nodes {
            let conn = NodeConn::connect(node).await;
            wait_until_for(
                "every node to hold both managers' leases",
                LONG_DEADLINE,
                || async {
                    let leases = conn.stats().await.leases;
                    let held = leases
                        .iter()
                        .filter(|l| l.required && l.remaining_ms > 0)
                        .count();
                    (held == 2).then_some(())
                },
            )
            .await;
        }
        Self {
            etcd,
            nodes,
            relays,
            m1,
            m2,
            a,
            b,
        }
    }

    /// Manager `m` (0: manager1, 1: manager2).
    pub fn manager(&mut self, m: usize) -> &mut Proc {
        if m == 0 {
            &mut self.m1
        } else {
            &mut self.m2
        }
    }
}

/// What one data node holds for a key, read directly over gRPC (not through
/// a manager, and not a consistent read: a syncing node answers too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    Value { value: String, version: u64 },
    Tombstone { version: u64 },
    Nothing,
}

/// A direct gRPC client of one data node.
pub struct NodeConn(
    ringcache_proto::pb::data_node_client::DataNodeClient<tonic::transport::Channel>,
);

impl NodeConn {
    pub async fn connect(node: &Proc) -> Self {
        let c = ringcache_proto::pb::data_node_client::DataNodeClient::connect(node.grpc_uri())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", node.name));
        Self(c)
    }

    /// The generated client, for calls these helpers do not wrap.
    pub fn client(
        &self,
    ) -> ringcache_proto::pb::data_node_client::DataNodeClient<tonic::transport::Channel> {
        self.0.clone()
    }

    pub async fn held(&self, key: &str) -> Held {
        // Clients share one channel; a clone per call keeps `&self`.
        let r = self
            .0
            .clone()
            .get(ringcache_proto::pb::GetRequest {
                key: key.to_string(),
                consistent: false,
            })
            .await
            .expect("node answers Get")
            .into_inner();
        if r.found {
            Held::Value {
                value: String::from_utf8_lossy(&r.value).into_owned(),
                version: r.version,
            }
        } else if r.tombstone {
            Held::Tombstone { version: r.version }
        } else {
            Held::Nothing
        }
    }

    /// A consistent read, as a manager makes it: the raw answer (a syncing
    /// or unleased node refuses it).
    pub async fn consistent_get(&self, key: &str) -> ringcache_proto::pb::GetResponse {
        self.0
            .clone()
            .get(ringcache_proto::pb::GetRequest {
                key: key.to_string(),
                consistent: true,
            })
            .await
            .expect("node answers Get")
            .into_inner()
    }

    pub async fn stats(&self) -> ringcache_proto::pb::StatsResponse {
        self.0
            .clone()
            .stats(ringcache_proto::pb::StatsRequest {})
            .await
            .expect("node answers Stats")
            .into_inner()
    }
}

/// A TCP relay on loopback in front of a server, whose client-to-server
/// direction can be held: bytes sent meanwhile wait in the relay and are
/// delivered, in order, when it is released. It models a slow or briefly
/// partitioned link without touching either process.
pub struct Relay {
    pub addr: SocketAddr,
    held: tokio::sync::watch::Sender<bool>,
    /// Holds the server-to-client direction too (a full cut).
    held_back: tokio::sync::watch::Sender<bool>,
    /// Drops every connection and refuses new ones (a firewall that drops
    /// packets: nothing sent meanwhile is ever delivered).
    severed: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let (held, rx) = tokio::sync::watch::channel(false);
        let (held_back, rx_back) = tokio::sync::watch::channel(false);
        let (severed, rx_severed) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *rx_severed.borrow() {
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, rx.clone(), rx_severed.clone()));
                tokio::spawn(pump(sr, cw, rx_back.clone(), rx_severed.clone()));
            }
        });
        Relay {
            addr,
            held,
            held_back,
            severed,
            task,
        }
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Holds what clients send from now on.
    pub fn hold(&self) {
        let _ = self.held.send(true);
    }

    /// Holds both directions: nothing gets through until released.
    pub fn cut(&self) {
        let _ = self.held.send(true);
        let _ = self.held_back.send(true);
    }

    /// Drops every open connection, with whatever it held, and refuses new
    /// ones until released: what was sent meanwhile is lost, as behind a
    /// firewall that drops packets (a held link delivers it late instead).
    pub fn sever(&self) {
        let _ = self.severed.send(true);
    }

    /// Delivers what was held, and everything after; accepts connections
    /// again after a sever.
    pub fn release(&self) {
        let _ = self.held.send(false);
        let _ = self.held_back.send(false);
        let _ = self.severed.send(false);
    }
}

/// Copies one direction of a relayed connection: bytes wait while `held`
/// is true and are delivered, in order, when it turns false; when `severed`
/// turns true the direction is dropped with whatever it held.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut held: tokio::sync::watch::Receiver<bool>,
    mut severed: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    let copy = async {
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if held.wait_for(|h| !*h).await.is_err() {
                break;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = copy => {}
        _ = severed.wait_for(|s| *s) => {}
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
