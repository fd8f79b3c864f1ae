//! TLS on every link (docs/design/tls.md), with real binaries: data nodes
//! serving gRPC over TLS that require client certificates, a manager that
//! reaches them over mTLS and serves HTTPS, copies between nodes over TLS,
//! and certificates rotated without a restart. The CA and certificates are
//! generated at test time (rcgen); no key is committed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ringcache_common::tls::{ClientFiles, ClientTls, GrpcConnector, ALPN_H2};
use ringcache_proto::pb;
use ringcache_tests::{etcdctl, wait_until, Proc};

/// A CA and certificates it signed, as PEM files in a temporary directory.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "ringcache-tls-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ringcache test CA");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write CA");
        Pki { dir, ca, ca_key }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `localhost` and 127.0.0.1 named `cn`, written to
    /// `<file>.pem` and `<file>.key`; returns their paths.
    fn issue(&self, file: &str, cn: &str) -> (PathBuf, PathBuf) {
        self.issue_for(file, cn, &["localhost", "127.0.0.1"])
    }

    /// As [`Pki::issue`], for the names `sans`.
    fn issue_for(&self, file: &str, cn: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("certificate");
        let (c, k) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        // Written next to the target and renamed, as a Secret update is:
        // a reader never sees half a file.
        for (path, text) in [(&c, cert.pem()), (&k, key.serialize_pem())] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, path).expect("rename");
        }
        (c, k)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `curl` over HTTPS trusting `ca`: (status, body).
fn curl(ca: &Path, method: &str, url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "--cacert"])
        .arg(ca)
        .args(["-X", method, "-w", "\n%{http_code}", url])
        .output()
        .expect("curl runs (Debian's curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Three TLS data nodes requiring client certificates from `pki`.
fn tls_nodes(pki: &Pki, extra: &[&str]) -> Vec<Proc> {
    let (cert, key) = pki.issue("node", "data node");
    let (cert, key, ca) = (s(&cert), s(&key), s(&pki.ca()));
    (1..=3)
        .map(|i| {
            let mut args = vec![
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &ca,
            ];
            args.extend_from_slice(extra);
            Proc::datanode(&format!("node{i}"), &args)
        })
        .collect()
}

/// A TLS client trusting `pki`'s CA, with a certificate from it when
/// `with_cert`.
fn client_tls(pki: &Pki, with_cert: bool) -> Arc<ClientTls> {
    let identity = with_cert.then(|| pki.issue("grpc-client", "test client"));
    ClientTls::load(
        ClientFiles {
            ca: pki.ca(),
            identity,
            server_name: None,
        },
        ALPN_H2,
    )
    .expect("client TLS")
}

/// A gRPC client of `node` over `tls`, connecting lazily.
fn grpc_with(
    tls: Arc<ClientTls>,
    node: &Proc,
) -> pb::data_node_client::DataNodeClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(node.grpc_uri())
        .expect("uri")
        .connect_with_connector_lazy(GrpcConnector::new(tls));
    pb::data_node_client::DataNodeClient::new(channel)
}

/// A gRPC client of `node` over TLS with a certificate from `pki`.
fn grpc(pki: &Pki, node: &Proc) -> pb::data_node_client::DataNodeClient<tonic::transport::Channel> {
    grpc_with(client_tls(pki, true), node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_reaches_tls_nodes_over_mtls_and_serves_https() {
    let pki = Pki::new("mtls");
    let nodes = tls_nodes(&pki, &[]);
    let (mcert, mkey) = pki.issue("manager-client", "manager");
    let (hcert, hkey) = pki.issue("manager-https", "manager https");
    let refs: Vec<&Proc> = nodes.iter().collect();
    let args = [
        "--node-tls-ca",
        &s(&pki.ca()),
        "--node-tls-cert",
        &s(&mcert),
        "--node-tls-key",
        &s(&mkey),
        "--tls-cert",
        &s(&hcert),
        "--tls-key",
        &s(&hkey),
    ]
    .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let manager = Proc::manager("manager", &refs, &args);
    let base = format!("https://localhost:{}", manager.addr.port());
    let ca = pki.ca();
    wait_until("a write over HTTPS through TLS nodes", || {
        let (ca, base) = (ca.clone(), base.clone());
        async move {
            let (code, _) = curl(&ca, "POST", &format!("{base}/?key=k0&value=v0"));
            (code == 201 || code == 200).then_some(())
        }
    })
    .await;
    for i in 1..20 {
        let (code, body) = curl(&ca, "POST", &format!("{base}/?key=k{i}&value=v{i}"));
        assert!(code == 201 || code == 200, "POST k{i}: {code} {body}");
    }
    for i in 0..20 {
        let (code, body) = curl(&ca, "GET", &format!("{base}/?key=k{i}"));
        assert_eq!((code, body.as_str()), (200, format!("v{i}").as_str()));
    }
    // Plain HTTP to the HTTPS listener gets no answer.
    let plain = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://127.0.0.1:{}/healthz", manager.addr.port()))
        .output()
        .expect("curl");
    assert_ne!(String::from_utf8_lossy(&plain.stdout).trim(), "200");
    // The binaries' own checks speak TLS too (container health checks,
    // Kubernetes probes): the node's with its own certificate as client.
    let node_port = nodes[0].addr.port().to_string();
    let (ncert, nkey) = (pki.dir.join("node.pem"), pki.dir.join("node.key"));
    for check in ["--health-check", "--ready-check"] {
        let out = Command::new(ringcache_tests::bin_path("datanode"))
            .args(["--listen", &format!("127.0.0.1:{node_port}"), "--tls-cert"])
            .arg(&ncert)
            .arg("--tls-key")
            .arg(&nkey)
            .arg("--tls-client-ca")
            .arg(pki.ca())
            .arg(check)
            .output()
            .expect("datanode check");
        assert!(
            out.status.success(),
            "{check}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let manager_check = |tls: bool| {
        let mut cmd = Command::new(ringcache_tests::bin_path("manager"));
        cmd.args(["--listen", &format!("127.0.0.1:{}", manager.addr.port())]);
        if tls {
            cmd.arg("--tls-cert")
                .arg(&hcert)
                .arg("--tls-key")
                .arg(&hkey)
                .arg("--node-tls-ca")
                .arg(pki.ca());
        }
        cmd.arg("--health-check").output().expect("manager check")
    };
    let out = manager_check(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !manager_check(false).status.success(),
        "plain check of an HTTPS manager"
    );
    // A node answers a client with a certificate from the CA...
    let mut ok = grpc(&pki, &nodes[0]);
    let stats = ok
        .stats(pb::StatsRequest {})
        .await
        .expect("stats over mTLS");
    assert_eq!(stats.into_inner().node_id, "node1");
    // ...and refuses one without a certificate.
    let r = grpc_with(client_tls(&pki, false), &nodes[0])
        .stats(pb::StatsRequest {})
        .await;
    assert!(r.is_err(), "a node answered a client without a certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_without_a_client_certificate_gets_no_node() {
    let pki = Pki::new("nocert");
    let nodes = tls_nodes(&pki, &[]);
    let refs: Vec<&Proc> = nodes.iter().collect();
    let ca = s(&pki.ca());
    let manager = Proc::manager(
        "manager",
        &refs,
        &["--node-tls-ca", &ca, "--node-timeout", "500ms"],
    );
    let api = ringcache_tests::Api::new(&manager);
    // The nodes refuse the handshake: the manager never learns their ids,
    // so every write is refused, never sent in plain text.
    for _ in 0..5 {
        let r = api.set("k", "v").await;
        assert_eq!(r.status, 503, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_tls_node_warms_up_from_its_peers_over_tls() {
    let pki = Pki::new("warmup");
    let mut nodes = tls_nodes(&pki, &[]);
    let (mcert, mkey) = pki.issue("manager-client", "manager");
    let refs: Vec<&Proc> = nodes.iter().collect();
    let (ca, mcert, mkey) = (s(&pki.ca()), s(&mcert), s(&mkey));
    let manager = Proc::manager(
        "manager",
        &refs,
        &[
            "--node-tls-ca",
            &ca,
            "--node-tls-cert",
            &mcert,
            "--node-tls-key",
            &mkey,
        ],
    );
    let api = ringcache_tests::Api::new(&manager);
    api.await_all_up().await;
    let keys = 60;
    for i in 0..keys {
        assert_eq!(api.set(&format!("w{i}"), "v").await.status, 201);
    }
    let before = grpc(&pki, &nodes[1])
        .stats(pb::StatsRequest {})
        .await
        .expect("stats")
        .into_inner()
        .items;
    assert!(before > 0);
    nodes[1].restart("data node serving gRPC");
    api.await_all_up().await;
    // Up again only after copying its share from its peers (over TLS).
    let after = grpc(&pki, &nodes[1])
        .stats(pb::StatsRequest {})
        .await
        .expect("stats")
        .into_inner()
        .items;
    assert_eq!(after, before, "node2 holds its share again");
    for i in 0..keys {
        assert_eq!(api.get(&format!("w{i}")).await.text(), "v");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_used_by_new_connections_without_a_restart() {
    let pki = Pki::new("rotate");
    let (cert, key) = pki.issue("node", "first");
    let (cert_s, key_s) = (s(&cert), s(&key));
    let node = Proc::datanode(
        "node1",
        &[
            "--tls-cert",
            &cert_s,
            "--tls-key",
            &key_s,
            "--tls-reload-interval",
            "200ms",
        ],
    );
    let client = client_tls(&pki, false);
    let port = node.addr.port();
    let served_cn = |client: Arc<ClientTls>| async move {
        let stream = client.connect("127.0.0.1", port).await.ok()?;
        let der = stream.get_ref().1.peer_certificates()?.first()?.clone();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_string();
        Some(cn)
    };
    assert_eq!(served_cn(client.clone()).await.as_deref(), Some("first"));
    // An open gRPC connection made before the rotation keeps working (a
    // lazy channel connects at its first call, here).
    let mut open = grpc(&pki, &node);
    open.stats(pb::StatsRequest {}).await.expect("stats");

    pki.issue("node", "second");
    wait_until("new connections to get the rotated certificate", || {
        let client = client.clone();
        async move { (served_cn(client).await.as_deref() == Some("second")).then_some(()) }
    })
    .await;
    open.stats(pb::StatsRequest {})
        .await
        .expect("the connection opened before the rotation still works");

    // A broken file keeps the previous certificate (and says so in the log).
    std::fs::write(&cert, "not a certificate").expect("write");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(served_cn(client.clone()).await.as_deref(), Some("second"));
    assert!(node
        .log_text()
        .contains("could not be loaded; keeping the previous ones"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reached_by_ip_are_verified_for_their_certificates_name() {
    // Containers found through a DNS name are reached by IP, and their
    // certificates name the service: --node-tls-name says which name.
    let pki = Pki::new("name");
    let (cert, key) = pki.issue_for("node", "data node", &["datanode"]);
    let (mcert, mkey) = pki.issue("manager-client", "manager");
    let (cert, key, ca, mcert, mkey) = (s(&cert), s(&key), s(&pki.ca()), s(&mcert), s(&mkey));
    let node = Proc::datanode(
        "node1",
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
    );
    let tls = [
        "--node-tls-ca",
        ca.as_str(),
        "--node-tls-cert",
        mcert.as_str(),
        "--node-tls-key",
        mkey.as_str(),
        "--node-timeout",
        "500ms",
    ];
    let wrong = Proc::manager("wrong", &[&node], &tls);
    let mut named = tls.to_vec();
    named.extend(["--node-tls-name", "datanode"]);
    let right = Proc::manager("right", &[&node], &named);
    let right_api = ringcache_tests::Api::new(&right);
    right_api.await_all_up().await;
    assert_eq!(right_api.set("k", "v").await.status, 201);
    // The certificate does not name 127.0.0.1: refused.
    let r = ringcache_tests::Api::new(&wrong).set("k", "w").await;
    assert_eq!(r.status, 503, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_etcd, ignore = "etcd is not installed")]
async fn the_placement_lives_in_an_etcd_served_over_mtls() {
    let pki = Pki::new("etcd");
    let (ecert, ekey) = pki.issue("etcd", "etcd");
    let etcd = Proc::etcd_tls("etcd", &ecert, &ekey, &pki.ca());
    let (mcert, mkey) = pki.issue("manager-etcd", "manager");
    let nodes: Vec<Proc> = (1..=3)
        .map(|i| Proc::datanode(&format!("node{i}"), &[]))
        .collect();
    let list: Vec<String> = nodes.iter().map(Proc::grpc_uri).collect();
    let url = format!("https://{}", etcd.addr);
    let (ca, mcert, mkey) = (s(&pki.ca()), s(&mcert), s(&mkey));
    let manager = Proc::manager_at(
        "manager",
        &list,
        &[
            "--etcd",
            &url,
            "--etcd-ca",
            &ca,
            "--etcd-cert",
            &mcert,
            "--etcd-key",
            &mkey,
        ],
    );
    let api = ringcache_tests::Api::new(&manager);
    // The placement was seeded into etcd and read back from it.
    let version = api.await_members(&["node1", "node2", "node3"]).await;
    assert!(version > 0);
    api.await_all_up().await;
    assert_eq!(api.set("k", "v").await.status, 201);
    // Without a client certificate etcd refuses the manager: no placement,
    // so no key request is served.
    let refused = Proc::manager_at(
        "refused",
        &list,
        &["--etcd", &url, "--etcd-ca", &ca, "--node-timeout", "500ms"],
    );
    let r = ringcache_tests::Api::new(&refused).set("k", "w").await;
    assert_eq!(r.status, 503, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_etcd, ignore = "etcd is not installed")]
async fn managers_authenticate_to_an_etcd_with_auth_enabled() {
    let etcd = Proc::etcd("etcd");
    let url = etcd.grpc_uri();
    etcdctl(
        &url,
        &[
            "user",
            "add",
            "root",
            "--new-user-password=rootpw",
            "--interactive=false",
        ],
    );
    etcdctl(&url, &["user", "grant-role", "root", "root"]);
    etcdctl(&url, &["auth", "enable"]);
    let dir = std::env::temp_dir().join(format!("ringcache-etcd-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (good, bad) = (dir.join("good"), dir.join("bad"));
    std::fs::write(&good, "rootpw\n").expect("write");
    std::fs::write(&bad, "wrong\n").expect("write");
    let nodes: Vec<Proc> = (1..=3)
        .map(|i| Proc::datanode(&format!("node{i}"), &[]))
        .collect();
    let list: Vec<String> = nodes.iter().map(Proc::grpc_uri).collect();
    let manager = Proc::manager_at(
        "manager",
        &list,
        &[
            "--etcd",
            &url,
            "--etcd-user",
            "root",
            "--etcd-password-file",
            &s(&good),
        ],
    );
    let api = ringcache_tests::Api::new(&manager);
    assert!(api.await_members(&["node1", "node2", "node3"]).await > 0);
    api.await_all_up().await;
    assert_eq!(api.set("k", "v").await.status, 201);
    // The wrong password gets no placement: nothing is served.
    let refused = Proc::manager_at(
        "refused",
        &list,
        &[
            "--etcd",
            &url,
            "--etcd-user",
            "root",
            "--etcd-password-file",
            &s(&bad),
            "--node-timeout",
            "500ms",
        ],
    );
    let r = ringcache_tests::Api::new(&refused).set("k", "w").await;
    assert_eq!(r.status, 503, "{}", r.text());
    // And says why.
    ringcache_tests::wait_for("the refusal in the log", || {
        refused
            .log_text()
            .contains("etcd refused user")
            .then_some(())
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// redis-cli against the manager's RESP port with `--tls-cert`: TLS too.
fn redis_cli_tls(ca: &Path, port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert", &s(ca), "--sni", "localhost"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (Debian's redis-tools package) must be installed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resp_front_is_tls_when_the_manager_serves_https() {
    let pki = Pki::new("resp");
    let nodes: Vec<Proc> = (1..=3)
        .map(|i| Proc::datanode(&format!("node{i}"), &[]))
        .collect();
    let refs: Vec<&Proc> = nodes.iter().collect();
    let (cert, key) = pki.issue("manager-https", "manager https");
    let args = [
        "--tls-cert",
        &s(&cert),
        "--tls-key",
        &s(&key),
        "--resp-listen",
        "127.0.0.1:0",
    ]
    .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let manager = Proc::manager("manager", &refs, &args);
    let port = manager.resp_addr().port();
    let ca = pki.ca();
    wait_until("a SET over RESP with TLS", || {
        let ca = ca.clone();
        async move { (redis_cli_tls(&ca, port, &["SET", "k", "over tls"]) == "OK").then_some(()) }
    })
    .await;
    // Reads wait for the nodes' first repair (writes do not).
    wait_until("a GET over RESP with TLS", || {
        let ca = ca.clone();
        async move { (redis_cli_tls(&ca, port, &["GET", "k"]) == "over tls").then_some(()) }
    })
    .await;
    // Plain RESP to the TLS port gets no reply.
    let plain = Command::new("timeout")
        .args([
            "5",
            "redis-cli",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "GET",
            "k",
        ])
        .output()
        .expect("redis-cli");
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("over tls"),
        "plain RESP read the value from a TLS port"
    );
}
